//! One Traffic Server transaction as the plugins see it: its filter chain
//! (`proxy_wasm_host::chain`), driven from the transaction's hooks (request headers at
//! READ_REQUEST_HDR or POST_REMAP, response headers at READ_RESPONSE_HDR or
//! SEND_RESPONSE_HDR), from the body transforms (`super::transform`), and
//! from its continuation's own events (a plugin's resume from another event,
//! the pause timer); on_done/on_log/on_delete at TXN_CLOSE.
//!
//! Every chain call runs under the transaction continuation's mutex, which
//! is the transaction's own (`start_transaction` creates the continuation
//! with it): the hooks, the transforms and the wake-ups never drive the
//! chain at once, and a wake-up can hand body bytes to a transform directly.

use std::os::raw::c_char;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::hdr::{Framing, Hdr};
use super::server::log;
use super::shared::{defer_wakeup, TxnShared, RESPONSE_FROM_ORIGIN, RESPONSE_NONE, RESPONSE_TO_CLIENT};
use super::sys::*;
use super::AtsGeneration;
use proxy_wasm_host::abi::pairs::Pair;
use proxy_wasm_host::abi::{LogLevel, MapType, Status, StreamType};
use proxy_wasm_host::chain::{Chain, ChainServer, Flow, Phase, Signals};
use proxy_wasm_host::host::{HttpStream, LocalResponse};

/// The chain's server side: the transaction's shared state.
#[derive(Clone)]
pub struct AtsChain(pub Arc<TxnShared>);

impl ChainServer for AtsChain {
    fn signals(&self) -> &Signals {
        &self.0.signals
    }

    /// Scheduled on the transaction's continuation (its EVENT_TIMEOUT runs
    /// `Chain::on_pause_timeout`). Without it a plugin that never continues
    /// would keep the transaction (and its connection) for ever: Traffic
    /// Server does not end a transaction whose hook is held.
    fn arm_pause_timer(&mut self, timeout: Duration) {
        self.cancel_pause_timer();
        let contp = self.0.contp.load(Ordering::Acquire);
        if contp.is_null() {
            return;
        }
        // SAFETY: the continuation lives until TXN_CLOSE, which cancels a
        // timer still pending; called under its mutex (every chain call is).
        let action = unsafe {
            TSContScheduleOnPool(contp as TSCont, timeout.as_millis().max(1) as TSHRTime, TS_THREAD_POOL_NET)
        };
        self.0.pause_timer_armed(action);
    }

    fn cancel_pause_timer(&mut self) {
        self.0.cancel_pause_timer();
    }

    /// Called from inside a VM call: the wake-up is scheduled once this
    /// thread released the VMs (`defer_wakeup`).
    fn schedule_resume(&self) {
        let contp = self.0.contp.load(Ordering::Acquire);
        if contp.is_null() || self.0.detached.load(Ordering::Acquire) {
            return;
        }
        self.0.expect_wake();
        defer_wakeup(contp as TSCont);
    }

    fn log(&self, plugin: &str, level: LogLevel, message: &str) {
        if !super::server::log_enabled(level) {
            return;
        }
        if plugin.is_empty() {
            log(level, &format!("[proxy_wasm] {message}"));
        } else {
            log(level, &format!("[proxy_wasm] {plugin}: {message}"));
        }
    }

    /// On a task thread (`super::task`).
    fn run_off_loop(&self, job: proxy_wasm_host::chain::OffLoop) -> Result<(), String> {
        super::task::post(&self.0, job)
    }
}

/// What the transaction learns of the client request when it starts, from
/// one header fetch: its framing, its pair count (for `on_request_headers`
/// from the global hook) and whether it is a HEAD (no response body).
pub struct RequestStart {
    pub framing: Framing,
    pub pairs: usize,
    pub head: bool,
}

impl RequestStart {
    pub fn of(shared: &TxnShared) -> RequestStart {
        match shared.client_request() {
            Some(h) => {
                let start = RequestStart { framing: Framing::read(&h), pairs: h.pair_count(), head: h.is_head() };
                TxnShared::release(&h);
                start
            }
            None => RequestStart { framing: Framing::default(), pairs: 0, head: false },
        }
    }
}

