//! The Apache Traffic Server plugin: `proxy_wasm_ats.so a.yaml [b.yaml ...]`
//! in plugin.config runs every configured plugin on every transaction;
//! `@plugin=proxy_wasm_ats.so @pparam=a.yaml` on a remap.config rule runs
//! those plugins on that rule's transactions (after the global ones).
//!
//! Each transaction runs through the core's filter chain (`proxy_wasm_host::chain`).
//! Each Traffic Server thread gets its own VM instances per plugin set, as a
//! series of generations (`chain::Generations`, created on its first
//! transaction); a transaction keeps the generation it started on, behind a
//! mutex that is only contended if Traffic Server moves it to another thread.

mod hdr;
mod intercept;
mod jobs;
mod routing;
mod server;
mod shared;
mod stats;
mod sys;
mod task;
mod transform;
mod txn;

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, RwLock, Weak};

use proxy_wasm_host::abi::{LogLevel, StreamType};
use proxy_wasm_host::chain::{
    self, Chain, ChainError, Generation, GenerationError, GenerationHost, Generations, Phase, RecycleReason, VmsCell,
};
use proxy_wasm_host::host::ServerHost;
use proxy_wasm_host::loader::{self, LoadedPlugin, PluginVms, VmKey};
use server::{log, AtsServer};
use shared::TxnShared;
use sys::*;
use txn::{AtsChain, AtsStream, Next, Txn};

/// The plugins loaded from one configuration (plugin.config, or one remap
/// rule), shared by every thread.
pub struct PluginSet {
    /// The plugins, with what the chain needs to know of them.
    pub chain: Arc<chain::PluginSet>,
    /// Unique per set: threads keep their VMs per set.
    pub id: u64,
    /// Replaced by a reload, or its last remap rule was deleted: threads
    /// shut its VMs down once no transaction uses them any more.
    pub retired: AtomicBool,
    /// Remap rules using the set (a reload that fails keeps the old set for
    /// the new rule, so one set can outlive the rule it was made for).
    rules: AtomicUsize,
    /// The chain of every transaction: plugins and entities in file order (`config::Loaded::chain_order`).
    order: Vec<usize>,
    /// A plugin of the set can act on a transaction from outside its stream
    /// callbacks (see [`OUTSIDE_CALLBACKS`]), or the set has Otoroshi entities:
    /// every transaction then goes through the response hooks.
    acts_outside: bool,
}

/// The callbacks from which a plugin may answer or close a stream whose own
/// callbacks have returned (a tick, a queue, an `http_call` or gRPC answer,
/// a foreign function). A chain answers such a request at its next phase, the
/// response headers: a transaction hooks them only if a plugin of its chain
/// takes them or has one of these. (A plugin that switches to another
/// transaction's stream context from inside a stream callback is not
/// covered; its answer waits for that transaction's next hook.)
const OUTSIDE_CALLBACKS: [&str; 8] = [
    "proxy_on_tick",
    "proxy_on_queue_ready",
    "proxy_on_http_call_response",
    "proxy_on_grpc_receive_initial_metadata",
    "proxy_on_grpc_receive",
    "proxy_on_grpc_receive_trailing_metadata",
    "proxy_on_grpc_close",
    "proxy_on_foreign_function",
];

/// What one configuration loads: its Proxy-Wasm plugins, its Otoroshi entities, and the chain
/// indexes of both in file order.
type Loaded = (Vec<LoadedPlugin>, Vec<Arc<chain::EntityLink>>, Vec<usize>);

impl PluginSet {
    fn new((plugins, entities, order): Loaded) -> Arc<PluginSet> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        // Otoroshi jobs run while the set is in service (jobs.rs).
        jobs::start(id, &entities);
        let acts_outside = !entities.is_empty()
            || plugins.iter().any(|p| OUTSIDE_CALLBACKS.iter().any(|name| p.code.exports_function(name)));
        Arc::new(PluginSet {
            order,
            acts_outside,
            chain: Arc::new(chain::PluginSet::new(plugins).with_entities(entities)),
            id,
            retired: Default::default(),
            rules: Default::default(),
        })
    }

    fn retire(&self) {
        if !self.retired.swap(true, Ordering::AcqRel) {
            jobs::stop(self.id);
        }
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }
}

/// The VMs of one generation, behind a mutex that waits (a transaction
/// Traffic Server moved to another thread waits for them).
pub struct AtsVms(Mutex<PluginVms>);

/// One generation of a plugin set's VMs on one thread.
pub type AtsGeneration = Generation<AtsVms>;

/// The VM mutex of a generation, held. When this thread lets go of its last
/// one, the wake-ups that plugins asked for meanwhile (`proxy_continue_stream`,
/// a local response) are scheduled: scheduling takes the woken continuation's
/// mutex, whose holder (a hook of a transaction Traffic Server moved to
/// another thread) may be waiting for this VM mutex.
pub struct VmsGuard<'a> {
    guard: Option<MutexGuard<'a, PluginVms>>,
}

