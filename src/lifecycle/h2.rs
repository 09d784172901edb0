//! An HTTP/2 connection (TLS, ALPN `h2`): the connection loop around Pingora's HTTP/2 server,
//! in place of Pingora's own (`ServerApp::process_new`), which has no deadline for the
//! handshake, no cap on the streams of a connection and no write timeout on its streams.
//!
//! - The handshake (the client's preface) must end by `client_header_timeout` from the
//!   accept, as an HTTP/1 head must: a client that connects and sends nothing goes.
//! - Each stream is one request, spawned on its own task as in Pingora (`process_new_http`
//!   on the same app), with nginx's `send_timeout` on its response writes.
//! - After `keepalive_requests` streams, or when the generation drains, the client gets
//!   GOAWAY; streams it opened before finish, and the connection closes when they have.
//! - With no stream in flight for `keepalive_timeout`, the connection closes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{self, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use crate::proxy::H2Limits;

/// How long an idle HTTP/2 connection stays open under `keepalive_timeout: 0`: long enough
/// for a client's first request after the handshake (Pingora's and h2's zero would close a
/// new connection before it), short enough that idle ones go.
const NO_KEEPALIVE: Duration = Duration::from_secs(1);

/// Streams refused while being accepted (a bad `:path`, conflicting `Content-Length`) that a
/// connection may send before it is closed: Pingora's own loop allows the same number.
const MALFORMED_PER_CONN: usize = 32;

/// Serves one HTTP/2 connection of `app` until it closes. `accepted` is when the connection
/// was handed to the app (after its TLS handshake).
pub async fn serve<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
    stream: Stream,
    shutdown: &ShutdownWatch,
    lim: H2Limits,
    accepted: tokio::time::Instant,
) {
    let peer = peer(&stream);
    // Shared by every stream of the connection, as in Pingora's loop.
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let until = accepted + lim.handshake;
    let mut conn =
        match tokio::time::timeout_at(until, server::handshake(stream, app.h2_options())).await {
            Ok(Ok(c)) => c,
            // nginx logs a client's handshake faults at `info`: they are the client's.
            Ok(Err(e)) => {
                log::info!(target: "client", "HTTP/2 handshake with client {peer} failed: {e}");
                return;
            }
            Err(_) => {
                log::info!(target: "client", "client {peer} timed out in the HTTP/2 handshake");
                return;
            }
        };
    let idle = if lim.idle.is_zero() {
        NO_KEEPALIVE
    } else {
        lim.idle
    };
    let active = Arc::new(Active::default());
    let mut shutdown = shutdown.clone();
    let mut closing = false;
    let mut streams: u64 = 0;
    let mut malformed = 0usize;
    if *shutdown.borrow() {
        conn.graceful_shutdown();
        closing = true;
    }
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.changed(), if !closing => {
                conn.graceful_shutdown();
                closing = true;
                continue;
            }
            // `accept` drives the whole connection (and is cancel-safe): it runs while the
            // streams' tasks do their work.
            n = HttpSession::from_h2_conn(&mut conn, digest.clone()) => n,
            // Nothing in flight for `idle`: close the socket (no GOAWAY wait on a dead peer).
            _ = active.idle_for(idle) => return,
        };
        let session = match next {
            Ok(Some(H2Accept::Session(s))) => s,
            Ok(Some(H2Accept::Rejected)) => {
                malformed += 1;
                if malformed >= MALFORMED_PER_CONN {
                    log::info!(target: "client", "closing HTTP/2 connection of client {peer}: {malformed} malformed requests");
                    return;
                }
                continue;
            }
            // The client closed, or the connection failed (often a plain TCP close).
            Ok(None) => return,
            Err(e) => {
                log::debug!("HTTP/2 connection of client {peer}: {e}");
                return;
            }
        };
        streams += 1;
        if streams >= lim.streams && !closing {
            // nginx's `keepalive_requests` over HTTP/2: GOAWAY after the last one.
            conn.graceful_shutdown();
            closing = true;
        }
        let mut session = ServerSession::new_http2(session);
        session.set_write_timeout(Some(lim.send));
        session.set_total_drain_timeout(Some(lim.drain));
        let busy = active.start();
        let (app, shutdown) = (app.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _busy = busy;
            app.process_new_http(session, &shutdown).await;
        });
    }
}

/// Streams of one connection in flight, so that the idle timeout runs only while none is.
#[derive(Default)]
struct Active {
    count: AtomicUsize,
    none: Notify,
}

impl Active {
    fn start(self: &Arc<Self>) -> Busy {
        self.count.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    async fn idle_for(&self, d: Duration) {
        loop {
            // Registered before the check, so a stream ending in between is not missed.
            let ended = self.none.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                break;
            }
            ended.await;
        }
        tokio::time::sleep(d).await;
    }
}

/// One stream in flight; dropped with its task.
struct Busy(Arc<Active>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none.notify_waiters();
        }
    }
}

/// The client's address, for log lines.
fn peer(stream: &Stream) -> String {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().map(|a| a.to_string()))
        .unwrap_or_else(|| "-".to_string())
}
