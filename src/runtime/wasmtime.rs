//! The Wasmtime runtime adapter (Cranelift, ahead-of-instantiation compilation).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wasmtime as wt;

use super::{
    Caller, Engine, ExportDesc, ExportIndex, FuncType, HostFn, ImportDesc, Instance, Limits, LinkedImport, Module,
    RuntimeError, Trap, TrapKind, Val, ValType,
};
use crate::hash::FastMap;

/// The process-wide Wasmtime engine. One engine serves every plugin so that
/// compiled code is shared; it is created lazily, in the process that uses it
/// (NGINX workers fork after configuration, and an engine must not cross a fork).
pub struct WasmtimeEngine {
    engine: wt::Engine,
}

impl WasmtimeEngine {
    pub fn new() -> Result<WasmtimeEngine, RuntimeError> {
        let mut config = wt::Config::new();
        config.wasm_backtrace_max_frames(std::num::NonZeroUsize::new(32));
        config.wasm_backtrace_details(wt::WasmBacktraceDetails::Disable);
        // Time limits per callback: compiled code checks the engine's epoch at
        // function entries and loop headers; a ticker thread advances it.
        config.epoch_interruption(true);
        let engine = wt::Engine::new(&config)
            .map_err(|e| RuntimeError::Compile(format!("cannot create the Wasmtime engine: {e}")))?;
        Ok(WasmtimeEngine { engine })
    }

    /// The shared engine of this process.
    pub fn shared() -> Result<Arc<WasmtimeEngine>, RuntimeError> {
        static ENGINE: OnceLock<Result<Arc<WasmtimeEngine>, String>> = OnceLock::new();
        ENGINE
            .get_or_init(|| WasmtimeEngine::new().map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(RuntimeError::Compile)
    }
}

/// How often the epoch advances: a callback is stopped between its limit
/// and its limit plus this.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The deadline of stores without a time limit: never reached.
const NO_DEADLINE: u64 = u64::MAX / 2;

/// Starts the thread that advances the epoch of `engine`, once per process
/// (again after a fork: threads do not survive one, so an NGINX worker starts its own).
fn start_epoch_ticker(engine: &wt::Engine) {
    static TICKER: Mutex<Option<u32>> = Mutex::new(None);
    let mut t = TICKER.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if *t == Some(pid) {
        return;
    }
    let engine = engine.clone();
    let started = std::thread::Builder::new().name("proxy-wasm-epoch".into()).spawn(move || loop {
        std::thread::sleep(EPOCH_TICK);
        engine.increment_epoch();
    });
    if started.is_ok() {
        *t = Some(pid);
    }
}

/// Epoch ticks for a time limit (at least one).
fn ticks(limit: Duration) -> u64 {
    (limit.as_nanos().div_ceil(EPOCH_TICK.as_nanos())).max(1) as u64
}

/// What a store holds: the host state, the limits its memory grows under, and
/// what hostcalls and callbacks would otherwise look up by name on every call.
pub(crate) struct StoreData<T> {
    host: T,
    limits: MemoryCap,
    /// The guest's `memory` export, set once instantiated (before that, and in
    /// a module without one, hostcalls look it up).
    memory: Option<wt::Memory>,
    /// Function exports by name, as found on first use (`None`: no such export).
    exports: FastMap<Box<str>, Option<Arc<Export>>>,
    /// The first export `call_export` found, by name: the allocator, which
    /// every hostcall returning data calls. Moved out while it runs, so a call
    /// costs a name comparison instead of a hash lookup and an `Arc` clone.
    allocator: Option<(Box<str>, Export)>,
}

/// A function export ready to call. Proxy-Wasm callbacks and allocators take
/// i32s and return nothing or an i32: those are called through `TypedFunc`s,
/// which skip the per-call type checks and `Val` vectors of `Func::call`.
enum Export {
    Typed(Typed),
    Untyped(wt::Func),
}

enum Typed {
    Void0(wt::TypedFunc<(), ()>),
    Ret0(wt::TypedFunc<(), i32>),
    Void1(wt::TypedFunc<(i32,), ()>),
    Ret1(wt::TypedFunc<(i32,), i32>),
    Void2(wt::TypedFunc<(i32, i32), ()>),
    Ret2(wt::TypedFunc<(i32, i32), i32>),
    Void3(wt::TypedFunc<(i32, i32, i32), ()>),
    Ret3(wt::TypedFunc<(i32, i32, i32), i32>),
    Void4(wt::TypedFunc<(i32, i32, i32, i32), ()>),
    Ret4(wt::TypedFunc<(i32, i32, i32, i32), i32>),
    Void5(wt::TypedFunc<(i32, i32, i32, i32, i32), ()>),
    Ret5(wt::TypedFunc<(i32, i32, i32, i32, i32), i32>),
}

impl Export {
    fn new(func: wt::Func, store: impl wt::AsContext) -> Export {
        Typed::new(&func, &store).map_or(Export::Untyped(func), Export::Typed)
    }

