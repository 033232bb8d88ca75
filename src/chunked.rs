//! HTTP/1.1 chunked transfer coding, for bindings that see raw message bodies
//! (Traffic Server hands a request transform the body as the client framed it).
//!
//! The decoder is incremental (state kept between pieces, each byte looked at
//! a constant number of times), bounds what it holds (a chunk-size line, the
//! trailer section) and parses sizes with checked arithmetic: a malformed or
//! overflowing chunk size is a [`ChunkError`], never a silently shorter body.

/// The longest chunk-size line (size, extensions) accepted.
pub const MAX_SIZE_LINE: usize = 4096;
/// The most bytes of trailer fields accepted (they are dropped).
pub const MAX_TRAILERS: usize = 64 << 10;

/// Why a chunked body cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size {0:?}")]
    BadSize(String),
    #[error("chunk size {0} does not fit in 64 bits")]
    SizeOverflow(String),
    #[error("a chunk-size line longer than {MAX_SIZE_LINE} bytes")]
    LongSizeLine,
    #[error("chunk data longer than its chunk size (no line end after it)")]
    MissingLineEnd,
    #[error("trailer fields longer than {MAX_TRAILERS} bytes")]
    LongTrailers,
}

/// Incremental decoder of a chunked body.
#[derive(Default)]
pub struct Dechunker {
    state: ChunkState,
    /// The chunk-size line read so far (without its end).
    line: Vec<u8>,
    /// Bytes of trailer section so far.
    trailer_bytes: usize,
    /// The current trailer line is empty so far (an empty line ends them).
    trailer_line_empty: bool,
    failed: Option<ChunkError>,
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    /// After the data: a CR (optional) then LF.
    DataEnd {
        cr: bool,
    },
    Trailers,
    Done,
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The size on a chunk-size line (extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let text = trim_ows(line.split(|b| *b == b';').next().unwrap_or_default());
    let shown = || String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned();
    if text.is_empty() || !text.iter().all(u8::is_ascii_hexdigit) {
        return Err(ChunkError::BadSize(shown()));
    }
    text.iter()
        .try_fold(0u64, |n, b| n.checked_mul(16)?.checked_add(u64::from((*b as char).to_digit(16)?)))
        .ok_or_else(|| ChunkError::SizeOverflow(shown()))
}

impl Dechunker {
    /// Feeds raw bytes; returns the body bytes they complete. After an
    /// error every later call returns it again.
    pub fn feed(&mut self, raw: &[u8]) -> Result<Vec<u8>, ChunkError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut out = Vec::new();
        let r = self.decode(raw, &mut out);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r.map(|()| out)
    }

    /// The last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    fn decode(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<(), ChunkError> {
        let mut pos = 0;
        while pos < raw.len() {
            let rest = &raw[pos..];
            match self.state {
                ChunkState::Size => {
                    let end = rest.iter().position(|b| *b == b'\n');
                    let take = end.unwrap_or(rest.len());
                    if self.line.len() + take > MAX_SIZE_LINE {
                        return Err(ChunkError::LongSizeLine);
                    }
                    self.line.extend_from_slice(&rest[..take]);
                    pos += end.map_or(take, |e| e + 1);
                    if end.is_some() {
                        if self.line.last() == Some(&b'\r') {
                            self.line.pop();
                        }
                        let size = chunk_size(&self.line)?;
                        self.line.clear();
                        self.state = if size == 0 {
                            self.trailer_line_empty = true;
                            ChunkState::Trailers
                        } else {
                            ChunkState::Data(size)
                        };
                    }
                }
                ChunkState::Data(left) => {
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&rest[..n]);
                    pos += n;
                    let left = left - n as u64;
                    self.state = if left == 0 { ChunkState::DataEnd { cr: false } } else { ChunkState::Data(left) };
                }
                ChunkState::DataEnd { cr } => {
                    pos += 1;
                    self.state = match rest[0] {
                        b'\r' if !cr => ChunkState::DataEnd { cr: true },
                        b'\n' => ChunkState::Size,
                        _ => return Err(ChunkError::MissingLineEnd),
                    };
                }
                ChunkState::Trailers => {
                    // Trailer lines are dropped; an empty line ends them.
                    let end = rest.iter().position(|b| *b == b'\n');
                    let take = end.map_or(rest.len(), |e| e + 1);
                    self.trailer_bytes += take;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(ChunkError::LongTrailers);
                    }
                    let content = &rest[..end.unwrap_or(rest.len())];
                    if !content.iter().all(|b| *b == b'\r') {
                        self.trailer_line_empty = false;
                    }
                    pos += take;
                    if end.is_some() {
                        if self.trailer_line_empty {
                            self.state = ChunkState::Done;
                        }
                        self.trailer_line_empty = true;
                    }
                }
                ChunkState::Done => break,
            }
        }
        Ok(())
    }
}

/// A whole body as one chunk and the last-chunk marker.
pub fn encode_chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 32);
    if !body.is_empty() {
        out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_body_is_decoded_across_any_split() {
        let raw = b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\nx-t: 1\r\n\r\n";
        for split in 0..raw.len() {
            let mut d = Dechunker::default();
            let mut out = d.feed(&raw[..split]).unwrap();
            out.extend(d.feed(&raw[split..]).unwrap());
            assert_eq!(out, b"hello world", "split at {split}");
            assert!(d.is_done());
        }
        assert_eq!(encode_chunked(b"abc"), b"3\r\nabc\r\n0\r\n\r\n");
    }

    #[test]
    fn byte_at_a_time_delivery_decodes_the_same_body() {
        let raw = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let mut d = Dechunker::default();
        let out: Vec<u8> = raw.iter().flat_map(|b| d.feed(std::slice::from_ref(b)).unwrap()).collect();
        assert_eq!(out, b"hello world");
        assert!(d.is_done());
    }

    #[test]
    fn a_chunk_size_past_64_bits_is_an_error_not_the_end_of_the_body() {
        // The old decoder read an unparsable size as 0: the body silently
        // ended after "hello" and the rest was dropped.
        let mut d = Dechunker::default();
        let r = d.feed(b"5\r\nhello\r\n1ffffffffffffffff\r\nmore");
        assert!(matches!(r, Err(ChunkError::SizeOverflow(_))), "{r:?}");
        assert!(d.feed(b"0\r\n\r\n").is_err(), "the error sticks");
    }

    #[test]
    fn a_chunk_size_near_u64_max_is_counted_without_overflow() {
        let mut d = Dechunker::default();
        assert_eq!(d.feed(b"ffffffffffffffff\r\nabc").unwrap(), b"abc");
        assert!(!d.is_done());
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for (raw, what) in [
            (&b"zz\r\n"[..], "invalid chunk size"),
            (b"\r\n", "invalid chunk size"),
            (b"-1\r\n", "invalid chunk size"),
            (b"3\r\nabcX", "no line end"),
        ] {
            let e = Dechunker::default().feed(raw).unwrap_err();
            assert!(e.to_string().contains(what), "{e}");
        }
    }

    #[test]
    fn an_endless_size_line_or_trailer_section_is_an_error() {
        let mut d = Dechunker::default();
        let block = [b'1'; 1024];
        let e = (0..10).find_map(|_| d.feed(&block).err()).unwrap();
        assert_eq!(e, ChunkError::LongSizeLine);
        let mut d = Dechunker::default();
        d.feed(b"0\r\n").unwrap();
        let e = (0..100).find_map(|_| d.feed(b"x-trailer: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(10).as_slice()).err()).unwrap();
        assert_eq!(e, ChunkError::LongTrailers);
    }
}
