//! Otoroshi / Wasmo WASM plugins: the Extism plugin model, server-neutral and runtime-neutral.
//!
//! Otoroshi runs WebAssembly plugins written with Extism's PDKs (often in Wasmo): a plugin reads a
//! JSON context (`Host.inputString()`), writes a JSON answer (`Host.outputString(...)`), and is
//! attached to proxy-engine steps. This module holds everything of that model that does not depend
//! on a WebAssembly runtime or on a server, so that wiring it into both is small:
//!
//! - [`kernel`]: Extism's memory arena (handles, input, output, error), kept natively;
//! - [`vars`]: plugin variables with Extism's cap;
//! - [`state`]: an instance's host state and the services a server provides;
//! - [`imports`], [`pdk`], [`otoroshi`]: the host-function table as data: Extism 1.x
//!   (`extism:host/env`), Extism before 1.0 (`env`, `extism_*`), Otoroshi (`env` or
//!   `env/Otoroshi`), each an `fn(&mut ExtismState, &[Val])`;
//! - [`link`]: resolving a module's imports, only what the entity's authorizations grant;
//! - [`call`]: the call protocol (reset, input, call, output or error);
//! - [`http`]: outgoing calls (`http_request`, `proxy_http_call`) behind a trait;
//! - [`body`]: bodies in Otoroshi's JSON;
//! - [`opa`], [`opa_memory`]: Open Policy Agent policies;
//! - [`entity`]: the Otoroshi WASM plugin entity, parsed from JSON or YAML;
//! - [`steps`]: the JSON contracts of every step (inputs built from a server-neutral request view,
//!   outputs parsed into server-neutral verdicts).
//!
//! docs/otoroshi.md describes the mapping, the settings, every host function and the plan for the
//! servers.

pub mod authorizations;
pub mod body;
pub mod call;
pub mod entity;
pub mod http;
pub mod imports;
pub mod kernel;
pub mod link;
pub mod opa;
pub mod opa_memory;
pub mod otoroshi;
pub mod pdk;
pub mod plugin;
pub mod state;
pub mod steps;
pub mod vars;

#[cfg(test)]
mod testing;
#[cfg(test)]
mod wasmtime_tests;
