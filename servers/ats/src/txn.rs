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

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::raw::{c_char, c_void};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::hdr::Hdr;
use super::server::log;
use super::sys::*;
use super::transform::Transform;
use super::AtsGeneration;
use proxy_wasm_host::abi::pairs::Pair;
use proxy_wasm_host::abi::{LogLevel, MapType, Status, StreamType};
use proxy_wasm_host::chain::{Chain, ChainServer, Flow, Phase, Signals};
use proxy_wasm_host::host::{HttpStream, LocalResponse};

/// What the stream contexts, the transforms and the chain's server side of
/// one transaction share.
pub struct TxnShared {
    pub txnp: TSHttpTxn,
    /// Which response header plugins see: none yet, the origin's (from
    /// READ_RESPONSE_HDR) or the one sent to the client (from SEND_RESPONSE_HDR).
    pub response_source: AtomicU8,
    /// The transaction's continuation: its hooks, the chain's wake-ups and
    /// pause timer. Set once, before any plugin runs.
    pub contp: AtomicPtr<c_void>,
    /// What the plugins ask of the chain (resumes, local response, close).
    pub signals: Signals,
    /// The chain's pause timer (a `TSAction`), null when none is pending.
    /// Only touched under the continuation's mutex (its event nulls it first).
    pause_timer: AtomicPtr<c_void>,
    /// Wake-ups scheduled on the continuation and not delivered yet: the
    /// continuation outlives TXN_CLOSE until they all arrived.
    wakes: AtomicUsize,
    /// The response the chain answered with (a plugin's, or the chain's own
    /// 503/413/504): `response.code_details`, and its headers at SEND_RESPONSE_HDR.
    pub local: Mutex<Option<LocalResponse>>,
    /// The transaction closed while a plugin still holds its context.
    pub detached: AtomicBool,
    /// The chain cut the response before Traffic Server sent its header (the
    /// response transform's output is aborted once SEND_RESPONSE_HDR went on:
    /// Traffic Server crashes on a transform output aborted before it set up
    /// the response's delivery).
    pub abort_response: AtomicBool,
    /// The body transforms (request, response), null until added and once
    /// Traffic Server closed them. Only touched under the transaction's mutex.
    pub transforms: [AtomicPtr<Transform>; 2],
    /// The request transform has the body and the request has not gone upstream yet: the
    /// request headers plugins read and change are the server request's (Traffic Server
    /// sends it once the transform gives the body's length), so changes made at the end
    /// of the body (an entity's TransformRequest) reach the origin. Set by the request
    /// transform, cleared at SEND_REQUEST_HDR or when the request is answered instead.
    pub request_to_server: AtomicBool,
    /// The response transform holds its output (an entity's TransformResponse waits for the
    /// end of the body), and with it the client's response header, which Traffic Server
    /// builds from the transform's response header once the output opens: until then the
    /// response headers plugins read and change are that header.
    pub response_to_transform: AtomicBool,
}

// SAFETY: `txnp` and the continuation are only passed to Traffic Server API
// functions, which may be called from any thread while the transaction is
// alive; every holder that may outlive it (a stream context waiting for
// `proxy_done`) is detached at TXN_CLOSE and no longer uses them. The
// transform pointers are only dereferenced under the transaction's mutex.
unsafe impl Send for TxnShared {}
// SAFETY: as above; the mutable parts are atomics, mutexes and `Signals`.
unsafe impl Sync for TxnShared {}

thread_local! {
    /// Wake-ups asked for by plugin callbacks running on this thread, to be
    /// scheduled once the VM mutex is released (see `super::VmsGuard`).
    static DEFERRED_WAKEUPS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    /// How many VM mutexes this thread holds (nested: 0 or 1 in practice).
    static VMS_HELD: Cell<usize> = const { Cell::new(0) };
}

/// This thread took a VM mutex (`super::AtsVms::lock`).
pub(super) fn vms_locked() {
    VMS_HELD.with(|n| n.set(n.get() + 1));
}

/// This thread released a VM mutex: the wake-ups deferred meanwhile are
/// scheduled once it holds none.
pub(super) fn vms_released() {
    let left = VMS_HELD.with(|n| {
        let left = n.get().saturating_sub(1);
        n.set(left);
        left
    });
    if left == 0 {
        schedule_deferred_wakeups();
    }
}

/// Schedules `contp` once this thread holds no VM mutex (every plugin
/// callback runs under one): scheduling takes `contp`'s mutex, which must
/// never be waited for while holding a VM mutex.
fn defer_wakeup(contp: TSCont) {
    DEFERRED_WAKEUPS.with(|w| w.borrow_mut().push(contp as usize));
    if VMS_HELD.with(Cell::get) == 0 {
        schedule_deferred_wakeups();
    }
}

