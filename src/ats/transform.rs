//! Request and response bodies through Traffic Server transforms. A transform
//! is added only when a plugin of the chain exports the body callback.
//!
//! Each chunk goes through the plugins in order (response: last first). A
//! plugin that returns Pause keeps what it got (the core buffers it and calls
//! again with the cumulative size); what a plugin lets through goes on to the
//! next one and finally to Traffic Server. A plugin that pauses at the end of
//! the body (to wait for an `http_call`, say) holds the body until it calls
//! `proxy_continue_stream`; the transform then goes on from the next plugin.

use std::os::raw::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::server::log;
use super::sys::*;
use super::txn::{cancel_timer, BodyWaiter, Link, Txn, TxnShared};
use crate::abi::{LogLevel, StreamType};
use crate::chunked::{encode_chunked, Dechunker};
use crate::vm::Verdict;

pub struct Transform {
    /// The transaction; its continuation outlives the transform (freed at TXN_CLOSE).
    txn: *mut Txn,
    direction: StreamType,
    output_buffer: TSIOBuffer,
    output_reader: TSIOBufferReader,
    output_vio: TSVIO,
    written: i64,
    finished: bool,
    /// Request bodies are held until their end: Traffic Server needs the
    /// length of a transformed request body before it sends it on.
    held: Vec<u8>,
    /// Traffic Server hands a request transform the body as the client framed
    /// it: a chunked body is decoded for the plugins and encoded again.
    dechunk: Option<Dechunker>,
    /// The whole input has gone through the plugins.
    input_done: bool,
    /// A plugin (index into the phase's chain) paused at the end of the body.
    waiting: Option<usize>,
    /// Wake-ups scheduled on `waker` and not delivered yet (see
    /// `TxnShared::body_waiters`): the state is freed only when none is.
    wakes_pending: Arc<AtomicUsize>,
    /// Ends a wait in `waiting` past the plugin's `pause_timeout`; null when
    /// none is pending (cleared by its own event, cancelled otherwise).
    pause_timer: TSAction,
    /// The transform VConnection; null once Traffic Server closed it.
    contp: TSCont,
    /// Our own events for this transform (a resume's wake-up, the pause
    /// timer) go to this continuation, which shares the transform's mutex:
    /// Traffic Server also sends the transform EVENT_IMMEDIATE (its close),
    /// so wake-ups sent to the transform itself could not be told apart.
    waker: TSCont,
    shared: Arc<TxnShared>,
}

/// What the plugins made of a chunk.
enum Filtered {
    /// Bytes to send on.
    Pass(Vec<u8>),
    /// A plugin keeps the body for now (it paused before the end).
    Hold,
    /// A plugin paused at the end of the body: wait for its resume.
    Wait(usize),
    /// A plugin closed the response (or its held body passed its
    /// `max_body_size`) after the header went out: the response is cut off.
    Abort,
}

/// Adds a transform for `direction` to the transaction.
///
/// # Safety
/// `txnp` is live and `txn` is the transaction's state, which is freed only at
/// TXN_CLOSE, after the transform is closed.
pub unsafe fn add(txnp: TSHttpTxn, txn: *mut Txn, direction: StreamType, chunked: bool) {
    let state = Box::new(Transform {
        txn,
        direction,
        output_buffer: std::ptr::null_mut(),
        output_reader: std::ptr::null_mut(),
        output_vio: std::ptr::null_mut(),
        written: 0,
        finished: false,
        held: Vec::new(),
        dechunk: (chunked && direction == StreamType::HttpRequest).then(Dechunker::default),
        input_done: false,
        waiting: None,
        wakes_pending: Default::default(),
        pause_timer: std::ptr::null_mut(),
        contp: std::ptr::null_mut(),
        waker: std::ptr::null_mut(),
        shared: (*txn).shared.clone(),
    });
    let connp = TSTransformCreate(Some(on_transform_event), txnp);
    let state = Box::into_raw(state);
    (*state).contp = connp;
    (*state).waker = TSContCreate(Some(on_waker_event), TSContMutexGet(connp));
    // On the transaction's thread, which owns its VMs (see `start_transaction`).
    TSContThreadAffinitySet((*state).waker, TSEventThreadSelf());
    TSContDataSet(connp, state as *mut c_void);
    TSContDataSet((*state).waker, state as *mut c_void);
    let hook = if direction == StreamType::HttpRequest { TS_HTTP_REQUEST_TRANSFORM_HOOK } else { TS_HTTP_RESPONSE_TRANSFORM_HOOK };
    TSHttpTxnHookAdd(txnp, hook, connp);
}

