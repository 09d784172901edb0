//! TLS listeners: HTTP/1.1 and HTTP/2 over TLS with curl, the certificate picked by SNI, the
//! `-t` checks of certificates, a plain listener redirecting to the TLS one, and certificate
//! rotation by reload and a binary upgrade under a TLS keep-alive load without a failed
//! request. Certificates come from a test CA made with the openssl CLI (ECDSA P-256).

use std::io::{BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod, SslStream};

use crate::common::*;

/// Runs the openssl CLI in `dir`; panics with its output if it fails.
fn openssl(dir: &TempDir, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(&dir.0)
        .output()
        .expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An ECDSA P-256 private key written to `out` in `dir`.
fn p256_key(dir: &TempDir, out: &str) {
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            out,
        ],
    );
}

/// A test CA in `dir`: `ca.crt`, `ca.key`.
pub fn make_ca(dir: &TempDir) -> PathBuf {
    p256_key(dir, "ca.key");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=graygate test CA",
            "-days",
            "30",
            "-out",
            "ca.crt",
        ],
    );
    dir.path("ca.crt")
}

/// A P-256 certificate `NAME.crt`/`NAME.key` signed by the CA, for `names` (the first is
/// also its CN), valid for `days` from now (negative: already expired).
pub fn make_cert(dir: &TempDir, name: &str, names: &[&str], days: i32) -> (String, String) {
    let (crt, key, csr, ext) = (
        format!("{name}.crt"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
    );
    p256_key(dir, &key);
    let subj = format!("/CN={}", names[0]);
    openssl(
        dir,
        &["req", "-new", "-key", &key, "-subj", &subj, "-out", &csr],
    );
    let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    dir.write(&ext, &format!("subjectAltName={}\n", sans.join(",")));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            &days.to_string(),
            "-extfile",
            &ext,
            "-out",
            &crt,
        ],
    );
    (dir.s(&crt), dir.s(&key))
}

/// A gateway on a plain port and a TLS port (`tls` is the listen entry's `tls:` flow mapping
/// and anything after it), in front of demo backends.
struct Env {
    dir: TempDir,
    plain: u16,
    tls: u16,
    ca: PathBuf,
    conf: PathBuf,
    _backends: Vec<Proc>,
}

fn env(tag: &str, tls: impl FnOnce(&TempDir) -> String) -> Env {
    let dir = TempDir::new(tag);
    let ca = make_ca(&dir);
    let mut backends = Vec::new();
    let mut servers = Vec::new();
    for i in 0..2 {
        let p = free_port();
        backends.push(backend(&dir, &format!("b{i}"), p));
        servers.push((p, 1));
    }
    let (plain, tls_port) = (free_port(), free_port());
    let entry = tls(&dir);
    let yaml = gateway_yaml(&dir, plain, "ip_hash", &servers, "")
        .replace(
            &format!("listen: [\"127.0.0.1:{plain}\"]"),
            &format!(
                "listen:\n      - \"127.0.0.1:{plain}\"\n      - {{ addr: \"127.0.0.1:{tls_port}\", {entry} }}"
            ),
        )
        .replace(
            "X-Real-IP: $remote_addr",
            "X-Real-IP: $remote_addr\n          X-Scheme: $scheme",
        )
        + "grace_period: 5s\nshutdown_timeout: 5s\n";
    let conf = dir.write("gw.yaml", &yaml);
    Env {
        dir,
        plain,
        tls: tls_port,
        ca,
        conf,
        _backends: backends,
    }
}

