//! Active health checks: a background task that probes every server of the pools that ask for
//! it and flips [`PeerState::healthy`](super::PeerState) after `fall` failures or `rise`
//! successes in a row.
//!
//! Pingora's `TcpHealthCheck` / `HttpHealthCheck` work on its `Backends` set, which our pools do
//! not use (selection must be nginx-exact, and state must carry over reloads), so the probes are
//! written here; they run as a Pingora background service of each worker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{HealthCheck, HealthCheckType};
use crate::snapshot::Live;

/// The background service: one per worker, reading the live snapshot at every round.
pub struct Checker {
    pub live: Live,
}

#[derive(Default)]
struct Streak {
    ok: i64,
    fail: i64,
}

/// Probes `addr` once.
pub async fn probe(addr: SocketAddr, hc: &HealthCheck) -> bool {
    let run = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        if hc.kind == HealthCheckType::Tcp {
            return Some(true);
        }
        let req = format!(
            "GET {} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: graygate-health-check\r\n\r\n",
            hc.path
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
        let status: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(match hc.expect_status {
            Some(want) => status == want,
            None => (200..400).contains(&status),
        })
    };
    matches!(
        tokio::time::timeout(hc.timeout.0, run).await,
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
            let snap = self.live.load_full();
            for pp in &snap.plan.pools {
                let Some(hc) = &pp.health_check else { continue };
                let pool = &pp.pool;
                let due = last
                    .get(&pool.name)
                    .is_none_or(|t| t.elapsed() >= hc.interval.0);
                if !due {
                    continue;
                }
                last.insert(pool.name.clone(), Instant::now());
                let mut probes = tokio::task::JoinSet::new();
                for (i, p) in pool.peers.iter().enumerate() {
                    let (addr, hc) = (p.addr, hc.clone());
                    probes.spawn(async move { (i, probe(addr, &hc).await) });
                }
                while let Some(Ok((i, ok))) = probes.join_next().await {
                    let peer = &pool.peers[i];
                    let st = streaks.entry((pool.name.clone(), peer.addr)).or_default();
                    if ok {
                        st.ok += 1;
                        st.fail = 0;
                    } else {
                        st.fail += 1;
                        st.ok = 0;
                    }
                    let healthy = peer.state.healthy.load(Ordering::Relaxed);
                    if healthy && st.fail >= hc.fall {
                        peer.state.healthy.store(false, Ordering::Relaxed);
                        log::warn!(
                            "upstream {} server {} failed {} health checks: taken out",
                            pool.name,
                            peer.addr,
                            st.fail
                        );
                    } else if !healthy && st.ok >= hc.rise {
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
