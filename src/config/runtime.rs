//! Where graygate keeps its runtime files (pid file, control socket, upgrade socket) when the
//! file does not say: a directory only this user can enter, never a world-writable one.

use std::path::PathBuf;

/// `/run/graygate` for root; `$XDG_RUNTIME_DIR/graygate` for other users (systemd gives each
/// user a private `/run/user/UID`); `/tmp/graygate-UID` if that is unset. The directory is
/// created 0700, and refused if it is a symlink or another user's, by
/// [`crate::lifecycle::runtime_dir`].
pub fn runtime_dir() -> PathBuf {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/graygate");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(d) if d.is_absolute() => d.join("graygate"),
        _ => PathBuf::from(format!("/tmp/graygate-{uid}")),
    }
}

/// The default `pid_file`, in [`runtime_dir`].
pub fn default_pid_file() -> String {
    runtime_dir().join("graygate.pid").display().to_string()
}
