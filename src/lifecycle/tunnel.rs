//! Ending a WebSocket cleanly when a drain runs out of time.
//!
//! Once a server answers 101, Pingora tunnels the bytes both ways and ends the request only
//! when one side closes. A draining worker cannot reach into that tunnel, so the client
//! stream of an `Upgrade` request is wrapped in [`Tunnel`]: it follows the frames Pingora
//! writes to the client, and when the drain's grace period ends it writes a WebSocket close
//! frame (1001, "going away") at a frame boundary and then reports end-of-stream to Pingora,
//! which ends the tunnel as if the client had closed it: the upstream connection is closed and
//! the request is logged, with its whole duration.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use pingora::protocols::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// A close frame from a server: FIN + opcode 8, unmasked, status 1001 (going away).
const CLOSE_GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where the bytes written to the client stand: in the HTTP head, or in WebSocket frames.
#[derive(Debug, Default)]
struct Frames {
    head_done: bool,
    /// The response head's first bytes (`HTTP/1.1 101`) and its last four.
    start: Vec<u8>,
    tail: [u8; 4],
    switched: bool,
    /// The frame header being read, and how long it is.
    hdr: [u8; 14],
    hdr_have: usize,
    payload_left: u64,
}

impl Frames {
    fn feed(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            if !self.head_done {
                let c = b[0];
                b = &b[1..];
                if self.start.len() < 12 {
                    self.start.push(c);
                }
                self.tail = [self.tail[1], self.tail[2], self.tail[3], c];
                if &self.tail == b"\r\n\r\n" {
                    self.head_done = true;
                    self.switched = self.start.len() >= 12 && &self.start[9..12] == b"101";
                }
                continue;
            }
            if !self.switched {
                return; // not a WebSocket: nothing to follow
            }
            if self.payload_left > 0 {
                let n = (self.payload_left.min(b.len() as u64)) as usize;
                self.payload_left -= n as u64;
                b = &b[n..];
                continue;
            }
            self.hdr[self.hdr_have] = b[0];
            self.hdr_have += 1;
            b = &b[1..];
            if self.hdr_have >= 2 && self.hdr_have == self.header_len() {
                self.payload_left = self.payload_len();
                self.hdr_have = 0;
            }
        }
    }

    fn header_len(&self) -> usize {
        let ext = match self.hdr[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.hdr[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn payload_len(&self) -> u64 {
        match self.hdr[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.hdr[2], self.hdr[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.hdr[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        }
    }

    /// A close frame may go now: the tunnel is a WebSocket and no frame is half written.
    fn at_boundary(&self) -> bool {
        self.head_done && self.switched && self.hdr_have == 0 && self.payload_left == 0
    }
}

/// The client stream of an `Upgrade` request.
pub struct Tunnel {
    inner: Stream,
    /// Resolves when the drain's grace period is over. In a `Mutex` only to be `Sync` (IO
    /// requires it); reached through `get_mut`, never locked.
    cut: Mutex<Signal>,
    cutting: bool,
    frames: Frames,
    close_sent: usize,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Tunnel {
    /// Wraps `inner`; `close` turns true at the end of the grace period.
    pub fn wrap(inner: Stream, close: watch::Receiver<bool>) -> Stream {
        let mut close = close;
        let signal: Signal = Box::pin(async move {
            let _ = close.wait_for(|c| *c).await;
        });
        Box::new(Tunnel {
            inner,
            cut: Mutex::new(signal),
            cutting: false,
            frames: Frames::default(),
            close_sent: 0,
        })
    }

    fn signal(&mut self) -> Option<&mut Signal> {
        self.cut.get_mut().ok()
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.cutting {
            if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_read(cx, buf) {
                return Poll::Ready(r);
            }
            match this.signal().map(|s| s.as_mut().poll(cx)) {
                Some(Poll::Pending) => return Poll::Pending,
                _ => this.cutting = true,
            }
        }
        if this.frames.at_boundary() {
            while this.close_sent < CLOSE_GOING_AWAY.len() {
                match Pin::new(&mut this.inner).poll_write(cx, &CLOSE_GOING_AWAY[this.close_sent..])
                {
                    Poll::Ready(Ok(n)) if n > 0 => this.close_sent += n,
                    Poll::Ready(_) => break,
                    Poll::Pending => return Poll::Pending,
                }
            }
            if Pin::new(&mut this.inner).poll_flush(cx).is_pending() {
                return Poll::Pending;
            }
        }
        // End of stream: Pingora ends the tunnel as if the client had closed it.
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.close_sent > 0 {
            // Nothing may follow the close frame.
            return Poll::Ready(Ok(buf.len()));
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.frames.feed(&buf[..n]);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

crate::lifecycle::wrap::delegate_stream_traits!(Tunnel);

#[cfg(test)]
mod tests {
    use super::Frames;

    #[test]
    fn frame_boundaries_are_followed() {
        let mut f = Frames::default();
        f.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
        assert!(f.at_boundary());
        f.feed(&[0x81, 0x05, b'h', b'e']);
        assert!(!f.at_boundary(), "mid-payload");
        f.feed(b"llo");
        assert!(f.at_boundary());
        f.feed(&[0x82, 126]);
        assert!(!f.at_boundary(), "mid-header");
        f.feed(&[0x01, 0x00]);
        f.feed(&[0u8; 255]);
        assert!(!f.at_boundary());
        f.feed(&[0u8; 1]);
        assert!(f.at_boundary());
    }

    #[test]
    fn not_a_websocket_never_gets_a_close_frame() {
        let mut f = Frames::default();
        f.feed(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        assert!(!f.at_boundary());
    }
}
