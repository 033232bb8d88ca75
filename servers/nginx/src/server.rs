//! Server-wide services for the VMs of one worker: logging through
//! `ngx_log_error` (plugin name in every line), tick timers and queue
//! wake-ups on the worker's event loop, and outgoing calls.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, Weak};
use std::time::Duration;

use ngx::ffi::*;

pub use super::base::post_event;
use super::base::{cycle_log, log, log_level, with_vm, WorkerVms};
use proxy_wasm_host::abi::{LogLevel, Status};
use proxy_wasm_host::host::{HttpCallRequest, PluginRef, ServerHost};

/// A periodic `on_tick` of one root context: an nginx timer on the worker's
/// event loop, cancelable (a worker shutting down does not wait for it).
struct Tick {
    ev: ngx_event_t,
    generation: Weak<WorkerVms>,
    vm: usize,
    root: u32,
    period: Duration,
}

/// A one-shot event on the worker's loop (queue wake-up).
struct Posted {
    ev: ngx_event_t,
    generation: Weak<WorkerVms>,
    vm: usize,
    root: u32,
    queue: u32,
}

/// Tick timers are only touched on the worker's thread.
struct TickBox(Box<Tick>);
// SAFETY: nginx workers are single-threaded; the box is never shared across threads.
unsafe impl Send for TickBox {}

/// The ServerHost of one VM in one worker.
pub struct NgxServer {
    /// Unique in the process for its whole life (never reused, unlike an
    /// index or an address): what tells this VM's outgoing calls apart from
    /// other VMs' and other generations', which number theirs from 1 too.
    id: u64,
    vm: usize,
    /// `None` for the validation run in the master's child: no timers there.
    live: bool,
    generation: OnceLock<Weak<WorkerVms>>,
    ticks: Mutex<HashMap<u32, TickBox>>,
    pending_ticks: Mutex<HashMap<u32, Duration>>,
}

fn next_server_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl NgxServer {
    pub fn for_worker(vm: usize) -> NgxServer {
        NgxServer {
            id: next_server_id(),
            vm,
            live: true,
            generation: OnceLock::new(),
            ticks: Default::default(),
            pending_ticks: Default::default(),
        }
    }

    /// For validating plugins outside any worker (nothing is scheduled).
    pub fn canary() -> NgxServer {
        NgxServer {
            id: next_server_id(),
            vm: 0,
            live: false,
            generation: OnceLock::new(),
            ticks: Default::default(),
            pending_ticks: Default::default(),
        }
    }

    /// Ties the server to the generation that owns its VM; arms ticks asked
    /// for during start-up.
    pub fn attach(&self, generation: Weak<WorkerVms>) {
        let _ = self.generation.set(generation);
        let pending: Vec<(u32, Duration)> =
            self.pending_ticks.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for (root, period) in pending {
            self.set_tick_period(root, Some(period));
        }
    }

    /// Stops every timer (the VM is being shut down).
    pub fn stop_ticks(&self) {
        let ticks: Vec<TickBox> =
            self.ticks.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, t)| t).collect();
        for t in ticks {
            cancel(t);
        }
    }
}

fn cancel(t: TickBox) {
    let mut tick = t.0;
    // SAFETY: the event is ours and lives in the box; removing its timer (if
    // armed) before dropping the box leaves nginx no reference to it.
    unsafe {
        if tick.ev.timer_set() != 0 {
            ngx_del_timer(&mut tick.ev);
        }
        if tick.ev.posted() != 0 {
            ngx_delete_posted_event(&mut tick.ev);
        }
    }
}

unsafe extern "C" fn on_tick_event(ev: *mut ngx_event_t) {
    let r = std::panic::catch_unwind(|| {
        // SAFETY: `data` is the Tick that owns this event; it is alive while
        // the timer is armed (cancel removes the timer before freeing it).
        let tick = unsafe { &mut *((*ev).data as *mut Tick) };
        let (generation, vm, root, period) = (tick.generation.clone(), tick.vm, tick.root, tick.period);
        // Re-arm first: the callback may change or stop the period, which
        // replaces or removes this timer.
        // SAFETY: the event is live (see above).
        unsafe { ngx_add_timer(ev, period.as_millis().max(1) as ngx_msec_t) };
        with_vm(&generation, vm, "on_tick", |vm| vm.on_tick(root));
    });
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in on_tick");
    }
}

