//! Templates: literal text with nginx variables, compiled once per config. `proxy_set_header`
//! values, canary keys and `hash_key` render raw; access log formats ([`Template::compile_log`])
//! render each variable escaped as nginx escapes log values, `-` for one the request lacks.
//!
//! Rendering appends into a caller-owned buffer, so the request path allocates nothing but the
//! final header value.

use std::fmt;

pub use super::variable::{cookie, Tried, Var, Vars};
use crate::config::{Loaded, Pos, Problem};
use crate::logs::access;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Var(Var),
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segs: Vec<Seg>,
}

/// Why a template does not compile, and where in its text (a byte offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub at: usize,
    pub msg: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl From<TemplateError> for String {
    fn from(e: TemplateError) -> String {
        e.msg
    }
}

impl Template {
    /// Compiles `text` for a header value or a key; the error names the unknown variable.
    pub fn compile(text: &str) -> Result<Template, TemplateError> {
        Template::parse(text, false)
    }

    /// Compiles an access log format: every variable, log-only ones too.
    pub fn compile_log(text: &str) -> Result<Template, TemplateError> {
        Template::parse(text, true)
    }

    fn parse(text: &str, log: bool) -> Result<Template, TemplateError> {
        let mut segs = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            if i > 0 {
                segs.push(Seg::Lit(rest[..i].to_string()));
            }
            let at = text.len() - rest.len() + i;
            let after = &rest[i + 1..];
            let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
                let end = braced.find('}').ok_or_else(|| TemplateError {
                    at,
                    msg: format!("unclosed \"${{\" in \"{text}\""),
                })?;
                (&braced[..end], &braced[end + 1..])
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            };
            let var = Var::parse(name, log).map_err(|msg| TemplateError { at, msg })?;
            segs.push(Seg::Var(var));
            rest = tail;
        }
        if !rest.is_empty() {
            segs.push(Seg::Lit(rest.to_string()));
        }
        Ok(Template { segs })
    }

    /// Whether any part depends on the request (else every request renders the same text).
    pub fn has_vars(&self) -> bool {
        self.segs.iter().any(|s| matches!(s, Seg::Var(_)))
    }

    /// Appends the value for this request to `out`.
    pub fn render(&self, v: &dyn Vars, out: &mut Vec<u8>) {
        for seg in &self.segs {
            match seg {
                Seg::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Seg::Var(var) => {
                    var.write(v, out);
                }
            }
        }
    }

    /// Appends a log line's text (no newline): each variable escaped as nginx escapes log
    /// values (`"`, `\`, control and non-ASCII bytes as `\xHH`), `-` where the request has
    /// none.
    pub fn render_log(&self, v: &dyn Vars, out: &mut Vec<u8>) {
        for seg in &self.segs {
            match seg {
                Seg::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Seg::Var(var) => {
                    let start = out.len();
                    if !var.write(v, out) {
                        out.truncate(start);
                        out.push(b'-');
                    } else if out[start..].iter().any(|&c| access::needs_escape(c)) {
                        // Rare (a hostile header): only then is the value copied.
                        let raw = out.split_off(start);
                        access::escaped(out, &raw);
                    }
                }
            }
        }
    }
}

/// A problem with template `text`, the value at dotted `path` of `l`: placed at the variable
/// at fault when it can be found in the source, else at the value.
pub fn problem(l: &Loaded, path: &str, text: &str, e: TemplateError) -> Problem {
    let start = l.spans.value(path);
    let pos = locate(&l.text, start, text, e.at).unwrap_or(start);
    Problem::new(&l.name, pos, e.msg)
}

