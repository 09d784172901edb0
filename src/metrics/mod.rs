//! Prometheus metrics on the admin listener's `GET /metrics`, through `prometheus-client`.
//!
//! The request path touches one atomic counter per request: its handle is found by index in a
//! table built when the plan is compiled ([`Handles`]), so no label hashing and no lock happen
//! per request. Counters live in process-wide families, so a reload (a new table) keeps
//! counting into the same series. Gauges (percent, state, health) are read from the plan at
//! scrape time.
//!
//! Families: `graygate_requests_total{server,pool,upstream,canary,side,code}`,
//! `graygate_request_duration_seconds{pool,side}` and
//! `graygate_upstream_response_duration_seconds{pool,side}` (lock-free [`histogram`]s),
//! `graygate_upstream_failures_total{pool,upstream,reason}`,
//! `graygate_connections{server,state}`, `graygate_canary_percent{canary}`,
//! `graygate_canary_state{canary,state}`, `graygate_canary_transitions_total{canary,from,to}`,
//! `graygate_upstream_healthy{pool,upstream}`.
//!
//! Metrics are recorded only when the config has an `admin` listener, the only place they can
//! be read; without one every handle table is empty and the request path skips them (this is
//! the "metrics off" build the benchmark compares against).

mod handles;
pub mod histogram;

use std::sync::OnceLock;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::canary::{Phase, Side};
use crate::plan::Plan;
pub use handles::{Conns, Handles};
use histogram::Histogram;

type Labels = Vec<(&'static str, String)>;

struct Families {
    registry: Registry,
    requests: Family<Labels, Counter>,
    percent: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    state: Family<Labels, Gauge>,
    healthy: Family<Labels, Gauge>,
    durations: Family<Labels, Histogram>,
    upstream_durations: Family<Labels, Histogram>,
    failures: Family<Labels, Counter>,
    connections: Family<Labels, Gauge>,
    transitions: Family<Labels, Counter>,
    fleet_up: Family<Labels, Gauge>,
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
        let upstream_durations = Family::default();
        let failures = Family::default();
        let connections = Family::default();
        let transitions = Family::default();
        let fleet_up = Family::default();
        registry.register(
            "graygate_fleet_store_up",
            "In a fleet (config_store): 1 while etcd is reachable, 0 while it is away (live changes are refused), by the config revision this gateway runs",
            fleet_up.clone(),
        );
        registry.register(
            "graygate_request_duration_seconds",
            "Time from reading a request's header to its last byte sent, by pool and canary side",
            durations.clone(),
        );
        registry.register(
            "graygate_upstream_response_duration_seconds",
            "Time from connecting to an upstream server to the last byte of its response (nginx's $upstream_response_time), one observation per attempt, by pool and canary side",
            upstream_durations.clone(),
        );
        registry.register(
            "graygate_upstream_failures",
            "Failed upstream attempts (what passive health counts against a server), by pool, server and reason",
            failures.clone(),
        );
        registry.register(
            "graygate_connections",
            "Client connections of a server block now: active (all open), reading (a request head), writing (a request being answered), waiting (idle keep-alive)",
            connections.clone(),
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
            upstream_durations,
            failures,
            connections,
            transitions,
            fleet_up,
        }
    })
}

pub(crate) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Why an upstream attempt failed: the faults nginx's passive health counts (and retries on,
/// within `proxy_next_upstream error timeout invalid_header http_NNN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The connection could not be made (refused, unreachable).
    Connect = 0,
    /// Connecting, sending or reading timed out.
    Timeout,
    /// The server closed or reset the connection before its response was complete.
    Closed,
    /// The response was not valid HTTP (nginx's `invalid_header`).
    InvalidHeader,
    /// A status listed in `retry_on_status` (nginx's `http_502`, `http_503`, ...).
    HttpStatus,
    /// Anything else that failed on the server's side.
    Other,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::Connect,
        Reason::Timeout,
        Reason::Closed,
        Reason::InvalidHeader,
        Reason::HttpStatus,
        Reason::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Connect => "connect",
            Reason::Timeout => "timeout",
            Reason::Closed => "closed",
            Reason::InvalidHeader => "invalid_header",
            Reason::HttpStatus => "http_status",
            Reason::Other => "other",
        }
    }

    /// The reason of a server's fault `e`; `connecting`: it happened before a connection was
    /// made.
    pub fn of(e: &pingora::Error, connecting: bool) -> Reason {
        use pingora::ErrorType as T;
        match e.etype() {
            T::HTTPStatus(_) => Reason::HttpStatus,
            T::ConnectTimedout | T::ReadTimedout | T::WriteTimedout => Reason::Timeout,
            _ if connecting => Reason::Connect,
            T::ConnectionClosed | T::ReadError | T::WriteError => Reason::Closed,
            T::InvalidHTTPHeader | T::H1Error | T::H2Error | T::InvalidH2 => Reason::InvalidHeader,
            _ => Reason::Other,
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

/// Holds a gauge one higher for as long as it lives (a connection reading its request head;
/// dropped also when the connection's task is cancelled).
pub struct Busy<'a>(&'a Gauge);

impl<'a> Busy<'a> {
    pub fn new(g: &'a Gauge) -> Busy<'a> {
        g.inc();
        Busy(g)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.dec();
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
    plan.metrics.settle_waiting();
    if let Some(up) = crate::fleet::agent::reachable() {
        let rev = crate::fleet::watch::running_revision(&plan.source.text).unwrap_or(0);
        f.fleet_up.clear();
        f.fleet_up
            .get_or_create(&vec![("revision", rev.to_string())])
            .set(i64::from(up));
    }
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
