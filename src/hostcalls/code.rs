//! A plugin's code: a module is validated, compiled once per process and
//! linked to the hostcall table ([`WasmCode`]), then instantiated as often as
//! the server needs.

use std::sync::Arc;

use super::state::HostState;
use super::{exports, wasi};
use crate::abi::AbiVersion;
use crate::hash::FastSet;
use crate::runtime::{Engine, FuncType, LinkedImport, Module, ValType};

/// Why a module cannot be used. Every message names the module (its file).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{origin}: not a Proxy-Wasm module: it exports no proxy_abi_version_* marker")]
    NoAbiMarker { origin: String },
    #[error("{origin}: unsupported Proxy-Wasm ABI {markers:?}; this host speaks 0.1.0, 0.2.0 and 0.2.1")]
    UnknownAbi { origin: String, markers: Vec<String> },
    #[error("{origin}: {message}")]
    Compile { origin: String, message: String },
    #[error("{origin}: imports {module}.{name}, which the host does not provide for ABI {abi}")]
    MissingImport { origin: String, module: String, name: String, abi: AbiVersion },
    #[error("{origin}: import {module}.{name} has signature {found}, expected {expected}")]
    ImportSignature { origin: String, module: String, name: String, found: String, expected: String },
    #[error("{origin}: imports {module}.{name}, which is not a function; only function imports are supported")]
    NonFunctionImport { origin: String, module: String, name: String },
    #[error("{origin}: export {name} has signature {found}, but ABI {abi} expects {expected}")]
    CallbackSignature { origin: String, name: String, found: String, expected: String, abi: AbiVersion },
}

/// A callback the host may call: its export name and expected signature.
pub struct Callback {
    pub name: &'static str,
    pub params: usize,
    pub returns: bool,
}

/// The callbacks of an ABI version, with their arity.
pub fn callbacks(abi: AbiVersion) -> Vec<Callback> {
    let eos = usize::from(abi.header_callbacks_have_eos());
    let cb = |name, params, returns| Callback { name, params, returns };
    let mut v = vec![
        cb("proxy_on_context_create", 2, false),
        cb("proxy_on_vm_start", 2, true),
        cb("proxy_on_configure", 2, true),
        cb("proxy_validate_configuration", 2, true),
        cb("proxy_on_tick", 1, false),
        cb("proxy_on_queue_ready", 2, false),
        cb("proxy_on_request_headers", 2 + eos, true),
        cb("proxy_on_request_body", 3, true),
        cb("proxy_on_request_trailers", 2, true),
        cb("proxy_on_response_headers", 2 + eos, true),
        cb("proxy_on_response_body", 3, true),
        cb("proxy_on_response_trailers", 2, true),
        cb("proxy_on_done", 1, true),
        cb("proxy_on_log", 1, false),
        cb("proxy_on_delete", 1, false),
        cb("proxy_on_http_call_response", 5, false),
    ];
    if abi >= AbiVersion::V0_2_0 {
        v.push(cb("proxy_on_foreign_function", 3, false));
    }
    v
}

/// A validated, compiled module.
pub struct WasmCode {
    /// Where the code came from, for messages (usually its file path).
    pub origin: String,
    pub abi: AbiVersion,
    pub engine: &'static str,
    pub(crate) module: Arc<dyn Module<HostState>>,
    pub(crate) imports: Vec<LinkedImport<HostState>>,
    pub(crate) allocator: Option<&'static str>,
    exported: FastSet<String>,
}

impl WasmCode {
    /// Detects the ABI, compiles, and resolves every import, refusing the
    /// module with a message naming `origin` if anything does not fit.
    pub fn load(engine: &dyn Engine<HostState>, wasm: &[u8], origin: &str) -> Result<WasmCode, LoadError> {
        let module = engine
            .compile(wasm)
            .map_err(|e| LoadError::Compile { origin: origin.to_string(), message: e.to_string() })?;
        WasmCode::from_module(engine, module, origin)
    }

