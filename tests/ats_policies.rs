//! The policy case that is about Traffic Server itself: a global plugin and a
//! remap (per-route) plugin with one `vm_id` share their shared data. The
//! failure policies (a trap in each callback under each policy),
//! `max_body_size` and authorizations are in tests/conformance_policies.rs,
//! written once for both servers.

mod e2e;

use std::time::Duration;

use e2e::ats::{AtsOptions, TrafficServer};
use e2e::client::Request;
use e2e::origin::Origin;

fn send(ats: &TrafficServer, req: Request) -> e2e::client::Response {
    ats.send(&req.timeout(Duration::from_secs(10))).unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()))
}

#[test]
fn global_and_per_route_plugins_with_one_vm_id_share_their_shared_data() {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let port = origin.port();
    let yaml = |name: &str| {
        format!("config:\n  name: {name}\n  vm_config:\n    vm_id: common\n    code: {{ local: {{ filename: \"@REPO@/build/plugins/rust_sdk_filter.wasm\" }} }}\n")
    };
    let remap = format!("map http://route.test/ http://127.0.0.1:{port}/ @plugin=proxy_wasm_ats.so @pparam=route.yaml\nmap / http://127.0.0.1:{port}/\n");
    let ats = TrafficServer::start(
        AtsOptions::new("ats-shared-global-remap")
            .origin(port)
            .remap_config(remap)
            .file("global.yaml", yaml("global"))
            .file("route.yaml", yaml("route"))
            .global_plugin(&["global.yaml"]),
    );
    // On route.test both plugins count (2 per request); elsewhere only the global one.
    let r = send(&ats, Request::get("/").host("other.test").header("x-pw-test", "shared").header("x-pw-key", "hits"));
    assert_eq!(r.header("x-pw-shared"), Some("1"), "{}", ats.log_report());
    let r = send(&ats, Request::get("/").host("route.test").header("x-pw-test", "shared").header("x-pw-key", "hits"));
    let seen: Vec<&str> = r.header_all("x-pw-shared");
    assert_eq!(seen, vec!["2", "3"], "one store for both: {:?}\n{}", r.headers, ats.log_report());
}
