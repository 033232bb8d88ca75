//! The NGINX module end to end: a real nginx (master + 2 workers) on
//! 127.0.0.1 with `ngx_http_proxy_wasm_module.so`, a real origin, a real
//! client, and the test plugins (protocol in tests/plugins/README.md).

mod e2e;

use std::time::Duration;

use e2e::client::Request;
use e2e::nginx::{Nginx, NginxOptions};
use e2e::origin::{Origin, Response};

const WAIT: Duration = Duration::from_secs(5);

/// A plugin YAML for one of build/plugins/*.wasm.
fn plugin_yaml(name: &str, wasm: &str, configuration: &str, extra: &str) -> String {
    format!(
        r#"- config:
    name: "{name}"
    configuration: '{configuration}'
{extra}    authorizations:
      allowed_hosts: ["*"]
    vm_config:
      vm_id: "{name}_vm"
      code:
        local:
          filename: "@REPO@/build/plugins/{wasm}"
"#
    )
}

fn rust_filter(name: &str, configuration: &str) -> String {
    plugin_yaml(name, "rust_sdk_filter.wasm", configuration, "")
}

/// nginx with `plugins.yaml` (the given plugins), `proxy_wasm <chain>` in
/// the http block, and `location /` proxying to the origin.
fn start(test: &str, yaml: &str, http_chain: &[&str], origin: &Origin, locations: &str) -> Nginx {
    let mut http = String::from("proxy_wasm_config @CONF@/plugins.yaml;\n");
    for p in http_chain {
        http.push_str(&format!("proxy_wasm {p};\n"));
    }
    Nginx::start(NginxOptions::new(test).origin(origin.port()).file("plugins.yaml", yaml).http(http).server(format!(
        "{locations}\nlocation / {{ proxy_pass http://127.0.0.1:@ORIGIN_PORT@; proxy_set_header Host $host; }}"
    )))
}

fn must(n: &Nginx, req: Request) -> e2e::client::Response {
    n.send(&req).unwrap_or_else(|e| panic!("{e}\n{}", n.log_report()))
}

#[test]
fn the_module_loads_and_every_response_passes_the_filter() {
    let origin = Origin::start();
    let n = start("ngx-default", &rust_filter("rust", ""), &["rust"], &origin, "");
    let resp = must(&n, Request::get("/hello"));
    assert_eq!(resp.status, 200, "{}", n.log_report());
    assert_eq!(resp.body_str(), "hello from origin");
    assert_eq!(resp.header("x-proxy-wasm"), Some("rust-sdk"), "{}", n.log_report());
    assert_eq!(origin.wait_for_requests(1, WAIT)[0].path, "/hello");
    assert_eq!(n.worker_pids().len(), 2, "master plus 2 workers");
    assert_eq!(n.error_log().matches("[proxy_wasm] plugins started in worker").count(), 2, "{}", n.log_report());
}

