//! Per-request state of the proxy: the snapshot, the pool and attempt, the `max_conns` slot,
//! and what the access log and metrics say about it (request id, each upstream attempt).

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Reason;
use crate::plan::template::Tried;
use crate::plan::{PoolPlan, MAX_TRIES};
use crate::snapshot::Snapshot;
use crate::upstream::{Attempt, Peer, PeerState, Pool};

/// Per-request state.
#[derive(Default)]
pub struct Ctx {
    /// The snapshot this request runs on, from its first phase to its last.
    pub(super) snap: Option<Arc<Snapshot>>,
    pub(super) location: usize,
    pub(super) pool: usize,
    /// The canary and side that chose `pool`, if a canary did.
    pub(super) canary: Option<(usize, crate::canary::Side)>,
    /// Whether a location took the request (only those are counted in metrics).
    pub(super) routed: bool,
    /// When the request's header had been read (for its duration; issue 16).
    pub(super) started: Option<std::time::Instant>,
    pub(super) attempt: Attempt,
    pub(super) peer: Option<usize>,
    /// Reused buffer for rendering header values.
    pub(super) scratch: Vec<u8>,
    /// The server whose `active` count this request holds (for `max_conns`).
    pub(super) held: Option<Arc<PeerState>>,
    /// Request body bytes seen so far (`client_max_body_size` for chunked bodies).
    pub(super) body_seen: u64,
    /// nginx's `$request_id`, drawn when the request is routed.
    pub(super) request_id: u128,
    /// The server block, while this request counts as "writing" in `graygate_connections`.
    writing: Option<usize>,
    /// The upstream attempts so far (Pingora makes at most [`MAX_TRIES`]), in a fixed array so
    /// that recording them allocates nothing.
    tries: [Try; MAX_TRIES],
    ntries: usize,
    /// When the open attempt started connecting; `None` once it has ended.
    try_started: Option<Instant>,
}

/// One upstream attempt: the server (index in the pool), its status, how long it took, and
/// when it connected and got its header (times in microseconds from its start, saturating at
/// 71 minutes; [`UNSET`] for a step it never reached: 16 bytes an attempt).
#[derive(Debug, Default, Clone, Copy)]
struct Try {
    peer: u16,
    status: u16,
    took_us: u32,
    connect_us: u32,
    header_us: u32,
}

const UNSET: u32 = u32::MAX;

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(UNSET - 1)
}

fn at(us: u32) -> Option<Duration> {
    (us != UNSET).then(|| Duration::from_micros(u64::from(us)))
}

impl Try {
    fn took(&self) -> Duration {
        Duration::from_micros(u64::from(self.took_us))
    }
}

/// Gives back a request's `active` slot and keeps `state`'s, already taken by
/// [`Peer::try_reserve`], until the next attempt or the request's end.
pub(super) fn hold(held: &mut Option<Arc<PeerState>>, state: Option<&Arc<PeerState>>) {
    if let Some(old) = held.take() {
        old.active.fetch_sub(1, Ordering::Relaxed);
    }
    *held = state.cloned();
}

impl Drop for Ctx {
    fn drop(&mut self) {
        hold(&mut self.held, None);
        if let (Some(server), Some(snap)) = (self.writing, &self.snap) {
            if let Some(c) = snap.plan.metrics.conns(server) {
                c.writing.dec();
            }
        }
    }
}

