//! The WAMR runtime adapter: the WebAssembly Micro Runtime's fast interpreter,
//! through the raw bindings of `wamrx-sys`.
//!
//! How WAMR's model maps onto ours:
//! - The runtime is process-global: it is initialised once ([`WamrEngine::shared`])
//!   and never torn down. Every OS thread that calls into WAMR is initialised
//!   for it on first use (`wasm_runtime_init_thread_env`, undone when the
//!   thread exits); instances may be created on one thread and called on
//!   another, one thread at a time.
//! - WAMR resolves imports against a process-wide registry of native symbols,
//!   by module and field name. Every (module, name) any loaded module imports is
//!   registered as a *raw* native whose attachment is a small id and whose
//!   signature is left empty (the core checks signatures itself, and WASI's
//!   catch-all answers any signature). Each module keeps a table from id to
//!   the host function it was linked to, so two modules may bind the same name
//!   differently; the trampoline finds that table through the exec env's user
//!   data, which points at the calling instance.
//! - The trampoline is generic over the host state (`trampoline::<T>`), so a
//!   hostcall is as direct for the Extism host's state as for Proxy-Wasm's.
//!   WAMR binds a module's imports to the natives registered when it is
//!   resolved (`wasm_runtime_resolve_symbols`); before resolving a module for
//!   `T`, the registry puts `T`'s natives in front for its import names.
//! - A hostcall's trap is kept whole on the instance and WAMR is told to raise
//!   an exception; a Rust panic in a hostcall is caught and becomes a trap.
//! - Limits: linear memory is capped at instantiation (`max_memory_pages`;
//!   `memory.grow` beyond it returns -1), and a callback that runs past its
//!   time limit is stopped by a watchdog thread with `wasm_runtime_terminate`
//!   (which needs WAMR's thread manager, the `thread-mgr` feature).

use std::any::TypeId;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, LazyLock, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use wamrx_sys as sys;

use super::{
    Caller, Engine, ExportDesc, ExportIndex, FuncType, HostFn, ImportDesc, Instance, Limits, LinkedImport, Module,
    RuntimeError, Trap, TrapKind, TypedFn, Val, ValType,
};

/// The WAMR operand/frame stack of one instance (not the native stack).
const WASM_STACK_SIZE: u32 = 512 * 1024;
const WASM_PAGE: u64 = 64 * 1024;

/// The message WAMR gives a terminated instance (after "Exception: ").
const TERMINATED: &str = "terminated by user";
/// The exception raised for a hostcall's trap; the trap itself is kept on the instance.
const HOST_TRAP: &CStr = c"host function trapped";
/// What a module is called inside WAMR (only used in WAMR's own messages).
static MODULE_NAME: &CStr = c"proxy-wasm";

/// Serialises what touches WAMR's native-symbol registry: registration, and
/// module loading/resolution, which read it. WAMR does not lock it itself.
static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| Mutex::new(Registry::default()));

#[derive(Default)]
struct Registry {
    /// (module, name) -> its attachment id and natives.
    names: HashMap<(String, String), Name>,
}

/// One imported (module, name) as registered with WAMR.
struct Name {
    id: u32,
    module: &'static CStr,
    /// The one-element symbol array of each host-state type, leaked (WAMR
    /// keeps the pointer while it is registered; one per type, so bounded).
    natives: HashMap<TypeId, NativePtr>,
    /// The state type whose native WAMR finds first.
    front: TypeId,
}

#[derive(Clone, Copy)]
struct NativePtr(*mut sys::NativeSymbol);
// SAFETY: the pointer is to a leaked array only used under the registry lock.
unsafe impl Send for NativePtr {}

impl Registry {
    /// The id of `(module, name)`, making `trampoline::<T>` the native WAMR
    /// resolves it to (registering it first if needed). Callers hold the
    /// registry lock and resolve the module before releasing it.
    fn id<T: 'static>(&mut self, module: &str, name: &str) -> Result<u32, String> {
        let ty = TypeId::of::<T>();
        let key = (module.to_string(), name.to_string());
        if let Some(n) = self.names.get(&key) {
            if n.front == ty {
                return Ok(n.id);
            }
        }
        let next_id = u32::try_from(self.names.len()).map_err(|_| "too many distinct imports".to_string())?;
        let entry = match self.names.get_mut(&key) {
            Some(n) => n,
            None => {
                let c_module =
                    CString::new(module).map_err(|_| format!("import module name {module:?} contains NUL"))?;
                // WAMR keeps the module name for the life of the process.
                let module_ptr: &'static CStr = Box::leak(c_module.into_boxed_c_str());
                self.names.entry(key).or_insert(Name {
                    id: next_id,
                    module: module_ptr,
                    natives: HashMap::new(),
                    front: ty,
                })
            }
        };
        let id = entry.id;
        let native = match entry.natives.get(&ty) {
            Some(p) => {
                // Registered before, behind another type's: unregister it so
                // that registering it again puts it in front.
                // SAFETY: the runtime is initialised; `p` is the array this
                // registry registered under `entry.module`; the lock is held.
                unsafe { sys::wasm_runtime_unregister_natives(entry.module.as_ptr(), p.0) };
                *p
            }
            None => {
                let c_name = CString::new(name).map_err(|_| format!("import name {name:?} contains NUL"))?;
                let name_ptr: &'static CStr = Box::leak(c_name.into_boxed_c_str());
                let symbols: &'static mut [sys::NativeSymbol] = Box::leak(Box::new([sys::NativeSymbol {
                    symbol: name_ptr.as_ptr(),
                    func_ptr: trampoline::<T> as *mut c_void,
                    signature: c"".as_ptr(),
                    attachment: id as usize as *mut c_void,
                }]));
                let p = NativePtr(symbols.as_mut_ptr());
                entry.natives.insert(ty, p);
                p
            }
        };
        // SAFETY: the runtime is initialised (callers go through WamrEngine);
        // the module name and the one-element symbol array are leaked, so they
        // outlive WAMR's registry as required; `trampoline::<T>` has the raw
        // calling convention `void(wasm_exec_env_t, uint64_t *)`; the registry
        // lock is held, so no load reads the list while it changes. WAMR puts
        // the new registration first, so modules resolved from now on bind to it.
        let ok = unsafe { sys::wasm_runtime_register_natives_raw(entry.module.as_ptr(), native.0, 1) };
        if !ok {
            return Err(format!("WAMR could not register the native {module}.{name}"));
        }
        entry.front = ty;
        Ok(id)
    }
}

