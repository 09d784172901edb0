use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;

fn peers(weights: &[u32]) -> Vec<Peer> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Peer::new(SocketAddr::from(([127, 0, 0, 1], 20000 + i as u16)), w))
        .collect()
}

fn pool(policy: Policy, weights: &[u32]) -> Pool {
    Pool::new("p".into(), policy, peers(weights))
}

fn pick(p: &Pool, key: Key, now: u64) -> Option<usize> {
    p.select_at(key, &mut Attempt::default(), now)
}

#[test]
fn ip_hash_is_sticky_and_rehashes_past_failures() {
    let p = pool(Policy::IpHash, &[1, 1, 1]);
    let ip: IpAddr = "10.0.7.9".parse().unwrap();
    let first = p.select(Some(ip), &mut Attempt::default()).unwrap();
    for _ in 0..10 {
        assert_eq!(p.select(Some(ip), &mut Attempt::default()), Some(first));
    }
    // The same /24 lands on the same server.
    assert_eq!(
        p.select(Some("10.0.7.200".parse().unwrap()), &mut Attempt::default()),
        Some(first)
    );
    p.failed(first);
    let second = p.select(Some(ip), &mut Attempt::default()).unwrap();
    assert_ne!(second, first);
    // Passing active checks forgive at once.
    p.peers[first].record_success();
    assert_eq!(p.select(Some(ip), &mut Attempt::default()), Some(first));
}

#[test]
fn successes_between_failures_do_not_keep_a_failing_server_in() {
    // max_fails 3, fail_timeout 10 s: fail, succeed, fail, succeed, fail within the timeout.
    for policy in [Policy::IpHash, Policy::RoundRobin, Policy::Consistent] {
        let mut ps = peers(&[1, 1]);
        for p in &mut ps {
            p.max_fails = 3;
        }
        let p = Pool::new("p".into(), policy, ps);
        for t in 0..3 {
            p.failed_at(0, 100 + t * 20);
            p.succeeded(0);
        }
        for k in 0..20 {
            let key = Key::Ip(IpAddr::from([10, k, 0, 1]));
            assert_eq!(pick(&p, key, 200), Some(1), "{policy:?}: server 0 rests");
        }
        // After fail_timeout it is tried again; a success then clears its failures.
        let later = 200 + 10_001;
        let mut seen = false;
        for k in 0..20 {
            let key = Key::Ip(IpAddr::from([10, k, 0, 1]));
            if pick(&p, key, later) == Some(0) {
                seen = true;
                p.succeeded(0);
            }
        }
        assert!(seen, "{policy:?}: server 0 back after fail_timeout");
        assert_eq!(p.peers[0].fails(), 0);
    }
}

#[test]
fn a_success_before_the_next_check_does_not_reset_fails() {
    let mut ps = peers(&[1, 1]);
    ps[0].max_fails = 2;
    ps[0].fail_timeout = Duration::from_secs(1);
    let p = Pool::new("p".into(), Policy::RoundRobin, ps);
    p.failed_at(0, 5_000);
    // Picked again within fail_timeout: no new check, so this success forgives nothing.
    assert!((0..4).any(|_| pick(&p, Key::None, 5_500) == Some(0)));
    p.succeeded(0);
    assert_eq!(p.peers[0].fails(), 1);
    // A second failure makes two: resting.
    p.failed_at(0, 5_600);
    assert!((0..4).all(|_| pick(&p, Key::None, 6_000) == Some(1)));
    // Past fail_timeout the pick is a check, and a success after it forgives.
    assert!((0..4).any(|_| pick(&p, Key::None, 6_601) == Some(0)));
    p.succeeded(0);
    assert_eq!(p.peers[0].fails(), 0);
}

#[test]
fn a_single_server_is_never_sidelined() {
    for policy in [Policy::IpHash, Policy::RoundRobin, Policy::Consistent] {
        let p = pool(policy, &[1]);
        for _ in 0..5 {
            p.failed(0);
        }
        let key = Key::Ip([10, 0, 0, 1].into());
        assert_eq!(
            p.select(key, &mut Attempt::default()),
            Some(0),
            "{policy:?}"
        );
        p.peers[0].state.healthy.store(false, Ordering::Relaxed);
        assert_eq!(p.select(key, &mut Attempt::default()), None, "{policy:?}");
    }
}

