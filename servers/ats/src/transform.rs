//! Request and response bodies through Traffic Server transforms. A transform
//! is added only when a plugin of the chain takes that body
//! (`Chain::filters`).
//!
//! Each chunk goes to the transaction's chain (`Chain::on_request_body` /
//! `on_response_body`), called under the transaction continuation's mutex,
//! and the transform does what the chain's [`Flow`] says: bytes to send on,
//! nothing yet (a plugin buffers, or waits at the end of the body), an
//! answer (request), or an abort. When a plugin resumes from another event,
//! or the chain's pause timer fires, the transaction's continuation hands the
//! result to the transform ([`deliver`]), under the same mutex.

use std::os::raw::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::server::log;
use super::shared::{TxnShared, RESPONSE_TO_CLIENT};
use super::sys::*;
use super::txn::Txn;
use proxy_wasm_host::abi::{LogLevel, MapType, StreamType};
use proxy_wasm_host::chain::Flow;
use proxy_wasm_host::chunked::{encode_chunked, Dechunker};

pub struct Transform {
    /// The transaction; alive while the transform is open (Traffic Server
    /// closes its transforms before TXN_CLOSE frees it).
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
    /// The whole input has been read.
    input_done: bool,
    /// Request: the chain answered (or reset the request, or the body passed
    /// the limit of what the transform may hold): the rest of the body is
    /// read and dropped, the origin gets nothing.
    answered: bool,
    /// The output was aborted: the input is left alone (Traffic Server's
    /// error for the aborted output reaches the transform, which passes it on
    /// to the input's writer).
    aborted: bool,
    /// The transform VConnection.
    contp: TSCont,
    shared: Arc<TxnShared>,
    /// Response: the output opens with the first bytes the chain lets go, not at once (see
    /// `TxnShared::response_to_transform`).
    hold_output: bool,
}

fn index(direction: StreamType) -> usize {
    usize::from(direction == StreamType::HttpResponse)
}

/// The open transform of `direction` listed in `shared` (`TxnShared::transforms`), or null.
pub fn listed(shared: &TxnShared, direction: StreamType) -> *mut Transform {
    shared.transforms[index(direction)].load(Ordering::Acquire) as *mut Transform
}

/// Adds a transform for `direction` to the transaction.
///
/// # Safety
/// `txnp` is live and `txn` is the transaction's state, which is freed only at
/// TXN_CLOSE, after the transform is closed.
pub unsafe fn add(txnp: TSHttpTxn, txn: *mut Txn, direction: StreamType, chunked: bool, hold_output: bool) {
    // SAFETY: `txn` is the live transaction state (contract), only read here.
    let shared = unsafe { (*txn).shared.clone() };
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
        answered: false,
        aborted: false,
        contp: std::ptr::null_mut(),
        shared: shared.clone(),
        hold_output: hold_output && direction == StreamType::HttpResponse,
    });
    // SAFETY: `txnp` is live (contract); the transform gets the transaction's mutex.
    let connp = unsafe { TSTransformCreate(Some(on_transform_event), txnp) };
    let state = Box::into_raw(state);
    // SAFETY: `state` comes from `Box::into_raw` just above and nothing else
    // refers to it yet; `connp` is the transform just made. The Box is freed
    // only by `close`, when Traffic Server closes the transform.
    unsafe {
        (*state).contp = connp;
        TSContDataSet(connp, state as *mut c_void);
    }
    shared.transforms[index(direction)].store(state as *mut c_void, Ordering::Release);
    let hook = if direction == StreamType::HttpRequest {
        TS_HTTP_REQUEST_TRANSFORM_HOOK
    } else {
        TS_HTTP_RESPONSE_TRANSFORM_HOOK
    };
    // SAFETY: `txnp` is live (contract) and `connp` a transform of it.
    unsafe { TSHttpTxnHookAdd(txnp, hook, connp) };
}

extern "C" fn on_transform_event(contp: TSCont, event: TSEvent, _edata: *mut c_void) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `contp` is the transform made in `add`; Traffic Server calls
        // it under its mutex, and its data is our Box<Transform>, freed only
        // by `close` below.
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

