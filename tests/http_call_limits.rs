//! The core's caps on `proxy_http_call` (`vm_config.limits`, issue 11
//! "Bounded resources per plugin"), with the real Rust-SDK filter and the
//! in-memory server: `max_pending_http_calls` and a server's own cap on calls
//! in flight answer INTERNAL_FAILURE (the SDK returns it as an error, the
//! plugin goes on), `max_http_call_response_size` turns a larger answer into
//! a failure; each is logged once per plugin. The servers' end-to-end tests
//! are in tests/conformance_http_calls.rs.

mod common;
common::for_each_runtime! {
use common::*;

use std::sync::Arc;
use std::time::Duration;

use proxy_wasm_host::abi::{LogLevel, Status};
use proxy_wasm_host::config::Quotas;
use proxy_wasm_host::host::{HttpCallRequest, HttpCallResponse, PluginRef, ServerHost};
use proxy_wasm_host::plugin::PluginInfo;
use proxy_wasm_host::vm::{Vm, VmOptions};

const PLUGIN: &str = "rust_sdk_filter.wasm";
const ORIGIN: &[(&str, &str)] = &[(":status", "200")];

fn quotas(pending: u32, response: u64) -> Quotas {
    Quotas { max_pending_http_calls: pending, max_http_call_response_size: response, ..Quotas::default() }
}

fn start(quotas: Quotas) -> Harness {
    let vm_id = unique_vm_id("call-limits");
    let plugin = PluginInfo::new("capped", "", vm_id.clone(), "").with_quotas(quotas);
    Harness::try_start_plugin(built_code(PLUGIN), plugin, VmOptions::new(vm_id), TestServer::new()).unwrap_or_else(|e| panic!("start failed: {e}"))
}

fn call_request() -> Vec<(&'static str, &'static str)> {
    vec![(":method", "GET"), (":path", "/"), (":authority", "example.com"), (":scheme", "http"), ("x-pw-test", "http-call")]
}

/// Sends a request whose plugin makes one call; returns its context, its
/// stream and whether the call was dispatched (the request then waits).
fn request_with_call(h: &mut Harness) -> (u32, TestStream, bool) {
    let (ctx, stream, verdict) = h.request(&call_request(), true);
    (ctx, stream, verdict == proxy_wasm_host::vm::Verdict::Pause)
}

/// What the filter reported to the client, after the response headers.
fn report(h: &mut Harness, ctx: u32, stream: &TestStream, name: &str) -> Option<String> {
    h.respond(ctx, stream, ORIGIN, true);
    stream.data().response_header(name)
}

fn count_logged(server: &TestServer, needle: &str) -> usize {
    server.messages().iter().filter(|m| m.contains(needle)).count()
}

#[test]
fn calls_past_max_pending_http_calls_get_internal_failure_and_one_log_line() {
    let mut h = start(quotas(2, Quotas::DEFAULT_MAX_HTTP_CALL_RESPONSE_SIZE));
    let (_, _, first) = request_with_call(&mut h);
    let (_, _, second) = request_with_call(&mut h);
    assert!(first && second);
    for _ in 0..3 {
        let (ctx, stream, dispatched) = request_with_call(&mut h);
        assert!(!dispatched, "the plugin goes on without its call");
        assert_eq!(report(&mut h, ctx, &stream, "x-pw-callout-dispatch").as_deref(), Some("INTERNAL_FAILURE"));
    }
    assert_eq!(h.vm.failure(), None, "the refusal did not trap the plugin");
    assert_eq!(h.server.take_http_calls().len(), 2);
    assert_eq!(count_logged(&h.server, "max_pending_http_calls"), 1, "{:?}", h.server.messages());
    assert!(h.server.logged("2 calls of this plugin are waiting"), "{:?}", h.server.messages());
}

#[test]
fn an_answered_call_makes_room_for_another_under_max_pending_http_calls() {
    let mut h = start(quotas(1, Quotas::DEFAULT_MAX_HTTP_CALL_RESPONSE_SIZE));
    assert!(request_with_call(&mut h).2);
    assert!(!request_with_call(&mut h).2);
    let (_, token, _) = h.server.take_http_calls().remove(0);
    let answer = HttpCallResponse { headers: pairs(&[(":status", "200")]), body: b"ok".to_vec(), ..Default::default() };
    h.vm.on_http_call_response(token, answer).unwrap();
    assert!(request_with_call(&mut h).2, "room again once the call was answered");
}

#[test]
fn the_request_carries_max_http_call_response_size_to_the_server() {
    let mut h = start(quotas(10, 12345));
    request_with_call(&mut h);
    let (_, _, request) = h.server.take_http_calls().remove(0);
    assert_eq!(request.max_response_size, 12345);
}

#[test]
fn an_answer_larger_than_max_http_call_response_size_is_delivered_as_a_failure() {
    // A server that does not enforce the cap itself (a C server, say): the
    // core does, at delivery.
    let mut h = start(quotas(10, 1024));
    for _ in 0..2 {
        let (ctx, stream, dispatched) = request_with_call(&mut h);
        assert!(dispatched);
        let (_, token, _) = h.server.take_http_calls().remove(0);
        let answer = HttpCallResponse { headers: pairs(&[(":status", "200")]), body: vec![b'x'; 2048], ..Default::default() };
        h.vm.on_http_call_response(token, answer).unwrap();
        assert_eq!(report(&mut h, ctx, &stream, "x-pw-callout-failed").as_deref(), Some("1"));
        let data = stream.data();
        assert_eq!(data.response_header("x-pw-callout-get-status").as_deref(), Some("413"));
        let message = data.response_header("x-pw-callout-get-status-message").unwrap_or_default();
        assert!(message.contains("max_http_call_response_size (1024 bytes)"), "{message}");
    }
    assert_eq!(count_logged(&h.server, "max_http_call_response_size"), 1, "{:?}", h.server.messages());
}

#[test]
fn a_too_large_failure_from_the_server_is_reported_with_the_cap() {
    let mut h = start(quotas(10, 4096));
    let (ctx, stream, _) = request_with_call(&mut h);
    let (_, token, _) = h.server.take_http_calls().remove(0);
    let failed = HttpCallResponse::failed(proxy_wasm_host::http_client::FAILURE_TOO_LARGE, "response too large");
    h.vm.on_http_call_response(token, failed).unwrap();
    assert_eq!(report(&mut h, ctx, &stream, "x-pw-callout-get-status").as_deref(), Some("413"));
    assert!(stream.data().response_header("x-pw-callout-get-status-message").unwrap_or_default().contains("max_http_call_response_size (4096 bytes)"));
    assert!(h.server.logged("max_http_call_response_size"));
}

/// A server whose own cap on calls in flight is reached.
struct FullServer(Arc<TestServer>);

impl ServerHost for FullServer {
    fn log(&self, plugin: &PluginRef, level: LogLevel, message: &str) {
        self.0.log(plugin, level, message)
    }
    fn log_level(&self) -> LogLevel {
        self.0.log_level()
    }
    fn dispatch_http_call(&self, root: u32, token: u32, request: HttpCallRequest) -> Result<(), Status> {
        self.0.dispatch_http_call(root, token, request)
    }
    fn set_tick_period(&self, root: u32, period: Option<Duration>) {
        self.0.set_tick_period(root, period)
    }
    fn notify_queue_ready(&self, root: u32, queue: u32) {
        self.0.notify_queue_ready(root, queue)
    }
    fn http_calls_full(&self) -> Option<String> {
        Some("7 calls are in flight in this worker".into())
    }
}

#[test]
fn a_server_with_no_room_for_calls_gets_internal_failure_logged_once_per_plugin() {
    let recorder = TestServer::new();
    let vm_id = unique_vm_id("call-limits-full");
    let mut vm = Vm::new(built_code(PLUGIN), VmOptions::new(vm_id.clone()), Arc::new(FullServer(recorder.clone()))).unwrap();
    let root = vm.start_plugin(Arc::new(PluginInfo::new("crowded", "", vm_id, ""))).unwrap();
    for _ in 0..3 {
        let stream = TestStream::with_request(&call_request());
        let ctx = vm.create_stream(root, Box::new(stream.clone())).unwrap();
        vm.on_request_headers(ctx, call_request().len(), true).unwrap();
        stream.set_response(ORIGIN);
        vm.on_response_headers(ctx, 1, true).unwrap();
        assert_eq!(stream.data().response_header("x-pw-callout-dispatch").as_deref(), Some("INTERNAL_FAILURE"));
    }
    assert!(recorder.take_http_calls().is_empty());
    assert_eq!(count_logged(&recorder, "7 calls are in flight in this worker"), 1, "{:?}", recorder.messages());
}
}
