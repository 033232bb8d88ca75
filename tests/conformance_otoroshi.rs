//! Otoroshi WASM plugin entities on both servers (`for_each_server!`), written once: the Wasmo
//! templates built with the AssemblyScript and the Rust PDK, exported as Otoroshi's admin API
//! gives them (examples/otoroshi/*.json, pasted under `wasm_plugins:`), in one chain with a
//! Proxy-Wasm filter; an entity importing what it is not granted does not load.
//!
//! Run with `make ats nginx && cargo test --test conformance_otoroshi` (and with
//! `E2E_RUNTIME=wamr`: the `otoroshi.runtime` line is rewritten like a plugin's `runtime`).

mod e2e;

use std::time::Duration;

use e2e::client::{Request, Response};
use e2e::origin::{self, Origin};
use e2e::server::{Kind, ServerUnderTest, Setup};

/// The Rust-SDK test filter `pw` (tag `pw`: it adds `x-proxy-wasm: pw` to responses of requests
/// with `x-pw-test: headers`).
fn filter_yaml() -> String {
    "- config:\n    name: \"pw\"\n    configuration: '{\"tag\":\"pw\"}'\n    vm_config:\n      vm_id: \"pw_vm\"\n      runtime: wasmtime\n      code:\n        local:\n          filename: \"@REPO@/build/plugins/rust_sdk_filter.wasm\"\n".to_string()
}

/// The entity of examples/otoroshi/`example`.json, its module built by `pdk` (`as` or `rust`,
/// or `module` instead when given), in our YAML: `otoroshi:` settings and the export pasted
/// unchanged under `wasm_plugins:`. Returns its id and the file's text.
fn entity(example: &str, pdk: &str, module: Option<&str>) -> (String, String) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("examples/otoroshi").join(format!("{example}.json"))).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let path = doc["config"]["source"]["path"].as_str().unwrap().to_owned();
    let file = match module {
        Some(m) => m.to_owned(),
        None => std::path::Path::new(&path)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace("otoroshi_as_", &format!("otoroshi_{pdk}_")),
    };
    doc["config"]["source"]["path"] = format!("@REPO@/build/plugins/{file}").into();
    let id = doc["id"].as_str().unwrap().to_owned();
    let yaml = format!("otoroshi:\n  runtime: wasmtime\n  callback_timeout: 2s\nwasm_plugins:\n  - {doc}\n");
    (id, yaml)
}

/// The filter `pw`, then the entity, in front of `origin`, one worker.
fn start<S: ServerUnderTest>(test: &str, origin: &Origin, example: &str, pdk: &str) -> (String, S) {
    let (id, yaml) = entity(example, pdk, None);
    let s = S::start(
        Setup::new(&format!("{test}-{pdk}"), origin.port()).workers(1).plugin("pw", filter_yaml()).plugin(&id, yaml),
    );
    (id, s)
}

fn send<S: ServerUnderTest>(s: &S, req: Request) -> Response {
    s.send(&req.timeout(Duration::from_secs(20))).unwrap_or_else(|e| panic!("{}: {e}\n{}", S::NAME, s.log_report()))
}

const PDKS: [&str; 2] = ["as", "rust"];

