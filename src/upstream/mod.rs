//! Upstream pools: which server gets a request, and what we remember about each server.
//!
//! A [`Pool`] is immutable once built and lives inside a config snapshot, so weights and
//! policies change by swapping the whole snapshot. The mutable parts, passive-health counters
//! and per-server request counts, sit in [`PeerState`] behind an `Arc`, which a reload hands on
//! to the same server in the new snapshot so that a reload neither forgets a failing server nor
//! resets counters.

pub mod health;
pub mod ip_hash;
pub mod maglev;
pub mod round_robin;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pingora::upstreams::peer::HttpPeer;

use crate::config::Policy;

/// What survives a reload for one server of one pool.
#[derive(Debug)]
pub struct PeerState {
    /// Consecutive failures (nginx's `fails`).
    fails: AtomicU32,
    /// When the last failure happened, in ms since process start (nginx's `checked`).
    failed_at_ms: AtomicU64,
    /// Verdict of the active health check (true until a check says otherwise).
    pub healthy: AtomicBool,
    /// Requests being served by this server now (for `max_conns`).
    pub active: AtomicU32,
    /// Requests sent to this server.
    pub requests: AtomicU64,
    /// Attempts that failed (connect, timeout, reset).
    pub failures: AtomicU64,
}

impl Default for PeerState {
    fn default() -> Self {
        PeerState {
            fails: AtomicU32::new(0),
            failed_at_ms: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            active: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }
}

/// One server of a pool.
#[derive(Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub weight: u32,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub down: bool,
    /// Used only when no primary server is usable.
    pub backup: bool,
    /// At most this many requests at once (0 = no limit).
    pub max_conns: u32,
    /// Built once; cloned per request so that Pingora's connection pool sees the same peer.
    pub http: HttpPeer,
    pub state: Arc<PeerState>,
}

impl Peer {
    /// A server with nginx's defaults (`max_fails=1 fail_timeout=10s`), up, with fresh state.
    pub fn new(addr: SocketAddr, weight: u32) -> Peer {
        Peer {
            addr,
            weight,
            max_fails: crate::config::DEFAULT_MAX_FAILS,
            fail_timeout: crate::config::DEFAULT_FAIL_TIMEOUT,
            down: false,
            backup: false,
            max_conns: 0,
            http: HttpPeer::new(addr, false, String::new()),
            state: Arc::default(),
        }
    }

    /// nginx's rule: after `max_fails` failures a server rests for `fail_timeout`.
    fn resting(&self, now: u64) -> bool {
        self.max_fails > 0
            && self.state.fails.load(Ordering::Relaxed) >= self.max_fails
            && now.saturating_sub(self.state.failed_at_ms.load(Ordering::Relaxed))
                <= self.fail_timeout.as_millis() as u64
    }

