//! `max_body_size`, written once and run on NGINX (`nginx::...`) and on
//! Traffic Server (`ats::...`) through `e2e::server::ServerUnderTest`: the
//! body bytes a server holds for a plugin are bounded. A request body a
//! plugin pauses on past the bound gets 413 and never reaches the origin; a
//! response body past it is cut off; bodies under it are unaffected; an
//! upload through a plugin that reads only headers is not held, so not
//! limited. Request bodies NGINX kept in a temporary file are read in 64 KiB
//! pieces.
//!
//! Host `paused.test` goes through the Rust-SDK filter, `headers.test`
//! through a plugin without body callbacks.
//!
//! Run with `make ats nginx && cargo test --test conformance_bodies` (and
//! with `E2E_RUNTIME=wamr`).

mod e2e;

use std::time::Duration;

use e2e::client::{Request, Response};
use e2e::origin::{self, Origin};
use e2e::server::{Kind, ServerUnderTest, Setup};

const LIMIT: usize = 256 * 1024;
const WAIT: Duration = Duration::from_secs(5);

fn yaml(name: &str, file: &str) -> String {
    format!("- config:\n    name: {name}\n    max_body_size: 256KiB\n    vm_config:\n      vm_id: {name}_vm\n      code: {{ local: {{ filename: \"@REPO@/build/plugins/{file}\" }} }}\n")
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

fn start<S: ServerUnderTest>(test: &str, origin: &Origin) -> S {
    S::start(
        Setup::new(test, origin.port())
            .plugin("rust-filter", yaml("rust-filter", "rust_sdk_filter.wasm"))
            .plugin("headers-only", yaml("headers-only", "headers_only.wasm"))
            .route("paused.test", &["rust-filter"])
            .route("headers.test", &["headers-only"]),
    )
}

fn send<S: ServerUnderTest>(s: &S, req: Request) -> Response {
    s.send(&req.timeout(Duration::from_secs(20))).unwrap_or_else(|e| panic!("{}: {e}\n{}", S::NAME, s.log_report()))
}

fn paused(req: Request) -> Request {
    req.host("paused.test")
}

e2e::server::for_each_server! {

#[test]
fn a_paused_request_body_over_max_body_size_gets_413_and_never_reaches_the_origin() {
    let origin = origin();
    let s: Server = start("body-req-limit", &origin);
    let r = send(&s, paused(Request::post("/echo", e2e::pattern_body(LIMIT + 100 * 1024))).header("x-pw-test", "req-body-upper"));
    assert_eq!((r.status, r.body_str().as_str()), (413, "request body too large\n"), "{}", s.log_report());
    match Server::KIND {
        // NGINX would hold the body whole for the plugin (it takes a new
        // request body whole): a Content-Length past the limit is answered
        // before the body is read. Traffic Server's request transform sees
        // only the body, and answers once it held more than the limit.
        Kind::Nginx => s.expect_log("rust-filter: the request body (364544 bytes, Content-Length) would pass max_body_size (262144 bytes) held for the plugins: the request gets 413 and is not sent on", WAIT),
        Kind::TrafficServer => s.expect_log("rust-filter: the request body passed max_body_size (262144 bytes) held for the plugin; answering 413", WAIT),
    }
    origin.assert_no_new_requests(Duration::from_millis(300));
    assert_eq!(origin.request_count(), 0);
    s.assert_running();
}

#[test]
fn a_paused_chunked_request_body_over_max_body_size_gets_413_from_the_chain_and_never_reaches_the_origin() {
    // No length up front: the plugin pauses on every piece until the end, and
    // the chain answers 413 once what the plugin holds would pass its limit.
    let origin = origin();
    let s: Server = start("body-req-limit-chunked", &origin);
    let r = send(&s, paused(Request::post("/echo", e2e::pattern_body(LIMIT + 100 * 1024))).chunked(16 * 1024).header("x-pw-test", "req-body-upper"));
    assert_eq!((r.status, r.body_str().as_str()), (413, "request body too large\n"), "{}", s.log_report());
    s.expect_log("rust-filter: the request body passed max_body_size (262144 bytes) held for the plugin; answering 413", WAIT);
    origin.assert_no_new_requests(Duration::from_millis(300));
    assert_eq!(origin.request_count(), 0);
}

#[test]
fn a_paused_response_body_over_max_body_size_is_cut_off() {
    let origin = origin();
    let s: Server = start("body-resp-limit", &origin);
    let r = s.send(&paused(Request::get("/big")).header("x-pw-test", "resp-body-upper").timeout(Duration::from_secs(20)));
    let e = r.map(|r| (r.status, r.body.len())).expect_err("the client sees the response cut off");
    assert!(e.is_closed(), "{e}");
    s.expect_log("rust-filter: the response body passed max_body_size (262144 bytes) held for the plugin; the response is cut (connection closed)", WAIT);
    // The server is fine.
    assert_eq!(send(&s, paused(Request::get("/after"))).status, 200);
    s.assert_running();
}

#[test]
fn bodies_under_max_body_size_are_unaffected() {
    let origin = origin();
    let s: Server = start("body-under-limit", &origin);
    // Over NGINX's client_body_buffer_size (64k): NGINX keeps it in a
    // temporary file, read back in pieces.
    let body = e2e::pattern_body(LIMIT - 1024);
    let r = send(&s, paused(Request::post("/echo", body.clone())).header("x-pw-test", "req-body-upper"));
    assert_eq!(r.status, 200, "{}", s.log_report());
    let upper = body.to_ascii_uppercase();
    assert_eq!(origin.wait_for_requests(1, WAIT)[0].body, upper);
    assert_eq!(r.body, upper);
    let r = send(&s, paused(Request::get("/hello")).header("x-pw-test", "resp-body-upper"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "HELLO FROM ORIGIN"));
}

#[test]
fn an_upload_over_max_body_size_through_a_plugin_that_reads_only_headers_is_not_limited() {
    let origin = origin();
    let s: Server = start("body-headers-only", &origin);
    let body = e2e::pattern_body(4 * LIMIT);
    let r = send(&s, Request::post("/echo", body.clone()).host("headers.test"));
    assert_eq!(r.status, 200, "{}", s.log_report());
    assert_eq!(r.header("x-headers-only"), Some("1"));
    assert_eq!(origin.wait_for_requests(1, WAIT)[0].body.len(), body.len());
    assert_eq!(r.body, body);
    assert_eq!(send(&s, Request::get("/big").host("headers.test")).body.len(), 2 * LIMIT);
}

#[test]
fn an_upload_over_max_body_size_through_a_plugin_that_reads_bodies_gets_413_as_the_server_holds_it_whole() {
    // The plugin lets every piece through, but both servers take a
    // transformed request body whole (Traffic Server needs its length, NGINX
    // takes a replaced request body whole): what the chain let through is
    // held until the end. Both framings.
    for chunked in [false, true] {
        let origin = origin();
        let s: Server = start("body-held-whole", &origin);
        let mut req = paused(Request::post("/echo", e2e::pattern_body(LIMIT + 1)));
        if chunked {
            req = req.chunked(16 * 1024);
        }
        let r = send(&s, req);
        assert_eq!(r.status, 413, "chunked={chunked}\n{}", s.log_report());
        if Server::KIND == Kind::Nginx && !chunked {
            // NGINX refuses a Content-Length past the limit before it reads
            // the body (as in the first case).
            s.expect_log("rust-filter: the request body (262145 bytes, Content-Length) would pass max_body_size (262144 bytes) held for the plugins: the request gets 413 and is not sent on", WAIT);
        } else {
            s.expect_log("rust-filter: the request body held for the plugins would reach", WAIT);
        }
        assert_eq!(origin.request_count(), 0, "chunked={chunked}");
    }
}

}
