//! Every case of the Rust-SDK test filter that makes sense over HTTP, on a
//! real nginx (master + 2 workers) with `ngx_http_proxy_wasm_module.so` in
//! front of a real origin (protocol: tests/plugins/README.md; the Traffic
//! Server equivalents: tests/ats_sdk.rs). One behaviour per test; the tests
//! that need the same configuration share one nginx (compiling the filter
//! dominates a start-up).
//!
//! Shared data, queues and metrics live in the module's shared-memory zone
//! and are the same in every worker (tests/nginx_shared.rs proves that). A
//! test that reads back what a request left still sends its requests over
//! one kept-alive client connection: what it checks is the filter's own
//! behaviour, and one worker keeps the order of its callbacks obvious.
//!
//! Run with `make nginx && cargo test --test nginx_sdk`.

mod e2e;
mod sdk_builds;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::client::{Connection, Request, Response};
use e2e::nginx::{Nginx, NginxOptions};
use e2e::origin::{self, Origin};

const WAIT: Duration = Duration::from_secs(5);

/// A plugin YAML for the Rust-SDK filter; outgoing calls allowed everywhere.
fn rust_yaml(name: &str, root_id: &str, configuration: &str, extra: &str) -> String {
    format!(
        r#"- config:
    name: "{name}"
    root_id: "{root_id}"
    configuration: '{configuration}'
{extra}    authorizations:
      allowed_hosts: ["*"]
    vm_config:
      vm_id: "{name}_vm"
      code:
        local:
          filename: "@REPO@/build/plugins/rust_sdk_filter.wasm"
"#
    )
}

/// nginx with `plugins.yaml`, the chain `proxy_wasm <plugin>` for every
/// location, `http_extra` in the http block, and `location /` proxying to the origin.
fn start(test: &str, yaml: &str, plugin: &str, origin: &Origin, http_extra: &str, workers: usize) -> Nginx {
    Nginx::start(
        NginxOptions::new(test)
            .workers(workers)
            .origin(origin.port())
            .file("plugins.yaml", yaml)
            .http(format!("proxy_wasm_config @CONF@/plugins.yaml;\nproxy_wasm {plugin};\n{http_extra}"))
            .server("location / { proxy_pass http://127.0.0.1:@ORIGIN_PORT@; proxy_set_header Host $host; }"),
    )
}

fn send(n: &Nginx, req: Request) -> Response {
    n.send(&req).unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()))
}

/// A request with `x-pw-test: <cases>`.
fn case(path: &str, cases: &str) -> Request {
    Request::get(path).header("x-pw-test", cases)
}

/// A kept-alive client connection: every request on it meets one worker.
struct Conn<'a> {
    n: &'a Nginx,
    c: Connection,
}

