//! Log files written off the request path, through a bounded buffer.
//!
//! A request appends its line to an in-memory buffer under a short lock; a writer thread of the
//! file swaps the buffer out and writes it, so a slow disk never stalls a request. The buffer
//! is bounded ([`BUFFER_LIMIT`]): while the disk stalls or is full, lines that do not fit are
//! dropped and counted, the process error log says how many at most once a second, and writing
//! resumes when the disk does. Each file has its own thread so that one stalled file (a hung
//! mount, a pipe nobody reads) holds up no other, the process error log included.
//!
//! `reopen` (for logrotate) is carried out by the file's thread between two writes, so every
//! line lands in exactly one file: the old one if it was appended before the reopen, the new
//! one (created if it was deleted) otherwise.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

/// How often buffered lines reach the disk.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Most bytes waiting for the disk per file; the buffer being written holds as much again.
pub const BUFFER_LIMIT: usize = 1 << 20;

/// How long an exiting process waits for a stalled disk before it gives up its last lines.
const EXIT_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// One log file, shared by every server block and snapshot that names the same path.
pub struct LogFile {
    path: PathBuf,
    buf: Mutex<Vec<u8>>,
    out: Mutex<File>,
    reopen: AtomicBool,
    /// Set to wake the writer before its next period (a reopen).
    kick: Mutex<bool>,
    wake: Condvar,
    /// Lines lost since the last report (buffer full, or the write failed).
    dropped: AtomicU64,
    /// Second of the last report, so that a stall costs one line a second, not one a request.
    reported_at: AtomicU64,
    /// Why the last lines were lost, for the report: the last write error, if any.
    why: Mutex<Option<String>>,
}

impl std::fmt::Debug for LogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogFile({})", self.path.display())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl LogFile {
    fn new(path: PathBuf, out: File) -> LogFile {
        LogFile {
            path,
            buf: Mutex::new(Vec::with_capacity(64 * 1024)),
            out: Mutex::new(out),
            reopen: AtomicBool::new(false),
            kick: Mutex::new(false),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
            reported_at: AtomicU64::new(0),
            why: Mutex::new(None),
        }
    }

    /// Appends one record; `fill` writes it into the shared buffer. `false`: the buffer was
    /// full (the disk does not keep up) and the record was dropped, and counted.
    #[inline]
    pub fn append(&self, fill: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut b = lock(&self.buf);
        let before = b.len();
        fill(&mut b);
        if b.len() <= BUFFER_LIMIT {
            return true;
        }
        b.truncate(before);
        drop(b);
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.report_dropped();
        false
    }

    /// Lines lost and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Says in the process error log how many lines were lost, at most once a second: called
    /// by whoever drops a line (the writer thread may be stuck in a write) and by the writer
    /// after each flush, for the last ones.
    fn report_dropped(&self) {
        if self.dropped.load(Ordering::Relaxed) == 0 {
            return;
        }
        let now = now_secs();
        let last = self.reported_at.load(Ordering::Relaxed);
        if last == now
            || self
                .reported_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let n = self.dropped.swap(0, Ordering::AcqRel);
        if n == 0 {
            return;
        }
        let why = lock(&self.why).take().unwrap_or_else(|| {
            format!("buffer of {BUFFER_LIMIT} bytes full: the disk does not keep up")
        });
        super::error::report(&format!(
            "{n} lines dropped from log {} ({why})",
            self.path.display()
        ));
    }

    /// Writes what is buffered; `spare` is swapped in so no allocation happens per flush.
    fn flush(&self, spare: &mut Vec<u8>) {
        // Holding `out` across the swap keeps lines in order when two threads flush at once.
        let mut out = lock(&self.out);
        std::mem::swap(&mut *lock(&self.buf), spare);
        if !spare.is_empty() {
            if let Err(e) = out.write_all(spare) {
                // A full disk: these lines are lost (what part of them got out is unknown).
                let lines = spare.iter().filter(|&&c| c == b'\n').count() as u64;
                self.dropped.fetch_add(lines, Ordering::Relaxed);
                *lock(&self.why) = Some(format!("write failed: {e}"));
            }
            spare.clear();
        }
        if self.reopen.swap(false, Ordering::AcqRel) {
            match open_append(&self.path) {
                Ok(f) => *out = f,
                Err(e) => {
                    super::error::report(&format!("cannot reopen log {}: {e}", self.path.display()))
                }
            }
        }
        drop(out);
        self.report_dropped();
    }

    /// Waits for the next period, or a kick.
    fn wait(&self) {
        let kick = lock(&self.kick);
        let (mut kick, _) = self
            .wake
            .wait_timeout_while(kick, FLUSH_EVERY, |k| !*k)
            .unwrap_or_else(|e| e.into_inner());
        *kick = false;
    }

    fn wake_up(&self) {
        *lock(&self.kick) = true;
        self.wake.notify_all();
    }
}

