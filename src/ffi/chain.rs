//! `pwh_chain_*`: the host's filter chain (`crate::chain`) for a C server.

use std::ffi::c_void;
use std::ops::{Deref, DerefMut};
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use crate::abi::LogLevel;
use crate::chain::{Chain, ChainServer, ChainVms, Flow, Phase, PluginSet, Signals};
use crate::host::LocalResponse;
use crate::loader::PluginVms;

use super::http_stream::CStream;
use super::vms::VmsGuard;
use crate::abi::pairs;

use super::{
    bytes_arg, fail_with, ffi_call, guard, pwh_buffer, pwh_bytes, pwh_destroy_fn, pwh_log_fn, pwh_stream_vtable,
    pwh_vms, FAILED,
};

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

pub(super) fn phase_code(phase: Phase) -> i32 {
    (match phase {
        Phase::RequestHeaders => pwh_phase::RequestHeaders,
        Phase::RequestBody => pwh_phase::RequestBody,
        Phase::ResponseHeaders => pwh_phase::ResponseHeaders,
        Phase::ResponseBody => pwh_phase::ResponseBody,
    }) as i32
}

pub(super) fn phase_from_code(code: i32) -> Option<Phase> {
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
pub(super) struct CChainShared {
    pub(super) vt: pwh_chain_vtable,
    pub(super) signals: Signals,
}

// SAFETY: `pwh_chain_vtable`'s contract: the callbacks and user_data are used
// from the thread driving the chain, and `schedule_resume` from the thread
// driving the `pwh_vms` (the same one, for a server that follows the API).
unsafe impl Send for CChainShared {}
// SAFETY: as above; `&CChainShared` only copies fields and calls the vtable.
unsafe impl Sync for CChainShared {}

#[derive(Clone)]
pub(super) struct CChainServer(Arc<CChainShared>);

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
            unsafe {
                f(
                    self.0.vt.user_data,
                    pwh_bytes::of(plugin.as_bytes()),
                    level as i32,
                    pwh_bytes::of(message.as_bytes()),
                )
            }
        }
    }
}

/// The `pwh_vms` a chain runs on, by pointer: `pwh_chain_new`'s contract keeps
/// it alive and unmoved until `pwh_chain_free`.
pub(super) struct ChainVmsRef(*const pwh_vms);

/// The VMs of a `pwh_vms`, held through its busy flag.
pub(super) struct VmsOnly<'a>(VmsGuard<'a>);

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
pub(super) struct DestroyOnce(pwh_destroy_fn, *mut c_void);

impl Drop for DestroyOnce {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            // SAFETY: the server's destroy callback with its user_data, called once.
            unsafe { f(self.1) }
        }
    }
}

pub(super) struct ChainState {
    pub(super) chain: Chain<CChainServer, ChainVmsRef>,
    /// The response of the last `PWH_FLOW_RESPOND`.
    pub(super) response: Option<LocalResponse>,
    /// After `chain` (fields drop in order): the stream's user_data is
    /// released once the links are finished.
    pub(super) _destroy: DestroyOnce,
}

/// One transaction through the plugins of a `pwh_vms` by the host's chain
/// rules (order, pauses, resumes, failure policies, body limits; see
/// `docs/adr/0001-one-filter-chain.md`). From `pwh_chain_new`, freed with
/// `pwh_chain_free`. Used by one thread at a time (the one driving its
/// `pwh_vms`); a call while another is in progress fails ("busy").
pub struct pwh_chain {
    pub(super) state: std::sync::Mutex<ChainState>,
}

// SAFETY: the raw pointers inside (the pwh_vms, the streams' user_data) are
// used only on the thread driving the chain, as the API requires.
unsafe impl Send for ChainState {}

