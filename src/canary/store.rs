//! What live changes leave behind (the state file) and who may make them ([`Lead`]).
//!
//! A [`Store`] lives as long as the process and is handed from plan to plan on reload. The state
//! file (beside the pid file, written whole and renamed into place, see `file`) carries every
//! live value, with the config file's value it replaced, over an upgrade or a restart: a value
//! from the config file wins only if the config file changed since the live value was set.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::file;

/// A server weight changed live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightOverride {
    pub pool: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// The config file's weight it replaced.
    pub file_weight: u32,
}

/// One canary in the state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedCanary {
    /// Basis points.
    pub percent_bp: u32,
    pub state: String,
    pub since: u64,
    pub why: String,
    /// The config file's percent (basis points) when this was written.
    pub file_bp: u32,
    /// The automatic ramp's step (index into `steps`), when one runs or is paused.
    #[serde(default)]
    pub step: Option<usize>,
    /// Failed analyses of that ramp so far.
    #[serde(default)]
    pub failures: u32,
}

/// The state file's content.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    #[serde(default)]
    pub canaries: BTreeMap<String, SavedCanary>,
    #[serde(default)]
    pub weights: Vec<WeightOverride>,
}

/// Whether this process drives the canaries of its state file: ramps and live changes happen
/// only in the worker generation that holds the state file's lock, so that while an old and a
/// new generation overlap (upgrade, reload with new listeners) exactly one of them decides.
#[derive(Debug, Default)]
pub struct Lead {
    /// The locked lock file; `Some(None)` when it could not be opened (we drive unlocked).
    held: Option<Option<OwnedFd>>,
    /// This generation drains: it gave the lead away for good.
    retired: bool,
}

impl Lead {
    pub fn held(&self) -> bool {
        self.held.is_some()
    }

    pub fn retired(&self) -> bool {
        self.retired
    }

    /// Takes the lock of the state file at `path` if free; true when it was taken now (the
    /// caller then adopts what the previous holder left in the file).
    pub fn try_take(&mut self, path: &Path) -> bool {
        if self.held.is_some() || self.retired {
            return false;
        }
        match file::lock(path) {
            Ok(fd) => match crate::lifecycle::os::try_lock(&fd) {
                Ok(true) => self.held = Some(Some(fd)),
                Ok(false) => return false,
                Err(e) => {
                    log::error!("cannot lock the state file {}: {e}", path.display());
                    self.held = Some(None);
                }
            },
            Err(e) => {
                log::error!("cannot lock the state file: {e}");
                self.held = Some(None);
            }
        }
        true
    }

    /// Gives the lead up for good (this generation drains); the next holder takes over.
    pub fn retire(&mut self) {
        self.held = None;
        self.retired = true;
    }
}

/// Process-wide live-change state.
#[derive(Debug)]
pub struct Store {
    pub path: PathBuf,
    /// Held by whoever changes something (a live change, a ramp step, a reload), from reading
    /// the old value to writing the file; it also says whether this process may drive.
    changing: Mutex<Lead>,
    /// The file's content as this process last read or wrote it (to see whether another
    /// process changed it meanwhile).
    seen: Mutex<Option<Saved>>,
}

/// The store of this worker process, for [`retire_process`].
static PROCESS: std::sync::OnceLock<std::sync::Arc<Store>> = std::sync::OnceLock::new();

/// Names the store of this worker process (once, at start).
pub fn register(store: &std::sync::Arc<Store>) {
    let _ = PROCESS.set(std::sync::Arc::clone(store));
}

/// Before the process exits: waits for a change in progress to be written to the state file
/// and lets no other start, so that the next generation finds every change this one made.
pub fn retire_process() {
    if let Some(s) = PROCESS.get() {
        s.changing().retire();
    }
}

/// The state file of the instance whose pid file is `pid_file`.
pub fn state_path(pid_file: &str) -> PathBuf {
    let stem = pid_file.strip_suffix(".pid").unwrap_or(pid_file);
    PathBuf::from(format!("{stem}.state.json"))
}

impl Store {
    pub fn new(path: PathBuf) -> Store {
        Store {
            path,
            changing: Mutex::new(Lead::default()),
            seen: Mutex::new(None),
        }
    }

    /// The change lock (a poisoned lock still holds a usable value). Blocking: never hold it
    /// on an async runtime thread.
    pub fn changing(&self) -> MutexGuard<'_, Lead> {
        self.changing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this process leads, if that can be told without waiting (for the async
    /// runtime: `None` while a change is in progress).
    pub fn leads(&self) -> Option<bool> {
        match self.changing.try_lock() {
            Ok(l) => Some(l.held()),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner().held()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    fn seen(&self) -> MutexGuard<'_, Option<Saved>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the state file; `None` if absent, an error if unreadable or not ours.
    pub fn read(&self) -> Result<Option<Saved>, String> {
        let Some(b) = file::read(&self.path)? else {
            return Ok(None);
        };
        let s: Saved =
            serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", self.path.display()))?;
        *self.seen() = Some(s.clone());
        Ok(Some(s))
    }

    /// Reads the state file if another process changed it since we last read or wrote it.
    pub fn read_if_changed(&self) -> Result<Option<Saved>, String> {
        let before = self.seen().clone();
        Ok(self.read()?.filter(|now| Some(now) != before.as_ref()))
    }

    /// Writes `saved` whole (see `file::write`): a crash leaves the old or the new file.
    pub fn write(&self, saved: &Saved) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(saved).map_err(|e| e.to_string())?;
        file::write(&self.path, &text)?;
        *self.seen() = Some(saved.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gg-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_and_changes_by_another_process() {
        let d = dir("rt");
        let s = Store::new(d.join("x.state.json"));
        assert_eq!(s.read(), Ok(None));
        let saved = Saved {
            weights: vec![WeightOverride {
                pool: "p".into(),
                addr: "127.0.0.1:1".parse().unwrap(),
                weight: 3,
                file_weight: 1,
            }],
            ..Saved::default()
        };
        s.write(&saved).unwrap();
        assert_eq!(s.read(), Ok(Some(saved.clone())));
        assert_eq!(s.read_if_changed(), Ok(None));
        // Another process (another store on the same file) writes: we see it once.
        let other = Store::new(d.join("x.state.json"));
        let mut changed = saved.clone();
        changed.weights[0].weight = 5;
        other.write(&changed).unwrap();
        assert_eq!(s.read_if_changed(), Ok(Some(changed)));
        assert_eq!(s.read_if_changed(), Ok(None));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn one_process_leads_until_it_retires() {
        let d = dir("lead");
        let path = d.join("x.state.json");
        // Two generations: two stores on one state file (flock locks are per open file).
        let (old, new) = (Store::new(path.clone()), Store::new(path.clone()));
        assert!(old.changing().try_take(&path));
        assert!(old.changing().held());
        assert!(!new.changing().try_take(&path));
        assert!(!new.changing().held());
        old.changing().retire();
        assert!(
            !old.changing().try_take(&path),
            "a retired lead stays retired"
        );
        assert!(new.changing().try_take(&path));
        assert!(new.changing().held());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn path_beside_pid_file() {
        assert_eq!(
            state_path("/run/graygate.pid"),
            PathBuf::from("/run/graygate.state.json")
        );
    }
}
