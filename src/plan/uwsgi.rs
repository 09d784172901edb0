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

/// An upstream behind `uwsgi_pass` whose health check speaks HTTP would fail every check
/// (a uwsgi server does not answer HTTP) and take every server out: refused.
pub(super) fn check_health(
    l: &Loaded,
    pool_names: &HashMap<&str, usize>,
    pools: &[PoolPlan],
    probs: &mut Problems,
) {
    for (sname, s) in &l.config.servers {
        for (i, loc) in s.locations.iter().enumerate() {
            let Some(&p) = loc.uwsgi_pass.as_deref().and_then(|n| pool_names.get(n)) else {
                continue;
            };
            let http = pools.get(p).and_then(|pp| pp.health_check.as_ref());
            if http.is_some_and(|c| c.kind == crate::upstream::health::Kind::Http) {
                probs.push(l.problem_at(
                    &format!("servers.{sname}.locations.{i}.uwsgi_pass"),
                    format!("upstream \"{}\" has an http health check, which a uwsgi server cannot answer: use health_check: {{ type: tcp }}", pools[p].pool.name),
                ));
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use crate::config;
    use crate::plan::{Plan, Target};

    fn problems(src: &str) -> Vec<String> {
        let loaded = config::parse("t.yaml".into(), src, false).unwrap();
        match Plan::compile(&loaded, None) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// One server block whose single location is `loc` (YAML flow mapping body).
    fn with_location(loc: &str) -> String {
        format!(
            "upstreams:\n  apps:\n    servers: [{{ addr: 127.0.0.1:2 }}]\nservers:\n  s:\n    listen: [\"127.0.0.1:1\"]\n    locations:\n      - {{ match: /, {loc} }}\n"
        )
    }

    #[test]
    fn addresses_become_pools_and_names_win() {
        let src = "upstreams:\n  apps:\n    servers: [{ addr: 127.0.0.1:2 }]\nservers:\n  s:\n    listen: [\"127.0.0.1:1\"]\n    locations:\n      - { match: /, uwsgi_pass: apps }\n      - { match: /a, uwsgi_pass: \"127.0.0.1:30000\", uwsgi_read_timeout: 360 }\n      - { match: /b, uwsgi_pass: \"127.0.0.1:30000\" }\n      - { match: /c, uwsgi_pass: \"unix:/run/app.sock\", uwsgi_param: { X: \"$remote_addr\" } }\n";
        let loaded = config::parse("t.yaml".into(), src, false).unwrap();
        let plan = Plan::compile(&loaded, None).unwrap();
        let locs = &plan.servers[0].locations;
        let target = |i: usize| locs[i].uwsgi.as_ref().unwrap().target;
        assert_eq!(target(0), Target::Pool(0));
        assert_eq!(target(1), Target::Pool(1));
        assert_eq!(target(2), Target::Pool(1), "one pool per address");
        assert_eq!(target(3), Target::Pool(2));
        assert_eq!(plan.pools[1].pool.name, "127.0.0.1:30000");
        let sock = &plan.pools[2].pool.peers[0];
        assert_eq!(
            sock.unix.as_deref(),
            Some(std::path::Path::new("/run/app.sock"))
        );
        let u = locs[1].uwsgi.as_ref().unwrap();
        assert_eq!(u.read_timeout, Some(std::time::Duration::from_secs(360)));
        assert!(locs[0].target.is_none(), "not proxied over HTTP");
    }

    #[test]
    fn mistakes_name_their_place() {
        assert_eq!(
            problems(&with_location("uwsgi_pass: nope")),
            ["t.yaml:8:33: unknown upstream or canary \"nope\" in uwsgi_pass (an address is written IP:PORT or unix:/path)"]
        );
        assert_eq!(
            problems(&with_location("uwsgi_pass: \"unix:app.sock\"")),
            ["t.yaml:8:33: a unix socket in uwsgi_pass needs an absolute path, not \"unix:app.sock\""]
        );
        assert_eq!(
            problems(&with_location("uwsgi_pass: apps, proxy_pass: apps")),
            ["t.yaml:8:33: a location has either proxy_pass or uwsgi_pass, not both"]
        );
        assert_eq!(
            problems(&with_location("uwsgi_pass: apps, root: /srv")),
            ["t.yaml:8:33: a location either passes to uwsgi or serves files (root/alias), not both"]
        );
        assert_eq!(
            problems(&with_location("proxy_pass: apps, uwsgi_read_timeout: 5s")),
            ["t.yaml:8:39: uwsgi_read_timeout needs uwsgi_pass in the same location"]
        );
        assert_eq!(
            problems(&with_location(
                "uwsgi_pass: apps, uwsgi_param: { X: \"$nope\" }"
            )),
            ["t.yaml:8:58: unknown variable \"$nope\""]
        );
        let hc = with_location("uwsgi_pass: apps").replace(
            "    servers: [{ addr: 127.0.0.1:2 }]\n",
            "    servers: [{ addr: 127.0.0.1:2 }]\n    health_check: { type: http }\n",
        );
        assert_eq!(
            problems(&hc),
            ["t.yaml:9:33: upstream \"apps\" has an http health check, which a uwsgi server cannot answer: use health_check: { type: tcp }"]
        );
        assert!(problems(&hc.replace("type: http", "type: tcp")).is_empty());
        assert_eq!(
            problems(&with_location("uwsgi_pass: apps, uwsgi_send_timeout: 0s")),
            ["t.yaml:8:59: uwsgi_send_timeout must be above 0"]
        );
    }
}
