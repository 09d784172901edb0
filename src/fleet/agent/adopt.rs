//! Live values from etcd applied here: the adopter thread, the read of `PREFIX/state/` it is
//! fed, the bounds a value must keep, and `adopt` (etcd's revision order, values that cannot
//! apply to the running config yet deferred to the read after the next reload).

use std::collections::BTreeMap;

use etcd_client::{Client, GetOptions};

use super::{lock, timed, Shared, AGENT};
use crate::canary::store::{Saved, SavedCanary, WeightOverride};
use crate::canary::BUCKETS;
use crate::plan::MAX_WEIGHT;
use crate::snapshot::Live;

/// Applies the newest read of `PREFIX/state/`, one at a time: a read holds every live key,
/// so one that waited for the lock while a newer came is dropped for the newer.
pub(super) fn adopter(live: &Live) {
    let Some(a) = AGENT.get() else { return };
    loop {
        let read = {
            let mut p = lock(&a.pending);
            loop {
                if let Some(r) = p.take() {
                    break r;
                }
                p = a.wake.wait(p).unwrap_or_else(|e| e.into_inner());
            }
        };
        adopt(a, live, read);
    }
}

/// The live values read from the store, each with its key and `mod_revision`.
#[derive(Default)]
pub(super) struct Read {
    canaries: Vec<(String, i64, String, SavedCanary)>,
    /// Absent or refused: no fleet value, the running weights stay.
    weights: Option<(String, i64, Vec<WeightOverride>)>,
    /// Every key under `PREFIX/state/` and its `mod_revision`, refused values included.
    all: BTreeMap<String, i64>,
    /// Values looked at before and not applied are tried again (after a reload).
    retry: bool,
    /// The store's revision of the read.
    at: i64,
}

/// Why a live value from etcd is not one graygate wrote, if it is not.
fn unfit_canary(c: &SavedCanary) -> Option<String> {
    if c.percent_bp > BUCKETS {
        return Some(format!("percent_bp {} is above {BUCKETS}", c.percent_bp));
    }
    if crate::canary::Phase::from_name(&c.state).is_none() {
        return Some(format!("unknown state \"{}\"", c.state));
    }
    None
}

fn unfit_weights(w: &[WeightOverride]) -> Option<String> {
    w.iter()
        .find(|o| i64::from(o.weight) > MAX_WEIGHT)
        .map(|o| {
            format!(
                "weight {} of {} server {} is above {MAX_WEIGHT}",
                o.weight, o.pool, o.addr
            )
        })
}

/// Reads every live value under `PREFIX/state/` and hands the read to the adopter thread
/// (which applies those newer than what runs here); returns the store's revision. `retry`:
/// values looked at before and not applied are tried again.
pub(super) async fn read_state(
    a: &'static Shared,
    c: &mut Client,
    retry: bool,
) -> Result<i64, String> {
    let s = &a.settings;
    let r = timed(
        s,
        c.get(s.key("state/"), Some(GetOptions::new().with_prefix())),
    )
    .await?
    .map_err(|e| format!("etcd at {}: {e}", s.endpoints()))?;
    let canary_prefix = s.key("state/canary/");
    let weights_key = s.key("state/weights");
    let mut read = Read {
        retry,
        at: r.header().map_or(0, |h| h.revision()),
        ..Read::default()
    };
    for kv in r.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        let rev = kv.mod_revision();
        read.all.insert(key.to_string(), rev);
        let bad = |e: String| {
            let mut refused = lock(&a.refused);
            if refused.insert(key.to_string(), rev) != Some(rev) {
                log::error!(
                    "fleet: {key} revision {rev} refused (not a live value: {e}); keeping the running state"
                );
            }
        };
        if let Some(name) = key.strip_prefix(canary_prefix.as_str()) {
            match serde_json::from_slice::<SavedCanary>(kv.value()) {
                Ok(v) => match unfit_canary(&v) {
                    Some(e) => bad(e),
                    None => read
                        .canaries
                        .push((key.to_string(), rev, name.to_string(), v)),
                },
                Err(e) => bad(e.to_string()),
            }
        } else if key == weights_key {
            match serde_json::from_slice::<Vec<WeightOverride>>(kv.value()) {
                Ok(w) => match unfit_weights(&w) {
                    Some(e) => bad(e),
                    None => read.weights = Some((key.to_string(), rev, w)),
                },
                Err(e) => bad(e.to_string()),
            }
        }
    }
    // Applying takes the store's lock and may compile: on the adopter thread, not awaited, so
    // that a change holding the lock while it waits for its write here is not stalled. A read
    // holds every key: a newer one replaces one still waiting (a retry stays asked for).
    {
        let mut p = lock(&a.pending);
        if let Some(old) = p.take() {
            read.retry |= old.retry;
        }
        *p = Some(read);
    }
    a.wake.notify_one();
    Ok(r.header().map_or(0, |h| h.revision()))
}

