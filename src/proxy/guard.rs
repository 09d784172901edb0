//! The connection-side half of the client limits: reads each request head itself (with
//! `client_header_timeout` and the size limits), refuses a bad one with nginx's status, one
//! access log line and a closed connection, and hands a good one to Pingora as already-read
//! bytes. Called from the keep-alive loop of [`crate::lifecycle`]'s `Drained`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::head::{self, Reject, Scan, Verdict};
use crate::logs::access;
use crate::plan::limits::Limits;
use crate::snapshot::{Live, Snapshot};

/// First allocation for a head, grown as needed: nginx's `client_header_buffer_size` (1k),
/// which most heads fit, so that a slow client holds little.
const HEAD_BUF: usize = 1024;

/// The limits of one server block, read from the current snapshot for each request.
pub struct HeadGuard {
    live: Live,
    server: usize,
    /// This server block's `graygate_connections` gauges (metrics are on or off for the life
    /// of a worker: turning them on changes the admin listener, hence a new generation).
    conns: Option<crate::metrics::Conns>,
}

/// A head that passed, ready for Pingora.
pub struct Checked {
    bytes: BytesMut,
    snap: Arc<Snapshot>,
}

impl Checked {
    /// Whether the head asks for a protocol upgrade (an `Upgrade` header: a WebSocket).
    pub fn is_upgrade(&self) -> bool {
        self.bytes
            .windows(9)
            .any(|w| w[0] == b'\n' && w[1..].eq_ignore_ascii_case(b"upgrade:"))
    }
}

impl HeadGuard {
    pub fn new(live: Live, server: usize) -> HeadGuard {
        let conns = live.load().plan.metrics.conns(server).cloned();
        HeadGuard {
            live,
            server,
            conns,
        }
    }

