//! `pwh_server_vtable`: the server-wide services of a C server, as a `ServerHost`.

use std::ffi::c_void;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::abi::pairs;
use crate::abi::{LogLevel, Status};
use crate::host::{HttpCallRequest, PluginRef, ServerHost};

use super::{pwh_buffer, pwh_bytes, result_from_code, status_from_code};

/// Writes one log line of a plugin. `level` is a `pwh_log_level`.
pub type pwh_log_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, plugin_name: pwh_bytes, level: i32, message: pwh_bytes)>;

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
pub type pwh_cancel_http_call_fn = Option<unsafe extern "C" fn(user_data: *mut c_void, vm_index: usize, token: u32)>;

/// Arms (`period_ms` > 0) or disarms (`period_ms` = 0) the periodic
/// `pwh_on_tick` of a root context.
pub type pwh_set_tick_period_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, vm_index: usize, root_context_id: u32, period_ms: u32)>;

/// A shared queue registered by a root context got data: arrange for
/// `pwh_on_queue_ready` to run on the thread that owns the `pwh_vms`.
/// May be called from ANY thread, also while another thread uses the `pwh_vms`.
pub type pwh_notify_queue_ready_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, vm_index: usize, root_context_id: u32, queue_id: u32)>;

/// Reads a property: `path` is dotted (`request.path`, `node.id`; segments are
/// joined with '.'). On `PWH_STATUS_OK` the value is in `out` (use
/// `pwh_buffer_set`); `PWH_STATUS_NOT_FOUND` when there is no such property.
pub type pwh_get_property_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, path: pwh_bytes, out: *mut pwh_buffer) -> i32>;

/// `proxy_call_foreign_function`: runs the server function `name` on
/// `argument`; the result goes in `out`. `PWH_STATUS_NOT_FOUND` for an unknown name.
pub type pwh_call_foreign_function_fn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, name: pwh_bytes, argument: pwh_bytes, out: *mut pwh_buffer) -> i32,
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
pub(super) struct Gate {
    pub(super) closed: RwLock<bool>,
}

impl Gate {
    pub(super) fn close(&self) {
        *self.closed.write().unwrap_or_else(|p| p.into_inner()) = true;
    }
}

/// The `ServerHost` of one VM, calling into a C vtable.
pub(super) struct CServer {
    pub(super) vt: pwh_server_vtable,
    pub(super) vm_index: usize,
    pub(super) gate: Arc<Gate>,
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

    fn dispatch_http_call(&self, root_context_id: u32, token: u32, request: HttpCallRequest) -> Result<(), Status> {
        let Some(f) = self.vt.dispatch_http_call else {
            return Err(Status::InternalFailure);
        };
        let headers = pairs::encode(&request.headers);
        let trailers = pairs::encode(&request.trailers);
        // 0 means "no timeout" to C, so a timeout under 1 ms is rounded up.
        let timeout_ms = request.timeout.map_or(0, |t| t.as_millis().clamp(1, u32::MAX as u128) as u32);
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
        let code = unsafe { f(self.vt.user_data, pwh_bytes::of(name.as_bytes()), pwh_bytes::of(argument), &mut out) };
        result_from_code(code).map(|()| out.bytes)
    }
}

pub(super) fn call_get_property(
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
