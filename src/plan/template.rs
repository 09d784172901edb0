//! `proxy_set_header` values: literal text with nginx variables, compiled once per config.
//!
//! Rendering appends into a caller-owned buffer, so the request path allocates nothing but the
//! final header value.

use std::net::SocketAddr;

/// A variable the gateway can fill in from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    RemoteAddr,
    RemotePort,
    Host,
    Scheme,
    ProxyAddXForwardedFor,
    RequestUri,
    Uri,
    Args,
    /// `?` when the request has arguments, else empty.
    IsArgs,
    ServerPort,
    RequestMethod,
    /// `$http_NAME`: a request header, `_` standing for `-`.
    Http(String),
    /// `$cookie_NAME`: a cookie of the request.
    Cookie(String),
    /// `$arg_NAME`: a query-string argument.
    Arg(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Var(Var),
}

/// A compiled header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segs: Vec<Seg>,
}

/// What a template reads from the request.
pub trait Vars {
    fn client(&self) -> Option<SocketAddr>;
    fn header(&self, name: &str) -> Option<&[u8]>;
    fn host(&self) -> &[u8];
    fn path_and_query(&self) -> &str;
    fn method(&self) -> &str;
    fn server_port(&self) -> Option<u16>;
}

impl Template {
    /// Compiles `text`; the error names the unknown variable.
    pub fn compile(text: &str) -> Result<Template, String> {
        let mut segs = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            if i > 0 {
                segs.push(Seg::Lit(rest[..i].to_string()));
            }
            let after = &rest[i + 1..];
            let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
                let end = braced
                    .find('}')
                    .ok_or_else(|| format!("unclosed \"${{\" in \"{text}\""))?;
                (&braced[..end], &braced[end + 1..])
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            };
            segs.push(Seg::Var(var(name)?));
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
        use std::io::Write;
        for seg in &self.segs {
            match seg {
                Seg::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Seg::Var(var) => match var {
                    Var::RemoteAddr => {
                        if let Some(a) = v.client() {
                            let _ = write!(out, "{}", a.ip());
                        }
                    }
                    Var::RemotePort => {
                        if let Some(a) = v.client() {
                            let _ = write!(out, "{}", a.port());
                        }
                    }
                    Var::Host => out.extend_from_slice(v.host()),
                    Var::Scheme => out.extend_from_slice(b"http"),
                    Var::ProxyAddXForwardedFor => {
                        if let Some(prev) = v.header("x-forwarded-for") {
                            out.extend_from_slice(prev);
                            out.extend_from_slice(b", ");
                        }
                        if let Some(a) = v.client() {
                            let _ = write!(out, "{}", a.ip());
                        }
                    }
                    Var::RequestUri => out.extend_from_slice(v.path_and_query().as_bytes()),
                    Var::Uri => {
                        let pq = v.path_and_query();
                        out.extend_from_slice(pq.split('?').next().unwrap_or(pq).as_bytes());
                    }
                    Var::Args => {
                        if let Some((_, q)) = v.path_and_query().split_once('?') {
                            out.extend_from_slice(q.as_bytes());
                        }
                    }
                    Var::IsArgs => {
                        if v.path_and_query().contains('?') {
                            out.push(b'?');
                        }
                    }
                    Var::ServerPort => {
                        if let Some(p) = v.server_port() {
                            let _ = write!(out, "{p}");
                        }
                    }
                    Var::RequestMethod => out.extend_from_slice(v.method().as_bytes()),
                    Var::Http(name) => {
                        if let Some(h) = v.header(name) {
                            out.extend_from_slice(h);
                        }
                    }
                    Var::Cookie(name) => {
                        if let Some(c) = v.header("cookie").and_then(|c| cookie(c, name)) {
                            out.extend_from_slice(c);
                        }
                    }
                    Var::Arg(name) => {
                        let q = v.path_and_query().split_once('?').map_or("", |(_, q)| q);
                        let arg = q.split('&').find_map(|kv| {
                            let (k, val) = kv.split_once('=').unwrap_or((kv, ""));
                            (k == name).then_some(val)
                        });
                        if let Some(a) = arg {
                            out.extend_from_slice(a.as_bytes());
                        }
                    }
                },
            }
        }
    }
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|part| {
        let part = part.trim_ascii();
        let eq = part.iter().position(|&b| b == b'=')?;
        (&part[..eq] == name.as_bytes()).then(|| &part[eq + 1..])
    })
}

fn var(name: &str) -> Result<Var, String> {
    Ok(match name {
        "remote_addr" => Var::RemoteAddr,
        "remote_port" => Var::RemotePort,
        "host" => Var::Host,
        "scheme" => Var::Scheme,
        "proxy_add_x_forwarded_for" => Var::ProxyAddXForwardedFor,
        "request_uri" => Var::RequestUri,
        "uri" => Var::Uri,
        "args" | "query_string" => Var::Args,
        "is_args" => Var::IsArgs,
        "server_port" => Var::ServerPort,
        "request_method" => Var::RequestMethod,
        _ => {
            if let Some(h) = name.strip_prefix("http_").filter(|h| !h.is_empty()) {
                Var::Http(h.replace('_', "-").to_ascii_lowercase())
            } else if let Some(c) = name.strip_prefix("cookie_").filter(|c| !c.is_empty()) {
                Var::Cookie(c.to_string())
            } else if let Some(a) = name.strip_prefix("arg_").filter(|a| !a.is_empty()) {
                Var::Arg(a.to_string())
            } else {
                return Err(format!("unknown variable \"${name}\""));
            }
        }
    })
}

#[cfg(test)]
mod tests {
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
}
