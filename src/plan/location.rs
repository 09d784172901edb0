//! nginx's `location` matching: what a `match:` says, and which location a path picks.
//!
//! The order is nginx's (`ngx_http_core_find_location`): an exact `= /x` wins outright; else the
//! longest plain prefix is remembered, and if it is `^~` it wins; else the regex locations are
//! tried in config order (`~` case-sensitive, `~*` not) and the first that matches wins; else the
//! remembered prefix. Regexes are compiled once here, when the config is loaded.

use regex::bytes::{Regex, RegexBuilder};

use super::{LocationPlan, ServerPlan};

#[derive(Debug, Clone)]
pub enum Match {
    Exact(String),
    /// `no_regex`: written `^~ /x`, which stops the regex search when it is the longest prefix.
    Prefix {
        path: String,
        no_regex: bool,
    },
    Regex {
        re: Regex,
        /// As written after `~`/`~*` (for messages and duplicates).
        source: String,
        caseless: bool,
    },
}

impl Match {
    /// nginx's own spelling, used to find duplicates (`/x` and `^~ /x` are the same place).
    pub fn key(&self) -> String {
        match self {
            Match::Exact(p) => format!("= {p}"),
            Match::Prefix { path, .. } => path.clone(),
            Match::Regex {
                source, caseless, ..
            } => format!("{} {source}", if *caseless { "~*" } else { "~" }),
        }
    }
}

/// Parses `/prefix`, `= /exact`, `^~ /prefix`, `~ REGEX`, `~* REGEX`; like nginx, the modifier
/// may be glued to its argument (`~/media/`).
pub fn parse_match(text: &str) -> Result<Match, String> {
    let t = text.trim();
    for (m, rest) in [
        ("^~", t.strip_prefix("^~")),
        ("~*", t.strip_prefix("~*")),
        ("~", t.strip_prefix('~')),
        ("=", t.strip_prefix('=')),
    ] {
        let Some(rest) = rest.map(str::trim_start) else {
            continue;
        };
        return match m {
            "^~" | "=" if !rest.starts_with('/') => Err(format!(
                "invalid location \"{text}\": the path after \"{m}\" must start with \"/\""
            )),
            "^~" => Ok(Match::Prefix {
                path: rest.to_string(),
                no_regex: true,
            }),
            "=" => Ok(Match::Exact(rest.to_string())),
            _ if rest.is_empty() => Err(format!("invalid location \"{text}\": empty regex")),
            _ => {
                let caseless = m == "~*";
                RegexBuilder::new(rest)
                    .case_insensitive(caseless)
                    .unicode(false)
                    .build()
                    .map(|re| Match::Regex {
                        re,
                        source: rest.to_string(),
                        caseless,
                    })
                    .map_err(|e| {
                        // regex's message spans lines (the pattern, a caret, the error).
                        let e = e.to_string();
                        let why = e
                            .lines()
                            .last()
                            .unwrap_or_default()
                            .trim_start_matches("error: ");
                        format!("invalid regex in location \"{text}\": {why}")
                    })
            }
        };
    }
    if t.starts_with('/') {
        return Ok(Match::Prefix {
            path: t.to_string(),
            no_regex: false,
        });
    }
    Err(format!(
        "invalid location \"{text}\" (expected \"/prefix\", \"= /exact\", \"^~ /prefix\", \"~ regex\" or \"~* regex\")"
    ))
}

/// The server's locations by kind, as indexes into `ServerPlan::locations` (config order).
#[derive(Debug, Default)]
pub struct Router {
    exact: Vec<usize>,
    /// Longest first.
    prefixes: Vec<usize>,
    /// Config order.
    regexes: Vec<usize>,
}

impl Router {
    pub fn new(locations: &[LocationPlan]) -> Router {
        let mut r = Router::default();
        for (i, l) in locations.iter().enumerate() {
            match &l.matcher {
                Match::Exact(_) => r.exact.push(i),
                Match::Prefix { .. } => r.prefixes.push(i),
                Match::Regex { .. } => r.regexes.push(i),
            }
        }
        r.prefixes.sort_by_key(|&i| match &locations[i].matcher {
            Match::Prefix { path, .. } => usize::MAX - path.len(),
            _ => usize::MAX,
        });
        r
    }
}

impl ServerPlan {
    /// The location for a normalised path (see `proxy::uri`), or `None` (404).
    pub fn find(&self, path: &[u8]) -> Option<usize> {
        let locs = &self.locations;
        let r = &self.router;
        for &i in &r.exact {
            if matches!(&locs[i].matcher, Match::Exact(p) if p.as_bytes() == path) {
                return Some(i);
            }
        }
        let prefix = r.prefixes.iter().copied().find(|&i| {
            matches!(&locs[i].matcher, Match::Prefix { path: p, .. } if path.starts_with(p.as_bytes()))
        });
        if let Some(i) = prefix {
            if matches!(&locs[i].matcher, Match::Prefix { no_regex: true, .. }) {
                return Some(i);
            }
        }
        for &i in &r.regexes {
            if matches!(&locs[i].matcher, Match::Regex { re, .. } if re.is_match(path)) {
                return Some(i);
            }
        }
        prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_modifier() {
        assert!(matches!(parse_match("= /x"), Ok(Match::Exact(p)) if p == "/x"));
        assert!(matches!(parse_match("=/x"), Ok(Match::Exact(p)) if p == "/x"));
        assert!(
            matches!(parse_match("^~ /static/"), Ok(Match::Prefix { path, no_regex: true }) if path == "/static/")
        );
        assert!(
            matches!(parse_match("~/media/"), Ok(Match::Regex { source, caseless: false, .. }) if source == "/media/")
        );
        assert!(matches!(
            parse_match("~* \\.(png|JPG)$"),
            Ok(Match::Regex { caseless: true, .. })
        ));
        assert!(parse_match("~ (").unwrap_err().contains("invalid regex"));
        assert!(parse_match("^~ x").is_err());
        assert!(parse_match("media").is_err());
        assert!(parse_match("~").is_err());
        assert_eq!(
            parse_match("^~ /a").unwrap().key(),
            parse_match("/a").unwrap().key()
        );
    }
}
