;; memory_bomb.wat — ABI 0.2.1 module that grows its memory until the host refuses.
;;
;; Purpose
;;   Memory cap: on_request_headers calls memory.grow in a loop until it
;;   returns -1: 256 pages (16 MiB) at a time, then 16, then 1 page (64 KiB),
;;   so it stops exactly at the limit. The memory has no declared maximum, so
;;   only the host's per-instance limit stops it (the wasm32 ceiling is 65536
;;   pages = 4 GiB). A host with a cap must make memory.grow fail (return -1),
;;   not trap and not abort the process; the module then logs and continues.
;;   On a reused instance the loop fails at once (memory is already at the cap).
;;   Memory is only reserved, never written, so resident memory stays small.
;;
;; Configuration: none.
;;
;; What the test should observe (INFO lines, per request)
;;   grow failed
;;   memory_bomb pages=<n>        (<n> = pages at the cap; <n> * 64 KiB <= the host's limit)
;;   and the request is proxied normally (the callback returns Continue).

(module
  ;; proxy_log(level, message_data, message_size) -> status
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))

  ;; no maximum on purpose
  (memory (export "memory") 2)

  (func (export "proxy_abi_version_0_2_1"))

  (data (i32.const 0x100) "grow failed\00")
  (data (i32.const 0x120) "memory_bomb pages=\00")

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

  (func (export "proxy_on_request_headers")
        (param $ctx i32) (param $num_headers i32) (param $eos i32) (result i32)
    (local $step i32)
    ;; grow by 256 pages (16 MiB) until refused, then by 16, then by 1 page:
    ;; ends exactly at the host's limit with a few hundred calls at most
    (local.set $step (i32.const 256))
    (loop $steps
      (block $refused
        (loop $more
          (br_if $refused (i32.eq (memory.grow (local.get $step)) (i32.const -1)))
          (br $more)))
      (local.set $step (i32.shr_u (local.get $step) (i32.const 4)))   ;; 256 -> 16 -> 1 -> 0
      (br_if $steps (local.get $step)))
    (call $say (i32.const 0x100))                          ;; "grow failed"
    (call $say_ctx (i32.const 0x120) (memory.size))        ;; "memory_bomb pages=<n>"
    (i32.const 0))                                         ;; Continue
)
