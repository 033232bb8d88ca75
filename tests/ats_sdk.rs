//! The Rust-SDK filter's cases that are about Traffic Server itself, on a
//! real traffic_server in front of a real origin: the Envoy property values
//! it can give (upstream, sizes in the log phase), its log levels and debug
//! tag, `http_call` details, the stream lifecycle of a closed stream, the
//! failure policies without reload, and the ABI 0.1.0 WAT module (its load
//! log line). Every case both servers must answer the same way (headers,
//! bodies, local responses, shared data, queues, metrics, properties, ticks,
//! the AssemblyScript filter, chains, the SDK matrix) is in
//! tests/conformance_sdk.rs, written once for both (protocol:
//! tests/plugins/README.md; the in-memory equivalents with the expected
//! outcomes: tests/rust_sdk.rs, tests/assemblyscript.rs,
//! tests/wat_modules.rs).
//!
//! Covered elsewhere: ticks, `tick-resume`, 200 concurrent callouts, remap
//! use, 1 MiB bodies, stats (tests/ats.rs); `http-call-req-body` /
//! `-resp-body` (tests/ats_response.rs); authorizations
//! (tests/ats_policies.rs). `resume-in-body` only without a body: with one,
//! as on Envoy, its body callback never runs while its headers are paused
//! (see tests/ats.rs).

mod e2e;

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use e2e::ats::{AtsOptions, TrafficServer};
use e2e::client::{Request, Response};
use e2e::origin::{self, Origin};

const WAIT: Duration = Duration::from_secs(5);
const RUST: &str = "rust_sdk_filter.wasm";

/// A plugin YAML (snake_case schema). `extra` is inserted at the plugin level
/// (e.g. `  fail_open: true`); outgoing calls are allowed everywhere.
fn plugin_yaml(
    name: &str,
    wasm: &str,
    root_id: &str,
    configuration: &str,
    vm_configuration: &str,
    extra: &str,
) -> String {
    format!(
        r#"config:
  name: "{name}"
  root_id: "{root_id}"
  configuration: '{configuration}'
  authorizations:
    allowed_hosts: ["*"]
{extra}
  vm_config:
    vm_id: "{name}_vm"
    configuration: '{vm_configuration}'
    code:
      local:
        filename: "@REPO@/build/plugins/{wasm}"
"#
    )
}

fn rust_yaml(name: &str, configuration: &str) -> String {
    plugin_yaml(name, RUST, "", configuration, "", "")
}

/// The origin, and Traffic Server with the given plugin YAMLs as global plugins, in order.
fn start_with(
    test: &str,
    origin: Origin,
    threads: usize,
    yamls: &[(&str, String)],
    tune: impl FnOnce(AtsOptions) -> AtsOptions,
) -> (Origin, TrafficServer) {
    e2e::ats::require_plugin_so();
    let mut opts = AtsOptions::new(test).origin(origin.port()).exec_threads(threads);
    for (file, text) in yamls {
        opts = opts.file(*file, text.clone());
    }
    let names: Vec<&str> = yamls.iter().map(|(f, _)| *f).collect();
    let ats = TrafficServer::start(tune(opts.global_plugin(&names)));
    (origin, ats)
}

/// The Rust-SDK filter (plugin name `rust-filter`) with `configuration`, default origin, 2 threads.
fn start_rust(test: &str, configuration: &str) -> (Origin, TrafficServer) {
    start_with(test, Origin::start(), 2, &[("filter.yaml", rust_yaml("rust-filter", configuration))], |o| o)
}

fn send(ats: &TrafficServer, req: Request) -> Response {
    ats.send(&req).unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()))
}

/// A request with `x-pw-test: <cases>`.
fn case(path: &str, cases: &str) -> Request {
    Request::get(path).header("x-pw-test", cases)
}

fn shared_value(ats: &TrafficServer, key: &str) -> String {
    send(ats, case("/shared", "shared-get").header("x-pw-key", key)).body_str()
}

// ------------------------------------------------------------------ one shared Traffic Server

/// Traffic Server with the filter (`rust-filter`, root id `sdk-root`,
/// default configuration) in front of [`origin::sdk_cases_origin`].
struct Shared {
    origin: Origin,
    ats: TrafficServer,
}

