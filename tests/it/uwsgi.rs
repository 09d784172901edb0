//! `uwsgi_pass` against real uWSGI (Debian's `uwsgi` with its python3 plugin) running a tiny
//! WSGI app, and the same requests through real nginx where it is installed.

use std::io::{BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// The app: `/post` answers the body's length and sha256, `/slow` sleeps, `/big` streams
/// 1 MB without a length, `/status` answers CGI-style with a status of its choice; anything
/// else answers the CGI variables it saw, one `NAME=value` a line.
const APP: &str = r#"
import hashlib, os, time

NAME = os.environ.get("APP_NAME", "app")
SHOWN = ["REQUEST_METHOD", "REQUEST_URI", "PATH_INFO", "QUERY_STRING", "REMOTE_ADDR",
         "SERVER_PROTOCOL", "CONTENT_LENGTH", "HTTP_X_TEST", "HTTP_HOST", "X_CUSTOM",
         "REQUEST_SCHEME", "SERVER_PORT"]

def application(env, start_response):
    path = env.get("PATH_INFO", "")
    if path == "/post":
        h = hashlib.sha256()
        total = 0
        inp = env["wsgi.input"]
        while True:
            b = inp.read(65536)
            if not b:
                break
            h.update(b)
            total += len(b)
        body = ("%d %s\n" % (total, h.hexdigest())).encode()
    elif path == "/slow":
        time.sleep(3)
        body = b"slow\n"
    elif path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("X-App", NAME)])
        return (b"x" * 65536 for _ in range(16))
    else:
        body = "".join("%s=%s\n" % (k, env.get(k, "")) for k in SHOWN).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", NAME),
                              ("Content-Length", str(len(body)))])
    return [body]
"#;

/// A running uWSGI with the app, on a TCP port or a unix socket (`/path`), once it accepts.
pub struct App {
    _proc: Proc,
}

