//! An nginx directive tree into graygate's YAML, and a note for every directive it does not
//! carry over.
//!
//! nginx's inheritance is applied while walking: what `http` sets, each `server` starts from,
//! and what a `server` sets, each `location` starts from (`proxy_set_header` lists replace the
//! inherited list as a whole, as in nginx). A note either changes behaviour (the request would
//! be handled differently: the import fails with exit 2) or is only dropped (tuning that has
//! no effect in graygate, e.g. `sendfile`).

use indexmap::IndexMap;
use serde_yaml::{Mapping, Value};

use super::parse::{Directive, Loc};

mod uwsgi;

/// What the import made of one directive it did not translate.
#[derive(Debug, Clone)]
pub struct Note {
    pub loc: Loc,
    pub directive: String,
    /// True when running the YAML would serve requests differently than nginx did.
    pub changes_behaviour: bool,
    pub why: String,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.changes_behaviour {
            "not translated"
        } else {
            "dropped"
        };
        write!(
            f,
            "{}:{}: \"{}\" {kind}: {}",
            self.loc.file, self.loc.pos.line, self.directive, self.why
        )
    }
}

/// The YAML text and the notes.
pub struct Imported {
    pub yaml: String,
    pub notes: Vec<Note>,
}

impl Imported {
    pub fn changes_behaviour(&self) -> bool {
        self.notes.iter().any(|n| n.changes_behaviour)
    }
}

/// Tuning and housekeeping directives that have no effect on how graygate answers.
const NO_EFFECT: &[(&str, &str)] = &[
    ("sendfile", "always on for plain HTTP/1"),
    ("tcp_nopush", "socket tuning"),
    ("tcp_nodelay", "always on"),
    ("types_hash_max_size", "hash tuning"),
    ("types_hash_bucket_size", "hash tuning"),
    ("server_names_hash_bucket_size", "hash tuning"),
    ("server_names_hash_max_size", "hash tuning"),
    ("variables_hash_max_size", "hash tuning"),
    ("proxy_headers_hash_max_size", "hash tuning"),
    ("proxy_headers_hash_bucket_size", "hash tuning"),
    ("multi_accept", "event tuning"),
    ("use", "event tuning"),
    ("accept_mutex", "event tuning"),
    (
        "worker_rlimit_nofile",
        "set the limit in supervisor/systemd (LimitNOFILE)",
    ),
    ("worker_cpu_affinity", "not pinned"),
    ("pcre_jit", "regex tuning"),
    ("load_module", "graygate has no dynamic modules"),
    (
        "user",
        "run graygate as that user (supervisor's `user=`, systemd's `User=`)",
    ),
    (
        "keepalive",
        "upstream keep-alive is always on (see `idle_timeout`)",
    ),
    ("zone", "upstream state is per process"),
    (
        "proxy_http_version",
        "upstream connections are always HTTP/1.1 keep-alive",
    ),
    ("proxy_buffering", "graygate streams responses"),
    ("proxy_buffers", "graygate streams responses"),
    ("proxy_buffer_size", "graygate streams responses"),
    ("proxy_busy_buffers_size", "graygate streams responses"),
    ("open_file_cache", "file cache tuning"),
    ("server_tokens", "graygate adds no version to pages"),
    (
        "ssl_protocols",
        "set it in the server with the TLS listener",
    ),
    ("ssl_prefer_server_ciphers", "no TLS listener uses it"),
    ("gzip_vary", "no effect without gzip"),
    ("gzip_proxied", "no effect without gzip"),
    ("gzip_comp_level", "no effect without gzip"),
    ("gzip_buffers", "no effect without gzip"),
    ("gzip_http_version", "no effect without gzip"),
    ("gzip_types", "no effect without gzip"),
    (
        "types",
        "graygate has the common entries of mime.types built in",
    ),
    ("access_log_buffer", "logs are always buffered"),
];

/// Settings that a block inherits from the blocks around it.
#[derive(Clone, Default)]
struct Scope {
    access_log: Option<Value>,
    error_log: Option<String>,
    limits: IndexMap<&'static str, Value>,
    real_ip_from: Vec<String>,
    real_ip_header: Option<String>,
    real_ip_recursive: Option<bool>,
    headers: Option<IndexMap<String, String>>,
    /// Whether this level set `proxy_set_header` itself (then it replaces the inherited list).
    headers_own: bool,
    /// `add_header` NAME -> (VALUE, always), with the same replace-not-merge inheritance.
    add_headers: Option<IndexMap<String, (String, bool)>>,
    add_headers_own: bool,
    /// Static files: `root`, `index`, `default_type`, `log_not_found`, `disable_symlinks`
    /// (inherited) and `alias` (a location's own).
    files: IndexMap<&'static str, Value>,
    timeouts: IndexMap<&'static str, String>,
    retry: Option<Retry>,
    uwsgi: uwsgi::Scope,
}

#[derive(Clone)]
struct Retry {
    on_timeout: bool,
    statuses: Vec<u16>,
    tries: Option<i64>,
}

#[derive(Default)]
struct Out {
    top: Mapping,
    log_formats: Mapping,
    upstreams: Mapping,
    servers: Mapping,
    notes: Vec<Note>,
    /// Upstream name -> the retry settings its locations asked for.
    retries: IndexMap<String, Retry>,
    /// Listen address -> the server name that took it first.
    listens: IndexMap<String, String>,
}

impl Scope {
    /// The scope a nested block starts from.
    fn child(&self) -> Scope {
        Scope {
            headers_own: false,
            add_headers_own: false,
            uwsgi: self.uwsgi.child(),
            ..self.clone()
        }
    }
}

