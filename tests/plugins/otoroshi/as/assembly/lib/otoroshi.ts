// Otoroshi's host functions (module `env`), as Otoroshi declares them
// (otoroshi/app/wasm/host.scala). "ctx" functions take (offset, length) of a block
// of kernel memory holding a string or JSON document, and return a kernel handle
// (0 or an empty block = nothing); a few return a raw integer instead.
// Importing any of these makes the module need the matching authorization.

import { Memory } from "@extism/as-pdk";

@external("env", "proxy_log")
export declare function proxy_log(level: i32, ptr: u64, len: u64): i32;
@external("env", "proxy_log_event")
export declare function proxy_log_event(ptr: u64, len: u64): u64;
@external("env", "proxy_http_call")
export declare function proxy_http_call(ptr: u64, len: u64): u64;

@external("env", "proxy_state")
export declare function proxy_state(unused: u64): u64;
@external("env", "proxy_state_value")
export declare function proxy_state_value(ptr: u64, len: u64): u64;
@external("env", "proxy_global_config")
export declare function proxy_global_config(unused: u64): u64;
@external("env", "proxy_config")
export declare function proxy_config(unused: u64): u64;
@external("env", "proxy_cluster_state")
export declare function proxy_cluster_state(unused: u64): u64;
@external("env", "proxy_cluster_state_value")
export declare function proxy_cluster_state_value(ptr: u64, len: u64): u64;

@external("env", "proxy_plugin_map_set")
export declare function proxy_plugin_map_set(ptr: u64, len: u64): u64;
@external("env", "proxy_plugin_map_get")
export declare function proxy_plugin_map_get(ptr: u64, len: u64): u64;
@external("env", "proxy_plugin_map_del")
export declare function proxy_plugin_map_del(ptr: u64, len: u64): u64;
@external("env", "proxy_plugin_map")
export declare function proxy_plugin_map(unused: u64): u64;
@external("env", "proxy_global_map_set")
export declare function proxy_global_map_set(ptr: u64, len: u64): u64;
@external("env", "proxy_global_map_get")
export declare function proxy_global_map_get(ptr: u64, len: u64): u64;
@external("env", "proxy_global_map_del")
export declare function proxy_global_map_del(ptr: u64, len: u64): u64;
@external("env", "proxy_global_map")
export declare function proxy_global_map(unused: u64): u64;

@external("env", "proxy_datastore_keys")
export declare function proxy_datastore_keys(ptr: u64, len: u64): u64;
@external("env", "proxy_datastore_get")
export declare function proxy_datastore_get(ptr: u64, len: u64): u64;
@external("env", "proxy_datastore_exists")
export declare function proxy_datastore_exists(ptr: u64, len: u64): u64;
@external("env", "proxy_datastore_pttl")
export declare function proxy_datastore_pttl(ptr: u64, len: u64): u64;
@external("env", "proxy_datastore_set")
export declare function proxy_datastore_set(ptr: u64, len: u64): u64;
@external("env", "proxy_datastore_setnx")
export declare function proxy_datastore_setnx(ptr: u64, len: u64): u64;
@external("env", "proxy_datastore_del")
export declare function proxy_datastore_del(ptr: u64, len: u64): u64;
@external("env", "proxy_datastore_incrby")
export declare function proxy_datastore_incrby(ptr: u64, len: u64): u64;
@external("env", "proxy_datastore_pexpire")
export declare function proxy_datastore_pexpire(ptr: u64, len: u64): u64;
@external("env", "proxy_datastore_all_matching")
export declare function proxy_datastore_all_matching(ptr: u64, len: u64): u64;

@external("env", "proxy_plugin_datastore_keys")
export declare function proxy_plugin_datastore_keys(ptr: u64, len: u64): u64;
@external("env", "proxy_plugin_datastore_get")
export declare function proxy_plugin_datastore_get(ptr: u64, len: u64): u64;
@external("env", "proxy_plugin_datastore_exists")
export declare function proxy_plugin_datastore_exists(ptr: u64, len: u64): u64;
@external("env", "proxy_plugin_datastore_pttl")
export declare function proxy_plugin_datastore_pttl(ptr: u64, len: u64): u64;
@external("env", "proxy_plugin_datastore_set")
export declare function proxy_plugin_datastore_set(ptr: u64, len: u64): u64;
@external("env", "proxy_plugin_datastore_setnx")
export declare function proxy_plugin_datastore_setnx(ptr: u64, len: u64): u64;
@external("env", "proxy_plugin_datastore_del")
export declare function proxy_plugin_datastore_del(ptr: u64, len: u64): u64;
@external("env", "proxy_plugin_datastore_incrby")
export declare function proxy_plugin_datastore_incrby(ptr: u64, len: u64): u64;
@external("env", "proxy_plugin_datastore_pexpire")
export declare function proxy_plugin_datastore_pexpire(ptr: u64, len: u64): u64;
@external("env", "proxy_plugin_datastore_all_matching")
export declare function proxy_plugin_datastore_all_matching(ptr: u64, len: u64): u64;

@external("env", "proxy_get_attrs")
export declare function proxy_get_attrs(unused: u64): u64;
@external("env", "proxy_get_attr")
export declare function proxy_get_attr(ptr: u64, len: u64): u64;
@external("env", "proxy_set_attr")
export declare function proxy_set_attr(ptr: u64, len: u64): u64;
@external("env", "proxy_del_attr")
export declare function proxy_del_attr(ptr: u64, len: u64): u64;
@external("env", "proxy_clear_attrs")
export declare function proxy_clear_attrs(unused: u64): u64;

// A string copied into kernel memory, ready for a "ctx" function.
export class Arg {
  mem: Memory;
  constructor(s: string) {
    this.mem = Memory.allocateString(s);
  }
  get ptr(): u64 {
    return this.mem.offset;
  }
  get len(): u64 {
    return this.mem.length;
  }
}
