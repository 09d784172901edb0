//! A worker's side of a fleet: live state through etcd, membership, and what the admin API
//! says about the store.
//!
//! A thread of its own (own runtime) holds one etcd connection:
//! - a lease (5 s, kept alive every second) and `PREFIX/members/HOST-MASTERPID-WORKERPID-LEASE`
//!   under it: a gateway that dies disappears within the lease;
//! - `PREFIX/state/canary/NAME` and `PREFIX/state/weights`, watched: whatever any gateway
//!   writes is applied here (the store's lock held, as a live change of our own);
//! - the live changes of this gateway: written by [`publish`] *before* they are applied here
//!   (a change etcd does not take is refused, applied nowhere); only the keys a change touches.
//!
//! Order between the two paths is etcd's: every live key carries the revision this gateway
//! last applied or wrote it at (`Revs::applied`) and the newest revision it looked at under
//! the store's `changing` lock (`Revs::seen`, a value it could not apply yet included). A
//! watched value is applied only if its `mod_revision` is newer than `applied`, under that
//! lock, which every live change holds. Every write is a compare-and-set: the transaction
//! holds only while each key it writes is still at `seen`, so a change worked out on a value
//! another gateway has replaced meanwhile (a step of the ramp over an operator's abort, one
//! server's weight over another operator's) is refused (409), never written over it.
//! The watch never waits for that lock on the agent's thread (one adopter thread applies the
//! newest read), so a change that holds the lock while its write goes through the agent
//! cannot stall it, and an older watched value that gets the lock after a newer write is
//! dropped. A value that cannot apply yet (a canary the running config does not have yet, a
//! file percent it does not have yet) is applied once a reload brings the config it needs:
//! every reload reads `PREFIX/state/` again.
//!
//! - `PREFIX/leader`: one gateway, elected by a create-if-absent under its lease, runs the
//!   automatic ramps ([`drives`]); a leader that dies loses the key with its lease and the
//!   next gateway to look takes it, going on at the step the state keys hold. The leader's
//!   writes are fenced: one transaction that holds only while `PREFIX/leader` is still under
//!   this session's lease, so a leader that was stopped past its lease and resumes cannot
//!   write a stale step over its successor's. A generation that drains (quit, upgrade) gives
//!   the key up at once ([`resign`]) and takes it no more;
//! - `PREFIX/counts/ID/CANARY`: this gateway's cumulative counts of both sides, under its
//!   lease, every second; the leader adds the others' to its own ([`others`]).
//!
//! While etcd is away, live changes are refused ([`refusal`]): a change that only some
//! gateways got would split the fleet. The gateways keep serving what they have, and none of
//! them leads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

mod adopt;

use adopt::{adopter, read_state, Read};

use super::{etcd, Settings};
use crate::canary::analysis::SideSnap;
use crate::canary::store::{SavedCanary, WeightOverride};
use crate::snapshot::Live;

/// How long a member key outlives its gateway.
const LEASE_TTL: i64 = 5;

