//! `pwh_stream_vtable`: one transaction of a C server, as an `HttpStream`.

use std::ffi::c_void;

use crate::abi::pairs::{self, Pair};
use crate::abi::{MapType, Status, StreamType};
use crate::host::{HttpStream, LocalResponse};

use super::server_host::call_get_property;
use super::{pwh_buffer, pwh_bytes, pwh_get_property_fn, result_from_code};

/// Writes header map `map_type` (a `pwh_map_type`) into `out` as a pairs
/// encoding (`pwh_pairs_add`). A map that does not exist (yet) is empty.
pub type pwh_get_header_map_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, map_type: i32, out: *mut pwh_buffer) -> i32>;

/// Replaces a whole header map with `pairs` (a pairs encoding, `pwh_pairs_get`).
pub type pwh_set_header_map_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, map_type: i32, pairs: pwh_bytes) -> i32>;

/// Adds a value (`add_header`), or replaces all values of `key`, adding it
/// when absent (`replace_header`). Keys compare case-insensitively.
pub type pwh_set_header_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, map_type: i32, key: pwh_bytes, value: pwh_bytes) -> i32>;

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
pub type pwh_stream_op_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, stream_type: i32) -> i32>;

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
pub(super) struct CStream {
    pub(super) vt: pwh_stream_vtable,
    /// Set once `destroy` ran; the C side is never called again.
    pub(super) released: bool,
}

// SAFETY: `pwh_stream_vtable`'s contract: the callbacks and user_data are used
// from whichever thread drives the pwh_vms, one thread at a time, which the C
// side allows by handing them over.
unsafe impl Send for CStream {}

impl CStream {
    pub(super) fn new(vt: pwh_stream_vtable) -> CStream {
        CStream { vt, released: false }
    }

    /// The vtable while the C stream is still there.
    pub(super) fn live(&self) -> Option<&pwh_stream_vtable> {
        (!self.released).then_some(&self.vt)
    }

    /// Calls `destroy` the first time only.
    pub(super) fn release(&mut self) {
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
    pub(super) fn writer<F>(
        &self,
        pick: impl FnOnce(&pwh_stream_vtable) -> Option<F>,
    ) -> Result<(*mut c_void, F), Status> {
        let vt = self.live().ok_or(Status::BadArgument)?;
        let f = pick(vt).ok_or(Status::Unimplemented)?;
        Ok((vt.user_data, f))
    }

    pub(super) fn set_header(
        &mut self,
        pick: impl FnOnce(&pwh_stream_vtable) -> pwh_set_header_fn,
        map: MapType,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), Status> {
        let (user_data, f) = self.writer(pick)?;
        // SAFETY: a callback and user_data the server supplied together, not
        // released yet; the byte views borrow data that outlives the call.
        result_from_code(unsafe { f(user_data, map as i32, pwh_bytes::of(key), pwh_bytes::of(value)) })
    }

    pub(super) fn stream_op(
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
        let Some((user_data, Some(f))) = self.live().map(|vt| (vt.user_data, vt.get_header_map)) else {
            return Ok(Vec::new());
        };
        let mut out = pwh_buffer::default();
        // SAFETY: a callback and user_data the server supplied together, not
        // released yet; `out` is a live buffer that only the callee uses meanwhile.
        result_from_code(unsafe { f(user_data, map as i32, &mut out) })?;
        // A malformed encoding is the server's bug, not the plugin's.
        pairs::decode_unlimited(&out.bytes).map_err(|_| Status::InternalFailure)
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
        let Some((user_data, Some(f))) = self.live().map(|vt| (vt.user_data, vt.set_property)) else {
            return Err(Status::NotFound);
        };
        let dotted = path.join(&b'.');
        // SAFETY: a callback and user_data the server supplied together, not
        // released yet; the byte views borrow data that outlives the call.
        result_from_code(unsafe { f(user_data, pwh_bytes::of(&dotted), pwh_bytes::of(value)) })
    }
}