/// Initialises this thread for WAMR once; undone when the thread exits.
struct ThreadEnv {
    ok: bool,
    owned: bool,
}

impl ThreadEnv {
    fn new() -> ThreadEnv {
        // SAFETY: both functions only touch thread-local state of WAMR's
        // platform layer; the runtime was initialised before any caller gets here.
        unsafe {
            if sys::wasm_runtime_thread_env_inited() {
                ThreadEnv { ok: true, owned: false }
            } else {
                let ok = sys::wasm_runtime_init_thread_env();
                ThreadEnv { ok, owned: ok }
            }
        }
    }
}

impl Drop for ThreadEnv {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: this thread initialised its environment in `new` and is exiting.
            unsafe { sys::wasm_runtime_destroy_thread_env() }
        }
    }
}

thread_local! {
    static THREAD_ENV: ThreadEnv = ThreadEnv::new();
}

fn thread_env_ready() -> bool {
    THREAD_ENV.try_with(|e| e.ok).unwrap_or(false)
}

/// The process-wide WAMR runtime.
pub struct WamrEngine {
    _private: (),
}

impl WamrEngine {
    /// The runtime of this process, initialised on first use.
    pub fn shared() -> Result<Arc<WamrEngine>, RuntimeError> {
        static ENGINE: OnceLock<Result<Arc<WamrEngine>, String>> = OnceLock::new();
        ENGINE
            .get_or_init(|| {
                let mut args = sys::RuntimeInitArgs {
                    mem_alloc_type: sys::Alloc_With_System_Allocator,
                    running_mode: sys::Mode_Interp,
                    ..Default::default()
                };
                // SAFETY: `args` is a valid, zero-initialised RuntimeInitArgs
                // asking for the system allocator and no natives; WAMR's own
                // lock makes a concurrent init safe, and OnceLock runs this once.
                let ok = unsafe { sys::wasm_runtime_full_init(&mut args) };
                if !ok {
                    return Err("cannot initialise the WAMR runtime".to_string());
                }
                // SAFETY: a plain setter of WAMR's global log level. Errors we
                // need come back through return values and exceptions; WAMR's
                // own warnings would go to the server's stdout.
                unsafe { sys::wasm_runtime_set_log_level(sys::WASM_LOG_LEVEL_FATAL) };
                Ok(Arc::new(WamrEngine { _private: () }))
            })
            .clone()
            .map_err(RuntimeError::Compile)
    }
}

fn val_type(kind: sys::wasm_valkind_t) -> ValType {
    match kind as sys::wasm_valkind_enum {
        sys::WASM_I32 => ValType::I32,
        sys::WASM_I64 => ValType::I64,
        sys::WASM_F32 => ValType::F32,
        sys::WASM_F64 => ValType::F64,
        _ => ValType::Other,
    }
}

/// # Safety
/// `ft` is a function type of a loaded module.
unsafe fn func_type(ft: sys::wasm_func_type_t) -> FuncType {
    // SAFETY: the caller guarantees `ft` is valid; indices stay below the counts WAMR reports.
    unsafe {
        let params = (0..sys::wasm_func_type_get_param_count(ft))
            .map(|i| val_type(sys::wasm_func_type_get_param_valkind(ft, i)))
            .collect();
        let results = (0..sys::wasm_func_type_get_result_count(ft))
            .map(|i| val_type(sys::wasm_func_type_get_result_valkind(ft, i)))
            .collect();
        FuncType { params, results }
    }
}

