//! `servers.NAME`'s client limits and `real_ip`, compiled: nginx's defaults where unset.

use std::net::IpAddr;
use std::time::Duration;

use crate::config::{Loaded, Problems, Server};

/// Pingora's HTTP/1 parser refuses more header lines than this, whatever we allow.
pub const PINGORA_MAX_HEADERS: usize = 256;

/// What one server block allows a client.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest request body; 0 = no limit (nginx's `client_max_body_size 1m`).
    pub max_body: u64,
    /// Longest request line or header line (nginx's `large_client_header_buffers 4 8k`: 8k).
    pub line_max: usize,
    /// Longest whole request head (4 × 8k).
    pub head_max: usize,
    /// Most header lines.
    pub max_headers: usize,
    /// Time for a whole request head to arrive (nginx's `client_header_timeout 60s`).
    pub header_timeout: Duration,
    /// Time between two reads of a request body (`client_body_timeout 60s`).
    pub body_timeout: Duration,
    /// Longest wait of one write to the client (nginx's `send_timeout 60s`).
    pub send_timeout: Duration,
    /// How long a connection may idle between requests (`keepalive_timeout 75s`).
    pub keepalive_timeout: Duration,
    /// Requests per connection (`keepalive_requests 1000`).
    pub keepalive_requests: u64,
    /// Pass header names with `_` (nginx's `underscores_in_headers off`: dropped).
    pub underscores: bool,
    pub real_ip: Option<RealIpPlan>,
    /// Largest reply head from a server, else 502 (nginx's `proxy_buffer_size`: one page, 4k).
    pub upstream_head_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body: 1 << 20,
            line_max: 8 << 10,
            head_max: 32 << 10,
            max_headers: PINGORA_MAX_HEADERS,
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(75),
            keepalive_requests: 1000,
            underscores: false,
            real_ip: None,
            upstream_head_max: 4 << 10,
        }
    }
}

/// `real_ip`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RealIpPlan {
    pub from: Vec<Cidr>,
    /// Lower-case header name.
    pub header: http::HeaderName,
    pub recursive: bool,
}

/// An address block: `10.0.0.0/8`, `::1/128`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub bits: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (a, bits) = match text.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (text, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("invalid address \"{text}\" (expected e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("invalid prefix length in \"{text}\" (0 to {max})"))?,
        };
        Ok(Cidr { addr, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Compiles the limits of `servers.NAME` (`base`).
pub(super) fn compile_limits(l: &Loaded, base: &str, s: &Server, probs: &mut Problems) -> Limits {
    let mut out = Limits::default();
    if let Some(v) = s.client_max_body_size {
        out.max_body = v.0;
    }
    if let Some(b) = s.large_client_header_buffers {
        // Both at most 1024 × 1 TiB by the parser; usize is 64-bit on every target we build.
        out.line_max = usize::try_from(b.size).unwrap_or(usize::MAX);
        out.head_max = usize::try_from(b.number.saturating_mul(b.size)).unwrap_or(usize::MAX);
        if b.size > 1 << 20 {
            probs.push(l.problem_at(
                &format!("{base}.large_client_header_buffers"),
                "buffer size above 1m: Pingora refuses longer request heads",
            ));
        }
    }
    if let Some(n) = s.max_headers {
        match usize::try_from(n) {
            Ok(n) if (1..=PINGORA_MAX_HEADERS).contains(&n) => out.max_headers = n,
            _ => probs.push(l.problem_at(
                &format!("{base}.max_headers"),
                format!("max_headers must be 1 to {PINGORA_MAX_HEADERS}"),
            )),
        }
    }
    for (key, v, slot) in [
        (
            "client_header_timeout",
            s.client_header_timeout,
            &mut out.header_timeout,
        ),
        (
            "client_body_timeout",
            s.client_body_timeout,
            &mut out.body_timeout,
        ),
        (
            "client_send_timeout",
            s.client_send_timeout,
            &mut out.send_timeout,
        ),
    ] {
        if let Some(t) = v {
            super::check_above_zero(l, &format!("{base}.{key}"), t.0, probs);
            *slot = t.0;
        }
    }
    if let Some(t) = s.keepalive_timeout {
        // 0 turns keep-alive off, as in nginx.
        out.keepalive_timeout = t.0;
    }
    if let Some(n) = s.keepalive_requests {
        match u64::try_from(n) {
            Ok(n) => out.keepalive_requests = n,
            Err(_) => probs.push(l.problem_at(
                &format!("{base}.keepalive_requests"),
                "keepalive_requests must not be negative",
            )),
        }
    }
    out.underscores = s.underscores_in_headers;
    if let Some(v) = s.proxy_buffer_size {
        let key = format!("{base}.proxy_buffer_size");
        if v.0 == 0 || v.0 > 1 << 20 {
            // Pingora refuses reply heads over 1m whatever we allow.
            probs.push(l.problem_at(&key, "proxy_buffer_size must be 1 to 1m"));
        } else {
            out.upstream_head_max = usize::try_from(v.0).unwrap_or(usize::MAX);
        }
    }
    if let Some(r) = &s.real_ip {
        let at = format!("{base}.real_ip");
        let mut from = Vec::new();
        for (i, c) in r.from.iter().enumerate() {
            match Cidr::parse(c) {
                Ok(c) => from.push(c),
                Err(e) => probs.push(l.problem_at(&format!("{at}.from.{i}"), e)),
            }
        }
        if r.from.is_empty() {
            probs.push(l.problem_at_key(&at, "real_ip needs at least one address in `from`"));
        }
        match http::HeaderName::from_bytes(r.header.as_bytes()) {
            Ok(header) => {
                out.real_ip = Some(RealIpPlan {
                    from,
                    header,
                    recursive: r.recursive,
                })
            }
            Err(_) => probs.push(l.problem_at(
                &format!("{at}.header"),
                format!("invalid header name \"{}\"", r.header),
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x/8", "::/129", "10.0.0.0/-1"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