impl Out {
    fn note(&mut self, d: &Directive, changes: bool, why: impl Into<String>) {
        self.notes.push(Note {
            loc: d.loc.clone(),
            directive: d.name.clone(),
            changes_behaviour: changes,
            why: why.into(),
        });
    }

    fn untranslated(&mut self, d: &Directive) {
        self.note(d, true, "graygate has no equivalent yet");
    }

    fn no_effect(&mut self, d: &Directive) -> bool {
        if let Some((_, why)) = NO_EFFECT.iter().find(|(n, _)| *n == d.name) {
            self.note(d, false, *why);
            return true;
        }
        // A stock file that was not beside the config (see `parse::STOCK_FILES`): the mime
        // table is built in, and the CGI parameter lists only matter with their `*_pass`,
        // which is judged on its own. `proxy_params` sets headers: it is not dropped.
        let stock = d
            .arg(0)
            .and_then(|a| a.rsplit('/').next())
            .unwrap_or_default();
        if d.name == "include" && stock != "proxy_params" {
            let why = match stock {
                "mime.types" => "graygate has the common entries of mime.types built in",
                _ => "the parameters of a *_pass directive, judged with it",
            };
            self.note(d, false, why);
            return true;
        }
        false
    }
}

/// Translates a parsed nginx config (a whole `nginx.conf` or a `conf.d` snippet with
/// `upstream`/`server` blocks at the top).
pub fn import(tree: &[Directive]) -> Imported {
    let mut out = Out::default();
    let mut scope = Scope::default();
    main_block(tree, &mut scope, &mut out);
    finish(out)
}

fn main_block(tree: &[Directive], scope: &mut Scope, out: &mut Out) {
    // Upstreams first: a `proxy_pass` may name one defined further down (conf.d snippets).
    for d in tree.iter().filter(|d| d.name == "upstream") {
        upstream(d, out);
    }
    for d in tree {
        match d.name.as_str() {
            "upstream" => {}
            "http" => {
                if let Some(b) = &d.block {
                    let mut http = scope.child();
                    http_block(b, &mut http, out);
                }
            }
            "events" => {
                for e in d.block.iter().flatten() {
                    if e.name == "worker_connections" {
                        set_int(out, e, "worker_connections");
                    } else if !out.no_effect(e) {
                        out.untranslated(e);
                    }
                }
            }
            "pid" => set_str(out, d, "pid_file"),
            "error_log" => {
                if let Some(p) = d.arg(0).filter(|p| *p != "stderr") {
                    out.top.insert("error_log".into(), p.into());
                }
                if d.args.len() > 1 {
                    out.note(d, false, "graygate's process log has no level");
                }
            }
            "worker_processes" => match d.arg(0) {
                Some("auto") => out.note(d, false, "set `threads` to the number of cores"),
                _ => set_int(out, d, "threads"),
            },
            "daemon" => {
                out.top
                    .insert("daemon".into(), Value::Bool(d.arg(0) == Some("on")));
            }
            "server" | "log_format" | "map" | "split_clients" => {
                // A conf.d snippet: these live inside `http` in nginx.conf.
                http_block(std::slice::from_ref(d), scope, out);
            }
            _ if http_setting(d, scope, out) => {}
            _ if out.no_effect(d) => {}
            _ => out.untranslated(d),
        }
    }
}

fn http_block(block: &[Directive], scope: &mut Scope, out: &mut Out) {
    for d in block.iter().filter(|d| d.name == "log_format") {
        log_format(d, out);
    }
    for d in block.iter().filter(|d| d.name == "upstream") {
        upstream(d, out);
    }
    for d in block {
        if matches!(d.name.as_str(), "log_format" | "upstream" | "server") {
            continue;
        }
        if !http_setting(d, scope, out) && !out.no_effect(d) {
            if d.name == "gzip" && d.arg(0) == Some("off") {
                continue;
            }
            out.untranslated(d);
        }
    }
    for d in block.iter().filter(|d| d.name == "server") {
        server(d, scope.child(), out);
    }
}

