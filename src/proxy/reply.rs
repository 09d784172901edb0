//! Answers a location gives itself (`return`) and the headers it adds to every answer
//! (`add_header`), with nginx's rules for both.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::Result;
use pingora_proxy::Session;

use crate::plan::response::{AddHeaderPlan, ReturnPlan};
use crate::plan::template::Vars;
use crate::plan::ServerPlan;

use super::vars::SessionVars;

/// Adds the location's `add_header` lines that apply to `resp`'s status; a value that renders
/// empty adds nothing, as in nginx.
pub(super) fn add_headers(
    resp: &mut ResponseHeader,
    add: &[AddHeaderPlan],
    vars: &dyn Vars,
    scratch: &mut Vec<u8>,
) {
    let status = resp.status.as_u16();
    for h in add.iter().filter(|h| h.applies_to(status)) {
        scratch.clear();
        h.value.render(vars, scratch);
        if scratch.is_empty() {
            continue;
        }
        if let Ok(v) = http::HeaderValue::from_bytes(scratch) {
            let _ = resp.append_header(h.name.clone(), v);
        }
    }
}

/// Sends `return`'s answer; the connection stays open for the next request.
pub(super) async fn send_return(
    session: &mut Session,
    ret: &ReturnPlan,
    add: &[AddHeaderPlan],
    request_id: u128,
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let (code, rendered) = {
        let vars = SessionVars(session, request_id);
        scratch.clear();
        let code = match ret {
            ReturnPlan::Redirect { code, url } => {
                url.render(&vars, scratch);
                if scratch.first() == Some(&b'/') {
                    let path = std::mem::take(scratch);
                    scratch.extend_from_slice(b"http://");
                    scratch.extend_from_slice(vars.host());
                    scratch.extend_from_slice(&path);
                }
                *code
            }
            ReturnPlan::Body { code, text } => {
                text.render(&vars, scratch);
                *code
            }
        };
        (code, std::mem::take(scratch))
    };
    let mut resp = ResponseHeader::build(code, Some(4))?;
    let body = match ret {
        ReturnPlan::Redirect { .. } => {
            let v = http::HeaderValue::from_bytes(&rendered)
                .unwrap_or_else(|_| http::HeaderValue::from_static("/"));
            resp.insert_header(http::header::LOCATION, v)?;
            resp.insert_header(http::header::CONTENT_TYPE, "text/html")?;
            Bytes::from(page(code))
        }
        ReturnPlan::Body { .. } if rendered.is_empty() && code >= 300 => {
            resp.insert_header(http::header::CONTENT_TYPE, "text/html")?;
            Bytes::from(page(code))
        }
        // 204 and 304 carry no body and no Content-Length (Pingora sends none anyway).
        ReturnPlan::Body { .. } if code == 204 || code == 304 => Bytes::new(),
        ReturnPlan::Body { .. } => {
            if !rendered.is_empty() {
                resp.insert_header(http::header::CONTENT_TYPE, "text/plain")?;
            }
            Bytes::from(rendered)
        }
    };
    if code != 204 && code != 304 {
        resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    }
    {
        let vars = SessionVars(session, request_id);
        add_headers(&mut resp, add, &vars, scratch);
    }
    let head_only = session.req_header().method == http::Method::HEAD || body.is_empty();
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// nginx's page for a status without text of its own.
pub(super) fn page(code: u16) -> String {
    // nginx's own wording where it differs from the HTTP registry's.
    let reason = match code {
        413 => "Request Entity Too Large",
        _ => http::StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or(""),
    };
    format!(
        "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1></center>\r\n<hr><center>graygate</center>\r\n</body>\r\n</html>\r\n"
    )
}

/// A status with nginx's page for it, keeping the connection open.
pub(super) async fn page_response(
    session: &mut Session,
    code: u16,
    add: &[AddHeaderPlan],
    request_id: u128,
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let body = page(code);
    let mut resp = ResponseHeader::build(code, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/html")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    {
        let vars = SessionVars(session, request_id);
        add_headers(&mut resp, add, &vars, scratch);
    }
    let head = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(resp), head).await?;
    if !head {
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
    }
    Ok(())
}

/// Answers for location `i` of `server`, which [`crate::plan::LocationPlan::answers`]: its
/// `return`, else its files. Returns a line for the server's error log, if any.
pub(super) async fn answer(
    session: &mut Session,
    server: &ServerPlan,
    i: usize,
    request_id: u128,
    scratch: &mut Vec<u8>,
) -> Result<super::files::Complaint> {
    let loc = &server.locations[i];
    if let Some(ret) = &loc.ret {
        send_return(session, ret, &loc.add_headers, request_id, scratch).await?;
        return Ok(None);
    }
    let Some(f) = &loc.files else {
        return Ok(None);
    };
    // The session is written to while the path is used: a copy, for files only.
    let path = session.req_header().uri.path().as_bytes();
    let norm = super::uri::normalize(path)
        .map(|n| n.into_owned())
        .unwrap_or_default();
    let same = |u: &[u8]| server.find(u) == Some(i);
    super::files::serve(
        session,
        f,
        &norm,
        &loc.add_headers,
        request_id,
        &same,
        scratch,
    )
    .await
}
