//! Recycling on Traffic Server (`vm_config.kill_options`, Otoroshi-style): an
//! instance is replaced after a number of calls, when its memory passes a
//! fraction of its maximum, or after it sat unused; the fresh instance runs
//! `proxy_on_vm_start` and `proxy_on_configure` again. The Rust-SDK filter
//! counts its VM starts in the shared-data key `vm.starts`.

mod e2e;

use std::time::Duration;

use e2e::ats::{AtsOptions, TrafficServer};
use e2e::client::Request;
use e2e::origin::Origin;

const WAIT: Duration = Duration::from_secs(5);

fn start(test: &str, kill_options: &str) -> (Origin, TrafficServer) {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let yaml = format!(
        "config:\n  name: recycled\n  vm_config:\n    vm_id: {test}\n    kill_options: {kill_options}\n    code: {{ local: {{ filename: \"@REPO@/build/plugins/rust_sdk_filter.wasm\" }} }}\n"
    );
    let ats = TrafficServer::start(
        AtsOptions::new(test)
            .origin(origin.port())
            .exec_threads(1)
            .file("filter.yaml", yaml)
            .global_plugin(&["filter.yaml"]),
    );
    (origin, ats)
}

/// How many times the plugin's VM started (start-up check included), read through the plugin.
fn vm_starts(ats: &TrafficServer) -> u64 {
    let r = ats
        .send(&Request::get("/").header("x-pw-test", "shared-get").header("x-pw-key", "vm.starts"))
        .unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    r.body_str().parse().unwrap_or_else(|_| panic!("vm.starts = {:?}", r.body_str()))
}

#[test]
fn an_instance_is_replaced_after_max_calls_and_starts_again() {
    let (_origin, ats) = start("ats-recycle-calls", "{ max_calls: 30 }");
    let before = vm_starts(&ats);
    for _ in 0..12 {
        let r = ats.get("/").unwrap();
        assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")));
    }
    assert!(ats.wait_for_log("after recycling: recycled: ", WAIT), "{}", ats.log_report());
    assert!(ats.diags_log().contains("(kill_options.max_calls 30)"), "{}", ats.log_report());
    assert!(vm_starts(&ats) > before, "proxy_on_vm_start ran again in the new instance");
}

#[test]
fn an_instance_whose_memory_passes_max_memory_usage_is_replaced() {
    // 1% of 4 GiB (no memory limit set) is about 41 MiB; the request allocates 64 MiB.
    let (_origin, ats) = start("ats-recycle-memory", "{ max_memory_usage: 0.01 }");
    let before = vm_starts(&ats);
    let r = ats
        .send(
            &Request::get("/")
                .header("x-pw-test", "alloc")
                .header("x-pw-alloc-mb", "64")
                .timeout(Duration::from_secs(20)),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert!(vm_starts(&ats) > before, "{}", ats.log_report());
    assert!(ats.diags_log().contains("kill_options.max_memory_usage 0.01"), "{}", ats.log_report());
}

#[test]
fn an_instance_unused_for_max_unused_duration_is_shut_down_and_a_fresh_one_serves_the_next_request() {
    let (_origin, ats) = start("ats-recycle-idle", "{ max_unused_duration: 1s }");
    let before = vm_starts(&ats);
    assert!(
        ats.wait_for_log("replaced after recycling: recycled: unused for", Duration::from_secs(10)),
        "{}",
        ats.log_report()
    );
    let r = ats.get("/").unwrap();
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")));
    assert!(vm_starts(&ats) > before, "{}", ats.log_report());
}