/// The settings valid in `http` and `server` (and some in `location`); false if `d` is none.
fn http_setting(d: &Directive, scope: &mut Scope, out: &mut Out) -> bool {
    let arg = d.arg(0).unwrap_or_default().to_string();
    match d.name.as_str() {
        "access_log" => {
            scope.access_log = Some(access_log(d));
            if d.args.len() > 2 {
                out.note(
                    d,
                    false,
                    "buffer/flush/gzip parameters: lines are always buffered",
                );
            }
        }
        "error_log" => scope.error_log = Some(arg),
        "client_max_body_size"
        | "client_header_timeout"
        | "client_body_timeout"
        | "send_timeout"
        | "keepalive_timeout" => {
            let key = static_key(&d.name);
            scope.limits.insert(key, arg.into());
            if d.name == "keepalive_timeout" && d.args.len() > 1 {
                out.note(d, false, "the Keep-Alive header timeout is not sent");
            }
        }
        "keepalive_requests" => {
            scope
                .limits
                .insert("keepalive_requests", int_value(&arg).unwrap_or(arg.into()));
        }
        "large_client_header_buffers" => {
            let v = d.args.iter().map(|a| a.text.as_str()).collect::<Vec<_>>();
            scope
                .limits
                .insert("large_client_header_buffers", v.join(" ").into());
        }
        "underscores_in_headers" => {
            scope
                .limits
                .insert("underscores_in_headers", Value::Bool(arg == "on"));
        }
        "set_real_ip_from" => scope.real_ip_from.push(arg),
        "real_ip_header" => scope.real_ip_header = Some(arg),
        "real_ip_recursive" => scope.real_ip_recursive = Some(arg == "on"),
        "proxy_set_header" => {
            let value = d.arg(1).unwrap_or_default().to_string();
            if !scope.headers_own {
                scope.headers = Some(IndexMap::new());
                scope.headers_own = true;
            }
            scope
                .headers
                .get_or_insert_with(IndexMap::new)
                .insert(arg, value);
        }
        "root" | "alias" | "default_type" | "disable_symlinks" => {
            let key = match d.name.as_str() {
                "root" => "root",
                "alias" => "alias",
                "default_type" => "default_type",
                _ => "disable_symlinks",
            };
            if key == "disable_symlinks" && arg != "off" {
                out.note(
                    d,
                    true,
                    format!("\"{arg}\": graygate refuses only links out of the root"),
                );
                scope.files.shift_remove("disable_symlinks");
                return true;
            }
            if key == "alias" {
                // A location's alias overrides the root it inherits, as in nginx.
                scope.files.shift_remove("root");
            }
            scope.files.insert(key, arg.into());
        }
        "index" => {
            let names = d.args.iter().map(|a| Value::from(a.text.as_str()));
            scope
                .files
                .insert("index", Value::Sequence(names.collect()));
        }
        "log_not_found" => {
            scope
                .files
                .insert("log_not_found", Value::Bool(arg == "on"));
        }
        "add_header" => {
            let value = d.arg(1).unwrap_or_default().to_string();
            let always = d.arg(2) == Some("always");
            if !scope.add_headers_own {
                scope.add_headers = Some(IndexMap::new());
                scope.add_headers_own = true;
            }
            scope
                .add_headers
                .get_or_insert_with(IndexMap::new)
                .insert(arg, (value, always));
        }
        "proxy_connect_timeout" | "proxy_read_timeout" | "proxy_send_timeout" => {
            let key = match d.name.as_str() {
                "proxy_connect_timeout" => "connect_timeout",
                "proxy_read_timeout" => "read_timeout",
                _ => "send_timeout",
            };
            scope.timeouts.insert(key, arg);
        }
        "proxy_next_upstream" => {
            let mut r = scope.retry.clone().unwrap_or(Retry {
                on_timeout: true,
                statuses: Vec::new(),
                tries: None,
            });
            r.on_timeout = false;
            r.statuses.clear();
            for a in &d.args {
                match a.text.as_str() {
                    "error" => {}
                    "timeout" => r.on_timeout = true,
                    s if s.starts_with("http_") => match s[5..].parse::<u16>() {
                        Ok(code) => r.statuses.push(code),
                        Err(_) => out.note(d, true, format!("\"{s}\" has no equivalent")),
                    },
                    s => out.note(
                        d,
                        true,
                        format!("\"{s}\": graygate always retries connection errors and only these: error timeout http_NNN"),
                    ),
                }
            }
            scope.retry = Some(r);
        }
        "proxy_next_upstream_tries" => {
            let mut r = scope.retry.clone().unwrap_or(Retry {
                on_timeout: true,
                statuses: Vec::new(),
                tries: None,
            });
            r.tries = arg.parse().ok();
            scope.retry = Some(r);
        }
        _ => return uwsgi::setting(d, &mut scope.uwsgi, out),
    }
    true
}

fn static_key(name: &str) -> &'static str {
    match name {
        "client_max_body_size" => "client_max_body_size",
        "client_header_timeout" => "client_header_timeout",
        "client_body_timeout" => "client_body_timeout",
        "send_timeout" => "client_send_timeout",
        _ => "keepalive_timeout",
    }
}

fn access_log(d: &Directive) -> Value {
    let path = d.arg(0).unwrap_or("off");
    match d.arg(1) {
        None | Some("combined") => path.into(),
        Some(_) if path == "off" => path.into(),
        Some(format) => {
            let mut m = Mapping::new();
            m.insert("path".into(), path.into());
            m.insert("format".into(), format.into());
            Value::Mapping(m)
        }
    }
}

fn log_format(d: &Directive, out: &mut Out) {
    let Some(name) = d.arg(0) else {
        return out.note(d, true, "no name");
    };
    let mut parts = d.args[1..].iter().map(|a| a.text.as_str()).peekable();
    if parts.peek().is_some_and(|p| p.starts_with("escape=")) {
        let esc = parts.next().unwrap_or_default();
        if esc != "escape=default" {
            out.note(
                d,
                true,
                format!("\"{esc}\": graygate escapes as nginx's default"),
            );
        }
    }
    let text: String = parts.collect();
    out.log_formats.insert(name.into(), text.into());
}

fn upstream(d: &Directive, out: &mut Out) {
    let Some(name) = d.arg(0) else {
        return out.note(d, true, "an upstream needs a name");
    };
    let mut pool = Mapping::new();
    let mut servers = Vec::new();
    for s in d.block.iter().flatten() {
        match s.name.as_str() {
            "ip_hash" => {
                pool.insert("policy".into(), "ip_hash".into());
            }
            "hash" => {
                pool.insert("policy".into(), "consistent".into());
                pool.insert("hash_key".into(), s.arg(0).unwrap_or_default().into());
                if s.arg(1) != Some("consistent") {
                    out.note(
                        s,
                        false,
                        "placed by graygate's consistent hashing (Maglev): each key still sticks to one server, but not the one nginx's hash picked",
                    );
                }
            }
            "server" => {
                if let Some(v) = upstream_server(s, out) {
                    servers.push(v);
                }
            }
            "keepalive_timeout" => {
                pool.insert("idle_timeout".into(), s.arg(0).unwrap_or_default().into());
            }
            "least_conn" | "random" | "least_time" | "sticky" | "ntlm" => out.untranslated(s),
            _ if out.no_effect(s) => {}
            _ => out.untranslated(s),
        }
    }
    pool.insert("servers".into(), Value::Sequence(servers));
    out.upstreams.insert(name.into(), Value::Mapping(pool));
}

