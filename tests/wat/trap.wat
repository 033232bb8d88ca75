;; trap.wat — ABI 0.2.1 module that traps (`unreachable`) in a callback chosen by configuration.
;;
;; Purpose
;;   Trap handling: the host must log the trap (with a backtrace), apply its
;;   failure policy, and keep serving (a fresh instance for the next request).
;;   Every callback logs one line before doing anything, and "trapping in <name>"
;;   right before the `unreachable`, so a test can tell where the trap happened.
;;
;; Configuration
;;   Plugin configuration (PLUGIN_CONFIGURATION, buffer 7, read in on_configure),
;;   exactly one of (surrounding whitespace/newlines are ignored):
;;     none              no trap (also: empty configuration)
;;     configure         trap in proxy_on_configure (after reading the selector)
;;     context_create    trap in proxy_on_context_create of a STREAM context (parent != 0)
;;     request_headers   trap in proxy_on_request_headers
;;     request_body      trap in proxy_on_request_body      (send a request with a body)
;;     response_headers  trap in proxy_on_response_headers
;;     response_body     trap in proxy_on_response_body     (upstream must send a body)
;;     log               trap in proxy_on_log     of a stream context
;;     done              trap in proxy_on_done    of a stream context
;;     delete            trap in proxy_on_delete  of a stream context
;;     tick              on_configure sets a 100 ms tick period; trap in proxy_on_tick
;;     vm_start          accepted, but does nothing here (see below)
;;   Anything else: on_configure logs "unknown selector: <text>" and returns 0
;;   (plugin rejected).
;;   VM configuration (VM_CONFIGURATION, buffer 6, read in on_vm_start):
;;     vm_start          trap in proxy_on_vm_start
;;   on_vm_start runs before on_configure, so it cannot see the plugin
;;   configuration; the vm_start trap is selected through the VM configuration.
;;   Any other VM configuration is ignored.
;;   The root (plugin) context is never trapped in context_create/log/done/delete,
;;   so the trap always belongs to one request.
;;
;; What the test should observe (INFO lines)
;;   on_context_create ctx=<id> parent=<pid>
;;   on_vm_start
;;   vm_config selector=vm_start          (only with that VM configuration)
;;   on_configure
;;   selector=<name>
;;   tick period status=0                 (only for "tick")
;;   on_request_headers ctx=<id>  /  on_request_body ctx=<id>  /  on_response_headers ctx=<id>
;;   on_response_body ctx=<id>  /  on_log ctx=<id>  /  on_done ctx=<id>  /  on_delete ctx=<id>
;;   on_tick ctx=<root>
;;   trapping in <name>                   (then the host's trap report)
;;   A failed read of the plugin configuration logs "config status=<n>" and rejects.

(module
  ;; proxy_log(level, message_data, message_size) -> status
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  ;; proxy_get_buffer_bytes(buffer, start, max_size, return_value_data **, return_value_size *) -> status
  (import "env" "proxy_get_buffer_bytes"
    (func $proxy_get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  ;; proxy_set_tick_period_milliseconds(period) -> status
  (import "env" "proxy_set_tick_period_milliseconds"
    (func $proxy_set_tick_period_milliseconds (param i32) (result i32)))

  (memory (export "memory") 2)

  (func (export "proxy_abi_version_0_2_1"))

  ;; return slots: 0x10 data pointer, 0x14 size

  (data (i32.const 0x100) "on_context_create ctx=\00")
  (data (i32.const 0x120) " parent=\00")
  (data (i32.const 0x140) "on_vm_start\00")
  (data (i32.const 0x160) "on_configure\00")
  (data (i32.const 0x180) "selector=\00")
  (data (i32.const 0x1a0) "trapping in \00")
  (data (i32.const 0x1c0) "unknown selector: \00")
  (data (i32.const 0x1e0) "config status=\00")
  ;; selector names, in selector-number order, NUL-separated, ended by an empty name
  (data (i32.const 0x200)
    "none\00"              ;; 0
    "vm_start\00"          ;; 1
    "configure\00"         ;; 2
    "context_create\00"    ;; 3
    "request_headers\00"   ;; 4
    "request_body\00"      ;; 5
    "response_headers\00"  ;; 6
    "response_body\00"     ;; 7
    "log\00"               ;; 8
    "done\00"              ;; 9
    "delete\00"            ;; 10
    "tick\00"              ;; 11
    "\00")                 ;; end of table
  (data (i32.const 0x2a0) "on_request_headers ctx=\00")
  (data (i32.const 0x2c0) "on_request_body ctx=\00")
  (data (i32.const 0x2e0) "on_response_headers ctx=\00")
  (data (i32.const 0x300) "on_response_body ctx=\00")
  (data (i32.const 0x320) "on_log ctx=\00")
  (data (i32.const 0x340) "on_done ctx=\00")
  (data (i32.const 0x360) "on_delete ctx=\00")
  (data (i32.const 0x380) "on_tick ctx=\00")
  (data (i32.const 0x3a0) "tick period status=\00")
  (data (i32.const 0x3c0) "vm_config selector=\00")

  ;; selected callback (see table above) and the root context id
  (global $sel (mut i32) (i32.const 0))
  (global $root (mut i32) (i32.const 0))

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
  ;; Selector parsing
  ;; =====================================================================

  ;; address of the NUL-terminated name of selector $i
  (func $name_of (param $i i32) (result i32)
    (local $p i32)
    (local.set $p (i32.const 0x200))
    (block $found
      (loop $skip
        (br_if $found (i32.eqz (local.get $i)))
        ;; advance past the current name and its NUL
        (loop $ch
          (local.set $p (i32.add (local.get $p) (i32.const 1)))
          (br_if $ch (i32.load8_u (i32.sub (local.get $p) (i32.const 1)))))
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (br $skip)))
    (local.get $p))

  ;; is byte $c whitespace (space, \t, \n, \r) or NUL?
  (func $is_space (param $c i32) (result i32)
    (i32.or
      (i32.or (i32.eq (local.get $c) (i32.const 32)) (i32.eq (local.get $c) (i32.const 9)))
      (i32.or (i32.or (i32.eq (local.get $c) (i32.const 10)) (i32.eq (local.get $c) (i32.const 13)))
              (i32.eqz (local.get $c)))))

  ;; Parses ($p, $n) into a selector number; -1 if it is not a known name.
  ;; Leading and trailing whitespace is ignored; empty text means "none" (0).
  (func $parse (param $p i32) (param $n i32) (result i32)
    (local $i i32) (local $name i32) (local $k i32)
    ;; trim leading whitespace
    (block $l_done
      (loop $l
        (br_if $l_done (i32.eqz (local.get $n)))
        (br_if $l_done (i32.eqz (call $is_space (i32.load8_u (local.get $p)))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $l)))
    ;; trim trailing whitespace
    (block $t_done
      (loop $t
        (br_if $t_done (i32.eqz (local.get $n)))
        (br_if $t_done (i32.eqz (call $is_space
          (i32.load8_u (i32.sub (i32.add (local.get $p) (local.get $n)) (i32.const 1))))))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $t)))
    (if (i32.eqz (local.get $n)) (then (return (i32.const 0))))
    ;; compare with every name in the table
    (local.set $i (i32.const 0))
    (block $no_more
      (loop $each
        (local.set $name (call $name_of (local.get $i)))
        (br_if $no_more (i32.eqz (i32.load8_u (local.get $name))))   ;; end of table
        ;; compare bytes; the table name must end exactly after $n bytes
        (local.set $k (i32.const 0))
        (block $mismatch
          (loop $cmp
            (if (i32.eq (local.get $k) (local.get $n))
              (then
                (br_if $mismatch (i32.load8_u (i32.add (local.get $name) (local.get $k))))
                (return (local.get $i))))
            (br_if $mismatch (i32.eqz (i32.load8_u (i32.add (local.get $name) (local.get $k)))))
            (br_if $mismatch
              (i32.ne (i32.load8_u (i32.add (local.get $name) (local.get $k)))
                      (i32.load8_u (i32.add (local.get $p) (local.get $k)))))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br $cmp)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (i32.const -1))

  ;; logs "trapping in <name of selector $i>" and traps
  (func $trap_now (param $i i32)
    (call $begin)
    (call $puts (i32.const 0x1a0))
    (call $puts (call $name_of (local.get $i)))
    (call $flush)
    unreachable)

  ;; traps if selector $i is the selected one
  (func $maybe_trap (param $i i32)
    (if (i32.eq (global.get $sel) (local.get $i))
      (then (call $trap_now (local.get $i)))))

  ;; =====================================================================
  ;; Callbacks
  ;; =====================================================================
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32)
    (call $say_ctx_kv (i32.const 0x100) (local.get $ctx) (i32.const 0x120) (local.get $parent))
    (if (i32.eqz (local.get $parent))
      (then (global.set $root (local.get $ctx)))
      (else (call $maybe_trap (i32.const 3)))))                  ;; context_create (stream only)

  (func (export "proxy_on_vm_start") (param $root i32) (param $size i32) (result i32)
    (local $selected i32)
    (call $say (i32.const 0x140))                                ;; "on_vm_start"
    (i32.store (i32.const 0x10) (i32.const 0))
    (i32.store (i32.const 0x14) (i32.const 0))
    (if (i32.eqz
          (call $proxy_get_buffer_bytes (i32.const 6)            ;; VM_CONFIGURATION
                (i32.const 0) (local.get $size) (i32.const 0x10) (i32.const 0x14)))
      (then
        (local.set $selected
          (call $parse (i32.load (i32.const 0x10)) (i32.load (i32.const 0x14))))
        (if (i32.eq (local.get $selected) (i32.const 1))         ;; vm_start
          (then
            (call $begin) (call $puts (i32.const 0x3c0)) (call $puts (call $name_of (i32.const 1)))
            (call $flush)                                        ;; "vm_config selector=vm_start"
            (call $trap_now (i32.const 1))))))
    (i32.const 1))

  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (local $status i32) (local $selected i32)
    (global.set $root (local.get $root))
    (call $say (i32.const 0x160))                                ;; "on_configure"
    (i32.store (i32.const 0x10) (i32.const 0))
    (i32.store (i32.const 0x14) (i32.const 0))
    (local.set $selected (i32.const 0))
    (if (local.get $size)
      (then
        (local.set $status
          (call $proxy_get_buffer_bytes (i32.const 7)            ;; PLUGIN_CONFIGURATION
                (i32.const 0) (local.get $size) (i32.const 0x10) (i32.const 0x14)))
        (if (local.get $status)
          (then
            (call $say_ctx (i32.const 0x1e0) (local.get $status)) ;; "config status=<n>"
            (return (i32.const 0))))
        (local.set $selected
          (call $parse (i32.load (i32.const 0x10)) (i32.load (i32.const 0x14))))))
    (if (i32.lt_s (local.get $selected) (i32.const 0))
      (then
        (call $begin) (call $puts (i32.const 0x1c0))
        (call $put (i32.load (i32.const 0x10)) (i32.load (i32.const 0x14)))
        (call $flush)                                            ;; "unknown selector: <text>"
        (return (i32.const 0))))
    (global.set $sel (local.get $selected))
    (call $begin) (call $puts (i32.const 0x180)) (call $puts (call $name_of (local.get $selected)))
    (call $flush)                                                ;; "selector=<name>"
    (call $maybe_trap (i32.const 2))                             ;; configure
    (if (i32.eq (local.get $selected) (i32.const 11))            ;; tick
      (then
        (call $say_ctx (i32.const 0x3a0)                         ;; "tick period status=<s>"
          (call $proxy_set_tick_period_milliseconds (i32.const 100)))))
    (i32.const 1))

  (func (export "proxy_on_request_headers")
        (param $ctx i32) (param $num_headers i32) (param $eos i32) (result i32)
    (call $say_ctx (i32.const 0x2a0) (local.get $ctx))
    (call $maybe_trap (i32.const 4))                             ;; request_headers
    (i32.const 0))

  (func (export "proxy_on_request_body")
        (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (call $say_ctx (i32.const 0x2c0) (local.get $ctx))
    (call $maybe_trap (i32.const 5))                             ;; request_body
    (i32.const 0))

  (func (export "proxy_on_response_headers")
        (param $ctx i32) (param $num_headers i32) (param $eos i32) (result i32)
    (call $say_ctx (i32.const 0x2e0) (local.get $ctx))
    (call $maybe_trap (i32.const 6))                             ;; response_headers
    (i32.const 0))

  (func (export "proxy_on_response_body")
        (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (call $say_ctx (i32.const 0x300) (local.get $ctx))
    (call $maybe_trap (i32.const 7))                             ;; response_body
    (i32.const 0))

  (func (export "proxy_on_log") (param $ctx i32)
    (call $say_ctx (i32.const 0x320) (local.get $ctx))
    (if (i32.ne (local.get $ctx) (global.get $root))
      (then (call $maybe_trap (i32.const 8)))))                  ;; log (stream only)

  (func (export "proxy_on_done") (param $ctx i32) (result i32)
    (call $say_ctx (i32.const 0x340) (local.get $ctx))
    (if (i32.ne (local.get $ctx) (global.get $root))
      (then (call $maybe_trap (i32.const 9))))                   ;; done (stream only)
    (i32.const 1))

  (func (export "proxy_on_delete") (param $ctx i32)
    (call $say_ctx (i32.const 0x360) (local.get $ctx))
    (if (i32.ne (local.get $ctx) (global.get $root))
      (then (call $maybe_trap (i32.const 10)))))                 ;; delete (stream only)

  (func (export "proxy_on_tick") (param $root i32)
    (call $say_ctx (i32.const 0x380) (local.get $root))
    (call $maybe_trap (i32.const 11)))                           ;; tick
)
