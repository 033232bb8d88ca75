//! WASI preview 1 as plugins see it, under both module names.

mod common;
common::for_each_runtime! {
use common::*;

use proxy_wasm_host::abi::LogLevel;
use proxy_wasm_host::vm::VmOptions;

/// A module whose `proxy_on_configure` runs `$body` and logs the i32 it leaves
/// on the stack as "r=<n>" (one decimal digit per call is enough for errnos < 100).
fn wasi_module(module: &str, imports: &str, body: &str) -> Vec<u8> {
    let wat = format!(
        r#"(module
        {imports}
        (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
        (memory (export "memory") 2)
        (global $heap (mut i32) (i32.const 65536))
        (func (export "proxy_on_memory_allocate") (param i32) (result i32)
          (local $p i32) (local.set $p (global.get $heap))
          (global.set $heap (i32.add (global.get $heap) (local.get 0))) (local.get $p))
        (func (export "proxy_abi_version_0_2_1"))
        ;; logs "r=NN" for a value 0..99
        (func $report (param $v i32)
          (i32.store8 (i32.const 900) (i32.const 114)) (i32.store8 (i32.const 901) (i32.const 61))
          (i32.store8 (i32.const 902) (i32.add (i32.const 48) (i32.div_u (local.get $v) (i32.const 10))))
          (i32.store8 (i32.const 903) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
          (drop (call $log (i32.const 2) (i32.const 900) (i32.const 4))))
        (func (export "proxy_on_configure") (param i32 i32) (result i32)
          {body}
          (i32.const 1)))"#
    );
    let _ = module;
    wat::parse_str(&wat).unwrap_or_else(|e| panic!("{e}\n{wat}"))
}

fn run(bytes: &[u8], options: VmOptions) -> Harness {
    Harness::start_with_on(RUNTIME, bytes, "", options)
}

fn reports(h: &Harness) -> Vec<String> {
    h.server.messages().into_iter().filter(|m| m.starts_with("r=")).collect()
}

#[test]
fn fd_write_to_stdout_and_stderr_becomes_info_and_error_log_lines() {
    for module in ["wasi_snapshot_preview1", "wasi_unstable"] {
        let imports = format!(r#"(import "{module}" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))"#);
        let body = r#"
          (i32.store (i32.const 100) (i32.const 200)) (i32.store (i32.const 104) (i32.const 6))
          (i32.store (i32.const 108) (i32.const 210)) (i32.store (i32.const 112) (i32.const 7))
          (call $report (call $w (i32.const 1) (i32.const 100) (i32.const 2) (i32.const 120)))
          (call $report (i32.load (i32.const 120)))
          (call $report (call $w (i32.const 2) (i32.const 100) (i32.const 1) (i32.const 120)))
          (call $report (call $w (i32.const 7) (i32.const 100) (i32.const 1) (i32.const 120)))
          (call $report (call $w (i32.const 1) (i32.const 0xfffffff0) (i32.const 1) (i32.const 120)))"#;
        // Two iovecs: "hello " and "world!\n" (the trailing newline is not logged).
        let body = format!(
            "{}{}",
            "hello \nworld!\n".bytes().enumerate().map(|(i, b)| format!("(i32.store8 (i32.const {}) (i32.const {b}))", if i < 7 { 200 + i } else { 210 + i - 7 })).collect::<String>(),
            body
        );
        let h = run(&wasi_module(module, &imports, &body), VmOptions::new(unique_vm_id("fdw")));
        let logs = h.server.logs();
        let text: Vec<(LogLevel, String)> = logs.iter().filter(|l| !l.message.starts_with("r=")).map(|l| (l.level, l.message.clone())).collect();
        assert_eq!(text, vec![(LogLevel::Info, "hello world!".to_string()), (LogLevel::Error, "hello ".to_string())], "{module}");
        assert_eq!(reports(&h), vec!["r=00", "r=13", "r=00", "r=08", "r=21"], "{module}: OK, 13 bytes written, OK, EBADF, EFAULT");
    }
}

#[test]
fn fd_write_takes_at_most_64_kib_per_call_and_answers_a_short_write() {
    // A million iovecs all naming the same 1 MiB region ask for a terabyte:
    // the host takes 64 KiB, logs it as one line and reports a short write.
    let imports = r#"(import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))"#;
    let body = r#"
      (local $i i32)
      (drop (memory.grow (i32.const 160)))
      ;; the region: 1 MiB of 'a' from 0x100000
      (local.set $i (i32.const 0))
      (loop $fill
        (i32.store8 (i32.add (i32.const 0x100000) (local.get $i)) (i32.const 97))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $fill (i32.lt_u (local.get $i) (i32.const 0x100000))))
      ;; the table: 1M iovecs from 0x200000, each {0x100000, 1 MiB}
      (local.set $i (i32.const 0))
      (loop $table
        (i32.store (i32.add (i32.const 0x200000) (i32.shl (local.get $i) (i32.const 3))) (i32.const 0x100000))
        (i32.store (i32.add (i32.const 0x200004) (i32.shl (local.get $i) (i32.const 3))) (i32.const 0x100000))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $table (i32.lt_u (local.get $i) (i32.const 0x100000))))
      (call $report (call $w (i32.const 1) (i32.const 0x200000) (i32.const 0x100000) (i32.const 120)))
      ;; nwritten / 1024: 64 (KiB)
      (call $report (i32.shr_u (i32.load (i32.const 120)) (i32.const 10)))
      (call $report (i32.and (i32.load (i32.const 120)) (i32.const 1023)))"#;
    let h = run(&wasi_module("", imports, body), VmOptions::new(unique_vm_id("fdw-bomb")));
    assert_eq!(reports(&h), vec!["r=00", "r=64", "r=00"], "OK, 64 KiB written, no more");
    let lines: Vec<String> = h.server.messages().into_iter().filter(|m| !m.starts_with("r=")).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].len(), 64 * 1024);
    assert!(lines[0].bytes().all(|b| b == b'a'));
}

