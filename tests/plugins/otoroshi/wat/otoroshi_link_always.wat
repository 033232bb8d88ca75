;; Link test: imports proxy_log, proxy_log_event, proxy_get_attrs, proxy_get_attr, proxy_set_attr, proxy_del_attr, proxy_clear_attrs from module `env`
;; (Otoroshi's host functions), so it instantiates only when the entity grants
;; nothing (Otoroshi always links these). It never calls them: `access` answers {"result":true}.
(module
  (import "env" "proxy_log" (func $proxy_log (param i32 i64 i64) (result i32)))
  (import "env" "proxy_log_event" (func $proxy_log_event (param i64 i64) (result i64)))
  (import "env" "proxy_get_attrs" (func $proxy_get_attrs (param i64) (result i64)))
  (import "env" "proxy_get_attr" (func $proxy_get_attr (param i64 i64) (result i64)))
  (import "env" "proxy_set_attr" (func $proxy_set_attr (param i64 i64) (result i64)))
  (import "env" "proxy_del_attr" (func $proxy_del_attr (param i64 i64) (result i64)))
  (import "env" "proxy_clear_attrs" (func $proxy_clear_attrs (param i64) (result i64)))
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
