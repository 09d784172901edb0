//! Live values to and from the state file: saved after every live change, restored when a
//! worker starts (restart or upgrade), each only where the config file still says what it said
//! when the value was set.

use crate::config;
use crate::plan::Plan;

use super::store::{Saved, SavedCanary};
use super::{percent_text, Phase, Status};

/// Every live value of `plan`, as the state file holds them.
pub fn saved_of(plan: &Plan) -> Saved {
    Saved {
        canaries: plan
            .canaries
            .iter()
            .map(|c| {
                let s = c.state.status();
                let (step, failures) = {
                    let p = c.state.position();
                    (p.step, p.failures)
                };
                let saved = SavedCanary {
                    step,
                    failures,
                    percent_bp: s.percent_bp,
                    state: s.phase.name().to_string(),
                    since: s.since,
                    why: s.why,
                    file_bp: c.file_bp,
                };
                (c.name.clone(), saved)
            })
            .collect(),
        weights: plan.store.weights(),
    }
}

/// Writes the state file of `plan`; a failure is logged (the live change stays in effect).
pub fn save(plan: &Plan) {
    if let Err(e) = plan.store.write(&saved_of(plan)) {
        log::error!("{e}");
    }
}

/// Applies the state file to a freshly compiled `plan` (no previous plan in this process).
/// Returns the plan to run: recompiled when live weights apply.
pub fn restore(plan: Plan) -> Plan {
    let saved = match plan.store.read() {
        Ok(Some(s)) => s,
        Ok(None) => return plan,
        Err(e) => {
            log::error!("state file ignored: {e}");
            return plan;
        }
    };
    for c in &plan.canaries {
        let Some(sc) = saved.canaries.get(&c.name) else {
            continue;
        };
        if sc.file_bp != c.file_bp {
            log::warn!(
                "canary \"{}\": the configuration file's percent changed ({} -> {}): it wins over the state file's {}",
                c.name,
                percent_text(sc.file_bp),
                percent_text(c.file_bp),
                percent_text(sc.percent_bp)
            );
            continue;
        }
        let phase = Phase::from_name(&sc.state).unwrap_or(Phase::Manual);
        let mut why = sc.why.clone();
        if let (Some(r), Some(i)) = (&c.ramp, sc.step) {
            let mut pos = c.state.position();
            pos.step = Some(i.min(r.steps.len().saturating_sub(1)));
            pos.failures = sc.failures;
            // The window's counts lived in the old process: a new window starts now.
            if phase.ramping() {
                why = format!(
                    "resumed at step {} of {} after a restart (the analysis window restarted); before: {}",
                    i + 1,
                    r.steps.len(),
                    sc.why.split("; before: ").last().unwrap_or("")
                );
            }
        }
        c.state.set(&Status {
            percent_bp: sc.percent_bp,
            phase,
            since: sc.since,
            why,
        });
        log::info!(
            "canary \"{}\": percent {} ({}) restored from {}",
            c.name,
            percent_text(sc.percent_bp),
            sc.state,
            plan.store.path.display()
        );
    }
    if saved.weights.is_empty() {
        return plan;
    }
    plan.store.set_weights(saved.weights);
    match recompile(&plan) {
        Ok(p) => p,
        Err(e) => {
            log::error!("live weights of the state file not applied: {e}");
            plan.store.set_weights(Vec::new());
            plan
        }
    }
}

/// Compiles the text `plan` runs again, with `plan` as the previous plan (so live weights of
/// its store and all live state carry over).
pub fn recompile(plan: &Plan) -> Result<Plan, String> {
    let src = &plan.source;
    config::parse(src.name.clone(), &src.text, src.embedded)
        .and_then(|l| Plan::compile(&l, Some(plan)))
        .map_err(|p| p.to_string())
}
