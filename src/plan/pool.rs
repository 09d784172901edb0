//! `upstreams.NAME`: a pool, its servers and the rules around it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::canary::store::WeightOverride;
use crate::config::{
    resolve_addrs, HealthCheck, HealthCheckType, Loaded, Policy, Problems, Upstream, UpstreamServer,
};
use crate::upstream::health::{Check, Kind};
use crate::upstream::{Peer, PeerState, Pool};

use super::{check_above_zero, Plan, PoolPlan, Template, Timeouts, MAX_TRIES, MAX_WEIGHT};

/// nginx's ip_hash is reduced modulo 6271 before it is reduced modulo the total weight.
const IP_HASH_RANGE: u64 = 6271;

/// Per-server state of the previous plan, by pool name and address, lent to the same servers
/// of the new plan so that a reload keeps failure counts and health verdicts.
/// Also applies the weights changed live (`Plan::weights`) to servers whose config weight is still
/// the one they replaced, and remembers which of them still apply.
pub(super) struct PrevState<'a> {
    peers: HashMap<(&'a str, SocketAddr), &'a Arc<PeerState>>,
    weights: &'a [WeightOverride],
    kept: RefCell<Vec<WeightOverride>>,
}

impl<'a> PrevState<'a> {
    pub(super) fn of(prev: Option<&'a Plan>, weights: &'a [WeightOverride]) -> PrevState<'a> {
        let peers = match prev {
            None => HashMap::new(),
            Some(p) => p
                .pools
                .iter()
                .map(|pp| &pp.pool)
                .flat_map(|pool| {
                    pool.peers
                        .iter()
                        .map(|peer| ((pool.name.as_str(), peer.addr), &peer.state))
                })
                .collect(),
        };
        PrevState {
            peers,
            weights,
            kept: RefCell::new(Vec::new()),
        }
    }

    /// The live weight of `pool`/`addr` if one was set over `file_weight`.
    fn live_weight(&self, pool: &str, addr: SocketAddr, file_weight: u32) -> Option<u32> {
        let w = self
            .weights
            .iter()
            .find(|o| o.pool == pool && o.addr == addr && o.file_weight == file_weight)?
            .weight;
        self.kept.borrow_mut().push(WeightOverride {
            pool: pool.to_string(),
            addr,
            weight: w,
            file_weight,
        });
        Some(w)
    }

    /// The state the previous plan kept for server `addr` of pool `pool`.
    pub(super) fn state_of(&self, pool: &str, addr: SocketAddr) -> Option<Arc<PeerState>> {
        self.peers.get(&(pool, addr)).map(|s| Arc::clone(s))
    }

    /// The live weights that still apply (the others' config weight changed: the file won).
    pub(super) fn kept_weights(&self) -> Vec<WeightOverride> {
        self.kept.take()
    }
}

/// The pool `upstreams.NAME`.
pub(super) fn compile_pool(
    l: &Loaded,
    name: &str,
    u: &Upstream,
    prev: &PrevState,
    probs: &mut Problems,
) -> PoolPlan {
    let base = format!("upstreams.{name}");
    if u.servers.is_empty() {
        probs.push(l.problem_at_key(&base, format!("upstream \"{name}\" has no servers")));
    }
    let mut peers = Vec::new();
    let mut all_valid = true;
    for (i, s) in u.servers.iter().enumerate() {
        let Some(addrs) = check_server(l, &format!("{base}.servers.{i}"), s, probs) else {
            all_valid = false;
            continue;
        };
        for addr in addrs {
            let mut peer = peer(addr, s, u);
            if let Some(state) = prev.peers.get(&(name, addr)) {
                peer.state = Arc::clone(state);
            }
            if let Some(w) = prev.live_weight(name, addr, peer.weight) {
                peer.weight = w;
            }
            peers.push(peer);
        }
    }
    // Only judged when every server is valid, so that one mistake gives one message.
    let total: u64 = peers
        .iter()
        .filter(|p| !p.down && !p.backup)
        .map(|p| u64::from(p.weight))
        .sum();
    if !u.servers.is_empty() && all_valid && total == 0 {
        probs.push(l.problem_at(
            &format!("{base}.servers"),
            format!(
                "upstream \"{name}\": every server has weight 0 or is down, so none can be chosen"
            ),
        ));
    }
    if u.policy == Policy::IpHash && total > IP_HASH_RANGE {
        probs.push(l.problem_at(
            &format!("{base}.servers"),
            format!("with ip_hash the weights of upstream \"{name}\" must add up to at most {IP_HASH_RANGE}, not {total}: nginx's hash is below {IP_HASH_RANGE}, so the last servers would never be chosen"),
        ));
    }
    if u.policy == Policy::IpHash && u.servers.iter().any(|s| s.backup) {
        probs.push(l.problem_at(
            &format!("{base}.policy"),
            "backup servers cannot be used with ip_hash (as in nginx)",
        ));
    }
    let hash_key = compile_hash_key(l, &base, u, probs);
    if !(0..=MAX_TRIES as i64).contains(&u.max_tries) {
        probs.push(l.problem_at(
            &format!("{base}.max_tries"),
            format!(
                "max_tries must be 0..{MAX_TRIES}, not {} (Pingora tries at most {MAX_TRIES} servers per request)",
                u.max_tries
            ),
        ));
    }
    for (key, t) in [
        ("connect_timeout", u.connect_timeout),
        ("read_timeout", u.read_timeout),
        ("send_timeout", u.send_timeout),
    ] {
        check_above_zero(l, &format!("{base}.{key}"), t.0, probs);
    }
    let health_check = u
        .health_check
        .as_ref()
        .and_then(|hc| compile_health_check(l, &format!("{base}.health_check"), hc, probs))
        .map(Arc::new);
    let mut retry_on_status = Vec::new();
    for (i, &st) in u.retry_on_status.iter().enumerate() {
        if [500, 502, 503, 504, 429].contains(&st) {
            retry_on_status.push(st as u16);
        } else {
            probs.push(l.problem_at(
                &format!("{base}.retry_on_status.{i}"),
                format!("retry_on_status takes 500, 502, 503, 504 or 429, not {st}"),
            ));
        }
    }
    let mut pool = Pool::new(name.to_string(), u.policy, peers);
    // 0: every server once, as far as Pingora goes.
    pool.max_tries = match usize::try_from(u.max_tries) {
        Ok(n) if n > 0 => n,
        _ => pool.max_tries,
    }
    .min(MAX_TRIES);
    PoolPlan {
        pool: Arc::new(pool),
        hash_key,
        retry_on_timeout: u.retry_on_timeout,
        retry_on_status,
        health_check,
    }
}

