//! The plugins of one worker process: compiled and started in
//! `init_process` (after fork), replaced after a failure when the failure
//! policy says so, shut down in `exit_process`.
//!
//! Also the validation of a configuration in the master: the modules are
//! compiled and started once in a child process, so that the master never
//! creates a WebAssembly engine that workers would inherit.

use std::cell::RefCell;
use std::ffi::c_void;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex, Weak};

use ngx::ffi::*;

use super::conf::MainConf;
use super::server::{log, NgxServer};
use crate::abi::LogLevel;
use crate::config::PluginConfig;
use crate::host::ServerHost;
use crate::loader::{self, LoadedPlugin, PluginVms, ReloadBackoff};
use crate::vm::{Vm, VmError};

/// The plugins of the configuration, compiled in this worker.
pub struct PluginSet {
    pub plugins: Vec<LoadedPlugin>,
}

impl PluginSet {
    pub fn exports(&self, plugin: usize, callback: &str) -> bool {
        self.plugins[plugin].code.exports_function(callback)
    }
}

/// One generation of this worker's VMs (replaced after a failure).
pub struct Slot {
    pub set: Arc<PluginSet>,
    pub vms: Mutex<PluginVms>,
    servers: Vec<Arc<NgxServer>>,
    /// When a request last started on it (`kill_options.max_unused_duration`).
    last_used: Mutex<std::time::Instant>,
    /// Retired and shut down (`proxy_on_done` called): kept only while a
    /// plugin's `proxy_done` is awaited.
    shut_down_started: std::sync::atomic::AtomicBool,
}

impl Slot {
    fn shut_down(&self) {
        let mut vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        for (plugin, result) in vms.shutdown() {
            if let Err(e) = result {
                log(LogLevel::Warn, &format!("[proxy_wasm] {}: shutting down: {e}", self.set.plugins[plugin].config.name));
            }
        }
        for s in &self.servers {
            s.stop_ticks();
        }
    }
}

struct Worker {
    set: Option<Arc<PluginSet>>,
    slot: Option<Arc<Slot>>,
    backoff: ReloadBackoff,
    /// Replaced generations (failure reload, recycling) that requests still
    /// use; each is shut down (`proxy_on_done`) once the last one finished.
    retired: Vec<Arc<Slot>>,
}

thread_local! {
    static WORKER: RefCell<Worker> = RefCell::new(Worker { set: None, slot: None, backoff: ReloadBackoff::default(), retired: Vec::new() });
    /// The idle sweeper (`kill_options.max_unused_duration`): a cancelable timer.
    static IDLE_TIMER: RefCell<Option<Box<ngx_event_t>>> = const { RefCell::new(None) };
    /// Ends the waits for `proxy_done` that are over (armed while one runs).
    static DONE_TIMER: RefCell<Option<Box<ngx_event_t>>> = const { RefCell::new(None) };
}

/// How often a worker looks for waits for `proxy_done` that are over while
/// some context waits (each wait is the plugin's `pause_timeout`).
const DONE_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// Some context waits for its plugin's `proxy_done` (its `on_done` returned
/// false): arms the worker's timer that ends such waits once they are over,
/// so that a plugin that never calls it cannot keep its contexts, nor a
/// replaced generation, for ever.
pub fn watch_awaiting_done() {
    DONE_TIMER.with(|t| {
        let mut t = t.borrow_mut();
        let ev = t.get_or_insert_with(|| {
            let mut ev = Box::new(new_event(on_done_check, std::ptr::null_mut()));
            ev.set_cancelable(1);
            ev
        });
        if ev.timer_set() == 0 {
            // SAFETY: the event lives in the thread-local box until exit_process removes its timer.
            unsafe { ngx_add_timer(&mut **ev, DONE_CHECK.as_millis() as ngx_msec_t) };
        }
    });
}

unsafe extern "C" fn on_done_check(_ev: *mut ngx_event_t) {
    let r = std::panic::catch_unwind(|| {
        let now = std::time::Instant::now();
        let slots: Vec<Arc<Slot>> = WORKER.with(|w| {
            let w = w.borrow();
            w.slot.iter().chain(w.retired.iter()).cloned().collect()
        });
        let mut waiting = false;
        for slot in &slots {
            let mut vms = slot.vms.lock().unwrap_or_else(|p| p.into_inner());
            vms.expire_awaiting_done(now);
            waiting |= vms.awaiting_done();
        }
        drop(slots);
        WORKER.with(|w| w.borrow_mut().sweep_retired());
        if waiting {
            watch_awaiting_done();
        }
    });
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) ending waits for proxy_done");
    }
}

