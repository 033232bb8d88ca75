//! The C API (`pwh_*`) for servers written in C.
//!
//! `cbindgen` turns this module into `include/proxy_wasm_host.h` on every
//! build (see `build.rs` and `cbindgen.toml`); the doc comments in it are what
//! C programmers read, so they describe the contract in C terms.
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

// In the order of the header: cbindgen reads this file's items, then these
// modules in turn, and `cbindgen.toml` keeps the functions in that order.
mod buffers;
mod pairs;
mod server_host;
mod http_stream;
mod plugins;
mod vms;
mod streams;
mod events;
mod chain;
mod version;
#[cfg(test)]
mod tests;

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi::Status;
use crate::vm::Verdict;

pub use buffers::*;
pub use chain::*;
pub use events::*;
pub use http_stream::*;
pub use pairs::*;
pub use plugins::*;
pub use server_host::*;
pub use streams::*;
pub use version::*;
pub use vms::*;

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

// ------------------------------------------------------------------ calls from C

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
unsafe fn ffi_call<T>(error: *mut pwh_buffer, fail: T, body: impl FnOnce() -> Result<T, String>) -> T {
    let message = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => return value,
        Ok(Err(message)) => message,
        Err(payload) => format!("internal error (Rust panic): {}", panic_message(payload.as_ref())),
    };
    let report = || {
        // SAFETY: forwarded from the caller.
        unsafe { set_error(error, &message) }
    };
    let _ = catch_unwind(AssertUnwindSafe(report));
    fail
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