/// The stream context's view of the transaction: header maps and
/// properties. Resumes, local responses and closes go to the chain (its
/// `ChainStream` wraps this one and never passes them on).
pub struct AtsStream {
    pub shared: Arc<TxnShared>,
}

impl AtsStream {
    /// Before the first edit of the origin's response header that can change its framing,
    /// keeps that framing as received (`h` is still unedited there), for
    /// `Txn::restore_response_framing`. Read here rather than for every response: most
    /// plugins never touch Content-Length or Transfer-Encoding.
    fn keep_received_framing(&self, map: MapType, h: &Hdr) {
        if map != MapType::HttpResponseHeaders
            || self.shared.response_source.load(Ordering::Acquire) != RESPONSE_FROM_ORIGIN
        {
            return;
        }
        let mut kept = self.shared.response_framing.lock().unwrap_or_else(|p| p.into_inner());
        if kept.is_none() {
            *kept = Some(Framing::read(h));
        }
    }

    /// One field edit (`key`) of `map` by `edit`, the received framing kept first when the edit
    /// can change it.
    fn edit_field(
        &self,
        map: MapType,
        key: &[u8],
        edit: impl FnOnce(&Hdr) -> Result<(), Status>,
    ) -> Result<(), Status> {
        let framing = self.shared.mark_field_edited(map, key);
        self.shared
            .with_hdr(map, |h| {
                if framing {
                    self.keep_received_framing(map, h);
                }
                edit(h)
            })?
            .ok_or(Status::BadArgument)
    }
}

impl HttpStream for AtsStream {
    fn header_map(&self, map: MapType) -> Result<Vec<Pair>, Status> {
        Ok(self.shared.with_hdr(map, |h| Ok(h.pairs()))?.unwrap_or_default())
    }

    // The chain counts a map again after each link that edited it (the next link's
    // `num_headers`): counted in place, without copying every pair.
    fn header_count(&self, map: MapType) -> Result<usize, Status> {
        Ok(self.shared.with_hdr(map, |h| Ok(h.pair_count()))?.unwrap_or(0))
    }

    fn header_value(&self, map: MapType, key: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        // Traffic Server finds fields by name without case; only a pseudo-header's
        // name is compared as given, so a copy is made for an upper-case name only.
        let lower;
        let key = if key.iter().any(u8::is_ascii_uppercase) {
            lower = key.to_ascii_lowercase();
            &lower[..]
        } else {
            key
        };
        Ok(self.shared.with_hdr(map, |h| Ok(h.value(key)))?.flatten())
    }

    fn set_header_map(&mut self, map: MapType, pairs: Vec<Pair>) -> Result<(), Status> {
        self.shared.mark_edited(map);
        self.shared
            .with_hdr(map, |h| {
                self.keep_received_framing(map, h);
                h.set_all(&pairs)
            })?
            .ok_or(Status::BadArgument)
    }

