//! nginx variables: their names, what each reads from a request ([`Vars`]), and their text.
//!
//! One set for every template, so that `proxy_set_header`, canary keys, `hash_key` and access
//! log formats agree on what `$request_id` or `$http_x_user` means. Variables that exist only
//! once the response is sent (`$status`, `$upstream_addr`, ...) are for log formats alone.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use crate::logs::access::RequestLine;
use crate::logs::{clock, text};

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
    /// `$request_id`: 32 hex digits, random per request.
    RequestId,
    /// `$http_NAME`: a request header, `_` standing for `-`.
    Http(String),
    /// `$cookie_NAME`: a cookie of the request.
    Cookie(String),
    /// `$arg_NAME`: a query-string argument.
    Arg(String),
    // Known once the response is sent: access log formats only.
    RemoteUser,
    TimeLocal,
    TimeIso8601,
    Msec,
    Request,
    Status,
    BodyBytesSent,
    BytesSent,
    RequestTime,
    UpstreamAddr,
    UpstreamStatus,
    UpstreamResponseTime,
    UpstreamConnectTime,
    UpstreamHeaderTime,
    CanarySide,
    /// `$sent_http_NAME`: a response header sent to the client.
    SentHttp(String),
    ServerProtocol,
    /// `.` (graygate does not pipeline responses).
    Pipe,
}

/// One upstream attempt of a request, for the `$upstream_*` variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tried<'a> {
    pub addr: SocketAddr,
    /// A server on a unix socket (`addr` is then a placeholder).
    pub unix: Option<&'a std::path::Path>,
    /// The upstream's status, or nginx's 502/504 for an attempt that got none; 0: unknown.
    pub status: u16,
    /// From connecting to the response's last byte (nginx's `$upstream_response_time`).
    pub took: Duration,
    /// Until the connection was made (or reused); `None` if it never was.
    pub connect: Option<Duration>,
    /// Until the response header arrived; `None` if it never did.
    pub header: Option<Duration>,
}

/// What a template reads from the request. The methods with a default are known only in some
/// places (the access log, or a request that reached the proxy); `None` prints as nginx's `-`.
pub trait Vars {
    fn client(&self) -> Option<SocketAddr>;
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// The value of cookie `name`: nginx looks in every `Cookie` header of the request, not
    /// only the first (a client may send several).
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.header("cookie").and_then(|c| cookie(c, name))
    }
    fn host(&self) -> &[u8];
    fn path_and_query(&self) -> &str;
    fn method(&self) -> &str;
    fn server_port(&self) -> Option<u16>;
    /// Whether the request came over TLS (`$scheme`, `$https`).
    fn https(&self) -> bool {
        false
    }
    fn request_id(&self) -> Option<u128> {
        None
    }
    /// The request line as the client sent it.
    fn request_line(&self) -> Option<RequestLine<'_>> {
        None
    }
    fn status(&self) -> Option<u16> {
        None
    }
    fn body_bytes_sent(&self) -> Option<usize> {
        None
    }
    /// Response header and body bytes sent to the client.
    fn bytes_sent(&self) -> Option<usize> {
        None
    }
    fn request_time(&self) -> Option<Duration> {
        None
    }
    /// `stable` or `canary` when a canary chose the pool.
    fn canary_side(&self) -> Option<&'static str> {
        None
    }
    /// Calls `each` for every upstream attempt, in order.
    fn upstreams(&self, _each: &mut dyn FnMut(&Tried)) {}
    /// A response header as sent to the client (`name` in lower case).
    fn sent_header(&self, _name: &str) -> Option<&[u8]> {
        None
    }
}

