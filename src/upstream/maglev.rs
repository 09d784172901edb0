//! `policy: consistent`: weighted Maglev hashing (Eisenbud et al., NSDI 2016).
//!
//! Chosen on the measurements in bench/CONSISTENT.md: Maglev answers in O(1) (one table
//! lookup), keeps each server within about 2% of its weight with a table of at least 100 slots
//! per server, and moves 1.02x the theoretical minimum of keys when a server joins, leaves or
//! changes weight. Pingora's Ketama needs O(log n) per lookup and, with 160 points per weight
//! unit, leaves servers about 5% off their weight; rendezvous hashing is exact but O(n) per
//! request.

use std::io::Write;
use std::net::IpAddr;

/// Rehashes after a key's own slot before the pick falls back to round robin. When a share `f`
/// of the table belongs to servers that cannot take the request, `k` lookups all miss with
/// probability `f^k`: 21 lookups keep that under one in a million while half of the weight is
/// out, and cost little when every server is out.
const MAX_REHASHES: u32 = 20;

/// FNV-1a with a murmur3 finalizer: stable across builds and processes, so the same key maps to
/// the same server in every generation of the gateway.
pub fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// murmur3's 64-bit finalizer.
pub fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The key of a client address when `hash_key` is not set: the hash of its text form
/// (`10.0.0.1`, `2001:db8::1`), formatted on the stack.
pub fn hash_ip(ip: IpAddr) -> u64 {
    let mut buf = [0u8; 48];
    let mut w = &mut buf[..];
    let _ = write!(w, "{ip}");
    let len = 48 - w.len();
    hash(&buf[..len], 0)
}

const PRIMES: [u64; 6] = [65_537, 131_071, 262_139, 524_287, 1_048_573, 2_097_143];

/// The lookup table: slot -> server index.
#[derive(Debug, Default)]
pub struct Table {
    slots: Vec<u32>,
}

impl Table {
    /// Builds the table for servers named `names` with `weights` (0 = no slots).
    pub fn build(names: &[String], weights: &[u32]) -> Table {
        let live: Vec<usize> = (0..names.len()).filter(|&i| weights[i] > 0).collect();
        if live.is_empty() {
            return Table::default();
        }
        let want = 100 * live.len() as u64;
        let m = PRIMES
            .iter()
            .copied()
            .find(|&p| p >= want)
            .unwrap_or(PRIMES[PRIMES.len() - 1]);
        let max_w = live.iter().map(|&i| weights[i]).max().unwrap_or(1);
        // (offset, skip, next j) per live server.
        let mut perm: Vec<(u64, u64, u64)> = live
            .iter()
            .map(|&i| {
                let n = names[i].as_bytes();
                (
                    hash(n, 0x5eed_0001) % m,
                    hash(n, 0x5eed_0002) % (m - 1) + 1,
                    0,
                )
            })
            .collect();
        let mut slots = vec![u32::MAX; m as usize];
        let mut filled = 0u64;
        // Weighted turns: in each pass, server k claims a slot if its credit reaches max_w.
        let mut credit: Vec<u32> = vec![0; live.len()];
        'fill: loop {
            for (k, &i) in live.iter().enumerate() {
                credit[k] += weights[i];
                if credit[k] < max_w {
                    continue;
                }
                credit[k] -= max_w;
                let (off, skip, next) = &mut perm[k];
                loop {
                    let c = ((*off + *next * *skip) % m) as usize;
                    *next += 1;
                    if slots[c] == u32::MAX {
                        slots[c] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break 'fill;
                }
            }
        }
        Table { slots }
    }

    /// The server for `h`, if the table has any.
    #[inline]
    pub fn get(&self, h: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        Some(self.slots[(h % self.slots.len() as u64) as usize] as usize)
    }

    /// The key's server, or, if it cannot take the request, the next one the same key rehashes
    /// to: keys of usable servers never move. `None` sends the pick to round robin.
    pub fn select(&self, key: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let mut h = key;
        for t in 0..=MAX_REHASHES {
            let i = self.get(h)?;
            if usable(i) {
                return Some(i);
            }
            h = mix(key ^ u64::from(t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:80", i / 250, i % 250))
            .collect()
    }

    fn owners(t: &Table, keys: u64) -> Vec<usize> {
        (0..keys)
            .map(|k| t.get(hash(&k.to_le_bytes(), 0)).unwrap())
            .collect()
    }

    #[test]
    fn load_follows_weights() {
        let n = names(4);
        let t = Table::build(&n, &[1, 1, 2, 4]);
        let o = owners(&t, 200_000);
        let share = |i| o.iter().filter(|&&x| x == i).count() as f64 / o.len() as f64;
        for (i, want) in [(0, 0.125), (1, 0.125), (2, 0.25), (3, 0.5)] {
            assert!(
                (share(i) - want).abs() / want < 0.03,
                "server {i}: {} vs {want}",
                share(i)
            );
        }
    }

    #[test]
    fn ip_key_is_the_hash_of_its_text() {
        for ip in [
            "10.0.0.1",
            "255.255.255.255",
            "2001:db8::1",
            "::ffff:10.1.2.3",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(hash_ip(ip), hash(ip.to_string().as_bytes(), 0));
        }
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap();
        assert_eq!(hash_ip(longest), hash(longest.to_string().as_bytes(), 0));
    }

    #[test]
    fn join_moves_close_to_the_minimum() {
        let n = names(9);
        let before = owners(&Table::build(&n[..8], &[1; 8]), 100_000);
        let after = owners(&Table::build(&n, &[1; 9]), 100_000);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / 1e5;
        assert!(moved <= 1.10 / 9.0, "moved {moved}");
    }
}
