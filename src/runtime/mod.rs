//! The interface between the host core and a WebAssembly runtime.
//!
//! A runtime compiles bytes into a [`Module`], instantiates it with a table of
//! host functions, and calls exports. The layer knows nothing of the host
//! above it: every trait is generic over the instance's host state `T`, as
//! Wasmtime's `Linker<T>`/`Caller<'_, T>` are (and as proxy-wasm-cpp-host's
//! runtime layer only forward-declares its context). The Proxy-Wasm host links
//! `hostcalls` with its `HostState`; the Extism host links its own table with
//! its own state on the same engines. Host functions are plain `fn` pointers
//! ([`HostFn`]), so a hostcall costs one indirect call, whatever `T` is.
//! Adding a runtime is one new file implementing these traits for every `T`.

pub mod wamr;
pub mod wasmtime;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Hands the memory a compiler freed back to the operating system. Cranelift
/// allocates tens of MiB while it compiles a module and frees them when done,
/// but glibc's allocator keeps freed pages resident; every server process (each
/// NGINX worker) would otherwise carry them for its whole life.
pub fn release_compiler_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it is
    // safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A WebAssembly value type, limited to what the Proxy-Wasm ABI uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValType {
    I32,
    I64,
    F32,
    F64,
    /// Anything else (references, vectors): never valid in our imports.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Val {
    I32(i32),
    I64(i64),
}

impl Val {
    pub fn ty(self) -> ValType {
        match self {
            Val::I32(_) => ValType::I32,
            Val::I64(_) => ValType::I64,
        }
    }
    /// The value as the guest's i32 (pointers, sizes, booleans and ids).
    pub fn as_i32(self) -> i32 {
        match self {
            Val::I32(v) => v,
            Val::I64(v) => v as i32,
        }
    }
    pub fn as_i64(self) -> i64 {
        match self {
            Val::I32(v) => v as i64,
            Val::I64(v) => v,
        }
    }
}

/// A function signature.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FuncType {
    pub params: Vec<ValType>,
    pub results: Vec<ValType>,
}

impl fmt::Display for FuncType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[ValType]| v.iter().map(|t| format!("{t:?}").to_lowercase()).collect::<Vec<_>>().join(", ");
        write!(f, "({}) -> ({})", list(&self.params), list(&self.results))
    }
}

/// One import a module asks for. `ty` is `None` for non-function imports.
#[derive(Debug, Clone)]
pub struct ImportDesc {
    pub module: String,
    pub name: String,
    pub ty: Option<FuncType>,
}

/// One export a module offers. `ty` is `None` for non-function exports.
#[derive(Debug, Clone)]
pub struct ExportDesc {
    pub name: String,
    pub ty: Option<FuncType>,
}

/// Why a call into the guest ended abnormally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TrapKind {
    /// A WebAssembly trap (unreachable, out-of-bounds access, ...) or a
    /// hostcall that aborted the guest.
    #[default]
    Trap,
    /// The call ran past its time limit ([`Limits::callback_timeout`]) and was stopped.
    Timeout,
}

/// A guest trap (or a host-requested abort such as `proc_exit`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Trap {
    pub message: String,
    /// Wasm frames, innermost first, with names from the name section when present.
    pub backtrace: Option<String>,
    pub kind: TrapKind,
}

impl Trap {
    pub fn new(message: impl Into<String>) -> Trap {
        Trap { message: message.into(), backtrace: None, kind: TrapKind::Trap }
    }
}

/// Resource limits of one instance (the plugin's `limits`, see the config docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Limits {
    /// The most linear memory the instance may have, in bytes (whole 64 KiB
    /// pages: rounded down, at least one page). Instantiation fails if the
    /// module's initial memory is larger; `memory.grow` past it returns -1.
    /// `None`: the module's own maximum (4 GiB at most).
    pub max_memory_bytes: Option<u64>,
    /// The longest one call from the host into the guest may run, hostcalls
    /// included; a call past it ends as a trap of kind [`TrapKind::Timeout`].
    pub callback_timeout: Option<Duration>,
}