    pub fn record_failure(&self) {
        self.state.failures.fetch_add(1, Ordering::Relaxed);
        self.state.fails.fetch_add(1, Ordering::Relaxed);
        self.state.failed_at_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn record_success(&self) {
        // Only write when needed: a shared cache line written on every request costs throughput.
        if self.state.fails.load(Ordering::Relaxed) != 0 {
            self.state.fails.store(0, Ordering::Relaxed);
        }
    }
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Servers tried so far by one request; inline for pools of up to 128 servers.
#[derive(Debug, Default, Clone)]
pub struct Tried {
    small: u128,
    big: Vec<u64>,
}

impl Tried {
    pub fn has(&self, i: usize) -> bool {
        if i < 128 {
            self.small & (1 << i) != 0
        } else {
            let j = i - 128;
            self.big
                .get(j / 64)
                .is_some_and(|w| w & (1 << (j % 64)) != 0)
        }
    }

    pub fn add(&mut self, i: usize) {
        if i < 128 {
            self.small |= 1 << i;
        } else {
            let j = i - 128;
            if self.big.len() <= j / 64 {
                self.big.resize(j / 64 + 1, 0);
            }
            self.big[j / 64] |= 1 << (j % 64);
        }
    }
}

/// Selection state of one request across its retries.
#[derive(Debug, Clone)]
pub struct Attempt {
    hash: u32,
    rehashes: u32,
    pub tried: Tried,
    /// Servers tried so far.
    pub count: usize,
}

impl Default for Attempt {
    fn default() -> Self {
        Attempt {
            hash: ip_hash::SEED,
            rehashes: 0,
            tried: Tried::default(),
            count: 0,
        }
    }
}

/// What a request is placed by.
#[derive(Debug, Clone, Copy)]
pub enum Key {
    /// The client address (`ip_hash`).
    Ip(IpAddr),
    /// The hash of the rendered `hash_key` (`consistent`).
    Hash(u64),
    /// Nothing: round robin.
    None,
}

impl From<Option<IpAddr>> for Key {
    fn from(ip: Option<IpAddr>) -> Key {
        ip.map_or(Key::None, Key::Ip)
    }
}

/// A named pool of servers with its policy.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub policy: Policy,
    pub peers: Vec<Peer>,
    /// Primary weights (backups count 0, as they are not in nginx's primary list).
    weights: Vec<u32>,
    backup_weights: Vec<u32>,
    cumulative: Vec<u32>,
    schedule: round_robin::Schedule,
    maglev: maglev::Table,
    rr: Mutex<Vec<i64>>,
    /// Most servers one request may try (nginx's `proxy_next_upstream_tries`).
    pub max_tries: usize,
}

impl Pool {
    pub fn new(name: String, policy: Policy, peers: Vec<Peer>) -> Pool {
        let weights: Vec<u32> = peers
            .iter()
            .map(|p| if p.backup { 0 } else { p.weight })
            .collect();
        let backup_weights = peers
            .iter()
            .map(|p| if p.backup { p.weight.max(1) } else { 0 })
            .collect();
        let cumulative = weights
            .iter()
            .scan(0u32, |s, w| {
                *s += w;
                Some(*s)
            })
            .collect();
        let schedule = round_robin::Schedule::build(&weights);
        let maglev = if policy == Policy::Consistent {
            let names: Vec<String> = peers.iter().map(|p| p.addr.to_string()).collect();
            maglev::Table::build(&names, &weights)
        } else {
            maglev::Table::default()
        };
        let rr = Mutex::new(vec![0; peers.len()]);
        let max_tries = peers.len();
        Pool {
            name,
            policy,
            peers,
            weights,
            backup_weights,
            cumulative,
            schedule,
            maglev,
            rr,
            max_tries,
        }
    }

    fn usable(&self, i: usize, a: &Attempt, now: u64) -> bool {
        let p = &self.peers[i];
        !a.tried.has(i)
            && !p.down
            && p.state.healthy.load(Ordering::Relaxed)
            && (self.peers.len() == 1 || !p.resting(now))
            && (p.max_conns == 0 || p.state.active.load(Ordering::Relaxed) < p.max_conns)
    }

    /// Picks the next server for a request, or `None` when none is left (nginx's "no live
    /// upstreams"). Backups are tried only when no primary is usable.
    pub fn select(&self, key: impl Into<Key>, a: &mut Attempt) -> Option<usize> {
        let now = now_ms();
        let picked = match (self.policy, key.into()) {
            (Policy::IpHash, Key::Ip(ip)) => self.select_ip_hash(ip, a, now),
            (Policy::Consistent, Key::Hash(h)) => self.select_consistent(h, a, now),
            (Policy::Consistent, Key::Ip(ip)) => {
                let text = ip.to_string();
                self.select_consistent(maglev::hash(text.as_bytes(), 0), a, now)
            }
            _ => self.select_rr(a, now),
        }
        .or_else(|| self.select_backup(a, now));
        match picked {
            Some(i) => {
                a.tried.add(i);
                a.count += 1;
                self.peers[i].state.requests.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                // nginx: when every server failed, forget the failures for a quick recovery.
                for p in &self.peers {
                    p.state.fails.store(0, Ordering::Relaxed);
                }
            }
        }
        picked
    }

