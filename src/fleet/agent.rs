//! A worker's side of a fleet: live state through etcd, membership, and what the admin API
//! says about the store.
//!
//! A thread of its own (own runtime) holds one etcd connection:
//! - a lease (5 s, kept alive every second) and `PREFIX/members/HOST-PID` under it: a gateway
//!   that dies disappears within the lease;
//! - `PREFIX/state/canary/NAME` and `PREFIX/state/weights`, watched: whatever any gateway
//!   writes is applied here (the store's lock held, as a live change of our own);
//! - the live changes of this gateway: written by [`publish`] *before* they are applied here
//!   (a change etcd does not take is refused, applied nowhere); only the keys a change touches.
//!
//! Order between the two paths is etcd's: every live key carries the revision this gateway
//! last applied or wrote it at (`applied`), and a watched value is applied only if its
//! `mod_revision` is newer, checked under the store's `changing` lock that every live change
//! holds. The watch never waits for that lock on the agent's thread (the adopt runs on a
//! blocking thread of its own), so a change that holds the lock while its write goes through
//! the agent cannot stall it, and an older watched value that gets the lock after a newer
//! write is dropped.
//!
//! - `PREFIX/leader`: one gateway, elected by a create-if-absent under its lease, runs the
//!   automatic ramps ([`drives`]); a leader that dies loses the key with its lease and the
//!   next gateway to look takes it, going on at the step the state keys hold. The leader's
//!   writes are fenced: one transaction that holds only while `PREFIX/leader` is still under
//!   this session's lease, so a leader that was stopped past its lease and resumes cannot
//!   write a stale step over its successor's;
//! - `PREFIX/counts/ID/CANARY`: this gateway's cumulative counts of both sides, under its
//!   lease, every second; the leader adds the others' to its own ([`others`]).
//!
//! While etcd is away, live changes are refused ([`refusal`]): a change that only some
//! gateways got would split the fleet. The gateways keep serving what they have, and none of
//! them leads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::{etcd, Settings};
use crate::canary::analysis::SideSnap;
use crate::canary::store::{Saved, SavedCanary, WeightOverride};
use crate::snapshot::Live;

/// How long a member key outlives its gateway.
const LEASE_TTL: i64 = 5;

pub(super) struct Shared {
    pub(super) settings: Settings,
    /// `Some(why)` while etcd is away (or not reached yet).
    away: Mutex<Option<String>>,
    members: Mutex<Vec<Value>>,
    /// The revision at which this gateway last applied or wrote each live key: a watched
    /// value at or below it is older than what runs here. Changed under the store's lock.
    applied: Mutex<BTreeMap<String, i64>>,
    /// This gateway holds `PREFIX/leader`.
    pub(super) leader: AtomicBool,
    pub(super) leader_id: Mutex<Option<String>>,
    /// The other gateways' counts, summed, by canary.
    pub(super) others: Mutex<BTreeMap<String, [SideSnap; 2]>>,
    /// The revision of each live key last refused: a refusal is logged once, not on every
    /// event under `state/`.
    refused: Mutex<BTreeMap<String, i64>>,
    /// Set by [`leave`]: the agent does not connect again.
    leaving: AtomicBool,
    tx: UnboundedSender<Msg>,
}

enum Msg {
    Write(Request),
    /// Revoke the lease (membership, counts, leadership go at once) and stop.
    Leave(std::sync::mpsc::SyncSender<()>),
}

/// A live change to write: its keys and values, whether only the ramps' leader may write it,
/// and until when the caller waits (a request found later is not written at all).
struct Request {
    puts: Vec<(String, String)>,
    fenced: bool,
    deadline: tokio::time::Instant,
    /// The store's revision of the write.
    reply: std::sync::mpsc::SyncSender<Result<i64, String>>,
}

/// One live value as written to etcd.
pub enum Change<'a> {
    Canary(&'a str, &'a SavedCanary),
    Weights(&'a [WeightOverride]),
}

static AGENT: OnceLock<Shared> = OnceLock::new();

