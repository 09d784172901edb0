//! `uwsgi_pass`: a request answered by a uwsgi app server, over the uwsgi protocol.
//!
//! The whole exchange runs in `request_filter` (Pingora's HTTP proxy only speaks HTTP to
//! upstreams), with the pool's selection, passive health and retries, and the same `Ctx`
//! bookkeeping as the HTTP path, so that the access log, metrics and error log read alike:
//! 1. the request body's length: `Content-Length`, or a chunked body read whole first (bounded
//!    by `client_max_body_size`), since uwsgi apps need `CONTENT_LENGTH`, as nginx does;
//! 2. connect (`uwsgi_connect_timeout`); a failure is the server's and is retried on the next
//!    server while the pool allows it (nothing of the body has been read yet);
//! 3. the packet of CGI variables ([`params`]), then the body streamed from the client as it
//!    arrives (`uwsgi_send_timeout` per write); no retry from here on;
//! 4. the reply head, at most `proxy_buffer_size` bytes (`uwsgi_read_timeout` per read),
//!    parsed as HTTP or CGI ([`head`]); hop-by-hop headers dropped, `add_header` added;
//! 5. the body streamed to the client in 64 KiB reads until the app closes (or its
//!    `Content-Length` or own chunked framing ends), framed by the app's `Content-Length` or
//!    chunked (close-delimited for HTTP/1.0 clients), so that the client connection stays
//!    open when it can. A failure after the head aborts the client
//!    connection; nothing else is ever spliced onto a started response.
//!
//! Faults before the head are nginx's: connect refused or any error 502, a timeout 504, each
//! with one error log line naming the server (`upstream: "uwsgi://ADDR"`).

mod chunked;
mod conn;
mod faults;
mod head;
mod packet;
mod params;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora::{Error, ErrorType, Result};
use pingora_proxy::Session;

use super::ctx::hold;
use super::errors::Phase;
use super::vars::SessionVars;
use super::{Ctx, Gateway};
use crate::plan::uwsgi::{UwsgiPlan, DEFAULT_TIMEOUT};
use crate::plan::PoolPlan;
use crate::upstream::Peer;
use conn::{Conn, Fault};
use faults::{failed, fault_error, BAD_CHUNKS};

/// The most one read of the reply body takes.
const CHUNK: usize = 64 << 10;

/// The three timeouts for one server: the location's, else the pool's, else nginx's 60 s.
struct Limits {
    connect: Duration,
    send: Duration,
    read: Duration,
}

impl Limits {
    fn of(u: &UwsgiPlan, p: &Peer) -> Limits {
        let o = &p.http.options;
        Limits {
            connect: (u.connect_timeout)
                .or(o.connection_timeout)
                .unwrap_or(DEFAULT_TIMEOUT),
            send: u
                .send_timeout
                .or(o.write_timeout)
                .unwrap_or(DEFAULT_TIMEOUT),
            read: u.read_timeout.or(o.read_timeout).unwrap_or(DEFAULT_TIMEOUT),
        }
    }
}

/// The request's body as it will be sent.
enum Body {
    None,
    /// `Content-Length` bytes, streamed from the client.
    Stream(u64),
    /// A chunked body, read whole.
    Read(Vec<bytes::Bytes>),
}

