//! Otoroshi's data store (`proxy_datastore_*`) seen from outside, on both servers: one store for
//! all NGINX workers (the `proxy_wasm` shared-memory zone) and for all Traffic Server threads.
//! The plugins are the host-function test plugins built with the AssemblyScript and the Rust PDK
//! (tests/plugins/otoroshi: `x-host: datastore`, `x-op`, `x-key` run one data-store operation in
//! CallBackend and answer `{"result": ...}`), their entities as examples/otoroshi/ exports them.
//! Also: Traffic Server runs a load's plugins and entities in file order, interleaved, and
//! applies TransformRequest's method, url, headers and cookies, and TransformResponse's status,
//! headers and cookies, as NGINX does.
//!
//! Run with `make ats nginx && cargo test --test conformance_otoroshi_shared` (and with
//! `E2E_RUNTIME=wamr`).

mod e2e;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use e2e::client::{Request, Response};
use e2e::nginx::{Nginx, NginxOptions};
use e2e::origin::Origin;
use e2e::server::{ServerUnderTest, Setup};

const PDKS: [&str; 2] = ["as", "rust"];
const WAIT: Duration = Duration::from_secs(10);

/// The entity of examples/otoroshi/host-functions-`pdk`.json with its module built by `pdk`, in
/// our YAML (the export pasted unchanged under `wasm_plugins:`). Its id and the file's text.
fn host_entity(pdk: &str) -> (String, String) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join(format!("examples/otoroshi/host-functions-{pdk}.json"))).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["config"]["source"]["path"] = format!("@REPO@/build/plugins/otoroshi_{pdk}_host.wasm").into();
    let id = doc["id"].as_str().unwrap().to_owned();
    (id, format!("otoroshi:\n  runtime: wasmtime\n  callback_timeout: 5s\nwasm_plugins:\n  - {doc}\n"))
}

/// A data-store operation of the global store (`x-op`), on `key`.
fn ds(op: &str, key: &str) -> Request {
    Request::get("/ds")
        .header("x-host", "datastore")
        .header("x-op", op)
        .header("x-key", key)
        .timeout(Duration::from_secs(20))
}

/// The operation's `result`, from the plugin's JSON report.
fn result(r: &Response) -> serde_json::Value {
    assert_eq!(r.status, 200, "{}", r.body_str());
    let report: serde_json::Value =
        serde_json::from_str(&r.body_str()).unwrap_or_else(|e| panic!("{e}: {}", r.body_str()));
    report["result"].clone()
}

fn int(r: &Response) -> i64 {
    result(r).as_i64().unwrap_or_else(|| panic!("not a number: {}", r.body_str()))
}

