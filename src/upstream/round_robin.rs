//! nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`).
//!
//! Each eligible server's `current` grows by its weight; the largest wins and gives back the
//! total. With weights 5:1:1 this yields a a b a c a a rather than bursts. Pingora's own
//! weighted selection repeats a backend `weight` times, which is not the sequence nginx users
//! see, hence this small copy of the algorithm.

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
    fn skips_ineligible_and_zero_weight() {
        let weights = [1, 0, 1];
        let mut cur = [0i64; 3];
        for _ in 0..10 {
            assert_eq!(pick(&mut cur, &weights, |i| i != 0), Some(2));
        }
        assert_eq!(pick(&mut cur, &weights, |i| i == 1), None);
    }
}
