//! The plugins of one worker process: compiled in `init_process` (after
//! fork), run as a series of VM generations (`chain::Generations`): replaced
//! after a failure when the failure policy says so, or when an instance
//! passes its `kill_options`; shut down in `exit_process`.
//!
//! Also the validation of a configuration in the master: the modules are
//! compiled and started once in a child process, so that the master never
//! creates a WebAssembly engine that workers would inherit.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ngx::ffi::*;

use super::base::{log, new_event, WorkerVms};
use super::conf::MainConf;
use super::server::NgxServer;
use ngx::http::HttpModuleMainConf;
use proxy_wasm_host::abi::LogLevel;
use proxy_wasm_host::chain::{
    Callbacks, Exclusive, GenerationError, GenerationHost, Generations, PluginSet, RecycleReason,
};
use proxy_wasm_host::config::FailurePolicy;
use proxy_wasm_host::host::ServerHost;
use proxy_wasm_host::loader::{self, VmKey};

/// The worker's side of its generations: a `NgxServer` per VM, attached to
/// its generation once started; their ticks stop when it is retired.
#[derive(Default)]
struct Host {
    /// The servers of the generation being started.
    starting: Vec<Arc<NgxServer>>,
    /// The servers of each generation in service, by generation number.
    servers: HashMap<u64, Vec<Arc<NgxServer>>>,
}

impl GenerationHost<Exclusive> for Host {
    fn server_host(&mut self, vm: usize, _key: &VmKey) -> Arc<dyn ServerHost> {
        if vm == 0 {
            // What a start that failed left behind.
            self.starting.clear();
        }
        let server = Arc::new(NgxServer::for_worker(vm));
        self.starting.push(server.clone());
        server
    }

    fn started(&mut self, generation: &Arc<WorkerVms>) {
        let servers = std::mem::take(&mut self.starting);
        for s in &servers {
            s.attach(Arc::downgrade(generation));
        }
        self.servers.insert(generation.number(), servers);
    }

    fn retired(&mut self, generation: &Arc<WorkerVms>, _reason: &RecycleReason) {
        for s in self.servers.remove(&generation.number()).into_iter().flatten() {
            s.stop_ticks();
        }
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        log(level, &format!("[proxy_wasm] {message} (worker pid {})", std::process::id()));
    }
}

struct Worker {
    /// `None`: no plugins configured, or they could not be loaded.
    generations: Option<Generations<Exclusive>>,
    host: Host,
}

thread_local! {
    static WORKER: RefCell<Worker> = RefCell::new(Worker { generations: None, host: Host::default() });
    /// The idle sweeper (`kill_options.max_unused_duration`): a cancelable timer.
    static IDLE_TIMER: RefCell<Option<Box<ngx_event_t>>> = const { RefCell::new(None) };
    /// Ends the waits for `proxy_done` that are over (armed while one runs).
    static DONE_TIMER: RefCell<Option<Box<ngx_event_t>>> = const { RefCell::new(None) };
}

/// Runs `f` on the worker's generations, if the plugins are loaded. `None`
/// also when called back from inside `f` (nothing here does: a re-entry is
/// an internal error, logged).
///
/// While replaced generations remain, the worker's `proxy_done` check runs:
/// it lets go of them once no request uses them and no `proxy_done` of
/// theirs is awaited (a root context whose `on_done` returned false), even
/// when no request comes to do it.
fn with_generations<R>(f: impl FnOnce(&mut Generations<Exclusive>, &mut Host) -> R) -> Option<R> {
    let (out, retired) = WORKER.with(|w| {
        let Ok(mut w) = w.try_borrow_mut() else {
            log(
                LogLevel::Critical,
                "[proxy_wasm] internal error: the worker's plugins were used from inside their own use",
            );
            return (None, false);
        };
        let Worker { generations, host } = &mut *w;
        match generations.as_mut() {
            Some(g) => {
                let out = f(g, host);
                (Some(out), g.retired_count() > 0)
            }
            None => (None, false),
        }
    });
    if retired {
        watch_awaiting_done();
    }
    out
}