#[test]
fn retries_exhaust_the_pool() {
    let p = pool(Policy::IpHash, &[1, 1]);
    let mut a = Attempt::default();
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    assert!(p.select(Some(ip), &mut a).is_some());
    assert!(p.can_retry(&a));
    assert!(p.select(Some(ip), &mut a).is_some());
    assert!(!p.can_retry(&a));
    assert_eq!(p.select(Some(ip), &mut a), None);
}

#[test]
fn can_retry_counts_only_servers_that_could_take_the_request() {
    for policy in [Policy::IpHash, Policy::RoundRobin, Policy::Consistent] {
        // [old weight 1, new weight 0]: after old, nothing is left to try.
        let p = pool(policy, &[1, 0]);
        let mut a = Attempt::default();
        assert_eq!(p.select(Key::Ip([10, 0, 0, 1].into()), &mut a), Some(0));
        assert!(!p.can_retry(&a), "{policy:?}: weight 0");

        let mut ps = peers(&[1, 1, 1]);
        ps[1].down = true;
        let p = Pool::new("p".into(), policy, ps);
        p.failed(2);
        let mut a = Attempt::default();
        assert_eq!(p.select(Key::Ip([10, 0, 0, 1].into()), &mut a), Some(0));
        assert!(!p.can_retry(&a), "{policy:?}: down and resting");
        p.peers[2].record_success();
        assert!(p.can_retry(&a), "{policy:?}: back");
    }
}

#[test]
fn failures_lower_the_effective_weight() {
    // Weights 3:3 with max_fails 3: one failure takes 3/3 off server 0 (not resting), and the
    // pass that gives it back leaves the sequence shifted, for good, as in nginx.
    let mut ps = peers(&[3, 3]);
    ps[0].max_fails = 3;
    let p = Pool::new("p".into(), Policy::RoundRobin, ps);
    let before: Vec<usize> = (0..6).map(|_| pick(&p, Key::None, 0).unwrap()).collect();
    assert_eq!(before, vec![0, 1, 0, 1, 0, 1]);
    p.failed_at(0, 10);
    assert_eq!(p.peers[0].deficit(), 1);
    // Worked from nginx's get_peer, from current weights [0,0] with effective weights [2,3]:
    // [2,3] -> 1, leaving [2,-2] and effective weight 3 again; then [5,1] -> 0, [-1,1];
    // [2,4] -> 1, [2,-2]; and so on.
    let after: Vec<usize> = (0..12).map(|_| pick(&p, Key::None, 20).unwrap()).collect();
    assert_eq!(after, vec![1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0]);
    assert_eq!(p.peers[0].deficit(), 0);
    // Its failure is still on record (no check since), so the exact pick goes on; once the
    // failure is forgiven the schedule is rebuilt from where the sequence stands.
    p.peers[0].record_success();
    let later: Vec<usize> = (0..12).map(|_| pick(&p, Key::None, 30).unwrap()).collect();
    assert_eq!(later, vec![1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0]);
    let Selector::RoundRobin(s) = &p.selector else {
        unreachable!()
    };
    assert!(s.synced());
}

#[test]
fn tried_set_beyond_inline() {
    let mut t = Tried::default();
    for i in [0, 127, 128, 500] {
        t.add(i);
    }
    assert!(t.has(0) && t.has(127) && t.has(128) && t.has(500));
    assert!(!t.has(1) && !t.has(129) && !t.has(1000));
}

#[test]
fn zero_weight_gets_no_clients() {
    let p = pool(Policy::IpHash, &[1, 0]);
    for x in 0..=255u8 {
        let ip = IpAddr::from([10, x, 1, 1]);
        assert_eq!(p.select(Some(ip), &mut Attempt::default()), Some(0));
    }
}