impl Var {
    /// The variable `$name`; `log` admits those known only once the response is sent.
    pub fn parse(name: &str, log: bool) -> Result<Var, String> {
        let v = match name {
            "remote_addr" => Var::RemoteAddr,
            "remote_port" => Var::RemotePort,
            "host" => Var::Host,
            "scheme" => Var::Scheme,
            "proxy_add_x_forwarded_for" => Var::ProxyAddXForwardedFor,
            "request_uri" => Var::RequestUri,
            "uri" | "document_uri" => Var::Uri,
            // nginx's names for two request headers (`uwsgi_params` uses them).
            "content_type" => Var::Http("content-type".into()),
            "content_length" => Var::Http("content-length".into()),
            "args" | "query_string" => Var::Args,
            "is_args" => Var::IsArgs,
            "server_port" => Var::ServerPort,
            "request_method" => Var::RequestMethod,
            "request_id" => Var::RequestId,
            "remote_user" => Var::RemoteUser,
            "time_local" => Var::TimeLocal,
            "time_iso8601" => Var::TimeIso8601,
            "msec" => Var::Msec,
            "request" => Var::Request,
            "status" => Var::Status,
            "body_bytes_sent" => Var::BodyBytesSent,
            "bytes_sent" => Var::BytesSent,
            "request_time" => Var::RequestTime,
            "upstream_addr" => Var::UpstreamAddr,
            "upstream_status" => Var::UpstreamStatus,
            "upstream_response_time" => Var::UpstreamResponseTime,
            "upstream_connect_time" => Var::UpstreamConnectTime,
            "upstream_header_time" => Var::UpstreamHeaderTime,
            "canary_side" => Var::CanarySide,
            "server_protocol" => Var::ServerProtocol,
            "pipe" => Var::Pipe,
            _ => {
                if let Some(h) = name.strip_prefix("http_").filter(|h| !h.is_empty()) {
                    Var::Http(h.replace('_', "-").to_ascii_lowercase())
                } else if let Some(c) = name.strip_prefix("cookie_").filter(|c| !c.is_empty()) {
                    Var::Cookie(c.to_string())
                } else if let Some(h) = name.strip_prefix("sent_http_").filter(|h| !h.is_empty()) {
                    Var::SentHttp(h.replace('_', "-").to_ascii_lowercase())
                } else if let Some(a) = name.strip_prefix("arg_").filter(|a| !a.is_empty()) {
                    Var::Arg(a.to_string())
                } else {
                    return Err(format!("unknown variable \"${name}\""));
                }
            }
        };
        if !log && v.log_only() {
            return Err(format!(
                "variable \"${name}\" is known only once the response is sent (access log formats only)"
            ));
        }
        Ok(v)
    }

    fn log_only(&self) -> bool {
        matches!(
            self,
            Var::RemoteUser
                | Var::TimeLocal
                | Var::TimeIso8601
                | Var::Msec
                | Var::Request
                | Var::Status
                | Var::BodyBytesSent
                | Var::BytesSent
                | Var::RequestTime
                | Var::UpstreamAddr
                | Var::UpstreamStatus
                | Var::UpstreamResponseTime
                | Var::UpstreamConnectTime
                | Var::UpstreamHeaderTime
                | Var::CanarySide
                | Var::SentHttp(_)
        )
    }

