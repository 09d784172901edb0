//! nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`), with effective weights.
//!
//! Each server that may take the pick adds its effective weight to its `current` weight; the
//! largest wins and gives back the sum. With weights 5:1:1 this yields a a b a c a a rather
//! than bursts. A failure lowers the effective weight (see [`super::peer`]), each pass raises it
//! by one, so a server that just failed comes back gradually. Pingora's own weighted selection
//! repeats a backend `weight` times, which is not the sequence nginx users see.
//!
//! [`Smooth`] is the exact algorithm, O(n) under a lock. [`Schedule`] makes the common case
//! O(1) and lock-free: while every server is usable at full weight, nginx's sequence is
//! periodic, so it is computed once and a pick is one atomic increment. The first pick that
//! finds a server out of that state hands over to [`Smooth`], with the `current` weights the
//! schedule had reached; once every server is steady again the schedule is rebuilt from the
//! weights `Smooth` reached, so the sequence stays nginx's across both (see [`MAX_REBUILD`]
//! for very large pools).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Longest schedule kept; larger total weights use [`Smooth`] only.
const MAX_SCHEDULE: u64 = 1 << 20;
/// Largest `period * servers` for which the schedule is rebuilt from the state `Smooth`
/// reached (that many steps, under the lock). Larger pools go back to the schedule's own
/// start instead: the same smooth sequence and shares, though not the order nginx would have
/// continued in after the disturbance (which no client of a pool that size could tell).
const MAX_REBUILD: u64 = 1 << 22;

/// What the pick needs to know about the servers, from the pool and the request.
pub trait Candidates {
    /// Whether server `i` may take this request: not yet tried by it, up, healthy, not
    /// resting after failures, below `max_conns`.
    fn usable(&self, i: usize) -> bool;
    /// How far below its weight failures have pushed server `i`.
    fn deficit(&self, i: usize) -> u32;
    /// nginx's `effective_weight++` for server `i`.
    fn ramp(&self, i: usize);
    /// Server `i` is up, healthy, has no failure on record and is at full weight: the
    /// state in which the precomputed schedule is nginx's sequence.
    fn steady(&self, i: usize) -> bool;
}

/// One pass of nginx's pick over `weights` (0 = not in this list); `current` is the state.
fn step(current: &mut [i64], weights: &[u32], c: &impl Candidates) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut total: i64 = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w == 0 || !c.usable(i) {
            continue;
        }
        let deficit = c.deficit(i).min(w);
        let eff = i64::from(w - deficit);
        current[i] += eff;
        total += eff;
        if deficit > 0 {
            c.ramp(i);
        }
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let b = best?;
    current[b] -= total;
    Some(b)
}

/// The same pass with every server usable at full weight.
fn steady_step(current: &mut [i64], weights: &[u32], total: i64) -> usize {
    let mut best = 0;
    let mut found = false;
    for (i, &w) in weights.iter().enumerate() {
        if w == 0 {
            continue;
        }
        current[i] += i64::from(w);
        if !found || current[i] > current[best] {
            best = i;
            found = true;
        }
    }
    current[best] -= total;
    best
}

struct State {
    current: Vec<i64>,
    /// Steady picks to wait before trying to rebuild the schedule again.
    rebuild_in: u64,
}

/// nginx's `current` weights for one list of servers (the primaries or the backups).
#[derive(Debug)]
pub struct Smooth {
    weights: Vec<u32>,
    total: u64,
    state: Mutex<State>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("current", &self.current)
            .finish()
    }
}

