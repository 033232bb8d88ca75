//! The failure policies, `max_body_size` and authorizations, written once and
//! run on NGINX (`nginx::...`) and on Traffic Server (`ats::...`) through
//! `e2e::server::ServerUnderTest`: a trap in each stream callback under each
//! failure policy (the rules of the core's filter chain,
//! docs/adr/0001-one-filter-chain.md, 2.2 rules 7 and 8), bodies held past
//! `max_body_size`, outgoing calls, hostcalls and callbacks the operator did
//! not allow. One worker (one exec thread) per server, so that "the next
//! request" meets the same instances.
//!
//! What is about one server only stays in tests/nginx_policies.rs
//! (recycling, hostile pointers, the compiled-module cache, remote code) and
//! tests/ats_policies.rs (global and remap plugins sharing a VM).
//!
//! Run with `make ats nginx && cargo test --test conformance_policies` (and
//! with `E2E_RUNTIME=wamr`).

mod e2e;

use std::time::Duration;

use e2e::client::{Connection, Request, Response};
use e2e::origin::Origin;
use e2e::server::{Kind, ServerUnderTest, Setup};

const WAIT: Duration = Duration::from_secs(5);

/// The Rust-SDK test filter `guarded` with extra plugin keys
/// (`failure_policy`, `authorizations`, ..., indented by 4).
fn filter_yaml(extra: &str, configuration: &str) -> String {
    format!(
        "- config:\n    name: \"guarded\"\n    configuration: '{configuration}'\n{extra}\n    vm_config:\n      vm_id: \"guarded_vm\"\n      code:\n        local:\n          filename: \"@REPO@/build/plugins/rust_sdk_filter.wasm\"\n"
    )
}

/// `name` with `yaml`, one worker, in front of `origin`.
fn start_plugin<S: ServerUnderTest>(test: &str, origin: &Origin, name: &str, yaml: String) -> S {
    S::start(Setup::new(test, origin.port()).workers(1).plugin(name, yaml))
}

/// The filter `guarded` with `yaml` in front of the default origin.
fn start<S: ServerUnderTest>(test: &str, yaml: String) -> (Origin, S) {
    let origin = Origin::start();
    let s = start_plugin(test, &origin, "guarded", yaml);
    (origin, s)
}

fn send<S: ServerUnderTest>(s: &S, req: Request) -> Response {
    s.send(&req.timeout(Duration::from_secs(20))).unwrap_or_else(|e| panic!("{}: {e}\n{}", S::NAME, s.log_report()))
}

/// How often `text` occurs in the server's logs.
fn count<S: ServerUnderTest>(s: &S, text: &str) -> usize {
    s.logs().matches(text).count()
}

/// Waits until `text` occurs in the logs more than `than` times.
fn wait_count_above<S: ServerUnderTest>(s: &S, text: &str, than: usize) -> bool {
    e2e::wait_until(WAIT, || count(s, text) > than)
}

/// Everything the Rust SDK needs, without `proxy_get_current_time_nanoseconds`
/// and without the `proxy_on_response_headers` callback.
const CAPABILITIES: &str = r#"    capability_restriction_config:
      allowed_capabilities: [proxy_log, proxy_get_log_level, proxy_set_tick_period_milliseconds, proxy_get_buffer_bytes,
        proxy_set_buffer_bytes, proxy_get_buffer_status, proxy_get_header_map_pairs, proxy_get_header_map_value,
        proxy_add_header_map_value, proxy_replace_header_map_value, proxy_get_header_map_size, proxy_get_property,
        proxy_set_effective_context, proxy_continue_stream, proxy_send_local_response, proxy_define_metric,
        proxy_increment_metric, proxy_record_metric, proxy_get_metric, proxy_get_shared_data, proxy_set_shared_data,
        proxy_register_shared_queue, proxy_resolve_shared_queue, proxy_enqueue_shared_queue, proxy_dequeue_shared_queue,
        proxy_http_call, proxy_done, proxy_on_tick, proxy_on_queue_ready, proxy_on_http_call_response,
        proxy_on_context_create, proxy_on_vm_start, proxy_on_configure, proxy_on_request_headers, proxy_on_done,
        proxy_on_log, proxy_on_delete, fd_write, environ_sizes_get, environ_get, proc_exit]"#;

