//! The filter chain in memory (`src/chain/`): real plugins (the Rust-SDK test
//! filter, `tests/wat/trap.wat`) in real VMs on both runtimes, a fake
//! `ChainServer` that records the pause timer, wake-ups and log lines, and
//! the in-memory `TestStream` for header maps. Each test is one rule of the
//! chain (see the module docs of `proxy_wasm_host::chain`).

mod common;
common::for_each_runtime! {
use common::*;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proxy_wasm_host::abi::LogLevel;
use proxy_wasm_host::chain::{Chain, ChainError, ChainServer, Flow, Generation, GenerationHost, Generations, Phase, PluginSet, RecycleReason, Signals};
use proxy_wasm_host::files;
use proxy_wasm_host::host::{HttpCallResponse, LocalResponse, ServerHost};
use proxy_wasm_host::loader::{self, PluginVms, VmKey};

// ------------------------------------------------------------ the fake server

#[derive(Debug, Default)]
struct Record {
    /// The armed pause timer, if any.
    timer: Option<Duration>,
    armed: usize,
    cancelled: usize,
    wakes: usize,
    logs: Vec<(String, LogLevel, String)>,
}

#[derive(Default)]
struct FakeState {
    signals: Signals,
    record: Mutex<Record>,
}

/// The server side of one transaction.
#[derive(Clone, Default)]
struct Fake(Arc<FakeState>);

impl Fake {
    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.0.record.lock().unwrap()
    }

    fn logged(&self, needle: &str) -> bool {
        self.record().logs.iter().any(|(_, _, m)| m.contains(needle))
    }
}

impl ChainServer for Fake {
    fn signals(&self) -> &Signals {
        &self.0.signals
    }

    fn arm_pause_timer(&mut self, timeout: Duration) {
        let mut r = self.record();
        r.timer = Some(timeout);
        r.armed += 1;
    }

    fn cancel_pause_timer(&mut self) {
        let mut r = self.record();
        r.timer = None;
        r.cancelled += 1;
    }

    fn schedule_resume(&self) {
        self.record().wakes += 1;
    }

    fn log(&self, plugin: &str, level: LogLevel, message: &str) {
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("[chain {plugin}] {level:?} {message}");
        }
        self.record().logs.push((plugin.to_string(), level, message.to_string()));
    }
}

/// The thread's side of the generations: one `TestServer` per VM.
#[derive(Default)]
struct Host {
    /// Per generation started, the servers of its VMs.
    servers: Vec<Vec<Arc<TestServer>>>,
    starting: Vec<Arc<TestServer>>,
    retired: Vec<(u64, RecycleReason)>,
    logs: Vec<String>,
}

impl GenerationHost<Mutex<PluginVms>> for Host {
    fn server_host(&mut self, _vm: usize, _key: &VmKey) -> Arc<dyn ServerHost> {
        let server = TestServer::new();
        self.starting.push(server.clone());
        server
    }

    fn started(&mut self, _generation: &Arc<Generation>) {
        self.servers.push(std::mem::take(&mut self.starting));
    }

    fn retired(&mut self, generation: &Arc<Generation>, reason: &RecycleReason) {
        self.retired.push((generation.number(), reason.clone()));
    }

    fn log(&mut self, _level: LogLevel, message: &str) {
        self.logs.push(message.to_string());
    }
}

impl Host {
    /// The server of VM `vm` of the latest generation.
    fn server(&self, vm: usize) -> Arc<TestServer> {
        self.servers.last().expect("a generation started")[vm].clone()
    }
}

// ------------------------------------------------------------ configurations

/// One plugin of a test configuration: a module of `build/plugins/`, its
/// configuration, and more `config:` keys as YAML flow-map entries.
struct P {
    name: &'static str,
    /// A file of `build/plugins/`, or an absolute path.
    wasm: String,
    configuration: String,
    extra: String,
    /// More `vm_config:` keys.
    vm_extra: String,
}

fn rust(name: &'static str, configuration: &str) -> P {
    P { name, wasm: "rust_sdk_filter.wasm".into(), configuration: configuration.to_string(), extra: String::new(), vm_extra: String::new() }
}