#[test]
fn request_and_response_headers_are_read_and_rewritten_with_pseudo_headers() {
    let origin = Origin::with_handler(|_| {
        Response::text(200, "ok").header("x-pw-resp-remove", "x").header("content-type", "text/x-origin")
    });
    let n = start("ngx-headers", &rust_filter("rust", r#"{"tag":"ngx"}"#), &["rust"], &origin, "");
    let resp = must(
        &n,
        Request::get("/h?q=1")
            .host("example.test")
            .header("x-pw-test", "headers, pseudo")
            .header("x-pw-echo", "echo me")
            .header("x-pw-remove", "gone"),
    );
    assert_eq!(resp.status, 200, "{}", n.log_report());
    let seen = &origin.wait_for_requests(1, WAIT)[0];
    assert_eq!(seen.header("x-pw-added"), Some("1"));
    assert_eq!(seen.header_all("x-pw-multi"), vec!["a", "b"]);
    assert_eq!(seen.header("x-pw-replace"), Some("replaced"));
    assert!(!seen.has_header("x-pw-remove"), "the origin must not see a removed header");
    assert_eq!(resp.header("x-pw-echo"), Some("echo me"));
    assert_eq!(resp.header("x-pw-echo-upper"), Some("echo me"));
    assert_eq!(resp.header("x-pw-missing"), Some("(none)"));
    assert_eq!(resp.header("x-pw-remove-readback"), Some("(none)"));
    assert_eq!(resp.header("x-pw-multi-readback"), Some("a,b"));
    assert_eq!(resp.header("x-pw-req-header-count"), resp.header("x-pw-req-header-count-param"));
    assert_eq!(resp.header("x-pw-method"), Some("GET"));
    assert_eq!(resp.header("x-pw-path"), Some("/h?q=1"));
    assert_eq!(resp.header("x-pw-authority"), Some("example.test"));
    assert_eq!(resp.header("x-pw-scheme"), Some("http"));
    assert_eq!(resp.header("x-pw-status"), Some("200"));
    assert_eq!(resp.header("x-pw-resp-content-type"), Some("text/x-origin"));
    assert_eq!(resp.header("x-pw-resp-added"), Some("1"));
    assert_eq!(resp.header("x-pw-resp-replace"), Some("replaced"));
    assert!(!resp.has_header("x-pw-resp-remove"), "the client must not see a removed response header");
    assert_eq!(resp.header("x-proxy-wasm"), Some("ngx"));
}

#[test]
fn a_local_response_from_request_headers_never_reaches_the_origin() {
    let origin = Origin::start();
    let n = start("ngx-local", &rust_filter("rust", ""), &["rust"], &origin, "");
    let resp = must(
        &n,
        Request::get("/deny")
            .header("x-pw-test", "local")
            .header("x-pw-local-status", "418")
            .header("x-pw-local-body", "no tea"),
    );
    assert_eq!(resp.status, 418, "{}", n.log_report());
    assert_eq!(resp.body_str(), "no tea");
    assert_eq!(resp.header("x-pw-local"), Some("request-headers"));
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    origin.assert_no_new_requests(Duration::from_millis(300));
}

#[test]
fn a_local_response_from_response_headers_replaces_the_origin_response() {
    let origin = Origin::start();
    let n = start("ngx-local-resp", &rust_filter("rust", ""), &["rust"], &origin, "");
    let resp =
        must(&n, Request::get("/r").header("x-pw-test", "local-resp-headers").header("x-pw-local-status", "451"));
    assert_eq!(resp.status, 451, "{}", n.log_report());
    assert_eq!(resp.body_str(), "replaced response by rust-sdk-filter");
    assert_eq!(resp.header("x-pw-local"), Some("response-headers"));
    assert_eq!(origin.wait_for_requests(1, WAIT).len(), 1);
}

/// Response callbacks run for a local response sent from a request phase,
/// as Envoy runs its encoder filters on a local reply: for the plugins that
/// saw the request (the one that answered included: the Rust filter guards
/// with `local_sent`), not for those after it, which never saw it.
#[test]
fn a_local_response_from_the_request_phase_goes_through_the_response_callbacks_of_the_plugins_that_saw_the_request() {
    let origin = Origin::start();
    let yaml = plugin_yaml("observer", "trap.wasm", "none", "") + &rust_filter("rust", "");
    let locations = "location /observed { proxy_wasm observer; proxy_wasm rust; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }\n\
                     location /unseen { proxy_wasm rust; proxy_wasm observer; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }";
    let n = start("ngx-local-response-callbacks", &yaml, &[], &origin, locations);
    let count = |text: &str| n.error_log().matches(text).count();
    let r = must(
        &n,
        Request::get("/observed")
            .header("x-pw-test", "local")
            .header("x-pw-local-status", "418")
            .header("x-pw-local-body", "no tea"),
    );
    assert_eq!((r.status, r.body_str().as_str()), (418, "no tea"), "{}", n.log_report());
    assert!(e2e::wait_until(WAIT, || count("observer: on_response_body ctx=") == 1), "{}", n.log_report());
    assert_eq!(
        (count("observer: on_request_headers ctx="), count("observer: on_response_headers ctx=")),
        (1, 1),
        "{}",
        n.log_report()
    );
    let r = must(
        &n,
        Request::get("/unseen")
            .header("x-pw-test", "local")
            .header("x-pw-local-status", "418")
            .header("x-pw-local-body", "no tea"),
    );
    assert_eq!((r.status, r.body_str().as_str()), (418, "no tea"), "{}", n.log_report());
    assert!(e2e::wait_until(WAIT, || count("observer: on_log ctx=") == 2), "{}", n.log_report());
    assert_eq!(
        (count("observer: on_request_headers ctx="), count("observer: on_response_headers ctx=")),
        (1, 1),
        "the observer never saw the second request\n{}",
        n.log_report()
    );
    origin.assert_no_new_requests(Duration::from_millis(300));
}

fn two_filters() -> String {
    rust_filter("a", r#"{"tag":"tag-a"}"#) + &rust_filter("b", r#"{"tag":"tag-b"}"#)
}

#[test]
fn a_location_chain_runs_in_order_and_replaces_the_inherited_one() {
    let origin = Origin::start();
    let locations = "location /both { proxy_wasm a; proxy_wasm b; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }\n\
                     location /only-b { proxy_wasm b; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }\n\
                     location /none { proxy_wasm off; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }";
    let n = start("ngx-chains", &two_filters(), &["a"], &origin, locations);
    let inherited = must(&n, Request::get("/inherited"));
    assert_eq!(inherited.header_all("x-proxy-wasm"), vec!["tag-a"], "{}", n.log_report());
    let both = must(&n, Request::get("/both"));
    // Response callbacks run last plugin first: b adds its header before a.
    assert_eq!(both.header_all("x-proxy-wasm"), vec!["tag-b", "tag-a"], "{}", n.log_report());
    let only_b = must(&n, Request::get("/only-b"));
    assert_eq!(only_b.header_all("x-proxy-wasm"), vec!["tag-b"]);
    let none = must(&n, Request::get("/none"));
    assert_eq!(none.status, 200);
    assert!(none.header_all("x-proxy-wasm").is_empty(), "proxy_wasm off clears the chain");
    // In a chain, a's local response stops the chain before b.
    let local = must(&n, Request::get("/both").header("x-pw-test", "local"));
    assert_eq!(local.status, 403);
    assert_eq!(origin.wait_for_requests(4, WAIT).len(), 4);
}

#[test]
fn a_trap_answers_503_and_the_worker_keeps_serving() {
    let origin = Origin::start();
    let trap = plugin_yaml("trap", "trap.wasm", "request_headers", "    failure_policy: reload\n");
    let yaml = trap + &rust_filter("rust", "");
    let locations = "location /trap { proxy_wasm trap; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }";
    let n = start("ngx-trap", &yaml, &["rust"], &origin, locations);
    let first = must(&n, Request::get("/trap"));
    assert_eq!(first.status, 503, "{}", n.log_report());
    n.expect_log("[proxy_wasm] trap: proxy_on_request_headers trapped", WAIT);
    for i in 0..4 {
        let ok = must(&n, Request::get(&format!("/ok{i}")));
        assert_eq!(ok.status, 200, "{}", n.log_report());
        assert_eq!(ok.header("x-proxy-wasm"), Some("rust-sdk"));
    }
    // A fresh instance runs (and traps again) for the next /trap request.
    assert_eq!(must(&n, Request::get("/trap")).status, 503);
    assert!(
        origin.requests().iter().all(|r| !r.path.starts_with("/trap")),
        "a trapped request never reaches the origin"
    );
}

#[test]
fn nginx_t_reports_yaml_errors_with_file_and_key() {
    let broken = "- config:\n    name: \"x\"\n    vm_config:\n      code:\n        local:\n          filename: 42\n          bogus_key: 1\n";
    let out = Nginx::test_only(
        NginxOptions::new("ngx-t-yaml").file("plugins.yaml", broken).http("proxy_wasm_config @CONF@/plugins.yaml;"),
    );
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("plugins.yaml"), "the error names the file: {text}");
    assert!(text.contains("proxy_wasm_config"), "{text}");
    assert!(text.contains("nginx.conf:"), "nginx adds the directive's place: {text}");
}

#[test]
fn nginx_t_reports_module_errors_and_unknown_plugin_names() {
    let yaml = plugin_yaml("nomark", "no_marker.wasm", "", "");
    let out = Nginx::test_only(
        NginxOptions::new("ngx-t-wasm").file("plugins.yaml", yaml).http("proxy_wasm_config @CONF@/plugins.yaml;"),
    );
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("nomark") && text.contains("no_marker.wasm"),
        "the error names the plugin and module: {text}"
    );

    let out = Nginx::test_only(
        NginxOptions::new("ngx-t-name")
            .file("plugins.yaml", rust_filter("rust", ""))
            .http("proxy_wasm_config @CONF@/plugins.yaml;\nproxy_wasm nosuch;"),
    );
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("no plugin named \"nosuch\""), "{text}");

    let out = Nginx::test_only(
        NginxOptions::new("ngx-t-ok")
            .file("plugins.yaml", rust_filter("rust", ""))
            .http("proxy_wasm_config @CONF@/plugins.yaml;\nproxy_wasm rust;"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn body_server(test: &str) -> (Origin, Nginx) {
    let origin = Origin::with_handler(|req| Response::echo(req));
    let n = start(test, &rust_filter("rust", ""), &["rust"], &origin, "");
    (origin, n)
}

#[test]
fn a_small_request_body_is_rewritten_before_the_origin_sees_it() {
    let (origin, n) = body_server("ngx-req-body");
    let resp = must(
        &n,
        Request::post("/echo", "hello world").header("x-pw-test", "req-body-upper, req-body-prefix, req-body-append"),
    );
    assert_eq!(resp.status, 200, "{}", n.log_report());
    let seen = &origin.wait_for_requests(1, WAIT)[0];
    assert_eq!(seen.body_str(), "[pw]HELLO WORLD[/pw]");
    assert_eq!(seen.header("content-length"), Some("20"), "the length follows the edited body");
    assert_eq!(resp.body_str(), "[pw]HELLO WORLD[/pw]");
}

#[test]
fn a_1_mib_request_body_is_rewritten_whole() {
    let (origin, n) = body_server("ngx-req-1m");
    let body = e2e::pattern_body(1 << 20);
    let resp = must(
        &n,
        Request::post("/echo", body.clone()).header("x-pw-test", "req-body-upper").timeout(Duration::from_secs(30)),
    );
    assert_eq!(resp.status, 200, "{}", n.log_report());
    let seen = &origin.wait_for_requests(1, WAIT)[0];
    assert_eq!(seen.body, body.to_ascii_uppercase());
}

#[test]
fn a_chunked_request_body_is_rewritten_and_sent_with_a_length() {
    let (origin, n) = body_server("ngx-req-chunked");
    let resp = must(
        &n,
        Request::post("/echo", "hello chunked world").chunked(4).header("x-pw-test", "req-body-prefix, body-info"),
    );
    assert_eq!(resp.status, 200, "{}", n.log_report());
    assert_eq!(resp.header("x-pw-req-headers-eos"), Some("false"));
    assert_eq!(resp.header("x-pw-req-body-eos-calls"), Some("1"), "exactly one body callback carries end_of_stream");
    let seen = &origin.wait_for_requests(1, WAIT)[0];
    assert_eq!(seen.body_str(), "[pw]hello chunked world");
}

#[test]
fn headers_report_end_of_stream_only_without_a_body() {
    let (_origin, n) = body_server("ngx-eos");
    let resp = must(&n, Request::get("/echo").header("x-pw-test", "body-info"));
    assert_eq!(resp.header("x-pw-req-headers-eos"), Some("true"), "{}", n.log_report());
}

#[test]
fn response_bodies_are_rewritten_small_1_mib_and_chunked() {
    let big = e2e::pattern_body(1 << 20);
    let big2 = big.clone();
    let origin = Origin::with_handler(move |req| match req.path_only() {
        "/small" => Response::text(200, "hello world"),
        "/big" => Response::new(200).body(big2.clone()),
        _ => Response::new(200).body("chunky response body").chunked(3),
    });
    let n = start("ngx-resp-body", &rust_filter("rust", ""), &["rust"], &origin, "");
    let small =
        must(&n, Request::get("/small").header("x-pw-test", "resp-body-upper, resp-body-prefix, resp-body-append"));
    assert_eq!(small.body_str(), "[pw]HELLO WORLD[/pw]", "{}", n.log_report());
    let big_resp =
        must(&n, Request::get("/big").header("x-pw-test", "resp-body-upper").timeout(Duration::from_secs(30)));
    assert_eq!(big_resp.body.len(), big.len());
    assert!(big_resp.body == big.to_ascii_uppercase(), "1 MiB response body upper-cased");
    let chunked = must(&n, Request::get("/chunked").header("x-pw-test", "resp-body-append"));
    assert_eq!(chunked.body_str(), "chunky response body[/pw]");
    let untouched = must(&n, Request::get("/chunked"));
    assert_eq!(untouched.body_str(), "chunky response body");
}

#[test]
fn a_request_paused_in_on_request_headers_resumes_from_a_tick() {
    let origin = Origin::start();
    let n = start("ngx-tick-resume", &rust_filter("rust", r#"{"tick_ms":50}"#), &["rust"], &origin, "");
    let resp = must(&n, Request::get("/t").header("x-pw-test", "tick-resume"));
    assert_eq!(resp.status, 200, "{}", n.log_report());
    assert_eq!(resp.header("x-pw-resumed-by"), Some("tick"));
    assert_eq!(origin.wait_for_requests(1, WAIT)[0].header("x-pw-resumed-by"), Some("tick"));
}

#[test]
fn a_continue_inside_the_callback_that_pauses_is_deferred() {
    let origin = Origin::start();
    let n = start("ngx-reentrant", &rust_filter("rust", ""), &["rust"], &origin, "");
    let resp = must(&n, Request::get("/r").header("x-pw-test", "resume-reentrant"));
    assert_eq!(resp.status, 200, "{}", n.log_report());
    assert_eq!(resp.header("x-pw-resume-reentrant"), Some("1"));
}

#[test]
fn a_request_paused_in_on_request_headers_resumes_from_on_queue_ready() {
    let origin = Origin::start();
    let n = start("ngx-queue-resume", &rust_filter("rust", ""), &["rust"], &origin, "");
    let resp = must(&n, Request::get("/q").header("x-pw-test", "queue-resume"));
    assert_eq!(resp.status, 200, "{}", n.log_report());
    assert_eq!(resp.header("x-pw-enqueue"), Some("OK"));
    assert_eq!(resp.header("x-pw-resumed-by"), Some("queue"));
}

#[test]
fn a_local_response_after_the_request_body_is_read() {
    let (origin, n) = body_server("ngx-local-body");
    let resp = must(&n, Request::post("/echo", "0123456789").header("x-pw-test", "local-req-body"));
    assert_eq!(resp.status, 403, "{}", n.log_report());
    assert_eq!(resp.body_str(), "request body had 10 bytes");
    origin.assert_no_new_requests(Duration::from_millis(200));
}

fn callout_server(test: &str) -> (Origin, Nginx) {
    let origin = Origin::with_handler(|req| {
        if req.path_only() == "/callout" {
            Response::text(200, "pong")
        } else {
            Response::hello()
        }
    });
    let yaml = rust_filter(
        "rust",
        &format!(r#"{{"upstream":"127.0.0.1:{}","fail_upstream":"127.0.0.1:1","fail_timeout_ms":500}}"#, origin.port()),
    );
    let n = start(test, &yaml, &["rust"], &origin, "");
    (origin, n)
}

#[test]
fn http_call_pauses_the_request_until_its_answer_arrives_on_the_event_loop() {
    let (origin, n) = callout_server("ngx-http-call");
    let resp = must(&n, Request::get("/c").header("x-pw-test", "http-call"));
    assert_eq!(resp.status, 200, "{}", n.log_report());
    assert_eq!(resp.header("x-pw-callout-dispatch"), Some("OK"));
    assert_eq!(resp.header("x-pw-callout-status"), Some("200"));
    assert_eq!(resp.header("x-pw-callout-body"), Some("pong"));
    let reqs = origin.wait_for_requests(2, WAIT);
    let callout = reqs.iter().find(|r| r.path == "/callout").expect("callout target reached");
    assert_eq!(callout.method, "POST");
    assert_eq!(callout.body_str(), "ping from rust-sdk-filter");
    let main = reqs.iter().find(|r| r.path == "/c").expect("origin reached");
    assert_eq!(main.header("x-pw-callout-status"), Some("200"));
}

#[test]
fn a_failed_http_call_calls_back_with_zero_headers() {
    let (_origin, n) = callout_server("ngx-http-call-fail");
    let resp = must(&n, Request::get("/f").header("x-pw-test", "http-call-fail"));
    assert_eq!(resp.status, 200, "{}", n.log_report());
    assert_eq!(resp.header("x-pw-callout-dispatch"), Some("OK"));
    assert_eq!(resp.header("x-pw-callout-failed"), Some("1"));
}

#[test]
fn two_hundred_concurrent_requests_each_make_an_http_call() {
    let (origin, n) = callout_server("ngx-http-call-200");
    let port = n.port();
    let threads: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                Request::get(&format!("/p{i}"))
                    .header("x-pw-test", "http-call")
                    .timeout(Duration::from_secs(60))
                    .send(port)
            })
        })
        .collect();
    let mut ok = 0;
    for t in threads {
        let resp = t.join().expect("client thread").unwrap_or_else(|e| panic!("{e}"));
        if resp.status == 200 && resp.header("x-pw-callout-status") == Some("200") {
            ok += 1;
        }
    }
    assert_eq!(ok, 200, "{}", n.log_report());
    assert_eq!(origin.wait_for_requests(400, Duration::from_secs(30)).len(), 400);
}

#[test]
fn the_assemblyscript_filter_and_an_abi_0_1_0_module_run() {
    let origin = Origin::start();
    let yaml = plugin_yaml("as", "as_filter.wasm", "", "") + &plugin_yaml("old", "abi_0_1_0.wasm", "abi-0.1.0", "");
    let locations = "location /as { proxy_wasm as; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }\n\
                     location /old { proxy_wasm old; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }";
    let n = start("ngx-as-abi010", &yaml, &[], &origin, locations);
    let as_resp = must(&n, Request::get("/as"));
    assert_eq!(as_resp.status, 200, "{}", n.log_report());
    assert_eq!(as_resp.header("x-proxy-wasm"), Some("assemblyscript"), "{}", n.log_report());
    assert_eq!(origin.wait_for_requests(1, WAIT)[0].header("x-as-filter"), Some("assemblyscript"));
    let old = must(&n, Request::get("/old"));
    assert_eq!(old.status, 200, "{}", n.log_report());
    n.expect_log("config=abi-0.1.0", WAIT);
}

#[test]
fn a_reload_with_broken_yaml_keeps_the_old_workers_serving_while_requests_flow() {
    let origin = Origin::start();
    let n = start("ngx-reload", &rust_filter("rust", r#"{"tag":"v1"}"#), &["rust"], &origin, "");
    let port = n.port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let load = std::thread::spawn(move || {
        let (mut ok, mut failed) = (0, Vec::new());
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            match Request::get("/flow").send(port) {
                Ok(r) if r.status == 200 => ok += 1,
                Ok(r) => failed.push(format!("status {}", r.status)),
                Err(e) => failed.push(e.to_string()),
            }
        }
        (ok, failed)
    });
    std::thread::sleep(Duration::from_millis(300));
    n.rewrite_file("plugins.yaml", "- config: [broken\n");
    // `nginx -s reload` reads the configuration first: it prints the error and signals nothing.
    let out = n.signal("reload");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && text.contains("plugins.yaml") && text.contains("invalid YAML"), "{text}");
    // SIGHUP straight to the master: it logs the error and keeps the old workers.
    n.hup();
    n.expect_log("invalid YAML", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(must(&n, Request::get("/still")).header("x-proxy-wasm"), Some("v1"), "old workers keep serving");
    // A fixed file is picked up by the next reload.
    n.rewrite_file("plugins.yaml", &rust_filter("rust", r#"{"tag":"v2"}"#));
    let out = n.signal("reload");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        e2e::wait_until(Duration::from_secs(20), || Request::get("/new")
            .send(port)
            .ok()
            .and_then(|r| r.header("x-proxy-wasm").map(str::to_string))
            .as_deref()
            == Some("v2")),
        "{}",
        n.log_report()
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().expect("load thread");
    assert!(ok > 10, "requests flowed during the reloads ({ok})");
    assert!(failed.is_empty(), "no request failed during the reloads: {failed:?}\n{}", n.log_report());
}

#[test]
fn a_response_paused_in_on_response_headers_resumes_when_the_http_call_answers() {
    let (_origin, n) = callout_server("ngx-pause-resp-headers");
    let resp = must(&n, Request::get("/rh").header("x-pw-test", "http-call-response"));
    assert_eq!(resp.status, 200, "{}", n.log_report());
    assert_eq!(resp.body_str(), "hello from origin");
    assert_eq!(resp.header("x-pw-callout-status"), Some("200"), "{}", n.log_report());
}

#[test]
fn bodies_paused_at_their_end_resume_when_the_http_call_answers() {
    let origin = Origin::with_handler(|req| {
        if req.path_only() == "/callout" {
            Response::text(200, "pong")
        } else {
            Response::echo(req)
        }
    });
    let yaml = rust_filter("rust", &format!(r#"{{"upstream":"127.0.0.1:{}"}}"#, origin.port()));
    let n = start("ngx-pause-bodies", &yaml, &["rust"], &origin, "");
    let resp = must(&n, Request::post("/echo", "request body").header("x-pw-test", "http-call-req-body"));
    assert_eq!(resp.status, 200, "{}", n.log_report());
    let seen = origin.wait_for_requests(2, WAIT).into_iter().find(|r| r.path == "/echo").expect("origin reached");
    assert_eq!(seen.body_str(), "request body[callout:200]");
    // Answered from the callout instead: the origin never gets the request.
    let resp = must(
        &n,
        Request::post("/echo/held", "request body")
            .header("x-pw-test", "http-call-req-body")
            .header("x-pw-body-callout-local", "1"),
    );
    assert_eq!((resp.status, resp.body_str().as_str()), (200, "callout:pong"), "{}", n.log_report());
    std::thread::sleep(Duration::from_millis(200));
    assert!(!origin.requests().iter().any(|r| r.path == "/echo/held"), "the origin never got the request");
    let resp = must(&n, Request::post("/echo", "response body").header("x-pw-test", "http-call-resp-body"));
    assert_eq!(resp.body_str(), "response body[callout:200]", "{}", n.log_report());
}

/// The filter with `pause_timeout: 1s`; callouts go to the origin's
/// `/callout`, which answers after 3 s (within the callout's own timeout).
fn pause_timeout_server(test: &str) -> (Origin, Nginx) {
    let origin = Origin::with_handler(|req| {
        if req.path_only() == "/callout" {
            return Response::text(200, "late pong").delay(Duration::from_secs(3));
        }
        e2e::origin::default_handler(req)
    });
    let yaml = plugin_yaml(
        "rust",
        "rust_sdk_filter.wasm",
        &format!(r#"{{"upstream":"127.0.0.1:{}","callout_timeout_ms":10000}}"#, origin.port()),
        "    pause_timeout: 1s\n",
    );
    let n = start(test, &yaml, &["rust"], &origin, "");
    (origin, n)
}

#[test]
fn a_request_a_plugin_never_continues_gets_504_after_its_pause_timeout() {
    let (origin, n) = pause_timeout_server("ngx-pause-timeout-request");
    // Waits for a body callback that never comes while its headers are paused.
    let t0 = std::time::Instant::now();
    let r = must(
        &n,
        Request::post("/never", "a body").header("x-pw-test", "resume-in-body").timeout(Duration::from_secs(10)),
    );
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (504, "the request waited too long for a plugin\n"),
        "{}",
        n.log_report()
    );
    assert!(t0.elapsed() < Duration::from_secs(4), "answered after {:?}", t0.elapsed());
    assert!(
        n.error_log().contains(
            "rust: kept the request headers paused for 1s (pause_timeout) without continuing it; answering 504"
        ),
        "{}",
        n.log_report()
    );
    // Paused on an http_call slower than the pause timeout, then the late
    // answer continues a finished stream: 504, and nothing breaks.
    let r = must(&n, Request::get("/slow-call").header("x-pw-test", "http-call").timeout(Duration::from_secs(10)));
    assert_eq!(r.status, 504, "{}", n.log_report());
    // The request body paused at its end.
    let r = must(
        &n,
        Request::post("/req-body", "request body")
            .header("x-pw-test", "http-call-req-body")
            .timeout(Duration::from_secs(10)),
    );
    assert_eq!(r.status, 504, "{}", n.log_report());
    assert!(n.error_log().contains("rust: kept the request body paused for 1s (pause_timeout)"), "{}", n.log_report());
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !origin.requests().iter().any(|q| ["/never", "/slow-call", "/req-body"].contains(&q.path.as_str())),
        "the origin never got the timed-out requests"
    );
    let r = must(&n, Request::get("/after"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("rust-sdk")), "{}", n.log_report());
}

#[test]
fn a_response_paused_past_the_pause_timeout_is_replaced_by_504_or_cut_off() {
    let (_origin, n) = pause_timeout_server("ngx-pause-timeout-response");
    let r = must(&n, Request::get("/resp").header("x-pw-test", "http-call-response").timeout(Duration::from_secs(10)));
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (504, "the request waited too long for a plugin\n"),
        "{}",
        n.log_report()
    );
    assert!(
        n.error_log().contains("rust: kept the response headers paused for 1s (pause_timeout)"),
        "{}",
        n.log_report()
    );
    // The response body, after its header went out: the response is cut off.
    let r =
        n.send(&Request::get("/resp-body").header("x-pw-test", "http-call-resp-body").timeout(Duration::from_secs(10)));
    let e = r.map(|r| (r.status, r.body_str())).expect_err("the client sees the response cut off");
    assert!(e.to_string().contains("connection closed"), "{e}");
    assert!(
        n.error_log().contains(
            "rust: kept the response body paused for 1s (pause_timeout) without continuing it; aborting the response"
        ),
        "{}",
        n.log_report()
    );
    std::thread::sleep(Duration::from_millis(2500));
    let r = must(&n, Request::get("/after"));
    assert_eq!(r.status, 200, "{}", n.log_report());
}
