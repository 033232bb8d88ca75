//! The SDK conformance suite: every case of the Rust-SDK test filter, the
//! AssemblyScript filter and the SDK matrix that both servers must answer
//! the same way, written once and run on NGINX (`nginx::...`) and on Traffic
//! Server (`ats::...`) through `e2e::server::ServerUnderTest` (protocol:
//! tests/plugins/README.md; the in-memory equivalents with the expected
//! outcomes: tests/rust_sdk.rs, tests/assemblyscript.rs).
//!
//! A case that is about one server only (its log format, its variables, its
//! resolver, how it resets a stream) stays in tests/nginx_sdk.rs or
//! tests/ats_sdk.rs. Anything here that one server does differently fails
//! on that server.
//!
//! The cases that need the filter with its default configuration share one
//! server per kind (compiling the filter dominates a start-up); a case that
//! reads back what its requests left uses one kept-alive client connection
//! (on NGINX: one worker, so the order of its callbacks is obvious).
//!
//! Run with `make ats nginx && cargo test --test conformance_sdk` (and with
//! `E2E_RUNTIME=wamr`).

mod e2e;
mod sdk_builds;

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::client::{Connection, Request, Response};
use e2e::origin::{self, Origin};
use e2e::server::{Kind, ServerUnderTest, Setup};

const WAIT: Duration = Duration::from_secs(5);
const RUST: &str = "rust_sdk_filter.wasm";
const AS: &str = "as_filter.wasm";

/// A plugin YAML (one plugin in a list). `extra` is inserted at the plugin
/// level, indented by 4 (e.g. `    failure_policy: reload\n`); outgoing calls
/// are allowed everywhere.
fn plugin_yaml(
    name: &str,
    wasm: &str,
    root_id: &str,
    configuration: &str,
    vm_configuration: &str,
    extra: &str,
) -> String {
    format!(
        r#"- config:
    name: "{name}"
    root_id: "{root_id}"
    configuration: '{configuration}'
    authorizations:
      allowed_hosts: ["*"]
{extra}    vm_config:
      vm_id: "{name}_vm"
      configuration: '{vm_configuration}'
      code:
        local:
          filename: "@REPO@/build/plugins/{wasm}"
"#
    )
}

fn rust_yaml(name: &str, configuration: &str) -> String {
    plugin_yaml(name, RUST, "", configuration, "", "")
}

fn as_yaml(name: &str, root_id: &str, configuration: &str) -> String {
    plugin_yaml(name, AS, root_id, configuration, "", "")
}

fn send<S: ServerUnderTest>(s: &S, req: Request) -> Response {
    s.send(&req).unwrap_or_else(|e| panic!("{}: {e}\n{}", S::NAME, s.log_report()))
}

/// A request with `x-pw-test: <cases>`.
fn case(path: &str, cases: &str) -> Request {
    Request::get(path).header("x-pw-test", cases)
}

fn shared_value<S: ServerUnderTest>(s: &S, key: &str) -> String {
    send(s, case("/shared", "shared-get").header("x-pw-key", key)).body_str()
}

