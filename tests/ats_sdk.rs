//! Every case of the Rust-SDK test filter that makes sense over HTTP, the
//! AssemblyScript filter, the ABI 0.1.0 WAT module, a chain of three plugins
//! and the failure policies, on a real traffic_server in front of a real
//! origin, driven by a real client (protocol: tests/plugins/README.md; the
//! in-memory equivalents with the expected outcomes: tests/rust_sdk.rs,
//! tests/assemblyscript.rs, tests/wat_modules.rs).
//!
//! Not here yet (being implemented in src/ats): pausing in the response
//! phases (`http-call-response`, `resume-response-reentrant`,
//! `local-resp-headers`), trailers, reload. Covered elsewhere: ticks,
//! `tick-resume`, `queue-resume`, 200 concurrent callouts, remap use, 1 MiB
//! bodies, stats (tests/ats.rs); `http-call-req-body` / `-resp-body`
//! (tests/ats_response.rs); authorizations (tests/ats_policies.rs).
//! `resume-in-body` only without a body: with one, as on Envoy, its body
//! callback never runs while its headers are paused (see tests/ats.rs).

mod e2e;
mod sdk_builds;

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::ats::{AtsOptions, TrafficServer};
use e2e::client::{Request, Response};
use e2e::origin::{self, Origin};

const WAIT: Duration = Duration::from_secs(5);
const RUST: &str = "rust_sdk_filter.wasm";
const AS: &str = "as_filter.wasm";

/// A plugin YAML (snake_case schema). `extra` is inserted at the plugin level
/// (e.g. `  fail_open: true`); outgoing calls are allowed everywhere.
fn plugin_yaml(name: &str, wasm: &str, root_id: &str, configuration: &str, vm_configuration: &str, extra: &str) -> String {
    format!(
        r#"config:
  name: "{name}"
  root_id: "{root_id}"
  configuration: '{configuration}'
  authorizations:
    allowed_hosts: ["*"]
{extra}
  vm_config:
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

/// The origin, and Traffic Server with the given plugin YAMLs as global plugins, in order.
fn start_with(test: &str, origin: Origin, threads: usize, yamls: &[(&str, String)], tune: impl FnOnce(AtsOptions) -> AtsOptions) -> (Origin, TrafficServer) {
    e2e::ats::require_plugin_so();
    let mut opts = AtsOptions::new(test).origin(origin.port()).exec_threads(threads);
    for (file, text) in yamls {
        opts = opts.file(*file, text.clone());
    }
    let names: Vec<&str> = yamls.iter().map(|(f, _)| *f).collect();
    let ats = TrafficServer::start(tune(opts.global_plugin(&names)));
    (origin, ats)
}

/// The Rust-SDK filter (plugin name `rust-filter`) with `configuration`, default origin, 2 threads.
fn start_rust(test: &str, configuration: &str) -> (Origin, TrafficServer) {
    start_with(test, Origin::start(), 2, &[("filter.yaml", rust_yaml("rust-filter", configuration))], |o| o)
}

fn send(ats: &TrafficServer, req: Request) -> Response {
    ats.send(&req).unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()))
}

/// A request with `x-pw-test: <cases>`.
fn case(path: &str, cases: &str) -> Request {
    Request::get(path).header("x-pw-test", cases)
}

fn shared_value(ats: &TrafficServer, key: &str) -> String {
    send(ats, case("/shared", "shared-get").header("x-pw-key", key)).body_str()
}

