//! A lock-free latency histogram: fixed log-spaced buckets of atomics.
//!
//! `prometheus-client`'s `Histogram` takes a mutex on every observation; the request path here
//! records one observation per request from every worker thread, so this one is a handful of
//! relaxed atomic adds. The same buckets serve `/metrics` (through [`EncodeMetric`]) and the
//! canary analysis (a [`Counts`] copy at a window's start, diffed at its end, whose quantiles
//! are read from the buckets).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds in microseconds, roughly 1-1.5-2-3-5-7.5 per decade from 0.5 ms to 60 s: a p99
/// read from them is within one bucket's width (at most 1.5x) of the true value.
pub const BOUNDS_US: [u64; 29] = [
    500, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 30_000, 50_000, 75_000,
    100_000, 150_000, 200_000, 300_000, 500_000, 750_000, 1_000_000, 1_500_000, 2_000_000,
    3_000_000, 5_000_000, 7_500_000, 10_000_000, 15_000_000, 30_000_000, 60_000_000,
];

/// Buckets, the last one above every bound (+Inf).
const N: usize = BOUNDS_US.len() + 1;

#[derive(Debug, Default)]
struct Inner {
    buckets: [AtomicU64; N],
    sum_us: AtomicU64,
}

/// A histogram of durations; clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct Histogram(Arc<Inner>);

/// A copy of a histogram's counts (not cumulative per bucket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub buckets: [u64; N],
    pub sum_us: u64,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            buckets: [0; N],
            sum_us: 0,
        }
    }
}

impl Histogram {
    #[inline]
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            sum_us: self.0.sum_us.load(Ordering::Relaxed),
            ..Counts::default()
        };
        for (o, b) in c.buckets.iter_mut().zip(&self.0.buckets) {
            *o = b.load(Ordering::Relaxed);
        }
        c
    }
}

impl Counts {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// What happened since `earlier` (counts only grow; a wrapped difference reads as 0).
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut d = Counts {
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
            ..Counts::default()
        };
        for (i, o) in d.buckets.iter_mut().enumerate() {
            *o = self.buckets[i].saturating_sub(earlier.buckets[i]);
        }
        d
    }

    /// The `q` quantile (0..1), interpolated linearly inside its bucket; `None` without
    /// observations. Above the last bound it answers that bound (nothing better is known).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let lo = if i == 0 { 0 } else { BOUNDS_US[i - 1] };
                let Some(&hi) = BOUNDS_US.get(i) else {
                    return Some(Duration::from_micros(lo));
                };
                let frac = (rank - seen as f64) / n as f64;
                let us = lo as f64 + frac * (hi - lo) as f64;
                return Some(Duration::from_micros(us as u64));
            }
            seen += n;
        }
        None
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let c = self.counts();
        let buckets: Vec<(f64, u64)> = BOUNDS_US
            .iter()
            .map(|&b| b as f64 / 1e6)
            .chain(std::iter::once(f64::INFINITY))
            .zip(c.buckets)
            .collect();
        encoder.encode_histogram::<NoLabelSet>(c.sum_us as f64 / 1e6, c.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_from_buckets() {
        let h = Histogram::default();
        for _ in 0..99 {
            h.observe(Duration::from_millis(4));
        }
        h.observe(Duration::from_millis(900));
        let c = h.counts();
        assert_eq!(c.count(), 100);
        // 4 ms lies in (3, 5] ms: the median is read inside that bucket.
        let p50 = c.quantile(0.5).unwrap();
        assert!(p50 > Duration::from_millis(3) && p50 <= Duration::from_millis(5));
        let p99 = c.quantile(0.99).unwrap();
        assert!(p99 <= Duration::from_millis(5), "{p99:?}");
        assert!(c.quantile(1.0).unwrap() > Duration::from_millis(750));
        let later = {
            h.observe(Duration::from_secs(100));
            h.counts()
        };
        let d = later.since(&c);
        assert_eq!(d.count(), 1);
        assert_eq!(d.quantile(0.99), Some(Duration::from_secs(60)));
        assert_eq!(Counts::default().quantile(0.5), None);
    }
}
