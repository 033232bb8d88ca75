//! ABI edge cases with hand-written WAT modules (tests/wat/): start-up, the
//! lifecycle order, ABI detection and linking, ABI 0.1.0, traps and hostile
//! arguments.

mod common;
common::for_each_runtime! {
use common::*;
use proxy_wasm_host::abi::{LogLevel, StreamType};
use proxy_wasm_host::vm::{Verdict, Vm, VmError, VmOptions};

fn messages_after(h: &Harness, start: usize) -> Vec<String> {
    h.server.messages().into_iter().skip(start).collect()
}

// ------------------------------------------------------------------ start-up

#[test]
fn start_up_calls_initialize_then_main_once() {
    let h = Harness::start_on(RUNTIME, &wat_bytes("lifecycle_0_2_1"), "cfg");
    let m = h.server.messages();
    assert_eq!(&m[..2], &["_initialize", "main"]);
    assert_eq!(m.iter().filter(|l| *l == "_initialize").count(), 1);
}

#[test]
fn start_up_calls_start_when_there_is_no_initialize_and_never_main() {
    let h = Harness::start_on(RUNTIME, &wat_bytes("start_only"), "");
    let m = h.server.messages();
    assert_eq!(m.first().map(String::as_str), Some("_start"));
    assert!(!h.server.logged("main must not be called"), "{m:?}");
}

// ------------------------------------------------------------------ lifecycle order

#[test]
fn root_context_is_created_then_vm_start_then_configure_with_sizes() {
    let mut options = VmOptions::new(unique_vm_id("life"));
    options.vm_configuration = b"vmconf".to_vec();
    let h = Harness::start_with_on(RUNTIME, &wat_bytes("lifecycle_0_2_1"), "cfg", options);
    let root = h.root;
    assert_eq!(
        &h.server.messages()[2..],
        &[format!("on_context_create ctx={root} parent=0"), format!("on_vm_start ctx={root} size=6"), format!("on_configure ctx={root} size=3"),]
    );
}

#[test]
fn stream_callbacks_run_in_order_and_end_with_done_log_delete() {
    let mut h = Harness::start_on(RUNTIME, &wat_bytes("lifecycle_0_2_1"), "cfg");
    let start = h.server.messages().len();
    let (ctx, stream, v) = h.request(&[(":method", "POST"), (":path", "/"), (":authority", "x")], false);
    assert_eq!(v, Verdict::Continue);
    assert_eq!(h.vm.on_request_body(ctx, b"abc", false).unwrap(), Verdict::Continue);
    assert_eq!(h.vm.take_body(ctx, StreamType::HttpRequest).unwrap(), b"abc", "Continue lets the chunk through");
    assert_eq!(h.vm.on_request_body(ctx, b"de", true).unwrap(), Verdict::Continue);
    stream.0.lock().unwrap().request_trailers = pairs(&[("x-t", "1")]);
    assert_eq!(h.vm.on_request_trailers(ctx, 1).unwrap(), Verdict::Continue);
    assert_eq!(h.respond(ctx, &stream, &[(":status", "200")], false), Verdict::Continue);
    assert_eq!(h.vm.on_response_body(ctx, b"xyz", true).unwrap(), Verdict::Continue);
    assert_eq!(h.vm.on_response_trailers(ctx, 0).unwrap(), Verdict::Continue);
    h.vm.finish_stream(ctx).unwrap();
    let root = h.root;
    assert_eq!(
        messages_after(&h, start),
        vec![
            format!("on_context_create ctx={ctx} parent={root}"),
            format!("on_request_headers ctx={ctx} eos=0"),
            format!("on_request_body ctx={ctx} size=3 eos=0"),
            format!("on_request_body ctx={ctx} size=2 eos=1"),
            format!("on_request_trailers ctx={ctx}"),
            format!("on_response_headers ctx={ctx} eos=0"),
            format!("on_response_body ctx={ctx} size=3 eos=1"),
            format!("on_response_trailers ctx={ctx}"),
            format!("on_done ctx={ctx}"),
            format!("on_log ctx={ctx}"),
            format!("on_delete ctx={ctx}"),
        ]
    );
}

#[test]
fn headers_end_of_stream_is_true_when_no_body_follows() {
    let mut h = Harness::start_on(RUNTIME, &wat_bytes("lifecycle_0_2_1"), "");
    let start = h.server.messages().len();
    let (ctx, _stream, _) = h.request(&[(":method", "GET")], true);
    assert_eq!(messages_after(&h, start)[1], format!("on_request_headers ctx={ctx} eos=1"));
}

#[test]
fn an_aborted_request_still_gets_done_log_delete_exactly_once() {
    let mut h = Harness::start_on(RUNTIME, &wat_bytes("lifecycle_0_2_1"), "");
    let (ctx, _stream, _) = h.request(&[(":method", "GET")], false);
    let start = h.server.messages().len();
    h.vm.finish_stream(ctx).unwrap();
    assert!(matches!(h.vm.finish_stream(ctx), Err(VmError::UnknownContext(_))), "a second finish is refused");
    assert_eq!(messages_after(&h, start), vec![format!("on_done ctx={ctx}"), format!("on_log ctx={ctx}"), format!("on_delete ctx={ctx}")]);
}

#[test]
fn context_ids_are_never_zero_nor_reused_while_live() {
    let mut h = Harness::start_on(RUNTIME, &wat_bytes("lifecycle_0_2_1"), "");
    let ids: Vec<u32> = (0..5).map(|_| h.request(&[], true).0).collect();
    let mut all = ids.clone();
    all.push(h.root);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 6);
    assert!(!ids.contains(&0));
}

