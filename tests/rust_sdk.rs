//! The real proxy-wasm Rust SDK filter of tests/plugins/rust-sdk-filter, built
//! with every Rust SDK release that builds here (0.1.0 ... 0.2.3, see
//! tests/sdk_builds), driven through the core with the in-memory server. Each
//! test checks one behaviour of the protocol documented in
//! tests/plugins/README.md; it runs once per runtime and build
//! (`wasmtime::rust_0_2_1::...`). Section `abi_0_2`: what ABI 0.1.0 (SDK 0.1.x)
//! cannot do.

mod common;
mod sdk_builds;
common::for_each_runtime! {
use common::*;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm_host::abi::pairs::Pair;
use proxy_wasm_host::abi::{LogLevel, MetricType, StreamType};
use proxy_wasm_host::host::{HttpCallRequest, HttpCallResponse};
use proxy_wasm_host::plugin::PluginInfo;
use proxy_wasm_host::vm::{Verdict, Vm, VmError, VmOptions};

crate::sdk_builds::for_each_rust_build! {
all {
// ------------------------------------------------------------------ helpers

fn options() -> VmOptions {
    VmOptions::new(unique_vm_id("rust-sdk"))
}

fn start(config: &str) -> Harness {
    Harness::try_start_code(built_code(PLUGIN), config, options()).unwrap_or_else(|e| panic!("start failed: {e}"))
}

fn start_with_server(config: &str, server: Arc<TestServer>) -> Harness {
    Harness::try_start_full(built_code(PLUGIN), config, options(), server).unwrap_or_else(|e| panic!("start failed: {e}"))
}

/// Starts the plugin in a fresh VM and returns the error `start_plugin` gave,
/// with the server and the vm_id (to read what the plugin stored).
fn start_error(config: &str, vm_configuration: &str) -> (VmError, Arc<TestServer>, String) {
    let mut opts = options();
    opts.vm_configuration = vm_configuration.as_bytes().to_vec();
    let vm_id = opts.vm_id.clone();
    let server = TestServer::new();
    let mut vm = Vm::new(built_code(PLUGIN), opts, server.clone()).expect("vm");
    let plugin = Arc::new(PluginInfo::new("test-plugin", "", vm_id.clone(), config.as_bytes().to_vec()));
    let err = vm.start_plugin(plugin).expect_err("start_plugin should fail");
    assert_eq!(vm.context_count(), 0, "a rejected root context is dropped");
    (err, server, vm_id)
}

fn shared_in(vm_id: &str, key: &str) -> Option<String> {
    proxy_wasm_host::shared::process_shared_data().get(vm_id, key.as_bytes()).map(|(v, _)| String::from_utf8_lossy(&v).into_owned())
}

/// A typical request: pseudo-headers, `x-pw-test: <case>`, then `extra`.
fn req<'a>(case: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![(":method", "GET"), (":path", "/test?q=1"), (":authority", "example.com"), (":scheme", "https"), ("x-pw-test", case)];
    v.extend_from_slice(extra);
    v
}

const ORIGIN: &[(&str, &str)] = &[(":status", "200"), ("content-type", "text/plain")];

/// Request headers (no body) then the origin's response headers (no body),
/// both expected to continue.
fn exchange(h: &mut Harness, case: &str, extra: &[(&str, &str)]) -> (u32, TestStream) {
    let (ctx, stream, v) = h.request(&req(case, extra), true);
    assert_eq!(v, Verdict::Continue, "request headers");
    assert_eq!(h.respond(ctx, &stream, ORIGIN, true), Verdict::Continue, "response headers");
    (ctx, stream)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(pairs: &[Pair]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (text(k), text(v))).collect()
}

fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Every value of `name` in `pairs`, in order.
fn values(pairs: &[Pair], name: &str) -> Vec<String> {
    pairs.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| text(v)).collect()
}

/// A response header the client receives (a "report" of the plugin).
fn report(stream: &TestStream, name: &str) -> String {
    let d = stream.data();
    d.response_header(name).unwrap_or_else(|| panic!("no response header {name}; got {:?}", show(&d.response_headers)))
}

/// A header of the local response the plugin sent.
fn local_header(stream: &TestStream, name: &str) -> String {
    let lr = stream.data().local_response.expect("a local response");
    values(&lr.headers, name).into_iter().next().unwrap_or_else(|| panic!("no local response header {name}; got {:?}", show(&lr.headers)))
}

/// Feeds body chunks as a server would: `end_of_stream` on the last one; after
/// Continue it takes (forwards) what the plugin let through, after Pause it
/// keeps feeding. Returns the verdicts and everything forwarded.
fn pass_request_body(h: &mut Harness, ctx: u32, chunks: &[&str]) -> (Vec<Verdict>, String) {
    let mut verdicts = Vec::new();
    let mut forwarded = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let v = h.vm.on_request_body(ctx, chunk.as_bytes(), i + 1 == chunks.len()).expect("on_request_body");
        if v == Verdict::Continue {
            forwarded.extend(h.vm.take_body(ctx, StreamType::HttpRequest).unwrap());
        }
        verdicts.push(v);
    }
    (verdicts, text(&forwarded))
}

fn pass_response_body(h: &mut Harness, ctx: u32, chunks: &[&str]) -> (Vec<Verdict>, String) {
    let mut verdicts = Vec::new();
    let mut forwarded = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let v = h.vm.on_response_body(ctx, chunk.as_bytes(), i + 1 == chunks.len()).expect("on_response_body");
        if v == Verdict::Continue {
            forwarded.extend(h.vm.take_body(ctx, StreamType::HttpResponse).unwrap());
        }
        verdicts.push(v);
    }
    (verdicts, text(&forwarded))
}

/// A request with a body, edited by `case`: returns (verdicts, forwarded body, stream).
fn request_with_body(h: &mut Harness, case: &str, extra: &[(&str, &str)], chunks: &[&str]) -> (Vec<Verdict>, String, TestStream) {
    let mut headers = req(case, &[("content-length", "11")]);
    headers.extend_from_slice(extra);
    let (ctx, stream, v) = h.request(&headers, false);
    assert_eq!(v, Verdict::Continue, "request headers");
    let (verdicts, body) = pass_request_body(h, ctx, chunks);
    (verdicts, body, stream)
}

/// A response with a body edited by `case`: returns (verdicts, forwarded body, stream).
fn response_with_body(h: &mut Harness, case: &str, extra: &[(&str, &str)], chunks: &[&str]) -> (Vec<Verdict>, String, TestStream) {
    let (ctx, stream, v) = h.request(&req(case, extra), true);
    assert_eq!(v, Verdict::Continue, "request headers");
    assert_eq!(h.respond(ctx, &stream, &[(":status", "200"), ("content-length", "11")], false), Verdict::Continue);
    let (verdicts, body) = pass_response_body(h, ctx, chunks);
    (verdicts, body, stream)
}

const PAUSE_THEN_CONTINUE: [Verdict; 2] = [Verdict::Pause, Verdict::Continue];

/// Size of the serialized header map: 4 + Σ(8 + key + 1 + value + 1).
fn serialized_size(pairs: &[(&str, &str)]) -> usize {
    4 + pairs.iter().map(|(k, v)| 8 + k.len() + 1 + v.len() + 1).sum::<usize>()
}

/// The one outgoing call the server recorded.
fn one_http_call(h: &Harness) -> (u32, u32, HttpCallRequest) {
    let mut calls = h.server.take_http_calls();
    assert_eq!(calls.len(), 1, "exactly one http_call: {calls:?}");
    calls.remove(0)
}

fn callout_response(status: &str, body: &str) -> HttpCallResponse {
    HttpCallResponse { headers: pairs(&[(":status", status), ("x-callout", "yes")]), body: body.as_bytes().to_vec(), trailers: vec![], failure: None }
}

fn queue_id(h: &Harness, name: &str) -> u32 {
    proxy_wasm_host::shared::process_queues().resolve(&h.plugin.vm_id, name).expect("queue registered")
}

fn metric(name: &str) -> proxy_wasm_host::metrics::MetricSnapshot {
    proxy_wasm_host::metrics::process_metrics().snapshot().into_iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no metric {name}"))
}

fn panic_request(h: &mut Harness) -> (u32, Result<Verdict, VmError>) {
    let (ctx, _stream) = h.stream(&req("panic", &[]));
    let r = h.vm.on_request_headers(ctx, 5, true);
    (ctx, r)
}

// ------------------------------------------------------------------ VM start and configure

#[test]
fn vm_start_stores_the_vm_configuration_and_its_size() {
    let mut opts = options();
    opts.vm_configuration = b"hello".to_vec();
    let h = Harness::try_start_code(built_code(PLUGIN), "", opts).unwrap();
    assert_eq!(h.shared("vm.config").as_deref(), Some("hello"));
    assert_eq!(h.shared("vm.config.size").as_deref(), Some("5 OK 5"));
}

#[test]
fn vm_start_runs_once_per_vm_instance() {
    let h = start("");
    assert_eq!(h.shared("vm.starts").as_deref(), Some("1"));
}

#[test]
fn vm_configuration_reject_makes_start_plugin_fail_in_vm_start() {
    let (err, server, vm_id) = start_error("", " reject\n");
    assert!(matches!(&err, VmError::Rejected { plugin, callback: "proxy_on_vm_start" } if plugin == "test-plugin"), "{err:?}");
    assert_eq!(shared_in(&vm_id, "vm.config").as_deref(), Some(" reject\n"));
    assert!(server.logs().contains(&LogLine { plugin: "test-plugin".into(), level: LogLevel::Error, message: "rust-sdk-filter: VM configuration says reject".into() }));
    assert_eq!(shared_in(&vm_id, "configure.count"), None, "on_configure is not called after a rejected vm_start");
}

#[test]
fn configure_reads_the_plugin_configuration_and_its_size() {
    let config = r#"{"tag":"t1"}"#;
    let h = start(config);
    assert_eq!(h.shared("config.size").as_deref(), Some("12 OK 12"));
    assert_eq!(h.shared("config.tag").as_deref(), Some("t1"));
    assert_eq!(h.shared("config.error").as_deref(), Some(""));
    assert_eq!(h.shared("configure.count").as_deref(), Some("1"));
}

