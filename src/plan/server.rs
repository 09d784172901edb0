//! `servers.NAME`: a virtual server, its listen addresses and its locations.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{parse_addr, Loaded, Location, Problems, Server};

use super::response::{compile_add_headers, compile_return, AddHeaderPlan};
use super::settings::check_log_dir;
use super::{check_above_zero, Demo, LocationPlan, ServerPlan, Target, Template, Timeouts};

/// What `proxy_pass` may name: pools and canaries.
pub(super) struct Targets<'a>(HashMap<&'a str, Target>);

impl<'a> Targets<'a> {
    /// `canaries` are the names in the file, in order: a canary with a mistake still counts as
    /// known (one mistake, one message), and when every canary compiles their indexes match.
    pub fn new(
        pools: &HashMap<&'a str, usize>,
        canaries: impl Iterator<Item = &'a str>,
    ) -> Targets<'a> {
        let mut t: HashMap<&str, Target> =
            pools.iter().map(|(n, &i)| (*n, Target::Pool(i))).collect();
        for (i, c) in canaries.enumerate() {
            t.entry(c).or_insert(Target::Canary(i));
        }
        Targets(t)
    }

    /// Both kinds of names, sorted, for the "unknown" message.
    fn known(&self) -> String {
        let mut pools: Vec<&str> = Vec::new();
        let mut canaries: Vec<&str> = Vec::new();
        for (n, t) in &self.0 {
            match t {
                Target::Pool(_) => pools.push(n),
                Target::Canary(_) => canaries.push(n),
            }
        }
        pools.sort_unstable();
        canaries.sort_unstable();
        let list = |v: Vec<&str>| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        format!("upstreams: {}; canaries: {}", list(pools), list(canaries))
    }
}

/// What the servers of one file share: what `proxy_pass` may name, and who listens where.
pub(super) struct Shared<'a> {
    /// `log_formats`, `combined` included.
    pub formats: &'a super::logs::Formats,
    pub targets: Targets<'a>,
    pub demos: &'a [Demo],
    /// Listen addresses taken so far, with the server that took each.
    pub listening: HashMap<SocketAddr, String>,
    /// What is worth saying but not refusing (certificates out of their validity period).
    pub warnings: Vec<crate::config::Problem>,
    /// The pools made for addresses in `uwsgi_pass` (see [`super::uwsgi::address_pools`]).
    pub uwsgi_pools: HashMap<String, usize>,
    /// A recompile of the same text (a live weight change): its certificates are taken from
    /// this plan instead of the files, which may be half-way through a rotation.
    pub certs_from: Option<&'a super::Plan>,
}

