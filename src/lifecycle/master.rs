//! The master: one process with a stable pid for the life of the program, as nginx's.
//!
//! It locks and writes the pid file, owns the listening sockets (`sockets`), serves the
//! control socket (`control`), and runs worker generations (`generation`): each worker is
//! `graygate --worker` serving the master's sockets with the config bytes the master checked.
//! - A worker that dies is replaced at once (within the 100 ms tick); the master stays up.
//! - `reload`: applied in place by the worker (SIGHUP) when the sockets and process settings
//!   are unchanged, else by a new generation on newly bound sockets; the old one drains.
//! - `upgrade`: the master re-executes the binary on disk in place (`upgrade`), keeping its
//!   pid, sockets, control socket and workers, then starts a new generation and drains the
//!   old one. Process managers see one pid throughout.
//! - A new generation that does not report ready in time is killed; the old one keeps serving.
//!
//! This file is the loop and the decisions; the pieces it drives live in their own modules.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::control::{self, Message};
use super::error::Error;
use super::generation::Worker;
use super::os;
use super::pidfile::PidFile;
use super::sockets::{plan_addrs, Sockets};
use super::source::Source;
use super::upgrade::Inherit;
use crate::plan::Plan;

/// The binary a reload or a respawn runs: the master's own image, even if the file on disk
/// has been replaced since (only `-s upgrade` switches binaries).
pub(super) const OWN_IMAGE: &str = "/proc/self/exe";

pub(super) struct Signals {
    hup: Signal,
    usr1: Signal,
    usr2: Signal,
    quit: Signal,
    pub term: Signal,
    pub int: Signal,
}

impl Signals {
    fn install() -> Result<Signals, Error> {
        let s = |k| {
            signal(k).map_err(|err| Error::Os {
                what: "installing signal handlers",
                err,
            })
        };
        Ok(Signals {
            hup: s(SignalKind::hangup())?,
            usr1: s(SignalKind::user_defined1())?,
            usr2: s(SignalKind::user_defined2())?,
            quit: s(SignalKind::quit())?,
            term: s(SignalKind::terminate())?,
            int: s(SignalKind::interrupt())?,
        })
    }
}

pub(super) struct Master {
    /// The binary on disk as invoked (symlinks kept): what `upgrade` executes.
    pub exe: PathBuf,
    /// The checked config the current generation runs, and its plan (the one copy of the
    /// process settings).
    pub source: Source,
    pub plan: Arc<Plan>,
    /// The current generation runs another config than `source` (adopted across a re-exec
    /// whose new generation failed): reloads then always start a new generation.
    pub stale: bool,
    pub sockets: Sockets,
    /// Sockets no longer in the config, closed once the old generations are gone.
    pub retiring: Vec<OwnedFd>,
    pub current: Option<Worker>,
    pub old: Vec<Worker>,
    /// A worker started but not ready yet.
    pub pending: Option<Worker>,
    pub pidfile: PidFile,
    pub ctl: UnixListener,
    pub(super) sigs: Signals,
    /// TERM or INT arrived while waiting for a worker.
    pub stop_now: bool,
    pub last_spawn: Instant,
    /// The fleet this gateway belongs to (`config_store`), if any.
    pub fleet: Option<crate::fleet::watch::Fleet>,
}