    fn select_ip_hash(&self, ip: IpAddr, a: &mut Attempt, now: u64) -> Option<usize> {
        if self.peers.len() == 1 || a.rehashes > ip_hash::MAX_TRIES {
            return self.select_rr(a, now);
        }
        let (key, len) = ip_hash::key(ip);
        let mut hash = a.hash;
        loop {
            hash = ip_hash::rehash(hash, &key[..len]);
            let i = ip_hash::slot(hash, &self.cumulative);
            if self.usable(i, a, now) {
                a.hash = hash;
                return Some(i);
            }
            a.rehashes += 1;
            if a.rehashes > ip_hash::MAX_TRIES {
                a.hash = hash;
                return self.select_rr(a, now);
            }
        }
    }

    /// The key's server, or, if it cannot take the request, the next one the same key rehashes
    /// to: keys of usable servers never move.
    fn select_consistent(&self, key: u64, a: &mut Attempt, now: u64) -> Option<usize> {
        let mut h = key;
        for t in 0..=ip_hash::MAX_TRIES {
            let i = self.maglev.get(h)?;
            if self.usable(i, a, now) {
                return Some(i);
            }
            h = maglev::mix(key ^ u64::from(t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        self.select_rr(a, now)
    }

    fn select_rr(&self, a: &Attempt, now: u64) -> Option<usize> {
        let eligible = |i: usize| self.weights[i] > 0 && self.usable(i, a, now);
        if let Some(i) = self.schedule.next(eligible) {
            return Some(i);
        }
        let mut cur = self.rr.lock().unwrap_or_else(|e| e.into_inner());
        round_robin::pick(&mut cur, &self.weights, eligible)
    }

    fn select_backup(&self, a: &Attempt, now: u64) -> Option<usize> {
        if !self.peers.iter().any(|p| p.backup) {
            return None;
        }
        let mut cur = self.rr.lock().unwrap_or_else(|e| e.into_inner());
        round_robin::pick(&mut cur, &self.backup_weights, |i| self.usable(i, a, now))
    }

    /// Whether another server could still be tried after `a`.
    pub fn can_retry(&self, a: &Attempt) -> bool {
        a.count < self.max_tries.min(self.peers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(policy: Policy, weights: &[u32]) -> Pool {
        let peers = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Peer::new(SocketAddr::from(([127, 0, 0, 1], 20000 + i as u16)), w))
            .collect();
        Pool::new("p".into(), policy, peers)
    }

    #[test]
    fn ip_hash_is_sticky_and_rehashes_past_failures() {
        let p = pool(Policy::IpHash, &[1, 1, 1]);
        let ip: IpAddr = "10.0.7.9".parse().unwrap();
        let first = p.select(Some(ip), &mut Attempt::default()).unwrap();
        for _ in 0..10 {
            assert_eq!(p.select(Some(ip), &mut Attempt::default()), Some(first));
        }
        // The same /24 lands on the same server.
        assert_eq!(
            p.select(Some("10.0.7.200".parse().unwrap()), &mut Attempt::default()),
            Some(first)
        );
        p.peers[first].record_failure();
        let mut a = Attempt::default();
        let second = p.select(Some(ip), &mut a).unwrap();
        assert_ne!(second, first);
        p.peers[first].record_success();
        assert_eq!(p.select(Some(ip), &mut Attempt::default()), Some(first));
    }

    #[test]
    fn retries_exhaust_the_pool() {
        let p = pool(Policy::IpHash, &[1, 1]);
        let mut a = Attempt::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(p.select(Some(ip), &mut a).is_some());
        assert!(p.can_retry(&a));
        assert!(p.select(Some(ip), &mut a).is_some());
        assert!(!p.can_retry(&a));
        assert_eq!(p.select(Some(ip), &mut a), None);
    }

    #[test]
    fn tried_set_beyond_inline() {
        let mut t = Tried::default();
        for i in [0, 127, 128, 500] {
            t.add(i);
        }
        assert!(t.has(0) && t.has(127) && t.has(128) && t.has(500));
        assert!(!t.has(1) && !t.has(129) && !t.has(1000));
    }

    #[test]
    fn zero_weight_gets_no_clients() {
        let p = pool(Policy::IpHash, &[1, 0]);
        for x in 0..=255u8 {
            let ip = IpAddr::from([10, x, 1, 1]);
            assert_eq!(p.select(Some(ip), &mut Attempt::default()), Some(0));
        }
    }
}
