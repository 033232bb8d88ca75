//! The C API (`pwh_*`) for servers written in C.
//!
//! `cbindgen` turns this file into `include/proxy_wasm_host.h` on every build
//! (see `build.rs` and `cbindgen.toml`); the doc comments below are what C
//! programmers read, so they describe the contract in C terms.
//!
//! # Shape
//!
//! 1. `pwh_plugins_load` reads YAML files and compiles the plugins (once per
//!    process); the result may be shared by threads.
//! 2. `pwh_vms_start` builds the VMs of one server thread or worker from the
//!    plugins and a server vtable (`pwh_server_vtable`).
//! 3. Per transaction and plugin, `pwh_stream_create` with a stream vtable
//!    (`pwh_stream_vtable`), then `pwh_on_request_headers` ... and
//!    `pwh_finish_stream`.
//! 4. Events the server scheduled (ticks, queue notifications, HTTP call
//!    answers) go back with `pwh_on_tick`, `pwh_on_queue_ready`,
//!    `pwh_on_http_call_response` / `pwh_on_http_call_failed`.
//!
//! Instead of step 3, a server can let the host run the filter chain, with
//! the same rules as Traffic Server and NGINX (order, pauses and resumes,
//! failure policies, body limits, `pause_timeout`): `pwh_chain_new` per
//! transaction with a chain vtable (`pwh_chain_vtable`: pause timer, wake-up),
//! then `pwh_chain_on_request_headers` ... `pwh_chain_on_response_body`, each
//! filling a `pwh_chain_step` that says what to do (`pwh_flow`),
//! `pwh_chain_resume` / `pwh_chain_on_pause_timeout` from the server's events,
//! and `pwh_chain_free`.
//!
//! A plugin is addressed by its index in the loaded list (`plugin_index`).
//! Server callbacks name a root context by `(vm_index, root_context_id)`;
//! `pwh_vms_find_plugin` turns that into a plugin index.
//!
//! # Conventions
//!
//! * Every function catches Rust panics: a panic becomes an error result,
//!   never an unwind into C.
//! * Fallible functions take a nullable `pwh_buffer *error` last; on failure
//!   the message replaces its contents (on success it is left alone).
//! * `pwh_bytes` arguments are borrowed for the duration of the call only;
//!   `{NULL, 0}` is the empty string.
//! * Callbacks return `pwh_status` values (`PWH_STATUS_OK` = 0). A NULL
//!   callback has the documented default behaviour.
//! * Header maps cross the boundary in the Proxy-Wasm "pairs" encoding;
//!   `pwh_pairs_add`, `pwh_pairs_count` and `pwh_pairs_get` build and read it.
//! * A `pwh_vms` is used by one thread at a time, and callbacks must not call
//!   back into the `pwh_vms` that is calling them (such a call fails with an
//!   error instead of corrupting state).

#![allow(non_camel_case_types)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::any::Any;
use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::ops::{Deref, DerefMut, Range};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::abi::pairs::{self, Pair};
use crate::abi::{LogLevel, MapType, Status, StreamType};
use crate::chain::{Chain, ChainServer, ChainVms, Flow, Phase, PluginSet, Signals};
use crate::config;
use crate::host::{
    HttpCallRequest, HttpCallResponse, HttpStream, LocalResponse, PluginRef, ServerHost,
};
use crate::loader::{self, LoadedPlugin, PluginRoot, PluginVms};
use crate::vm::{Verdict, Vm, VmError};

// ------------------------------------------------------------------ enumerations

/// What a stream callback decided (returned by `pwh_on_request_headers` and the
/// other `pwh_on_request_*` / `pwh_on_response_*` functions).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pwh_verdict {
    /// Go on to the next plugin, then the server.
    Continue = 0,
    /// Hold this direction until the plugin resumes it (the stream vtable's `resume`).
    Pause = 1,
    /// The plugin sent a local response or closed the stream: skip the rest of the chain.
    Stop = 2,
    /// The call failed (the message is in `error`); apply the plugin's failure policy
    /// (`pwh_plugins_fail_open`).
    Error = -1,
}

/// Proxy-Wasm status codes (`proxy_result_t`), returned by callbacks and some functions.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pwh_status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

/// Log levels (`proxy_log_level_t`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pwh_log_level {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// Header maps (`proxy_map_type_t`). Stream callbacks see the first four.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pwh_map_type {
    HttpRequestHeaders = 0,
    HttpRequestTrailers = 1,
    HttpResponseHeaders = 2,
    HttpResponseTrailers = 3,
    GrpcReceiveInitialMetadata = 4,
    GrpcReceiveTrailingMetadata = 5,
    HttpCallResponseHeaders = 6,
    HttpCallResponseTrailers = 7,
}

/// Directions of a stream (`proxy_stream_type_t`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pwh_stream_type {
    HttpRequest = 0,
    HttpResponse = 1,
    Downstream = 2,
    Upstream = 3,
}

fn status_from_code(code: i32) -> Status {
    match code {
        0 => Status::Ok,
        1 => Status::NotFound,
        2 => Status::BadArgument,
        3 => Status::SerializationFailure,
        4 => Status::ParseFailure,
        6 => Status::InvalidMemoryAccess,
        7 => Status::Empty,
        8 => Status::CasMismatch,
        12 => Status::Unimplemented,
        // Unknown codes from C are treated as a generic failure.
        _ => Status::InternalFailure,
    }
}

fn result_from_code(code: i32) -> Result<(), Status> {
    if code == 0 {
        Ok(())
    } else {
        Err(status_from_code(code))
    }
}

fn verdict_code(v: Verdict) -> i32 {
    match v {
        Verdict::Continue => pwh_verdict::Continue as i32,
        Verdict::Pause => pwh_verdict::Pause as i32,
        Verdict::Stop => pwh_verdict::Stop as i32,
    }
}

// ------------------------------------------------------------------ bytes and buffers

/// Borrowed bytes: `len` bytes at `ptr`, valid for the duration of one call.
/// `ptr` may be NULL when `len` is 0. Not NUL-terminated.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pwh_bytes {
    pub ptr: *const u8,
    pub len: usize,
}

impl pwh_bytes {
    const EMPTY: pwh_bytes = pwh_bytes {
        ptr: ptr::null(),
        len: 0,
    };

    fn of(bytes: &[u8]) -> pwh_bytes {
        pwh_bytes {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// The borrowed slice, or `None` for a NULL pointer with a non-zero length
    /// (or a length no allocation can have).
    ///
    /// # Safety
    /// Unless NULL, `ptr` must be valid for reads of `len` bytes during `'a`.
    unsafe fn as_slice<'a>(self) -> Option<&'a [u8]> {
        if self.len == 0 {
            return Some(&[]);
        }
        if self.ptr.is_null() || self.len > isize::MAX as usize {
            return None;
        }
        // SAFETY: non-null, length within isize::MAX, and the caller guarantees
        // the memory is readable for `len` bytes during 'a.
        Some(unsafe { std::slice::from_raw_parts(self.ptr, self.len) })
    }
}

/// # Safety
/// As [`pwh_bytes::as_slice`].
unsafe fn bytes_arg<'a>(b: pwh_bytes, name: &str) -> Result<&'a [u8], String> {
    // SAFETY: forwarded from the caller.
    unsafe { b.as_slice() }.ok_or_else(|| format!("{name}: NULL pointer with non-zero length"))
}

/// An owned, growable byte buffer (a Rust `Vec<u8>`). Create with
/// `pwh_buffer_new`, free with `pwh_buffer_free`. Used for output parameters
/// (error messages, header maps, bodies, property values).
#[derive(Debug, Default)]
pub struct pwh_buffer {
    bytes: Vec<u8>,
}

/// Replaces the contents of `error` with `message`.
///
/// # Safety
/// `error` must be NULL or point to a live `pwh_buffer` that is not borrowed elsewhere.
unsafe fn set_error(error: *mut pwh_buffer, message: &str) {
    // SAFETY: per the caller's contract the pointer is NULL or valid and unaliased.
    if let Some(buf) = unsafe { error.as_mut() } {
        buf.bytes.clear();
        buf.bytes.extend_from_slice(message.as_bytes());
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Runs `body` under `catch_unwind` for a function without an error parameter.
fn guard<T>(on_panic: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(on_panic)
}

/// Runs `body` under `catch_unwind`; an `Err` or a panic becomes a message in
/// `error` and the `fail` value.
///
/// # Safety
/// `error` must be NULL or point to a live `pwh_buffer` not borrowed elsewhere.
unsafe fn ffi_call<T>(
    error: *mut pwh_buffer,
    fail: T,
    body: impl FnOnce() -> Result<T, String>,
) -> T {
    let message = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => return value,
        Ok(Err(message)) => message,
        Err(payload) => format!(
            "internal error (Rust panic): {}",
            panic_message(payload.as_ref())
        ),
    };
    let report = || {
        // SAFETY: forwarded from the caller.
        unsafe { set_error(error, &message) }
    };
    let _ = catch_unwind(AssertUnwindSafe(report));
    fail
}

/// A new, empty buffer. Never NULL (allocation failure aborts the process).
#[no_mangle]
pub extern "C" fn pwh_buffer_new() -> *mut pwh_buffer {
    guard(ptr::null_mut(), || Box::into_raw(Box::default()))
}

/// Frees a buffer from `pwh_buffer_new`. NULL is ignored.
///
/// # Safety
/// `buf` must be NULL or a buffer from `pwh_buffer_new` that was not freed yet.
#[no_mangle]
pub unsafe extern "C" fn pwh_buffer_free(buf: *mut pwh_buffer) {
    if buf.is_null() {
        return;
    }
    let free = || {
        // SAFETY: the pointer came from Box::into_raw in pwh_buffer_new and is freed only once (contract).
        drop(unsafe { Box::from_raw(buf) });
    };
    guard((), free)
}

/// The buffer's bytes; valid until the buffer is next changed or freed.
/// NULL when `buf` is NULL. Not NUL-terminated (see `pwh_buffer_cstr`).
///
/// # Safety
/// `buf` must be NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_buffer_data(buf: *const pwh_buffer) -> *const u8 {
    // SAFETY: NULL or a live buffer (contract); only read.
    let buf = unsafe { buf.as_ref() };
    guard(ptr::null(), || {
        buf.map_or(ptr::null(), |b| b.bytes.as_ptr())
    })
}

/// The number of bytes in the buffer (0 when `buf` is NULL).
///
/// # Safety
/// `buf` must be NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_buffer_len(buf: *const pwh_buffer) -> usize {
    // SAFETY: NULL or a live buffer (contract); only read.
    let buf = unsafe { buf.as_ref() };
    guard(0, || buf.map_or(0, |b| b.bytes.len()))
}

/// The contents as a NUL-terminated string (a NUL is kept after the data, not
/// counted by `pwh_buffer_len`); valid until the buffer is next changed or
/// freed. Contents with an embedded NUL appear cut short. NULL when `buf` is NULL.
///
/// # Safety
/// `buf` must be NULL or a live buffer not used by another thread meanwhile.
#[no_mangle]
pub unsafe extern "C" fn pwh_buffer_cstr(buf: *mut pwh_buffer) -> *const c_char {
    // SAFETY: NULL or a live, unaliased buffer (contract).
    let buf = unsafe { buf.as_mut() };
    guard(ptr::null(), || match buf {
        None => ptr::null(),
        Some(b) => {
            b.bytes.reserve(1);
            // Writes the terminator into spare capacity: the length is unchanged.
            b.bytes.spare_capacity_mut()[0].write(0);
            b.bytes.as_ptr().cast()
        }
    })
}

/// Replaces the buffer's contents with `len` bytes from `data` (`data` may be
/// NULL when `len` is 0). Returns `PWH_STATUS_OK`, or `PWH_STATUS_BAD_ARGUMENT`
/// for a NULL `buf` or NULL `data` with a non-zero `len`. C callbacks use it to
/// return data through their `pwh_buffer *out` parameter.
///
/// # Safety
/// `buf` must be NULL or a live buffer; `data` must be readable for `len` bytes
/// and must not point into `buf` itself.
#[no_mangle]
pub unsafe extern "C" fn pwh_buffer_set(buf: *mut pwh_buffer, data: *const u8, len: usize) -> i32 {
    // SAFETY: NULL or a live, unaliased buffer (contract).
    let buf = unsafe { buf.as_mut() };
    // SAFETY: readable for `len` bytes (contract).
    let data = unsafe { pwh_bytes { ptr: data, len }.as_slice() };
    guard(pwh_status::InternalFailure as i32, || match (buf, data) {
        (Some(b), Some(d)) => {
            b.bytes.clear();
            b.bytes.extend_from_slice(d);
            pwh_status::Ok as i32
        }
        _ => pwh_status::BadArgument as i32,
    })
}

/// Appends `len` bytes from `data` to the buffer. Same results as `pwh_buffer_set`.
///
/// # Safety
/// As `pwh_buffer_set`.
#[no_mangle]
pub unsafe extern "C" fn pwh_buffer_append(
    buf: *mut pwh_buffer,
    data: *const u8,
    len: usize,
) -> i32 {
    // SAFETY: NULL or a live, unaliased buffer (contract).
    let buf = unsafe { buf.as_mut() };
    // SAFETY: readable for `len` bytes (contract).
    let data = unsafe { pwh_bytes { ptr: data, len }.as_slice() };
    guard(pwh_status::InternalFailure as i32, || match (buf, data) {
        (Some(b), Some(d)) => {
            b.bytes.extend_from_slice(d);
            pwh_status::Ok as i32
        }
        _ => pwh_status::BadArgument as i32,
    })
}

// ------------------------------------------------------------------ pairs encoding

/// Where each key and value of a pairs encoding lies, validating it. Unlike
/// `pairs::decode` (for plugin input) this has no size limits: the server's
/// own maps may be large.
type Span = Range<usize>;

fn pair_spans(b: &[u8]) -> Result<Vec<(Span, Span)>, Status> {
    if b.is_empty() {
        return Ok(Vec::new());
    }
    let read_u32 = |at: usize| -> Result<usize, Status> {
        let s = b.get(at..at + 4).ok_or(Status::BadArgument)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
    };
    let count = read_u32(0)?;
    let mut pos = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .ok_or(Status::BadArgument)?;
    if pos > b.len() {
        return Err(Status::BadArgument);
    }
    let mut take = |len: usize| -> Result<Range<usize>, Status> {
        let end = pos.checked_add(len).ok_or(Status::BadArgument)?;
        if b.get(end) != Some(&0) {
            return Err(Status::BadArgument);
        }
        let r = pos..end;
        pos = end + 1;
        Ok(r)
    };
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let klen = read_u32(4 + i * 8)?;
        let vlen = read_u32(8 + i * 8)?;
        let key = take(klen)?;
        let value = take(vlen)?;
        out.push((key, value));
    }
    Ok(out)
}

