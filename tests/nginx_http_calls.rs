//! `proxy_http_call` on NGINX under concurrency: several plugins (VMs) with
//! calls in flight at once, calls cancelled by one plugin while another's
//! are pending, and recycled generations whose fresh VMs number their calls
//! from 1 again while the old ones' calls are still pending. Each VM numbers
//! its calls itself, so a worker must keep them apart by VM, not by token.
//! Also the `vm_config.limits` caps on calls (`max_pending_http_calls`,
//! `max_http_call_response_size`) and upstreams that answer with hostile
//! bytes: the worker keeps serving.
//!
//! Run with `make plugins nginx && cargo test --test nginx_http_calls`.

mod e2e;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::client::{Request, Response};
use e2e::nginx::{Nginx, NginxOptions};
use e2e::origin::{self, Origin};

const WAIT: Duration = Duration::from_secs(10);

/// One Rust-SDK filter plugin (its own `vm_id`) calling `upstream`.
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

/// The callout upstream: answers after `delay` with the path it was asked for
/// as the body, so each answer names the request it belongs to.
fn callout(delay: Duration) -> Origin {
    Origin::with_handler(move |req| origin::Response::text(200, req.path.clone()).delay(delay))
}

/// nginx with `yaml`, location `/a/` filtered by plugin `a` and `/b/` by
/// plugin `b` (each proxying to the origin), `/` by nothing.
fn start(test: &str, yaml: String, origin: &Origin, workers: usize) -> Nginx {
    Nginx::start(
        NginxOptions::new(test)
            .workers(workers)
            .origin(origin.port())
            .file("plugins.yaml", yaml)
            .http("proxy_wasm_config @CONF@/plugins.yaml;")
            .server(
                "location /a/ { proxy_wasm a; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }\n\
                 location /b/ { proxy_wasm b; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }\n\
                 location / { proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }",
            ),
    )
}

/// A request through plugin `plugin` (`a` or `b`) whose call asks the
/// callout for `/<plugin>/<id>`.
fn call_request(plugin: &str, id: usize) -> Request {
    Request::get(&format!("/{plugin}/r{id}")).header("x-pw-test", "http-call").header("x-pw-callout-path", format!("/{plugin}/{id}")).timeout(Duration::from_secs(20))
}

/// A request through plugin `plugin` whose call asks the callout for `path`.
fn call_to(plugin: &str, path: &str) -> Request {
    Request::get(&format!("/{plugin}/x")).header("x-pw-test", "http-call").header("x-pw-callout-path", path)
}

/// The request was answered through its own plugin with its own call's answer.
fn assert_answered(r: &Result<Response, e2e::client::ClientError>, plugin: &str, id: usize, n: &Nginx) {
    let r = r.as_ref().unwrap_or_else(|e| panic!("request {plugin}/{id}: {e}\n{}", n.log_report()));
    assert_eq!(r.status, 200, "request {plugin}/{id}\n{}", n.log_report());
    assert_eq!(r.header("x-proxy-wasm"), Some(plugin), "request {plugin}/{id}");
    assert_eq!(r.header("x-pw-callout-dispatch"), Some("OK"), "request {plugin}/{id}");
    assert_eq!(r.header("x-pw-callout-status"), Some("200"), "request {plugin}/{id}: {:?}", r.headers);
    assert_eq!(r.header("x-pw-callout-body"), Some(format!("/{plugin}/{id}").as_str()), "request {plugin}/{id} got another call's answer");
}

fn assert_no_worker_died(n: &Nginx) {
    let log = n.error_log();
    assert!(!log.contains("exited on signal"), "a worker died\n{}", n.log_report());
}

/// `total` requests from `clients` threads at once, alternating between the
/// plugins; returns each (plugin, id, outcome).
fn run_concurrently(n: &Nginx, clients: usize, total: usize, plugins: &'static [&'static str]) -> Vec<(&'static str, usize, Result<Response, e2e::client::ClientError>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let port = n.port();
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

#[test]
fn two_plugins_with_http_calls_in_flight_at_once_get_their_own_answers_and_no_worker_dies() {
    let callout = callout(Duration::from_millis(50));
    let origin = Origin::start();
    let yaml = plugin("a", callout.port(), "") + &plugin("b", callout.port(), "");
    let n = start("ngx-calls-two-vms", yaml, &origin, 2);
    let results = run_concurrently(&n, 40, 200, &["a", "b"]);
    assert_eq!(results.len(), 200);
    for (plugin, id, r) in &results {
        assert_answered(r, plugin, *id, &n);
    }
    assert_no_worker_died(&n);
}

#[test]
fn a_call_cancelled_by_one_plugin_leaves_another_plugins_pending_call_with_the_same_token_alone() {
    let callout = callout(Duration::from_millis(1500));
    let origin = Origin::start();
    let yaml = plugin("a", callout.port(), "") + &plugin("b", callout.port(), "");
    let n = start("ngx-calls-cancel", yaml, &origin, 1);
    // Plugin b's first call (token 1 of its VM) is pending ...
    let port = n.port();
    let b = std::thread::spawn(move || call_request("b", 1).send(port));
    assert!(e2e::wait_until(WAIT, || callout.request_count() == 1), "b's call reached the callout");
    // ... when plugin a makes its first call (token 1 of its own VM) and the
    // client goes away: a's stream ends and a cancels its call.
    let mut s = TcpStream::connect(("127.0.0.1", n.port())).unwrap();
    s.write_all(b"GET /a/gone HTTP/1.1\r\nHost: x\r\nx-pw-test: http-call\r\nx-pw-callout-path: /a/gone\r\n\r\n").unwrap();
    assert!(e2e::wait_until(WAIT, || callout.request_count() == 2), "a's call reached the callout");
    drop(s);
    // b still gets its own answer.
    assert_answered(&b.join().unwrap(), "b", 1, &n);
    let r = n.send(&call_request("a", 2)).unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()));
    assert_eq!(r.header("x-pw-callout-body"), Some("/a/2"), "{}", n.log_report());
    assert_no_worker_died(&n);
}