// ------------------------------------------------------------------ a trap in each stream callback

/// `trap.wasm` (tests/wat/README.md) trapping in the callback `selector`,
/// under `failure_policy: <policy>`.
fn trap_yaml(selector: &str, policy: &str) -> String {
    format!("- config:\n    name: trapper\n    configuration: '{selector}'\n    failure_policy: {policy}\n    vm_config:\n      vm_id: trapper_vm\n      code: {{ local: {{ filename: \"@REPO@/build/plugins/trap.wasm\" }} }}\n")
}

fn start_trap<S: ServerUnderTest>(test: &str, selector: &str, policy: &str) -> (Origin, S) {
    let origin = Origin::start();
    let s = start_plugin(test, &origin, "trapper", trap_yaml(selector, policy));
    (origin, s)
}

/// A request that reaches `selector`'s callback: a body for `request_body`
/// (echoed by the origin), a response body for everything else.
fn trap_request(selector: &str) -> Request {
    match selector {
        "request_body" => Request::post("/echo/trap", "a request body"),
        _ => Request::get("/trap"),
    }
}

/// What the client gets from a transaction whose plugin failed under
/// fail_closed or reload: 503 from the chain before the response started;
/// once its header is out (a trap in on_response_body), the response is cut:
/// the connection is closed before its end.
fn assert_failed_closed<S: ServerUnderTest>(s: &S, selector: &str) {
    match s.send(&trap_request(selector).timeout(Duration::from_secs(20))) {
        Ok(r) if selector != "response_body" => {
            assert_eq!((r.status, r.body_str().as_str()), (503, "plugin failure\n"), "{}", s.log_report())
        }
        Ok(r) => panic!("the response is cut, not {} {:?}\n{}", r.status, r.body_str(), s.log_report()),
        Err(e) if selector == "response_body" => assert!(e.is_closed(), "{e}\n{}", s.log_report()),
        Err(e) => panic!("{e}\n{}", s.log_report()),
    }
}

fn assert_trap_logged<S: ServerUnderTest>(s: &S, selector: &str) {
    s.expect_log(&format!("trapping in {selector}"), WAIT);
    s.expect_log(&format!("proxy_on_{selector} trapped"), WAIT);
}

/// The origin saw the request unless the trap came before it was sent on.
fn reached_origin(selector: &str) -> usize {
    usize::from(matches!(selector, "response_headers" | "response_body"))
}

/// fail_closed: 503 (or the response cut); the plugin stays failed, so later
/// requests get 503 without reaching the origin, and its failed instance is
/// never entered again.
fn trap_fail_closed<S: ServerUnderTest>(test: &str, selector: &str) {
    let (origin, s) = start_trap::<S>(test, selector, "fail_closed");
    assert_failed_closed(&s, selector);
    assert_trap_logged(&s, selector);
    assert_eq!(origin.request_count(), reached_origin(selector), "{}", s.log_report());
    // Refused at the start of the transaction: a plugin of its chain failed
    // earlier and does not fail open.
    assert_eq!(send(&s, trap_request(selector)).status, 503, "{}", s.log_report());
    for _ in 0..2 {
        assert_eq!(send(&s, Request::get("/after")).status, 503, "{}", s.log_report());
    }
    assert_eq!(origin.request_count(), reached_origin(selector), "refused before the origin\n{}", s.log_report());
    assert_eq!(count(&s, "trapping in"), 1, "the failed instance is never entered again\n{}", s.log_report());
    s.assert_running();
}