fn decode_pairs(b: &[u8]) -> Result<Vec<Pair>, Status> {
    Ok(pair_spans(b)?
        .into_iter()
        .map(|(k, v)| (b[k].to_vec(), b[v].to_vec()))
        .collect())
}

/// The number of pairs in a pairs encoding, or -1 when it is malformed.
///
/// # Safety
/// `pairs` must be readable.
#[no_mangle]
pub unsafe extern "C" fn pwh_pairs_count(pairs: pwh_bytes) -> i64 {
    // SAFETY: readable for its length (contract).
    let pairs = unsafe { pairs.as_slice() };
    guard(-1, || match pairs.map(pair_spans) {
        Some(Ok(spans)) => spans.len() as i64,
        _ => -1,
    })
}

/// Pair number `index` of a pairs encoding: `*key` and `*value` point into
/// `pairs` (each followed by a NUL byte, not counted in `len`). Returns
/// `PWH_STATUS_OK`, `PWH_STATUS_NOT_FOUND` past the last pair, or
/// `PWH_STATUS_BAD_ARGUMENT` for a malformed encoding or a NULL out-parameter.
///
/// # Safety
/// `pairs` must be readable; `key` and `value` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pwh_pairs_get(
    pairs: pwh_bytes,
    index: usize,
    key: *mut pwh_bytes,
    value: *mut pwh_bytes,
) -> i32 {
    // SAFETY: readable for its length (contract).
    let bytes = unsafe { pairs.as_slice() };
    // SAFETY: NULL or writable (contract); nothing else refers to them during the call.
    let (key, value) = unsafe { (key.as_mut(), value.as_mut()) };
    guard(pwh_status::InternalFailure as i32, || {
        let (Some(bytes), Some(key), Some(value)) = (bytes, key, value) else {
            return pwh_status::BadArgument as i32;
        };
        match pair_spans(bytes) {
            Err(_) => pwh_status::BadArgument as i32,
            Ok(spans) => match spans.get(index) {
                None => pwh_status::NotFound as i32,
                Some((k, v)) => {
                    *key = pwh_bytes::of(&bytes[k.clone()]);
                    *value = pwh_bytes::of(&bytes[v.clone()]);
                    pwh_status::Ok as i32
                }
            },
        }
    })
}

/// Appends one pair to the pairs encoding held in `pairs` (an empty buffer is
/// the empty map). Returns `PWH_STATUS_OK`, or `PWH_STATUS_BAD_ARGUMENT` when
/// the buffer does not hold a valid encoding or an argument is NULL.
///
/// # Safety
/// `pairs` must be NULL or a live buffer; `key` and `value` must be readable
/// and must not point into `pairs`.
#[no_mangle]
pub unsafe extern "C" fn pwh_pairs_add(
    pairs: *mut pwh_buffer,
    key: pwh_bytes,
    value: pwh_bytes,
) -> i32 {
    // SAFETY: NULL or a live, unaliased buffer (contract).
    let buf = unsafe { pairs.as_mut() };
    // SAFETY: readable for their lengths (contract).
    let (key, value) = unsafe { (key.as_slice(), value.as_slice()) };
    guard(pwh_status::InternalFailure as i32, || {
        let (Some(buf), Some(key), Some(value)) = (buf, key, value) else {
            return pwh_status::BadArgument as i32;
        };
        match decode_pairs(&buf.bytes) {
            Err(_) => pwh_status::BadArgument as i32,
            Ok(mut list) => {
                list.push((key.to_vec(), value.to_vec()));
                buf.bytes = pairs::encode(&list);
                pwh_status::Ok as i32
            }
        }
    })
}

// ------------------------------------------------------------------ server vtable

/// Writes one log line of a plugin. `level` is a `pwh_log_level`.
pub type pwh_log_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        plugin_name: pwh_bytes,
        level: i32,
        message: pwh_bytes,
    ),
>;

/// The server's current log threshold, a `pwh_log_level`.
pub type pwh_log_level_fn = Option<unsafe extern "C" fn(user_data: *mut c_void) -> i32>;

/// Starts an outgoing HTTP call made by root context `root_context_id` of VM
/// `vm_index`. `headers` and `trailers` are pairs encodings (pseudo-headers
/// `:method`, `:path`, `:authority` included); `timeout_ms` 0 means none.
/// Returns `PWH_STATUS_OK` when started: the answer must then come back through
/// `pwh_on_http_call_response` or `pwh_on_http_call_failed` with `token`, later
/// (never from inside this callback). `PWH_STATUS_BAD_ARGUMENT` for an upstream
/// the server cannot parse, `PWH_STATUS_INTERNAL_FAILURE` when the call cannot start.
///
/// Each VM numbers its calls itself (from 1; a new `pwh_vms` starts again
/// from 1), so a call is identified by (`pwh_vms`, `vm_index`, `token`): a
/// server that keeps the calls of several VMs or several `pwh_vms` (a reload,
/// a replacement after a failure) in one table must key them by all three.
/// The plugin's `vm_config.limits.max_pending_http_calls` is checked before
/// this callback runs; an answer larger than its
/// `max_http_call_response_size` reaches the plugin as a failure (status 413
/// from `proxy_get_status`), so a server may stop reading a larger answer and
/// report it with `pwh_on_http_call_failed` and code 413.
pub type pwh_dispatch_http_call_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        vm_index: usize,
        root_context_id: u32,
        token: u32,
        upstream: pwh_bytes,
        headers: pwh_bytes,
        body: pwh_bytes,
        trailers: pwh_bytes,
        timeout_ms: u32,
    ) -> i32,
>;

/// Drops interest in call `token` of VM `vm_index` (of the `pwh_vms` whose
/// vtable this is): no answer is expected after this.
pub type pwh_cancel_http_call_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, vm_index: usize, token: u32)>;

/// Arms (`period_ms` > 0) or disarms (`period_ms` = 0) the periodic
/// `pwh_on_tick` of a root context.
pub type pwh_set_tick_period_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        vm_index: usize,
        root_context_id: u32,
        period_ms: u32,
    ),
>;

/// A shared queue registered by a root context got data: arrange for
/// `pwh_on_queue_ready` to run on the thread that owns the `pwh_vms`.
/// May be called from ANY thread, also while another thread uses the `pwh_vms`.
pub type pwh_notify_queue_ready_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        vm_index: usize,
        root_context_id: u32,
        queue_id: u32,
    ),
>;

/// Reads a property: `path` is dotted (`request.path`, `node.id`; segments are
/// joined with '.'). On `PWH_STATUS_OK` the value is in `out` (use
/// `pwh_buffer_set`); `PWH_STATUS_NOT_FOUND` when there is no such property.
pub type pwh_get_property_fn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, path: pwh_bytes, out: *mut pwh_buffer) -> i32,
>;

/// `proxy_call_foreign_function`: runs the server function `name` on
/// `argument`; the result goes in `out`. `PWH_STATUS_NOT_FOUND` for an unknown name.
pub type pwh_call_foreign_function_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        name: pwh_bytes,
        argument: pwh_bytes,
        out: *mut pwh_buffer,
    ) -> i32,
>;

/// Server-wide services, shared by every VM of a `pwh_vms`. The struct is
/// copied by `pwh_vms_start`; `user_data` must stay valid until `pwh_vms_free`
/// returns. Every callback may be NULL.
///
/// Threads: the callbacks run on the thread currently driving the `pwh_vms`,
/// except `notify_queue_ready`, which may run on any thread. The server
/// guarantees that `user_data` tolerates that. `pwh_vms_free` waits for a
/// `notify_queue_ready` in progress to return, and none starts after it, so do
/// not call `pwh_vms_free` while holding a lock that `notify_queue_ready` takes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pwh_server_vtable {
    /// Passed as the first argument of every callback.
    pub user_data: *mut c_void,
    /// NULL: log lines are dropped.
    pub log: pwh_log_fn,
    /// NULL: `PWH_LOG_LEVEL_INFO`.
    pub log_level: pwh_log_level_fn,
    /// NULL: every call fails to start (`PWH_STATUS_INTERNAL_FAILURE`).
    pub dispatch_http_call: pwh_dispatch_http_call_fn,
    /// NULL: nothing to do.
    pub cancel_http_call: pwh_cancel_http_call_fn,
    /// NULL: timers are never armed.
    pub set_tick_period: pwh_set_tick_period_fn,
    /// NULL: queue notifications are dropped.
    pub notify_queue_ready: pwh_notify_queue_ready_fn,
    /// Server-level properties (outside any stream). NULL: none.
    pub get_property: pwh_get_property_fn,
    /// NULL: no foreign functions (`PWH_STATUS_NOT_FOUND`).
    pub call_foreign_function: pwh_call_foreign_function_fn,
}