#[test]
fn calls_of_recycled_generations_pending_together_get_their_own_answers() {
    // max_calls: 1 gives every request a fresh generation, whose VM numbers
    // its calls from 1 again while the calls of the previous ones are pending.
    let callout = callout(Duration::from_millis(200));
    let origin = Origin::start();
    // Only plugin a is used: the calls differ by generation alone.
    let yaml = plugin("a", callout.port(), "      kill_options: { max_calls: 1 }\n") + &plugin("b", callout.port(), "");
    let n = start("ngx-calls-recycled", yaml, &origin, 1);
    let results = run_concurrently(&n, 10, 40, &["a"]);
    for (plugin, id, r) in &results {
        assert_answered(r, plugin, *id, &n);
    }
    assert!(n.error_log().contains("recycling"), "the generations were recycled\n{}", n.log_report());
    assert_no_worker_died(&n);
}

// ------------------------------------------------------------------ hostile upstreams

/// A raw TCP upstream on 127.0.0.1: for each connection, reads the request
/// head and hands the socket to `answer` (on a thread of its own).
fn raw_upstream(answer: impl Fn(TcpStream) + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
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

/// nginx (one worker) with plugin `a` calling `upstream`.
fn start_one(test: &str, upstream: u16, origin: &Origin, extra_vm_config: &str) -> Nginx {
    start(test, plugin("a", upstream, extra_vm_config) + &plugin("b", upstream, ""), origin, 1)
}

/// A request through plugin `a` whose call goes to its upstream.
fn hostile_call(n: &Nginx) -> std::thread::JoinHandle<Result<Response, e2e::client::ClientError>> {
    let port = n.port();
    std::thread::spawn(move || call_request("a", 0).send(port))
}

/// While a call waits on a hostile upstream, the worker (the only one)
/// answers other requests.
fn assert_worker_serves(n: &Nginx) {
    for i in 0..3 {
        let r = n.send(&Request::get(&format!("/plain/{i}")).timeout(Duration::from_secs(5))).unwrap_or_else(|e| panic!("the worker stopped serving: {e}\n{}", n.log_report()));
        assert_eq!(r.status, 200, "{}", n.log_report());
    }
}

/// The call failed (the plugin got zero headers) with this status code, and
/// the reason contains `reason`.
fn assert_call_failed(r: Result<Response, e2e::client::ClientError>, code: &str, reason: &str, n: &Nginx) {
    let r = r.unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()));
    assert_eq!(r.status, 200, "{}", n.log_report());
    assert_eq!(r.header("x-pw-callout-failed"), Some("1"), "{:?}\n{}", r.headers, n.log_report());
    assert_eq!(r.header("x-pw-callout-get-status"), Some(code), "{:?}", r.headers);
    let message = r.header("x-pw-callout-get-status-message").unwrap_or_default();
    assert!(message.contains(reason), "{message:?} should contain {reason:?}");
}

#[test]
fn an_upstream_sending_a_header_line_without_end_fails_the_call_and_the_worker_keeps_serving() {
    let upstream = raw_upstream(|mut s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nx-endless: ");
        let block = [b'a'; 16 << 10];
        while s.write_all(&block).is_ok() {}
    });
    let origin = Origin::start();
    let n = start_one("ngx-calls-endless-header", upstream, &origin, "");
    let call = hostile_call(&n);
    std::thread::sleep(Duration::from_millis(300));
    assert_worker_serves(&n);
    assert_call_failed(call.join().unwrap(), "502", "longer than", &n);
    assert_no_worker_died(&n);
}

