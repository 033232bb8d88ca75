//! `proxy_http_call` under concurrency, written once and run on NGINX
//! (`nginx::...`) and on Traffic Server (`ats::...`) through
//! `e2e::server::ServerUnderTest`: several plugins (VMs) with calls in
//! flight at once, calls cancelled by one plugin while another's are
//! pending, recycled generations whose fresh VMs number their calls from 1
//! again while the old ones' calls are still pending (each VM numbers its
//! calls itself, so a server must keep them apart by VM, not by token), the
//! `vm_config.limits` caps (`max_pending_http_calls`,
//! `max_http_call_response_size`), the cap on calls in flight per process,
//! and upstreams that answer with hostile bytes: the server keeps serving.
//! Also what one call reports (its answer's status, headers, body and
//! trailers) and the Rust-SDK filter's call variants (no `:path`, a failed
//! call, a local response from the callback, pauses at the end of a body and
//! in on_response_headers).
//!
//! Plugin `a` filters the host `a.test`, plugin `b` the host `b.test`;
//! other hosts are not filtered.
//!
//! Run with `make plugins ats nginx && cargo test --test conformance_http_calls`
//! (and with `E2E_RUNTIME=wamr`).

mod e2e;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::client::{ClientError, Connection, Request, Response};
use e2e::origin::{self, Origin};
use e2e::server::{ServerUnderTest, Setup};

const WAIT: Duration = Duration::from_secs(10);

/// One Rust-SDK filter plugin (its own `vm_id`) calling `upstream`;
/// `extra_vm_config` is indented by 6.
fn plugin(name: &str, upstream: u16, extra_vm_config: &str) -> String {
    format!(
        r#"- config:
    name: "{name}"
    configuration: '{{"tag":"{name}","upstream":"127.0.0.1:{upstream}","callout_timeout_ms":5000}}'
    authorizations:
      allowed_hosts: ["*"]
    vm_config:
      vm_id: "{name}_vm"
{extra_vm_config}      code:
        local:
          filename: "@REPO@/build/plugins/rust_sdk_filter.wasm"
"#
    )
}

/// The setup of every case: plugins `a` and `b` (YAML given) on their hosts,
/// the rest unfiltered.
fn setup(test: &str, a: String, b: String, origin: &Origin, workers: usize) -> Setup {
    Setup::new(test, origin.port())
        .workers(workers)
        .plugin("a", a)
        .plugin("b", b)
        .route("a.test", &["a"])
        .route("b.test", &["b"])
        .default_route(&[])
}

/// The callout upstream: answers after `delay` with the path it was asked for
/// as the body, so each answer names the request it belongs to.
fn callout(delay: Duration) -> Origin {
    Origin::with_handler(move |req| origin::Response::text(200, req.path.clone()).delay(delay))
}

/// A request through plugin `plugin` (`a` or `b`) whose call asks the
/// callout for `/<plugin>/<id>`.
fn call_request(plugin: &str, id: usize) -> Request {
    call_to(plugin, &format!("/{plugin}/{id}"))
}

/// A request through plugin `plugin` whose call asks the callout for `path`.
fn call_to(plugin: &str, path: &str) -> Request {
    Request::get(&format!("/r{path}"))
        .host(format!("{plugin}.test"))
        .header("x-pw-test", "http-call")
        .header("x-pw-callout-path", path)
        .timeout(Duration::from_secs(20))
}

/// The request was answered through its own plugin with its own call's answer.
fn assert_answered<S: ServerUnderTest>(r: &Result<Response, ClientError>, plugin: &str, id: usize, s: &S) {
    let r = r.as_ref().unwrap_or_else(|e| panic!("request {plugin}/{id}: {e}\n{}", s.log_report()));
    assert_eq!(r.status, 200, "request {plugin}/{id}\n{}", s.log_report());
    assert_eq!(r.header("x-proxy-wasm"), Some(plugin), "request {plugin}/{id}");
    assert_eq!(r.header("x-pw-callout-dispatch"), Some("OK"), "request {plugin}/{id}");
    assert_eq!(r.header("x-pw-callout-status"), Some("200"), "request {plugin}/{id}: {:?}", r.headers);
    assert_eq!(
        r.header("x-pw-callout-body"),
        Some(format!("/{plugin}/{id}").as_str()),
        "request {plugin}/{id} got another call's answer"
    );
}