/// # Safety
/// `p` is null or a NUL-terminated string.
unsafe fn c_str(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null and NUL-terminated per the caller.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn error_text(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl<T: Send + 'static> Engine<T> for WamrEngine {
    fn name(&self) -> &'static str {
        "wamr"
    }

    fn compile(&self, wasm: &[u8]) -> Result<Arc<dyn Module<T>>, RuntimeError> {
        let mut bytes = wasm.to_vec().into_boxed_slice();
        let size = u32::try_from(bytes.len()).map_err(|_| RuntimeError::Compile("module larger than 4 GiB".into()))?;
        let mut registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        let mut err = [0 as c_char; 256];
        let args = sys::LoadArgs {
            name: MODULE_NAME.as_ptr().cast_mut(),
            clone_wasm_binary: false,
            wasm_binary_freeable: false,
            no_resolve: true,
        };
        // SAFETY: `bytes` is writable and is kept (never moved: it is a boxed
        // slice owned by the module) until `wasm_runtime_unload`, as WAMR
        // requires; the name is a static string WAMR only reads; `err` is a
        // buffer of the size passed; the registry lock is held.
        let raw =
            unsafe { sys::wasm_runtime_load_ex(bytes.as_mut_ptr(), size, &args, err.as_mut_ptr(), err.len() as u32) };
        if raw.is_null() {
            return Err(RuntimeError::Compile(error_text(&err)));
        }
        let shared = ModuleShared { raw, _bytes: bytes };
        let mut imports = Vec::new();
        let mut import_ids = Vec::new();
        // SAFETY: `raw` is a loaded module; indices stay below the count WAMR
        // reports, and the strings/types it returns live as long as the module.
        unsafe {
            for i in 0..sys::wasm_runtime_get_import_count(raw).max(0) {
                let mut imp = sys::wasm_import_t::default();
                sys::wasm_runtime_get_import_type(raw, i, &mut imp);
                let module = c_str(imp.module_name);
                let name = c_str(imp.name);
                let ty = (imp.kind == sys::WASM_IMPORT_EXPORT_KIND_FUNC).then(|| func_type(imp.u.func_type));
                if ty.is_some() {
                    let id = registry.id::<T>(&module, &name).map_err(RuntimeError::Compile)?;
                    import_ids.push((module.clone(), name.clone(), id));
                }
                imports.push(ImportDesc { module, name, ty });
            }
        }
        // SAFETY: `raw` was loaded with no_resolve and every function import
        // now has a registered native; the registry lock is held.
        if !unsafe { sys::wasm_runtime_resolve_symbols(raw) } {
            return Err(RuntimeError::Compile("WAMR could not resolve the module's imports".into()));
        }
        drop(registry);
        let mut exports = Vec::new();
        // SAFETY: as for the imports above.
        unsafe {
            for i in 0..sys::wasm_runtime_get_export_count(raw).max(0) {
                let mut exp = sys::wasm_export_t::default();
                sys::wasm_runtime_get_export_type(raw, i, &mut exp);
                let ty = (exp.kind == sys::WASM_IMPORT_EXPORT_KIND_FUNC).then(|| func_type(exp.u.func_type));
                exports.push(ExportDesc { name: c_str(exp.name), ty });
            }
        }
        Ok(Arc::new(WamrModule { shared: Arc::new(shared), imports, exports, import_ids, links: OnceLock::new() }))
    }
}

/// A loaded WAMR module and the bytes it points into.
struct ModuleShared {
    raw: sys::wasm_module_t,
    _bytes: Box<[u8]>,
}

// SAFETY: a loaded module is immutable; WAMR instantiates one module from
// several threads (its own thread manager does). Unloading happens once, in
// Drop, after every instance (each holds an Arc) is gone.
unsafe impl Send for ModuleShared {}
// SAFETY: see Send; shared access only reads the module.
unsafe impl Sync for ModuleShared {}

impl Drop for ModuleShared {
    fn drop(&mut self) {
        // SAFETY: no instance is left (they hold Arcs to this); the bytes are
        // dropped after this call, as WAMR requires.
        unsafe { sys::wasm_runtime_unload(self.raw) }
    }
}

/// A hostcall bound to one import of one module.
struct Link<T> {
    func: HostFn<T>,
    params: Vec<ValType>,
    result: Option<ValType>,
    /// The function when it is typed and the import has its type: run straight from WAMR's slots.
    typed: Option<TypedFn<T>>,
}

/// Attachment id -> hostcall, for one module.
type LinkTable<T> = Arc<[Option<Link<T>>]>;

struct WamrModule<T> {
    shared: Arc<ModuleShared>,
    imports: Vec<ImportDesc>,
    exports: Vec<ExportDesc>,
    /// (module, name, attachment id) of each function import.
    import_ids: Vec<(String, String, u32)>,
    links: OnceLock<Result<LinkTable<T>, String>>,
}

impl<T> WamrModule<T> {
    fn link(&self, imports: &[LinkedImport<T>]) -> Result<LinkTable<T>, String> {
        let size = self.import_ids.iter().map(|(_, _, id)| *id as usize + 1).max().unwrap_or(0);
        let mut table: Vec<Option<Link<T>>> = (0..size).map(|_| None).collect();
        for (module, name, id) in &self.import_ids {
            let Some(host) = imports.iter().find(|i| &i.module == module && &i.name == name) else {
                return Err(format!("no host function for the import {module}.{name}"));
            };
            // WAMR copies only the first result of a native function back to the interpreter:
            // a second one would be whatever its stack held. Refused, rather than answered with
            // garbage (Wasmtime returns every result).
            if host.ty.results.len() > 1 {
                return Err(format!(
                    "the import {module}.{name} returns {} values; a host function returns at most one on WAMR",
                    host.ty.results.len()
                ));
            }
            let typed = match host.func {
                HostFn::Typed(t) if t.matches(&host.ty) => Some(t),
                _ => None,
            };
            table[*id as usize] = Some(Link {
                func: host.func,
                params: host.ty.params.clone(),
                result: host.ty.results.first().copied(),
                typed,
            });
        }
        Ok(table.into())
    }
}

