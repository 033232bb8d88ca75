//! Limits on NGINX (`vm_config.limits`): an endless loop in
//! `on_request_headers` is stopped within `callback_timeout` and only that
//! request gets 503 while the workers keep serving; a module that grows its
//! memory without end is stopped at `max_memory`; hostile pointers get
//! INVALID_MEMORY_ACCESS and nothing crashes.

mod e2e;

use std::time::{Duration, Instant};

use e2e::client::Request;
use e2e::nginx::{Nginx, NginxOptions};
use e2e::origin::Origin;

fn start(test: &str, name: &str, yaml_extra: &str, configuration: &str, origin: &Origin) -> Nginx {
    let yaml = format!(
        "config:\n  name: {name}\n  configuration: '{configuration}'\n  failure_policy: reload\n  vm_config:\n    vm_id: {name}\n{yaml_extra}    code: {{ local: {{ filename: \"@REPO@/build/plugins/{name}.wasm\" }} }}\n"
    );
    Nginx::start(
        NginxOptions::new(test)
            .origin(origin.port())
            .file("plugins.yaml", yaml)
            .http(format!("proxy_wasm_config @CONF@/plugins.yaml;\nproxy_wasm {name};\n"))
            .server("location / { proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }".to_string()),
    )
}

fn wait_for(n: &Nginx, pred: impl Fn(&str) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if pred(&n.error_log()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn an_endless_loop_is_stopped_within_the_time_limit_and_only_that_request_gets_503() {
    let origin = Origin::start();
    let n = start("ngx-limit-loop", "trap_loop", "    limits: { callback_timeout: 200ms }\n", "", &origin);
    let port = n.port();
    let looping = std::thread::spawn(move || {
        let t0 = Instant::now();
        (Request::get("/loop").timeout(Duration::from_secs(20)).send(port), t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(50));
    // The other worker (or this one, after the loop is stopped) serves.
    for _ in 0..5 {
        let r = n.send(&Request::get("/fine").header("x-no-loop", "1").timeout(Duration::from_secs(10))).unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()));
        assert_eq!(r.status, 200, "{}", n.log_report());
    }
    let (r, took) = looping.join().unwrap();
    let r = r.unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()));
    assert_eq!(r.status, 503, "{}", n.log_report());
    assert!(took < Duration::from_secs(3), "the loop was stopped after {took:?}");
    assert!(wait_for(&n, |l| l.contains("trap_loop") && l.contains("time limit exceeded")), "{}", n.log_report());
    let r = n.send(&Request::get("/after").header("x-no-loop", "1")).unwrap();
    assert_eq!(r.status, 200, "{}", n.log_report());
    assert_eq!(n.worker_pids().len(), 2, "no worker died");
}

#[test]
fn a_module_growing_its_memory_without_end_is_stopped_at_max_memory() {
    let origin = Origin::start();
    let n = start("ngx-limit-memory", "memory_bomb", "    limits: { max_memory: 8MiB }\n", "", &origin);
    for _ in 0..3 {
        let r = n.send(&Request::get("/bomb").timeout(Duration::from_secs(10))).unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()));
        assert_eq!(r.status, 200, "{}", n.log_report());
    }
    assert!(wait_for(&n, |l| l.contains("grow failed")), "{}", n.log_report());
    let logs = n.error_log();
    let pages: Vec<u64> = logs.match_indices("memory_bomb pages=").filter_map(|(i, m)| logs[i + m.len()..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()).collect();
    assert!(!pages.is_empty() && pages.iter().all(|p| *p <= 128), "8 MiB is 128 pages: {pages:?}\n{}", n.log_report());
    assert!(logs.contains("linear memory reached its limit"), "{}", n.log_report());
    assert_eq!(origin.request_count(), 3);
}

#[test]
fn out_of_bounds_pointers_get_invalid_memory_access_and_the_workers_keep_serving() {
    let origin = Origin::start();
    let n = start("ngx-hostile", "hostile", "", "hostile", &origin);
    let r = n.send(&Request::post("/echo", "hello").timeout(Duration::from_secs(10))).unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()));
    assert_eq!(r.status, 200, "{}", n.log_report());
    assert!(wait_for(&n, |l| l.contains("hostile request_headers done") && l.contains("hostile request_body done")), "{}", n.log_report());
    let logs = n.error_log();
    for (case, status) in [("log_msg_oob", 6), ("log_ptr_len_wrap", 6), ("hdr_get_key_oob", 6), ("hdr_get_ret_straddle", 6), ("hdr_get_map_99", 2)] {
        assert!(logs.contains(&format!("{case}={status}")), "{case}={status}\n{}", n.log_report());
    }
    assert!(!logs.contains("trapped"), "{}", n.log_report());
    for _ in 0..3 {
        assert_eq!(n.get("/again").unwrap().status, 200);
    }
    assert_eq!(n.worker_pids().len(), 2);
}
