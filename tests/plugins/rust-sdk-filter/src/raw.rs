//! Hostcalls that the 0.2.1 Rust SDK either does not wrap at all
//! (`proxy_get_buffer_status`, `proxy_get_header_map_size`) or wraps in a way
//! that panics on statuses this filter wants to observe and report (gRPC,
//! `proxy_set_effective_context` on bogus ids, `proxy_done`, foreign functions,
//! property paths with a trailing NUL, buffer type 8); and those older SDK
//! releases do not wrap (metrics, `proxy_get_status`, `proxy_set_buffer_bytes`;
//! see `sdk`). Each is a hostcall of every ABI version (0.1.0 included).
//!
//! Every function returns the raw `proxy_status_t` as a `u32`, so no host
//! answer can make the filter panic here.
//!
//! These are imported from module "env" (the default for `extern "C"` on
//! wasm32). Some names are also declared by the SDK with an enum-typed
//! signature; the wasm-level signature is identical (all i32), so the module
//! ends up with a single import per name.

#![allow(clashing_extern_declarations)]

use std::ptr::{null, null_mut};

mod ffi {
    extern "C" {
        pub fn proxy_get_buffer_status(
            buffer_type: u32,
            return_buffer_size: *mut usize,
            return_flags: *mut u32,
        ) -> u32;
        pub fn proxy_get_header_map_size(map_type: u32, return_size: *mut usize) -> u32;
        pub fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> u32;
        pub fn proxy_set_effective_context(context_id: u32) -> u32;
        pub fn proxy_done() -> u32;
        pub fn proxy_call_foreign_function(
            name_data: *const u8,
            name_size: usize,
            args_data: *const u8,
            args_size: usize,
            return_data: *mut *mut u8,
            return_size: *mut usize,
        ) -> u32;
        pub fn proxy_grpc_call(
            upstream_data: *const u8,
            upstream_size: usize,
            service_data: *const u8,
            service_size: usize,
            method_data: *const u8,
            method_size: usize,
            metadata_data: *const u8,
            metadata_size: usize,
            message_data: *const u8,
            message_size: usize,
            timeout_ms: u32,
            return_token: *mut u32,
        ) -> u32;
        pub fn proxy_grpc_stream(
            upstream_data: *const u8,
            upstream_size: usize,
            service_data: *const u8,
            service_size: usize,
            method_data: *const u8,
            method_size: usize,
            metadata_data: *const u8,
            metadata_size: usize,
            return_token: *mut u32,
        ) -> u32;
        pub fn proxy_grpc_send(token: u32, message_data: *const u8, message_size: usize, end_stream: u32) -> u32;
        pub fn proxy_grpc_cancel(token: u32) -> u32;
        pub fn proxy_grpc_close(token: u32) -> u32;
        pub fn proxy_set_buffer_bytes(buffer_type: u32, start: usize, size: usize, data: *const u8, data_size: usize) -> u32;
        pub fn proxy_get_status(return_code: *mut u32, return_message_data: *mut *mut u8, return_message_size: *mut usize) -> u32;
        pub fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;
        pub fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
        pub fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
        pub fn proxy_get_metric(metric_id: u32, return_value: *mut u64) -> u32;
    }
}

/// Takes ownership of a buffer the host allocated through
/// `proxy_on_memory_allocate` (exported by the SDK), exactly as the SDK does.
unsafe fn take(ptr: *mut u8, size: usize) -> Option<Vec<u8>> {
    if ptr.is_null() {
        None
    } else {
        Some(Vec::from_raw_parts(ptr, size, size))
    }
}

pub fn get_buffer_status(buffer_type: u32) -> (u32, usize, u32) {
    let mut size: usize = 0;
    let mut flags: u32 = 0;
    let st = unsafe { ffi::proxy_get_buffer_status(buffer_type, &mut size, &mut flags) };
    (st, size, flags)
}

pub fn get_header_map_size(map_type: u32) -> (u32, usize) {
    let mut size: usize = 0;
    let st = unsafe { ffi::proxy_get_header_map_size(map_type, &mut size) };
    (st, size)
}

pub fn get_buffer_bytes(buffer_type: u32, start: usize, max_size: usize) -> (u32, Option<Vec<u8>>) {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    unsafe {
        let st = ffi::proxy_get_buffer_bytes(buffer_type, start, max_size, &mut data, &mut size);
        if st == 0 {
            (st, take(data, size))
        } else {
            (st, None)
        }
    }
}

/// `path` is passed verbatim (the caller decides about NUL separators and a
/// trailing NUL).
pub fn get_property(path: &[u8]) -> (u32, Option<Vec<u8>>) {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    unsafe {
        let st = ffi::proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size);
        if st == 0 {
            (st, take(data, size))
        } else {
            (st, None)
        }
    }
}

