//! Hostcall behaviour pinned against the reference host (proxy-wasm-cpp-host
//! and Envoy, its embedder): one test per row of `docs/compatibility.md`.
//! Each test generates a probe module (tests/common/probe.rs) that calls one
//! hostcall from one callback and logs the status and what was written to
//! its return slots; `unset` means the host did not write that slot.

mod common;
#[path = "common/probe.rs"]
mod probe;

common::for_each_runtime! {
use common::*;
use crate::probe::*;
use crate::probe::A::*;
use crate::probe::R::*;

use proxy_wasm_host::abi::pairs::encode;
use proxy_wasm_host::abi::LogLevel;
use proxy_wasm_host::authorizations::Authorizations;
use proxy_wasm_host::host::HttpCallResponse;
use proxy_wasm_host::plugin::PluginInfo;
use proxy_wasm_host::vm::VmOptions;

// Buffer and map types (proxy_buffer_type_t, proxy_map_type_t).
const REQUEST_BODY: u32 = 0;
const DOWNSTREAM_DATA: u32 = 2;
const HTTP_CALL_BODY: u32 = 4;
const VM_CONFIG: u32 = 6;
const PLUGIN_CONFIG: u32 = 7;
const CALL_DATA: u32 = 8;
const REQUEST_HEADERS: u32 = 0;
const REQUEST_TRAILERS: u32 = 1;
const UNSET: u32 = u32::MAX;

fn options() -> VmOptions {
    VmOptions::new(unique_vm_id("compat"))
}

fn start(p: &Probe, config: &str) -> Harness {
    Harness::start_with_on(RUNTIME, &p.bytes(), config, options())
}

fn start_with(p: &Probe, config: &str, opts: VmOptions) -> Harness {
    Harness::start_with_on(RUNTIME, &p.bytes(), config, opts)
}

/// The probe lines logged so far; clears the log.
fn take(h: &Harness) -> Vec<String> {
    let lines = probe_lines(&h.server.messages());
    h.server.clear_logs();
    lines
}

const GET: &[(&str, &str)] = &[(":method", "GET"), (":path", "/p"), (":authority", "example.com"), (":scheme", "http")];

fn request(h: &mut Harness, extra: &[(&str, &str)]) -> (u32, TestStream) {
    let mut headers = GET.to_vec();
    headers.extend_from_slice(extra);
    let (ctx, stream, _) = h.request(&headers, true);
    (ctx, stream)
}

fn tick(h: &mut Harness) {
    h.vm.on_tick(h.root).expect("on_tick");
}

/// `proxy_get_buffer_bytes(buffer, start, max, &s0, &s1)`, reporting both slots and the bytes.
fn get_bytes(label: &str, buffer: u32, start: u32, max: u32) -> Step {
    call(label, "proxy_get_buffer_bytes", vec![I(buffer), I(start), I(max), Slot(0), Slot(1)], vec![Ptr(0), U32(1), Data(0, 1)])
}

fn set_bytes(label: &str, buffer: u32, start: u32, size: u32, data: &str) -> Step {
    call(label, "proxy_set_buffer_bytes", vec![I(buffer), I(start), I(size), s(data)], vec![])
}

fn header(label: &str, map: u32, key: &str) -> Step {
    call(label, "proxy_get_header_map_value", vec![I(map), s(key), Slot(0), Slot(1)], vec![Ptr(0), U32(1), Data(0, 1)])
}

fn call_headers(path: bool) -> Vec<u8> {
    let mut h = vec![(":method", "GET"), (":authority", "upstream"), ("x-a", "1")];
    if path {
        h.push((":path", "/call"));
    }
    encode(&h)
}

fn http_call(label: &str, headers: Vec<u8>, timeout: u32) -> Step {
    call(label, "proxy_http_call", vec![s("upstream"), A::S(headers), s(""), s(""), I(timeout), Slot(0)], vec![Ptr(0)])
}

/// Starts `p`, makes it dispatch a call from on_configure and delivers `response`.
fn call_and_answer(p: Probe, response: HttpCallResponse) -> Harness {
    let mut h = start(&p.on("configure", vec![http_call("dispatch", call_headers(true), 1000)]), "");
    let calls = h.server.take_http_calls();
    assert_eq!(calls.len(), 1, "{:?}", h.server.messages());
    h.server.clear_logs();
    h.vm.on_http_call_response(calls[0].1, response).expect("on_http_call_response");
    h
}

fn unique(prefix: &str) -> String {
    unique_vm_id(prefix)
}

// ================================================================== buffers

#[test]
fn an_empty_plugin_configuration_reads_as_ok_with_null_pointer_and_zero_size_written() {
    let h = start(&probe().on("configure", vec![get_bytes("cfg", PLUGIN_CONFIG, 0, 0)]), "");
    assert_eq!(take(&h), ["cfg status=0 s0=0 s1=0 data="]);
}

/// The call @solo-io/proxy-runtime 0.1.8's `RootContext.onConfigure` makes:
/// it passes the configuration size as the size pointer, so with an empty
/// configuration the size slot is null. Nothing is written then (cpp-host
/// before its PR #303): writing a null pointer into the SDK's result slot,
/// whose size field keeps its previous read, makes the SDK trap.
#[test]
fn a_zero_length_read_with_a_null_size_slot_writes_nothing() {
    let p = probe().on("configure", vec![call("cfg", "proxy_get_buffer_bytes", vec![I(PLUGIN_CONFIG), I(0), I(0), Slot(0), I(0)], vec![Ptr(0), Mem(0)])]);
    let h = start(&p, "");
    assert_eq!(take(&h), ["cfg status=0 s0=unset m0=1"]);
}

#[test]
fn the_plugin_configuration_reads_in_on_configure() {
    let h = start(&probe().on("configure", vec![get_bytes("cfg", PLUGIN_CONFIG, 0, u32::MAX)]), "abc");
    assert_eq!(take(&h), ["cfg status=0 s0=nz s1=3 data=abc"]);
}

#[test]
fn the_plugin_configuration_is_not_found_outside_the_configuration_callbacks() {
    let mut h = start(&probe().on("request_headers", vec![get_bytes("cfg", PLUGIN_CONFIG, 0, 10)]), "abc");
    request(&mut h, &[]);
    assert_eq!(take(&h), ["cfg status=1 s0=unset s1=unset data="]);
}

#[test]
fn the_plugin_configuration_reads_in_the_root_context_create() {
    let h = start(&probe().on("create_root", vec![get_bytes("cfg", PLUGIN_CONFIG, 0, 100)]), "abc");
    assert_eq!(take(&h), ["cfg status=0 s0=nz s1=3 data=abc"]);
}

#[test]
fn the_vm_configuration_reads_in_every_callback() {
    let mut opts = options();
    opts.vm_configuration = b"vmc".to_vec();
    let p = probe().on("configure", vec![get_bytes("configure", VM_CONFIG, 0, 100)]).on("request_headers", vec![get_bytes("request", VM_CONFIG, 0, 100)]);
    let mut h = start_with(&p, "", opts);
    request(&mut h, &[]);
    assert_eq!(take(&h), ["configure status=0 s0=nz s1=3 data=vmc", "request status=0 s0=nz s1=3 data=vmc"]);
}

#[test]
fn a_start_past_the_end_of_a_buffer_reads_as_ok_and_empty() {
    let h = start(&probe().on("configure", vec![get_bytes("cfg", PLUGIN_CONFIG, 5, 10)]), "abc");
    assert_eq!(take(&h), ["cfg status=0 s0=0 s1=0 data="]);
}

#[test]
fn start_plus_max_size_is_clamped_to_the_buffer_without_wrapping() {
    let h = start(&probe().on("configure", vec![get_bytes("cfg", PLUGIN_CONFIG, 1, u32::MAX)]), "abc");
    assert_eq!(take(&h), ["cfg status=0 s0=nz s1=2 data=bc"]);
}

#[test]
fn a_body_buffer_from_a_root_context_is_not_found() {
    let mut h = start(&probe().on("tick", vec![get_bytes("body", REQUEST_BODY, 0, 10)]), "");
    tick(&mut h);
    assert_eq!(take(&h), ["body status=1 s0=unset s1=unset data="]);
}

#[test]
fn tcp_buffers_in_an_http_stream_are_not_found() {
    let mut h = start(&probe().on("request_headers", vec![get_bytes("down", DOWNSTREAM_DATA, 0, 10)]), "");
    request(&mut h, &[]);
    assert_eq!(take(&h), ["down status=1 s0=unset s1=unset data="]);
}

#[test]
fn buffer_status_reports_the_size_and_always_zero_flags() {
    let p = probe().on("request_body", vec![call("status", "proxy_get_buffer_status", vec![I(REQUEST_BODY), Slot(0), Slot(1)], vec![U32(0), U32(1)])]);
    let mut h = start(&p, "");
    let (ctx, _stream) = h.stream(GET);
    h.vm.on_request_headers(ctx, GET.len(), false).unwrap();
    h.vm.on_request_body(ctx, b"hello", true).unwrap();
    assert_eq!(take(&h), ["status status=0 s0=5 s1=0"]);
}

#[test]
fn buffer_status_of_the_plugin_configuration_is_its_size() {
    let p = probe().on("configure", vec![call("status", "proxy_get_buffer_status", vec![I(PLUGIN_CONFIG), Slot(0), Slot(1)], vec![U32(0), U32(1)])]);
    let h = start(&p, "abcd");
    assert_eq!(take(&h), ["status status=0 s0=4 s1=0"]);
}

#[test]
fn configuration_buffers_are_read_only() {
    let p = probe()
        .on("configure", vec![set_bytes("plugin", PLUGIN_CONFIG, 0, 0, "x"), set_bytes("vm", VM_CONFIG, 0, 0, "x")])
        .on("request_headers", vec![set_bytes("plugin_later", PLUGIN_CONFIG, 0, 0, "x"), set_bytes("vm_later", VM_CONFIG, 0, 0, "x")]);
    let mut h = start(&p, "abc");
    request(&mut h, &[]);
    assert_eq!(take(&h), ["plugin status=2", "vm status=2", "plugin_later status=1", "vm_later status=2"]);
}

#[test]
fn the_http_call_response_body_is_read_only() {
    let p = probe().on("http_call_response", vec![set_bytes("set", HTTP_CALL_BODY, 0, 0, "x"), get_bytes("get", HTTP_CALL_BODY, 0, 100)]);
    let h = call_and_answer(p, HttpCallResponse { body: b"body".to_vec(), ..Default::default() });
    assert_eq!(take(&h), ["set status=2", "get status=0 s0=nz s1=4 data=body"]);
}

#[test]
fn an_empty_http_call_response_body_reads_as_ok_with_null_pointer_and_zero_size() {
    let p = probe().on("http_call_response", vec![get_bytes("get", HTTP_CALL_BODY, 0, 100)]);
    let h = call_and_answer(p, HttpCallResponse::default());
    assert_eq!(take(&h), ["get status=0 s0=0 s1=0 data="]);
}

#[test]
fn a_body_edit_may_insert_in_the_middle() {
    let p = probe().on("request_body", vec![set_bytes("insert", REQUEST_BODY, 1, 0, "XY"), get_bytes("get", REQUEST_BODY, 0, 100)]);
    let mut h = start(&p, "");
    let (ctx, _stream) = h.stream(GET);
    h.vm.on_request_headers(ctx, GET.len(), false).unwrap();
    h.vm.on_request_body(ctx, b"hello", true).unwrap();
    assert_eq!(take(&h), ["insert status=0", "get status=0 s0=nz s1=7 data=hXYello"]);
}

#[test]
fn the_foreign_function_argument_reads_as_call_data() {
    let mut h = start(&probe().on("foreign_function", vec![get_bytes("arg", CALL_DATA, 0, 100)]), "");
    h.vm.on_foreign_function(h.root, 7, b"arg".to_vec()).unwrap();
    assert_eq!(take(&h), ["arg status=0 s0=nz s1=3 data=arg"]);
}

#[test]
fn abi_0_1_0_get_configuration_is_the_plugin_configuration_while_configuring_and_the_vm_configuration_otherwise() {
    let get = |label| call(label, "proxy_get_configuration", vec![Slot(0), Slot(1)], vec![Ptr(0), U32(1), Data(0, 1)]);
    let p = probe().abi("0_1_0").on("configure", vec![get("configure")]).on("request_headers", vec![get("request")]);
    let mut opts = options();
    opts.vm_configuration = b"vmc".to_vec();
    let mut h = start_with(&p, "plugin", opts);
    request(&mut h, &[]);
    assert_eq!(take(&h), ["configure status=0 s0=nz s1=6 data=plugin", "request status=0 s0=nz s1=3 data=vmc"]);
}

#[test]
fn abi_0_1_0_an_empty_configuration_is_ok_with_null_pointer_and_zero_size() {
    let p = probe().abi("0_1_0").on("configure", vec![call("cfg", "proxy_get_configuration", vec![Slot(0), Slot(1)], vec![Ptr(0), U32(1)])]);
    let h = start(&p, "");
    assert_eq!(take(&h), ["cfg status=0 s0=0 s1=0"]);
}

// ================================================================== header maps

#[test]
fn a_missing_header_is_not_found_and_nothing_is_written() {
    let mut h = start(&probe().on("request_headers", vec![header("get", REQUEST_HEADERS, "x-missing")]), "");
    request(&mut h, &[]);
    assert_eq!(take(&h), ["get status=1 s0=unset s1=unset data="]);
}

#[test]
fn abi_0_1_0_a_missing_header_is_ok_with_null_pointer_and_zero_size() {
    let mut h = start(&probe().abi("0_1_0").on("request_headers", vec![header("get", REQUEST_HEADERS, "x-missing")]), "");
    request(&mut h, &[]);
    assert_eq!(take(&h), ["get status=0 s0=0 s1=0 data="]);
}

#[test]
fn an_empty_header_value_is_ok_with_null_pointer_and_zero_size() {
    let mut h = start(&probe().on("request_headers", vec![header("get", REQUEST_HEADERS, "x-empty")]), "");
    request(&mut h, &[("x-empty", "")]);
    assert_eq!(take(&h), ["get status=0 s0=0 s1=0 data="]);
}

#[test]
fn repeated_header_values_read_joined_with_commas() {
    let mut h = start(&probe().on("request_headers", vec![header("get", REQUEST_HEADERS, "X-A")]), "");
    request(&mut h, &[("x-a", "1"), ("x-a", "2")]);
    assert_eq!(take(&h), ["get status=0 s0=nz s1=3 data=1,2"]);
}

#[test]
fn a_header_of_a_map_absent_here_is_not_found() {
    let mut h = start(&probe().on("tick", vec![header("get", REQUEST_HEADERS, ":path")]), "");
    tick(&mut h);
    assert_eq!(take(&h), ["get status=1 s0=unset s1=unset data="]);
}

#[test]
fn an_empty_map_reads_as_ok_with_null_pointer_and_zero_size() {
    let p = probe().on("request_headers", vec![call("pairs", "proxy_get_header_map_pairs", vec![I(REQUEST_TRAILERS), Slot(0), Slot(1)], vec![Ptr(0), U32(1)])]);
    let mut h = start(&p, "");
    request(&mut h, &[]);
    assert_eq!(take(&h), ["pairs status=0 s0=0 s1=0"]);
}

#[test]
fn a_map_absent_here_reads_as_empty_pairs() {
    let p = probe().on("tick", vec![call("pairs", "proxy_get_header_map_pairs", vec![I(REQUEST_HEADERS), Slot(0), Slot(1)], vec![Ptr(0), U32(1)])]);
    let mut h = start(&p, "");
    tick(&mut h);
    assert_eq!(take(&h), ["pairs status=0 s0=0 s1=0"]);
}

#[test]
fn the_header_map_size_is_the_size_of_the_serialized_pairs() {
    let p = probe().on("request_headers", vec![call("size", "proxy_get_header_map_size", vec![I(REQUEST_HEADERS), Slot(0)], vec![U32(0)])]);
    let mut h = start(&p, "");
    let (ctx, _s) = h.stream(&[("ab", "c")]);
    h.vm.on_request_headers(ctx, 1, true).unwrap();
    // u32 count + (u32, u32) sizes + "ab\0" + "c\0"
    assert_eq!(take(&h), [format!("size status=0 s0={}", 4 + 8 + 3 + 2)]);
}

#[test]
fn the_size_of_a_map_absent_here_is_zero() {
    let p = probe().on("tick", vec![call("size", "proxy_get_header_map_size", vec![I(REQUEST_HEADERS), Slot(0)], vec![U32(0)])]);
    let mut h = start(&p, "");
    tick(&mut h);
    assert_eq!(take(&h), ["size status=0 s0=0"]);
}

#[test]
fn writing_a_map_absent_here_is_bad_argument() {
    let p = probe().on(
        "tick",
        vec![
            call("add", "proxy_add_header_map_value", vec![I(REQUEST_HEADERS), s("k"), s("v")], vec![]),
            call("replace", "proxy_replace_header_map_value", vec![I(REQUEST_HEADERS), s("k"), s("v")], vec![]),
            call("remove", "proxy_remove_header_map_value", vec![I(REQUEST_HEADERS), s("k")], vec![]),
            call("set", "proxy_set_header_map_pairs", vec![I(REQUEST_HEADERS), A::S(encode(&[("k", "v")]))], vec![]),
        ],
    );
    let mut h = start(&p, "");
    tick(&mut h);
    assert_eq!(take(&h), ["add status=2", "replace status=2", "remove status=2", "set status=2"]);
}

#[test]
fn removing_a_missing_header_is_ok() {
    let p = probe().on("request_headers", vec![call("remove", "proxy_remove_header_map_value", vec![I(REQUEST_HEADERS), s("x-missing")], vec![])]);
    let mut h = start(&p, "");
    request(&mut h, &[]);
    assert_eq!(take(&h), ["remove status=0"]);
}

#[test]
fn malformed_pairs_are_bad_argument_and_leave_the_map_unchanged() {
    let p = probe().on("request_headers", vec![call("set", "proxy_set_header_map_pairs", vec![I(REQUEST_HEADERS), s([1u8])], vec![])]);
    let mut h = start(&p, "");
    let (_ctx, stream) = request(&mut h, &[]);
    assert_eq!(take(&h), ["set status=2"]);
    assert_eq!(stream.data().request_header(":path").as_deref(), Some("/p"));
}

#[test]
fn more_than_1024_pairs_are_bad_argument() {
    let many = |n: usize| {
        let keys: Vec<(String, String)> = (0..n).map(|i| (format!("k{i}"), String::new())).collect();
        encode(&keys)
    };
    let p = probe().on(
        "request_headers",
        vec![
            call("set_1025", "proxy_set_header_map_pairs", vec![I(REQUEST_HEADERS), A::S(many(1025))], vec![]),
            call("set_1024", "proxy_set_header_map_pairs", vec![I(REQUEST_HEADERS), A::S(many(1024))], vec![]),
        ],
    );
    let mut h = start(&p, "");
    let (_ctx, stream) = request(&mut h, &[]);
    assert_eq!(take(&h), ["set_1025 status=2", "set_1024 status=0"]);
    assert_eq!(stream.data().request_headers.len(), 1024);
}

// ================================================================== properties

fn property(label: &str, path: &[u8]) -> Step {
    call(label, "proxy_get_property", vec![s(path), Slot(0), Slot(1)], vec![Ptr(0), U32(1), Data(0, 1)])
}

#[test]
fn a_missing_property_is_not_found_and_nothing_is_written() {
    let mut h = start(&probe().on("request_headers", vec![property("get", b"no\0such")]), "");
    request(&mut h, &[]);
    assert_eq!(take(&h), ["get status=1 s0=unset s1=unset data="]);
}

#[test]
fn an_empty_property_value_is_ok_with_null_pointer_and_zero_size() {
    let p = probe().on("request_headers", vec![call("set", "proxy_set_property", vec![s("my\0prop"), s("")], vec![]), property("get", b"my\0prop")]);
    let mut h = start(&p, "");
    request(&mut h, &[]);
    assert_eq!(take(&h), ["set status=0", "get status=0 s0=0 s1=0 data="]);
}

#[test]
fn the_plugin_identity_properties_read_everywhere() {
    let p = probe().on("tick", vec![property("name", b"plugin_name"), property("root_id", b"plugin_root_id"), property("vm_id", b"plugin_vm_id")]);
    let opts = options();
    let vm_id = opts.vm_id.clone();
    let mut h = start_with(&p, "", opts);
    tick(&mut h);
    assert_eq!(
        take(&h),
        [
            "name status=0 s0=nz s1=11 data=test-plugin".to_string(),
            "root_id status=0 s0=0 s1=0 data=".to_string(),
            format!("vm_id status=0 s0=nz s1={} data={vm_id}", vm_id.len()),
        ]
    );
}

#[test]
fn a_property_set_in_a_root_context_reads_back() {
    let p = probe().on("configure", vec![call("set", "proxy_set_property", vec![s("k"), s("v")], vec![]), property("get", b"k")]);
    let h = start(&p, "");
    assert_eq!(take(&h), ["set status=0", "get status=0 s0=nz s1=1 data=v"]);
}

#[test]
fn setting_a_property_with_an_empty_path_is_bad_argument() {
    let h = start(&probe().on("configure", vec![call("set", "proxy_set_property", vec![s(""), s("v")], vec![])]), "");
    assert_eq!(take(&h), ["set status=2"]);
}

// ================================================================== shared data

fn shared_get(label: &str, key: &str) -> Step {
    call(label, "proxy_get_shared_data", vec![s(key), Slot(0), Slot(1), Slot(2)], vec![Ptr(0), U32(1), Ptr(2), Data(0, 1)])
}

fn shared_set(label: &str, key: &str, value: &str, cas: A) -> Step {
    call(label, "proxy_set_shared_data", vec![s(key), s(value), cas], vec![])
}

#[test]
fn a_missing_shared_data_key_is_not_found_and_nothing_is_written() {
    let h = start(&probe().on("configure", vec![shared_get("get", "missing")]), "");
    assert_eq!(take(&h), ["get status=1 s0=unset s1=unset s2=unset data="]);
}

#[test]
fn an_empty_shared_value_is_ok_with_null_pointer_zero_size_and_its_cas() {
    let h = start(&probe().on("configure", vec![shared_set("set", "k", "", I(0)), shared_get("get", "k")]), "");
    assert_eq!(take(&h), ["set status=0", "get status=0 s0=0 s1=0 s2=nz data="]);
}

#[test]
fn a_cas_on_an_absent_key_creates_it() {
    let h = start(&probe().on("configure", vec![shared_set("set", "new", "v", I(12345)), shared_get("get", "new")]), "");
    assert_eq!(take(&h), ["set status=0", "get status=0 s0=nz s1=1 s2=nz data=v"]);
}

#[test]
fn a_stale_cas_is_cas_mismatch() {
    let p = probe().on(
        "configure",
        vec![
            shared_set("set", "k", "1", I(0)),
            call("get", "proxy_get_shared_data", vec![s("k"), Slot(0), Slot(1), Slot(2)], vec![Save(2, 0)]),
            shared_set("overwrite", "k", "2", I(0)),
            shared_set("stale", "k", "3", Saved(0)),
        ],
    );
    let h = start(&p, "");
    assert_eq!(take(&h), ["set status=0", "get status=0", "overwrite status=0", "stale status=8"]);
}

// ================================================================== shared queues

fn register(label: &str, name: &str) -> Step {
    call(label, "proxy_register_shared_queue", vec![s(name), Slot(0)], vec![U32(0), Save(0, 0)])
}

#[test]
fn registering_a_queue_twice_returns_the_same_id() {
    let h = start(&probe().on("configure", vec![register("first", "q"), register("again", "q")]), "");
    let lines = take(&h);
    assert_eq!(lines.len(), 2);
    assert_eq!(field(&lines[0], "status"), "0");
    assert_ne!(field(&lines[0], "s0"), "unset");
    assert_eq!(field(&lines[0], "s0"), field(&lines[1], "s0"));
}

#[test]
fn a_queue_registered_from_a_stream_context_notifies_its_root_context() {
    let p = probe().on(
        "request_headers",
        vec![register("register", "q"), call("enqueue", "proxy_enqueue_shared_queue", vec![Saved(0), s("x")], vec![])],
    );
    let mut h = start(&p, "");
    request(&mut h, &[]);
    let lines = take(&h);
    let id: u32 = field(&lines[0], "s0").parse().unwrap();
    assert_eq!(lines[1], "enqueue status=0");
    assert_eq!(h.server.take_queue_ready(), vec![(h.root, id)]);
}

#[test]
fn resolving_an_unknown_queue_is_not_found_and_nothing_is_written() {
    let p = probe().on("configure", vec![call("resolve", "proxy_resolve_shared_queue", vec![s(""), s("nope"), Slot(0)], vec![U32(0)])]);
    let h = start(&p, "");
    assert_eq!(take(&h), ["resolve status=1 s0=unset"]);
}

fn dequeue(label: &str, id: A) -> Step {
    call(label, "proxy_dequeue_shared_queue", vec![id, Slot(0), Slot(1)], vec![Ptr(0), U32(1), Data(0, 1)])
}

#[test]
fn dequeuing_an_empty_queue_is_empty_and_nothing_is_written() {
    let h = start(&probe().on("configure", vec![register("register", "q"), dequeue("dequeue", Saved(0))]), "");
    assert_eq!(take(&h)[1], "dequeue status=7 s0=unset s1=unset data=");
}

#[test]
fn dequeuing_or_enqueuing_an_unknown_queue_is_not_found() {
    let p = probe().on(
        "configure",
        vec![dequeue("dequeue", I(0x7fff_fff0)), call("enqueue", "proxy_enqueue_shared_queue", vec![I(0x7fff_fff0), s("x")], vec![])],
    );
    let h = start(&p, "");
    assert_eq!(take(&h), ["dequeue status=1 s0=unset s1=unset data=", "enqueue status=1"]);
}

#[test]
fn an_empty_queue_item_dequeues_as_ok_with_null_pointer_and_zero_size() {
    let p = probe().on(
        "configure",
        vec![register("register", "q"), call("enqueue", "proxy_enqueue_shared_queue", vec![Saved(0), s("")], vec![]), dequeue("dequeue", Saved(0))],
    );
    let h = start(&p, "");
    assert_eq!(take(&h)[1..], ["enqueue status=0", "dequeue status=0 s0=0 s1=0 data="]);
}

// ================================================================== metrics

fn define(label: &str, kind: u32, name: &str) -> Step {
    call(label, "proxy_define_metric", vec![I(kind), s(name), Slot(0)], vec![Save(0, 0)])
}

fn get_metric(label: &str) -> Step {
    call(label, "proxy_get_metric", vec![Saved(0), Slot(0)], vec![U64(0)])
}

#[test]
fn a_counter_increment_must_be_positive() {
    let p = probe().on(
        "configure",
        vec![
            define("define", 0, &unique("counter")),
            call("zero", "proxy_increment_metric", vec![Saved(0), L(0)], vec![]),
            call("negative", "proxy_increment_metric", vec![Saved(0), L(-1)], vec![]),
            call("positive", "proxy_increment_metric", vec![Saved(0), L(3)], vec![]),
            get_metric("get"),
        ],
    );
    let h = start(&p, "");
    assert_eq!(take(&h), ["define status=0", "zero status=2", "negative status=2", "positive status=0", "get status=0 s0=3"]);
}

#[test]
fn recording_a_counter_adds_to_it() {
    let p = probe().on(
        "configure",
        vec![
            define("define", 0, &unique("counter")),
            call("increment", "proxy_increment_metric", vec![Saved(0), L(2)], vec![]),
            call("record", "proxy_record_metric", vec![Saved(0), L(5)], vec![]),
            get_metric("get"),
        ],
    );
    let h = start(&p, "");
    assert_eq!(take(&h), ["define status=0", "increment status=0", "record status=0", "get status=0 s0=7"]);
}

#[test]
fn recording_a_gauge_sets_it_and_a_negative_increment_subtracts() {
    let p = probe().on(
        "configure",
        vec![
            define("define", 1, &unique("gauge")),
            call("record", "proxy_record_metric", vec![Saved(0), L(5)], vec![]),
            call("decrement", "proxy_increment_metric", vec![Saved(0), L(-2)], vec![]),
            get_metric("get"),
        ],
    );
    let h = start(&p, "");
    assert_eq!(take(&h), ["define status=0", "record status=0", "decrement status=0", "get status=0 s0=3"]);
}

#[test]
fn a_histogram_has_no_value_and_an_unknown_metric_is_not_found() {
    let p = probe().on(
        "configure",
        vec![
            define("define", 2, &unique("histogram")),
            get_metric("histogram"),
            call("unknown", "proxy_get_metric", vec![I(0x7fff_fff0), Slot(0)], vec![U64(0)]),
            call("type_3", "proxy_define_metric", vec![I(3), s("m"), Slot(0)], vec![U32(0)]),
        ],
    );
    let h = start(&p, "");
    assert_eq!(take(&h), ["define status=0", "histogram status=2 s0=unset", "unknown status=1 s0=unset", "type_3 status=2 s0=unset"]);
}

// ================================================================== http_call and status

#[test]
fn a_refused_http_call_writes_a_zero_token() {
    let h = start(&probe().on("configure", vec![http_call("call", call_headers(false), 1000)]), "");
    assert_eq!(take(&h), ["call status=2 s0=0"]);
}

#[test]
fn an_http_call_timeout_above_i32_max_is_bad_argument() {
    let h = start(&probe().on("configure", vec![http_call("call", call_headers(true), 0x8000_0000)]), "");
    assert_eq!(take(&h), ["call status=2 s0=0"]);
    assert!(h.server.take_http_calls().is_empty());
}

#[test]
fn an_http_call_from_a_stream_is_made_for_its_root_context_and_writes_the_token() {
    let mut h = start(&probe().on("request_headers", vec![http_call("call", call_headers(true), 1000)]), "");
    request(&mut h, &[]);
    assert_eq!(take(&h), ["call status=0 s0=nz"]);
    let calls = h.server.take_http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, h.root, "the answer goes to the root context");
}

