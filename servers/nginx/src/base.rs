//! What every file of the module uses and that depends on none of them: the
//! module's own symbol and context index, nginx's log, posted and zeroed
//! events, and the worker's VM set type. Keeping these here (and not next to
//! the big types they used to live with) is what lets the module's files
//! depend on each other one way (see docs/adr/layers.md).

use std::ffi::{c_char, c_void};
use std::sync::Weak;

use ngx::ffi::*;

use proxy_wasm_host::abi::LogLevel;
use proxy_wasm_host::chain::{Exclusive, Generation};
use proxy_wasm_host::vm::{Vm, VmError};

extern "C" {
    /// The module itself, defined in `mod.rs` (with its commands and
    /// handlers, which are above every file); named here by its C symbol, as
    /// a C module's files do with `extern ngx_module_t`.
    #[allow(non_upper_case_globals)]
    static ngx_http_proxy_wasm_module: ngx_module_t;
}

/// The module, for the configuration helpers.
pub(crate) fn module() -> *const ngx_module_t {
    // Only the address is taken (no read), which needs no `unsafe`; the symbol
    // is defined with #[no_mangle] in mod.rs, so it always exists.
    std::ptr::addr_of!(ngx_http_proxy_wasm_module)
}

/// The module for the `ngx` crate's typed glue (`ngx::http::HttpModule`): conf.rs names its
/// main and location configuration types (`HttpModuleMainConf`, `HttpModuleLocationConf`), and
/// nginx's per-module slots (configurations, a request's context) are read through it by type
/// instead of by hand-written `ctx_index` arithmetic.
pub(crate) struct ProxyWasmModule;

impl ngx::http::HttpModule for ProxyWasmModule {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the module's static (lib.rs), alive for the process; nginx writes its indexes
        // only while reading the configuration, on this thread, never while this reference is used.
        unsafe { &*module() }
    }
}

/// A C string literal for nginx's format functions.
pub(crate) const fn cstr(s: &'static [u8]) -> *const c_char {
    s.as_ptr() as *const c_char
}

pub fn ngx_level(level: LogLevel) -> ngx_uint_t {
    (match level {
        LogLevel::Trace | LogLevel::Debug => NGX_LOG_DEBUG,
        LogLevel::Info => NGX_LOG_INFO,
        LogLevel::Warn => NGX_LOG_WARN,
        LogLevel::Error => NGX_LOG_ERR,
        LogLevel::Critical => NGX_LOG_CRIT,
    }) as ngx_uint_t
}

/// The cycle's log (the `error_log` of the main configuration).
pub fn cycle_log() -> *mut ngx_log_t {
    // SAFETY: ngx_cycle is set before any module code runs and only changes on
    // the worker's own thread.
    unsafe {
        let cycle = ngx_cycle;
        if cycle.is_null() {
            return std::ptr::null_mut();
        }
        (*cycle).log
    }
}

/// Writes one line to nginx's error log at `level`.
pub fn log(level: LogLevel, message: &str) {
    let log = cycle_log();
    if log.is_null() {
        eprintln!("{message}");
        return;
    }
    if !log_enabled(level) {
        return;
    }
    // SAFETY: `log` is the live cycle log; "%*s" takes a length and a pointer,
    // and the message outlives the call.
    unsafe { ngx_log_error_core(ngx_level(level), log, 0, cstr(b"%*s\0"), message.len(), message.as_ptr()) };
}

/// Whether a line at `level` would be written (callers skip formatting it otherwise).
pub fn log_enabled(level: LogLevel) -> bool {
    let log = cycle_log();
    if log.is_null() {
        return true;
    }
    let lvl = ngx_level(level);
    // SAFETY: `log` is the live cycle log.
    let configured = unsafe { (*log).log_level };
    configured >= lvl || (lvl == NGX_LOG_DEBUG as ngx_uint_t && configured & NGX_LOG_DEBUG_HTTP as ngx_uint_t != 0)
}

/// The plugin log threshold, from the error_log level.
pub fn log_level() -> LogLevel {
    let log = cycle_log();
    if log.is_null() {
        return LogLevel::Info;
    }
    // SAFETY: live cycle log.
    let l = unsafe { (*log).log_level };
    if l & NGX_LOG_DEBUG_ALL as ngx_uint_t != 0 || l >= NGX_LOG_DEBUG as ngx_uint_t {
        LogLevel::Debug
    } else if l >= NGX_LOG_INFO as ngx_uint_t {
        LogLevel::Info
    } else if l >= NGX_LOG_WARN as ngx_uint_t {
        LogLevel::Warn
    } else if l >= NGX_LOG_ERR as ngx_uint_t {
        LogLevel::Error
    } else {
        LogLevel::Critical
    }
}

/// Posts a one-shot event: it runs on this worker's loop after the current handler.
pub fn post_event(ev: *mut ngx_event_t) {
    // SAFETY: the event lives until its handler ran (owned by its Box or by a
    // request context that removes it from the queue when it goes away).
    unsafe { ngx_post_event(ev, std::ptr::addr_of_mut!(ngx_posted_events)) };
}

/// A zeroed nginx event with a handler and data.
pub fn new_event(handler: unsafe extern "C" fn(*mut ngx_event_t), data: *mut c_void) -> ngx_event_t {
    // SAFETY: an all-zero ngx_event_t is nginx's initial state (ngx_pcalloc'd events).
    let mut ev: ngx_event_t = unsafe { std::mem::zeroed() };
    ev.handler = Some(handler);
    ev.data = data;
    // SAFETY: the cycle log outlives the worker's events.
    ev.log = unsafe { (*ngx_cycle).log };
    ev
}

/// One generation of this worker's VMs. `Exclusive`: an nginx worker is one
/// thread, so a use of the VMs while they are in use is a re-entry (an
/// internal error), never a wait.
pub type WorkerVms = Generation<Exclusive>;

/// Runs an event outside any request (a tick, a queue notification, an
/// `http_call` answer) on VM `vm` of a generation, if both still exist and
/// the VM has not failed; errors are logged.
pub fn with_vm(generation: &Weak<WorkerVms>, vm: usize, what: &str, f: impl FnOnce(&mut Vm) -> Result<(), VmError>) {
    let Some(generation) = generation.upgrade() else {
        return;
    };
    if let Some(Err(e)) = generation.with_vm(vm, f) {
        log(LogLevel::Error, &format!("[proxy_wasm] {what}: {e}"));
    }
}