#[test]
fn configure_reject_true_makes_start_plugin_fail_with_rejected() {
    let (err, server, vm_id) = start_error(r#"{"reject":true}"#, "");
    assert!(matches!(&err, VmError::Rejected { plugin, callback: "proxy_on_configure" } if plugin == "test-plugin"), "{err:?}");
    assert_eq!(shared_in(&vm_id, "config.error").as_deref(), Some("rejected by configuration"));
    assert!(server.logs().iter().any(|l| l.level == LogLevel::Error && l.message == "rust-sdk-filter: configuration asks to be rejected"));
}

#[test]
fn configuration_with_a_wrongly_typed_key_is_rejected_with_the_reason() {
    let (err, server, vm_id) = start_error(r#"{"tick_ms":"x"}"#, "");
    assert!(matches!(err, VmError::Rejected { callback: "proxy_on_configure", .. }), "{err:?}");
    assert_eq!(shared_in(&vm_id, "config.error").as_deref(), Some("'tick_ms' must be an integer in 0..=4294967295"));
    assert!(server
        .logs()
        .iter()
        .any(|l| l.level == LogLevel::Error && l.message == "rust-sdk-filter: bad configuration: 'tick_ms' must be an integer in 0..=4294967295"));
}

#[test]
fn configuration_that_is_not_json_is_rejected() {
    let (err, _server, vm_id) = start_error("{", "");
    assert!(matches!(err, VmError::Rejected { callback: "proxy_on_configure", .. }), "{err:?}");
    assert_ne!(shared_in(&vm_id, "config.error").as_deref(), Some(""));
}

#[test]
fn configure_logs_at_info_under_the_plugin_name() {
    let h = start("");
    let expected = LogLine {
        plugin: "test-plugin".into(),
        level: LogLevel::Info,
        message: format!("rust-sdk-filter: root {} configured (tag=rust-sdk, tick_ms=0, queue=q1)", h.root),
    };
    assert!(h.server.logs().contains(&expected), "{:#?}", h.server.logs());
}

#[test]
fn request_properties_are_not_found_in_the_root_context() {
    let h = start("");
    assert_eq!(h.shared("root.request.path").as_deref(), Some("(none)"));
}

#[test]
fn root_context_properties_are_answered_by_the_server() {
    let server = TestServer::new();
    server.properties.lock().unwrap().insert("request.path".into(), b"/from-server".to_vec());
    let h = start_with_server("", server);
    assert_eq!(h.shared("root.request.path").as_deref(), Some("/from-server"));
}

#[test]
fn configure_reads_the_plugin_identity_properties() {
    let opts = options();
    let vm_id = opts.vm_id.clone();
    let plugin = PluginInfo::new("ident", "my-root", vm_id.clone(), "");
    let h = Harness::try_start_plugin(built_code(PLUGIN), plugin, opts, TestServer::new()).unwrap();
    assert_eq!(h.shared("root.plugin_name").as_deref(), Some("ident"));
    assert_eq!(h.shared("root.plugin_root_id").as_deref(), Some("my-root"));
    assert_eq!(h.shared("root.plugin_vm_id"), Some(vm_id));
}

#[test]
fn configure_defines_a_counter_a_gauge_and_a_histogram() {
    let prefix = unique_vm_id("define").replace('-', "_");
    let _h = start(&format!(r#"{{"metric_prefix":"{prefix}"}}"#));
    assert_eq!(metric(&format!("{prefix}.requests")).kind, MetricType::Counter);
    assert_eq!(metric(&format!("{prefix}.gauge")).kind, MetricType::Gauge);
    assert_eq!(metric(&format!("{prefix}.histogram")).kind, MetricType::Histogram);
}

#[test]
fn configure_arms_the_tick_timer_with_tick_ms() {
    let h = start(r#"{"tick_ms":250}"#);
    assert_eq!(h.server.record.lock().unwrap().ticks.get(&h.root), Some(&Some(Duration::from_millis(250))));
}

#[test]
fn tick_ms_zero_leaves_the_timer_disarmed() {
    let h = start(r#"{"tick_ms":0}"#);
    assert_eq!(h.server.record.lock().unwrap().ticks.get(&h.root), Some(&None));
}

// ------------------------------------------------------------------ root events

#[test]
fn each_tick_is_counted_in_shared_data() {
    let mut h = start(r#"{"tick_ms":100}"#);
    h.vm.on_tick(h.root).unwrap();
    h.vm.on_tick(h.root).unwrap();
    assert_eq!(h.shared("ticks").as_deref(), Some("2"));
}

#[test]
fn set_effective_context_to_its_own_root_succeeds_in_on_tick() {
    let mut h = start(r#"{"tick_ms":100}"#);
    h.vm.on_tick(h.root).unwrap();
    assert_eq!(h.shared("tick.effective_root"), None, "only written when set_effective_context(root) fails");
}

#[test]
fn shutdown_runs_root_on_done_and_deletes_the_root() {
    let mut h = start("");
    assert!(h.vm.shutdown_plugin(h.root).unwrap());
    assert_eq!(h.shared("root.done.count").as_deref(), Some("1"));
    assert!(!h.vm.has_context(h.root));
}

#[test]
fn deferred_root_done_keeps_the_root_until_proxy_done() {
    let mut h = start(r#"{"defer_root_done":true,"tick_ms":100}"#);
    assert!(!h.vm.shutdown_plugin(h.root).unwrap());
    assert!(h.vm.has_context(h.root), "the root waits for proxy_done");
    h.vm.on_tick(h.root).unwrap();
    assert_eq!(h.shared("root.done.deferred").as_deref(), Some("OK"));
    assert!(!h.vm.has_context(h.root), "proxy_done deleted the root");
}

#[test]
fn deferred_root_done_disarms_the_timer_when_the_root_goes() {
    let mut h = start(r#"{"defer_root_done":true,"tick_ms":100}"#);
    h.vm.shutdown_plugin(h.root).unwrap();
    h.vm.on_tick(h.root).unwrap();
    assert_eq!(h.server.record.lock().unwrap().ticks.get(&h.root), Some(&None));
}

#[test]
fn foreign_function_callback_reads_its_arguments_from_buffer_8() {
    let mut h = start("");
    h.vm.on_foreign_function(h.root, 7, b"args".to_vec()).unwrap();
    assert_eq!(h.shared("foreign.callback").as_deref(), Some("7 4 OK args"));
    assert_eq!(h.shared("foreign.callback.count").as_deref(), Some("1"));
}

// ------------------------------------------------------------------ every request

#[test]
fn every_response_gets_x_proxy_wasm_with_the_configured_tag() {
    let mut h = start(r#"{"tag":"custom"}"#);
    let (_ctx, stream) = exchange(&mut h, "", &[]);
    assert_eq!(show(&stream.data().response_headers), owned(&[(":status", "200"), ("content-type", "text/plain"), ("x-proxy-wasm", "custom")]));
}

#[test]
fn request_without_a_test_case_is_not_modified() {
    let mut h = start("");
    let headers = [(":method", "GET"), (":path", "/plain"), (":authority", "example.com")];
    let (_ctx, stream, v) = h.request(&headers, true);
    assert_eq!(v, Verdict::Continue);
    assert_eq!(show(&stream.data().request_headers), owned(&headers));
}

#[test]
fn unknown_case_names_are_reported() {
    let mut h = start("");
    let (_ctx, stream) = exchange(&mut h, "no-such-case", &[]);
    assert_eq!(report(&stream, "x-pw-unknown-case"), "no-such-case");
}

#[test]
fn case_names_are_case_insensitive_and_comma_or_space_separated() {
    let mut h = start("");
    let (_ctx, stream) = exchange(&mut h, "PSEUDO,Effective-Context  time", &[]);
    assert_eq!(report(&stream, "x-pw-method"), "GET");
    assert_eq!(report(&stream, "x-pw-effective-self"), "OK");
    assert_eq!(report(&stream, "x-pw-time-sane"), "true");
    assert_eq!(stream.data().response_header("x-pw-unknown-case"), None);
}

#[test]
fn on_log_reads_request_and_response_headers() {
    let mut h = start("");
    let (ctx, _stream) = exchange(&mut h, "", &[]);
    h.vm.finish_stream(ctx).unwrap();
    assert_eq!(h.shared("log.last").as_deref(), Some("GET /test?q=1 200"));
}

#[test]
fn finish_stream_runs_on_done_on_log_and_on_delete_once_each() {
    let mut h = start("");
    let (ctx, _stream) = exchange(&mut h, "", &[]);
    h.vm.finish_stream(ctx).unwrap();
    assert_eq!(h.shared("done.count").as_deref(), Some("1"));
    assert_eq!(h.shared("log.count").as_deref(), Some("1"));
    assert_eq!(h.shared("delete.count").as_deref(), Some("1"));
}

#[test]
fn finish_stream_forgets_the_stream_context() {
    let mut h = start("");
    let (ctx, _stream) = exchange(&mut h, "", &[]);
    assert_eq!(h.vm.context_count(), 2);
    h.vm.finish_stream(ctx).unwrap();
    assert_eq!(h.vm.context_count(), 1);
    assert!(matches!(h.vm.on_response_headers(ctx, 0, true), Err(VmError::UnknownContext(id)) if id == ctx));
}

// ------------------------------------------------------------------ headers

#[test]
fn headers_case_adds_replaces_and_removes_request_headers() {
    let mut h = start("");
    let (_ctx, stream, _) = h.request(&req("headers", &[("x-pw-replace", "original"), ("x-pw-remove", "bye")]), true);
    let d = stream.data();
    assert_eq!(values(&d.request_headers, "x-pw-added"), ["1"]);
    assert_eq!(values(&d.request_headers, "x-pw-multi"), ["a", "b"]);
    assert_eq!(values(&d.request_headers, "x-pw-replace"), ["replaced"]);
    assert_eq!(values(&d.request_headers, "x-pw-remove"), Vec::<String>::new());
}

#[test]
fn replace_adds_a_request_header_that_was_absent() {
    let mut h = start("");
    let (_ctx, stream, _) = h.request(&req("headers", &[]), true);
    assert_eq!(values(&stream.data().request_headers, "x-pw-replace"), ["replaced"]);
}

#[test]
fn request_header_lookup_is_case_insensitive() {
    let mut h = start("");
    let (_ctx, stream) = exchange(&mut h, "headers", &[("x-pw-echo", "hi there")]);
    assert_eq!(report(&stream, "x-pw-echo"), "hi there");
    assert_eq!(report(&stream, "x-pw-echo-upper"), "hi there");
}

#[test]
fn missing_request_header_reads_as_not_found() {
    let mut h = start("");
    let (_ctx, stream) = exchange(&mut h, "headers", &[]);
    assert_eq!(report(&stream, "x-pw-missing"), "(none)");
}

#[test]
fn request_header_edits_are_visible_to_later_reads() {
    let mut h = start("");
    let (_ctx, stream) = exchange(&mut h, "headers", &[("x-pw-remove", "bye")]);
    assert_eq!(report(&stream, "x-pw-replace-readback"), "replaced");
    assert_eq!(report(&stream, "x-pw-remove-readback"), "(none)");
    assert_eq!(report(&stream, "x-pw-multi-readback"), "a,b");
}

#[test]
fn request_header_pairs_include_pseudo_headers_and_match_num_headers() {
    let mut h = start("");
    let (_ctx, stream) = exchange(&mut h, "headers", &[("x-one", "1")]);
    assert_eq!(report(&stream, "x-pw-req-header-count"), "6");
    assert_eq!(report(&stream, "x-pw-req-header-count-param"), "6");
}

#[test]
fn headers_case_adds_replaces_and_removes_response_headers() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("headers", &[]), true);
    h.respond(ctx, &stream, &[(":status", "200"), ("x-pw-resp-replace", "old"), ("x-pw-resp-remove", "bye")], true);
    let d = stream.data();
    assert_eq!(values(&d.response_headers, "x-pw-resp-added"), ["1"]);
    assert_eq!(values(&d.response_headers, "x-pw-resp-replace"), ["replaced"]);
    assert_eq!(values(&d.response_headers, "x-pw-resp-remove"), Vec::<String>::new());
}

#[test]
fn response_header_pairs_and_values_are_readable() {
    let mut h = start("");
    let (_ctx, stream) = exchange(&mut h, "headers", &[]);
    assert_eq!(report(&stream, "x-pw-resp-header-count"), "2");
    assert_eq!(report(&stream, "x-pw-resp-header-count-param"), "2");
    assert_eq!(report(&stream, "x-pw-resp-content-type"), "text/plain");
}

#[test]
fn set_headers_rewrites_the_whole_request_map() {
    let mut h = start("");
    let (_ctx, stream, _) = h.request(&req("set-headers", &[("x-pw-drop-me", "1"), ("x-keep", "k")]), true);
    let expected = req("set-headers", &[("x-keep", "k"), ("x-pw-set-all", "1")]);
    assert_eq!(show(&stream.data().request_headers), owned(&expected));
}

#[test]
fn set_headers_rewrites_the_whole_response_map() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("set-headers", &[("x-pw-drop-me", "1"), ("x-keep", "k")]), true);
    h.respond(ctx, &stream, &[(":status", "201"), ("x-pw-drop-resp", "z"), ("x-origin", "o")], true);
    let expected = [(":status", "201"), ("x-origin", "o"), ("x-pw-set-all-resp", "1"), ("x-proxy-wasm", "rust-sdk"), ("x-pw-set-all-count", "7")];
    assert_eq!(show(&stream.data().response_headers), owned(&expected));
}

#[test]
fn pseudo_headers_are_readable_on_the_request() {
    let mut h = start("");
    let (_ctx, stream) = exchange(&mut h, "pseudo", &[]);
    assert_eq!(report(&stream, "x-pw-method"), "GET");
    assert_eq!(report(&stream, "x-pw-path"), "/test?q=1");
    assert_eq!(report(&stream, "x-pw-authority"), "example.com");
    assert_eq!(report(&stream, "x-pw-scheme"), "https");
}

#[test]
fn status_pseudo_header_is_readable_on_the_response() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("pseudo", &[]), true);
    h.respond(ctx, &stream, &[(":status", "404")], true);
    assert_eq!(report(&stream, "x-pw-status"), "404");
}

// ------------------------------------------------------------------ sizes

#[test]
fn request_header_map_size_is_the_serialized_size() {
    let mut h = start("");
    let headers = req("sizes", &[]);
    let (_ctx, stream) = exchange(&mut h, "sizes", &[]);
    let expected = serialized_size(&headers);
    assert_eq!(report(&stream, "x-pw-req-header-map-size"), format!("OK {expected}"));
    assert_eq!(report(&stream, "x-pw-req-header-map-size-expected"), expected.to_string());
}

#[test]
fn response_header_map_size_is_the_serialized_size() {
    let mut h = start("");
    let (_ctx, stream) = exchange(&mut h, "sizes", &[]);
    let expected = serialized_size(ORIGIN);
    assert_eq!(report(&stream, "x-pw-resp-header-map-size"), format!("OK {expected}"));
    assert_eq!(report(&stream, "x-pw-resp-header-map-size-expected"), expected.to_string());
}

#[test]
fn unknown_map_and_buffer_types_are_bad_argument() {
    let mut h = start("");
    let (_ctx, stream) = exchange(&mut h, "sizes", &[]);
    assert_eq!(report(&stream, "x-pw-header-map-size-bad-type"), "BAD_ARGUMENT");
    assert_eq!(report(&stream, "x-pw-buffer-status-bad-type"), "BAD_ARGUMENT");
}

#[test]
fn request_body_buffer_status_is_the_cumulative_size() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("sizes", &[]), false);
    let (verdicts, body) = pass_request_body(&mut h, ctx, &["hello ", "world"]);
    assert_eq!(verdicts, PAUSE_THEN_CONTINUE);
    assert_eq!(body, "hello world");
    h.respond(ctx, &stream, ORIGIN, true);
    assert_eq!(report(&stream, "x-pw-req-body-buffer-status"), "OK 11");
    assert_eq!(report(&stream, "x-pw-req-body-size-param"), "11");
}

#[test]
fn response_body_buffer_status_is_read_at_end_of_stream() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("sizes", &[]), true);
    h.respond(ctx, &stream, ORIGIN, false);
    let (verdicts, _) = pass_response_body(&mut h, ctx, &["hello world"]);
    assert_eq!(verdicts, [Verdict::Continue]);
    assert_eq!(h.shared("resp.body.buffer_status").as_deref(), Some("OK 11"));
}

// ------------------------------------------------------------------ local responses

#[test]
fn local_response_from_request_headers_stops_the_chain() {
    let mut h = start("");
    let (_ctx, stream, v) = h.request(&req("local", &[]), true);
    assert_eq!(v, Verdict::Stop);
    let lr = stream.data().local_response.expect("local response");
    assert_eq!(lr.status, 403);
    assert_eq!(text(&lr.body), "denied by rust-sdk-filter");
    assert_eq!(show(&lr.headers), owned(&[("x-proxy-wasm", "rust-sdk"), ("content-type", "text/plain"), ("x-pw-local", "request-headers")]));
}

#[test]
fn local_response_has_no_details_and_no_grpc_status() {
    let mut h = start("");
    let (_ctx, stream, _) = h.request(&req("local", &[]), true);
    let lr = stream.data().local_response.expect("local response");
    assert_eq!(lr.details, "");
    assert_eq!(lr.grpc_status, -1);
}

#[test]
fn local_response_status_and_body_come_from_request_headers() {
    let mut h = start("");
    let (_ctx, stream, _) = h.request(&req("local", &[("x-pw-local-status", "418"), ("x-pw-local-body", "teapot")]), true);
    let lr = stream.data().local_response.expect("local response");
    assert_eq!((lr.status, text(&lr.body)), (418, "teapot".to_string()));
}

#[test]
fn local_response_carries_the_collected_report_headers() {
    let mut h = start("");
    let (_ctx, stream, v) = h.request(&req("pseudo, local", &[]), true);
    assert_eq!(v, Verdict::Stop);
    assert_eq!(local_header(&stream, "x-pw-path"), "/test?q=1");
    assert_eq!(local_header(&stream, "x-pw-method"), "GET");
}

#[test]
fn local_response_from_the_request_body_waits_for_end_of_stream() {
    let mut h = start("");
    let (ctx, stream, v) = h.request(&req("local-req-body", &[]), false);
    assert_eq!(v, Verdict::Continue);
    assert_eq!(h.vm.on_request_body(ctx, b"hello ", false).unwrap(), Verdict::Pause);
    assert!(stream.data().local_response.is_none());
    assert_eq!(h.vm.on_request_body(ctx, b"world", true).unwrap(), Verdict::Stop);
    let lr = stream.data().local_response.expect("local response");
    assert_eq!((lr.status, text(&lr.body)), (403, "request body had 11 bytes".to_string()));
    assert_eq!(local_header(&stream, "x-pw-local"), "request-body");
}

#[test]
fn local_response_from_request_trailers_stops_the_chain() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("local-req-trailers", &[("x-pw-local-status", "400")]), false);
    assert_eq!(h.vm.on_request_body(ctx, b"abc", false).unwrap(), Verdict::Continue);
    stream.0.lock().unwrap().request_trailers = pairs(&[("x-trailer", "t")]);
    assert_eq!(h.vm.on_request_trailers(ctx, 1).unwrap(), Verdict::Stop);
    let lr = stream.data().local_response.expect("local response");
    assert_eq!((lr.status, text(&lr.body)), (400, "request trailers: 1".to_string()));
    assert_eq!(local_header(&stream, "x-pw-local"), "request-trailers");
}

