//! The master: a small process with a stable pid that runs generations of workers.
//!
//! Process managers (supervisor, systemd) watch one pid. A binary upgrade replaces the process
//! that serves, so the serving process cannot be the one they watch: the master stays, and
//! each generation is a child worker (`graygate --worker`) that serves with Pingora. The master
//! holds no sockets; the listening sockets pass from the old worker to the new one over
//! Pingora's upgrade socket, so the kernel's accept queue is never closed.
//!
//! The master:
//! - writes `pid_file` (its own pid) and serves `-s` requests on `<pid_file>.ctl`;
//! - on `upgrade` (or a reload that changes listeners): checks the new binary with `-t`, starts
//!   it with `-u`, tells the old worker (SIGUSR2) to hand over its sockets and drain, and
//!   answers once the new worker reports ready; if the new one cannot start, the old one is
//!   left untouched;
//! - forwards `reload` (in place), `reopen`, `quit`, `stop` to the workers;
//! - exits with an error when the serving worker dies unexpectedly, so that the process
//!   manager sees the crash and restarts the program.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};

use crate::config;
use crate::plan::{Plan, Settings};

/// Environment variable telling a worker where to report readiness.
pub const CTL_ENV: &str = "GRAYGATE_MASTER_CTL";

/// The control socket next to a pid file.
pub fn ctl_path(pid_file: &str) -> PathBuf {
    PathBuf::from(format!("{pid_file}.ctl"))
}

struct Worker {
    child: Child,
}

