//! An in-memory server used only by tests: it records what the core asks of
//! it (logs, calls, timers, local responses) and holds header maps in memory.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxy_wasm_host::abi::pairs::Pair;
use proxy_wasm_host::abi::{LogLevel, MapType, Status, StreamType};
use proxy_wasm_host::config::RuntimeKind;
use proxy_wasm_host::host::{HttpCallRequest, HttpStream, LocalResponse, PluginRef, ServerHost};
use proxy_wasm_host::hostcalls::code::WasmCode;
use proxy_wasm_host::loader;
use proxy_wasm_host::plugin::PluginInfo;
use proxy_wasm_host::vm::{Verdict, Vm, VmOptions};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A module from `tests/wat/<name>.wat`, compiled from text.
pub fn wat_bytes(name: &str) -> Vec<u8> {
    let path = repo_root().join("tests/wat").join(format!("{name}.wat"));
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A plugin built by `scripts/build-plugins.sh` (run by `make test`).
pub fn built_plugin(file: &str) -> Vec<u8> {
    let path = repo_root().join("build/plugins").join(file);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; build the test plugins first with `make plugins`", path.display()))
}

/// A built plugin, compiled once per test binary and shared by its tests.
pub fn built_code(file: &str) -> Arc<WasmCode> {
    built_code_on(RuntimeKind::Wasmtime, file)
}

/// [`built_code`] on a given runtime.
pub fn built_code_on(runtime: RuntimeKind, file: &str) -> Arc<WasmCode> {
    static CACHE: Mutex<Option<HashMap<(RuntimeKind, String), Arc<WasmCode>>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let map = cache.get_or_insert_with(HashMap::new);
    if let Some(code) = map.get(&(runtime, file.to_string())) {
        return code.clone();
    }
    let code = load_on(runtime, &built_plugin(file), file).unwrap_or_else(|e| panic!("{file}: {e}"));
    map.insert((runtime, file.to_string()), code.clone());
    code
}

pub fn load(bytes: &[u8], origin: &str) -> Result<Arc<WasmCode>, proxy_wasm_host::hostcalls::code::LoadError> {
    load_on(RuntimeKind::Wasmtime, bytes, origin)
}

/// Compiles and validates `bytes` on `runtime`.
pub fn load_on(
    runtime: RuntimeKind,
    bytes: &[u8],
    origin: &str,
) -> Result<Arc<WasmCode>, proxy_wasm_host::hostcalls::code::LoadError> {
    let engine = loader::engine(runtime).unwrap_or_else(|| panic!("runtime {runtime} is not in this build"));
    WasmCode::load(engine.as_ref(), bytes, origin).map(Arc::new)
}

/// The runtimes every in-memory suite runs on (see [`for_each_runtime`]).
macro_rules! runtime_facade {
    ($module:ident, $runtime:expr) => {
        /// The harness bound to one runtime: `load`, `built_code` and
        /// `RUNTIME` for the tests of [`for_each_runtime`].
        pub mod $module {
            #![allow(unused_imports, dead_code)]
            pub use super::*;
            use std::sync::Arc;

            pub const RUNTIME: RuntimeKind = $runtime;

            pub fn load(
                bytes: &[u8],
                origin: &str,
            ) -> Result<Arc<WasmCode>, proxy_wasm_host::hostcalls::code::LoadError> {
                super::load_on(RUNTIME, bytes, origin)
            }

            pub fn built_code(file: &str) -> Arc<WasmCode> {
                super::built_code_on(RUNTIME, file)
            }
        }
    };
}
runtime_facade!(on_wasmtime, RuntimeKind::Wasmtime);
runtime_facade!(on_wamr, RuntimeKind::Wamr);

/// Runs the tests of a file once per runtime: its items go into `mod wasmtime`
/// and `mod wamr`, where `common` is the harness bound to that runtime
/// (`common::RUNTIME`, and `load`/`built_code` compiling on it). Use after
/// `mod common;`, around everything else of the file.
#[allow(unused_macros)]
macro_rules! for_each_runtime {
    ($($body:tt)*) => {
        mod wasmtime {
            #[allow(unused_imports)]
            use crate::common::on_wasmtime as common;
            $($body)*
        }
        mod wamr {
            #[allow(unused_imports)]
            use crate::common::on_wamr as common;
            $($body)*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use for_each_runtime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub plugin: String,
    pub level: LogLevel,
    pub message: String,
}

#[derive(Default)]
pub struct ServerRecord {
    pub logs: Vec<LogLine>,
    pub http_calls: Vec<(u32, u32, HttpCallRequest)>,
    pub cancelled: Vec<u32>,
    pub ticks: HashMap<u32, Option<Duration>>,
    pub queue_ready: Vec<(u32, u32)>,
    pub foreign_calls: Vec<(String, Vec<u8>)>,
}

pub struct TestServer {
    pub record: Mutex<ServerRecord>,
    pub log_level: Mutex<LogLevel>,
    /// Answer of `dispatch_http_call` (Ok by default).
    pub http_call_result: Mutex<Result<(), Status>>,
    pub properties: Mutex<HashMap<String, Vec<u8>>>,
}

impl TestServer {
    pub fn new() -> Arc<TestServer> {
        Arc::new(TestServer {
            record: Mutex::new(ServerRecord::default()),
            log_level: Mutex::new(LogLevel::Trace),
            http_call_result: Mutex::new(Ok(())),
            properties: Mutex::new(HashMap::new()),
        })
    }

    pub fn logs(&self) -> Vec<LogLine> {
        self.record.lock().unwrap().logs.clone()
    }

    pub fn messages(&self) -> Vec<String> {
        self.logs().into_iter().map(|l| l.message).collect()
    }

    pub fn clear_logs(&self) {
        self.record.lock().unwrap().logs.clear();
    }

    /// True when some log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.messages().iter().any(|m| m.contains(needle))
    }

    pub fn take_http_calls(&self) -> Vec<(u32, u32, HttpCallRequest)> {
        std::mem::take(&mut self.record.lock().unwrap().http_calls)
    }

    pub fn take_queue_ready(&self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.record.lock().unwrap().queue_ready)
    }
}

impl ServerHost for TestServer {
    fn log(&self, plugin: &PluginRef, level: LogLevel, message: &str) {
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("[{}] {:?} {message}", plugin.name, level);
        }
        self.record.lock().unwrap().logs.push(LogLine {
            plugin: plugin.name.clone(),
            level,
            message: message.to_string(),
        });
    }

    fn log_level(&self) -> LogLevel {
        *self.log_level.lock().unwrap()
    }

    fn dispatch_http_call(&self, root_context_id: u32, token: u32, request: HttpCallRequest) -> Result<(), Status> {
        let r = *self.http_call_result.lock().unwrap();
        if r.is_ok() {
            self.record.lock().unwrap().http_calls.push((root_context_id, token, request));
        }
        r
    }

    fn cancel_http_call(&self, token: u32) {
        self.record.lock().unwrap().cancelled.push(token);
    }

    fn set_tick_period(&self, root_context_id: u32, period: Option<Duration>) {
        self.record.lock().unwrap().ticks.insert(root_context_id, period);
    }

    fn notify_queue_ready(&self, root_context_id: u32, queue_id: u32) {
        self.record.lock().unwrap().queue_ready.push((root_context_id, queue_id));
    }

    fn property(&self, path: &[&[u8]]) -> Result<Option<Vec<u8>>, Status> {
        let key = path.iter().map(|s| String::from_utf8_lossy(s)).collect::<Vec<_>>().join(".");
        Ok(self.properties.lock().unwrap().get(&key).cloned())
    }

    fn call_foreign_function(&self, name: &str, argument: &[u8]) -> Result<Vec<u8>, Status> {
        self.record.lock().unwrap().foreign_calls.push((name.to_string(), argument.to_vec()));
        match name {
            "echo" => Ok(argument.to_vec()),
            "reverse" => Ok(argument.iter().rev().copied().collect()),
            _ => Err(Status::NotFound),
        }
    }
}