/// Closed by `pwh_vms_free`: no `notify_queue_ready` runs after it returns.
#[derive(Default)]
struct Gate {
    closed: RwLock<bool>,
}

impl Gate {
    fn close(&self) {
        *self.closed.write().unwrap_or_else(|p| p.into_inner()) = true;
    }
}

/// The `ServerHost` of one VM, calling into a C vtable.
struct CServer {
    vt: pwh_server_vtable,
    vm_index: usize,
    gate: Arc<Gate>,
}

// SAFETY: `pwh_server_vtable`'s contract makes the C side responsible for the
// thread-safety of `user_data` and the callbacks: they run on the thread
// driving the VMs, and `notify_queue_ready` on any thread.
unsafe impl Send for CServer {}
// SAFETY: as for Send; `&CServer` only copies the vtable's fields and calls them.
unsafe impl Sync for CServer {}

impl ServerHost for CServer {
    fn log(&self, plugin: &PluginRef, level: LogLevel, message: &str) {
        if let Some(f) = self.vt.log {
            // SAFETY: a callback and user_data the server supplied together; the
            // byte views borrow strings that outlive the call.
            unsafe {
                f(
                    self.vt.user_data,
                    pwh_bytes::of(plugin.name.as_bytes()),
                    level as i32,
                    pwh_bytes::of(message.as_bytes()),
                )
            }
        }
    }

    fn log_level(&self) -> LogLevel {
        let Some(f) = self.vt.log_level else {
            return LogLevel::Info;
        };
        // SAFETY: a callback and user_data the server supplied together.
        let level = unsafe { f(self.vt.user_data) };
        LogLevel::try_from(level).unwrap_or(LogLevel::Info)
    }

    fn dispatch_http_call(
        &self,
        root_context_id: u32,
        token: u32,
        request: HttpCallRequest,
    ) -> Result<(), Status> {
        let Some(f) = self.vt.dispatch_http_call else {
            return Err(Status::InternalFailure);
        };
        let headers = pairs::encode(&request.headers);
        let trailers = pairs::encode(&request.trailers);
        // 0 means "no timeout" to C, so a timeout under 1 ms is rounded up.
        let timeout_ms = request
            .timeout
            .map_or(0, |t| t.as_millis().clamp(1, u32::MAX as u128) as u32);
        // SAFETY: a callback and user_data the server supplied together; the byte
        // views borrow data that outlives the call.
        let code = unsafe {
            f(
                self.vt.user_data,
                self.vm_index,
                root_context_id,
                token,
                pwh_bytes::of(request.upstream.as_bytes()),
                pwh_bytes::of(&headers),
                pwh_bytes::of(&request.body),
                pwh_bytes::of(&trailers),
                timeout_ms,
            )
        };
        result_from_code(code)
    }

    fn cancel_http_call(&self, token: u32) {
        if let Some(f) = self.vt.cancel_http_call {
            // SAFETY: a callback and user_data the server supplied together.
            unsafe { f(self.vt.user_data, self.vm_index, token) }
        }
    }

    fn set_tick_period(&self, root_context_id: u32, period: Option<Duration>) {
        if let Some(f) = self.vt.set_tick_period {
            let ms = period.map_or(0, |p| p.as_millis().clamp(1, u32::MAX as u128) as u32);
            // SAFETY: a callback and user_data the server supplied together.
            unsafe { f(self.vt.user_data, self.vm_index, root_context_id, ms) }
        }
    }

    fn notify_queue_ready(&self, root_context_id: u32, queue_id: u32) {
        let Some(f) = self.vt.notify_queue_ready else {
            return;
        };
        // Held (shared) during the call so that pwh_vms_free waits for it.
        let closed = self.gate.closed.read().unwrap_or_else(|p| p.into_inner());
        if !*closed {
            // SAFETY: a callback and user_data the server supplied together; the
            // gate is open, so pwh_vms_free has not returned and user_data is live.
            unsafe { f(self.vt.user_data, self.vm_index, root_context_id, queue_id) }
        }
    }

    fn property(&self, path: &[&[u8]]) -> Result<Option<Vec<u8>>, Status> {
        call_get_property(self.vt.get_property, self.vt.user_data, path)
    }

    fn call_foreign_function(&self, name: &str, argument: &[u8]) -> Result<Vec<u8>, Status> {
        let Some(f) = self.vt.call_foreign_function else {
            return Err(Status::NotFound);
        };
        let mut out = pwh_buffer::default();
        // SAFETY: a callback and user_data the server supplied together; `out` is
        // a live buffer that only the callee uses during the call.
        let code = unsafe {
            f(
                self.vt.user_data,
                pwh_bytes::of(name.as_bytes()),
                pwh_bytes::of(argument),
                &mut out,
            )
        };
        result_from_code(code).map(|()| out.bytes)
    }
}

fn call_get_property(
    f: pwh_get_property_fn,
    user_data: *mut c_void,
    path: &[&[u8]],
) -> Result<Option<Vec<u8>>, Status> {
    let Some(f) = f else { return Ok(None) };
    let dotted = path.join(&b'.');
    let mut out = pwh_buffer::default();
    // SAFETY: a callback and user_data the server supplied together (contract of
    // both vtables); `out` is a live buffer that only the callee uses meanwhile.
    match unsafe { f(user_data, pwh_bytes::of(&dotted), &mut out) } {
        0 => Ok(Some(out.bytes)),
        1 => Ok(None),
        code => Err(status_from_code(code)),
    }
}

// ------------------------------------------------------------------ stream vtable

/// Writes header map `map_type` (a `pwh_map_type`) into `out` as a pairs
/// encoding (`pwh_pairs_add`). A map that does not exist (yet) is empty.
pub type pwh_get_header_map_fn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, map_type: i32, out: *mut pwh_buffer) -> i32,
>;

/// Replaces a whole header map with `pairs` (a pairs encoding, `pwh_pairs_get`).
pub type pwh_set_header_map_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, map_type: i32, pairs: pwh_bytes) -> i32>;

/// Adds a value (`add_header`), or replaces all values of `key`, adding it
/// when absent (`replace_header`). Keys compare case-insensitively.
pub type pwh_set_header_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        map_type: i32,
        key: pwh_bytes,
        value: pwh_bytes,
    ) -> i32,
>;

/// Removes all values of `key`; removing an absent key is `PWH_STATUS_OK`.
pub type pwh_remove_header_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, map_type: i32, key: pwh_bytes) -> i32>;

/// Sends a response made by the plugin instead of the upstream's. `details`
/// is Envoy's response code details, `headers` a pairs encoding, `grpc_status`
/// -1 when none. `PWH_STATUS_BAD_ARGUMENT` once the response headers went out.
pub type pwh_send_local_response_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        status: u32,
        details: pwh_bytes,
        body: pwh_bytes,
        headers: pwh_bytes,
        grpc_status: i32,
    ) -> i32,
>;

/// Resumes (`resume`) or resets (`close`) a direction, a `pwh_stream_type`.
/// `resume` runs after the callback that asked for it returned, and must do
/// nothing on a direction that is not paused.
pub type pwh_stream_op_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, stream_type: i32) -> i32>;

/// Writes a property the server understands (e.g. `request.path`);
/// `PWH_STATUS_NOT_FOUND` lets the host keep the value for the plugin itself.
pub type pwh_set_property_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, path: pwh_bytes, value: pwh_bytes) -> i32>;

/// Releases `user_data`; called exactly once per `pwh_stream_create` call.
pub type pwh_destroy_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// One HTTP transaction as one plugin sees it. Copied by `pwh_stream_create`;
/// from then on `destroy(user_data)` is called exactly once, after which no
/// callback of the stream runs: before `pwh_finish_stream` returns (also when
/// the plugin keeps its context until `proxy_done`), by `pwh_vms_free` for
/// streams never finished, or before `pwh_stream_create` returns when it
/// fails. Every callback may be NULL.
///
/// Header maps include pseudo-headers (`:method`, `:path`, `:authority`,
/// `:scheme` on request headers, `:status` on response headers). Callbacks run
/// on the thread driving the `pwh_vms` and must not call into it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pwh_stream_vtable {
    /// Passed as the first argument of every callback.
    pub user_data: *mut c_void,
    /// NULL: every map is empty.
    pub get_header_map: pwh_get_header_map_fn,
    /// NULL (this and the other writers): `PWH_STATUS_UNIMPLEMENTED`.
    pub set_header_map: pwh_set_header_map_fn,
    /// Adds one value to a map.
    pub add_header: pwh_set_header_fn,
    /// Replaces all values of a key, adding it when absent.
    pub replace_header: pwh_set_header_fn,
    pub remove_header: pwh_remove_header_fn,
    pub send_local_response: pwh_send_local_response_fn,
    /// Resumes a paused direction.
    pub resume: pwh_stream_op_fn,
    /// Resets a direction.
    pub close: pwh_stream_op_fn,
    /// Stream properties with Envoy's names and encodings (`request.path`,
    /// `source.address`...); the host answers `plugin_*` itself. NULL: none.
    pub get_property: pwh_get_property_fn,
    /// NULL: `PWH_STATUS_NOT_FOUND` (the host keeps the value for the plugin).
    pub set_property: pwh_set_property_fn,
    /// NULL: nothing to release.
    pub destroy: pwh_destroy_fn,
}

/// The `HttpStream` of one stream context, calling into a C vtable.
struct CStream {
    vt: pwh_stream_vtable,
    /// Set once `destroy` ran; the C side is never called again.
    released: bool,
}

// SAFETY: `pwh_stream_vtable`'s contract: the callbacks and user_data are used
// from whichever thread drives the pwh_vms, one thread at a time, which the C
// side allows by handing them over.
unsafe impl Send for CStream {}

impl CStream {
    fn new(vt: pwh_stream_vtable) -> CStream {
        CStream {
            vt,
            released: false,
        }
    }

    /// The vtable while the C stream is still there.
    fn live(&self) -> Option<&pwh_stream_vtable> {
        (!self.released).then_some(&self.vt)
    }

    /// Calls `destroy` the first time only.
    fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        if let Some(f) = self.vt.destroy {
            // SAFETY: a callback and user_data the server supplied together;
            // `released` guarantees this runs at most once.
            unsafe { f(self.vt.user_data) }
        }
    }

    /// A writer: the callback, BAD_ARGUMENT once released, UNIMPLEMENTED when NULL.
    fn writer<F>(
        &self,
        pick: impl FnOnce(&pwh_stream_vtable) -> Option<F>,
    ) -> Result<(*mut c_void, F), Status> {
        let vt = self.live().ok_or(Status::BadArgument)?;
        let f = pick(vt).ok_or(Status::Unimplemented)?;
        Ok((vt.user_data, f))
    }

    fn set_header(
        &mut self,
        pick: impl FnOnce(&pwh_stream_vtable) -> pwh_set_header_fn,
        map: MapType,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), Status> {
        let (user_data, f) = self.writer(pick)?;
        // SAFETY: a callback and user_data the server supplied together, not
        // released yet; the byte views borrow data that outlives the call.
        result_from_code(unsafe {
            f(
                user_data,
                map as i32,
                pwh_bytes::of(key),
                pwh_bytes::of(value),
            )
        })
    }

    fn stream_op(
        &mut self,
        pick: impl FnOnce(&pwh_stream_vtable) -> pwh_stream_op_fn,
        stream: StreamType,
    ) -> Result<(), Status> {
        let (user_data, f) = self.writer(pick)?;
        // SAFETY: a callback and user_data the server supplied together, not released yet.
        result_from_code(unsafe { f(user_data, stream as i32) })
    }
}

