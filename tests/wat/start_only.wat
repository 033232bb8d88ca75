;; start_only.wat — ABI 0.2.1 module with a WASI-command style `_start` and no `_initialize`.
;;
;; Purpose
;;   Start-up order without `_initialize`: the host must call `_start` exactly
;;   once per instance and must NOT call `main` (the spec calls `main` only
;;   when `_initialize` is exported). `main` is exported on purpose to catch a
;;   host that calls it anyway.
;;
;; Configuration: none.
;;
;; What the test should observe (INFO lines, in this order)
;;   _start
;;   on_vm_start
;;   on_configure
;;   and never: "main must not be called"

(module
  ;; proxy_log(level, message_data, message_size) -> status
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))

  (memory (export "memory") 2)

  (func (export "proxy_abi_version_0_2_1"))

  (data (i32.const 0x100) "_start")                    ;; 6 bytes
  (data (i32.const 0x120) "main must not be called")   ;; 23 bytes
  (data (i32.const 0x140) "on_vm_start")               ;; 11 bytes
  (data (i32.const 0x160) "on_configure")              ;; 12 bytes

  ;; log ($p, $n) at INFO
  (func $say (param $p i32) (param $n i32)
    (drop (call $proxy_log (i32.const 2) (local.get $p) (local.get $n))))

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

  (func (export "_start")
    (call $say (i32.const 0x100) (i32.const 6)))        ;; "_start"

  (func (export "main") (param $argc i32) (param $argv i32) (result i32)
    (call $say (i32.const 0x120) (i32.const 23))        ;; "main must not be called"
    (i32.const 0))

  (func (export "proxy_on_vm_start") (param $root i32) (param $size i32) (result i32)
    (call $say (i32.const 0x140) (i32.const 11))        ;; "on_vm_start"
    (i32.const 1))

  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (call $say (i32.const 0x160) (i32.const 12))        ;; "on_configure"
    (i32.const 1))
)
