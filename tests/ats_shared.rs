//! Shared queues and shared data on Traffic Server under the operator's
//! rights and caps: another VM's queue without `global_map_access`, and the
//! `vm_config.limits` caps on shared data and queue length. A real
//! traffic_server with one remap rule per plugin (host `<name>.test`), the
//! Rust-SDK test filter (tests/plugins/README.md).

mod e2e;

use std::time::{Duration, Instant};

use e2e::ats::{AtsOptions, TrafficServer};
use e2e::client::{Request, Response};
use e2e::origin::Origin;

const WAIT: Duration = Duration::from_secs(5);

/// The Rust-SDK filter named `name` in VM `<name>_vm`; `extra` goes at the
/// plugin level, `limits` into `vm_config.limits`.
fn yaml(name: &str, extra: &str, limits: &str) -> String {
    let limits = if limits.is_empty() { String::new() } else { format!("    limits: {{ {limits} }}\n") };
    format!(
        r#"config:
  name: "{name}"
{extra}  vm_config:
    vm_id: "{name}_vm"
{limits}    code:
      local:
        filename: "@REPO@/build/plugins/rust_sdk_filter.wasm"
"#
    )
}

/// Traffic Server (2 threads) with a remap rule `http://<name>.test/` per plugin.
fn start(test: &str, plugins: &[(&str, String)]) -> (Origin, TrafficServer) {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let port = origin.port();
    let mut remap = String::new();
    let mut opts = AtsOptions::new(test).origin(port).exec_threads(2);
    for (name, text) in plugins {
        remap.push_str(&format!("map http://{name}.test/ http://127.0.0.1:{port}/ @plugin=proxy_wasm_ats.so @pparam={name}.yaml\n"));
        opts = opts.file(format!("{name}.yaml"), text.clone());
    }
    remap.push_str(&format!("map / http://127.0.0.1:{port}/\n"));
    let ats = TrafficServer::start(opts.remap_config(remap));
    (origin, ats)
}

fn send(ats: &TrafficServer, host: &str, req: Request) -> Response {
    ats.send(&req.host(format!("{host}.test"))).unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()))
}

fn case(cases: &str) -> Request {
    Request::get("/p").header("x-pw-test", cases)
}

fn wait_shared(ats: &TrafficServer, host: &str, key: &str, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = send(ats, host, case("shared-get").header("x-pw-key", key)).body_str();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{host}: shared {key} = {got:?}, want {want:?}\n{}", ats.log_report());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn another_vms_queue_is_not_found_without_global_map_access() {
    let granted = "  authorizations:\n    global_map_access: { read: true, write: true }\n";
    let (_origin, ats) = start("ats-queue-rights", &[("owner", yaml("owner", "", "")), ("intruder", yaml("intruder", "", "")), ("granted", yaml("granted", granted, ""))]);
    let id = send(&ats, "owner", case("config")).header("x-pw-queue-id").map(str::to_string).unwrap_or_else(|| panic!("{}", ats.log_report()));
    // Without global_map_access: not found by name, and its id neither reads nor writes.
    let r = send(&ats, "intruder", case("enqueue").header("x-pw-queue-vm", "owner_vm"));
    assert_eq!(r.header("x-pw-queue-resolve"), Some("NOT_FOUND"), "{}", ats.log_report());
    let r = send(&ats, "intruder", case("enqueue, dequeue").header("x-pw-queue-id", &id).header("x-pw-queue-value", "forged"));
    assert_eq!((r.header("x-pw-enqueue"), r.header("x-pw-dequeue")), (Some("NOT_FOUND"), Some("NOT_FOUND")), "{}", ats.log_report());
    assert!(
        ats.wait_for_log(r#"denied shared queue dequeue from a queue of vm_id "owner_vm": authorizations.global_map_access.read is false"#, WAIT),
        "{}",
        ats.log_report()
    );
    // With it: the same id (the owner drains its queue: EMPTY, not NOT_FOUND), and by name.
    let r = send(&ats, "granted", case("dequeue").header("x-pw-queue-id", &id));
    assert_eq!(r.header("x-pw-dequeue"), Some("EMPTY"), "{}", ats.log_report());
    let r = send(&ats, "granted", case("enqueue").header("x-pw-queue-vm", "owner_vm").header("x-pw-queue-value", "granted-item"));
    assert_eq!((r.header("x-pw-queue-resolved-id"), r.header("x-pw-enqueue")), (Some(id.as_str()), Some("OK")), "{}", ats.log_report());
    wait_shared(&ats, "owner", "queue.last", "granted-item");
    wait_shared(&ats, "owner", "queue.count", "1");
}

#[test]
fn shared_data_and_queue_caps_answer_statuses_the_sdk_accepts() {
    let (_origin, ats) = start("ats-shared-caps", &[("capped", yaml("capped", "", "max_shared_data_size: 8KiB, max_queue_length: 3")), ("other", yaml("other", "", "max_shared_data_size: 8KiB"))]);
    let big = "x".repeat(9000);
    let r = send(&ats, "capped", case("shared-set").header("x-pw-key", "big").header("x-pw-value", big.as_str()));
    assert_eq!((r.status, r.body_str()), (409, "CAS_MISMATCH".to_string()), "{}", ats.log_report());
    assert_eq!(send(&ats, "capped", case("shared-set").header("x-pw-key", "small").header("x-pw-value", "ok")).status, 200);
    assert_eq!(send(&ats, "other", case("shared-set").header("x-pw-key", "big").header("x-pw-value", "y".repeat(6000))).status, 200);
    // One callback: on_queue_ready runs only after it.
    let r = send(&ats, "capped", case("enqueue").header("x-pw-queue-count", "5"));
    assert_eq!(r.header("x-pw-enqueue"), Some("OK OK OK NOT_FOUND NOT_FOUND"), "{}", ats.log_report());
    wait_shared(&ats, "capped", "queue.count", "3");
    for line in ["refused set_shared_data over vm_config.limits.max_shared_data_size", r#"refused enqueue to a queue of vm_id "capped_vm" over max_queue_length"#] {
        assert!(ats.wait_for_log(line, WAIT), "{line}\n{}", ats.log_report());
    }
    ats.assert_running();
}
