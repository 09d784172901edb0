//! Request variables (`$remote_addr`, `$host`, ...) read from a Pingora session.

use std::net::SocketAddr;

use pingora_proxy::Session;

use crate::logs::access::RequestLine;
use crate::plan::template::Vars;

/// A session seen through the variables a template may use.
pub struct SessionVars<'a>(pub &'a Session);

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
}
