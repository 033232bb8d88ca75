;; hostile.wat — ABI 0.2.1 module that calls hostcalls with hostile arguments.
;;
;; Purpose
;;   Every pointer/length the host reads or writes must be bounds-checked,
;;   including 32-bit overflow of ptr+len, and every enum argument range-checked.
;;   The host must answer with a status (INVALID_MEMORY_ACCESS = 6 for bad
;;   memory, BAD_ARGUMENT = 2 for out-of-range enums / malformed pair encodings)
;;   and must neither trap the module nor crash the server. Each case logs one
;;   INFO line "<case>=<status>" (decimal status, stable case names); a few
;;   "setup" cases make the following ones unambiguous and must report 0.
;;   The expected status of every case is in tests/wat/README.md.
;;
;; Where the cases run
;;   proxy_on_configure        cfg_*   (PLUGIN_CONFIGURATION must be non-empty)
;;   proxy_on_request_headers  all others except body_*
;;   proxy_on_request_body     body_*  (first body callback of each request only;
;;                                      send a request with a body, e.g. "hello")
;;   Each callback ends with a "hostile <callback> done" line, and returns
;;   Continue (on_configure returns 1).
;;
;; Conventions
;;   OOB      = 0xfffffff0 (far outside any memory this module has)
;;   HUGE     = 0xffffffff (as a length)
;;   wrap     = ptr 0xfffffff0 with len 0x20: ptr+len wraps to 0x10 in 32 bits
;;   straddle = starts inside memory but ends past its last byte
;;
;; Configuration
;;   Plugin configuration: any non-empty bytes, e.g. "hostile".

