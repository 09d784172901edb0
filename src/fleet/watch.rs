//! The master's watch of `PREFIX/config`.
//!
//! A thread of its own (own runtime) reads the key, then watches it from the revision after
//! the one it read, and hands every new value to the master's loop, which applies it exactly
//! as `-s reload` applies a file (compile; a value that fails is never applied, the running
//! config keeps serving). When etcd is away the thread retries with backoff (250 ms doubling
//! to 5 s) and says so once; on its return it reads the key again, which also covers a watch
//! whose revision was compacted. The last value applied is kept in `<pid_file>.fleet.yaml`,
//! so that a gateway can start while etcd is away.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::{etcd, merge, Settings};

/// One value of `PREFIX/config`, as read (its first line may name the pusher).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared {
    pub text: String,
    pub revision: i64,
}

/// What the watch tells the master.
#[derive(Debug)]
pub enum Event {
    Config(Shared),
    Deleted(i64),
    Away(String),
    Back,
}

/// The master's handle: the store, the last value applied, the watch's events.
pub struct Fleet {
    pub settings: Settings,
    /// The shared config the gateway runs (`None`: nothing pushed yet, the file alone).
    pub good: Option<Shared>,
    /// etcd is away (the error that says why).
    pub away: Option<String>,
    /// The gateway's own file as last read (start, `-s reload`).
    pub local: String,
    /// What the start has to say, for the error log once it is open.
    pub notes: Vec<String>,
    cache: PathBuf,
    /// The watch's events, once it runs ([`Fleet::watch`]).
    rx: Option<UnboundedReceiver<Event>>,
    /// The revision the watch starts after.
    seen: i64,
}

/// The first line of a gateway's merged config: which revision it runs.
const RUNNING: &str = "# graygate fleet: running ";

#[derive(serde::Deserialize)]
struct Local {
    #[serde(default = "crate::config::default_pid_file")]
    pid_file: String,
}

impl Fleet {
    /// For a local file with `config_store`: reads the fleet's config (from the cache if etcd
    /// does not answer) and starts the watch. `None` without `config_store`.
    pub fn start(local: &str) -> Result<Option<Fleet>, String> {
        let Some(settings) = Settings::from_text(local)? else {
            return Ok(None);
        };
        let pid_file = serde_yaml::from_str::<Local>(local)
            .map(|l| l.pid_file)
            .map_err(|e| e.to_string())?;
        let cache = PathBuf::from(format!("{pid_file}.fleet.yaml"));
        let key = settings.config_key();
        let mut notes = Vec::new();
        let first = etcd::runtime()?.block_on(async {
            let mut c = etcd::connect(&settings).await?;
            etcd::get(&mut c, &settings, &key).await
        });
        let (good, away) = match first {
            Ok(v) => (
                v.text.map(|text| Shared {
                    text,
                    revision: v.mod_revision,
                }),
                None,
            ),
            Err(e) => {
                let cached = std::fs::read_to_string(&cache).map_err(|ce| {
                    format!(
                        "{e}; and no cached fleet config ({}: {ce})",
                        cache.display()
                    )
                })?;
                let s = from_cache(&cached).ok_or_else(|| {
                    format!(
                        "{e}; and the cached fleet config {} is unreadable",
                        cache.display()
                    )
                })?;
                notes.push(format!(
                    "fleet: {e}: starting on the cached fleet config (revision {}, {})",
                    s.revision,
                    cache.display()
                ));
                (Some(s), Some(e))
            }
        };
        notes.push(match &good {
            Some(s) => format!(
                "fleet: {key} revision {} ({})",
                s.revision,
                super::writer(&s.text)
            ),
            None => format!("fleet: nothing pushed to {key} yet: serving the local file"),
        });
        let seen = good.as_ref().map_or(0, |s| s.revision);
        let mut f = Fleet::new(settings, good, away, cache, seen, local);
        f.notes = notes;
        Ok(Some(f))
    }

    /// After a re-exec (upgrade): the new image goes on from the running config's revision.
    pub fn resume(merged: &str, local: &str) -> Option<Fleet> {
        let settings = Settings::from_text(merged).ok()??;
        let pid_file = serde_yaml::from_str::<Local>(merged).ok()?.pid_file;
        let revision = running_revision(merged)?;
        let good = merge::shared_part(merged)
            .ok()
            .map(|text| Shared { text, revision });
        let cache = PathBuf::from(format!("{pid_file}.fleet.yaml"));
        let mut f = Fleet::new(settings, good, None, cache, revision, local);
        f.watch();
        Some(f)
    }

    fn new(
        settings: Settings,
        good: Option<Shared>,
        away: Option<String>,
        cache: PathBuf,
        seen: i64,
        local: &str,
    ) -> Fleet {
        Fleet {
            settings,
            good,
            away,
            local: local.to_string(),
            notes: Vec::new(),
            cache,
            rx: None,
            seen,
        }
    }

    /// Starts the watch thread. Separate from [`Fleet::start`] because the master may
    /// daemonize in between, and a thread does not survive the fork.
    pub fn watch(&mut self) {
        if self.rx.is_some() {
            return;
        }
        let (tx, rx) = unbounded_channel();
        let s = self.settings.clone();
        let (seen, was_away) = (self.seen, self.away.is_some());
        let spawned = std::thread::Builder::new()
            .name("fleet watch".into())
            .spawn(move || match etcd::runtime() {
                Ok(rt) => rt.block_on(watch(s, tx, seen, was_away)),
                Err(e) => log::error!("fleet: {e}"),
            });
        match spawned {
            Ok(_) => self.rx = Some(rx),
            Err(e) => log::error!("fleet: cannot start the watch thread: {e}"),
        }
    }