/// fail_open: the plugin is skipped and the transaction goes on unchanged;
/// later transactions run without it (no VM entered, no trap logged again).
fn trap_fail_open<S: ServerUnderTest>(test: &str, selector: &str) {
    let (origin, s) = start_trap::<S>(test, selector, "fail_open");
    let body = if selector == "request_body" { "a request body" } else { "hello from origin" };
    let r = send(&s, trap_request(selector));
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (200, body),
        "the plugin is skipped, the request goes on\n{}",
        s.log_report()
    );
    assert_trap_logged(&s, selector);
    let r = send(&s, trap_request(selector));
    assert_eq!((r.status, r.body_str().as_str()), (200, body), "{}", s.log_report());
    assert_eq!(origin.request_count(), 2);
    if selector == "request_body" {
        assert_eq!(origin.requests()[0].body_str(), "a request body", "the body the plugin held went on as it was");
    }
    assert_eq!(
        count(&s, &format!("trapping in {selector}")),
        1,
        "the failed plugin is not called again\n{}",
        s.log_report()
    );
    assert_eq!(count(&s, "trapping in"), 1, "{}", s.log_report());
    s.assert_running();
}

/// reload: the failed transaction ends as under fail_closed (503, or cut),
/// and the next request runs on a fresh instance (proxy_on_vm_start and
/// proxy_on_configure again), which here traps again; a request that does
/// not reach the trapping callback then goes through.
fn trap_reload<S: ServerUnderTest>(test: &str, selector: &str) {
    let (_origin, s) = start_trap::<S>(test, selector, "reload");
    assert_failed_closed(&s, selector);
    assert_trap_logged(&s, selector);
    let configured = count(&s, &format!("selector={selector}"));
    assert_failed_closed(&s, selector);
    s.expect_log(
        "instances of trapper (generation 1) replaced after a failure of trapper (failure_policy: reload)",
        WAIT,
    );
    assert!(
        wait_count_above(&s, &format!("selector={selector}"), configured),
        "a fresh instance ran proxy_on_configure\n{}",
        s.log_report()
    );
    assert!(
        e2e::wait_until(WAIT, || count(&s, &format!("trapping in {selector}")) == 2),
        "the fresh instance ran the callback\n{}",
        s.log_report()
    );
    // A GET has no body to trap on: once the plugin is reloaded again (after
    // the back-off that follows the second failure, 100 ms), it goes through.
    if selector == "request_body" {
        let mut last = (0, String::new());
        let through = e2e::wait_until(WAIT, || {
            let r = send(&s, Request::get("/after"));
            last = (r.status, r.body_str());
            last.0 != 503
        });
        assert!(through, "{last:?}\n{}", s.log_report());
        assert_eq!((last.0, last.1.as_str()), (200, "hello from origin"), "{}", s.log_report());
    }
    s.assert_running();
}

// ------------------------------------------------------------------ keep-alive after a local response

/// Sends `first` then `second` on one client connection; returns both
/// responses, and panics if the server closed the connection between them
/// (as Envoy and NGINX do not after a local response: the connection is
/// kept unless the plugin asked to close it or the request body could not be
/// drained).
fn two_on_one_connection<S: ServerUnderTest>(s: &S, first: Request, second: Request) -> (Response, Response) {
    let mut c = Connection::open(s.port()).unwrap_or_else(|e| panic!("connect to {}: {e}", S::NAME));
    let a = c
        .send(&first.timeout(Duration::from_secs(20)))
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", S::NAME, s.log_report()));
    assert!(
        !a.closes_connection() && !c.is_closed(),
        "{} closed the connection after the local response {} {:?}\n{}",
        S::NAME,
        a.status,
        a.headers,
        s.log_report()
    );
    let b = c
        .send(&second.timeout(Duration::from_secs(20)))
        .unwrap_or_else(|e| panic!("{}: the second request on the connection: {e}\n{}", S::NAME, s.log_report()));
    (a, b)
}

