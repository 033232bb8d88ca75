;; Extism plugin on the pre-1.0 ABI (Extism <= 0.5, rust-pdk <= 0.3.4): the same
;; kernel functions imported from module `env` with an `extism_` prefix. A host
;; must accept it as well as `extism:host/env`. Exports: README.md beside.
(module
  (import "env" "extism_alloc" (func $extism_alloc (param i64) (result i64)))
  (import "env" "extism_free" (func $extism_free (param i64)))
  (import "env" "extism_length" (func $extism_length (param i64) (result i64)))
  (import "env" "extism_load_u8" (func $extism_load_u8 (param i64) (result i32)))
  (import "env" "extism_load_u64" (func $extism_load_u64 (param i64) (result i64)))
  (import "env" "extism_store_u8" (func $extism_store_u8 (param i64 i32)))
  (import "env" "extism_store_u64" (func $extism_store_u64 (param i64 i64)))
  (import "env" "extism_input_length" (func $extism_input_length (result i64)))
  (import "env" "extism_input_load_u8" (func $extism_input_load_u8 (param i64) (result i32)))
  (import "env" "extism_input_load_u64" (func $extism_input_load_u64 (param i64) (result i64)))
  (import "env" "extism_output_set" (func $extism_output_set (param i64 i64)))
  (import "env" "extism_error_set" (func $extism_error_set (param i64)))
  (import "env" "extism_config_get" (func $extism_config_get (param i64) (result i64)))
  (import "env" "extism_var_get" (func $extism_var_get (param i64) (result i64)))
  (import "env" "extism_var_set" (func $extism_var_set (param i64 i64)))
  (import "env" "extism_http_request" (func $extism_http_request (param i64 i64) (result i64)))
  (import "env" "extism_log_info" (func $extism_log_info (param i64)))
  (import "env" "extism_log_debug" (func $extism_log_debug (param i64)))
  (import "env" "extism_log_warn" (func $extism_log_warn (param i64)))
  (import "env" "extism_log_error" (func $extism_log_error (param i64)))
  (memory (export "memory") 2)
  (data (i32.const 0) "{\22result\22:true}\00") ;; $allow
  (data (i32.const 16) "{\22result\22:false,\22error\22:{\22message\22:\22denied by legacy-abi\22,\22status\22:403}}\00") ;; $deny
  (data (i32.const 96) "\22x-deny\22\00") ;; $xdeny
  (data (i32.const 112) "tag\00") ;; $tag
  (data (i32.const 120) "none\00") ;; $none
  (data (i32.const 128) "count\00") ;; $count
  (data (i32.const 136) "forced failure in legacy-abi\00") ;; $fail
  (data (i32.const 168) "legacy-abi log_info\00") ;; $logmsg
  (data (i32.const 192) "logged\00") ;; $logged

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
    (local.set $h (call $extism_alloc (i64.extend_i32_u (local.get $len))))
    (block $done
      (loop $copy
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (call $extism_store_u8
          (i64.add (local.get $h) (i64.extend_i32_u (local.get $i)))
          (i32.load8_u (i32.add (local.get $ptr) (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $copy)))
    (local.get $h))

  ;; Sets linear memory [ptr, ptr+len) as the call's output.
  (func $out (param $ptr i32) (param $len i32)
    (call $extism_output_set (call $block (local.get $ptr) (local.get $len))
      (i64.extend_i32_u (local.get $len))))

  ;; Sets linear memory [ptr, ptr+len) as the call's error message.
  (func $err (param $ptr i32) (param $len i32)
    (call $extism_error_set (call $block (local.get $ptr) (local.get $len))))

  ;; Outputs the decimal text of v.
  (func $out_u64 (param $v i64)
    (local $n i32)
    (local.set $n (call $utoa (local.get $v)))
    (call $out (i32.sub (i32.const 1056) (local.get $n)) (local.get $n)))

  ;; Copies the whole input into linear memory at 4096 (at most 60 KiB); returns its length.
  (func $read_input (result i32)
    (local $n i32) (local $i i32)
    (local.set $n (i32.wrap_i64 (call $extism_input_length)))
    (if (i32.gt_u (local.get $n) (i32.const 61440)) (then (local.set $n (i32.const 61440))))
    (block $done
      (loop $copy
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (i32.store8 (i32.add (i32.const 4096) (local.get $i))
          (call $extism_input_load_u8 (i64.extend_i32_u (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $copy)))
    (local.get $n))

  ;; 1 when [hay, hay+hlen) contains [needle, needle+nlen), else 0.
  (func $contains (param $hay i32) (param $hlen i32) (param $needle i32) (param $nlen i32) (result i32)
    (local $i i32) (local $j i32)
    (if (i32.gt_u (local.get $nlen) (local.get $hlen)) (then (return (i32.const 0))))
    (block $no
      (loop $outer
        (br_if $no (i32.gt_u (local.get $i) (i32.sub (local.get $hlen) (local.get $nlen))))
        (local.set $j (i32.const 0))
        (block $mismatch
          (loop $inner
            (if (i32.ge_u (local.get $j) (local.get $nlen)) (then (return (i32.const 1))))
            (br_if $mismatch
              (i32.ne (i32.load8_u (i32.add (local.get $hay) (i32.add (local.get $i) (local.get $j))))
                      (i32.load8_u (i32.add (local.get $needle) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $inner)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $outer)))
    (i32.const 0))

  ;; ValidateAccess: denies (Otoroshi's error form, 403) when the input contains
  ;; the text "x-deny" (a request header of that name), else allows.
  (func (export "access") (result i32)
    (local $n i32)
    (local.set $n (call $read_input))
    (if (call $contains (i32.const 4096) (local.get $n) (i32.const 96) (i32.const 8))
      (then (call $out (i32.const 16) (i32.const 72)))
      (else (call $out (i32.const 0) (i32.const 15))))
    (i32.const 0))

  ;; Outputs its input unchanged.
  (func (export "echo") (result i32)
    (call $out (i32.const 4096) (call $read_input))
    (i32.const 0))

  ;; Outputs config "tag" (extism_config_get), or "none".
  (func (export "config_tag") (result i32)
    (local $h i64) (local $n i64) (local $i i32)
    (local.set $h (call $extism_config_get (call $block (i32.const 112) (i32.const 3))))
    (if (i64.eqz (local.get $h)) (then (call $out (i32.const 120) (i32.const 4)) (return (i32.const 0))))
    (local.set $n (call $extism_length (local.get $h)))
    (call $extism_output_set (local.get $h) (local.get $n))
    (i32.const 0))

  ;; Counts its calls in var "count" (8 bytes, little endian); outputs the count.
  (func (export "count") (result i32)
    (local $h i64) (local $v i64) (local $nh i64)
    (local.set $h (call $extism_var_get (call $block (i32.const 128) (i32.const 5))))
    (if (i64.ne (local.get $h) (i64.const 0))
      (then (if (i64.eq (call $extism_length (local.get $h)) (i64.const 8))
        (then (local.set $v (call $extism_load_u64 (local.get $h)))))))
    (local.set $v (i64.add (local.get $v) (i64.const 1)))
    (local.set $nh (call $extism_alloc (i64.const 8)))
    (call $extism_store_u64 (local.get $nh) (local.get $v))
    (call $extism_var_set (call $block (i32.const 128) (i32.const 5)) (local.get $nh))
    (call $out_u64 (local.get $v))
    (i32.const 0))

  (func (export "log") (result i32)
    (call $extism_log_info (call $block (i32.const 168) (i32.const 19)))
    (call $out (i32.const 192) (i32.const 6))
    (i32.const 0))

  (func (export "fail") (result i32)
    (call $err (i32.const 136) (i32.const 28))
    (i32.const 1))
)