    fn add_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        self.edit_field(map, key, |h| h.add(key, value))
    }

    fn replace_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        self.edit_field(map, key, |h| h.replace(key, value))
    }

    fn remove_header(&mut self, map: MapType, key: &[u8]) -> Result<(), Status> {
        self.edit_field(map, key, |h| h.remove(key))
    }

    /// Taken by the chain (`proxy_wasm_host::chain::stream::ChainStream`).
    fn send_local_response(&mut self, _response: LocalResponse) -> Result<(), Status> {
        Err(Status::InternalFailure)
    }

    /// Taken by the chain.
    fn resume(&mut self, _stream: StreamType) -> Result<(), Status> {
        Err(Status::InternalFailure)
    }

    /// Taken by the chain.
    fn close(&mut self, _stream: StreamType) -> Result<(), Status> {
        Err(Status::InternalFailure)
    }

    fn detach(&mut self) {
        self.shared.detached.store(true, Ordering::Release);
    }

    fn property(&self, path: &[&[u8]]) -> Result<Option<Vec<u8>>, Status> {
        let s = &self.shared;
        if s.detached.load(Ordering::Acquire) {
            return Ok(None);
        }
        let req = |f: &dyn Fn(&Hdr) -> Option<Vec<u8>>| {
            s.with_hdr(MapType::HttpRequestHeaders, |h| Ok(f(h))).map(Option::flatten)
        };
        let int = |v: u64| Some(v.to_le_bytes().to_vec());
        // SAFETY: live transaction.
        let client = || TxnShared::addr(unsafe { TSHttpTxnClientAddrGet(s.txnp) } as *const libc::sockaddr);
        // SAFETY: live transaction.
        let incoming = || TxnShared::addr(unsafe { TSHttpTxnIncomingAddrGet(s.txnp) } as *const libc::sockaddr);
        let upstream = || {
            // SAFETY: live transaction; null before Traffic Server picked a server.
            TxnShared::addr(unsafe { TSHttpTxnServerAddrGet(s.txnp) } as *const libc::sockaddr)
                .filter(|a| a.port() != 0)
        };
        let milestone = |m: TSMilestonesType| {
            let mut t: TSHRTime = 0;
            // SAFETY: live transaction; `t` is written on success.
            (unsafe { TSHttpTxnMilestoneGet(s.txnp, m, &mut t) } == TS_SUCCESS && t > 0).then_some(t)
        };
        Ok(match path {
            [b"request", b"path"] => req(&|h| h.value(b":path"))?,
            [b"request", b"url_path"] => {
                req(&|h| h.value(b":path").map(|p| p.split(|b| *b == b'?').next().unwrap_or(&[]).to_vec()))?
            }
            [b"request", b"query"] => {
                req(&|h| h.value(b":path").map(|p| p.splitn(2, |b| *b == b'?').nth(1).unwrap_or(&[]).to_vec()))?
            }
            [b"request", b"host"] => req(&|h| h.value(b":authority"))?,
            [b"request", b"scheme"] => req(&|h| h.value(b":scheme"))?,
            [b"request", b"method"] => req(&|h| h.value(b":method"))?,
            [b"request", b"referer"] => req(&|h| h.value(b"referer"))?,
            [b"request", b"useragent"] => req(&|h| h.value(b"user-agent"))?,
            [b"request", b"id"] => req(&|h| h.value(b"x-request-id"))?,
            [b"request", b"protocol"] => s.client_request().map(|h| {
                // SAFETY: a header handle just obtained from the live transaction.
                let v = unsafe { TSHttpHdrVersionGet(h.buf, h.loc) };
                TxnShared::release(&h);
                format!("HTTP/{}.{}", (v >> 16) & 0xffff, v & 0xffff).into_bytes()
            }),
            // Envoy: timestamps and durations are 8-byte nanoseconds.
            [b"request", b"time"] => milestone(TS_MILESTONE_UA_BEGIN).and_then(|t| int(t as u64)),
            [b"request", b"duration"] => {
                milestone(TS_MILESTONE_UA_BEGIN).and_then(|t| int(now_ns().saturating_sub(t) as u64))
            }
            // Envoy: the Content-Length if the request has one, else the body bytes received.
            [b"request", b"size"] => match req(&|h| h.value(b"content-length"))?
                .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<u64>().ok())
            {
                Some(n) => int(n),
                // SAFETY: live transaction.
                None => int(unsafe { TSHttpTxnClientReqBodyBytesGet(s.txnp) }.max(0) as u64),
            },
            [b"request", b"total_size"] => {
                // SAFETY: live transaction.
                int(unsafe { TSHttpTxnClientReqHdrBytesGet(s.txnp) as i64 + TSHttpTxnClientReqBodyBytesGet(s.txnp) }
                    .max(0) as u64)
            }
            // SAFETY: live transaction.
            [b"response", b"size"] => int(unsafe { TSHttpTxnClientRespBodyBytesGet(s.txnp) }.max(0) as u64),
            [b"response", b"total_size"] => {
                // SAFETY: live transaction.
                int(unsafe { TSHttpTxnClientRespHdrBytesGet(s.txnp) as i64 + TSHttpTxnClientRespBodyBytesGet(s.txnp) }
                    .max(0) as u64)
            }
            [b"response", b"code_details"] => match s.local.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                Some(r) => Some(r.details.clone().into_bytes()),
                None => s.server_response_received().then(|| b"via_upstream".to_vec()),
            },
            [b"upstream", b"address"] => upstream().map(|a| a.to_string().into_bytes()),
            [b"upstream", b"port"] => upstream().and_then(|a| int(a.port() as u64)),
            // Plain HTTP only: no TLS on the client connection.
            [b"connection", b"mtls"] => Some(vec![0]),
            [b"request", b"headers", name] => req(&|h| h.value(&name.to_ascii_lowercase()))?,
            [b"response", b"code"] => {
                s.with_hdr(MapType::HttpResponseHeaders, |h| Ok(int(h.status() as u64)))?.flatten()
            }
            [b"response", b"headers", name] => {
                s.with_hdr(MapType::HttpResponseHeaders, |h| Ok(h.value(&name.to_ascii_lowercase())))?.flatten()
            }
            [b"source", b"address"] => client().map(|a| a.to_string().into_bytes()),
            [b"source", b"port"] => client().and_then(|a| int(a.port() as u64)),
            [b"destination", b"address"] => incoming().map(|a| a.to_string().into_bytes()),
            [b"destination", b"port"] => incoming().and_then(|a| int(a.port() as u64)),
            // SAFETY: live transaction.
            [b"connection", b"id"] => int(unsafe { TSHttpSsnIdGet(TSHttpTxnSsnGet(s.txnp)) } as u64),
            _ => None,
        })
    }
}