fn upstream_server(s: &Directive, out: &mut Out) -> Option<Value> {
    let addr = s.arg(0)?;
    if addr.starts_with("unix:") {
        out.note(s, true, "unix sockets are not yet upstream servers");
        return None;
    }
    let mut m = Mapping::new();
    m.insert("addr".into(), with_port(addr, 80).into());
    for a in &s.args[1..] {
        let (k, v) = a.text.split_once('=').unwrap_or((a.text.as_str(), ""));
        match k {
            "weight" | "max_fails" | "max_conns" => {
                m.insert(k.into(), int_value(v).unwrap_or(v.into()));
            }
            "fail_timeout" => {
                m.insert(k.into(), v.into());
            }
            "backup" | "down" => {
                m.insert(k.into(), Value::Bool(true));
            }
            _ => out.note(
                s,
                true,
                format!("parameter \"{}\" has no equivalent", a.text),
            ),
        }
    }
    Some(Value::Mapping(m))
}

fn server(d: &Directive, mut scope: Scope, out: &mut Out) {
    let block = d.block.as_deref().unwrap_or_default();
    let mut listens = Vec::new();
    let mut names = Vec::new();
    let mut tls = Tls::default();
    for s in block {
        match s.name.as_str() {
            "listen" => listens.extend(listen(s, &mut tls, out)),
            "server_name" => names.extend(s.args.iter().map(|a| a.text.clone())),
            "ssl_certificate" | "ssl_certificate_key" | "ssl_protocols" | "http2" => {
                tls.directive(s, out)
            }
            "location" => {}
            _ if http_setting(s, &mut scope, out) => {}
            _ if out.no_effect(s) => {}
            _ => out.untranslated(s),
        }
    }
    if listens.is_empty() {
        listens.push("0.0.0.0:80".to_string());
    }
    let name = server_name(&names, &listens, out);
    for l in &listens {
        if let Some(first) = out.listens.get(l) {
            let why = format!(
                "{l} is also served by \"{first}\": graygate has no name-based virtual servers yet"
            );
            out.note(d, true, why);
        } else {
            out.listens.insert(l.clone(), name.clone());
        }
    }
    let mut srv = Mapping::new();
    let entries = listens.iter().map(|l| tls.entry(l, d, out)).collect();
    srv.insert("listen".into(), Value::Sequence(entries));
    if let Some(a) = &scope.access_log {
        srv.insert("access_log".into(), a.clone());
    }
    if let Some(e) = &scope.error_log {
        srv.insert("error_log".into(), e.as_str().into());
    }
    for (k, v) in &scope.limits {
        srv.insert((*k).into(), v.clone());
    }
    if !scope.real_ip_from.is_empty() {
        let mut r = Mapping::new();
        let from = scope.real_ip_from.iter().map(|s| Value::from(s.as_str()));
        r.insert("from".into(), Value::Sequence(from.collect()));
        if let Some(h) = &scope.real_ip_header {
            r.insert("header".into(), h.as_str().into());
        }
        if let Some(rec) = scope.real_ip_recursive {
            r.insert("recursive".into(), Value::Bool(rec));
        }
        srv.insert("real_ip".into(), Value::Mapping(r));
    }
    let mut locations = Vec::new();
    for l in block.iter().filter(|s| s.name == "location") {
        if let Some(v) = location(l, scope.child(), out) {
            locations.push(v);
        }
    }
    if locations.is_empty() {
        out.note(
            d,
            true,
            "a server without a proxying location serves files from its root",
        );
    }
    srv.insert("locations".into(), Value::Sequence(locations));
    out.servers.insert(name.into(), Value::Mapping(srv));
}

/// `server_name`'s first real name, else `listen_PORT`, made unique.
fn server_name(names: &[String], listens: &[String], out: &Out) -> String {
    let base = names
        .iter()
        .find(|n| !n.is_empty() && *n != "_" && !n.contains(['*', '~']))
        .cloned()
        .unwrap_or_else(|| {
            let port = listens[0].rsplit(':').next().unwrap_or("80");
            format!("listen_{port}")
        });
    let mut name = base.clone();
    let mut i = 2;
    while out.servers.contains_key(name.as_str()) {
        name = format!("{base}_{i}");
        i += 1;
    }
    name
}

fn listen(d: &Directive, tls: &mut Tls, out: &mut Out) -> Option<String> {
    let addr = d.arg(0)?;
    let mut ssl = false;
    for p in &d.args[1..] {
        match p.text.as_str() {
            "default_server" | "default" | "reuseport" | "deferred" | "bind" => {}
            s if s.starts_with("backlog=")
                || s.starts_with("rcvbuf=")
                || s.starts_with("sndbuf=") => {}
            "ssl" => ssl = true,
            "http2" => tls.http2 = true,
            "quic" | "proxy_protocol" => {
                out.note(
                    d,
                    true,
                    format!("\"{}\" listeners are not yet translated", p.text),
                );
            }
            s => out.note(d, false, format!("parameter \"{s}\" dropped")),
        }
    }
    if addr.starts_with("unix:") {
        out.note(d, true, "unix socket listeners are not supported");
        return None;
    }
    let a = if addr.bytes().all(|b| b.is_ascii_digit()) {
        format!("0.0.0.0:{addr}")
    } else if let Some(port) = addr.strip_prefix("*:") {
        format!("0.0.0.0:{port}")
    } else {
        with_port(addr, 80)
    };
    if ssl {
        tls.ssl.push(a.clone());
    }
    Some(a)
}