impl<'a> Conn<'a> {
    fn open(n: &'a Nginx) -> Conn<'a> {
        Conn { n, c: Connection::open(n.port()).expect("connect to nginx") }
    }
    fn send(&mut self, req: Request) -> Response {
        let r = self.c.send(&req).unwrap_or_else(|e| panic!("{e}\n{}", self.n.log_report()));
        assert!(!self.c.is_closed(), "nginx closed the kept-alive connection after {} {}\n{}", req.method, req.path, self.n.log_report());
        r
    }
    fn shared(&mut self, key: &str) -> String {
        self.send(case("/shared", "shared-get").header("x-pw-key", key)).body_str()
    }
    /// Polls a shared-data key until `pred` holds; returns the last value.
    fn wait_shared(&mut self, key: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.shared(key);
            if pred(&v) || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn the_request(origin: &Origin, path: &str) -> origin::Request {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(r) = origin.requests().into_iter().find(|r| r.path == path) {
            return r;
        }
        assert!(Instant::now() < deadline, "the origin never got {path}: {:?}", origin.requests().iter().map(|r| r.path.clone()).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ------------------------------------------------------------------ one shared nginx

fn shared_origin() -> Origin {
    Origin::with_handler(|req| {
        if req.path_only().starts_with("/echo") {
            return origin::Response::echo(req);
        }
        let status = if req.path_only() == "/accepted" { 202 } else { 200 };
        origin::Response::text(status, "hello from origin")
            .header("x-pw-resp-remove", "should go")
            .header("x-pw-resp-replace", "original")
            .header("x-pw-drop-resp", "should go")
            .header("x-pw-resp-keep", "kept")
    })
}

struct Shared {
    origin: Origin,
    n: Nginx,
}

/// nginx with the filter (`rust-filter`, root id `sdk-root`, default
/// configuration) in front of [`shared_origin`]; started by the first test
/// that needs it, stopped when no running test holds it.
fn server() -> Arc<Shared> {
    static SERVER: Mutex<Weak<Shared>> = Mutex::new(Weak::new());
    let mut slot = SERVER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = slot.upgrade() {
        return s;
    }
    let origin = shared_origin();
    let n = start("ngx-sdk-shared", &rust_yaml("rust-filter", "sdk-root", "", ""), "rust-filter", &origin, "", 2);
    let s = Arc::new(Shared { origin, n });
    *slot = Arc::downgrade(&s);
    s
}

mod on_one_server {
    use super::*;

    #[test]
    fn the_headers_case_adds_replaces_and_removes_headers_on_both_sides() {
        let f = server();
        let r = send(&f.n, case("/h", "headers").header("x-pw-echo", "echo me").header("x-pw-remove", "x").header("x-pw-replace", "old"));
        assert_eq!(r.status, 200, "{}", f.n.log_report());
        let seen = the_request(&f.origin, "/h");
        assert_eq!(seen.header("x-pw-added"), Some("1"));
        assert_eq!(seen.header_all("x-pw-multi"), vec!["a", "b"]);
        assert_eq!(seen.header_all("x-pw-replace"), vec!["replaced"]);
        assert!(!seen.has_header("x-pw-remove"));
        let count = r.header("x-pw-req-header-count").expect("x-pw-req-header-count");
        assert_eq!(Some(count), r.header("x-pw-req-header-count-param"));
        assert!(count.parse::<u32>().unwrap() >= 8, "pairs include the 4 pseudo-headers: {count}");
        assert_eq!(r.header("x-pw-echo"), Some("echo me"));
        assert_eq!(r.header("x-pw-echo-upper"), Some("echo me"));
        assert_eq!(r.header("x-pw-missing"), Some("(none)"));
        assert_eq!(r.header("x-pw-replace-readback"), Some("replaced"));
        assert_eq!(r.header("x-pw-remove-readback"), Some("(none)"));
        assert_eq!(r.header("x-pw-multi-readback"), Some("a,b"));
        let resp_count = r.header("x-pw-resp-header-count").expect("x-pw-resp-header-count");
        assert_eq!(Some(resp_count), r.header("x-pw-resp-header-count-param"));
        assert_eq!(r.header("x-pw-resp-content-type"), Some("text/plain"));
        assert_eq!(r.header("x-pw-resp-added"), Some("1"));
        assert_eq!(r.header_all("x-pw-resp-replace"), vec!["replaced"]);
        assert!(!r.has_header("x-pw-resp-remove"), "{:?}", r.headers);
        assert_eq!(r.header("x-pw-resp-keep"), Some("kept"));
        assert_eq!(r.body_str(), "hello from origin");
    }

    #[test]
    fn set_header_map_pairs_rewrites_the_whole_request_and_response_maps() {
        let f = server();
        let r = send(&f.n, case("/s?x=1", "set-headers").header("x-pw-drop-me", "1").header("x-pw-keep", "k"));
        assert_eq!(r.status, 200, "{}", f.n.log_report());
        let seen = the_request(&f.origin, "/s?x=1");
        assert_eq!(seen.method, "GET");
        assert_eq!(seen.header("x-pw-set-all"), Some("1"));
        assert_eq!(seen.header("x-pw-keep"), Some("k"));
        assert!(!seen.has_header("x-pw-drop-me"), "{:?}", seen.headers);
        assert!(r.header("x-pw-set-all-count").is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n >= 6)), "{:?}", r.header("x-pw-set-all-count"));
        assert_eq!(r.header("x-pw-set-all-resp"), Some("1"));
        assert!(!r.has_header("x-pw-drop-resp"), "{:?}", r.headers);
        assert_eq!(r.header("x-pw-resp-keep"), Some("kept"));
    }

    #[test]
    fn pseudo_headers_carry_method_path_with_query_authority_scheme_and_status() {
        let f = server();
        let r = send(&f.n, Request::post("/accepted?a=1&b=2", "x").header("x-pw-test", "pseudo").host("pseudo.test"));
        assert_eq!(r.status, 202, "{}", f.n.log_report());
        assert_eq!(r.header("x-pw-method"), Some("POST"));
        assert_eq!(r.header("x-pw-path"), Some("/accepted?a=1&b=2"));
        assert_eq!(r.header("x-pw-authority"), Some("pseudo.test"));
        assert_eq!(r.header("x-pw-scheme"), Some("http"));
        assert_eq!(r.header("x-pw-status"), Some("202"));
    }

    #[test]
    fn header_map_and_body_sizes_match_what_the_plugin_reads() {
        let f = server();
        let mut c = Conn::open(&f.n);
        let r = c.send(Request::post("/echo/sizes", vec![b's'; 1000]).chunked(300).header("x-pw-test", "sizes"));
        assert_eq!(r.status, 200, "{}", f.n.log_report());
        let size = r.header("x-pw-req-header-map-size").expect("x-pw-req-header-map-size");
        assert_eq!(Some(size), r.header("x-pw-req-header-map-size-expected").map(|m| format!("OK {m}")).as_deref());
        assert_eq!(r.header("x-pw-header-map-size-bad-type"), Some("BAD_ARGUMENT"));
        assert_eq!(r.header("x-pw-buffer-status-bad-type"), Some("BAD_ARGUMENT"));
        assert_eq!(r.header("x-pw-req-body-buffer-status"), Some("OK 1000"));
        assert_eq!(r.header("x-pw-req-body-size-param"), Some("1000"));
        let size = r.header("x-pw-resp-header-map-size").expect("x-pw-resp-header-map-size");
        assert_eq!(Some(size), r.header("x-pw-resp-header-map-size-expected").map(|m| format!("OK {m}")).as_deref());
        assert_eq!(r.body.len(), 1000);
    }

    #[test]
    fn the_response_body_buffer_status_at_end_of_stream_is_the_whole_body() {
        let f = server();
        let mut c = Conn::open(&f.n);
        let r = c.send(Request::post("/echo/sizes-resp", vec![b's'; 1000]).header("x-pw-test", "sizes"));
        assert_eq!(r.status, 200, "{}", f.n.log_report());
        assert_eq!(c.wait_shared("resp.body.buffer_status", |v| v == "OK 1000"), "OK 1000");
    }

    #[test]
    fn a_request_without_a_test_case_passes_unmodified_and_unknown_cases_are_reported() {
        let f = server();
        let r = send(&f.n, Request::post("/echo/plain", "untouched").header("x-other", "1"));
        assert_eq!((r.status, r.body_str().as_str(), r.header("x-proxy-wasm")), (200, "untouched", Some("rust-sdk")));
        let seen = the_request(&f.origin, "/echo/plain");
        assert_eq!(seen.body_str(), "untouched");
        assert_eq!(seen.header("x-other"), Some("1"));
        let r = send(&f.n, case("/u", "no-such-case, Time"));
        assert_eq!(r.header_all("x-pw-unknown-case"), vec!["no-such-case"]);
        assert_eq!(r.header("x-pw-time-sane"), Some("true"), "case names are case-insensitive");
    }

    #[test]
    fn a_local_response_carries_the_report_headers_collected_before_it() {
        let f = server();
        let r = send(&f.n, case("/local?q=1", "properties, local"));
        assert_eq!(r.status, 403, "{}", f.n.log_report());
        assert_eq!(r.body_str(), "denied by rust-sdk-filter");
        assert_eq!(r.header("x-pw-local"), Some("request-headers"));
        assert_eq!(r.header("x-proxy-wasm"), Some("rust-sdk"));
        assert_eq!(r.header("x-pw-prop-request-path"), Some("/local?q=1"), "{:?}", r.headers);
        std::thread::sleep(Duration::from_millis(200));
        assert!(!f.origin.requests().iter().any(|r| r.path.starts_with("/local")), "the origin is not contacted");
    }

    #[test]
    fn a_local_response_from_the_request_body_answers_after_the_whole_body() {
        let f = server();
        let r = send(&f.n, Request::post("/echo/lb", vec![b'b'; 5000]).chunked(1000).header("x-pw-test", "local-req-body").header("x-pw-local-status", "413"));
        assert_eq!(r.status, 413, "{}", f.n.log_report());
        assert_eq!(r.body_str(), "request body had 5000 bytes");
        assert_eq!(r.header("x-pw-local"), Some("request-body"));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!f.origin.requests().iter().any(|r| r.path == "/echo/lb"), "nginx holds the request until the body went through the plugins");
        let r = send(&f.n, case("/nobody", "local-req-body"));
        assert_eq!((r.status, r.body_str().as_str()), (200, "hello from origin"));
    }

    #[test]
    fn a_local_response_from_response_headers_replaces_the_origin_response() {
        let f = server();
        let r = send(&f.n, case("/lrh", "local-resp-headers").header("x-pw-local-status", "451"));
        assert_eq!(r.status, 451, "{}", f.n.log_report());
        assert_eq!(r.body_str(), "replaced response by rust-sdk-filter");
        assert_eq!(r.header("x-pw-local"), Some("response-headers"));
        the_request(&f.origin, "/lrh");
    }

    #[test]
    fn request_body_edits_upper_prefix_append_replace_and_splice_reach_the_origin() {
        let f = server();
        let cases: &[(&str, &[(&str, &str)], &str)] = &[
            ("req-body-upper", &[], "HELLO WORLD"),
            ("req-body-prefix", &[], "[pw]hello world"),
            ("req-body-append", &[], "hello world[/pw]"),
            ("req-body-replace", &[], "replaced by rust-sdk-filter"),
            ("req-body-replace", &[("x-pw-replace-body", "a new body")], "a new body"),
            ("req-body-splice", &[], "h--lo world"),
            ("req-body-upper req-body-splice req-body-prefix req-body-append", &[], "[pw]H--LO WORLD[/pw]"),
            ("req-body-prefix", &[("x-pw-keep-content-length", "1")], "[pw]hello world"),
        ];
        for (i, (cases, params, expected)) in cases.iter().enumerate() {
            for chunked in [false, true] {
                let path = format!("/echo/req/{i}/{chunked}");
                let mut req = Request::post(&path, "hello world").header("x-pw-test", *cases);
                if chunked {
                    req = req.chunked(4);
                }
                for (k, v) in params.iter() {
                    req = req.header(*k, *v);
                }
                let r = send(&f.n, req);
                assert_eq!(r.status, 200, "{cases} chunked={chunked}\n{}", f.n.log_report());
                let seen = the_request(&f.origin, &path);
                assert_eq!(seen.body_str(), *expected, "{cases} chunked={chunked}");
                assert!(!(seen.has_header("content-length") && seen.has_header("transfer-encoding")), "{:?}", seen.headers);
                if let Some(len) = seen.header("content-length") {
                    assert_eq!(len, expected.len().to_string(), "{cases} chunked={chunked}: framing matches the edited body");
                }
            }
        }
    }

    #[test]
    fn response_body_edits_upper_prefix_append_replace_and_splice_reach_the_client() {
        let f = server();
        for (cases, params, expected) in [
            ("resp-body-upper", None, "HELLO FROM ORIGIN"),
            ("resp-body-prefix", None, "[pw]hello from origin"),
            ("resp-body-append", None, "hello from origin[/pw]"),
            ("resp-body-replace", None, "replaced by rust-sdk-filter"),
            ("resp-body-replace", Some("new body"), "new body"),
            ("resp-body-splice", None, "h--lo from origin"),
            ("resp-body-upper resp-body-prefix resp-body-append", None, "[pw]HELLO FROM ORIGIN[/pw]"),
        ] {
            let mut req = case("/rb", cases);
            if let Some(p) = params {
                req = req.header("x-pw-replace-resp-body", p);
            }
            let r = send(&f.n, req);
            assert_eq!((r.status, r.body_str().as_str()), (200, expected), "{cases}\n{}", f.n.log_report());
        }
    }

    #[test]
    fn body_callbacks_see_end_of_stream_exactly_once_in_both_directions() {
        let f = server();
        let mut c = Conn::open(&f.n);
        let r = c.send(Request::post("/echo/info", vec![b'i'; 30_000]).chunked(1000).header("x-pw-test", "body-info"));
        assert_eq!(r.status, 200, "{}", f.n.log_report());
        assert_eq!(r.header("x-pw-req-headers-eos"), Some("false"));
        assert_eq!(r.header("x-pw-resp-headers-eos"), Some("false"));
        assert_eq!(r.header("x-pw-req-body-eos-calls"), Some("1"));
        let info = c.wait_shared("resp.body.info", |v| v.contains("eos=1"));
        assert!(info.starts_with("calls=") && info.contains(" eos=1 size="), "{info}");
        let r = c.send(case("/noinfo", "body-info"));
        assert_eq!(r.header("x-pw-req-headers-eos"), Some("true"));
        assert_eq!(r.header("x-pw-req-body-calls"), Some("0"));
    }

    #[test]
    fn shared_data_increments_and_cas_over_one_worker() {
        let f = server();
        let mut c = Conn::open(&f.n);
        let first: u32 = c.send(case("/sh", "shared").header("x-pw-key", "sdk.ctr")).header("x-pw-shared").expect("x-pw-shared").parse().unwrap();
        let second: u32 = c.send(case("/sh", "shared").header("x-pw-key", "sdk.ctr")).header("x-pw-shared").unwrap().parse().unwrap();
        assert_eq!(second, first + 1);
        assert_eq!(c.shared("sdk.ctr"), second.to_string());
        let r = c.send(case("/cas", "shared-cas").header("x-pw-key", "sdk.cas"));
        assert_eq!(r.header("x-pw-cas-first"), Some("OK"), "{:?}", r.headers);
        assert_eq!(r.header("x-pw-cas-stale"), Some("CAS_MISMATCH"));
        assert_eq!(r.header("x-pw-cas-final"), Some("first"));
    }

    #[test]
    fn shared_get_and_set_answer_locally_with_cas() {
        let f = server();
        let mut c = Conn::open(&f.n);
        let r = c.send(case("/g", "shared-get").header("x-pw-key", "sdk.k1"));
        assert_eq!((r.status, r.body_str().as_str(), r.header("x-pw-shared-cas")), (404, "(none)", Some("(none)")));
        let r = c.send(case("/s", "shared-set").header("x-pw-key", "sdk.k1").header("x-pw-value", "v1"));
        assert_eq!((r.status, r.body_str().as_str()), (200, "OK"));
        let r = c.send(case("/g", "shared-get").header("x-pw-key", "sdk.k1"));
        assert_eq!((r.status, r.body_str().as_str()), (200, "v1"));
        let cas = r.header("x-pw-shared-cas").unwrap().to_string();
        let r = c.send(case("/s", "shared-set").header("x-pw-key", "sdk.k1").header("x-pw-value", "v2").header("x-pw-cas", &cas));
        assert_eq!(r.status, 200);
        let r = c.send(case("/s", "shared-set").header("x-pw-key", "sdk.k1").header("x-pw-value", "v3").header("x-pw-cas", &cas));
        assert_eq!((r.status, r.body_str().as_str(), r.header("x-pw-shared-set")), (409, "CAS_MISMATCH", Some("CAS_MISMATCH")));
        assert_eq!(c.shared("sdk.k1"), "v2");
    }

    #[test]
    fn enqueue_resolves_the_queue_registered_in_on_configure_and_on_queue_ready_drains_it() {
        let f = server();
        let mut c = Conn::open(&f.n);
        let before: u64 = c.shared("queue.count").parse().unwrap_or(0);
        for i in 0..3 {
            let r = c.send(case("/q", "enqueue").header("x-pw-queue-value", format!("item-{i}")));
            assert_eq!(r.header("x-pw-queue-resolve"), Some("OK"), "{}", f.n.log_report());
            assert_eq!(r.header("x-pw-queue-resolve-same-id"), Some("true"));
            assert_eq!(r.header("x-pw-enqueue"), Some("OK"));
        }
        let want = (before + 3).to_string();
        assert_eq!(c.wait_shared("queue.count", |v| v.parse::<u64>().unwrap_or(0) >= before + 3), want, "{}", f.n.log_report());
        assert_eq!(c.shared("queue.last"), "item-2");
    }

    #[test]
    fn a_request_paused_in_on_request_headers_resumes_from_on_queue_ready() {
        let f = server();
        let r = send(&f.n, case("/qr", "queue-resume"));
        assert_eq!(r.status, 200, "{}", f.n.log_report());
        assert_eq!(r.header("x-pw-enqueue"), Some("OK"));
        assert_eq!(r.header("x-pw-resumed-by"), Some("queue"));
        assert_eq!(the_request(&f.origin, "/qr").header("x-pw-resumed-by"), Some("queue"));
    }

    #[test]
    fn metric_hostcalls_report_counter_gauge_histogram_and_errors() {
        let f = server();
        let mut c = Conn::open(&f.n);
        let first: u64 = c.send(case("/m", "metrics").header("x-pw-metric-value", "10")).header("x-pw-metric-counter").expect("counter").parse().unwrap();
        let r = c.send(case("/m", "metrics").header("x-pw-metric-value", "10"));
        assert_eq!(r.header("x-pw-metric-ops"), Some("OK OK OK OK"), "{:?}", r.headers);
        assert_eq!(r.header("x-pw-metric-counter-negative"), Some("BAD_ARGUMENT"));
        let second: u64 = r.header("x-pw-metric-counter").unwrap().parse().unwrap();
        assert!(second > first, "{first} then {second}");
        assert_eq!(r.header("x-pw-metric-gauge"), Some("9"));
        assert!(r.header("x-pw-metric-histogram").is_some());
        assert_eq!(r.header("x-pw-metric-unknown"), Some("NOT_FOUND"));
        assert_eq!(r.header("x-pw-metric-redefine-same-id"), Some("true"));
    }

    #[test]
    fn properties_answer_request_source_plugin_and_response_values_and_set_property_round_trips() {
        let f = server();
        let r = send(&f.n, case("/p/x?y=2", "properties").header("x-pw-prop", "pv").header("x-pw-prop-value", "rt-value"));
        assert_eq!(r.status, 200, "{}", f.n.log_report());
        assert_eq!(r.header("x-pw-prop-request-path"), Some("/p/x?y=2"));
        assert_eq!(r.header("x-pw-prop-request-path-nul"), Some("/p/x?y=2"));
        assert_eq!(r.header("x-pw-prop-request-method"), Some("GET"));
        assert_eq!(r.header("x-pw-prop-header"), Some("pv"));
        let address = r.header("x-pw-prop-source-address").unwrap();
        let port = r.header("x-pw-prop-source-port").unwrap();
        assert!(address.starts_with("127.0.0.1:"), "{address}");
        assert_eq!(address.rsplit(':').next(), Some(port), "source.port is the port of source.address");
        assert_eq!(r.header("x-pw-prop-plugin-name"), Some("rust-filter"));
        assert_eq!(r.header("x-pw-prop-plugin-root-id"), Some("sdk-root"));
        assert_eq!(r.header("x-pw-prop-plugin-vm-id"), Some("rust-filter_vm"));
        assert_eq!(r.header("x-pw-prop-missing"), Some("(none)"));
        assert_eq!(r.header("x-pw-prop-roundtrip"), Some("rt-value"));
        assert_eq!(r.header("x-pw-prop-response-code"), Some("200"));
        let r = send(&f.n, case("/p", "properties"));
        assert_eq!(r.header("x-pw-prop-roundtrip"), Some("round-trip"), "a value set by one stream does not leak into the next");
        // A repeated header reads as its values joined with "," (as its
        // header map value does), on both servers.
        let r = send(&f.n, case("/p/dup", "properties").header("x-pw-prop", "one").header("x-pw-prop", "two").header("user-agent", "pw-agent/1").header("x-pw-prop-paths", "request.useragent"));
        assert_eq!(r.header("x-pw-prop-header"), Some("one,two"));
        assert_eq!(r.header("x-pw-prop-req"), Some("request.useragent=pw-agent/1"));
    }

    fn prop<'a>(r: &'a Response, name: &str, path: &str) -> &'a str {
        let prefix = format!("{path}=");
        r.header_all(name).into_iter().find_map(|v| v.strip_prefix(prefix.as_str())).unwrap_or_else(|| panic!("{name} has no {path}: {:?}", r.header_all(name)))
    }

