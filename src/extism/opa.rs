//! Open Policy Agent policies compiled to WebAssembly (`opa: true`), as Otoroshi's wasm4s runs
//! them (`impl/opa.scala`) over OPA's Wasm ABI (open-policy-agent/opa `docs/docs/wasm.md`):
//!
//! * the policy imports `env.memory` (the host creates it, `memoryPages` pages at most),
//!   `env.opa_abort`, `env.opa_println` and `env.opa_builtin0`..`4`;
//! * once per instance ([`initialize`]): `opa_malloc(2)`, copy `{}` there, `opa_json_parse` it
//!   (the `data` document), then `opa_heap_ptr_get` (the heap base);
//! * per request ([`evaluate`]): copy the context JSON to the heap base, call
//!   `opa_eval(0, entrypoint 0, data, input, input_len, heap base + input_len, 0 = JSON)`, read
//!   the NUL-terminated JSON text at the address it returns;
//! * [`decide`]: `[{"result": true}]` allows; anything else is a 403 "Forbidden access" (an empty
//!   answer counts as `[{"result": false}]`); a failed evaluation is a 400.
//!
//! Everything here goes through [`OpaGuest`], a linear memory and exports, so it runs the same on
//! every runtime; nothing uses the Extism kernel.

use crate::runtime::{FuncType, Trap, Val, ValType};

/// The functions an OPA policy imports from `env`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpaImport {
    /// `opa_abort(addr)`: the policy hit an internal error; `addr` is a NUL-terminated message.
    Abort,
    /// `opa_println(addr)`: a `print()` in the policy.
    Println,
    /// `opa_builtinN(builtin_id, ctx, args...) -> value_addr`.
    Builtin(u8),
}

impl OpaImport {
    #[must_use]
    pub fn from_name(name: &str) -> Option<OpaImport> {
        match name {
            "opa_abort" => Some(OpaImport::Abort),
            "opa_println" => Some(OpaImport::Println),
            _ => name
                .strip_prefix("opa_builtin")
                .and_then(|n| n.parse::<u8>().ok())
                .filter(|n| *n <= 4)
                .map(OpaImport::Builtin),
        }
    }

    /// The signature OPA's ABI gives it (all addresses are `i32`).
    #[must_use]
    pub fn ty(self) -> FuncType {
        match self {
            OpaImport::Abort | OpaImport::Println => FuncType { params: vec![ValType::I32], results: vec![] },
            OpaImport::Builtin(n) => {
                FuncType { params: vec![ValType::I32; 2 + n as usize], results: vec![ValType::I32] }
            }
        }
    }

    /// What the import does when the policy calls it: `Ok(text)` for a line to log
    /// (`opa_println`), `Err` ends the evaluation (`opa_abort`, and built-ins, which this host
    /// does not provide: OPA compiles most built-ins into the policy; the rest, like `http.send`,
    /// would need the host).
    pub fn invoke(self, memory: &[u8], args: &[Val]) -> Result<String, Trap> {
        let addr = args.first().map_or(0, |v| v.as_i32() as u32);
        match self {
            OpaImport::Abort => Err(Trap::new(format!(
                "OPA policy aborted: {}",
                c_string(memory, addr).unwrap_or_else(|| "(unreadable message)".into())
            ))),
            OpaImport::Println => Ok(c_string(memory, addr).unwrap_or_default()),
            OpaImport::Builtin(_) => Err(Trap::new(format!(
                "the OPA policy calls built-in function #{} (opa_builtin{}), which this host does not provide",
                addr,
                self.arity()
            ))),
        }
    }

    fn arity(self) -> u8 {
        match self {
            OpaImport::Builtin(n) => n,
            _ => 0,
        }
    }
}

/// The most bytes of a policy result read (wasm4s reads 65356; a result may be longer).
pub const MAX_RESULT_SIZE: usize = 16 << 20;