#[test]
fn local_response_from_response_headers_replaces_the_origin_response() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("local-resp-headers", &[]), true);
    assert_eq!(h.respond(ctx, &stream, ORIGIN, false), Verdict::Stop);
    let lr = stream.data().local_response.expect("local response");
    assert_eq!((lr.status, text(&lr.body)), (403, "replaced response by rust-sdk-filter".to_string()));
    assert_eq!(local_header(&stream, "x-pw-local"), "response-headers");
}

// ------------------------------------------------------------------ request bodies

#[test]
fn request_body_upper_pauses_until_end_of_stream_then_uppercases() {
    let mut h = start("");
    let (verdicts, body, _) = request_with_body(&mut h, "req-body-upper", &[], &["hello ", "world"]);
    assert_eq!(verdicts, PAUSE_THEN_CONTINUE);
    assert_eq!(body, "HELLO WORLD");
}

#[test]
fn request_body_upper_keeps_content_length() {
    let mut h = start("");
    let (_, _, stream) = request_with_body(&mut h, "req-body-upper", &[], &["hello ", "world"]);
    assert_eq!(stream.data().request_header("content-length").as_deref(), Some("11"));
}

#[test]
fn request_body_prefix_prepends_the_configured_prefix() {
    let mut h = start("");
    let (verdicts, body, _) = request_with_body(&mut h, "req-body-prefix", &[], &["hello ", "world"]);
    assert_eq!(verdicts, PAUSE_THEN_CONTINUE);
    assert_eq!(body, "[pw]hello world");
}

