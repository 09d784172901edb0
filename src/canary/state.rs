//! The live state of a canary: read by every request without a lock, changed by the admin API,
//! handed from plan to plan on reload (as `PeerState` is for servers).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use super::analysis::{Sample, SideStats, Window};
use super::bucket::BUCKETS;

/// Where the automatic ramp of a canary is.
#[derive(Debug, Clone, Default)]
pub struct Position {
    /// Index into the canary's steps; `None` when no ramp was started (or it ended).
    pub step: Option<usize>,
    /// Failed analyses at this ramp so far.
    pub failures: u32,
    /// The current analysis window (not in the state file: a new process starts a new one).
    pub window: Option<Window>,
}

/// Where a canary stands. `Manual` is a percent set by hand (or by the file); `Running` and
/// `Waiting` are the automatic ramp at a step (waiting: too few requests for a verdict); the
/// others are the outcome of an operation or of the ramp. The numbers are stable (metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Manual = 0,
    Paused = 1,
    Aborted = 2,
    Promoted = 3,
    Running = 4,
    Waiting = 5,
    RolledBack = 6,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Manual,
        Phase::Paused,
        Phase::Aborted,
        Phase::Promoted,
        Phase::Running,
        Phase::Waiting,
        Phase::RolledBack,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Manual => "manual",
            Phase::Paused => "paused",
            Phase::Aborted => "aborted",
            Phase::Promoted => "promoted",
            Phase::Running => "running",
            Phase::Waiting => "waiting",
            Phase::RolledBack => "rolled back",
        }
    }

    /// Whether the automatic ramp is driving the percent.
    pub fn ramping(self) -> bool {
        matches!(self, Phase::Running | Phase::Waiting)
    }

    pub fn from_name(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == s)
    }

    fn from_u8(v: u8) -> Phase {
        Phase::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(Phase::Manual)
    }
}

/// Which pool of a canary a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Stable = 0,
    Canary = 1,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Stable => "stable",
            Side::Canary => "canary",
        }
    }

    pub fn other(self) -> Side {
        match self {
            Side::Stable => Side::Canary,
            Side::Canary => Side::Stable,
        }
    }
}

/// Percent, phase and counters of one canary. Percents are kept in basis points (1/100 of a
/// percent), the unit of the 10,000 buckets, so that the request path compares integers.
#[derive(Debug)]
pub struct CanaryState {
    percent_bp: AtomicU32,
    phase: AtomicU8,
    /// The config file's percent when it was last loaded: a reload applies the file's value
    /// only if it differs from this (the user edited it).
    pub(crate) file_bp: AtomicU32,
    /// Unix seconds of the last change.
    since: AtomicU64,
    why: Mutex<String>,
    /// Requests routed to each side.
    pub requests: [AtomicU64; 2],
    /// Requests that went to the other side because theirs had no usable server.
    pub fallbacks: [AtomicU64; 2],
    /// Whether the side is falling back now (to log the start and end once, not per request).
    falling_back: [AtomicBool; 2],
    /// Answered requests of each side, cumulative (the analysis diffs copies).
    pub sides: [SideStats; 2],
    /// The automatic ramp (changed under the store's `changing` lock).
    pub ramp: Mutex<Position>,
    /// Samples of the last 30 minutes for the page's chart.
    pub history: Mutex<std::collections::VecDeque<Sample>>,
}

/// A copy of the changeable part of a [`CanaryState`].
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub percent_bp: u32,
    pub phase: Phase,
    pub since: u64,
    pub why: String,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl CanaryState {
    pub fn new(percent_bp: u32) -> CanaryState {
        CanaryState {
            percent_bp: AtomicU32::new(percent_bp.min(BUCKETS)),
            phase: AtomicU8::new(Phase::Manual as u8),
            file_bp: AtomicU32::new(percent_bp),
            since: AtomicU64::new(unix_now()),
            why: Mutex::new("configuration file".into()),
            requests: Default::default(),
            fallbacks: Default::default(),
            falling_back: Default::default(),
            sides: Default::default(),
            ramp: Mutex::default(),
            history: Mutex::default(),
        }
    }

    /// The request path's read: one relaxed load.
    #[inline]
    pub fn percent_bp(&self) -> u32 {
        self.percent_bp.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> Status {
        Status {
            percent_bp: self.percent_bp(),
            phase: Phase::from_u8(self.phase.load(Ordering::Relaxed)),
            since: self.since.load(Ordering::Relaxed),
            why: self.why.lock().map(|w| w.clone()).unwrap_or_default(),
        }
    }

    /// Sets percent and phase (callers serialise changes; readers see either value).
    pub fn set(&self, s: &Status) {
        self.percent_bp
            .store(s.percent_bp.min(BUCKETS), Ordering::Relaxed);
        self.phase.store(s.phase as u8, Ordering::Relaxed);
        self.since.store(s.since, Ordering::Relaxed);
        if let Ok(mut w) = self.why.lock() {
            w.clone_from(&s.why);
        }
    }

    /// The ramp position (a poisoned lock still holds a usable value).
    pub fn position(&self) -> std::sync::MutexGuard<'_, Position> {
        self.ramp.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes whether `side` falls back now; true when that changed (to log once).
    pub fn note_fallback(&self, side: Side, now: bool) -> bool {
        let f = &self.falling_back[side as usize];
        // A load first: the common case (no change) writes nothing.
        f.load(Ordering::Relaxed) != now && f.swap(now, Ordering::Relaxed) != now
    }
}

/// A percent in basis points as text: `25`, `0.5`, `12.25`.
pub fn percent_text(bp: u32) -> String {
    let (whole, frac) = (bp / 100, bp % 100);
    match frac {
        0 => format!("{whole}"),
        f if f % 10 == 0 => format!("{whole}.{}", f / 10),
        f => format!("{whole}.{f:02}"),
    }
}

/// A percent 0..100 with at most two decimals, in basis points.
pub fn percent_bp(p: f64) -> Result<u32, String> {
    if !p.is_finite() || !(0.0..=100.0).contains(&p) {
        return Err(format!("percent must be 0..100, not {p}"));
    }
    let bp = (p * 100.0).round();
    if (bp - p * 100.0).abs() > 1e-6 {
        return Err(format!("percent has at most two decimals, not {p}"));
    }
    Ok(bp as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percents() {
        assert_eq!(percent_bp(0.5), Ok(50));
        assert_eq!(percent_bp(100.0), Ok(10_000));
        assert_eq!(percent_bp(12.25), Ok(1225));
        assert!(percent_bp(100.5).is_err());
        assert!(percent_bp(-1.0).is_err());
        assert!(percent_bp(0.125).is_err());
        assert!(percent_bp(f64::NAN).is_err());
        assert_eq!(percent_text(50), "0.5");
        assert_eq!(percent_text(1225), "12.25");
        assert_eq!(percent_text(2500), "25");
        assert_eq!(percent_text(5), "0.05");
    }

    #[test]
    fn fallback_transitions_once() {
        let s = CanaryState::new(0);
        assert!(s.note_fallback(Side::Canary, true));
        assert!(!s.note_fallback(Side::Canary, true));
        assert!(s.note_fallback(Side::Canary, false));
        assert!(!s.note_fallback(Side::Canary, false));
    }
}