/// `curl ARGS`: (exit code, stdout).
fn curl(args: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// curl to `https://NAME:PORT/PATH` resolved to 127.0.0.1, verified against the test CA.
fn curl_tls(e: &Env, name: &str, extra: &[&str], path: &str) -> (i32, String) {
    let resolve = format!("{name}:{}:127.0.0.1", e.tls);
    let url = format!("https://{name}:{}{path}", e.tls);
    let ca = e.ca.to_str().unwrap();
    let mut args = vec!["--cacert", ca, "--resolve", &resolve];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

/// The subject of the certificate the server presents for `sni`.
fn served_subject(port: u16, sni: &str) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            sni,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_string()
}

fn two_certs(dir: &TempDir) -> String {
    let (a_crt, a_key) = make_cert(dir, "a", &["site-a.test", "*.a.test"], 10);
    let (b_crt, b_key) = make_cert(dir, "b", &["site-b.test"], 10);
    format!(
        "tls: {{ cert: {a_crt}, key: {a_key}, certificates: [ {{ cert: {b_crt}, key: {b_key} }} ] }}"
    )
}

#[test]
fn http1_and_http2_over_tls_with_the_certificate_sni_asks_for() {
    let e = env("tls-basic", two_certs);
    let _gw = start(&e.conf, &[e.plain, e.tls]);
    let fmt = ["-o", "/dev/null", "-w", "%{http_version} %{http_code}"];

    let mut h1 = vec!["--http1.1"];
    h1.extend_from_slice(&fmt);
    assert_eq!(
        curl_tls(&e, "site-a.test", &h1, "/one"),
        (0, "1.1 200".into())
    );
    let mut h2 = vec!["--http2"];
    h2.extend_from_slice(&fmt);
    assert_eq!(
        curl_tls(&e, "site-a.test", &h2, "/two"),
        (0, "2 200".into())
    );
    // curl verifies the name: each succeeds only with the right certificate.
    assert_eq!(curl_tls(&e, "www.a.test", &h2, "/"), (0, "2 200".into()));
    assert_eq!(curl_tls(&e, "site-b.test", &h1, "/"), (0, "1.1 200".into()));
    // An unknown name gets the default certificate, which curl refuses for that name.
    let (code, _) = curl_tls(&e, "other.test", &h1, "/");
    assert_eq!(
        code, 60,
        "the default certificate does not cover other.test"
    );
    assert!(served_subject(e.tls, "site-b.test").contains("site-b.test"));
    assert!(served_subject(e.tls, "x.a.test").contains("site-a.test"));
    assert!(served_subject(e.tls, "nothing.test").contains("site-a.test"));

    // The backend hears $scheme = https over TLS, http on the plain listener.
    let (_, body) = curl_tls(&e, "site-a.test", &["--http2"], "/scheme");
    assert!(body.contains("x-scheme: https"), "{body}");
    assert_eq!(get(e.plain, "/").seen("x-scheme"), Some("http"));

    // The access log shows each protocol as nginx does.
    wait_for("access log", Duration::from_secs(10), || {
        read(&e.dir.path("access.log")).contains("\"GET /scheme HTTP/2.0\" 200")
    });
    let log = read(&e.dir.path("access.log"));
    assert!(log.contains("\"GET /one HTTP/1.1\" 200"), "{log}");
    assert!(log.contains("\"GET /two HTTP/2.0\" 200"), "{log}");
}

#[test]
fn http2_false_keeps_clients_on_http1() {
    let e = env("tls-h1", |dir| {
        let (crt, key) = make_cert(dir, "a", &["site-a.test"], 10);
        format!("tls: {{ cert: {crt}, key: {key}, protocols: [TLSv1.3] }}, http2: false")
    });
    let _gw = start(&e.conf, &[e.plain, e.tls]);
    let args = [
        "--http2",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
    ];
    assert_eq!(
        curl_tls(&e, "site-a.test", &args, "/"),
        (0, "1.1 200".into())
    );
    // TLS 1.2 is refused when only 1.3 is listed.
    let (code, _) = curl_tls(&e, "site-a.test", &["--tls-max", "1.2"], "/");
    assert_ne!(code, 0, "a TLS 1.2 handshake must fail");
}

/// `FILE:LINE:COL` of the first line of `conf` containing `needle`, at its value.
fn position(conf: &Path, needle: &str) -> String {
    let text = read(conf);
    for (i, l) in text.lines().enumerate() {
        if let Some(c) = l.find(needle) {
            return format!("{}:{}:{}", conf.display(), i + 1, c + 1);
        }
    }
    panic!("{needle} not in {}", conf.display());
}

#[test]
fn t_checks_certificates_with_positions() {
    let dir = TempDir::new("tls-check");
    make_ca(&dir);
    let (a_crt, a_key) = make_cert(&dir, "a", &["site-a.test"], 10);
    let (_, b_key) = make_cert(&dir, "b", &["site-b.test"], 10);
    let (old_crt, old_key) = make_cert(&dir, "old", &["old.test"], -1);
    let yaml = |crt: &str, key: &str| {
        format!(
            "pid_file: {}\nupstreams:\n  p:\n    servers: [ {{ addr: \"127.0.0.1:1\" }} ]\nservers:\n  s:\n    listen:\n      - addr: \"127.0.0.1:{}\"\n        tls:\n          cert: {crt}\n          key: {key}\n    locations:\n      - {{ match: /, proxy_pass: p }}\n",
            dir.s("gw.pid"),
            free_port()
        )
    };
    // A key of another certificate: refused, at the key.
    let conf = dir.write("mismatch.yaml", &yaml(&a_crt, &b_key));
    let (ok, out) = ctl(&["-t", "-c", conf.to_str().unwrap()]);
    assert!(!ok, "{out}");
    let at = position(&conf, &b_key);
    assert!(
        out.contains(&format!(
            "{at}: key \"{b_key}\" does not match certificate \"{a_crt}\""
        )),
        "{out}"
    );
    // A missing certificate: refused, at the cert.
    let missing = dir.s("missing.crt");
    let conf = dir.write("missing.yaml", &yaml(&missing, &a_key));
    let (ok, out) = ctl(&["-t", "-c", conf.to_str().unwrap()]);
    assert!(!ok, "{out}");
    let at = position(&conf, &missing);
    assert!(
        out.contains(&format!("{at}: cannot read certificate")),
        "{out}"
    );
    // Not a certificate at all.
    let conf = dir.write("garbage.yaml", &yaml(&a_key, &a_key));
    let (ok, out) = ctl(&["-t", "-c", conf.to_str().unwrap()]);
    assert!(!ok && out.contains("holds no PEM certificate"), "{out}");
    // Expired: accepted, with a warning and the date.
    let conf = dir.write("expired.yaml", &yaml(&old_crt, &old_key));
    let (ok, out) = ctl(&["-t", "-c", conf.to_str().unwrap()]);
    assert!(ok, "{out}");
    let at = position(&conf, &old_crt);
    assert!(
        out.contains(&format!(
            "[warn] {at}: certificate \"{old_crt}\" expired on "
        )),
        "{out}"
    );
    assert!(out.contains("GMT"), "the warning gives the date: {out}");
}

#[test]
fn a_plain_listener_redirects_to_https() {
    let dir = TempDir::new("tls-redirect");
    let port = free_port();
    let conf = dir.write(
        "gw.yaml",
        &format!(
            "pid_file: {}\nerror_log: {}\nservers:\n  plain:\n    listen: [\"127.0.0.1:{port}\"]\n    locations:\n      - match: /\n        return: \"301 https://$host$request_uri\"\n",
            dir.s("gw.pid"),
            dir.s("error.log"),
        ),
    );
    let _gw = start(&conf, &[port]);
    let mut s = connect(port, None).unwrap();
    s.write_all(b"GET /a/b?x=1 HTTP/1.1\r\nHost: Site-A.test:8080\r\n\r\n")
        .unwrap();
    let r = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://site-a.test/a/b?x=1"),
        "$host is the name without the port, in lower case, as nginx's"
    );
}

