//! Faults that must not hurt a healthy server or splice a response: clients that give up, a
//! server that stalls mid-body, the last server's own error page, `max_conns` after a failure.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

/// A gateway config over `servers` (YAML list items) with `pool_extra` pool keys.
fn yaml(dir: &TempDir, listen: u16, policy: &str, servers: &str, pool_extra: &str) -> String {
    format!(
        "pid_file: {pid}\nupgrade_sock: {sock}\nerror_log: {err}\nthreads: 2\ngrace_period: 1s\nupstreams:\n  pool:\n    policy: {policy}\n{pool_extra}    servers:\n{servers}servers:\n  front:\n    listen: [\"127.0.0.1:{listen}\"]\n    access_log: {acc}\n    error_log: {ferr}\n    locations:\n      - match: /\n        proxy_pass: pool\n",
        pid = dir.s("gw.pid"),
        sock = dir.s("gw.sock"),
        err = dir.s("error.log"),
        acc = dir.s("access.log"),
        ferr = dir.s("front.error.log"),
    )
}

fn server(port: u16, opts: &str) -> String {
    format!("      - {{ addr: \"127.0.0.1:{port}\"{opts} }}\n")
}

/// Which backend each client gets for `/`.
fn assignment(port: u16, clients: &[Ipv4Addr]) -> HashMap<Ipv4Addr, String> {
    clients
        .iter()
        .map(|&ip| {
            let r = get_from(port, "/", Some(ip), &[]).expect("request");
            assert_eq!(r.status, 200, "client {ip}");
            (ip, r.backend().to_string())
        })
        .collect()
}

#[test]
fn clients_that_give_up_sideline_no_server() {
    let dir = TempDir::new("aborts");
    let (p0, p1, port) = (free_port(), free_port(), free_port());
    let _b0 = backend(&dir, "b0", p0);
    let _b1 = backend(&dir, "b1", p1);
    // nginx's defaults: one failure rests a server for 10 s.
    let servers = server(p0, "") + &server(p1, "");
    let conf = dir.write("gw.yaml", &yaml(&dir, port, "ip_hash", &servers, ""));
    let _gw = start(&conf, &[port]);
    let clients: Vec<Ipv4Addr> = (0..40).map(|i| Ipv4Addr::new(127, 90, i, 1)).collect();
    let before = assignment(port, &clients);
    assert_eq!(
        before
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        2,
        "both servers have clients"
    );

    let load = Load::start(port, 4, false);
    load.wait_more(50);
    // 200 clients on both servers ask for a slow answer and hang up after ~300 ms.
    let aborting: Vec<TcpStream> = (0..200u32)
        .map(|i| {
            let src = Ipv4Addr::new(127, 91, (i / 50) as u8, (i % 50) as u8 * 5 + 1);
            let mut s = connect(port, Some(src)).expect("connect");
            s.write_all(b"GET /?delay_ms=2000 HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("send");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    drop(aborting);
    let access = || read(&dir.path("access.log"));
    wait_for("200 lines of 499", Duration::from_secs(10), || {
        access()
            .lines()
            .filter(|l| l.contains("\"GET /?delay_ms=2000 HTTP/1.1\" 499 "))
            .count()
            == 200
    });
    load.wait_more(50);
    let res = load.finish();
    assert!(
        res.failed.is_empty(),
        "requests of others failed: {:?}",
        &res.failed[..res.failed.len().min(5)]
    );

    assert_eq!(
        assignment(port, &clients),
        before,
        "every client still on its server: none was sidelined"
    );
    let errors = read(&dir.path("front.error.log"));
    assert!(
        !errors.contains("upstream"),
        "a client abort is no upstream error:\n{errors}"
    );
    assert!(
        !access().contains("\" 502 "),
        "no 502 in the access log:\n{}",
        access()
    );
}

/// Body bytes the stalling server promises and sends: more than the 1,460 bytes Pingora's
/// client connection buffers before writing, so the half body reaches the client at once.
const PROMISED: usize = 20_000;
const SENT: usize = 10_000;

/// A raw HTTP server on loopback: `answer` gets each connection once its request head is read.
/// Stops accepting once the returned flag is set.
fn raw_backend(answer: fn(&mut TcpStream)) -> (u16, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            if flag.load(Ordering::Relaxed) {
                return;
            }
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                answer(&mut s);
            });
        }
    });
    (port, stop)
}

