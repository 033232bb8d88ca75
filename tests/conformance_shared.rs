//! Shared queues and shared data under the operator's rights and caps,
//! written once and run on NGINX (`nginx::...`) and on Traffic Server
//! (`ats::...`) through `e2e::server::ServerUnderTest`: another VM's queue
//! without `global_map_access`, and the `vm_config.limits` caps on shared
//! data and queue length. One host per plugin (`<name>.test`), the Rust-SDK
//! test filter (tests/plugins/README.md). What is about NGINX's
//! shared-memory zone (workers, its size, killed workers) stays in
//! tests/nginx_shared.rs.
//!
//! Run with `make ats nginx && cargo test --test conformance_shared` (and
//! with `E2E_RUNTIME=wamr`).

mod e2e;

use std::time::{Duration, Instant};

use e2e::client::{Request, Response};
use e2e::origin::Origin;
use e2e::server::{ServerUnderTest, Setup};

const WAIT: Duration = Duration::from_secs(5);

/// The Rust-SDK filter named `name` in VM `<name>_vm`; `extra` goes at the
/// plugin level (indented by 4), `limits` into `vm_config.limits`.
fn yaml(name: &str, extra: &str, limits: &str) -> String {
    let limits = if limits.is_empty() { String::new() } else { format!("      limits: {{ {limits} }}\n") };
    format!(
        r#"- config:
    name: "{name}"
{extra}    vm_config:
      vm_id: "{name}_vm"
{limits}      code:
        local:
          filename: "@REPO@/build/plugins/rust_sdk_filter.wasm"
"#
    )
}

/// Two workers (exec threads), a host `<name>.test` per plugin, other hosts unfiltered.
fn start<S: ServerUnderTest>(test: &str, plugins: &[(&str, String)]) -> (Origin, S) {
    let origin = Origin::start();
    let mut setup = Setup::new(test, origin.port()).workers(2);
    for (name, text) in plugins {
        setup = setup.plugin(name, text.clone()).route(&format!("{name}.test"), &[name]);
    }
    let s = S::start(setup.default_route(&[]));
    (origin, s)
}

fn send<S: ServerUnderTest>(s: &S, host: &str, req: Request) -> Response {
    s.send(&req.host(format!("{host}.test"))).unwrap_or_else(|e| panic!("{}: {e}\n{}", S::NAME, s.log_report()))
}

fn case(cases: &str) -> Request {
    Request::get("/p").header("x-pw-test", cases)
}

fn wait_shared<S: ServerUnderTest>(s: &S, host: &str, key: &str, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = send(s, host, case("shared-get").header("x-pw-key", key)).body_str();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{host}: shared {key} = {got:?}, want {want:?}\n{}", s.log_report());
        std::thread::sleep(Duration::from_millis(50));
    }
}

e2e::server::for_each_server! {

#[test]
fn another_vms_queue_is_not_found_without_global_map_access() {
    let granted = "    authorizations:\n      global_map_access: { read: true, write: true }\n";
    let (_origin, s) = start::<Server>("queue-rights", &[("owner", yaml("owner", "", "")), ("intruder", yaml("intruder", "", "")), ("granted", yaml("granted", granted, ""))]);
    let id = send(&s, "owner", case("config")).header("x-pw-queue-id").map(str::to_string).unwrap_or_else(|| panic!("{}", s.log_report()));
    // Without global_map_access: not found by name, and its id neither reads nor writes.
    let r = send(&s, "intruder", case("enqueue").header("x-pw-queue-vm", "owner_vm"));
    assert_eq!(r.header("x-pw-queue-resolve"), Some("NOT_FOUND"), "{}", s.log_report());
    let r = send(&s, "intruder", case("enqueue, dequeue").header("x-pw-queue-id", &id).header("x-pw-queue-value", "forged"));
    assert_eq!((r.header("x-pw-enqueue"), r.header("x-pw-dequeue")), (Some("NOT_FOUND"), Some("NOT_FOUND")), "{}", s.log_report());
    s.expect_log(r#"denied shared queue dequeue from a queue of vm_id "owner_vm": authorizations.global_map_access.read is false"#, WAIT);
    // With it: the same id (the owner drains its queue: EMPTY, not NOT_FOUND), and by name.
    let r = send(&s, "granted", case("dequeue").header("x-pw-queue-id", &id));
    assert_eq!(r.header("x-pw-dequeue"), Some("EMPTY"), "{}", s.log_report());
    let r = send(&s, "granted", case("enqueue").header("x-pw-queue-vm", "owner_vm").header("x-pw-queue-value", "granted-item"));
    assert_eq!((r.header("x-pw-queue-resolved-id"), r.header("x-pw-enqueue")), (Some(id.as_str()), Some("OK")), "{}", s.log_report());
    wait_shared(&s, "owner", "queue.last", "granted-item");
    wait_shared(&s, "owner", "queue.count", "1");
}

#[test]
fn shared_data_and_queue_caps_answer_statuses_the_sdk_accepts() {
    let (_origin, s) = start::<Server>("shared-caps", &[("capped", yaml("capped", "", "max_shared_data_size: 8KiB, max_queue_length: 3")), ("other", yaml("other", "", "max_shared_data_size: 8KiB"))]);
    let big = "x".repeat(9000);
    let r = send(&s, "capped", case("shared-set").header("x-pw-key", "big").header("x-pw-value", big.as_str()));
    assert_eq!((r.status, r.body_str()), (409, "CAS_MISMATCH".to_string()), "{}", s.log_report());
    assert_eq!(send(&s, "capped", case("shared-set").header("x-pw-key", "small").header("x-pw-value", "ok")).status, 200);
    assert_eq!(send(&s, "other", case("shared-set").header("x-pw-key", "big").header("x-pw-value", "y".repeat(6000))).status, 200);
    // One callback: on_queue_ready runs only after it.
    let r = send(&s, "capped", case("enqueue").header("x-pw-queue-count", "5"));
    assert_eq!(r.header("x-pw-enqueue"), Some("OK OK OK NOT_FOUND NOT_FOUND"), "{}", s.log_report());
    wait_shared(&s, "capped", "queue.count", "3");
    for line in ["refused set_shared_data over vm_config.limits.max_shared_data_size", r#"refused enqueue to a queue of vm_id "capped_vm" over max_queue_length"#] {
        s.expect_log(line, WAIT);
    }
    s.assert_nothing_died();
}

}