#[test]
fn get_status_after_a_failed_call_reports_code_and_message() {
    let p = probe().on("http_call_response", vec![call("status", "proxy_get_status", vec![Slot(0), Slot(1), Slot(2)], vec![U32(0), Ptr(1), U32(2), Data(1, 2)])]);
    let h = call_and_answer(p, HttpCallResponse::failed(14, "reset"));
    assert_eq!(take(&h), ["status status=0 s0=14 s1=nz s2=5 data=reset"]);
}

// ================================================================== stream control

#[test]
fn stream_control_from_a_root_context_is_ok_and_does_nothing() {
    let p = probe().on(
        "tick",
        vec![
            call("continue", "proxy_continue_stream", vec![I(0)], vec![]),
            call("close", "proxy_close_stream", vec![I(1)], vec![]),
            call("local", "proxy_send_local_response", vec![I(403), s(""), s("deny"), s(""), I(UNSET)], vec![]),
        ],
    );
    let mut h = start(&p, "");
    tick(&mut h);
    assert_eq!(take(&h), ["continue status=0", "close status=0", "local status=0"]);
}

#[test]
fn tcp_stream_control_in_an_http_stream_is_ok_except_continuing_upstream() {
    let p = probe().on(
        "request_headers",
        vec![
            call("continue_downstream", "proxy_continue_stream", vec![I(2)], vec![]),
            call("continue_upstream", "proxy_continue_stream", vec![I(3)], vec![]),
            call("close_downstream", "proxy_close_stream", vec![I(2)], vec![]),
            call("close_upstream", "proxy_close_stream", vec![I(3)], vec![]),
            call("continue_4", "proxy_continue_stream", vec![I(4)], vec![]),
        ],
    );
    let mut h = start(&p, "");
    let (_ctx, stream) = request(&mut h, &[]);
    assert_eq!(take(&h), ["continue_downstream status=0", "continue_upstream status=12", "close_downstream status=0", "close_upstream status=0", "continue_4 status=2"]);
    assert!(stream.data().closed.is_empty() && stream.data().resumed.is_empty());
}

