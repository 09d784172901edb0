//! The checks of [`Plan::compile`], each with the exact `FILE:LINE:COL: message` it gives.
//!
//! Over 400 lines because it is one table of small cases: every check of every section, each
//! with its YAML and its message, read best side by side.

use std::sync::atomic::Ordering;

use super::*;
use crate::config::{self, resolve_addrs};

/// Compiles `src` (named `t.yaml`), with `prev` as the running plan.
fn compile_with(src: &str, prev: Option<&Plan>) -> Result<Plan, Problems> {
    let loaded = config::parse("t.yaml".into(), src, false)?;
    Plan::compile(&loaded, prev)
}

fn compile(src: &str) -> Plan {
    match compile_with(src, None) {
        Ok(p) => p,
        Err(e) => panic!("{src}\nshould compile, got:\n{e}"),
    }
}

/// The problems `src` gives, one string each.
fn problems(src: &str) -> Vec<String> {
    match compile_with(src, None) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|p| p.to_string()).collect(),
    }
}

/// Asserts that `src` gives exactly `want` (`LINE:COL: message`, the file name implied).
#[track_caller]
fn expect(src: &str, want: &[&str]) {
    let got = problems(src);
    let want: Vec<String> = want.iter().map(|w| format!("t.yaml:{w}")).collect();
    assert_eq!(got, want, "for:\n{src}");
}

/// A valid file around one pool whose body is `pool` (indented under `upstreams.p`).
fn with_pool(pool: &str) -> String {
    format!(
        "upstreams:\n  p:\n{pool}servers:\n  s:\n    listen: [\"127.0.0.1:1\"]\n    locations: [{{ match: /, proxy_pass: p }}]\n"
    )
}

const ONE_SERVER: &str = "    servers: [{ addr: 127.0.0.1:2 }]\n";

#[test]
fn a_minimal_file_compiles() {
    let plan = compile(&with_pool(ONE_SERVER));
    assert_eq!(plan.pools.len(), 1);
    assert_eq!(plan.servers[0].listen, ["127.0.0.1:1".parse().unwrap()]);
    assert_eq!(
        plan.pools[0].pool.peers[0].addr,
        "127.0.0.1:2".parse().unwrap()
    );
}

#[test]
fn process_settings() {
    expect(
        "threads: 0\ndemo_backends: [{ listen: 1, name: d }]\n",
        &["1:10: threads must be 1..1024, not 0"],
    );
    expect(
        "error_log: /nonexistent-graygate/e.log\ndemo_backends: [{ listen: 1, name: d }]\n",
        &["1:12: log directory /nonexistent-graygate does not exist"],
    );
    expect(
        "demo_backends: [{ listen: nowhere, name: d }]\n",
        &[
            "1:1: no servers: nothing would listen",
            "1:27: invalid address \"nowhere\" (expected IP:PORT, e.g. 127.0.0.1:11001)",
        ],
    );
    expect("threads: 2\n", &["1:1: no servers: nothing would listen"]);
    let demo = "demo_backends: [{ listen: \"127.0.0.1:1\", name: d }]\n";
    assert!(compile(demo).settings.work_stealing);
    let off = compile(&format!("work_stealing: false\n{demo}"));
    assert!(!off.settings.work_stealing);
    // A change of the runtime's kind takes a new generation.
    assert!(!off.same_listeners(&compile(demo)));
}

#[test]
fn server_entries() {
    expect(
        &with_pool("    servers:\n      - addr: 127.0.0.1:99999\n      - { addr: 127.0.0.1:3, weight: 1001 }\n      - { addr: 127.0.0.1:4, max_fails: -1 }\n      - { addr: 127.0.0.1:5, max_conns: 100001 }\n"),
        &[
            "4:15: invalid address \"127.0.0.1:99999\" (expected IP:PORT, e.g. 127.0.0.1:11001)",
            "5:38: weight must be 0..1000, not 1001",
            "6:41: max_fails must be 0..1000, not -1",
            "7:41: max_conns must be 0..100000, not 100001",
        ],
    );
    expect(
        &with_pool("    servers:\n      - { addr: 127.0.0.1:2, weight: 0 }\n      - { addr: 127.0.0.1:3, down: true }\n"),
        &["4:7: upstream \"p\": every server has weight 0 or is down, so none can be chosen"],
    );
    expect(
        &with_pool("    servers: []\n"),
        &["2:3: upstream \"p\" has no servers"],
    );
}

