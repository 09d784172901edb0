//! The JSON API: `GET /api/status`, `PUT /api/canaries/NAME {"percent": N}`,
//! `POST /api/canaries/NAME/{start,pause,resume,abort,promote}`,
//! `GET /api/canaries/NAME/history` (the chart's samples of the last 30 minutes),
//! `PUT /api/upstreams/POOL/servers/ADDR {"weight": N}`.
//!
//! A change is made under the store's lock by the generation that leads (during an upgrade's
//! overlap a change waits the moment the old generation takes to hand over), logged as one line
//! in the process error log (who, old -> new) and written to the state file before the answer.
//! A canary change is two atomic stores the next request reads; a weight change compiles the
//! running config again with the new weight and swaps the snapshot, as a reload does (and
//! serialised with reloads), so requests in flight keep their plan. Called on a blocking
//! thread, never on the async runtime.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use http::{Method, Response};
use serde_json::{json, Value};

use crate::canary::analysis::Numbers;
use crate::canary::persist::{self, recompile, save};
use crate::canary::store::{Lead, WeightOverride};
use crate::canary::Store;
use crate::canary::{percent_bp, percent_text, ramp, unix_now, Phase, Position, Status, BUCKETS};
use crate::fleet::agent::Change;
use crate::plan::{CanaryPlan, Plan, MAX_WEIGHT};
use crate::snapshot::{Live, Snapshot};

use super::json;

/// Who asked for a change, for the log line.
pub struct Who {
    pub cli: bool,
    pub addr: Option<IpAddr>,
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.cli { "CLI" } else { "API" })?;
        match self.addr {
            Some(a) => write!(f, " from {a}"),
            None => Ok(()),
        }
    }
}

/// A 4xx answer naming the field at fault.
pub fn error(status: u16, field: &str, msg: &str) -> Response<Vec<u8>> {
    json(status, &json!({ "error": msg, "field": field }))
}

/// A 4xx answer before it is a response.
pub struct ApiError {
    status: u16,
    field: &'static str,
    msg: String,
}

impl From<ApiError> for Response<Vec<u8>> {
    fn from(e: ApiError) -> Self {
        error(e.status, e.field, &e.msg)
    }
}

fn fail(status: u16, field: &'static str, msg: String) -> ApiError {
    ApiError { status, field, msg }
}

/// Routes one API request.
pub fn handle(
    live: &Live,
    method: &Method,
    path: &str,
    body: &[u8],
    who: &Who,
) -> Response<Vec<u8>> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (&Method::GET, ["api", "status"]) => json(200, &status(&live.load().plan)),
        (&Method::GET, ["api", "canaries", name]) => {
            let snap = live.load();
            match find(&snap.plan, name) {
                Ok(c) => json(200, &canary_json(&snap.plan, c)),
                Err(e) => e.into(),
            }
        }
        (&Method::GET, ["api", "canaries", name, "history"]) => {
            let snap = live.load();
            match find(&snap.plan, name) {
                Ok(c) => json(200, &json!({ "samples": ramp::history(c) })),
                Err(e) => e.into(),
            }
        }
        (&Method::PUT, ["api", "canaries", name]) => match number(body, "percent") {
            Ok(p) => match percent_bp(p) {
                Ok(bp) => change(live, name, who, |_, old, pos| {
                    // A manual percent pauses a ramp; resume goes back to its step.
                    let ramp =
                        pos.step.is_some() && (old.phase.ramping() || old.phase == Phase::Paused);
                    Ok(if ramp {
                        (
                            bp,
                            Phase::Paused,
                            format!("set by {who}: the ramp is paused"),
                        )
                    } else {
                        (bp, Phase::Manual, format!("set by {who}"))
                    })
                }),
                Err(e) => error(400, "percent", &e),
            },
            Err(e) => e.into(),
        },
        (&Method::POST, ["api", "canaries", name, op]) => match *op {
            "start" => change(live, name, who, |c, _, pos| {
                ramp::start(c, pos, &who.to_string()).map_err(|e| fail(409, "steps", e))
            }),
            "pause" => change(live, name, who, |_, old, _| {
                Ok((old.percent_bp, Phase::Paused, format!("paused by {who}")))
            }),
            "resume" => change(live, name, who, |c, old, pos| {
                Ok(ramp::resume(c, old, pos, &who.to_string()))
            }),
            "abort" => change(live, name, who, |_, _, pos| {
                pos.step = None;
                Ok((0, Phase::Aborted, format!("aborted by {who}")))
            }),
            "promote" => change(live, name, who, |_, _, pos| {
                pos.step = None;
                Ok((BUCKETS, Phase::Promoted, format!("promoted by {who}")))
            }),
            _ => error(
                404,
                "operation",
                &format!("unknown operation \"{op}\" (start, pause, resume, abort, promote)"),
            ),
        },
        (&Method::PUT, ["api", "upstreams", pool, "servers", addr]) => match number(body, "weight")
        {
            Ok(w) => set_weight(live, pool, addr, w, who),
            Err(e) => e.into(),
        },
        (_, ["api", ..]) => error(404, "path", &format!("no API endpoint {method} {path}")),
        _ => error(404, "path", &format!("not found: {path}")),
    }
}