/// The call failed (the plugin got zero headers) with this status code, and
/// the reason contains `reason`.
fn assert_call_failed<S: ServerUnderTest>(r: Result<Response, ClientError>, code: &str, reason: &str, s: &S) {
    let r = r.unwrap_or_else(|e| panic!("{e}\n{}", s.log_report()));
    assert_eq!(r.status, 200, "{}", s.log_report());
    assert_eq!(r.header("x-pw-callout-failed"), Some("1"), "{:?}\n{}", r.headers, s.log_report());
    assert_eq!(r.header("x-pw-callout-get-status"), Some(code), "{:?}", r.headers);
    let message = r.header("x-pw-callout-get-status-message").unwrap_or_default();
    assert!(message.contains(reason), "{message:?} should contain {reason:?}");
}

/// `total` requests from `clients` threads at once, alternating between the
/// plugins; returns each (plugin, id, outcome).
fn run_concurrently<S: ServerUnderTest>(
    s: &S,
    clients: usize,
    total: usize,
    plugins: &'static [&'static str],
) -> Vec<(&'static str, usize, Result<Response, ClientError>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let port = s.port();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                loop {
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    if id >= total {
                        return out;
                    }
                    let plugin = plugins[id % plugins.len()];
                    out.push((plugin, id, call_request(plugin, id).send(port)));
                }
            })
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
}

/// A raw TCP upstream on 127.0.0.1: for each connection, reads the request
/// head and hands the socket to `answer` (on a thread of its own).
fn raw_upstream(answer: impl Fn(TcpStream) + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let (mut seen, mut buf) = (Vec::new(), [0u8; 4096]);
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                answer(stream);
            });
        }
    });
    port
}

/// One worker (one exec thread) with plugins `a` and `b` calling `upstream`.
fn start_one<S: ServerUnderTest>(test: &str, upstream: u16, origin: &Origin, extra_vm_config: &str) -> S {
    S::start(setup(test, plugin("a", upstream, extra_vm_config), plugin("b", upstream, ""), origin, 1))
}

/// A request through plugin `a` whose call goes to its upstream.
fn hostile_call<S: ServerUnderTest>(s: &S) -> std::thread::JoinHandle<Result<Response, ClientError>> {
    let port = s.port();
    std::thread::spawn(move || call_request("a", 0).send(port))
}