#[test]
fn a_local_response_status_outside_100_to_999_is_bad_argument() {
    let p = probe().on("request_headers", vec![call("local", "proxy_send_local_response", vec![I(99), s(""), s(""), s(""), I(UNSET)], vec![])]);
    let mut h = start(&p, "");
    let (_ctx, stream) = request(&mut h, &[]);
    assert_eq!(take(&h), ["local status=2"]);
    assert!(stream.data().local_response.is_none());
}

#[test]
fn a_local_response_after_the_response_header_was_sent_is_bad_argument() {
    let p = probe().on("response_body", vec![call("local", "proxy_send_local_response", vec![I(403), s(""), s(""), s(""), I(UNSET)], vec![])]);
    let mut h = start(&p, "");
    let (ctx, stream) = request(&mut h, &[]);
    stream.set_response(&[(":status", "200")]);
    h.vm.on_response_headers(ctx, 1, false).unwrap();
    stream.0.lock().unwrap().response_started = true;
    h.vm.on_response_body(ctx, b"x", true).unwrap();
    assert_eq!(take(&h), ["local status=2"]);
}

#[test]
fn abi_0_1_0_continue_and_clear_route_cache_are_ok_from_a_root_context() {
    let p = probe().abi("0_1_0").on(
        "tick",
        vec![
            call("request", "proxy_continue_request", vec![], vec![]),
            call("response", "proxy_continue_response", vec![], vec![]),
            call("route", "proxy_clear_route_cache", vec![], vec![]),
        ],
    );
    let mut h = start(&p, "");
    tick(&mut h);
    assert_eq!(take(&h), ["request status=0", "response status=0", "route status=0"]);
}

