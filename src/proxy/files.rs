//! Static files (`root`/`alias`), answered as nginx's static module does: `index` for paths
//! ending in `/`, 301 to add the slash to a directory, `ETag`/`Last-Modified` and 304, one
//! `Range` (206/416), `HEAD`, 403/404/405.
//!
//! The path is the normalised one (no `..` can remain, see `uri`); a symlink that leads out of
//! the root is refused unless `disable_symlinks: off`. Files are streamed in 64 KiB chunks,
//! never read whole.

use std::ffi::OsStr;
use std::io::SeekFrom;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::Result;
use pingora_proxy::Session;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::mime;
use super::reply::{add_headers, page_response};
use super::vars::SessionVars;
use crate::plan::files::FilesPlan;
use crate::plan::response::AddHeaderPlan;

const CHUNK: usize = 64 * 1024;

/// What went wrong, for the server block's error log (nginx's wording).
pub(super) type Complaint = Option<String>;

/// Serves `uri` (normalised) from `files`; returns a line for the error log, if any.
pub(super) async fn serve(
    session: &mut Session,
    files: &FilesPlan,
    uri: &[u8],
    add: &[AddHeaderPlan],
    id: u128,
    same_location: &(dyn Fn(&[u8]) -> bool + Sync),
    scratch: &mut Vec<u8>,
) -> Result<Complaint> {
    let method = &session.req_header().method;
    if method != http::Method::GET && method != http::Method::HEAD {
        page_response(session, 405, add, id, scratch).await?;
        return Ok(None);
    }
    let rel = match &files.strip {
        Some(prefix) => uri.strip_prefix(prefix.as_bytes()).unwrap_or(uri),
        None => uri,
    };
    // `location /img { alias /data/images/; }` and `/img../x`: the rest must be a path of its
    // own, or it would climb out of the alias (nginx's known "off-by-slash").
    let loose_alias = files.strip.as_ref().is_some_and(|p| !p.ends_with('/'));
    if loose_alias && !rel.is_empty() && rel[0] != b'/' {
        page_response(session, 404, add, id, scratch).await?;
        return Ok(None);
    }
    let mut path = files.base.clone();
    let rest = rel.strip_prefix(b"/").unwrap_or(rel);
    if !rest.is_empty() {
        // An alias naming a file (`location = /favicon.ico { alias /data/f.ico; }`) has no rest.
        path.push(OsStr::from_bytes(rest));
    }
    if uri.ends_with(b"/") {
        for name in &files.index {
            // nginx looks the index up as a new request; serve it here only if it would land in
            // this same location (an `index.php` meant for a PHP location is never sent as text).
            let mut index_uri = uri.to_vec();
            index_uri.extend_from_slice(name.as_bytes());
            if !same_location(&index_uri) {
                continue;
            }
            let candidate = path.join(name);
            if tokio::fs::metadata(&candidate)
                .await
                .is_ok_and(|m| m.is_file())
            {
                return send_file(session, files, &candidate, add, id, scratch).await;
            }
        }
        let dir = tokio::fs::metadata(&path).await;
        let (code, why) = match dir {
            Ok(m) if m.is_dir() => (
                403,
                Some(format!(
                    "directory index of \"{}\" is forbidden",
                    path.display()
                )),
            ),
            _ => (404, not_found(files, &path)),
        };
        page_response(session, code, add, id, scratch).await?;
        return Ok(why);
    }
    send_file(session, files, &path, add, id, scratch).await
}

fn not_found(files: &FilesPlan, path: &Path) -> Complaint {
    files.log_not_found.then(|| {
        format!(
            "open() \"{}\" failed (2: No such file or directory)",
            path.display()
        )
    })
}

/// Whether `path` stays inside the root once its symlinks are followed.
async fn inside_root(files: &FilesPlan, path: &Path) -> bool {
    if files.follow_symlinks {
        return true;
    }
    let (Ok(root), Ok(real)) = (
        tokio::fs::canonicalize(&files.base).await,
        tokio::fs::canonicalize(path).await,
    ) else {
        return false;
    };
    real.starts_with(root)
}

