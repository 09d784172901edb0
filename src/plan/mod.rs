//! The runtime plan: a checked, compiled form of the config that the request path reads.
//!
//! [`Plan::compile`] is the single place where a config is judged: every problem it finds is
//! reported with its position, and a plan exists only if there were none, so the gateway never
//! runs half-configured. A plan is immutable; a reload compiles a new one and swaps it in whole.

mod canary;
mod canary_ramp;
#[cfg(test)]
mod canary_tests;
pub mod files;
pub mod limits;
pub mod location;
pub mod logs;
mod pool;
#[cfg(test)]
mod props;
pub mod response;
mod server;
mod settings;
pub mod template;
#[cfg(test)]
mod tests;
mod tls;
pub mod uwsgi;
mod variable;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::canary::store::WeightOverride;
use crate::canary::Store;
use crate::config::{Loaded, Problems};
use crate::upstream::health::Check;
use crate::upstream::{maglev, Key, Pool};
pub use canary::{AdminPlan, CanaryPlan, Pick, Target};
pub use canary_ramp::RampPlan;
pub use location::Match;
pub use template::{Template, Vars};

/// Largest weight of one server: a sanity bound per server (weights are shares, and 1000 allows
/// steps of 0.1% between two servers), not a bound on the total; nginx has no such limit. The
/// total matters to `ip_hash` only: nginx's hash is below 6271 and is reduced modulo the total
/// weight, so a server whose slots all lie past 6270 would never be hashed to (checked in
/// `pool::compile_pool`).
pub const MAX_WEIGHT: i64 = 1000;

/// Most servers one request may try: Pingora's proxy loop gives up after this many attempts
/// (`max_retries` of its `ServerConf`, 16 by default), whatever the pool would allow.
pub const MAX_TRIES: usize = 16;

/// Process-level settings, handed to Pingora's `ServerConf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub pid_file: String,
    pub error_log: Option<String>,
    pub threads: usize,
    /// Pingora's `work_stealing` (see `config::Config::work_stealing`).
    pub work_stealing: bool,
    pub daemon: bool,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    /// Most client connections open at once in a worker, all server blocks together.
    pub worker_connections: usize,
}

/// A built-in demo backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demo {
    pub listen: SocketAddr,
    pub name: String,
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
    /// The active health check, if the pool has one.
    pub health_check: Option<Arc<Check>>,
}

impl PoolPlan {
    /// What a request is placed by: the hash of the rendered `hash_key` (rendered into
    /// `scratch`), or the client address. A `hash_key` that renders empty for a request (e.g.
    /// `$cookie_uid` without the cookie) places it by round robin, as nginx's `hash` does.
    pub fn placement(&self, vars: &dyn Vars, scratch: &mut Vec<u8>) -> Key {
        match &self.hash_key {
            Some(tpl) => {
                scratch.clear();
                tpl.render(vars, scratch);
                if scratch.is_empty() {
                    Key::None
                } else {
                    Key::Hash(maglev::hash(scratch, 0))
                }
            }
            None => Key::from(vars.client().map(|a| a.ip())),
        }
    }
}

#[derive(Debug)]
pub struct LocationPlan {
    pub matcher: Match,
    /// The pool or canary of `proxy_pass`; [`Plan::route`] resolves it per request. `None`
    /// when the location answers itself (`return`).
    pub target: Option<Target>,
    /// `return`: answered before any proxying, as nginx's rewrite phase does.
    pub ret: Option<response::ReturnPlan>,
    /// `root`/`alias`: files from disk (when there is no `proxy_pass`).
    pub files: Option<files::FilesPlan>,
    pub set_headers: Vec<(http::HeaderName, Template)>,
    /// `add_header`, the location's own or else the server's.
    pub add_headers: Vec<response::AddHeaderPlan>,
    pub timeouts: Timeouts,
    /// `uwsgi_pass`: the request goes to a uwsgi app server (`target` is then `None`).
    pub uwsgi: Option<uwsgi::UwsgiPlan>,
}

impl LocationPlan {
    /// Whether the location answers requests itself (`return`, files) rather than proxying.
    pub fn answers(&self) -> bool {
        self.ret.is_some() || self.files.is_some()
    }
}