#[test]
fn a_new_pool_carries_no_stale_selection_state() {
    // A server the health checks took out, then a reload that keeps its state: once it is
    // healthy again (the plan resets the verdict when checks are removed), it is picked, by
    // every policy, with nothing else remembered.
    for policy in [Policy::IpHash, Policy::RoundRobin, Policy::Consistent] {
        let old = pool(policy, &[1, 1]);
        old.peers[1].state.healthy.store(false, Ordering::Relaxed);
        let mut ps = peers(&[1, 1]);
        for (p, o) in ps.iter_mut().zip(&old.peers) {
            p.state = o.state.clone();
        }
        let new = Pool::new("p".into(), policy, ps);
        let got = |p: &Pool| -> Vec<usize> {
            (0..40u8)
                .map(|k| pick(p, Key::Ip([10, k, 0, 1].into()), 0).unwrap())
                .collect()
        };
        assert!(got(&new).iter().all(|&i| i == 0), "{policy:?}: out");
        new.peers[1].state.healthy.store(true, Ordering::Relaxed);
        assert!(got(&new).contains(&1), "{policy:?}: back in");
        if let Selector::RoundRobin(s) = &new.selector {
            assert!(s.synced(), "round robin back on its schedule");
        }
    }
}

/// Plays one case of tests/data/passive_vectors.txt: the pool stands in for nginx's upstream
/// module, the loop below for its `proxy_next_upstream error timeout http_503` (a failing
/// server's 503 is a failed attempt while nginx has tries left, else the response).
fn play(name: &str, pool: &Pool, steps: &[&str]) {
    let tries_at_start = pool.peers.iter().filter(|p| !p.down).count();
    let mut now = 1_000_000u64;
    for (n, line) in steps.iter().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f[0] == "sleep" {
            now += f[1].parse::<u64>().unwrap();
            continue;
        }
        let src: IpAddr = f[1].parse().unwrap();
        let fails: Vec<usize> = match f[2] {
            "-" => vec![],
            s => s.split(',').map(|x| x.parse().unwrap()).collect(),
        };
        let mut a = Attempt::default();
        let mut tries = tries_at_start;
        let mut tried = Vec::new();
        let status = loop {
            now += 1;
            let Some(i) = pool.select_at(Key::Ip(src), &mut a, now) else {
                tried.push("none".to_string());
                break "502";
            };
            tried.push(i.to_string());
            if !fails.contains(&i) {
                pool.succeeded(i);
                break "200";
            }
            if tries <= 1 {
                pool.succeeded(i);
                break "503";
            }
            pool.failed_at(i, now);
            tries -= 1;
        };
        assert_eq!(
            (tried.join(","), status),
            (f[3].to_string(), f[4]),
            "case {name}, step {n}: {line}"
        );
    }
}

#[test]
fn passive_health_matches_nginx_sequences() {
    let text = include_str!("../../tests/data/passive_vectors.txt");
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    let mut cases = 0;
    while let Some(head) = lines.next() {
        let h: Vec<&str> = head.split_whitespace().collect();
        assert_eq!(h[0], "case", "{head}");
        let policy = match h[2] {
            "ip_hash" => Policy::IpHash,
            _ => Policy::RoundRobin,
        };
        let mut ps = Vec::new();
        let mut steps = Vec::new();
        for line in lines.by_ref() {
            if line == "end" {
                break;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            if f[0] != "server" {
                steps.push(line);
                continue;
            }
            let num = |k: &str| -> u32 {
                f.iter()
                    .find_map(|x| x.strip_prefix(k))
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            let i = ps.len();
            let mut p = Peer::new(SocketAddr::from(([127, 0, 0, 1], 30000 + i as u16)), 0);
            p.weight = num("weight=");
            p.max_fails = num("max_fails=");
            p.fail_timeout = Duration::from_secs(num("fail_timeout=").into());
            p.down = f.contains(&"down");
            p.backup = f.contains(&"backup");
            ps.push(p);
        }
        let pool = Pool::new(h[1].into(), policy, ps);
        play(h[1], &pool, &steps);
        cases += 1;
    }
    assert!(cases >= 10, "only {cases} cases");
}
