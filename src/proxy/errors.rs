//! What a failed upstream attempt means: the status the client gets and the error log line.

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