/// A server's TLS directives, for its `listen ... ssl` entries.
#[derive(Default)]
struct Tls {
    /// The addresses listened on with `ssl`.
    ssl: Vec<String>,
    cert: Option<String>,
    key: Option<String>,
    protocols: Option<Vec<String>>,
    /// nginx's HTTP/2 is off unless asked for (`listen ... http2` or `http2 on`).
    http2: bool,
}

impl Tls {
    fn directive(&mut self, d: &Directive, out: &mut Out) {
        let arg = d.arg(0).map(str::to_string);
        match d.name.as_str() {
            "ssl_certificate" => self.cert = arg,
            "ssl_certificate_key" => self.key = arg,
            "http2" => self.http2 = arg.as_deref() == Some("on"),
            _ => {
                let all: Vec<String> = d.args.iter().map(|a| a.text.clone()).collect();
                let kept: Vec<String> = all
                    .iter()
                    .filter(|p| *p == "TLSv1.2" || *p == "TLSv1.3")
                    .cloned()
                    .collect();
                if kept.len() < all.len() {
                    out.note(d, true, "only TLSv1.2 and TLSv1.3 are offered");
                }
                self.protocols = Some(kept).filter(|k| !k.is_empty());
            }
        }
    }

    /// The listen entry for `addr`: the address, or `{ addr, tls, http2 }`.
    fn entry(&self, addr: &str, d: &Directive, out: &mut Out) -> Value {
        if !self.ssl.iter().any(|a| a == addr) {
            return addr.into();
        }
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            out.note(
                d,
                true,
                format!("{addr} listens with ssl but the server has no ssl_certificate/ssl_certificate_key"),
            );
            return addr.into();
        };
        let mut t = Mapping::new();
        t.insert("cert".into(), cert.as_str().into());
        t.insert("key".into(), key.as_str().into());
        if let Some(p) = &self.protocols {
            let v = p.iter().map(|s| Value::from(s.as_str())).collect();
            t.insert("protocols".into(), Value::Sequence(v));
        }
        let mut m = Mapping::new();
        m.insert("addr".into(), addr.into());
        m.insert("tls".into(), Value::Mapping(t));
        if !self.http2 {
            m.insert("http2".into(), Value::Bool(false));
        }
        Value::Mapping(m)
    }
}

/// nginx's `root` when none is set: `html` under the prefix Debian's package is built with.
const NGINX_DEFAULT_ROOT: &str = "/usr/share/nginx/html";

fn location(d: &Directive, mut scope: Scope, out: &mut Out) -> Option<Value> {
    let (modifier, path) = location_match(d)?;
    let matcher = match modifier {
        "" => path.to_string(),
        "=" | "^~" | "~" | "~*" => format!("{modifier} {path}"),
        _ => {
            out.note(
                d,
                true,
                format!("\"{modifier}\" (named) locations are not translated"),
            );
            return None;
        }
    };
    let mut pass = None;
    let mut uwsgi_pass = None;
    let mut ret = None;
    let mut handler_missing = false;
    for s in d.block.iter().flatten() {
        match s.name.as_str() {
            "proxy_pass" => pass = proxy_pass(s, &path, out),
            "uwsgi_pass" => {
                uwsgi_pass = uwsgi::pass(s, out);
                handler_missing |= uwsgi_pass.is_none();
            }
            "return" => {
                let words: Vec<&str> = s.args.iter().map(|a| a.text.as_str()).collect();
                ret = Some(match words.as_slice() {
                    [code] if code.bytes().all(|b| b.is_ascii_digit()) => {
                        Value::from(code.parse::<u64>().unwrap_or(0))
                    }
                    w => Value::from(w.join(" ")),
                });
            }
            "location" => out.note(s, true, "nested locations are not translated"),
            _ if http_setting(s, &mut scope, out) => {
                if matches!(s.name.as_str(), "access_log" | "error_log")
                    || s.name.starts_with("client_")
                    || s.name.starts_with("keepalive")
                    || s.name.starts_with("real_ip")
                    || s.name == "set_real_ip_from"
                {
                    out.note(s, true, "graygate sets this per server, not per location");
                }
            }
            _ if out.no_effect(s) => {}
            _ => {
                // A content handler graygate lacks (uwsgi_pass, fastcgi_pass, ...): the location
                // must not fall back to serving its root (the app's source) as files.
                if s.name.ends_with("_pass") {
                    handler_missing = true;
                }
                out.untranslated(s)
            }
        }
    }
    // No handler and no root anywhere: nginx serves files from its compiled-in root (`html`
    // under its prefix, /usr/share/nginx/html in Debian's package), as the seed's
    // `location = /favicon.ico { log_not_found off; }` does: the same root is written.
    if pass.is_none()
        && uwsgi_pass.is_none()
        && ret.is_none()
        && !handler_missing
        && !scope.files.contains_key("root")
        && !scope.files.contains_key("alias")
    {
        scope.files.insert("root", Value::from(NGINX_DEFAULT_ROOT));
    }
    let serves_files =
        !handler_missing && (scope.files.contains_key("root") || scope.files.contains_key("alias"));
    if pass.is_none() && uwsgi_pass.is_none() && ret.is_none() && !serves_files {
        out.note(
            d,
            true,
            "a location without proxy_pass, uwsgi_pass, return or files is not translated",
        );
        return None;
    }
    if let (Some(r), Some(pass)) = (&scope.retry, &pass) {
        out.retries.insert(pass.clone(), r.clone());
    }
    let mut m = Mapping::new();
    m.insert("match".into(), matcher.into());
    let proxies = pass.is_some() || (uwsgi_pass.is_some() && ret.is_none());
    if let Some(pass) = pass {
        m.insert("proxy_pass".into(), pass.into());
    } else if let (Some(to), None) = (uwsgi_pass, &ret) {
        uwsgi::emit(&mut m, to, &scope.uwsgi, scope.files.get("root"));
    }
    if let Some(ret) = ret {
        m.insert("return".into(), ret);
    } else if !proxies {
        for (k, v) in &scope.files {
            m.insert((*k).into(), v.clone());
        }
        // nginx follows every symlink unless told otherwise; graygate's default is stricter.
        if !scope.files.contains_key("disable_symlinks") {
            m.insert("disable_symlinks".into(), "off".into());
        }
    }
    if let Some(h) = &scope.add_headers {
        let mut hm = Mapping::new();
        for (k, (v, always)) in h {
            let v = if *always {
                let mut f = Mapping::new();
                f.insert("value".into(), v.as_str().into());
                f.insert("always".into(), Value::Bool(true));
                Value::Mapping(f)
            } else {
                v.as_str().into()
            };
            hm.insert(k.as_str().into(), v);
        }
        m.insert("add_header".into(), Value::Mapping(hm));
    }
    if let Some(h) = &scope.headers {
        let mut hm = Mapping::new();
        for (k, v) in h {
            hm.insert(k.as_str().into(), v.as_str().into());
        }
        m.insert("proxy_set_header".into(), Value::Mapping(hm));
    }
    for (k, v) in &scope.timeouts {
        m.insert((*k).into(), v.as_str().into());
    }
    Some(Value::Mapping(m))
}