/// A NUL-terminated string at `addr`, at most [`MAX_RESULT_SIZE`] bytes; `None` when `addr` is
/// outside the memory.
#[must_use]
pub fn c_string(memory: &[u8], addr: u32) -> Option<String> {
    let rest = memory.get(addr as usize..)?;
    let rest = &rest[..rest.len().min(MAX_RESULT_SIZE)];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// What the runtime adapter provides: the policy's exports and its (imported) linear memory.
pub trait OpaGuest {
    fn call(&mut self, export: &str, args: &[Val]) -> Result<Option<Val>, Trap>;
    fn memory(&mut self) -> &mut [u8];
}

/// Why a policy could not be evaluated.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpaError {
    #[error("OPA: {0}")]
    Trap(#[from] Trap),
    #[error("OPA: {export} returned no address")]
    NoResult { export: &'static str },
    #[error("OPA: failed to parse json value")]
    Parse,
    #[error("OPA: {0} bytes do not fit in the policy's memory at address {1}")]
    NoRoom(usize, u32),
    #[error("OPA: the result address {0} is outside the policy's memory")]
    BadResult(u32),
}

/// What [`initialize`] leaves for [`evaluate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpaPolicy {
    pub data_addr: u32,
    pub base_heap_ptr: u32,
}

fn call_i32(guest: &mut dyn OpaGuest, export: &'static str, args: &[Val]) -> Result<u32, OpaError> {
    match guest.call(export, args)? {
        Some(v) => Ok(v.as_i32() as u32),
        None => Err(OpaError::NoResult { export }),
    }
}

fn write(guest: &mut dyn OpaGuest, addr: u32, bytes: &[u8]) -> Result<(), OpaError> {
    let memory = guest.memory();
    let start = addr as usize;
    let target = start
        .checked_add(bytes.len())
        .and_then(|end| memory.get_mut(start..end))
        .ok_or(OpaError::NoRoom(bytes.len(), addr))?;
    target.copy_from_slice(bytes);
    Ok(())
}

fn i32v(v: u32) -> Val {
    Val::I32(v as i32)
}

/// Loads the empty `data` document and notes the heap base (wasm4s `OPA.initialize`).
pub fn initialize(guest: &mut dyn OpaGuest) -> Result<OpaPolicy, OpaError> {
    let data = b"{}";
    let addr = call_i32(guest, "opa_malloc", &[i32v(data.len() as u32)])?;
    write(guest, addr, data)?;
    let data_addr = call_i32(guest, "opa_json_parse", &[i32v(addr), i32v(data.len() as u32)])?;
    if data_addr == 0 {
        return Err(OpaError::Parse);
    }
    let base_heap_ptr = call_i32(guest, "opa_heap_ptr_get", &[])?;
    Ok(OpaPolicy { data_addr, base_heap_ptr })
}

/// Evaluates entrypoint 0 with `input` (JSON text) and gives the result's JSON text.
pub fn evaluate(guest: &mut dyn OpaGuest, policy: OpaPolicy, input: &[u8]) -> Result<String, OpaError> {
    write(guest, policy.base_heap_ptr, input)?;
    let len = input.len() as u32;
    let heap = policy.base_heap_ptr.checked_add(len).ok_or(OpaError::NoRoom(input.len(), policy.base_heap_ptr))?;
    let args = [i32v(0), i32v(0), i32v(policy.data_addr), i32v(policy.base_heap_ptr), i32v(len), i32v(heap), i32v(0)];
    let result = call_i32(guest, "opa_eval", &args)?;
    c_string(guest.memory(), result).ok_or(OpaError::BadResult(result))
}

/// The access decision for a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpaVerdict {
    Allowed,
    /// Otoroshi's error response: status and message.
    Denied {
        status: u16,
        message: String,
    },
}

/// Otoroshi's `WasmOPA.execute`: the first result's `result` must be `true`.
#[must_use]
pub fn decide(result: &str) -> OpaVerdict {
    let text = if result.is_empty() { r#"[{"result":false}]"# } else { result };
    let parsed: Result<serde_json::Value, _> = serde_json::from_str(text);
    match parsed {
        Ok(v) => {
            let allowed = v
                .as_array()
                .and_then(|a| a.first())
                .and_then(|r| r.get("result"))
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false);
            if allowed {
                OpaVerdict::Allowed
            } else {
                OpaVerdict::Denied { status: 403, message: "Forbidden access".into() }
            }
        }
        Err(e) => OpaVerdict::Denied { status: 400, message: format!("the policy's result is not JSON: {e}") },
    }
}

