//! The automatic ramp: each canary with `steps` moves from step to step while its analysis
//! passes, and back to 0% when it fails more often than allowed.
//!
//! It runs as a background service of every worker ([`Ramp`]), but only the generation that
//! leads (holds the state file's lock, see `store::Lead`) drives: while an upgrade's old and
//! new generations overlap, the old one decides until it is told to drain, then gives the lead
//! up; the new one takes it, adopts what the old one changed meanwhile (the step, failures,
//! percent) from the state file, and goes on with a fresh window. So no transition is lost or
//! made twice. A reload in place keeps the canary's state object, its position and its window.
//! Every change is made under the store's `changing` lock (as the API's are), logged as one
//! line, counted in `graygate_canary_transitions_total` and written to the state file.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::analysis::{judge, Sample, SideSnap, Verdict, Window};
use super::{percent_text, unix_now, Phase, Position, Status, BUCKETS};
use crate::plan::{CanaryPlan, Plan};
use crate::snapshot::Live;

/// How often the ramp looks at its canaries.
const TICK: Duration = Duration::from_millis(100);
/// How often a chart sample is taken, and how much history is kept.
const SAMPLE: Duration = Duration::from_secs(2);
const HISTORY: u64 = 30 * 60;

/// `where` of a step for people: "step 2 of 4 (25%)".
fn step_text(steps: &[u32], i: usize) -> String {
    format!(
        "step {} of {} ({}%)",
        i + 1,
        steps.len(),
        percent_text(steps.get(i).copied().unwrap_or(0))
    )
}

/// Both sides' cumulative counts: this gateway's and, in a fleet, those the other gateways
/// publish (issue 19): the leader judges the fleet's sums.
fn totals(c: &CanaryPlan) -> [SideSnap; 2] {
    let own = [c.state.sides[0].snap(), c.state.sides[1].snap()];
    match crate::fleet::agent::others(&c.name) {
        Some([st, ca]) => [own[0].plus(&st), own[1].plus(&ca)],
        None => own,
    }
}

/// A window opening now.
fn open(c: &CanaryPlan) -> Window {
    Window::at(totals(c))
}

/// `start`: the first step, a fresh window. Err when the canary has no steps.
pub fn start(
    c: &CanaryPlan,
    pos: &mut Position,
    who: &str,
) -> Result<(u32, Phase, String), String> {
    let Some(r) = &c.ramp else {
        return Err(format!(
            "canary \"{}\" has no steps (manual mode: use set)",
            c.name
        ));
    };
    *pos = Position {
        step: Some(0),
        failures: 0,
        window: Some(open(c)),
    };
    Ok((
        r.steps[0],
        Phase::Running,
        format!("started by {who}: {}", step_text(&r.steps, 0)),
    ))
}

/// `resume`: back to the ramp's step with a fresh window, or manual when no ramp runs.
pub fn resume(c: &CanaryPlan, old: &Status, pos: &mut Position, who: &str) -> (u32, Phase, String) {
    match (&c.ramp, pos.step) {
        (Some(r), Some(i)) => {
            let i = i.min(r.steps.len() - 1);
            pos.step = Some(i);
            pos.window = Some(open(c));
            (
                r.steps[i],
                Phase::Running,
                format!("resumed by {who} at {}", step_text(&r.steps, i)),
            )
        }
        _ => (old.percent_bp, Phase::Manual, format!("resumed by {who}")),
    }
}