/// An entity for the step plugin of `pdk` (`otoroshi_<pdk>.wasm`, every step under Otoroshi's
/// default name: tests/plugins/otoroshi/README.md) that lists `steps`, with no `functionName`.
fn step_entity(pdk: &str, steps: &[&str]) -> (String, String) {
    let (id, yaml) = entity("backend", pdk, Some(&format!("otoroshi_{pdk}.wasm")));
    let steps = serde_json::to_string(steps).unwrap();
    let yaml = yaml
        .replace(r#""functionName":"execute""#, r#""functionName":null"#)
        .replace(r#""steps":["CallBackend"]"#, &format!(r#""steps":{steps}"#));
    assert!(yaml.contains(&steps) && yaml.contains(r#""functionName":null"#), "{yaml}");
    (id, yaml)
}

/// The step plugin of `pdk` as a Router (id `<backend's id>-router`) whose routes
/// (`/routed/<name>...`) go to 127.0.0.1:`target`.
fn router_entity(pdk: &str, target: u16) -> (String, String) {
    let (id, yaml) = step_entity(pdk, &["Router"]);
    let yaml = yaml.replace(r#""config":{}"#, &format!(r#""config":{{"route_target":"127.0.0.1:{target}"}}"#));
    let router = format!("{id}-router");
    let yaml = yaml.replace(&format!(r#""id":"{id}""#), &format!(r#""id":"{router}""#));
    assert!(yaml.contains("route_target") && yaml.contains(&router), "{yaml}");
    (router, yaml)
}

/// The step plugin of `pdk` as a Job (id `<backend's id>-job`, name `job-<pdk>`) scheduled by
/// `otoroshi.jobs` every `interval`.
fn job_entity(pdk: &str, interval: &str) -> (String, String) {
    let (id, yaml) = step_entity(pdk, &["Job"]);
    let job = format!("{id}-job");
    let yaml = yaml
        .replace(&format!(r#""id":"{id}""#), &format!(r#""id":"{job}""#))
        .replace(r#""name":"Wasmo backend""#, &format!(r#""name":"job-{pdk}""#))
        .replace("wasm_plugins:", &format!("  jobs:\n    - {{ plugin: {job}, interval: {interval} }}\nwasm_plugins:"));
    assert!(yaml.contains(&format!("name\":\"job-{pdk}")) && yaml.contains("jobs:"), "{yaml}");
    (job, yaml)
}

/// The step plugin's tag (its answers carry `x-otoroshi-wasm: <tag>`).
fn tag(pdk: &str) -> &'static str {
    if pdk == "as" {
        "assemblyscript"
    } else {
        "rust"
    }
}

e2e::server::for_each_server! {

#[test]
fn access_control_templates_allow_and_deny() {
    let origin = Origin::start();
    for pdk in PDKS {
        let (_, s) = start::<Server>("oto-access", &origin, "access-control", pdk);
        let r = send(&s, Request::get("/allowed").header("foo", "bar").header("x-pw-test", "headers"));
        assert_eq!(r.status, 200, "{pdk}\n{}", s.log_report());
        assert_eq!(r.header("x-proxy-wasm"), Some("pw"), "the Proxy-Wasm filter of the same chain ran");
        let before = origin.request_count();
        let r = send(&s, Request::get("/denied").header("foo", "baz").header("accept", "application/json"));
        assert_eq!(r.status, 401, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        assert!(r.body_str().contains("not authorized"), "{pdk}: {}", r.body_str());
        assert_eq!(r.header("otoroshi-error"), Some("true"));
        assert_eq!(origin.request_count(), before, "a denied request never reaches the origin");
        s.assert_nothing_died();
    }
}

#[test]
fn pre_route_templates_answer_or_let_the_request_go_on() {
    let origin = Origin::start();
    for pdk in PDKS {
        let (_, s) = start::<Server>("oto-pre-route", &origin, "pre-route", pdk);
        assert_eq!(send(&s, Request::get("/in").header("bar", "foo")).status, 200, "{pdk}\n{}", s.log_report());
        let r = send(&s, Request::get("/out"));
        assert_eq!((r.status, r.body_str().as_str()), (401, "you're not authorized"), "{pdk}\n{}", s.log_report());
    }
}

#[test]
fn request_transformer_templates_rewrite_what_the_origin_receives() {
    let origin = Origin::start();
    for (pdk, body, content_type) in [("as", r#"{"foo":"bar"}"#, "application/json"), ("rust", "Text plain content", "text/plain")] {
        let (_, s) = start::<Server>("oto-transform-request", &origin, "request-transformer", pdk);
        let r = send(&s, Request::put(&format!("/transform-{pdk}"), "original body").header("content-type", "text/plain"));
        assert_eq!(r.status, 200, "{pdk}\n{}", s.log_report());
        let seen = origin.wait_for_path(&format!("/transform-{pdk}"), Duration::from_secs(5));
        assert_eq!(seen.body_str(), body, "{pdk}");
        // Traffic Server too: its request transform changes the server request, which goes
        // upstream once the transform has the whole body (docs/otoroshi.md).
        assert_eq!(seen.method, "POST", "{pdk}");
        assert_eq!(seen.header("OTOROSHI_WASM_PLUGIN_ID"), Some("OTOROSHI_WASM_REQUEST_TRANSFORMER"), "{pdk}");
        assert_eq!(seen.header("content-type"), Some(content_type), "{pdk}");
        assert_eq!(seen.body_str(), body, "{pdk}");
    }
}

#[test]
fn response_transformer_templates_rewrite_what_the_client_receives() {
    let origin = Origin::with_handler(|_| origin::Response::text(404, "<h1>from the origin</h1>"));
    for (pdk, body) in [("as", r#"{"foo":"bar"}"#), ("rust", r#"{ "foo": "bar" }"#)] {
        let (_, s) = start::<Server>("oto-transform-response", &origin, "response-transformer", pdk);
        let r = send(&s, Request::get("/page").header("x-pw-test", "headers"));
        assert_eq!(r.status, 200, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        assert_eq!(r.header("OTOROSHI_WASM_PLUGIN_ID"), Some("OTOROSHI_WASM_RESPONSE_TRANSFORMER"), "{pdk}");
        assert_eq!(r.body_str(), body, "{pdk}");
        if Server::KIND == Kind::TrafficServer {
            // Traffic Server runs the filter's on_response_headers when the origin's header
            // arrives and the transformer at the end of the body (the client's header waits for
            // it): the transformer's headers (the request's, as the template does) replace what
            // the filter added.
            assert_eq!(r.header("x-proxy-wasm"), None, "{pdk}");
            continue;
        }
        assert_eq!(r.header("x-proxy-wasm"), Some("pw"), "the filter saw the transformed headers");
    }
}

#[test]
fn an_opa_policy_and_a_pre_1_0_plugin_alone_in_their_chains() {
    let origin = Origin::start();
    for (example, allow, deny, status) in [
        ("opa-policy", ("foo", "bar"), ("foo", "nope"), 403),
        ("legacy-abi", ("x-other", "1"), ("x-deny", "1"), 403),
    ] {
        let (id, yaml) = entity(example, "as", Some(if example == "opa-policy" { "opa_policy.wasm" } else { "extism_legacy_abi.wasm" }));
        // Only the entity: no Proxy-Wasm plugin in the configuration.
        let s = <Server as ServerUnderTest>::start(Setup::new(&format!("oto-{example}"), origin.port()).workers(1).plugin(&id, yaml));
        assert_eq!(send(&s, Request::get("/in").header(allow.0, allow.1)).status, 200, "{example}\n{}", s.log_report());
        let r = send(&s, Request::get("/out").header(deny.0, deny.1).header("accept", "application/json"));
        assert_eq!(r.status, status, "{example}: {}\n{}", r.body_str(), s.log_report());
        s.assert_nothing_died();
    }
}

#[test]
fn an_entity_in_the_chain_of_one_host_only() {
    // NGINX: a `server` for the host with `proxy_wasm pw; proxy_wasm <id>;`; Traffic Server: a
    // remap rule for the host with both YAML files as `@pparam`s.
    let origin = Origin::start();
    let (id, yaml) = entity("access-control", "rust", None);
    let setup = Setup::new("oto-route", origin.port())
        .workers(1)
        .plugin("pw", filter_yaml())
        .plugin(&id, yaml)
        .route("guarded.example", &["pw", &id])
        .default_route(&[]);
    let s = <Server as ServerUnderTest>::start(setup);
    let r = send(&s, Request::get("/a").host("guarded.example").header("foo", "nope"));
    assert_eq!(r.status, 401, "{}\n{}", r.body_str(), s.log_report());
    let r = send(&s, Request::get("/b").host("guarded.example").header("foo", "bar").header("x-pw-test", "headers"));
    assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("pw")), "{}", s.log_report());
    assert_eq!(send(&s, Request::get("/c").host("open.example").header("foo", "nope")).status, 200);
}

#[test]
fn backend_templates_answer_instead_of_the_origin() {
    let origin = Origin::start();
    for pdk in PDKS {
        let (_, s) = start::<Server>("oto-backend", &origin, "backend", pdk);
        let before = origin.request_count();
        let r = send(&s, Request::get("/backend"));
        assert_eq!(r.status, 200, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        assert!(r.body_str().contains("This HTML comes from the Wasmo plugin"), "{pdk}: {}", r.body_str());
        assert_eq!(r.header("foo"), Some("bar"), "{pdk}");
        let r = send(&s, Request::post("/backend", "a request body").header("content-type", "text/plain"));
        assert_eq!(r.status, 200, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        assert!(r.body_str().contains("This HTML comes from the Wasmo plugin"), "{pdk}");
        assert_eq!(origin.request_count(), before, "{pdk}: the origin is never called");
    }
}

#[test]
fn an_endless_loop_ends_that_call_only_under_the_failure_policy() {
    let origin = Origin::start();
    let (id, yaml) = entity("access-control", "as", Some("extism_hostile.wasm"));
    let yaml = yaml.replace("callback_timeout: 2s", "callback_timeout: 200ms").replace(r#""functionName":"execute""#, r#""functionName":"spin""#);
    let s = <Server as ServerUnderTest>::start(Setup::new("oto-spin", origin.port()).workers(1).plugin("pw", filter_yaml()).plugin(&id, yaml));
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let r = send(&s, Request::get("/spin"));
        assert_eq!(r.status, 503, "fail_closed\n{}", s.log_report());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // Traffic Server writes its log after the answer may have left.
    s.expect_log("time limit exceeded", Duration::from_secs(5));
    assert_eq!(origin.request_count(), 0);
    s.assert_nothing_died();
}

#[test]
fn an_entity_importing_what_it_is_not_granted_is_a_load_error() {
    let origin = Origin::start();
    let (id, yaml) = entity("access-control", "as", Some("otoroshi_link_plugin_map_write.wasm"));
    let setup = Setup::new("oto-denied", origin.port()).workers(1).plugin(&id, yaml);
    let expected = "env.proxy_plugin_map_set, which needs config.authorizations.pluginMapAccess.write: true";
    match Server::KIND {
        // nginx refuses the configuration (nginx -t says why).
        Kind::Nginx => {
            let err = std::panic::catch_unwind(|| <Server as ServerUnderTest>::start(setup)).err().expect("nginx does not start");
            let message = err.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(message.contains(expected), "{message}");
        }
        // Traffic Server logs the configuration error and serves without these plugins.
        Kind::TrafficServer => {
            let s = <Server as ServerUnderTest>::start(setup);
            s.expect_log(expected, Duration::from_secs(5));
        }
    }
}

#[test]
fn handles_request_answers_every_request_of_its_chain_instead_of_the_origin() {
    let origin = Origin::start();
    for pdk in PDKS {
        let (id, yaml) = step_entity(pdk, &["HandlesRequest"]);
        let s = <Server as ServerUnderTest>::start(Setup::new(&format!("oto-handles-{pdk}"), origin.port()).workers(1).plugin("pw", filter_yaml()).plugin(&id, yaml));
        let before = origin.request_count();
        let r = send(&s, Request::get("/handled?a=b").header("x-pw-test", "headers"));
        assert_eq!(r.status, 200, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        assert_eq!(r.body_str(), format!("{} handle_request: GET /handled body=", tag(pdk)), "{pdk}");
        assert_eq!(r.header("x-otoroshi-step"), Some("handle_request"), "{pdk}");
        assert_eq!(r.header("x-backend-method"), Some("GET"), "{pdk}");
        assert_eq!(r.header("content-type"), Some("text/plain"), "{pdk}");
        // The input's request carries the body (`request.request_body_bytes`).
        let r = send(&s, Request::post("/handled", "a request body").header("content-type", "text/plain").header("x-backend-status", "201").header("x-add-cookie", "handled=yes"));
        assert_eq!(r.status, 201, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        assert_eq!(r.body_str(), format!("{} handle_request: POST /handled body=a request body", tag(pdk)), "{pdk}");
        assert!(r.header("set-cookie").is_some_and(|c| c.starts_with("handled=yes")), "{pdk}: {:?}", r.headers);
        // A failed call is Otoroshi's 500 with the error; the next request is answered again.
        let r = send(&s, Request::get("/handled").header("x-fail", "handle_request").header("accept", "application/json"));
        assert_eq!(r.status, 500, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        assert!(r.body_str().contains("forced failure in handle_request"), "{pdk}: {}", r.body_str());
        assert_eq!(send(&s, Request::get("/again")).status, 200, "{pdk}");
        assert_eq!(origin.request_count(), before, "{pdk}: the origin is never called");
        s.assert_nothing_died();
    }
}

/// A route for `known.example` (no plugin), and the sink `id` for every other request.
fn start_with_sink(test: &str, origin: &Origin, id: &str, yaml: String) -> Server {
    let setup = Setup::new(test, origin.port()).workers(1).plugin(id, yaml).route("known.example", &[]).sink(&[id]);
    <Server as ServerUnderTest>::start(setup)
}

#[test]
fn sink_templates_answer_the_requests_no_route_matched() {
    let origin = Origin::start();
    for pdk in PDKS {
        let (id, yaml) = entity("sink", pdk, None);
        let s = start_with_sink(&format!("oto-sink-{pdk}"), &origin, &id, yaml);
        let r = send(&s, Request::get("/page").host("known.example"));
        assert_eq!(r.status, 200, "{pdk}: a routed request reaches the origin\n{}", s.log_report());
        let before = origin.request_count();
        let r = send(&s, Request::get("/nowhere").host("unknown.example").header("x-probe", "1"));
        // Wasmo's templates differ: AssemblyScript answers 200 with `body_json`, Rust 404 with
        // `body_str` and the request's headers.
        let (status, body) = match pdk {
            "as" => (200, r#"{"WASM_SINK_RESPONSE":"Unknown path and domain for /nowhere"}"#),
            _ => (404, r#"{ "WASM_SINK_RESPONSE": "Unknown path and domain for /nowhere" }"#),
        };
        assert_eq!((r.status, r.body_str().as_str()), (status, body), "{pdk}\n{}", s.log_report());
        assert_eq!(r.header("content-type"), Some("application/json"), "{pdk}");
        if pdk == "rust" {
            assert_eq!(r.header("x-probe"), Some("1"), "the Rust template answers with the request's headers");
        }
        assert_eq!(origin.request_count(), before, "{pdk}: the sink answered, not the origin");
        s.assert_nothing_died();
    }
}

#[test]
fn a_sink_says_why_and_one_that_does_not_match_lets_the_request_go_on() {
    let origin = Origin::start();
    for pdk in PDKS {
        let (id, yaml) = step_entity(pdk, &["Sink"]);
        let s = start_with_sink(&format!("oto-sink-steps-{pdk}"), &origin, &id, yaml);
        let before = origin.request_count();
        let r = send(&s, Request::get("/lost").host("unknown.example").header("x-sink-status", "410").header("x-check-context", "1"));
        assert_eq!(r.status, 410, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        let report: serde_json::Value = serde_json::from_str(&r.body_str()).unwrap_or_else(|e| panic!("{pdk}: {e}: {}", r.body_str()));
        assert_eq!(report["sink"], tag(pdk));
        assert_eq!(report["path"], "/lost");
        assert_eq!((report["origin"].as_str(), report["status"].as_u64()), (Some("NgReverseProxy"), Some(404)), "{pdk}");
        assert_eq!(report["message"], "route not found");
        assert_eq!(r.header("x-otoroshi-step"), Some("sink_handle"), "{pdk}");
        assert_eq!(origin.request_count(), before, "{pdk}");
        // `sink_matches` answers false: the request goes on to what the server does without the
        // sink: NGINX's `return 404` in the sink's location, Traffic Server's catch-all rule's
        // origin.
        let r = send(&s, Request::get("/passed").host("unknown.example").header("x-sink", "no"));
        match Server::KIND {
            Kind::Nginx => {
                assert_eq!(r.status, 404, "{pdk}: {}\n{}", r.body_str(), s.log_report());
                assert!(r.body_str().contains("nginx"), "{pdk}: nginx's own 404: {}", r.body_str());
                assert_eq!(origin.request_count(), before, "{pdk}");
            }
            Kind::TrafficServer => {
                assert_eq!(r.status, 200, "{pdk}: {}\n{}", r.body_str(), s.log_report());
                origin.wait_for_path("/passed", Duration::from_secs(5));
            }
        }
        s.assert_nothing_died();
    }
}

#[test]
fn match_route_templates_guard_the_route_of_their_chain() {
    let origin = Origin::start();
    for pdk in PDKS {
        let (_, s) = start::<Server>("oto-match", &origin, "route-matcher", pdk);
        let r = send(&s, Request::get("/matched").header("foo", "bar").header("x-pw-test", "headers"));
        assert_eq!((r.status, r.header("x-proxy-wasm")), (200, Some("pw")), "{pdk}: {}\n{}", r.body_str(), s.log_report());
        origin.wait_for_path("/matched", Duration::from_secs(5));
        let before = origin.request_count();
        let r = send(&s, Request::get("/unmatched").header("foo", "baz").header("accept", "application/json"));
        assert_eq!(r.status, 404, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        assert_eq!(r.body_str(), r#"{"Otoroshi-Error":"route not found"}"#, "{pdk}");
        assert_eq!(r.header("otoroshi-error"), Some("true"));
        assert_eq!(origin.request_count(), before, "{pdk}: a request the route does not match never reaches its origin");
        s.assert_nothing_died();
    }
}


#[test]
fn a_job_starts_then_runs_periodically() {
    let origin = Origin::start();
    for pdk in PDKS {
        let (id, yaml) = job_entity(pdk, "200ms");
        let s = <Server as ServerUnderTest>::start(Setup::new(&format!("oto-job-{pdk}"), origin.port()).workers(1).plugin(&id, yaml));
        // The step plugin logs each call with its count (an Extism var of the instance).
        let line = |step: &str, n: u32| format!("otoroshi plugin job-{pdk}: {} {step} #{n}", tag(pdk));
        s.expect_log(&line("job_start", 1), Duration::from_secs(10));
        s.expect_log(&line("job_run", 3), Duration::from_secs(20));
        assert!(!s.logs().contains(&line("job_start", 2)), "job_start runs once\n{}", s.log_report());
        // Requests are served meanwhile.
        assert_eq!(send(&s, Request::get("/while-jobs-run")).status, 200);
        s.assert_nothing_died();
    }
}

#[test]
fn a_job_that_names_no_job_entity_is_a_configuration_error() {
    let origin = Origin::start();
    let (id, yaml) = step_entity("as", &["Job"]);
    // An entity that does not list Job, then one that does not exist.
    for (yaml, expected) in [
        (
            yaml.replace("wasm_plugins:", "  jobs:\n    - { plugin: nope, interval: 1s }\nwasm_plugins:"),
            r#"otoroshi.jobs[0].plugin: no Otoroshi entity "nope" in this configuration; expected the id of an entity listing the step Job"#,
        ),
        (
            yaml.replace(r#""steps":["Job"]"#, r#""steps":["ValidateAccess"]"#).replace("wasm_plugins:", &format!("  jobs:\n    - {{ plugin: {id}, interval: 1s }}\nwasm_plugins:")),
            "otoroshi.jobs[0].plugin: entity",
        ),
    ] {
        let setup = Setup::new("oto-job-error", origin.port()).workers(1).plugin(&id, yaml);
        match Server::KIND {
            Kind::Nginx => {
                let err = std::panic::catch_unwind(|| <Server as ServerUnderTest>::start(setup)).err().expect("nginx does not start");
                let message = err.downcast_ref::<String>().cloned().unwrap_or_default();
                assert!(message.contains(&format!("{id}.yaml:5: {expected}")), "{message}");
            }
            Kind::TrafficServer => {
                let s = <Server as ServerUnderTest>::start(setup);
                s.expect_log(&format!("{id}.yaml:5: {expected}"), Duration::from_secs(5));
            }
        }
    }
}

}

/// NGINX: `$proxy_wasm_match_<id>` in a `map`, `$proxy_wasm_route_<id>` in `proxy_pass`; the
/// entities are in `proxy_wasm_config` only, in no chain.
#[test]
fn nginx_routing_variables_from_match_route_and_router() {
    use e2e::nginx::{Nginx, NginxOptions};
    let origin = Origin::start();
    let routed = Origin::start();
    for pdk in PDKS {
        let (matcher, matcher_yaml) = entity("route-matcher", pdk, None);
        let (router, router_yaml) = router_entity(pdk, routed.port());
        let var = |id: &str| {
            id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect::<String>()
        };
        let opts = NginxOptions::new(&format!("oto-vars-{pdk}"))
            .workers(1)
            .origin(origin.port())
            .file("matcher.yaml", matcher_yaml.replace("otoroshi:\n  runtime: wasmtime\n  callback_timeout: 2s\n", ""))
            .file("router.yaml", router_yaml)
            .http("proxy_wasm_config @CONF@/router.yaml @CONF@/matcher.yaml;")
            .http(format!("map $proxy_wasm_match_{} $matched {{ 1 yes; default no; }}", var(&matcher)))
            .server(format!(
                "location /routed/ {{ if ($proxy_wasm_route_{r} = \"\") {{ return 404 \"no route\"; }} proxy_pass http://$proxy_wasm_route_{r}; }}\n\
                 location / {{ add_header x-matched $matched always; proxy_pass http://127.0.0.1:@ORIGIN_PORT@; }}",
                r = var(&router)
            ));
        let s = Nginx::start(opts);
        let send = |req: Request| {
            req.timeout(Duration::from_secs(20)).send(s.port()).unwrap_or_else(|e| panic!("{e}\n{}", s.log_report()))
        };
        let r = send(Request::get("/page").header("foo", "bar"));
        assert_eq!(
            (r.status, r.header("x-matched")),
            (200, Some("yes")),
            "{pdk}: {}\n{}",
            r.body_str(),
            s.log_report()
        );
        let r = send(Request::get("/page").header("foo", "baz"));
        assert_eq!((r.status, r.header("x-matched")), (200, Some("no")), "{pdk}\n{}", s.log_report());
        let before = origin.request_count();
        let r = send(Request::get("/routed/svc/x"));
        assert_eq!(r.status, 200, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        let seen = routed.wait_for_path("/routed/svc/x", Duration::from_secs(5));
        assert_eq!(seen.method, "GET");
        assert_eq!(origin.request_count(), before, "{pdk}: the found route's target answered");
        let r = send(Request::get("/routed/"));
        assert_eq!(
            (r.status, r.body_str().as_str()),
            (404, "no route"),
            "{pdk}: find_route found nothing\n{}",
            s.log_report()
        );
        assert!(!s.error_log().contains("[error]"), "{}", s.log_report());
    }
}

/// Traffic Server: a remap rule whose entity lists Router goes to the found route's first target;
/// without a route, to the rule's own target.
#[test]
fn ats_router_gives_the_remap_rule_its_target() {
    use e2e::ats::TrafficServer;
    let origin = Origin::start();
    let routed = Origin::start();
    for pdk in PDKS {
        let (id, yaml) = router_entity(pdk, routed.port());
        let setup = Setup::new(&format!("oto-router-{pdk}"), origin.port())
            .workers(1)
            .plugin(&id, yaml)
            .route("routed.example", &[&id])
            .default_route(&[]);
        let s = <TrafficServer as ServerUnderTest>::start(setup);
        let r = send(&s, Request::get("/routed/svc/x").host("routed.example"));
        assert_eq!(r.status, 200, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        routed.wait_for_path("/routed/svc/x", Duration::from_secs(5));
        assert!(origin.requests().iter().all(|r| r.path != "/routed/svc/x"), "{pdk}: not the rule's target");
        let r = send(&s, Request::get("/elsewhere").host("routed.example"));
        assert_eq!(r.status, 200, "{pdk}: {}\n{}", r.body_str(), s.log_report());
        origin.wait_for_path("/elsewhere", Duration::from_secs(5));
        s.assert_nothing_died();
    }
}

/// NGINX: a worker that exits (here, replaced by a reload) runs `job_stop`; the new worker starts
/// the job again.
#[test]
fn nginx_job_stop_when_a_worker_exits() {
    use e2e::nginx::Nginx;
    let origin = Origin::start();
    let (id, yaml) = job_entity("rust", "100ms");
    let s = <Nginx as ServerUnderTest>::start(Setup::new("oto-job-stop", origin.port()).workers(1).plugin(&id, yaml));
    s.expect_log("otoroshi plugin job-rust: rust job_run #1", Duration::from_secs(10));
    s.hup();
    s.expect_log("otoroshi plugin job-rust: rust job_stop #1", Duration::from_secs(10));
    s.expect_log(&format!("otoroshi job {id} stopped"), Duration::from_secs(10));
    // The new worker logs the plugin's `job_start` line, then ours.
    let restarted = e2e::wait_until(Duration::from_secs(10), || {
        let log = s.error_log();
        log.matches("rust job_start #1").count() == 2
            && log.matches(&format!("otoroshi job {id} started in worker")).count() == 2
    });
    assert!(restarted, "the new worker started the job\n{}", s.log_report());
}

/// NGINX: a job with `instantiation: one` runs in one worker at a time (a lease in the shared
/// zone); when that worker dies, another takes the job over once the lease expires.
#[test]
fn nginx_a_one_worker_job_runs_in_one_worker_at_a_time() {
    use e2e::nginx::Nginx;
    let origin = Origin::start();
    let (id, yaml) = job_entity("rust", "100ms");
    let yaml = yaml.replace("interval: 100ms }", "interval: 100ms, instantiation: one }");
    assert!(yaml.contains("instantiation: one"), "{yaml}");
    let s = <Nginx as ServerUnderTest>::start(Setup::new("oto-job-one", origin.port()).workers(3).plugin(&id, yaml));
    s.expect_log("otoroshi plugin job-rust: rust job_run #5", Duration::from_secs(10));
    let started = format!("otoroshi job {id} started in worker (pid ");
    let log = s.error_log();
    assert_eq!(log.matches(&started).count(), 1, "one of the 3 workers holds the job\n{}", s.log_report());
    assert_eq!(log.matches("rust job_start #1").count(), 1);
    assert_eq!(log.matches("rust job_run #1").count(), 1, "only one worker runs it");
    let holder: i32 =
        log.split(&started).nth(1).and_then(|t| t.split(')').next()).and_then(|p| p.parse().ok()).unwrap();
    // SAFETY: a signal to a worker process of this test's nginx.
    assert_eq!(unsafe { libc::kill(holder, libc::SIGKILL) }, 0);
    // The lease lasts at least 5 s after the holder's last run.
    let taken_over = e2e::wait_until(Duration::from_secs(20), || s.error_log().matches(&started).count() == 2);
    assert!(taken_over, "another worker takes the job over\n{}", s.log_report());
    assert!(s.error_log().split(&started).nth(2).is_some_and(|t| !t.starts_with(&holder.to_string())));
    assert_eq!(send(&s, Request::get("/after-takeover")).status, 200);
}

/// Traffic Server: a reload that replaces the global plugins stops the old set's job
/// (`job_stop`) and starts the new one's.
#[test]
fn ats_job_stop_when_a_reload_replaces_the_plugins() {
    use e2e::ats::{AtsOptions, TrafficServer};
    e2e::ats::require_plugin_so();
    let origin = Origin::start();
    let (id, yaml) = job_entity("as", "100ms");
    let s = TrafficServer::start(
        AtsOptions::new("oto-job-reload")
            .manager(true)
            .origin(origin.port())
            .file("job.yaml", yaml)
            .global_plugin(&["job.yaml"]),
    );
    s.expect_log("otoroshi plugin job-as: assemblyscript job_run #2", Duration::from_secs(20));
    s.reload_and_wait("[proxy_wasm] reloaded 1 global plugin(s)", Duration::from_secs(30));
    s.expect_log("otoroshi plugin job-as: assemblyscript job_stop #1", Duration::from_secs(10));
    s.expect_log(&format!("otoroshi job {id} stopped"), Duration::from_secs(10));
    // The new set's job: scheduled by the reload, its `job_start` then runs on a task thread
    // (the first set's lines are in the same log, so count them).
    let new_set = e2e::wait_until(Duration::from_secs(10), || {
        let logs = s.logs();
        logs.matches(&format!("otoroshi job {id} scheduled")).count() >= 2
            && logs.matches("assemblyscript job_start #").count() >= 2
    });
    assert!(new_set, "the new set's job started\n{}", s.log_report());
    // The reload stops a job from another thread than the one running it: no crash (under
    // traffic_manager a crashed traffic_server is restarted, only its logs tell).
    s.assert_nothing_died();
}

/// NGINX: a `location` whose chain has a HandlesRequest entity needs no content handler of its
/// own (no `proxy_pass`): the chain's answer is sent before it would run.
#[test]
fn nginx_handles_request_in_a_location_without_proxy_pass() {
    use e2e::nginx::{Nginx, NginxOptions};
    for pdk in PDKS {
        let (id, yaml) = step_entity(pdk, &["HandlesRequest"]);
        let opts = NginxOptions::new(&format!("oto-handler-{pdk}"))
            .workers(1)
            .file("handler.yaml", yaml)
            .http("proxy_wasm_config @CONF@/handler.yaml;")
            .server(format!("location /handled {{ proxy_wasm {id}; }}"));
        let s = Nginx::start(opts);
        let send = |req: Request| {
            req.timeout(Duration::from_secs(20)).send(s.port()).unwrap_or_else(|e| panic!("{e}\n{}", s.log_report()))
        };
        let r = send(Request::get("/handled/x"));
        assert_eq!(
            (r.status, r.body_str()),
            (200, format!("{} handle_request: GET /handled/x body=", tag(pdk))),
            "{}",
            s.log_report()
        );
        let r = send(Request::post("/handled/y", "posted").header("content-type", "text/plain"));
        assert_eq!(
            (r.status, r.body_str()),
            (200, format!("{} handle_request: POST /handled/y body=posted", tag(pdk))),
            "{}",
            s.log_report()
        );
    }
}
