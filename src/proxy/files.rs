//! Static files (`root`/`alias`), answered as nginx's static module does: `index` for paths
//! ending in `/`, 301 to add the slash to a directory, `ETag`/`Last-Modified` and 304, one
//! `Range` (206/416), `HEAD`, 403/404/405.
//!
//! The path is the normalised one (no `..` can remain, see `uri`); a symlink that leads out of
//! the root is refused unless `disable_symlinks: off`. Bodies are never read whole: on a plain
//! HTTP/1 connection they go out with `sendfile` (see `sendfile`), else (TLS, HTTP/2, a body
//! of one segment) in 256 KiB chunks.
//!
//! A little over 400 lines: one request's way through the static module reads best in one file.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::Result;
use pingora_proxy::Session;

use super::mime;
use super::reply::{add_headers, page_response};
use super::sendfile::{FileStream, MARK};
use super::vars::SessionVars;
use crate::plan::files::FilesPlan;
use crate::plan::response::AddHeaderPlan;

/// Large enough that a 1 MB file is four writes, small enough to bound memory per response.
const CHUNK: usize = 256 * 1024;

/// Bodies at least this long go out with `sendfile` where the connection allows it. A smaller
/// one fits with its head in Pingora's write buffer (one segment) and goes out in one `write`
/// after a `pread`; `sendfile` would need the head flushed on its own first, so two segments
/// and the same two system calls. From this size on the copying path also takes two writes.
const SENDFILE_MIN: u64 = crate::lifecycle::WRITE_BUFFER as u64;

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
            if std::fs::metadata(&candidate).is_ok_and(|m| m.is_file()) {
                return send_file(session, files, &candidate, add, id, scratch).await;
            }
        }
        let dir = std::fs::metadata(&path);
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

/// Whether `real` (a path with its symlinks resolved) lies inside the root. The root was
/// resolved at load; when that no longer holds (the root is itself a link a deploy moved, or
/// it did not exist then), it is resolved again, so the answer is the one of today's root.
fn real_inside_root(files: &FilesPlan, real: &Path) -> bool {
    if files
        .real_base
        .as_deref()
        .is_some_and(|r| real.starts_with(r))
    {
        return true;
    }
    match std::fs::canonicalize(&files.base) {
        Ok(root) => files.real_base.as_ref() != Some(&root) && real.starts_with(root),
        Err(_) => false,
    }
}

/// Whether the directory `path` stays inside the root once its symlinks are followed (only
/// the rare redirect of a directory needs it; files are checked once opened).
fn dir_inside_root(files: &FilesPlan, path: &Path) -> bool {
    files.follow_symlinks
        || std::fs::canonicalize(path).is_ok_and(|real| real_inside_root(files, &real))
}

/// Whether what was opened lies inside the root: its `/proc/self/fd` link names the file
/// actually open, so no symlink swapped in between checks can lead elsewhere. One readlink.
fn opened_inside_root(files: &FilesPlan, file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    if files.follow_symlinks {
        return true;
    }
    let link = format!("/proc/self/fd/{}", file.as_raw_fd());
    std::fs::read_link(link).is_ok_and(|real| real_inside_root(files, &real))
}