/// The chain of one transaction, on the generation of VMs it started on.
pub type AtsTxnChain = Chain<AtsChain, Arc<AtsGeneration>>;

/// What a hook or an event of the transaction does once it let go of the
/// transaction's state: reenabling may run the next hook at once (even ours),
/// and a transform's work may drive the chain again.
pub enum Next {
    /// Nothing: the chain waits (the hook stays held), or there was nothing to do.
    Hold,
    /// Reenable the transaction; `error`: Traffic Server's error response
    /// (the one `set_error_response` prepared, or its own).
    Reenable { error: bool },
    /// Body bytes (or an answer) for the transform of this direction.
    Body(StreamType, Flow),
}

/// The transaction, owned by its continuation.
pub struct Txn {
    pub shared: Arc<TxnShared>,
    /// `None` once the transaction closed.
    pub chain: Option<AtsTxnChain>,
    /// The client request's Content-Length and Transfer-Encoding as received.
    pub framing: Framing,
    /// The response headers went to the chain (at READ_RESPONSE_HDR or SEND_RESPONSE_HDR).
    response_started: bool,
    /// The chain answered during the request (headers or body): Traffic
    /// Server makes that response; its status and headers are set on it at
    /// SEND_RESPONSE_HDR (Traffic Server turns a 2xx error response into 500).
    answered_request: bool,
    /// The chain answered from the request body: the request is not sent
    /// on; SEND_REQUEST_HDR answers instead.
    answered_request_body: bool,
    /// The chain answered from the response headers of an origin response,
    /// replaced through Traffic Server's error response: its status and
    /// headers are set again at SEND_RESPONSE_HDR.
    local_replaces_response: bool,
    /// TXN_CLOSE came; the continuation waits for its last wake-up.
    closed: bool,
    /// The request headers go through the chain before remapping (a global
    /// plugin's READ_REQUEST_HDR, a remap rule's TSRemapDoRemap): a local
    /// response is then answered by EndRemapRequest; see
    /// [`Txn::request_headers_flow`]. False once a remap rule's chain waits
    /// at POST_REMAP.
    before_remap: bool,
    /// The chain waits in the request headers (a pause not resumed yet).
    headers_waiting: bool,
    /// The client request's pair count read when the transaction started,
    /// for the request headers run at once (taken then).
    request_pairs: Option<usize>,
    /// The request is a HEAD: its response has no body (`end_of_stream` on
    /// the response headers; no response transform was added).
    head: bool,
    /// SEND_RESPONSE_HDR is hooked: from the start when the chain goes through
    /// the response (see `start_transaction`), else once the chain answers.
    response_hooked: bool,
}

pub(super) fn reenable(txnp: TSHttpTxn, error: bool) {
    let event = if error { TS_EVENT_HTTP_ERROR } else { TS_EVENT_HTTP_CONTINUE };
    // SAFETY: live transaction, reenabled exactly once per hook.
    unsafe { TSHttpTxnReenable(txnp, event) };
}

