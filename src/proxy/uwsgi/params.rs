//! The CGI variables of one request, as nginx's stock `uwsgi_params` and
//! `uwsgi_pass_request_headers` send them, with the location's `uwsgi_param` over them.

use std::io::Write;

use pingora_proxy::Session;

use super::packet::{Packet, TooBig};
use crate::plan::uwsgi::{UwsgiPlan, BUILT_IN};
use crate::plan::Vars;
use crate::proxy::vars::SessionVars;

/// Writes the request's variables into `buf` as a whole uwsgi packet. `content_length` is
/// the body's length (`None`: no body, sent as an empty `CONTENT_LENGTH` as nginx does).
pub fn build(
    buf: &mut Vec<u8>,
    session: &Session,
    request_id: u128,
    plan: &UwsgiPlan,
    content_length: Option<u64>,
) -> Result<(), TooBig> {
    let vars = SessionVars(session, request_id);
    let req = session.req_header();
    let mut p = Packet::new(buf);
    let overridden = |name: &[u8]| plan.params.iter().any(|(n, _)| n.as_bytes() == name);
    for name in BUILT_IN {
        if overridden(name.as_bytes()) {
            continue;
        }
        let key = name.as_bytes();
        match name {
            "QUERY_STRING" => p.var(key, req.uri.query().unwrap_or("").as_bytes()),
            "REQUEST_METHOD" => p.var(key, req.method.as_str().as_bytes()),
            "CONTENT_TYPE" => p.var(key, header(session, "content-type")),
            "CONTENT_LENGTH" => p.var_with(key, |o| {
                if let Some(n) = content_length {
                    let _ = write!(o, "{n}");
                }
            }),
            "REQUEST_URI" => p.var(key, req.raw_path()),
            // nginx's `$document_uri`: the path decoded and normalised, as it was routed.
            "PATH_INFO" => match crate::proxy::uri::normalize(req.uri.path().as_bytes()) {
                Ok(n) => p.var(key, &n),
                Err(_) => p.var(key, req.uri.path().as_bytes()),
            },
            // No `root` in a uwsgi location: empty unless `uwsgi_param` says otherwise.
            "DOCUMENT_ROOT" => p.var(key, b""),
            "SERVER_PROTOCOL" => p.var(key, protocol(req.version).as_bytes()),
            "REQUEST_SCHEME" => p.var(key, b"http"),
            "REMOTE_ADDR" => p.var_with(key, |o| {
                if let Some(a) = vars.client() {
                    let _ = write!(o, "{}", a.ip());
                }
            }),
            "REMOTE_PORT" => p.var_with(key, |o| {
                if let Some(a) = vars.client() {
                    let _ = write!(o, "{}", a.port());
                }
            }),
            "SERVER_PORT" => p.var_with(key, |o| {
                if let Some(port) = vars.server_port() {
                    let _ = write!(o, "{port}");
                }
            }),
            // graygate has no `server_name`: the name the client asked for, without its port.
            "SERVER_NAME" => p.var(key, host_name(vars.host())),
            _ => {}
        }
    }
    for (name, tpl) in &plan.params {
        p.var_with(name.as_bytes(), |o| tpl.render(&vars, o));
    }
    // Every request header as HTTP_NAME (nginx's `uwsgi_pass_request_headers on`); repeated
    // headers joined in one value, `; ` for cookies as nginx 1.23+ does.
    let mut key = Vec::with_capacity(64);
    for name in req.headers.keys() {
        key.clear();
        key.extend_from_slice(b"HTTP_");
        key.extend(name.as_str().bytes().map(|b| match b {
            b'-' => b'_',
            b => b.to_ascii_uppercase(),
        }));
        if overridden(&key) {
            continue;
        }
        let sep: &[u8] = if name == http::header::COOKIE {
            b"; "
        } else {
            b", "
        };
        p.var_with(&key, |o| {
            for (i, v) in req.headers.get_all(name).iter().enumerate() {
                if i > 0 {
                    o.extend_from_slice(sep);
                }
                o.extend_from_slice(v.as_bytes());
            }
        });
    }
    p.finish()
}

fn header<'a>(session: &'a Session, name: &str) -> &'a [u8] {
    session
        .req_header()
        .headers
        .get(name)
        .map_or(&b""[..], |v| v.as_bytes())
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}

/// `example.com:8080` -> `example.com`; `[::1]:80` -> `[::1]`.
fn host_name(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(i) => &host[..i],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::host_name;

    #[test]
    fn host_names() {
        assert_eq!(host_name(b"example.com:8080"), b"example.com");
        assert_eq!(host_name(b"example.com"), b"example.com");
        assert_eq!(host_name(b"[::1]:80"), b"[::1]");
        assert_eq!(host_name(b""), b"");
    }
}
