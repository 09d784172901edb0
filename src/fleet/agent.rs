//! A worker's side of a fleet: live state through etcd, membership, and what the admin API
//! says about the store.
//!
//! A thread of its own (own runtime) holds one etcd connection:
//! - a lease (5 s, kept alive every second) and `PREFIX/members/HOST-PID` under it: a gateway
//!   that dies disappears within the lease;
//! - `PREFIX/state/canary/NAME` and `PREFIX/state/weights`, watched: whatever any gateway
//!   writes is applied here (the store's lock held, as a live change of our own);
//! - the live changes of this gateway: written by [`publish`] (called where the state file
//!   is saved), only the values that differ from what the store holds.
//!
//! - `PREFIX/leader`: one gateway, elected by a create-if-absent under its lease, runs the
//!   automatic ramps ([`drives`]); a leader that dies loses the key with its lease and the
//!   next gateway to look takes it, going on at the step the state keys hold;
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

use etcd_client::{Client, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
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
    /// The live values as the store holds them (what [`publish`] compares with).
    seen: Mutex<Saved>,
    /// This gateway holds `PREFIX/leader`.
    pub(super) leader: AtomicBool,
    pub(super) leader_id: Mutex<Option<String>>,
    /// The other gateways' counts, summed, by canary.
    pub(super) others: Mutex<BTreeMap<String, [SideSnap; 2]>>,
    /// The revision of each live key last refused: a refusal is logged once, not on every
    /// event under `state/`.
    refused: Mutex<BTreeMap<String, i64>>,
    tx: UnboundedSender<Request>,
}

struct Request {
    puts: Vec<(String, String)>,
    reply: std::sync::mpsc::SyncSender<Result<(), String>>,
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
        seen: Mutex::new(Saved::default()),
        leader: AtomicBool::new(false),
        leader_id: Mutex::new(None),
        others: Mutex::new(BTreeMap::new()),
        refused: Mutex::new(BTreeMap::new()),
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

/// Writes the values of `saved` that differ from the store's to etcd (a no-op outside a
/// fleet). Blocking: waits up to [`etcd::TIMEOUT`] for the write.
pub fn publish(saved: &Saved) -> Result<(), String> {
    let Some(a) = AGENT.get() else {
        return Ok(());
    };
    let puts = {
        let seen = lock(&a.seen);
        let mut puts = Vec::new();
        for (name, c) in &saved.canaries {
            if seen.canaries.get(name) != Some(c) {
                let v = serde_json::to_string(c).map_err(|e| e.to_string())?;
                puts.push((a.settings.key(&format!("state/canary/{name}")), v));
            }
        }
        if saved.weights != seen.weights {
            let v = serde_json::to_string(&saved.weights).map_err(|e| e.to_string())?;
            puts.push((a.settings.key("state/weights"), v));
        }
        puts
    };
    if puts.is_empty() {
        return Ok(());
    }
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    a.tx.send(Request { puts, reply })
        .map_err(|_| "the fleet agent is not running".to_string())?;
    answer
        .recv_timeout(etcd::TIMEOUT * 2)
        .map_err(|_| format!("etcd at {} did not answer", a.settings.endpoints()))?
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

async fn run(live: Live, mut rx: UnboundedReceiver<Request>) {
    let Some(a) = AGENT.get() else { return };
    let mut backoff = Duration::from_millis(250);
    let mut logged = false;
    loop {
        let e = session(a, &live, &mut rx, &mut logged).await;
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
        while let Ok(Some(r)) = tokio::time::timeout_at(end, rx.recv()).await {
            let _ = r.reply.send(Err(refusal().unwrap_or_default()));
        }
    }
}

pub(super) fn member_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::os::unix::process::parent_id())
}

/// One connection; returns why it ended.
async fn session(
    a: &Shared,
    live: &Live,
    rx: &mut UnboundedReceiver<Request>,
    logged: &mut bool,
) -> String {
    match session_inner(a, live, rx, logged).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

async fn session_inner(
    a: &Shared,
    live: &Live,
    rx: &mut UnboundedReceiver<Request>,
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
            r = rx.recv() => {
                let Some(r) = r else { return Err("stopping".into()) };
                let txn = Txn::new().and_then(
                    r.puts.iter().map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None)).collect::<Vec<_>>(),
                );
                let done = timed(s, c.txn(txn)).await.and_then(|t| t.map_err(|e| err("write", e)));
                let failed = done.as_ref().err().cloned();
                let _ = r.reply.send(done.map(|_| ()));
                if let Some(e) = failed {
                    return Err(e);
                }
            }
            _ = tick.tick() => {
                timed(s, keeper.keep_alive()).await?.map_err(|e| err("lease", e))?;
                let text = live.load().plan.source.text.clone();
                let revision = super::watch::running_revision(&text);
                if put_revision != Some(revision) {
                    let v = json!({
                        "id": member_id(),
                        "pid": std::os::unix::process::parent_id(),
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

/// Reads every live value under `PREFIX/state/` and applies what differs from ours; returns
/// the store's revision.
async fn read_state(a: &Shared, live: &Live, c: &mut Client) -> Result<i64, String> {
    let s = &a.settings;
    let r = timed(
        s,
        c.get(s.key("state/"), Some(GetOptions::new().with_prefix())),
    )
    .await?
    .map_err(|e| format!("etcd at {}: {e}", s.endpoints()))?;
    let canary_prefix = s.key("state/canary/");
    let weights_key = s.key("state/weights");
    let mut saved = Saved::default();
    let mut canaries = BTreeMap::new();
    // Absent or refused: no fleet value, the running weights stay.
    let mut weights = false;
    for kv in r.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        let bad = |e: serde_json::Error| {
            let mut refused = lock(&a.refused);
            if refused.insert(key.to_string(), kv.mod_revision()) != Some(kv.mod_revision()) {
                log::error!(
                    "fleet: {key} revision {} refused (not a live value: {e}); keeping the running state",
                    kv.mod_revision()
                );
            }
        };
        if let Some(name) = key.strip_prefix(canary_prefix.as_str()) {
            match serde_json::from_slice::<SavedCanary>(kv.value()) {
                Ok(v) => {
                    canaries.insert(name.to_string(), v);
                }
                Err(e) => bad(e),
            }
        } else if key == weights_key {
            match serde_json::from_slice::<Vec<WeightOverride>>(kv.value()) {
                Ok(w) => {
                    saved.weights = w;
                    weights = true;
                }
                Err(e) => bad(e),
            }
        }
    }
    saved.canaries = canaries;
    *lock(&a.seen) = saved.clone();
    let live = live.clone();
    // Applying compiles (weights) and takes the store's lock: not on this runtime's thread.
    let _ = tokio::task::spawn_blocking(move || {
        crate::canary::persist::adopt_fleet(&live, &saved, weights)
    })
    .await;
    Ok(r.header().map_or(0, |h| h.revision()))
}
