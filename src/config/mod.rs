//! The YAML configuration as the user wrote it.
//!
//! This module only parses: the types mirror the file one to one (unknown keys are errors), and
//! [`load`] keeps the source positions so that later checks in [`crate::plan`] can point at the
//! offending line and column. Nothing here opens files other than the config itself; the only
//! outside lookup is [`resolve_addrs`], the host names of addresses, which plan asks for.

mod addr;
pub mod canary;
mod duration;
mod limits;
mod listen;
mod logs;
mod problem;
mod response;
mod runtime;
mod spans;
pub mod store;

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;

#[cfg(test)]
pub use addr::test_hosts;
pub use addr::{parse_addr, resolve_addrs};
pub use canary::{Admin, Canary};
pub use duration::TimeValue;
pub use limits::{parse_buffers, parse_size, HeaderBuffers, RealIp, Size};
pub use listen::{CertPair, Listen, Tls};
pub use logs::AccessLog;
pub use problem::{Problem, Problems};
pub use response::{AddHeader, Return};
pub use runtime::{default_pid_file, runtime_dir};
pub use spans::{Pos, Spans};

/// The default configuration, built into the binary: the seed's layout with two demo backends.
pub const EMBEDDED: &str = include_str!("../../conf/graygate.yaml");
/// How the embedded configuration is named in messages.
pub const EMBEDDED_NAME: &str = "conf/graygate.yaml (embedded)";

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the master writes its pid; `-s` finds it there.
    #[serde(default = "default_pid_file")]
    pub pid_file: String,
    /// Ignored, accepted so that older files still load: listening sockets no longer pass over
    /// a socket on upgrade but by inheritance from the master (a notice says so at start).
    #[serde(default)]
    pub upgrade_sock: Option<String>,
    /// Process-wide log (start-up, signals, internal errors).
    #[serde(default)]
    pub error_log: Option<String>,
    /// Worker threads per server block.
    #[serde(default = "default_threads")]
    pub threads: i64,
    /// Run in the background (also `-d`).
    #[serde(default)]
    pub daemon: bool,
    /// How long an old generation keeps idle keep-alive connections open while draining.
    #[serde(default = "default_grace")]
    pub grace_period: TimeValue,
    /// How long in-flight requests may take after the grace period before a forced exit.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: TimeValue,
    /// Most client connections open at once per worker (nginx's `worker_connections`).
    #[serde(default = "default_worker_connections")]
    pub worker_connections: i64,
    /// Built-in demo backends ("old" and "new" in the default config).
    #[serde(default)]
    pub demo_backends: Vec<DemoBackend>,
    /// Named pools of app servers, the `upstream` blocks of nginx.
    #[serde(default)]
    pub upstreams: IndexMap<String, Upstream>,
    /// Named virtual servers, the `server` blocks of nginx.
    #[serde(default)]
    pub servers: IndexMap<String, Server>,
    /// The admin listener (JSON API, metrics); off when absent.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// Sticky splits between two pools, named like pools in `proxy_pass`.
    #[serde(default)]
    pub canaries: IndexMap<String, Canary>,
    /// Access log formats by name (nginx's `log_format NAME '...'`); `combined` is built in.
    #[serde(default)]
    pub log_formats: IndexMap<String, String>,
    /// A fleet's shared config in etcd (issue 19); absent: this file is the whole config.
    #[serde(default)]
    pub config_store: Option<store::ConfigStore>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoBackend {
    pub listen: String,
    pub name: String,
}

/// How a pool picks a server for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// nginx's `ip_hash`, bit for bit.
    IpHash,
    /// nginx's smooth weighted round robin (its default).
    RoundRobin,
    /// Weighted consistent hashing (Maglev) on `hash_key`: minimal movement on changes.
    Consistent,
}