/// The Rust-SDK filter, allowed to make `http_call`s (the test answers them).
fn caller(name: &'static str) -> P {
    rust(name, "").with(r#"authorizations: { allowed_hosts: ["*"] }"#)
}

fn trap(name: &'static str, selector: &str) -> P {
    P { name, wasm: "trap.wasm".into(), configuration: selector.to_string(), extra: String::new(), vm_extra: String::new() }
}

impl P {
    fn with(mut self, extra: &str) -> P {
        self.extra = extra.to_string();
        self
    }

    fn with_vm(mut self, vm_extra: &str) -> P {
        self.vm_extra = vm_extra.to_string();
        self
    }
}

fn plugin_set(plugins: &[P]) -> Arc<PluginSet> {
    let dir = std::env::temp_dir().join(format!("pwh-chain-{RUNTIME}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut yaml = String::new();
    for p in plugins {
        let wasm = if p.wasm.starts_with('/') {
            std::path::PathBuf::from(&p.wasm)
        } else {
            let _ = built_plugin(&p.wasm);
            repo_root().join("build/plugins").join(&p.wasm)
        };
        let vm_id = unique_vm_id(p.name);
        let extra = if p.extra.is_empty() { String::new() } else { format!("\n    {}", p.extra) };
        let vm_extra = if p.vm_extra.is_empty() { String::new() } else { format!("\n      {}", p.vm_extra) };
        yaml.push_str(&format!(
            "- config:\n    name: {}\n    configuration: '{}'{extra}\n    vm_config:\n      runtime: {RUNTIME}\n      vm_id: {vm_id}{vm_extra}\n      code: {{ local: {{ filename: \"{}\" }} }}\n",
            p.name,
            p.configuration,
            wasm.display()
        ));
    }
    let path = dir.join(format!("{}.yaml", unique_vm_id("plugins")));
    std::fs::write(&path, &yaml).unwrap();
    let configs = files::load_file(&path).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    Arc::new(PluginSet::new(loader::load(&configs).unwrap()))
}

struct Setup {
    generations: Generations,
    host: Host,
}

fn setup(plugins: &[P]) -> Setup {
    Setup { generations: Generations::new(plugin_set(plugins)), host: Host::default() }
}

impl Setup {
    fn generation(&mut self) -> Arc<Generation> {
        self.generations.current(&mut self.host).expect("the plugins start")
    }

    /// A transaction through every plugin of the set, in order.
    fn tx(&mut self, headers: &[(&str, &str)]) -> Tx {
        self.try_tx(headers).expect("admitted")
    }

    fn try_tx(&mut self, headers: &[(&str, &str)]) -> Result<Tx, ChainError> {
        let generation = self.generation();
        let n = generation.set().plugins.len();
        let stream = TestStream::with_request(headers);
        let fake = Fake::default();
        let s = stream.clone();
        let chain = Chain::new(generation, 0..n, fake.clone(), move |_| s.clone())?;
        Ok(Tx { chain, stream, fake })
    }

    /// Delivers the ticks the plugins of VM `vm` armed.
    fn tick(&mut self, vm: usize) {
        let server = self.host.server(vm);
        let roots: Vec<u32> = server.record.lock().unwrap().ticks.iter().filter(|(_, p)| p.is_some()).map(|(r, _)| *r).collect();
        let generation = self.generations.peek().unwrap().clone();
        let mut vms = generation.lock().unwrap();
        for root in roots {
            vms.vms[vm].on_tick(root).expect("on_tick");
        }
    }

    /// Answers the `http_call`s the plugins of VM `vm` made with 200 and `body`.
    fn answer_http_calls(&mut self, vm: usize, body: &str) -> usize {
        let calls = self.host.server(vm).take_http_calls();
        let generation = self.generations.peek().unwrap().clone();
        let mut vms = generation.lock().unwrap();
        for (_, token, _) in &calls {
            let response = HttpCallResponse { headers: pairs(&[(":status", "200")]), body: body.as_bytes().to_vec(), ..Default::default() };
            vms.vms[vm].on_http_call_response(*token, response).expect("on_http_call_response");
        }
        calls.len()
    }
}

type TestChain = Chain<Fake, Arc<Generation>>;

struct Tx {
    chain: TestChain,
    stream: TestStream,
    fake: Fake,
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

    fn response_header(&self, name: &str) -> Vec<String> {
        self.stream.data().response_headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| String::from_utf8_lossy(v).into_owned()).collect()
    }
}

fn forward(data: &str, end_of_stream: bool) -> Flow {
    Flow::Forward { data: data.as_bytes().to_vec(), end_of_stream }
}

fn status(flow: &Flow) -> Option<u32> {
    match flow {
        Flow::Respond(r) => Some(r.status),
        _ => None,
    }
}

const OK: &[(&str, &str)] = &[(":status", "200"), ("content-type", "text/plain")];

fn get(test: &str) -> Vec<(&'static str, String)> {
    vec![(":method", "GET".into()), (":path", "/".into()), (":authority", "example.com".into()), (":scheme", "http".into()), ("x-pw-test", test.into())]
}

fn headers<'a>(list: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    list.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

// ------------------------------------------------------------ order

#[test]
fn request_callbacks_run_in_chain_order_and_response_callbacks_in_reverse() {
    let mut s = setup(&[rust("one", r#"{"tag":"one"}"#), rust("two", r#"{"tag":"two"}"#)]);
    let h = get("headers");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(true), Flow::Continue);
    // Both added x-pw-multi a and b: "one" first.
    assert_eq!(t.stream.data().request_headers.iter().filter(|(k, _)| k == b"x-pw-added").count(), 2);
    assert_eq!(t.response_headers(OK, true), Flow::Continue);
    assert_eq!(t.response_header("x-proxy-wasm"), vec!["two", "one"]);
}

#[test]
fn bodies_go_through_the_chain_in_order_on_the_way_in_and_in_reverse_on_the_way_out() {
    let mut s = setup(&[rust("first", r#"{"tag":"first","prefix":"<1>","suffix":"</1>"}"#), rust("second", r#"{"tag":"second","prefix":"<2>","suffix":"</2>"}"#)]);
    let h = get("req-body-prefix, resp-body-append");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(false), Flow::Continue);
    assert_eq!(t.chain.on_request_body(b"bo", false), Flow::Buffered);
    assert_eq!(t.chain.on_request_body(b"dy", true), forward("<2><1>body", true));
    assert_eq!(t.response_headers(OK, false), Flow::Continue);
    assert_eq!(t.chain.on_response_body(b"body", true), forward("body</2></1>", true));
}

#[test]
fn a_chain_can_move_between_threads() {
    fn send<T: Send>() {}
    send::<TestChain>();
}

#[test]
fn callbacks_a_module_does_not_export_are_skipped_without_entering_the_vm() {
    let dir = std::env::temp_dir().join(format!("pwh-chain-min-{RUNTIME}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = dir.join("headers_only.wasm");
    std::fs::write(&wasm, wat::parse_str(HEADERS_ONLY).unwrap()).unwrap();
    let yaml = format!("config:\n  name: min\n  vm_config:\n    runtime: {RUNTIME}\n    vm_id: {}\n    code: {{ local: {{ filename: \"{}\" }} }}\n", unique_vm_id("min"), wasm.display());
    let path = dir.join("min.yaml");
    std::fs::write(&path, yaml).unwrap();
    let set = Arc::new(PluginSet::new(loader::load(&files::load_file(&path).unwrap()).unwrap()));
    let mut s = Setup { generations: Generations::new(set), host: Host::default() };
    let mut t = s.tx(&[(":path", "/")]);
    assert!(t.chain.filters(Phase::RequestHeaders));
    for phase in [Phase::RequestBody, Phase::ResponseHeaders, Phase::ResponseBody] {
        assert!(!t.chain.filters(phase), "{phase:?}");
    }
    assert_eq!(t.request_headers(false), Flow::Continue);
    let calls = s.generations.peek().unwrap().lock().unwrap().vms[0].calls();
    assert_eq!(t.chain.on_request_body(b"x", true), forward("x", true));
    assert_eq!(t.response_headers(OK, true), Flow::Continue);
    assert_eq!(s.generations.peek().unwrap().lock().unwrap().vms[0].calls(), calls, "no callback entered the VM");
}

/// Exports only `proxy_on_request_headers` (and what every module needs).
const HEADERS_ONLY: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0)))"#;

// ------------------------------------------------------------ traps under each failure policy

/// A chain where `trap` traps in the callback of `phase`, with an observer
/// placed so that it would run after the trapping plugin in that phase.
struct TrapRun {
    setup: Setup,
    tx: Tx,
    /// What the chain said in the phase of the trap.
    flow: Flow,
}

fn selector(phase: Phase) -> &'static str {
    match phase {
        Phase::RequestHeaders => "request_headers",
        Phase::RequestBody => "request_body",
        Phase::ResponseHeaders => "response_headers",
        Phase::ResponseBody => "response_body",
    }
}

fn callback_line(phase: Phase) -> &'static str {
    match phase {
        Phase::RequestHeaders => "on_request_headers ctx=",
        Phase::RequestBody => "on_request_body ctx=",
        Phase::ResponseHeaders => "on_response_headers ctx=",
        Phase::ResponseBody => "on_response_body ctx=",
    }
}

/// Index (in the set) of the trapping plugin and of the observer.
fn trap_layout(phase: Phase) -> (usize, usize) {
    if phase.direction() == proxy_wasm_host::abi::StreamType::HttpRequest {
        (0, 1)
    } else {
        (1, 0)
    }
}

fn trap_run(phase: Phase, policy: &str) -> TrapRun {
    let trapper = trap("trapper", selector(phase)).with(&format!("failure_policy: {policy}"));
    let observer = trap("observer", "none");
    let plugins = if trap_layout(phase).0 == 0 { vec![trapper, observer] } else { vec![observer, trapper] };
    let mut setup = setup(&plugins);
    let mut tx = setup.tx(&[(":method", "POST"), (":path", "/")]);
    let mut flow = tx.request_headers(false);
    if phase != Phase::RequestHeaders {
        assert_eq!(flow, Flow::Continue);
        flow = tx.chain.on_request_body(b"body", true);
    }
    if phase.direction() == proxy_wasm_host::abi::StreamType::HttpResponse {
        assert_eq!(flow, forward("body", true));
        flow = tx.response_headers(OK, false);
        if phase == Phase::ResponseBody {
            assert_eq!(flow, Flow::Continue);
            flow = tx.chain.on_response_body(b"resp", true);
        }
    }
    TrapRun { setup, tx, flow }
}

impl TrapRun {
    fn observer_ran(&self, phase: Phase) -> bool {
        let (_, observer) = trap_layout(phase);
        self.setup.host.server(observer).logged(callback_line(phase))
    }

    fn trapper(&self, phase: Phase) -> Arc<TestServer> {
        self.setup.host.server(trap_layout(phase).0)
    }
}

fn fails_closed(phase: Phase, policy: &str) -> TrapRun {
    let run = trap_run(phase, policy);
    match phase {
        Phase::ResponseBody => assert_eq!(run.flow, Flow::Abort, "the response headers are out: the response is aborted"),
        _ => assert_eq!(status(&run.flow), Some(503), "{:?}", run.flow),
    }
    assert!(run.trapper(phase).logged(&format!("trapping in {}", selector(phase))));
    assert!(!run.observer_ran(phase), "the rest of the chain is skipped");
    assert!(run.tx.fake.logged("trapped"), "the chain logs the failure");
    run
}

fn fails_open(phase: Phase) {
    let mut run = trap_run(phase, "fail_open");
    let expected = match phase {
        Phase::RequestHeaders | Phase::ResponseHeaders => Flow::Continue,
        Phase::RequestBody => forward("body", true),
        Phase::ResponseBody => forward("resp", true),
    };
    assert_eq!(run.flow, expected, "the plugin is skipped, the data goes on as it was");
    assert!(run.observer_ran(phase), "the rest of the chain runs");
    assert!(run.tx.chain.links()[trap_layout(phase).0].failed());
    // Later phases skip the failed plugin without a log line each.
    run.setup.host.server(trap_layout(phase).0).clear_logs();
    let logs = run.tx.fake.record().logs.len();
    if phase == Phase::RequestHeaders {
        assert_eq!(run.tx.chain.on_request_body(b"body", true), forward("body", true));
    }
    if phase.direction() == proxy_wasm_host::abi::StreamType::HttpRequest {
        assert_eq!(run.tx.response_headers(OK, true), Flow::Continue);
    }
    assert!(!run.trapper(phase).logged("ctx="), "the failed plugin is not called again");
    assert_eq!(run.tx.fake.record().logs.len(), logs);
    // The next transaction runs without it.
    drop(run.tx);
    let mut next = run.setup.tx(&[(":path", "/")]);
    assert_eq!(next.chain.links().len(), 1);
    assert_eq!(next.request_headers(true), Flow::Continue);
}

fn closed_stays_closed(phase: Phase) {
    let mut run = fails_closed(phase, "fail_closed");
    drop(run.tx);
    match run.setup.try_tx(&[(":path", "/")]) {
        Err(ChainError::Refused { name, .. }) => assert_eq!(name, "trapper"),
        other => panic!("expected a refusal, got {:?}", other.map(|t| t.chain.links().len())),
    }
    assert_eq!(run.setup.generations.peek().unwrap().number(), 1);
}

fn reload_gets_a_fresh_instance(phase: Phase) {
    let mut run = fails_closed(phase, "reload");
    drop(run.tx);
    let next = run.setup.tx(&[(":method", "POST"), (":path", "/")]);
    assert_eq!(run.setup.generations.peek().unwrap().number(), 2, "a new generation");
    assert_eq!(run.setup.host.retired, vec![(1, RecycleReason::Failure { plugin: "trapper".into() })]);
    assert_eq!(next.chain.links().len(), 2);
    assert!(next.chain.links().iter().all(|l| !l.failed()));
}

macro_rules! trap_tests {
    ($($phase:ident: $closed:ident, $open:ident, $reload:ident;)*) => {$(
        #[test]
        fn $closed() {
            closed_stays_closed(Phase::$phase);
        }
        #[test]
        fn $open() {
            fails_open(Phase::$phase);
        }
        #[test]
        fn $reload() {
            reload_gets_a_fresh_instance(Phase::$phase);
        }
    )*};
}

trap_tests! {
    RequestHeaders: trap_in_request_headers_fail_closed_answers_503_skips_the_rest_and_refuses_later_transactions,
        trap_in_request_headers_fail_open_skips_the_plugin,
        trap_in_request_headers_reload_answers_503_and_the_next_transaction_gets_a_fresh_instance;
    RequestBody: trap_in_request_body_fail_closed_answers_503_skips_the_rest_and_refuses_later_transactions,
        trap_in_request_body_fail_open_passes_the_body_on,
        trap_in_request_body_reload_answers_503_and_the_next_transaction_gets_a_fresh_instance;
    ResponseHeaders: trap_in_response_headers_fail_closed_answers_503_skips_the_rest_and_refuses_later_transactions,
        trap_in_response_headers_fail_open_skips_the_plugin,
        trap_in_response_headers_reload_answers_503_and_the_next_transaction_gets_a_fresh_instance;
    ResponseBody: trap_in_response_body_fail_closed_aborts_the_response_skips_the_rest_and_refuses_later_transactions,
        trap_in_response_body_fail_open_passes_the_body_on,
        trap_in_response_body_reload_aborts_the_response_and_the_next_transaction_gets_a_fresh_instance;
}

// ------------------------------------------------------------ pauses and resumes

#[test]
fn a_resume_asked_for_inside_the_callback_that_pauses_continues_at_once() {
    let mut s = setup(&[rust("a", "")]);
    let h = get("resume-reentrant, resume-response-reentrant");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(true), Flow::Continue);
    assert_eq!(t.response_headers(OK, true), Flow::Continue);
    assert_eq!(t.response_header("x-pw-resume-reentrant"), vec!["1"]);
    let r = t.fake.record();
    assert_eq!((r.armed, r.wakes), (0, 0), "no pause, no timer, no wake-up");
}

#[test]
fn a_resume_from_another_event_wakes_the_chain_which_goes_on_after_the_pause_owner() {
    let mut s = setup(&[rust("a", r#"{"tick_ms":100}"#), trap("observer", "none")]);
    let h = get("tick-resume");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(true), Flow::Wait);
    assert_eq!(t.chain.waiting(), Some(Phase::RequestHeaders));
    assert_eq!(t.chain.pause_owner().map(|l| l.plugin), Some(0));
    assert_eq!(t.fake.record().timer, Some(Duration::from_secs(60)), "the owner's pause_timeout");
    assert!(!s.host.server(1).logged("on_request_headers"), "the next plugin waits");
    s.tick(0);
    assert_eq!(t.fake.record().wakes, 1);
    assert_eq!(t.chain.resume(), Some((Phase::RequestHeaders, Flow::Continue)));
    assert_eq!(t.stream.data().request_header("x-pw-resumed-by").as_deref(), Some("tick"));
    assert!(s.host.server(1).logged("on_request_headers"));
    let r = t.fake.record();
    assert_eq!((r.timer, r.cancelled), (None, 1), "the pause timer is cancelled");
}

#[test]
fn resumes_are_idempotent() {
    let mut s = setup(&[rust("a", r#"{"tick_ms":100}"#)]);
    let h = get("tick-resume");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(false), Flow::Wait);
    s.tick(0);
    assert_eq!(t.chain.resume(), Some((Phase::RequestHeaders, Flow::Continue)));
    // Another wake-up, with nothing asked for: nothing happens.
    assert_eq!(t.chain.resume(), None);
    assert_eq!(t.fake.record().wakes, 1);
    assert_eq!(t.chain.on_request_body(b"x", true), forward("x", true));
}

/// A module that keeps the id of its last stream context and, on each tick
/// (armed every second by `proxy_on_configure`), resumes its request;
/// `proxy_on_request_headers` returns HEADERS (0 Continue, 1 Pause),
/// `proxy_on_request_body` always pauses.
fn ticking_resumer(name: &'static str, headers_verdict: u32) -> P {
    let wat = format!(
        r#"(module
  (import "env" "proxy_set_effective_context" (func $effective (param i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $ctx (mut i32) (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (drop (call $tick (i32.const 1000))) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (global.set $ctx (local.get 0)) (i32.const {headers_verdict}))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (if (global.get $ctx) (then (drop (call $effective (global.get $ctx))) (drop (call $continue (i32.const 0)))))))"#
    );
    let dir = std::env::temp_dir().join(format!("pwh-chain-wat-{RUNTIME}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{headers_verdict}.wasm"));
    std::fs::write(&path, wat::parse_str(&wat).unwrap()).unwrap();
    P { name, wasm: path.display().to_string(), configuration: String::new(), extra: String::new(), vm_extra: String::new() }
}

#[test]
fn only_the_pause_owner_resumes_a_waiting_chain() {
    let mut s = setup(&[ticking_resumer("other", 0), ticking_resumer("owner", 1)]);
    let mut t = s.tx(&[(":path", "/")]);
    assert_eq!(t.request_headers(true), Flow::Wait);
    assert_eq!(t.chain.pause_owner().map(|l| l.plugin), Some(1));
    // The plugin that went on resumes its own (not paused) stream.
    s.tick(0);
    assert_eq!(t.chain.resume(), None, "not the owner: the chain still waits");
    assert_eq!(t.chain.waiting(), Some(Phase::RequestHeaders));
    assert!(t.fake.record().timer.is_some());
    s.tick(1);
    assert_eq!(t.chain.resume(), Some((Phase::RequestHeaders, Flow::Continue)));
}

#[test]
fn a_resume_while_nothing_waits_does_not_resume_a_later_pause() {
    let mut s = setup(&[ticking_resumer("early", 0)]);
    let mut t = s.tx(&[(":path", "/")]);
    assert_eq!(t.request_headers(false), Flow::Continue);
    s.tick(0);
    assert_eq!(t.fake.record().wakes, 0, "nothing waits: no wake-up");
    assert_eq!(t.chain.on_request_body(b"x", true), Flow::Wait, "the later pause waits");
    s.tick(0);
    assert_eq!(t.chain.resume(), Some((Phase::RequestBody, forward("x", true))));
}

#[test]
fn a_pause_past_pause_timeout_answers_504_and_names_the_plugin() {
    let mut s = setup(&[rust("slow", r#"{"tick_ms":100}"#).with("pause_timeout: 250ms")]);
    let h = get("tick-resume");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(true), Flow::Wait);
    assert_eq!(t.fake.record().timer, Some(Duration::from_millis(250)));
    let (phase, flow) = t.chain.on_pause_timeout().expect("the chain waited");
    assert_eq!((phase, status(&flow)), (Phase::RequestHeaders, Some(504)));
    assert!(t.fake.record().logs.iter().any(|(p, l, m)| p == "slow" && *l == LogLevel::Warn && m.contains("pause_timeout")));
    // The plugin's late resume changes nothing.
    s.tick(0);
    assert_eq!(t.chain.resume(), None);
    assert_eq!(t.chain.on_pause_timeout(), None, "a timer after the wait is harmless");
}

#[test]
fn a_resume_already_on_its_way_wins_over_the_pause_timer() {
    let mut s = setup(&[rust("a", r#"{"tick_ms":100}"#)]);
    let h = get("tick-resume");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(true), Flow::Wait);
    s.tick(0);
    assert_eq!(t.chain.on_pause_timeout(), Some((Phase::RequestHeaders, Flow::Continue)));
}

#[test]
fn a_pause_at_the_end_of_a_response_body_past_pause_timeout_aborts_the_response() {
    let mut s = setup(&[caller("a")]);
    let h = get("http-call-resp-body");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(true), Flow::Continue);
    assert_eq!(t.response_headers(OK, false), Flow::Continue);
    assert_eq!(t.chain.on_response_body(b"body", true), Flow::Wait);
    assert_eq!(t.chain.on_pause_timeout(), Some((Phase::ResponseBody, Flow::Abort)));
}

#[test]
fn a_pause_in_the_response_headers_holds_the_body_until_the_owner_resumes() {
    let mut s = setup(&[caller("a")]);
    let h = get("http-call-response");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(true), Flow::Continue);
    assert_eq!(t.response_headers(OK, false), Flow::Wait);
    assert_eq!(t.chain.on_response_body(b"held ", false), Flow::Buffered);
    assert_eq!(t.chain.on_response_body(b"body", true), Flow::Buffered);
    assert!(t.chain.has_queued_body(proxy_wasm_host::abi::StreamType::HttpResponse));
    assert_eq!(s.answer_http_calls(0, "pong"), 1);
    assert_eq!(t.fake.record().wakes, 1);
    assert_eq!(t.chain.resume(), Some((Phase::ResponseHeaders, Flow::Continue)));
    assert_eq!(t.response_header("x-pw-callout-body"), vec!["pong"]);
    assert_eq!(t.chain.on_response_body(b"", false), forward("held body", true));
}

// ------------------------------------------------------------ local responses

#[test]
fn a_local_response_from_the_request_headers_stops_the_chain_whatever_the_callback_returned() {
    let mut s = setup(&[rust("a", ""), trap("observer", "none")]);
    let h = get("local");
    let mut t = s.tx(&headers(&h));
    // The filter returns Pause after its local response: ignored.
    let flow = t.request_headers(true);
    assert_eq!(status(&flow), Some(403));
    assert_eq!(t.fake.record().armed, 0);
    assert!(!s.host.server(1).logged("on_request_headers"), "the rest of the chain is skipped");
    // The local response goes through the response callbacks of the plugins
    // that saw the request (Envoy's encoder filters), not the others.
    assert_eq!(t.response_headers(&[(":status", "403")], true), Flow::Continue);
    assert!(!s.host.server(1).logged("on_response_headers"));
}

#[test]
fn a_local_response_from_the_request_body_answers_the_request() {
    let mut s = setup(&[rust("a", "")]);
    let h = get("local-req-body");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(false), Flow::Continue);
    assert_eq!(t.chain.on_request_body(b"hello", false), Flow::Buffered);
    let flow = t.chain.on_request_body(b" world", true);
    match flow {
        Flow::Respond(LocalResponse { status, body, .. }) => assert_eq!((status, body.as_slice()), (403, &b"request body had 11 bytes"[..])),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_local_response_from_the_response_headers_replaces_the_response_and_later_ones_are_refused() {
    let mut s = setup(&[rust("a", "")]);
    let h = get("local-resp-headers");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(true), Flow::Continue);
    assert_eq!(status(&t.response_headers(OK, false)), Some(403));
    assert!(t.chain.response_released(), "no local response after this one");
}

#[test]
fn a_pause_at_the_end_of_the_response_body_goes_on_after_the_owner_resumes() {
    let mut s = setup(&[caller("a")]);
    let h = get("http-call-resp-body");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(true), Flow::Continue);
    assert_eq!(t.response_headers(OK, false), Flow::Continue);
    assert_eq!(t.chain.on_response_body(b"bo", false), Flow::Buffered);
    assert_eq!(t.chain.on_response_body(b"dy", true), Flow::Wait);
    assert_eq!(s.answer_http_calls(0, "pong"), 1);
    assert_eq!(t.chain.resume(), Some((Phase::ResponseBody, forward("body[callout:200]", true))));
}

#[test]
fn a_local_response_from_the_response_body_is_refused() {
    // on_response_body sends a local response; BAD_ARGUMENT makes it return
    // Continue, OK would make it return Pause.
    let wat = r#"(module
  (import "env" "proxy_send_local_response" (func $send (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "late")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32)
    (if (result i32) (call $send (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 16) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const -1))
      (then (i32.const 0)) (else (i32.const 1)))))"#;
    let dir = std::env::temp_dir().join(format!("pwh-chain-wat-{RUNTIME}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("late_local.wasm");
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    let mut s = setup(&[P { name: "late", wasm: path.display().to_string(), configuration: String::new(), extra: String::new(), vm_extra: String::new() }]);
    let mut t = s.tx(&[(":path", "/")]);
    assert_eq!(t.request_headers(true), Flow::Continue);
    assert_eq!(t.response_headers(OK, false), Flow::Continue);
    assert_eq!(t.chain.on_response_body(b"body", true), forward("body", true), "refused: the response goes on");
}

#[test]
fn close_stream_resets_the_transaction() {
    let mut s = setup(&[rust("a", "")]);
    let h = get("close");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(true), Flow::Reset);
}

// ------------------------------------------------------------ bodies

#[test]
fn a_body_pause_buffers_and_the_plugin_gets_the_cumulative_body() {
    let mut s = setup(&[rust("a", "")]);
    let h = get("req-body-upper, sizes");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(false), Flow::Continue);
    assert_eq!(t.chain.on_request_body(b"hello ", false), Flow::Buffered);
    assert_eq!(t.chain.on_request_body(b"wor", false), Flow::Buffered);
    assert_eq!(t.chain.on_request_body(b"ld", true), forward("HELLO WORLD", true));
    assert_eq!(t.response_headers(OK, true), Flow::Continue);
    assert_eq!(t.response_header("x-pw-req-body-size-param"), vec!["11"]);
}

#[test]
fn a_pause_at_the_end_of_the_body_waits_at_that_stage_and_goes_on_after_it() {
    let mut s = setup(&[caller("a"), trap("observer", "none")]);
    let h = get("http-call-req-body");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(false), Flow::Continue);
    assert_eq!(t.chain.on_request_body(b"data", true), Flow::Wait);
    assert_eq!(t.chain.waiting(), Some(Phase::RequestBody));
    assert!(!s.host.server(1).logged("on_request_body"), "the next plugin waits");
    assert_eq!(s.answer_http_calls(0, "pong"), 1);
    assert_eq!(t.chain.resume(), Some((Phase::RequestBody, forward("data[callout:200]", true))));
    assert!(s.host.server(1).logged("on_request_body"));
}

#[test]
fn a_request_body_past_max_body_size_held_for_a_plugin_answers_413() {
    let mut s = setup(&[rust("small", "").with("max_body_size: 8")]);
    let h = get("req-body-upper");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(false), Flow::Continue);
    assert_eq!(t.chain.on_request_body(b"hello", false), Flow::Buffered);
    assert_eq!(status(&t.chain.on_request_body(b"world", true)), Some(413));
    assert!(t.fake.record().logs.iter().any(|(p, _, m)| p == "small" && m.contains("max_body_size (8 bytes)")));
}

#[test]
fn a_response_body_past_max_body_size_held_for_a_plugin_is_cut() {
    let mut s = setup(&[rust("small", "").with("max_body_size: 8")]);
    let h = get("resp-body-upper");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(true), Flow::Continue);
    assert_eq!(t.response_headers(OK, false), Flow::Continue);
    assert_eq!(t.chain.on_response_body(b"hello", false), Flow::Buffered);
    assert_eq!(t.chain.on_response_body(b"world", true), Flow::Abort);
}

#[test]
fn a_response_body_queued_past_the_pause_owners_max_body_size_while_its_headers_wait_answers_500() {
    let mut s = setup(&[caller("small").with("max_body_size: 8\n    authorizations: { allowed_hosts: [\"*\"] }")]);
    let h = get("http-call-response");
    let mut t = s.tx(&headers(&h));
    assert_eq!(t.request_headers(true), Flow::Continue);
    assert_eq!(t.response_headers(OK, false), Flow::Wait);
    assert_eq!(t.chain.on_response_body(b"held ", false), Flow::Buffered);
    assert_eq!(status(&t.chain.on_response_body(b"body", true)), Some(500));
    assert_eq!(t.chain.waiting(), None, "the wait ended");
    assert!(t.fake.logged("the response body that came while its response headers waited passed max_body_size (8 bytes); answering 500"));
    // The call's answer comes later: nothing left to resume.
    assert_eq!(s.answer_http_calls(0, "pong"), 1);
    assert_eq!(t.chain.resume(), None);
}

#[test]
fn max_body_size_bounds_what_a_plugin_holds_not_what_streams_through_it() {
    let mut s = setup(&[trap("streaming", "none").with("max_body_size: 4")]);
    let mut t = s.tx(&[(":path", "/")]);
    assert_eq!(t.request_headers(false), Flow::Continue);
    assert_eq!(t.chain.on_request_body(b"1234", false), forward("1234", false));
    assert_eq!(t.chain.on_request_body(b"5678", true), forward("5678", true));
    assert_eq!(t.chain.body_limit(proxy_wasm_host::abi::StreamType::HttpRequest), Some(4));
}

// ------------------------------------------------------------ the end

#[test]
fn on_done_on_log_and_on_delete_run_once_at_the_end() {
    let mut s = setup(&[trap("a", "none")]);
    let mut t = s.tx(&[(":path", "/")]);
    assert_eq!(t.request_headers(true), Flow::Continue);
    t.chain.finish();
    t.chain.finish();
    drop(t);
    let server = s.host.server(0);
    for line in ["on_done ctx=", "on_log ctx=", "on_delete ctx="] {
        assert_eq!(server.messages().iter().filter(|m| m.starts_with(line)).count(), 1, "{line}");
    }
    assert_eq!(s.generations.peek().unwrap().lock().unwrap().vms[0].context_count(), 1, "only the root context is left");
}

#[test]
fn a_chain_dropped_without_finish_still_ends_its_stream_contexts() {
    let mut s = setup(&[trap("a", "none")]);
    let t = s.tx(&[(":path", "/")]);
    drop(t);
    assert!(s.host.server(0).logged("on_delete ctx="));
}

// ------------------------------------------------------------ generations and recycling

fn root_deleted(server: &TestServer, root: u32) -> bool {
    server.logged(&format!("on_delete ctx={root}"))
}

#[test]
fn max_calls_recycles_the_generation_and_the_old_one_shuts_down_after_its_last_transaction() {
    let mut s = setup(&[trap("a", "none").with_vm("kill_options: { max_calls: 10 }")]);
    let first = s.generation();
    let root = first.lock().unwrap().roots[0].root_context_id;
    let old_server = s.host.server(0);
    drop(first);
    let mut tx1 = s.tx(&[(":path", "/")]);
    assert_eq!(tx1.request_headers(true), Flow::Continue);
    // Still under 10 callbacks when the second transaction starts.
    let mut tx2 = s.tx(&[(":path", "/")]);
    assert_eq!(s.generations.peek().unwrap().number(), 1);
    assert_eq!(tx2.request_headers(true), Flow::Continue);
    drop(tx1);
    let tx3 = s.tx(&[(":path", "/")]);
    assert_eq!(tx3.chain.vms().number(), 2);
    match &s.host.retired[..] {
        [(1, RecycleReason::MaxCalls { plugin, calls, max: 10 })] => assert!(plugin == "a" && *calls >= 10, "{calls}"),
        other => panic!("{other:?}"),
    }
    // The old generation serves tx2 to its end, then shuts down.
    assert_eq!(s.generations.retired_count(), 1);
    assert!(!root_deleted(&old_server, root));
    drop(tx2);
    drop(s.tx(&[(":path", "/")]));
    assert_eq!(s.generations.retired_count(), 0);
    assert!(old_server.logged(&format!("on_done ctx={root}")) && root_deleted(&old_server, root));
}

#[test]
fn max_memory_usage_recycles_the_generation() {
    let mut s = setup(&[trap("a", "none").with_vm("limits: { max_memory: 1MiB }\n      kill_options: { max_memory_usage: 0.1 }")]);
    drop(s.tx(&[(":path", "/")]));
    drop(s.tx(&[(":path", "/")]));
    match &s.host.retired[..] {
        [(1, RecycleReason::MaxMemoryUsage { plugin, bytes, maximum, .. })] => assert_eq!((plugin.as_str(), *bytes, *maximum), ("a", 128 << 10, 1 << 20)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn max_unused_duration_recycles_an_idle_generation_at_the_next_transaction() {
    let mut s = setup(&[trap("a", "none").with_vm("kill_options: { max_unused_duration: 1s }")]);
    let t0 = Instant::now();
    let g1 = s.generations.current_at(&mut s.host, || t0).unwrap();
    let g = s.generations.current_at(&mut s.host, || t0 + Duration::from_millis(900)).unwrap();
    assert!(Arc::ptr_eq(&g1, &g), "used within the second");
    let g2 = s.generations.current_at(&mut s.host, || t0 + Duration::from_millis(2000)).unwrap();
    assert_eq!(g2.number(), 2);
    match &s.host.retired[..] {
        [(1, RecycleReason::MaxUnusedDuration { plugin, idle, max })] => assert_eq!((plugin.as_str(), *idle, *max), ("a", Duration::from_millis(1100), Duration::from_secs(1))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_idle_sweep_retires_an_unused_generation_and_shuts_it_down() {
    let mut s = setup(&[trap("a", "none").with_vm("kill_options: { max_unused_duration: 1s }")]);
    let t0 = Instant::now();
    drop(s.generations.current_at(&mut s.host, || t0).unwrap());
    assert_eq!(s.generations.sweep_idle(t0 + Duration::from_millis(500), &mut s.host), None);
    let reason = s.generations.sweep_idle(t0 + Duration::from_secs(3), &mut s.host);
    assert!(matches!(reason, Some(RecycleReason::MaxUnusedDuration { .. })), "{reason:?}");
    assert!(s.generations.is_empty(), "retired and shut down: nothing used it");
    assert!(s.host.server(0).logged("on_done ctx="));
}

#[test]
fn events_outside_transactions_run_on_a_vm_until_it_fails() {
    let mut s = setup(&[trap("t", "tick")]);
    let generation = s.generation();
    let root = generation.lock().unwrap().roots[0].root_context_id;
    assert!(matches!(generation.with_vm(0, |vm| vm.on_tick(root)), Some(Err(_))), "the tick traps");
    assert!(generation.with_vm(0, |vm| vm.on_tick(root)).is_none(), "a failed VM is not entered again");
    assert!(generation.with_vm(7, |vm| vm.on_tick(root)).is_none(), "no such VM");
}

#[test]
fn a_configuration_reload_retires_the_generation() {
    let mut s = setup(&[trap("a", "none")]);
    let t = s.tx(&[(":path", "/")]);
    s.generations.retire(RecycleReason::ConfigurationReload, &mut s.host);
    assert!(t.chain.vms().is_retired());
    assert_eq!(s.host.retired, vec![(1, RecycleReason::ConfigurationReload)]);
    assert_eq!(s.generation().number(), 2);
}

#[test]
fn reload_after_a_failure_backs_off_and_transactions_get_503_meanwhile() {
    let mut s = setup(&[trap("t", "request_headers").with("failure_policy: reload")]);
    let t0 = Instant::now();
    let fail_once = |s: &mut Setup, at: Instant| {
        let generation = s.generations.current_at(&mut s.host, || at).unwrap();
        let mut t = Tx { chain: Chain::new(generation, [0], Fake::default(), |_| TestStream::default()).unwrap(), stream: TestStream::default(), fake: Fake::default() };
        assert_eq!(status(&t.request_headers(true)), Some(503));
    };
    fail_once(&mut s, t0);
    // The first reload is immediate.
    fail_once(&mut s, t0 + Duration::from_millis(1));
    assert_eq!(s.generations.peek().unwrap().number(), 2);
    // The second within 100 ms is not: the failed generation stays, and refuses.
    let g = s.generations.current_at(&mut s.host, || t0 + Duration::from_millis(20)).unwrap();
    assert_eq!(g.number(), 2);
    assert!(matches!(Chain::new(g, [0], Fake::default(), |_| TestStream::default()), Err(ChainError::Refused { .. })));
    let g = s.generations.current_at(&mut s.host, || t0 + Duration::from_millis(200)).unwrap();
    assert_eq!(g.number(), 3);
}

}
