//! A small blocking HTTP/1.1 client for `proxy_http_call`, for server
//! bindings that run outgoing calls on threads of their own (Traffic Server).
//! One connection per call (`Connection: close`); bodies by Content-Length,
//! chunked (with trailers) or until close.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::abi::pairs::Pair;
use crate::host::{HttpCallRequest, HttpCallResponse};

/// Used when the plugin asked for no timeout, so that a silent upstream
/// cannot hold a thread forever.
pub const MAX_CALL_TIME: Duration = Duration::from_secs(300);

/// Largest response accepted (headers and body).
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Failure codes reported through `proxy_get_status`.
pub const FAILURE_CONNECT: u32 = 503;
pub const FAILURE_TIMEOUT: u32 = 504;
pub const FAILURE_PROTOCOL: u32 = 502;

/// Splits `host:port` (or `[v6]:port`, or a bare host meaning port 80).
pub fn parse_upstream(upstream: &str) -> Option<(String, u16)> {
    let upstream = upstream.trim();
    if upstream.is_empty() || upstream.contains('/') {
        return None;
    }
    if let Some(rest) = upstream.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if tail.is_empty() => 80,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match upstream.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host.to_string(), port.parse().ok()?)),
        Some(_) => None,
        None => Some((upstream.to_string(), 80)),
    }
}

fn header<'a>(pairs: &'a [Pair], name: &[u8]) -> Option<&'a [u8]> {
    pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
}

fn failed(code: u32, message: impl Into<String>) -> HttpCallResponse {
    HttpCallResponse::failed(code, message)
}

/// Performs the call; never panics, every failure is a response with no headers.
pub fn call(request: &HttpCallRequest) -> HttpCallResponse {
    let deadline = Instant::now() + request.timeout.unwrap_or(MAX_CALL_TIME);
    let Some((host, port)) = parse_upstream(&request.upstream) else {
        return failed(FAILURE_CONNECT, format!("bad upstream {:?}", request.upstream));
    };
    let addrs: Vec<_> = match (host.as_str(), port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => return failed(FAILURE_CONNECT, format!("cannot resolve {host}: {e}")),
    };
    let mut last_error = format!("no address for {host}");
    for addr in addrs {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return failed(FAILURE_TIMEOUT, "timeout");
        }
        match TcpStream::connect_timeout(&addr, remaining) {
            Ok(stream) => return exchange(stream, request, deadline),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return failed(FAILURE_TIMEOUT, "timeout"),
            Err(e) => last_error = format!("connect to {addr}: {e}"),
        }
    }
    failed(FAILURE_CONNECT, last_error)
}

pub fn encode_request(request: &HttpCallRequest) -> Vec<u8> {
    encode_request_with(request, false)
}

/// As [`encode_request`], but asks the upstream to keep the connection open
/// (HTTP/1.1 default) so that the caller may reuse it.
pub fn encode_request_keep_alive(request: &HttpCallRequest) -> Vec<u8> {
    encode_request_with(request, true)
}

