//! File bodies sent with `sendfile(2)` on plain (non-TLS) HTTP/1 connections, as nginx's
//! `sendfile on`.
//!
//! Pingora writes every response body through its HTTP/1 session, which owns the socket and
//! counts the bytes against `Content-Length`: keep-alive and `$body_bytes_sent` depend on that
//! count, and the session offers no way to advance it without writing. So the count is kept
//! and only the bytes change: the client stream of a plain connection is wrapped in
//! [`FileStream`]; `files` arms it with the open file, offset and length, then writes that
//! many bytes of [`MARK`] through Pingora's body writer as usual. When a write hands the
//! wrapper a slice of `MARK` while a file is armed, the wrapper first flushes what Pingora has
//! buffered (the response head), then sends the file's bytes with `sendfile` in place of the
//! marker's and reports as many written. No byte of `MARK` ever reaches the socket, and any
//! other write passes through untouched, armed or not.
//!
//! Waiting for room in the socket: Pingora's stream does not expose its tokio registration,
//! so the first `sendfile` that would block registers a duplicate of the socket's fd with
//! tokio ([`AsyncFd`]; epoll keys a registration by fd and open file, so the duplicate gets
//! the socket's own events). It is closed when the body ends (or fails). The
//! wait sits inside Pingora's body write, whose send timeout covers the whole write: `files`
//! writes the marker a chunk (256 KiB) at a time, so a client must take a chunk per timeout,
//! as on the copying path.
//!
//! When the body fails: a client gone mid-file (`EPIPE`, `ECONNRESET`) or a file that shrank
//! (`sendfile` returns 0 before the end) fails Pingora's write, the file is closed at once and
//! the connection is not reused (Pingora never reuses one whose body fell short). The bytes
//! the socket took in the failed write are kept for `$body_bytes_sent` ([`State::uncounted`]),
//! and a shrunk file is reported to `files` ([`FileStream::disarm`]) for nginx's alert.
//!
//! The marker must reach the socket as Pingora got it: graygate installs no downstream
//! module (`init_downstream_modules`), since a body filter (compression) would turn the
//! marker into other bytes that pass through as data.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora_proxy::Session;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Stands for file bytes in Pingora's body writer. Zeroed and never read or written, so it
/// costs address space only (`.bss`); `files` writes at most one chunk of it at a time.
pub(super) static MARK: [u8; 256 << 10] = [0; 256 << 10];

/// The file part still to send.
#[derive(Debug)]
struct Armed {
    file: File,
    at: u64,
    left: u64,
}

/// The file side of one connection; behind a lock because Pingora hands out only `&Stream`
/// (`arm`, the access log), while `poll_write` reaches it through `get_mut`, lock-free.
#[derive(Debug, Default)]
struct State {
    armed: Option<Armed>,
    /// File bytes the socket took within a body write that did not complete. Pingora counts a
    /// write only once all of it is written, so without these a client that goes away
    /// mid-file would be logged with fewer bytes than it was sent (nginx logs what the kernel
    /// took).
    uncounted: u64,
    /// Where the file ended, if it shrank while being sent.
    truncated_at: Option<u64>,
}

/// A plain client stream that can send file bytes with `sendfile`.
pub struct FileStream {
    inner: Stream,
    fd: RawFd,
    state: Mutex<State>,
    /// A duplicate of the socket, registered for writability when `sendfile` first blocks.
    writable: Option<AsyncFd<OwnedFd>>,
}

impl std::fmt::Debug for FileStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStream")
            .field("inner", &self.inner)
            .finish()
    }
}

/// The lock's content even if a panic poisoned it: the state stays consistent (each field is
/// written whole).
fn unpoison<T>(r: Result<T, PoisonError<T>>) -> T {
    r.unwrap_or_else(PoisonError::into_inner)
}

impl FileStream {
    /// Wraps a plain TCP or unix-socket stream; anything else (TLS, a virtual socket) is
    /// returned as it is and keeps the copying path.
    pub fn wrap(inner: Stream) -> Stream {
        let fd = match inner.as_any().downcast_ref::<L4Stream>() {
            Some(s) if s.as_raw_fd() >= 0 => s.as_raw_fd(),
            _ => return inner,
        };
        Box::new(FileStream {
            inner,
            fd,
            state: Mutex::new(State::default()),
            writable: None,
        })
    }

    /// The wrapper under an HTTP/1 session, if its connection has one.
    pub(super) fn of(session: &Session) -> Option<&FileStream> {
        session
            .as_downstream()
            .stream()?
            .as_any()
            .downcast_ref::<FileStream>()
    }

    /// The next `len` bytes of [`MARK`] written are `file`'s from `at`. Call once the
    /// response head is written, right before the body.
    pub(super) fn arm(&self, file: File, at: u64, len: u64) {
        *unpoison(self.state.lock()) = State {
            armed: Some(Armed {
                file,
                at,
                left: len,
            }),
            uncounted: 0,
            truncated_at: None,
        };
    }

