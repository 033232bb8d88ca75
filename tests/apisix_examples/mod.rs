//! The end-to-end cases of the APISIX example plugins (`examples/fault-injection`,
//! `examples/forward-auth`, `examples/response-rewrite`; README "Examples"),
//! written once against `e2e::server::ServerUnderTest` and run on both
//! servers by `tests/conformance_examples.rs` ([`cases!`] inside
//! `for_each_server!`); `tests/ats_examples.rs` and `tests/nginx_examples.rs`
//! keep what is about one server only.
//!
//! Each example gets one server (per test binary) with one route per
//! configuration, chosen by the Host header (`<route>.test`): a remap rule on
//! Traffic Server, a `server_name` on NGINX. The origin and the auth service
//! are real HTTP servers (`e2e::origin`). Every request of a test has a path
//! of its own, so tests that share a server and origin run in parallel.

// Each test binary uses a part of it: the conformance suite the cases, the
// servers' own files a route or two.
#![allow(dead_code)]

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::e2e::client::{Connection, Request, Response};
use crate::e2e::origin::{self, Origin};
use crate::e2e::server::{ServerUnderTest, Setup};
use crate::e2e::{repo_root, wait_until};

/// A plugin route: requests with `Host: <host>` go through the plugin named
/// `plugin`, loaded from the YAML text `yaml`, to the origin.
pub struct Route {
    pub host: String,
    /// The plugin's `name` (NGINX's `proxy_wasm` names it; Traffic Server's remap rule names the file).
    pub plugin: String,
    pub yaml: String,
}

/// Starts `S` named after `test` with `routes` in front of the origin at
/// `origin_port`: per route its plugin, and requests with the route's Host
/// through it (a remap rule on Traffic Server, a `server_name` on NGINX).
pub fn start<S: ServerUnderTest>(test: &str, origin_port: u16, routes: &[Route]) -> S {
    let mut setup = Setup::new(test, origin_port);
    for r in routes {
        setup = setup.plugin(&r.plugin, r.yaml.clone()).route(&r.host, &[&r.plugin]);
    }
    S::start(setup)
}

/// Sends `req` on a new connection; panics (with the server's logs) if no
/// response comes.
pub fn send<S: ServerUnderTest>(s: &S, req: &Request) -> Response {
    s.send(req).unwrap_or_else(|e| panic!("{}: {e}\n{}", S::NAME, s.log_report()))
}

const WAIT: Duration = Duration::from_secs(5);

/// A route to the example `wasm` (`fault_injection`, ...) with `configuration` (JSON).
/// `extra` goes into the `config:` map (e.g. `authorizations`).
pub fn route(host: &str, wasm: &str, configuration: &str, extra: &str) -> Route {
    let plugin = host.to_string();
    let configuration: String = configuration.lines().map(|l| format!("    {l}\n")).collect();
    let yaml = format!(
        "config:\n  name: \"{plugin}\"\n  root_id: \"\"\n  configuration: |\n{configuration}{extra}  vm_config:\n    vm_id: \"{plugin}\"\n    code:\n      local:\n        filename: \"@REPO@/build/plugins/{wasm}.wasm\"\n"
    );
    Route { host: format!("{host}.test"), plugin, yaml }
}

/// A route with the example's own YAML file (`examples/<dir>/<dir>.yaml`), as
/// documented, except: the module path (relative there) made absolute, the
/// plugin renamed to `host`, and each `(from, to)` of `replace` applied.
pub fn documented_route(host: &str, dir: &str, replace: &[(&str, String)]) -> Route {
    let path = repo_root().join("examples").join(dir).join(format!("{dir}.yaml"));
    let mut yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    yaml = yaml.replace("\"../../build/plugins/", "\"@REPO@/build/plugins/");
    let name_line = format!("  name: \"{dir}\"");
    assert!(yaml.contains(&name_line), "{} has no line {name_line:?}", path.display());
    yaml = yaml.replace(&name_line, &format!("  name: \"{host}\""));
    for (from, to) in replace {
        assert!(yaml.contains(from), "{} does not contain {from:?}", path.display());
        yaml = yaml.replace(from, to);
    }
    Route { host: format!("{host}.test"), plugin: host.to_string(), yaml }
}