async fn send_file(
    session: &mut Session,
    files: &FilesPlan,
    path: &PathBuf,
    add: &[AddHeaderPlan],
    id: u128,
    scratch: &mut Vec<u8>,
) -> Result<Complaint> {
    let meta = match std::fs::metadata(path) {
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
    if meta.is_dir() {
        if !dir_inside_root(files, path) {
            page_response(session, 403, add, id, scratch).await?;
            return Ok(out_of_root(path));
        }
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
    //
    // The calls are made here on the runtime's thread, as nginx does without aio: a stat,
    // open, fstat and read of a file in the page cache take microseconds, far less than
    // handing each one to a blocking thread and back.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
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
    if !opened_inside_root(files, &file) {
        page_response(session, 403, add, id, scratch).await?;
        return Ok(out_of_root(path));
    }
    let meta = match file.metadata() {
        Ok(m) if m.is_file() => m,
        _ => {
            page_response(session, 404, add, id, scratch).await?;
            return Ok(Some(format!(
                "\"{}\" is not a regular file",
                path.display()
            )));
        }
    };
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
    match FileStream::of(session) {
        Some(stream) if len >= SENDFILE_MIN => {
            stream.arm(file, start, len);
            let sent = send_marked(session, len).await;
            // The file is closed here, whatever happened to the body.
            let truncated = FileStream::of(session).and_then(|s| s.disarm());
            match truncated {
                Some(at) => Ok(truncated_body(
                    session,
                    format!(
                        "sendfile() reported that \"{}\" was truncated at {at}",
                        path.display()
                    ),
                )),
                None => sent,
            }
        }
        _ => send_body(session, &file, path, start, len).await,
    }
}

/// A body cut short because its file shrank: the connection must close (the client sees
/// fewer bytes than `Content-Length`; keeping it would desynchronise the next response).
/// Pingora closes it too, its body count being short of the length; keep-alive is turned off
/// so that does not rest on Pingora alone. Returns nginx's alert for the error log.
fn truncated_body(session: &mut Session, alert: String) -> Complaint {
    session.set_keepalive(None);
    Some(alert)
}

/// The body of a plain HTTP/1 response: `len` bytes of the marker written through Pingora's
/// body writer, which the connection's [`FileStream`] sends from the armed file with
/// `sendfile` (no copy through user space, Pingora's byte count kept).
///
/// At most [`CHUNK`] per write: Pingora times each body write as a whole with the send
/// timeout (nginx restarts it on any progress), so a bigger write would cut off a slow
/// client that the copying path, and nginx, serve to the end; it also bounds the disk read
/// one `sendfile` may do on the worker thread when the file is not in the page cache.
async fn send_marked(session: &mut Session, len: u64) -> Result<Complaint> {
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK.min(MARK.len()) as u64) as usize;
        left -= n as u64;
        session
            .write_response_body(Some(Bytes::from_static(&MARK[..n])), left == 0)
            .await?;
    }
    Ok(None)
}

/// Sends `len` bytes of `file` from `start`, a chunk at a time (TLS and HTTP/2, where the
/// bytes must pass through user space, and small files): each chunk is read (pread, from the
/// page cache) right before it is written, so memory stays at one chunk. One buffer serves
/// the whole body: each chunk is split off and frozen, and once Pingora has written and
/// dropped it the next chunk reclaims the same memory.
async fn send_body(
    session: &mut Session,
    file: &std::fs::File,
    path: &Path,
    start: u64,
    len: u64,
) -> Result<Complaint> {
    use std::os::unix::fs::FileExt;
    let mut at = start;
    let mut left = len;
    let mut buf = BytesMut::with_capacity(left.min(CHUNK as u64) as usize);
    while left > 0 {
        let want = left.min(CHUNK as u64) as usize;
        buf.clear();
        buf.resize(want, 0);
        let mut got = 0;
        while got < want {
            match file.read_at(&mut buf[got..], at + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(pingora::Error::because(
                        pingora::ErrorType::ReadError,
                        "read",
                        e,
                    ))
                }
            }
        }
        if got < want {
            // The file shrank under us: end the response short, as nginx does.
            let alert = format!(
                "pread() read only {got} of {want} from \"{}\"",
                path.display()
            );
            if got > 0 {
                session
                    .write_response_body(Some(buf.split_to(got).freeze()), false)
                    .await?;
            }
            return Ok(truncated_body(session, alert));
        }
        at += got as u64;
        left -= got as u64;
        session
            .write_response_body(Some(buf.split_to(got).freeze()), left == 0)
            .await?;
    }
    Ok(None)
}

fn out_of_root(path: &Path) -> Complaint {
    Some(format!(
        "\"{}\" leads out of the root (a symlink; set disable_symlinks: off to follow it)",
        path.display()
    ))
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

    /// The root resolved at load must not pin a root that is a link a deploy moves.
    #[test]
    fn root_link_moved_after_load() {
        let dir = std::env::temp_dir().join(format!("gg-files-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["r1", "r2"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
            std::fs::write(dir.join(d).join("a"), d).unwrap();
        }
        let current = dir.join("current");
        std::os::unix::fs::symlink(dir.join("r1"), &current).unwrap();
        let plan = FilesPlan {
            real_base: std::fs::canonicalize(&current).ok(),
            base: current.clone(),
            strip: None,
            index: vec![],
            default_type: String::new(),
            follow_symlinks: false,
            log_not_found: true,
        };
        let open = |p: &Path| std::fs::File::open(p).unwrap();
        assert!(opened_inside_root(&plan, &open(&current.join("a"))));
        std::fs::remove_file(&current).unwrap();
        std::os::unix::fs::symlink(dir.join("r2"), &current).unwrap();
        assert!(opened_inside_root(&plan, &open(&current.join("a"))));
        // Outside both the old and the new root: refused. (A file of the old root is still
        // let through while the load-time root holds it: that root was today's root once.)
        std::fs::write(dir.join("outside"), "x").unwrap();
        assert!(!opened_inside_root(&plan, &open(&dir.join("outside"))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