/// The shared server: started by the first test that needs it, stopped when
/// no running test holds it any more (the tests that use it sit together in
/// `on_one_server`, so they run one after the other and rarely restart it).
fn server() -> Arc<Shared> {
    static SERVER: Mutex<Weak<Shared>> = Mutex::new(Weak::new());
    let mut slot = SERVER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = slot.upgrade() {
        return s;
    }
    let yaml = plugin_yaml("rust-filter", RUST, "sdk-root", "", "", "");
    let (origin, ats) = start_with("sdk-shared", origin::sdk_cases_origin(), 2, &[("f.yaml", yaml)], |o| o);
    let s = Arc::new(Shared { origin, ats });
    *slot = Arc::downgrade(&s);
    s
}

/// The cases that need nothing but the filter with its default configuration
/// run on one Traffic Server (compiling the filter dominates a start-up):
/// each uses its own paths, shared-data keys and log lines.
mod on_one_server {
    use super::*;

    // The Envoy property paths: tests/conformance_sdk.rs
    // (envoy_property_paths_have_envoy_values_in_request_response_and_log_phases).

    #[test]
    fn plugin_log_levels_map_to_debug_tag_proxy_wasm_note_warning_and_error() {
        let f = server();
        let (_origin, ats) = (&f.origin, &f.ats);
        let r = send(&ats, case("/log", "log"));
        assert_eq!(r.header("x-pw-logged"), Some("6"));
        assert_eq!(
            (r.header("x-pw-log-level"), r.header("x-pw-log-level-name")),
            (Some("0"), Some("trace")),
            "the debug tag is on"
        );
        assert!(ats.wait_for_log("log-test level=critical", WAIT), "{}", ats.log_report());
        let logs = ats.diags_log();
        // Traffic Server 9.2 writes TSDebug output as `DIAG: (<tag>) ...`.
        for (level, marker) in [
            ("trace", "DIAG: (proxy_wasm)"),
            ("debug", "DIAG: (proxy_wasm)"),
            ("info", "NOTE:"),
            ("warn", "WARNING:"),
            ("error", "ERROR:"),
            ("critical", "ERROR:"),
        ] {
            let line = log_test_line(&logs, level).unwrap_or_else(|| panic!("no {level} line\n{}", ats.log_report()));
            assert!(
                line.contains(&format!(
                    "{marker} [proxy_wasm] rust-filter: rust-sdk-filter log-test level={level} context="
                )),
                "{level}: {line}"
            );
        }
    }
}

// ------------------------------------------------------------------ http_call

// What a call reports and the filter's call variants: tests/conformance_http_calls.rs.

// ------------------------------------------------------------------ log

/// The diags.log line of the `log` case at `level`, if any.
fn log_test_line(logs: &str, level: &str) -> Option<String> {
    logs.lines().find(|l| l.contains(&format!("rust-sdk-filter log-test level={level} "))).map(str::to_string)
}

#[test]
fn without_the_debug_tag_plugins_log_from_info_up_and_errors_are_still_visible() {
    let (_origin, ats) =
        start_with("sdk-log-quiet", Origin::start(), 2, &[("f.yaml", rust_yaml("rust-filter", ""))], |o| {
            o.debug_tags("")
        });
    let r = send(&ats, case("/log", "log"));
    assert_eq!((r.header("x-pw-log-level"), r.header("x-pw-log-level-name")), (Some("2"), Some("info")));
    assert!(ats.wait_for_log("log-test level=critical", WAIT), "{}", ats.log_report());
    let logs = ats.diags_log();
    for level in ["info", "warn", "error", "critical"] {
        assert!(log_test_line(&logs, level).is_some(), "{level}\n{}", ats.log_report());
    }
    for level in ["trace", "debug"] {
        assert!(log_test_line(&logs, level).is_none(), "{level}\n{}", ats.log_report());
    }
}

// ------------------------------------------------------------------ stream lifecycle

