//! The host-function table, as data: each entry names its import module and function, its
//! WebAssembly signature, the right it needs, and a plain function over ([`ExtismState`], args).
//!
//! No entry touches the plugin's linear memory (Extism's memory is the kernel's, kept by the
//! host), so a runtime adapter links an entry by calling `func(state, args)` with the instance's
//! state; see docs/otoroshi.md ("Linking") for the runtime-trait change this needs.

use super::authorizations::Requirement;
use super::state::ExtismState;
use crate::runtime::{FuncType, HostFn, Trap, TypedFn, Val, ValType};

/// A host function of the table.
#[derive(Clone, Copy)]
pub enum ExtismFn {
    /// Decodes its arguments; may end the call with a trap.
    Vals(fn(&mut ExtismState, &[Val]) -> Result<Option<Val>, Trap>),
    /// A kernel function: typed, never fails (the runtimes call it without value lists).
    Typed(TypedFn<ExtismState>),
}

/// Where an entry is imported from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImportModule {
    /// `extism:host/env`: Extism 1.x kernel and built-in functions.
    ExtismEnv,
    /// `env` with the `extism_` prefix: Extism before 1.0 (PDKs that predate the namespace).
    LegacyEnv,
    /// Otoroshi's functions: `env`, or `env/Otoroshi` for JavaScript plugins (`isJS: true`).
    Otoroshi,
    /// The imports an OPA policy needs (`env`, only with `opa: true`).
    Opa,
}

impl ImportModule {
    /// The module name a plugin imports the entry from.
    #[must_use]
    pub fn name(self, is_js: bool) -> &'static str {
        match self {
            ImportModule::ExtismEnv => "extism:host/env",
            ImportModule::LegacyEnv | ImportModule::Opa => "env",
            ImportModule::Otoroshi if is_js => "env/Otoroshi",
            ImportModule::Otoroshi => "env",
        }
    }
}

/// One entry of the table.
#[derive(Clone, Copy)]
pub struct HostImport {
    pub module: ImportModule,
    pub name: &'static str,
    pub params: &'static [ValType],
    pub results: &'static [ValType],
    pub func: ExtismFn,
    pub requires: Requirement,
}

impl HostImport {
    #[must_use]
    pub fn ty(&self) -> FuncType {
        FuncType { params: self.params.to_vec(), results: self.results.to_vec() }
    }

    /// The entry as a runtime links it.
    #[must_use]
    pub fn host_fn(&self) -> HostFn<ExtismState> {
        match self.func {
            ExtismFn::Vals(f) => HostFn::State(f),
            ExtismFn::Typed(t) => HostFn::Typed(t),
        }
    }

    /// Runs the entry on a list of arguments.
    ///
    /// # Errors
    /// The trap that ends the guest's call.
    pub fn call(&self, st: &mut ExtismState, args: &[Val]) -> Result<Option<Val>, Trap> {
        match self.func {
            ExtismFn::Vals(f) => f(st, args),
            ExtismFn::Typed(t) => t.call_vals(st, args),
        }
    }
}

impl std::fmt::Debug for HostImport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}.{} {}", self.module, self.name, self.ty())
    }
}

pub(crate) const I32: ValType = ValType::I32;
pub(crate) const I64: ValType = ValType::I64;

/// Argument `i` as the unsigned 64-bit value a handle or length is.
pub(crate) fn arg(args: &[Val], i: usize) -> u64 {
    args.get(i).map_or(0, |v| v.as_i64() as u64)
}

/// Argument `i` as a signed 32-bit value.
pub(crate) fn arg_i32(args: &[Val], i: usize) -> i32 {
    args.get(i).map_or(0, |v| v.as_i32())
}

pub(crate) type R = Result<Option<Val>, Trap>;

pub(crate) fn none() -> R {
    Ok(None)
}

pub(crate) fn i64_result(v: u64) -> R {
    Ok(Some(Val::I64(v as i64)))
}

pub(crate) fn i32_result(v: i32) -> R {
    Ok(Some(Val::I32(v)))
}