impl Drop for CStream {
    fn drop(&mut self) {
        self.release();
    }
}

impl HttpStream for CStream {
    fn header_map(&self, map: MapType) -> Result<Vec<Pair>, Status> {
        let Some((user_data, Some(f))) = self.live().map(|vt| (vt.user_data, vt.get_header_map))
        else {
            return Ok(Vec::new());
        };
        let mut out = pwh_buffer::default();
        // SAFETY: a callback and user_data the server supplied together, not
        // released yet; `out` is a live buffer that only the callee uses meanwhile.
        result_from_code(unsafe { f(user_data, map as i32, &mut out) })?;
        // A malformed encoding is the server's bug, not the plugin's.
        decode_pairs(&out.bytes).map_err(|_| Status::InternalFailure)
    }

    fn set_header_map(&mut self, map: MapType, pairs: Vec<Pair>) -> Result<(), Status> {
        let (user_data, f) = self.writer(|vt| vt.set_header_map)?;
        let encoded = pairs::encode(&pairs);
        // SAFETY: a callback and user_data the server supplied together, not
        // released yet; the byte view borrows data that outlives the call.
        result_from_code(unsafe { f(user_data, map as i32, pwh_bytes::of(&encoded)) })
    }

    fn add_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        self.set_header(|vt| vt.add_header, map, key, value)
    }

    fn replace_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        self.set_header(|vt| vt.replace_header, map, key, value)
    }

    fn remove_header(&mut self, map: MapType, key: &[u8]) -> Result<(), Status> {
        let (user_data, f) = self.writer(|vt| vt.remove_header)?;
        // SAFETY: a callback and user_data the server supplied together, not
        // released yet; the byte view borrows data that outlives the call.
        result_from_code(unsafe { f(user_data, map as i32, pwh_bytes::of(key)) })
    }

    fn send_local_response(&mut self, response: LocalResponse) -> Result<(), Status> {
        let (user_data, f) = self.writer(|vt| vt.send_local_response)?;
        let headers = pairs::encode(&response.headers);
        // SAFETY: a callback and user_data the server supplied together, not
        // released yet; the byte views borrow data that outlives the call.
        let code = unsafe {
            f(
                user_data,
                response.status,
                pwh_bytes::of(response.details.as_bytes()),
                pwh_bytes::of(&response.body),
                pwh_bytes::of(&headers),
                response.grpc_status,
            )
        };
        result_from_code(code)
    }

    fn resume(&mut self, stream: StreamType) -> Result<(), Status> {
        self.stream_op(|vt| vt.resume, stream)
    }

    fn close(&mut self, stream: StreamType) -> Result<(), Status> {
        self.stream_op(|vt| vt.close, stream)
    }

    fn property(&self, path: &[&[u8]]) -> Result<Option<Vec<u8>>, Status> {
        match self.live() {
            Some(vt) => call_get_property(vt.get_property, vt.user_data, path),
            None => Ok(None),
        }
    }

    /// The transaction is over but the plugin keeps its context until
    /// `proxy_done`: the C stream is released now, and reads answer empty from
    /// here on, writes BAD_ARGUMENT.
    fn detach(&mut self) {
        self.release();
    }

    fn set_property(&mut self, path: &[&[u8]], value: &[u8]) -> Result<(), Status> {
        let Some((user_data, Some(f))) = self.live().map(|vt| (vt.user_data, vt.set_property))
        else {
            return Err(Status::NotFound);
        };
        let dotted = path.join(&b'.');
        // SAFETY: a callback and user_data the server supplied together, not
        // released yet; the byte views borrow data that outlives the call.
        result_from_code(unsafe { f(user_data, pwh_bytes::of(&dotted), pwh_bytes::of(value)) })
    }
}

// ------------------------------------------------------------------ plugins

/// Loaded, compiled plugins (from `pwh_plugins_load`). Immutable: may be used
/// by several threads at once, e.g. for `pwh_vms_start` on every worker.
pub struct pwh_plugins {
    plugins: Vec<LoadedPlugin>,
}

const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<pwh_plugins>();
};

#[cfg(unix)]
fn path_from_c(s: &CStr) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(s.to_bytes()))
}

#[cfg(not(unix))]
fn path_from_c(s: &CStr) -> PathBuf {
    PathBuf::from(s.to_string_lossy().into_owned())
}

/// Reads the `n` YAML files at `yaml_paths` (NUL-terminated paths) and
/// compiles their plugins, in order. Returns NULL on failure, with a message
/// naming the file (and line, plugin) in `error`.
///
/// # Safety
/// `yaml_paths` must point to `n` NUL-terminated strings; `error` must be NULL
/// or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_plugins_load(
    yaml_paths: *const *const c_char,
    n: usize,
    error: *mut pwh_buffer,
) -> *mut pwh_plugins {
    let body = || {
        if n == 0 {
            return Err("pwh_plugins_load: no configuration file given".to_string());
        }
        if yaml_paths.is_null() {
            return Err("pwh_plugins_load: yaml_paths is NULL".to_string());
        }
        // SAFETY: non-null and pointing to `n` pointers (contract).
        let raw = unsafe { std::slice::from_raw_parts(yaml_paths, n) };
        let mut paths = Vec::with_capacity(n);
        for (i, p) in raw.iter().enumerate() {
            if p.is_null() {
                return Err(format!("pwh_plugins_load: yaml_paths[{i}] is NULL"));
            }
            // SAFETY: a non-null, NUL-terminated string (contract).
            paths.push(path_from_c(unsafe { CStr::from_ptr(*p) }));
        }
        let configs = config::load_files(&paths).map_err(|e| e.to_string())?;
        let plugins = loader::load(&configs).map_err(|e| e.to_string())?;
        Ok(Box::into_raw(Box::new(pwh_plugins { plugins })))
    };
    // SAFETY: `error` is NULL or a live buffer (contract).
    unsafe { ffi_call(error, ptr::null_mut(), body) }
}

/// Frees plugins from `pwh_plugins_load`; NULL is ignored. VMs already started
/// from them are not affected.
///
/// # Safety
/// `plugins` must be NULL or from `pwh_plugins_load`, not freed yet, and not in
/// use by another thread.
#[no_mangle]
pub unsafe extern "C" fn pwh_plugins_free(plugins: *mut pwh_plugins) {
    if plugins.is_null() {
        return;
    }
    let free = || {
        // SAFETY: from Box::into_raw in pwh_plugins_load, freed once (contract).
        drop(unsafe { Box::from_raw(plugins) });
    };
    guard((), free)
}

/// The number of plugins (0 for NULL). Plugin indexes run from 0 to count - 1.
///
/// # Safety
/// `plugins` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn pwh_plugins_count(plugins: *const pwh_plugins) -> usize {
    // SAFETY: NULL or live (contract); only read.
    let plugins = unsafe { plugins.as_ref() };
    guard(0, || plugins.map_or(0, |p| p.plugins.len()))
}

/// The name of plugin `index` (not NUL-terminated), valid while `plugins` is;
/// `{NULL, 0}` for a bad index.
///
/// # Safety
/// `plugins` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn pwh_plugins_name(plugins: *const pwh_plugins, index: usize) -> pwh_bytes {
    // SAFETY: NULL or live (contract); only read.
    let plugins = unsafe { plugins.as_ref() };
    guard(pwh_bytes::EMPTY, || {
        plugins
            .and_then(|p| p.plugins.get(index))
            .map_or(pwh_bytes::EMPTY, |p| {
                pwh_bytes::of(p.config.name.as_bytes())
            })
    })
}

/// The failure policy of plugin `index`: 1 when traffic passes while the plugin
/// cannot run (`fail_open: true`), 0 when it is refused, -1 for a bad index.
///
/// # Safety
/// `plugins` must be NULL or live.
#[no_mangle]
pub unsafe extern "C" fn pwh_plugins_fail_open(plugins: *const pwh_plugins, index: usize) -> i32 {
    // SAFETY: NULL or live (contract); only read.
    let plugins = unsafe { plugins.as_ref() };
    guard(-1, || match plugins.and_then(|p| p.plugins.get(index)) {
        Some(p) => (p.config.failure_policy == config::FailurePolicy::FailOpen) as i32,
        None => -1,
    })
}

// ------------------------------------------------------------------ VMs

struct VmsState {
    vms: PluginVms,
    /// Live stream contexts: (vm index, context id) -> plugin index.
    streams: HashMap<(usize, u32), usize>,
}

/// The VMs of one server thread or worker (from `pwh_vms_start`). Used by one
/// thread at a time; may move between threads.
pub struct pwh_vms {
    /// Set while a call uses `state`: catches re-entry from callbacks and
    /// concurrent use, which would otherwise alias `state`.
    busy: AtomicBool,
    state: UnsafeCell<VmsState>,
    /// Immutable copy of `PluginVms::roots`, readable without `busy`.
    roots: Vec<PluginRoot>,
    gate: Arc<Gate>,
    /// The plugins, for the chains run on these VMs (`pwh_chain_new`).
    set: PluginSet,
}

// "May move between threads": the VMs and streams are Send.
const _: () = {
    const fn movable<T: Send>() {}
    movable::<VmsState>();
};

/// Exclusive access to the state of a `pwh_vms`.
struct VmsGuard<'a> {
    owner: &'a pwh_vms,
}

impl pwh_vms {
    fn lock(&self) -> Result<VmsGuard<'_>, String> {
        if self.busy.swap(true, Ordering::Acquire) {
            return Err("pwh_vms is busy: called from one of its own callbacks, or from two threads at once".to_string());
        }
        Ok(VmsGuard { owner: self })
    }

    fn root(&self, plugin_index: usize) -> Result<PluginRoot, String> {
        self.roots.get(plugin_index).copied().ok_or_else(|| {
            format!(
                "no plugin with index {plugin_index} (there are {})",
                self.roots.len()
            )
        })
    }
}

impl Deref for VmsGuard<'_> {
    type Target = VmsState;
    fn deref(&self) -> &VmsState {
        // SAFETY: `busy` was false and is now true for this guard's lifetime, so
        // no other guard (hence no other reference into `state`) exists.
        unsafe { &*self.owner.state.get() }
    }
}

impl DerefMut for VmsGuard<'_> {
    fn deref_mut(&mut self) -> &mut VmsState {
        // SAFETY: as in `deref`; `&mut self` makes this borrow unique within the guard.
        unsafe { &mut *self.owner.state.get() }
    }
}

impl Drop for VmsGuard<'_> {
    fn drop(&mut self) {
        self.owner.busy.store(false, Ordering::Release);
    }
}

/// Starts the plugins on new VMs (plugins with the same `vm_id`, code and VM
/// configuration share one), each VM with a server host calling `vtable`.
/// Server callbacks may run during the call (logs, timers armed by the
/// plugins' configure step). `plugins` may be freed afterwards. Returns NULL on
/// failure, with the message in `error`.
///
/// # Safety
/// `plugins` and `vtable` must be NULL or live; `error` NULL or a live buffer;
/// `vtable->user_data` must stay valid until `pwh_vms_free` returns.
#[no_mangle]
pub unsafe extern "C" fn pwh_vms_start(
    plugins: *const pwh_plugins,
    vtable: *const pwh_server_vtable,
    error: *mut pwh_buffer,
) -> *mut pwh_vms {
    // SAFETY: NULL or live (contract); only read.
    let plugins = unsafe { plugins.as_ref() };
    // SAFETY: NULL or live (contract); copied.
    let vtable = unsafe { vtable.as_ref() }.copied();
    let body = || {
        let plugins = plugins.ok_or("pwh_vms_start: plugins is NULL")?;
        let vt = vtable.ok_or("pwh_vms_start: vtable is NULL")?;
        let gate = Arc::new(Gate::default());
        let mut vm_count = 0;
        let started = PluginVms::start(&plugins.plugins, |_key| {
            let server = CServer {
                vt,
                vm_index: vm_count,
                gate: gate.clone(),
            };
            vm_count += 1;
            Arc::new(server) as Arc<dyn ServerHost>
        });
        match started {
            Ok(vms) => {
                debug_assert_eq!(vms.vms.len(), vm_count);
                let roots = vms.roots.clone();
                let state = VmsState {
                    vms,
                    streams: HashMap::new(),
                };
                Ok(Box::into_raw(Box::new(pwh_vms {
                    busy: AtomicBool::new(false),
                    state: UnsafeCell::new(state),
                    roots,
                    gate,
                    set: PluginSet::new(plugins.plugins.clone()),
                })))
            }
            Err(e) => {
                gate.close();
                Err(e.to_string())
            }
        }
    };
    // SAFETY: `error` is NULL or a live buffer (contract).
    unsafe { ffi_call(error, ptr::null_mut(), body) }
}

