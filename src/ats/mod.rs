//! The Apache Traffic Server plugin: `proxy_wasm_ats.so a.yaml [b.yaml ...]`
//! in plugin.config runs every configured plugin on every transaction.
//!
//! Each Traffic Server thread gets its own VM instances (created on its first
//! transaction); a transaction keeps the instances it started on, behind a
//! mutex that is only contended if Traffic Server moves it to another thread.

mod hdr;
mod server;
mod sys;
mod txn;

use std::cell::RefCell;
use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use crate::abi::LogLevel;
use crate::host::ServerHost;
use crate::loader::{self, LoadedPlugin, PluginVms};
use server::{log, AtsServer};
use sys::*;
use txn::{AtsStream, Link, Txn, TxnShared};

/// The plugins loaded from the configuration, shared by every thread.
pub struct PluginSet {
    pub plugins: Vec<LoadedPlugin>,
    pub generation: u64,
}

/// The VMs of one thread for one generation of the plugin set.
pub struct VmSlot {
    pub plugins: Arc<PluginSet>,
    pub vms: Mutex<PluginVms>,
}

static PLUGINS: RwLock<Option<Arc<PluginSet>>> = RwLock::new(None);

thread_local! {
    static SLOT: RefCell<Option<Arc<VmSlot>>> = const { RefCell::new(None) };
}

