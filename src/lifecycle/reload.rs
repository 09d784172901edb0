//! Reload in place: compile the bytes the master checked and swap the snapshot.

use std::fs::File;
use std::sync::Arc;

use super::control::{report, Message};
use super::source::Source;
use crate::snapshot::{Live, Snapshot};

/// The worker's config memfd (rewritten by the master before each SIGHUP) and the live
/// snapshot it feeds.
#[derive(Clone)]
pub struct Reloader {
    pub conf: Arc<File>,
    pub live: Live,
}

impl Reloader {
    /// Applies the handed-over config if it needs no new sockets; otherwise keeps the running
    /// one. Either way the master hears how it went. Blocking (compiles, opens files, waits for
    /// a live change in progress): run it off the async runtime.
    pub fn reload(&self) {
        let outcome = self.apply();
        match &outcome {
            Ok(()) => {
                log::info!("configuration reloaded");
                // In a fleet: live values the old config could not take (a canary it did not
                // have) apply now.
                crate::fleet::agent::reread();
            }
            Err(e) => log::error!("reload rejected, configuration unchanged: {e}"),
        }
        let pid = std::process::id() as i32;
        report(&Message::Reloaded(
            pid,
            outcome.err().unwrap_or_else(|| "ok".into()),
        ));
    }

    fn apply(&self) -> Result<(), String> {
        let source = Source::read_from(&self.conf).map_err(|e| format!("config hand-over: {e}"))?;
        // A live change (admin API, ramp) compiles and swaps too: one at a time, so that
        // neither swaps in a plan compiled from a snapshot the other has replaced.
        let store = Arc::clone(&self.live.load().plan.store);
        let _changing = store.changing();
        let current = self.live.load_full();
        let plan = source
            .compile(Some(&current.plan))
            .map_err(|p| p.to_string())?;
        if !plan.same_listeners(&current.plan) {
            return Err("listeners or process settings changed (the master starts a new generation for that)".into());
        }
        for w in &plan.warnings {
            log::warn!("{w}");
        }
        let s = Snapshot::activate(plan).map_err(|e| format!("cannot open a log file: {e}"))?;
        let s = Arc::new(s);
        self.live.store(Arc::clone(&s));
        // Only now may the new plan change state it shares with the old one.
        s.plan.commit();
        Ok(())
    }
}
