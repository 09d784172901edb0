//! Static files (`root`, `alias`) against real nginx: status and the headers that matter
//! (type, length, ETag, Last-Modified, ranges) for the seed's `/media/` and its edge cases.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::symlink;

use crate::common::*;

/// (request line's method, path, extra header, what to compare)
const CASES: &[(&str, &str, &str)] = &[
    ("GET", "/media/a.txt", ""),
    ("GET", "/media/a.css", ""),
    ("GET", "/media/big.bin", ""),
    ("GET", "/media/a.txt", "Range: bytes=0-9"),
    ("GET", "/media/a.txt", "Range: bytes=-5"),
    ("GET", "/media/a.txt", "Range: bytes=5000-"),
    ("GET", "/media/dir/", ""),
    ("GET", "/media/dir", ""),
    ("GET", "/media/empty/", ""),
    ("GET", "/media/missing", ""),
    ("GET", "/media/link-in", ""),
    ("GET", "/media/../media/a.txt", ""),
    ("GET", "/media/%61.txt", ""),
    ("GET", "/../etc/passwd", ""),
    ("GET", "/media/%2e%2e/%2e%2e/etc/passwd", ""),
    ("POST", "/media/a.txt", "Content-Length: 0"),
    ("GET", "/alias/a.txt", ""),
    ("GET", "/favicon.ico", ""),
];

struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn h(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn ask(port: u16, method: &str, path: &str, extra: &str) -> Got {
    let mut s = connect(port, None).unwrap();
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("{extra}\r\n")
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut got = read_head(&mut r);
    if method != "HEAD" {
        std::io::Read::read_to_end(&mut r, &mut got.body).unwrap();
    }
    got
}

#[test]
fn static_files_answer_as_nginx() {
    let dir = TempDir::new("files");
    let root = dir.path("www");
    std::fs::create_dir_all(root.join("media/dir")).unwrap();
    std::fs::create_dir_all(root.join("media/empty")).unwrap();
    std::fs::write(root.join("media/a.txt"), "0123456789".repeat(100)).unwrap();
    std::fs::write(root.join("media/a.css"), "body{}").unwrap();
    std::fs::write(root.join("media/dir/index.html"), "<p>index</p>").unwrap();
    let big: String = (0..3_000_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    std::fs::write(root.join("media/big.bin"), &big).unwrap();
    symlink(root.join("media/a.txt"), root.join("media/link-in")).unwrap();
    std::fs::write(dir.path("outside.txt"), "secret").unwrap();
    symlink(dir.path("outside.txt"), root.join("media/link-out")).unwrap();
    let www = root.display().to_string();

    let front = free_port();
    let conf = format!(
        "pid_file: {}\nerror_log: {}\nservers:\n  front:\n    listen: [\"127.0.0.1:{front}\"]\n    error_log: {}\n    locations:\n\
         \x20     - {{ match: ~/media/, root: {www} }}\n\
         \x20     - {{ match: /alias/, alias: {www}/media/ }}\n\
         \x20     - {{ match: = /favicon.ico, root: {www}, log_not_found: false }}\n",
        dir.s("gw.pid"),
        dir.s("error.log"),
        dir.s("front.error.log"),
    );
    let _gw = start(&dir.write("gw.yaml", &conf), &[front]);
    let server = format!(
        "include /etc/nginx/mime.types; default_type application/octet-stream;\n\
         location ~/media/ {{ root {www}; }}\n\
         location /alias/ {{ alias {www}/media/; }}\n\
         location = /favicon.ico {{ root {www}; log_not_found off; }}\n"
    );
    let nginx = nginx_with(&dir, "", &server);
    if nginx.is_none() {
        eprintln!("nginx not installed: static files not compared");
    }
    for (method, path, extra) in CASES {
        let g = ask(front, method, path, extra);
        let what = format!("{method} {path} {extra}");
        match &nginx {
            Some((_, nport)) => {
                let n = ask(*nport, method, path, extra);
                assert_eq!(g.status, n.status, "{what}");
                for h in [
                    "Content-Type",
                    "Content-Length",
                    "ETag",
                    "Last-Modified",
                    "Content-Range",
                ] {
                    if g.status < 300 || h == "Content-Range" {
                        assert_eq!(g.h(h), n.h(h), "{what}: {h}");
                    }
                }
                if g.status == 301 {
                    let nl = n
                        .h("Location")
                        .map(|l| l.replace(&nport.to_string(), "PORT"));
                    let gl = g
                        .h("Location")
                        .map(|l| l.replace(&front.to_string(), "PORT"));
                    assert_eq!(gl, nl, "{what}: Location");
                }
                if g.status < 300 {
                    assert_eq!(g.body, n.body, "{what}: body");
                }
            }
            None => assert!(g.status > 0),
        }
    }
    // Conditional requests with the validators graygate gave.
    let first = ask(front, "GET", "/media/a.txt", "");
    let etag = first.h("ETag").unwrap().to_string();
    let lm = first.h("Last-Modified").unwrap().to_string();
    assert_eq!(
        ask(
            front,
            "GET",
            "/media/a.txt",
            &format!("If-None-Match: {etag}")
        )
        .status,
        304
    );
    assert_eq!(
        ask(
            front,
            "GET",
            "/media/a.txt",
            &format!("If-Modified-Since: {lm}")
        )
        .status,
        304
    );
    let head = ask(front, "HEAD", "/media/big.bin", "");
    assert_eq!(
        (head.status, head.h("Content-Length")),
        (200, Some("3000000"))
    );
    // Stricter than nginx's default: a link that leaves the root is refused.
    assert_eq!(ask(front, "GET", "/media/link-out", "").status, 403);
    let path = dir.path("front.error.log");
    wait_for(
        "error log lines",
        std::time::Duration::from_secs(10),
        || read(&path).contains("leads out of the root"),
    );
    let log = read(&path);
    assert!(
        log.contains("/media/missing\" failed (2: No such file or directory)"),
        "{log}"
    );
    assert!(!log.contains("favicon"), "log_not_found: false: {log}");
}

/// Faults found by review: an index meant for another location, a FIFO under the root, an
/// alias naming a file, an alias without its slash, and a redirect built from the request.
#[test]
fn file_edge_cases_do_not_leak_or_hang() {
    let dir = TempDir::new("files-edge");
    let root = dir.path("www");
    std::fs::create_dir_all(root.join("app")).unwrap();
    std::fs::write(root.join("app/index.php"), "<?php $password = 'x';").unwrap();
    std::fs::write(root.join("f.ico"), "icon").unwrap();
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::write(root.join("secret.txt"), "secret").unwrap();
    let fifo = root.join("app/pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let www = root.display().to_string();
    let front = free_port();
    let conf = format!(
        "pid_file: {}\nerror_log: {}\nservers:\n  front:\n    listen: [\"127.0.0.1:{front}\"]\n    error_log: {}\n    locations:\n\
         \x20     - {{ match: /app/, root: {www}, index: [index.php] }}\n\
         \x20     - {{ match: \"~ \\\\.php$\", return: \"403\" }}\n\
         \x20     - {{ match: = /favicon.ico, alias: {www}/f.ico }}\n\
         \x20     - {{ match: /img, alias: {www}/images/, disable_symlinks: off }}\n\
         \x20     - {{ match: /go/, return: \"302 $request_uri\" }}\n",
        dir.s("gw.pid"),
        dir.s("error.log"),
        dir.s("front.error.log"),
    );
    let _gw = start(&dir.write("gw.yaml", &conf), &[front]);
    // The index would be handled by the `.php` location: never sent as a file from here.
    let r = ask(front, "GET", "/app/", "");
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(!String::from_utf8_lossy(&r.body).contains("password"));
    // A FIFO is not a regular file: 404 at once, no thread stuck in open().
    assert_eq!(ask(front, "GET", "/app/pipe", "").status, 404);
    assert_eq!(ask(front, "GET", "/app/pipe", "").status, 404);
    let r = ask(front, "GET", "/favicon.ico", "");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"icon"[..]));
    // `/img../secret.txt` would climb out of the alias.
    assert_eq!(ask(front, "GET", "/img../secret.txt", "").status, 404);
    // A rendered `//host` is made absolute from the request, never protocol-relative.
    let r = ask(front, "GET", "/go///evil.example/x", "");
    assert_eq!(r.status, 302);
    let loc = r.h("Location").unwrap();
    assert!(
        loc.starts_with(&format!("http://localhost:{front}/")),
        "{loc}"
    );
}

/// One response on a keep-alive connection: the status line, the headers and, unless the
/// request was a HEAD or the answer a 304, exactly `Content-Length` bytes, so the next
/// response on the connection starts where this one ends.
fn get_file<R: BufRead, W: Write>(
    r: &mut R,
    w: &mut W,
    method: &str,
    path: &str,
    extra: &str,
) -> Got {
    write!(
        w,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n"
    )
    .unwrap();
    w.flush().unwrap();
    let mut got = read_head(r);
    if method != "HEAD" && got.status != 304 {
        let len: usize = got.h("Content-Length").unwrap().parse().unwrap();
        got.body = vec![0; len];
        std::io::Read::read_exact(r, &mut got.body).unwrap();
    }
    got
}

/// A response's status line and headers.
fn read_head<R: BufRead>(r: &mut R) -> Got {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Got {
        status,
        headers,
        body: Vec::new(),
    }
}

fn sha256_hex(b: &[u8]) -> String {
    openssl::sha::sha256(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// `n` bytes of xorshift: no run of zeros (the marker `sendfile` replaces) could pass for a
/// body by accident.
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A gateway serving `www` at `/media/`, with its access and error logs in `dir`.
fn media_gateway(dir: &TempDir, www: &std::path::Path, listen: &str) -> String {
    format!(
        "pid_file: {}\nerror_log: {}\nservers:\n  front:\n    listen: {listen}\n    access_log: {}\n    error_log: {}\n    locations:\n\
         \x20     - {{ match: /media/, root: {} }}\n",
        dir.s("gw.pid"),
        dir.s("error.log"),
        dir.s("access.log"),
        dir.s("front.error.log"),
        www.display(),
    )
}

/// `(status, body bytes)` of each access log line (`... "GET /x HTTP/1.1" STATUS BYTES ...`).
fn logged(path: &std::path::Path) -> Vec<(u16, u64)> {
    read(path)
        .lines()
        .map(|l| {
            let after = l.split('"').nth(2).unwrap();
            let mut f = after.split_whitespace();
            (
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// How many of the worker's descriptors are `file`.
fn open_files(worker: i32, file: &std::path::Path) -> usize {
    std::fs::read_dir(format!("/proc/{worker}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == file))
        .count()
}

/// The connections accepted on `port` that a process still holds open (a socket with an
/// inode; the `sendfile` wrapper's duplicate shares its connection's).
fn open_conns(port: u16) -> usize {
    let local = format!(":{port:04X}");
    read(std::path::Path::new("/proc/net/tcp"))
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local address, state (0A: listening), inode
            f.len() > 9 && f[1].ends_with(&local) && f[3] != "0A" && f[9] != "0"
        })
        .count()
}

/// Plain HTTP/1 bodies go out with sendfile (issue 17's 1 MB benchmark): a file larger than
/// the socket buffers, so the gateway waits for room mid-file, twice on one keep-alive
/// connection after a HEAD and a 304 (no body, nothing armed), then a range on it; a client
/// that goes away mid-file is logged as nginx logs it (status 200, the bytes the socket took,
/// no error line) and the next request is served whole.
#[test]
fn large_files_keep_alive_and_client_abort() {
    let dir = TempDir::new("files-large");
    let root = dir.path("www");
    std::fs::create_dir_all(root.join("media")).unwrap();
    let data = noise(8 << 20);
    std::fs::write(root.join("media/big.bin"), &data).unwrap();
    let want = sha256_hex(&data);
    let front = free_port();
    let conf = media_gateway(&dir, &root, &format!("[\"127.0.0.1:{front}\"]"));
    let gw = start(&dir.write("gw.yaml", &conf), &[front]);
    let worker = worker_of(gw.pid());

    let s = connect(front, None).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let head = get_file(&mut r, &mut w, "HEAD", "/media/big.bin", "");
    assert_eq!(head.status, 200);
    assert_eq!(head.h("Content-Length"), Some("8388608"));
    let etag = head.h("ETag").unwrap().to_string();
    let cached = get_file(
        &mut r,
        &mut w,
        "GET",
        "/media/big.bin",
        &format!("If-None-Match: {etag}\r\n"),
    );
    assert_eq!(cached.status, 304);
    for i in 0..2 {
        let g = get_file(&mut r, &mut w, "GET", "/media/big.bin", "");
        assert_eq!(g.status, 200, "request {i}");
        assert_eq!(sha256_hex(&g.body), want, "request {i}: body");
    }
    let g = get_file(
        &mut r,
        &mut w,
        "GET",
        "/media/big.bin",
        "Range: bytes=1000000-5999999\r\n",
    );
    assert_eq!(g.status, 206);
    assert!(g.body == data[1_000_000..6_000_000], "range body");
    drop((r, w));

    // Gone after the head and 64 KiB of the body: the rest cannot fit in the socket buffers,
    // so the gateway is mid-file when the connection goes.
    let s = connect(front, None).unwrap();
    let mut w = s.try_clone().unwrap();
    write!(w, "GET /media/big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_head(&mut r).status, 200);
    let mut some = vec![0; 64 << 10];
    std::io::Read::read_exact(&mut r, &mut some).unwrap();
    assert!(some == data[..64 << 10], "the start of the body");
    drop((r, w));

    let s = connect(front, None).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let g = get_file(&mut r, &mut w, "GET", "/media/big.bin", "");
    assert_eq!((g.status, sha256_hex(&g.body)), (200, want));
    drop((r, w));
    // Every connection closed: no file and no socket (nor the duplicate `sendfile` waits on)
    // outlives its connection.
    let big = root.join("media/big.bin");
    wait_for(
        "the connections' files closed",
        std::time::Duration::from_secs(10),
        || open_files(worker, &big) == 0 && open_conns(front) == 0,
    );

    let log = dir.path("access.log");
    wait_for(
        "seven access log lines",
        std::time::Duration::from_secs(10),
        || read(&log).lines().count() == 7,
    );
    let fields = logged(&log);
    // In the order the requests ended, which need not be the order they were sent.
    let full = data.len() as u64;
    let count = |want: (u16, u64)| fields.iter().filter(|&&f| f == want).count();
    assert_eq!(count((200, 0)), 1, "the HEAD: {fields:?}");
    assert_eq!(count((304, 0)), 1, "{fields:?}");
    assert_eq!(count((200, full)), 3, "{fields:?}");
    assert_eq!(count((206, 5_000_000)), 1, "{fields:?}");
    // nginx logs an aborted body with the status sent and the bytes the socket took: at
    // least what the client read, though the write that failed was not whole.
    assert!(
        fields
            .iter()
            .any(|&(st, n)| st == 200 && (64 << 10..full).contains(&n)),
        "{fields:?}"
    );
    let errors = read(&dir.path("front.error.log"));
    assert!(
        errors.is_empty(),
        "a client going away is no error: {errors}"
    );
}

/// A file truncated while `sendfile` sends it (a deploy rewriting it in place): the body
/// stops where the file ended and the connection closes, so the client sees fewer bytes than
/// `Content-Length` instead of a hang or the next response read as body; nginx's alert goes
/// to the error log and the access log has the bytes the client got. nginx does the same
/// (`sendfile() reported that ... was truncated`, connection closed).
#[test]
fn file_truncated_mid_send_closes_the_connection() {
    let dir = TempDir::new("files-shrink");
    let root = dir.path("www");
    std::fs::create_dir_all(root.join("media")).unwrap();
    let data = noise(16 << 20);
    let file = root.join("media/shrink.bin");
    std::fs::write(&file, &data).unwrap();
    std::fs::write(root.join("media/small.txt"), "still here").unwrap();
    let front = free_port();
    let conf = media_gateway(&dir, &root, &format!("[\"127.0.0.1:{front}\"]"));
    let gw = start(&dir.write("gw.yaml", &conf), &[front]);
    let worker = worker_of(gw.pid());

    let s = connect(front, None).unwrap();
    // A fixed small window: with the gateway's send buffer (4 MiB at most) far less than the
    // file is in flight, so the gateway is mid-file until the client reads on.
    socket2::SockRef::from(&s)
        .set_recv_buffer_size(64 << 10)
        .unwrap();
    let mut w = s.try_clone().unwrap();
    write!(
        w,
        "GET /media/shrink.bin HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let head = read_head(&mut r);
    assert_eq!(head.status, 200);
    assert_eq!(head.h("Content-Length"), Some("16777216"));
    let mut body = vec![0; 64 << 10];
    std::io::Read::read_exact(&mut r, &mut body).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(0)
        .unwrap();
    // To the end: the read times out (an error) if the gateway hangs instead of closing.
    std::io::Read::read_to_end(&mut r, &mut body).expect("the connection closes");
    let got = body.len();
    assert!(got < data.len(), "{got} bytes: the body stops short");
    assert!(body == data[..got], "what came is the file's start");
    drop((r, w));

    // The gateway is well and serves the next request.
    let s = connect(front, None).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let g = get_file(&mut r, &mut w, "GET", "/media/small.txt", "");
    assert_eq!((g.status, g.body.as_slice()), (200, &b"still here"[..]));
    drop((r, w));
    wait_for(
        "the connections' files closed",
        std::time::Duration::from_secs(10),
        || open_files(worker, &file) == 0 && open_conns(front) == 0,
    );

    let errors = dir.path("front.error.log");
    wait_for("the alert", std::time::Duration::from_secs(10), || {
        read(&errors).contains("was truncated at")
    });
    let alert = format!(
        "sendfile() reported that \"{}\" was truncated at {got}",
        file.display()
    );
    assert!(read(&errors).contains(&alert), "{}", read(&errors));
    let log = dir.path("access.log");
    wait_for(
        "two access log lines",
        std::time::Duration::from_secs(10),
        || read(&log).lines().count() == 2,
    );
    assert!(logged(&log).contains(&(200, got as u64)), "{}", read(&log));
}

/// TLS (HTTP/1.1 and HTTP/2) keeps the copying path: `sendfile` would put plain bytes in
/// the encrypted stream. Whole files and a range arrive intact, as on the plain listener.
#[test]
fn tls_bodies_are_copied_not_sent_from_the_file() {
    let dir = TempDir::new("files-tls");
    let root = dir.path("www");
    std::fs::create_dir_all(root.join("media")).unwrap();
    let data = noise(3 << 20);
    std::fs::write(root.join("media/big.bin"), &data).unwrap();
    let ca = crate::tls::make_ca(&dir);
    let (crt, key) = crate::tls::make_cert(&dir, "site", &["site.test"], 10);
    let (plain, tls) = (free_port(), free_port());
    let listen = format!(
        "\n      - \"127.0.0.1:{plain}\"\n      - {{ addr: \"127.0.0.1:{tls}\", tls: {{ cert: {crt}, key: {key} }} }}"
    );
    let conf = media_gateway(&dir, &root, &listen);
    let _gw = start(&dir.write("gw.yaml", &conf), &[plain, tls]);
    let resolve = format!("site.test:{tls}:127.0.0.1");
    let cases = [
        (
            "--http1.1",
            format!("https://site.test:{tls}/media/big.bin"),
        ),
        ("--http2", format!("https://site.test:{tls}/media/big.bin")),
        (
            "--http1.1",
            format!("http://127.0.0.1:{plain}/media/big.bin"),
        ),
    ];
    for (i, (version, url)) in cases.iter().enumerate() {
        for range in [None, Some((100_000, 2_099_999))] {
            let out = dir.path(&format!("got-{i}"));
            let mut cmd = std::process::Command::new("curl");
            cmd.args(["-sS", "--max-time", "20", "--fail", *version])
                .args(["--cacert", ca.to_str().unwrap(), "--resolve", &resolve])
                .arg("-o")
                .arg(&out);
            if let Some((a, b)) = range {
                cmd.args(["-r", &format!("{a}-{b}")]);
            }
            let status = cmd.arg(url).status().expect("curl");
            assert!(status.success(), "{version} {url} {range:?}");
            let got = std::fs::read(&out).unwrap();
            let want = match range {
                Some((a, b)) => &data[a..=b],
                None => &data[..],
            };
            assert!(
                got == want,
                "{version} {url} {range:?}: {} bytes",
                got.len()
            );
        }
    }
}