impl pwh_chain {
    pub(super) fn lock(&self) -> Result<std::sync::MutexGuard<'_, ChainState>, String> {
        match self.state.try_lock() {
            Ok(guard) => Ok(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => {
                Err("pwh_chain is busy: called from one of its own callbacks, or from two threads at once".to_string())
            }
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
    let destroy =
        DestroyOnce(stream_vt.and_then(|vt| vt.destroy), stream_vt.map_or(ptr::null_mut(), |vt| vt.user_data));
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
        let chain = Chain::new(ChainVmsRef(vms), plugins.iter().copied(), server, |_| CStream::new(link_vt))
            .map_err(|e| e.to_string())?;
        Ok(Box::into_raw(Box::new(pwh_chain {
            state: std::sync::Mutex::new(ChainState { chain, response: None, _destroy: destroy }),
        })))
    };
    // SAFETY: `error` is NULL or a live buffer (contract).
    unsafe { ffi_call(error, ptr::null_mut(), body) }
}

/// Fills `step` (and `out` for body bytes) from a flow.
pub(super) fn report(
    state: &mut ChainState,
    phase: Phase,
    flow: Flow,
    out: Option<&mut pwh_buffer>,
    step: &mut pwh_chain_step,
) {
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
pub(super) unsafe fn on_chain(
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
pub unsafe extern "C" fn pwh_chain_on_request_headers(
    chain: *mut pwh_chain,
    num_headers: usize,
    end_of_stream: bool,
    step: *mut pwh_chain_step,
    error: *mut pwh_buffer,
) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        on_chain(chain, ptr::null_mut(), step, error, |c| {
            Some((Phase::RequestHeaders, c.on_request_headers(num_headers, end_of_stream)))
        })
    }
}

/// The response headers through the chain, last plugin first.
///
/// # Safety
/// As `pwh_chain_on_request_headers`.
#[no_mangle]
pub unsafe extern "C" fn pwh_chain_on_response_headers(
    chain: *mut pwh_chain,
    num_headers: usize,
    end_of_stream: bool,
    step: *mut pwh_chain_step,
    error: *mut pwh_buffer,
) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        on_chain(chain, ptr::null_mut(), step, error, |c| {
            Some((Phase::ResponseHeaders, c.on_response_headers(num_headers, end_of_stream)))
        })
    }
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
pub unsafe extern "C" fn pwh_chain_on_request_body(
    chain: *mut pwh_chain,
    chunk: pwh_bytes,
    end_of_stream: bool,
    out: *mut pwh_buffer,
    step: *mut pwh_chain_step,
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
        on_chain(chain, out, step, error, |c| Some((Phase::RequestBody, c.on_request_body(chunk, end_of_stream))))
    }
}

/// One more response body chunk, last plugin first (see `pwh_chain_on_request_body`).
///
/// # Safety
/// As `pwh_chain_on_request_body`.
#[no_mangle]
pub unsafe extern "C" fn pwh_chain_on_response_body(
    chain: *mut pwh_chain,
    chunk: pwh_bytes,
    end_of_stream: bool,
    out: *mut pwh_buffer,
    step: *mut pwh_chain_step,
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
        on_chain(chain, out, step, error, |c| Some((Phase::ResponseBody, c.on_response_body(chunk, end_of_stream))))
    }
}

/// The server's wake-up after `schedule_resume`: the chain goes on where it
/// waited (`step->phase` says which phase; body bytes in `out`), answers, or
/// resets; `PWH_FLOW_NOTHING` when there was nothing to do.
///
/// # Safety
/// As `pwh_chain_on_request_body` (without `chunk`).
#[no_mangle]
pub unsafe extern "C" fn pwh_chain_resume(
    chain: *mut pwh_chain,
    out: *mut pwh_buffer,
    step: *mut pwh_chain_step,
    error: *mut pwh_buffer,
) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { on_chain(chain, out, step, error, |c| c.resume()) }
}

/// The pause timer fired: a 504 (`PWH_FLOW_RESPOND`) or an aborted response,
/// unless a resume was on its way; `PWH_FLOW_NOTHING` when nothing waits.
///
/// # Safety
/// As `pwh_chain_resume`.
#[no_mangle]
pub unsafe extern "C" fn pwh_chain_on_pause_timeout(
    chain: *mut pwh_chain,
    out: *mut pwh_buffer,
    step: *mut pwh_chain_step,
    error: *mut pwh_buffer,
) -> i32 {
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
pub unsafe extern "C" fn pwh_chain_response(
    chain: *mut pwh_chain,
    status: *mut u32,
    headers: *mut pwh_buffer,
    body: *mut pwh_buffer,
    error: *mut pwh_buffer,
) -> i32 {
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