    fn call(&self, mut store: impl wt::AsContextMut, args: &[Val]) -> Result<Option<Val>, Trap> {
        match self {
            Export::Typed(t) => t.call(store, args).map_err(|e| to_trap(e, None)),
            Export::Untyped(f) => call_func(f, &mut store, args),
        }
    }
}

impl Typed {
    fn new(func: &wt::Func, store: &impl wt::AsContext) -> Option<Typed> {
        let ty = func.ty(store);
        if !ty.params().all(|t| matches!(t, wt::ValType::I32)) {
            return None;
        }
        let ret = match ty.results().collect::<Vec<_>>().as_slice() {
            [] => false,
            [wt::ValType::I32] => true,
            _ => return None,
        };
        let t = match (ty.params().len(), ret) {
            (0, false) => Typed::Void0(func.typed(store).ok()?),
            (0, true) => Typed::Ret0(func.typed(store).ok()?),
            (1, false) => Typed::Void1(func.typed(store).ok()?),
            (1, true) => Typed::Ret1(func.typed(store).ok()?),
            (2, false) => Typed::Void2(func.typed(store).ok()?),
            (2, true) => Typed::Ret2(func.typed(store).ok()?),
            (3, false) => Typed::Void3(func.typed(store).ok()?),
            (3, true) => Typed::Ret3(func.typed(store).ok()?),
            (4, false) => Typed::Void4(func.typed(store).ok()?),
            (4, true) => Typed::Ret4(func.typed(store).ok()?),
            (5, false) => Typed::Void5(func.typed(store).ok()?),
            (5, true) => Typed::Ret5(func.typed(store).ok()?),
            _ => return None,
        };
        Some(t)
    }

    fn arity(&self) -> usize {
        match self {
            Typed::Void0(_) | Typed::Ret0(_) => 0,
            Typed::Void1(_) | Typed::Ret1(_) => 1,
            Typed::Void2(_) | Typed::Ret2(_) => 2,
            Typed::Void3(_) | Typed::Ret3(_) => 3,
            Typed::Void4(_) | Typed::Ret4(_) => 4,
            Typed::Void5(_) | Typed::Ret5(_) => 5,
        }
    }

