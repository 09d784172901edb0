//! What live changes leave behind: weight overrides and the state file.
//!
//! A [`Store`] lives as long as the process and is handed from plan to plan on reload. The state
//! file (beside the pid file, written whole and renamed into place) carries every live value,
//! with the config file's value it replaced, over an upgrade or a restart: a value from the
//! config file wins only if the config file changed since the live value was set.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

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

/// Process-wide live-change state.
#[derive(Debug)]
pub struct Store {
    pub path: PathBuf,
    weights: Mutex<Vec<WeightOverride>>,
    /// Held by whoever changes something, from reading the old value to writing the file.
    pub changing: Mutex<()>,
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
            weights: Mutex::new(Vec::new()),
            changing: Mutex::new(()),
        }
    }

    pub fn weights(&self) -> Vec<WeightOverride> {
        self.weights.lock().map(|w| w.clone()).unwrap_or_default()
    }

    /// The live weight of `pool`/`addr` whose config weight is `file_weight`, if one was set
    /// live over that same config weight.
    pub fn weight(&self, pool: &str, addr: SocketAddr, file_weight: u32) -> Option<u32> {
        let w = self.weights.lock().ok()?;
        w.iter()
            .find(|o| o.pool == pool && o.addr == addr && o.file_weight == file_weight)
            .map(|o| o.weight)
    }

    pub fn set_weights(&self, new: Vec<WeightOverride>) {
        if let Ok(mut w) = self.weights.lock() {
            *w = new;
        }
    }

    /// Reads the state file; `None` if absent, an error if unreadable.
    pub fn read(&self) -> Result<Option<Saved>, String> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| format!("{}: {e}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", self.path.display())),
        }
    }

    /// Writes `saved` whole: to a temporary file, then renamed over the state file, so a crash
    /// leaves the old or the new file, never half of one.
    pub fn write(&self, saved: &Saved) -> Result<(), String> {
        write_atomic(&self.path, saved)
    }
}

fn write_atomic(path: &Path, saved: &Saved) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(saved).map_err(|e| e.to_string())?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write state file {}: {e}", path.display())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_weight_rule() {
        let dir = std::env::temp_dir().join(format!("gg-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = Store::new(dir.join("x.state.json"));
        assert_eq!(s.read(), Ok(None));
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let o = WeightOverride {
            pool: "p".into(),
            addr,
            weight: 3,
            file_weight: 1,
        };
        s.set_weights(vec![o.clone()]);
        assert_eq!(s.weight("p", addr, 1), Some(3));
        // The config file now says something else: it wins.
        assert_eq!(s.weight("p", addr, 2), None);
        let saved = Saved {
            weights: vec![o],
            ..Saved::default()
        };
        s.write(&saved).unwrap();
        assert_eq!(s.read(), Ok(Some(saved)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn path_beside_pid_file() {
        assert_eq!(
            state_path("/run/graygate.pid"),
            PathBuf::from("/run/graygate.state.json")
        );
    }
}
