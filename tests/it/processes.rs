//! The process model under faults: the master owns the sockets, replaces dead workers, keeps
//! the old generation when a new one fails, refuses a second instance, lets a fast stop win,
//! guards its control socket, and applies exactly the config it checked.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

const SIGHUP: i32 = 1;
const SIGQUIT: i32 = 3;

struct Gw {
    dir: TempDir,
    port: u16,
    backends: Vec<u16>,
    _backends: Vec<Proc>,
    conf: PathBuf,
}

/// A gateway config in front of `n` real backends (not started).
fn setup(tag: &str, n: usize, extra: &str) -> Gw {
    let dir = TempDir::new(tag);
    let mut procs = Vec::new();
    let mut backends = Vec::new();
    for i in 0..n {
        let p = free_port();
        procs.push(backend(&dir, &format!("b{i}"), p));
        backends.push(p);
    }
    let port = free_port();
    let servers: Vec<(u16, u32)> = backends.iter().map(|p| (*p, 1)).collect();
    let yaml = gateway_yaml(&dir, port, "round_robin", &servers, "") + extra;
    let conf = dir.write("gw.yaml", &yaml);
    Gw {
        dir,
        port,
        backends,
        _backends: procs,
        conf,
    }
}

impl Gw {
    fn c(&self) -> &str {
        self.conf.to_str().unwrap()
    }

    /// The master's pid once it has written the pid file.
    fn master(&self) -> i32 {
        let mut pid = 0;
        wait_for("pid file", Duration::from_secs(20), || {
            pid = read(&self.dir.path("gw.pid")).trim().parse().unwrap_or(0);
            pid > 0
        });
        pid
    }

    /// The one serving worker, once there is exactly one.
    fn worker(&self, master: i32) -> i32 {
        let mut w = Vec::new();
        wait_for("one worker", Duration::from_secs(30), || {
            w = children(master);
            w.len() == 1
        });
        w[0]
    }

    fn log(&self) -> String {
        read(&self.dir.path("error.log"))
    }
}

/// New connections are served.
fn serving(port: u16) -> bool {
    get_from(port, "/", None, &[]).is_ok_and(|r| r.status == 200)
}

/// Kills the serving worker under load: the master's sockets stay open (no connection is
/// refused), a new worker serves within moments, and only requests in flight on the killed
/// worker can fail (at most one per client).
fn kill_under_load(g: &Gw, victim: i32, master: i32) {
    let clients = 16;
    let load = Load::start(g.port, clients, false);
    load.wait_more(200);
    signal(victim, SIGKILL).unwrap();
    wait_for("a replacement worker", Duration::from_secs(10), || {
        let w = children(master);
        !w.is_empty() && !w.contains(&victim)
    });
    wait_for("serving again", Duration::from_secs(10), || serving(g.port));
    load.wait_more(200);
    let res = load.finish();
    assert_eq!(res.refused, 0, "the listening sockets were closed");
    assert!(
        res.failed.len() <= clients,
        "{} failed: more than the requests in flight: {:?}",
        res.failed.len(),
        &res.failed[..res.failed.len().min(5)]
    );
}

#[test]
fn a_killed_worker_is_replaced_and_the_sockets_stay_open() {
    let g = setup("respawn", 1, "grace_period: 2s\nshutdown_timeout: 2s\n");
    let mut gw = start(&g.conf, &[g.port]);
    let master = g.master();
    let w = g.worker(master);
    kill_under_load(&g, w, master);
    assert!(!gw.exited(), "the master stays up");
    assert!(
        g.log()
            .contains(&format!("worker process {w} exited on signal 9")),
        "{}",
        g.log()
    );

    // The same right after a hand-over: the new worker dies, another replaces it. The
    // replacement serving now is the old generation after the upgrade (it drains and exits on
    // its own): the one to kill is neither it nor the first one.
    let replacement = g.worker(master);
    let (ok, out) = ctl(&["-s", "upgrade", "-c", g.c()]);
    assert!(ok, "{out}");
    let new = children(master)
        .into_iter()
        .find(|p| *p != w && *p != replacement)
        .expect("new worker");
    kill_under_load(&g, new, master);
    assert!(!gw.exited(), "the master stays up");
    assert_eq!(read(&g.dir.path("gw.pid")).trim(), master.to_string());
}