/// Makes Traffic Server answer with `status` and `body` instead of going on.
fn set_error_response(txnp: TSHttpTxn, response: &LocalResponse) {
    let content_type =
        response.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(b"content-type")).map(|(_, v)| v.as_slice());
    let body = &response.body;
    // SAFETY: live transaction; buffers given to TSHttpTxnErrorBodySet must
    // come from TSmalloc, and each is filled completely (the content type
    // NUL-terminated) before Traffic Server takes ownership of it.
    unsafe {
        TSHttpTxnStatusSet(txnp, response.status as TSHttpStatus);
        let path = b"memory/proxy_wasm\0".as_ptr() as *const c_char;
        let buf = _TSmalloc(body.len().max(1), path) as *mut u8;
        if buf.is_null() {
            return;
        }
        std::ptr::copy_nonoverlapping(body.as_ptr(), buf, body.len());
        let ct = content_type.unwrap_or(b"text/plain");
        let mime = _TSmalloc(ct.len() + 1, path) as *mut u8;
        if !mime.is_null() {
            std::ptr::copy_nonoverlapping(ct.as_ptr(), mime, ct.len());
            *mime.add(ct.len()) = 0;
        }
        TSHttpTxnErrorBodySet(txnp, buf as *mut c_char, body.len(), mime as *mut c_char);
    }
}

impl Txn {
    /// The request headers go through the chain before remapping (see `before_remap`), at once
    /// (from the global hook or TSRemapDoRemap), with the pair count `start` read.
    /// `response_hooked`: READ_RESPONSE_HDR and SEND_RESPONSE_HDR are hooked.
    pub fn new(shared: Arc<TxnShared>, chain: AtsTxnChain, start: RequestStart, response_hooked: bool) -> Txn {
        Txn {
            shared,
            chain: Some(chain),
            framing: start.framing,
            request_pairs: Some(start.pairs),
            head: start.head,
            response_started: false,
            answered_request: false,
            answered_request_body: false,
            local_replaces_response: false,
            closed: false,
            before_remap: true,
            headers_waiting: false,
            response_hooked,
        }
    }

    /// Counts a wake-up in. Returns whether the transaction closed (the
    /// wake-up has nothing to do) and whether it was the last one on its way
    /// (the continuation can go).
    pub fn take_wake(&mut self) -> (bool, bool) {
        (self.closed, self.shared.wake_arrived())
    }

    /// Whether a wake-up is still on its way to the continuation.
    pub fn wakes_pending(&self) -> bool {
        self.shared.wakes_pending()
    }

    fn remember(&mut self, response: &LocalResponse) {
        *self.shared.local.lock().unwrap_or_else(|p| p.into_inner()) = Some(response.clone());
        self.hook_send_response();
    }

    /// Hooks SEND_RESPONSE_HDR, where the chain's answer gets its status and
    /// headers (`apply_local_headers`), if the transaction did not from the start
    /// (a chain without response callbacks).
    fn hook_send_response(&mut self) {
        if std::mem::replace(&mut self.response_hooked, true) {
            return;
        }
        let contp = self.shared.contp.load(Ordering::Acquire);
        if !contp.is_null() {
            // SAFETY: live transaction and its continuation (set before any
            // chain call); the hook comes later in the transaction.
            unsafe { TSHttpTxnHookAdd(self.shared.txnp, TS_HTTP_SEND_RESPONSE_HDR_HOOK, contp as TSCont) };
        }
    }

    /// The request headers through the chain (READ_REQUEST_HDR or POST_REMAP).
    pub fn run_request_headers(&mut self) -> Next {
        // The count read at the start is current: the request headers run at
        // once, in the same hook (or TSRemapDoRemap).
        let count = self.request_pairs.take().unwrap_or_else(|| {
            self.shared
                .client_request()
                .map(|h| {
                    let n = h.pair_count();
                    TxnShared::release(&h);
                    n
                })
                .unwrap_or(0)
        });
        let eos = self.framing.no_body();
        let Some(chain) = self.chain.as_mut() else { return Next::Reenable { error: false } };
        let flow = chain.on_request_headers(count, eos);
        self.request_headers_flow(flow)
    }