/// Checks one entry of `servers`, at the dotted path `at`: the addresses it stands for (a
/// host name gives one server per address, as in nginx), or `None` with a problem.
fn check_server(
    l: &Loaded,
    at: &str,
    s: &UpstreamServer,
    probs: &mut Problems,
) -> Option<Vec<SocketAddr>> {
    let addrs = match resolve_addrs(&s.addr, "127.0.0.1") {
        Ok(a) => a,
        Err(e) => {
            probs.push(l.problem_at(&format!("{at}.addr"), e));
            return None;
        }
    };
    for (key, v, max) in [
        ("weight", s.weight, MAX_WEIGHT),
        ("max_fails", s.max_fails, 1000),
        ("max_conns", s.max_conns, 100_000),
    ] {
        if !(0..=max).contains(&v) {
            probs.push(l.problem_at(
                &format!("{at}.{key}"),
                format!("{key} must be 0..{max}, not {v}"),
            ));
            return None;
        }
    }
    Some(addrs)
}

/// The server at `addr` of the checked entry `s` of pool `u`.
fn peer(addr: SocketAddr, s: &UpstreamServer, u: &Upstream) -> Peer {
    let mut peer = Peer::new(addr, s.weight as u32);
    Timeouts {
        connect: Some(u.connect_timeout.0),
        read: Some(u.read_timeout.0),
        send: Some(u.send_timeout.0),
    }
    .apply(&mut peer.http.options);
    peer.http.options.idle_timeout = Some(u.idle_timeout.0);
    if u.protocol == crate::config::UpstreamProtocol::H2 {
        // Pingora speaks h2c with prior knowledge to a cleartext peer that allows only h2.
        peer.http.options.set_http_version(2, 2);
    }
    peer.max_fails = s.max_fails as u32;
    peer.fail_timeout = s.fail_timeout.0;
    peer.down = s.down;
    peer.backup = s.backup;
    peer.max_conns = s.max_conns as u32;
    peer
}

/// `hash_key`, only meaningful with `policy: consistent`.
fn compile_hash_key(
    l: &Loaded,
    base: &str,
    u: &Upstream,
    probs: &mut Problems,
) -> Option<Template> {
    let key = u.hash_key.as_ref()?;
    let at = format!("{base}.hash_key");
    if u.policy != Policy::Consistent {
        probs.push(l.problem_at(&at, "hash_key needs policy: consistent"));
        return None;
    }
    match Template::compile(key) {
        Ok(t) if t.has_vars() => Some(t),
        Ok(_) => {
            probs.push(l.problem_at(
                &at,
                format!("hash_key \"{key}\" has no variable, so every request would go to the same server (leave hash_key out to place requests by client address)"),
            ));
            None
        }
        Err(e) => {
            probs.push(l.problem_at(&at, e));
            None
        }
    }
}

/// `health_check`, at the dotted path `at`; `None` (with problems) if a value is out of range.
fn compile_health_check(
    l: &Loaded,
    at: &str,
    hc: &HealthCheck,
    probs: &mut Problems,
) -> Option<Check> {
    let before = probs.0.len();
    let mut count = |key: &str, v: i64| match u32::try_from(v) {
        Ok(n) if (1..=100).contains(&n) => n,
        _ => {
            probs.push(l.problem_at(
                &format!("{at}.{key}"),
                format!("{key} must be 1..100, not {v}"),
            ));
            1
        }
    };
    let rise = count("rise", hc.rise);
    let fall = count("fall", hc.fall);
    let expect_status = match hc.expect_status {
        Some(st) => match u16::try_from(st) {
            Ok(s) if (100..=599).contains(&s) => Some(s),
            _ => {
                probs.push(l.problem_at(
                    &format!("{at}.expect_status"),
                    format!("expect_status must be an HTTP status, not {st}"),
                ));
                None
            }
        },
        None => None,
    };
    check_above_zero(l, &format!("{at}.interval"), hc.interval.0, probs);
    check_above_zero(l, &format!("{at}.timeout"), hc.timeout.0, probs);
    if !hc.path.starts_with('/') {
        probs.push(l.problem_at(&format!("{at}.path"), "path must start with /"));
    }
    (probs.0.len() == before).then(|| Check {
        kind: match hc.kind {
            HealthCheckType::Http => Kind::Http,
            HealthCheckType::Tcp => Kind::Tcp,
        },
        path: hc.path.clone(),
        interval: hc.interval.0,
        timeout: hc.timeout.0,
        expect_status,
        rise,
        fall,
    })
}