pub(super) struct Shared {
    pub(super) settings: Settings,
    /// `Some(why)` while etcd is away (or not reached yet).
    away: Mutex<Option<String>>,
    members: Mutex<Vec<Value>>,
    /// Each live key's revisions as this gateway knows them (see [`Revs`]). Changed under the
    /// store's lock.
    revs: Mutex<BTreeMap<String, Revs>>,
    /// This session's member id (`HOST-MASTERPID-WORKERPID-LEASE`), and those of the
    /// sessions before it (their counts, until their lease ends, are not another gateway's).
    ids: Mutex<Vec<String>>,
    /// This generation drains: it gave `PREFIX/leader` up and does not take it again.
    pub(super) resigned: AtomicBool,
    /// The newest read of `PREFIX/state/` not yet applied, for the adopter thread.
    pending: Mutex<Option<Read>>,
    wake: Condvar,
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

/// What this gateway knows of one live key.
#[derive(Clone, Copy, Default)]
struct Revs {
    /// The revision of the value that runs here (applied, or written by this gateway): a
    /// watched value at or below it is not newer.
    applied: i64,
    /// The newest revision looked at under the store's lock, applied or not (a value that
    /// cannot apply yet, a refused one): a write from here holds only while the key is still
    /// at it.
    seen: i64,
}

enum Msg {
    Write(Request),
    /// Read `PREFIX/state/` again and apply what is newer, values that could not apply before
    /// included (after a reload).
    Reread,
    /// Give `PREFIX/leader` up (this generation drains).
    Resign,
    /// Revoke the lease (membership, counts, leadership go at once) and stop.
    Leave(std::sync::mpsc::SyncSender<()>),
}

/// A live change to write: its keys and values, whether only the ramps' leader may write it,
/// and until when the caller waits (a request found later is not written at all).
struct Request {
    /// Key, value, and the `mod_revision` the key must still have (0: absent).
    puts: Vec<(String, String, i64)>,
    fenced: bool,
    deadline: tokio::time::Instant,
    /// The store's revision of the write.
    reply: std::sync::mpsc::SyncSender<Result<i64, Refused>>,
}

/// Why a live change was not made, and whether it is certain that etcd does not have it.
#[derive(Debug)]
pub enum Refused {
    /// Nothing was written anywhere (etcd away or refusing, not the leader any more).
    NotWritten(String),
    /// Another gateway changed a key since this one last looked: nothing was written.
    Conflict(String),
    /// The write was sent and not answered: etcd may have it, or not.
    Unknown(String),
}

impl Refused {
    /// The admin API's status for it.
    pub fn status(&self) -> u16 {
        match self {
            Refused::Conflict(_) => 409,
            _ => 503,
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NotWritten(m) | Refused::Conflict(m) | Refused::Unknown(m) => f.write_str(m),
        }
    }
}

/// How a write went, as the agent's thread tells it.
enum Outcome {
    /// Certain: not written.
    No(String),
    /// Certain: a key was not at the revision expected; `(key, its revision now)`.
    Changed(String, i64),
    /// Sent, no answer.
    Unknown(String),
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
        revs: Mutex::new(BTreeMap::new()),
        ids: Mutex::new(Vec::new()),
        resigned: AtomicBool::new(false),
        pending: Mutex::new(None),
        wake: Condvar::new(),
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
    let for_agent = live.clone();
    let spawned = std::thread::Builder::new()
        .name("fleet agent".into())
        .spawn(move || {
            let _guard = Stopped("the fleet agent");
            match etcd::runtime() {
                Ok(rt) => rt.block_on(run(for_agent, rx)),
                Err(e) => log::error!("fleet: {e}"),
            }
        });
    if let Err(e) = spawned {
        log::error!("fleet: cannot start the agent thread: {e}");
    }
    let live = live.clone();
    let spawned = std::thread::Builder::new()
        .name("fleet adopter".into())
        .spawn(move || {
            let _guard = Stopped("the fleet's adopter");
            adopter(&live)
        });
    if let Err(e) = spawned {
        log::error!("fleet: cannot start the adopter thread: {e}");
    }
}

/// Dropped when an agent thread ends: if it panicked, live changes are refused from then on
/// (nothing would keep this gateway in step with the fleet) and this gateway leads no more.
struct Stopped(&'static str);

impl Drop for Stopped {
    fn drop(&mut self) {
        let Some(a) = AGENT.get() else { return };
        if std::thread::panicking() {
            log::error!(
                "fleet: {} stopped (it panicked): live changes are refused",
                self.0
            );
            *lock(&a.away) = Some(format!("{} stopped", self.0));
        }
        a.leader.store(false, Ordering::Release);
        *lock(&a.leader_id) = None;
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
/// transaction that holds only while each key is still at the revision this gateway last
/// looked at (else [`Refused::Conflict`]); `fenced`: only while this gateway leads the ramps.
/// Call with the store's `changing` lock held: on success the keys are noted as applied at
/// the write's revision, so that the watch does not apply an older value over them.
/// Blocking: waits at most [`WRITE_WAIT`].
pub fn publish(changes: &[Change<'_>], fenced: bool) -> Result<(), Refused> {
    let Some(a) = AGENT.get() else {
        return Ok(());
    };
    if changes.is_empty() {
        return Ok(());
    }
    let mut puts = Vec::with_capacity(changes.len());
    {
        let revs = lock(&a.revs);
        for ch in changes {
            let (key, v) = match ch {
                Change::Canary(name, c) => (
                    a.settings.key(&format!("state/canary/{name}")),
                    serde_json::to_string(c),
                ),
                Change::Weights(w) => (a.settings.key("state/weights"), serde_json::to_string(w)),
            };
            let v = v.map_err(|e| Refused::NotWritten(e.to_string()))?;
            let expect = revs.get(&key).map_or(0, |r| r.seen);
            puts.push((key, v, expect));
        }
    }
    let keys: Vec<String> = puts.iter().map(|(k, _, _)| k.clone()).collect();
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    let deadline = tokio::time::Instant::now() + WRITE_WAIT;
    let not_written = |why: &str| {
        Refused::NotWritten(format!(
            "the change was not written to etcd at {} ({why}): nothing changed, on this gateway \
             or any other; try again once etcd is back",
            a.settings.endpoints()
        ))
    };
    a.tx.send(Msg::Write(Request {
        puts,
        fenced,
        deadline,
        reply,
    }))
    .map_err(|_| not_written("the fleet agent is not running"))?;
    let unknown = || {
        Refused::Unknown(format!(
            "the outcome is unknown: etcd at {} did not answer in {}s (it may have taken the \
             change or not); check `graygate canary status` (weights: `graygate status`) before \
             trying again",
            a.settings.endpoints(),
            WRITE_WAIT.as_secs()
        ))
    };
    let revision = match answer.recv_timeout(WRITE_WAIT + Duration::from_millis(500)) {
        Err(_) => return Err(unknown()),
        Ok(Ok(rev)) => rev,
        Ok(Err(Refused::Unknown(_))) => return Err(unknown()),
        Ok(Err(e)) => return Err(e),
    };
    let mut revs = lock(&a.revs);
    for k in keys {
        revs.insert(
            k,
            Revs {
                applied: revision,
                seen: revision,
            },
        );
    }
    Ok(())
}

/// After a reload: reads `PREFIX/state/` again, so that values that could not apply to the
/// config before (a canary it did not have yet) apply now. A no-op outside a fleet.
pub fn reread() {
    if let Some(a) = AGENT.get() {
        let _ = a.tx.send(Msg::Reread);
    }
}

/// This generation drains (quit, upgrade): it gives `PREFIX/leader` up now, so that another
/// gateway drives the ramps while this one finishes its connections, and takes it no more.
pub fn resign() {
    let Some(a) = AGENT.get() else { return };
    if a.resigned.swap(true, Ordering::AcqRel) {
        return;
    }
    a.leader.store(false, Ordering::Release);
    let _ = a.tx.send(Msg::Resign);
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
    AGENT
        .get()
        .is_none_or(|a| a.leader.load(Ordering::Acquire) && !a.resigned.load(Ordering::Acquire))
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
                    let _ = r
                        .reply
                        .send(Err(Refused::NotWritten(refusal().unwrap_or_default())));
                }
                Some(Msg::Reread | Msg::Resign) => {}
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

/// This worker generation's name in the fleet, without its session's lease:
/// `HOST-MASTERPID-WORKERPID`. The master's pid alone is not enough: a binary upgrade
/// re-executes the master in place (same pid), and its old and new workers overlap; each must
/// be a member, publish counts and hold the leader key under a name of its own.
fn process_id() -> &'static str {
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

/// This session's member id: [`process_id`] and the lease in hex. Host and pids alone can
/// repeat (containers on the host's network share its hostname, and each one's first
/// process is pid 1); a lease id is unique in the etcd cluster.
pub(super) fn member_id(a: &Shared) -> String {
    lock(&a.ids)
        .last()
        .cloned()
        .unwrap_or_else(|| process_id().to_string())
}

/// Whether `id` is this process's (this session's or an earlier one's).
pub(super) fn is_own(a: &Shared, id: &str) -> bool {
    lock(&a.ids).iter().any(|i| i == id)
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
    let me = format!("{}-{lease:x}", process_id());
    lock(&a.ids).push(me.clone());
    let member_key = s.key(&format!("members/{me}"));
    let mut put_revision = None;
    let state_prefix = s.key("state/");
    let rev = read_state(a, &mut c, false).await?;
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
                    read_state(a, &mut c, false).await?;
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
                Some(Msg::Reread) => {
                    read_state(a, &mut c, true).await?;
                }
                Some(Msg::Resign) => super::lead::resign(a, &mut c, lease).await?,
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
                        "id": me,
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
/// A write that finds a key changed meanwhile, or (fenced) another leader, is refused without
/// ending the session.
async fn write(a: &Shared, c: &mut Client, lease: i64, r: Request) -> Result<(), String> {
    let s = &a.settings;
    let left = r
        .deadline
        .saturating_duration_since(tokio::time::Instant::now());
    if left.is_zero() {
        let _ = r.reply.send(Err(Refused::NotWritten(format!(
            "the change was not written to etcd at {}: it waited too long for the fleet agent; \
             nothing changed, try again",
            s.endpoints()
        ))));
        return Ok(());
    }
    let leader = s.key("leader");
    let mut when: Vec<Compare> = r
        .puts
        .iter()
        .map(|(k, _, rev)| Compare::mod_revision(k.as_str(), CompareOp::Equal, *rev))
        .collect();
    let mut reads = Vec::with_capacity(r.puts.len() + 1);
    if r.fenced {
        when.push(Compare::lease(leader.as_str(), CompareOp::Equal, lease));
        reads.push(TxnOp::get(leader.as_str(), None));
    }
    reads.extend(r.puts.iter().map(|(k, _, _)| TxnOp::get(k.as_str(), None)));
    let ops: Vec<TxnOp> = r
        .puts
        .iter()
        .map(|(k, v, _)| TxnOp::put(k.as_str(), v.as_str(), None))
        .collect();
    let txn = Txn::new().when(when).and_then(ops).or_else(reads);
    let wait = left.min(etcd::TIMEOUT);
    let outcome = match tokio::time::timeout(wait, c.txn(txn)).await {
        Err(_) => Err(Outcome::Unknown(format!(
            "etcd at {} did not answer within {:.1}s",
            s.endpoints(),
            wait.as_secs_f64()
        ))),
        Ok(Err(e)) => Err(Outcome::Unknown(format!(
            "etcd at {}: write: {e}",
            s.endpoints()
        ))),
        Ok(Ok(t)) if t.succeeded() => Ok(t.header().map_or(0, |h| h.revision())),
        Ok(Ok(t)) => Err(why_not(a, &t, &r, lease, &leader)),
    };
    match outcome {
        Ok(rev) => {
            let _ = r.reply.send(Ok(rev));
            Ok(())
        }
        Err(Outcome::No(why)) => {
            let _ = r.reply.send(Err(Refused::NotWritten(why)));
            Ok(())
        }
        Err(Outcome::Changed(key, rev)) => {
            let _ = r.reply.send(Err(Refused::Conflict(format!(
                "{key} was changed meanwhile by another gateway (at revision {rev}): nothing \
                 changed; try again"
            ))));
            Ok(())
        }
        Err(Outcome::Unknown(e)) => {
            let _ = r.reply.send(Err(Refused::Unknown(e.clone())));
            Err(e)
        }
    }
}

/// Why a write's transaction did not hold, from its failure branch's reads: another leader
/// (fenced), else the first key not at the revision expected.
fn why_not(
    a: &Shared,
    t: &etcd_client::TxnResponse,
    r: &Request,
    lease: i64,
    leader: &str,
) -> Outcome {
    let mut got = t.op_responses().into_iter().map(|o| match o {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
            (
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.lease(),
                kv.mod_revision(),
            )
        }),
        _ => None,
    });
    if r.fenced {
        let held = got.next().flatten();
        if held.as_ref().is_none_or(|(_, l, _)| *l != lease) {
            let holder = held.map_or_else(|| "nobody".to_string(), |(v, _, _)| v);
            if a.leader.swap(false, Ordering::AcqRel) {
                log::warn!(
                    "fleet: this gateway ({}) no longer runs the fleet's canary ramps ({leader} is held by {holder})",
                    member_id(a),
                );
            }
            *lock(&a.leader_id) = Some(holder.clone());
            return Outcome::No(format!(
                "this gateway no longer leads the fleet's ramps ({leader} is held by {holder})"
            ));
        }
    }
    for ((key, _, expect), now) in r.puts.iter().zip(got) {
        let rev = now.map_or(0, |(_, _, m)| m);
        if rev != *expect {
            return Outcome::Changed(key.clone(), rev);
        }
    }
    Outcome::No("etcd refused the transaction".into())
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