/// Answers the request from the uwsgi server(s) of `ctx`'s pool. `Err` for a failure that
/// Pingora answers (502/504 before the head) or that ends the client connection.
pub(super) async fn serve(gw: &Gateway, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
    let Some(snap) = ctx.snap.clone() else {
        return Err(Error::explain(ErrorType::InternalError, "no snapshot"));
    };
    let server = &snap.plan.servers[gw.server];
    let loc = &server.locations[ctx.location];
    let (Some(u), Some(pp)) = (loc.uwsgi.as_ref(), snap.plan.pools.get(ctx.pool)) else {
        return Err(Error::explain(ErrorType::InternalError, "no uwsgi plan"));
    };
    if gw.draining.load(std::sync::atomic::Ordering::Relaxed) {
        session.set_keepalive(None);
    }
    let body = body_of(gw, session, ctx).await?;
    let len = match &body {
        Body::None => None,
        Body::Stream(n) => Some(*n),
        Body::Read(parts) => Some(parts.iter().map(|b| b.len() as u64).sum()),
    };
    let mut packet = Vec::with_capacity(1024);
    if let Err(packet::TooBig(n)) = params::build(&mut packet, session, ctx.request_id, u, len) {
        gw.log_line(session, ctx, &format!("uwsgi request is too big: {n}"));
        return Err(Error::explain(
            ErrorType::HTTPStatus(500),
            "uwsgi request is too big",
        ));
    }
    let (mut conn, limits) = connect(gw, session, ctx, u, pp).await?;
    let peer_failed = |gw: &Gateway, session: &Session, ctx: &mut Ctx, f: Fault, phase| {
        let e = fault_error(f, phase);
        failed(gw, session, ctx, &e, phase);
        e
    };
    if let Err(f) = conn.send(&packet, limits.send).await {
        return Err(peer_failed(gw, session, ctx, f, Phase::Header));
    }
    match body {
        Body::None => {}
        Body::Read(parts) => {
            for b in parts {
                if let Err(f) = conn.send(&b, limits.send).await {
                    return Err(peer_failed(gw, session, ctx, f, Phase::Header));
                }
            }
        }
        Body::Stream(_) => {
            while let Some(b) = read_body(gw, session, ctx).await? {
                if let Err(f) = conn.send(&b, limits.send).await {
                    return Err(peer_failed(gw, session, ctx, f, Phase::Header));
                }
            }
        }
    }
    // The reply head.
    let max = server.limits.upstream_head_max.max(1024);
    let mut buf = BytesMut::with_capacity(max);
    let head = loop {
        match head::parse(&buf) {
            Ok(Some(h)) => break h,
            Ok(None) if buf.len() >= max => {
                let e =
                    Error::explain(ErrorType::Custom("upstream sent too big header"), "").into_up();
                failed(gw, session, ctx, &e, Phase::Header);
                return Err(e);
            }
            Ok(None) => {}
            Err(why) => {
                let e = Error::explain(ErrorType::InvalidHTTPHeader, why).into_up();
                failed(gw, session, ctx, &e, Phase::Header);
                return Err(e);
            }
        }
        buf.reserve(max - buf.len());
        match conn.recv(&mut buf, limits.read).await {
            Ok(0) => {
                let e = Error::explain(ErrorType::ConnectionClosed, "").into_up();
                failed(gw, session, ctx, &e, Phase::Header);
                return Err(e);
            }
            Ok(_) => {}
            Err(f) => return Err(peer_failed(gw, session, ctx, f, Phase::Header)),
        }
    };
    let mut resp = head.resp;
    let status = resp.status.as_u16();
    ctx.try_status(status);
    super::reply::add_headers(
        &mut resp,
        &loc.add_headers,
        &SessionVars(session, ctx.request_id),
        &mut ctx.scratch,
    );
    let req = session.req_header();
    let no_body = req.method == http::Method::HEAD || status == 204 || status == 304;
    if head.content_length.is_none() && !no_body {
        if req.version == http::Version::HTTP_11 {
            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        } else {
            // Close-delimited: the client learns the end when the connection closes.
            session.set_keepalive(None);
        }
    }
    session
        .write_response_header(Box::new(resp), no_body)
        .await
        .map_err(Error::into_down)?;
    if no_body {
        ctx.end_try();
        return Ok(());
    }
    // The body: what came with the head, then the rest as it arrives.
    let _ = buf.split_to(head.len);
    let mut left = head.content_length.unwrap_or(u64::MAX);
    // An app that chunks its body itself: decoded here, framed anew for the client.
    let mut dechunk = head.chunked.then(chunked::Dechunk::default);
    loop {
        if !buf.is_empty() {
            let mut chunk = buf.split().freeze();
            if let Some(d) = dechunk.as_mut() {
                let mut out = Vec::with_capacity(chunk.len());
                if d.feed(&chunk, &mut out).is_err() {
                    let e = Error::explain(ErrorType::Custom(BAD_CHUNKS), "").into_up();
                    failed(gw, session, ctx, &e, Phase::Body);
                    return Err(e);
                }
                chunk = bytes::Bytes::from(out);
            } else if chunk.len() as u64 > left {
                chunk.truncate(left as usize);
            }
            if dechunk.is_none() {
                left -= chunk.len() as u64;
            }
            if !chunk.is_empty() {
                session
                    .write_response_body(Some(chunk), false)
                    .await
                    .map_err(Error::into_down)?;
            }
        }
        if left == 0 || dechunk.as_ref().is_some_and(chunked::Dechunk::done) {
            break;
        }
        buf.reserve(CHUNK);
        match conn.recv(&mut buf, limits.read).await {
            Ok(0) if head.content_length.is_none() && dechunk.is_none() => break,
            Ok(0) => {
                let e = Error::explain(ErrorType::ConnectionClosed, "").into_up();
                failed(gw, session, ctx, &e, Phase::Body);
                return Err(e);
            }
            Ok(_) => {}
            Err(f) => return Err(peer_failed(gw, session, ctx, f, Phase::Body)),
        }
    }
    ctx.end_try();
    session
        .write_response_body(None, true)
        .await
        .map_err(Error::into_down)
}

