//! What a failed upstream attempt means: the status the client gets, the error log line, and
//! whether the next server may try.

use std::io::Write;

use pingora::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;

use crate::logs::{access, error, LogFile};

/// The status for an error that ends a request: 504 for upstream timeouts, 502 for other
/// upstream failures (as nginx), 0 when the client is gone and nothing can be sent.
pub fn status_for(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(c) => *c,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            504
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                // `client_body_timeout`: nginx's 408.
                ErrorType::ReadTimedout => 408,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// Where in the exchange with the server an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    /// Sending the request or waiting for the response header.
    Header,
    /// Reading the response body, after the header went to the client.
    Body,
}

/// What decides whether a server's failure is retried on the next server.
pub struct Retry {
    /// Part of the response went to the client already.
    pub started: bool,
    /// Idempotent method, and the request body is still whole in the retry buffer.
    pub replayable: bool,
    /// Another server could take the request (see [`crate::upstream::Pool::can_retry`]).
    pub server_left: bool,
    /// The pool's `retry_on_timeout`.
    pub on_timeout: bool,
    /// The failed attempt ran on a pooled connection.
    pub client_reused: bool,
}

impl Retry {
    /// Marks `e`, a failure of the server, retryable or not.
    pub fn decide(&self, e: &mut Error) {
        let retry = if self.started || !self.replayable || !self.server_left {
            // Once a byte went to the client, another server's answer cannot follow it: the
            // response ends here and the connection closes.
            false
        } else {
            match e.etype() {
                // Raised by `upstream_response_filter` only when this status is to be retried.
                ErrorType::HTTPStatus(_) => true,
                // nginx's `proxy_next_upstream timeout`, for idempotent requests only.
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => self.on_timeout,
                // nginx's `proxy_next_upstream error`: the server reset or closed before the
                // response began, on a fresh connection as on a reused one (a server killed
                // with requests in flight must not fail them).
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => true,
                // Anything else (an invalid response, ...): only if a pooled connection had
                // gone stale.
                _ => {
                    e.retry.decide_reuse(self.client_reused);
                    return;
                }
            }
        };
        e.set_retry(retry);
    }
}

/// Whether `e` is the client's side going away (closed, reset, unwritable).
pub fn client_gone(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream
        || matches!(
            e.etype(),
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
        )
}

/// A failure that is neither the server's nor the client's going away.
pub fn describe_own(e: &Error) -> String {
    format!("{} ({}) while proxying", e.etype().as_str(), e.root_cause())
}

/// nginx's wording for an upstream failure, so existing alerts and greps keep matching.
pub fn describe(e: &Error, phase: Phase) -> String {
    let phase = match phase {
        Phase::Connecting => "while connecting to upstream",
        Phase::Header => "while reading response header from upstream",
        Phase::Body => "while reading upstream",
    };
    match e.etype() {
        ErrorType::HTTPStatus(c) => format!("upstream returned status {c} {phase}"),
        ErrorType::ConnectRefused => format!("connect() failed (111: Connection refused) {phase}"),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            format!("upstream timed out (110: Connection timed out) {phase}")
        }
        ErrorType::ConnectionClosed => format!("upstream prematurely closed connection {phase}"),
        ErrorType::InvalidHTTPHeader => format!("{} {phase}", invalid_reply(e)),
        ErrorType::Custom(TOO_BIG) => format!("{TOO_BIG} {phase}"),
        ErrorType::ReadError | ErrorType::WriteError => {
            format!("recv() failed (104: Connection reset by peer) {phase}")
        }
        _ => format!("{} ({}) {phase}", e.etype().as_str(), e.root_cause()),
    }
}

/// nginx's words for a reply head Pingora could not take, with the parser's reason. Never the
/// reply's own bytes: Pingora's context holds the whole raw head, escaped, which may be large
/// and is the server's to choose.
fn invalid_reply(e: &Error) -> String {
    // The deepest cause: the parser's (httparse, http) error, or Pingora's own explanation.
    let mut at = e;
    while let Some(c) = at.cause.as_deref() {
        match c.downcast_ref::<Error>() {
            Some(inner) => at = inner,
            None => return nginx_words(&c.to_string()),
        }
    }
    nginx_words(at.context.as_ref().map_or("", |c| c.as_str()))
}