    /// Ends the body: closes the file if a failed write left it armed, and says where the
    /// file ended if it shrank while being sent.
    pub(super) fn disarm(&self) -> Option<u64> {
        let mut st = unpoison(self.state.lock());
        st.armed = None;
        st.truncated_at
    }

    /// File bytes sent in the last response that Pingora's body count misses (see
    /// [`State::uncounted`]); 0 unless its last body write failed.
    pub fn uncounted(session: &Session) -> u64 {
        FileStream::of(session).map_or(0, |s| unpoison(s.state.lock()).uncounted)
    }

    /// Sends up to `want` bytes of the armed file, `want` being what is left of the marker
    /// slice Pingora is writing (an error if no file is armed).
    fn poll_send(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        // The response head (and anything else Pingora buffered) goes first.
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        let fd = self.fd;
        let st = unpoison(self.state.get_mut());
        let Some(a) = st.armed.as_mut() else {
            return Poll::Ready(Err(io::Error::other("file body write without a file")));
        };
        let n = want.min(usize::try_from(a.left).unwrap_or(usize::MAX));
        let mut result = send(fd, a, n);
        if matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            if self.writable.is_none() {
                match register(fd) {
                    Ok(w) => self.writable = Some(w),
                    Err(e) => result = Err(e),
                }
            }
            if let Some(w) = self.writable.as_ref() {
                result = loop {
                    let mut guard = match w.poll_write_ready(cx) {
                        Poll::Ready(Ok(g)) => g,
                        Poll::Ready(Err(e)) => break Err(e),
                        // The bytes counted so far stay in `uncounted` for the access log if
                        // the write is dropped here (a write timeout).
                        Poll::Pending => return Poll::Pending,
                    };
                    if let Ok(r) = guard.try_io(|_| send(fd, a, n)) {
                        break r;
                    }
                };
            }
        }
        let done = match &result {
            Ok(sent) => {
                // The whole slice written: Pingora counts it.
                st.uncounted = if *sent == want {
                    0
                } else {
                    st.uncounted + *sent as u64
                };
                a.left == 0
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    st.truncated_at = Some(a.at);
                }
                // The body ends here and its connection with it: the file need not wait.
                true
            }
        };
        if done {
            st.armed = None;
            // The duplicate descriptor goes with the body: an idle keep-alive connection holds
            // one descriptor, as `worker_connections` assumes, not two.
            self.writable = None;
        }
        Poll::Ready(result)
    }

    fn is_armed(&mut self) -> bool {
        unpoison(self.state.get_mut()).armed.is_some()
    }
}

/// Whether `buf` lies inside [`MARK`].
fn is_mark(buf: &[u8]) -> bool {
    let start = MARK.as_ptr() as usize;
    let at = buf.as_ptr() as usize;
    !buf.is_empty() && at >= start && at + buf.len() <= start + MARK.len()
}

/// One `sendfile` of at most `want` bytes of `a` to `fd`, advancing `a`.
fn send(fd: RawFd, a: &mut Armed, want: usize) -> io::Result<usize> {
    loop {
        let mut off = libc::off_t::try_from(a.at).map_err(io::Error::other)?;
        // SAFETY: `fd` is the open socket the wrapper owns through `inner` for as long as it
        // lives, `a.file` an open file, and `off` a valid `off_t` on the stack that the kernel
        // only advances.
        let n = unsafe { libc::sendfile(fd, a.file.as_raw_fd(), &mut off, want) };
        if n > 0 {
            let n = n.unsigned_abs();
            a.at += n as u64;
            a.left = a.left.saturating_sub(n as u64);
            return Ok(n);
        }
        if n == 0 {
            // The file shrank under us: the caller closes the connection (the client sees a
            // body shorter than its `Content-Length`), as nginx does.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file truncated while being sent",
            ));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A duplicate of `fd`, registered with the runtime for writability.
fn register(fd: RawFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `fd` is the socket the wrapper's `inner` keeps open during this call.
    let dup = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
    // SAFETY: the `AsyncFd` owns `dup`, which stays open and the same until it is dropped.
    unsafe { AsyncFd::register_with_interest(dup, Interest::WRITABLE) }
        .map_err(|e| e.into_parts().1)
}

impl AsyncWrite for FileStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if is_mark(buf) {
            // Never the marker's zeros: without an armed file this is an error.
            return this.poll_send(cx, buf.len());
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if !this.is_armed() && bufs.iter().any(|b| is_mark(b)) {
            // Never the marker's zeros, even through a vectored write.
            return this.poll_send(cx, bufs.iter().map(|b| b.len()).sum());
        }
        if this.is_armed() {
            // One slice at a time while a file is armed, so a marker slice is never copied.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return Pin::new(this).poll_write(cx, first);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for FileStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

crate::lifecycle::wrap::delegate_stream_traits!(FileStream);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_marker_slices_are_marked() {
        assert!(is_mark(&MARK[..10]));
        assert!(is_mark(&MARK[MARK.len() - 1..]));
        assert!(!is_mark(&MARK[..0]));
        let other = vec![0u8; 10];
        assert!(!is_mark(&other));
    }
}
