;; reject_vm_start.wat — ABI 0.2.1 module whose proxy_on_vm_start returns 0 (false).
;;
;; Purpose
;;   A VM whose on_vm_start returns false must be refused: the plugin fails to
;;   load (or the reload is refused and the previous plugin kept), on_configure
;;   is never called, and no stream context is ever created.
;;
;; Configuration: none.
;;
;; What the test should observe
;;   on_vm_start -> 0                 (INFO, then the host reports the failure)
;;   and never: "on_configure must not be called",
;;              "on_request_headers must not be called"

(module
  ;; proxy_log(level, message_data, message_size) -> status
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))

  (memory (export "memory") 2)

  (func (export "proxy_abi_version_0_2_1"))

  (data (i32.const 0x100) "on_vm_start -> 0")                       ;; 16 bytes
  (data (i32.const 0x120) "on_configure must not be called")        ;; 31 bytes
  (data (i32.const 0x140) "on_request_headers must not be called")  ;; 37 bytes

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

  (func (export "proxy_on_vm_start") (param $root i32) (param $size i32) (result i32)
    (call $say (i32.const 0x100) (i32.const 16))        ;; "on_vm_start -> 0"
    (i32.const 0))                                       ;; false: reject the VM

  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (call $say (i32.const 0x120) (i32.const 31))
    (i32.const 1))

  (func (export "proxy_on_request_headers")
        (param $ctx i32) (param $num_headers i32) (param $eos i32) (result i32)
    (call $say (i32.const 0x140) (i32.const 37))
    (i32.const 0))
)
