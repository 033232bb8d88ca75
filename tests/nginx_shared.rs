//! Shared data, shared queues and metrics across nginx workers (the
//! `proxy_wasm` shared-memory zone, `proxy_wasm_shm_size`): a real nginx with
//! master + 2 workers, the Rust-SDK test filter (tests/plugins/README.md),
//! requests on fresh connections from many client threads so that both
//! workers serve them; every response names its worker (`$pid`). The rights
//! and caps both servers share are in tests/conformance_shared.rs.
//!
//! Run with `make nginx && cargo test --test nginx_shared`.

mod e2e;

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::client::{Request, Response};
use e2e::nginx::{Nginx, NginxOptions};
use e2e::origin::Origin;

const WAIT: Duration = Duration::from_secs(10);

fn rust_yaml(configuration: &str, extra: &str) -> String {
    format!(
        r#"- config:
    name: "rust"
    configuration: '{configuration}'
{extra}    vm_config:
      vm_id: "rust_vm"
      code:
        local:
          filename: "@REPO@/build/plugins/rust_sdk_filter.wasm"
"#
    )
}

/// nginx (2 workers) with the filter on `location /` (proxying to the origin,
/// `x-worker-pid` on every response) and the metrics on `/metrics`.
fn start(test: &str, yaml: &str, http_extra: &str, origin: &Origin) -> Nginx {
    Nginx::start(
        NginxOptions::new(test)
            .workers(2)
            .origin(origin.port())
            .file("plugins.yaml", yaml)
            .http(format!("proxy_wasm_config @CONF@/plugins.yaml;\n{http_extra}"))
            .server(
                "add_header x-worker-pid $pid always;\n\
                 location = /metrics { proxy_wasm_metrics; }\n\
                 location /plain { proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }\n\
                 location / { proxy_wasm rust; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; proxy_set_header Host $host; }",
            ),
    )
}

/// Sends `count` requests made by `req`, from 20 client threads, each on a new connection.
fn burst(n: &Nginx, count: usize, req: impl Fn(usize) -> Request + Send + Sync + Clone + 'static) -> Vec<Response> {
    let port = n.port();
    let per = count.div_ceil(20);
    let threads: Vec<_> = (0..20)
        .map(|t| {
            let req = req.clone();
            std::thread::spawn(move || {
                (t * per..((t + 1) * per).min(count))
                    .map(|i| {
                        req(i)
                            .timeout(Duration::from_secs(30))
                            .send(port)
                            .unwrap_or_else(|e| panic!("request {i}: {e}"))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().expect("client thread")).collect()
}

fn pids(responses: &[Response]) -> BTreeSet<String> {
    responses.iter().filter_map(|r| r.header("x-worker-pid").map(str::to_string)).collect()
}

/// Sends rounds of `round` requests until both workers answered some (at most 10 rounds).
fn spread_over_workers(
    n: &Nginx,
    round: usize,
    req: impl Fn(usize) -> Request + Send + Sync + Clone + 'static,
) -> Vec<Response> {
    let workers: BTreeSet<String> = n.worker_pids().iter().map(|p| p.to_string()).collect();
    assert_eq!(workers.len(), 2, "{}", n.log_report());
    let mut all = Vec::new();
    for _ in 0..10 {
        let offset = all.len();
        let r = req.clone();
        all.extend(burst(n, round, move |i| r(offset + i)));
        if pids(&all) == workers {
            return all;
        }
    }
    panic!("the requests never reached both workers {workers:?}: {:?}", pids(&all));
}

fn shared_get(n: &Nginx, key: &str) -> Option<String> {
    shared_get_at(n, "/get", key)
}

/// `shared-get` through the plugin of the location `path` is in.
fn shared_get_at(n: &Nginx, path: &str, key: &str) -> Option<String> {
    let resp = n
        .send(&Request::get(path).header("x-pw-test", "shared-get").header("x-pw-key", key))
        .unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()));
    (resp.status == 200).then(|| resp.body_str())
}

fn wait_shared(n: &Nginx, key: &str, want: &str) {
    wait_shared_at(n, "/get", key, want)
}

fn wait_shared_at(n: &Nginx, path: &str, key: &str, want: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = shared_get_at(n, path, key);
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "shared {key} = {got:?}, want {want}\n{}", n.log_report());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shared_data_incremented_from_both_workers_has_exact_totals() {
    let origin = Origin::start();
    let n = start("ngx-shm-shared", &rust_yaml("", ""), "", &origin);
    // The first increment creates the key with CAS 0, which (as on Envoy)
    // overwrites unconditionally, so racing creators could both write 1: the
    // key is created first, and every counted increment is a CAS.
    let first = n.send(&Request::get("/inc").header("x-pw-test", "shared").header("x-pw-key", "hits")).unwrap();
    assert_eq!(first.header("x-pw-shared"), Some("1"), "{}", n.log_report());
    let responses =
        spread_over_workers(&n, 200, |_| Request::get("/inc").header("x-pw-test", "shared").header("x-pw-key", "hits"));
    let total = responses.len();
    assert!(total >= 200);
    let mut values: Vec<u64> = responses
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200, "{}", n.log_report());
            r.header("x-pw-shared").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no x-pw-shared: {r:?}"))
        })
        .collect();
    values.sort_unstable();
    // Every increment saw a distinct value: CAS held across the workers.
    assert_eq!(values, (2..=total as u64 + 1).collect::<Vec<_>>());
    // Read back through either worker: the same exact total.
    for _ in 0..10 {
        assert_eq!(shared_get(&n, "hits").as_deref(), Some((total + 1).to_string().as_str()));
    }
}