(module
  ;; ---- host functions (ABI 0.2.1); all parameters i32 except the two i64 metric values ----
  ;; proxy_log(level, message_data, message_size)
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  ;; proxy_get_header_map_value(map, key_data, key_size, return_value_data **, return_value_size *)
  (import "env" "proxy_get_header_map_value"
    (func $proxy_get_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  ;; proxy_add_header_map_value(map, key_data, key_size, value_data, value_size)
  (import "env" "proxy_add_header_map_value"
    (func $proxy_add_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  ;; proxy_replace_header_map_value(map, key_data, key_size, value_data, value_size)
  (import "env" "proxy_replace_header_map_value"
    (func $proxy_replace_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  ;; proxy_remove_header_map_value(map, key_data, key_size)
  (import "env" "proxy_remove_header_map_value"
    (func $proxy_remove_header_map_value (param i32 i32 i32) (result i32)))
  ;; proxy_get_header_map_pairs(map, return_pairs_data **, return_pairs_size *)
  (import "env" "proxy_get_header_map_pairs"
    (func $proxy_get_header_map_pairs (param i32 i32 i32) (result i32)))
  ;; proxy_set_header_map_pairs(map, pairs_data, pairs_size)
  (import "env" "proxy_set_header_map_pairs"
    (func $proxy_set_header_map_pairs (param i32 i32 i32) (result i32)))
  ;; proxy_get_header_map_size(map, return_size *)
  (import "env" "proxy_get_header_map_size"
    (func $proxy_get_header_map_size (param i32 i32) (result i32)))
  ;; proxy_get_buffer_bytes(buffer, start, max_size, return_data **, return_size *)
  (import "env" "proxy_get_buffer_bytes"
    (func $proxy_get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  ;; proxy_set_buffer_bytes(buffer, start, size, value_data, value_size)
  (import "env" "proxy_set_buffer_bytes"
    (func $proxy_set_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  ;; proxy_get_buffer_status(buffer, return_size *, return_flags *)
  (import "env" "proxy_get_buffer_status"
    (func $proxy_get_buffer_status (param i32 i32 i32) (result i32)))
  ;; proxy_continue_stream(stream_type)
  (import "env" "proxy_continue_stream" (func $proxy_continue_stream (param i32) (result i32)))
  ;; proxy_close_stream(stream_type)
  (import "env" "proxy_close_stream" (func $proxy_close_stream (param i32) (result i32)))
  ;; proxy_get_property(path_data, path_size, return_value_data **, return_value_size *)
  (import "env" "proxy_get_property"
    (func $proxy_get_property (param i32 i32 i32 i32) (result i32)))
  ;; proxy_set_shared_data(key_data, key_size, value_data, value_size, cas)
  (import "env" "proxy_set_shared_data"
    (func $proxy_set_shared_data (param i32 i32 i32 i32 i32) (result i32)))
  ;; proxy_get_shared_data(key_data, key_size, return_value_data **, return_value_size *, return_cas *)
  (import "env" "proxy_get_shared_data"
    (func $proxy_get_shared_data (param i32 i32 i32 i32 i32) (result i32)))
  ;; proxy_register_shared_queue(name_data, name_size, return_queue_id *)
  (import "env" "proxy_register_shared_queue"
    (func $proxy_register_shared_queue (param i32 i32 i32) (result i32)))
  ;; proxy_define_metric(metric_type, name_data, name_size, return_metric_id *)
  (import "env" "proxy_define_metric"
    (func $proxy_define_metric (param i32 i32 i32 i32) (result i32)))
  ;; proxy_get_metric(metric_id, return_value (uint64_t *))
  (import "env" "proxy_get_metric" (func $proxy_get_metric (param i32 i32) (result i32)))
  ;; proxy_increment_metric(metric_id, i64 delta)
  (import "env" "proxy_increment_metric" (func $proxy_increment_metric (param i32 i64) (result i32)))
  ;; proxy_record_metric(metric_id, i64 value)
  (import "env" "proxy_record_metric" (func $proxy_record_metric (param i32 i64) (result i32)))
  ;; proxy_http_call(upstream_data, upstream_size, headers_data, headers_size, body_data, body_size,
  ;;                 trailers_data, trailers_size, timeout_ms, return_call_id *)
  (import "env" "proxy_http_call"
    (func $proxy_http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  ;; proxy_send_local_response(status_code, details_data, details_size, body_data, body_size,
  ;;                           headers_data, headers_size, grpc_status)
  (import "env" "proxy_send_local_response"
    (func $proxy_send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  ;; proxy_get_current_time_nanoseconds(return_time (uint64_t *))
  (import "env" "proxy_get_current_time_nanoseconds"
    (func $proxy_get_current_time_nanoseconds (param i32) (result i32)))
  ;; proxy_get_log_level(return_log_level *)   (0.2.1 only)
  (import "env" "proxy_get_log_level" (func $proxy_get_log_level (param i32) (result i32)))
  ;; proxy_set_effective_context(context_id)
  (import "env" "proxy_set_effective_context"
    (func $proxy_set_effective_context (param i32) (result i32)))

  (memory (export "memory") 2)

  (func (export "proxy_abi_version_0_2_1"))

  ;; ---- return slots (written by the host) ----
  ;;   0x10 data pointer   0x14 size   0x18 cas / flags / id
  ;;   0x20 saved request-header pairs pointer   0x24 their size
  ;;   0x28 metric id of "hostile_counter"        0x30 time (8 bytes)

  ;; ---- fixtures (each slot 0x20 bytes; lengths in the comments) ----
  (data (i32.const 0x100) "hostile message")       ;; 15  MSG
  (data (i32.const 0x120) "x-hostile-probe")       ;; 15  probe header name
  (data (i32.const 0x140) "1")                     ;; 1   probe header value
  (data (i32.const 0x150) "request\00path")        ;; 12  property path request.path
  (data (i32.const 0x160) "hostile-key")           ;; 11  shared data key
  (data (i32.const 0x170) "v")                     ;; 1   shared data value
  (data (i32.const 0x180) "hostile_counter")       ;; 15  metric name (counter)
  (data (i32.const 0x1a0) "hostile_upstream")      ;; 16  http_call upstream
  (data (i32.const 0x1c0) "deny")                  ;; 4   local response body
  (data (i32.const 0x1e0) "hostile_gauge")         ;; 13  metric name (gauge)
  ;; serialized pairs (little-endian u32 count, (key_len, value_len) per pair, NUL-terminated bytes)
  (data (i32.const 0x200)                          ;; 18  valid: {"x-a": "1"}
    "\01\00\00\00" "\03\00\00\00" "\01\00\00\00" "x-a\00" "1\00")
  (data (i32.const 0x220)                          ;; 12  count 1000, data for one pair's sizes only
    "\e8\03\00\00" "\01\00\00\00" "\01\00\00\00")
  (data (i32.const 0x240)                          ;; 12  count 0xffffffff (count*8 overflows)
    "\ff\ff\ff\ff" "\01\00\00\00" "\01\00\00\00")
  (data (i32.const 0x260)                          ;; 16  key_len 0xfffffff0 points past the end
    "\01\00\00\00" "\f0\ff\ff\ff" "\01\00\00\00" "a\00b\00")
  (data (i32.const 0x280)                          ;; 16  value_len 100 points past the end
    "\01\00\00\00" "\01\00\00\00" "\64\00\00\00" "a\00b\00")
  (data (i32.const 0x2a0)                          ;; 14  {"a": "b"} without the NUL terminators
    "\01\00\00\00" "\01\00\00\00" "\01\00\00\00" "ab")
  (data (i32.const 0x2c0) "\01")                   ;; 1   a single non-zero byte
  (data (i32.const 0x2e0) "hostile configure done\00")
  (data (i32.const 0x300) "hostile request_headers done\00")
  (data (i32.const 0x320) "hostile request_body done\00")
  (data (i32.const 0x340) "=\00")

  ;; ---- case names: index N is the N-th NUL-terminated name ----
  (data (i32.const 0x1000)
    ;; on_request_headers
    "log_msg_oob\00"                        ;; 0
    "log_len_huge\00"                       ;; 1
    "log_ptr_len_wrap\00"                   ;; 2
    "log_straddle_end\00"                   ;; 3
    "log_level_99\00"                       ;; 4
    "hdr_add_probe\00"                      ;; 5  setup
    "hdr_get_key_oob\00"                    ;; 6
    "hdr_get_key_len_huge\00"               ;; 7
    "hdr_get_key_wrap\00"                   ;; 8
    "hdr_get_ret_ptr_oob\00"                ;; 9
    "hdr_get_ret_len_oob\00"                ;; 10
    "hdr_get_ret_straddle\00"               ;; 11
    "hdr_get_map_99\00"                     ;; 12
    "hdr_add_value_oob\00"                  ;; 13
    "hdr_add_map_99\00"                     ;; 14
    "hdr_replace_key_oob\00"                ;; 15
    "hdr_remove_key_oob\00"                 ;; 16
    "hdr_remove_map_99\00"                  ;; 17
    "pairs_get_ret_ptr_oob\00"              ;; 18
    "pairs_get_ret_len_oob\00"              ;; 19
    "pairs_get_map_99\00"                   ;; 20
    "pairs_size_ret_oob\00"                 ;; 21
    "pairs_size_map_99\00"                  ;; 22
    "pairs_set_ptr_oob\00"                  ;; 23
    "pairs_set_len_huge\00"                 ;; 24
    "pairs_set_count_gt_data\00"            ;; 25
    "pairs_set_count_huge\00"               ;; 26
    "pairs_set_key_len_past_end\00"         ;; 27
    "pairs_set_value_len_past_end\00"       ;; 28
    "pairs_set_missing_nul\00"              ;; 29
    "pairs_set_one_byte\00"                 ;; 30
    "pairs_set_map_99\00"                   ;; 31
    "pairs_save\00"                         ;; 32 setup
    "pairs_set_size0_nonnull\00"            ;; 33
    "pairs_set_restore\00"                  ;; 34 setup
    "buf_get_type_99\00"                    ;; 35
    "buf_set_type_99\00"                    ;; 36
    "buf_status_type_99\00"                 ;; 37
    "continue_stream_99\00"                 ;; 38
    "close_stream_99\00"                    ;; 39
    "prop_get_path_oob\00"                  ;; 40
    "prop_get_path_len_huge\00"             ;; 41
    "prop_get_ret_ptr_oob\00"               ;; 42
    "shared_set_key_oob\00"                 ;; 43
    "shared_set_value_oob\00"               ;; 44
    "shared_set_value_len_huge\00"          ;; 45
    "shared_set_probe\00"                   ;; 46 setup
    "shared_get_key_oob\00"                 ;; 47
    "shared_get_ret_ptr_oob\00"             ;; 48
    "shared_get_ret_cas_oob\00"             ;; 49
    "queue_register_name_oob\00"            ;; 50
    "metric_define_name_oob\00"             ;; 51
    "metric_define_type_99\00"              ;; 52
    "metric_define_ret_oob\00"              ;; 53
    "metric_define_probe\00"                ;; 54 setup
    "metric_get_ret_oob\00"                 ;; 55
    "metric_increment_negative_counter\00"  ;; 56
    "metric_record_unknown_id\00"           ;; 57
    "http_call_upstream_oob\00"             ;; 58
    "http_call_upstream_len_huge\00"        ;; 59
    "local_response_details_oob\00"         ;; 60
    "local_response_body_oob\00"            ;; 61
    "local_response_headers_oob\00"         ;; 62
    "local_response_headers_malformed\00"   ;; 63
    "time_ret_oob\00"                       ;; 64
    "time_ret_straddle\00"                  ;; 65
    "log_level_ret_oob\00"                  ;; 66
    "effective_context_unknown\00"          ;; 67
    ;; on_configure
    "cfg_get_ret_ptr_oob\00"                ;; 68
    "cfg_get_ret_len_oob\00"                ;; 69
    "cfg_get_ret_straddle\00"               ;; 70
    "cfg_status_ret_oob\00"                 ;; 71
    ;; on_request_body
    "body_get_ret_ptr_oob\00"               ;; 72
    "body_get_ret_len_oob\00"               ;; 73
    "body_get_range_wrap\00"                ;; 74
    "body_get_range_wrap_len\00"            ;; 75 (a length, not a status)
    "body_set_data_oob\00"                  ;; 76
    "body_set_data_len_huge\00"             ;; 77
    "body_set_data_wrap\00"                 ;; 78
    "body_status_ret_oob\00"                ;; 79
    "\00")                                  ;; end

  ;; context id whose request body was already tested (cases run once per request)
  (global $body_ctx (mut i32) (i32.const 0))

  ;; =====================================================================
  ;; Logging helpers (same block in every tests/wat module).
  ;; A line is built in the scratch area [0x400, 0x1000) and sent with
  ;; proxy_log(2 = INFO, 0x400, length). Digits are staged in [0x3f0, 0x400).
  ;; =====================================================================
  (global $cur (mut i32) (i32.const 0x400))

  ;; start a new line
  (func $begin (global.set $cur (i32.const 0x400)))

  ;; append $n bytes from $p (truncated at the end of the scratch area)
  (func $put (param $p i32) (param $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (br_if $done (i32.ge_u (global.get $cur) (i32.const 0x1000)))
        (i32.store8 (global.get $cur) (i32.load8_u (local.get $p)))
        (global.set $cur (i32.add (global.get $cur) (i32.const 1)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next))))

  ;; append a NUL-terminated string
  (func $puts (param $p i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (local.get $p))))
        (call $put (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next))))

  ;; append $v as an unsigned decimal number
  (func $putu (param $v i32)
    (local $d i32)
    (local.set $d (i32.const 0x400))
    (loop $digit
      (local.set $d (i32.sub (local.get $d) (i32.const 1)))
      (i32.store8 (local.get $d)
        (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $digit (local.get $v)))
    (call $put (local.get $d) (i32.sub (i32.const 0x400) (local.get $d))))

  ;; send the line at INFO (the returned status is ignored)
  (func $flush
    (drop (call $proxy_log (i32.const 2) (i32.const 0x400)
                (i32.sub (global.get $cur) (i32.const 0x400)))))

  ;; log a NUL-terminated string as one line
  (func $say (param $p i32)
    (call $begin) (call $puts (local.get $p)) (call $flush))

  ;; log "<prefix><ctx>"
  (func $say_ctx (param $prefix i32) (param $ctx i32)
    (call $begin) (call $puts (local.get $prefix)) (call $putu (local.get $ctx))
    (call $flush))

  ;; log "<prefix><ctx><label><value>"
  (func $say_ctx_kv (param $prefix i32) (param $ctx i32) (param $label i32) (param $v i32)
    (call $begin) (call $puts (local.get $prefix)) (call $putu (local.get $ctx))
    (call $puts (local.get $label)) (call $putu (local.get $v))
    (call $flush))
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

  ;; =====================================================================
  ;; Case reporting
  ;; =====================================================================

  ;; address of the $i-th NUL-terminated case name
  (func $case_name (param $i i32) (result i32)
    (local $p i32)
    (local.set $p (i32.const 0x1000))
    (block $found
      (loop $skip
        (br_if $found (i32.eqz (local.get $i)))
        (loop $ch
          (local.set $p (i32.add (local.get $p) (i32.const 1)))
          (br_if $ch (i32.load8_u (i32.sub (local.get $p) (i32.const 1)))))
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (br $skip)))
    (local.get $p))

  ;; logs "<case name>=<value>"
  (func $report (param $case i32) (param $value i32)
    (call $begin)
    (call $puts (call $case_name (local.get $case)))
    (call $puts (i32.const 0x340))
    (call $putu (local.get $value))
    (call $flush))

  ;; First address past the end of linear memory, for the "straddle" cases.
  ;; The host may call proxy_on_memory_allocate during the hostcall (to return a
  ;; value); if that grew memory, a slot computed from the old end would become
  ;; valid. So first make sure the heap has at least 64 KiB of headroom: the
  ;; small allocations of these cases then never grow memory.
  (func $mem_end (result i32)
    (if (i32.lt_u (i32.sub (i32.mul (memory.size) (i32.const 0x10000)) (global.get $heap))
                  (i32.const 0x10000))
      (then (drop (memory.grow (i32.const 1)))))
    (i32.mul (memory.size) (i32.const 0x10000)))

  ;; =====================================================================
  ;; Callbacks
  ;; =====================================================================
  (func (export "proxy_on_vm_start") (param $root i32) (param $size i32) (result i32)
    (i32.const 1))

  ;; PLUGIN_CONFIGURATION (7) is readable here, so the return-pointer checks are unambiguous.
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    ;; 68 cfg_get_ret_ptr_oob: return_data pointer far out of bounds                 -> 6
    (call $report (i32.const 68)
      (call $proxy_get_buffer_bytes (i32.const 7) (i32.const 0) (local.get $size)
            (i32.const 0xfffffff0) (i32.const 0x14)))
    ;; 69 cfg_get_ret_len_oob: return_size pointer far out of bounds                 -> 6
    (call $report (i32.const 69)
      (call $proxy_get_buffer_bytes (i32.const 7) (i32.const 0) (local.get $size)
            (i32.const 0x10) (i32.const 0xfffffff0)))
    ;; 70 cfg_get_ret_straddle: 4-byte return_data slot at mem_end-2                 -> 6
    (call $report (i32.const 70)
      (call $proxy_get_buffer_bytes (i32.const 7) (i32.const 0) (local.get $size)
            (i32.sub (call $mem_end) (i32.const 2)) (i32.const 0x14)))
    ;; 71 cfg_status_ret_oob: get_buffer_status with return_size out of bounds       -> 6
    (call $report (i32.const 71)
      (call $proxy_get_buffer_status (i32.const 7) (i32.const 0xfffffff0) (i32.const 0x18)))
    (call $say (i32.const 0x2e0))                          ;; "hostile configure done"
    (i32.const 1))

  (func (export "proxy_on_request_headers")
        (param $ctx i32) (param $num_headers i32) (param $eos i32) (result i32)
    ;; ---------------- proxy_log ----------------
    ;; 0 log_msg_oob: message pointer out of bounds                                   -> 6
    (call $report (i32.const 0)
      (call $proxy_log (i32.const 2) (i32.const 0xfffffff0) (i32.const 16)))
    ;; 1 log_len_huge: valid pointer, length 0xffffffff                               -> 6
    (call $report (i32.const 1)
      (call $proxy_log (i32.const 2) (i32.const 0x100) (i32.const 0xffffffff)))
    ;; 2 log_ptr_len_wrap: 0xfffffff0 + 0x20 wraps to 0x10 in 32 bits                 -> 6
    (call $report (i32.const 2)
      (call $proxy_log (i32.const 2) (i32.const 0xfffffff0) (i32.const 0x20)))
    ;; 3 log_straddle_end: 8 bytes starting 4 bytes before the end of memory          -> 6
    (call $report (i32.const 3)
      (call $proxy_log (i32.const 2) (i32.sub (call $mem_end) (i32.const 4)) (i32.const 8)))
    ;; 4 log_level_99: valid message, log level 99                                    -> 2
    (call $report (i32.const 4)
      (call $proxy_log (i32.const 99) (i32.const 0x100) (i32.const 15)))

    ;; ---------------- header map values ----------------
    ;; 5 hdr_add_probe (setup): add "x-hostile-probe: 1" so later reads find a value  -> 0
    (call $report (i32.const 5)
      (call $proxy_add_header_map_value (i32.const 0)
            (i32.const 0x120) (i32.const 15) (i32.const 0x140) (i32.const 1)))
    ;; 6 hdr_get_key_oob: key pointer out of bounds                                   -> 6
    (call $report (i32.const 6)
      (call $proxy_get_header_map_value (i32.const 0)
            (i32.const 0xfffffff0) (i32.const 16) (i32.const 0x10) (i32.const 0x14)))
    ;; 7 hdr_get_key_len_huge: valid key pointer, key length 0xffffffff               -> 6
    (call $report (i32.const 7)
      (call $proxy_get_header_map_value (i32.const 0)
            (i32.const 0x120) (i32.const 0xffffffff) (i32.const 0x10) (i32.const 0x14)))
    ;; 8 hdr_get_key_wrap: key 0xfffffff0 + 0x20 wraps                                -> 6
    (call $report (i32.const 8)
      (call $proxy_get_header_map_value (i32.const 0)
            (i32.const 0xfffffff0) (i32.const 0x20) (i32.const 0x10) (i32.const 0x14)))
    ;; 9 hdr_get_ret_ptr_oob: existing key, return_value_data pointer out of bounds   -> 6
    (call $report (i32.const 9)
      (call $proxy_get_header_map_value (i32.const 0)
            (i32.const 0x120) (i32.const 15) (i32.const 0xfffffff0) (i32.const 0x14)))
    ;; 10 hdr_get_ret_len_oob: existing key, return_value_size pointer out of bounds  -> 6
    (call $report (i32.const 10)
      (call $proxy_get_header_map_value (i32.const 0)
            (i32.const 0x120) (i32.const 15) (i32.const 0x10) (i32.const 0xfffffff0)))
    ;; 11 hdr_get_ret_straddle: existing key, 4-byte slot at mem_end-2               -> 6
    (call $report (i32.const 11)
      (call $proxy_get_header_map_value (i32.const 0)
            (i32.const 0x120) (i32.const 15)
            (i32.sub (call $mem_end) (i32.const 2)) (i32.const 0x14)))
    ;; 12 hdr_get_map_99: map type 99                                                 -> 2
    (call $report (i32.const 12)
      (call $proxy_get_header_map_value (i32.const 99)
            (i32.const 0x120) (i32.const 15) (i32.const 0x10) (i32.const 0x14)))
    ;; 13 hdr_add_value_oob: valid key, value pointer out of bounds                   -> 6
    (call $report (i32.const 13)
      (call $proxy_add_header_map_value (i32.const 0)
            (i32.const 0x120) (i32.const 15) (i32.const 0xfffffff0) (i32.const 16)))
    ;; 14 hdr_add_map_99: map type 99                                                 -> 2
    (call $report (i32.const 14)
      (call $proxy_add_header_map_value (i32.const 99)
            (i32.const 0x120) (i32.const 15) (i32.const 0x140) (i32.const 1)))
    ;; 15 hdr_replace_key_oob: key pointer out of bounds                              -> 6
    (call $report (i32.const 15)
      (call $proxy_replace_header_map_value (i32.const 0)
            (i32.const 0xfffffff0) (i32.const 16) (i32.const 0x140) (i32.const 1)))
    ;; 16 hdr_remove_key_oob: key pointer out of bounds                               -> 6
    (call $report (i32.const 16)
      (call $proxy_remove_header_map_value (i32.const 0) (i32.const 0xfffffff0) (i32.const 16)))
    ;; 17 hdr_remove_map_99: map type 99                                              -> 2
    (call $report (i32.const 17)
      (call $proxy_remove_header_map_value (i32.const 99) (i32.const 0x120) (i32.const 15)))

    ;; ---------------- header map pairs ----------------
    ;; 18 pairs_get_ret_ptr_oob: return_pairs_data pointer out of bounds             -> 6
    (call $report (i32.const 18)
      (call $proxy_get_header_map_pairs (i32.const 0) (i32.const 0xfffffff0) (i32.const 0x14)))
    ;; 19 pairs_get_ret_len_oob: return_pairs_size pointer out of bounds             -> 6
    (call $report (i32.const 19)
      (call $proxy_get_header_map_pairs (i32.const 0) (i32.const 0x10) (i32.const 0xfffffff0)))
    ;; 20 pairs_get_map_99: map type 99                                               -> 2
    (call $report (i32.const 20)
      (call $proxy_get_header_map_pairs (i32.const 99) (i32.const 0x10) (i32.const 0x14)))
    ;; 21 pairs_size_ret_oob: get_header_map_size with return pointer out of bounds  -> 6
    (call $report (i32.const 21)
      (call $proxy_get_header_map_size (i32.const 0) (i32.const 0xfffffff0)))
    ;; 22 pairs_size_map_99: map type 99                                              -> 2
    (call $report (i32.const 22)
      (call $proxy_get_header_map_size (i32.const 99) (i32.const 0x14)))
    ;; 23 pairs_set_ptr_oob: pairs pointer out of bounds                              -> 6
    (call $report (i32.const 23)
      (call $proxy_set_header_map_pairs (i32.const 0) (i32.const 0xfffffff0) (i32.const 16)))
    ;; 24 pairs_set_len_huge: valid pairs pointer, size 0xffffffff                    -> 6
    (call $report (i32.const 24)
      (call $proxy_set_header_map_pairs (i32.const 0) (i32.const 0x200) (i32.const 0xffffffff)))
    ;; 25 pairs_set_count_gt_data: count 1000 but only 12 bytes                       -> 2
    (call $report (i32.const 25)
      (call $proxy_set_header_map_pairs (i32.const 0) (i32.const 0x220) (i32.const 12)))
    ;; 26 pairs_set_count_huge: count 0xffffffff (count*8 overflows 32 bits)          -> 2
    (call $report (i32.const 26)
      (call $proxy_set_header_map_pairs (i32.const 0) (i32.const 0x240) (i32.const 12)))
    ;; 27 pairs_set_key_len_past_end: key_len 0xfffffff0 in a 16-byte buffer         -> 2
    (call $report (i32.const 27)
      (call $proxy_set_header_map_pairs (i32.const 0) (i32.const 0x260) (i32.const 16)))
    ;; 28 pairs_set_value_len_past_end: value_len 100 in a 16-byte buffer            -> 2
    (call $report (i32.const 28)
      (call $proxy_set_header_map_pairs (i32.const 0) (i32.const 0x280) (i32.const 16)))
    ;; 29 pairs_set_missing_nul: {"a":"b"} without NUL terminators (14 of 16 bytes)   -> 2
    (call $report (i32.const 29)
      (call $proxy_set_header_map_pairs (i32.const 0) (i32.const 0x2a0) (i32.const 14)))
    ;; 30 pairs_set_one_byte: a single 0x01 byte (too short for the count)           -> 2
    (call $report (i32.const 30)
      (call $proxy_set_header_map_pairs (i32.const 0) (i32.const 0x2c0) (i32.const 1)))
    ;; 31 pairs_set_map_99: valid pairs, map type 99                                  -> 2
    (call $report (i32.const 31)
      (call $proxy_set_header_map_pairs (i32.const 99) (i32.const 0x200) (i32.const 18)))
    ;; 32 pairs_save (setup): keep the current request headers to restore them        -> 0
    (i32.store (i32.const 0x20) (i32.const 0))
    (i32.store (i32.const 0x24) (i32.const 0))
    (call $report (i32.const 32)
      (call $proxy_get_header_map_pairs (i32.const 0) (i32.const 0x20) (i32.const 0x24)))
    ;; 33 pairs_set_size0_nonnull: non-null pointer, size 0. Size 0 is the spec's
    ;;    empty map and reads no memory, so the host must accept it                   -> 0
    (call $report (i32.const 33)
      (call $proxy_set_header_map_pairs (i32.const 0) (i32.const 0x200) (i32.const 0)))
    ;; 34 pairs_set_restore (setup): put the saved request headers back               -> 0
    (call $report (i32.const 34)
      (call $proxy_set_header_map_pairs (i32.const 0)
            (i32.load (i32.const 0x20)) (i32.load (i32.const 0x24))))

    ;; ---------------- buffers: type range ----------------
    ;; 35 buf_get_type_99: buffer type 99                                             -> 2
    (call $report (i32.const 35)
      (call $proxy_get_buffer_bytes (i32.const 99) (i32.const 0) (i32.const 16)
            (i32.const 0x10) (i32.const 0x14)))
    ;; 36 buf_set_type_99: buffer type 99                                             -> 2
    (call $report (i32.const 36)
      (call $proxy_set_buffer_bytes (i32.const 99) (i32.const 0) (i32.const 0)
            (i32.const 0x100) (i32.const 4)))
    ;; 37 buf_status_type_99: buffer type 99                                          -> 2
    (call $report (i32.const 37)
      (call $proxy_get_buffer_status (i32.const 99) (i32.const 0x14) (i32.const 0x18)))

    ;; ---------------- streams: type range ----------------
    ;; 38 continue_stream_99: stream type 99                                          -> 2
    (call $report (i32.const 38) (call $proxy_continue_stream (i32.const 99)))
    ;; 39 close_stream_99: stream type 99                                             -> 2
    (call $report (i32.const 39) (call $proxy_close_stream (i32.const 99)))

    ;; ---------------- properties ----------------
    ;; 40 prop_get_path_oob: path pointer out of bounds                               -> 6
    (call $report (i32.const 40)
      (call $proxy_get_property (i32.const 0xfffffff0) (i32.const 16)
            (i32.const 0x10) (i32.const 0x14)))
    ;; 41 prop_get_path_len_huge: valid path pointer, length 0xffffffff               -> 6
    (call $report (i32.const 41)
      (call $proxy_get_property (i32.const 0x150) (i32.const 0xffffffff)
            (i32.const 0x10) (i32.const 0x14)))
    ;; 42 prop_get_ret_ptr_oob: "request.path" (exists), return pointer out of bounds -> 6
    (call $report (i32.const 42)
      (call $proxy_get_property (i32.const 0x150) (i32.const 12)
            (i32.const 0xfffffff0) (i32.const 0x14)))

    ;; ---------------- shared data ----------------
    ;; 43 shared_set_key_oob: key pointer out of bounds                               -> 6
    (call $report (i32.const 43)
      (call $proxy_set_shared_data (i32.const 0xfffffff0) (i32.const 16)
            (i32.const 0x170) (i32.const 1) (i32.const 0)))
    ;; 44 shared_set_value_oob: value pointer out of bounds                           -> 6
    (call $report (i32.const 44)
      (call $proxy_set_shared_data (i32.const 0x160) (i32.const 11)
            (i32.const 0xfffffff0) (i32.const 16) (i32.const 0)))
    ;; 45 shared_set_value_len_huge: valid value pointer, length 0xffffffff          -> 6
    (call $report (i32.const 45)
      (call $proxy_set_shared_data (i32.const 0x160) (i32.const 11)
            (i32.const 0x170) (i32.const 0xffffffff) (i32.const 0)))
    ;; 46 shared_set_probe (setup): "hostile-key" = "v", cas 0                        -> 0
    (call $report (i32.const 46)
      (call $proxy_set_shared_data (i32.const 0x160) (i32.const 11)
            (i32.const 0x170) (i32.const 1) (i32.const 0)))
    ;; 47 shared_get_key_oob: key pointer out of bounds                               -> 6
    (call $report (i32.const 47)
      (call $proxy_get_shared_data (i32.const 0xfffffff0) (i32.const 16)
            (i32.const 0x10) (i32.const 0x14) (i32.const 0x18)))
    ;; 48 shared_get_ret_ptr_oob: existing key, return_value_data out of bounds      -> 6
    (call $report (i32.const 48)
      (call $proxy_get_shared_data (i32.const 0x160) (i32.const 11)
            (i32.const 0xfffffff0) (i32.const 0x14) (i32.const 0x18)))
    ;; 49 shared_get_ret_cas_oob: existing key, return_cas out of bounds             -> 6
    (call $report (i32.const 49)
      (call $proxy_get_shared_data (i32.const 0x160) (i32.const 11)
            (i32.const 0x10) (i32.const 0x14) (i32.const 0xfffffff0)))

    ;; ---------------- shared queues ----------------
    ;; 50 queue_register_name_oob: name pointer out of bounds                         -> 6
    (call $report (i32.const 50)
      (call $proxy_register_shared_queue (i32.const 0xfffffff0) (i32.const 16) (i32.const 0x18)))

    ;; ---------------- metrics ----------------
    ;; 51 metric_define_name_oob: name pointer out of bounds                          -> 6
    (call $report (i32.const 51)
      (call $proxy_define_metric (i32.const 0) (i32.const 0xfffffff0) (i32.const 16)
            (i32.const 0x18)))
    ;; 52 metric_define_type_99: metric type 99                                       -> 2
    (call $report (i32.const 52)
      (call $proxy_define_metric (i32.const 99) (i32.const 0x180) (i32.const 15)
            (i32.const 0x18)))
    ;; 53 metric_define_ret_oob: gauge "hostile_gauge", return id out of bounds      -> 6
    (call $report (i32.const 53)
      (call $proxy_define_metric (i32.const 1) (i32.const 0x1e0) (i32.const 13)
            (i32.const 0xfffffff0)))
    ;; 54 metric_define_probe (setup): counter "hostile_counter", id -> 0x28         -> 0
    (i32.store (i32.const 0x28) (i32.const 0))
    (call $report (i32.const 54)
      (call $proxy_define_metric (i32.const 0) (i32.const 0x180) (i32.const 15)
            (i32.const 0x28)))
    ;; 55 metric_get_ret_oob: that counter, return value (8 bytes) out of bounds     -> 6
    (call $report (i32.const 55)
      (call $proxy_get_metric (i32.load (i32.const 0x28)) (i32.const 0xfffffff0)))
    ;; 56 metric_increment_negative_counter: counter += -1                            -> 2
    (call $report (i32.const 56)
      (call $proxy_increment_metric (i32.load (i32.const 0x28)) (i64.const -1)))
    ;; 57 metric_record_unknown_id: id 0x7ffffff0 was never defined                   -> 1
    (call $report (i32.const 57)
      (call $proxy_record_metric (i32.const 0x7ffffff0) (i64.const 5)))

    ;; ---------------- http_call ----------------
    ;; 58 http_call_upstream_oob: upstream name pointer out of bounds                 -> 6
    (call $report (i32.const 58)
      (call $proxy_http_call
            (i32.const 0xfffffff0) (i32.const 16)         ;; upstream
            (i32.const 0x200) (i32.const 18)              ;; headers
            (i32.const 0) (i32.const 0)                   ;; body
            (i32.const 0) (i32.const 0)                   ;; trailers
            (i32.const 1000) (i32.const 0x18)))           ;; timeout, return id
    ;; 59 http_call_upstream_len_huge: upstream length 0xffffffff                     -> 6
    (call $report (i32.const 59)
      (call $proxy_http_call
            (i32.const 0x1a0) (i32.const 0xffffffff)
            (i32.const 0x200) (i32.const 18)
            (i32.const 0) (i32.const 0)
            (i32.const 0) (i32.const 0)
            (i32.const 1000) (i32.const 0x18)))

    ;; ---------------- send_local_response (none of these may send anything) ----------------
    ;; 60 local_response_details_oob: details pointer out of bounds                   -> 6
    (call $report (i32.const 60)
      (call $proxy_send_local_response (i32.const 403)
            (i32.const 0xfffffff0) (i32.const 16)         ;; details
            (i32.const 0x1c0) (i32.const 4)               ;; body "deny"
            (i32.const 0) (i32.const 0)                   ;; headers: empty
            (i32.const -1)))                              ;; grpc_status: none
    ;; 61 local_response_body_oob: body pointer out of bounds                         -> 6
    (call $report (i32.const 61)
      (call $proxy_send_local_response (i32.const 403)
            (i32.const 0) (i32.const 0)
            (i32.const 0xfffffff0) (i32.const 16)
            (i32.const 0) (i32.const 0)
            (i32.const -1)))
    ;; 62 local_response_headers_oob: headers pointer out of bounds                   -> 6
    (call $report (i32.const 62)
      (call $proxy_send_local_response (i32.const 403)
            (i32.const 0) (i32.const 0)
            (i32.const 0x1c0) (i32.const 4)
            (i32.const 0xfffffff0) (i32.const 16)
            (i32.const -1)))
    ;; 63 local_response_headers_malformed: headers count 1000 in 12 bytes           -> 2
    (call $report (i32.const 63)
      (call $proxy_send_local_response (i32.const 403)
            (i32.const 0) (i32.const 0)
            (i32.const 0x1c0) (i32.const 4)
            (i32.const 0x220) (i32.const 12)
            (i32.const -1)))

    ;; ---------------- clock, log level, effective context ----------------
    ;; 64 time_ret_oob: return_time pointer out of bounds                             -> 6
    (call $report (i32.const 64)
      (call $proxy_get_current_time_nanoseconds (i32.const 0xfffffff0)))
    ;; 65 time_ret_straddle: 8-byte slot starting 4 bytes before the end of memory    -> 6
    (call $report (i32.const 65)
      (call $proxy_get_current_time_nanoseconds (i32.sub (call $mem_end) (i32.const 4))))
    ;; 66 log_level_ret_oob: return_log_level pointer out of bounds                   -> 6
    (call $report (i32.const 66)
      (call $proxy_get_log_level (i32.const 0xfffffff0)))
    ;; 67 effective_context_unknown: context id 0x7fffffff does not exist             -> 2
    (call $report (i32.const 67)
      (call $proxy_set_effective_context (i32.const 0x7fffffff)))

    (call $say (i32.const 0x300))                          ;; "hostile request_headers done"
    (i32.const 0))                                         ;; Continue

  ;; HTTP_REQUEST_BODY (0) is available and writable here. Runs once per request.
  (func (export "proxy_on_request_body")
        (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (if (i32.eq (global.get $body_ctx) (local.get $ctx))
      (then (return (i32.const 0))))
    (global.set $body_ctx (local.get $ctx))
    ;; 72 body_get_ret_ptr_oob: return_data pointer out of bounds                     -> 6
    (call $report (i32.const 72)
      (call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (local.get $size)
            (i32.const 0xfffffff0) (i32.const 0x14)))
    ;; 73 body_get_ret_len_oob: return_size pointer out of bounds                     -> 6
    (call $report (i32.const 73)
      (call $proxy_get_buffer_bytes (i32.const 0) (i32.const 0) (local.get $size)
            (i32.const 0x10) (i32.const 0xfffffff0)))
    ;; 74 body_get_range_wrap: start 1, max_size 0xffffffff (start+max wraps in 32 bits).
    ;;    The host must not wrap: it clamps to the buffer and returns OK              -> 0
    (i32.store (i32.const 0x14) (i32.const 0xffffffff))
    (call $report (i32.const 74)
      (call $proxy_get_buffer_bytes (i32.const 0) (i32.const 1) (i32.const 0xffffffff)
            (i32.const 0x10) (i32.const 0x14)))
    ;; 75 body_get_range_wrap_len: the size returned by case 74                       -> body_size - 1
    (call $report (i32.const 75) (i32.load (i32.const 0x14)))
    ;; 76 body_set_data_oob: data pointer out of bounds                               -> 6
    (call $report (i32.const 76)
      (call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0)
            (i32.const 0xfffffff0) (i32.const 16)))
    ;; 77 body_set_data_len_huge: valid data pointer, length 0xffffffff               -> 6
    (call $report (i32.const 77)
      (call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0)
            (i32.const 0x100) (i32.const 0xffffffff)))
    ;; 78 body_set_data_wrap: data 0xfffffff0 + 0x20 wraps                            -> 6
    (call $report (i32.const 78)
      (call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0)
            (i32.const 0xfffffff0) (i32.const 0x20)))
    ;; 79 body_status_ret_oob: get_buffer_status with return_size out of bounds       -> 6
    (call $report (i32.const 79)
      (call $proxy_get_buffer_status (i32.const 0) (i32.const 0xfffffff0) (i32.const 0x18)))
    (call $say (i32.const 0x320))                          ;; "hostile request_body done"
    (i32.const 0))                                         ;; Continue
)