/// A location's modifier and path; nginx also takes them glued (`~/media/`, `=/x`).
fn location_match(d: &Directive) -> Option<(&str, String)> {
    let first = d.args.first()?;
    if d.args.len() >= 2 && !first.quoted {
        return Some((first.text.as_str(), d.args[1].text.clone()));
    }
    for m in ["^~", "~*", "~", "=", "@"] {
        if let Some(rest) = first.text.strip_prefix(m).filter(|_| !first.quoted) {
            return Some((m, rest.to_string()));
        }
    }
    Some(("", first.text.clone()))
}

/// `proxy_pass http://NAME` -> NAME; a literal address becomes an upstream of its own.
fn proxy_pass(d: &Directive, location_path: &str, out: &mut Out) -> Option<String> {
    let target = d.arg(0)?;
    let Some(rest) = target.strip_prefix("http://") else {
        out.note(d, true, "only http:// upstreams are translated");
        return None;
    };
    if rest.contains('$') {
        out.note(d, true, "variables in proxy_pass are not translated");
        return None;
    }
    let (host, uri) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if !uri.is_empty() && uri != location_path {
        out.note(
            d,
            true,
            format!("the URI part \"{uri}\" (replacing the location's prefix) is not translated"),
        );
    }
    if out.upstreams.contains_key(host) {
        return Some(host.to_string());
    }
    let addr = with_port(host, 80);
    let name = format!("direct_{}", addr.replace([':', '.', '[', ']'], "_"));
    if !out.upstreams.contains_key(name.as_str()) {
        let mut server = Mapping::new();
        server.insert("addr".into(), addr.into());
        let mut pool = Mapping::new();
        pool.insert(
            "servers".into(),
            Value::Sequence(vec![Value::Mapping(server)]),
        );
        out.upstreams
            .insert(name.as_str().into(), Value::Mapping(pool));
    }
    Some(name)
}

fn with_port(addr: &str, port: u16) -> String {
    let has_port = if let Some(end) = addr.rfind(']') {
        addr[end..].contains(':')
    } else {
        addr.contains(':')
    };
    if has_port {
        addr.to_string()
    } else {
        format!("{addr}:{port}")
    }
}

fn int_value(s: &str) -> Option<Value> {
    s.parse::<i64>().ok().map(Value::from)
}

fn set_int(out: &mut Out, d: &Directive, key: &str) {
    let v = d.arg(0).unwrap_or_default();
    out.top
        .insert(key.into(), int_value(v).unwrap_or_else(|| v.into()));
}

fn set_str(out: &mut Out, d: &Directive, key: &str) {
    out.top
        .insert(key.into(), d.arg(0).unwrap_or_default().into());
}

