//! WebSockets through graygate: the `Upgrade` handshake reaches the server the pool's policy
//! picks (ip_hash keeps a client on one), frames are tunnelled both ways, a reload does not
//! touch an open one, the pool's `read_timeout` closes an idle one, a graceful quit lets it
//! run through `grace_period` and then closes it with a close frame, and each is logged once,
//! when it ends, with its duration.
//!
//! The echo server is written here by hand (handshake and frames, RFC 6455): small, and no
//! WebSocket crate is in the dependency tree.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

use crate::common::*;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC11B65";

/// `Sec-WebSocket-Accept` for `key`.
fn accept_key(key: &str) -> String {
    openssl::base64::encode_block(&openssl::sha::sha1(format!("{key}{GUID}").as_bytes()))
}

/// One frame: (opcode, payload). `None` once the peer closed the TCP connection.
fn read_frame(r: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).ok()?;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b).ok()?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).ok()?;
        len = u64::from_be_bytes(b);
    }
    let mask = if h[1] & 0x80 != 0 {
        let mut m = [0u8; 4];
        r.read_exact(&mut m).ok()?;
        Some(m)
    } else {
        None
    };
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).ok()?;
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Some((h[0] & 0x0f, payload))
}

/// A final frame; `masked` as a client must send.
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let bit = if masked { 0x80 } else { 0 };
    assert!(payload.len() < 126, "short frames only");
    f.push(bit | payload.len() as u8);
    if masked {
        let m = [0x12, 0x34, 0x56, 0x78];
        f.extend_from_slice(&m);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// An echo server named `name` on `port`: answers text frames with `NAME:TEXT`, a close with
/// a close. One thread per connection; runs until the test process ends.
fn echo_server(name: &'static str, port: u16) {
    let l = TcpListener::bind(("127.0.0.1", port)).expect("bind echo server");
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || echo(name, c));
        }
    });
}

fn echo(name: &str, c: TcpStream) {
    let mut r = BufReader::new(c);
    let mut key = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("sec-websocket-key") {
                key = Some(v.trim().to_string());
            }
        }
    }
    let Some(key) = key else {
        let _ = r
            .get_mut()
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(&key)
    );
    if r.get_mut().write_all(head.as_bytes()).is_err() {
        return;
    }
    while let Some((op, payload)) = read_frame(&mut r) {
        let out = match op {
            0x1 => frame(
                0x1,
                format!("{name}:")
                    .as_bytes()
                    .iter()
                    .chain(&payload)
                    .copied()
                    .collect::<Vec<u8>>()
                    .as_slice(),
                false,
            ),
            0x9 => frame(0xA, &payload, false),
            0x8 => {
                let _ = r.get_mut().write_all(&frame(0x8, &payload, false));
                return;
            }
            _ => continue,
        };
        if r.get_mut().write_all(&out).is_err() {
            return;
        }
    }
}

/// A client WebSocket through graygate on `port`, from `src`.
struct Ws(BufReader<TcpStream>);

impl Ws {
    fn open(port: u16, src: Ipv4Addr) -> Ws {
        let s = connect(port, Some(src)).expect("connect");
        let mut r = BufReader::new(s);
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        r.get_mut().write_all(req.as_bytes()).unwrap();
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 101"), "{status}");
        let mut accept = None;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h
                .strip_prefix("Sec-WebSocket-Accept: ")
                .or_else(|| h.strip_prefix("sec-websocket-accept: "))
            {
                accept = Some(v.to_string());
            }
        }
        assert_eq!(accept.as_deref(), Some(accept_key(key).as_str()));
        Ws(r)
    }

    /// Sends `text`, returns the echo (`BACKEND:text`), `None` if the tunnel is gone.
    fn echo(&mut self, text: &str) -> Option<String> {
        self.0
            .get_mut()
            .write_all(&frame(0x1, text.as_bytes(), true))
            .ok()?;
        let (op, payload) = read_frame(&mut self.0)?;
        assert_eq!(op, 0x1);
        Some(String::from_utf8(payload).unwrap())
    }

    /// A close frame, answered with one.
    fn close(mut self) {
        self.0
            .get_mut()
            .write_all(&frame(0x8, &1000u16.to_be_bytes(), true))
            .unwrap();
        let (op, _) = read_frame(&mut self.0).expect("a close frame back");
        assert_eq!(op, 0x8);
    }

    /// Waits until the connection ends; what came before its end.
    fn wait_end(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut got = Vec::new();
        while let Some(f) = read_frame(&mut self.0) {
            got.push(f);
        }
        got
    }
}

struct Env {
    dir: TempDir,
    port: u16,
    conf: std::path::PathBuf,
}