impl std::ops::Deref for VmsGuard<'_> {
    type Target = PluginVms;
    fn deref(&self) -> &PluginVms {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for VmsGuard<'_> {
    fn deref_mut(&mut self) -> &mut PluginVms {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl Drop for VmsGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        shared::vms_released();
    }
}

impl VmsCell for AtsVms {
    type Guard<'a> = VmsGuard<'a>;

    fn new(vms: PluginVms) -> AtsVms {
        AtsVms(Mutex::new(vms))
    }

    /// Waits for the VMs (a poisoned lock is taken over: a panic in a server
    /// callback must not make the VMs unusable for every later transaction).
    fn lock(&self) -> Option<VmsGuard<'_>> {
        let guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        shared::vms_locked();
        Some(VmsGuard { guard: Some(guard) })
    }
}

/// The global plugins (plugin.config), replaced as a whole on reload.
static PLUGINS: RwLock<Option<Arc<PluginSet>>> = RwLock::new(None);

/// The YAML files named in plugin.config, re-read on `traffic_ctl config reload`.
static GLOBAL_PATHS: OnceLock<Vec<PathBuf>> = OnceLock::new();

/// The last set loaded for each remap rule's list of YAML files: when a
/// reload of remap.config finds a file broken, the rule keeps these plugins.
static REMAP_SETS: LazyLock<Mutex<HashMap<Vec<PathBuf>, Weak<PluginSet>>>> = LazyLock::new(Default::default);

/// One plugin set's generations on this thread.
struct ThreadSet {
    set: Arc<PluginSet>,
    generations: Generations<AtsVms>,
}

thread_local! {
    /// This thread's VMs, per plugin set (by id).
    static SETS: RefCell<HashMap<u64, ThreadSet>> = RefCell::new(HashMap::new());
}

/// How a thread's generations reach Traffic Server: a `ServerHost` per VM
/// (ticks, queues and `http_call` answers on this thread), tied to its
/// generation once it started.
struct Host {
    set: Arc<PluginSet>,
    servers: Vec<Arc<AtsServer>>,
}

impl Host {
    fn new(set: &Arc<PluginSet>) -> Host {
        Host { set: set.clone(), servers: Vec::new() }
    }
}

impl GenerationHost<AtsVms> for Host {
    fn server_host(&mut self, vm: usize, _key: &VmKey) -> Arc<dyn ServerHost> {
        let server = Arc::new(AtsServer::for_current_thread(vm, self.set.clone()));
        self.servers.push(server.clone());
        server
    }

    fn started(&mut self, generation: &Arc<AtsGeneration>) {
        for server in self.servers.drain(..) {
            server.attach(Arc::downgrade(generation));
        }
        if let Some(every) = generation.set().shortest_unused_duration() {
            server::arm_idle_sweeper(every);
        }
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        log(level, &format!("[proxy_wasm] {message} (on this thread)"));
    }
}

/// Retires this thread's generations of sets a reload replaced (their VMs are
/// shut down once no transaction uses them), and forgets a set once none is
/// left. Generations still retired are kept and swept.
fn sweep_sets(sets: &mut HashMap<u64, ThreadSet>) {
    let mut waiting = false;
    sets.retain(|_, ts| {
        if ts.set.is_retired() {
            ts.generations.retire(RecycleReason::ConfigurationReload, &mut Host::new(&ts.set));
        } else if ts.generations.retired_count() > 0 {
            ts.generations.sweep(&mut Host::new(&ts.set));
        }
        waiting |= ts.generations.retired_count() > 0;
        !ts.generations.is_empty() || !ts.set.is_retired()
    });
    if waiting {
        // A retired generation may be kept for a plugin's proxy_done.
        watch_awaiting_done();
    }
}

/// This thread's current generation of VMs for a plugin set, started on
/// first use and replaced when it must be (`chain::RecycleReason`): a failed
/// plugin under `failure_policy: reload` (with back-off), `kill_options`.
fn current_generation(set: &Arc<PluginSet>) -> Result<Arc<AtsGeneration>, GenerationError> {
    SETS.with(|sets| {
        let mut sets = sets.borrow_mut();
        sweep_sets(&mut sets);
        let ts = sets
            .entry(set.id)
            .or_insert_with(|| ThreadSet { set: set.clone(), generations: Generations::new(set.chain.clone()) });
        ts.generations.current(&mut Host::new(set))
    })
}

/// Some context of this thread's VMs waits for its plugin's `proxy_done`
/// (its `on_done` returned false): arms, once per thread, the timer that
/// ends such waits when they are over (`Vm::expire_awaiting_done`), so that
/// a plugin that never calls it cannot keep its contexts, nor a replaced
/// generation, for ever.
pub(crate) fn watch_awaiting_done() {
    server::arm_done_sweeper(DONE_CHECK);
}

