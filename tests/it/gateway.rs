//! The foundation, end to end: real gateway, real backend processes, real sockets.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::common::*;

#[test]
fn config_test_accepts_the_shipped_files() {
    let out = run(&["-t"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "graygate: configuration file conf/graygate.yaml (embedded) test is successful"
        ),
        "{text}"
    );

    let dir = TempDir::new("t-good");
    let conf = dir.write(
        "good.yaml",
        &gateway_yaml(&dir, free_port(), "ip_hash", &[(11001, 1), (12001, 1)], ""),
    );
    let out = run(&["-t", "-c", conf.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap(),
        format!(
            "graygate: configuration file {} test is successful",
            conf.display()
        )
    );
}

/// `-t` on a bad file: exit 1 and exactly the expected `FILE:LINE:COL: message` lines.
fn expect_problems(name: &str, yaml: &str, want: &[(usize, usize, &str)]) {
    let dir = TempDir::new("t-bad");
    let conf = dir.write(name, yaml);
    let out = run(&["-t", "-c", conf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{name} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.contains("test failed")).collect();
    assert_eq!(lines.len(), want.len(), "{name}: {err}");
    for (line, (l, c, msg)) in lines.iter().zip(want) {
        let prefix = format!("{}:{l}:{c}: ", conf.display());
        assert!(
            line.starts_with(&prefix),
            "{name}: {line:?} should start with {prefix:?}"
        );
        assert!(line.contains(msg), "{name}: {line:?} should say {msg:?}");
    }
}

#[test]
fn config_test_names_file_line_and_column_of_each_problem() {
    expect_problems(
        "syntax.yaml",
        "upstreams:\n  a:\n    servers: [ { addr: 1 \n",
        &[(4, 1, "")],
    );
    expect_problems(
        "unknown-key.yaml",
        "upstreams:\n  a:\n    servers:\n      - addr: 127.0.0.1:1\n        wieght: 3\n",
        &[(5, 9, "unknown field `wieght`")],
    );
    expect_problems(
        "semantic.yaml",
        "upstreams:
  balance:
    servers:
      - addr: 127.0.0.1:99999
      - addr: 127.0.0.1:12001
        weight: 5000
servers:
  a:
    listen: [\"127.0.0.1:10001\"]
    access_log: /nonexistent-graygate/dir/a.log
    locations:
      - match: /
        proxy_pass: nopool
  b:
    listen: [\"127.0.0.1:10001\", \"nonsense\"]
    locations:
      - match: /
        proxy_pass: balance
",
        &[
            (4, 15, "invalid address \"127.0.0.1:99999\""),
            (6, 17, "weight must be 0..1000, not 5000"),
            (
                10,
                17,
                "log directory /nonexistent-graygate/dir does not exist",
            ),
            (
                13,
                21,
                "unknown upstream or canary \"nopool\" in proxy_pass",
            ),
            (15, 14, "duplicate listen address 127.0.0.1:10001"),
            (15, 33, "invalid address \"nonsense\""),
        ],
    );
    expect_problems(
        "bad-policy.yaml",
        "upstreams:\n  a:\n    policy: hash\n    servers: [{ addr: 127.0.0.1:1 }]\n",
        &[(3, 13, "unknown variant `hash`")],
    );
}

#[test]
fn gateway_refuses_to_start_on_a_bad_file() {
    let dir = TempDir::new("refuse");
    let conf = dir.write("bad.yaml", "servers:\n  a:\n    listen: [\"127.0.0.1:1\"]\n    locations: [{ match: /, proxy_pass: none }]\n");
    let out = run(&["-c", conf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(":4:41: unknown upstream or canary \"none\"")
    );
}

struct Setup {
    dir: TempDir,
    port: u16,
    _backends: Vec<Proc>,
    gw: Proc,
}

fn setup(policy: &str, weights: &[u32], extra_pool: &str) -> Setup {
    let dir = TempDir::new("gw");
    let mut backends = Vec::new();
    let mut servers = Vec::new();
    for (i, &w) in weights.iter().enumerate() {
        let p = free_port();
        backends.push(backend(&dir, &format!("b{i}"), p));
        servers.push((p, w));
    }
    let port = free_port();
    let conf = dir.write(
        "gw.yaml",
        &gateway_yaml(&dir, port, policy, &servers, extra_pool),
    );
    let gw = start(&conf, &[port]);
    Setup {
        dir,
        port,
        _backends: backends,
        gw,
    }
}

fn index_of(resp: &Resp) -> usize {
    resp.backend()
        .trim_start_matches('b')
        .parse()
        .expect("backend name")
}

#[test]
fn ip_hash_follows_nginx_vectors_through_the_gateway() {
    let text = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/ip_hash_vectors.txt"
    ));
    for set in ["1,1", "1,3", "2,5,1"] {
        let weights: Vec<u32> = set.split(',').map(|w| w.parse().unwrap()).collect();
        let s = setup("ip_hash", &weights, "");
        let mut n = 0;
        for line in text.lines().filter(|l| l.starts_with(&format!("{set} - "))) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let ip: Ipv4Addr = f[2].parse().unwrap();
            let want: usize = f[3].parse().unwrap();
            let r = get_from(s.port, "/", Some(ip), &[]).expect("request");
            assert_eq!(r.status, 200);
            assert_eq!(index_of(&r), want, "weights {set}, client {ip}");
            n += 1;
        }
        assert!(n >= 600, "{n} vectors for {set}");
    }
}

#[test]
fn ip_hash_is_sticky_per_client() {
    let s = setup("ip_hash", &[1, 1], "");
    let mut seen = HashMap::new();
    for round in 0..3 {
        for x in 0..40u8 {
            let ip = Ipv4Addr::new(127, 10, x, 1 + round);
            let b = get_from(s.port, "/", Some(ip), &[])
                .unwrap()
                .backend()
                .to_string();
            let first = seen.entry(x).or_insert_with(|| b.clone());
            assert_eq!(*first, b, "client 127.10.{x}.* moved");
        }
    }
    let distinct: std::collections::HashSet<_> = seen.values().collect();
    assert_eq!(distinct.len(), 2, "both servers should get clients");
}

fn share_of_second(policy: &str, clients: u32) -> f64 {
    let s = setup(policy, &[1, 3], "");
    let mut second = 0;
    for i in 0..clients {
        let ip = Ipv4Addr::new(127, (i / 200) as u8 + 20, (i % 200) as u8, 1);
        if index_of(&get_from(s.port, "/", Some(ip), &[]).unwrap()) == 1 {
            second += 1;
        }
    }
    f64::from(second) / f64::from(clients)
}

#[test]
fn weights_one_to_three_split_a_quarter_and_three_quarters() {
    let ip = share_of_second("ip_hash", 2000);
    assert!(
        (0.72..=0.78).contains(&ip),
        "ip_hash share of weight 3: {ip}"
    );
    let rr = share_of_second("round_robin", 400);
    assert!(
        (0.74..=0.76).contains(&rr),
        "round_robin share of weight 3: {rr}"
    );
}

#[test]
fn x_real_ip_is_the_socket_address_even_if_the_client_sends_one() {
    let s = setup("ip_hash", &[1], "");
    let ip = Ipv4Addr::new(127, 42, 7, 9);
    let r = get_from(
        s.port,
        "/",
        Some(ip),
        &[
            "X-Real-IP: 6.6.6.6",
            "X-Forwarded-For: 1.2.3.4",
            "Connection: close",
        ],
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.seen("x-real-ip"), Some("127.42.7.9"));
    assert_eq!(
        r.body.matches("x-real-ip:").count(),
        1,
        "client's X-Real-IP passed through: {}",
        r.body
    );
    assert_eq!(r.seen("x-forwarded-for"), Some("1.2.3.4, 127.42.7.9"));
    assert_eq!(
        r.seen("host"),
        Some(format!("localhost:{}", s.port).as_str()),
        "Host as the client sent it"
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("*"),
        "backend headers pass back"
    );
}

#[test]
fn access_log_is_nginx_combined() {
    let s = setup("round_robin", &[1], "");
    let ip = Ipv4Addr::new(127, 3, 4, 5);
    let r = get_from(
        s.port,
        "/path?q=1",
        Some(ip),
        &["User-Agent: test-agent/1.0", "Referer: http://ref.example/"],
    )
    .unwrap();
    let body_len = r.body.len();
    get_from(
        s.port,
        "/two",
        Some(ip),
        &["Authorization: Basic YWxpY2U6c2VjcmV0"],
    )
    .unwrap();
    let log = s.dir.path("access.log");
    wait_for("two access log lines", Duration::from_secs(10), || {
        read(&log).lines().count() >= 2
    });
    let text = read(&log);
    assert_eq!(text.lines().count(), 2, "{text}");
    // Each request is logged once it is done, by whichever thread served it: two requests in a
    // row may be logged in either order (as with nginx's workers), so find each by its path.
    let line = |path: &str| {
        text.lines()
            .find(|l| l.contains(&format!("\"GET {path} HTTP/1.1\"")))
            .unwrap_or_else(|| panic!("no line for {path}: {text}"))
    };
    let lines = [line("/path?q=1"), line("/two")];
    let check = |line: &str, head: &str, tail: &str| {
        let (h, rest) = line.split_once(" [").expect("time");
        assert_eq!(h, head);
        let (time, t) = rest.split_once("] ").expect("time end");
        // 25/Nov/2026:04:35:56 +0000
        assert_eq!(time.len(), 26, "{time}");
        assert_eq!(&time[2..3], "/");
        assert_eq!(&time[6..7], "/");
        assert_eq!(&time[11..12], ":");
        assert!(time[21..].starts_with('+') || time[21..].starts_with('-'));
        assert_eq!(t, tail);
    };
    check(
        lines[0],
        "127.3.4.5 - -",
        &format!(
            "\"GET /path?q=1 HTTP/1.1\" 200 {body_len} \"http://ref.example/\" \"test-agent/1.0\""
        ),
    );
    assert!(lines[1].starts_with("127.3.4.5 - alice ["), "{}", lines[1]);
    assert!(
        lines[1].contains("] \"GET /two HTTP/1.1\" 200 "),
        "{}",
        lines[1]
    );
    assert!(lines[1].ends_with(" \"-\" \"-\""), "{}", lines[1]);
    drop(s.gw);
}

#[test]
fn dead_upstream_gives_502_and_an_error_line_naming_it() {
    let dir = TempDir::new("dead");
    let dead = free_port();
    let port = free_port();
    let conf = dir.write(
        "gw.yaml",
        &gateway_yaml(&dir, port, "ip_hash", &[(dead, 1)], ""),
    );
    let _gw = start(&conf, &[port]);
    let r = get_from(port, "/x", Some(Ipv4Addr::new(127, 9, 9, 9)), &[]).unwrap();
    assert_eq!(r.status, 502);
    let log = dir.path("front.error.log");
    wait_for("error log line", Duration::from_secs(10), || {
        read(&log).contains("127.9.9.9")
    });
    let text = read(&log);
    let line = text.lines().find(|l| l.contains("127.9.9.9")).unwrap();
    assert!(line.contains("[error]"), "{line}");
    assert!(
        line.contains("connect() failed (111: Connection refused) while connecting to upstream"),
        "{line}"
    );
    assert!(
        line.contains(&format!("upstream: \"http://127.0.0.1:{dead}/\"")),
        "{line}"
    );
    assert!(line.contains("request: \"GET /x HTTP/1.1\""), "{line}");
    assert!(line.contains("client: 127.9.9.9, server: front"), "{line}");
    // The time stamp leads, nginx-style: 2026/11/25 04:35:56
    assert_eq!(&line[4..5], "/");
    assert_eq!(&line[13..14], ":");
}

#[test]
fn a_dead_server_is_skipped_and_its_clients_retried_on_the_other() {
    let dir = TempDir::new("failover");
    let live_port = free_port();
    let _live = backend(&dir, "live", live_port);
    let dead = free_port();
    let port = free_port();
    let conf = dir.write(
        "gw.yaml",
        &gateway_yaml(&dir, port, "ip_hash", &[(dead, 1), (live_port, 1)], ""),
    );
    let _gw = start(&conf, &[port]);
    for x in 0..30u8 {
        let r = get_from(port, "/", Some(Ipv4Addr::new(127, 50, x, 1)), &[]).unwrap();
        assert_eq!(r.status, 200, "client 127.50.{x}.1");
        assert_eq!(r.backend(), "live");
    }
    let log = dir.path("front.error.log");
    wait_for("a failed attempt logged", Duration::from_secs(10), || {
        read(&log).contains(&format!("127.0.0.1:{dead}"))
    });
}

#[test]
fn upstream_timeout_gives_504() {
    let s = setup("round_robin", &[1], "    read_timeout: 300ms\n");
    let r = get(s.port, "/?delay_ms=3000");
    assert_eq!(r.status, 504);
    let log = s.dir.path("front.error.log");
    wait_for("timeout logged", Duration::from_secs(10), || {
        read(&log).contains("upstream timed out")
    });
    assert_eq!(get(s.port, "/fast").status, 200);
}

#[test]
fn unknown_location_gives_404() {
    let dir = TempDir::new("404");
    let b = free_port();
    let _b = backend(&dir, "only", b);
    let port = free_port();
    let yaml = gateway_yaml(&dir, port, "round_robin", &[(b, 1)], "")
        .replace("- match: /\n", "- match: /api/\n");
    let conf = dir.write("gw.yaml", &yaml);
    let _gw = start(&conf, &[port]);
    assert_eq!(get(port, "/other").status, 404);
    assert_eq!(get(port, "/api/x").status, 200);
}
