//! Authorizations enforced by the core, driven in memory with the real
//! Rust-SDK filter: shared data of its own VM and of others, properties,
//! outgoing calls, capabilities (see src/authorizations.rs).

mod common;
use common::*;

use proxy_wasm_host::authorizations::{Access, Authorizations};
use proxy_wasm_host::plugin::PluginInfo;
use proxy_wasm_host::vm::{Verdict, VmOptions};

const PLUGIN: &str = "rust_sdk_filter.wasm";

fn start(authorizations: Authorizations) -> (Harness, std::sync::Arc<TestServer>) {
    let options = VmOptions::new(unique_vm_id("authz"));
    let plugin = PluginInfo::new("guarded", "", options.vm_id.clone(), Vec::new()).with_authorizations(authorizations);
    let server = TestServer::new();
    let h = Harness::try_start_plugin(built_code(PLUGIN), plugin, options, server.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    (h, server)
}

fn req<'a>(case: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![
        (":method", "GET"),
        (":path", "/p"),
        (":authority", "example.com"),
        (":scheme", "http"),
        ("x-pw-test", case),
    ];
    v.extend_from_slice(extra);
    v
}

fn local(h: &mut Harness, case: &str, extra: &[(&str, &str)]) -> (u32, String) {
    let (_ctx, stream, v) = h.request(&req(case, extra), true);
    assert_eq!(v, Verdict::Stop, "{case}");
    let lr = stream.data().local_response.expect("local response");
    (lr.status, String::from_utf8_lossy(&lr.body).into_owned())
}

#[test]
fn another_vms_shared_data_is_reachable_as_vm_id_colons_key_only_with_global_map_access() {
    let store = proxy_wasm_host::shared::process_shared_data();
    let other = unique_vm_id("other");
    store.set(&other, b"secret", b"42", 0).unwrap();
    let key = format!("{other}::secret");

    // Default: "<vm>::key" is just a key of its own (absent).
    let (mut h, _) = start(Authorizations::default());
    assert_eq!(local(&mut h, "shared-get", &[("x-pw-key", &key)]).0, 404);

    // Read granted: the other VM's value.
    let (mut h, _) =
        start(Authorizations { global_map_access: Access { read: true, write: false }, ..Default::default() });
    assert_eq!(local(&mut h, "shared-get", &[("x-pw-key", &key)]), (200, "42".to_string()));
}

#[test]
fn a_denied_shared_data_read_looks_absent_and_is_logged_once() {
    let (mut h, server) =
        start(Authorizations { plugin_map_access: Access { read: false, write: true }, ..Default::default() });
    let store = proxy_wasm_host::shared::process_shared_data();
    store.set(&h.plugin.vm_id, b"k", b"v", 0).unwrap();
    assert_eq!(local(&mut h, "shared-get", &[("x-pw-key", "k")]).0, 404);
    assert_eq!(local(&mut h, "shared-get", &[("x-pw-key", "k")]).0, 404);
    let denials = server.messages().iter().filter(|m| m.contains("denied shared data read")).count();
    assert_eq!(denials, 1, "{:?}", server.messages());
}

#[test]
fn a_denied_shared_data_write_is_refused_and_logged() {
    // The filter writes shared data in proxy_on_vm_start; the SDK panics on the
    // refusal, so the plugin fails to start, and the denial says why.
    let options = VmOptions::new(unique_vm_id("authz-ro"));
    let authorizations =
        Authorizations { plugin_map_access: Access { read: true, write: false }, ..Default::default() };
    let plugin =
        PluginInfo::new("read-only", "", options.vm_id.clone(), Vec::new()).with_authorizations(authorizations);
    let server = TestServer::new();
    let e = Harness::try_start_plugin(built_code(PLUGIN), plugin, options.clone(), server.clone())
        .err()
        .expect("start fails");
    assert!(e.contains("proxy_on_vm_start trapped"), "{e}");
    assert!(server.logged("denied shared data write of vm_id"), "{:?}", server.messages());
    assert_eq!(proxy_wasm_host::shared::process_shared_data().get(&options.vm_id, b"vm.starts"), None);
}

#[test]
fn properties_outside_the_read_list_are_not_found() {
    let (mut h, server) = start(Authorizations {
        property_read: vec!["plugin_name".into(), "request.path".into()],
        ..Default::default()
    });
    let (ctx, stream, _) = h.request(&req("properties", &[]), true);
    h.respond(ctx, &stream, &[(":status", "200")], true);
    let path = stream.data().response_header("x-pw-prop-request-path");
    assert_eq!(path.as_deref(), Some("/p"));
    let source = stream.data().response_header("x-pw-prop-source-address");
    assert!(source.as_deref().map_or(true, |v| v == "(none)" || v.is_empty()), "{source:?}");
    assert!(server.logged("denied property read"), "{:?}", server.messages());
}

#[test]
fn an_http_call_outside_allowed_hosts_answers_bad_argument_and_reaches_no_server() {
    let (mut h, server) = start(Authorizations { allowed_hosts: vec!["10.0.0.1:80".into()], ..Default::default() });
    let (ctx, stream, v) = h.request(&req("http-call", &[]), true);
    assert_eq!(v, Verdict::Continue, "nothing to wait for");
    h.respond(ctx, &stream, &[(":status", "200")], true);
    assert_eq!(stream.data().response_header("x-pw-callout-dispatch").as_deref(), Some("BAD_ARGUMENT"));
    assert!(server.take_http_calls().is_empty());
    assert!(server.logged("denied http_call to \"127.0.0.1:8081\""), "{:?}", server.messages());
}

// ------------------------------------------------------------ shared queues