#[test]
fn fd_write_still_checks_every_iovec_it_looks_at() {
    let imports = r#"(import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))"#;
    let body = r#"
      ;; {200, 4} then {0xfffffff0, 32}: the second one is out of bounds
      (i32.store (i32.const 100) (i32.const 200)) (i32.store (i32.const 104) (i32.const 4))
      (i32.store (i32.const 108) (i32.const 0xfffffff0)) (i32.store (i32.const 112) (i32.const 32))
      (call $report (call $w (i32.const 1) (i32.const 100) (i32.const 2) (i32.const 120)))"#;
    let h = run(&wasi_module("", imports, body), VmOptions::new(unique_vm_id("fdw-oob")));
    assert_eq!(reports(&h), vec!["r=21"], "EFAULT");
    assert_eq!(h.server.messages().len(), 1, "nothing written: {:?}", h.server.messages());
}

/// A command module whose `_start` calls `random_get` and reports its errno
/// as "r=NN" (then `on_configure` succeeds).
fn start_calls_random_get() -> Vec<u8> {
    let wat = r#"(module
        (import "wasi_snapshot_preview1" "random_get" (func $r (param i32 i32) (result i32)))
        (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_2_1"))
        (func $report (param $v i32)
          (i32.store8 (i32.const 900) (i32.const 114)) (i32.store8 (i32.const 901) (i32.const 61))
          (i32.store8 (i32.const 902) (i32.add (i32.const 48) (i32.div_u (local.get $v) (i32.const 10))))
          (i32.store8 (i32.const 903) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
          (drop (call $log (i32.const 2) (i32.const 900) (i32.const 4))))
        (func (export "_start") (call $report (call $r (i32.const 100) (i32.const 8))))
        (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1)))"#;
    wat::parse_str(wat).unwrap()
}

