//! graygate's integration tests, one binary (as ripgrep's `tests/`): `common` is compiled once
//! and every helper in it has a user.

mod canary;
mod canary_page;
mod canary_ramp;
mod common;
mod faults;
mod files;
mod fleet;
mod gateway;
mod hostile;
mod import_nginx;
mod ip_hash_vectors;
mod lifecycle;
mod locations;
mod observe;
mod pools;
mod processes;
mod runtime;
mod seed;
mod supervisor;
mod uwsgi;
