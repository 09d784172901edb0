//! nginx's realip module: a request from a trusted proxy (`real_ip.from`) is known by the
//! address that proxy names in `real_ip.header`; every other request by its peer address.
//! The address is resolved once, in `request_filter`, and kept in the request's extensions,
//! where [`super::vars::client_addr`] (so `$remote_addr`, ip_hash, hash keys and the access
//! log) finds it. A client-sent header never decides anything without `real_ip`.

use std::net::{IpAddr, SocketAddr};

use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_proxy::Session;

use crate::plan::limits::{Limits, RealIpPlan};

/// The client address a trusted proxy gave for this request.
#[derive(Debug, Clone, Copy)]
pub struct RealIp(pub SocketAddr);

/// Resolves this request's client address under `lim.real_ip`.
pub fn resolve(session: &mut Session, lim: &Limits) {
    let Some(cfg) = &lim.real_ip else {
        return;
    };
    let Some(peer) = session.client_addr().and_then(PeerAddr::as_inet).copied() else {
        return;
    };
    if !trusted(cfg, peer.ip()) {
        return;
    }
    // Several header lines are one list, in order (RFC 9110 §5.3).
    let values = session.req_header().headers.get_all(&cfg.header);
    if let Some(ip) = pick(cfg, values.iter().map(|v| v.as_bytes())) {
        session
            .req_header_mut()
            .extensions_mut()
            .insert(RealIp(SocketAddr::new(ip, peer.port())));
    }
}

fn trusted(cfg: &RealIpPlan, ip: IpAddr) -> bool {
    cfg.from.iter().any(|c| c.contains(ip))
}

/// nginx's choice from the address list: the last one; with `recursive`, the last one that
/// is not itself a trusted proxy (or the first if all are). An unparsable entry ends the walk
/// with no change, so garbage never becomes an address.
pub fn pick<'a>(
    cfg: &RealIpPlan,
    lines: impl DoubleEndedIterator<Item = &'a [u8]>,
) -> Option<IpAddr> {
    let items = lines
        .rev()
        .flat_map(|l| l.rsplit(|&c| c == b',').map(<[u8]>::trim_ascii))
        .filter(|s| !s.is_empty());
    let mut last = None;
    for item in items {
        let ip: IpAddr = std::str::from_utf8(item).ok()?.parse().ok()?;
        last = Some(ip);
        if !cfg.recursive || !trusted(cfg, ip) {
            return Some(ip);
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::limits::Cidr;

    fn p(c: &RealIpPlan, lines: &[&'static [u8]]) -> Option<IpAddr> {
        pick(c, lines.iter().copied())
    }

    fn cfg(recursive: bool) -> RealIpPlan {
        RealIpPlan {
            from: vec![Cidr::parse("10.0.0.0/8").unwrap()],
            header: http::HeaderName::from_static("x-forwarded-for"),
            recursive,
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn last_address_or_last_untrusted() {
        let l: [&[u8]; 1] = [b"1.1.1.1, 2.2.2.2, 10.0.0.5"];
        assert_eq!(p(&cfg(false), &l), ip("10.0.0.5"));
        assert_eq!(p(&cfg(true), &l), ip("2.2.2.2"));
        let all: [&[u8]; 1] = [b"10.0.0.1, 10.0.0.2"];
        assert_eq!(p(&cfg(true), &all), ip("10.0.0.1"));
        let lines: [&[u8]; 2] = [b"3.3.3.3", b"10.1.1.1"];
        assert_eq!(p(&cfg(true), &lines), ip("3.3.3.3"));
        assert_eq!(p(&cfg(false), &[b"junk"]), None);
        assert_eq!(p(&cfg(true), &[b"x, 10.0.0.1"]), None);
        assert_eq!(p(&cfg(false), &[b"::1"]), ip("::1"));
    }
}
