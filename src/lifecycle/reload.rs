//! Reload in place: compile the file again and swap the snapshot.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config;
use crate::plan::Plan;
use crate::snapshot::{Live, Snapshot};

/// Where the config came from, and the live snapshot it feeds.
pub struct Reloader {
    /// `None` for the embedded default.
    pub path: Option<PathBuf>,
    pub live: Live,
}

impl Reloader {
    /// Applies the file if it is valid and needs no new sockets; otherwise keeps the running
    /// config and says why in the process log.
    pub fn reload(&self) {
        let loaded = config::load_from(self.path.as_deref());
        let current = self.live.load_full();
        let plan = match loaded.and_then(|l| Plan::compile(&l, Some(&current.plan))) {
            Ok(p) => p,
            Err(probs) => {
                log::error!("reload rejected, configuration unchanged:\n{probs}");
                super::master::report_reloaded(&format!("configuration unchanged: {probs}"));
                return;
            }
        };
        if !plan.same_listeners(&current.plan) {
            log::error!(
                "reload rejected: listeners or process settings changed; run `graygate -s upgrade` to apply them"
            );
            super::master::report_reloaded("listeners or process settings changed");
            return;
        }
        match Snapshot::activate(plan) {
            Ok(s) => {
                self.live.store(Arc::new(s));
                log::info!("configuration reloaded");
                super::master::report_reloaded("ok");
            }
            Err(e) => {
                log::error!("reload rejected: {e}");
                super::master::report_reloaded(&format!("cannot open a log file: {e}"));
            }
        }
    }
}
