//! The request path as nginx routes it: percent-decoded once, `//` merged, `.` and `..`
//! segments resolved (`ngx_http_parse_complex_uri` with `merge_slashes on`).
//!
//! Only routing sees this form; the request goes upstream as the client sent it, as nginx's
//! `proxy_pass` without a URI part does. Paths that need none of it (nearly all) are borrowed.

use std::borrow::Cow;

/// Why a path cannot be routed; nginx answers both with 400.
#[derive(Debug, PartialEq, Eq)]
pub enum BadUri {
    /// `%` not followed by two hex digits, or `%00`.
    Encoding,
    /// A `..` that climbs above the root.
    AboveRoot,
}

/// `path` (without the query) normalised for location matching.
pub fn normalize(path: &[u8]) -> Result<Cow<'_, [u8]>, BadUri> {
    if !needs_work(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path)?;
    Ok(Cow::Owned(resolve(&decoded)?))
}

fn needs_work(p: &[u8]) -> bool {
    p.first() != Some(&b'/') || p.contains(&b'%') || p.windows(2).any(|w| w == b"//" || w == b"/.")
}

fn decode(p: &[u8]) -> Result<Vec<u8>, BadUri> {
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        if p[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            let (Some(h), Some(l)) = (
                p.get(i + 1).and_then(|&b| hex(b)),
                p.get(i + 2).and_then(|&b| hex(b)),
            ) else {
                return Err(BadUri::Encoding);
            };
            let b = (h * 16 + l) as u8;
            if b == 0 {
                return Err(BadUri::Encoding);
            }
            out.push(b);
            i += 3;
        } else {
            out.push(p[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Merges slashes and resolves dot segments of a decoded path.
fn resolve(p: &[u8]) -> Result<Vec<u8>, BadUri> {
    let mut segs: Vec<&[u8]> = Vec::new();
    let parts: Vec<&[u8]> = p.split(|&b| b == b'/').collect();
    let last = parts.len().saturating_sub(1);
    let mut trailing = false;
    for (i, s) in parts.iter().enumerate() {
        match *s {
            b"" => {
                trailing = i == last;
            }
            b"." => trailing = true,
            b".." => {
                if segs.pop().is_none() {
                    return Err(BadUri::AboveRoot);
                }
                trailing = true;
            }
            s => {
                segs.push(s);
                trailing = false;
            }
        }
    }
    let mut out = Vec::with_capacity(p.len() + 1);
    for s in &segs {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if trailing || segs.is_empty() {
        out.push(b'/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, BadUri> {
        normalize(p.as_bytes()).map(|c| String::from_utf8_lossy(&c).into_owned())
    }

    #[test]
    fn as_nginx_routes_it() {
        assert_eq!(n("/media/a.png").unwrap(), "/media/a.png");
        assert!(matches!(normalize(b"/media/a"), Ok(Cow::Borrowed(_))));
        assert_eq!(n("/x/../media/a").unwrap(), "/media/a");
        assert_eq!(n("/%6Dedia/a").unwrap(), "/media/a");
        assert_eq!(n("//media///a").unwrap(), "/media/a");
        assert_eq!(n("/a/./b/").unwrap(), "/a/b/");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("/%2e%2e/x"), Err(BadUri::AboveRoot));
        assert_eq!(n("/a/%2E%2E/b").unwrap(), "/b");
        assert_eq!(n("/a%2Fb").unwrap(), "/a/b");
        assert_eq!(n("/.."), Err(BadUri::AboveRoot));
        assert_eq!(n("/a%zz"), Err(BadUri::Encoding));
        assert_eq!(n("/a%00"), Err(BadUri::Encoding));
        assert_eq!(n("/a%2"), Err(BadUri::Encoding));
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("/.hidden").unwrap(), "/.hidden");
        assert_eq!(n("/a/..b").unwrap(), "/a/..b");
    }
}
