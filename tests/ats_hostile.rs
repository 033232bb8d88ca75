//! Hostile modules on Traffic Server: bad pointers and lengths in every kind of
//! hostcall get INVALID_MEMORY_ACCESS (or BAD_ARGUMENT) and never crash the
//! server or trap the module (tests/wat/hostile.wat, cases in tests/wat/README.md).

mod e2e;

use std::time::Duration;

use e2e::ats::{AtsOptions, TrafficServer};
use e2e::client::Request;
use e2e::origin::Origin;

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn out_of_bounds_pointers_get_invalid_memory_access_and_the_server_keeps_serving() {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let yaml = "config:\n  name: hostile\n  configuration: hostile\n  vm_config:\n    vm_id: hostile\n    code: { local: { filename: \"@REPO@/build/plugins/hostile.wasm\" } }\n";
    let ats = TrafficServer::start(
        AtsOptions::new("ats-hostile")
            .origin(origin.port())
            .exec_threads(1)
            .file("hostile.yaml", yaml)
            .global_plugin(&["hostile.yaml"]),
    );
    let r = ats
        .send(&Request::post("/echo", "hello").timeout(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    for line in ["hostile configure done", "hostile request_headers done", "hostile request_body done"] {
        assert!(ats.wait_for_log(line, WAIT), "{line}\n{}", ats.log_report());
    }
    let logs = ats.diags_log();
    for (case, status) in [
        ("cfg_get_ret_ptr_oob", 6),
        ("log_msg_oob", 6),
        ("log_ptr_len_wrap", 6),
        ("hdr_get_key_oob", 6),
        ("hdr_get_ret_straddle", 6),
        ("hdr_get_map_99", 2),
        ("hdr_add_probe", 0),
    ] {
        assert!(logs.contains(&format!("{case}={status}")), "{case}={status}\n{}", ats.log_report());
    }
    assert!(!logs.contains("trapped"), "no hostile call trapped the module\n{}", ats.log_report());
    // The same instance goes on serving.
    for _ in 0..3 {
        assert_eq!(ats.send(&Request::get("/again")).unwrap().status, 200);
    }
    ats.assert_running();
}