#[test]
fn pool_rules() {
    expect(
        &with_pool("    policy: ip_hash\n    servers: [{ addr: 127.0.0.1:2 }, { addr: 127.0.0.1:3, backup: true }]\n"),
        &["3:13: backup servers cannot be used with ip_hash (as in nginx)"],
    );
    let heavy = "      - { addr: 127.0.0.1:2, weight: 1000 }\n".repeat(7);
    expect(
        &with_pool(&format!("    policy: ip_hash\n    servers:\n{heavy}")),
        &["5:7: with ip_hash the weights of upstream \"p\" must add up to at most 6271, not 7000: nginx's hash is below 6271, so the last servers would never be chosen"],
    );
    expect(
        &with_pool(&format!("    hash_key: $remote_addr\n    max_tries: 1001\n    retry_on_status: [502, 404]\n{ONE_SERVER}")),
        &[
            "3:15: hash_key needs policy: consistent",
            "4:16: max_tries must be 0..16, not 1001 (Pingora tries at most 16 servers per request)",
            "5:28: retry_on_status takes 500, 502, 503, 504 or 429, not 404",
        ],
    );
    expect(
        &with_pool(&format!(
            "    policy: consistent\n    hash_key: $nope\n{ONE_SERVER}"
        )),
        &["4:15: unknown variable \"$nope\""],
    );
}

#[test]
fn health_check_values() {
    expect(
        &with_pool(&format!("    health_check: {{ rise: 0, fall: 101, expect_status: 99, interval: 0, path: health }}\n{ONE_SERVER}")),
        &[
            "3:27: rise must be 1..100, not 0",
            "3:36: fall must be 1..100, not 101",
            "3:56: expect_status must be an HTTP status, not 99",
            "3:70: interval must be above 0",
            "3:79: path must start with /",
        ],
    );
}

