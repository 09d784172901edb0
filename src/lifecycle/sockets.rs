//! The listening sockets, owned by the master for the life of the program (as in nginx).
//!
//! The master binds every address before anything else is started or changed, so that an
//! address in use is a start error, or a failed reload that leaves the running config serving.
//! Each worker generation inherits the same kernel sockets as fds named in an environment
//! variable; a worker that dies loses nothing but its own connections, and the accept queue is
//! never closed. Sockets whose address left the config are closed once the generation that
//! used them has drained.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::error::Error;
use crate::plan::Plan;

/// Environment variable naming the inherited listening sockets: `ADDR=FD ADDR=FD ...`.
pub const LISTEN_FDS_ENV: &str = "GRAYGATE_LISTEN_FDS";

/// Every address `plan` listens on.
pub fn plan_addrs(plan: &Plan) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = plan
        .servers
        .iter()
        .flat_map(|s| s.listen.iter().copied())
        .chain(plan.demos.iter().map(|d| d.listen))
        .chain(plan.admin.as_ref().map(|a| a.listen))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// `ADDR=FD` pairs as written by [`Sockets::env`].
pub fn parse_env(s: &str) -> Vec<(String, RawFd)> {
    s.split_whitespace()
        .filter_map(|kv| {
            let (a, fd) = kv.rsplit_once('=')?;
            Some((a.to_string(), fd.parse().ok()?))
        })
        .collect()
}

#[derive(Default)]
pub struct Sockets {
    open: BTreeMap<SocketAddr, OwnedFd>,
}

impl Sockets {
    /// Takes over sockets inherited through a re-exec of the master.
    pub fn adopt(pairs: &[(String, RawFd)]) -> Sockets {
        let mut s = Sockets::default();
        for (a, fd) in pairs {
            match (a.parse::<SocketAddr>(), super::os::adopt_fd(*fd)) {
                (Ok(addr), Ok(owned)) => {
                    s.open.insert(addr, owned);
                }
                (_, Err(e)) => log::error!("inherited socket {a} (fd {fd}) is gone: {e}"),
                (Err(_), _) => log::error!("inherited socket with a bad address {a:?}"),
            }
        }
        s
    }

    /// Binds every address of `want` not open yet. All or nothing: on the first failure the
    /// sockets bound by this call are closed again and nothing changes.
    pub fn bind_missing(&mut self, want: &[SocketAddr]) -> Result<Vec<SocketAddr>, Error> {
        let mut new = Vec::new();
        let missing: Vec<SocketAddr> = want
            .iter()
            .filter(|a| !self.open.contains_key(a))
            .copied()
            .collect();
        for a in &missing {
            match bind(*a) {
                Ok(fd) => {
                    self.open.insert(*a, fd);
                    new.push(*a);
                }
                Err(e) => {
                    for n in &new {
                        self.open.remove(n);
                    }
                    return Err(e);
                }
            }
        }
        Ok(new)
    }

    /// Takes out the sockets not in `keep`; the caller closes them once nobody uses them.
    pub fn take_unused(&mut self, keep: &[SocketAddr]) -> Vec<OwnedFd> {
        let gone: Vec<SocketAddr> = self
            .open
            .keys()
            .filter(|a| !keep.contains(a))
            .copied()
            .collect();
        gone.iter().filter_map(|a| self.open.remove(a)).collect()
    }

    /// Closes the sockets `addrs` (bound for a change that then failed).
    pub fn close(&mut self, addrs: &[SocketAddr]) {
        for a in addrs {
            self.open.remove(a);
        }
    }

    /// The descriptor numbers, to keep open across exec.
    pub fn fds(&self) -> Vec<RawFd> {
        self.open.values().map(|f| f.as_raw_fd()).collect()
    }

    /// The environment value naming every socket's fd, for a re-exec of the master.
    pub fn env(&self) -> String {
        let all: Vec<SocketAddr> = self.open.keys().copied().collect();
        self.env_for(&all).0
    }

    /// The environment value naming the sockets of `addrs`, and their fds (to keep open in
    /// the child): a worker gets only the sockets of its own plan.
    pub fn env_for(&self, addrs: &[SocketAddr]) -> (String, Vec<RawFd>) {
        let mut names = Vec::new();
        let mut fds = Vec::new();
        for a in addrs {
            if let Some(fd) = self.open.get(a) {
                names.push(format!("{a}={}", fd.as_raw_fd()));
                fds.push(fd.as_raw_fd());
            }
        }
        (names.join(" "), fds)
    }
}

/// Binds and listens like Pingora would (SO_REUSEADDR, non-blocking: the flag lives on the
/// shared open file, and the workers' async runtimes need it).
fn bind(addr: SocketAddr) -> Result<OwnedFd, Error> {
    let l = TcpListener::bind(addr).map_err(|err| Error::Bind { addr, err })?;
    l.set_nonblocking(true)
        .map_err(|err| Error::Bind { addr, err })?;
    Ok(OwnedFd::from(l))
}
