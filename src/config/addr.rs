//! Addresses as nginx writes them: `IP:PORT`, `*:PORT`, `PORT`, or `HOST:PORT`.

use std::net::{SocketAddr, ToSocketAddrs};

/// Parses `text`; a bare port gets `default_ip`, and a host name is resolved now, keeping its
/// first address (for listen addresses).
pub fn parse_addr(text: &str, default_ip: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(port) = t.parse::<u16>() {
        return format!("{default_ip}:{port}")
            .parse()
            .map_err(|e| format!("{e}"));
    }
    if let Some(port) = t.strip_prefix("*:") {
        if let Ok(port) = port.parse::<u16>() {
            return format!("0.0.0.0:{port}")
                .parse()
                .map_err(|e| format!("{e}"));
        }
    }
    let bad = || format!("invalid address \"{text}\" (expected IP:PORT, e.g. 127.0.0.1:11001)");
    match t.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => t
            .to_socket_addrs()
            .map_err(|_| bad())?
            .next()
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}