/// What a host function sees of the guest that called it; `T` is the
/// instance's host state.
pub trait Caller<T> {
    /// The guest's linear memory (empty if it exports none) and the instance's
    /// host state, borrowed together so a hostcall can copy between them.
    fn memory_and_state(&mut self) -> (&mut [u8], &mut T);

    /// Calls a guest export from inside a hostcall (the allocator).
    fn call_export(&mut self, name: &str, args: &[Val]) -> Result<Option<Val>, Trap>;

    fn state(&mut self) -> &mut T {
        self.memory_and_state().1
    }
}

/// What a host function returns: its result (if it has one), or a trap.
pub type HostResult = Result<Option<Val>, Trap>;

/// A host function: decodes its arguments and returns its result, or traps the guest.
pub enum HostFn<T> {
    /// Needs the guest (its memory, or its exports): Proxy-Wasm hostcalls, WASI.
    Caller(fn(&mut dyn Caller<T>, &[Val]) -> HostResult),
    /// Needs only the host state (Extism's kernel and Otoroshi's functions,
    /// whose memory is the host's): the adapters skip looking up the memory.
    State(fn(&mut T, &[Val]) -> HostResult),
    /// Needs only the host state and cannot fail, with its signature in its
    /// type (Extism's kernel functions, called hundreds of times per request:
    /// a guest reads its input 8 bytes per call). The adapters call it without
    /// building argument and result lists (Wasmtime: a typed host function;
    /// WAMR: straight from its argument slots).
    Typed(TypedFn<T>),
}

/// A state-only host function that cannot fail, by signature (the i64s are
/// the guest's handles, offsets and lengths; the i32s bytes).
pub enum TypedFn<T> {
    /// `() -> ()`
    Unit(fn(&mut T)),
    /// `() -> i64`
    ToI64(fn(&mut T) -> i64),
    /// `(i64) -> ()`
    I64(fn(&mut T, i64)),
    /// `(i64) -> i64`
    I64ToI64(fn(&mut T, i64) -> i64),
    /// `(i64) -> i32`
    I64ToI32(fn(&mut T, i64) -> i32),
    /// `(i64, i64) -> ()`
    I64I64(fn(&mut T, i64, i64)),
    /// `(i64, i32) -> ()`
    I64I32(fn(&mut T, i64, i32)),
}

impl<T> Clone for TypedFn<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for TypedFn<T> {}

impl<T> TypedFn<T> {
    /// Its parameters, as an import declares them.
    #[must_use]
    pub fn params(self) -> &'static [ValType] {
        use ValType::{I32, I64};
        match self {
            TypedFn::Unit(_) | TypedFn::ToI64(_) => &[],
            TypedFn::I64(_) | TypedFn::I64ToI64(_) | TypedFn::I64ToI32(_) => &[I64],
            TypedFn::I64I64(_) => &[I64, I64],
            TypedFn::I64I32(_) => &[I64, I32],
        }
    }

    /// Its results, as an import declares them.
    #[must_use]
    pub fn results(self) -> &'static [ValType] {
        match self {
            TypedFn::Unit(_) | TypedFn::I64(_) | TypedFn::I64I64(_) | TypedFn::I64I32(_) => &[],
            TypedFn::ToI64(_) | TypedFn::I64ToI64(_) => &[ValType::I64],
            TypedFn::I64ToI32(_) => &[ValType::I32],
        }
    }

    /// Whether an import of type `ty` can be linked to it directly.
    #[must_use]
    pub fn matches(self, ty: &FuncType) -> bool {
        ty.params == self.params() && ty.results == self.results()
    }

    /// Runs it on arguments in 64-bit slots (an i32 in the low half, as WAMR
    /// and Wasmtime's raw values hold them); the result comes back the same way
    /// (`None`: it has none). `args` holds at least `params().len()` slots.
    #[inline]
    pub fn call_slots(self, state: &mut T, args: &[u64]) -> Option<u64> {
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        match self {
            TypedFn::Unit(f) => {
                f(state);
                None
            }
            TypedFn::ToI64(f) => Some(f(state) as u64),
            TypedFn::I64(f) => {
                f(state, a(0) as i64);
                None
            }
            TypedFn::I64ToI64(f) => Some(f(state, a(0) as i64) as u64),
            TypedFn::I64ToI32(f) => Some(u64::from(f(state, a(0) as i64) as u32)),
            TypedFn::I64I64(f) => {
                f(state, a(0) as i64, a(1) as i64);
                None
            }
            TypedFn::I64I32(f) => {
                f(state, a(0) as i64, a(1) as u32 as i32);
                None
            }
        }
    }

    /// Runs it on a list of arguments (the adapters' generic path).
    pub fn call_vals(self, state: &mut T, args: &[Val]) -> HostResult {
        let mut slots = [0u64; 2];
        for (slot, v) in slots.iter_mut().zip(args) {
            *slot = v.as_i64() as u64;
        }
        let r = self.call_slots(state, &slots);
        Ok(r.map(|r| match self.results() {
            [ValType::I32] => Val::I32(r as u32 as i32),
            _ => Val::I64(r as i64),
        }))
    }
}