#[test]
fn false_from_vm_start_rejects_the_plugin() {
    let e = Harness::try_start_on(RUNTIME, &wat_bytes("reject_vm_start"), "", VmOptions::new("r1")).err().unwrap();
    assert_eq!(e, "plugin test-plugin: proxy_on_vm_start returned false; the plugin is rejected");
}

#[test]
fn false_from_configure_rejects_the_plugin() {
    let e = Harness::try_start_on(RUNTIME, &wat_bytes("reject_configure"), "", VmOptions::new("r2")).err().unwrap();
    assert_eq!(e, "plugin test-plugin: proxy_on_configure returned false; the plugin is rejected");
}

// ------------------------------------------------------------------ ABI detection and linking

#[test]
fn a_module_without_abi_marker_is_refused_naming_the_file() {
    let e = load(&wat_bytes("no_marker"), "/plugins/no_marker.wasm").err().unwrap().to_string();
    assert_eq!(e, "/plugins/no_marker.wasm: not a Proxy-Wasm module: it exports no proxy_abi_version_* marker");
}

#[test]
fn a_module_with_an_unknown_abi_marker_is_refused() {
    let e = load(&wat_bytes("unknown_marker"), "u.wasm").err().unwrap().to_string();
    assert_eq!(e, "u.wasm: unsupported Proxy-Wasm ABI [\"proxy_abi_version_9_9_9\"]; this host speaks 0.1.0, 0.2.0 and 0.2.1");
}

#[test]
fn a_missing_import_is_refused_by_name() {
    let e = load(&wat_bytes("missing_import"), "m.wasm").err().unwrap().to_string();
    assert_eq!(e, "m.wasm: imports env.proxy_does_not_exist, which the host does not provide for ABI 0.2.1");
}

#[test]
fn an_import_with_a_wrong_signature_is_refused_by_name() {
    let e = load(&wat_bytes("bad_signature"), "b.wasm").err().unwrap().to_string();
    assert!(e.starts_with("b.wasm: import env.proxy_log has signature"), "{e}");
    assert!(e.ends_with("expected (i32, i32, i32) -> (i32)"), "{e}");
}

