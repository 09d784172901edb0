//! nginx-style time values: `360`, `360s`, `500ms`, `5m`, `1h`, `7d`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Longest time value accepted: a year. Longer values are surely typos, and values near
/// `u64::MAX` seconds would overflow `Instant + Duration` (a panic) wherever they are used.
pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration written the nginx way; a bare number means seconds. Never above [`MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeValue(pub Duration);

impl TimeValue {
    pub const fn from_secs(s: u64) -> TimeValue {
        TimeValue(Duration::from_secs(s))
    }
}

fn too_large(text: &str) -> String {
    format!("time value \"{text}\" is too large (at most 365d)")
}

/// Parses `text` as nginx does for time values.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    if num.is_empty() {
        return Err(format!(
            "invalid time value \"{text}\" (expected e.g. 30, 30s, 500ms, 5m)"
        ));
    }
    // More digits than a u64 holds is "too large", not "invalid".
    let n: u64 = num.parse().map_err(|_| too_large(text))?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "invalid time unit in \"{text}\" (use ms, s, m, h or d)"
            ))
        }
    };
    let d = n
        .checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .filter(|d| *d <= MAX)
        .ok_or_else(|| too_large(text))?;
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
                parse(&v.to_string()).map(TimeValue).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TimeValue, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("time value {v} must not be negative"))),
                }
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
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert!(parse("5 parsecs").is_err());
        assert!(parse("").is_err());
        assert!(parse("s").is_err());
    }

    #[test]
    fn at_most_a_year() {
        assert_eq!(parse("365d").unwrap(), MAX);
        assert_eq!(parse("31536000").unwrap(), MAX);
        for big in [
            "366d",
            "31536001",
            "8761h",
            "18446744073709551615",
            "18446744073709551616",
            "307445734561825861m",
            "99999999999999999999999d",
        ] {
            assert_eq!(
                parse(big),
                Err(format!("time value \"{big}\" is too large (at most 365d)")),
                "{big}"
            );
        }
    }
}
