//! The Apache Traffic Server plugin: `proxy_wasm_ats.so a.yaml [b.yaml ...]`
//! in plugin.config runs every configured plugin on every transaction;
//! `@plugin=proxy_wasm_ats.so @pparam=a.yaml` on a remap.config rule runs
//! those plugins on that rule's transactions (after the global ones).
//!
//! Each Traffic Server thread gets its own VM instances (created on its first
//! transaction); a transaction keeps the instances it started on, behind a
//! mutex that is only contended if Traffic Server moves it to another thread.

mod hdr;
mod server;
mod stats;
mod sys;
mod transform;
mod txn;

use std::cell::RefCell;
use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, RwLock, Weak};

use crate::abi::LogLevel;
use crate::host::ServerHost;
use crate::loader::{self, LoadedPlugin, PluginVms};
use server::{log, AtsServer};
use sys::*;
use txn::{AtsStream, Link, Txn, TxnShared};

/// The plugins loaded from one configuration (plugin.config, or one remap
/// rule), shared by every thread.
pub struct PluginSet {
    pub plugins: Vec<LoadedPlugin>,
    /// Unique per set: threads keep their VMs per set.
    pub id: u64,
    /// Replaced by a reload, or its last remap rule was deleted: threads
    /// shut its VMs down once no transaction uses them any more.
    pub retired: AtomicBool,
    /// Remap rules using the set (a reload that fails keeps the old set for
    /// the new rule, so one set can outlive the rule it was made for).
    rules: AtomicUsize,
}

impl PluginSet {
    fn new(plugins: Vec<LoadedPlugin>) -> Arc<PluginSet> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(PluginSet { plugins, id: NEXT.fetch_add(1, Ordering::Relaxed), retired: Default::default(), rules: Default::default() })
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }
}

/// The VMs of one thread for one generation of the plugin set.
pub struct VmSlot {
    pub plugins: Arc<PluginSet>,
    pub vms: Mutex<PluginVms>,
    /// Replaced (failure reload or recycling): no new transaction uses it,
    /// and the thread shuts it down once the last one finished.
    pub retired: AtomicBool,
    /// When a transaction last started on it (for `kill_options.max_unused_duration`).
    last_used: Mutex<std::time::Instant>,
    /// Retired and shut down (`proxy_on_done` called): kept only while a
    /// plugin's `proxy_done` is awaited.
    shut_down_started: AtomicBool,
}

/// The VM mutex of a slot, held. When it is released, the wake-ups that
/// plugins asked for meanwhile (`proxy_continue_stream`, a local response)
/// are scheduled: scheduling takes the woken continuation's mutex, whose
/// holder (a hook of a transaction Traffic Server moved to another thread)
/// may be waiting for this VM mutex.
pub struct VmsGuard<'a> {
    guard: Option<std::sync::MutexGuard<'a, PluginVms>>,
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
        txn::schedule_deferred_wakeups();
    }
}

impl VmSlot {
    /// Locks the slot's VMs (see [`VmsGuard`]).
    pub fn lock_vms(&self) -> VmsGuard<'_> {
        VmsGuard { guard: Some(self.vms.lock().unwrap_or_else(|p| p.into_inner())) }
    }

    fn in_service(&self) -> bool {
        !self.retired.load(Ordering::Acquire) && !self.plugins.is_retired()
    }

    /// Whether the slot should be replaced now, and why: a failed instance
    /// under `failure_policy: reload` (with back-off), or `kill_options`.
    fn replacement_reason(&self) -> Option<String> {
        let mut vms = self.lock_vms();
        if vms.wants_reload(&self.plugins.plugins) {
            let now = std::time::Instant::now();
            let allowed = BACKOFF.with(|b| b.borrow_mut().entry(self.plugins.id).or_default().try_reload(now));
            return allowed.then(|| "a failure (failure_policy: reload)".to_string());
        }
        if vms.any_failed() {
            return None;
        }
        let idle = self.last_used.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
        vms.recycle_reason(&self.plugins.plugins, idle).map(|why| format!("recycling: {why}"))
    }
}

/// The global plugins (plugin.config), replaced as a whole on reload.
static PLUGINS: RwLock<Option<Arc<PluginSet>>> = RwLock::new(None);

/// The YAML files named in plugin.config, re-read on `traffic_ctl config reload`.
static GLOBAL_PATHS: OnceLock<Vec<PathBuf>> = OnceLock::new();

/// The last set loaded for each remap rule's list of YAML files: when a
/// reload of remap.config finds a file broken, the rule keeps these plugins.
static REMAP_SETS: LazyLock<Mutex<HashMap<Vec<PathBuf>, Weak<PluginSet>>>> = LazyLock::new(Default::default);