/// `count` requests from 20 client threads, each on a new connection.
fn burst(port: u16, count: usize, req: impl Fn() -> Request + Sync) -> Vec<Response> {
    let per = count.div_ceil(20);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..20)
            .map(|t| {
                let req = &req;
                scope.spawn(move || {
                    (t * per..((t + 1) * per).min(count))
                        .map(|i| req().send(port).unwrap_or_else(|e| panic!("request {i}: {e}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads.into_iter().flat_map(|t| t.join().expect("client thread")).collect()
    })
}

/// The counts an `incrby` burst answered, sorted: exactly 1..=n when one store served them all.
fn assert_exact_counts(responses: &[Response], log: impl Fn() -> String) {
    let mut counts: Vec<i64> = responses.iter().map(int).collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=responses.len() as i64).collect::<Vec<_>>(), "no duplicate, no gap\n{}", log());
}

/// Sends `req` until `done` holds for an answer (a TTL running out), at most `WAIT`.
fn poll_until(send: impl Fn() -> Response, done: impl Fn(&Response) -> bool, what: &str) -> Response {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = send();
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: last answer {}", r.body_str());
        std::thread::sleep(Duration::from_millis(20));
    }
}

e2e::server::for_each_server! {

#[test]
fn the_data_store_is_one_for_every_worker_or_thread_with_ttls() {
    let origin = Origin::start();
    for pdk in PDKS {
        let (id, yaml) = host_entity(pdk);
        let s = <Server as ServerUnderTest>::start(Setup::new(&format!("oto-ds-{pdk}"), origin.port()).workers(2).plugin(&id, yaml));
        let send = |req: Request| s.send(&req).unwrap_or_else(|e| panic!("{pdk}: {e}\n{}", s.log_report()));
        // INCRBY from 20 clients on fresh connections: every count once.
        let counts = burst(s.port(), 200, || ds("incrby", "hits"));
        assert_exact_counts(&counts, || s.log_report());
        assert_eq!(result(&send(ds("get", "hits"))), serde_json::json!("200"), "{pdk}");
        // A key with a TTL: PTTL counts down, then the key is gone (GET null, PTTL -2).
        assert_eq!(int(&send(ds("set", "short").header("x-value", "soon gone").header("x-ttl", "300"))), 1);
        let left = int(&send(ds("pttl", "short")));
        assert!((0..=300).contains(&left), "{pdk}: pttl {left}");
        poll_until(|| send(ds("pttl", "short")), |r| int(r) == -2, "the key never expired");
        assert_eq!(result(&send(ds("get", "short"))), serde_json::Value::Null);
        assert_eq!(int(&send(ds("exists", "short"))), 0);
        // PEXPIRE on a key without TTL (-1), then it expires too.
        assert_eq!(int(&send(ds("set", "later").header("x-value", "v"))), 1);
        assert_eq!(int(&send(ds("pttl", "later"))), -1);
        assert_eq!(int(&send(ds("pexpire", "later").header("x-pttl", "200"))), 1);
        let left = int(&send(ds("pttl", "later")));
        assert!((0..=200).contains(&left), "{pdk}: pttl {left}");
        poll_until(|| send(ds("exists", "later")), |r| int(r) == 0, "the key never expired after PEXPIRE");
        // The keys of the store, with Otoroshi's prefix.
        assert_eq!(result(&send(ds("keys", "").header("x-pattern", "h*"))), serde_json::json!(["otoroshi:hits"]));
        s.assert_nothing_died();
    }
}

#[test]
fn two_routes_share_one_data_store() {
    // Traffic Server loads each remap rule's files apart (one load per rule); NGINX names the
    // entity in two `server`s: either way one store.
    let origin = Origin::start();
    let (id, yaml) = host_entity("rust");
    let setup = Setup::new("oto-ds-routes", origin.port())
        .workers(2)
        .plugin(&id, yaml)
        .route("a.example", &[&id])
        .route("b.example", &[&id])
        .default_route(&[]);
    let s = <Server as ServerUnderTest>::start(setup);
    for i in 1..=20i64 {
        let host = if i % 2 == 0 { "a.example" } else { "b.example" };
        let r = s.send(&ds("incrby", "shared").host(host)).unwrap_or_else(|e| panic!("{e}\n{}", s.log_report()));
        assert_eq!(int(&r), i, "{host}\n{}", s.log_report());
    }
}

}

/// nginx with 2 workers, the host entity on every request, and the worker's pid on every answer.
fn nginx_with_pids(test: &str, origin: &Origin, pdk: &str) -> Nginx {
    let (id, yaml) = host_entity(pdk);
    Nginx::start(
        NginxOptions::new(test)
            .workers(2)
            .origin(origin.port())
            .file("host.yaml", yaml)
            .http("proxy_wasm_config @CONF@/host.yaml;")
            .server(format!(
                "add_header x-worker-pid $pid always;\nlocation / {{ proxy_wasm {id}; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }}"
            )),
    )
}

fn pid(r: &Response) -> String {
    r.header("x-worker-pid").unwrap_or_else(|| panic!("no x-worker-pid: {r:?}")).to_owned()
}

#[test]
fn nginx_workers_share_the_data_store_and_its_ttls() {
    let origin = Origin::start();
    for pdk in PDKS {
        let n = nginx_with_pids(&format!("oto-ds-ngx-{pdk}"), &origin, pdk);
        let workers: BTreeSet<String> = n.worker_pids().iter().map(|p| p.to_string()).collect();
        assert_eq!(workers.len(), 2, "{}", n.log_report());
        let send = |req: Request| n.send(&req).unwrap_or_else(|e| panic!("{pdk}: {e}\n{}", n.log_report()));
        // INCRBY bursts until both workers answered some: the counts are still each seen once.
        let mut all = Vec::new();
        for _ in 0..10 {
            all.extend(burst(n.port(), 100, || ds("incrby", "hits")));
            if all.iter().map(pid).collect::<BTreeSet<_>>() == workers {
                break;
            }
        }
        assert_eq!(all.iter().map(pid).collect::<BTreeSet<_>>(), workers, "both workers answered");
        assert_exact_counts(&all, || n.log_report());
        // A value set through one worker is read through the other.
        let set = send(ds("set", "greeting").header("x-value", "hello from one worker").header("x-ttl", "60000"));
        assert_eq!(int(&set), 1);
        let writer = pid(&set);
        let read = poll_until(|| send(ds("get", "greeting")), |r| pid(r) != writer, "no answer from the other worker");
        assert_eq!(result(&read), serde_json::json!("hello from one worker"));
        let left = int(&poll_until(|| send(ds("pttl", "greeting")), |r| pid(r) != writer, "the other worker"));
        assert!((1..=60000).contains(&left), "{pdk}: pttl {left} in the other worker");
        // A TTL set (PEXPIRE) through one worker runs out for the other.
        let expire = send(ds("pexpire", "greeting").header("x-pttl", "300"));
        assert_eq!(int(&expire), 1);
        let writer = pid(&expire);
        poll_until(
            || send(ds("get", "greeting")),
            |r| pid(r) != writer && result(r).is_null(),
            "the other worker never saw the key expire",
        );
        assert_eq!(n.worker_pids().len(), 2, "no worker died\n{}", n.log_report());
    }
}

/// A Traffic Server remap rule (or global plugin line) runs its files' plugins and entities in
/// file order, as NGINX runs its `proxy_wasm` directives: the Rust-SDK filter `pw` answers the
/// request when its header says so; an access-control entity before it denies first, after it
/// the filter answers first.
mod order {
    use super::*;

    fn filter_yaml() -> String {
        "- config:\n    name: \"pw\"\n    configuration: '{\"tag\":\"pw\"}'\n    vm_config:\n      vm_id: \"pw_vm\"\n      runtime: wasmtime\n      code:\n        local:\n          filename: \"@REPO@/build/plugins/rust_sdk_filter.wasm\"\n".to_string()
    }

    fn access_entity() -> (String, String) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("examples/otoroshi/access-control.json")).unwrap();
        let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        doc["config"]["source"]["path"] = "@REPO@/build/plugins/otoroshi_rust_template_access_control.wasm".into();
        let id = doc["id"].as_str().unwrap().to_owned();
        (id, format!("otoroshi:\n  runtime: wasmtime\nwasm_plugins:\n  - {doc}\n"))
    }

    crate::e2e::server::for_each_server! {

    #[test]
    fn plugins_and_entities_run_in_file_order() {
        let origin = Origin::start();
        let (id, yaml) = access_entity();
        let setup = Setup::new("oto-order", origin.port())
            .workers(1)
            .plugin("pw", filter_yaml())
            .plugin(&id, yaml)
            .route("entity-first.example", &[&id, "pw"])
            .route("filter-first.example", &["pw", &id])
            .default_route(&[]);
        let s = <Server as ServerUnderTest>::start(setup);
        let send = |host: &str| {
            let req = Request::get("/order").host(host).header("foo", "nope").header("x-pw-test", "local");
            s.send(&req.timeout(Duration::from_secs(20))).unwrap_or_else(|e| panic!("{e}\n{}", s.log_report()))
        };
        // The entity first: it denies (401) before the filter's answer.
        let r = send("entity-first.example");
        assert_eq!(r.status, 401, "{}\n{}", r.body_str(), s.log_report());
        assert_eq!(r.header("x-pw-local"), None);
        // The filter first: its local response (403), the entity never runs.
        let r = send("filter-first.example");
        assert_eq!((r.status, r.header("x-pw-local")), (403, Some("request-headers")), "{}\n{}", r.body_str(), s.log_report());
        assert_eq!(origin.request_count(), 0);
    }

    }
}