/// This thread's VMs for the current plugin set, created on first use and
/// replaced when the set changed or one of them failed (a trapped instance is
/// never reused).
fn thread_slot(set: &Arc<PluginSet>) -> Option<Arc<VmSlot>> {
    SLOT.with(|cell| {
        let mut cell = cell.borrow_mut();
        if let Some(slot) = cell.as_ref() {
            let healthy = slot.plugins.generation == set.generation
                && slot.vms.lock().unwrap_or_else(|p| p.into_inner()).vms.iter().all(|vm| vm.failure().is_none());
            if healthy {
                return Some(slot.clone());
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
                let slot = Arc::new(VmSlot { plugins: set.clone(), vms: Mutex::new(vms) });
                for server in &servers {
                    server.attach(Arc::downgrade(&slot));
                }
                *cell = Some(slot.clone());
                Some(slot)
            }
            Err(e) => {
                log(LogLevel::Error, &format!("[proxy_wasm] cannot start the plugins on this thread: {e}"));
                *cell = None;
                None
            }
        }
    })
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

/// Loads and compiles the plugins of `paths`. Errors name the file and key.
fn load_plugins(paths: &[PathBuf]) -> Result<Vec<LoadedPlugin>, String> {
    let configs = crate::config::load_files(paths).map_err(|e| e.to_string())?;
    loader::load(&configs).map_err(|e| e.to_string())
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
            start_transaction(txnp);
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

fn start_transaction(txnp: TSHttpTxn) {
    let set = PLUGINS.read().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(set) = set.filter(|s| !s.plugins.is_empty()) else {
        // SAFETY: live transaction, reenabled once.
        unsafe { TSHttpTxnReenable(txnp, TS_EVENT_HTTP_CONTINUE) };
        return;
    };
    let Some(slot) = thread_slot(&set) else {
        // The plugins cannot run on this thread: fail closed unless all fail open.
        let closed = set.plugins.iter().any(|p| p.config.failure_policy == crate::config::FailurePolicy::FailClosed);
        // SAFETY: live transaction.
        unsafe {
            if closed {
                TSHttpTxnStatusSet(txnp, TS_HTTP_STATUS_SERVICE_UNAVAILABLE);
            }
            TSHttpTxnReenable(txnp, if closed { TS_EVENT_HTTP_ERROR } else { TS_EVENT_HTTP_CONTINUE });
        }
        return;
    };
    let shared = Arc::new(TxnShared { txnp, response_ready: Default::default(), pause: Default::default(), contp: Default::default(), local: Default::default(), detached: Default::default() });
    let mut chain = Vec::new();
    {
        let mut vms = slot.vms.lock().unwrap_or_else(|p| p.into_inner());
        for root in vms.roots.clone() {
            match vms.vms[root.vm].create_stream(root.root_context_id, Box::new(AtsStream { shared: shared.clone() })) {
                Ok(ctx) => chain.push(Link { plugin: root.plugin, vm: root.vm, ctx }),
                Err(e) => log(LogLevel::Error, &format!("[proxy_wasm] {}: cannot create a stream context: {e}", set.plugins[root.plugin].config.name)),
            }
        }
    }
    let txn = Box::new(Txn { shared, slot, chain, next: 0 });
    // SAFETY: the continuation has its own mutex (it is also scheduled, to
    // wake a paused transaction); its data is freed at TXN_CLOSE.
    unsafe {
        let contp = TSContCreate(Some(on_txn_event), TSMutexCreate());
        txn.shared.contp.store(contp as *mut c_void, std::sync::atomic::Ordering::Release);
        let raw = Box::into_raw(txn);
        TSContDataSet(contp, raw as *mut c_void);
        TSHttpTxnHookAdd(txnp, TS_HTTP_SEND_RESPONSE_HDR_HOOK, contp);
        TSHttpTxnHookAdd(txnp, TS_HTTP_TXN_CLOSE_HOOK, contp);
        (*raw).run_request_headers();
    }
}

/// Transaction hooks: response header about to be sent; transaction closed.
extern "C" fn on_txn_event(contp: TSCont, event: TSEvent, edata: *mut c_void) -> c_int {
    // SAFETY: the data was set to a Box<Txn> in `start_transaction` and is only
    // freed here at TXN_CLOSE; the continuation's mutex serialises its events.
    let txn = unsafe { &mut *(TSContDataGet(contp) as *mut Txn) };
    if event == TS_EVENT_IMMEDIATE || event == TS_EVENT_TIMEOUT {
        if catch_unwind(AssertUnwindSafe(|| txn.on_wakeup())).is_err() {
            log(LogLevel::Critical, "[proxy_wasm] internal error (panic) resuming a transaction");
        }
        return 0;
    }
    let txnp = edata as TSHttpTxn;
    let r = catch_unwind(AssertUnwindSafe(|| match event {
        TS_EVENT_HTTP_SEND_RESPONSE_HDR => txn.run_response_headers(),
        TS_EVENT_HTTP_TXN_CLOSE => {
            txn.close();
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
        // SAFETY: the Box was leaked in `start_transaction`; nothing uses it after close.
        unsafe {
            drop(Box::from_raw(TSContDataGet(contp) as *mut Txn));
            TSContDestroy(contp);
        }
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
        // SAFETY: Traffic Server passes argc/argv as for main().
        let args = unsafe { args(argc, argv) };
        let paths: Vec<PathBuf> = args.iter().skip(1).map(|a| config_path(a)).collect();
        if paths.is_empty() {
            log(LogLevel::Error, "[proxy_wasm] no configuration: use proxy_wasm_ats.so <plugins.yaml> [...] in plugin.config");
            return;
        }
        match load_plugins(&paths).and_then(|plugins| {
            // Start every plugin once now, as a check, so that a plugin that
            // refuses its configuration is reported at start-up.
            let mut canary = PluginVms::start(&plugins, |_| Arc::new(AtsServer::canary()) as Arc<dyn ServerHost>).map_err(|e| e.to_string())?;
            canary.shutdown();
            Ok(plugins)
        }) {
            Ok(plugins) => {
                for p in &plugins {
                    log(LogLevel::Info, &format!("[proxy_wasm] loaded plugin {:?} (ABI {}, {}) from {}", p.config.name, p.code.abi, p.code.engine, p.code.origin));
                }
                *PLUGINS.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(PluginSet { plugins, generation: 1 }));
            }
            Err(e) => {
                // Traffic Server keeps serving, without these plugins.
                log(LogLevel::Error, &format!("[proxy_wasm] configuration error: {e}"));
                return;
            }
        }
        // SAFETY: a continuation with its own mutex for the global hook.
        unsafe {
            let contp = TSContCreate(Some(on_global_event), std::ptr::null_mut());
            TSHttpHookAdd(TS_HTTP_READ_REQUEST_HDR_HOOK, contp);
        }
    });
    if r.is_err() {
        log(LogLevel::Critical, "[proxy_wasm] internal error (panic) during initialisation; the plugin is disabled");
    }
}
