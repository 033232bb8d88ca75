;; hostcall_fuzz.wat — ABI 0.2.1 module that imports every proxy_* hostcall and
;; calls one of them with arguments chosen by the test (tests/fuzz/hostcalls.rs).
;;
;; A command is bytes the test hands to a callback:
;;   u32 k                 the hostcall's number (the order of the imports below, from 0)
;;   12 x i64 a0..a11      its arguments in order (an i32 parameter takes the low 32 bits)
;;   payload               copied to the arena (0x10000, 16 KiB; the rest of it zeroed)
;; Channels (the callback reads its command with one hostcall of its own):
;;   proxy_on_foreign_function      the CallData buffer (8)        root context
;;   proxy_on_http_call_response    the http_call body buffer (4)  root context
;;   proxy_on_request_headers       request header "x-fuzz"        stream context
;;   proxy_on_request_body          the request body buffer (0)    stream context
;;   proxy_on_response_headers      response header "x-fuzz"       stream context
;;   proxy_on_response_body         the response body buffer (1)   stream context
;; Before the call the arena is copied to 0x18000; after it, the arena is
;; compared with that copy and one INFO line is logged:
;;   "FUZZ r=<status> n=<runs>[ <start>-<end>]..."   (8 hex digits each)
;; where each run is a range of arena offsets [start, end) the host changed
;; (at most 16 listed). The test checks the status against what the SDKs
;; accept, and that every changed byte lies in an out-parameter the call was
;; given. A driver problem logs "FUZZ driver ..." instead.
;;
;; Memory: 0x0000-0x00ff unused (pointer 0 lands here), 0x0100-0x036f the
;; driver's constants (rewritten around each call), 0x0400 the log line,
;; 0x1000/0x1004 the driver's return slots, 0x10000 the arena, 0x18000 its
;; copy, 0x20000+ the heap of proxy_on_memory_allocate
;; (a bump allocator reset before each command, growing memory up to 16 MiB,
;; 0 beyond).
(module
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $proxy_get_current_time_nanoseconds (param i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $proxy_set_tick_period_milliseconds (param i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $proxy_get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $proxy_set_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $proxy_get_buffer_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $proxy_get_header_map_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $proxy_set_header_map_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_size" (func $proxy_get_header_map_size (param i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $proxy_get_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $proxy_add_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $proxy_replace_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $proxy_remove_header_map_value (param i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $proxy_send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_status" (func $proxy_get_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $proxy_http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_call" (func $proxy_grpc_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_stream" (func $proxy_grpc_stream (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_send" (func $proxy_grpc_send (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_cancel" (func $proxy_grpc_cancel (param i32) (result i32)))
  (import "env" "proxy_grpc_close" (func $proxy_grpc_close (param i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $proxy_get_shared_data (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $proxy_set_shared_data (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $proxy_register_shared_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_resolve_shared_queue" (func $proxy_resolve_shared_queue (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $proxy_enqueue_shared_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $proxy_dequeue_shared_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $proxy_define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $proxy_increment_metric (param i32 i64) (result i32)))
  (import "env" "proxy_record_metric" (func $proxy_record_metric (param i32 i64) (result i32)))
  (import "env" "proxy_get_metric" (func $proxy_get_metric (param i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $proxy_get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $proxy_set_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $proxy_set_effective_context (param i32) (result i32)))
  (import "env" "proxy_done" (func $proxy_done (result i32)))
  (import "env" "proxy_call_foreign_function" (func $proxy_call_foreign_function (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $proxy_continue_stream (param i32) (result i32)))
  (import "env" "proxy_close_stream" (func $proxy_close_stream (param i32) (result i32)))
  (import "env" "proxy_get_log_level" (func $proxy_get_log_level (param i32) (result i32)))

  (memory (export "memory") 4)
  (global $heap (mut i32) (i32.const 0x20000))
  ;; The driver's constants, copied to 0x100 before and after each call (a
  ;; fuzzed out-parameter may overwrite them): 0x100 "x-fuzz", 0x200 the hex
  ;; digits, 0x300 and 0x340 its two complaints.
  (data $constants "x-fuzz\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\000123456789abcdef\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00FUZZ driver cannot read its command\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00FUZZ driver: command shorter than 100 bytes\00\00\00\00\00")

  (func (export "proxy_abi_version_0_2_1"))

  ;; A bump allocator: 8-aligned, grows memory, refuses past 16 MiB.
  (func $alloc (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32) (local $end i64) (local $have i64)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $p)) (i64.extend_i32_u (local.get $size))))
    (if (i64.gt_u (local.get $end) (i64.const 0x1000000)) (then (return (i32.const 0))))
    (block $grown
      (loop $grow
        (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
        (br_if $grown (i64.le_u (local.get $end) (local.get $have)))
        (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then (return (i32.const 0))))
        (br $grow)))
    (global.set $heap (i32.wrap_i64 (local.get $end)))
    (local.get $p))

  ;; 8 hex digits of $v at $at.
  (func $hex8 (param $at i32) (param $v i32)
    (local $i i32)
    (loop $next
      (i32.store8
        (i32.add (local.get $at) (local.get $i))
        (i32.load8_u (i32.add (i32.const 0x200)
          (i32.and (i32.shr_u (local.get $v) (i32.sub (i32.const 28) (i32.shl (local.get $i) (i32.const 2)))) (i32.const 15)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const 8)))))

  ;; Calls hostcall $k; an unknown $k answers -1.
  (func $dispatch (param $k i32)
    (param $a0 i64) (param $a1 i64) (param $a2 i64) (param $a3 i64) (param $a4 i64) (param $a5 i64) (param $a6 i64) (param $a7 i64) (param $a8 i64) (param $a9 i64) (param $a10 i64) (param $a11 i64) (result i32)
    (if (i32.eq (local.get $k) (i32.const 0)) (then (return (call $proxy_log (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2))))))
    (if (i32.eq (local.get $k) (i32.const 1)) (then (return (call $proxy_get_current_time_nanoseconds (i32.wrap_i64 (local.get $a0))))))
    (if (i32.eq (local.get $k) (i32.const 2)) (then (return (call $proxy_set_tick_period_milliseconds (i32.wrap_i64 (local.get $a0))))))
    (if (i32.eq (local.get $k) (i32.const 3)) (then (return (call $proxy_get_buffer_bytes (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2)) (i32.wrap_i64 (local.get $a3)) (i32.wrap_i64 (local.get $a4))))))
    (if (i32.eq (local.get $k) (i32.const 4)) (then (return (call $proxy_set_buffer_bytes (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2)) (i32.wrap_i64 (local.get $a3)) (i32.wrap_i64 (local.get $a4))))))
    (if (i32.eq (local.get $k) (i32.const 5)) (then (return (call $proxy_get_buffer_status (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2))))))
    (if (i32.eq (local.get $k) (i32.const 6)) (then (return (call $proxy_get_header_map_pairs (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2))))))
    (if (i32.eq (local.get $k) (i32.const 7)) (then (return (call $proxy_set_header_map_pairs (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2))))))
    (if (i32.eq (local.get $k) (i32.const 8)) (then (return (call $proxy_get_header_map_size (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1))))))
    (if (i32.eq (local.get $k) (i32.const 9)) (then (return (call $proxy_get_header_map_value (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2)) (i32.wrap_i64 (local.get $a3)) (i32.wrap_i64 (local.get $a4))))))
    (if (i32.eq (local.get $k) (i32.const 10)) (then (return (call $proxy_add_header_map_value (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2)) (i32.wrap_i64 (local.get $a3)) (i32.wrap_i64 (local.get $a4))))))
    (if (i32.eq (local.get $k) (i32.const 11)) (then (return (call $proxy_replace_header_map_value (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2)) (i32.wrap_i64 (local.get $a3)) (i32.wrap_i64 (local.get $a4))))))
    (if (i32.eq (local.get $k) (i32.const 12)) (then (return (call $proxy_remove_header_map_value (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2))))))
    (if (i32.eq (local.get $k) (i32.const 13)) (then (return (call $proxy_send_local_response (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2)) (i32.wrap_i64 (local.get $a3)) (i32.wrap_i64 (local.get $a4)) (i32.wrap_i64 (local.get $a5)) (i32.wrap_i64 (local.get $a6)) (i32.wrap_i64 (local.get $a7))))))
    (if (i32.eq (local.get $k) (i32.const 14)) (then (return (call $proxy_get_status (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2))))))
    (if (i32.eq (local.get $k) (i32.const 15)) (then (return (call $proxy_http_call (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2)) (i32.wrap_i64 (local.get $a3)) (i32.wrap_i64 (local.get $a4)) (i32.wrap_i64 (local.get $a5)) (i32.wrap_i64 (local.get $a6)) (i32.wrap_i64 (local.get $a7)) (i32.wrap_i64 (local.get $a8)) (i32.wrap_i64 (local.get $a9))))))
    (if (i32.eq (local.get $k) (i32.const 16)) (then (return (call $proxy_grpc_call (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2)) (i32.wrap_i64 (local.get $a3)) (i32.wrap_i64 (local.get $a4)) (i32.wrap_i64 (local.get $a5)) (i32.wrap_i64 (local.get $a6)) (i32.wrap_i64 (local.get $a7)) (i32.wrap_i64 (local.get $a8)) (i32.wrap_i64 (local.get $a9)) (i32.wrap_i64 (local.get $a10)) (i32.wrap_i64 (local.get $a11))))))
    (if (i32.eq (local.get $k) (i32.const 17)) (then (return (call $proxy_grpc_stream (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2)) (i32.wrap_i64 (local.get $a3)) (i32.wrap_i64 (local.get $a4)) (i32.wrap_i64 (local.get $a5)) (i32.wrap_i64 (local.get $a6)) (i32.wrap_i64 (local.get $a7)) (i32.wrap_i64 (local.get $a8))))))
    (if (i32.eq (local.get $k) (i32.const 18)) (then (return (call $proxy_grpc_send (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2)) (i32.wrap_i64 (local.get $a3))))))
    (if (i32.eq (local.get $k) (i32.const 19)) (then (return (call $proxy_grpc_cancel (i32.wrap_i64 (local.get $a0))))))
    (if (i32.eq (local.get $k) (i32.const 20)) (then (return (call $proxy_grpc_close (i32.wrap_i64 (local.get $a0))))))
    (if (i32.eq (local.get $k) (i32.const 21)) (then (return (call $proxy_get_shared_data (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2)) (i32.wrap_i64 (local.get $a3)) (i32.wrap_i64 (local.get $a4))))))
    (if (i32.eq (local.get $k) (i32.const 22)) (then (return (call $proxy_set_shared_data (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2)) (i32.wrap_i64 (local.get $a3)) (i32.wrap_i64 (local.get $a4))))))
    (if (i32.eq (local.get $k) (i32.const 23)) (then (return (call $proxy_register_shared_queue (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2))))))
    (if (i32.eq (local.get $k) (i32.const 24)) (then (return (call $proxy_resolve_shared_queue (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2)) (i32.wrap_i64 (local.get $a3)) (i32.wrap_i64 (local.get $a4))))))
    (if (i32.eq (local.get $k) (i32.const 25)) (then (return (call $proxy_enqueue_shared_queue (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2))))))
    (if (i32.eq (local.get $k) (i32.const 26)) (then (return (call $proxy_dequeue_shared_queue (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2))))))
    (if (i32.eq (local.get $k) (i32.const 27)) (then (return (call $proxy_define_metric (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2)) (i32.wrap_i64 (local.get $a3))))))
    (if (i32.eq (local.get $k) (i32.const 28)) (then (return (call $proxy_increment_metric (i32.wrap_i64 (local.get $a0)) (local.get $a1)))))
    (if (i32.eq (local.get $k) (i32.const 29)) (then (return (call $proxy_record_metric (i32.wrap_i64 (local.get $a0)) (local.get $a1)))))
    (if (i32.eq (local.get $k) (i32.const 30)) (then (return (call $proxy_get_metric (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1))))))
    (if (i32.eq (local.get $k) (i32.const 31)) (then (return (call $proxy_get_property (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2)) (i32.wrap_i64 (local.get $a3))))))
    (if (i32.eq (local.get $k) (i32.const 32)) (then (return (call $proxy_set_property (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2)) (i32.wrap_i64 (local.get $a3))))))
    (if (i32.eq (local.get $k) (i32.const 33)) (then (return (call $proxy_set_effective_context (i32.wrap_i64 (local.get $a0))))))
    (if (i32.eq (local.get $k) (i32.const 34)) (then (return (call $proxy_done ))))
    (if (i32.eq (local.get $k) (i32.const 35)) (then (return (call $proxy_call_foreign_function (i32.wrap_i64 (local.get $a0)) (i32.wrap_i64 (local.get $a1)) (i32.wrap_i64 (local.get $a2)) (i32.wrap_i64 (local.get $a3)) (i32.wrap_i64 (local.get $a4)) (i32.wrap_i64 (local.get $a5))))))
    (if (i32.eq (local.get $k) (i32.const 36)) (then (return (call $proxy_continue_stream (i32.wrap_i64 (local.get $a0))))))
    (if (i32.eq (local.get $k) (i32.const 37)) (then (return (call $proxy_close_stream (i32.wrap_i64 (local.get $a0))))))
    (if (i32.eq (local.get $k) (i32.const 38)) (then (return (call $proxy_get_log_level (i32.wrap_i64 (local.get $a0))))))
    (i32.const -1))

  ;; Reads a command from channel $mode (a buffer type, or 100 + a map type),
  ;; runs it and logs what happened.
  (func $drive (param $mode i32)
    (local $st i32) (local $cmd i32) (local $len i32) (local $plen i32)
    (local $i i32) (local $j i32) (local $in i32) (local $runs i32) (local $out i32)
    (global.set $heap (i32.const 0x20000))
    (memory.init $constants (i32.const 0x100) (i32.const 0) (i32.const 0x270))
    (if (i32.ge_u (local.get $mode) (i32.const 100))
      (then (local.set $st (call $proxy_get_header_map_value (i32.sub (local.get $mode) (i32.const 100))
              (i32.const 0x100) (i32.const 6) (i32.const 0x1000) (i32.const 0x1004))))
      (else (local.set $st (call $proxy_get_buffer_bytes (local.get $mode) (i32.const 0) (i32.const 0x7fffffff)
              (i32.const 0x1000) (i32.const 0x1004)))))
    (if (local.get $st) (then
      (drop (call $proxy_log (i32.const 2) (i32.const 0x300) (i32.const 35)))
      (return)))
    (local.set $cmd (i32.load (i32.const 0x1000)))
    (local.set $len (i32.load (i32.const 0x1004)))
    (if (i32.lt_u (local.get $len) (i32.const 100)) (then
      (drop (call $proxy_log (i32.const 2) (i32.const 0x340) (i32.const 43)))
      (return)))
    (local.set $plen (i32.sub (local.get $len) (i32.const 100)))
    (if (i32.gt_u (local.get $plen) (i32.const 0x4000)) (then (local.set $plen (i32.const 0x4000))))
    (memory.fill (i32.const 0x10000) (i32.const 0) (i32.const 0x4000))
    (memory.copy (i32.const 0x10000) (i32.add (local.get $cmd) (i32.const 100)) (local.get $plen))
    (memory.copy (i32.const 0x18000) (i32.const 0x10000) (i32.const 0x4000))
    (local.set $st (call $dispatch (i32.load (local.get $cmd))
      (i64.load (i32.add (local.get $cmd) (i32.const 4))) (i64.load (i32.add (local.get $cmd) (i32.const 12))) (i64.load (i32.add (local.get $cmd) (i32.const 20))) (i64.load (i32.add (local.get $cmd) (i32.const 28))) (i64.load (i32.add (local.get $cmd) (i32.const 36))) (i64.load (i32.add (local.get $cmd) (i32.const 44))) (i64.load (i32.add (local.get $cmd) (i32.const 52))) (i64.load (i32.add (local.get $cmd) (i32.const 60))) (i64.load (i32.add (local.get $cmd) (i32.const 68))) (i64.load (i32.add (local.get $cmd) (i32.const 76))) (i64.load (i32.add (local.get $cmd) (i32.const 84))) (i64.load (i32.add (local.get $cmd) (i32.const 92)))))
    (global.set $heap (i32.const 0x20000))
    (memory.init $constants (i32.const 0x100) (i32.const 0) (i32.const 0x270))
    ;; "FUZZ r=XXXXXXXX n=XXXXXXXX" then the runs of changed arena bytes.
    (i64.store (i32.const 0x400) (i64.const 0x3d72205a5a5546))  ;; "FUZZ r=" + 0
    (call $hex8 (i32.const 0x407) (local.get $st))
    (i32.store (i32.const 0x40f) (i32.const 0x3d6e20))          ;; " n=" + 0
    (local.set $out (i32.const 0x41a))
    (block $done
      (loop $word
        (br_if $done (i32.ge_u (local.get $i) (i32.const 0x4000)))
        (if (i64.eq (i64.load (i32.add (i32.const 0x10000) (local.get $i)))
                    (i64.load (i32.add (i32.const 0x18000) (local.get $i))))
          (then
            (if (local.get $in) (then
              (if (i32.lt_u (local.get $runs) (i32.const 16)) (then
                (call $hex8 (local.get $out) (local.get $i))
                (local.set $out (i32.add (local.get $out) (i32.const 8)))))
              (local.set $runs (i32.add (local.get $runs) (i32.const 1)))
              (local.set $in (i32.const 0)))))
          (else
            (local.set $j (i32.const 0))
            (loop $byte
              (if (i32.ne (i32.load8_u (i32.add (i32.const 0x10000) (i32.add (local.get $i) (local.get $j))))
                          (i32.load8_u (i32.add (i32.const 0x18000) (i32.add (local.get $i) (local.get $j)))))
                (then
                  (if (i32.eqz (local.get $in)) (then
                    (if (i32.lt_u (local.get $runs) (i32.const 16)) (then
                      (i32.store8 (local.get $out) (i32.const 32))
                      (call $hex8 (i32.add (local.get $out) (i32.const 1)) (i32.add (local.get $i) (local.get $j)))
                      (i32.store8 (i32.add (local.get $out) (i32.const 9)) (i32.const 45))
                      (local.set $out (i32.add (local.get $out) (i32.const 10)))))
                    (local.set $in (i32.const 1)))))
                (else
                  (if (local.get $in) (then
                    (if (i32.lt_u (local.get $runs) (i32.const 16)) (then
                      (call $hex8 (local.get $out) (i32.add (local.get $i) (local.get $j)))
                      (local.set $out (i32.add (local.get $out) (i32.const 8)))))
                    (local.set $runs (i32.add (local.get $runs) (i32.const 1)))
                    (local.set $in (i32.const 0))))))
              (local.set $j (i32.add (local.get $j) (i32.const 1)))
              (br_if $byte (i32.lt_u (local.get $j) (i32.const 8))))))
        (local.set $i (i32.add (local.get $i) (i32.const 8)))
        (br $word)))
    (if (local.get $in) (then
      (if (i32.lt_u (local.get $runs) (i32.const 16)) (then
        (call $hex8 (local.get $out) (i32.const 0x4000))
        (local.set $out (i32.add (local.get $out) (i32.const 8)))))
      (local.set $runs (i32.add (local.get $runs) (i32.const 1)))))
    (call $hex8 (i32.const 0x412) (local.get $runs))
    (drop (call $proxy_log (i32.const 2) (i32.const 0x400) (i32.sub (local.get $out) (i32.const 0x400)))))

  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_foreign_function") (param i32 i32 i32) (call $drive (i32.const 8)))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32) (call $drive (i32.const 4)))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (call $drive (i32.const 100)) (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (call $drive (i32.const 0)) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (call $drive (i32.const 102)) (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (call $drive (i32.const 1)) (i32.const 0))
)
