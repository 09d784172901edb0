//! Per-plan tables of metric handles, resolved when the plan is compiled, so that the request
//! path finds each counter by index: no label hashing, no lock.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::histogram::Histogram;
use super::{families, Reason, CLASSES};
use crate::canary::Side;
use crate::plan::{CanaryPlan, PoolPlan, ServerPlan};

/// Every metric handle a plan's requests can touch. Empty when metrics are off (no `admin`
/// listener: nobody could read them), and every method then does nothing.
#[derive(Debug, Default)]
pub struct Handles {
    /// `graygate_requests_total`: server block x route x upstream server (or none) x class.
    counters: Vec<Counter>,
    per_server: usize,
    /// Offset of each route within a server block's part of `counters`.
    offsets: Vec<usize>,
    /// The pool of each route.
    route_pool: Vec<usize>,
    pools: usize,
    /// Per route: `graygate_request_duration_seconds` of its pool and side.
    durations: Vec<Histogram>,
    /// Per route: `graygate_upstream_response_duration_seconds`.
    upstream_durations: Vec<Histogram>,
    /// `graygate_upstream_failures_total`: pool x upstream server x reason.
    failures: Vec<Counter>,
    /// Offset of each pool in `failures`.
    failure_offsets: Vec<usize>,
    /// Per server block: `graygate_connections` by state.
    conns: Vec<Conns>,
}

/// A server block's connection gauges; `waiting` is what is left, worked out at scrape time.
#[derive(Debug, Clone)]
pub struct Conns {
    pub active: Gauge,
    pub reading: Gauge,
    pub writing: Gauge,
    pub(super) waiting: Gauge,
}