    fn call(&self, mut store: impl wt::AsContextMut, args: &[Val]) -> wt::Result<Option<Val>> {
        if args.len() != self.arity() {
            return Err(wt::Error::new(Trap::new(format!(
                "export expects {} arguments, the host passed {}",
                self.arity(),
                args.len()
            ))));
        }
        let a = |i: usize| args[i].as_i32();
        let ret = |r: i32| Some(Val::I32(r));
        let s = &mut store;
        Ok(match self {
            Typed::Void0(f) => f.call(s, ()).map(|()| None)?,
            Typed::Ret0(f) => f.call(s, ()).map(ret)?,
            Typed::Void1(f) => f.call(s, (a(0),)).map(|()| None)?,
            Typed::Ret1(f) => f.call(s, (a(0),)).map(ret)?,
            Typed::Void2(f) => f.call(s, (a(0), a(1))).map(|()| None)?,
            Typed::Ret2(f) => f.call(s, (a(0), a(1))).map(ret)?,
            Typed::Void3(f) => f.call(s, (a(0), a(1), a(2))).map(|()| None)?,
            Typed::Ret3(f) => f.call(s, (a(0), a(1), a(2))).map(ret)?,
            Typed::Void4(f) => f.call(s, (a(0), a(1), a(2), a(3))).map(|()| None)?,
            Typed::Ret4(f) => f.call(s, (a(0), a(1), a(2), a(3))).map(ret)?,
            Typed::Void5(f) => f.call(s, (a(0), a(1), a(2), a(3), a(4))).map(|()| None)?,
            Typed::Ret5(f) => f.call(s, (a(0), a(1), a(2), a(3), a(4))).map(ret)?,
        })
    }
}

/// Wasmtime's store limits, noting when a `memory.grow` was refused.
struct MemoryCap {
    limits: wt::StoreLimits,
    refused: bool,
}

impl wt::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wt::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        self.refused |= !allowed;
        Ok(allowed)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wt::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
}

impl<T: Send + 'static> Engine<T> for WasmtimeEngine {
    fn name(&self) -> &'static str {
        "wasmtime"
    }

    fn compile(&self, wasm: &[u8]) -> Result<Arc<dyn Module<T>>, RuntimeError> {
        let module = wt::Module::new(&self.engine, wasm).map_err(|e| RuntimeError::Compile(format!("{e:#}")))?;
        Ok(self.wrap(module))
    }

    fn compiled_code_fingerprint(&self) -> Option<String> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        Some(format!("wasmtime-{:016x}", h.finish()))
    }

    fn deserialize(&self, compiled: &[u8]) -> Result<Arc<dyn Module<T>>, RuntimeError> {
        // SAFETY: wasmtime runs these bytes as native code. The caller passes
        // only bytes this host stored itself from `serialize` with an engine
        // of the same fingerprint: the compiled-module cache reads them only
        // from a folder and a file no one but this user or root can write,
        // without following links, and checks their MAC under the folder's
        // secret key (it refuses anything else), for plugins whose operator
        // set `allow_precompiled`. Wasmtime itself refuses bytes made by
        // another version or settings.
        let module = unsafe { wt::Module::deserialize(&self.engine, compiled) }
            .map_err(|e| RuntimeError::Compile(format!("{e:#}")))?;
        Ok(self.wrap(module))
    }
}

impl WasmtimeEngine {
    fn wrap<T: Send + 'static>(&self, module: wt::Module) -> Arc<dyn Module<T>> {
        let imports = module
            .imports()
            .map(|i| ImportDesc {
                module: i.module().to_string(),
                name: i.name().to_string(),
                ty: match i.ty() {
                    wt::ExternType::Func(f) => Some(func_type(&f)),
                    _ => None,
                },
            })
            .collect();
        let exports = module
            .exports()
            .map(|e| ExportDesc {
                name: e.name().to_string(),
                ty: match e.ty() {
                    wt::ExternType::Func(f) => Some(func_type(&f)),
                    _ => None,
                },
            })
            .collect();
        Arc::new(WasmtimeModule { engine: self.engine.clone(), module, imports, exports, pre: OnceLock::new() })
    }
}

fn val_type(t: &wt::ValType) -> ValType {
    match t {
        wt::ValType::I32 => ValType::I32,
        wt::ValType::I64 => ValType::I64,
        wt::ValType::F32 => ValType::F32,
        wt::ValType::F64 => ValType::F64,
        _ => ValType::Other,
    }
}

fn func_type(f: &wt::FuncType) -> FuncType {
    FuncType {
        params: f.params().map(|t| val_type(&t)).collect(),
        results: f.results().map(|t| val_type(&t)).collect(),
    }
}