impl Worker {
    /// Takes the current generation out of service: its ticks stop now, its
    /// root contexts are shut down once no request uses it.
    fn retire_current(&mut self) {
        if let Some(old) = self.slot.take() {
            for s in &old.servers {
                s.stop_ticks();
            }
            self.retired.push(old);
        }
        self.sweep_retired();
    }

    /// Shuts down the retired generations no request uses any more, and
    /// lets them go once no plugin's `proxy_done` is awaited (a stream context
    /// waiting for it holds its request's context, and so the generation;
    /// a root context whose `on_done` returned false keeps it here), each
    /// wait bounded by the plugin's `pause_timeout`.
    fn sweep_retired(&mut self) {
        let mut waiting = false;
        self.retired.retain(|slot| {
            if Arc::strong_count(slot) > 1 {
                return true;
            }
            let mut vms = slot.vms.lock().unwrap_or_else(|p| p.into_inner());
            if !slot.shut_down_started.swap(true, std::sync::atomic::Ordering::AcqRel) {
                for (plugin, result) in vms.shutdown() {
                    match result {
                        // A failed instance is dropped without calling it.
                        Ok(_) | Err(VmError::Failed(_)) => {}
                        Err(e) => log(LogLevel::Warn, &format!("[proxy_wasm] {}: shutting down old instances: {e}", slot.set.plugins[plugin].config.name)),
                    }
                }
            }
            let keep = vms.awaiting_done();
            waiting |= keep;
            keep
        });
        if waiting {
            watch_awaiting_done();
        }
    }
}

/// Arms this worker's idle sweeper when a plugin has `kill_options.max_unused_duration`.
fn arm_idle_sweeper(every: std::time::Duration) {
    IDLE_TIMER.with(|t| {
        let mut t = t.borrow_mut();
        let ev = t.get_or_insert_with(|| {
            let mut ev = Box::new(new_event(on_idle_sweep, std::ptr::null_mut()));
            ev.set_cancelable(1);
            ev
        });
        if ev.timer_set() == 0 {
            // SAFETY: the event lives in the thread-local box until exit_process removes its timer.
            unsafe { ngx_add_timer(&mut **ev, (every.as_millis() as ngx_msec_t / 2).max(10)) };
        }
    });
}

/// The idle sweeper: instances unused past `kill_options.max_unused_duration`
/// are retired (and shut down when no request holds them), so an idle worker
/// gives their memory back; the next request starts fresh ones.
unsafe extern "C" fn on_idle_sweep(_ev: *mut ngx_event_t) {
    let r = std::panic::catch_unwind(|| {
        let every = WORKER.with(|w| {
            let mut w = w.borrow_mut();
            if let Some(slot) = w.slot.clone() {
                let idle = slot.last_used.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
                let why = slot.vms.lock().unwrap_or_else(|p| p.into_inner()).recycle_reason(&slot.set.plugins, idle);
                if let Some(why) = why.filter(|w| w.contains("unused for")) {
                    log(LogLevel::Info, &format!("[proxy_wasm] shutting idle instances down in this worker: {why}"));
                    w.retire_current();
                }
            }
            w.sweep_retired();
            w.set.as_ref().and_then(|s| PluginVms::shortest_unused_duration(&s.plugins))
        });
        if let Some(every) = every {
            arm_idle_sweeper(every);
        }
    });
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in the idle sweeper");
    }
}

/// The main configuration of a cycle, if it has an http block with this module's.
unsafe fn main_conf(cycle: *mut ngx_cycle_t) -> Option<&'static MainConf> {
    // SAFETY: conf_ctx has a slot per core module; the http slot is an
    // ngx_http_conf_ctx_t (or null without an http block).
    unsafe {
        let ctx = *(*cycle).conf_ctx.add(ngx_http_module.index) as *mut ngx_http_conf_ctx_t;
        if ctx.is_null() {
            return None;
        }
        let conf = *(*ctx).main_conf.add(super::ctx_index()) as *const MainConf;
        conf.as_ref()
    }
}