#[test]
fn request_body_append_appends_the_configured_suffix() {
    let mut h = start("");
    let (_, body, _) = request_with_body(&mut h, "req-body-append", &[], &["hello ", "world"]);
    assert_eq!(body, "hello world[/pw]");
}

#[test]
fn configured_prefix_and_suffix_are_used() {
    let mut h = start(r#"{"prefix":"<<","suffix":">>"}"#);
    let (_, body, _) = request_with_body(&mut h, "req-body-prefix req-body-append", &[], &["hello ", "world"]);
    assert_eq!(body, "<<hello world>>");
}

#[test]
fn request_body_replace_uses_the_configured_replacement() {
    let mut h = start("");
    let (_, body, _) = request_with_body(&mut h, "req-body-replace", &[], &["hello ", "world"]);
    assert_eq!(body, "replaced by rust-sdk-filter");
}

#[test]
fn request_body_replace_uses_the_x_pw_replace_body_header() {
    let mut h = start("");
    let (_, body, _) = request_with_body(&mut h, "req-body-replace", &[("x-pw-replace-body", "new body")], &["hello ", "world"]);
    assert_eq!(body, "new body");
}

#[test]
fn request_body_splice_replaces_bytes_one_and_two() {
    let mut h = start("");
    let (_, body, _) = request_with_body(&mut h, "req-body-splice", &[], &["hello ", "world"]);
    assert_eq!(body, "h--lo world");
}

#[test]
fn request_body_edits_combine_in_documented_order() {
    let mut h = start("");
    let (_, body, _) = request_with_body(&mut h, "req-body-upper req-body-prefix req-body-append", &[], &["hel", "lo ", "world"]);
    assert_eq!(body, "[pw]HELLO WORLD[/pw]");
}

#[test]
fn request_body_is_paused_on_every_chunk_before_end_of_stream() {
    let mut h = start("");
    let (verdicts, body, _) = request_with_body(&mut h, "req-body-upper", &[], &["a", "b", "c", "d"]);
    assert_eq!(verdicts, [Verdict::Pause, Verdict::Pause, Verdict::Pause, Verdict::Continue]);
    assert_eq!(body, "ABCD");
}

#[test]
fn length_changing_request_body_edit_removes_content_length() {
    let mut h = start("");
    let (_, _, stream) = request_with_body(&mut h, "req-body-append", &[], &["hello ", "world"]);
    assert_eq!(stream.data().request_header("content-length"), None);
}

#[test]
fn keep_content_length_parameter_keeps_the_request_content_length() {
    let mut h = start("");
    let (_, _, stream) = request_with_body(&mut h, "req-body-append", &[("x-pw-keep-content-length", "1")], &["hello ", "world"]);
    assert_eq!(stream.data().request_header("content-length").as_deref(), Some("11"));
}

// ------------------------------------------------------------------ response bodies

#[test]
fn response_body_upper_pauses_until_end_of_stream_then_uppercases() {
    let mut h = start("");
    let (verdicts, body, _) = response_with_body(&mut h, "resp-body-upper", &[], &["hello ", "world"]);
    assert_eq!(verdicts, PAUSE_THEN_CONTINUE);
    assert_eq!(body, "HELLO WORLD");
}

#[test]
fn response_body_prefix_prepends_the_configured_prefix() {
    let mut h = start("");
    let (_, body, _) = response_with_body(&mut h, "resp-body-prefix", &[], &["hello ", "world"]);
    assert_eq!(body, "[pw]hello world");
}

#[test]
fn response_body_append_appends_the_configured_suffix() {
    let mut h = start("");
    let (_, body, _) = response_with_body(&mut h, "resp-body-append", &[], &["hello ", "world"]);
    assert_eq!(body, "hello world[/pw]");
}

#[test]
fn response_body_replace_uses_the_x_pw_replace_resp_body_header() {
    let mut h = start("");
    let (_, body, _) = response_with_body(&mut h, "resp-body-replace", &[("x-pw-replace-resp-body", "swapped")], &["hello ", "world"]);
    assert_eq!(body, "swapped");
}

#[test]
fn response_body_replace_uses_the_configured_replacement() {
    let mut h = start(r#"{"replacement":"from config"}"#);
    let (_, body, _) = response_with_body(&mut h, "resp-body-replace", &[], &["hello ", "world"]);
    assert_eq!(body, "from config");
}

#[test]
fn response_body_splice_replaces_bytes_one_and_two() {
    let mut h = start("");
    let (_, body, _) = response_with_body(&mut h, "resp-body-splice", &[], &["hello ", "world"]);
    assert_eq!(body, "h--lo world");
}

#[test]
fn length_changing_response_body_edit_removes_content_length() {
    let mut h = start("");
    let (_, _, stream) = response_with_body(&mut h, "resp-body-prefix", &[], &["hello ", "world"]);
    assert_eq!(stream.data().response_header("content-length"), None);
}

#[test]
fn response_body_edit_records_calls_eos_and_cumulative_size() {
    let mut h = start("");
    response_with_body(&mut h, "resp-body-upper", &[], &["hel", "lo ", "world"]);
    assert_eq!(h.shared("resp.body.info").as_deref(), Some("calls=3 eos=1 size=11"));
}

// ------------------------------------------------------------------ trailers

#[test]
fn request_trailers_are_readable_and_extendable() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("trailers", &[]), false);
    assert_eq!(h.vm.on_request_body(ctx, b"abc", false).unwrap(), Verdict::Continue);
    stream.0.lock().unwrap().request_trailers = pairs(&[("x-trailer", "tv")]);
    assert_eq!(h.vm.on_request_trailers(ctx, 1).unwrap(), Verdict::Continue);
    assert_eq!(show(&stream.data().request_trailers), owned(&[("x-trailer", "tv"), ("x-pw-req-trailer", "added")]));
    h.respond(ctx, &stream, ORIGIN, true);
    assert_eq!(report(&stream, "x-pw-req-trailers"), "1 1");
    assert_eq!(report(&stream, "x-pw-req-trailer-value"), "tv");
}

#[test]
fn response_trailer_is_added_from_the_last_body_chunk() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("trailers", &[]), true);
    h.respond(ctx, &stream, ORIGIN, false);
    pass_response_body(&mut h, ctx, &["abc", "def"]);
    assert_eq!(show(&stream.data().response_trailers), owned(&[("x-pw-trailer", "added")]));
}

#[test]
fn origin_response_trailers_are_readable_and_extendable() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("trailers", &[]), true);
    h.respond(ctx, &stream, ORIGIN, false);
    assert_eq!(h.vm.on_response_body(ctx, b"abc", false).unwrap(), Verdict::Continue);
    stream.0.lock().unwrap().response_trailers = pairs(&[("x-origin-trailer", "o")]);
    assert_eq!(h.vm.on_response_trailers(ctx, 1).unwrap(), Verdict::Continue);
    assert_eq!(h.shared("resp.trailers").as_deref(), Some("1 1"));
    assert_eq!(show(&stream.data().response_trailers), owned(&[("x-origin-trailer", "o"), ("x-pw-resp-trailer", "added")]));
}

// ------------------------------------------------------------------ http_call

#[test]
fn http_call_pauses_the_request() {
    let mut h = start("");
    let (_ctx, _stream, v) = h.request(&req("http-call", &[]), true);
    assert_eq!(v, Verdict::Pause);
}

#[test]
fn http_call_dispatches_the_documented_request() {
    let mut h = start("");
    let (ctx, _stream, _) = h.request(&req("http-call", &[]), true);
    let (root, token, request) = one_http_call(&h);
    assert_eq!(root, h.root);
    assert_ne!(token, 0);
    let ctx_text = ctx.to_string();
    let expected = HttpCallRequest {
        upstream: "127.0.0.1:8081".into(),
        headers: pairs(&[
            (":method", "POST"),
            (":path", "/callout"),
            (":authority", "127.0.0.1:8081"),
            (":scheme", "http"),
            ("content-type", "text/plain"),
            ("x-pw-callout", "1"),
            ("x-pw-context-id", &ctx_text),
        ]),
        body: b"ping from rust-sdk-filter".to_vec(),
        trailers: vec![],
        timeout: Some(Duration::from_millis(5000)),
        max_response_size: proxy_wasm_host::config::Quotas::DEFAULT_MAX_HTTP_CALL_RESPONSE_SIZE,
    };
    assert_eq!(request, expected);
}

#[test]
fn http_call_uses_the_configured_upstream_authority_path_and_timeout() {
    let mut h = start(r#"{"upstream":"callout.internal:9000","authority":"callout.example","callout_path":"/cfg","callout_timeout_ms":250}"#);
    h.request(&req("http-call", &[]), true);
    let (_, _, request) = one_http_call(&h);
    assert_eq!(request.upstream, "callout.internal:9000");
    assert_eq!(values(&request.headers, ":authority"), ["callout.example"]);
    assert_eq!(values(&request.headers, ":path"), ["/cfg"]);
    assert_eq!(request.timeout, Some(Duration::from_millis(250)));
}

#[test]
fn callout_path_request_header_overrides_the_configured_path() {
    let mut h = start("");
    h.request(&req("http-call", &[("x-pw-callout-path", "/override")]), true);
    let (_, _, request) = one_http_call(&h);
    assert_eq!(values(&request.headers, ":path"), ["/override"]);
}

#[test]
fn http_call_tokens_are_unique() {
    let mut h = start("");
    h.request(&req("http-call", &[]), true);
    h.request(&req("http-call", &[]), true);
    let calls = h.server.take_http_calls();
    assert_eq!(calls.len(), 2);
    assert_ne!(calls[0].1, calls[1].1);
}

#[test]
fn http_call_response_resumes_the_request() {
    let mut h = start("");
    let (_ctx, stream, _) = h.request(&req("http-call", &[]), true);
    let (_, token, _) = one_http_call(&h);
    assert!(stream.data().resumed.is_empty());
    h.vm.on_http_call_response(token, callout_response("200", "pong")).unwrap();
    assert_eq!(stream.data().resumed, [StreamType::HttpRequest]);
}

#[test]
fn http_call_response_headers_and_body_reach_the_origin_request() {
    let mut h = start("");
    let (_ctx, stream, _) = h.request(&req("http-call", &[]), true);
    let (_, token, _) = one_http_call(&h);
    h.vm.on_http_call_response(token, callout_response("200", "pong")).unwrap();
    let d = stream.data();
    assert_eq!(d.request_header("x-pw-callout-status").as_deref(), Some("200"));
    assert_eq!(d.request_header("x-pw-callout-body").as_deref(), Some("pong"));
}

#[test]
fn http_call_response_is_reported_to_the_client() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("http-call", &[]), true);
    let (_, token, _) = one_http_call(&h);
    let response = HttpCallResponse {
        headers: pairs(&[(":status", "202"), ("x-callout", "yes"), ("x-more", "1")]),
        body: b"pong".to_vec(),
        trailers: pairs(&[("x-t", "1")]),
        failure: None,
    };
    h.vm.on_http_call_response(token, response).unwrap();
    h.respond(ctx, &stream, ORIGIN, true);
    assert_eq!(report(&stream, "x-pw-callout-dispatch"), "OK");
    assert_eq!(report(&stream, "x-pw-callout-status"), "202");
    assert_eq!(report(&stream, "x-pw-callout-body"), "pong");
    assert_eq!(report(&stream, "x-pw-callout-headers"), "3");
    assert_eq!(report(&stream, "x-pw-callout-header-pairs"), "3");
    assert_eq!(report(&stream, "x-pw-callout-body-size"), "4");
    assert_eq!(report(&stream, "x-pw-callout-trailers"), "1 1");
}