/// While a call waits on a hostile upstream, the server (one worker, one
/// exec thread) answers other requests.
fn assert_server_serves<S: ServerUnderTest>(s: &S) {
    for i in 0..3 {
        let r = s
            .send(&Request::get(&format!("/plain/{i}")).timeout(Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("the server stopped serving: {e}\n{}", s.log_report()));
        assert_eq!(r.status, 200, "{}", s.log_report());
    }
}

/// The callout upstream of the detail cases: `pong <path>`, chunked, with a
/// trailer.
fn detail_callout() -> Origin {
    Origin::with_handler(|req| {
        origin::Response::text(200, format!("pong {}", req.path))
            .header("x-callout-method", req.method.clone())
            .trailer("x-callout-trailer", "t")
            .chunked(4)
    })
}

fn send<S: ServerUnderTest>(s: &S, req: Request) -> Response {
    s.send(&req.timeout(Duration::from_secs(20))).unwrap_or_else(|e| panic!("{}: {e}\n{}", S::NAME, s.log_report()))
}

e2e::server::for_each_server! {

// ------------------------------------------------------------------ a late local response keeps the connection

/// A route's chain pauses for its call and answers from the call's callback:
/// the client connection is kept for the next request, as after an answer
/// given at once (tests/conformance_policies.rs). Traffic Server holds a remap
/// rule's paused chain at POST_REMAP, after remapping, and gives such an
/// answer through a server intercept, as an origin response (its own error
/// response would close the connection).
#[test]
fn a_late_local_response_from_a_routes_chain_keeps_the_client_connection() {
    let callout = callout(Duration::from_millis(20));
    let origin = Origin::start();
    let s = <Server as ServerUnderTest>::start(setup("late-local-keepalive", plugin("a", callout.port(), ""), plugin("b", 1, ""), &origin, 1));
    let late = |path: &str, host: &str| Request::get(path).host(host).header("x-pw-test", "http-call-local").header("x-pw-callout-path", "/late/1").timeout(Duration::from_secs(20));
    let mut c = Connection::open(s.port()).unwrap_or_else(|e| panic!("connect to {}: {e}", Server::NAME));
    let a = c.send(&late("/late", "a.test")).unwrap_or_else(|e| panic!("{e}\n{}", s.log_report()));
    assert_eq!((a.status, a.body_str().as_str()), (200, "callout:/late/1"), "{}", s.log_report());
    assert_eq!(a.header("x-pw-callout-status"), Some("200"), "the plugin's headers: {:?}", a.headers);
    assert!(!a.closes_connection() && !c.is_closed(), "{} closed the connection after the late local response {:?}\n{}", Server::NAME, a.headers, s.log_report());
    // A 503 from the callback of a failed call: late too, same connection.
    let b = c.send(&late("/late-failed", "b.test")).unwrap_or_else(|e| panic!("the second request on the connection: {e}\n{}", s.log_report()));
    assert_eq!((b.status, b.body_str().as_str()), (503, "callout failed"), "{}", s.log_report());
    assert_eq!(b.header("x-pw-callout-failed"), Some("1"), "{:?}", b.headers);
    assert!(!b.closes_connection() && !c.is_closed(), "{:?}\n{}", b.headers, s.log_report());
    let after = c.send(&Request::get("/after").host("a.test").timeout(Duration::from_secs(20))).unwrap_or_else(|e| panic!("the third request on the connection: {e}\n{}", s.log_report()));
    assert_eq!((after.status, after.body_str().as_str()), (200, "hello from origin"), "{}", s.log_report());
    assert!(!origin.requests().iter().any(|q| q.path.starts_with("/late")), "answered locally");
    s.assert_running();
}

// ------------------------------------------------------------------ what a call reports, variants

/// Plugin `a` calls the detail callout; plugin `b` an address where nothing
/// listens (127.0.0.1:1).
#[test]
fn an_http_call_reports_its_answer_and_the_filters_call_variants_behave_the_same() {
    let callout = detail_callout();
    let origin = Origin::start();
    let s = <Server as ServerUnderTest>::start(setup("callout-details", plugin("a", callout.port(), ""), plugin("b", 1, ""), &origin, 1));
    // The answer: status, headers, chunked body, trailers.
    let r = send(&s, Request::get("/c").host("a.test").header("x-pw-test", "http-call").header("x-pw-callout-path", "/other/path?x=1"));
    assert_eq!(r.status, 200, "{}", s.log_report());
    let seen = &callout.wait_for_requests(1, WAIT)[0];
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str(), seen.body_str().as_str()),
        ("POST", "/other/path?x=1", "ping from rust-sdk-filter")
    );
    assert_eq!(seen.header("x-pw-callout"), Some("1"));
    assert!(seen.header("x-pw-context-id").is_some_and(|id| id.parse::<u32>().is_ok()), "{:?}", seen.headers);
    assert_eq!(r.header("x-pw-callout-dispatch"), Some("OK"));
    assert_eq!(r.header("x-pw-callout-status"), Some("200"));
    assert_eq!(r.header("x-pw-callout-body"), Some("pong /other/path?x=1"));
    assert_eq!(r.header("x-pw-callout-body-size"), Some("20"));
    let n = r.header("x-pw-callout-headers").expect("x-pw-callout-headers");
    assert!(n.parse::<u32>().is_ok_and(|n| n >= 3), "status, content-type, x-callout-method at least: {n}");
    assert_eq!(Some(n), r.header("x-pw-callout-header-pairs"));
    assert!(r.header("x-pw-callout-trailers").is_some_and(|t| t.starts_with("1 ")), "{:?}\n{}", r.header("x-pw-callout-trailers"), s.log_report());
    assert_eq!(r.header("x-pw-callout-get-status"), Some("0"));
    assert_eq!(origin.wait_for_path("/c", WAIT).header("x-pw-callout-body"), Some("pong /other/path?x=1"));
    // No :path: refused (BAD_ARGUMENT), the request goes on.
    let r = send(&s, Request::get("/cb").host("a.test").header("x-pw-test", "http-call-bad"));
    assert_eq!((r.status, r.header("x-pw-callout-bad")), (200, Some("BAD_ARGUMENT")), "{}", s.log_report());
    origin.wait_for_path("/cb", WAIT);
    // The answer becomes the local response, from the callback.
    let r = send(&s, Request::get("/cl").host("a.test").header("x-pw-test", "http-call-local"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "callout:pong /callout"), "{}", s.log_report());
    // A failed call calls back with zero headers; the request goes on.
    let r = send(&s, Request::get("/cf").host("a.test").header("x-pw-test", "http-call-fail"));
    assert_eq!((r.header("x-pw-callout-dispatch"), r.header("x-pw-callout-failed")), (Some("OK"), Some("1")), "{}", s.log_report());
    // A failed call answered with a local response 503 from its callback.
    let r = send(&s, Request::get("/fl").host("b.test").header("x-pw-test", "http-call-local"));
    assert_eq!((r.status, r.body_str().as_str()), (503, "callout failed"), "{}", s.log_report());
    assert_eq!(r.header("x-pw-callout-failed"), Some("1"));
    assert!(!origin.requests().iter().any(|q| q.path == "/cl" || q.path == "/fl"), "answered locally");
    // Pauses at the end of the request body and of the response body, and in
    // on_response_headers, resumed by the answer.
    let r = send(&s, Request::post("/echo/crb", "request body").host("a.test").header("x-pw-test", "http-call-req-body"));
    assert_eq!(origin.wait_for_path("/echo/crb", WAIT).body_str(), "request body[callout:200]", "{}", s.log_report());
    assert_eq!(r.body_str(), "request body[callout:200]");
    let r = send(&s, Request::post("/echo/cresp", "response body").host("a.test").header("x-pw-test", "http-call-resp-body"));
    assert_eq!(r.body_str(), "response body[callout:200]", "{}", s.log_report());
    let r = send(&s, Request::get("/cr").host("a.test").header("x-pw-test", "http-call-response"));
    assert_eq!(
        (r.status, r.header("x-pw-callout-status"), r.body_str().as_str()),
        (200, Some("200"), "hello from origin"),
        "{}",
        s.log_report()
    );
    s.assert_running();
}


