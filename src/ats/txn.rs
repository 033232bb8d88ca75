//! One Traffic Server transaction as the plugins see it: a stream context per
//! plugin, the request chain run at READ_REQUEST_HDR, the response chain at
//! SEND_RESPONSE_HDR, and on_done/on_log/on_delete at TXN_CLOSE.

use std::net::SocketAddr;
use std::os::raw::c_char;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::hdr::Hdr;
use super::server::log;
use super::sys::*;
use super::VmSlot;
use crate::abi::pairs::Pair;
use crate::abi::{LogLevel, MapType, Status, StreamType};
use crate::config::FailurePolicy;
use crate::host::{HttpStream, LocalResponse};
use crate::vm::{Verdict, VmError};

/// What the stream contexts of one transaction share with the driver.
pub struct TxnShared {
    pub txnp: TSHttpTxn,
    /// Which response header plugins see: none yet, the origin's (from
    /// READ_RESPONSE_HDR) or the one sent to the client (from SEND_RESPONSE_HDR).
    pub response_source: std::sync::atomic::AtomicU8,
    /// A local response was sent during the response phase (applied in place).
    pub local_in_response: AtomicBool,
    /// Whether the request chain waits for a plugin, and the resumes asked for.
    pub pause: Mutex<PauseState>,
    /// The transaction's continuation, woken when a paused plugin resumes.
    pub contp: std::sync::atomic::AtomicPtr<std::os::raw::c_void>,
    /// The local response a plugin sent, applied at SEND_RESPONSE_HDR.
    pub local: Mutex<Option<LocalResponse>>,
    /// The transaction closed while a plugin still holds its context.
    pub detached: AtomicBool,
    /// Body transforms waiting, at the end of a body, for a plugin to resume.
    pub body_waiters: Mutex<Vec<BodyWaiter>>,
    /// The response transform got body data: the response header is
    /// committed, a local response can no longer replace it.
    pub response_body_started: AtomicBool,
    /// A plugin closed the response (`proxy_close_stream`, or its held body
    /// passed `max_body_size` after the header went out): the response
    /// transform aborts the response instead of ending it.
    pub response_closed: AtomicBool,
}