/// TLS keep-alive clients: each connection serves up to 20 requests, then a new one is made
/// (a new handshake), so a reload's certificate is picked up while old connections go on.
struct TlsLoad {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<LoadResult>>,
}

fn connector(ca: &Path) -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(ca).unwrap();
    b.build()
}

fn tls_connect(
    c: &SslConnector,
    port: u16,
    name: &str,
    src: Option<Ipv4Addr>,
) -> std::io::Result<SslStream<std::net::TcpStream>> {
    let tcp = connect(port, src)?;
    c.connect(name, tcp).map_err(std::io::Error::other)
}

impl TlsLoad {
    fn start(port: u16, ca: &Path, name: &str, clients: usize) -> TlsLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let conn = Arc::new(connector(ca));
        let threads = (0..clients)
            .map(|i| {
                let (stop, count, conn) = (stop.clone(), count.clone(), conn.clone());
                let name = name.to_string();
                std::thread::spawn(move || {
                    let src = Ipv4Addr::new(127, 78, 0, i as u8 + 1);
                    let mut res = LoadResult::default();
                    while !stop.load(Ordering::Relaxed) {
                        let s = match tls_connect(&conn, port, &name, Some(src)) {
                            Ok(s) => s,
                            Err(e) => {
                                res.failed.push(format!("client {i}: handshake: {e}"));
                                continue;
                            }
                        };
                        let mut r = BufReader::new(s);
                        for n in 0..20 {
                            let req = format!("GET /tls/{i}/{n} HTTP/1.1\r\nHost: {name}\r\n\r\n");
                            let out = r
                                .get_mut()
                                .write_all(req.as_bytes())
                                .and_then(|_| read_response(&mut r));
                            match out {
                                Ok(resp) if resp.status == 200 => {
                                    res.ok += 1;
                                    count.fetch_add(1, Ordering::Relaxed);
                                    if resp
                                        .header("connection")
                                        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                                    {
                                        break;
                                    }
                                }
                                Ok(resp) => {
                                    res.failed.push(format!("status {}", resp.status));
                                    break;
                                }
                                Err(e) => {
                                    res.failed.push(format!("client {i}: {e}"));
                                    break;
                                }
                            }
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    }
                    res
                })
            })
            .collect();
        TlsLoad {
            stop,
            count,
            threads,
        }
    }

    fn wait_more(&self, n: u64) {
        let target = self.count.load(Ordering::Relaxed) + n;
        wait_for("TLS load progress", Duration::from_secs(60), || {
            self.count.load(Ordering::Relaxed) >= target
        });
    }

    fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadResult::default();
        for t in self.threads {
            let r = t.join().expect("load thread");
            total.ok += r.ok;
            total.failed.extend(r.failed);
        }
        total
    }
}

/// The serial number of the certificate a new connection gets for `name`.
fn served_serial(e: &Env, name: &str) -> String {
    let s = tls_connect(&connector(&e.ca), e.tls, name, None).expect("TLS connect");
    let cert = s.ssl().peer_certificate().expect("a certificate");
    cert.serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string()
}

