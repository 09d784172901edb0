//! Addresses as nginx writes them: `IP:PORT`, `*:PORT`, `PORT`, or `HOST:PORT`.

use std::net::{SocketAddr, ToSocketAddrs};

/// Parses `text` into every address it stands for: one for an IP or a bare port (which gets
/// `default_ip`), each address a host name resolves to now (as nginx's `server` directive, in
/// the resolver's order, without repeats). Never empty.
pub fn resolve_addrs(text: &str, default_ip: &str) -> Result<Vec<SocketAddr>, String> {
    let t = text.trim();
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let literal = if let Ok(port) = t.parse::<u16>() {
        Some(format!("{default_ip}:{port}"))
    } else {
        t.strip_prefix("*:")
            .filter(|p| p.parse::<u16>().is_ok())
            .map(|p| format!("0.0.0.0:{p}"))
    };
    if let Some(l) = literal {
        return l.parse().map(|a| vec![a]).map_err(|e| format!("{e}"));
    }
    match t.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => {
            if let Ok(port) = port.parse::<u16>() {
                return resolve(host, port, text);
            }
        }
        _ => {}
    }
    Err(format!(
        "invalid address \"{text}\" (expected IP:PORT, e.g. 127.0.0.1:11001)"
    ))
}

/// The first address `text` stands for (for listen addresses).
pub fn parse_addr(text: &str, default_ip: &str) -> Result<SocketAddr, String> {
    resolve_addrs(text, default_ip).map(|a| a[0])
}

fn resolve(host: &str, port: u16, text: &str) -> Result<Vec<SocketAddr>, String> {
    let found = lookup(host, port).unwrap_or_default();
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(found.len());
    for a in found {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        return Err(format!("host not found in \"{text}\""));
    }
    Ok(addrs)
}

fn lookup(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    #[cfg(test)]
    if let Some(addrs) = test_hosts::get(host, port) {
        return Ok(addrs);
    }
    Ok((host, port).to_socket_addrs()?.collect())
}

/// Host names for tests, standing in for `/etc/hosts` on this thread.
#[cfg(test)]
pub mod test_hosts {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::net::{IpAddr, SocketAddr};

    thread_local! {
        static HOSTS: RefCell<HashMap<String, Vec<IpAddr>>> = RefCell::default();
    }

    /// Makes `name` resolve to `ips`, in this order.
    pub fn set(name: &str, ips: &[&str]) {
        let ips = ips.iter().map(|i| i.parse().unwrap()).collect();
        HOSTS.with(|h| h.borrow_mut().insert(name.to_string(), ips));
    }

    pub(super) fn get(name: &str, port: u16) -> Option<Vec<SocketAddr>> {
        HOSTS.with(|h| {
            h.borrow()
                .get(name)
                .map(|ips| ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn forms() {
        assert_eq!(
            resolve_addrs("10.0.0.1:80", "x"),
            Ok(addrs(&["10.0.0.1:80"]))
        );
        assert_eq!(resolve_addrs("[::1]:80", "x"), Ok(addrs(&["[::1]:80"])));
        assert_eq!(
            resolve_addrs(" 80 ", "127.0.0.1"),
            Ok(addrs(&["127.0.0.1:80"]))
        );
        assert_eq!(
            resolve_addrs("*:80", "127.0.0.1"),
            Ok(addrs(&["0.0.0.0:80"]))
        );
        for bad in ["", "nonsense", ":80", "127.0.0.1:99999", "*:x", "host:"] {
            assert_eq!(
                resolve_addrs(bad, "127.0.0.1"),
                Err(format!(
                    "invalid address \"{bad}\" (expected IP:PORT, e.g. 127.0.0.1:11001)"
                )),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_host_name_stands_for_each_of_its_addresses() {
        test_hosts::set("app.test", &["10.0.0.1", "::1", "10.0.0.1", "10.0.0.2"]);
        assert_eq!(
            resolve_addrs("app.test:8080", "127.0.0.1"),
            Ok(addrs(&["10.0.0.1:8080", "[::1]:8080", "10.0.0.2:8080"]))
        );
        assert_eq!(
            parse_addr("app.test:8080", "127.0.0.1"),
            Ok(addrs(&["10.0.0.1:8080"])[0])
        );
        // The system resolver, through /etc/hosts.
        let local = resolve_addrs("localhost:80", "x").unwrap();
        assert!(
            local.contains(&"127.0.0.1:80".parse().unwrap()),
            "{local:?}"
        );
    }

    #[test]
    fn an_unknown_host_is_named() {
        test_hosts::set("gone.test", &[]);
        assert_eq!(
            resolve_addrs("gone.test:80", "127.0.0.1"),
            Err("host not found in \"gone.test:80\"".to_string())
        );
    }
}
