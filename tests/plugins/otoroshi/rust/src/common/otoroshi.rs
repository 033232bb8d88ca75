//! Otoroshi's host functions (module `env`), as Otoroshi declares them
//! (otoroshi/app/wasm/host.scala). "ctx" functions take (offset, length) of a
//! kernel memory block holding a string or JSON document and return a kernel
//! handle (0 or an empty block = nothing); some return a raw integer. Importing
//! one makes the module need the matching authorization.

use extism_pdk::Memory;

#[link(wasm_import_module = "env")]
extern "C" {
    pub fn proxy_log(level: i32, ptr: u64, len: u64) -> i32;
    pub fn proxy_log_event(ptr: u64, len: u64) -> u64;
    pub fn proxy_http_call(ptr: u64, len: u64) -> u64;

    pub fn proxy_state(unused: u64) -> u64;
    pub fn proxy_state_value(ptr: u64, len: u64) -> u64;
    pub fn proxy_global_config(unused: u64) -> u64;
    pub fn proxy_config(unused: u64) -> u64;
    pub fn proxy_cluster_state(unused: u64) -> u64;
    pub fn proxy_cluster_state_value(ptr: u64, len: u64) -> u64;

    pub fn proxy_plugin_map_set(ptr: u64, len: u64) -> u64;
    pub fn proxy_plugin_map_get(ptr: u64, len: u64) -> u64;
    pub fn proxy_plugin_map_del(ptr: u64, len: u64) -> u64;
    pub fn proxy_plugin_map(unused: u64) -> u64;
    pub fn proxy_global_map_set(ptr: u64, len: u64) -> u64;
    pub fn proxy_global_map_get(ptr: u64, len: u64) -> u64;
    pub fn proxy_global_map_del(ptr: u64, len: u64) -> u64;
    pub fn proxy_global_map(unused: u64) -> u64;

    pub fn proxy_datastore_keys(ptr: u64, len: u64) -> u64;
    pub fn proxy_datastore_get(ptr: u64, len: u64) -> u64;
    pub fn proxy_datastore_exists(ptr: u64, len: u64) -> u64;
    pub fn proxy_datastore_pttl(ptr: u64, len: u64) -> u64;
    pub fn proxy_datastore_set(ptr: u64, len: u64) -> u64;
    pub fn proxy_datastore_setnx(ptr: u64, len: u64) -> u64;
    pub fn proxy_datastore_del(ptr: u64, len: u64) -> u64;
    pub fn proxy_datastore_incrby(ptr: u64, len: u64) -> u64;
    pub fn proxy_datastore_pexpire(ptr: u64, len: u64) -> u64;
    pub fn proxy_datastore_all_matching(ptr: u64, len: u64) -> u64;

    pub fn proxy_plugin_datastore_keys(ptr: u64, len: u64) -> u64;
    pub fn proxy_plugin_datastore_get(ptr: u64, len: u64) -> u64;
    pub fn proxy_plugin_datastore_exists(ptr: u64, len: u64) -> u64;
    pub fn proxy_plugin_datastore_pttl(ptr: u64, len: u64) -> u64;
    pub fn proxy_plugin_datastore_set(ptr: u64, len: u64) -> u64;
    pub fn proxy_plugin_datastore_setnx(ptr: u64, len: u64) -> u64;
    pub fn proxy_plugin_datastore_del(ptr: u64, len: u64) -> u64;
    pub fn proxy_plugin_datastore_incrby(ptr: u64, len: u64) -> u64;
    pub fn proxy_plugin_datastore_pexpire(ptr: u64, len: u64) -> u64;
    pub fn proxy_plugin_datastore_all_matching(ptr: u64, len: u64) -> u64;

    pub fn proxy_get_attrs(unused: u64) -> u64;
    pub fn proxy_get_attr(ptr: u64, len: u64) -> u64;
    pub fn proxy_set_attr(ptr: u64, len: u64) -> u64;
    pub fn proxy_del_attr(ptr: u64, len: u64) -> u64;
    pub fn proxy_clear_attrs(unused: u64) -> u64;
}

/// A string copied into kernel memory for a "ctx" function: (offset, length).
pub struct Arg(Memory);

impl Arg {
    pub fn new(s: &str) -> Arg {
        Arg(Memory::from_bytes(s.as_bytes()).expect("kernel alloc"))
    }
    pub fn ptr(&self) -> u64 {
        self.0.offset()
    }
    pub fn len(&self) -> u64 {
        self.0.len() as u64
    }
}
