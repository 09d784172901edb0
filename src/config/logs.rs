//! `access_log` as written: a path, `off`, or `{ path, format }` naming a `log_formats` entry.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A server's `access_log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    /// A file path, or `off`.
    pub path: String,
    /// A name from `log_formats`, or `combined` (the default).
    pub format: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    path: String,
    #[serde(default)]
    format: Option<String>,
}

impl<'de> Deserialize<'de> for AccessLog {
    /// A string or a mapping; written by hand so that a mistake in the mapping form gets
    /// serde's precise message (an untagged enum would only say "did not match any variant").
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AccessLog;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a path, `off`, or { path, format }")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<AccessLog, E> {
                Ok(AccessLog {
                    path: s.to_string(),
                    format: None,
                })
            }

            fn visit_map<M: MapAccess<'de>>(self, m: M) -> Result<AccessLog, M::Error> {
                let s = Spec::deserialize(de::value::MapAccessDeserializer::new(m))?;
                Ok(AccessLog {
                    path: s.path,
                    format: s.format,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl AccessLog {
    /// The file to write, `None` for `off`.
    pub fn file(&self) -> Option<&str> {
        (self.path != "off").then_some(self.path.as_str())
    }
}