/// graygate on a free port in front of two echo servers `e0`, `e1` by ip_hash, logging
/// `$request $status $request_time` per request.
fn env(tag: &str, extra: &str) -> Env {
    let dir = TempDir::new(tag);
    let b: Vec<u16> = (0..2).map(|_| free_port()).collect();
    echo_server("e0", b[0]);
    echo_server("e1", b[1]);
    let port = free_port();
    let yaml = gateway_yaml(&dir, port, "ip_hash", &[(b[0], 1), (b[1], 1)], extra)
        .replace(
            &format!("access_log: {}", dir.s("access.log")),
            &format!("access_log: {{ path: {}, format: ws }}", dir.s("access.log")),
        )
        + "log_formats:\n  ws: \"$request|$status|$request_time\"\ngrace_period: 2s\nshutdown_timeout: 2s\n";
    let conf = dir.write("gw.yaml", &yaml);
    Env { dir, port, conf }
}

fn log_lines(e: &Env) -> Vec<String> {
    read(&e.dir.path("access.log"))
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn websocket_echo_sticks_to_one_server_survives_a_reload_and_is_logged_once() {
    let e = env("ws-echo", "");
    let _gw = start(&e.conf, &[e.port]);
    let src = Ipv4Addr::new(127, 79, 0, 1);
    let mut ws = Ws::open(e.port, src);
    let first = ws.echo("hello").expect("echo");
    let (server, text) = first.split_once(':').unwrap();
    assert_eq!(text, "hello");
    // ip_hash: every WebSocket of this client lands on the same server.
    for _ in 0..4 {
        let mut other = Ws::open(e.port, src);
        assert_eq!(other.echo("again").unwrap(), format!("{server}:again"));
        other.close();
    }
    // A reload in place leaves the open tunnel alone.
    let (ok, out) = ctl(&["-s", "reload", "-c", e.conf.to_str().unwrap()]);
    assert!(ok && out.contains("reloaded"), "{out}");
    assert_eq!(
        ws.echo("after reload"),
        Some(format!("{server}:after reload"))
    );
    // The four closed ones are logged; the open one is not, yet.
    wait_for("four access log lines", Duration::from_secs(10), || {
        log_lines(&e).len() >= 4
    });
    assert_eq!(log_lines(&e).len(), 4, "{:?}", log_lines(&e));
    ws.close();

    // Five WebSockets, five lines, each written when its tunnel ended, with a duration.
    wait_for("access log lines", Duration::from_secs(10), || {
        log_lines(&e).len() >= 5
    });
    let lines = log_lines(&e);
    assert_eq!(lines.len(), 5, "{lines:?}");
    for l in &lines {
        let t = l.strip_prefix("GET /ws HTTP/1.1|101|");
        assert!(t.is_some_and(|t| t.parse::<f64>().is_ok()), "{l}");
    }
}

#[test]
fn an_idle_websocket_ends_after_read_timeout() {
    let e = env("ws-idle", "    read_timeout: 1s\n");
    let _gw = start(&e.conf, &[e.port]);
    let mut ws = Ws::open(e.port, Ipv4Addr::new(127, 79, 0, 2));
    assert!(ws.echo("x").is_some());
    // Nothing from either side: graygate ends the tunnel (nginx's proxy_read_timeout), and
    // logs it (the client still holds its end: only graygate can have ended it).
    ws.wait_end();
    wait_for("access log line", Duration::from_secs(10), || {
        log_lines(&e).iter().any(|l| l.contains("|101|"))
    });
}

#[test]
fn a_graceful_quit_lets_websockets_run_through_grace_period() {
    let e = env("ws-quit", "");
    let mut gw = start(&e.conf, &[e.port]);
    wait_for("pid file", Duration::from_secs(10), || {
        !read(&e.dir.path("gw.pid")).trim().is_empty()
    });
    let mut ws = Ws::open(e.port, Ipv4Addr::new(127, 79, 0, 3));
    assert!(ws.echo("before").is_some());
    let (ok, out) = ctl(&["-s", "quit", "-c", e.conf.to_str().unwrap()]);
    assert!(ok, "{out}");
    // Still tunnelled while the worker drains.
    let reply = ws.echo("during");
    assert!(reply.is_some_and(|r| r.ends_with(":during")));
    // At the end of grace_period: a close frame (1001, going away), the connection closed,
    // the WebSocket logged, and graygate gone.
    let got = ws.wait_end();
    assert_eq!(got.last(), Some(&(0x8, vec![0x03, 0xE9])), "{got:?}");
    wait_for("access log line", Duration::from_secs(10), || {
        log_lines(&e).iter().any(|l| l.contains("|101|"))
    });
    wait_for("graygate to exit", Duration::from_secs(30), || gw.exited());
}
