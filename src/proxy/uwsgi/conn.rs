//! A connection to a uwsgi server, over TCP or a unix socket, with nginx's timeouts: each
//! one bounds one step (connect, one write, one read), not the whole exchange.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;

use crate::upstream::Peer;

/// Why a step failed: nginx words a timeout apart from other errors.
#[derive(Debug)]
pub enum Fault {
    TimedOut,
    Io(io::Error),
}

impl From<io::Error> for Fault {
    fn from(e: io::Error) -> Fault {
        Fault::Io(e)
    }
}

/// One connection.
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    /// Connects to `peer` within `limit`.
    pub async fn open(peer: &Peer, limit: Duration) -> Result<Conn, Fault> {
        let fut = async {
            match &peer.unix {
                Some(path) => UnixStream::connect(&**path).await.map(Conn::Unix),
                None => {
                    let s = TcpStream::connect(peer.addr).await?;
                    // Small request packets and replies go out at once, as nginx's sockets.
                    s.set_nodelay(true)?;
                    Ok(Conn::Tcp(s))
                }
            }
        };
        match timeout(limit, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(Fault::TimedOut),
        }
    }

    /// Writes all of `buf` within `limit`.
    pub async fn send(&mut self, buf: &[u8], limit: Duration) -> Result<(), Fault> {
        let fut = async {
            match self {
                Conn::Tcp(s) => s.write_all(buf).await,
                Conn::Unix(s) => s.write_all(buf).await,
            }
        };
        match timeout(limit, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(Fault::TimedOut),
        }
    }

    /// Reads what is there (at least one byte, or 0 at the end) into `buf` within `limit`.
    pub async fn recv(&mut self, buf: &mut BytesMut, limit: Duration) -> Result<usize, Fault> {
        let fut = async {
            match self {
                Conn::Tcp(s) => s.read_buf(buf).await,
                Conn::Unix(s) => s.read_buf(buf).await,
            }
        };
        match timeout(limit, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(Fault::TimedOut),
        }
    }
}
