//! A server's `listen` entries as written: `"ADDR"`, or `{ addr, tls, http2 }` for a TLS
//! listener (nginx's `listen 443 ssl` with `ssl_certificate`, `ssl_protocols`, `http2`).

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// One entry of `servers.NAME.listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub addr: String,
    /// Present for a TLS listener.
    pub tls: Option<Tls>,
    /// ALPN `h2` on a TLS listener (default on); `false` keeps clients on HTTP/1.1.
    pub http2: Option<bool>,
}

/// `tls:` of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The default certificate (PEM, leaf first, then its chain) and its key.
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    /// More certificates, picked by the name the client asks for (SNI).
    #[serde(default)]
    pub certificates: Vec<CertPair>,
    /// `TLSv1.2`, `TLSv1.3` (default both; nginx's `ssl_protocols`).
    #[serde(default)]
    pub protocols: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub cert: String,
    pub key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    addr: String,
    #[serde(default)]
    tls: Option<Tls>,
    #[serde(default)]
    http2: Option<bool>,
}

impl<'de> Deserialize<'de> for Listen {
    /// A string or a mapping, by hand so that a mistake in the mapping gets serde's precise
    /// message (an untagged enum only says "did not match any variant").
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Listen;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address, or { addr, tls: { cert, key }, http2 }")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Listen, E> {
                Ok(Listen::plain(s))
            }

            fn visit_u64<E: de::Error>(self, p: u64) -> Result<Listen, E> {
                Ok(Listen::plain(&p.to_string()))
            }

            fn visit_map<M: MapAccess<'de>>(self, m: M) -> Result<Listen, M::Error> {
                let s = Spec::deserialize(de::value::MapAccessDeserializer::new(m))?;
                Ok(Listen {
                    addr: s.addr,
                    tls: s.tls,
                    http2: s.http2,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl Listen {
    pub fn plain(addr: &str) -> Listen {
        Listen {
            addr: addr.to_string(),
            tls: None,
            http2: None,
        }
    }
}

/// So that `listen == ["0.0.0.0:80"]` reads naturally in tests.
impl PartialEq<&str> for Listen {
    fn eq(&self, other: &&str) -> bool {
        self.tls.is_none() && self.http2.is_none() && self.addr == *other
    }
}