e2e::server::for_each_server! {

// ------------------------------------------------------------------ failure policies

#[test]
fn under_fail_closed_a_trap_answers_503_and_the_plugin_stays_failed() {
    let (origin, s) = start::<Server>("policy-closed", filter_yaml("    failure_policy: fail_closed", ""));
    assert_eq!(send(&s, Request::get("/boom").header("x-pw-test", "panic")).status, 503);
    s.expect_log("proxy_on_request_headers trapped", WAIT);
    for _ in 0..3 {
        assert_eq!(send(&s, Request::get("/after")).status, 503, "{}", s.log_report());
    }
    assert_eq!(origin.request_count(), 0);
    s.assert_running();
}

/// `fail_open: true` (Traffic Server's and Envoy's key for
/// `failure_policy: fail_open`).
#[test]
fn fail_open_true_skips_a_trapping_plugin_and_the_request_reaches_the_origin() {
    let (origin, s) = start::<Server>("policy-open", filter_yaml("    fail_open: true", ""));
    let r = send(&s, Request::get("/boom").header("x-pw-test", "panic"));
    assert_eq!(r.status, 200, "{}", s.log_report());
    assert_eq!(r.header("x-proxy-wasm"), None, "the failed plugin did not filter the response");
    let r = send(&s, Request::get("/after"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, None));
    assert_eq!(origin.request_count(), 2);
}

#[test]
fn under_reload_a_trap_answers_503_and_the_next_request_gets_a_fresh_instance() {
    let (_origin, s) = start::<Server>("policy-reload", filter_yaml("    failure_policy: reload", ""));
    assert_eq!(send(&s, Request::get("/").header("x-pw-test", "config")).status, 200);
    let configured = count(&s, "root 1 configured");
    assert_eq!(send(&s, Request::get("/boom").header("x-pw-test", "panic")).status, 503);
    let r = send(&s, Request::get("/after"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")), "{}", s.log_report());
    // proxy_on_vm_start and proxy_on_configure ran again in the new instance.
    assert!(wait_count_above(&s, "root 1 configured", configured), "proxy_on_configure ran again\n{}", s.log_report());
    s.expect_log("instances of guarded (generation 1) replaced after a failure of guarded (failure_policy: reload)", WAIT);
}

#[test]
fn under_reload_a_plugin_that_fails_every_time_is_reloaded_with_back_off() {
    let (_origin, s) = start::<Server>("policy-backoff", filter_yaml("    failure_policy: reload", ""));
    // Every request traps; reloads come at most after 0, 100, 200, 400 ms...:
    // 30 requests in a row cause only a few reloads, each answered 503.
    for _ in 0..30 {
        assert_eq!(send(&s, Request::get("/boom").header("x-pw-test", "panic")).status, 503);
    }
    let reloads = count(&s, "replaced after a failure of guarded (failure_policy: reload)");
    assert!((1..30).contains(&reloads), "{reloads} reloads for 30 failures\n{}", s.log_report());
    s.assert_running();
}

#[test]
fn a_trap_in_on_request_headers_under_fail_closed_answers_503_and_the_plugin_stays_failed() {
    trap_fail_closed::<Server>("trap-reqh-closed", "request_headers");
}

#[test]
fn a_trap_in_on_request_body_under_fail_closed_answers_503_and_the_request_is_not_sent_on() {
    trap_fail_closed::<Server>("trap-reqb-closed", "request_body");
}

#[test]
fn a_trap_in_on_response_headers_under_fail_closed_answers_503_instead_of_the_origins_response() {
    trap_fail_closed::<Server>("trap-resph-closed", "response_headers");
}

#[test]
fn a_trap_in_on_response_body_under_fail_closed_cuts_the_response_and_the_plugin_stays_failed() {
    trap_fail_closed::<Server>("trap-respb-closed", "response_body");
}

#[test]
fn a_trap_in_on_request_headers_under_fail_open_skips_the_plugin() {
    trap_fail_open::<Server>("trap-reqh-open", "request_headers");
}

#[test]
fn a_trap_in_on_request_body_under_fail_open_skips_the_plugin_and_the_body_goes_on() {
    trap_fail_open::<Server>("trap-reqb-open", "request_body");
}

#[test]
fn a_trap_in_on_response_headers_under_fail_open_skips_the_plugin() {
    trap_fail_open::<Server>("trap-resph-open", "response_headers");
}

#[test]
fn a_trap_in_on_response_body_under_fail_open_skips_the_plugin_and_the_body_goes_on() {
    trap_fail_open::<Server>("trap-respb-open", "response_body");
}

#[test]
fn a_trap_in_on_request_headers_under_reload_answers_503_and_the_next_request_gets_a_fresh_instance() {
    trap_reload::<Server>("trap-reqh-reload", "request_headers");
}

#[test]
fn a_trap_in_on_request_body_under_reload_answers_503_and_the_next_request_gets_a_fresh_instance() {
    trap_reload::<Server>("trap-reqb-reload", "request_body");
}

#[test]
fn a_trap_in_on_response_headers_under_reload_answers_503_and_the_next_request_gets_a_fresh_instance() {
    trap_reload::<Server>("trap-resph-reload", "response_headers");
}

#[test]
fn a_trap_in_on_response_body_under_reload_cuts_the_response_and_the_next_request_gets_a_fresh_instance() {
    trap_reload::<Server>("trap-respb-reload", "response_body");
}

// ------------------------------------------------------------------ keep-alive after a local response

#[test]
fn a_local_response_keeps_the_client_connection_for_the_next_request() {
    let (origin, s) = start::<Server>("keepalive-local", filter_yaml("", ""));
    let (a, b) = two_on_one_connection(&s, Request::get("/local").header("x-pw-test", "local"), Request::get("/after"));
    assert_eq!((a.status, a.body_str().as_str()), (403, "denied by rust-sdk-filter"), "{}", s.log_report());
    assert_eq!(a.header("x-pw-local"), Some("request-headers"));
    assert_eq!((b.status, b.body_str().as_str()), (200, "hello from origin"), "{}", s.log_report());
    assert_eq!(origin.request_count(), 1, "only the second request reached the origin");
}

#[test]
fn a_local_response_from_a_routes_chain_keeps_the_client_connection_for_the_next_request() {
    // The chain of one host only (NGINX: its `server`; Traffic Server: a remap rule's plugin).
    let origin = Origin::start();
    let setup = Setup::new("keepalive-route", origin.port())
        .workers(1)
        .plugin("guarded", filter_yaml("", ""))
        .route("guarded.test", &["guarded"])
        .default_route(&[]);
    let s = <Server as ServerUnderTest>::start(setup);
    let (a, b) = two_on_one_connection(
        &s,
        Request::get("/local").host("guarded.test").header("x-pw-test", "local"),
        Request::get("/after").host("guarded.test"),
    );
    assert_eq!((a.status, a.body_str().as_str()), (403, "denied by rust-sdk-filter"), "{}", s.log_report());
    assert_eq!((b.status, b.body_str().as_str()), (200, "hello from origin"), "{}", s.log_report());
    assert_eq!(origin.request_count(), 1, "only the second request reached the origin");
}

#[test]
fn a_local_response_to_a_request_with_a_body_keeps_the_connection_only_if_the_body_is_drained() {
    let (origin, s) = start::<Server>("keepalive-local-body", filter_yaml("", ""));
    let first = Request::post("/local", "a small request body").header("x-pw-test", "local");
    match Server::KIND {
        // NGINX reads and drops the body (ngx_http_discard_request_body)
        // before it reads the next request from the connection.
        Kind::Nginx => {
            let (a, b) = two_on_one_connection(&s, first, Request::get("/after"));
            assert_eq!(a.status, 403, "{}", s.log_report());
            assert_eq!((b.status, b.body_str().as_str()), (200, "hello from origin"), "{}", s.log_report());
        }
        // Traffic Server answers before it read the body and does not drain
        // it (HttpTransact::build_error_response): the body would be taken
        // for the next request, so the connection is closed.
        Kind::TrafficServer => {
            let r = send(&s, first);
            assert_eq!(r.status, 403, "{}", s.log_report());
            assert!(r.closes_connection(), "{:?}\n{}", r.headers, s.log_report());
            assert_eq!(send(&s, Request::get("/after")).status, 200, "{}", s.log_report());
        }
    }
    assert_eq!(origin.request_count(), 1);
}

#[test]
fn a_local_response_with_connection_close_closes_the_client_connection() {
    let (_origin, s) = start::<Server>("keepalive-local-close", filter_yaml("", ""));
    let mut c = Connection::open(s.port()).unwrap();
    let r = c
        .send(&Request::get("/local").header("x-pw-test", "local").header("x-pw-local-connection", "close").timeout(Duration::from_secs(20)))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log_report()));
    assert_eq!(r.status, 403, "{}", s.log_report());
    assert!(r.closes_connection(), "the plugin asked to close: {:?}\n{}", r.headers, s.log_report());
}

#[test]
fn a_plugin_without_response_callbacks_answers_with_its_status_and_headers_and_its_request_edits_reach_the_origin() {
    // request_only.wat takes no response callback: a server may leave its response
    // work out (Traffic Server adds no response hooks), not the plugin's answer.
    let origin = Origin::start();
    let yaml = "- config:\n    name: request_only\n    vm_config:\n      vm_id: request_only_vm\n      code: { local: { filename: \"@REPO@/build/plugins/request_only.wasm\" } }\n".to_string();
    let s: Server = start_plugin("request-only", &origin, "request_only", yaml);
    let (a, b) = two_on_one_connection(&s, Request::get("/deny").header("x-deny", "1"), Request::get("/pass"));
    assert_eq!((a.status, a.body_str().as_str()), (403, "denied"), "{}", s.log_report());
    assert_eq!(a.header("x-denied-by"), Some("request-only"), "{:?}\n{}", a.headers, s.log_report());
    assert_eq!(b.status, 200, "{}", s.log_report());
    assert_eq!(origin.wait_for_path("/pass", WAIT).header("x-request-only"), Some("1"));
    assert_eq!(origin.request_count(), 1, "the denied request did not reach the origin");
}

#[test]
fn a_503_from_fail_closed_keeps_the_client_connection_for_the_next_request() {
    let (origin, s) = start_trap::<Server>("keepalive-503", "request_headers", "fail_closed");
    let (a, b) = two_on_one_connection(&s, Request::get("/trap"), Request::get("/after"));
    assert_eq!((a.status, a.body_str().as_str()), (503, "plugin failure\n"), "{}", s.log_report());
    // Refused at the start of the transaction: the plugin stays failed.
    assert_eq!(b.status, 503, "{}", s.log_report());
    assert_eq!(origin.request_count(), 0);
}

// ------------------------------------------------------------------ max_body_size

#[test]
fn a_request_body_a_plugin_holds_past_max_body_size_gets_413_and_is_not_sent_on() {
    let (origin, s) = start::<Server>("limit-req-body", filter_yaml("    max_body_size: 1KiB", ""));
    let r = send(&s, Request::post("/echo", e2e::pattern_body(4096)).header("x-pw-test", "req-body-upper"));
    assert_eq!((r.status, r.body_str().as_str()), (413, "request body too large\n"), "{}", s.log_report());
    match Server::KIND {
        // NGINX reads the Content-Length before the body and refuses the
        // request up front; Traffic Server's request transform only sees
        // the body, so it refuses once it held more than the limit.
        Kind::Nginx => s.expect_log("guarded: the request body (4096 bytes, Content-Length) would pass max_body_size (1024 bytes) held for the plugins: the request gets 413 and is not sent on", WAIT),
        Kind::TrafficServer => s.expect_log("guarded: the request body passed max_body_size (1024 bytes) held for the plugin; answering 413", WAIT),
    }
    assert_eq!(origin.request_count(), 0);
    // Under the limit: unaffected.
    let r = send(&s, Request::post("/echo", "small").header("x-pw-test", "req-body-upper"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "SMALL"), "{}", s.log_report());
}

#[test]
fn a_chunked_request_body_a_plugin_holds_past_max_body_size_gets_413_and_never_reaches_the_origin() {
    // Chunked: no length to refuse up front; the filter pauses on every
    // piece until the end, so the chain holds the body for it.
    let (origin, s) = start::<Server>("limit-req-chunked", filter_yaml("    max_body_size: 64KiB", ""));
    let r = send(&s, Request::post("/upload", e2e::pattern_body(200 * 1024)).chunked(16 * 1024).header("x-pw-test", "req-body-upper"));
    assert_eq!((r.status, r.body_str().as_str()), (413, "request body too large\n"), "{}", s.log_report());
    s.expect_log("guarded: the request body passed max_body_size (65536 bytes) held for the plugin; answering 413", WAIT);
    assert_eq!(origin.request_count(), 0);
    assert_eq!(send(&s, Request::get("/after")).status, 200, "the plugin did not fail");
}

#[test]
fn a_response_body_a_plugin_holds_past_max_body_size_is_cut() {
    let origin = Origin::with_handler(|req| {
        if req.path_only().starts_with("/big") {
            e2e::origin::Response::new(200).body(e2e::pattern_body(4096))
        } else {
            e2e::origin::default_handler(req)
        }
    });
    let s: Server = start_plugin("limit-resp-body", &origin, "guarded", filter_yaml("    max_body_size: 1KiB", ""));
    let r = s.send(&Request::get("/big").header("x-pw-test", "resp-body-upper").timeout(Duration::from_secs(10)));
    let e = r.map(|r| (r.status, r.body.len())).expect_err("the client sees the response cut off");
    assert!(e.is_closed(), "{e}");
    s.expect_log("guarded: the response body passed max_body_size (1024 bytes) held for the plugin; the response is cut (connection closed)", WAIT);
    assert_eq!(send(&s, Request::get("/hello")).status, 200);
    s.assert_running();
}

#[test]
fn a_response_body_queued_past_max_body_size_while_the_response_headers_wait_gets_500() {
    // The response headers wait for a slow http_call; the origin's body,
    // which the server passes on meanwhile, is queued for them, at most the
    // plugin's max_body_size.
    let callout = Origin::with_handler(|_| e2e::origin::Response::text(200, "ok").delay(Duration::from_millis(1500)));
    let origin = Origin::with_handler(|_| e2e::origin::Response::new(200).body(e2e::pattern_body(256 * 1024)));
    let config = format!(r#"{{"upstream":"127.0.0.1:{}","callout_timeout_ms":5000}}"#, callout.port());
    let extra = format!("    max_body_size: 64KiB\n    authorizations:\n      allowed_hosts: [\"127.0.0.1:{}\"]", callout.port());
    let s: Server = start_plugin("limit-resp-queued", &origin, "guarded", filter_yaml(&extra, &config));
    let r = send(&s, Request::get("/big").header("x-pw-test", "http-call-response"));
    match Server::KIND {
        Kind::Nginx => {
            assert_eq!((r.status, r.body_str().as_str()), (500, "Internal Server Error"), "{}", s.log_report());
            s.expect_log("guarded: the response body that came while its response headers waited passed max_body_size (65536 bytes); answering 500", WAIT);
        }
        // Traffic Server does not pass the response body on while its
        // response headers hook is not reenabled (its tunnel holds it), so
        // nothing is queued for the plugin and no limit applies: the
        // response arrives whole once the call answered.
        Kind::TrafficServer => {
            assert_eq!((r.status, r.body.len()), (200, 256 * 1024), "{}", s.log_report());
            assert!(!s.logs().contains("while its response headers waited"), "{}", s.log_report());
        }
    }
    assert_eq!(send(&s, Request::get("/after")).status, 200, "{}", s.log_report());
}

// ------------------------------------------------------------------ authorizations

#[test]
fn an_http_call_to_an_upstream_not_in_allowed_hosts_is_refused_and_logged_once() {
    let callout = Origin::start();
    let config = format!(r#"{{"upstream":"127.0.0.1:{}","callout_timeout_ms":2000}}"#, callout.port());
    // Deny by default: no `authorizations` at all.
    let (origin, s) = start::<Server>("authz-denied-call", filter_yaml("", &config));
    for _ in 0..2 {
        let r = send(&s, Request::get("/c").header("x-pw-test", "http-call"));
        assert_eq!((r.status, r.header("x-pw-callout-dispatch")), (200, Some("BAD_ARGUMENT")), "{}", s.log_report());
    }
    assert_eq!(callout.request_count(), 0);
    assert_eq!(origin.request_count(), 2);
    let line = format!("denied http_call to \"127.0.0.1:{}\"", callout.port());
    s.expect_log(&line, WAIT);
    assert_eq!(count(&s, &line), 1, "logged once");
}

#[test]
fn an_http_call_to_a_listed_upstream_goes_through() {
    let callout = Origin::start();
    let config = format!(r#"{{"upstream":"127.0.0.1:{}","callout_timeout_ms":2000}}"#, callout.port());
    let extra = format!("    authorizations:\n      allowed_hosts: [\"127.0.0.1:{}\"]", callout.port());
    let (_origin, s) = start::<Server>("authz-allowed-call", filter_yaml(&extra, &config));
    let r = send(&s, Request::get("/c").header("x-pw-test", "http-call"));
    assert_eq!((r.header("x-pw-callout-dispatch"), r.header("x-pw-callout-status")), (Some("OK"), Some("200")), "{}", s.log_report());
    assert_eq!(callout.request_count(), 1);
}

#[test]
fn a_callback_outside_allowed_capabilities_is_never_called_and_is_named_once_at_load() {
    // Two workers (exec threads): the line comes once all the same.
    let origin = Origin::start();
    let s = <Server as ServerUnderTest>::start(Setup::new("authz-callback", origin.port()).workers(2).plugin("guarded", filter_yaml(CAPABILITIES, "")));
    let denied = "guarded: denied callback proxy_on_response_headers: not in capability_restriction_config.allowed_capabilities; it is never called";
    // Logged when the server loads the plugin, before any request.
    s.expect_log(denied, WAIT);
    let r = send(&s, Request::get("/"));
    assert_eq!(r.status, 200, "{}", s.log_report());
    // on_response_headers adds x-proxy-wasm and the report headers: not called.
    assert_eq!(r.header("x-proxy-wasm"), None, "{:?}", r.headers);
    // The chain skips a callback outside allowed_capabilities without
    // entering the VM (issue 13, ADR 0001 rule 2): the callback is named in
    // no other log line.
    std::thread::sleep(Duration::from_millis(200));
    let logs = s.logs();
    let mentions: Vec<&str> = logs.lines().filter(|l| l.contains("proxy_on_response_headers") && !l.contains(denied)).collect();
    assert!(mentions.is_empty(), "{mentions:?}\n{}", s.log_report());
    assert_eq!(count(&s, denied), 1, "named once, at load\n{}", s.log_report());
}

#[test]
fn a_hostcall_outside_allowed_capabilities_answers_internal_failure_and_is_logged() {
    let (_origin, s) = start::<Server>("authz-hostcall", filter_yaml(&format!("    failure_policy: reload\n{CAPABILITIES}"), ""));
    // The Rust SDK panics on the INTERNAL_FAILURE answer (cpp-host's): the plugin traps, 503.
    let r = send(&s, Request::get("/").header("x-pw-test", "time"));
    assert_eq!(r.status, 503, "the Rust SDK traps on INTERNAL_FAILURE\n{}", s.log_report());
    s.expect_log("denied hostcall proxy_get_current_time_nanoseconds", WAIT);
    s.expect_log("unexpected status: 10", WAIT);
    assert_eq!(send(&s, Request::get("/next")).status, 200, "reloaded");
    s.assert_running();
}

}
