//! `graygate -s SIGNAL`: find the running generation through the pid file and signal it.

use std::fmt;

/// What `-s` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Command {
    /// Re-read the config and apply it atomically (new listeners: through an upgrade).
    Reload,
    /// Start the binary now on disk and hand the listening sockets over to it.
    Upgrade,
    /// Reopen log files (after logrotate renamed them).
    Reopen,
    /// Stop accepting, drain, exit.
    Quit,
    /// Exit now.
    Stop,
}

impl Command {
    fn signal(self) -> libc::c_int {
        match self {
            Command::Reload => libc::SIGHUP,
            Command::Upgrade => libc::SIGUSR2,
            Command::Reopen => libc::SIGUSR1,
            Command::Quit => libc::SIGQUIT,
            Command::Stop => libc::SIGTERM,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Command::Reload => "reload",
            Command::Upgrade => "upgrade",
            Command::Reopen => "reopen",
            Command::Quit => "quit",
            Command::Stop => "stop",
        };
        f.write_str(s)
    }
}

/// Reads the pid in `pid_file`.
pub fn read_pid(pid_file: &str) -> Result<libc::pid_t, String> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("cannot read pid file {pid_file}: {e} (is graygate running?)"))?;
    text.trim()
        .parse::<libc::pid_t>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid pid \"{}\" in {pid_file}", text.trim()))
}

/// Carries out `cmd` on the master named in `pid_file`. Reload and upgrade go through the
/// master's control socket so that their outcome comes back; the others are plain signals.
pub fn send(cmd: Command, pid_file: &str) -> Result<String, String> {
    if matches!(cmd, Command::Reload | Command::Upgrade) {
        let answer = super::master::request(pid_file, &cmd.to_string())?;
        return match answer.strip_prefix("error: ") {
            Some(e) => Err(e.to_string()),
            None => Ok(answer.trim_start_matches("ok ").to_string()),
        };
    }
    let pid = read_pid(pid_file)?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, cmd.signal()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!(
            "kill({pid}, {cmd}) failed: {e} (stale pid file {pid_file}?)"
        ));
    }
    Ok(format!("signal sent to {pid}"))
}