    /// A remap rule's chain ran its request headers in TSRemapDoRemap; POST_REMAP
    /// holds the transaction while they wait (their resume reenables it), and
    /// lets it go on otherwise.
    pub fn at_post_remap(&mut self) -> Next {
        if self.headers_waiting {
            // Remapping is over: a local response from the resume is an error
            // reenable from here (see `request_headers_flow`).
            self.before_remap = false;
            return Next::Hold;
        }
        Next::Reenable { error: false }
    }

    /// Whether the chain waits in the request headers.
    pub fn headers_waiting(&self) -> bool {
        self.headers_waiting
    }

    fn request_headers_flow(&mut self, flow: Flow) -> Next {
        self.headers_waiting = matches!(flow, Flow::Wait);
        match flow {
            Flow::Continue | Flow::Forward { .. } | Flow::Buffered => {
                self.restore_framing();
                Next::Reenable { error: false }
            }
            Flow::Wait => Next::Hold,
            Flow::Respond(response) => {
                self.remember(&response);
                self.answered_request = true;
                // Keep-alive (issue 13): Traffic Server decides it from the
                // client request only once HandleRequest ran; an error
                // reenable before that (HandleApiErrorJump) finds it unset
                // and closes the client connection. Before remapping (a
                // global plugin's hook, a remap rule's TSRemapDoRemap, where
                // the reenable is not made), the status set is answered by
                // EndRemapRequest instead, through build_error_response, which
                // keeps the connection unless the request has a body (not
                // read: it would be taken for the next request), as NGINX and
                // Envoy do. After remapping (a remap rule's chain that waited
                // until POST_REMAP), a status set is no longer looked at and
                // the error reenable's response never trusts its length
                // (HandleApiErrorJump, build_response: the connection is
                // closed whatever the hook), so the answer comes from a server
                // intercept, as an origin response (`super::intercept`),
                // unless the plugin asked to close the connection.
                if self.before_remap {
                    set_error_response(self.shared.txnp, &response);
                    return Next::Reenable { error: false };
                }
                let closes = response
                    .headers
                    .iter()
                    .any(|(k, v)| k.eq_ignore_ascii_case(b"connection") && v.eq_ignore_ascii_case(b"close"));
                if closes {
                    set_error_response(self.shared.txnp, &response);
                    return Next::Reenable { error: true };
                }
                // SAFETY: live transaction, held at POST_REMAP: its origin is not looked up yet.
                unsafe { super::intercept::answer(self.shared.txnp, &response) };
                Next::Reenable { error: false }
            }
            // A closed stream: Traffic Server answers with its own error.
            Flow::Abort | Flow::Reset => Next::Reenable { error: true },
        }
    }

    /// The bookkeeping of a request body flow, from the request transform or
    /// a wake-up: an answer is given at SEND_REQUEST_HDR (the transform holds
    /// the body until its end, so the request has not been sent).
    pub fn request_body_flow(&mut self, flow: &Flow) {
        if let Flow::Respond(response) = flow {
            self.answer_request_body(response);
        }
    }

    /// Whether the request body ended in an answer (the request is not sent on).
    pub fn answered_request_body(&self) -> bool {
        self.answered_request_body
    }

    /// The request body ends in an answer (a plugin's, or 413, 503, 504).
    pub fn answer_request_body(&mut self, response: &LocalResponse) {
        self.shared.request_to_server.store(false, Ordering::Release);
        self.remember(response);
        self.answered_request = true;
        self.answered_request_body = true;
    }

    /// Traffic Server reads the client's body by the client request's
    /// Content-Length / Transfer-Encoding: a plugin that removed them (because
    /// it changes the body) must not make it unreadable. The origin gets the
    /// edited body with framing Traffic Server computes for the transform.
    fn restore_framing(&self) {
        if self.framing.is_empty() || !self.shared.take_edited(MapType::HttpRequestHeaders) {
            // Nothing a plugin could have removed, or no plugin changed the
            // request headers since: no header fetch.
            return;
        }
        let _ = self.shared.with_hdr(MapType::HttpRequestHeaders, |h| self.framing.restore(h));
    }