#[test]
fn a_value_set_in_one_worker_is_read_with_its_cas_in_the_other() {
    let origin = Origin::start();
    let n = start("ngx-shm-cas", &rust_yaml("", ""), "", &origin);
    let set = n
        .send(&Request::get("/s").header("x-pw-test", "shared-set").header("x-pw-key", "k").header("x-pw-value", "v1"))
        .unwrap();
    assert_eq!(set.header("x-pw-shared-set"), Some("OK"));
    // Reads from many connections (both workers) agree on the value and its CAS.
    let reads =
        spread_over_workers(&n, 40, |_| Request::get("/g").header("x-pw-test", "shared-get").header("x-pw-key", "k"));
    let seen: BTreeSet<(Option<String>, Option<String>)> = reads
        .iter()
        .map(|r| (r.header("x-pw-shared-value").map(str::to_string), r.header("x-pw-shared-cas").map(str::to_string)))
        .collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let cas = seen.iter().next().unwrap().1.clone().unwrap();
    // A CAS write succeeds once, then the same (stale) token is refused, from any worker.
    let first = n
        .send(
            &Request::get("/s")
                .header("x-pw-test", "shared-set")
                .header("x-pw-key", "k")
                .header("x-pw-value", "v2")
                .header("x-pw-cas", cas.as_str()),
        )
        .unwrap();
    assert_eq!(first.header("x-pw-shared-set"), Some("OK"));
    let stale = burst(&n, 20, move |_| {
        Request::get("/s")
            .header("x-pw-test", "shared-set")
            .header("x-pw-key", "k")
            .header("x-pw-value", "v3")
            .header("x-pw-cas", cas.as_str())
    });
    assert!(stale.iter().all(|r| r.status == 409 && r.header("x-pw-shared-set") == Some("CAS_MISMATCH")));
    assert_eq!(shared_get(&n, "k").as_deref(), Some("v2"));
}

#[test]
fn queue_items_from_both_workers_reach_on_queue_ready_exactly_once() {
    let origin = Origin::start();
    let n = start("ngx-shm-queue", &rust_yaml("", ""), "", &origin);
    // The filter counts dequeued items in shared data. The counter exists
    // before on_queue_ready runs in both workers: creating it is a CAS-0
    // write, which overwrites unconditionally, so two first counts would race.
    let init = n
        .send(
            &Request::get("/s")
                .header("x-pw-test", "shared-set")
                .header("x-pw-key", "queue.count")
                .header("x-pw-value", "0"),
        )
        .unwrap();
    assert_eq!(init.header("x-pw-shared-set"), Some("OK"), "{}", n.log_report());
    let responses = spread_over_workers(&n, 100, |i| {
        Request::get("/e").header("x-pw-test", "enqueue").header("x-pw-queue-value", format!("item-{i}"))
    });
    for r in &responses {
        assert_eq!(r.header("x-pw-queue-resolve"), Some("OK"), "{}", n.log_report());
        assert_eq!(r.header("x-pw-queue-resolve-same-id"), Some("true"));
        assert_eq!(r.header("x-pw-enqueue"), Some("OK"));
    }
    // Every item is dequeued once, by the registering plugin's on_queue_ready.
    wait_shared(&n, "queue.count", &responses.len().to_string());
    assert!(!n.error_log().contains("queue.error"), "{}", n.log_report());
}