fn start_slot(set: &Arc<PluginSet>) -> Result<Arc<Slot>, String> {
    let mut servers: Vec<Arc<NgxServer>> = Vec::new();
    let vms = PluginVms::start(&set.plugins, |_| {
        let s = Arc::new(NgxServer::for_worker(servers.len()));
        servers.push(s.clone());
        s as Arc<dyn ServerHost>
    })
    .map_err(|e| e.to_string())?;
    let slot = Arc::new(Slot { set: set.clone(), vms: Mutex::new(vms), servers, last_used: Mutex::new(std::time::Instant::now()), shut_down_started: Default::default() });
    for s in &slot.servers {
        s.attach(Arc::downgrade(&slot));
    }
    Ok(slot)
}

/// `init_process`: compile the plugins and start this worker's VMs.
pub unsafe extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    let r = std::panic::catch_unwind(|| {
        // SAFETY: nginx passes the live cycle.
        let Some(main) = (unsafe { main_conf(cycle) }) else { return };
        if main.plugins.is_empty() {
            return;
        }
        // Before any VM starts: the zone's shared data, queues and metrics.
        super::shm::install_in_worker(main);
        let plugins = match loader::load(&main.plugins) {
            Ok(p) => p,
            Err(e) => {
                log(LogLevel::Critical, &format!("[proxy_wasm] cannot load the plugins in this worker: {e}; requests through them get 503"));
                return;
            }
        };
        for p in &plugins {
            let cache = match &p.compiled_cache {
                Some(crate::module_cache::Outcome::Hit(path)) => format!("compiled code read from the compiled-module cache {}", path.display()),
                Some(crate::module_cache::Outcome::Stored(path)) => format!("compiled, and stored in the compiled-module cache {}", path.display()),
                Some(crate::module_cache::Outcome::NotStored(why)) => format!("compiled, not cached: {why}"),
                None => continue,
            };
            log(LogLevel::Info, &format!("[proxy_wasm] {}: loaded in worker (pid {}) in {:.2} ms: {cache}", p.config.name, std::process::id(), p.load_time.as_secs_f64() * 1e3));
        }
        let set = Arc::new(PluginSet { plugins });
        let slot = match start_slot(&set) {
            Ok(s) => {
                let names: Vec<&str> = set.plugins.iter().map(|p| p.config.name.as_str()).collect();
                log(LogLevel::Info, &format!("[proxy_wasm] plugins started in worker (pid {}): {}", std::process::id(), names.join(", ")));
                Some(s)
            }
            Err(e) => {
                log(LogLevel::Critical, &format!("[proxy_wasm] cannot start the plugins in this worker: {e}"));
                None
            }
        };
        if let Some(every) = PluginVms::shortest_unused_duration(&set.plugins) {
            arm_idle_sweeper(every);
        }
        WORKER.with(|w| {
            let mut w = w.borrow_mut();
            w.set = Some(set);
            w.slot = slot;
        });
    });
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) starting the plugins in this worker");
    }
    NGX_OK as ngx_int_t
}

/// `exit_process`: `on_done`/`on_delete` of every root context, timers stopped.
pub unsafe extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    let _ = std::panic::catch_unwind(|| {
        super::shm::stop_in_worker();
        for timer in [&IDLE_TIMER, &DONE_TIMER] {
            timer.with(|t| {
                if let Some(ev) = t.borrow_mut().as_mut() {
                    if ev.timer_set() != 0 {
                        // SAFETY: our own timer event, still in the tree.
                        unsafe { ngx_del_timer(&mut **ev) };
                    }
                }
            });
        }
        let (slot, retired) = WORKER.with(|w| {
            let mut w = w.borrow_mut();
            (w.slot.take(), std::mem::take(&mut w.retired))
        });
        for slot in retired.iter().chain(slot.iter()) {
            slot.shut_down();
        }
    });
}

