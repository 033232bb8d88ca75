//! An incremental HTTP/1.1 response parser for outgoing calls (`http_call`
//! on both servers, remote-code downloads).
//!
//! The bytes come from an upstream nobody vouches for, a piece at a time.
//! The parser keeps its state between pieces and looks at each byte a
//! constant number of times, whatever the pieces' sizes (one byte at a time
//! included), so a slow or hostile upstream costs time proportional to what
//! it sends. Everything it may hold is bounded: the whole response by the
//! caller's limit (`max_http_call_response_size` for calls), the status line
//! and header fields by [`MAX_HEAD_BYTES`] and [`MAX_FIELDS`] (the trailers
//! too); sizes are parsed with checked arithmetic. Malformed input is a
//! [`ParseError`] naming what is wrong, never a panic.
//!
//! Accepted as RFC 9112 asks of a client: `obs-text` (bytes 0x80-0xFF) in
//! field values and reason phrases, `obs-fold` (replaced by a space), bare
//! LF line ends, whitespace before a field's colon (removed), interim 1xx
//! responses (skipped), chunk extensions (ignored), a body delimited by the
//! connection's close. Field names must be tokens (plugins' SDKs expect
//! UTF-8 names), values must not hold control characters other than HTAB.

use crate::abi::pairs::Pair;

/// The most bytes of a status line and header fields (or of trailer fields).
pub const MAX_HEAD_BYTES: usize = 256 << 10;
/// The most header (or trailer) fields of a response.
pub const MAX_FIELDS: usize = 1024;

/// Why a response cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// More bytes than the caller's limit, or a declared length past it.
    #[error("the response is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The connection closed before the response ended.
    #[error("the connection closed before the response ended")]
    Truncated,
}

/// What a piece of input completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    NeedMore,
    /// The response ended after `used` bytes of the last piece; any bytes
    /// after them are not part of it.
    Complete {
        used: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    StatusLine,
    Fields,
    Body { left: u64 },
    ChunkSize,
    ChunkData { left: u64 },
    ChunkEnd,
    Trailers,
    UntilClose,
    Done,
}

/// One response being read (see the module documentation).
pub struct ResponseParser {
    state: State,
    /// No body follows the head (the request was HEAD).
    head_request: bool,
    limit: u64,
    /// Bytes of the response taken so far.
    seen: u64,
    /// The line being read (without its end), across pieces.
    line: Vec<u8>,
    /// Bytes of the current head (or trailer) section so far, lines and ends.
    section_bytes: usize,
    status: u16,
    http_1_1: bool,
    headers: Vec<Pair>,
    body: Vec<u8>,
    trailers: Vec<Pair>,
    keep_alive: bool,
}

fn malformed(message: impl Into<String>) -> ParseError {
    ParseError::Malformed(message.into())
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A field-value byte: VCHAR, SP, HTAB or obs-text.
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80
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

/// The values of the fields named `name` (lower-case) in `fields`.
fn field_values<'a>(fields: &'a [Pair], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    fields.iter().filter(move |(k, _)| k.as_slice() == name).map(|(_, v)| v.as_slice())
}

/// The comma-separated tokens of a field value, lower-cased.
fn tokens(value: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    value.split(|b| *b == b',').map(|t| trim_ows(t).to_ascii_lowercase()).filter(|t| !t.is_empty())
}

/// A decimal number, with checked arithmetic: `None` when it is not all
/// digits or does not fit in 64 bits.
fn decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |n, b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

impl ResponseParser {
    /// A parser for the answer to one request; `head_request` when that
    /// request was HEAD (no body follows); at most `limit` bytes.
    pub fn new(head_request: bool, limit: u64) -> ResponseParser {
        ResponseParser {
            state: State::StatusLine,
            head_request,
            limit,
            seen: 0,
            line: Vec::new(),
            section_bytes: 0,
            status: 0,
            http_1_1: false,
            headers: Vec::new(),
            body: Vec::new(),
            trailers: Vec::new(),
            keep_alive: false,
        }
    }