/// `queue-resume` items name a stream context of the worker that paused the
/// request; the queue is shared, so a concurrent `on_queue_ready` in the other
/// worker could take them. One at a time, each worker's own registration is
/// notified at once and resumes its request.
#[test]
fn requests_paused_in_either_worker_resume_from_on_queue_ready() {
    let origin = Origin::start();
    let n = start("ngx-shm-queue-resume", &rust_yaml("", ""), "", &origin);
    let workers: BTreeSet<String> = n.worker_pids().iter().map(|p| p.to_string()).collect();
    let mut responses = Vec::new();
    while pids(&responses) != workers || responses.len() < 10 {
        assert!(responses.len() < 200, "never reached both workers: {:?}", pids(&responses));
        let r = n
            .send(&Request::get("/q").header("x-pw-test", "queue-resume").timeout(WAIT))
            .unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()));
        assert_eq!(r.status, 200, "{}", n.log_report());
        assert_eq!(r.header("x-pw-enqueue"), Some("OK"));
        assert_eq!(r.header("x-pw-resumed-by"), Some("queue"));
        responses.push(r);
    }
    wait_shared(&n, "resume.queue.count", &responses.len().to_string());
}

fn metric_line(text: &str, name: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

#[test]
fn metrics_are_summed_across_workers_on_the_metrics_location() {
    let origin = Origin::start();
    let n = start("ngx-shm-metrics", &rust_yaml("", ""), "", &origin);
    let responses = spread_over_workers(&n, 100, |_| {
        Request::get("/m").header("x-pw-test", "metrics").header("x-pw-metric-value", "7")
    });
    let total = responses.len() as i64;
    for r in &responses {
        assert_eq!(r.header("x-pw-metric-ops"), Some("OK OK OK OK"), "{}", n.log_report());
        assert_eq!(r.header("x-pw-metric-redefine-same-id"), Some("true"));
    }
    // The counter each request read back grows over both workers up to the total.
    let max = responses.iter().filter_map(|r| r.header("x-pw-metric-counter")?.parse::<i64>().ok()).max();
    assert_eq!(max, Some(total));
    // Whichever worker answers /metrics shows the sums.
    let scrapes = spread_over_workers(&n, 10, |_| Request::get("/metrics"));
    for s in &scrapes {
        assert_eq!(s.status, 200);
        let text = s.body_str();
        assert_eq!(metric_line(&text, "rust_sdk_filter_requests"), Some(total), "{text}");
        assert!(text.contains("# TYPE rust_sdk_filter_requests counter"), "{text}");
        assert_eq!(metric_line(&text, "rust_sdk_filter_histogram_count"), Some(total), "{text}");
        assert_eq!(metric_line(&text, "rust_sdk_filter_histogram_sum"), Some(7 * total), "{text}");
        assert_eq!(metric_line(&text, "rust_sdk_filter_histogram_bucket{le=\"10\"}"), Some(total), "{text}");
    }
}

#[test]
fn a_full_zone_is_reported_and_nginx_keeps_serving() {
    let origin = Origin::start();
    let n = start("ngx-shm-full", &rust_yaml("", "    failure_policy: reload\n"), "proxy_wasm_shm_size 32k;", &origin);
    let workers = n.worker_pids();
    let value = "x".repeat(3000);
    let mut stored = 0;
    let mut refused = None;
    for i in 0..40 {
        let r = n
            .send(
                &Request::get("/s")
                    .header("x-pw-test", "shared-set")
                    .header("x-pw-key", format!("big{i}"))
                    .header("x-pw-value", value.as_str()),
            )
            .unwrap();
        if r.header("x-pw-shared-set") == Some("OK") {
            stored += 1;
        } else {
            // A refused set answers CAS_MISMATCH, the one refusal the Rust SDK
            // accepts from proxy_set_shared_data: the plugin does not trap.
            refused = Some((r.status, r.body_str()));
            break;
        }
    }
    assert!(stored >= 2, "stored {stored}\n{}", n.log_report());
    assert_eq!(refused, Some((409, "CAS_MISMATCH".to_string())), "{}", n.log_report());
    n.expect_log("refused set_shared_data over the room in the store", WAIT);
    n.expect_log("the shared memory zone is full", WAIT);
    // No worker died, the values stored are intact, plugins still serve.
    assert_eq!(n.worker_pids(), workers);
    assert!(!n.error_log().contains("exited on signal"), "{}", n.log_report());
    assert_eq!(shared_get(&n, "big0").as_deref(), Some(value.as_str()));
    let plain = n.get("/plain").unwrap();
    assert_eq!(plain.status, 200);
    let small = n
        .send(
            &Request::get("/s")
                .header("x-pw-test", "shared-set")
                .header("x-pw-key", "big0")
                .header("x-pw-value", "small"),
        )
        .unwrap();
    assert_eq!(small.header("x-pw-shared-set"), Some("OK"), "{}", n.log_report());
}

#[test]
fn nginx_t_warns_when_the_vms_caps_do_not_fit_the_zone_together() {
    let yaml = vm_yaml("a", "a_vm", "", "") + &vm_yaml("b", "b_vm", "", "max_shared_data_size: 8KiB");
    let out = Nginx::test_only(
        NginxOptions::new("ngx-shm-overcommit")
            .file("plugins.yaml", yaml.clone())
            .http("proxy_wasm_config @CONF@/plugins.yaml;\nproxy_wasm_shm_size 1m;"),
    );
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("[warn]")
            && text.contains(r#"less than the vm_ids may hold together ("a_vm": 16777216, "b_vm": 8192)"#),
        "{text}"
    );
    // Caps that fit: no warning.
    let fits = vm_yaml("a", "a_vm", "", "max_shared_data_size: 256KiB")
        + &vm_yaml("b", "b_vm", "", "max_shared_data_size: 256KiB");
    let out = Nginx::test_only(
        NginxOptions::new("ngx-shm-overcommit")
            .file("plugins.yaml", fits)
            .http("proxy_wasm_config @CONF@/plugins.yaml;\nproxy_wasm_shm_size 1m;"),
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("may hold together"));
}

#[test]
fn nginx_t_rejects_a_bad_shm_size() {
    for (size, why) in [("12k", "out of range"), ("lots", "invalid size")] {
        let out = Nginx::test_only(
            NginxOptions::new("ngx-shm-size")
                .file("plugins.yaml", rust_yaml("", ""))
                .http(format!("proxy_wasm_config @CONF@/plugins.yaml;\nproxy_wasm_shm_size {size};")),
        );
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{text}");
        assert!(text.contains("proxy_wasm_shm_size") && text.contains(why), "{text}");
    }
}

/// One plugin of the Rust-SDK filter named `name` in VM `vm_id` (a YAML list
/// item); `extra` goes at the plugin level, `limits` into `vm_config.limits`.
fn vm_yaml(name: &str, vm_id: &str, extra: &str, limits: &str) -> String {
    let limits = if limits.is_empty() { String::new() } else { format!("      limits: {{ {limits} }}\n") };
    format!(
        r#"- config:
    name: "{name}"
{extra}    vm_config:
      vm_id: "{vm_id}"
{limits}      code:
        local:
          filename: "@REPO@/build/plugins/rust_sdk_filter.wasm"
"#
    )
}

/// nginx (2 workers) with one location `/<name>/` per plugin, proxying to the origin.
fn start_vms(test: &str, yaml: &str, names: &[&str], http_extra: &str, origin: &Origin) -> Nginx {
    let locations: String = names
        .iter()
        .map(|n| format!("location /{n}/ {{ proxy_wasm {n}; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }}\n"))
        .collect();
    Nginx::start(
        NginxOptions::new(test)
            .workers(2)
            .origin(origin.port())
            .file("plugins.yaml", yaml)
            .http(format!("proxy_wasm_config @CONF@/plugins.yaml;\n{http_extra}"))
            .server(format!("add_header x-worker-pid $pid always;\n{locations}")),
    )
}

#[test]
fn another_vms_queue_is_not_found_without_global_map_access_in_either_worker() {
    let origin = Origin::start();
    let granted = "    authorizations:\n      global_map_access: { read: true, write: true }\n";
    let yaml = vm_yaml("owner", "owner_vm", "", "")
        + &vm_yaml("intruder", "intruder_vm", "", "")
        + &vm_yaml("granted", "granted_vm", granted, "");
    let n = start_vms("ngx-shm-queue-rights", &yaml, &["owner", "intruder", "granted"], "", &origin);
    let id = n
        .send(&Request::get("/owner/c").header("x-pw-test", "config"))
        .unwrap()
        .header("x-pw-queue-id")
        .unwrap()
        .to_string();
    let id2 = id.clone();
    // Without global_map_access: resolving finds nothing, and the id itself, from either worker, neither reads nor writes.
    let denied = spread_over_workers(&n, 20, move |i| {
        let r =
            Request::get("/intruder/q").header("x-pw-test", "enqueue, dequeue").header("x-pw-queue-id", id2.as_str());
        if i % 2 == 0 {
            r
        } else {
            Request::get("/intruder/r")
                .header("x-pw-test", "enqueue")
                .header("x-pw-queue-vm", "owner_vm")
                .header("x-pw-queue-count", "1")
        }
    });
    for r in &denied {
        if r.header("x-pw-queue-resolve").is_some() {
            assert_eq!(r.header("x-pw-queue-resolve"), Some("NOT_FOUND"), "{}", n.log_report());
        } else {
            assert_eq!(
                (r.header("x-pw-enqueue"), r.header("x-pw-dequeue")),
                (Some("NOT_FOUND"), Some("NOT_FOUND")),
                "{}",
                n.log_report()
            );
        }
    }
    n.expect_log(r#"denied shared queue dequeue from a queue of vm_id "owner_vm": authorizations.global_map_access.read is false"#, WAIT);
    n.expect_log(r#"denied shared queue enqueue to a queue of vm_id "owner_vm""#, WAIT);
    assert_eq!(shared_get_at(&n, "/owner/g", "queue.count"), None, "nothing reached the owner");
    // With it: the same id works (the owner's on_queue_ready drains the queue: EMPTY, not NOT_FOUND).
    let r = n
        .send(&Request::get("/granted/q").header("x-pw-test", "dequeue").header("x-pw-queue-id", id.as_str()))
        .unwrap();
    assert_eq!(r.header("x-pw-dequeue"), Some("EMPTY"), "{}", n.log_report());
    let r = n
        .send(
            &Request::get("/granted/q")
                .header("x-pw-test", "enqueue")
                .header("x-pw-queue-id", id.as_str())
                .header("x-pw-queue-value", "granted-item"),
        )
        .unwrap();
    assert_eq!(r.header("x-pw-enqueue"), Some("OK"), "{}", n.log_report());
    wait_shared_at(&n, "/owner/g", "queue.last", "granted-item");
    let r = n
        .send(
            &Request::get("/granted/r")
                .header("x-pw-test", "enqueue")
                .header("x-pw-queue-vm", "owner_vm")
                .header("x-pw-queue-value", "by-name"),
        )
        .unwrap();
    assert_eq!(r.header("x-pw-queue-resolved-id"), Some(id.as_str()));
    wait_shared_at(&n, "/owner/g", "queue.last", "by-name");
}

#[test]
fn a_vm_at_its_shared_data_quota_does_not_stop_another_vm_in_a_small_zone() {
    let origin = Origin::start();
    let limits = "max_shared_data_size: 16KiB";
    let yaml = vm_yaml("filler", "filler_vm", "", limits) + &vm_yaml("other", "other_vm", "", limits);
    let n = start_vms("ngx-shm-quota", &yaml, &["filler", "other"], "proxy_wasm_shm_size 64k;", &origin);
    let value = "v".repeat(1000);
    let v2 = value.clone();
    // Both workers write into the filler's VM: the cap holds for both together.
    let responses = spread_over_workers(&n, 40, move |i| {
        Request::get("/filler/s")
            .header("x-pw-test", "shared-set")
            .header("x-pw-key", format!("k{i:03}"))
            .header("x-pw-value", v2.as_str())
    });
    let stored = responses.iter().filter(|r| r.status == 200).count();
    let refused = responses.iter().filter(|r| r.status == 409 && r.body_str() == "CAS_MISMATCH").count();
    assert_eq!(stored + refused, responses.len(), "{}", n.log_report());
    assert!((10..=16).contains(&stored), "{stored} values of 1000 bytes stored under a 16 KiB cap\n{}", n.log_report());
    n.expect_log("refused set_shared_data over vm_config.limits.max_shared_data_size", WAIT);
    // The other VM still has room in the zone.
    for i in 0..8 {
        let r = n
            .send(
                &Request::get("/other/s")
                    .header("x-pw-test", "shared-set")
                    .header("x-pw-key", format!("k{i}"))
                    .header("x-pw-value", value.as_str()),
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", n.log_report());
    }
    assert_eq!(shared_get_at(&n, "/other/g", "k7").as_deref(), Some(value.as_str()));
    assert!(!n.error_log().contains("shared memory zone is full"), "{}", n.log_report());
}

/// Workers killed (SIGKILL, SIGSEGV) while other workers write shared data
/// and queues under load: nginx starts new workers, which undo an update cut
/// short; no worker hangs on the zone, and CAS increments stay exact afterwards.
#[test]
fn killing_workers_in_the_middle_of_writes_leaves_the_others_serving() {
    let origin = Origin::start();
    let n = Nginx::start(
        NginxOptions::new("ngx-shm-kill")
            .workers(2)
            .origin(origin.port())
            .main("worker_rlimit_core 0;")
            .file("plugins.yaml", rust_yaml("", ""))
            .http("proxy_wasm_config @CONF@/plugins.yaml;")
            .server("add_header x-worker-pid $pid always;\nlocation / { proxy_wasm rust; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }"),
    );
    let port = n.port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..6)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut answered = 0;
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let req = match i % 3 {
                        0 => Request::get("/w").header("x-pw-test", "shared").header("x-pw-key", format!("load{t}")),
                        1 => Request::get("/w")
                            .header("x-pw-test", "shared-set")
                            .header("x-pw-key", format!("big{t}-{}", i % 50))
                            .header("x-pw-value", "z".repeat(200 + i % 700)),
                        // Many updates in one callback (each takes the zone lock), drained by on_queue_ready.
                        _ => Request::get("/w")
                            .header("x-pw-test", "enqueue")
                            .header("x-pw-queue-count", "300")
                            .header("x-pw-queue-value", format!("item-{t}-{i}-{}", "q".repeat(1000))),
                    };
                    // A request on a worker being killed fails: that is expected.
                    if req.timeout(Duration::from_secs(10)).send(port).is_ok() {
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect();
    let mut killed = 0;
    for round in 0..30 {
        std::thread::sleep(Duration::from_millis(200));
        let pids = n.worker_pids();
        if let Some(pid) = pids.get(round % pids.len().max(1)) {
            // Mostly SIGKILL: a SIGSEGV sent by kill() can be absorbed by the
            // runtime's trap handler (it re-arms the default and returns), so
            // it does not always end the worker as a real fault does.
            let sig = if round % 4 == 3 { libc::SIGSEGV } else { libc::SIGKILL };
            // SAFETY: kill on a worker pid of our own nginx.
            if unsafe { libc::kill(*pid as i32, sig) } == 0 {
                killed += 1;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered: usize = load.into_iter().map(|t| t.join().unwrap()).sum();
    let died = n.error_log().matches(" exited on signal ").count();
    // Served all along (workers restart often: each compiles its modules first).
    assert!(
        killed >= 30 && died >= 15 && answered >= 20,
        "signalled {killed}, died {died}, answered {answered}\n{}",
        n.log_report()
    );
    // nginx replaced the workers; every worker answers promptly (none hangs on the zone lock).
    // (Two workers, the same for half a second: the last replacements have settled.)
    let deadline = std::time::Instant::now() + WAIT;
    let mut settled = (Vec::new(), std::time::Instant::now());
    loop {
        let pids = n.worker_pids();
        if pids != settled.0 {
            settled = (pids, std::time::Instant::now());
        } else if pids.len() == 2 && settled.1.elapsed() > Duration::from_millis(500) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "workers: {:?}\n{}", n.worker_pids(), n.log_report());
        std::thread::sleep(Duration::from_millis(50));
    }
    // (Created first: a CAS-0 creation overwrites, so racing creators could both write 1.)
    let first = n.send(&Request::get("/after").header("x-pw-test", "shared").header("x-pw-key", "after")).unwrap();
    assert_eq!(first.header("x-pw-shared"), Some("1"), "{}", n.log_report());
    let after = spread_over_workers(&n, 30, |_| {
        Request::get("/after").header("x-pw-test", "shared").header("x-pw-key", "after")
    });
    assert!(after.iter().all(|r| r.status == 200), "{}", n.log_report());
    let mut values: Vec<u64> = after.iter().map(|r| r.header("x-pw-shared").unwrap().parse().unwrap()).collect();
    values.sort_unstable();
    assert_eq!(values, (2..=after.len() as u64 + 1).collect::<Vec<_>>(), "CAS increments stay exact after the kills");
    let log = n.error_log();
    assert!(!log.contains("rebuilt empty"), "no damage, only undone updates:\n{}", n.log_report());
    eprintln!(
        "{died} workers killed; {answered} requests answered; {} unfinished updates undone",
        log.matches("its unfinished update was undone").count()
    );
}
