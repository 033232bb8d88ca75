//! `pwh_stream_create`, `pwh_on_*` stream callbacks, `pwh_take_body`, `pwh_finish_stream`:
//! one plugin's stream context driven by the server.

use crate::abi::StreamType;

use super::http_stream::CStream;
use super::vms::on_vm;
use super::{bytes_arg, fail_with, ffi_call, pwh_buffer, pwh_bytes, pwh_stream_vtable, pwh_vms, verdict_code, FAILED};

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
        return unsafe { ffi_call(error, 0, || Err("pwh_stream_create: vtable is NULL".to_string())) };
    };
    // From here on `destroy` runs exactly once: when `stream` is dropped, on any path.
    let stream = CStream::new(vt);
    // SAFETY: NULL or live (contract); shared access, exclusive access goes through `lock`.
    let vms = unsafe { vms.as_ref() };
    let body = move || {
        let vms = vms.ok_or("vms is NULL")?;
        let root = vms.root(plugin_index)?;
        let mut state = vms.lock()?;
        let ctx =
            state.vms.vms[root.vm].create_stream(root.root_context_id, Box::new(stream)).map_err(|e| e.to_string())?;
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
        on_vm(vms, plugin_index, Some(context_id), error, FAILED, |vm, _| {
            vm.on_request_headers(context_id, num_headers, end_of_stream).map(verdict_code)
        })
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
        on_vm(vms, plugin_index, Some(context_id), error, FAILED, |vm, _| {
            vm.on_request_body(context_id, chunk, end_of_stream).map(verdict_code)
        })
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
        on_vm(vms, plugin_index, Some(context_id), error, FAILED, |vm, _| {
            vm.on_request_trailers(context_id, num_trailers).map(verdict_code)
        })
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
        on_vm(vms, plugin_index, Some(context_id), error, FAILED, |vm, _| {
            vm.on_response_headers(context_id, num_headers, end_of_stream).map(verdict_code)
        })
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
        on_vm(vms, plugin_index, Some(context_id), error, FAILED, |vm, _| {
            vm.on_response_body(context_id, chunk, end_of_stream).map(verdict_code)
        })
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
        on_vm(vms, plugin_index, Some(context_id), error, FAILED, |vm, _| {
            vm.on_response_trailers(context_id, num_trailers).map(verdict_code)
        })
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
        on_vm(vms, plugin_index, Some(context_id), error, FAILED, |vm, _| {
            out.bytes = vm.take_body(context_id, direction)?;
            Ok(0)
        })
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
            None => {
                return Err(format!(
                    "no stream context {context_id} for plugin {plugin_index} (finished or never created)"
                ))
            }
        }
        state.streams.remove(&(root.vm, context_id));
        state.vms.vms[root.vm].finish_stream(context_id).map(|gone| if gone { 0 } else { 1 }).map_err(|e| e.to_string())
    };
    // SAFETY: `error` is NULL or a live buffer (contract).
    unsafe { ffi_call(error, FAILED, body) }
}
