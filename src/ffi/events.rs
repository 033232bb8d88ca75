//! Root-context events the server scheduled: ticks, queues, HTTP call answers, foreign functions.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi::pairs;
use crate::host::HttpCallResponse;

use super::vms::on_vm;
use super::{bytes_arg, fail_with, pwh_buffer, pwh_bytes, pwh_vms, FAILED};

/// `proxy_on_tick` of the plugin's root context, for a timer armed through
/// `set_tick_period`. Returns 0, or -1 on error.
///
/// # Safety
/// `vms` must be NULL or live; `error` NULL or a live buffer.
#[no_mangle]
pub unsafe extern "C" fn pwh_on_tick(vms: *mut pwh_vms, plugin_index: usize, error: *mut pwh_buffer) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { on_vm(vms, plugin_index, None, error, FAILED, |vm, root| vm.on_tick(root).map(|()| 0)) }
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
    unsafe { on_vm(vms, plugin_index, None, error, FAILED, |vm, root| vm.on_queue_ready(root, queue_id).map(|()| 0)) }
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
    let parts = unsafe { (bytes_arg(headers, "headers"), bytes_arg(body, "body"), bytes_arg(trailers, "trailers")) };
    // Decoded under catch_unwind too: the bytes come from the caller.
    let response = catch_unwind(AssertUnwindSafe(|| {
        let headers = pairs::decode_unlimited(parts.0?).map_err(|_| "headers: malformed pairs encoding".to_string())?;
        let trailers =
            pairs::decode_unlimited(parts.2?).map_err(|_| "trailers: malformed pairs encoding".to_string())?;
        Ok(HttpCallResponse { headers, body: parts.1?.to_vec(), trailers, failure: None })
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
pub(super) unsafe fn deliver_http_call(
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
        on_vm(vms, plugin_index, None, error, FAILED, |vm, _| vm.on_http_call_response(token, response).map(|()| 0))
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
