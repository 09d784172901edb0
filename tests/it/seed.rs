//! The whole seed, side by side: its three nginx server blocks (the ip_hash balancer and the two
//! app versions, each adding a CORS header, serving `/media/` from disk, quieting
//! `favicon.ico` and passing the rest to uWSGI) run once under nginx and once under graygate
//! (imported from the same text with `graygate import-nginx`), in front of the same two real
//! uWSGI apps. Every request is sent to both fronts from the same client address and must get
//! the same status, body and headers, land on the same app version, and leave the same access
//! log lines.

use std::io::{BufReader, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// The app both versions run: it names its version and echoes what it was given.
const APP: &str = r#"import os
V = os.environ.get("APP_VERSION", "?")
def application(env, start):
    body = env["wsgi.input"].read()
    out = ("app: %s\nuri: %s\nreal-ip: %s\nlen: %d\n" % (
        V, env.get("REQUEST_URI"), env.get("HTTP_X_REAL_IP", "-"), len(body))).encode()
    start("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                     ("Content-Length", str(len(out))), ("X-App", V)])
    return [out]
"#;

/// The seed's Step 1 and Step 2 nginx text, with its ports and `/data/` paths made local.
fn seed(d: &str, logs: &str, ports: [u16; 3], apps: [u16; 2]) -> String {
    let [front, old, new] = ports;
    let app_server = |port: u16, www: &str, app: u16| {
        format!(
            "server {{\nlisten 127.0.0.1:{port};\nlocation / {{\n\
             add_header Access-Control-Allow-Origin *;\nroot {d}/{www}/app/;\n\
             include uwsgi_params;\nuwsgi_pass 127.0.0.1:{app};\nuwsgi_read_timeout 360;\n}}\n\
             location ~/media/{{\nroot {d}/static/;\n}}\n\
             location = /favicon.ico {{\nlog_not_found off;\n}}\n\
             access_log {logs}/nginx.qianming.access.log;\n\
             error_log {logs}/nginx.qianming.error.log;\n}}\n"
        )
    };
    format!(
        "# 负载均衡配置\nupstream balance {{\n# 开启ip_hash保证同一个用户访问到同一台服务器\n\
         ip_hash;\nserver 127.0.0.1:{old} weight=1;\nserver 127.0.0.1:{new} weight=1;\n}}\n\
         server {{\nlisten 127.0.0.1:{front};\nlocation / {{\nproxy_pass http://balance;\n\
         proxy_set_header X-Real-IP $remote_addr;\n}}\n\
         access_log {logs}/nginx.balance.access.log;\n\
         error_log {logs}/nginx.balance.error.log;\n}}\n{}{}",
        app_server(old, "www", apps[0]),
        app_server(new, "www_new", apps[1]),
    )
}

/// Debian's uWSGI running `APP` as `version` on a loopback port, without a master process so
/// that killing it kills it whole.
fn uwsgi(dir: &TempDir, version: &str, port: u16) -> Proc {
    let child = Command::new("uwsgi")
        .args(["--plugin", "python3", "--need-app", "--disable-logging"])
        .args(["--processes", "1", "--threads", "4"])
        .arg("--socket")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--wsgi-file")
        .arg(dir.path("app.py"))
        .arg("--env")
        .arg(format!("APP_VERSION={version}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("uwsgi (scripts/deps.sh installs it)");
    let p = Proc { child };
    wait_for("uwsgi", Duration::from_secs(20), || port_open(port));
    p
}

/// One request from `src`: method, path and body.
fn ask(port: u16, src: Ipv4Addr, method: &str, path: &str, body: &str) -> Resp {
    let mut s = connect(port, Some(src)).expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: seed-test\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    read_response(&mut BufReader::new(s)).expect("response")
}

/// An access log's lines without their time, sorted (the two fronts' order may differ). The
/// size of an error page is left out: nginx's pages name nginx. The balancer's requests to the
/// app servers are HTTP/1.0 from nginx (its `proxy_http_version` default, one connection per
/// request) and HTTP/1.1 from graygate (pooled keep-alive): the version is left out too.
fn log_lines(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = read(p)
        .lines()
        .map(|l| {
            let l = match (l.find('['), l.find(']')) {
                (Some(a), Some(b)) if a < b => format!("{}{}", &l[..a], &l[b + 1..]),
                _ => l.to_string(),
            };
            let mut parts: Vec<String> = l.split('"').map(str::to_string).collect();
            if let Some(sb) = parts.get_mut(2) {
                if sb.trim_start().starts_with('4') || sb.trim_start().starts_with('5') {
                    *sb = format!(" {} ", sb.split_whitespace().next().unwrap_or(""));
                }
            }
            parts
                .join("\"")
                .replace(" HTTP/1.0\"", " HTTP/1.x\"")
                .replace(" HTTP/1.1\"", " HTTP/1.x\"")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn the_seed_under_nginx_and_graygate_answers_the_same() {
    let dir = TempDir::new("seed");
    let d = dir.s("");
    let d = d.trim_end_matches('/');
    dir.write("app.py", APP);
    for sub in [
        "www/app",
        "www_new/app",
        "static/media",
        "logs_nginx",
        "logs_graygate",
    ] {
        std::fs::create_dir_all(dir.path(sub)).unwrap();
    }
    dir.write("www/app/index.html", "old index\n");
    dir.write("www_new/app/index.html", "new index\n");
    dir.write("static/media/a.txt", "static file\n");
    dir.write("static/media/site.css", "body { color: red }\n");
    for stock in ["uwsgi_params", "mime.types"] {
        std::fs::copy(Path::new("/etc/nginx").join(stock), dir.path(stock))
            .expect("Debian's nginx files (scripts/deps.sh installs nginx)");
    }
    let apps = [free_port(), free_port()];
    let _old = uwsgi(&dir, "old", apps[0]);
    let _new = uwsgi(&dir, "new", apps[1]);

    // nginx: the seed as its author runs it, included from an http block with the stock
    // mime.types (Debian's nginx.conf does the same).
    let np = [free_port(), free_port(), free_port()];
    dir.write(
        "seed-nginx.conf",
        &seed(d, &format!("{d}/logs_nginx"), np, apps),
    );
    let main = dir.write(
        "nginx.conf",
        &format!(
            "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/nginx.err;\n\
             events {{}}\nhttp {{\ninclude mime.types;\ndefault_type application/octet-stream;\n\
             client_body_temp_path {d}; proxy_temp_path {d}; uwsgi_temp_path {d};\n\
             fastcgi_temp_path {d}; scgi_temp_path {d};\ninclude seed-nginx.conf;\n}}\n"
        ),
    );
    let _nginx = Proc {
        child: Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(&main)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx (scripts/deps.sh installs it)"),
    };
    for p in np {
        wait_for("nginx", Duration::from_secs(10), || port_open(p));
    }

    // graygate: the same text, imported with one command and run as printed.
    let gp = [free_port(), free_port(), free_port()];
    let seed_gg = dir.write(
        "seed-graygate.conf",
        &seed(d, &format!("{d}/logs_graygate"), gp, apps),
    );
    let out = Command::new(graygate())
        .arg("import-nginx")
        .arg(&seed_gg)
        .output()
        .expect("import-nginx");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "import notes: {err}");
    let yaml = format!(
        "pid_file: {d}/gg.pid\nupgrade_sock: {d}/gg.sock\nerror_log: {d}/gg.err\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let conf = dir.write("graygate.yaml", &yaml);
    let t = run(&["-t", "-c", &dir.s("graygate.yaml")]);
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    let _gg = start(&conf, &gp);

    // The seed's traffic: pages from the app, media from disk (also through a path nginx
    // normalises), the quieted favicon, a missing file, a form post; from 24 client addresses.
    let requests: [(&str, &str, &str); 7] = [
        ("GET", "/", ""),
        ("GET", "/page?q=1&x=%20y", ""),
        ("POST", "/form", "name=value&other=1"),
        ("GET", "/media/a.txt", ""),
        ("GET", "/x/../media/site.css", ""),
        ("GET", "/media/missing.png", ""),
        ("GET", "/favicon.ico", ""),
    ];
    let compared = [
        "content-type",
        "content-length",
        "access-control-allow-origin",
        "x-app",
        "etag",
        "last-modified",
        "accept-ranges",
    ];
    let mut sides = std::collections::BTreeSet::new();
    for i in 1..=24u8 {
        let src = Ipv4Addr::new(127, 10 + i, i, 7);
        for (method, path, body) in requests {
            let n = ask(np[0], src, method, path, body);
            let g = ask(gp[0], src, method, path, body);
            let what = format!("{method} {path} from {src}");
            assert_eq!(g.status, n.status, "{what}: status");
            // Error pages differ by design (nginx's names nginx); everything else is equal.
            if n.status < 400 {
                assert_eq!(g.body, n.body, "{what}: body");
                for h in compared {
                    assert_eq!(g.header(h), n.header(h), "{what}: header {h}");
                }
            }
            if let Some(app) = n.header("x-app") {
                assert!(g.body.contains(&format!("real-ip: {src}")), "{}", g.body);
                sides.insert(app.to_string());
            }
        }
        // The app servers answer directly too (the seed's Step 3 tests the new code there).
        for k in 1..3 {
            let n = ask(np[k], src, "GET", "/media/a.txt?v=2", "");
            let g = ask(gp[k], src, "GET", "/media/a.txt?v=2", "");
            assert_eq!((g.status, &g.body), (n.status, &n.body), "app server {k}");
            assert_eq!(g.header("etag"), n.header("etag"), "app server {k}");
        }
    }
    assert_eq!(
        sides.len(),
        2,
        "ip_hash spreads clients on both versions: {sides:?}"
    );

    // Same log lines, time aside: the balancer's, and the two app servers' shared file.
    let total = 24 * (requests.len() + 2);
    for (name, lines) in [
        ("nginx.balance.access.log", 24 * requests.len()),
        ("nginx.qianming.access.log", total),
    ] {
        let (n, g) = (
            dir.path(&format!("logs_nginx/{name}")),
            dir.path(&format!("logs_graygate/{name}")),
        );
        wait_for(name, Duration::from_secs(10), || {
            log_lines(&n).len() == lines && log_lines(&g).len() == lines
        });
        assert_eq!(log_lines(&g), log_lines(&n), "{name}");
    }
    // log_not_found off: the favicon and nothing else missing reaches the error logs.
    for logs in ["logs_nginx", "logs_graygate"] {
        let e = read(&dir.path(&format!("{logs}/nginx.qianming.error.log")));
        assert!(!e.contains("favicon"), "{logs}: {e}");
        assert!(e.contains("missing.png"), "{logs}: {e}");
    }
}
