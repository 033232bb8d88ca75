//! The host side of the Proxy-Wasm ABI: the state an instance carries
//! ([`state::HostState`]), every hostcall (`exports`), WASI (`wasi`), the guest
//! memory helpers (`memory`), and the linking of a module to them (`code`).
//!
//! Above `abi` (the pure ABI: enums, status codes, encodings, property paths)
//! and `runtime` (which knows no host state: its traits are generic over it);
//! below `vm`, which drives the callbacks of an instance.

pub mod code;
pub mod contexts;
pub mod exports;
pub mod memory;
pub mod state;
pub mod wasi;
pub mod wasi_files;