#[test]
fn a_new_binary_that_never_gets_ready_leaves_the_old_generation_serving() {
    let g = setup("neverready", 1, "");
    // Run from a copy so that the copy can be replaced, as a deploy would.
    let bin = g.dir.path("graygate");
    std::fs::copy(graygate(), &bin).unwrap();
    let child = std::process::Command::new(&bin)
        .arg("-c")
        .arg(&g.conf)
        .spawn()
        .unwrap();
    let mut gw = Proc { child };
    let master = g.master();
    let before = g.worker(master);
    // The "new binary": checks and runs a master like the real one, but its workers hang.
    let real = g.dir.path("graygate.real");
    std::fs::rename(&bin, &real).unwrap();
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = --worker ] && exec sleep 600; done\nexec {} \"$@\"\n",
        real.display()
    );
    write_executable(&bin, &script);
    let load = Load::start(g.port, 8, false);
    load.wait_more(100);
    let (ok, out) = ctl(&["-s", "upgrade", "-c", g.c()]);
    assert!(
        !ok,
        "an upgrade whose workers never get ready must fail: {out}"
    );
    assert!(out.contains("not ready"), "the reason is shown: {out}");
    load.wait_more(100);
    let res = load.finish();
    assert!(
        res.failed.is_empty(),
        "{:?}",
        &res.failed[..res.failed.len().min(5)]
    );
    assert_eq!(
        children(master),
        vec![before],
        "the old worker keeps serving"
    );
    assert!(!gw.exited());
    assert_eq!(read(&g.dir.path("gw.pid")).trim(), master.to_string());
}

/// The master logs its next line to the new error log. A reload's line is the probe; it is
/// sent again now and then, since a SIGHUP pending together with the USR1 may be served
/// first, its line then going to the old file.
fn master_writes_to_new_log(g: &Gw, master: i32) {
    let mut last = std::time::Instant::now() - Duration::from_secs(1);
    wait_for(
        "the master writes to the new error log",
        Duration::from_secs(20),
        || {
            if last.elapsed() >= Duration::from_millis(500) {
                signal(master, SIGHUP).unwrap();
                last = std::time::Instant::now();
            }
            g.log().contains(&format!("{master}#0: reload (SIGHUP)"))
        },
    );
}

fn write_executable(p: &Path, text: &str) {
    let _ = std::fs::remove_file(p);
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

#[test]
fn a_second_start_is_refused_and_the_first_is_untouched() {
    let g = setup("second", 1, "");
    let mut first = start(&g.conf, &[g.port]);
    let master = g.master();
    let worker = g.worker(master);

    // Same file: the pid file is locked.
    let out = run(&["-c", g.c()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("already running as pid {master}")),
        "{err}"
    );

    // Only the port in common: nginx's bind error.
    let other = g.dir.write(
        "other.yaml",
        &read(&g.conf)
            .replace(&g.dir.s("gw.pid"), &g.dir.s("other.pid"))
            .replace(&g.dir.s("error.log"), &g.dir.s("other-error.log")),
    );
    let out = run(&["-c", other.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "bind() to 127.0.0.1:{} failed (98: Address already in use)",
            g.port
        )),
        "{err}"
    );
    assert!(
        !g.dir.path("other.pid").exists(),
        "the refused start leaves no pid file"
    );

    // The first one is untouched: pid file, control socket, worker, port.
    assert_eq!(read(&g.dir.path("gw.pid")).trim(), master.to_string());
    assert_eq!(children(master), vec![worker]);
    let (ok, out) = ctl(&["-s", "reload", "-c", g.c()]);
    assert!(ok, "the first one is still controllable: {out}");
    assert!(serving(g.port));
    assert!(!first.exited());
}

#[test]
fn a_stale_pid_file_is_taken_over_with_a_notice() {
    let g = setup("stale", 1, "");
    // The pid of a process that has exited.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let pid = dead.id();
    dead.wait().unwrap();
    std::fs::write(g.dir.path("gw.pid"), format!("{pid}\n")).unwrap();
    let gw = start(&g.conf, &[g.port]);
    wait_for("the new pid", Duration::from_secs(10), || {
        read(&g.dir.path("gw.pid")).trim() == gw.pid().to_string()
    });
    let notice = format!(
        "taking over stale pid file {}: pid {pid} is not running",
        g.dir.s("gw.pid")
    );
    wait_for("the notice", Duration::from_secs(10), || {
        g.log().contains(&notice)
    });
    assert!(serving(g.port));
}