    /// As [`WasmCode::load`], for a module already compiled (or taken from
    /// the compiled-module cache).
    pub fn from_module(
        engine: &dyn Engine<HostState>,
        module: Arc<dyn Module<HostState>>,
        origin: &str,
    ) -> Result<WasmCode, LoadError> {
        let origin_s = origin.to_string();
        let abi = AbiVersion::detect(module.exports().iter().map(|e| e.name.as_str())).map_err(|markers| {
            if markers.is_empty() {
                LoadError::NoAbiMarker { origin: origin_s.clone() }
            } else {
                LoadError::UnknownAbi { origin: origin_s.clone(), markers }
            }
        })?;
        let imports = resolve_imports(module.as_ref(), abi, origin)?;
        check_callbacks(module.as_ref(), abi, origin)?;
        let exported: FastSet<String> =
            module.exports().iter().filter(|e| e.ty.is_some()).map(|e| e.name.clone()).collect();
        // `malloc` first, as cpp-host's WasmBase::getFunctions picks it (the spec
        // prefers proxy_on_memory_allocate, but plugins are tuned to the host).
        let allocator = ["malloc", "proxy_on_memory_allocate"].into_iter().find(|n| exported.contains(*n));
        Ok(WasmCode { origin: origin_s, abi, engine: engine.name(), module, imports, allocator, exported })
    }

    pub fn exports_function(&self, name: &str) -> bool {
        self.exported.contains(name)
    }
}

fn resolve_imports(
    module: &dyn Module<HostState>,
    abi: AbiVersion,
    origin: &str,
) -> Result<Vec<LinkedImport<HostState>>, LoadError> {
    let mut linked = Vec::new();
    for import in module.imports() {
        let Some(ty) = &import.ty else {
            return Err(LoadError::NonFunctionImport {
                origin: origin.into(),
                module: import.module.clone(),
                name: import.name.clone(),
            });
        };
        let func = if wasi::MODULES.contains(&import.module.as_str()) {
            wasi::resolve(&import.name, ty).map_err(|expected| LoadError::ImportSignature {
                origin: origin.into(),
                module: import.module.clone(),
                name: import.name.clone(),
                found: ty.to_string(),
                expected: expected.to_string(),
            })?
        } else {
            let host = (import.module == "env")
                .then(|| exports::hostcalls(abi).find(|h| h.name == import.name))
                .flatten()
                .ok_or_else(|| LoadError::MissingImport {
                    origin: origin.into(),
                    module: import.module.clone(),
                    name: import.name.clone(),
                    abi,
                })?;
            if &host.ty() != ty {
                return Err(LoadError::ImportSignature {
                    origin: origin.into(),
                    module: import.module.clone(),
                    name: import.name.clone(),
                    found: ty.to_string(),
                    expected: host.ty().to_string(),
                });
            }
            host.func
        };
        linked.push(LinkedImport { module: import.module.clone(), name: import.name.clone(), ty: ty.clone(), func });
    }
    Ok(linked)
}

fn check_callbacks(module: &dyn Module<HostState>, abi: AbiVersion, origin: &str) -> Result<(), LoadError> {
    for cb in callbacks(abi) {
        let Some(export) = module.exports().iter().find(|e| e.name == cb.name) else {
            continue;
        };
        let expected = FuncType {
            params: vec![ValType::I32; cb.params],
            results: if cb.returns { vec![ValType::I32] } else { vec![] },
        };
        let found = export.ty.clone();
        // A callback whose result we ignore may still return one (some SDKs do).
        let fits = found.as_ref().is_some_and(|f| {
            f.params == expected.params
                && (f.results == expected.results
                    || (!cb.returns && f.results.len() == 1 && f.results[0] == ValType::I32))
        });
        if !fits {
            return Err(LoadError::CallbackSignature {
                origin: origin.into(),
                name: cb.name.into(),
                found: found.map_or("(not a function)".into(), |f| f.to_string()),
                expected: expected.to_string(),
                abi,
            });
        }
    }
    Ok(())
}
