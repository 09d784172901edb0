//! Logs: nginx-compatible access and error lines, written by a background thread.

pub mod access;
pub mod clock;
pub mod error;
pub mod file;
pub mod text;

pub use file::{flush_all, open, reopen_all, start_writer, LogFile};