extern "C" fn on_transform_event(contp: TSCont, event: TSEvent, _edata: *mut c_void) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `contp` is the transform made in `add`; Traffic Server calls
        // it under its mutex, and its data is our Box<Transform>.
        unsafe {
            let t = TSContDataGet(contp) as *mut Transform;
            if TSVConnClosedGet(contp) != 0 {
                close(t);
                return;
            }
            match event {
                TS_EVENT_ERROR => {
                    let input = TSVConnWriteVIOGet(contp);
                    TSContCall(TSVIOContGet(input), TS_EVENT_ERROR, input as *mut c_void);
                }
                TS_EVENT_VCONN_WRITE_COMPLETE => TSVConnShutdown(TSTransformOutputVConnGet(contp), 0, 1),
                _ => step(contp),
            }
        }
    }));
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in a body transform");
    }
    0
}

/// Traffic Server closed the transform: it leaves the waiters, its timer is
/// cancelled and the VConnection destroyed; the state (and the waker) go
/// now, or with the last wake-up still on its way.
///
/// # Safety
/// Called under the transform's mutex, once, with its live state.
unsafe fn close(t: *mut Transform) {
    let state = &mut *t;
    let pending = {
        let mut waiters = state.shared.body_waiters.lock().unwrap_or_else(|p| p.into_inner());
        waiters.retain(|w| w.contp != state.waker);
        state.wakes_pending.load(Ordering::Acquire)
    };
    cancel_pause_timer(state);
    if !state.output_buffer.is_null() {
        TSIOBufferReaderFree(state.output_reader);
        TSIOBufferDestroy(state.output_buffer);
        state.output_buffer = std::ptr::null_mut();
    }
    TSContDestroy(state.contp);
    state.contp = std::ptr::null_mut();
    if pending == 0 {
        free(t);
    }
}

/// # Safety
/// The transform is closed and no event can reach its waker any more.
unsafe fn free(t: *mut Transform) {
    let t = Box::from_raw(t);
    TSContDestroy(t.waker);
}

/// The transform's own events: EVENT_IMMEDIATE is a wake-up scheduled by
/// `TxnShared::wake_body_waiter`, EVENT_TIMEOUT the pause timer.
extern "C" fn on_waker_event(waker: TSCont, event: TSEvent, _edata: *mut c_void) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the waker's data is the transform's state, freed only when
        // the transform is closed and no wake-up is pending; the waker shares
        // the transform's mutex, which Traffic Server holds for this call.
        unsafe {
            let t = TSContDataGet(waker) as *mut Transform;
            let state = &mut *t;
            // Traffic Server marks the transform closed (and drops its output)
            // at once, but delivers the close event later, possibly after the
            // transaction is gone: a closed transform is left to that event.
            let closed = state.contp.is_null() || TSVConnClosedGet(state.contp) != 0;
            match event {
                TS_EVENT_IMMEDIATE => {
                    let left = state.wakes_pending.fetch_sub(1, Ordering::AcqRel) - 1;
                    if state.contp.is_null() {
                        if left == 0 {
                            free(t);
                        }
                        return;
                    }
                    if !closed {
                        step(state.contp);
                    }
                }
                TS_EVENT_TIMEOUT => {
                    state.pause_timer = std::ptr::null_mut();
                    if !closed {
                        on_pause_timer(state.contp);
                    }
                }
                _ => {}
            }
        }
    }));
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in a body transform");
    }
    0
}