pub fn uwsgi(dir: &TempDir, name: &str, socket: &str) -> App {
    // One file per app: rewriting a file another uWSGI is loading could hand it half a file.
    let app = dir.write(&format!("app-{name}.py"), APP);
    let child = Command::new("uwsgi")
        .args(["--plugin", "python3", "--socket", socket, "--wsgi-file"])
        .arg(&app)
        .args([
            "--master",
            "--processes",
            "1",
            "--threads",
            "4",
            "--die-on-term",
            "--need-app",
            "--disable-logging",
            "--env",
            &format!("APP_NAME={name}"),
            "--logto",
            &dir.s(&format!("uwsgi-{name}.log")),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn uwsgi (scripts/deps.sh installs it)");
    let mut p = Proc { child };
    wait_for(
        &format!("uwsgi {name} on {socket}"),
        Duration::from_secs(20),
        || {
            assert!(
                !p.exited(),
                "uwsgi exited: {}",
                read(&dir.path(&format!("uwsgi-{name}.log")))
            );
            match socket.strip_prefix('/') {
                Some(_) => std::os::unix::net::UnixStream::connect(socket).is_ok(),
                None => std::net::TcpStream::connect(socket).is_ok(),
            }
        },
    );
    App { _proc: p }
}

/// A gateway with one server block whose locations are `locations` (YAML list items).
fn gateway(dir: &TempDir, port: u16, upstreams: &str, locations: &str) -> Proc {
    let conf = dir.write(
        "gw.yaml",
        &format!(
            "pid_file: {}\nerror_log: {}\nupstreams:\n{upstreams}\nservers:\n  front:\n    listen: [\"127.0.0.1:{port}\"]\n    access_log: {{ path: {}, format: up }}\n    error_log: {}\n    client_max_body_size: 20m\n    locations:\n{locations}\nlog_formats:\n  up: '$status $upstream_addr $upstream_status $body_bytes_sent \"$request\"'\n",
            dir.s("gw.pid"),
            dir.s("error.log"),
            dir.s("access.log"),
            dir.s("front.error.log"),
        ),
    );
    let out = run(&["-t", "-c", &conf.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    start(&conf, &[port])
}

fn vars(r: &Resp) -> std::collections::HashMap<String, String> {
    r.body
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One request with `body` on a new connection.
fn post(port: u16, path: &str, body: &[u8]) -> Resp {
    let mut s = connect(port, None).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_response(&mut BufReader::new(s)).unwrap()
}

fn sha256(dir: &TempDir, data: &[u8]) -> String {
    let p = dir.path("body.bin");
    std::fs::write(&p, data).unwrap();
    let out = Command::new("sha256sum").arg(&p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn wait_log(p: &Path, what: &str) -> String {
    wait_for(what, Duration::from_secs(5), || read(p).contains(what));
    read(p)
}

#[test]
fn get_post_and_faults_as_nginx() {
    let dir = TempDir::new("uwsgi");
    let app_port = free_port();
    let _app = uwsgi(&dir, "a", &format!("127.0.0.1:{app_port}"));
    let down = free_port();
    let port = free_port();
    let _gw = gateway(
        &dir,
        port,
        "",
        &format!(
            "      - match: /\n        uwsgi_pass: 127.0.0.1:{app_port}\n        add_header: {{ X-Front: graygate }}\n        uwsgi_param: {{ X_CUSTOM: \"c-$arg_k\" }}\n      - match: = /slow\n        uwsgi_pass: 127.0.0.1:{app_port}\n        uwsgi_read_timeout: 1s\n      - match: /down\n        uwsgi_pass: 127.0.0.1:{down}\n"
        ),
    );

    // GET: status, headers, body, what the app saw.
    let r = get_from(
        port,
        "/a/%62/../c?x=1&k=v",
        Some(Ipv4Addr::new(127, 0, 0, 7)),
        &["X-Test: hello"],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-app"), Some("a"));
    assert_eq!(r.header("x-front"), Some("graygate"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let v = vars(&r);
    assert_eq!(v["REQUEST_METHOD"], "GET");
    assert_eq!(v["REQUEST_URI"], "/a/%62/../c?x=1&k=v");
    assert_eq!(v["PATH_INFO"], "/a/c");
    assert_eq!(v["QUERY_STRING"], "x=1&k=v");
    assert_eq!(v["REMOTE_ADDR"], "127.0.0.7");
    assert_eq!(v["HTTP_X_TEST"], "hello");
    assert_eq!(v["X_CUSTOM"], "c-v");
    assert_eq!(v["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(v["SERVER_PORT"], port.to_string());
    assert_eq!(v["CONTENT_LENGTH"], "");

    // Two requests on one connection: keep-alive survives a reply with and without a length.
    let mut s = connect(port, None).unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut rd = BufReader::new(s.try_clone().unwrap());
    let big = read_response(&mut rd).unwrap();
    assert_eq!(big.header("transfer-encoding"), Some("chunked"));
    assert_eq!(big.body.len(), 16 * 65536);
    s.write_all(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let next = read_response(&mut rd).unwrap();
    assert_eq!(vars(&next)["PATH_INFO"], "/k");

    // POST, 10 MB, streamed: the app got every byte.
    let body: Vec<u8> = (0..10_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = post(port, "/post", &body);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body.trim(),
        format!("{} {}", body.len(), sha256(&dir, &body))
    );

    // A slow app: 504 after uwsgi_read_timeout, one line naming the server.
    let r = get(port, "/slow");
    assert_eq!(r.status, 504);
    let log = wait_log(
        &dir.path("front.error.log"),
        "while reading response header",
    );
    assert!(
        log.contains(&format!(
            "upstream timed out (110: Connection timed out) while reading response header from upstream, client: 127.0.0.1, server: front, request: \"GET /slow HTTP/1.1\", upstream: \"uwsgi://127.0.0.1:{app_port}\""
        )),
        "{log}"
    );

    // The app down: 502.
    let r = get(port, "/down");
    assert_eq!(r.status, 502);
    let log = wait_log(&dir.path("front.error.log"), "Connection refused");
    assert!(
        log.contains(&format!(
            "connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1, server: front, request: \"GET /down HTTP/1.1\", upstream: \"uwsgi://127.0.0.1:{down}\""
        )),
        "{log}"
    );
    let access = wait_log(&dir.path("access.log"), "/down");
    assert!(
        access.contains(&format!("502 127.0.0.1:{down} 502 ")),
        "{access}"
    );
    assert!(
        access.contains(&format!("200 127.0.0.1:{app_port} 200 ")),
        "{access}"
    );

    // The same under real nginx: same statuses, same body and app headers.
    let http = "client_max_body_size 20m;";
    let server = format!(
        "location / {{ include /etc/nginx/uwsgi_params; uwsgi_param X_CUSTOM c-$arg_k; uwsgi_pass 127.0.0.1:{app_port}; add_header X-Front graygate; }}\n\
         location = /slow {{ include /etc/nginx/uwsgi_params; uwsgi_pass 127.0.0.1:{app_port}; uwsgi_read_timeout 1s; }}\n\
         location /down {{ include /etc/nginx/uwsgi_params; uwsgi_pass 127.0.0.1:{down}; }}\n"
    );
    let Some((_nginx, nport)) = nginx_with(&dir, http, &server) else {
        eprintln!("nginx not installed: comparison skipped");
        return;
    };
    let ours = get_from(port, "/p?k=v", None, &["X-Test: t"]).unwrap();
    let theirs = get_from(nport, "/p?k=v", None, &["X-Test: t"]).unwrap();
    assert_eq!(ours.status, theirs.status);
    for h in ["x-app", "x-front", "content-type"] {
        assert_eq!(ours.header(h), theirs.header(h), "{h}");
    }
    let (mut ov, mut tv) = (vars(&ours), vars(&theirs));
    // The server's own port differs, as it must.
    ov.remove("SERVER_PORT");
    tv.remove("SERVER_PORT");
    ov.remove("HTTP_HOST");
    tv.remove("HTTP_HOST");
    assert_eq!(ov, tv);
    assert_eq!(get(nport, "/slow").status, 504);
    assert_eq!(get(nport, "/down").status, 502);
    let r = post(nport, "/post", &body[..1_000_000]);
    assert_eq!(post(port, "/post", &body[..1_000_000]).body, r.body);
}

#[test]
fn unix_socket_pool_ip_hash_and_client_abort() {
    let dir = TempDir::new("uwsgi-pool");
    let sock = dir.s("app.sock");
    let _u = uwsgi(&dir, "u", &sock);
    let (pa, pb) = (free_port(), free_port());
    let _a = uwsgi(&dir, "a", &format!("127.0.0.1:{pa}"));
    let _b = uwsgi(&dir, "b", &format!("127.0.0.1:{pb}"));
    let port = free_port();
    let _gw = gateway(
        &dir,
        port,
        &format!(
            "  apps:\n    policy: ip_hash\n    servers:\n      - {{ addr: \"127.0.0.1:{pa}\", max_fails: 1, fail_timeout: 60s }}\n      - {{ addr: \"127.0.0.1:{pb}\", max_fails: 1, fail_timeout: 60s }}\n"
        ),
        &format!(
            "      - match: /\n        uwsgi_pass: apps\n      - match: /sock/\n        uwsgi_pass: unix:{sock}\n"
        ),
    );

    // A unix socket.
    let r = get(port, "/sock/x");
    assert_eq!(r.status, 200, "{}", read(&dir.path("front.error.log")));
    assert_eq!(r.header("x-app"), Some("u"));
    assert_eq!(vars(&r)["PATH_INFO"], "/sock/x");
    wait_log(&dir.path("access.log"), &format!("200 unix:{sock} 200"));

    // ip_hash: one client address, one server, every time; both servers get some.
    let mut seen = std::collections::HashMap::new();
    for c in 1..=12u8 {
        let src = Some(Ipv4Addr::new(127, 0, c, 1));
        let first = get_from(port, "/", src, &[]).unwrap();
        let app = first.header("x-app").unwrap().to_string();
        for _ in 0..3 {
            let again = get_from(port, "/", src, &[]).unwrap();
            assert_eq!(again.header("x-app"), Some(app.as_str()), "client {c}");
        }
        seen.insert(c, app);
    }
    assert!(
        seen.values().any(|a| a == "a") && seen.values().any(|a| a == "b"),
        "{seen:?} {}",
        read(&dir.path("front.error.log"))
    );

    // A client that gives up mid-body is not the server's fault: the server keeps its
    // clients (with max_fails 1 a failure would send them to the other one for 60 s).
    let src = Ipv4Addr::new(127, 0, 1, 1);
    let app = seen[&1].clone();
    let mut s = connect(port, Some(src)).unwrap();
    s.write_all(b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .unwrap();
    s.write_all(&[b'z'; 100_000]).unwrap();
    drop(s);
    wait_log(&dir.path("access.log"), "499 ");
    let r = get_from(port, "/", Some(src), &[]).unwrap();
    assert_eq!(r.header("x-app"), Some(app.as_str()));
    assert_eq!(read(&dir.path("front.error.log")), "", "no error line");

    // Kill one app: its clients move to the other after one 502-free retry.
    drop(_b);
    for c in 1..=12u8 {
        let r = get_from(port, "/", Some(Ipv4Addr::new(127, 0, c, 1)), &[]).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-app"), Some("a"));
    }
    wait_log(
        &dir.path("front.error.log"),
        &format!("upstream: \"uwsgi://127.0.0.1:{pb}\""),
    );
}

/// What a fake app got: its CGI variables and the body.
type Got = (std::collections::HashMap<String, String>, Vec<u8>);

/// A fake uwsgi app on a raw socket: reads each request as the protocol lays it out
/// (checked byte by byte), reports it, and answers by its `PATH_INFO`.
fn fake_app() -> (u16, std::sync::mpsc::Receiver<Got>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut head = [0u8; 4];
            s.read_exact(&mut head).unwrap();
            assert_eq!((head[0], head[3]), (0, 0), "modifier1 and modifier2");
            let size = u16::from_le_bytes([head[1], head[2]]) as usize;
            let mut vars = vec![0u8; size];
            s.read_exact(&mut vars).unwrap();
            let mut map = std::collections::HashMap::new();
            let mut at = 0;
            let take = |at: &mut usize| {
                let n = u16::from_le_bytes([vars[*at], vars[*at + 1]]) as usize;
                let v = String::from_utf8_lossy(&vars[*at + 2..*at + 2 + n]).into_owned();
                *at += 2 + n;
                v
            };
            while at < size {
                let k = take(&mut at);
                let v = take(&mut at);
                map.insert(k, v);
            }
            let len: usize = map["CONTENT_LENGTH"].parse().unwrap_or(0);
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).unwrap();
            let reply: Vec<u8> = match map["PATH_INFO"].as_str() {
                "/cgi" => {
                    b"Status: 201 Created\r\nX-A: 1\r\nConnection: close\r\nKeep-Alive: timeout=99\r\n\r\nhello".to_vec()
                }
                "/garbage" => b"\x00\x01junk\r\n\r\n".to_vec(),
                "/big" => {
                    format!("HTTP/1.1 200 OK\r\nX-Pad: {}\r\n\r\n", "a".repeat(5000)).into_bytes()
                }
                _ => Vec::new(),
            };
            let _ = s.write_all(&reply);
            if map["PATH_INFO"] == "/chunked" {
                // An app that chunks its body itself and keeps its connection open.
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                );
                let _ = s.read(&mut [0u8; 1]);
            }
            if map["PATH_INFO"] == "/stall" {
                // A head and part of the body, then nothing until the gateway gives up.
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\npartial");
                let _ = s.read(&mut [0u8; 1]);
            }
            tx.send((map, body)).unwrap();
        }
    });
    (port, rx)
}

#[test]
fn protocol_layout_cgi_replies_and_bad_apps() {
    let dir = TempDir::new("uwsgi-fake");
    let (app, got) = fake_app();
    let port = free_port();
    let _gw = gateway(
        &dir,
        port,
        "",
        &format!("      - match: /\n        uwsgi_pass: 127.0.0.1:{app}\n      - match: = /stall\n        uwsgi_pass: 127.0.0.1:{app}\n        uwsgi_read_timeout: 1s\n"),
    );
    let wait = || got.recv_timeout(Duration::from_secs(10)).unwrap();

    // A CGI-style reply (no length: chunked to the client), with the body the client sent.
    let r = post(port, "/cgi", b"abc");
    assert_eq!(r.status, 201);
    assert_eq!(r.body, "hello");
    assert_eq!(r.header("x-a"), Some("1"));
    assert_eq!(r.header("keep-alive"), None, "hop-by-hop headers dropped");
    assert_ne!(r.header("connection"), Some("close"));
    let (vars, body) = wait();
    assert_eq!(
        (
            vars["REQUEST_METHOD"].as_str(),
            vars["CONTENT_LENGTH"].as_str()
        ),
        ("POST", "3")
    );
    assert_eq!(vars["CONTENT_TYPE"], "application/octet-stream");
    assert_eq!(body, b"abc");

    // A chunked request body: the app is told its whole length.
    let mut s = connect(port, None).unwrap();
    s.write_all(b"POST /cgi HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
        .unwrap();
    let r = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(r.status, 201);
    let (vars, body) = wait();
    assert_eq!(vars["CONTENT_LENGTH"], "7");
    assert_eq!(body, b"abcdefg");

    // The app's own chunks are decoded and framed anew; its open connection ends nothing.
    let r = get(port, "/chunked");
    assert_eq!((r.status, r.body.as_str()), (200, "abcde"));
    wait();

    // Garbage, a close before the head, a head over proxy_buffer_size: 502, one line each.
    let log = dir.path("front.error.log");
    for (path, line) in [
        ("/garbage", "upstream sent"),
        (
            "/close",
            "upstream prematurely closed connection while reading response header from upstream",
        ),
        (
            "/big",
            "upstream sent too big header while reading response header from upstream",
        ),
    ] {
        assert_eq!(get(port, path).status, 502, "{path}");
        wait();
        let text = wait_log(&log, &format!("\"GET {path} HTTP/1.1\""));
        let mine: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(&format!("GET {path} ")))
            .collect();
        assert_eq!(mine.len(), 1, "{text}");
        assert!(mine[0].contains(line), "{text}");
        assert!(
            mine[0].contains(&format!("upstream: \"uwsgi://127.0.0.1:{app}\"")),
            "{text}"
        );
    }

    // A failure after the head went out ends the client connection: the chunked body is
    // never terminated, and nothing else is spliced onto it.
    let mut s = connect(port, None).unwrap();
    s.write_all(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("partial"), "{text}");
    assert!(!text.ends_with("0\r\n\r\n"), "{text}");
    wait();
    let text = wait_log(&log, "\"GET /stall HTTP/1.1\"");
    assert!(
        text.contains("upstream timed out (110: Connection timed out) while reading upstream"),
        "{text}"
    );
}
