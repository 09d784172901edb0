//! The uwsgi request packet: a 4-byte header (`modifier1`, the size of what follows as a
//! little-endian u16, `modifier2`) and the CGI variables, each as a u16-LE-sized key and a
//! u16-LE-sized value. `modifier1 = 0` asks for a WSGI/CGI request; the body follows the
//! packet on the same connection, `CONTENT_LENGTH` bytes of it.

/// A packet being built in a reused buffer.
pub struct Packet<'a> {
    buf: &'a mut Vec<u8>,
    /// A key or value did not fit (longer than 65535 bytes, or the packet over 65535).
    too_big: bool,
}

/// The packet would exceed the protocol's 64 KiB (nginx: "uwsgi request is too big").
#[derive(Debug)]
pub struct TooBig(pub usize);

impl<'a> Packet<'a> {
    /// Starts a packet in `buf` (cleared).
    pub fn new(buf: &'a mut Vec<u8>) -> Packet<'a> {
        buf.clear();
        buf.extend_from_slice(&[0, 0, 0, 0]);
        Packet {
            buf,
            too_big: false,
        }
    }

    /// Appends one variable.
    pub fn var(&mut self, key: &[u8], value: &[u8]) {
        let (Ok(k), Ok(v)) = (u16::try_from(key.len()), u16::try_from(value.len())) else {
            self.too_big = true;
            return;
        };
        self.buf.extend_from_slice(&k.to_le_bytes());
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(&v.to_le_bytes());
        self.buf.extend_from_slice(value);
    }

    /// Appends a variable whose value is written by `f` straight into the packet.
    pub fn var_with(&mut self, key: &[u8], f: impl FnOnce(&mut Vec<u8>)) {
        let Ok(k) = u16::try_from(key.len()) else {
            self.too_big = true;
            return;
        };
        self.buf.extend_from_slice(&k.to_le_bytes());
        self.buf.extend_from_slice(key);
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        f(self.buf);
        match u16::try_from(self.buf.len() - at - 2) {
            Ok(n) => self.buf[at..at + 2].copy_from_slice(&n.to_le_bytes()),
            Err(_) => self.too_big = true,
        }
    }

    /// Writes the size into the header; the packet is then the whole buffer.
    pub fn finish(self) -> Result<(), TooBig> {
        let size = self.buf.len() - 4;
        match u16::try_from(size) {
            Ok(n) if !self.too_big => {
                self.buf[1..3].copy_from_slice(&n.to_le_bytes());
                Ok(())
            }
            _ => Err(TooBig(size)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let mut buf = Vec::new();
        let mut p = Packet::new(&mut buf);
        p.var(b"A", b"xy");
        p.var_with(b"BC", |o| o.extend_from_slice(b"z"));
        p.finish().unwrap();
        assert_eq!(
            buf,
            [0, 14, 0, 0, 1, 0, b'A', 2, 0, b'x', b'y', 2, 0, b'B', b'C', 1, 0, b'z']
        );
    }

    #[test]
    fn too_big() {
        let mut buf = Vec::new();
        let mut p = Packet::new(&mut buf);
        p.var(b"A", &[b'x'; 70_000]);
        assert!(p.finish().is_err());
        let mut p = Packet::new(&mut buf);
        p.var(b"A", &[b'x'; 40_000]);
        p.var(b"B", &[b'x'; 40_000]);
        assert!(p.finish().is_err());
        let mut p = Packet::new(&mut buf);
        p.var_with(b"A", |o| o.extend_from_slice(&[b'x'; 70_000]));
        assert!(p.finish().is_err());
    }
}
