//! The comparison of a canary's two sides over a window of requests, and its verdict.
//!
//! Each side counts its answered requests, its 5xx (the gateway's own 502/504 included: they
//! are what the users of that side got) and a duration histogram, cumulatively and lock-free
//! ([`SideStats`], one call per request from the proxy's logging phase). A window is a copy of
//! those counters at its start; its numbers are the difference at any later time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::metrics::histogram::{Counts, Histogram};

/// Cumulative counts of one side of a canary.
#[derive(Debug, Default)]
pub struct SideStats {
    pub answered: AtomicU64,
    pub errors: AtomicU64,
    pub duration: Histogram,
}

impl SideStats {
    /// One answered request.
    #[inline]
    pub fn record(&self, status: u16, took: Duration) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe(took);
    }

    pub fn snap(&self) -> SideSnap {
        SideSnap {
            answered: self.answered.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            duration: self.duration.counts(),
        }
    }
}

/// Counts of one side at an instant, or over a window (a difference of two).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SideSnap {
    pub answered: u64,
    pub errors: u64,
    pub duration: Counts,
}

impl SideSnap {
    /// Both counts together (a fleet's gateways, issue 19).
    pub fn plus(&self, other: &SideSnap) -> SideSnap {
        let mut d = self.clone();
        // Saturating: another gateway's counts come from etcd, unchecked.
        d.answered = d.answered.saturating_add(other.answered);
        d.errors = d.errors.saturating_add(other.errors);
        d.duration.sum_us = d.duration.sum_us.saturating_add(other.duration.sum_us);
        for (o, b) in d.duration.buckets.iter_mut().zip(&other.duration.buckets) {
            *o = o.saturating_add(*b);
        }
        d
    }

    pub fn since(&self, earlier: &SideSnap) -> SideSnap {
        SideSnap {
            answered: self.answered.saturating_sub(earlier.answered),
            errors: self.errors.saturating_sub(earlier.errors),
            duration: self.duration.since(&earlier.duration),
        }
    }

    /// Share of 5xx (0..1); `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.answered > 0).then(|| self.errors as f64 / self.answered as f64)
    }

    /// Numbers for the API and the page, over `secs` seconds.
    pub fn numbers(&self, secs: f64) -> Numbers {
        let ms = |q| self.duration.quantile(q).map(|d| d.as_secs_f64() * 1e3);
        Numbers {
            requests: self.answered,
            rps: if secs > 0.0 {
                self.answered as f64 / secs
            } else {
                0.0
            },
            error_rate: self.error_rate().map(|r| r * 100.0),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
        }
    }
}

/// What one side did over a span of time, as the API shows it (rates in percent).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Numbers {
    pub requests: u64,
    pub rps: f64,
    pub error_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One point of the page's chart: the last few seconds of both sides.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// Unix seconds at the end of the sample.
    pub t: u64,
    pub percent: f64,
    pub stable: Numbers,
    pub canary: Numbers,
}

/// An analysis window: the counters of both sides when it opened.
#[derive(Debug, Clone)]
pub struct Window {
    pub started: Instant,
    pub started_unix: u64,
    pub base: [SideSnap; 2],
}

impl Window {
    pub fn open(sides: &[SideStats; 2]) -> Window {
        Window {
            started: Instant::now(),
            started_unix: super::unix_now(),
            base: [sides[0].snap(), sides[1].snap()],
        }
    }

    /// A window from counts taken elsewhere (a fleet's sums).
    pub fn at(base: [SideSnap; 2]) -> Window {
        Window {
            started: Instant::now(),
            started_unix: super::unix_now(),
            base,
        }
    }

    /// The counts `now` since the window opened.
    pub fn counts_of(&self, now: &[SideSnap; 2]) -> [SideSnap; 2] {
        [now[0].since(&self.base[0]), now[1].since(&self.base[1])]
    }

    /// Both sides' counts since the window opened.
    pub fn counts(&self, sides: &[SideStats; 2]) -> [SideSnap; 2] {
        [
            sides[0].snap().since(&self.base[0]),
            sides[1].snap().since(&self.base[1]),
        ]
    }
}

/// The bounds a canary must hold at each step (`analysis` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// Canary requests needed in a window for a verdict (at least 1: no traffic never passes).
    pub min_requests: u64,
    /// Share 0..1.
    pub max_error_rate: Option<f64>,
    pub max_error_rate_vs_stable: Option<f64>,
    pub max_p99: Option<Duration>,
    pub max_p99_vs_stable: Option<f64>,
    pub failures_allowed: u32,
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            min_requests: 1,
            max_error_rate: None,
            max_error_rate_vs_stable: None,
            max_p99: None,
            max_p99_vs_stable: None,
            failures_allowed: 0,
        }
    }
}

/// The outcome of one analysis.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Fewer canary requests than `min_requests`: no verdict yet.
    TooFew { have: u64, need: u64 },
    /// Every bound held; the text says by how much.
    Pass(String),
    /// A bound did not hold; the text says which, in words and numbers.
    Fail(String),
}