#[derive(Debug)]
pub struct ServerPlan {
    pub name: String,
    pub listen: Vec<SocketAddr>,
    /// The TLS listeners among `listen`, with their certificates.
    pub tls: Vec<crate::tls::TlsPlan>,
    pub access_log: Option<String>,
    /// How `access_log` lines look (`combined` unless a `log_formats` entry is named).
    pub access_format: Arc<logs::LogFormat>,
    pub error_log: Option<String>,
    /// In config order; [`ServerPlan::find`] picks one as nginx does.
    pub locations: Vec<LocationPlan>,
    pub router: location::Router,
    /// Client limits and `real_ip`.
    pub limits: limits::Limits,
}

#[derive(Debug)]
pub struct Plan {
    pub settings: Settings,
    pub demos: Vec<Demo>,
    pub pools: Vec<PoolPlan>,
    pub servers: Vec<ServerPlan>,
    /// Sticky splits between two pools; [`Target::Canary`] indexes this.
    pub canaries: Vec<CanaryPlan>,
    pub admin: Option<AdminPlan>,
    /// The state file and who may change live values, one per process, handed from plan to plan.
    pub store: Arc<Store>,
    /// The live weights this plan runs with (set by the admin API, kept over reloads while the
    /// file's weight stays the one they replaced).
    pub weights: Vec<WeightOverride>,
    /// The text this plan was compiled from, so that a live weight change recompiles exactly
    /// what runs (not a file edited since).
    pub source: Source,
    /// The request counters this plan's requests can touch, resolved once.
    pub metrics: crate::metrics::Handles,
    /// Whether log directories may be created (only for the embedded default).
    pub create_log_dirs: bool,
    /// Worth saying, not refusing (`-t` prints them, a worker logs them).
    pub warnings: Vec<crate::config::Problem>,
}

/// A config's text and name, as [`crate::config::parse`] takes them.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: Arc<str>,
    pub embedded: bool,
}

/// A time value that must be above zero (a zero timeout fails every request), at the dotted
/// path `at`, whose last part names it.
fn check_above_zero(l: &Loaded, at: &str, d: Duration, probs: &mut Problems) {
    if d.is_zero() {
        let key = at.rsplit('.').next().unwrap_or(at);
        probs.push(l.problem_at(at, format!("{key} must be above 0")));
    }
}

impl Plan {
    /// Checks `l` and compiles it. `prev` lends its per-server state to the same servers, so a
    /// reload keeps failure counts and health verdicts, and its live weights.
    ///
    /// Compiling changes nothing that runs: state shared with `prev` (health verdicts, canary
    /// percents, the store's weights) changes only in [`Plan::commit`], once this plan is the
    /// live one. A plan that is rejected, or whose log files cannot be opened, leaves all as it was.
    pub fn compile(l: &Loaded, prev: Option<&Plan>) -> Result<Plan, Problems> {
        Plan::compile_with(l, prev, None)
    }