/// Reads what is available, runs it through the plugins, writes what they let through.
///
/// # Safety
/// Called from the transform's own handler, or its waker's (same mutex), with
/// a live transform that is not closed.
unsafe fn step(contp: TSCont) {
    let t = &mut *(TSContDataGet(contp) as *mut Transform);
    if t.finished {
        return;
    }
    if let Some(at) = t.waiting {
        if t.direction == StreamType::HttpRequest && t.shared.local.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            // Answered instead of resumed: the request is not sent on (see
            // `Txn::on_send_request_header`).
            t.waiting = None;
            unlist(t);
            cancel_pause_timer(t);
            end_output(contp, t);
            return;
        }
        // Paused at the end of the body: go on once the plugin resumed.
        if !claim_resume(t) {
            return;
        }
        t.waiting = None;
        cancel_pause_timer(t);
        let txn = &mut *t.txn;
        let links = links(txn, t.direction);
        let body = {
            let mut vms = txn.slot.lock_vms();
            vms.vms[links[at].vm].take_body(links[at].ctx, t.direction).unwrap_or_default()
        };
        let r = filter(txn, t.direction, &body, true, at + 1);
        emit(contp, t, r, true);
        return;
    }
    if t.input_done {
        return;
    }
    let input = TSVConnWriteVIOGet(contp);
    let holds = t.direction == StreamType::HttpRequest;
    if t.output_vio.is_null() && !holds {
        open_output(contp, t, i64::MAX);
    }
    if TSVIOBufferGet(input).is_null() {
        // The writer is gone: end the output with what was written.
        t.input_done = true;
        end_output(contp, t);
        return;
    }
    let reader = TSVIOReaderGet(input);
    let todo = TSVIONTodoGet(input);
    let avail = TSIOBufferReaderAvail(reader).min(todo);
    let mut chunk = Vec::with_capacity(avail.max(0) as usize);
    if avail > 0 {
        let mut block = TSIOBufferReaderStart(reader);
        while !block.is_null() && (chunk.len() as i64) < avail {
            let mut n: i64 = 0;
            let p = TSIOBufferBlockReadStart(block, reader, &mut n);
            let take = n.min(avail - chunk.len() as i64);
            if !p.is_null() && take > 0 {
                chunk.extend_from_slice(std::slice::from_raw_parts(p as *const u8, take as usize));
            }
            block = TSIOBufferBlockNext(block);
        }
        TSIOBufferReaderConsume(reader, avail);
        TSVIONDoneSet(input, TSVIONDoneGet(input) + avail);
    }
    let eos = TSVIONTodoGet(input) == 0;
    if let Some(d) = t.dechunk.as_mut() {
        match d.feed(&chunk) {
            Ok(body) => chunk = body,
            Err(e) => {
                // Never a silently shorter body: the request is aborted, as
                // Traffic Server aborts one whose body it cannot read.
                log(LogLevel::Error, &format!("[proxy_wasm] malformed chunked request body: {e}; the request is aborted"));
                t.input_done = true;
                TSContCall(TSVIOContGet(input), TS_EVENT_ERROR, input as *mut c_void);
                return;
            }
        }
    }
    if t.direction == StreamType::HttpResponse && (avail > 0 || eos) {
        // The response header is committed: see `AtsStream::send_local_response`.
        t.shared.response_body_started.store(true, Ordering::Release);
    }
    if avail > 0 || eos {
        t.input_done = eos;
        let r = filter(&mut *t.txn, t.direction, &chunk, eos, 0);
        emit(contp, t, r, eos);
    }
    if !eos {
        if avail > 0 {
            if !t.output_vio.is_null() {
                TSVIOReenable(t.output_vio);
            }
            TSContCall(TSVIOContGet(input), TS_EVENT_VCONN_WRITE_READY, input as *mut c_void);
        }
    } else {
        // The input is consumed, even if a plugin still holds the output.
        TSContCall(TSVIOContGet(input), TS_EVENT_VCONN_WRITE_COMPLETE, input as *mut c_void);
    }
}

/// Sends on what the plugins let through; at the end of the body, ends the
/// output unless a plugin waits to resume.
unsafe fn emit(contp: TSCont, t: &mut Transform, r: Filtered, eos: bool) {
    match r {
        Filtered::Pass(out) => {
            if t.direction == StreamType::HttpRequest {
                t.held.extend_from_slice(&out);
                check_held_request(t);
            } else if !out.is_empty() {
                TSIOBufferWrite(t.output_buffer, out.as_ptr() as *const c_void, out.len() as i64);
                t.written += out.len() as i64;
                TSVIOReenable(t.output_vio);
            }
            if eos {
                end_output(contp, t);
            }
        }
        Filtered::Hold => {}
        Filtered::Abort => {
            log(LogLevel::Warn, "[proxy_wasm] a plugin closed the response while its body was being sent; the response is cut off");
            t.finished = true;
            TSVConnAbort(TSTransformOutputVConnGet(contp), 1);
        }
        Filtered::Wait(at) => {
            t.waiting = Some(at);
            t.shared.body_waiters.lock().unwrap_or_else(|p| p.into_inner()).push(BodyWaiter {
                stream: t.direction,
                contp: t.waker,
                pending: t.wakes_pending.clone(),
            });
            let txn = &*t.txn;
            let link = links(txn, t.direction)[at];
            let timeout = txn.slot.plugins.plugins[link.plugin].config.pause_timeout;
            cancel_pause_timer(t);
            t.pause_timer = TSContScheduleOnPool(t.waker, timeout.as_millis().max(1) as TSHRTime, TS_THREAD_POOL_NET);
            // Resumed already (from inside the callback that paused)?
            step(contp);
        }
    }
}