/// Shuts every plugin down (`proxy_on_done` / `proxy_on_delete` of the root
/// contexts), destroys streams never finished (their `destroy` runs) and frees
/// the VMs. NULL is ignored. No server callback runs after it returns.
///
/// # Safety
/// `vms` must be NULL or from `pwh_vms_start` and not freed yet; no other
/// thread may use it meanwhile. Called from one of its own callbacks, it does
/// nothing (the VMs are leaked rather than freed under the caller).
#[no_mangle]
pub unsafe extern "C" fn pwh_vms_free(vms: *mut pwh_vms) {
    if vms.is_null() {
        return;
    }
    let free = || {
        let gate = {
            // SAFETY: a live pwh_vms from pwh_vms_start (contract); shared access only.
            let shared = unsafe { &*vms };
            let Ok(mut state) = shared.lock() else { return };
            // A plugin that wants to finish later (`false`) or fails is dropped anyway.
            let _ = state.vms.shutdown();
            shared.gate.clone()
        };
        gate.close();
        // SAFETY: from Box::into_raw in pwh_vms_start, freed once, and no guard or
        // reference into it is left (contract: no other user meanwhile).
        drop(unsafe { Box::from_raw(vms) });
    };
    guard((), free)
}

/// The plugin whose root context is `root_context_id` in VM `vm_index`, as
/// named by server callbacks, into `*plugin_index`. Returns `PWH_STATUS_OK`,
/// `PWH_STATUS_NOT_FOUND`, or `PWH_STATUS_BAD_ARGUMENT` for NULL arguments.
/// Safe to call from any thread and from callbacks.
///
/// # Safety
/// `vms` must be NULL or live; `plugin_index` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pwh_vms_find_plugin(
    vms: *const pwh_vms,
    vm_index: usize,
    root_context_id: u32,
    plugin_index: *mut usize,
) -> i32 {
    // SAFETY: NULL or live (contract); only `roots`, which never changes, is read.
    let vms = unsafe { vms.as_ref() };
    // SAFETY: NULL or writable (contract).
    let out = unsafe { plugin_index.as_mut() };
    guard(pwh_status::InternalFailure as i32, || {
        let (Some(vms), Some(out)) = (vms, out) else {
            return pwh_status::BadArgument as i32;
        };
        match vms
            .roots
            .iter()
            .position(|r| r.vm == vm_index && r.root_context_id == root_context_id)
        {
            Some(i) => {
                *out = i;
                pwh_status::Ok as i32
            }
            None => pwh_status::NotFound as i32,
        }
    })
}

/// Runs `f` on the VM of `plugin_index` (with its root context id), checking
/// that `stream` (when given) is a live stream context of that plugin.
///
/// # Safety
/// `vms` must be NULL or live; `error` NULL or a live buffer.
unsafe fn on_vm<T>(
    vms: *mut pwh_vms,
    plugin_index: usize,
    stream: Option<u32>,
    error: *mut pwh_buffer,
    fail: T,
    f: impl FnOnce(&mut Vm, u32) -> Result<T, VmError>,
) -> T {
    // SAFETY: NULL or live (contract); shared access, exclusive access goes through `lock`.
    let vms = unsafe { vms.as_ref() };
    let body = || {
        let vms = vms.ok_or("vms is NULL")?;
        let root = vms.root(plugin_index)?;
        let mut state = vms.lock()?;
        if let Some(ctx) = stream {
            match state.streams.get(&(root.vm, ctx)) {
                Some(&p) if p == plugin_index => {}
                Some(&p) => {
                    return Err(format!(
                        "stream context {ctx} belongs to plugin {p}, not {plugin_index}"
                    ))
                }
                None => {
                    return Err(format!(
                    "no stream context {ctx} for plugin {plugin_index} (finished or never created)"
                ))
                }
            }
        }
        f(&mut state.vms.vms[root.vm], root.root_context_id).map_err(|e| e.to_string())
    };
    // SAFETY: `error` is NULL or a live buffer (contract).
    unsafe { ffi_call(error, fail, body) }
}

const FAILED: i32 = -1;

/// Reports `message` in `error` and returns -1.
///
/// # Safety
/// `error` must be NULL or a live buffer.
unsafe fn fail_with(error: *mut pwh_buffer, message: String) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { ffi_call(error, FAILED, || Err(message)) }
}

/// Creates a stream context of plugin `plugin_index` for one transaction and
/// returns its id (never 0), or 0 on failure. The id is valid with this
/// `plugin_index` only. `vtable` is copied; see `pwh_stream_vtable` for when
/// `destroy` runs.
///
/// # Safety
/// `vms` and `vtable` must be NULL or live; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_stream_create(
    vms: *mut pwh_vms,
    plugin_index: usize,
    vtable: *const pwh_stream_vtable,
    error: *mut pwh_buffer,
) -> u32 {
    // SAFETY: NULL or live (contract); copied.
    let Some(vt) = (unsafe { vtable.as_ref() }).copied() else {
        // SAFETY: `error` is NULL or a live buffer (contract).
        return unsafe {
            ffi_call(error, 0, || {
                Err("pwh_stream_create: vtable is NULL".to_string())
            })
        };
    };
    // From here on `destroy` runs exactly once: when `stream` is dropped, on any path.
    let stream = CStream::new(vt);
    // SAFETY: NULL or live (contract); shared access, exclusive access goes through `lock`.
    let vms = unsafe { vms.as_ref() };
    let body = move || {
        let vms = vms.ok_or("vms is NULL")?;
        let root = vms.root(plugin_index)?;
        let mut state = vms.lock()?;
        let ctx = state.vms.vms[root.vm]
            .create_stream(root.root_context_id, Box::new(stream))
            .map_err(|e| e.to_string())?;
        state.streams.insert((root.vm, ctx), plugin_index);
        Ok(ctx)
    };
    // SAFETY: `error` is NULL or a live buffer (contract).
    unsafe { ffi_call(error, 0, body) }
}

/// `proxy_on_request_headers`: the request headers (`num_headers` pairs,
/// pseudo-headers included) are readable through the stream vtable.
/// `end_of_stream` is true when no body follows. Returns a `pwh_verdict`.
///
/// # Safety
/// `vms` must be NULL or live; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_on_request_headers(
    vms: *mut pwh_vms,
    plugin_index: usize,
    context_id: u32,
    num_headers: usize,
    end_of_stream: bool,
    error: *mut pwh_buffer,
) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        on_vm(
            vms,
            plugin_index,
            Some(context_id),
            error,
            FAILED,
            |vm, _| {
                vm.on_request_headers(context_id, num_headers, end_of_stream)
                    .map(verdict_code)
            },
        )
    }
}

/// `proxy_on_request_body` with one more chunk. The plugin sees everything it
/// did not let through yet; on `PWH_VERDICT_CONTINUE` send on what
/// `pwh_take_body` returns, on `PWH_VERDICT_PAUSE` keep feeding chunks (or, at
/// end of stream, wait for `resume`). Returns a `pwh_verdict`.
///
/// # Safety
/// `vms` must be NULL or live; `chunk` readable; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_on_request_body(
    vms: *mut pwh_vms,
    plugin_index: usize,
    context_id: u32,
    chunk: pwh_bytes,
    end_of_stream: bool,
    error: *mut pwh_buffer,
) -> i32 {
    // SAFETY: readable for its length (contract).
    let chunk = match unsafe { bytes_arg(chunk, "chunk") } {
        Ok(c) => c,
        // SAFETY: `error` is NULL or a live buffer (contract).
        Err(message) => return unsafe { fail_with(error, message) },
    };
    // SAFETY: forwarded contract.
    unsafe {
        on_vm(
            vms,
            plugin_index,
            Some(context_id),
            error,
            FAILED,
            |vm, _| {
                vm.on_request_body(context_id, chunk, end_of_stream)
                    .map(verdict_code)
            },
        )
    }
}

/// `proxy_on_request_trailers` (`num_trailers` pairs). Returns a `pwh_verdict`.
///
/// # Safety
/// `vms` must be NULL or live; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_on_request_trailers(
    vms: *mut pwh_vms,
    plugin_index: usize,
    context_id: u32,
    num_trailers: usize,
    error: *mut pwh_buffer,
) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        on_vm(
            vms,
            plugin_index,
            Some(context_id),
            error,
            FAILED,
            |vm, _| {
                vm.on_request_trailers(context_id, num_trailers)
                    .map(verdict_code)
            },
        )
    }
}

/// `proxy_on_response_headers`, as `pwh_on_request_headers`. Returns a `pwh_verdict`.
///
/// # Safety
/// `vms` must be NULL or live; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_on_response_headers(
    vms: *mut pwh_vms,
    plugin_index: usize,
    context_id: u32,
    num_headers: usize,
    end_of_stream: bool,
    error: *mut pwh_buffer,
) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        on_vm(
            vms,
            plugin_index,
            Some(context_id),
            error,
            FAILED,
            |vm, _| {
                vm.on_response_headers(context_id, num_headers, end_of_stream)
                    .map(verdict_code)
            },
        )
    }
}

/// `proxy_on_response_body`, as `pwh_on_request_body`. Returns a `pwh_verdict`.
///
/// # Safety
/// `vms` must be NULL or live; `chunk` readable; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_on_response_body(
    vms: *mut pwh_vms,
    plugin_index: usize,
    context_id: u32,
    chunk: pwh_bytes,
    end_of_stream: bool,
    error: *mut pwh_buffer,
) -> i32 {
    // SAFETY: readable for its length (contract).
    let chunk = match unsafe { bytes_arg(chunk, "chunk") } {
        Ok(c) => c,
        // SAFETY: `error` is NULL or a live buffer (contract).
        Err(message) => return unsafe { fail_with(error, message) },
    };
    // SAFETY: forwarded contract.
    unsafe {
        on_vm(
            vms,
            plugin_index,
            Some(context_id),
            error,
            FAILED,
            |vm, _| {
                vm.on_response_body(context_id, chunk, end_of_stream)
                    .map(verdict_code)
            },
        )
    }
}

/// `proxy_on_response_trailers`, as `pwh_on_request_trailers`. Returns a `pwh_verdict`.
///
/// # Safety
/// `vms` must be NULL or live; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_on_response_trailers(
    vms: *mut pwh_vms,
    plugin_index: usize,
    context_id: u32,
    num_trailers: usize,
    error: *mut pwh_buffer,
) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        on_vm(
            vms,
            plugin_index,
            Some(context_id),
            error,
            FAILED,
            |vm, _| {
                vm.on_response_trailers(context_id, num_trailers)
                    .map(verdict_code)
            },
        )
    }
}