fn file_serial(path: &str) -> String {
    let pem = std::fs::read(path).unwrap();
    let cert = openssl::x509::X509::from_pem(&pem).unwrap();
    cert.serial_number()
        .to_bn()
        .unwrap()
        .to_hex_str()
        .unwrap()
        .to_string()
}

fn assert_no_failures(res: &LoadResult) {
    assert!(res.ok > 0, "the load made no request");
    assert!(
        res.failed.is_empty(),
        "{} failed requests: {:?}",
        res.failed.len(),
        &res.failed[..res.failed.len().min(5)]
    );
}

#[test]
fn certificate_rotation_by_reload_under_tls_load_fails_nothing() {
    let e = env("tls-rotate", |dir| {
        let (crt, key) = make_cert(dir, "site", &["site-a.test"], 10);
        format!("tls: {{ cert: {crt}, key: {key} }}")
    });
    let _gw = start(&e.conf, &[e.plain, e.tls]);
    let crt = e.dir.s("site.crt");
    let before = served_serial(&e, "site-a.test");
    assert_eq!(before, file_serial(&crt));

    let load = TlsLoad::start(e.tls, &e.ca, "site-a.test", 8);
    load.wait_more(300);
    // A new certificate and key at the same paths, then a reload.
    make_cert(&e.dir, "site", &["site-a.test"], 20);
    let after = file_serial(&crt);
    assert_ne!(before, after);
    let (ok, out) = ctl(&["-s", "reload", "-c", e.conf.to_str().unwrap()]);
    assert!(ok && out.contains("reloaded"), "{out}");
    load.wait_more(300);
    assert_eq!(
        served_serial(&e, "site-a.test"),
        after,
        "new handshakes get the new certificate"
    );
    assert_no_failures(&load.finish());
}

#[test]
fn binary_upgrade_with_a_tls_listener_under_load_fails_nothing() {
    let e = env("tls-upgrade", two_certs);
    let gw = start(&e.conf, &[e.plain, e.tls]);
    wait_for("pid file", Duration::from_secs(10), || {
        !read(&e.dir.path("gw.pid")).trim().is_empty()
    });
    let load = TlsLoad::start(e.tls, &e.ca, "site-b.test", 8);
    load.wait_more(300);
    let first = children(gw.pid());
    let (ok, out) = ctl(&["-s", "upgrade", "-c", e.conf.to_str().unwrap()]);
    assert!(ok, "upgrade failed: {out}");
    load.wait_more(300);
    wait_for("old generation to exit", Duration::from_secs(30), || {
        !first.iter().any(|p| alive(*p))
    });
    load.wait_more(100);
    assert_no_failures(&load.finish());
}

#[test]
fn upstream_protocol_h2_speaks_cleartext_http2_to_the_server() {
    let dir = TempDir::new("tls-h2-upstream");
    let h2c = free_port();
    // nginx as the HTTP/2 server (prior knowledge on a cleartext port), saying what it heard.
    let Some((_nginx, _)) = nginx_with(
        &dir,
        &format!(
            "server {{ listen 127.0.0.1:{h2c} http2; location / {{ return 200 \"$server_protocol\\n\"; }} }}"
        ),
        "",
    ) else {
        eprintln!("nginx not installed: skipped");
        return;
    };
    wait_for("nginx h2c port", Duration::from_secs(10), || port_open(h2c));
    let port = free_port();
    let yaml = gateway_yaml(&dir, port, "round_robin", &[(h2c, 1)], "    protocol: h2\n");
    let conf = dir.write("gw.yaml", &yaml);
    let _gw = start(&conf, &[port]);
    let r = get(port, "/");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body.trim(),
        "HTTP/2.0",
        "the server was spoken to over HTTP/2"
    );
    // Without it, the same server hears HTTP/1.1 and refuses (nginx's h2c port wants HTTP/2).
    let yaml1 = gateway_yaml(&dir, port, "round_robin", &[(h2c, 1)], "");
    std::fs::write(&conf, yaml1).unwrap();
    let (ok, out) = ctl(&["-s", "reload", "-c", conf.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert_ne!(get(port, "/").body.trim(), "HTTP/2.0");
}

#[test]
fn binary_upgrade_under_http2_load_fails_nothing() {
    let e = env("tls-h2-upgrade", two_certs);
    let gw = start(&e.conf, &[e.plain, e.tls]);
    wait_for("pid file", Duration::from_secs(10), || {
        !read(&e.dir.path("gw.pid")).trim().is_empty()
    });
    // Clients: curl processes, each sending 20 requests over one HTTP/2 connection.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, done) = (stop.clone(), done.clone());
            let resolve = format!("site-a.test:{}:127.0.0.1", e.tls);
            let url = format!("https://site-a.test:{}/h2/{i}", e.tls);
            let ca = e.ca.to_str().unwrap().to_string();
            std::thread::spawn(move || {
                let mut failed = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let mut args = vec![
                        "--http2",
                        "--cacert",
                        &ca,
                        "--resolve",
                        &resolve,
                        "-w",
                        "%{http_code} %{http_version} %{exitcode}\n",
                    ];
                    for _ in 0..20 {
                        args.extend(["-o", "/dev/null", url.as_str()]);
                    }
                    let o = Command::new("curl")
                        .args(["-sS", "--max-time", "20"])
                        .args(&args)
                        .output()
                        .expect("curl");
                    let out = String::from_utf8_lossy(&o.stdout).into_owned();
                    if !o.status.success() || out.contains("000") {
                        failed.push(format!(
                            "curl {:?}: {}",
                            o.status.code(),
                            String::from_utf8_lossy(&o.stderr)
                        ));
                    }
                    for l in out.lines() {
                        if l == "200 2 0" {
                            done.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.push(l.to_string());
                        }
                    }
                }
                failed
            })
        })
        .collect();
    let wait_more = |n: u64| {
        let target = done.load(Ordering::Relaxed) + n;
        wait_for("HTTP/2 load", Duration::from_secs(60), || {
            done.load(Ordering::Relaxed) >= target
        });
    };
    wait_more(100);
    let first = children(gw.pid());
    let (ok, out) = ctl(&["-s", "upgrade", "-c", e.conf.to_str().unwrap()]);
    assert!(ok, "upgrade failed: {out}");
    wait_for("old generation to exit", Duration::from_secs(30), || {
        !first.iter().any(|p| alive(*p))
    });
    wait_more(100);
    stop.store(true, Ordering::Relaxed);
    let failed: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

