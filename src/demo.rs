//! Built-in demo backends: a stand-in for the seed's uwsgi apps, so the default config answers
//! on a fresh machine, and the backend that tests and benchmarks run as real processes.
//!
//! A demo backend answers every request with its name and the request headers it received,
//! adds the seed's CORS header, and takes query parameters for tests: `delay_ms=N` waits
//! before answering (`delay_ms_NAME=N`: on backend NAME instead), `status=N` answers with that status (`only=NAME`: on that backend alone).

use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

/// One demo backend.
pub struct Demo {
    pub name: String,
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

#[async_trait]
impl ServeHttp for Demo {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        // Drain the request body so the connection can be reused.
        while let Ok(Some(_)) = s.read_request_body().await {}
        let req = s.req_header();
        let query = req.uri.query().unwrap_or("");
        // `delay_ms_NAME=N` overrides `delay_ms` on backend NAME (a slower canary in tests).
        let own_delay = format!("delay_ms_{}", self.name);
        let delay = query_param(query, &own_delay).or_else(|| query_param(query, "delay_ms"));
        if let Some(ms) = delay.and_then(|v| v.parse::<u64>().ok()) {
            tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
        }
        // `only=NAME`: the status applies to that backend alone (to test retries).
        let applies = query_param(query, "only").is_none_or(|n| n == self.name);
        let status = query_param(query, "status")
            .and_then(|v| v.parse::<u16>().ok())
            .filter(|_| applies)
            .unwrap_or(200);
        let mut body = format!("backend: {}\n", self.name).into_bytes();
        body.extend_from_slice(format!("request: {} {}\n", req.method, req.uri).as_bytes());
        for (k, v) in req.headers.iter() {
            body.extend_from_slice(k.as_str().as_bytes());
            body.extend_from_slice(b": ");
            body.extend_from_slice(v.as_bytes());
            body.push(b'\n');
        }
        Response::builder()
            .status(status)
            .header("Content-Type", "text/plain")
            .header("Content-Length", body.len())
            .header("Access-Control-Allow-Origin", "*")
            .header("X-Backend", self.name.as_str())
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
