//! The private runtime directory, as another user would meet it: graygate runs as `nobody`
//! with its own XDG_RUNTIME_DIR, and the directory is planted in advance (as a symlink, or as
//! someone else's directory) or left for graygate to create.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// A config with no pid_file (the default: in the runtime dir) and one demo backend.
fn setup(tag: &str) -> (TempDir, std::path::PathBuf, std::path::PathBuf, u16) {
    let dir = TempDir::new(tag);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let xdg = dir.path("xdg");
    std::fs::create_dir(&xdg).unwrap();
    std::os::unix::fs::chown(&xdg, Some(NOBODY), Some(NOBODY)).unwrap();
    let port = free_port();
    let conf = dir.write(
        "rt.yaml",
        &format!("demo_backends:\n  - {{ listen: \"127.0.0.1:{port}\", name: a }}\n"),
    );
    (dir, xdg, conf, port)
}

fn as_nobody(conf: &std::path::Path, xdg: &std::path::Path) -> Command {
    let mut c = Command::new(graygate());
    c.arg("-c")
        .arg(conf)
        .env("XDG_RUNTIME_DIR", xdg)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null());
    c
}

#[test]
fn a_planted_runtime_dir_is_refused() {
    if !is_root() {
        eprintln!("not root: cannot run graygate as another user; skipped");
        return;
    }
    let (dir, xdg, conf, _) = setup("rt-planted");
    // A symlink to a directory its planter controls.
    let target = dir.path("elsewhere");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::symlink(&target, xdg.join("graygate")).unwrap();
    let out = as_nobody(&conf, &xdg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("is a symlink"), "{err}");
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "nothing written"
    );
    // Another user's directory (root's, here).
    std::fs::remove_file(xdg.join("graygate")).unwrap();
    std::fs::create_dir(xdg.join("graygate")).unwrap();
    let out = as_nobody(&conf, &xdg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("belongs to uid 0"), "{err}");
}

#[test]
fn the_runtime_dir_is_created_private() {
    if !is_root() {
        eprintln!("not root: cannot run graygate as another user; skipped");
        return;
    }
    let (_dir, xdg, conf, port) = setup("rt-fresh");
    let child = as_nobody(&conf, &xdg).spawn().unwrap();
    let mut p = Proc { child };
    let rt = xdg.join("graygate");
    wait_for("pid file", Duration::from_secs(20), || {
        assert!(!p.exited(), "graygate exited");
        rt.join("graygate.pid").exists() && port_open(port)
    });
    let m = std::fs::symlink_metadata(&rt).unwrap();
    assert!(m.is_dir());
    assert_eq!(m.mode() & 0o777, 0o700);
    assert_eq!(m.uid(), NOBODY);
    assert!(
        rt.join("graygate.pid.ctl").exists(),
        "control socket inside"
    );
    signal(p.pid(), libc::SIGQUIT).unwrap();
    wait_for("exit", Duration::from_secs(20), || p.exited());
}