/// Starts the master: a fresh start, or the second half of a re-exec (`upgrade`).
pub fn run(conf: Option<PathBuf>, daemon: bool) -> Result<(), Error> {
    if let Some(inherit) = Inherit::from_env() {
        return super::upgrade::resume(inherit);
    }
    // An absolute config path keeps working after daemon() and for every generation.
    let conf = conf.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    let exe = invoked_exe().map_err(|err| Error::Os {
        what: "finding our own binary",
        err,
    })?;
    let mut source = Source::read(conf.as_deref()).map_err(|p| Error::Config(p.to_string()))?;
    let fleet = super::fleet::start(&mut source)?;
    let (plan, notes) = source
        .compile_noting(None)
        .map_err(|p| Error::Config(p.to_string()))?;
    // The private runtime directory is made safe before anything is written in it.
    super::runtime_dir::prepare(&plan).map_err(Error::Refused)?;
    // Before anything else: a second instance must refuse without touching the first's files.
    let pidfile = PidFile::lock(&plan.settings.pid_file)?;
    let mut sockets = Sockets::default();
    if let Err(e) = sockets.bind_missing(&plan_addrs(&plan)) {
        pidfile.remove();
        return Err(e);
    }
    if daemon || plan.settings.daemon {
        os::daemon().map_err(|err| Error::Os {
            what: "daemon()",
            err,
        })?;
    }
    open_error_log(&plan)?;
    if let Some(notice) = &pidfile.stale {
        log::info!("{notice}");
    }
    for n in notes {
        log::info!("{n}");
    }
    let mut fleet = fleet;
    for n in fleet.iter_mut().flat_map(|f| std::mem::take(&mut f.notes)) {
        log::info!("{n}");
    }
    for f in fleet.iter_mut() {
        for e in std::mem::take(&mut f.errors) {
            log::error!("{e}");
        }
        // Cached now the runtime directory is safe: a start from this revision alone can
        // later start again while etcd is away.
        f.save();
    }
    let rt = runtime()?;
    let code = rt.block_on(async move {
        let ctl_path = control::ctl_path(&pidfile.path);
        let _ = std::fs::remove_file(&ctl_path);
        let ctl = UnixListener::bind(&ctl_path).map_err(|err| Error::Control {
            path: ctl_path,
            err,
        })?;
        let mut m = Master::new(exe, source, Arc::new(plan), sockets, pidfile, ctl)?;
        m.fleet = fleet;
        // After daemon(): the watch's thread must live in this process.
        if let Some(f) = m.fleet.as_mut() {
            f.watch();
        }
        let (source, want) = (m.source.clone(), plan_addrs(&m.plan));
        let w = match m.start_worker(Path::new(OWN_IMAGE), &source, &want).await {
            Ok(w) => w,
            Err(e) => {
                // Also in the error log: a daemon's stderr goes nowhere.
                log::error!("{e}");
                m.pidfile.remove();
                return Err(e);
            }
        };
        log::info!("master {} started worker {}", std::process::id(), w.pid);
        m.current = Some(w);
        m.pidfile.write();
        Ok(m.serve().await)
    })?;
    crate::logs::flush_all();
    std::process::exit(code)
}

/// The binary as it was invoked, for `upgrade` to execute: argv[0] made absolute against the
/// start directory (or found on PATH, as the shell did), symlinks NOT resolved, so that a
/// deploy that re-points a symlink upgrades to the new target. `current_exe()` (which resolves
/// them) only when argv[0] says nothing usable.
fn invoked_exe() -> std::io::Result<PathBuf> {
    let arg0 = std::env::args_os().next().unwrap_or_default();
    let cwd = std::env::current_dir()?;
    match invoked_path(Path::new(&arg0), &cwd, std::env::var_os("PATH").as_deref()) {
        Some(p) => Ok(p),
        None => std::env::current_exe(),
    }
}

/// [`invoked_exe`] without the process: `arg0` with a slash is taken relative to `cwd`; a bare
/// name is the first executable file of that name on `path`.
pub(super) fn invoked_path(
    arg0: &Path,
    cwd: &Path,
    path: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let bytes = arg0.as_os_str().as_bytes();
    if bytes.is_empty() {
        return None;
    }
    if bytes.contains(&b'/') {
        return Some(cwd.join(arg0));
    }
    std::env::split_paths(path?)
        .map(|dir| cwd.join(dir).join(arg0))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::Os {
            what: "starting the runtime",
            err,
        })
}

/// Opens the error log (stderr stays the log if it fails) and starts the log writer.
pub(super) fn open_error_log(plan: &Plan) -> Result<(), Error> {
    let mut r = Ok(());
    if let Some(p) = &plan.settings.error_log {
        match crate::snapshot::open_log(p, plan.create_log_dirs) {
            Ok(f) => crate::logs::error::set_process_file(f),
            Err(err) => {
                r = Err(Error::Log {
                    path: p.clone(),
                    err,
                })
            }
        }
    }
    crate::logs::start_writer();
    r
}

impl Master {
    pub(super) fn new(
        exe: PathBuf,
        source: Source,
        plan: Arc<Plan>,
        sockets: Sockets,
        pidfile: PidFile,
        ctl: UnixListener,
    ) -> Result<Master, Error> {
        let sigs = Signals::install()?;
        // Signals blocked across a re-exec are delivered from here on.
        os::block_signals(false);
        Ok(Master {
            exe,
            source,
            plan,
            stale: false,
            sockets,
            retiring: Vec::new(),
            current: None,
            old: Vec::new(),
            pending: None,
            pidfile,
            ctl,
            sigs,
            stop_now: false,
            last_spawn: Instant::now(),
            fleet: None,
        })
    }