#[test]
fn get_status_after_a_successful_callout_is_zero() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("http-call", &[]), true);
    let (_, token, _) = one_http_call(&h);
    h.vm.on_http_call_response(token, callout_response("200", "pong")).unwrap();
    h.respond(ctx, &stream, ORIGIN, true);
    assert_eq!(report(&stream, "x-pw-callout-get-status"), "0");
}

#[test]
fn http_call_refused_by_the_server_is_reported_and_the_request_continues() {
    let mut h = start("");
    *h.server.http_call_result.lock().unwrap() = Err(proxy_wasm_host::abi::Status::BadArgument);
    let (ctx, stream, v) = h.request(&req("http-call", &[]), true);
    assert_eq!(v, Verdict::Continue);
    h.respond(ctx, &stream, ORIGIN, true);
    assert_eq!(report(&stream, "x-pw-callout-dispatch"), "BAD_ARGUMENT");
}

#[test]
fn http_call_that_cannot_start_is_internal_failure() {
    let mut h = start("");
    *h.server.http_call_result.lock().unwrap() = Err(proxy_wasm_host::abi::Status::NotFound);
    let (ctx, stream, v) = h.request(&req("http-call", &[]), true);
    assert_eq!(v, Verdict::Continue);
    h.respond(ctx, &stream, ORIGIN, true);
    assert_eq!(report(&stream, "x-pw-callout-dispatch"), "INTERNAL_FAILURE");
}

#[test]
fn http_call_without_path_is_bad_argument_and_not_dispatched() {
    let mut h = start("");
    let (ctx, stream, v) = h.request(&req("http-call-bad", &[]), true);
    assert_eq!(v, Verdict::Continue);
    assert!(h.server.take_http_calls().is_empty());
    h.respond(ctx, &stream, ORIGIN, true);
    assert_eq!(report(&stream, "x-pw-callout-bad"), "BAD_ARGUMENT");
}

#[test]
fn http_call_local_answers_with_the_callout_status_and_body() {
    let mut h = start("");
    let (_ctx, stream, v) = h.request(&req("http-call-local", &[]), true);
    assert_eq!(v, Verdict::Pause);
    let (_, token, _) = one_http_call(&h);
    h.vm.on_http_call_response(token, callout_response("201", "made")).unwrap();
    let d = stream.data();
    assert!(d.resumed.is_empty(), "answered locally, not resumed");
    let lr = d.local_response.expect("local response");
    assert_eq!((lr.status, text(&lr.body)), (201, "callout:made".to_string()));
    let expected = [
        ("x-proxy-wasm", "rust-sdk"),
        ("content-type", "text/plain"),
        ("x-pw-callout-get-status", "0"),
        ("x-pw-callout-status", "201"),
        ("x-pw-callout-body", "made"),
        ("x-pw-callout-headers", "2"),
        ("x-pw-callout-header-pairs", "2"),
        ("x-pw-callout-body-size", "4"),
        ("x-pw-callout-trailers", "0 0"),
        ("x-pw-callout-dispatch", "OK"),
    ];
    assert_eq!(show(&lr.headers), owned(&expected));
}

#[test]
fn failed_http_call_local_answers_503() {
    let mut h = start("");
    let (_ctx, stream, _) = h.request(&req("http-call-local", &[]), true);
    let (_, token, _) = one_http_call(&h);
    h.vm.on_http_call_response(token, HttpCallResponse::failed(4, "timeout")).unwrap();
    let lr = stream.data().local_response.expect("local response");
    assert_eq!((lr.status, text(&lr.body)), (503, "callout failed".to_string()));
    assert_eq!(local_header(&stream, "x-pw-callout-failed"), "1");
    assert_eq!(local_header(&stream, "x-pw-callout-get-status"), "4");
    assert_eq!(local_header(&stream, "x-pw-callout-get-status-message"), "timeout");
}

#[test]
fn http_call_fail_goes_to_the_fail_upstream_with_its_timeout() {
    let mut h = start(r#"{"fail_upstream":"10.255.255.1:9","fail_timeout_ms":300}"#);
    let (_ctx, _stream, v) = h.request(&req("http-call-fail", &[]), true);
    assert_eq!(v, Verdict::Pause);
    let (_, _, request) = one_http_call(&h);
    assert_eq!(request.upstream, "10.255.255.1:9");
    assert_eq!(request.timeout, Some(Duration::from_millis(300)));
}

#[test]
fn failed_http_call_is_delivered_with_zero_headers_and_resumes_the_request() {
    let mut h = start("");
    let (_ctx, stream, _) = h.request(&req("http-call-fail", &[]), true);
    let (_, token, _) = one_http_call(&h);
    h.vm.on_http_call_response(token, HttpCallResponse::failed(14, "connection refused")).unwrap();
    let d = stream.data();
    assert_eq!(d.resumed, [StreamType::HttpRequest]);
    assert_eq!(d.request_header("x-pw-callout-failed").as_deref(), Some("1"));
    assert_eq!(d.request_header("x-pw-callout-status"), None);
}

#[test]
fn get_status_reports_the_failure_code_and_message() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("http-call-fail", &[]), true);
    let (_, token, _) = one_http_call(&h);
    h.vm.on_http_call_response(token, HttpCallResponse::failed(14, "connection refused")).unwrap();
    h.respond(ctx, &stream, ORIGIN, true);
    assert_eq!(report(&stream, "x-pw-callout-dispatch"), "OK");
    assert_eq!(report(&stream, "x-pw-callout-failed"), "1");
    assert_eq!(report(&stream, "x-pw-callout-get-status"), "14");
    assert_eq!(report(&stream, "x-pw-callout-get-status-message"), "connection refused");
}

#[test]
fn http_call_from_response_headers_pauses_the_response_until_the_answer() {
    let mut h = start("");
    let (ctx, stream, v) = h.request(&req("http-call-response", &[]), true);
    assert_eq!(v, Verdict::Continue);
    assert_eq!(h.respond(ctx, &stream, ORIGIN, true), Verdict::Pause);
    let (_, token, _) = one_http_call(&h);
    h.vm.on_http_call_response(token, callout_response("200", "late")).unwrap();
    let d = stream.data();
    assert_eq!(d.resumed, [StreamType::HttpResponse]);
    assert_eq!(d.response_header("x-pw-callout-dispatch").as_deref(), Some("OK"));
    assert_eq!(d.response_header("x-pw-callout-status").as_deref(), Some("200"));
    assert_eq!(d.response_header("x-pw-callout-body").as_deref(), Some("late"));
}

#[test]
fn unknown_http_call_token_is_ignored() {
    let mut h = start("");
    h.vm.on_http_call_response(12345, callout_response("200", "x")).unwrap();
    assert_eq!(h.shared("tick.callout"), None);
}

#[test]
fn pending_http_call_is_cancelled_when_its_root_goes_away() {
    let mut h = start("");
    h.request(&req("http-call", &[]), true);
    let (_, token, _) = one_http_call(&h);
    assert!(h.vm.shutdown_plugin(h.root).unwrap());
    assert_eq!(h.server.record.lock().unwrap().cancelled, [token]);
}

#[test]
fn pending_http_call_of_a_finished_stream_is_cancelled() {
    let mut h = start("");
    let (ctx, _stream, _) = h.request(&req("http-call", &[]), true);
    let (_, token, _) = one_http_call(&h);
    h.vm.finish_stream(ctx).unwrap();
    assert_eq!(h.server.record.lock().unwrap().cancelled, [token]);
}

// ------------------------------------------------------------------ tick callouts