/// The worker's plugin set (`routing.rs` finds the entities there).
pub(super) fn plugin_set() -> Option<Arc<PluginSet>> {
    with_generations(|g, _| g.set().clone())
}

/// How often a worker looks for waits for `proxy_done` that are over while
/// some context waits (each wait is the plugin's `pause_timeout`).
const DONE_CHECK: Duration = Duration::from_millis(250);

fn timer_event(
    cell: &'static std::thread::LocalKey<RefCell<Option<Box<ngx_event_t>>>>,
    handler: unsafe extern "C" fn(*mut ngx_event_t),
    after: Duration,
) {
    cell.with(|t| {
        let mut t = t.borrow_mut();
        let ev = t.get_or_insert_with(|| {
            let mut ev = Box::new(new_event(handler, std::ptr::null_mut()));
            ev.set_cancelable(1);
            ev
        });
        if ev.timer_set() == 0 {
            // SAFETY: the event lives in the thread-local box until exit_process removes its timer.
            unsafe { ngx_add_timer(&mut **ev, after.as_millis().max(10) as ngx_msec_t) };
        }
    });
}

/// Some context waits for its plugin's `proxy_done` (its `on_done` returned
/// false): arms the worker's timer that ends such waits once they are over,
/// so that a plugin that never calls it cannot keep its contexts, nor a
/// replaced generation, for ever.
pub fn watch_awaiting_done() {
    timer_event(&DONE_TIMER, on_done_check, DONE_CHECK);
}

unsafe extern "C" fn on_done_check(_ev: *mut ngx_event_t) {
    let r = std::panic::catch_unwind(|| {
        // Re-armed by `with_generations` while replaced generations remain.
        if with_generations(|g, host| g.expire_awaiting_done(Instant::now(), host)).unwrap_or(false) {
            watch_awaiting_done();
        }
    });
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) ending waits for proxy_done");
    }
}

/// Arms this worker's idle sweeper (every half of the shortest
/// `kill_options.max_unused_duration`).
fn arm_idle_sweeper(every: Duration) {
    timer_event(&IDLE_TIMER, on_idle_sweep, every / 2);
}