/// The first request the origin got for `path`, waiting for it.
fn request_for(origin: &Origin, path: &str) -> origin::Request {
    origin.wait_for_path(path, WAIT)
}

/// Asserts that no request for `path` reaches the origin (within a short window:
/// a request the plugin let through would arrive within milliseconds).
fn never_reaches(origin: &Origin, path: &str) {
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !origin.requests().iter().any(|r| r.path == path),
        "the origin got {path}, which the plugin should have answered itself"
    );
}

/// The response's framing matches its body: at most one `Content-Length`,
/// and if there is one it is the body's length (and the body is not chunked).
fn assert_framing_right(r: &Response) {
    let lengths = r.header_all("content-length");
    assert!(lengths.len() <= 1, "several Content-Length headers: {:?}", r.headers);
    if let Some(cl) = lengths.first() {
        assert!(!r.chunked, "both Content-Length and chunked: {:?}", r.headers);
        assert_eq!(
            cl.trim().parse::<usize>().ok(),
            Some(r.body.len()),
            "Content-Length {cl} for a body of {} bytes",
            r.body.len()
        );
    }
}

/// A fixture shared by the tests of one binary that are running: started by
/// the first, stopped when none holds it any more. One per fixture type (a
/// fixture on NGINX and one on Traffic Server are two types).
fn shared<T: Send + Sync + 'static>(make: impl FnOnce() -> T) -> Arc<T> {
    static SLOTS: Mutex<Option<HashMap<TypeId, Box<dyn Any + Send>>>> = Mutex::new(None);
    let mut slots = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
    let slot =
        slots.get_or_insert_with(HashMap::new).entry(TypeId::of::<T>()).or_insert_with(|| Box::new(Weak::<T>::new()));
    let weak = slot.downcast_mut::<Weak<T>>().expect("a slot holds its own type");
    if let Some(f) = weak.upgrade() {
        return f;
    }
    let f = Arc::new(make());
    *weak = Arc::downgrade(&f);
    f
}

// ------------------------------------------------------------------ fault-injection

pub struct Fault<S> {
    pub origin: Origin,
    pub proxy: S,
}

pub const FAULT_BODY: &str = "Fault Injection!\n";
/// The delay of the `fi-delay` route.
pub const DELAY: Duration = Duration::from_millis(1000);