unsafe extern "C" fn on_queue_event(ev: *mut ngx_event_t) {
    let r = std::panic::catch_unwind(|| {
        // SAFETY: `data` is the Box<Posted> leaked in notify_queue_ready, used once here.
        let posted = unsafe { Box::from_raw((*ev).data as *mut Posted) };
        with_vm(&posted.generation, posted.vm, "on_queue_ready", |vm| vm.on_queue_ready(posted.root, posted.queue));
    });
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in on_queue_ready");
    }
}

impl ServerHost for NgxServer {
    fn log(&self, plugin: &PluginRef, level: LogLevel, message: &str) {
        if !self.live {
            if matches!(level, LogLevel::Error | LogLevel::Critical) {
                eprintln!("[proxy_wasm] {}: {message}", plugin.name);
            }
            return;
        }
        log(level, &format!("[proxy_wasm] {}: {message}", plugin.name));
    }

    fn log_level(&self) -> LogLevel {
        log_level()
    }

    fn dispatch_http_call(&self, _root_context_id: u32, token: u32, request: HttpCallRequest) -> Result<(), Status> {
        if proxy_wasm_host::http_client::parse_upstream(&request.upstream).is_none() {
            return Err(Status::BadArgument);
        }
        let Some(generation) = self.generation.get().filter(|_| self.live) else { return Err(Status::InternalFailure) };
        super::http_call::dispatch_http_call(generation.clone(), self.vm, (self.id, token), request)
    }

    fn cancel_http_call(&self, token: u32) {
        super::http_call::cancel_http_call((self.id, token));
    }

    fn http_calls_full(&self) -> Option<String> {
        super::http_call::calls_full()
    }

    fn set_tick_period(&self, root_context_id: u32, period: Option<Duration>) {
        if let Some(t) = self.ticks.lock().unwrap_or_else(|p| p.into_inner()).remove(&root_context_id) {
            cancel(t);
        }
        let Some(period) = period.filter(|_| self.live) else {
            self.pending_ticks.lock().unwrap_or_else(|p| p.into_inner()).remove(&root_context_id);
            return;
        };
        let Some(generation) = self.generation.get() else {
            self.pending_ticks.lock().unwrap_or_else(|p| p.into_inner()).insert(root_context_id, period);
            return;
        };
        let mut tick = Box::new(Tick {
            // SAFETY: a zeroed ngx_event_t is nginx's initial state (ngx_pcalloc'd events).
            ev: unsafe { std::mem::zeroed() },
            generation: generation.clone(),
            vm: self.vm,
            root: root_context_id,
            period,
        });
        let data = &mut *tick as *mut Tick as *mut c_void;
        tick.ev.data = data;
        tick.ev.handler = Some(on_tick_event);
        tick.ev.log = cycle_log();
        tick.ev.set_cancelable(1);
        // SAFETY: the event lives in the box, kept in `ticks` until cancelled.
        unsafe { ngx_add_timer(&mut tick.ev, period.as_millis().max(1) as ngx_msec_t) };
        self.ticks.lock().unwrap_or_else(|p| p.into_inner()).insert(root_context_id, TickBox(tick));
    }

    fn notify_queue_ready(&self, root_context_id: u32, queue_id: u32) {
        let Some(generation) = self.generation.get().filter(|_| self.live) else { return };
        let mut posted = Box::new(Posted {
            // SAFETY: a zeroed ngx_event_t is nginx's initial state; filled below.
            ev: unsafe { std::mem::zeroed() },
            generation: generation.clone(),
            vm: self.vm,
            root: root_context_id,
            queue: queue_id,
        });
        posted.ev.handler = Some(on_queue_event);
        posted.ev.log = cycle_log();
        let raw = Box::into_raw(posted);
        // SAFETY: `raw` is live until the handler takes it back.
        unsafe {
            (*raw).ev.data = raw as *mut c_void;
            post_event(&mut (*raw).ev);
        }
    }
}
