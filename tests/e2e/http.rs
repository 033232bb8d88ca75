//! HTTP/1.1 wire helpers shared by the origin and the client: reading a
//! message head, chunked bodies with trailers, and header lookups.

use std::io::{self, BufRead, Read, Write};

/// Largest message head (start line + headers) either side accepts.
pub const MAX_HEAD: usize = 256 * 1024;
/// Largest body either side accepts (a guard against a runaway peer).
pub const MAX_BODY: usize = 256 * 1024 * 1024;

/// Headers in wire order, as (name, value) pairs.
pub type Headers = Vec<(String, String)>;

/// First value of header `name` (case-insensitive).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Every value of header `name` (case-insensitive), in order.
pub fn header_all<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
}

/// True if a comma-separated header `name` has `token` (case-insensitive),
/// e.g. `has_token(h, "transfer-encoding", "chunked")`.
pub fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    header_all(headers, name).iter().any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one line ending in LF (CR before it is dropped). `Ok(None)` on EOF
/// before any byte; an error on EOF in the middle of a line.
pub fn read_line<R: BufRead>(r: &mut R, limit: usize) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.by_ref().take(limit as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        if buf.len() > limit {
            return Err(invalid(format!("line longer than {limit} bytes")));
        }
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the middle of a line"));
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Reads a message head: the start line and the header lines up to the empty
/// line. `Ok(None)` if the peer closed the connection before sending a byte.
/// Leading empty lines (allowed between messages) are skipped.
pub fn read_head<R: BufRead>(r: &mut R) -> io::Result<Option<(String, Headers)>> {
    let mut total = 0usize;
    let start = loop {
        match read_line(r, MAX_HEAD)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => {
                total += 2;
                if total > MAX_HEAD {
                    return Err(invalid("too many empty lines"));
                }
            }
            Some(l) => break l,
        }
    };
    total += start.len();
    let headers = read_header_lines(r, &mut total)?;
    Ok(Some((start, headers)))
}

/// Header lines up to (and consuming) the empty line; used for the head and
/// for chunked trailers. Names keep their case here.
fn read_header_lines<R: BufRead>(r: &mut R, total: &mut usize) -> io::Result<Headers> {
    let mut headers: Headers = Vec::new();
    loop {
        let line = read_line(r, MAX_HEAD)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside the header block"))?;
        *total += line.len() + 2;
        if *total > MAX_HEAD {
            return Err(invalid("header block too large"));
        }
        if line.is_empty() {
            return Ok(headers);
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            // Obsolete line folding: append to the previous value.
            match headers.last_mut() {
                Some((_, v)) => {
                    v.push(' ');
                    v.push_str(line.trim());
                    continue;
                }
                None => return Err(invalid(format!("continuation line without a header: {line:?}"))),
            }
        }
        let (name, value) =
            line.split_once(':').ok_or_else(|| invalid(format!("header line without a colon: {line:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
}

/// Decodes a chunked body; returns the body and the trailers.
pub fn read_chunked<R: BufRead>(r: &mut R) -> io::Result<(Vec<u8>, Headers)> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r, 4096)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a chunk size line")
        })?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| invalid(format!("bad chunk size line {line:?}")))?;
        if size == 0 {
            let mut total = 0;
            let trailers = read_header_lines(r, &mut total)?;
            return Ok((body, trailers));
        }
        if body.len() + size > MAX_BODY {
            return Err(invalid("chunked body too large"));
        }
        let at = body.len();
        body.resize(at + size, 0);
        r.read_exact(&mut body[at..])?;
        let mut b = [0u8; 1];
        r.read_exact(&mut b)?;
        if b[0] == b'\r' {
            r.read_exact(&mut b)?;
        }
        if b[0] != b'\n' {
            return Err(invalid("chunk data not followed by CRLF"));
        }
    }
}

/// Reads exactly `len` body bytes.
pub fn read_exact_body<R: Read>(r: &mut R, len: usize) -> io::Result<Vec<u8>> {
    if len > MAX_BODY {
        return Err(invalid(format!("content-length {len} too large")));
    }
    let mut body = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match r.read(&mut body[got..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {got} of {len} body bytes"),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(body)
}

/// Reads until EOF (a close-delimited body).
pub fn read_to_close<R: Read>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    r.take(MAX_BODY as u64).read_to_end(&mut body)?;
    Ok(body)
}

/// Writes `body` chunked, `chunk` bytes a chunk, then the last chunk and the
/// trailers. An empty body is just the last chunk.
pub fn write_chunked<W: Write>(w: &mut W, body: &[u8], chunk: usize, trailers: &[(String, String)]) -> io::Result<()> {
    let chunk = chunk.max(1);
    for piece in body.chunks(chunk) {
        write!(w, "{:x}\r\n", piece.len())?;
        w.write_all(piece)?;
        w.write_all(b"\r\n")?;
    }
    w.write_all(b"0\r\n")?;
    for (k, v) in trailers {
        write!(w, "{k}: {v}\r\n")?;
    }
    w.write_all(b"\r\n")?;
    Ok(())
}

/// The content length in `headers`, if any; an error if it is not a number
/// or if several values disagree.
pub fn content_length(headers: &[(String, String)]) -> io::Result<Option<usize>> {
    let mut found: Option<usize> = None;
    for v in header_all(headers, "content-length") {
        for part in v.split(',') {
            let n: usize = part.trim().parse().map_err(|_| invalid(format!("bad content-length {v:?}")))?;
            if found.is_some_and(|f| f != n) {
                return Err(invalid(format!("conflicting content-length values: {v:?}")));
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Standard reason phrase for a status code (enough for tests).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
