;; never_done.wat — ABI 0.2.1 module whose `proxy_on_done` always returns
;; false and which never calls `proxy_done`.
;;
;; Purpose
;;   A plugin that asks the host to wait for `proxy_done` and never sends it
;;   must not keep its contexts (nor a replaced generation of instances) for
;;   ever: the host deletes them once the plugin's `pause_timeout` has passed
;;   (`Vm::expire_awaiting_done`).
;;
;; Configuration: none.
;;
;; What the test should observe (INFO lines)
;;   on_context_create ctx=<id>
;;   on_done ctx=<id>          (returns 0 = "not done yet", for root and stream contexts)
;;   on_log ctx=<id>           (a stream, only once the host gave up waiting)
;;   on_delete ctx=<id>        (only once the host gave up waiting)
;;   never: "proxy_done called"

(module
  ;; proxy_log(level, message_data, message_size) -> status
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))

  (memory (export "memory") 2)

  (func (export "proxy_abi_version_0_2_1"))

  (data (i32.const 0x100) "on_context_create ctx=")   ;; 22 bytes
  (data (i32.const 0x120) "on_done ctx=")             ;; 12 bytes
  (data (i32.const 0x140) "on_log ctx=")              ;; 11 bytes
  (data (i32.const 0x160) "on_delete ctx=")           ;; 14 bytes

  ;; Copies `$n` bytes from `$src` to `$dst` (no bulk-memory instructions).
  (func $copy (param $dst i32) (param $src i32) (param $n i32)
    (block $done
      (loop $bytes
        (br_if $done (i32.eqz (local.get $n)))
        (i32.store8 (local.get $dst) (i32.load8_u (local.get $src)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 1)))
        (local.set $src (i32.add (local.get $src) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $bytes))))

  ;; Logs the `$n`-byte text at `$p` followed by `$v` in decimal, at INFO.
  ;; The line is built at 0x400; digits are staged at 0x3f0..0x3ff.
  (func $say_num (param $p i32) (param $n i32) (param $v i32)
    (local $d i32) (local $len i32)
    (call $copy (i32.const 0x400) (local.get $p) (local.get $n))
    ;; digits, last first, into 0x3ff downwards
    (local.set $d (i32.const 0x400))
    (loop $digits
      (local.set $d (i32.sub (local.get $d) (i32.const 1)))
      (i32.store8 (local.get $d) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $digits (i32.ne (local.get $v) (i32.const 0))))
    (local.set $len (i32.sub (i32.const 0x400) (local.get $d)))
    (call $copy (i32.add (i32.const 0x400) (local.get $n)) (local.get $d) (local.get $len))
    (drop (call $proxy_log (i32.const 2) (i32.const 0x400) (i32.add (local.get $n) (local.get $len)))))

  ;; =====================================================================
  ;; Bump allocator (same block in every tests/wat module): never frees,
  ;; 8-byte aligned, grows memory on demand, returns 0 on failure.
  ;; =====================================================================
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

  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32)
    (call $say_num (i32.const 0x100) (i32.const 22) (local.get $ctx)))

  (func (export "proxy_on_vm_start") (param $root i32) (param $size i32) (result i32)
    (i32.const 1))

  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (i32.const 1))

  ;; Not done yet, and never will be: `proxy_done` is not even imported.
  (func (export "proxy_on_done") (param $ctx i32) (result i32)
    (call $say_num (i32.const 0x120) (i32.const 12) (local.get $ctx))
    (i32.const 0))

  (func (export "proxy_on_log") (param $ctx i32)
    (call $say_num (i32.const 0x140) (i32.const 11) (local.get $ctx)))

  (func (export "proxy_on_delete") (param $ctx i32)
    (call $say_num (i32.const 0x160) (i32.const 14) (local.get $ctx)))
)
