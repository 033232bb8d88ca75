//! A Proxy-Wasm host: runs WebAssembly filters written with the Proxy-Wasm
//! SDKs inside HTTP servers.
//!
//! Layers, each behind a small interface:
//! - [`abi`]: the Proxy-Wasm ABI itself: versions, encodings, every hostcall
//!   (`hostcalls::exports`) and WASI (`hostcalls::wasi`).
//! - [`runtime`]: WebAssembly runtimes behind the `Engine`/`Module`/`Instance` traits.
//! - [`vm`]: an instance with its contexts and the callback lifecycle.
//! - [`host`]: what a server binding implements (`ServerHost`, `HttpStream`).
//! - [`chain`]: one transaction through the plugins of a configuration (the
//!   filter chain every server drives), and the VM generations it runs on.
//! - [`config`]: the YAML plugin configuration.
//! - [`authorizations`]: what each plugin may touch.
//! - [`extism`]: Otoroshi / Wasmo plugins (the Extism ABI, Otoroshi's host functions, entities
//!   and step contracts), independent of runtimes and servers.
//! - [`ffi`]: the C API for servers written in C.
//
// Every unsafe operation sits in an `unsafe` block of its own, with a `// SAFETY:` comment saying
// why it is sound: the workspace's lints (Cargo.toml), for every crate.

pub mod abi;
pub mod authorizations;
pub mod cache_file;
pub mod chain;
pub mod chunked;
pub mod config;
pub mod extism;
pub mod ffi;
pub mod files;
pub mod hash;
pub mod host;
pub mod hostcalls;
pub mod http_client;
pub mod http_response;
pub mod loader;
pub mod metrics;
pub mod module_cache;
pub mod plugin;
pub mod remote_code;
pub mod runtime;
pub mod shared;
pub mod shm_store;
pub mod vm;
