//! `proxy_http_call` on Traffic Server (each call on a thread of its own):
//! several plugins (VMs) with calls in flight at once, the `vm_config.limits`
//! caps (`max_pending_http_calls`, `max_http_call_response_size`), the
//! process's cap on calls in flight, and upstreams that answer with hostile
//! bytes. The NGINX equivalents are in tests/nginx_http_calls.rs.
//!
//! Run with `make plugins ats && cargo test --test ats_http_calls`.

mod e2e;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::ats::{AtsOptions, TrafficServer};
use e2e::client::{ClientError, Request, Response};
use e2e::origin::{self, Origin};

const WAIT: Duration = Duration::from_secs(10);

/// One Rust-SDK filter plugin (its own `vm_id`) calling `upstream`.
fn plugin(name: &str, upstream: u16, extra_vm_config: &str) -> String {
    format!(
        r#"config:
  name: "{name}"
  configuration: '{{"tag":"{name}","upstream":"127.0.0.1:{upstream}","callout_timeout_ms":5000}}'
  authorizations:
    allowed_hosts: ["*"]
  vm_config:
    vm_id: "{name}_vm"
{extra_vm_config}    code:
      local:
        filename: "@REPO@/build/plugins/rust_sdk_filter.wasm"
"#
    )
}

/// Traffic Server with plugin `a` on host `a.test` and plugin `b` on host
/// `b.test` (remap rules), other hosts unfiltered.
fn start(test: &str, a: String, b: String, origin: &Origin, threads: usize, tune: impl FnOnce(AtsOptions) -> AtsOptions) -> TrafficServer {
    e2e::ats::require_plugin_so();
    let port = origin.port();
    let remap = format!(
        "map http://a.test/ http://127.0.0.1:{port}/ @plugin=proxy_wasm_ats.so @pparam=a.yaml\n\
         map http://b.test/ http://127.0.0.1:{port}/ @plugin=proxy_wasm_ats.so @pparam=b.yaml\n\
         map / http://127.0.0.1:{port}/\n"
    );
    TrafficServer::start(tune(AtsOptions::new(test).origin(port).exec_threads(threads).remap_config(remap).file("a.yaml", a).file("b.yaml", b)))
}

/// A request through plugin `plugin` whose call asks the callout for `path`.
fn call_to(plugin: &str, path: &str) -> Request {
    Request::get(&format!("/r{path}")).host(format!("{plugin}.test")).header("x-pw-test", "http-call").header("x-pw-callout-path", path).timeout(Duration::from_secs(20))
}

/// The callout upstream: answers after `delay` with the path it was asked for.
fn callout(delay: Duration) -> Origin {
    Origin::with_handler(move |req| origin::Response::text(200, req.path.clone()).delay(delay))
}

fn assert_answered(r: &Result<Response, ClientError>, plugin: &str, path: &str, ats: &TrafficServer) {
    let r = r.as_ref().unwrap_or_else(|e| panic!("request {plugin}{path}: {e}\n{}", ats.log_report()));
    assert_eq!(r.status, 200, "request {plugin}{path}\n{}", ats.log_report());
    assert_eq!(r.header("x-proxy-wasm"), Some(plugin), "request {plugin}{path}");
    assert_eq!(r.header("x-pw-callout-status"), Some("200"), "request {plugin}{path}: {:?}", r.headers);
    assert_eq!(r.header("x-pw-callout-body"), Some(path), "request {plugin}{path} got another call's answer");
}

fn assert_call_failed(r: Result<Response, ClientError>, code: &str, reason: &str, ats: &TrafficServer) {
    let r = r.unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(r.header("x-pw-callout-failed"), Some("1"), "{:?}\n{}", r.headers, ats.log_report());
    assert_eq!(r.header("x-pw-callout-get-status"), Some(code), "{:?}", r.headers);
    let message = r.header("x-pw-callout-get-status-message").unwrap_or_default();
    assert!(message.contains(reason), "{message:?} should contain {reason:?}");
}

#[test]
fn two_plugins_with_http_calls_in_flight_at_once_get_their_own_answers() {
    let callout = callout(Duration::from_millis(50));
    let origin = Origin::start();
    let ats = start("ats-calls-two-vms", plugin("a", callout.port(), ""), plugin("b", callout.port(), ""), &origin, 2, |o| o);
    let next = Arc::new(AtomicUsize::new(0));
    let port = ats.port();
    let threads: Vec<_> = (0..40)
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                loop {
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    if id >= 200 {
                        return out;
                    }
                    let plugin = ["a", "b"][id % 2];
                    let path = format!("/{plugin}/{id}");
                    out.push((plugin, path.clone(), call_to(plugin, &path).send(port)));
                }
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert_eq!(results.len(), 200);
    for (plugin, path, r) in &results {
        assert_answered(r, plugin, path, &ats);
    }
    ats.assert_running();
}

