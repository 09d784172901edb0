//! The yardstick of `bench/run.sh` (issue 20): the plainest proxy one can write on Pingora's
//! `ProxyHttp`, built with graygate's release profile and allocator, so that a run shows what
//! graygate's own features cost on top of Pingora itself.
//!
//! Round robin from `pingora-load-balancing`, `X-Real-IP: $remote_addr`, pooled upstream
//! connections, no access log, no limits, no retries, one worker thread (graygate's bench
//! config has `threads: 1`).
//!
//!     cargo build --release --example bare_proxy
//!     target/release/examples/bare_proxy 18080 127.0.0.1:19001 127.0.0.1:19002
//!
//! TERM stops it at once: no grace period, unlike stock Pingora (the bench's `stop_proxy`
//! starts the next contender on the same port).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora_load_balancing::{selection::RoundRobin, LoadBalancer};
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    backends: Arc<LoadBalancer<RoundRobin>>,
    /// `BARE_NGINX_TIMEOUTS=1`: upstream timeouts as graygate's defaults (bench/instructions.sh
    /// shows what Pingora's timers cost per request).
    nginx_timeouts: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        // Round robin ignores the key; 1 iteration: every backend counts as healthy.
        let backend = self
            .backends
            .select(b"", 1)
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no backend"))?;
        let mut peer = Box::new(HttpPeer::new(backend.addr, false, String::new()));
        if self.nginx_timeouts {
            // nginx's proxy_connect/read/send_timeout defaults, which graygate always has.
            let t = Some(std::time::Duration::from_secs(60));
            peer.options.connection_timeout = t;
            peer.options.read_timeout = t;
            peer.options.write_timeout = t;
        }
        Ok(peer)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        // The client address as text on the stack, as nginx's `$remote_addr`.
        let mut buf = [0u8; 46];
        let mut at = &mut buf[..];
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let _ = write!(at, "{ip}");
        }
        let len = 46 - at.len();
        let value = http::HeaderValue::from_bytes(&buf[..len])
            .map_err(|e| Error::because(ErrorType::InternalError, "X-Real-IP", e))?;
        req.insert_header("X-Real-IP", value)?;
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bare_proxy PORT BACKEND_ADDR...";
    let Some((port, backends)) = args.split_first() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let addrs: Vec<SocketAddr> = match backends.iter().map(|b| b.parse()).collect() {
        Ok(a) if !backends.is_empty() => a,
        _ => {
            eprintln!("{usage} (backends as IP:PORT)");
            std::process::exit(2);
        }
    };
    let lb = match LoadBalancer::try_from_iter(addrs) {
        Ok(lb) => Arc::new(lb),
        Err(e) => {
            eprintln!("backends: {e}");
            std::process::exit(2);
        }
    };
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Bare {
            backends: lb,
            nginx_timeouts: std::env::var_os("BARE_NGINX_TIMEOUTS").is_some_and(|v| v == "1"),
        },
    );
    proxy.add_tcp(&format!("127.0.0.1:{port}"));
    server.add_service(proxy);
    server.run_forever();
}
