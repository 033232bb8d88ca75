;; An Open Policy Agent policy module in the shape `opa build -t wasm` gives
;; (OPA Wasm ABI 1.2), written by hand: it imports env.memory, opa_abort,
;; opa_println and opa_builtin0..4, and exports opa_eval plus the older
;; opa_eval_ctx_* entry points. It stands for the Wasmo template policy
;;   default can_access = false
;;   can_access { input.request.headers.foo == "bar" }
;; by answering [{"result":true}] when the input JSON contains the member
;; "foo":"bar" (written without spaces), else [{"result":false}].
;; An input containing "x-opa-println" calls opa_println; "x-opa-abort" calls
;; opa_abort (the host must then end the evaluation).
;; Values: an opa "value" here is the address of [len: i32][JSON bytes][NUL].
(module
  (import "env" "memory" (memory 2))
  (import "env" "opa_abort" (func $opa_abort (param i32)))
  (import "env" "opa_println" (func $opa_println (param i32)))
  (import "env" "opa_builtin0" (func $opa_builtin0 (param i32 i32) (result i32)))
  (import "env" "opa_builtin1" (func $opa_builtin1 (param i32 i32 i32) (result i32)))
  (import "env" "opa_builtin2" (func $opa_builtin2 (param i32 i32 i32 i32) (result i32)))
  (import "env" "opa_builtin3" (func $opa_builtin3 (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "opa_builtin4" (func $opa_builtin4 (param i32 i32 i32 i32 i32 i32) (result i32)))
  (data (i32.const 8) "[{\22result\22:true}]\00") ;; $res_true
  (data (i32.const 32) "[{\22result\22:false}]\00") ;; $res_false
  (data (i32.const 56) "\22foo\22:\22bar\22\00") ;; $needle
  (data (i32.const 72) "\22x-opa-abort\22\00") ;; $abort_needle
  (data (i32.const 88) "\22x-opa-println\22\00") ;; $println_needle
  (data (i32.const 104) "opa_abort requested by the input\00") ;; $abort_msg
  (data (i32.const 144) "opa_println requested by the input\00") ;; $println_msg
  (data (i32.const 184) "{}\00") ;; $builtins
  (data (i32.const 192) "{\22example/can_access\22:0}\00") ;; $entrypoints
  (global $heap (mut i32) (i32.const 65536))
  (global (export "opa_wasm_abi_version") i32 (i32.const 1))
  (global (export "opa_wasm_abi_minor_version") i32 (i32.const 2))
  (global $ctx_input (mut i32) (i32.const 0))
  (global $ctx_input_len (mut i32) (i32.const 0))
  (global $ctx_result (mut i32) (i32.const 0))

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

  ;; Bump allocator over the heap (8-byte aligned); memory grows as needed.
  (func $opa_malloc (export "opa_malloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then (if (i32.eq
          (memory.grow (i32.add (i32.shr_u (i32.sub (local.get $end) (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)) (i32.const 1)))
          (i32.const -1))
        (then (call $opa_abort (i32.const 104)) (unreachable)))))
    (global.set $heap (local.get $end))
    (local.get $p))

  (func (export "opa_free") (param i32))
  (func (export "opa_heap_ptr_get") (result i32) (global.get $heap))
  (func (export "opa_heap_ptr_set") (param $p i32) (global.set $heap (local.get $p)))

  ;; A value holding a copy of [addr, addr+len).
  (func $value (param $addr i32) (param $len i32) (result i32)
    (local $v i32)
    (local.set $v (call $opa_malloc (i32.add (local.get $len) (i32.const 5))))
    (i32.store (local.get $v) (local.get $len))
    (memory.copy (i32.add (local.get $v) (i32.const 4)) (local.get $addr) (local.get $len))
    (i32.store8 (i32.add (i32.add (local.get $v) (i32.const 4)) (local.get $len)) (i32.const 0))
    (local.get $v))

  (func (export "opa_json_parse") (param $addr i32) (param $len i32) (result i32)
    (call $value (local.get $addr) (local.get $len)))
  (func (export "opa_value_parse") (param $addr i32) (param $len i32) (result i32)
    (call $value (local.get $addr) (local.get $len)))
  ;; The NUL-terminated JSON text of a value.
  (func $dump (export "opa_json_dump") (param $v i32) (result i32)
    (i32.add (local.get $v) (i32.const 4)))
  (func (export "opa_value_dump") (param $v i32) (result i32)
    (call $dump (local.get $v)))
  (func (export "opa_value_add_path") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "opa_value_remove_path") (param i32 i32) (result i32) (i32.const 0))

  (func (export "builtins") (result i32) (call $value (i32.const 184) (i32.const 2)))
  (func (export "entrypoints") (result i32) (call $value (i32.const 192) (i32.const 24)))

  ;; The policy: 1 = allow.
  (func $decide (param $input i32) (param $len i32) (result i32)
    (if (call $contains (local.get $input) (local.get $len) (i32.const 88) (i32.const 15))
      (then (call $opa_println (i32.const 144))))
    (if (call $contains (local.get $input) (local.get $len) (i32.const 72) (i32.const 13))
      (then (call $opa_abort (i32.const 104)) (unreachable)))
    (call $contains (local.get $input) (local.get $len) (i32.const 56) (i32.const 11)))

  ;; ABI 1.2 one-shot evaluation: input is raw JSON text at [input, input+len);
  ;; returns the address of the NUL-terminated JSON result set.
  (func (export "opa_eval")
    (param $reserved i32) (param $entrypoint i32) (param $data i32)
    (param $input i32) (param $len i32) (param $heap i32) (param $format i32) (result i32)
    (global.set $heap (local.get $heap))
    (if (result i32) (call $decide (local.get $input) (local.get $len))
      (then (call $dump (call $value (i32.const 8) (i32.const 17))))
      (else (call $dump (call $value (i32.const 32) (i32.const 18))))))

  ;; ABI 1.0/1.1 evaluation through a context.
  (func (export "opa_eval_ctx_new") (result i32) (call $opa_malloc (i32.const 16)))
  (func (export "opa_eval_ctx_set_input") (param $ctx i32) (param $v i32)
    (global.set $ctx_input (i32.add (local.get $v) (i32.const 4)))
    (global.set $ctx_input_len (i32.load (local.get $v))))
  (func (export "opa_eval_ctx_set_data") (param i32 i32))
  (func (export "opa_eval_ctx_set_entrypoint") (param i32 i32))
  (func (export "eval") (param $ctx i32) (result i32)
    (global.set $ctx_result
      (if (result i32) (call $decide (global.get $ctx_input) (global.get $ctx_input_len))
        (then (call $value (i32.const 8) (i32.const 17)))
        (else (call $value (i32.const 32) (i32.const 18)))))
    (i32.const 0))
  (func (export "opa_eval_ctx_get_result") (param $ctx i32) (result i32)
    (global.get $ctx_result))
)
