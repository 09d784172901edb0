//! The control protocol, both ends: `graygate -s` and the workers talk to the master over a
//! Unix socket next to the pid file (`<pid_file>.ctl`), one line per message.
//!
//! | line                      | from       | meaning                                         |
//! |---------------------------|------------|-------------------------------------------------|
//! | `reload [FILE]`           | `-s`       | apply FILE (absolute; none: the master's file)  |
//! | `upgrade [FILE]`          | `-s`       | re-exec the binary on disk, new generation      |
//! | `reopen`                  | `-s`       | reopen every log file                           |
//! | `ready PID`               | worker     | the worker accepts on every listener            |
//! | `reloaded PID ok\|REASON`  | worker     | outcome of an in-place reload                   |
//! | `ok TEXT` / `error TEXT`  | master     | the answer to a command                         |
//!
//! Reload and upgrade answer only once the change is live. `quit` and `stop` are plain signals
//! to the pid in the pid file; so is `reopen`, but only when the control socket is unreachable
//! (a master started before the socket existed, or its socket file removed).

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::error::Error;
use super::os;

/// Environment variable telling a worker where to report.
pub const CTL_ENV: &str = "GRAYGATE_MASTER_CTL";

/// How long the master waits for a connected peer's line: a silent client must not hold it.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest a `-s` client waits for an answer (a new generation's start included).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// The control socket next to a pid file.
pub fn ctl_path(pid_file: &str) -> PathBuf {
    PathBuf::from(format!("{pid_file}.ctl"))
}

/// One line of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Reload(Option<PathBuf>),
    Upgrade(Option<PathBuf>),
    Reopen,
    Ready(i32),
    Reloaded(i32, String),
    Ok(String),
    Err(String),
}

impl Message {
    /// The one parser; `None` for anything that is not a message.
    pub fn parse(line: &str) -> Option<Message> {
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        let path = || (!rest.is_empty()).then(|| PathBuf::from(rest));
        let pid = |s: &str| s.parse::<i32>().ok().filter(|p| *p > 0);
        Some(match verb {
            "reload" => Message::Reload(path()),
            "upgrade" => Message::Upgrade(path()),
            "reopen" if rest.is_empty() => Message::Reopen,
            "ready" => Message::Ready(pid(rest)?),
            "reloaded" => {
                let (p, outcome) = rest.split_once(' ')?;
                Message::Reloaded(pid(p)?, outcome.to_string())
            }
            "ok" => Message::Ok(rest.to_string()),
            "error" => Message::Err(rest.to_string()),
            _ => return None,
        })
    }

    /// Whether a worker (not a `-s` client) sends this.
    pub fn is_report(&self) -> bool {
        matches!(self, Message::Ready(_) | Message::Reloaded(..))
    }
}

/// The one writer: a single line, newlines inside texts folded to "; ".
impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fold = |s: &str| s.trim().replace('\n', "; ");
        let opt = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| format!(" {}", fold(&p.display().to_string())))
                .unwrap_or_default()
        };
        match self {
            Message::Reload(p) => write!(f, "reload{}", opt(p)),
            Message::Upgrade(p) => write!(f, "upgrade{}", opt(p)),
            Message::Reopen => f.write_str("reopen"),
            Message::Ready(pid) => write!(f, "ready {pid}"),
            Message::Reloaded(pid, o) => write!(f, "reloaded {pid} {}", fold(o)),
            Message::Ok(t) => write!(f, "ok {}", fold(t)),
            Message::Err(t) => write!(f, "error {}", fold(t)),
        }
    }
}

/// Reads one message from a connected peer, giving up after [`READ_TIMEOUT`].
pub async fn read<R: tokio::io::AsyncRead + Unpin>(r: R) -> Option<Message> {
    let mut line = String::new();
    let mut r = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(r, 4096));
    match tokio::time::timeout(READ_TIMEOUT, r.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => Message::parse(&line),
        _ => None,
    }
}

/// Writes one message (best effort: a client that left needs no answer).
pub async fn write<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, m: &Message) {
    let _ = tokio::time::timeout(READ_TIMEOUT, w.write_all(format!("{m}\n").as_bytes())).await;
}

/// Sends `m` to the master behind `pid_file` and returns its answer.
pub fn request(pid_file: &str, m: &Message) -> Result<Message, Error> {
    let path = ctl_path(pid_file);
    let err = |e| Error::Control {
        path: path.clone(),
        err: e,
    };
    let mut s = std::os::unix::net::UnixStream::connect(&path).map_err(err)?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(err)?;
    s.write_all(format!("{m}\n").as_bytes()).map_err(err)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(err)?;
    Message::parse(&line).ok_or_else(|| {
        Error::Refused(format!(
            "no answer from the master at {} (see its error log)",
            path.display()
        ))
    })
}

