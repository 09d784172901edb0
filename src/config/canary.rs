//! `admin` and `canaries`: the parts of the file that belong to gray releases (issue 15).

use serde::Deserialize;

use super::TimeValue;

/// `admin`: the admin HTTP listener (JSON API, `/metrics`). Off when absent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `ADDR:PORT`; a bare port listens on 127.0.0.1.
    pub listen: String,
    /// File holding the bearer token; required unless `listen` is a loopback address.
    #[serde(default)]
    pub token_file: Option<String>,
}

/// `canaries.NAME`: a sticky split of users between two pools.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// Pool serving users outside the canary.
    pub stable: String,
    /// Pool serving the canary's users.
    pub canary: String,
    /// What a user is known by (any template); an empty value falls back to the client address.
    #[serde(default = "default_key")]
    pub key: String,
    /// Share of users on the canary side, 0..100, at most two decimals.
    #[serde(default)]
    pub percent: f64,
    /// The automatic ramp's percents (issue 16); absent: manual mode.
    #[serde(default)]
    pub steps: Option<Vec<f64>>,
    /// Time at each step before its analysis; required with `steps`.
    #[serde(default)]
    pub interval: Option<TimeValue>,
    /// Bounds each step's analysis checks; every key optional.
    #[serde(default)]
    pub analysis: Option<Analysis>,
}

/// `canaries.NAME.analysis`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    #[serde(default)]
    pub min_requests: Option<u64>,
    /// A percent written with its sign: `1%`, `0.5%`.
    #[serde(default)]
    pub max_error_rate: Option<Scalar>,
    #[serde(default)]
    pub max_error_rate_vs_stable: Option<f64>,
    #[serde(default)]
    pub max_p99: Option<TimeValue>,
    #[serde(default)]
    pub max_p99_vs_stable: Option<f64>,
    #[serde(default)]
    pub failures_allowed: Option<u32>,
}

/// A YAML scalar kept as written, checked by the plan (which knows its position).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Number(f64),
    Text(String),
}

fn default_key() -> String {
    "$remote_addr".into()
}