    fn limits<'a>(&self, snap: &'a Snapshot) -> Option<&'a Limits> {
        snap.plan.servers.get(self.server).map(|s| &s.limits)
    }

    /// Takes one of the worker's `worker_connections` slots for a new connection, or refuses
    /// it (the caller closes it unanswered, as nginx does) with a line in the process log.
    pub fn admit(&self, stream: &Stream) -> Option<ConnSlot> {
        self.admit_peer(|| peer(stream))
    }

    /// [`Self::admit`] for a connection not yet a [`Stream`] (a TLS one at its accept);
    /// `peer` names it in the refusal's log line.
    pub fn admit_peer(&self, peer: impl FnOnce() -> Option<SocketAddr>) -> Option<ConnSlot> {
        let max = self.live.load().plan.settings.worker_connections;
        let open = OPEN.fetch_add(1, Ordering::AcqRel);
        if open >= max {
            OPEN.fetch_sub(1, Ordering::AcqRel);
            refused(max, peer());
            return None;
        }
        // `graygate_connections{state="active"}`, when metrics are on.
        let active = self.conns.as_ref().map(|c| {
            c.active.inc();
            c.active.clone()
        });
        Some(ConnSlot(active))
    }

    /// How long a connection may wait for its next request: `client_header_timeout` before
    /// the first, `keepalive_timeout` between requests.
    pub fn idle_timeout(&self, first: bool) -> Duration {
        // Read in place: `Limits` holds the `real_ip` lists, a clone would allocate per request.
        let snap = self.live.load();
        let d = Limits::default();
        let lim = self.limits(&snap).unwrap_or(&d);
        if first {
            lim.header_timeout
        } else {
            lim.keepalive_timeout
        }
    }

    /// The limits of an HTTP/2 connection of this server block, as of its start.
    pub fn h2_limits(&self) -> H2Limits {
        let snap = self.live.load();
        let d = Limits::default();
        let lim = self.limits(&snap).unwrap_or(&d);
        H2Limits {
            handshake: lim.header_timeout,
            idle: lim.keepalive_timeout,
            streams: lim.keepalive_requests.max(1),
            send: lim.send_timeout,
            drain: LINGERING_TIME,
        }
    }

    /// Reads the next request head from `stream`, whose first byte, `first`, the keep-alive
    /// loop has read already; until `deadline` if given (the first request's:
    /// `client_header_timeout` counts from the accept, as in nginx, not again from the first
    /// byte), else for `client_header_timeout`. `None`: the connection is done (refused, timed
    /// out or closed); a refusal has been answered and logged.
    pub async fn read_head(
        &self,
        stream: &mut Stream,
        deadline: Option<tokio::time::Instant>,
        first: u8,
    ) -> Option<Checked> {
        let snap = self.live.load_full();
        let _reading = self
            .conns
            .as_ref()
            .map(|c| crate::metrics::Busy::new(&c.reading));
        let lim = self.limits(&snap)?;
        let deadline = deadline.unwrap_or_else(|| tokio::time::Instant::now() + lim.header_timeout);
        let mut buf = BytesMut::with_capacity(HEAD_BUF);
        buf.extend_from_slice(&[first]);
        let mut scan = Scan::default();
        loop {
            if buf.capacity() == buf.len() {
                buf.reserve(HEAD_BUF);
            }
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => {
                    // Closed or reset mid-head: nobody to answer, but nginx logs it as 400
                    // ("client prematurely closed connection"), so a request sent is a line.
                    if !buf.is_empty() {
                        self.log(&snap, stream, &buf, 400);
                    }
                    return None;
                }
                Err(_) => {
                    // nginx closes without an answer and logs 408.
                    if !buf.is_empty() {
                        self.log(&snap, stream, &buf, 408);
                    }
                    return None;
                }
            }
            match scan.feed(&buf, lim) {
                Verdict::More => {}
                Verdict::Done(h) => {
                    if !h.drop.is_empty() {
                        buf = without(&buf, &h.drop);
                    }
                    return Some(Checked { bytes: buf, snap });
                }
                Verdict::Reject(r) => {
                    self.refuse(&snap, stream, &buf, r).await;
                    return None;
                }
            }
        }
    }

    async fn refuse(&self, snap: &Snapshot, stream: &mut Stream, buf: &[u8], r: Reject) {
        let resp = head::error_response(r);
        let written = match stream.write_all(&resp).await {
            Ok(()) => {
                let _ = stream.flush().await;
                resp.len()
            }
            Err(_) => 0,
        };
        let _ = stream.shutdown().await;
        let body = written.saturating_sub(resp.len() - body_len(&resp));
        self.log_sent(snap, stream, buf, r.status, body);
    }

    fn log(&self, snap: &Snapshot, stream: &Stream, buf: &[u8], status: u16) {
        self.log_sent(snap, stream, buf, status, 0);
    }

    fn log_sent(&self, snap: &Snapshot, stream: &Stream, buf: &[u8], status: u16, sent: usize) {
        let Some(Some(log)) = snap.access_logs.get(self.server) else {
            return;
        };
        let (m, t, v) = head::request_parts(buf);
        let method = String::from_utf8_lossy(m);
        // The log's version field knows the real versions only; others show as HTTP/1.1.
        let version = match v {
            b"HTTP/1.0" => http::Version::HTTP_10,
            b"HTTP/0.9" => http::Version::HTTP_09,
            b"HTTP/2.0" => http::Version::HTTP_2,
            b"HTTP/3.0" => http::Version::HTTP_3,
            _ => http::Version::HTTP_11,
        };
        let entry = access::Entry {
            remote_addr: peer(stream).map(|a| a.ip()),
            authorization: None,
            request: access::RequestLine {
                method: &method,
                uri: t,
                version,
            },
            status,
            body_bytes_sent: sent,
            referer: None,
            user_agent: None,
        };
        let Some(sp) = snap.plan.servers.get(self.server) else {
            return;
        };
        log.append(|out| sp.access_format.write_entry(out, &entry));
    }

    /// Gives `head` to Pingora's session and sets the per-request limits on it.
    pub fn apply(&self, session: &mut ServerSession, head: Checked) {
        let Some(lim) = self.limits(&head.snap) else {
            return;
        };
        session.set_read_timeout(Some(lim.body_timeout));
        // nginx's `send_timeout` (`client_send_timeout`): a client that stops reading its
        // response does not hold the request (an open file, an upstream connection) for ever;
        // and its `lingering_time` (30s): an unread request body is drained at most that long.
        session.set_write_timeout(Some(lim.send_timeout));
        session.set_total_drain_timeout(Some(LINGERING_TIME));
        if session.get_keepalive_reuses_remaining().is_none() {
            // First request of the connection: Pingora counts the rest down for us.
            let reuses = if lim.keepalive_timeout.is_zero() {
                0
            } else {
                lim.keepalive_requests.saturating_sub(1)
            };
            session.set_keepalive_reuses_remaining(Some(u32::try_from(reuses).unwrap_or(u32::MAX)));
        }
        if let ServerSession::H1(s) = session {
            s.set_pipelined_prefix(head.bytes);
        }
    }
}

/// What an HTTP/2 connection is allowed (see `lifecycle::h2`): nginx's meaning of each.
#[derive(Debug, Clone, Copy)]
pub struct H2Limits {
    /// `client_header_timeout`, from the accept to the end of the client's preface.
    pub handshake: Duration,
    /// `keepalive_timeout`: with no stream in flight this long, the connection closes.
    pub idle: Duration,
    /// `keepalive_requests`: streams per connection, then GOAWAY.
    pub streams: u64,
    /// `send_timeout`: the longest one write of a response may wait for the client.
    pub send: Duration,
    /// `lingering_time`: the longest an unread request body is drained.
    pub drain: Duration,
}

