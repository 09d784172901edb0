//! The proxy hooks: one [`Gateway`] per server block, plugged into Pingora's request phases.
//!
//! The path of a request through the phases:
//! 1. `request_filter`: take the current snapshot, route the path to a location (404 if none).
//! 2. `upstream_peer`: the location's pool picks a server (ip_hash / round robin).
//! 3. `fail_to_connect` / `error_while_proxy`: log the failed attempt, mark the server, and let
//!    Pingora retry on the next server the policy picks, while untried servers remain.
//! 4. `upstream_request_filter`: `proxy_set_header`, and drop the client's `Connection` header
//!    so upstream keep-alive survives a client that closes.
//! 5. `response_filter`: `Connection: close` while the generation drains.
//! 6. `fail_to_proxy`: 502 / 504 like nginx.
//! 7. `logging`: the access log line; the server's success resets its failure count.

mod errors;
mod guard;
pub mod head;
mod realip;
mod vars;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::{Error, ErrorType, Result};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::logs::access;
use crate::snapshot::{Live, Snapshot};
use crate::upstream::{Attempt, Peer, Pool};
pub use errors::status_for;
pub use guard::HeadGuard;
use vars::{client_addr, SessionVars};

/// The proxy for one server block.
pub struct Gateway {
    /// Index of this server block in every snapshot (a reload keeps the order, see
    /// [`crate::plan::Plan::same_listeners`]).
    pub server: usize,
    pub live: Live,
    /// Set when this generation stops accepting: every response then closes its connection.
    pub draining: Arc<AtomicBool>,
}

/// Per-request state.
#[derive(Default)]
pub struct Ctx {
    /// The snapshot this request runs on, from its first phase to its last.
    snap: Option<Arc<Snapshot>>,
    location: usize,
    pool: usize,
    attempt: Attempt,
    peer: Option<usize>,
    /// Reused buffer for rendering header values.
    scratch: Vec<u8>,
    /// The server whose `active` count this request holds (for `max_conns`).
    held: Option<Arc<crate::upstream::PeerState>>,
    /// Request body bytes seen so far (`client_max_body_size` for chunked bodies).
    body_seen: u64,
}

impl Ctx {
    /// Moves this request's `active` slot to `state` (or releases it).
    fn hold(&mut self, state: Option<Arc<crate::upstream::PeerState>>) {
        if let Some(old) = self.held.take() {
            old.active.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(new) = state {
            new.active.fetch_add(1, Ordering::Relaxed);
            self.held = Some(new);
        }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.hold(None);
    }
}

impl Ctx {
    fn pool(&self) -> Option<&Pool> {
        self.snap
            .as_ref()
            .and_then(|s| s.plan.pools.get(self.pool))
            .map(|p| &*p.pool)
    }

