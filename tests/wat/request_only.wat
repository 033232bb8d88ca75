;; request_only.wat — ABI 0.2.1 module with one stream callback,
;; proxy_on_request_headers, and no callback that runs outside a stream's own
;; (no tick, queue or http_call answer).
;;
;; Purpose
;;   A server may leave out its response work for a chain whose plugins take
;;   no response callback (Traffic Server adds no response hooks for it); a
;;   local response of such a plugin must still get its status and headers,
;;   and the request headers it adds must still reach the origin.
;;
;; Configuration: none.
;;
;; What the test should observe
;;   - a request with `x-deny` gets 403, body `denied`, header
;;     `x-denied-by: request-only`, and does not reach the origin;
;;   - any other request reaches the origin with `x-request-only: 1`.

(module
  ;; proxy_get_header_map_value(map_type, key, key_size, value_ptr_ptr, value_size_ptr) -> status
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  ;; proxy_add_header_map_value(map_type, key, key_size, value, value_size) -> status
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  ;; proxy_send_local_response(status, details, details_size, body, body_size, headers, headers_size, grpc_status) -> status
  (import "env" "proxy_send_local_response"
    (func $send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 2)

  (func (export "proxy_abi_version_0_2_1"))

  (data (i32.const 0x100) "x-deny")           ;; 6 bytes
  (data (i32.const 0x120) "x-request-only")   ;; 14 bytes
  (data (i32.const 0x140) "1")
  (data (i32.const 0x160) "denied")           ;; 6 bytes
  ;; One header pair, serialized: count, (key size, value size), key NUL value NUL: 37 bytes.
  (data (i32.const 0x180) "\01\00\00\00\0b\00\00\00\0c\00\00\00x-denied-by\00request-only\00")

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

  ;; map type 0: request headers. Status 0: OK (the header is there).
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 0x100) (i32.const 6) (i32.const 0x200) (i32.const 0x204)))
      (then
        (drop (call $send_local_response
          (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 0x160) (i32.const 6)
          (i32.const 0x180) (i32.const 37) (i32.const -1)))
        (return (i32.const 1))))
    (drop (call $add_header (i32.const 0) (i32.const 0x120) (i32.const 14) (i32.const 0x140) (i32.const 1)))
    (i32.const 0))
)
