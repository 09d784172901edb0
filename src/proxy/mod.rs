//! The proxy hooks: one [`Gateway`] per server block, plugged into Pingora's request phases.
//!
//! The path of a request through the phases (the request head has been read and checked
//! against the client limits before, by [`HeadGuard`] in the keep-alive loop):
//! 1. `request_filter`: take the current snapshot, apply `real_ip`, route the normalised path
//!    to a location (404 if none); a location with `return` or files answers here
//!    ([`reply::answer`]); one that names a canary picks the request's side, hence its pool.
//! 2. `request_body_filter`: `client_max_body_size` for bodies without `Content-Length`
//!    (one with it over the limit is refused with 413 in step 1).
//! 3. `upstream_peer`: the pool picks a server (ip_hash, round robin, or consistent on the
//!    rendered `hash_key`).
//! 4. `upstream_request_filter`: `proxy_set_header`, and drop the client's `Connection` header
//!    so upstream keep-alive survives a client that closes.
//! 5. `upstream_response_filter`: a status in `retry_on_status` becomes a failed attempt while
//!    another server can take the request; otherwise the response goes to the client as is.
//! 6. `fail_to_connect` / `error_while_proxy`: a fault of the server is logged and counted
//!    against it, and Pingora retries on the next server the policy picks while one is usable,
//!    never once part of the response has gone to the client. A client that went away is
//!    nobody's fault but its own: not logged as an upstream error, not counted.
//! 7. `response_filter`: `add_header`, and `Connection: close` while the generation drains.
//! 8. `fail_to_proxy`: 502 / 504 like nginx (nothing if the response had started).
//! 9. `logging`: the request metrics and the access log line (499 for a client that gave up);
//!    a request that ended without a server fault is a success for nginx's passive health.
//!
//! Over 400 lines on purpose: it is the one `ProxyHttp` impl, one hook each with its fault
//! rules; the work of each hook already lives in the sibling modules.

mod ctx;
mod errors;
mod files;
mod guard;
pub mod head;
mod mime;
mod realip;
mod reply;
pub mod sendfile;
pub mod uri;
mod uwsgi;
mod vars;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::snapshot::{Live, Snapshot};
pub use ctx::Ctx;
use ctx::{hold, pool_plan};
pub use errors::status_for;
use errors::Phase;
pub use guard::{ConnSlot, H2Limits, HeadGuard};
use vars::SessionVars;

