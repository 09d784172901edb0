//! A failed step of the exchange: the Pingora error it becomes (so that statuses, metrics and
//! retries read as on the HTTP path), the server's passive health, and nginx's error line.

use std::fmt;

use pingora::{Error, ErrorType};
use pingora_proxy::Session;

use super::conn::Fault;
use crate::proxy::ctx::hold;
use crate::proxy::errors::{self, Phase};
use crate::proxy::{Ctx, Gateway};
use crate::upstream::Peer;

/// nginx's words for a chunked body that does not parse.
pub(super) const BAD_CHUNKS: &str = "upstream sent invalid chunked response";

/// A server as nginx names it in its error log.
struct Url<'a>(&'a Peer);

impl fmt::Display for Url<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.unix {
            Some(p) => write!(f, "uwsgi://unix:{}:", p.display()),
            None => write!(f, "uwsgi://{}", self.0.addr),
        }
    }
}

/// A step's failure as the Pingora error the rest of the proxy knows (statuses, metrics).
pub(super) fn fault_error(f: Fault, phase: Phase) -> Box<Error> {
    let etype = match (&f, phase) {
        (Fault::TimedOut, Phase::Connecting) => ErrorType::ConnectTimedout,
        (Fault::TimedOut, _) => ErrorType::ReadTimedout,
        (Fault::Io(e), Phase::Connecting) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            ErrorType::ConnectRefused
        }
        (Fault::Io(_), Phase::Connecting) => ErrorType::ConnectError,
        (Fault::Io(_), _) => ErrorType::ReadError,
    };
    match f {
        Fault::TimedOut => Error::explain(etype, "timed out").into_up(),
        Fault::Io(e) => Error::because(etype, "uwsgi", e).into_up(),
    }
}

/// A fault of the server: counted against it (nginx's passive health), its `max_conns` slot
/// given back, and one line in the server block's error log naming it.
pub(super) fn failed(gw: &Gateway, session: &Session, ctx: &mut Ctx, e: &Error, phase: Phase) {
    if let (Some(pool), Some(i)) = (ctx.pool(), ctx.peer) {
        pool.failed(i);
    }
    ctx.try_failed(e, phase == Phase::Connecting);
    hold(&mut ctx.held, None);
    let what = describe(e, phase);
    let (Some(snap), Some(peer)) = (ctx.snap.as_ref(), ctx.peer()) else {
        return;
    };
    if let Some(Some(log)) = snap.error_logs.get(gw.server) {
        errors::log_line(log, session, gw.server_name(snap), Some(&Url(peer)), &what);
    }
}

/// nginx's words; a connect error other than a refusal names its errno as nginx does.
fn describe(e: &Error, phase: Phase) -> String {
    if e.etype() == &ErrorType::Custom(BAD_CHUNKS) {
        return format!("{BAD_CHUNKS} while reading upstream");
    }
    if let (ErrorType::ConnectError, Some(io)) = (
        e.etype(),
        e.cause
            .as_deref()
            .and_then(|c| c.downcast_ref::<std::io::Error>()),
    ) {
        let code = io.raw_os_error().unwrap_or(0);
        let text = std::io::Error::from_raw_os_error(code).to_string();
        let text = text.split(" (os error").next().unwrap_or(&text);
        return format!("connect() failed ({code}: {text}) while connecting to upstream");
    }
    errors::describe(e, phase)
}