#[test]
fn tick_http_call_dispatches_a_get_from_the_root_context() {
    let mut h = start(r#"{"tick_ms":100,"tick_http_call":true,"callout_path":"/tick"}"#);
    h.vm.on_tick(h.root).unwrap();
    let (root, _token, request) = one_http_call(&h);
    assert_eq!(root, h.root);
    let expected = HttpCallRequest {
        upstream: "127.0.0.1:8081".into(),
        headers: pairs(&[(":method", "GET"), (":path", "/tick"), (":authority", "127.0.0.1:8081"), (":scheme", "http"), ("x-pw-tick", "1")]),
        body: vec![],
        trailers: vec![],
        timeout: Some(Duration::from_millis(5000)),
        max_response_size: proxy_wasm_host::config::Quotas::DEFAULT_MAX_HTTP_CALL_RESPONSE_SIZE,
    };
    assert_eq!(request, expected);
}

#[test]
fn tick_callout_response_status_is_recorded() {
    let mut h = start(r#"{"tick_ms":100,"tick_http_call":true}"#);
    h.vm.on_tick(h.root).unwrap();
    let (_, token, _) = one_http_call(&h);
    h.vm.on_http_call_response(token, callout_response("204", "")).unwrap();
    assert_eq!(h.shared("tick.callout").as_deref(), Some("204"));
    assert_eq!(h.shared("tick.callout.count").as_deref(), Some("1"));
}

#[test]
fn failed_tick_callout_records_get_status() {
    let mut h = start(r#"{"tick_ms":100,"tick_http_call":true}"#);
    h.vm.on_tick(h.root).unwrap();
    let (_, token, _) = one_http_call(&h);
    h.vm.on_http_call_response(token, HttpCallResponse::failed(4, "timeout")).unwrap();
    assert_eq!(h.shared("tick.callout").as_deref(), Some("failed 4 timeout"));
}

#[test]
fn refused_tick_callout_records_the_dispatch_status() {
    let mut h = start(r#"{"tick_ms":100,"tick_http_call":true}"#);
    *h.server.http_call_result.lock().unwrap() = Err(proxy_wasm_host::abi::Status::InternalFailure);
    h.vm.on_tick(h.root).unwrap();
    assert_eq!(h.shared("tick.callout").as_deref(), Some("dispatch INTERNAL_FAILURE"));
}

#[test]
fn tick_callout_is_not_repeated_while_one_is_in_flight() {
    let mut h = start(r#"{"tick_ms":100,"tick_http_call":true}"#);
    h.vm.on_tick(h.root).unwrap();
    h.vm.on_tick(h.root).unwrap();
    let (_, token, _) = one_http_call(&h);
    h.vm.on_http_call_response(token, callout_response("200", "")).unwrap();
    h.vm.on_tick(h.root).unwrap();
    assert_eq!(h.server.take_http_calls().len(), 1, "a new call once the first was answered");
}

// ------------------------------------------------------------------ shared data

#[test]
fn shared_case_increments_a_counter_per_request() {
    let mut h = start("");
    let (_, first) = exchange(&mut h, "shared", &[("x-pw-key", "hits")]);
    let (_, second) = exchange(&mut h, "shared", &[("x-pw-key", "hits")]);
    assert_eq!(report(&first, "x-pw-shared"), "1");
    assert_eq!(report(&second, "x-pw-shared"), "2");
    assert_eq!(report(&second, "x-pw-shared-retries"), "0");
    assert_eq!(h.shared("hits").as_deref(), Some("2"));
}

#[test]
fn shared_data_is_shared_by_vms_with_the_same_vm_id() {
    let vm_id = unique_vm_id("same");
    let mut a = Harness::try_start_code(built_code(PLUGIN), "", VmOptions::new(vm_id.clone())).unwrap();
    let mut b = Harness::try_start_code(built_code(PLUGIN), "", VmOptions::new(vm_id)).unwrap();
    exchange(&mut a, "shared", &[]);
    let (_, stream) = exchange(&mut b, "shared", &[]);
    assert_eq!(report(&stream, "x-pw-shared"), "2");
    assert_eq!(b.shared("vm.starts").as_deref(), Some("2"));
}

#[test]
fn shared_data_is_scoped_by_vm_id() {
    let mut a = start("");
    let mut b = start("");
    exchange(&mut a, "shared", &[]);
    let (_, stream) = exchange(&mut b, "shared", &[]);
    assert_eq!(report(&stream, "x-pw-shared"), "1");
}

#[test]
fn shared_cas_refuses_a_stale_cas() {
    let mut h = start("");
    let store = proxy_wasm_host::shared::process_shared_data();
    store.set(&h.plugin.vm_id, b"cas.test", b"init", 0).unwrap();
    let (_, cas) = store.get(&h.plugin.vm_id, b"cas.test").unwrap();
    let (_, stream) = exchange(&mut h, "shared-cas", &[]);
    assert_eq!(report(&stream, "x-pw-cas-value"), cas.to_string());
    assert_eq!(report(&stream, "x-pw-cas-first"), "OK");
    assert_eq!(report(&stream, "x-pw-cas-stale"), "CAS_MISMATCH");
    assert_eq!(report(&stream, "x-pw-cas-final"), "first");
}

#[test]
fn shared_get_answers_the_value_and_cas_locally() {
    let mut h = start("");
    let store = proxy_wasm_host::shared::process_shared_data();
    store.set(&h.plugin.vm_id, b"greeting", b"hello", 0).unwrap();
    let (_, cas) = store.get(&h.plugin.vm_id, b"greeting").unwrap();
    let (_ctx, stream, v) = h.request(&req("shared-get", &[("x-pw-key", "greeting")]), true);
    assert_eq!(v, Verdict::Stop);
    let lr = stream.data().local_response.expect("local response");
    assert_eq!((lr.status, text(&lr.body)), (200, "hello".to_string()));
    assert_eq!(local_header(&stream, "x-pw-shared-value"), "hello");
    assert_eq!(local_header(&stream, "x-pw-shared-cas"), cas.to_string());
}

#[test]
fn shared_get_of_a_missing_key_answers_404() {
    let mut h = start("");
    let (_ctx, stream, _) = h.request(&req("shared-get", &[("x-pw-key", "absent")]), true);
    let lr = stream.data().local_response.expect("local response");
    assert_eq!((lr.status, text(&lr.body)), (404, "(none)".to_string()));
    assert_eq!(local_header(&stream, "x-pw-shared-value"), "(none)");
    assert_eq!(local_header(&stream, "x-pw-shared-cas"), "(none)");
}

#[test]
fn shared_set_stores_the_value_unconditionally() {
    let mut h = start("");
    let (_ctx, stream, v) = h.request(&req("shared-set", &[("x-pw-key", "k1"), ("x-pw-value", "v1")]), true);
    assert_eq!(v, Verdict::Stop);
    let lr = stream.data().local_response.expect("local response");
    assert_eq!((lr.status, text(&lr.body)), (200, "OK".to_string()));
    assert_eq!(local_header(&stream, "x-pw-shared-set"), "OK");
    assert_eq!(h.shared("k1").as_deref(), Some("v1"));
}

#[test]
fn shared_set_with_a_stale_cas_answers_409() {
    let mut h = start("");
    let store = proxy_wasm_host::shared::process_shared_data();
    store.set(&h.plugin.vm_id, b"k2", b"old", 0).unwrap();
    let (_, cas) = store.get(&h.plugin.vm_id, b"k2").unwrap();
    store.set(&h.plugin.vm_id, b"k2", b"newer", 0).unwrap();
    let cas_text = cas.to_string();
    let (_ctx, stream, _) = h.request(&req("shared-set", &[("x-pw-key", "k2"), ("x-pw-value", "v2"), ("x-pw-cas", &cas_text)]), true);
    let lr = stream.data().local_response.expect("local response");
    assert_eq!((lr.status, text(&lr.body)), (409, "CAS_MISMATCH".to_string()));
    assert_eq!(h.shared("k2").as_deref(), Some("newer"));
}

// ------------------------------------------------------------------ queues

#[test]
fn enqueue_resolves_the_queue_registered_in_configure() {
    let mut h = start("");
    let (_, stream) = exchange(&mut h, "enqueue", &[]);
    assert_eq!(report(&stream, "x-pw-queue-resolve"), "OK");
    assert_eq!(report(&stream, "x-pw-queue-resolve-same-id"), "true");
    assert_eq!(report(&stream, "x-pw-enqueue"), "OK");
}

#[test]
fn enqueue_notifies_the_root_that_registered_the_queue() {
    let mut h = start(r#"{"queue":"jobs"}"#);
    exchange(&mut h, "enqueue", &[]);
    assert_eq!(h.server.take_queue_ready(), [(h.root, queue_id(&h, "jobs"))]);
}

#[test]
fn enqueued_item_is_dequeued_in_on_queue_ready() {
    let mut h = start("");
    exchange(&mut h, "enqueue", &[("x-pw-queue-value", "payload")]);
    assert_eq!(h.shared("queue.count"), None);
    h.deliver_queue_ready();
    assert_eq!(h.shared("queue.last").as_deref(), Some("payload"));
    assert_eq!(h.shared("queue.count").as_deref(), Some("1"));
    assert_eq!(h.shared("queue.error"), None);
}

#[test]
fn on_queue_ready_drains_every_item() {
    let mut h = start("");
    exchange(&mut h, "enqueue", &[("x-pw-queue-value", "one")]);
    exchange(&mut h, "enqueue", &[("x-pw-queue-value", "two")]);
    let q = queue_id(&h, "q1");
    h.server.take_queue_ready();
    h.vm.on_queue_ready(h.root, q).unwrap();
    assert_eq!(h.shared("queue.last").as_deref(), Some("two"));
    assert_eq!(h.shared("queue.count").as_deref(), Some("2"));
}

#[test]
fn queue_resume_pauses_until_on_queue_ready_resumes_the_request() {
    let mut h = start("");
    let (ctx, stream, v) = h.request(&req("queue-resume", &[]), true);
    assert_eq!(v, Verdict::Pause);
    assert!(stream.data().resumed.is_empty());
    h.deliver_queue_ready();
    let d = stream.data();
    assert_eq!(d.resumed, [StreamType::HttpRequest]);
    assert_eq!(d.request_header("x-pw-resumed-by").as_deref(), Some("queue"));
    assert_eq!(h.shared("resume.last"), Some(format!("queue {ctx} OK")));
    assert_eq!(h.shared("resume.queue.count").as_deref(), Some("1"));
}

#[test]
fn queue_resumed_request_reports_to_the_client() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("queue-resume", &[]), true);
    h.deliver_queue_ready();
    h.respond(ctx, &stream, ORIGIN, true);
    assert_eq!(report(&stream, "x-pw-enqueue"), "OK");
    assert_eq!(report(&stream, "x-pw-resumed-by"), "queue");
}

// ------------------------------------------------------------------ ticks resuming requests

#[test]
fn tick_resume_resumes_the_request_on_the_next_tick() {
    let mut h = start(r#"{"tick_ms":100}"#);
    let (ctx, stream, v) = h.request(&req("tick-resume", &[]), true);
    assert_eq!(v, Verdict::Pause);
    h.vm.on_tick(h.root).unwrap();
    let d = stream.data();
    assert_eq!(d.resumed, [StreamType::HttpRequest]);
    assert_eq!(d.request_header("x-pw-resumed-by").as_deref(), Some("tick"));
    assert_eq!(h.shared("resume.last"), Some(format!("tick {ctx} OK")));
    h.respond(ctx, &stream, ORIGIN, true);
    assert_eq!(report(&stream, "x-pw-resumed-by"), "tick");
}

#[test]
fn tick_resume_without_ticks_does_not_pause() {
    let mut h = start("");
    let (_, stream) = exchange(&mut h, "tick-resume", &[]);
    assert_eq!(report(&stream, "x-pw-tick-resume"), "no-ticks");
}

// ------------------------------------------------------------------ deferred stream done

#[test]
fn defer_done_delays_on_log_and_on_delete_until_proxy_done() {
    let mut h = start(r#"{"tick_ms":100}"#);
    let (ctx, _stream) = exchange(&mut h, "defer-done", &[]);
    h.vm.finish_stream(ctx).unwrap();
    assert_eq!(h.shared("done.count").as_deref(), Some("1"));
    assert_eq!(h.shared("log.count"), None, "on_log must wait for proxy_done");
    h.vm.on_tick(h.root).unwrap();
    assert_eq!(h.shared("done.deferred").as_deref(), Some("OK"));
    assert_eq!(h.shared("log.count").as_deref(), Some("1"));
    assert_eq!(h.shared("delete.count").as_deref(), Some("1"));
}

#[test]
fn defer_done_without_ticks_finishes_at_once() {
    let mut h = start("");
    let (ctx, _stream) = exchange(&mut h, "defer-done", &[]);
    h.vm.finish_stream(ctx).unwrap();
    assert_eq!(h.shared("done.deferred").as_deref(), Some("no-ticks"));
    assert_eq!(h.shared("log.count").as_deref(), Some("1"));
    assert_eq!(h.shared("delete.count").as_deref(), Some("1"));
}

// ------------------------------------------------------------------ re-entrant continue

#[test]
fn continue_inside_request_headers_is_applied_after_the_callback_returns() {
    let mut h = start("");
    let (ctx, stream, v) = h.request(&req("resume-reentrant", &[]), true);
    assert_eq!(v, Verdict::Pause);
    assert_eq!(stream.data().resumed, [StreamType::HttpRequest]);
    h.respond(ctx, &stream, ORIGIN, true);
    assert_eq!(report(&stream, "x-pw-resume-reentrant"), "1");
}

#[test]
fn continue_inside_response_headers_is_applied_after_the_callback_returns() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("resume-response-reentrant", &[]), true);
    assert_eq!(h.respond(ctx, &stream, ORIGIN, true), Verdict::Pause);
    assert_eq!(stream.data().resumed, [StreamType::HttpResponse]);
    assert_eq!(report(&stream, "x-pw-resume-response-reentrant"), "1");
}

// ------------------------------------------------------------------ metrics

#[test]
fn metrics_case_reports_every_metric_operation() {
    let prefix = unique_vm_id("m").replace('-', "_");
    let mut h = start(&format!(r#"{{"metric_prefix":"{prefix}"}}"#));
    let (_, stream) = exchange(&mut h, "metrics", &[]);
    assert_eq!(report(&stream, "x-pw-metric-ops"), "OK OK OK OK");
    assert_eq!(report(&stream, "x-pw-metric-counter"), "1");
    assert_eq!(report(&stream, "x-pw-metric-gauge"), "41");
    assert_eq!(report(&stream, "x-pw-metric-redefine-same-id"), "true");
}

#[test]
fn negative_counter_increment_is_bad_argument() {
    let prefix = unique_vm_id("m").replace('-', "_");
    let mut h = start(&format!(r#"{{"metric_prefix":"{prefix}"}}"#));
    let (_, stream) = exchange(&mut h, "metrics", &[]);
    assert_eq!(report(&stream, "x-pw-metric-counter-negative"), "BAD_ARGUMENT");
}

#[test]
fn histogram_has_no_single_value_and_unknown_metric_is_not_found() {
    let prefix = unique_vm_id("m").replace('-', "_");
    let mut h = start(&format!(r#"{{"metric_prefix":"{prefix}"}}"#));
    let (_, stream) = exchange(&mut h, "metrics", &[]);
    assert_eq!(report(&stream, "x-pw-metric-histogram"), "BAD_ARGUMENT");
    assert_eq!(report(&stream, "x-pw-metric-unknown"), "NOT_FOUND");
}

#[test]
fn metric_values_are_visible_to_the_server() {
    let prefix = unique_vm_id("m").replace('-', "_");
    let mut h = start(&format!(r#"{{"metric_prefix":"{prefix}"}}"#));
    exchange(&mut h, "metrics", &[("x-pw-metric-value", "7")]);
    exchange(&mut h, "metrics", &[("x-pw-metric-value", "7")]);
    assert_eq!(metric(&format!("{prefix}.requests")).value, 2);
    assert_eq!(metric(&format!("{prefix}.gauge")).value, 6);
    let hist = metric(&format!("{prefix}.histogram"));
    assert_eq!((hist.count, hist.sum), (2, 14));
}

// ------------------------------------------------------------------ properties

fn properties_exchange(h: &mut Harness) -> TestStream {
    let (ctx, stream) = h.stream(&req("properties", &[("x-pw-prop", "pv"), ("x-pw-prop-value", "rt")]));
    {
        let mut d = stream.0.lock().unwrap();
        d.properties.insert("source.address".into(), b"10.1.2.3:5555".to_vec());
        d.properties.insert("source.port".into(), 5555u64.to_le_bytes().to_vec());
        d.properties.insert("response.code".into(), 200u64.to_le_bytes().to_vec());
    }
    assert_eq!(h.vm.on_request_headers(ctx, 7, true).unwrap(), Verdict::Continue);
    h.respond(ctx, &stream, ORIGIN, true);
    stream
}

#[test]
fn request_properties_come_from_the_stream() {
    let mut h = start("");
    let stream = properties_exchange(&mut h);
    assert_eq!(report(&stream, "x-pw-prop-request-path"), "/test?q=1");
    assert_eq!(report(&stream, "x-pw-prop-request-method"), "GET");
    assert_eq!(report(&stream, "x-pw-prop-header"), "pv");
    assert_eq!(report(&stream, "x-pw-prop-source-address"), "10.1.2.3:5555");
}

#[test]
fn integer_properties_are_8_byte_little_endian() {
    let mut h = start("");
    let stream = properties_exchange(&mut h);
    assert_eq!(report(&stream, "x-pw-prop-source-port"), "5555");
    assert_eq!(report(&stream, "x-pw-prop-response-code"), "200");
}

#[test]
fn plugin_identity_properties_are_answered_by_the_core() {
    let mut h = start("");
    let stream = properties_exchange(&mut h);
    assert_eq!(report(&stream, "x-pw-prop-plugin-name"), "test-plugin");
    assert_eq!(report(&stream, "x-pw-prop-plugin-vm-id"), h.plugin.vm_id);
    // The SDK reads an empty value (null pointer) as absent.
    assert_eq!(report(&stream, "x-pw-prop-plugin-root-id"), "(none)");
}

#[test]
fn unknown_property_is_not_found() {
    let mut h = start("");
    let stream = properties_exchange(&mut h);
    assert_eq!(report(&stream, "x-pw-prop-missing"), "(none)");
}

#[test]
fn property_path_with_a_trailing_nul_is_accepted() {
    let mut h = start("");
    let stream = properties_exchange(&mut h);
    assert_eq!(report(&stream, "x-pw-prop-request-path-nul"), "/test?q=1");
}

#[test]
fn set_property_round_trips_through_get_property() {
    let mut h = start("");
    let stream = properties_exchange(&mut h);
    assert_eq!(report(&stream, "x-pw-prop-roundtrip"), "rt");
}

#[test]
fn plugin_set_property_does_not_leak_into_another_stream() {
    let mut h = start("");
    properties_exchange(&mut h);
    let (ctx, stream) = h.stream(&req("properties", &[]));
    h.vm.on_request_headers(ctx, 5, true).unwrap();
    h.respond(ctx, &stream, ORIGIN, true);
    assert_eq!(report(&stream, "x-pw-prop-roundtrip"), "round-trip");
}

// ------------------------------------------------------------------ time, log, effective context

#[test]
fn current_time_is_nanoseconds_since_the_epoch() {
    let mut h = start("");
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let (_, stream) = exchange(&mut h, "time", &[]);
    let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let ns: u128 = report(&stream, "x-pw-time-ns").parse().unwrap();
    assert!(before <= ns && ns <= after, "{before} <= {ns} <= {after}");
    assert_eq!(report(&stream, "x-pw-time-sane"), "true");
}

#[test]
fn log_case_writes_one_line_per_level() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("log", &[]), true);
    let lines: Vec<LogLine> = h.server.logs().into_iter().filter(|l| l.message.starts_with("rust-sdk-filter log-test")).collect();
    let expected: Vec<LogLine> = [LogLevel::Trace, LogLevel::Debug, LogLevel::Info, LogLevel::Warn, LogLevel::Error, LogLevel::Critical]
        .into_iter()
        .map(|level| LogLine { plugin: "test-plugin".into(), level, message: format!("rust-sdk-filter log-test level={} context={ctx}", level.name()) })
        .collect();
    assert_eq!(lines, expected);
    h.respond(ctx, &stream, ORIGIN, true);
    assert_eq!(report(&stream, "x-pw-logged"), "6");
}

#[test]
fn set_effective_context_accepts_live_ids_and_refuses_unknown_ones() {
    let mut h = start("");
    let (_, stream) = exchange(&mut h, "effective-context", &[]);
    assert_eq!(report(&stream, "x-pw-effective-self"), "OK");
    assert_eq!(report(&stream, "x-pw-effective-bogus"), "BAD_ARGUMENT");
    assert_eq!(report(&stream, "x-pw-effective-restore"), "OK");
}

// ------------------------------------------------------------------ close

// ------------------------------------------------------------------ foreign functions

#[test]
fn foreign_function_echo_returns_its_argument() {
    let mut h = start("");
    let (_, stream) = exchange(&mut h, "foreign", &[]);
    assert_eq!(report(&stream, "x-pw-foreign-status"), "OK");
    assert_eq!(report(&stream, "x-pw-foreign-result"), "hello");
    assert_eq!(h.server.record.lock().unwrap().foreign_calls, [("echo".to_string(), b"hello".to_vec())]);
}

#[test]
fn foreign_function_name_and_arguments_come_from_request_headers() {
    let mut h = start("");
    let (_, stream) = exchange(&mut h, "foreign", &[("x-pw-foreign-name", "reverse"), ("x-pw-foreign-args", "abc")]);
    assert_eq!(report(&stream, "x-pw-foreign-result"), "cba");
}

#[test]
fn configured_foreign_function_is_the_default() {
    let mut h = start(r#"{"foreign_function":"reverse"}"#);
    let (_, stream) = exchange(&mut h, "foreign", &[]);
    assert_eq!(report(&stream, "x-pw-foreign-result"), "olleh");
}

#[test]
fn unknown_foreign_function_is_not_found() {
    let mut h = start("");
    let (_, stream) = exchange(&mut h, "foreign", &[("x-pw-foreign-name", "nope")]);
    assert_eq!(report(&stream, "x-pw-foreign-status"), "NOT_FOUND");
    assert_eq!(report(&stream, "x-pw-foreign-result"), "(none)");
}

// ------------------------------------------------------------------ gRPC

#[test]
fn grpc_hostcalls_answer_unimplemented() {
    let mut h = start("");
    let (_, stream) = exchange(&mut h, "grpc", &[]);
    for name in ["x-pw-grpc-call", "x-pw-grpc-stream", "x-pw-grpc-close-unknown", "x-pw-grpc-cancel-unknown", "x-pw-grpc-send-unknown"] {
        assert_eq!(report(&stream, name), "UNIMPLEMENTED", "{name}");
    }
    for name in ["x-pw-grpc-call-cancel", "x-pw-grpc-send", "x-pw-grpc-stream-cancel"] {
        assert_eq!(report(&stream, name), "skipped", "{name}");
    }
}

// ------------------------------------------------------------------ config case

#[test]
fn config_case_reports_the_parsed_configuration() {
    let config = r#"{"tag":"cfg-tag","upstream":"10.0.0.1:80","tick_ms":0,"queue":"cq"}"#;
    let mut opts = options();
    opts.vm_configuration = b"vm-cfg".to_vec();
    let mut h = Harness::try_start_code(built_code(PLUGIN), config, opts).unwrap();
    let (ctx, stream) = exchange(&mut h, "config", &[]);
    assert_eq!(report(&stream, "x-pw-config-tag"), "cfg-tag");
    assert_eq!(report(&stream, "x-pw-config-upstream"), "10.0.0.1:80");
    assert_eq!(report(&stream, "x-pw-config-authority"), "10.0.0.1:80");
    assert_eq!(report(&stream, "x-pw-config-tick-ms"), "0");
    assert_eq!(report(&stream, "x-pw-config-queue"), "cq");
    assert_eq!(report(&stream, "x-pw-config-size"), config.len().to_string());
    assert_eq!(report(&stream, "x-pw-vm-config"), "vm-cfg");
    assert_eq!(report(&stream, "x-pw-context-id"), ctx.to_string());
    assert_eq!(report(&stream, "x-pw-root-context-id"), h.root.to_string());
    assert_eq!(report(&stream, "x-pw-queue-id"), queue_id(&h, "cq").to_string());
}

// ------------------------------------------------------------------ faults

#[test]
fn panic_in_request_headers_is_a_trap() {
    let mut h = start("");
    let (_ctx, r) = panic_request(&mut h);
    match r {
        Err(VmError::Trap { plugin, callback, trap }) => {
            assert_eq!(plugin, "test-plugin");
            assert_eq!(callback, "proxy_on_request_headers");
            assert!(trap.message.ends_with("wasm `unreachable` instruction executed"), "{}", trap.message);
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn trap_message_names_the_wasm_trap_once() {
    let mut h = start("");
    let (_ctx, r) = panic_request(&mut h);
    let Err(VmError::Trap { trap, .. }) = r else { panic!("expected a trap") };
    assert_eq!(trap.message, "wasm trap: wasm `unreachable` instruction executed");
}

#[test]
fn sdk_panic_message_is_logged_at_critical() {
    let mut h = start("");
    let _ = panic_request(&mut h);
    assert!(
        h.server.logs().iter().any(|l| l.level == LogLevel::Critical
            && l.message.starts_with("panicked at")
            && l.message.contains("rust-sdk-filter: panic requested by x-pw-test")),
        "{:#?}",
        h.server.logs()
    );
}

#[test]
fn trap_is_logged_at_critical_with_a_wasm_backtrace() {
    let mut h = start("");
    let _ = panic_request(&mut h);
    let line = h
        .server
        .logs()
        .into_iter()
        .find(|l| l.message.starts_with("proxy_on_request_headers trapped: "))
        .expect("the trap is logged");
    assert_eq!(line.level, LogLevel::Critical);
    assert_eq!(line.plugin, "test-plugin");
    // Both runtimes name the frames from the module's name section.
    assert!(line.message.contains("on_http_request_headers"), "{}", line.message);
    assert!(line.message.contains("proxy_on_request_headers"), "{}", line.message);
    if RUNTIME == proxy_wasm_host::config::RuntimeKind::Wasmtime {
        assert!(line.message.contains("wasm backtrace:"), "{}", line.message);
        // The outermost frame is the export itself, or the wrapper wasm-ld
        // puts around each export of a WASI command module (SDK 0.1.3-0.1.4
        // filters export `_start`).
        let last = line.message.lines().last().unwrap();
        assert!(last.ends_with("!proxy_on_request_headers") || last.ends_with("!proxy_on_request_headers.command_export"), "{}", line.message);
    }
}

#[test]
fn vm_reports_failure_after_a_trap() {
    let mut h = start("");
    assert_eq!(h.vm.failure(), None);
    let _ = panic_request(&mut h);
    let failure = h.vm.failure().expect("failed").to_string();
    assert!(failure.starts_with("test-plugin: proxy_on_request_headers trapped: "), "{failure}");
}

#[test]
fn failed_vm_refuses_new_streams() {
    let mut h = start("");
    let _ = panic_request(&mut h);
    let r = h.vm.create_stream(h.root, Box::new(TestStream::with_request(&req("", &[]))));
    assert!(matches!(r, Err(VmError::Failed(_))), "{r:?}");
}

#[test]
fn finishing_a_stream_of_a_failed_vm_does_not_call_the_plugin() {
    let mut h = start("");
    let (ctx, _) = panic_request(&mut h);
    h.vm.finish_stream(ctx).unwrap();
    assert_eq!(h.shared("done.count"), None);
    assert_eq!(h.vm.context_count(), 1);
}

#[test]
fn allocation_below_the_memory_limit_succeeds() {
    let mut h = start("");
    let before = h.vm.memory_size();
    let (_, stream) = exchange(&mut h, "alloc", &[("x-pw-alloc-mb", "2")]);
    assert_eq!(report(&stream, "x-pw-alloc"), "2 MiB 512 pages");
    assert!(h.vm.memory_size() >= before + 2 * 1024 * 1024 - 65536, "{} -> {}", before, h.vm.memory_size());
}

#[test]
fn the_build_declares_its_abi_version() {
    assert_eq!(built_code(PLUGIN).abi.to_string(), BUILD.abi);
}

#[test]
fn body_callbacks_are_counted_and_see_end_of_stream_once() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("body-info", &[]), false);
    let (verdicts, body) = pass_request_body(&mut h, ctx, &["ab", "cde"]);
    assert_eq!(verdicts, [Verdict::Continue, Verdict::Continue]);
    assert_eq!(body, "abcde");
    h.respond(ctx, &stream, ORIGIN, true);
    assert_eq!(report(&stream, "x-pw-req-body-calls"), "2");
    assert_eq!(report(&stream, "x-pw-req-body-eos-calls"), "1");
    assert_eq!(report(&stream, "x-pw-req-body-last-size"), "3");
}
}
abi_0_2 {
// ------------------------------------------------------------------ end_of_stream of the header callbacks, proxy_get_log_level, proxy_close_stream (ABI 0.2)

#[test]
fn body_info_reports_end_of_stream_flags_and_body_calls() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("body-info", &[]), false);
    let (verdicts, body) = pass_request_body(&mut h, ctx, &["ab", "cde"]);
    assert_eq!(verdicts, [Verdict::Continue, Verdict::Continue]);
    assert_eq!(body, "abcde");
    h.respond(ctx, &stream, ORIGIN, true);
    assert_eq!(report(&stream, "x-pw-req-headers-eos"), "false");
    assert_eq!(report(&stream, "x-pw-resp-headers-eos"), "true");
    assert_eq!(report(&stream, "x-pw-req-body-calls"), "2");
    assert_eq!(report(&stream, "x-pw-req-body-eos-calls"), "1");
    assert_eq!(report(&stream, "x-pw-req-body-last-size"), "3");
}

#[test]
fn headers_end_of_stream_is_true_without_a_body() {
    let mut h = start("");
    let (_ctx, stream) = exchange(&mut h, "body-info", &[]);
    assert_eq!(report(&stream, "x-pw-req-headers-eos"), "true");
    assert_eq!(report(&stream, "x-pw-req-body-calls"), "0");
}

#[test]
fn resume_from_the_body_callback_releases_the_paused_headers() {
    let mut h = start("");
    let (ctx, stream, v) = h.request(&req("resume-in-body", &[]), false);
    assert_eq!(v, Verdict::Pause);
    let (verdicts, body) = pass_request_body(&mut h, ctx, &["hello ", "world"]);
    assert_eq!(verdicts, PAUSE_THEN_CONTINUE);
    assert_eq!(body, "hello world");
    assert_eq!(stream.data().resumed, [StreamType::HttpRequest]);
    h.respond(ctx, &stream, ORIGIN, true);
    assert_eq!(report(&stream, "x-pw-resume-in-body"), "11");
}

#[test]
fn resume_in_body_without_a_body_does_not_pause() {
    let mut h = start("");
    let (_, stream) = exchange(&mut h, "resume-in-body", &[]);
    assert_eq!(report(&stream, "x-pw-resume-in-body"), "no-body");
}

#[test]
fn get_log_level_reports_the_server_threshold() {
    let server = TestServer::new();
    *server.log_level.lock().unwrap() = LogLevel::Warn;
    let mut h = start_with_server("", server);
    let (_, stream) = exchange(&mut h, "log", &[]);
    assert_eq!(report(&stream, "x-pw-log-level"), "3");
    assert_eq!(report(&stream, "x-pw-log-level-name"), "warn");
}

#[test]
fn get_log_level_follows_a_threshold_change_at_run_time() {
    let mut h = start("");
    *h.server.log_level.lock().unwrap() = LogLevel::Critical;
    let (_, stream) = exchange(&mut h, "log", &[]);
    assert_eq!(report(&stream, "x-pw-log-level-name"), "critical");
}

#[test]
fn close_stream_in_request_headers_stops_the_chain() {
    let mut h = start("");
    let (_ctx, stream, v) = h.request(&req("close", &[]), true);
    assert_eq!(v, Verdict::Stop);
    assert_eq!(stream.data().closed, [StreamType::HttpRequest]);
    assert!(stream.data().local_response.is_none());
}

#[test]
fn closed_stream_still_runs_on_done_and_on_log() {
    let mut h = start("");
    let (ctx, _stream, _) = h.request(&req("close", &[]), true);
    h.vm.finish_stream(ctx).unwrap();
    assert_eq!(h.shared("done.count").as_deref(), Some("1"));
    assert_eq!(h.shared("log.last").as_deref(), Some("GET /test?q=1 (none)"));
}

#[test]
fn close_stream_in_response_headers_resets_the_response() {
    let mut h = start("");
    let (ctx, stream, _) = h.request(&req("close-response", &[]), true);
    assert_eq!(h.respond(ctx, &stream, ORIGIN, true), Verdict::Stop);
    assert_eq!(stream.data().closed, [StreamType::HttpResponse]);
}
}
}
}