    /// The loop, until a stop; returns the exit code.
    pub(super) async fn serve(&mut self) -> i32 {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            if self.stop_now {
                return self.stop(false).await;
            }
            tokio::select! {
                _ = self.sigs.hup.recv() => {
                    let r = self.reload(None).await;
                    log::info!("reload (SIGHUP): {r}");
                }
                _ = self.sigs.usr1.recv() => self.reopen(),
                _ = self.sigs.usr2.recv() => {
                    self.upgrade(None, None);
                }
                _ = self.sigs.quit.recv() => return self.stop(true).await,
                _ = self.sigs.term.recv() => return self.stop(false).await,
                _ = self.sigs.int.recv() => return self.stop(false).await,
                conn = self.ctl.accept() => {
                    if let Ok((s, _)) = conn {
                        self.control(s).await;
                    }
                }
                _ = tick.tick() => self.reap().await,
                ev = crate::fleet::watch::Fleet::next(&mut self.fleet) => self.on_fleet(ev).await,
            }
        }
    }

    fn reopen(&self) {
        log::info!("reopening logs");
        crate::logs::reopen_all();
        self.signal_all(libc::SIGUSR1);
    }

    /// Serves one control connection. Commands only from our uid or root; reports only from
    /// our own workers; a silent peer is dropped after [`control::READ_TIMEOUT`].
    async fn control(&mut self, mut s: UnixStream) {
        let cred = s.peer_cred().ok();
        let Some(m) = control::read(&mut s).await else {
            return;
        };
        if m.is_report() {
            self.note_report(m, cred.and_then(|c| c.pid()));
            return;
        }
        let me = os::euid();
        let uid = cred.map(|c| c.uid());
        if uid != Some(0) && uid != Some(me) {
            log::warn!(
                "control: refused \"{m}\" from uid {} (only uid {me} or root may control this master)",
                uid.map_or("unknown".into(), |u| u.to_string())
            );
            control::write(&mut s, &Message::Err("permission denied".into())).await;
            return;
        }
        let answer = match m {
            Message::Reload(p) => self.reload(p).await,
            Message::Upgrade(p) => {
                // On success the new image answers on this very connection.
                let fd = s.as_raw_fd();
                self.upgrade(p, Some(fd))
            }
            Message::Reopen => {
                self.reopen();
                Message::Ok("reopened".into())
            }
            _ => Message::Err(format!("unexpected \"{m}\"")),
        };
        control::write(&mut s, &answer).await;
    }

    fn signal_all(&self, sig: libc::c_int) {
        for w in self.current.iter().chain(&self.old) {
            w.signal(sig);
        }
    }

    /// Stops every worker (QUIT: gracefully; else at once) and waits for them. A TERM or INT
    /// during a graceful stop turns it into a fast one.
    async fn stop(&mut self, graceful: bool) -> i32 {
        let mut sig = if graceful {
            libc::SIGQUIT
        } else {
            libc::SIGTERM
        };
        log::info!(
            "{} (master {})",
            if graceful {
                "gracefully shutting down"
            } else {
                "exiting"
            },
            std::process::id()
        );
        self.signal_all(sig);
        let s = &self.plan.settings;
        let limit = s.grace_period + s.shutdown_timeout + Duration::from_secs(5);
        let end = Instant::now() + limit;
        let mut code = 0;
        loop {
            self.old.extend(self.current.take());
            self.old.retain_mut(|w| w.try_wait().is_none());
            if self.old.is_empty() {
                break;
            }
            if Instant::now() > end {
                log::error!("workers still running after {limit:?}: killing them");
                self.signal_all_old(libc::SIGKILL);
                code = 1;
                break;
            }
            tokio::select! {
                _ = self.sigs.term.recv(), if sig == libc::SIGQUIT => {
                    log::info!("exiting now (SIGTERM during a graceful stop)");
                    sig = libc::SIGTERM;
                    self.signal_all_old(sig);
                }
                _ = self.sigs.int.recv(), if sig == libc::SIGQUIT => {
                    log::info!("exiting now (SIGINT during a graceful stop)");
                    sig = libc::SIGTERM;
                    self.signal_all_old(sig);
                }
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        self.pidfile.remove();
        code
    }

    fn signal_all_old(&self, sig: libc::c_int) {
        for w in &self.old {
            w.signal(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_invoked_path_keeps_symlinks_and_follows_path() {
        let dir = std::env::temp_dir().join(format!("graygate-invoked-{}", std::process::id()));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let real = bin.join("graygate-1.2");
        std::fs::write(&real, "").unwrap();
        std::fs::set_permissions(&real, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let link = bin.join("graygate");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let path = std::ffi::OsString::from(format!("/nonexistent-graygate:{}", bin.display()));
        // Relative: against the start directory, the symlink kept.
        assert_eq!(
            invoked_path(Path::new("bin/graygate"), &dir, None),
            Some(dir.join("bin/graygate"))
        );
        assert_eq!(
            invoked_path(&link, Path::new("/"), None),
            Some(link.clone())
        );
        // A bare name: found on PATH as the shell found it.
        assert_eq!(
            invoked_path(Path::new("graygate"), &dir, Some(&path)),
            Some(link)
        );
        assert_eq!(invoked_path(Path::new("nothere"), &dir, Some(&path)), None);
        assert_eq!(invoked_path(Path::new("graygate"), &dir, None), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