#[derive(Default)]
struct Registry {
    files: Mutex<HashMap<PathBuf, Weak<LogFile>>>,
    started: AtomicBool,
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

/// Opens (or shares the already open) log file at `path`, creating `create_dir` first if given.
pub fn open(path: &str, create_dir: Option<&Path>) -> io::Result<Arc<LogFile>> {
    let p = PathBuf::from(path);
    let mut files = lock(&registry().files);
    if let Some(f) = files.get(&p).and_then(Weak::upgrade) {
        return Ok(f);
    }
    if let Some(dir) = create_dir {
        std::fs::create_dir_all(dir)?;
    }
    let out = open_append(&p).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    let f = Arc::new(LogFile::new(p.clone(), out));
    files.insert(p, Arc::downgrade(&f));
    if registry().started.load(Ordering::Acquire) {
        spawn_writer(&f);
    }
    Ok(f)
}

fn live() -> Vec<Arc<LogFile>> {
    let mut files = lock(&registry().files);
    files.retain(|_, w| w.strong_count() > 0);
    files.values().filter_map(Weak::upgrade).collect()
}

/// The writer thread of one file; it ends soon after the last user of the file is gone.
fn spawn_writer(f: &Arc<LogFile>) {
    let w = Arc::downgrade(f);
    let spawned = std::thread::Builder::new()
        .name("graygate-log".into())
        .spawn(move || {
            let mut spare = Vec::with_capacity(64 * 1024);
            while let Some(f) = w.upgrade() {
                f.wait();
                f.flush(&mut spare);
            }
        });
    if let Err(e) = spawned {
        eprintln!(
            "graygate: cannot start the writer of {}: {e}",
            f.path.display()
        );
    }
}

/// Starts the writer threads. Called once the process is in its final form (after
/// daemonizing: a thread started before `fork` would not exist in the child).
pub fn start_writer() {
    // Under the registry lock, as `open` checks `started`: each file gets exactly one writer.
    let mut files = lock(&registry().files);
    if registry().started.swap(true, Ordering::AcqRel) {
        return;
    }
    files.retain(|_, w| w.strong_count() > 0);
    for f in files.values().filter_map(Weak::upgrade) {
        spawn_writer(&f);
    }
}

/// Asks every log file to be reopened at the next write (logrotate's `postrotate`).
pub fn reopen_all() {
    for f in live() {
        f.reopen.store(true, Ordering::Release);
        f.wake_up();
    }
}

/// Writes everything buffered now (at exit), waiting at most [`EXIT_FLUSH_LIMIT`] for a
/// stalled disk: an exit must not hang on a log.
pub fn flush_all() {
    let run = || {
        let mut spare = Vec::new();
        for f in live() {
            f.flush(&mut spare);
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("graygate-log-exit".into())
        .spawn(move || {
            run();
            let _ = tx.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = rx.recv_timeout(EXIT_FLUSH_LIMIT);
        }
        Err(_) => run(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("graygate-logfile-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn lines_survive_a_rotation_exactly_once() {
        let dir = temp("rot");
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

    #[test]
    fn a_full_buffer_drops_and_counts_instead_of_growing() {
        let dir = temp("full");
        let path = dir.join("b.log");
        // Not in the registry: no other test's `flush_all` empties it meanwhile.
        let f = LogFile::new(path.clone(), open_append(&path).unwrap());
        let line = [b'x'; 1000];
        let fits = BUFFER_LIMIT / line.len();
        let kept = (0..fits + 50)
            .filter(|_| f.append(|b| b.extend_from_slice(&line)))
            .count();
        assert_eq!(kept, fits);
        assert!(lock(&f.buf).len() <= BUFFER_LIMIT);
        // The first drop is reported at once (to stderr here: no process log in unit tests),
        // the rest of this second's wait for the next report.
        assert!(f.dropped() < 50);
        f.flush(&mut Vec::new());
        assert!(f.append(|b| b.extend_from_slice(&line)), "room again");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            fits * line.len()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