/// The number in field `field` of a JSON object body.
fn number(body: &[u8], field: &'static str) -> Result<f64, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| fail(400, "body", format!("invalid JSON: {e}")))?;
    match v.get(field) {
        Some(n) => n
            .as_f64()
            .ok_or_else(|| fail(400, field, format!("{field} must be a number"))),
        None => Err(fail(400, field, format!("missing field \"{field}\""))),
    }
}

fn find<'a>(plan: &'a Plan, name: &str) -> Result<&'a CanaryPlan, ApiError> {
    plan.canaries
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = plan.canaries.iter().map(|c| c.name.as_str()).collect();
            fail(
                404,
                "name",
                format!("unknown canary \"{name}\" (canaries: {})", list(&known)),
            )
        })
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// How long a change waits for this generation to lead: while an upgrade's generations
/// overlap, the old one leads until it is told to drain (a fraction of a second).
const LEAD_WAIT: Duration = Duration::from_secs(10);

/// The store's change lock, once this generation leads (see `canary::store::Lead`): a change
/// made by a generation that does not drive the canaries would be overwritten by the one that
/// does. Blocking.
fn leading<'a>(live: &Live, store: &'a Store) -> Result<MutexGuard<'a, Lead>, ApiError> {
    // In a fleet, a change etcd cannot take is one only this gateway would run.
    if let Some(why) = crate::fleet::agent::refusal() {
        return Err(fail(503, "store", why));
    }
    let deadline = Instant::now() + LEAD_WAIT;
    loop {
        let mut lead = store.changing();
        if lead.retired() {
            return Err(fail(
                503,
                "state",
                "this worker generation is stopping (upgrade or reload); try again".into(),
            ));
        }
        if persist::lead(live, &mut lead) {
            return Ok(lead);
        }
        drop(lead);
        if Instant::now() >= deadline {
            return Err(fail(
                503,
                "state",
                format!(
                    "another graygate process still drives the canaries of {}; try again",
                    store.path.display()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Applies `f` to canary `name`: from its plan, old status and ramp position to the new
/// percent, phase and why.
fn change(
    live: &Live,
    name: &str,
    who: &Who,
    f: impl FnOnce(&CanaryPlan, &Status, &mut Position) -> Result<(u32, Phase, String), ApiError>,
) -> Response<Vec<u8>> {
    let store = Arc::clone(&live.load().plan.store);
    let _lead = match leading(live, &store) {
        Ok(l) => l,
        Err(e) => return e.into(),
    };
    let snap = live.load_full();
    let c = match find(&snap.plan, name) {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    let old = c.state.status();
    // Worked out on a copy: in a fleet nothing changes here until etcd has the change.
    let mut pos = c.state.position().clone();
    let (bp, phase, why) = match f(c, &old, &mut pos) {
        Ok(m) => m,
        Err(e) => return e.into(),
    };
    let new = Status {
        percent_bp: bp,
        phase,
        since: unix_now(),
        why,
    };
    let saved = persist::saved_canary(c, &new, &pos);
    // Refused with 409 when another gateway changed the canary since this one last looked.
    if let Err(e) = crate::fleet::agent::publish(&[Change::Canary(name, &saved)], false) {
        return error(e.status(), "store", &e.to_string());
    }
    *c.state.position() = pos;
    c.state.set(&new);
    // The state file first: a change that was logged is one the next process finds.
    save(&snap.plan);
    crate::metrics::transition(name, old.phase, phase);
    log::warn!(
        "canary \"{name}\": percent {} -> {}, state {} -> {} (by {who})",
        percent_text(old.percent_bp),
        percent_text(bp),
        old.phase.name(),
        phase.name()
    );
    json(200, &canary_json(&snap.plan, c))
}

fn set_weight(live: &Live, pool: &str, addr: &str, w: f64, who: &Who) -> Response<Vec<u8>> {
    if w.fract() != 0.0 || !(0.0..=MAX_WEIGHT as f64).contains(&w) {
        return error(
            400,
            "weight",
            &format!("weight must be a whole number 0..{MAX_WEIGHT}, not {w}"),
        );
    }
    let weight = w as u32;
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return error(
            400,
            "addr",
            &format!("invalid server address \"{addr}\" (IP:PORT)"),
        );
    };
    // Reloads and other changes swap snapshots under the same lock: the plan compiled here
    // from the current one is the next one, nothing swaps in between.
    let store = Arc::clone(&live.load().plan.store);
    let _lead = match leading(live, &store) {
        Ok(l) => l,
        Err(e) => return e.into(),
    };
    let cur = live.load_full();
    let Some(pp) = cur.plan.pools.iter().find(|pp| pp.pool.name == pool) else {
        let known: Vec<&str> = cur
            .plan
            .pools
            .iter()
            .map(|p| p.pool.name.as_str())
            .collect();
        return error(
            404,
            "pool",
            &format!("unknown upstream \"{pool}\" (upstreams: {})", list(&known)),
        );
    };
    let Some(peer) = pp.pool.peers.iter().find(|p| p.addr == addr) else {
        return error(
            404,
            "addr",
            &format!("upstream \"{pool}\" has no server {addr}"),
        );
    };
    let old = peer.weight;
    let before = &cur.plan.weights;
    let mut after: Vec<WeightOverride> = before
        .iter()
        .filter(|o| !(o.pool == pool && o.addr == addr))
        .cloned()
        .collect();
    let file_weight = before
        .iter()
        .find(|o| o.pool == pool && o.addr == addr)
        .map_or(old, |o| o.file_weight);
    if weight != file_weight {
        after.push(WeightOverride {
            pool: pool.to_string(),
            addr,
            weight,
            file_weight,
        });
    }
    let plan = match recompile(&cur.plan, Some(&after)) {
        Ok(p) => p,
        Err(e) => return error(400, "weight", &e),
    };
    let snap = match Snapshot::activate(plan) {
        Ok(s) => Arc::new(s),
        Err(e) => return error(500, "weight", &format!("cannot open a log file: {e}")),
    };
    // In a fleet etcd takes the change first; refused there, it is made nowhere. The weights
    // are one value: a change from another gateway since this one last looked (another
    // server's weight) is refused with 409, not overwritten.
    if let Err(e) = crate::fleet::agent::publish(&[Change::Weights(&after)], false) {
        return error(e.status(), "store", &e.to_string());
    }
    live.store(Arc::clone(&snap));
    snap.plan.commit();
    save(&snap.plan);
    log::warn!("upstream \"{pool}\" server {addr}: weight {old} -> {weight} (by {who})");
    json(200, &pool_json(&snap.plan, pool))
}

/// A time as RFC 3339 in UTC.
fn time(unix: u64) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn canary_json(plan: &Plan, c: &CanaryPlan) -> Value {
    let s = c.state.status();
    let pool = |i: usize| plan.pools.get(i).map(|p| p.pool.name.clone());
    let (step, failures, window) = {
        let p = c.state.position();
        let w = p.window.as_ref().map(|w| {
            let secs = w.started.elapsed().as_secs_f64();
            let [st, ca] = w.counts(&c.state.sides);
            json!({
                "since": time(w.started_unix),
                "seconds": secs,
                "stable": st.numbers(secs),
                "canary": ca.numbers(secs),
            })
        });
        (p.step, p.failures, w)
    };
    let ramp_json = c.ramp.as_ref().map(|r| {
        let a = &r.analysis;
        json!({
            "steps": r.steps.iter().map(|&bp| f64::from(bp) / 100.0).collect::<Vec<_>>(),
            "interval_seconds": r.interval.as_secs_f64(),
            "step": step.map(|i| i + 1),
            "failures": failures,
            "next_analysis_in": ramp::next_analysis_in(c),
            "window": window,
            "analysis": {
                "min_requests": a.min_requests,
                "max_error_rate": a.max_error_rate.map(|r| r * 100.0),
                "max_error_rate_vs_stable": a.max_error_rate_vs_stable,
                "max_p99_ms": a.max_p99.map(|d| d.as_secs_f64() * 1e3),
                "max_p99_vs_stable": a.max_p99_vs_stable,
                "failures_allowed": a.failures_allowed,
            },
        })
    });
    let latest = ramp::latest(c);
    let side = |n: Option<&Numbers>| {
        serde_json::to_value(n.cloned().unwrap_or_default()).unwrap_or_default()
    };
    json!({
        "name": c.name,
        "stable": pool(c.pools[0]),
        "canary": pool(c.pools[1]),
        "percent": s.percent_bp as f64 / 100.0,
        "state": s.phase.name(),
        "since": time(s.since),
        "why": s.why,
        "fallbacks": {
            "stable": c.state.fallbacks[0].load(Ordering::Relaxed),
            "canary": c.state.fallbacks[1].load(Ordering::Relaxed),
        },
        "ramp": ramp_json,
        "live": {
            "t": latest.as_ref().map(|l| l.t),
            "stable": side(latest.as_ref().map(|l| &l.stable)),
            "canary": side(latest.as_ref().map(|l| &l.canary)),
        },
    })
}

fn pool_json(plan: &Plan, name: &str) -> Value {
    let Some((pi, pp)) = plan
        .pools
        .iter()
        .enumerate()
        .find(|(_, p)| p.pool.name == name)
    else {
        return Value::Null;
    };
    let servers: Vec<Value> = pp
        .pool
        .peers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (requests, failures) = plan.metrics.peer_totals(pi, i);
            json!({
                "addr": p.addr.to_string(),
                "weight": p.weight,
                "down": p.down,
                "backup": p.backup,
                "healthy": p.state.healthy.load(Ordering::Relaxed),
                "in_flight": p.state.active.load(Ordering::Relaxed),
                // Consecutive failures (nginx's `fails`).
                "fails": p.fails(),
                // Since the worker started: requests it answered, attempts that failed.
                "requests": requests,
                "failures": failures,
            })
        })
        .collect();
    json!({ "name": name, "servers": servers })
}

/// `GET /api/status`: every pool and every canary.
pub fn status(plan: &Plan) -> Value {
    let pools: Vec<Value> = plan
        .pools
        .iter()
        .map(|p| pool_json(plan, &p.pool.name))
        .collect();
    let canaries: Vec<Value> = plan.canaries.iter().map(|c| canary_json(plan, c)).collect();
    let mut v = json!({ "pools": pools, "canaries": canaries });
    if let Some(f) = crate::fleet::agent::status(&plan.source.text) {
        v["fleet"] = f;
    }
    v
}
