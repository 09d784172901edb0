//! The etcd client, set up from `config_store.etcd`.
//!
//! Every use runs on a runtime of its own (a thread in the master, the worker, or the CLI):
//! the client's I/O never shares a runtime with Pingora's request handling, and an etcd that
//! hangs blocks nothing but its own thread.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, OpenSslClientConfig};

use super::Settings;

/// How long a connection attempt or one call may take before the store counts as away.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// A current-thread runtime for one fleet thread.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the etcd client's runtime: {e}"))
}

fn read_pem(what: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path)
        .map_err(|e| format!("config_store.etcd.tls.{what}: cannot read {path}: {e}"))
}

/// Connects to the store's endpoints (a bare `HOST:PORT` as `http://`).
pub async fn connect(s: &Settings) -> Result<Client, String> {
    let tls = s.etcd.tls.as_ref();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoints: Vec<String> = s
        .etcd
        .endpoints
        .iter()
        .map(|e| {
            if e.contains("://") {
                e.clone()
            } else {
                format!("{scheme}://{e}")
            }
        })
        .collect();
    let mut o = ConnectOptions::new()
        .with_connect_timeout(TIMEOUT)
        .with_timeout(TIMEOUT)
        // A stopped etcd closes the connection at once; a cut link is found by the lease
        // keep-alive and the watch. gRPC pings only on open streams, 10 s apart: etcd's
        // default --grpc-keepalive-min-time is 5 s (faster pings get a too_many_pings GOAWAY),
        // and a 1 s timeout flapped on an etcd that stalls in fsync.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(false);
    if let (Some(u), Some(p)) = (&s.etcd.username, &s.password) {
        o = o.with_user(u.clone(), p.clone());
    }
    if let Some(t) = tls {
        let mut c = OpenSslClientConfig::default();
        if let Some(ca) = &t.ca {
            c = c.ca_cert_pem(&read_pem("ca", ca)?);
        }
        match (&t.cert, &t.key) {
            (Some(cert), Some(key)) => {
                c = c.client_cert_pem_and_key(&read_pem("cert", cert)?, &read_pem("key", key)?);
            }
            (None, None) => {}
            _ => return Err("config_store.etcd.tls: cert and key go together".into()),
        }
        o = o.with_openssl_tls(c);
    }
    let c = tokio::time::timeout(TIMEOUT * 2, Client::connect(&endpoints, Some(o)))
        .await
        .map_err(|_| {
            format!(
                "etcd at {} did not answer within {}s",
                s.endpoints(),
                TIMEOUT.as_secs() * 2
            )
        })?
        .map_err(|e| format!("etcd at {}: {e}", s.endpoints()))?;
    Ok(c)
}

/// A value and the revision it was last written at (0: absent), and the store's revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub text: Option<String>,
    pub mod_revision: i64,
    pub store_revision: i64,
}

/// Reads one key.
pub async fn get(c: &mut Client, s: &Settings, key: &str) -> Result<Value, String> {
    let r = tokio::time::timeout(TIMEOUT, c.get(key, None))
        .await
        .map_err(|_| {
            format!(
                "etcd at {} did not answer within {}s",
                s.endpoints(),
                TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("etcd at {}: {e}", s.endpoints()))?;
    let store_revision = r.header().map_or(0, |h| h.revision());
    let kv = r.kvs().first();
    Ok(Value {
        text: kv.map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
        mod_revision: kv.map_or(0, |kv| kv.mod_revision()),
        store_revision,
    })
}
