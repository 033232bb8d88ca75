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
    let h = run(&wasi_module("", imports, body), VmOptions::new(unique_vm_id("shape")));
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
