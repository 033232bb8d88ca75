//! Failure policies and authorizations on Traffic Server: what happens after a
//! plugin traps under `fail_closed`, `fail_open` and `reload`; outgoing calls,
//! hostcalls and callbacks the operator did not allow.

mod e2e;

use std::time::Duration;

use e2e::ats::{AtsOptions, TrafficServer};
use e2e::client::Request;
use e2e::origin::Origin;

const WAIT: Duration = Duration::from_secs(5);

/// The Rust-SDK test filter with extra plugin keys (`failure_policy`, `authorizations`, ...).
fn filter_yaml(extra: &str, configuration: &str) -> String {
    format!(
        r#"config:
  name: "guarded"
  configuration: '{configuration}'
{extra}
  vm_config:
    vm_id: "guarded_vm"
    code:
      local:
        filename: "@REPO@/build/plugins/rust_sdk_filter.wasm"
"#
    )
}

fn start(test: &str, yaml: String) -> (Origin, TrafficServer) {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    // One thread, so that "the next request" meets the same instance.
    let ats = TrafficServer::start(AtsOptions::new(test).origin(origin.port()).exec_threads(1).file("filter.yaml", yaml).global_plugin(&["filter.yaml"]));
    (origin, ats)
}

fn send(ats: &TrafficServer, req: Request) -> e2e::client::Response {
    ats.send(&req.timeout(Duration::from_secs(10))).unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()))
}

#[test]
fn under_fail_closed_a_trap_answers_503_and_the_plugin_stays_failed() {
    let (origin, ats) = start("ats-policy-closed", filter_yaml("  failure_policy: fail_closed", ""));
    assert_eq!(send(&ats, Request::get("/boom").header("x-pw-test", "panic")).status, 503);
    assert!(ats.wait_for_log("proxy_on_request_headers trapped", WAIT), "{}", ats.log_report());
    for _ in 0..3 {
        assert_eq!(send(&ats, Request::get("/after")).status, 503, "{}", ats.log_report());
    }
    assert_eq!(origin.request_count(), 0);
    ats.assert_running();
}