thread_local! {
    /// This thread's VMs, per plugin set.
    static SLOTS: RefCell<Vec<Arc<VmSlot>>> = const { RefCell::new(Vec::new()) };
    /// This thread's reload back-off, per plugin set.
    static BACKOFF: RefCell<HashMap<u64, loader::ReloadBackoff>> = RefCell::new(HashMap::new());
}

/// This thread's VMs for a plugin set, created on first use. When one of
/// them failed, a plugin with the `reload` failure policy gets all of them
/// replaced (with back-off); otherwise they stay as they are and each
/// transaction is admitted by the plugins' policies (see `loader::Admission`).
fn thread_slot(set: &Arc<PluginSet>) -> Option<Arc<VmSlot>> {
    SLOTS.with(|slots| {
        let mut slots = slots.borrow_mut();
        shut_down_retired(&mut slots);
        if let Some(i) = slots.iter().position(|s| s.plugins.id == set.id && s.in_service()) {
            match slots[i].replacement_reason() {
                None => {
                    *slots[i].last_used.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
                    return Some(slots[i].clone());
                }
                Some(why) => {
                    let names = set.plugins.iter().map(|p| p.config.name.as_str()).collect::<Vec<_>>().join(", ");
                    log(LogLevel::Info, &format!("[proxy_wasm] new instances of {names} on this thread after {why}"));
                    slots[i].retired.store(true, Ordering::Release);
                    shut_down_retired(&mut slots);
                }
            }
        }
        let mut servers: Vec<Arc<AtsServer>> = Vec::new();
        let started = PluginVms::start(&set.plugins, |_| {
            let server = Arc::new(AtsServer::for_current_thread(servers.len()));
            servers.push(server.clone());
            server as Arc<dyn ServerHost>
        });
        match started {
            Ok(vms) => {
                let slot = Arc::new(VmSlot { plugins: set.clone(), vms: Mutex::new(vms), retired: AtomicBool::new(false), last_used: Mutex::new(std::time::Instant::now()), shut_down_started: AtomicBool::new(false) });
                if let Some(every) = PluginVms::shortest_unused_duration(&set.plugins) {
                    server::arm_idle_sweeper(every);
                }
                for server in &servers {
                    server.attach(Arc::downgrade(&slot));
                }
                slots.push(slot.clone());
                Some(slot)
            }
            Err(e) => {
                log(LogLevel::Error, &format!("[proxy_wasm] cannot start the plugins on this thread: {e}"));
                None
            }
        }
    })
}