/// Traffic Server closed the transform: the transaction no longer hands it
/// anything, and its state and VConnection go.
///
/// # Safety
/// Called under the transform's mutex, once, with its live state; the
/// transaction may be gone already (only the shared part is used).
unsafe fn close(t: *mut Transform) {
    // SAFETY: the live state (contract), used by no one else under this mutex.
    let state = unsafe { &mut *t };
    let _ = state.shared.transforms[index(state.direction)].compare_exchange(
        t as *mut c_void,
        std::ptr::null_mut(),
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    if !state.output_buffer.is_null() {
        // SAFETY: the buffer and its reader were made together by
        // `open_output` and are freed only here, once.
        unsafe {
            TSIOBufferReaderFree(state.output_reader);
            TSIOBufferDestroy(state.output_buffer);
        }
    }
    // SAFETY: Traffic Server closed the transform, so it calls it no more;
    // the state came from `Box::into_raw` in `add` and, unlisted from
    // `transforms` above, is reachable from nothing else: freed once.
    unsafe {
        TSContDestroy(state.contp);
        drop(Box::from_raw(t));
    }
}

/// Runs `f` on the transaction under its continuation's mutex, which every
/// chain call holds (the hooks and the continuation's events run under it).
/// The transform's own mutex is the transaction's too, so this lock only
/// nests; it is taken all the same so that the rule does not depend on it.
///
/// # Safety
/// The transform is open (so the transaction is alive), and no other
/// reference to the transaction is in use on this thread.
unsafe fn with_txn<R>(t: &Transform, f: impl FnOnce(&mut Txn) -> R) -> R {
    struct Unlock(TSMutex);
    impl Drop for Unlock {
        fn drop(&mut self) {
            // SAFETY: locked below by this thread.
            unsafe { TSMutexUnlock(self.0) };
        }
    }
    let contp = t.shared.contp.load(Ordering::Acquire) as TSCont;
    // SAFETY: the transaction's continuation lives until TXN_CLOSE, after its
    // transforms closed (this one is open: contract); its mutex is
    // recursive, so taking it again on this thread only nests.
    let mutex = unsafe { TSContMutexGet(contp) };
    // SAFETY: as above; unlocked by `_unlock` on every path.
    unsafe { TSMutexLock(mutex) };
    let _unlock = Unlock(mutex);
    // SAFETY: the transaction is alive while the transform is open, and under
    // its mutex no other chain call uses it; no other reference to it is in
    // use on this thread (contract).
    f(unsafe { &mut *t.txn })
}

/// Reads what is available, runs it through the chain, does what it says.
///
/// # Safety
/// Called from the transform's own handler (or [`deliver`], under the same
/// mutex) with a live transform that is not closed.
unsafe fn step(contp: TSCont) {
    // SAFETY: the transform's data is its live Box<Transform> (contract), and
    // under the transform's mutex this is the only reference to it.
    let t = unsafe { &mut *(TSContDataGet(contp) as *mut Transform) };
    if t.finished || t.input_done {
        return;
    }
    // SAFETY: `contp` is an open transform (contract).
    let input = unsafe { TSVConnWriteVIOGet(contp) };
    let holds = t.direction == StreamType::HttpRequest || t.hold_output;
    if t.hold_output && t.output_vio.is_null() {
        t.shared.response_to_transform.store(true, Ordering::Release);
    }
    if t.output_vio.is_null() && !holds {
        // SAFETY: as this function's own contract.
        unsafe { open_output(contp, t, i64::MAX) };
    }
    // SAFETY: `input` is the open transform's write VIO.
    if unsafe { TSVIOBufferGet(input) }.is_null() {
        // The writer is gone: end the output with what was written.
        t.input_done = true;
        // SAFETY: as this function's own contract.
        unsafe { end_output(contp, t) };
        return;
    }
    // SAFETY: the VIO has a buffer (checked above), hence a reader.
    let (reader, todo) = unsafe { (TSVIOReaderGet(input), TSVIONTodoGet(input)) };
    // SAFETY: `reader` is the input VIO's live reader.
    let avail = unsafe { TSIOBufferReaderAvail(reader) }.min(todo);
    // The bytes: borrowed from the input's first block when it holds them all (the usual
    // small body: no allocation nor copy here), else copied. The reader is consumed only
    // once the chain is done with them.
    let mut copied: Vec<u8> = Vec::new();
    let mut borrowed: &[u8] = &[];
    if avail > 0 {
        // SAFETY: as above; the blocks belong to `reader`'s buffer, which
        // nobody else consumes while the transform's handler runs.
        let mut block = unsafe { TSIOBufferReaderStart(reader) };
        let mut first = true;
        while !block.is_null() && (copied.len() as i64) < avail {
            let mut n: i64 = 0;
            // SAFETY: `block` is a live block of `reader`'s buffer; `n` is writable.
            let p = unsafe { TSIOBufferBlockReadStart(block, reader, &mut n) };
            if p.is_null() || n <= 0 {
                // SAFETY: `block` is live (checked non-null above).
                block = unsafe { TSIOBufferBlockNext(block) };
                continue;
            }
            if first && n >= avail {
                // SAFETY: Traffic Server says `n` >= `avail` bytes are readable at
                // `p` until the reader is consumed, which happens below, after the
                // last use of `borrowed`.
                borrowed = unsafe { std::slice::from_raw_parts(p as *const u8, avail as usize) };
                break;
            }
            if first {
                copied.reserve_exact(avail as usize);
                first = false;
            }
            let take = n.min(avail - copied.len() as i64);
            // SAFETY: as above, `n` bytes readable at `p`; `take` <= `n`.
            copied.extend_from_slice(unsafe { std::slice::from_raw_parts(p as *const u8, take as usize) });
            // SAFETY: `block` is live (checked non-null above).
            block = unsafe { TSIOBufferBlockNext(block) };
        }
    }
    // The input is consumed up to here (see `consume` below): its end is reached when
    // nothing is left to do after these bytes.
    let eos = todo - avail.max(0) <= 0;
    let consume = |avail: i64| {
        if avail > 0 {
            // SAFETY: `avail` bytes were available to `reader` and the chain is
            // done with them; the VIO is the open transform's input.
            unsafe {
                TSIOBufferReaderConsume(reader, avail);
                TSVIONDoneSet(input, TSVIONDoneGet(input) + avail);
            }
        }
    };
    let mut chunk: &[u8] = if borrowed.is_empty() { &copied } else { borrowed };
    let dechunked;
    if let Some(d) = t.dechunk.as_mut() {
        match d.feed(chunk) {
            Ok(body) => {
                dechunked = body;
                chunk = &dechunked;
            }
            Err(e) => {
                consume(avail);
                // Never a silently shorter body: the request is aborted, as
                // Traffic Server aborts one whose body it cannot read.
                log(
                    LogLevel::Error,
                    &format!("[proxy_wasm] malformed chunked request body: {e}; the request is aborted"),
                );
                t.input_done = true;
                // SAFETY: the input VIO's continuation is its writer, live
                // while the VIO is; it expects this event with its VIO.
                unsafe { TSContCall(TSVIOContGet(input), TS_EVENT_ERROR, input as *mut c_void) };
                return;
            }
        }
    }
    if avail > 0 || eos {
        t.input_done = eos;
        if t.answered {
            consume(avail);
            // Read and dropped: the request is answered, not sent on.
            if eos {
                // SAFETY: as this function's own contract.
                unsafe { end_output(contp, t) };
            }
        } else {
            let direction = t.direction;
            // SAFETY: the transform is open (contract) and no reference to
            // the transaction is in use here.
            let flow = unsafe {
                with_txn(t, |txn| {
                    // Until SEND_REQUEST_HDR, request headers are the server request's.
                    if direction == StreamType::HttpRequest && !txn.answered_request_body() {
                        txn.shared.request_to_server.store(true, Ordering::Release);
                    }
                    let Some(chain) = txn.chain.as_mut() else {
                        return Flow::Forward { data: chunk.to_vec(), end_of_stream: eos };
                    };
                    let flow = if direction == StreamType::HttpRequest {
                        chain.on_request_body(chunk, eos)
                    } else {
                        chain.on_response_body(chunk, eos)
                    };
                    if direction == StreamType::HttpRequest {
                        txn.request_body_flow(&flow);
                    }
                    flow
                })
            };
            consume(avail);
            // SAFETY: as this function's own contract.
            unsafe { apply(contp, t, flow) };
        }
    } else {
        consume(avail);
    }
    if t.aborted {
        // Neither more input nor its end: the abort's error goes to the
        // input's writer (see `on_transform_event`).
        return;
    }
    if !eos {
        if avail > 0 {
            if !t.output_vio.is_null() {
                // SAFETY: the output VIO `open_output` made, live until `close`.
                unsafe { TSVIOReenable(t.output_vio) };
            }
            // SAFETY: the input VIO's writer, live while the VIO is, asked
            // for these events.
            unsafe { TSContCall(TSVIOContGet(input), TS_EVENT_VCONN_WRITE_READY, input as *mut c_void) };
        }
    } else {
        // The input is consumed, even if a plugin still holds the output.
        // SAFETY: as above.
        unsafe { TSContCall(TSVIOContGet(input), TS_EVENT_VCONN_WRITE_COMPLETE, input as *mut c_void) };
    }
}

/// The chain's result for this body from the transaction's continuation (a
/// plugin resumed, answered or closed the stream from another event, or the
/// pause timer fired).
///
/// # Safety
/// Called under the transaction's mutex (the transform's) with a transform
/// listed in `TxnShared::transforms` (open, not freed), and no reference to
/// the transaction in use.
pub unsafe fn deliver(t: *mut Transform, flow: Flow) {
    // SAFETY: a listed transform is open and not freed, and under the
    // transaction's mutex (the transform's) nothing else uses its state (contract).
    let t = unsafe { &mut *t };
    let contp = t.contp;
    // SAFETY: `contp` is that open transform.
    if unsafe { TSVConnClosedGet(contp) } != 0 || t.finished {
        return;
    }
    // SAFETY: as `step`'s contract, which this function's gives.
    unsafe { apply(contp, t, flow) };
}

/// Aborts the response transform's output, cut by the chain before
/// SEND_RESPONSE_HDR; called once that hook reenabled the transaction, which
/// has then set up the response's delivery from the transform.
///
/// # Safety
/// Called under the transaction's mutex with a transform listed in
/// `TxnShared::transforms` (open, not freed), or null.
pub unsafe fn abort_output(t: *mut Transform) {
    if t.is_null() {
        return;
    }
    // SAFETY: non-null, so a listed transform: open, not freed (contract);
    // only its VConnection is read.
    let contp = unsafe { (*t).contp };
    // SAFETY: `contp` is that live transform, used under its mutex (contract).
    unsafe {
        if TSVConnClosedGet(contp) != 0 {
            return;
        }
        TSVConnAbort(TSTransformOutputVConnGet(contp), 1);
    }
}

/// Does what the chain said.
///
/// # Safety
/// As [`step`].
unsafe fn apply(contp: TSCont, t: &mut Transform, flow: Flow) {
    match flow {
        Flow::Forward { data, end_of_stream } => {
            if t.direction == StreamType::HttpRequest {
                t.held.extend_from_slice(&data);
                // SAFETY: as this function's own contract.
                unsafe { check_held_request(t) };
                if end_of_stream || (t.answered && t.input_done) {
                    // SAFETY: as this function's own contract.
                    unsafe { end_output(contp, t) };
                }
            } else {
                if t.output_vio.is_null() {
                    // SAFETY: as this function's own contract.
                    unsafe { open_output(contp, t, i64::MAX) };
                }
                if !data.is_empty() {
                    // SAFETY: the output buffer and VIO `open_output` made,
                    // live until `close`; the buffer copies `data`.
                    unsafe {
                        TSIOBufferWrite(t.output_buffer, data.as_ptr() as *const c_void, data.len() as i64);
                        TSVIOReenable(t.output_vio);
                    }
                    t.written += data.len() as i64;
                }
                if end_of_stream {
                    // SAFETY: as this function's own contract.
                    unsafe { end_output(contp, t) };
                }
            }
        }
        // A plugin keeps what it got (it resumes, or the body goes on with
        // the next chunk), or waits at the end of the body for a resume
        // (the transaction's continuation goes on, or its pause timer ends it).
        Flow::Continue | Flow::Buffered | Flow::Wait => {}
        // Request: answered (recorded by `Txn::request_body_flow`, given at
        // SEND_REQUEST_HDR), or reset (Traffic Server's error response there).
        Flow::Respond(_) | Flow::Abort | Flow::Reset if t.direction == StreamType::HttpRequest => {
            t.answered = true;
            t.held = Vec::new();
            if t.input_done {
                // SAFETY: as this function's own contract.
                unsafe { end_output(contp, t) };
            }
        }
        // Response whose header still waits for the transform's output (an
        // entity's TransformResponse holds it): the answer replaces the
        // response, status, headers and body, as on NGINX.
        Flow::Respond(response) if t.hold_output && t.output_vio.is_null() && !t.finished => {
            if !replace_held_response(t, &response) {
                // The header cannot be written: the connection is closed.
                t.finished = true;
                t.aborted = true;
                t.shared.abort_response.store(true, Ordering::Release);
                return;
            }
            t.held = response.body;
            // SAFETY: as this function's own contract.
            unsafe { end_output(contp, t) };
        }
        // Response: its header went out (or goes out: the chain let it
        // through): the connection is closed so that the client cannot take a
        // cut response for a complete one. Before Traffic Server sent the
        // header (its SEND_RESPONSE_HDR), the abort waits for it
        // (`abort_output`).
        Flow::Respond(_) | Flow::Abort | Flow::Reset => {
            t.finished = true;
            t.aborted = true;
            if t.shared.response_source.load(Ordering::Acquire) == RESPONSE_TO_CLIENT {
                // SAFETY: `contp` is the open transform (contract).
                unsafe { TSVConnAbort(TSTransformOutputVConnGet(contp), 1) };
            } else {
                t.shared.abort_response.store(true, Ordering::Release);
            }
        }
    }
}

/// Writes `response`'s status and headers over the transform's response header, which the
/// client's is made from; false if there is none to write.
fn replace_held_response(t: &Transform, response: &proxy_wasm_host::host::LocalResponse) -> bool {
    let mut pairs = vec![(b":status".to_vec(), response.status.to_string().into_bytes())];
    pairs.extend(
        response
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with(b":") && !k.eq_ignore_ascii_case(b"content-length"))
            .cloned(),
    );
    matches!(t.shared.with_hdr(MapType::HttpResponseHeaders, |h| h.set_all(&pairs)), Ok(Some(())))
}

