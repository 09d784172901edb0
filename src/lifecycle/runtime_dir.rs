//! The private runtime directory, made safe before the master writes anything in it.
//!
//! The default pid file, control socket and state file live in
//! [`crate::config::runtime_dir`]. The directory is what keeps other users away from them
//! (a Unix socket's own mode is not honoured everywhere): it is created 0700, and one that already exists is
//! used only if it is a real directory of this user (a symlink or another user's directory
//! planted there in advance would hand our sockets to them). The embedded demo's log
//! directory gets the same treatment. Paths the user sets are trusted as nginx trusts them,
//! except that a pid file or socket path in a world-writable directory may not be a symlink.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::config::{log_dir, runtime_dir};
use crate::plan::Plan;

/// Makes every directory `plan`'s runtime files need safe to use; an error names the path.
pub fn prepare(plan: &Plan) -> Result<(), String> {
    let rt = runtime_dir();
    let s = &plan.settings;
    // The control socket and state file live beside the pid file.
    let dir = log_dir(&s.pid_file);
    if dir == rt {
        ensure_private(&rt)?;
    }
    refuse_planted_symlink(Path::new(&s.pid_file), &dir)?;
    if plan.create_log_dirs {
        // The embedded default's logs, in a fixed directory under /tmp.
        let logs = s.error_log.iter().chain(
            plan.servers
                .iter()
                .flat_map(|sv| sv.access_log.iter().chain(sv.error_log.iter())),
        );
        for p in logs {
            ensure_private(&log_dir(p))?;
        }
    }
    Ok(())
}

/// Creates `dir` 0700, or accepts it if it is already a directory of ours (made 0700).
pub fn ensure_private(dir: &Path) -> Result<(), String> {
    let show = dir.display();
    if let Err(e) = fs::DirBuilder::new().mode(0o700).create(dir) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(format!("cannot create runtime directory {show}: {e}"));
        }
    }
    let m = fs::symlink_metadata(dir).map_err(|e| format!("cannot inspect {show}: {e}"))?;
    if m.file_type().is_symlink() {
        return Err(format!(
            "{show} is a symlink; refusing to keep runtime files there (remove it)"
        ));
    }
    if !m.is_dir() {
        return Err(format!("{show} is not a directory"));
    }
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return Err(format!(
            "{show} belongs to uid {}, not to uid {me} that runs graygate; refusing it",
            m.uid()
        ));
    }
    if m.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot make {show} private: {e}"))?;
    }
    Ok(())
}

/// A symlink at `file` in a world-writable `dir` was put there by someone else.
fn refuse_planted_symlink(file: &Path, dir: &Path) -> Result<(), String> {
    let world_writable = fs::metadata(dir).is_ok_and(|m| m.mode() & 0o002 != 0);
    let is_link = fs::symlink_metadata(file).is_ok_and(|m| m.file_type().is_symlink());
    if world_writable && is_link {
        return Err(format!(
            "{} is a symlink in world-writable {}; refusing to write through it",
            file.display(),
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_symlink_and_fixes_loose_modes() {
        let base = std::env::temp_dir().join(format!("gg-rt-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let d = base.join("priv");
        ensure_private(&d).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private(&d).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        let link = base.join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = ensure_private(&link).unwrap_err();
        assert!(e.contains("symlink"), "{e}");
        let file = base.join("file");
        fs::write(&file, "").unwrap();
        assert!(ensure_private(&file)
            .unwrap_err()
            .contains("not a directory"));
        fs::remove_dir_all(&base).unwrap();
    }
}