/// Moves the body bytes the plugin let through (possibly edited) for direction
/// `stream_type` (`PWH_STREAM_TYPE_HTTP_REQUEST` or `_HTTP_RESPONSE`) into
/// `out`, replacing its contents. Returns 0, or -1 on error.
///
/// # Safety
/// `vms` and `out` must be NULL or live; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_take_body(
    vms: *mut pwh_vms,
    plugin_index: usize,
    context_id: u32,
    stream_type: i32,
    out: *mut pwh_buffer,
    error: *mut pwh_buffer,
) -> i32 {
    // SAFETY: NULL or a live buffer that nothing else uses during the call (contract).
    let out = unsafe { out.as_mut() };
    let direction = match StreamType::try_from(stream_type) {
        Ok(d @ (StreamType::HttpRequest | StreamType::HttpResponse)) => Some(d),
        _ => None,
    };
    let (Some(out), Some(direction)) = (out, direction) else {
        let message = if direction.is_none() {
            format!("pwh_take_body: bad stream type {stream_type}")
        } else {
            "pwh_take_body: out is NULL".to_string()
        };
        // SAFETY: `error` is NULL or a live buffer (contract).
        return unsafe { fail_with(error, message) };
    };
    // SAFETY: forwarded contract.
    unsafe {
        on_vm(
            vms,
            plugin_index,
            Some(context_id),
            error,
            FAILED,
            |vm, _| {
                out.bytes = vm.take_body(context_id, direction)?;
                Ok(0)
            },
        )
    }
}

/// Ends a stream context, also for aborted transactions: `proxy_on_done`,
/// `proxy_on_log`, `proxy_on_delete`, and the stream's `destroy`. Returns 0,
/// or 1 when the plugin keeps its context until it calls `proxy_done` (its
/// `proxy_on_log` and `proxy_on_delete` run then, without the stream), or -1
/// when a plugin callback failed. In every case `destroy` has run and
/// `context_id` is no longer valid when this returns.
///
/// # Safety
/// `vms` must be NULL or live; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_finish_stream(
    vms: *mut pwh_vms,
    plugin_index: usize,
    context_id: u32,
    error: *mut pwh_buffer,
) -> i32 {
    // SAFETY: NULL or live (contract); shared access, exclusive access goes through `lock`.
    let vms = unsafe { vms.as_ref() };
    let body = || {
        let vms = vms.ok_or("vms is NULL")?;
        let root = vms.root(plugin_index)?;
        let mut state = vms.lock()?;
        match state.streams.get(&(root.vm, context_id)) {
            Some(&p) if p == plugin_index => {}
            Some(&p) => return Err(format!("stream context {context_id} belongs to plugin {p}, not {plugin_index}")),
            None => return Err(format!("no stream context {context_id} for plugin {plugin_index} (finished or never created)")),
        }
        state.streams.remove(&(root.vm, context_id));
        state.vms.vms[root.vm]
            .finish_stream(context_id)
            .map(|gone| if gone { 0 } else { 1 })
            .map_err(|e| e.to_string())
    };
    // SAFETY: `error` is NULL or a live buffer (contract).
    unsafe { ffi_call(error, FAILED, body) }
}

/// `proxy_on_tick` of the plugin's root context, for a timer armed through
/// `set_tick_period`. Returns 0, or -1 on error.
///
/// # Safety
/// `vms` must be NULL or live; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_on_tick(
    vms: *mut pwh_vms,
    plugin_index: usize,
    error: *mut pwh_buffer,
) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        on_vm(vms, plugin_index, None, error, FAILED, |vm, root| {
            vm.on_tick(root).map(|()| 0)
        })
    }
}

/// `proxy_on_queue_ready(queue_id)` of the plugin's root context, after
/// `notify_queue_ready`. Returns 0, or -1 on error.
///
/// # Safety
/// `vms` must be NULL or live; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_on_queue_ready(
    vms: *mut pwh_vms,
    plugin_index: usize,
    queue_id: u32,
    error: *mut pwh_buffer,
) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        on_vm(vms, plugin_index, None, error, FAILED, |vm, root| {
            vm.on_queue_ready(root, queue_id).map(|()| 0)
        })
    }
}

/// Delivers the answer to call `token` (from `dispatch_http_call`):
/// `headers` (with `:status`) and `trailers` are pairs encodings. Unknown or
/// cancelled tokens are ignored. Returns 0, or -1 on error.
///
/// # Safety
/// `vms` must be NULL or live; the bytes readable; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_on_http_call_response(
    vms: *mut pwh_vms,
    plugin_index: usize,
    token: u32,
    headers: pwh_bytes,
    body: pwh_bytes,
    trailers: pwh_bytes,
    error: *mut pwh_buffer,
) -> i32 {
    // SAFETY: readable for their lengths (contract).
    let parts = unsafe {
        (
            bytes_arg(headers, "headers"),
            bytes_arg(body, "body"),
            bytes_arg(trailers, "trailers"),
        )
    };
    // Decoded under catch_unwind too: the bytes come from the caller.
    let response = catch_unwind(AssertUnwindSafe(|| {
        let headers =
            decode_pairs(parts.0?).map_err(|_| "headers: malformed pairs encoding".to_string())?;
        let trailers =
            decode_pairs(parts.2?).map_err(|_| "trailers: malformed pairs encoding".to_string())?;
        Ok(HttpCallResponse {
            headers,
            body: parts.1?.to_vec(),
            trailers,
            failure: None,
        })
    }))
    .unwrap_or_else(|_| Err("internal error (panic) decoding the response".to_string()));
    // SAFETY: forwarded contract.
    unsafe { deliver_http_call(vms, plugin_index, token, response, error) }
}

/// Delivers the failure of call `token` (connect error, reset, timeout): the
/// plugin gets no headers, and `proxy_get_status` reports `code` and
/// `message`. Returns 0, or -1 on error.
///
/// # Safety
/// `vms` must be NULL or live; `message` readable; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_on_http_call_failed(
    vms: *mut pwh_vms,
    plugin_index: usize,
    token: u32,
    code: u32,
    message: pwh_bytes,
    error: *mut pwh_buffer,
) -> i32 {
    // SAFETY: readable for its length (contract).
    let message = unsafe { bytes_arg(message, "message") };
    let response = message.map(|m| HttpCallResponse::failed(code, String::from_utf8_lossy(m)));
    // SAFETY: forwarded contract.
    unsafe { deliver_http_call(vms, plugin_index, token, response, error) }
}

/// # Safety
/// `vms` must be NULL or live; `error` NULL or a live buffer.
unsafe fn deliver_http_call(
    vms: *mut pwh_vms,
    plugin_index: usize,
    token: u32,
    response: Result<HttpCallResponse, String>,
    error: *mut pwh_buffer,
) -> i32 {
    let response = match response {
        Ok(r) => r,
        // SAFETY: `error` is NULL or a live buffer (contract).
        Err(message) => return unsafe { fail_with(error, message) },
    };
    // SAFETY: forwarded contract.
    unsafe {
        on_vm(vms, plugin_index, None, error, FAILED, |vm, _| {
            vm.on_http_call_response(token, response).map(|()| 0)
        })
    }
}

/// `proxy_on_foreign_function(function_id)` of the plugin's root context, with
/// `data` as the call data. Returns 0, or -1 on error.
///
/// # Safety
/// `vms` must be NULL or live; `data` readable; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_on_foreign_function(
    vms: *mut pwh_vms,
    plugin_index: usize,
    function_id: u32,
    data: pwh_bytes,
    error: *mut pwh_buffer,
) -> i32 {
    // SAFETY: readable for its length (contract).
    let data = match unsafe { bytes_arg(data, "data") } {
        Ok(d) => d.to_vec(),
        // SAFETY: `error` is NULL or a live buffer (contract).
        Err(message) => return unsafe { fail_with(error, message) },
    };
    // SAFETY: forwarded contract.
    unsafe {
        on_vm(vms, plugin_index, None, error, FAILED, |vm, root| {
            vm.on_foreign_function(root, function_id, data).map(|()| 0)
        })
    }
}

// ------------------------------------------------------------------ chains

/// What a `pwh_chain_*` call tells the server to do next (`pwh_chain_step.flow`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pwh_flow {
    /// Headers: every plugin is through, pass the headers on. Body: pass on
    /// the bytes written to `out` (`end_of_stream`: they end the body).
    Continue = 0,
    /// Body: a plugin keeps what it got; nothing to pass on yet, keep feeding.
    Buffered = 1,
    /// A plugin paused: hold this direction (read no more of its body) until
    /// `pwh_chain_resume` or `pwh_chain_on_pause_timeout`; the pause timer was
    /// armed through `pwh_chain_vtable.arm_pause_timer`.
    Wait = 2,
    /// Answer with the response `pwh_chain_response` gives instead (a local
    /// response, or 503 / 413 / 504 made by the chain): from a request phase
    /// the request is not sent on; from the response headers it replaces the
    /// response (status, headers and body).
    Respond = 3,
    /// The response headers are out: end the response abnormally (close the
    /// connection).
    Abort = 4,
    /// A plugin closed the stream: reset it.
    Reset = 5,
    /// `pwh_chain_resume` / `pwh_chain_on_pause_timeout`: nothing to do.
    Nothing = 6,
}

/// The phase a `pwh_chain_step` is about (`pwh_chain_step.phase`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pwh_phase {
    RequestHeaders = 0,
    RequestBody = 1,
    ResponseHeaders = 2,
    ResponseBody = 3,
}

fn phase_code(phase: Phase) -> i32 {
    (match phase {
        Phase::RequestHeaders => pwh_phase::RequestHeaders,
        Phase::RequestBody => pwh_phase::RequestBody,
        Phase::ResponseHeaders => pwh_phase::ResponseHeaders,
        Phase::ResponseBody => pwh_phase::ResponseBody,
    }) as i32
}

fn phase_from_code(code: i32) -> Option<Phase> {
    Some(match code {
        0 => Phase::RequestHeaders,
        1 => Phase::RequestBody,
        2 => Phase::ResponseHeaders,
        3 => Phase::ResponseBody,
        _ => return None,
    })
}

/// The outcome of a `pwh_chain_*` call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pwh_chain_step {
    /// A `pwh_flow`.
    pub flow: i32,
    /// A `pwh_phase`: the phase called, or for `pwh_chain_resume` and
    /// `pwh_chain_on_pause_timeout` the phase that went on.
    pub phase: i32,
    /// `PWH_FLOW_CONTINUE` in a body phase: the bytes in `out` end the body.
    pub end_of_stream: bool,
}

/// Arms the transaction's pause timer: call `pwh_chain_on_pause_timeout` after
/// `timeout_ms` unless `cancel_pause_timer` comes first. Replaces an armed timer.
pub type pwh_arm_pause_timer_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, timeout_ms: u32)>;

/// Cancels the pause timer (also called when it already fired: ignore it then),
/// or asks for a wake-up (`schedule_resume`).
pub type pwh_chain_event_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// The server side of one transaction's chain. Copied by `pwh_chain_new`;
/// `user_data` must stay valid until `pwh_chain_free` returns. NULL callbacks
/// do nothing (without `schedule_resume` a pause only ends by its timer).
///
/// `schedule_resume` is called when a plugin resumes, answers or closes the
/// stream from outside the chain's own calls (`pwh_on_tick`,
/// `pwh_on_http_call_response`, ...) while the chain waits: arrange for
/// `pwh_chain_resume` to run soon on the thread that drives the chain, after
/// the current call returned. It runs inside a `pwh_*` call whose VMs are in
/// use: calling `pwh_chain_resume` from it fails ("busy").
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pwh_chain_vtable {
    /// Passed as the first argument of every callback.
    pub user_data: *mut c_void,
    pub arm_pause_timer: pwh_arm_pause_timer_fn,
    pub cancel_pause_timer: pwh_chain_event_fn,
    pub schedule_resume: pwh_chain_event_fn,
    /// The chain's own log lines (a failure, a pause timeout, a body limit). NULL: dropped.
    pub log: pwh_log_fn,
}