impl Smooth {
    /// `weights[i]` is server `i`'s weight in this list, 0 if it is not in it.
    pub fn new(weights: Vec<u32>) -> Smooth {
        let total = weights.iter().map(|&w| u64::from(w)).sum();
        let n = weights.len();
        Smooth {
            weights,
            total,
            state: Mutex::new(State {
                current: vec![0; n],
                rebuild_in: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exact O(n) pick.
    pub fn pick(&self, c: &impl Candidates) -> Option<usize> {
        step(&mut self.lock().current, &self.weights, c)
    }
}

/// nginx's sequence for one period, valid while `synced`.
#[derive(Debug, Default)]
pub struct Schedule {
    seq: Box<[AtomicU32]>,
    cursor: AtomicUsize,
    /// The `current` weights the sequence starts from (read under [`Smooth`]'s lock).
    base: Mutex<Vec<i64>>,
    synced: AtomicBool,
}

impl Schedule {
    /// The schedule for `smooth`'s weights, starting from all-zero `current` weights as nginx
    /// does; `steady` says whether every server is steady now (after a reload it may not be).
    pub fn build(smooth: &Smooth, steady: bool) -> Schedule {
        if smooth.total == 0 || smooth.total > MAX_SCHEDULE {
            return Schedule::default();
        }
        let mut current = vec![0i64; smooth.weights.len()];
        let total = smooth.total as i64;
        let seq = (0..smooth.total)
            .map(|_| AtomicU32::new(steady_step(&mut current, &smooth.weights, total) as u32))
            .collect();
        Schedule {
            seq,
            cursor: AtomicUsize::new(0),
            base: Mutex::new(current),
            synced: AtomicBool::new(steady),
        }
    }

    /// Picks for a request's first attempt: from the schedule while it holds, else exactly.
    pub fn next(&self, smooth: &Smooth, c: &impl Candidates) -> Option<usize> {
        if self.synced.load(Ordering::Acquire) {
            let n = self.cursor.fetch_add(1, Ordering::Relaxed);
            let i = self.seq[n % self.seq.len()].load(Ordering::Relaxed) as usize;
            if c.usable(i) && c.steady(i) {
                return Some(i);
            }
            let mut st = smooth.lock();
            self.leave(smooth, &mut st, n);
            return self.pick(smooth, &mut st, c);
        }
        let mut st = smooth.lock();
        self.pick(smooth, &mut st, c)
    }

    /// Picks for a retry: the tried servers sit this pick out, which nginx's sequence feels.
    pub fn next_retry(&self, smooth: &Smooth, c: &impl Candidates) -> Option<usize> {
        let mut st = smooth.lock();
        if self.synced.load(Ordering::Acquire) {
            let n = self.cursor.load(Ordering::Relaxed);
            self.leave(smooth, &mut st, n);
        }
        self.pick(smooth, &mut st, c)
    }

    /// A server failed: the sequence changes from now on.
    pub fn desync(&self, smooth: &Smooth) {
        if self.synced.load(Ordering::Acquire) {
            let mut st = smooth.lock();
            let n = self.cursor.load(Ordering::Relaxed);
            self.leave(smooth, &mut st, n);
        }
    }

    /// Hands over to `smooth` with the `current` weights the schedule had before its pick `n`.
    fn leave(&self, smooth: &Smooth, st: &mut State, n: usize) {
        if !self.synced.swap(false, Ordering::AcqRel) {
            return;
        }
        let len = self.seq.len();
        let p = n % len;
        let base = self.base.lock().unwrap_or_else(|e| e.into_inner());
        st.current.clone_from(&base);
        for (i, w) in smooth.weights.iter().enumerate() {
            st.current[i] += p as i64 * i64::from(*w);
        }
        let total = smooth.total as i64;
        for slot in &self.seq[..p] {
            st.current[slot.load(Ordering::Relaxed) as usize] -= total;
        }
        // Wait a period before rebuilding: a server briefly at `max_conns` must not cost a
        // rebuild per request.
        st.rebuild_in = smooth.total;
    }

    fn pick(&self, smooth: &Smooth, st: &mut State, c: &impl Candidates) -> Option<usize> {
        let picked = step(&mut st.current, &smooth.weights, c);
        if !self.seq.is_empty() {
            self.maybe_rebuild(smooth, st, c);
        }
        picked
    }

    /// Once every server is steady, rebuilds the schedule from where `smooth` stands, if that
    /// state recurs after one period (it nearly always does; if not, it is tried again a
    /// period later). At most one rebuild per period keeps the cost O(n) per pick.
    fn maybe_rebuild(&self, smooth: &Smooth, st: &mut State, c: &impl Candidates) {
        let all_steady = || {
            smooth
                .weights
                .iter()
                .enumerate()
                .all(|(i, &w)| w == 0 || c.steady(i))
        };
        if st.rebuild_in > 0 {
            st.rebuild_in -= 1;
            return;
        }
        if !all_steady() {
            return;
        }
        st.rebuild_in = smooth.total;
        if smooth.total.saturating_mul(smooth.weights.len() as u64) > MAX_REBUILD {
            st.current
                .clone_from(&self.base.lock().unwrap_or_else(|e| e.into_inner()));
            self.cursor.store(0, Ordering::Relaxed);
            self.synced.store(true, Ordering::Release);
            return;
        }
        let total = smooth.total as i64;
        let mut cur = st.current.clone();
        let mut seq = Vec::with_capacity(self.seq.len());
        for _ in 0..smooth.total {
            seq.push(steady_step(&mut cur, &smooth.weights, total) as u32);
        }
        if cur != st.current {
            return;
        }
        for (slot, i) in self.seq.iter().zip(seq) {
            slot.store(i, Ordering::Relaxed);
        }
        self.base
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone_from(&st.current);
        self.cursor.store(0, Ordering::Relaxed);
        self.synced.store(true, Ordering::Release);
    }

    /// Whether picks come from the precomputed sequence now.
    #[cfg(test)]
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Servers with settable usability and deficits, as the pool would report them.
    struct Fake {
        usable: Vec<bool>,
        deficit: RefCell<Vec<u32>>,
    }

    impl Fake {
        fn new(n: usize) -> Fake {
            Fake {
                usable: vec![true; n],
                deficit: RefCell::new(vec![0; n]),
            }
        }
    }

    impl Candidates for Fake {
        fn usable(&self, i: usize) -> bool {
            self.usable[i]
        }
        fn deficit(&self, i: usize) -> u32 {
            self.deficit.borrow()[i]
        }
        fn ramp(&self, i: usize) {
            self.deficit.borrow_mut()[i] -= 1;
        }
        fn steady(&self, i: usize) -> bool {
            self.usable[i] && self.deficit.borrow()[i] == 0
        }
    }

    #[test]
    fn smooth_sequence_like_nginx() {
        let s = Smooth::new(vec![5, 1, 1]);
        let c = Fake::new(3);
        let seq: Vec<usize> = (0..7).map(|_| s.pick(&c).unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn schedule_is_the_smooth_sequence() {
        let s = Smooth::new(vec![5, 1, 1]);
        let sch = Schedule::build(&s, true);
        let c = Fake::new(3);
        let seq: Vec<usize> = (0..14).map(|_| sch.next(&s, &c).unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
        assert!(sch.synced());
    }

    #[test]
    fn effective_weight_ramps_back_one_per_pass() {
        // Weights 3:1, server 0 lowered to effective weight 0 (as by 1 failure, max_fails 1):
        // nginx's sequence, worked from its get_peer: current and effective per pass.
        let s = Smooth::new(vec![3, 1]);
        let c = Fake::new(2);
        c.deficit.borrow_mut()[0] = 3;
        let seq: Vec<usize> = (0..8).map(|_| s.pick(&c).unwrap()).collect();
        // pass 1: cur [0,1] total 1 -> b ; cur [0,0], eff0 1
        // pass 2: cur [1,1] total 2 -> a ; cur [-1,1], eff0 2
        // pass 3: cur [1,2] total 3 -> b ; cur [1,-1], eff0 3
        // pass 4: cur [4,0] total 4 -> a ; cur [0,0]  (full weight from here: a a b a ...)
        assert_eq!(seq, vec![1, 0, 1, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn hand_over_and_back_keeps_nginx_sequence() {
        // The schedule, interrupted by a server out for two picks, must give what Smooth alone
        // gives for the same events.
        let weights = vec![1, 1, 1];
        let (s1, s2) = (Smooth::new(weights.clone()), Smooth::new(weights));
        let sch = Schedule::build(&s1, true);
        let mut c = Fake::new(3);
        let mut fast = Vec::new();
        let mut exact = Vec::new();
        for k in 0..40 {
            c.usable[1] = !(4..6).contains(&k);
            fast.push(sch.next(&s1, &c).unwrap());
            exact.push(s2.pick(&c).unwrap());
        }
        assert_eq!(fast, exact);
        assert!(sch.synced(), "back on the schedule once all are steady");
    }

    #[test]
    fn skips_unusable_and_zero_weight() {
        let s = Smooth::new(vec![1, 0, 1]);
        let mut c = Fake::new(3);
        c.usable[0] = false;
        for _ in 0..10 {
            assert_eq!(s.pick(&c), Some(2));
        }
        c.usable[2] = false;
        assert_eq!(s.pick(&c), None);
    }
}