/// A share 0..1 as a percent with at most two decimals: `7.2%`, `1%`.
pub fn rate_text(r: f64) -> String {
    let s = format!("{:.2}", r * 100.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

/// A duration as people read latencies: `912ms`, `1.5s`.
pub fn ms_text(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Judges window `w` (stable, canary) of a canary at `percent` (text) against `a`.
pub fn judge(a: &Analysis, w: &[SideSnap; 2], percent: &str) -> Verdict {
    let [stable, canary] = w;
    let need = a.min_requests.max(1);
    if canary.answered < need {
        return Verdict::TooFew {
            have: canary.answered,
            need,
        };
    }
    let over = format!("over {} requests at {percent}%", canary.answered);
    let rate = canary.error_rate().unwrap_or(0.0);
    if let Some(max) = a.max_error_rate {
        if rate > max {
            return Verdict::Fail(format!(
                "error rate {} > {} {over}",
                rate_text(rate),
                rate_text(max)
            ));
        }
    }
    if let (Some(k), Some(sr)) = (a.max_error_rate_vs_stable, stable.error_rate()) {
        if rate > k * sr {
            return Verdict::Fail(format!(
                "error rate {} > {k} x stable's {} {over}",
                rate_text(rate),
                rate_text(sr)
            ));
        }
    }
    let p99 = canary.duration.quantile(0.99).unwrap_or_default();
    if let Some(max) = a.max_p99 {
        if p99 > max {
            return Verdict::Fail(format!("p99 {} > {} {over}", ms_text(p99), ms_text(max)));
        }
    }
    if let (Some(k), Some(sp)) = (a.max_p99_vs_stable, stable.duration.quantile(0.99)) {
        if p99.as_secs_f64() > k * sp.as_secs_f64() {
            return Verdict::Fail(format!(
                "p99 {} > {k} x stable's {} {over}",
                ms_text(p99),
                ms_text(sp)
            ));
        }
    }
    Verdict::Pass(format!(
        "error rate {}, p99 {} {over}",
        rate_text(rate),
        ms_text(p99)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_saturates_on_counts_from_another_gateway() {
        let mut big = SideSnap {
            answered: u64::MAX,
            errors: u64::MAX - 1,
            ..SideSnap::default()
        };
        big.duration.sum_us = u64::MAX;
        big.duration.buckets[0] = u64::MAX;
        let one = side(1, 1, 5);
        let sum = big.plus(&one);
        assert_eq!(sum.answered, u64::MAX);
        assert_eq!(sum.errors, u64::MAX);
        assert_eq!(sum.duration.sum_us, u64::MAX);
        assert_eq!(sum.duration.buckets[0], u64::MAX);
    }

    fn side(n: u64, errors: u64, ms: u64) -> SideSnap {
        let s = SideStats::default();
        for i in 0..n {
            s.record(
                if i < errors { 502 } else { 200 },
                Duration::from_millis(ms),
            );
        }
        s.snap()
    }

    #[test]
    fn verdicts_in_words_and_numbers() {
        let a = Analysis {
            min_requests: 100,
            max_error_rate: Some(0.01),
            max_error_rate_vs_stable: Some(2.0),
            max_p99: Some(Duration::from_millis(800)),
            max_p99_vs_stable: Some(1.5),
            failures_allowed: 1,
        };
        let stable = side(1000, 0, 10);
        assert_eq!(
            judge(&a, &[stable.clone(), side(99, 0, 10)], "5"),
            Verdict::TooFew {
                have: 99,
                need: 100
            }
        );
        assert_eq!(
            judge(&a, &[stable.clone(), side(250, 18, 10)], "25"),
            Verdict::Fail("error rate 7.2% > 1% over 250 requests at 25%".into())
        );
        // 0.5% is under 1% but not under 2 x stable's 0%.
        assert_eq!(
            judge(&a, &[stable.clone(), side(200, 1, 10)], "5"),
            Verdict::Fail("error rate 0.5% > 2 x stable's 0% over 200 requests at 5%".into())
        );
        let Verdict::Fail(why) = judge(&a, &[stable.clone(), side(200, 0, 40)], "5") else {
            panic!("slow canary passed");
        };
        assert!(
            why.starts_with("p99 ") && why.contains("> 1.5 x stable's"),
            "{why}"
        );
        let Verdict::Fail(why) = judge(&a, &[side(200, 0, 900), side(200, 0, 2000)], "5") else {
            panic!("slow canary passed");
        };
        assert!(why.contains("> 800ms over 200 requests at 5%"), "{why}");
        assert!(matches!(
            judge(&a, &[stable, side(200, 0, 10)], "50"),
            Verdict::Pass(_)
        ));
        // Without bounds, traffic alone passes; no traffic never does.
        let none = Analysis::default();
        assert!(matches!(
            judge(&none, &[side(0, 0, 1), side(0, 0, 1)], "5"),
            Verdict::TooFew { have: 0, need: 1 }
        ));
    }

    #[test]
    fn texts() {
        assert_eq!(rate_text(0.072), "7.2%");
        assert_eq!(rate_text(0.01), "1%");
        assert_eq!(rate_text(0.0), "0%");
        assert_eq!(ms_text(Duration::from_millis(912)), "912ms");
    }
}