/// Traffic Server needs the length of a transformed request body before it
/// sends the request on, so the request transform holds what the plugins let
/// through until the end of the body: within the smallest `max_body_size` of
/// the chain's plugins that read the body. Past it the request gets 413 (at
/// SEND_REQUEST_HDR, once the client's body is read) and is not sent on; the
/// rest of the body is read and dropped.
fn check_held_request(t: &mut Transform) {
    // SAFETY: the transaction outlives its transforms (freed at TXN_CLOSE).
    let txn = unsafe { &*t.txn };
    let plugins = &txn.slot.plugins.plugins;
    let limit = links(txn, StreamType::HttpRequest)
        .into_iter()
        .filter(|l| plugins[l.plugin].code.exports_function("proxy_on_request_body"))
        .map(|l| (plugins[l.plugin].config.max_body_size, l.plugin))
        .min_by_key(|(limit, _)| *limit);
    let size = t.held.len() as u64;
    let Some((limit, plugin)) = limit.filter(|(limit, _)| size > *limit) else { return };
    t.held = Vec::new();
    t.shared.local.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(crate::host::LocalResponse::request_payload_too_large);
    log(LogLevel::Warn, &format!("[proxy_wasm] {}: the request body held for the plugins would reach {size} bytes, over its max_body_size ({limit} bytes): the request gets 413 and is not sent on", plugins[plugin].config.name));
}

/// Every caller holds the transform's mutex, under which the timer's event
/// clears `pause_timer` (see `cancel_timer`).
fn cancel_pause_timer(t: &mut Transform) {
    cancel_timer(&mut t.pause_timer);
}

/// Takes the transform out of the waiters; whether it was still listed (not
/// listed: a wake-up for it is on its way, or it never waited).
fn unlist(t: &Transform) -> bool {
    let mut waiters = t.shared.body_waiters.lock().unwrap_or_else(|p| p.into_inner());
    let listed = waiters.iter().any(|w| w.contp == t.waker);
    waiters.retain(|w| w.contp != t.waker);
    listed
}

/// A plugin kept the body paused at its end past its `pause_timeout`. A
/// request body: the client gets 504 and the request is not sent on (see
/// `Txn::on_send_request_header`). A response body, whose header already
/// went to the client: the response is aborted, the way Envoy resets a
/// stream past its idle timeout, rather than ended as if it were complete.
///
/// # Safety
/// Called from the transform's own handler with a live transform.
unsafe fn on_pause_timer(contp: TSCont) {
    let t = &mut *(TSContDataGet(contp) as *mut Transform);
    if t.finished || t.waiting.is_none() {
        return;
    }
    if !unlist(t) {
        // A resume (or a local response) came just before the deadline: its
        // wake-up is on its way and goes on from here.
        return;
    }
    let Some(at) = t.waiting.take() else { return };
    let txn = &*t.txn;
    let link = links(txn, t.direction)[at];
    let plugin = &txn.slot.plugins.plugins[link.plugin].config;
    if t.direction == StreamType::HttpRequest {
        log(LogLevel::Warn, &format!("[proxy_wasm] {}: kept the request body paused for {:?} (pause_timeout) without continuing it; answering 504", plugin.name, plugin.pause_timeout));
        t.shared.local.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(crate::host::LocalResponse::pause_timeout);
        end_output(contp, t);
    } else {
        log(LogLevel::Warn, &format!("[proxy_wasm] {}: kept the response body paused for {:?} (pause_timeout) without continuing it; aborting the response", plugin.name, plugin.pause_timeout));
        t.finished = true;
        TSVConnAbort(TSTransformOutputVConnGet(contp), 1);
    }
}