    /// Bytes of the response taken so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    pub fn is_complete(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the upstream keeps the connection open after this (complete)
    /// response: HTTP/1.1 (or 1.0 with `keep-alive`) without `Connection:
    /// close`, framed by its length or chunked encoding.
    pub fn keep_alive(&self) -> bool {
        self.state == State::Done && self.keep_alive
    }

    /// Takes the next piece of input.
    pub fn feed(&mut self, data: &[u8]) -> Result<Progress, ParseError> {
        let mut pos = 0;
        while pos < data.len() {
            if self.state == State::Done {
                break;
            }
            let rest = &data[pos..];
            let used = match self.state {
                State::StatusLine | State::Fields | State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    self.take_line(rest)?
                }
                State::Body { left } | State::ChunkData { left } => {
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.body.extend_from_slice(&rest[..n]);
                    let left = left - n as u64;
                    self.state = match (self.state, left) {
                        (State::Body { .. }, 0) => State::Done,
                        (State::Body { .. }, left) => State::Body { left },
                        (_, 0) => State::ChunkEnd,
                        (_, left) => State::ChunkData { left },
                    };
                    n
                }
                State::UntilClose => {
                    self.body.extend_from_slice(rest);
                    rest.len()
                }
                State::Done => 0,
            };
            pos += used;
            self.seen += used as u64;
            if self.seen > self.limit {
                return Err(ParseError::TooLarge { limit: self.limit });
            }
        }
        Ok(if self.state == State::Done { Progress::Complete { used: pos } } else { Progress::NeedMore })
    }

    /// The connection closed: a body delimited by the close ends here;
    /// anything else unfinished is [`ParseError::Truncated`].
    pub fn finish(&mut self) -> Result<(), ParseError> {
        match self.state {
            State::Done => Ok(()),
            State::UntilClose => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(ParseError::Truncated),
        }
    }

    /// The response as plugins get it: `:status` first, then the header
    /// fields (names lower-cased), the body (de-chunked) and trailers.
    pub fn into_response(self) -> crate::host::HttpCallResponse {
        crate::host::HttpCallResponse { headers: self.headers, body: self.body, trailers: self.trailers, failure: None }
    }

    /// Adds bytes of the current line; when its end (LF) is among them,
    /// handles the line. Returns the bytes used.
    fn take_line(&mut self, rest: &[u8]) -> Result<usize, ParseError> {
        let end = rest.iter().position(|b| *b == b'\n');
        let used = end.map_or(rest.len(), |e| e + 1);
        self.section_bytes += used;
        if self.section_bytes > MAX_HEAD_BYTES {
            return Err(match self.state {
                State::ChunkSize | State::ChunkEnd => {
                    malformed(format!("a chunk-size line longer than {MAX_HEAD_BYTES} bytes"))
                }
                State::Trailers => malformed(format!("trailer fields longer than {MAX_HEAD_BYTES} bytes")),
                _ => malformed(format!("a status line and header fields longer than {MAX_HEAD_BYTES} bytes")),
            });
        }
        let Some(end) = end else {
            self.line.extend_from_slice(rest);
            return Ok(used);
        };
        self.line.extend_from_slice(&rest[..end]);
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        let line = std::mem::take(&mut self.line);
        self.on_line(&line)?;
        Ok(used)
    }

    fn on_line(&mut self, line: &[u8]) -> Result<(), ParseError> {
        match self.state {
            State::StatusLine => self.on_status_line(line),
            State::Fields if line.is_empty() => self.on_head_end(),
            State::Fields => {
                let mut fields = std::mem::take(&mut self.headers);
                let r = Self::on_field(&mut fields, line, "header");
                self.headers = fields;
                r
            }
            State::ChunkSize => self.on_chunk_size(line),
            State::ChunkEnd if line.is_empty() => {
                self.state = State::ChunkSize;
                self.section_bytes = 0;
                Ok(())
            }
            State::ChunkEnd => Err(malformed("chunk data longer than its chunk size (no line end after it)")),
            State::Trailers if line.is_empty() => {
                self.state = State::Done;
                Ok(())
            }
            State::Trailers => {
                let mut fields = std::mem::take(&mut self.trailers);
                let r = Self::on_field(&mut fields, line, "trailer");
                self.trailers = fields;
                r
            }
            State::Body { .. } | State::ChunkData { .. } | State::UntilClose | State::Done => Ok(()),
        }
    }

    fn on_status_line(&mut self, line: &[u8]) -> Result<(), ParseError> {
        let bad = || malformed(format!("status line {:?}", String::from_utf8_lossy(&line[..line.len().min(64)])));
        let (version, rest) = line.split_at(line.iter().position(|b| *b == b' ').ok_or_else(bad)?);
        let http_1_1 = match version {
            b"HTTP/1.1" => true,
            b"HTTP/1.0" => false,
            _ => return Err(bad()),
        };
        let rest = &rest[1..];
        let code = rest.get(..3).filter(|c| c.iter().all(u8::is_ascii_digit)).ok_or_else(bad)?;
        if rest.len() > 3 && rest[3] != b' ' {
            return Err(bad());
        }
        let status = code.iter().fold(0u16, |n, b| n * 10 + u16::from(b - b'0'));
        if status < 100 {
            return Err(bad());
        }
        self.status = status;
        self.http_1_1 = http_1_1;
        self.headers.clear();
        self.headers.push((b":status".to_vec(), code.to_vec()));
        self.state = State::Fields;
        Ok(())
    }

    /// One field line (`name: value`, or an obs-fold continuing the last one).
    fn on_field(fields: &mut Vec<Pair>, line: &[u8], what: &str) -> Result<(), ParseError> {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            // obs-fold: the previous field's value goes on, joined by a space.
            let value = trim_ows(line);
            if let Some(bad) = value.iter().find(|b| !is_value_byte(**b)) {
                return Err(malformed(format!("control character 0x{bad:02x} in a folded {what} field")));
            }
            let Some((_, last)) = fields.last_mut().filter(|(name, _)| name.as_slice() != b":status") else {
                return Err(malformed(format!("a folded {what} line before any {what} field")));
            };
            if !value.is_empty() {
                last.push(b' ');
                last.extend_from_slice(value);
            }
            return Ok(());
        }
        let colon = line.iter().position(|b| *b == b':').ok_or_else(|| {
            malformed(format!(
                "a {what} line without a colon: {:?}",
                String::from_utf8_lossy(&line[..line.len().min(64)])
            ))
        })?;
        let name = trim_ows(&line[..colon]);
        if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) || matches!(line.first(), Some(b' ' | b'\t')) {
            return Err(malformed(format!(
                "invalid {what} field name {:?}",
                String::from_utf8_lossy(&line[..colon.min(64)])
            )));
        }
        let value = trim_ows(&line[colon + 1..]);
        if let Some(bad) = value.iter().find(|b| !is_value_byte(**b)) {
            return Err(malformed(format!(
                "control character 0x{bad:02x} in the value of {what} field {:?}",
                String::from_utf8_lossy(name)
            )));
        }
        if fields.len() >= MAX_FIELDS {
            return Err(malformed(format!("more than {MAX_FIELDS} {what} fields")));
        }
        fields.push((name.to_ascii_lowercase(), value.to_vec()));
        Ok(())
    }

    /// The header fields ended: an interim response is skipped; for the
    /// final one, its framing decides what follows.
    fn on_head_end(&mut self) -> Result<(), ParseError> {
        self.section_bytes = 0;
        if (100..200).contains(&self.status) {
            self.headers.clear();
            self.state = State::StatusLine;
            return Ok(());
        }
        let field = |name: &'static [u8]| field_values(&self.headers, name);
        let connection: Vec<Vec<u8>> = field(b"connection").flat_map(tokens).collect();
        let mut keep_alive = if self.http_1_1 {
            !connection.iter().any(|t| t == b"close")
        } else {
            connection.iter().any(|t| t == b"keep-alive") && !connection.iter().any(|t| t == b"close")
        };
        let codings: Vec<Vec<u8>> = field(b"transfer-encoding").flat_map(tokens).collect();
        let mut length = None;
        for value in field(b"content-length") {
            for item in value.split(|b| *b == b',') {
                let n = decimal(trim_ows(item)).ok_or_else(|| {
                    malformed(format!(
                        "invalid Content-Length {:?}",
                        String::from_utf8_lossy(&value[..value.len().min(64)])
                    ))
                })?;
                if length.is_some_and(|l| l != n) {
                    return Err(malformed("several different Content-Length values"));
                }
                length = Some(n);
            }
        }
        let room = self.limit.saturating_sub(self.seen);
        self.state = if self.head_request || self.status == 204 || self.status == 304 {
            State::Done
        } else if !codings.is_empty() {
            // Transfer-Encoding overrides Content-Length; such a message
            // must not be trusted to leave the connection clean.
            if length.is_some() {
                keep_alive = false;
            }
            if codings.last().map(Vec::as_slice) == Some(b"chunked") {
                self.headers.retain(|(k, _)| k.as_slice() != b"transfer-encoding");
                State::ChunkSize
            } else {
                keep_alive = false;
                State::UntilClose
            }
        } else if let Some(length) = length {
            if length > room {
                return Err(ParseError::TooLarge { limit: self.limit });
            }
            if length == 0 {
                State::Done
            } else {
                State::Body { left: length }
            }
        } else {
            keep_alive = false;
            State::UntilClose
        };
        self.keep_alive = keep_alive;
        Ok(())
    }

    fn on_chunk_size(&mut self, line: &[u8]) -> Result<(), ParseError> {
        let size_text = trim_ows(line.split(|b| *b == b';').next().unwrap_or_default());
        if size_text.is_empty() || !size_text.iter().all(u8::is_ascii_hexdigit) {
            return Err(malformed(format!(
                "invalid chunk size {:?}",
                String::from_utf8_lossy(&line[..line.len().min(64)])
            )));
        }
        let size = size_text
            .iter()
            .try_fold(0u64, |n, b| n.checked_mul(16)?.checked_add(u64::from((*b as char).to_digit(16)?)))
            .ok_or_else(|| {
                malformed(format!(
                    "chunk size {} does not fit in 64 bits",
                    String::from_utf8_lossy(&size_text[..size_text.len().min(64)])
                ))
            })?;
        if size == 0 {
            self.state = State::Trailers;
            self.section_bytes = 0;
            return Ok(());
        }
        // The chunk, its line end, and the last chunk must still fit.
        if size > self.limit.saturating_sub(self.seen) {
            return Err(ParseError::TooLarge { limit: self.limit });
        }
        self.state = State::ChunkData { left: size };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 1 << 20;

    /// Feeds `raw` in pieces of `piece` bytes, then the close.
    fn parse_in_pieces(
        raw: &[u8],
        piece: usize,
        head: bool,
    ) -> Result<(crate::host::HttpCallResponse, bool, usize), ParseError> {
        let mut p = ResponseParser::new(head, LIMIT);
        let mut offset = 0;
        for part in raw.chunks(piece.max(1)) {
            if let Progress::Complete { used } = p.feed(part)? {
                let keep = p.keep_alive();
                return Ok((p.into_response(), keep, offset + used));
            }
            offset += part.len();
        }
        p.finish()?;
        let keep = p.keep_alive();
        Ok((p.into_response(), keep, raw.len()))
    }

    fn parse(raw: &[u8]) -> Result<(crate::host::HttpCallResponse, bool, usize), ParseError> {
        parse_in_pieces(raw, raw.len(), false)
    }

    fn pairs(list: &[(&str, &[u8])]) -> Vec<Pair> {
        list.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec())).collect()
    }

    const CHUNKED: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 2\r\n\r\n";

    #[test]
    fn a_chunked_response_with_an_interim_response_and_trailers_is_read() {
        let (r, keep, used) = parse(CHUNKED).unwrap();
        assert_eq!(r.headers, pairs(&[(":status", b"200"), ("x-a", b"1")]));
        assert_eq!(r.body, b"abcde");
        assert_eq!(r.trailers, pairs(&[("x-t", b"2")]));
        assert!(keep);
        assert_eq!(used, CHUNKED.len());
    }

    #[test]
    fn byte_at_a_time_delivery_gives_the_same_response_as_one_piece() {
        let whole = parse(CHUNKED).unwrap();
        for piece in [1, 2, 3, 7] {
            assert_eq!(parse_in_pieces(CHUNKED, piece, false).unwrap(), whole, "pieces of {piece}");
        }
        let cl = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_in_pieces(cl, 1, false).unwrap(), parse(cl).unwrap());
    }

    #[test]
    fn a_long_header_line_sent_one_byte_at_a_time_is_read() {
        // The old parser searched the whole input again after every read:
        // this took it about 2e10 steps; each byte is now looked at once.
        let mut raw = b"HTTP/1.1 200 OK\r\nx-long: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 200 << 10));
        raw.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
        let (r, _, used) = parse_in_pieces(&raw, 1, false).unwrap();
        assert_eq!((r.headers[1].1.len(), used), (200 << 10, raw.len()));
    }

    #[test]
    fn a_content_length_response_ends_at_its_length_and_reports_what_follows() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcEXTRA";
        let (r, keep, used) = parse(raw).unwrap();
        assert_eq!((r.body.as_slice(), keep, used), (&b"abc"[..], true, raw.len() - 5));
    }

    #[test]
    fn connection_close_http_1_0_and_close_delimited_bodies_are_not_kept_alive() {
        let (_, keep, _) = parse(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert!(!keep);
        let (_, keep, _) = parse(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert!(!keep);
        let (_, keep, _) = parse(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert!(keep);
        let (r, keep, _) = parse(b"HTTP/1.1 200 OK\r\n\r\nuntil close").unwrap();
        assert_eq!((r.body.as_slice(), keep), (&b"until close"[..], false));
    }

    #[test]
    fn head_204_and_304_have_no_body() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n";
        let (r, keep, used) = parse_in_pieces(raw, 100, true).unwrap();
        assert_eq!((r.body.len(), keep, used), (0, true, raw.len()));
        for status in ["204", "304"] {
            let raw = format!("HTTP/1.1 {status} X\r\n\r\n");
            let (r, keep, _) = parse(raw.as_bytes()).unwrap();
            assert_eq!((r.body.len(), keep), (0, true));
        }
    }

    #[test]
    fn obs_text_in_values_obs_fold_bare_lf_and_space_before_colon_are_accepted() {
        let raw =
            b"HTTP/1.1 200 \xc9t\xe9\nx-latin1: caf\xe9 cr\xe8me\nx-fold: a\r\n  b\nx-space : v\ncontent-length: 0\n\n";
        let (r, _, _) = parse(raw).unwrap();
        assert_eq!(
            r.headers,
            pairs(&[
                (":status", b"200"),
                ("x-latin1", b"caf\xe9 cr\xe8me"),
                ("x-fold", b"a b"),
                ("x-space", b"v"),
                ("content-length", b"0")
            ])
        );
    }

    #[test]
    fn a_non_utf8_header_line_completes_the_response() {
        // The old parser waited for more bytes forever on such a head.
        let raw = b"HTTP/1.1 200 OK\r\nx-bin: \xff\xfe\x80\r\ncontent-length: 2\r\n\r\nok";
        let (r, _, used) = parse_in_pieces(raw, 5, false).unwrap();
        assert_eq!((r.body.as_slice(), used), (&b"ok"[..], raw.len()));
    }

    fn error_of(raw: &[u8]) -> ParseError {
        parse(raw).map(|_| ()).unwrap_err()
    }

    #[test]
    fn a_chunk_size_near_u64_max_is_refused_without_overflow() {
        for size in ["ffffffffffffffff", "fffffffffffffff0", "7fffffffffffffff"] {
            let raw = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{size}\r\nabc");
            assert_eq!(error_of(raw.as_bytes()), ParseError::TooLarge { limit: LIMIT }, "{size}");
        }
        let raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1ffffffffffffffff\r\n";
        assert!(matches!(error_of(raw), ParseError::Malformed(m) if m.contains("64 bits")));
    }

    #[test]
    fn a_content_length_past_the_limit_fails_at_once() {
        assert_eq!(
            error_of(b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551615\r\n\r\n"),
            ParseError::TooLarge { limit: LIMIT }
        );
        assert!(matches!(
            error_of(b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n"),
            ParseError::Malformed(_)
        ));
    }

    #[test]
    fn a_response_larger_than_the_limit_fails_however_it_is_framed() {
        let mut p = ResponseParser::new(false, 100);
        assert_eq!(p.feed(b"HTTP/1.1 200 OK\r\n\r\n"), Ok(Progress::NeedMore));
        assert_eq!(p.feed(&[b'x'; 81]), Ok(Progress::NeedMore));
        assert_eq!(p.feed(b"x"), Err(ParseError::TooLarge { limit: 100 }));
        let mut p = ResponseParser::new(false, 100);
        let chunks = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            .iter()
            .chain(b"10\r\n0123456789abcdef\r\n".repeat(10).iter())
            .copied()
            .collect::<Vec<u8>>();
        assert_eq!(p.feed(&chunks), Err(ParseError::TooLarge { limit: 100 }));
    }

    #[test]
    fn an_endless_header_line_fails_at_the_head_size_cap() {
        let mut p = ResponseParser::new(false, u64::MAX);
        p.feed(b"HTTP/1.1 200 OK\r\nx-endless: ").unwrap();
        let block = [b'a'; 4096];
        let err = (0..).find_map(|_| p.feed(&block).err()).unwrap();
        assert!(matches!(err, ParseError::Malformed(m) if m.contains("longer than")));
        assert!(p.seen() <= MAX_HEAD_BYTES as u64 + 4096);
    }

    #[test]
    fn too_many_fields_are_refused() {
        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_FIELDS {
            raw.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        assert!(matches!(error_of(&raw), ParseError::Malformed(m) if m.contains("fields")));
    }

    #[test]
    fn truncated_responses_are_truncated_errors() {
        for raw in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n",
        ] {
            assert_eq!(error_of(raw), ParseError::Truncated, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn malformed_responses_are_protocol_errors_naming_the_problem() {
        for (raw, what) in [
            (&b"HTTP/2 200 OK\r\n\r\n"[..], "status line"),
            (b"HTTP/1.1 20 OK\r\n\r\n", "status line"),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
            (b"ICY 200 OK\r\n\r\n", "status line"),
            (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "without a colon"),
            (b"HTTP/1.1 200 OK\r\nbad name: v\r\n\r\n", "field name"),
            (b"HTTP/1.1 200 OK\r\n\xffname: v\r\n\r\n", "field name"),
            (b"HTTP/1.1 200 OK\r\nx: a\x00b\r\n\r\n", "control character"),
            (b"HTTP/1.1 200 OK\r\n folded: first\r\n\r\n", "folded"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n", "Content-Length"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab", "Content-Length"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\r\n", "chunk size"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n", "chunk data"),
        ] {
            match error_of(raw) {
                ParseError::Malformed(m) => assert!(m.contains(what), "{m:?} should name {what:?}"),
                e => panic!("{:?}: {e:?}", String::from_utf8_lossy(raw)),
            }
        }
    }

    #[test]
    fn equal_repeated_content_lengths_and_transfer_encoding_over_content_length_are_accepted() {
        let (r, keep, _) = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok").unwrap();
        assert_eq!((r.body.as_slice(), keep), (&b"ok"[..], true));
        let (r, keep, _) =
            parse(b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!((r.body.as_slice(), keep), (&b"ok"[..], false));
        // A coding other than chunked last: the body runs until the close.
        let (r, keep, _) = parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nzz").unwrap();
        assert_eq!((r.body.as_slice(), keep), (&b"zz"[..], false));
    }
}