/// The transaction as the test sees it, shared with the `HttpStream` the VM holds.
#[derive(Default, Debug, Clone)]
pub struct StreamData {
    pub request_headers: Vec<Pair>,
    pub request_trailers: Vec<Pair>,
    pub response_headers: Vec<Pair>,
    pub response_trailers: Vec<Pair>,
    pub local_response: Option<LocalResponse>,
    pub resumed: Vec<StreamType>,
    pub closed: Vec<StreamType>,
    /// Once true, local responses are refused (headers already sent).
    pub response_started: bool,
    pub properties: HashMap<String, Vec<u8>>,
}

impl StreamData {
    pub fn map(&self, map: MapType) -> Option<&Vec<Pair>> {
        match map {
            MapType::HttpRequestHeaders => Some(&self.request_headers),
            MapType::HttpRequestTrailers => Some(&self.request_trailers),
            MapType::HttpResponseHeaders => Some(&self.response_headers),
            MapType::HttpResponseTrailers => Some(&self.response_trailers),
            _ => None,
        }
    }

    fn map_mut(&mut self, map: MapType) -> Result<&mut Vec<Pair>, Status> {
        match map {
            MapType::HttpRequestHeaders => Ok(&mut self.request_headers),
            MapType::HttpRequestTrailers => Ok(&mut self.request_trailers),
            MapType::HttpResponseHeaders => Ok(&mut self.response_headers),
            MapType::HttpResponseTrailers => Ok(&mut self.response_trailers),
            _ => Err(Status::BadArgument),
        }
    }

