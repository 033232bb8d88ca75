//! A recording HTTP/1.1 origin server on 127.0.0.1 (ephemeral port).
//!
//! One thread accepts; each connection gets its own thread and is kept alive
//! between requests (HTTP/1.1 rules: `Connection: close` or HTTP/1.0 without
//! `keep-alive` ends it). Every request is recorded (method, target, headers
//! in wire order, body de-chunked, trailers) *before* the handler runs, then
//! the handler's [`Response`] is written.
//!
//! ```ignore
//! let origin = Origin::start();                      // 200 "hello from origin"; /echo* echoes
//! let origin = Origin::with_handler(|req| Response::text(201, "made"));
//! origin.set_handler(|req| Response::echo(req));
//! let reqs = origin.wait_for_requests(1, Duration::from_secs(5));
//! ```

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http::{self, Headers};

/// How long a connection may sit idle (between or inside requests).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A request as the origin received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target exactly as sent (normally a path with query).
    pub path: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Headers in wire order, names as sent.
    pub headers: Headers,
    /// The body (de-chunked if it came chunked).
    pub body: Vec<u8>,
    /// Trailers of a chunked body.
    pub trailers: Headers,
    /// The body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// Connection number (1, 2, ...) in accept order: equal numbers = same connection.
    pub connection: u64,
    /// 1 for the first request on its connection, 2 for the second, ...
    pub seq_on_connection: u64,
    pub peer: SocketAddr,
}

