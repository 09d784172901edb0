//! `graygate import-nginx`: the seed's nginx files in, a running graygate out.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::common::*;

fn import(file: &std::path::Path) -> (Option<i32>, String, String) {
    let out = Command::new(graygate())
        .arg("import-nginx")
        .arg(file)
        .output()
        .expect("run graygate import-nginx");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The seed's Step 1 as its author keeps it: `conf.d/nginx_balance.conf`, included by a main
/// file; imported, checked with `-t`, and run in front of the two app versions.
#[test]
fn the_seed_balancer_imports_and_serves() {
    let dir = TempDir::new("import");
    let (front, old, new) = (free_port(), free_port(), free_port());
    std::fs::create_dir_all(dir.path("conf.d")).unwrap();
    dir.write(
        "conf.d/nginx_balance.conf",
        &format!(
            "# 负载均衡配置\nupstream balance {{\n# 开启ip_hash保证同一个用户访问到同一台服务器\nip_hash;\n\
             server 127.0.0.1:{old} weight=1;\nserver 127.0.0.1:{new} weight=1;\n}}\n\
             server {{\nlisten 127.0.0.1:{front};\nlocation / {{\nproxy_pass http://balance;\n\
             proxy_set_header X-Real-IP $remote_addr;\n}}\naccess_log {};\nerror_log {};\n}}\n",
            dir.s("balance.access.log"),
            dir.s("balance.error.log"),
        ),
    );
    let main = dir.write(
        "nginx.conf",
        &format!(
            "pid {};\nerror_log {};\nevents {{ worker_connections 768; }}\n\
             http {{\n  sendfile on;\n  include conf.d/*.conf;\n}}\n",
            dir.s("gw.pid"),
            dir.s("error.log"),
        ),
    );
    let (code, yaml, err) = import(&main);
    assert_eq!(code, Some(0), "stderr: {err}\nyaml: {yaml}");
    assert!(err.contains("nginx.conf:5: \"sendfile\" dropped"), "{err}");
    let conf = dir.write("graygate.yaml", &yaml);
    let t = run(&["-t", "-c", &dir.s("graygate.yaml")]);
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));

    let _b1 = backend(&dir, "old", old);
    let _b2 = backend(&dir, "new", new);
    let _gw = start(&conf, &[front]);
    let mut seen = std::collections::BTreeSet::new();
    for i in 1..=40u8 {
        let src = Ipv4Addr::new(127, i, 0, 1);
        let first = get_from(front, "/", Some(src), &["X-Real-IP: 6.6.6.6"]).unwrap();
        assert_eq!(first.status, 200);
        assert_eq!(first.seen("X-Real-IP"), Some(src.to_string().as_str()));
        let again = get_from(front, "/", Some(src), &[]).unwrap();
        assert_eq!(
            again.backend(),
            first.backend(),
            "ip_hash keeps {src} on one"
        );
        seen.insert(first.backend().to_string());
    }
    assert_eq!(seen.len(), 2, "both versions get clients: {seen:?}");
    wait_for(
        "access log lines",
        std::time::Duration::from_secs(10),
        || read(&dir.path("balance.access.log")).lines().count() == 80,
    );
}

/// The seed's three server blocks (Step 1 and Step 2), paths moved under a temp dir and
/// ports made free: the import carries the uwsgi locations over, names only the favicon
/// locations (nginx's default root, which graygate does not guess), passes `-t`, and the
/// imported gateway serves both app versions through the balancer.
#[test]
fn the_seed_app_servers_import_with_uwsgi() {
    let dir = TempDir::new("import-app");
    let (front, old, new, app_old, app_new) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let d = dir.s("");
    let app = |port: u16, uwsgi: u16, www: &str| {
        format!(
            "server {{\nlisten 127.0.0.1:{port};\nlocation / {{\nadd_header Access-Control-Allow-Origin *;\n\
             root {d}/{www}/app/;\ninclude uwsgi_params;\nuwsgi_pass 127.0.0.1:{uwsgi};\n\
             uwsgi_read_timeout 360;\n}}\nlocation ~/media/{{\nroot {d}/static/;\n}}\n\
             location = /favicon.ico {{\nlog_not_found off;\n}}\n\
             access_log {d}/qianming-{port}.access.log;\nerror_log {d}/qianming.error.log;\n}}\n"
        )
    };
    let f = dir.write(
        "seed.conf",
        &format!(
            "pid {d}/gw.pid;\nerror_log {d}/error.log;\nupstream balance {{\nip_hash;\nserver 127.0.0.1:{old} weight=1;\nserver 127.0.0.1:{new} weight=1;\n}}\n\
             server {{\nlisten 127.0.0.1:{front};\nlocation / {{\nproxy_pass http://balance;\n\
             proxy_set_header X-Real-IP $remote_addr;\n}}\naccess_log {d}/balance.access.log;\n\
             error_log {d}/balance.error.log;\n}}\n{}{}",
            app(old, app_old, "www"),
            app(new, app_new, "www_new"),
        ),
    );
    let (code, yaml, err) = import(&f);
    let name = f.display().to_string();
    let untranslated: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("\" not translated:"))
        .collect();
    assert_eq!(untranslated.len(), 2, "{err}");
    assert!(
        untranslated
            .iter()
            .all(|l| l.contains(&name) && l.contains("\"location\"")),
        "{err}"
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        yaml.contains(&format!("uwsgi_pass: 127.0.0.1:{app_old}")),
        "{yaml}"
    );
    assert!(yaml.contains("uwsgi_read_timeout: '360'"), "{yaml}");
    let conf = dir.write("graygate.yaml", &yaml);
    let t = run(&["-t", "-c", &dir.s("graygate.yaml")]);
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));

    let _a = crate::uwsgi::uwsgi(&dir, "old", &format!("127.0.0.1:{app_old}"));
    let _b = crate::uwsgi::uwsgi(&dir, "new", &format!("127.0.0.1:{app_new}"));
    let _gw = start(&conf, &[front, old, new]);
    let mut seen = std::collections::BTreeSet::new();
    for i in 1..=16u8 {
        let r = get_from(front, "/x?q=1", Some(Ipv4Addr::new(127, i, 0, 1)), &[]).unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        seen.insert(r.header("x-app").unwrap_or("").to_string());
    }
    assert_eq!(seen.len(), 2, "both versions get clients: {seen:?}");
}

/// Malformed nginx input stops the import with the place of the fault.
#[test]
fn malformed_input_names_file_line_and_column() {
    let dir = TempDir::new("import-bad");
    let f = dir.write("bad.conf", "upstream u {\n  server 127.0.0.1:1;\n}\n  }\n");
    let (code, yaml, err) = import(&f);
    assert_eq!(code, Some(1));
    assert!(yaml.is_empty());
    assert!(
        err.contains(&format!("{}:4:3: unexpected \"}}\"", f.display())),
        "{err}"
    );
    let f = dir.write("quote.conf", "server {\n  listen \"80;\n}\n");
    let (code, _, err) = import(&f);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("{}:2:10: unterminated quoted string", f.display())),
        "{err}"
    );
}