impl Worker {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

struct Master {
    exe: PathBuf,
    conf: Option<PathBuf>,
    settings: Settings,
    plan: Arc<Plan>,
    current: Option<Worker>,
    old: Vec<Worker>,
    ready: HashSet<u32>,
    /// Reload outcomes reported by workers, by pid.
    reloaded: HashMap<u32, String>,
}

/// Runs the master until a quit or stop, or until the serving worker dies.
pub fn run(plan: Plan, conf: Option<PathBuf>, daemon: bool) -> Result<(), String> {
    super::runtime_dir::prepare(&plan)?; // issue 14: private runtime files
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    // An absolute config path keeps working after daemon() and for every generation.
    let conf = conf.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    if daemon || plan.settings.daemon {
        // SAFETY: no threads exist yet; daemon(3) forks and detaches.
        if unsafe { libc::daemon(1, 0) } != 0 {
            return Err(format!(
                "daemon() failed: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let settings = plan.settings.clone();
    if let Some(p) = &settings.error_log {
        match crate::snapshot::open_log(p, plan.create_log_dirs) {
            Ok(f) => crate::logs::error::set_process_file(f),
            Err(e) => return Err(format!("cannot open {p}: {e}")),
        }
    }
    crate::logs::start_writer();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    let mut m = Master {
        exe,
        conf,
        settings,
        plan: Arc::new(plan),
        current: None,
        old: Vec::new(),
        ready: HashSet::new(),
        reloaded: HashMap::new(),
    };
    let code = rt.block_on(m.main());
    super::exit_cleanly(&m.settings.pid_file, code)
}

/// Sends `line` to the master's control socket and returns its one-line answer.
pub fn request(pid_file: &str, line: &str) -> Result<String, String> {
    let path = ctl_path(pid_file);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut s = UnixStream::connect(&path).await.map_err(|e| {
            format!(
                "cannot reach graygate at {}: {e} (is it running?)",
                path.display()
            )
        })?;
        s.write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        BufReader::new(s)
            .read_line(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        Ok(answer.trim().to_string())
    })
}

/// Tells the master that this worker serves (called by a worker once its services run).
pub fn report_ready() {
    report(&format!("ready {}", std::process::id()));
}

/// Tells the master how a reload went in this worker (`ok` or the reason).
pub fn report_reloaded(outcome: &str) {
    let outcome = outcome.replace('\n', "; ");
    report(&format!("reloaded {} {outcome}", std::process::id()));
}

fn report(line: &str) {
    let Ok(path) = std::env::var(CTL_ENV) else {
        return;
    };
    if let Ok(mut s) = std::os::unix::net::UnixStream::connect(path) {
        use std::io::Write;
        let _ = s.write_all(format!("{line}\n").as_bytes());
    }
}

impl Master {
    async fn main(&mut self) -> i32 {
        let ctl = ctl_path(&self.settings.pid_file);
        let _ = std::fs::remove_file(&ctl);
        let listener = match UnixListener::bind(&ctl) {
            Ok(l) => l,
            Err(e) => {
                log::error!("cannot listen on {}: {e}", ctl.display());
                return 1;
            }
        };
        let mut sigs = Vec::new();
        for k in [
            SignalKind::hangup(),
            SignalKind::user_defined1(),
            SignalKind::user_defined2(),
            SignalKind::quit(),
            SignalKind::terminate(),
            SignalKind::interrupt(),
        ] {
            match signal(k) {
                Ok(s) => sigs.push(s),
                Err(e) => {
                    log::error!("cannot install signal handler: {e}");
                    return 1;
                }
            }
        }
        let [hup, usr1, usr2, quit, term, int] = &mut sigs[..] else {
            return 1;
        };

        match self.start_worker(false, &listener).await {
            Ok(pid) => log::info!("master {} started worker {pid}", std::process::id()),
            Err(e) => {
                log::error!("{e}");
                eprintln!("graygate: {e}");
                return 1;
            }
        }
        super::write_pid(&self.settings.pid_file);

        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = hup.recv() => { let r = self.reload(&listener).await; log::info!("reload: {r}"); }
                _ = usr1.recv() => self.forward_all(libc::SIGUSR1),
                _ = usr2.recv() => { let r = self.upgrade(None, &listener).await; log::info!("upgrade: {r}"); }
                _ = quit.recv() => return self.stop(libc::SIGQUIT).await,
                _ = term.recv() => return self.stop(libc::SIGTERM).await,
                _ = int.recv() => return self.stop(libc::SIGTERM).await,
                conn = listener.accept() => {
                    if let Ok((s, _)) = conn {
                        if let Some(code) = self.control(s, &listener).await {
                            return code;
                        }
                    }
                }
                _ = tick.tick() => {
                    if let Some(code) = self.reap() {
                        return code;
                    }
                }
            }
        }
    }

    /// Serves one control connection; returns an exit code when the master must stop.
    async fn control(&mut self, s: UnixStream, listener: &UnixListener) -> Option<i32> {
        let (r, mut w) = s.into_split();
        let mut line = String::new();
        if BufReader::new(r).read_line(&mut line).await.is_err() {
            return None;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["ready", _] | ["reloaded", ..] => {
                self.note_report(&words);
                return None;
            }
            ["reload"] => self.reload(listener).await,
            ["upgrade"] => self.upgrade(None, listener).await,
            ["reopen"] => {
                self.forward_all(libc::SIGUSR1);
                "ok reopened".to_string()
            }
            _ => format!("error: unknown command {:?}", line.trim()),
        };
        let _ = w.write_all(format!("{answer}\n").as_bytes()).await;
        None
    }

    fn worker_command(&self, upgrade: bool) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg("--worker");
        if let Some(p) = &self.conf {
            c.arg("-c").arg(p);
        }
        if upgrade {
            c.arg("-u");
        }
        c.env(CTL_ENV, ctl_path(&self.settings.pid_file))
            .stdin(Stdio::null());
        c
    }

    /// Starts a worker and waits until it reports ready.
    async fn start_worker(
        &mut self,
        upgrade: bool,
        listener: &UnixListener,
    ) -> Result<u32, String> {
        let child = self
            .worker_command(upgrade)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        let mut w = Worker { child };
        let pid = w.child.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ready.contains(&pid) {
            if w.exited() {
                return Err(format!(
                    "new worker {pid} exited during start-up (see {})",
                    self.log_hint()
                ));
            }
            if Instant::now() > deadline {
                w.signal(libc::SIGKILL);
                let _ = w.child.wait();
                return Err(format!("new worker {pid} did not become ready in 30s"));
            }
            self.accept_ready(listener).await;
        }
        self.current = Some(w);
        Ok(pid)
    }

    /// Waits briefly for a control connection, handling only readiness reports.
    async fn accept_ready(&mut self, listener: &UnixListener) {
        if let Ok(Ok((s, _))) =
            tokio::time::timeout(Duration::from_millis(50), listener.accept()).await
        {
            let mut line = String::new();
            let mut r = BufReader::new(s);
            if tokio::time::timeout(Duration::from_secs(1), r.read_line(&mut line))
                .await
                .is_ok()
            {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["ready", _] | ["reloaded", ..] => self.note_report(&words),
                    _ => {
                        let _ = r.into_inner().write_all(b"error: busy, try again\n").await;
                    }
                }
            }
        }
    }

    /// Records a worker's `ready PID` or `reloaded PID OUTCOME...`.
    fn note_report(&mut self, words: &[&str]) {
        match words {
            ["ready", pid] => {
                if let Ok(p) = pid.parse() {
                    self.ready.insert(p);
                }
            }
            ["reloaded", pid, rest @ ..] => {
                if let Ok(p) = pid.parse() {
                    self.reloaded.insert(p, rest.join(" "));
                }
            }
            _ => {}
        }
    }

    fn log_hint(&self) -> String {
        self.settings
            .error_log
            .clone()
            .unwrap_or_else(|| "stderr".into())
    }