// ================================================================== contexts

#[test]
fn an_unknown_effective_context_is_bad_argument() {
    let p = probe().on("configure", vec![call("unknown", "proxy_set_effective_context", vec![I(0x7fff_ffff)], vec![]), call("zero", "proxy_set_effective_context", vec![I(0)], vec![])]);
    let h = start(&p, "");
    // cpp-host accepts 0 (its VM context) and then acts on the calling context; see docs/compatibility.md.
    assert_eq!(take(&h), ["unknown status=2", "zero status=2"]);
}

#[test]
fn the_effective_context_is_reset_on_every_callback() {
    let p = probe().on("request_headers", vec![Step::SaveCtx(0)]).on(
        "tick",
        vec![
            header("before", REQUEST_HEADERS, ":path"),
            call("switch", "proxy_set_effective_context", vec![Saved(0)], vec![]),
            header("after", REQUEST_HEADERS, ":path"),
        ],
    );
    let mut h = start(&p, "");
    h.stream(GET); // a second stream, so the first is not the newest
    request(&mut h, &[]);
    tick(&mut h);
    tick(&mut h);
    let expected = ["before status=1 s0=unset s1=unset data=", "switch status=0", "after status=0 s0=nz s1=2 data=/p"];
    assert_eq!(take(&h), [expected, expected].concat());
}