/// A plugin (all rights on its own VM) whose queue `q1` another plugin will try to use.
fn queue_owner() -> (Harness, u32) {
    let options = VmOptions::new(unique_vm_id("queue-owner"));
    let plugin =
        PluginInfo::new("owner", "", options.vm_id.clone(), Vec::new()).with_authorizations(Authorizations::default());
    let h = Harness::try_start_plugin(built_code(PLUGIN), plugin, options, TestServer::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let id = proxy_wasm_host::shared::process_queues()
        .resolve(&h.plugin.vm_id, "q1")
        .expect("q1 registered in on_configure");
    (h, id)
}

fn report(h: &mut Harness, case: &str, extra: &[(&str, &str)], header: &str) -> Option<String> {
    let (ctx, stream, _) = h.request(&req(case, extra), true);
    h.respond(ctx, &stream, &[(":status", "200")], true);
    stream.data().response_header(header)
}

fn waiting(id: u32) -> usize {
    proxy_wasm_host::shared::process_store().queue_len(id).unwrap()
}

#[test]
fn another_vms_queue_is_not_found_for_resolve_dequeue_and_enqueue_without_global_map_access() {
    let (owner, id) = queue_owner();
    proxy_wasm_host::shared::process_queues().enqueue(id, b"private").unwrap();
    let (mut h, server) = start(Authorizations::default());
    let id_text = id.to_string();
    assert_eq!(
        report(&mut h, "enqueue", &[("x-pw-queue-vm", &owner.plugin.vm_id)], "x-pw-queue-resolve").as_deref(),
        Some("NOT_FOUND")
    );
    // Its id, however learnt, does not help.
    assert_eq!(report(&mut h, "dequeue", &[("x-pw-queue-id", &id_text)], "x-pw-dequeue").as_deref(), Some("NOT_FOUND"));
    assert_eq!(report(&mut h, "dequeue", &[("x-pw-queue-id", &id_text)], "x-pw-dequeue").as_deref(), Some("NOT_FOUND"));
    assert_eq!(
        report(&mut h, "enqueue", &[("x-pw-queue-id", &id_text), ("x-pw-queue-value", "forged")], "x-pw-enqueue")
            .as_deref(),
        Some("NOT_FOUND")
    );
    assert_eq!(waiting(id), 1, "the item is still there, nothing was added");
    assert_eq!(proxy_wasm_host::shared::process_queues().dequeue(id).unwrap(), b"private");
    let denials = |what: &str| server.messages().iter().filter(|m| m.contains(what)).count();
    assert_eq!(denials("denied shared queue dequeue from a queue of vm_id"), 1, "logged once: {:?}", server.messages());
    assert_eq!(denials("denied shared queue enqueue to a queue of vm_id"), 1, "{:?}", server.messages());
    assert!(server.logged("authorizations.global_map_access.read is false"), "{:?}", server.messages());
}

#[test]
fn global_map_access_read_allows_resolving_and_dequeuing_another_vms_queue_but_not_enqueuing() {
    let (owner, id) = queue_owner();
    proxy_wasm_host::shared::process_queues().enqueue(id, b"readable").unwrap();
    let (mut h, server) =
        start(Authorizations { global_map_access: Access { read: true, write: false }, ..Default::default() });
    assert_eq!(
        report(
            &mut h,
            "enqueue",
            &[("x-pw-queue-vm", &owner.plugin.vm_id), ("x-pw-queue-count", "0")],
            "x-pw-queue-resolved-id"
        ),
        Some(id.to_string())
    );
    assert_eq!(
        report(&mut h, "dequeue", &[("x-pw-queue-id", &id.to_string())], "x-pw-dequeue").as_deref(),
        Some("OK readable")
    );
    assert_eq!(
        report(&mut h, "enqueue", &[("x-pw-queue-id", &id.to_string())], "x-pw-enqueue").as_deref(),
        Some("NOT_FOUND")
    );
    assert_eq!(waiting(id), 0);
    assert!(server.logged("authorizations.global_map_access.write is false"), "{:?}", server.messages());
}

#[test]
fn global_map_access_write_allows_enqueuing_to_another_vms_queue_but_not_dequeuing() {
    let (_owner, id) = queue_owner();
    let (mut h, _) =
        start(Authorizations { global_map_access: Access { read: false, write: true }, ..Default::default() });
    assert_eq!(
        report(&mut h, "enqueue", &[("x-pw-queue-id", &id.to_string()), ("x-pw-queue-value", "sent")], "x-pw-enqueue")
            .as_deref(),
        Some("OK")
    );
    assert_eq!(
        report(&mut h, "dequeue", &[("x-pw-queue-id", &id.to_string())], "x-pw-dequeue").as_deref(),
        Some("NOT_FOUND")
    );
    assert_eq!(waiting(id), 1);
    assert_eq!(proxy_wasm_host::shared::process_queues().dequeue(id).unwrap(), b"sent");
}

#[test]
fn its_own_queues_follow_plugin_map_access() {
    let (mut h, server) =
        start(Authorizations { plugin_map_access: Access { read: false, write: true }, ..Default::default() });
    // Registered in on_configure (either right will do), enqueue writes, dequeue reads.
    assert_eq!(report(&mut h, "enqueue", &[], "x-pw-enqueue").as_deref(), Some("OK"));
    assert_eq!(report(&mut h, "dequeue", &[], "x-pw-dequeue").as_deref(), Some("NOT_FOUND"));
    assert!(
        server.logged("authorizations.plugin_map_access.read is false for its own shared data and queues"),
        "{:?}",
        server.messages()
    );
}