/// Schedules the wake-ups deferred by `defer_wakeup` (with no VM mutex held).
fn schedule_deferred_wakeups() {
    let wakeups = DEFERRED_WAKEUPS.with(|w| std::mem::take(&mut *w.borrow_mut()));
    for contp in wakeups {
        // SAFETY: each continuation was alive when its wake-up was asked for
        // and counted in its `TxnShared::wakes`, which keeps it alive until
        // the wake-up is delivered (see `super::free_transaction`).
        unsafe { TSContScheduleOnPool(contp as TSCont, 0, TS_THREAD_POOL_NET) };
    }
}

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
        self.0.pause_timer.store(action as *mut c_void, Ordering::Release);
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
        self.0.wakes.fetch_add(1, Ordering::AcqRel);
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

impl TxnShared {
    /// A wake-up of the continuation is on its way (scheduled by another thread later): the
    /// continuation outlives TXN_CLOSE until it arrives.
    pub(super) fn expect_wake(&self) {
        self.wakes.fetch_add(1, Ordering::AcqRel);
    }

    /// A wake-up counted by `expect_wake` will not come after all.
    pub(super) fn unexpect_wake(&self) {
        self.wakes.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn new(txnp: TSHttpTxn) -> TxnShared {
        TxnShared {
            txnp,
            response_source: AtomicU8::new(RESPONSE_NONE),
            contp: AtomicPtr::new(std::ptr::null_mut()),
            signals: Signals::new(),
            pause_timer: AtomicPtr::new(std::ptr::null_mut()),
            wakes: AtomicUsize::new(0),
            local: Mutex::new(None),
            detached: AtomicBool::new(false),
            abort_response: AtomicBool::new(false),
            transforms: [AtomicPtr::new(std::ptr::null_mut()), AtomicPtr::new(std::ptr::null_mut())],
            request_to_server: AtomicBool::new(false),
            response_to_transform: AtomicBool::new(false),
        }
    }

    /// Cancels the pause timer if one is pending. Called under the
    /// continuation's mutex, under which the timer's own event nulls the
    /// handle first: a handle that is not null is a timer that has not fired.
    fn cancel_pause_timer(&self) {
        let action = self.pause_timer.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !action.is_null() {
            // SAFETY: a pending action (see above).
            unsafe { TSActionCancel(action as TSAction) };
        }
    }

    fn client_request(&self) -> Option<Hdr> {
        let (mut buf, mut loc): (TSMBuffer, TSMLoc) = (std::ptr::null_mut(), TS_NULL_MLOC);
        // SAFETY: live transaction (see the Send impl).
        let r = unsafe { TSHttpTxnClientReqGet(self.txnp, &mut buf, &mut loc) };
        (r == TS_SUCCESS).then_some(Hdr { buf, loc, is_request: true })
    }

    /// The request Traffic Server will send upstream (it exists once the origin connection
    /// is set up, before the request transform gets the body).
    fn server_request(&self) -> Option<Hdr> {
        let (mut buf, mut loc): (TSMBuffer, TSMLoc) = (std::ptr::null_mut(), TS_NULL_MLOC);
        // SAFETY: live transaction (see the Send impl).
        let r = unsafe { TSHttpTxnServerReqGet(self.txnp, &mut buf, &mut loc) };
        (r == TS_SUCCESS).then_some(Hdr { buf, loc, is_request: true })
    }

    fn client_response(&self) -> Option<Hdr> {
        let (mut buf, mut loc): (TSMBuffer, TSMLoc) = (std::ptr::null_mut(), TS_NULL_MLOC);
        let r = match self.response_source.load(Ordering::Acquire) {
            // SAFETY: live transaction, past READ_RESPONSE_HDR.
            RESPONSE_FROM_ORIGIN => unsafe { TSHttpTxnServerRespGet(self.txnp, &mut buf, &mut loc) },
            // SAFETY: live transaction, at SEND_RESPONSE_HDR or later.
            RESPONSE_TO_CLIENT => unsafe { TSHttpTxnClientRespGet(self.txnp, &mut buf, &mut loc) },
            _ => return None,
        };
        (r == TS_SUCCESS).then_some(Hdr { buf, loc, is_request: false })
    }

    /// The response header of the response transform (the client's response is made from it).
    fn transform_response(&self) -> Option<Hdr> {
        let (mut buf, mut loc): (TSMBuffer, TSMLoc) = (std::ptr::null_mut(), TS_NULL_MLOC);
        // SAFETY: live transaction (see the Send impl).
        let r = unsafe { TSHttpTxnTransformRespGet(self.txnp, &mut buf, &mut loc) };
        (r == TS_SUCCESS).then_some(Hdr { buf, loc, is_request: false })
    }

    /// An origin response header exists (the response came via the upstream).
    fn server_response_received(&self) -> bool {
        let (mut buf, mut loc): (TSMBuffer, TSMLoc) = (std::ptr::null_mut(), TS_NULL_MLOC);
        // SAFETY: live transaction.
        if unsafe { TSHttpTxnServerRespGet(self.txnp, &mut buf, &mut loc) } != TS_SUCCESS {
            return false;
        }
        let h = Hdr { buf, loc, is_request: false };
        let status = h.status();
        Self::release(&h);
        status != 0
    }

    fn hdr(&self, map: MapType) -> Result<Option<Hdr>, Status> {
        if self.detached.load(Ordering::Acquire) {
            return Ok(None);
        }
        match map {
            MapType::HttpRequestHeaders if self.request_to_server.load(Ordering::Acquire) => {
                Ok(self.server_request().or_else(|| self.client_request()))
            }
            MapType::HttpRequestHeaders => Ok(self.client_request()),
            MapType::HttpResponseHeaders if self.response_to_transform.load(Ordering::Acquire) => {
                Ok(self.transform_response().or_else(|| self.client_response()))
            }
            MapType::HttpResponseHeaders => Ok(self.client_response()),
            // Traffic Server 9.2 gives plugins no access to HTTP trailers.
            MapType::HttpRequestTrailers | MapType::HttpResponseTrailers => Ok(None),
            _ => Err(Status::BadArgument),
        }
    }

    fn release(hdr: &Hdr) {
        // SAFETY: the header location was obtained from this buffer; releasing
        // a top-level header handle with TS_NULL_MLOC as parent is the API's rule.
        unsafe { TSHandleMLocRelease(hdr.buf, TS_NULL_MLOC, hdr.loc) };
    }

    pub(super) fn with_hdr<R>(
        &self,
        map: MapType,
        f: impl FnOnce(&Hdr) -> Result<R, Status>,
    ) -> Result<Option<R>, Status> {
        match self.hdr(map)? {
            Some(h) => {
                let r = f(&h);
                Self::release(&h);
                r.map(Some)
            }
            None => Ok(None),
        }
    }

    pub(super) fn addr(sa: *const libc::sockaddr) -> Option<SocketAddr> {
        if sa.is_null() {
            return None;
        }
        // SAFETY: Traffic Server returns a valid sockaddr of the family it names.
        unsafe {
            match (*sa).sa_family as i32 {
                libc::AF_INET => {
                    let a = &*(sa as *const libc::sockaddr_in);
                    Some(SocketAddr::from((u32::from_be(a.sin_addr.s_addr).to_be_bytes(), u16::from_be(a.sin_port))))
                }
                libc::AF_INET6 => {
                    let a = &*(sa as *const libc::sockaddr_in6);
                    Some(SocketAddr::from((a.sin6_addr.s6_addr, u16::from_be(a.sin6_port))))
                }
                _ => None,
            }
        }
    }
}

pub const RESPONSE_NONE: u8 = 0;
pub const RESPONSE_FROM_ORIGIN: u8 = 1;
pub const RESPONSE_TO_CLIENT: u8 = 2;

/// How the client frames its request body, as received (before any plugin
/// touched the headers): Content-Length and Transfer-Encoding.
#[derive(Clone, Default)]
pub struct Framing {
    pub content_length: Option<Vec<u8>>,
    pub transfer_encoding: Option<Vec<u8>>,
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

impl Framing {
    fn read(h: &Hdr) -> Framing {
        Framing { content_length: h.value(b"content-length"), transfer_encoding: h.value(b"transfer-encoding") }
    }