/// How the request's body will be sent: streamed for a `Content-Length`, read whole first
/// when chunked (the app must be told its length before it comes).
async fn body_of(gw: &Gateway, session: &mut Session, ctx: &mut Ctx) -> Result<Body> {
    let req = session.req_header();
    let chunked = req
        .headers
        .get(http::header::TRANSFER_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let length = req.headers.get(http::header::CONTENT_LENGTH).and_then(|v| {
        std::str::from_utf8(v.as_bytes())
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    });
    if !chunked && length.is_none_or(|n| n == 0) {
        return Ok(if length.is_some() {
            Body::Stream(0)
        } else {
            Body::None
        });
    }
    if !chunked {
        return Ok(Body::Stream(length.unwrap_or(0)));
    }
    let mut parts = Vec::new();
    while let Some(b) = read_body(gw, session, ctx).await? {
        parts.push(b);
    }
    Ok(Body::Read(parts))
}

/// The next piece of the client's body, within `client_max_body_size`; errors are the
/// client's (a 100 Continue goes first if it asked for one).
async fn read_body(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut Ctx,
) -> Result<Option<bytes::Bytes>> {
    if ctx.body_seen == 0 && expects_continue(session) {
        session
            .as_downstream_mut()
            .write_continue_response()
            .await
            .map_err(Error::into_down)?;
    }
    let b = session
        .read_request_body()
        .await
        .map_err(Error::into_down)?;
    super::guard::count_body(
        session,
        ctx.snap.as_deref(),
        gw.server,
        &b,
        &mut ctx.body_seen,
    )?;
    Ok(b)
}

fn expects_continue(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Picks a server and connects, moving on to the next server after a failure while the
/// pool allows it.
async fn connect(
    gw: &Gateway,
    session: &Session,
    ctx: &mut Ctx,
    u: &UwsgiPlan,
    pp: &PoolPlan,
) -> Result<(Conn, Limits)> {
    loop {
        let key = pp.placement(&SessionVars(session, ctx.request_id), &mut ctx.scratch);
        let Some(i) = pp.pool.select_reserved(key, &mut ctx.attempt) else {
            gw.log_line(
                session,
                ctx,
                &format!(
                    "no live upstreams while connecting to upstream \"{}\"",
                    pp.pool.name
                ),
            );
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                "no live upstreams",
            ));
        };
        let p = &pp.pool.peers[i];
        ctx.peer = Some(i);
        hold(&mut ctx.held, (p.max_conns > 0).then_some(&p.state));
        ctx.start_try(i);
        let limits = Limits::of(u, p);
        match Conn::open(p, limits.connect).await {
            Ok(c) => {
                ctx.try_connected();
                return Ok((c, limits));
            }
            Err(f) => {
                let mut e = fault_error(f, Phase::Connecting);
                failed(gw, session, ctx, &e, Phase::Connecting);
                if !ctx.can_retry() {
                    e.set_retry(false);
                    return Err(e);
                }
            }
        }
    }
}

/// Whether the location at `i` of `server` passes to uwsgi.
pub(super) fn is_uwsgi(snap: &Arc<crate::snapshot::Snapshot>, server: usize, i: usize) -> bool {
    snap.plan
        .servers
        .get(server)
        .and_then(|s| s.locations.get(i))
        .is_some_and(|l| l.uwsgi.is_some())
}
