//! A worker's signals, in nginx's meaning (the master sends them; so may an operator).
//!
//! | signal | effect                                                               |
//! |--------|----------------------------------------------------------------------|
//! | HUP    | apply the config bytes the master just wrote to our memfd, in place  |
//! | USR1   | reopen every log file (logrotate)                                    |
//! | QUIT   | stop accepting, drain, exit (TERM/INT still stop at once meanwhile)  |
//! | TERM   | exit now (INT too)                                                   |
//!
//! We take over Pingora's [`ShutdownSignalWatch`] and never return from it: the graceful
//! stop closes our own listeners' shutdown watch (see `worker`), so a fast stop can still
//! win during a drain, and Pingora's fixed grace-period sleep never runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use super::reload::Reloader;
use super::worker::Readiness;

pub struct Signals {
    pub reloader: Reloader,
    /// Tells the proxy to answer with `Connection: close`.
    pub draining: Arc<AtomicBool>,
    /// Stops the listening services (our shutdown watch).
    pub stop_accepting: watch::Sender<bool>,
    pub ready: Arc<Readiness>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let kinds = [
            SignalKind::hangup(),
            SignalKind::user_defined1(),
            SignalKind::quit(),
            SignalKind::terminate(),
            SignalKind::interrupt(),
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
        let [hup, usr1, quit, term, int] = &mut streams[..] else {
            return ShutdownSignal::FastShutdown;
        };
        self.ready.done();
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let r = self.reloader.clone();
                    if let Err(e) = tokio::task::spawn_blocking(move || r.reload()).await {
                        log::error!("reload: {e}");
                    }
                }
                _ = usr1.recv() => {
                    log::info!("reopening logs");
                    crate::logs::reopen_all();
                }
                _ = quit.recv() => {
                    if !self.draining.swap(true, Ordering::AcqRel) {
                        log::info!("gracefully shutting down (SIGQUIT): draining connections");
                        self.stop_accepting.send_replace(true);
                        // The next generation drives the canaries from now on: give the lead
                        // up (after a change in progress is written), so it takes over at once.
                        let live = self.reloader.live.clone();
                        let retire = move || {
                            live.load().plan.store.changing().retire();
                            // In a fleet another gateway drives the ramps while this one drains.
                            crate::fleet::agent::resign();
                        };
                        if let Err(e) = tokio::task::spawn_blocking(retire).await {
                            log::error!("handing the canaries over: {e}");
                        }
                    }
                }
                _ = term.recv() => {
                    log::info!("exiting (SIGTERM)");
                    super::worker::exit(0);
                }
                _ = int.recv() => {
                    log::info!("exiting (SIGINT)");
                    super::worker::exit(0);
                }
            }
        }
    }
}