#[test]
fn servers_and_locations() {
    let src = "upstreams:
  p:
    servers: [{ addr: 127.0.0.1:2 }]
demo_backends: [{ listen: \"127.0.0.1:9\", name: d }]
servers:
  a:
    listen: [\"127.0.0.1:1\", \"127.0.0.1:9\"]
    access_log: /nonexistent-graygate/a.log
    error_log: /nonexistent-graygate/e.log
    locations:
      - { match: /, proxy_pass: p }
      - { match: /, proxy_pass: p }
      - { match: api, proxy_pass: p }
      - { match: /x, proxy_pass: q }
      - { match: /y, proxy_pass: p, proxy_set_header: { \"bad name\": x, X-Ok: $bogus } }
  b:
    listen: [\"127.0.0.1:1\"]
  c:
    listen: []
";
    expect(
        src,
        &[
            "7:5: demo backend d listens on 127.0.0.1:9, like this server",
            "8:17: log directory /nonexistent-graygate does not exist",
            "9:16: log directory /nonexistent-graygate does not exist",
            "12:18: duplicate location \"/\"",
            "13:18: invalid location \"api\" (expected \"/prefix\", \"= /exact\", \"^~ /prefix\", \"~ regex\" or \"~* regex\")",
            "14:34: unknown upstream or canary \"q\" in proxy_pass (upstreams: p; canaries: none)",
            "15:57: invalid header name \"bad name\"",
            "15:78: unknown variable \"$bogus\"",
            "17:14: duplicate listen address 127.0.0.1:1 (already used by server \"a\")",
            "18:3: server \"c\" has no listen address",
        ],
    );
}

#[test]
fn locations_are_found_in_nginx_order() {
    let plan = compile(
        "upstreams:
  p:
    servers: [{ addr: 127.0.0.1:2 }]
servers:
  s:
    listen: [\"127.0.0.1:1\"]
    locations:
      - { match: /, proxy_pass: p }
      - { match: /api/v2, proxy_pass: p }
      - { match: = /api, proxy_pass: p }
      - { match: /api, proxy_pass: p }
      - { match: ~/media/, proxy_pass: p }
      - { match: \"~* \\\\.(PNG|gif)$\", proxy_pass: p }
      - { match: ^~ /static/, proxy_pass: p }
      - { match: ~ ^/api/v2/x, proxy_pass: p }
",
    );
    let s = &plan.servers[0];
    let find = |p: &str| s.find(p.as_bytes());
    assert_eq!(find("/api"), Some(2), "exact wins");
    assert_eq!(find("/api/"), Some(3), "longest prefix");
    assert_eq!(find("/api/v2/y"), Some(1));
    assert_eq!(find("/api/v2/x"), Some(7), "a regex beats a plain prefix");
    assert_eq!(
        find("/x/media/a"),
        Some(4),
        "the seed's ~/media/ matches anywhere"
    );
    assert_eq!(find("/a.png"), Some(5), "~* is caseless");
    assert_eq!(find("/media/a.png"), Some(4), "regexes in config order");
    assert_eq!(find("/static/a.png"), Some(6), "^~ stops the regex search");
    assert_eq!(find("/other"), Some(0));
}

#[test]
fn duplicate_and_bad_locations_are_errors() {
    let src = "upstreams:
  p:
    servers: [{ addr: 127.0.0.1:2 }]
servers:
  s:
    listen: [\"127.0.0.1:1\"]
    locations:
      - { match: /a, proxy_pass: p }
      - { match: ^~ /a, proxy_pass: p }
      - { match: ~ (, proxy_pass: p }
";
    let e = problems(src);
    assert!(
        e.iter()
            .any(|l| l.starts_with("t.yaml:9:18: duplicate location")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.starts_with("t.yaml:10:18: invalid regex")),
        "{e:?}"
    );
}

#[test]
fn a_reload_keeps_each_servers_state() {
    let src = with_pool("    servers: [{ addr: 127.0.0.1:2 }, { addr: 127.0.0.1:3 }]\n");
    let first = compile(&src);
    first.pools[0].pool.failed(1);
    let again = compile_with(&src, Some(&first)).unwrap();
    assert!(Arc::ptr_eq(
        &first.pools[0].pool.peers[1].state,
        &again.pools[0].pool.peers[1].state
    ));
    // A server new to the pool starts fresh.
    let other = with_pool("    servers: [{ addr: 127.0.0.1:4 }]\n");
    let fresh = compile_with(&other, Some(&first)).unwrap();
    assert!(fresh.pools[0].pool.peers[0]
        .state
        .healthy
        .load(Ordering::Relaxed));
    assert!(!Arc::ptr_eq(
        &first.pools[0].pool.peers[0].state,
        &fresh.pools[0].pool.peers[0].state
    ));
}

#[test]
fn a_health_check_compiles_to_runtime_values() {
    use crate::upstream::health::{Check, Kind};
    let plan = compile(&with_pool(&format!(
        "    health_check: {{ type: tcp, interval: 250ms, timeout: 1s, rise: 3, fall: 2, expect_status: 204 }}\n{ONE_SERVER}"
    )));
    let want = Check {
        kind: Kind::Tcp,
        path: "/".into(),
        interval: Duration::from_millis(250),
        timeout: Duration::from_secs(1),
        expect_status: Some(204),
        rise: 3,
        fall: 2,
    };
    assert_eq!(plan.pools[0].health_check.as_deref(), Some(&want));
    let targets = plan.health_targets();
    assert_eq!(targets.len(), 1);
    assert!(Arc::ptr_eq(&targets[0].0, &plan.pools[0].pool));
    assert!(compile(&with_pool(ONE_SERVER)).health_targets().is_empty());
}

/// Values that used to pass `-t` and then misbehave (issue 13, item 13): each case is put into
/// a valid file at one place, and gives exactly the problem listed (`None`: accepted).
#[test]
fn values_that_would_misbehave_are_rejected_with_their_position() {
    // Where a case goes: line 1 (`Top`), the pool (line 4), its health check (line 5), its
    // server (line 8), or the location (line 15).
    #[derive(Clone, Copy)]
    enum At {
        Top,
        Pool,
        Check,
        Server,
        Location,
    }
    use At::*;
    let too_large =
        |k: &str, v: &str| format!("{k}: time value \"{v}\" is too large (at most 365d)");
    let no_var = |v: &str| {
        format!("hash_key \"{v}\" has no variable, so every request would go to the same server (leave hash_key out to place requests by client address)")
    };
    let tries = |v: &str| {
        format!("max_tries must be 0..16, not {v} (Pingora tries at most 16 servers per request)")
    };
    let cases: Vec<(At, &str, Option<String>)> = vec![
        (Top, "grace_period: 0", None),
        (Top, "grace_period: 365d", None),
        (
            Top,
            "grace_period: 366d",
            Some(format!("1:15: {}", too_large("grace_period", "366d"))),
        ),
        (
            Top,
            "grace_period: 18446744073709551615",
            Some(format!(
                "1:15: {}",
                too_large("grace_period", "18446744073709551615")
            )),
        ),
        (
            Top,
            "shutdown_timeout: 99999999999999999999h",
            Some(format!(
                "1:19: {}",
                too_large("shutdown_timeout", "99999999999999999999h")
            )),
        ),
        (
            Top,
            "shutdown_timeout: 307445734561825861m",
            Some(format!(
                "1:19: {}",
                too_large("shutdown_timeout", "307445734561825861m")
            )),
        ),
        (
            Pool,
            "connect_timeout: 0",
            Some("4:22: connect_timeout must be above 0".into()),
        ),
        (
            Pool,
            "connect_timeout: 0ms",
            Some("4:22: connect_timeout must be above 0".into()),
        ),
        (Pool, "connect_timeout: 1ms", None),
        (
            Pool,
            "read_timeout: 0s",
            Some("4:19: read_timeout must be above 0".into()),
        ),
        (
            Pool,
            "send_timeout: 0",
            Some("4:19: send_timeout must be above 0".into()),
        ),
        (
            Pool,
            "read_timeout: 400d",
            Some(format!(
                "4:19: {}",
                too_large("upstreams.p.read_timeout", "400d")
            )),
        ),
        (Pool, "idle_timeout: 0", None),
        (Pool, "max_tries: 16", None),
        (
            Pool,
            "max_tries: 17",
            Some(format!("4:16: {}", tries("17"))),
        ),
        (
            Pool,
            "max_tries: -1",
            Some(format!("4:16: {}", tries("-1"))),
        ),
        (
            Pool,
            "policy: consistent\n    hash_key: \"\"",
            Some(format!("5:15: {}", no_var(""))),
        ),
        (
            Pool,
            "policy: consistent\n    hash_key: user",
            Some(format!("5:15: {}", no_var("user"))),
        ),
        (Pool, "policy: consistent\n    hash_key: $cookie_uid", None),
        (
            Check,
            "timeout: 0",
            Some("5:30: timeout must be above 0".into()),
        ),
        (
            Check,
            "timeout: 0ms",
            Some("5:30: timeout must be above 0".into()),
        ),
        (
            Check,
            "interval: 0",
            Some("5:31: interval must be above 0".into()),
        ),
        (
            Check,
            "interval: 9999999d",
            Some(format!(
                "5:31: {}",
                too_large("upstreams.p.health_check.interval", "9999999d")
            )),
        ),
        (Server, "fail_timeout: 0", None),
        (
            Server,
            "fail_timeout: 18446744073709551615",
            Some(format!(
                "8:23: {}",
                too_large(
                    "upstreams.p.servers[0].fail_timeout",
                    "18446744073709551615"
                )
            )),
        ),
        (
            Location,
            "read_timeout: 0",
            Some("15:23: read_timeout must be above 0".into()),
        ),
        (
            Location,
            "connect_timeout: 0ms",
            Some("15:26: connect_timeout must be above 0".into()),
        ),
        (
            Location,
            "send_timeout: 1000d",
            Some(format!(
                "15:23: {}",
                too_large("servers.s.locations[0].send_timeout", "1000d")
            )),
        ),
    ];
    let mut wrong = Vec::new();
    for (at, line, want) in &cases {
        let mut parts = [""; 5];
        parts[*at as usize] = line;
        let [top, pool, check, server, location] = parts;
        let src = format!(
            "{top}
upstreams:
  p:
    {pool}
    health_check: {{ {check} }}
    servers:
      - addr: 127.0.0.1:2
        {server}
servers:
  s:
    listen: [\"127.0.0.1:1\"]
    locations:
      - match: /
        proxy_pass: p
        {location}
"
        );
        let got = problems(&src);
        let want: Vec<String> = want.iter().map(|w| format!("t.yaml:{w}")).collect();
        if got != want {
            wrong.push(format!("{line:?}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn max_tries_never_exceeds_what_pingora_honours() {
    let twenty: String = (0..20)
        .map(|i| format!("      - addr: 127.0.0.1:{}\n", 2000 + i))
        .collect();
    let every = compile(&with_pool(&format!("    servers:\n{twenty}")));
    assert_eq!(every.pools[0].pool.max_tries, MAX_TRIES);
    let five = compile(&with_pool(&format!(
        "    max_tries: 5\n    servers:\n{twenty}"
    )));
    assert_eq!(five.pools[0].pool.max_tries, 5);
    let small = compile(&with_pool(
        "    servers: [{ addr: 127.0.0.1:2 }, { addr: 127.0.0.1:3 }]\n",
    ));
    assert_eq!(small.pools[0].pool.max_tries, 2);
}

/// A request as `Vars` sees it: a client address and a Cookie header.
struct Req(Option<&'static str>);

impl Vars for Req {
    fn client(&self) -> Option<SocketAddr> {
        "10.1.2.3:4567".parse().ok()
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.filter(|_| name == "cookie").map(str::as_bytes)
    }
    fn host(&self) -> &[u8] {
        b"example.test"
    }
    fn path_and_query(&self) -> &str {
        "/"
    }
    fn method(&self) -> &str {
        "GET"
    }
    fn server_port(&self) -> Option<u16> {
        Some(80)
    }
}

#[test]
fn a_hash_key_that_renders_empty_places_by_round_robin_as_nginx() {
    use crate::upstream::Key;
    let plan = compile(&with_pool(&format!(
        "    policy: consistent\n    hash_key: $cookie_uid\n{ONE_SERVER}"
    )));
    let pp = &plan.pools[0];
    let mut scratch = Vec::new();
    assert!(matches!(pp.placement(&Req(None), &mut scratch), Key::None));
    let a = pp.placement(&Req(Some("uid=42")), &mut scratch);
    let b = pp.placement(&Req(Some("x=1; uid=42")), &mut scratch);
    match (a, b) {
        (Key::Hash(a), Key::Hash(b)) => assert_eq!(a, b),
        other => panic!("{other:?}"),
    }
    // Without hash_key, the client address places the request.
    let by_ip = compile(&with_pool(&format!("    policy: consistent\n{ONE_SERVER}")));
    match by_ip.pools[0].placement(&Req(None), &mut scratch) {
        Key::Ip(ip) => assert_eq!(ip.to_string(), "10.1.2.3"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_host_name_gives_one_server_per_address_as_nginx() {
    config::test_hosts::set("app.test", &["10.0.0.1", "::1", "10.0.0.2"]);
    let plan = compile(&with_pool(
        "    servers:\n      - { addr: app.test:8080, weight: 3, max_fails: 2, backup: true }\n      - addr: 127.0.0.1:2\n",
    ));
    let peers = &plan.pools[0].pool.peers;
    let got: Vec<String> = peers.iter().map(|p| p.addr.to_string()).collect();
    assert_eq!(
        got,
        [
            "10.0.0.1:8080",
            "[::1]:8080",
            "10.0.0.2:8080",
            "127.0.0.1:2"
        ]
    );
    for p in &peers[..3] {
        assert_eq!((p.weight, p.max_fails, p.backup), (3, 2, true));
    }
    assert!(!peers[3].backup);
    // Through the system resolver: `localhost` gives each of its addresses.
    let want = resolve_addrs("localhost:2", "127.0.0.1").unwrap();
    let local = compile(&with_pool("    servers: [{ addr: \"localhost:2\" }]\n"));
    let got: Vec<SocketAddr> = local.pools[0].pool.peers.iter().map(|p| p.addr).collect();
    assert_eq!(got, want);
    config::test_hosts::set("gone.test", &[]);
    expect(
        &with_pool("    servers: [{ addr: \"gone.test:2\" }]\n"),
        &["3:23: host not found in \"gone.test:2\""],
    );
}

#[test]
fn upgrade_sock_is_accepted_and_changes_nothing() {
    let plain = compile(&with_pool(ONE_SERVER));
    // Not checked (no directory needed) and not part of the process settings, so setting or
    // changing it does not start a new generation.
    let set = compile(&format!(
        "upgrade_sock: /nonexistent-graygate/u.sock\n{}",
        with_pool(ONE_SERVER)
    ));
    assert!(set.same_listeners(&plain));
    assert_eq!(set.settings, plain.settings);
}

#[test]
fn files_the_master_creates_need_their_directory() {
    let file = |top: &str| format!("{top}\n{}", with_pool(ONE_SERVER));
    expect(
        &file("pid_file: /nonexistent-graygate/g.pid"),
        &["1:11: pid file directory /nonexistent-graygate does not exist"],
    );
    expect(
        &file("error_log: /nonexistent-graygate/e.log"),
        &["1:12: log directory /nonexistent-graygate does not exist"],
    );
    let long = format!("/tmp/{}.pid", "x".repeat(100));
    expect(
        &file(&format!("pid_file: {long}")),
        &[&format!("1:11: control socket path {long}.ctl is 113 bytes long; a Unix socket path has at most 107")],
    );
}

#[test]
fn a_reload_without_health_check_brings_back_the_servers_it_took_out() {
    let checked = with_pool(&format!(
        "    health_check: {{ path: /health }}\n{ONE_SERVER}"
    ));
    let first = compile(&checked);
    let state = Arc::clone(&first.pools[0].pool.peers[0].state);
    state.healthy.store(false, Ordering::Relaxed);
    // Still checked: the check's verdict stands.
    let same = compile_with(&checked, Some(&first)).unwrap();
    assert!(!state.healthy.load(Ordering::Relaxed));
    // A rejected reload changes nothing.
    let bad = format!("threads: 0\n{}", with_pool(ONE_SERVER));
    assert!(compile_with(&bad, Some(&same)).is_err());
    assert!(!state.healthy.load(Ordering::Relaxed));
    // The check removed: nothing would ever bring the server back, so it is back now.
    let unchecked = compile_with(&with_pool(ONE_SERVER), Some(&same)).unwrap();
    unchecked.commit();
    assert!(Arc::ptr_eq(&state, &unchecked.pools[0].pool.peers[0].state));
    assert!(state.healthy.load(Ordering::Relaxed));
}
