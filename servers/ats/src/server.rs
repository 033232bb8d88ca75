//! Server-wide services for the VMs of one Traffic Server thread: logging into
//! diags.log and the debug tag `proxy_wasm`, tick timers and queue wake-ups on
//! the thread that owns the VM.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use super::sys::*;
use super::{AtsGeneration, PluginSet};
use proxy_wasm_host::abi::{LogLevel, Status};
use proxy_wasm_host::host::{HttpCallRequest, HttpCallResponse, PluginRef, ServerHost};
use proxy_wasm_host::http_client;

/// Outgoing calls in flight in this process (each on a thread of its own);
/// past `http_client::max_calls_in_flight` (default 4096) more are refused.
static HTTP_CALLS_IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub const TAG: &[u8] = b"proxy_wasm\0";

fn tag() -> *const c_char {
    TAG.as_ptr() as *const c_char
}

/// Writes one line to Traffic Server's logs: trace/debug under the debug tag
/// `proxy_wasm`, info as a note, warn as a warning, error and critical as errors
/// (visible in diags.log without any debug tag).
pub fn log(level: LogLevel, message: &str) {
    if !log_enabled(level) {
        return;
    }
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

/// Whether a line at `level` is written: debug and trace lines only with the
/// `proxy_wasm` debug tag (callers skip formatting them otherwise).
pub fn log_enabled(level: LogLevel) -> bool {
    // SAFETY: `tag()` is a NUL-terminated static string.
    !matches!(level, LogLevel::Trace | LogLevel::Debug) || unsafe { TSIsDebugTagSet(tag()) } != 0
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

/// The thread a VM belongs to; timers and wake-ups for it are scheduled there.
#[derive(Clone, Copy)]
struct Thread(TSEventThread);
// SAFETY: an event thread handle is an opaque pointer Traffic Server accepts
// from any thread when scheduling onto that thread.
unsafe impl Send for Thread {}
// SAFETY: as above; it is never dereferenced by us.
unsafe impl Sync for Thread {}

/// A periodic `on_tick` for one root context: a one-shot event on the VM's thread that its
/// handler schedules again after each tick. Not `TSContScheduleEveryOnThread`: Traffic Server
/// counts a continuation's pending events up when one is scheduled and down at each firing, so a
/// periodic event fired more than once leaves the count below zero, and destroying that
/// continuation (a reload or a replacement retiring the VM) aborted traffic_server with a failed
/// assertion `m_event_count >= 0`. A one-shot event keeps the count balanced.
struct Tick {
    generation: Weak<AtsGeneration>,
    /// The plugin set, whose retirement (a reload) stops the tick too.
    set: Option<Arc<PluginSet>>,
    vm: usize,
    root: u32,
    period: TSHRTime,
    thread: TSEventThread,
    /// The pending event (null while the handler runs: it is the one firing); a Cell, as
    /// `cancel_tick` may clear it from inside the handler (on the same thread).
    action: std::cell::Cell<TSAction>,
    /// Cancelled while its handler was running: the handler frees it.
    cancelled: AtomicBool,
    in_handler: AtomicBool,
}

#[derive(Clone, Copy)]
struct TickHandle(TSCont);
// SAFETY: the continuation is only touched on the VM's own thread.
unsafe impl Send for TickHandle {}

/// The ServerHost of one VM instance.
pub struct AtsServer {
    vm: usize,
    /// `None` for the start-up check, which must not arm timers.
    thread: Option<Thread>,
    /// The plugin set the VM runs (`None` for the start-up check).
    set: Option<Arc<PluginSet>>,
    generation: OnceLock<Weak<AtsGeneration>>,
    ticks: Mutex<HashMap<u32, TickHandle>>,
    /// Periods asked for before the generation existed (in `proxy_on_configure`).
    pending_ticks: Mutex<HashMap<u32, Duration>>,
}

impl AtsServer {
    /// For a VM of the current event thread.
    pub fn for_current_thread(vm: usize, set: Arc<PluginSet>) -> AtsServer {
        // SAFETY: called on a Traffic Server event thread (a hook handler).
        let thread = unsafe { TSEventThreadSelf() };
        AtsServer {
            vm,
            thread: (!thread.is_null()).then_some(Thread(thread)),
            set: Some(set),
            generation: OnceLock::new(),
            ticks: Default::default(),
            pending_ticks: Default::default(),
        }
    }

    /// For the start-up check of the plugins in TSPluginInit.
    pub fn canary() -> AtsServer {
        AtsServer {
            vm: 0,
            thread: None,
            set: None,
            generation: OnceLock::new(),
            ticks: Default::default(),
            pending_ticks: Default::default(),
        }
    }

    /// Ties the server to the generation that owns its VM (set once it started).
    pub fn attach(&self, generation: Weak<AtsGeneration>) {
        let _ = self.generation.set(generation);
        let pending: Vec<(u32, Duration)> =
            self.pending_ticks.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for (root, period) in pending {
            self.set_tick_period(root, Some(period));
        }
    }

    fn cancel_tick(&self, root: u32) {
        let Some(TickHandle(contp)) = self.ticks.lock().unwrap_or_else(|p| p.into_inner()).remove(&root) else {
            return;
        };
        // SAFETY: the continuation and its Tick were created in `set_tick_period`
        // on this (the VM's) thread, so its handler is not running concurrently;
        // if we are inside that handler, it frees them when it returns.
        unsafe {
            let tick = TSContDataGet(contp) as *mut Tick;
            let action = (*tick).action.replace(std::ptr::null_mut());
            if !action.is_null() {
                TSActionCancel(action);
            }
            if (*tick).in_handler.load(Ordering::Acquire) {
                (*tick).cancelled.store(true, Ordering::Release);
            } else {
                drop(Box::from_raw(tick));
                TSContDestroy(contp);
            }
        }
    }
}

extern "C" fn on_tick_event(contp: TSCont, _event: TSEvent, _edata: *mut c_void) -> c_int {
    // Nothing may unwind into Traffic Server: the tick (sweeping retired
    // VMs, copying stats) runs under `catch_unwind`, and `in_handler` is
    // cleared even when a step panicked, so the timer is still freed.
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the data is the Box<Tick> set in `set_tick_period`, freed only
        // on this thread by `cancel_tick` (not while the handler runs) or below.
        let raw = unsafe { TSContDataGet(contp) as *mut Tick };
        // SAFETY: as above.
        let tick = unsafe { &*raw };
        // The event that fired is spent: nothing to cancel until it is scheduled again.
        tick.action.set(std::ptr::null_mut());
        tick.in_handler.store(true, Ordering::Release);
        // A reload or a replacement retired these instances: they no longer
        // tick, and this thread shuts them down once no transaction uses them (the shutdown may cancel
        // this very timer, which `in_handler` makes safe).
        let alive = catch_unwind(AssertUnwindSafe(|| {
            let retired = tick
                .generation
                .upgrade()
                .is_some_and(|g| g.is_retired() || tick.set.as_ref().is_some_and(|s| s.is_retired()));
            if retired {
                super::sweep_thread_generations();
                tick.generation.strong_count() > 0
            } else {
                with_vm(&tick.generation, tick.vm, "on_tick", |vm| vm.on_tick(tick.root))
            }
        }))
        .unwrap_or_else(|_| {
            log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in a tick");
            true
        });
        tick.in_handler.store(false, Ordering::Release);
        if catch_unwind(super::stats::sync_soon).is_err() {
            log(LogLevel::Critical, "[proxy_wasm] internal error (panic) copying plugin metrics into stats");
        }
        if !alive || tick.cancelled.load(Ordering::Acquire) {
            // The VMs are gone (replaced or reloaded), or the plugin stopped its timer (or set
            // another period, which made a new timer): no event is pending, so nothing else refers
            // to this continuation.
            // SAFETY: as above; the Box is taken back once.
            unsafe {
                drop(Box::from_raw(raw));
                TSContDestroy(contp);
            }
        } else {
            // SAFETY: the continuation lives until it is cancelled (`cancel_tick`, on this thread)
            // or its handler frees it; scheduled on the VM's own thread.
            tick.action.set(unsafe { TSContScheduleOnThread(contp, tick.period, tick.thread) });
        }
    }));
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in a tick timer");
    }
    0
}

