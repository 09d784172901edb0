//! A worker generation: the Pingora server that serves a plan on the master's sockets.
//!
//! The worker binds nothing. It reads the config bytes the master checked (see `source`) and
//! takes the listening sockets it inherited from the master (see `sockets`).
//!
//! How the sockets reach Pingora: Pingora's own path is its upgrade socket (`-u`), where a new
//! process receives the fds from the *old process* over SCM_RIGHTS with a blocking
//! accept-and-sleep loop (it logs `[error] No incoming socket transfer, sleep 1s` on nearly
//! every hand-over). Its `Fds` table and each listening service's `start_service(fds, ..)` are
//! public, though, and a service looks an address up in the table it is given before binding.
//! So each listening service is wrapped in [`Inherited`], which hands it our own table of the
//! inherited fds and our own shutdown watch: no upgrade socket, no sleeps, nothing to hand
//! over when a worker goes, and the graceful stop is ours to trigger (so Pingora's "SIGTERM
//! received" and fixed grace-period sleep never happen).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Fds, ListenFds, RunArgs, Server, ShutdownWatch};
use pingora::services::listening::Service;
use pingora::services::Service as ServiceTrait;
use tokio::sync::watch;

use super::control::{self, Message};
use super::drain::{Coordinator, Drained};
use super::error::Error;
use super::os;
use super::reload::Reloader;
use super::signals::Signals;
use super::sockets::{self, LISTEN_FDS_ENV};
use super::source::{Source, CONF_FD_ENV};
use crate::snapshot::Snapshot;

/// Flushes the logs and exits (a worker has no pid file: the master owns it). A live change or
/// ramp step in progress is written to the state file first (the next generation reads it).
pub(crate) fn exit(code: i32) -> ! {
    crate::canary::store::retire_process();
    // In a fleet: this generation's member key, counts and leadership go now.
    crate::fleet::agent::leave();
    crate::logs::flush_all();
    std::process::exit(code)
}

/// Counts down the parts that must run before the worker reports `ready`: every listening
/// service and the signal handlers (a reload's SIGHUP must find its handler).
pub struct Readiness(AtomicUsize);

impl Readiness {
    pub fn done(&self) {
        if self.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            log::info!("worker {} serving", std::process::id());
            control::report(&Message::Ready(std::process::id() as i32));
        }
    }
}

/// A listening service started on the master's sockets and on our shutdown watch.
struct Inherited<S> {
    inner: S,
    fds: ListenFds,
    shutdown: ShutdownWatch,
    ready: Arc<Readiness>,
}

#[async_trait]
impl<S: ServiceTrait> ServiceTrait for Inherited<S> {
    async fn start_service(
        &mut self,
        _pingora_fds: Option<ListenFds>,
        _pingora_shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        self.ready.done();
        self.inner
            .start_service(
                Some(self.fds.clone()),
                self.shutdown.clone(),
                listeners_per_fd,
            )
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }
}

/// The write buffer of a client connection: one segment, so a small response (head and body)
/// leaves in one `write`.
pub const WRITE_BUFFER: usize = 1460;

/// A TCP listener without Pingora's default 64 KiB read buffer per connection: the HTTP
/// session reads into its own (per request) buffer anyway, and the fixed buffer would make
/// every idle keep-alive connection cost 64 KiB (nginx: about 1 KiB).
fn listener(addr: &std::net::SocketAddr) -> ListenerConfig {
    ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::new(0, WRITE_BUFFER))
}

/// The config memfd and listening sockets the master handed down.
fn inherited() -> Result<(std::fs::File, Vec<(String, i32)>), Error> {
    let bad = |what: &'static str| {
        Error::Worker(format!(
            "{what} (a worker is started by the master; run graygate without --worker)"
        ))
    };
    let conf_fd = std::env::var(CONF_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("no config hand-over"))?;
    let conf = os::adopt_fd(conf_fd).map_err(|err| Error::Os {
        what: "config hand-over",
        err,
    })?;
    let listen = sockets::parse_env(&std::env::var(LISTEN_FDS_ENV).unwrap_or_default());
    for (_, fd) in &listen {
        // Pingora owns them from here; no child of ours may inherit them.
        os::set_inheritable(*fd, false).map_err(|err| Error::Os {
            what: "inherited listening socket",
            err,
        })?;
    }
    Ok((std::fs::File::from(conf), listen))
}

/// The master's pid, for a worker to tell whether its master still lives when it starts.
pub const MASTER_PID_ENV: &str = "GRAYGATE_MASTER_PID";

