//! nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`).
//!
//! Each eligible server's `current` grows by its weight; the largest wins and gives back the
//! total. With weights 5:1:1 this yields a a b a c a a rather than bursts. Pingora's own
//! weighted selection repeats a backend `weight` times, which is not the sequence nginx users
//! see, hence this small copy of the algorithm.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest schedule kept; larger total weights use the O(n) pick only.
const MAX_SCHEDULE: u64 = 1 << 20;
/// Slots tried before falling back to the O(n) pick over the servers still eligible.
const SKIPS: usize = 8;

/// nginx's smooth sequence for one whole period (the total weight), computed once per config.
/// While every server is eligible a pick is one atomic increment, O(1) and lock-free; an
/// ineligible server's slot passes its turn to the next slot.
#[derive(Debug, Default)]
pub struct Schedule {
    seq: Vec<u32>,
    cursor: AtomicUsize,
}

impl Schedule {
    pub fn build(weights: &[u32]) -> Schedule {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        if total == 0 || total > MAX_SCHEDULE {
            return Schedule::default();
        }
        let mut cur = vec![0i64; weights.len()];
        let seq = (0..total)
            .filter_map(|_| pick(&mut cur, weights, |_| true).map(|i| i as u32))
            .collect();
        Schedule {
            seq,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The next eligible server in the sequence, or `None` after a few ineligible slots.
    #[inline]
    pub fn next(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        if self.seq.is_empty() {
            return None;
        }
        for _ in 0..SKIPS.min(self.seq.len()) {
            let n = self.cursor.fetch_add(1, Ordering::Relaxed);
            let i = self.seq[n % self.seq.len()] as usize;
            if eligible(i) {
                return Some(i);
            }
        }
        None
    }
}

/// Picks among servers for which `eligible(i)` holds; `current` is the per-pool state.
pub fn pick(
    current: &mut [i64],
    weights: &[u32],
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut total: i64 = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w == 0 || !eligible(i) {
            continue;
        }
        let w = i64::from(w);
        current[i] += w;
        total += w;
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let b = best?;
    current[b] -= total;
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_sequence_like_nginx() {
        let weights = [5, 1, 1];
        let mut cur = [0i64; 3];
        let seq: Vec<usize> = (0..7)
            .map(|_| pick(&mut cur, &weights, |_| true).unwrap())
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn schedule_is_the_smooth_sequence() {
        let s = Schedule::build(&[5, 1, 1]);
        let seq: Vec<usize> = (0..14).map(|_| s.next(|_| true).unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(s.next(|i| i == 2), Some(2));
    }

    #[test]
    fn skips_ineligible_and_zero_weight() {
        let weights = [1, 0, 1];
        let mut cur = [0i64; 3];
        for _ in 0..10 {
            assert_eq!(pick(&mut cur, &weights, |i| i != 0), Some(2));
        }
        assert_eq!(pick(&mut cur, &weights, |i| i == 1), None);
    }
}