/// How often a thread looks for waits for `proxy_done` that are over.
const DONE_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// Called on a thread by its done sweeper: ends the waits for `proxy_done`
/// that are over in this thread's VMs, then lets go of retired VMs that no
/// longer wait.
pub(crate) fn expire_awaiting_done() {
    let now = std::time::Instant::now();
    let _ = SETS.try_with(|sets| {
        if let Ok(mut sets) = sets.try_borrow_mut() {
            for ts in sets.values_mut() {
                let mut host = Host::new(&ts.set);
                ts.generations.expire_awaiting_done(now, &mut host);
            }
            sweep_sets(&mut sets);
        }
    });
}

/// Called on a thread by its idle timer: retires the generations that sat
/// unused past a plugin's `kill_options.max_unused_duration` (and shuts them
/// down when no transaction holds them), so an idle thread gives their memory back.
pub(crate) fn retire_idle_generations() {
    let now = std::time::Instant::now();
    let _ = SETS.try_with(|sets| {
        if let Ok(mut sets) = sets.try_borrow_mut() {
            for ts in sets.values_mut() {
                ts.generations.sweep_idle(now, &mut Host::new(&ts.set));
            }
            sweep_sets(&mut sets);
        }
    });
}

/// Called on a VM's own thread (ticks): lets go of retired VMs there too,
/// so that a thread without traffic does not keep ticking old plugins.
pub(crate) fn sweep_thread_generations() {
    // Not re-entrant: a tick runs outside any other use of SETS.
    let _ = SETS.try_with(|sets| {
        if let Ok(mut sets) = sets.try_borrow_mut() {
            sweep_sets(&mut sets);
        }
    });
}

fn config_path(arg: &str) -> PathBuf {
    let p = PathBuf::from(arg);
    if p.is_absolute() {
        return p;
    }
    // SAFETY: TSConfigDirGet returns a static NUL-terminated string.
    let dir = unsafe { CStr::from_ptr(TSConfigDirGet()) }.to_string_lossy().into_owned();
    PathBuf::from(dir).join(p)
}

/// Loads and compiles the plugins of `paths`, and starts each once as a
/// check, so that a plugin that refuses its configuration is reported now.
/// Errors name the file and key.
fn load_plugins(paths: &[PathBuf]) -> Result<Loaded, String> {
    let loaded = proxy_wasm_host::files::load_all(paths).map_err(|e| e.to_string())?;
    let configs = &loaded.plugins;
    let plugins = loader::load_with_warnings(configs, &mut |config, message| {
        log(LogLevel::Warn, &format!("[proxy_wasm] {}: {}: {message}", config.origin, config.name));
    })
    .map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let mut canary = PluginVms::start(&plugins, |_| Arc::new(AtsServer::canary()) as Arc<dyn ServerHost>)
        .map_err(|e| e.to_string())?;
    let start_time = started.elapsed();
    canary.shutdown();
    for p in &plugins {
        let cache = match &p.compiled_cache {
            Some(proxy_wasm_host::module_cache::Outcome::Hit(path)) => {
                format!("; compiled code read from the compiled-module cache {}", path.display())
            }
            Some(proxy_wasm_host::module_cache::Outcome::Stored(path)) => {
                format!("; compiled, and stored in the compiled-module cache {}", path.display())
            }
            Some(proxy_wasm_host::module_cache::Outcome::NotStored(why)) => format!("; compiled, not cached: {why}"),
            None => String::new(),
        };
        log(
            LogLevel::Info,
            &format!(
                "[proxy_wasm] loaded plugin {:?} (ABI {}, {}) from {} in {:.2} ms{cache}",
                p.config.name,
                p.code.abi,
                p.code.engine,
                p.code.origin,
                p.load_time.as_secs_f64() * 1e3
            ),
        );
        for line in chain::Callbacks::denied_lines(p) {
            log(LogLevel::Warn, &format!("[proxy_wasm] {line}"));
        }
    }
    log(LogLevel::Info, &format!("[proxy_wasm] started the VMs of {} plugin(s) once as a check in {:.2} ms (instantiation, proxy_on_vm_start, proxy_on_configure)", plugins.len(), start_time.as_secs_f64() * 1e3));
    // Otoroshi entities: compiled, linked (only what each grants) and started once, shared by
    // every thread (each call takes an instance of the entity's pool).
    let entities = chain::extism::load_entity_links(
        &loaded.entities,
        loaded.otoroshi.as_ref(),
        configs,
        Arc::new(chain::extism::ServerLog(log)),
        // The response headers cannot be held while Traffic Server reads the body; the client's
        // header waits for the response transform, so TransformResponse applies at the body's end.
        false,
    )
    .map_err(|e| e.to_string())?;
    for e in &entities {
        log(
            LogLevel::Info,
            &format!(
                "[proxy_wasm] loaded Otoroshi WASM plugin {:?} (steps {:?}, {})",
                e.plugin.id, e.plugin.steps, e.plugin.runtime
            ),
        );
    }
    Ok((plugins, entities, loaded.chain_order()))
}

unsafe fn args(argc: c_int, argv: *const *const c_char) -> Vec<String> {
    (0..argc.max(0) as usize)
        .filter_map(|i| {
            // SAFETY: Traffic Server passes `argv` with `argc` entries (i < argc).
            let p = unsafe { *argv.add(i) };
            // SAFETY: a non-null entry is a NUL-terminated C string that
            // outlives the call (Traffic Server's plugin arguments).
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        })
        .collect()
}

