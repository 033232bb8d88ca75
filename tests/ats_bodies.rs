//! `max_body_size` on Traffic Server: the body bytes the plugin holds for a
//! plugin are bounded. A request body a plugin pauses on past the bound gets
//! 413 and never reaches the origin; a response body past it is cut off;
//! bodies under it are unaffected; an upload through a plugin that reads only
//! headers is not held, so not limited.

mod e2e;

use std::time::Duration;

use e2e::ats::{AtsOptions, TrafficServer};
use e2e::client::Request;
use e2e::origin::{self, Origin};

const LIMIT: usize = 256 * 1024;
const WAIT: Duration = Duration::from_secs(5);

fn yaml(name: &str, file: &str) -> String {
    format!(
        "config:\n  name: {name}\n  max_body_size: 256KiB\n  vm_config:\n    vm_id: {name}_vm\n    code: {{ local: {{ filename: \"@REPO@/build/plugins/{file}\" }} }}\n"
    )
}

/// `/big...` answers a body twice the limit; `/echo...` echoes; else hello.
fn origin() -> Origin {
    Origin::with_handler(|req| {
        let path = req.path_only();
        if path.contains("/big") {
            origin::Response::new(200).body(e2e::pattern_body(2 * LIMIT))
        } else if path.contains("/echo") {
            origin::Response::echo(req)
        } else {
            origin::Response::hello()
        }
    })
}

/// Host `paused.test` goes through the Rust-SDK filter, `headers.test`
/// through a plugin without body callbacks.
fn start(test: &str, origin: &Origin) -> TrafficServer {
    e2e::ats::require_plugin_so();
    let port = origin.port();
    let remap = format!(
        "map http://paused.test/ http://127.0.0.1:{port}/ @plugin=proxy_wasm_ats.so @pparam=paused.yaml\n\
         map http://headers.test/ http://127.0.0.1:{port}/ @plugin=proxy_wasm_ats.so @pparam=headers.yaml\n"
    );
    TrafficServer::start(
        AtsOptions::new(test)
            .origin(port)
            .remap_config(remap)
            .file("paused.yaml", yaml("rust-filter", "rust_sdk_filter.wasm"))
            .file("headers.yaml", yaml("headers-only", "headers_only.wasm")),
    )
}

fn send(ats: &TrafficServer, req: Request) -> e2e::client::Response {
    ats.send(&req.timeout(Duration::from_secs(20))).unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()))
}

#[test]
fn a_paused_request_body_over_max_body_size_gets_413_and_never_reaches_the_origin() {
    let origin = origin();
    let ats = start("ats-body-req-limit", &origin);
    let r = send(&ats, Request::post("/echo", e2e::pattern_body(LIMIT + 100 * 1024)).host("paused.test").header("x-pw-test", "req-body-upper"));
    assert_eq!((r.status, r.body_str().as_str()), (413, "request body too large\n"), "{}", ats.log_report());
    assert!(ats.wait_for_log("rust-filter: the request body passed max_body_size (262144 bytes) held for the plugin; answering 413", WAIT), "{}", ats.log_report());
    origin.assert_no_new_requests(Duration::from_millis(300));
    assert_eq!(origin.request_count(), 0);
    ats.assert_running();
}

#[test]
fn a_paused_response_body_over_max_body_size_is_cut_off() {
    let origin = origin();
    let ats = start("ats-body-resp-limit", &origin);
    let r = ats.send(&Request::get("/big").host("paused.test").header("x-pw-test", "resp-body-upper").timeout(Duration::from_secs(20)));
    let e = r.map(|r| (r.status, r.body.len())).expect_err("the client sees the response cut off");
    assert!(e.is_closed(), "{e}");
    assert!(ats.wait_for_log("rust-filter: the response body passed max_body_size (262144 bytes) held for the plugin; the response is cut (connection closed)", WAIT), "{}", ats.log_report());
    assert_eq!(send(&ats, Request::get("/after").host("paused.test")).status, 200);
    ats.assert_running();
}

#[test]
fn bodies_under_max_body_size_are_unaffected() {
    let origin = origin();
    let ats = start("ats-body-under-limit", &origin);
    let body = e2e::pattern_body(LIMIT - 1024);
    let r = send(&ats, Request::post("/echo", body.clone()).host("paused.test").header("x-pw-test", "req-body-upper"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    let upper = body.to_ascii_uppercase();
    assert_eq!(origin.wait_for_requests(1, WAIT)[0].body, upper);
    assert_eq!(r.body, upper);
    let r = send(&ats, Request::get("/hello").host("paused.test").header("x-pw-test", "resp-body-upper"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "HELLO FROM ORIGIN"));
}

#[test]
fn an_upload_over_max_body_size_through_a_plugin_that_reads_only_headers_is_not_limited() {
    let origin = origin();
    let ats = start("ats-body-headers-only", &origin);
    let body = e2e::pattern_body(4 * LIMIT);
    let r = send(&ats, Request::post("/echo", body.clone()).host("headers.test"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.header("x-headers-only"), Some("1"));
    assert_eq!(origin.wait_for_requests(1, WAIT)[0].body.len(), body.len());
    assert_eq!(r.body, body);
    assert_eq!(send(&ats, Request::get("/big").host("headers.test")).body.len(), 2 * LIMIT);
}

#[test]
fn an_upload_over_max_body_size_through_a_plugin_that_reads_bodies_gets_413_as_traffic_server_holds_it_whole() {
    // The plugin lets every piece through, but Traffic Server needs the length
    // of a transformed request body: the transform holds it until its end.
    let origin = origin();
    let ats = start("ats-body-held-whole", &origin);
    let r = send(&ats, Request::post("/echo", e2e::pattern_body(LIMIT + 1)).host("paused.test"));
    assert_eq!(r.status, 413, "{}", ats.log_report());
    assert!(ats.wait_for_log("rust-filter: the request body held for the plugins would reach", WAIT), "{}", ats.log_report());
    assert_eq!(origin.request_count(), 0);
}
