//! Active health checks: a background task that probes every server of the pools that ask for
//! it and flips [`PeerState::healthy`](super::PeerState) after `fall` failures or `rise`
//! successes in a row.
//!
//! Pingora's `TcpHealthCheck` / `HttpHealthCheck` work on its `Backends` set, which our pools do
//! not use (selection must be nginx-exact, and state must carry over reloads), so the probes are
//! written here; they run as a Pingora background service of each worker. The checker does not
//! know where pools come from: it asks a [`Targets`] at every round, so that a reload's pools
//! and checks apply at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Pool;

/// What a probe does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `GET path`, judged by the status.
    Http,
    /// A connection is enough.
    Tcp,
}

/// One pool's check, compiled from its `health_check` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub kind: Kind,
    /// Request path of `http` checks.
    pub path: String,
    /// Time between two rounds (above zero).
    pub interval: Duration,
    /// A probe that takes longer fails (above zero).
    pub timeout: Duration,
    /// The status an `http` check needs; `None`: any 2xx or 3xx.
    pub expect_status: Option<u16>,
    /// Passes in a row that bring a server back (at least 1).
    pub rise: u32,
    /// Failures in a row that take a server out (at least 1).
    pub fall: u32,
}

/// The pools to check now, each with its check.
pub type Targets = Box<dyn Fn() -> Vec<(Arc<Pool>, Arc<Check>)> + Send + Sync>;

/// The background service: one per worker.
pub struct Checker {
    targets: Targets,
}

impl Checker {
    /// A checker asking `targets` for the current pools at every round.
    pub fn new(
        targets: impl Fn() -> Vec<(Arc<Pool>, Arc<Check>)> + Send + Sync + 'static,
    ) -> Checker {
        Checker {
            targets: Box::new(targets),
        }
    }
}

/// Consecutive outcomes of one server.
#[derive(Default)]
struct Streak {
    ok: u32,
    fail: u32,
}

/// Probes `addr` once.
pub async fn probe(addr: SocketAddr, check: &Check) -> bool {
    let run = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        if check.kind == Kind::Tcp {
            return Some(true);
        }
        let req = format!(
            "GET {} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: graygate-health-check\r\n\r\n",
            check.path
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let r = s.read(&mut buf[n..]).await.ok()?;
            if r == 0 {
                break;
            }
            n += r;
        }
        let line = std::str::from_utf8(&buf[..n]).ok()?;
        let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(match check.expect_status {
            Some(want) => status == want,
            None => (200..400).contains(&status),
        })
    };
    matches!(
        tokio::time::timeout(check.timeout, run).await,
        Ok(Some(true))
    )
}

#[async_trait]
impl BackgroundService for Checker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut streaks: HashMap<(String, SocketAddr), Streak> = HashMap::new();
        let mut last: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            let targets = (self.targets)();
            // A pool whose check was removed starts afresh if a reload adds it again.
            last.retain(|name, _| targets.iter().any(|(p, _)| &p.name == name));
            streaks.retain(|(name, _), _| last.contains_key(name));
            for (pool, check) in &targets {
                let due = last
                    .get(&pool.name)
                    .is_none_or(|t| t.elapsed() >= check.interval);
                if !due {
                    continue;
                }
                last.insert(pool.name.clone(), Instant::now());
                let mut probes = tokio::task::JoinSet::new();
                for (i, p) in pool.peers.iter().enumerate() {
                    let (addr, check) = (p.addr, Arc::clone(check));
                    probes.spawn(async move { (i, probe(addr, &check).await) });
                }
                while let Some(Ok((i, ok))) = probes.join_next().await {
                    let peer = &pool.peers[i];
                    let st = streaks.entry((pool.name.clone(), peer.addr)).or_default();
                    if ok {
                        st.ok = st.ok.saturating_add(1);
                        st.fail = 0;
                    } else {
                        st.fail = st.fail.saturating_add(1);
                        st.ok = 0;
                    }
                    let healthy = peer.state.healthy.load(Ordering::Relaxed);
                    if healthy && st.fail >= check.fall {
                        peer.state.healthy.store(false, Ordering::Relaxed);
                        log::warn!(
                            "upstream {} server {} failed {} health checks: taken out",
                            pool.name,
                            peer.addr,
                            st.fail
                        );
                    } else if !healthy && st.ok >= check.rise {
                        peer.state.healthy.store(true, Ordering::Relaxed);
                        // Passing checks prove it alive: no passive-failure rest either.
                        peer.record_success();
                        log::warn!(
                            "upstream {} server {} passed {} health checks: back in",
                            pool.name,
                            peer.addr,
                            st.ok
                        );
                    }
                }
            }
        }
    }
}