#[test]
fn two_plugins_with_http_calls_in_flight_at_once_get_their_own_answers() {
    let callout = callout(Duration::from_millis(50));
    let origin = Origin::start();
    let s = <Server as ServerUnderTest>::start(setup("calls-two-vms", plugin("a", callout.port(), ""), plugin("b", callout.port(), ""), &origin, 2));
    let results = run_concurrently(&s, 40, 200, &["a", "b"]);
    assert_eq!(results.len(), 200);
    for (plugin, id, r) in &results {
        assert_answered(r, plugin, *id, &s);
    }
    s.assert_nothing_died();
}

#[test]
fn a_call_cancelled_by_one_plugin_leaves_another_plugins_pending_call_with_the_same_token_alone() {
    let callout = callout(Duration::from_millis(1500));
    let origin = Origin::start();
    let s: Server = start_one("calls-cancel", callout.port(), &origin, "");
    // Plugin b's first call (token 1 of its VM) is pending ...
    let port = s.port();
    let b = std::thread::spawn(move || call_request("b", 1).send(port));
    assert!(e2e::wait_until(WAIT, || callout.request_count() == 1), "b's call reached the callout");
    // ... when plugin a makes its first call (token 1 of its own VM) and the
    // client goes away: a's stream ends and a cancels its call.
    let mut c = TcpStream::connect(("127.0.0.1", s.port())).unwrap();
    c.write_all(b"GET /a/gone HTTP/1.1\r\nHost: a.test\r\nx-pw-test: http-call\r\nx-pw-callout-path: /a/gone\r\n\r\n").unwrap();
    assert!(e2e::wait_until(WAIT, || callout.request_count() == 2), "a's call reached the callout");
    drop(c);
    // b still gets its own answer.
    assert_answered(&b.join().unwrap(), "b", 1, &s);
    let r = s.send(&call_request("a", 2)).unwrap_or_else(|e| panic!("{e}\n{}", s.log_report()));
    assert_eq!(r.header("x-pw-callout-body"), Some("/a/2"), "{}", s.log_report());
    s.assert_nothing_died();
}