/// Runs one worker generation until a signal ends it. Returns only on a start-up error.
pub fn run() -> Result<(), Error> {
    // Until our handlers are installed, a reload or reopen signal must not kill us.
    os::ignore_signals(&[libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2]);
    // A worker must not outlive its master (a SIGKILLed master would leave it serving).
    os::die_with_parent(libc::SIGQUIT);
    // A master that died before the line above sends no signal: then this worker has already
    // been handed to a reaper, and must not start serving unmanaged (prctl(2)'s advice).
    let master = std::env::var(MASTER_PID_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok());
    if master.is_some_and(|m| m != os::parent_pid()) {
        eprintln!(
            "graygate: worker {}: its master is gone; exiting",
            std::process::id()
        );
        std::process::exit(0);
    }
    os::set_name();
    let (conf_file, listen) = inherited()?;
    let source = Source::read_from(&conf_file).map_err(|err| Error::Os {
        what: "reading the config hand-over",
        err,
    })?;
    let plan = source
        .compile(None)
        .map_err(|p| Error::Config(p.to_string()))?;
    let mut fds = Fds::new();
    for (a, fd) in &listen {
        fds.add(a.clone(), *fd);
    }
    for a in sockets::plan_addrs(&plan) {
        if fds.get(&a.to_string()).is_none() {
            return Err(Error::Worker(format!(
                "{a} was not handed over by the master"
            )));
        }
    }
    let fds: ListenFds = Arc::new(parking_lot::Mutex::new(fds));

    let settings = plan.settings.clone();
    // Live canary percents and weights carry over restarts and upgrades (issue 15).
    let plan = crate::canary::persist::restore(plan);
    let snapshot = Snapshot::activate(plan).map_err(|err| Error::Log {
        path: "of the configuration".into(),
        err,
    })?;
    snapshot.plan.commit();
    if let Some(f) = &snapshot.process_log {
        crate::logs::error::set_process_file(f.clone());
    }
    for w in &snapshot.plan.warnings {
        log::warn!("{w}");
    }
    // Workers never fork (the master daemonizes), so the writer thread starts here.
    crate::logs::start_writer();
    let live = Arc::new(ArcSwap::from_pointee(snapshot));
    let snap = live.load_full();
    crate::canary::store::register(&snap.plan.store);
    // Drive the canaries at once, unless an older generation still does (upgrade overlap):
    // then the ramp service takes over when it lets go.
    crate::canary::persist::lead(&live, &mut snap.plan.store.changing());
    // In a fleet: live state through etcd, membership (issue 19).
    crate::fleet::agent::start(&live);
    let snap = live.load_full();

    let conf = ServerConf {
        threads: settings.threads,
        work_stealing: settings.work_stealing,
        daemon: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    let conf = server.configuration.clone();

    let services = snap.plan.servers.len() + snap.plan.demos.len();
    let coord = Coordinator::new(services, settings.grace_period, settings.shutdown_timeout);
    let admin = snap.plan.admin.as_ref().map(|a| a.listen);
    let ready = Arc::new(Readiness(AtomicUsize::new(
        services + 1 + usize::from(admin.is_some()),
    )));
    let (stop_accepting, shutdown) = watch::channel(false);
    let draining = Arc::new(AtomicBool::new(false));
    fn wrap<S>(
        inner: S,
        fds: &ListenFds,
        shutdown: &ShutdownWatch,
        ready: &Arc<Readiness>,
    ) -> Inherited<S> {
        Inherited {
            inner,
            fds: fds.clone(),
            shutdown: shutdown.clone(),
            ready: ready.clone(),
        }
    }

    for (i, s) in snap.plan.servers.iter().enumerate() {
        let gw = crate::proxy::Gateway {
            server: i,
            live: live.clone(),
            draining: draining.clone(),
        };
        // HTTP/2 connections run `lifecycle::h2`'s loop, with this server block's limits.
        let proxy = pingora_proxy::http_proxy(&conf, gw);
        let app = Drained::new(proxy, coord.clone())
            .with_guard(crate::proxy::HeadGuard::new(live.clone(), i));
        let count_tls = app.count_tls();
        let mut svc = Service::new(format!("server {}", s.name), app);
        if !s.tls.is_empty() {
            svc.endpoints().set_pre_tls_callback(count_tls);
        }
        for a in &s.listen {
            let mut l = listener(a);
            if let Some(t) = s.tls.iter().find(|t| t.addr == *a) {
                let tls =
                    crate::tls::accept::settings(t, live.clone(), i).map_err(Error::Worker)?;
                l = l.tls(tls);
            }
            svc.add_listener(l);
        }
        server.add_service(wrap(svc, &fds, &shutdown, &ready));
    }
    for d in &snap.plan.demos {
        let demo = crate::demo::Demo {
            name: d.name.clone(),
        };
        let mut svc = Service::new(
            format!("demo {}", d.name),
            Drained::new(demo, coord.clone()),
        );
        svc.add_listener(listener(&d.listen));
        server.add_service(wrap(svc, &fds, &shutdown, &ready));
    }
    // The admin API (issue 15), on a socket the master owns like the servers'.
    if let Some(listen) = admin {
        let svc = crate::admin::service(listen, live.clone());
        server.add_service(wrap(svc, &fds, &shutdown, &ready));
    }
    // Always running (idle without checks), so that a reload may add health checks.
    let checker = crate::upstream::health::Checker::new({
        let live = live.clone();
        move || live.load().plan.health_targets()
    });
    server.add_service(pingora::services::background::background_service(
        "health checks",
        checker,
    ));
    // The canaries' automatic ramps (issue 16); a draining generation stops driving them.
    let ramp = crate::canary::ramp::Ramp {
        live: live.clone(),
        draining: draining.clone(),
    };
    server.add_service(pingora::services::background::background_service(
        "canary ramp",
        ramp,
    ));
    drop(snap);

    let signals = Signals {
        reloader: Reloader {
            conf: Arc::new(conf_file),
            live,
        },
        draining,
        stop_accepting,
        ready,
    };
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    exit(0)
}
