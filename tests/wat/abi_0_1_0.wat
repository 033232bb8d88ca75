;; abi_0_1_0.wat — a Proxy-Wasm ABI 0.1.0 module.
;;
;; Purpose
;;   Checks that the host detects the 0.1.0 marker, links the 0.1.0-only
;;   hostcalls (proxy_get_configuration, proxy_continue_request,
;;   proxy_continue_response), binds the 0.1.0 callback shapes (header
;;   callbacks with 2 arguments, no end_of_stream), and keeps the 0.1.0
;;   semantics of a missing header: OK with an empty value (0.2.x: NOT_FOUND).
;;   proxy_continue_request/response are imported (so linking must provide
;;   them with the shape () -> i32) but never called.
;;
;; Configuration
;;   VM configuration: any bytes (logged as "vm_config=<bytes>").
;;   Plugin configuration: any bytes (logged as "config=<bytes>"), e.g. "abi-0.1.0".
;;
;; What the test should observe (INFO lines, in this order for one request)
;;   on_context_create ctx=<root> parent=0
;;   on_vm_start ctx=<root> size=<n>
;;   vm_config=<VM configuration bytes>
;;   on_configure ctx=<root> size=<n>
;;   config=<plugin configuration bytes>
;;   on_context_create ctx=<id> parent=<root>
;;   on_request_headers ctx=<id>
;;   missing status=0 len=0            (0.1.0: OK + empty value for x-missing)
;;   add_request_header status=0       (upstream receives "x-abi: 0.1.0")
;;   on_response_headers ctx=<id>
;;   add_response_header status=0      (client receives "x-abi: 0.1.0")
;;   on_done ctx=<id>
;;   on_log ctx=<id>
;;   on_delete ctx=<id>
;;   If proxy_get_configuration fails, "vm_config status=<n>" / "config status=<n>"
;;   replaces the value line. "len=4294967295" means the host did not write the
;;   size slot.