/// A server that sends the header and half the body, then stalls for 3 s and hangs up.
fn stalling_backend() -> (u16, Arc<AtomicBool>) {
    raw_backend(|s| {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {PROMISED}\r\n\r\n");
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&[b'x'; SENT]);
        std::thread::sleep(Duration::from_secs(3));
    })
}

#[test]
fn a_server_that_hangs_up_before_answering_is_retried_on_a_fresh_connection_too() {
    let dir = TempDir::new("hangup");
    // Reads the request and closes without a word, as a server killed mid-request.
    let (gone, stop) = raw_backend(|s| {
        let _ = s.shutdown(std::net::Shutdown::Both);
    });
    let (good, port) = (free_port(), free_port());
    let _b = backend(&dir, "good", good);
    let servers = server(gone, "") + &server(good, "");
    let conf = dir.write("gw.yaml", &yaml(&dir, port, "round_robin", &servers, ""));
    let _gw = start(&conf, &[port]);
    // The first request goes to the first server, on a new upstream connection.
    let r = get(port, "/first");
    assert_eq!(
        (r.status, r.backend()),
        (200, "good"),
        "retried as nginx: {r:?}"
    );
    wait_for("the error line", Duration::from_secs(5), || {
        read(&dir.path("front.error.log"))
            .contains("upstream prematurely closed connection while reading response header")
    });
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_server_that_stalls_mid_body_ends_the_response_never_splices_another() {
    let dir = TempDir::new("stall");
    let (stall, stop) = stalling_backend();
    let (good, port) = (free_port(), free_port());
    let _b = backend(&dir, "good", good);
    // Round robin starts with the first server; a timeout would be retried before any byte.
    let servers = server(stall, "") + &server(good, "");
    let extra = "    read_timeout: 500ms\n    retry_on_timeout: true\n";
    let conf = dir.write("gw.yaml", &yaml(&dir, port, "round_robin", &servers, extra));
    let _gw = start(&conf, &[port]);

    let mut s = connect(port, None).expect("connect");
    s.write_all(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("the gateway closes the connection");
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").expect("a response header");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {PROMISED}")),
        "{head}"
    );
    assert!(
        body.len() == SENT && body.bytes().all(|b| b == b'x'),
        "the first server's half body, nothing after it: {} bytes",
        body.len()
    );
    assert!(
        !text.contains("backend: good"),
        "no second server's bytes:\n{text}"
    );

    wait_for("the error line", Duration::from_secs(5), || {
        read(&dir.path("front.error.log"))
            .contains("upstream timed out (110: Connection timed out) while reading upstream")
    });
    stop.store(true, Ordering::Relaxed);
}

/// Sends `GET path`, reads the header and, from the stalling server, part of the body; then
/// hangs up. Returns the header.
fn read_part_and_hang_up(port: u16, path: &str) -> String {
    let mut s = connect(port, None).expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("send");
    let mut r = BufReader::new(s);
    let mut head = String::new();
    while r.read_line(&mut head).is_ok_and(|k| k > 2) {}
    if head.contains(&format!("Content-Length: {PROMISED}")) {
        let mut body = vec![0; SENT / 2];
        r.read_exact(&mut body).expect("part of the body");
    }
    head
}