impl Request {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        http::header(&self.headers, name)
    }
    /// Every value of header `name` (case-insensitive).
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
    /// The path without the query string.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }
    pub fn query(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, q)| q)
    }
}

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` (added unless the handler set `content-length` or
    /// `transfer-encoding` itself).
    Length,
    /// `Transfer-Encoding: chunked` with chunks of this many bytes, then trailers.
    Chunked(usize),
    /// No length: the body ends when the origin closes the connection.
    Close,
}

/// What the origin sends back; build with the constructors and chain the
/// builder methods.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Reason phrase; the standard one if `None`.
    pub reason: Option<String>,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub framing: Framing,
    /// Trailers, sent only with `Framing::Chunked`.
    pub trailers: Headers,
    /// Wait this long before writing anything.
    pub delay: Duration,
    /// Wait this long between body chunks (streaming).
    pub chunk_delay: Duration,
    /// Close the connection after this response.
    pub close: bool,
    /// Close the connection without writing any response.
    pub drop_connection: bool,
    /// Write these bytes verbatim instead of a response, then close.
    pub raw: Option<Vec<u8>>,
}

impl Response {
    /// Status only, empty body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            reason: None,
            headers: Vec::new(),
            body: Vec::new(),
            framing: Framing::Length,
            trailers: Vec::new(),
            delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            close: false,
            drop_connection: false,
            raw: None,
        }
    }
    /// `content-type: text/plain` with `body`.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status).header("content-type", "text/plain").body(body.into().into_bytes())
    }
    /// The default answer: 200, `content-type: text/plain`, `hello from origin`.
    pub fn hello() -> Response {
        Response::text(200, "hello from origin")
    }
    /// 200 with the request's body as the body, the request's content type (or
    /// `application/octet-stream`), and `x-echo-method` / `x-echo-path` /
    /// `x-echo-body-length` headers describing the request.
    pub fn echo(req: &Request) -> Response {
        let ctype = req.header("content-type").unwrap_or("application/octet-stream").to_string();
        Response::new(200)
            .header("content-type", ctype)
            .header("x-echo-method", req.method.clone())
            .header("x-echo-path", req.path.clone())
            .header("x-echo-body-length", req.body.len().to_string())
            .body(req.body.clone())
    }
    /// Close the connection without answering.
    pub fn drop_connection() -> Response {
        let mut r = Response::new(0);
        r.drop_connection = true;
        r
    }
    /// Send `bytes` verbatim (e.g. a malformed response), then close.
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Response {
        let mut r = Response::new(0);
        r.raw = Some(bytes.into());
        r
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Response {
        self.reason = Some(reason.into());
        self
    }
    /// Adds a header (several with the same name are allowed, order kept).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }
    /// Chunked encoding, `chunk_size` bytes a chunk.
    pub fn chunked(mut self, chunk_size: usize) -> Response {
        self.framing = Framing::Chunked(chunk_size.max(1));
        self
    }
    /// A close-delimited body (no length, connection closed at the end).
    pub fn close_delimited(mut self) -> Response {
        self.framing = Framing::Close;
        self.close = true;
        self
    }
    /// Adds a trailer (implies chunked, 16 KiB chunks, unless chunked already).
    pub fn trailer(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        if !matches!(self.framing, Framing::Chunked(_)) {
            self.framing = Framing::Chunked(16 * 1024);
        }
        self.trailers.push((name.into(), value.into()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Response {
        self.delay = d;
        self
    }
    pub fn chunk_delay(mut self, d: Duration) -> Response {
        self.chunk_delay = d;
        self
    }
    /// `connection: close` and close after the response.
    pub fn close(mut self) -> Response {
        self.close = true;
        self
    }
}

/// The handler type: request in, response out. Called on the connection's thread.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync + 'static>;

/// The default handler: `/echo...` paths echo the request body
/// ([`Response::echo`]); everything else gets [`Response::hello`].
pub fn default_handler(req: &Request) -> Response {
    if req.path_only().starts_with("/echo") {
        Response::echo(req)
    } else {
        Response::hello()
    }
}

struct Shared {
    requests: Mutex<Vec<Request>>,
    arrived: Condvar,
    /// Problems the origin saw: unparsable requests, handler panics, I/O errors mid-request.
    errors: Mutex<Vec<String>>,
    handler: RwLock<Handler>,
    shutdown: AtomicBool,
    connections: AtomicU64,
    open: Mutex<HashMap<u64, TcpStream>>,
}

/// A running origin; stops (closing every connection) on drop.
pub struct Origin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Origin {
    /// An origin with [`default_handler`].
    pub fn start() -> Origin {
        Origin::with_handler(default_handler)
    }

    /// An origin answering with `handler`.
    pub fn with_handler(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("origin: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("origin: local_addr");
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            errors: Mutex::new(Vec::new()),
            handler: RwLock::new(Arc::new(handler)),
            shutdown: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        });
        let s = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name(format!("origin-{}", addr.port()))
            .spawn(move || accept_loop(listener, s))
            .expect("origin: spawn accept thread");
        Origin { addr, shared, acceptor: Some(acceptor) }
    }

    /// Replaces the handler (applies to requests that arrive afterwards).
    pub fn set_handler(&self, handler: impl Fn(&Request) -> Response + Send + Sync + 'static) {
        *self.shared.handler.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(handler);
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.addr.port(), path)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
    pub fn last_request(&self) -> Option<Request> {
        self.shared.requests.lock().unwrap_or_else(|p| p.into_inner()).last().cloned()
    }
    /// Forgets the recorded requests and errors.
    pub fn clear(&self) {
        self.shared.requests.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.shared.errors.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
    /// Problems seen: malformed requests, handler panics, I/O errors mid-request.
    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    /// How many connections were accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The first request recorded for `path` (the full request-target), waiting up to
    /// `timeout` for it. Panics with the paths that did arrive.
    pub fn wait_for_path(&self, path: &str, timeout: Duration) -> Request {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.requests().into_iter().find(|r| r.path == path) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "the origin never got {path}: {:?}",
                self.requests().iter().map(|r| r.path.clone()).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until at least `n` requests were recorded; returns them all.
    /// Panics after `timeout` with what did arrive.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Request> {
        match self.try_wait_for_requests(n, timeout) {
            Ok(v) => v,
            Err(v) => panic!(
                "origin {}: expected {n} request(s) within {timeout:?}, got {}: {:?}; origin errors: {:?}",
                self.addr,
                v.len(),
                v.iter().map(|r| format!("{} {}", r.method, r.path)).collect::<Vec<_>>(),
                self.errors()
            ),
        }
    }

    /// Like [`wait_for_requests`](Self::wait_for_requests) but returns `Err(what arrived)` on timeout.
    pub fn try_wait_for_requests(&self, n: usize, timeout: Duration) -> Result<Vec<Request>, Vec<Request>> {
        let deadline = Instant::now() + timeout;
        let mut reqs = self.shared.requests.lock().unwrap_or_else(|p| p.into_inner());
        while reqs.len() < n {
            let now = Instant::now();
            if now >= deadline {
                return Err(reqs.clone());
            }
            reqs = self.shared.arrived.wait_timeout(reqs, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        Ok(reqs.clone())
    }

    /// Asserts that no request arrives within `window` (beyond those already recorded).
    pub fn assert_no_new_requests(&self, window: Duration) {
        let before = self.request_count();
        std::thread::sleep(window);
        let reqs = self.requests();
        assert_eq!(
            reqs.len(),
            before,
            "origin {}: unexpected request(s): {:?}",
            self.addr,
            reqs[before..].iter().map(|r| format!("{} {}", r.method, r.path)).collect::<Vec<_>>()
        );
    }

    /// Closes every open connection (e.g. to force the proxy to reconnect).
    pub fn close_connections(&self) {
        for (_, s) in self.shared.open.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        self.close_connections();
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                shared.errors.lock().unwrap_or_else(|p| p.into_inner()).push(format!("accept: {e}"));
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let id = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
        if let Ok(clone) = stream.try_clone() {
            shared.open.lock().unwrap_or_else(|p| p.into_inner()).insert(id, clone);
        }
        let s = shared.clone();
        let spawned = std::thread::Builder::new().name(format!("origin-conn-{id}")).spawn(move || {
            serve_connection(stream, id, &s);
            s.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        });
        if let Err(e) = spawned {
            shared.errors.lock().unwrap_or_else(|p| p.into_inner()).push(format!("spawn connection thread: {e}"));
        }
    }
}

fn serve_connection(stream: TcpStream, id: u64, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().unwrap_or_else(|_| "0.0.0.0:0".parse().unwrap());
    let write_half = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut writer = BufWriter::with_capacity(64 * 1024, write_half);
    let note = |msg: String| shared.errors.lock().unwrap_or_else(|p| p.into_inner()).push(msg);
    let mut seq = 0u64;
    loop {
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let (start, headers) = match http::read_head(&mut reader) {
            Ok(Some(h)) => h,
            Ok(None) => return, // peer closed between requests: normal
            Err(e) if is_quiet_close(&e) && seq > 0 => return,
            Err(e) => {
                if !shared.shutdown.load(Ordering::SeqCst) && !is_idle_timeout(&e) {
                    note(format!("connection {id}: reading request head: {e}"));
                }
                return;
            }
        };
        seq += 1;
        let mut parts = start.split_whitespace();
        let (method, path, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(p), Some(v), None) if v.starts_with("HTTP/") => {
                (m.to_string(), p.to_string(), v.to_string())
            }
            _ => {
                note(format!("connection {id}: malformed request line {start:?}"));
                let _ = writer.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = writer.flush();
                return;
            }
        };
        let chunked = http::has_token(&headers, "transfer-encoding", "chunked");
        let has_body = chunked || matches!(http::content_length(&headers), Ok(Some(n)) if n > 0);
        if has_body && http::has_token(&headers, "expect", "100-continue") {
            let _ = writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
            let _ = writer.flush();
        }
        let body_result = if chunked {
            http::read_chunked(&mut reader)
        } else {
            match http::content_length(&headers) {
                Ok(Some(n)) => http::read_exact_body(&mut reader, n).map(|b| (b, Vec::new())),
                Ok(None) => Ok((Vec::new(), Vec::new())),
                Err(e) => Err(e),
            }
        };
        let (body, trailers) = match body_result {
            Ok(b) => b,
            Err(e) => {
                note(format!("connection {id}: reading body of {method} {path}: {e}"));
                return;
            }
        };
        let req = Request {
            method,
            path,
            version,
            headers,
            body,
            trailers,
            chunked,
            connection: id,
            seq_on_connection: seq,
            peer,
        };
        {
            let mut reqs = shared.requests.lock().unwrap_or_else(|p| p.into_inner());
            reqs.push(req.clone());
            shared.arrived.notify_all();
        }
        let handler = shared.handler.read().unwrap_or_else(|p| p.into_inner()).clone();
        let resp = match catch_unwind(AssertUnwindSafe(|| handler(&req))) {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "<non-string panic>".into());
                note(format!("handler panicked on {} {}: {msg}", req.method, req.path));
                Response::text(500, format!("origin handler panicked: {msg}")).close()
            }
        };
        let client_wants_close = http::has_token(&req.headers, "connection", "close")
            || (req.version == "HTTP/1.0" && !http::has_token(&req.headers, "connection", "keep-alive"));
        match write_response(&mut writer, &req, &resp, client_wants_close) {
            Ok(keep) if keep => {}
            Ok(_) => {
                let _ = writer.get_ref().shutdown(Shutdown::Write);
                return;
            }
            Err(e) => {
                if !shared.shutdown.load(Ordering::SeqCst) {
                    note(format!("connection {id}: writing response to {} {}: {e}", req.method, req.path));
                }
                return;
            }
        }
    }
}

fn is_quiet_close(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe)
}

fn is_idle_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Writes `resp`; returns whether the connection stays open.
fn write_response<W: Write>(w: &mut W, req: &Request, resp: &Response, client_wants_close: bool) -> io::Result<bool> {
    if !resp.delay.is_zero() {
        std::thread::sleep(resp.delay);
    }
    if resp.drop_connection {
        return Ok(false);
    }
    if let Some(raw) = &resp.raw {
        w.write_all(raw)?;
        w.flush()?;
        return Ok(false);
    }
    let no_body_status = resp.status < 200 || resp.status == 204 || resp.status == 304;
    let close = resp.close || client_wants_close || resp.framing == Framing::Close;
    let user_framing = http::header(&resp.headers, "content-length").is_some()
        || http::header(&resp.headers, "transfer-encoding").is_some();
    let mut head = Vec::with_capacity(512);
    let reason = resp.reason.clone().unwrap_or_else(|| http::reason(resp.status).to_string());
    head.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", resp.status, reason).as_bytes());
    for (k, v) in &resp.headers {
        head.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if !user_framing && !no_body_status {
        match resp.framing {
            Framing::Length => head.extend_from_slice(format!("content-length: {}\r\n", resp.body.len()).as_bytes()),
            Framing::Chunked(_) => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            Framing::Close => {}
        }
    }
    if close && http::header(&resp.headers, "connection").is_none() {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    w.write_all(&head)?;
    let send_body = req.method != "HEAD" && !no_body_status;
    if send_body {
        match resp.framing {
            Framing::Chunked(size) if resp.chunk_delay.is_zero() => {
                http::write_chunked(w, &resp.body, size, &resp.trailers)?
            }
            Framing::Chunked(size) => {
                for piece in resp.body.chunks(size.max(1)) {
                    write!(w, "{:x}\r\n", piece.len())?;
                    w.write_all(piece)?;
                    w.write_all(b"\r\n")?;
                    w.flush()?;
                    std::thread::sleep(resp.chunk_delay);
                }
                http::write_chunked(w, &[], 1, &resp.trailers)?;
            }
            _ if resp.chunk_delay.is_zero() => w.write_all(&resp.body)?,
            _ => {
                for piece in resp.body.chunks(16 * 1024) {
                    w.write_all(piece)?;
                    w.flush()?;
                    std::thread::sleep(resp.chunk_delay);
                }
            }
        }
    }
    w.flush()?;
    Ok(!close)
}

/// The origin behind the SDK suites' shared server: `/echo...` echoes, `/accepted` answers 202,
/// everything else `hello from origin` with the headers the response-phase header cases act on.
pub fn sdk_cases_origin() -> Origin {
    Origin::with_handler(|req| {
        if req.path_only().starts_with("/echo") {
            return Response::echo(req);
        }
        let status = if req.path_only() == "/accepted" { 202 } else { 200 };
        Response::text(status, "hello from origin")
            .header("x-pw-resp-remove", "should go")
            .header("x-pw-resp-replace", "original")
            .header("x-pw-drop-resp", "should go")
            .header("x-pw-resp-keep", "kept")
    })
}

/// A gate an origin's handler waits behind until the test opens it (or 30 s pass), so that "the
/// call is still pending" is a fact of the test, not a timing guess.
#[derive(Default)]
pub struct Gate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    pub fn wait(&self) {
        let open = self.open.lock().unwrap();
        let _ = self.opened.wait_timeout_while(open, std::time::Duration::from_secs(30), |open| !*open).unwrap();
    }

    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}