/// `keepalive_timeout: 0` (nginx: no keep-alive) closes an idle HTTP/2 connection too, where
/// it once left it open for good.
#[test]
fn keepalive_timeout_0_closes_an_idle_http2_connection() {
    let e = env("tls-h2-idle", two_certs);
    let yaml = read(&e.conf).replace(
        "    access_log:",
        "    keepalive_timeout: 0\n    access_log:",
    );
    std::fs::write(&e.conf, yaml).unwrap();
    let _gw = start(&e.conf, &[e.plain, e.tls]);
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(&e.ca).unwrap();
    b.set_alpn_protos(b"\x02h2").unwrap();
    let mut s = tls_connect(&b.build(), e.tls, "site-a.test", None).unwrap();
    assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    // The client preface and an empty SETTINGS frame, then nothing.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    s.get_ref()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    closed_by_peer(&mut s).expect("the idle HTTP/2 connection was not closed");
}

/// A live weight change recompiles the config: it keeps the certificates already loaded, so a
/// rotation caught half-way (here: the key file replaced, the certificate not yet) does not
/// fail it. A reload does read the files again (and refuses the mismatch).
#[test]
fn a_live_weight_change_keeps_the_loaded_certificates() {
    let e = env("tls-weight", |dir| {
        let (crt, key) = make_cert(dir, "site", &["site-a.test"], 10);
        format!("tls: {{ cert: {crt}, key: {key} }}")
    });
    let admin = free_port();
    let text = read(&e.conf);
    let backend = text
        .split("addr: \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    std::fs::write(
        &e.conf,
        format!("admin: {{ listen: \"127.0.0.1:{admin}\" }}\n{text}"),
    )
    .unwrap();
    let _gw = start(&e.conf, &[e.plain, e.tls, admin]);
    let fmt = ["-o", "/dev/null", "-w", "%{http_code}"];
    assert_eq!(curl_tls(&e, "site-a.test", &fmt, "/"), (0, "200".into()));
    // Half a rotation: a new key, the old certificate.
    let key = e.dir.path("site.key");
    p256_key(&e.dir, "site.key");
    assert!(key.exists());
    // Straight to the admin API: the `weight` CLI compiles the file itself to find it.
    let body = "{\"weight\": 3}";
    let mut c = connect(admin, None).unwrap();
    write!(
        c,
        "PUT /api/upstreams/pool/servers/{backend} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let r = read_response(&mut BufReader::new(c)).unwrap();
    assert_eq!(r.status, 200, "weight change failed: {}", r.body);
    let conf = e.conf.to_str().unwrap();
    assert_eq!(curl_tls(&e, "site-a.test", &fmt, "/"), (0, "200".into()));
    let (ok, out) = ctl(&["-s", "reload", "-c", conf]);
    assert!(
        !ok,
        "a reload reads the mismatched pair again and refuses it: {out}"
    );
    assert_eq!(curl_tls(&e, "site-a.test", &fmt, "/"), (0, "200".into()));
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 and TLS limits, with a bare HTTP/2 client (frame by frame) where curl cannot be made to
// misbehave: no preface, several `cookie` fields, a zero window.

/// A bare HTTP/2 client over TLS (ALPN h2): frames written and read one by one. Header blocks
/// are HPACK literals without indexing (no table, no Huffman), which every decoder takes.
struct H2 {
    s: SslStream<std::net::TcpStream>,
}

/// A frame read: type, flags, stream, payload.
type Frame = (u8, u8, u32, Vec<u8>);

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 1;

/// A TLS connection to `e`'s TLS port that chose `h2` by ALPN, before any HTTP/2 byte.
fn h2_tls(e: &Env) -> SslStream<std::net::TcpStream> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(&e.ca).unwrap();
    b.set_alpn_protos(b"\x02h2").unwrap();
    let s = tls_connect(&b.build(), e.tls, "site-a.test", None).unwrap();
    assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    s.get_ref()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    s
}

/// Whether the peer closes `s` (end of stream or reset) before the read timeout.
fn closed_by_peer(s: &mut impl std::io::Read) -> Result<(), std::io::Error> {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(e)
            }
            Err(_) => return Ok(()), // reset, or closed without close_notify
        }
    }
}

