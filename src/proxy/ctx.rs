//! Per-request state of the proxy: the snapshot, the pool and attempt, the `max_conns` slot.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::plan::PoolPlan;
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
    }
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
}