/// The check again on what was opened (`/proc/self/fd`), so that a symlink swapped in after
/// `inside_root` cannot lead the open elsewhere.
async fn opened_inside_root(files: &FilesPlan, file: &tokio::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    if files.follow_symlinks {
        return true;
    }
    let link = format!("/proc/self/fd/{}", file.as_raw_fd());
    let (Ok(root), Ok(real)) = (
        tokio::fs::canonicalize(&files.base).await,
        tokio::fs::read_link(&link).await,
    ) else {
        return false;
    };
    real.starts_with(root)
}

async fn send_file(
    session: &mut Session,
    files: &FilesPlan,
    path: &PathBuf,
    add: &[AddHeaderPlan],
    id: u128,
    scratch: &mut Vec<u8>,
) -> Result<Complaint> {
    let meta = match tokio::fs::metadata(path).await {
        Ok(m) => m,
        Err(e) => {
            let (code, why) = match e.kind() {
                std::io::ErrorKind::NotFound => (404, not_found(files, path)),
                std::io::ErrorKind::PermissionDenied => (
                    403,
                    Some(format!(
                        "open() \"{}\" failed (13: Permission denied)",
                        path.display()
                    )),
                ),
                _ => (404, not_found(files, path)),
            };
            page_response(session, code, add, id, scratch).await?;
            return Ok(why);
        }
    };
    if !inside_root(files, path).await {
        page_response(session, 403, add, id, scratch).await?;
        return Ok(Some(format!(
            "\"{}\" leads out of the root (a symlink; set disable_symlinks: off to follow it)",
            path.display()
        )));
    }
    if meta.is_dir() {
        // nginx: 301 to the same path with a slash (absolute, from the request's Host).
        let location = {
            let req = session.req_header();
            let host = req
                .headers
                .get(http::header::HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                .unwrap_or_default();
            let (p, q) = match req.uri.query() {
                Some(q) => (req.uri.path(), format!("?{q}")),
                None => (req.uri.path(), String::new()),
            };
            format!("http://{host}{p}/{q}")
        };
        let mut resp = ResponseHeader::build(301, Some(4))?;
        resp.insert_header(http::header::LOCATION, location)?;
        return finish_page(session, resp, 301, add, id, scratch).await;
    }
    // O_NONBLOCK: a FIFO under the root must not hang a thread in open(); only a regular
    // file is served, and its size and time come from the opened file (a file swapped by a
    // deploy between checks cannot mix two versions).
    let opened = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .await;
    let mut file = match opened {
        Ok(f) => f,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::PermissionDenied {
                403
            } else {
                404
            };
            page_response(session, code, add, id, scratch).await?;
            return Ok(Some(format!("open() \"{}\" failed ({e})", path.display())));
        }
    };
    let meta = match file.metadata().await {
        Ok(m) if m.is_file() => m,
        _ => {
            page_response(session, 404, add, id, scratch).await?;
            return Ok(Some(format!(
                "\"{}\" is not a regular file",
                path.display()
            )));
        }
    };
    if !opened_inside_root(files, &file).await {
        page_response(session, 403, add, id, scratch).await?;
        return Ok(Some(format!(
            "\"{}\" leads out of the root (a symlink; set disable_symlinks: off to follow it)",
            path.display()
        )));
    }
    let size = meta.len();
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let etag = format!("\"{mtime:x}-{size:x}\"");
    let last_modified = http_date(mtime);
    let req = session.req_header();
    let header = |n: http::header::HeaderName| req.headers.get(n).and_then(|v| v.to_str().ok());
    let not_modified = match header(http::header::IF_NONE_MATCH) {
        Some(inm) => inm.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        }),
        None => header(http::header::IF_MODIFIED_SINCE).is_some_and(|ims| ims == last_modified),
    };
    let range = match header(http::header::IF_RANGE) {
        Some(ir) if ir != etag && ir != last_modified => None,
        _ => header(http::header::RANGE).and_then(|r| parse_range(r, size)),
    };
    let head = req.method == http::Method::HEAD;
    let ctype = mime::by_name(path.as_os_str().as_bytes()).unwrap_or(&files.default_type);
    let (code, start, len) = match (not_modified, range) {
        (true, _) => (304, 0, 0),
        (false, Some(Range::Unsatisfiable)) => (416, 0, 0),
        (false, Some(Range::Bytes(a, b))) => (206, a, b - a + 1),
        (false, _) => (200, 0, size),
    };
    let mut resp = ResponseHeader::build(code, Some(8))?;
    if code == 416 {
        resp.insert_header(http::header::CONTENT_RANGE, format!("bytes */{size}"))?;
        return finish_page(session, resp, 416, add, id, scratch).await;
    }
    resp.insert_header(http::header::CONTENT_TYPE, ctype)?;
    resp.insert_header(http::header::LAST_MODIFIED, last_modified)?;
    resp.insert_header(http::header::ETAG, etag)?;
    if code != 304 {
        resp.insert_header(http::header::CONTENT_LENGTH, len)?;
        resp.insert_header(http::header::ACCEPT_RANGES, "bytes")?;
    }
    if code == 206 {
        let end = start + len - 1;
        resp.insert_header(
            http::header::CONTENT_RANGE,
            format!("bytes {start}-{end}/{size}"),
        )?;
    }
    add_headers(&mut resp, add, &SessionVars(session, id), scratch);
    let no_body = head || code == 304 || len == 0;
    session
        .write_response_header(Box::new(resp), no_body)
        .await?;
    if no_body {
        return Ok(None);
    }
    if start > 0 {
        if let Err(e) = file.seek(SeekFrom::Start(start)).await {
            return Err(pingora::Error::because(
                pingora::ErrorType::ReadError,
                "seek",
                e,
            ));
        }
    }
    let mut left = len;
    while left > 0 {
        let want = left.min(CHUNK as u64) as usize;
        let mut buf = BytesMut::zeroed(want);
        let mut got = 0;
        while got < want {
            match file.read(&mut buf[got..]).await {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => {
                    return Err(pingora::Error::because(
                        pingora::ErrorType::ReadError,
                        "read",
                        e,
                    ))
                }
            }
        }
        if got == 0 {
            // The file shrank under us: end the response short, as nginx does.
            return Err(pingora::Error::explain(
                pingora::ErrorType::ReadError,
                "file truncated while being sent",
            ));
        }
        buf.truncate(got);
        left -= got as u64;
        session
            .write_response_body(Some(Bytes::from(buf)), left == 0)
            .await?;
    }
    Ok(None)
}

