//! The safety model on NGINX (issue 5), as tests/ats_policies.rs,
//! tests/ats_recycling.rs, tests/ats_hostile.rs and tests/module_cache.rs do
//! on Traffic Server: failure policies, authorizations, recycling
//! (`vm_config.kill_options`), hostile pointers and the compiled-module cache.
//! One worker per nginx, so that "the next request" meets the same instances.
//!
//! Run with `make nginx && cargo test --test nginx_policies`.

mod e2e;

use std::time::Duration;

use e2e::client::{Request, Response};
use e2e::nginx::{Nginx, NginxOptions};
use e2e::origin::Origin;

const WAIT: Duration = Duration::from_secs(5);

/// The Rust-SDK test filter with extra plugin keys (`failure_policy`, ...) and `vm_config` keys.
fn filter_yaml(extra: &str, configuration: &str, vm_extra: &str) -> String {
    format!(
        "config:\n  name: \"guarded\"\n  configuration: '{configuration}'\n{extra}\n  vm_config:\n    vm_id: \"guarded_vm\"\n{vm_extra}    code:\n      local:\n        filename: \"@REPO@/build/plugins/rust_sdk_filter.wasm\"\n"
    )
}

fn start_with(test: &str, yaml: String, tune: impl FnOnce(NginxOptions) -> NginxOptions) -> (Origin, Nginx) {
    let origin = Origin::start();
    let opts = NginxOptions::new(test)
        .workers(1)
        .origin(origin.port())
        .file("plugins.yaml", yaml)
        .http("proxy_wasm_config @CONF@/plugins.yaml;\nproxy_wasm guarded;")
        .server("location / { proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }");
    let n = Nginx::start(tune(opts));
    (origin, n)
}

fn start(test: &str, yaml: String) -> (Origin, Nginx) {
    start_with(test, yaml, |o| o)
}

fn send(n: &Nginx, req: Request) -> Response {
    n.send(&req.timeout(Duration::from_secs(20))).unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()))
}

fn count(n: &Nginx, text: &str) -> usize {
    n.error_log().matches(text).count()
}

fn shared_u64(n: &Nginx, key: &str) -> u64 {
    let r = send(n, Request::get("/").header("x-pw-test", "shared-get").header("x-pw-key", key));
    assert_eq!(r.status, 200, "{key}\n{}", n.log_report());
    r.body_str().parse().unwrap_or_else(|_| panic!("{key} = {:?}", r.body_str()))
}

// ------------------------------------------------------------------ failure policies

#[test]
fn under_fail_closed_a_trap_answers_503_and_the_plugin_stays_failed() {
    let (origin, n) = start("ngx-policy-closed", filter_yaml("  failure_policy: fail_closed", "", ""));
    assert_eq!(send(&n, Request::get("/boom").header("x-pw-test", "panic")).status, 503);
    n.expect_log("proxy_on_request_headers trapped", WAIT);
    for _ in 0..3 {
        assert_eq!(send(&n, Request::get("/after")).status, 503, "{}", n.log_report());
    }
    assert_eq!(origin.request_count(), 0);
}

#[test]
fn fail_open_true_skips_a_trapping_plugin_and_the_request_reaches_the_origin() {
    let (origin, n) = start("ngx-policy-open", filter_yaml("  fail_open: true", "", ""));
    let r = send(&n, Request::get("/boom").header("x-pw-test", "panic"));
    assert_eq!(r.status, 200, "{}", n.log_report());
    assert_eq!(r.header("x-proxy-wasm"), None, "the failed plugin did not filter the response");
    let r = send(&n, Request::get("/after"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, None));
    assert_eq!(origin.request_count(), 2);
}

