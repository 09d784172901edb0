//! graygate's integration tests, one binary (as ripgrep's `tests/`): `common` is compiled once
//! and every helper in it has a user.

mod common;
mod gateway;
mod hostile;
mod ip_hash_vectors;
mod lifecycle;
mod pools;
mod runtime;
mod supervisor;
