//! What can go wrong when starting, controlling or replacing processes, worded for the user.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    /// Another master holds the pid file's lock.
    AlreadyRunning { pid_file: String, pid: Option<i32> },
    /// The pid file cannot be opened or locked.
    PidFile { path: String, err: io::Error },
    /// nginx's wording: `bind() to 0.0.0.0:80 failed (98: Address already in use)`.
    Bind { addr: SocketAddr, err: io::Error },
    /// The control socket cannot be created or reached.
    Control { path: PathBuf, err: io::Error },
    /// A config that does not compile (already `FILE:LINE:COL: message` lines).
    Config(String),
    /// A log file that cannot be opened.
    Log { path: String, err: io::Error },
    /// A process that cannot be started (worker, `-t` check, re-exec).
    Spawn { what: String, err: io::Error },
    /// A worker that exited or did not become ready.
    Worker(String),
    /// The running master refused or failed a request; its words.
    Refused(String),
    /// Anything else from the operating system, with what we were doing.
    Os { what: &'static str, err: io::Error },
}

/// nginx's `(98: Address already in use)`: errno and text.
fn errno(err: &io::Error) -> String {
    let text = err.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    match err.raw_os_error() {
        Some(n) => format!("{n}: {text}"),
        None => text,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::AlreadyRunning { pid_file, pid } => match pid {
                Some(p) => write!(
                    f,
                    "already running as pid {p} (pid file {pid_file} is locked); nothing changed"
                ),
                None => write!(
                    f,
                    "already running (pid file {pid_file} is locked); nothing changed"
                ),
            },
            Error::PidFile { path, err } => {
                write!(f, "cannot open pid file {path} ({})", errno(err))
            }
            Error::Bind { addr, err } => write!(f, "bind() to {addr} failed ({})", errno(err)),
            Error::Control { path, err } => write!(
                f,
                "control socket {} failed ({}); is graygate running?",
                path.display(),
                errno(err)
            ),
            Error::Config(probs) => f.write_str(probs),
            Error::Log { path, err } => write!(f, "cannot open log file {path} ({})", errno(err)),
            Error::Spawn { what, err } => write!(f, "cannot start {what} ({})", errno(err)),
            Error::Worker(m) | Error::Refused(m) => f.write_str(m),
            Error::Os { what, err } => write!(f, "{what} failed ({})", errno(err)),
        }
    }
}

impl std::error::Error for Error {}