/// Takes the plugin's resume of this direction, if it came; also takes the
/// transform out of the waiters (a wake-up may still be on its way: the
/// handler ignores it).
fn claim_resume(t: &Transform) -> bool {
    if !t.shared.take_resume(t.direction) {
        return false;
    }
    unlist(t);
    true
}

unsafe fn open_output(contp: TSCont, t: &mut Transform, nbytes: i64) {
    t.output_buffer = TSIOBufferCreate();
    t.output_reader = TSIOBufferReaderAlloc(t.output_buffer);
    t.output_vio = TSVConnWrite(TSTransformOutputVConnGet(contp), contp, t.output_reader, nbytes);
}

/// Ends the output: a held (request) body is written now, with its length.
unsafe fn end_output(contp: TSCont, t: &mut Transform) {
    if t.output_vio.is_null() {
        if t.shared.local.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            // Answered locally: the origin's response is replaced (see
            // `Txn::run_response_headers`), it gets no body.
            t.held.clear();
        }
        if t.dechunk.take().is_some() {
            t.held = encode_chunked(&std::mem::take(&mut t.held));
        }
        open_output(contp, t, t.held.len() as i64);
        flush_held(t);
    }
    finish(t);
}

unsafe fn flush_held(t: &mut Transform) {
    let held = std::mem::take(&mut t.held);
    if !held.is_empty() {
        TSIOBufferWrite(t.output_buffer, held.as_ptr() as *const c_void, held.len() as i64);
        t.written += held.len() as i64;
    }
}

unsafe fn finish(t: &mut Transform) {
    if !t.finished {
        t.finished = true;
        TSVIONBytesSet(t.output_vio, t.written);
        TSVIOReenable(t.output_vio);
    }
}

/// The plugins a body goes through, in order (response: last first).
fn links(txn: &Txn, direction: StreamType) -> Vec<Link> {
    match direction {
        StreamType::HttpResponse => txn.chain[..txn.next.min(txn.chain.len())].iter().rev().copied().collect(),
        _ => txn.chain.clone(),
    }
}

/// Passes a chunk through the chain from plugin `start` on.
fn filter(txn: &mut Txn, direction: StreamType, chunk: &[u8], eos: bool, start: usize) -> Filtered {
    // A plugin answered with a local response (or closed the stream) while
    // the request body was on its way: nothing more of it goes to the origin.
    let answered = || direction == StreamType::HttpRequest && txn.shared.local.lock().unwrap_or_else(|p| p.into_inner()).is_some();
    if answered() {
        return Filtered::Pass(Vec::new());
    }
    let links = links(txn, direction);
    let slot = txn.slot.clone();
    let mut vms = slot.lock_vms();
    let mut data = chunk.to_vec();
    for (i, link) in links.into_iter().enumerate().skip(start) {
        let vm = &mut vms.vms[link.vm];
        let exported = match direction {
            StreamType::HttpResponse => vm.code().exports_function("proxy_on_response_body"),
            _ => vm.code().exports_function("proxy_on_request_body"),
        };
        if !exported || vm.failure().is_some() {
            continue;
        }
        let verdict = match direction {
            StreamType::HttpResponse => vm.on_response_body(link.ctx, &data, eos),
            _ => vm.on_request_body(link.ctx, &data, eos),
        };
        match verdict {
            Ok(Verdict::Stop) if direction == StreamType::HttpRequest => {
                let _ = vm.take_body(link.ctx, direction);
                return Filtered::Pass(Vec::new());
            }
            Ok(Verdict::Stop) if txn.shared.response_closed.load(Ordering::Acquire) => {
                let _ = vm.take_body(link.ctx, direction);
                return Filtered::Abort;
            }
            Ok(Verdict::Continue) | Ok(Verdict::Stop) => data = vm.take_body(link.ctx, direction).unwrap_or_default(),
            Ok(Verdict::Pause) if eos => return Filtered::Wait(i),
            Ok(Verdict::Pause) => return Filtered::Hold,
            Err(e) => {
                log(LogLevel::Error, &format!("[proxy_wasm] body callback failed: {e}"));
            }
        }
    }
    Filtered::Pass(data)
}
