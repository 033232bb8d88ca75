;; trap_loop.wat — ABI 0.2.1 module whose proxy_on_request_headers never returns.
;;
;; Purpose
;;   CPU time limit: on_request_headers spins in an empty loop (no calls, no
;;   memory traffic). The host must interrupt it (epoch/fuel deadline), treat
;;   it like a trap (log it, fail the request, drop the instance), and keep the
;;   worker thread serving other requests.
;;   Escape hatch for recovery tests: a request carrying the header
;;   "x-no-loop" (any value) does not loop and continues normally.
;;
;; Configuration: none.
;;
;; What the test should observe (INFO lines)
;;   on_request_headers: looping forever        (then the host's time-limit report)
;;   on_request_headers: x-no-loop, continuing  (request with x-no-loop; proxied normally)

(module
  ;; proxy_log(level, message_data, message_size) -> status
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  ;; proxy_get_header_map_value(map, key_data, key_size, return_value_data **, return_value_size *) -> status
  (import "env" "proxy_get_header_map_value"
    (func $proxy_get_header_map_value (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 2)

  (func (export "proxy_abi_version_0_2_1"))

  ;; return slots: 0x10 value pointer, 0x14 value size
  (data (i32.const 0x100) "on_request_headers: looping forever")        ;; 35 bytes
  (data (i32.const 0x140) "on_request_headers: x-no-loop, continuing")  ;; 41 bytes
  (data (i32.const 0x180) "x-no-loop")                                  ;; 9 bytes

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

  (func (export "proxy_on_request_headers")
        (param $ctx i32) (param $num_headers i32) (param $eos i32) (result i32)
    ;; escape hatch: "x-no-loop" present -> Continue
    (if (i32.eqz
          (call $proxy_get_header_map_value
            (i32.const 0)                           ;; HTTP_REQUEST_HEADERS
            (i32.const 0x180) (i32.const 9)         ;; "x-no-loop"
            (i32.const 0x10) (i32.const 0x14)))
      (then
        (call $say (i32.const 0x140) (i32.const 41))
        (return (i32.const 0))))
    (call $say (i32.const 0x100) (i32.const 35))    ;; "on_request_headers: looping forever"
    (loop $forever
      (br $forever))
    unreachable)
)