thread_local! {
    /// This thread's idle sweeper is armed (at most one per thread).
    static IDLE_SWEEPER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// This thread's done sweeper is armed (at most one per thread).
    static DONE_SWEEPER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Arms, once per thread and for the life of the process, a timer every
/// `every` that ends the waits for `proxy_done` that are over on this thread
/// (`super::expire_awaiting_done`). Cheap when nothing waits.
pub fn arm_done_sweeper(every: Duration) {
    if DONE_SWEEPER.with(|armed| armed.replace(true)) {
        return;
    }
    // SAFETY: a continuation with its own mutex and no data, scheduled on
    // the current event thread for the life of the process.
    unsafe {
        let thread = TSEventThreadSelf();
        if thread.is_null() {
            DONE_SWEEPER.with(|armed| armed.set(false));
            return;
        }
        let contp = TSContCreate(Some(on_done_sweep), TSMutexCreate());
        TSContScheduleEveryOnThread(contp, every.as_millis() as TSHRTime, thread);
    }
}

extern "C" fn on_done_sweep(_contp: TSCont, _event: TSEvent, _edata: *mut c_void) -> c_int {
    if catch_unwind(super::expire_awaiting_done).is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) ending waits for proxy_done");
    }
    0
}

/// Arms, once per thread, a timer that retires instances that sat unused
/// (`kill_options.max_unused_duration`); it runs every half of `every`.
pub fn arm_idle_sweeper(every: Duration) {
    if IDLE_SWEEPER.with(|armed| armed.replace(true)) {
        return;
    }
    let period = (every / 2).clamp(Duration::from_millis(100), Duration::from_secs(10));
    // SAFETY: a continuation with its own mutex and no data, scheduled on
    // the current event thread for the life of the process.
    unsafe {
        let thread = TSEventThreadSelf();
        if thread.is_null() {
            IDLE_SWEEPER.with(|armed| armed.set(false));
            return;
        }
        let contp = TSContCreate(Some(on_idle_sweep), TSMutexCreate());
        TSContScheduleEveryOnThread(contp, period.as_millis() as TSHRTime, thread);
    }
}