pub fn fault<S: ServerUnderTest>() -> Arc<Fault<S>> {
    shared(|| {
        let origin = Origin::start();
        let abort = |p: u32| {
            format!(
                r#"{{"abort": {{"http_status": 403, "body": "Fault Injection!\n", "headers": {{"x-fault": "abort"}}, "percentage": {p}}}}}"#
            )
        };
        let routes = [
            route("fi-abort-all", "fault_injection", &abort(100), ""),
            route("fi-abort-none", "fault_injection", &abort(0), ""),
            route("fi-abort-half", "fault_injection", &abort(50), ""),
            route(
                "fi-delay",
                "fault_injection",
                &format!(r#"{{"delay": {{"duration": {}}}}}"#, DELAY.as_secs_f64()),
                "",
            ),
            route(
                "fi-delay-abort",
                "fault_injection",
                r#"{"delay": {"duration": 0.5, "percentage": 100}, "abort": {"http_status": 403, "body": "Fault Injection!\n"}}"#,
                "",
            ),
            documented_route("fi-documented", "fault-injection", &[]),
        ];
        let proxy = start::<S>("apisix-fault", origin.port(), &routes);
        Fault { origin, proxy }
    })
}

pub fn abort_at_100_percent_answers_the_status_headers_and_body<S: ServerUnderTest>() {
    let f = fault::<S>();
    let path = "/fi/abort-all";
    let r = send(&f.proxy, &Request::get(path).host("fi-abort-all.test"));
    assert_eq!(r.status, 403, "{}", f.proxy.log_report());
    assert_eq!(r.body_str(), FAULT_BODY);
    assert_eq!(r.header("x-fault"), Some("abort"));
    assert_framing_right(&r);
    never_reaches(&f.origin, path);
}

pub fn abort_at_0_percent_lets_every_request_through<S: ServerUnderTest>() {
    let f = fault::<S>();
    for i in 0..20 {
        let path = format!("/fi/abort-none/{i}");
        let r = send(&f.proxy, &Request::get(&path).host("fi-abort-none.test"));
        assert_eq!(
            (r.status, r.body_str().as_str()),
            (200, "hello from origin"),
            "request {i}\n{}",
            f.proxy.log_report()
        );
        request_for(&f.origin, &path);
    }
}

pub fn abort_at_50_percent_aborts_some_requests_and_passes_the_others<S: ServerUnderTest>() {
    let f = fault::<S>();
    let (mut aborted, mut passed) = (0, 0);
    for i in 0..100 {
        let r = send(&f.proxy, &Request::get(&format!("/fi/abort-half/{i}")).host("fi-abort-half.test"));
        match (r.status, r.body_str().as_str()) {
            (403, FAULT_BODY) => aborted += 1,
            (200, "hello from origin") => passed += 1,
            other => panic!("request {i}: unexpected {other:?}\n{}", f.proxy.log_report()),
        }
    }
    // Binomial(100, 0.5): outside 20..=80 with a probability below 1e-9.
    assert!((20..=80).contains(&aborted), "{aborted} of 100 aborted at 50%");
    let reached = f.origin.requests().iter().filter(|r| r.path.starts_with("/fi/abort-half/")).count();
    assert_eq!(reached, passed, "the origin got exactly the requests that were not aborted");
}

pub fn delay_holds_the_request_for_the_duration_then_sends_it_on<S: ServerUnderTest>() {
    let f = fault::<S>();
    let path = "/fi/delay";
    let t0 = Instant::now();
    let r = send(&f.proxy, &Request::get(path).host("fi-delay.test").timeout(Duration::from_secs(20)));
    let took = t0.elapsed();
    assert_eq!((r.status, r.body_str().as_str()), (200, "hello from origin"), "{}", f.proxy.log_report());
    assert!(took >= DELAY, "the response came after {took:?}, before the {DELAY:?} delay");
    request_for(&f.origin, path);
}

pub fn concurrent_delayed_requests_each_wait_their_own_delay<S: ServerUnderTest>() {
    let f = fault::<S>();
    let handles: Vec<_> = (0..5)
        .map(|i| {
            let f = f.clone();
            std::thread::spawn(move || {
                // Staggered, so the waiting list holds requests with different due times.
                std::thread::sleep(Duration::from_millis(100 * i));
                let t0 = Instant::now();
                let r = send(
                    &f.proxy,
                    &Request::get(&format!("/fi/delay-many/{i}"))
                        .host("fi-delay.test")
                        .timeout(Duration::from_secs(20)),
                );
                (i, r.status, r.body_str(), t0.elapsed())
            })
        })
        .collect();
    for h in handles {
        let (i, status, body, took) = h.join().expect("client thread");
        assert_eq!((status, body.as_str()), (200, "hello from origin"), "request {i}\n{}", f.proxy.log_report());
        assert!(took >= DELAY, "request {i} came back after {took:?}, before the {DELAY:?} delay");
        request_for(&f.origin, &format!("/fi/delay-many/{i}"));
    }
}

pub fn a_client_that_leaves_during_a_delay_does_not_disturb_the_plugin<S: ServerUnderTest>() {
    let f = fault::<S>();
    let proxy_port = f.proxy.port();
    for i in 0..3 {
        let mut c = Connection::open(proxy_port).expect("connect");
        c.write_raw(&Request::get(&format!("/fi/left/{i}")).host("fi-delay.test").to_bytes(), WAIT)
            .expect("write the request");
        std::thread::sleep(Duration::from_millis(100));
        c.close();
    }
    // The requests left behind come due meanwhile; later ones are delayed as before.
    std::thread::sleep(DELAY);
    let t0 = Instant::now();
    let r = send(&f.proxy, &Request::get("/fi/after-left").host("fi-delay.test").timeout(Duration::from_secs(20)));
    let took = t0.elapsed();
    assert_eq!((r.status, r.body_str().as_str()), (200, "hello from origin"), "{}", f.proxy.log_report());
    assert!(took >= DELAY, "the response came after {took:?}, before the {DELAY:?} delay");
    let logs = f.proxy.logs();
    assert!(!logs.contains("trapped") && !logs.contains("panicked"), "the plugin failed\n{}", f.proxy.log_report());
}

pub fn delay_then_abort_answers_after_the_delay_without_the_origin<S: ServerUnderTest>() {
    let f = fault::<S>();
    let path = "/fi/delay-abort";
    let t0 = Instant::now();
    let r = send(&f.proxy, &Request::get(path).host("fi-delay-abort.test").timeout(Duration::from_secs(20)));
    let took = t0.elapsed();
    assert_eq!((r.status, r.body_str().as_str()), (403, FAULT_BODY), "{}", f.proxy.log_report());
    assert!(took >= Duration::from_millis(500), "the abort came after {took:?}, before the 0.5 s delay");
    never_reaches(&f.origin, path);
}

pub fn the_documented_yaml_loads_and_answers_each_request_with_the_origin_or_the_fault<S: ServerUnderTest>() {
    let f = fault::<S>();
    for i in 0..10 {
        let path = format!("/fi/documented/{i}");
        let r = send(&f.proxy, &Request::get(&path).host("fi-documented.test").timeout(Duration::from_secs(20)));
        match (r.status, r.body_str().as_str()) {
            (503, "fault injected\n") => assert_eq!(r.header("x-fault"), Some("abort")),
            (200, "hello from origin") => {
                request_for(&f.origin, &path);
            }
            other => panic!("request {i}: unexpected {other:?}\n{}", f.proxy.log_report()),
        }
    }
}

// ------------------------------------------------------------------ forward-auth

pub struct Auth<S> {
    pub origin: Origin,
    pub auth: Origin,
    pub proxy: S,
}

pub const DENY_BODY: &str = "denied by the auth service\n";

/// The auth service: `Bearer good` → 200 with `X-User-ID`/`X-User-Role`;
/// `Bearer slow` → the same after 3 s; anything else → 401 with a body and headers.
fn auth_service() -> Origin {
    Origin::with_handler(|req| {
        let token = req.header("authorization").unwrap_or("");
        let allow = origin::Response::text(200, "ok").header("x-user-id", "alice").header("x-user-role", "admin");
        match token {
            "Bearer good" => allow,
            "Bearer slow" => allow.delay(Duration::from_secs(3)),
            _ => origin::Response::text(401, DENY_BODY)
                .header("www-authenticate", "Bearer realm=\"test\"")
                .header("x-auth-reason", "bad token")
                .header("x-not-listed", "internal"),
        }
    })
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local_addr").port()
}

pub fn auth<S: ServerUnderTest>() -> Arc<Auth<S>> {
    shared(|| {
        let origin = Origin::start();
        let auth = auth_service();
        let down = closed_port();
        let config = |uri: &str, timeout: u32, extra: &str| {
            format!(
                r#"{{"uri": "{uri}", "request_headers": ["Authorization", "X-Request-Marker"], "upstream_headers": ["X-User-ID"], "client_headers": ["WWW-Authenticate", "X-Auth-Reason"], "timeout": {timeout}{extra}}}"#
            )
        };
        let allowed = |hostport: String| format!("  authorizations:\n    allowed_hosts: [\"{hostport}\"]\n");
        let auth_uri = format!("http://127.0.0.1:{}/auth?from=proxy", auth.port());
        let down_uri = format!("http://127.0.0.1:{down}/auth");
        let routes = [
            route("fa", "forward_auth", &config(&auth_uri, 3000, ""), &allowed(format!("127.0.0.1:{}", auth.port()))),
            route(
                "fa-timeout",
                "forward_auth",
                &config(&auth_uri, 500, ""),
                &allowed(format!("127.0.0.1:{}", auth.port())),
            ),
            route("fa-down", "forward_auth", &config(&down_uri, 3000, ""), &allowed(format!("127.0.0.1:{down}"))),
            route(
                "fa-degrade",
                "forward_auth",
                &config(&down_uri, 3000, r#", "allow_degradation": true"#),
                &allowed(format!("127.0.0.1:{down}")),
            ),
            documented_route(
                "fa-documented",
                "forward-auth",
                &[("127.0.0.1:9080", format!("127.0.0.1:{}", auth.port()))],
            ),
        ];
        let proxy = start::<S>("apisix-auth", origin.port(), &routes);
        Auth { origin, auth, proxy }
    })
}

/// The auth service's request for the client request `path` (by `X-Forwarded-Uri`).
fn auth_request_for(auth: &Origin, path: &str) -> origin::Request {
    let mut found = None;
    wait_until(WAIT, || {
        found = auth.requests().into_iter().find(|r| r.header("x-forwarded-uri") == Some(path));
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("the auth service never got a request for {path}"))
}

pub fn the_auth_service_gets_the_chosen_request_headers_and_the_forwarded_ones<S: ServerUnderTest>() {
    let f = auth::<S>();
    let path = "/fa/headers?q=1";
    let r = send(
        &f.proxy,
        &Request::post(path, "the body stays here")
            .host("fa.test")
            .header("Authorization", "Bearer good")
            .header("X-Request-Marker", "m1")
            .header("X-Not-Chosen", "stays"),
    );
    assert_eq!(r.status, 200, "{}", f.proxy.log_report());
    let a = auth_request_for(&f.auth, path);
    assert_eq!((a.method.as_str(), a.path.as_str()), ("GET", "/auth?from=proxy"));
    assert_eq!(a.header("authorization"), Some("Bearer good"));
    assert_eq!(a.header("x-request-marker"), Some("m1"));
    assert!(!a.has_header("x-not-chosen"), "{:?}", a.headers);
    assert_eq!(a.header("x-forwarded-method"), Some("POST"));
    assert_eq!(a.header("x-forwarded-host"), Some("fa.test"));
    assert_eq!(a.header("x-forwarded-proto"), Some("http"));
    assert_eq!(a.header("x-forwarded-for"), Some("127.0.0.1"));
    assert!(a.body.is_empty(), "the auth request has no body");
}

pub fn an_allowed_request_reaches_the_origin_with_the_chosen_auth_headers<S: ServerUnderTest>() {
    let f = auth::<S>();
    let path = "/fa/allowed";
    let r = send(
        &f.proxy,
        &Request::post(path, "request body")
            .host("fa.test")
            .header("Authorization", "Bearer good")
            // A client cannot choose its own identity: the auth service's value replaces it.
            .header("X-User-ID", "mallory"),
    );
    assert_eq!((r.status, r.body_str().as_str()), (200, "hello from origin"), "{}", f.proxy.log_report());
    let o = request_for(&f.origin, path);
    assert_eq!(o.header_all("x-user-id"), vec!["alice"]);
    assert!(!o.has_header("x-user-role"), "only upstream_headers are copied: {:?}", o.headers);
    assert_eq!(o.header("authorization"), Some("Bearer good"));
    assert_eq!(o.body_str(), "request body");
}

pub fn a_denied_request_gets_the_auth_services_status_chosen_headers_and_body<S: ServerUnderTest>() {
    let f = auth::<S>();
    let path = "/fa/denied";
    let r = send(&f.proxy, &Request::get(path).host("fa.test").header("Authorization", "Bearer bad"));
    assert_eq!((r.status, r.body_str().as_str()), (401, DENY_BODY), "{}", f.proxy.log_report());
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"test\""));
    assert_eq!(r.header("x-auth-reason"), Some("bad token"));
    assert!(!r.has_header("x-not-listed"), "only client_headers are copied: {:?}", r.headers);
    assert!(!r.has_header("x-user-id"));
    assert_framing_right(&r);
    never_reaches(&f.origin, path);
}

pub fn an_auth_service_that_is_down_answers_403<S: ServerUnderTest>() {
    let f = auth::<S>();
    let path = "/fa/down";
    let r = send(&f.proxy, &Request::get(path).host("fa-down.test").header("Authorization", "Bearer good"));
    assert_eq!(r.status, 403, "{}", f.proxy.log_report());
    assert_framing_right(&r);
    never_reaches(&f.origin, path);
}

pub fn an_auth_service_slower_than_the_timeout_answers_403<S: ServerUnderTest>() {
    let f = auth::<S>();
    let path = "/fa/slow";
    let t0 = Instant::now();
    let r = send(
        &f.proxy,
        &Request::get(path)
            .host("fa-timeout.test")
            .header("Authorization", "Bearer slow")
            .timeout(Duration::from_secs(20)),
    );
    let took = t0.elapsed();
    assert_eq!(r.status, 403, "{}", f.proxy.log_report());
    // A 200 comes after 3 s: the 403 is the timeout. nginx counts its timers
    // from its cached clock, which may lag the real one by a few milliseconds.
    assert!(took >= Duration::from_millis(480), "answered after {took:?}, before the 500 ms timeout");
    auth_request_for(&f.auth, path);
    never_reaches(&f.origin, path);
}

pub fn allow_degradation_lets_the_request_through_when_the_auth_service_is_down<S: ServerUnderTest>() {
    let f = auth::<S>();
    let path = "/fa/degraded";
    let r = send(&f.proxy, &Request::get(path).host("fa-degrade.test"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "hello from origin"), "{}", f.proxy.log_report());
    let o = request_for(&f.origin, path);
    assert!(!o.has_header("x-user-id"));
}

pub fn the_documented_yaml_allows_and_denies<S: ServerUnderTest>() {
    let f = auth::<S>();
    let r = send(
        &f.proxy,
        &Request::get("/fa/doc-allow").host("fa-documented.test").header("Authorization", "Bearer good"),
    );
    assert_eq!(r.status, 200, "{}", f.proxy.log_report());
    assert_eq!(request_for(&f.origin, "/fa/doc-allow").header("x-user-id"), Some("alice"));
    let r =
        send(&f.proxy, &Request::get("/fa/doc-deny").host("fa-documented.test").header("Authorization", "Bearer bad"));
    assert_eq!((r.status, r.body_str().as_str()), (401, DENY_BODY), "{}", f.proxy.log_report());
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"test\""));
    assert!(!r.has_header("x-auth-reason"), "the documented YAML copies only WWW-Authenticate");
    never_reaches(&f.origin, "/fa/doc-deny");
}