/// Polls a shared-data key until `pred` holds (the VMs tick, dequeue and
/// log on their own threads); returns the last value.
fn wait_shared(ats: &TrafficServer, key: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = shared_value(ats, key);
        if pred(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn the_request<'a>(origin: &'a Origin, path: &str) -> origin::Request {
    origin.wait_for_requests(1, WAIT);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(r) = origin.requests().into_iter().find(|r| r.path == path) {
            return r;
        }
        assert!(Instant::now() < deadline, "the origin never got {path}: {:?}", origin.requests().iter().map(|r| r.path.clone()).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn values<'a>(r: &'a Response, name: &str) -> Vec<&'a str> {
    r.header_all(name)
}

// ------------------------------------------------------------------ one shared Traffic Server

/// The origin behind the shared server: `/echo...` echoes, `/accepted`
/// answers 202, everything else `hello from origin` with headers the
/// response-phase header cases act on.
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

/// Traffic Server with the filter (`rust-filter`, root id `sdk-root`,
/// default configuration) in front of [`shared_origin`].
struct Shared {
    origin: Origin,
    ats: TrafficServer,
}

/// The shared server: started by the first test that needs it, stopped when
/// no running test holds it any more (the tests that use it sit together in
/// `on_one_server`, so they run one after the other and rarely restart it).
fn server() -> Arc<Shared> {
    static SERVER: Mutex<Weak<Shared>> = Mutex::new(Weak::new());
    let mut slot = SERVER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = slot.upgrade() {
        return s;
    }
    let yaml = plugin_yaml("rust-filter", RUST, "sdk-root", "", "", "");
    let (origin, ats) = start_with("sdk-shared", shared_origin(), 2, &[("f.yaml", yaml)], |o| o);
    let s = Arc::new(Shared { origin, ats });
    *slot = Arc::downgrade(&s);
    s
}

/// The cases that need nothing but the filter with its default configuration
/// run on one Traffic Server (compiling the filter dominates a start-up):
/// each uses its own paths, shared-data keys and log lines.
mod on_one_server {
    use super::*;

    #[test]
    fn the_headers_case_adds_replaces_and_removes_headers_on_both_sides() {
        let f = server();
        let (origin, ats) = (&f.origin, &f.ats);
        let r = send(&ats, case("/h", "headers").header("x-pw-echo", "echo me").header("x-pw-remove", "x").header("x-pw-replace", "old"));
        assert_eq!(r.status, 200, "{}", ats.log_report());
        let seen = the_request(&origin, "/h");
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
        assert_eq!(values(&r, "x-pw-resp-replace"), vec!["replaced"]);
        assert!(!r.has_header("x-pw-resp-remove"), "{:?}", r.headers);
        assert_eq!(r.header("x-pw-resp-keep"), Some("kept"));
        assert_eq!(r.body_str(), "hello from origin");
    }

    #[test]
    fn set_header_map_pairs_rewrites_the_whole_request_and_response_maps() {
        let f = server();
        let (origin, ats) = (&f.origin, &f.ats);
        let r = send(&ats, case("/s?x=1", "set-headers").header("x-pw-drop-me", "1").header("x-pw-keep", "k"));
        assert_eq!(r.status, 200, "{}", ats.log_report());
        let seen = the_request(&origin, "/s?x=1");
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
        let (_origin, ats) = (&f.origin, &f.ats);
        let r = send(&ats, Request::post("/accepted?a=1&b=2", "x").header("x-pw-test", "pseudo").host("pseudo.test"));
        assert_eq!(r.status, 202, "{}", ats.log_report());
        assert_eq!(r.header("x-pw-method"), Some("POST"));
        assert_eq!(r.header("x-pw-path"), Some("/accepted?a=1&b=2"));
        assert_eq!(r.header("x-pw-authority"), Some("pseudo.test"));
        assert_eq!(r.header("x-pw-scheme"), Some("http"));
        assert_eq!(r.header("x-pw-status"), Some("202"));
    }

    #[test]
    fn header_map_and_body_sizes_match_what_the_plugin_reads() {
        let f = server();
        let (_origin, ats) = (&f.origin, &f.ats);
        let body = vec![b's'; 1000];
        let r = send(&ats, Request::post("/echo/sizes", body).chunked(300).header("x-pw-test", "sizes"));
        assert_eq!(r.status, 200, "{}", ats.log_report());
        let size = r.header("x-pw-req-header-map-size").expect("x-pw-req-header-map-size");
        assert_eq!(Some(size), r.header("x-pw-req-header-map-size-expected").map(|m| format!("OK {m}")).as_deref());
        assert_eq!(r.header("x-pw-header-map-size-bad-type"), Some("BAD_ARGUMENT"));
        assert_eq!(r.header("x-pw-buffer-status-bad-type"), Some("BAD_ARGUMENT"));
        assert_eq!(r.header("x-pw-req-body-buffer-status"), Some("OK 1000"));
        assert_eq!(r.header("x-pw-req-body-size-param"), Some("1000"));
        let size = r.header("x-pw-resp-header-map-size").expect("x-pw-resp-header-map-size");
        assert_eq!(Some(size), r.header("x-pw-resp-header-map-size-expected").map(|m| format!("OK {m}")).as_deref());
        assert_eq!(r.body.len(), 1000);
        assert_eq!(wait_shared(&ats, "resp.body.buffer_status", |v| v == "OK 1000"), "OK 1000");
    }

    #[test]
    fn a_request_without_a_test_case_passes_unmodified_and_unknown_cases_are_reported() {
        let f = server();
        let (origin, ats) = (&f.origin, &f.ats);
        let r = send(&ats, Request::post("/echo/plain", "untouched").header("x-other", "1"));
        assert_eq!((r.status, r.body_str().as_str(), r.header("x-proxy-wasm")), (200, "untouched", Some("rust-sdk")));
        let seen = the_request(&origin, "/echo/plain");
        assert_eq!(seen.body_str(), "untouched");
        assert_eq!(seen.header("x-other"), Some("1"));
        assert!(!seen.headers.iter().any(|(k, _)| k.to_ascii_lowercase().starts_with("x-pw-")), "{:?}", seen.headers);
        let r = send(&ats, case("/u", "no-such-case, Time"));
        assert_eq!(values(&r, "x-pw-unknown-case"), vec!["no-such-case"]);
        assert_eq!(r.header("x-pw-time-sane"), Some("true"), "case names are case-insensitive");
    }

    #[test]
    fn a_local_response_carries_the_report_headers_collected_before_it() {
        let f = server();
        let (origin, ats) = (&f.origin, &f.ats);
        let r = send(&ats, case("/local?q=1", "properties, local"));
        assert_eq!(r.status, 403, "{}", ats.log_report());
        assert_eq!(r.body_str(), "denied by rust-sdk-filter");
        assert_eq!(r.header("x-pw-local"), Some("request-headers"));
        assert_eq!(r.header("x-proxy-wasm"), Some("rust-sdk"));
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("x-pw-prop-request-path"), Some("/local?q=1"), "{:?}", r.headers);
        std::thread::sleep(Duration::from_millis(200));
        assert!(!origin.requests().iter().any(|r| r.path.starts_with("/local")), "the origin is not contacted");
    }

    #[test]
    fn a_local_response_from_the_request_body_answers_after_the_whole_body() {
        let f = server();
        let (origin, ats) = (&f.origin, &f.ats);
        let r = send(&ats, Request::post("/echo/lb", vec![b'b'; 5000]).chunked(1000).header("x-pw-test", "local-req-body").header("x-pw-local-status", "413"));
        assert_eq!(r.status, 413, "{}", ats.log_report());
        assert_eq!(r.body_str(), "request body had 5000 bytes");
        assert_eq!(r.header("x-pw-local"), Some("request-body"));
        assert_eq!(r.header("x-proxy-wasm"), Some("rust-sdk"));
        // The request transform holds the body before the request is sent on:
        // the origin never sees this request.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!origin.requests().iter().any(|r| r.path == "/echo/lb"), "the origin is not contacted");
        // Without a body nothing happens.
        let r = send(&ats, case("/nobody", "local-req-body"));
        assert_eq!((r.status, r.body_str().as_str()), (200, "hello from origin"));
    }

    #[test]
    fn request_body_edits_upper_prefix_append_replace_and_splice_reach_the_origin() {
        let f = server();
        let (origin, ats) = (&f.origin, &f.ats);
        let cases: &[(&str, &[(&str, &str)], &str)] = &[
            ("req-body-upper", &[], "HELLO WORLD"),
            ("req-body-prefix", &[], "[pw]hello world"),
            ("req-body-append", &[], "hello world[/pw]"),
            ("req-body-replace", &[], "replaced by rust-sdk-filter"),
            ("req-body-replace", &[("x-pw-replace-body", "a new body")], "a new body"),
            ("req-body-splice", &[], "h--lo world"),
            ("req-body-upper req-body-splice req-body-prefix req-body-append", &[], "[pw]H--LO WORLD[/pw]"),
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
                let r = send(&ats, req);
                assert_eq!(r.status, 200, "{cases} chunked={chunked}\n{}", ats.log_report());
                let seen = the_request(&origin, &path);
                assert_eq!(seen.body_str(), *expected, "{cases} chunked={chunked}");
                assert_eq!(r.body_str(), *expected, "{cases} chunked={chunked}: the origin echoes");
                assert!(!(seen.has_header("content-length") && seen.has_header("transfer-encoding")), "{cases} chunked={chunked}: never both {:?}", seen.headers);
                if let Some(len) = seen.header("content-length") {
                    assert_eq!(len, expected.len().to_string(), "{cases} chunked={chunked}: framing matches the edited body");
                }
            }
        }
        // upper keeps the length, and the content-length with it.
        send(&ats, Request::post("/echo/cl", "hello world").header("x-pw-test", "req-body-upper"));
        assert_eq!(the_request(&origin, "/echo/cl").header("content-length"), Some("11"));
    }

    #[test]
    fn body_callbacks_see_end_of_stream_exactly_once_in_both_directions() {
        let f = server();
        let (_origin, ats) = (&f.origin, &f.ats);
        let r = send(&ats, Request::post("/echo/info", vec![b'i'; 30_000]).chunked(1000).header("x-pw-test", "body-info"));
        assert_eq!(r.status, 200, "{}", ats.log_report());
        assert_eq!(r.header("x-pw-req-headers-eos"), Some("false"));
        assert_eq!(r.header("x-pw-resp-headers-eos"), Some("false"));
        assert_eq!(r.header("x-pw-req-body-eos-calls"), Some("1"));
        let info = wait_shared(&ats, "resp.body.info", |v| v.contains("eos=1"));
        assert!(info.starts_with("calls=") && info.contains(" eos=1 size="), "{info}");
        let r = send(&ats, case("/noinfo", "body-info"));
        assert_eq!(r.header("x-pw-req-headers-eos"), Some("true"));
        assert_eq!(r.header("x-pw-req-body-calls"), Some("0"));
    }

    #[test]
    fn concurrent_shared_data_increments_produce_distinct_consecutive_values() {
        let f = server();
        let (_origin, ats) = (&f.origin, &f.ats);
        let port = ats.port();
        // The first increment creates the key with CAS 0, which (as on Envoy)
        // overwrites unconditionally: two racing creators would both write 1.
        // Created first, every later increment is a CAS on an existing key.
        let first = send(&ats, case("/s/first", "shared").header("x-pw-key", "ctr"));
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
        assert_eq!(shared_value(&ats, "ctr"), "41");
    }

    #[test]
    fn shared_data_cas_refuses_a_stale_version_and_set_and_get_work_over_http() {
        let f = server();
        let (_origin, ats) = (&f.origin, &f.ats);
        let r = send(&ats, case("/cas", "shared-cas"));
        assert_eq!(r.header("x-pw-cas-first"), Some("OK"), "{:?}", r.headers);
        assert_eq!(r.header("x-pw-cas-stale"), Some("CAS_MISMATCH"));
        assert_eq!(r.header("x-pw-cas-final"), Some("first"));
        // Missing key: 404.
        let r = send(&ats, case("/g", "shared-get").header("x-pw-key", "k1"));
        assert_eq!((r.status, r.body_str().as_str(), r.header("x-pw-shared-cas")), (404, "(none)", Some("(none)")));
        // Set unconditionally, read back with its cas.
        let r = send(&ats, case("/s", "shared-set").header("x-pw-key", "k1").header("x-pw-value", "v1"));
        assert_eq!((r.status, r.body_str().as_str()), (200, "OK"));
        let r = send(&ats, case("/g", "shared-get").header("x-pw-key", "k1"));
        assert_eq!((r.status, r.body_str().as_str(), r.header("x-pw-shared-value")), (200, "v1", Some("v1")));
        let cas = r.header("x-pw-shared-cas").unwrap().to_string();
        // Set with the current cas, then again with the same (now stale) cas.
        let r = send(&ats, case("/s", "shared-set").header("x-pw-key", "k1").header("x-pw-value", "v2").header("x-pw-cas", &cas));
        assert_eq!(r.status, 200);
        let r = send(&ats, case("/s", "shared-set").header("x-pw-key", "k1").header("x-pw-value", "v3").header("x-pw-cas", &cas));
        assert_eq!((r.status, r.body_str().as_str(), r.header("x-pw-shared-set")), (409, "CAS_MISMATCH", Some("CAS_MISMATCH")));
        assert_eq!(shared_value(&ats, "k1"), "v2");
    }

    #[test]
    fn enqueue_resolves_the_queue_registered_in_on_configure_and_on_queue_ready_drains_it() {
        let f = server();
        let (_origin, ats) = (&f.origin, &f.ats);
        for i in 0..3 {
            let r = send(&ats, case("/q", "enqueue").header("x-pw-queue-value", format!("item-{i}")));
            assert_eq!(r.header("x-pw-queue-resolve"), Some("OK"), "{}", ats.log_report());
            assert_eq!(r.header("x-pw-queue-resolve-same-id"), Some("true"));
            assert_eq!(r.header("x-pw-enqueue"), Some("OK"));
        }
        assert_eq!(wait_shared(&ats, "queue.count", |v| v == "3"), "3", "{}", ats.log_report());
        assert_eq!(shared_value(&ats, "queue.last"), "item-2");
    }

    #[test]
    fn metric_hostcalls_report_counter_gauge_histogram_and_errors() {
        let f = server();
        let (_origin, ats) = (&f.origin, &f.ats);
        let mut r = send(&ats, case("/m", "metrics").header("x-pw-metric-value", "10"));
        assert_eq!(r.header("x-pw-metric-counter"), Some("1"), "{:?}", r.headers);
        r = send(&ats, case("/m", "metrics").header("x-pw-metric-value", "10"));
        assert_eq!(r.header("x-pw-metric-ops"), Some("OK OK OK OK"));
        assert_eq!(r.header("x-pw-metric-counter-negative"), Some("BAD_ARGUMENT"));
        assert_eq!(r.header("x-pw-metric-counter"), Some("2"), "one counter for all the thread's instances");
        assert_eq!(r.header("x-pw-metric-gauge"), Some("9"));
        assert_eq!(r.header("x-pw-metric-histogram"), Some("BAD_ARGUMENT"));
        assert_eq!(r.header("x-pw-metric-unknown"), Some("NOT_FOUND"));
        assert_eq!(r.header("x-pw-metric-redefine-same-id"), Some("true"));
    }

    #[test]
    fn properties_answer_request_source_plugin_and_response_values_and_set_property_round_trips() {
        let f = server();
        let (_origin, ats) = (&f.origin, &f.ats);
        let r = send(&ats, case("/p/x?y=2", "properties").header("x-pw-prop", "pv").header("x-pw-prop-value", "rt-value"));
        assert_eq!(r.status, 200, "{}", ats.log_report());
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
        // A value set by one stream does not leak into the next.
        let r = send(&ats, case("/p", "properties"));
        assert_eq!(r.header("x-pw-prop-roundtrip"), Some("round-trip"));
        // A repeated header reads as its values joined with "," (as its
        // header map value does), on both servers.
        let r = send(&ats, case("/p/dup", "properties").header("x-pw-prop", "one").header("x-pw-prop", "two").header("user-agent", "pw-agent/1").header("x-pw-prop-paths", "request.useragent"));
        assert_eq!(r.header("x-pw-prop-header"), Some("one,two"));
        assert_eq!(r.header("x-pw-prop-req"), Some("request.useragent=pw-agent/1"));
        // The root context (on_configure) has the plugin's identity but no request.
        assert_eq!(shared_value(&ats, "root.request.path"), "(none)");
        assert_eq!(shared_value(&ats, "root.plugin_name"), "rust-filter");
        assert_eq!(shared_value(&ats, "root.plugin_root_id"), "sdk-root");
        assert_eq!(shared_value(&ats, "root.plugin_vm_id"), "rust-filter_vm");
    }

    /// The value the filter reported for property `path` in report header
    /// `name` (`x-pw-prop-req` / `x-pw-prop-resp`: `<path>=<rendered value>`).
    fn prop<'a>(r: &'a Response, name: &str, path: &str) -> &'a str {
        let prefix = format!("{path}=");
        values(r, name).into_iter().find_map(|v| v.strip_prefix(prefix.as_str())).unwrap_or_else(|| panic!("{name} has no {path}: {:?}", values(r, name)))
    }

    /// An 8-byte integer property (Envoy's integers, timestamps, durations).
    fn int(rendered: &str) -> i64 {
        rendered.rsplit_once(" int=").unwrap_or_else(|| panic!("not 8 bytes: {rendered:?}")).1.parse().unwrap()
    }

    const PATHS: &str = "request.path, request.url_path, request.query, request.host, request.scheme, request.method, \
        request.referer, request.useragent, request.id, request.protocol, request.time, request.duration, request.size, \
        request.total_size, request.headers.x-request-id, response.code, response.code_details, response.headers.x-pw-resp-keep, \
        response.size, response.total_size, source.address, source.port, destination.address, destination.port, connection.id, \
        connection.mtls, upstream.address, upstream.port, plugin_name, plugin_root_id, plugin_vm_id";

    #[test]
    fn envoy_property_paths_have_envoy_values_in_request_response_and_log_phases() {
        let f = server();
        let (origin, ats) = (&f.origin, &f.ats);
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
        let req = Request::post("/pp/a?b=1", "12345")
            .host("props.test")
            .header("x-pw-test", "properties")
            .header("x-pw-prop-paths", PATHS)
            .header("x-request-id", "rid-1")
            .header("user-agent", "ua/1")
            .header("referer", "http://ref.test/");
        let r = send(&ats, req);
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
        assert_eq!(r.status, 200, "{}", ats.log_report());
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
        assert!(int(q("request.duration")) >= 0);
        assert_eq!(int(q("request.size")), 5);
        let source = q("source.address");
        assert!(source.starts_with("127.0.0.1:"), "{source}");
        assert_eq!(source.rsplit(':').next().unwrap(), int(q("source.port")).to_string());
        assert_eq!(q("destination.address"), format!("127.0.0.1:{}", ats.port()));
        assert_eq!(int(q("destination.port")), ats.port() as i64);
        assert!(int(q("connection.id")) >= 0);
        assert_eq!(q("connection.mtls").rsplit_once(" bool=").map(|(_, b)| b), Some("false"));
        // The response phase.
        let p = |path| prop(&r, "x-pw-prop-resp", path);
        assert_eq!(int(p("response.code")), 200);
        assert_eq!(p("response.code_details"), "via_upstream");
        assert_eq!(p("response.headers.x-pw-resp-keep"), "kept");
        assert_eq!(p("upstream.address"), format!("127.0.0.1:{}", origin.port()));
        assert_eq!(int(p("upstream.port")), origin.port() as i64);
        // The log phase (after the response): sizes of what was sent.
        let logged = |path: &str| {
            let key = format!("log.prop.{path}");
            let v = wait_shared(&ats, &key, |v| v != "(none)");
            v.strip_prefix(&format!("{path}=")).unwrap_or_else(|| panic!("{key}: {v}")).to_string()
        };
        assert_eq!(int(&logged("response.size")), 17);
        assert!(int(&logged("response.total_size")) > 17 + 20);
        assert!(int(&logged("request.total_size")) > 5 + 20);
        assert_eq!(int(&logged("response.code")), 200);
        // request.protocol is the client's.
        let r = send(&ats, case("/pp/old", "properties").header("x-pw-prop-paths", "request.protocol").version("HTTP/1.0"));
        assert_eq!(prop(&r, "x-pw-prop-req", "request.protocol").split(" int=").next(), Some("HTTP/1.0"));
    }

    #[test]
    fn the_current_time_is_nanoseconds_since_the_epoch() {
        let f = server();
        let (_origin, ats) = (&f.origin, &f.ats);
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let r = send(&ats, case("/t", "time"));
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let ns: u128 = r.header("x-pw-time-ns").expect("x-pw-time-ns").parse().unwrap();
        assert!(before <= ns && ns <= after, "{before} <= {ns} <= {after}");
        assert_eq!(r.header("x-pw-time-sane"), Some("true"));
    }

    #[test]
    fn plugin_log_levels_map_to_debug_tag_proxy_wasm_note_warning_and_error() {
        let f = server();
        let (_origin, ats) = (&f.origin, &f.ats);
        let r = send(&ats, case("/log", "log"));
        assert_eq!(r.header("x-pw-logged"), Some("6"));
        assert_eq!((r.header("x-pw-log-level"), r.header("x-pw-log-level-name")), (Some("0"), Some("trace")), "the debug tag is on");
        assert!(ats.wait_for_log("log-test level=critical", WAIT), "{}", ats.log_report());
        let logs = ats.diags_log();
        // Traffic Server 9.2 writes TSDebug output as `DIAG: (<tag>) ...`.
        for (level, marker) in [("trace", "DIAG: (proxy_wasm)"), ("debug", "DIAG: (proxy_wasm)"), ("info", "NOTE:"), ("warn", "WARNING:"), ("error", "ERROR:"), ("critical", "ERROR:")] {
            let line = log_test_line(&logs, level).unwrap_or_else(|| panic!("no {level} line\n{}", ats.log_report()));
            assert!(line.contains(&format!("{marker} [proxy_wasm] rust-filter: rust-sdk-filter log-test level={level} context=")), "{level}: {line}");
        }
    }

    #[test]
    fn set_effective_context_accepts_live_ids_and_refuses_unknown_ones() {
        let f = server();
        let (_origin, ats) = (&f.origin, &f.ats);
        let r = send(&ats, case("/e", "effective-context"));
        assert_eq!(r.header("x-pw-effective-self"), Some("OK"), "{:?}", r.headers);
        assert_eq!(r.header("x-pw-effective-bogus"), Some("BAD_ARGUMENT"));
        assert_eq!(r.header("x-pw-effective-restore"), Some("OK"));
    }

    #[test]
    fn foreign_functions_unknown_to_traffic_server_are_not_found() {
        let f = server();
        let (_origin, ats) = (&f.origin, &f.ats);
        let r = send(&ats, case("/f", "foreign").header("x-pw-foreign-name", "echo"));
        assert_eq!(r.status, 200, "{}", ats.log_report());
        assert_eq!(r.header("x-pw-foreign-status"), Some("NOT_FOUND"));
        assert_eq!(r.header("x-pw-foreign-result"), Some("(none)"));
    }

    #[test]
    fn grpc_hostcalls_answer_unimplemented_without_trapping() {
        let f = server();
        let (_origin, ats) = (&f.origin, &f.ats);
        let r = send(&ats, case("/g", "grpc"));
        assert_eq!(r.status, 200, "{}", ats.log_report());
        for name in ["x-pw-grpc-call", "x-pw-grpc-stream", "x-pw-grpc-close-unknown", "x-pw-grpc-cancel-unknown", "x-pw-grpc-send-unknown"] {
            assert_eq!(r.header(name), Some("UNIMPLEMENTED"), "{name}");
        }
        for name in ["x-pw-grpc-call-cancel", "x-pw-grpc-send", "x-pw-grpc-stream-cancel"] {
            assert_eq!(r.header(name), Some("skipped"), "{name}");
        }
    }

    #[test]
    fn resume_in_body_without_a_body_does_not_pause() {
        let f = server();
        let (origin, ats) = (&f.origin, &f.ats);
        let r = send(&ats, case("/nb", "resume-in-body"));
        assert_eq!((r.status, r.header("x-pw-resume-in-body")), (200, Some("no-body")), "{}", ats.log_report());
        the_request(&origin, "/nb");
    }

    #[test]
    fn continue_inside_on_request_headers_that_then_pauses_is_applied_after_the_callback() {
        let f = server();
        let (origin, ats) = (&f.origin, &f.ats);
        let r = send(&ats, case("/rr", "resume-reentrant").timeout(Duration::from_secs(5)));
        assert_eq!(r.status, 200, "{}", ats.log_report());
        assert_eq!(r.header("x-pw-resume-reentrant"), Some("1"));
        the_request(&origin, "/rr");
    }
}