    fn int(rendered: &str) -> i64 {
        rendered.rsplit_once(" int=").unwrap_or_else(|| panic!("not 8 bytes: {rendered:?}")).1.parse().unwrap()
    }

    #[test]
    fn envoy_property_paths_and_nginx_variables_have_their_values() {
        let f = server();
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
        let paths = "request.path, request.url_path, request.query, request.host, request.scheme, request.method, request.referer, \
            request.useragent, request.id, request.protocol, request.time, request.size, request.headers.x-request-id, response.code, \
            source.address, source.port, destination.address, destination.port, connection.id, plugin_name, plugin_root_id, \
            plugin_vm_id, ngx.request_method, ngx.uri, ngx.arg_b, ngx.no_such_variable, response.headers.x-pw-resp-keep";
        let req = Request::post("/pp/a?b=1", "12345")
            .host("props.test")
            .header("x-pw-test", "properties")
            .header("x-pw-prop-paths", paths)
            .header("x-request-id", "rid-1")
            .header("user-agent", "ua/1")
            .header("referer", "http://ref.test/");
        let r = send(&f.n, req);
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
        assert_eq!(r.status, 200, "{}", f.n.log_report());
        let q = |path| prop(&r, "x-pw-prop-req", path);
        for (path, want) in [
            ("request.path", "/pp/a?b=1"),
            ("request.url_path", "/pp/a"),
            ("request.query", "b=1"),
            ("request.host", "props.test"),
            ("request.scheme", "http"),
            ("request.method", "POST"),
            ("request.referer", "http://ref.test/"),
            ("request.useragent", "ua/1"),
            ("request.id", "rid-1"),
            ("request.protocol", "HTTP/1.1"),
            ("request.headers.x-request-id", "rid-1"),
            ("response.code", "(none)"),
            ("plugin_name", "rust-filter"),
            ("plugin_root_id", "sdk-root"),
            ("plugin_vm_id", "rust-filter_vm"),
            ("ngx.request_method", "POST"),
            ("ngx.uri", "/pp/a"),
            ("ngx.arg_b", "1"),
            ("ngx.no_such_variable", "(none)"),
        ] {
            // An 8-byte text is also shown as an integer, a 1-byte one as a bool.
            assert_eq!(q(path).split(" int=").next().and_then(|v| v.split(" bool=").next()), Some(want), "{path}");
        }
        let time = int(q("request.time"));
        assert!(before - 1_000_000_000 <= time && time <= after, "request.time {before} <= {time} <= {after}");
        assert_eq!(int(q("request.size")), 5);
        let source = q("source.address");
        assert!(source.starts_with("127.0.0.1:"), "{source}");
        assert_eq!(source.rsplit(':').next().unwrap(), int(q("source.port")).to_string());
        assert_eq!(q("destination.address"), format!("127.0.0.1:{}", f.n.port()));
        assert_eq!(int(q("destination.port")), f.n.port() as i64);
        assert!(int(q("connection.id")) >= 0);
        let p = |path| prop(&r, "x-pw-prop-resp", path);
        assert_eq!(int(p("response.code")), 200);
        assert_eq!(p("response.headers.x-pw-resp-keep"), "kept");
    }

