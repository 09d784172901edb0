//! The admin listener: a small HTTP/1.1 server (a Pingora `ServeHttp` service in the worker, so
//! its socket passes to a new binary on upgrade like the others) for the JSON API that changes
//! canaries and weights live, and `/metrics`.
//!
//! - [`api`]: the JSON endpoints and the changes they make.
//! - `page.html`: the live page at `/` (percent, state, steps, both sides' numbers, a chart,
//!   and the buttons), polling `/api/status` every second.
//! - [`client`]: the `graygate canary ...` / `graygate weight ...` commands, which call the API
//!   of the instance that `-c FILE` names.
//!
//! A listener with a token (required when not on loopback) answers 401 to any request without
//! `Authorization: Bearer TOKEN`, and says nothing else; the token is checked before a byte of
//! the body is read, and a body is read only up to 64 KiB and for 5 s.

pub mod api;
pub mod client;

use std::net::SocketAddr;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;

use crate::snapshot::Live;

/// The live page (issue 16): HTML, CSS and JS in one file, embedded; it fetches nothing but
/// this listener's API.
const PAGE: &str = include_str!("page.html");

/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;

/// Longest time a request body may take to arrive (API bodies are a few bytes).
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The admin HTTP app.
pub struct Admin {
    pub live: Live,
}

/// A Pingora service serving the admin API on `listen`.
pub fn service(listen: SocketAddr, live: Live) -> Service<Admin> {
    let mut s = Service::new("admin".to_string(), Admin { live });
    s.add_tcp(&listen.to_string());
    s
}

/// Compares without an early exit, so response time says nothing about the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// A JSON response.
pub(crate) fn json(status: u16, body: &serde_json::Value) -> Response<Vec<u8>> {
    let mut text = serde_json::to_vec_pretty(body).unwrap_or_default();
    text.push(b'\n');
    respond(status, "application/json", text)
}

fn respond(status: u16, ctype: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::builder()
        .status(status)
        .header("Content-Type", ctype)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store");
    if status == 401 {
        r = r.header("WWW-Authenticate", "Bearer");
    }
    r.body(body).unwrap_or_else(|_| Response::new(Vec::new()))
}

/// Why a request body was not read.
enum BodyError {
    TooLarge,
    Timeout,
    Broken,
}

/// Reads the request body: at most [`MAX_BODY`] bytes, within [`BODY_TIMEOUT`] in all.
async fn read_body(s: &mut ServerSession) -> Result<Vec<u8>, BodyError> {
    let declared = s
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(BodyError::TooLarge);
    }
    let read = async {
        let mut body = Vec::new();
        loop {
            match s.read_request_body().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > MAX_BODY => {
                    return Err(BodyError::TooLarge)
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => return Ok(body),
                Err(_) => return Err(BodyError::Broken),
            }
        }
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or(Err(BodyError::Timeout))
}

impl Admin {
    /// Whether `s` may use the API: the listener has no token, or `s` carries it.
    fn authorized(&self, s: &ServerSession) -> bool {
        let snap = self.live.load();
        let Some(token) = snap.plan.admin.as_ref().and_then(|a| a.token.as_deref()) else {
            return true;
        };
        let given = s
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        given.is_some_and(|g| same(g.trim_ascii(), token.as_bytes()))
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let req = s.req_header();
        // The page holds no state (its script asks the API, with the token), so it is served
        // without one: the browser must load it before it can ask for the token.
        let page = req.method == http::Method::GET && req.uri.path() == "/";
        // The token is checked on the head alone: an unauthorized client gets nothing read
        // from its body (and its connection is closed rather than drained).
        if !page && !self.authorized(s) {
            s.set_keepalive(None);
            return json(401, &serde_json::json!({ "error": "unauthorized" }));
        }
        let body = match read_body(s).await {
            Ok(b) => b,
            Err(e) => {
                s.set_keepalive(None);
                return match e {
                    BodyError::TooLarge => api::error(
                        413,
                        "body",
                        &format!("request body larger than {MAX_BODY} bytes"),
                    ),
                    BodyError::Timeout => api::error(
                        408,
                        "body",
                        &format!("request body not received within {BODY_TIMEOUT:?}"),
                    ),
                    BodyError::Broken => api::error(400, "body", "request body unreadable"),
                };
            }
        };
        if page {
            return respond(200, "text/html; charset=utf-8", PAGE.as_bytes().to_vec());
        }
        let req = s.req_header();
        let who = api::Who {
            cli: req
                .headers
                .get("x-graygate-client")
                .is_some_and(|v| v == "cli"),
            addr: s.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
        };
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        if method == http::Method::GET && path == "/metrics" {
            let snap = self.live.load_full();
            return respond(
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                crate::metrics::encode_plan(&snap.plan),
            );
        }
        // A change waits for the store's lock, compiles and writes the state file: not on the
        // runtime's threads.
        let live = self.live.clone();
        tokio::task::spawn_blocking(move || api::handle(&live, &method, &path, &body, &who))
            .await
            .unwrap_or_else(|e| api::error(500, "request", &format!("internal error: {e}")))
    }
}
