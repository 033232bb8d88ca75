//! Otoroshi WASM plugin entities as links of the filter chain (`src/chain/extism.rs`), in memory,
//! on both runtimes: the Wasmo templates built with the AssemblyScript and the Rust PDK (the
//! entity files of examples/otoroshi/), beside a Proxy-Wasm filter in the same chain, with the
//! chain's pause and failure rules.

mod common;
common::for_each_runtime! {
use common::*;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxy_wasm_host::abi::LogLevel;
use proxy_wasm_host::chain::{Chain, ChainServer, EntityLink, Flow, Generation, GenerationHost, Generations, Phase, PluginSet, RecycleReason, Signals};
use proxy_wasm_host::files;
use proxy_wasm_host::extism::entity::document::Settings;
use proxy_wasm_host::extism::otoroshi::datastore::InProcessDataStore;
use proxy_wasm_host::extism::otoroshi::maps::Maps;
use proxy_wasm_host::extism::plugin::{engine, load_entities};
use proxy_wasm_host::extism::state::{ExtismHost, Services};
use proxy_wasm_host::host::ServerHost;
use proxy_wasm_host::loader::{self, PluginVms, VmKey};
use proxy_wasm_host::chain::{offload_done, OffLoop};

// ------------------------------------------------------------ the fake server

#[derive(Default)]
struct FakeState {
    signals: Signals,
    wakes: Mutex<usize>,
    logs: Mutex<Vec<(String, LogLevel, String)>>,
    /// Off-loop work kept instead of run (`hold_off_loop`), until `run_held`.
    held: Mutex<Option<Vec<OffLoop>>>,
}

#[derive(Clone, Default)]
struct Fake(Arc<FakeState>);

impl Fake {
    fn logged(&self, needle: &str) -> bool {
        self.0.logs.lock().unwrap().iter().any(|(_, _, m)| m.contains(needle))
    }
    fn wakes(&self) -> usize {
        *self.0.wakes.lock().unwrap()
    }
    /// From now on off-loop work waits until `run_held` (a call still running).
    fn hold_off_loop(&self) {
        *self.0.held.lock().unwrap() = Some(Vec::new());
    }
    /// Runs the work kept so far on a thread and resumes its links (the call returned).
    fn run_held(&self) -> usize {
        let jobs = self.0.held.lock().unwrap().take().unwrap_or_default();
        let n = jobs.len();
        for job in jobs {
            std::thread::spawn(job.work).join().unwrap();
            offload_done(self, job.link, job.direction);
        }
        n
    }
}

impl ChainServer for Fake {
    fn signals(&self) -> &Signals {
        &self.0.signals
    }
    fn arm_pause_timer(&mut self, _timeout: Duration) {}
    fn cancel_pause_timer(&mut self) {}
    fn schedule_resume(&self) {
        *self.0.wakes.lock().unwrap() += 1;
    }
    fn log(&self, plugin: &str, level: LogLevel, message: &str) {
        self.0.logs.lock().unwrap().push((plugin.to_string(), level, message.to_string()));
    }
    /// The work on a thread of its own, waited for here; then the link's resume, as a server's
    /// completion does (the test runs `Chain::resume`, the server's wake-up).
    fn run_off_loop(&self, job: OffLoop) -> Result<(), String> {
        if let Some(held) = self.0.held.lock().unwrap().as_mut() {
            held.push(job);
            return Ok(());
        }
        std::thread::spawn(job.work).join().map_err(|_| "the work panicked".to_string())?;
        offload_done(self, job.link, job.direction);
        Ok(())
    }
}

#[derive(Default)]
struct Host;

impl GenerationHost<Mutex<PluginVms>> for Host {
    fn server_host(&mut self, _vm: usize, _key: &VmKey) -> Arc<dyn ServerHost> {
        TestServer::new()
    }
    fn started(&mut self, _generation: &Arc<Generation>) {}
    fn retired(&mut self, _generation: &Arc<Generation>, _reason: &RecycleReason) {}
    fn log(&mut self, _level: LogLevel, _message: &str) {}
}

#[derive(Default)]
struct Logs(Mutex<Vec<String>>);

impl ExtismHost for Logs {
    fn log(&self, plugin: &str, level: LogLevel, message: &str) {
        self.0.lock().unwrap().push(format!("{plugin} {level:?} {message}"));
    }
}

// ------------------------------------------------------------ configurations

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pwh-chain-otoroshi-{RUNTIME}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The entity of examples/otoroshi/`example`.json with the module built by `pdk` (`as`, `rust`),
/// `edit` applied to its JSON.
fn entity_file(example: &str, pdk: &str, edit: impl FnOnce(&mut serde_json::Value)) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo_root().join("examples/otoroshi").join(format!("{example}.json"))).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let path = doc["config"]["source"]["path"].as_str().unwrap().to_owned();
    let file = std::path::Path::new(&path).file_name().unwrap().to_string_lossy().replace("otoroshi_as_", &format!("otoroshi_{pdk}_"));
    doc["config"]["source"]["path"] = repo_root().join("build/plugins").join(file).display().to_string().into();
    edit(&mut doc);
    let out = temp_dir().join(format!("{}.json", unique_vm_id(example)));
    std::fs::write(&out, doc.to_string()).unwrap();
    out
}

