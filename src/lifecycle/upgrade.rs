//! `-s upgrade`: the master re-executes the binary on disk in place.
//!
//! The pid stays (process managers and the pid file see no change). What the new image needs
//! crosses the exec as inherited descriptors named in environment variables: the locked pid
//! file, the listening sockets, the control socket, the connection of the `-s upgrade` client
//! (answered by the new image), and the pids of the running workers, which stay our children
//! and are adopted. The new image then starts a new worker generation from the new binary and
//! drains the old one; if that generation fails, the old workers keep serving.
//!
//! Before the exec, the old image checks what can be checked without the new code running:
//! the new binary's `-t` on the config, and every new listen address bound. Signals are
//! blocked across the exec and delivered once the new image has its handlers.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::control::Message;
use super::error::Error;
use super::generation::Worker;
use super::master::{open_error_log, runtime, Master};
use super::os;
use super::pidfile::PidFile;
use super::sockets::{parse_env, plan_addrs, Sockets, LISTEN_FDS_ENV};
use super::source::Source;

const INHERIT_ENV: &str = "GRAYGATE_INHERIT";
const EXE_ENV: &str = "GRAYGATE_EXE";
const PID_FILE_ENV: &str = "GRAYGATE_PID_FILE";

/// What a re-executed master takes over.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inherit {
    lock: RawFd,
    ctl: RawFd,
    client: Option<RawFd>,
    current: Option<i32>,
    old: Vec<i32>,
    exe: PathBuf,
    pid_file: String,
    listen: Vec<(String, RawFd)>,
}

impl Inherit {
    /// Present only in a master started by a re-exec; read once and removed, so that no
    /// worker or later child sees it.
    pub fn from_env() -> Option<Inherit> {
        let v = std::env::var(INHERIT_ENV).ok()?;
        let mut i = Inherit::parse(&v)?;
        i.exe = std::env::var_os(EXE_ENV)?.into();
        i.pid_file = std::env::var(PID_FILE_ENV).ok()?;
        i.listen = parse_env(&std::env::var(LISTEN_FDS_ENV).unwrap_or_default());
        for k in [INHERIT_ENV, EXE_ENV, PID_FILE_ENV, LISTEN_FDS_ENV] {
            // SAFETY (std: set/remove_var are unsafe only with other threads): called first
            // thing in the master, before any thread is started.
            std::env::remove_var(k);
        }
        Some(i)
    }

    fn parse(v: &str) -> Option<Inherit> {
        let mut i = Inherit {
            lock: -1,
            ctl: -1,
            ..Inherit::default()
        };
        for kv in v.split_whitespace() {
            let (k, n) = kv.split_once('=')?;
            let n: i32 = n.parse().ok()?;
            match k {
                "lock" => i.lock = n,
                "ctl" => i.ctl = n,
                "client" => i.client = Some(n),
                "current" => i.current = Some(n),
                "old" => i.old.push(n),
                _ => return None,
            }
        }
        (i.lock >= 0 && i.ctl >= 0).then_some(i)
    }

    fn to_env(&self) -> String {
        let mut v = format!("lock={} ctl={}", self.lock, self.ctl);
        for (k, n) in [("client", self.client), ("current", self.current)] {
            if let Some(n) = n {
                v.push_str(&format!(" {k}={n}"));
            }
        }
        for o in &self.old {
            v.push_str(&format!(" old={o}"));
        }
        v
    }
}

impl Master {
    /// Carries out an upgrade. Returns only if it failed (on success the new image runs and
    /// answers the client on the inherited connection).
    pub(super) fn upgrade(&mut self, path: Option<PathBuf>, client: Option<RawFd>) -> Message {
        let e = self.exec_new_image(path, client);
        log::error!("upgrade failed, the running generation keeps serving: {e}");
        Message::Err(e.to_string())
    }

