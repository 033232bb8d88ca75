//! The as-filter protocol (tests/plugins/README.md, "as-filter") driven
//! through the core with the in-memory server, once per runtime and build
//! (tests/sdk_builds): tests/plugins/as-filter with the AssemblyScript SDK
//! 0.1.8 (ABI 0.2.0) and 0.1.1 (ABI 0.1.0), and tests/plugins/c-filter, the
//! same protocol in C for ABI 0.2.1 and 0.1.0. Section `as_0_1_8`: what that
//! SDK itself logs and how it finds its root context.

mod common;
mod sdk_builds;
common::for_each_runtime! {
use common::*;

use proxy_wasm_host::abi::pairs::Pair;
use proxy_wasm_host::abi::LogLevel;
use proxy_wasm_host::host::LocalResponse;
use proxy_wasm_host::plugin::PluginInfo;
use proxy_wasm_host::vm::{Verdict, VmError, VmOptions};

crate::sdk_builds::for_each_as_protocol_build! {
all {
fn options() -> VmOptions {
    VmOptions::new(unique_vm_id("as"))
}

fn start(config: &str) -> Harness {
    Harness::try_start_code(built_code(PLUGIN), config, options()).unwrap_or_else(|e| panic!("start failed: {e}"))
}

fn start_plugin(root_id: &str, config: &str) -> Result<Harness, String> {
    let opts = options();
    let plugin = PluginInfo::new("as-plugin", root_id, opts.vm_id.clone(), config);
    Harness::try_start_plugin(built_code(PLUGIN), plugin, opts, TestServer::new())
}

fn get(path: &str) -> Vec<(&str, &str)> {
    vec![(":method", "GET"), (":path", path), (":authority", "example.com"), (":scheme", "http")]
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

/// A proxied request and response: returns the stream after both header phases.
fn proxied(h: &mut Harness, path: &str) -> TestStream {
    let (ctx, stream, v) = h.request(&get(path), true);
    assert_eq!(v, Verdict::Continue, "request headers");
    assert_eq!(h.respond(ctx, &stream, &[(":status", "200")], true), Verdict::Continue, "response headers");
    stream
}

fn local_response(status: u32, tag: &str) -> LocalResponse {
    LocalResponse {
        status,
        details: "as-filter".into(),
        body: b"local response from as-filter\n".to_vec(),
        headers: pairs(&[("x-proxy-wasm", tag), ("x-as-local", "1"), ("content-type", "text/plain")]),
        grpc_status: -1,
    }
}

// ------------------------------------------------------------------ loading and configuration

#[test]
fn the_build_declares_its_abi_version() {
    assert_eq!(built_code(PLUGIN).abi.to_string(), BUILD.abi);
}

#[test]
fn as_filter_configure_reads_the_plugin_configuration() {
    let h = start("tag=cfg;local_path=/deny");
    let line = LogLine { plugin: "test-plugin".into(), level: LogLevel::Info, message: "as-filter: configured, tag=cfg local_path=/deny".into() };
    assert!(h.server.logs().contains(&line), "{:#?}", h.server.messages());
}

#[test]
fn as_filter_reject_key_makes_start_plugin_fail_with_rejected() {
    let err = Harness::try_start_code(built_code(PLUGIN), "tag=x;reject", options()).err().expect("rejected");
    assert_eq!(err, "plugin test-plugin: proxy_on_configure returned false; the plugin is rejected");
}

#[test]
fn as_filter_logs_the_rejected_configuration_at_error() {
    let opts = options();
    let server = TestServer::new();
    let r = Harness::try_start_full(built_code(PLUGIN), "reject=yes", opts, server.clone());
    assert!(r.is_err());
    let line = LogLine { plugin: "test-plugin".into(), level: LogLevel::Error, message: "as-filter: configuration rejected: reject=yes".into() };
    assert!(server.logs().contains(&line), "{:#?}", server.messages());
}

#[test]
fn as_filter_out_of_range_local_status_is_rejected() {
    let err = Harness::try_start_code(built_code(PLUGIN), "local_status=700", options()).err().expect("rejected");
    assert_eq!(err, "plugin test-plugin: proxy_on_configure returned false; the plugin is rejected");
}

/// Issue 12: an empty `configuration` (the most common one) must start the
/// filter with its defaults, whatever its root id.
#[test]
fn as_filter_with_an_empty_configuration_starts_with_its_defaults_under_each_root_id() {
    for root_id in ["", "as-filter"] {
        let server = TestServer::new();
        let opts = options();
        let plugin = PluginInfo::new("as-plugin", root_id, opts.vm_id.clone(), "");
        let mut h = Harness::try_start_plugin(built_code(PLUGIN), plugin, opts, server.clone()).unwrap_or_else(|e| panic!("root id {root_id:?}: {e}"));
        let configured = format!("as-filter: configured, tag={} local_path=/as-local", BUILD.tag);
        assert!(server.logged(&configured), "{root_id:?}: {:#?}", server.messages());
        let stream = proxied(&mut h, "/");
        assert_eq!(stream.data().response_header("x-proxy-wasm").as_deref(), Some(BUILD.tag), "{root_id:?}");
        assert_eq!(stream.data().response_header("x-as-config"), None, "{root_id:?}");
    }
}

#[test]
fn as_filter_accepts_the_as_filter_root_id() {
    let mut h = start_plugin("as-filter", "").expect("starts");
    let stream = proxied(&mut h, "/");
    assert_eq!(stream.data().response_header("x-proxy-wasm").as_deref(), Some(BUILD.tag));
}

// ------------------------------------------------------------------ headers

#[test]
fn as_filter_adds_x_as_filter_to_the_request() {
    let mut h = start("");
    let (_ctx, stream, v) = h.request(&get("/hello"), true);
    assert_eq!(v, Verdict::Continue);
    let mut expected = get("/hello");
    expected.push(("x-as-filter", BUILD.tag));
    assert_eq!(show(&stream.data().request_headers), owned(&expected));
}

#[test]
fn as_filter_adds_x_proxy_wasm_to_the_response() {
    let mut h = start("");
    let stream = proxied(&mut h, "/hello");
    assert_eq!(show(&stream.data().response_headers), owned(&[(":status", "200"), ("x-proxy-wasm", BUILD.tag)]));
}

#[test]
fn as_filter_configured_tag_is_used_on_request_and_response() {
    let mut h = start("tag=as-test");
    let stream = proxied(&mut h, "/hello");
    let d = stream.data();
    assert_eq!(d.request_header("x-as-filter").as_deref(), Some("as-test"));
    assert_eq!(d.response_header("x-proxy-wasm").as_deref(), Some("as-test"));
}

#[test]
fn as_filter_echoes_a_non_empty_configuration_in_x_as_config() {
    let mut h = start("tag=as-test;local_status=451");
    let stream = proxied(&mut h, "/hello");
    assert_eq!(stream.data().response_header("x-as-config").as_deref(), Some("tag=as-test;local_status=451"));
}

#[test]
fn as_filter_x_as_config_is_header_safe() {
    let mut h = start("tag=nl\nlocal_status=404");
    let stream = proxied(&mut h, "/hello");
    let d = stream.data();
    assert_eq!(d.response_header("x-as-config").as_deref(), Some("tag=nl_local_status=404"));
    assert_eq!(d.response_header("x-proxy-wasm").as_deref(), Some("nl"), "newline separates items");
}

#[test]
fn as_filter_without_configuration_sends_no_x_as_config() {
    let mut h = start("");
    let stream = proxied(&mut h, "/hello");
    assert_eq!(stream.data().response_header("x-as-config"), None);
}

// ------------------------------------------------------------------ local responses

#[test]
fn as_filter_local_path_is_answered_locally_with_403() {
    let mut h = start("");
    let (_ctx, stream, v) = h.request(&get("/as-local"), true);
    assert_eq!(v, Verdict::Stop);
    assert_eq!(stream.data().local_response, Some(local_response(403, BUILD.tag)));
}

#[test]
fn as_filter_local_path_ignores_the_query() {
    let mut h = start("");
    let (_ctx, stream, v) = h.request(&get("/as-local?x=1"), true);
    assert_eq!(v, Verdict::Stop);
    assert_eq!(stream.data().local_response, Some(local_response(403, BUILD.tag)));
}

#[test]
fn as_filter_other_paths_are_proxied() {
    let mut h = start("");
    let (_ctx, stream, v) = h.request(&get("/as-local/more"), true);
    assert_eq!(v, Verdict::Continue);
    assert_eq!(stream.data().local_response, None);
}

#[test]
fn as_filter_x_as_local_request_header_forces_a_local_response() {
    let mut h = start("");
    let mut headers = get("/anything");
    headers.push(("x-as-local", "yes"));
    let (_ctx, stream, v) = h.request(&headers, true);
    assert_eq!(v, Verdict::Stop);
    assert_eq!(stream.data().local_response, Some(local_response(403, BUILD.tag)));
}

#[test]
fn as_filter_empty_x_as_local_header_does_not_answer_locally() {
    let mut h = start("");
    let mut headers = get("/anything");
    headers.push(("x-as-local", ""));
    let (_ctx, _stream, v) = h.request(&headers, true);
    assert_eq!(v, Verdict::Continue);
}

#[test]
fn as_filter_configured_local_path_and_status_are_used() {
    let mut h = start("tag=t;local_path=/deny;local_status=451");
    let (_ctx, stream, v) = h.request(&get("/deny"), true);
    assert_eq!(v, Verdict::Stop);
    assert_eq!(stream.data().local_response, Some(local_response(451, "t")));
}

#[test]
fn as_filter_default_local_path_is_not_answered_once_reconfigured() {
    let mut h = start("local_path=/deny");
    let (_ctx, _stream, v) = h.request(&get("/as-local"), true);
    assert_eq!(v, Verdict::Continue);
}
}
as_0_1_8 {
/// Issue 12: a filter on the SDK's own `onConfigure` (root id
/// `sdk-configure`) starts with an empty configuration, as it did on Envoy
/// before cpp-host's PR #303, and with a non-empty one.
#[test]
fn the_sdk_s_own_on_configure_starts_with_an_empty_and_a_non_empty_configuration() {
    for configuration in ["", "tag=x"] {
        let server = TestServer::new();
        let opts = options();
        let plugin = PluginInfo::new("as-plugin", "sdk-configure", opts.vm_id.clone(), configuration);
        let mut h = Harness::try_start_plugin(built_code(PLUGIN), plugin, opts, server.clone())
            .unwrap_or_else(|e| panic!("configuration {configuration:?}: {e}"));
        let stream = proxied(&mut h, "/");
        assert_eq!(stream.data().response_header("x-proxy-wasm").as_deref(), Some("sdk-configure"), "{configuration:?}");
    }
}

// ------------------------------------------------------------------ the SDK's own log lines and root-context lookup

#[test]
fn as_filter_starts_without_initialize_and_receives_the_vm_configuration_size() {
    let mut opts = options();
    opts.vm_configuration = b"abc".to_vec();
    let h = Harness::try_start_code(built_code(PLUGIN), "", opts).unwrap();
    assert!(h.server.logged(&format!("context id: {}: onStart(vm_configuration_size:3)", h.root)), "{:#?}", h.server.messages());
}

#[test]
fn as_filter_unknown_root_id_exits_the_vm_during_context_create() {
    let opts = options();
    let server = TestServer::new();
    let mut vm = proxy_wasm_host::vm::Vm::new(built_code(PLUGIN), opts.clone(), server.clone()).unwrap();
    let err = vm.start_plugin(std::sync::Arc::new(PluginInfo::new("as-plugin", "other", opts.vm_id, ""))).expect_err("the SDK aborts");
    match &err {
        VmError::Trap { plugin, callback, trap } => {
            assert_eq!(plugin, "as-plugin");
            assert_eq!(*callback, "proxy_on_context_create");
            assert_eq!(trap.message, "proc_exit(255)");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(vm.failure().is_some(), "an exited instance is not reused");
}

#[test]
fn as_filter_stream_finishes_with_on_done_on_log_on_delete_in_order() {
    let mut h = start("");
    let (ctx, _stream, _) = h.request(&get("/"), true);
    h.server.clear_logs();
    h.vm.finish_stream(ctx).unwrap();
    let expected: Vec<String> = ["onDone()", "onLog()", "onDelete()"].iter().map(|c| format!("context id: {ctx}: {c}")).collect();
    assert_eq!(h.server.messages(), expected);
}
}
}
}