    /// Neither Content-Length nor Transfer-Encoding: nothing to restore.
    fn is_empty(&self) -> bool {
        self.content_length.is_none() && self.transfer_encoding.is_none()
    }

    /// Puts Transfer-Encoding / Content-Length back on `h` as they were
    /// received, if a plugin changed them.
    fn restore(&self, h: &Hdr) -> Result<(), Status> {
        if let Some(te) = &self.transfer_encoding {
            if h.value(b"transfer-encoding").as_ref() != Some(te) {
                h.replace(b"transfer-encoding", te)?;
            }
        } else if let Some(cl) = &self.content_length {
            if h.value(b"content-length").as_ref() != Some(cl) {
                h.replace(b"content-length", cl)?;
            }
        }
        Ok(())
    }

    pub fn chunked(&self) -> bool {
        self.transfer_encoding.as_ref().is_some_and(|v| v.to_ascii_lowercase().windows(7).any(|w| w == b"chunked"))
    }

    /// No body follows the request headers.
    pub fn no_body(&self) -> bool {
        let length = self
            .content_length
            .as_ref()
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        !self.chunked() && length == 0
    }
}

/// The stream context's view of the transaction: header maps and
/// properties. Resumes, local responses and closes go to the chain (its
/// `ChainStream` wraps this one and never passes them on).
pub struct AtsStream {
    pub shared: Arc<TxnShared>,
}

impl HttpStream for AtsStream {
    fn header_map(&self, map: MapType) -> Result<Vec<Pair>, Status> {
        Ok(self.shared.with_hdr(map, |h| Ok(h.pairs()))?.unwrap_or_default())
    }

