//! Upstream pools: which server gets a request, and what we remember about each server.
//!
//! A [`Pool`] is immutable once built and lives inside a config snapshot, so weights and
//! policies change by swapping the whole snapshot. It holds a [`Selector`] (what its policy
//! needs: ip_hash's weight ring, round robin's schedule, the Maglev table) and what every policy
//! shares: the servers, nginx's round-robin state that the hashing policies fall back to, and
//! the backups. The mutable per-server facts, passive health and the active count, sit in
//! [`PeerState`] behind an `Arc`, which a reload hands on to the same server in the new snapshot
//! so that a reload neither forgets a failing server nor a request in flight.

pub mod health;
pub mod ip_hash;
pub mod maglev;
mod peer;
pub mod round_robin;

use std::net::IpAddr;

use crate::config::Policy;
use peer::now_ms;
pub use peer::{Peer, PeerState};
use round_robin::{Candidates, Schedule, Smooth};

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
#[derive(Debug, Default, Clone)]
pub struct Attempt {
    ip_hash: ip_hash::Progress,
    pub tried: Tried,
    /// Servers tried so far.
    pub count: usize,
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

/// What each policy adds to the shared parts of a pool.
#[derive(Debug)]
pub enum Selector {
    IpHash(ip_hash::Ring),
    /// The precomputed smooth sequence over [`Pool`]'s round-robin state.
    RoundRobin(Schedule),
    Consistent(maglev::Table),
}

/// A named pool of servers with its policy.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub policy: Policy,
    pub peers: Vec<Peer>,
    /// Most servers one request may try (nginx's `proxy_next_upstream_tries`).
    pub max_tries: usize,
    selector: Selector,
    /// nginx's current weights over the primaries: round robin itself, and where ip_hash and
    /// consistent go when hashing finds no usable server.
    primaries: Smooth,
    /// The same over the backups, if any.
    backups: Option<Smooth>,
    /// One server, a primary (nginx's `single`): no passive health, as nginx, since
    /// sidelining the only server helps no one.
    single: bool,
}

/// The servers as one request sees them at one moment.
struct View<'a> {
    pool: &'a Pool,
    tried: &'a Tried,
    now: u64,
}

impl Candidates for View<'_> {
    #[inline]
    fn usable(&self, i: usize) -> bool {
        !self.tried.has(i) && self.pool.peers[i].available(self.now, !self.pool.single)
    }

    fn deficit(&self, i: usize) -> u32 {
        self.pool.peers[i].deficit()
    }

    fn ramp(&self, i: usize) {
        self.pool.peers[i].ramp();
    }

    #[inline]
    fn steady(&self, i: usize) -> bool {
        let p = &self.pool.peers[i];
        p.steady() && !p.down && p.healthy()
    }
}

impl Pool {
    pub fn new(name: String, policy: Policy, peers: Vec<Peer>) -> Pool {
        // ip_hash and Maglev place clients over every primary, down ones included (nginx
        // lands on them and moves on); round robin counts only those that can be picked.
        let placed: Vec<u32> = peers
            .iter()
            .map(|p| if p.backup { 0 } else { p.weight })
            .collect();
        let primaries = Smooth::new(
            peers
                .iter()
                .map(|p| if p.backup || p.down { 0 } else { p.weight })
                .collect(),
        );
        let backups = peers.iter().any(|p| p.backup).then(|| {
            Smooth::new(
                peers
                    .iter()
                    .map(|p| {
                        if p.backup && !p.down {
                            p.weight.max(1)
                        } else {
                            0
                        }
                    })
                    .collect(),
            )
        });
        let selector = match policy {
            Policy::IpHash => Selector::IpHash(ip_hash::Ring::new(&placed)),
            Policy::RoundRobin => {
                // After a reload the servers may still carry failures: start exact then.
                let steady = peers
                    .iter()
                    .all(|p| p.backup || p.down || p.weight == 0 || (p.steady() && p.healthy()));
                Selector::RoundRobin(Schedule::build(&primaries, steady))
            }
            Policy::Consistent => {
                let names: Vec<String> = peers.iter().map(|p| p.addr.to_string()).collect();
                Selector::Consistent(maglev::Table::build(&names, &placed))
            }
        };
        let single = peers.len() == 1 && !peers[0].backup;
        let max_tries = peers.len();
        Pool {
            name,
            policy,
            peers,
            max_tries,
            selector,
            primaries,
            backups,
            single,
        }
    }