impl<T: Send + 'static> Module<T> for WamrModule<T> {
    fn imports(&self) -> &[ImportDesc] {
        &self.imports
    }

    fn exports(&self) -> &[ExportDesc] {
        &self.exports
    }

    fn instantiate(
        &self,
        state: T,
        imports: &[LinkedImport<T>],
        limits: &Limits,
    ) -> Result<Box<dyn Instance<T>>, RuntimeError> {
        let links = self.links.get_or_init(|| self.link(imports)).clone().map_err(RuntimeError::Instantiate)?;
        if !thread_env_ready() {
            return Err(RuntimeError::Instantiate("cannot initialise this thread for WAMR".into()));
        }
        let raw = self.shared.raw;
        let mut err = [0 as c_char; 256];
        let mut args: *mut sys::InstantiationArgs2 = std::ptr::null_mut();
        // SAFETY: creates a WAMR-owned argument object, destroyed below.
        if !unsafe { sys::wasm_runtime_instantiation_args_create(&mut args) } {
            return Err(RuntimeError::Instantiate("WAMR could not allocate instantiation arguments".into()));
        }
        let max_pages = limits.max_memory_bytes.map(|b| u32::try_from((b / WASM_PAGE).max(1)).unwrap_or(u32::MAX));
        // SAFETY: `args` is valid until destroyed; `raw` is a loaded module
        // whose imports are resolved; `err` is a buffer of the size passed.
        let inst = unsafe {
            sys::wasm_runtime_instantiation_args_set_default_stack_size(args, WASM_STACK_SIZE);
            sys::wasm_runtime_instantiation_args_set_host_managed_heap_size(args, 0);
            if let Some(pages) = max_pages {
                sys::wasm_runtime_instantiation_args_set_max_memory_pages(args, pages);
            }
            let inst = sys::wasm_runtime_instantiate_ex2(raw, args, err.as_mut_ptr(), err.len() as u32);
            sys::wasm_runtime_instantiation_args_destroy(args);
            inst
        };
        if inst.is_null() {
            return Err(RuntimeError::Instantiate(error_text(&err)));
        }
        // From here on dropping `inner` deinstantiates, on every early return.
        let mut inner = Box::new(Inner {
            inst,
            exec_env: std::ptr::null_mut(),
            state,
            links,
            funcs: HashMap::new(),
            last_found: None,
            pending_trap: None,
            depth: 0,
            watch: None,
            _module: self.shared.clone(),
        });
        let memory = memory_bytes(inst);
        if let (Some(cap), Some(size)) = (limits.max_memory_bytes, memory) {
            if size as u64 > cap {
                return Err(RuntimeError::Instantiate(format!(
                    "the module's initial memory ({size} bytes) is larger than the limit of {cap} bytes"
                )));
            }
        }
        // SAFETY: `inst` is a live instance; the exec env is destroyed in Inner's Drop.
        let exec_env = unsafe { sys::wasm_runtime_create_exec_env(inst, WASM_STACK_SIZE) };
        if exec_env.is_null() {
            return Err(RuntimeError::Instantiate("WAMR could not create an execution environment".into()));
        }
        inner.exec_env = exec_env;
        if let Some(limit) = limits.callback_timeout {
            inner.watch = Some(watchdog().register(inst, limit));
        }
        let ptr = Box::into_raw(inner);
        // SAFETY: `ptr` comes from Box::into_raw and stays valid until the
        // instance is dropped, which destroys the exec env first; the
        // trampoline only reads it back while a call on this instance runs.
        unsafe { sys::wasm_runtime_set_user_data(exec_env, ptr.cast()) };
        let memory_cap = limits.max_memory_bytes.map(|b| (b / WASM_PAGE as u64).max(1) * WASM_PAGE as u64);
        Ok(Box::new(WamrInstance { inner: ptr, resolved: Vec::new(), memory_cap, cap_reported: false }))
    }
}

/// The byte size of the default memory, if the instance has one.
fn memory_bytes(inst: sys::wasm_module_inst_t) -> Option<usize> {
    // SAFETY: `inst` is a live instance; the memory handle is valid while it is.
    unsafe {
        let mem = sys::wasm_runtime_get_default_memory(inst);
        if mem.is_null() {
            return None;
        }
        let pages = sys::wasm_memory_get_cur_page_count(mem);
        let per_page = sys::wasm_memory_get_bytes_per_page(mem);
        Some((pages * per_page) as usize)
    }
}

/// Everything of one instance, behind a stable heap address the trampoline reaches.
struct Inner<T> {
    inst: sys::wasm_module_inst_t,
    exec_env: sys::wasm_exec_env_t,
    state: T,
    links: LinkTable<T>,
    funcs: HashMap<String, Option<Export>>,
    /// The export `lookup` found last, by name: the allocator, which every
    /// hostcall returning data calls (a name comparison, not a hash lookup).
    last_found: Option<(Box<str>, Export)>,
    /// The trap a hostcall raised, kept whole (WAMR's exception text is short).
    pending_trap: Option<Trap>,
    /// Calls into the guest in progress (hostcalls call the allocator).
    depth: u32,
    watch: Option<Arc<WatchSlot>>,
    _module: Arc<ModuleShared>,
}

#[derive(Clone, Copy)]
struct Export {
    func: sys::wasm_function_inst_t,
    params: [ValType; 8],
    n_params: usize,
    result: Option<ValType>,
}