/// The VMs requests start on now. After a failure of a plugin with the
/// `reload` policy the VMs are replaced (with back-off); requests already
/// running keep the generation they started on.
pub fn current_slot() -> Option<Arc<Slot>> {
    WORKER.with(|w| {
        let mut w = w.borrow_mut();
        let set = w.set.clone()?;
        if !w.retired.is_empty() {
            w.sweep_retired();
        }
        if let Some(slot) = w.slot.clone() {
            let why = {
                let mut vms = slot.vms.lock().unwrap_or_else(|p| p.into_inner());
                if vms.wants_reload(&set.plugins) {
                    w.backoff.try_reload(std::time::Instant::now()).then(|| "a failure (failure_policy: reload)".to_string())
                } else if vms.any_failed() {
                    None
                } else {
                    let idle = slot.last_used.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
                    vms.recycle_reason(&set.plugins, idle).map(|why| format!("recycling: {why}"))
                }
            };
            let Some(why) = why else {
                *slot.last_used.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
                return Some(slot);
            };
            let names = set.plugins.iter().map(|p| p.config.name.as_str()).collect::<Vec<_>>().join(", ");
            log(LogLevel::Info, &format!("[proxy_wasm] new instances of {names} in this worker after {why}"));
            w.retire_current();
        }
        match start_slot(&set) {
            Ok(s) => {
                w.slot = Some(s.clone());
                Some(s)
            }
            Err(e) => {
                log(LogLevel::Error, &format!("[proxy_wasm] cannot start the plugins in this worker: {e}"));
                None
            }
        }
    })
}

/// The plugin set of this worker (even when its VMs could not start).
pub fn current_set() -> Option<Arc<PluginSet>> {
    WORKER.with(|w| w.borrow().set.clone())
}

/// Runs an event on a VM of a slot if both still exist and the VM has not
/// failed; errors are logged.
pub fn with_vm(slot: &Weak<Slot>, vm: usize, what: &str, f: impl FnOnce(&mut Vm) -> Result<(), VmError>) {
    let Some(slot) = slot.upgrade() else { return };
    let mut vms = slot.vms.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(vm) = vms.vms.get_mut(vm).filter(|vm| vm.failure().is_none()) {
        if let Err(e) = f(vm) {
            log(LogLevel::Error, &format!("[proxy_wasm] {what}: {e}"));
        }
    }
}

pub use super::http_call::{cancel_http_call, dispatch_http_call};

/// Compiles and starts the plugins once, in a child process, and reports the
/// first error (with file and key). The master itself never creates an engine.
pub fn validate_in_child(plugins: &[PluginConfig]) -> Result<(), String> {
    if plugins.is_empty() {
        return Ok(());
    }
    let mut fds = [0; 2];
    // SAFETY: pipe() fills two descriptors we own.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(format!("cannot validate the plugins: pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: nginx reads its configuration in a single thread, so the child
    // starts in a consistent state; it only compiles and exits with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        // SAFETY: closing the descriptors we own.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        return Err(format!("cannot validate the plugins: fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: the child owns fds[1] (fds[0] is the parent's).
        unsafe { libc::close(fds[0]) };
        let outcome = std::panic::catch_unwind(|| check_plugins(plugins)).unwrap_or_else(|_| Err("internal error (panic) validating the plugins".into()));
        // SAFETY: fds[1] is ours; File takes it over.
        let mut out = unsafe { std::fs::File::from_raw_fd(fds[1]) };
        let code = match outcome {
            Ok(()) => 0,
            Err(e) => {
                let _ = out.write_all(e.as_bytes());
                1
            }
        };
        drop(out);
        // SAFETY: leave without running the master's exit handlers.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: the parent owns fds[0].
    unsafe { libc::close(fds[1]) };
    // SAFETY: as above.
    let mut input = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let mut message = String::new();
    let _ = input.read_to_string(&mut message);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {}
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else if !message.is_empty() {
        Err(message)
    } else {
        Err(format!("the plugin validation process ended abnormally (status {status})"))
    }
}

fn check_plugins(plugins: &[PluginConfig]) -> Result<(), String> {
    let loaded = loader::load(plugins).map_err(|e| e.to_string())?;
    let mut canary = PluginVms::start(&loaded, |_| Arc::new(NgxServer::canary()) as Arc<dyn ServerHost>).map_err(|e| e.to_string())?;
    canary.shutdown();
    Ok(())
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
