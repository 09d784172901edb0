//! nginx-style time values: `360`, `360s`, `500ms`, `5m`, `1h`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written the nginx way; a bare number means seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeValue(pub Duration);

impl TimeValue {
    pub const fn from_secs(s: u64) -> TimeValue {
        TimeValue(Duration::from_secs(s))
    }
}

/// Parses `text` as nginx does for time values.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid time value \"{text}\" (expected e.g. 30, 30s, 500ms, 5m)"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => {
            return Err(format!(
                "invalid time unit in \"{text}\" (use ms, s, m or h)"
            ))
        }
    };
    Ok(d)
}

impl<'de> Deserialize<'de> for TimeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TimeValue, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TimeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a time value such as 30, 30s, 500ms or 5m")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TimeValue, E> {
                Ok(TimeValue(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TimeValue, E> {
                u64::try_from(v)
                    .map(|v| TimeValue(Duration::from_secs(v)))
                    .map_err(|_| E::custom(format!("time value {v} must not be negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TimeValue, E> {
                parse(v).map(TimeValue).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("360").unwrap(), Duration::from_secs(360));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert!(parse("5 parsecs").is_err());
        assert!(parse("").is_err());
    }
}
