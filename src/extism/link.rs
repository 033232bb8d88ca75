//! Resolving a module's imports against the tables: Extism (1.x and pre-1.0), Otoroshi (only
//! what the entity's authorizations grant), OPA (only with `opa: true`), WASI (only with
//! `wasi: true`). A module whose imports cannot all be resolved does not instantiate, and the
//! error names the import and what would make it resolvable.

use super::authorizations::{Authorizations, Requirement};
use super::imports::{HostImport, ImportModule};
use super::opa::OpaImport;
use super::otoroshi::host::OTOROSHI_FUNCTIONS;
use super::pdk::{EXTISM_FUNCTIONS, LEGACY_FUNCTIONS};
use crate::runtime::ImportDesc;

/// The entity settings that decide what is linked.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkOptions {
    pub authorizations: Authorizations,
    /// `isJS`: Otoroshi's functions come from `env/Otoroshi` instead of `env`.
    pub is_js: bool,
    /// `opa`: the module is an OPA policy (imports `env.memory` and the `opa_*` functions).
    pub opa: bool,
    /// `wasi`: WASI preview 1 is offered.
    pub wasi: bool,
}

/// What an import resolves to.
#[derive(Debug, Clone, Copy)]
pub enum Resolved {
    /// A function of the tables, called with the instance's state.
    Host(&'static HostImport),
    /// A WASI preview 1 function (the runtime links the host's WASI for it).
    Wasi,
    /// An OPA import that needs the linear memory (see [`super::opa`]).
    Opa(OpaImport),
    /// `env.memory` of an OPA policy: the host creates the memory (`memoryPages` pages at most).
    OpaMemory,
}

/// Why an import cannot be linked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the plugin imports {module}.{name}, which needs {setting}; the entity does not grant it")]
    Unauthorized { module: String, name: String, setting: &'static str },
    #[error("the plugin imports {module}.{name} with type {found}, but the host function has type {expected}")]
    Signature { module: String, name: String, expected: String, found: String },
    #[error("the plugin imports {module}.{name}, which is not a function this host offers{hint}")]
    Unknown { module: String, name: String, hint: &'static str },
    #[error("the plugin imports {module}.{name} from WASI, which needs config.wasi: true")]
    WasiDisabled { module: String, name: String },
}

const WASI_MODULES: [&str; 2] = ["wasi_snapshot_preview1", "wasi_unstable"];

fn find(table: &'static [HostImport], name: &str) -> Option<&'static HostImport> {
    table.iter().find(|f| f.name == name)
}

fn check(import: &ImportDesc, f: &'static HostImport, options: &LinkOptions) -> Result<Resolved, LinkError> {
    let expected = f.ty();
    match &import.ty {
        Some(found) if *found == expected => {}
        Some(found) => {
            return Err(LinkError::Signature {
                module: import.module.clone(),
                name: import.name.clone(),
                expected: expected.to_string(),
                found: found.to_string(),
            })
        }
        None => return Err(unknown(import, " (it is imported as a non-function)")),
    }
    if f.requires != Requirement::Always && !options.authorizations.grants(f.requires) {
        return Err(LinkError::Unauthorized {
            module: import.module.clone(),
            name: import.name.clone(),
            setting: f.requires.setting(),
        });
    }
    Ok(Resolved::Host(f))
}

fn unknown(import: &ImportDesc, hint: &'static str) -> LinkError {
    LinkError::Unknown { module: import.module.clone(), name: import.name.clone(), hint }
}

/// Resolves one import.
pub fn resolve(import: &ImportDesc, options: &LinkOptions) -> Result<Resolved, LinkError> {
    let module = import.module.as_str();
    let name = import.name.as_str();
    if WASI_MODULES.contains(&module) {
        return if options.wasi {
            Ok(Resolved::Wasi)
        } else {
            Err(LinkError::WasiDisabled { module: module.to_owned(), name: name.to_owned() })
        };
    }
    if module == ImportModule::ExtismEnv.name(options.is_js) {
        return match find(EXTISM_FUNCTIONS, name) {
            Some(f) => check(import, f, options),
            None => Err(unknown(import, " (a newer Extism PDK than this host knows?)")),
        };
    }
    if module == ImportModule::Otoroshi.name(options.is_js) {
        if let Some(f) = find(OTOROSHI_FUNCTIONS, name) {
            return check(import, f, options);
        }
    }
    if module == "env" {
        if let Some(f) = find(LEGACY_FUNCTIONS, name) {
            return check(import, f, options);
        }
        if let Some(opa) = OpaImport::from_name(name) {
            if !options.opa {
                return Err(LinkError::Unauthorized {
                    module: module.to_owned(),
                    name: name.to_owned(),
                    setting: Requirement::Opa.setting(),
                });
            }
            let expected = opa.ty();
            return match &import.ty {
                Some(found) if *found == expected => Ok(Resolved::Opa(opa)),
                Some(found) => Err(LinkError::Signature {
                    module: module.to_owned(),
                    name: name.to_owned(),
                    expected: expected.to_string(),
                    found: found.to_string(),
                }),
                None => Err(unknown(import, "")),
            };
        }
        if name == "memory" && import.ty.is_none() {
            return if options.opa {
                Ok(Resolved::OpaMemory)
            } else {
                Err(unknown(import, " (an imported memory is only given to OPA policies: config.opa: true)"))
            };
        }
        if !options.is_js && find(OTOROSHI_FUNCTIONS, name).is_none() && name.starts_with("proxy_") {
            return Err(unknown(import, " (not an Otoroshi host function)"));
        }
    }
    if module == "env/Otoroshi" && !options.is_js {
        return Err(unknown(import, " (Otoroshi's functions come from env/Otoroshi only with config.isJS: true)"));
    }
    Err(unknown(import, ""))
}

/// Resolves every import, in order; the first failure wins.
pub fn resolve_all(imports: &[ImportDesc], options: &LinkOptions) -> Result<Vec<Resolved>, LinkError> {
    imports.iter().map(|i| resolve(i, options)).collect()
}

/// Whether any of the resolved imports can make an outgoing HTTP call (the plugin must then run
/// off the event loop, see docs/otoroshi.md).
#[must_use]
pub fn makes_http_calls(resolved: &[Resolved]) -> bool {
    resolved.iter().any(|r| matches!(r, Resolved::Host(f) if matches!(f.name, "http_request" | "extism_http_request" | "proxy_http_call")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extism::authorizations::DataRights;
    use crate::runtime::FuncType;
    use crate::runtime::ValType::{I32, I64};

    fn import(
        module: &str,
        name: &str,
        params: &[crate::runtime::ValType],
        results: &[crate::runtime::ValType],
    ) -> ImportDesc {
        ImportDesc {
            module: module.into(),
            name: name.into(),
            ty: Some(FuncType { params: params.to_vec(), results: results.to_vec() }),
        }
    }

    #[test]
    fn extism_1x_and_legacy_imports_resolve() {
        let o = LinkOptions::default();
        assert!(matches!(resolve(&import("extism:host/env", "alloc", &[I64], &[I64]), &o), Ok(Resolved::Host(_))));
        assert!(matches!(resolve(&import("env", "extism_output_set", &[I64, I64], &[]), &o), Ok(Resolved::Host(_))));
    }

    #[test]
    fn an_unauthorized_otoroshi_import_fails_naming_the_function_and_the_setting() {
        let err = resolve(&import("env", "proxy_http_call", &[I64, I64], &[I64]), &LinkOptions::default()).unwrap_err();
        assert_eq!(err.to_string(), "the plugin imports env.proxy_http_call, which needs config.authorizations.httpAccess: true; the entity does not grant it");
        let err =
            resolve(&import("env", "proxy_plugin_map_set", &[I64, I64], &[I64]), &LinkOptions::default()).unwrap_err();
        assert!(err.to_string().contains("pluginMapAccess.write"), "{err}");
    }

    #[test]
    fn an_authorized_otoroshi_import_resolves() {
        let o = LinkOptions {
            authorizations: Authorizations {
                plugin_map_access: DataRights { read: true, write: false },
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(resolve(&import("env", "proxy_plugin_map_get", &[I64, I64], &[I64]), &o).is_ok());
        assert!(resolve(&import("env", "proxy_plugin_map_set", &[I64, I64], &[I64]), &o).is_err());
        assert!(resolve(&import("env", "proxy_log", &[I32, I64, I64], &[I32]), &o).is_ok());
    }

    #[test]
    fn javascript_plugins_take_otoroshis_functions_from_env_otoroshi() {
        let js = LinkOptions { is_js: true, ..Default::default() };
        assert!(resolve(&import("env/Otoroshi", "proxy_log", &[I32, I64, I64], &[I32]), &js).is_ok());
        assert!(
            resolve(&import("env/Otoroshi", "proxy_log", &[I32, I64, I64], &[I32]), &LinkOptions::default()).is_err()
        );
    }

    #[test]
    fn a_wrong_signature_is_an_error_naming_both_types() {
        let err = resolve(&import("extism:host/env", "alloc", &[I32], &[I32]), &LinkOptions::default()).unwrap_err();
        assert!(matches!(err, LinkError::Signature { .. }), "{err}");
        assert!(err.to_string().contains("(i32) -> (i32)") && err.to_string().contains("(i64) -> (i64)"), "{err}");
    }

    #[test]
    fn wasi_needs_wasi_true() {
        let fd_write = import("wasi_snapshot_preview1", "fd_write", &[I32, I32, I32, I32], &[I32]);
        assert!(matches!(resolve(&fd_write, &LinkOptions::default()), Err(LinkError::WasiDisabled { .. })));
        assert!(matches!(resolve(&fd_write, &LinkOptions { wasi: true, ..Default::default() }), Ok(Resolved::Wasi)));
    }

    #[test]
    fn opa_imports_need_opa_true() {
        let abort = import("env", "opa_abort", &[I32], &[]);
        assert!(matches!(
            resolve(&abort, &LinkOptions::default()),
            Err(LinkError::Unauthorized { setting: "config.opa: true", .. })
        ));
        let o = LinkOptions { opa: true, ..Default::default() };
        assert!(matches!(resolve(&abort, &o), Ok(Resolved::Opa(OpaImport::Abort))));
        let memory = ImportDesc { module: "env".into(), name: "memory".into(), ty: None };
        assert!(matches!(resolve(&memory, &o), Ok(Resolved::OpaMemory)));
    }

    #[test]
    fn unknown_imports_are_errors() {
        let err = resolve(&import("extism:host/env", "brand_new", &[], &[]), &LinkOptions::default()).unwrap_err();
        assert!(err.to_string().contains("newer Extism PDK"), "{err}");
        assert!(resolve(&import("somewhere", "f", &[], &[]), &LinkOptions::default()).is_err());
    }

    #[test]
    fn a_plugin_that_can_call_out_is_recognised() {
        let o = LinkOptions {
            authorizations: Authorizations { http_access: true, ..Default::default() },
            ..Default::default()
        };
        let r = resolve_all(&[import("env", "proxy_http_call", &[I64, I64], &[I64])], &o).unwrap();
        assert!(makes_http_calls(&r));
        let r = resolve_all(&[import("extism:host/env", "alloc", &[I64], &[I64])], &o).unwrap();
        assert!(!makes_http_calls(&r));
    }
}