/// What the chain and its links' streams share: the C vtable and the signals.
struct CChainShared {
    vt: pwh_chain_vtable,
    signals: Signals,
}

// SAFETY: `pwh_chain_vtable`'s contract: the callbacks and user_data are used
// from the thread driving the chain, and `schedule_resume` from the thread
// driving the `pwh_vms` (the same one, for a server that follows the API).
unsafe impl Send for CChainShared {}
// SAFETY: as above; `&CChainShared` only copies fields and calls the vtable.
unsafe impl Sync for CChainShared {}

#[derive(Clone)]
struct CChainServer(Arc<CChainShared>);

impl ChainServer for CChainServer {
    fn signals(&self) -> &Signals {
        &self.0.signals
    }

    fn arm_pause_timer(&mut self, timeout: Duration) {
        if let Some(f) = self.0.vt.arm_pause_timer {
            let ms = timeout.as_millis().clamp(1, u32::MAX as u128) as u32;
            // SAFETY: a callback and user_data the server supplied together.
            unsafe { f(self.0.vt.user_data, ms) }
        }
    }

    fn cancel_pause_timer(&mut self) {
        if let Some(f) = self.0.vt.cancel_pause_timer {
            // SAFETY: a callback and user_data the server supplied together.
            unsafe { f(self.0.vt.user_data) }
        }
    }

    fn schedule_resume(&self) {
        if let Some(f) = self.0.vt.schedule_resume {
            // SAFETY: a callback and user_data the server supplied together.
            unsafe { f(self.0.vt.user_data) }
        }
    }

    fn log(&self, plugin: &str, level: LogLevel, message: &str) {
        if let Some(f) = self.0.vt.log {
            // SAFETY: a callback and user_data the server supplied together; the
            // byte views borrow strings that outlive the call.
            unsafe { f(self.0.vt.user_data, pwh_bytes::of(plugin.as_bytes()), level as i32, pwh_bytes::of(message.as_bytes())) }
        }
    }
}

/// The `pwh_vms` a chain runs on, by pointer: `pwh_chain_new`'s contract keeps
/// it alive and unmoved until `pwh_chain_free`.
struct ChainVmsRef(*const pwh_vms);

/// The VMs of a `pwh_vms`, held through its busy flag.
struct VmsOnly<'a>(VmsGuard<'a>);

impl Deref for VmsOnly<'_> {
    type Target = PluginVms;
    fn deref(&self) -> &PluginVms {
        &self.0.vms
    }
}

impl DerefMut for VmsOnly<'_> {
    fn deref_mut(&mut self) -> &mut PluginVms {
        &mut self.0.vms
    }
}

impl ChainVms for ChainVmsRef {
    type Guard<'a> = VmsOnly<'a>;

    fn plugins(&self) -> &PluginSet {
        // SAFETY: the pwh_vms outlives the chain (pwh_chain_new's contract); `set` never changes.
        unsafe { &(*self.0).set }
    }

    fn lock(&self) -> Option<VmsOnly<'_>> {
        // SAFETY: as above; exclusive access goes through the busy flag.
        let vms = unsafe { &*self.0 };
        vms.lock().ok().map(VmsOnly)
    }
}

/// Calls a stream vtable's `destroy` once, when dropped.
struct DestroyOnce(pwh_destroy_fn, *mut c_void);

impl Drop for DestroyOnce {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            // SAFETY: the server's destroy callback with its user_data, called once.
            unsafe { f(self.1) }
        }
    }
}

struct ChainState {
    chain: Chain<CChainServer, ChainVmsRef>,
    /// The response of the last `PWH_FLOW_RESPOND`.
    response: Option<LocalResponse>,
    /// After `chain` (fields drop in order): the stream's user_data is
    /// released once the links are finished.
    _destroy: DestroyOnce,
}

/// One transaction through the plugins of a `pwh_vms` by the host's chain
/// rules (order, pauses, resumes, failure policies, body limits; see
/// `docs/adr/0001-one-filter-chain.md`). From `pwh_chain_new`, freed with
/// `pwh_chain_free`. Used by one thread at a time (the one driving its
/// `pwh_vms`); a call while another is in progress fails ("busy").
pub struct pwh_chain {
    state: std::sync::Mutex<ChainState>,
}

// SAFETY: the raw pointers inside (the pwh_vms, the streams' user_data) are
// used only on the thread driving the chain, as the API requires.
unsafe impl Send for ChainState {}

impl pwh_chain {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ChainState>, String> {
        match self.state.try_lock() {
            Ok(guard) => Ok(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Err("pwh_chain is busy: called from one of its own callbacks, or from two threads at once".to_string()),
        }
    }
}

/// Starts a transaction through the plugins `plugin_indexes[0..n]` (in request
/// order) of `vms`: one stream context each, all reading and writing the
/// transaction through `stream_vtable` (copied; its `destroy` runs once, when
/// `pwh_chain_free` returns or when this call fails). In a chain the stream
/// vtable's `resume`, `close` and `send_local_response` are not called: the
/// chain answers through `pwh_chain_step` and `chain_vtable` instead.
///
/// Returns NULL when the transaction cannot start, with the reason in `error`:
/// a plugin that failed earlier and does not fail open, or a stream context that
/// could not be created. The server then answers 503.
///
/// # Safety
/// `vms` must be live and outlive the chain (free every chain before
/// `pwh_vms_free`); `plugin_indexes` must point to `n` values; the vtables must
/// be NULL or live; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_chain_new(
    vms: *mut pwh_vms,
    plugin_indexes: *const usize,
    n: usize,
    chain_vtable: *const pwh_chain_vtable,
    stream_vtable: *const pwh_stream_vtable,
    error: *mut pwh_buffer,
) -> *mut pwh_chain {
    // SAFETY: NULL or live (contract); copied.
    let stream_vt = unsafe { stream_vtable.as_ref() }.copied();
    // SAFETY: NULL or live (contract); copied.
    let chain_vt = unsafe { chain_vtable.as_ref() }.copied();
    // From here on the stream's `destroy` runs exactly once, on every path.
    let destroy = DestroyOnce(stream_vt.and_then(|vt| vt.destroy), stream_vt.map_or(ptr::null_mut(), |vt| vt.user_data));
    let body = move || {
        let stream_vt = stream_vt.ok_or("pwh_chain_new: stream_vtable is NULL")?;
        let chain_vt = chain_vt.ok_or("pwh_chain_new: chain_vtable is NULL")?;
        if vms.is_null() {
            return Err("vms is NULL".to_string());
        }
        let plugins: &[usize] = if n == 0 {
            &[]
        } else if plugin_indexes.is_null() {
            return Err("pwh_chain_new: plugin_indexes is NULL".to_string());
        } else {
            // SAFETY: non-null and pointing to `n` values (contract).
            unsafe { std::slice::from_raw_parts(plugin_indexes, n) }
        };
        let link_vt = pwh_stream_vtable { destroy: None, ..stream_vt };
        let server = CChainServer(Arc::new(CChainShared { vt: chain_vt, signals: Signals::new() }));
        let chain = Chain::new(ChainVmsRef(vms), plugins.iter().copied(), server, |_| CStream::new(link_vt)).map_err(|e| e.to_string())?;
        Ok(Box::into_raw(Box::new(pwh_chain { state: std::sync::Mutex::new(ChainState { chain, response: None, _destroy: destroy }) })))
    };
    // SAFETY: `error` is NULL or a live buffer (contract).
    unsafe { ffi_call(error, ptr::null_mut(), body) }
}

/// Fills `step` (and `out` for body bytes) from a flow.
fn report(state: &mut ChainState, phase: Phase, flow: Flow, out: Option<&mut pwh_buffer>, step: &mut pwh_chain_step) {
    step.phase = phase_code(phase);
    step.end_of_stream = false;
    step.flow = match flow {
        Flow::Continue => pwh_flow::Continue,
        Flow::Forward { data, end_of_stream } => {
            if let Some(out) = out {
                out.bytes = data;
            }
            step.end_of_stream = end_of_stream;
            pwh_flow::Continue
        }
        Flow::Buffered => pwh_flow::Buffered,
        Flow::Wait => pwh_flow::Wait,
        Flow::Respond(response) => {
            state.response = Some(response);
            pwh_flow::Respond
        }
        Flow::Abort => pwh_flow::Abort,
        Flow::Reset => pwh_flow::Reset,
    } as i32;
}

/// Runs `f` on a chain and reports its outcome; 0, or -1 with `error`.
///
/// # Safety
/// `chain` NULL or live; `out` NULL or a live buffer not used elsewhere; `step`
/// NULL or writable; `error` NULL or a live buffer.
unsafe fn on_chain(
    chain: *mut pwh_chain,
    out: *mut pwh_buffer,
    step: *mut pwh_chain_step,
    error: *mut pwh_buffer,
    f: impl FnOnce(&mut Chain<CChainServer, ChainVmsRef>) -> Option<(Phase, Flow)>,
) -> i32 {
    // SAFETY: NULL or live (contract); shared access, exclusive access goes through `lock`.
    let chain = unsafe { chain.as_ref() };
    // SAFETY: NULL or a live buffer only this call uses (contract).
    let out = unsafe { out.as_mut() };
    // SAFETY: NULL or writable (contract).
    let step = unsafe { step.as_mut() };
    let body = || {
        let chain = chain.ok_or("chain is NULL")?;
        let step = step.ok_or("step is NULL")?;
        let mut state = chain.lock()?;
        match f(&mut state.chain) {
            Some((phase, flow)) => report(&mut state, phase, flow, out, step),
            None => {
                step.flow = pwh_flow::Nothing as i32;
                step.end_of_stream = false;
            }
        }
        Ok(0)
    };
    // SAFETY: `error` is NULL or a live buffer (contract).
    unsafe { ffi_call(error, FAILED, body) }
}

/// The request headers (`num_headers` pairs, pseudo-headers included, readable
/// through the stream vtable) through the chain. `end_of_stream`: no body
/// follows. Fills `step`; returns 0, or -1 with `error`.
///
/// # Safety
/// `chain` NULL or live; `step` NULL or writable; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_chain_on_request_headers(chain: *mut pwh_chain, num_headers: usize, end_of_stream: bool, step: *mut pwh_chain_step, error: *mut pwh_buffer) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { on_chain(chain, ptr::null_mut(), step, error, |c| Some((Phase::RequestHeaders, c.on_request_headers(num_headers, end_of_stream)))) }
}

/// The response headers through the chain, last plugin first.
///
/// # Safety
/// As `pwh_chain_on_request_headers`.
#[no_mangle]
pub unsafe extern "C" fn pwh_chain_on_response_headers(chain: *mut pwh_chain, num_headers: usize, end_of_stream: bool, step: *mut pwh_chain_step, error: *mut pwh_buffer) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { on_chain(chain, ptr::null_mut(), step, error, |c| Some((Phase::ResponseHeaders, c.on_response_headers(num_headers, end_of_stream)))) }
}

/// One more request body chunk (`end_of_stream` on the last, which may be
/// empty). On `PWH_FLOW_CONTINUE`, `out` holds the bytes to send on (replaced;
/// possibly empty) and `step->end_of_stream` says whether they end the body.
/// A chunk that arrives while the headers wait is kept by the chain: call
/// again with an empty chunk after they went on.
///
/// # Safety
/// `chain` NULL or live; `chunk` readable; `out` a live buffer; `step`
/// writable; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_chain_on_request_body(chain: *mut pwh_chain, chunk: pwh_bytes, end_of_stream: bool, out: *mut pwh_buffer, step: *mut pwh_chain_step, error: *mut pwh_buffer) -> i32 {
    // SAFETY: readable for its length (contract).
    let chunk = match unsafe { bytes_arg(chunk, "chunk") } {
        Ok(c) => c,
        // SAFETY: `error` is NULL or a live buffer (contract).
        Err(message) => return unsafe { fail_with(error, message) },
    };
    // SAFETY: forwarded contract.
    unsafe { on_chain(chain, out, step, error, |c| Some((Phase::RequestBody, c.on_request_body(chunk, end_of_stream)))) }
}