thread_local! {
    /// Wake-ups asked for by plugin callbacks running on this thread, to be
    /// scheduled once the VM mutex is released (see `VmsGuard`).
    static DEFERRED_WAKEUPS: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Schedules `contp` once this thread releases the VM mutex it holds (every
/// plugin callback runs under one): scheduling takes `contp`'s mutex, which
/// must never be waited for while holding a VM mutex.
fn defer_wakeup(contp: TSCont) {
    DEFERRED_WAKEUPS.with(|w| w.borrow_mut().push(contp as usize));
}

/// Schedules the wake-ups deferred by `defer_wakeup` (called when a VM mutex
/// is released, with no lock of ours held).
pub fn schedule_deferred_wakeups() {
    let wakeups = DEFERRED_WAKEUPS.with(|w| std::mem::take(&mut *w.borrow_mut()));
    for contp in wakeups {
        // SAFETY: each continuation was alive when its wake-up was asked for,
        // and stays alive until it is delivered (see the callers of
        // `defer_wakeup`): nothing on this thread could end it in between.
        unsafe { TSContScheduleOnPool(contp as TSCont, 0, TS_THREAD_POOL_NET) };
    }
}

/// A body transform waiting for `proxy_continue_stream` on `stream` after a
/// plugin paused at the end of the body.
pub struct BodyWaiter {
    pub stream: StreamType,
    /// The transform's waker continuation.
    pub contp: TSCont,
    /// The transform's count of wake-ups on their way, raised under the
    /// `body_waiters` lock when one is scheduled (the transform's state lives
    /// until they all arrived).
    pub pending: Arc<std::sync::atomic::AtomicUsize>,
}

// SAFETY: `txnp` is only passed to Traffic Server API functions, which may be
// called from any thread while the transaction is alive; every holder (the
// stream contexts) is dropped at TXN_CLOSE, before Traffic Server frees it.
unsafe impl Send for TxnShared {}
// SAFETY: as above; the mutable parts are atomics and mutexes.
unsafe impl Sync for TxnShared {}

impl TxnShared {
    fn client_request(&self) -> Option<Hdr> {
        let (mut buf, mut loc): (TSMBuffer, TSMLoc) = (std::ptr::null_mut(), TS_NULL_MLOC);
        // SAFETY: live transaction (see the Send impl).
        let r = unsafe { TSHttpTxnClientReqGet(self.txnp, &mut buf, &mut loc) };
        (r == TS_SUCCESS).then_some(Hdr { buf, loc, is_request: true })
    }

    fn client_response(&self) -> Option<Hdr> {
        let (mut buf, mut loc): (TSMBuffer, TSMLoc) = (std::ptr::null_mut(), TS_NULL_MLOC);
        // SAFETY: live transaction.
        let r = match self.response_source.load(Ordering::Acquire) {
            RESPONSE_FROM_ORIGIN => unsafe { TSHttpTxnServerRespGet(self.txnp, &mut buf, &mut loc) },
            RESPONSE_TO_CLIENT => unsafe { TSHttpTxnClientRespGet(self.txnp, &mut buf, &mut loc) },
            _ => return None,
        };
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

    fn response_started(&self) -> bool {
        self.response_source.load(Ordering::Acquire) != RESPONSE_NONE
    }

    /// Resumed (or answered) from another event than the paused callback (a
    /// tick, a queue, a call's answer): wake the transaction's continuation to
    /// go on with the chain.
    fn wake_if_paused(&self) {
        let paused = self.pause.lock().unwrap_or_else(|p| p.into_inner()).paused;
        let contp = self.contp.load(Ordering::Acquire);
        if paused && !contp.is_null() {
            // The continuation lives until TXN_CLOSE, which cannot come while
            // the transaction waits in a hook (a wake-up that finds it resumed
            // meanwhile does nothing), nor before this thread, which runs the
            // plugin callback asking for it, schedules the wake-up.
            defer_wakeup(contp as TSCont);
        }
    }

    /// Wakes the body transform of `stream` if it waits for a resume.
    fn wake_body_waiter(&self, stream: StreamType) {
        let woken = {
            let mut waiters = self.body_waiters.lock().unwrap_or_else(|p| p.into_inner());
            let i = waiters.iter().position(|w| w.stream == stream);
            i.map(|i| waiters.remove(i)).inspect(|w| {
                w.pending.fetch_add(1, Ordering::AcqRel);
            })
        };
        if let Some(w) = woken {
            // The transform frees its waker only when it is out of
            // `body_waiters` and no wake-up is pending; this one was counted
            // under the lock.
            defer_wakeup(w.contp);
        }
    }

    /// Takes a resume of `stream` if a plugin asked for one.
    pub fn take_resume(&self, stream: StreamType) -> bool {
        let mut p = self.pause.lock().unwrap_or_else(|p| p.into_inner());
        let found = p.resumes.contains(&stream);
        p.resumes.retain(|s| *s != stream);
        found
    }

    fn hdr(&self, map: MapType) -> Result<Option<Hdr>, Status> {
        if self.detached.load(Ordering::Acquire) {
            return Ok(None);
        }
        match map {
            MapType::HttpRequestHeaders => Ok(self.client_request()),
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

    fn with_hdr<R>(&self, map: MapType, f: impl FnOnce(&Hdr) -> Result<R, Status>) -> Result<Option<R>, Status> {
        match self.hdr(map)? {
            Some(h) => {
                let r = f(&h);
                Self::release(&h);
                r.map(Some)
            }
            None => Ok(None),
        }
    }

    fn addr(sa: *const libc::sockaddr) -> Option<SocketAddr> {
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

#[derive(Default)]
pub struct PauseState {
    pub paused: bool,
    pub resumes: Vec<StreamType>,
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

impl Framing {
    pub fn of_client_request(shared: &TxnShared) -> Framing {
        Framing::of(shared.client_request())
    }

    fn of(hdr: Option<Hdr>) -> Framing {
        hdr.map(|h| {
            let f = Framing { content_length: h.value(b"content-length"), transfer_encoding: h.value(b"transfer-encoding") };
            TxnShared::release(&h);
            f
        })
        .unwrap_or_default()
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
        let length = self.content_length.as_ref().and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok()).unwrap_or(0);
        !self.chunked() && length == 0
    }
}

/// The stream context's view of the transaction.
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

    fn send_local_response(&mut self, response: LocalResponse) -> Result<(), Status> {
        if self.shared.response_body_started.load(Ordering::Acquire) || self.shared.detached.load(Ordering::Acquire) {
            // The response header went (or is going) out with the body.
            return Err(Status::BadArgument);
        }
        let mut local = self.shared.local.lock().unwrap_or_else(|p| p.into_inner());
        if self.shared.response_started() {
            self.shared.local_in_response.store(true, Ordering::Release);
            // In the response phase the status and headers are rewritten in place.
            self.shared.with_hdr(MapType::HttpResponseHeaders, |h| {
                h.add(b":status", response.status.to_string().as_bytes())?;
                for (k, v) in &response.headers {
                    h.replace(k, v)?;
                }
                Ok(())
            })?;
        }
        let in_request = !self.shared.response_started();
        *local = Some(response);
        drop(local);
        self.shared.wake_if_paused();
        if in_request {
            // A request body held at its end answers now instead of at its pause_timeout.
            self.shared.wake_body_waiter(StreamType::HttpRequest);
        }
        Ok(())
    }

    fn resume(&mut self, stream: StreamType) -> Result<(), Status> {
        self.shared.pause.lock().unwrap_or_else(|p| p.into_inner()).resumes.push(stream);
        self.shared.wake_if_paused();
        self.shared.wake_body_waiter(stream);
        Ok(())
    }

    fn close(&mut self, stream: StreamType) -> Result<(), Status> {
        // Closing ends the transaction with an error; the driver sees
        // Verdict::Stop. A response body being sent is aborted by its transform.
        if stream == StreamType::HttpResponse {
            self.shared.response_closed.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn detach(&mut self) {
        self.shared.detached.store(true, Ordering::Release);
    }

    fn property(&self, path: &[&[u8]]) -> Result<Option<Vec<u8>>, Status> {
        let s = &self.shared;
        if s.detached.load(Ordering::Acquire) {
            return Ok(None);
        }
        let req = |f: &dyn Fn(&Hdr) -> Option<Vec<u8>>| s.with_hdr(MapType::HttpRequestHeaders, |h| Ok(f(h))).map(Option::flatten);
        let int = |v: u64| Some(v.to_le_bytes().to_vec());
        // SAFETY: live transaction.
        let client = || TxnShared::addr(unsafe { TSHttpTxnClientAddrGet(s.txnp) } as *const libc::sockaddr);
        // SAFETY: live transaction.
        let incoming = || TxnShared::addr(unsafe { TSHttpTxnIncomingAddrGet(s.txnp) } as *const libc::sockaddr);
        // SAFETY: live transaction; null before Traffic Server picked a server.
        let upstream = || TxnShared::addr(unsafe { TSHttpTxnServerAddrGet(s.txnp) } as *const libc::sockaddr).filter(|a| a.port() != 0);
        let milestone = |m: TSMilestonesType| {
            let mut t: TSHRTime = 0;
            // SAFETY: live transaction; `t` is written on success.
            (unsafe { TSHttpTxnMilestoneGet(s.txnp, m, &mut t) } == TS_SUCCESS && t > 0).then_some(t)
        };
        Ok(match path {
            [b"request", b"path"] => req(&|h| h.value(b":path"))?,
            [b"request", b"url_path"] => req(&|h| h.value(b":path").map(|p| p.split(|b| *b == b'?').next().unwrap_or(&[]).to_vec()))?,
            [b"request", b"query"] => req(&|h| h.value(b":path").map(|p| p.splitn(2, |b| *b == b'?').nth(1).unwrap_or(&[]).to_vec()))?,
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
            [b"request", b"duration"] => milestone(TS_MILESTONE_UA_BEGIN).and_then(|t| int(now_ns().saturating_sub(t) as u64)),
            // Envoy: the Content-Length if the request has one, else the body bytes received.
            [b"request", b"size"] => match req(&|h| h.value(b"content-length"))?.and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<u64>().ok()) {
                Some(n) => int(n),
                // SAFETY: live transaction.
                None => int(unsafe { TSHttpTxnClientReqBodyBytesGet(s.txnp) }.max(0) as u64),
            },
            // SAFETY: live transaction.
            [b"request", b"total_size"] => int(unsafe { TSHttpTxnClientReqHdrBytesGet(s.txnp) as i64 + TSHttpTxnClientReqBodyBytesGet(s.txnp) }.max(0) as u64),
            // SAFETY: live transaction.
            [b"response", b"size"] => int(unsafe { TSHttpTxnClientRespBodyBytesGet(s.txnp) }.max(0) as u64),
            // SAFETY: live transaction.
            [b"response", b"total_size"] => int(unsafe { TSHttpTxnClientRespHdrBytesGet(s.txnp) as i64 + TSHttpTxnClientRespBodyBytesGet(s.txnp) }.max(0) as u64),
            [b"response", b"code_details"] => match s.local.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                Some(r) => Some(r.details.clone().into_bytes()),
                None => s.server_response_received().then(|| b"via_upstream".to_vec()),
            },
            [b"upstream", b"address"] => upstream().map(|a| a.to_string().into_bytes()),
            [b"upstream", b"port"] => upstream().and_then(|a| int(a.port() as u64)),
            // Plain HTTP only: no TLS on the client connection.
            [b"connection", b"mtls"] => Some(vec![0]),
            [b"request", b"headers", name] => req(&|h| h.value(&name.to_ascii_lowercase()))?,
            [b"response", b"code"] => s.with_hdr(MapType::HttpResponseHeaders, |h| Ok(int(h.status() as u64)))?.flatten(),
            [b"response", b"headers", name] => s.with_hdr(MapType::HttpResponseHeaders, |h| Ok(h.value(&name.to_ascii_lowercase())))?.flatten(),
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

/// One plugin's stream context in this transaction.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub plugin: usize,
    pub vm: usize,
    pub ctx: u32,
}

/// The transaction, owned by its continuation.
pub struct Txn {
    pub shared: Arc<TxnShared>,
    pub slot: Arc<VmSlot>,
    pub chain: Vec<Link>,
    /// How many plugins have run in the current phase.
    pub next: usize,
    /// `on_response_headers` has started (at READ_RESPONSE_HDR or SEND_RESPONSE_HDR).
    pub response_done: bool,
    /// How many plugins, counted from the last, have run `on_response_headers`.
    pub response_next: usize,
    /// The response chain waits for a plugin (`Pause` from `on_response_headers`).
    pub response_paused: bool,
    /// A local response from the response phase replaced the origin's through
    /// Traffic Server's error response: its status and headers are set again
    /// at SEND_RESPONSE_HDR.
    pub local_replaces_response: bool,
    /// The client request's Content-Length and Transfer-Encoding as received.
    pub framing: Framing,
    /// The origin response's, as received (set at READ_RESPONSE_HDR).
    pub response_framing: Option<Framing>,
    /// The timer that ends a pause past the pausing plugin's `pause_timeout`;
    /// null when none is pending. Only touched under the continuation's mutex
    /// (its handlers, and the first run of the request chain from the global
    /// hook, which takes it).
    pub pause_timer: TSAction,
    /// The plugin that paused the request or response chain last.
    pub paused_by: Option<Link>,
}

/// Cancels a timer scheduled with `TSContScheduleOnPool`, if one is pending.
/// The caller holds the timer continuation's mutex, and the timer's own
/// event nulls its handle first (under that mutex): a handle that is not
/// null is a timer that has not fired.
pub(super) fn cancel_timer(timer: &mut TSAction) {
    if !timer.is_null() {
        // SAFETY: a pending action (see above).
        unsafe { TSActionCancel(*timer) };
        *timer = std::ptr::null_mut();
    }
}

fn reenable(txnp: TSHttpTxn, error: bool) {
    let event = if error { TS_EVENT_HTTP_ERROR } else { TS_EVENT_HTTP_CONTINUE };
    // SAFETY: live transaction, reenabled exactly once per hook.
    unsafe { TSHttpTxnReenable(txnp, event) };
}

/// Makes Traffic Server answer with `status` and `body` instead of going on.
fn set_error_response(txnp: TSHttpTxn, status: u32, body: &[u8], content_type: Option<&[u8]>) {
    // SAFETY: buffers given to TSHttpTxnErrorBodySet must come from TSmalloc;
    // each is filled completely before Traffic Server takes ownership.
    unsafe {
        TSHttpTxnStatusSet(txnp, status as TSHttpStatus);
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
    /// `link` holds the chain (a Traffic Server hook is not reenabled): it has
    /// its `pause_timeout` to continue or answer before `on_pause_timer` ends
    /// the transaction. Without this a plugin that never continues would keep
    /// the transaction (and its connection) for ever: Traffic Server does not
    /// end a transaction whose hook is held, even after the client left.
    fn arm_pause_timer(&mut self, link: Link) {
        self.cancel_pause_timer();
        self.paused_by = Some(link);
        let timeout = self.slot.plugins.plugins[link.plugin].config.pause_timeout;
        let contp = self.shared.contp.load(Ordering::Acquire);
        if !contp.is_null() {
            // SAFETY: the continuation lives until TXN_CLOSE, which cannot come
            // while a hook is held; `close` cancels a timer still pending.
            self.pause_timer = unsafe { TSContScheduleOnPool(contp as TSCont, timeout.as_millis().max(1) as TSHRTime, TS_THREAD_POOL_NET) };
        }
    }

    fn cancel_pause_timer(&mut self) {
        cancel_timer(&mut self.pause_timer);
    }

    /// The paused chain was answered (by a plugin's local response, or the
    /// pause timed out): in the phase it paused in.
    fn answer_paused_chain(&mut self) {
        if std::mem::take(&mut self.response_paused) {
            self.answer_in_response_phase();
        } else {
            self.stop_with_local_response();
        }
    }

    /// The pause timer fired: if the chain still waits, the transaction gets
    /// a 504 (as a local response: in the response phase it replaces an
    /// origin response; a response Traffic Server is already sending keeps
    /// its body).
    pub fn on_pause_timer(&mut self) {
        self.pause_timer = std::ptr::null_mut();
        let expired = std::mem::replace(&mut self.shared.pause.lock().unwrap_or_else(|p| p.into_inner()).paused, false);
        if !expired {
            return;
        }
        if let Some(link) = self.paused_by {
            let timeout = self.slot.plugins.plugins[link.plugin].config.pause_timeout;
            let phase = if self.response_paused { "response" } else { "request" };
            log(LogLevel::Warn, &format!("[proxy_wasm] {}: kept the {phase} paused for {timeout:?} (pause_timeout) without continuing it; answering 504", self.plugin_name(link)));
        }
        let inserted = {
            let mut local = self.shared.local.lock().unwrap_or_else(|p| p.into_inner());
            let inserted = local.is_none();
            local.get_or_insert_with(LocalResponse::pause_timeout);
            inserted
        };
        if inserted && self.response_paused && self.shared.response_source.load(Ordering::Acquire) == RESPONSE_TO_CLIENT {
            // A response Traffic Server is already sending (cache hit, its
            // own): the 504's status and headers go on it in place (a
            // plugin's own local response did that when it was sent).
            self.apply_local_headers();
        }
        self.answer_paused_chain();
    }

    /// Takes a resume of `stream`; without one, marks the chain paused (so
    /// that a later resume wakes the transaction) and returns false.
    fn take_resume(&self, stream: StreamType) -> bool {
        let mut p = self.shared.pause.lock().unwrap_or_else(|p| p.into_inner());
        let found = p.resumes.contains(&stream);
        p.resumes.retain(|s| *s != stream);
        p.paused = !found;
        found
    }

    /// The transaction's continuation was woken: continue a paused request or
    /// response chain, or answer with the local response a plugin sent.
    pub fn on_wakeup(&mut self) {
        let stream = if self.response_paused { StreamType::HttpResponse } else { StreamType::HttpRequest };
        let answered = self.shared.local.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        if answered {
            let was_paused = std::mem::replace(&mut self.shared.pause.lock().unwrap_or_else(|p| p.into_inner()).paused, false);
            if was_paused {
                self.cancel_pause_timer();
                self.answer_paused_chain();
            }
            return;
        }
        let resume = {
            let mut p = self.shared.pause.lock().unwrap_or_else(|p| p.into_inner());
            let found = p.paused && p.resumes.contains(&stream);
            if found {
                p.paused = false;
                p.resumes.retain(|s| *s != stream);
            }
            found
        };
        if resume {
            self.cancel_pause_timer();
            if std::mem::take(&mut self.response_paused) {
                self.continue_response_headers();
            } else {
                self.run_request_headers();
            }
        }
    }

    fn policy(&self, link: Link) -> FailurePolicy {
        self.slot.plugins.plugins[link.plugin].config.failure_policy
    }

    fn plugin_name(&self, link: Link) -> &str {
        &self.slot.plugins.plugins[link.plugin].config.name
    }

    /// A plugin failed: fail closed answers 503; fail open skips the plugin.
    fn on_failure(&self, link: Link, e: &VmError) -> bool {
        log(LogLevel::Error, &format!("[proxy_wasm] {}: {e}", self.plugin_name(link)));
        match self.policy(link) {
            FailurePolicy::FailOpen => false,
            FailurePolicy::FailClosed | FailurePolicy::Reload => {
                *self.shared.local.lock().unwrap_or_else(|p| p.into_inner()) = None;
                set_error_response(self.shared.txnp, 503, b"plugin failure\n", None);
                true
            }
        }
    }

    /// Runs `on_request_headers` from the next plugin on; reenables the
    /// transaction unless a plugin paused it.
    pub fn run_request_headers(&mut self) {
        let shared = self.shared.clone();
        let count = shared
            .client_request()
            .map(|h| {
                let n = h.pair_count();
                TxnShared::release(&h);
                n
            })
            .unwrap_or(0);
        let eos = self.framing.no_body();
        let slot = self.slot.clone();
        let mut vms = slot.lock_vms();
        while self.next < self.chain.len() {
            let link = self.chain[self.next];
            self.next += 1;
            match vms.vms[link.vm].on_request_headers(link.ctx, count, eos) {
                Ok(Verdict::Continue) => {}
                Ok(Verdict::Pause) => {
                    if !self.take_resume(StreamType::HttpRequest) {
                        // Resumed later by `proxy_continue_stream` from another event.
                        drop(vms);
                        self.arm_pause_timer(link);
                        return;
                    }
                }
                Ok(Verdict::Stop) => {
                    drop(vms);
                    self.stop_with_local_response();
                    return;
                }
                Err(e) => {
                    if self.on_failure(link, &e) {
                        drop(vms);
                        reenable(shared.txnp, true);
                        return;
                    }
                }
            }
        }
        drop(vms);
        self.restore_framing();
        reenable(shared.txnp, false);
    }

    /// Traffic Server reads the client's body by the client request's
    /// Content-Length / Transfer-Encoding: a plugin that removed them (because
    /// it changes the body) must not make it unreadable. The origin gets the
    /// edited body with framing Traffic Server computes for the transform.
    fn restore_framing(&self) {
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
        if let Some(framing) = &self.response_framing {
            let _ = self.shared.with_hdr(MapType::HttpResponseHeaders, |h| framing.restore(h));
        }
    }

    /// SEND_REQUEST_HDR, when the request body goes through the request
    /// transform. The transform holds the whole body before Traffic Server
    /// sends the request on, so a local response sent from a body callback
    /// (or a body pause that timed out) is known here: the request is not
    /// sent and the client gets the local response instead.
    ///
    /// Otherwise, for a chunked body: the transform hands it on chunked again,
    /// but Traffic Server also sets the transform's output length as
    /// Content-Length, which must not go out next to
    /// `Transfer-Encoding: chunked` (RFC 9112 6.3).
    pub fn on_send_request_header(&self) {
        if self.shared.local.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            self.stop_with_local_response();
            return;
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
        reenable(self.shared.txnp, false);
    }

    fn stop_with_local_response(&self) {
        let local = self.shared.local.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match local {
            Some(r) => {
                let ct = r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(b"content-type")).map(|(_, v)| v.as_slice());
                set_error_response(self.shared.txnp, r.status, &r.body, ct);
            }
            // A closed stream: Traffic Server answers with its own error.
            None => {}
        }
        reenable(self.shared.txnp, true);
    }

    /// Runs `on_response_headers` for every plugin that saw the request, last
    /// first (the order Envoy runs encoder filters): at READ_RESPONSE_HDR for
    /// origin responses (before any body reaches a plugin), else at
    /// SEND_RESPONSE_HDR (cache hits, responses Traffic Server or a plugin made).
    pub fn run_response_headers(&mut self, source: u8) {
        self.shared.response_source.store(source, Ordering::Release);
        if source == RESPONSE_FROM_ORIGIN && !self.response_done && !self.shared.local_in_response.load(Ordering::Acquire) {
            // A local response sent from the request body, after the request
            // had gone on: it replaces the origin's response as a whole; the
            // plugins see it at SEND_RESPONSE_HDR.
            let local = self.shared.local.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(r) = local {
                let ct = r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(b"content-type")).map(|(_, v)| v.as_slice());
                set_error_response(self.shared.txnp, r.status, &r.body, ct);
                reenable(self.shared.txnp, true);
                return;
            }
        }
        if std::mem::replace(&mut self.response_done, true) {
            if source == RESPONSE_TO_CLIENT && self.local_replaces_response {
                self.apply_local_headers();
            }
            reenable(self.shared.txnp, false);
            return;
        }
        if source == RESPONSE_FROM_ORIGIN {
            self.response_framing = Some(Framing::of(self.shared.client_response()));
        }
        // A local response sent during the request phase: its headers.
        if !self.shared.local_in_response.load(Ordering::Acquire) {
            self.apply_local_headers();
        }
        self.response_next = 0;
        self.continue_response_headers();
    }

    /// Sets the status and headers of the local response on the response
    /// Traffic Server is about to send (it made that response from the
    /// status and body the plugin gave, but turns a 2xx into 500).
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

    /// Runs `on_response_headers` from the next plugin (counted from the
    /// last) on; reenables the transaction unless a plugin paused it.
    fn continue_response_headers(&mut self) {
        let (count, eos) = self
            .shared
            .client_response()
            .map(|h| {
                let n = h.pair_count();
                let status = h.status();
                let empty = h.value(b"content-length").is_some_and(|v| v.trim_ascii() == b"0");
                TxnShared::release(&h);
                (n, empty || status == 204 || status == 304 || (100..200).contains(&status))
            })
            .unwrap_or((0, true));
        let ran = self.next.min(self.chain.len());
        let slot = self.slot.clone();
        let mut vms = slot.lock_vms();
        while self.response_next < ran {
            let link = self.chain[ran - 1 - self.response_next];
            self.response_next += 1;
            match vms.vms[link.vm].on_response_headers(link.ctx, count, eos) {
                Ok(Verdict::Continue) => {}
                Ok(Verdict::Pause) => {
                    if !self.take_resume(StreamType::HttpResponse) {
                        // Resumed later by `proxy_continue_stream` or answered
                        // by `proxy_send_local_response` from another event.
                        self.response_paused = true;
                        drop(vms);
                        self.arm_pause_timer(link);
                        return;
                    }
                }
                Ok(Verdict::Stop) => {
                    drop(vms);
                    self.answer_in_response_phase();
                    return;
                }
                Err(e) => {
                    if self.on_failure(link, &e) {
                        drop(vms);
                        self.answer_in_response_phase();
                        return;
                    }
                }
            }
        }
        drop(vms);
        self.restore_response_framing();
        reenable(self.shared.txnp, false);
    }

    /// A plugin answered (or failed closed, or closed the stream) in the
    /// response phase. An origin response is replaced as a whole: Traffic
    /// Server sends the local response's status and body instead (headers set
    /// again at SEND_RESPONSE_HDR). A response already on its way to the
    /// client (cache hit, Traffic Server's own) only gets status and headers.
    fn answer_in_response_phase(&mut self) {
        let local = self.shared.local.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let from_origin = self.shared.response_source.load(Ordering::Acquire) == RESPONSE_FROM_ORIGIN;
        match local {
            Some(r) if from_origin => {
                let ct = r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(b"content-type")).map(|(_, v)| v.as_slice());
                set_error_response(self.shared.txnp, r.status, &r.body, ct);
                self.local_replaces_response = true;
                reenable(self.shared.txnp, true);
            }
            Some(_) => {
                log(LogLevel::Warn, "[proxy_wasm] a local response sent while Traffic Server was sending its own response replaces its status and headers, not its body");
                reenable(self.shared.txnp, false);
            }
            // A closed stream or a failed plugin: Traffic Server ends the
            // transaction with an error.
            None => reenable(self.shared.txnp, true),
        }
    }

    /// on_done, on_log, on_delete for every stream context, at TXN_CLOSE.
    pub fn close(&mut self) {
        self.cancel_pause_timer();
        let slot = self.slot.clone();
        let mut vms = slot.lock_vms();
        let mut waiting = false;
        for link in &self.chain {
            match vms.vms[link.vm].finish_stream(link.ctx) {
                Ok(done) => waiting |= !done,
                Err(e) => log(LogLevel::Error, &format!("[proxy_wasm] {}: {e}", self.plugin_name(*link))),
            }
        }
        drop(vms);
        self.chain.clear();
        if waiting {
            // A plugin's on_done returned false: its proxy_done is awaited, within its pause_timeout.
            super::watch_awaiting_done();
        }
    }
}

/// Nanoseconds since the epoch, on Traffic Server's clock (its milestones use
/// the real-time clock).
fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}
