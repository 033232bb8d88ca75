//! `max_body_size` on NGINX: the body bytes the module holds for a plugin
//! are bounded. A request body a plugin pauses on past the bound gets 413 and
//! never reaches the origin (declared by Content-Length: before it is read);
//! a response body past it is cut off; bodies under
//! it are unaffected; an upload through a plugin that reads only headers is
//! not held, so not limited. Request bodies nginx kept in a temporary file
//! are read in 64 KiB pieces.

mod e2e;

use std::time::Duration;

use e2e::client::Request;
use e2e::nginx::{Nginx, NginxOptions};
use e2e::origin::{self, Origin};

const LIMIT: usize = 256 * 1024;
const WAIT: Duration = Duration::from_secs(5);

fn yaml() -> String {
    r#"- config:
    name: rust-filter
    max_body_size: 256KiB
    vm_config:
      vm_id: rust_vm
      code: { local: { filename: "@REPO@/build/plugins/rust_sdk_filter.wasm" } }
- config:
    name: headers-only
    max_body_size: 256KiB
    vm_config:
      vm_id: headers_vm
      code: { local: { filename: "@REPO@/build/plugins/headers_only.wasm" } }
"#
    .to_string()
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

fn start(test: &str, origin: &Origin) -> Nginx {
    Nginx::start(
        NginxOptions::new(test)
            .origin(origin.port())
            .file("plugins.yaml", yaml())
            .http("proxy_wasm_config @CONF@/plugins.yaml;\nclient_max_body_size 16m;\n")
            .server(
                "location /paused/ { proxy_wasm rust-filter; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }\n\
                 location /headers/ { proxy_wasm headers-only; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }",
            ),
    )
}

fn send(n: &Nginx, req: Request) -> e2e::client::Response {
    n.send(&req.timeout(Duration::from_secs(20))).unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()))
}

fn wait_for_log(n: &Nginx, text: &str) -> bool {
    e2e::wait_until(WAIT, || n.error_log().contains(text))
}

#[test]
fn a_request_body_declared_over_max_body_size_gets_413_before_it_is_read_and_never_reaches_the_origin() {
    // nginx would hold the body whole for the plugin (it takes a new request
    // body whole): a Content-Length past the limit is answered at once.
    let origin = origin();
    let n = start("ngx-body-req-limit", &origin);
    let r = send(&n, Request::post("/paused/echo", e2e::pattern_body(LIMIT + 100 * 1024)).header("x-pw-test", "req-body-upper"));
    assert_eq!((r.status, r.body_str().as_str()), (413, "request body too large\n"), "{}", n.log_report());
    assert!(wait_for_log(&n, "rust-filter: the request body (364544 bytes, Content-Length) would pass max_body_size (262144 bytes) held for the plugins: the request gets 413 and is not sent on"), "{}", n.log_report());
    origin.assert_no_new_requests(Duration::from_millis(300));
    assert_eq!(origin.request_count(), 0);
}

#[test]
fn a_paused_chunked_request_body_over_max_body_size_gets_413_from_the_chain_and_never_reaches_the_origin() {
    // No length up front: the plugin pauses on every piece until the end, and
    // the chain answers 413 once what the plugin holds would pass its limit.
    let origin = origin();
    let n = start("ngx-body-req-limit-chunked", &origin);
    let r = send(&n, Request::post("/paused/echo", e2e::pattern_body(LIMIT + 100 * 1024)).chunked(16 * 1024).header("x-pw-test", "req-body-upper"));
    assert_eq!((r.status, r.body_str().as_str()), (413, "request body too large\n"), "{}", n.log_report());
    assert!(wait_for_log(&n, "rust-filter: the request body passed max_body_size (262144 bytes) held for the plugin; answering 413"), "{}", n.log_report());
    origin.assert_no_new_requests(Duration::from_millis(300));
    assert_eq!(origin.request_count(), 0);
}

#[test]
fn a_paused_response_body_over_max_body_size_is_cut_off() {
    let origin = origin();
    let n = start("ngx-body-resp-limit", &origin);
    let r = n.send(&Request::get("/paused/big").header("x-pw-test", "resp-body-upper").timeout(Duration::from_secs(20)));
    let e = r.map(|r| (r.status, r.body.len())).expect_err("the client sees the response cut off");
    assert!(e.is_closed(), "{e}");
    assert!(wait_for_log(&n, "rust-filter: the response body passed max_body_size (262144 bytes) held for the plugin; the response is cut (connection closed)"), "{}", n.log_report());
    // The worker is fine.
    assert_eq!(send(&n, Request::get("/paused/after")).status, 200);
}

#[test]
fn bodies_under_max_body_size_are_unaffected() {
    let origin = origin();
    let n = start("ngx-body-under-limit", &origin);
    // Over client_body_buffer_size (64k): nginx keeps it in a temporary file,
    // read back in pieces.
    let body = e2e::pattern_body(LIMIT - 1024);
    let r = send(&n, Request::post("/paused/echo", body.clone()).header("x-pw-test", "req-body-upper"));
    assert_eq!(r.status, 200, "{}", n.log_report());
    let upper = body.to_ascii_uppercase();
    assert_eq!(origin.wait_for_requests(1, WAIT)[0].body, upper);
    assert_eq!(r.body, upper);
    let r = send(&n, Request::get("/paused/hello").header("x-pw-test", "resp-body-upper"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "HELLO FROM ORIGIN"));
}

#[test]
fn an_upload_over_max_body_size_through_a_plugin_that_reads_only_headers_is_not_limited() {
    let origin = origin();
    let n = start("ngx-body-headers-only", &origin);
    let body = e2e::pattern_body(4 * LIMIT);
    let r = send(&n, Request::post("/headers/echo", body.clone()));
    assert_eq!(r.status, 200, "{}", n.log_report());
    assert_eq!(r.header("x-headers-only"), Some("1"));
    assert_eq!(origin.wait_for_requests(1, WAIT)[0].body.len(), body.len());
    assert_eq!(r.body, body);
    let r = send(&n, Request::get("/headers/big"));
    assert_eq!(r.body.len(), 2 * LIMIT);
}

#[test]
fn an_upload_over_max_body_size_through_a_plugin_that_reads_bodies_gets_413_as_nginx_holds_the_new_body_whole() {
    // The plugin lets every piece through, but nginx takes a replaced request
    // body whole: the module holds what the chain let through until the end.
    let origin = origin();
    let n = start("ngx-body-held-whole", &origin);
    let r = send(&n, Request::post("/paused/echo", e2e::pattern_body(LIMIT + 1)).chunked(16 * 1024));
    assert_eq!(r.status, 413, "{}", n.log_report());
    assert!(wait_for_log(&n, "rust-filter: the request body held for the plugins would reach"), "{}", n.log_report());
    assert_eq!(origin.request_count(), 0);
}