/// Where a response ends when its framing says so: `Some((length, reusable))`
/// once `bytes` hold a complete response framed by `Content-Length`,
/// chunked encoding or a status without a body (`reusable`: the upstream
/// keeps the connection, HTTP/1.1 without `Connection: close`). `None` while
/// incomplete, and for a response delimited by the connection's close.
pub fn framed_response_length(bytes: &[u8], head: bool) -> Option<(usize, bool)> {
    fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
        hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
    }
    let mut start = 0;
    loop {
        let end = find(bytes, b"\r\n\r\n", start)? + 4;
        let head_text = std::str::from_utf8(&bytes[start..end]).ok()?;
        let mut lines = head_text.split("\r\n");
        let status_line = lines.next()?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next()?;
        let status: u16 = parts.next()?.parse().ok()?;
        if (100..200).contains(&status) {
            start = end;
            continue;
        }
        let (mut length, mut chunked, mut close) = (None, false, version != "HTTP/1.1");
        for line in lines {
            let Some((k, v)) = line.split_once(':') else { continue };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => length = Some(v.parse::<usize>().ok()?),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v.contains("close") || (close && !v.contains("keep-alive")),
                _ => {}
            }
        }
        if head || status == 204 || status == 304 {
            return Some((end, !close));
        }
        if chunked {
            let mut pos = end;
            loop {
                let line_end = find(bytes, b"\r\n", pos)?;
                let size_text = std::str::from_utf8(&bytes[pos..line_end]).ok()?;
                let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
                pos = line_end + 2;
                if size == 0 {
                    // Trailers (possibly none), then an empty line.
                    if bytes.get(pos..pos + 2)? == b"\r\n" {
                        return Some((pos + 2, !close));
                    }
                    return Some((find(bytes, b"\r\n\r\n", pos)? + 4, !close));
                }
                pos = pos.checked_add(size)?;
                if bytes.get(pos..pos + 2)? != b"\r\n" {
                    return None;
                }
                pos += 2;
            }
        }
        let length = length?;
        return (bytes.len() >= end + length).then_some((end + length, !close));
    }
}

fn encode_request_with(request: &HttpCallRequest, keep_alive: bool) -> Vec<u8> {
    let h = &request.headers;
    let method = header(h, b":method").unwrap_or(b"GET");
    let path = header(h, b":path").unwrap_or(b"/");
    let authority = header(h, b":authority").unwrap_or(request.upstream.as_bytes());
    let mut out = Vec::with_capacity(256 + request.body.len());
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority);
    out.extend_from_slice(b"\r\n");
    for (k, v) in h {
        let skip = k.starts_with(b":") || [&b"host"[..], b"content-length", b"transfer-encoding", b"connection"].iter().any(|n| k.eq_ignore_ascii_case(n));
        if !skip {
            out.extend_from_slice(k);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if request.trailers.is_empty() {
        out.extend_from_slice(format!("content-length: {}\r\n\r\n", request.body.len()).as_bytes());
        out.extend_from_slice(&request.body);
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
        if !request.body.is_empty() {
            out.extend_from_slice(format!("{:x}\r\n", request.body.len()).as_bytes());
            out.extend_from_slice(&request.body);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        for (k, v) in &request.trailers {
            out.extend_from_slice(k);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads with the time left before `deadline` as the socket timeout.
struct Deadlined {
    stream: TcpStream,
    deadline: Instant,
    read: usize,
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(remaining))?;
        let n = self.stream.read(buf)?;
        self.read += n;
        if self.read > MAX_RESPONSE_BYTES {
            return Err(std::io::Error::other("response too large"));
        }
        Ok(n)
    }
}

fn io_failure(e: std::io::Error) -> HttpCallResponse {
    if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) {
        failed(FAILURE_TIMEOUT, "timeout")
    } else {
        failed(FAILURE_PROTOCOL, format!("{e}"))
    }
}

fn exchange(mut stream: TcpStream, request: &HttpCallRequest, deadline: Instant) -> HttpCallResponse {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))));
    if let Err(e) = stream.write_all(&encode_request(request)) {
        return io_failure(e);
    }
    let mut reader = BufReader::new(Deadlined { stream, deadline, read: 0 });
    match read_response(&mut reader, header(&request.headers, b":method") == Some(b"HEAD")) {
        Ok(r) => r,
        Err(e) => io_failure(e),
    }
}

fn read_line(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(line)
}

fn read_fields(r: &mut impl BufRead, into: &mut Vec<Pair>) -> std::io::Result<()> {
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            return Ok(());
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(std::io::Error::other("malformed header line"));
        };
        let name = line[..colon].trim_ascii().to_ascii_lowercase();
        let value = line[colon + 1..].trim_ascii().to_vec();
        into.push((name, value));
    }
}

/// Parses a complete response read until the server closed the connection
/// (servers on the event loop read without blocking, then parse here).
pub fn parse_response(bytes: &[u8], head: bool) -> std::io::Result<HttpCallResponse> {
    read_response(&mut std::io::Cursor::new(bytes), head)
}