#[test]
fn proxy_done_with_nothing_pending_is_not_found() {
    let h = start(&probe().on("configure", vec![call("done", "proxy_done", vec![], vec![])]), "");
    assert_eq!(take(&h), ["done status=1"]);
}

// ================================================================== logging and time

#[test]
fn a_log_level_above_critical_is_bad_argument_and_not_logged() {
    let h = start(&probe().on("configure", vec![call("log", "proxy_log", vec![I(6), s("never")], vec![])]), "");
    assert_eq!(take(&h), ["log status=2"]);
    assert!(!h.server.logged("never"));
}

#[test]
fn get_log_level_writes_the_servers_level() {
    let p = probe().on("configure", vec![call("level", "proxy_get_log_level", vec![Slot(0)], vec![U32(0)])]);
    let server = TestServer::new();
    // Info, not the default Trace: the probe reports at Info, and lines below the server's level
    // never reach the server (the host drops them before any copying).
    *server.log_level.lock().unwrap() = LogLevel::Info;
    let opts = options();
    let code = load(&p.bytes(), "probe.wasm").unwrap();
    let h = Harness::try_start_full(code, "", opts, server).unwrap();
    assert_eq!(take(&h), ["level status=0 s0=2"]);
}

#[test]
fn current_time_is_written_as_nanoseconds() {
    let h = start(&probe().on("configure", vec![call("time", "proxy_get_current_time_nanoseconds", vec![Slot(0)], vec![U64(0)])]), "");
    let lines = take(&h);
    let ns: u64 = field(&lines[0], "s0").parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    assert!(ns > now - 60_000_000_000 && ns <= now, "{ns} vs {now}");
}

