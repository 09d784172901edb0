//! The runtime plan: a checked, compiled form of the config that the request path reads.
//!
//! [`Plan::compile`] is the single place where a config is judged: every problem it finds is
//! reported with its position, and a plan exists only if there were none, so the gateway never
//! runs half-configured. A plan is immutable; a reload compiles a new one and swaps it in whole.

pub mod template;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, Loaded, Policy, Problems};
use crate::upstream::{Peer, PeerState, Pool};
pub use template::Template;

/// Largest weight accepted (nginx's ip_hash reduces the hash mod 6271, so larger totals would
/// leave servers unreachable).
pub const MAX_WEIGHT: i64 = 1000;

/// Process-level settings, handed to Pingora's `ServerConf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub pid_file: String,
    pub upgrade_sock: String,
    pub error_log: Option<String>,
    pub threads: usize,
    pub daemon: bool,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
}

/// A built-in demo backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demo {
    pub listen: SocketAddr,
    pub name: String,
}

/// How a location matches the request path, in nginx's order: exact first, then longest prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    Exact(String),
    Prefix(String),
}

/// Per-location overrides of the pool's timeouts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Option<Duration>,
    pub read: Option<Duration>,
    pub send: Option<Duration>,
}

impl Timeouts {
    pub fn any(&self) -> bool {
        self.connect.is_some() || self.read.is_some() || self.send.is_some()
    }

    /// Sets the given timeouts on a peer; the one place that knows a connect timeout bounds
    /// both the TCP connect and the whole connection set-up.
    pub fn apply(&self, o: &mut pingora::upstreams::peer::PeerOptions) {
        if let Some(c) = self.connect {
            o.connection_timeout = Some(c);
            o.total_connection_timeout = Some(c);
        }
        o.read_timeout = self.read.or(o.read_timeout);
        o.write_timeout = self.send.or(o.write_timeout);
    }
}

/// A pool with the rules around it.
#[derive(Debug)]
pub struct PoolPlan {
    pub pool: Arc<Pool>,
    /// For `consistent`: what a request is placed by (`None` = the client address).
    pub hash_key: Option<Template>,
    pub retry_on_timeout: bool,
    /// Statuses that send an idempotent request to the next server.
    pub retry_on_status: Vec<u16>,
    pub health_check: Option<crate::config::HealthCheck>,
}

#[derive(Debug)]
pub struct LocationPlan {
    pub matcher: Match,
    /// Index into [`Plan::pools`].
    pub pool: usize,
    pub set_headers: Vec<(http::HeaderName, Template)>,
    pub timeouts: Timeouts,
}

#[derive(Debug)]
pub struct ServerPlan {
    pub name: String,
    pub listen: Vec<SocketAddr>,
    pub access_log: Option<String>,
    pub error_log: Option<String>,
    /// Exact matches first, then prefixes longest first: the first hit wins.
    pub locations: Vec<LocationPlan>,
}

impl ServerPlan {}