/// Global hook: a transaction's request header has been read.
extern "C" fn on_global_event(_contp: TSCont, event: TSEvent, edata: *mut c_void) -> c_int {
    let txnp = edata as TSHttpTxn;
    let r = catch_unwind(AssertUnwindSafe(|| {
        if event == TS_EVENT_HTTP_READ_REQUEST_HDR {
            let set = PLUGINS.read().unwrap_or_else(|p| p.into_inner()).clone();
            start_transaction(txnp, set, false);
        } else {
            // SAFETY: every HTTP hook event carries the transaction.
            unsafe { TSHttpTxnReenable(txnp, TS_EVENT_HTTP_CONTINUE) };
        }
    }));
    if r.is_err() {
        log(
            LogLevel::Critical,
            "[proxy_wasm] internal error (panic) in the global hook; the transaction continues unfiltered",
        );
        // SAFETY: the transaction has not been reenabled if we panicked before doing so.
        unsafe { TSHttpTxnReenable(txnp, TS_EVENT_HTTP_CONTINUE) };
    }
    0
}

/// Sets up a transaction for the plugins of `set` and runs the request
/// headers through its chain at once, before remapping (as Envoy's filters
/// see the client's request). From the global hook (`in_remap == false`) the
/// transaction is then reenabled (unless a plugin paused it); from a remap
/// rule nothing is reenabled (remap is not a hook), and a pause holds the
/// transaction at POST_REMAP.
fn start_transaction(txnp: TSHttpTxn, set: Option<Arc<PluginSet>>, in_remap: bool) {
    let reenable = |error: bool| {
        if !in_remap {
            txn::reenable(txnp, error);
        }
    };
    let Some(set) = set.filter(|s| !s.chain.plugins.is_empty() || !s.chain.entities.is_empty()) else {
        reenable(false);
        return;
    };
    let generation = match current_generation(&set) {
        Ok(generation) => generation,
        Err(e) => {
            // The plugins cannot run on this thread: fail closed unless all fail open.
            log(LogLevel::Error, &format!("[proxy_wasm] {e}"));
            let closed = matches!(e, GenerationError::Busy)
                || set
                    .chain
                    .plugins
                    .iter()
                    .any(|p| p.config.failure_policy != proxy_wasm_host::config::FailurePolicy::FailOpen)
                || !set.chain.entities.is_empty();
            if closed {
                refuse(txnp, in_remap);
            }
            // Not an error reenable: see `refuse`.
            reenable(false);
            return;
        }
    };
    let shared = Arc::new(TxnShared::new(txnp));
    // Proxy-Wasm plugins and entities interleaved, in file order.
    let plugins = set.order.iter().copied();
    let chain =
        match Chain::new(generation, plugins, AtsChain(shared.clone()), |_| AtsStream { shared: shared.clone() }) {
            Ok(chain) => chain,
            Err(e) => {
                let level = if matches!(e, ChainError::Refused { .. }) { LogLevel::Debug } else { LogLevel::Error };
                log(level, &format!("[proxy_wasm] {e}"));
                refuse(txnp, in_remap);
                reenable(false);
                return;
            }
        };
    if chain.links().is_empty() {
        // Every plugin failed earlier and fails open: nothing to filter.
        drop(chain);
        reenable(false);
        return;
    }
    let (wants_request_body, wants_response_body) =
        (chain.filters(Phase::RequestBody), chain.filters(Phase::ResponseBody));
    // One fetch of the client request: its framing, pair count and method.
    let start = txn::RequestStart::of(&shared);
    let request_chunked = start.framing.chunked();
    // No transform where no body can come: a request without a body, the
    // response to a HEAD (Traffic Server sets a transform up per
    // transaction, a cost every request paid before).
    let wants_request_body = wants_request_body && !start.framing.no_body();
    let wants_response_body = wants_response_body && !start.head;
    // No response hooks where the chain cannot act on the response (each
    // hook is a callout and a reenable per transaction): no link takes its
    // callbacks and none can answer from outside them. An answer of the
    // chain hooks SEND_RESPONSE_HDR itself (`Txn::remember`).
    let response_hooked = wants_response_body || set.acts_outside || chain.filters(Phase::ResponseHeaders);
    let txn = Box::new(Txn::new(shared, chain, start, response_hooked));
    let shared = txn.shared.clone();
    let raw = Box::into_raw(txn);
    // SAFETY: live transaction. The continuation takes the transaction's own
    // mutex (the one its body transforms get), so that its hooks, its
    // transforms and its own events (wake-ups, the pause timer) never run at
    // once; its data is the leaked Box<Txn>, freed once TXN_CLOSE came and no
    // wake-up is on its way (see `on_txn_event`).
    let contp = unsafe {
        let contp = TSContCreate(Some(on_txn_event), TSContMutexGet(txnp as TSCont));
        // Its wake-ups and timers run on this thread, which owns the VMs the
        // transaction uses: never on another thread that would wait for them
        // while a callback here waits to schedule the continuation.
        TSContThreadAffinitySet(contp, TSEventThreadSelf());
        shared.contp.store(contp as *mut c_void, Ordering::Release);
        TSContDataSet(contp, raw as *mut c_void);
        if response_hooked {
            TSHttpTxnHookAdd(txnp, TS_HTTP_READ_RESPONSE_HDR_HOOK, contp);
            TSHttpTxnHookAdd(txnp, TS_HTTP_SEND_RESPONSE_HDR_HOOK, contp);
        }
        TSHttpTxnHookAdd(txnp, TS_HTTP_TXN_CLOSE_HOOK, contp);
        // Bodies go through transforms only when some plugin takes them.
        if wants_request_body {
            transform::add(txnp, raw, StreamType::HttpRequest, request_chunked, false);
            // Framing of a chunked body, and an answer from the request body
            // (see `Txn::on_send_request_header`).
            TSHttpTxnHookAdd(txnp, TS_HTTP_SEND_REQUEST_HDR_HOOK, contp);
        }
        if wants_response_body {
            // An entity's TransformResponse: the output (and the client's header) waits for it.
            let hold = set
                .chain
                .entities
                .iter()
                .any(|e| e.plugin.steps.contains(&proxy_wasm_host::extism::entity::Step::TransformResponse));
            transform::add(txnp, raw, StreamType::HttpResponse, false, hold);
        }
        contp
    };
    // The global hook runs under the transaction's mutex, the continuation's:
    // taken again all the same (it nests), as every chain call holds it.
    // Unlocked by the guard, also if this panics (the global hook catches it).
    struct Locked(TSMutex);
    impl Drop for Locked {
        fn drop(&mut self) {
            // SAFETY: locked below by this thread; the continuation (and so
            // its mutex) outlives this call.
            unsafe { TSMutexUnlock(self.0) };
        }
    }
    // SAFETY: the continuation made above is alive (TXN_CLOSE cannot come
    // before this hook is reenabled).
    let mutex = unsafe { TSContMutexGet(contp) };
    // SAFETY: as above.
    unsafe { TSMutexLock(mutex) };
    let locked = Locked(mutex);
    // SAFETY: the Txn leaked above, alive until TXN_CLOSE (not before this
    // hook is reenabled); nothing else uses it while the mutex is held, and
    // the borrow ends before `apply` may run the next hook.
    let next = unsafe { (*raw).run_request_headers() };
    // SAFETY: as above (the mutex is held until `locked` drops).
    let waiting = in_remap && unsafe { (*raw).headers_waiting() };
    drop(locked);
    if in_remap {
        // Remapping is not a hook: nothing is reenabled here. A local response
        // was set on the transaction (EndRemapRequest answers it, keeping the
        // client connection); a pause holds the transaction at POST_REMAP
        // until its resume.
        if waiting {
            // SAFETY: live transaction and continuation.
            unsafe { TSHttpTxnHookAdd(txnp, TS_HTTP_POST_REMAP_HOOK, contp) };
        }
        return;
    }
    // SAFETY: in the transaction's READ_REQUEST_HDR hook; the Txn is not used here.
    unsafe { apply(&shared, next) };
}