// Not derived: a derive would require `T: Clone`; function pointers are always `Copy`.
impl<T> Clone for HostFn<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for HostFn<T> {}

impl<T> HostFn<T> {
    /// Runs the function for `caller`. Generic over the adapter's concrete
    /// caller type, so the `State` case reads the state without a virtual call.
    #[inline]
    pub fn call<C: Caller<T>>(self, caller: &mut C, args: &[Val]) -> HostResult {
        match self {
            HostFn::Caller(f) => f(caller, args),
            HostFn::State(f) => f(caller.state(), args),
            HostFn::Typed(f) => f.call_vals(caller.state(), args),
        }
    }
}

/// An entry of the import table offered to modules.
pub struct HostFunction<T> {
    pub module: &'static str,
    pub name: &'static str,
    pub params: &'static [ValType],
    pub results: &'static [ValType],
    pub func: HostFn<T>,
}

impl<T> Clone for HostFunction<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for HostFunction<T> {}

impl<T> HostFunction<T> {
    pub fn ty(&self) -> FuncType {
        FuncType { params: self.params.to_vec(), results: self.results.to_vec() }
    }
}

/// A module's function import resolved to a host function.
pub struct LinkedImport<T> {
    pub module: String,
    pub name: String,
    pub ty: FuncType,
    pub func: HostFn<T>,
}

impl<T> Clone for LinkedImport<T> {
    fn clone(&self) -> Self {
        LinkedImport { module: self.module.clone(), name: self.name.clone(), ty: self.ty.clone(), func: self.func }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid WebAssembly module: {0}")]
    Compile(String),
    #[error("instantiation failed: {0}")]
    Instantiate(String),
}

/// A WebAssembly engine (one per runtime per process), compiling modules whose
/// instances hold a host state of type `T`. The concrete engines implement it
/// for every `T`, so one engine serves the Proxy-Wasm host and the Extism host
/// (`Arc<WasmtimeEngine>` coerces to `Arc<dyn Engine<HostState>>` and to
/// `Arc<dyn Engine<ExtismState>>`).
pub trait Engine<T>: Send + Sync {
    /// The runtime's name as written in configs (`wasmtime`, `wamr`).
    fn name(&self) -> &'static str;
    fn compile(&self, wasm: &[u8]) -> Result<Arc<dyn Module<T>>, RuntimeError>;

    /// What compiled code of this engine depends on (runtime version and
    /// settings), for the compiled-module cache; `None` when the runtime
    /// cannot store compiled code (an interpreter).
    fn compiled_code_fingerprint(&self) -> Option<String> {
        None
    }

