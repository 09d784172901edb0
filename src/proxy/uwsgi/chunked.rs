//! An app's chunked reply body, decoded as it streams (an app that writes its own
//! `Transfer-Encoding: chunked`); the client gets it framed anew.

/// Where the decoder is in the chunked grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The hex size; `digits` once one was seen.
    Size {
        n: u64,
        digits: bool,
    },
    /// Chunk extensions, up to the line's end.
    Ext {
        n: u64,
    },
    /// `n` data bytes left in this chunk.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd {
        cr: bool,
    },
    /// Trailer lines after the last chunk; `empty` while the current line has no byte yet.
    Trailer {
        empty: bool,
    },
    Done,
}

/// A streaming decoder.
pub struct Dechunk(State);

impl Default for Dechunk {
    fn default() -> Self {
        Dechunk(State::Size {
            n: 0,
            digits: false,
        })
    }
}

impl Dechunk {
    /// Whether the last chunk and the trailers have been read.
    pub fn done(&self) -> bool {
        self.0 == State::Done
    }

    /// Decodes `input`, appending the data to `out`; bytes after the end are ignored.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
        while let Some((&b, rest)) = input.split_first() {
            match self.0 {
                State::Size { n, digits } => {
                    let d = match b {
                        b'0'..=b'9' => Some(b - b'0'),
                        b'a'..=b'f' => Some(b - b'a' + 10),
                        b'A'..=b'F' => Some(b - b'A' + 10),
                        _ => None,
                    };
                    self.0 = match (d, b) {
                        (Some(d), _) => State::Size {
                            n: n.checked_mul(16)
                                .and_then(|n| n.checked_add(u64::from(d)))
                                .ok_or("chunk size too big")?,
                            digits: true,
                        },
                        (None, b';' | b' ' | b'\t' | b'\r') if digits => State::Ext { n },
                        (None, b'\n') if digits => Self::after_size(n),
                        _ => return Err("invalid chunk size"),
                    };
                }
                State::Ext { n } => {
                    if b == b'\n' {
                        self.0 = Self::after_size(n);
                    }
                }
                State::Data(left) => {
                    let take = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[..take]);
                    let left = left - take as u64;
                    self.0 = if left == 0 {
                        State::DataEnd { cr: false }
                    } else {
                        State::Data(left)
                    };
                    input = &input[take..];
                    continue;
                }
                State::DataEnd { cr } => {
                    self.0 = match b {
                        b'\r' if !cr => State::DataEnd { cr: true },
                        b'\n' => State::Size {
                            n: 0,
                            digits: false,
                        },
                        _ => return Err("invalid chunk end"),
                    };
                }
                State::Trailer { empty } => {
                    self.0 = match b {
                        b'\n' if empty => State::Done,
                        b'\n' => State::Trailer { empty: true },
                        b'\r' => State::Trailer { empty },
                        _ => State::Trailer { empty: false },
                    };
                }
                State::Done => return Ok(()),
            }
            input = rest;
        }
        Ok(())
    }

    fn after_size(n: u64) -> State {
        if n == 0 {
            State::Trailer { empty: true }
        } else {
            State::Data(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_in_any_pieces() {
        let raw = b"3\r\nabc\r\n10;x=y\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\nrest";
        for step in 1..raw.len() {
            let mut d = Dechunk::default();
            let mut out = Vec::new();
            for piece in raw.chunks(step) {
                d.feed(piece, &mut out).unwrap();
            }
            assert!(d.done(), "step {step}");
            assert_eq!(out, b"abc0123456789abcdef", "step {step}");
        }
    }

    #[test]
    fn refuses_garbage() {
        let mut out = Vec::new();
        assert!(Dechunk::default().feed(b"zz\r\n", &mut out).is_err());
        assert!(Dechunk::default().feed(b"\r\n", &mut out).is_err());
        assert!(Dechunk::default().feed(b"1\r\nab", &mut out).is_err());
        assert!(Dechunk::default()
            .feed(b"fffffffffffffffff\r\n", &mut out)
            .is_err());
        let mut d = Dechunk::default();
        d.feed(b"2\r\nab", &mut out).unwrap();
        assert!(!d.done());
    }
}
