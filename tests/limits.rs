//! Per-instance limits (`vm_config.limits`) on both runtimes: a callback that
//! runs past its time limit is stopped and ends as a trap; linear memory does
//! not grow past its cap (the guest sees `memory.grow` fail); neither takes the
//! process down, and a fresh instance of the same code serves afterwards.

mod common;

common::for_each_runtime! {
use common::*;

use std::time::{Duration, Instant};

use proxy_wasm_host::runtime::{Limits, TrapKind};
use proxy_wasm_host::vm::{Verdict, VmError, VmOptions};

const LIMIT: Duration = Duration::from_millis(100);
/// Generous: two debug builds share two cores with other test binaries.
const SLACK: Duration = Duration::from_secs(3);

fn limited(limits: Limits) -> VmOptions {
    let mut options = VmOptions::new(unique_vm_id("limits"));
    options.limits = limits;
    options
}

fn timeout() -> Limits {
    Limits { callback_timeout: Some(LIMIT), ..Limits::default() }
}

fn memory(bytes: u64) -> Limits {
    Limits { max_memory_bytes: Some(bytes), ..Limits::default() }
}

fn assert_timeout(r: Result<Verdict, VmError>, callback: &str) {
    match r {
        Err(VmError::Trap { callback: c, trap, .. }) => {
            assert_eq!(c, callback);
            assert_eq!(trap.kind, TrapKind::Timeout, "{}", trap.message);
            assert!(trap.message.starts_with("time limit exceeded"), "{}", trap.message);
            assert!(trap.message.contains("100 ms"), "{}", trap.message);
        }
        other => panic!("expected a time-limit trap, got {other:?}"),
    }
}

#[test]
fn an_endless_loop_ends_at_the_time_limit_as_a_trap_and_the_vm_is_flagged_failed() {
    let code = load(&wat_bytes("trap_loop"), "trap_loop.wasm").unwrap();
    let mut h = Harness::try_start_code(code.clone(), "", limited(timeout())).unwrap();
    let stream = TestStream::with_request(&[(":method", "GET"), (":path", "/")]);
    let ctx = h.vm.create_stream(h.root, Box::new(stream)).unwrap();
    let started = Instant::now();
    let r = h.vm.on_request_headers(ctx, 2, true);
    let took = started.elapsed();
    assert_timeout(r, "proxy_on_request_headers");
    assert!(took >= LIMIT - Duration::from_millis(10), "stopped too early: {took:?}");
    assert!(took < LIMIT + SLACK, "stopped too late: {took:?}");
    assert!(h.server.logged("on_request_headers: looping forever"));
    let critical: Vec<_> = h.server.logs().into_iter().filter(|l| l.level == proxy_wasm_host::abi::LogLevel::Critical).collect();
    assert_eq!(critical.len(), 1, "logged once: {critical:?}");
    assert!(critical[0].message.starts_with("proxy_on_request_headers trapped: time limit exceeded"), "{}", critical[0].message);
    // The failure handling of the core applies: the instance is not reused.
    assert!(h.vm.failure().is_some());
    assert!(matches!(h.vm.on_tick(h.root), Err(VmError::Failed(_))));
    // A fresh instance of the same code serves the next request.
    let mut fresh = Harness::try_start_code(code, "", limited(timeout())).unwrap();
    let (_, _, v) = fresh.request(&[(":method", "GET"), (":path", "/"), ("x-no-loop", "1")], true);
    assert_eq!(v, Verdict::Continue);
    assert!(fresh.server.logged("on_request_headers: x-no-loop, continuing"));
    assert!(fresh.vm.failure().is_none());
}

#[test]
fn a_looping_instance_does_not_hold_up_an_instance_on_another_thread() {
    let code = load(&wat_bytes("trap_loop"), "trap_loop.wasm").unwrap();
    let looping = {
        let code = code.clone();
        std::thread::spawn(move || {
            let mut h = Harness::try_start_code(code, "", limited(timeout())).unwrap();
            let stream = TestStream::with_request(&[(":method", "GET"), (":path", "/")]);
            let ctx = h.vm.create_stream(h.root, Box::new(stream)).unwrap();
            h.vm.on_request_headers(ctx, 2, true)
        })
    };
    let mut other = Harness::try_start_code(code, "", limited(timeout())).unwrap();
    for _ in 0..20 {
        let (_, _, v) = other.request(&[(":method", "GET"), (":path", "/"), ("x-no-loop", "1")], true);
        assert_eq!(v, Verdict::Continue);
    }
    assert_timeout(looping.join().unwrap(), "proxy_on_request_headers");
    assert!(other.vm.failure().is_none(), "the other instance is untouched");
}

#[test]
fn a_rust_sdk_filter_spinning_in_request_headers_is_stopped() {
    let mut h = Harness::try_start_code(built_code("rust_sdk_filter.wasm"), "", limited(timeout())).unwrap();
    let stream = TestStream::with_request(&[(":method", "GET"), (":path", "/"), ("x-pw-test", "spin")]);
    let ctx = h.vm.create_stream(h.root, Box::new(stream)).unwrap();
    let started = Instant::now();
    assert_timeout(h.vm.on_request_headers(ctx, 3, true), "proxy_on_request_headers");
    assert!(started.elapsed() < LIMIT + SLACK);
    assert!(h.vm.failure().is_some());
}

#[test]
fn calls_within_the_time_limit_are_not_disturbed() {
    let mut h = Harness::try_start_code(built_code("rust_sdk_filter.wasm"), "", limited(timeout())).unwrap();
    for _ in 0..50 {
        let (ctx, stream, v) = h.request(&[(":method", "GET"), (":path", "/")], true);
        assert_eq!(v, Verdict::Continue);
        h.respond(ctx, &stream, &[(":status", "200")], true);
        h.vm.finish_stream(ctx).unwrap();
    }
    // Idle time between calls does not count.
    std::thread::sleep(LIMIT + Duration::from_millis(50));
    let (_, _, v) = h.request(&[(":method", "GET"), (":path", "/")], true);
    assert_eq!(v, Verdict::Continue);
    assert!(h.vm.failure().is_none());
}

#[test]
fn memory_growth_stops_at_the_cap_and_the_guest_sees_grow_fail() {
    let cap = 4 * 1024 * 1024;
    let mut h = Harness::start_with_on(RUNTIME, &wat_bytes("memory_bomb"), "", limited(memory(cap)));
    let (_, _, v) = h.request(&[(":method", "GET"), (":path", "/")], true);
    assert_eq!(v, Verdict::Continue, "memory.grow returned -1: no trap");
    assert!(h.server.logged("grow failed"));
    assert!(h.server.logged("memory_bomb pages=64"), "{:?}", h.server.messages());
    assert_eq!(h.vm.memory_size() as u64, cap);
    assert!(h.vm.failure().is_none());
    // Again on the same instance: it is at the cap already.
    h.server.clear_logs();
    let (_, _, v) = h.request(&[(":method", "GET"), (":path", "/")], true);
    assert_eq!(v, Verdict::Continue);
    assert!(h.server.logged("memory_bomb pages=64"));
}

#[test]
fn the_cap_is_rounded_down_to_whole_pages() {
    let mut h = Harness::start_with_on(RUNTIME, &wat_bytes("memory_bomb"), "", limited(memory(3 * 64 * 1024 + 100)));
    let _ = h.request(&[(":method", "GET"), (":path", "/")], true);
    assert!(h.server.logged("memory_bomb pages=3"), "{:?}", h.server.messages());
}

#[test]
fn a_module_whose_initial_memory_exceeds_the_cap_cannot_start() {
    // memory_bomb declares 2 pages; the cap is one.
    let e = Harness::try_start_on(RUNTIME, &wat_bytes("memory_bomb"), "", limited(memory(64 * 1024))).err().unwrap();
    assert!(e.contains("cannot instantiate"), "{e}");
}

#[test]
fn a_rust_sdk_allocation_beyond_the_cap_traps_and_does_not_abort_the_process() {
    let code = built_code("rust_sdk_filter.wasm");
    let mut h = Harness::try_start_code(code.clone(), "", limited(memory(16 * 1024 * 1024))).unwrap();
    // Within the cap: fine.
    let (ctx, stream, v) = h.request(&[(":method", "GET"), (":path", "/"), ("x-pw-test", "alloc"), ("x-pw-alloc-mb", "2")], true);
    assert_eq!(v, Verdict::Continue);
    h.respond(ctx, &stream, &[(":status", "200")], true);
    assert!(stream.data().response_header("x-pw-alloc").is_some());
    h.vm.finish_stream(ctx).unwrap();
    // Beyond it: the SDK's allocator fails, Rust aborts, which is a trap.
    let stream = TestStream::with_request(&[(":method", "GET"), (":path", "/"), ("x-pw-test", "alloc"), ("x-pw-alloc-mb", "64")]);
    let ctx = h.vm.create_stream(h.root, Box::new(stream)).unwrap();
    match h.vm.on_request_headers(ctx, 4, true) {
        Err(VmError::Trap { trap, .. }) => assert_eq!(trap.kind, TrapKind::Trap, "{}", trap.message),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(h.vm.memory_size() as u64 <= 16 * 1024 * 1024);
    assert!(h.vm.failure().is_some());
    // The next instance works.
    let mut fresh = Harness::try_start_code(code, "", limited(memory(16 * 1024 * 1024))).unwrap();
    let (_, _, v) = fresh.request(&[(":method", "GET"), (":path", "/")], true);
    assert_eq!(v, Verdict::Continue);
}

#[test]
fn both_limits_together() {
    let limits = Limits { max_memory_bytes: Some(8 * 1024 * 1024), callback_timeout: Some(LIMIT) };
    let mut h = Harness::start_with_on(RUNTIME, &wat_bytes("memory_bomb"), "", limited(limits));
    let (_, _, v) = h.request(&[(":method", "GET"), (":path", "/")], true);
    assert_eq!(v, Verdict::Continue);
    assert!(h.server.logged("memory_bomb pages=128"), "{:?}", h.server.messages());
    let code = load(&wat_bytes("trap_loop"), "trap_loop.wasm").unwrap();
    let mut h = Harness::try_start_code(code, "", limited(limits)).unwrap();
    let stream = TestStream::with_request(&[(":method", "GET"), (":path", "/")]);
    let ctx = h.vm.create_stream(h.root, Box::new(stream)).unwrap();
    assert_timeout(h.vm.on_request_headers(ctx, 2, true), "proxy_on_request_headers");
}
}
