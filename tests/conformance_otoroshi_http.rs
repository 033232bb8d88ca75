//! Otoroshi entities that make HTTP calls, on both servers (`for_each_server!`): the access
//! control of examples/otoroshi/http-access.json, built with the AssemblyScript PDK (Extism's
//! `http_request`) and the Rust PDK (Otoroshi's `proxy_http_call`), asks an auth service before
//! each request. Its calls run off the event loop (NGINX's thread pool, Traffic Server's task
//! threads): a call waiting for a slow service does not hold another request on the same single
//! NGINX worker / Traffic Server exec thread.
//!
//! Run with `make ats nginx && cargo test --test conformance_otoroshi_http` (and with
//! `E2E_RUNTIME=wamr`).

mod e2e;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::client::{Request, Response};
use e2e::origin::{self, Gate, Origin};
use e2e::server::{ServerUnderTest, Setup};

const PDKS: [&str; 2] = ["as", "rust"];

/// The auth service: `/auth/deny...` answers 403 "no entry", `/auth/slow...` 200 once the gate
/// opens, anything else 200 "ok".
fn auth_service(gate: Arc<Gate>) -> Origin {
    Origin::with_handler(move |req: &origin::Request| {
        let path = req.path_only();
        if path.starts_with("/auth/deny") {
            origin::Response::text(403, "no entry")
        } else if path.starts_with("/auth/slow") {
            gate.wait();
            origin::Response::text(200, "ok, slowly")
        } else {
            origin::Response::text(200, "ok")
        }
    })
}

/// examples/otoroshi/http-access.json with the module of `pdk`, asking `auth_url`, in our YAML
/// (`otoroshi:` settings, the export pasted under `wasm_plugins:`). `timeout_ms` is both
/// `proxyHttpCallTimeout` (Rust's `proxy_http_call`) and `callback_timeout` (which bounds
/// Extism's `http_request`, the AssemblyScript plugin's).
fn entity(pdk: &str, auth_url: &str, timeout_ms: u64) -> (String, String) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("examples/otoroshi/http-access.json")).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["config"]["source"]["path"] = format!("@REPO@/build/plugins/otoroshi_{pdk}_template_http_access.wasm").into();
    doc["config"]["config"]["auth_url"] = auth_url.into();
    doc["config"]["authorizations"]["proxyHttpCallTimeout"] = timeout_ms.into();
    let id = doc["id"].as_str().unwrap().to_owned();
    let yaml =
        format!("otoroshi:\n  runtime: wasmtime\n  callback_timeout: {}ms\nwasm_plugins:\n  - {doc}\n", timeout_ms);
    (id, yaml)
}

/// The entity alone in front of `origin`, one NGINX worker / one Traffic Server exec thread.
fn start<S: ServerUnderTest>(test: &str, origin: &Origin, pdk: &str, auth_url: &str, timeout_ms: u64) -> S {
    let (id, yaml) = entity(pdk, auth_url, timeout_ms);
    S::start(Setup::new(&format!("{test}-{pdk}"), origin.port()).workers(1).plugin(&id, yaml))
}

/// `yaml` (entity `id`) alone in front of `origin`, one worker / exec thread.
fn start_entity<S: ServerUnderTest>(origin: &Origin, pdk: &str, id: &str, yaml: String) -> S {
    S::start(Setup::new(&format!("oto-http-body-{pdk}"), origin.port()).workers(1).plugin(id, yaml))
}

fn send<S: ServerUnderTest>(s: &S, req: Request) -> Response {
    s.send(&req.timeout(Duration::from_secs(40))).unwrap_or_else(|e| panic!("{}: {e}\n{}", S::NAME, s.log_report()))
}

fn auth_paths(auth: &Origin) -> Vec<String> {
    auth.requests().iter().map(|r| r.path_only().to_owned()).collect()
}

