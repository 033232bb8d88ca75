//! What plugins ask of a chain from inside the VM: resumes, a local response,
//! a close. Written by the links' streams (`super::stream::ChainStream`)
//! while a VM call runs, read by the chain when it gets control back.
//!
//! Every write happens inside a VM call and every read of the chain while it
//! holds the same VMs, so the two never race in practice; atomics make that
//! sound without a lock on the path every callback takes (one load of
//! `bits`). The two mutexes are taken only when a plugin resumes or answers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use crate::abi::{MapType, Status, StreamType};
use crate::host::LocalResponse;

/// The chain is inside a VM call: what plugins ask is looked at when it returns.
const DRIVING: u32 = 1;
/// The chain waits for its pause owner (headers, or the end of a body).
const WAITING: u32 = 1 << 1;
/// A link holds body bytes it paused on before the end of the body.
const HOLDING: u32 = 1 << 2;
/// `pending` is not empty.
const PENDING: u32 = 1 << 3;
/// `local` holds a local response.
const LOCAL: u32 = 1 << 4;
/// A plugin closed the stream.
const CLOSED: u32 = 1 << 5;
/// The response headers left the chain: local responses are refused.
const RESPONSE_RELEASED: u32 = 1 << 6;
/// `ChainServer::schedule_resume` was called and `Chain::resume` has not run since.
const WAKE: u32 = 1 << 7;
/// A plugin edited the request (response) headers since the chain last counted them: the next
/// link's `num_headers` is counted again (Envoy passes each filter the map's size as it is).
const REQUEST_HEADERS_EDITED: u32 = 1 << 8;
const RESPONSE_HEADERS_EDITED: u32 = 1 << 9;

/// The requests of one chain's plugins. A server embeds one per transaction
/// (see `ChainServer::signals`), so a chain costs no allocation of its own.
#[derive(Debug, Default)]
pub struct Signals {
    bits: AtomicU32,
    /// `proxy_continue_stream` calls not looked at yet: (link index, direction).
    pending: Mutex<Vec<(u32, StreamType)>>,
    local: Mutex<Option<LocalResponse>>,
}

impl Signals {
    pub const fn new() -> Signals {
        Signals { bits: AtomicU32::new(0), pending: Mutex::new(Vec::new()), local: Mutex::new(None) }
    }

    #[inline]
    fn has(&self, bit: u32) -> bool {
        self.bits.load(Ordering::Acquire) & bit != 0
    }