#[test]
fn on_log_on_done_and_on_delete_run_once_per_transaction_even_for_a_closed_stream() {
    let (origin, ats) = start_rust("sdk-close", "");
    let closed = ats.send(&case("/closed", "close"));
    match &closed {
        Err(e) => assert!(e.is_closed(), "{e}"),
        // Traffic Server ends the transaction with its own error (500) and closes the connection.
        Ok(r) => assert!(
            r.status >= 500 && r.closes_connection() && r.body.is_empty(),
            "a closed stream gets no regular response: {} {:?}",
            r.status,
            r.headers
        ),
    }
    assert_eq!(origin.request_count(), 0, "the origin is not contacted");
    for i in 0..2 {
        assert_eq!(send(&ats, Request::get(&format!("/n{i}"))).status, 200);
    }
    // Three transactions (the closed one, two proxied) before the shared-gets
    // that read: each read sees one more closed transaction than the one
    // before it, once the first three have closed.
    let deadline = Instant::now() + WAIT;
    let mut reads = 0;
    loop {
        let done: u32 = shared_value(&ats, "done.count").parse().unwrap();
        reads += 1;
        if done == 3 + reads - 1 {
            break;
        }
        assert!(Instant::now() < deadline, "done.count={done} after {reads} reads\n{}", ats.log_report());
        std::thread::sleep(Duration::from_millis(50));
    }
    // on_delete and on_log ran as often (the reads are transactions too; the
    // one just before may not have closed yet).
    let deletes: u32 = shared_value(&ats, "delete.count").parse().unwrap();
    assert!((3 + reads - 1..=3 + reads).contains(&deletes), "delete.count={deletes}, done.count={}", 3 + reads - 1);
    let logs: u32 = shared_value(&ats, "log.count").parse().unwrap();
    assert!((3 + reads..=3 + reads + 1).contains(&logs), "log.count={logs}, done.count={}", 3 + reads - 1);
    assert_eq!(shared_value(&ats, "log.last"), "GET /shared 200");
    ats.assert_running();
}

// ------------------------------------------------------------------ failures

fn trap_yaml(extra: &str) -> String {
    plugin_yaml("trapper", RUST, "", "", "", extra)
}

#[test]
fn by_default_a_trapping_plugin_fails_closed_with_503_and_traffic_server_keeps_running() {
    let (origin, ats) = start_with("sdk-fail-closed", Origin::start(), 1, &[("t.yaml", trap_yaml(""))], |o| o);
    assert_eq!(send(&ats, case("/boom", "panic")).status, 503, "{}", ats.log_report());
    assert_eq!(send(&ats, Request::get("/after")).status, 503, "the plugin stays failed");
    assert_eq!(origin.request_count(), 0);
    ats.assert_running();
}

#[test]
fn with_fail_open_true_a_trapping_plugin_is_skipped_and_the_request_reaches_the_origin() {
    let (origin, ats) =
        start_with("sdk-fail-open", Origin::start(), 1, &[("t.yaml", trap_yaml("  fail_open: true"))], |o| o);
    let r = send(&ats, case("/boom", "panic"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.body_str(), "hello from origin");
    assert_eq!(r.header("x-proxy-wasm"), None, "the failed plugin does not filter the response");
    assert_eq!(origin.wait_for_path("/boom", WAIT).header("x-pw-test"), Some("panic"));
    let r = send(&ats, Request::get("/after"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, None));
}

// ------------------------------------------------------------------ ABI 0.1.0

#[test]
fn an_abi_0_1_0_module_filters_requests_and_responses() {
    let yaml = plugin_yaml("abi010", "abi_0_1_0.wasm", "", "abi-0.1.0", "vm-0.1.0", "");
    let (origin, ats) = start_with("sdk-abi010", Origin::start(), 1, &[("a.yaml", yaml)], |o| o);
    let r = send(&ats, Request::get("/old"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.header("x-abi"), Some("0.1.0"), "{:?}", r.headers);
    assert_eq!(origin.wait_for_path("/old", WAIT).header("x-abi"), Some("0.1.0"));
    assert!(ats.diags_log().contains("loaded plugin \"abi010\" (ABI 0.1.0"), "{}", ats.log_report());
    // The module's own log, in order.
    // The start-up check at load time already logged one root context's lines.
    assert!(
        ats.wait_for_logs_matching(WAIT, |l| l.matches("abi010: on_delete ctx=").count() >= 2),
        "{}",
        ats.log_report()
    );
    let logs = ats.diags_log();
    // After the start-up check: the thread's instance, then the transaction.
    let mut at = logs.find("loaded plugin \"abi010\"").unwrap();
    for line in [
        "on_context_create ctx=",
        "vm_config=vm-0.1.0",
        "config=abi-0.1.0",
        "on_request_headers ctx=",
        "missing status=0 len=0",
        "add_request_header status=0",
        "on_response_headers ctx=",
        "add_response_header status=0",
        "on_done ctx=",
        "on_log ctx=",
        "on_delete ctx=",
    ] {
        match logs[at..].find(line) {
            Some(i) => at += i + line.len(),
            None => panic!("{line:?} missing or out of order\n{}", ats.log_report()),
        }
    }
}