/// Active health check of a pool's servers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(rename = "type", default = "default_hc_type")]
    pub kind: HealthCheckType,
    /// Request path for `http` checks.
    #[serde(default = "default_hc_path")]
    pub path: String,
    #[serde(default = "default_hc_interval")]
    pub interval: TimeValue,
    #[serde(default = "default_hc_timeout")]
    pub timeout: TimeValue,
    /// Status an `http` check must get (default: any 2xx or 3xx).
    #[serde(default)]
    pub expect_status: Option<i64>,
    /// Consecutive successes that bring a server back.
    #[serde(default = "default_rise")]
    pub rise: i64,
    /// Consecutive failures that take a server out.
    #[serde(default = "default_fall")]
    pub fall: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckType {
    Http,
    Tcp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    #[serde(default = "default_policy")]
    pub policy: Policy,
    pub servers: Vec<UpstreamServer>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: TimeValue,
    #[serde(default = "default_io_timeout")]
    pub read_timeout: TimeValue,
    #[serde(default = "default_io_timeout")]
    pub send_timeout: TimeValue,
    /// How long an idle pooled upstream connection is kept.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: TimeValue,
    /// For `consistent`: what a request is placed by (default `$remote_addr`).
    #[serde(default)]
    pub hash_key: Option<String>,
    /// Most servers one request may try (0 = every server once), nginx's
    /// `proxy_next_upstream_tries`.
    #[serde(default)]
    pub max_tries: i64,
    /// Also retry idempotent requests whose upstream timed out (nginx's
    /// `proxy_next_upstream timeout`); connection errors are always retried.
    #[serde(default = "default_true")]
    pub retry_on_timeout: bool,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Upstream statuses on which an idempotent request is retried on the next server (nginx's
    /// `proxy_next_upstream http_502 http_503 http_504`).
    #[serde(default)]
    pub retry_on_status: Vec<i64>,
    /// How requests reach the servers: HTTP/1.1 (default), or `h2` (cleartext HTTP/2 with
    /// prior knowledge, e.g. for gRPC servers).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
}

/// `upstreams.NAME.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum UpstreamProtocol {
    #[default]
    #[serde(rename = "http1")]
    Http1,
    #[serde(rename = "h2")]
    H2,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamServer {
    pub addr: String,
    #[serde(default = "default_weight")]
    pub weight: i64,
    #[serde(default = "default_max_fails")]
    pub max_fails: i64,
    #[serde(default = "default_fail_timeout")]
    pub fail_timeout: TimeValue,
    #[serde(default)]
    pub down: bool,
    #[serde(default)]
    pub backup: bool,
    #[serde(default)]
    pub max_conns: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Addresses, or `{ addr, tls, http2 }` for TLS listeners.
    pub listen: Vec<Listen>,
    /// A path, `off`, or `{ path, format }`.
    #[serde(default)]
    pub access_log: Option<AccessLog>,
    #[serde(default)]
    pub error_log: Option<String>,
    #[serde(default)]
    pub locations: Vec<Location>,
    /// Response headers for every location that has no `add_header` of its own (nginx's
    /// inheritance).
    #[serde(default)]
    pub add_header: IndexMap<String, AddHeader>,
    // Client limits, nginx's directives of the same names (defaults in `plan::limits`).
    #[serde(default)]
    pub client_max_body_size: Option<Size>,
    #[serde(default)]
    pub large_client_header_buffers: Option<HeaderBuffers>,
    /// Most header lines in a request (nginx has no such count; Pingora caps it at 256).
    #[serde(default)]
    pub max_headers: Option<i64>,
    #[serde(default)]
    pub client_header_timeout: Option<TimeValue>,
    #[serde(default)]
    pub client_body_timeout: Option<TimeValue>,
    /// nginx's `send_timeout` (between two writes to the client); a location's `send_timeout`
    /// is the upstream's, hence the other name.
    #[serde(default)]
    pub client_send_timeout: Option<TimeValue>,
    #[serde(default)]
    pub keepalive_timeout: Option<TimeValue>,
    #[serde(default)]
    pub keepalive_requests: Option<i64>,
    #[serde(default)]
    pub underscores_in_headers: bool,
    #[serde(default)]
    pub real_ip: Option<RealIp>,
    /// Largest reply head taken from a server (nginx's `proxy_buffer_size`).
    #[serde(default)]
    pub proxy_buffer_size: Option<Size>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// `/prefix` or `= /exact`, as nginx's `location`.
    #[serde(rename = "match")]
    pub matcher: String,
    /// Required unless the location answers with `return`.
    #[serde(default)]
    pub proxy_pass: Option<String>,
    #[serde(default)]
    pub proxy_set_header: IndexMap<String, String>,
    /// Response headers added to this location's answers (replaces the server's list).
    #[serde(default)]
    pub add_header: IndexMap<String, AddHeader>,
    #[serde(default, rename = "return")]
    pub ret: Option<Return>,
    // Static files: nginx's directives of the same names (see `plan::files`).
    /// The file is ROOT + the request path.
    #[serde(default)]
    pub root: Option<String>,
    /// The file is ALIAS + the request path after the location's prefix.
    #[serde(default)]
    pub alias: Option<String>,
    /// Files tried for a path ending in `/` (nginx: `index.html`).
    #[serde(default)]
    pub index: Option<Vec<String>>,
    #[serde(default)]
    pub default_type: Option<String>,
    /// `off`: follow every symlink, as nginx's default does; absent: a symlink that leads
    /// out of the root is refused (403).
    #[serde(default)]
    pub disable_symlinks: Option<String>,
    /// `false`: a missing file is a 404 without an error log line.
    #[serde(default)]
    pub log_not_found: Option<bool>,
    /// Overrides of the pool's timeouts for this location.
    #[serde(default)]
    pub connect_timeout: Option<TimeValue>,
    #[serde(default)]
    pub read_timeout: Option<TimeValue>,
    #[serde(default)]
    pub send_timeout: Option<TimeValue>,
    // uwsgi apps: nginx's directives of the same names (see `plan::uwsgi`).
    /// An upstream's name, or one address (`127.0.0.1:30000`, `unix:/run/app.sock`).
    #[serde(default)]
    pub uwsgi_pass: Option<String>,
    /// CGI variables sent to the app, over and beside the built-in set of `uwsgi_params`.
    #[serde(default)]
    pub uwsgi_param: IndexMap<String, String>,
    #[serde(default)]
    pub uwsgi_connect_timeout: Option<TimeValue>,
    #[serde(default)]
    pub uwsgi_send_timeout: Option<TimeValue>,
    #[serde(default)]
    pub uwsgi_read_timeout: Option<TimeValue>,
}

fn default_worker_connections() -> i64 {
    4096
}
fn default_threads() -> i64 {
    1
}
fn default_grace() -> TimeValue {
    TimeValue::from_secs(30)
}
fn default_shutdown_timeout() -> TimeValue {
    TimeValue::from_secs(10)
}
fn default_policy() -> Policy {
    Policy::RoundRobin
}
fn default_connect_timeout() -> TimeValue {
    TimeValue::from_secs(60)
}
fn default_io_timeout() -> TimeValue {
    TimeValue::from_secs(60)
}
fn default_idle_timeout() -> TimeValue {
    TimeValue::from_secs(60)
}
fn default_true() -> bool {
    true
}
fn default_hc_type() -> HealthCheckType {
    HealthCheckType::Http
}
fn default_hc_path() -> String {
    "/".into()
}
fn default_hc_interval() -> TimeValue {
    TimeValue::from_secs(5)
}
fn default_hc_timeout() -> TimeValue {
    TimeValue::from_secs(2)
}
fn default_rise() -> i64 {
    2
}
fn default_fall() -> i64 {
    3
}
fn default_weight() -> i64 {
    1
}
/// nginx's `server` defaults: `max_fails=1 fail_timeout=10s`. The one place they are written.
pub const DEFAULT_MAX_FAILS: u32 = 1;
pub const DEFAULT_FAIL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn default_max_fails() -> i64 {
    i64::from(DEFAULT_MAX_FAILS)
}
fn default_fail_timeout() -> TimeValue {
    TimeValue(DEFAULT_FAIL_TIMEOUT)
}

/// A parsed file with what is needed to report problems in it.
pub struct Loaded {
    /// The name used in messages: the path as given, or [`EMBEDDED_NAME`].
    pub name: String,
    pub config: Config,
    pub spans: Spans,
    /// True for the built-in default (its log directories are created on start).
    pub embedded: bool,
    /// The text parsed (a live weight change recompiles it).
    pub text: std::sync::Arc<str>,
}

impl Loaded {
    /// A problem at the value found at the dotted `path`.
    pub fn problem_at(&self, path: &str, msg: impl Into<String>) -> Problem {
        Problem::new(&self.name, self.spans.value(path), msg)
    }

    /// A problem at the key naming `path`.
    pub fn problem_at_key(&self, path: &str, msg: impl Into<String>) -> Problem {
        Problem::new(&self.name, self.spans.key(path), msg)
    }
}

/// Reads and parses `path`; errors are one [`Problem`] with the position serde found.
pub fn load(path: &Path) -> Result<Loaded, Problems> {
    let name = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| {
        Problems::one(Problem::new(
            &name,
            Pos { line: 0, col: 0 },
            format!("cannot read: {e}"),
        ))
    })?;
    parse(name, &src, false)
}