/// TransformRequest with the step plugins of both PDKs (tests/plugins/otoroshi: `x-set-method`,
/// `x-set-path`, `x-remove-header`, `x-add-cookie`): the origin gets the new method, path and
/// query, headers (one removed, two added), cookies and body, on both servers.
mod transform_request {
    use super::*;

    fn step_entity(pdk: &str) -> (String, String) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("examples/otoroshi/request-transformer.json")).unwrap();
        let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        doc["config"]["source"]["path"] = format!("@REPO@/build/plugins/otoroshi_{pdk}.wasm").into();
        // The step's default export, `transform_request`.
        doc["config"]["functionName"] = serde_json::Value::Null;
        let id = format!("transform-request-{pdk}");
        doc["id"] = id.clone().into();
        (id, format!("otoroshi:\n  runtime: wasmtime\nwasm_plugins:\n  - {doc}\n"))
    }

    crate::e2e::server::for_each_server! {

    #[test]
    fn method_url_headers_cookies_and_body_reach_the_origin() {
        let origin = Origin::start();
        for pdk in PDKS {
            let (id, yaml) = step_entity(pdk);
            let s = <Server as ServerUnderTest>::start(Setup::new(&format!("oto-treq-{pdk}"), origin.port()).workers(1).plugin(&id, yaml));
            let req = Request::put(&format!("/original-{pdk}?a=1"), "original body")
                .header("content-type", "text/plain")
                .header("cookie", "client=1")
                .header("x-secret", "do not forward")
                .header("x-set-method", "PATCH")
                .header("x-set-path", &format!("/rewritten-{pdk}?q=2"))
                .header("x-remove-header", "x-secret")
                .header("x-add-cookie", "added=yes")
                .timeout(Duration::from_secs(20));
            let r = s.send(&req).unwrap_or_else(|e| panic!("{pdk}: {e}\n{}", s.log_report()));
            assert_eq!(r.status, 200, "{pdk}: {}\n{}", r.body_str(), s.log_report());
            let seen = origin.wait_for_path(&format!("/rewritten-{pdk}?q=2"), Duration::from_secs(5));
            assert_eq!(seen.method, "PATCH", "{pdk}");
            assert_eq!(seen.header("x-secret"), None, "{pdk}");
            assert!(seen.header("x-transformed-by").is_some_and(|v| v.ends_with("transform_request")), "{pdk}: {:?}", seen.header("x-transformed-by"));
            let cookies = seen.header_all("cookie").join("; ");
            assert!(cookies.contains("client=1") && cookies.contains("added=yes"), "{pdk}: {cookies}");
            assert!(seen.body_str().ends_with(": original body"), "{pdk}: {}", seen.body_str());
            assert!(seen.body_str().starts_with("transformed by "), "{pdk}: {}", seen.body_str());
        }
    }

    }
}