fn restricted(name: &str, capabilities: Option<&[&str]>) -> std::sync::Arc<proxy_wasm_host::plugin::PluginInfo> {
    let authorizations = proxy_wasm_host::authorizations::Authorizations { capabilities: capabilities.map(|c| c.iter().map(|s| s.to_string()).collect()), ..Default::default() };
    std::sync::Arc::new(proxy_wasm_host::plugin::PluginInfo::new(name, "", "vm", Vec::new()).with_authorizations(authorizations))
}

/// The errno `_start` got from `random_get` when the instance is shared by `plugins`.
fn start_up_random_get(plugins: Vec<std::sync::Arc<proxy_wasm_host::plugin::PluginInfo>>) -> (String, Vec<LogLine>) {
    let server = TestServer::new();
    let mut options = VmOptions::new(unique_vm_id("start-caps"));
    options.plugins = plugins;
    let code = load(&start_calls_random_get(), "start.wasm").unwrap();
    let _vm = proxy_wasm_host::vm::Vm::new(code, options, server.clone()).unwrap();
    let logs = server.logs();
    let report = logs.iter().find(|l| l.message.starts_with("r=")).map(|l| l.message.clone()).unwrap_or_default();
    (report, logs)
}

#[test]
fn a_wasi_call_denied_to_the_plugin_answers_enotcapable_also_from_start() {
    let (report, logs) = start_up_random_get(vec![restricted("only-logs", Some(&["proxy_log"]))]);
    assert_eq!(report, "r=76", "ENOTCAPABLE: {logs:?}");
    let denial = logs.iter().find(|l| l.message.starts_with("denied")).expect("the denial is logged");
    assert_eq!(denial.plugin, "only-logs");
    assert!(denial.message.starts_with("denied WASI call random_get: start-up code (_initialize, main, _start) runs for every plugin of the VM"), "{}", denial.message);
    // Allowed, it works.
    assert_eq!(start_up_random_get(vec![restricted("random", Some(&["proxy_log", "random_get"]))]).0, "r=00");
    // No plugin known (an embedder's VM): no restriction.
    assert_eq!(start_up_random_get(Vec::new()).0, "r=00");
}

#[test]
fn start_up_code_of_a_shared_instance_may_use_only_what_every_plugin_allows() {
    let both = start_up_random_get(vec![restricted("a", Some(&["proxy_log", "random_get"])), restricted("b", Some(&["proxy_log"]))]);
    assert_eq!(both.0, "r=76", "{:?}", both.1);
    assert!(both.1.iter().any(|l| l.plugin == "a,b" && l.message.starts_with("denied WASI call random_get")), "{:?}", both.1);
    // A plugin without a restriction allows everything: the other one's applies.
    assert_eq!(start_up_random_get(vec![restricted("free", None), restricted("b", Some(&["proxy_log"]))]).0, "r=76");
    assert_eq!(start_up_random_get(vec![restricted("a", Some(&["proxy_log", "random_get"])), restricted("free", None)]).0, "r=00");
}