impl LocationPlan {
    pub fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Match::Exact(p) => p == path,
            Match::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

#[derive(Debug)]
pub struct Plan {
    pub settings: Settings,
    pub demos: Vec<Demo>,
    pub pools: Vec<PoolPlan>,
    pub servers: Vec<ServerPlan>,
    /// Whether log directories may be created (only for the embedded default).
    pub create_log_dirs: bool,
}

/// Parses an address the nginx way: `IP:PORT`, `*:PORT`, `PORT`, or `HOST:PORT` (resolved now).
pub fn parse_addr(text: &str, default_ip: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(port) = t.parse::<u16>() {
        return format!("{default_ip}:{port}")
            .parse()
            .map_err(|e| format!("{e}"));
    }
    if let Some(port) = t.strip_prefix("*:") {
        if let Ok(port) = port.parse::<u16>() {
            return format!("0.0.0.0:{port}")
                .parse()
                .map_err(|e| format!("{e}"));
        }
    }
    let bad = || format!("invalid address \"{text}\" (expected IP:PORT, e.g. 127.0.0.1:11001)");
    match t.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => t
            .to_socket_addrs()
            .map_err(|_| bad())?
            .next()
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

impl Plan {
    /// Checks `l` and compiles it. `prev` lends its per-server state to the same servers, so a
    /// reload keeps failure counts and counters.
    pub fn compile(l: &Loaded, prev: Option<&Plan>) -> Result<Plan, Problems> {
        let c = &l.config;
        let mut probs = Problems::default();

        if c.threads < 1 || c.threads > 1024 {
            probs.push(l.problem_at(
                "threads",
                format!("threads must be 1..1024, not {}", c.threads),
            ));
        }
        let check_log = |path: &str, at: &str, probs: &mut Problems| {
            if path == "off" || l.embedded {
                return;
            }
            let dir = config::log_dir(path);
            if !dir.is_dir() {
                probs.push(l.problem_at(
                    at,
                    format!("log directory {} does not exist", dir.display()),
                ));
            }
        };
        if let Some(p) = &c.error_log {
            check_log(p, "error_log", &mut probs);
        }

        let mut demos = Vec::new();
        for (i, d) in c.demo_backends.iter().enumerate() {
            match parse_addr(&d.listen, "127.0.0.1") {
                Ok(listen) => demos.push(Demo {
                    listen,
                    name: d.name.clone(),
                }),
                Err(e) => probs.push(l.problem_at(&format!("demo_backends.{i}.listen"), e)),
            }
        }

        let prev_state: HashMap<(&str, SocketAddr), &Arc<PeerState>> = prev
            .map(|p| {
                p.pools
                    .iter()
                    .map(|pp| &pp.pool)
                    .flat_map(|pool| {
                        pool.peers
                            .iter()
                            .map(|peer| ((pool.name.as_str(), peer.addr), &peer.state))
                    })
                    .collect()
            })
            .unwrap_or_default();

        let mut pools = Vec::new();
        let mut pool_index = HashMap::new();
        for (name, u) in &c.upstreams {
            let base = format!("upstreams.{name}");
            if u.servers.is_empty() {
                probs.push(l.problem_at_key(&base, format!("upstream \"{name}\" has no servers")));
            }
            let mut peers = Vec::new();
            let mut total = 0;
            for (i, s) in u.servers.iter().enumerate() {
                let at = format!("{base}.servers.{i}");
                let addr = match parse_addr(&s.addr, "127.0.0.1") {
                    Ok(a) => a,
                    Err(e) => {
                        probs.push(l.problem_at(&format!("{at}.addr"), e));
                        continue;
                    }
                };
                if !(0..=MAX_WEIGHT).contains(&s.weight) {
                    probs.push(l.problem_at(
                        &format!("{at}.weight"),
                        format!("weight must be 0..{MAX_WEIGHT}, not {}", s.weight),
                    ));
                    continue;
                }
                if !(0..=1000).contains(&s.max_fails) {
                    probs.push(l.problem_at(
                        &format!("{at}.max_fails"),
                        format!("max_fails must be 0..1000, not {}", s.max_fails),
                    ));
                    continue;
                }
                if !(0..=100_000).contains(&s.max_conns) {
                    probs.push(l.problem_at(
                        &format!("{at}.max_conns"),
                        format!("max_conns must be 0..100000, not {}", s.max_conns),
                    ));
                    continue;
                }
                if !s.down && !s.backup {
                    total += s.weight;
                }
                let mut peer = Peer::new(addr, s.weight as u32);
                Timeouts {
                    connect: Some(u.connect_timeout.0),
                    read: Some(u.read_timeout.0),
                    send: Some(u.send_timeout.0),
                }
                .apply(&mut peer.http.options);
                peer.http.options.idle_timeout = Some(u.idle_timeout.0);
                peer.max_fails = s.max_fails as u32;
                peer.fail_timeout = s.fail_timeout.0;
                peer.down = s.down;
                peer.backup = s.backup;
                peer.max_conns = s.max_conns as u32;
                if let Some(state) = prev_state.get(&(name.as_str(), addr)) {
                    peer.state = Arc::clone(state);
                }
                peers.push(peer);
            }
            if !u.servers.is_empty() && total == 0 && peers.len() == u.servers.len() {
                probs.push(l.problem_at(
                    &format!("{base}.servers"),
                    format!("upstream \"{name}\": every server has weight 0 or is down, so none can be chosen"),
                ));
            }
            if backup_with_ip_hash(u) {
                probs.push(l.problem_at(
                    &format!("{base}.policy"),
                    "backup servers cannot be used with ip_hash (as in nginx)",
                ));
            }
            let hash_key = match (&u.hash_key, u.policy) {
                (Some(_), p) if p != Policy::Consistent => {
                    probs.push(l.problem_at(
                        &format!("{base}.hash_key"),
                        "hash_key needs policy: consistent",
                    ));
                    None
                }
                (Some(k), _) => match Template::compile(k) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        probs.push(l.problem_at(&format!("{base}.hash_key"), e));
                        None
                    }
                },
                (None, _) => None,
            };
            if !(0..=1000).contains(&u.max_tries) {
                probs.push(l.problem_at(
                    &format!("{base}.max_tries"),
                    format!("max_tries must be 0..1000, not {}", u.max_tries),
                ));
            }
            if let Some(hc) = &u.health_check {
                let hat = format!("{base}.health_check");
                for (k, v) in [("rise", hc.rise), ("fall", hc.fall)] {
                    if !(1..=100).contains(&v) {
                        probs.push(l.problem_at(
                            &format!("{hat}.{k}"),
                            format!("{k} must be 1..100, not {v}"),
                        ));
                    }
                }
                if let Some(st) = hc.expect_status {
                    if !(100..=599).contains(&st) {
                        probs.push(l.problem_at(
                            &format!("{hat}.expect_status"),
                            format!("expect_status must be an HTTP status, not {st}"),
                        ));
                    }
                }
                if hc.interval.0.is_zero() {
                    probs
                        .push(l.problem_at(&format!("{hat}.interval"), "interval must be above 0"));
                }
                if !hc.path.starts_with('/') {
                    probs.push(l.problem_at(&format!("{hat}.path"), "path must start with /"));
                }
            }
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
            let mut pool = Pool::new(name.clone(), u.policy, peers);
            if u.max_tries > 0 {
                pool.max_tries = u.max_tries as usize;
            }
            pool_index.insert(name.as_str(), pools.len());
            pools.push(PoolPlan {
                pool: Arc::new(pool),
                hash_key,
                retry_on_timeout: u.retry_on_timeout,
                retry_on_status,
                health_check: u.health_check.clone(),
            });
        }

        let mut seen_listen: HashMap<SocketAddr, String> = HashMap::new();
        let mut servers = Vec::new();
        for (name, s) in &c.servers {
            let base = format!("servers.{name}");
            if s.listen.is_empty() {
                probs.push(
                    l.problem_at_key(&base, format!("server \"{name}\" has no listen address")),
                );
            }
            let mut listen = Vec::new();
            for (i, a) in s.listen.iter().enumerate() {
                let at = format!("{base}.listen.{i}");
                match parse_addr(a, "0.0.0.0") {
                    Ok(addr) => {
                        if let Some(other) = seen_listen.get(&addr) {
                            probs.push(l.problem_at(
                                &at,
                                format!("duplicate listen address {addr} (already used by server \"{other}\")"),
                            ));
                        } else {
                            seen_listen.insert(addr, name.clone());
                            listen.push(addr);
                        }
                    }
                    Err(e) => probs.push(l.problem_at(&at, e)),
                }
            }
            for d in &demos {
                if listen.contains(&d.listen) {
                    probs.push(l.problem_at(
                        &base,
                        format!(
                            "demo backend {} listens on {}, like this server",
                            d.name, d.listen
                        ),
                    ));
                }
            }
            if let Some(p) = &s.access_log {
                check_log(p, &format!("{base}.access_log"), &mut probs);
            }
            if let Some(p) = &s.error_log {
                check_log(p, &format!("{base}.error_log"), &mut probs);
            }
            let mut locations = Vec::new();
            let mut seen_match = HashSet::new();
            for (i, loc) in s.locations.iter().enumerate() {
                let at = format!("{base}.locations.{i}");
                let matcher = match parse_match(&loc.matcher) {
                    Ok(m) => m,
                    Err(e) => {
                        probs.push(l.problem_at(&format!("{at}.match"), e));
                        continue;
                    }
                };
                if !seen_match.insert(matcher.clone()) {
                    probs.push(l.problem_at(
                        &format!("{at}.match"),
                        format!("duplicate location \"{}\"", loc.matcher),
                    ));
                }
                let pool = match pool_index.get(loc.proxy_pass.as_str()) {
                    Some(&p) => p,
                    None => {
                        probs.push(l.problem_at(
                            &format!("{at}.proxy_pass"),
                            format!("unknown upstream \"{}\" in proxy_pass", loc.proxy_pass),
                        ));
                        continue;
                    }
                };
                let mut set_headers = Vec::new();
                for (h, v) in &loc.proxy_set_header {
                    let hat = format!("{at}.proxy_set_header.{h}");
                    let hname = match http::HeaderName::from_bytes(h.as_bytes()) {
                        Ok(n) => n,
                        Err(_) => {
                            probs.push(
                                l.problem_at_key(&hat, format!("invalid header name \"{h}\"")),
                            );
                            continue;
                        }
                    };
                    match Template::compile(v) {
                        Ok(t) => set_headers.push((hname, t)),
                        Err(e) => probs.push(l.problem_at(&hat, e)),
                    }
                }
                let timeouts = Timeouts {
                    connect: loc.connect_timeout.map(|t| t.0),
                    read: loc.read_timeout.map(|t| t.0),
                    send: loc.send_timeout.map(|t| t.0),
                };
                locations.push(LocationPlan {
                    matcher,
                    pool,
                    set_headers,
                    timeouts,
                });
            }
            locations.sort_by_key(|l| match &l.matcher {
                Match::Exact(_) => (0, 0),
                Match::Prefix(p) => (1, usize::MAX - p.len()),
            });
            servers.push(ServerPlan {
                name: name.clone(),
                listen,
                access_log: s.access_log.clone().filter(|p| p != "off"),
                error_log: s.error_log.clone().filter(|p| p != "off"),
                locations,
            });
        }
        if c.servers.is_empty() && demos.is_empty() {
            probs.push(l.problem_at("", "no servers: nothing would listen"));
        }

        if !probs.is_empty() {
            return Err(probs.sorted());
        }
        Ok(Plan {
            settings: Settings {
                pid_file: c.pid_file.clone(),
                upgrade_sock: c.upgrade_sock.clone(),
                error_log: c.error_log.clone().filter(|p| p != "off"),
                threads: c.threads as usize,
                daemon: c.daemon,
                grace_period: c.grace_period.0,
                shutdown_timeout: c.shutdown_timeout.0,
            },
            demos,
            pools,
            servers,
            create_log_dirs: l.embedded,
        })
    }

    /// Whether `other` can be applied in place: same listeners and process settings. Anything
    /// else needs new sockets or a new Pingora server, i.e. an upgrade.
    pub fn same_listeners(&self, other: &Plan) -> bool {
        self.settings == other.settings
            && self.demos == other.demos
            && self.servers.len() == other.servers.len()
            && self
                .servers
                .iter()
                .zip(&other.servers)
                .all(|(a, b)| a.name == b.name && a.listen == b.listen)
    }
}

fn backup_with_ip_hash(u: &crate::config::Upstream) -> bool {
    u.policy == Policy::IpHash && u.servers.iter().any(|s| s.backup)
}

fn parse_match(text: &str) -> Result<Match, String> {
    let t = text.trim();
    if let Some(exact) = t.strip_prefix('=') {
        let p = exact.trim();
        if p.starts_with('/') {
            return Ok(Match::Exact(p.to_string()));
        }
    } else if t.starts_with('/') {
        return Ok(Match::Prefix(t.to_string()));
    }
    Err(format!(
        "invalid location \"{text}\" (expected \"/prefix\" or \"= /exact/path\")"
    ))
}
