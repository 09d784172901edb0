//! Draining a generation without failing a request.
//!
//! Pingora, on shutdown, stops its listeners and at once drops every HTTP/1 keep-alive
//! connection that sits idle between requests. A client that is just then sending its next
//! request on such a connection gets a reset: that is where stock upgrades lose requests. So
//! each service is wrapped in [`Drained`], which counts its connections and delays Pingora's
//! cleanup: after the listeners stop, every connection gets its next response with
//! `Connection: close` (see [`crate::proxy::Gateway`]) and closes on its own; only connections
//! idle for the whole grace period are dropped at its end. When every service has drained,
//! the process flushes its logs and exits at once instead of sleeping out Pingora's fixed
//! grace period.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::http::ResponseHeader;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{GetProxyDigest, GetSocketDigest};
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::proxy::HeadGuard;

/// Shared by every service of the process.
pub struct Coordinator {
    services_left: AtomicUsize,
    pub grace: Duration,
    pub shutdown_timeout: Duration,
}

impl Coordinator {
    pub fn new(services: usize, grace: Duration, shutdown_timeout: Duration) -> Arc<Self> {
        Arc::new(Coordinator {
            services_left: AtomicUsize::new(services),
            grace,
            shutdown_timeout,
        })
    }

    fn service_done(&self) {
        if self.services_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            log::info!("all connections drained, exiting");
            super::worker::exit(0);
        }
    }
}

/// A Pingora app that drains instead of dropping idle keep-alive connections.
pub struct Drained<A> {
    inner: Arc<A>,
    conns: Arc<AtomicUsize>,
    coord: Arc<Coordinator>,
    /// Flipped at the end of the grace period: idle connections close then.
    close_idle: watch::Sender<bool>,
    /// Client limits of a proxy server block (see [`HeadGuard`]); none for demo backends.
    guard: Option<Arc<HeadGuard>>,
    /// TLS connections from their accept (see [`CountTls`]).
    tls: Arc<AtomicUsize>,
}

impl<A> Drained<A> {
    pub fn new(inner: A, coord: Arc<Coordinator>) -> Self {
        Drained {
            inner: Arc::new(inner),
            conns: Arc::default(),
            coord,
            close_idle: watch::channel(false).0,
            guard: None,
            tls: Arc::default(),
        }
    }

    /// The pre-TLS callback of this service's TLS listeners (see [`CountTls`]).
    pub fn count_tls(&self) -> Arc<CountTls> {
        Arc::new(CountTls {
            count: self.tls.clone(),
            guard: self.guard.clone(),
        })
    }

    /// Reads and checks each request head with `guard`'s limits before Pingora sees it.
    pub fn with_guard(mut self, guard: HeadGuard) -> Self {
        self.guard = Some(Arc::new(guard));
        self
    }

    async fn wait_idle(&self, limit: Duration) {
        let end = Instant::now() + limit;
        while (self.conns.load(Ordering::Acquire) > 0 || self.tls.load(Ordering::Acquire) > 0)
            && Instant::now() < end
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct ConnGuard(Arc<AtomicUsize>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A TLS connection from its accept: counted for the drain, holding its `worker_connections`
/// slot, and given `client_header_timeout` for its handshake. Pingora hands a TLS connection
/// to the app only after the handshake, with a fixed 60 s limit, and counts nothing before:
/// so [`Drained`]'s own count would miss one still in its handshake (a drain that ended then
/// would reset it), and handshaking clients could pile up past `worker_connections`. This
/// callback runs at the accept; what it takes is stored in the connection's stream (the user
/// data of its proxy digest, which nothing reads on the client side) and dropped with the
/// stream, whether the handshake succeeds or not.
pub struct CountTls {
    count: Arc<AtomicUsize>,
    guard: Option<Arc<HeadGuard>>,
}

/// What [`CountTls`] stores in a TLS connection's stream.
struct TlsConn {
    _count: ConnGuard,
    _slot: Option<crate::proxy::ConnSlot>,
    /// A duplicate of the socket, for the handshake timer to shut it down; closed as soon as
    /// the handshake ends, so that the socket closes with Pingora's descriptor.
    fd: Arc<std::sync::Mutex<Option<std::os::fd::OwnedFd>>>,
    timer: Option<tokio::task::AbortHandle>,
}

impl TlsConn {
    /// The handshake is over: the timer stops, the duplicate descriptor closes.
    fn handshake_done(&self) {
        if let Some(t) = &self.timer {
            t.abort();
        }
        if let Ok(mut fd) = self.fd.lock() {
            fd.take();
        }
    }
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        self.handshake_done();
    }
}

/// Whether `stream` is a TLS connection [`CountTls`] admitted, ending its handshake timer.
fn admitted_tls(stream: &Stream) -> bool {
    let Some(d) = stream.get_proxy_digest() else {
        return false;
    };
    match d
        .user_data
        .as_ref()
        .and_then(|u| u.downcast_ref::<TlsConn>())
    {
        Some(c) => {
            c.handshake_done();
            true
        }
        None => false,
    }
}

#[async_trait]
impl PreTlsProcess for CountTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        use std::os::fd::{AsFd, AsRawFd};
        let peer = || {
            stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
        };
        // Connections in their handshake are not counted against `worker_connections` yet:
        // the slot is taken after the handshake, in `process_new`.
        let slot: Option<crate::proxy::ConnSlot> = None;
        self.count.fetch_add(1, Ordering::AcqRel);
        let count = ConnGuard(self.count.clone());
        let limit = self.guard.as_ref().map(|g| g.idle_timeout(true));
        let fd = match limit {
            Some(_) => super::os::dup(stream.as_raw_fd()),
            None => None,
        };
        let fd = Arc::new(std::sync::Mutex::new(fd));
        // The timer holds only a weak reference: once the connection is gone it does nothing.
        let timer = limit.map(|limit| {
            let weak = Arc::downgrade(&fd);
            let who = peer().map_or_else(|| "-".to_string(), |p| p.to_string());
            tokio::spawn(async move {
                tokio::time::sleep(limit).await;
                let Some(fd) = weak.upgrade() else { return };
                let Ok(fd) = fd.lock() else { return };
                if let Some(fd) = fd.as_ref() {
                    // nginx: "client timed out ... while SSL handshaking", at `info`.
                    log::info!(target: "client", "client {who} timed out in the TLS handshake");
                    // The handshake's next read sees the end of the stream and fails.
                    super::os::shutdown_socket(fd.as_fd());
                }
            })
            .abort_handle()
        });
        let conn = TlsConn {
            _count: count,
            _slot: slot,
            fd,
            timer,
        };
        let user: Box<dyn std::any::Any + Send + Sync> = Box::new(conn);
        let head = Box::new(ResponseHeader::build(200, Some(0))?);
        stream.set_proxy_digest(ProxyDigest::new(head, Some(user)));
        Ok(())
    }
}

