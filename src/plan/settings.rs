//! The top level of the file: process settings and the built-in demo backends.

use crate::config::{self, parse_addr, Loaded, Problems};

use super::{Demo, Settings};

/// Process settings (`threads`, `error_log`, `pid_file`, ...), at the top level of the file.
pub(super) fn compile_settings(l: &Loaded, probs: &mut Problems) -> Settings {
    let c = &l.config;
    if c.threads < 1 || c.threads > 1024 {
        probs.push(l.problem_at(
            "threads",
            format!("threads must be 1..1024, not {}", c.threads),
        ));
    }
    if let Some(p) = &c.error_log {
        check_log_dir(l, p, "error_log", probs);
    }
    check_dir(l, &c.pid_file, "pid_file", "pid file", probs);
    // The control socket `<pid_file>.ctl` is bound at start; `-t` finds a path too long for it.
    let ctl = format!("{}.ctl", c.pid_file);
    if ctl.len() > MAX_SOCKET_PATH {
        probs.push(l.problem_at(
            "pid_file",
            format!(
                "control socket path {ctl} is {} bytes long; a Unix socket path has at most {MAX_SOCKET_PATH}",
                ctl.len()
            ),
        ));
    }
    if c.worker_connections < 1 || c.worker_connections > 1_000_000 {
        probs.push(l.problem_at(
            "worker_connections",
            format!(
                "worker_connections must be 1..1000000, not {}",
                c.worker_connections
            ),
        ));
    }
    Settings {
        worker_connections: c.worker_connections.clamp(1, 1_000_000) as usize,
        pid_file: c.pid_file.clone(),
        error_log: c.error_log.clone().filter(|p| p != "off"),
        threads: c.threads.clamp(1, 1024) as usize,
        work_stealing: c.work_stealing,
        daemon: c.daemon,
        grace_period: c.grace_period.0,
        shutdown_timeout: c.shutdown_timeout.0,
    }
}

/// The `demo_backends` list.
pub(super) fn compile_demos(l: &Loaded, probs: &mut Problems) -> Vec<Demo> {
    let mut demos = Vec::new();
    for (i, d) in l.config.demo_backends.iter().enumerate() {
        match parse_addr(&d.listen, "127.0.0.1") {
            Ok(listen) => demos.push(Demo {
                listen,
                name: d.name.clone(),
            }),
            Err(e) => probs.push(l.problem_at(&format!("demo_backends.{i}.listen"), e)),
        }
    }
    demos
}

/// Longest path a Unix socket can bind to (`sun_path` holds 108 bytes with the final NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The file at `path` (`what`, named at the dotted `at`) will be created by the master, so its
/// directory must exist; `-t` says so rather than the start failing.
fn check_dir(l: &Loaded, path: &str, at: &str, what: &str, probs: &mut Problems) {
    let dir = config::log_dir(path);
    // The private runtime directory is created by the master on start.
    if !dir.is_dir() && dir != config::runtime_dir() {
        probs.push(l.problem_at(
            at,
            format!("{what} directory {} does not exist", dir.display()),
        ));
    }
}

/// A log file at `path` (named at the dotted `at`) needs an existing directory, except `off`
/// and the embedded default's logs, whose directories are created on start.
pub(super) fn check_log_dir(l: &Loaded, path: &str, at: &str, probs: &mut Problems) {
    if path == "off" || l.embedded {
        return;
    }
    let dir = config::log_dir(path);
    if !dir.is_dir() {
        probs.push(l.problem_at(
            at,
            format!("log directory {} does not exist", dir.display()),
        ));
    }
}
