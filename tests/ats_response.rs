//! Pausing on Traffic Server beyond the request headers: in `on_response_headers`
//! (resumed by an `http_call` answer or re-entrantly), local responses that
//! replace the origin's response, closing the response, failures there; a
//! pause that outlasts the plugin's `pause_timeout`.

mod e2e;

use std::time::Duration;

use e2e::ats::{AtsOptions, TrafficServer};
use e2e::client::Request;
use e2e::origin::Origin;

const WAIT: Duration = Duration::from_secs(5);

fn rust_filter_yaml(name: &str, configuration: &str, fail_open: bool) -> String {
    format!(
        r#"config:
  name: "{name}"
  configuration: '{configuration}'
  fail_open: {fail_open}
  authorizations:
    allowed_hosts: ["*"]
  vm_config:
    runtime: "ats.wasm.runtime.wasmtime"
    vm_id: "{name}_vm"
    code:
      local:
        filename: "@REPO@/build/plugins/rust_sdk_filter.wasm"
"#
    )
}

/// The filter with its callouts sent to `callout`, an origin of their own.
fn start(test: &str) -> (Origin, Origin, TrafficServer) {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let callout = Origin::with_handler(|req| {
        e2e::origin::Response::text(200, format!("pong {}", req.header("x-pw-context-id").unwrap_or("?")))
    });
    let config = format!(
        r#"{{"upstream":"127.0.0.1:{}","authority":"callout.test","callout_timeout_ms":3000}}"#,
        callout.port()
    );
    let ats = TrafficServer::start(
        AtsOptions::new(test)
            .origin(origin.port())
            .exec_threads(2)
            .file("filter.yaml", rust_filter_yaml("rust-filter", &config, false))
            .global_plugin(&["filter.yaml"]),
    );
    (origin, callout, ats)
}

fn send(ats: &TrafficServer, req: Request) -> e2e::client::Response {
    ats.send(&req.timeout(Duration::from_secs(10))).unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()))
}

#[test]
fn a_response_paused_in_on_response_headers_is_resumed_by_the_http_call_answer() {
    let (origin, callout, ats) = start("ats-resp-callout");
    let r = send(&ats, Request::get("/r").header("x-pw-test", "http-call-response"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.body_str(), "hello from origin");
    assert_eq!(r.header("x-pw-callout-dispatch"), Some("OK"));
    assert_eq!(r.header("x-pw-callout-status"), Some("200"));
    let id = callout.wait_for_requests(1, WAIT)[0].header("x-pw-context-id").unwrap().to_string();
    assert_eq!(r.header("x-pw-callout-body"), Some(format!("pong {id}").as_str()));
    assert_eq!(origin.request_count(), 1);
}

#[test]
fn fifty_concurrent_responses_paused_on_http_call_are_all_answered_correctly() {
    let (_origin, callout, ats) = start("ats-resp-callout-50");
    let port = ats.port();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                (
                    i,
                    Request::get(&format!("/r/{i}"))
                        .header("x-pw-test", "http-call-response")
                        .timeout(Duration::from_secs(20))
                        .send(port),
                )
            })
        })
        .collect();
    for h in handles {
        let (i, r) = h.join().unwrap();
        let r = r.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.body_str(), "hello from origin", "request {i}");
        assert!(r.header("x-pw-callout-body").is_some_and(|b| b.starts_with("pong ")), "request {i}");
    }
    assert_eq!(callout.request_count(), 50);
}