/// The one place that chooses between a config file and the embedded default.
pub fn load_from(path: Option<&Path>) -> Result<Loaded, Problems> {
    match path {
        Some(p) => load(p),
        None => load_embedded(),
    }
}

/// Parses the embedded default configuration.
pub fn load_embedded() -> Result<Loaded, Problems> {
    parse(EMBEDDED_NAME.to_string(), EMBEDDED, true)
}

/// Parses `src`, naming it `name` in messages.
pub fn parse(name: String, src: &str, embedded: bool) -> Result<Loaded, Problems> {
    let config: Config = serde_yaml::from_str(src).map_err(|e| {
        let pos = e
            .location()
            .map(|l| Pos {
                line: l.line(),
                col: l.column(),
            })
            .unwrap_or(Pos { line: 1, col: 1 });
        Problems::one(Problem::new(&name, pos, tidy_serde_message(&e.to_string())))
    })?;
    Ok(Loaded {
        name,
        config,
        spans: Spans::index(src),
        embedded,
        text: src.into(),
    })
}

/// serde_yaml appends " at line X column Y" to its messages; we print the position up front.
fn tidy_serde_message(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The directory a file path lives in, for the "missing directory" checks.
pub fn log_dir(path: &str) -> PathBuf {
    match Path::new(path).parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
