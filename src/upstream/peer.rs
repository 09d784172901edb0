//! One server of a pool, and nginx's passive health for it.
//!
//! The rules are those of nginx's `ngx_http_upstream_round_robin.c` (1.22), shared by every
//! policy:
//! - a failed attempt sets `fails += 1` and `accessed = checked = now`, and lowers the
//!   effective weight by `weight / max_fails` (not below 0);
//! - a server with `fails >= max_fails` rests while `now - checked <= fail_timeout`;
//! - a pick of a server whose `checked` is older than `fail_timeout` sets `checked = now`;
//! - a success resets `fails` only if that happened after the last failure
//!   (`accessed < checked`): a server failing every other request is not kept alive by the
//!   requests in between;
//! - each round-robin pass that considers a server raises its effective weight by one, back up
//!   to its weight.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pingora::upstreams::peer::HttpPeer;

/// What survives a reload for one server of one pool.
///
/// Shared by every worker thread, so the request path only reads it while the server is
/// healthy: each field is written on a failure, on the recovery after one, or by the active
/// checks. Per-server request counters (for the metrics of the canary issue) do not belong
/// here: a counter bumped on every request would make every thread write this cache line.
/// They will be per-thread and summed when read.
#[derive(Debug)]
pub struct PeerState {
    /// Failures since the last reset (nginx's `fails`).
    fails: AtomicU32,
    /// Time of the last failure (nginx's `accessed`), in ms on [`now_ms`]'s clock.
    accessed_ms: AtomicU64,
    /// nginx's `checked`: the last failure, or the last pick after `fail_timeout` had passed.
    checked_ms: AtomicU64,
    /// `weight - effective_weight`: kept as a shortfall so that a reload that changes the
    /// weight keeps a healthy server at its full new weight.
    deficit: AtomicU32,
    /// Verdict of the active health check (true until a check says otherwise).
    pub healthy: AtomicBool,
    /// Requests being served by this server now (for `max_conns`).
    pub active: AtomicU32,
}

impl Default for PeerState {
    fn default() -> Self {
        PeerState {
            fails: AtomicU32::new(0),
            accessed_ms: AtomicU64::new(0),
            checked_ms: AtomicU64::new(0),
            deficit: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            active: AtomicU32::new(0),
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
    /// A uwsgi server on a unix socket (`addr` is then a placeholder).
    pub unix: Option<Arc<std::path::Path>>,
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
            unix: None,
        }
    }

    fn fail_timeout_ms(&self) -> u64 {
        u64::try_from(self.fail_timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// After `max_fails` failures a server rests for `fail_timeout` from its last check.
    pub(crate) fn resting(&self, now: u64) -> bool {
        self.max_fails > 0
            && self.state.fails.load(Ordering::Relaxed) >= self.max_fails
            && now.saturating_sub(self.state.checked_ms.load(Ordering::Relaxed))
                <= self.fail_timeout_ms()
    }

    /// Whether this server may take a request at all (not counting what one request tried).
    pub(crate) fn available(&self, now: u64, passive: bool) -> bool {
        !self.down
            && self.healthy()
            && (!passive || !self.resting(now))
            && (self.max_conns == 0 || self.state.active.load(Ordering::Relaxed) < self.max_conns)
    }

    /// Takes one of the `max_conns` slots, in one atomic step: checking and then taking would
    /// let two requests that both saw the last slot free take it both. Always succeeds (and
    /// counts nothing) without `max_conns`. The slot goes back with `active -= 1`.
    #[inline]
    pub fn try_reserve(&self) -> bool {
        self.max_conns == 0
            || self
                .state
                .active
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |a| {
                    (a < self.max_conns).then_some(a + 1)
                })
                .is_ok()
    }

    #[inline]
    pub(crate) fn healthy(&self) -> bool {
        self.state.healthy.load(Ordering::Relaxed)
    }

    /// No failure on record and at full weight: nothing for passive health to update.
    #[inline]
    pub(crate) fn steady(&self) -> bool {
        self.state.fails.load(Ordering::Relaxed) == 0
            && self.state.deficit.load(Ordering::Relaxed) == 0
    }

    /// Failures on record (nginx's `fails`).
    pub fn fails(&self) -> u32 {
        self.state.fails.load(Ordering::Relaxed)
    }

    /// How far below its weight failures have pushed this server.
    #[inline]
    pub(crate) fn deficit(&self) -> u32 {
        self.state.deficit.load(Ordering::Relaxed)
    }

    /// One step back towards the full weight (nginx: `effective_weight++` on each pass).
    pub(crate) fn ramp(&self) {
        let _ = self
            .state
            .deficit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1));
    }

    /// nginx's bookkeeping when a request is sent to this server: once `fail_timeout` has
    /// passed since the last check, this pick is a new check.
    #[inline]
    pub(crate) fn picked(&self, now: u64) {
        // With no failure on record `checked` is never read before a failure sets it.
        if self.state.fails.load(Ordering::Relaxed) == 0 {
            return;
        }
        let checked = self.state.checked_ms.load(Ordering::Relaxed);
        if now.saturating_sub(checked) > self.fail_timeout_ms() {
            self.state.checked_ms.store(now, Ordering::Relaxed);
        }
    }

    /// An attempt on this server failed because of the server (nginx's `NGX_PEER_FAILED`).
    pub(crate) fn failed(&self, now: u64) {
        let st = &self.state;
        st.fails.fetch_add(1, Ordering::Relaxed);
        st.accessed_ms.store(now, Ordering::Relaxed);
        st.checked_ms.store(now, Ordering::Relaxed);
        // nginx: `effective_weight -= weight / max_fails`, not below 0 (none with max_fails 0).
        let drop = self.weight.checked_div(self.max_fails).unwrap_or(0);
        if drop > 0 {
            let cap = self.weight;
            let _ = st
                .deficit
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                    Some(d.saturating_add(drop).min(cap))
                });
        }
    }

    /// A request on this server ended without a server fault: `fails` is forgiven only if
    /// the server was checked again after its last failure.
    #[inline]
    pub(crate) fn succeeded(&self) {
        let st = &self.state;
        // Only write when needed: a shared cache line written on every request costs throughput.
        if st.fails.load(Ordering::Relaxed) != 0
            && st.accessed_ms.load(Ordering::Relaxed) < st.checked_ms.load(Ordering::Relaxed)
        {
            st.fails.store(0, Ordering::Relaxed);
        }
    }

    /// Forgets passive failures at once: for the active checks, whose passing probes prove the
    /// server alive.
    pub fn record_success(&self) {
        if self.state.fails.load(Ordering::Relaxed) != 0 {
            self.state.fails.store(0, Ordering::Relaxed);
        }
    }
}

/// Milliseconds since this process first asked: the clock of passive health.
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many threads racing for one slot: never two inside at once (known fault 13).
    #[test]
    fn max_conns_is_never_exceeded_by_racing_requests() {
        let mut p = Peer::new("127.0.0.1:1".parse().unwrap(), 1);
        p.max_conns = 1;
        let p = Arc::new(p);
        let inside = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (p, inside, most) = (p.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if p.try_reserve() {
                            let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(n, Ordering::SeqCst);
                            inside.fetch_sub(1, Ordering::SeqCst);
                            p.state.active.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert_eq!(p.state.active.load(Ordering::SeqCst), 0);
        // Full: refused without counting.
        assert!(p.try_reserve());
        assert!(!p.try_reserve());
        assert_eq!(p.state.active.load(Ordering::SeqCst), 1);
    }
}
