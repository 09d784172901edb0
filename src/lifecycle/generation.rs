//! Worker generations: the master's side of starting, waiting for, replacing and reaping
//! workers, and of a reload (in place, or by a new generation).
//!
//! A worker process as the master sees it: started with the checked config bytes and the
//! listening sockets as inherited fds, signalled and reaped by pid (a re-executed master
//! adopts workers it did not spawn, so no `std::process::Child` here).

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use super::control::{self, Message, CTL_ENV};
use super::error::Error;
use super::master::{Master, OWN_IMAGE};
use super::os;
use super::sockets::plan_addrs;
use super::sockets::{Sockets, LISTEN_FDS_ENV};
use super::source::{Source, CONF_FD_ENV};
use crate::plan::Plan;

/// How long a new worker may take to report ready before it is killed. A worker binds
/// nothing and reads no file, so it is ready within milliseconds; this is for a hung binary.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Worker {
    pub pid: i32,
    /// Its config memfd (to rewrite before a SIGHUP); `None` for a worker adopted across a
    /// re-exec, which is only ever drained.
    pub conf: Option<File>,
    pub ready: bool,
    /// The outcome of the last reload it reported.
    pub reloaded: Option<String>,
}

impl Worker {
    /// Starts `exe --worker` on the sockets of `addrs` with `source`.
    pub fn spawn(
        exe: &Path,
        source: &Source,
        sockets: &Sockets,
        addrs: &[SocketAddr],
        ctl: &Path,
    ) -> Result<Worker, Error> {
        let spawn_err = |err| Error::Spawn {
            what: format!("worker {}", exe.display()),
            err,
        };
        let conf = source.to_memfd().map_err(spawn_err)?;
        let (env, mut fds) = sockets.env_for(addrs);
        fds.push(conf.as_raw_fd());
        let mut c = Command::new(exe);
        // `ps` shows the binary's path, not the `/proc/self/exe` it was started through.
        if let Ok(own) = std::env::current_exe() {
            c.arg0(own);
        }
        c.arg("--worker");
        if let Some(p) = &source.path {
            c.arg("-c").arg(p);
        }
        c.env(CTL_ENV, ctl)
            .env(
                super::worker::MASTER_PID_ENV,
                std::process::id().to_string(),
            )
            .env(CONF_FD_ENV, conf.as_raw_fd().to_string())
            .env(LISTEN_FDS_ENV, env)
            .stdin(Stdio::null());
        os::inherit_in_child(&mut c, fds);
        let child = c.spawn().map_err(spawn_err)?;
        Ok(Worker {
            pid: child.id() as i32,
            conf: Some(conf),
            ready: false,
            reloaded: None,
        })
    }