/// Starts the agent if the running config names a store.
pub fn start(live: &Live) {
    let text = live.load().plan.source.text.clone();
    let settings = match Settings::from_text(&text) {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => return log::error!("fleet: {e}"),
    };
    let (tx, rx) = unbounded_channel();
    let shared = Shared {
        settings,
        away: Mutex::new(Some("not connected yet".into())),
        members: Mutex::new(Vec::new()),
        applied: Mutex::new(BTreeMap::new()),
        leader: AtomicBool::new(false),
        leader_id: Mutex::new(None),
        others: Mutex::new(BTreeMap::new()),
        refused: Mutex::new(BTreeMap::new()),
        leaving: AtomicBool::new(false),
        tx,
    };
    if AGENT.set(shared).is_err() {
        return;
    }
    let live = live.clone();
    let spawned = std::thread::Builder::new()
        .name("fleet agent".into())
        .spawn(move || match etcd::runtime() {
            Ok(rt) => rt.block_on(run(live, rx)),
            Err(e) => log::error!("fleet: {e}"),
        });
    if let Err(e) = spawned {
        log::error!("fleet: cannot start the agent thread: {e}");
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a live change must be refused now (etcd away), if it must.
pub fn refusal() -> Option<String> {
    let a = AGENT.get()?;
    let why = lock(&a.away).clone()?;
    Some(format!(
        "etcd at {} is unreachable ({why}): live changes are refused until it is back, so that no \
         gateway of the fleet runs a change the others do not have; every gateway keeps serving \
         its current weights and canaries",
        a.settings.endpoints()
    ))
}

/// Writes `changes` to etcd before they are applied here (a no-op outside a fleet), in one
/// transaction; `fenced`: only while this gateway leads the ramps. Call with the store's
/// `changing` lock held: on success the keys are noted as applied at the write's revision,
/// so that the watch does not apply an older value over them. Blocking: waits at most
/// [`WRITE_WAIT`]. An error says why and that nothing changed.
pub fn publish(changes: &[Change<'_>], fenced: bool) -> Result<(), String> {
    let Some(a) = AGENT.get() else {
        return Ok(());
    };
    if changes.is_empty() {
        return Ok(());
    }
    let mut puts = Vec::with_capacity(changes.len());
    for ch in changes {
        let (key, v) = match ch {
            Change::Canary(name, c) => (
                a.settings.key(&format!("state/canary/{name}")),
                serde_json::to_string(c),
            ),
            Change::Weights(w) => (a.settings.key("state/weights"), serde_json::to_string(w)),
        };
        puts.push((key, v.map_err(|e| e.to_string())?));
    }
    let keys: Vec<String> = puts.iter().map(|(k, _)| k.clone()).collect();
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    let deadline = tokio::time::Instant::now() + WRITE_WAIT;
    let not_written = |why: String| {
        format!(
            "the change was not written to etcd at {} ({why}): nothing changed, on this gateway \
             or any other; try again once etcd is back",
            a.settings.endpoints()
        )
    };
    a.tx.send(Msg::Write(Request {
        puts,
        fenced,
        deadline,
        reply,
    }))
    .map_err(|_| not_written("the fleet agent is not running".into()))?;
    let revision = answer
        .recv_timeout(WRITE_WAIT + Duration::from_millis(500))
        .map_err(|_| not_written(format!("no answer within {}s", WRITE_WAIT.as_secs())))?
        .map_err(not_written)?;
    let mut applied = lock(&a.applied);
    for k in keys {
        applied.insert(k, revision);
    }
    Ok(())
}

/// How long a live change waits for its write to etcd.
const WRITE_WAIT: Duration = Duration::from_secs(3);

/// At a worker's exit (quit, stop, the end of a drain): revokes the lease, so that its
/// membership, counts and leadership go at once rather than when the lease ends. Waits a
/// little for etcd; a no-op outside a fleet.
pub fn leave() {
    let Some(a) = AGENT.get() else { return };
    a.leaving.store(true, Ordering::Release);
    let (done, left) = std::sync::mpsc::sync_channel(1);
    if a.tx.send(Msg::Leave(done)).is_ok() {
        let _ = left.recv_timeout(etcd::TIMEOUT);
    }
}

/// The store as `/api/status` shows it; `None` outside a fleet.
pub fn status(running_text: &str) -> Option<Value> {
    let a = AGENT.get()?;
    let away = lock(&a.away).clone();
    Some(json!({
        "store": "etcd",
        "endpoints": a.settings.etcd.endpoints,
        "prefix": a.settings.etcd.prefix,
        "revision": super::watch::running_revision(running_text),
        "reachable": away.is_none(),
        "leader": *lock(&a.leader_id),
        "leads": a.leader.load(Ordering::Acquire),
        "error": away,
        "members": *lock(&a.members),
    }))
}

/// Whether this gateway runs the automatic ramps: always outside a fleet; in one, only the
/// elected leader (and none while etcd is away).
pub fn drives() -> bool {
    AGENT.get().is_none_or(|a| a.leader.load(Ordering::Acquire))
}

/// The other gateways' cumulative counts of canary `name` (both sides), in a fleet.
pub fn others(name: &str) -> Option<[SideSnap; 2]> {
    let a = AGENT.get()?;
    Some(lock(&a.others).get(name).cloned().unwrap_or_default())
}

/// Whether etcd is reachable (for `/metrics`); `None` outside a fleet.
pub fn reachable() -> Option<bool> {
    let a = AGENT.get()?;
    Some(lock(&a.away).is_none())
}

async fn run(live: Live, mut rx: UnboundedReceiver<Msg>) {
    let Some(a) = AGENT.get() else { return };
    let mut backoff = Duration::from_millis(250);
    let mut logged = false;
    loop {
        let e = session(a, &live, &mut rx, &mut logged).await;
        if a.leaving.load(Ordering::Acquire) {
            *lock(&a.away) = Some("this worker is stopping".into());
            a.leader.store(false, Ordering::Release);
            return;
        }
        backoff = if lock(&a.away).is_none() {
            Duration::from_millis(250)
        } else {
            (backoff * 2).min(Duration::from_secs(5))
        };
        if !logged {
            log::error!("fleet: {e}: live changes are refused until etcd is back; retrying");
            logged = true;
        }
        *lock(&a.away) = Some(e);
        a.leader.store(false, Ordering::Release);
        // Changes asked for meanwhile are refused at once.
        let end = tokio::time::Instant::now() + backoff;
        while let Ok(m) = tokio::time::timeout_at(end, rx.recv()).await {
            match m {
                Some(Msg::Write(r)) => {
                    let _ = r.reply.send(Err(refusal().unwrap_or_default()));
                }
                Some(Msg::Leave(done)) => {
                    let _ = done.send(());
                    return;
                }
                None => return,
            }
        }
        if a.leaving.load(Ordering::Acquire) {
            return;
        }
    }
}

/// This worker generation's name in the fleet: `HOST-MASTERPID-WORKERPID`. The master's pid
/// alone is not enough: a binary upgrade re-executes the master in place (same pid), and its
/// old and new workers overlap; each must be a member, publish counts and hold the leader key
/// under a name of its own.
pub(super) fn member_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        format!(
            "{host}-{}-{}",
            std::os::unix::process::parent_id(),
            std::process::id()
        )
    })
}