#[test]
fn traffic_servers_fail_open_true_skips_a_trapping_plugin_and_the_request_reaches_the_origin() {
    let (origin, ats) = start("ats-policy-open", filter_yaml("  fail_open: true", ""));
    let r = send(&ats, Request::get("/boom").header("x-pw-test", "panic"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.header("x-proxy-wasm"), None, "the failed plugin did not filter the response");
    let r = send(&ats, Request::get("/after"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, None));
    assert_eq!(origin.request_count(), 2);
}

#[test]
fn under_reload_a_trap_answers_503_and_the_next_request_gets_a_fresh_instance() {
    let (_origin, ats) = start("ats-policy-reload", filter_yaml("  failure_policy: reload", ""));
    assert_eq!(send(&ats, Request::get("/").header("x-pw-test", "config")).status, 200);
    let configured = ats.count_in_logs("root 1 configured");
    assert_eq!(send(&ats, Request::get("/boom").header("x-pw-test", "panic")).status, 503);
    let r = send(&ats, Request::get("/after"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")), "{}", ats.log_report());
    // proxy_on_vm_start and proxy_on_configure ran again in the new instance.
    assert!(ats.wait_for_logs_matching(WAIT, |logs| logs.matches("root 1 configured").count() > configured), "{}", ats.log_report());
    assert!(ats.diags_log().contains("new instances of guarded on this thread after a failure"), "{}", ats.log_report());
}

#[test]
fn under_reload_a_plugin_that_fails_every_time_is_reloaded_with_back_off() {
    let (_origin, ats) = start("ats-policy-backoff", filter_yaml("  failure_policy: reload", ""));
    // Every request traps; reloads come at most after 0, 100, 200, 400 ms...:
    // 30 requests in a row cause only a few reloads, each answered 503.
    for _ in 0..30 {
        assert_eq!(send(&ats, Request::get("/boom").header("x-pw-test", "panic")).status, 503);
    }
    let reloads = ats.count_in_logs("new instances of guarded on this thread after a failure");
    assert!((1..30).contains(&reloads), "{reloads} reloads for 30 failures\n{}", ats.log_report());
    ats.assert_running();
}

#[test]
fn an_http_call_to_an_upstream_not_in_allowed_hosts_is_refused_and_logged_once() {
    let callout = Origin::start();
    let config = format!(r#"{{"upstream":"127.0.0.1:{}","callout_timeout_ms":2000}}"#, callout.port());
    // Deny by default: no `authorizations` at all.
    let (origin, ats) = start("ats-authz-denied-call", filter_yaml("", &config));
    for _ in 0..2 {
        let r = send(&ats, Request::get("/c").header("x-pw-test", "http-call"));
        assert_eq!(r.status, 200, "{}", ats.log_report());
        assert_eq!(r.header("x-pw-callout-dispatch"), Some("BAD_ARGUMENT"));
    }
    assert_eq!(callout.request_count(), 0);
    assert_eq!(origin.request_count(), 2);
    let line = format!("denied http_call to \"127.0.0.1:{}\"", callout.port());
    assert!(ats.wait_for_log(&line, WAIT), "{}", ats.log_report());
    assert_eq!(ats.count_in_logs(&line), 1, "logged once");
}

#[test]
fn an_http_call_to_a_listed_upstream_goes_through() {
    let callout = Origin::start();
    let config = format!(r#"{{"upstream":"127.0.0.1:{}","callout_timeout_ms":2000}}"#, callout.port());
    let extra = format!("  authorizations:\n    allowed_hosts: [\"127.0.0.1:{}\"]", callout.port());
    let (_origin, ats) = start("ats-authz-allowed-call", filter_yaml(&extra, &config));
    let r = send(&ats, Request::get("/c").header("x-pw-test", "http-call"));
    assert_eq!((r.header("x-pw-callout-dispatch"), r.header("x-pw-callout-status")), (Some("OK"), Some("200")), "{}", ats.log_report());
    assert_eq!(callout.request_count(), 1);
}

/// Everything the Rust SDK needs, without `proxy_get_current_time_nanoseconds`
/// and without the `proxy_on_response_headers` callback.
const CAPABILITIES: &str = r#"  capability_restriction_config:
    allowed_capabilities: [proxy_log, proxy_get_log_level, proxy_set_tick_period_milliseconds, proxy_get_buffer_bytes,
      proxy_set_buffer_bytes, proxy_get_buffer_status, proxy_get_header_map_pairs, proxy_get_header_map_value,
      proxy_add_header_map_value, proxy_replace_header_map_value, proxy_get_header_map_size, proxy_get_property,
      proxy_set_effective_context, proxy_continue_stream, proxy_send_local_response, proxy_define_metric,
      proxy_increment_metric, proxy_record_metric, proxy_get_metric, proxy_get_shared_data, proxy_set_shared_data,
      proxy_register_shared_queue, proxy_resolve_shared_queue, proxy_enqueue_shared_queue, proxy_dequeue_shared_queue,
      proxy_http_call, proxy_done, proxy_on_tick, proxy_on_queue_ready, proxy_on_http_call_response,
      proxy_on_context_create, proxy_on_vm_start, proxy_on_configure, proxy_on_request_headers, proxy_on_done,
      proxy_on_log, proxy_on_delete, fd_write, environ_sizes_get, environ_get, proc_exit]"#;

#[test]
fn a_callback_outside_allowed_capabilities_is_never_called() {
    let (_origin, ats) = start("ats-authz-callback", filter_yaml(CAPABILITIES, ""));
    let r = send(&ats, Request::get("/"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    // on_response_headers adds x-proxy-wasm and the report headers: not called.
    assert_eq!(r.header("x-proxy-wasm"), None, "{:?}", r.headers);
    assert!(ats.wait_for_log("denied callback proxy_on_response_headers", WAIT), "{}", ats.log_report());
}

#[test]
fn a_hostcall_outside_allowed_capabilities_answers_internal_failure_and_is_logged() {
    let (_origin, ats) = start("ats-authz-hostcall", filter_yaml(&format!("  failure_policy: reload\n{CAPABILITIES}"), ""));
    // The Rust SDK panics on the INTERNAL_FAILURE answer (cpp-host's): the plugin traps, 503.
    let r = send(&ats, Request::get("/").header("x-pw-test", "time"));
    assert_eq!(r.status, 503, "{}", ats.log_report());
    assert!(ats.wait_for_log("denied hostcall proxy_get_current_time_nanoseconds", WAIT), "{}", ats.log_report());
    assert!(ats.diags_log().contains("unexpected status: 10"), "{}", ats.log_report());
    ats.assert_running();
}

#[test]
fn global_and_per_route_plugins_with_one_vm_id_share_their_shared_data() {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let port = origin.port();
    let yaml = |name: &str| format!("config:\n  name: {name}\n  vm_config:\n    vm_id: common\n    code: {{ local: {{ filename: \"@REPO@/build/plugins/rust_sdk_filter.wasm\" }} }}\n");
    let remap = format!("map http://route.test/ http://127.0.0.1:{port}/ @plugin=proxy_wasm_ats.so @pparam=route.yaml\nmap / http://127.0.0.1:{port}/\n");
    let ats = TrafficServer::start(
        AtsOptions::new("ats-shared-global-remap").origin(port).remap_config(remap).file("global.yaml", yaml("global")).file("route.yaml", yaml("route")).global_plugin(&["global.yaml"]),
    );
    // On route.test both plugins count (2 per request); elsewhere only the global one.
    let r = send(&ats, Request::get("/").host("other.test").header("x-pw-test", "shared").header("x-pw-key", "hits"));
    assert_eq!(r.header("x-pw-shared"), Some("1"), "{}", ats.log_report());
    let r = send(&ats, Request::get("/").host("route.test").header("x-pw-test", "shared").header("x-pw-key", "hits"));
    let seen: Vec<&str> = r.header_all("x-pw-shared");
    assert_eq!(seen, vec!["2", "3"], "one store for both: {:?}\n{}", r.headers, ats.log_report());
}
