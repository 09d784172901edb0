//! Zero-downtime lifecycle under a real concurrent keep-alive load: binary upgrade, reload
//! (good, broken, and one that changes listeners), log reopen, graceful quit.

use std::time::Duration;

use crate::common::*;

struct Env {
    dir: TempDir,
    port: u16,
    backends: Vec<u16>,
    _procs: Vec<Proc>,
    conf: std::path::PathBuf,
}

fn env(tag: &str, weights: &[u32]) -> Env {
    let dir = TempDir::new(tag);
    let mut procs = Vec::new();
    let mut backends = Vec::new();
    for (i, _) in weights.iter().enumerate() {
        let p = free_port();
        procs.push(backend(&dir, &format!("b{i}"), p));
        backends.push(p);
    }
    let port = free_port();
    let servers: Vec<(u16, u32)> = backends
        .iter()
        .copied()
        .zip(weights.iter().copied())
        .collect();
    let yaml = gateway_yaml(&dir, port, "ip_hash", &servers, "")
        + "grace_period: 5s\nshutdown_timeout: 5s\n";
    let conf = dir.write("gw.yaml", &yaml);
    Env {
        dir,
        port,
        backends,
        _procs: procs,
        conf,
    }
}

fn master_pid(e: &Env) -> i32 {
    read(&e.dir.path("gw.pid"))
        .trim()
        .parse()
        .expect("pid file")
}

fn access_lines(e: &Env, name: &str) -> usize {
    read(&e.dir.path(name)).lines().count()
}

#[test]
fn upgrades_and_reloads_fail_no_request_and_log_each_once() {
    let e = env("upgrade", &[1, 1]);
    let mut gw = start(&e.conf, &[e.port]);
    let conf = e.conf.to_str().unwrap();
    wait_for("pid file", Duration::from_secs(10), || {
        !read(&e.dir.path("gw.pid")).trim().is_empty()
    });
    let master = master_pid(&e);
    assert_eq!(
        master,
        gw.pid(),
        "the pid file names the process we started"
    );
    let first_worker = children(master);
    assert_eq!(first_worker.len(), 1, "one worker generation");

    let load = Load::start(e.port, 24, false);
    load.wait_more(500);
    for _ in 0..3 {
        let (ok, out) = ctl(&["-s", "upgrade", "-c", conf]);
        assert!(ok, "upgrade failed: {out}");
        load.wait_more(300);
        let (ok, out) = ctl(&["-s", "reload", "-c", conf]);
        assert!(ok, "reload failed: {out}");
        load.wait_more(300);
    }
    // A broken file is refused before anything is sent, and nothing changes.
    let good = read(&e.conf);
    std::fs::write(
        &e.conf,
        good.replace("policy: ip_hash", "policy: ip_hash\n    bogus: 1"),
    )
    .unwrap();
    let (ok, out) = ctl(&["-s", "reload", "-c", conf]);
    assert!(!ok, "a broken file must be refused");
    assert!(
        out.contains("gw.yaml:") && out.contains("unknown field `bogus`"),
        "{out}"
    );
    std::fs::write(&e.conf, &good).unwrap();
    load.wait_more(300);

    let res = load.finish();
    assert!(
        res.failed.is_empty(),
        "{} failed requests: {:?}",
        res.failed.len(),
        &res.failed[..res.failed.len().min(5)]
    );
    assert_eq!(res.refused, 0);

    // The old generations drain and exit; the master stays.
    wait_for("old generations to exit", Duration::from_secs(30), || {
        children(master).len() == 1
    });
    assert!(
        !first_worker.iter().any(|p| alive(*p)),
        "first worker still running"
    );
    assert!(!gw.exited(), "the master must survive upgrades");
    assert_eq!(
        master_pid(&e),
        master,
        "the pid file keeps the master's pid"
    );

    // Every request is logged exactly once.
    wait_for("access log complete", Duration::from_secs(10), || {
        access_lines(&e, "access.log") as u64 >= res.ok
    });
    assert_eq!(access_lines(&e, "access.log") as u64, res.ok);
}

#[test]
fn reload_applies_new_weights_and_new_listeners() {
    let e = env("reload", &[1, 1]);
    let _gw = start(&e.conf, &[e.port]);
    let conf = e.conf.to_str().unwrap();
    wait_for("pid file", Duration::from_secs(10), || {
        !read(&e.dir.path("gw.pid")).trim().is_empty()
    });
    let clients: Vec<_> = (0..60u8)
        .map(|x| std::net::Ipv4Addr::new(127, 60, x, 1))
        .collect();
    let on = |port: u16, name: &str| {
        clients
            .iter()
            .filter(|ip| get_from(port, "/", Some(**ip), &[]).unwrap().backend() == name)
            .count()
    };
    assert!(on(e.port, "b0") > 0 && on(e.port, "b1") > 0);

    // The whole canary: the new server takes 100%.
    let yaml = read(&e.conf).replace(
        &format!("127.0.0.1:{}\", weight: 1", e.backends[0]),
        &format!("127.0.0.1:{}\", weight: 0", e.backends[0]),
    );
    std::fs::write(&e.conf, yaml).unwrap();
    let (ok, out) = ctl(&["-s", "reload", "-c", conf]);
    assert!(ok && out.contains("reloaded"), "{out}");
    assert_eq!(
        on(e.port, "b1"),
        clients.len(),
        "after the reload every client goes to b1"
    );

    // A new listener is applied by a new worker generation on a socket the master binds.
    let port2 = free_port();
    let yaml = read(&e.conf).replace(
        &format!("listen: [\"127.0.0.1:{}\"]", e.port),
        &format!("listen: [\"127.0.0.1:{}\", \"127.0.0.1:{port2}\"]", e.port),
    );
    std::fs::write(&e.conf, yaml).unwrap();
    let (ok, out) = ctl(&["-s", "reload", "-c", conf]);
    assert!(ok && out.contains("new generation"), "{out}");
    assert_eq!(get(port2, "/").status, 200);
    assert_eq!(get(e.port, "/").status, 200);
}