#[test]
fn a_client_that_hangs_up_mid_body_does_not_count_against_the_server() {
    let dir = TempDir::new("midbody");
    let (stall, stop) = stalling_backend();
    let (good, port) = (free_port(), free_port());
    let _b = backend(&dir, "good", good);
    let servers = server(stall, "") + &server(good, "");
    let conf = dir.write("gw.yaml", &yaml(&dir, port, "round_robin", &servers, ""));
    let _gw = start(&conf, &[port]);
    // Round robin from the start: stalling server, good, stalling server, ...
    let promised = format!("Content-Length: {PROMISED}");
    let head = read_part_and_hang_up(port, "/a");
    assert!(head.contains(&promised), "{head}");
    // Logged at once, long before the server's stall ends.
    wait_for("the access line", Duration::from_secs(2), || {
        read(&dir.path("access.log")).contains("\"GET /a HTTP/1.1\" 200 ")
    });
    assert_eq!(get(port, "/b").backend(), "good");
    // Not sidelined (max_fails 1 would rest it for 10 s): its turn comes again.
    let head = read_part_and_hang_up(port, "/c");
    assert!(
        head.contains(&promised),
        "the stalling server's turn again:\n{head}"
    );
    let errors = read(&dir.path("front.error.log"));
    assert!(!errors.contains("upstream"), "{errors}");
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn with_no_other_usable_server_the_last_response_passes_through() {
    let dir = TempDir::new("lastpage");
    let (old, new, port) = (free_port(), free_port(), free_port());
    let _o = backend(&dir, "old", old);
    let _n = backend(&dir, "new", new);
    let servers = server(old, ", weight: 1") + &server(new, ", weight: 0");
    let conf = dir.write(
        "gw.yaml",
        &yaml(
            &dir,
            port,
            "ip_hash",
            &servers,
            "    retry_on_status: [503]\n",
        ),
    );
    let _gw = start(&conf, &[port]);
    let r = get(port, "/?status=503");
    assert_eq!(r.status, 503, "old's own answer: {r:?}");
    assert_eq!(r.backend(), "old", "old's own page");
    // A response passed through is no failure: old is not sidelined.
    let r = get(port, "/");
    assert_eq!((r.status, r.backend()), (200, "old"));
}

#[test]
fn a_failed_attempt_gives_its_max_conns_slot_back_at_once() {
    let dir = TempDir::new("slot");
    let (p1, p2, port) = (free_port(), free_port(), free_port());
    let _s1 = backend(&dir, "s1", p1);
    let _s2 = backend(&dir, "s2", p2);
    // s1 takes one request at a time; its 503 is retried on s2 (no max_conns) and does not
    // sideline it (max_fails 0).
    let servers = server(p1, ", max_conns: 1, max_fails: 0") + &server(p2, "");
    let conf = dir.write(
        "gw.yaml",
        &yaml(
            &dir,
            port,
            "ip_hash",
            &servers,
            "    retry_on_status: [503]\n",
        ),
    );
    let _gw = start(&conf, &[port]);
    let on_s1: Vec<Ipv4Addr> = (0..200)
        .map(|i| Ipv4Addr::new(127, 60, i, 1))
        .filter(|&ip| {
            get_from(port, "/", Some(ip), &[])
                .expect("request")
                .backend()
                == "s1"
        })
        .take(2)
        .collect();
    assert_eq!(on_s1.len(), 2, "two clients of s1");

    // Client A: s1 answers 503 after 1.5 s, then s2 takes 1.5 s more.
    let a = on_s1[0];
    let first = std::thread::spawn(move || {
        get_from(port, "/?delay_ms=1500&status=503&only=s1", Some(a), &[]).expect("request")
    });
    wait_for("s1's 503 to be retried", Duration::from_secs(10), || {
        read(&dir.path("front.error.log")).contains("upstream returned status 503")
    });
    // While A waits on s2, s1 is free: client B stays on its server.
    let r = get_from(port, "/", Some(on_s1[1]), &[]).expect("request");
    assert_eq!(
        r.backend(),
        "s1",
        "s1's slot was given back when its attempt failed"
    );
    let r = first.join().expect("client A");
    assert_eq!((r.status, r.backend()), (200, "s2"));
}

/// A `retry_on_status` status that passes through because no other server is left is no
/// failure of that server, as in nginx (1.22.1, `proxy_next_upstream error timeout http_502`,
/// checked below): it is asked again by the next request. (Known fault 8 said otherwise.)
#[test]
fn a_retry_status_passed_through_on_the_last_server_is_no_failure() {
    use crate::hostile::{nginx_upstream, EvilBackend};
    let dir = TempDir::new("laststatus");
    let reply = || {
        EvilBackend::start(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
                .to_vec(),
        )
    };
    // Both servers answer 502: the first fails and rests, the second's 502 is passed on.
    let asked_again = |port: u16, second: &EvilBackend| {
        for _ in 0..2 {
            assert_eq!(get(port, "/").status, 502);
        }
        second.conns.load(Ordering::Relaxed)
    };
    let (a, b, port) = (reply(), reply(), free_port());
    let servers = server(a.port, "") + &server(b.port, "");
    let extra = "    retry_on_status: [502]\n";
    let conf = dir.write("gw.yaml", &yaml(&dir, port, "round_robin", &servers, extra));
    let _gw = start(&conf, &[port]);
    assert_eq!(
        asked_again(port, &b),
        2,
        "graygate: the second server asked again"
    );

    let (a, b) = (reply(), reply());
    let Some((_nginx, port)) = nginx_upstream(
        &dir,
        &[a.port, b.port],
        "proxy_next_upstream error timeout http_502;",
    ) else {
        eprintln!("nginx not installed: not compared");
        return;
    };
    assert_eq!(
        asked_again(port, &b),
        2,
        "nginx: the second server asked again"
    );
}