#[test]
fn the_loader_starts_an_instance_under_the_restrictions_of_its_plugins() {
    use proxy_wasm_host::host::ServerHost;
    let dir = std::env::temp_dir().join(format!("pwh-start-caps-{RUNTIME}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("start.wasm"), start_calls_random_get()).unwrap();
    let vm_id = unique_vm_id("loader-caps");
    let yaml = format!(
        "config:\n  name: restricted\n  capability_restriction_config:\n    allowed_capabilities: [proxy_log, proxy_on_configure]\n  vm_config:\n    runtime: {RUNTIME}\n    vm_id: {vm_id}\n    code: {{ local: {{ filename: start.wasm }} }}\n"
    );
    std::fs::write(dir.join("plugins.yaml"), yaml).unwrap();
    let configs = proxy_wasm_host::files::load_file(&dir.join("plugins.yaml")).unwrap();
    let plugins = proxy_wasm_host::loader::load(&configs).unwrap();
    let server = TestServer::new();
    let _vms = proxy_wasm_host::loader::PluginVms::start(&plugins, |_| server.clone() as std::sync::Arc<dyn ServerHost>).unwrap();
    assert!(server.logged("r=76"), "{:?}", server.messages());
}

#[test]
fn environment_holds_only_the_configured_variables_and_args_are_empty() {
    let imports = r#"(import "wasi_snapshot_preview1" "environ_sizes_get" (func $es (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "environ_get" (func $eg (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "args_sizes_get" (func $as (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))"#;
    let body = r#"
      (call $report (call $es (i32.const 100) (i32.const 104)))
      (call $report (i32.load (i32.const 100)))
      (call $report (i32.load (i32.const 104)))
      (call $report (call $eg (i32.const 300) (i32.const 400)))
      ;; print the environment block through stdout
      (i32.store (i32.const 500) (i32.const 400)) (i32.store (i32.const 504) (i32.load (i32.const 104)))
      (drop (call $w (i32.const 1) (i32.const 500) (i32.const 1) (i32.const 508)))
      (call $report (call $as (i32.const 100) (i32.const 104)))
      (call $report (i32.add (i32.load (i32.const 100)) (i32.load (i32.const 104))))"#;
    let mut options = VmOptions::new(unique_vm_id("env"));
    options.environment = vec![("A".into(), "1".into()), ("NAME".into(), "pw".into())];
    std::env::set_var("PWH_HOST_SECRET", "must-not-leak");
    let h = run(&wasi_module("", imports, body), options);
    assert_eq!(reports(&h), vec!["r=00", "r=02", "r=12", "r=00", "r=00", "r=00"]);
    assert!(h.server.logged("A=1\u{0}NAME=pw\u{0}"), "{:?}", h.server.messages());
    assert!(!h.server.logged("must-not-leak"));
}

#[test]
fn clocks_answer_realtime_and_monotonic_and_refuse_unknown_ids() {
    let imports = r#"(import "wasi_snapshot_preview1" "clock_time_get" (func $ct (param i32 i64 i32) (result i32)))
        (import "wasi_snapshot_preview1" "clock_res_get" (func $cr (param i32 i32) (result i32)))"#;
    let body = r#"
      (call $report (call $ct (i32.const 0) (i64.const 1) (i32.const 100)))
      ;; realtime is after 2020-01-01 (1577836800 s)
      (call $report (i64.gt_u (i64.load (i32.const 100)) (i64.const 1577836800000000000)))
      (call $report (call $ct (i32.const 1) (i64.const 1) (i32.const 100)))
      (call $report (call $ct (i32.const 9) (i64.const 1) (i32.const 100)))
      (call $report (call $cr (i32.const 1) (i32.const 100)))
      (call $report (call $ct (i32.const 0) (i64.const 1) (i32.const 0xfffffffc)))"#;
    let h = run(&wasi_module("", imports, body), VmOptions::new(unique_vm_id("clk")));
    // An unknown clock is NOTSUP (58), as in cpp-host and the ABI spec.
    assert_eq!(reports(&h), vec!["r=00", "r=01", "r=00", "r=58", "r=00", "r=21"]);
}

#[test]
fn random_get_fills_up_to_64_kib_and_refuses_more() {
    let imports = r#"(import "wasi_snapshot_preview1" "random_get" (func $r (param i32 i32) (result i32)))"#;
    let body = r#"
      (call $report (call $r (i32.const 100) (i32.const 0)))
      (call $report (call $r (i32.const 100) (i32.const 32)))
      ;; 32 random bytes are not all zero
      (call $report (i64.ne (i64.or (i64.or (i64.load (i32.const 100)) (i64.load (i32.const 108))) (i64.or (i64.load (i32.const 116)) (i64.load (i32.const 124)))) (i64.const 0)))
      (call $report (call $r (i32.const 0) (i32.const 65536)))
      (call $report (call $r (i32.const 0) (i32.const 65537)))
      (call $report (call $r (i32.const 131000) (i32.const 1000)))"#;
    let h = run(&wasi_module("", imports, body), VmOptions::new(unique_vm_id("rnd")));
    assert_eq!(reports(&h), vec!["r=00", "r=00", "r=01", "r=00", "r=28", "r=21"]);
}

#[test]
fn unsupported_wasi_calls_answer_an_errno_instead_of_trapping() {
    let imports = r#"(import "wasi_snapshot_preview1" "fd_prestat_get" (func $pg (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "path_open" (func $po (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "fd_read" (func $fr (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "sched_yield" (func $sy (result i32)))
        (import "wasi_snapshot_preview1" "poll_oneoff" (func $po2 (param i32 i32 i32 i32) (result i32)))"#;
    let body = r#"
      (call $report (call $pg (i32.const 3) (i32.const 100)))
      (call $report (call $po (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 100)))
      (call $report (call $fr (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 100)))
      (call $report (call $sy))
      (call $report (call $po2 (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 100)))"#;
    let h = run(&wasi_module("", imports, body), VmOptions::new(unique_vm_id("nosup")));
    // As cpp-host: no preopened directory (BADF), nothing to open (NOENT, 44),
    // reading is not implemented (NOSYS, 52).
    assert_eq!(reports(&h), vec!["r=08", "r=44", "r=52", "r=00", "r=00"]);
}

#[test]
fn an_unknown_wasi_import_of_any_shape_answers_without_trapping() {
    // Names we do not implement are answered generically whatever the type the
    // module declares: several results, or floats, come back as zeros after
    // the errno.
    let imports = r#"(import "wasi_snapshot_preview1" "pw_no_such_call" (func $two (param i32) (result i32 i32)))
        (import "wasi_snapshot_preview1" "pw_no_such_float" (func $fl (param f64) (result f64)))"#;
    let body = r#"
      (call $two (i32.const 7))
      (call $report (i32.add (i32.const 1)))
      (call $report)
      (call $report (i32.trunc_f64_s (f64.add (f64.const 3) (call $fl (f64.const 1.5)))))"#;
    let module = wasi_module("", imports, body);
    if RUNTIME == proxy_wasm_host::config::RuntimeKind::Wamr {
        // WAMR hands back one result of a host function only: the module does not load
        // (instead of seeing garbage in its second result).
        let e = Harness::try_start_on(RUNTIME, &module, "", VmOptions::new(unique_vm_id("shape"))).err().unwrap();
        assert!(e.contains("pw_no_such_call returns 2 values; a host function returns at most one on WAMR"), "{e}");
        return;
    }
    let h = run(&module, VmOptions::new(unique_vm_id("shape")));
    assert_eq!(reports(&h), vec!["r=01", "r=58", "r=03"]);
}

#[test]
fn proc_exit_ends_the_call_and_is_logged() {
    let imports = r#"(import "wasi_unstable" "proc_exit" (func $exit (param i32)))"#;
    let body = r#"(call $exit (i32.const 3))"#;
    let e = Harness::try_start_on(RUNTIME, &wasi_module("", imports, body), "", VmOptions::new(unique_vm_id("exit"))).err().unwrap();
    assert!(e.contains("proxy_on_configure trapped: proc_exit(3)"), "{e}");
}

#[test]
fn start_up_may_log_but_not_touch_contexts_or_shared_state() {
    let wat = r#"(module
        (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
        (import "env" "proxy_set_shared_data" (func $set (param i32 i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 0) "init r=0")
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "_initialize")
          (drop (call $log (i32.const 2) (i32.const 0) (i32.const 4)))
          (i32.store8 (i32.const 7) (i32.add (i32.const 48) (call $set (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 4) (i32.const 0))))
          (drop (call $log (i32.const 2) (i32.const 0) (i32.const 8)))))"#;
    let h = Harness::start_on(RUNTIME, &wat::parse_str(wat).unwrap(), "");
    // INTERNAL_FAILURE is 10: '0' + 10 = ':'.
    assert_eq!(h.server.messages(), vec!["init", "init r=:"]);
}
}
