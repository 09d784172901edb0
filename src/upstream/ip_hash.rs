//! nginx's `ip_hash`, bit for bit.
//!
//! Pingora's selection algorithms (FNV hash, Ketama) would send a user who moves from nginx to a
//! different backend than nginx did, so this is written out here following
//! `ngx_http_upstream_ip_hash_module.c`: the hash starts at 89 and folds in the first three
//! octets of an IPv4 address (all 16 bytes of IPv6) as `hash = (hash * 113 + byte) % 6271`.
//! A busy pick is retried by hashing again from where the last one stopped, up to 20 times.

use std::net::IpAddr;

/// Starting value of nginx's hash.
pub const SEED: u32 = 89;
/// nginx falls back to round robin after this many rehashes.
pub const MAX_TRIES: u32 = 20;

/// The bytes nginx hashes for `ip`: three octets of IPv4 (IPv4-mapped IPv6 included), or all 16
/// of IPv6. Returns the buffer and how many bytes of it count.
pub fn key(ip: IpAddr) -> ([u8; 16], usize) {
    let mut buf = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            buf[..3].copy_from_slice(&v4.octets()[..3]);
            (buf, 3)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => {
                buf[..3].copy_from_slice(&v4.octets()[..3]);
                (buf, 3)
            }
            None => {
                buf.copy_from_slice(&v6.octets());
                (buf, 16)
            }
        },
    }
}

/// One round of nginx's hash over `bytes`, continuing from `hash`.
#[inline]
pub fn rehash(mut hash: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        hash = (hash * 113 + u32::from(b)) % 6271;
    }
    hash
}

/// The server `hash` lands on: `w = hash % total`, then the servers in config order each take
/// `weight` slots. `cumulative[i]` is the sum of the weights of servers `0..=i`; a binary search
/// over it gives nginx's linear walk's answer in O(log n).
#[inline]
pub fn slot(hash: u32, cumulative: &[u32]) -> usize {
    let total = cumulative.last().copied().unwrap_or(0);
    if total == 0 {
        return 0;
    }
    let w = hash % total;
    cumulative.partition_point(|&c| c <= w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear(hash: u32, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut w = hash % total;
        let mut i = 0;
        while w >= weights[i] {
            w -= weights[i];
            i += 1;
        }
        i
    }

    #[test]
    fn slot_matches_nginx_walk() {
        let weights = [1u32, 0, 3, 2, 0, 5];
        let cumulative: Vec<u32> = weights
            .iter()
            .scan(0, |s, w| {
                *s += w;
                Some(*s)
            })
            .collect();
        for h in 0..6271 {
            assert_eq!(slot(h, &cumulative), linear(h, &weights), "hash {h}");
        }
    }

    #[test]
    fn hashes_three_octets_of_v4() {
        let (k, n) = key("10.20.30.40".parse().unwrap());
        assert_eq!(&k[..n], &[10, 20, 30]);
        let (k, n) = key("::ffff:10.20.30.40".parse().unwrap());
        assert_eq!(&k[..n], &[10, 20, 30]);
        let (_, n) = key("2001:db8::1".parse().unwrap());
        assert_eq!(n, 16);
        // Worked by hand: ((89*113+10)%6271*113+20)%6271 ...
        let h = rehash(SEED, &[10, 20, 30]);
        let mut e = 89u32;
        for b in [10u32, 20, 30] {
            e = (e * 113 + b) % 6271;
        }
        assert_eq!(h, e);
    }
}