#[test]
fn a_zero_tick_period_stops_the_ticks() {
    let p = probe().on(
        "configure",
        vec![
            call("start", "proxy_set_tick_period_milliseconds", vec![I(100)], vec![]),
            call("stop", "proxy_set_tick_period_milliseconds", vec![I(0)], vec![]),
        ],
    );
    let h = start(&p, "");
    assert_eq!(take(&h), ["start status=0", "stop status=0"]);
    assert_eq!(h.server.record.lock().unwrap().ticks.get(&h.root), Some(&None));
}

// ================================================================== foreign functions

fn foreign(label: &str, name: &str, results: A, results_size: A) -> Step {
    call(label, "proxy_call_foreign_function", vec![s(name), s("abc"), results, results_size], vec![Ptr(0), U32(1), Data(0, 1), Mem(0), Mem(4)])
}

#[test]
fn an_unknown_foreign_function_is_not_found_and_nothing_is_written() {
    let h = start(&probe().on("configure", vec![foreign("call", "no-such-function", Slot(0), Slot(1))]), "");
    assert_eq!(take(&h), ["call status=1 s0=unset s1=unset data= m0=1 m4=2"]);
}

#[test]
fn foreign_function_results_are_returned() {
    let h = start(&probe().on("configure", vec![foreign("call", "echo", Slot(0), Slot(1))]), "");
    assert_eq!(take(&h), ["call status=0 s0=nz s1=3 data=abc m0=1 m4=2"]);
}

#[test]
fn null_foreign_function_result_pointers_are_not_written() {
    let h = start(&probe().on("configure", vec![foreign("call", "echo", I(0), I(0))]), "");
    assert_eq!(take(&h), ["call status=0 s0=unset s1=unset data= m0=1 m4=2"]);
}

// ================================================================== capabilities, start-up, allocator

#[test]
fn a_hostcall_outside_allowed_capabilities_is_internal_failure() {
    let p = probe().on("configure", vec![property("get", b"plugin_name")]);
    let opts = options();
    let caps = ["proxy_log", "proxy_on_context_create", "proxy_on_vm_start", "proxy_on_configure"];
    let authorizations = Authorizations { capabilities: Some(caps.iter().map(|c| c.to_string()).collect()), ..Authorizations::unrestricted() };
    let plugin = PluginInfo::new("restricted", "", opts.vm_id.clone(), Vec::new()).with_authorizations(authorizations);
    let h = Harness::try_start_plugin(load(&p.bytes(), "probe.wasm").unwrap(), plugin, opts, TestServer::new()).unwrap();
    assert_eq!(take(&h), ["get status=10 s0=unset s1=unset data="]);
}

