//! Request variables (`$remote_addr`, `$host`, ...) read from a Pingora session, and the
//! access log line of a request.

use std::net::SocketAddr;
use std::time::Duration;

use pingora_proxy::Session;

use super::Ctx;
use crate::logs::access::{self, RequestLine};
use crate::plan::logs::LogFormat;
use crate::plan::template::{Tried, Vars};

/// A session seen through the variables a template may use, with its `$request_id`.
pub struct SessionVars<'a>(pub &'a Session, pub u128);

/// The client's address: the one a trusted proxy gave (`real_ip`, see [`super::realip`]),
/// else the peer's if it came over TCP.
pub fn client_addr(s: &Session) -> Option<SocketAddr> {
    if let Some(r) = s.req_header().extensions.get::<super::realip::RealIp>() {
        return Some(r.0);
    }
    s.client_addr().and_then(|a| a.as_inet()).copied()
}

/// The request line as the client sent it, for both logs.
pub fn request_line(s: &Session) -> RequestLine<'_> {
    let req = s.req_header();
    RequestLine {
        method: req.method.as_str(),
        uri: req.raw_path(),
        version: req.version,
    }
}

impl Vars for SessionVars<'_> {
    fn client(&self) -> Option<SocketAddr> {
        client_addr(self.0)
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.req_header().headers.get(name).map(|v| v.as_bytes())
    }

    fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.0
            .req_header()
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .find_map(|c| crate::plan::template::cookie(c.as_bytes(), name))
    }

    fn host(&self) -> &[u8] {
        let req = self.0.req_header();
        match req.headers.get(http::header::HOST) {
            Some(h) => h.as_bytes(),
            None => req.uri.host().map(str::as_bytes).unwrap_or(b""),
        }
    }

    fn path_and_query(&self) -> &str {
        self.0
            .req_header()
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    }

    fn method(&self) -> &str {
        self.0.req_header().method.as_str()
    }

    fn server_port(&self) -> Option<u16> {
        self.0
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.port())
    }

    fn request_id(&self) -> Option<u128> {
        Some(self.1)
    }

    fn https(&self) -> bool {
        self.0.digest().is_some_and(|d| d.ssl_digest.is_some())
    }
}

/// A finished request seen through every variable, for access log formats.
struct LogVars<'a> {
    session: &'a Session,
    ctx: &'a Ctx,
    base: SessionVars<'a>,
    status: u16,
}

impl Vars for LogVars<'_> {
    fn client(&self) -> Option<SocketAddr> {
        self.base.client()
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.base.header(name)
    }
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.base.cookie(name)
    }
    fn host(&self) -> &[u8] {
        self.base.host()
    }
    fn path_and_query(&self) -> &str {
        self.base.path_and_query()
    }
    fn method(&self) -> &str {
        self.base.method()
    }
    fn server_port(&self) -> Option<u16> {
        self.base.server_port()
    }
    fn https(&self) -> bool {
        self.base.https()
    }
    fn request_id(&self) -> Option<u128> {
        // A request refused before routing has none yet: nginx draws one on first use.
        (self.ctx.request_id != 0).then_some(self.ctx.request_id)
    }
    fn request_line(&self) -> Option<RequestLine<'_>> {
        Some(request_line(self.session))
    }
    fn status(&self) -> Option<u16> {
        Some(self.status)
    }
    fn body_bytes_sent(&self) -> Option<usize> {
        Some(body_sent(self.session))
    }
    fn bytes_sent(&self) -> Option<usize> {
        let head = self.session.response_written().map_or(0, head_len);
        Some(head + body_sent(self.session))
    }
    fn request_time(&self) -> Option<Duration> {
        self.ctx.started.map(|t| t.elapsed())
    }
    fn canary_side(&self) -> Option<&'static str> {
        self.ctx.canary.map(|(_, s)| s.name())
    }
    fn upstreams(&self, each: &mut dyn FnMut(&Tried)) {
        self.ctx.each_try(each);
    }
    fn sent_header(&self, name: &str) -> Option<&[u8]> {
        self.session
            .response_written()
            .and_then(|r| r.headers.get(name))
            .map(|v| v.as_bytes())
    }
}

/// `$body_bytes_sent`: Pingora's count, and the file bytes `sendfile` sent in a body write
/// that failed (a client gone mid-file), which Pingora does not count.
fn body_sent(session: &Session) -> usize {
    let extra = super::sendfile::FileStream::uncounted(session);
    session
        .body_bytes_sent()
        .saturating_add(usize::try_from(extra).unwrap_or(usize::MAX))
}

/// The size of a response head on the wire: status line, header lines, blank line.
fn head_len(r: &pingora::http::ResponseHeader) -> usize {
    let reason = r.status.canonical_reason().map_or(0, str::len);
    // "HTTP/1.1 200 " + reason + CRLF
    let mut n = 13 + reason + 2;
    for (name, value) in r.headers.iter() {
        n += name.as_str().len() + 2 + value.len() + 2;
    }
    n + 2
}

/// Appends the access log line of a finished request in `format`, newline included.
pub fn access_line(
    out: &mut Vec<u8>,
    format: &LogFormat,
    session: &Session,
    ctx: &Ctx,
    status: u16,
) {
    match format {
        LogFormat::Combined => {
            let req = session.req_header();
            let h = |n: http::header::HeaderName| req.headers.get(n).map(|v| v.as_bytes());
            let entry = access::Entry {
                remote_addr: client_addr(session).map(|a| a.ip()),
                authorization: h(http::header::AUTHORIZATION),
                request: request_line(session),
                status,
                body_bytes_sent: body_sent(session),
                referer: h(http::header::REFERER),
                user_agent: h(http::header::USER_AGENT),
            };
            access::combined(out, &entry);
        }
        LogFormat::Custom(t) => {
            let v = LogVars {
                session,
                ctx,
                base: SessionVars(session, ctx.request_id),
                status,
            };
            t.render_log(&v, out);
            out.push(b'\n');
        }
    }
}