#[test]
fn stop_wins_during_a_graceful_stop() {
    // A long grace period and a request that keeps the drain busy.
    let g = setup(
        "stopwins",
        1,
        "grace_period: 120s\nshutdown_timeout: 120s\n",
    );
    let mut gw = start(&g.conf, &[g.port]);
    let master = g.master();
    let worker = g.worker(master);
    let port = g.port;
    let slow = std::thread::spawn(move || get_from(port, "/?delay_ms=60000", None, &[]));
    std::thread::sleep(Duration::from_millis(300)); // let the slow request reach the worker
    let (ok, out) = ctl(&["-s", "quit", "-c", g.c()]);
    assert!(ok, "{out}");
    wait_for("draining", Duration::from_secs(10), || {
        g.log().contains("draining connections")
    });
    assert!(!gw.exited(), "still draining the slow request");
    let (ok, out) = ctl(&["-s", "stop", "-c", g.c()]);
    assert!(ok, "stop after quit: {out}");
    wait_for("the master to exit", Duration::from_secs(30), || {
        gw.exited()
    });
    assert!(!alive(worker), "the worker stopped too");
    assert!(!g.dir.path("gw.pid").exists());
    let _ = slow.join();

    // The same with SIGINT straight to a draining worker.
    let g2 = setup("intwins", 1, "grace_period: 120s\nshutdown_timeout: 120s\n");
    let mut gw2 = start(&g2.conf, &[g2.port]);
    let m2 = g2.master();
    let w2 = g2.worker(m2);
    let port = g2.port;
    let slow = std::thread::spawn(move || get_from(port, "/?delay_ms=60000", None, &[]));
    std::thread::sleep(Duration::from_millis(300));
    signal(m2, SIGQUIT).unwrap();
    wait_for("draining", Duration::from_secs(10), || {
        g2.log().contains("draining connections")
    });
    signal(w2, 2).unwrap();
    wait_for("the worker to exit", Duration::from_secs(30), || !alive(w2));
    wait_for("the master to exit", Duration::from_secs(30), || {
        gw2.exited()
    });
    let _ = slow.join();
}

#[test]
fn the_control_socket_survives_silent_and_foreign_peers() {
    let g = setup("ctl", 1, "");
    let _gw = start(&g.conf, &[g.port]);
    let master = g.master();
    let ctl_path = format!("{}.ctl", g.dir.s("gw.pid"));
    // A client that connects and says nothing must not freeze the master.
    let _silent = std::os::unix::net::UnixStream::connect(&ctl_path).unwrap();
    let (ok, out) = ctl(&["-s", "reload", "-c", g.c()]);
    assert!(ok, "{out}");
    // A process that is not a worker cannot pose as one.
    let mut fake = std::os::unix::net::UnixStream::connect(&ctl_path).unwrap();
    fake.write_all(format!("reloaded {} ok\n", g.worker(master)).as_bytes())
        .unwrap();
    drop(fake);
    wait_for("the fake report refused", Duration::from_secs(10), || {
        g.log().contains("not by the worker")
    });
    assert!(serving(g.port));
}

#[test]
fn reload_with_another_file_applies_that_file_and_keeps_it() {
    let g = setup("reloadother", 2, "");
    let _gw = start(&g.conf, &[g.port]);
    let master = g.master();
    let only = |b: u16| {
        read(&g.conf).replace(
            &format!(
                "addr: \"127.0.0.1:{}\", weight: 1",
                if b == 0 { g.backends[1] } else { g.backends[0] }
            ),
            &format!(
                "addr: \"127.0.0.1:{}\", weight: 0",
                if b == 0 { g.backends[1] } else { g.backends[0] }
            ),
        )
    };
    let other = g.dir.write("other.yaml", &only(1));
    let (ok, out) = ctl(&["-s", "reload", "-c", other.to_str().unwrap()]);
    assert!(ok, "{out}");
    for _ in 0..6 {
        assert_eq!(get(g.port, "/").backend(), "b1", "OTHER.yaml applies");
    }
    // Later reloads read OTHER.yaml: change it, send a plain SIGHUP.
    std::fs::write(&other, only(0)).unwrap();
    signal(master, SIGHUP).unwrap();
    wait_for(
        "OTHER.yaml re-read on SIGHUP",
        Duration::from_secs(10),
        || (0..4).all(|_| get(g.port, "/").backend() == "b0"),
    );
}