impl<T> Drop for Inner<T> {
    fn drop(&mut self) {
        if let Some(w) = &self.watch {
            w.forget();
        }
        // SAFETY: the watchdog no longer knows the instance; the exec env and
        // the instance are destroyed once, the env first, before the module
        // (held by `_module`) can be unloaded.
        unsafe {
            if !self.exec_env.is_null() {
                sys::wasm_runtime_destroy_exec_env(self.exec_env);
            }
            sys::wasm_runtime_deinstantiate(self.inst);
        }
    }
}

/// Looks up an export (cached) with its signature.
///
/// # Safety
/// `inner` points to a live `Inner` and no reference into it is held.
unsafe fn lookup<T>(inner: *mut Inner<T>, name: &str) -> Option<Export> {
    // SAFETY: per the contract; the map borrow ends before returning.
    unsafe {
        if let Some((n, e)) = &(*inner).last_found {
            if **n == *name {
                return Some(*e);
            }
        }
        if let Some(e) = (*inner).funcs.get(name) {
            if let Some(e) = e {
                (*inner).last_found = Some((name.into(), *e));
            }
            return *e;
        }
        let inst = (*inner).inst;
        let found = CString::new(name).ok().and_then(|c| {
            let func = sys::wasm_runtime_lookup_function(inst, c.as_ptr());
            if func.is_null() {
                return None;
            }
            let n_params = sys::wasm_func_get_param_count(func, inst) as usize;
            let n_results = sys::wasm_func_get_result_count(func, inst) as usize;
            if n_params > 8 || n_results > 1 {
                return None;
            }
            let mut kinds = [0u8; 8];
            sys::wasm_func_get_param_types(func, inst, kinds.as_mut_ptr());
            let mut rkind = [0u8; 1];
            if n_results == 1 {
                sys::wasm_func_get_result_types(func, inst, rkind.as_mut_ptr());
            }
            let mut params = [ValType::Other; 8];
            for (p, k) in params.iter_mut().zip(kinds) {
                *p = val_type(k);
            }
            Some(Export { func, params, n_params, result: (n_results == 1).then(|| val_type(rkind[0])) })
        });
        (*inner).funcs.insert(name.to_string(), found);
        found
    }
}

fn to_wasm_val(v: Val, ty: ValType) -> sys::wasm_val_t {
    let mut out = sys::wasm_val_t::default();
    match ty {
        ValType::I64 => {
            out.kind = sys::WASM_I64 as u8;
            out.of.i64_ = v.as_i64();
        }
        ValType::F32 => {
            out.kind = sys::WASM_F32 as u8;
            out.of.f32_ = 0.0;
        }
        ValType::F64 => {
            out.kind = sys::WASM_F64 as u8;
            out.of.f64_ = 0.0;
        }
        _ => {
            out.kind = sys::WASM_I32 as u8;
            out.of.i32_ = v.as_i32();
        }
    }
    out
}

/// Calls an export of the instance behind `inner`: the outermost call arms the
/// time limit and clears WAMR's exception after a trap; nested calls (the
/// allocator, from inside a hostcall) leave the exception for the outer call to unwind.
///
/// # Safety
/// `inner` points to a live `Inner`, used by this thread only, and no Rust
/// reference into it is live across this call.
unsafe fn call_export<T>(inner: *mut Inner<T>, name: &str, args: &[Val]) -> Result<Option<Val>, Trap> {
    // SAFETY: per the contract.
    let Some(export) = (unsafe { lookup(inner, name) }) else {
        return Err(Trap::new(format!("the module has no function export {name:?}")));
    };
    // SAFETY: per the contract.
    unsafe { call_found(inner, export, args) }
}

/// Calls `export`, found by [`lookup`] on the instance behind `inner`.
///
/// # Safety
/// As [`call_export`].
unsafe fn call_found<T>(inner: *mut Inner<T>, export: Export, args: &[Val]) -> Result<Option<Val>, Trap> {
    if !thread_env_ready() {
        return Err(Trap::new("cannot initialise this thread for WAMR"));
    }
    if export.n_params != args.len() {
        return Err(Trap::new(format!("export expects {} arguments, the host passed {}", export.n_params, args.len())));
    }
    // At most 8 parameters (see `lookup`): on the stack, no allocation per call.
    let mut wargs = [sys::wasm_val_t::default(); 8];
    for ((slot, a), t) in wargs.iter_mut().zip(args).zip(&export.params) {
        *slot = to_wasm_val(*a, *t);
    }
    let wargs = &mut wargs[..args.len()];
    let mut wres = [sys::wasm_val_t::default(); 1];
    let n_results = u32::from(export.result.is_some());
    // SAFETY: short accesses through the raw pointer; no reference is kept
    // across the FFI call below, during which hostcalls use the same pointer.
    let (exec_env, inst, outer, watch) = unsafe {
        let i = &mut *inner;
        i.depth += 1;
        (i.exec_env, i.inst, i.depth == 1, if i.depth == 1 { i.watch.clone() } else { None })
    };
    if let Some(w) = &watch {
        w.arm();
    }
    // SAFETY: `exec_env` belongs to `inst`, both live; `export.func` was
    // looked up on `inst`; argument and result arrays match the function's
    // signature and counts.
    let ok = unsafe {
        sys::wasm_runtime_call_wasm_a(
            exec_env,
            export.func,
            n_results,
            wres.as_mut_ptr(),
            wargs.len() as u32,
            wargs.as_mut_ptr(),
        )
    };
    let timed_out = watch.as_ref().is_some_and(|w| w.disarm());
    // SAFETY: the call has returned; no other reference into `inner` is live.
    let i = unsafe { &mut *inner };
    i.depth -= 1;
    if ok && !timed_out {
        return Ok(export.result.map(|t| {
            // SAFETY: WAMR wrote a value of the function's result type.
            unsafe {
                match t {
                    ValType::I64 => Val::I64(wres[0].of.i64_),
                    ValType::I32 => Val::I32(wres[0].of.i32_),
                    _ => Val::I32(0),
                }
            }
        }));
    }
    // SAFETY: `inst` is live; the exception string is copied before it can change.
    let exception = unsafe { c_str(sys::wasm_runtime_get_exception(inst)) };
    let exception = exception.strip_prefix("Exception: ").unwrap_or(&exception).to_string();
    let mut trap = if timed_out || (exception == TERMINATED && watch.is_some()) {
        let limit = watch.as_ref().map_or(Duration::ZERO, |w| w.limit);
        Trap {
            message: format!("time limit exceeded: the callback ran longer than {} ms", limit.as_millis()),
            backtrace: None,
            kind: TrapKind::Timeout,
        }
    } else if let Some(t) = i.pending_trap.take() {
        t
    } else if exception.is_empty() {
        Trap::new("the call failed without a WAMR exception")
    } else {
        Trap::new(format!("wasm trap: {}", trap_text(&exception)))
    };
    if trap.backtrace.is_none() {
        // SAFETY: `exec_env` is live and the failed call has returned on this thread.
        trap.backtrace = unsafe { call_stack(exec_env) };
    }
    if outer {
        i.pending_trap = None;
        // SAFETY: no guest code runs on this instance now.
        unsafe { sys::wasm_runtime_clear_exception(inst) };
    }
    Err(trap)
}