/// Applies the values of `read` newer than what this gateway last applied or wrote, under
/// the store's lock (the order of etcd's revisions, whichever thread gets the lock first).
/// A value that cannot apply to the running config yet is noted as seen, not as applied:
/// the read after the next reload tries it again.
fn adopt(a: &Shared, live: &Live, read: Read) {
    let store = std::sync::Arc::clone(&live.load().plan.store);
    let _changing = store.changing();
    let snap = live.load_full();
    let mut saved = Saved::default();
    let mut applying = Vec::new();
    let mut weights = None;
    {
        let mut revs = lock(&a.revs);
        // A key deleted from etcd: a write expects it absent (not one this gateway wrote
        // after the read).
        revs.retain(|k, r| read.all.contains_key(k) || r.seen > read.at);
        for (key, rev) in &read.all {
            let r = revs.entry(key.clone()).or_default();
            let first = *rev > r.seen;
            r.seen = r.seen.max(*rev);
            let due = *rev > r.applied && (first || read.retry);
            if !due {
                continue;
            }
            if let Some((_, _, name, v)) = read.canaries.iter().find(|(k, ..)| k == key) {
                match snap.plan.canaries.iter().find(|c| &c.name == name) {
                    None => {
                        if first {
                            log::info!(
                                "fleet: {key} revision {rev}: the running config has no canary \"{name}\" yet; applied after a reload that brings it"
                            );
                        }
                    }
                    Some(c) if c.file_bp != v.file_bp => {
                        if first {
                            log::warn!(
                                "fleet: {key} revision {rev} was set over a config percent of {}, this gateway's config says {}: not applied (it applies after a reload to that config; a config of its own wins)",
                                crate::canary::percent_text(v.file_bp),
                                crate::canary::percent_text(c.file_bp)
                            );
                        }
                    }
                    Some(_) => {
                        saved.canaries.insert(name.clone(), v.clone());
                        applying.push((key.clone(), *rev));
                    }
                }
            } else if let Some((k, _, w)) = read.weights.as_ref().filter(|(k, ..)| k == key) {
                saved.weights = w.clone();
                weights = Some((k.clone(), *rev));
            }
        }
    }
    if saved.canaries.is_empty() && weights.is_none() {
        return;
    }
    crate::canary::persist::adopt_fleet_locked(live, &saved, weights.is_some());
    let now = live.load_full();
    let mut revs = lock(&a.revs);
    for (key, rev) in applying {
        let r = revs.entry(key).or_default();
        r.applied = r.applied.max(rev);
    }
    // Weights apply to the servers the running config has with the file weight they were set
    // over; the others wait for a reload that brings them.
    if let Some((key, rev)) = weights {
        if saved.weights.iter().all(|w| now.plan.weights.contains(w)) {
            let r = revs.entry(key).or_default();
            r.applied = r.applied.max(rev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(percent_bp: u32, state: &str) -> SavedCanary {
        SavedCanary {
            percent_bp,
            state: state.into(),
            since: 0,
            why: String::new(),
            file_bp: 0,
            step: None,
            failures: u32::MAX,
        }
    }

    #[test]
    fn fleet_values_out_of_bounds_are_unfit() {
        assert_eq!(unfit_canary(&canary(BUCKETS, "manual")), None);
        assert!(unfit_canary(&canary(BUCKETS + 1, "manual")).is_some());
        assert!(unfit_canary(&canary(0, "sideways")).is_some());
        let w = |weight| WeightOverride {
            pool: "p".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            weight,
            file_weight: 1,
        };
        assert_eq!(unfit_weights(&[w(MAX_WEIGHT as u32)]), None);
        let e = unfit_weights(&[w(1), w(MAX_WEIGHT as u32 + 1)]).unwrap_or_default();
        assert!(e.contains("127.0.0.1:1"), "{e}");
    }
}
