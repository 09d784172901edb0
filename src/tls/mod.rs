//! TLS at the edge: the certificates of each TLS listener, picked per handshake by the name
//! the client asks for (SNI).
//!
//! Certificates live in the plan, so they are part of the snapshot: `-s reload` reads them
//! again, and the next handshake takes the new ones from the live snapshot while connections
//! already open keep theirs. What only a new listener can change (protocol versions, ALPN
//! `h2`) is [`ListenerTls`], compared by `Plan::same_listeners`.
//!
//! - `certs`: reading and checking the PEM files (the `-t` checks, with positions).
//! - `accept`: Pingora's TLS settings and the certificate callback.

pub mod accept;
pub mod certs;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::SslVersion;
use pingora::tls::x509::X509;

/// What a TLS listener was started with; a change needs a new worker generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerTls {
    pub min: Version,
    pub max: Version,
    /// Offer `h2` by ALPN.
    pub http2: bool,
}

/// The protocol versions graygate accepts (nginx's `ssl_protocols` minus the broken ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    Tls12,
    Tls13,
}

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        match s {
            "TLSv1.2" => Some(Version::Tls12),
            "TLSv1.3" => Some(Version::Tls13),
            _ => None,
        }
    }

    pub fn ssl(self) -> SslVersion {
        match self {
            Version::Tls12 => SslVersion::TLS1_2,
            Version::Tls13 => SslVersion::TLS1_3,
        }
    }
}

/// One TLS listener of a server block.
#[derive(Debug)]
pub struct TlsPlan {
    pub addr: SocketAddr,
    pub listener: ListenerTls,
    pub certs: Arc<CertStore>,
}

/// A certificate chain and its key.
pub struct Cert {
    pub leaf: X509,
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
    /// The DNS names it is valid for (SAN, else CN), lower case; `*.x` for wildcards.
    pub names: Vec<String>,
}

impl std::fmt::Debug for Cert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cert").field("names", &self.names).finish()
    }
}

/// A listener's certificates: the first is the default, the others are found by name.
#[derive(Debug)]
pub struct CertStore {
    certs: Vec<Cert>,
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, usize>,
}

impl CertStore {
    /// `certs` must not be empty; a name claimed by two certificates goes to the first.
    pub fn new(certs: Vec<Cert>) -> CertStore {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, c) in certs.iter().enumerate() {
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(rest) => wildcard.entry(rest.to_string()).or_insert(i),
                    None => exact.entry(n.clone()).or_insert(i),
                };
            }
        }
        CertStore {
            certs,
            exact,
            wildcard,
        }
    }

    /// The certificate for the server name a client sent (nginx's order: exact name, then a
    /// wildcard covering one leading label, else the default). `name` is lower case.
    pub fn pick(&self, name: Option<&str>) -> Option<&Cert> {
        self.certs.get(self.index(name))
    }

    /// `pick`'s choice. A trailing dot is dropped (`example.com.` is `example.com`, as nginx
    /// has it); an empty first label (`.example.com`) is no match for `*.example.com`.
    fn index(&self, name: Option<&str>) -> usize {
        name.map(|n| n.strip_suffix('.').unwrap_or(n))
            .and_then(|n| {
                self.exact.get(n).or_else(|| {
                    let (first, parent) = n.split_once('.')?;
                    if first.is_empty() {
                        return None;
                    }
                    self.wildcard.get(parent)
                })
            })
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::CertStore;
    use std::collections::HashMap;

    /// The lookup tables of certificates 0 (`default.test`), 1 (`example.com`) and 2
    /// (`*.example.com`); `index` needs no certificate itself.
    fn store() -> CertStore {
        let map = |v: &[(&str, usize)]| -> HashMap<String, usize> {
            v.iter().map(|(n, i)| (n.to_string(), *i)).collect()
        };
        CertStore {
            certs: Vec::new(),
            exact: map(&[("default.test", 0), ("example.com", 1)]),
            wildcard: map(&[("example.com", 2)]),
        }
    }

    #[test]
    fn pick_exact_then_wildcard_then_default() {
        let s = store();
        assert_eq!(s.index(Some("example.com")), 1);
        assert_eq!(s.index(Some("www.example.com")), 2);
        assert_eq!(s.index(Some("a.b.example.com")), 0, "one label only");
        assert_eq!(s.index(Some("other.test")), 0);
        assert_eq!(s.index(None), 0);
    }

    #[test]
    fn pick_drops_a_trailing_dot() {
        let s = store();
        assert_eq!(s.index(Some("example.com.")), 1);
        assert_eq!(s.index(Some("www.example.com.")), 2);
    }

    #[test]
    fn pick_wants_a_first_label_for_a_wildcard() {
        let s = store();
        assert_eq!(s.index(Some(".example.com")), 0);
        assert_eq!(s.index(Some(".")), 0);
        assert_eq!(s.index(Some("")), 0);
    }
}