    #[test]
    fn the_current_time_is_nanoseconds_since_the_epoch() {
        let f = server();
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let r = send(&f.n, case("/t", "time"));
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let ns: u128 = r.header("x-pw-time-ns").expect("x-pw-time-ns").parse().unwrap();
        assert!(before <= ns && ns <= after, "{before} <= {ns} <= {after}");
        assert_eq!(r.header("x-pw-time-sane"), Some("true"));
    }

    #[test]
    fn plugin_log_levels_map_to_nginx_levels_with_the_plugin_name_in_each_line() {
        let f = server();
        let r = send(&f.n, case("/log", "log"));
        assert_eq!(r.header("x-pw-logged"), Some("6"));
        // error_log ... info: the plugins log from info up.
        assert_eq!((r.header("x-pw-log-level"), r.header("x-pw-log-level-name")), (Some("2"), Some("info")));
        f.n.expect_log("log-test level=critical", WAIT);
        let logs = f.n.error_log();
        let line = |level: &str| logs.lines().find(|l| l.contains(&format!("log-test level={level} "))).map(str::to_string);
        for (level, marker) in [("info", "[info]"), ("warn", "[warn]"), ("error", "[error]"), ("critical", "[crit]")] {
            let l = line(level).unwrap_or_else(|| panic!("no {level} line\n{}", f.n.log_report()));
            assert!(l.contains(marker) && l.contains(&format!("[proxy_wasm] rust-filter: rust-sdk-filter log-test level={level} context=")), "{level}: {l}");
        }
        assert!(line("trace").is_none() && line("debug").is_none(), "below the error_log level");
    }

    #[test]
    fn set_effective_context_accepts_live_ids_and_refuses_unknown_ones() {
        let f = server();
        let r = send(&f.n, case("/e", "effective-context"));
        assert_eq!(r.header("x-pw-effective-self"), Some("OK"), "{:?}", r.headers);
        assert_eq!(r.header("x-pw-effective-bogus"), Some("BAD_ARGUMENT"));
        assert_eq!(r.header("x-pw-effective-restore"), Some("OK"));
    }