// ------------------------------------------------------------------ bodies

#[test]
fn response_body_edits_upper_prefix_append_replace_and_splice_reach_the_client() {
    let origin = Origin::with_handler(|req| {
        let r = origin::Response::text(200, "hello from origin");
        if req.path_only().starts_with("/chunked") {
            r.chunked(3)
        } else {
            r
        }
    });
    let (_origin, ats) = start_with("sdk-resp-body", origin, 2, &[("f.yaml", rust_yaml("rust-filter", ""))], |o| o);
    let cases: &[(&str, &[(&str, &str)], &str)] = &[
        ("resp-body-upper", &[], "HELLO FROM ORIGIN"),
        ("resp-body-prefix", &[], "[pw]hello from origin"),
        ("resp-body-append", &[], "hello from origin[/pw]"),
        ("resp-body-replace", &[], "replaced by rust-sdk-filter"),
        ("resp-body-replace", &[("x-pw-replace-resp-body", "new response")], "new response"),
        ("resp-body-splice", &[], "h--lo from origin"),
        ("resp-body-upper resp-body-splice resp-body-prefix resp-body-append", &[], "[pw]H--LO FROM ORIGIN[/pw]"),
    ];
    for (cases, params, expected) in cases {
        for path in ["/plain", "/chunked"] {
            let mut req = case(path, cases);
            for (k, v) in params.iter() {
                req = req.header(*k, *v);
            }
            let r = send(&ats, req);
            assert_eq!(r.status, 200, "{cases} {path}\n{}", ats.log_report());
            assert_eq!(r.body_str(), *expected, "{cases} {path}");
            if let Some(len) = r.header("content-length") {
                assert_eq!(len, expected.len().to_string(), "{cases} {path}: framing matches the edited body");
            }
        }
    }
    // At the end of the response body: eos seen once, with the whole body.
    let info = wait_shared(&ats, "resp.body.info", |v| v.contains("eos=1"));
    assert!(info.starts_with("calls=") && info.ends_with("eos=1 size=17"), "{info}");
}