/// Makes the transaction answer 503 without reaching the origin (from the
/// global hook the caller reenables it to go on: EndRemapRequest answers the
/// status set, and keeps the client connection as for any error response of
/// its own, where an error reenable would close it (see
/// `Txn::request_headers_flow`); from remap, at POST_REMAP).
fn refuse(txnp: TSHttpTxn, in_remap: bool) {
    // SAFETY: live transaction.
    unsafe { TSHttpTxnStatusSet(txnp, TS_HTTP_STATUS_SERVICE_UNAVAILABLE) };
    if in_remap {
        // SAFETY: live transaction; the hook answers 503 at POST_REMAP.
        unsafe {
            TSHttpTxnHookAdd(txnp, TS_HTTP_POST_REMAP_HOOK, TSContCreate(Some(on_broken_rule), std::ptr::null_mut()))
        };
    }
}

/// The transaction's continuation: its hooks (POST_REMAP, SEND_REQUEST_HDR,
/// READ_RESPONSE_HDR, SEND_RESPONSE_HDR, TXN_CLOSE), and the chain's own
/// events: EVENT_IMMEDIATE (a wake-up: a plugin resumed, answered or closed
/// the stream from another event) and EVENT_TIMEOUT (the pause timer).
extern "C" fn on_txn_event(contp: TSCont, event: TSEvent, edata: *mut c_void) -> c_int {
    // SAFETY: the data was set to a Box<Txn> in `start_transaction` and is
    // freed only below, once TXN_CLOSE came and no wake-up is on its way; the
    // continuation's mutex (the transaction's) serialises its events and the
    // transforms' chain calls. (A pointer cast: nothing here can panic; each
    // use of the transaction below runs under `catch_unwind`.)
    let raw = unsafe { TSContDataGet(contp) } as *mut Txn;
    // SAFETY: as above; a shared borrow for the Arc only.
    let shared = unsafe { (*raw).shared.clone() };
    if event == TS_EVENT_IMMEDIATE || event == TS_EVENT_TIMEOUT {
        let r = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: as above; the borrow ends before `apply`.
            let txn = unsafe { &mut *raw };
            if event == TS_EVENT_TIMEOUT {
                return txn.on_pause_timer();
            }
            let (closed, last) = txn.take_wake();
            if closed {
                if last {
                    free_transaction(contp, raw);
                }
                return Next::Hold;
            }
            txn.on_wakeup()
        }));
        match r {
            // SAFETY: one of the continuation's events, under its mutex.
            Ok(next) => unsafe { apply(&shared, next) },
            Err(_) => log(LogLevel::Critical, "[proxy_wasm] internal error (panic) resuming a transaction"),
        }
        return 0;
    }
    let txnp = edata as TSHttpTxn;
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: as above; the borrow ends before `apply`.
        let txn = unsafe { &mut *raw };
        match event {
            TS_EVENT_HTTP_POST_REMAP => txn.at_post_remap(),
            TS_EVENT_HTTP_SEND_REQUEST_HDR => txn.on_send_request_header(),
            TS_EVENT_HTTP_READ_RESPONSE_HDR => txn.run_response_headers(shared::RESPONSE_FROM_ORIGIN),
            TS_EVENT_HTTP_SEND_RESPONSE_HDR => txn.run_response_headers(shared::RESPONSE_TO_CLIENT),
            TS_EVENT_HTTP_TXN_CLOSE => {
                txn.close();
                stats::sync_soon();
                Next::Reenable { error: false }
            }
            _ => Next::Reenable { error: false },
        }
    }));
    match r {
        // SAFETY: in one of the transaction's hooks, under its mutex.
        Ok(next) => unsafe { apply(&shared, next) },
        Err(_) => {
            log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in a transaction hook");
            // The panic happened before the transaction was reenabled.
            txn::reenable(txnp, false);
        }
    }
    if event == TS_EVENT_HTTP_SEND_RESPONSE_HDR && shared.abort_response.swap(false, Ordering::AcqRel) {
        // The chain cut the response before its header went: the transaction
        // (reenabled above, under its mutex, so at once) now delivers the
        // response from the transform, whose output the abort ends.
        let t = transform::listed(&shared, StreamType::HttpResponse);
        // SAFETY: under the transaction's mutex (still held by this hook);
        // a listed transform is open and not freed.
        unsafe { transform::abort_output(t) };
    }
    if event == TS_EVENT_HTTP_TXN_CLOSE {
        // SAFETY: TXN_CLOSE came; the Box is freed now unless a wake-up is on
        // its way, whose event frees it.
        let pending = unsafe { (*raw).wakes_pending() };
        if !pending {
            free_transaction(contp, raw);
        }
    }
    0
}