/// Shuts down this thread's VMs of retired sets that no transaction uses any
/// more (a transaction holds its slot until it closes, so in-flight
/// transactions finish on the plugins they started with), and lets them go
/// once no plugin's `proxy_done` is awaited there (each wait bounded by the
/// plugin's `pause_timeout`, see `watch_awaiting_done`).
fn shut_down_retired(slots: &mut Vec<Arc<VmSlot>>) {
    let mut waiting = false;
    slots.retain(|slot| {
        if slot.in_service() || Arc::strong_count(slot) > 1 {
            return true;
        }
        let mut vms = slot.lock_vms();
        if !slot.shut_down_started.swap(true, Ordering::AcqRel) {
            for (plugin, result) in vms.shutdown() {
                match result {
                    // A failed instance is dropped without calling it.
                    Ok(_) | Err(crate::vm::VmError::Failed(_)) => {}
                    Err(e) => log(LogLevel::Warn, &format!("[proxy_wasm] {}: shutting down old instances: {e}", slot.plugins.plugins[plugin].config.name)),
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
    let _ = SLOTS.try_with(|slots| {
        if let Ok(mut slots) = slots.try_borrow_mut() {
            for slot in slots.iter() {
                slot.lock_vms().expire_awaiting_done(now);
            }
            shut_down_retired(&mut slots);
        }
    });
}

/// Called on a thread by its idle timer: retires the instances that sat
/// unused past their `kill_options.max_unused_duration` (and shuts them down
/// when no transaction holds them), so an idle thread gives their memory back.
pub(crate) fn retire_idle_slots() {
    let _ = SLOTS.try_with(|slots| {
        if let Ok(mut slots) = slots.try_borrow_mut() {
            for slot in slots.iter().filter(|s| s.in_service()) {
                let idle = slot.last_used.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
                let why = slot.lock_vms().recycle_reason(&slot.plugins.plugins, idle);
                if let Some(why) = why.filter(|w| w.contains("unused for")) {
                    log(LogLevel::Info, &format!("[proxy_wasm] shutting idle instances down: {why}"));
                    slot.retired.store(true, Ordering::Release);
                }
            }
            shut_down_retired(&mut slots);
        }
    });
}

/// Called on a VM's own thread (ticks): lets go of retired VMs there too,
/// so that a thread without traffic does not keep ticking old plugins.
pub(crate) fn sweep_thread_slots() {
    // Not re-entrant: a tick runs outside any other use of SLOTS.
    let _ = SLOTS.try_with(|slots| {
        if let Ok(mut slots) = slots.try_borrow_mut() {
            shut_down_retired(&mut slots);
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
fn load_plugins(paths: &[PathBuf]) -> Result<Vec<LoadedPlugin>, String> {
    let configs = crate::config::load_files(paths).map_err(|e| e.to_string())?;
    let plugins = loader::load_with_warnings(&configs, &mut |config, message| {
        log(LogLevel::Warn, &format!("[proxy_wasm] {}: {}: {message}", config.origin, config.name));
    })
    .map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let mut canary = PluginVms::start(&plugins, |_| Arc::new(AtsServer::canary()) as Arc<dyn ServerHost>).map_err(|e| e.to_string())?;
    let start_time = started.elapsed();
    canary.shutdown();
    for p in &plugins {
        let cache = match &p.compiled_cache {
            Some(crate::module_cache::Outcome::Hit(path)) => format!("; compiled code read from the compiled-module cache {}", path.display()),
            Some(crate::module_cache::Outcome::Stored(path)) => format!("; compiled, and stored in the compiled-module cache {}", path.display()),
            Some(crate::module_cache::Outcome::NotStored(why)) => format!("; compiled, not cached: {why}"),
            None => String::new(),
        };
        log(LogLevel::Info, &format!("[proxy_wasm] loaded plugin {:?} (ABI {}, {}) from {} in {:.2} ms{cache}", p.config.name, p.code.abi, p.code.engine, p.code.origin, p.load_time.as_secs_f64() * 1e3));
    }
    log(LogLevel::Info, &format!("[proxy_wasm] started the VMs of {} plugin(s) once as a check in {:.2} ms (instantiation, proxy_on_vm_start, proxy_on_configure)", plugins.len(), start_time.as_secs_f64() * 1e3));
    Ok(plugins)
}

unsafe fn args(argc: c_int, argv: *const *const c_char) -> Vec<String> {
    (0..argc.max(0) as usize)
        .filter_map(|i| {
            // SAFETY: Traffic Server passes `argc` valid C strings.
            let p = *argv.add(i);
            (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
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
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in the global hook; the transaction continues unfiltered");
        // SAFETY: the transaction has not been reenabled if we panicked before doing so.
        unsafe { TSHttpTxnReenable(txnp, TS_EVENT_HTTP_CONTINUE) };
    }
    0
}

/// Sets up a transaction for the plugins of `set`. From the global hook
/// (`in_remap == false`) the request chain runs at once and the transaction
/// is reenabled; from a remap rule it runs at POST_REMAP, and nothing is
/// reenabled here (remap is not a hook).
fn start_transaction(txnp: TSHttpTxn, set: Option<Arc<PluginSet>>, in_remap: bool) {
    let reenable = |error: bool| {
        if !in_remap {
            // SAFETY: live transaction, reenabled once.
            unsafe { TSHttpTxnReenable(txnp, if error { TS_EVENT_HTTP_ERROR } else { TS_EVENT_HTTP_CONTINUE }) };
        }
    };
    let Some(set) = set.filter(|s| !s.plugins.is_empty()) else {
        reenable(false);
        return;
    };
    let Some(slot) = thread_slot(&set) else {
        // The plugins cannot run on this thread: fail closed unless all fail open.
        let closed = set.plugins.iter().any(|p| p.config.failure_policy != crate::config::FailurePolicy::FailOpen);
        if closed {
            refuse(txnp, in_remap);
        }
        reenable(closed);
        return;
    };
    let shared = Arc::new(TxnShared {
        txnp,
        response_source: Default::default(),
        local_in_response: Default::default(),
        pause: Default::default(),
        contp: Default::default(),
        local: Default::default(),
        detached: Default::default(),
        body_waiters: Default::default(),
        response_body_started: Default::default(),
        response_closed: Default::default(),
    });
    let mut chain = Vec::new();
    {
        let mut vms = slot.lock_vms();
        let roots = match vms.admit(&set.plugins) {
            loader::Admission::Run(roots) => roots,
            loader::Admission::Refuse { plugin } => {
                drop(vms);
                log(LogLevel::Debug, &format!("[proxy_wasm] {}: failed earlier; the transaction gets 503 (failure policy)", set.plugins[plugin].config.name));
                refuse(txnp, in_remap);
                reenable(true);
                return;
            }
        };
        for root in roots {
            match vms.vms[root.vm].create_stream(root.root_context_id, Box::new(AtsStream { shared: shared.clone() })) {
                Ok(ctx) => chain.push(Link { plugin: root.plugin, vm: root.vm, ctx }),
                Err(e) => log(LogLevel::Error, &format!("[proxy_wasm] {}: cannot create a stream context: {e}", set.plugins[root.plugin].config.name)),
            }
        }
    }
    let wants = |callback: &str| chain.iter().any(|l| set.plugins[l.plugin].code.exports_function(callback));
    let (wants_request_body, wants_response_body) = (wants("proxy_on_request_body"), wants("proxy_on_response_body"));
    let framing = txn::Framing::of_client_request(&shared);
    let request_chunked = framing.chunked();
    let txn = Box::new(Txn { shared, slot, chain, next: 0, response_done: false, response_next: 0, response_paused: false, local_replaces_response: false, framing, response_framing: None, pause_timer: std::ptr::null_mut(), paused_by: None });
    // SAFETY: the continuation has its own mutex (it is also scheduled, to
    // wake a paused transaction); its data is freed at TXN_CLOSE.
    unsafe {
        let contp = TSContCreate(Some(on_txn_event), TSMutexCreate());
        // Its wake-ups and timers run on this thread, which owns the VMs the
        // transaction uses: never on another thread that would wait for them
        // while a callback here waits to schedule the continuation.
        TSContThreadAffinitySet(contp, TSEventThreadSelf());
        txn.shared.contp.store(contp as *mut c_void, Ordering::Release);
        let raw = Box::into_raw(txn);
        TSContDataSet(contp, raw as *mut c_void);
        TSHttpTxnHookAdd(txnp, TS_HTTP_READ_RESPONSE_HDR_HOOK, contp);
        TSHttpTxnHookAdd(txnp, TS_HTTP_SEND_RESPONSE_HDR_HOOK, contp);
        TSHttpTxnHookAdd(txnp, TS_HTTP_TXN_CLOSE_HOOK, contp);
        // Bodies go through transforms only when some plugin wants them.
        if wants_request_body {
            transform::add(txnp, raw, crate::abi::StreamType::HttpRequest, request_chunked);
            // Framing of a chunked body, and a local response sent while the
            // transform held the body (see `Txn::on_send_request_header`).
            TSHttpTxnHookAdd(txnp, TS_HTTP_SEND_REQUEST_HDR_HOOK, contp);
        }
        if wants_response_body {
            transform::add(txnp, raw, crate::abi::StreamType::HttpResponse, false);
        }
        if in_remap {
            TSHttpTxnHookAdd(txnp, TS_HTTP_POST_REMAP_HOOK, contp);
        } else {
            // Under the continuation's mutex, as its own events run: a pause
            // arms a timer whose event must not run before this returns.
            // Unlocked by the guard, also if this panics (the global hook
            // catches the panic).
            struct Locked(TSMutex);
            impl Drop for Locked {
                fn drop(&mut self) {
                    // SAFETY: locked below by this thread; the continuation
                    // (and so its mutex) outlives this call.
                    unsafe { TSMutexUnlock(self.0) };
                }
            }
            let mutex = TSContMutexGet(contp);
            TSMutexLock(mutex);
            let _locked = Locked(mutex);
            (*raw).run_request_headers();
        }
    }
}

/// Makes the transaction answer 503 without reaching the origin (from the
/// global hook the caller reenables with an error; from remap, at POST_REMAP).
fn refuse(txnp: TSHttpTxn, in_remap: bool) {
    // SAFETY: live transaction.
    unsafe { TSHttpTxnStatusSet(txnp, TS_HTTP_STATUS_SERVICE_UNAVAILABLE) };
    if in_remap {
        // SAFETY: live transaction; the hook answers 503 at POST_REMAP.
        unsafe { TSHttpTxnHookAdd(txnp, TS_HTTP_POST_REMAP_HOOK, TSContCreate(Some(on_broken_rule), std::ptr::null_mut())) };
    }
}

/// Transaction hooks: response header about to be sent; transaction closed.
extern "C" fn on_txn_event(contp: TSCont, event: TSEvent, edata: *mut c_void) -> c_int {
    // SAFETY: the data was set to a Box<Txn> in `start_transaction` and is only
    // freed here at TXN_CLOSE; the continuation's mutex serialises its events.
    // (A pointer cast and a dereference: nothing here can panic; each use of
    // the transaction below runs under `catch_unwind`.)
    let txn = unsafe { &mut *(TSContDataGet(contp) as *mut Txn) };
    if event == TS_EVENT_IMMEDIATE {
        if catch_unwind(AssertUnwindSafe(|| txn.on_wakeup())).is_err() {
            log(LogLevel::Critical, "[proxy_wasm] internal error (panic) resuming a transaction");
        }
        return 0;
    }
    if event == TS_EVENT_TIMEOUT {
        if catch_unwind(AssertUnwindSafe(|| txn.on_pause_timer())).is_err() {
            log(LogLevel::Critical, "[proxy_wasm] internal error (panic) ending a paused transaction");
        }
        return 0;
    }
    let txnp = edata as TSHttpTxn;
    let r = catch_unwind(AssertUnwindSafe(|| match event {
        TS_EVENT_HTTP_POST_REMAP => txn.run_request_headers(),
        TS_EVENT_HTTP_SEND_REQUEST_HDR => txn.on_send_request_header(),
        TS_EVENT_HTTP_READ_RESPONSE_HDR => txn.run_response_headers(txn::RESPONSE_FROM_ORIGIN),
        TS_EVENT_HTTP_SEND_RESPONSE_HDR => txn.run_response_headers(txn::RESPONSE_TO_CLIENT),
        TS_EVENT_HTTP_TXN_CLOSE => {
            txn.close();
            stats::sync_soon();
            // SAFETY: live transaction.
            unsafe { TSHttpTxnReenable(txnp, TS_EVENT_HTTP_CONTINUE) };
        }
        // SAFETY: live transaction.
        _ => unsafe { TSHttpTxnReenable(txnp, TS_EVENT_HTTP_CONTINUE) },
    }));
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) in a transaction hook");
        // SAFETY: live transaction; the panic happened before it was reenabled.
        unsafe { TSHttpTxnReenable(txnp, TS_EVENT_HTTP_CONTINUE) };
    }
    if event == TS_EVENT_HTTP_TXN_CLOSE {
        // Dropping the transaction may drop the last user of replaced VMs.
        let r = catch_unwind(|| {
            // SAFETY: the Box was leaked in `start_transaction`; nothing uses it after close.
            unsafe { drop(Box::from_raw(TSContDataGet(contp) as *mut Txn)) };
        });
        if r.is_err() {
            log(LogLevel::Critical, "[proxy_wasm] internal error (panic) freeing a closed transaction");
        }
        // SAFETY: the continuation is not used after TXN_CLOSE.
        unsafe { TSContDestroy(contp) };
    }
    0
}

/// Entry point for plugin.config: `proxy_wasm_ats.so a.yaml [b.yaml ...]`.
#[no_mangle]
pub extern "C" fn TSPluginInit(argc: c_int, argv: *const *const c_char) {
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
            log(LogLevel::Error, "[proxy_wasm] no configuration: use proxy_wasm_ats.so <plugins.yaml> [...] in plugin.config");
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
                let count = plugins.len();
                let old = PLUGINS.write().unwrap_or_else(|p| p.into_inner()).replace(PluginSet::new(plugins));
                if let Some(old) = old {
                    old.retire();
                }
                log(LogLevel::Info, &format!("[proxy_wasm] reloaded {count} global plugin(s) from {}", display_paths(paths)));
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
pub extern "C" fn TSRemapInit(api_info: *mut TSRemapInterface, errbuf: *mut c_char, errbuf_size: c_int) -> TSReturnCode {
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
#[no_mangle]
pub extern "C" fn TSRemapNewInstance(argc: c_int, argv: *mut *mut c_char, ih: *mut *mut c_void, errbuf: *mut c_char, errbuf_size: c_int) -> TSReturnCode {
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
                        log(LogLevel::Error, &format!("[proxy_wasm] remap rule {rule}: reload failed, keeping the plugins in use: {e}"));
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
            log(LogLevel::Error, &format!("[proxy_wasm] remap rule {rule}: configuration error: {e}; the rule answers 503"));
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

#[no_mangle]
pub extern "C" fn TSRemapDeleteInstance(ih: *mut c_void) {
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

/// Called for every transaction of the rule: sets up the rule's plugins,
/// which run at POST_REMAP. The URL is left for Traffic Server to map.
#[no_mangle]
pub extern "C" fn TSRemapDoRemap(ih: *mut c_void, txnp: TSHttpTxn, _rri: *mut TSRemapRequestInfo) -> TSRemapStatus {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if ih.is_null() {
            return;
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
            return;
        }
        start_transaction(txnp, instance.set.clone(), true);
    }));
    TSREMAP_NO_REMAP
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