#[test]
fn a_0_2_x_module_cannot_import_0_1_0_only_hostcalls() {
    let wat = r#"(module (import "env" "proxy_continue_request" (func (result i32)))
        (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1")))"#;
    let e = load(&wat::parse_str(wat).unwrap(), "x.wasm").err().unwrap().to_string();
    assert_eq!(e, "x.wasm: imports env.proxy_continue_request, which the host does not provide for ABI 0.2.1");
}

#[test]
fn a_callback_with_the_wrong_arity_is_refused() {
    // 0.2.1 header callbacks take (context, num_headers, end_of_stream).
    let wat = r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_request_headers") (param i32 i32) (result i32) i32.const 0))"#;
    let e = load(&wat::parse_str(wat).unwrap(), "x.wasm").err().unwrap().to_string();
    assert_eq!(e, "x.wasm: export proxy_on_request_headers has signature (i32, i32) -> (i32), but ABI 0.2.1 expects (i32, i32, i32) -> (i32)");
}

#[test]
fn unknown_wasi_functions_link_and_answer_an_errno() {
    let wat = r#"(module
        (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
        (import "wasi_unstable" "sock_accept" (func $acc (param i32 i32 i32) (result i32)))
        (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 0) "0123456789")
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_configure") (param i32 i32) (result i32)
          (drop (call $log (i32.const 2) (i32.add (i32.const 0) (call $open (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 0))) (i32.const 0)))
          (i32.const 1)))"#;
    let h = Harness::start_on(RUNTIME, &wat::parse_str(wat).unwrap(), "");
    assert_eq!(h.vm.failure(), None);
}

// ------------------------------------------------------------------ ABI 0.1.0

#[test]
fn abi_0_1_0_module_runs_with_two_argument_header_callbacks() {
    let mut options = VmOptions::new(unique_vm_id("v010"));
    options.vm_configuration = b"vm-bytes".to_vec();
    let mut h = Harness::start_with_on(RUNTIME, &wat_bytes("abi_0_1_0"), "abi-0.1.0", options);
    assert_eq!(h.vm.code().abi.to_string(), "0.1.0");
    let (ctx, stream, v) = h.request(&[(":method", "GET"), (":path", "/")], true);
    assert_eq!(v, Verdict::Continue);
    assert_eq!(h.respond(ctx, &stream, &[(":status", "200")], true), Verdict::Continue);
    h.vm.finish_stream(ctx).unwrap();
    let m = h.server.messages();
    let root = h.root;
    assert_eq!(
        m,
        vec![
            format!("on_context_create ctx={root} parent=0"),
            format!("on_vm_start ctx={root} size=8"),
            "vm_config=vm-bytes".to_string(),
            format!("on_configure ctx={root} size=9"),
            "config=abi-0.1.0".to_string(),
            format!("on_context_create ctx={ctx} parent={root}"),
            format!("on_request_headers ctx={ctx}"),
            "missing status=0 len=0".to_string(),
            "add_request_header status=0".to_string(),
            format!("on_response_headers ctx={ctx}"),
            "add_response_header status=0".to_string(),
            format!("on_done ctx={ctx}"),
            format!("on_log ctx={ctx}"),
            format!("on_delete ctx={ctx}"),
        ]
    );
    let d = stream.data();
    assert_eq!(d.request_header("x-abi").as_deref(), Some("0.1.0"));
    assert_eq!(d.response_header("x-abi").as_deref(), Some("0.1.0"));
}

// ------------------------------------------------------------------ traps

fn trap_case(selector: &str) -> (Harness, Result<(), VmError>) {
    let mut h = Harness::start_on(RUNTIME, &wat_bytes("trap"), selector);
    let stream = TestStream::with_request(&[(":method", "POST"), (":path", "/")]);
    let r = (|| {
        let ctx = h.vm.create_stream(h.root, Box::new(stream.clone()))?;
        h.vm.on_request_headers(ctx, 2, false)?;
        h.vm.on_request_body(ctx, b"body", true)?;
        stream.set_response(&[(":status", "200")]);
        h.vm.on_response_headers(ctx, 1, false)?;
        h.vm.on_response_body(ctx, b"resp", true)?;
        h.vm.finish_stream(ctx)?;
        Ok(())
    })();
    (h, r)
}

#[test]
fn a_trap_in_each_stream_callback_ends_only_that_call_and_is_logged_with_a_backtrace() {
    for (selector, callback) in [
        ("context_create", "proxy_on_context_create"),
        ("request_headers", "proxy_on_request_headers"),
        ("request_body", "proxy_on_request_body"),
        ("response_headers", "proxy_on_response_headers"),
        ("response_body", "proxy_on_response_body"),
        ("done", "proxy_on_done"),
        ("log", "proxy_on_log"),
        ("delete", "proxy_on_delete"),
    ] {
        let (mut h, r) = trap_case(selector);
        match r {
            Err(VmError::Trap { callback: c, .. }) => assert_eq!(c, callback, "{selector}"),
            other => panic!("{selector}: expected a trap, got {other:?}"),
        }
        let critical: Vec<_> = h.server.logs().into_iter().filter(|l| l.level == LogLevel::Critical).collect();
        assert_eq!(critical.len(), 1, "{selector}: logged once");
        assert!(critical[0].message.starts_with(&format!("{callback} trapped: wasm trap:")), "{}", critical[0].message);
        assert!(critical[0].message.contains(&format!("trap.wasm!{callback}")) || critical[0].message.contains(callback), "{selector}: backtrace names the function: {}", critical[0].message);
        assert!(h.vm.failure().is_some(), "{selector}: a trapped instance is not reused");
        assert!(matches!(h.vm.on_tick(h.root), Err(VmError::Failed(_))));
    }
}

