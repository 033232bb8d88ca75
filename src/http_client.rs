//! A small blocking HTTP/1.1 client for `proxy_http_call`, for server
//! bindings that run outgoing calls on threads of their own (Traffic Server),
//! and for remote-code downloads. One connection per call (`Connection:
//! close`); the answer is read with the incremental parser of
//! [`crate::http_response`] (bodies by Content-Length, chunked with trailers,
//! or until close), at most `HttpCallRequest::max_response_size` bytes.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::abi::pairs::Pair;
use crate::host::{HttpCallRequest, HttpCallResponse};
use crate::http_response::{ParseError, Progress, ResponseParser};

/// Used when the plugin asked for no timeout, so that a silent upstream
/// cannot hold a thread forever.
pub const MAX_CALL_TIME: Duration = Duration::from_secs(300);

/// Failure codes reported through `proxy_get_status`.
pub const FAILURE_CONNECT: u32 = 503;
pub const FAILURE_TIMEOUT: u32 = 504;
pub const FAILURE_PROTOCOL: u32 = 502;
/// The answer was larger than the call's `max_response_size`.
pub const FAILURE_TOO_LARGE: u32 = 413;

/// The most outgoing calls in flight per NGINX worker or Traffic Server
/// process (all plugins together), unless [`MAX_CALLS_IN_FLIGHT_ENV`] says otherwise.
pub const DEFAULT_MAX_CALLS_IN_FLIGHT: usize = 4096;
/// The environment variable that sets the cap on calls in flight (a positive
/// whole number; NGINX passes it to workers only with `env NAME=value;`).
pub const MAX_CALLS_IN_FLIGHT_ENV: &str = "PROXY_WASM_HOST_MAX_HTTP_CALLS_IN_FLIGHT";

/// The cap on calls in flight of this process, read once; `warn` is told
/// (that first time) about a value that is not a positive whole number.
pub fn max_calls_in_flight(warn: impl FnOnce(String)) -> usize {
    static CAP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| match std::env::var(MAX_CALLS_IN_FLIGHT_ENV) {
        Err(_) => DEFAULT_MAX_CALLS_IN_FLIGHT,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                warn(format!("{MAX_CALLS_IN_FLIGHT_ENV}={v:?}: expected a positive whole number; using {DEFAULT_MAX_CALLS_IN_FLIGHT}"));
                DEFAULT_MAX_CALLS_IN_FLIGHT
            }
        },
    })
}

/// The failed call a parse error makes: too large, or a protocol error.
pub fn parse_failure(e: &ParseError) -> HttpCallResponse {
    match e {
        ParseError::TooLarge { .. } => HttpCallResponse::failed(FAILURE_TOO_LARGE, format!("response too large: {e}")),
        _ => HttpCallResponse::failed(FAILURE_PROTOCOL, format!("bad response: {e}")),
    }
}

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
        return (!host.trim().is_empty()).then(|| (host.to_string(), port));
    }
    match upstream.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && !host.trim().is_empty() => {
            Some((host.to_string(), port.parse().ok()?))
        }
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
        let skip = k.starts_with(b":")
            || [&b"host"[..], b"content-length", b"transfer-encoding", b"connection"]
                .iter()
                .any(|n| k.eq_ignore_ascii_case(n));
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

fn io_failure(e: std::io::Error) -> HttpCallResponse {
    if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) {
        failed(FAILURE_TIMEOUT, "timeout")
    } else {
        failed(FAILURE_PROTOCOL, format!("{e}"))
    }
}

fn exchange(mut stream: TcpStream, request: &HttpCallRequest, deadline: Instant) -> HttpCallResponse {
    let _ = stream.set_nodelay(true);
    let _ = stream
        .set_write_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))));
    if let Err(e) = stream.write_all(&encode_request(request)) {
        return io_failure(e);
    }
    let head = header(&request.headers, b":method").is_some_and(|m| m.eq_ignore_ascii_case(b"HEAD"));
    let mut parser = ResponseParser::new(head, request.max_response_size);
    let mut buf = [0u8; 16384];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return failed(FAILURE_TIMEOUT, "timeout");
        }
        if let Err(e) = stream.set_read_timeout(Some(remaining)) {
            return io_failure(e);
        }
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return io_failure(e),
        };
        let outcome =
            if n == 0 { parser.finish().map(|()| Progress::Complete { used: 0 }) } else { parser.feed(&buf[..n]) };
        match outcome {
            Ok(Progress::NeedMore) => {}
            Ok(Progress::Complete { .. }) => return parser.into_response(),
            Err(e) => return parse_failure(&e),
        }
    }
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
    fn a_refused_connection_is_a_failure_with_no_headers() {
        let r = call(&HttpCallRequest {
            upstream: "127.0.0.1:1".into(),
            headers: vec![],
            body: vec![],
            trailers: vec![],
            timeout: Some(Duration::from_secs(2)),
            max_response_size: 1 << 20,
        });
        assert!(r.headers.is_empty());
        assert_eq!(r.failure.map(|f| f.0), Some(FAILURE_CONNECT));
    }
}
