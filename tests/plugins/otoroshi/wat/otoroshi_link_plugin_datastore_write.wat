;; Link test: imports proxy_plugin_datastore_set, proxy_plugin_datastore_setnx, proxy_plugin_datastore_del, proxy_plugin_datastore_incrby, proxy_plugin_datastore_pexpire from module `env`
;; (Otoroshi's host functions), so it instantiates only when the entity grants
;; authorizations.pluginDataStoreAccess.write. It never calls them: `access` answers {"result":true}.
(module
  (import "env" "proxy_plugin_datastore_set" (func $proxy_plugin_datastore_set (param i64 i64) (result i64)))
  (import "env" "proxy_plugin_datastore_setnx" (func $proxy_plugin_datastore_setnx (param i64 i64) (result i64)))
  (import "env" "proxy_plugin_datastore_del" (func $proxy_plugin_datastore_del (param i64 i64) (result i64)))
  (import "env" "proxy_plugin_datastore_incrby" (func $proxy_plugin_datastore_incrby (param i64 i64) (result i64)))
  (import "env" "proxy_plugin_datastore_pexpire" (func $proxy_plugin_datastore_pexpire (param i64 i64) (result i64)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"result\":true}")
  (func (export "access") (result i32)
    (local $h i64) (local $i i32)
    (local.set $h (call $alloc (i64.const 15)))
    (block $done
      (loop $copy
        (br_if $done (i32.ge_u (local.get $i) (i32.const 15)))
        (call $store_u8 (i64.add (local.get $h) (i64.extend_i32_u (local.get $i)))
          (i32.load8_u (local.get $i)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $copy)))
    (call $output_set (local.get $h) (i64.const 15))
    (i32.const 0))
)
