//! The shipped supervisor program (conf/supervisor/graygate.conf) under Debian's real
//! supervisord: upgrades keep the program RUNNING with the same pid, a crashed worker is
//! replaced by the master without a restart of the program, and a stop really stops the
//! serving generation.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn supervisorctl(conf: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("supervisorctl")
        .arg("-c")
        .arg(conf)
        .args(args)
        .output()
        .expect("supervisorctl (Debian package supervisor)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(state, pid)` of the graygate program.
fn status(conf: &std::path::Path) -> (String, i32) {
    let s = supervisorctl(conf, &["status", "graygate"]);
    let state = s.split_whitespace().nth(1).unwrap_or("").to_string();
    let pid = s
        .split("pid ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0);
    (state, pid)
}

#[test]
fn supervisor_sees_upgrades_crashes_and_stops_truthfully() {
    let dir = TempDir::new("supervisor");
    let b = free_port();
    let _backend = backend(&dir, "app", b);
    let port = free_port();
    let gw_conf = dir.write(
        "gw.yaml",
        &(gateway_yaml(&dir, port, "ip_hash", &[(b, 1)], "")
            + "grace_period: 2s\nshutdown_timeout: 2s\n"),
    );
    let program = read(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/supervisor/graygate.conf"
    )))
    .replace("/usr/local/bin/graygate", graygate())
    .replace("/etc/graygate/graygate.yaml", gw_conf.to_str().unwrap())
    .replace("/var/log/graygate.supervisor.log", &dir.s("program.log"));
    dir.write("graygate.conf", &program);
    let sup_conf = dir.write(
        "supervisord.conf",
        &format!(
            "[unix_http_server]\nfile={d}/supervisor.sock\n\n[supervisord]\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\nnodaemon=true\n\n[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n[supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n\n[include]\nfiles = {d}/graygate.conf\n",
            d = dir.0.display()
        ),
    );
    let child = Command::new("supervisord")
        .arg("-c")
        .arg(&sup_conf)
        .spawn()
        .expect("supervisord (Debian package supervisor)");
    let _sup = Proc { child };

    wait_for("RUNNING", Duration::from_secs(30), || {
        status(&sup_conf).0 == "RUNNING" && port_open(port)
    });
    let (_, master) = status(&sup_conf);
    assert!(master > 0);
    assert_eq!(get(port, "/").status, 200);
    let first_worker = children(master);
    assert_eq!(first_worker.len(), 1);

    // A binary upgrade: same program pid, still RUNNING, a new worker serves.
    let (ok, out) = ctl(&["-s", "upgrade", "-c", gw_conf.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert_eq!(status(&sup_conf), ("RUNNING".to_string(), master));
    assert_eq!(get(port, "/").status, 200);
    wait_for("old worker gone", Duration::from_secs(30), || {
        first_worker.iter().all(|p| !alive(*p))
    });
    let worker = children(master);
    assert_eq!(worker.len(), 1);
    assert_ne!(worker, first_worker);

    // A crash of the serving worker: the master replaces it (as nginx); the program stays
    // RUNNING with the same pid.
    signal(worker[0], SIGKILL).expect("kill the serving worker");
    wait_for(
        "a new worker after the crash",
        Duration::from_secs(10),
        || {
            let w = children(master);
            w.len() == 1 && w != worker
        },
    );
    assert_eq!(status(&sup_conf), ("RUNNING".to_string(), master));
    wait_for("serving again", Duration::from_secs(10), || {
        get_from(port, "/", None, &[]).is_ok_and(|r| r.status == 200)
    });

    // A stop stops everything that serves.
    let workers = children(master);
    supervisorctl(&sup_conf, &["stop", "graygate"]);
    wait_for("STOPPED", Duration::from_secs(30), || {
        status(&sup_conf).0 == "STOPPED"
    });
    assert!(!alive(master));
    assert!(
        workers.iter().all(|p| !alive(*p)),
        "workers survived the stop"
    );
    assert!(!port_open(port), "port still open after stop");
    supervisorctl(&sup_conf, &["shutdown"]);
}
