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
    /// A value whose apply failed (not its compile: a new generation that did not start, a
    /// worker that did not confirm), due for another try.
    Retry(Shared),
}

/// A value to apply again, and when.
struct Retry {
    shared: Shared,
    wait: Duration,
    at: tokio::time::Instant,
}

/// First and longest wait before applying a value again.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

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
    /// What went wrong at the start (a refused value), for the error log once it is open.
    pub errors: Vec<String>,
    cache: PathBuf,
    /// The last good config from the cache, kept at start in case etcd's value is refused.
    cached: Option<Shared>,
    /// The watch's events, once it runs ([`Fleet::watch`]).
    rx: Option<UnboundedReceiver<Event>>,
    /// The revision the watch starts after.
    seen: i64,
    /// A value whose apply failed, tried again with backoff until it applies or a newer one
    /// comes.
    retry: Option<Retry>,
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
        let prefix = settings.prefix().to_string();
        let cached = std::fs::read_to_string(&cache)
            .map_err(|e| format!("{}: {e}", cache.display()))
            .and_then(|t| from_cache(&t, &prefix).map_err(|e| format!("{}: {e}", cache.display())));
        let (good, away, cached) = match (first, cached) {
            (Ok(v), cached) => (
                v.text.map(|text| Shared {
                    text,
                    revision: v.mod_revision,
                }),
                None,
                cached.ok(),
            ),
            (Err(e), Ok(s)) => {
                notes.push(format!(
                    "fleet: {e}: starting on the cached fleet config (revision {}, {})",
                    s.revision,
                    cache.display()
                ));
                (Some(s), Some(e), None)
            }
            (Err(e), Err(ce)) => {
                return Err(format!("{e}; and no usable cached fleet config ({ce})"))
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
        f.cached = cached;
        Ok(Some(f))
    }

    /// At start, the config [`Fleet::good`] names failed (`why`): falls back to the cached
    /// last good config, else to the local file alone. The watch still starts after the
    /// refused revision, so a later good value is applied. `false`: nothing left to fall to.
    pub fn fall_back(&mut self, why: &str) -> bool {
        let Some(bad) = self.good.take() else {
            return false;
        };
        let name = self.name(&bad);
        let cached = self.cached.take().filter(|c| c.revision != bad.revision);
        self.errors.push(match &cached {
            Some(c) => format!(
                "fleet: {name} refused at start: {why}; starting on the cached last good config (revision {}, {})",
                c.revision,
                self.cache.display()
            ),
            None => format!(
                "fleet: {name} refused at start: {why}; no other good fleet config: STARTING ON THE LOCAL FILE ALONE ({}) until a good value is pushed",
                self.settings.config_key()
            ),
        });
        self.good = cached;
        true
    }

    /// After a re-exec (upgrade): the new image goes on from the running config's revision,
    /// or, when nothing was pushed yet (the file alone runs), watches for the first push.
    pub fn resume(merged: &str, local: &str) -> Option<Fleet> {
        let settings = Settings::from_text(merged).ok()??;
        let pid_file = serde_yaml::from_str::<Local>(merged).ok()?.pid_file;
        let revision = running_revision(merged);
        let good = revision.and_then(|revision| {
            merge::shared_part(merged)
                .ok()
                .map(|text| Shared { text, revision })
        });
        let cache = PathBuf::from(format!("{pid_file}.fleet.yaml"));
        let seen = revision.unwrap_or(0);
        let mut f = Fleet::new(settings, good, None, cache, seen, local);
        f.save();
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
            errors: Vec::new(),
            cache,
            cached: None,
            rx: None,
            seen,
            retry: None,
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

    /// The next event (a retry when one is due); never ready without a fleet.
    pub async fn next(f: &mut Option<Fleet>) -> Event {
        let Some(f) = f else {
            return std::future::pending().await;
        };
        let retry = f.retry.as_ref().map(|r| (r.at, r.shared.clone()));
        let recv = async {
            match f.rx.as_mut() {
                Some(rx) => match rx.recv().await {
                    Some(e) => e,
                    None => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        match retry {
            Some((at, s)) => tokio::select! {
                e = recv => e,
                _ = tokio::time::sleep_until(at) => Event::Retry(s),
            },
            None => recv.await,
        }
    }

    /// The apply of `s` failed: try it again later, waiting twice as long as last time (1 s
    /// up to 30 s). Returns the wait.
    pub fn retry_later(&mut self, s: Shared) -> Duration {
        let wait = match &self.retry {
            Some(r) if r.shared == s => (r.wait * 2).min(RETRY_MAX),
            _ => RETRY_MIN,
        };
        self.retry = Some(Retry {
            shared: s,
            wait,
            at: tokio::time::Instant::now() + wait,
        });
        wait
    }

    /// No retry pending (a value applied, or a newer one came).
    pub fn no_retry(&mut self) {
        self.retry = None;
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
        self.good = Some(s);
        self.save();
    }

    /// Writes the config the gateway runs to the cache, atomically (a crash leaves the old
    /// cache or the new one, never half of one), with the prefix it belongs to.
    pub fn save(&self) {
        let Some(s) = &self.good else { return };
        let text = format!(
            "{CACHE_HEAD}{} prefix {}\n{}",
            s.revision,
            self.settings.prefix(),
            s.text
        );
        if let Err(e) = write_atomic(&self.cache, text.as_bytes()) {
            log::warn!("fleet: cannot write {}: {e}", self.cache.display());
        }
    }
}

const CACHE_HEAD: &str = "# revision ";

/// temp file + fsync + rename + fsync of the directory.
fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A cache as [`Fleet::save`] writes it; one of another prefix (another fleet) is refused.
fn from_cache(text: &str, prefix: &str) -> Result<Shared, String> {
    let bad = || "not a graygate fleet cache".to_string();
    let (head, rest) = text.split_once('\n').ok_or_else(bad)?;
    let (rev, of) = head
        .strip_prefix(CACHE_HEAD)
        .and_then(|h| h.split_once(" prefix "))
        .ok_or_else(bad)?;
    let revision = rev.parse().map_err(|_| bad())?;
    if of != prefix {
        return Err(format!("the cache is of prefix {of}, not {prefix}"));
    }
    Ok(Shared {
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
        let s = from_cache("# revision 7 prefix /g/a\nupstreams: {}\n", "/g/a").unwrap();
        assert_eq!((s.revision, s.text.as_str()), (7, "upstreams: {}\n"));
        assert!(from_cache("upstreams: {}\n", "/g/a").is_err());
        assert!(from_cache("# revision 7\nupstreams: {}\n", "/g/a").is_err());
        let e = from_cache("# revision 7 prefix /g/b\nupstreams: {}\n", "/g/a").unwrap_err();
        assert!(e.contains("/g/b"), "{e}");
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
