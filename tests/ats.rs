//! The Traffic Server plugin end to end: a real traffic_server on 127.0.0.1
//! with `proxy_wasm_ats.so` in plugin.config, a real origin, a real client, and
//! the Rust-SDK test filter (protocol in tests/plugins/README.md).

mod e2e;

use std::time::Duration;

use e2e::ats::{AtsOptions, TrafficServer};
use e2e::client::Request;
use e2e::origin::Origin;

const WAIT: Duration = Duration::from_secs(5);

/// A plugin YAML in Traffic Server's own schema, for the Rust-SDK filter.
fn rust_filter_yaml(name: &str, configuration: &str) -> String {
    format!(
        r#"config:
  name: "{name}"
  rootId: ""
  configuration: '{configuration}'
  authorizations:
    allowed_hosts: ["*"]
  vmConfig:
    runtime: "ats.wasm.runtime.wasmtime"
    vmId: "{name}_vm"
    code:
      local:
        filename: "@REPO@/build/plugins/rust_sdk_filter.wasm"
"#
    )
}

fn start_with_filter(test: &str, configuration: &str) -> (Origin, TrafficServer) {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let ats = TrafficServer::start(
        AtsOptions::new(test)
            .origin(origin.port())
            .file("filter.yaml", rust_filter_yaml("rust-filter", configuration))
            .global_plugin(&["filter.yaml"]),
    );
    (origin, ats)
}

#[test]
fn every_response_passes_the_filter_and_gets_its_header() {
    let (origin, ats) = start_with_filter("ats-default", "");
    let resp = ats.get("/hello").unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(resp.status, 200, "{}", ats.log_report());
    assert_eq!(resp.body_str(), "hello from origin");
    assert_eq!(resp.header("x-proxy-wasm"), Some("rust-sdk"), "{}", ats.log_report());
    assert_eq!(origin.wait_for_requests(1, WAIT)[0].path, "/hello");
    let runtime = e2e::runtime_override().unwrap_or_else(|| "wasmtime".into());
    assert!(
        ats.diags_log().contains(&format!("loaded plugin \"rust-filter\" (ABI 0.2.1, {runtime})")),
        "{}",
        ats.log_report()
    );
}