    /// Loads a module from bytes `Module::serialize` made with an engine of
    /// the same fingerprint. Only called on bytes whose integrity the cache
    /// has checked; an error (another runtime version) makes the caller compile.
    fn deserialize(&self, _compiled: &[u8]) -> Result<Arc<dyn Module<T>>, RuntimeError> {
        Err(RuntimeError::Compile(format!("{} cannot load compiled code", self.name())))
    }
}

/// A compiled module, shared by all instances in the process.
pub trait Module<T>: Send + Sync {
    fn imports(&self) -> &[ImportDesc];
    fn exports(&self) -> &[ExportDesc];
    /// The compiled code, for the compiled-module cache (`None`: not supported).
    fn serialize(&self) -> Option<Vec<u8>> {
        None
    }
    /// Instantiates with `state` as the host state. `imports` resolves every
    /// function import of the module (the core built it from `imports()` and
    /// has refused modules it could not resolve). The runtime may link once and
    /// reuse the result: a module is always given the same resolution.
    /// `limits` bound this instance's memory and the duration of each call.
    fn instantiate(
        &self,
        state: T,
        imports: &[LinkedImport<T>],
        limits: &Limits,
    ) -> Result<Box<dyn Instance<T>>, RuntimeError>;
}

/// A function export of one instance, found once by [`Instance::resolve`]:
/// calling it through [`Instance::call_resolved`] skips the lookup by name
/// (callbacks run several times per request). Only valid for the instance
/// that returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportIndex(pub u32);

/// A live instance: one linear memory, the host state, and callable exports.
pub trait Instance<T>: Send {
    /// Calls an export by name. The core checks existence against `Module::exports`.
    fn call(&mut self, name: &str, args: &[Val]) -> Result<Option<Val>, Trap> {
        match self.resolve(name) {
            Some(export) => self.call_resolved(export, args),
            None => Err(Trap::new(format!("the module has no function export {name:?}"))),
        }
    }
    /// Finds a function export once (`None`: the module has none of that
    /// name), ready to be called (Wasmtime: its typed function).
    fn resolve(&mut self, name: &str) -> Option<ExportIndex>;
    /// Calls an export found by [`Instance::resolve`] on this instance.
    fn call_resolved(&mut self, export: ExportIndex, args: &[Val]) -> Result<Option<Val>, Trap>;
    fn state(&mut self) -> &mut T;
    /// Current linear memory size in bytes.
    fn memory_size(&mut self) -> usize;
    /// The linear memory (empty if the module has none), between calls: for hosts whose guest
    /// ABI passes data through memory without hostcalls (OPA policies' `opa_eval`).
    fn memory(&mut self) -> &mut [u8];
    /// Whether a `memory.grow` was refused by the memory limit since the last
    /// time this was asked (the core logs it once per instance).
    fn take_memory_refusal(&mut self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    //! The runtime layer carries any host state: a tiny table linked with two
    //! states that are not the Proxy-Wasm host's, on both runtimes (as the
    //! Extism host links its own table with its own state).

    use super::wamr::WamrEngine;
    use super::wasmtime::WasmtimeEngine;
    use super::*;

    /// A state that only counts calls.
    #[derive(Default)]
    struct Counter {
        calls: u32,
        last: i64,
    }

    /// Another one, linked to the same import names on the same engines.
    #[derive(Default)]
    struct Doubler {
        calls: u32,
    }

    /// Imports `test.add` (state only) and `test.peek` (memory and state);
    /// `run(p)` calls `add(41)` then returns `peek(p)`.
    const WAT: &str = r#"(module
        (import "test" "add" (func $add (param i64) (result i64)))
        (import "test" "peek" (func $peek (param i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 8) "\2a")
        (func (export "run") (param i32) (result i32)
            (drop (call $add (i64.const 41)))
            (call $peek (local.get 0))))"#;

    fn table<T: 'static>(add: HostFn<T>, peek: HostFn<T>) -> Vec<LinkedImport<T>> {
        let import = |name: &str, params: Vec<ValType>, results: Vec<ValType>, func| LinkedImport {
            module: "test".into(),
            name: name.into(),
            ty: FuncType { params, results },
            func,
        };
        vec![
            import("add", vec![ValType::I64], vec![ValType::I64], add),
            import("peek", vec![ValType::I32], vec![ValType::I32], peek),
        ]
    }

