;; effective_context.wat — ABI 0.2.1 module that, from `proxy_on_tick` of
;; its root context `<root>`, makes the context `<root> + 1` effective (in
;; the tests: the root context of another plugin sharing the instance) and
;; then uses hostcalls the calling plugin may or may not use.
;;
;; Purpose
;;   `proxy_set_effective_context` accepts any context of the instance, as in
;;   proxy-wasm-cpp-host, but the rights stay those of the plugin whose
;;   callback runs: the other plugin's authorizations never become the
;;   caller's.
;;
;; Configuration: none.
;;
;; What the test should observe (INFO lines, from one `proxy_on_tick`)
;;   set_effective_context=<status>    0 (OK) when <root> + 1 exists
;;   set_shared_data=<status>          12 (UNIMPLEMENTED) when the calling plugin lacks the capability
;;   plugin_name=<status>              1 (NOT_FOUND) when outside the caller's properties.read
;;   plugin_root_id=<status>           0, then the effective context's root_id on its own line

(module
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_effective (param i32) (result i32)))
  ;; proxy_set_shared_data(key, key_size, value, value_size, cas) -> status
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  ;; proxy_get_property(path, path_size, return_data, return_size) -> status
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 2)

  (func (export "proxy_abi_version_0_2_1"))

  (data (i32.const 0x100) "set_effective_context=")   ;; 22 bytes
  (data (i32.const 0x120) "set_shared_data=")         ;; 16 bytes
  (data (i32.const 0x140) "plugin_name=")             ;; 12 bytes
  (data (i32.const 0x160) "plugin_root_id=")          ;; 15 bytes
  (data (i32.const 0x180) "plugin_name")              ;; 11 bytes (property path)
  (data (i32.const 0x1a0) "plugin_root_id")           ;; 14 bytes (property path)
  (data (i32.const 0x1c0) "kv")                       ;; shared data key "k", value "v"

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

  (func (export "proxy_on_vm_start") (param $root i32) (param $size i32) (result i32)
    (i32.const 1))

  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (i32.const 1))

  (func (export "proxy_on_tick") (param $root i32)
    (local $st i32)
    (call $say_num (i32.const 0x100) (i32.const 22)
      (call $set_effective (i32.add (local.get $root) (i32.const 1))))
    (call $say_num (i32.const 0x120) (i32.const 16)
      (call $set_shared (i32.const 0x1c0) (i32.const 1) (i32.const 0x1c1) (i32.const 1) (i32.const 0)))
    ;; return slots at 0x00 (data) and 0x04 (size)
    (call $say_num (i32.const 0x140) (i32.const 12)
      (call $get_property (i32.const 0x180) (i32.const 11) (i32.const 0x00) (i32.const 0x04)))
    (local.set $st (call $get_property (i32.const 0x1a0) (i32.const 14) (i32.const 0x00) (i32.const 0x04)))
    (call $say_num (i32.const 0x160) (i32.const 15) (local.get $st))
    (if (i32.eqz (local.get $st))
      (then (drop (call $proxy_log (i32.const 2) (i32.load (i32.const 0x00)) (i32.load (i32.const 0x04)))))))
)
