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

/// Where one request's hashing stands, across its retries.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    hash: u32,
    rehashes: u32,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            hash: SEED,
            rehashes: 0,
        }
    }
}

/// The primaries' weights in config order, as cumulative sums (down servers included: nginx
/// walks them too and skips them after landing).
#[derive(Debug)]
pub struct Ring {
    cumulative: Vec<u32>,
}

impl Ring {
    /// `weights[i]` is server `i`'s weight, 0 for servers not in the primary list.
    pub fn new(weights: &[u32]) -> Ring {
        let cumulative = weights
            .iter()
            .scan(0u32, |s, &w| {
                *s += w;
                Some(*s)
            })
            .collect();
        Ring { cumulative }
    }

    /// The client's server, or the one the hash lands on next while it cannot take the
    /// request; `None` after [`MAX_TRIES`] rehashes, when nginx goes on with round robin.
    pub fn select(
        &self,
        ip: IpAddr,
        at: &mut Progress,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if at.rehashes > MAX_TRIES {
            return None;
        }
        let (key, len) = key(ip);
        let mut hash = at.hash;
        loop {
            hash = rehash(hash, &key[..len]);
            let i = slot(hash, &self.cumulative);
            if usable(i) {
                at.hash = hash;
                return Some(i);
            }
            at.rehashes += 1;
            if at.rehashes > MAX_TRIES {
                at.hash = hash;
                return None;
            }
        }
    }
}

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
    }

    #[test]
    fn hash_values_worked_from_nginx_formula() {
        // (89*113 + 10) % 6271 = 3796; (3796*113 + 20) % 6271 = 2540;
        // (2540*113 + 30) % 6271 = 4855.
        assert_eq!(rehash(SEED, &[10, 20, 30]), 4855);
        // The retry continues from there: the same three octets again.
        assert_eq!(rehash(4855, &[10, 20, 30]), 4376);
        assert_eq!(rehash(SEED, &[127, 0, 0]), 4040);
        let (k, n) = key("2001:db8::1".parse().unwrap());
        assert_eq!(rehash(SEED, &k[..n]), 2600);
    }

    #[test]
    fn select_rehashes_from_the_last_hash() {
        // Weights 1,1,1: 4855 % 3 = 1, then 4376 % 3 = 2.
        let ring = Ring::new(&[1, 1, 1]);
        let ip: IpAddr = "10.20.30.40".parse().unwrap();
        let mut at = Progress::default();
        assert_eq!(ring.select(ip, &mut at, |_| true), Some(1));
        let mut at = Progress::default();
        assert_eq!(ring.select(ip, &mut at, |i| i != 1), Some(2));
        let mut at = Progress::default();
        assert_eq!(ring.select(ip, &mut at, |_| false), None);
        assert_eq!(at.rehashes, MAX_TRIES + 1);
    }
}