    #[test]
    fn foreign_functions_unknown_to_nginx_are_not_found() {
        let f = server();
        let r = send(&f.n, case("/f", "foreign").header("x-pw-foreign-name", "echo"));
        assert_eq!(r.status, 200, "{}", f.n.log_report());
        assert_eq!(r.header("x-pw-foreign-status"), Some("NOT_FOUND"));
        assert_eq!(r.header("x-pw-foreign-result"), Some("(none)"));
    }

    #[test]
    fn grpc_hostcalls_answer_unimplemented_without_trapping() {
        let f = server();
        let r = send(&f.n, case("/g", "grpc"));
        assert_eq!(r.status, 200, "{}", f.n.log_report());
        for name in ["x-pw-grpc-call", "x-pw-grpc-stream", "x-pw-grpc-close-unknown", "x-pw-grpc-cancel-unknown", "x-pw-grpc-send-unknown"] {
            assert_eq!(r.header(name), Some("UNIMPLEMENTED"), "{name}");
        }
        for name in ["x-pw-grpc-call-cancel", "x-pw-grpc-send", "x-pw-grpc-stream-cancel"] {
            assert_eq!(r.header(name), Some("skipped"), "{name}");
        }
    }

    #[test]
    fn the_config_case_reports_plugin_and_vm_configuration_and_context_ids() {
        let f = server();
        let r = send(&f.n, case("/cfg", "config"));
        assert_eq!(r.header("x-pw-config-tag"), Some("rust-sdk"), "{:?}", r.headers);
        assert_eq!(r.header("x-pw-config-size"), Some("0"));
        assert_eq!(r.header("x-pw-config-queue"), Some("q1"));
        assert!(r.header("x-pw-context-id").is_some_and(|id| id != "(none)"));
        assert_eq!(r.header("x-pw-root-context-id"), Some("1"));
    }

    #[test]
    fn close_in_on_request_headers_resets_the_request_without_contacting_the_origin() {
        let f = server();
        // Reset, as Envoy resets the stream: the connection is closed
        // without a response (it got 503 before the filter chain moved into
        // the core).
        let r = f.n.send(&case("/closed", "close"));
        let e = r.map(|r| r.status).expect_err("the connection is closed without a response");
        assert!(e.is_closed(), "{e}");
        std::thread::sleep(Duration::from_millis(200));
        assert!(!f.origin.requests().iter().any(|r| r.path == "/closed"));
        assert_eq!(send(&f.n, Request::get("/after-close")).status, 200);
    }

    #[test]
    fn close_in_on_response_headers_resets_the_response() {
        let f = server();
        let r = f.n.send(&case("/closed-resp", "close-response"));
        let e = r.map(|r| r.status).expect_err("the connection is closed without a response");
        assert!(e.is_closed(), "{e}");
        assert_eq!(send(&f.n, Request::get("/after-close-resp")).status, 200);
    }

    #[test]
    fn a_trap_answers_503_and_the_worker_keeps_serving() {
        // A plugin of its own: the shared one must not fail.
        let origin = Origin::start();
        let n = start("ngx-sdk-panic", &rust_yaml("trapper", "", "", "    failure_policy: reload\n"), "trapper", &origin, "", 1);
        let r = send(&n, case("/boom", "panic"));
        assert_eq!(r.status, 503, "{}", n.log_report());
        n.expect_log("trapper", WAIT);
        assert!(n.error_log().contains("panicked at"), "the SDK's panic message is logged\n{}", n.log_report());
        let r = send(&n, Request::get("/after"));
        assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")), "{}", n.log_report());
    }

    #[test]
    fn resume_in_body_without_a_body_does_not_pause() {
        let f = server();
        let r = send(&f.n, case("/nb", "resume-in-body"));
        assert_eq!((r.status, r.header("x-pw-resume-in-body")), (200, Some("no-body")), "{}", f.n.log_report());
        the_request(&f.origin, "/nb");
    }

    #[test]
    fn continue_inside_on_request_headers_that_then_pauses_is_applied_after_the_callback() {
        let f = server();
        let r = send(&f.n, case("/rr", "resume-reentrant").timeout(Duration::from_secs(5)));
        assert_eq!((r.status, r.header("x-pw-resume-reentrant")), (200, Some("1")), "{}", f.n.log_report());
        the_request(&f.origin, "/rr");
        let r = send(&f.n, case("/rrr", "resume-response-reentrant").timeout(Duration::from_secs(5)));
        assert_eq!((r.status, r.header("x-pw-resume-response-reentrant")), (200, Some("1")), "{}", f.n.log_report());
        assert_eq!(r.body_str(), "hello from origin");
    }
}

// ------------------------------------------------------------------ ticks, deferred done, aborted requests (one worker)

mod with_ticks {
    use super::*;

