//! Combinations, written once and run on NGINX (`nginx::...`) and on Traffic Server (`ats::...`)
//! through `e2e::server::ServerUnderTest`: what each feature's own suite does not put together.
//! Several plugins of one chain with `http_call`s in flight at once (one of them timing out),
//! plugins sharing one VM next to another VM, the SDK filters without a configuration, reloads
//! while requests flow (also of a plugin with a tick timer), empty and multi-MiB bodies and
//! large headers through a chain, and Proxy-Wasm plugins next to Otoroshi entities (their HTTP
//! calls at once, a TransformResponse step that answers garbage). Each case says what an operator
//! would expect, and what Envoy's host (proxy-wasm-cpp-host) does there.
//!
//! Run with `make plugins ats nginx && cargo test --test conformance_combinations` (and with
//! `E2E_RUNTIME=wamr`).

mod e2e;
mod sdk_builds;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::client::{ClientError, Flow, Request, Response};
use e2e::origin::{self, Gate, Origin};
use e2e::server::{ServerUnderTest, Setup};

const WAIT: Duration = Duration::from_secs(10);

/// The Rust-SDK test filter as plugin `name` with this JSON `configuration` (its own `vm_id`
/// unless `vm_id` names one), allowed to call any upstream.
fn filter(name: &str, vm_id: &str, configuration: &str) -> String {
    format!(
        r#"- config:
    name: "{name}"
    configuration: '{configuration}'
    authorizations:
      allowed_hosts: ["*"]
    vm_config:
      vm_id: "{vm_id}"
      code:
        local:
          filename: "@REPO@/build/plugins/rust_sdk_filter.wasm"
"#
    )
}

fn send<S: ServerUnderTest>(s: &S, req: Request) -> Response {
    s.send(&req.timeout(Duration::from_secs(30))).unwrap_or_else(|e| panic!("{}: {e}\n{}", S::NAME, s.log_report()))
}

/// `total` requests from `clients` threads at once; `request(i)` makes the i-th, `check(i, outcome)`
/// says what is wrong with its outcome. Returns every complaint.
fn load(
    port: u16,
    clients: usize,
    total: usize,
    request: impl Fn(usize) -> Request + Send + Sync + 'static,
    check: impl Fn(usize, Result<Response, ClientError>) -> Option<String> + Send + Sync + 'static,
) -> Vec<String> {
    let next = Arc::new(AtomicUsize::new(0));
    let (request, check) = (Arc::new(request), Arc::new(check));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (next, request, check) = (next.clone(), request.clone(), check.clone());
            std::thread::spawn(move || {
                let mut complaints = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        return complaints;
                    }
                    complaints.extend(check(i, request(i).timeout(Duration::from_secs(30)).send(port)));
                }
            })
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().expect("client thread")).collect()
}

/// The callout upstream: `/slow...` answers after 3 s, anything else after 50 ms, with the
/// path it was asked for as the body.
fn callout() -> Origin {
    Origin::with_handler(|req| {
        let delay = if req.path_only().starts_with("/slow") { 3000 } else { 50 };
        origin::Response::text(200, req.path.clone()).delay(Duration::from_millis(delay))
    })
}

/// Plugins `a`, `b`, `c` in one chain, each calling `upstream` at its own path (`/a`...; `b`
/// at `b_path` with `b_timeout_ms`).
fn three_callers<S: ServerUnderTest>(test: &str, origin: &Origin, upstream: u16, b_path: &str, b_timeout_ms: u32) -> S {
    let config = |tag: &str, path: &str, timeout: u32| {
        format!(
            r#"{{"tag":"{tag}","upstream":"127.0.0.1:{upstream}","callout_path":"{path}","callout_timeout_ms":{timeout}}}"#
        )
    };
    S::start(
        Setup::new(test, origin.port())
            .workers(2)
            .plugin("a", filter("a", "a_vm", &config("a", "/a", 5000)))
            .plugin("b", filter("b", "b_vm", &config("b", b_path, b_timeout_ms)))
            .plugin("c", filter("c", "c_vm", &config("c", "/c", 5000))),
    )
}