#[test]
fn under_reload_a_trap_answers_503_and_the_next_request_gets_a_fresh_instance() {
    let (_origin, n) = start("ngx-policy-reload", filter_yaml("  failure_policy: reload", "", ""));
    let configured = count(&n, "root 1 configured");
    assert_eq!(send(&n, Request::get("/boom").header("x-pw-test", "panic")).status, 503);
    let r = send(&n, Request::get("/after"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")), "{}", n.log_report());
    assert!(count(&n, "root 1 configured") > configured, "proxy_on_configure ran again\n{}", n.log_report());
    assert!(n.error_log().contains("instances of guarded (generation 1) replaced after a failure of guarded (failure_policy: reload)"), "{}", n.log_report());
}

#[test]
fn under_reload_a_plugin_that_fails_every_time_is_reloaded_with_back_off() {
    let (_origin, n) = start("ngx-policy-backoff", filter_yaml("  failure_policy: reload", "", ""));
    for _ in 0..30 {
        assert_eq!(send(&n, Request::get("/boom").header("x-pw-test", "panic")).status, 503);
    }
    let reloads = count(&n, "replaced after a failure of guarded");
    assert!((1..30).contains(&reloads), "{reloads} reloads for 30 failures\n{}", n.log_report());
}

// ------------------------------------------------------------------ a trap in each stream callback

/// `tests/wat/trap.wat` trapping in the callback named `selector`, under `policy`.
fn trap_server(test: &str, selector: &str, policy: &str) -> (Origin, Nginx) {
    let yaml = format!("config:\n  name: trapper\n  configuration: '{selector}'\n  failure_policy: {policy}\n  vm_config:\n    vm_id: trapper\n    code: {{ local: {{ filename: \"@REPO@/build/plugins/trap.wasm\" }} }}\n");
    let origin = Origin::start();
    let n = Nginx::start(
        NginxOptions::new(test)
            .workers(1)
            .origin(origin.port())
            .file("plugins.yaml", yaml)
            .http("proxy_wasm_config @CONF@/plugins.yaml;\nproxy_wasm trapper;")
            .server("location / { proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }"),
    );
    (origin, n)
}

/// The request that makes the plugin run the callback of `selector`: with a
/// body for `request_body` (the origin answers every request with a body).
fn trigger(selector: &str) -> Request {
    let req = if selector == "request_body" { Request::post("/boom", "a request body") } else { Request::get("/boom") };
    req.timeout(Duration::from_secs(20))
}

/// 503 before the response started; once its header is out (a trap in
/// on_response_body), the response is cut: the connection is closed.
fn assert_failed_closed(n: &Nginx, selector: &str) {
    match n.send(&trigger(selector)) {
        Ok(r) if selector != "response_body" => assert_eq!((r.status, r.body_str().as_str()), (503, "plugin failure\n"), "{}", n.log_report()),
        Ok(r) => panic!("the response is cut, not {} {:?}\n{}", r.status, r.body_str(), n.log_report()),
        Err(e) if selector == "response_body" => assert!(e.is_closed(), "{e}\n{}", n.log_report()),
        Err(e) => panic!("{e}\n{}", n.log_report()),
    }
    n.expect_log(&format!("trapping in {selector}"), WAIT);
    n.expect_log("trapped", WAIT);
}

/// The origin saw the request unless the trap came before it was sent on.
fn reached_origin(selector: &str) -> usize {
    usize::from(matches!(selector, "response_headers" | "response_body"))
}

fn trap_fail_closed(test: &str, selector: &str) {
    let (origin, n) = trap_server(test, selector, "fail_closed");
    assert_failed_closed(&n, selector);
    // The plugin stays failed: later requests get 503 without reaching the origin.
    for _ in 0..2 {
        let r = send(&n, Request::get("/after"));
        assert_eq!(r.status, 503, "{}", n.log_report());
    }
    assert_eq!(origin.request_count(), reached_origin(selector), "{}", n.log_report());
    assert_eq!(count(&n, "trapping in"), 1, "the failed instance is never entered again\n{}", n.log_report());
}

fn trap_fail_open(test: &str, selector: &str) {
    let (origin, n) = trap_server(test, selector, "fail_open");
    let r = send(&n, trigger(selector));
    assert_eq!((r.status, r.body_str().as_str()), (200, "hello from origin"), "the plugin is skipped, the request goes on\n{}", n.log_report());
    n.expect_log(&format!("trapping in {selector}"), WAIT);
    let r = send(&n, trigger(selector));
    assert_eq!((r.status, r.body_str().as_str()), (200, "hello from origin"), "{}", n.log_report());
    assert_eq!(origin.request_count(), 2);
    // Skipped from then on: its failed instance is never entered again.
    assert_eq!(count(&n, "trapping in"), 1, "{}", n.log_report());
}

fn trap_reload(test: &str, selector: &str) {
    let (_origin, n) = trap_server(test, selector, "reload");
    let configured = count(&n, &format!("selector={selector}"));
    assert_failed_closed(&n, selector);
    // The next request starts a fresh instance (on_configure runs again),
    // which runs the callback again: a GET has no body to trap on.
    if selector == "request_body" {
        let r = send(&n, Request::get("/after"));
        assert_eq!((r.status, r.body_str().as_str()), (200, "hello from origin"), "{}", n.log_report());
    } else {
        assert_failed_closed(&n, selector);
        assert_eq!(count(&n, &format!("trapping in {selector}")), 2, "the fresh instance ran the callback\n{}", n.log_report());
    }
    assert!(count(&n, &format!("selector={selector}")) > configured, "proxy_on_configure ran again\n{}", n.log_report());
    assert!(n.error_log().contains("instances of trapper (generation 1) replaced after a failure of trapper (failure_policy: reload)"), "{}", n.log_report());
}

#[test]
fn a_trap_in_on_request_headers_under_fail_closed_answers_503_and_the_plugin_stays_failed() {
    trap_fail_closed("ngx-trap-reqh-closed", "request_headers");
}

#[test]
fn a_trap_in_on_request_body_under_fail_closed_answers_503_and_the_plugin_stays_failed() {
    trap_fail_closed("ngx-trap-reqb-closed", "request_body");
}

#[test]
fn a_trap_in_on_response_headers_under_fail_closed_answers_503_and_the_plugin_stays_failed() {
    trap_fail_closed("ngx-trap-resph-closed", "response_headers");
}

#[test]
fn a_trap_in_on_response_body_under_fail_closed_cuts_the_response_and_the_plugin_stays_failed() {
    trap_fail_closed("ngx-trap-respb-closed", "response_body");
}

#[test]
fn a_trap_in_on_request_headers_under_fail_open_skips_the_plugin() {
    trap_fail_open("ngx-trap-reqh-open", "request_headers");
}

#[test]
fn a_trap_in_on_request_body_under_fail_open_skips_the_plugin_and_the_body_goes_on() {
    trap_fail_open("ngx-trap-reqb-open", "request_body");
}

#[test]
fn a_trap_in_on_response_headers_under_fail_open_skips_the_plugin() {
    trap_fail_open("ngx-trap-resph-open", "response_headers");
}

#[test]
fn a_trap_in_on_response_body_under_fail_open_skips_the_plugin_and_the_body_goes_on() {
    trap_fail_open("ngx-trap-respb-open", "response_body");
}

#[test]
fn a_trap_in_on_request_headers_under_reload_answers_503_and_the_next_request_gets_a_fresh_instance() {
    trap_reload("ngx-trap-reqh-reload", "request_headers");
}

#[test]
fn a_trap_in_on_request_body_under_reload_answers_503_and_the_next_request_gets_a_fresh_instance() {
    trap_reload("ngx-trap-reqb-reload", "request_body");
}

#[test]
fn a_trap_in_on_response_headers_under_reload_answers_503_and_the_next_request_gets_a_fresh_instance() {
    trap_reload("ngx-trap-resph-reload", "response_headers");
}

#[test]
fn a_trap_in_on_response_body_under_reload_cuts_the_response_and_the_next_request_gets_a_fresh_instance() {
    trap_reload("ngx-trap-respb-reload", "response_body");
}

// ------------------------------------------------------------------ max_body_size

#[test]
fn a_request_body_a_plugin_holds_past_max_body_size_gets_413_and_never_reaches_the_origin() {
    // Chunked: no length to refuse up front; the filter pauses on every
    // piece until the end, so the chain holds the body for it.
    let (origin, n) = start("ngx-max-body-request", filter_yaml("  max_body_size: 64KiB", "", ""));
    let r = send(&n, Request::post("/upload", e2e::pattern_body(200 * 1024)).chunked(16 * 1024).header("x-pw-test", "req-body-upper"));
    assert_eq!((r.status, r.body_str().as_str()), (413, "request body too large\n"), "{}", n.log_report());
    n.expect_log("guarded: the request body passed max_body_size (65536 bytes) held for the plugin; answering 413", WAIT);
    assert_eq!(origin.request_count(), 0);
    assert_eq!(send(&n, Request::get("/after")).status, 200, "the plugin did not fail");
}

#[test]
fn a_response_body_queued_past_max_body_size_while_the_response_headers_wait_gets_500() {
    // The response headers wait for a slow http_call; the origin's body,
    // which nginx passes on meanwhile, is queued for them, at most the
    // plugin's max_body_size.
    let callout = Origin::with_handler(|_| e2e::origin::Response::text(200, "ok").delay(Duration::from_millis(1500)));
    let origin = Origin::with_handler(|_| e2e::origin::Response::new(200).body(e2e::pattern_body(256 * 1024)));
    let config = format!(r#"{{"upstream":"127.0.0.1:{}","callout_timeout_ms":5000}}"#, callout.port());
    let extra = format!("  max_body_size: 64KiB\n  authorizations:\n    allowed_hosts: [\"127.0.0.1:{}\"]", callout.port());
    let n = Nginx::start(
        NginxOptions::new("ngx-max-body-queued")
            .workers(1)
            .origin(origin.port())
            .file("plugins.yaml", filter_yaml(&extra, &config, ""))
            .http("proxy_wasm_config @CONF@/plugins.yaml;\nproxy_wasm guarded;")
            .server("location / { proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }"),
    );
    let r = send(&n, Request::get("/big").header("x-pw-test", "http-call-response"));
    assert_eq!((r.status, r.body_str().as_str()), (500, "Internal Server Error"), "{}", n.log_report());
    n.expect_log("guarded: the response body that came while its response headers waited passed max_body_size (65536 bytes); answering 500", WAIT);
    assert_eq!(send(&n, Request::get("/after")).status, 200, "{}", n.log_report());
}

// ------------------------------------------------------------------ authorizations

#[test]
fn an_http_call_to_an_upstream_not_in_allowed_hosts_is_refused_and_logged_once() {
    let callout = Origin::start();
    let config = format!(r#"{{"upstream":"127.0.0.1:{}","callout_timeout_ms":2000}}"#, callout.port());
    let (origin, n) = start("ngx-authz-denied-call", filter_yaml("", &config, ""));
    for _ in 0..2 {
        let r = send(&n, Request::get("/c").header("x-pw-test", "http-call"));
        assert_eq!((r.status, r.header("x-pw-callout-dispatch")), (200, Some("BAD_ARGUMENT")), "{}", n.log_report());
    }
    assert_eq!(callout.request_count(), 0);
    assert_eq!(origin.request_count(), 2);
    let line = format!("denied http_call to \"127.0.0.1:{}\"", callout.port());
    n.expect_log(&line, WAIT);
    assert_eq!(count(&n, &line), 1, "logged once");
}

#[test]
fn an_http_call_to_a_listed_upstream_goes_through() {
    let callout = Origin::start();
    let config = format!(r#"{{"upstream":"127.0.0.1:{}","callout_timeout_ms":2000}}"#, callout.port());
    let extra = format!("  authorizations:\n    allowed_hosts: [\"127.0.0.1:{}\"]", callout.port());
    let (_origin, n) = start("ngx-authz-allowed-call", filter_yaml(&extra, &config, ""));
    let r = send(&n, Request::get("/c").header("x-pw-test", "http-call"));
    assert_eq!((r.header("x-pw-callout-dispatch"), r.header("x-pw-callout-status")), (Some("OK"), Some("200")), "{}", n.log_report());
    assert_eq!(callout.request_count(), 1);
}

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
    let (_origin, n) = start("ngx-authz-callback", filter_yaml(CAPABILITIES, "", ""));
    let r = send(&n, Request::get("/"));
    assert_eq!(r.status, 200, "{}", n.log_report());
    assert_eq!(r.header("x-proxy-wasm"), None, "{:?}", r.headers);
    // The chain skips a callback outside allowed_capabilities without
    // entering the VM (issue 13, ADR 0001 rule 2): nothing to deny, so no
    // "denied callback" line either.
    assert!(!n.error_log().contains("proxy_on_response_headers"), "{}", n.log_report());
}

#[test]
fn a_hostcall_outside_allowed_capabilities_answers_internal_failure_and_is_logged() {
    let (_origin, n) = start("ngx-authz-hostcall", filter_yaml(&format!("  failure_policy: reload\n{CAPABILITIES}"), "", ""));
    let r = send(&n, Request::get("/").header("x-pw-test", "time"));
    assert_eq!(r.status, 503, "the Rust SDK traps on INTERNAL_FAILURE\n{}", n.log_report());
    n.expect_log("denied hostcall proxy_get_current_time_nanoseconds", WAIT);
    assert!(n.error_log().contains("unexpected status: 10"), "{}", n.log_report());
    assert_eq!(send(&n, Request::get("/next")).status, 200, "reloaded");
}

// ------------------------------------------------------------------ recycling

#[test]
fn an_instance_is_replaced_after_max_calls_and_starts_again() {
    let (_origin, n) = start("ngx-recycle-calls", filter_yaml("", "", "    kill_options: { max_calls: 30 }\n"));
    let before = shared_u64(&n, "vm.starts");
    for _ in 0..12 {
        let r = send(&n, Request::get("/"));
        assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")));
    }
    n.expect_log("after recycling: guarded: ", WAIT);
    assert!(n.error_log().contains("(kill_options.max_calls 30)"), "{}", n.log_report());
    assert!(shared_u64(&n, "vm.starts") > before, "proxy_on_vm_start ran again in the new instance");
}

#[test]
fn an_instance_whose_memory_passes_max_memory_usage_is_replaced() {
    let (_origin, n) = start("ngx-recycle-memory", filter_yaml("", "", "    kill_options: { max_memory_usage: 0.01 }\n"));
    let before = shared_u64(&n, "vm.starts");
    let r = send(&n, Request::get("/").header("x-pw-test", "alloc").header("x-pw-alloc-mb", "64"));
    assert_eq!(r.status, 200, "{}", n.log_report());
    assert!(shared_u64(&n, "vm.starts") > before, "{}", n.log_report());
    assert!(n.error_log().contains("kill_options.max_memory_usage 0.01"), "{}", n.log_report());
}

#[test]
fn an_instance_unused_for_max_unused_duration_is_shut_down_and_a_fresh_one_serves_the_next_request() {
    let (_origin, n) = start("ngx-recycle-idle", filter_yaml("", "", "    kill_options: { max_unused_duration: 1s }\n"));
    let before = shared_u64(&n, "vm.starts");
    n.expect_log("replaced after recycling: guarded: unused for", Duration::from_secs(10));
    let r = send(&n, Request::get("/"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")));
    assert!(shared_u64(&n, "vm.starts") > before, "{}", n.log_report());
}

// ------------------------------------------------------------------ hostile module

#[test]
fn out_of_bounds_pointers_get_invalid_memory_access_and_the_worker_keeps_serving() {
    let origin = Origin::start();
    let yaml = "config:\n  name: hostile\n  configuration: hostile\n  vm_config:\n    vm_id: hostile\n    code: { local: { filename: \"@REPO@/build/plugins/hostile.wasm\" } }\n";
    let n = Nginx::start(
        NginxOptions::new("ngx-hostile")
            .workers(1)
            .origin(origin.port())
            .file("plugins.yaml", yaml)
            .http("proxy_wasm_config @CONF@/plugins.yaml;\nproxy_wasm hostile;")
            .server("location / { proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }"),
    );
    let r = send(&n, Request::post("/echo", "hello"));
    assert_eq!(r.status, 200, "{}", n.log_report());
    for line in ["hostile configure done", "hostile request_headers done", "hostile request_body done"] {
        n.expect_log(line, WAIT);
    }
    let logs = n.error_log();
    for (case, status) in [("cfg_get_ret_ptr_oob", 6), ("log_msg_oob", 6), ("log_ptr_len_wrap", 6), ("hdr_get_key_oob", 6), ("hdr_get_ret_straddle", 6), ("hdr_get_map_99", 2), ("hdr_add_probe", 0)] {
        assert!(logs.contains(&format!("{case}={status}")), "{case}={status}\n{}", n.log_report());
    }
    assert!(!logs.contains("trapped"), "{}", n.log_report());
    for _ in 0..3 {
        assert_eq!(send(&n, Request::get("/again")).status, 200);
    }
}

// ------------------------------------------------------------------ compiled-module cache

/// A cache folder for the workers: owned by their user (`nobody` when the
/// tests run as root) and private to it (0700), as the host requires.
fn cache_dir(test: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("pw-ngx-cache-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let _ = std::process::Command::new("chmod").args(["0700", &d.display().to_string()]).status();
    if proxy_wasm_host::cache_file::euid() == 0 {
        let _ = std::process::Command::new("chown").args(["nobody", &d.display().to_string()]).status();
    }
    d
}

fn cached(test: &str, cache: &std::path::Path, workers: usize) -> (Origin, Nginx) {
    let yaml = "# e2e: keep runtime (the compiled-module cache is Wasmtime's)\nconfig:\n  name: guarded\n  vm_config:\n    vm_id: cached\n    allow_precompiled: true\n    code: { local: { filename: \"@REPO@/build/plugins/rust_sdk_filter.wasm\" } }\n";
    let cache = cache.display().to_string();
    start_with(test, yaml.to_string(), move |o| o.workers(workers).main(format!("env PROXY_WASM_HOST_COMPILED_CACHE={cache};")))
}

#[test]
fn every_worker_and_a_restart_reuse_the_compiled_module_cache() {
    let dir = cache_dir("workers");
    {
        let (_origin, n) = cached("ngx-cache-first", &dir, 2);
        assert_eq!(send(&n, Request::get("/")).header("x-proxy-wasm"), Some("rust-sdk"));
        let logs = n.error_log();
        // The workers start together: at least one stores, the others may read it back.
        assert_eq!(logs.matches("guarded: loaded in worker").count(), 2, "{}", n.log_report());
    }
    let (_origin, n) = cached("ngx-cache-second", &dir, 2);
    assert_eq!(send(&n, Request::get("/")).header("x-proxy-wasm"), Some("rust-sdk"));
    assert_eq!(count(&n, "compiled code read from the compiled-module cache"), 2, "both workers of the restart reuse it\n{}", n.log_report());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cache folder others may write (as the tests used to make for the
/// workers) is not used: each worker compiles, says why in the error log,
/// and serves.
#[test]
fn a_world_writable_compiled_module_cache_folder_is_not_used() {
    let dir = cache_dir("world-writable");
    let _ = std::process::Command::new("chmod").args(["0777", &dir.display().to_string()]).status();
    let (_origin, n) = cached("ngx-cache-world-writable", &dir, 1);
    assert_eq!(send(&n, Request::get("/")).header("x-proxy-wasm"), Some("rust-sdk"));
    let logs = n.error_log();
    assert!(logs.contains(&format!("compiled-module cache: not using the folder {0}: {0} cannot be trusted: it is writable by others (mode 0777)", dir.display())), "{}", n.log_report());
    assert_eq!(count(&n, "compiled, not cached: no usable compiled-module cache folder"), 1, "{}", n.log_report());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing written there");
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ remote code pinned by sha256

/// Remote code (`vm_config.code.remote`) on NGINX: the right sha256 loads
/// and serves; a wrong one fails the configuration (`nginx -t` and start-up)
/// with the key and both hashes, as any plugin error does.
#[test]
fn remote_code_with_a_wrong_sha256_fails_the_configuration_and_the_right_one_loads() {
    use sha2::Digest;
    let wasm = std::fs::read(e2e::repo_root().join("build/plugins/rust_sdk_filter.wasm")).expect("build the plugins first");
    let right: String = sha2::Sha256::digest(&wasm).iter().map(|b| format!("{b:02x}")).collect();
    let wrong = "0".repeat(64);
    let code_server = Origin::with_handler(move |_| e2e::origin::Response::new(200).body(wasm.clone()));
    let yaml = |sha: &str, cache: &std::path::Path| {
        format!(
            "config:\n  name: guarded\n  vm_config:\n    vm_id: remote\n    code:\n      remote:\n        http_uri: {{ uri: \"{}\" }}\n        sha256: \"{sha}\"\n        cache_dir: \"{}\"\n",
            code_server.url("/filter.wasm"),
            cache.display()
        )
    };

    let cache = cache_dir("remote-right");
    let (_origin, n) = start("ngx-remote-right", yaml(&right, &cache));
    assert_eq!(send(&n, Request::get("/")).header("x-proxy-wasm"), Some("rust-sdk"), "{}", n.log_report());
    drop(n);
    let _ = std::fs::remove_dir_all(&cache);

    let cache = cache_dir("remote-wrong");
    let out = Nginx::test_only(
        NginxOptions::new("ngx-remote-wrong").file("plugins.yaml", yaml(&wrong, &cache)).http("proxy_wasm_config @CONF@/plugins.yaml;\nproxy_wasm guarded;"),
    );
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("vm_config.code.remote.sha256") && text.contains(&format!("has sha256 {right}")) && text.contains(&format!("expected {wrong}")), "{text}");
    let _ = std::fs::remove_dir_all(&cache);
}
