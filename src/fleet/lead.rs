//! One ramp for the fleet (issue 19): the leader's election and the counts it judges on.
//!
//! Every second each gateway's agent (see `agent`) puts its cumulative counts of each ramping
//! canary under its lease (`PREFIX/counts/ID/NAME`, only when they moved) and sums the other
//! gateways'; and it tries to create `PREFIX/leader` under its lease. The holder runs the
//! ramps ([`super::agent::drives`]); when it dies its lease, and so the key, goes, and the
//! next gateway to try takes it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};

use super::agent::{is_own, lock, member_id, timed, Shared};
use crate::canary::analysis::SideSnap;
use crate::metrics::histogram::Counts;
use crate::snapshot::Live;

/// One side's counts as published.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    answered: u64,
    errors: u64,
    buckets: Vec<u64>,
    sum_us: u64,
}

impl Wire {
    fn of(s: &SideSnap) -> Wire {
        Wire {
            answered: s.answered,
            errors: s.errors,
            buckets: s.duration.buckets.to_vec(),
            sum_us: s.duration.sum_us,
        }
    }

    fn snap(&self) -> SideSnap {
        let mut duration = Counts {
            sum_us: self.sum_us,
            ..Counts::default()
        };
        for (o, b) in duration.buckets.iter_mut().zip(&self.buckets) {
            *o = *b;
        }
        SideSnap {
            answered: self.answered,
            errors: self.errors,
            duration,
        }
    }
}

/// Publishes this gateway's counts (under its lease) and sums the others'. Only while a ramp
/// runs, and only counts that moved since the last put (`sent`): every put is a revision
/// etcd keeps until it is compacted.
pub(super) async fn counts(
    a: &Shared,
    live: &Live,
    c: &mut Client,
    lease: i64,
    sent: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    let s = &a.settings;
    let me = member_id(a);
    let snap = live.load_full();
    let ramping = snap
        .plan
        .canaries
        .iter()
        .filter(|cp| cp.state.status().phase.ramping());
    let mut puts = Vec::new();
    let mut now = Vec::new();
    for cp in ramping {
        let sides = [cp.state.sides[0].snap(), cp.state.sides[1].snap()];
        let Ok(v) = serde_json::to_string(&[Wire::of(&sides[0]), Wire::of(&sides[1])]) else {
            continue;
        };
        if sent.get(&cp.name) != Some(&v) {
            let key = s.key(&format!("counts/{me}/{}", cp.name));
            puts.push(TxnOp::put(
                key,
                v.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            ));
            now.push((cp.name.clone(), v));
        }
    }
    if !puts.is_empty() {
        timed(s, c.txn(Txn::new().and_then(puts)))
            .await?
            .map_err(|e| format!("etcd at {}: counts: {e}", s.endpoints()))?;
        sent.extend(now);
    }
    let prefix = s.key("counts/");
    let r = timed(
        s,
        c.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
    )
    .await?
    .map_err(|e| format!("etcd at {}: counts: {e}", s.endpoints()))?;
    let mut sums: BTreeMap<String, [SideSnap; 2]> = BTreeMap::new();
    for kv in r.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        let Some((id, name)) = key
            .strip_prefix(prefix.as_str())
            .and_then(|k| k.split_once('/'))
        else {
            continue;
        };
        // Ours, this session's or (until its lease ends) an earlier one's.
        if is_own(a, id) {
            continue;
        }
        let Ok([st, ca]) = serde_json::from_slice::<[Wire; 2]>(kv.value()) else {
            continue;
        };
        let e = sums.entry(name.to_string()).or_default();
        *e = [e[0].plus(&st.snap()), e[1].plus(&ca.snap())];
    }
    *lock(&a.others) = sums;
    Ok(())
}

/// Takes `PREFIX/leader` if nobody holds it (unless this generation resigned); notes who
/// does. This gateway leads while the key is under its lease: the value (a member id) is for
/// people, the lease is what no other gateway can have.
pub(super) async fn elect(a: &Shared, c: &mut Client, lease: i64) -> Result<(), String> {
    let s = &a.settings;
    let key = s.key("leader");
    let me = member_id(a);
    let resigned = a.resigned.load(Ordering::Acquire);
    let txn = if resigned {
        Txn::new().and_then([TxnOp::get(key.as_str(), None)])
    } else {
        Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                me.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)])
    };
    let r = timed(s, c.txn(txn))
        .await?
        .map_err(|e| format!("etcd at {}: leader: {e}", s.endpoints()))?;
    let (holder, leads) = if r.succeeded() && !resigned {
        (Some(me.clone()), true)
    } else {
        match holder(&r) {
            Some((v, l)) => (Some(v), l == lease && !resigned),
            None => (None, false),
        }
    };
    if leads && !a.leader.swap(true, Ordering::AcqRel) {
        log::info!("fleet: this gateway ({me}) now runs the fleet's canary ramps");
    } else if !leads {
        a.leader.store(false, Ordering::Release);
    }
    *lock(&a.leader_id) = holder;
    Ok(())
}

/// Gives `PREFIX/leader` up if this session holds it (this generation drains): deleted in a
/// transaction that holds only while the key is under this session's lease, so that a
/// successor's key is never deleted.
pub(super) async fn resign(a: &Shared, c: &mut Client, lease: i64) -> Result<(), String> {
    let s = &a.settings;
    let key = s.key("leader");
    a.leader.store(false, Ordering::Release);
    let txn = Txn::new()
        .when([Compare::lease(key.as_str(), CompareOp::Equal, lease)])
        .and_then([TxnOp::delete(key.as_str(), None)]);
    let r = timed(s, c.txn(txn))
        .await?
        .map_err(|e| format!("etcd at {}: leader: {e}", s.endpoints()))?;
    if r.succeeded() {
        log::info!(
            "fleet: this gateway ({}) drains: it gave {key} up, another gateway runs the canary ramps",
            member_id(a)
        );
        *lock(&a.leader_id) = None;
    }
    Ok(())
}

/// Who holds `PREFIX/leader` (its value) and under which lease, from a transaction that reads
/// it.
fn holder(r: &TxnResponse) -> Option<(String, i64)> {
    r.op_responses().into_iter().find_map(|o| match o {
        TxnOpResponse::Get(g) => g
            .kvs()
            .first()
            .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease())),
        _ => None,
    })
}
