//! Server-wide services for the VMs of one Traffic Server thread: logging into
//! diags.log and the debug tag `proxy_wasm`.

use std::ffi::CString;
use std::os::raw::c_char;
use std::time::Duration;

use super::sys::*;
use crate::abi::{LogLevel, Status};
use crate::host::{HttpCallRequest, PluginRef, ServerHost};

pub const TAG: &[u8] = b"proxy_wasm\0";

fn tag() -> *const c_char {
    TAG.as_ptr() as *const c_char
}

/// Writes one line to Traffic Server's logs: trace/debug under the debug tag
/// `proxy_wasm`, info as a note, warn as a warning, error and critical as errors
/// (visible in diags.log without any debug tag).
pub fn log(level: LogLevel, message: &str) {
    let Ok(text) = CString::new(message.replace('\0', "\\0")) else { return };
    let fmt = b"%s\0".as_ptr() as *const c_char;
    // SAFETY: `fmt` is a NUL-terminated "%s" and `text` a NUL-terminated string
    // that outlives the call; these functions are thread-safe in Traffic Server.
    unsafe {
        match level {
            LogLevel::Trace | LogLevel::Debug => TSDebug(tag(), fmt, text.as_ptr()),
            LogLevel::Info => TSNote(fmt, text.as_ptr()),
            LogLevel::Warn => TSWarning(fmt, text.as_ptr()),
            LogLevel::Error | LogLevel::Critical => TSError(fmt, text.as_ptr()),
        }
    }
}

/// The plugin log threshold follows the debug tag: with `proxy_wasm` enabled
/// plugins may log at trace level, otherwise from info up.
pub fn log_level() -> LogLevel {
    // SAFETY: `tag()` is a NUL-terminated static string.
    if unsafe { TSIsDebugTagSet(tag()) } != 0 {
        LogLevel::Trace
    } else {
        LogLevel::Info
    }
}

pub struct AtsServer;

impl ServerHost for AtsServer {
    fn log(&self, plugin: &PluginRef, level: LogLevel, message: &str) {
        // TSDebug filters by tag itself; other levels always reach diags.log.
        log(level, &format!("[proxy_wasm] {}: {message}", plugin.name));
    }

    fn log_level(&self) -> LogLevel {
        log_level()
    }

    fn dispatch_http_call(&self, _root_context_id: u32, _token: u32, request: HttpCallRequest) -> Result<(), Status> {
        log(LogLevel::Warn, &format!("[proxy_wasm] http_call to {} refused: outgoing calls are not implemented on Traffic Server yet", request.upstream));
        Err(Status::InternalFailure)
    }

    fn set_tick_period(&self, _root_context_id: u32, period: Option<Duration>) {
        if period.is_some() {
            log(LogLevel::Warn, "[proxy_wasm] tick periods are not implemented on Traffic Server yet; on_tick will not run");
        }
    }

    fn notify_queue_ready(&self, _root_context_id: u32, _queue_id: u32) {
        log(LogLevel::Warn, "[proxy_wasm] on_queue_ready is not delivered on Traffic Server yet");
    }
}