    /// First value of a header (case-insensitive).
    pub fn header(&self, map: MapType, key: &str) -> Option<String> {
        self.map(map)?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key.as_bytes()))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    pub fn request_header(&self, key: &str) -> Option<String> {
        self.header(MapType::HttpRequestHeaders, key)
    }

    pub fn response_header(&self, key: &str) -> Option<String> {
        self.header(MapType::HttpResponseHeaders, key)
    }
}

#[derive(Clone, Default)]
pub struct TestStream(pub Arc<Mutex<StreamData>>);

impl TestStream {
    pub fn with_request(headers: &[(&str, &str)]) -> TestStream {
        let s = TestStream::default();
        s.0.lock().unwrap().request_headers = pairs(headers);
        s
    }

    pub fn data(&self) -> StreamData {
        self.0.lock().unwrap().clone()
    }

    pub fn set_response(&self, headers: &[(&str, &str)]) {
        self.0.lock().unwrap().response_headers = pairs(headers);
    }
}

pub fn pairs(list: &[(&str, &str)]) -> Vec<Pair> {
    list.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
}

impl HttpStream for TestStream {
    fn header_map(&self, map: MapType) -> Result<Vec<Pair>, Status> {
        Ok(self.0.lock().unwrap().map(map).cloned().unwrap_or_default())
    }

    // One value without a copy of the whole map, as the servers answer it.
    fn header_value(&self, map: MapType, key: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        Ok(self.0.lock().unwrap().map(map).and_then(|pairs| proxy_wasm_host::host::value_in_pairs(pairs, key)))
    }

    fn set_header_map(&mut self, map: MapType, pairs: Vec<Pair>) -> Result<(), Status> {
        *self.0.lock().unwrap().map_mut(map)? = pairs;
        Ok(())
    }