/// The routes of a plan: each pool reached directly, then each canary's two sides.
pub(super) fn routes<'a>(
    pools: &'a [PoolPlan],
    canaries: &'a [CanaryPlan],
) -> impl Iterator<Item = (usize, Option<(&'a str, Side)>)> + 'a {
    (0..pools.len())
        .map(|p| (p, None))
        .chain(canaries.iter().flat_map(|c| {
            [Side::Stable, Side::Canary]
                .into_iter()
                .map(move |s| (c.pools[s as usize], Some((c.name.as_str(), s))))
        }))
}

fn side_label(side: Option<(&str, Side)>) -> String {
    side.map_or(String::new(), |(_, s)| s.name().to_string())
}

impl Handles {
    /// Resolves every handle `plan` can touch (label sets are created once per process, so a
    /// reload keeps counting into the same series); nothing when `on` is false.
    pub fn build(
        servers: &[ServerPlan],
        pools: &[PoolPlan],
        canaries: &[CanaryPlan],
        on: bool,
    ) -> Handles {
        if !on {
            return Handles::default();
        }
        let f = families();
        let mut h = Handles {
            pools: pools.len(),
            ..Handles::default()
        };
        for (p, side) in routes(pools, canaries) {
            h.offsets.push(h.per_server);
            h.route_pool.push(p);
            h.per_server += (pools[p].pool.peers.len() + 1) * CLASSES.len();
            let labels = vec![
                ("pool", pools[p].pool.name.clone()),
                ("side", side_label(side)),
            ];
            h.durations.push(f.durations.get_or_create_owned(&labels));
            h.upstream_durations
                .push(f.upstream_durations.get_or_create_owned(&labels));
        }
        for pp in pools {
            h.failure_offsets.push(h.failures.len());
            for peer in &pp.pool.peers {
                for r in Reason::ALL {
                    h.failures.push(f.failures.get_or_create_owned(&vec![
                        ("pool", pp.pool.name.clone()),
                        ("upstream", peer.addr.to_string()),
                        ("reason", r.name().to_string()),
                    ]));
                }
            }
        }
        h.counters.reserve(h.per_server * servers.len());
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
                            ("side", side_label(side)),
                            ("code", class.to_string()),
                        ];
                        h.counters.push(f.requests.get_or_create_owned(&labels));
                    }
                }
            }
            let gauge = |state: &str| {
                f.connections
                    .get_or_create_owned(&vec![("server", s.name.clone()), ("state", state.into())])
            };
            h.conns.push(Conns {
                active: gauge("active"),
                reading: gauge("reading"),
                writing: gauge("writing"),
                waiting: gauge("waiting"),
            });
        }
        h
    }

    #[inline]
    fn route(&self, pool: usize, canary: Option<(usize, Side)>) -> usize {
        match canary {
            None => pool,
            Some((c, s)) => self.pools + 2 * c + s as usize,
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
        if let Some(h) = self.durations.get(self.route(pool, canary)) {
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
        let Some(&off) = self.offsets.get(self.route(pool, canary)) else {
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

    /// One upstream attempt's time, from connecting to the response's last byte.
    #[inline]
    pub fn upstream_time(
        &self,
        pool: usize,
        canary: Option<(usize, Side)>,
        took: std::time::Duration,
    ) {
        if let Some(h) = self.upstream_durations.get(self.route(pool, canary)) {
            h.observe(took);
        }
    }

    /// Counts a failed attempt of server `peer` of `pool`.
    #[inline]
    pub fn failure(&self, pool: usize, peer: usize, reason: Reason) {
        let Some(&off) = self.failure_offsets.get(pool) else {
            return;
        };
        if let Some(c) = self
            .failures
            .get(off + peer * Reason::ALL.len() + reason as usize)
        {
            c.inc();
        }
    }

    /// The connection gauges of server block `server` (none when metrics are off).
    #[inline]
    pub fn conns(&self, server: usize) -> Option<&Conns> {
        self.conns.get(server)
    }

    /// Requests answered by, and failed attempts of, server `peer` of `pool` since the process
    /// started (for `/api/status`; 0 when metrics are off).
    pub fn peer_totals(&self, pool: usize, peer: usize) -> (u64, u64) {
        let mut requests = 0;
        let servers = self
            .counters
            .len()
            .checked_div(self.per_server)
            .unwrap_or(0);
        for (route, &p) in self.route_pool.iter().enumerate() {
            if p != pool {
                continue;
            }
            for server in 0..servers {
                let at =
                    server * self.per_server + self.offsets[route] + (peer + 1) * CLASSES.len();
                if let Some(cs) = self.counters.get(at..at + CLASSES.len()) {
                    requests += cs.iter().map(Counter::get).sum::<u64>();
                }
            }
        }
        let failures = self
            .failure_offsets
            .get(pool)
            .map(|&off| off + peer * Reason::ALL.len())
            .and_then(|at| self.failures.get(at..at + Reason::ALL.len()))
            .map_or(0, |cs| cs.iter().map(Counter::get).sum());
        (requests, failures)
    }

    /// Sets each server block's `waiting` gauge: open connections neither reading a request
    /// head nor being answered (nginx's stub_status "Waiting").
    pub(super) fn settle_waiting(&self) {
        for c in &self.conns {
            let w = c.active.get() - c.reading.get() - c.writing.get();
            c.waiting.set(w.max(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::plan::Plan;

    fn plan(admin: bool) -> Plan {
        let admin = if admin {
            "admin: { listen: 127.0.0.1:3 }\n"
        } else {
            ""
        };
        let src = format!(
            "{admin}upstreams:\n  p: {{ servers: [{{ addr: 127.0.0.1:2 }}, {{ addr: 127.0.0.1:4 }}] }}\nservers:\n  s:\n    listen: [\"127.0.0.1:1\"]\n    locations: [{{ match: /, proxy_pass: p }}]\n"
        );
        let l = crate::config::parse("t.yaml".into(), &src, false).unwrap();
        Plan::compile(&l, None).unwrap()
    }

    #[test]
    fn metrics_are_off_without_an_admin_listener() {
        let off = plan(false);
        assert!(off.metrics.conns(0).is_none());
        off.metrics
            .observe(0, 0, None, Some(1), 200, Duration::from_millis(1));
        off.metrics.failure(0, 0, Reason::Connect);
        assert_eq!(off.metrics.peer_totals(0, 1), (0, 0));

        let on = plan(true);
        assert!(on.metrics.conns(0).is_some());
        let before = on.metrics.peer_totals(0, 1);
        on.metrics
            .observe(0, 0, None, Some(1), 200, Duration::from_millis(1));
        on.metrics
            .observe(0, 0, None, Some(1), 503, Duration::from_millis(1));
        on.metrics.failure(0, 1, Reason::Timeout);
        on.metrics.failure(0, 0, Reason::Connect);
        let after = on.metrics.peer_totals(0, 1);
        assert_eq!((after.0 - before.0, after.1 - before.1), (2, 1));
    }
}