/// A fresh `$request_id`: 128 random bits (splitmix64 on a per-thread state seeded from the
/// OS's randomness through std's `RandomState`); unique, not a secret.
pub(super) fn request_id() -> u128 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            h.finish()
        });
    }
    let next = || {
        STATE.with(|s| {
            let x = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            s.set(x);
            let z = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    };
    (u128::from(next()) << 64) | u128::from(next())
}

/// The pool plan a request was routed to, in its snapshot.
pub(super) fn pool_plan(snap: &Option<Arc<Snapshot>>, pool: usize) -> Option<&PoolPlan> {
    snap.as_ref().and_then(|s| s.plan.pools.get(pool))
}

impl Ctx {
    pub(super) fn pool_plan(&self) -> Option<&PoolPlan> {
        pool_plan(&self.snap, self.pool)
    }

    pub(super) fn pool(&self) -> Option<&Pool> {
        self.pool_plan().map(|p| &*p.pool)
    }

    pub(super) fn peer(&self) -> Option<&Peer> {
        self.pool()
            .and_then(|p| self.peer.and_then(|i| p.peers.get(i)))
    }

    pub(super) fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer().map(|p| p.addr)
    }

    /// Whether the pool has a server left that could take this request.
    pub(super) fn can_retry(&self) -> bool {
        self.pool().is_some_and(|p| p.can_retry(&self.attempt))
    }

    /// The request runs on `snap` in server block `server`: it counts as "writing" until it
    /// ends.
    pub(super) fn begin(&mut self, snap: Arc<Snapshot>, server: usize) {
        if let Some(c) = snap.plan.metrics.conns(server) {
            c.writing.inc();
            self.writing = Some(server);
        }
        self.snap = Some(snap);
    }

    /// An attempt on server `peer` of the pool starts connecting.
    pub(super) fn start_try(&mut self, peer: usize) {
        self.end_try();
        if let Some(t) = self.tries.get_mut(self.ntries) {
            *t = Try {
                peer: u16::try_from(peer).unwrap_or(u16::MAX),
                status: 0,
                took_us: 0,
                connect_us: UNSET,
                header_us: UNSET,
            };
            self.ntries += 1;
            self.try_started = Some(Instant::now());
        }
    }

    /// The open attempt and how long it has run.
    fn open_try(&mut self) -> Option<(&mut Try, u32)> {
        let since = micros(self.try_started?.elapsed());
        self.tries[..self.ntries].last_mut().map(|t| (t, since))
    }

    /// The open attempt has its connection (new or reused).
    pub(super) fn try_connected(&mut self) {
        if let Some((t, since)) = self.open_try() {
            t.connect_us = since;
        }
    }

    /// The open attempt's response header arrived with `status`.
    pub(super) fn try_status(&mut self, status: u16) {
        if let Some((t, since)) = self.open_try() {
            t.status = status;
            t.header_us = since;
        }
    }

    /// The open attempt is over (its response's last byte, or its failure).
    pub(super) fn end_try(&mut self) {
        if let Some(start) = self.try_started.take() {
            if let Some(t) = self.tries[..self.ntries].last_mut() {
                t.took_us = micros(start.elapsed());
            }
        }
    }

    /// The open attempt failed with the server's fault `e`: nginx's 502 (504 after a timeout)
    /// as its status unless the server had answered, and one `graygate_upstream_failures_total`.
    pub(super) fn try_failed(&mut self, e: &pingora::Error, connecting: bool) {
        let reason = Reason::of(e, connecting);
        if let Some((t, _)) = self.open_try() {
            if t.status == 0 {
                t.status = if reason == Reason::Timeout { 504 } else { 502 };
            }
        }
        self.end_try();
        if let (Some(snap), Some(peer)) = (&self.snap, self.peer) {
            snap.plan.metrics.failure(self.pool, peer, reason);
        }
    }

    /// Every attempt as the `$upstream_*` variables show it.
    pub(super) fn each_try(&self, each: &mut dyn FnMut(&Tried)) {
        let Some(pool) = self.pool() else { return };
        for t in &self.tries[..self.ntries] {
            if let Some(p) = pool.peers.get(usize::from(t.peer)) {
                each(&Tried {
                    addr: p.addr,
                    unix: p.unix.as_deref(),
                    status: t.status,
                    took: t.took(),
                    connect: at(t.connect_us),
                    header: at(t.header_us),
                });
            }
        }
    }

    /// Ends the last attempt if still open and records every attempt's time in the metrics.
    pub(super) fn finish_tries(&mut self) {
        self.end_try();
        if let Some(snap) = &self.snap {
            for t in &self.tries[..self.ntries] {
                snap.plan
                    .metrics
                    .upstream_time(self.pool, self.canary, t.took());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The per-request state lives inside Pingora's request future, which is moved into its
    /// box once per request (issue 20): it must stay small.
    #[test]
    fn ctx_is_small() {
        let n = std::mem::size_of::<super::Ctx>();
        eprintln!("size_of::<Ctx>() = {n}");
        assert!(n <= 512, "Ctx is {n} bytes");
    }
}
