//! A fleet: several gateways on one etcd (issue 19).
//!
//! With `config_store` in a gateway's file, the config it serves is its own file's process
//! settings plus the fleet's shared part (`merge`), kept in etcd under the prefix:
//!
//! | key | value |
//! |---|---|
//! | `PREFIX/config` | the shared YAML; its first line says who pushed it and when |
//! | `PREFIX/state/canary/NAME` | a canary's live percent, phase and ramp step (JSON) |
//! | `PREFIX/state/weights` | the live weights (JSON) |
//! | `PREFIX/members/ID` | one running gateway (JSON), under its lease |
//! | `PREFIX/leader` | the gateway that runs the automatic ramps, under its lease |
//! | `PREFIX/counts/ID/NAME` | a gateway's cumulative counts of a canary's sides, under its lease |
//!
//! - `merge`: the split between local and shared keys;
//! - `etcd`: the client (its own runtime on its own thread: Pingora's is never blocked);
//! - `watch`: the master's watch of `PREFIX/config`, applied as a reload;
//! - `agent`: a worker's live state through etcd, its membership, the store's status;
//! - `lead`: the election of the gateway that runs the ramps, and the counts it sums;
//! - `cli`: `graygate push` and `graygate pull`.

pub mod agent;
pub mod cli;
pub mod etcd;
mod lead;
pub mod merge;
pub mod watch;

use crate::config::store::{ConfigStore, Etcd};

/// What a gateway needs to reach its store: the `config_store` of its file, with the
/// password read.
#[derive(Clone, Debug)]
pub struct Settings {
    pub etcd: Etcd,
    pub password: Option<String>,
}

impl Settings {
    /// The `config_store` of a config text, if it has one.
    pub fn from_text(text: &str) -> Result<Option<Settings>, String> {
        #[derive(serde::Deserialize)]
        struct Only {
            #[serde(default)]
            config_store: Option<ConfigStore>,
        }
        let only: Only = serde_yaml::from_str(text).map_err(|e| format!("config_store: {e}"))?;
        only.config_store.map(|c| Settings::new(c.etcd)).transpose()
    }

    fn new(etcd: Etcd) -> Result<Settings, String> {
        if etcd.endpoints.is_empty() {
            return Err("config_store.etcd.endpoints: at least one endpoint is needed".into());
        }
        if !etcd.prefix.starts_with('/') || etcd.prefix.len() < 2 || etcd.prefix.ends_with('/') {
            return Err(format!(
                "config_store.etcd.prefix: \"{}\" must start with / and not end with it (e.g. /graygate/web)",
                etcd.prefix
            ));
        }
        let password = match (&etcd.username, &etcd.password_file) {
            (Some(_), Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("config_store.etcd.password_file: cannot read {f}: {e}"))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ),
            (Some(_), None) => {
                return Err("config_store.etcd.username needs password_file".into());
            }
            (None, _) => None,
        };
        Ok(Settings { etcd, password })
    }

    /// `PREFIX/NAME`.
    pub fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.etcd.prefix)
    }

    /// The fleet's prefix (a cache records it: a cache of another fleet is refused).
    pub fn prefix(&self) -> &str {
        &self.etcd.prefix
    }

    /// Where the fleet's config lives.
    pub fn config_key(&self) -> String {
        self.key("config")
    }

    /// The endpoints, for messages.
    pub fn endpoints(&self) -> String {
        self.etcd.endpoints.join(",")
    }
}

/// The first line of a pushed value: who pushed it, from where, when.
pub fn push_header() -> String {
    let user =
        std::env::var("USER").unwrap_or_else(|_| format!("uid {}", crate::lifecycle::os::euid()));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown host".into());
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
    format!("# graygate push: by {user} on {host} at {now}\n")
}

/// Who wrote a value, from its first line ("unknown" for a value not written by a push).
pub fn writer(value: &str) -> String {
    value
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# graygate push: "))
        .unwrap_or("unknown writer (not written by graygate push)")
        .to_string()
}
