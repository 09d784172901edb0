//! Error log lines in nginx's layout, and the process-wide logger.
//!
//! Per-server lines look like nginx's so that existing greps keep working (without nginx's
//! `*N` connection number):
//! `2026/11/25 04:35:56 [error] 812#0: connect() failed (111: Connection refused) while
//! connecting to upstream, client: 127.0.0.5, server: balance, request: "GET / HTTP/1.1",
//! upstream: "http://127.0.0.1:11001/", host: "localhost:10001"`.

use std::io::Write;
use std::sync::{Arc, OnceLock};

use super::clock;
use super::file::LogFile;

/// Appends the common prefix: time, level, pid.
pub fn prefix(out: &mut Vec<u8>, level: &str) {
    clock::error_time(out);
    let _ = write!(out, " [{level}] {}#0: ", std::process::id());
}

/// The process-wide logger behind the `log` crate (Pingora logs through it too).
struct ProcessLog {
    file: OnceLock<Arc<LogFile>>,
    level: log::LevelFilter,
}

static PROCESS: OnceLock<ProcessLog> = OnceLock::new();

impl log::Log for ProcessLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let mut level = match r.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warn",
            log::Level::Info => "notice",
            log::Level::Debug | log::Level::Trace => "debug",
        };
        let mut text = Vec::with_capacity(96);
        let _ = writeln!(text, "{}", r.args());
        if client_fault(r.target(), &text) {
            level = "info";
        }
        let mut line = Vec::with_capacity(32 + text.len());
        prefix(&mut line, level);
        line.extend_from_slice(&text);
        match self.file.get() {
            // A line that does not fit is counted by the file and reported.
            Some(f) => {
                f.append(|b| b.extend_from_slice(&line));
            }
            None => {
                let _ = std::io::stderr().write_all(&line);
            }
        }
    }

    fn flush(&self) {}
}

/// Whether a line is about a client's fault, which nginx logs at `info`: graygate's own
/// (target `client`), and Pingora's failed or timed-out TLS handshakes (a scanner, a client
/// that gave up, an old protocol), which are no error of the gateway: at `error`, a port scan
/// would flood the log.
fn client_fault(target: &str, text: &[u8]) -> bool {
    target == "client"
        || (target.starts_with("pingora_core::services::listening")
            && text.starts_with(b"Downstream handshake"))
}

/// Installs the process logger; lines go to stderr until [`set_process_file`] is called.
pub fn install(level: log::LevelFilter) {
    let logger = PROCESS.get_or_init(|| ProcessLog {
        file: OnceLock::new(),
        level,
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Sends process log lines to `f` from now on.
pub fn set_process_file(f: Arc<LogFile>) {
    if let Some(p) = PROCESS.get() {
        let _ = p.file.set(f);
    }
}

/// One `[error]` line in the process error log about the logs themselves (lines dropped, a
/// failed reopen); on stderr when that log is the one that cannot take it.
pub fn report(what: &str) {
    let mut line = Vec::with_capacity(128);
    prefix(&mut line, "error");
    line.extend_from_slice(what.as_bytes());
    line.push(b'\n');
    let kept = PROCESS
        .get()
        .and_then(|p| p.file.get())
        .is_some_and(|f| f.append(|b| b.extend_from_slice(&line)));
    if !kept {
        let _ = std::io::stderr().write_all(&line);
    }
}