/// A request whose call in each plugin goes to that plugin's configured path.
fn calling(i: usize) -> Request {
    Request::get(&format!("/calls/{i}")).header("x-pw-test", "http-call")
}

/// Which plugins' calls reached the origin with these answers (`x-pw-callout-body`, one value per
/// plugin), sorted.
fn callout_bodies(req: &origin::Request) -> Vec<String> {
    let mut v: Vec<String> =
        req.header_all("x-pw-callout-body").iter().flat_map(|h| h.split(',')).map(|s| s.trim().to_string()).collect();
    v.sort();
    v
}

/// An Otoroshi entity in our YAML: examples/otoroshi/`example`.json with the module `module`
/// (in build/plugins), `edit` applied to the export. Returns its id and the file's text.
fn entity(example: &str, module: &str, edit: impl FnOnce(&mut serde_json::Value)) -> (String, String) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("examples/otoroshi").join(format!("{example}.json"))).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["config"]["source"]["path"] = format!("@REPO@/build/plugins/{module}").into();
    edit(&mut doc);
    let id = doc["id"].as_str().unwrap().to_owned();
    (id, format!("otoroshi:\n  runtime: wasmtime\n  callback_timeout: 30s\nwasm_plugins:\n  - {doc}\n"))
}

/// The step plugin of `pdk` (tests/plugins/otoroshi/README.md) as an entity running `steps`.
fn step_entity(pdk: &str, steps: &[&str]) -> (String, String) {
    entity("backend", &format!("otoroshi_{pdk}.wasm"), |doc| {
        doc["config"]["functionName"] = serde_json::Value::Null;
        doc["steps"] = serde_json::json!(steps);
        doc["id"] = format!("steps-{pdk}").into();
    })
}

const PDKS: [&str; 2] = ["as", "rust"];

