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
    let mut body = Vec::new();
    if method != "HEAD" {
        std::io::Read::read_to_end(&mut r, &mut body).unwrap();
    }
    Got {
        status,
        headers,
        body,
    }
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

/// A file body of several MB: a status line, the headers and `Content-Length` bytes, read
/// exactly, so the next response on the connection starts where this one ends.
fn get_file<R: BufRead, W: Write>(r: &mut R, w: &mut W, path: &str, extra: &str) -> Got {
    write!(w, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n").unwrap();
    w.flush().unwrap();
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
    let mut got = Got {
        status,
        headers,
        body: Vec::new(),
    };
    let len: usize = got.h("Content-Length").unwrap().parse().unwrap();
    got.body = vec![0; len];
    std::io::Read::read_exact(r, &mut got.body).unwrap();
    got
}

fn sha256_hex(b: &[u8]) -> String {
    openssl::sha::sha256(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Plain HTTP/1 bodies go out with sendfile (issue 17's 1 MB benchmark): a file larger than
/// the socket buffers, so the gateway waits for room mid-file, twice on one keep-alive
/// connection, then a range on it; a client that goes away mid-file is logged as nginx logs
/// it (status 200, the bytes sent so far, no error line) and the next request is served whole.
#[test]
fn large_files_keep_alive_and_client_abort() {
    let dir = TempDir::new("files-large");
    let root = dir.path("www");
    std::fs::create_dir_all(root.join("media")).unwrap();
    // 8 MB of xorshift bytes: no run of zeros could pass for the body by accident.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..8 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(root.join("media/big.bin"), &data).unwrap();
    let want = sha256_hex(&data);
    let www = root.display().to_string();
    let front = free_port();
    let conf = format!(
        "pid_file: {}\nerror_log: {}\nservers:\n  front:\n    listen: [\"127.0.0.1:{front}\"]\n    access_log: {}\n    error_log: {}\n    locations:\n\
         \x20     - {{ match: /media/, root: {www} }}\n",
        dir.s("gw.pid"),
        dir.s("error.log"),
        dir.s("access.log"),
        dir.s("front.error.log"),
    );
    let _gw = start(&dir.write("gw.yaml", &conf), &[front]);

    let s = connect(front, None).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for i in 0..2 {
        let g = get_file(&mut r, &mut w, "/media/big.bin", "");
        assert_eq!(g.status, 200, "request {i}");
        assert_eq!(sha256_hex(&g.body), want, "request {i}: body");
    }
    let g = get_file(&mut r, &mut w, "/media/big.bin", "Range: bytes=1000000-5999999\r\n");
    assert_eq!(g.status, 206);
    assert!(g.body == data[1_000_000..6_000_000], "range body");
    drop((r, w));

    // Gone after the head and 64 KiB of the body: the rest cannot fit in the socket buffers,
    // so the gateway is mid-file when the connection goes.
    let s = connect(front, None).unwrap();
    let mut w = s.try_clone().unwrap();
    write!(w, "GET /media/big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains(" 200 "), "{line}");
    let mut some = vec![0; 64 << 10];
    std::io::Read::read_exact(&mut r, &mut some).unwrap();
    drop((r, w));

    let s = connect(front, None).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let g = get_file(&mut r, &mut w, "/media/big.bin", "");
    assert_eq!((g.status, sha256_hex(&g.body)), (200, want));

    let log = dir.path("access.log");
    wait_for("five access log lines", std::time::Duration::from_secs(10), || {
        read(&log).lines().count() == 5
    });
    // `... "GET /media/big.bin HTTP/1.1" STATUS BYTES "-" "-"`
    let fields: Vec<(u16, u64)> = read(&log)
        .lines()
        .map(|l| {
            let after = l.split('"').nth(2).unwrap();
            let mut f = after.split_whitespace();
            (f.next().unwrap().parse().unwrap(), f.next().unwrap().parse().unwrap())
        })
        .collect();
    // In the order the requests ended, which need not be the order they were sent.
    let full = data.len() as u64;
    let count = |want: (u16, u64)| fields.iter().filter(|&&f| f == want).count();
    assert_eq!(count((200, full)), 3, "{fields:?}");
    assert_eq!(count((206, 5_000_000)), 1, "{fields:?}");
    // nginx logs an aborted body with the status sent and the bytes sent so far.
    assert!(
        fields.iter().any(|&(st, n)| st == 200 && n < full),
        "{fields:?}"
    );
    let errors = read(&dir.path("front.error.log"));
    assert!(errors.is_empty(), "a client going away is no error: {errors}");
}