/// Where the variable at byte `at` of the parsed `text` stands in `src`, for a value that
/// starts at `start`. The token is searched for in the source (quoting and escapes may shift
/// it), counting its earlier occurrences in `text`.
fn locate(src: &str, start: Pos, text: &str, at: usize) -> Option<Pos> {
    let tail = text.get(at..)?;
    let len = 1 + tail[1..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '{' || c == '}'))
        .unwrap_or(tail.len() - 1);
    let token = &tail[..len];
    let nth = text[..at].matches(token).count();
    let line_start: usize = src
        .split_inclusive('\n')
        .take(start.line.saturating_sub(1))
        .map(str::len)
        .sum();
    let from = line_start
        + src[line_start..]
            .char_indices()
            .nth(start.col.saturating_sub(1))
            .map_or(0, |(i, _)| i);
    let (found, _) = src.get(from..)?.match_indices(token).nth(nth)?;
    let abs = from + found;
    let before = &src[..abs];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    Some(Pos { line, col })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;

    struct R;
    impl Vars for R {
        fn client(&self) -> Option<SocketAddr> {
            "10.1.2.3:5555".parse().ok()
        }
        fn header(&self, name: &str) -> Option<&[u8]> {
            match name {
                "x-forwarded-for" => Some(b"1.1.1.1"),
                "user-agent" => Some(b"curl"),
                "cookie" => Some(b"a=1; uid=u42; z=9"),
                _ => None,
            }
        }
        fn host(&self) -> &[u8] {
            b"example.com"
        }
        fn path_and_query(&self) -> &str {
            "/a/b?x=1"
        }
        fn method(&self) -> &str {
            "GET"
        }
        fn server_port(&self) -> Option<u16> {
            Some(10001)
        }
    }

    fn render(t: &str) -> String {
        let mut out = Vec::new();
        Template::compile(t).unwrap().render(&R, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn variables() {
        assert_eq!(render("$remote_addr"), "10.1.2.3");
        assert_eq!(render("$proxy_add_x_forwarded_for"), "1.1.1.1, 10.1.2.3");
        assert_eq!(
            render("${scheme}://$host$request_uri"),
            "http://example.com/a/b?x=1"
        );
        assert_eq!(
            render("ua=$http_user_agent;u=$uri;a=$args"),
            "ua=curl;u=/a/b;a=x=1"
        );
        assert_eq!(render("plain"), "plain");
        assert_eq!(
            render("$cookie_uid|$arg_x|$arg_none|$cookie_none"),
            "u42|1||"
        );
        assert!(Template::compile("$nope").is_err());
        assert!(Template::compile("${host").is_err());
    }

    /// A finished request with two upstream attempts.
    struct Done;
    impl Vars for Done {
        fn client(&self) -> Option<SocketAddr> {
            R.client()
        }
        fn header(&self, name: &str) -> Option<&[u8]> {
            match name {
                "x-evil" => Some(b"a\"b\\c\x01\xff"),
                _ => R.header(name),
            }
        }
        fn host(&self) -> &[u8] {
            R.host()
        }
        fn path_and_query(&self) -> &str {
            R.path_and_query()
        }
        fn method(&self) -> &str {
            R.method()
        }
        fn server_port(&self) -> Option<u16> {
            R.server_port()
        }
        fn request_id(&self) -> Option<u128> {
            Some(0xabc)
        }
        fn status(&self) -> Option<u16> {
            Some(200)
        }
        fn request_time(&self) -> Option<Duration> {
            Some(Duration::from_micros(12_345))
        }
        fn canary_side(&self) -> Option<&'static str> {
            Some("canary")
        }
        fn upstreams(&self, each: &mut dyn FnMut(&Tried)) {
            each(&Tried {
                addr: "127.0.0.1:1".parse().unwrap(),
                unix: None,
                status: 502,
                took: Duration::from_micros(1_900),
                connect: Some(Duration::from_micros(300)),
                header: Some(Duration::from_micros(1_800)),
            });
            each(&Tried {
                addr: "127.0.0.1:2".parse().unwrap(),
                unix: None,
                status: 200,
                took: Duration::from_secs(2),
                connect: None,
                header: None,
            });
        }
    }

    fn log(t: &str, v: &dyn Vars) -> String {
        let mut out = Vec::new();
        Template::compile_log(t).unwrap().render_log(v, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn log_formats_render_nginx_values() {
        assert_eq!(
            log(
                "$upstream_addr|$upstream_status|$upstream_response_time",
                &Done
            ),
            "127.0.0.1:1, 127.0.0.1:2|502, 200|0.001, 2.000"
        );
        assert_eq!(
            log("$upstream_connect_time|$upstream_header_time|$pipe", &Done),
            "0.000, -|0.001, -|."
        );
        assert_eq!(
            log("$request_time $canary_side $status $request_id", &Done),
            "0.012 canary 200 00000000000000000000000000000abc"
        );
        // Values are escaped as nginx escapes them; literal text is not.
        assert_eq!(
            log("\"$http_x_evil\"", &Done),
            "\"a\\x22b\\x5Cc\\x01\\xFF\""
        );
        // What the request lacks is nginx's "-"; a plain request knows no upstream.
        assert_eq!(
            log(
                "$http_referer $cookie_none $upstream_addr $canary_side $status",
                &R
            ),
            "- - - - 000"
        );
        assert_eq!(log("$cookie_uid $arg_x", &R), "u42 1");
        let iso = log("$time_iso8601", &R);
        assert!(iso.len() == 25 && iso.as_bytes()[10] == b'T', "{iso}");
        let msec = log("$msec", &R);
        assert!(
            msec.len() > 11 && msec.as_bytes()[msec.len() - 4] == b'.',
            "{msec}"
        );
    }

    #[test]
    fn log_only_variables_are_refused_in_headers_and_errors_say_where() {
        let e = Template::compile("x-$status").unwrap_err();
        assert_eq!(e.at, 2);
        assert!(e.msg.contains("access log formats only"), "{}", e.msg);
        let e = Template::compile_log("$remote_addr $nope").unwrap_err();
        assert_eq!((e.at, e.msg.as_str()), (13, "unknown variable \"$nope\""));
        // $request_id is shared by headers and logs.
        let mut out = Vec::new();
        Template::compile("$request_id")
            .unwrap()
            .render(&Done, &mut out);
        assert_eq!(out.len(), 32);
    }
}