e2e::server::for_each_server! {

// ------------------------------------------------------------------ http_call from several plugins

/// Three plugins of one chain each dispatch an `http_call` for the same request and pause it;
/// many such requests run at once over two workers / exec threads. An operator expects every
/// request to come through with each plugin's own answer: the calls of different plugins on one
/// request are independent (Envoy: one async client request per filter, each resuming its own
/// filter), so no answer is delivered to the wrong plugin, none is lost, nothing crashes.
#[test]
fn three_plugins_of_one_chain_each_with_an_http_call_in_flight_get_their_own_answers() {
    let upstream = callout();
    let origin = Origin::start();
    let s: Server = three_callers("combo-3calls", &origin, upstream.port(), "/b", 5000);
    let complaints = load(s.port(), 24, 120, calling, |i, r| match r {
        Ok(r) if r.status == 200 && r.header_all("x-pw-callout-dispatch").len() == 3 => None,
        Ok(r) => Some(format!("request {i}: {} {:?}", r.status, r.headers)),
        Err(e) => Some(format!("request {i}: {e}")),
    });
    assert!(complaints.is_empty(), "{complaints:?}\n{}", s.log_report());
    let seen = origin.wait_for_requests(120, WAIT);
    for req in &seen {
        assert_eq!(callout_bodies(req), ["/a", "/b", "/c"], "{}: {:?}", req.path, req.headers);
    }
    assert_eq!(upstream.request_count(), 360, "one call per plugin and request");
    s.assert_nothing_died();
}

/// As above, but plugin `b`'s call times out (its upstream answers after 3 s, its timeout is
/// 300 ms) while `a`'s and `c`'s succeed. An operator expects `b` to be called back with a
/// failure (zero headers, as Envoy's onFailure) at its timeout and the request to go on with the
/// others' answers: one plugin's timeout never fails or delays another's call.
#[test]
fn one_plugin_whose_http_call_times_out_leaves_the_calls_of_the_others_in_the_chain_alone() {
    let upstream = callout();
    let origin = Origin::start();
    let s: Server = three_callers("combo-3calls-timeout", &origin, upstream.port(), "/slow", 300);
    let started = Instant::now();
    let complaints = load(s.port(), 16, 48, calling, |i, r| match r {
        Ok(r) if r.status == 200 => None,
        Ok(r) => Some(format!("request {i}: {} {:?}", r.status, r.headers)),
        Err(e) => Some(format!("request {i}: {e}")),
    });
    assert!(complaints.is_empty(), "{complaints:?}\n{}", s.log_report());
    // 48 requests, 16 at a time, each waiting 300 ms for b: far below b's 3 s per request.
    assert!(started.elapsed() < Duration::from_secs(12), "b's timeout held the requests: {:?}", started.elapsed());
    for req in origin.wait_for_requests(48, WAIT) {
        assert_eq!(callout_bodies(&req), ["/a", "/c"], "{}: {:?}", req.path, req.headers);
        assert_eq!(req.header("x-pw-callout-failed"), Some("1"), "b's call failed: {:?}", req.headers);
    }
    s.assert_nothing_died();
}

// ------------------------------------------------------------------ VMs, shared data, queues

/// Plugins `p1` and `p2` share one VM (same `vm_id`, same module, as Envoy shares a VM between
/// filters whose vm_config matches); `p3` has its own. Each plugin of the chain increments the
/// shared-data key `counter` and enqueues an item into its VM's queue `q1`, under concurrency.
/// An operator expects shared data and queues to be per `vm_id` (as in proxy-wasm-cpp-host):
/// `p1` and `p2` count together in one key (2 per request, every value handed out once), `p3`
/// counts alone (1 per request), and every item enqueued is delivered to the VM that owns it.
#[test]
fn plugins_sharing_one_vm_share_its_data_and_queue_and_another_vm_keeps_its_own() {
    let origin = Origin::start();
    let s = <Server as ServerUnderTest>::start(
        Setup::new("combo-vms", origin.port())
            .workers(2)
            .plugin("p1", filter("p1", "shared_vm", r#"{"tag":"p1"}"#))
            .plugin("p2", filter("p2", "shared_vm", r#"{"tag":"p2"}"#))
            .plugin("p3", filter("p3", "own_vm", r#"{"tag":"p3"}"#))
            .route("all.test", &["p1", "p2", "p3"])
            .route("shared.test", &["p1"])
            .route("own.test", &["p3"])
            .default_route(&[]),
    );
    // The keys exist before the load: a get of an absent key gives no CAS, so two first
    // increments racing would both write 1 (an unconditional set, as on cpp-host).
    for host in ["shared.test", "own.test"] {
        let r = send(&s, Request::get("/init").host(host).header("x-pw-test", "shared-set").header("x-pw-key", "counter").header("x-pw-value", "0"));
        assert_eq!(r.status, 200, "{host}: {}\n{}", r.body_str(), s.log_report());
    }
    let values = Arc::new(Mutex::new(Vec::<u64>::new()));
    let seen = values.clone();
    let complaints = load(
        s.port(),
        16,
        100,
        |i| Request::get(&format!("/vms/{i}")).host("all.test").header("x-pw-test", "shared, enqueue"),
        move |i, r| {
            let r = match r {
                Ok(r) if r.status == 200 => r,
                Ok(r) => return Some(format!("request {i}: {} {:?}", r.status, r.headers)),
                Err(e) => return Some(format!("request {i}: {e}")),
            };
            let split = |name: &str| -> Vec<String> {
                r.header_all(name).iter().flat_map(|h| h.split(',')).map(|v| v.trim().to_string()).collect()
            };
            let counts: Vec<u64> = split("x-pw-shared").iter().filter_map(|v| v.parse().ok()).collect();
            if counts.len() != 3 || split("x-pw-enqueue") != ["OK", "OK", "OK"] {
                return Some(format!("request {i}: {:?}", r.headers));
            }
            seen.lock().unwrap().extend(counts);
            None
        },
    );
    assert!(complaints.is_empty(), "{complaints:?}\n{}", s.log_report());
    // p1 and p2 hand out 1..=200 from their VM's key, p3 1..=100 from its own: each value of
    // a key once, whichever plugin or worker took it.
    let mut all = values.lock().unwrap().clone();
    all.sort();
    let mut expected: Vec<u64> = (1..=200).chain(1..=100).collect();
    expected.sort();
    assert_eq!(all, expected, "p1 and p2 count in one key of their VM, p3 alone in its own");
    let get = |host: &str, key: &str| {
        let r = send(&s, Request::get("/get").host(host).header("x-pw-test", "shared-get").header("x-pw-key", key));
        r.body_str()
    };
    assert_eq!((get("shared.test", "counter"), get("own.test", "counter")), ("200".into(), "100".into()));
    assert!(
        e2e::wait_until(WAIT, || get("shared.test", "queue.count") == "200" && get("own.test", "queue.count") == "100"),
        "queue.count: shared VM {}, own VM {}\n{}",
        get("shared.test", "queue.count"),
        get("own.test", "queue.count"),
        s.log_report()
    );
    s.assert_nothing_died();
}

// ------------------------------------------------------------------ configuration

/// Every SDK build of tests/plugins (tests/sdk_builds: Rust SDK 0.1.0-0.2.3, AssemblyScript
/// 0.1.1 and 0.1.8, the C filter for ABI 0.1.0 and 0.2.1), each once with `configuration: ""`
/// and once without a `configuration` key, the AssemblyScript 0.1.8 build also under root id
/// `sdk-configure` (the SDK's own `onConfigure`, which reads an empty configuration through a
/// null size slot), all in one chain. An operator expects a filter that needs no configuration
/// to run without one: Envoy hands such a filter an empty buffer (`proxy_on_configure` with size
/// 0) and the SDKs take it as "defaults"; no trap, no 503, every filter of the chain runs.
#[test]
fn the_sdk_filters_run_with_an_empty_and_with_a_missing_configuration() {
    let origin = Origin::start();
    let mut setup = Setup::new("combo-noconf", origin.port()).workers(1);
    let mut tags = Vec::new();
    for build in sdk_builds::ALL {
        // Only the 0.1.8 build registers the `sdk-configure` root context.
        let roots: &[&str] = if build.name == "as_0_1_8" { &["", "sdk-configure"] } else { &[""] };
        for root in roots {
            for (form, line) in [("empty", "    configuration: \"\"\n"), ("missing", "")] {
                let name = format!("{}-{form}{}", build.name.replace('_', "-"), if root.is_empty() { "" } else { "-sdk" });
                let yaml = format!(
                    "- config:\n    name: \"{name}\"\n    root_id: \"{root}\"\n{line}    vm_config:\n      vm_id: \"{name}\"\n      code:\n        local:\n          filename: \"@REPO@/build/plugins/{}\"\n",
                    build.file
                );
                setup = setup.plugin(&name, yaml);
                tags.push(if root.is_empty() { build.tag } else { "sdk-configure" });
            }
        }
    }
    let s = <Server as ServerUnderTest>::start(setup);
    let r = send(&s, Request::get("/noconf"));
    assert_eq!(r.status, 200, "{:?}\n{}", r.headers, s.log_report());
    let mut seen: Vec<&str> = r.header_all("x-proxy-wasm");
    seen.sort();
    tags.sort();
    assert_eq!(seen, tags, "every filter of the chain ran\n{}", s.log_report());
    for trap in ["panicked", "wasm trap", "configuration rejected", "returned false"] {
        assert!(!s.logs().contains(trap), "{trap:?} in the logs\n{}", s.log_report());
    }
    s.assert_nothing_died();
}

// ------------------------------------------------------------------ reloads under load

/// The configuration is reloaded (NGINX: SIGHUP; Traffic Server: `traffic_ctl config reload`)
/// with a new version of the plugin while clients keep sending requests through a chain of two
/// plugins, one of which dispatches an `http_call` for every request. An operator expects a
/// reload to be invisible to clients (as Envoy's listener drain: requests in flight finish on the
/// old filter chain, new ones get the new): every request answered 200 by the old or the new
/// plugins, no process dies.
#[test]
fn a_reload_while_requests_flow_fails_no_request_and_kills_no_process() {
    let upstream = callout();
    let origin = Origin::start();
    let port = upstream.port();
    let tagging = move |tag: &str| filter("tagger", "tagger_vm", &format!(r#"{{"tag":"{tag}","upstream":"127.0.0.1:{port}"}}"#));
    let caller = filter("caller", "caller_vm", &format!(r#"{{"tag":"caller","upstream":"127.0.0.1:{}"}}"#, upstream.port()));
    let s = <Server as ServerUnderTest>::start(
        Setup::new("combo-reload", origin.port()).workers(2).reloadable().plugin("tagger", tagging("v1")).plugin("caller", caller),
    );
    let r = send(&s, Request::get("/before"));
    assert_eq!(r.header_all("x-proxy-wasm"), ["caller", "v1"], "response callbacks in reverse order\n{}", s.log_report());
    let flow = Flow::start(
        s.port(),
        8,
        || Request::get("/flow").header("x-pw-test", "http-call").timeout(Duration::from_secs(20)),
        |r| {
            let tags = r.header_all("x-proxy-wasm").join(",");
            r.status == 200
                && (tags.contains("v1") || tags.contains("v2"))
                && r.header_all("x-pw-callout-status") == ["200", "200"]
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    s.rewrite_plugin("tagger", &tagging("v2"));
    s.reload_configuration();
    std::thread::sleep(Duration::from_millis(500));
    let (sent, failures) = flow.finish();
    assert!(failures.is_empty(), "{} of {sent} requests failed: {:?}\n{}", failures.len(), &failures[..failures.len().min(10)], s.log_report());
    assert!(sent > 20, "only {sent} requests during the reload");
    let r = send(&s, Request::get("/after"));
    assert!(r.header_all("x-proxy-wasm").join(",").contains("v2"), "{:?}\n{}", r.headers, s.log_report());
    s.assert_nothing_died();
}

/// As above with a plugin that has a 5 ms tick timer (`proxy_set_tick_period_milliseconds`): the
/// reload retires its instances, and their timers, while the timers fire. An operator expects the
/// old ticks to stop and the new instances' to start (Envoy cancels a retired VM's timer with
/// the VM) without any request failing or the server aborting.
#[test]
fn a_reload_of_a_plugin_with_a_tick_timer_while_requests_flow_fails_no_request_and_kills_no_process() {
    let origin = Origin::start();
    let ticking = |tag: &str| filter("ticker", "ticker_vm", &format!(r#"{{"tag":"{tag}","tick_ms":5}}"#));
    let s = <Server as ServerUnderTest>::start(
        Setup::new("combo-reload-tick", origin.port()).workers(2).reloadable().plugin("ticker", ticking("v1")),
    );
    let ticks = || send(&s, Request::get("/t").header("x-pw-test", "shared-get").header("x-pw-key", "ticks")).body_str().parse::<u64>().unwrap_or(0);
    assert!(e2e::wait_until(WAIT, || ticks() > 10), "the plugin ticks\n{}", s.log_report());
    let flow = Flow::start(s.port(), 8, || Request::get("/flow").timeout(Duration::from_secs(20)), |r| r.status == 200 && matches!(r.header("x-proxy-wasm"), Some("v1" | "v2")));
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        s.rewrite_plugin("ticker", &ticking(if round % 2 == 0 { "v2" } else { "v1" }));
        s.reload_configuration();
    }
    std::thread::sleep(Duration::from_millis(300));
    let (sent, failures) = flow.finish();
    assert!(failures.is_empty(), "{} of {sent} requests failed: {:?}\n{}", failures.len(), &failures[..failures.len().min(10)], s.log_report());
    let before = ticks();
    assert!(e2e::wait_until(WAIT, || ticks() > before + 10), "the new instances tick\n{}", s.log_report());
    s.assert_nothing_died();
}

/// An Otoroshi job (the step plugin as a Job entity, `otoroshi.jobs`, every 20 ms) has run many
/// times when the configuration is reloaded while requests flow through a Proxy-Wasm plugin. An
/// operator expects the old job to stop (`job_stop`) and the new configuration's to start, as
/// Otoroshi stops a job whose plugin changed, with no request failing and no process dying.
#[test]
fn a_reload_while_an_otoroshi_job_runs_fails_no_request_and_kills_no_process() {
    let origin = Origin::start();
    let (id, yaml) = step_entity("rust", &["Job"]);
    let yaml = yaml.replace("wasm_plugins:", &format!("  jobs:\n    - {{ plugin: {id}, interval: 20ms }}\nwasm_plugins:"));
    let s = <Server as ServerUnderTest>::start(
        Setup::new("combo-reload-job", origin.port())
            .workers(1)
            .reloadable()
            .plugin("pw", filter("pw", "pw_vm", r#"{"tag":"pw"}"#))
            .plugin(&id, yaml),
    );
    s.expect_log("rust job_run #5", WAIT);
    let flow = Flow::start(s.port(), 4, || Request::get("/flow").timeout(Duration::from_secs(20)), |r| r.status == 200 && r.header("x-proxy-wasm") == Some("pw"));
    std::thread::sleep(Duration::from_millis(300));
    s.reload_configuration();
    s.expect_log("rust job_stop #1", WAIT);
    assert!(
        e2e::wait_until(WAIT, || s.logs().matches("rust job_start #").count() >= 2),
        "the new configuration's job started\n{}",
        s.log_report()
    );
    std::thread::sleep(Duration::from_millis(300));
    let (sent, failures) = flow.finish();
    assert!(failures.is_empty(), "{} of {sent} requests failed: {:?}\n{}", failures.len(), &failures[..failures.len().min(10)], s.log_report());
    s.assert_nothing_died();
}

// ------------------------------------------------------------------ empty and huge inputs

/// A chain of two plugins that both edit the request and the response body (each appends its own
/// suffix once the body ended): an empty body, then a body of 6 MiB. An operator expects the
/// edits in chain order on the request (`a` then `b`) and in reverse on the response (`b` then
/// `a`), the whole body passed on byte for byte, and a body-less POST left body-less: Envoy calls
/// no body callback for a request or response without a body (its headers carry end_of_stream).
/// The same 6 MiB pass on WAMR (`E2E_RUNTIME=wamr`): the body lives in the filter's linear
/// memory, which grows as on Wasmtime (instances get no WAMR app heap: src/runtime/wamr.rs sets
/// its size to 0), so no smaller size is needed there.
#[test]
fn an_empty_body_and_a_body_of_several_mib_go_through_the_body_callbacks_of_a_chain() {
    let origin = Origin::start();
    let s = <Server as ServerUnderTest>::start(
        Setup::new("combo-bodies", origin.port())
            .plugin("a", filter("a", "a_vm", r#"{"tag":"a","suffix":"[a]"}"#))
            .plugin("b", filter("b", "b_vm", r#"{"tag":"b","suffix":"[b]"}"#)),
    );
    let edit = "req-body-append, resp-body-append";
    let r = send(&s, Request::post("/echo/empty", Vec::new()).header("x-pw-test", edit));
    assert_eq!(r.status, 200, "{}", s.log_report());
    let seen = origin.wait_for_path("/echo/empty", WAIT);
    assert_eq!(seen.body_str(), "", "the origin got the empty body as it was");
    assert_eq!(r.body_str(), "", "the client got the empty body as it was");
    let body = e2e::pattern_body(6 << 20);
    let r = send(&s, Request::post("/echo/big", body.clone()).header("x-pw-test", edit));
    assert_eq!(r.status, 200, "{}", s.log_report());
    let seen = origin.wait_for_path("/echo/big", WAIT);
    let mut expected = body.clone();
    expected.extend_from_slice(b"[a][b]");
    assert!(seen.body == expected, "the origin got {} bytes, expected {}", seen.body.len(), expected.len());
    expected.extend_from_slice(b"[b][a]");
    assert!(r.body == expected, "the client got {} bytes, expected {}", r.body.len(), expected.len());
    s.assert_nothing_died();
}

/// 200 request headers and one of 24 KiB through a chain of two plugins that read and edit the
/// request headers (`headers`). An operator expects every header to reach the origin unchanged
/// beside the plugins' edits, and each plugin to see all of them (Envoy hands a filter the whole
/// header map whatever its size, within its own header limits, which these stay under).
#[test]
fn many_headers_and_a_long_header_value_go_through_a_chain() {
    let origin = Origin::start();
    let s = <Server as ServerUnderTest>::start(
        Setup::new("combo-headers", origin.port())
            .plugin("a", filter("a", "a_vm", r#"{"tag":"a"}"#))
            .plugin("b", filter("b", "b_vm", r#"{"tag":"b"}"#)),
    );
    let long: String = e2e::pattern_body(24 << 10).into_iter().map(char::from).collect();
    let mut req = Request::get("/many").header("x-pw-test", "headers").header("x-long", long.clone()).header("x-pw-echo", long.clone());
    for i in 0..200 {
        req = req.header(format!("x-many-{i}"), format!("value {i}"));
    }
    let r = send(&s, req);
    assert_eq!(r.status, 200, "{}", s.log_report());
    let seen = origin.wait_for_path("/many", WAIT);
    assert_eq!(seen.header("x-long"), Some(long.as_str()), "the long value reached the origin whole");
    for i in 0..200 {
        assert_eq!(seen.header(&format!("x-many-{i}")), Some(format!("value {i}").as_str()));
    }
    assert_eq!(seen.header_all("x-pw-added").len(), 2, "both plugins added their header: {:?}", seen.header_all("x-pw-added"));
    let counts = r.header_all("x-pw-req-header-count");
    assert_eq!(counts.len(), 2, "{:?}", r.headers);
    for n in &counts {
        assert!(n.parse::<usize>().is_ok_and(|n| n > 200), "each plugin saw every header: {counts:?}");
    }
    assert_eq!(r.header_all("x-pw-req-header-count-param"), counts, "the count passed to the callback is the map's");
    assert!(r.header_all("x-pw-echo").iter().all(|e| long.starts_with(*e) && e.len() == 256), "{:?}", r.header_all("x-pw-echo"));
    s.assert_nothing_died();
}

// ------------------------------------------------------------------ Proxy-Wasm and Otoroshi

/// A Proxy-Wasm plugin that dispatches an `http_call` and an Otoroshi entity that asks an auth
/// service (examples/otoroshi/http-access.json, both PDKs) in one chain, one NGINX worker / one
/// Traffic Server exec thread. Four requests whose auth answers are held wait, and meanwhile
/// another request's calls, the plugin's and the entity's, must be answered. An operator expects
/// one slow service to hold only the requests that wait for it: Otoroshi runs each plugin call on
/// its own (asynchronous) execution, Envoy never blocks a worker on an `http_call`.
#[test]
fn a_plugin_and_an_entity_make_their_http_calls_at_once_and_slow_calls_hold_no_other_request() {
    let upstream = callout();
    let origin = Origin::start();
    for pdk in PDKS {
        let gate = Arc::new(Gate::default());
        let held = gate.clone();
        let auth = Origin::with_handler(move |req: &origin::Request| {
            if req.path_only().starts_with("/auth/slow") {
                held.wait();
            }
            origin::Response::text(200, "ok")
        });
        let (id, yaml) = entity("http-access", &format!("otoroshi_{pdk}_template_http_access.wasm"), |doc| {
            doc["config"]["config"]["auth_url"] = auth.url("/auth").into();
            doc["config"]["authorizations"]["proxyHttpCallTimeout"] = 20_000.into();
        });
        let caller = filter("caller", "caller_vm", &format!(r#"{{"tag":"caller","upstream":"127.0.0.1:{}"}}"#, upstream.port()));
        let s = <Server as ServerUnderTest>::start(
            Setup::new(&format!("combo-oto-calls-{pdk}"), origin.port()).workers(1).plugin("caller", caller).plugin(&id, yaml),
        );
        let port = s.port();
        let slow: Vec<_> = (0..4)
            .map(|i| std::thread::spawn(move || Request::get(&format!("/slow/{i}")).header("x-pw-test", "http-call").timeout(Duration::from_secs(40)).send(port)))
            .collect();
        assert!(
            e2e::wait_until(WAIT, || auth.requests().iter().filter(|r| r.path_only().starts_with("/auth/slow")).count() == 4),
            "{pdk}: the four slow auth calls are pending\n{}",
            s.log_report()
        );
        let started = Instant::now();
        let fast = Request::get("/fast").header("x-pw-test", "http-call").timeout(Duration::from_secs(8)).send(port);
        let waited = started.elapsed();
        gate.open();
        let fast = fast.unwrap_or_else(|e| panic!("{pdk}: {e} after {waited:?}\n{}", s.log_report()));
        assert_eq!((fast.status, fast.header("x-pw-callout-status")), (200, Some("200")), "{pdk}: {:?}\n{}", fast.headers, s.log_report());
        assert!(waited < Duration::from_secs(3), "{pdk}: the fast request waited {waited:?} behind the slow calls");
        for t in slow {
            let r = t.join().unwrap().unwrap_or_else(|e| panic!("{pdk}: {e}\n{}", s.log_report()));
            assert_eq!((r.status, r.header("x-pw-callout-status")), (200, Some("200")), "{pdk}: {:?}", r.headers);
        }
        s.assert_nothing_died();
    }
}

/// A Proxy-Wasm plugin and an entity whose TransformResponse step answers something that is not
/// JSON (`this is not JSON {`), in one chain. An operator expects the step's failure, not the
/// origin's response: Otoroshi fails a transformation whose output it cannot read (500), and both
/// servers must say the same; the plugin's own response header work is not what the client gets.
#[test]
fn a_transform_response_step_that_answers_garbage_fails_the_response_with_500() {
    let origin = Origin::start();
    for pdk in PDKS {
        let (id, yaml) = step_entity(pdk, &["TransformResponse"]);
        let s = <Server as ServerUnderTest>::start(
            Setup::new(&format!("combo-oto-garbage-{pdk}"), origin.port())
                .workers(1)
                .plugin("pw", filter("pw", "pw_vm", r#"{"tag":"pw"}"#))
                .plugin(&id, yaml),
        );
        let r = send(&s, Request::get("/fine"));
        assert_eq!(r.status, 200, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        assert!(r.header("x-response-transformed-by").is_some(), "{pdk}: the step ran: {:?}", r.headers);
        let r = send(&s, Request::get("/garbage").header("x-fail", "transform_response").header("x-fail-mode", "garbage"));
        assert_eq!(r.status, 500, "{pdk}: {:?} {}\n{}", r.headers, r.body_str(), s.log_report());
        assert!(!r.body_str().contains("hello from origin"), "{pdk}: the origin's body did not pass: {}", r.body_str());
        assert_eq!(send(&s, Request::get("/again")).status, 200, "{pdk}: the next response is transformed again");
        s.assert_nothing_died();
    }
}

}
