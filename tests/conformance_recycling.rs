//! Recycling (`vm_config.kill_options`, Otoroshi-style) and hostile modules,
//! written once and run on NGINX (`nginx::...`) and on Traffic Server
//! (`ats::...`) through `e2e::server::ServerUnderTest`: an instance is
//! replaced after a number of calls, when its memory passes a fraction of its
//! maximum, or after it sat unused, and the fresh instance runs
//! `proxy_on_vm_start` and `proxy_on_configure` again (the Rust-SDK filter
//! counts its VM starts in the shared-data key `vm.starts`); bad pointers and
//! lengths in every kind of hostcall get INVALID_MEMORY_ACCESS (or
//! BAD_ARGUMENT) and never crash the server or trap the module
//! (tests/wat/hostile.wat, cases in tests/wat/README.md). One worker (one
//! exec thread) per server, so that "the next request" meets the same
//! instances.
//!
//! Run with `make ats nginx plugins && cargo test --test conformance_recycling`
//! (and with `E2E_RUNTIME=wamr`).

mod e2e;

use std::time::Duration;

use e2e::client::{Request, Response};
use e2e::origin::Origin;
use e2e::server::{ServerUnderTest, Setup};

const WAIT: Duration = Duration::from_secs(5);

/// The Rust-SDK test filter `recycled` with `kill_options`, one worker.
fn start<S: ServerUnderTest>(test: &str, kill_options: &str) -> (Origin, S) {
    let origin = Origin::start();
    let yaml = format!(
        "config:\n  name: recycled\n  vm_config:\n    vm_id: {test}\n    kill_options: {kill_options}\n    code: {{ local: {{ filename: \"@REPO@/build/plugins/rust_sdk_filter.wasm\" }} }}\n"
    );
    let s = S::start(Setup::new(test, origin.port()).workers(1).plugin("recycled", yaml));
    (origin, s)
}

fn send<S: ServerUnderTest>(s: &S, req: Request) -> Response {
    s.send(&req.timeout(Duration::from_secs(20))).unwrap_or_else(|e| panic!("{}: {e}\n{}", S::NAME, s.log_report()))
}

/// How many times the plugin's VM started (start-up check included), read through the plugin.
fn vm_starts<S: ServerUnderTest>(s: &S) -> u64 {
    let r = send(s, Request::get("/").header("x-pw-test", "shared-get").header("x-pw-key", "vm.starts"));
    assert_eq!(r.status, 200, "{}", s.log_report());
    r.body_str().parse().unwrap_or_else(|_| panic!("vm.starts = {:?}", r.body_str()))
}

e2e::server::for_each_server! {

// ------------------------------------------------------------------ recycling

#[test]
fn an_instance_is_replaced_after_max_calls_and_starts_again() {
    let (_origin, s) = start::<Server>("recycle-calls", "{ max_calls: 30 }");
    let before = vm_starts(&s);
    for _ in 0..12 {
        let r = send(&s, Request::get("/"));
        assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")), "{}", s.log_report());
    }
    s.expect_log("after recycling: recycled: ", WAIT);
    s.expect_log("(kill_options.max_calls 30)", WAIT);
    assert!(vm_starts(&s) > before, "proxy_on_vm_start ran again in the new instance\n{}", s.log_report());
}

#[test]
fn an_instance_whose_memory_passes_max_memory_usage_is_replaced() {
    // 1% of 4 GiB (no memory limit set) is about 41 MiB; the request allocates 64 MiB.
    let (_origin, s) = start::<Server>("recycle-memory", "{ max_memory_usage: 0.01 }");
    let before = vm_starts(&s);
    let r = send(&s, Request::get("/").header("x-pw-test", "alloc").header("x-pw-alloc-mb", "64"));
    assert_eq!(r.status, 200, "{}", s.log_report());
    assert!(vm_starts(&s) > before, "{}", s.log_report());
    s.expect_log("kill_options.max_memory_usage 0.01", WAIT);
}

#[test]
fn an_instance_unused_for_max_unused_duration_is_shut_down_and_a_fresh_one_serves_the_next_request() {
    let (_origin, s) = start::<Server>("recycle-idle", "{ max_unused_duration: 1s }");
    let before = vm_starts(&s);
    s.expect_log("replaced after recycling: recycled: unused for", Duration::from_secs(10));
    let r = send(&s, Request::get("/"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")), "{}", s.log_report());
    assert!(vm_starts(&s) > before, "{}", s.log_report());
}

// ------------------------------------------------------------------ hostile module

#[test]
fn out_of_bounds_pointers_get_invalid_memory_access_and_the_server_keeps_serving() {
    let origin = Origin::start();
    let yaml = "config:\n  name: hostile\n  configuration: hostile\n  vm_config:\n    vm_id: hostile\n    code: { local: { filename: \"@REPO@/build/plugins/hostile.wasm\" } }\n";
    let s = <Server as ServerUnderTest>::start(Setup::new("hostile", origin.port()).workers(1).plugin("hostile", yaml));
    let r = send(&s, Request::post("/echo", "hello"));
    assert_eq!(r.status, 200, "{}", s.log_report());
    for line in ["hostile configure done", "hostile request_headers done", "hostile request_body done"] {
        s.expect_log(line, WAIT);
    }
    let logs = s.logs();
    for (case, status) in [
        ("cfg_get_ret_ptr_oob", 6),
        ("log_msg_oob", 6),
        ("log_ptr_len_wrap", 6),
        ("hdr_get_key_oob", 6),
        ("hdr_get_ret_straddle", 6),
        ("hdr_get_map_99", 2),
        ("hdr_add_probe", 0),
    ] {
        assert!(logs.contains(&format!("{case}={status}")), "{case}={status}\n{}", s.log_report());
    }
    assert!(!logs.contains("trapped"), "no hostile call trapped the module\n{}", s.log_report());
    // The same instance goes on serving.
    for _ in 0..3 {
        assert_eq!(send(&s, Request::get("/again")).status, 200, "{}", s.log_report());
    }
    s.assert_nothing_died();
}

}