#[test]
fn during_start_up_only_logging_time_and_log_level_are_available() {
    let p = probe().on(
        "initialize",
        vec![
            call("time", "proxy_get_current_time_nanoseconds", vec![Slot(0)], vec![]),
            call("level", "proxy_get_log_level", vec![Slot(0)], vec![]),
            call("property", "proxy_get_property", vec![s("plugin_name"), Slot(0), Slot(1)], vec![]),
            call("tick", "proxy_set_tick_period_milliseconds", vec![I(10)], vec![]),
        ],
    );
    let h = start(&p, "");
    assert_eq!(take(&h), ["time status=0", "level status=0", "property status=10", "tick status=10"]);
}

#[test]
fn a_module_without_an_allocator_loads_and_cannot_be_handed_bytes() {
    // cpp-host refuses such a module ("Wasm module is missing malloc function");
    // we load it, and a hostcall that must return bytes answers INVALID_MEMORY_ACCESS.
    let wat = r#"(module
        (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
        (import "env" "proxy_get_property" (func $get (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 0) "plugin_name")
        (data (i32.const 32) "@get status=")
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_configure") (param i32 i32) (result i32)
          (i32.store8 (i32.const 44) (i32.add (i32.const 48) (call $get (i32.const 0) (i32.const 11) (i32.const 64) (i32.const 68))))
          (drop (call $log (i32.const 2) (i32.const 32) (i32.const 13)))
          (i32.const 1)))"#;
    let h = Harness::start_with_on(RUNTIME, &wat::parse_str(wat).unwrap(), "", options());
    assert_eq!(take(&h), ["get status=6"]);
}

#[test]
fn inside_the_allocator_hostcalls_other_than_logging_are_internal_failure() {
    // The allocator tries to set a tick period while the host hands it bytes;
    // it keeps the status, which on_configure then logs as a digit ('0' + 10 = ':').
    let wat = r#"(module
        (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
        (import "env" "proxy_get_property" (func $get (param i32 i32 i32 i32) (result i32)))
        (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
        (memory (export "memory") 2)
        (data (i32.const 0) "plugin_name")
        (data (i32.const 32) "@alloc status=")
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_memory_allocate") (param i32) (result i32)
          (i32.store8 (i32.const 46) (i32.add (i32.const 48) (call $tick (i32.const 5))))
          (i32.const 0x10000))
        (func (export "proxy_on_configure") (param i32 i32) (result i32)
          (drop (call $get (i32.const 0) (i32.const 11) (i32.const 64) (i32.const 68)))
          (drop (call $log (i32.const 2) (i32.const 32) (i32.const 15)))
          (i32.const 1)))"#;
    let h = Harness::start_with_on(RUNTIME, &wat::parse_str(wat).unwrap(), "", options());
    assert_eq!(take(&h), ["alloc status=:"]);
    assert!(h.server.record.lock().unwrap().ticks.is_empty());
}

#[test]
fn malloc_is_used_when_a_module_exports_it_and_proxy_on_memory_allocate() {
    let p = probe().with_malloc().on("configure", vec![get_bytes("cfg", PLUGIN_CONFIG, 0, 3)]);
    let h = start(&p, "abc");
    assert_eq!(take(&h), ["malloc", "cfg status=0 s0=nz s1=3 data=abc"]);
}

// ================================================================== WASI and env extras

fn wasi(label: &str, f: &'static str, args: Vec<A>) -> Step {
    call(label, f, args, vec![])
}

#[test]
fn wasi_reads_and_preopened_directory_names_are_enosys() {
    let p = probe().on(
        "configure",
        vec![
            wasi("fd_read", "wasi:fd_read", vec![I(0), I(0), I(0), Slot(0)]),
            wasi("fd_pread", "wasi:fd_pread", vec![I(0), I(0), I(0), L(0), Slot(0)]),
            wasi("fd_prestat_dir_name", "wasi:fd_prestat_dir_name", vec![I(3), I(0), I(0)]),
            wasi("fd_fdstat_set_flags", "wasi:fd_fdstat_set_flags", vec![I(1), I(0)]),
            wasi("fd_prestat_get", "wasi:fd_prestat_get", vec![I(3), Slot(0)]),
            wasi("fd_filestat_get", "wasi:fd_filestat_get", vec![I(1), Slot(0)]),
        ],
    );
    let h = start(&p, "");
    assert_eq!(
        take(&h),
        ["fd_read status=52", "fd_pread status=52", "fd_prestat_dir_name status=52", "fd_fdstat_set_flags status=52", "fd_prestat_get status=8", "fd_filestat_get status=8"]
    );
}

#[test]
fn wasi_file_maintenance_calls_succeed_on_stdout_and_stderr_only() {
    let p = probe().on(
        "configure",
        vec![
            wasi("advise_1", "wasi:fd_advise", vec![I(1), L(0), L(0), I(0)]),
            wasi("advise_9", "wasi:fd_advise", vec![I(9), L(0), L(0), I(0)]),
            wasi("allocate_2", "wasi:fd_allocate", vec![I(2), L(0), L(0)]),
            wasi("allocate_9", "wasi:fd_allocate", vec![I(9), L(0), L(0)]),
            wasi("datasync_1", "wasi:fd_datasync", vec![I(1)]),
            wasi("datasync_0", "wasi:fd_datasync", vec![I(0)]),
            wasi("sync_2", "wasi:fd_sync", vec![I(2)]),
            wasi("sync_9", "wasi:fd_sync", vec![I(9)]),
            wasi("set_rights_1", "wasi:fd_fdstat_set_rights", vec![I(1), L(0), L(0)]),
            wasi("set_rights_9", "wasi:fd_fdstat_set_rights", vec![I(9), L(0), L(0)]),
            wasi("set_size_1", "wasi:fd_filestat_set_size", vec![I(1), L(0)]),
            wasi("set_size_9", "wasi:fd_filestat_set_size", vec![I(9), L(0)]),
            wasi("set_times_2", "wasi:fd_filestat_set_times", vec![I(2), L(0), L(0), I(0)]),
            wasi("set_times_9", "wasi:fd_filestat_set_times", vec![I(9), L(0), L(0), I(0)]),
            wasi("close_9", "wasi:fd_close", vec![I(9)]),
        ],
    );
    let h = start(&p, "");
    assert_eq!(
        take(&h),
        [
            "advise_1 status=0", "advise_9 status=0", "allocate_2 status=0", "allocate_9 status=8", "datasync_1 status=0", "datasync_0 status=8",
            "sync_2 status=0", "sync_9 status=8", "set_rights_1 status=0", "set_rights_9 status=8", "set_size_1 status=0", "set_size_9 status=8",
            "set_times_2 status=0", "set_times_9 status=8", "close_9 status=0",
        ]
    );
}