#[test]
fn a_reload_or_upgrade_with_an_address_in_use_fails_and_says_why() {
    let g = setup("bindfail", 1, "");
    let _gw = start(&g.conf, &[g.port]);
    let master = g.master();
    let worker = g.worker(master);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p2 = taken.local_addr().unwrap().port();
    let good = read(&g.conf);
    std::fs::write(
        &g.conf,
        good.replace(
            &format!("listen: [\"127.0.0.1:{}\"]", g.port),
            &format!("listen: [\"127.0.0.1:{}\", \"127.0.0.1:{p2}\"]", g.port),
        ),
    )
    .unwrap();
    for cmd in ["reload", "upgrade"] {
        let (ok, out) = ctl(&["-s", cmd, "-c", g.c()]);
        assert!(!ok, "{cmd} must fail: {out}");
        assert!(
            out.contains(&format!(
                "bind() to 127.0.0.1:{p2} failed (98: Address already in use)"
            )),
            "{cmd}: {out}"
        );
        assert_eq!(
            children(master),
            vec![worker],
            "{cmd}: the old generation serves"
        );
        assert!(serving(g.port));
    }
    // Once the address is free, the same reload works.
    drop(taken);
    let (ok, out) = ctl(&["-s", "reload", "-c", g.c()]);
    assert!(ok, "{out}");
    wait_for("the new address", Duration::from_secs(10), || serving(p2));
}

#[test]
fn workers_apply_the_bytes_the_master_checked() {
    let g = setup("bytes", 1, "");
    let _gw = start(&g.conf, &[g.port]);
    let master = g.master();
    let w = g.worker(master);
    // The file goes bad after the master checked it: a replacement worker still serves the
    // checked config (it never reads the file).
    std::fs::write(&g.conf, "this: is: not: yaml: [\n").unwrap();
    signal(w, SIGKILL).unwrap();
    wait_for("a replacement worker", Duration::from_secs(10), || {
        let c = children(master);
        c.len() == 1 && c[0] != w
    });
    wait_for("serving again", Duration::from_secs(10), || serving(g.port));
}

#[test]
fn master_reopens_its_error_log_and_upgrades_log_nothing_false() {
    let g = setup("masterlog", 1, "grace_period: 1s\nshutdown_timeout: 1s\n");
    let mut gw = start(&g.conf, &[g.port]);
    let master = g.master();
    g.worker(master);
    let (ok, out) = ctl(&["-s", "upgrade", "-c", g.c()]);
    assert!(ok, "{out}");
    std::fs::rename(g.dir.path("error.log"), g.dir.path("error.log.1")).unwrap();
    let (ok, out) = ctl(&["-s", "reopen", "-c", g.c()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("reopen: reopened"),
        "the master answers: {out}"
    );
    master_writes_to_new_log(&g, master);
    // Without the control socket, `-s reopen` still reaches the master, by signal.
    std::fs::remove_file(g.dir.path("gw.pid.ctl")).unwrap();
    let (ok, out) = ctl(&["-s", "reopen", "-c", g.c()]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("signal sent to {master}")) && out.contains("unreachable"),
        "{out}"
    );
    let line = format!("{master}#0: reopening logs");
    wait_for("the signalled reopen", Duration::from_secs(10), || {
        (read(&g.dir.path("error.log.1")) + &g.log())
            .matches(&line)
            .count()
            == 2
    });
    signal(master, SIGQUIT).unwrap();
    wait_for("exit", Duration::from_secs(30), || gw.exited());
    let all = read(&g.dir.path("error.log.1")) + &g.log();
    for false_line in [
        "No incoming socket transfer",
        "SIGTERM received",
        "grace period",
    ] {
        assert!(!all.contains(false_line), "{false_line:?} in:\n{all}");
    }
    // The config sets the obsolete `upgrade_sock`: said once, at the start, not per image.
    assert_eq!(
        all.matches(
            "upgrade_sock is ignored (listening sockets pass from the master by inheritance)"
        )
        .count(),
        1,
        "{all}"
    );
}

