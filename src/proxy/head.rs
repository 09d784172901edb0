//! The request head checked byte by byte before Pingora parses it, so that graygate refuses
//! what nginx refuses, with nginx's status, and nothing ambiguous reaches an upstream.
//!
//! Pingora's parser (httparse) alone lets through, or answers differently: `Content-Length`
//! with `Transfer-Encoding` (it drops the length and proxies), NUL in the target (it escapes
//! it), transfer codings other than `chunked` at the end (400, nginx 501), heads of up to
//! 1 MB (nginx: 8k lines, 414 for the request line), a missing `Host`. It is also silent:
//! a request it refuses gets no access log line. [`Scan`] is fed the bytes as they arrive and
//! looks at each complete line once, so a client that sends its head a byte at a time costs
//! linear work, and its buffer never outgrows the limits.

use std::ops::Range;

use crate::plan::limits::Limits;

/// Why a head is refused: the status, and the title of nginx's error page for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub title: &'static str,
}

const BAD: Reject = Reject {
    status: 400,
    title: "400 Bad Request",
};
const TOO_LARGE: Reject = Reject {
    status: 400,
    title: "400 Request Header Or Cookie Too Large",
};
const URI_TOO_LARGE: Reject = Reject {
    status: 414,
    title: "414 Request-URI Too Large",
};
const BODY_TOO_LARGE: Reject = Reject {
    status: 413,
    title: "413 Request Entity Too Large",
};
const NOT_IMPLEMENTED: Reject = Reject {
    status: 501,
    title: "501 Not Implemented",
};
const VERSION: Reject = Reject {
    status: 505,
    title: "505 HTTP Version Not Supported",
};

/// A head that passed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// Bytes up to and including the blank line.
    pub len: usize,
    pub chunked: bool,
    pub content_length: Option<u64>,
    /// Header lines to leave out (names with `_`, `underscores_in_headers off`).
    pub drop: Vec<Range<usize>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// More bytes are needed.
    More,
    Done(Head),
    Reject(Reject),
}

/// What is known of a head so far.
#[derive(Debug, Default)]
pub struct Scan {
    /// Start of the first line not yet checked.
    pos: usize,
    seen_request_line: bool,
    http11: bool,
    connect: bool,
    headers: usize,
    host: Option<Range<usize>>,
    /// The authority of an absolute-form target.
    authority: Option<Range<usize>>,
    content_length: Option<u64>,
    te: Option<bool>,
    drop: Vec<Range<usize>>,
}

/// Byte classes, looked up once per byte of every head (issue 20: the check runs before
/// Pingora's own parse, so it must cost little).
const TCHAR: u8 = 1;
/// A byte a header value may not hold: control bytes but tab, and DEL.
const BAD_IN_VALUE: u8 = 2;
/// A byte a request target may not hold: control bytes, space, DEL.
const BAD_IN_TARGET: u8 = 4;

const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let mut k = 0;
        if b.is_ascii_alphanumeric() {
            k |= TCHAR;
        } else {
            let mut i = 0;
            let extra = b"!#$%&'*+-.^_`|~";
            while i < extra.len() {
                if extra[i] == b {
                    k |= TCHAR;
                }
                i += 1;
            }
        }
        if (b < b' ' && b != b'\t') || b == 0x7f {
            k |= BAD_IN_VALUE;
        }
        if b <= b' ' || b == 0x7f {
            k |= BAD_IN_TARGET;
        }
        t[c] = k;
        c += 1;
    }
    t
};

/// RFC 9110 `tchar`: what a method or a header name is made of.
#[inline]
fn is_tchar(c: u8) -> bool {
    CLASS[usize::from(c)] & TCHAR != 0
}

/// Whether any byte of `b` is in class `k`.
#[inline]
fn any_in(b: &[u8], k: u8) -> bool {
    b.iter().any(|&c| CLASS[usize::from(c)] & k != 0)
}