    #[inline]
    fn set(&self, bit: u32, on: bool) {
        if on {
            self.bits.fetch_or(bit, Ordering::AcqRel);
        } else {
            self.bits.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    /// A plugin changed the header map `map` (see `REQUEST_HEADERS_EDITED`).
    pub fn headers_edited(&self, map: MapType) {
        match map {
            MapType::HttpRequestHeaders => self.set(REQUEST_HEADERS_EDITED, true),
            MapType::HttpResponseHeaders => self.set(RESPONSE_HEADERS_EDITED, true),
            _ => {}
        }
    }

    /// Whether the headers of `direction` were edited since the last call (and clears it).
    #[inline]
    pub fn take_headers_edited(&self, direction: StreamType) -> bool {
        let bit = if direction == StreamType::HttpResponse { RESPONSE_HEADERS_EDITED } else { REQUEST_HEADERS_EDITED };
        self.bits.fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }

    /// Whether a wake-up is needed for what was just asked, and if so marks
    /// one as asked for: only when the chain is not inside a VM call (then it
    /// looks by itself) and waits or holds a body (otherwise a resume is a
    /// no-op and a local response is used at the next phase), once.
    fn wants_wake(&self) -> bool {
        let mut bits = self.bits.load(Ordering::Acquire);
        loop {
            if bits & DRIVING != 0 || bits & (WAITING | HOLDING) == 0 || bits & WAKE != 0 {
                return false;
            }
            match self.bits.compare_exchange_weak(bits, bits | WAKE, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => bits = now,
            }
        }
    }

    // ------------------------------------------------------------ the links' side

    /// `proxy_continue_stream(direction)` from link `link`. Returns whether
    /// the server must schedule `Chain::resume`.
    #[inline]
    pub fn request_resume(&self, link: u32, direction: StreamType) -> bool {
        if self.bits.load(Ordering::Acquire) & (DRIVING | WAITING | HOLDING) == 0 {
            // Nothing waits or holds a body: a no-op, which must not resume
            // a later pause.
            return false;
        }
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if !pending.contains(&(link, direction)) {
                pending.push((link, direction));
            }
            self.set(PENDING, true);
        }
        self.wants_wake()
    }

    /// `proxy_send_local_response`: BAD_ARGUMENT once the response headers
    /// left the chain (they may be on the wire). Returns whether the server
    /// must schedule `Chain::resume`.
    pub(crate) fn send_local_response(&self, response: LocalResponse) -> Result<bool, Status> {
        if self.has(RESPONSE_RELEASED) {
            return Err(Status::BadArgument);
        }
        *self.local.lock().unwrap_or_else(|p| p.into_inner()) = Some(response);
        self.set(LOCAL, true);
        Ok(self.wants_wake())
    }

    /// `proxy_close_stream`. Returns whether the server must schedule `Chain::resume`.
    pub(crate) fn close(&self) -> bool {
        self.set(CLOSED, true);
        self.wants_wake()
    }

    // ------------------------------------------------------------ the chain's side

    #[inline]
    pub(crate) fn set_driving(&self, on: bool) {
        self.set(DRIVING, on);
    }

    #[inline]
    pub(crate) fn set_waiting(&self, on: bool) {
        self.set(WAITING, on);
    }

    #[inline]
    pub(crate) fn set_holding(&self, on: bool) {
        self.set(HOLDING, on);
    }

    #[inline]
    pub(crate) fn release_response(&self) {
        self.set(RESPONSE_RELEASED, true);
    }

    #[inline]
    pub fn response_released(&self) -> bool {
        self.has(RESPONSE_RELEASED)
    }

    #[inline]
    pub(crate) fn closed(&self) -> bool {
        self.has(CLOSED)
    }

    #[inline]
    pub(crate) fn has_local(&self) -> bool {
        self.has(LOCAL)
    }

    #[inline]
    pub(crate) fn take_local(&self) -> Option<LocalResponse> {
        if !self.has(LOCAL) {
            return None;
        }
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.set(LOCAL, false);
        local
    }

    /// Forgets a local response (the plugin that sent it failed).
    pub(crate) fn drop_local(&self) {
        let _ = self.take_local();
    }

    #[inline]
    pub(crate) fn has_pending(&self) -> bool {
        self.has(PENDING)
    }

    /// Takes the resumes link `link` asked for; whether one was for `direction`.
    pub(crate) fn take_resumes_of(&self, link: u32, direction: StreamType) -> bool {
        if !self.has(PENDING) {
            return false;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let found = pending.contains(&(link, direction));
        pending.retain(|(l, _)| *l != link);
        self.set(PENDING, !pending.is_empty());
        found
    }

    /// Puts back resumes taken with `take_pending` (before those asked since).
    #[inline]
    pub(crate) fn restore_pending(&self, mut earlier: Vec<(u32, StreamType)>) {
        if earlier.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for entry in std::mem::take(&mut *pending) {
            if !earlier.contains(&entry) {
                earlier.push(entry);
            }
        }
        *pending = earlier;
        self.set(PENDING, true);
    }

    /// Takes every resume not looked at yet.
    #[inline]
    pub(crate) fn take_pending(&self) -> Vec<(u32, StreamType)> {
        if !self.has(PENDING) {
            return Vec::new();
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        self.set(PENDING, false);
        std::mem::take(&mut *pending)
    }

    /// `Chain::resume` runs: a later request needs a new wake-up.
    #[inline]
    pub(crate) fn woken(&self) {
        self.set(WAKE, false);
    }

    /// Marks a wake-up as asked for by the chain itself (resumes left over
    /// after a VM call, looked at by `Chain::resume`); false if one is on its way.
    #[inline]
    pub(crate) fn claim_wake(&self) -> bool {
        self.bits.fetch_or(WAKE, Ordering::AcqRel) & WAKE == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_inside_a_vm_call_asks_for_no_wake_up() {
        let s = Signals::new();
        s.set_waiting(true);
        s.set_driving(true);
        assert!(!s.request_resume(0, StreamType::HttpRequest));
        assert!(s.take_resumes_of(0, StreamType::HttpRequest));
        assert!(!s.has_pending());
    }

    #[test]
    fn resumes_from_outside_ask_for_one_wake_up_while_the_chain_waits() {
        let s = Signals::new();
        assert!(!s.request_resume(1, StreamType::HttpRequest), "not waiting: a resume is a no-op");
        assert!(!s.has_pending(), "and is forgotten");
        s.set_waiting(true);
        assert!(s.request_resume(1, StreamType::HttpRequest));
        assert!(!s.request_resume(1, StreamType::HttpRequest), "one wake-up is on its way");
        s.woken();
        assert!(s.request_resume(1, StreamType::HttpResponse));
        assert_eq!(s.take_pending(), vec![(1, StreamType::HttpRequest), (1, StreamType::HttpResponse)]);
    }

    #[test]
    fn a_local_response_is_refused_once_the_response_headers_left_the_chain() {
        let s = Signals::new();
        assert_eq!(s.send_local_response(crate::host::LocalResponse::pause_timeout()), Ok(false));
        assert!(s.take_local().is_some());
        s.release_response();
        assert_eq!(s.send_local_response(crate::host::LocalResponse::pause_timeout()), Err(Status::BadArgument));
        assert!(s.take_local().is_none());
    }
}