    fn counter_add(s: &mut Counter, a: &[Val]) -> HostResult {
        s.calls += 1;
        s.last = a[0].as_i64();
        Ok(Some(Val::I64(s.last + 1)))
    }

    /// The byte at the guest pointer plus the calls counted so far.
    fn counter_peek(c: &mut dyn Caller<Counter>, a: &[Val]) -> HostResult {
        let (memory, state) = c.memory_and_state();
        let byte = memory.get(a[0].as_i32() as usize).copied().ok_or_else(|| Trap::new("out of bounds"))?;
        state.calls += 1;
        Ok(Some(Val::I32(i32::from(byte) + state.calls as i32)))
    }

    fn doubler_add(s: &mut Doubler, a: &[Val]) -> HostResult {
        s.calls += 1;
        Ok(Some(Val::I64(a[0].as_i64() * 2)))
    }

    fn doubler_peek(c: &mut dyn Caller<Doubler>, a: &[Val]) -> HostResult {
        let (memory, state) = c.memory_and_state();
        state.calls += 1;
        Ok(Some(Val::I32(i32::from(memory[a[0].as_i32() as usize]) * 2)))
    }

    fn run_both(counter: Arc<dyn Engine<Counter>>, doubler: Arc<dyn Engine<Doubler>>) {
        let wasm = wat::parse_str(WAT).unwrap();
        // Both modules are compiled before either is instantiated, so that on
        // WAMR the second registration of the same names must not rebind the first.
        let m1 = counter.compile(&wasm).unwrap();
        let m2 = doubler.compile(&wasm).unwrap();
        let mut i1 = m1
            .instantiate(
                Counter::default(),
                &table(HostFn::State(counter_add), HostFn::Caller(counter_peek)),
                &Limits::default(),
            )
            .unwrap();
        let mut i2 = m2
            .instantiate(
                Doubler::default(),
                &table(HostFn::State(doubler_add), HostFn::Caller(doubler_peek)),
                &Limits::default(),
            )
            .unwrap();
        for _ in 0..2 {
            assert_eq!(i2.call("run", &[Val::I32(8)]).unwrap(), Some(Val::I32(84)), "{}", doubler.name());
        }
        assert_eq!(i1.call("run", &[Val::I32(8)]).unwrap(), Some(Val::I32(42 + 2)), "{}", counter.name());
        assert_eq!((i1.state().calls, i1.state().last), (2, 41));
        assert_eq!(i2.state().calls, 4);
        // A trap from a state-only function reaches the caller as such.
        fn failing(_: &mut Counter, _: &[Val]) -> HostResult {
            Err(Trap::new("refused by the host"))
        }
        let m3 = counter.compile(&wasm).unwrap();
        let mut i3 = m3
            .instantiate(
                Counter::default(),
                &table(HostFn::State(failing), HostFn::Caller(counter_peek)),
                &Limits::default(),
            )
            .unwrap();
        let trap = i3.call("run", &[Val::I32(8)]).unwrap_err();
        assert!(trap.message.contains("refused by the host"), "{}: {}", counter.name(), trap.message);
    }