/// The server `servers.NAME`.
pub(super) fn compile_server(
    l: &Loaded,
    name: &str,
    s: &Server,
    shared: &mut Shared,
    probs: &mut Problems,
) -> ServerPlan {
    let base = format!("servers.{name}");
    if s.listen.is_empty() {
        probs.push(l.problem_at_key(&base, format!("server \"{name}\" has no listen address")));
    }
    let mut listen = Vec::new();
    let mut tls = Vec::new();
    for (i, entry) in s.listen.iter().enumerate() {
        let mut at = format!("{base}.listen.{i}");
        let tls_at = at.clone();
        if entry.tls.is_some() || entry.http2.is_some() {
            at.push_str(".addr");
        }
        match parse_addr(&entry.addr, "0.0.0.0") {
            Ok(addr) => {
                if let Some(other) = shared.listening.get(&addr) {
                    probs.push(l.problem_at(
                        &at,
                        format!(
                            "duplicate listen address {addr} (already used by server \"{other}\")"
                        ),
                    ));
                } else {
                    shared.listening.insert(addr, name.to_string());
                    listen.push(addr);
                    let loaded = (shared.certs_from)
                        .and_then(|p| p.servers.iter().find(|s| s.name == name))
                        .and_then(|s| s.tls.iter().find(|t| t.addr == addr))
                        .map(|t| Arc::clone(&t.certs));
                    tls.extend(super::tls::compile_listen_tls(
                        l,
                        &tls_at,
                        addr,
                        entry,
                        loaded,
                        probs,
                        &mut shared.warnings,
                    ));
                }
            }
            Err(e) => probs.push(l.problem_at(&at, e)),
        }
    }
    for d in shared.demos {
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
    let (access_log, access_format) =
        super::logs::server_access_log(l, &base, s, shared.formats, probs);
    if let Some(p) = &access_log {
        check_log_dir(l, p, &format!("{base}.access_log.path"), probs);
    }
    if let Some(p) = &s.error_log {
        check_log_dir(l, p, &format!("{base}.error_log"), probs);
    }
    let server_headers =
        compile_add_headers(l, &format!("{base}.add_header"), &s.add_header, probs);
    let mut locations = Vec::new();
    let mut seen = HashSet::new();
    for (i, loc) in s.locations.iter().enumerate() {
        let at = format!("{base}.locations.{i}");
        let lp = compile_location(l, &at, loc, shared, &mut seen, &server_headers, probs);
        if let Some(lp) = lp {
            locations.push(lp);
        }
    }
    let router = super::location::Router::new(&locations);
    ServerPlan {
        name: name.to_string(),
        listen,
        tls,
        access_log,
        access_format,
        error_log: s.error_log.clone().filter(|p| p != "off"),
        locations,
        router,
        limits: super::limits::compile_limits(l, &base, s, probs),
    }
}

/// One location, at the dotted path `at`; `None` (with a problem) if it cannot be routed.
/// `seen` holds the patterns of the server's earlier locations.
pub(super) fn compile_location(
    l: &Loaded,
    at: &str,
    loc: &Location,
    shared: &Shared,
    seen: &mut HashSet<String>,
    inherited: &[AddHeaderPlan],
    probs: &mut Problems,
) -> Option<LocationPlan> {
    let matcher = match super::location::parse_match(&loc.matcher) {
        Ok(m) => m,
        Err(e) => {
            probs.push(l.problem_at(&format!("{at}.match"), e));
            return None;
        }
    };
    if !seen.insert(matcher.key()) {
        probs.push(l.problem_at(
            &format!("{at}.match"),
            format!("duplicate location \"{}\"", loc.matcher),
        ));
    }
    // nginx runs `return` (rewrite phase) before proxying: with both, `return` answers.
    let ret = loc
        .ret
        .as_ref()
        .and_then(|r| compile_return(l, &format!("{at}.return"), r, probs));
    let targets = &shared.targets;
    let find = |n: &str| {
        (targets.0.get(n).copied()).or_else(|| shared.uwsgi_pools.get(n).map(|&i| Target::Pool(i)))
    };
    let uwsgi = super::uwsgi::compile_uwsgi(l, at, loc, &find, probs).ok()?;
    let target = match &loc.proxy_pass {
        Some(name) => match targets.0.get(name.as_str()) {
            Some(&t) => Some(t),
            None => {
                probs.push(l.problem_at(
                    &format!("{at}.proxy_pass"),
                    format!(
                        "unknown upstream or canary \"{name}\" in proxy_pass ({})",
                        targets.known()
                    ),
                ));
                return None;
            }
        },
        None if loc.ret.is_some()
            || loc.root.is_some()
            || loc.alias.is_some()
            || uwsgi.is_some() =>
        {
            None
        }
        None => {
            probs.push(l.problem_at(
                &format!("{at}.match"),
                "a location needs proxy_pass, uwsgi_pass, return, root or alias",
            ));
            return None;
        }
    };
    if target.is_some() && (loc.root.is_some() || loc.alias.is_some()) {
        probs.push(l.problem_at(
            &format!("{at}.proxy_pass"),
            "a location either proxies or serves files (root/alias), not both",
        ));
        return None;
    }
    let files = super::files::compile_files(l, at, loc, &matcher, probs);
    if loc.ret.is_some() && ret.is_none() {
        return None;
    }
    let add_headers = if loc.add_header.is_empty() {
        inherited.to_vec()
    } else {
        compile_add_headers(l, &format!("{at}.add_header"), &loc.add_header, probs)
    };
    let mut set_headers = Vec::new();
    for (h, v) in &loc.proxy_set_header {
        let hat = format!("{at}.proxy_set_header.{h}");
        let Ok(hname) = http::HeaderName::from_bytes(h.as_bytes()) else {
            probs.push(l.problem_at_key(&hat, format!("invalid header name \"{h}\"")));
            continue;
        };
        match Template::compile(v) {
            Ok(t) => set_headers.push((hname, t)),
            Err(e) => probs.push(super::template::problem(l, &hat, v, e)),
        }
    }
    for (key, t) in [
        ("connect_timeout", loc.connect_timeout),
        ("read_timeout", loc.read_timeout),
        ("send_timeout", loc.send_timeout),
    ] {
        if let Some(t) = t {
            check_above_zero(l, &format!("{at}.{key}"), t.0, probs);
        }
    }
    let timeouts = Timeouts {
        connect: loc.connect_timeout.map(|t| t.0),
        read: loc.read_timeout.map(|t| t.0),
        send: loc.send_timeout.map(|t| t.0),
    };
    Some(LocationPlan {
        matcher,
        target,
        ret,
        files,
        set_headers,
        add_headers,
        timeouts,
        uwsgi,
    })
}