/// Polls a shared-data key until `pred` holds (ticks, queues and logs run on
/// their own); returns the last value.
fn wait_shared<S: ServerUnderTest>(s: &S, key: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = shared_value(s, key);
        if pred(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A kept-alive client connection (on NGINX every request on it meets one worker).
struct Conn<'a, S: ServerUnderTest> {
    s: &'a S,
    c: Connection,
}

impl<'a, S: ServerUnderTest> Conn<'a, S> {
    fn open(s: &'a S) -> Conn<'a, S> {
        Conn { s, c: Connection::open(s.port()).unwrap_or_else(|e| panic!("connect to {}: {e}", S::NAME)) }
    }
    fn send(&mut self, req: Request) -> Response {
        let r = self.c.send(&req).unwrap_or_else(|e| panic!("{}: {e}\n{}", S::NAME, self.s.log_report()));
        if self.c.is_closed() && S::KIND == Kind::TrafficServer {
            // A plugin of a remap rule answers at POST_REMAP, before
            // Traffic Server read the client's keep-alive (HandleRequest):
            // its error response (TSHttpTxnErrorBodySet) closes the client
            // connection. (A global plugin answers before remapping and
            // keeps it: tests/conformance_policies.rs.) It has one VM per
            // exec thread and its shared data is process-wide, so a new
            // connection reads the same values.
            self.c = Connection::open(self.s.port()).unwrap_or_else(|e| panic!("reconnect to {}: {e}", S::NAME));
        }
        assert!(
            !self.c.is_closed(),
            "{} closed the kept-alive connection after {} {}\n{}",
            S::NAME,
            req.method,
            req.path,
            self.s.log_report()
        );
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

/// An origin and a server in front of it.
struct Fixture<S> {
    origin: Origin,
    s: S,
}

/// A server with `plugins` (name, YAML) chained in order in front of `origin`.
fn start<S: ServerUnderTest>(test: &str, origin: Origin, workers: usize, plugins: &[(&str, String)]) -> Fixture<S> {
    let mut setup = Setup::new(test, origin.port()).workers(workers);
    for (name, yaml) in plugins {
        setup = setup.plugin(name, yaml.clone());
    }
    Fixture { s: S::start(setup), origin }
}

/// The filter (`rust-filter`, root id `sdk-root`, default configuration) in
/// front of [`origin::sdk_cases_origin`]; started by the first case that needs it,
/// stopped when no running case holds it. One per server kind: the
/// `static` is in each server's copy of [`for_each_server`]'s body.
fn shared_fixture<S: ServerUnderTest>(slot: &Mutex<Weak<Fixture<S>>>) -> Arc<Fixture<S>> {
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = slot.upgrade() {
        return f;
    }
    let f = Arc::new(start::<S>(
        "sdk-shared",
        origin::sdk_cases_origin(),
        2,
        &[("rust-filter", plugin_yaml("rust-filter", RUST, "sdk-root", "", "", ""))],
    ));
    *slot = Arc::downgrade(&f);
    f
}

e2e::server::for_each_server! {

fn server() -> Arc<Fixture<Server>> {
    static SERVER: Mutex<Weak<Fixture<Server>>> = Mutex::new(Weak::new());
    shared_fixture(&SERVER)
}

/// The cases that need nothing but the filter with its default configuration
/// run on one server: each uses its own paths, shared-data keys and log lines.
mod on_one_server {
    use super::*;

    #[test]
    fn the_headers_case_adds_replaces_and_removes_headers_on_both_sides() {
        let f = server();
        let r = send(&f.s, case("/h", "headers").header("x-pw-echo", "echo me").header("x-pw-remove", "x").header("x-pw-replace", "old"));
        assert_eq!(r.status, 200, "{}", f.s.log_report());
        let seen = f.origin.wait_for_path("/h", WAIT);
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
        let r = send(&f.s, case("/s?x=1", "set-headers").header("x-pw-drop-me", "1").header("x-pw-keep", "k"));
        assert_eq!(r.status, 200, "{}", f.s.log_report());
        let seen = f.origin.wait_for_path("/s?x=1", WAIT);
        assert_eq!(seen.method, "GET", "the pseudo-headers written back keep the request line");
        assert_eq!(seen.header("x-pw-set-all"), Some("1"));
        assert_eq!(seen.header("x-pw-keep"), Some("k"));
        assert!(!seen.has_header("x-pw-drop-me"), "{:?}", seen.headers);
        assert!(r.header("x-pw-set-all-count").is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n >= 6)), "{:?}", r.header("x-pw-set-all-count"));
        assert_eq!(r.header("x-pw-set-all-resp"), Some("1"));
        assert!(!r.has_header("x-pw-drop-resp"), "{:?}", r.headers);
        assert_eq!(r.header("x-pw-resp-keep"), Some("kept"));
        assert_eq!(r.body_str(), "hello from origin");
    }

    #[test]
    fn pseudo_headers_carry_method_path_with_query_authority_scheme_and_status() {
        let f = server();
        let r = send(&f.s, Request::post("/accepted?a=1&b=2", "x").header("x-pw-test", "pseudo").host("pseudo.test"));
        assert_eq!(r.status, 202, "{}", f.s.log_report());
        assert_eq!(r.header("x-pw-method"), Some("POST"));
        assert_eq!(r.header("x-pw-path"), Some("/accepted?a=1&b=2"));
        assert_eq!(r.header("x-pw-authority"), Some("pseudo.test"));
        assert_eq!(r.header("x-pw-scheme"), Some("http"));
        assert_eq!(r.header("x-pw-status"), Some("202"));
    }

    #[test]
    fn header_map_and_body_sizes_match_what_the_plugin_reads() {
        let f = server();
        let mut c = Conn::open(&f.s);
        let r = c.send(Request::post("/echo/sizes", vec![b's'; 1000]).chunked(300).header("x-pw-test", "sizes"));
        assert_eq!(r.status, 200, "{}", f.s.log_report());
        let size = r.header("x-pw-req-header-map-size").expect("x-pw-req-header-map-size");
        assert_eq!(Some(size), r.header("x-pw-req-header-map-size-expected").map(|m| format!("OK {m}")).as_deref());
        assert_eq!(r.header("x-pw-header-map-size-bad-type"), Some("BAD_ARGUMENT"));
        assert_eq!(r.header("x-pw-buffer-status-bad-type"), Some("BAD_ARGUMENT"));
        assert_eq!(r.header("x-pw-req-body-buffer-status"), Some("OK 1000"));
        assert_eq!(r.header("x-pw-req-body-size-param"), Some("1000"));
        let size = r.header("x-pw-resp-header-map-size").expect("x-pw-resp-header-map-size");
        assert_eq!(Some(size), r.header("x-pw-resp-header-map-size-expected").map(|m| format!("OK {m}")).as_deref());
        assert_eq!(r.body.len(), 1000);
        assert_eq!(c.wait_shared("resp.body.buffer_status", |v| v == "OK 1000"), "OK 1000");
    }

    #[test]
    fn the_response_body_buffer_status_at_end_of_stream_is_the_whole_body() {
        let f = server();
        let mut c = Conn::open(&f.s);
        let r = c.send(Request::post("/echo/sizes-resp", vec![b's'; 1000]).header("x-pw-test", "sizes"));
        assert_eq!(r.status, 200, "{}", f.s.log_report());
        assert_eq!(c.wait_shared("resp.body.buffer_status", |v| v == "OK 1000"), "OK 1000");
    }

    #[test]
    fn a_request_without_a_test_case_passes_unmodified_and_unknown_cases_are_reported() {
        let f = server();
        let r = send(&f.s, Request::post("/echo/plain", "untouched").header("x-other", "1"));
        assert_eq!((r.status, r.body_str().as_str(), r.header("x-proxy-wasm")), (200, "untouched", Some("rust-sdk")));
        let seen = f.origin.wait_for_path("/echo/plain", WAIT);
        assert_eq!(seen.body_str(), "untouched");
        assert_eq!(seen.header("x-other"), Some("1"));
        assert!(!seen.headers.iter().any(|(k, _)| k.to_ascii_lowercase().starts_with("x-pw-")), "{:?}", seen.headers);
        let r = send(&f.s, case("/u", "no-such-case, Time"));
        assert_eq!(r.header_all("x-pw-unknown-case"), vec!["no-such-case"]);
        assert_eq!(r.header("x-pw-time-sane"), Some("true"), "case names are case-insensitive");
    }

    #[test]
    fn a_local_response_carries_the_report_headers_collected_before_it() {
        let f = server();
        let r = send(&f.s, case("/local?q=1", "properties, local"));
        assert_eq!(r.status, 403, "{}", f.s.log_report());
        assert_eq!(r.body_str(), "denied by rust-sdk-filter");
        assert_eq!(r.header("x-pw-local"), Some("request-headers"));
        assert_eq!(r.header("x-proxy-wasm"), Some("rust-sdk"));
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("x-pw-prop-request-path"), Some("/local?q=1"), "{:?}", r.headers);
        std::thread::sleep(Duration::from_millis(200));
        assert!(!f.origin.requests().iter().any(|r| r.path.starts_with("/local")), "the origin is not contacted");
    }

    #[test]
    fn a_local_response_from_the_request_body_answers_after_the_whole_body() {
        let f = server();
        let r = send(&f.s, Request::post("/echo/lb", vec![b'b'; 5000]).chunked(1000).header("x-pw-test", "local-req-body").header("x-pw-local-status", "413"));
        assert_eq!(r.status, 413, "{}", f.s.log_report());
        assert_eq!(r.body_str(), "request body had 5000 bytes");
        assert_eq!(r.header("x-pw-local"), Some("request-body"));
        assert_eq!(r.header("x-proxy-wasm"), Some("rust-sdk"));
        // The server holds the request until the body went through the
        // plugins: the origin never sees it.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!f.origin.requests().iter().any(|r| r.path == "/echo/lb"), "the origin is not contacted");
        // Without a body nothing happens.
        let r = send(&f.s, case("/nobody", "local-req-body"));
        assert_eq!((r.status, r.body_str().as_str()), (200, "hello from origin"));
    }

    #[test]
    fn a_local_response_from_response_headers_replaces_the_origin_response() {
        let f = server();
        let r = send(&f.s, case("/lrh", "local-resp-headers").header("x-pw-local-status", "451"));
        assert_eq!(r.status, 451, "{}", f.s.log_report());
        assert_eq!(r.body_str(), "replaced response by rust-sdk-filter");
        assert_eq!(r.header("x-pw-local"), Some("response-headers"));
        f.origin.wait_for_path("/lrh", WAIT);
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
                let r = send(&f.s, req);
                assert_eq!(r.status, 200, "{cases} chunked={chunked}\n{}", f.s.log_report());
                let seen = f.origin.wait_for_path(&path, WAIT);
                assert_eq!(seen.body_str(), *expected, "{cases} chunked={chunked}");
                assert_eq!(r.body_str(), *expected, "{cases} chunked={chunked}: the origin echoes");
                assert!(!(seen.has_header("content-length") && seen.has_header("transfer-encoding")), "{cases} chunked={chunked}: never both {:?}", seen.headers);
                if let Some(len) = seen.header("content-length") {
                    assert_eq!(len, expected.len().to_string(), "{cases} chunked={chunked}: framing matches the edited body");
                }
            }
        }
        // upper keeps the length, and the content-length with it.
        send(&f.s, Request::post("/echo/cl", "hello world").header("x-pw-test", "req-body-upper"));
        assert_eq!(f.origin.wait_for_path("/echo/cl", WAIT).header("content-length"), Some("11"));
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
            let r = send(&f.s, req);
            assert_eq!((r.status, r.body_str().as_str()), (200, expected), "{cases}\n{}", f.s.log_report());
        }
    }

    #[test]
    fn body_callbacks_see_end_of_stream_exactly_once_in_both_directions() {
        let f = server();
        let mut c = Conn::open(&f.s);
        let r = c.send(Request::post("/echo/info", vec![b'i'; 30_000]).chunked(1000).header("x-pw-test", "body-info"));
        assert_eq!(r.status, 200, "{}", f.s.log_report());
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
    fn concurrent_shared_data_increments_produce_distinct_consecutive_values() {
        let f = server();
        let port = f.s.port();
        // The first increment creates the key with CAS 0, which (as on Envoy)
        // overwrites unconditionally: two racing creators would both write 1.
        // Created first, every later increment is a CAS on an existing key.
        let first = send(&f.s, case("/s/first", "shared").header("x-pw-key", "ctr"));
        assert_eq!(first.header("x-pw-shared"), Some("1"));
        let handles: Vec<_> = (0..40)
            .map(|i| std::thread::spawn(move || case(&format!("/s/{i}"), "shared").header("x-pw-key", "ctr").send(port)))
            .collect();
        let mut seen: Vec<u32> = handles
            .into_iter()
            .map(|h| {
                let r = h.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(r.status, 200);
                r.header("x-pw-shared").expect("x-pw-shared").parse().unwrap()
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (2..=41).collect::<Vec<u32>>());
        assert_eq!(shared_value(&f.s, "ctr"), "41");
    }

    #[test]
    fn shared_data_increments_and_cas_over_one_connection() {
        let f = server();
        let mut c = Conn::open(&f.s);
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
    fn shared_data_cas_refuses_a_stale_version_and_set_and_get_work_over_http() {
        let f = server();
        let mut c = Conn::open(&f.s);
        // The case's own key.
        let r = c.send(case("/cas", "shared-cas"));
        assert_eq!(r.header("x-pw-cas-first"), Some("OK"), "{:?}", r.headers);
        assert_eq!(r.header("x-pw-cas-stale"), Some("CAS_MISMATCH"));
        assert_eq!(r.header("x-pw-cas-final"), Some("first"));
        // Missing key: 404.
        let r = c.send(case("/g", "shared-get").header("x-pw-key", "sdk.k1"));
        assert_eq!((r.status, r.body_str().as_str(), r.header("x-pw-shared-cas")), (404, "(none)", Some("(none)")));
        // Set unconditionally, read back with its cas.
        let r = c.send(case("/s", "shared-set").header("x-pw-key", "sdk.k1").header("x-pw-value", "v1"));
        assert_eq!((r.status, r.body_str().as_str()), (200, "OK"));
        let r = c.send(case("/g", "shared-get").header("x-pw-key", "sdk.k1"));
        assert_eq!((r.status, r.body_str().as_str(), r.header("x-pw-shared-value")), (200, "v1", Some("v1")));
        let cas = r.header("x-pw-shared-cas").unwrap().to_string();
        // Set with the current cas, then again with the same (now stale) cas.
        let r = c.send(case("/s", "shared-set").header("x-pw-key", "sdk.k1").header("x-pw-value", "v2").header("x-pw-cas", &cas));
        assert_eq!(r.status, 200);
        let r = c.send(case("/s", "shared-set").header("x-pw-key", "sdk.k1").header("x-pw-value", "v3").header("x-pw-cas", &cas));
        assert_eq!((r.status, r.body_str().as_str(), r.header("x-pw-shared-set")), (409, "CAS_MISMATCH", Some("CAS_MISMATCH")));
        assert_eq!(c.shared("sdk.k1"), "v2");
    }

    #[test]
    fn enqueue_resolves_the_queue_registered_in_on_configure_and_on_queue_ready_drains_it() {
        let f = server();
        let mut c = Conn::open(&f.s);
        let before: u64 = c.shared("queue.count").parse().unwrap_or(0);
        for i in 0..3 {
            let r = c.send(case("/q", "enqueue").header("x-pw-queue-value", format!("item-{i}")));
            assert_eq!(r.header("x-pw-queue-resolve"), Some("OK"), "{}", f.s.log_report());
            assert_eq!(r.header("x-pw-queue-resolve-same-id"), Some("true"));
            assert_eq!(r.header("x-pw-enqueue"), Some("OK"));
        }
        let want = (before + 3).to_string();
        assert_eq!(c.wait_shared("queue.count", |v| v.parse::<u64>().unwrap_or(0) >= before + 3), want, "{}", f.s.log_report());
        assert_eq!(c.shared("queue.last"), "item-2");
    }

    #[test]
    fn metric_hostcalls_report_counter_gauge_histogram_and_errors() {
        let f = server();
        let mut c = Conn::open(&f.s);
        let r = c.send(case("/m", "metrics").header("x-pw-metric-value", "10"));
        let first: u64 = r.header("x-pw-metric-counter").expect("counter").parse().unwrap();
        assert_eq!(first, 1, "{:?}", r.headers);
        let r = c.send(case("/m", "metrics").header("x-pw-metric-value", "10"));
        assert_eq!(r.header("x-pw-metric-ops"), Some("OK OK OK OK"), "{:?}", r.headers);
        assert_eq!(r.header("x-pw-metric-counter-negative"), Some("BAD_ARGUMENT"));
        let second: u64 = r.header("x-pw-metric-counter").unwrap().parse().unwrap();
        assert_eq!(second, 2, "one counter for every instance of the plugin");
        assert_eq!(r.header("x-pw-metric-gauge"), Some("9"));
        assert_eq!(r.header("x-pw-metric-histogram"), Some("BAD_ARGUMENT"));
        assert_eq!(r.header("x-pw-metric-unknown"), Some("NOT_FOUND"));
        assert_eq!(r.header("x-pw-metric-redefine-same-id"), Some("true"));
    }

    /// The value the filter reported for property `path` in report header
    /// `name` (`x-pw-prop-req` / `x-pw-prop-resp`: `<path>=<rendered value>`).
    fn prop<'a>(r: &'a Response, name: &str, path: &str) -> &'a str {
        let prefix = format!("{path}=");
        r.header_all(name)
            .into_iter()
            .find_map(|v| v.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("{name} has no {path}: {:?}", r.header_all(name)))
    }

    /// An 8-byte integer property (Envoy's integers, timestamps, durations).
    fn int(rendered: &str) -> i64 {
        rendered.rsplit_once(" int=").unwrap_or_else(|| panic!("not 8 bytes: {rendered:?}")).1.parse().unwrap()
    }

    const ENVOY_PATHS: &str = "request.path, request.url_path, request.query, request.host, request.scheme, request.method, \
        request.referer, request.useragent, request.id, request.protocol, request.time, request.duration, request.size, \
        request.total_size, request.headers.x-request-id, response.code, response.code_details, response.headers.x-pw-resp-keep, \
        response.size, response.total_size, source.address, source.port, destination.address, destination.port, connection.id, \
        connection.mtls, upstream.address, upstream.port, plugin_name, plugin_root_id, plugin_vm_id";

    #[test]
    fn envoy_property_paths_have_envoy_values_in_request_response_and_log_phases() {
        let f = server();
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
        let req = Request::post("/pp/a?b=1", "12345")
            .host("props.test")
            .header("x-pw-test", "properties")
            .header("x-pw-prop-paths", ENVOY_PATHS)
            .header("x-request-id", "rid-1")
            .header("user-agent", "ua/1")
            .header("referer", "http://ref.test/");
        let r = send(&f.s, req);
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
        assert_eq!(r.status, 200, "{}", f.s.log_report());
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
        ] {
            // An 8-byte text ("HTTP/1.1") is also shown as an integer.
            assert_eq!(q(path).split(" int=").next(), Some(want), "{path}");
        }
        let time = int(q("request.time"));
        assert!(before - 1_000_000_000 <= time && time <= after, "request.time {before} <= {time} <= {after}");
        assert_eq!(int(q("request.size")), 5);
        let source = q("source.address");
        assert!(source.starts_with("127.0.0.1:"), "{source}");
        assert_eq!(source.rsplit(':').next().unwrap(), int(q("source.port")).to_string());
        assert_eq!(q("destination.address"), format!("127.0.0.1:{}", f.s.port()));
        assert_eq!(int(q("destination.port")), f.s.port() as i64);
        assert!(int(q("connection.id")) >= 0);
        // The response phase.
        let p = |path| prop(&r, "x-pw-prop-resp", path);
        assert_eq!(int(p("response.code")), 200);
        assert_eq!(p("response.headers.x-pw-resp-keep"), "kept");
        // The log phase (after the response).
        let logged = |path: &str| {
            let key = format!("log.prop.{path}");
            let v = wait_shared(&f.s, &key, |v| v != "(none)");
            v.strip_prefix(&format!("{path}=")).unwrap_or_else(|| panic!("{key}: {v}")).to_string()
        };
        assert_eq!(int(&logged("response.code")), 200);
        // Durations, sizes, code details and the upstream: both servers answer them.
        assert!(int(q("request.duration")) >= 0);
        assert_eq!(q("connection.mtls").rsplit_once(" bool=").map(|(_, b)| b), Some("false"));
        assert_eq!(p("response.code_details"), "via_upstream");
        assert_eq!(p("upstream.address"), format!("127.0.0.1:{}", f.origin.port()));
        assert_eq!(int(p("upstream.port")), f.origin.port() as i64);
        // Sizes of what was sent.
        assert_eq!(int(&logged("response.size")), 17);
        assert!(int(&logged("response.total_size")) > 17 + 20);
        assert!(int(&logged("request.total_size")) > 5 + 20);
        // request.protocol is the client's.
        let r = send(&f.s, case("/pp/old", "properties").header("x-pw-prop-paths", "request.protocol").version("HTTP/1.0"));
        assert_eq!(prop(&r, "x-pw-prop-req", "request.protocol").split(" int=").next(), Some("HTTP/1.0"));
    }

    #[test]
    fn properties_answer_request_source_plugin_and_response_values_and_set_property_round_trips() {
        let f = server();
        let r = send(&f.s, case("/p/x?y=2", "properties").header("x-pw-prop", "pv").header("x-pw-prop-value", "rt-value"));
        assert_eq!(r.status, 200, "{}", f.s.log_report());
        assert_eq!(r.header("x-pw-prop-request-path"), Some("/p/x?y=2"));
        assert_eq!(r.header("x-pw-prop-request-path-nul"), Some("/p/x?y=2"));
        assert_eq!(r.header("x-pw-prop-request-method"), Some("GET"));
        assert_eq!(r.header("x-pw-prop-header"), Some("pv"));
        let address = r.header("x-pw-prop-source-address").unwrap();
        let port = r.header("x-pw-prop-source-port").unwrap();
        assert!(address.starts_with("127.0.0.1:"), "{address}");
        assert_eq!(address.rsplit(':').next(), Some(port), "source.port (an 8-byte integer) is the port of source.address");
        assert_eq!(r.header("x-pw-prop-plugin-name"), Some("rust-filter"));
        assert_eq!(r.header("x-pw-prop-plugin-root-id"), Some("sdk-root"));
        assert_eq!(r.header("x-pw-prop-plugin-vm-id"), Some("rust-filter_vm"));
        assert_eq!(r.header("x-pw-prop-missing"), Some("(none)"));
        assert_eq!(r.header("x-pw-prop-roundtrip"), Some("rt-value"));
        assert_eq!(r.header("x-pw-prop-response-code"), Some("200"));
        let r = send(&f.s, case("/p", "properties"));
        assert_eq!(r.header("x-pw-prop-roundtrip"), Some("round-trip"), "a value set by one stream does not leak into the next");
        // A repeated header reads as its values joined with "," (as its
        // header map value does).
        let r = send(&f.s, case("/p/dup", "properties").header("x-pw-prop", "one").header("x-pw-prop", "two").header("user-agent", "pw-agent/1").header("x-pw-prop-paths", "request.useragent"));
        assert_eq!(r.header("x-pw-prop-header"), Some("one,two"));
        assert_eq!(r.header("x-pw-prop-req"), Some("request.useragent=pw-agent/1"));
        // The root context (on_configure) has the plugin's identity but no request.
        assert_eq!(shared_value(&f.s, "root.request.path"), "(none)");
        assert_eq!(shared_value(&f.s, "root.plugin_name"), "rust-filter");
        assert_eq!(shared_value(&f.s, "root.plugin_root_id"), "sdk-root");
        assert_eq!(shared_value(&f.s, "root.plugin_vm_id"), "rust-filter_vm");
    }

    #[test]
    fn the_current_time_is_nanoseconds_since_the_epoch() {
        let f = server();
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let r = send(&f.s, case("/t", "time"));
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let ns: u128 = r.header("x-pw-time-ns").expect("x-pw-time-ns").parse().unwrap();
        assert!(before <= ns && ns <= after, "{before} <= {ns} <= {after}");
        assert_eq!(r.header("x-pw-time-sane"), Some("true"));
    }

    #[test]
    fn set_effective_context_accepts_live_ids_and_refuses_unknown_ones() {
        let f = server();
        let r = send(&f.s, case("/e", "effective-context"));
        assert_eq!(r.header("x-pw-effective-self"), Some("OK"), "{:?}", r.headers);
        assert_eq!(r.header("x-pw-effective-bogus"), Some("BAD_ARGUMENT"));
        assert_eq!(r.header("x-pw-effective-restore"), Some("OK"));
    }

    #[test]
    fn foreign_functions_unknown_to_the_server_are_not_found() {
        let f = server();
        let r = send(&f.s, case("/f", "foreign").header("x-pw-foreign-name", "echo"));
        assert_eq!(r.status, 200, "{}", f.s.log_report());
        assert_eq!(r.header("x-pw-foreign-status"), Some("NOT_FOUND"));
        assert_eq!(r.header("x-pw-foreign-result"), Some("(none)"));
    }

    #[test]
    fn grpc_hostcalls_answer_unimplemented_without_trapping() {
        let f = server();
        let r = send(&f.s, case("/g", "grpc"));
        assert_eq!(r.status, 200, "{}", f.s.log_report());
        for name in ["x-pw-grpc-call", "x-pw-grpc-stream", "x-pw-grpc-close-unknown", "x-pw-grpc-cancel-unknown", "x-pw-grpc-send-unknown"] {
            assert_eq!(r.header(name), Some("UNIMPLEMENTED"), "{name}");
        }
        for name in ["x-pw-grpc-call-cancel", "x-pw-grpc-send", "x-pw-grpc-stream-cancel"] {
            assert_eq!(r.header(name), Some("skipped"), "{name}");
        }
    }

    #[test]
    fn the_config_case_reports_the_default_configuration_and_context_ids() {
        let f = server();
        let r = send(&f.s, case("/cfg", "config"));
        assert_eq!(r.header("x-pw-config-tag"), Some("rust-sdk"), "{:?}", r.headers);
        assert_eq!(r.header("x-pw-config-size"), Some("0"));
        assert_eq!(r.header("x-pw-config-queue"), Some("q1"));
        assert!(r.header("x-pw-context-id").is_some_and(|id| id != "(none)"));
        assert_eq!(r.header("x-pw-root-context-id"), Some("1"));
    }

    #[test]
    fn resume_in_body_without_a_body_does_not_pause() {
        let f = server();
        let r = send(&f.s, case("/nb", "resume-in-body"));
        assert_eq!((r.status, r.header("x-pw-resume-in-body")), (200, Some("no-body")), "{}", f.s.log_report());
        f.origin.wait_for_path("/nb", WAIT);
    }

    #[test]
    fn continue_inside_on_request_headers_that_then_pauses_is_applied_after_the_callback() {
        let f = server();
        let r = send(&f.s, case("/rr", "resume-reentrant").timeout(Duration::from_secs(5)));
        assert_eq!((r.status, r.header("x-pw-resume-reentrant")), (200, Some("1")), "{}", f.s.log_report());
        f.origin.wait_for_path("/rr", WAIT);
        let r = send(&f.s, case("/rrr", "resume-response-reentrant").timeout(Duration::from_secs(5)));
        assert_eq!((r.status, r.header("x-pw-resume-response-reentrant")), (200, Some("1")), "{}", f.s.log_report());
        assert_eq!(r.body_str(), "hello from origin");
    }
}