/// One connection; returns why it ended.
async fn session(
    a: &'static Shared,
    live: &Live,
    rx: &mut UnboundedReceiver<Msg>,
    logged: &mut bool,
) -> String {
    match session_inner(a, live, rx, logged).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

async fn session_inner(
    a: &'static Shared,
    live: &Live,
    rx: &mut UnboundedReceiver<Msg>,
    logged: &mut bool,
) -> Result<Never, String> {
    let s = &a.settings;
    let err = |what: &str, e: etcd_client::Error| format!("etcd at {}: {what}: {e}", s.endpoints());
    let mut c = etcd::connect(s).await?;
    let lease = timed(s, c.lease_grant(LEASE_TTL, None))
        .await?
        .map_err(|e| err("lease", e))?
        .id();
    let (mut keeper, mut kept) = timed(s, c.lease_keep_alive(lease))
        .await?
        .map_err(|e| err("lease", e))?;
    let member_key = s.key(&format!("members/{}", member_id()));
    let mut put_revision = None;
    let state_prefix = s.key("state/");
    let rev = read_state(a, live, &mut c).await?;
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(rev + 1);
    let mut watch = timed(s, c.watch(state_prefix.as_str(), Some(opts)))
        .await?
        .map_err(|e| err("watch", e))?;
    *lock(&a.away) = None;
    if *logged {
        log::info!("fleet: etcd at {} reachable again", s.endpoints());
        *logged = false;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The counts put under this session's lease.
    let mut sent = BTreeMap::new();
    loop {
        tokio::select! {
            m = watch.message() => {
                let m = m.map_err(|e| err("watch", e))?
                    .ok_or_else(|| format!("etcd at {}: the watch ended", s.endpoints()))?;
                if m.canceled() {
                    return Err(format!("etcd at {}: watch cancelled ({})", s.endpoints(), m.cancel_reason()));
                }
                if m.events().iter().any(|e| e.event_type() == EventType::Put || e.event_type() == EventType::Delete) {
                    read_state(a, live, &mut c).await?;
                }
            }
            k = kept.message() => {
                let k = k.map_err(|e| err("lease", e))?
                    .ok_or_else(|| format!("etcd at {}: the lease keep-alive ended", s.endpoints()))?;
                // TTL 0: the lease expired (e.g. this process was stopped longer than the
                // lease): the member key, counts and leadership are gone; start over.
                if k.ttl() <= 0 {
                    return Err(format!("etcd at {}: lease {lease:x} lost (expired)", s.endpoints()));
                }
            }
            m = rx.recv() => match m {
                Some(Msg::Write(r)) => write(a, &mut c, lease, r).await?,
                Some(Msg::Leave(done)) => {
                    if let Err(e) = timed(s, c.lease_revoke(lease)).await.and_then(|r| r.map_err(|e| err("lease", e))) {
                        log::warn!("fleet: {e}: this gateway's keys go when its lease ends ({LEASE_TTL}s)");
                    }
                    a.leader.store(false, Ordering::Release);
                    let _ = done.send(());
                    return Err("left the fleet".into());
                }
                None => return Err("stopping".into()),
            },
            _ = tick.tick() => {
                timed(s, keeper.keep_alive()).await?.map_err(|e| err("lease", e))?;
                let text = live.load().plan.source.text.clone();
                let revision = super::watch::running_revision(&text);
                if put_revision != Some(revision) {
                    let v = json!({
                        "id": member_id(),
                        "pid": std::os::unix::process::parent_id(),
                        "worker_pid": std::process::id(),
                        "revision": revision,
                        "since": crate::canary::unix_now(),
                    });
                    timed(s, c.put(member_key.as_str(), v.to_string(), Some(PutOptions::new().with_lease(lease))))
                        .await?
                        .map_err(|e| err("membership", e))?;
                    put_revision = Some(revision);
                }
                super::lead::counts(a, live, &mut c, lease, &mut sent).await?;
                super::lead::elect(a, &mut c, lease).await?;
                let r = timed(s, c.get(s.key("members/"), Some(GetOptions::new().with_prefix())))
                    .await?
                    .map_err(|e| err("membership", e))?;
                *lock(&a.members) = r
                    .kvs()
                    .iter()
                    .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
                    .collect();
            }
        }
    }
}

/// Writes one request; `Err` (after answering it) when etcd failed: the session ends.
/// A fenced write that finds another leader is refused without ending the session.
async fn write(a: &Shared, c: &mut Client, lease: i64, r: Request) -> Result<(), String> {
    let s = &a.settings;
    let left = r
        .deadline
        .saturating_duration_since(tokio::time::Instant::now());
    if left.is_zero() {
        let _ = r.reply.send(Err("it waited too long for the agent".into()));
        return Ok(());
    }
    let ops: Vec<TxnOp> = r
        .puts
        .iter()
        .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
        .collect();
    let leader = s.key("leader");
    let txn = if r.fenced {
        Txn::new()
            .when([Compare::lease(leader.as_str(), CompareOp::Equal, lease)])
            .and_then(ops)
            .or_else([TxnOp::get(leader.as_str(), None)])
    } else {
        Txn::new().and_then(ops)
    };
    let done = match tokio::time::timeout(left.min(etcd::TIMEOUT), c.txn(txn)).await {
        Err(_) => Err(format!(
            "etcd at {} did not answer within {:.1}s",
            s.endpoints(),
            left.min(etcd::TIMEOUT).as_secs_f64()
        )),
        Ok(t) => t.map_err(|e| format!("etcd at {}: write: {e}", s.endpoints())),
    };
    match done {
        Ok(t) if t.succeeded() => {
            let rev = t.header().map_or(0, |h| h.revision());
            let _ = r.reply.send(Ok(rev));
            Ok(())
        }
        Ok(t) => {
            let holder = super::lead::holder(&t).unwrap_or_else(|| "nobody".into());
            if a.leader.swap(false, Ordering::AcqRel) {
                log::warn!(
                    "fleet: this gateway ({}) no longer runs the fleet's canary ramps ({} is held by {holder})",
                    member_id(),
                    leader
                );
            }
            *lock(&a.leader_id) = Some(holder.clone());
            let _ = r.reply.send(Err(format!(
                "this gateway no longer leads the fleet's ramps ({leader} is held by {holder})"
            )));
            Ok(())
        }
        Err(e) => {
            let _ = r.reply.send(Err(e.clone()));
            Err(e)
        }
    }
}

pub(super) async fn timed<T>(
    s: &Settings,
    f: impl std::future::Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout(etcd::TIMEOUT, f).await.map_err(|_| {
        format!(
            "etcd at {} did not answer within {}s",
            s.endpoints(),
            etcd::TIMEOUT.as_secs()
        )
    })
}

/// The live values read from the store, each with its key and `mod_revision`.
#[derive(Default)]
struct Read {
    canaries: Vec<(String, i64, String, SavedCanary)>,
    /// Absent or refused: no fleet value, the running weights stay.
    weights: Option<(String, i64, Vec<WeightOverride>)>,
}

/// Reads every live value under `PREFIX/state/` and hands those newer than what runs here to
/// a blocking thread that applies them; returns the store's revision.
async fn read_state(a: &'static Shared, live: &Live, c: &mut Client) -> Result<i64, String> {
    let s = &a.settings;
    let r = timed(
        s,
        c.get(s.key("state/"), Some(GetOptions::new().with_prefix())),
    )
    .await?
    .map_err(|e| format!("etcd at {}: {e}", s.endpoints()))?;
    let canary_prefix = s.key("state/canary/");
    let weights_key = s.key("state/weights");
    let mut read = Read::default();
    for kv in r.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        let rev = kv.mod_revision();
        let bad = |e: serde_json::Error| {
            let mut refused = lock(&a.refused);
            if refused.insert(key.to_string(), rev) != Some(rev) {
                log::error!(
                    "fleet: {key} revision {rev} refused (not a live value: {e}); keeping the running state"
                );
            }
        };
        if let Some(name) = key.strip_prefix(canary_prefix.as_str()) {
            match serde_json::from_slice::<SavedCanary>(kv.value()) {
                Ok(v) => read
                    .canaries
                    .push((key.to_string(), rev, name.to_string(), v)),
                Err(e) => bad(e),
            }
        } else if key == weights_key {
            match serde_json::from_slice::<Vec<WeightOverride>>(kv.value()) {
                Ok(w) => read.weights = Some((key.to_string(), rev, w)),
                Err(e) => bad(e),
            }
        }
    }
    let live = live.clone();
    // Applying takes the store's lock and may compile: on a blocking thread, not awaited, so
    // that a change holding the lock while it waits for its write here is not stalled.
    tokio::task::spawn_blocking(move || adopt(a, &live, read));
    Ok(r.header().map_or(0, |h| h.revision()))
}

/// Applies the values of `read` newer than what this gateway last applied or wrote, under
/// the store's lock (the order of etcd's revisions, whichever thread gets the lock first).
fn adopt(a: &Shared, live: &Live, read: Read) {
    let store = std::sync::Arc::clone(&live.load().plan.store);
    let _changing = store.changing();
    let mut applied = lock(&a.applied);
    let mut newer = |key: &str, rev: i64| {
        let at = applied.entry(key.to_string()).or_insert(0);
        let newer = rev > *at;
        if newer {
            *at = rev;
        }
        newer
    };
    let mut saved = Saved::default();
    for (key, rev, name, v) in read.canaries {
        if newer(&key, rev) {
            saved.canaries.insert(name, v);
        }
    }
    let weights = match read.weights {
        Some((key, rev, w)) if newer(&key, rev) => {
            saved.weights = w;
            true
        }
        _ => false,
    };
    drop(applied);
    if saved.canaries.is_empty() && !weights {
        return;
    }
    crate::canary::persist::adopt_fleet_locked(live, &saved, weights);
}
