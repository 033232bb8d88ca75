//! HTTP/1.1 chunked transfer coding, for bindings that see raw message bodies.

/// Incremental decoder of a chunked body.
#[derive(Default)]
pub struct Dechunker {
    pending: Vec<u8>,
    state: ChunkState,
}

#[derive(Default, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Trailers,
    Done,
}

impl Dechunker {
    /// Feeds raw bytes; returns the body bytes they complete.
    pub fn feed(&mut self, raw: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(raw);
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let rest = &self.pending[pos..];
            match self.state {
                ChunkState::Size | ChunkState::Trailers => {
                    let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else { break };
                    let line = &rest[..eol];
                    pos += eol + 2;
                    if self.state == ChunkState::Trailers {
                        if line.is_empty() {
                            self.state = ChunkState::Done;
                        }
                        continue;
                    }
                    let hex = line.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
                    let size = std::str::from_utf8(hex).ok().and_then(|h| usize::from_str_radix(h, 16).ok()).unwrap_or(0);
                    self.state = if size == 0 { ChunkState::Trailers } else { ChunkState::Data(size) };
                }
                ChunkState::Data(n) => {
                    if rest.is_empty() {
                        break;
                    }
                    let take = n.min(rest.len());
                    out.extend_from_slice(&rest[..take]);
                    pos += take;
                    self.state = if take == n { ChunkState::DataEnd } else { ChunkState::Data(n - take) };
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        break;
                    }
                    pos += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Done => {
                    pos = self.pending.len();
                    break;
                }
            }
        }
        self.pending.drain(..pos);
        out
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
            let mut out = d.feed(&raw[..split]);
            out.extend(d.feed(&raw[split..]));
            assert_eq!(out, b"hello world", "split at {split}");
        }
        assert_eq!(encode_chunked(b"abc"), b"3\r\nabc\r\n0\r\n\r\n");
    }
}
