//! Processes, as nginx runs them: a master with a stable pid that owns the pid file, the
//! listening sockets and the control socket, and worker generations that serve.
//!
//! - `master`: the loop (signals, control requests, respawn, reload, stop);
//!   `upgrade`: its re-exec in place; `generation`: starting and reaping workers;
//!   `sockets`: the listening sockets; `pidfile`: the locked pid file; `source`: the checked
//!   config bytes handed to workers; `control`: the `-s` / worker protocol.
//! - `worker`: one generation's Pingora server on inherited sockets; `signals`: its signals;
//!   `reload`: its in-place reload; `drain`: its graceful stop without failed requests;
//!   `tunnel`: a WebSocket's close frame when that stop runs out of time; `h2`: an HTTP/2
//!   connection's loop (handshake deadline, streams, GOAWAY).
//! - `os`: the few raw system calls; `error`: what can go wrong, worded for the user.

mod control;
mod drain;
mod error;
mod fleet;
mod generation;
mod h2;
pub mod master;
pub(crate) mod os;
mod pidfile;
mod reload;
pub mod runtime_dir;
mod signals;
mod sockets;
mod source;
mod tunnel;
mod upgrade;
mod worker;
pub(crate) mod wrap;

pub use control::{send, Command};
pub use error::Error;
pub use master::run as run_master;
pub use worker::run as run_worker;
pub(crate) use worker::WRITE_BUFFER;