/// One more response body chunk, last plugin first (see `pwh_chain_on_request_body`).
///
/// # Safety
/// As `pwh_chain_on_request_body`.
#[no_mangle]
pub unsafe extern "C" fn pwh_chain_on_response_body(chain: *mut pwh_chain, chunk: pwh_bytes, end_of_stream: bool, out: *mut pwh_buffer, step: *mut pwh_chain_step, error: *mut pwh_buffer) -> i32 {
    // SAFETY: readable for its length (contract).
    let chunk = match unsafe { bytes_arg(chunk, "chunk") } {
        Ok(c) => c,
        // SAFETY: `error` is NULL or a live buffer (contract).
        Err(message) => return unsafe { fail_with(error, message) },
    };
    // SAFETY: forwarded contract.
    unsafe { on_chain(chain, out, step, error, |c| Some((Phase::ResponseBody, c.on_response_body(chunk, end_of_stream)))) }
}

/// The server's wake-up after `schedule_resume`: the chain goes on where it
/// waited (`step->phase` says which phase; body bytes in `out`), answers, or
/// resets; `PWH_FLOW_NOTHING` when there was nothing to do.
///
/// # Safety
/// As `pwh_chain_on_request_body` (without `chunk`).
#[no_mangle]
pub unsafe extern "C" fn pwh_chain_resume(chain: *mut pwh_chain, out: *mut pwh_buffer, step: *mut pwh_chain_step, error: *mut pwh_buffer) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { on_chain(chain, out, step, error, |c| c.resume()) }
}

/// The pause timer fired: a 504 (`PWH_FLOW_RESPOND`) or an aborted response,
/// unless a resume was on its way; `PWH_FLOW_NOTHING` when nothing waits.
///
/// # Safety
/// As `pwh_chain_resume`.
#[no_mangle]
pub unsafe extern "C" fn pwh_chain_on_pause_timeout(chain: *mut pwh_chain, out: *mut pwh_buffer, step: *mut pwh_chain_step, error: *mut pwh_buffer) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { on_chain(chain, out, step, error, |c| c.on_pause_timeout()) }
}

/// The response of the last `PWH_FLOW_RESPOND`: its status into `*status`, its
/// headers (pairs encoding, `pwh_pairs_get`) into `headers`, its body into
/// `body` (each may be NULL). Returns 0, 1 when there was none, -1 on error.
///
/// # Safety
/// `chain` NULL or live; `status` NULL or writable; the buffers NULL or live.
#[no_mangle]
pub unsafe extern "C" fn pwh_chain_response(chain: *mut pwh_chain, status: *mut u32, headers: *mut pwh_buffer, body: *mut pwh_buffer, error: *mut pwh_buffer) -> i32 {
    // SAFETY: NULL or live (contract).
    let chain = unsafe { chain.as_ref() };
    // SAFETY: NULL or writable (contract).
    let status = unsafe { status.as_mut() };
    // SAFETY: NULL or live buffers only this call uses (contract).
    let (headers, body) = unsafe { (headers.as_mut(), body.as_mut()) };
    let run = || {
        let chain = chain.ok_or("chain is NULL")?;
        let state = chain.lock()?;
        let Some(response) = &state.response else { return Ok(1) };
        if let Some(s) = status {
            *s = response.status;
        }
        if let Some(h) = headers {
            h.bytes = pairs::encode(&response.headers);
        }
        if let Some(b) = body {
            b.bytes = response.body.clone();
        }
        Ok(0)
    };
    // SAFETY: `error` is NULL or a live buffer (contract).
    unsafe { ffi_call(error, FAILED, run) }
}

/// 1 when a plugin of the chain takes the callbacks of `phase` (a `pwh_phase`),
/// 0 when none does (the server may skip that phase: no body to feed), -1 on error.
///
/// # Safety
/// `chain` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn pwh_chain_filters(chain: *mut pwh_chain, phase: i32) -> i32 {
    // SAFETY: NULL or live (contract).
    let chain = unsafe { chain.as_ref() };
    guard(FAILED, || match (chain, phase_from_code(phase)) {
        (Some(chain), Some(phase)) => chain.lock().map_or(FAILED, |state| state.chain.filters(phase) as i32),
        _ => FAILED,
    })
}

/// Ends the transaction for the plugins: `proxy_on_done`, `proxy_on_log` and
/// `proxy_on_delete` of each, once (also done by `pwh_chain_free`). Returns 0,
/// or -1 on error.
///
/// # Safety
/// `chain` NULL or live; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_chain_finish(chain: *mut pwh_chain, error: *mut pwh_buffer) -> i32 {
    // SAFETY: NULL or live (contract).
    let chain = unsafe { chain.as_ref() };
    let run = || {
        let chain = chain.ok_or("chain is NULL")?;
        chain.lock()?.chain.finish();
        Ok(0)
    };
    // SAFETY: `error` is NULL or a live buffer (contract).
    unsafe { ffi_call(error, FAILED, run) }
}

/// Finishes the chain if needed (see `pwh_chain_finish`), then runs the stream
/// vtable's `destroy` and frees the chain. NULL is ignored.
///
/// # Safety
/// `chain` NULL or from `pwh_chain_new`, not freed yet, not in use; its `pwh_vms` still live.
#[no_mangle]
pub unsafe extern "C" fn pwh_chain_free(chain: *mut pwh_chain) {
    if chain.is_null() {
        return;
    }
    let free = || {
        // SAFETY: from Box::into_raw in pwh_chain_new, freed once (contract).
        drop(unsafe { Box::from_raw(chain) });
    };
    guard((), free)
}

/// The library version (`"0.1.0"`), a static NUL-terminated string.
#[no_mangle]
pub extern "C" fn pwh_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    guard(ptr::null(), || VERSION.as_ptr().cast())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_match_the_abi() {
        for (c, s) in [
            (pwh_status::Ok, Status::Ok),
            (pwh_status::NotFound, Status::NotFound),
            (pwh_status::BadArgument, Status::BadArgument),
            (
                pwh_status::SerializationFailure,
                Status::SerializationFailure,
            ),
            (pwh_status::ParseFailure, Status::ParseFailure),
            (pwh_status::InvalidMemoryAccess, Status::InvalidMemoryAccess),
            (pwh_status::Empty, Status::Empty),
            (pwh_status::CasMismatch, Status::CasMismatch),
            (pwh_status::InternalFailure, Status::InternalFailure),
            (pwh_status::Unimplemented, Status::Unimplemented),
        ] {
            assert_eq!(c as i32, s.code());
            assert_eq!(status_from_code(c as i32), s);
        }
        for (c, l) in [
            (pwh_log_level::Trace, LogLevel::Trace),
            (pwh_log_level::Debug, LogLevel::Debug),
            (pwh_log_level::Info, LogLevel::Info),
            (pwh_log_level::Warn, LogLevel::Warn),
            (pwh_log_level::Error, LogLevel::Error),
            (pwh_log_level::Critical, LogLevel::Critical),
        ] {
            assert_eq!(c as i32, l as i32);
        }
        for (c, m) in [
            (
                pwh_map_type::HttpRequestHeaders,
                MapType::HttpRequestHeaders,
            ),
            (
                pwh_map_type::HttpRequestTrailers,
                MapType::HttpRequestTrailers,
            ),
            (
                pwh_map_type::HttpResponseHeaders,
                MapType::HttpResponseHeaders,
            ),
            (
                pwh_map_type::HttpResponseTrailers,
                MapType::HttpResponseTrailers,
            ),
            (
                pwh_map_type::GrpcReceiveInitialMetadata,
                MapType::GrpcReceiveInitialMetadata,
            ),
            (
                pwh_map_type::GrpcReceiveTrailingMetadata,
                MapType::GrpcReceiveTrailingMetadata,
            ),
            (
                pwh_map_type::HttpCallResponseHeaders,
                MapType::HttpCallResponseHeaders,
            ),
            (
                pwh_map_type::HttpCallResponseTrailers,
                MapType::HttpCallResponseTrailers,
            ),
        ] {
            assert_eq!(c as i32, m as i32);
        }
        for (c, s) in [
            (pwh_stream_type::HttpRequest, StreamType::HttpRequest),
            (pwh_stream_type::HttpResponse, StreamType::HttpResponse),
            (pwh_stream_type::Downstream, StreamType::Downstream),
            (pwh_stream_type::Upstream, StreamType::Upstream),
        ] {
            assert_eq!(c as i32, s as i32);
        }
    }

    #[test]
    fn pairs_helpers_agree_with_the_codec() {
        let buf = pwh_buffer_new();
        for (k, v) in [(":path", "/a"), ("x", ""), ("", "v")] {
            // SAFETY: a live buffer and byte views of live strings.
            let st = unsafe {
                pwh_pairs_add(
                    buf,
                    pwh_bytes::of(k.as_bytes()),
                    pwh_bytes::of(v.as_bytes()),
                )
            };
            assert_eq!(st, 0);
        }
        // SAFETY: `buf` is live and not used elsewhere.
        let bytes = unsafe { &(*buf).bytes }.clone();
        assert_eq!(
            pairs::decode(&bytes).unwrap(),
            decode_pairs(&bytes).unwrap()
        );
        // SAFETY: a byte view of a live vector.
        assert_eq!(unsafe { pwh_pairs_count(pwh_bytes::of(&bytes)) }, 3);
        let (mut k, mut v) = (pwh_bytes::EMPTY, pwh_bytes::EMPTY);
        // SAFETY: a byte view of a live vector and writable out-parameters.
        let st = unsafe { pwh_pairs_get(pwh_bytes::of(&bytes), 0, &mut k, &mut v) };
        assert_eq!(st, 0);
        // SAFETY: point into `bytes`, still alive.
        let pair = unsafe { (k.as_slice().unwrap(), v.as_slice().unwrap()) };
        assert_eq!(pair, (&b":path"[..], &b"/a"[..]));
        // SAFETY: as above.
        let st = unsafe { pwh_pairs_get(pwh_bytes::of(&bytes), 3, &mut k, &mut v) };
        assert_eq!(st, 1);
        let truncated = &bytes[..bytes.len() - 1];
        // SAFETY: a byte view of a live slice.
        let count = unsafe { pwh_pairs_count(pwh_bytes::of(truncated)) };
        assert_eq!(count, -1);
        // SAFETY: from pwh_buffer_new, freed once.
        unsafe { pwh_buffer_free(buf) };
    }

    #[test]
    fn null_arguments_are_errors_not_crashes() {
        let err = pwh_buffer_new();
        // SAFETY: NULL handles are allowed; `err` is live.
        unsafe {
            assert_eq!(pwh_on_tick(ptr::null_mut(), 0, err), -1);
            assert_eq!(pwh_buffer_len(err), "vms is NULL".len());
            assert!(pwh_plugins_load(ptr::null(), 1, err).is_null());
            assert_eq!(pwh_stream_create(ptr::null_mut(), 0, ptr::null(), err), 0);
            assert_eq!(
                pwh_buffer_set(ptr::null_mut(), ptr::null(), 0),
                pwh_status::BadArgument as i32
            );
            pwh_vms_free(ptr::null_mut());
            pwh_buffer_free(err);
        }
    }
}