#[test]
fn the_shipped_logrotate_snippet_makes_graygate_reopen_its_logs() {
    let g = setup("logrotate", 1, "");
    let _gw = start(&g.conf, &[g.port]);
    let master = g.master();
    for _ in 0..3 {
        assert_eq!(get(g.port, "/").status, 200);
    }
    let access = g.dir.path("access.log");
    wait_for("access log", Duration::from_secs(10), || {
        read(&access).lines().count() == 3
    });
    let snippet = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/logrotate/graygate"))
        .replace("/tmp/graygate/*.log", &g.dir.s("*.log"))
        .replace("/tmp/graygate.pid", &g.dir.s("gw.pid"));
    let conf = g.dir.write("logrotate.conf", &snippet);
    std::fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = std::process::Command::new("logrotate")
        .arg("-f")
        .arg("-s")
        .arg(g.dir.path("logrotate.state"))
        .arg(&conf)
        .output()
        .expect("logrotate (Debian package logrotate, installed by scripts/deps.sh)");
    assert!(
        out.status.success(),
        "logrotate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(&g.dir.path("access.log.1")).lines().count(), 3);
    // Both the worker and the master write to the new files.
    assert_eq!(get(g.port, "/").status, 200);
    wait_for(
        "the worker writes to the new access log",
        Duration::from_secs(10),
        || read(&access).lines().count() == 1,
    );
    master_writes_to_new_log(&g, master);
    assert_eq!(
        read(&g.dir.path("access.log.1")).lines().count(),
        3,
        "nothing lost or doubled"
    );
}

#[test]
fn a_new_worker_survives_reload_and_reopen_signals_before_it_is_ready() {
    let g = setup("earlysig", 1, "");
    let _gw = start(&g.conf, &[g.port]);
    let master = g.master();
    let w = g.worker(master);
    signal(w, SIGKILL).unwrap();
    // Signal the replacement as soon as it exists, before it can report ready.
    let mut new = 0;
    wait_for("a replacement worker", Duration::from_secs(10), || {
        new = children(master).into_iter().find(|p| *p != w).unwrap_or(0);
        new > 0
    });
    for sig in [SIGHUP, 10, 12] {
        let _ = signal(new, sig);
    }
    wait_for("serving again", Duration::from_secs(10), || serving(g.port));
    assert!(alive(new), "the worker died of an early signal");
    assert_eq!(children(master), vec![new]);
}

#[test]
fn two_instances_upgraded_at_once_do_not_collide() {
    // The README's recipe: two configs that share `upgrade_sock` (no longer used: no socket
    // passes between processes but by inheritance from the master).
    let a = setup("twoa", 1, "");
    let b = setup("twob", 1, "");
    let shared = a.dir.s("shared-upgrade.sock");
    for g in [&a, &b] {
        std::fs::write(&g.conf, read(&g.conf).replace(&g.dir.s("gw.sock"), &shared)).unwrap();
    }
    let _ga = start(&a.conf, &[a.port]);
    let _gb = start(&b.conf, &[b.port]);
    let (ma, mb) = (a.master(), b.master());
    let loads = [Load::start(a.port, 8, false), Load::start(b.port, 8, false)];
    for l in &loads {
        l.wait_more(100);
    }
    let (ca, cb) = (a.c().to_string(), b.c().to_string());
    let ta = std::thread::spawn(move || ctl(&["-s", "upgrade", "-c", &ca]));
    let tb = std::thread::spawn(move || ctl(&["-s", "upgrade", "-c", &cb]));
    for (ok, out) in [ta.join().unwrap(), tb.join().unwrap()] {
        assert!(ok, "{out}");
    }
    for l in loads {
        l.wait_more(100);
        let res = l.finish();
        assert!(
            res.failed.is_empty(),
            "{:?}",
            &res.failed[..res.failed.len().min(5)]
        );
        assert_eq!(res.refused, 0);
    }
    assert_eq!(read(&a.dir.path("gw.pid")).trim(), ma.to_string());
    assert_eq!(read(&b.dir.path("gw.pid")).trim(), mb.to_string());
}

#[test]
fn an_upgrade_of_a_file_broken_on_disk_is_refused_and_the_old_generation_serves() {
    let g = setup("brokenup", 1, "");
    let mut gw = start(&g.conf, &[g.port]);
    let master = g.master();
    let w = g.worker(master);
    // The master's checked bytes are good; the file on disk no longer is.
    std::fs::write(&g.conf, "this: is: not: yaml: [\n").unwrap();
    // Straight to the control socket (`-s upgrade` would refuse in its own -t first).
    let mut s = std::os::unix::net::UnixStream::connect(g.dir.path("gw.pid.ctl")).unwrap();
    s.write_all(b"upgrade\n").unwrap();
    let mut answer = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut answer).unwrap();
    assert!(
        answer.starts_with("error configuration unchanged: "),
        "{answer}"
    );
    // And by signal.
    signal(master, 12).unwrap();
    wait_for("the refusal logged", Duration::from_secs(10), || {
        g.log().matches("upgrade failed").count() == 2
    });
    assert!(!gw.exited());
    assert_eq!(children(master), vec![w], "the old generation serves");
    assert!(serving(g.port));
    assert_eq!(read(&g.dir.path("gw.pid")).trim(), master.to_string());
}