/// The idle sweeper: instances unused past `kill_options.max_unused_duration`
/// are retired (and shut down when no request holds them), so an idle worker
/// gives their memory back; the next request starts fresh ones.
unsafe extern "C" fn on_idle_sweep(_ev: *mut ngx_event_t) {
    let r = std::panic::catch_unwind(|| {
        let every = with_generations(|g, host| {
            g.sweep_idle(Instant::now(), host);
            g.set().shortest_unused_duration()
        });
        if let Some(every) = every.flatten() {
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
        super::base::ProxyWasmModule::main_conf(&*ctx)
    }
}

/// `init_process`: compile the plugins and start this worker's VMs.
pub unsafe extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    let r = std::panic::catch_unwind(|| {
        // SAFETY: nginx passes the live cycle.
        let Some(main) = (unsafe { main_conf(cycle) }) else { return };
        if main.plugins.is_empty() && main.entities.is_empty() {
            return;
        }
        // Before any VM starts: the zone's shared data, queues and metrics.
        super::shm::install_in_worker(&main.shm);
        super::thread_task::attach(main.thread_pool.map_or(std::ptr::null_mut(), |p| p.as_ptr()));
        let plugins = match loader::load(&main.plugins) {
            Ok(p) => p,
            Err(e) => {
                log(
                    LogLevel::Critical,
                    &format!("[proxy_wasm] cannot load the plugins in this worker: {e}; requests through them get 503"),
                );
                return;
            }
        };
        for p in &plugins {
            let cache = match &p.compiled_cache {
                Some(proxy_wasm_host::module_cache::Outcome::Hit(path)) => {
                    format!("compiled code read from the compiled-module cache {}", path.display())
                }
                Some(proxy_wasm_host::module_cache::Outcome::Stored(path)) => {
                    format!("compiled, and stored in the compiled-module cache {}", path.display())
                }
                Some(proxy_wasm_host::module_cache::Outcome::NotStored(why)) => format!("compiled, not cached: {why}"),
                None => continue,
            };
            log(
                LogLevel::Info,
                &format!(
                    "[proxy_wasm] {}: loaded in worker (pid {}) in {:.2} ms: {cache}",
                    p.config.name,
                    std::process::id(),
                    p.load_time.as_secs_f64() * 1e3
                ),
            );
        }
        // Every worker loads the same plugins: the first one names the
        // callbacks that are never called, once, as Traffic Server does when
        // it loads them.
        // SAFETY: nginx sets ngx_worker before init_process and never
        // changes it in this process afterwards.
        if unsafe { ngx_worker } == 0 {
            for line in plugins.iter().flat_map(Callbacks::denied_lines) {
                log(LogLevel::Warn, &format!("[proxy_wasm] {line}"));
            }
        }
        let entities = match proxy_wasm_host::chain::extism::load_entity_links(
            &main.entities,
            main.otoroshi.as_ref(),
            &main.plugins,
            Arc::new(proxy_wasm_host::chain::extism::ServerLog(log)),
            true,
        ) {
            Ok(e) => e,
            Err(e) => {
                log(
                    LogLevel::Critical,
                    &format!("[proxy_wasm] cannot load the plugins in this worker: {e}; requests through them get 503"),
                );
                return;
            }
        };
        for e in &entities {
            log(
                LogLevel::Info,
                &format!(
                    "[proxy_wasm] loaded Otoroshi WASM plugin {:?} in worker (pid {}) (steps {:?}, {})",
                    e.plugin.id,
                    std::process::id(),
                    e.plugin.steps,
                    e.plugin.runtime
                ),
            );
        }
        super::jobs::start(&entities);
        let set = Arc::new(PluginSet::new(plugins).with_entities(entities));
        let every = set.shortest_unused_duration();
        WORKER.with(|w| w.borrow_mut().generations = Some(Generations::new(set.clone())));
        match with_generations(|g, host| g.current(host).map(|_| ())) {
            Some(Ok(())) => log(
                LogLevel::Info,
                &format!("[proxy_wasm] plugins started in worker (pid {}): {}", std::process::id(), set.names()),
            ),
            Some(Err(e)) => {
                log(LogLevel::Critical, &format!("[proxy_wasm] cannot start the plugins in this worker: {e}"))
            }
            None => {}
        }
        if let Some(every) = every {
            arm_idle_sweeper(every);
        }
    });
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) starting the plugins in this worker");
    }
    NGX_OK as ngx_int_t
}

/// `exit_process`: `on_done`/`on_delete` of every root context, timers stopped.
pub unsafe extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    let _ = std::panic::catch_unwind(|| {
        super::jobs::stop();
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
        with_generations(|g, host| g.shutdown(host));
    });
}

/// Where a new request of a chain starts.
pub enum Start {
    /// On this generation.
    On(Arc<WorkerVms>),
    /// Without the plugins: they could not start, and every plugin of the
    /// chain fails open.
    Skip,
    /// 503: the plugins are not loaded or could not start.
    Refuse,
}

/// The generation requests of `chain` (plugin indexes) start on now: the
/// current one, replaced first when it must be (`RecycleReason`: a failure
/// under `reload`, with back-off, or `kill_options`); requests already
/// running keep the generation they started on.
pub fn start_request(chain: &[usize]) -> Start {
    // The plugin set is only needed (an Arc clone) when the generation cannot start.
    let outcome = with_generations(|g, host| g.current(host).map_err(|e| (e, g.set().clone())));
    match outcome {
        None => {
            log(LogLevel::Error, "[proxy_wasm] the plugins are not loaded in this worker; the request gets 503");
            Start::Refuse
        }
        Some(Ok(generation)) => Start::On(generation),
        Some(Err((e, set))) => {
            if !matches!(e, GenerationError::Busy) {
                log(LogLevel::Error, &format!("[proxy_wasm] {e} (worker pid {})", std::process::id()));
            }
            let open = chain
                .iter()
                .all(|p| set.plugins.get(*p).is_some_and(|p| p.config.failure_policy == FailurePolicy::FailOpen));
            if open && !matches!(e, GenerationError::Busy) {
                Start::Skip
            } else {
                Start::Refuse
            }
        }
    }
}