#[test]
fn continue_inside_on_response_headers_that_then_pauses_delivers_the_response() {
    let (_origin, _callout, ats) = start("ats-resp-reentrant");
    let r = send(&ats, Request::get("/r").header("x-pw-test", "resume-response-reentrant"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.header("x-pw-resume-response-reentrant"), Some("1"));
    assert_eq!(r.body_str(), "hello from origin");
}

#[test]
fn a_local_response_from_on_response_headers_replaces_status_headers_and_body() {
    let (origin, _callout, ats) = start("ats-resp-local");
    let r = send(&ats, Request::get("/r").header("x-pw-test", "local-resp-headers").header("x-pw-local-status", "451"));
    assert_eq!(r.status, 451, "{}", ats.log_report());
    assert_eq!(r.header("x-pw-local"), Some("response-headers"));
    assert_eq!(r.body_str(), "replaced response by rust-sdk-filter");
    assert_eq!(origin.request_count(), 1);
    // A 2xx local response too (Traffic Server would make it a 500).
    let r = send(
        &ats,
        Request::get("/r")
            .header("x-pw-test", "local-resp-headers")
            .header("x-pw-local-status", "202")
            .header("x-pw-local-body", "accepted"),
    );
    assert_eq!(r.status, 202, "{}", ats.log_report());
    assert_eq!(r.body_str(), "accepted");
    // The next request is untouched.
    let r = send(&ats, Request::get("/r"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "hello from origin"));
}

#[test]
fn closing_the_response_in_on_response_headers_gives_the_client_no_origin_response() {
    let (_origin, _callout, ats) = start("ats-resp-close");
    match ats.send(&Request::get("/r").header("x-pw-test", "close-response").timeout(Duration::from_secs(10))) {
        Ok(r) => {
            assert_ne!(r.status, 200, "the origin's response went through: {:?}", r.headers);
            assert_ne!(r.body_str(), "hello from origin");
        }
        Err(e) => assert!(e.is_closed() || e.is_closed_without_response(), "{e}"),
    }
    ats.assert_running();
    assert_eq!(send(&ats, Request::get("/r")).status, 200);
}

fn trap_yaml(name: &str, fail_open: bool) -> String {
    format!(
        "config:\n  name: {name}\n  configuration: response_headers\n  fail_open: {fail_open}\n  vm_config:\n    vm_id: {name}\n    code: {{ local: {{ filename: \"@REPO@/build/plugins/trap.wasm\" }} }}\n"
    )
}

#[test]
fn a_trap_in_on_response_headers_answers_503_when_the_plugin_fails_closed() {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let ats = TrafficServer::start(
        AtsOptions::new("ats-resp-trap-closed")
            .origin(origin.port())
            .file("trap.yaml", trap_yaml("trapper", false))
            .global_plugin(&["trap.yaml"]),
    );
    for _ in 0..2 {
        let r = send(&ats, Request::get("/r"));
        assert_eq!(r.status, 503, "{}", ats.log_report());
        assert_ne!(r.body_str(), "hello from origin");
    }
    assert!(ats.wait_for_log("trapper", WAIT));
    ats.assert_running();
}

#[test]
fn a_trap_in_on_response_headers_lets_the_response_through_when_the_plugin_fails_open() {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let ats = TrafficServer::start(
        AtsOptions::new("ats-resp-trap-open")
            .origin(origin.port())
            .file("trap.yaml", trap_yaml("trapper", true))
            .global_plugin(&["trap.yaml"]),
    );
    for _ in 0..2 {
        let r = send(&ats, Request::get("/r"));
        assert_eq!((r.status, r.body_str().as_str()), (200, "hello from origin"), "{}", ats.log_report());
    }
    ats.assert_running();
}

#[test]
fn a_request_body_paused_at_its_end_waits_for_an_http_call_and_then_goes_on_edited() {
    let (origin, callout, ats) = start("ats-req-body-callout");
    let r = send(&ats, Request::post("/echo", "hello body").header("x-pw-test", "http-call-req-body"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(callout.wait_for_requests(1, WAIT).len(), 1);
    assert_eq!(origin.wait_for_requests(1, WAIT)[0].body_str(), "hello body[callout:200]");
    assert_eq!(r.body_str(), "hello body[callout:200]");
    // Chunked, bigger than one buffer.
    origin.clear();
    let big = "x".repeat(200_000);
    let r =
        send(&ats, Request::post("/echo", big.clone()).chunked(16 * 1024).header("x-pw-test", "http-call-req-body"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(origin.wait_for_requests(1, WAIT)[0].body_str(), format!("{big}[callout:200]"));
}

#[test]
fn a_response_body_paused_at_its_end_waits_for_an_http_call_and_then_goes_on_edited() {
    let (_origin, callout, ats) = start("ats-resp-body-callout");
    let r = send(&ats, Request::get("/r").header("x-pw-test", "http-call-resp-body"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.body_str(), "hello from origin[callout:200]");
    assert_eq!(callout.wait_for_requests(1, WAIT).len(), 1);
    // Several at once.
    let port = ats.port();
    let handles: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                (
                    i,
                    Request::get(&format!("/r/{i}"))
                        .header("x-pw-test", "http-call-resp-body")
                        .timeout(Duration::from_secs(20))
                        .send(port),
                )
            })
        })
        .collect();
    for h in handles {
        let (i, r) = h.join().unwrap();
        let r = r.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.body_str(), "hello from origin[callout:200]", "request {i}");
    }
}

/// The filter with `pause_timeout: 1s`; callouts go to the origin's
/// `/callout`, which answers after 3 s (within the callout's own timeout).
fn start_with_pause_timeout(test: &str) -> (Origin, TrafficServer) {
    e2e::ats::require_plugin_so();
    let origin = Origin::with_handler(|req| {
        if req.path_only() == "/callout" {
            return e2e::origin::Response::text(200, "late pong").delay(Duration::from_secs(3));
        }
        e2e::origin::default_handler(req)
    });
    let config = format!(r#"{{"upstream":"127.0.0.1:{}","callout_timeout_ms":10000}}"#, origin.port());
    let yaml = rust_filter_yaml("rust-filter", &config, false)
        .replace("  fail_open: false\n", "  fail_open: false\n  pause_timeout: 1s\n");
    let ats = TrafficServer::start(
        AtsOptions::new(test)
            .origin(origin.port())
            .exec_threads(1)
            .file("filter.yaml", yaml)
            .global_plugin(&["filter.yaml"]),
    );
    (origin, ats)
}

#[test]
fn a_request_a_plugin_never_continues_gets_504_after_its_pause_timeout() {
    let (origin, ats) = start_with_pause_timeout("ats-pause-timeout-request");
    // Waits for a body callback that never comes while its headers are paused.
    let t0 = std::time::Instant::now();
    let r = send(&ats, Request::post("/never", "a body").header("x-pw-test", "resume-in-body"));
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (504, "the request waited too long for a plugin\n"),
        "{}",
        ats.log_report()
    );
    assert!(t0.elapsed() < Duration::from_secs(4), "answered after {:?}", t0.elapsed());
    assert!(
        ats.wait_for_log(
            "rust-filter: kept the request headers paused for 1s (pause_timeout) without continuing it; answering 504",
            WAIT
        ),
        "{}",
        ats.log_report()
    );
    // Paused on an http_call slower than the pause timeout: 504 too, and the
    // late answer (which continues a finished stream) harms nothing.
    let r = send(&ats, Request::get("/slow-call").header("x-pw-test", "http-call"));
    assert_eq!(r.status, 504, "{}", ats.log_report());
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !origin.requests().iter().any(|q| q.path == "/never" || q.path == "/slow-call"),
        "the origin never got the timed-out requests"
    );
    let r = send(&ats, Request::get("/after"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")), "{}", ats.log_report());
    ats.assert_running();
}

#[test]
fn a_response_paused_past_the_pause_timeout_is_replaced_by_504() {
    let (origin, ats) = start_with_pause_timeout("ats-pause-timeout-response");
    let r = send(&ats, Request::get("/resp").header("x-pw-test", "http-call-response"));
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (504, "the request waited too long for a plugin\n"),
        "{}",
        ats.log_report()
    );
    assert!(
        ats.wait_for_log("rust-filter: kept the response headers paused for 1s (pause_timeout)", WAIT),
        "{}",
        ats.log_report()
    );
    assert!(origin.requests().iter().any(|q| q.path == "/resp"), "the origin answered; its response was held");
    // A response Traffic Server makes itself (TRACE with Max-Forwards: 0)
    // paused past the timeout: the 504 replaces its status.
    let r = send(
        &ats,
        Request::new("TRACE", "/trace").header("max-forwards", "0").header("x-pw-test", "http-call-response"),
    );
    assert_eq!(r.status, 504, "{}", ats.log_report());
    std::thread::sleep(Duration::from_millis(2500));
    let r = send(&ats, Request::get("/after"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    ats.assert_running();
}

#[test]
fn bodies_paused_at_their_end_past_the_pause_timeout_end_the_stream() {
    let (origin, ats) = start_with_pause_timeout("ats-pause-timeout-bodies");
    // The request body: 504, and the request is not sent on.
    let r = send(&ats, Request::post("/req-body", "request body").header("x-pw-test", "http-call-req-body"));
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (504, "the request waited too long for a plugin\n"),
        "{}",
        ats.log_report()
    );
    assert!(
        ats.wait_for_log(
            "rust-filter: kept the request body paused for 1s (pause_timeout) without continuing it; answering 504",
            WAIT
        ),
        "{}",
        ats.log_report()
    );
    // The response body, after its header went out: the response is cut off.
    let r = ats
        .send(&Request::get("/resp-body").header("x-pw-test", "http-call-resp-body").timeout(Duration::from_secs(10)));
    let e = r.map(|r| (r.status, r.body_str())).expect_err("the client sees the response cut off");
    assert!(e.to_string().contains("connection closed while reading the chunked body"), "{e}");
    assert!(ats.wait_for_log("rust-filter: kept the response body paused for 1s (pause_timeout) without continuing it; aborting the response", WAIT), "{}", ats.log_report());
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!origin.requests().iter().any(|q| q.path == "/req-body"), "the origin never got the timed-out request");
    let r = send(&ats, Request::post("/echo/after", "still fine").header("x-pw-test", "req-body-upper"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "STILL FINE"), "{}", ats.log_report());
    ats.assert_running();
}

#[test]
fn a_local_response_from_an_http_call_answers_a_request_body_held_at_its_end() {
    let (origin, callout, ats) = start("ats-body-callout-local");
    let t0 = std::time::Instant::now();
    let r = send(
        &ats,
        Request::post("/held", "request body")
            .header("x-pw-test", "http-call-req-body")
            .header("x-pw-body-callout-local", "1"),
    );
    let id = callout.wait_for_requests(1, WAIT)[0].header("x-pw-context-id").unwrap().to_string();
    assert_eq!((r.status, r.body_str()), (200, format!("callout:pong {id}")), "{}", ats.log_report());
    assert!(t0.elapsed() < Duration::from_secs(5), "answered at once, not at the pause timeout ({:?})", t0.elapsed());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(origin.request_count(), 0, "the origin never got the request");
}

/// Issue 15: Traffic Server gets no response transform for a HEAD (no body
/// can follow) and no request transform for a request without a body; the
/// answers are the same, and a GET on the same route still has its body
/// filtered.
#[test]
fn a_head_and_a_request_without_body_are_answered_without_the_body_transforms() {
    let (_origin, _callout, ats) = start("ats-head-no-transform");
    let r = send(&ats, Request::head("/r").header("x-pw-test", "resp-body-upper"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.body_str(), "", "{}", ats.log_report());
    let r = send(&ats, Request::get("/r").header("x-pw-test", "resp-body-upper req-body-upper"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.body_str(), "HELLO FROM ORIGIN", "{}", ats.log_report());
    let r = send(&ats, Request::head("/r").header("x-pw-test", "resp-body-upper"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.body_str(), "", "{}", ats.log_report());
}