    fn add_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        self.0.lock().unwrap().map_mut(map)?.push((key.to_vec(), value.to_vec()));
        Ok(())
    }

    fn replace_header(&mut self, map: MapType, key: &[u8], value: &[u8]) -> Result<(), Status> {
        let mut d = self.0.lock().unwrap();
        let m = d.map_mut(map)?;
        match m.iter().position(|(k, _)| k.eq_ignore_ascii_case(key)) {
            Some(i) => {
                m[i].1 = value.to_vec();
                let mut n = 0;
                m.retain(|(k, _)| {
                    let same = k.eq_ignore_ascii_case(key);
                    n += same as usize;
                    !same || n == 1
                });
            }
            None => m.push((key.to_vec(), value.to_vec())),
        }
        Ok(())
    }

    fn remove_header(&mut self, map: MapType, key: &[u8]) -> Result<(), Status> {
        self.0.lock().unwrap().map_mut(map)?.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
        Ok(())
    }

    fn send_local_response(&mut self, response: LocalResponse) -> Result<(), Status> {
        let mut d = self.0.lock().unwrap();
        if d.response_started {
            return Err(Status::BadArgument);
        }
        d.local_response = Some(response);
        Ok(())
    }

    fn resume(&mut self, stream: StreamType) -> Result<(), Status> {
        self.0.lock().unwrap().resumed.push(stream);
        Ok(())
    }

    fn close(&mut self, stream: StreamType) -> Result<(), Status> {
        self.0.lock().unwrap().closed.push(stream);
        Ok(())
    }

    fn property(&self, path: &[&[u8]]) -> Result<Option<Vec<u8>>, Status> {
        let key = path.iter().map(|s| String::from_utf8_lossy(s)).collect::<Vec<_>>().join(".");
        let d = self.0.lock().unwrap();
        if let Some(v) = d.properties.get(&key) {
            return Ok(Some(v.clone()));
        }
        // A few request properties derived from the headers, as a server would.
        let header = |name: &str| d.request_header(name).map(String::into_bytes);
        Ok(match key.as_str() {
            "request.path" => header(":path"),
            "request.method" => header(":method"),
            "request.host" => header(":authority"),
            "request.scheme" => header(":scheme"),
            k if k.starts_with("request.headers.") => header(&k["request.headers.".len()..]),
            _ => None,
        })
    }

    fn set_property(&mut self, path: &[&[u8]], value: &[u8]) -> Result<(), Status> {
        // The test server owns `request.path` (writable), like a real server would.
        if path == [&b"request"[..], b"path"] {
            let mut d = self.0.lock().unwrap();
            let v = value.to_vec();
            match d.request_headers.iter_mut().find(|(k, _)| k == b":path") {
                Some(p) => p.1 = v,
                None => d.request_headers.push((b":path".to_vec(), v)),
            }
            return Ok(());
        }
        Err(Status::NotFound)
    }
}

/// A VM with one plugin started, ready for streams.
pub struct Harness {
    pub vm: Vm,
    pub server: Arc<TestServer>,
    pub root: u32,
    pub plugin: Arc<PluginInfo>,
}

/// Unique vm_ids keep tests that run in parallel from sharing data and queues.
pub fn unique_vm_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

impl Harness {
    pub fn start(bytes: &[u8], plugin_configuration: &str) -> Harness {
        Harness::start_on(RuntimeKind::Wasmtime, bytes, plugin_configuration)
    }

    pub fn start_with(bytes: &[u8], plugin_configuration: &str, options: VmOptions) -> Harness {
        Harness::start_with_on(RuntimeKind::Wasmtime, bytes, plugin_configuration, options)
    }

    pub fn try_start(bytes: &[u8], plugin_configuration: &str, options: VmOptions) -> Result<Harness, String> {
        Harness::try_start_on(RuntimeKind::Wasmtime, bytes, plugin_configuration, options)
    }

    /// [`Harness::start`] on a given runtime.
    pub fn start_on(runtime: RuntimeKind, bytes: &[u8], plugin_configuration: &str) -> Harness {
        Harness::start_with_on(runtime, bytes, plugin_configuration, VmOptions::new(unique_vm_id("vm")))
    }

