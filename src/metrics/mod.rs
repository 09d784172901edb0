//! Prometheus metrics on the admin listener's `GET /metrics`, through `prometheus-client`.
//!
//! The request path touches one atomic counter per request: its handle is found by index in a
//! table built when the plan is compiled ([`Handles`]), so no label hashing and no lock happen
//! per request. Counters live in process-wide families, so a reload (a new table) keeps
//! counting into the same series. Gauges (percent, state, health) are read from the plan at
//! scrape time.
//!
//! Done: `graygate_requests_total{server,pool,upstream,canary,side,code}`,
//! `graygate_request_duration_seconds{pool,side}` (a lock-free [`histogram`]),
//! `graygate_canary_percent{canary}`, `graygate_canary_state{canary,state}`,
//! `graygate_canary_transitions_total{canary,from,to}`, `graygate_upstream_healthy{pool,upstream}`.
//! Not yet: the upstream response histogram, failures and connections of issue 15.

pub mod histogram;

use std::sync::OnceLock;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::canary::{Phase, Side};
use crate::plan::{Plan, PoolPlan, ServerPlan};
use histogram::Histogram;

type Labels = Vec<(&'static str, String)>;

struct Families {
    registry: Registry,
    requests: Family<Labels, Counter>,
    percent: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    state: Family<Labels, Gauge>,
    healthy: Family<Labels, Gauge>,
    durations: Family<Labels, Histogram>,
    transitions: Family<Labels, Counter>,
}

fn families() -> &'static Families {
    static F: OnceLock<Families> = OnceLock::new();
    F.get_or_init(|| {
        let mut registry = Registry::default();
        let requests = Family::default();
        let percent = Family::default();
        let state = Family::default();
        let healthy = Family::default();
        let durations = Family::default();
        let transitions = Family::default();
        registry.register(
            "graygate_request_duration_seconds",
            "Time from reading a request's header to its last byte sent, by pool and canary side",
            durations.clone(),
        );
        registry.register(
            "graygate_canary_transitions",
            "Changes of a canary's state, by the state left and the state entered",
            transitions.clone(),
        );
        registry.register(
            "graygate_requests",
            "Requests answered, by server block, pool, upstream server, canary side and status class",
            requests.clone(),
        );
        registry.register(
            "graygate_canary_percent",
            "Share of users on the canary side, in percent",
            percent.clone(),
        );
        registry.register(
            "graygate_canary_state",
            "1 for the state each canary is in, 0 for the others",
            state.clone(),
        );
        registry.register(
            "graygate_upstream_healthy",
            "1 if the server is up and passes its health check",
            healthy.clone(),
        );
        Families {
            registry,
            requests,
            percent,
            state,
            healthy,
            durations,
            transitions,
        }
    })
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Per-plan table of request counters: server block x route (pool, or canary side) x
/// upstream server (or none) x status class.
#[derive(Debug, Default)]
pub struct Handles {
    counters: Vec<Counter>,
    per_server: usize,
    /// Offset of each route within a server block's part.
    offsets: Vec<usize>,
    pools: usize,
    /// Per route (as `offsets`): the request duration histogram of its pool and side.
    durations: Vec<Histogram>,
}

/// The routes of a plan: each pool reached directly, then each canary's two sides.
fn routes<'a>(
    pools: &'a [PoolPlan],
    canaries: &'a [crate::plan::CanaryPlan],
) -> impl Iterator<Item = (usize, Option<(&'a str, Side)>)> + 'a {
    (0..pools.len())
        .map(|p| (p, None))
        .chain(canaries.iter().flat_map(|c| {
            [Side::Stable, Side::Canary]
                .into_iter()
                .map(move |s| (c.pools[s as usize], Some((c.name.as_str(), s))))
        }))
}

impl Handles {
    /// Resolves every counter `plan` can touch (label sets are created once per process).
    pub fn build(
        servers: &[ServerPlan],
        pools: &[PoolPlan],
        canaries: &[crate::plan::CanaryPlan],
    ) -> Handles {
        let f = families();
        let mut offsets = Vec::new();
        let mut per_server = 0;
        for (p, _) in routes(pools, canaries) {
            offsets.push(per_server);
            per_server += (pools[p].pool.peers.len() + 1) * CLASSES.len();
        }
        let durations = routes(pools, canaries)
            .map(|(p, side)| {
                let labels = vec![
                    ("pool", pools[p].pool.name.clone()),
                    (
                        "side",
                        side.map_or(String::new(), |(_, s)| s.name().to_string()),
                    ),
                ];
                f.durations.get_or_create_owned(&labels)
            })
            .collect();
        let mut counters = Vec::with_capacity(per_server * servers.len());
        for s in servers {
            for (p, side) in routes(pools, canaries) {
                let pool = &pools[p].pool;
                let ups = std::iter::once(String::new())
                    .chain(pool.peers.iter().map(|peer| peer.addr.to_string()));
                for up in ups {
                    for class in CLASSES {
                        let labels = vec![
                            ("server", s.name.clone()),
                            ("pool", pool.name.clone()),
                            ("upstream", up.clone()),
                            ("canary", side.map_or(String::new(), |(c, _)| c.to_string())),
                            (
                                "side",
                                side.map_or(String::new(), |(_, s)| s.name().to_string()),
                            ),
                            ("code", class.to_string()),
                        ];
                        counters.push(f.requests.get_or_create_owned(&labels));
                    }
                }
            }
        }
        Handles {
            counters,
            per_server,
            offsets,
            pools: pools.len(),
            durations,
        }
    }

    /// Records one answered request: its count and its duration.
    #[inline]
    pub fn observe(
        &self,
        server: usize,
        pool: usize,
        canary: Option<(usize, Side)>,
        peer: Option<usize>,
        status: u16,
        took: std::time::Duration,
    ) {
        self.request(server, pool, canary, peer, status);
        let route = match canary {
            None => pool,
            Some((c, s)) => self.pools + 2 * c + s as usize,
        };
        if let Some(h) = self.durations.get(route) {
            h.observe(took);
        }
    }

    /// Counts one answered request. `canary`: (index, side) when a canary chose the pool.
    #[inline]
    pub fn request(
        &self,
        server: usize,
        pool: usize,
        canary: Option<(usize, Side)>,
        peer: Option<usize>,
        status: u16,
    ) {
        if !(100..600).contains(&status) {
            return;
        }
        let route = match canary {
            None => pool,
            Some((c, s)) => self.pools + 2 * c + s as usize,
        };
        let Some(&off) = self.offsets.get(route) else {
            return;
        };
        let slot = server * self.per_server
            + off
            + peer.map_or(0, |i| i + 1) * CLASSES.len()
            + usize::from(status / 100 - 1);
        if let Some(c) = self.counters.get(slot) {
            c.inc();
        }
    }
}

/// Records one answered request of `plan` (one call from the proxy's logging phase): the
/// request counter, the duration histogram and, for a canary, its side's analysis counts.
#[inline]
pub fn record(
    plan: &Plan,
    server: usize,
    pool: usize,
    canary: Option<(usize, Side)>,
    peer: Option<usize>,
    status: u16,
    took: std::time::Duration,
) {
    if !(100..600).contains(&status) {
        return;
    }
    plan.metrics
        .observe(server, pool, canary, peer, status, took);
    if let Some(c) = canary.and_then(|(c, s)| plan.canaries.get(c).map(|c| (c, s))) {
        c.0.state.sides[c.1 as usize].record(status, took);
    }
}

/// Counts a canary's change of state.
pub fn transition(canary: &str, from: Phase, to: Phase) {
    families()
        .transitions
        .get_or_create(&vec![
            ("canary", canary.to_string()),
            ("from", from.name().to_string()),
            ("to", to.name().to_string()),
        ])
        .inc();
}

/// The exposition (OpenMetrics text, which Prometheus reads) with gauges read from `plan`.
pub fn encode_plan(plan: &Plan) -> Vec<u8> {
    let f = families();
    for c in &plan.canaries {
        let s = c.state.status();
        f.percent
            .get_or_create(&vec![("canary", c.name.clone())])
            .set(f64::from(s.percent_bp) / 100.0);
        for p in Phase::ALL {
            f.state
                .get_or_create(&vec![
                    ("canary", c.name.clone()),
                    ("state", p.name().to_string()),
                ])
                .set(i64::from(p == s.phase));
        }
    }
    for pp in &plan.pools {
        for peer in &pp.pool.peers {
            let up = !peer.down
                && peer
                    .state
                    .healthy
                    .load(std::sync::atomic::Ordering::Relaxed);
            f.healthy
                .get_or_create(&vec![
                    ("pool", pp.pool.name.clone()),
                    ("upstream", peer.addr.to_string()),
                ])
                .set(i64::from(up));
        }
    }
    let mut out = String::new();
    if encode(&mut out, &f.registry).is_err() {
        out.clear();
    }
    out.into_bytes()
}
