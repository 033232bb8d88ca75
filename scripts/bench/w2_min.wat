;; w2_min.wat: the host's floor (benchmark row W2-min, issue 15).
;;
;; A hand-written Proxy-Wasm ABI 0.2.1 module exporting only what any module
;; needs (memory, the ABI marker, the allocator, proxy_on_context_create,
;; proxy_on_vm_start, proxy_on_configure) and proxy_on_request_headers, which
;; returns Continue at once. What a request through it costs is the host's
;; own per-request work: the guest does nothing.
(module
  (memory (export "memory") 1)

  (func (export "proxy_abi_version_0_2_1"))

  ;; A bump allocator that never frees: the host allocates only for the
  ;; configuration at start-up (this module calls no hostcall per request).
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

  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32))
  (func (export "proxy_on_vm_start") (param $root i32) (param $size i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32) (i32.const 1))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (i32.const 0))
)
