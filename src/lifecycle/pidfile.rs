//! The pid file, locked by the running master for its whole life (across re-execs).
//!
//! A second `graygate -c SAME_FILE` finds the lock taken and refuses before it touches
//! anything: the pid file, the control socket and the listening sockets stay the first one's.
//! A pid file without a lock is stale (its master died) and is taken over with a notice.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::error::Error;
use super::os;

pub struct PidFile {
    pub path: String,
    file: File,
    /// Why a stale pid file was taken over, to log once the error log is open.
    pub stale: Option<String>,
}

impl PidFile {
    /// Opens and locks `path`, or says who holds it.
    pub fn lock(path: &str) -> Result<PidFile, Error> {
        let err = |e| Error::PidFile {
            path: path.to_string(),
            err: e,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(err)?;
        let fd = OwnedFd::from(file.try_clone().map_err(err)?);
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let old = text.trim().parse::<i32>().ok().filter(|p| *p > 0);
        if !os::try_lock(&fd).map_err(err)? {
            return Err(Error::AlreadyRunning {
                pid_file: path.to_string(),
                pid: old,
            });
        }
        let stale = old.map(|pid| {
            let why = if os::process_exists(pid) {
                "holds no lock on it"
            } else {
                "is not running"
            };
            format!("taking over stale pid file {path}: pid {pid} {why}")
        });
        Ok(PidFile {
            path: path.to_string(),
            file,
            stale,
        })
    }

    /// Takes over the locked pid file of the master image this one replaced.
    pub fn adopt(path: &str, fd: RawFd) -> Result<PidFile, Error> {
        let owned = os::adopt_fd(fd).map_err(|e| Error::PidFile {
            path: path.to_string(),
            err: e,
        })?;
        Ok(PidFile {
            path: path.to_string(),
            file: File::from(owned),
            stale: None,
        })
    }

    /// The descriptor that holds the lock (kept open across a re-exec).
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Writes our pid (once serving), in one write after the truncation.
    pub fn write(&mut self) {
        let text = format!("{}\n", std::process::id());
        let r = self
            .file
            .set_len(0)
            .and_then(|_| self.file.seek(SeekFrom::Start(0)))
            .and_then(|_| self.file.write_all(text.as_bytes()));
        if let Err(e) = r {
            log::error!("cannot write pid file {}: {e}", self.path);
        }
    }

    /// Removes the pid file and the control socket next to it (both are ours: we hold the lock).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(super::control::ctl_path(&self.path));
        let _ = std::fs::remove_file(&self.path);
    }
}
