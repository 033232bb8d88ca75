//! One call into an Extism plugin, independent of the runtime: what Extism's `Plugin::call`
//! does around the export (extism/extism `runtime/src/plugin.rs`, `raw_call`), and what
//! Otoroshi's wasm4s does after it (the kernel is reset, so nothing of a call survives but the
//! variables).
//!
//! 1. once per instance, before the first call: `__wasm_call_ctors` or else `_initialize`
//!    ([`initialize`]);
//! 2. reset the kernel, copy the input into a block, `input_set` it;
//! 3. call the export, which takes nothing and returns an `i32` or nothing;
//! 4. an error set with `error_set` (non-empty) fails the call whatever the export returned; else a
//!    non-zero return code fails it; else the output set with `output_set` is the result;
//! 5. reset the kernel.

use super::state::ExtismState;
use crate::runtime::{ExportDesc, FuncType, Trap, Val, ValType};

/// What a runtime adapter provides for one call: the instance's state and its exports.
pub trait ExtismGuest {
    fn state(&mut self) -> &mut ExtismState;
    /// Calls an export with no arguments.
    fn call_export(&mut self, name: &str) -> Result<Option<Val>, Trap>;
}

/// Why a call gave no output.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("Function not found: {0}")]
    NoSuchFunction(String),
    #[error("Function {name} has type {ty}; expected () -> (i32) or () -> ()")]
    WrongSignature { name: String, ty: FuncType },
    /// The input does not fit in the kernel's memory (`memoryPages`).
    #[error("the input ({0} bytes) does not fit in the plugin's memory")]
    InputTooLarge(usize),
    /// The plugin trapped (or a host function ended the call); `error` is what it had set with
    /// `error_set` before, if anything.
    #[error("{}", match .error { Some(e) => format!("{e} ({trap})"), None => trap.to_string() })]
    Trap { trap: Trap, error: Option<String> },
    /// The plugin set an error with `error_set`.
    #[error("{message}")]
    Plugin { message: String, code: i32 },
    /// The export returned a non-zero code and set no error.
    #[error("Returned non-zero exit code: {0}")]
    ExitCode(i32),
}

impl CallError {
    /// The trap, when the call ended by one (the instance may be unusable: recycle it).
    #[must_use]
    pub fn trap(&self) -> Option<&Trap> {
        match self {
            CallError::Trap { trap, .. } => Some(trap),
            _ => None,
        }
    }
}

/// Whether `name` is exported with a signature Extism can call.
pub fn check_export(exports: &[ExportDesc], name: &str) -> Result<(), CallError> {
    let export = exports.iter().find(|e| e.name == name).ok_or_else(|| CallError::NoSuchFunction(name.to_owned()))?;
    match &export.ty {
        Some(ty) if ty.params.is_empty() && (ty.results.is_empty() || ty.results == [ValType::I32]) => Ok(()),
        Some(ty) => Err(CallError::WrongSignature { name: name.to_owned(), ty: ty.clone() }),
        None => Err(CallError::NoSuchFunction(name.to_owned())),
    }
}

/// The guest runtime's initializer to run once per instance, as Extism detects it:
/// `__wasm_call_ctors`, else `_initialize`, when exported as `() -> ()`.
#[must_use]
pub fn initializer(exports: &[ExportDesc]) -> Option<&'static str> {
    let unit = |name: &str| {
        exports
            .iter()
            .any(|e| e.name == name && e.ty.as_ref().is_some_and(|t| t.params.is_empty() && t.results.is_empty()))
    };
    ["__wasm_call_ctors", "_initialize"].into_iter().find(|n| unit(n))
}

/// Runs the initializer, if any.
pub fn initialize(guest: &mut dyn ExtismGuest, exports: &[ExportDesc]) -> Result<(), Trap> {
    match initializer(exports) {
        Some(name) => guest.call_export(name).map(|_| ()),
        None => Ok(()),
    }
}

