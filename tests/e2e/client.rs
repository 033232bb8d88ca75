//! A minimal blocking HTTP/1.1 client over `std::net::TcpStream`.
//!
//! ```ignore
//! let resp = client::get(ats.port(), "/path")?;                    // Host: example.com
//! let resp = Request::post("/echo", b"data".to_vec()).chunked(4096).send(ats.port())?;
//! let mut conn = Connection::open(ats.port())?;                    // keep-alive
//! let a = conn.send(&Request::get("/a"))?;
//! let b = conn.send(&Request::get("/b"))?;
//! ```
//!
//! Every call has a deadline (default 10 s). A connection closed or reset
//! before a complete response is `Err(ClientError::Closed{..})`, so a test can
//! assert on it.

use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::http::{self, Headers};

/// The default deadline for a whole request/response exchange.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The Host header sent when the request sets none.
pub const DEFAULT_HOST: &str = "example.com";

/// A request to send.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Headers in order. `Host` is added (`example.com`) unless present or
    /// [`no_host`](Self::no_host) was called; `Content-Length` /
    /// `Transfer-Encoding` are added from the body unless present.
    pub headers: Headers,
    pub body: Vec<u8>,
    /// Send the body chunked, this many bytes a chunk.
    pub chunked: Option<usize>,
    pub trailers: Headers,
    /// Deadline for the whole exchange (connect, send, receive).
    pub timeout: Duration,
    /// `HTTP/1.1` unless changed.
    pub version: String,
    add_host: bool,
    add_framing: bool,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            chunked: None,
            trailers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            version: "HTTP/1.1".to_string(),
            add_host: true,
            add_framing: true,
        }
    }
    pub fn get(path: &str) -> Request {
        Request::new("GET", path)
    }
    pub fn head(path: &str) -> Request {
        Request::new("HEAD", path)
    }
    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Request {
        Request::new("POST", path).body(body)
    }
    pub fn put(path: &str, body: impl Into<Vec<u8>>) -> Request {
        Request::new("PUT", path).body(body)
    }
    /// Adds a header (duplicates allowed, order kept).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Sets the Host header.
    pub fn host(mut self, host: impl Into<String>) -> Request {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case("host"));
        self.headers.push(("Host".into(), host.into()));
        self
    }
    /// Sends no Host header at all.
    pub fn no_host(mut self) -> Request {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case("host"));
        self.add_host = false;
        self
    }
    /// Adds no Content-Length / Transfer-Encoding of its own (the test sets
    /// them, or wants them missing or wrong).
    pub fn raw_framing(mut self) -> Request {
        self.add_framing = false;
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }
    /// Sends the body with `Transfer-Encoding: chunked`, `chunk_size` bytes a chunk.
    pub fn chunked(mut self, chunk_size: usize) -> Request {
        self.chunked = Some(chunk_size.max(1));
        self
    }
    /// Adds a request trailer (implies chunked with 16 KiB chunks if not chunked yet).
    pub fn trailer(mut self, name: impl Into<String>, value: impl Into<String>) -> Request {
        if self.chunked.is_none() {
            self.chunked = Some(16 * 1024);
        }
        self.trailers.push((name.into(), value.into()));
        self
    }
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = timeout;
        self
    }
    pub fn version(mut self, version: &str) -> Request {
        self.version = version.to_string();
        self
    }

    /// Sends on a new connection to 127.0.0.1:`port`, reads the response,
    /// closes the connection.
    pub fn send(&self, port: u16) -> Result<Response, ClientError> {
        let mut conn = Connection::open_with_timeout(port, self.timeout)?;
        conn.send(self)
    }

    /// The bytes this request puts on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(format!("{} {} {}\r\n", self.method, self.path, self.version).as_bytes());
        if self.add_host && http::header(&self.headers, "host").is_none() {
            out.extend_from_slice(format!("Host: {DEFAULT_HOST}\r\n").as_bytes());
        }
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        let user_framing = http::header(&self.headers, "content-length").is_some()
            || http::header(&self.headers, "transfer-encoding").is_some();
        if self.add_framing && !user_framing {
            if self.chunked.is_some() {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            } else if !self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH") {
                out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
        match self.chunked {
            Some(size) => {
                http::write_chunked(&mut out, &self.body, size, &self.trailers).expect("write to Vec");
            }
            None => out.extend_from_slice(&self.body),
        }
        out
    }
}

