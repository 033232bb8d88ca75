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
    assert!(ats.diags_log().contains("replaced after a failure of guarded (failure_policy: reload)"), "{}", ats.log_report());
}

#[test]
fn under_reload_a_plugin_that_fails_every_time_is_reloaded_with_back_off() {
    let (_origin, ats) = start("ats-policy-backoff", filter_yaml("  failure_policy: reload", ""));
    // Every request traps; reloads come at most after 0, 100, 200, 400 ms...:
    // 30 requests in a row cause only a few reloads, each answered 503.
    for _ in 0..30 {
        assert_eq!(send(&ats, Request::get("/boom").header("x-pw-test", "panic")).status, 503);
    }
    let reloads = ats.count_in_logs("replaced after a failure of guarded (failure_policy: reload)");
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

// ---------------------------------------------------------------------------
// A trap in each stream callback under each failure policy (`trap.wasm`,
// tests/wat/README.md), and bodies past `max_body_size`: the rules of the
// core's filter chain (docs/adr/0001-one-filter-chain.md, 2.2 rules 7 and 8).

/// `trap.wasm` trapping in the callback `selector`, under `policy`
/// (`failure_policy: ...`, or Traffic Server's `fail_open: true`).
fn trap_yaml(selector: &str, policy: &str) -> String {
    format!("config:\n  name: trapper\n  configuration: {selector}\n  {policy}\n  vm_config:\n    vm_id: trapper_vm\n    code: {{ local: {{ filename: \"@REPO@/build/plugins/trap.wasm\" }} }}\n")
}

fn start_trap(test: &str, selector: &str, policy: &str) -> (Origin, TrafficServer) {
    start(test, trap_yaml(selector, policy))
}

/// A request that reaches `selector`'s callback: a body for `request_body`
/// (echoed by the origin), a response body for everything else.
fn trap_request(selector: &str) -> Request {
    match selector {
        "request_body" => Request::post("/echo/trap", "a request body"),
        _ => Request::get("/trap"),
    }
}

/// Answered 503 by the chain (the plugin failed before the response started).
fn assert_503(ats: &TrafficServer, r: &e2e::client::Response) {
    assert_eq!((r.status, r.body_str().as_str()), (503, "plugin failure\n"), "{}", ats.log_report());
}

/// Refused 503 at the start of the transaction: a plugin of its chain failed
/// earlier and does not fail open (Traffic Server's own error body).
fn assert_refused(ats: &TrafficServer, r: &e2e::client::Response) {
    assert_eq!(r.status, 503, "{}", ats.log_report());
}

/// The response was cut: its headers went out, the connection was closed
/// before its end.
fn assert_cut(ats: &TrafficServer, selector: &str) {
    let r = ats.send(&trap_request(selector).timeout(Duration::from_secs(10)));
    let e = r.map(|r| (r.status, r.body_str())).expect_err("the client sees the response cut off");
    assert!(e.is_closed(), "{e}\n{}", ats.log_report());
}

fn assert_trap_logged(ats: &TrafficServer, selector: &str) {
    assert!(ats.wait_for_log(&format!("trapping in {selector}"), WAIT), "{}", ats.log_report());
    assert!(ats.wait_for_log(&format!("proxy_on_{selector} trapped"), WAIT), "{}", ats.log_report());
}

/// fail_closed, before the response started: 503; the plugin stays failed,
/// so the next request gets 503 without reaching the origin.
fn fail_closed_answers_503(test: &str, selector: &str, origin_requests: usize) {
    let (origin, ats) = start_trap(test, selector, "failure_policy: fail_closed");
    let r = send(&ats, trap_request(selector));
    assert_503(&ats, &r);
    assert_trap_logged(&ats, selector);
    assert_eq!(origin.request_count(), origin_requests, "{}", ats.log_report());
    assert_refused(&ats, &send(&ats, trap_request(selector)));
    assert_eq!(origin.request_count(), origin_requests, "refused before the origin");
    ats.assert_running();
}

#[test]
fn fail_closed_a_trap_in_on_request_headers_answers_503() {
    fail_closed_answers_503("ats-trap-closed-req-headers", "request_headers", 0);
}

#[test]
fn fail_closed_a_trap_in_on_request_body_answers_503_and_the_request_is_not_sent_on() {
    fail_closed_answers_503("ats-trap-closed-req-body", "request_body", 0);
}

#[test]
fn fail_closed_a_trap_in_on_response_headers_answers_503_instead_of_the_origins_response() {
    fail_closed_answers_503("ats-trap-closed-resp-headers", "response_headers", 1);
}

#[test]
fn fail_closed_a_trap_in_on_response_body_cuts_the_response() {
    let (origin, ats) = start_trap("ats-trap-closed-resp-body", "response_body", "failure_policy: fail_closed");
    assert_cut(&ats, "response_body");
    assert_trap_logged(&ats, "response_body");
    assert_eq!(origin.request_count(), 1);
    // The plugin stays failed: the next request is refused.
    assert_refused(&ats, &send(&ats, trap_request("response_body")));
    assert_eq!(origin.request_count(), 1);
    ats.assert_running();
}

/// fail_open: the plugin is skipped and the transaction goes on unchanged;
/// later transactions run without it (no VM entered, no trap logged again).
fn fail_open_skips_the_plugin(test: &str, selector: &str) {
    let (origin, ats) = start_trap(test, selector, "fail_open: true");
    let r = send(&ats, trap_request(selector));
    let body = if selector == "request_body" { "a request body" } else { "hello from origin" };
    assert_eq!((r.status, r.body_str().as_str()), (200, body), "{}", ats.log_report());
    assert_trap_logged(&ats, selector);
    let r = send(&ats, trap_request(selector));
    assert_eq!((r.status, r.body_str().as_str()), (200, body), "{}", ats.log_report());
    assert_eq!(origin.request_count(), 2);
    if selector == "request_body" {
        assert_eq!(origin.requests()[0].body_str(), "a request body", "the body the plugin held went on as it was");
    }
    assert_eq!(ats.count_in_logs(&format!("trapping in {selector}")), 1, "the failed plugin is not called again\n{}", ats.log_report());
    ats.assert_running();
}

#[test]
fn fail_open_a_trap_in_on_request_headers_skips_the_plugin() {
    fail_open_skips_the_plugin("ats-trap-open-req-headers", "request_headers");
}

#[test]
fn fail_open_a_trap_in_on_request_body_skips_the_plugin_and_the_body_goes_on() {
    fail_open_skips_the_plugin("ats-trap-open-req-body", "request_body");
}

#[test]
fn fail_open_a_trap_in_on_response_headers_skips_the_plugin() {
    fail_open_skips_the_plugin("ats-trap-open-resp-headers", "response_headers");
}

#[test]
fn fail_open_a_trap_in_on_response_body_skips_the_plugin_and_the_body_goes_on() {
    fail_open_skips_the_plugin("ats-trap-open-resp-body", "response_body");
}

/// reload: the failed transaction ends as under fail_closed (503, or cut),
/// and the next request runs on a fresh instance (proxy_on_vm_start and
/// proxy_on_configure again), which here traps again.
fn reload_gives_the_next_request_a_fresh_instance(test: &str, selector: &str, cut: bool) {
    let (_origin, ats) = start_trap(test, selector, "failure_policy: reload");
    if cut {
        assert_cut(&ats, selector);
    } else {
        assert_503(&ats, &send(&ats, trap_request(selector)));
    }
    assert_trap_logged(&ats, selector);
    let started = ats.count_in_logs(&format!("selector={selector}"));
    if cut {
        assert_cut(&ats, selector);
    } else {
        assert_503(&ats, &send(&ats, trap_request(selector)));
    }
    assert!(ats.wait_for_log("replaced after a failure of trapper (failure_policy: reload)", WAIT), "{}", ats.log_report());
    assert!(ats.wait_for_logs_matching(WAIT, |logs| logs.matches(&format!("selector={selector}")).count() > started), "a fresh instance ran proxy_on_configure\n{}", ats.log_report());
    assert!(ats.wait_for_logs_matching(WAIT, |logs| logs.matches(&format!("trapping in {selector}")).count() == 2), "{}", ats.log_report());
    ats.assert_running();
}

#[test]
fn reload_a_trap_in_on_request_headers_answers_503_and_the_next_request_gets_a_fresh_instance() {
    reload_gives_the_next_request_a_fresh_instance("ats-trap-reload-req-headers", "request_headers", false);
}

#[test]
fn reload_a_trap_in_on_request_body_answers_503_and_the_next_request_gets_a_fresh_instance() {
    reload_gives_the_next_request_a_fresh_instance("ats-trap-reload-req-body", "request_body", false);
}

#[test]
fn reload_a_trap_in_on_response_headers_answers_503_and_the_next_request_gets_a_fresh_instance() {
    reload_gives_the_next_request_a_fresh_instance("ats-trap-reload-resp-headers", "response_headers", false);
}

#[test]
fn reload_a_trap_in_on_response_body_cuts_the_response_and_the_next_request_gets_a_fresh_instance() {
    reload_gives_the_next_request_a_fresh_instance("ats-trap-reload-resp-body", "response_body", true);
}

/// The Rust-SDK filter holding bodies (it pauses until their end to
/// upper-case them), with `max_body_size: 1KiB`.
fn start_small_bodies(test: &str) -> (Origin, TrafficServer) {
    let origin = Origin::with_handler(|req| {
        if req.path_only().starts_with("/big") {
            e2e::origin::Response::new(200).body(e2e::pattern_body(4096))
        } else {
            e2e::origin::default_handler(req)
        }
    });
    let ats = TrafficServer::start(
        AtsOptions::new(test).origin(origin.port()).exec_threads(1).file("filter.yaml", filter_yaml("  max_body_size: 1KiB", "")).global_plugin(&["filter.yaml"]),
    );
    (origin, ats)
}

#[test]
fn a_request_body_a_plugin_holds_past_max_body_size_gets_413_and_is_not_sent_on() {
    e2e::ats::require_plugin_so();
    let (origin, ats) = start_small_bodies("ats-limit-req-body");
    let r = send(&ats, Request::post("/echo", e2e::pattern_body(4096)).header("x-pw-test", "req-body-upper"));
    assert_eq!((r.status, r.body_str().as_str()), (413, "request body too large\n"), "{}", ats.log_report());
    assert!(ats.wait_for_log("guarded: the request body passed max_body_size (1024 bytes) held for the plugin; answering 413", WAIT), "{}", ats.log_report());
    assert_eq!(origin.request_count(), 0);
    // Under the limit: unaffected.
    let r = send(&ats, Request::post("/echo", "small").header("x-pw-test", "req-body-upper"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "SMALL"), "{}", ats.log_report());
}

#[test]
fn a_response_body_a_plugin_holds_past_max_body_size_is_cut() {
    e2e::ats::require_plugin_so();
    let (_origin, ats) = start_small_bodies("ats-limit-resp-body");
    let r = ats.send(&Request::get("/big").header("x-pw-test", "resp-body-upper").timeout(Duration::from_secs(10)));
    let e = r.map(|r| (r.status, r.body.len())).expect_err("the client sees the response cut off");
    assert!(e.is_closed(), "{e}");
    assert!(ats.wait_for_log("guarded: the response body passed max_body_size (1024 bytes) held for the plugin; the response is cut (connection closed)", WAIT), "{}", ats.log_report());
    assert_eq!(send(&ats, Request::get("/hello")).status, 200);
    ats.assert_running();
}
