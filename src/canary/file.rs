//! The state file on disk, written so that nobody else can steer it and a crash leaves a whole
//! file, and the lock that says which process drives the canaries.
//!
//! - Reading refuses a state file that is a symlink or not owned by our user (someone who could
//!   plant one could set our canaries).
//! - Writing goes to a temporary file with an unpredictable name, created exclusively (`O_EXCL`,
//!   `O_NOFOLLOW`, mode 0600) in the same directory, synced, renamed over the state file, and
//!   the directory synced: after a crash or power loss there is the old file or the new one.
//! - [`lock`]: `<state file>.lock`, held with `flock` by the one worker generation that drives
//!   ramps and makes live changes (see `Store::lead`).

use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Refuses a file we did not make: `meta` of `path` must be a regular file owned by our user.
fn ours(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    let me = crate::lifecycle::os::euid();
    if !meta.file_type().is_file() {
        return Err(format!(
            "{} is not a regular file; refusing it",
            path.display()
        ));
    }
    if meta.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, not to uid {me} that runs graygate; refusing it",
            path.display(),
            meta.uid()
        ));
    }
    Ok(())
}

/// Opens `path` for reading without following a symlink; `None` if absent.
fn open_ours(path: &Path) -> Result<Option<File>, String> {
    let show = path.display();
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(format!("{show} is a symlink; refusing it"))
        }
        Err(e) => return Err(format!("{show}: {e}")),
    };
    let meta = f.metadata().map_err(|e| format!("{show}: {e}"))?;
    ours(path, &meta)?;
    Ok(Some(f))
}

/// The bytes of the state file at `path`; `None` if absent.
pub fn read(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let Some(mut f) = open_ours(path)? else {
        return Ok(None);
    };
    let mut b = Vec::new();
    f.read_to_end(&mut b)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(b))
}

/// A name in `path`'s directory nobody can guess in advance (std's `RandomState` keys come
/// from the operating system's random source).
fn temp_name(path: &Path) -> PathBuf {
    let r = std::collections::hash_map::RandomState::new().hash_one((
        std::process::id(),
        std::time::SystemTime::now(),
        std::thread::current().id(),
    ));
    let base = path.file_name().map(|n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(
        ".{}.{r:016x}.tmp",
        base.as_deref().unwrap_or("state")
    ))
}

/// Replaces the file at `path` by `bytes`, atomically and durably (see the module doc).
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let fail = |e: String| format!("cannot write state file {}: {e}", path.display());
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => return Err(fail("it is a symlink".into())),
        Ok(m) => ours(path, &m).map_err(fail)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    let tmp = temp_name(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| fail(format!("{}: {e}", tmp.display())))?;
    let done = f
        .write_all(bytes)
        .and_then(|_| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e.to_string()));
    }
    // The rename is durable once the directory is.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail(format!("syncing {}: {e}", dir.display())))
}

/// The lock file of the state file at `path`, opened (created 0600 if absent) but not locked.
pub fn lock(path: &Path) -> Result<OwnedFd, String> {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    let p = PathBuf::from(p);
    let show = p.display();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&p)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => format!("{show} is a symlink; refusing it"),
            _ => format!("{show}: {e}"),
        })?;
    let meta = f.metadata().map_err(|e| format!("{show}: {e}"))?;
    ours(&p, &meta)?;
    Ok(OwnedFd::from(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gg-statefile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writes_whole_private_files_under_unguessable_names() {
        let d = dir("write");
        let p = d.join("gw.state.json");
        write(&p, b"one").unwrap();
        write(&p, b"two").unwrap();
        assert_eq!(read(&p).unwrap().as_deref(), Some(&b"two"[..]));
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // No temporary file is left behind, and two names never repeat.
        let left: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_ne!(temp_name(&p), temp_name(&p));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_a_symlinked_state_file() {
        let d = dir("link");
        let target = d.join("elsewhere");
        std::fs::write(&target, b"{}").unwrap();
        let p = d.join("gw.state.json");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = read(&p).unwrap_err();
        assert!(e.contains("is a symlink"), "{e}");
        let e = write(&p, b"planted").unwrap_err();
        assert!(e.contains("is a symlink"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"{}");
        assert!(std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_symlink());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_another_users_state_file() {
        // Only root can give a file away; as another user there is nothing to test.
        if crate::lifecycle::os::euid() != 0 {
            return;
        }
        let d = dir("owner");
        let p = d.join("gw.state.json");
        std::fs::write(&p, b"{}").unwrap();
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let e = read(&p).unwrap_err();
        assert!(e.contains("belongs to uid 65534"), "{e}");
        let e = write(&p, b"x").unwrap_err();
        assert!(e.contains("belongs to uid 65534"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