#[test]
fn request_and_response_headers_are_read_and_rewritten() {
    let (origin, ats) = start_with_filter("ats-headers", r#"{"tag":"ats"}"#);
    let resp = ats
        .send(
            &Request::get("/h?q=1")
                .header("x-pw-test", "headers, pseudo")
                .header("x-pw-echo", "echo me")
                .header("x-pw-remove", "gone"),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(resp.status, 200, "{}", ats.log_report());
    let seen = &origin.wait_for_requests(1, WAIT)[0];
    assert_eq!(seen.header("x-pw-added"), Some("1"));
    assert_eq!(seen.header_all("x-pw-multi"), vec!["a", "b"]);
    assert_eq!(seen.header("x-pw-replace"), Some("replaced"));
    assert!(!seen.has_header("x-pw-remove"));
    assert_eq!(resp.header("x-proxy-wasm"), Some("ats"));
    assert_eq!(resp.header("x-pw-echo"), Some("echo me"));
    assert_eq!(resp.header("x-pw-echo-upper"), Some("echo me"));
    assert_eq!(resp.header("x-pw-missing"), Some("(none)"));
    assert_eq!(resp.header("x-pw-multi-readback"), Some("a,b"));
    assert_eq!(resp.header("x-pw-method"), Some("GET"));
    assert_eq!(resp.header("x-pw-path"), Some("/h?q=1"));
    assert_eq!(resp.header("x-pw-authority"), Some("example.com"));
    assert_eq!(resp.header("x-pw-scheme"), Some("http"));
    assert_eq!(resp.header("x-pw-status"), Some("200"));
    assert_eq!(resp.header("x-pw-resp-added"), Some("1"));
    assert_eq!(resp.header("x-pw-resp-content-type"), Some("text/plain"));
    assert_eq!(resp.header("x-pw-req-header-count"), resp.header("x-pw-req-header-count-param"));
}

#[test]
fn a_local_response_from_request_headers_never_reaches_the_origin() {
    let (origin, ats) = start_with_filter("ats-local", "");
    let resp = ats
        .send(
            &Request::get("/admin")
                .header("x-pw-test", "local")
                .header("x-pw-local-status", "418")
                .header("x-pw-local-body", "no tea"),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(resp.status, 418, "{}", ats.log_report());
    assert_eq!(resp.body_str(), "no tea");
    assert_eq!(resp.header("x-pw-local"), Some("request-headers"));
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    origin.assert_no_new_requests(Duration::from_millis(300));
}

#[test]
fn properties_have_envoy_names_and_encodings() {
    let (_origin, ats) = start_with_filter("ats-props", "");
    let resp = ats.send(&Request::get("/p/x?y=2").header("x-pw-test", "properties").header("x-pw-prop", "v")).unwrap();
    assert_eq!(resp.header("x-pw-prop-request-path"), Some("/p/x?y=2"));
    assert_eq!(resp.header("x-pw-prop-request-method"), Some("GET"));
    assert_eq!(resp.header("x-pw-prop-header"), Some("v"));
    assert!(
        resp.header("x-pw-prop-source-address").is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{:?}",
        resp.header("x-pw-prop-source-address")
    );
    assert!(resp.header("x-pw-prop-source-port").is_some_and(|p| p.parse::<u16>().is_ok()));
    assert_eq!(resp.header("x-pw-prop-plugin-name"), Some("rust-filter"));
    assert_eq!(resp.header("x-pw-prop-plugin-vm-id"), Some("rust-filter_vm"));
    assert_eq!(resp.header("x-pw-prop-roundtrip"), Some("round-trip"));
    assert_eq!(resp.header("x-pw-prop-response-code"), Some("200"));
}

#[test]
fn on_log_runs_once_per_transaction_after_the_response() {
    let (_origin, ats) = start_with_filter("ats-log", "");
    for i in 0..3 {
        let r = ats.get(&format!("/n{i}")).unwrap();
        assert_eq!(r.status, 200);
    }
    // on_log of a request runs after its response: read the counter with a fourth request.
    std::thread::sleep(Duration::from_millis(200));
    let r =
        ats.send(&Request::get("/count").header("x-pw-test", "shared-get").header("x-pw-key", "log.count")).unwrap();
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.body_str(), "3");
    // The same for the fourth (answered by the plugin, on a kept-alive
    // connection that the client leaves: its on_log may come a little after
    // the response).
    std::thread::sleep(Duration::from_millis(200));
    let r = ats.send(&Request::get("/last").header("x-pw-test", "shared-get").header("x-pw-key", "log.last")).unwrap();
    assert_eq!(r.body_str(), "GET /count 200");
}

#[test]
fn a_broken_yaml_is_logged_with_file_and_key_and_traffic_server_keeps_serving() {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let ats = TrafficServer::start(
        AtsOptions::new("ats-badyaml")
            .origin(origin.port())
            .file("bad.yaml", "config:\n  name: x\n  vm_config:\n    runtime: wasmedge\n    code: { local: { filename: nope.wasm } }\n# e2e: keep runtime (positions in the error)\n")
            .global_plugin(&["bad.yaml"]),
    );
    assert!(ats.wait_for_log("bad.yaml:4:14: config.vm_config.runtime", WAIT), "{}", ats.log_report());
    let r = ats.get("/still-up").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-proxy-wasm"), None);
}

fn shared_value(ats: &TrafficServer, key: &str) -> String {
    let r = ats.send(&Request::get("/shared").header("x-pw-test", "shared-get").header("x-pw-key", key)).unwrap();
    r.body_str()
}

/// Polls a shared-data key until `pred` holds (the VMs tick and dequeue on their own threads).
fn wait_shared(ats: &TrafficServer, key: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let v = shared_value(ats, key);
        if pred(&v) || std::time::Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ticks_run_at_the_period_the_plugin_asked_for() {
    let (_origin, ats) = start_with_filter("ats-ticks", r#"{"tick_ms":100}"#);
    // The thread's VMs start with its first transaction.
    assert_eq!(ats.get("/start").unwrap().status, 200);
    let ticks = wait_shared(&ats, "ticks", |v| v.parse::<u32>().is_ok_and(|n| n >= 5));
    assert!(ticks.parse::<u32>().is_ok_and(|n| n >= 5), "ticks={ticks}\n{}", ats.log_report());
}

#[test]
fn a_request_paused_in_on_request_headers_is_resumed_from_on_tick() {
    let (origin, ats) = start_with_filter("ats-tick-resume", r#"{"tick_ms":50}"#);
    let r = ats
        .send(&Request::get("/wait").header("x-pw-test", "tick-resume"))
        .unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.header("x-pw-resumed-by"), Some("tick"));
    assert_eq!(origin.wait_for_requests(1, WAIT)[0].header("x-pw-resumed-by"), Some("tick"));
}

/// As on Envoy (proxy-wasm-cpp-host turns a Pause from the headers into
/// StopAllIterationAndWatermark): the body waits with the headers, and the
/// first body callback comes after the resume, with the whole body following.
#[test]
fn the_body_of_a_request_paused_in_on_request_headers_reaches_the_plugin_after_the_resume() {
    let (origin, ats) = start_with_filter("ats-tick-resume-body", r#"{"tick_ms":50}"#);
    for (path, chunked) in [("/echo/wait-body", false), ("/echo/wait-body-chunked", true)] {
        let mut req = Request::post(path, "held with the headers").header("x-pw-test", "tick-resume");
        if chunked {
            req = req.chunked(5);
        }
        let r = ats.send(&req).unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
        assert_eq!(r.status, 200, "{}", ats.log_report());
        assert_eq!(r.header("x-pw-first-body-call-resumed-by"), Some("tick"), "chunked={chunked}");
        let seen = origin.requests().into_iter().find(|q| q.path == path).expect("the origin got the request");
        assert_eq!(
            (seen.header("x-pw-resumed-by"), seen.body_str().as_str()),
            (Some("tick"), "held with the headers"),
            "chunked={chunked}"
        );
    }
}

#[test]
fn an_enqueued_item_reaches_on_queue_ready_of_the_registering_root() {
    let (_origin, ats) = start_with_filter("ats-queue", "");
    let r =
        ats.send(&Request::get("/q").header("x-pw-test", "enqueue").header("x-pw-queue-value", "hello-ats")).unwrap();
    assert_eq!(r.header("x-pw-enqueue"), Some("OK"), "{}", ats.log_report());
    assert_eq!(r.header("x-pw-queue-resolve"), Some("OK"));
    assert_eq!(wait_shared(&ats, "queue.last", |v| v == "hello-ats"), "hello-ats", "{}", ats.log_report());
}

#[test]
fn a_request_paused_in_on_request_headers_is_resumed_from_on_queue_ready() {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    // One thread: on_queue_ready runs in the instance that holds the paused request.
    let ats = TrafficServer::start(
        AtsOptions::new("ats-queue-resume")
            .origin(origin.port())
            .exec_threads(1)
            .file("filter.yaml", rust_filter_yaml("rust-filter", ""))
            .global_plugin(&["filter.yaml"]),
    );
    let r = ats
        .send(&Request::get("/qr").header("x-pw-test", "queue-resume"))
        .unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.header("x-pw-resumed-by"), Some("queue"));
    assert_eq!(origin.wait_for_requests(1, WAIT)[0].header("x-pw-resumed-by"), Some("queue"));
}

#[test]
fn a_plugin_that_rejects_its_configuration_is_reported_at_start_up() {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let ats = TrafficServer::start(
        AtsOptions::new("ats-reject")
            .origin(origin.port())
            .file("filter.yaml", rust_filter_yaml("picky", r#"{"reject":true}"#))
            .global_plugin(&["filter.yaml"]),
    );
    assert!(ats.wait_for_log("plugin picky: proxy_on_configure returned false", WAIT), "{}", ats.log_report());
    assert_eq!(ats.get("/").unwrap().status, 200);
}

/// The filter with its callouts sent to `callout`, an origin of their own.
fn start_with_callout(test: &str, threads: usize) -> (Origin, Origin, TrafficServer) {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let callout = Origin::with_handler(|req| {
        e2e::origin::Response::text(200, format!("pong {}", req.header("x-pw-context-id").unwrap_or("?")))
            .header("x-callout", "yes")
    });
    let config = format!(
        r#"{{"upstream":"127.0.0.1:{}","authority":"callout.test","callout_timeout_ms":3000,"fail_timeout_ms":500}}"#,
        callout.port()
    );
    let ats = TrafficServer::start(
        AtsOptions::new(test)
            .origin(origin.port())
            .exec_threads(threads)
            .file("filter.yaml", rust_filter_yaml("rust-filter", &config))
            .global_plugin(&["filter.yaml"]),
    );
    (origin, callout, ats)
}

#[test]
fn http_call_pauses_the_request_and_its_answer_resumes_it() {
    let (origin, callout, ats) = start_with_callout("ats-callout", 2);
    let r = ats
        .send(&Request::get("/c").header("x-pw-test", "http-call"))
        .unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.header("x-pw-callout-dispatch"), Some("OK"));
    assert_eq!(r.header("x-pw-callout-status"), Some("200"));
    let seen_by_callout = &callout.wait_for_requests(1, WAIT)[0];
    assert_eq!(seen_by_callout.method, "POST");
    assert_eq!(seen_by_callout.path, "/callout");
    assert_eq!(seen_by_callout.header("host"), Some("callout.test"));
    assert_eq!(seen_by_callout.header("x-pw-callout"), Some("1"));
    assert_eq!(seen_by_callout.body_str(), "ping from rust-sdk-filter");
    let id = seen_by_callout.header("x-pw-context-id").unwrap().to_string();
    assert_eq!(r.header("x-pw-callout-body"), Some(format!("pong {id}").as_str()));
    let seen_by_origin = &origin.wait_for_requests(1, WAIT)[0];
    assert_eq!(seen_by_origin.header("x-pw-callout-status"), Some("200"));
    assert_eq!(seen_by_origin.header("x-pw-callout-body"), Some(format!("pong {id}").as_str()));
}

#[test]
fn a_failed_http_call_still_calls_back_with_zero_headers() {
    let (origin, _callout, ats) = start_with_callout("ats-callout-fail", 2);
    let r = ats
        .send(&Request::get("/f").header("x-pw-test", "http-call-fail"))
        .unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(r.header("x-pw-callout-dispatch"), Some("OK"));
    assert_eq!(r.header("x-pw-callout-failed"), Some("1"));
    assert_eq!(r.header("x-pw-callout-get-status"), Some("503"));
    assert_eq!(origin.wait_for_requests(1, WAIT)[0].header("x-pw-callout-failed"), Some("1"));
}

#[test]
fn a_local_response_can_answer_from_the_http_call_callback() {
    let (origin, _callout, ats) = start_with_callout("ats-callout-local", 2);
    let r = ats
        .send(&Request::get("/l").header("x-pw-test", "http-call-local"))
        .unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert!(r.body_str().starts_with("callout:pong "), "{}", r.body_str());
    origin.assert_no_new_requests(Duration::from_millis(300));
}

#[test]
fn two_hundred_concurrent_requests_paused_on_http_call_are_all_answered_correctly() {
    let (origin, callout, ats) = start_with_callout("ats-callout-200", 2);
    let port = ats.port();
    let handles: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                let r = Request::get(&format!("/c/{i}"))
                    .header("x-pw-test", "http-call")
                    .timeout(Duration::from_secs(20))
                    .send(port);
                (i, r)
            })
        })
        .collect();
    for h in handles {
        let (i, r) = h.join().unwrap();
        let r = r.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.header("x-pw-callout-status"), Some("200"), "request {i}");
        assert!(r.header("x-pw-callout-body").is_some_and(|b| b.starts_with("pong ")), "request {i}");
    }
    assert_eq!(callout.request_count(), 200);
    assert_eq!(origin.request_count(), 200);
    // Each client request was resumed with the answer to its own callout.
    for req in origin.requests() {
        let body = req.header("x-pw-callout-body").unwrap();
        assert!(callout.requests().iter().any(|c| format!("pong {}", c.header("x-pw-context-id").unwrap()) == body));
    }
}