/// Calls `function` with `input` and gives its output. The caller has checked the export with
/// [`check_export`].
pub fn call(guest: &mut dyn ExtismGuest, function: &str, input: &[u8]) -> Result<Vec<u8>, CallError> {
    let state = guest.state();
    state.kernel.reset();
    let handle = state.kernel.store(input).ok_or(CallError::InputTooLarge(input.len()))?;
    state.kernel.input_set(handle, input.len() as u64);

    let returned = guest.call_export(function);

    let state = guest.state();
    let error = state.kernel.error_message();
    let output = state.kernel.output().map(<[u8]>::to_vec).unwrap_or_default();
    state.kernel.reset();
    match returned {
        Err(trap) => Err(CallError::Trap { trap, error }),
        Ok(result) => {
            let code = result.map_or(0, Val::as_i32);
            match error {
                Some(message) => Err(CallError::Plugin { message, code }),
                None if code != 0 => Err(CallError::ExitCode(code)),
                None => Ok(output),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extism::testing::state;

    /// A guest whose export is a Rust closure over the state.
    struct Fake<F: FnMut(&mut ExtismState) -> Result<Option<Val>, Trap>> {
        state: ExtismState,
        export: F,
        calls: Vec<String>,
    }

    impl<F: FnMut(&mut ExtismState) -> Result<Option<Val>, Trap>> ExtismGuest for Fake<F> {
        fn state(&mut self) -> &mut ExtismState {
            &mut self.state
        }
        fn call_export(&mut self, name: &str) -> Result<Option<Val>, Trap> {
            self.calls.push(name.to_owned());
            (self.export)(&mut self.state)
        }
    }

    fn fake<F: FnMut(&mut ExtismState) -> Result<Option<Val>, Trap>>(export: F) -> Fake<F> {
        Fake { state: state(), export, calls: Vec::new() }
    }

    /// What a PDK's `output_string(input_string().to_uppercase())` does through the kernel.
    fn echo_upper(st: &mut ExtismState) -> Result<Option<Val>, Trap> {
        let k = &mut st.kernel;
        let input: Vec<u8> = (0..k.input_length()).map(|i| k.input_load_u8(i)).collect();
        let out = k.alloc(input.len() as u64);
        for (i, b) in input.iter().enumerate() {
            k.store_u8(out + i as u64, b.to_ascii_uppercase());
        }
        k.output_set(out, input.len() as u64);
        Ok(Some(Val::I32(0)))
    }

    #[test]
    fn the_output_is_what_the_plugin_set() {
        let mut g = fake(echo_upper);
        assert_eq!(call(&mut g, "run", b"hello").unwrap(), b"HELLO");
        // Nothing of the call stays in the kernel.
        assert_eq!(g.state.kernel.input_length(), 0);
        assert_eq!(g.state.kernel.length(77), 0);
    }

    #[test]
    fn an_export_that_returns_nothing_succeeds() {
        let mut g = fake(|_| Ok(None));
        assert_eq!(call(&mut g, "run", b"").unwrap(), b"");
    }

    #[test]
    fn a_non_zero_return_code_fails_the_call() {
        let mut g = fake(|_| Ok(Some(Val::I32(3))));
        assert!(matches!(call(&mut g, "run", b"x"), Err(CallError::ExitCode(3))));
    }

    #[test]
    fn an_error_set_by_the_plugin_fails_the_call_even_with_code_zero() {
        let mut g = fake(|st| {
            let h = st.kernel.store(b"bad input").unwrap();
            st.kernel.error_set(h);
            Ok(Some(Val::I32(0)))
        });
        let err = call(&mut g, "run", b"x").unwrap_err();
        assert_eq!(err.to_string(), "bad input");
    }

    #[test]
    fn a_trap_keeps_the_error_the_plugin_set_before() {
        let mut g = fake(|st| {
            let h = st.kernel.store(b"oops").unwrap();
            st.kernel.error_set(h);
            Err(Trap::new("unreachable"))
        });
        let err = call(&mut g, "run", b"x").unwrap_err();
        assert!(err.trap().is_some());
        assert_eq!(err.to_string(), "oops (unreachable)");
    }

    #[test]
    fn an_input_larger_than_the_plugin_memory_is_refused_before_the_call() {
        let mut g = fake(echo_upper);
        g.state.kernel = crate::extism::kernel::Kernel::new(1);
        assert!(matches!(call(&mut g, "run", &vec![0; 70_000]), Err(CallError::InputTooLarge(70_000))));
        assert!(g.calls.is_empty());
    }

    #[test]
    fn exports_are_checked_for_extisms_signatures() {
        let unit = FuncType { params: vec![], results: vec![] };
        let exports = vec![
            ExportDesc { name: "ok".into(), ty: Some(FuncType { params: vec![], results: vec![ValType::I32] }) },
            ExportDesc { name: "also_ok".into(), ty: Some(unit.clone()) },
            ExportDesc { name: "bad".into(), ty: Some(FuncType { params: vec![ValType::I32], results: vec![] }) },
            ExportDesc { name: "memory".into(), ty: None },
            ExportDesc { name: "_initialize".into(), ty: Some(unit) },
        ];
        assert!(check_export(&exports, "ok").is_ok());
        assert!(check_export(&exports, "also_ok").is_ok());
        assert!(matches!(check_export(&exports, "bad"), Err(CallError::WrongSignature { .. })));
        assert!(matches!(check_export(&exports, "memory"), Err(CallError::NoSuchFunction(_))));
        assert!(matches!(check_export(&exports, "nope"), Err(CallError::NoSuchFunction(_))));
        assert_eq!(initializer(&exports), Some("_initialize"));
    }
}
