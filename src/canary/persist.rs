//! Live values to and from the state file: saved after every live change, restored when a
//! worker starts (restart or upgrade) and adopted when a generation takes the lead over from
//! the one before it, each only where the config file still says what it said when the value
//! was set.

use std::sync::Arc;

use crate::config;
use crate::plan::{CanaryPlan, Plan};
use crate::snapshot::{Live, Snapshot};

use super::store::{Lead, Saved, SavedCanary, WeightOverride};
use super::{percent_text, Phase, Position, Status};

/// Every live value of `plan`, as the state file holds them.
pub fn saved_of(plan: &Plan) -> Saved {
    Saved {
        canaries: plan
            .canaries
            .iter()
            .map(|c| {
                let pos = c.state.position().clone();
                (c.name.clone(), saved_canary(c, &c.state.status(), &pos))
            })
            .collect(),
        weights: plan.weights.clone(),
    }
}

/// Canary `c` as the state file and the fleet's store hold it, at status `s` and ramp
/// position `pos` (which may not be applied yet: a fleet writes a change before applying it).
pub fn saved_canary(c: &CanaryPlan, s: &Status, pos: &Position) -> SavedCanary {
    SavedCanary {
        step: pos.step,
        failures: pos.failures,
        percent_bp: s.percent_bp,
        state: s.phase.name().to_string(),
        since: s.since,
        why: s.why.clone(),
        file_bp: c.file_bp,
    }
}

/// Writes the state file of `plan`; a failure is logged (the live change stays in effect).
/// In a fleet the change went to etcd before (`fleet::agent::publish`).
pub fn save(plan: &Plan) {
    if let Err(e) = plan.store.write(&saved_of(plan)) {
        log::error!("{e}");
    }
}

/// Applies the live values the fleet's store holds (issue 19), those that differ from ours,
/// and keeps them in the state file too. The caller holds the store's lock and passes only
/// values newer than what runs here. `weights: false`: no newer (valid) weights value, the
/// running weights stay as they are.
pub fn adopt_fleet_locked(live: &Live, fleet: &Saved, weights: bool) {
    let snap = live.load_full();
    let ours = saved_of(&snap.plan);
    let changed = Saved {
        canaries: fleet
            .canaries
            .iter()
            .filter(|(name, c)| ours.canaries.get(*name).is_some_and(|o| o != *c))
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect(),
        weights: if weights {
            fleet.weights.clone()
        } else {
            ours.weights.clone()
        },
    };
    if changed.canaries.is_empty() && changed.weights == ours.weights {
        return;
    }
    adopt(live, &snap, &changed, "from the fleet's store");
    let now = live.load_full();
    if let Err(e) = now.plan.store.write(&saved_of(&now.plan)) {
        log::error!("{e}");
    }
}

/// Sets the canaries of `plan` to what `saved` says, where the config file's percent is still
/// the one they were set over. `how` says why ("after a restart").
fn apply_canaries(plan: &Plan, saved: &Saved, how: &str) {
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
        {
            let mut pos = c.state.position();
            *pos = Position::default();
            if let (Some(r), Some(i)) = (&c.ramp, sc.step) {
                pos.step = Some(i.min(r.steps.len().saturating_sub(1)));
                pos.failures = sc.failures;
                // The window's counts lived in the other process: a new window starts when the
                // ramp next looks.
                if phase.ramping() {
                    why = format!(
                        "resumed at step {} of {} {how} (the analysis window restarted); before: {}",
                        i + 1,
                        r.steps.len(),
                        sc.why.split("; before: ").last().unwrap_or("")
                    );
                }
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
    apply_canaries(&plan, &saved, "after a restart");
    if saved.weights.is_empty() {
        return plan;
    }
    match recompile(&plan, Some(&saved.weights)) {
        Ok(p) => p,
        Err(e) => {
            log::error!("live weights of the state file not applied: {e}");
            plan
        }
    }
}

/// Compiles the text `plan` runs again, with `plan` as the previous plan (so all live state
/// carries over), and `weights` as the live weights if given (else `plan`'s).
pub fn recompile(plan: &Plan, weights: Option<&[WeightOverride]>) -> Result<Plan, String> {
    let src = &plan.source;
    config::parse(src.name.clone(), &src.text, src.embedded)
        .and_then(|l| Plan::compile_with(&l, Some(plan), weights))
        .map_err(|p| p.to_string())
}

/// Whether this process leads (see `Lead`), taking the lead if it is free. A process that
/// takes it adopts what the previous leader (an older generation) changed in the state file
/// since this one started. Call with the store's `changing` lock held (`lead` is its guard).
pub fn lead(live: &Live, lead: &mut Lead) -> bool {
    if lead.held() {
        return true;
    }
    let snap = live.load_full();
    if !lead.try_take(&snap.plan.store.path) {
        return false;
    }
    match snap.plan.store.read_if_changed() {
        Ok(Some(saved)) => adopt(
            live,
            &snap,
            &saved,
            "after taking over from the previous generation",
        ),
        Ok(None) => {}
        Err(e) => log::error!("state file ignored: {e}"),
    }
    true
}

/// Applies `saved` (written by the previous generation while this one started) to the running
/// snapshot `snap`.
fn adopt(live: &Live, snap: &Arc<Snapshot>, saved: &Saved, how: &str) {
    apply_canaries(&snap.plan, saved, how);
    if saved.weights == snap.plan.weights {
        return;
    }
    let next = recompile(&snap.plan, Some(&saved.weights))
        .and_then(|p| Snapshot::activate(p).map_err(|e| format!("cannot open a log file: {e}")));
    match next {
        Ok(s) => {
            let s = Arc::new(s);
            live.store(Arc::clone(&s));
            s.plan.commit();
        }
        Err(e) => log::error!("live weights of the state file not applied: {e}"),
    }
}
