//! The `tls` of a listen entry compiled: versions, ALPN and the certificates, read and
//! checked now (see [`crate::tls::certs`]).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{Listen, Loaded, Problem, Problems, Tls};
use crate::tls::certs::{self, PairAt};
use crate::tls::{CertStore, ListenerTls, TlsPlan, Version};

/// The TLS listener at `addr` written as `listen` at dotted path `at`, or `None` for a plain
/// one (or after a problem). `loaded`: its certificates as already read for the same text.
pub(super) fn compile_listen_tls(
    l: &Loaded,
    at: &str,
    addr: SocketAddr,
    listen: &Listen,
    loaded: Option<Arc<CertStore>>,
    probs: &mut Problems,
    warnings: &mut Vec<Problem>,
) -> Option<TlsPlan> {
    let Some(tls) = &listen.tls else {
        if listen.http2.is_some() {
            probs.push(l.problem_at(
                &format!("{at}.http2"),
                "http2 applies to TLS listeners (cleartext h2c is not offered)",
            ));
        }
        return None;
    };
    let (min, max) = versions(l, &format!("{at}.tls.protocols"), tls, probs)?;
    let certs = match loaded {
        Some(c) => c,
        None => Arc::new(certificates(l, &format!("{at}.tls"), tls, probs, warnings)?),
    };
    Some(TlsPlan {
        addr,
        listener: ListenerTls {
            min,
            max,
            http2: listen.http2.unwrap_or(true),
        },
        certs,
    })
}

/// `protocols`: a contiguous range of TLS 1.2 and 1.3 (default both).
fn versions(l: &Loaded, at: &str, tls: &Tls, probs: &mut Problems) -> Option<(Version, Version)> {
    let Some(list) = &tls.protocols else {
        return Some((Version::Tls12, Version::Tls13));
    };
    let mut got = Vec::new();
    for (i, p) in list.iter().enumerate() {
        match Version::parse(p) {
            Some(v) => got.push(v),
            None => {
                probs.push(l.problem_at(
                    &format!("{at}.{i}"),
                    format!("unknown or unsafe TLS protocol \"{p}\" (TLSv1.2, TLSv1.3)"),
                ));
                return None;
            }
        }
    }
    match (got.iter().min(), got.iter().max()) {
        (Some(&min), Some(&max)) => Some((min, max)),
        _ => {
            probs.push(l.problem_at(at, "protocols is empty"));
            None
        }
    }
}

/// `cert`/`key` (the default) then each of `certificates`.
fn certificates(
    l: &Loaded,
    at: &str,
    tls: &Tls,
    probs: &mut Problems,
    warnings: &mut Vec<Problem>,
) -> Option<CertStore> {
    let mut pairs: Vec<PairAt> = Vec::new();
    match (&tls.cert, &tls.key) {
        (Some(c), Some(k)) => pairs.push(PairAt {
            cert_path: c,
            cert_at: format!("{at}.cert"),
            key_path: k,
            key_at: format!("{at}.key"),
        }),
        (None, None) => {}
        (Some(_), None) => {
            probs.push(l.problem_at(&format!("{at}.cert"), "cert without key"));
            return None;
        }
        (None, Some(_)) => {
            probs.push(l.problem_at(&format!("{at}.key"), "key without cert"));
            return None;
        }
    }
    for (i, p) in tls.certificates.iter().enumerate() {
        pairs.push(PairAt {
            cert_path: &p.cert,
            cert_at: format!("{at}.certificates.{i}.cert"),
            key_path: &p.key,
            key_at: format!("{at}.certificates.{i}.key"),
        });
    }
    if pairs.is_empty() {
        probs.push(l.problem_at(at, "a TLS listener needs cert and key (or certificates)"));
        return None;
    }
    let before = probs.0.len();
    let certs: Vec<_> = pairs
        .iter()
        .filter_map(|p| certs::load(l, p, probs, warnings))
        .collect();
    (probs.0.len() == before).then(|| CertStore::new(certs))
}
