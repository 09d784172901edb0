//! Access log lines in nginx's `combined` format.
//!
//! `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
//! "$http_referer" "$http_user_agent"`, with nginx's default escaping (`"`, `\` and bytes
//! outside printable ASCII become `\xHH`), written straight into the log buffer.

use std::net::IpAddr;

use super::{clock, text};

/// `METHOD URI VERSION` as the client sent it (nginx's `$request`): the same in the access
/// log and in the error log's `request: "..."`.
pub struct RequestLine<'a> {
    pub method: &'a str,
    /// The raw request target, not re-encoded.
    pub uri: &'a [u8],
    pub version: http::Version,
}

impl RequestLine<'_> {
    /// Appends the line, escaped as nginx escapes log values.
    pub fn write(&self, out: &mut Vec<u8>) {
        escaped(out, self.method.as_bytes());
        out.push(b' ');
        escaped(out, self.uri);
        out.push(b' ');
        out.extend_from_slice(version_str(self.version).as_bytes());
    }
}

/// `HTTP/1.1` and the like (nginx's `$server_protocol`).
pub fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// What one access log line says about a request.
pub struct Entry<'a> {
    pub remote_addr: Option<IpAddr>,
    pub authorization: Option<&'a [u8]>,
    pub request: RequestLine<'a>,
    pub status: u16,
    pub body_bytes_sent: usize,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
}

/// Whether nginx's log escaping rewrites byte `c`: `"`, `\`, control and non-ASCII bytes.
#[inline]
pub fn needs_escape(c: u8) -> bool {
    c == b'"' || c == b'\\' || !(0x20..0x7f).contains(&c)
}

/// Appends `b` with nginx's log escaping: runs of plain bytes are copied whole.
pub fn escaped(out: &mut Vec<u8>, mut b: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    while let Some(i) = b.iter().position(|&c| needs_escape(c)) {
        let c = b[i];
        out.extend_from_slice(&b[..i]);
        out.extend_from_slice(&[
            b'\\',
            b'x',
            HEX[usize::from(c >> 4)],
            HEX[usize::from(c & 0xf)],
        ]);
        b = &b[i + 1..];
    }
    out.extend_from_slice(b);
}

fn quoted_or_dash(out: &mut Vec<u8>, v: Option<&[u8]>) {
    out.push(b'"');
    match v {
        Some(v) => escaped(out, v),
        None => out.push(b'-'),
    }
    out.push(b'"');
}

/// Appends one `combined` line for `e`, newline included.
pub fn combined(out: &mut Vec<u8>, e: &Entry<'_>) {
    match e.remote_addr {
        Some(ip) => text::ip(out, ip),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" - ");
    match e.authorization.and_then(remote_user) {
        Some(u) if !u.is_empty() => escaped(out, &u),
        _ => out.push(b'-'),
    }
    out.extend_from_slice(b" [");
    clock::time_local(out);
    out.extend_from_slice(b"] \"");
    e.request.write(out);
    out.extend_from_slice(b"\" ");
    text::uint(out, u64::from(e.status));
    out.push(b' ');
    text::uint(out, e.body_bytes_sent as u64);
    out.push(b' ');
    quoted_or_dash(out, e.referer);
    out.push(b' ');
    quoted_or_dash(out, e.user_agent);
    out.push(b'\n');
}

/// The user name of an `Authorization: Basic` header (nginx's `$remote_user`).
pub fn remote_user(h: &[u8]) -> Option<Vec<u8>> {
    let rest = h
        .strip_prefix(b"Basic ")
        .or_else(|| h.strip_prefix(b"basic "))?;
    let decoded = base64_decode(rest.trim_ascii())?;
    let end = decoded
        .iter()
        .position(|&c| c == b':')
        .unwrap_or(decoded.len());
    Some(decoded[..end].to_vec())
}

fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s
        .strip_suffix(b"==")
        .or_else(|| s.strip_suffix(b"="))
        .unwrap_or(s);
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in s {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_nginx_s() {
        let mut out = Vec::new();
        escaped(&mut out, b"a\"b\\c\x01\x7f\xc3\xa9z");
        assert_eq!(out, b"a\\x22b\\x5Cc\\x01\\x7F\\xC3\\xA9z");
    }

    #[test]
    fn combined_line() {
        let mut out = Vec::new();
        combined(
            &mut out,
            &Entry {
                remote_addr: "127.0.0.9".parse().ok(),
                authorization: Some(b"Basic YWxpY2U6c2VjcmV0"),
                request: RequestLine {
                    method: "GET",
                    uri: b"/a?q=\"x\"",
                    version: http::Version::HTTP_11,
                },
                status: 200,
                body_bytes_sent: 12,
                referer: None,
                user_agent: Some(b"curl/8"),
            },
        );
        let s = String::from_utf8(out).unwrap();
        let (head, tail) = s.split_once(" [").unwrap();
        assert_eq!(head, "127.0.0.9 - alice");
        let (_, rest) = tail.split_once("] ").unwrap();
        assert_eq!(
            rest,
            "\"GET /a?q=\\x22x\\x22 HTTP/1.1\" 200 12 \"-\" \"curl/8\"\n"
        );
    }
}