/// The wasm frames WAMR recorded for the last failed call on `exec_env`
/// (names from the name section), innermost first.
///
/// # Safety
/// `exec_env` is live and no call runs on it.
unsafe fn call_stack(exec_env: sys::wasm_exec_env_t) -> Option<String> {
    // SAFETY: per the contract; the buffer is as large as WAMR asked for.
    unsafe {
        let size = sys::wasm_runtime_get_call_stack_buf_size(exec_env);
        if size == 0 {
            return None;
        }
        let mut buf = vec![0u8; size as usize + 1];
        let written = sys::wasm_runtime_dump_call_stack_to_buf(
            exec_env,
            buf.as_mut_ptr() as *mut std::os::raw::c_char,
            buf.len() as u32,
        );
        buf.truncate((written as usize).min(size as usize));
        let text = String::from_utf8_lossy(&buf).trim_end_matches('\0').trim_end().to_string();
        // Lines are `#NN: 0xOFFSET - name`; Rust names are demangled as on Wasmtime.
        let text: Vec<String> = text
            .lines()
            .map(|line| match line.split_once(" - ") {
                Some((frame, name)) => format!("{frame} - {:#}", rustc_demangle::demangle(name)),
                None => line.to_string(),
            })
            .collect();
        (!text.is_empty()).then(|| text.join("\n"))
    }
}

/// WAMR's exception text worded as Wasmtime words the same trap, so that logs
/// and tests read the same on both runtimes; other texts are kept.
fn trap_text(exception: &str) -> &str {
    match exception {
        "unreachable" => "wasm `unreachable` instruction executed",
        "wasm operand stack overflow" | "native stack overflow" | "wasm auxiliary stack overflow" => {
            "call stack exhausted"
        }
        "out of bounds table access" => "undefined element: out of bounds table access",
        "undefined element" => "undefined element: out of bounds table access",
        other => other,
    }
}

struct WamrInstance<T> {
    inner: *mut Inner<T>,
    /// The exports found by `resolve`: an `ExportIndex` is a position here,
    /// so a call by index skips the lookup by name.
    resolved: Vec<Export>,
    /// The memory limit in whole pages' bytes, and whether reaching it was reported.
    memory_cap: Option<u64>,
    cap_reported: bool,
}

// SAFETY: WAMR instances are not tied to a thread: every call sets the exec
// env's thread info, and this thread's WAMR environment is initialised before
// each call. `&mut self` gives one thread at a time.
unsafe impl<T: Send> Send for WamrInstance<T> {}

impl<T> Drop for WamrInstance<T> {
    fn drop(&mut self) {
        // SAFETY: `inner` came from Box::into_raw and is freed once, here.
        drop(unsafe { Box::from_raw(self.inner) });
    }
}

