//! Contexts that outlive their callbacks, driven in memory with WAT modules
//! (tests/wat/): a plugin whose `on_done` returns false and never calls
//! `proxy_done` gets its contexts deleted once its `pause_timeout` is over;
//! a context of another plugin made effective keeps the caller's rights.

mod common;
common::for_each_runtime! {
use common::*;

use std::sync::Arc;
use std::time::{Duration, Instant};

use proxy_wasm_host::authorizations::Authorizations;
use proxy_wasm_host::plugin::PluginInfo;
use proxy_wasm_host::vm::{Vm, VmOptions};

const WAIT: Duration = Duration::from_millis(200);

fn never_done() -> Harness {
    let options = VmOptions::new(unique_vm_id("never-done"));
    let plugin = PluginInfo::new("never-done", "", options.vm_id.clone(), Vec::new()).with_done_timeout(WAIT);
    Harness::try_start_plugin(load(&wat_bytes("never_done"), "never_done.wasm").unwrap(), plugin, options, TestServer::new()).unwrap()
}

fn count(h: &Harness, line: &str) -> usize {
    h.server.messages().iter().filter(|m| *m == line).count()
}

#[test]
fn a_stream_whose_proxy_done_never_comes_is_deleted_once_the_plugins_pause_timeout_is_over() {
    let mut h = never_done();
    let (ctx, _stream) = h.stream(&[(":method", "GET")]);
    assert!(!h.vm.finish_stream(ctx).unwrap(), "on_done returned false: the context waits");
    assert_eq!(h.vm.context_count(), 2);
    assert!(h.vm.awaiting_done());
    // Before the wait is over nothing happens.
    assert_eq!(h.vm.expire_awaiting_done(Instant::now()), 0);
    assert_eq!(count(&h, &format!("on_delete ctx={ctx}")), 0);
    // After it, on_log and on_delete run as if proxy_done had come, and the context is gone.
    assert_eq!(h.vm.expire_awaiting_done(Instant::now() + WAIT), 1);
    let m = h.server.messages();
    let tail: Vec<&String> = m.iter().filter(|l| l.ends_with(&format!("ctx={ctx}"))).collect();
    assert_eq!(tail, [&format!("on_context_create ctx={ctx}"), &format!("on_done ctx={ctx}"), &format!("on_log ctx={ctx}"), &format!("on_delete ctx={ctx}")]);
    assert_eq!(h.vm.context_count(), 1);
    assert!(!h.vm.awaiting_done());
    assert!(h.server.logged("proxy_on_done of a stream context returned false and proxy_done did not come within 200ms (pause_timeout): the context is deleted"), "{:?}", h.server.messages());
}

#[test]
fn the_timeout_of_proxy_done_is_logged_once_per_plugin() {
    let mut h = never_done();
    for _ in 0..3 {
        let (ctx, _stream) = h.stream(&[]);
        h.vm.finish_stream(ctx).unwrap();
    }
    assert_eq!(h.vm.expire_awaiting_done(Instant::now() + WAIT), 3);
    assert_eq!(h.server.messages().iter().filter(|m| m.contains("proxy_done did not come")).count(), 1);
    assert_eq!(h.vm.context_count(), 1);
}

#[test]
fn a_new_stream_first_deletes_the_contexts_whose_wait_is_over() {
    let options = VmOptions::new(unique_vm_id("never-done"));
    let plugin = PluginInfo::new("never-done", "", options.vm_id.clone(), Vec::new()).with_done_timeout(Duration::from_millis(20));
    let mut h = Harness::try_start_plugin(load(&wat_bytes("never_done"), "never_done.wasm").unwrap(), plugin, options, TestServer::new()).unwrap();
    let (old, _stream) = h.stream(&[]);
    h.vm.finish_stream(old).unwrap();
    std::thread::sleep(Duration::from_millis(40));
    let (_new, _stream) = h.stream(&[]);
    assert_eq!(count(&h, &format!("on_delete ctx={old}")), 1, "{:?}", h.server.messages());
    assert_eq!(h.vm.context_count(), 2, "the root and the new stream");
}

#[test]
fn a_root_whose_proxy_done_never_comes_is_deleted_once_the_wait_is_over_and_on_done_runs_once() {
    let mut h = never_done();
    let root = h.root;
    assert!(!h.vm.shutdown_plugin(root).unwrap());
    assert!(!h.vm.shutdown_plugin(root).unwrap(), "a second shutdown waits too");
    assert_eq!(count(&h, &format!("on_done ctx={root}")), 1, "on_done is not called again");
    assert_eq!(h.vm.expire_awaiting_done(Instant::now() + WAIT), 1);
    assert_eq!(count(&h, &format!("on_delete ctx={root}")), 1);
    assert_eq!(h.vm.context_count(), 0);
    assert!(h.server.logged("proxy_on_done of a root context returned false"), "{:?}", h.server.messages());
}

// ------------------------------------------------------------------ effective context

/// Two plugins in one instance: `a` (restricted) then `b` (unrestricted,
/// root_id "b-root"), so `b`'s root context is `a`'s + 1.
fn two_plugins(a: Authorizations) -> (Vm, Arc<TestServer>, u32, u32) {
    let server = TestServer::new();
    let options = VmOptions::new(unique_vm_id("effective"));
    let code = load(&wat_bytes("effective_context"), "effective_context.wasm").unwrap();
    let mut vm = Vm::new(code, options.clone(), server.clone()).unwrap();
    let a = PluginInfo::new("a", "a-root", options.vm_id.clone(), Vec::new()).with_authorizations(a);
    let b = PluginInfo::new("b", "b-root", options.vm_id.clone(), Vec::new());
    let ra = vm.start_plugin(Arc::new(a)).unwrap();
    let rb = vm.start_plugin(Arc::new(b)).unwrap();
    assert_eq!(rb, ra + 1);
    (vm, server, ra, rb)
}

#[test]
fn a_context_of_another_plugin_made_effective_keeps_the_callers_rights() {
    let capabilities = ["proxy_log", "proxy_set_effective_context", "proxy_get_property", "proxy_on_tick", "proxy_on_vm_start", "proxy_on_configure"];
    let a = Authorizations { capabilities: Some(capabilities.iter().map(|s| s.to_string()).collect()), property_read: vec!["plugin_root_id".into()], ..Authorizations::unrestricted() };
    let (mut vm, server, ra, _rb) = two_plugins(a);
    vm.on_tick(ra).unwrap();
    let lines = server.logs();
    let reports: Vec<&str> = lines.iter().filter(|l| l.level == proxy_wasm_host::abi::LogLevel::Info).map(|l| l.message.as_str()).collect();
    assert_eq!(
        reports,
        [
            "set_effective_context=0", // any context of the instance, as in cpp-host
            "set_shared_data=10",      // a's capabilities, not b's: INTERNAL_FAILURE
            "plugin_name=1",           // a's properties.read: NOT_FOUND
            "plugin_root_id=0",
            "b-root", // the effective context is b's
        ]
    );
    // The denials are a's, and say so.
    let denials: Vec<(&str, &str)> = lines.iter().filter(|l| l.message.starts_with("denied")).map(|l| (l.plugin.as_str(), l.message.as_str())).collect();
    assert_eq!(
        denials,
        [
            ("a", "denied hostcall proxy_set_shared_data: not in capability_restriction_config.allowed_capabilities (logged once)"),
            ("a", "denied property read plugin_name: not in authorizations.properties.read (logged once)"),
        ]
    );
}

#[test]
fn the_other_plugins_own_callbacks_keep_its_own_rights() {
    // b, unrestricted, ticks: its root + 1 does not exist (BAD_ARGUMENT) and
    // everything else is allowed.
    let a = Authorizations { capabilities: Some(["proxy_log".to_string()].into()), ..Authorizations::unrestricted() };
    let (mut vm, server, _ra, rb) = two_plugins(a);
    vm.on_tick(rb).unwrap();
    let reports: Vec<String> = server.logs().into_iter().filter(|l| l.level == proxy_wasm_host::abi::LogLevel::Info).map(|l| l.message).collect();
    assert_eq!(reports, ["set_effective_context=2", "set_shared_data=0", "plugin_name=0", "plugin_root_id=0", "b-root"]);
}
}