fn wt_val_type(t: ValType) -> wt::ValType {
    match t {
        ValType::I32 => wt::ValType::I32,
        ValType::I64 => wt::ValType::I64,
        ValType::F32 => wt::ValType::F32,
        ValType::F64 => wt::ValType::F64,
        // Host functions never declare other types; i32 keeps this total.
        ValType::Other => wt::ValType::I32,
    }
}

struct WasmtimeModule<T: 'static> {
    engine: wt::Engine,
    module: wt::Module,
    imports: Vec<ImportDesc>,
    exports: Vec<ExportDesc>,
    /// The linked module, built on first instantiation and reused by every
    /// later instance (on every thread) so linking costs nothing per instance.
    pre: OnceLock<Result<wt::InstancePre<StoreData<T>>, String>>,
}

impl<T: Send + 'static> WasmtimeModule<T> {
    fn link(&self, imports: &[LinkedImport<T>]) -> Result<wt::InstancePre<StoreData<T>>, String> {
        let mut linker: wt::Linker<StoreData<T>> = wt::Linker::new(&self.engine);
        for host in imports {
            if let HostFn::Typed(t) = host.func {
                if t.matches(&host.ty) {
                    link_typed(&mut linker, &host.module, &host.name, t)
                        .map_err(|e| format!("cannot link {}.{}: {e}", host.module, host.name))?;
                    continue;
                }
            }
            let ty = wt::FuncType::new(
                &self.engine,
                host.ty.params.iter().map(|t| wt_val_type(*t)),
                host.ty.results.iter().map(|t| wt_val_type(*t)),
            );
            let (func, params, results) = (host.func, host.ty.params.clone(), host.ty.results.clone());
            // SAFETY: `call_host` reads exactly the parameters of `ty` (from
            // the same `params` list, by their types) and writes exactly its
            // results (`results`), each with its declared type, which is what
            // `func_new_unchecked` requires of the closure.
            unsafe {
                linker.func_new_unchecked(&host.module, &host.name, ty, move |caller, values| {
                    call_host(func, &params, &results, caller, values)
                })
            }
            .map_err(|e| format!("cannot link {}.{}: {e}", host.module, host.name))?;
        }
        linker.instantiate_pre(&self.module).map_err(|e| format!("{e:#}"))
    }
}