#[test]
fn a_content_length_the_plugin_keeps_is_fixed_by_the_host_after_a_length_changing_edit() {
    let (origin, ats) = start_rust("sdk-keep-cl", "");
    let r = send(&ats, Request::post("/echo/keep", "hello world").header("x-pw-test", "req-body-prefix, resp-body-append").header("x-pw-keep-content-length", "1"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    let seen = the_request(&origin, "/echo/keep");
    assert_eq!(seen.body_str(), "[pw]hello world");
    if let Some(len) = seen.header("content-length") {
        assert_eq!(len, "15");
    }
    assert_eq!(r.body_str(), "[pw]hello world[/pw]");
    if let Some(len) = r.header("content-length") {
        assert_eq!(len, "20");
    }
}

// ------------------------------------------------------------------ http_call

/// The filter with its callouts sent to a second origin.
fn start_with_callout(test: &str, config_extra: &str) -> (Origin, Origin, TrafficServer) {
    let callout = Origin::with_handler(|req| origin::Response::text(200, format!("pong {}", req.path)).header("x-callout", "yes"));
    let config = format!(r#"{{"upstream":"127.0.0.1:{}","authority":"callout.test","callout_timeout_ms":3000{config_extra}}}"#, callout.port());
    let (origin, ats) = start_with(test, Origin::start(), 2, &[("f.yaml", rust_yaml("rust-filter", &config))], |o| o);
    (origin, callout, ats)
}

#[test]
fn the_http_call_answer_reports_its_status_headers_body_and_trailers() {
    let (origin, callout, ats) = start_with_callout("sdk-callout", "");
    let r = send(&ats, case("/c", "http-call").header("x-pw-callout-path", "/other/path?x=1"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    let seen = &callout.wait_for_requests(1, WAIT)[0];
    assert_eq!((seen.method.as_str(), seen.path.as_str()), ("POST", "/other/path?x=1"));
    assert_eq!(seen.header("content-type"), Some("text/plain"));
    assert!(seen.header("x-pw-context-id").is_some_and(|id| id.parse::<u32>().is_ok()));
    assert_eq!(r.header("x-pw-callout-dispatch"), Some("OK"));
    assert_eq!(r.header("x-pw-callout-status"), Some("200"));
    assert_eq!(r.header("x-pw-callout-body"), Some("pong /other/path?x=1"));
    assert_eq!(r.header("x-pw-callout-body-size"), Some("20"));
    let n = r.header("x-pw-callout-headers").expect("x-pw-callout-headers");
    assert!(n.parse::<u32>().is_ok_and(|n| n >= 3), "status, content-type, x-callout at least: {n}");
    assert_eq!(Some(n), r.header("x-pw-callout-header-pairs"));
    assert_eq!(r.header("x-pw-callout-trailers"), Some("0 0"));
    assert_eq!(r.header("x-pw-callout-get-status"), Some("0"));
    assert_eq!(the_request(&origin, "/c").header("x-pw-callout-body"), Some("pong /other/path?x=1"));
}

#[test]
fn an_http_call_without_a_path_is_refused_and_the_request_goes_on() {
    let (origin, callout, ats) = start_with_callout("sdk-callout-bad", "");
    let r = send(&ats, case("/bad", "http-call-bad"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.header("x-pw-callout-bad"), Some("BAD_ARGUMENT"));
    the_request(&origin, "/bad");
    callout.assert_no_new_requests(Duration::from_millis(200));
    assert_eq!(callout.request_count(), 0);
}

#[test]
fn a_failed_http_call_answers_the_local_response_503_from_its_callback() {
    let (origin, _callout, ats) = start_with_callout("sdk-callout-fail-local", r#","upstream":"127.0.0.1:1""#);
    let r = send(&ats, case("/fl", "http-call-local"));
    assert_eq!(r.status, 503, "{}", ats.log_report());
    assert_eq!(r.body_str(), "callout failed");
    assert_eq!(r.header("x-pw-callout-failed"), Some("1"));
    assert_eq!(origin.request_count(), 0);
}

#[test]
fn on_tick_may_dispatch_http_calls_whose_answers_reach_the_root_context() {
    let (_origin, callout, ats) = start_with_callout("sdk-tick-callout", r#","tick_ms":100,"tick_http_call":true"#);
    assert_eq!(send(&ats, Request::get("/start")).status, 200);
    assert_eq!(wait_shared(&ats, "tick.callout", |v| v == "200"), "200", "{}", ats.log_report());
    let seen = callout.wait_for_requests(1, WAIT);
    assert_eq!((seen[0].method.as_str(), seen[0].path.as_str(), seen[0].header("x-pw-tick")), ("GET", "/callout", Some("1")));
    assert!(wait_shared(&ats, "tick.callout.count", |v| v.parse::<u32>().is_ok_and(|n| n >= 1)).parse::<u32>().is_ok());
}

// ------------------------------------------------------------------ shared data and queues

// ------------------------------------------------------------------ metrics, properties, time, log

/// The diags.log line of the `log` case at `level`, if any.
fn log_test_line(logs: &str, level: &str) -> Option<String> {
    logs.lines().find(|l| l.contains(&format!("rust-sdk-filter log-test level={level} "))).map(str::to_string)
}

#[test]
fn without_the_debug_tag_plugins_log_from_info_up_and_errors_are_still_visible() {
    let (_origin, ats) = start_with("sdk-log-quiet", Origin::start(), 2, &[("f.yaml", rust_yaml("rust-filter", ""))], |o| o.debug_tags(""));
    let r = send(&ats, case("/log", "log"));
    assert_eq!((r.header("x-pw-log-level"), r.header("x-pw-log-level-name")), (Some("2"), Some("info")));
    assert!(ats.wait_for_log("log-test level=critical", WAIT), "{}", ats.log_report());
    let logs = ats.diags_log();
    for level in ["info", "warn", "error", "critical"] {
        assert!(log_test_line(&logs, level).is_some(), "{level}\n{}", ats.log_report());
    }
    for level in ["trace", "debug"] {
        assert!(log_test_line(&logs, level).is_none(), "{level}\n{}", ats.log_report());
    }
}

#[test]
fn the_config_case_reports_plugin_and_vm_configuration_and_context_ids() {
    let config = r#"{"tag":"cfg","upstream":"10.0.0.1:80","queue":"cq","tick_ms":0}"#;
    let yaml = plugin_yaml("cfg-plugin", RUST, "", config, "vm-cfg", "");
    let (_origin, ats) = start_with("sdk-config", Origin::start(), 1, &[("c.yaml", yaml)], |o| o);
    let r = send(&ats, case("/c", "config"));
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
    assert_eq!(shared_value(&ats, "vm.config"), "vm-cfg");
    assert_eq!(shared_value(&ats, "vm.config.size"), "6 OK 6");
    assert_eq!(shared_value(&ats, "config.size"), format!("{0} OK {0}", config.len()));
    // Empty ("" on success): the SDK reads an empty value as absent.
    assert_eq!(shared_value(&ats, "config.error"), "(none)");
    assert_eq!(shared_value(&ats, "config.tag"), "cfg");
}

// ------------------------------------------------------------------ stream lifecycle

#[test]
fn on_log_on_done_and_on_delete_run_once_per_transaction_even_for_a_closed_stream() {
    let (origin, ats) = start_rust("sdk-close", "");
    let closed = ats.send(&case("/closed", "close"));
    match &closed {
        Err(e) => assert!(e.is_closed(), "{e}"),
        // Traffic Server ends the transaction with its own error (500) and closes the connection.
        Ok(r) => assert!(r.status >= 500 && r.closes_connection() && r.body.is_empty(), "a closed stream gets no regular response: {} {:?}", r.status, r.headers),
    }
    assert_eq!(origin.request_count(), 0, "the origin is not contacted");
    for i in 0..2 {
        assert_eq!(send(&ats, Request::get(&format!("/n{i}"))).status, 200);
    }
    // Three transactions (the closed one, two proxied) before the shared-gets
    // that read: each read sees one more closed transaction than the one
    // before it, once the first three have closed.
    let deadline = Instant::now() + WAIT;
    let mut reads = 0;
    loop {
        let done: u32 = shared_value(&ats, "done.count").parse().unwrap();
        reads += 1;
        if done == 3 + reads - 1 {
            break;
        }
        assert!(Instant::now() < deadline, "done.count={done} after {reads} reads\n{}", ats.log_report());
        std::thread::sleep(Duration::from_millis(50));
    }
    // on_delete and on_log ran as often (the reads are transactions too; the
    // one just before may not have closed yet).
    let deletes: u32 = shared_value(&ats, "delete.count").parse().unwrap();
    assert!((3 + reads - 1..=3 + reads).contains(&deletes), "delete.count={deletes}, done.count={}", 3 + reads - 1);
    let logs: u32 = shared_value(&ats, "log.count").parse().unwrap();
    assert!((3 + reads..=3 + reads + 1).contains(&logs), "log.count={logs}, done.count={}", 3 + reads - 1);
    assert_eq!(shared_value(&ats, "log.last"), "GET /shared 200");
    ats.assert_running();
}

#[test]
fn a_deferred_on_done_is_completed_by_proxy_done_from_on_tick() {
    let (_origin, ats) = start_with("sdk-defer-done", Origin::start(), 1, &[("f.yaml", rust_yaml("rust-filter", r#"{"tick_ms":50}"#))], |o| o);
    let r = send(&ats, case("/deferred", "defer-done"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    // on_done returned false at TXN_CLOSE; the next tick called proxy_done for it.
    assert_eq!(wait_shared(&ats, "done.deferred", |v| v == "OK"), "OK", "{}", ats.log_report());
    assert_eq!(wait_shared(&ats, "done.deferred.count", |v| v == "1"), "1");
    // (That on_log and on_delete wait for proxy_done is checked in memory:
    // tests/rust_sdk.rs, defer_done_delays_on_log_and_on_delete_until_proxy_done.)
    assert_eq!(ats.count_in_logs("trapped"), 0, "{}", ats.log_report());
    ats.assert_running();
}

// ------------------------------------------------------------------ failures

fn trap_yaml(extra: &str) -> String {
    plugin_yaml("trapper", RUST, "", "", "", extra)
}

#[test]
fn a_trap_answers_503_and_under_failure_policy_reload_the_next_request_is_served() {
    let (origin, ats) = start_with("sdk-panic", Origin::start(), 1, &[("t.yaml", trap_yaml("  failure_policy: reload"))], |o| o);
    let r = send(&ats, case("/boom", "panic"));
    assert_eq!(r.status, 503, "{}", ats.log_report());
    assert!(ats.wait_for_log("proxy_on_request_headers trapped", WAIT), "{}", ats.log_report());
    assert!(ats.diags_log().contains("rust-sdk-filter: panic requested by x-pw-test"), "the SDK's panic message is logged\n{}", ats.log_report());
    let r = send(&ats, Request::get("/after"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")), "{}", ats.log_report());
    assert_eq!(origin.requests().iter().map(|r| r.path.as_str()).collect::<Vec<_>>(), vec!["/after"]);
    ats.assert_running();
}

#[test]
fn by_default_a_trapping_plugin_fails_closed_with_503_and_traffic_server_keeps_running() {
    let (origin, ats) = start_with("sdk-fail-closed", Origin::start(), 1, &[("t.yaml", trap_yaml(""))], |o| o);
    assert_eq!(send(&ats, case("/boom", "panic")).status, 503, "{}", ats.log_report());
    assert_eq!(send(&ats, Request::get("/after")).status, 503, "the plugin stays failed");
    assert_eq!(origin.request_count(), 0);
    ats.assert_running();
}

#[test]
fn with_fail_open_true_a_trapping_plugin_is_skipped_and_the_request_reaches_the_origin() {
    let (origin, ats) = start_with("sdk-fail-open", Origin::start(), 1, &[("t.yaml", trap_yaml("  fail_open: true"))], |o| o);
    let r = send(&ats, case("/boom", "panic"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.body_str(), "hello from origin");
    assert_eq!(r.header("x-proxy-wasm"), None, "the failed plugin does not filter the response");
    assert_eq!(the_request(&origin, "/boom").header("x-pw-test"), Some("panic"));
    let r = send(&ats, Request::get("/after"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, None));
}

// ------------------------------------------------------------------ AssemblyScript, ABI 0.1.0, chains

fn as_yaml(name: &str, root_id: &str, configuration: &str) -> String {
    plugin_yaml(name, AS, root_id, configuration, "", "")
}

#[test]
fn the_assemblyscript_filter_tags_request_and_response_and_answers_its_local_path() {
    let (origin, ats) = start_with("sdk-as", Origin::start(), 2, &[("as.yaml", as_yaml("as", "", ""))], |o| o);
    let r = send(&ats, Request::get("/page"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.header("x-proxy-wasm"), Some("assemblyscript"));
    assert_eq!(r.header("x-as-config"), None);
    assert_eq!(the_request(&origin, "/page").header("x-as-filter"), Some("assemblyscript"));
    for req in [Request::get("/as-local"), Request::get("/as-local?x=1"), Request::get("/other").header("x-as-local", "yes")] {
        let r = send(&ats, req);
        assert_eq!(r.status, 403, "{}", ats.log_report());
        assert_eq!(r.body_str(), "local response from as-filter\n");
        assert_eq!((r.header("x-as-local"), r.header("x-proxy-wasm"), r.header("content-type")), (Some("1"), Some("assemblyscript"), Some("text/plain")));
    }
    assert_eq!(origin.request_count(), 1, "local responses never reach the origin");
}

#[test]
fn the_assemblyscript_filter_uses_its_configuration_and_the_as_filter_root_id() {
    let yaml = as_yaml("as-cfg", "as-filter", "tag=as-test;local_path=/deny;local_status=451");
    let (origin, ats) = start_with("sdk-as-cfg", Origin::start(), 2, &[("as.yaml", yaml)], |o| o);
    let r = send(&ats, Request::get("/as-local"));
    assert_eq!(r.status, 200, "the default local path is proxied once reconfigured\n{}", ats.log_report());
    assert_eq!(r.header("x-proxy-wasm"), Some("as-test"));
    assert_eq!(r.header("x-as-config"), Some("tag=as-test;local_path=/deny;local_status=451"));
    assert_eq!(the_request(&origin, "/as-local").header("x-as-filter"), Some("as-test"));
    let r = send(&ats, Request::get("/deny"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (451, Some("as-test")));
    assert_eq!(origin.request_count(), 1);
}

/// Issue 12: an empty `configuration` starts the filter with its defaults
/// (also under a root id, which the SDK reads before `proxy_on_configure`).
#[test]
fn the_assemblyscript_filter_with_an_empty_configuration_starts_with_its_defaults() {
    let yaml = as_yaml("as-empty", "as-filter", "");
    let (origin, ats) = start_with("sdk-as-empty", Origin::start(), 1, &[("as.yaml", yaml)], |o| o);
    let r = send(&ats, Request::get("/page"));
    assert_eq!((r.status, r.header("x-proxy-wasm"), r.header("x-as-config")), (200, Some("assemblyscript"), None), "{}", ats.log_report());
    assert_eq!(the_request(&origin, "/page").header("x-as-filter"), Some("assemblyscript"));
    assert!(!ats.diags_log().contains("trapped"), "{}", ats.log_report());
}

#[test]
fn an_abi_0_1_0_module_filters_requests_and_responses() {
    let yaml = plugin_yaml("abi010", "abi_0_1_0.wasm", "", "abi-0.1.0", "vm-0.1.0", "");
    let (origin, ats) = start_with("sdk-abi010", Origin::start(), 1, &[("a.yaml", yaml)], |o| o);
    let r = send(&ats, Request::get("/old"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.header("x-abi"), Some("0.1.0"), "{:?}", r.headers);
    assert_eq!(the_request(&origin, "/old").header("x-abi"), Some("0.1.0"));
    assert!(ats.diags_log().contains("loaded plugin \"abi010\" (ABI 0.1.0"), "{}", ats.log_report());
    // The module's own log, in order.
    // The start-up check at load time already logged one root context's lines.
    assert!(ats.wait_for_logs_matching(WAIT, |l| l.matches("abi010: on_delete ctx=").count() >= 2), "{}", ats.log_report());
    let logs = ats.diags_log();
    // After the start-up check: the thread's instance, then the transaction.
    let mut at = logs.find("loaded plugin \"abi010\"").unwrap();
    for line in ["on_context_create ctx=", "vm_config=vm-0.1.0", "config=abi-0.1.0", "on_request_headers ctx=", "missing status=0 len=0", "add_request_header status=0", "on_response_headers ctx=", "add_response_header status=0", "on_done ctx=", "on_log ctx=", "on_delete ctx="] {
        match logs[at..].find(line) {
            Some(i) => at += i + line.len(),
            None => panic!("{line:?} missing or out of order\n{}", ats.log_report()),
        }
    }
}

#[test]
fn a_chain_of_three_plugins_runs_request_callbacks_in_order_and_response_callbacks_in_reverse() {
    let yamls = [
        ("one.yaml", as_yaml("one", "", "tag=one")),
        ("two.yaml", rust_yaml("two", r#"{"tag":"two"}"#)),
        ("three.yaml", as_yaml("three", "", "tag=three")),
    ];
    let (origin, ats) = start_with("sdk-chain", Origin::start(), 2, &yamls, |o| o);
    let r = send(&ats, case("/chain", "headers"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    let seen = the_request(&origin, "/chain");
    // Request: one, then two, then three, each seeing what the earlier ones added.
    assert_eq!(seen.header_all("x-as-filter"), vec!["one", "three"]);
    assert_eq!(seen.header("x-pw-added"), Some("1"));
    // Response: three, then two, then one.
    assert_eq!(values(&r, "x-proxy-wasm"), vec!["three", "two", "one"], "{:?}", r.headers);
    // A local response from the first stops the chain: two and three never see the request.
    let r = send(&ats, Request::get("/as-local").header("x-pw-test", "headers"));
    assert_eq!((r.status, r.header("x-as-local")), (403, Some("1")));
    assert_eq!(origin.request_count(), 1);
}

#[test]
fn bodies_go_through_a_chain_in_order_on_the_way_in_and_in_reverse_on_the_way_out() {
    let yamls = [
        ("first.yaml", rust_yaml("first", r#"{"tag":"first","prefix":"<1>","suffix":"</1>"}"#)),
        ("second.yaml", rust_yaml("second", r#"{"tag":"second","prefix":"<2>","suffix":"</2>"}"#)),
    ];
    let (origin, ats) = start_with("sdk-chain-bodies", Origin::start(), 2, &yamls, |o| o);
    let r = send(&ats, Request::post("/echo/chain", "body").chunked(2).header("x-pw-test", "req-body-prefix, resp-body-append"));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    // first prepends, then second prepends to what first made.
    assert_eq!(the_request(&origin, "/echo/chain").body_str(), "<2><1>body");
    // The response: second appends first, then first.
    assert_eq!(r.body_str(), "<2><1>body</2></1>");
    assert_eq!(values(&r, "x-proxy-wasm"), vec!["second", "first"]);
}

/// Issue 12: a filter on the AssemblyScript SDK's own `onConfigure` (which
/// passes the configuration size where the size pointer belongs) starts with
/// an empty configuration.
#[test]
fn an_assemblyscript_filter_on_the_sdk_s_own_on_configure_starts_with_an_empty_configuration() {
    let yaml = as_yaml("as-sdk-configure", "sdk-configure", "");
    let (_origin, ats) = start_with("sdk-as-sdk-configure", Origin::start(), 1, &[("as.yaml", yaml)], |o| o);
    let r = send(&ats, Request::get("/page"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("sdk-configure")), "{}", ats.log_report());
    assert!(!ats.diags_log().contains("trapped"), "{}", ats.log_report());
}

// ------------------------------------------------------------------ the SDK matrix

/// Every build of the test filters (tests/sdk_builds: each Rust SDK release,
/// each AssemblyScript SDK release, the C filter) on Traffic Server: a
/// representative subset of the cases above, each build with an empty and a
/// non-empty configuration. One Traffic Server per build, with the build on
/// two remap rules: host `empty.test` (configuration empty), host `conf.test`
/// (configuration non-empty, callouts to a second origin).
///
/// Rust-SDK protocol: headers on both sides, a local response, request and
/// response body edits, an `http_call`, shared data, the configuration read.
/// as-filter protocol: tags and the configuration echo, local responses by
/// path and header, the configured path and status. The empty rule's
/// as-filter plugin has root_id `as-filter` (with the SDK 0.1.8 build this is
/// issue 12's empty-configuration trap).
mod sdk_matrix {
    use super::*;

    /// The filter build `wasm` on both rules, in front of [`shared_origin`];
    /// callouts of the `conf.test` plugin go to the returned second origin.
    pub struct Matrix {
        pub origin: Origin,
        pub callout: Origin,
        pub ats: TrafficServer,
    }

    pub fn start(test: &str, wasm: &str, empty: (&str, &str), conf: impl FnOnce(u16) -> (String, String)) -> Matrix {
        e2e::ats::require_plugin_so();
        let origin = shared_origin();
        let callout = Origin::with_handler(|req| origin::Response::text(200, format!("pong {}", req.path)).header("x-callout", "yes"));
        let port = origin.port();
        let (conf_root_id, conf_configuration) = conf(callout.port());
        let remap = format!(
            "map http://empty.test/ http://127.0.0.1:{port}/ @plugin=proxy_wasm_ats.so @pparam=empty.yaml\n\
             map http://conf.test/ http://127.0.0.1:{port}/ @plugin=proxy_wasm_ats.so @pparam=conf.yaml\n"
        );
        let ats = TrafficServer::start(
            AtsOptions::new(test)
                .origin(port)
                .exec_threads(2)
                .remap_config(remap)
                .file("empty.yaml", plugin_yaml("empty", wasm, empty.0, empty.1, "", ""))
                .file("conf.yaml", plugin_yaml("conf", wasm, &conf_root_id, &conf_configuration, "", "")),
        );
        Matrix { origin, callout, ats }
    }

    /// A request to the rule with the empty configuration.
    pub fn empty(path: &str) -> Request {
        Request::get(path).host("empty.test")
    }

    /// A request to the rule with the non-empty configuration.
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
        let r = send(&m.ats, empty("/defaults").header("x-pw-test", "config"));
        assert_eq!(r.status, 200, "{}", m.ats.log_report());
        assert_eq!(r.header("x-proxy-wasm"), Some(BUILD.tag));
        assert_eq!(r.header("x-pw-config-size"), Some("0"));
        assert_eq!(r.header("x-pw-config-tag"), Some(BUILD.tag));
        assert_eq!(r.body_str(), "hello from origin");
    }

    #[test]
    fn a_non_empty_configuration_is_read() {
        let m = matrix();
        let r = send(&m.ats, conf("/configured").header("x-pw-test", "config"));
        assert_eq!(r.status, 200, "{}", m.ats.log_report());
        assert_eq!(r.header("x-proxy-wasm"), Some("matrix"));
        assert_eq!(r.header("x-pw-config-tag"), Some("matrix"));
        assert_eq!(r.header("x-pw-config-authority"), Some("callout.test"));
    }

    #[test]
    fn headers_are_added_replaced_and_removed_on_both_sides() {
        let m = matrix();
        let r = send(&m.ats, empty("/h").header("x-pw-test", "headers").header("x-pw-echo", "echo me").header("x-pw-remove", "x"));
        assert_eq!(r.status, 200, "{}", m.ats.log_report());
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
        let r = send(&m.ats, empty("/local").header("x-pw-test", "local"));
        assert_eq!(r.status, 403, "{}", m.ats.log_report());
        assert_eq!(r.body_str(), "denied by rust-sdk-filter");
        assert_eq!(r.header("x-pw-local"), Some("request-headers"));
        assert!(m.origin.requests().iter().all(|q| q.path != "/local"));
    }

    #[test]
    fn request_and_response_bodies_are_edited() {
        let m = matrix();
        let req = Request::post("/echo/body", "hello world").host("conf.test").header("x-pw-test", "req-body-upper req-body-prefix resp-body-append");
        let r = send(&m.ats, req);
        assert_eq!(r.status, 200, "{}", m.ats.log_report());
        assert_eq!(the_request(&m.origin, "/echo/body").body_str(), "<<HELLO WORLD");
        assert_eq!(r.body_str(), "<<HELLO WORLD[/pw]");
    }

    #[test]
    fn an_http_call_answer_resumes_the_request() {
        let m = matrix();
        let r = send(&m.ats, conf("/call").header("x-pw-test", "http-call"));
        assert_eq!(r.status, 200, "{}", m.ats.log_report());
        assert_eq!(r.header("x-pw-callout-status"), Some("200"));
        assert_eq!(r.header("x-pw-callout-body"), Some("pong /callout"));
        assert_eq!(the_request(&m.origin, "/call").header("x-pw-callout-body"), Some("pong /callout"));
        assert!(m.callout.requests().iter().any(|q| q.method == "POST" && q.header("x-pw-callout") == Some("1")));
    }

    #[test]
    fn shared_data_counts_across_requests() {
        let m = matrix();
        let key = format!("matrix.{}", BUILD.name);
        let first = send(&m.ats, empty("/s1").header("x-pw-test", "shared").header("x-pw-key", key.as_str()));
        let second = send(&m.ats, empty("/s2").header("x-pw-test", "shared").header("x-pw-key", key.as_str()));
        assert_eq!((first.header("x-pw-shared"), second.header("x-pw-shared")), (Some("1"), Some("2")), "{}", m.ats.log_report());
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
        let r = send(&m.ats, empty("/page"));
        assert_eq!(r.status, 200, "{}", m.ats.log_report());
        assert_eq!(r.header("x-proxy-wasm"), Some(BUILD.tag));
        assert_eq!(r.header("x-as-config"), None);
        assert_eq!(the_request(&m.origin, "/page").header("x-as-filter"), Some(BUILD.tag));
    }

    #[test]
    fn with_an_empty_configuration_its_local_path_and_header_are_answered_locally() {
        let m = matrix();
        for req in [empty("/as-local?x=1"), empty("/other-local").header("x-as-local", "yes")] {
            let r = send(&m.ats, req);
            assert_eq!(r.status, 403, "{}", m.ats.log_report());
            assert_eq!(r.body_str(), "local response from as-filter\n");
            assert_eq!((r.header("x-as-local"), r.header("x-proxy-wasm"), r.header("content-type")), (Some("1"), Some(BUILD.tag), Some("text/plain")));
        }
        assert!(m.origin.requests().iter().all(|q| q.path != "/as-local?x=1" && q.path != "/other-local"));
    }

    #[test]
    fn a_non_empty_configuration_sets_tag_local_path_and_status() {
        let m = matrix();
        let r = send(&m.ats, conf("/as-local"));
        assert_eq!(r.status, 200, "the default local path is proxied once reconfigured\n{}", m.ats.log_report());
        assert_eq!(r.header("x-proxy-wasm"), Some("matrix"));
        assert_eq!(r.header("x-as-config"), Some("tag=matrix;local_path=/deny;local_status=451"));
        let r = send(&m.ats, conf("/deny"));
        assert_eq!((r.status, r.header("x-proxy-wasm")), (451, Some("matrix")));
    }
    }
    }
}
