//! `max_body_size` enforced by the core, driven in memory with the Rust-SDK
//! filter: the body bytes held for a plugin that pauses are bounded; a
//! request over the bound gets 413 and is not sent on, a response is replaced
//! by a 500 or, once its header went out, closed.

mod common;
common::for_each_runtime! {
use common::*;

use proxy_wasm_host::abi::StreamType;
use proxy_wasm_host::plugin::PluginInfo;
use proxy_wasm_host::vm::{Verdict, VmOptions};

const PLUGIN: &str = "rust_sdk_filter.wasm";

fn start(max_body_size: u64) -> Harness {
    let options = VmOptions::new(unique_vm_id("bodies"));
    let plugin = PluginInfo::new("bodies", "", options.vm_id.clone(), Vec::new()).with_max_body_size(max_body_size);
    Harness::try_start_plugin(built_code(PLUGIN), plugin, options, TestServer::new()).unwrap()
}

fn request(h: &mut Harness, case: &str) -> (u32, TestStream) {
    let headers = [(":method", "POST"), (":path", "/"), (":authority", "x"), ("x-pw-test", case)];
    let (ctx, stream, v) = h.request(&headers, false);
    assert_eq!(v, Verdict::Continue);
    (ctx, stream)
}

#[test]
fn a_paused_request_body_over_max_body_size_gets_413_and_nothing_is_sent_on() {
    let mut h = start(16);
    let (ctx, stream) = request(&mut h, "req-body-upper");
    assert_eq!(h.vm.on_request_body(ctx, b"0123456789", false).unwrap(), Verdict::Pause);
    // 10 held + 10 more would be 20 > 16.
    assert_eq!(h.vm.on_request_body(ctx, b"abcdefghij", false).unwrap(), Verdict::Stop);
    let local = stream.data().local_response.expect("a local response");
    assert_eq!((local.status, local.body.as_slice(), local.details.as_str()), (413, &b"Payload Too Large"[..], "request_payload_too_large"));
    assert!(h.vm.take_body(ctx, StreamType::HttpRequest).unwrap().is_empty(), "nothing is left to send on");
    assert!(h.server.logged("the request body held for the plugin would reach 20 bytes, over its max_body_size (16 bytes): the request gets 413 and is not sent on"), "{:?}", h.server.messages());
    assert_eq!(h.server.logs().iter().find(|l| l.message.contains("max_body_size")).unwrap().plugin, "bodies");
}

#[test]
fn a_first_chunk_over_max_body_size_that_the_plugin_pauses_on_gets_413() {
    let mut h = start(16);
    let (ctx, stream) = request(&mut h, "req-body-upper");
    assert_eq!(h.vm.on_request_body(ctx, &[b'x'; 20], false).unwrap(), Verdict::Stop);
    assert_eq!(stream.data().local_response.map(|l| l.status), Some(413));
}

#[test]
fn a_body_under_max_body_size_is_unaffected() {
    let mut h = start(16);
    let (ctx, stream) = request(&mut h, "req-body-upper");
    assert_eq!(h.vm.on_request_body(ctx, b"01234567", false).unwrap(), Verdict::Pause);
    assert_eq!(h.vm.on_request_body(ctx, b"abcdefgh", true).unwrap(), Verdict::Continue);
    assert_eq!(h.vm.take_body(ctx, StreamType::HttpRequest).unwrap(), b"01234567ABCDEFGH");
    assert!(stream.data().local_response.is_none());
}

#[test]
fn chunks_a_plugin_lets_through_are_not_held_and_not_limited() {
    let mut h = start(16);
    let (ctx, stream) = request(&mut h, "headers");
    for _ in 0..5 {
        assert_eq!(h.vm.on_request_body(ctx, &[b'x'; 64], false).unwrap(), Verdict::Continue);
        assert_eq!(h.vm.take_body(ctx, StreamType::HttpRequest).unwrap().len(), 64);
    }
    assert!(stream.data().local_response.is_none());
}

#[test]
fn a_paused_response_body_over_max_body_size_is_closed_once_its_header_went_out() {
    let mut h = start(16);
    let (ctx, stream) = request(&mut h, "resp-body-upper");
    h.vm.on_request_body(ctx, b"", true).unwrap();
    h.respond(ctx, &stream, &[(":status", "200")], false);
    stream.0.lock().unwrap().response_started = true;
    assert_eq!(h.vm.on_response_body(ctx, b"0123456789", false).unwrap(), Verdict::Pause);
    assert_eq!(h.vm.on_response_body(ctx, b"abcdefghij", false).unwrap(), Verdict::Stop);
    assert_eq!(stream.data().closed, [StreamType::HttpResponse]);
    assert!(h.server.logged("the response body held for the plugin would reach 20 bytes, over its max_body_size (16 bytes): the response is cut off (its header went out already)"), "{:?}", h.server.messages());
}

#[test]
fn a_paused_response_body_over_max_body_size_is_replaced_by_500_while_its_header_is_not_sent() {
    let mut h = start(16);
    let (ctx, stream) = request(&mut h, "resp-body-upper");
    h.vm.on_request_body(ctx, b"", true).unwrap();
    h.respond(ctx, &stream, &[(":status", "200")], false);
    assert_eq!(h.vm.on_response_body(ctx, &[b'x'; 20], false).unwrap(), Verdict::Stop);
    let local = stream.data().local_response.expect("a local response");
    assert_eq!((local.status, local.details.as_str()), (500, "response_payload_too_large"));
    assert!(stream.data().closed.is_empty());
}
}
