//! Running a generation: building the Pingora server from a plan, signals, pid file, exit.

mod control;
mod drain;
pub mod master;
mod reload;
pub mod runtime_dir;
mod signals;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

use crate::plan::Plan;
use crate::proxy::{Gateway, HeadGuard};
use crate::snapshot::Snapshot;
pub use control::{send, Command};
use drain::{Coordinator, Drained};
pub use master::run as run_master;

/// How this worker generation was asked to start.
pub struct Start {
    /// The config file, `None` for the embedded default.
    pub path: Option<PathBuf>,
    /// Take the listening sockets from the running generation (binary upgrade).
    pub upgrade: bool,
}

/// Writes our pid to `path` (nginx writes it once running; `-s` reads it).
pub(crate) fn write_pid(path: &str) {
    if let Err(e) = std::fs::write(path, format!("{}\n", std::process::id())) {
        log::error!("cannot write pid file {path}: {e}");
    }
}

/// Flushes logs, removes the pid file (and control socket) if still ours, and exits.
pub(crate) fn exit_cleanly(pid_file: &str, code: i32) -> ! {
    let ours = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    if ours {
        let _ = std::fs::remove_file(pid_file);
        let _ = std::fs::remove_file(master::ctl_path(pid_file));
    }
    crate::logs::flush_all();
    std::process::exit(code)
}

/// A TCP listener without Pingora's default 64 KiB read buffer per connection: the HTTP
/// session reads into its own (per request) buffer anyway, and the fixed buffer would make
/// every idle keep-alive connection cost 64 KiB (nginx: about 1 KiB).
fn listener(addr: &std::net::SocketAddr) -> ListenerConfig {
    ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::new(0, 1460))
}

/// Runs one worker generation serving `plan` until a signal ends it. Returns only on a
/// start-up error.
pub fn serve(plan: Plan, start: Start) -> Result<(), String> {
    // A worker must not outlive its master (a SIGKILLed master would leave it holding the
    // ports): it then drains and exits.
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a process attribute.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) };
    // Live canary percents and weights carry over restarts and upgrades (issue 15).
    let plan = crate::canary::persist::restore(plan);
    let settings = plan.settings.clone();
    let snapshot = Snapshot::activate(plan).map_err(|e| format!("cannot open log file {e}"))?;
    if let Some(f) = &snapshot.process_log {
        crate::logs::error::set_process_file(f.clone());
    }
    let live = Arc::new(ArcSwap::from_pointee(snapshot));
    let snap = live.load_full();

    let conf = ServerConf {
        pid_file: settings.pid_file.clone(),
        upgrade_sock: settings.upgrade_sock.clone(),
        error_log: settings.error_log.clone(),
        threads: settings.threads,
        // The master daemonizes; workers stay its children.
        daemon: false,
        // Our drain decides when to exit (see `drain`); Pingora's sleep is only a backstop.
        grace_period_seconds: Some(
            settings.grace_period.as_secs() + settings.shutdown_timeout.as_secs() + 1,
        ),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: start.upgrade,
        daemon: conf.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let conf = server.configuration.clone();

    let services = snap.plan.servers.len() + snap.plan.demos.len();
    let coord = Coordinator::new(
        services,
        settings.grace_period,
        settings.shutdown_timeout,
        settings.pid_file.clone(),
    );
    let draining = Arc::new(AtomicBool::new(false));

    for (i, s) in snap.plan.servers.iter().enumerate() {
        let gw = Gateway {
            server: i,
            live: live.clone(),
            draining: draining.clone(),
        };
        let proxy = pingora_proxy::http_proxy(&conf, gw);
        let mut svc = Service::new(
            format!("server {}", s.name),
            Drained::new(proxy, coord.clone()).with_guard(HeadGuard::new(live.clone(), i)),
        );
        for a in &s.listen {
            svc.add_listener(listener(a));
        }
        server.add_service(svc);
    }
    for d in &snap.plan.demos {
        let mut svc = Service::new(
            format!("demo {}", d.name),
            Drained::new(
                crate::demo::Demo {
                    name: d.name.clone(),
                },
                coord.clone(),
            ),
        );
        svc.add_listener(listener(&d.listen));
        server.add_service(svc);
    }
    // The admin API (issue 15); its socket passes on upgrade like the servers'.
    if let Some(a) = &snap.plan.admin {
        server.add_service(crate::admin::service(a.listen, live.clone()));
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
    let snap_listen: Vec<std::net::SocketAddr> = snap
        .plan
        .servers
        .iter()
        .flat_map(|s| s.listen.iter().copied())
        .chain(snap.plan.demos.iter().map(|d| d.listen))
        .collect();
    drop(snap);

    let signals = signals::Signals {
        listen: snap_listen,
        reloader: reload::Reloader {
            path: start.path,
            live,
        },
        draining,
        pid_file: settings.pid_file.clone(),
    };
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    exit_cleanly(&settings.pid_file, 0)
}