    fn ticking() -> Arc<Shared> {
        static SERVER: Mutex<Weak<Shared>> = Mutex::new(Weak::new());
        let mut slot = SERVER.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slot.upgrade() {
            return s;
        }
        let origin = Origin::with_handler(|req| {
            if req.path_only() == "/slow" {
                return origin::Response::text(200, "slow").delay(Duration::from_secs(2));
            }
            origin::Response::text(200, "hello from origin")
        });
        // One worker: requests on new connections (and aborted ones) meet the same shared data.
        let n = start("ngx-sdk-ticks", &rust_yaml("ticker", "", r#"{"tick_ms":50}"#, ""), "ticker", &origin, "", 1);
        let s = Arc::new(Shared { origin, n });
        *slot = Arc::downgrade(&s);
        s
    }

    fn shared(n: &Nginx, key: &str) -> String {
        send(n, case("/shared", "shared-get").header("x-pw-key", key)).body_str()
    }

    fn wait_shared(n: &Nginx, key: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = shared(n, key);
            if pred(&v) || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn num(v: &str) -> u64 {
        v.parse().unwrap_or(0)
    }

    #[test]
    fn a_request_paused_in_on_request_headers_resumes_from_a_tick() {
        let f = ticking();
        let r = send(&f.n, case("/tr", "tick-resume"));
        assert_eq!((r.status, r.header("x-pw-resumed-by")), (200, Some("tick")), "{}", f.n.log_report());
        assert_eq!(the_request(&f.origin, "/tr").header("x-pw-resumed-by"), Some("tick"));
        assert!(num(&shared(&f.n, "ticks")) > 0);
    }

    /// As on Envoy: no body callback while the headers are paused; nginx
    /// reads the body meanwhile and the plugins get it after the resume.
    #[test]
    fn the_body_of_a_request_paused_in_on_request_headers_reaches_the_plugin_after_the_resume() {
        let f = ticking();
        let body = vec![b'w'; 300_000];
        for (path, req) in [
            ("/trb", Request::post("/trb", "held with the headers").chunked(5)),
            // Large enough for a temporary file.
            ("/trb-big", Request::post("/trb-big", body.clone())),
        ] {
            let r = send(&f.n, req.header("x-pw-test", "tick-resume").timeout(Duration::from_secs(10)));
            assert_eq!((r.status, r.header("x-pw-first-body-call-resumed-by")), (200, Some("tick")), "{path}\n{}", f.n.log_report());
            let seen = the_request(&f.origin, path);
            assert_eq!(seen.header("x-pw-resumed-by"), Some("tick"));
            assert_eq!(seen.body.len(), if path == "/trb" { 21 } else { body.len() }, "{path}");
        }
    }

    #[test]
    fn a_deferred_on_done_is_completed_by_proxy_done_from_on_tick() {
        let f = ticking();
        let before = num(&shared(&f.n, "done.deferred.count"));
        let r = send(&f.n, case("/dd", "defer-done"));
        assert_eq!(r.status, 200, "{}", f.n.log_report());
        assert!(num(&wait_shared(&f.n, "done.deferred.count", |v| num(v) > before)) > before, "{}", f.n.log_report());
        assert_eq!(shared(&f.n, "done.deferred"), "OK");
    }

    #[test]
    fn on_log_and_on_done_run_for_a_request_the_client_aborts_while_it_is_paused() {
        let f = ticking();
        let (log0, done0, delete0) = (num(&shared(&f.n, "log.count")), num(&shared(&f.n, "done.count")), num(&shared(&f.n, "delete.count")));
        // The request waits for the slow origin; the client goes away meanwhile.
        let mut s = TcpStream::connect(("127.0.0.1", f.n.port())).unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        drop(s);
        // And one that sends half of its body and goes away.
        let mut s = TcpStream::connect(("127.0.0.1", f.n.port())).unwrap();
        s.write_all(b"POST /half HTTP/1.1\r\nHost: x\r\nx-pw-test: req-body-upper\r\nContent-Length: 100\r\n\r\nonly part").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        drop(s);
        let log = wait_shared(&f.n, "log.count", |v| num(v) >= log0 + 2 + 2);
        assert!(num(&log) >= log0 + 2, "on_log ran for both aborted requests: {log0} -> {log}\n{}", f.n.log_report());
        assert!(num(&wait_shared(&f.n, "done.count", |v| num(v) >= done0 + 2)) >= done0 + 2, "{}", f.n.log_report());
        assert!(num(&wait_shared(&f.n, "delete.count", |v| num(v) >= delete0 + 2)) >= delete0 + 2, "{}", f.n.log_report());
    }

    #[test]
    fn on_log_and_on_done_run_for_a_request_aborted_while_an_http_call_is_pending() {
        let f = ticking();
        let done0 = num(&shared(&f.n, "done.count"));
        // http-call to the origin's slow path: the request stays paused ~2 s.
        let mut s = TcpStream::connect(("127.0.0.1", f.n.port())).unwrap();
        s.write_all(b"GET /c HTTP/1.1\r\nHost: x\r\nx-pw-test: http-call\r\nx-pw-callout-path: /slow\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        drop(s);
        let done = wait_shared(&f.n, "done.count", |v| num(v) > done0);
        assert!(num(&done) > done0, "on_done ran: {done0} -> {done}\n{}", f.n.log_report());
        // The worker is fine.
        let mut buf = Vec::new();
        let mut s = TcpStream::connect(("127.0.0.1", f.n.port())).unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let _ = s.read_to_end(&mut buf);
        assert!(buf.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf));
    }
}

// ------------------------------------------------------------------ http_call

/// A tiny DNS server on 127.0.0.1 (UDP) answering every A question with
/// 127.0.0.1, for nginx's resolver.
fn dns_server() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let q = queries.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else { return };
            if n < 12 {
                continue;
            }
            q.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // The question: name labels, then type and class.
            let mut i = 12;
            while i < n && buf[i] != 0 {
                i += 1 + buf[i] as usize;
            }
            let qend = i + 5;
            if qend > n {
                continue;
            }
            let qtype = u16::from_be_bytes([buf[i + 1], buf[i + 2]]);
            let mut out = Vec::with_capacity(qend + 16);
            out.extend_from_slice(&buf[..2]); // id
            out.extend_from_slice(&[0x81, 0x80]); // response, recursion desired/available, no error
            out.extend_from_slice(&[0, 1, 0, if qtype == 1 { 1 } else { 0 }, 0, 0, 0, 0]);
            out.extend_from_slice(&buf[12..qend]);
            if qtype == 1 {
                out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 1]);
            }
            let _ = sock.send_to(&out, peer);
        }
    });
    (port, queries)
}

fn callout_origin() -> Origin {
    Origin::with_handler(|req| {
        origin::Response::text(200, "pong")
            .header("x-callout-method", req.method.clone())
            .header("x-callout-body", req.body_str())
            .trailer("x-callout-trailer", "t")
            .chunked(2)
    })
}