/// How long a keep-alive connection may sit idle between requests (Pingora's default).
const KEEPALIVE: Duration = Duration::from_secs(60);

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Drained<A> {
    /// The HTTP/1 keep-alive loop, instead of Pingora's: between two requests only this small
    /// future lives, waiting for the next byte. Pingora's request future, tens of kilobytes,
    /// is boxed for the length of one request and freed after it, so an idle connection costs
    /// a few kilobytes as in nginx, not the size of the whole proxy state machine.
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Limits (issue 14): past `worker_connections` the connection is closed unanswered.
        // A TLS connection's handshake timer ends here (see [`CountTls`]); its slot is taken
        // here too, after the handshake (counting it from the accept is not done yet).
        admitted_tls(&stream);
        let _slot = match &self.guard {
            Some(g) => Some(g.admit(&stream)?),
            None => None,
        };
        self.conns.fetch_add(1, Ordering::AcqRel);
        let _guard = ConnGuard(self.conns.clone());
        let accepted = tokio::time::Instant::now();
        // HTTP/2 (by ALPN): our loop around Pingora's HTTP/2 server (a drain sends GOAWAY).
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let lim = self
                .guard
                .as_ref()
                .map(|g| g.h2_limits())
                .unwrap_or_default();
            // Boxed: inline, its state would be part of every connection's future, HTTP/1 or
            // not, and stay in memory for each idle keep-alive connection (issue 20, goal 4).
            Box::pin(super::h2::serve(
                &self.inner,
                stream,
                shutdown,
                lim,
                accepted,
            ))
            .await;
            return None;
        }
        // A plain connection of a proxy server block can send static files with sendfile.
        if self.guard.is_some() {
            stream = crate::proxy::sendfile::FileStream::wrap(stream);
        }
        let mut close_idle = self.close_idle.subscribe();
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            let mut byte = [0u8; 1];
            let idle = self
                .guard
                .as_ref()
                .map_or(KEEPALIVE, |g| g.idle_timeout(first));
            // Before the first request `idle` is `client_header_timeout`, which counts from the
            // accept for the whole head: the wait for its first byte is part of it.
            let until = if first {
                accepted + idle
            } else {
                tokio::time::Instant::now() + idle
            };
            // The first byte of the next request is read, not peeked: Pingora's `try_peek`
            // boxes a future, copies the byte into a fresh Vec and keeps a rewind list on the
            // connection for good (issue 20: three allocations a request, ~180 bytes an idle
            // connection). The byte is handed on as the start of the head.
            tokio::select! {
                r = tokio::time::timeout_at(until, stream.read(&mut byte)) => {
                    if !matches!(r, Ok(Ok(1))) {
                        return None; // idle too long, or the client closed
                    }
                }
                _ = close_idle.wait_for(|c| *c) => return None,
            }
            // Limits (issue 14): the head is read and checked here; a bad one ends the loop.
            let head = match &self.guard {
                Some(g) => Some(
                    g.read_head(&mut stream, first.then_some(until), byte[0])
                        .await?,
                ),
                None => None,
            };
            first = false;
            // A WebSocket gets a close frame if the grace period ends while it is open.
            if head.as_ref().is_some_and(|h| h.is_upgrade()) {
                stream = super::tunnel::Tunnel::wrap(stream, self.close_idle.subscribe());
            }
            let mut session = ServerSession::new_http1(stream);
            if *shutdown.borrow() {
                session.set_keepalive(None);
            } else {
                session.set_keepalive(Some(KEEPALIVE.as_secs()));
            }
            session.set_keepalive_reuses_remaining(
                self.inner
                    .server_options()
                    .and_then(|o| o.keepalive_request_limit),
            );
            if let Some(s) = settings.take() {
                s.apply_to_session(&mut session);
            }
            match (&self.guard, head) {
                (Some(g), Some(h)) => g.apply(&mut session, h),
                // No guard (the demo backends): Pingora parses from the byte read above.
                _ => {
                    if let ServerSession::H1(s) = &mut session {
                        s.set_pipelined_prefix(bytes::BytesMut::from(&byte[..]));
                    }
                }
            }
            let reused = Box::pin(self.inner.process_new_http(session, shutdown)).await?;
            (stream, settings) = reused.consume();
        }
    }

    async fn cleanup(&self) {
        // Listeners are closed: connections close after their next response.
        self.wait_idle(self.coord.grace).await;
        // What is left has been idle for the whole grace period, or is still in flight.
        self.close_idle.send_replace(true);
        self.inner.http_cleanup().await;
        self.wait_idle(self.coord.shutdown_timeout).await;
        self.coord.service_done();
    }
}