/// One look at canary `c`: the status to set when its analysis is due and changes something.
pub fn tick(c: &CanaryPlan, now: Instant) -> Option<Status> {
    let old = c.state.status();
    if !old.phase.ramping() {
        return None;
    }
    let mut pos = c.state.position();
    let (Some(r), Some(i)) = (&c.ramp, pos.step) else {
        pos.step = None;
        return Some(Status {
            percent_bp: old.percent_bp,
            phase: Phase::Manual,
            since: unix_now(),
            why: "the configuration has no steps any more: manual".into(),
        });
    };
    let i = i.min(r.steps.len() - 1);
    pos.step = Some(i);
    let Some(w) = &pos.window else {
        // A new process (restart, upgrade): the window starts now.
        pos.window = Some(open(c));
        return None;
    };
    if now.duration_since(w.started) < r.interval {
        return None;
    }
    let counts = w.counts_of(&totals(c));
    let at = percent_text(old.percent_bp);
    let new = |percent_bp, phase, why| {
        Some(Status {
            percent_bp,
            phase,
            since: unix_now(),
            why,
        })
    };
    match judge(&r.analysis, &counts, &at) {
        Verdict::TooFew { have, need } => {
            // The window goes on until it has enough requests; said once.
            let why = format!(
                "waiting at {}: {have} of {need} canary requests needed for an analysis",
                step_text(&r.steps, i)
            );
            (old.phase != Phase::Waiting).then_some(())?;
            new(old.percent_bp, Phase::Waiting, why)
        }
        Verdict::Pass(how) => {
            let next = i + 1;
            match r.steps.get(next).filter(|&&bp| bp < BUCKETS) {
                Some(&bp) => {
                    *pos = Position {
                        step: Some(next),
                        failures: pos.failures,
                        window: Some(open(c)),
                    };
                    new(
                        bp,
                        Phase::Running,
                        format!(
                            "{}: analysis at {at}% passed ({how})",
                            step_text(&r.steps, next)
                        ),
                    )
                }
                None => {
                    *pos = Position::default();
                    new(
                        BUCKETS,
                        Phase::Promoted,
                        format!("promoted: the last analysis at {at}% passed ({how})"),
                    )
                }
            }
        }
        Verdict::Fail(reason) => {
            pos.failures = pos.failures.saturating_add(1);
            if pos.failures > r.analysis.failures_allowed {
                *pos = Position::default();
                return new(0, Phase::RolledBack, reason);
            }
            pos.window = Some(open(c));
            new(
                old.percent_bp,
                Phase::Running,
                format!(
                    "analysis failed ({} of {} allowed), {} again: {reason}",
                    pos.failures,
                    r.analysis.failures_allowed,
                    step_text(&r.steps, i)
                ),
            )
        }
    }
}

/// Logs a change of `c` as one line and counts the transition (once the state file has it:
/// a process that dies in between leaves a change that the next one finds and does not redo).
pub fn announce(c: &CanaryPlan, old: &Status, new: &Status, by: &str) {
    crate::metrics::transition(&c.name, old.phase, new.phase);
    log::warn!(
        "canary \"{}\": percent {} -> {}, state {} -> {} (by {by}: {})",
        c.name,
        percent_text(old.percent_bp),
        percent_text(new.percent_bp),
        old.phase.name(),
        new.phase.name(),
        new.why
    );
}

/// Seconds until the next analysis of `c`, when its ramp runs.
pub fn next_analysis_in(c: &CanaryPlan) -> Option<f64> {
    let r = c.ramp.as_ref()?;
    if !c.state.status().phase.ramping() {
        return None;
    }
    let pos = c.state.position();
    let w = pos.window.as_ref()?;
    Some(r.interval.saturating_sub(w.started.elapsed()).as_secs_f64())
}

/// The background service driving every canary's ramp and sampling the chart.
#[derive(Clone)]
pub struct Ramp {
    pub live: Live,
    /// Set when this generation drains: another process drives the canaries from then on.
    pub draining: Arc<AtomicBool>,
}