    /// [`Harness::start_with`] on a given runtime.
    pub fn start_with_on(
        runtime: RuntimeKind,
        bytes: &[u8],
        plugin_configuration: &str,
        options: VmOptions,
    ) -> Harness {
        Harness::try_start_on(runtime, bytes, plugin_configuration, options)
            .unwrap_or_else(|e| panic!("start failed: {e}"))
    }

    /// [`Harness::try_start`] on a given runtime.
    pub fn try_start_on(
        runtime: RuntimeKind,
        bytes: &[u8],
        plugin_configuration: &str,
        options: VmOptions,
    ) -> Result<Harness, String> {
        let code = load_on(runtime, bytes, "test.wasm").map_err(|e| e.to_string())?;
        Harness::try_start_code(code, plugin_configuration, options)
    }

    /// Like [`Harness::try_start`], with code already compiled (see [`built_code`]).
    pub fn try_start_code(
        code: Arc<WasmCode>,
        plugin_configuration: &str,
        options: VmOptions,
    ) -> Result<Harness, String> {
        Harness::try_start_full(code, plugin_configuration, options, TestServer::new())
    }

    /// The most general start: compiled code and a server prepared by the test
    /// (e.g. with `properties` or `log_level` set before the plugin starts).
    pub fn try_start_full(
        code: Arc<WasmCode>,
        plugin_configuration: &str,
        options: VmOptions,
        server: Arc<TestServer>,
    ) -> Result<Harness, String> {
        let plugin =
            PluginInfo::new("test-plugin", "", options.vm_id.clone(), plugin_configuration.as_bytes().to_vec());
        Harness::try_start_plugin(code, plugin, options, server)
    }

    /// Starts `plugin` (its own name, root_id and configuration) in a new VM.
    pub fn try_start_plugin(
        code: Arc<WasmCode>,
        plugin: PluginInfo,
        options: VmOptions,
        server: Arc<TestServer>,
    ) -> Result<Harness, String> {
        let mut vm = Vm::new(code, options, server.clone()).map_err(|e| e.to_string())?;
        let plugin = Arc::new(plugin);
        let root = vm.start_plugin(plugin.clone()).map_err(|e| e.to_string())?;
        Ok(Harness { vm, server, root, plugin })
    }

    /// Creates a stream with these request headers and runs `on_request_headers`.
    pub fn request(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> (u32, TestStream, Verdict) {
        let stream = TestStream::with_request(headers);
        let ctx = self.vm.create_stream(self.root, Box::new(stream.clone())).expect("create stream");
        let n = headers.len();
        let verdict = self.vm.on_request_headers(ctx, n, end_of_stream).expect("on_request_headers");
        (ctx, stream, verdict)
    }

    /// Runs `on_response_headers` with these response headers.
    pub fn respond(&mut self, ctx: u32, stream: &TestStream, headers: &[(&str, &str)], end_of_stream: bool) -> Verdict {
        stream.set_response(headers);
        self.vm.on_response_headers(ctx, headers.len(), end_of_stream).expect("on_response_headers")
    }

    /// Shared data of this harness' VM (`vm_id`) as text, as the plugin stored it.
    pub fn shared(&self, key: &str) -> Option<String> {
        proxy_wasm_host::shared::process_shared_data()
            .get(&self.plugin.vm_id, key.as_bytes())
            .map(|(v, _)| String::from_utf8_lossy(&v).into_owned())
    }

    /// Creates a stream context with these request headers, without calling the plugin.
    pub fn stream(&mut self, headers: &[(&str, &str)]) -> (u32, TestStream) {
        let stream = TestStream::with_request(headers);
        let ctx = self.vm.create_stream(self.root, Box::new(stream.clone())).expect("create stream");
        (ctx, stream)
    }

    /// Delivers queue notifications recorded by the server, as its event loop would.
    pub fn deliver_queue_ready(&mut self) {
        for (root, queue) in self.server.take_queue_ready() {
            self.vm.on_queue_ready(root, queue).expect("on_queue_ready");
        }
    }
}

pub fn fixture(path: &str) -> PathBuf {
    repo_root().join(path)
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