thread_local! {
    /// `proxy_set_header` values are rendered here (see `upstream_request_filter`).
    static SET_HEADER_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What [`SET_HEADER_BUF`] keeps between requests; a huge value is not held for ever.
const SET_HEADER_BUF_KEEP: usize = 4096;

/// The proxy for one server block.
pub struct Gateway {
    /// Index of this server block in every snapshot (a reload keeps the order, see
    /// [`crate::plan::Plan::same_listeners`]).
    pub server: usize,
    pub live: Live,
    /// Set when this generation stops accepting: every response then closes its connection.
    pub draining: Arc<AtomicBool>,
}

impl Gateway {
    fn server_name<'a>(&self, snap: &'a Snapshot) -> &'a str {
        snap.plan
            .servers
            .get(self.server)
            .map(|s| s.name.as_str())
            .unwrap_or("-")
    }

    /// A fault of the server: logged in this server block's error log, counted against the
    /// server, and its `max_conns` slot given back at once.
    fn attempt_failed(&self, session: &Session, ctx: &mut Ctx, e: &Error, phase: Phase) {
        if let (Some(pool), Some(i)) = (ctx.pool(), ctx.peer) {
            pool.failed(i);
        }
        ctx.try_failed(e, phase == Phase::Connecting);
        hold(&mut ctx.held, None);
        self.log_line(session, ctx, &errors::describe(e, phase));
    }

    /// One `[error]` line about this request in the server block's error log.
    fn log_line(&self, session: &Session, ctx: &Ctx, what: &str) {
        let Some(snap) = ctx.snap.as_ref() else {
            return;
        };
        if let Some(Some(log)) = snap.error_logs.get(self.server) {
            let name = self.server_name(snap);
            errors::log_attempt(log, session, name, ctx.peer_addr(), what);
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    /// A fresh per-request state; the snapshot is taken in `request_filter`.
    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    /// No downstream modules: Pingora's default (disabled) compression module still costs a
    /// box and a filter call per request, and graygate does not compress, like nginx without
    /// `gzip`. Static files rely on it: their plain HTTP/1 bodies are marker bytes that
    /// `sendfile::FileStream` replaces with the file's, and a body filter must never see them.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// Takes the current snapshot for the whole request, applies `real_ip`, routes the path to
    /// a location (404 when none matches) and the location to a pool (through its canary, if
    /// it names one).
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.started = Some(std::time::Instant::now());
        ctx.request_id = ctx::request_id();
        let snap = self.live.load_full();
        guard::on_request(session, &snap, self.server);
        // nginx refuses a body announced over `client_max_body_size` before reading any of it.
        if let Some(len) = guard::too_large(session, &snap, self.server) {
            ctx.begin(snap, self.server);
            let what = format!("client intended to send too large body: {len} bytes");
            self.log_line(session, ctx, &what);
            session.set_keepalive(None);
            reply::page_response(session, 413, &[], ctx.request_id, &mut ctx.scratch).await?;
            return Ok(true);
        }
        // Routing sees the path decoded and with dot segments resolved, as nginx's does; a
        // path that cannot be (bad `%` escape, `..` above the root) is a 400, as in nginx.
        let route = match uri::normalize(session.req_header().uri.path().as_bytes()) {
            Ok(norm) => snap
                .plan
                .servers
                .get(self.server)
                .and_then(|s| s.find(&norm)),
            Err(_) => {
                ctx.begin(snap, self.server);
                session.respond_error(400).await?;
                return Ok(true);
            }
        };
        // A location that answers itself (`return`, files from disk) ends the request here.
        // These answers skip `response_filter`, so a draining generation closes them here.
        if let Some(i) = route.filter(|&i| snap.plan.servers[self.server].locations[i].answers()) {
            if self.draining.load(Ordering::Relaxed) {
                session.set_keepalive(None);
            }
            let server = &snap.plan.servers[self.server];
            let r = reply::answer(session, server, i, ctx.request_id, &mut ctx.scratch).await;
            ctx.begin(snap, self.server);
            if let Some(why) = r? {
                self.log_line(session, ctx, &why);
            }
            return Ok(true);
        }
        // A location names a pool or a canary; a canary picks this request's side (issue 15).
        let found = route.and_then(|i| {
            let loc = &snap.plan.servers[self.server].locations[i];
            let target = loc.target.or(loc.uwsgi.as_ref().map(|u| u.target))?;
            let pick = snap.plan.route(
                target,
                &SessionVars(session, ctx.request_id),
                &mut ctx.scratch,
            );
            Some((i, pick))
        });
        ctx.begin(snap, self.server);
        match found {
            Some((loc, pick)) => {
                ctx.location = loc;
                ctx.pool = pick.pool;
                ctx.canary = pick.canary;
                ctx.routed = true;
                // uwsgi apps are answered here: Pingora's proxy speaks only HTTP upstream.
                if ctx
                    .snap
                    .as_ref()
                    .is_some_and(|s| uwsgi::is_uwsgi(s, self.server, loc))
                {
                    uwsgi::serve(self, session, ctx).await?;
                    return Ok(true);
                }
                Ok(false)
            }
            None => {
                // nginx's 404 keeps the connection (Pingora's error page would close it).
                reply::page_response(session, 404, &[], ctx.request_id, &mut ctx.scratch).await?;
                Ok(true)
            }
        }
    }

    /// `client_max_body_size` for bodies without `Content-Length` (chunked, HTTP/2 DATA).
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

    /// Picks the server for this attempt by the pool's policy, with the location's timeouts;
    /// "no live upstreams" (502) when none is usable.
    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Ctx {
            snap,
            location,
            pool,
            attempt,
            peer,
            scratch,
            held,
            request_id,
            ..
        } = ctx;
        let (Some(s), Some(pp)) = (snap.as_ref(), pool_plan(snap, *pool)) else {
            return Err(Error::explain(ErrorType::InternalError, "no pool"));
        };
        let key = pp.placement(&SessionVars(session, *request_id), scratch);
        let Some(i) = pp.pool.select_reserved(key, attempt) else {
            if let Some(Some(log)) = s.error_logs.get(self.server) {
                let what = format!(
                    "no live upstreams while connecting to upstream \"{}\"",
                    pp.pool.name
                );
                errors::log_attempt(log, session, self.server_name(s), None, &what);
            }
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                "no live upstreams",
            ));
        };
        let p = &pp.pool.peers[i];
        let mut http = Box::new(p.http.clone());
        let t = s.plan.servers[self.server].locations[*location].timeouts;
        if t.any() {
            t.apply(&mut http.options);
        }
        *peer = Some(i);
        hold(held, (p.max_conns > 0).then_some(&p.state));
        ctx.start_try(i);
        Ok(http)
    }

    /// Applies `proxy_set_header` and keeps the upstream connection reusable.
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
        if loc.set_headers.is_empty() {
            return Ok(());
        }
        let vars = SessionVars(session, ctx.request_id);
        // The values are rendered into this thread's buffer, which outlives the request: no
        // allocation per request but the header value itself (no await while it is borrowed).
        SET_HEADER_BUF.with_borrow_mut(|buf| {
            for (name, tpl) in &loc.set_headers {
                buf.clear();
                tpl.render(&vars, buf);
                if buf.is_empty() {
                    // nginx: an empty value removes the header.
                    req.remove_header(name);
                } else {
                    let v = http::HeaderValue::from_bytes(buf).map_err(|_| {
                        Error::explain(ErrorType::InvalidHTTPHeader, "bad header value")
                    })?;
                    req.insert_header(name.clone(), v)?;
                }
            }
            if buf.capacity() > SET_HEADER_BUF_KEEP {
                buf.shrink_to(SET_HEADER_BUF_KEEP);
            }
            Ok(())
        })
    }

    /// Turns a `retry_on_status` status into a failed attempt while another server can take
    /// the request; otherwise the server's own response goes to the client, as in nginx.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        errors::check_reply_head(resp, ctx.snap.as_deref(), self.server)?;
        let status = resp.status.as_u16();
        ctx.try_status(status);
        if status < 429 {
            return Ok(());
        }
        let retry = ctx.pool_plan().is_some_and(|pp| {
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

    /// The attempt has its connection (`$upstream_connect_time`).
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.try_connected();
        Ok(())
    }

    /// The upstream response's last byte ends the attempt's time (`$upstream_response_time`).
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if end_of_stream {
            ctx.end_try();
        }
        Ok(None)
    }

    /// Adds the location's `add_header` lines, and `Connection: close` while this generation
    /// drains.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Direct field borrows (not a method) so that `scratch` can be lent beside the plan.
        let loc = (ctx.snap.as_ref())
            .filter(|_| ctx.routed)
            .and_then(|s| s.plan.servers.get(self.server))
            .and_then(|s| s.locations.get(ctx.location));
        if let Some(loc) = loc.filter(|l| !l.add_headers.is_empty()) {
            reply::add_headers(
                resp,
                &loc.add_headers,
                &SessionVars(session, ctx.request_id),
                &mut ctx.scratch,
            );
        }
        if self.draining.load(Ordering::Relaxed) {
            // The client learns now, in a response, that this connection ends: closing it
            // while idle would race with its next request.
            session.set_keepalive(None);
        }
        Ok(())
    }

    /// A connect failure: logged, counted against the server, retried on the next one.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.attempt_failed(session, ctx, &e, Phase::Connecting);
        // nginx's `proxy_next_upstream error timeout`: try the next server while any is left.
        if ctx.can_retry() {
            e.set_retry(true);
        }
        e
    }

    /// A failure after connecting: the server's faults are logged and counted and may be
    /// retried until the response has started; a client that went away ends the request.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e;
        if e.esource() != &ErrorSource::Upstream {
            // Not the server's doing: no failure counted, no retry. A client that closed or
            // broke its side (nginx: "client prematurely closed connection", at info level,
            // not shown by default) gets no line; `logging` writes 499. Anything else failed
            // in graygate itself and is logged as such.
            if !errors::client_gone(&e) {
                self.log_line(session, ctx, &errors::describe_own(&e));
            }
            e.set_retry(false);
            return e;
        }
        let started = session.response_written().is_some();
        let phase = if started { Phase::Body } else { Phase::Header };
        self.attempt_failed(session, ctx, &e, phase);
        let mut e = e.more_context(format!("Peer: {peer}"));
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        let retry = errors::Retry {
            started,
            replayable,
            server_left: ctx.can_retry(),
            on_timeout: ctx.pool_plan().is_some_and(|p| p.retry_on_timeout),
            client_reused,
        };
        retry.decide(&mut e);
        e
    }

    /// Pingora's own error lines are off: failed attempts are already in the server block's
    /// error log, in nginx's form.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        true
    }

    /// Answers a request that failed for good: 502, or 504 after an upstream timeout; nothing
    /// for a client that is gone or a response already under way (its connection closes).
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        let code = status_for(e);
        // An interim 1xx (a `100 Continue` sent for the body) is no response yet.
        let final_written = session.response_written().is_some_and(|r| !interim(r));
        if code > 0 && !final_written {
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Counts the request in the metrics, writes the access log line and, for a request no
    /// server failed, does nginx's success bookkeeping.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = match session.response_written() {
            // An interim 1xx alone (the error page could not be written) logs as no response.
            Some(r) if !interim(r) => r.status.as_u16(),
            // nginx's 499: the client went away before a response was sent.
            _ if e.is_some() => 499,
            _ => 0,
        };
        if e.is_none() {
            if let (Some(pool), Some(i)) = (ctx.pool(), ctx.peer) {
                pool.succeeded(i);
            }
        }
        ctx.finish_tries();
        let Some(snap) = ctx.snap.as_ref() else {
            return;
        };
        if let (true, Some(t)) = (ctx.routed, ctx.started) {
            let (srv, took) = (self.server, t.elapsed());
            crate::metrics::record(
                &snap.plan, srv, ctx.pool, ctx.canary, ctx.peer, status, took,
            );
        }
        let (Some(Some(log)), Some(sp)) = (
            snap.access_logs.get(self.server),
            snap.plan.servers.get(self.server),
        ) else {
            return;
        };
        log.append(|out| vars::access_line(out, &sp.access_format, session, ctx, status));
    }
}

/// A 1xx other than 101 (which starts the upgraded connection): a final response may follow.
fn interim(r: &ResponseHeader) -> bool {
    r.status.is_informational() && r.status != http::StatusCode::SWITCHING_PROTOCOLS
}