// ------------------------------------------------------------------ bodies

#[test]
fn response_body_edits_reach_the_client_from_a_plain_and_a_chunked_origin() {
    let origin = Origin::with_handler(|req| {
        let r = origin::Response::text(200, "hello from origin");
        if req.path_only().starts_with("/chunked") {
            r.chunked(3)
        } else {
            r
        }
    });
    let f = start::<Server>("sdk-resp-body", origin, 2, &[("rust-filter", rust_yaml("rust-filter", ""))]);
    let cases: &[(&str, &[(&str, &str)], &str)] = &[
        ("resp-body-upper", &[], "HELLO FROM ORIGIN"),
        ("resp-body-prefix", &[], "[pw]hello from origin"),
        ("resp-body-append", &[], "hello from origin[/pw]"),
        ("resp-body-replace", &[], "replaced by rust-sdk-filter"),
        ("resp-body-replace", &[("x-pw-replace-resp-body", "new response")], "new response"),
        ("resp-body-splice", &[], "h--lo from origin"),
        ("resp-body-upper resp-body-splice resp-body-prefix resp-body-append", &[], "[pw]H--LO FROM ORIGIN[/pw]"),
    ];
    let mut c = Conn::open(&f.s);
    for (cases, params, expected) in cases {
        for path in ["/plain", "/chunked"] {
            let mut req = case(path, cases);
            for (k, v) in params.iter() {
                req = req.header(*k, *v);
            }
            let r = c.send(req);
            assert_eq!(r.status, 200, "{cases} {path}\n{}", f.s.log_report());
            assert_eq!(r.body_str(), *expected, "{cases} {path}");
            if let Some(len) = r.header("content-length") {
                assert_eq!(len, expected.len().to_string(), "{cases} {path}: framing matches the edited body");
            }
        }
    }
    // At the end of the response body: eos seen once, with the whole body.
    let info = c.wait_shared("resp.body.info", |v| v.contains("eos=1"));
    assert!(info.starts_with("calls=") && info.ends_with("eos=1 size=17"), "{info}");
}