#[test]
fn wasi_pwrite_to_stdout_logs_like_fd_write() {
    let p = probe().on("configure", vec![call("pwrite", "wasi:fd_pwrite", vec![I(1), Iov(b"pwritten\n".to_vec()), L(0), Slot(0)], vec![U32(0)])]);
    let h = start(&p, "");
    assert!(h.server.logs().iter().any(|l| l.level == LogLevel::Info && l.message == "pwritten"), "{:?}", h.server.messages());
    assert_eq!(take(&h), ["pwrite status=0 s0=9"]);
}

#[test]
fn wasi_directory_renumber_and_tell_answer_as_the_reference_host() {
    let p = probe().on(
        "configure",
        vec![
            call("readdir", "wasi:fd_readdir", vec![I(3), I(0x200), I(16), L(0), Slot(0)], vec![U32(0)]),
            wasi("renumber_1_2", "wasi:fd_renumber", vec![I(1), I(2)]),
            wasi("renumber_1_9", "wasi:fd_renumber", vec![I(1), I(9)]),
            call("tell_1", "wasi:fd_tell", vec![I(1), Slot(0)], vec![U64(0)]),
            call("tell_9", "wasi:fd_tell", vec![I(9), Slot(0)], vec![U64(0)]),
        ],
    );
    let h = start(&p, "");
    assert_eq!(take(&h), ["readdir status=20 s0=0", "renumber_1_2 status=58", "renumber_1_9 status=8", "tell_1 status=0 s0=0", "tell_9 status=8 s0=unset"]);
}

#[test]
fn wasi_paths_and_sockets_are_refused_as_the_reference_host_does() {
    let p = probe().on(
        "configure",
        vec![
            call("path_open", "wasi:path_open", vec![I(3), I(0), s("f"), I(0), L(0), L(0), I(0), Slot(0)], vec![U32(0)]),
            call("path_readlink", "wasi:path_readlink", vec![I(3), s("l"), I(0x200), I(16), Slot(0)], vec![U32(0)]),
            call("sock_accept", "wasi:sock_accept", vec![I(3), I(0), Slot(0)], vec![U32(0)]),
            call("sock_recv", "wasi:sock_recv", vec![I(3), I(0), I(0), I(0), Slot(0), Slot(1)], vec![U32(0), U32(1)]),
            call("sock_send", "wasi:sock_send", vec![I(3), I(0), I(0), I(0), Slot(0)], vec![U32(0)]),
            wasi("sock_shutdown", "wasi:sock_shutdown", vec![I(3), I(0)]),
        ],
    );
    let h = start(&p, "");
    assert_eq!(
        take(&h),
        [
            "path_open status=44 s0=unset",
            "path_readlink status=58 s0=0",
            "sock_accept status=58 s0=0",
            // sock_recv's second slot is a u16 flags field: two bytes written.
            "sock_recv status=58 s0=0 s1=4294901760",
            "sock_send status=58 s0=0",
            "sock_shutdown status=58",
        ]
    );
}

#[test]
fn wasi_seek_on_stdio_is_espipe_and_elsewhere_ebadf() {
    let p = probe().on(
        "configure",
        vec![
            call("seek_1", "wasi:fd_seek", vec![I(1), L(0), I(0), Slot(0)], vec![U64(0)]),
            call("seek_9", "wasi:fd_seek", vec![I(9), L(0), I(0), Slot(0)], vec![U64(0)]),
        ],
    );
    let h = start(&p, "");
    assert_eq!(take(&h), ["seek_1 status=70 s0=unset", "seek_9 status=8 s0=unset"]);
}

#[test]
fn wasi_fdstat_of_stdio_is_a_character_device() {
    // fdstat: u8 filetype (2 = character device), u16 flags, u64 rights base, u64 rights inheriting.
    let stat = |label, fd| call(label, "wasi:fd_fdstat_get", vec![I(fd), Slot(0)], vec![U32(0), U64(1)]);
    let h = start(&probe().on("configure", vec![stat("stdin", 0), stat("stdout", 1), stat("other", 3)]), "");
    assert_eq!(take(&h), ["stdin status=0 s0=2 s1=2", "stdout status=0 s0=2 s1=64", "other status=8 s0=unset s1=unset"]);
}

#[test]
fn wasi_cpu_time_clocks_are_not_supported() {
    let p = probe().on(
        "configure",
        vec![
            call("realtime", "wasi:clock_time_get", vec![I(0), L(0), Slot(0)], vec![]),
            call("monotonic", "wasi:clock_time_get", vec![I(1), L(0), Slot(0)], vec![]),
            call("process", "wasi:clock_time_get", vec![I(2), L(0), Slot(0)], vec![U64(0)]),
            call("thread_res", "wasi:clock_res_get", vec![I(3), Slot(0)], vec![U64(0)]),
            call("monotonic_res", "wasi:clock_res_get", vec![I(1), Slot(0)], vec![U64(0)]),
        ],
    );
    let h = start(&p, "");
    assert_eq!(take(&h), ["realtime status=0", "monotonic status=0", "process status=58 s0=unset", "thread_res status=58 s0=unset", "monotonic_res status=0 s0=1"]);
}

#[test]
fn wasi_random_get_refuses_more_than_64_kib() {
    let p = probe().on(
        "configure",
        vec![wasi("max", "wasi:random_get", vec![I(0x10000), I(65536)]), wasi("over", "wasi:random_get", vec![I(0x10000), I(65537)])],
    );
    let h = start(&p, "");
    assert_eq!(take(&h), ["max status=0", "over status=28"]);
}

#[test]
fn the_emscripten_and_pthread_imports_of_the_reference_host_are_provided() {
    let p = probe().on(
        "configure",
        vec![
            wasi("equal", "pthread_equal", vec![I(3), I(3)]),
            wasi("different", "pthread_equal", vec![I(3), I(4)]),
            wasi("growth", "emscripten_notify_memory_growth", vec![I(0)]),
        ],
    );
    let h = start(&p, "");
    assert_eq!(take(&h), ["equal status=1", "different status=0", "growth status=0"]);
}
}