/// The Rust-SDK test filter (tag `pw`) as a Proxy-Wasm plugin file.
fn filter_file() -> std::path::PathBuf {
    let _ = built_plugin("rust_sdk_filter.wasm");
    let yaml = format!(
        "- config:\n    name: pw\n    configuration: '{{\"tag\":\"pw\"}}'\n    vm_config:\n      runtime: {RUNTIME}\n      vm_id: {}\n      code: {{ local: {{ filename: \"{}\" }} }}\n",
        unique_vm_id("pw"),
        repo_root().join("build/plugins/rust_sdk_filter.wasm").display()
    );
    let out = temp_dir().join(format!("{}.yaml", unique_vm_id("pw")));
    std::fs::write(&out, yaml).unwrap();
    out
}

struct Setup {
    generations: Generations,
    host: Host,
    entity_links: Vec<Arc<EntityLink>>,
}

/// Loads the files as a server does (`files::load_all`), the entities on this runtime.
fn setup(files: &[std::path::PathBuf], callback_timeout: Duration) -> Setup {
    setup_holding(files, callback_timeout, true)
}

/// `hold_response_headers`: false as on Traffic Server.
fn setup_holding(files: &[std::path::PathBuf], callback_timeout: Duration, hold: bool) -> Setup {
    let loaded = files::load_all(files).unwrap_or_else(|e| panic!("{e}"));
    let mut settings = loaded.otoroshi.clone().unwrap_or_default();
    settings.callback_timeout = callback_timeout;
    let services = Arc::new(Services {
        host: Arc::new(Logs::default()),
        http: None,
        datastore: Arc::new(InProcessDataStore::new(1 << 20)),
        maps: Arc::new(Maps::new(1 << 20)),
    });
    let engine = engine(RUNTIME).unwrap();
    let entities = load_entities(&loaded.entities, &settings, engine.as_ref(), &services).unwrap_or_else(|e| panic!("{e}"));
    let entity_links: Vec<Arc<EntityLink>> = entities
        .into_iter()
        .map(|p| {
            let mut link = EntityLink::new(p);
            link.hold_response_headers = hold;
            Arc::new(link)
        })
        .collect();
    let plugins = loader::load(&loaded.plugins).unwrap();
    let set = PluginSet::new(plugins).with_entities(entity_links.clone());
    Setup { generations: Generations::new(Arc::new(set)), host: Host, entity_links }
}


struct Tx {
    chain: Chain<Fake, Arc<Generation>>,
    stream: TestStream,
    fake: Fake,
}

impl Setup {
    /// A transaction through every plugin, then every entity of the set.
    fn tx(&mut self, headers: &[(&str, &str)]) -> Tx {
        let generation = self.generations.current(&mut self.host).expect("the plugins start");
        let n = generation.set().plugins.len() + generation.set().entities.len();
        self.tx_in((0..n).collect(), headers)
    }