pub fn set_effective_context(context_id: u32) -> u32 {
    unsafe { ffi::proxy_set_effective_context(context_id) }
}

pub fn done() -> u32 {
    unsafe { ffi::proxy_done() }
}

pub fn call_foreign_function(name: &str, args: &[u8]) -> (u32, Option<Vec<u8>>) {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    unsafe {
        let st = ffi::proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            if args.is_empty() { null() } else { args.as_ptr() },
            args.len(),
            &mut data,
            &mut size,
        );
        if st == 0 {
            (st, take(data, size))
        } else {
            (st, None)
        }
    }
}

pub fn grpc_call(upstream: &str, service: &str, method: &str, metadata: &[u8], message: &[u8], timeout_ms: u32) -> (u32, u32) {
    let mut token: u32 = 0;
    let st = unsafe {
        ffi::proxy_grpc_call(
            upstream.as_ptr(),
            upstream.len(),
            service.as_ptr(),
            service.len(),
            method.as_ptr(),
            method.len(),
            metadata.as_ptr(),
            metadata.len(),
            message.as_ptr(),
            message.len(),
            timeout_ms,
            &mut token,
        )
    };
    (st, token)
}

pub fn grpc_stream(upstream: &str, service: &str, method: &str, metadata: &[u8]) -> (u32, u32) {
    let mut token: u32 = 0;
    let st = unsafe {
        ffi::proxy_grpc_stream(
            upstream.as_ptr(),
            upstream.len(),
            service.as_ptr(),
            service.len(),
            method.as_ptr(),
            method.len(),
            metadata.as_ptr(),
            metadata.len(),
            &mut token,
        )
    };
    (st, token)
}

pub fn grpc_send(token: u32, message: &[u8], end_stream: bool) -> u32 {
    unsafe { ffi::proxy_grpc_send(token, message.as_ptr(), message.len(), end_stream as u32) }
}

pub fn grpc_cancel(token: u32) -> u32 {
    unsafe { ffi::proxy_grpc_cancel(token) }
}

pub fn grpc_close(token: u32) -> u32 {
    unsafe { ffi::proxy_grpc_close(token) }
}

#[allow(dead_code)]
pub fn set_buffer_bytes(buffer_type: u32, start: usize, size: usize, data: &[u8]) -> u32 {
    // SAFETY: the host only reads data.len() bytes at data.as_ptr(), a live slice.
    unsafe { ffi::proxy_set_buffer_bytes(buffer_type, start, size, data.as_ptr(), data.len()) }
}

/// (status, code, message)
#[allow(dead_code)]
pub fn get_status() -> (u32, u32, Option<Vec<u8>>) {
    let mut code: u32 = 0;
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the three pointers are to live locals; on OK the host gave the
    // message buffer from proxy_on_memory_allocate, which `take` owns.
    unsafe {
        let st = ffi::proxy_get_status(&mut code, &mut data, &mut size);
        if st == 0 {
            (st, code, take(data, size))
        } else {
            (st, code, None)
        }
    }
}

#[allow(dead_code)]
pub fn define_metric(metric_type: u32, name: &str) -> Result<u32, u32> {
    let mut id: u32 = 0;
    // SAFETY: the host reads name.len() bytes of a live str and writes one u32 into a local.
    match unsafe { ffi::proxy_define_metric(metric_type, name.as_ptr(), name.len(), &mut id) } {
        0 => Ok(id),
        st => Err(st),
    }
}

#[allow(dead_code)]
pub fn increment_metric(id: u32, offset: i64) -> Result<(), u32> {
    // SAFETY: no pointers.
    match unsafe { ffi::proxy_increment_metric(id, offset) } {
        0 => Ok(()),
        st => Err(st),
    }
}

#[allow(dead_code)]
pub fn record_metric(id: u32, value: u64) -> Result<(), u32> {
    // SAFETY: no pointers.
    match unsafe { ffi::proxy_record_metric(id, value) } {
        0 => Ok(()),
        st => Err(st),
    }
}

#[allow(dead_code)]
pub fn get_metric(id: u32) -> Result<u64, u32> {
    let mut value: u64 = 0;
    // SAFETY: the host writes one u64 into a local.
    match unsafe { ffi::proxy_get_metric(id, &mut value) } {
        0 => Ok(value),
        st => Err(st),
    }
}

#[allow(dead_code)]
pub fn get_header_map_pairs(map_type: u32) -> (u32, Option<Vec<u8>>) {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the pointers are to live locals; on OK the host gave the map
    // buffer from proxy_on_memory_allocate, which `take` owns.
    unsafe {
        let st = ffi::proxy_get_header_map_pairs(map_type, &mut data, &mut size);
        if st == 0 {
            (st, take(data, size))
        } else {
            (st, None)
        }
    }
}