#[test]
fn a_content_length_the_plugin_keeps_is_fixed_by_the_host_after_a_length_changing_edit() {
    let f = start::<Server>("sdk-keep-cl", origin::sdk_cases_origin(), 2, &[("rust-filter", rust_yaml("rust-filter", ""))]);
    let r = send(&f.s, Request::post("/echo/keep", "hello world").header("x-pw-test", "req-body-prefix, resp-body-append").header("x-pw-keep-content-length", "1"));
    assert_eq!(r.status, 200, "{}", f.s.log_report());
    let seen = f.origin.wait_for_path("/echo/keep", WAIT);
    assert_eq!(seen.body_str(), "[pw]hello world");
    if let Some(len) = seen.header("content-length") {
        assert_eq!(len, "15");
    }
    assert_eq!(r.body_str(), "[pw]hello world[/pw]");
    if let Some(len) = r.header("content-length") {
        assert_eq!(len, "20");
    }
}

// ------------------------------------------------------------------ configuration, ticks

#[test]
fn the_config_case_reports_plugin_and_vm_configuration_and_context_ids() {
    let config = r#"{"tag":"cfg","upstream":"10.0.0.1:80","queue":"cq","tick_ms":0}"#;
    let yaml = plugin_yaml("cfg-plugin", RUST, "", config, "vm-cfg", "");
    let f = start::<Server>("sdk-config", Origin::start(), 1, &[("cfg-plugin", yaml)]);
    let r = send(&f.s, case("/c", "config"));
    assert_eq!(r.header("x-pw-config-tag"), Some("cfg"), "{:?}", r.headers);
    assert_eq!(r.header("x-proxy-wasm"), Some("cfg"));
    assert_eq!(r.header("x-pw-config-upstream"), Some("10.0.0.1:80"));
    assert_eq!(r.header("x-pw-config-authority"), Some("10.0.0.1:80"));
    assert_eq!(r.header("x-pw-config-tick-ms"), Some("0"));
    assert_eq!(r.header("x-pw-config-queue"), Some("cq"));
    assert_eq!(r.header("x-pw-config-size"), Some(config.len().to_string().as_str()));
    assert_eq!(r.header("x-pw-vm-config"), Some("vm-cfg"));
    let ctx: u32 = r.header("x-pw-context-id").unwrap().parse().unwrap();
    let root: u32 = r.header("x-pw-root-context-id").unwrap().parse().unwrap();
    assert_ne!(ctx, root);
    assert!(r.header("x-pw-queue-id").unwrap().parse::<u32>().is_ok());
    // What on_vm_start and on_configure stored.
    assert_eq!(shared_value(&f.s, "vm.config"), "vm-cfg");
    assert_eq!(shared_value(&f.s, "vm.config.size"), "6 OK 6");
    assert_eq!(shared_value(&f.s, "config.size"), format!("{0} OK {0}", config.len()));
    // Empty ("" on success): the SDK reads an empty value as absent.
    assert_eq!(shared_value(&f.s, "config.error"), "(none)");
    assert_eq!(shared_value(&f.s, "config.tag"), "cfg");
}