#[test]
fn calls_of_recycled_generations_pending_together_get_their_own_answers() {
    // max_calls: 1 gives every request a fresh generation, whose VM numbers
    // its calls from 1 again while the calls of the previous ones are pending.
    let callout = callout(Duration::from_millis(200));
    let origin = Origin::start();
    // Only plugin a is used: the calls differ by generation alone.
    let s: Server = start_one("calls-recycled", callout.port(), &origin, "      kill_options: { max_calls: 1 }\n");
    let results = run_concurrently(&s, 10, 40, &["a"]);
    for (plugin, id, r) in &results {
        assert_answered(r, plugin, *id, &s);
    }
    s.expect_log("recycling", Duration::from_secs(5));
    s.assert_nothing_died();
}

// ------------------------------------------------------------------ hostile upstreams

#[test]
fn an_upstream_sending_a_header_line_without_end_fails_the_call_and_the_server_keeps_serving() {
    let upstream = raw_upstream(|mut s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nx-endless: ");
        let block = [b'a'; 16 << 10];
        while s.write_all(&block).is_ok() {}
    });
    let origin = Origin::start();
    let s: Server = start_one("calls-endless-header", upstream, &origin, "");
    let call = hostile_call(&s);
    std::thread::sleep(Duration::from_millis(300));
    assert_server_serves(&s);
    assert_call_failed(call.join().unwrap(), "502", "longer than", &s);
    s.assert_nothing_died();
}

#[test]
fn an_upstream_sending_a_chunk_size_near_u64_max_fails_the_call_as_too_large() {
    let upstream = raw_upstream(|mut s| {
        // A first chunk, then a size that overflows any sum with it.
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nffffffffffffffff\r\nabc");
        std::thread::sleep(Duration::from_millis(200));
    });
    let origin = Origin::start();
    let s: Server = start_one("calls-huge-chunk", upstream, &origin, "");
    assert_call_failed(hostile_call(&s).join().unwrap(), "413", "max_http_call_response_size", &s);
    assert_server_serves(&s);
    s.assert_nothing_died();
}

#[test]
fn an_answer_with_non_utf8_header_values_completes_the_call() {
    let upstream = raw_upstream(|mut s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nx-latin1: caf\xe9\r\ncontent-length: 4\r\n\r\npong");
        // The connection stays open past the call's timeout (5 s): only the
        // framing says the answer ended.
        std::thread::sleep(Duration::from_secs(10));
    });
    let origin = Origin::start();
    let s: Server = start_one("calls-obs-text", upstream, &origin, "");
    let r = hostile_call(&s).join().unwrap().unwrap_or_else(|e| panic!("{e}\n{}", s.log_report()));
    assert_eq!((r.header("x-pw-callout-status"), r.header("x-pw-callout-body")), (Some("200"), Some("pong")), "{:?}\n{}", r.headers, s.log_report());
}

// ------------------------------------------------------------------ caps