/// Traffic Server needs the length of a transformed request body before it
/// sends the request on, so the request transform holds what the chain let
/// through until the end of the body: within the smallest `max_body_size` of
/// the chain's plugins that read the body (`Chain::request_body_limit`). Past it the
/// request gets 413 (at SEND_REQUEST_HDR, once the client's body is read)
/// and is not sent on; the rest of the body is read and dropped.
///
/// # Safety
/// As [`step`].
unsafe fn check_held_request(t: &mut Transform) {
    let size = t.held.len() as u64;
    // SAFETY: as `step`'s contract, which this function's gives.
    let over = unsafe {
        with_txn(t, |txn| {
            let chain = txn.chain.as_ref()?;
            let (limit, plugin) = chain.request_body_limit()?;
            if size <= limit {
                return None;
            }
            let name = chain.vms().set().name(plugin).to_string();
            txn.answer_request_body(&proxy_wasm_host::chain::flow::body_too_large_response());
            Some((limit, name))
        })
    };
    let Some((limit, name)) = over else { return };
    t.held = Vec::new();
    t.answered = true;
    log(LogLevel::Warn, &format!("[proxy_wasm] {name}: the request body held for the plugins would reach {size} bytes, over its max_body_size ({limit} bytes): the request gets 413 and is not sent on"));
}