fn finish(mut out: Out) -> Imported {
    for (pool, r) in std::mem::take(&mut out.retries) {
        let Some(Value::Mapping(m)) = out.upstreams.get_mut(pool.as_str()) else {
            continue;
        };
        if !r.on_timeout {
            m.insert("retry_on_timeout".into(), Value::Bool(false));
        }
        if !r.statuses.is_empty() {
            let s = r.statuses.iter().map(|c| Value::from(u64::from(*c)));
            m.insert("retry_on_status".into(), Value::Sequence(s.collect()));
        }
        if let Some(t) = r.tries {
            m.insert("max_tries".into(), t.into());
        }
    }
    let mut doc = out.top;
    if !out.log_formats.is_empty() {
        doc.insert("log_formats".into(), Value::Mapping(out.log_formats));
    }
    doc.insert("upstreams".into(), Value::Mapping(out.upstreams));
    doc.insert("servers".into(), Value::Mapping(out.servers));
    let yaml = serde_yaml::to_string(&Value::Mapping(doc)).unwrap_or_default();
    Imported {
        yaml,
        notes: out.notes,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::nginx::parse::parse_str;

    fn run(src: &str) -> Imported {
        let tree = parse_str(src, Path::new("nginx.conf"), Path::new("/nonexistent"), 0).unwrap();
        import(&tree)
    }

    /// The seed's balancer (Step 1), as its author put it in conf.d.
    const SEED_BALANCER: &str = "
upstream balance {
ip_hash;
server 127.0.0.1:11001 weight=1;
server 127.0.0.1:12001 weight=1;
}
server {
listen 10001;
location / {
proxy_pass http://balance;
proxy_set_header X-Real-IP $remote_addr;
}
access_log /data/logs/nginx.balance.access.log;
error_log /data/logs/nginx.balance.error.log;
}
";

    #[test]
    fn the_seed_balancer_compiles() {
        let i = run(SEED_BALANCER);
        assert!(i.notes.is_empty(), "{:?}", i.notes);
        let loaded = crate::config::parse("imported.yaml".into(), &i.yaml, false).unwrap();
        let c = &loaded.config;
        let pool = &c.upstreams["balance"];
        assert_eq!(pool.servers.len(), 2);
        assert_eq!(pool.servers[1].addr, "127.0.0.1:12001");
        let srv = &c.servers["listen_10001"];
        assert_eq!(srv.listen, ["0.0.0.0:10001"]);
        assert_eq!(srv.locations[0].proxy_pass.as_deref(), Some("balance"));
        assert_eq!(
            srv.locations[0].proxy_set_header["X-Real-IP"],
            "$remote_addr"
        );
        assert_eq!(
            srv.access_log.as_ref().map(|a| a.path.as_str()),
            Some("/data/logs/nginx.balance.access.log")
        );
        assert!(i.yaml.contains("policy: ip_hash"), "{}", i.yaml);
    }

    #[test]
    fn tls_listeners_are_translated() {
        let i = run("
upstream app { server 127.0.0.1:11001; }
server {
listen 80;
listen 443 ssl;
ssl_certificate /etc/ssl/site.crt;
ssl_certificate_key /etc/ssl/site.key;
ssl_protocols TLSv1.1 TLSv1.2 TLSv1.3;
location / { proxy_pass http://app; }
}
server {
listen 8443 ssl http2;
location / { proxy_pass http://app; }
}
");
        let loaded = crate::config::parse("imported.yaml".into(), &i.yaml, false).unwrap();
        let srv = &loaded.config.servers["listen_80"];
        assert_eq!(srv.listen[0], "0.0.0.0:80");
        let tls = &srv.listen[1];
        assert_eq!(tls.addr, "0.0.0.0:443");
        let t = tls.tls.as_ref().expect("a TLS listener");
        assert_eq!(t.cert.as_deref(), Some("/etc/ssl/site.crt"));
        assert_eq!(t.key.as_deref(), Some("/etc/ssl/site.key"));
        assert_eq!(
            t.protocols.as_deref(),
            Some(&["TLSv1.2".to_string(), "TLSv1.3".to_string()][..])
        );
        assert_eq!(
            tls.http2,
            Some(false),
            "nginx's HTTP/2 is off unless asked for"
        );
        let notes = format!("{:?}", i.notes);
        assert!(notes.contains("only TLSv1.2 and TLSv1.3"), "{notes}");
        // `ssl` without a certificate stays a plain listener, with a note.
        assert!(
            notes.contains("0.0.0.0:8443 listens with ssl but"),
            "{notes}"
        );
    }

    #[test]
    fn inheritance_follows_nginx() {
        let i = run("
events { worker_connections 1024; }
worker_processes 2;
http {
  sendfile on;
  access_log /var/log/a.log;
  proxy_set_header X-A 1;
  client_max_body_size 10m;
  upstream u { hash $cookie_uid consistent; server app:8080 weight=3 max_fails=2 fail_timeout=5s backup; }
  server {
    listen 127.0.0.1:8080;
    server_name example.org;
    proxy_read_timeout 360;
    location = /x { proxy_pass http://u; }
    location /y { proxy_set_header X-B 2; proxy_pass http://u; proxy_next_upstream error timeout http_503; }
    location ^~ /z { proxy_pass http://10.0.0.1; }
  }
}");
        let dropped: Vec<_> = i.notes.iter().map(|n| n.directive.as_str()).collect();
        assert_eq!(dropped, ["sendfile"]);
        assert!(!i.changes_behaviour());
        let v: Value = serde_yaml::from_str(&i.yaml).unwrap();
        assert_eq!(v["worker_connections"], Value::from(1024));
        assert_eq!(v["threads"], Value::from(2));
        let s = &v["servers"]["example.org"];
        assert_eq!(s["access_log"], Value::from("/var/log/a.log"));
        assert_eq!(s["client_max_body_size"], Value::from("10m"));
        let locs = s["locations"].as_sequence().unwrap();
        assert_eq!(locs[0]["match"], Value::from("= /x"));
        assert_eq!(locs[0]["proxy_set_header"]["X-A"], Value::from("1"));
        assert_eq!(locs[0]["read_timeout"], Value::from("360"));
        // A level's own proxy_set_header replaces the inherited list, as in nginx.
        assert!(locs[1]["proxy_set_header"].get("X-A").is_none());
        assert_eq!(locs[2]["match"], Value::from("^~ /z"));
        assert_eq!(locs[2]["proxy_pass"], Value::from("direct_10_0_0_1_80"));
        let u = &v["upstreams"]["u"];
        assert_eq!(u["policy"], Value::from("consistent"));
        assert_eq!(u["hash_key"], Value::from("$cookie_uid"));
        assert_eq!(u["retry_on_status"][0], Value::from(503));
        assert_eq!(u["servers"][0]["backup"], Value::Bool(true));
        assert_eq!(u["servers"][0]["weight"], Value::from(3));
    }

    #[test]
    fn the_seed_app_server_imports_whole() {
        let i = run("
server {
listen 11001;
location / {
add_header Access-Control-Allow-Origin *;
root /data/www/app/;
include uwsgi_params;
uwsgi_pass 127.0.0.1:30000;
uwsgi_read_timeout 360;
}
location ~/media/{
root /data/static/;
}
location = /favicon.ico {
log_not_found off;
}
}");
        assert!(!i.changes_behaviour(), "{:#?}", i.notes);
        let lines: Vec<String> = i.notes.iter().map(|n| n.to_string()).collect();
        let has = |s: &str| lines.iter().any(|l| l.contains(s));
        assert!(!has("add_header"), "{lines:#?}");
        assert!(!has("\"root\""), "root is carried over: {lines:#?}");
        assert!(!has(": \"uwsgi_") && !has(": \"include\""), "{lines:#?}");
        let v: Value = serde_yaml::from_str(&i.yaml).unwrap();
        let app = &v["servers"]["listen_11001"]["locations"][0];
        assert_eq!(app["uwsgi_pass"], Value::from("127.0.0.1:30000"));
        assert_eq!(app["uwsgi_read_timeout"], Value::from("360"));
        assert_eq!(
            app["uwsgi_param"]["DOCUMENT_ROOT"],
            Value::from("/data/www/app/")
        );
        assert!(app.get("root").is_none(), "{}", i.yaml);
        assert_eq!(
            app["add_header"]["Access-Control-Allow-Origin"],
            Value::from("*")
        );
        // The favicon location has no root of its own or inherited: nginx's default root.
        assert!(!has("\"location\""), "{lines:#?}");
        let favicon = &v["servers"]["listen_11001"]["locations"][2];
        assert_eq!(
            favicon["root"],
            Value::from(NGINX_DEFAULT_ROOT),
            "{}",
            i.yaml
        );
        assert_eq!(favicon["log_not_found"], Value::from(false), "{}", i.yaml);
    }

    #[test]
    fn shared_ports_and_unknown_directives_change_behaviour() {
        let i = run(
            "server { listen 80; server_name a; location / { proxy_pass http://x:1; } }
server { listen 80; server_name b; location / { proxy_pass http://x:1; } }
gzip on;",
        );
        assert!(i.changes_behaviour());
        assert!(i
            .notes
            .iter()
            .any(|n| n.why.contains("is also served by \"a\"")));
        assert!(i.notes.iter().any(|n| n.directive == "gzip"));
    }

    #[test]
    fn add_header_and_return_carry_over() {
        let i = run(
            "server { listen 8080; add_header X-A 1; add_header X-B 2 always;
  location = /old { return 301 /new$is_args$args; }
  location = /gone { return 410; }
  location / { add_header X-C 3; proxy_pass http://127.0.0.1:9000; } }",
        );
        assert!(i.notes.is_empty(), "{:?}", i.notes);
        let v: Value = serde_yaml::from_str(&i.yaml).unwrap();
        let locs = v["servers"]["listen_8080"]["locations"]
            .as_sequence()
            .unwrap();
        assert_eq!(locs[0]["return"], Value::from("301 /new$is_args$args"));
        assert_eq!(locs[0]["add_header"]["X-A"], Value::from("1"));
        assert_eq!(locs[0]["add_header"]["X-B"]["always"], Value::Bool(true));
        assert_eq!(locs[1]["return"], Value::from(410));
        assert!(locs[2]["add_header"].get("X-A").is_none());
        let loaded = crate::config::parse("i.yaml".into(), &i.yaml, false).unwrap();
        crate::plan::Plan::compile(&loaded, None).unwrap();
    }

    #[test]
    fn files_follow_nginx_and_app_locations_are_not_served_as_files() {
        let i = run("server { listen 8081; root /srv/www;
  location / { root /data/app; uwsgi_pass 127.0.0.1:3000; }
  location /m/ { alias /data/media/; }
  location ~ /\\.ht { return 404; }
  location /s/ { index a.html; } }");
        let v: Value = serde_yaml::from_str(&i.yaml).unwrap();
        let locs = v["servers"]["listen_8081"]["locations"]
            .as_sequence()
            .unwrap();
        // `location /` passes to the app: it never serves the app's source as files.
        let app = locs.iter().find(|l| l["match"] == "/").unwrap();
        assert_eq!(app["uwsgi_pass"], Value::from("127.0.0.1:3000"));
        assert!(app.get("root").is_none(), "{}", i.yaml);
        let m = locs.iter().find(|l| l["match"] == "/m/").unwrap();
        assert_eq!(m["alias"], Value::from("/data/media/"));
        assert!(
            m.get("root").is_none(),
            "alias overrides the inherited root"
        );
        assert_eq!(m["disable_symlinks"], Value::from("off"));
        let ht = locs.iter().find(|l| l["return"] == 404).unwrap();
        assert_eq!(ht["match"], Value::from("~ /\\.ht"));
        let s = locs.iter().find(|l| l["match"] == "/s/").unwrap();
        assert_eq!(s["root"], Value::from("/srv/www"));
    }

    #[test]
    fn stock_includes_are_dropped_but_proxy_params_is_not() {
        let i = run("http { include mime.types; include proxy_params;
  server { listen 8082; location / { include uwsgi_params; return 204; } } }");
        let kinds: Vec<(String, bool)> = i
            .notes
            .iter()
            .map(|n| (n.directive.clone(), n.changes_behaviour))
            .collect();
        assert_eq!(
            kinds,
            // uwsgi_params is built in: no note.
            [
                ("include".to_string(), false),
                ("include".to_string(), true),
            ],
            "{:?}",
            i.notes
        );
    }
}