#[test]
fn calls_past_max_pending_http_calls_get_internal_failure_logged_once() {
    let callout = callout(Duration::from_millis(1500));
    let origin = Origin::start();
    let ats = start("ats-calls-max-pending", plugin("a", callout.port(), "    limits: { max_pending_http_calls: 2 }\n"), plugin("b", callout.port(), ""), &origin, 1, |o| o);
    let port = ats.port();
    let pending: Vec<_> = (1..=2).map(|id| std::thread::spawn(move || call_to("a", &format!("/a/{id}")).send(port))).collect();
    assert!(e2e::wait_until(WAIT, || callout.request_count() == 2), "{}", ats.log_report());
    for id in 3..=5 {
        let r = ats.send(&call_to("a", &format!("/a/{id}"))).unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
        assert_eq!((r.status, r.header("x-pw-callout-dispatch")), (200, Some("INTERNAL_FAILURE")), "{}", ats.log_report());
    }
    assert_answered(&ats.send(&call_to("b", "/b/6")), "b", "/b/6", &ats);
    for (i, t) in pending.into_iter().enumerate() {
        assert_answered(&t.join().unwrap(), "a", &format!("/a/{}", i + 1), &ats);
    }
    assert_answered(&ats.send(&call_to("a", "/a/7")), "a", "/a/7", &ats);
    assert_eq!(ats.diags_log().matches("max_pending_http_calls allows").count(), 1, "{}", ats.log_report());
}

#[test]
fn calls_past_the_process_cap_get_internal_failure_logged_once_per_plugin() {
    let callout = callout(Duration::from_millis(1500));
    let origin = Origin::start();
    let ats = start("ats-calls-process-cap", plugin("a", callout.port(), ""), plugin("b", callout.port(), ""), &origin, 1, |o| o.env("PROXY_WASM_HOST_MAX_HTTP_CALLS_IN_FLIGHT", "2"));
    let port = ats.port();
    let pending: Vec<_> = [("a", "/a/1"), ("b", "/b/2")].into_iter().map(|(p, path)| std::thread::spawn(move || (p, path, call_to(p, path).send(port)))).collect();
    assert!(e2e::wait_until(WAIT, || callout.request_count() == 2), "{}", ats.log_report());
    for (p, path) in [("a", "/a/3"), ("b", "/b/4"), ("a", "/a/5")] {
        let r = ats.send(&call_to(p, path)).unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
        assert_eq!(r.header("x-pw-callout-dispatch"), Some("INTERNAL_FAILURE"), "{}", ats.log_report());
    }
    for t in pending {
        let (p, path, r) = t.join().unwrap();
        assert_answered(&r, p, path, &ats);
    }
    assert_answered(&ats.send(&call_to("a", "/a/6")), "a", "/a/6", &ats);
    let log = ats.diags_log();
    for p in ["a", "b"] {
        let lines = log.lines().filter(|l| l.contains(&format!("[proxy_wasm] {p}: ")) && l.contains("calls are in flight in this Traffic Server process")).count();
        assert_eq!(lines, 1, "plugin {p}\n{}", ats.log_report());
    }
}

#[test]
fn an_answer_larger_than_max_http_call_response_size_fails_the_call_logged_once() {
    let callout = Origin::with_handler(|req| origin::Response::text(200, if req.path.contains("big") { "x".repeat(4096) } else { "small".into() }));
    let origin = Origin::start();
    let ats = start("ats-calls-response-size", plugin("a", callout.port(), "    limits: { max_http_call_response_size: 2KiB }\n"), plugin("b", callout.port(), ""), &origin, 1, |o| o);
    for id in 0..2 {
        assert_call_failed(ats.send(&call_to("a", &format!("/big/{id}"))), "413", "max_http_call_response_size (2048 bytes)", &ats);
    }
    let r = ats.send(&call_to("a", "/small")).unwrap();
    assert_eq!(r.header("x-pw-callout-body"), Some("small"), "{}", ats.log_report());
    assert_eq!(ats.diags_log().matches("http_call failed: the response is larger than").count(), 1, "{}", ats.log_report());
}

/// A raw TCP upstream: reads each request head, then hands the socket to `answer`.
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

#[test]
fn hostile_answers_fail_the_call_and_traffic_server_keeps_serving() {
    let endless = raw_upstream(|mut s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nx-endless: ");
        let block = [b'a'; 16 << 10];
        while s.write_all(&block).is_ok() {}
    });
    let huge_chunk = raw_upstream(|mut s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nffffffffffffffff\r\nabc");
    });
    let origin = Origin::start();
    let ats = start("ats-calls-hostile", plugin("a", endless, ""), plugin("b", huge_chunk, ""), &origin, 1, |o| o);
    assert_call_failed(ats.send(&call_to("a", "/endless")), "502", "longer than", &ats);
    assert_call_failed(ats.send(&call_to("b", "/huge")), "413", "max_http_call_response_size", &ats);
    let r = ats.get("/plain").unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(r.status, 200);
    ats.assert_running();
}