fn nginx_words(reason: &str) -> String {
    // Pingora's raw-head context ("buf: ...") is no reason to repeat.
    let reason = if reason.starts_with("buf:") {
        ""
    } else {
        reason
    };
    let mut safe = Vec::new();
    access::escaped(&mut safe, &reason.as_bytes()[..reason.len().min(80)]);
    let safe = String::from_utf8_lossy(&safe);
    // No status line: nginx would take the reply for an HTTP/0.9 body (and pass it on).
    let what = if matches!(
        reason,
        "invalid HTTP version"
            | "invalid response status"
            | "invalid status"
            | "invalid status code"
    ) {
        "upstream sent no valid HTTP/1.0 header"
    } else {
        "upstream sent invalid header"
    };
    if safe.is_empty() {
        what.to_string()
    } else {
        format!("{what} ({safe})")
    }
}

/// nginx's error for a reply head over `proxy_buffer_size`.
const TOO_BIG: &str = "upstream sent too big header";

/// Refuses a reply head bigger than server block `server`'s `proxy_buffer_size` (nginx's, 4k
/// by default), counted as nginx counts it: status line, header lines and the blank line.
/// Pingora itself takes heads of up to 1 MB.
pub fn check_reply_head(
    resp: &pingora::http::ResponseHeader,
    snap: Option<&crate::snapshot::Snapshot>,
    server: usize,
) -> pingora::Result<()> {
    let Some(max) = snap
        .and_then(|s| s.plan.servers.get(server))
        .map(|s| s.limits.upstream_head_max)
    else {
        return Ok(());
    };
    // "HTTP/1.1 200 " + reason + CRLF, and the final CRLF.
    let mut size = 13 + resp.get_reason_phrase().map_or(0, str::len) + 4;
    for (name, value) in resp.headers.iter() {
        size += name.as_str().len() + value.len() + 4;
        if size > max {
            // The server's fault: counted against it, and (as nginx's default
            // `proxy_next_upstream error timeout`) not retried.
            let mut e = Error::explain(ErrorType::Custom(TOO_BIG), "over proxy_buffer_size");
            e.set_retry(false);
            return Err(e.into_up());
        }
    }
    Ok(())
}

/// Writes one nginx-style error line for a failed attempt against `upstream`.
pub fn log_attempt(
    log: &LogFile,
    session: &Session,
    server: &str,
    upstream: Option<std::net::SocketAddr>,
    what: &str,
) {
    struct Http(std::net::SocketAddr);
    impl std::fmt::Display for Http {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "http://{}/", self.0)
        }
    }
    let url = upstream.map(Http);
    log_line(
        log,
        session,
        server,
        url.as_ref().map(|u| u as &dyn std::fmt::Display),
        what,
    );
}

/// One nginx-style error line about this request, naming the `upstream` server (as a URL:
/// `http://ADDR/`, `uwsgi://ADDR`) if there was one.
pub fn log_line(
    log: &LogFile,
    session: &Session,
    server: &str,
    upstream: Option<&dyn std::fmt::Display>,
    what: &str,
) {
    let req = session.req_header();
    log.append(|out| {
        error::prefix(out, "error");
        out.extend_from_slice(what.as_bytes());
        out.extend_from_slice(b", client: ");
        match super::vars::client_addr(session) {
            Some(a) => {
                let _ = write!(out, "{}", a.ip());
            }
            None => out.push(b'-'),
        }
        let _ = write!(out, ", server: {server}, request: \"");
        super::vars::request_line(session).write(out);
        out.push(b'"');
        if let Some(u) = upstream {
            let _ = write!(out, ", upstream: \"{u}\"");
        }
        if let Some(h) = req.headers.get(http::header::HOST) {
            out.extend_from_slice(b", host: \"");
            access::escaped(out, h.as_bytes());
            out.push(b'"');
        }
        out.push(b'\n');
    });
}