    /// Replaces this image; returns only with the reason it could not.
    fn exec_new_image(&mut self, path: Option<PathBuf>, client: Option<RawFd>) -> Error {
        let path = path.or_else(|| self.source.path.clone());
        let plan = match Source::read(path.as_deref()).and_then(|s| s.compile(None)) {
            Ok(p) => p,
            Err(p) => return Error::Config(format!("configuration unchanged: {p}")),
        };
        if let Err(e) = check_binary(&self.exe, path.as_deref()) {
            return e;
        }
        let bound = match self.sockets.bind_missing(&plan_addrs(&plan)) {
            Ok(b) => b,
            Err(e) => return e,
        };
        let inherit = Inherit {
            lock: self.pidfile.raw_fd(),
            ctl: self.ctl.as_raw_fd(),
            client,
            current: self.current.as_ref().map(|w| w.pid),
            old: self.old.iter().map(|w| w.pid).collect(),
            ..Inherit::default()
        };
        let mut keep = self.sockets.fds();
        keep.extend([inherit.lock, inherit.ctl]);
        keep.extend(client);
        let env = [
            (INHERIT_ENV.to_string(), inherit.to_env()),
            (EXE_ENV.to_string(), self.exe.display().to_string()),
            (PID_FILE_ENV.to_string(), self.pidfile.path.clone()),
            (LISTEN_FDS_ENV.to_string(), self.sockets.env()),
        ];
        let mut args = Vec::new();
        if let Some(p) = &path {
            args.extend(["-c".to_string(), p.display().to_string()]);
        }
        log::info!("upgrade: executing {} in place", self.exe.display());
        crate::logs::flush_all();
        let mut err = None;
        for fd in &keep {
            if let Err(e) = os::set_inheritable(*fd, true) {
                err = Some(e);
            }
        }
        if err.is_none() {
            os::block_signals(true);
            err = Some(os::exec(&self.exe, &args, &env));
            os::block_signals(false);
        }
        for fd in &keep {
            let _ = os::set_inheritable(*fd, false);
        }
        self.sockets.close(&bound);
        Error::Spawn {
            what: self.exe.display().to_string(),
            err: err.unwrap_or_else(|| std::io::Error::other("exec failed")),
        }
    }
}

/// Runs the new binary's `-t` on the config: it must accept it before anything changes.
fn check_binary(exe: &Path, conf: Option<&Path>) -> Result<(), Error> {
    let mut check = Command::new(exe);
    check.arg("-t");
    if let Some(p) = conf {
        check.arg("-c").arg(p);
    }
    let out = check.output().map_err(|err| Error::Spawn {
        what: exe.display().to_string(),
        err,
    })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr)
        .trim()
        .replace('\n', "; ");
    Err(Error::Worker(format!(
        "new binary rejected the configuration: {err}"
    )))
}

/// The second half of an upgrade, in the new image: adopt, start a generation, answer.
pub fn resume(inh: Inherit, conf: Option<PathBuf>) -> Result<(), Error> {
    let source = Source::read(conf.as_deref()).map_err(|p| Error::Config(p.to_string()))?;
    let plan = source
        .compile(None)
        .map_err(|p| Error::Config(p.to_string()))?;
    open_error_log(&plan)?;
    let pidfile = PidFile::adopt(&inh.pid_file, inh.lock)?;
    let sockets = Sockets::adopt(&inh.listen);
    let ctl = os::adopt_fd(inh.ctl)
        .map(std::os::unix::net::UnixListener::from)
        .and_then(|l| l.set_nonblocking(true).map(|_| l))
        .map_err(|err| Error::Control {
            path: super::control::ctl_path(&inh.pid_file),
            err,
        })?;
    let client = inh
        .client
        .and_then(|fd| os::adopt_fd(fd).ok())
        .map(std::os::unix::net::UnixStream::from);
    let rt = runtime()?;
    let code = rt.block_on(async move {
        let ctl = tokio::net::UnixListener::from_std(ctl).map_err(|err| Error::Os {
            what: "control socket",
            err,
        })?;
        let plan = Arc::new(plan);
        let mut m = Master::new(inh.exe, source.clone(), plan.clone(), sockets, pidfile, ctl)?;
        m.current = inh.current.map(Worker::adopted);
        m.old = inh.old.into_iter().map(Worker::adopted).collect();
        // The adopted workers run the old config until the new generation takes over.
        m.stale = true;
        log::info!("master {} running the new binary", std::process::id());
        let exe = m.exe.clone();
        let answer = match m.new_generation(&exe, &source, &plan).await {
            Ok(_) => {
                m.stale = false;
                let pid = m.current.as_ref().map_or(0, |w| w.pid);
                Message::Ok(format!("upgraded, worker {pid}"))
            }
            Err(e) => {
                log::error!("upgrade: the new binary's first generation failed, the old workers keep serving: {e}");
                Message::Err(format!("the new generation failed, the old one keeps serving: {e}"))
            }
        };
        if let Some(mut c) = client {
            let _ = c.set_write_timeout(Some(super::control::READ_TIMEOUT));
            let _ = c.write_all(format!("{answer}\n").as_bytes());
        }
        Ok::<i32, Error>(m.serve().await)
    })?;
    crate::logs::flush_all();
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherit_env_round_trip() {
        let i = Inherit {
            lock: 3,
            ctl: 4,
            client: Some(9),
            current: Some(100),
            old: vec![90, 80],
            ..Inherit::default()
        };
        let back = Inherit::parse(&i.to_env()).unwrap();
        assert_eq!(back, i);
        assert!(Inherit::parse("ctl=4").is_none(), "the lock is required");
        assert!(Inherit::parse("lock=3 ctl=4 what=1").is_none());
    }
}
