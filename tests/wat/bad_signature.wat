;; bad_signature.wat — ABI 0.2.1 module importing env.proxy_log with a WRONG signature.
;;
;; Purpose
;;   Linking: proxy_log is (i32 level, i32 ptr, i32 len) -> i32. This module
;;   imports it as (i64, i32, i32) -> i32: same arity, wrong parameter type,
;;   so a host that compares only the number of parameters is caught too.
;;   The host must refuse to load it with an error that names the import
;;   (env.proxy_log) and the type mismatch; it must not trap at call time.
;;
;; Configuration: none.
;;
;; What the test should observe
;;   load/reload fails, the error contains "proxy_log";
;;   nothing from this module is ever logged.

(module
  ;; WRONG: proxy_log is (i32, i32, i32) -> i32; the first parameter here is i64
  (import "env" "proxy_log" (func $proxy_log (param i64 i32 i32) (result i32)))
  (memory (export "memory") 2)

  ;; ABI 0.2.1 marker (never called)
  (func (export "proxy_abi_version_0_2_1"))

  (data (i32.const 0x100) "_initialize must not be called")         ;; 30 bytes
  (data (i32.const 0x120) "on_vm_start must not be called")         ;; 30 bytes
  (data (i32.const 0x140) "on_configure must not be called")        ;; 31 bytes
  (data (i32.const 0x160) "on_request_headers must not be called")  ;; 37 bytes

  ;; log ($p, $n) at INFO
  (func $say (param $p i32) (param $n i32)
    (drop (call $proxy_log (i64.const 2) (local.get $p) (local.get $n))))

  ;; =====================================================================
  ;; Bump allocator (same block in every tests/wat module): never frees,
  ;; 8-byte aligned, grows memory on demand, returns 0 on failure.
  ;; =====================================================================
  (global $heap (mut i32) (i32.const 0x10000))

  (func $alloc (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32) (local $end i32) (local $pages i32)
    (local.set $ptr (global.get $heap))
    ;; refuse sizes that would run past 4 GiB
    (if (i32.gt_u (local.get $size) (i32.sub (i32.const 0xfffffff0) (local.get $ptr)))
      (then (return (i32.const 0))))
    (local.set $end
      (i32.and (i32.add (i32.add (local.get $ptr) (local.get $size)) (i32.const 7))
               (i32.const -8)))
    ;; pages needed = ceil(end / 64 KiB) - current pages
    (local.set $pages
      (i32.sub
        (i32.add (i32.shr_u (local.get $end) (i32.const 16))
                 (i32.ne (i32.and (local.get $end) (i32.const 0xffff)) (i32.const 0)))
        (memory.size)))
    (if (i32.gt_s (local.get $pages) (i32.const 0))
      (then
        (if (i32.eq (memory.grow (local.get $pages)) (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  (func (export "_initialize")
    (call $say (i32.const 0x100) (i32.const 30)))

  (func (export "proxy_on_vm_start") (param $root i32) (param $size i32) (result i32)
    (call $say (i32.const 0x120) (i32.const 30))
    (i32.const 1))

  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (call $say (i32.const 0x140) (i32.const 31))
    (i32.const 1))

  (func (export "proxy_on_request_headers")
        (param $ctx i32) (param $num_headers i32) (param $eos i32) (result i32)
    (call $say (i32.const 0x160) (i32.const 37))
    (i32.const 0))
)