(module
  ;; ---- host functions (ABI 0.1.0) ----
  ;; proxy_log(level, message_data, message_size) -> status
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  ;; proxy_get_configuration(return_value_data **, return_value_size *) -> status
  (import "env" "proxy_get_configuration"
    (func $proxy_get_configuration (param i32 i32) (result i32)))
  ;; proxy_continue_request() -> status   (0.1.0 only; imported, not called)
  (import "env" "proxy_continue_request" (func $proxy_continue_request (result i32)))
  ;; proxy_continue_response() -> status  (0.1.0 only; imported, not called)
  (import "env" "proxy_continue_response" (func $proxy_continue_response (result i32)))
  ;; proxy_get_header_map_value(map, key_data, key_size, return_value_data **, return_value_size *) -> status
  (import "env" "proxy_get_header_map_value"
    (func $proxy_get_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  ;; proxy_add_header_map_value(map, key_data, key_size, value_data, value_size) -> status
  (import "env" "proxy_add_header_map_value"
    (func $proxy_add_header_map_value (param i32 i32 i32 i32 i32) (result i32)))

  ;; page 0: return slots, static data, scratch; page 1..: bump heap
  (memory (export "memory") 2)

  ;; ABI marker (never called)
  (func (export "proxy_abi_version_0_1_0"))

  ;; return slots written by the host
  ;;   0x10: pointer (uint8_t *)   0x14: size (size_t)

  ;; ---- constant strings (NUL-terminated; each slot is 0x20 bytes) ----
  (data (i32.const 0x100) "on_context_create ctx=\00")
  (data (i32.const 0x120) " parent=\00")
  (data (i32.const 0x140) "on_vm_start ctx=\00")
  (data (i32.const 0x160) "on_configure ctx=\00")
  (data (i32.const 0x180) " size=\00")
  (data (i32.const 0x1a0) "on_request_headers ctx=\00")
  (data (i32.const 0x1c0) "on_response_headers ctx=\00")
  (data (i32.const 0x1e0) "on_done ctx=\00")
  (data (i32.const 0x200) "on_log ctx=\00")
  (data (i32.const 0x220) "on_delete ctx=\00")
  (data (i32.const 0x240) "vm_config=\00")
  (data (i32.const 0x260) "config=\00")
  (data (i32.const 0x280) "config status=\00")
  (data (i32.const 0x2a0) "missing status=\00")
  (data (i32.const 0x2c0) " len=\00")
  (data (i32.const 0x2e0) "add_request_header status=\00")
  (data (i32.const 0x300) "add_response_header status=\00")
  (data (i32.const 0x320) "x-missing\00")   ;; key, 9 bytes
  (data (i32.const 0x340) "x-abi\00")       ;; key, 5 bytes
  (data (i32.const 0x360) "0.1.0\00")       ;; value, 5 bytes
  (data (i32.const 0x380) "vm_config status=\00")

  ;; =====================================================================
  ;; Logging helpers (same block in every tests/wat module).
  ;; A line is built in the scratch area [0x400, 0x1000) and sent with
  ;; proxy_log(2 = INFO, 0x400, length). Digits are staged in [0x3f0, 0x400).
  ;; =====================================================================
  (global $cur (mut i32) (i32.const 0x400))

  (func $begin (global.set $cur (i32.const 0x400)))

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

  (func $puts (param $p i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (local.get $p))))
        (call $put (local.get $p) (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next))))

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

  (func $flush
    (drop (call $proxy_log (i32.const 2) (i32.const 0x400)
                (i32.sub (global.get $cur) (i32.const 0x400)))))

  ;; log "<prefix><ctx>"
  (func $say_ctx (param $prefix i32) (param $ctx i32)
    (call $begin) (call $puts (local.get $prefix)) (call $putu (local.get $ctx))
    (call $flush))

  ;; log "<prefix><ctx><label><value>"
  (func $say_ctx_kv (param $prefix i32) (param $ctx i32) (param $label i32) (param $v i32)
    (call $begin) (call $puts (local.get $prefix)) (call $putu (local.get $ctx))
    (call $puts (local.get $label)) (call $putu (local.get $v))
    (call $flush))

  ;; log "<prefix><status>"
  (func $say_status (param $prefix i32) (param $status i32)
    (call $begin) (call $puts (local.get $prefix)) (call $putu (local.get $status))
    (call $flush))

  ;; =====================================================================
  ;; Bump allocator (same block in every tests/wat module).
  ;; =====================================================================
  (global $heap (mut i32) (i32.const 0x10000))

  (func $alloc (param $size i32) (result i32)
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

  ;; Older (0.1.0-era) SDKs exported "malloc"; export the same allocator under both names.
  (export "proxy_on_memory_allocate" (func $alloc))
  (export "malloc" (func $alloc))

  ;; Reads the current configuration with proxy_get_configuration and logs
  ;; "<value_prefix><bytes>" on OK, or "<status_prefix><status>" otherwise.
  (func $log_configuration (param $value_prefix i32) (param $status_prefix i32)
    (local $status i32)
    (i32.store (i32.const 0x10) (i32.const 0))
    (i32.store (i32.const 0x14) (i32.const 0))
    (local.set $status (call $proxy_get_configuration (i32.const 0x10) (i32.const 0x14)))
    (if (i32.eqz (local.get $status))
      (then
        (call $begin)
        (call $puts (local.get $value_prefix))
        (call $put (i32.load (i32.const 0x10)) (i32.load (i32.const 0x14)))
        (call $flush))
      (else
        (call $say_status (local.get $status_prefix) (local.get $status)))))

  ;; =====================================================================
  ;; Callbacks (0.1.0 shapes)
  ;; =====================================================================
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32)
    (call $say_ctx_kv (i32.const 0x100) (local.get $ctx) (i32.const 0x120) (local.get $parent)))

  (func (export "proxy_on_vm_start") (param $root i32) (param $size i32) (result i32)
    (call $say_ctx_kv (i32.const 0x140) (local.get $root) (i32.const 0x180) (local.get $size))
    ;; 0.1.0: proxy_get_configuration returns the VM configuration here
    (call $log_configuration (i32.const 0x240) (i32.const 0x380))   ;; "vm_config=..."
    (i32.const 1))

  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (call $say_ctx_kv (i32.const 0x160) (local.get $root) (i32.const 0x180) (local.get $size))
    ;; 0.1.0: proxy_get_configuration returns the plugin configuration here
    (call $log_configuration (i32.const 0x260) (i32.const 0x280))   ;; "config=..."
    (i32.const 1))

  ;; 0.1.0: (context_id, num_headers) -> action; no end_of_stream argument
  (func (export "proxy_on_request_headers")
        (param $ctx i32) (param $num_headers i32) (result i32)
    (local $status i32)
    (call $say_ctx (i32.const 0x1a0) (local.get $ctx))              ;; "on_request_headers ctx=N"
    ;; read the missing header "x-missing"; the size slot is pre-set to
    ;; 0xffffffff so "host did not write it" is visible in the log
    (i32.store (i32.const 0x10) (i32.const 0))
    (i32.store (i32.const 0x14) (i32.const 0xffffffff))
    (local.set $status
      (call $proxy_get_header_map_value
        (i32.const 0)                                ;; HTTP_REQUEST_HEADERS
        (i32.const 0x320) (i32.const 9)              ;; "x-missing"
        (i32.const 0x10) (i32.const 0x14)))
    ;; "missing status=<s> len=<n>"
    (call $begin)
    (call $puts (i32.const 0x2a0)) (call $putu (local.get $status))
    (call $puts (i32.const 0x2c0)) (call $putu (i32.load (i32.const 0x14)))
    (call $flush)
    ;; add "x-abi: 0.1.0" to the request headers
    (call $say_status (i32.const 0x2e0)                             ;; "add_request_header status=<s>"
      (call $proxy_add_header_map_value
        (i32.const 0)                                ;; HTTP_REQUEST_HEADERS
        (i32.const 0x340) (i32.const 5)              ;; "x-abi"
        (i32.const 0x360) (i32.const 5)))            ;; "0.1.0"
    (i32.const 0))                                   ;; Continue

  ;; 0.1.0: (context_id, num_headers) -> action
  (func (export "proxy_on_response_headers")
        (param $ctx i32) (param $num_headers i32) (result i32)
    (call $say_ctx (i32.const 0x1c0) (local.get $ctx))              ;; "on_response_headers ctx=N"
    (call $say_status (i32.const 0x300)                             ;; "add_response_header status=<s>"
      (call $proxy_add_header_map_value
        (i32.const 2)                                ;; HTTP_RESPONSE_HEADERS
        (i32.const 0x340) (i32.const 5)              ;; "x-abi"
        (i32.const 0x360) (i32.const 5)))            ;; "0.1.0"
    (i32.const 0))                                   ;; Continue

  (func (export "proxy_on_done") (param $ctx i32) (result i32)
    (call $say_ctx (i32.const 0x1e0) (local.get $ctx))
    (i32.const 1))

  (func (export "proxy_on_log") (param $ctx i32)
    (call $say_ctx (i32.const 0x200) (local.get $ctx)))

  (func (export "proxy_on_delete") (param $ctx i32)
    (call $say_ctx (i32.const 0x220) (local.get $ctx)))
)
