//! Per-plugin caps enforced by the core (`vm_config.limits`), driven in
//! memory with WAT modules: log lines per second (`proxy_log` and WASI
//! `fd_write` together), the shortest tick period.

mod common;
common::for_each_runtime! {
use common::*;

use std::time::Duration;

use proxy_wasm_host::abi::LogLevel;
use proxy_wasm_host::config::Quotas;
use proxy_wasm_host::plugin::PluginInfo;
use proxy_wasm_host::vm::VmOptions;

/// A module whose `proxy_on_tick` writes five lines with `proxy_log` at
/// `level` and five with WASI `fd_write` to stdout, and whose
/// `proxy_on_configure` asks for a tick period of `tick_ms`.
fn chatty(level: u32, tick_ms: u32) -> Vec<u8> {
    let wat = format!(
        r#"(module
        (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
        (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
        (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 200) "proxy_log line")
        (data (i32.const 220) "fd_write line\n")
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_configure") (param i32 i32) (result i32)
          (drop (call $tick (i32.const {tick_ms})))
          (i32.const 1))
        (func (export "proxy_on_tick") (param i32)
          (local $i i32)
          (i32.store (i32.const 100) (i32.const 220)) (i32.store (i32.const 104) (i32.const 14))
          (loop $lines
            (drop (call $log (i32.const {level}) (i32.const 200) (i32.const 14)))
            (drop (call $w (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 120)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $lines (i32.lt_u (local.get $i) (i32.const 5)))))
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0)))"#
    );
    wat::parse_str(&wat).unwrap()
}

fn start(bytes: &[u8], quotas: Quotas) -> Harness {
    let server = TestServer::new();
    *server.log_level.lock().unwrap() = LogLevel::Info;
    let options = VmOptions::new(unique_vm_id("quotas"));
    let plugin = PluginInfo::new("chatty", "", options.vm_id.clone(), Vec::new()).with_quotas(quotas);
    Harness::try_start_plugin(load(bytes, "chatty.wasm").unwrap(), plugin, options, server).unwrap()
}

fn lines(h: &Harness) -> Vec<String> {
    h.server.messages()
}

#[test]
fn log_lines_over_the_rate_are_dropped_and_counted_when_the_next_line_comes() {
    let mut h = start(&chatty(2, 0), Quotas { max_log_lines_per_second: 3, ..Quotas::default() });
    h.vm.on_tick(h.root).unwrap();
    // proxy_log and fd_write lines share the budget: the first three pass.
    assert_eq!(lines(&h), ["proxy_log line", "fd_write line", "proxy_log line"]);
    std::thread::sleep(Duration::from_millis(1100));
    h.server.clear_logs();
    h.vm.on_tick(h.root).unwrap();
    assert_eq!(lines(&h), ["7 log lines dropped: over vm_config.limits.max_log_lines_per_second (3)", "proxy_log line", "fd_write line", "proxy_log line"]);
    assert_eq!(h.server.logs()[0].plugin, "chatty");
    assert_eq!(h.server.logs()[0].level, LogLevel::Warn);
}

#[test]
fn the_count_of_dropped_lines_is_written_when_a_callback_returns_in_a_later_second() {
    let mut h = start(&chatty(2, 0), Quotas { max_log_lines_per_second: 3, ..Quotas::default() });
    h.vm.on_tick(h.root).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    h.server.clear_logs();
    // A callback that logs nothing.
    let _ = h.request(&[(":method", "GET")], true);
    assert_eq!(lines(&h), ["7 log lines dropped: over vm_config.limits.max_log_lines_per_second (3)"]);
}

#[test]
fn lines_below_the_servers_log_level_do_not_count() {
    // Debug lines (level 1) with the server at Info: the server drops them, the cap does not.
    let mut h = start(&chatty(1, 0), Quotas { max_log_lines_per_second: 5, ..Quotas::default() });
    h.vm.on_tick(h.root).unwrap();
    let info: Vec<String> = h.server.logs().into_iter().filter(|l| l.level == LogLevel::Info).map(|l| l.message).collect();
    assert_eq!(info, ["fd_write line"; 5]);
}

#[test]
fn a_tick_period_shorter_than_min_tick_period_is_raised_to_it_and_logged_once() {
    let h = start(&chatty(2, 5), Quotas { min_tick_period: Duration::from_millis(50), ..Quotas::default() });
    assert_eq!(h.server.record.lock().unwrap().ticks.get(&h.root), Some(&Some(Duration::from_millis(50))));
    assert_eq!(lines(&h), ["tick period of 5 ms raised to 50ms (vm_config.limits.min_tick_period) (logged once)"]);
}

#[test]
fn a_tick_period_at_or_above_min_tick_period_is_kept() {
    let h = start(&chatty(2, 50), Quotas { min_tick_period: Duration::from_millis(50), ..Quotas::default() });
    assert_eq!(h.server.record.lock().unwrap().ticks.get(&h.root), Some(&Some(Duration::from_millis(50))));
    let h = start(&chatty(2, 0), Quotas { min_tick_period: Duration::from_millis(50), ..Quotas::default() });
    assert_eq!(h.server.record.lock().unwrap().ticks.get(&h.root), Some(&None), "0 stops the timer");
    assert!(lines(&h).is_empty());
}
}