    /// A transaction through the set's plugins (then entities) of indexes `order`, in that order.
    fn tx_in(&mut self, order: Vec<usize>, headers: &[(&str, &str)]) -> Tx {
        let generation = self.generations.current(&mut self.host).expect("the plugins start");
        let n = order;
        let stream = TestStream::with_request(headers);
        let fake = Fake::default();
        let s = stream.clone();
        let chain = Chain::new(generation, n, fake.clone(), move |_| s.clone()).expect("admitted");
        Tx { chain, stream, fake }
    }
}

impl Tx {
    fn request_headers(&mut self, end_of_stream: bool) -> Flow {
        let n = self.stream.data().request_headers.len();
        self.chain.on_request_headers(n, end_of_stream)
    }

    fn response_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Flow {
        self.stream.set_response(headers);
        self.chain.on_response_headers(headers.len(), end_of_stream)
    }

    fn request_header(&self, name: &str) -> Option<String> {
        self.stream.data().request_header(name)
    }

    fn response_header(&self, name: &str) -> Option<String> {
        self.stream.data().response_header(name)
    }
}

fn get(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut h = vec![(":method", "GET"), (":path", "/api"), (":authority", "example.com"), (":scheme", "http"), ("x-pw-test", "headers")];
    h.extend_from_slice(extra);
    h
}

fn respond(flow: &Flow) -> (u32, String, String) {
    match flow {
        Flow::Respond(r) => (r.status, String::from_utf8_lossy(&r.body).into_owned(), r.details.clone()),
        other => panic!("expected a local response, got {other:?}"),
    }
}

const OK: &[(&str, &str)] = &[(":status", "200"), ("content-type", "text/plain")];

// ------------------------------------------------------------ the tests

#[test]
fn access_control_templates_decide_beside_a_proxy_wasm_filter() {
    for pdk in ["as", "rust"] {
        let mut s = setup(&[filter_file(), entity_file("access-control", pdk, |_| {})], Duration::from_secs(5));
        let mut t = s.tx(&get(&[("foo", "bar")]));
        assert_eq!(t.request_headers(true), Flow::Continue, "{pdk}");
        // The filter ran before the entity (chain order).
        assert!(t.request_header("x-pw-added").is_some(), "{pdk}");
        assert_eq!(t.response_headers(OK, true), Flow::Continue);
        assert_eq!(t.response_header("x-proxy-wasm").as_deref(), Some("pw"));

        let mut t = s.tx(&get(&[("foo", "nope"), ("accept", "application/json")]));
        let (status, body, details) = respond(&t.request_headers(true));
        assert_eq!(status, 401, "{pdk}: {body}");
        assert!(body.contains("not authorized"), "{pdk}: {body}");
        assert_eq!(details, "otoroshi_wasm:wasm-plugin_wasmo_access_control");
        assert_eq!(s.entity_links[0].instances_created(), 1, "one instance served both");
    }
}

#[test]
fn pre_route_templates_answer_or_let_the_request_go_on() {
    for pdk in ["as", "rust"] {
        let mut s = setup(&[entity_file("pre-route", pdk, |_| {}), filter_file()], Duration::from_secs(5));
        // The entity (index 1, after the set's one plugin) first, then the filter.
        let mut t = s.tx_in(vec![1, 0], &get(&[("bar", "foo")]));
        assert_eq!(t.request_headers(true), Flow::Continue, "{pdk}");
        assert!(t.request_header("x-pw-added").is_some());
        let mut t = s.tx_in(vec![1, 0], &get(&[]));
        let (status, body, _) = respond(&t.request_headers(true));
        assert_eq!((status, body.as_str()), (401, "you're not authorized"), "{pdk}");
        // The chain stopped at the entity: the filter after it never saw the request.
        assert!(t.request_header("x-pw-added").is_none());
    }
}