/// A response as received. Header names are lowercased, order kept.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub version: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    /// The body came chunked.
    pub chunked: bool,
    /// Interim (1xx) responses received before this one, by status.
    pub interim: Vec<u16>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        http::header(&self.headers, name)
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        http::header_all(&self.headers, name)
    }
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    pub fn trailer(&self, name: &str) -> Option<&str> {
        http::header(&self.trailers, name)
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The server will close the connection after this response.
    pub fn closes_connection(&self) -> bool {
        http::has_token(&self.headers, "connection", "close")
            || (self.version == "HTTP/1.0" && !http::has_token(&self.headers, "connection", "keep-alive"))
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ClientError {
    /// Could not connect.
    Connect(io::Error),
    /// The deadline passed; `stage` says where, `received` holds what had arrived.
    Timeout { stage: &'static str, received: usize },
    /// The peer closed (`reset == false`) or reset (`reset == true`) the
    /// connection before a complete response; `received` bytes had arrived
    /// (0: no response at all).
    Closed { reset: bool, stage: &'static str, received: usize },
    /// The response could not be parsed.
    Malformed(String),
    /// Any other I/O error.
    Io(io::Error),
}

impl ClientError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Timeout { .. })
    }
    /// Closed or reset by the peer.
    pub fn is_closed(&self) -> bool {
        matches!(self, ClientError::Closed { .. })
    }
    /// Closed or reset before any response byte arrived.
    pub fn is_closed_without_response(&self) -> bool {
        matches!(self, ClientError::Closed { received: 0, .. })
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "connect failed: {e}"),
            ClientError::Timeout { stage, received } => {
                write!(f, "timed out while {stage} ({received} response bytes received)")
            }
            ClientError::Closed { reset, stage, received } => write!(
                f,
                "connection {} while {stage} ({received} response bytes received)",
                if *reset { "reset" } else { "closed" }
            ),
            ClientError::Malformed(m) => write!(f, "malformed response: {m}"),
            ClientError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// A stream wrapper enforcing an overall deadline on reads and counting bytes.
struct DeadlineStream {
    stream: TcpStream,
    deadline: Instant,
    received: usize,
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        self.stream.set_read_timeout(Some(left))?;
        let n = self.stream.read(buf)?;
        self.received += n;
        Ok(n)
    }
}

/// One client connection; several requests may be sent on it in turn (keep-alive).
pub struct Connection {
    reader: BufReader<DeadlineStream>,
    peer: SocketAddr,
    closed: bool,
}

impl Connection {
    /// Connects to 127.0.0.1:`port` (5 s connect timeout).
    pub fn open(port: u16) -> Result<Connection, ClientError> {
        Connection::open_with_timeout(port, DEFAULT_TIMEOUT)
    }

    pub fn open_with_timeout(port: u16, timeout: Duration) -> Result<Connection, ClientError> {
        let peer: SocketAddr = ([127, 0, 0, 1], port).into();
        let stream =
            TcpStream::connect_timeout(&peer, timeout.min(Duration::from_secs(5))).map_err(ClientError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(Connection {
            reader: BufReader::with_capacity(
                64 * 1024,
                DeadlineStream { stream, deadline: Instant::now() + timeout, received: 0 },
            ),
            peer,
            closed: false,
        })
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The server closed the connection (seen while reading the last response).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Writes raw bytes (for hand-made or malformed requests).
    pub fn write_raw(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), ClientError> {
        let s = &mut self.reader.get_mut().stream;
        let _ = s.set_write_timeout(Some(timeout));
        s.write_all(bytes).and_then(|_| s.flush()).map_err(|e| map_err(e, "sending the request", 0))
    }

    /// Sends `req` and reads its response.
    pub fn send(&mut self, req: &Request) -> Result<Response, ClientError> {
        let deadline = Instant::now() + req.timeout;
        self.reader.get_mut().deadline = deadline;
        self.reader.get_mut().received = 0;
        let bytes = req.to_bytes();
        {
            let s = &mut self.reader.get_mut().stream;
            let _ = s.set_write_timeout(Some(req.timeout));
            if let Err(e) = s.write_all(&bytes).and_then(|_| s.flush()) {
                // The server may have answered early (e.g. an error) and
                // closed; try to read that answer before reporting the error.
                if let Ok(resp) = self.read_response_for(&req.method, deadline) {
                    return Ok(resp);
                }
                return Err(map_err(e, "sending the request", 0));
            }
        }
        self.read_response_for(&req.method, deadline)
    }

    /// Reads one response (to a request with `method`, which matters for HEAD).
    pub fn read_response_for(&mut self, method: &str, deadline: Instant) -> Result<Response, ClientError> {
        self.reader.get_mut().deadline = deadline;
        let mut interim = Vec::new();
        loop {
            let received = |c: &Connection| c.reader.get_ref().received;
            let head = http::read_head(&mut self.reader)
                .map_err(|e| map_err(e, "reading the response head", received(self)))?;
            let (start, headers) = match head {
                Some(h) => h,
                None => {
                    self.closed = true;
                    return Err(ClientError::Closed {
                        reset: false,
                        stage: "waiting for the response",
                        received: received(self),
                    });
                }
            };
            let mut parts = start.splitn(3, ' ');
            let version = parts.next().unwrap_or("").to_string();
            let status: u16 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .filter(|_| version.starts_with("HTTP/"))
                .ok_or_else(|| ClientError::Malformed(format!("bad status line {start:?}")))?;
            let reason = parts.next().unwrap_or("").to_string();
            let headers: Headers = headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
            if (100..200).contains(&status) && status != 101 {
                interim.push(status);
                continue;
            }
            let no_body = method.eq_ignore_ascii_case("HEAD") || status < 200 || status == 204 || status == 304;
            let chunked = !no_body && http::has_token(&headers, "transfer-encoding", "chunked");
            let (body, trailers) = if no_body {
                (Vec::new(), Vec::new())
            } else if chunked {
                http::read_chunked(&mut self.reader)
                    .map_err(|e| map_err(e, "reading the chunked body", received(self)))?
            } else {
                match http::content_length(&headers).map_err(|e| ClientError::Malformed(e.to_string()))? {
                    Some(n) => (
                        http::read_exact_body(&mut self.reader, n)
                            .map_err(|e| map_err(e, "reading the body", received(self)))?,
                        Vec::new(),
                    ),
                    None => {
                        let b = http::read_to_close(&mut self.reader)
                            .map_err(|e| map_err(e, "reading the body", received(self)))?;
                        self.closed = true;
                        (b, Vec::new())
                    }
                }
            };
            let resp = Response { status, reason, version, headers, body, trailers, chunked, interim };
            if resp.closes_connection() {
                self.closed = true;
            }
            return Ok(resp);
        }
    }

    /// Closes the connection.
    pub fn close(self) {
        let _ = self.reader.get_ref().stream.shutdown(Shutdown::Both);
    }
}

fn map_err(e: io::Error, stage: &'static str, received: usize) -> ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout { stage, received },
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
            ClientError::Closed { reset: true, stage, received }
        }
        io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof => {
            ClientError::Closed { reset: false, stage, received }
        }
        io::ErrorKind::InvalidData => ClientError::Malformed(format!("{stage}: {e}")),
        _ => ClientError::Io(e),
    }
}

/// `GET path` with `Host: example.com` on a new connection.
pub fn get(port: u16, path: &str) -> Result<Response, ClientError> {
    Request::get(path).send(port)
}

/// `POST path` with `body` (Content-Length) on a new connection.
pub fn post(port: u16, path: &str, body: impl Into<Vec<u8>>) -> Result<Response, ClientError> {
    Request::post(path, body).send(port)
}

/// Sends `req` on a new connection.
pub fn send(port: u16, req: &Request) -> Result<Response, ClientError> {
    req.send(port)
}

/// Clients sending `request()` in a loop, one connection per request, until
/// [`Flow::finish`]: the load under which reloads are tested. A response is a
/// failure unless `fine` accepts it.
pub struct Flow {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Flow {
    pub fn start(
        port: u16,
        clients: usize,
        request: impl Fn() -> Request + Clone + Send + 'static,
        fine: impl Fn(&Response) -> bool + Clone + Send + 'static,
    ) -> Flow {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let (stop, request, fine) = (stop.clone(), request.clone(), fine.clone());
                std::thread::spawn(move || {
                    let (mut sent, mut failures) = (0, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        sent += 1;
                        match request().send(port) {
                            Ok(r) if fine(&r) => {}
                            Ok(r) => failures.push(format!("status {} {:?}", r.status, r.headers)),
                            Err(e) => failures.push(e.to_string()),
                        }
                    }
                    (sent, failures)
                })
            })
            .collect();
        Flow { stop, threads }
    }

    /// Stops the clients; returns how many requests they sent and every failure.
    pub fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().expect("client thread")).fold(
            (0, Vec::new()),
            |(n, mut f), (s, g)| {
                f.extend(g);
                (n + s, f)
            },
        )
    }
}
