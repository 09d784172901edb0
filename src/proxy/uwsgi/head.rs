//! The reply head of a uwsgi app: an HTTP status line and headers (what uWSGI sends), or
//! CGI-style headers with a `Status:` line (200 without one), as nginx's uwsgi module takes
//! both.

use pingora::http::ResponseHeader;

/// Most header lines taken from an app.
const MAX_HEADERS: usize = 100;

/// A head that was read whole.
pub struct Head {
    pub resp: ResponseHeader,
    /// Bytes of the buffer the head took; the body starts after them.
    pub len: usize,
    /// The app's `Content-Length`, if it gave one (and no chunked body).
    pub content_length: Option<u64>,
    /// The app sent `Transfer-Encoding: chunked`: its body is to be decoded.
    pub chunked: bool,
}

/// Headers that describe one connection, not the response (RFC 9110 7.6.1): never passed on.
fn hop_by_hop(name: &str) -> bool {
    name.eq_ignore_ascii_case("connection")
        || name.eq_ignore_ascii_case("keep-alive")
        || name.eq_ignore_ascii_case("transfer-encoding")
        || name.eq_ignore_ascii_case("te")
        || name.eq_ignore_ascii_case("trailer")
        || name.eq_ignore_ascii_case("upgrade")
        || name.eq_ignore_ascii_case("proxy-connection")
}

/// Parses the head at the start of `buf`: `Ok(None)` while it is incomplete, `Err(reason)`
/// for what nginx would call an invalid header.
pub fn parse(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (status, reason, len, headers): (u16, Option<&str>, usize, &[httparse::Header]) =
        if buf.starts_with(b"HTTP/") {
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(buf).map_err(|e| e.to_string())? {
                httparse::Status::Partial => return Ok(None),
                httparse::Status::Complete(n) => {
                    let code = r.code.ok_or("invalid status")?;
                    (code, r.reason, n, r.headers)
                }
            }
        } else if buf.len() < 5 && b"HTTP/".starts_with(buf) {
            return Ok(None);
        } else {
            match httparse::parse_headers(buf, &mut headers).map_err(|e| e.to_string())? {
                httparse::Status::Partial => return Ok(None),
                httparse::Status::Complete((n, hs)) => {
                    let code = match hs.iter().find(|h| h.name.eq_ignore_ascii_case("status")) {
                        Some(h) => cgi_status(h.value).ok_or("invalid status")?,
                        None => 200,
                    };
                    (code, None, n, hs)
                }
            }
        };
    if !(100..=999).contains(&status) {
        return Err("invalid status".into());
    }
    let mut resp = ResponseHeader::build(status, Some(headers.len()))
        .map_err(|_| String::from("invalid status"))?;
    let canonical = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason());
    if let Some(r) = reason.filter(|r| !r.is_empty() && Some(*r) != canonical) {
        let _ = resp.set_reason_phrase(Some(r));
    }
    let mut content_length = None;
    let mut chunked = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding says how the body ends (RFC 9112 6.1).
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        }
        if hop_by_hop(h.name) || h.name.eq_ignore_ascii_case("status") {
            continue;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or("invalid Content-Length")?;
            if content_length.is_some_and(|c| c != n) {
                return Err("conflicting Content-Length".into());
            }
            if content_length.is_some() {
                continue;
            }
            content_length = Some(n);
        }
        let name = http::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| String::from("invalid header name"))?;
        let value = http::HeaderValue::from_bytes(h.value)
            .map_err(|_| String::from("invalid header value"))?;
        resp.append_header(name, value)
            .map_err(|_| String::from("invalid header"))?;
    }
    if chunked {
        // Transfer-Encoding wins over Content-Length (RFC 9112 6.3).
        content_length = None;
        resp.remove_header(&http::header::CONTENT_LENGTH);
    }
    Ok(Some(Head {
        resp,
        len,
        content_length,
        chunked,
    }))
}

/// `Status: 404 Not Found` -> 404.
fn cgi_status(v: &[u8]) -> Option<u16> {
    let v = std::str::from_utf8(v).ok()?.trim_start();
    let code = v.get(..3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line() {
        let raw = b"HTTP/1.1 201 Made\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
        let h = parse(raw).unwrap().unwrap();
        assert_eq!(h.resp.status.as_u16(), 201);
        assert_eq!(h.resp.get_reason_phrase(), Some("Made"));
        assert_eq!(&raw[h.len..], b"abc");
        assert_eq!(h.content_length, Some(3));
        assert!(h.resp.headers.get("connection").is_none());
        assert!(!h.chunked);
        assert_eq!(h.resp.headers.get("content-type").unwrap(), "text/plain");
        let h =
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(h.chunked);
        assert_eq!(h.content_length, None);
        assert!(h.resp.headers.get("content-length").is_none());
        assert!(h.resp.headers.get("transfer-encoding").is_none());
    }

    #[test]
    fn cgi_style() {
        let h = parse(b"Status: 404 Not Found\r\nX-A: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.resp.status.as_u16(), 404);
        assert!(h.resp.headers.get("status").is_none());
        let h = parse(b"Content-Type: text/html\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.resp.status.as_u16(), 200);
    }

    #[test]
    fn partial_and_garbage() {
        assert!(parse(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n").unwrap().is_none());
        assert!(parse(b"HTT").unwrap().is_none());
        assert!(parse(b"").unwrap().is_none());
        assert!(parse(b"\x00\x01garbage\r\n\r\n").is_err());
        assert!(parse(b"Status: abc\r\n\r\n").is_err());
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err()
        );
    }
}