extern "C" fn on_idle_sweep(_contp: TSCont, _event: TSEvent, _edata: *mut c_void) -> c_int {
    if catch_unwind(super::retire_idle_generations).is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in the idle sweeper");
    }
    0
}

fn max_calls_in_flight() -> usize {
    http_client::max_calls_in_flight(|w| log(LogLevel::Warn, &format!("[proxy_wasm] {w}")))
}

/// An outgoing call, performed on a thread of its own (blocking I/O never
/// runs on Traffic Server's event threads); its answer is delivered on the
/// VM's thread.
struct CallJob {
    request: HttpCallRequest,
    done: CallDone,
    thread: Thread,
}

struct CallDone {
    generation: Weak<AtsGeneration>,
    vm: usize,
    token: u32,
    response: HttpCallResponse,
}

extern "C" fn http_call_thread(data: *mut c_void) -> *mut c_void {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `data` is the Box<CallJob> leaked by `dispatch_http_call`, used once.
        let job = unsafe { Box::from_raw(data as *mut CallJob) };
        let CallJob { request, mut done, thread } = *job;
        done.response = catch_unwind(AssertUnwindSafe(|| http_client::call(&request)))
            .unwrap_or_else(|_| HttpCallResponse::failed(http_client::FAILURE_PROTOCOL, "internal error"));
        HTTP_CALLS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: this thread was made by TSThreadCreate, so it may use the API;
        // the one-shot continuation takes the Box back in its handler.
        unsafe {
            let contp = TSContCreate(Some(on_call_done), TSMutexCreate());
            TSContDataSet(contp, Box::into_raw(Box::new(done)) as *mut c_void);
            TSContScheduleOnThread(contp, 0, thread.0);
        }
    }));
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in an http_call thread; the call gets no answer");
    }
    std::ptr::null_mut()
}

extern "C" fn on_call_done(contp: TSCont, _event: TSEvent, _edata: *mut c_void) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the data is the Box<CallDone> set in `http_call_thread`, used once.
        let done = unsafe { Box::from_raw(TSContDataGet(contp) as *mut CallDone) };
        let CallDone { generation, vm, token, response } = *done;
        with_vm(&generation, vm, "on_http_call_response", |vm| vm.on_http_call_response(token, response));
    }));
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) delivering an http_call answer");
    }
    // SAFETY: the continuation fired once and is not referenced any more.
    unsafe { TSContDestroy(contp) };
    0
}

/// Runs an event on a VM of a generation, if it still exists and the VM
/// has not failed (`Generation::with_vm`); errors are logged. Returns false
/// when the generation is gone.
fn with_vm(
    generation: &Weak<AtsGeneration>,
    vm: usize,
    what: &str,
    f: impl FnOnce(&mut proxy_wasm_host::vm::Vm) -> Result<(), proxy_wasm_host::vm::VmError>,
) -> bool {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let Some(generation) = generation.upgrade() else { return false };
        if let Some(Err(e)) = generation.with_vm(vm, f) {
            log(LogLevel::Error, &format!("[proxy_wasm] {what}: {e}"));
        }
        true
    }));
    r.unwrap_or_else(|_| {
        log(LogLevel::Critical, &format!("[proxy_wasm] internal error (panic) in {what}"));
        true
    })
}

/// A one-shot `on_queue_ready` on the VM's thread.
struct QueueWakeup {
    generation: Weak<AtsGeneration>,
    vm: usize,
    root: u32,
    queue: u32,
}