#[test]
fn request_transformer_templates_rewrite_the_request_and_its_body() {
    for (pdk, content_type, body) in [("as", "application/json", r#"{"foo":"bar"}"#), ("rust", "text/plain", "Text plain content")] {
        let mut s = setup(&[filter_file(), entity_file("request-transformer", pdk, |_| {})], Duration::from_secs(5));
        let mut t = s.tx(&get(&[("content-type", "text/plain")]));
        assert_eq!(t.request_headers(false), Flow::Continue);
        // The entity holds the body until its end.
        assert_eq!(t.chain.on_request_body(b"hello ", false), Flow::Buffered);
        assert_eq!(t.chain.on_request_body(b"world", true), Flow::Forward { data: body.as_bytes().to_vec(), end_of_stream: true }, "{pdk}");
        assert_eq!(t.request_header(":method").as_deref(), Some("POST"), "{pdk}");
        assert_eq!(t.request_header("OTOROSHI_WASM_PLUGIN_ID").as_deref(), Some("OTOROSHI_WASM_REQUEST_TRANSFORMER"));
        assert_eq!(t.request_header("content-type").as_deref(), Some(content_type));
    }
}

#[test]
fn response_transformer_templates_hold_the_headers_until_the_end_of_the_body() {
    for (pdk, body) in [("as", r#"{"foo":"bar"}"#), ("rust", r#"{ "foo": "bar" }"#)] {
        let mut s = setup(&[filter_file(), entity_file("response-transformer", pdk, |_| {})], Duration::from_secs(5));
        let mut t = s.tx(&get(&[]));
        assert_eq!(t.request_headers(true), Flow::Continue);
        assert_eq!(t.response_headers(&[(":status", "404"), ("content-type", "text/html")], false), Flow::Wait);
        assert_eq!(t.chain.waiting(), Some(Phase::ResponseHeaders));
        assert_eq!(t.chain.on_response_body(b"<h1>not ", false), Flow::Buffered);
        assert_eq!(t.chain.on_response_body(b"found</h1>", true), Flow::Buffered);
        assert_eq!(t.fake.wakes(), 1, "{pdk}: the server is asked to go on");
        // The headers go on, changed, through the filter (response order: entity first).
        assert_eq!(t.chain.resume(), Some((Phase::ResponseHeaders, Flow::Continue)), "{pdk}");
        assert_eq!(t.response_header(":status").as_deref(), Some("200"));
        assert_eq!(t.response_header("OTOROSHI_WASM_PLUGIN_ID").as_deref(), Some("OTOROSHI_WASM_RESPONSE_TRANSFORMER"));
        assert_eq!(t.response_header("x-proxy-wasm").as_deref(), Some("pw"));
        // Then the new body.
        assert!(t.chain.has_queued_body(proxy_wasm_host::abi::StreamType::HttpResponse));
        assert_eq!(t.chain.on_response_body(b"", false), Flow::Forward { data: body.as_bytes().to_vec(), end_of_stream: true }, "{pdk}");
    }
}

#[test]
fn without_holding_the_response_headers_only_the_body_is_transformed() {
    let mut s = setup_holding(&[filter_file(), entity_file("response-transformer", "as", |_| {})], Duration::from_secs(5), false);
    let mut t = s.tx(&get(&[]));
    assert_eq!(t.request_headers(true), Flow::Continue);
    assert_eq!(t.response_headers(&[(":status", "404"), ("content-type", "text/html")], false), Flow::Continue);
    assert_eq!(t.chain.on_response_body(b"<h1>not ", false), Flow::Buffered);
    assert_eq!(t.chain.on_response_body(b"found</h1>", true), Flow::Forward { data: br#"{"foo":"bar"}"#.to_vec(), end_of_stream: true });
    assert_eq!(t.response_header(":status").as_deref(), Some("404"));
    assert_eq!(t.response_header("OTOROSHI_WASM_PLUGIN_ID"), None);
}

#[test]
fn backend_templates_answer_instead_of_the_origin() {
    for pdk in ["as", "rust"] {
        let mut s = setup(&[filter_file(), entity_file("backend", pdk, |_| {})], Duration::from_secs(5));
        // Without a body: at the request headers.
        let mut t = s.tx(&get(&[]));
        let flow = t.request_headers(true);
        let Flow::Respond(r) = &flow else { panic!("{pdk}: {flow:?}") };
        assert_eq!(r.status, 200, "{pdk}");
        assert!(String::from_utf8_lossy(&r.body).contains("This HTML comes from the Wasmo plugin"), "{pdk}");
        assert!(r.headers.iter().any(|(k, v)| k == b"foo" && v == b"bar"), "{pdk}: {:?}", r.headers);
        // With one: at its end.
        let mut t = s.tx(&get(&[("content-type", "text/plain")]));
        assert_eq!(t.request_headers(false), Flow::Continue);
        assert_eq!(t.chain.on_request_body(b"abc", false), Flow::Buffered);
        assert_eq!(respond(&t.chain.on_request_body(b"def", true)).0, 200, "{pdk}");
    }
}

#[test]
fn a_trap_applies_the_failure_policy_and_only_ends_that_call() {
    // The hostile module's endless loop as an access step: past callback_timeout it traps.
    let file = entity_file("access-control", "as", |doc| {
        doc["config"]["source"]["path"] = repo_root().join("build/plugins/extism_hostile.wasm").display().to_string().into();
        doc["config"]["functionName"] = "spin".into();
    });
    let mut s = setup(&[filter_file(), file], Duration::from_millis(200));
    let mut t = s.tx(&get(&[]));
    let (status, _, _) = respond(&t.request_headers(true));
    assert_eq!(status, 503, "fail_closed");
    assert!(t.fake.logged("time limit exceeded") || t.fake.logged("interrupt"), "{:?}", t.fake.0.logs.lock().unwrap());
    // The next transaction gets a new instance (and the same answer: the plugin always loops).
    let mut t = s.tx(&get(&[]));
    assert_eq!(respond(&t.request_headers(true)).0, 503);
    assert_eq!(s.entity_links[0].instances_created(), 2);
}

#[test]
fn calls_of_an_entity_that_can_call_out_run_off_the_event_loop() {
    // The hostile module imports http_request; with allowedHosts its calls may block, so each
    // runs off the event loop (here: the fake server's thread) while the chain waits for the
    // link, which resumes when the call returned.
    let file = entity_file("access-control", "as", |doc| {
        doc["config"]["source"]["path"] = repo_root().join("build/plugins/extism_hostile.wasm").display().to_string().into();
        doc["config"]["allowedHosts"] = serde_json::json!(["127.0.0.1"]);
        doc["config"]["functionName"] = "spin".into();
    });
    let mut s = setup(&[filter_file(), file], Duration::from_millis(200));
    assert!(s.entity_links[0].plugin.makes_http_calls);
    let mut t = s.tx(&get(&[]));
    assert_eq!(t.request_headers(true), Flow::Wait, "the chain waits for the call");
    assert!(t.chain.pause_owner().is_some());
    // The call (an endless loop past callback_timeout) returned a trap: the failure policy applies.
    let (phase, flow) = t.chain.resume().expect("the call returned: the link resumes");
    assert_eq!(phase, Phase::RequestHeaders);
    assert_eq!(respond(&flow).0, 503, "fail_closed");
    assert!(t.fake.logged("time limit exceeded") || t.fake.logged("interrupt"), "{:?}", t.fake.0.logs.lock().unwrap());
    assert_eq!(t.chain.resume(), None, "nothing waits any more");
    // A call that returns: the step applies its answer (export "ok" outputs {"result":true}) and
    // the chain goes on after the link.
    let file = entity_file("access-control", "as", |doc| {
        doc["config"]["source"]["path"] = repo_root().join("build/plugins/extism_hostile.wasm").display().to_string().into();
        doc["config"]["allowedHosts"] = serde_json::json!(["127.0.0.1"]);
        doc["config"]["functionName"] = "ok".into();
    });
    let mut s = setup(&[filter_file(), file], Duration::from_secs(5));
    let mut t = s.tx(&get(&[]));
    assert_eq!(t.request_headers(true), Flow::Wait);
    assert_eq!(t.chain.resume(), Some((Phase::RequestHeaders, Flow::Continue)));
    assert!(t.chain.headers_done(proxy_wasm_host::abi::StreamType::HttpRequest));
}

/// The all-steps AssemblyScript plugin (it imports http_request) with `steps`, granted a host:
/// its calls run off the event loop.
fn calling_out_entity(steps: &[&str]) -> std::path::PathBuf {
    let steps: Vec<String> = steps.iter().map(|s| (*s).to_owned()).collect();
    entity_file("request-transformer", "as", |doc| {
        doc["config"]["source"]["path"] = repo_root().join("build/plugins/otoroshi_as.wasm").display().to_string().into();
        doc["config"]["allowedHosts"] = serde_json::json!(["127.0.0.1"]);
        doc["config"]["functionName"] = "".into();
        doc["steps"] = serde_json::json!(steps);
    })
}

#[test]
fn body_steps_off_the_event_loop_resume_where_they_waited() {
    // TransformRequest, then CallBackend with the transformed body: two calls, two waits.
    let mut s = setup(&[filter_file(), calling_out_entity(&["TransformRequest", "CallBackend"])], Duration::from_secs(5));
    assert!(s.entity_links[0].plugin.makes_http_calls);
    let mut t = s.tx(&get(&[("content-type", "text/plain")]));
    assert_eq!(t.request_headers(false), Flow::Continue);
    assert_eq!(t.chain.on_request_body(b"hello ", false), Flow::Buffered);
    assert_eq!(t.chain.on_request_body(b"world", true), Flow::Wait, "TransformRequest's call runs");
    assert_eq!(t.chain.resume(), Some((Phase::RequestBody, Flow::Wait)), "then CallBackend's");
    assert_eq!(t.request_header("x-transformed-by").as_deref(), Some("assemblyscript transform_request"));
    let (_, flow) = t.chain.resume().expect("CallBackend's call returned");
    let (status, body, _) = respond(&flow);
    assert_eq!(status, 200);
    assert_eq!(body, "assemblyscript call_backend: GET /api body=transformed by assemblyscript: hello world");

    // TransformResponse, the response headers held (NGINX): the end of the body starts the call.
    let mut s = setup(&[filter_file(), calling_out_entity(&["TransformResponse"])], Duration::from_secs(5));
    let mut t = s.tx(&get(&[]));
    assert_eq!(t.request_headers(true), Flow::Continue);
    assert_eq!(t.response_headers(OK, false), Flow::Wait);
    assert_eq!(t.chain.on_response_body(b"abc", false), Flow::Buffered);
    assert_eq!(t.chain.on_response_body(b"def", true), Flow::Buffered, "the call runs, the headers wait on");
    assert_eq!(t.chain.resume(), Some((Phase::ResponseHeaders, Flow::Buffered)), "the result is applied");
    assert_eq!(t.chain.resume(), Some((Phase::ResponseHeaders, Flow::Continue)), "the headers go on");
    assert_eq!(t.response_header("x-response-transformed-by").as_deref(), Some("assemblyscript transform_response"));
    assert_eq!(
        t.chain.on_response_body(b"", false),
        Flow::Forward { data: b"transformed by assemblyscript: abcdef".to_vec(), end_of_stream: true }
    );

    // The same without holding the headers (Traffic Server): the chain waits at the end of the body.
    let mut s = setup_holding(&[filter_file(), calling_out_entity(&["TransformResponse"])], Duration::from_secs(5), false);
    let mut t = s.tx(&get(&[]));
    assert_eq!(t.request_headers(true), Flow::Continue);
    assert_eq!(t.response_headers(OK, false), Flow::Continue);
    assert_eq!(t.chain.on_response_body(b"abc", false), Flow::Buffered);
    assert_eq!(t.chain.on_response_body(b"def", true), Flow::Wait);
    assert_eq!(t.chain.waiting(), Some(Phase::ResponseBody));
    assert_eq!(
        t.chain.resume(),
        Some((Phase::ResponseBody, Flow::Forward { data: b"transformed by assemblyscript: abcdef".to_vec(), end_of_stream: true }))
    );
}

#[test]
fn a_call_that_returns_after_the_pause_timeout_changes_nothing() {
    let mut s = setup(&[filter_file(), calling_out_entity(&["ValidateAccess"])], Duration::from_secs(5));
    let mut t = s.tx(&get(&[]));
    t.fake.hold_off_loop();
    assert_eq!(t.request_headers(true), Flow::Wait);
    assert_eq!(t.chain.resume(), None, "the call has not returned: nothing to do");
    // The wait passes pause_timeout: the chain's 504.
    let (phase, flow) = t.chain.on_pause_timeout().expect("the chain waited");
    assert_eq!(phase, Phase::RequestHeaders);
    assert_eq!(respond(&flow).0, 504);
    // The call returns afterwards: its result is dropped, the chain does nothing more.
    assert_eq!(t.fake.run_held(), 1);
    assert_eq!(t.chain.resume(), None);
    // A transaction gone before its call returned: the result is dropped with it.
    let mut t = s.tx(&get(&[]));
    t.fake.hold_off_loop();
    assert_eq!(t.request_headers(true), Flow::Wait);
    let fake = t.fake.clone();
    drop(t);
    assert_eq!(fake.run_held(), 1);
    // The entity's instances are fine: the next transaction is allowed.
    let mut t = s.tx(&get(&[]));
    assert_eq!(t.request_headers(true), Flow::Wait);
    assert_eq!(t.chain.resume(), Some((Phase::RequestHeaders, Flow::Continue)));
}

#[test]
fn an_opa_policy_denies_with_403() {
    let text = std::fs::read_to_string(repo_root().join("examples/otoroshi/opa-policy.json")).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["config"]["source"]["path"] = repo_root().join("build/plugins/opa_policy.wasm").display().to_string().into();
    let file = temp_dir().join(format!("{}.json", unique_vm_id("opa")));
    std::fs::write(&file, doc.to_string()).unwrap();
    let mut s = setup(&[file, filter_file()], Duration::from_secs(5));
    let mut t = s.tx(&get(&[("foo", "bar")]));
    assert_eq!(t.request_headers(true), Flow::Continue);
    let mut t = s.tx(&get(&[("accept", "application/json")]));
    let (status, body, _) = respond(&t.request_headers(true));
    assert_eq!((status, body.as_str()), (403, r#"{"Otoroshi-Error":"Forbidden access"}"#));
}

#[test]
fn an_entity_importing_what_it_is_not_granted_does_not_load() {
    let file = entity_file("access-control", "as", |doc| {
        doc["config"]["source"]["path"] = repo_root().join("build/plugins/otoroshi_link_plugin_map_write.wasm").display().to_string().into();
    });
    let loaded = files::load_all(&[file]).unwrap();
    let services = Arc::new(Services {
        host: Arc::new(Logs::default()),
        http: None,
        datastore: Arc::new(InProcessDataStore::new(1 << 20)),
        maps: Arc::new(Maps::new(1 << 20)),
    });
    let err = load_entities(&loaded.entities, &Settings::default(), engine(RUNTIME).unwrap().as_ref(), &services).unwrap_err();
    assert_eq!(err.to_string(), "Otoroshi WASM plugin \"wasm-plugin_wasmo_access_control\" cannot be linked: the plugin imports env.proxy_plugin_map_set, which needs config.authorizations.pluginMapAccess.write: true; the entity does not grant it");
}

#[test]
fn route_matcher_templates_guard_their_chain() {
    for pdk in ["as", "rust"] {
        let mut s = setup(&[filter_file(), entity_file("route-matcher", pdk, |_| {})], Duration::from_secs(5));
        let mut t = s.tx(&get(&[("foo", "bar")]));
        assert_eq!(t.request_headers(true), Flow::Continue, "{pdk}");
        let mut t = s.tx(&get(&[("foo", "baz"), ("accept", "application/json")]));
        let (status, body, details) = respond(&t.request_headers(true));
        assert_eq!((status, body.as_str()), (404, r#"{"Otoroshi-Error":"route not found"}"#), "{pdk}");
        assert_eq!(details, "otoroshi_wasm:wasm-plugin_wasmo_route_matcher");
    }
}

#[test]
fn sink_templates_answer_at_the_end_of_the_request() {
    for pdk in ["as", "rust"] {
        let mut s = setup(&[entity_file("sink", pdk, |_| {})], Duration::from_secs(5));
        let mut t = s.tx(&get(&[]));
        let (status, body, _) = respond(&t.request_headers(true));
        assert_eq!(status, if pdk == "as" { 200 } else { 404 }, "{pdk}");
        assert!(body.contains("Unknown path and domain for /api"), "{pdk}: {body}");
        // With a body: at its end.
        let mut t = s.tx(&get(&[("content-type", "text/plain")]));
        assert_eq!(t.request_headers(false), Flow::Continue);
        assert_eq!(t.chain.on_request_body(b"abc", false), Flow::Buffered);
        assert!(respond(&t.chain.on_request_body(b"def", true)).1.contains("/api"), "{pdk}");
    }
}

/// The step plugin of `pdk` listing `steps`, with `config` added to its configuration.
fn step_plugin(pdk: &str, steps: &[&str], config: serde_json::Value) -> std::path::PathBuf {
    let steps: Vec<serde_json::Value> = steps.iter().map(|s| (*s).into()).collect();
    entity_file(&format!("test-plugin-{pdk}"), pdk, |doc| {
        doc["config"]["source"]["path"] = repo_root().join(format!("build/plugins/otoroshi_{pdk}.wasm")).display().to_string().into();
        doc["steps"] = steps.into();
        for (k, v) in config.as_object().unwrap() {
            doc["config"]["config"][k] = v.clone();
        }
    })
}

#[test]
fn match_route_and_find_route_outside_a_chain() {
    use proxy_wasm_host::chain::extism::routing::{find_route, matches_route};
    use proxy_wasm_host::extism::steps::route::Target;
    use proxy_wasm_host::extism::steps::view::RequestParts;
    for pdk in ["as", "rust"] {
        let s = setup(&[step_plugin(pdk, &["MatchRoute", "Router"], serde_json::json!({"route_target": "10.0.0.7:8080"}))], Duration::from_secs(5));
        let entity = &s.entity_links[0];
        let request = |uri: &str| RequestParts { uri: uri.into(), method: "GET".into(), version: "HTTP/1.1".into(), headers: vec![("Host".into(), "h".into())], ..Default::default() };
        assert!(matches_route(entity, &request("/match/x")).unwrap(), "{pdk}");
        assert!(!matches_route(entity, &request("/other")).unwrap(), "{pdk}");
        assert_eq!(find_route(entity, &request("/routed/svc/a")).unwrap(), Some(Target { hostname: "10.0.0.7".into(), port: 8080, tls: false }), "{pdk}");
        assert_eq!(find_route(entity, &request("/elsewhere")).unwrap(), None, "{pdk}");
    }
}

#[test]
fn jobs_start_run_and_stop_and_a_failed_call_is_an_error() {
    use proxy_wasm_host::chain::extism::jobs::jobs_of;
    use proxy_wasm_host::extism::entity::document::JobSettings;
    for pdk in ["as", "rust"] {
        let s = setup(&[step_plugin(pdk, &["Job"], serde_json::json!({"job_fail": "job_run"}))], Duration::from_secs(5));
        let mut link = EntityLink::new(s.entity_links[0].plugin.clone());
        assert!(jobs_of(&[Arc::new(EntityLink::new(link.plugin.clone()))]).is_empty(), "unscheduled");
        link.job = Some(JobSettings { plugin: link.plugin.id.clone(), interval: Duration::from_secs(1), initial_delay: Duration::ZERO, one_worker: false, path: "otoroshi.jobs[0]".into(), line: 0 });
        let jobs = jobs_of(&[Arc::new(link)]);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].start(), Ok(()), "{pdk}");
        let err = jobs[0].run().unwrap_err();
        assert!(err.contains("job_run failed") && err.contains("forced failure in job_run"), "{pdk}: {err}");
        assert_eq!(jobs[0].stop(), Ok(()), "{pdk}");
    }
}

}
