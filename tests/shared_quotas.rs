//! Caps on shared state (`vm_config.limits`: `max_shared_data_size`,
//! `max_queue_length`, `max_metrics`), enforced by the core, driven in memory
//! with the real Rust-SDK filter: each refusal answers a status the SDK
//! accepts (no trap) and is logged once per plugin.

mod common;
use common::*;

use proxy_wasm_host::config::Quotas;
use proxy_wasm_host::plugin::PluginInfo;
use proxy_wasm_host::vm::{Verdict, VmOptions};

const PLUGIN: &str = "rust_sdk_filter.wasm";

fn start(quotas: Quotas) -> (Harness, std::sync::Arc<TestServer>) {
    let options = VmOptions::new(unique_vm_id("quota"));
    let plugin = PluginInfo::new("capped", "", options.vm_id.clone(), Vec::new()).with_quotas(quotas);
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

/// `shared-set` answers locally: (HTTP status, the set's status name).
fn shared_set(h: &mut Harness, key: &str, value: &str) -> (u32, String) {
    let (_ctx, stream, v) = h.request(&req("shared-set", &[("x-pw-key", key), ("x-pw-value", value)]), true);
    assert_eq!(v, Verdict::Stop);
    let lr = stream.data().local_response.expect("local response");
    (lr.status, String::from_utf8_lossy(&lr.body).into_owned())
}

fn enqueue(h: &mut Harness, value: &str, count: &str) -> String {
    let (ctx, stream, _) =
        h.request(&req("enqueue", &[("x-pw-queue-value", value), ("x-pw-queue-count", count)]), true);
    h.respond(ctx, &stream, &[(":status", "200")], true);
    stream.data().response_header("x-pw-enqueue").unwrap_or_default()
}

fn held(h: &Harness) -> u64 {
    proxy_wasm_host::shared::process_store().held_bytes(&h.plugin.vm_id)
}

#[test]
fn a_set_past_max_shared_data_size_answers_cas_mismatch_stores_nothing_and_is_logged_once() {
    let (mut h, server) = start(Quotas { max_shared_data_size: 4096, ..Default::default() });
    let before = held(&h);
    assert!(before > 0 && before < 2048, "the filter's own start-up keys: {before}");
    let big = "x".repeat(4096);
    assert_eq!(shared_set(&mut h, "big", &big), (409, "CAS_MISMATCH".to_string()));
    assert_eq!(shared_set(&mut h, "big2", &big), (409, "CAS_MISMATCH".to_string()));
    assert_eq!(h.shared("big"), None);
    assert_eq!(held(&h), before);
    // Smaller values still fit, and the plugin keeps serving.
    assert_eq!(shared_set(&mut h, "small", "ok").0, 200);
    let refusals = server
        .messages()
        .iter()
        .filter(|m| m.contains("refused set_shared_data over vm_config.limits.max_shared_data_size"))
        .count();
    assert_eq!(refusals, 1, "{:?}", server.messages());
    assert!(server.logged("over its max_shared_data_size of 4096"), "{:?}", server.messages());
}

#[test]
fn one_vm_at_its_quota_does_not_stop_another_from_writing() {
    let quotas = Quotas { max_shared_data_size: 4096, ..Default::default() };
    let (mut full, _) = start(quotas);
    let (mut other, _) = start(quotas);
    let mut i = 0;
    while shared_set(&mut full, &format!("k{i}"), &"v".repeat(500)).0 == 200 {
        i += 1;
        assert!(i < 20);
    }
    assert!(held(&full) <= 4096);
    assert_eq!(shared_set(&mut other, "k", &"v".repeat(2000)).0, 200);
    assert_eq!(other.shared("k").map(|v| v.len()), Some(2000));
}

#[test]
fn an_enqueue_past_max_queue_length_answers_not_found_and_is_logged_once() {
    let (mut h, server) = start(Quotas { max_queue_length: 3, ..Default::default() });
    // One callback: on_queue_ready cannot drain the queue meanwhile.
    assert_eq!(enqueue(&mut h, "item", "5"), "OK OK OK NOT_FOUND NOT_FOUND");
    assert_eq!(enqueue(&mut h, "item", "1"), "NOT_FOUND");
    let refusals = server.messages().iter().filter(|m| m.contains("over max_queue_length")).count();
    assert_eq!(refusals, 1, "{:?}", server.messages());
    // Once drained, the queue takes items again.
    h.deliver_queue_ready();
    assert_eq!(h.shared("queue.count").as_deref(), Some("3"));
    assert_eq!(enqueue(&mut h, "item", "2"), "OK OK");
}

#[test]
fn queued_bytes_count_against_max_shared_data_size() {
    let (mut h, server) = start(Quotas { max_shared_data_size: 8192, ..Default::default() });
    let item = "q".repeat(3000);
    assert_eq!(enqueue(&mut h, &item, "3"), "OK OK NOT_FOUND");
    assert!(server.logged("over max_shared_data_size"), "{:?}", server.messages());
    // The items hold room that shared data then lacks, until they are dequeued.
    assert_eq!(shared_set(&mut h, "k", &"v".repeat(3000)).0, 409);
    h.deliver_queue_ready();
    assert_eq!(shared_set(&mut h, "k", &"v".repeat(3000)).0, 200);
}

#[test]
fn define_metric_past_max_metrics_is_refused_and_logged() {
    // The filter defines three metrics in on_configure; the SDKs accept no
    // refusal from define_metric, so with room for two it traps there.
    let options = VmOptions::new(unique_vm_id("quota-metrics"));
    let plugin =
        PluginInfo::new("metrics", "", options.vm_id.clone(), br#"{"metric_prefix":"quota_metrics_a"}"#.to_vec())
            .with_quotas(Quotas { max_metrics: 2, ..Default::default() });
    let server = TestServer::new();
    let e = Harness::try_start_plugin(built_code(PLUGIN), plugin, options, server.clone()).err().expect("start fails");
    assert!(e.contains("proxy_on_configure trapped"), "{e}");
    assert!(server.logged("refused define_metric over vm_config.limits.max_metrics"), "{:?}", server.messages());
    assert!(server.logged("already defined 2 metrics, its max_metrics"), "{:?}", server.messages());
    // With room for three it runs, and defining the same name again is not a new metric.
    let options = VmOptions::new(unique_vm_id("quota-metrics"));
    let plugin =
        PluginInfo::new("metrics", "", options.vm_id.clone(), br#"{"metric_prefix":"quota_metrics_b"}"#.to_vec())
            .with_quotas(Quotas { max_metrics: 3, ..Default::default() });
    let mut h = Harness::try_start_plugin(built_code(PLUGIN), plugin, options, TestServer::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let (ctx, stream, _) = h.request(&req("metrics", &[]), true);
    h.respond(ctx, &stream, &[(":status", "200")], true);
    assert_eq!(stream.data().response_header("x-pw-metric-redefine-same-id").as_deref(), Some("true"));
}

#[test]
fn writes_into_other_vms_data_count_for_the_writer() {
    // With global_map_access.write, writing under ever new vm_ids gains no room.
    use proxy_wasm_host::authorizations::{Access, Authorizations};
    let options = VmOptions::new(unique_vm_id("quota-global"));
    let plugin = PluginInfo::new("global-writer", "", options.vm_id.clone(), Vec::new())
        .with_authorizations(Authorizations { global_map_access: Access::ALL, ..Default::default() })
        .with_quotas(Quotas { max_shared_data_size: 8192, ..Default::default() });
    let server = TestServer::new();
    let mut h = Harness::try_start_plugin(built_code(PLUGIN), plugin, options, server.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    let value = "g".repeat(3000);
    let statuses: Vec<u32> =
        (0..4).map(|_| shared_set(&mut h, &format!("{}::k", unique_vm_id("elsewhere")), &value).0).collect();
    assert_eq!(statuses, [200, 200, 409, 409], "{:?}", server.messages());
    assert!(held(&h) <= 8192);
}
