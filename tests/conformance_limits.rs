//! Limits (`vm_config.limits`), written once and run on NGINX (`nginx::...`)
//! and on Traffic Server (`ats::...`) through `e2e::server::ServerUnderTest`:
//! an endless loop in `on_request_headers` is stopped within
//! `callback_timeout` and only that request gets 503 while the server keeps
//! serving; a module that grows its memory without end is stopped at
//! `max_memory` (its `memory.grow` fails) and the request goes on; hostile
//! pointers get INVALID_MEMORY_ACCESS and nothing crashes. Two workers (two
//! exec threads) each.
//!
//! Run with `make ats nginx && cargo test --test conformance_limits` (and
//! with `E2E_RUNTIME=wamr`).

mod e2e;

use std::time::{Duration, Instant};

use e2e::client::{Request, Response};
use e2e::origin::Origin;
use e2e::server::{ServerUnderTest, Setup};

const WAIT: Duration = Duration::from_secs(5);

/// The WAT module `name` (tests/wat/README.md) under `failure_policy:
/// reload`, with `vm_config` keys `vm_extra` (indented by 6).
fn start<S: ServerUnderTest>(test: &str, name: &str, vm_extra: &str, configuration: &str, origin: &Origin) -> S {
    let yaml = format!(
        "- config:\n    name: {name}\n    configuration: '{configuration}'\n    failure_policy: reload\n    vm_config:\n      vm_id: {name}\n{vm_extra}      code: {{ local: {{ filename: \"@REPO@/build/plugins/{name}.wasm\" }} }}\n"
    );
    S::start(Setup::new(test, origin.port()).workers(2).plugin(name, yaml))
}

fn send<S: ServerUnderTest>(s: &S, req: Request) -> Response {
    s.send(&req.timeout(Duration::from_secs(10))).unwrap_or_else(|e| panic!("{}: {e}\n{}", S::NAME, s.log_report()))
}

fn wait_for_logs<S: ServerUnderTest>(s: &S, pred: impl Fn(&str) -> bool) -> bool {
    e2e::wait_until(WAIT, || pred(&s.logs()))
}

e2e::server::for_each_server! {

#[test]
fn an_endless_loop_is_stopped_within_the_time_limit_and_only_that_request_gets_503() {
    let origin = Origin::start();
    let s: Server = start("limit-loop", "trap_loop", "      limits: { callback_timeout: 200ms }\n", "", &origin);
    let port = s.port();
    // A looping request and, meanwhile, requests that are served (by the
    // other worker or thread, or by this one once the loop is stopped).
    let looping = std::thread::spawn(move || {
        let t0 = Instant::now();
        (Request::get("/loop").timeout(Duration::from_secs(20)).send(port), t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..5 {
        let r = send(&s, Request::get("/fine").header("x-no-loop", "1"));
        assert_eq!(r.status, 200, "{}", s.log_report());
    }
    let (r, took) = looping.join().unwrap();
    let r = r.unwrap_or_else(|e| panic!("{e}\n{}", s.log_report()));
    assert_eq!(r.status, 503, "{}", s.log_report());
    assert!(took < Duration::from_secs(3), "the loop was stopped after {took:?}");
    s.expect_log("on_request_headers: looping forever", WAIT);
    assert!(wait_for_logs(&s, |l| l.contains("trap_loop") && l.contains("time limit exceeded")), "{}", s.log_report());
    // Served again afterwards (failure_policy: reload gives a fresh instance).
    let r = send(&s, Request::get("/after").header("x-no-loop", "1"));
    assert_eq!(r.status, 200, "{}", s.log_report());
    assert!(origin.request_count() >= 6);
    s.assert_nothing_died();
}

#[test]
fn a_module_growing_its_memory_without_end_is_stopped_at_max_memory() {
    let origin = Origin::start();
    let s: Server = start("limit-memory", "memory_bomb", "      limits: { max_memory: 8MiB }\n", "", &origin);
    for _ in 0..3 {
        let r = send(&s, Request::get("/bomb"));
        assert_eq!(r.status, 200, "{}", s.log_report());
    }
    assert!(wait_for_logs(&s, |l| l.contains("grow failed")), "{}", s.log_report());
    let logs = s.logs();
    let pages: Vec<u64> = logs.match_indices("memory_bomb pages=").filter_map(|(i, m)| logs[i + m.len()..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()).collect();
    assert!(!pages.is_empty(), "{}", s.log_report());
    assert!(pages.iter().all(|p| *p <= 128), "8 MiB is 128 pages: {pages:?}");
    // Logged once per instance (one per worker or thread, two of them), with the plugin's name.
    let logged = logs.matches("memory_bomb: proxy_on_request_headers: linear memory reached its limit").count();
    assert!((1..=2).contains(&logged), "{logged}\n{}", s.log_report());
    assert_eq!(origin.request_count(), 3);
    s.assert_nothing_died();
}

#[test]
fn out_of_bounds_pointers_get_invalid_memory_access_and_the_server_keeps_serving() {
    let origin = Origin::start();
    let s: Server = start("limit-hostile", "hostile", "", "hostile", &origin);
    let r = send(&s, Request::post("/echo", "hello"));
    assert_eq!(r.status, 200, "{}", s.log_report());
    assert!(wait_for_logs(&s, |l| l.contains("hostile request_headers done") && l.contains("hostile request_body done")), "{}", s.log_report());
    let logs = s.logs();
    for (case, status) in [("log_msg_oob", 6), ("log_ptr_len_wrap", 6), ("hdr_get_key_oob", 6), ("hdr_get_ret_straddle", 6), ("hdr_get_map_99", 2)] {
        assert!(logs.contains(&format!("{case}={status}")), "{case}={status}\n{}", s.log_report());
    }
    assert!(!logs.contains("trapped"), "{}", s.log_report());
    for _ in 0..3 {
        assert_eq!(send(&s, Request::get("/again")).status, 200);
    }
    s.assert_nothing_died();
}

}
