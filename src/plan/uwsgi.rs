//! `uwsgi_pass` and its friends: a location that passes requests to uwsgi app servers.
//!
//! A location's `uwsgi_pass` names an upstream or a canary (the same pools, policies, health
//! and retries as `proxy_pass`), or one address. An address becomes a pool of its own, named
//! by the address as written (nginx's implicit upstream): one server, so no passive health
//! (nginx's rule for a single server), and the same pool for every location that writes it.
//! `unix:/path` addresses exist only in this form.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{resolve_addrs, Loaded, Location, Policy, Problems};
use crate::upstream::{Peer, Pool};

use super::pool::PrevState;
use super::{check_above_zero, PoolPlan, Target, Template};

/// The CGI variables nginx's stock `uwsgi_params` file sets; graygate always sends them (nginx
/// only with `include uwsgi_params`), before the `HTTP_*` ones.
pub const BUILT_IN: [&str; 13] = [
    "QUERY_STRING",
    "REQUEST_METHOD",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "REQUEST_URI",
    "PATH_INFO",
    "DOCUMENT_ROOT",
    "SERVER_PROTOCOL",
    "REQUEST_SCHEME",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "SERVER_PORT",
    "SERVER_NAME",
];

/// A location's uwsgi side, compiled.
#[derive(Debug)]
pub struct UwsgiPlan {
    /// An upstream or canary, or the pool made for an address.
    pub target: Target,
    /// `uwsgi_param`, in file order: a name of [`BUILT_IN`] replaces that variable, an
    /// `HTTP_*` name replaces the request header's, others are sent as well.
    pub params: Vec<(Box<str>, Template)>,
    /// `uwsgi_*_timeout` (else the location's `*_timeout`, else the pool's).
    pub connect_timeout: Option<Duration>,
    pub send_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
}

/// nginx's default for all three uwsgi timeouts.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `text` is written as an address rather than a name.
fn is_address(text: &str) -> bool {
    text.starts_with("unix:") || text.contains(':')
}

/// The pools made for addresses in `uwsgi_pass`, appended to `pools` and named in `names`
/// (by the address as written). Names of upstreams and canaries win over addresses.
pub(super) fn address_pools(
    l: &Loaded,
    taken: &dyn Fn(&str) -> bool,
    prev: &PrevState,
    pools: &mut Vec<PoolPlan>,
    probs: &mut Problems,
) -> HashMap<String, usize> {
    let mut names = HashMap::new();
    for (sname, s) in &l.config.servers {
        for (i, loc) in s.locations.iter().enumerate() {
            let Some(text) = loc.uwsgi_pass.as_deref() else {
                continue;
            };
            if taken(text) || names.contains_key(text) || !is_address(text) {
                continue;
            }
            let at = format!("servers.{sname}.locations.{i}.uwsgi_pass");
            let peers = match text.strip_prefix("unix:") {
                Some(path) if path.starts_with('/') => vec![unix_peer(Path::new(path))],
                Some(_) => {
                    probs.push(l.problem_at(
                        &at,
                        format!(
                            "a unix socket in uwsgi_pass needs an absolute path, not \"{text}\""
                        ),
                    ));
                    continue;
                }
                None => match resolve_addrs(text, "127.0.0.1") {
                    Ok(addrs) => addrs.into_iter().map(|a| Peer::new(a, 1)).collect(),
                    Err(e) => {
                        probs.push(l.problem_at(&at, e));
                        continue;
                    }
                },
            };
            let mut peers: Vec<Peer> = peers;
            for p in &mut peers {
                if let Some(st) = prev.state_of(text, p.addr) {
                    p.state = st;
                }
            }
            names.insert(text.to_string(), pools.len());
            pools.push(PoolPlan {
                pool: Arc::new(Pool::new(text.to_string(), Policy::RoundRobin, peers)),
                hash_key: None,
                retry_on_timeout: true,
                retry_on_status: Vec::new(),
                health_check: None,
            });
        }
    }
    names
}

/// A server on a unix socket: its address is a placeholder, the path says where it is.
fn unix_peer(path: &Path) -> Peer {
    let mut p = Peer::new(std::net::SocketAddr::from(([0, 0, 0, 0], 0)), 1);
    p.unix = Some(Arc::from(path));
    p
}

/// The uwsgi side of location `loc` at the dotted path `at`; `Ok(None)` without
/// `uwsgi_pass`, `Err(())` after a problem that leaves the location unusable.
pub(super) fn compile_uwsgi(
    l: &Loaded,
    at: &str,
    loc: &Location,
    find: &dyn Fn(&str) -> Option<Target>,
    probs: &mut Problems,
) -> Result<Option<UwsgiPlan>, ()> {
    let Some(text) = loc.uwsgi_pass.as_deref() else {
        for (key, set) in [
            ("uwsgi_param", !loc.uwsgi_param.is_empty()),
            ("uwsgi_connect_timeout", loc.uwsgi_connect_timeout.is_some()),
            ("uwsgi_send_timeout", loc.uwsgi_send_timeout.is_some()),
            ("uwsgi_read_timeout", loc.uwsgi_read_timeout.is_some()),
        ] {
            if set {
                probs.push(l.problem_at_key(
                    &format!("{at}.{key}"),
                    format!("{key} needs uwsgi_pass in the same location"),
                ));
            }
        }
        return Ok(None);
    };
    if loc.proxy_pass.is_some() {
        probs.push(l.problem_at(
            &format!("{at}.uwsgi_pass"),
            "a location has either proxy_pass or uwsgi_pass, not both",
        ));
        return Err(());
    }
    if loc.root.is_some() || loc.alias.is_some() {
        probs.push(l.problem_at(
            &format!("{at}.uwsgi_pass"),
            "a location either passes to uwsgi or serves files (root/alias), not both",
        ));
        return Err(());
    }
    let Some(target) = find(text) else {
        // An address that could not be used was reported where its pool was made.
        if !is_address(text) {
            probs.push(l.problem_at(
                &format!("{at}.uwsgi_pass"),
                format!("unknown upstream or canary \"{text}\" in uwsgi_pass (an address is written IP:PORT or unix:/path)"),
            ));
        }
        return Err(());
    };
    let mut params = Vec::new();
    for (name, v) in &loc.uwsgi_param {
        let pat = format!("{at}.uwsgi_param.{name}");
        if name.is_empty() || name.len() > 0xffff || name.bytes().any(|b| b.is_ascii_control()) {
            probs.push(l.problem_at_key(&pat, format!("invalid uwsgi_param name \"{name}\"")));
            continue;
        }
        match Template::compile(v) {
            Ok(t) => params.push((Box::from(name.as_str()), t)),
            Err(e) => probs.push(super::template::problem(l, &pat, v, e)),
        }
    }
    let pick = |own: Option<crate::config::TimeValue>,
                general: Option<crate::config::TimeValue>,
                key: &str,
                probs: &mut Problems| {
        if let Some(t) = own {
            check_above_zero(l, &format!("{at}.{key}"), t.0, probs);
        }
        own.or(general).map(|t| t.0)
    };
    Ok(Some(UwsgiPlan {
        target,
        params,
        connect_timeout: pick(
            loc.uwsgi_connect_timeout,
            loc.connect_timeout,
            "uwsgi_connect_timeout",
            probs,
        ),
        send_timeout: pick(
            loc.uwsgi_send_timeout,
            loc.send_timeout,
            "uwsgi_send_timeout",
            probs,
        ),
        read_timeout: pick(
            loc.uwsgi_read_timeout,
            loc.read_timeout,
            "uwsgi_read_timeout",
            probs,
        ),
    }))
}
