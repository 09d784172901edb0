//! Upstream pools that never strand a user: a dying server, health checks bringing it back,
//! backups, and consistent hashing that moves the fewest keys.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::common::*;
use graygate::config::Policy;
use graygate::upstream::{maglev, Attempt, Key, Peer, Pool};

fn yaml_with(dir: &TempDir, listen: u16, policy: &str, servers: &str, extra_pool: &str) -> String {
    format!(
        "pid_file: {pid}\nupgrade_sock: {sock}\nerror_log: {err}\ngrace_period: 2s\nupstreams:\n  pool:\n    policy: {policy}\n{extra_pool}    servers:\n{servers}servers:\n  front:\n    listen: [\"127.0.0.1:{listen}\"]\n    access_log: {acc}\n    error_log: {ferr}\n    locations:\n      - match: /\n        proxy_pass: pool\n",
        pid = dir.s("gw.pid"),
        sock = dir.s("gw.sock"),
        err = dir.s("error.log"),
        acc = dir.s("access.log"),
        ferr = dir.s("front.error.log"),
    )
}

fn clients() -> Vec<Ipv4Addr> {
    (0..120u32)
        .map(|i| Ipv4Addr::new(127, 90 + (i / 200) as u8, (i % 200) as u8, 1))
        .collect()
}

fn assignment(port: u16) -> HashMap<Ipv4Addr, String> {
    clients()
        .into_iter()
        .map(|ip| {
            let r = get_from(port, "/", Some(ip), &[]).expect("request");
            assert_eq!(r.status, 200, "client {ip}");
            (ip, r.backend().to_string())
        })
        .collect()
}

#[test]
fn a_dying_server_costs_no_request_moves_only_its_clients_and_comes_back() {
    for policy in ["ip_hash", "consistent"] {
        let dir = TempDir::new("dying");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut procs: Vec<Option<Proc>> = ports
            .iter()
            .enumerate()
            .map(|(i, &p)| Some(backend(&dir, &format!("b{i}"), p)))
            .collect();
        let servers: String = ports
            .iter()
            .map(|p| {
                format!("      - {{ addr: \"127.0.0.1:{p}\", max_fails: 1, fail_timeout: 30s }}\n")
            })
            .collect();
        let hc = "    health_check: { type: http, path: /health, interval: 100ms, timeout: 500ms, rise: 2, fall: 1 }\n";
        let port = free_port();
        let conf = dir.write("gw.yaml", &yaml_with(&dir, port, policy, &servers, hc));
        let _gw = start(&conf, &[port]);
        let before = assignment(port);
        assert_eq!(
            before
                .values()
                .collect::<std::collections::HashSet<_>>()
                .len(),
            3,
            "{policy}: all servers used"
        );

        // Kill b1 while a load runs: GET requests keep succeeding.
        let load = Load::start(port, 8, false);
        load.wait_more(200);
        procs[1] = None;
        load.wait_more(500);
        let res = load.finish();
        assert!(
            res.failed.is_empty(),
            "{policy}: {:?}",
            &res.failed[..res.failed.len().min(5)]
        );

        let during = assignment(port);
        for ip in clients() {
            if before[&ip] == "b1" {
                assert_ne!(during[&ip], "b1", "{policy}: {ip} still on the dead server");
            } else {
                assert_eq!(
                    during[&ip], before[&ip],
                    "{policy}: {ip} moved although its server is healthy"
                );
            }
        }

        let log = || read(&dir.path("error.log"));
        wait_for(
            "the health check to take b1 out",
            Duration::from_secs(10),
            || log().contains("taken out"),
        );

        // b1 comes back on the same port; after `rise` good checks its clients return (its
        // passive-failure rest of 30 s is lifted by the passing checks).
        procs[1] = Some(backend(&dir, "b1", ports[1]));
        wait_for("b1 back in", Duration::from_secs(10), || {
            log().contains("back in")
        });
        assert_eq!(
            assignment(port),
            before,
            "{policy}: every client is back where it was"
        );
    }
}