impl Scan {
    /// Looks at the lines of `buf` completed since the last call. `buf` holds the whole head
    /// read so far, from its first byte.
    pub fn feed(&mut self, buf: &[u8], lim: &Limits) -> Verdict {
        loop {
            let rest = &buf[self.pos.min(buf.len())..];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                // The line in progress may not outgrow its buffer.
                if rest.len() > lim.line_max {
                    return Verdict::Reject(self.too_long());
                }
                if buf.len() > lim.head_max {
                    return Verdict::Reject(TOO_LARGE);
                }
                return Verdict::More;
            };
            let start = self.pos;
            let end = start + nl + 1;
            // Sizes first, as for a line still arriving: the verdict must not depend on how
            // the bytes were split into reads.
            if nl > lim.line_max {
                return Verdict::Reject(self.too_long());
            }
            if end > lim.head_max {
                return Verdict::Reject(TOO_LARGE);
            }
            // Bare LF: nginx accepts it, but a line ending that two parsers may read
            // differently has no place at the edge (RFC 9112 §2.2 lets a server refuse it).
            if nl == 0 || rest[nl - 1] != b'\r' {
                return Verdict::Reject(BAD);
            }
            let line = &rest[..nl - 1];
            self.pos = end;
            if !self.seen_request_line {
                if line.is_empty() {
                    // Empty lines before the request line are ignored (RFC 9112 §2.2).
                    continue;
                }
                if let Err(r) = self.request_line(line, start) {
                    return Verdict::Reject(r);
                }
                continue;
            }
            if line.is_empty() {
                return self.finish(buf, end, lim);
            }
            if let Err(r) = self.header_line(line, start, end, lim) {
                return Verdict::Reject(r);
            }
        }
    }

    fn too_long(&self) -> Reject {
        if self.seen_request_line {
            TOO_LARGE
        } else {
            URI_TOO_LARGE
        }
    }

    fn request_line(&mut self, line: &[u8], at: usize) -> Result<(), Reject> {
        self.seen_request_line = true;
        let mut parts = line.split(|&c| c == b' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(BAD);
        };
        if method.is_empty() || !method.iter().all(|&c| is_tchar(c)) {
            return Err(BAD);
        }
        // Control bytes, NUL and DEL are never part of a target; UTF-8 is let through as nginx.
        if target.is_empty() || any_in(target, BAD_IN_TARGET) {
            return Err(BAD);
        }
        self.connect = method == b"CONNECT";
        let t_at = at + method.len() + 1;
        if target[0] == b'/' || target == b"*" || self.connect {
            // origin-form, asterisk-form; CONNECT is Pingora's to refuse (405).
        } else if let Some(rest) = strip_scheme(target) {
            let host_len = rest
                .iter()
                .position(|&c| matches!(c, b'/' | b'?' | b'#'))
                .unwrap_or(rest.len());
            if host_len == 0 {
                return Err(BAD);
            }
            let off = t_at + (target.len() - rest.len());
            self.authority = Some(off..off + host_len);
        } else {
            return Err(BAD);
        }
        match version {
            b"HTTP/1.1" => self.http11 = true,
            b"HTTP/1.0" => {}
            [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
                if major.is_ascii_digit() && minor.is_ascii_digit() && *major >= b'2' =>
            {
                return Err(VERSION)
            }
            _ => return Err(BAD),
        }
        Ok(())
    }

    fn header_line(
        &mut self,
        line: &[u8],
        start: usize,
        end: usize,
        lim: &Limits,
    ) -> Result<(), Reject> {
        // obs-fold: a continuation line.
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(BAD);
        }
        let colon = memchr::memchr(b':', line).ok_or(BAD)?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&c| is_tchar(c)) {
            return Err(BAD);
        }
        let value = &line[colon + 1..];
        // Only visible bytes, spaces, tabs and obs-text: NUL and a lone CR end here.
        if any_in(value, BAD_IN_VALUE) {
            return Err(BAD);
        }
        self.headers += 1;
        if self.headers > lim.max_headers {
            return Err(TOO_LARGE);
        }
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case(b"host") {
            if self.host.is_some() {
                return Err(BAD);
            }
            let off = value.as_ptr() as usize - line.as_ptr() as usize + start;
            self.host = Some(off..off + value.len());
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // nginx: one Content-Length, digits only.
            if self.content_length.is_some() || value.is_empty() {
                return Err(BAD);
            }
            if !value.iter().all(u8::is_ascii_digit) {
                return Err(BAD);
            }
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(BAD)?;
            self.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if self.te.is_some() {
                return Err(BAD);
            }
            self.te = Some(value.eq_ignore_ascii_case(b"chunked"));
        } else if !lim.underscores && name.contains(&b'_') {
            self.drop.push(start..end);
        }
        Ok(())
    }

    fn finish(&mut self, buf: &[u8], end: usize, lim: &Limits) -> Verdict {
        if self.http11 && self.host.is_none() {
            return Verdict::Reject(BAD);
        }
        if let Some(chunked) = self.te {
            if !self.http11 || self.content_length.is_some() {
                return Verdict::Reject(BAD);
            }
            if !chunked {
                return Verdict::Reject(NOT_IMPLEMENTED);
            }
        }
        if let (Some(a), Some(h)) = (&self.authority, &self.host) {
            // An absolute-form target names the host; a Host header saying otherwise is a
            // request routed one way here and another way behind us.
            let (a, h) = (&buf[a.clone()], &buf[h.clone()]);
            if !a.eq_ignore_ascii_case(h) {
                return Verdict::Reject(BAD);
            }
        }
        if let Some(n) = self.content_length {
            if lim.max_body > 0 && n > lim.max_body {
                return Verdict::Reject(BODY_TOO_LARGE);
            }
        }
        Verdict::Done(Head {
            len: end,
            chunked: self.te == Some(true),
            content_length: self.content_length,
            drop: std::mem::take(&mut self.drop),
        })
    }
}

fn strip_scheme(t: &[u8]) -> Option<&[u8]> {
    for s in [&b"http://"[..], b"https://"] {
        if t.len() > s.len() && t[..s.len()].eq_ignore_ascii_case(s) {
            return Some(&t[s.len()..]);
        }
    }
    None
}

/// The request line's method, target and version as far as they can be told apart, for the
/// access log line of a refused request (nginx logs what it got).
pub fn request_parts(buf: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let start = buf
        .iter()
        .position(|&c| c != b'\r' && c != b'\n')
        .unwrap_or(buf.len());
    let buf = &buf[start..];
    let line_end = buf
        .iter()
        .position(|&c| c == b'\n' || c == b'\r')
        .unwrap_or(buf.len());
    let line = &buf[..line_end.min(8192)];
    let mut parts = line.splitn(3, |&c| c == b' ');
    let m = parts.next().unwrap_or(b"");
    let t = parts.next().unwrap_or(b"");
    let v = parts.next().unwrap_or(b"");
    (m, t, v)
}

/// nginx's error page for `r`, with `Connection: close`.
pub fn error_response(r: Reject) -> Vec<u8> {
    let body = format!(
        "<html>\r\n<head><title>{t}</title></head>\r\n<body>\r\n<center><h1>{t}</h1></center>\r\n<hr><center>graygate</center>\r\n</body>\r\n</html>\r\n",
        t = r.title
    );
    let reason = match r.status {
        400 => "Bad Request",
        408 => "Request Time-out",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nServer: graygate\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests;
