//! `admin` and `canaries`: the parts of the file that belong to gray releases (issue 15).

use serde::Deserialize;

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
}

fn default_key() -> String {
    "$remote_addr".into()
}
