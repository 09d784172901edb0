//! `config_store`: where a fleet of gateways keeps the config they share (issue 19).

use serde::Deserialize;

/// `config_store`: absent, the file is the whole config (the default).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigStore {
    pub etcd: Etcd,
}

/// `config_store.etcd`: one etcd v3 cluster and the prefix this fleet lives under.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Etcd {
    /// `http://HOST:PORT` or `https://HOST:PORT`; a bare `HOST:PORT` is taken as `http://`.
    pub endpoints: Vec<String>,
    /// Every key of the fleet starts with it, e.g. `/graygate/web`.
    pub prefix: String,
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (its first line); required with `username`.
    #[serde(default)]
    pub password_file: Option<String>,
    #[serde(default)]
    pub tls: Option<EtcdTls>,
}

/// `config_store.etcd.tls`: PEM files; `ca` checks the server, `cert` + `key` identify us.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
}