impl<T: Send + 'static> Instance<T> for WamrInstance<T> {
    fn resolve(&mut self, name: &str) -> Option<ExportIndex> {
        // SAFETY: `inner` is live while self is; `&mut self` excludes other users.
        let export = unsafe { lookup(self.inner, name) }?;
        if let Some(i) = self.resolved.iter().position(|e| e.func == export.func) {
            return Some(ExportIndex(i as u32));
        }
        self.resolved.push(export);
        Some(ExportIndex(self.resolved.len() as u32 - 1))
    }

    fn call_resolved(&mut self, export: ExportIndex, args: &[Val]) -> Result<Option<Val>, Trap> {
        let Some(export) = self.resolved.get(export.0 as usize).copied() else {
            return Err(Trap::new(format!("no resolved export with index {}", export.0)));
        };
        // SAFETY: `inner` is live while self is; `&mut self` excludes other
        // users; `export` was looked up on this instance.
        unsafe { call_found(self.inner, export, args) }
    }

    fn state(&mut self) -> &mut T {
        // SAFETY: live while self is; the borrow is tied to `&mut self`.
        unsafe { &mut (*self.inner).state }
    }

    fn memory_size(&mut self) -> usize {
        // SAFETY: live while self is.
        memory_bytes(unsafe { (*self.inner).inst }).unwrap_or(0)
    }

    fn memory(&mut self) -> &mut [u8] {
        // SAFETY: `inner` is live while self is, and no guest code runs while
        // the slice lives: it borrows `&mut self`, which every call needs.
        unsafe { linear_memory((*self.inner).inst) }
    }

    /// WAMR has no hook on a refused `memory.grow`: a memory at its cap is
    /// reported once instead (any further growth fails).
    fn take_memory_refusal(&mut self) -> bool {
        let Some(cap) = self.memory_cap.filter(|_| !self.cap_reported) else { return false };
        self.cap_reported = self.memory_size() as u64 >= cap;
        self.cap_reported
    }
}

/// The default memory of `inst` (empty if it has none).
///
/// # Safety
/// `inst` must be live for `'a`, and no guest code may run (the memory could
/// grow or move) while the slice lives.
unsafe fn linear_memory<'a>(inst: sys::wasm_module_inst_t) -> &'a mut [u8] {
    // SAFETY: as the caller promises; the slice covers exactly the current pages.
    unsafe {
        let mem = sys::wasm_runtime_get_default_memory(inst);
        if mem.is_null() {
            return &mut [];
        }
        let base = sys::wasm_memory_get_base_address(mem).cast::<u8>();
        let len = (sys::wasm_memory_get_cur_page_count(mem) * sys::wasm_memory_get_bytes_per_page(mem)) as usize;
        if base.is_null() || len == 0 {
            &mut []
        } else {
            std::slice::from_raw_parts_mut(base, len)
        }
    }
}

/// What a hostcall sees: the calling instance, through the exec env's user data.
struct WamrCaller<T> {
    inner: *mut Inner<T>,
}

impl<T> Caller<T> for WamrCaller<T> {
    fn memory_and_state(&mut self) -> (&mut [u8], &mut T) {
        // SAFETY: `inner` is the live instance whose call is running on this
        // thread. The memory slice covers exactly the current pages; it and
        // the state are disjoint, and both borrows end before anything can
        // run guest code again (call_export takes `&mut self`), so the memory
        // cannot grow or move while the slice lives.
        unsafe {
            let i = self.inner;
            (linear_memory((*i).inst), &mut (*i).state)
        }
    }

    fn call_export(&mut self, name: &str, args: &[Val]) -> Result<Option<Val>, Trap> {
        // SAFETY: no reference into `inner` is live (this method holds `&mut self`).
        unsafe { call_export(self.inner, name, args) }
    }
}

/// The native function behind every import of a module compiled for host
/// state `T`: finds the hostcall by the
/// attachment id in the calling instance's link table and runs it.
unsafe extern "C" fn trampoline<T>(exec_env: sys::wasm_exec_env_t, args: *mut u64) {
    // SAFETY: WAMR calls this with a live exec env; its module instance is the
    // caller's; user data is our Inner<T> (or null outside our calls, e.g. a
    // start function during instantiation): `trampoline::<T>` is only bound
    // into modules resolved for `T` (see `Registry::id`), whose instances
    // all hold an `Inner<T>`.
    let (inst, inner, id) = unsafe {
        (
            sys::wasm_runtime_get_module_inst(exec_env),
            sys::wasm_runtime_get_user_data(exec_env).cast::<Inner<T>>(),
            sys::wasm_runtime_get_function_attachment(exec_env) as usize,
        )
    };
    let raise = |message: &CStr| {
        // SAFETY: `inst` is the live caller; WAMR copies the text.
        unsafe { sys::wasm_runtime_set_exception(inst, message.as_ptr()) }
    };
    if inner.is_null() {
        raise(c"host functions cannot be called while the module is instantiated");
        return;
    }
    // SAFETY: `inner` is live (its call is running); the function is copied out of the table,
    // so the borrow ends here.
    let typed = unsafe {
        let links: &LinkTable<T> = &(*inner).links;
        links.get(id).and_then(Option::as_ref).and_then(|l| l.typed)
    };
    if let Some(f) = typed {
        let n = f.params().len();
        let mut slots = [0u64; 2];
        // SAFETY: WAMR passes one u64 slot per parameter, and `f` has the import's parameters
        // (checked when the table was made); at most two.
        unsafe { std::ptr::copy_nonoverlapping(args, slots.as_mut_ptr(), n.min(2)) };
        // SAFETY: no other reference into `inner` is live while the function runs (it cannot
        // call back into the guest).
        let state = unsafe { &mut (*inner).state };
        match catch_unwind(AssertUnwindSafe(|| f.call_slots(state, &slots))) {
            // SAFETY: the result goes to slot 0, which exists when the import has a result.
            Ok(Some(r)) => unsafe { *args = r },
            Ok(None) => {}
            Err(_) => {
                // SAFETY: the state's borrow ended with the call.
                unsafe { (*inner).pending_trap = Some(Trap::new("host function panicked")) };
                raise(HOST_TRAP);
            }
        }
        return;
    }
    // SAFETY: `inner` is live (its call is running); the Arc clone ends the borrow at once.
    let links = unsafe { (*inner).links.clone() };
    let Some(Some(link)) = links.get(id) else {
        raise(c"call to an import the host did not link");
        return;
    };
    // Hostcalls take at most a dozen arguments: converted on the stack.
    let mut buf = [Val::I32(0); 16];
    if link.params.len() > buf.len() {
        raise(c"a hostcall with more than 16 parameters");
        return;
    }
    for (k, (slot, t)) in buf.iter_mut().zip(&link.params).enumerate() {
        // SAFETY: WAMR passes one u64 slot per parameter.
        let raw = unsafe { *args.add(k) };
        *slot = match t {
            ValType::I64 => Val::I64(raw as i64),
            ValType::I32 => Val::I32(raw as u32 as i32),
            _ => Val::I32(0),
        };
    }
    let vals = &buf[..link.params.len()];
    let mut caller = WamrCaller { inner };
    let func = link.func;
    let outcome = catch_unwind(AssertUnwindSafe(|| func.call(&mut caller, vals)));
    let outcome = match outcome {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Trap::new(format!("host function panicked: {what}")))
        }
    };
    match outcome {
        Ok(v) => {
            if let Some(t) = link.result {
                let v = v.unwrap_or(Val::I32(0));
                let raw = match t {
                    ValType::I64 => v.as_i64() as u64,
                    _ => v.as_i32() as u32 as u64,
                };
                // SAFETY: the result goes to slot 0, which always exists when the import has a result.
                unsafe { *args = raw };
            }
        }
        Err(trap) => {
            // SAFETY: no reference into `inner` is live here.
            unsafe { (*inner).pending_trap = Some(trap) };
            raise(HOST_TRAP);
        }
    }
}

