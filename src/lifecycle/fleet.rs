//! The master's side of a fleet (issue 19): a new value of the fleet's config is applied
//! exactly as `-s reload` applies a file; one that does not compile is never applied.

use super::master::Master;
use super::source::Source;
use crate::fleet::watch::{Event, Fleet, Shared};
use crate::plan::Plan;

impl Master {
    /// A gateway's file (as just read) merged with the fleet's config it runs, compiled.
    pub(super) fn fleet_compile(&self, local: &Source) -> Result<(Source, Plan), String> {
        let Some(f) = &self.fleet else {
            return local
                .compile(Some(&self.plan))
                .map(|p| (local.clone(), p))
                .map_err(|p| p.to_string());
        };
        let text = f.merged(&local.text, None)?;
        let name = match &f.good {
            Some(s) => format!("{} merged with {}", f.name(s), local.name()),
            None => local.name(),
        };
        let l = crate::config::parse(name, &text, false).map_err(|p| p.to_string())?;
        let plan = Plan::compile(&l, Some(&self.plan)).map_err(|p| p.to_string())?;
        Ok((
            Source {
                path: local.path.clone(),
                text,
            },
            plan,
        ))
    }

    /// What the watch reports.
    pub(super) async fn on_fleet(&mut self, ev: Event) {
        let Some(f) = self.fleet.as_mut() else {
            return;
        };
        let key = f.settings.config_key();
        let running = f.good.as_ref().map_or(0, |s| s.revision);
        match ev {
            Event::Config(s) => {
                f.no_retry();
                self.apply_shared(s).await
            }
            Event::Retry(s) => self.apply_shared(s).await,
            Event::Deleted(rev) => log::error!(
                "fleet: {key} was deleted at revision {rev}: keeping the running config (revision {running})"
            ),
            Event::Away(e) => {
                log::error!(
                    "fleet: {e}: serving on the running config (revision {running}); retrying"
                );
                f.away = Some(e);
            }
            Event::Back => {
                log::info!("fleet: etcd at {} reachable again", f.settings.endpoints());
                f.away = None;
            }
        }
    }

    async fn apply_shared(&mut self, s: Shared) {
        let Some(f) = self.fleet.as_ref() else {
            return;
        };
        let name = f.name(&s);
        let running = f.good.as_ref().map_or(0, |g| g.revision);
        let refuse = |why: String| {
            log::error!("fleet: {name} refused, the running config (revision {running}) keeps serving: {why}");
        };
        let text = match f.merged(&f.local, Some(&s)) {
            Ok(t) => t,
            Err(e) => return refuse(e),
        };
        // A problem is named at the value's own line when it can be (`pull` shows the value).
        let at_value = |merged: String| {
            let own = format!("etcd:{}@{}", f.settings.config_key(), s.revision);
            crate::fleet::merge::diagnose(&f.local, &s.text, &own).unwrap_or(merged)
        };
        let l = match crate::config::parse(name.clone(), &text, false) {
            Ok(l) => l,
            Err(p) => return refuse(at_value(p.to_string())),
        };
        let plan = match Plan::compile(&l, Some(&self.plan)) {
            Ok(p) => p,
            Err(p) => return refuse(at_value(p.to_string())),
        };
        let source = Source {
            path: self.source.path.clone(),
            text,
        };
        let writer = crate::fleet::writer(&s.text);
        match self.apply(source, plan).await {
            Ok(what) => {
                log::info!("fleet: {name} applied ({what}; {writer})");
                if let Some(f) = self.fleet.as_mut() {
                    f.no_retry();
                    f.applied(s);
                }
            }
            // The value compiled: what failed is this machine's side of the apply (a port
            // taken, a worker that did not start), which may pass later without a new push.
            Err(e) => {
                if let Some(f) = self.fleet.as_mut() {
                    let wait = f.retry_later(s);
                    log::error!(
                        "fleet: {name} not applied, the running config (revision {running}) keeps serving: {e}; trying again in {}s",
                        wait.as_secs()
                    );
                }
            }
        }
    }
}

/// Starts the fleet of a gateway's file, if it names one: the source becomes the file
/// merged with the fleet's config. A fleet config that does not compile with the file is
/// refused (named by key and revision) and the gateway starts on the cached last good one,
/// else on its file alone: one bad value in etcd must not keep a fleet from starting.
pub(super) fn start(source: &mut Source) -> Result<Option<Fleet>, super::Error> {
    let Some(mut f) = Fleet::start(&source.text).map_err(super::Error::Config)? else {
        return Ok(None);
    };
    loop {
        let why = match f.merged(&source.text, None) {
            Ok(text) => {
                let merged = Source {
                    path: source.path.clone(),
                    text,
                };
                match merged.compile(None) {
                    Ok(_) => {
                        *source = merged;
                        return Ok(Some(f));
                    }
                    Err(p) => {
                        let own = f.good.as_ref().map(|s| {
                            (
                                format!("etcd:{}@{}", f.settings.config_key(), s.revision),
                                s,
                            )
                        });
                        own.and_then(|(own, s)| {
                            crate::fleet::merge::diagnose(&source.text, &s.text, &own)
                        })
                        .unwrap_or_else(|| p.to_string())
                    }
                }
            }
            Err(e) => e,
        };
        if !f.fall_back(&why) {
            // The local file alone fails: a plain config error, as without a fleet.
            return Err(super::Error::Config(why));
        }
    }
}
