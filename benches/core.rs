//! Micro-benchmark of the core (issue 15): what one callback round trip and
//! one hostcall cost, in nanoseconds, on each runtime of the build, through
//! the in-memory server of the tests (`tests/common`). No server, no network.
//!
//!     cargo bench --locked --bench core            (BENCH_SAMPLES, BENCH_BATCH to change the defaults)
//!
//! Method: a hand-written module whose `proxy_on_request_headers` calls one
//! hostcall `num_headers` times in a loop (the host passes whatever the
//! benchmark gives as `num_headers`). A round trip is one call with 0; a
//! hostcall is (time with K calls − time with 0) / K. Every figure is the
//! median of BENCH_SAMPLES samples (after warm-up), each timing BENCH_BATCH
//! calls with `std::time::Instant`. The whole-request rows run a stream
//! context's life (create, request and response headers, done/log/delete)
//! with the modules of the W2-min and W2-all benchmark rows.

#[allow(dead_code, unused_imports, unused_macros)]
#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Instant;

use common::{repo_root, Harness};
use proxy_wasm_host::abi::LogLevel;
use proxy_wasm_host::config::RuntimeKind;
use proxy_wasm_host::loader;

/// The loop body per hostcall; `$i` counts down from `num_headers`.
const BODIES: &[(&str, &str)] = &[
    ("round trip (proxy_on_request_headers, returns Continue)", ""),
    (
        "proxy_get_header_map_value (10-byte value, allocated in the guest)",
        "(drop (call $get (i32.const 0) (i32.const 0x100) (i32.const 10) (i32.const 0x10) (i32.const 0x14)))",
    ),
    (
        "proxy_get_header_map_value (absent header)",
        "(drop (call $get (i32.const 0) (i32.const 0x160) (i32.const 8) (i32.const 0x10) (i32.const 0x14)))",
    ),
    (
        "proxy_add_header_map_value (7-byte name, 2-byte value)",
        "(drop (call $add (i32.const 0) (i32.const 0x120) (i32.const 7) (i32.const 0x130) (i32.const 2)))",
    ),
    (
        "proxy_log at a disabled level (debug, server at error)",
        "(drop (call $log (i32.const 1) (i32.const 0x140) (i32.const 24)))",
    ),
];

fn module(body: &str) -> String {
    format!(
        r#"(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 0x100) "user-agent")
  (data (i32.const 0x120) "x-bench")
  (data (i32.const 0x130) "ok")
  (data (i32.const 0x140) "a line nobody will read.")
  (data (i32.const 0x160) "x-absent")
  (func (export "proxy_abi_version_0_2_1"))
  ;; Bump allocator, reset at every callback: what the host allocates for a
  ;; returned value is dropped when the callback returns.
  (global $heap (mut i32) (i32.const 0x1000))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (if (i32.gt_u (i32.add (local.get $ptr) (local.get $size)) (i32.const 0x20000)) (then (return (i32.const 0))))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $ptr) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (local.get $ptr))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $i i32) (param $eos i32) (result i32)
    (global.set $heap (i32.const 0x1000))
    (block $out
      (loop $next
        (br_if $out (i32.eqz (local.get $i)))
        {body}
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0)))"#
    )
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Median nanoseconds per call of `f` (which runs `per_call` operations).
fn median_ns(samples: usize, batch: usize, mut f: impl FnMut(), mut between: impl FnMut()) -> f64 {
    for _ in 0..3 {
        for _ in 0..batch {
            f();
        }
        between();
    }
    let mut times: Vec<f64> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..batch {
                f();
            }
            let ns = t.elapsed().as_nanos() as f64 / batch as f64;
            between();
            ns
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: keep it short then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let samples = env_usize("BENCH_SAMPLES", if quick { 3 } else { 31 });
    let batch = env_usize("BENCH_BATCH", if quick { 10 } else { 2000 });
    const K: usize = 100;

    println!("| Runtime | Operation | ns |");
    println!("|---|---|---:|");
    for runtime in [RuntimeKind::Wasmtime, RuntimeKind::Wamr] {
        if loader::engine(runtime).is_none() {
            println!("| {runtime} | (not in this build) | - |");
            continue;
        }
        let mut round_trip = 0.0;
        for (i, (what, body)) in BODIES.iter().enumerate() {
            let wasm = wat::parse_str(module(body)).expect("the benchmark module compiles");
            let mut h = Harness::start_on(runtime, &wasm, "");
            *h.server.log_level.lock().unwrap() = LogLevel::Error;
            let (ctx, stream) = h.stream(&[(":method", "GET"), (":path", "/"), ("user-agent", "bench/1.0!")]);
            let keep = stream.0.lock().unwrap().request_headers.len();
            let reset = || stream.0.lock().unwrap().request_headers.truncate(keep);
            let zero = median_ns(
                samples,
                batch,
                || {
                    black_box(h.vm.on_request_headers(ctx, 0, false).unwrap());
                },
                reset,
            );
            if i == 0 {
                round_trip = zero;
                println!("| {runtime} | {what} | {zero:.0} |");
                continue;
            }
            let with_k = median_ns(
                samples,
                (batch / K).max(1),
                || {
                    black_box(h.vm.on_request_headers(ctx, K, false).unwrap());
                },
                reset,
            );
            println!("| {runtime} | {what} | {:.0} |", (with_k - zero) / K as f64);
        }
        let _ = round_trip;
        for (row, file) in [("W2-min", "w2_min.wat"), ("W2-all", "w2_all.wat")] {
            let path = repo_root().join("scripts/bench").join(file);
            let wasm = wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let mut h = Harness::start_on(runtime, &wasm, "");
            let headers = [(":method", "GET"), (":path", "/"), ("user-agent", "bench/1.0")];
            let stream = common::TestStream::with_request(&headers);
            let ns = median_ns(
                samples,
                batch,
                || {
                    let ctx = h.vm.create_stream(h.root, Box::new(stream.clone())).unwrap();
                    black_box(h.vm.on_request_headers(ctx, 3, true).unwrap());
                    black_box(h.vm.on_response_headers(ctx, 2, false).unwrap());
                    black_box(h.vm.on_response_body(ctx, b"", true).unwrap());
                    black_box(h.vm.finish_stream(ctx).unwrap());
                },
                || {},
            );
            println!("| {runtime} | a whole request, {row} module (create, request/response headers, empty response body, done/log/delete) | {ns:.0} |");
        }
    }
}
