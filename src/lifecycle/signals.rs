//! Signals of a running generation, in nginx's meaning.
//!
//! | signal | `-s`     | effect                                                        |
//! |--------|----------|---------------------------------------------------------------|
//! | HUP    | reload   | re-read the config and swap it in atomically                   |
//! | USR1   | reopen   | reopen every log file (logrotate)                              |
//! | QUIT   | quit     | stop accepting, drain, exit                                     |
//! | TERM   | stop     | exit now (as nginx; INT too)                                    |
//! | USR2   | (upgrade)| hand the listening sockets to a new binary, then drain          |
//!
//! Pingora's own watcher gives SIGQUIT to upgrades and SIGTERM to graceful stops; we take over
//! its [`ShutdownSignalWatch`] so that nginx users' habits hold and HUP / USR1 are served too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

use super::reload::Reloader;

pub struct Signals {
    pub reloader: Reloader,
    pub draining: Arc<AtomicBool>,
    pub pid_file: String,
    /// Every address this generation listens on: readiness waits until each accepts.
    pub listen: Vec<std::net::SocketAddr>,
}

/// Waits (up to 10 s) until every listener accepts connections: Pingora binds new listeners in
/// its service runtimes, possibly after this watcher starts, and the master must not call an
/// upgrade done before the new ports answer.
async fn wait_listening(addrs: &[std::net::SocketAddr]) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    for a in addrs {
        let mut target = *a;
        if target.ip().is_unspecified() {
            target.set_ip(if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        while tokio::net::TcpStream::connect(target).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                log::warn!("{a} does not accept connections yet");
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        // Runs once the services have started, after daemonizing: the final process.
        crate::logs::start_writer();
        wait_listening(&self.listen).await;
        super::master::report_ready();
        let kinds = [
            SignalKind::hangup(),
            SignalKind::user_defined1(),
            SignalKind::quit(),
            SignalKind::terminate(),
            SignalKind::interrupt(),
            SignalKind::user_defined2(),
        ];
        let mut streams = Vec::new();
        for k in kinds {
            match signal(k) {
                Ok(s) => streams.push(s),
                Err(e) => {
                    log::error!("cannot install signal handler: {e}");
                    return ShutdownSignal::FastShutdown;
                }
            }
        }
        let [hup, usr1, quit, term, int, usr2] = &mut streams[..] else {
            return ShutdownSignal::FastShutdown;
        };
        log::info!("graygate started, pid {}", std::process::id());
        loop {
            tokio::select! {
                _ = hup.recv() => self.reloader.reload(),
                _ = usr1.recv() => {
                    log::info!("reopening logs");
                    crate::logs::reopen_all();
                }
                _ = quit.recv() => {
                    log::info!("SIGQUIT: draining and exiting");
                    self.draining.store(true, Ordering::Release);
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = usr2.recv() => {
                    log::info!("SIGUSR2: handing listening sockets to the new binary, then draining");
                    self.draining.store(true, Ordering::Release);
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = term.recv() => {
                    log::info!("SIGTERM: exiting now");
                    super::exit_cleanly(&self.pid_file, 0);
                }
                _ = int.recv() => {
                    log::info!("SIGINT: exiting now");
                    super::exit_cleanly(&self.pid_file, 0);
                }
            }
        }
    }
}