/// A worker's report to its master (no master: a stand-alone run, nothing to tell).
pub fn report(m: &Message) {
    let Ok(path) = std::env::var(CTL_ENV) else {
        return;
    };
    if let Ok(mut s) = std::os::unix::net::UnixStream::connect(path) {
        let _ = s.write_all(format!("{m}\n").as_bytes());
    }
}

/// What `-s` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Command {
    /// Apply the config file (FILE of -c, which later reloads then read); new listeners start a new worker generation.
    Reload,
    /// Re-execute the binary now on disk in place (same pid) and start a new worker generation.
    Upgrade,
    /// Reopen log files (after logrotate renamed them).
    Reopen,
    /// Stop accepting, drain, exit.
    Quit,
    /// Exit now (also during a graceful stop).
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
        f.write_str(match self {
            Command::Reload => "reload",
            Command::Upgrade => "upgrade",
            Command::Reopen => "reopen",
            Command::Quit => "quit",
            Command::Stop => "stop",
        })
    }
}

/// Reads the pid in `pid_file`.
pub fn read_pid(pid_file: &str) -> Result<i32, Error> {
    let text = std::fs::read_to_string(pid_file).map_err(|e| {
        Error::Refused(format!(
            "cannot read pid file {pid_file}: {e} (is graygate running?)"
        ))
    })?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::Refused(format!("invalid pid \"{}\" in {pid_file}", text.trim())))
}

/// Carries out `cmd` on the master named in `pid_file`. Reload, upgrade and reopen go through
/// the control socket (reload and upgrade with the absolute config path, so that the master
/// applies the file that was just checked here) and say how it went; reopen falls back to
/// SIGUSR1 when the socket is unreachable; quit and stop are plain signals.
/// The master's answer to a command while it is busy with another.
pub(super) const BUSY: &str = "busy, try again";
/// How long `-s reload`/`-s upgrade` wait for a busy master (a generation's start is bounded
/// by 10 s, an upgrade's re-exec and start by about twice that).
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

pub fn send(cmd: Command, pid_file: &str, conf: Option<&Path>) -> Result<String, Error> {
    let conf = || conf.map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()));
    let m = match cmd {
        Command::Reload => Some(Message::Reload(conf())),
        Command::Upgrade => Some(Message::Upgrade(conf())),
        Command::Reopen => Some(Message::Reopen),
        Command::Quit | Command::Stop => None,
    };
    let mut why = String::new();
    // The master answers BUSY while a reload or upgrade is under way (it serves one command at
    // a time): a reload or upgrade waits its turn, a reopen goes as the signal nginx's does
    // (queued by the master, never refused), so that logrotate never fails on a busy moment.
    let deadline = std::time::Instant::now() + BUSY_WAIT;
    while let Some(m) = &m {
        match request(pid_file, m) {
            Ok(Message::Err(t)) if t == BUSY && cmd == Command::Reopen => {
                why = " (the master was busy: sent as a signal)".into();
                break;
            }
            Ok(Message::Err(t)) if t == BUSY && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Ok(Message::Ok(t)) => return Ok(t),
            Ok(Message::Err(t)) => return Err(Error::Refused(t)),
            Ok(other) => return Err(Error::Refused(format!("unexpected answer \"{other}\""))),
            // Nobody listens: a signal still reaches a master whose socket file is gone.
            Err(Error::Control { path, err })
                if cmd == Command::Reopen
                    && matches!(
                        err.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
            {
                why = format!(" (control socket {} unreachable: {err})", path.display());
                break;
            }
            Err(e) => return Err(e),
        }
    }
    let pid = read_pid(pid_file)?;
    os::kill(pid, cmd.signal()).map_err(|e| {
        Error::Refused(format!(
            "kill({pid}, {cmd}) failed: {e} (stale pid file {pid_file}?)"
        ))
    })?;
    Ok(format!("signal sent to {pid}{why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_reads_back_as_written() {
        let all = [
            Message::Reload(None),
            Message::Reload(Some("/etc/graygate/a b.yaml".into())),
            Message::Upgrade(Some("/x.yaml".into())),
            Message::Reopen,
            Message::Ready(42),
            Message::Reloaded(42, "ok".into()),
            Message::Reloaded(7, "f.yaml:1:2: bad".into()),
            Message::Ok("upgraded, worker 9".into()),
            Message::Err("bind() to 0.0.0.0:1 failed".into()),
        ];
        for m in all {
            assert_eq!(Message::parse(&format!("{m}\n")), Some(m.clone()), "{m}");
        }
    }

    #[test]
    fn garbage_and_bad_pids_are_not_messages() {
        for l in [
            "",
            "hello",
            "ready",
            "ready -3",
            "ready x",
            "reloaded 5",
            "reopen now",
        ] {
            assert_eq!(Message::parse(l), None, "{l:?}");
        }
    }

    #[test]
    fn multi_line_texts_stay_one_line() {
        let m = Message::Err("a\nb".into());
        assert_eq!(m.to_string(), "error a; b");
    }
}