#[test]
fn a_request_paused_in_on_request_headers_resumes_from_on_queue_ready() {
    // One worker (one exec thread): on Traffic Server on_queue_ready runs in
    // one thread's instance of the plugin, which must be the one holding the
    // paused request (tests/ats.rs has the same case).
    let f = start::<Server>("sdk-queue-resume", Origin::start(), 1, &[("rust-filter", rust_yaml("rust-filter", ""))]);
    let r = send(&f.s, case("/qr", "queue-resume"));
    assert_eq!(r.status, 200, "{}", f.s.log_report());
    assert_eq!(r.header("x-pw-enqueue"), Some("OK"));
    assert_eq!(r.header("x-pw-resumed-by"), Some("queue"));
    assert_eq!(f.origin.wait_for_path("/qr", WAIT).header("x-pw-resumed-by"), Some("queue"));
}

#[test]
fn a_deferred_on_done_is_completed_by_proxy_done_from_on_tick() {
    let f = start::<Server>("sdk-defer-done", Origin::start(), 1, &[("rust-filter", rust_yaml("rust-filter", r#"{"tick_ms":50}"#))]);
    let r = send(&f.s, case("/deferred", "defer-done"));
    assert_eq!(r.status, 200, "{}", f.s.log_report());
    // on_done returned false when the stream ended; the next tick called proxy_done for it.
    assert_eq!(wait_shared(&f.s, "done.deferred", |v| v == "OK"), "OK", "{}", f.s.log_report());
    assert_eq!(wait_shared(&f.s, "done.deferred.count", |v| v == "1"), "1");
    // (That on_log and on_delete wait for proxy_done is checked in memory:
    // tests/rust_sdk.rs, defer_done_delays_on_log_and_on_delete_until_proxy_done.)
    assert!(!f.s.logs().contains("trapped"), "{}", f.s.log_report());
    assert_eq!(send(&f.s, Request::get("/after")).status, 200, "the server keeps serving");
    f.s.assert_running();
}

#[test]
fn on_tick_may_dispatch_http_calls_whose_answers_reach_the_root_context() {
    let callout = Origin::with_handler(|req| origin::Response::text(200, format!("pong {}", req.path)).header("x-callout", "yes"));
    let config = format!(r#"{{"upstream":"127.0.0.1:{}","authority":"callout.test","callout_timeout_ms":3000,"tick_ms":100,"tick_http_call":true}}"#, callout.port());
    let f = start::<Server>("sdk-tick-callout", Origin::start(), 1, &[("rust-filter", rust_yaml("rust-filter", &config))]);
    assert_eq!(send(&f.s, Request::get("/start")).status, 200);
    assert_eq!(wait_shared(&f.s, "tick.callout", |v| v == "200"), "200", "{}", f.s.log_report());
    let seen = callout.wait_for_requests(1, WAIT);
    assert_eq!((seen[0].method.as_str(), seen[0].path.as_str(), seen[0].header("x-pw-tick")), ("GET", "/callout", Some("1")));
    assert!(callout.requests().iter().any(|r| r.header("x-pw-tick") == Some("1")));
    assert!(wait_shared(&f.s, "tick.callout.count", |v| v.parse::<u32>().is_ok_and(|n| n >= 1)).parse::<u32>().is_ok());
}

// ------------------------------------------------------------------ failures

#[test]
fn a_trap_answers_503_and_under_failure_policy_reload_the_next_request_is_served() {
    let yaml = plugin_yaml("trapper", RUST, "", "", "", "    failure_policy: reload\n");
    let f = start::<Server>("sdk-panic", Origin::start(), 1, &[("trapper", yaml)]);
    let r = send(&f.s, case("/boom", "panic"));
    assert_eq!(r.status, 503, "{}", f.s.log_report());
    f.s.expect_log("proxy_on_request_headers trapped", WAIT);
    assert!(f.s.logs().contains("rust-sdk-filter: panic requested by x-pw-test"), "the SDK's panic message is logged\n{}", f.s.log_report());
    let r = send(&f.s, Request::get("/after"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")), "{}", f.s.log_report());
    assert_eq!(f.origin.requests().iter().map(|r| r.path.as_str()).collect::<Vec<_>>(), vec!["/after"]);
    f.s.assert_running();
}

// ------------------------------------------------------------------ AssemblyScript SDK, chains

#[test]
fn the_assemblyscript_filter_tags_request_and_response_and_answers_its_local_path() {
    let f = start::<Server>("sdk-as", Origin::start(), 2, &[("as", as_yaml("as", "", ""))]);
    let r = send(&f.s, Request::get("/page"));
    assert_eq!(r.status, 200, "{}", f.s.log_report());
    assert_eq!(r.header("x-proxy-wasm"), Some("assemblyscript"));
    assert_eq!(r.header("x-as-config"), None);
    assert_eq!(f.origin.wait_for_path("/page", WAIT).header("x-as-filter"), Some("assemblyscript"));
    for req in [Request::get("/as-local"), Request::get("/as-local?x=1"), Request::get("/other").header("x-as-local", "yes")] {
        let r = send(&f.s, req);
        assert_eq!(r.status, 403, "{}", f.s.log_report());
        assert_eq!(r.body_str(), "local response from as-filter\n");
        assert_eq!((r.header("x-as-local"), r.header("x-proxy-wasm"), r.header("content-type")), (Some("1"), Some("assemblyscript"), Some("text/plain")));
    }
    assert_eq!(f.origin.request_count(), 1, "local responses never reach the origin");
}

#[test]
fn the_assemblyscript_filter_uses_its_configuration_and_the_as_filter_root_id() {
    let yaml = as_yaml("as-cfg", "as-filter", "tag=as-test;local_path=/deny;local_status=451");
    let f = start::<Server>("sdk-as-cfg", Origin::start(), 2, &[("as-cfg", yaml)]);
    let r = send(&f.s, Request::get("/as-local"));
    assert_eq!(r.status, 200, "the default local path is proxied once reconfigured\n{}", f.s.log_report());
    assert_eq!(r.header("x-proxy-wasm"), Some("as-test"));
    assert_eq!(r.header("x-as-config"), Some("tag=as-test;local_path=/deny;local_status=451"));
    assert_eq!(f.origin.wait_for_path("/as-local", WAIT).header("x-as-filter"), Some("as-test"));
    let r = send(&f.s, Request::get("/deny"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (451, Some("as-test")));
    assert_eq!(f.origin.request_count(), 1);
}

/// Issue 12: an empty `configuration` starts the filter with its defaults
/// (also under a root id, which the SDK reads before `proxy_on_configure`).
#[test]
fn the_assemblyscript_filter_with_an_empty_configuration_starts_with_its_defaults() {
    let f = start::<Server>("sdk-as-empty", Origin::start(), 1, &[("as-empty", as_yaml("as-empty", "as-filter", ""))]);
    let r = send(&f.s, Request::get("/page"));
    assert_eq!((r.status, r.header("x-proxy-wasm"), r.header("x-as-config")), (200, Some("assemblyscript"), None), "{}", f.s.log_report());
    assert_eq!(f.origin.wait_for_path("/page", WAIT).header("x-as-filter"), Some("assemblyscript"));
    assert!(!f.s.logs().contains("trapped"), "{}", f.s.log_report());
}

/// Issue 12: a filter on the AssemblyScript SDK's own `onConfigure` (which
/// passes the configuration size where the size pointer belongs) starts with
/// an empty configuration.
#[test]
fn an_assemblyscript_filter_on_the_sdk_s_own_on_configure_starts_with_an_empty_configuration() {
    let f = start::<Server>("sdk-as-sdk-configure", Origin::start(), 1, &[("as-sdk-configure", as_yaml("as-sdk-configure", "sdk-configure", ""))]);
    let r = send(&f.s, Request::get("/page"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("sdk-configure")), "{}", f.s.log_report());
    assert!(!f.s.logs().contains("trapped"), "{}", f.s.log_report());
}

#[test]
fn a_chain_of_three_plugins_runs_request_callbacks_in_order_and_response_callbacks_in_reverse() {
    let plugins = [("one", as_yaml("one", "", "tag=one")), ("two", rust_yaml("two", r#"{"tag":"two"}"#)), ("three", as_yaml("three", "", "tag=three"))];
    let f = start::<Server>("sdk-chain", Origin::start(), 2, &plugins);
    let r = send(&f.s, case("/chain", "headers"));
    assert_eq!(r.status, 200, "{}", f.s.log_report());
    let seen = f.origin.wait_for_path("/chain", WAIT);
    // Request: one, then two, then three, each seeing what the earlier ones added.
    assert_eq!(seen.header_all("x-as-filter"), vec!["one", "three"]);
    assert_eq!(seen.header("x-pw-added"), Some("1"));
    // Response: three, then two, then one.
    assert_eq!(r.header_all("x-proxy-wasm"), vec!["three", "two", "one"], "{:?}", r.headers);
    // A local response from the first stops the chain: two and three never see the request.
    let r = send(&f.s, Request::get("/as-local").header("x-pw-test", "headers"));
    assert_eq!((r.status, r.header("x-as-local")), (403, Some("1")));
    assert_eq!(f.origin.request_count(), 1);
}

#[test]
fn bodies_go_through_a_chain_in_order_on_the_way_in_and_in_reverse_on_the_way_out() {
    let plugins = [
        ("first", rust_yaml("first", r#"{"tag":"first","prefix":"<1>","suffix":"</1>"}"#)),
        ("second", rust_yaml("second", r#"{"tag":"second","prefix":"<2>","suffix":"</2>"}"#)),
    ];
    let f = start::<Server>("sdk-chain-bodies", origin::sdk_cases_origin(), 2, &plugins);
    let r = send(&f.s, Request::post("/echo/chain", "body").chunked(2).header("x-pw-test", "req-body-prefix, resp-body-append"));
    assert_eq!(r.status, 200, "{}", f.s.log_report());
    // first prepends, then second prepends to what first made.
    assert_eq!(f.origin.wait_for_path("/echo/chain", WAIT).body_str(), "<2><1>body");
    // The response: second appends first, then first.
    assert_eq!(r.body_str(), "<2><1>body</2></1>");
    assert_eq!(r.header_all("x-proxy-wasm"), vec!["second", "first"]);
}

// ------------------------------------------------------------------ the SDK matrix

/// Every build of the test filters (tests/sdk_builds: each Rust SDK release,
/// each AssemblyScript SDK release, the C filter): a representative subset
/// of the cases above, each build with an empty and a non-empty
/// configuration. One server (one worker) per build, with the build as two
/// plugins: `empty` (configuration empty) for the host `empty.test`, `conf`
/// (configuration non-empty, callouts to a second origin) for the host
/// `conf.test`. The empty rule's as-filter plugin has root_id `as-filter`
/// (with the SDK 0.1.8 build this is issue 12's empty-configuration trap).
mod sdk_matrix {
    use super::*;

    pub struct Matrix {
        pub origin: Origin,
        pub callout: Origin,
        pub s: Server,
    }

    pub fn start(test: &str, wasm: &str, empty: (&str, &str), conf: impl FnOnce(u16) -> (String, String)) -> Matrix {
        let origin = origin::sdk_cases_origin();
        let callout = Origin::with_handler(|req| origin::Response::text(200, format!("pong {}", req.path)).header("x-callout", "yes"));
        let (conf_root_id, conf_configuration) = conf(callout.port());
        let setup = Setup::new(test, origin.port())
            .workers(1)
            .plugin("empty", plugin_yaml("empty", wasm, empty.0, empty.1, "", ""))
            .plugin("conf", plugin_yaml("conf", wasm, &conf_root_id, &conf_configuration, "", ""))
            .route("empty.test", &["empty"])
            .route("conf.test", &["conf"]);
        Matrix { s: <Server as ServerUnderTest>::start(setup), origin, callout }
    }

    /// A request for the host whose plugin has the empty configuration.
    pub fn empty(path: &str) -> Request {
        Request::get(path).host("empty.test")
    }

    /// A request for the host whose plugin has the non-empty configuration.
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
        let r = send(&m.s, empty("/defaults").header("x-pw-test", "config"));
        assert_eq!(r.status, 200, "{}", m.s.log_report());
        assert_eq!(r.header("x-proxy-wasm"), Some(BUILD.tag));
        assert_eq!(r.header("x-pw-config-size"), Some("0"));
        assert_eq!(r.header("x-pw-config-tag"), Some(BUILD.tag));
        assert_eq!(r.body_str(), "hello from origin");
    }

    #[test]
    fn a_non_empty_configuration_is_read() {
        let m = matrix();
        let r = send(&m.s, conf("/configured").header("x-pw-test", "config"));
        assert_eq!(r.status, 200, "{}", m.s.log_report());
        assert_eq!(r.header("x-proxy-wasm"), Some("matrix"));
        assert_eq!(r.header("x-pw-config-tag"), Some("matrix"));
        assert_eq!(r.header("x-pw-config-authority"), Some("callout.test"));
    }

    #[test]
    fn headers_are_added_replaced_and_removed_on_both_sides() {
        let m = matrix();
        let r = send(&m.s, empty("/h").header("x-pw-test", "headers").header("x-pw-echo", "echo me").header("x-pw-remove", "x"));
        assert_eq!(r.status, 200, "{}", m.s.log_report());
        let seen = m.origin.wait_for_path("/h", WAIT);
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
        let r = send(&m.s, empty("/local").header("x-pw-test", "local"));
        assert_eq!(r.status, 403, "{}", m.s.log_report());
        assert_eq!(r.body_str(), "denied by rust-sdk-filter");
        assert_eq!(r.header("x-pw-local"), Some("request-headers"));
        assert!(m.origin.requests().iter().all(|q| q.path != "/local"));
    }

    #[test]
    fn request_and_response_bodies_are_edited() {
        let m = matrix();
        let req = Request::post("/echo/body", "hello world").host("conf.test").header("x-pw-test", "req-body-upper req-body-prefix resp-body-append");
        let r = send(&m.s, req);
        assert_eq!(r.status, 200, "{}", m.s.log_report());
        assert_eq!(m.origin.wait_for_path("/echo/body", WAIT).body_str(), "<<HELLO WORLD");
        assert_eq!(r.body_str(), "<<HELLO WORLD[/pw]");
    }

    #[test]
    fn an_http_call_answer_resumes_the_request() {
        let m = matrix();
        let r = send(&m.s, conf("/call").header("x-pw-test", "http-call"));
        assert_eq!(r.status, 200, "{}", m.s.log_report());
        assert_eq!(r.header("x-pw-callout-status"), Some("200"));
        assert_eq!(r.header("x-pw-callout-body"), Some("pong /callout"));
        assert_eq!(m.origin.wait_for_path("/call", WAIT).header("x-pw-callout-body"), Some("pong /callout"));
        assert!(m.callout.requests().iter().any(|q| q.method == "POST" && q.header("x-pw-callout") == Some("1")));
    }

    #[test]
    fn shared_data_counts_across_requests() {
        let m = matrix();
        let key = format!("matrix.{}", BUILD.name);
        let first = send(&m.s, empty("/s1").header("x-pw-test", "shared").header("x-pw-key", key.as_str()));
        let second = send(&m.s, empty("/s2").header("x-pw-test", "shared").header("x-pw-key", key.as_str()));
        assert_eq!((first.header("x-pw-shared"), second.header("x-pw-shared")), (Some("1"), Some("2")), "{}", m.s.log_report());
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
        let r = send(&m.s, empty("/page"));
        assert_eq!(r.status, 200, "{}", m.s.log_report());
        assert_eq!(r.header("x-proxy-wasm"), Some(BUILD.tag));
        assert_eq!(r.header("x-as-config"), None);
        assert_eq!(m.origin.wait_for_path("/page", WAIT).header("x-as-filter"), Some(BUILD.tag));
    }

    #[test]
    fn with_an_empty_configuration_its_local_path_and_header_are_answered_locally() {
        let m = matrix();
        for req in [empty("/as-local?x=1"), empty("/other-local").header("x-as-local", "yes")] {
            let r = send(&m.s, req);
            assert_eq!(r.status, 403, "{}", m.s.log_report());
            assert_eq!(r.body_str(), "local response from as-filter\n");
            assert_eq!((r.header("x-as-local"), r.header("x-proxy-wasm"), r.header("content-type")), (Some("1"), Some(BUILD.tag), Some("text/plain")));
        }
        assert!(m.origin.requests().iter().all(|q| q.path != "/as-local?x=1" && q.path != "/other-local"));
    }

    #[test]
    fn a_non_empty_configuration_sets_tag_local_path_and_status() {
        let m = matrix();
        let r = send(&m.s, conf("/as-local"));
        assert_eq!(r.status, 200, "the default local path is proxied once reconfigured\n{}", m.s.log_report());
        assert_eq!(r.header("x-proxy-wasm"), Some("matrix"));
        assert_eq!(r.header("x-as-config"), Some("tag=matrix;local_path=/deny;local_status=451"));
        let r = send(&m.s, conf("/deny"));
        assert_eq!((r.status, r.header("x-proxy-wasm")), (451, Some("matrix")));
    }
    }
    }
}

}
