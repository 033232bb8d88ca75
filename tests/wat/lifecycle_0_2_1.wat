;; lifecycle_0_2_1.wat — Proxy-Wasm ABI 0.2.1 lifecycle recorder.
;;
;; Purpose
;;   Logs one INFO line from every callback it exports, so a test can assert
;;   the exact start-up order and the exact per-context callback order:
;;     _initialize, main                      (start-up, once per instance)
;;     on_context_create(root, 0), on_vm_start, on_configure
;;     on_context_create(stream, root), on_request_headers, [on_request_body...],
;;     [on_request_trailers], on_response_headers, [on_response_body...],
;;     [on_response_trailers], on_done, on_log, on_delete
;;   The first word of every line is the callback name; the key=value fields
;;   after it carry the arguments (context ids, sizes, end_of_stream).
;;
;; What the test should observe (exact lines; <n> are decimal numbers)
;;   _initialize
;;   main
;;   on_context_create ctx=<id> parent=<pid>
;;   on_vm_start ctx=<root> size=<vm config size>
;;   on_configure ctx=<root> size=<plugin config size>
;;   on_request_headers ctx=<id> eos=<0|1>
;;   on_request_body ctx=<id> size=<n> eos=<0|1>
;;   on_request_trailers ctx=<id>
;;   on_response_headers ctx=<id> eos=<0|1>
;;   on_response_body ctx=<id> size=<n> eos=<0|1>
;;   on_response_trailers ctx=<id>
;;   on_done ctx=<id>          (returns 1 = true: context may be finalized)
;;   on_log ctx=<id>
;;   on_delete ctx=<id>
;;
;; Every HTTP callback returns 0 (Continue); on_vm_start / on_configure return 1.
;; Configuration: none needed (any VM / plugin configuration is accepted).

(module
  ;; ---- host functions (ABI 0.2.1) ----
  ;; proxy_log(level, message_data, message_size) -> status
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))

  ;; page 0: static data + scratch; page 1..: bump heap
  (memory (export "memory") 2)

  ;; ABI marker (never called)
  (func (export "proxy_abi_version_0_2_1"))

  ;; ---- constant strings (NUL-terminated; each slot is 0x20 bytes) ----
  (data (i32.const 0x100) "_initialize\00")
  (data (i32.const 0x120) "main\00")
  (data (i32.const 0x140) "on_context_create ctx=\00")
  (data (i32.const 0x160) " parent=\00")
  (data (i32.const 0x180) "on_vm_start ctx=\00")
  (data (i32.const 0x1a0) "on_configure ctx=\00")
  (data (i32.const 0x1c0) " size=\00")
  (data (i32.const 0x1e0) " eos=\00")
  (data (i32.const 0x200) "on_request_headers ctx=\00")
  (data (i32.const 0x220) "on_request_body ctx=\00")
  (data (i32.const 0x240) "on_request_trailers ctx=\00")
  (data (i32.const 0x260) "on_response_headers ctx=\00")
  (data (i32.const 0x280) "on_response_body ctx=\00")
  (data (i32.const 0x2a0) "on_response_trailers ctx=\00")
  (data (i32.const 0x2c0) "on_done ctx=\00")
  (data (i32.const 0x2e0) "on_log ctx=\00")
  (data (i32.const 0x300) "on_delete ctx=\00")

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

  ;; module-specific: log "<prefix><ctx> size=<size> eos=<eos>"
  (func $say_body (param $prefix i32) (param $ctx i32) (param $size i32) (param $eos i32)
    (call $begin) (call $puts (local.get $prefix)) (call $putu (local.get $ctx))
    (call $puts (i32.const 0x1c0)) (call $putu (local.get $size))          ;; " size="
    (call $puts (i32.const 0x1e0)) (call $putu (local.get $eos))           ;; " eos="
    (call $flush))

  ;; =====================================================================
  ;; Start-up
  ;; =====================================================================
  (func (export "_initialize")
    (call $say (i32.const 0x100)))                          ;; "_initialize"

  (func (export "main") (param $argc i32) (param $argv i32) (result i32)
    (call $say (i32.const 0x120))                           ;; "main"
    (i32.const 0))

  ;; =====================================================================
  ;; Callbacks
  ;; =====================================================================
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32)
    ;; "on_context_create ctx=<ctx> parent=<parent>"
    (call $say_ctx_kv (i32.const 0x140) (local.get $ctx) (i32.const 0x160) (local.get $parent)))

  (func (export "proxy_on_vm_start") (param $root i32) (param $size i32) (result i32)
    ;; "on_vm_start ctx=<root> size=<size>"
    (call $say_ctx_kv (i32.const 0x180) (local.get $root) (i32.const 0x1c0) (local.get $size))
    (i32.const 1))

  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    ;; "on_configure ctx=<root> size=<size>"
    (call $say_ctx_kv (i32.const 0x1a0) (local.get $root) (i32.const 0x1c0) (local.get $size))
    (i32.const 1))

  (func (export "proxy_on_request_headers")
        (param $ctx i32) (param $num_headers i32) (param $eos i32) (result i32)
    ;; "on_request_headers ctx=<ctx> eos=<eos>"
    (call $say_ctx_kv (i32.const 0x200) (local.get $ctx) (i32.const 0x1e0) (local.get $eos))
    (i32.const 0))

  (func (export "proxy_on_request_body")
        (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    ;; "on_request_body ctx=<ctx> size=<size> eos=<eos>"
    (call $say_body (i32.const 0x220) (local.get $ctx) (local.get $size) (local.get $eos))
    (i32.const 0))

  (func (export "proxy_on_request_trailers")
        (param $ctx i32) (param $num_trailers i32) (result i32)
    ;; "on_request_trailers ctx=<ctx>"
    (call $say_ctx (i32.const 0x240) (local.get $ctx))
    (i32.const 0))

  (func (export "proxy_on_response_headers")
        (param $ctx i32) (param $num_headers i32) (param $eos i32) (result i32)
    ;; "on_response_headers ctx=<ctx> eos=<eos>"
    (call $say_ctx_kv (i32.const 0x260) (local.get $ctx) (i32.const 0x1e0) (local.get $eos))
    (i32.const 0))

  (func (export "proxy_on_response_body")
        (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    ;; "on_response_body ctx=<ctx> size=<size> eos=<eos>"
    (call $say_body (i32.const 0x280) (local.get $ctx) (local.get $size) (local.get $eos))
    (i32.const 0))

  (func (export "proxy_on_response_trailers")
        (param $ctx i32) (param $num_trailers i32) (result i32)
    ;; "on_response_trailers ctx=<ctx>"
    (call $say_ctx (i32.const 0x2a0) (local.get $ctx))
    (i32.const 0))

  (func (export "proxy_on_done") (param $ctx i32) (result i32)
    ;; "on_done ctx=<ctx>"; 1 = done, the host may call on_log/on_delete now
    (call $say_ctx (i32.const 0x2c0) (local.get $ctx))
    (i32.const 1))

  (func (export "proxy_on_log") (param $ctx i32)
    ;; "on_log ctx=<ctx>"
    (call $say_ctx (i32.const 0x2e0) (local.get $ctx)))

  (func (export "proxy_on_delete") (param $ctx i32)
    ;; "on_delete ctx=<ctx>"
    (call $say_ctx (i32.const 0x300) (local.get $ctx)))
)
