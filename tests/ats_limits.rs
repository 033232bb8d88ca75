//! Limits on Traffic Server (`vm_config.limits`): an endless loop in
//! `on_request_headers` is stopped within `callback_timeout` and only that
//! request gets 503; a module that grows its memory without end is stopped
//! at `max_memory` (its `memory.grow` fails) and the request goes on.

mod e2e;

use std::time::{Duration, Instant};

use e2e::ats::{AtsOptions, TrafficServer};
use e2e::client::Request;
use e2e::origin::Origin;

const WAIT: Duration = Duration::from_secs(5);

fn start(test: &str, module: &str, extra: &str) -> (Origin, TrafficServer) {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let yaml = format!(
        "config:\n  name: {module}\n  failure_policy: reload\n  vm_config:\n    vm_id: {module}\n    limits:\n{extra}\n    code: {{ local: {{ filename: \"@REPO@/build/plugins/{module}.wasm\" }} }}\n"
    );
    let ats = TrafficServer::start(AtsOptions::new(test).origin(origin.port()).exec_threads(2).file("limits.yaml", yaml).global_plugin(&["limits.yaml"]));
    (origin, ats)
}

#[test]
fn an_endless_loop_is_stopped_within_the_time_limit_and_only_that_request_gets_503() {
    let (origin, ats) = start("ats-limit-loop", "trap_loop", "      callback_timeout: 200ms");
    let port = ats.port();
    // A looping request and, meanwhile, requests that are served.
    let looping = std::thread::spawn(move || {
        let t0 = Instant::now();
        let r = Request::get("/loop").timeout(Duration::from_secs(20)).send(port);
        (r, t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..5 {
        let r = ats.send(&Request::get("/fine").header("x-no-loop", "1")).unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
        assert_eq!(r.status, 200, "{}", ats.log_report());
    }
    let (r, took) = looping.join().unwrap();
    let r = r.unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(r.status, 503, "{}", ats.log_report());
    assert!(took < Duration::from_secs(3), "the loop was stopped after {took:?}");
    assert!(ats.wait_for_log("on_request_headers: looping forever", WAIT));
    assert!(ats.wait_for_logs_matching(WAIT, |l| l.contains("trap_loop") && l.contains("time limit")), "{}", ats.log_report());
    // Served again afterwards (failure_policy: reload gives a fresh instance).
    let r = ats.send(&Request::get("/after").header("x-no-loop", "1")).unwrap();
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert!(origin.request_count() >= 6);
    ats.assert_running();
}

#[test]
fn a_module_growing_its_memory_without_end_is_stopped_at_max_memory() {
    let (origin, ats) = start("ats-limit-memory", "memory_bomb", "      max_memory: 8MiB");
    for _ in 0..2 {
        let r = ats.send(&Request::get("/bomb").timeout(Duration::from_secs(10))).unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
        assert_eq!(r.status, 200, "{}", ats.log_report());
    }
    assert!(ats.wait_for_log("grow failed", WAIT), "{}", ats.log_report());
    let logs = ats.diags_log();
    let pages: Vec<u64> = logs.match_indices("memory_bomb pages=").filter_map(|(i, m)| logs[i + m.len()..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()).collect();
    assert!(!pages.is_empty(), "{}", ats.log_report());
    assert!(pages.iter().all(|p| *p <= 128), "8 MiB is 128 pages: {pages:?}");
    // Logged once per instance (one per thread, two threads), with the plugin's name.
    let logged = ats.count_in_logs("memory_bomb: proxy_on_request_headers: linear memory reached its limit");
    assert!((1..=2).contains(&logged), "{logged}\n{}", ats.log_report());
    assert_eq!(origin.request_count(), 2);
    ats.assert_running();
}