    /// Reload: apply in place when possible, else upgrade with the same binary.
    async fn reload(&mut self, listener: &UnixListener) -> String {
        let loaded = config::load_from(self.conf.as_deref());
        let plan = match loaded.and_then(|l| Plan::compile(&l, None)) {
            Ok(p) => p,
            Err(probs) => {
                return format!(
                    "error: configuration unchanged: {}",
                    probs.to_string().replace('\n', "; ")
                )
            }
        };
        if plan.same_listeners(&self.plan) {
            let Some(pid) = self.current.as_ref().map(|w| w.child.id()) else {
                return "error: no running worker".to_string();
            };
            self.reloaded.remove(&pid);
            if let Some(w) = &self.current {
                w.signal(libc::SIGHUP);
            }
            // Answer only once the worker has swapped its snapshot, so that the next request
            // after `graygate -s reload` returns sees the new config.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.reloaded.contains_key(&pid) && Instant::now() < deadline {
                self.accept_ready(listener).await;
            }
            return match self.reloaded.remove(&pid) {
                Some(r) if r == "ok" => {
                    self.plan = Arc::new(plan);
                    "ok reloaded".to_string()
                }
                Some(r) => format!("error: {r}"),
                None => "error: the worker did not confirm the reload in 10s".to_string(),
            };
        }
        log::info!("listeners or process settings changed: reloading through an upgrade");
        self.upgrade(Some(plan), listener).await
    }

    /// Binary upgrade: the binary on disk takes over from the current worker.
    async fn upgrade(&mut self, plan: Option<Plan>, listener: &UnixListener) -> String {
        match self.try_upgrade(plan, listener).await {
            Ok(pid) => format!("ok upgraded, worker {pid}"),
            Err(e) => {
                log::error!("upgrade failed, the running generation keeps serving: {e}");
                format!("error: {e}")
            }
        }
    }

    async fn try_upgrade(
        &mut self,
        plan: Option<Plan>,
        listener: &UnixListener,
    ) -> Result<u32, String> {
        let plan = match plan {
            Some(p) => p,
            None => {
                let loaded = config::load_from(self.conf.as_deref());
                loaded
                    .and_then(|l| Plan::compile(&l, None))
                    .map_err(|p| p.to_string().replace('\n', "; "))?
            }
        };
        // The new binary must run and accept the config before the old one is touched.
        let mut check = Command::new(&self.exe);
        check.arg("-t");
        if let Some(p) = &self.conf {
            check.arg("-c").arg(p);
        }
        let out = check
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.exe.display()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; ");
            return Err(format!("new binary rejected the configuration: {err}"));
        }
        let Some(mut old) = self.current.take() else {
            return Err("no running worker".into());
        };
        if old.exited() {
            return Err("the running worker is gone".into());
        }
        // Pingora's upgrade socket: the new worker listens on it, the old one sends its sockets.
        let sock = Path::new(&self.plan.settings.upgrade_sock).to_path_buf();
        let _ = std::fs::remove_file(&sock);
        let child = match self.worker_command(true).spawn() {
            Ok(c) => c,
            Err(e) => {
                self.current = Some(old);
                return Err(format!("cannot start {}: {e}", self.exe.display()));
            }
        };
        let mut new = Worker { child };
        let pid = new.child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::fs::metadata(&sock)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false)
            {
                break;
            }
            if new.exited() || Instant::now() > deadline {
                new.signal(libc::SIGKILL);
                let _ = new.child.wait();
                self.current = Some(old);
                return Err(format!(
                    "new worker {pid} did not open the upgrade socket {}",
                    sock.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // From here the old worker hands over its sockets and drains.
        old.signal(libc::SIGUSR2);
        self.old.push(old);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ready.contains(&pid) {
            if new.exited() || Instant::now() > deadline {
                return Err(format!(
                    "new worker {pid} failed after the hand-over (see {})",
                    self.log_hint()
                ));
            }
            self.accept_ready(listener).await;
        }
        self.current = Some(new);
        self.plan = Arc::new(plan);
        Ok(pid)
    }

    fn forward_all(&self, sig: libc::c_int) {
        for w in self.current.iter().chain(&self.old) {
            w.signal(sig);
        }
    }

    /// Collects exited workers; returns an exit code if the serving worker died.
    fn reap(&mut self) -> Option<i32> {
        self.old.retain_mut(|w| !w.exited());
        if let Some(w) = self.current.as_mut() {
            if let Ok(Some(status)) = w.child.try_wait() {
                log::error!("worker {} exited unexpectedly ({status}); master exits so the process manager can restart graygate", w.pid());
                self.forward_all(libc::SIGQUIT);
                return Some(1);
            }
        }
        None
    }

    /// Stops every worker with `sig` and waits for them.
    async fn stop(&mut self, sig: libc::c_int) -> i32 {
        log::info!(
            "master stopping ({})",
            if sig == libc::SIGQUIT {
                "graceful"
            } else {
                "fast"
            }
        );
        self.forward_all(sig);
        let limit =
            self.settings.grace_period + self.settings.shutdown_timeout + Duration::from_secs(5);
        let deadline = Instant::now() + limit;
        loop {
            self.old.retain_mut(|w| !w.exited());
            if self.current.as_mut().is_some_and(|w| w.exited()) {
                self.current = None;
            }
            if self.current.is_none() && self.old.is_empty() {
                return 0;
            }
            if Instant::now() > deadline {
                self.forward_all(libc::SIGKILL);
                return 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