#[test]
fn backup_serves_only_when_every_primary_is_down() {
    let dir = TempDir::new("backup");
    let (p1, p2, pb) = (free_port(), free_port(), free_port());
    let mut b1 = Some(backend(&dir, "primary1", p1));
    let mut b2 = Some(backend(&dir, "primary2", p2));
    let _bb = backend(&dir, "backup", pb);
    let servers = format!("      - {{ addr: \"127.0.0.1:{p1}\" }}\n      - {{ addr: \"127.0.0.1:{p2}\" }}\n      - {{ addr: \"127.0.0.1:{pb}\", backup: true }}\n");
    let port = free_port();
    let conf = dir.write(
        "gw.yaml",
        &yaml_with(&dir, port, "round_robin", &servers, ""),
    );
    let _gw = start(&conf, &[port]);
    for _ in 0..20 {
        assert_ne!(get(port, "/").backend(), "backup");
    }
    b1.take();
    for _ in 0..20 {
        let r = get(port, "/");
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "primary2");
    }
    b2.take();
    for _ in 0..10 {
        let r = get(port, "/");
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "backup");
    }
}

#[test]
fn consistent_hash_key_can_be_a_cookie() {
    let (_dir, port, _procs, _gw) = gateway_over(
        "cookie",
        3,
        "consistent",
        "",
        "    hash_key: \"user-$cookie_uid\"\n",
    );
    let mut seen = std::collections::HashSet::new();
    for u in 0..30 {
        let cookie = format!("Cookie: a=1; uid={u}");
        let first = get_from(port, "/", None, &[&cookie])
            .unwrap()
            .backend()
            .to_string();
        // Another address, same cookie: same server.
        let again = get_from(port, "/", Some(Ipv4Addr::new(127, 200, u, 7)), &[&cookie]).unwrap();
        assert_eq!(again.backend(), first, "uid {u}");
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3);
}

// Moved fractions, on the pool itself with 20,000 client addresses.

fn pool_of(policy: Policy, weights: &[u32]) -> Pool {
    let peers = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Peer::new(SocketAddr::from(([10, 0, 0, i as u8 + 1], 80)), w))
        .collect();
    Pool::new("m".into(), policy, peers)
}

fn owners(p: &Pool) -> Vec<usize> {
    (0..20_000u32)
        .map(|i| {
            let ip = IpAddr::from([(i >> 16) as u8 + 1, (i >> 8) as u8, i as u8, 9]);
            let key = if p.policy == Policy::Consistent {
                Key::Hash(maglev::hash(ip.to_string().as_bytes(), 0))
            } else {
                Key::Ip(ip)
            };
            p.select(key, &mut Attempt::default()).unwrap()
        })
        .collect()
}