#[test]
fn a_trap_in_configure_rejects_the_plugin_with_the_trap_message() {
    let e = Harness::try_start_on(RUNTIME, &wat_bytes("trap"), "configure", VmOptions::new("t1")).err().unwrap();
    assert!(e.starts_with("plugin test-plugin: proxy_on_configure trapped: wasm trap:"), "{e}");
}

#[test]
fn a_trap_in_vm_start_rejects_the_plugin() {
    let mut options = VmOptions::new("t2");
    options.vm_configuration = b"vm_start".to_vec();
    let e = Harness::try_start_on(RUNTIME, &wat_bytes("trap"), "none", options).err().unwrap();
    assert!(e.starts_with("plugin test-plugin: proxy_on_vm_start trapped"), "{e}");
}

#[test]
fn a_trap_in_on_tick_is_reported_to_the_caller() {
    let mut h = Harness::start_on(RUNTIME, &wat_bytes("trap"), "tick");
    assert_eq!(h.server.record.lock().unwrap().ticks.get(&h.root), Some(&Some(std::time::Duration::from_millis(100))));
    assert!(matches!(h.vm.on_tick(h.root), Err(VmError::Trap { callback: "proxy_on_tick", .. })));
}

#[test]
fn after_a_trap_a_fresh_instance_of_the_same_code_serves_the_next_request() {
    let (h, r) = trap_case("request_headers");
    assert!(r.is_err());
    let code = h.vm.code().clone();
    let server = TestServer::new();
    let mut vm = Vm::new(code, VmOptions::new(unique_vm_id("fresh")), server.clone()).unwrap();
    // The same selector traps again on the fresh instance, so use the stream
    // lifecycle that does not reach on_request_headers' trap: a new plugin configuration.
    let root = vm.start_plugin(std::sync::Arc::new(proxy_wasm_host::plugin::PluginInfo::new("p", "", "fresh", b"none".to_vec()))).unwrap();
    let stream = TestStream::with_request(&[(":method", "GET")]);
    let ctx = vm.create_stream(root, Box::new(stream)).unwrap();
    assert_eq!(vm.on_request_headers(ctx, 1, true).unwrap(), Verdict::Continue);
    vm.finish_stream(ctx).unwrap();
}

#[test]
fn after_a_trap_finishing_a_stream_drops_its_context_without_calling_the_plugin() {
    let mut h = Harness::start_on(RUNTIME, &wat_bytes("trap"), "request_headers");
    let stream = TestStream::with_request(&[(":method", "GET")]);
    let ctx = h.vm.create_stream(h.root, Box::new(stream)).unwrap();
    assert!(h.vm.on_request_headers(ctx, 1, true).is_err());
    let before = h.server.messages().len();
    h.vm.finish_stream(ctx).unwrap();
    assert_eq!(h.server.messages().len(), before);
    assert_eq!(h.vm.context_count(), 1, "only the root is left");
}

// ------------------------------------------------------------------ hostile arguments