impl H2 {
    /// Connects, sends the preface and a SETTINGS frame with `settings` (id, value).
    fn connect(e: &Env, settings: &[(u16, u32)]) -> H2 {
        let mut h = H2 { s: h2_tls(e) };
        h.s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        let mut p = Vec::new();
        for (id, v) in settings {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        h.frame(SETTINGS, 0, 0, &p);
        h
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.s.write_all(&f).unwrap();
    }

    /// A request on `stream`: `fields` (lower-case names, pseudo-headers first), ended with
    /// END_STREAM when `end`.
    fn request(&mut self, stream: u32, fields: &[(&str, &str)], end: bool) {
        let mut block = Vec::new();
        for (k, v) in fields {
            block.push(0); // literal without indexing, new name
            for s in [k, v] {
                assert!(s.len() < 127, "a short literal");
                block.push(s.len() as u8);
                block.extend_from_slice(s.as_bytes());
            }
        }
        self.frame(
            HEADERS,
            0x4 | if end { END_STREAM } else { 0 },
            stream,
            &block,
        );
    }

    /// `GET path` on `stream` for site-a.test, with `extra` fields.
    fn get(&mut self, stream: u32, path: &str, extra: &[(&str, &str)]) {
        let mut f = vec![
            (":method", "GET"),
            (":scheme", "https"),
            (":path", path),
            (":authority", "site-a.test"),
        ];
        f.extend_from_slice(extra);
        self.request(stream, &f, true);
    }

    /// The next frame; `None` once the connection is closed (or the read timed out). The
    /// server's SETTINGS are acknowledged and its PINGs answered on the way.
    fn read_frame(&mut self) -> Option<Frame> {
        use std::io::Read;
        let mut h = [0u8; 9];
        self.s.read_exact(&mut h).ok()?;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let mut p = vec![0; len];
        self.s.read_exact(&mut p).ok()?;
        let (kind, flags) = (h[3], h[4]);
        if kind == SETTINGS && flags & 1 == 0 {
            self.frame(SETTINGS, 1, 0, &[]);
        }
        if kind == PING && flags & 1 == 0 {
            self.frame(PING, 1, 0, &p);
        }
        let stream = u32::from_be_bytes([h[5] & 0x7f, h[6], h[7], h[8]]);
        Some((kind, flags, stream, p))
    }

    /// The body of `stream`'s response (DATA frames up to END_STREAM); Err with what ended it
    /// otherwise. Frames of other streams are skipped.
    fn body(&mut self, stream: u32) -> Result<String, String> {
        let mut body = Vec::new();
        loop {
            match self.read_frame() {
                None => return Err("connection closed".into()),
                Some((RST_STREAM, _, s, _)) if s == stream => return Err("RST_STREAM".into()),
                Some((GOAWAY, _, _, p)) if p.len() >= 8 => {
                    let last = u32::from_be_bytes([p[0] & 0x7f, p[1], p[2], p[3]]);
                    if last < stream {
                        return Err(format!("GOAWAY, last stream {last}"));
                    }
                }
                Some((HEADERS, f, s, _)) if s == stream && f & END_STREAM != 0 => {
                    return Ok(String::new())
                }
                Some((DATA, f, s, p)) if s == stream => {
                    body.extend_from_slice(&p);
                    if f & END_STREAM != 0 {
                        return Ok(String::from_utf8_lossy(&body).into_owned());
                    }
                }
                Some(_) => {}
            }
        }
    }
}

/// An env whose server block has `lines` (indented for it) among its keys.
fn env_with(tag: &str, lines: &str) -> Env {
    let e = env(tag, two_certs);
    let yaml = read(&e.conf).replace("    access_log:", &format!("{lines}    access_log:"));
    std::fs::write(&e.conf, yaml).unwrap();
    e
}

/// A client that chose `h2` by ALPN and then sends nothing (not even the preface) is closed
/// after `client_header_timeout`, as an HTTP/1 client that sends no request; Pingora's own
/// HTTP/2 handshake waited for ever. One that sends half the preface, the same.
#[test]
fn an_http2_client_that_sends_no_preface_is_closed_after_client_header_timeout() {
    let e = env_with("tls-h2-preface", "    client_header_timeout: 1s\n");
    let _gw = start(&e.conf, &[e.plain, e.tls]);
    let mut silent = h2_tls(&e);
    let mut half = h2_tls(&e);
    half.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    closed_by_peer(&mut silent).expect("a silent HTTP/2 client is closed");
    closed_by_peer(&mut half).expect("a client stuck in its preface is closed");
    // A client that does its part is served as before, over one connection for many streams.
    let mut h = H2::connect(&e, &[]);
    for s in [1, 3, 5] {
        let body = h.body_of_get(s, "/ok");
        assert!(body.starts_with("backend: "), "{body}");
    }
}

impl H2 {
    fn body_of_get(&mut self, stream: u32, path: &str) -> String {
        self.get(stream, path, &[]);
        self.body(stream).expect("a response")
    }
}

/// HTTP/2 clients may send each cookie as a `cookie` field of its own (RFC 9113 8.2.3). A
/// canary keyed on `$cookie_uid` must put a user on the same side over HTTP/1.1 (one `Cookie`
/// header) and over HTTP/2 (the uid in the second field), and an HTTP/1.1 backend must get one
/// `Cookie` header, joined with "; " as nginx joins them.
#[test]
fn http2_cookie_fields_are_one_header_and_keep_the_canary_side() {
    let e = env("tls-h2-cookie", two_certs);
    let text = read(&e.conf);
    // The two demo backends: b0 is the stable pool, b1 the canary.
    let addrs: Vec<String> = text
        .split("addr: \"")
        .skip(1)
        .take(2)
        .map(|s| s.split('"').next().unwrap().to_string())
        .collect();
    let second = text
        .lines()
        .find(|l| l.contains(&addrs[1]))
        .unwrap()
        .to_string();
    let yaml = text
        .replace(&format!("{second}\n"), "")
        .replace(
            "servers:\n  front:",
            &format!(
                "  canary:\n    servers:\n      - {{ addr: \"{}\" }}\ncanaries:\n  c: {{ stable: pool, canary: canary, key: $cookie_uid, percent: 50 }}\nservers:\n  front:",
                addrs[1]
            ),
        )
        .replace("proxy_pass: pool", "proxy_pass: c");
    std::fs::write(&e.conf, yaml).unwrap();
    let _gw = start(&e.conf, &[e.plain, e.tls]);
    let mut h = H2::connect(&e, &[]);
    let mut sides = std::collections::BTreeSet::new();
    for i in 0..16u32 {
        let uid = format!("uid=user-{i}");
        let header = format!("Cookie: theme=dark; {uid}");
        let (code, h1) = curl_tls(&e, "site-a.test", &["--http1.1", "-H", &header], "/");
        assert_eq!(code, 0);
        let stream = 2 * i + 1;
        h.get(stream, "/", &[("cookie", "theme=dark"), ("cookie", &uid)]);
        let h2 = h.body(stream).expect("a response over HTTP/2");
        let side = |b: &str| b.lines().next().unwrap_or("").to_string();
        assert_eq!(side(&h1), side(&h2), "user-{i}: h1 {h1}\nh2 {h2}");
        sides.insert(side(&h2));
        let cookies: Vec<&str> = h2.lines().filter(|l| l.starts_with("cookie: ")).collect();
        assert_eq!(
            cookies,
            [format!("cookie: theme=dark; {uid}").as_str()],
            "one Cookie header upstream: {h2}"
        );
    }
    assert_eq!(sides.len(), 2, "users on both sides: {sides:?}");
}

/// `client_max_body_size` over HTTP/2: a `Content-Length` over it is refused with 413 before
/// any body is read or forwarded (the client sends none here: before, the request went to the
/// backend and waited for it), with nginx's error line; a body without `Content-Length` is
/// counted as its DATA frames arrive.
#[test]
fn http2_bodies_over_client_max_body_size_get_413() {
    let e = env_with("tls-h2-body", "    client_max_body_size: 1k\n");
    let _gw = start(&e.conf, &[e.plain, e.tls]);
    let mut h = H2::connect(&e, &[]);
    let post = |path| {
        [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", path),
            (":authority", "site-a.test"),
        ]
    };
    let mut f = post("/announced").to_vec();
    f.push(("content-length", "100000"));
    h.request(1, &f, false);
    let body = h.body(1).expect("an answer before the body");
    assert!(body.contains("413 Request Entity Too Large"), "{body}");
    wait_for("the error line", Duration::from_secs(10), || {
        read(&e.dir.path("front.error.log"))
            .contains("client intended to send too large body: 100000 bytes")
    });
    // No length: DATA frames, 3 x 600 bytes.
    let mut h = H2::connect(&e, &[]);
    h.request(1, &post("/streamed"), false);
    for i in 0..3 {
        let end = if i == 2 { END_STREAM } else { 0 };
        h.frame(DATA, end, 1, &[b'x'; 600]);
    }
    match h.body(1) {
        // The page may be cut (empty) by the reset of the unread body; the access log
        // below holds the status.
        Ok(body) => assert!(body.is_empty() || body.contains("413"), "{body}"),
        Err(e) => assert_eq!(e, "RST_STREAM"),
    }
    wait_for("the access log line", Duration::from_secs(10), || {
        read(&e.dir.path("access.log")).contains("\"POST /streamed HTTP/2.0\" 413")
    });
    assert!(!read(&e.dir.path("access.log")).contains("\"POST /announced HTTP/2.0\" 200"));
}

/// `keepalive_requests` over HTTP/2 (nginx: GOAWAY after that many streams): the client gets
/// GOAWAY after the 2nd stream, both streams are answered, and the connection closes; Pingora
/// alone served any number of streams on one connection.
#[test]
fn http2_keepalive_requests_sends_goaway() {
    let e = env_with("tls-h2-requests", "    keepalive_requests: 2\n");
    let _gw = start(&e.conf, &[e.plain, e.tls]);
    let mut h = H2::connect(&e, &[]);
    h.get(1, "/one", &[]);
    h.get(3, "/two", &[]);
    let (mut goaway, mut ended) = (None, Vec::new());
    while let Some((kind, flags, stream, p)) = h.read_frame() {
        if kind == GOAWAY && p.len() >= 8 {
            goaway = Some(u32::from_be_bytes([p[0] & 0x7f, p[1], p[2], p[3]]));
        }
        if matches!(kind, DATA | HEADERS) && flags & END_STREAM != 0 {
            ended.push(stream);
        }
    }
    ended.sort_unstable();
    assert_eq!(ended, [1, 3], "both streams answered");
    assert_eq!(
        goaway,
        Some(3),
        "the final GOAWAY names the last stream served"
    );
    // curl opens a new connection after the GOAWAY: all six answered, over three connections.
    let mut args = vec!["--http2", "-w", "%{http_code} %{num_connects}\n"];
    let url = format!("https://site-a.test:{}/c", e.tls);
    for _ in 0..6 {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    let (code, out) = curl_tls(&e, "site-a.test", &args[..args.len() - 1], "/c");
    assert_eq!(code, 0, "{out}");
    let connects: u32 = out
        .lines()
        .map(|l| {
            assert!(l.starts_with("200 "), "{out}");
            l[4..].parse::<u32>().unwrap()
        })
        .sum();
    assert_eq!(connects, 3, "{out}");
}

/// nginx's `send_timeout` (`client_send_timeout`) on HTTP/2 streams: a client that gives no
/// flow-control window (it stops reading) has the stream reset after the timeout, and the
/// request ends (its access log line is written); before, it held the request for ever.
#[test]
fn http2_client_send_timeout_resets_a_stream_the_client_does_not_read() {
    let e = env_with("tls-h2-send", "    client_send_timeout: 1s\n");
    let _gw = start(&e.conf, &[e.plain, e.tls]);
    // SETTINGS_INITIAL_WINDOW_SIZE 0: the server may send headers but no DATA.
    let mut h = H2::connect(&e, &[(0x4, 0)]);
    h.get(1, "/stalled", &[]);
    assert_eq!(h.body(1), Err("RST_STREAM".to_string()));
    wait_for("the access log line", Duration::from_secs(10), || {
        read(&e.dir.path("access.log")).contains("\"GET /stalled HTTP/2.0\"")
    });
}

/// The TLS handshake: a client that connects and sends
/// nothing is closed after `client_header_timeout` (Pingora's own limit is a fixed 60 s); a
/// failed handshake is an `[info]` line, as in nginx, not an `[error]`.
#[test]
fn tls_handshakes_count_as_connections_and_have_client_header_timeout() {
    let e = env_with(
        "tls-handshake",
        "    client_header_timeout: 30s
",
    );
    let yaml = format!("worker_connections: 2\n{}", read(&e.conf));
    std::fs::write(&e.conf, &yaml).unwrap();
    let _gw = start(&e.conf, &[e.plain, e.tls]);
    // A reload in place shortens the handshake's time.
    std::fs::write(
        &e.conf,
        yaml.replace("client_header_timeout: 30s", "client_header_timeout: 1s"),
    )
    .unwrap();
    let (ok, out) = ctl(&["-s", "reload", "-c", e.conf.to_str().unwrap()]);
    assert!(ok, "{out}");
    let mut silent = connect(e.tls, None).unwrap();
    closed_by_peer(&mut silent).expect("a client silent in its handshake is closed");
    wait_for("the info line", Duration::from_secs(10), || {
        read(&e.dir.path("error.log")).contains("timed out in the TLS handshake")
    });
    let log = read(&e.dir.path("error.log"));
    assert!(
        log.lines()
            .filter(|l| l.contains("handshake"))
            .all(|l| l.contains("[info]")),
        "{log}"
    );
}