#[test]
fn an_upstream_sending_a_chunk_size_near_u64_max_fails_the_call_as_too_large() {
    let upstream = raw_upstream(|mut s| {
        // A first chunk, then a size that overflows any sum with it.
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nffffffffffffffff\r\nabc");
        std::thread::sleep(Duration::from_millis(200));
    });
    let origin = Origin::start();
    let n = start_one("ngx-calls-huge-chunk", upstream, &origin, "");
    assert_call_failed(hostile_call(&n).join().unwrap(), "413", "max_http_call_response_size", &n);
    assert_worker_serves(&n);
    assert_no_worker_died(&n);
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
    let n = start_one("ngx-calls-obs-text", upstream, &origin, "");
    let r = hostile_call(&n).join().unwrap().unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()));
    assert_eq!((r.header("x-pw-callout-status"), r.header("x-pw-callout-body")), (Some("200"), Some("pong")), "{:?}\n{}", r.headers, n.log_report());
}

// ------------------------------------------------------------------ caps

#[test]
fn calls_past_max_pending_http_calls_get_internal_failure_logged_once() {
    let callout = callout(Duration::from_millis(1500));
    let origin = Origin::start();
    let n = start_one("ngx-calls-max-pending", callout.port(), &origin, "      limits: { max_pending_http_calls: 2 }\n");
    let port = n.port();
    let pending: Vec<_> = (1..=2).map(|id| std::thread::spawn(move || call_request("a", id).send(port))).collect();
    assert!(e2e::wait_until(WAIT, || callout.request_count() == 2), "{}", n.log_report());
    for id in 3..=5 {
        let r = n.send(&call_request("a", id)).unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()));
        assert_eq!((r.status, r.header("x-pw-callout-dispatch")), (200, Some("INTERNAL_FAILURE")), "{}", n.log_report());
    }
    // Plugin b has its own count.
    assert_answered(&n.send(&call_request("b", 6)), "b", 6, &n);
    for (i, t) in pending.into_iter().enumerate() {
        assert_answered(&t.join().unwrap(), "a", i + 1, &n);
    }
    assert_answered(&n.send(&call_request("a", 7)), "a", 7, &n);
    assert_eq!(n.error_log().matches("max_pending_http_calls allows").count(), 1, "{}", n.log_report());
    assert_no_worker_died(&n);
}

#[test]
fn calls_past_the_workers_cap_get_internal_failure_logged_once_per_plugin() {
    let callout = callout(Duration::from_millis(1500));
    let origin = Origin::start();
    let n = Nginx::start(
        NginxOptions::new("ngx-calls-worker-cap")
            .workers(1)
            .origin(origin.port())
            .main("env PROXY_WASM_HOST_MAX_HTTP_CALLS_IN_FLIGHT=2;")
            .file("plugins.yaml", plugin("a", callout.port(), "") + &plugin("b", callout.port(), ""))
            .http("proxy_wasm_config @CONF@/plugins.yaml;")
            .server("location /a/ { proxy_wasm a; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }\nlocation /b/ { proxy_wasm b; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }"),
    );
    let port = n.port();
    let pending: Vec<_> = [("a", 1), ("b", 2)].into_iter().map(|(p, id)| std::thread::spawn(move || (p, id, call_request(p, id).send(port)))).collect();
    assert!(e2e::wait_until(WAIT, || callout.request_count() == 2), "{}", n.log_report());
    for (p, id) in [("a", 3), ("b", 4), ("a", 5)] {
        let r = n.send(&call_request(p, id)).unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()));
        assert_eq!(r.header("x-pw-callout-dispatch"), Some("INTERNAL_FAILURE"), "{}", n.log_report());
    }
    for t in pending {
        let (p, id, r) = t.join().unwrap();
        assert_answered(&r, p, id, &n);
    }
    assert_answered(&n.send(&call_request("a", 6)), "a", 6, &n);
    let log = n.error_log();
    for p in ["a", "b"] {
        let lines = log.lines().filter(|l| l.contains(&format!("[proxy_wasm] {p}: ")) && l.contains("calls are in flight in this worker")).count();
        assert_eq!(lines, 1, "plugin {p}\n{}", n.log_report());
    }
}

#[test]
fn an_answer_larger_than_max_http_call_response_size_fails_the_call_logged_once() {
    let callout = Origin::with_handler(|req| origin::Response::text(200, if req.path.contains("big") { "x".repeat(4096) } else { "small".into() }));
    let origin = Origin::start();
    let n = start_one("ngx-calls-response-size", callout.port(), &origin, "      limits: { max_http_call_response_size: 2KiB }\n");
    for id in 0..2 {
        let r = n.send(&call_to("a", &format!("/big/{id}")));
        assert_call_failed(r, "413", "max_http_call_response_size (2048 bytes)", &n);
    }
    let r = n.send(&call_to("a", "/small")).unwrap();
    assert_eq!(r.header("x-pw-callout-body"), Some("small"), "{}", n.log_report());
    assert_eq!(n.error_log().matches("http_call failed: the response is larger than").count(), 1, "{}", n.log_report());
}