    fn header_value(&self, map: MapType, key: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        let key = key.to_ascii_lowercase();
        Ok(self.shared.with_hdr(map, |h| Ok(h.value(&key)))?.flatten())
    }

    fn set_header_map(&mut self, map: MapType, pairs: Vec<Pair>) -> Result<(), Status> {
        self.shared.with_hdr(map, |h| h.set_all(&pairs))?.ok_or(Status::BadArgument)
    }

    fn add_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        self.shared.with_hdr(map, |h| h.add(key, value))?.ok_or(Status::BadArgument)
    }

    fn replace_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        self.shared.with_hdr(map, |h| h.replace(key, value))?.ok_or(Status::BadArgument)
    }

    fn remove_header(&mut self, map: MapType, key: &[u8]) -> Result<(), Status> {
        self.shared.with_hdr(map, |h| h.remove(key))?.ok_or(Status::BadArgument)
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
    /// The origin response's, as received (set at READ_RESPONSE_HDR).
    response_framing: Option<Framing>,
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

/// Does what `next` says (with no borrow of the transaction left: see [`Next`]).
///
/// # Safety
/// Called under the transaction's mutex, from one of its hooks or events,
/// while the transaction is live.
pub unsafe fn apply(shared: &TxnShared, next: Next) {
    match next {
        Next::Hold => {}
        Next::Reenable { error } => reenable(shared.txnp, error),
        Next::Body(direction, flow) => {
            let t = shared.transforms[usize::from(direction == StreamType::HttpResponse)].load(Ordering::Acquire);
            if !t.is_null() {
                // SAFETY: a transform listed here is open (it unlists itself
                // when Traffic Server closes it, under the same mutex).
                unsafe { super::transform::deliver(t, flow) };
            }
        }
    }
}

impl Txn {
    /// The request headers go through the chain before remapping (see `before_remap`), at once
    /// (from the global hook or TSRemapDoRemap), with the pair count `start` read.
    pub fn new(shared: Arc<TxnShared>, chain: AtsTxnChain, start: RequestStart) -> Txn {
        Txn {
            shared,
            chain: Some(chain),
            framing: start.framing,
            request_pairs: Some(start.pairs),
            head: start.head,
            response_framing: None,
            response_started: false,
            answered_request: false,
            answered_request_body: false,
            local_replaces_response: false,
            closed: false,
            before_remap: true,
            headers_waiting: false,
        }
    }

    /// Counts a wake-up in. Returns whether the transaction closed (the
    /// wake-up has nothing to do) and whether it was the last one on its way
    /// (the continuation can go).
    pub fn take_wake(&mut self) -> (bool, bool) {
        let before = self
            .shared
            .wakes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)))
            .unwrap_or(0);
        (self.closed, before <= 1)
    }

    /// Whether a wake-up is still on its way to the continuation.
    pub fn wakes_pending(&self) -> bool {
        self.shared.wakes.load(Ordering::Acquire) > 0
    }

    fn remember(&self, response: &LocalResponse) {
        *self.shared.local.lock().unwrap_or_else(|p| p.into_inner()) = Some(response.clone());
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
                set_error_response(self.shared.txnp, &response);
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
                // until POST_REMAP), only the error reenable answers it (a
                // status set there is not looked at: the request would go on
                // to the origin), and the connection is closed.
                Next::Reenable { error: !self.before_remap }
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
        if self.framing.is_empty() {
            // Nothing a plugin could have removed: no header fetch.
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
        if let Some(framing) = self.response_framing.as_ref().filter(|f| !f.is_empty()) {
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
        // One header fetch for the origin's framing, the count and the end of stream.
        let from_origin = source == RESPONSE_FROM_ORIGIN;
        let (count, eos, framing) = self
            .shared
            .client_response()
            .map(|h| {
                let n = h.pair_count();
                let status = h.status();
                let content_length = h.value(b"content-length");
                let empty = content_length.as_deref().is_some_and(|v| v.trim_ascii() == b"0");
                let framing =
                    from_origin.then(|| Framing { content_length, transfer_encoding: h.value(b"transfer-encoding") });
                TxnShared::release(&h);
                (n, self.head || empty || status == 204 || status == 304 || (100..200).contains(&status), framing)
            })
            .unwrap_or((0, true, from_origin.then(Framing::default)));
        if from_origin {
            self.response_framing = framing;
        }
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
        self.shared.pause_timer.store(std::ptr::null_mut(), Ordering::Release);
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