    /// A worker of the master image this one replaced.
    pub fn adopted(pid: i32) -> Worker {
        Worker {
            pid,
            conf: None,
            ready: true,
            reloaded: None,
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        let _ = os::kill(self.pid, sig);
    }

    /// `Some` once it has exited (and is reaped).
    pub fn try_wait(&mut self) -> Option<os::ExitStatus> {
        os::try_wait(self.pid)
    }

    /// Reaps it after a SIGKILL.
    pub fn wait(&mut self) {
        while self.try_wait().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Gives it new config bytes (applied on its next SIGHUP).
    pub fn set_config(&mut self, source: &Source) -> Result<(), Error> {
        let f = self
            .conf
            .as_ref()
            .ok_or_else(|| Error::Worker(format!("worker {} takes no new config", self.pid)))?;
        source.write_to(f).map_err(|err| Error::Os {
            what: "writing the config hand-over",
            err,
        })
    }
}

impl Master {
    /// Records a worker's report, if it comes from one of our workers.
    pub(super) fn note_report(&mut self, m: Message, peer: Option<i32>) {
        let (pid, w) = match &m {
            Message::Ready(p) | Message::Reloaded(p, _) => (*p, self.worker_mut(*p)),
            _ => return,
        };
        let Some(w) = w else {
            log::warn!("control: ignored \"{m}\": pid {pid} is not a worker of this master");
            return;
        };
        if peer != Some(pid) {
            log::warn!("control: ignored \"{m}\" sent by pid {peer:?}, not by the worker");
            return;
        }
        match m {
            Message::Ready(_) => w.ready = true,
            Message::Reloaded(_, o) => w.reloaded = Some(o),
            _ => {}
        }
    }

    fn worker_mut(&mut self, pid: i32) -> Option<&mut Worker> {
        self.current
            .iter_mut()
            .chain(self.old.iter_mut())
            .chain(self.pending.iter_mut())
            .find(|w| w.pid == pid)
    }

    /// Waits up to `limit` for a report that makes `done` true, serving only reports
    /// meanwhile (commands get "busy"). A TERM or INT ends the wait (see `stop_now`).
    pub(super) async fn wait_reports(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&mut Master) -> bool,
    ) -> bool {
        let end = Instant::now() + limit;
        while !done(self) {
            if Instant::now() > end || self.stop_now {
                return false;
            }
            tokio::select! {
                _ = self.sigs.term.recv() => self.stop_now = true,
                _ = self.sigs.int.recv() => self.stop_now = true,
                conn = self.ctl.accept() => {
                    if let Ok((mut s, _)) = conn {
                        let peer = s.peer_cred().ok().and_then(|c| c.pid());
                        match control::read(&mut s).await {
                            Some(m) if m.is_report() => self.note_report(m, peer),
                            Some(_) => control::write(&mut s, &Message::Err(control::BUSY.into())).await,
                            None => {}
                        }
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        true
    }

    /// Starts a generation serving `plan` (binding its new addresses first) and, once it is
    /// ready, drains the current one. On any failure nothing changes.
    pub(super) async fn new_generation(
        &mut self,
        exe: &Path,
        source: &Source,
        plan: &Plan,
    ) -> Result<String, Error> {
        let want = plan_addrs(plan);
        let bound = self.sockets.bind_missing(&want)?;
        match self.start_worker(exe, source, &want).await {
            Ok(w) => {
                let pid = w.pid;
                if let Some(old) = self.current.replace(w) {
                    log::info!("worker {pid} serving; worker {} drains", old.pid);
                    old.signal(libc::SIGQUIT);
                    self.old.push(old);
                }
                self.retiring.extend(self.sockets.take_unused(&want));
                Ok(format!("reloaded (new generation, worker {pid})"))
            }
            Err(e) => {
                self.sockets.close(&bound);
                Err(e)
            }
        }
    }

    /// Starts a worker on `addrs` with `source` and waits until it reports ready; one that
    /// exits or is not ready within [`READY_TIMEOUT`] is killed.
    pub(super) async fn start_worker(
        &mut self,
        exe: &Path,
        source: &Source,
        addrs: &[std::net::SocketAddr],
    ) -> Result<Worker, Error> {
        self.last_spawn = Instant::now();
        let ctl = control::ctl_path(&self.pidfile.path);
        let w = Worker::spawn(exe, source, &self.sockets, addrs, &ctl)?;
        let pid = w.pid;
        self.pending = Some(w);
        let mut exited = None;
        let ready = self
            .wait_reports(READY_TIMEOUT, |m| {
                let Some(w) = m.pending.as_mut() else {
                    return true;
                };
                if exited.is_none() {
                    exited = w.try_wait();
                }
                w.ready || exited.is_some()
            })
            .await;
        let Some(mut w) = self.pending.take() else {
            return Err(Error::Worker(format!("worker {pid} vanished")));
        };
        if ready && w.ready {
            return Ok(w);
        }
        if let Some(st) = exited {
            return Err(Error::Worker(format!(
                "new worker {pid} {st} during start-up (see {})",
                self.log_hint()
            )));
        }
        w.signal(libc::SIGKILL);
        w.wait();
        Err(Error::Worker(format!(
            "new worker {pid} was not ready within {}s: killed",
            READY_TIMEOUT.as_secs()
        )))
    }

    pub(super) fn log_hint(&self) -> String {
        self.plan
            .settings
            .error_log
            .clone()
            .unwrap_or_else(|| "stderr".into())
    }

    /// Reaps exited workers and replaces a dead current one (nginx respawns crashed workers).
    pub(super) async fn reap(&mut self) {
        self.old.retain_mut(|w| match w.try_wait() {
            Some(st) => {
                log::info!("worker {} {st}", w.pid);
                false
            }
            None => true,
        });
        if self.old.is_empty() && !self.stale {
            self.retiring.clear();
        }
        if let Some(w) = self.current.as_mut() {
            if let Some(st) = w.try_wait() {
                log::error!("worker process {} {st}; starting a new one", w.pid);
                self.current = None;
            }
        }
        if self.current.is_none() && self.last_spawn.elapsed() >= Duration::from_millis(900) {
            let want = plan_addrs(&self.plan);
            let source = self.source.clone();
            match self
                .start_worker(Path::new(OWN_IMAGE), &source, &want)
                .await
            {
                Ok(w) => {
                    log::info!("worker {} serving", w.pid);
                    self.current = Some(w);
                    self.stale = false;
                }
                Err(e) => log::error!("cannot start a worker: {e}; trying again"),
            }
        }
    }

    /// Reload: FILE (or the file in use) is read and checked here; the current worker applies
    /// exactly these bytes in place, or a new generation does. FILE becomes the file later
    /// reloads read. In a fleet, FILE is merged with the fleet's config first.
    pub(super) async fn reload(&mut self, path: Option<PathBuf>) -> Message {
        let path = path.or_else(|| self.source.path.clone());
        let local = match Source::read(path.as_deref()) {
            Ok(s) => s,
            Err(p) => return Message::Err(format!("configuration unchanged: {p}")),
        };
        let (source, plan) = match self.fleet_compile(&local) {
            Ok(x) => x,
            Err(p) => return Message::Err(format!("configuration unchanged: {p}")),
        };
        match self.apply(source, plan).await {
            Ok(what) => {
                if let Some(f) = self.fleet.as_mut() {
                    f.local = local.text;
                }
                Message::Ok(what)
            }
            Err(e) => {
                log::error!("reload failed, the running configuration keeps serving: {e}");
                Message::Err(e.to_string())
            }
        }
    }

    /// Puts a checked config to work: in place when the sockets and process settings stay,
    /// else by a new generation. On failure nothing changes.
    pub(super) async fn apply(&mut self, source: Source, plan: Plan) -> Result<String, Error> {
        let in_place = !self.stale
            && plan.same_listeners(&self.plan)
            && self.current.as_ref().is_some_and(|w| w.conf.is_some());
        let r = if in_place {
            self.reload_in_place(&source).await
        } else {
            log::info!("listeners or process settings changed: starting a new generation");
            self.new_generation(Path::new(OWN_IMAGE), &source, &plan)
                .await
        };
        if r.is_ok() {
            self.source = source;
            self.plan = Arc::new(plan);
            self.stale = false;
        }
        r
    }

    async fn reload_in_place(&mut self, source: &Source) -> Result<String, Error> {
        let Some(w) = self.current.as_mut() else {
            return Err(Error::Worker("no running worker".into()));
        };
        let pid = w.pid;
        w.set_config(source)?;
        w.reloaded = None;
        w.signal(libc::SIGHUP);
        // Answer only once the worker has swapped its snapshot, so that the next request
        // after `graygate -s reload` returns sees the new config.
        self.wait_reports(Duration::from_secs(10), |m| {
            m.current.as_ref().is_none_or(|w| w.reloaded.is_some())
        })
        .await;
        let outcome = self.current.as_mut().and_then(|w| w.reloaded.take());
        let restore = |m: &mut Master| {
            let old = m.source.clone();
            if let Some(w) = m.current.as_mut() {
                let _ = w.set_config(&old);
            }
        };
        match outcome.as_deref() {
            Some("ok") => Ok("reloaded".into()),
            Some(r) => {
                let r = r.to_string();
                restore(self);
                Err(Error::Worker(r))
            }
            None => {
                restore(self);
                Err(Error::Worker(format!(
                    "worker {pid} did not confirm the reload in 10s"
                )))
            }
        }
    }
}