/// The verdict of a failed evaluation (Otoroshi answers 400 with the error).
#[must_use]
pub fn failed(error: &OpaError) -> OpaVerdict {
    OpaVerdict::Denied { status: 400, message: error.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake policy: a bump allocator, `opa_json_parse` that remembers the text, and `opa_eval`
    /// that answers `{"result": <input has "allow": true>}` at the heap pointer.
    struct Policy {
        memory: Vec<u8>,
        heap: u32,
        calls: Vec<(String, Vec<i32>)>,
    }

    impl OpaGuest for Policy {
        fn call(&mut self, export: &str, args: &[Val]) -> Result<Option<Val>, Trap> {
            let a: Vec<i32> = args.iter().map(|v| v.as_i32()).collect();
            self.calls.push((export.to_owned(), a.clone()));
            match export {
                "opa_malloc" => {
                    let at = self.heap;
                    self.heap += a[0] as u32;
                    Ok(Some(Val::I32(at as i32)))
                }
                "opa_json_parse" => {
                    Ok(Some(Val::I32(if &self.memory[a[0] as usize..(a[0] + a[1]) as usize] == b"{}" {
                        4000
                    } else {
                        0
                    })))
                }
                "opa_heap_ptr_get" => Ok(Some(Val::I32(self.heap as i32))),
                "opa_eval" => {
                    let input =
                        std::str::from_utf8(&self.memory[a[3] as usize..(a[3] + a[4]) as usize]).unwrap().to_owned();
                    let allow = input.contains(r#""allow":true"#);
                    let out = format!(r#"[{{"result":{allow}}}]"#);
                    let at = a[5] as usize;
                    self.memory[at..at + out.len()].copy_from_slice(out.as_bytes());
                    self.memory[at + out.len()] = 0;
                    Ok(Some(Val::I32(at as i32)))
                }
                other => Err(Trap::new(format!("no export {other}"))),
            }
        }
        fn memory(&mut self) -> &mut [u8] {
            &mut self.memory
        }
    }

    fn policy() -> Policy {
        Policy { memory: vec![0; 65536], heap: 1024, calls: Vec::new() }
    }

    #[test]
    fn initialization_loads_empty_data_and_takes_the_heap_base() {
        let mut p = policy();
        let init = initialize(&mut p).unwrap();
        assert_eq!(init, OpaPolicy { data_addr: 4000, base_heap_ptr: 1026 });
        assert_eq!(p.calls[0], ("opa_malloc".to_owned(), vec![2]));
    }

    #[test]
    fn evaluation_passes_the_context_as_input_and_reads_the_result() {
        let mut p = policy();
        let init = initialize(&mut p).unwrap();
        let out = evaluate(&mut p, init, br#"{"allow":true}"#).unwrap();
        assert_eq!(out, r#"[{"result":true}]"#);
        let (_, eval_args) = p.calls.last().unwrap();
        assert_eq!(eval_args, &vec![0, 0, 4000, 1026, 14, 1040, 0]);
        assert_eq!(decide(&out), OpaVerdict::Allowed);
        let out = evaluate(&mut p, init, br#"{"allow":false}"#).unwrap();
        assert_eq!(decide(&out), OpaVerdict::Denied { status: 403, message: "Forbidden access".into() });
    }

    #[test]
    fn an_input_larger_than_the_memory_is_an_error_not_a_panic() {
        let mut p = policy();
        let init = initialize(&mut p).unwrap();
        assert!(matches!(evaluate(&mut p, init, &vec![b' '; 70_000]), Err(OpaError::NoRoom(70_000, 1026))));
    }

    #[test]
    fn decisions_follow_otoroshi() {
        assert_eq!(decide(""), OpaVerdict::Denied { status: 403, message: "Forbidden access".into() });
        assert_eq!(decide(r#"[{"result":true}]"#), OpaVerdict::Allowed);
        assert_eq!(
            decide(r#"[{"result":"yes"}]"#),
            OpaVerdict::Denied { status: 403, message: "Forbidden access".into() }
        );
        assert_eq!(decide("[]"), OpaVerdict::Denied { status: 403, message: "Forbidden access".into() });
        assert!(matches!(decide("not json"), OpaVerdict::Denied { status: 400, .. }));
    }

    #[test]
    fn imports_have_opas_signatures_and_behaviour() {
        assert_eq!(OpaImport::from_name("opa_builtin3"), Some(OpaImport::Builtin(3)));
        assert_eq!(OpaImport::from_name("opa_builtin5"), None);
        assert_eq!(OpaImport::Builtin(2).ty().params.len(), 4);
        let mut memory = vec![0u8; 64];
        memory[10..15].copy_from_slice(b"boom\0");
        let err = OpaImport::Abort.invoke(&memory, &[Val::I32(10)]).unwrap_err();
        assert_eq!(err.message, "OPA policy aborted: boom");
        assert_eq!(OpaImport::Println.invoke(&memory, &[Val::I32(10)]).unwrap(), "boom");
        assert!(OpaImport::Abort.invoke(&memory, &[Val::I32(1000)]).is_err());
    }
}
