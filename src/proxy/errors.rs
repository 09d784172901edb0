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
        ErrorType::ReadError | ErrorType::WriteError => {
            format!("recv() failed (104: Connection reset by peer) {phase}")
        }
        _ => format!("{} ({}) {phase}", e.etype().as_str(), e.root_cause()),
    }
}

/// Writes one nginx-style error line for a failed attempt against `upstream`.
pub fn log_attempt(
    log: &LogFile,
    session: &Session,
    server: &str,
    upstream: Option<std::net::SocketAddr>,
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
            let _ = write!(out, ", upstream: \"http://{u}/\"");
        }
        if let Some(h) = req.headers.get(http::header::HOST) {
            out.extend_from_slice(b", host: \"");
            access::escaped(out, h.as_bytes());
            out.push(b'"');
        }
        out.push(b'\n');
    });
}
