//! The interface between the host core and a WebAssembly runtime.
//!
//! A runtime compiles bytes into a [`Module`], instantiates it with the host's
//! import table, and calls exports. Hostcalls are plain functions over a
//! [`Caller`], so every runtime links the same table from `abi::exports` and
//! `abi::wasi`; adding a runtime is one new file implementing these traits.

pub mod wamr;
pub mod wasmtime;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::vm::state::HostState;

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

/// What a hostcall sees of the guest that called it.
pub trait Caller {
    /// The guest's linear memory (empty if it exports none) and the instance's
    /// host state, borrowed together so a hostcall can copy between them.
    fn memory_and_state(&mut self) -> (&mut [u8], &mut HostState);

    /// Calls a guest export from inside a hostcall (the allocator).
    fn call_export(&mut self, name: &str, args: &[Val]) -> Result<Option<Val>, Trap>;

    fn state(&mut self) -> &mut HostState {
        self.memory_and_state().1
    }
}

/// A hostcall: decodes its arguments and returns its result, or traps the guest.
pub type HostFn = fn(&mut dyn Caller, &[Val]) -> Result<Option<Val>, Trap>;

/// An entry of the import table offered to modules.
#[derive(Clone, Copy)]
pub struct HostFunction {
    pub module: &'static str,
    pub name: &'static str,
    pub params: &'static [ValType],
    pub results: &'static [ValType],
    pub func: HostFn,
}

impl HostFunction {
    pub fn ty(&self) -> FuncType {
        FuncType { params: self.params.to_vec(), results: self.results.to_vec() }
    }
}

/// A module's function import resolved to a hostcall.
#[derive(Clone)]
pub struct LinkedImport {
    pub module: String,
    pub name: String,
    pub ty: FuncType,
    pub func: HostFn,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid WebAssembly module: {0}")]
    Compile(String),
    #[error("instantiation failed: {0}")]
    Instantiate(String),
}

/// A WebAssembly engine (one per runtime per process).
pub trait Engine: Send + Sync {
    /// The runtime's name as written in configs (`wasmtime`, `wamr`).
    fn name(&self) -> &'static str;
    fn compile(&self, wasm: &[u8]) -> Result<Arc<dyn Module>, RuntimeError>;

    /// What compiled code of this engine depends on (runtime version and
    /// settings), for the compiled-module cache; `None` when the runtime
    /// cannot store compiled code (an interpreter).
    fn compiled_code_fingerprint(&self) -> Option<String> {
        None
    }

    /// Loads a module from bytes `Module::serialize` made with an engine of
    /// the same fingerprint. Only called on bytes whose integrity the cache
    /// has checked; an error (another runtime version) makes the caller compile.
    fn deserialize(&self, _compiled: &[u8]) -> Result<Arc<dyn Module>, RuntimeError> {
        Err(RuntimeError::Compile(format!("{} cannot load compiled code", self.name())))
    }
}

/// A compiled module, shared by all instances in the process.
pub trait Module: Send + Sync {
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
    fn instantiate(&self, state: HostState, imports: &[LinkedImport], limits: &Limits) -> Result<Box<dyn Instance>, RuntimeError>;
}

/// A live instance: one linear memory, the host state, and callable exports.
pub trait Instance: Send {
    /// Calls an export by name. The core checks existence against `Module::exports`.
    fn call(&mut self, name: &str, args: &[Val]) -> Result<Option<Val>, Trap>;
    fn state(&mut self) -> &mut HostState;
    /// Current linear memory size in bytes.
    fn memory_size(&mut self) -> usize;
    /// Whether a `memory.grow` was refused by the memory limit since the last
    /// time this was asked (the core logs it once per instance).
    fn take_memory_refusal(&mut self) -> bool {
        false
    }
}
