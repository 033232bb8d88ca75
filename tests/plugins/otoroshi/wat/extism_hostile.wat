;; Hostile Extism plugin (current ABI, module `extism:host/env`): every export
;; misuses the ABI in one way. A host must end only that call (trap or error),
;; keep serving, and never crash. Exports and what each does: README.md beside.
(module
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "free" (func $free (param i64)))
  (import "extism:host/env" "length" (func $length (param i64) (result i64)))
  (import "extism:host/env" "load_u8" (func $load_u8 (param i64) (result i32)))
  (import "extism:host/env" "load_u64" (func $load_u64 (param i64) (result i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "store_u64" (func $store_u64 (param i64 i64)))
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_load_u8" (func $input_load_u8 (param i64) (result i32)))
  (import "extism:host/env" "input_load_u64" (func $input_load_u64 (param i64) (result i64)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (import "extism:host/env" "error_set" (func $error_set (param i64)))
  (import "extism:host/env" "config_get" (func $config_get (param i64) (result i64)))
  (import "extism:host/env" "var_get" (func $var_get (param i64) (result i64)))
  (import "extism:host/env" "var_set" (func $var_set (param i64 i64)))
  (import "extism:host/env" "http_request" (func $http_request (param i64 i64) (result i64)))
  (import "extism:host/env" "log_info" (func $log_info (param i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\22result\22:true}\00") ;; $allow
  (data (i32.const 16) "survived\00") ;; $survived
  (data (i32.const 32) "zero\00") ;; $zero
  (data (i32.const 40) "nonzero\00") ;; $nonzero
  (data (i32.const 48) "error set, then returned 0\00") ;; $err_zero
  (data (i32.const 80) "{\22result\22:false,\22error\22:{\22message\22:\22output then error\22,\22status\22:403}}\00") ;; $deny
  (data (i32.const 152) "output set, then error set\00") ;; $out_err
  (data (i32.const 184) "alloc-returned-0\00") ;; $alloc0
  (data (i32.const 208) "alloc-returned-nonzero\00") ;; $allocnz
  (data (i32.const 232) "alloc-stopped\00") ;; $stopped
  (data (i32.const 248) "alloc-never-failed\00") ;; $never
  (data (i32.const 272) "grow-failed\00") ;; $grow_failed
  (data (i32.const 288) "grow-succeeded\00") ;; $grow_ok
  (data (i32.const 304) "hostile\00") ;; $key
  (data (i32.const 312) "this is not a request\00") ;; $badjson
  (data (i32.const 336) "bad error handle\00") ;; $bad_error

  ;; Writes the decimal text of an unsigned i64 at 1024.. and returns its length;
  ;; the text starts at 1024 + 32 - length.
  (func $utoa (param $v i64) (result i32)
    (local $p i32)
    (local.set $p (i32.const 1056))
    (loop $digits
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digits (i64.ne (local.get $v) (i64.const 0))))
    (i32.sub (i32.const 1056) (local.get $p)))

  ;; Copies linear memory [ptr, ptr+len) into a new kernel block, byte by byte
  ;; (the host may not see the guest's memory); returns the block's handle.
  (func $block (param $ptr i32) (param $len i32) (result i64)
    (local $h i64) (local $i i32)
    (local.set $h (call $alloc (i64.extend_i32_u (local.get $len))))
    (block $done
      (loop $copy
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (call $store_u8
          (i64.add (local.get $h) (i64.extend_i32_u (local.get $i)))
          (i32.load8_u (i32.add (local.get $ptr) (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $copy)))
    (local.get $h))

  ;; Sets linear memory [ptr, ptr+len) as the call's output.
  (func $out (param $ptr i32) (param $len i32)
    (call $output_set (call $block (local.get $ptr) (local.get $len))
      (i64.extend_i32_u (local.get $len))))

  ;; Sets linear memory [ptr, ptr+len) as the call's error message.
  (func $err (param $ptr i32) (param $len i32)
    (call $error_set (call $block (local.get $ptr) (local.get $len))))

  ;; Outputs the decimal text of v.
  (func $out_u64 (param $v i64)
    (local $n i32)
    (local.set $n (call $utoa (local.get $v)))
    (call $out (i32.sub (i32.const 1056) (local.get $n)) (local.get $n)))

  ;; Copies the whole input into linear memory at 4096 (at most 60 KiB); returns its length.
  (func $read_input (result i32)
    (local $n i32) (local $i i32)
    (local.set $n (i32.wrap_i64 (call $input_length)))
    (if (i32.gt_u (local.get $n) (i32.const 61440)) (then (local.set $n (i32.const 61440))))
    (block $done
      (loop $copy
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (i32.store8 (i32.add (i32.const 4096) (local.get $i))
          (call $input_load_u8 (i64.extend_i32_u (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $copy)))
    (local.get $n))

  ;; Sanity: answers {"result":true} like a well-behaved access plugin.
  (func (export "ok") (result i32)
    (call $out (i32.const 0) (i32.const 15)) (i32.const 0))

  (func (export "load_bad_handle") (result i32)
    (drop (call $load_u64 (i64.const 0x7fffffff0000)))
    (drop (call $load_u8 (i64.const 0x7fffffff0000)))
    (call $out (i32.const 16) (i32.const 8)) (i32.const 0))

  (func (export "store_bad_handle") (result i32)
    (call $store_u64 (i64.const 0x7fffffff0000) (i64.const 1))
    (call $store_u8 (i64.const 0x7fffffff0000) (i32.const 1))
    (call $out (i32.const 16) (i32.const 8)) (i32.const 0))

  ;; length of something that is not a block start must be 0.
  (func (export "length_bad_handle") (result i32)
    (if (i64.eqz (call $length (i64.const 12345)))
      (then (call $out (i32.const 32) (i32.const 4)))
      (else (call $out (i32.const 40) (i32.const 7))))
    (i32.const 0))

  (func (export "free_bad_handle") (result i32)
    (call $free (i64.const 999999))
    (call $free (i64.const 0x7fffffff0000))
    (call $free (i64.const 0))
    (call $out (i32.const 16) (i32.const 8)) (i32.const 0))

  (func (export "free_twice") (result i32)
    (local $h i64)
    (local.set $h (call $alloc (i64.const 16)))
    (call $free (local.get $h))
    (call $free (local.get $h))
    (call $out (i32.const 16) (i32.const 8)) (i32.const 0))

  (func (export "use_after_free") (result i32)
    (local $h i64)
    (local.set $h (call $alloc (i64.const 16)))
    (call $free (local.get $h))
    (call $store_u8 (local.get $h) (i32.const 1))
    (drop (call $load_u8 (local.get $h)))
    (call $out (i32.const 16) (i32.const 8)) (i32.const 0))

  ;; output_set with a handle outside the kernel memory.
  (func (export "output_bad_handle") (result i32)
    (call $output_set (i64.const 0x7fffffff0000) (i64.const 100))
    (i32.const 0))

  ;; output_set with a length past the end of its 8-byte block.
  (func (export "output_too_long") (result i32)
    (call $output_set (call $alloc (i64.const 8)) (i64.const 1048576))
    (i32.const 0))

  (func (export "error_bad_handle") (result i32)
    (call $error_set (i64.const 0x7fffffff0000))
    (i32.const 1))

  ;; An error set is a failure even when the export returns 0.
  (func (export "error_then_zero") (result i32)
    (call $err (i32.const 48) (i32.const 26))
    (i32.const 0))

  (func (export "output_then_error") (result i32)
    (call $out (i32.const 80) (i32.const 69))
    (call $err (i32.const 152) (i32.const 26))
    (i32.const 0))

  ;; Non-zero return without an error message.
  (func (export "nonzero_no_error") (result i32)
    (i32.const 7))

  (func (export "trap") (result i32)
    (unreachable))

  (func (export "input_past_end") (result i32)
    (drop (call $input_load_u64 (i64.add (call $input_length) (i64.const 64))))
    (drop (call $input_load_u8 (i64.add (call $input_length) (i64.const 4096))))
    (call $out (i32.const 16) (i32.const 8)) (i32.const 0))

  ;; alloc of 2^62 bytes must return 0.
  (func (export "alloc_huge") (result i32)
    (if (i64.eqz (call $alloc (i64.const 0x4000000000000000)))
      (then (call $out (i32.const 184) (i32.const 16)))
      (else (call $out (i32.const 208) (i32.const 22))))
    (i32.const 0))

  ;; alloc(0) returns 0 in Extism.
  (func (export "alloc_zero") (result i32)
    (if (i64.eqz (call $alloc (i64.const 0)))
      (then (call $out (i32.const 184) (i32.const 16)))
      (else (call $out (i32.const 208) (i32.const 22))))
    (i32.const 0))

  ;; 1 MiB blocks, never freed, at most 1024 of them (1 GiB): the host's kernel
  ;; memory cap must make alloc return 0 (or end the call) before that.
  (func (export "alloc_until_fail") (result i32)
    (local $i i32)
    (block $stop
      (loop $more
        (br_if $stop (i32.ge_u (local.get $i) (i32.const 1024)))
        (if (i64.eqz (call $alloc (i64.const 1048576)))
          (then (call $out (i32.const 232) (i32.const 13)) (return (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $more)))
    (call $out (i32.const 248) (i32.const 18)) (i32.const 0))

  ;; memory.grow of the plugin's own linear memory by 60000 pages (3.7 GiB):
  ;; memoryPages must refuse it (-1).
  (func (export "grow_memory_huge") (result i32)
    (if (i32.eq (memory.grow (i32.const 60000)) (i32.const -1))
      (then (call $out (i32.const 272) (i32.const 11)))
      (else (call $out (i32.const 288) (i32.const 14))))
    (i32.const 0))

  ;; A 2 MiB variable, over Extism's 1 MiB cap on vars.
  (func (export "var_too_big") (result i32)
    (call $var_set (call $block (i32.const 304) (i32.const 7)) (call $alloc (i64.const 2097152)))
    (call $out (i32.const 16) (i32.const 8)) (i32.const 0))

  (func (export "config_bad_key") (result i32)
    (drop (call $config_get (i64.const 0x7fffffff0000)))
    (call $out (i32.const 16) (i32.const 8)) (i32.const 0))

  (func (export "var_bad_handles") (result i32)
    (drop (call $var_get (i64.const 0x7fffffff0000)))
    (call $var_set (i64.const 0x7fffffff0000) (i64.const 0x7fffffff0000))
    (call $out (i32.const 16) (i32.const 8)) (i32.const 0))

  ;; http_request with a request that is not JSON, then with a bad handle.
  (func (export "http_bad_request") (result i32)
    (drop (call $http_request (call $block (i32.const 312) (i32.const 21)) (i64.const 0)))
    (drop (call $http_request (i64.const 0x7fffffff0000) (i64.const 0x7fffffff0000)))
    (call $out (i32.const 16) (i32.const 8)) (i32.const 0))

  (func (export "log_bad_handle") (result i32)
    (call $log_info (i64.const 0x7fffffff0000))
    (call $out (i32.const 16) (i32.const 8)) (i32.const 0))

  ;; Never returns: the host's timeout must end it.
  (func (export "spin") (result i32)
    (loop $forever (br $forever))
    (i32.const 0))

  ;; Unbounded recursion: a stack-overflow trap.
  (func $recurse (export "recurse") (result i32)
    (i32.add (call $recurse) (i32.const 1)))
)