// ------------------------------------------------------------------ watchdog

/// How often the watchdog looks at running calls: a callback is stopped
/// between its limit and its limit plus this.
const WATCHDOG_TICK: Duration = Duration::from_millis(5);

/// One instance as the watchdog sees it.
struct WatchSlot {
    limit: Duration,
    state: Mutex<SlotState>,
}

struct SlotState {
    /// Null once the instance is being destroyed.
    inst: InstPtr,
    deadline: Option<Instant>,
    fired: bool,
}

#[derive(Clone, Copy)]
struct InstPtr(sys::wasm_module_inst_t);
// SAFETY: the pointer is only used under the slot's lock, by the watchdog to
// call wasm_runtime_terminate, which WAMR documents as callable from another
// thread; the owner nulls it under the same lock before destroying the instance.
unsafe impl Send for InstPtr {}

impl WatchSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn arm(&self) {
        let mut s = self.lock();
        s.deadline = Some(Instant::now() + self.limit);
        s.fired = false;
    }

    /// Ends the watch of a call; whether the watchdog stopped it.
    fn disarm(&self) -> bool {
        let mut s = self.lock();
        s.deadline = None;
        std::mem::take(&mut s.fired)
    }

    fn forget(&self) {
        let mut s = self.lock();
        s.inst = InstPtr(std::ptr::null_mut());
        s.deadline = None;
    }
}

struct Watchdog {
    slots: Mutex<Vec<Weak<WatchSlot>>>,
    wake: Condvar,
}

impl Watchdog {
    fn register(self: &Arc<Self>, inst: sys::wasm_module_inst_t, limit: Duration) -> Arc<WatchSlot> {
        let slot = Arc::new(WatchSlot {
            limit,
            state: Mutex::new(SlotState { inst: InstPtr(inst), deadline: None, fired: false }),
        });
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(&slot));
        self.wake.notify_one();
        slot
    }

    fn run(self: Arc<Self>) {
        loop {
            let live: Vec<Arc<WatchSlot>> = {
                let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                slots.retain(|w| w.strong_count() > 0);
                if slots.is_empty() {
                    // Nothing to watch: sleep until an instance with a limit appears.
                    let _unused = self.wake.wait(slots).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                slots.iter().filter_map(Weak::upgrade).collect()
            };
            let now = Instant::now();
            for slot in live {
                let mut s = slot.lock();
                if !s.fired && !s.inst.0.is_null() && s.deadline.is_some_and(|d| d <= now) {
                    s.fired = true;
                    // SAFETY: under the slot lock the instance is alive (its
                    // owner nulls the pointer under this lock before
                    // destroying it); terminating from another thread is
                    // what this WAMR function is for.
                    unsafe { sys::wasm_runtime_terminate(s.inst.0) };
                }
            }
            std::thread::sleep(WATCHDOG_TICK);
        }
    }
}

/// The watchdog of this process, started on first use (again after a fork:
/// threads do not survive one, so an NGINX worker starts its own).
fn watchdog() -> Arc<Watchdog> {
    static WATCHDOG: Mutex<Option<(u32, Arc<Watchdog>)>> = Mutex::new(None);
    let mut w = WATCHDOG.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if let Some((p, dog)) = w.as_ref() {
        if *p == pid {
            return dog.clone();
        }
    }
    let dog = Arc::new(Watchdog { slots: Mutex::new(Vec::new()), wake: Condvar::new() });
    let runner = dog.clone();
    // If the thread cannot start, calls simply run without a time limit being enforced.
    let _ = std::thread::Builder::new().name("proxy-wasm-wamr-watchdog".into()).spawn(move || runner.run());
    *w = Some((pid, dog.clone()));
    dog
}