    fn peer(&self) -> Option<&Peer> {
        self.pool()
            .and_then(|p| self.peer.and_then(|i| p.peers.get(i)))
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer().map(|p| p.addr)
    }
}

impl Gateway {
    fn server_name<'a>(&self, snap: &'a Snapshot) -> &'a str {
        snap.plan
            .servers
            .get(self.server)
            .map(|s| s.name.as_str())
            .unwrap_or("-")
    }

    /// Logs a failed attempt in this server block's error log and marks the server.
    fn attempt_failed(&self, session: &Session, ctx: &Ctx, e: &Error, connecting: bool) {
        if let Some(p) = ctx.peer() {
            p.record_failure();
        }
        let Some(snap) = ctx.snap.as_ref() else {
            return;
        };
        if let Some(Some(log)) = snap.error_logs.get(self.server) {
            errors::log_failure(
                log,
                session,
                self.server_name(snap),
                ctx.peer_addr(),
                e,
                connecting,
            );
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {
        // Pingora adds a (disabled) compression module by default, which still costs a box and
        // a filter call per request; graygate does not compress, like nginx without `gzip`.
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snap = self.live.load_full();
        guard::on_request(session, &snap, self.server);
        let route = snap.plan.servers.get(self.server).and_then(|s| {
            let path = session.req_header().uri.path();
            s.locations.iter().position(|l| l.matches(path))
        });
        let found = route.map(|i| (i, snap.plan.servers[self.server].locations[i].pool));
        ctx.snap = Some(snap);
        match found {
            Some((loc, pool)) => {
                ctx.location = loc;
                ctx.pool = pool;
                Ok(false)
            }
            None => {
                session.respond_error(404).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        guard::count_body(
            session,
            ctx.snap.as_deref(),
            self.server,
            body,
            &mut ctx.body_seen,
        )
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let snap = ctx
            .snap
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no snapshot"))?;
        let pp = snap
            .plan
            .pools
            .get(ctx.pool)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no pool"))?;
        let pool = &pp.pool;
        let key = pp.placement(&SessionVars(session), &mut ctx.scratch);
        match pool.select(key, &mut ctx.attempt) {
            Some(i) => {
                let p = &pool.peers[i];
                let mut peer = Box::new(p.http.clone());
                let t = snap.plan.servers[self.server].locations[ctx.location].timeouts;
                if t.any() {
                    t.apply(&mut peer.options);
                }
                ctx.peer = Some(i);
                if p.max_conns > 0 {
                    ctx.hold(Some(p.state.clone()));
                }
                Ok(peer)
            }
            None => {
                if let Some(Some(log)) = snap.error_logs.get(self.server) {
                    let name = self.server_name(&snap);
                    let what = format!(
                        "no live upstreams while connecting to upstream \"{}\"",
                        pool.name
                    );
                    errors::log_attempt(log, session, name, None, &what);
                }
                Err(Error::explain(
                    ErrorType::HTTPStatus(502),
                    "no live upstreams",
                ))
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // A client's `Connection: close` must not close the pooled upstream connection; an
        // `Upgrade` (websocket) handshake keeps its header.
        let upgrade = req.headers.get(http::header::UPGRADE).is_some();
        if !upgrade {
            req.remove_header(&http::header::CONNECTION);
        }
        let Some(snap) = ctx.snap.as_ref() else {
            return Ok(());
        };
        let loc = &snap.plan.servers[self.server].locations[ctx.location];
        for (name, tpl) in &loc.set_headers {
            ctx.scratch.clear();
            tpl.render(&SessionVars(session), &mut ctx.scratch);
            if ctx.scratch.is_empty() {
                // nginx: an empty value removes the header.
                req.remove_header(name);
            } else {
                let v = http::HeaderValue::from_bytes(&ctx.scratch).map_err(|_| {
                    Error::explain(ErrorType::InvalidHTTPHeader, "bad header value")
                })?;
                req.insert_header(name.clone(), v)?;
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        if status < 429 {
            return Ok(());
        }
        let retry = ctx
            .snap
            .as_ref()
            .and_then(|s| s.plan.pools.get(ctx.pool))
            .is_some_and(|pp| {
                pp.retry_on_status.contains(&status)
                    && session.req_header().method.is_idempotent()
                    && pp.pool.can_retry(&ctx.attempt)
            });
        if retry {
            // Nothing has reached the client yet: drop this answer and try the next server.
            // (Pingora then cannot reuse this upstream connection, which is fine for an error.)
            let mut e = Error::explain(ErrorType::HTTPStatus(status), "status set to retry");
            e.set_retry(true);
            return Err(e.into_up());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        _resp: &mut ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        if self.draining.load(Ordering::Relaxed) {
            // The client learns now, in a response, that this connection ends: closing it
            // while idle would race with its next request.
            session.set_keepalive(None);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.attempt_failed(session, ctx, &e, true);
        // nginx's `proxy_next_upstream error timeout`: try the next server while any is left.
        if ctx.pool().is_some_and(|p| p.can_retry(&ctx.attempt)) {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        self.attempt_failed(session, ctx, &e, false);
        let mut e = e.more_context(format!("Peer: {peer}"));
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        let bad_status = matches!(e.etype(), ErrorType::HTTPStatus(_));
        let timed_out = matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
        let can_retry = ctx.pool().is_some_and(|p| p.can_retry(&ctx.attempt));
        if !replayable || !can_retry {
            e.set_retry(false);
        } else if bad_status {
            // Raised by `upstream_response_filter` only when this status is to be retried.
            e.set_retry(true);
        } else if timed_out {
            // nginx's `proxy_next_upstream timeout`, for idempotent requests only.
            let on = ctx
                .snap
                .as_ref()
                .and_then(|s| s.plan.pools.get(ctx.pool))
                .is_some_and(|p| p.retry_on_timeout);
            e.set_retry(on);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        // Failed attempts are already in the server block's own error log, in nginx's form.
        true
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        let code = status_for(e);
        if code > 0 {
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = match session.response_written() {
            Some(r) => r.status.as_u16(),
            // nginx's 499: the client went away before a response was sent.
            None if e.is_some() => 499,
            None => 0,
        };
        if e.is_none() {
            if let Some(p) = ctx.peer() {
                p.record_success();
            }
        }
        let Some(snap) = ctx.snap.as_ref() else {
            return;
        };
        let Some(Some(log)) = snap.access_logs.get(self.server) else {
            return;
        };
        let req = session.req_header();
        let h = |n: http::header::HeaderName| req.headers.get(n).map(|v| v.as_bytes());
        let entry = access::Entry {
            remote_addr: client_addr(session).map(|a| a.ip()),
            authorization: h(http::header::AUTHORIZATION),
            method: req.method.as_str(),
            uri: req.raw_path(),
            version: version_str(req.version),
            status,
            body_bytes_sent: session.body_bytes_sent(),
            referer: h(http::header::REFERER),
            user_agent: h(http::header::USER_AGENT),
        };
        log.append(|out| access::combined(out, &entry));
    }
}

fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}