#[test]
fn reopen_after_rotation_loses_and_duplicates_nothing() {
    let e = env("reopen", &[1]);
    let _gw = start(&e.conf, &[e.port]);
    let conf = e.conf.to_str().unwrap();
    wait_for("pid file", Duration::from_secs(10), || {
        !read(&e.dir.path("gw.pid")).trim().is_empty()
    });
    let load = Load::start(e.port, 8, false);
    load.wait_more(300);
    std::fs::rename(e.dir.path("access.log"), e.dir.path("access.log.1")).unwrap();
    load.wait_more(300);
    let (ok, out) = ctl(&["-s", "reopen", "-c", conf]);
    assert!(ok, "{out}");
    wait_for("a new access.log", Duration::from_secs(10), || {
        access_lines(&e, "access.log") > 0
    });
    load.wait_more(300);
    let res = load.finish();
    assert!(
        res.failed.is_empty(),
        "{:?}",
        &res.failed[..res.failed.len().min(5)]
    );
    wait_for("all lines written", Duration::from_secs(10), || {
        (access_lines(&e, "access.log") + access_lines(&e, "access.log.1")) as u64 >= res.ok
    });
    assert_eq!(
        (access_lines(&e, "access.log") + access_lines(&e, "access.log.1")) as u64,
        res.ok
    );
    assert!(access_lines(&e, "access.log.1") > 0);
}

#[test]
fn quit_drains_without_failing_requests_and_exits() {
    let e = env("quit", &[1]);
    let mut gw = start(&e.conf, &[e.port]);
    let conf = e.conf.to_str().unwrap();
    wait_for("pid file", Duration::from_secs(10), || {
        !read(&e.dir.path("gw.pid")).trim().is_empty()
    });
    let master = master_pid(&e);
    let workers = children(master);
    // A request in flight when the quit arrives must still finish.
    let slow = std::thread::spawn({
        let port = e.port;
        move || get_from(port, "/?delay_ms=1500", None, &[])
    });
    let load = Load::start(e.port, 16, true);
    load.wait_more(300);
    let (ok, out) = ctl(&["-s", "quit", "-c", conf]);
    assert!(ok, "{out}");
    wait_for("graygate to exit", Duration::from_secs(30), || gw.exited());
    let res = load.finish();
    assert!(
        res.failed.is_empty(),
        "{:?}",
        &res.failed[..res.failed.len().min(5)]
    );
    let slow = slow.join().unwrap().expect("in-flight request");
    assert_eq!(slow.status, 200);
    assert!(workers.iter().all(|p| !alive(*p)), "workers gone");
    assert!(!e.dir.path("gw.pid").exists(), "pid file removed");
    wait_for("log", Duration::from_secs(5), || {
        access_lines(&e, "access.log") as u64 > res.ok
    });
    assert_eq!(
        access_lines(&e, "access.log") as u64,
        res.ok + 1,
        "every request logged once"
    );
}

#[test]
fn failed_upgrade_leaves_the_running_generation_untouched() {
    let e = env("badbin", &[1]);
    // Run from a copy of the binary so that the copy can be broken, as a bad deploy would.
    let bin = e.dir.path("graygate");
    std::fs::copy(graygate(), &bin).unwrap();
    // Another test thread forking just now inherits the copy's write handle until its exec:
    // until then exec fails with "text file busy" (ETXTBSY), so try again briefly.
    let mut spawned = None;
    wait_for("exec of the copy", Duration::from_secs(10), || {
        match std::process::Command::new(&bin)
            .arg("-c")
            .arg(&e.conf)
            .spawn()
        {
            Ok(c) => spawned = Some(c),
            Err(err) if err.kind() == std::io::ErrorKind::ExecutableFileBusy => {}
            Err(err) => panic!("spawn {}: {err}", bin.display()),
        }
        spawned.is_some()
    });
    let child = spawned.unwrap();
    let _gw = Proc { child };
    wait_for("gateway", Duration::from_secs(20), || {
        port_open(e.port) && !read(&e.dir.path("gw.pid")).trim().is_empty()
    });
    let master = master_pid(&e);
    let before = children(master);
    std::fs::remove_file(&bin).unwrap();
    std::fs::write(&bin, "#!/bin/sh\necho 'corrupt binary' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let load = Load::start(e.port, 8, false);
    load.wait_more(200);
    let (ok, out) = ctl(&["-s", "upgrade", "-c", e.conf.to_str().unwrap()]);
    assert!(!ok, "upgrade to a broken binary must fail: {out}");
    assert!(out.contains("corrupt binary"), "the reason is shown: {out}");
    load.wait_more(200);
    let res = load.finish();
    assert!(
        res.failed.is_empty(),
        "{:?}",
        &res.failed[..res.failed.len().min(5)]
    );
    assert_eq!(children(master), before, "the same worker keeps serving");
}