#[test]
fn remap_plugins_filter_only_their_rule_and_run_after_global_ones() {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let port = origin.port();
    let remap = format!(
        "map http://filtered.test/ http://127.0.0.1:{port}/ @plugin=proxy_wasm_ats.so @pparam=route.yaml\nmap / http://127.0.0.1:{port}/\n"
    );
    let ats = TrafficServer::start(
        AtsOptions::new("ats-remap")
            .origin(port)
            .remap_config(remap)
            .file("route.yaml", rust_filter_yaml("route-filter", r#"{"tag":"route"}"#))
            .file("global.yaml", rust_filter_yaml("global-filter", r#"{"tag":"global"}"#))
            .global_plugin(&["global.yaml"]),
    );
    let filtered =
        ats.send(&Request::get("/a").host("filtered.test")).unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(filtered.status, 200, "{}", ats.log_report());
    let tags: Vec<&str> =
        filtered.headers.iter().filter(|(k, _)| k == "x-proxy-wasm").map(|(_, v)| v.as_str()).collect();
    // Within one configuration response callbacks run in reverse order; across the
    // global set and a rule's set, Traffic Server runs the hooks in the order they
    // were added, global first.
    assert_eq!(tags, vec!["global", "route"], "{:?}", filtered.headers);
    let other = ats.send(&Request::get("/b").host("other.test")).unwrap();
    let tags: Vec<&str> = other.headers.iter().filter(|(k, _)| k == "x-proxy-wasm").map(|(_, v)| v.as_str()).collect();
    assert_eq!(tags, vec!["global"]);
    // A local response from the rule's plugin.
    let local = ats.send(&Request::get("/deny").host("filtered.test").header("x-pw-test", "local")).unwrap();
    assert_eq!(local.status, 403);
    assert_eq!(origin.request_count(), 2);
}

#[test]
fn a_remap_rule_whose_yaml_is_broken_answers_503_and_names_the_key() {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let port = origin.port();
    let remap = format!("map http://broken.test/ http://127.0.0.1:{port}/ @plugin=proxy_wasm_ats.so @pparam=broken.yaml\nmap / http://127.0.0.1:{port}/\n");
    let ats = TrafficServer::start(
        AtsOptions::new("ats-remap-broken").origin(port).remap_config(remap).file("broken.yaml", "config:\n  name: b\n  vm_config:\n    vm_idd: x\n    code: { local: { filename: nope.wasm } }\n# e2e: keep runtime (positions in the error)\n"),
    );
    assert!(
        ats.wait_for_log("broken.yaml:4:5: config.vm_config: unknown key \"vm_idd\"", WAIT),
        "{}",
        ats.log_report()
    );
    assert_eq!(ats.send(&Request::get("/").host("broken.test")).unwrap().status, 503);
    assert_eq!(ats.send(&Request::get("/").host("fine.test")).unwrap().status, 200);
}

#[test]
fn request_and_response_bodies_are_rewritten_small_and_1_mib_and_chunked() {
    let (origin, ats) = start_with_filter("ats-bodies", "");
    // Small, request: upper-case, with prefix and suffix; the origin echoes.
    let r = ats
        .send(
            &Request::post("/echo", "hello world")
                .header("x-pw-test", "req-body-upper, req-body-prefix, req-body-append"),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(r.status, 200, "{}", ats.log_report());
    assert_eq!(origin.wait_for_requests(1, WAIT)[0].body_str(), "[pw]HELLO WORLD[/pw]");
    assert_eq!(r.body_str(), "[pw]HELLO WORLD[/pw]");
    // Small, response.
    origin.clear();
    let r = ats.send(&Request::get("/x").header("x-pw-test", "resp-body-upper")).unwrap();
    assert_eq!(r.body_str(), "HELLO FROM ORIGIN");
    // 1 MiB request body, sent chunked, upper-cased on the way to the origin; and
    // the 1 MiB echo upper-cased again on the way back (a no-op on upper case).
    origin.clear();
    let big: Vec<u8> = (0..(1 << 20)).map(|i| b"abcdefghijklmnopqrstuvwxyz\n"[i % 27]).collect();
    let r = ats
        .send(
            &Request::post("/echo/big", big.clone())
                .chunked(64 * 1024)
                .header("x-pw-test", "req-body-upper, resp-body-splice")
                .timeout(Duration::from_secs(20)),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(r.status, 200);
    let upper = big.to_ascii_uppercase();
    let seen = &origin.wait_for_requests(1, WAIT)[0];
    assert_eq!(seen.body.len(), upper.len());
    assert!(seen.body == upper, "the origin got the upper-cased 1 MiB body");
    let mut spliced = upper.clone();
    spliced[1] = b'-';
    spliced[2] = b'-';
    assert_eq!(r.body.len(), spliced.len());
    assert!(r.body == spliced, "the client got the spliced 1 MiB body");
}

#[test]
fn body_callbacks_see_the_cumulative_size_and_end_of_stream_once() {
    let (_origin, ats) = start_with_filter("ats-body-info", "");
    let body: Vec<u8> = vec![b'x'; 200_000];
    let r = ats
        .send(&Request::post("/echo", body).chunked(10_000).header("x-pw-test", "body-info"))
        .unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-pw-req-headers-eos"), Some("false"));
    assert_eq!(r.header("x-pw-req-body-eos-calls"), Some("1"));
    // The filter lets each chunk through (Continue), so each call reports that chunk.
    let calls: u32 = r.header("x-pw-req-body-calls").unwrap().parse().unwrap();
    assert!(calls >= 1, "{calls}");
    let last: u32 = r.header("x-pw-req-body-last-size").unwrap().parse().unwrap();
    assert!(last > 0 && last <= 200_000, "{last}");
    // Buffering with Pause until the end: the last call reports the whole body.
    let r = ats
        .send(&Request::post("/echo", vec![b'y'; 200_000]).chunked(10_000).header("x-pw-test", "sizes"))
        .unwrap_or_else(|e| panic!("{e}\n{}", ats.log_report()));
    assert_eq!(r.header("x-pw-req-body-size-param"), Some("200000"));
    assert_eq!(r.header("x-pw-req-body-buffer-status"), Some("OK 200000"));
    let no_body = ats.send(&Request::get("/g").header("x-pw-test", "body-info")).unwrap();
    assert_eq!(no_body.header("x-pw-req-headers-eos"), Some("true"));
}

#[test]
fn plugin_metrics_are_traffic_server_stats() {
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let ats = TrafficServer::start(
        AtsOptions::new("ats-metrics")
            .origin(origin.port())
            .file("filter.yaml", rust_filter_yaml("rust-filter", r#"{"metric_prefix":"pwtest"}"#))
            .plugin_config("stats_over_http.so\n")
            .global_plugin(&["filter.yaml"]),
    );
    for _ in 0..3 {
        let r = ats.send(&Request::get("/m").header("x-pw-test", "metrics").header("x-pw-metric-value", "7")).unwrap();
        assert_eq!(r.header("x-pw-metric-ops"), Some("OK OK OK OK"), "{}", ats.log_report());
    }
    let counter = r#""proxy_wasm.pwtest.requests": "3""#;
    let deadline = std::time::Instant::now() + WAIT;
    let mut stats = String::new();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let _ = ats.get("/sync"); // a closing transaction copies the metrics
        stats = ats.get("/_stats").unwrap().body_str();
        if stats.contains(counter) {
            break;
        }
    }
    assert!(
        stats.contains(counter),
        "{}",
        stats.lines().filter(|l| l.contains("proxy_wasm")).collect::<Vec<_>>().join("\n")
    );
    assert!(
        stats.contains(r#""proxy_wasm.pwtest.gauge": "6""#),
        "{}",
        stats.lines().filter(|l| l.contains("proxy_wasm")).collect::<Vec<_>>().join("\n")
    );
    assert!(stats.contains(r#""proxy_wasm.pwtest.histogram.count": "3""#));
    assert!(stats.contains(r#""proxy_wasm.pwtest.histogram.sum": "21""#));
}
