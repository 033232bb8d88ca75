//! What one transaction's parts share: the stream contexts (header maps and
//! properties), the body transforms, the task threads' calls and the chain's
//! server side all hold a [`TxnShared`]. It names none of them (the transforms
//! are listed by address, typed by `super::transform`), so each can use it
//! without the others.
//!
//! Also the deferral of wake-ups while this thread holds a VM mutex
//! (`super::VmsGuard`).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::raw::c_void;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::hdr::Framing;
use super::hdr::Hdr;
use super::sys::*;
use proxy_wasm_host::abi::{MapType, Status};
use proxy_wasm_host::chain::Signals;
use proxy_wasm_host::host::LocalResponse;

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
    /// The body transforms (request, response): each a `transform::Transform`
    /// (`super::transform::listed` types it), null until added and once Traffic
    /// Server closed them. Only touched under the transaction's mutex.
    pub transforms: [AtomicPtr<c_void>; 2],
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
    /// Which header maps a plugin changed since the framing was last checked
    /// (`EDITED_*`): the received framing is put back only after an edit.
    edited: AtomicU8,
    /// The origin response's Content-Length and Transfer-Encoding as received, kept before
    /// the first plugin edit that could change them (`AtsStream::keep_received_framing`).
    pub response_framing: Mutex<Option<Framing>>,
}

const EDITED_REQUEST: u8 = 1;
const EDITED_RESPONSE: u8 = 2;

fn edited_bit(map: MapType) -> u8 {
    match map {
        MapType::HttpRequestHeaders => EDITED_REQUEST,
        MapType::HttpResponseHeaders => EDITED_RESPONSE,
        _ => 0,
    }
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
pub fn vms_locked() {
    VMS_HELD.with(|n| n.set(n.get() + 1));
}

/// This thread released a VM mutex: the wake-ups deferred meanwhile are
/// scheduled once it holds none.
pub fn vms_released() {
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
pub fn defer_wakeup(contp: TSCont) {
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

impl TxnShared {
    /// A wake-up of the continuation is on its way (scheduled by another thread later): the
    /// continuation outlives TXN_CLOSE until it arrives.
    pub(crate) fn expect_wake(&self) {
        self.wakes.fetch_add(1, Ordering::AcqRel);
    }

    /// A plugin changes the field `key` of the header map `map`: only a change of
    /// Content-Length or Transfer-Encoding can change the framing (`mark_edited`).
    /// Every other field (the usual edit: a header added) leaves the framing
    /// check, and its header fetch and lookups, out.
    /// Returns whether it was such a field.
    pub(crate) fn mark_field_edited(&self, map: MapType, key: &[u8]) -> bool {
        let framing = key.eq_ignore_ascii_case(b"content-length") || key.eq_ignore_ascii_case(b"transfer-encoding");
        if framing {
            self.mark_edited(map);
        }
        framing
    }

    /// A plugin changes the header map `map` (any field of it may change).
    pub(crate) fn mark_edited(&self, map: MapType) {
        let bit = edited_bit(map);
        if bit != 0 {
            self.edited.fetch_or(bit, Ordering::AcqRel);
        }
    }

    /// Whether a plugin changed the header map `map` since the last call.
    pub(crate) fn take_edited(&self, map: MapType) -> bool {
        let bit = edited_bit(map);
        bit != 0 && self.edited.fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }

    /// A wake-up counted by `expect_wake` arrived. Returns whether it was the
    /// last one on its way (the continuation can go once the transaction closed).
    pub(crate) fn wake_arrived(&self) -> bool {
        let before =
            self.wakes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1))).unwrap_or(0);
        before <= 1
    }

    /// Whether a wake-up is still on its way to the continuation.
    pub(crate) fn wakes_pending(&self) -> bool {
        self.wakes.load(Ordering::Acquire) > 0
    }

    /// The chain's pause timer was scheduled (`action`), under the continuation's mutex.
    pub(crate) fn pause_timer_armed(&self, action: TSAction) {
        self.pause_timer.store(action as *mut c_void, Ordering::Release);
    }

    /// The pause timer's event arrived: its handle is no longer valid.
    pub(crate) fn pause_timer_fired(&self) {
        self.pause_timer.store(std::ptr::null_mut(), Ordering::Release);
    }

    /// A wake-up counted by `expect_wake` will not come after all.
    pub(crate) fn unexpect_wake(&self) {
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
            edited: AtomicU8::new(0),
            response_framing: Mutex::new(None),
        }
    }

    /// Cancels the pause timer if one is pending. Called under the
    /// continuation's mutex, under which the timer's own event nulls the
    /// handle first: a handle that is not null is a timer that has not fired.
    pub(crate) fn cancel_pause_timer(&self) {
        let action = self.pause_timer.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !action.is_null() {
            // SAFETY: a pending action (see above).
            unsafe { TSActionCancel(action as TSAction) };
        }
    }

    pub(crate) fn client_request(&self) -> Option<Hdr> {
        let (mut buf, mut loc): (TSMBuffer, TSMLoc) = (std::ptr::null_mut(), TS_NULL_MLOC);
        // SAFETY: live transaction (see the Send impl).
        let r = unsafe { TSHttpTxnClientReqGet(self.txnp, &mut buf, &mut loc) };
        (r == TS_SUCCESS).then_some(Hdr { buf, loc, is_request: true })
    }

    /// The request Traffic Server will send upstream (it exists once the origin connection
    /// is set up, before the request transform gets the body).
    pub(crate) fn server_request(&self) -> Option<Hdr> {
        let (mut buf, mut loc): (TSMBuffer, TSMLoc) = (std::ptr::null_mut(), TS_NULL_MLOC);
        // SAFETY: live transaction (see the Send impl).
        let r = unsafe { TSHttpTxnServerReqGet(self.txnp, &mut buf, &mut loc) };
        (r == TS_SUCCESS).then_some(Hdr { buf, loc, is_request: true })
    }

    pub(crate) fn client_response(&self) -> Option<Hdr> {
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
    pub(crate) fn transform_response(&self) -> Option<Hdr> {
        let (mut buf, mut loc): (TSMBuffer, TSMLoc) = (std::ptr::null_mut(), TS_NULL_MLOC);
        // SAFETY: live transaction (see the Send impl).
        let r = unsafe { TSHttpTxnTransformRespGet(self.txnp, &mut buf, &mut loc) };
        (r == TS_SUCCESS).then_some(Hdr { buf, loc, is_request: false })
    }

    /// An origin response header exists (the response came via the upstream).
    pub(crate) fn server_response_received(&self) -> bool {
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

    pub(crate) fn hdr(&self, map: MapType) -> Result<Option<Hdr>, Status> {
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

    pub(crate) fn release(hdr: &Hdr) {
        // SAFETY: the header location was obtained from this buffer; releasing
        // a top-level header handle with TS_NULL_MLOC as parent is the API's rule.
        unsafe { TSHandleMLocRelease(hdr.buf, TS_NULL_MLOC, hdr.loc) };
    }

    pub(crate) fn with_hdr<R>(
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

    pub(crate) fn addr(sa: *const libc::sockaddr) -> Option<SocketAddr> {
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
