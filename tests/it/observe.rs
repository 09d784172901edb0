//! Per-version observability (issue 15): an access log `log_format` with every variable, real
//! retries across two upstreams as nginx shows them, metrics that count exactly what was sent
//! and parse with the Prometheus project's own OpenMetrics parser, upstream failures by
//! reason, and the connections gauge following real idle keep-alive connections.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;

/// Every variable, `|`-separated (none of their values holds a `|`).
const ALL: &str = "$remote_addr|$remote_user|[$time_local]|$request|$status|$body_bytes_sent|$http_referer|$http_user_agent|$upstream_addr|$upstream_status|$upstream_response_time|$request_time|$canary_side|$request_id|$http_x_trace|$cookie_uid|$time_iso8601|$host|$request_method|$request_uri|$uri|$args|$server_port|$bytes_sent|$msec|$upstream_connect_time|$upstream_header_time|$sent_http_content_length|$server_protocol|$pipe";

/// One sample as the parser read it.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses `text` with `prometheus_client`'s OpenMetrics parser (strict: a malformed line, a
/// bad histogram or a missing `# EOF` fails the test).
fn parse_metrics(text: &str) -> Vec<Sample> {
    // (Python needs its indentation: no `\` line continuations here.)
    const SCRIPT: &str = "import sys, json
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        print(json.dumps([s.name, s.labels, s.value]))
";
    // Debian's python, where scripts/deps.sh installs the parser.
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 (scripts/deps.sh installs python3-prometheus-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (name, labels, value): (String, BTreeMap<String, String>, f64) =
                serde_json::from_str(l).unwrap();
            Sample {
                name,
                labels,
                value,
            }
        })
        .collect()
}

/// The sum of samples `name` whose labels include every pair of `want`.
fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// A sample's value read straight off the text (for polling, without the parser).
fn value(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

fn metrics(admin: u16) -> String {
    let r = get_from(admin, "/metrics", None, &[]).expect("GET /metrics");
    assert_eq!(r.status, 200);
    r.body
}

/// `seconds.mmm`, nginx's time values.
fn is_secs(s: &str) -> bool {
    s.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.len() == 3
            && b.bytes().all(|c| c.is_ascii_digit())
    })
}

/// The lines of `path` once it has at least `n`.
fn wait_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    wait_for(
        &format!("{n} lines in {}", path.display()),
        Duration::from_secs(10),
        || {
            lines = read(path).lines().map(str::to_string).collect();
            lines.len() >= n
        },
    );
    lines
}

