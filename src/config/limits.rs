//! Values of the per-server client limits, written as nginx writes them: sizes (`1m`, `8k`,
//! `512`) and `large_client_header_buffers: "4 8k"`.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Largest size accepted (1 TiB): larger values are typos, and sums of them must not overflow.
pub const MAX_SIZE: u64 = 1 << 40;

/// A byte count; a bare number means bytes, `k`/`m`/`g` multiply by 1024 as in nginx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// Parses `text` as nginx parses sizes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let mult: u64 = match unit {
        "" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        _ => {
            return Err(format!(
                "invalid size \"{text}\" (expected e.g. 512, 8k, 1m)"
            ))
        }
    };
    if num.is_empty() {
        return Err(format!(
            "invalid size \"{text}\" (expected e.g. 512, 8k, 1m)"
        ));
    }
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n <= MAX_SIZE)
        .ok_or_else(|| format!("size \"{text}\" is too large (at most 1024g)"))
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 512, 8k or 1m")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                parse_size(&v.to_string()).map(Size).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("size {v} must not be negative"))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// nginx's `large_client_header_buffers NUMBER SIZE`: the request line and each header line
/// must fit in SIZE, the whole head in NUMBER × SIZE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderBuffers {
    pub number: u64,
    pub size: u64,
}

/// Parses `"4 8k"`.
pub fn parse_buffers(text: &str) -> Result<HeaderBuffers, String> {
    let bad = || format!("invalid buffers \"{text}\" (expected NUMBER SIZE, e.g. \"4 8k\")");
    let mut parts = text.split_whitespace();
    let (Some(n), Some(s), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let number: u64 = n.parse().map_err(|_| bad())?;
    let size = parse_size(s)?;
    if number == 0 || size == 0 {
        return Err(format!(
            "buffers \"{text}\": number and size must be above 0"
        ));
    }
    if number > 1024 {
        return Err(format!("buffers \"{text}\": at most 1024 buffers"));
    }
    Ok(HeaderBuffers { number, size })
}

impl<'de> Deserialize<'de> for HeaderBuffers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HeaderBuffers, D::Error> {
        let s = String::deserialize(d)?;
        parse_buffers(&s).map_err(de::Error::custom)
    }
}

/// `real_ip`: which peers may say who the client is (nginx's realip module).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealIp {
    /// Trusted proxies: addresses or CIDR blocks (`set_real_ip_from`).
    pub from: Vec<String>,
    /// The header naming the client (`real_ip_header`; nginx's default `X-Real-IP`).
    #[serde(default = "default_real_ip_header")]
    pub header: String,
    /// Skip trusted addresses from the right of the header's list (`real_ip_recursive`).
    #[serde(default)]
    pub recursive: bool,
}

fn default_real_ip_header() -> String {
    "X-Real-IP".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("8k"), Ok(8192));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("1x").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("1025g").is_err());
        assert!(parse_size("99999999999999999999999").is_err());
    }

    #[test]
    fn buffers() {
        assert_eq!(
            parse_buffers("4 8k"),
            Ok(HeaderBuffers {
                number: 4,
                size: 8192
            })
        );
        for bad in ["4", "4 8k 1", "0 8k", "4 0", "x 8k", "4 8q", "2000 1k"] {
            assert!(parse_buffers(bad).is_err(), "{bad}");
        }
    }
}
