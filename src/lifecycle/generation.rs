//! A worker process as the master sees it: started with the checked config bytes and the
//! listening sockets as inherited fds, signalled and reaped by pid (a re-executed master
//! adopts workers it did not spawn, so no `std::process::Child` here).

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::control::CTL_ENV;
use super::error::Error;
use super::os;
use super::sockets::{Sockets, LISTEN_FDS_ENV};
use super::source::{Source, CONF_FD_ENV};

/// How long a new worker may take to report ready before it is killed. A worker binds
/// nothing and reads no file, so it is ready within milliseconds; this is for a hung binary.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Worker {
    pub pid: i32,
    /// Its config memfd (to rewrite before a SIGHUP); `None` for a worker adopted across a
    /// re-exec, which is only ever drained.
    pub conf: Option<File>,
    pub ready: bool,
    /// The outcome of the last reload it reported.
    pub reloaded: Option<String>,
}

impl Worker {
    /// Starts `exe --worker` on the sockets of `addrs` with `source`.
    pub fn spawn(
        exe: &Path,
        source: &Source,
        sockets: &Sockets,
        addrs: &[SocketAddr],
        ctl: &Path,
    ) -> Result<Worker, Error> {
        let spawn_err = |err| Error::Spawn {
            what: format!("worker {}", exe.display()),
            err,
        };
        let conf = source.to_memfd().map_err(spawn_err)?;
        let (env, mut fds) = sockets.env_for(addrs);
        fds.push(conf.as_raw_fd());
        let mut c = Command::new(exe);
        // `ps` shows the binary's path, not the `/proc/self/exe` it was started through.
        if let Ok(own) = std::env::current_exe() {
            c.arg0(own);
        }
        c.arg("--worker");
        if let Some(p) = &source.path {
            c.arg("-c").arg(p);
        }
        c.env(CTL_ENV, ctl)
            .env(CONF_FD_ENV, conf.as_raw_fd().to_string())
            .env(LISTEN_FDS_ENV, env)
            .stdin(Stdio::null());
        // SAFETY: the closure only calls fcntl (async-signal-safe) on descriptor numbers that
        // are open in the parent and so in the forked child; it allocates nothing.
        unsafe {
            c.pre_exec(move || {
                for fd in &fds {
                    os::set_inheritable(*fd, true)?;
                }
                Ok(())
            });
        }
        let child = c.spawn().map_err(spawn_err)?;
        Ok(Worker {
            pid: child.id() as i32,
            conf: Some(conf),
            ready: false,
            reloaded: None,
        })
    }

    /// A worker of the master image this one replaced.
    pub fn adopted(pid: i32) -> Worker {
        Worker {
            pid,
            conf: None,
            ready: true,
            reloaded: None,
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        let _ = os::kill(self.pid, sig);
    }

    /// `Some` once it has exited (and is reaped).
    pub fn try_wait(&mut self) -> Option<os::ExitStatus> {
        os::try_wait(self.pid)
    }

    /// Reaps it after a SIGKILL.
    pub fn wait(&mut self) {
        while self.try_wait().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Gives it new config bytes (applied on its next SIGHUP).
    pub fn set_config(&mut self, source: &Source) -> Result<(), Error> {
        let f = self
            .conf
            .as_ref()
            .ok_or_else(|| Error::Worker(format!("worker {} takes no new config", self.pid)))?;
        source.write_to(f).map_err(|err| Error::Os {
            what: "writing the config hand-over",
            err,
        })
    }
}
