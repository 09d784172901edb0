//! Log files written off the request path.
//!
//! A request appends its line to an in-memory buffer under a short lock; one background thread
//! swaps the buffer out and writes it, so a slow disk never stalls a request. `reopen` (for
//! logrotate) is carried out by that same thread between two writes, so every line lands in
//! exactly one file: the old one if it was appended before the reopen, the new one otherwise.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

/// How often buffered lines reach the disk.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// One log file, shared by every server block and snapshot that names the same path.
pub struct LogFile {
    path: PathBuf,
    buf: Mutex<Vec<u8>>,
    out: Mutex<File>,
    reopen: AtomicBool,
}

impl std::fmt::Debug for LogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogFile({})", self.path.display())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogFile {
    /// Appends one record; `fill` writes it into the shared buffer.
    #[inline]
    pub fn append(&self, fill: impl FnOnce(&mut Vec<u8>)) {
        let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        fill(&mut b);
    }

    /// Writes what is buffered; `spare` is swapped in so no allocation happens per flush.
    fn flush(&self, spare: &mut Vec<u8>) {
        // Holding `out` across the swap keeps lines in order when two threads flush at once.
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *b, spare);
        }
        if !spare.is_empty() {
            if let Err(e) = out.write_all(spare) {
                eprintln!("graygate: cannot write {}: {e}", self.path.display());
            }
            spare.clear();
        }
        if self.reopen.swap(false, Ordering::AcqRel) {
            match open_append(&self.path) {
                Ok(f) => *out = f,
                Err(e) => eprintln!("graygate: cannot reopen {}: {e}", self.path.display()),
            }
        }
    }
}

#[derive(Default)]
struct Registry {
    files: Mutex<HashMap<PathBuf, Weak<LogFile>>>,
    wake: Condvar,
    kick: Mutex<bool>,
    started: AtomicBool,
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

/// Opens (or shares the already open) log file at `path`, creating `create_dir` first if given.
pub fn open(path: &str, create_dir: Option<&Path>) -> io::Result<Arc<LogFile>> {
    let p = PathBuf::from(path);
    let mut files = registry().files.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = files.get(&p).and_then(Weak::upgrade) {
        return Ok(f);
    }
    if let Some(dir) = create_dir {
        std::fs::create_dir_all(dir)?;
    }
    let out = open_append(&p).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    let f = Arc::new(LogFile {
        path: p.clone(),
        buf: Mutex::new(Vec::with_capacity(64 * 1024)),
        out: Mutex::new(out),
        reopen: AtomicBool::new(false),
    });
    files.insert(p, Arc::downgrade(&f));
    Ok(f)
}

fn live() -> Vec<Arc<LogFile>> {
    let mut files = registry().files.lock().unwrap_or_else(|e| e.into_inner());
    files.retain(|_, w| w.strong_count() > 0);
    files.values().filter_map(Weak::upgrade).collect()
}

/// Starts the writer thread. Called once the process is in its final form (after daemonizing:
/// a thread started before `fork` would not exist in the child).
pub fn start_writer() {
    if registry().started.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("graygate-log".into())
        .spawn(|| {
            let mut spare = Vec::with_capacity(64 * 1024);
            loop {
                {
                    let r = registry();
                    let kick = r.kick.lock().unwrap_or_else(|e| e.into_inner());
                    let (mut kick, _) = r
                        .wake
                        .wait_timeout_while(kick, FLUSH_EVERY, |k| !*k)
                        .unwrap_or_else(|e| e.into_inner());
                    *kick = false;
                }
                for f in live() {
                    f.flush(&mut spare);
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("graygate: cannot start the log writer: {e}");
    }
}

/// Asks every log file to be reopened at the next write (logrotate's `postrotate`).
pub fn reopen_all() {
    for f in live() {
        f.reopen.store(true, Ordering::Release);
    }
    let r = registry();
    *r.kick.lock().unwrap_or_else(|e| e.into_inner()) = true;
    r.wake.notify_all();
}

/// Writes everything buffered now, from the calling thread (at exit).
pub fn flush_all() {
    let mut spare = Vec::new();
    for f in live() {
        f.flush(&mut spare);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_survive_a_rotation_exactly_once() {
        let dir = std::env::temp_dir().join(format!("graygate-logfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.log");
        let f = open(path.to_str().unwrap(), None).unwrap();
        f.append(|b| b.extend_from_slice(b"one\n"));
        flush_all();
        std::fs::rename(&path, dir.join("a.log.1")).unwrap();
        f.append(|b| b.extend_from_slice(b"two\n"));
        f.reopen.store(true, Ordering::Release);
        flush_all();
        f.append(|b| b.extend_from_slice(b"three\n"));
        flush_all();
        assert_eq!(
            std::fs::read_to_string(dir.join("a.log.1")).unwrap(),
            "one\ntwo\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
