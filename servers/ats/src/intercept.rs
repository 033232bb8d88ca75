//! A local response a remap rule's chain sends after remapping (its request
//! headers paused, and an `http_call` answer or the pause timeout ended the
//! wait), given as if the origin sent it: a server intercept
//! (`TSHttpTxnServerIntercept`) writes the status line, Content-Type,
//! Content-Length and body, and Traffic Server reads it as an origin response.
//! Its length is then trusted and the client connection kept, as NGINX keeps it;
//! Traffic Server's own error response, the only other answer it takes after
//! remapping, never trusts its length and closes the connection. The plugin's
//! other headers are set as for every answer of the chain
//! (`Txn::apply_local_headers`, at the response hooks).

use std::os::raw::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::server::log;
use super::sys::*;
use proxy_wasm_host::abi::LogLevel;
use proxy_wasm_host::host::LocalResponse;

/// One intercepted origin connection: the response to write, and the
/// VConnection with its buffers once Traffic Server connected.
struct Intercept {
    response: Vec<u8>,
    vc: TSVConn,
    read_buf: TSIOBuffer,
    read_reader: TSIOBufferReader,
    read_vio: TSVIO,
    write_buf: TSIOBuffer,
    write_reader: TSIOBufferReader,
    write_vio: TSVIO,
}

/// The response as an HTTP/1.1 message with its length.
fn serialize(response: &LocalResponse) -> Vec<u8> {
    let status = response.status;
    // SAFETY: a lookup in Traffic Server's static table; NULL or a static NUL-terminated string.
    let reason = unsafe { TSHttpHdrReasonLookup(status as TSHttpStatus) };
    let reason = if reason.is_null() {
        "Unknown".into()
    } else {
        // SAFETY: non-null: a static NUL-terminated string (above).
        unsafe { std::ffi::CStr::from_ptr(reason) }.to_string_lossy()
    };
    let content_type = response
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(b"content-type"))
        .map_or(&b"text/plain"[..], |(_, v)| v.as_slice());
    let mut out = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: ").into_bytes();
    out.extend_from_slice(content_type);
    out.extend_from_slice(format!("\r\nContent-Length: {}\r\n\r\n", response.body.len()).as_bytes());
    out.extend_from_slice(&response.body);
    out
}

/// Makes Traffic Server take `response` from an intercepted origin connection.
/// Called at POST_REMAP (held), before the transaction is reenabled.
///
/// # Safety
/// `txnp` is a live transaction that has not looked up its origin yet.
pub unsafe fn answer(txnp: TSHttpTxn, response: &LocalResponse) {
    let state = Box::new(Intercept {
        response: serialize(response),
        vc: std::ptr::null_mut(),
        read_buf: std::ptr::null_mut(),
        read_reader: std::ptr::null_mut(),
        read_vio: std::ptr::null_mut(),
        write_buf: std::ptr::null_mut(),
        write_reader: std::ptr::null_mut(),
        write_vio: std::ptr::null_mut(),
    });
    // SAFETY: a new continuation with its own mutex (the intercept needs one),
    // its data the state leaked here and freed by `finish` (or on
    // NET_ACCEPT_FAILED); `txnp` is live and before its origin lookup (contract).
    unsafe {
        let contp = TSContCreate(Some(on_intercept), TSMutexCreate());
        TSContDataSet(contp, Box::into_raw(state) as *mut c_void);
        TSHttpTxnServerIntercept(contp, txnp);
        // The answer is the chain's, not a document of the origin.
        TSHttpTxnServerRespNoStoreSet(txnp, 1);
    }
}

extern "C" fn on_intercept(contp: TSCont, event: TSEvent, edata: *mut c_void) -> c_int {
    // SAFETY: the continuation made by `answer`; its events come one at a time
    // under its mutex, and its data is the live state until `finish`.
    let r = catch_unwind(AssertUnwindSafe(|| unsafe { handle(contp, event, edata) }));
    if r.is_err() {
        log(
            LogLevel::Critical,
            "[proxy_wasm] internal error (panic) writing a local response through a server intercept",
        );
    }
    0
}

/// # Safety
/// As `on_intercept`: `contp` is the intercept's live continuation.
unsafe fn handle(contp: TSCont, event: TSEvent, edata: *mut c_void) {
    // SAFETY: the state leaked by `answer`, used only under the continuation's mutex.
    let raw = unsafe { TSContDataGet(contp) } as *mut Intercept;
    if raw.is_null() {
        return;
    }
    // SAFETY: as above.
    let state = unsafe { &mut *raw };
    match event {
        TS_EVENT_NET_ACCEPT => {
            state.vc = edata as TSVConn;
            let len = state.response.len() as i64;
            // SAFETY: `vc` is the intercepted connection Traffic Server handed
            // over; the buffers and readers are made here and freed by `finish`;
            // the write buffer copies the response.
            unsafe {
                state.read_buf = TSIOBufferCreate();
                state.read_reader = TSIOBufferReaderAlloc(state.read_buf);
                state.read_vio = TSVConnRead(state.vc, contp, state.read_buf, i64::MAX);
                state.write_buf = TSIOBufferCreate();
                state.write_reader = TSIOBufferReaderAlloc(state.write_buf);
                TSIOBufferWrite(state.write_buf, state.response.as_ptr() as *const c_void, len);
                state.write_vio = TSVConnWrite(state.vc, contp, state.write_reader, len);
            }
        }
        // The request Traffic Server sends on is not needed: read and dropped.
        TS_EVENT_VCONN_READ_READY => {
            // SAFETY: the reader and VIO made at NET_ACCEPT, live until `finish`.
            unsafe {
                let avail = TSIOBufferReaderAvail(state.read_reader);
                if avail > 0 {
                    TSIOBufferReaderConsume(state.read_reader, avail);
                }
                TSVIOReenable(state.read_vio);
            }
        }
        TS_EVENT_VCONN_READ_COMPLETE => {}
        TS_EVENT_VCONN_WRITE_READY => {
            // SAFETY: the write VIO made at NET_ACCEPT, live until `finish`.
            unsafe { TSVIOReenable(state.write_vio) };
        }
        // Before Traffic Server connected (the transaction ended first): no
        // connection to close.
        TS_EVENT_NET_ACCEPT_FAILED => {
            // SAFETY: the state leaked by `answer`, freed once; no more events come.
            unsafe {
                drop(Box::from_raw(raw));
                TSContDestroy(contp);
            }
        }
        // Written (or the transaction's side went away): done.
        _ => {
            // SAFETY: as this function's own contract.
            unsafe { finish(contp, raw) };
        }
    }
}

/// Closes the intercepted connection and frees the state and continuation.
///
/// # Safety
/// `raw` is the continuation's live state, freed here once; no event of the
/// continuation comes after the connection is closed.
unsafe fn finish(contp: TSCont, raw: *mut Intercept) {
    // SAFETY: the state leaked by `answer` (contract), taken back once.
    let state = unsafe { Box::from_raw(raw) };
    // SAFETY: each handle was made at NET_ACCEPT and is released once here;
    // closing the connection ends its VIOs first.
    unsafe {
        if !state.vc.is_null() {
            TSVConnClose(state.vc);
        }
        if !state.read_reader.is_null() {
            TSIOBufferReaderFree(state.read_reader);
            TSIOBufferDestroy(state.read_buf);
        }
        if !state.write_reader.is_null() {
            TSIOBufferReaderFree(state.write_reader);
            TSIOBufferDestroy(state.write_buf);
        }
        TSContDestroy(contp);
    }
}
