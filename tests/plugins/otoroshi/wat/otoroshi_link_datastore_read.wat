;; Link test: imports proxy_datastore_get, proxy_datastore_keys, proxy_datastore_exists, proxy_datastore_pttl, proxy_datastore_all_matching from module `env`
;; (Otoroshi's host functions), so it instantiates only when the entity grants
;; authorizations.globalDataStoreAccess.read. It never calls them: `access` answers {"result":true}.
(module
  (import "env" "proxy_datastore_get" (func $proxy_datastore_get (param i64 i64) (result i64)))
  (import "env" "proxy_datastore_keys" (func $proxy_datastore_keys (param i64 i64) (result i64)))
  (import "env" "proxy_datastore_exists" (func $proxy_datastore_exists (param i64 i64) (result i64)))
  (import "env" "proxy_datastore_pttl" (func $proxy_datastore_pttl (param i64 i64) (result i64)))
  (import "env" "proxy_datastore_all_matching" (func $proxy_datastore_all_matching (param i64 i64) (result i64)))
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