extern "C" fn on_queue_event(contp: TSCont, _event: TSEvent, _edata: *mut c_void) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the data is the Box<QueueWakeup> set in `notify_queue_ready`,
        // used once, here.
        let wakeup = unsafe { Box::from_raw(TSContDataGet(contp) as *mut QueueWakeup) };
        with_vm(&wakeup.generation, wakeup.vm, "on_queue_ready", |vm| vm.on_queue_ready(wakeup.root, wakeup.queue));
    }));
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) delivering a queue notification");
    }
    // SAFETY: the continuation fired once and is not referenced any more.
    unsafe { TSContDestroy(contp) };
    0
}

impl ServerHost for AtsServer {
    fn log(&self, plugin: &PluginRef, level: LogLevel, message: &str) {
        // TSDebug filters by tag itself; other levels always reach diags.log.
        log(level, &format!("[proxy_wasm] {}: {message}", plugin.name));
    }

    fn log_level(&self) -> LogLevel {
        log_level()
    }

    fn dispatch_http_call(&self, _root_context_id: u32, token: u32, request: HttpCallRequest) -> Result<(), Status> {
        if http_client::parse_upstream(&request.upstream).is_none() {
            return Err(Status::BadArgument);
        }
        let (Some(thread), Some(generation)) = (self.thread, self.generation.get()) else {
            return Err(Status::InternalFailure);
        };
        // The core asked `http_calls_full` first (and logged a refusal once
        // per plugin); this catches calls other threads started meanwhile.
        if HTTP_CALLS_IN_FLIGHT.fetch_add(1, Ordering::Relaxed) >= max_calls_in_flight() {
            HTTP_CALLS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
            return Err(Status::InternalFailure);
        }
        let job = Box::new(CallJob {
            request,
            done: CallDone {
                generation: generation.clone(),
                vm: self.vm,
                token,
                response: HttpCallResponse::default(),
            },
            thread,
        });
        let raw = Box::into_raw(job);
        // SAFETY: the thread takes ownership of the job; on failure we take it back.
        let t = unsafe { TSThreadCreate(Some(http_call_thread), raw as *mut c_void) };
        if t.is_null() {
            // SAFETY: the thread was not created, so the job is still ours.
            drop(unsafe { Box::from_raw(raw) });
            HTTP_CALLS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
            return Err(Status::InternalFailure);
        }
        Ok(())
    }

    fn http_calls_full(&self) -> Option<String> {
        let in_flight = HTTP_CALLS_IN_FLIGHT.load(Ordering::Relaxed);
        let max = max_calls_in_flight();
        (in_flight >= max).then(|| {
            format!(
                "{in_flight} calls are in flight in this Traffic Server process, the most it allows ({} {max})",
                http_client::MAX_CALLS_IN_FLIGHT_ENV
            )
        })
    }

    fn set_tick_period(&self, root_context_id: u32, period: Option<Duration>) {
        self.cancel_tick(root_context_id);
        let (Some(Thread(thread)), Some(period)) = (self.thread, period) else {
            self.pending_ticks.lock().unwrap_or_else(|p| p.into_inner()).remove(&root_context_id);
            return;
        };
        let Some(generation) = self.generation.get() else {
            self.pending_ticks.lock().unwrap_or_else(|p| p.into_inner()).insert(root_context_id, period);
            return;
        };
        let tick = Box::new(Tick {
            generation: generation.clone(),
            set: self.set.clone(),
            vm: self.vm,
            root: root_context_id,
            period: period.as_millis().max(1) as TSHRTime,
            thread,
            action: std::cell::Cell::new(std::ptr::null_mut()),
            cancelled: AtomicBool::new(false),
            in_handler: AtomicBool::new(false),
        });
        // SAFETY: a continuation with its own mutex, scheduled on the VM's
        // thread; its data is a leaked Box<Tick> freed by cancel_tick or its handler.
        unsafe {
            let contp = TSContCreate(Some(on_tick_event), TSMutexCreate());
            let raw = Box::into_raw(tick);
            TSContDataSet(contp, raw as *mut c_void);
            (*raw).action.set(TSContScheduleOnThread(contp, (*raw).period, thread));
            self.ticks.lock().unwrap_or_else(|p| p.into_inner()).insert(root_context_id, TickHandle(contp));
        }
    }

    fn notify_queue_ready(&self, root_context_id: u32, queue_id: u32) {
        let (Some(Thread(thread)), Some(generation)) = (self.thread, self.generation.get()) else { return };
        let wakeup = Box::new(QueueWakeup {
            generation: generation.clone(),
            vm: self.vm,
            root: root_context_id,
            queue: queue_id,
        });
        // SAFETY: a one-shot continuation with its own mutex on the VM's thread;
        // its handler takes the Box back and destroys the continuation.
        unsafe {
            let contp = TSContCreate(Some(on_queue_event), TSMutexCreate());
            TSContDataSet(contp, Box::into_raw(wakeup) as *mut c_void);
            TSContScheduleOnThread(contp, 0, thread);
        }
    }
}