e2e::server::for_each_server! {

#[test]
fn the_auth_service_allows_and_denies() {
    let origin = Origin::start();
    let gate = Arc::new(Gate::default());
    let auth = auth_service(gate.clone());
    for pdk in PDKS {
        let s: Server = start("oto-http", &origin, pdk, &auth.url("/auth"), 10_000);
        auth.clear();
        let r = send(&s, Request::get("/allowed/page"));
        assert_eq!(r.status, 200, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        let asked = auth.last_request().expect("the plugin asked the auth service");
        assert_eq!(asked.path_only(), "/auth/allowed/page", "{pdk}");
        assert_eq!(asked.header("x-auth-pdk"), Some(pdk), "{pdk}: the plugin's own request");
        assert!(origin.requests().iter().any(|q| q.path_only() == "/allowed/page"), "{pdk}: the origin was called");

        let before = origin.request_count();
        let r = send(&s, Request::get("/deny/me").header("accept", "application/json"));
        assert_eq!(r.status, 403, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        assert!(r.body_str().contains("denied by the auth service (403)"), "{pdk}: {}", r.body_str());
        assert_eq!(r.header("otoroshi-error"), Some("true"), "{pdk}: Otoroshi's error form");
        assert_eq!(origin.request_count(), before, "{pdk}: a denied request never reaches the origin");
        assert!(auth_paths(&auth).contains(&"/auth/deny/me".to_owned()), "{pdk}");
        s.assert_nothing_died();
    }
}

#[test]
fn a_host_outside_allowed_hosts_is_refused() {
    let origin = Origin::start();
    let auth = auth_service(Arc::new(Gate::default()));
    // allowedHosts is ["127.0.0.1"]: "localhost" is another host, even if it is the same service.
    let url = format!("http://localhost:{}/auth", auth.port());
    for pdk in PDKS {
        let s: Server = start("oto-http-host", &origin, pdk, &url, 10_000);
        let before = origin.request_count();
        let r = send(&s, Request::get("/anything").header("accept", "application/json"));
        match pdk {
            // Extism's http_request ends the call: the plugin fails, and the entity fails closed.
            "as" => assert_eq!(r.status, 503, "{pdk}: {}\n{}", r.body_str(), s.log_report()),
            // Otoroshi's proxy_http_call answers 403 without calling: the plugin denies.
            _ => {
                assert_eq!(r.status, 403, "{pdk}: {}\n{}", r.body_str(), s.log_report());
                assert!(r.body_str().contains("denied by the auth service (403)"), "{pdk}: {}", r.body_str());
            }
        }
        assert_eq!(auth.request_count(), 0, "{pdk}: the service outside allowedHosts was never called");
        assert_eq!(origin.request_count(), before, "{pdk}");
        s.assert_nothing_died();
    }
}

#[test]
fn a_slow_auth_call_does_not_hold_other_requests() {
    let origin = Origin::start();
    for pdk in PDKS {
        let gate = Arc::new(Gate::default());
        let auth = auth_service(gate.clone());
        let s = Arc::new(start::<Server>("oto-http-slow", &origin, pdk, &auth.url("/auth"), 40_000));
        let slow_done = Arc::new(AtomicBool::new(false));
        let slow = {
            let (s, slow_done) = (s.clone(), slow_done.clone());
            std::thread::spawn(move || {
                let r = send(&*s, Request::get("/slow/one"));
                slow_done.store(true, Ordering::SeqCst);
                r
            })
        };
        // The slow request's call is in the auth service, held by the gate.
        auth.wait_for_path("/auth/slow/one", Duration::from_secs(20));
        // Another request on the same single worker / exec thread is answered meanwhile.
        let r = send(&*s, Request::get("/fast/two"));
        assert_eq!(r.status, 200, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        assert!(!slow_done.load(Ordering::SeqCst), "{pdk}: the slow request is still pending");
        assert!(origin.requests().iter().any(|q| q.path_only() == "/fast/two"), "{pdk}");
        gate.open();
        let r = slow.join().unwrap();
        assert_eq!(r.status, 200, "{pdk}: the slow request is answered once its call returns\n{}", s.log_report());
        assert!(origin.requests().iter().any(|q| q.path_only() == "/slow/one"), "{pdk}");
        s.assert_nothing_died();
    }
}

#[test]
fn a_client_gone_while_its_call_runs_leaves_the_server_serving() {
    use std::io::Write;
    let origin = Origin::start();
    for pdk in PDKS {
        let gate = Arc::new(Gate::default());
        let auth = auth_service(gate.clone());
        let s: Server = start("oto-http-gone", &origin, pdk, &auth.url("/auth"), 40_000);
        let mut client = std::net::TcpStream::connect(("127.0.0.1", s.port())).unwrap();
        client.write_all(b"GET /slow/gone HTTP/1.1\r\nHost: gone.test\r\n\r\n").unwrap();
        auth.wait_for_path("/auth/slow/gone", Duration::from_secs(20));
        // The client goes while the plugin's call waits for the service; then the call returns.
        client.shutdown(std::net::Shutdown::Both).unwrap();
        drop(client);
        gate.open();
        // Whatever became of that request, the worker / exec thread serves the next ones.
        for path in ["/after/one", "/after/two"] {
            let r = send(&s, Request::get(path));
            assert_eq!(r.status, 200, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        }
        s.assert_nothing_died();
    }
}

#[test]
fn body_steps_of_an_entity_that_calls_out_run_off_the_event_loop() {
    // The all-steps test plugins import http_request: granted a host, their TransformRequest and
    // TransformResponse calls run off the event loop, at the end of each body.
    let origin = Origin::with_handler(|req: &origin::Request| origin::Response::echo(req));
    for (pdk, tag) in [("as", "assemblyscript"), ("rust", "rust")] {
        let (id, yaml) = entity(pdk, "http://127.0.0.1:9/unused", 10_000);
        let yaml = yaml
            .replace(&format!("otoroshi_{pdk}_template_http_access.wasm"), &format!("otoroshi_{pdk}.wasm"))
            .replace("\"functionName\":\"execute\"", "\"functionName\":\"\"")
            .replace("\"steps\":[\"ValidateAccess\"]", "\"steps\":[\"TransformRequest\",\"TransformResponse\"]");
        assert!(yaml.contains("TransformResponse"), "{yaml}");
        let s: Server = start_entity(&origin, pdk, &id, yaml);
        let r = send(&s, Request::post("/body", "ping").header("content-type", "text/plain"));
        assert_eq!(r.status, 200, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        let seen = origin.last_request().expect("the origin was called");
        assert_eq!(seen.body_str(), format!("transformed by {tag}: ping"), "{pdk}: TransformRequest's body");
        assert_eq!(r.body_str(), format!("transformed by {tag}: transformed by {tag}: ping"), "{pdk}: TransformResponse's body");
        s.assert_nothing_died();
    }
}

#[test]
fn a_call_past_its_timeout_fails_the_plugin_and_the_server_serves_on() {
    let origin = Origin::start();
    for pdk in PDKS {
        let gate = Arc::new(Gate::default());
        let auth = auth_service(gate.clone());
        // 500 ms: proxyHttpCallTimeout for proxy_http_call, callback_timeout for http_request.
        let s: Server = start("oto-http-timeout", &origin, pdk, &auth.url("/auth"), 500);
        let before = origin.request_count();
        let r = send(&s, Request::get("/slow/three"));
        // No answer in time ends the plugin's call: a failure of the entity, which fails closed.
        assert_eq!(r.status, 503, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        assert_eq!(origin.request_count(), before, "{pdk}: the request never reached the origin");
        gate.open();
        let r = send(&s, Request::get("/after"));
        assert_eq!(r.status, 200, "{pdk}: the server serves on\n{}", s.log_report());
        s.assert_nothing_died();
    }
}

}