/// Does what `next` says (with no borrow of the transaction left: see [`Next`]).
///
/// # Safety
/// Called under the transaction's mutex, from one of its hooks or events,
/// while the transaction is live.
pub unsafe fn apply(shared: &TxnShared, next: Next) {
    match next {
        Next::Hold => {}
        Next::Reenable { error } => txn::reenable(shared.txnp, error),
        Next::Body(direction, flow) => {
            let t = transform::listed(shared, direction);
            if !t.is_null() {
                // SAFETY: a transform listed here is open (it unlists itself
                // when Traffic Server closes it, under the same mutex).
                unsafe { transform::deliver(t, flow) };
            }
        }
    }
}

/// Frees a closed transaction's state and continuation.
fn free_transaction(contp: TSCont, raw: *mut Txn) {
    // Dropping the transaction may drop the last user of a replaced generation.
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the Box was leaked in `start_transaction`; the transaction
        // closed and no event of its continuation is on its way.
        unsafe { drop(Box::from_raw(raw)) };
    }));
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) freeing a closed transaction");
    }
    // SAFETY: the continuation is not used after this (see above).
    unsafe { TSContDestroy(contp) };
}

/// Entry point for plugin.config: `proxy_wasm_ats.so a.yaml [b.yaml ...]`.
///
/// # Safety
/// Called by Traffic Server only, once, with `argv` holding `argc` C strings.
#[no_mangle]
pub unsafe extern "C" fn TSPluginInit(argc: c_int, argv: *const *const c_char) {
    let r = catch_unwind(|| {
        let info = TSPluginRegistrationInfo {
            plugin_name: b"proxy_wasm\0".as_ptr() as *const c_char,
            vendor_name: b"proxy-wasm-host\0".as_ptr() as *const c_char,
            support_email: b"\0".as_ptr() as *const c_char,
        };
        // SAFETY: `info` holds static NUL-terminated strings.
        if unsafe { TSPluginRegister(&info) } != TS_SUCCESS {
            log(LogLevel::Error, "[proxy_wasm] plugin registration failed");
            return;
        }
        // Remap rules then use this same copy of the library instead of a
        // fresh one per remap.config load, so global and per-route plugins
        // share one engine, one compiled-code cache, shared data and queues.
        // SAFETY: called from TSPluginInit, as the API requires.
        if unsafe { TSPluginDSOReloadEnable(0) } != TS_SUCCESS {
            log(LogLevel::Warn, "[proxy_wasm] could not disable the dynamic reload of this library; remap rules get a copy of their own (shared data is then not shared with the global plugins)");
        }
        // SAFETY: Traffic Server passes argc/argv as for main().
        let args = unsafe { args(argc, argv) };
        let paths: Vec<PathBuf> = args.iter().skip(1).map(|a| config_path(a)).collect();
        if paths.is_empty() {
            log(
                LogLevel::Error,
                "[proxy_wasm] no configuration: use proxy_wasm_ats.so <plugins.yaml> [...] in plugin.config",
            );
            return;
        }
        let _ = GLOBAL_PATHS.set(paths.clone());
        match load_plugins(&paths) {
            Ok(plugins) => {
                *PLUGINS.write().unwrap_or_else(|p| p.into_inner()) = Some(PluginSet::new(plugins));
            }
            Err(e) => {
                // Traffic Server keeps serving, without these plugins, until a
                // reload finds the files fixed.
                log(LogLevel::Error, &format!("[proxy_wasm] configuration error: {e}; serving without these plugins"));
            }
        }
        // SAFETY: continuations without data: the global hook (its handler
        // is reentrant) and the configuration-reload notification.
        unsafe {
            let contp = TSContCreate(Some(on_global_event), std::ptr::null_mut());
            TSHttpHookAdd(TS_HTTP_READ_REQUEST_HDR_HOOK, contp);
            let reload = TSContCreate(Some(on_config_reload), TSMutexCreate());
            TSMgmtUpdateRegister(reload, b"proxy_wasm\0".as_ptr() as *const c_char);
        }
    });
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) during initialisation; the plugin is disabled");
    }
}