#[test]
fn http_calls_answer_with_status_headers_body_and_trailers_and_reuse_one_connection() {
    let callout = Origin::with_handler(|req| origin::Response::text(200, "pong").header("x-callout-method", req.method.clone()));
    let origin = Origin::start();
    let config = format!(r#"{{"upstream":"127.0.0.1:{}","callout_timeout_ms":3000}}"#, callout.port());
    let n = start("ngx-sdk-callout", &rust_yaml("caller", "", &config, ""), "caller", &origin, "", 1);
    let r = send(&n, case("/c", "http-call"));
    assert_eq!(r.status, 200, "{}", n.log_report());
    assert_eq!(r.header("x-pw-callout-dispatch"), Some("OK"));
    assert_eq!(r.header("x-pw-callout-status"), Some("200"));
    assert_eq!(r.header("x-pw-callout-body"), Some("pong"));
    let seen = &callout.wait_for_requests(1, WAIT)[0];
    assert_eq!((seen.method.as_str(), seen.path.as_str(), seen.body_str().as_str()), ("POST", "/callout", "ping from rust-sdk-filter"));
    assert_eq!(seen.header("x-pw-callout"), Some("1"));
    // Several calls in a row to one upstream: one TCP connection (kept alive).
    for i in 0..5 {
        let r = send(&n, case(&format!("/c{i}"), "http-call"));
        assert_eq!(r.header("x-pw-callout-status"), Some("200"), "{}", n.log_report());
    }
    assert_eq!(callout.request_count(), 6);
    assert_eq!(callout.connections_accepted(), 1, "sequential calls reuse the kept-alive connection");
    // The upstream closes its kept connections: the next call connects again.
    callout.close_connections();
    std::thread::sleep(Duration::from_millis(100));
    let r = send(&n, case("/after-close", "http-call"));
    assert_eq!(r.header("x-pw-callout-status"), Some("200"), "{}", n.log_report());
    assert_eq!(callout.connections_accepted(), 2);
}

#[test]
fn http_call_variants_local_fail_bad_and_body_pauses() {
    let callout = callout_origin();
    let origin = Origin::with_handler(|req| {
        if req.path_only().starts_with("/echo") {
            return origin::Response::echo(req);
        }
        origin::Response::text(200, "hello from origin")
    });
    let config = format!(r#"{{"upstream":"127.0.0.1:{}","callout_timeout_ms":3000,"fail_timeout_ms":500}}"#, callout.port());
    let n = start("ngx-sdk-callout-variants", &rust_yaml("caller", "", &config, ""), "caller", &origin, "", 2);
    // The callout's trailers and chunked body are reported.
    let r = send(&n, case("/c", "http-call"));
    assert_eq!(r.header("x-pw-callout-body"), Some("pong"), "{}", n.log_report());
    assert!(r.header("x-pw-callout-trailers").is_some_and(|t| t.starts_with("1 ")), "{:?}", r.header("x-pw-callout-trailers"));
    // http-call-local: the callout's answer becomes the local response.
    let r = send(&n, case("/cl", "http-call-local"));
    assert_eq!((r.status, r.body_str().as_str()), (200, "callout:pong"), "{}", n.log_report());
    assert!(!origin.requests().iter().any(|r| r.path == "/cl"));
    // http-call-fail: the host calls back with zero headers.
    let r = send(&n, case("/cf", "http-call-fail"));
    assert_eq!((r.header("x-pw-callout-dispatch"), r.header("x-pw-callout-failed")), (Some("OK"), Some("1")), "{}", n.log_report());
    // http-call-bad: no :path.
    let r = send(&n, case("/cb", "http-call-bad"));
    assert_eq!((r.status, r.header("x-pw-callout-bad")), (200, Some("BAD_ARGUMENT")));
    // A pause at the end of the request body and of the response body, resumed by the answer.
    let r = send(&n, Request::post("/echo/crb", "request body").header("x-pw-test", "http-call-req-body"));
    assert_eq!(the_request(&origin, "/echo/crb").body_str(), "request body[callout:200]", "{}", n.log_report());
    assert_eq!(r.body_str(), "request body[callout:200]");
    let r = send(&n, Request::post("/echo/cresp", "response body").header("x-pw-test", "http-call-resp-body"));
    assert_eq!(r.body_str(), "response body[callout:200]", "{}", n.log_report());
    // From on_response_headers.
    let r = send(&n, case("/cr", "http-call-response"));
    assert_eq!((r.status, r.header("x-pw-callout-status"), r.body_str().as_str()), (200, Some("200"), "hello from origin"), "{}", n.log_report());
}

#[test]
fn http_call_upstream_names_are_resolved_by_the_nginx_resolver() {
    let (dns, queries) = dns_server();
    let callout = Origin::start();
    let origin = Origin::start();
    let config = format!(r#"{{"upstream":"callout.test:{}","callout_timeout_ms":3000}}"#, callout.port());
    let n = start("ngx-sdk-resolver", &rust_yaml("caller", "", &config, ""), "caller", &origin, &format!("resolver 127.0.0.1:{dns} ipv6=off;\nresolver_timeout 2s;\n"), 1);
    let r = send(&n, case("/c", "http-call"));
    assert_eq!((r.header("x-pw-callout-dispatch"), r.header("x-pw-callout-status")), (Some("OK"), Some("200")), "{}", n.log_report());
    assert!(queries.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let seen = &callout.wait_for_requests(1, WAIT)[0];
    assert_eq!(seen.header("host"), Some(format!("callout.test:{}", callout.port()).as_str()));
}

#[test]
fn without_a_resolver_an_upstream_name_is_refused_with_bad_argument_and_a_log_line() {
    let origin = Origin::start();
    let config = r#"{"upstream":"callout.test:8080","callout_timeout_ms":1000}"#;
    let n = start("ngx-sdk-no-resolver", &rust_yaml("caller", "", config, ""), "caller", &origin, "", 1);
    let r = send(&n, case("/c", "http-call"));
    assert_eq!((r.status, r.header("x-pw-callout-dispatch")), (200, Some("BAD_ARGUMENT")), "{}", n.log_report());
    n.expect_log("configure `resolver`", WAIT);
}

#[test]
fn on_tick_may_dispatch_http_calls_whose_answers_reach_the_root_context() {
    let callout = Origin::start();
    let origin = Origin::start();
    let config = format!(r#"{{"upstream":"127.0.0.1:{}","tick_ms":100,"tick_http_call":true}}"#, callout.port());
    let n = start("ngx-sdk-tick-call", &rust_yaml("ticker", "", &config, ""), "ticker", &origin, "", 1);
    let deadline = Instant::now() + WAIT;
    loop {
        let r = send(&n, case("/s", "shared-get").header("x-pw-key", "tick.callout"));
        if r.body_str() == "200" {
            break;
        }
        assert!(Instant::now() < deadline, "tick.callout = {:?}\n{}", r.body_str(), n.log_report());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(callout.requests().iter().any(|r| r.header("x-pw-tick") == Some("1")));
}

// ------------------------------------------------------------------ AssemblyScript SDK

/// Issue 12: the AssemblyScript-SDK filter with an empty `configuration`
/// starts with its defaults (also under a root id, which the SDK reads
/// before `proxy_on_configure`).
#[test]
fn the_assemblyscript_filter_with_an_empty_configuration_starts_with_its_defaults() {
    let origin = Origin::start();
    let yaml = rust_yaml("as-empty", "as-filter", "", "").replace("rust_sdk_filter.wasm", "as_filter.wasm");
    let n = start("ngx-sdk-as-empty", &yaml, "as-empty", &origin, "", 1);
    let r = send(&n, Request::get("/page"));
    assert_eq!((r.status, r.header("x-proxy-wasm"), r.header("x-as-config")), (200, Some("assemblyscript"), None), "{}", n.log_report());
    assert_eq!(origin.wait_for_requests(1, WAIT)[0].header("x-as-filter"), Some("assemblyscript"));
    assert!(!n.error_log().contains("trapped"), "{}", n.log_report());
}

/// Issue 12: a filter on the AssemblyScript SDK's own `onConfigure` (which
/// passes the configuration size where the size pointer belongs) starts with
/// an empty configuration.
#[test]
fn an_assemblyscript_filter_on_the_sdk_s_own_on_configure_starts_with_an_empty_configuration() {
    let origin = Origin::start();
    let yaml = rust_yaml("as-sdk-configure", "sdk-configure", "", "").replace("rust_sdk_filter.wasm", "as_filter.wasm");
    let n = start("ngx-sdk-as-sdk-configure", &yaml, "as-sdk-configure", &origin, "", 1);
    let r = send(&n, Request::get("/page"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("sdk-configure")), "{}", n.log_report());
    assert!(!n.error_log().contains("trapped"), "{}", n.log_report());
}

// ------------------------------------------------------------------ the SDK matrix

/// Every build of the test filters (tests/sdk_builds: each Rust SDK release,
/// each AssemblyScript SDK release, the C filter) on nginx: the subset of
/// tests/ats_sdk.rs's `sdk_matrix` (see there), each build with an empty and
/// a non-empty configuration. One nginx (one worker) per build, with the
/// build as two plugins: `empty` (configuration empty) for the server
/// `empty.test`, `conf` (configuration non-empty, callouts to a second
/// origin) for the server `conf.test`. A plugin that fails to start makes
/// nginx refuse the whole configuration, so such a build fails all its tests
/// here (AssemblyScript SDK 0.1.8 until issue 12's empty-configuration trap
/// is fixed).
mod sdk_matrix {
    use super::*;

    pub struct Matrix {
        pub origin: Origin,
        pub callout: Origin,
        pub n: Nginx,
    }

    fn plugin(name: &str, wasm: &str, root_id: &str, configuration: &str) -> String {
        format!(
            r#"- config:
    name: "{name}"
    root_id: "{root_id}"
    configuration: '{configuration}'
    authorizations:
      allowed_hosts: ["*"]
    vm_config:
      vm_id: "{name}_vm"
      code:
        local:
          filename: "@REPO@/build/plugins/{wasm}"
"#
        )
    }

    pub fn start(test: &str, wasm: &str, empty: (&str, &str), conf: impl FnOnce(u16) -> (String, String)) -> Matrix {
        let origin = shared_origin();
        let callout = Origin::with_handler(|req| origin::Response::text(200, format!("pong {}", req.path)).header("x-callout", "yes"));
        let (conf_root_id, conf_configuration) = conf(callout.port());
        let yaml = format!("{}{}", plugin("empty", wasm, empty.0, empty.1), plugin("conf", wasm, &conf_root_id, &conf_configuration));
        let location = |plugin: &str| {
            format!("location / {{ proxy_wasm {plugin}; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; proxy_set_header Host $host; }}")
        };
        let n = Nginx::start(
            NginxOptions::new(test)
                .workers(1)
                .origin(origin.port())
                .file("plugins.yaml", yaml)
                .http(format!(
                    "proxy_wasm_config @CONF@/plugins.yaml;\nserver {{ listen 127.0.0.1:@PORT@; server_name conf.test; {} }}",
                    location("conf")
                ))
                .server(format!("server_name empty.test; {}", location("empty"))),
        );
        Matrix { origin, callout, n }
    }

    /// A request to the server whose plugin has the empty configuration.
    pub fn empty(path: &str) -> Request {
        Request::get(path).host("empty.test")
    }

    /// A request to the server whose plugin has the non-empty configuration.
    pub fn conf(path: &str) -> Request {
        Request::get(path).host("conf.test")
    }

    crate::sdk_builds::for_each_rust_build! {
    all {
    fn matrix() -> Arc<Matrix> {
        static SERVER: Mutex<Weak<Matrix>> = Mutex::new(Weak::new());
        let mut slot = SERVER.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = slot.upgrade() {
            return m;
        }
        let m = Arc::new(start(&format!("matrix-{}", BUILD.name), PLUGIN, ("", ""), |callout| {
            (String::new(), format!(r#"{{"tag":"matrix","upstream":"127.0.0.1:{callout}","authority":"callout.test","prefix":"<<"}}"#))
        }));
        *slot = Arc::downgrade(&m);
        m
    }

    #[test]
    fn with_an_empty_configuration_the_filter_starts_with_its_defaults() {
        let m = matrix();
        let r = send(&m.n, empty("/defaults").header("x-pw-test", "config"));
        assert_eq!(r.status, 200, "{}", m.n.log_report());
        assert_eq!(r.header("x-proxy-wasm"), Some(BUILD.tag));
        assert_eq!(r.header("x-pw-config-size"), Some("0"));
        assert_eq!(r.header("x-pw-config-tag"), Some(BUILD.tag));
        assert_eq!(r.body_str(), "hello from origin");
    }

    #[test]
    fn a_non_empty_configuration_is_read() {
        let m = matrix();
        let r = send(&m.n, conf("/configured").header("x-pw-test", "config"));
        assert_eq!(r.status, 200, "{}", m.n.log_report());
        assert_eq!(r.header("x-proxy-wasm"), Some("matrix"));
        assert_eq!(r.header("x-pw-config-tag"), Some("matrix"));
        assert_eq!(r.header("x-pw-config-authority"), Some("callout.test"));
    }

    #[test]
    fn headers_are_added_replaced_and_removed_on_both_sides() {
        let m = matrix();
        let r = send(&m.n, empty("/h").header("x-pw-test", "headers").header("x-pw-echo", "echo me").header("x-pw-remove", "x"));
        assert_eq!(r.status, 200, "{}", m.n.log_report());
        let seen = the_request(&m.origin, "/h");
        assert_eq!(seen.header("x-pw-added"), Some("1"));
        assert_eq!(seen.header_all("x-pw-multi"), vec!["a", "b"]);
        assert_eq!(seen.header_all("x-pw-replace"), vec!["replaced"]);
        assert!(!seen.has_header("x-pw-remove"));
        assert_eq!(r.header("x-pw-echo"), Some("echo me"));
        assert_eq!(r.header("x-pw-resp-added"), Some("1"));
        assert_eq!(r.header_all("x-pw-resp-replace"), vec!["replaced"]);
        assert!(!r.has_header("x-pw-resp-remove"), "{:?}", r.headers);
    }

    #[test]
    fn a_local_response_stops_the_request() {
        let m = matrix();
        let r = send(&m.n, empty("/local").header("x-pw-test", "local"));
        assert_eq!(r.status, 403, "{}", m.n.log_report());
        assert_eq!(r.body_str(), "denied by rust-sdk-filter");
        assert_eq!(r.header("x-pw-local"), Some("request-headers"));
        assert!(m.origin.requests().iter().all(|q| q.path != "/local"));
    }

    #[test]
    fn request_and_response_bodies_are_edited() {
        let m = matrix();
        let req = Request::post("/echo/body", "hello world").host("conf.test").header("x-pw-test", "req-body-upper req-body-prefix resp-body-append");
        let r = send(&m.n, req);
        assert_eq!(r.status, 200, "{}", m.n.log_report());
        assert_eq!(the_request(&m.origin, "/echo/body").body_str(), "<<HELLO WORLD");
        assert_eq!(r.body_str(), "<<HELLO WORLD[/pw]");
    }

    #[test]
    fn an_http_call_answer_resumes_the_request() {
        let m = matrix();
        let r = send(&m.n, conf("/call").header("x-pw-test", "http-call"));
        assert_eq!(r.status, 200, "{}", m.n.log_report());
        assert_eq!(r.header("x-pw-callout-status"), Some("200"));
        assert_eq!(r.header("x-pw-callout-body"), Some("pong /callout"));
        assert_eq!(the_request(&m.origin, "/call").header("x-pw-callout-body"), Some("pong /callout"));
        assert!(m.callout.requests().iter().any(|q| q.method == "POST" && q.header("x-pw-callout") == Some("1")));
    }

    #[test]
    fn shared_data_counts_across_requests() {
        let m = matrix();
        let key = format!("matrix.{}", BUILD.name);
        let first = send(&m.n, empty("/s1").header("x-pw-test", "shared").header("x-pw-key", key.as_str()));
        let second = send(&m.n, empty("/s2").header("x-pw-test", "shared").header("x-pw-key", key.as_str()));
        assert_eq!((first.header("x-pw-shared"), second.header("x-pw-shared")), (Some("1"), Some("2")), "{}", m.n.log_report());
    }
    }
    }

    crate::sdk_builds::for_each_as_protocol_build! {
    all {
    fn matrix() -> Arc<Matrix> {
        static SERVER: Mutex<Weak<Matrix>> = Mutex::new(Weak::new());
        let mut slot = SERVER.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = slot.upgrade() {
            return m;
        }
        let m = Arc::new(start(&format!("matrix-{}", BUILD.name), PLUGIN, ("as-filter", ""), |_| {
            (String::new(), "tag=matrix;local_path=/deny;local_status=451".to_string())
        }));
        *slot = Arc::downgrade(&m);
        m
    }

    #[test]
    fn with_an_empty_configuration_the_filter_tags_request_and_response() {
        let m = matrix();
        let r = send(&m.n, empty("/page"));
        assert_eq!(r.status, 200, "{}", m.n.log_report());
        assert_eq!(r.header("x-proxy-wasm"), Some(BUILD.tag));
        assert_eq!(r.header("x-as-config"), None);
        assert_eq!(the_request(&m.origin, "/page").header("x-as-filter"), Some(BUILD.tag));
    }

    #[test]
    fn with_an_empty_configuration_its_local_path_and_header_are_answered_locally() {
        let m = matrix();
        for req in [empty("/as-local?x=1"), empty("/other-local").header("x-as-local", "yes")] {
            let r = send(&m.n, req);
            assert_eq!(r.status, 403, "{}", m.n.log_report());
            assert_eq!(r.body_str(), "local response from as-filter\n");
            assert_eq!((r.header("x-as-local"), r.header("x-proxy-wasm"), r.header("content-type")), (Some("1"), Some(BUILD.tag), Some("text/plain")));
        }
        assert!(m.origin.requests().iter().all(|q| q.path != "/as-local?x=1" && q.path != "/other-local"));
    }

    #[test]
    fn a_non_empty_configuration_sets_tag_local_path_and_status() {
        let m = matrix();
        let r = send(&m.n, conf("/as-local"));
        assert_eq!(r.status, 200, "the default local path is proxied once reconfigured\n{}", m.n.log_report());
        assert_eq!(r.header("x-proxy-wasm"), Some("matrix"));
        assert_eq!(r.header("x-as-config"), Some("tag=matrix;local_path=/deny;local_status=451"));
        let r = send(&m.n, conf("/deny"));
        assert_eq!((r.status, r.header("x-proxy-wasm")), (451, Some("matrix")));
    }
    }
    }
}