    /// The same for the origin's response: Traffic Server reads the origin's
    /// body by the framing of the server response header, so a plugin that
    /// removed Content-Length (because it changes the body) must not turn it
    /// into a body read until the origin closes. The client gets framing
    /// Traffic Server computes for the response transform.
    fn restore_response_framing(&self) {
        if self.shared.response_source.load(Ordering::Acquire) != RESPONSE_FROM_ORIGIN {
            return;
        }
        if !self.shared.take_edited(MapType::HttpResponseHeaders) {
            return;
        }
        // As received, kept before the first edit that could change it (`AtsStream::keep_received_framing`).
        let framing = self.shared.response_framing.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(framing) = framing.filter(|f| !f.is_empty()) {
            let _ = self.shared.with_hdr(MapType::HttpResponseHeaders, |h| framing.restore(h));
        }
    }

    /// SEND_REQUEST_HDR, when the request body goes through the request
    /// transform. The transform holds the whole body before Traffic Server
    /// sends the request on, so an answer from the request body (a plugin's
    /// local response, a failure's 503, 413, a pause past its timeout) is
    /// known here: the request is not sent and the client gets it instead.
    ///
    /// Otherwise, for a chunked body: the transform hands it on chunked again,
    /// but Traffic Server also sets the transform's output length as
    /// Content-Length, which must not go out next to
    /// `Transfer-Encoding: chunked` (RFC 9112 6.3).
    pub fn on_send_request_header(&self) -> Next {
        self.shared.request_to_server.store(false, Ordering::Release);
        if self.answered_request_body {
            if let Some(response) = self.shared.local.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                set_error_response(self.shared.txnp, response);
            }
            return Next::Reenable { error: true };
        }
        let (mut buf, mut loc): (TSMBuffer, TSMLoc) = (std::ptr::null_mut(), TS_NULL_MLOC);
        // SAFETY: live transaction, in its SEND_REQUEST_HDR hook.
        if unsafe { TSHttpTxnServerReqGet(self.shared.txnp, &mut buf, &mut loc) } == TS_SUCCESS {
            let h = Hdr { buf, loc, is_request: true };
            let chunked = Framing { content_length: None, transfer_encoding: h.value(b"transfer-encoding") }.chunked();
            if chunked && h.value(b"content-length").is_some() {
                let _ = h.remove(b"content-length");
            }
            TxnShared::release(&h);
        }
        Next::Reenable { error: false }
    }

    /// The response headers through the chain, last plugin first (the order
    /// Envoy runs encoder filters), over the plugins that saw the request: at
    /// READ_RESPONSE_HDR for origin responses (before any body reaches a
    /// plugin), else at SEND_RESPONSE_HDR (cache hits, responses Traffic
    /// Server or the chain made).
    pub fn run_response_headers(&mut self, source: u8) -> Next {
        self.shared.response_source.store(source, Ordering::Release);
        if std::mem::replace(&mut self.response_started, true) {
            // SEND_RESPONSE_HDR after the chain saw the origin's response.
            if source == RESPONSE_TO_CLIENT && self.local_replaces_response {
                self.apply_local_headers();
            }
            return Next::Reenable { error: false };
        }
        if self.answered_request {
            // The response Traffic Server made from the chain's answer: its
            // status and headers, before the plugins see it.
            self.apply_local_headers();
        }
        // One header fetch for the count and the end of stream. The origin's framing is
        // read only if a plugin is about to change it (`AtsStream::keep_received_framing`).
        let (count, eos) = self
            .shared
            .client_response()
            .map(|h| {
                let n = h.pair_count();
                let status = h.status();
                let empty = h.value(b"content-length").is_some_and(|v| v.trim_ascii() == b"0");
                TxnShared::release(&h);
                (n, self.head || empty || status == 204 || status == 304 || (100..200).contains(&status))
            })
            .unwrap_or((0, true));
        let Some(chain) = self.chain.as_mut() else { return Next::Reenable { error: false } };
        let flow = chain.on_response_headers(count, eos);
        self.response_headers_flow(flow)
    }

    fn response_headers_flow(&mut self, flow: Flow) -> Next {
        match flow {
            Flow::Continue | Flow::Forward { .. } | Flow::Buffered => {
                self.restore_response_framing();
                Next::Reenable { error: false }
            }
            Flow::Wait => Next::Hold,
            Flow::Respond(response) => {
                self.remember(&response);
                if self.shared.response_source.load(Ordering::Acquire) == RESPONSE_FROM_ORIGIN {
                    // The origin's response is replaced as a whole: Traffic
                    // Server sends this status and body instead (headers set
                    // again at SEND_RESPONSE_HDR).
                    set_error_response(self.shared.txnp, &response);
                    self.local_replaces_response = true;
                    Next::Reenable { error: true }
                } else {
                    // A response Traffic Server is already sending (cache
                    // hit, its own): status and headers in place.
                    log(LogLevel::Warn, "[proxy_wasm] a local response sent while Traffic Server was sending its own response replaces its status and headers, not its body");
                    let _ = self.shared.with_hdr(MapType::HttpResponseHeaders, |h| {
                        h.add(b":status", response.status.to_string().as_bytes())?;
                        for (k, v) in &response.headers {
                            h.replace(k, v)?;
                        }
                        Ok(())
                    });
                    Next::Reenable { error: false }
                }
            }
            // A closed stream (or a response the chain had to give up): Traffic
            // Server ends the transaction with an error.
            Flow::Abort | Flow::Reset => Next::Reenable { error: true },
        }
    }

    /// Sets the status and headers of the chain's answer on the response
    /// Traffic Server is about to send (it made that response from the status
    /// and body given, but turns a 2xx into 500).
    fn apply_local_headers(&self) {
        let Some(r) = self.shared.local.lock().unwrap_or_else(|p| p.into_inner()).clone() else { return };
        let _ = self.shared.with_hdr(MapType::HttpResponseHeaders, |h| {
            h.add(b":status", r.status.to_string().as_bytes())?;
            for (k, v) in &r.headers {
                if !k.eq_ignore_ascii_case(b"content-type") && !k.starts_with(b":") {
                    h.add(k, v)?;
                }
            }
            Ok(())
        });
    }

    /// What the chain does next in `phase`, after a wake-up or its pause timer.
    fn dispatch(&mut self, phase: Phase, flow: Flow) -> Next {
        match phase {
            Phase::RequestHeaders => self.request_headers_flow(flow),
            // Traffic Server reads no response body while the response
            // headers hook is held: nothing is queued in the chain meanwhile.
            Phase::ResponseHeaders => self.response_headers_flow(flow),
            Phase::RequestBody => {
                self.request_body_flow(&flow);
                Next::Body(StreamType::HttpRequest, flow)
            }
            Phase::ResponseBody => Next::Body(StreamType::HttpResponse, flow),
        }
    }

    /// EVENT_IMMEDIATE on the continuation: a plugin resumed, answered or
    /// closed the stream from another event (a tick, a queue, an `http_call`
    /// answer) while the chain waited or held a body.
    pub fn on_wakeup(&mut self) -> Next {
        let Some(chain) = self.chain.as_mut() else { return Next::Hold };
        match chain.resume() {
            Some((phase, flow)) => self.dispatch(phase, flow),
            None => Next::Hold,
        }
    }

    /// EVENT_TIMEOUT on the continuation: the pause timer fired (504, or the
    /// response aborted once its headers are out).
    pub fn on_pause_timer(&mut self) -> Next {
        self.shared.pause_timer_fired();
        let Some(chain) = self.chain.as_mut() else { return Next::Hold };
        match chain.on_pause_timeout() {
            Some((phase, flow)) => self.dispatch(phase, flow),
            None => Next::Hold,
        }
    }

    /// on_done, on_log, on_delete for every stream context, at TXN_CLOSE;
    /// the chain (and with it the generation of VMs it held) goes.
    pub fn close(&mut self) {
        self.closed = true;
        self.shared.cancel_pause_timer();
        if !self.response_started {
            // The response hooks were left out (a chain without response
            // callbacks) or never came: what on_log reads of the response is
            // what the client got, if it got one.
            let _ = self.shared.response_source.compare_exchange(
                RESPONSE_NONE,
                RESPONSE_TO_CLIENT,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        if let Some(mut chain) = self.chain.take() {
            if chain.finish() {
                // A plugin's on_done returned false: its proxy_done is awaited,
                // within its pause_timeout.
                super::watch_awaiting_done();
            }
        }
    }
}

/// Nanoseconds since the epoch, on Traffic Server's clock (its milestones use
/// the real-time clock).
fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}