/// `traffic_ctl config reload`: re-reads the global YAML files. If any fails,
/// the plugins in use stay and the error names the file and key.
extern "C" fn on_config_reload(_contp: TSCont, _event: TSEvent, _edata: *mut c_void) -> c_int {
    let r = catch_unwind(|| {
        let Some(paths) = GLOBAL_PATHS.get() else { return };
        match load_plugins(paths) {
            Ok(plugins) => {
                let count = plugins.0.len() + plugins.1.len();
                let old = PLUGINS.write().unwrap_or_else(|p| p.into_inner()).replace(PluginSet::new(plugins));
                if let Some(old) = old {
                    old.retire();
                }
                log(
                    LogLevel::Info,
                    &format!("[proxy_wasm] reloaded {count} global plugin(s) from {}", display_paths(paths)),
                );
            }
            Err(e) => log(LogLevel::Error, &format!("[proxy_wasm] reload failed, keeping the plugins in use: {e}")),
        }
    });
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) during a reload; the plugins in use stay");
    }
    0
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// A remap rule's plugins (`@pparam=a.yaml ...`), or why they could not load.
struct RemapInstance {
    set: Option<Arc<PluginSet>>,
    error: Option<String>,
}

fn write_errbuf(errbuf: *mut c_char, size: c_int, message: &str) {
    if errbuf.is_null() || size <= 0 {
        return;
    }
    let bytes = message.as_bytes();
    let n = bytes.len().min(size as usize - 1);
    // SAFETY: Traffic Server gives a buffer of `size` bytes; we write at most
    // size - 1 bytes and a NUL.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), errbuf as *mut u8, n);
        *errbuf.add(n) = 0;
    }
}

/// Remap plugin entry: checks the API version.
#[no_mangle]
pub extern "C" fn TSRemapInit(
    api_info: *mut TSRemapInterface,
    errbuf: *mut c_char,
    errbuf_size: c_int,
) -> TSReturnCode {
    catch_unwind(|| {
        if api_info.is_null() {
            write_errbuf(errbuf, errbuf_size, "proxy_wasm: missing remap API information");
            return TS_ERROR;
        }
        TS_SUCCESS
    })
    .unwrap_or(TS_ERROR)
}