#[test]
fn calls_past_max_pending_http_calls_get_internal_failure_logged_once() {
    let callout = callout(Duration::from_millis(1500));
    let origin = Origin::start();
    let s: Server = start_one("calls-max-pending", callout.port(), &origin, "      limits: { max_pending_http_calls: 2 }\n");
    let port = s.port();
    let pending: Vec<_> = (1..=2).map(|id| std::thread::spawn(move || call_request("a", id).send(port))).collect();
    assert!(e2e::wait_until(WAIT, || callout.request_count() == 2), "{}", s.log_report());
    for id in 3..=5 {
        let r = s.send(&call_request("a", id)).unwrap_or_else(|e| panic!("{e}\n{}", s.log_report()));
        assert_eq!((r.status, r.header("x-pw-callout-dispatch")), (200, Some("INTERNAL_FAILURE")), "{}", s.log_report());
    }
    // Plugin b has its own count.
    assert_answered(&s.send(&call_request("b", 6)), "b", 6, &s);
    for (i, t) in pending.into_iter().enumerate() {
        assert_answered(&t.join().unwrap(), "a", i + 1, &s);
    }
    assert_answered(&s.send(&call_request("a", 7)), "a", 7, &s);
    assert_eq!(s.logs().matches("max_pending_http_calls allows").count(), 1, "{}", s.log_report());
    s.assert_nothing_died();
}

/// The cap of `PROXY_WASM_HOST_MAX_HTTP_CALLS_IN_FLIGHT` is per process: an
/// NGINX worker, the Traffic Server process; each names its own in the log.
#[test]
fn calls_past_the_process_cap_get_internal_failure_logged_once_per_plugin() {
    let callout = callout(Duration::from_millis(1500));
    let origin = Origin::start();
    let s = <Server as ServerUnderTest>::start(setup("calls-process-cap", plugin("a", callout.port(), ""), plugin("b", callout.port(), ""), &origin, 1).env("PROXY_WASM_HOST_MAX_HTTP_CALLS_IN_FLIGHT", "2"));
    let port = s.port();
    let pending: Vec<_> = [("a", 1), ("b", 2)].into_iter().map(|(p, id)| std::thread::spawn(move || (p, id, call_request(p, id).send(port)))).collect();
    assert!(e2e::wait_until(WAIT, || callout.request_count() == 2), "{}", s.log_report());
    for (p, id) in [("a", 3), ("b", 4), ("a", 5)] {
        let r = s.send(&call_request(p, id)).unwrap_or_else(|e| panic!("{e}\n{}", s.log_report()));
        assert_eq!(r.header("x-pw-callout-dispatch"), Some("INTERNAL_FAILURE"), "{}", s.log_report());
    }
    for t in pending {
        let (p, id, r) = t.join().unwrap();
        assert_answered(&r, p, id, &s);
    }
    assert_answered(&s.send(&call_request("a", 6)), "a", 6, &s);
    let process = match Server::KIND {
        e2e::server::Kind::Nginx => "calls are in flight in this worker",
        e2e::server::Kind::TrafficServer => "calls are in flight in this Traffic Server process",
    };
    let log = s.logs();
    for p in ["a", "b"] {
        let lines = log.lines().filter(|l| l.contains(&format!("[proxy_wasm] {p}: ")) && l.contains(process)).count();
        assert_eq!(lines, 1, "plugin {p}\n{}", s.log_report());
    }
}

#[test]
fn an_answer_larger_than_max_http_call_response_size_fails_the_call_logged_once() {
    let callout = Origin::with_handler(|req| origin::Response::text(200, if req.path.contains("big") { "x".repeat(4096) } else { "small".into() }));
    let origin = Origin::start();
    let s: Server = start_one("calls-response-size", callout.port(), &origin, "      limits: { max_http_call_response_size: 2KiB }\n");
    for id in 0..2 {
        assert_call_failed(s.send(&call_to("a", &format!("/big/{id}"))), "413", "max_http_call_response_size (2048 bytes)", &s);
    }
    let r = s.send(&call_to("a", "/small")).unwrap();
    assert_eq!(r.header("x-pw-callout-body"), Some("small"), "{}", s.log_report());
    assert_eq!(s.logs().matches("http_call failed: the response is larger than").count(), 1, "{}", s.log_report());
}

}
