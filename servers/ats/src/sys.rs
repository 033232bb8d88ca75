//! Raw bindings to Traffic Server's C API (`ts/ts.h`, `ts/remap.h`), generated
//! by bindgen at build time. The symbols are resolved against traffic_server
//! when it loads the plugin.
#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/ts_bindings.rs"));

/// `TS_NULL_MLOC`, a macro bindgen does not emit.
pub const TS_NULL_MLOC: TSMLoc = std::ptr::null_mut();