    /// The next event; never ready without a fleet.
    pub async fn next(f: &mut Option<Fleet>) -> Event {
        match f {
            Some(Fleet { rx: Some(rx), .. }) => match rx.recv().await {
                Some(e) => e,
                None => std::future::pending().await,
            },
            Some(_) => std::future::pending().await,
            None => std::future::pending().await,
        }
    }

    /// `local` (a gateway's own file) with `shared` (default: the config it runs).
    pub fn merged(&self, local: &str, shared: Option<&Shared>) -> Result<String, String> {
        let Some(s) = shared.or(self.good.as_ref()) else {
            return Ok(local.to_string());
        };
        let m = merge::merge(local, &s.text)?;
        Ok(format!(
            "{RUNNING}{} revision {}\n{m}",
            self.settings.config_key(),
            s.revision
        ))
    }

    /// How a value is named in messages.
    pub fn name(&self, s: &Shared) -> String {
        format!(
            "etcd {} revision {}",
            self.settings.config_key(),
            s.revision
        )
    }

    /// Records a value as applied (and caches it for a start while etcd is away).
    pub fn applied(&mut self, s: Shared) {
        let text = format!("# revision {}\n{}", s.revision, s.text);
        if let Err(e) = std::fs::write(&self.cache, text) {
            log::warn!("fleet: cannot write {}: {e}", self.cache.display());
        }
        self.good = Some(s);
    }
}

fn from_cache(text: &str) -> Option<Shared> {
    let (head, rest) = text.split_once('\n')?;
    let revision = head.strip_prefix("# revision ")?.parse().ok()?;
    Some(Shared {
        text: rest.to_string(),
        revision,
    })
}

/// The revision a merged config was made from.
pub fn running_revision(merged: &str) -> Option<i64> {
    let first = merged.lines().next()?.strip_prefix(RUNNING)?;
    first.rsplit(' ').next()?.parse().ok()
}

/// Backoff between attempts while etcd is away.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

async fn watch(s: Settings, tx: UnboundedSender<Event>, mut seen: i64, mut away: bool) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let r = session(&s, &tx, &mut seen, &mut away, &mut backoff).await;
        if tx.is_closed() {
            return;
        }
        if let Err(e) = r {
            if !away {
                away = true;
                let _ = tx.send(Event::Away(e));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// One connection: read the key, then watch it. `Ok` to start over at once (a compacted
/// watch), `Err` when etcd is away.
async fn session(
    s: &Settings,
    tx: &UnboundedSender<Event>,
    seen: &mut i64,
    away: &mut bool,
    backoff: &mut Duration,
) -> Result<(), String> {
    let key = s.config_key();
    let mut c = etcd::connect(s).await?;
    let v = etcd::get(&mut c, s, &key).await?;
    let opts = WatchOptions::new().with_start_revision(v.store_revision + 1);
    let mut stream = c
        .watch(key.as_str(), Some(opts))
        .await
        .map_err(|e| format!("etcd at {}: watch: {e}", s.endpoints()))?;
    if *away {
        *away = false;
        let _ = tx.send(Event::Back);
    }
    *backoff = BACKOFF_MIN;
    if v.mod_revision != *seen {
        *seen = v.mod_revision;
        let _ = tx.send(match v.text {
            Some(text) => Event::Config(Shared {
                text,
                revision: v.mod_revision,
            }),
            None => Event::Deleted(v.store_revision),
        });
    }
    loop {
        let m = stream
            .message()
            .await
            .map_err(|e| format!("etcd at {}: watch: {e}", s.endpoints()))?;
        let Some(m) = m else {
            return Err(format!("etcd at {}: the watch ended", s.endpoints()));
        };
        if m.canceled() {
            log::info!(
                "fleet: watch of {key} cancelled ({}, compacted at {}): reading it again",
                m.cancel_reason(),
                m.compact_revision()
            );
            return Ok(());
        }
        for ev in m.events() {
            let Some(kv) = ev.kv() else { continue };
            *seen = kv.mod_revision();
            let _ = tx.send(match ev.event_type() {
                EventType::Put => Event::Config(Shared {
                    text: String::from_utf8_lossy(kv.value()).into_owned(),
                    revision: kv.mod_revision(),
                }),
                EventType::Delete => Event::Deleted(kv.mod_revision()),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_revision_and_the_cache_read_back() {
        let text = format!("{RUNNING}/graygate/web/config revision 42\npid_file: /x\n");
        assert_eq!(running_revision(&text), Some(42));
        assert_eq!(running_revision("pid_file: /x\n"), None);
        let s = from_cache("# revision 7\nupstreams: {}\n").unwrap();
        assert_eq!((s.revision, s.text.as_str()), (7, "upstreams: {}\n"));
        assert!(from_cache("upstreams: {}\n").is_none());
    }

    #[test]
    fn a_store_needs_endpoints_and_a_clean_prefix() {
        let ok =
            "config_store: { etcd: { endpoints: [\"127.0.0.1:2379\"], prefix: /graygate/web } }";
        let s = Settings::from_text(ok).unwrap().unwrap();
        assert_eq!(s.config_key(), "/graygate/web/config");
        assert!(Settings::from_text("pid_file: /x\n").unwrap().is_none());
        for bad in [
            "config_store: { etcd: { endpoints: [], prefix: /g } }",
            "config_store: { etcd: { endpoints: [a], prefix: g } }",
            "config_store: { etcd: { endpoints: [a], prefix: /g/ } }",
            "config_store: { etcd: { endpoints: [a], prefix: /g, username: u } }",
            "config_store: { etcd: { endpoints: [a], prefix: /g, bogus: 1 } }",
        ] {
            assert!(Settings::from_text(bad).is_err(), "{bad}");
        }
    }
}
