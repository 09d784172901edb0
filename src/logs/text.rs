//! Numbers and addresses as text without `core::fmt`: the access log line and
//! `proxy_set_header X-Real-IP $remote_addr` write them on every request, and the formatting
//! machinery (`write!`, `Display for Ipv4Addr`) costs more instructions than the rest of the
//! line together (issue 20). The output is byte for byte what `Display` writes.

use std::io::Write;
use std::net::IpAddr;

/// Appends `n` in decimal.
#[inline]
pub fn uint(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

/// Appends `n` in decimal, at least three digits (nginx's `$status`: `000` for none).
#[inline]
pub fn uint3(out: &mut Vec<u8>, n: u64) {
    if n < 100 {
        out.push(b'0');
        if n < 10 {
            out.push(b'0');
        }
    }
    uint(out, n);
}

/// Appends `ip` as `Display` does; IPv4 without the formatter, IPv6 (rare here) through it.
#[inline]
pub fn ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut at = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[at] = b'.';
                    at += 1;
                }
                if octet >= 100 {
                    buf[at] = b'0' + octet / 100;
                    at += 1;
                }
                if octet >= 10 {
                    buf[at] = b'0' + octet / 10 % 10;
                    at += 1;
                }
                buf[at] = b'0' + octet % 10;
                at += 1;
            }
            out.extend_from_slice(&buf[..at]);
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends `n` as 32 lower-case hex digits (nginx's `$request_id`).
#[inline]
pub fn hex128(out: &mut Vec<u8>, n: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = DIGITS[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    out.extend_from_slice(&buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = b"x".to_vec();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbers_match_display() {
        for n in [0u64, 7, 9, 10, 99, 100, 404, 999, 1000, 65535, u64::MAX] {
            assert_eq!(s(|o| uint(o, n)), format!("x{n}"));
            assert_eq!(s(|o| uint3(o, n)), format!("x{n:03}"));
        }
    }

    #[test]
    fn addresses_match_display() {
        for a in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "2001:db8::8:800:200c:417a",
            "::ffff:1.2.3.4",
        ] {
            let a: IpAddr = a.parse().unwrap();
            assert_eq!(s(|o| ip(o, a)), format!("x{a}"));
        }
    }

    #[test]
    fn request_id_matches_display() {
        for n in [
            0u128,
            1,
            0xdead_beef,
            u128::MAX,
            0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        ] {
            assert_eq!(s(|o| hex128(o, n)), format!("x{n:032x}"));
        }
    }
}