/// # Safety
/// As [`step`].
unsafe fn open_output(contp: TSCont, t: &mut Transform, nbytes: i64) {
    // The client's response header goes out now, made from the transform's.
    if t.direction == StreamType::HttpResponse {
        t.shared.response_to_transform.store(false, Ordering::Release);
    }
    // SAFETY: a new buffer and its reader (freed by `close`), written to the
    // output VConnection of `contp`, the open transform (contract).
    unsafe {
        t.output_buffer = TSIOBufferCreate();
        t.output_reader = TSIOBufferReaderAlloc(t.output_buffer);
        t.output_vio = TSVConnWrite(TSTransformOutputVConnGet(contp), contp, t.output_reader, nbytes);
    }
}

/// Ends the output: a held (request) body is written now, with its length
/// (none when the request was answered: the origin's response is replaced).
///
/// # Safety
/// As [`step`].
unsafe fn end_output(contp: TSCont, t: &mut Transform) {
    if t.finished {
        return;
    }
    if t.output_vio.is_null() {
        if t.answered {
            t.held.clear();
        }
        if t.dechunk.take().is_some() {
            t.held = encode_chunked(&std::mem::take(&mut t.held));
        }
        // SAFETY: as this function's own contract.
        unsafe { open_output(contp, t, t.held.len() as i64) };
        let held = std::mem::take(&mut t.held);
        if !held.is_empty() {
            // SAFETY: the buffer just made; it copies `held`.
            unsafe { TSIOBufferWrite(t.output_buffer, held.as_ptr() as *const c_void, held.len() as i64) };
            t.written += held.len() as i64;
        }
    }
    t.finished = true;
    // SAFETY: the output VIO, made above or earlier by `open_output`, live until `close`.
    unsafe {
        TSVIONBytesSet(t.output_vio, t.written);
        TSVIOReenable(t.output_vio);
    }
}