    /// Typed functions of every shape, called from the guest; `run` returns a checksum of what
    /// they returned and the state records what they were given.
    const TYPED_WAT: &str = r#"(module
        (import "k" "unit" (func $unit))
        (import "k" "to_i64" (func $to_i64 (result i64)))
        (import "k" "i64" (func $i64 (param i64)))
        (import "k" "i64_to_i64" (func $i64_to_i64 (param i64) (result i64)))
        (import "k" "i64_to_i32" (func $i64_to_i32 (param i64) (result i32)))
        (import "k" "i64_i64" (func $i64_i64 (param i64 i64)))
        (import "k" "i64_i32" (func $i64_i32 (param i64 i32)))
        (import "k" "mistyped" (func $mistyped (param i32) (result i32)))
        (func (export "run") (result i64)
            (call $unit)
            (call $i64 (i64.const -5))
            (call $i64_i64 (i64.const 0x100000000) (i64.const -1))
            (call $i64_i32 (i64.const 7) (i32.const -2))
            (i64.add
                (i64.add (call $to_i64) (call $i64_to_i64 (i64.const 0x7fffffffffffffff)))
                (i64.add
                    (i64.extend_i32_s (call $i64_to_i32 (i64.const 3)))
                    (i64.extend_i32_s (call $mistyped (i32.const 4)))))))"#;

    #[derive(Default)]
    struct Seen(Vec<i64>);

    fn typed_table() -> Vec<LinkedImport<Seen>> {
        use ValType::{I32, I64};
        let import = |name: &str, params: Vec<ValType>, results: Vec<ValType>, t: TypedFn<Seen>| LinkedImport {
            module: "k".into(),
            name: name.into(),
            ty: FuncType { params, results },
            func: HostFn::Typed(t),
        };
        vec![
            import("unit", vec![], vec![], TypedFn::Unit(|s| s.0.push(1))),
            import("to_i64", vec![], vec![I64], TypedFn::ToI64(|s| s.0.len() as i64)),
            import("i64", vec![I64], vec![], TypedFn::I64(|s, a| s.0.push(a))),
            import("i64_to_i64", vec![I64], vec![I64], TypedFn::I64ToI64(|_, a| a.wrapping_add(1))),
            import("i64_to_i32", vec![I64], vec![I32], TypedFn::I64ToI32(|_, a| -(a as i32))),
            import(
                "i64_i64",
                vec![I64, I64],
                vec![],
                TypedFn::I64I64(|s, a, b| {
                    s.0.push(a);
                    s.0.push(b);
                }),
            ),
            import(
                "i64_i32",
                vec![I64, I32],
                vec![],
                TypedFn::I64I32(|s, a, b| {
                    s.0.push(a);
                    s.0.push(i64::from(b));
                }),
            ),
            // Linked under a type it does not have: the adapters take their generic path.
            import("mistyped", vec![I32], vec![I32], TypedFn::I64ToI64(|_, a| a * 10)),
        ]
    }

    fn typed_functions_run_on(engine: Arc<dyn Engine<Seen>>) {
        let module = engine.compile(&wat::parse_str(TYPED_WAT).unwrap()).unwrap();
        let mut instance = module.instantiate(Seen::default(), &typed_table(), &Limits::default()).unwrap();
        // to_i64 sees 6 recorded values; i64::MAX + 1 wraps; -(3); the mistyped 4 * 10.
        let expected = 6i64.wrapping_add(i64::MIN).wrapping_add(-3).wrapping_add(40);
        assert_eq!(instance.call("run", &[]).unwrap(), Some(Val::I64(expected)), "{}", engine.name());
        assert_eq!(instance.state().0, vec![1, -5, 1 << 32, -1, 7, -2], "{}", engine.name());
    }

    #[test]
    fn wasmtime_calls_typed_functions() {
        typed_functions_run_on(WasmtimeEngine::shared().unwrap());
    }

    #[test]
    fn wamr_calls_typed_functions() {
        typed_functions_run_on(WamrEngine::shared().unwrap());
    }

    #[test]
    fn wasmtime_links_any_host_state() {
        let engine = WasmtimeEngine::shared().unwrap();
        run_both(engine.clone(), engine);
    }

    #[test]
    fn wamr_links_any_host_state() {
        let engine = WamrEngine::shared().unwrap();
        run_both(engine.clone(), engine);
    }
}