impl Ramp {
    /// One look at every canary, on a blocking thread: it waits for the store's lock and may
    /// write the state file.
    fn look(&self, now: Instant) {
        let snap = self.live.load_full();
        let store = Arc::clone(&snap.plan.store);
        let mut lead = store.changing();
        if self.draining.load(Ordering::Acquire) {
            if !lead.retired() {
                lead.retire();
                log::info!("canary ramps handed over: this worker generation drains");
            }
            crate::fleet::agent::resign();
            return;
        }
        // While an older generation still leads (an upgrade's overlap), it alone decides.
        if !super::persist::lead(&self.live, &mut lead) {
            return;
        }
        // In a fleet, one gateway (elected through etcd) runs the ramps; the others follow
        // the state it writes.
        if !crate::fleet::agent::drives() {
            return;
        }
        let snap = self.live.load_full();
        let plan: &Plan = &snap.plan;
        let mut changed = Vec::new();
        for c in &plan.canaries {
            let old = c.state.status();
            // The position before the look, to go back to if the fleet refuses the step.
            let before = old.phase.ramping().then(|| c.state.position().clone());
            if let Some(new) = tick(c, now) {
                changed.push((c, old, new, before));
            }
        }
        if changed.is_empty() {
            return;
        }
        // In a fleet the step goes to etcd first, fenced on this gateway still leading (a
        // leader that was stopped past its lease must not move its successor's ramp back) and
        // on the canary's value in etcd being the one this step was worked out from (an abort
        // or pause from another gateway that this one has not applied yet is not undone).
        let saved: Vec<_> = changed
            .iter()
            .map(|(c, _, new, _)| {
                let pos = c.state.position().clone();
                (c.name.as_str(), super::persist::saved_canary(c, new, &pos))
            })
            .collect();
        let writes: Vec<_> = saved
            .iter()
            .map(|(n, s)| crate::fleet::agent::Change::Canary(n, s))
            .collect();
        if let Err(e) = crate::fleet::agent::publish(&writes, true) {
            for (c, _, new, before) in &changed {
                if let Some(p) = before {
                    *c.state.position() = p.clone();
                }
                // Changed meanwhile: the newer value applies here next; the ramp looks again
                // from it.
                if matches!(e, crate::fleet::agent::Refused::Conflict(_)) {
                    log::debug!("canary \"{}\": ramp step dropped: {e}", c.name);
                } else {
                    log::warn!(
                        "canary \"{}\": ramp change not made (\"{}\"): {e}",
                        c.name,
                        new.why
                    );
                }
            }
            return;
        }
        for (c, _, new, _) in &changed {
            c.state.set(new);
        }
        super::persist::save(plan);
        for (c, old, new, _) in &changed {
            announce(c, old, new, "ramp");
        }
    }
}

/// Appends one chart sample per canary: what each side did since the last one.
fn sample(plan: &Plan, last: &mut Vec<(String, [SideSnap; 2], Instant)>) {
    let now = Instant::now();
    let mut next = Vec::with_capacity(plan.canaries.len());
    for c in &plan.canaries {
        let cur = [c.state.sides[0].snap(), c.state.sides[1].snap()];
        if let Some((_, prev, t)) = last.iter().find(|(n, _, _)| n == &c.name) {
            let secs = now.duration_since(*t).as_secs_f64();
            let s = Sample {
                t: unix_now(),
                percent: f64::from(c.state.percent_bp()) / 100.0,
                stable: cur[0].since(&prev[0]).numbers(secs),
                canary: cur[1].since(&prev[1]).numbers(secs),
            };
            let mut h = c.state.history.lock().unwrap_or_else(|e| e.into_inner());
            while h.front().is_some_and(|f: &Sample| f.t + HISTORY < s.t) {
                h.pop_front();
            }
            h.push_back(s);
        }
        next.push((c.name.clone(), cur, now));
    }
    *last = next;
}

/// The newest chart sample of `c`.
pub fn latest(c: &CanaryPlan) -> Option<Sample> {
    let h = c.state.history.lock().unwrap_or_else(|e| e.into_inner());
    h.back().cloned()
}

/// The chart samples of `c`, oldest first.
pub fn history(c: &CanaryPlan) -> VecDeque<Sample> {
    c.state
        .history
        .lock()
        .map(|h| h.clone())
        .unwrap_or_default()
}

#[async_trait]
impl BackgroundService for Ramp {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last = Vec::new();
        let mut sampled = Instant::now();
        sample(&self.live.load().plan, &mut last);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            // Without canaries there is nothing to drive once this generation leads (and no
            // blocking thread to wake every tick).
            let idle = {
                let snap = self.live.load();
                snap.plan.canaries.is_empty() && snap.plan.store.leads() == Some(true)
            };
            if idle {
                continue;
            }
            let now = Instant::now();
            let me = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || me.look(now)).await {
                log::error!("canary ramp: {e}");
            }
            if now.duration_since(sampled) >= SAMPLE {
                sampled = now;
                sample(&self.live.load().plan, &mut last);
            }
        }
    }
}