fn moved(a: &[usize], b: &[usize]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

#[test]
fn consistent_hashing_moves_at_most_110_percent_of_the_minimum() {
    let eight = owners(&pool_of(Policy::Consistent, &[1; 8]));
    // Join: 8 -> 9 servers; the newcomer's share (1/9) must move.
    let nine = owners(&pool_of(Policy::Consistent, &[1; 9]));
    let m = moved(&eight, &nine);
    assert!(m <= 1.10 / 9.0, "join moved {m}");
    // Leave: weight 0 for the last of nine servers; its share (1/9) must move.
    let left = owners(&pool_of(Policy::Consistent, &[1, 1, 1, 1, 1, 1, 1, 1, 0]));
    let m = moved(&nine, &left);
    assert!(m <= 1.10 / 9.0, "leave moved {m}");
    // Weight change 1 -> 2 for one of eight: its share grows from 1/8 to 2/9.
    let heavier = owners(&pool_of(Policy::Consistent, &[2, 1, 1, 1, 1, 1, 1, 1]));
    let m = moved(&eight, &heavier);
    let min = 2.0 / 9.0 - 1.0 / 8.0;
    assert!(m <= 1.10 * min, "weight change moved {m}, minimum {min}");
    // And ip_hash, for contrast, moves most clients on a join.
    let m = moved(
        &owners(&pool_of(Policy::IpHash, &[1; 8])),
        &owners(&pool_of(Policy::IpHash, &[1; 9])),
    );
    assert!(m > 0.5, "ip_hash join moved {m}");
}

#[test]
fn consistent_load_follows_weights_within_a_few_percent() {
    let o = owners(&pool_of(Policy::Consistent, &[1, 2, 3, 4]));
    for (i, w) in [1.0, 2.0, 3.0, 4.0].iter().enumerate() {
        let share = o.iter().filter(|&&x| x == i).count() as f64 / o.len() as f64;
        let want = w / 10.0;
        assert!(
            (share - want).abs() / want < 0.05,
            "server {i}: {share} vs {want}"
        );
    }
}

/// `n` backend processes b0..b{n-1} behind a gateway with `policy`; `per_server` is appended
/// to each server entry, `extra_pool` to the pool.
fn gateway_over(
    tag: &str,
    n: usize,
    policy: &str,
    per_server: &str,
    extra_pool: &str,
) -> (TempDir, u16, Vec<Proc>, Proc) {
    let dir = TempDir::new(tag);
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let procs = ports
        .iter()
        .enumerate()
        .map(|(i, &p)| backend(&dir, &format!("b{i}"), p))
        .collect();
    let servers: String = ports
        .iter()
        .map(|p| format!("      - {{ addr: \"127.0.0.1:{p}\"{per_server} }}\n"))
        .collect();
    let port = free_port();
    let conf = dir.write(
        "gw.yaml",
        &yaml_with(&dir, port, policy, &servers, extra_pool),
    );
    let gw = start(&conf, &[port]);
    (dir, port, procs, gw)
}

#[test]
fn retry_on_status_sends_idempotent_requests_to_the_next_server() {
    let (dir, port, _b, _gw) = gateway_over(
        "status",
        2,
        "round_robin",
        "",
        "    retry_on_status: [503]\n",
    );
    // A POST is not retried: b0's 503 reaches the client.
    let statuses: Vec<u16> = (0..6)
        .map(|_| {
            let mut s = connect(port, None).unwrap();
            std::io::Write::write_all(
                &mut s,
                b"POST /?status=503&only=b0 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            )
            .unwrap();
            read_response(&mut std::io::BufReader::new(s))
                .unwrap()
                .status
        })
        .collect();
    assert!(
        statuses.contains(&503) && statuses.contains(&200),
        "{statuses:?}"
    );
    // A GET is: every client gets b1's answer.
    for _ in 0..10 {
        let r = get(port, "/?status=503&only=b0");
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "b1");
    }
    wait_for("retry logged", Duration::from_secs(10), || {
        read(&dir.path("front.error.log")).contains("upstream returned status 503")
    });
}

#[test]
fn without_retry_on_status_the_answer_passes_through() {
    let (_dir, port, _b, _gw) = gateway_over("nostatus", 2, "round_robin", "", "");
    let statuses: Vec<u16> = (0..6)
        .map(|_| get(port, "/?status=503&only=b0").status)
        .collect();
    assert!(statuses.contains(&503), "{statuses:?}");
}

#[test]
fn max_conns_sends_the_overflow_elsewhere() {
    let (_dir, port, _b, _gw) = gateway_over("maxconns", 2, "round_robin", ", max_conns: 1", "");
    // Hold one server with a slow request; round robin would otherwise alternate.
    let slow = std::thread::spawn(move || get(port, "/?delay_ms=2000"));
    let mut streak: Vec<String> = Vec::new();
    wait_for(
        "five requests in a row on the other server",
        Duration::from_secs(5),
        || {
            let b = get(port, "/").backend().to_string();
            if streak.last().is_some_and(|l| *l != b) {
                streak.clear();
            }
            streak.push(b);
            streak.len() >= 5
        },
    );
    let held = slow.join().unwrap().backend().to_string();
    assert_ne!(
        held, streak[0],
        "the server at max_conns got no new request"
    );
}

#[test]
fn a_location_can_shorten_the_pools_read_timeout() {
    let dir = TempDir::new("loctimeout");
    let b = free_port();
    let _b = backend(&dir, "b0", b);
    let port = free_port();
    let yaml = yaml_with(&dir, port, "round_robin", &format!("      - {{ addr: \"127.0.0.1:{b}\" }}\n"), "    read_timeout: 60s\n")
        .replace("        proxy_pass: pool\n", "        proxy_pass: pool\n      - match: /slow/\n        proxy_pass: pool\n        read_timeout: 300ms\n");
    let conf = dir.write("gw.yaml", &yaml);
    let _gw = start(&conf, &[port]);
    assert_eq!(get(port, "/slow/x?delay_ms=2000").status, 504);
    assert_eq!(get(port, "/x?delay_ms=700").status, 200);
}