impl Default for H2Limits {
    fn default() -> H2Limits {
        let d = Limits::default();
        H2Limits {
            handshake: d.header_timeout,
            idle: d.keepalive_timeout,
            streams: d.keepalive_requests,
            send: d.send_timeout,
            drain: LINGERING_TIME,
        }
    }
}

/// nginx's default `lingering_time`: the longest an unread request body is drained.
const LINGERING_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Client connections open in this worker process, all server blocks together.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// A connection's place among `worker_connections` (and in its server block's active
/// connections gauge), given back when it closes.
pub struct ConnSlot(Option<prometheus_client::metrics::gauge::Gauge>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

/// Logs a refusal: the first of each second with the count since the last line, so that a
/// flood of connections cannot flood the log.
fn refused(max: usize, peer: Option<SocketAddr>) {
    static SINCE_LAST: AtomicU64 = AtomicU64::new(0);
    static LAST_SEC: AtomicU64 = AtomicU64::new(0);
    let n = SINCE_LAST.fetch_add(1, Ordering::Relaxed) + 1;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_SEC.swap(now, Ordering::Relaxed) != now {
        SINCE_LAST.store(0, Ordering::Relaxed);
        let who = peer.map_or_else(|| "-".to_string(), |p| p.to_string());
        log::error!(
            "{max} worker_connections are not enough: refused connection from {who} ({n} refused since the last such line)"
        );
    }
}

fn peer(stream: &Stream) -> Option<SocketAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
}

fn body_len(resp: &[u8]) -> usize {
    resp.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |p| resp.len() - p - 4)
}

/// `buf` without the byte ranges in `drop` (sorted, disjoint).
fn without(buf: &[u8], drop: &[std::ops::Range<usize>]) -> BytesMut {
    let mut out = BytesMut::with_capacity(buf.len());
    let mut at = 0;
    for r in drop {
        out.extend_from_slice(&buf[at..r.start]);
        at = r.end;
    }
    out.extend_from_slice(&buf[at..]);
    out
}

/// Per-request work after Pingora has parsed the head: the `real_ip` address, and an HTTP/2
/// request's cookies in one header.
pub fn on_request(session: &mut pingora_proxy::Session, snap: &Snapshot, server: usize) {
    if let Some(s) = snap.plan.servers.get(server) {
        super::realip::resolve(session, &s.limits);
    }
    if session.req_header().version == http::Version::HTTP_2 {
        join_cookies(session.req_header_mut());
    }
}

/// HTTP/2 clients may send each cookie as a field of its own (RFC 9113 8.2.3, for HPACK's
/// sake). As nginx does, they are joined with "; " into one `Cookie` header: an HTTP/1.1
/// server expects one (RFC 6265 5.4), and `$http_cookie` is the whole list. Only a request
/// with more than one is touched (one allocation).
fn join_cookies(req: &mut pingora::http::RequestHeader) {
    let all = req.headers.get_all(http::header::COOKIE);
    if all.iter().nth(1).is_none() {
        return;
    }
    let len = all.iter().map(|v| v.len() + 2).sum::<usize>();
    let mut joined = Vec::with_capacity(len);
    for v in all.iter() {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Each part was a valid value, and "; " is too.
    if let Ok(v) = http::HeaderValue::from_bytes(&joined) {
        let _ = req.insert_header(http::header::COOKIE, v);
    }
}

/// A request whose `Content-Length` is over `client_max_body_size`: that length, to be
/// refused with 413 before any of its body is read or forwarded. HTTP/1 heads were checked
/// by [`HeadGuard::read_head`] already; this is for HTTP/2, whose heads Pingora reads.
pub fn too_large(session: &pingora_proxy::Session, snap: &Snapshot, server: usize) -> Option<u64> {
    let max = snap.plan.servers.get(server)?.limits.max_body;
    let len = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())?;
    (max > 0 && len > max).then_some(len)
}

/// Counts request body bytes as they stream: a body without `Content-Length` (HTTP/1.1
/// chunked, or HTTP/2 DATA frames) over `client_max_body_size` ends the request with 413 (one
/// with a `Content-Length` over it was refused before it started, see [`too_large`]).
pub fn count_body(
    _session: &mut pingora_proxy::Session,
    snap: Option<&Snapshot>,
    server: usize,
    body: &Option<bytes::Bytes>,
    seen: &mut u64,
) -> pingora::Result<()> {
    let Some(b) = body else {
        return Ok(());
    };
    *seen = seen.saturating_add(b.len() as u64);
    let max = snap
        .and_then(|s| s.plan.servers.get(server))
        .map_or(0, |s| s.limits.max_body);
    if max > 0 && *seen > max {
        let mut e = pingora::Error::explain(
            pingora::ErrorType::HTTPStatus(413),
            "client intended to send too large body",
        );
        // The client's fault: not a failure of the upstream.
        e.as_down();
        e.set_retry(false);
        return Err(e);
    }
    Ok(())
}
