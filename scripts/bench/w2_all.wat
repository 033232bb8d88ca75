;; w2_all.wat: benchmark row W2-all (issue 15).
;;
;; A hand-written Proxy-Wasm ABI 0.2.1 module exporting every callback, each
;; returning at once (Continue, true or nothing): the shape of a Rust-SDK
;; module (which exports them all) without the SDK's work, so a request
;; through it costs the host's work for every HTTP callback.
(module
  (memory (export "memory") 1)

  (func (export "proxy_abi_version_0_2_1"))

  (global $heap (mut i32) (i32.const 0x1000))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32) (local $end i32) (local $pages i32)
    (local.set $ptr (global.get $heap))
    (local.set $end (i32.and (i32.add (i32.add (local.get $ptr) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (local.set $pages
      (i32.sub (i32.add (i32.shr_u (local.get $end) (i32.const 16))
                        (i32.ne (i32.and (local.get $end) (i32.const 0xffff)) (i32.const 0)))
               (memory.size)))
    (if (i32.gt_s (local.get $pages) (i32.const 0))
      (then (if (i32.eq (memory.grow (local.get $pages)) (i32.const -1)) (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  ;; Root context and VM.
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32))
  (func (export "proxy_on_vm_start") (param $root i32) (param $size i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32) (i32.const 1))
  (func (export "proxy_on_tick") (param $root i32))
  (func (export "proxy_on_queue_ready") (param $root i32) (param $queue i32))
  (func (export "proxy_on_http_call_response") (param $ctx i32) (param $token i32) (param $headers i32) (param $body i32) (param $trailers i32))
  (func (export "proxy_on_grpc_receive_initial_metadata") (param $ctx i32) (param $token i32) (param $n i32))
  (func (export "proxy_on_grpc_receive") (param $ctx i32) (param $token i32) (param $size i32))
  (func (export "proxy_on_grpc_receive_trailing_metadata") (param $ctx i32) (param $token i32) (param $n i32))
  (func (export "proxy_on_grpc_close") (param $ctx i32) (param $token i32) (param $status i32))
  (func (export "proxy_on_foreign_function") (param $root i32) (param $fn i32) (param $size i32))

  ;; HTTP stream callbacks.
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32) (i32.const 0))
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32) (i32.const 0))
  (func (export "proxy_on_request_trailers") (param $ctx i32) (param $n i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_trailers") (param $ctx i32) (param $n i32) (result i32) (i32.const 0))

  ;; TCP stream callbacks (a Rust-SDK module exports them too).
  (func (export "proxy_on_new_connection") (param $ctx i32) (result i32) (i32.const 0))
  (func (export "proxy_on_downstream_data") (param $ctx i32) (param $size i32) (param $eos i32) (result i32) (i32.const 0))
  (func (export "proxy_on_upstream_data") (param $ctx i32) (param $size i32) (param $eos i32) (result i32) (i32.const 0))
  (func (export "proxy_on_downstream_connection_close") (param $ctx i32) (param $peer i32))
  (func (export "proxy_on_upstream_connection_close") (param $ctx i32) (param $peer i32))

  ;; The end of every context.
  (func (export "proxy_on_done") (param $ctx i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param $ctx i32))
  (func (export "proxy_on_delete") (param $ctx i32))
)