async fn finish_page(
    session: &mut Session,
    mut resp: ResponseHeader,
    code: u16,
    add: &[AddHeaderPlan],
    id: u128,
    scratch: &mut Vec<u8>,
) -> Result<Complaint> {
    let body = super::reply::page(code);
    resp.insert_header(http::header::CONTENT_TYPE, "text/html")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    add_headers(&mut resp, add, &SessionVars(session, id), scratch);
    let head = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(resp), head).await?;
    if !head {
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
    }
    Ok(None)
}

#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// First and last byte, inclusive.
    Bytes(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range; several ranges or a malformed header are ignored (the whole file),
/// which RFC 9110 allows; nginx would send multipart for several.
fn parse_range(h: &str, size: u64) -> Option<Range> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.trim().split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || size == 0 {
            return Some(Range::Unsatisfiable);
        }
        return Some(Range::Bytes(size.saturating_sub(n), size - 1));
    }
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        size.saturating_sub(1)
    } else {
        let e: u64 = b.parse().ok()?;
        if e < start {
            return None;
        }
        e.min(size.saturating_sub(1))
    };
    if start >= size {
        return Some(Range::Unsatisfiable);
    }
    Some(Range::Bytes(start, end))
}

/// RFC 9110's IMF-fixdate of a Unix time.
fn http_date(secs: u64) -> String {
    let t = chrono::DateTime::from_timestamp(secs as i64, 0).unwrap_or_default();
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Range::Bytes(0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some(Range::Bytes(90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some(Range::Bytes(90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some(Range::Bytes(50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), Some(Range::Unsatisfiable));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