// ------------------------------------------------------------------ response-rewrite

pub struct Rewrite<S> {
    pub origin: Origin,
    pub proxy: S,
}

pub const NEW_BODY: &str = "{\"rewritten\": true}\n";
/// The body the `rr-b64` route decodes from base64: every byte value.
pub fn binary_body() -> Vec<u8> {
    (0..=255u8).collect()
}
/// Size of the origin's chunked body on `/chunked`.
pub const CHUNKED_LEN: usize = 200 * 1024;

fn rewrite_origin() -> Origin {
    Origin::with_handler(|req| {
        let r = if req.path_only().starts_with("/rr/chunked") {
            origin::Response::new(200)
                .header("content-type", "text/plain")
                .body(crate::e2e::pattern_body(CHUNKED_LEN))
                .chunked(4096)
        } else {
            origin::Response::text(200, "hello from origin")
        };
        let r = if req.path_only() == "/rr/validators" { r.header("content-encoding", "identity") } else { r };
        r.header("x-remove", "1")
            .header("x-replace", "old")
            .header("x-multi", "origin")
            .header("x-keep", "kept")
            .header("etag", "\"v1\"")
            .header("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")
    })
}

pub fn rewrite<S: ServerUnderTest>() -> Arc<Rewrite<S>> {
    shared(|| {
        use base64::Engine as _;
        let origin = rewrite_origin();
        let full = format!(
            r#"{{"status_code": 403, "headers": {{"add": ["X-Multi: added"], "set": {{"X-Replace": "new", "X-Set-New": "1"}}, "remove": ["X-Remove"]}}, "body": {}}}"#,
            serde_json::to_string(NEW_BODY).expect("json")
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(binary_body());
        let routes = [
            route("rr", "response_rewrite", &full, ""),
            route(
                "rr-old-headers",
                "response_rewrite",
                r#"{"status_code": 201, "headers": {"X-Replace": "old-style", "X-Remove": "", "X-Number": 7}}"#,
                "",
            ),
            route("rr-b64", "response_rewrite", &format!(r#"{{"body": "{b64}", "body_base64": true}}"#), ""),
            documented_route("rr-documented", "response-rewrite", &[]),
        ];
        let proxy = start::<S>("apisix-rewrite", origin.port(), &routes);
        Rewrite { origin, proxy }
    })
}

pub fn status_headers_and_body_are_replaced<S: ServerUnderTest>() {
    let f = rewrite::<S>();
    let r = send(&f.proxy, &Request::get("/rr/full").host("rr.test"));
    assert_eq!(r.status, 403, "{}", f.proxy.log_report());
    assert_eq!(r.body_str(), NEW_BODY);
    assert_framing_right(&r);
    assert_eq!(r.header_all("x-multi"), vec!["origin", "added"], "add appends to the origin's value");
    assert_eq!(r.header_all("x-replace"), vec!["new"]);
    assert_eq!(r.header("x-set-new"), Some("1"));
    assert!(!r.has_header("x-remove"), "{:?}", r.headers);
    assert_eq!(r.header("x-keep"), Some("kept"));
    assert!(
        !r.has_header("etag") && !r.has_header("last-modified"),
        "validators of the old body are dropped: {:?}",
        r.headers
    );
    request_for(&f.origin, "/rr/full");
}

pub fn a_chunked_origin_body_is_replaced_whole<S: ServerUnderTest>() {
    let f = rewrite::<S>();
    let r = send(&f.proxy, &Request::get("/rr/chunked").host("rr.test"));
    assert_eq!(r.status, 403, "{}", f.proxy.log_report());
    assert_eq!(r.body_str(), NEW_BODY, "nothing of the origin's {CHUNKED_LEN} chunked bytes may remain");
    assert_framing_right(&r);
    assert_eq!(r.header("x-set-new"), Some("1"));
}

pub fn the_old_header_form_sets_and_an_empty_value_removes_and_the_body_stays<S: ServerUnderTest>() {
    let f = rewrite::<S>();
    let r = send(&f.proxy, &Request::get("/rr/old").host("rr-old-headers.test"));
    assert_eq!(r.status, 201, "{}", f.proxy.log_report());
    assert_eq!(r.body_str(), "hello from origin");
    assert_framing_right(&r);
    assert_eq!(r.header_all("x-replace"), vec!["old-style"]);
    assert_eq!(r.header("x-number"), Some("7"));
    assert!(!r.has_header("x-remove"), "{:?}", r.headers);
    assert_eq!(r.header("etag"), Some("\"v1\""), "the body is the origin's: its validators stay");
}

pub fn a_base64_body_is_decoded<S: ServerUnderTest>() {
    let f = rewrite::<S>();
    let r = send(&f.proxy, &Request::get("/rr/b64").host("rr-b64.test"));
    assert_eq!(r.status, 200, "{}", f.proxy.log_report());
    assert_eq!(r.body, binary_body());
    assert_framing_right(&r);
}

pub fn a_replaced_body_drops_the_origins_validators_and_encoding<S: ServerUnderTest>() {
    let f = rewrite::<S>();
    // Status 200 (nginx drops Last-Modified by itself on other statuses).
    let r = send(&f.proxy, &Request::get("/rr/validators").host("rr-b64.test"));
    assert_eq!(r.status, 200, "{}", f.proxy.log_report());
    assert_eq!(r.body, binary_body());
    for name in ["etag", "last-modified", "content-encoding"] {
        assert!(!r.has_header(name), "{name} describes the origin's body, not the new one: {:?}", r.headers);
    }
    assert_eq!(r.header("x-keep"), Some("kept"), "other headers stay");
}

pub fn a_chunked_origin_body_is_replaced_by_a_base64_body<S: ServerUnderTest>() {
    let f = rewrite::<S>();
    let r = send(&f.proxy, &Request::get("/rr/chunked-b64").host("rr-b64.test"));
    assert_eq!(r.status, 200, "{}", f.proxy.log_report());
    assert_eq!(r.body, binary_body());
    assert_framing_right(&r);
}

pub fn the_documented_yaml_rewrites_the_response<S: ServerUnderTest>() {
    let f = rewrite::<S>();
    let r = send(&f.proxy, &Request::get("/rr/documented").host("rr-documented.test"));
    assert_eq!(r.status, 200, "{}", f.proxy.log_report());
    assert_eq!(r.body_str(), "{\"code\":\"ok\",\"message\":\"new json body\"}\n");
    assert_eq!(r.header("x-server-id"), Some("3"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-server-balancer-addr"), Some("127.0.0.1:8081"));
    assert_framing_right(&r);
}

/// The test functions, inside `e2e::server::for_each_server!` of a test file
/// that has `mod apisix_examples;` at its root: `apisix_examples::cases!();`
/// (they run on that module's `Server`).
#[allow(unused_macros)]
macro_rules! cases {
    () => {
        mod fault_injection {
            use crate::apisix_examples as x;
            #[test]
            fn abort_at_100_percent_answers_the_status_headers_and_body() {
                x::abort_at_100_percent_answers_the_status_headers_and_body::<super::Server>()
            }
            #[test]
            fn abort_at_0_percent_lets_every_request_through() {
                x::abort_at_0_percent_lets_every_request_through::<super::Server>()
            }
            #[test]
            fn abort_at_50_percent_aborts_some_requests_and_passes_the_others() {
                x::abort_at_50_percent_aborts_some_requests_and_passes_the_others::<super::Server>()
            }
            #[test]
            fn delay_holds_the_request_for_the_duration_then_sends_it_on() {
                x::delay_holds_the_request_for_the_duration_then_sends_it_on::<super::Server>()
            }
            #[test]
            fn concurrent_delayed_requests_each_wait_their_own_delay() {
                x::concurrent_delayed_requests_each_wait_their_own_delay::<super::Server>()
            }
            #[test]
            fn a_client_that_leaves_during_a_delay_does_not_disturb_the_plugin() {
                x::a_client_that_leaves_during_a_delay_does_not_disturb_the_plugin::<super::Server>()
            }
            #[test]
            fn delay_then_abort_answers_after_the_delay_without_the_origin() {
                x::delay_then_abort_answers_after_the_delay_without_the_origin::<super::Server>()
            }
            #[test]
            fn the_documented_yaml_loads_and_answers_each_request_with_the_origin_or_the_fault() {
                x::the_documented_yaml_loads_and_answers_each_request_with_the_origin_or_the_fault::<super::Server>()
            }
        }
        mod forward_auth {
            use crate::apisix_examples as x;
            #[test]
            fn the_auth_service_gets_the_chosen_request_headers_and_the_forwarded_ones() {
                x::the_auth_service_gets_the_chosen_request_headers_and_the_forwarded_ones::<super::Server>()
            }
            #[test]
            fn an_allowed_request_reaches_the_origin_with_the_chosen_auth_headers() {
                x::an_allowed_request_reaches_the_origin_with_the_chosen_auth_headers::<super::Server>()
            }
            #[test]
            fn a_denied_request_gets_the_auth_services_status_chosen_headers_and_body() {
                x::a_denied_request_gets_the_auth_services_status_chosen_headers_and_body::<super::Server>()
            }
            #[test]
            fn an_auth_service_that_is_down_answers_403() {
                x::an_auth_service_that_is_down_answers_403::<super::Server>()
            }
            #[test]
            fn an_auth_service_slower_than_the_timeout_answers_403() {
                x::an_auth_service_slower_than_the_timeout_answers_403::<super::Server>()
            }
            #[test]
            fn allow_degradation_lets_the_request_through_when_the_auth_service_is_down() {
                x::allow_degradation_lets_the_request_through_when_the_auth_service_is_down::<super::Server>()
            }
            #[test]
            fn the_documented_yaml_allows_and_denies() {
                x::the_documented_yaml_allows_and_denies::<super::Server>()
            }
        }
        mod response_rewrite {
            use crate::apisix_examples as x;
            #[test]
            fn status_headers_and_body_are_replaced() {
                x::status_headers_and_body_are_replaced::<super::Server>()
            }
            #[test]
            fn a_chunked_origin_body_is_replaced_whole() {
                x::a_chunked_origin_body_is_replaced_whole::<super::Server>()
            }
            #[test]
            fn the_old_header_form_sets_and_an_empty_value_removes_and_the_body_stays() {
                x::the_old_header_form_sets_and_an_empty_value_removes_and_the_body_stays::<super::Server>()
            }
            #[test]
            fn a_base64_body_is_decoded() {
                x::a_base64_body_is_decoded::<super::Server>()
            }
            #[test]
            fn a_replaced_body_drops_the_origins_validators_and_encoding() {
                x::a_replaced_body_drops_the_origins_validators_and_encoding::<super::Server>()
            }
            #[test]
            fn a_chunked_origin_body_is_replaced_by_a_base64_body() {
                x::a_chunked_origin_body_is_replaced_by_a_base64_body::<super::Server>()
            }
            #[test]
            fn the_documented_yaml_rewrites_the_response() {
                x::the_documented_yaml_rewrites_the_response::<super::Server>()
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use cases;