#[test]
fn a_custom_log_format_shows_every_variable_and_both_attempts_of_a_retry() {
    let dir = TempDir::new("observe-log");
    let (listen, a, b) = (free_port(), free_port(), free_port());
    let _a = backend(&dir, "a", a);
    let _b = backend(&dir, "b", b);
    let log = dir.path("access.log");
    let conf = dir.write(
        "gw.yaml",
        &format!(
            "pid_file: {pid}\nerror_log: {err}\nlog_formats:\n  all: \"{ALL}\"
upstreams:
  pool:
    retry_on_status: [502]
    servers:
      - {{ addr: \"127.0.0.1:{a}\", max_fails: 0 }}
      - {{ addr: \"127.0.0.1:{b}\", max_fails: 0 }}
  solo: {{ servers: [{{ addr: \"127.0.0.1:{b}\" }}] }}
canaries:
  rel: {{ stable: pool, canary: solo, percent: 100 }}
servers:
  front:
    listen: [\"127.0.0.1:{listen}\"]
    access_log: {{ path: {log}, format: all }}
    locations:
      - {{ match: /, proxy_pass: pool, proxy_set_header: {{ X-Request-Id: $request_id }} }}
      - {{ match: /c, proxy_pass: rel }}
",
            pid = dir.s("gw.pid"),
            err = dir.s("error.log"),
            log = log.display(),
        ),
    );
    let _gw = start(&conf, &[listen]);
    let path = "/x?status=502&only=a&q=1";
    let headers = [
        "Referer: http://ref.example/",
        "User-Agent: ua \"quoted\"",
        "X-Trace: t1",
        "Cookie: z=1; uid=u7",
        // alice:secret
        "Authorization: Basic YWxpY2U6c2VjcmV0",
    ];
    // Round robin over a and b: a request that meets a first gets its 502 and is retried on b,
    // as nginx's `proxy_next_upstream http_502`; the client always sees b's 200.
    let mut found = None;
    for n in 1..=6 {
        let r = get_from(listen, path, None, &headers).expect("request");
        assert_eq!((r.status, r.backend()), (200, "b"), "{r:?}");
        let lines = wait_lines(&log, n);
        let last = lines[n - 1].clone();
        if last.split('|').nth(8).is_some_and(|u| u.contains(", ")) {
            found = Some((r, last));
            break;
        }
    }
    let (resp, line) = found.expect("no request met a first in 6 round-robin picks");
    let f: Vec<&str> = line.split('|').collect();
    assert_eq!(f.len(), 30, "{line}");
    assert_eq!(&f[..2], ["127.0.0.1", "alice"], "{line}");
    assert!(
        f[2].starts_with('[') && f[2].len() == 28,
        "time_local {}",
        f[2]
    );
    assert_eq!(f[3], format!("GET {path} HTTP/1.1"));
    assert_eq!(f[4], "200");
    assert_eq!(f[5], resp.body.len().to_string());
    assert_eq!(f[6], "http://ref.example/");
    // nginx's escaping of a value.
    assert_eq!(f[7], "ua \\x22quoted\\x22");
    // Both attempts, as nginx lists them.
    assert_eq!(f[8], format!("127.0.0.1:{a}, 127.0.0.1:{b}"));
    assert_eq!(f[9], "502, 200");
    // Each attempt's times: to the last byte, to the connection, to the header.
    for i in [10, 25, 26] {
        let times: Vec<&str> = f[i].split(", ").collect();
        assert!(
            times.len() == 2 && times.iter().all(|t| is_secs(t)),
            "{}",
            f[i]
        );
    }
    assert!(is_secs(f[11]), "request_time {}", f[11]);
    assert_eq!(f[12], "-", "no canary on /");
    // The id the upstream got in its header is the one logged: 32 hex digits.
    assert_eq!(Some(f[13]), resp.seen("x-request-id"), "{resp:?}");
    assert!(f[13].len() == 32 && f[13].bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(&f[14..16], ["t1", "u7"]);
    assert!(
        f[16].len() == 25 && f[16].as_bytes()[10] == b'T',
        "time_iso8601 {}",
        f[16]
    );
    assert_eq!(f[17], "localhost", "nginx's $host has no port");
    assert_eq!(&f[18..22], ["GET", path, "/x", "status=502&only=a&q=1"]);
    assert_eq!(f[22], listen.to_string());
    // $bytes_sent: the head as it went on the wire, and the body.
    let head = "HTTP/1.1 200 OK\r\n".len()
        + resp
            .headers
            .iter()
            .map(|(k, v)| k.len() + 2 + v.len() + 2)
            .sum::<usize>()
        + 2;
    assert_eq!(f[23], (head + resp.body.len()).to_string(), "{resp:?}");
    let (secs, ms) = f[24].split_once('.').expect("msec");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        ms.len() == 3 && now.abs_diff(secs.parse().unwrap()) < 600,
        "msec {}",
        f[24]
    );
    assert_eq!(Some(f[27]), resp.header("content-length"));
    assert_eq!(&f[28..], ["HTTP/1.1", "."]);

    // Through the canary: its side, one attempt; a new id.
    let before = read(&log).lines().count();
    let r = get_from(listen, "/c", None, &[]).expect("request");
    assert_eq!(r.status, 200);
    let lines = wait_lines(&log, before + 1);
    let last = lines.last().unwrap();
    let g: Vec<&str> = last.split('|').collect();
    assert_eq!(g[3], "GET /c HTTP/1.1", "{last}");
    assert_eq!(&g[8..10], [format!("127.0.0.1:{b}").as_str(), "200"]);
    assert_eq!(g[12], "canary");
    assert_ne!(g[13], f[13], "each request has its own id");
    // What the request lacked: nginx's "-" (no user, referer, agent, cookie, args).
    assert_eq!((g[1], g[6], g[7], g[15], g[21]), ("-", "-", "-", "-", "-"));
}

/// A gateway with an admin listener in front of: `pool` (a dead port, then backend a),
/// `retry` (a and b, `retry_on_status: [502]`) at `/r`, `slow` (a, a 300 ms read timeout) at
/// `/slow`.
struct Metered {
    dir: TempDir,
    listen: u16,
    admin: u16,
    a: u16,
    dead: u16,
    _a: Proc,
    _b: Proc,
    _gw: Proc,
}

fn metered(tag: &str) -> Metered {
    let dir = TempDir::new(tag);
    let (listen, admin, a, b, dead) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let _a = backend(&dir, "a", a);
    let _b = backend(&dir, "b", b);
    let conf = dir.write(
        "gw.yaml",
        &format!(
            "pid_file: {pid}\nerror_log: {err}\nthreads: 2
admin: {{ listen: \"127.0.0.1:{admin}\" }}
upstreams:
  pool: {{ servers: [{{ addr: \"127.0.0.1:{dead}\" }}, {{ addr: \"127.0.0.1:{a}\" }}] }}
  retry:
    retry_on_status: [502]
    servers: [{{ addr: \"127.0.0.1:{a}\", max_fails: 0 }}, {{ addr: \"127.0.0.1:{b}\", max_fails: 0 }}]
  slow: {{ read_timeout: 300ms, servers: [{{ addr: \"127.0.0.1:{a}\", max_fails: 0 }}] }}
servers:
  front:
    listen: [\"127.0.0.1:{listen}\"]
    error_log: {ferr}
    locations:
      - {{ match: /, proxy_pass: pool }}
      - {{ match: /r, proxy_pass: retry }}
      - {{ match: /slow, proxy_pass: slow }}
",
            pid = dir.s("gw.pid"),
            err = dir.s("error.log"),
            ferr = dir.s("front.error.log"),
        ),
    );
    let _gw = start(&conf, &[listen, admin]);
    Metered {
        dir,
        listen,
        admin,
        a,
        dead,
        _a,
        _b,
        _gw,
    }
}

#[test]
fn metrics_count_every_request_and_each_failure_with_its_reason() {
    let m = metered("observe-metrics");
    const N: usize = 40;
    for i in 0..N {
        let r = get_from(m.listen, &format!("/n{i}"), None, &[]).expect("request");
        assert_eq!((r.status, r.backend()), (200, "a"), "{r:?}");
    }
    // A request is counted when it is logged, just after its answer: wait for the last one.
    wait_for("every request counted", Duration::from_secs(10), || {
        value(
            &metrics(m.admin),
            "graygate_request_duration_seconds_count{pool=\"pool\",side=\"\"}",
        ) == Some(N as f64)
    });
    let s = parse_metrics(&metrics(m.admin));
    let pool = [("pool", "pool")];
    assert_eq!(
        sum(&s, "graygate_requests_total", &[("server", "front")]),
        N as f64
    );
    let a = format!("127.0.0.1:{}", m.a);
    let dead = format!("127.0.0.1:{}", m.dead);
    assert_eq!(
        sum(
            &s,
            "graygate_requests_total",
            &[("upstream", a.as_str()), ("code", "2xx")]
        ),
        N as f64
    );
    // The dead server: each failed attempt is one error line and one failure, reason connect.
    let connect_lines = read(&m.dir.path("front.error.log"))
        .lines()
        .filter(|l| l.contains("connect() failed") && l.contains(&dead))
        .count() as f64;
    let failed = sum(
        &s,
        "graygate_upstream_failures_total",
        &[
            ("pool", "pool"),
            ("upstream", dead.as_str()),
            ("reason", "connect"),
        ],
    );
    assert!(failed >= 1.0, "no connect failure counted");
    assert_eq!(failed, connect_lines);
    assert_eq!(
        sum(
            &s,
            "graygate_upstream_failures_total",
            &[("upstream", a.as_str())]
        ),
        0.0
    );
    // One upstream observation per attempt, failed ones included (nginx's
    // $upstream_response_time lists them too).
    assert_eq!(
        sum(
            &s,
            "graygate_upstream_response_duration_seconds_count",
            &pool
        ),
        N as f64 + failed
    );
    assert_eq!(
        sum(&s, "graygate_request_duration_seconds_count", &pool),
        N as f64
    );
    // /api/status: requests and failures per server, the same numbers.
    let st: serde_json::Value =
        serde_json::from_str(&get_from(m.admin, "/api/status", None, &[]).unwrap().body).unwrap();
    let servers = &st["pools"][0]["servers"];
    assert_eq!(servers[0]["addr"], dead.as_str(), "{st}");
    assert_eq!(servers[0]["failures"], failed as u64, "{st}");
    assert_eq!(servers[0]["requests"], 0, "{st}");
    assert_eq!(servers[1]["requests"], N as u64, "{st}");
    assert_eq!(servers[1]["failures"], 0, "{st}");

    // A status in retry_on_status: reason http_status, one per error line.
    for _ in 0..4 {
        let r = get_from(m.listen, "/r?status=502&only=a", None, &[]).expect("request");
        assert_eq!((r.status, r.backend()), (200, "b"), "{r:?}");
    }
    // A read timeout: reason timeout, and the client gets nginx's 504.
    let r = get_from(m.listen, "/slow?delay_ms=3000", None, &[]).expect("request");
    assert_eq!(r.status, 504);
    let errors = |what: &str| {
        read(&m.dir.path("front.error.log"))
            .lines()
            .filter(|l| l.contains(what) && l.contains(&a))
            .count() as f64
    };
    let mut s = Vec::new();
    wait_for("the timeout counted", Duration::from_secs(10), || {
        s = parse_metrics(&metrics(m.admin));
        sum(
            &s,
            "graygate_upstream_failures_total",
            &[("reason", "timeout")],
        ) >= 1.0
    });
    let http = sum(
        &s,
        "graygate_upstream_failures_total",
        &[
            ("pool", "retry"),
            ("upstream", a.as_str()),
            ("reason", "http_status"),
        ],
    );
    assert!(
        http >= 1.0,
        "round robin over 2 servers: 4 requests meet a at least once"
    );
    assert_eq!(http, errors("upstream returned status 502"));
    assert_eq!(
        sum(
            &s,
            "graygate_upstream_failures_total",
            &[
                ("pool", "slow"),
                ("upstream", a.as_str()),
                ("reason", "timeout")
            ],
        ),
        errors("upstream timed out")
    );
    // Every family of issue 15 is there.
    for family in [
        "graygate_connections",
        "graygate_upstream_healthy",
        "graygate_upstream_response_duration_seconds_bucket",
    ] {
        assert!(s.iter().any(|x| x.name == family), "no {family}");
    }
}

/// Opens a keep-alive connection and has one request answered on it.
fn idle_connection(port: u16) -> BufReader<TcpStream> {
    let mut c = connect(port, None).expect("connect");
    c.write_all(format!("GET / HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n").as_bytes())
        .unwrap();
    let mut r = BufReader::new(c);
    let resp = read_response(&mut r).expect("response");
    assert_eq!(resp.status, 200);
    r
}

#[test]
fn the_connections_gauge_follows_real_connections() {
    let m = metered("observe-conns");
    let state = |s: &str| {
        value(
            &metrics(m.admin),
            &format!("graygate_connections{{server=\"front\",state=\"{s}\"}}"),
        )
        .unwrap_or(-1.0)
    };
    let idle: Vec<_> = (0..5).map(|_| idle_connection(m.listen)).collect();
    wait_for("5 active, 5 waiting", Duration::from_secs(10), || {
        state("active") == 5.0 && state("waiting") == 5.0
    });
    // A request head half sent: reading.
    let mut partial = connect(m.listen, None).unwrap();
    partial.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    wait_for("1 reading", Duration::from_secs(10), || {
        state("reading") == 1.0 && state("active") == 6.0
    });
    // A request being answered (the server takes its time): writing.
    partial.write_all(b"Host: x\r\n\r\n").unwrap();
    let mut slow = connect(m.listen, None).unwrap();
    slow.write_all(b"GET /?delay_ms=2000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    wait_for("1 writing", Duration::from_secs(10), || {
        state("writing") == 1.0 && state("reading") == 0.0
    });
    let resp = read_response(&mut BufReader::new(slow)).expect("slow response");
    assert_eq!(resp.status, 200);
    drop(partial);
    drop(idle);
    wait_for("all closed", Duration::from_secs(10), || {
        state("active") == 0.0 && state("writing") == 0.0 && state("waiting") == 0.0
    });
    parse_metrics(&metrics(m.admin));
}