#[test]
fn an_upgrade_runs_the_new_symlink_target_with_the_checked_bytes() {
    let g = setup("symup", 1, "grace_period: 1s\nshutdown_timeout: 1s\n");
    // Deployed as a symlink to a versioned binary, started through the symlink.
    let v1 = g.dir.path("graygate-v1");
    std::fs::copy(graygate(), &v1).unwrap();
    let link = g.dir.path("graygate");
    std::os::unix::fs::symlink(&v1, &link).unwrap();
    let child = std::process::Command::new(&link)
        .arg("-c")
        .arg(&g.conf)
        .spawn()
        .unwrap();
    let mut gw = Proc { child };
    let master = g.master();
    let before = g.worker(master);
    // v2 checks and serves like the real one, but when run as the master it notes that it ran
    // and breaks the config file first: as if the file were saved right after the check.
    let v2 = g.dir.path("graygate-v2");
    let marker = g.dir.path("v2-ran");
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in -t|--worker) exec {real} \"$@\";; esac; done\necho $$ > {marker}\necho 'this: is: not: yaml: [' > {conf}\nexec {real} \"$@\"\n",
        real = graygate(),
        marker = marker.display(),
        conf = g.conf.display(),
    );
    write_executable(&v2, &script);
    let tmp = g.dir.path("graygate.new");
    std::os::unix::fs::symlink(&v2, &tmp).unwrap();
    std::fs::rename(&tmp, &link).unwrap();
    let load = Load::start(g.port, 8, false);
    load.wait_more(100);
    let (ok, out) = ctl(&["-s", "upgrade", "-c", g.c()]);
    assert!(ok, "{out}");
    assert_eq!(
        read(&marker).trim(),
        master.to_string(),
        "the symlink's new target was executed, in place"
    );
    load.wait_more(100);
    let res = load.finish();
    assert!(
        res.failed.is_empty(),
        "{:?}",
        &res.failed[..res.failed.len().min(5)]
    );
    assert_eq!(res.refused, 0);
    assert!(!gw.exited(), "the new image runs the checked bytes");
    wait_for("the old worker gone", Duration::from_secs(30), || {
        let c = children(master);
        c.len() == 1 && c[0] != before
    });
    assert!(serving(g.port));
    assert_eq!(read(&g.dir.path("gw.pid")).trim(), master.to_string());
}

/// A worker whose master died before it could ask to die with it (the race `PR_SET_PDEATHSIG`
/// leaves open) finds its parent is no longer the master and exits at once instead of serving
/// unmanaged.
#[test]
fn a_worker_whose_master_is_already_gone_exits_at_once() {
    let out = std::process::Command::new(graygate())
        .arg("--worker")
        // Not this test's pid, the worker's real parent: as if its master had died.
        .env("GRAYGATE_MASTER_PID", "1")
        .output()
        .expect("run the worker");
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("its master is gone; exiting"), "{err}");
}