    /// [`Plan::compile`] with `weights` as the live weights instead of those `prev` runs with
    /// (a weight change, or the state file's weights at start).
    pub fn compile_with(
        l: &Loaded,
        prev: Option<&Plan>,
        weights: Option<&[WeightOverride]>,
    ) -> Result<Plan, Problems> {
        let c = &l.config;
        let mut probs = Problems::default();
        let settings = settings::compile_settings(l, &mut probs);
        let demos = settings::compile_demos(l, &mut probs);

        let store = match prev {
            Some(p) if p.settings.pid_file == settings.pid_file => Arc::clone(&p.store),
            _ => Arc::new(Store::new(crate::canary::store::state_path(
                &settings.pid_file,
            ))),
        };
        let same_store = prev.filter(|p| Arc::ptr_eq(&p.store, &store));
        let live_weights = match (weights, same_store) {
            (Some(w), _) => w,
            (None, Some(p)) => p.weights.as_slice(),
            (None, None) => &[],
        };
        let prev_state = pool::PrevState::of(prev, live_weights);
        let mut pools: Vec<PoolPlan> = c
            .upstreams
            .iter()
            .map(|(name, u)| pool::compile_pool(l, name, u, &prev_state, &mut probs))
            .collect();

        let pool_names: HashMap<&str, usize> = c
            .upstreams
            .keys()
            .enumerate()
            .map(|(i, name)| (name.as_str(), i))
            .collect();
        let canaries = canary::compile_canaries(l, &pool_names, prev, &mut probs);
        let named = |n: &str| pool_names.contains_key(n) || c.canaries.contains_key(n);
        let uwsgi_pools = uwsgi::address_pools(l, &named, &prev_state, &mut pools, &mut probs);
        uwsgi::check_health(l, &pool_names, &pools, &mut probs);
        let admin = canary::compile_admin(l, &mut probs);
        let formats = logs::compile_formats(l, &mut probs);
        let mut shared = server::Shared {
            formats: &formats,
            targets: server::Targets::new(&pool_names, c.canaries.keys().map(String::as_str)),
            demos: &demos,
            listening: HashMap::new(),
            warnings: Vec::new(),
            uwsgi_pools,
            // A live weight change (`persist::recompile`: `weights` given, `prev`'s own text)
            // keeps the certificates; a reload, even of the same text, reads them again.
            certs_from: prev.filter(|p| weights.is_some() && p.source.text == l.text),
        };
        let servers: Vec<ServerPlan> = c
            .servers
            .iter()
            .map(|(name, s)| server::compile_server(l, name, s, &mut shared, &mut probs))
            .collect();
        let warnings = std::mem::take(&mut shared.warnings);
        if c.servers.is_empty() && demos.is_empty() {
            probs.push(l.problem_at("", "no servers: nothing would listen"));
        }
        if let Some(a) = &admin {
            let taken = servers.iter().flat_map(|s| s.listen.iter().copied());
            canary::check_admin_listen(
                l,
                a,
                taken.chain(demos.iter().map(|d| d.listen)),
                &mut probs,
            );
        }

        if !probs.is_empty() {
            return Err(probs.sorted());
        }
        let weights = prev_state.kept_weights();
        let metrics = crate::metrics::Handles::build(&servers, &pools, &canaries, admin.is_some());
        Ok(Plan {
            metrics,
            settings,
            demos,
            pools,
            servers,
            canaries,
            admin,
            store,
            weights,
            source: Source {
                name: l.name.clone(),
                text: Arc::clone(&l.text),
                embedded: l.embedded,
            },
            create_log_dirs: l.embedded,
            warnings,
        })
    }

    /// Makes this plan's changes to live state, once it is the live plan (after the snapshot
    /// swap; callers serialise swaps under the store's `changing` lock). Idempotent.
    /// - Only a health check brings a server it took out back: without one (a reload removed
    ///   it), a carried-over verdict would keep the server out for good.
    /// - A canary whose percent in the file changed since the last load takes the file's value.
    pub fn commit(&self) {
        for pp in self.pools.iter().filter(|pp| pp.health_check.is_none()) {
            for peer in &pp.pool.peers {
                peer.state.healthy.store(true, Ordering::Relaxed);
            }
        }
        canary::apply_file_values(&self.canaries);
    }

    /// The pools with an active health check, each with its check (what the health checker
    /// of [`crate::upstream::health`] probes).
    pub fn health_targets(&self) -> Vec<(Arc<Pool>, Arc<Check>)> {
        self.pools
            .iter()
            .filter_map(|pp| Some((Arc::clone(&pp.pool), Arc::clone(pp.health_check.as_ref()?))))
            .collect()
    }

    /// Whether `other` can be applied in place: same listeners and process settings. Anything
    /// else needs new sockets or a new Pingora server, i.e. an upgrade.
    pub fn same_listeners(&self, other: &Plan) -> bool {
        self.settings == other.settings
            && self.demos == other.demos
            && self.admin.as_ref().map(|a| a.listen) == other.admin.as_ref().map(|a| a.listen)
            && self.servers.len() == other.servers.len()
            && self.servers.iter().zip(&other.servers).all(|(a, b)| {
                a.name == b.name
                    && a.listen == b.listen
                    && a.tls
                        .iter()
                        .map(|t| (t.addr, t.listener))
                        .eq(b.tls.iter().map(|t| (t.addr, t.listener)))
            })
    }
}