/// TransformResponse with the step plugins of both PDKs (`x-response-status`,
/// `x-remove-response-header`, `x-add-cookie`): the client gets the new status, headers, cookie
/// and body of a response body in many chunks, on both servers (Traffic Server holds the
/// client's response header until the step ran at the end of the body).
mod transform_response {
    use super::*;

    fn step_entity(pdk: &str) -> (String, String) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("examples/otoroshi/response-transformer.json")).unwrap();
        let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        doc["config"]["source"]["path"] = format!("@REPO@/build/plugins/otoroshi_{pdk}.wasm").into();
        doc["config"]["functionName"] = serde_json::Value::Null;
        // Room for a body of many chunks as JSON arrays of signed bytes, in and out.
        doc["config"]["memoryPages"] = 1600.into();
        let id = format!("transform-response-{pdk}");
        doc["id"] = id.clone().into();
        (id, format!("otoroshi:\n  runtime: wasmtime\nwasm_plugins:\n  - {doc}\n"))
    }

    crate::e2e::server::for_each_server! {

    #[test]
    fn status_headers_cookies_and_body_reach_the_client() {
        let big = "0123456789abcdef".repeat(8 * 1024);
        let page = big.clone();
        let origin = Origin::with_handler(move |_| {
            e2e::origin::Response::text(404, page.clone()).header("x-origin-secret", "hidden").header("x-origin-kept", "kept")
        });
        for pdk in PDKS {
            let (id, yaml) = step_entity(pdk);
            let s = <Server as ServerUnderTest>::start(Setup::new(&format!("oto-tresp-{pdk}"), origin.port()).workers(1).plugin(&id, yaml));
            let req = Request::get("/page")
                .header("x-response-status", "201")
                .header("x-remove-response-header", "x-origin-secret")
                .header("x-add-cookie", "added=yes")
                .timeout(Duration::from_secs(20));
            let r = s.send(&req).unwrap_or_else(|e| panic!("{pdk}: {e}\n{}", s.log_report()));
            assert_eq!(r.status, 201, "{pdk}: {}\n{}", r.body_str(), s.log_report());
            assert_eq!(r.header("x-origin-secret"), None, "{pdk}");
            assert_eq!(r.header("x-origin-kept"), Some("kept"), "{pdk}");
            assert_eq!(r.header("x-origin-status"), Some("404"), "{pdk}");
            assert!(r.header("x-response-transformed-by").is_some_and(|v| v.ends_with("transform_response")), "{pdk}");
            assert!(r.header_all("set-cookie").iter().any(|c| c.starts_with("added=yes")), "{pdk}: {:?}", r.header_all("set-cookie"));
            let body = r.body_str();
            assert!(body.starts_with("transformed by ") && body.ends_with(&format!(": {big}")), "{pdk}: {} bytes", body.len());
            s.assert_nothing_died();
        }
    }

    }
}