    /// Picks the next server for a request, or `None` when none is left (nginx's "no live
    /// upstreams"). Backups are tried only when no primary is usable.
    pub fn select(&self, key: impl Into<Key>, a: &mut Attempt) -> Option<usize> {
        self.select_at(key.into(), a, now_ms())
    }

    fn select_at(&self, key: Key, a: &mut Attempt, now: u64) -> Option<usize> {
        let first = a.count == 0;
        let view = View {
            pool: self,
            tried: &a.tried,
            now,
        };
        let usable = |i| view.usable(i);
        let picked = if self.single {
            // nginx's `single`: no hashing, no weights, no passive health.
            usable(0).then_some(0)
        } else {
            let hashed = match (&self.selector, key) {
                (Selector::IpHash(ring), Key::Ip(ip)) => ring.select(ip, &mut a.ip_hash, usable),
                (Selector::Consistent(t), Key::Hash(h)) => t.select(h, usable),
                (Selector::Consistent(t), Key::Ip(ip)) => t.select(maglev::hash_ip(ip), usable),
                _ => None,
            };
            hashed
                .or_else(|| match &self.selector {
                    Selector::RoundRobin(s) if first => s.next(&self.primaries, &view),
                    Selector::RoundRobin(s) => s.next_retry(&self.primaries, &view),
                    _ => self.primaries.pick(&view),
                })
                .or_else(|| self.backups.as_ref()?.pick(&view))
        };
        if let Some(i) = picked {
            a.tried.add(i);
            a.count += 1;
            self.peers[i].picked(now);
        }
        picked
    }

    /// [`Pool::select`], taking the server's `max_conns` slot in the same step (see
    /// [`Peer::try_reserve`]): a server that filled up since it was seen free counts as full
    /// and the next one is picked. The caller gives the slot back (`active -= 1`).
    pub fn select_reserved(&self, key: impl Into<Key>, a: &mut Attempt) -> Option<usize> {
        let key = key.into();
        loop {
            let i = self.select(key, a)?;
            if self.peers[i].try_reserve() {
                return Some(i);
            }
        }
    }

    /// Whether another server could still take `a`'s request: the tries left and a server
    /// that is usable now (a down, weight-0, resting or full server does not count).
    pub fn can_retry(&self, a: &Attempt) -> bool {
        if a.count >= self.max_tries.min(self.peers.len()) {
            return false;
        }
        let view = View {
            pool: self,
            tried: &a.tried,
            now: now_ms(),
        };
        let primary = self
            .peers
            .iter()
            .enumerate()
            .any(|(i, p)| !p.backup && p.weight > 0 && view.usable(i));
        primary
            || (self.backups.is_some()
                && (self.peers.iter().enumerate()).any(|(i, p)| p.backup && view.usable(i)))
    }

    /// Server `i` failed this request (connect error, reset, timeout, invalid response, a
    /// status to retry on): nginx's passive-health bookkeeping.
    pub fn failed(&self, i: usize) {
        self.failed_at(i, now_ms());
    }

    fn failed_at(&self, i: usize, now: u64) {
        let Some(p) = self.peers.get(i) else { return };
        if self.single {
            return;
        }
        p.failed(now);
        if let Selector::RoundRobin(s) = &self.selector {
            if !p.backup {
                s.desync(&self.primaries);
            }
        }
    }

    /// Server `i` served this request with no fault of its own.
    #[inline]
    pub fn succeeded(&self, i: usize) {
        if let Some(p) = self.peers.get(i) {
            if !self.single {
                p.succeeded();
            }
        }
    }
}

#[cfg(test)]
mod tests;