fn read_response(r: &mut impl BufRead, head: bool) -> std::io::Result<HttpCallResponse> {
    // Skip interim (1xx) responses.
    let (status, mut headers) = loop {
        let status_line = read_line(r)?;
        let mut parts = status_line.splitn(3, |b| *b == b' ');
        let _version = parts.next();
        let code = parts.next().and_then(|c| std::str::from_utf8(c).ok()?.parse::<u16>().ok()).ok_or_else(|| std::io::Error::other("malformed status line"))?;
        let mut headers = vec![(b":status".to_vec(), code.to_string().into_bytes())];
        read_fields(r, &mut headers)?;
        if !(100..200).contains(&code) {
            break (code, headers);
        }
    };
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    let no_body = head || status == 204 || status == 304;
    let chunked = header(&headers, b"transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().windows(7).any(|w| w == b"chunked"));
    if no_body {
    } else if chunked {
        loop {
            let line = read_line(r)?;
            let size_hex = line.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
            let size = usize::from_str_radix(std::str::from_utf8(size_hex).unwrap_or("x"), 16).map_err(|_| std::io::Error::other("malformed chunk size"))?;
            if size == 0 {
                read_fields(r, &mut trailers)?;
                break;
            }
            if body.len() + size > MAX_RESPONSE_BYTES {
                return Err(std::io::Error::other("response too large"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            read_line(r).ok();
        }
        headers.retain(|(k, _)| k != b"transfer-encoding");
    } else if let Some(len) = header(&headers, b"content-length").and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok()) {
        if len > MAX_RESPONSE_BYTES {
            return Err(std::io::Error::other("response too large"));
        }
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(HttpCallResponse { headers: std::mem::take(&mut headers), body, trailers, failure: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_are_parsed() {
        assert_eq!(parse_upstream("127.0.0.1:8080"), Some(("127.0.0.1".into(), 8080)));
        assert_eq!(parse_upstream("example.com"), Some(("example.com".into(), 80)));
        assert_eq!(parse_upstream("[::1]:81"), Some(("::1".into(), 81)));
        assert_eq!(parse_upstream(""), None);
        assert_eq!(parse_upstream("a:b"), None);
        assert_eq!(parse_upstream("http://x/"), None);
    }

    #[test]
    fn a_chunked_response_with_trailers_is_read() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 2\r\n\r\n";
        let r = read_response(&mut &raw[..], false).unwrap();
        assert_eq!(r.headers, vec![(b":status".to_vec(), b"200".to_vec()), (b"x-a".to_vec(), b"1".to_vec())]);
        assert_eq!(r.body, b"abcde");
        assert_eq!(r.trailers, vec![(b"x-t".to_vec(), b"2".to_vec())]);
    }

    #[test]
    fn framed_responses_are_complete_only_with_all_their_bytes() {
        let cl = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc";
        assert_eq!(framed_response_length(cl, false), Some((cl.len(), true)));
        assert_eq!(framed_response_length(&cl[..cl.len() - 1], false), None);
        let ch = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n";
        assert_eq!(framed_response_length(ch, false), Some((ch.len(), true)));
        for cut in 1..ch.len() {
            assert_eq!(framed_response_length(&ch[..cut], false), None, "cut {cut}");
        }
        let close = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(framed_response_length(close, false), Some((close.len(), false)));
        assert_eq!(framed_response_length(b"HTTP/1.1 200 OK\r\n\r\nuntil close", false), None);
        assert_eq!(framed_response_length(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false), Some((38, false)));
    }

    #[test]
    fn a_refused_connection_is_a_failure_with_no_headers() {
        let r = call(&HttpCallRequest { upstream: "127.0.0.1:1".into(), headers: vec![], body: vec![], trailers: vec![], timeout: Some(Duration::from_secs(2)) });
        assert!(r.headers.is_empty());
        assert_eq!(r.failure.map(|f| f.0), Some(FAILURE_CONNECT));
    }
}
