;; headers_only.wat — ABI 0.2.1 module that only looks at headers: it exports
;; no body callback, so the servers never hold a body for it.
;;
;; Purpose
;;   `max_body_size` bounds the body bytes the host holds for a plugin; an
;;   upload of any size through a plugin that does not read bodies is not
;;   held, so it is not limited.
;;
;; Configuration: none.
;;
;; What the test should observe
;;   every response carries `x-headers-only: 1` (added in on_response_headers).

(module
  ;; proxy_add_header_map_value(map_type, key, key_size, value, value_size) -> status
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 2)

  (func (export "proxy_abi_version_0_2_1"))

  (data (i32.const 0x100) "x-headers-only")   ;; 14 bytes
  (data (i32.const 0x120) "1")

  ;; Bump allocator (same block in every tests/wat module).
  (global $heap (mut i32) (i32.const 0x10000))

  (func $alloc (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32) (local $end i32) (local $pages i32)
    (local.set $ptr (global.get $heap))
    (if (i32.gt_u (local.get $size) (i32.sub (i32.const 0xfffffff0) (local.get $ptr)))
      (then (return (i32.const 0))))
    (local.set $end
      (i32.and (i32.add (i32.add (local.get $ptr) (local.get $size)) (i32.const 7))
               (i32.const -8)))
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
    (i32.const 1))

  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (i32.const 1))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (i32.const 0))

  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (drop (call $add_header (i32.const 2) (i32.const 0x100) (i32.const 14) (i32.const 0x120) (i32.const 1)))
    (i32.const 0))
)