    /// Appends this variable's value for `v`; false if the request has none (nginx's "not
    /// found", which a log line shows as `-`).
    pub fn write(&self, v: &dyn Vars, out: &mut Vec<u8>) -> bool {
        match self {
            Var::RemoteAddr => v.client().map(|a| text::ip(out, a.ip())).is_some(),
            Var::RemotePort => v
                .client()
                .map(|a| text::uint(out, u64::from(a.port())))
                .is_some(),
            Var::Host => {
                // nginx's `$host`: the name without its port, in lower case.
                let start = out.len();
                out.extend_from_slice(host_name(v.host()));
                out[start..].make_ascii_lowercase();
                true
            }
            Var::Scheme => {
                out.extend_from_slice(if v.https() { b"https" } else { b"http" });
                true
            }
            Var::ProxyAddXForwardedFor => {
                if let Some(prev) = v.header("x-forwarded-for") {
                    out.extend_from_slice(prev);
                    out.extend_from_slice(b", ");
                }
                if let Some(a) = v.client() {
                    text::ip(out, a.ip());
                }
                true
            }
            Var::RequestUri => {
                out.extend_from_slice(v.path_and_query().as_bytes());
                true
            }
            Var::Uri => {
                let pq = v.path_and_query();
                out.extend_from_slice(pq.split('?').next().unwrap_or(pq).as_bytes());
                true
            }
            Var::Args => v
                .path_and_query()
                .split_once('?')
                .map(|(_, q)| out.extend_from_slice(q.as_bytes()))
                .is_some(),
            // nginx: empty, not "-", when there are none.
            Var::IsArgs => {
                if v.path_and_query().contains('?') {
                    out.push(b'?');
                }
                true
            }
            Var::ServerPort => v
                .server_port()
                .map(|p| text::uint(out, u64::from(p)))
                .is_some(),
            Var::RequestMethod => {
                out.extend_from_slice(v.method().as_bytes());
                true
            }
            Var::RequestId => v.request_id().map(|id| text::hex128(out, id)).is_some(),
            Var::Http(name) => v.header(name).map(|h| out.extend_from_slice(h)).is_some(),
            Var::Cookie(name) => v.cookie(name).map(|c| out.extend_from_slice(c)).is_some(),
            Var::Arg(name) => {
                let q = v.path_and_query().split_once('?').map_or("", |(_, q)| q);
                q.split('&')
                    .find_map(|kv| {
                        let (k, val) = kv.split_once('=').unwrap_or((kv, ""));
                        (k == name).then_some(val)
                    })
                    .map(|a| out.extend_from_slice(a.as_bytes()))
                    .is_some()
            }
            Var::RemoteUser => {
                let user = v
                    .header("authorization")
                    .and_then(crate::logs::access::remote_user);
                match user {
                    Some(u) if !u.is_empty() => {
                        out.extend_from_slice(&u);
                        true
                    }
                    _ => false,
                }
            }
            Var::TimeLocal => {
                clock::time_local(out);
                true
            }
            Var::TimeIso8601 => {
                clock::time_iso8601(out);
                true
            }
            Var::Msec => {
                clock::msec(out);
                true
            }
            Var::Request => v.request_line().map(|r| r.write(out)).is_some(),
            // nginx: "000" for a request that got no status.
            Var::Status => {
                text::uint3(out, u64::from(v.status().unwrap_or(0)));
                true
            }
            Var::BodyBytesSent => v
                .body_bytes_sent()
                .map(|n| text::uint(out, n as u64))
                .is_some(),
            Var::BytesSent => v.bytes_sent().map(|n| text::uint(out, n as u64)).is_some(),
            Var::RequestTime => v.request_time().map(|d| seconds(out, d)).is_some(),
            Var::UpstreamAddr => list(v, out, |out, t| {
                let _ = match t.unix {
                    Some(p) => write!(out, "unix:{}", p.display()),
                    None => write!(out, "{}", t.addr),
                };
            }),
            Var::UpstreamStatus => list(v, out, |out, t| match t.status {
                0 => out.push(b'-'),
                s => text::uint(out, u64::from(s)),
            }),
            Var::UpstreamResponseTime => list(v, out, |out, t| seconds(out, t.took)),
            Var::UpstreamConnectTime => list(v, out, |out, t| match t.connect {
                Some(d) => seconds(out, d),
                None => out.push(b'-'),
            }),
            Var::UpstreamHeaderTime => list(v, out, |out, t| match t.header {
                Some(d) => seconds(out, d),
                None => out.push(b'-'),
            }),
            Var::CanarySide => v
                .canary_side()
                .map(|s| out.extend_from_slice(s.as_bytes()))
                .is_some(),
            Var::SentHttp(name) => v
                .sent_header(name)
                .map(|h| out.extend_from_slice(h))
                .is_some(),
            Var::ServerProtocol => v
                .request_line()
                .map(|r| {
                    out.extend_from_slice(crate::logs::access::version_str(r.version).as_bytes())
                })
                .is_some(),
            Var::Pipe => {
                out.push(b'.');
                true
            }
        }
    }
}

/// nginx's time values: seconds with millisecond resolution, `0.002`.
fn seconds(out: &mut Vec<u8>, d: Duration) {
    let _ = write!(out, "{}.{:03}", d.as_secs(), d.subsec_millis());
}

/// One entry per upstream attempt, separated by `, ` as nginx does; false if there was none.
fn list(v: &dyn Vars, out: &mut Vec<u8>, one: impl Fn(&mut Vec<u8>, &Tried)) -> bool {
    let mut any = false;
    v.upstreams(&mut |t| {
        if any {
            out.extend_from_slice(b", ");
        }
        one(out, t);
        any = true;
    });
    any
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|part| {
        let part = part.trim_ascii();
        let eq = part.iter().position(|&b| b == b'=')?;
        (&part[..eq] == name.as_bytes()).then(|| &part[eq + 1..])
    })
}

/// The host name of a `Host` value: `[v6]:port` -> `[v6]`, `name:port` -> `name`.
fn host_name(h: &[u8]) -> &[u8] {
    if h.first() == Some(&b'[') {
        return match h.iter().position(|&b| b == b']') {
            Some(i) => &h[..=i],
            None => h,
        };
    }
    match h.iter().rposition(|&b| b == b':') {
        Some(i) => &h[..i],
        None => h,
    }
}
