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
//!
//! The new image never reads the config file: the bytes checked here cross the exec in a
//! memfd (as for workers), with the running generation's bytes in a second one. After the
//! exec nothing may take the service down: if the checked bytes do not arrive or do not
//! compile, the new image runs as master of the old generation with the running bytes; an
//! error log that cannot be opened leaves logging on stderr; a lost pid file lock or control
//! socket is taken again by path. Only if none of that works (both configs unusable, the pid
//! file or control socket not re-creatable, no runtime) does the new image exit, and its
//! workers then drain and exit on their parent-death SIGQUIT.

use std::fs::File;
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
    /// memfds: the config checked for the upgrade, and the one the running generation serves.
    conf: Option<RawFd>,
    prev: Option<RawFd>,
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
                "conf" => i.conf = Some(n),
                "prev" => i.prev = Some(n),
                "current" => i.current = Some(n),
                "old" => i.old.push(n),
                _ => return None,
            }
        }
        (i.lock >= 0 && i.ctl >= 0).then_some(i)
    }

    fn to_env(&self) -> String {
        let mut v = format!("lock={} ctl={}", self.lock, self.ctl);
        for (k, n) in [
            ("client", self.client),
            ("conf", self.conf),
            ("prev", self.prev),
            ("current", self.current),
        ] {
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
        let local = match Source::read(path.as_deref()) {
            Ok(s) => s,
            Err(p) => return Error::Config(format!("configuration unchanged: {p}")),
        };
        // In a fleet: the file merged with the fleet's config (else the file as it is).
        let (source, plan) = match self.fleet_compile(&local) {
            Ok(x) => x,
            Err(p) => return Error::Config(format!("configuration unchanged: {p}")),
        };
        if let Err(e) = check_binary(&self.exe, path.as_deref()) {
            return e;
        }
        // The new binary checked the file; it is handed our bytes, which must be the same.
        if Source::read(path.as_deref()).ok().as_ref() != Some(&local) {
            return Error::Config(format!(
                "configuration unchanged: {} changed during the upgrade's check; try again",
                source.name()
            ));
        }
        let memfd_err = |err| Error::Os {
            what: "handing the config over",
            err,
        };
        let conf = match source.to_memfd() {
            Ok(f) => f,
            Err(e) => return memfd_err(e),
        };
        let prev = match self.source.to_memfd() {
            Ok(f) => f,
            Err(e) => return memfd_err(e),
        };
        let bound = match self.sockets.bind_missing(&plan_addrs(&plan)) {
            Ok(b) => b,
            Err(e) => return e,
        };
        let inherit = Inherit {
            lock: self.pidfile.raw_fd(),
            ctl: self.ctl.as_raw_fd(),
            client,
            conf: Some(conf.as_raw_fd()),
            prev: Some(prev.as_raw_fd()),
            current: self.current.as_ref().map(|w| w.pid),
            old: self.old.iter().map(|w| w.pid).collect(),
            ..Inherit::default()
        };
        let mut keep = self.sockets.fds();
        keep.extend([
            inherit.lock,
            inherit.ctl,
            conf.as_raw_fd(),
            prev.as_raw_fd(),
        ]);
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
/// Every failure that can be lived with is logged and told to the client (see the top).
pub fn resume(inh: Inherit) -> Result<(), Error> {
    let mut trouble = Vec::new();
    let checked = take_source(inh.conf).and_then(compiled);
    let prev = take_source(inh.prev);
    let (source, plan, fresh) = match checked {
        Ok((s, p)) => (s, p, true),
        Err(e) => {
            trouble.push(format!("the checked configuration is unusable here: {e}"));
            let (s, p) = prev.and_then(compiled).map_err(|e2| {
                Error::Config(format!(
                    "{e}; and the running configuration: {e2}; the new master exits"
                ))
            })?;
            (s, p, false)
        }
    };
    if let Err(e) = open_error_log(&plan) {
        trouble.push(format!("{e}; logging to stderr"));
    }
    let pidfile = PidFile::adopt(&inh.pid_file, inh.lock).or_else(|e| {
        trouble.push(format!("{e}; locking it again"));
        PidFile::lock(&inh.pid_file)
    })?;
    let sockets = Sockets::adopt(&inh.listen);
    let ctl_path = super::control::ctl_path(&inh.pid_file);
    let ctl = os::adopt_fd(inh.ctl)
        .map(std::os::unix::net::UnixListener::from)
        .or_else(|e| {
            trouble.push(format!("control socket: {e}; binding it again"));
            let _ = std::fs::remove_file(&ctl_path);
            std::os::unix::net::UnixListener::bind(&ctl_path)
        })
        .and_then(|l| l.set_nonblocking(true).map(|_| l))
        .map_err(|err| Error::Control {
            path: ctl_path.clone(),
            err,
        })?;
    for t in &trouble {
        log::error!("upgrade: {t}");
    }
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
        // A fleet's watch goes on from the revision the handed-over config was made from.
        if let Ok(local) = Source::read(source.path.as_deref()) {
            m.fleet = crate::fleet::watch::Fleet::resume(&source.text, &local.text);
        }
        log::info!("master {} running the new binary", std::process::id());
        let answer = if fresh {
            // The adopted workers run the old config until the new generation takes over.
            m.stale = true;
            let exe = m.exe.clone();
            match m.new_generation(&exe, &source, &plan).await {
                Ok(_) => {
                    m.stale = false;
                    let pid = m.current.as_ref().map_or(0, |w| w.pid);
                    let mut text = format!("upgraded, worker {pid}");
                    for t in &trouble {
                        text.push_str(&format!("; warning: {t}"));
                    }
                    Message::Ok(text)
                }
                Err(e) => {
                    log::error!("upgrade: the new binary's first generation failed, the old workers keep serving: {e}");
                    Message::Err(format!("the new generation failed, the old one keeps serving: {e}"))
                }
            }
        } else {
            // The old workers serve the running bytes, which this master now holds.
            Message::Err(format!(
                "the new binary runs the master, but the old generation keeps serving the running configuration: {}",
                trouble.join("; ")
            ))
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

/// Reads a config hand-over memfd named in [`Inherit`] (and closes it).
fn take_source(fd: Option<RawFd>) -> Result<Source, String> {
    let fd = fd.ok_or("no config hand-over")?;
    let f = os::adopt_fd(fd)
        .map(File::from)
        .map_err(|e| format!("config hand-over fd {fd}: {e}"))?;
    Source::read_from(&f).map_err(|e| format!("config hand-over fd {fd}: {e}"))
}

fn compiled(s: Source) -> Result<(Source, crate::plan::Plan), String> {
    let p = s.compile(None).map_err(|p| p.to_string())?;
    Ok((s, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    #[test]
    fn inherit_env_round_trip() {
        let i = Inherit {
            lock: 3,
            ctl: 4,
            client: Some(9),
            conf: Some(5),
            prev: Some(6),
            current: Some(100),
            old: vec![90, 80],
            ..Inherit::default()
        };
        let back = Inherit::parse(&i.to_env()).unwrap();
        assert_eq!(back, i);
        assert!(Inherit::parse("ctl=4").is_none(), "the lock is required");
        assert!(Inherit::parse("lock=3 ctl=4 what=1").is_none());
    }

    #[test]
    fn checked_bytes_cross_by_memfd_named_in_the_env() {
        use std::os::fd::IntoRawFd;
        let s = Source {
            path: Some("/etc/graygate/g.yaml".into()),
            text: "pid_file: /tmp/x.pid\n".into(),
        };
        let fd = OwnedFd::from(s.to_memfd().unwrap()).into_raw_fd();
        let i = Inherit {
            lock: 3,
            ctl: 4,
            conf: Some(fd),
            ..Inherit::default()
        };
        let back = Inherit::parse(&i.to_env()).unwrap();
        assert_eq!(take_source(back.conf), Ok(s));
        // Taken once: the descriptor is closed after reading.
        assert!(take_source(Some(fd)).is_err());
        assert!(take_source(None).is_err());
    }
}