/// A typed host function as a Wasmtime typed closure: no value lists, no type checks per call.
fn link_typed<T: Send + 'static>(
    linker: &mut wt::Linker<StoreData<T>>,
    module: &str,
    name: &str,
    t: super::TypedFn<T>,
) -> wt::Result<()> {
    type C<'a, T> = wt::Caller<'a, StoreData<T>>;
    match t {
        super::TypedFn::Unit(f) => linker.func_wrap(module, name, move |mut c: C<'_, T>| f(&mut c.data_mut().host)),
        super::TypedFn::ToI64(f) => linker.func_wrap(module, name, move |mut c: C<'_, T>| f(&mut c.data_mut().host)),
        super::TypedFn::I64(f) => {
            linker.func_wrap(module, name, move |mut c: C<'_, T>, a: i64| f(&mut c.data_mut().host, a))
        }
        super::TypedFn::I64ToI64(f) => {
            linker.func_wrap(module, name, move |mut c: C<'_, T>, a: i64| f(&mut c.data_mut().host, a))
        }
        super::TypedFn::I64ToI32(f) => {
            linker.func_wrap(module, name, move |mut c: C<'_, T>, a: i64| f(&mut c.data_mut().host, a))
        }
        super::TypedFn::I64I64(f) => {
            linker.func_wrap(module, name, move |mut c: C<'_, T>, a: i64, b: i64| f(&mut c.data_mut().host, a, b))
        }
        super::TypedFn::I64I32(f) => {
            linker.func_wrap(module, name, move |mut c: C<'_, T>, a: i64, b: i32| f(&mut c.data_mut().host, a, b))
        }
    }
    .map(drop)
}

/// One hostcall, through Wasmtime's raw (unchecked) calling convention: it
/// runs for every hostcall of every request, and skips the typed `Val`
/// vector `func_new` builds and checks per call (about a tenth of the
/// server's CPU time in a header-heavy profile).
///
/// # Safety
/// `values` holds the parameters described by `params`, and has room for
/// the results described by `results` (Wasmtime's guarantee for a function
/// linked with those types).
unsafe fn call_host<T: 'static>(
    func: HostFn<T>,
    params: &[ValType],
    results: &[ValType],
    caller: wt::Caller<'_, StoreData<T>>,
    values: &mut [std::mem::MaybeUninit<wt::ValRaw>],
) -> wt::Result<()> {
    // Hostcalls take at most a dozen arguments: converted on the stack.
    let mut buf = [Val::I32(0); 16];
    if params.len() > buf.len() {
        return Err(wt::Error::new(Trap::new(format!("a hostcall was given {} arguments", params.len()))));
    }
    for ((slot, ty), raw) in buf.iter_mut().zip(params).zip(values.iter()) {
        // SAFETY: Wasmtime initialised the parameter slots (see above).
        let raw = unsafe { raw.assume_init() };
        *slot = match ty {
            ValType::I64 => Val::I64(raw.get_i64()),
            ValType::I32 => Val::I32(raw.get_i32()),
            // Never declared by our imports (see `wt_val_type`).
            _ => Val::I32(0),
        };
    }
    let mut c = WasmtimeCaller { caller, memory: None };
    let out = func.call(&mut c, &buf[..params.len()]).map_err(wt::Error::new)?;
    // Every declared result slot is written, each by its declared type, so a
    // result of the wrong width, a missing one, or the extra results of an
    // import typed `(result i32 i32)` (a WASI name we answer generically)
    // never reach the guest uninitialised or mistyped. Only the first carries
    // the hostcall's value.
    let (i32v, i64v) = match out {
        Some(Val::I32(x)) => (x, i64::from(x)),
        Some(Val::I64(x)) => (x as i32, x),
        None => (0, 0),
    };
    for (i, (ty, slot)) in results.iter().zip(values.iter_mut()).enumerate() {
        let (a, b) = if i == 0 { (i32v, i64v) } else { (0, 0) };
        *slot = std::mem::MaybeUninit::new(match ty {
            ValType::I64 => wt::ValRaw::i64(b),
            ValType::F32 => wt::ValRaw::f32(0),
            ValType::F64 => wt::ValRaw::f64(0),
            ValType::I32 | ValType::Other => wt::ValRaw::i32(a),
        });
    }
    Ok(())
}

struct WasmtimeCaller<'a, T: 'static> {
    caller: wt::Caller<'a, StoreData<T>>,
    /// The guest memory's base and length, looked up once per hostcall (a
    /// hostcall reads and writes it several times; the lookup goes through
    /// the instance). Only guest code can grow the memory, and so move it:
    /// `call_export` forgets it.
    memory: Option<(*mut u8, usize)>,
}

impl<T: 'static> Caller<T> for WasmtimeCaller<'_, T> {
    fn memory_and_state(&mut self) -> (&mut [u8], &mut T) {
        if let Some((base, len)) = self.memory {
            // SAFETY: `base`/`len` describe the guest memory as it was when
            // this hostcall looked it up, and no guest code (the only thing
            // that can grow it) has run since (see `call_export`). The memory
            // is not part of the store data, so the two borrows are disjoint,
            // and both are tied to `&mut self`.
            return (unsafe { std::slice::from_raw_parts_mut(base, len) }, &mut self.caller.data_mut().host);
        }
        let memory = match self.caller.data().memory {
            Some(m) => Some(m),
            None => self.caller.get_export("memory").and_then(|e| e.into_memory()),
        };
        match memory {
            Some(mem) => {
                let (bytes, data) = mem.data_and_store_mut(&mut self.caller);
                self.memory = Some((bytes.as_mut_ptr(), bytes.len()));
                (bytes, &mut data.host)
            }
            _ => (&mut [], &mut self.caller.data_mut().host),
        }
    }

    fn call_export(&mut self, name: &str, args: &[Val]) -> Result<Option<Val>, Trap> {
        let data = self.caller.data_mut();
        let cached = match data.allocator.take() {
            Some((n, e)) if *n == *name => Some((n, e)),
            other => {
                data.allocator = other;
                None
            }
        };
        let fast = match cached {
            Some(c) => Some(c),
            // Taken by an outer call of the same export (re-entered from a hostcall it made), or
            // holding another name: the general path.
            None if data.allocator.is_some() || data.exports.contains_key(name) => None,
            None => match self.caller.get_export(name).and_then(|e| e.into_func()) {
                Some(f) => Some((name.into(), Export::new(f, &self.caller))),
                None => None,
            },
        };
        if let Some((n, export)) = fast {
            // The guest may grow (and so move) its memory.
            self.memory = None;
            let r = export.call(&mut self.caller, args);
            self.caller.data_mut().allocator = Some((n, export));
            return r;
        }
        self.call_export_by_map(name, args)
    }

    fn state(&mut self) -> &mut T {
        &mut self.caller.data_mut().host
    }
}

impl<T: 'static> WasmtimeCaller<'_, T> {
    fn call_export_by_map(&mut self, name: &str, args: &[Val]) -> Result<Option<Val>, Trap> {
        let export = match self.caller.data().exports.get(name) {
            Some(e) => e.clone(),
            None => {
                let e = self
                    .caller
                    .get_export(name)
                    .and_then(|e| e.into_func())
                    .map(|f| Arc::new(Export::new(f, &self.caller)));
                self.caller.data_mut().exports.insert(name.into(), e.clone());
                e
            }
        };
        let Some(export) = export else {
            return Err(Trap::new(format!("the module has no function export {name:?}")));
        };
        // The guest may grow (and so move) its memory.
        self.memory = None;
        export.call(&mut self.caller, args)
    }
}

fn call_func(func: &wt::Func, mut store: impl wt::AsContextMut, args: &[Val]) -> Result<Option<Val>, Trap> {
    let ty = func.ty(&store);
    if ty.params().len() != args.len() {
        return Err(Trap::new(format!(
            "export expects {} arguments, the host passed {}",
            ty.params().len(),
            args.len()
        )));
    }
    let params: Vec<wt::Val> = args
        .iter()
        .zip(ty.params())
        .map(|(a, t)| match t {
            wt::ValType::I64 => wt::Val::I64(a.as_i64()),
            _ => wt::Val::I32(a.as_i32()),
        })
        .collect();
    let mut results = vec![wt::Val::I32(0); ty.results().len()];
    match func.call(&mut store, &params, &mut results) {
        Ok(()) => Ok(results.first().and_then(|r| match r {
            wt::Val::I32(x) => Some(Val::I32(*x)),
            wt::Val::I64(x) => Some(Val::I64(*x)),
            _ => None,
        })),
        Err(e) => Err(to_trap(e, None)),
    }
}

/// A Wasmtime error as our trap; `timeout` is the time limit the call ran under.
fn to_trap(e: wt::Error, timeout: Option<Duration>) -> Trap {
    let backtrace = e.downcast_ref::<wt::WasmBacktrace>().map(|bt| format!("{bt}"));
    // A hostcall that asked to abort the guest (proc_exit, a host bug) keeps its message.
    if let Some(t) = e.downcast_ref::<Trap>() {
        return Trap { message: t.message.clone(), backtrace: backtrace.or_else(|| t.backtrace.clone()), kind: t.kind };
    }
    match e.downcast_ref::<wt::Trap>() {
        Some(wt::Trap::Interrupt) => Trap {
            message: format!(
                "time limit exceeded: the callback ran longer than {} ms",
                timeout.unwrap_or_default().as_millis()
            ),
            backtrace,
            kind: TrapKind::Timeout,
        },
        Some(t) => Trap { message: format!("{t}"), backtrace, kind: TrapKind::Trap },
        None => Trap { message: format!("{e}"), backtrace, kind: TrapKind::Trap },
    }
}

impl<T: Send + 'static> Module<T> for WasmtimeModule<T> {
    fn imports(&self) -> &[ImportDesc] {
        &self.imports
    }

    fn serialize(&self) -> Option<Vec<u8>> {
        self.module.serialize().ok()
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
        let pre =
            self.pre.get_or_init(|| self.link(imports)).as_ref().map_err(|e| RuntimeError::Instantiate(e.clone()))?;
        let mut builder = wt::StoreLimitsBuilder::new();
        if let Some(bytes) = limits.max_memory_bytes {
            // Whole pages, at least one, as WAMR counts them.
            let page = 64 * 1024;
            let capped = (bytes / page).max(1).saturating_mul(page);
            builder = builder.memory_size(usize::try_from(capped).unwrap_or(usize::MAX));
        }
        let data = StoreData {
            host: state,
            limits: MemoryCap { limits: builder.build(), refused: false },
            memory: None,
            exports: FastMap::default(),
            allocator: None,
        };
        let mut store = wt::Store::new(&self.engine, data);
        store.limiter(|d| &mut d.limits);
        store.set_epoch_deadline(NO_DEADLINE);
        if limits.callback_timeout.is_some() {
            start_epoch_ticker(&self.engine);
        }
        let instance = pre.instantiate(&mut store).map_err(|e| RuntimeError::Instantiate(format!("{e:#}")))?;
        let memory = instance.get_memory(&mut store, "memory");
        store.data_mut().memory = memory;
        Ok(Box::new(WasmtimeInstance {
            store,
            instance,
            timeout: limits.callback_timeout,
            deadline_ticks: limits.callback_timeout.map(ticks),
            resolved: Vec::new(),
        }))
    }
}

struct WasmtimeInstance<T: 'static> {
    store: wt::Store<StoreData<T>>,
    instance: wt::Instance,
    timeout: Option<Duration>,
    /// `timeout` in epoch ticks, counted once (a 128-bit division) instead of per call.
    deadline_ticks: Option<u64>,
    /// The exports found by `resolve`, typed once; an `ExportIndex` is a
    /// position here, so a call by index costs no lookup and no `Arc` clone.
    resolved: Vec<(Box<str>, Export)>,
}

impl<T: Send + 'static> Instance<T> for WasmtimeInstance<T> {
    fn take_memory_refusal(&mut self) -> bool {
        std::mem::take(&mut self.store.data_mut().limits.refused)
    }

    fn resolve(&mut self, name: &str) -> Option<ExportIndex> {
        if let Some(i) = self.resolved.iter().position(|(n, _)| &**n == name) {
            return Some(ExportIndex(i as u32));
        }
        let func = self.instance.get_func(&mut self.store, name)?;
        let export = Export::new(func, &self.store);
        self.resolved.push((name.into(), export));
        Some(ExportIndex(self.resolved.len() as u32 - 1))
    }

    fn call_resolved(&mut self, export: ExportIndex, args: &[Val]) -> Result<Option<Val>, Trap> {
        let Some((_, export)) = self.resolved.get(export.0 as usize) else {
            return Err(Trap::new(format!("no resolved export with index {}", export.0)));
        };
        if let Some(ticks) = self.deadline_ticks {
            self.store.set_epoch_deadline(ticks);
        }
        let r = export.call(&mut self.store, args);
        if self.deadline_ticks.is_some() {
            self.store.set_epoch_deadline(NO_DEADLINE);
        }
        r.map_err(|t| match t.kind {
            TrapKind::Timeout => Trap {
                message: format!(
                    "time limit exceeded: the callback ran longer than {} ms",
                    self.timeout.unwrap_or_default().as_millis()
                ),
                ..t
            },
            _ => t,
        })
    }

    fn state(&mut self) -> &mut T {
        &mut self.store.data_mut().host
    }

    fn memory_size(&mut self) -> usize {
        self.store.data().memory.map_or(0, |m| m.data_size(&self.store))
    }

    fn memory(&mut self) -> &mut [u8] {
        match self.store.data().memory {
            Some(m) => m.data_mut(&mut self.store),
            None => &mut [],
        }
    }
}