/// The `<case>=<status>` lines the hostile module logs.
fn hostile_results() -> Vec<(String, i32)> {
    let mut h = Harness::start_on(RUNTIME, &wat_bytes("hostile"), "hostile");
    let (ctx, _stream, v) = h.request(&[(":method", "POST"), (":path", "/"), (":authority", "h")], false);
    assert_eq!(v, Verdict::Continue);
    assert_eq!(h.vm.on_request_body(ctx, b"hello", true).unwrap(), Verdict::Continue);
    h.vm.finish_stream(ctx).unwrap();
    assert_eq!(h.vm.failure(), None, "hostile arguments never trap the module");
    assert!(h.server.logged("hostile configure done"));
    assert!(h.server.logged("hostile request_headers done"));
    assert!(h.server.logged("hostile request_body done"));
    h.server
        .messages()
        .into_iter()
        .filter_map(|m| {
            let (k, v) = m.rsplit_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Statuses the host must answer, case by case (see tests/wat/README.md):
/// INVALID_MEMORY_ACCESS (6) for any pointer/length outside memory, including
/// 32-bit wrap-around; BAD_ARGUMENT (2) for out-of-range enums and malformed
/// pairs; OK (0) for the setup probes; NOT_FOUND (1) for an unknown metric.
const EXPECTED_HOSTILE: &[(&str, i32)] = &[
    ("cfg_get_ret_ptr_oob", 6), ("cfg_get_ret_len_oob", 6), ("cfg_get_ret_straddle", 6), ("cfg_status_ret_oob", 6),
    ("log_msg_oob", 6), ("log_len_huge", 6), ("log_ptr_len_wrap", 6), ("log_straddle_end", 6), ("log_level_99", 2),
    ("hdr_add_probe", 0), ("hdr_get_key_oob", 6), ("hdr_get_key_len_huge", 6), ("hdr_get_key_wrap", 6),
    ("hdr_get_ret_ptr_oob", 6), ("hdr_get_ret_len_oob", 6), ("hdr_get_ret_straddle", 6), ("hdr_get_map_99", 2),
    ("hdr_add_value_oob", 6), ("hdr_add_map_99", 2), ("hdr_replace_key_oob", 6), ("hdr_remove_key_oob", 6),
    ("hdr_remove_map_99", 2), ("pairs_get_ret_ptr_oob", 6), ("pairs_get_ret_len_oob", 6), ("pairs_get_map_99", 2),
    ("pairs_size_ret_oob", 6), ("pairs_size_map_99", 2), ("pairs_set_ptr_oob", 6), ("pairs_set_len_huge", 6),
    ("pairs_set_count_gt_data", 2), ("pairs_set_count_huge", 2), ("pairs_set_key_len_past_end", 2),
    ("pairs_set_value_len_past_end", 2), ("pairs_set_missing_nul", 2), ("pairs_set_one_byte", 2),
    ("pairs_set_map_99", 2), ("pairs_save", 0), ("pairs_set_size0_nonnull", 0), ("pairs_set_restore", 0),
    ("buf_get_type_99", 2), ("buf_set_type_99", 2), ("buf_status_type_99", 2), ("continue_stream_99", 2),
    ("close_stream_99", 2), ("prop_get_path_oob", 6), ("prop_get_path_len_huge", 6), ("prop_get_ret_ptr_oob", 6),
    ("shared_set_key_oob", 6), ("shared_set_value_oob", 6), ("shared_set_value_len_huge", 6), ("shared_set_probe", 0),
    ("shared_get_key_oob", 6), ("shared_get_ret_ptr_oob", 6), ("shared_get_ret_cas_oob", 6),
    ("queue_register_name_oob", 6), ("metric_define_name_oob", 6), ("metric_define_type_99", 2),
    ("metric_define_ret_oob", 6), ("metric_define_probe", 0), ("metric_get_ret_oob", 6),
    ("metric_increment_negative_counter", 2), ("metric_record_unknown_id", 1), ("http_call_upstream_oob", 6),
    ("http_call_upstream_len_huge", 6), ("local_response_details_oob", 6), ("local_response_body_oob", 6),
    ("local_response_headers_oob", 6), ("local_response_headers_malformed", 2), ("time_ret_oob", 6),
    ("time_ret_straddle", 6), ("log_level_ret_oob", 6), ("effective_context_unknown", 2), ("body_get_ret_ptr_oob", 6),
    ("body_get_ret_len_oob", 6), ("body_get_range_wrap", 0), ("body_get_range_wrap_len", 4), ("body_set_data_oob", 6),
    ("body_set_data_len_huge", 6), ("body_set_data_wrap", 6), ("body_status_ret_oob", 6),
];

#[test]
fn hostile_pointers_and_lengths_get_invalid_memory_access_and_no_crash() {
    let results = hostile_results();
    let got: Vec<(&str, i32)> = results.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(got, EXPECTED_HOSTILE);
}
}