/// One remap rule: `argv` is from-URL, to-URL, then the `@pparam` values (YAML files).
///
/// A configuration error is logged with file and key; the rule then answers
/// 503 rather than serving without its filters.
///
/// # Safety
/// Called by Traffic Server only: `argv` holds `argc` C strings, `ih` is NULL
/// or writable, `errbuf` NULL or writable for `errbuf_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn TSRemapNewInstance(
    argc: c_int,
    argv: *mut *mut c_char,
    ih: *mut *mut c_void,
    errbuf: *mut c_char,
    errbuf_size: c_int,
) -> TSReturnCode {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Traffic Server passes argc valid C strings.
        let args = unsafe { args(argc, argv as *const *const c_char) };
        let paths: Vec<PathBuf> = args.iter().skip(2).map(|a| config_path(a)).collect();
        let rule = format!("{} -> {}", args.first().map_or("?", |s| s), args.get(1).map_or("?", |s| s));
        let instance = if paths.is_empty() {
            RemapInstance { set: None, error: Some("no plugin configuration: use @pparam=<plugins.yaml>".into()) }
        } else {
            let mut sets = REMAP_SETS.lock().unwrap_or_else(|p| p.into_inner());
            match load_plugins(&paths) {
                Ok(plugins) => {
                    let set = PluginSet::new(plugins);
                    sets.insert(paths.clone(), Arc::downgrade(&set));
                    RemapInstance { set: Some(set), error: None }
                }
                Err(e) => match sets.get(&paths).and_then(Weak::upgrade).filter(|s| !s.is_retired()) {
                    // A reload of remap.config: the rule keeps the plugins it had.
                    Some(previous) => {
                        log(
                            LogLevel::Error,
                            &format!("[proxy_wasm] remap rule {rule}: reload failed, keeping the plugins in use: {e}"),
                        );
                        RemapInstance { set: Some(previous), error: None }
                    }
                    None => RemapInstance { set: None, error: Some(e) },
                },
            }
        };
        if let Some(set) = &instance.set {
            set.rules.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(e) = &instance.error {
            log(
                LogLevel::Error,
                &format!("[proxy_wasm] remap rule {rule}: configuration error: {e}; the rule answers 503"),
            );
        }
        Box::into_raw(Box::new(instance)) as *mut c_void
    }));
    match r {
        Ok(instance) if !ih.is_null() => {
            // SAFETY: `ih` is Traffic Server's out-pointer for the instance.
            unsafe { *ih = instance };
            TS_SUCCESS
        }
        _ => {
            write_errbuf(errbuf, errbuf_size, "proxy_wasm: internal error creating the remap instance");
            TS_ERROR
        }
    }
}

/// Frees a remap rule's instance.
///
/// # Safety
/// Called by Traffic Server only, once per instance, with NULL or an `ih`
/// from [`TSRemapNewInstance`] that no transaction uses any more.
#[no_mangle]
pub unsafe extern "C" fn TSRemapDeleteInstance(ih: *mut c_void) {
    if ih.is_null() {
        return;
    }
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ih` was made by TSRemapNewInstance and is deleted once.
        let instance = unsafe { Box::from_raw(ih as *mut RemapInstance) };
        if let Some(set) = &instance.set {
            if set.rules.fetch_sub(1, Ordering::AcqRel) == 1 {
                set.retire();
            }
        }
    }));
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) deleting a remap instance");
    }
}

/// Called for every transaction of the rule: sets up the rule's plugins and
/// runs their request headers (a pause waits at POST_REMAP). The URL is left for Traffic Server to map, unless
/// an Otoroshi entity of the rule with Router found a route (`routing.rs`).
///
/// # Safety
/// Called by Traffic Server only, with NULL or a live `ih` from
/// [`TSRemapNewInstance`] and a live transaction.
#[no_mangle]
pub unsafe extern "C" fn TSRemapDoRemap(
    ih: *mut c_void,
    txnp: TSHttpTxn,
    rri: *mut TSRemapRequestInfo,
) -> TSRemapStatus {
    let routed = catch_unwind(AssertUnwindSafe(|| {
        if ih.is_null() {
            return false;
        }
        // SAFETY: `ih` is live until TSRemapDeleteInstance, which Traffic Server
        // calls only once no transaction uses the rule.
        let instance = unsafe { &*(ih as *const RemapInstance) };
        if instance.error.is_some() {
            // SAFETY: live transaction; an error status and empty body make
            // Traffic Server answer 503 instead of contacting the origin.
            unsafe {
                TSHttpTxnStatusSet(txnp, TS_HTTP_STATUS_SERVICE_UNAVAILABLE);
                let contp = TSContCreate(Some(on_broken_rule), std::ptr::null_mut());
                TSHttpTxnHookAdd(txnp, TS_HTTP_POST_REMAP_HOOK, contp);
            }
            return false;
        }
        // SAFETY: live transaction and its remap request info (Router: routing.rs).
        let routed = instance.set.as_ref().is_some_and(|set| unsafe { routing::route(&set.chain, txnp, rri) });
        start_transaction(txnp, instance.set.clone(), true);
        routed
    }));
    if routed.unwrap_or(false) {
        TSREMAP_DID_REMAP
    } else {
        TSREMAP_NO_REMAP
    }
}

/// A rule whose plugins failed to load answers 503.
extern "C" fn on_broken_rule(contp: TSCont, _event: TSEvent, edata: *mut c_void) -> c_int {
    let txnp = edata as TSHttpTxn;
    // Only Traffic Server API calls, which do not unwind; under catch_unwind
    // all the same, as every entry point.
    let r = catch_unwind(|| {
        // SAFETY: live transaction, reenabled once; the continuation is used once.
        unsafe {
            TSHttpTxnStatusSet(txnp, TS_HTTP_STATUS_SERVICE_UNAVAILABLE);
            TSHttpTxnReenable(txnp, TS_EVENT_HTTP_ERROR);
            TSContDestroy(contp);
        }
    });
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) answering for a broken remap rule");
    }
    0
}
