//! A VM: one instance of a module, with the root and stream contexts of the
//! plugins that run in it, and the lifecycle the Proxy-Wasm spec prescribes.
//!
//! A `Vm` is used from one thread at a time (each server thread or worker has
//! its own); the server binding drives it with the `on_*` methods and receives
//! requests from it through [`ServerHost`] and [`HttpStream`].

use std::sync::Arc;

use crate::abi::{Action, StreamType};
use crate::host::{HttpCallResponse, HttpStream, PluginRef, ServerHost};
use crate::hostcalls::code::WasmCode;
use crate::hostcalls::state::{Context, Deferred, HostState, Phase, RootContext, StartupPolicy, StreamContext, VmEnv};
use crate::metrics::{process_metrics, MetricStore};
use crate::plugin::PluginInfo;
use crate::runtime::{ExportIndex, Instance, Limits, Trap, Val};
use crate::shared::{process_queues, process_shared_data, QueueStore, SharedDataStore};

/// Settings of a VM (the `vm_config` of a plugin).
#[derive(Clone)]
pub struct VmOptions {
    pub vm_id: String,
    pub vm_configuration: Vec<u8>,
    pub environment: Vec<(String, String)>,
    /// Defaults to the process-wide stores.
    pub shared_data: Option<Arc<dyn SharedDataStore>>,
    pub queues: Option<Arc<dyn QueueStore>>,
    pub metrics: Option<Arc<dyn MetricStore>>,
    /// Memory and time limits of the instance (none by default).
    pub limits: Limits,
    /// The plugins that will run in this instance, when known (the loader
    /// knows them): its start-up code (`_initialize`, `main`, `_start`) runs
    /// for all of them, under the capabilities every one of them allows and
    /// the smallest log rate (see [`StartupPolicy`]). Empty: no
    /// restriction.
    pub plugins: Vec<Arc<PluginInfo>>,
}

impl VmOptions {
    pub fn new(vm_id: impl Into<String>) -> VmOptions {
        VmOptions {
            vm_id: vm_id.into(),
            vm_configuration: Vec::new(),
            environment: Vec::new(),
            shared_data: None,
            queues: None,
            metrics: None,
            limits: Limits::default(),
            plugins: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{origin}: cannot instantiate: {message}")]
    Instantiate { origin: String, message: String },
    #[error("{origin}: start-up function {function} trapped: {trap}")]
    Startup { origin: String, function: &'static str, trap: Trap },
    #[error("plugin {plugin}: {callback} trapped: {trap}")]
    Trap { plugin: String, callback: &'static str, trap: Trap },
    #[error("plugin {plugin}: {callback} returned false; the plugin is rejected")]
    Rejected { plugin: String, callback: &'static str },
    #[error("the VM is unusable since an earlier failure: {0}")]
    Failed(String),
    #[error("no context with id {0} in this VM")]
    UnknownContext(u32),
}

/// What a stream callback decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on to the next plugin / the server.
    Continue,
    /// Hold this direction until the plugin resumes it (`HttpStream::resume`).
    Pause,
    /// The plugin sent a local response or closed the stream: skip the rest of the chain.
    Stop,
}

pub struct Vm {
    instance: Box<dyn Instance<HostState>>,
    code: Arc<WasmCode>,
    env: Arc<VmEnv>,
    failure: Option<String>,
    /// Callbacks run so far (for recycling after a number of calls).
    calls: u64,
    /// The memory limit was reached and logged (once per instance).
    memory_limit_logged: bool,
    /// Each callback's export, resolved when the instance is made (`None`:
    /// not exported): a callback then costs an array read, and one the
    /// module does not export costs nothing more.
    callbacks: [Option<ExportIndex>; Callback::COUNT],
    /// The module exports `proxy_on_done`, `proxy_on_log` or `proxy_on_delete`:
    /// without them a stream's end is only forgetting its context.
    teardown_callbacks: bool,
    /// Some plugin of the instance has a `capability_restriction_config`
    /// (`HostState::restricted`, kept here too so that a callback of an
    /// unrestricted instance does not reach into the store to learn it).
    restricted: bool,
}

/// The callbacks the host calls, by their place in [`Vm::callbacks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Callback {
    ContextCreate,
    VmStart,
    Configure,
    Tick,
    QueueReady,
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
    Done,
    Log,
    Delete,
    HttpCallResponse,
    ForeignFunction,
}

impl Callback {
    const ALL: [Callback; 16] = [
        Callback::ContextCreate,
        Callback::VmStart,
        Callback::Configure,
        Callback::Tick,
        Callback::QueueReady,
        Callback::RequestHeaders,
        Callback::RequestBody,
        Callback::RequestTrailers,
        Callback::ResponseHeaders,
        Callback::ResponseBody,
        Callback::ResponseTrailers,
        Callback::Done,
        Callback::Log,
        Callback::Delete,
        Callback::HttpCallResponse,
        Callback::ForeignFunction,
    ];
    const COUNT: usize = Callback::ALL.len();

    /// The exports' names in the Proxy-Wasm ABI, in the order of [`Callback::ALL`].
    const NAMES: [&'static str; Callback::COUNT] = [
        "proxy_on_context_create",
        "proxy_on_vm_start",
        "proxy_on_configure",
        "proxy_on_tick",
        "proxy_on_queue_ready",
        "proxy_on_request_headers",
        "proxy_on_request_body",
        "proxy_on_request_trailers",
        "proxy_on_response_headers",
        "proxy_on_response_body",
        "proxy_on_response_trailers",
        "proxy_on_done",
        "proxy_on_log",
        "proxy_on_delete",
        "proxy_on_http_call_response",
        "proxy_on_foreign_function",
    ];

    /// The export's name in the Proxy-Wasm ABI (a table read: a `match`
    /// over 16 cases cost a jump per callback).
    fn name(self) -> &'static str {
        Callback::NAMES[self as usize]
    }
}

impl Vm {
    /// Instantiates `code` and runs its start-up functions.
    pub fn new(code: Arc<WasmCode>, options: VmOptions, server: Arc<dyn ServerHost>) -> Result<Vm, VmError> {
        // Start-up code speaks for every plugin of the instance: its log lines
        // name them all.
        let names = options.plugins.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(",");
        let env = Arc::new(VmEnv {
            abi: code.abi,
            log_ref: PluginRef { name: names, root_id: String::new(), vm_id: options.vm_id.clone() },
            startup: StartupPolicy::for_plugins(&options.plugins),
            vm_id: options.vm_id,
            vm_configuration: options.vm_configuration,
            environment: options.environment,
            server,
            shared_data: options.shared_data.unwrap_or_else(process_shared_data),
            queues: options.queues.unwrap_or_else(process_queues),
            metrics: options.metrics.unwrap_or_else(process_metrics),
        });
        let mut state = HostState::new(env.clone());
        state.allocator = code.allocator;
        let restricted = state.restricted;
        let instance = code
            .module
            .instantiate(state, &code.imports, &options.limits)
            .map_err(|e| VmError::Instantiate { origin: code.origin.clone(), message: e.to_string() })?;
        let mut vm = Vm {
            instance,
            code,
            env,
            failure: None,
            calls: 0,
            memory_limit_logged: false,
            callbacks: [None; Callback::COUNT],
            teardown_callbacks: false,
            restricted,
        };
        for callback in Callback::ALL {
            let name = callback.name();
            if vm.code.exports_function(name) {
                vm.callbacks[callback as usize] = vm.instance.resolve(name);
            }
        }
        vm.teardown_callbacks =
            [Callback::Done, Callback::Log, Callback::Delete].iter().any(|c| vm.callbacks[*c as usize].is_some());
        vm.start()?;
        Ok(vm)
    }

    /// `_initialize` then `main` when exported, else `_start` (reactor vs command modules).
    fn start(&mut self) -> Result<(), VmError> {
        let mut functions: Vec<&'static str> = Vec::new();
        if self.code.exports_function("_initialize") {
            functions.push("_initialize");
            if self.code.exports_function("main") {
                functions.push("main");
            } else if self.code.exports_function("__main_void") {
                functions.push("__main_void");
            }
        } else if self.code.exports_function("_start") {
            functions.push("_start");
        }
        for function in functions {
            let args: Vec<Val> =
                match self.code.module.exports().iter().find(|e| e.name == function).and_then(|e| e.ty.as_ref()) {
                    Some(ty) => ty.params.iter().map(|_| Val::I32(0)).collect(),
                    None => Vec::new(),
                };
            self.instance.state().phase = Phase::Startup;
            let r = self.instance.call(function, &args);
            self.instance.state().phase = Phase::Running;
            if let Err(trap) = r {
                // A command module may end `_start` with proc_exit(0): that is success.
                if self.instance.state().exited == Some(0) {
                    self.instance.state().exited = None;
                    continue;
                }
                let err = VmError::Startup { origin: self.code.origin.clone(), function, trap };
                self.failure = Some(err.to_string());
                return Err(err);
            }
        }
        Ok(())
    }

    /// How many callbacks the instance has run.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    pub fn code(&self) -> &Arc<WasmCode> {
        &self.code
    }

    pub fn vm_id(&self) -> &str {
        &self.env.vm_id
    }

    /// Why the VM is unusable, if it is. A trapped instance is not reused: its
    /// memory may be inconsistent.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Linear memory size in bytes.
    pub fn memory_size(&mut self) -> usize {
        self.instance.memory_size()
    }

    /// Calls a callback (`export`, resolved from its name) for `context_id`,
    /// then applies what it deferred. The common case (no trap, nothing
    /// deferred, no dropped log lines, memory under its limit) is a few
    /// flag tests around the call; the rest is out of line. Inlined into
    /// `call_if_exported`, its only caller on the hot path: one frame less
    /// per callback.
    #[inline(always)]
    fn enter(
        &mut self,
        context_id: u32,
        callback: &'static str,
        export: ExportIndex,
        args: &[Val],
    ) -> Result<Option<Val>, VmError> {
        if let Some(f) = &self.failure {
            return Err(VmError::Failed(f.clone()));
        }
        let st = self.instance.state();
        st.current_context = context_id;
        st.effective_context = context_id;
        st.callback = Some(callback);
        st.phase = Phase::Running;
        self.calls += 1;
        let r = self.instance.call_resolved(export, args);
        if self.instance.take_memory_refusal() && !self.memory_limit_logged {
            self.log_memory_limit(context_id, callback);
        }
        let st = self.instance.state();
        st.callback = None;
        if st.http_call_response.is_some() {
            st.http_call_response = None;
        }
        if st.call_data.is_some() {
            st.call_data = None;
        }
        if st.log_drops_pending {
            st.report_dropped_logs(std::time::Instant::now());
        }
        let deferred = !st.deferred.is_empty();
        match r {
            Ok(v) => {
                if deferred {
                    self.apply_deferred();
                }
                Ok(v)
            }
            Err(trap) => Err(self.trapped(context_id, callback, trap)),
        }
    }

    /// Who a log line about `context_id` is from: its plugin, else the VM (a
    /// callback does not remove its own context: that is deferred).
    fn plugin_ref(&mut self, context_id: u32) -> PluginRef {
        match self.instance.state().contexts.get(&context_id) {
            Some(c) => c.plugin().log_ref(),
            None => self.env.log_ref.clone(),
        }
    }

    #[cold]
    #[inline(never)]
    fn log_memory_limit(&mut self, context_id: u32, callback: &'static str) {
        self.memory_limit_logged = true;
        let plugin_ref = self.plugin_ref(context_id);
        let size = self.instance.memory_size();
        self.env.server.log(&plugin_ref, crate::abi::LogLevel::Error, &format!("{callback}: linear memory reached its limit (vm_config.limits.max_memory, {size} bytes now): memory.grow fails from here on (logged once)"));
    }

    /// A callback trapped: logged, and the VM is unusable from here on.
    #[cold]
    #[inline(never)]
    fn trapped(&mut self, context_id: u32, callback: &'static str, trap: Trap) -> VmError {
        let plugin_ref = self.plugin_ref(context_id);
        let mut msg = format!("{callback} trapped: {}", trap.message);
        if let Some(bt) = &trap.backtrace {
            msg.push('\n');
            msg.push_str(bt.trim_end());
        }
        self.env.server.log(&plugin_ref, crate::abi::LogLevel::Critical, &msg);
        self.failure = Some(format!("{}: {callback} trapped: {}", plugin_ref.name, trap.message));
        self.instance.state().deferred.clear();
        VmError::Trap { plugin: plugin_ref.name, callback, trap }
    }

    /// Calls `callback` if the module exports it; `Ok(None)` otherwise.
    fn call_if_exported(&mut self, context_id: u32, callback: Callback, args: &[i64]) -> Result<Option<Val>, VmError> {
        let resolved = self.callbacks[callback as usize];
        let export = match resolved {
            Some(export) if !self.restricted || self.callback_allowed(context_id, callback.name()) => export,
            _ => {
                if let Some(f) = &self.failure {
                    return Err(VmError::Failed(f.clone()));
                }
                return Ok(None);
            }
        };
        // Callbacks take at most five arguments: no allocation per call.
        let mut buf = [Val::I32(0); 5];
        if args.len() > buf.len() {
            return self.enter_with_many_args(context_id, callback, export, args);
        }
        for (slot, a) in buf.iter_mut().zip(args) {
            *slot = Val::I32(*a as i32);
        }
        self.enter(context_id, callback.name(), export, &buf[..args.len()])
    }

    /// `enter` with more arguments than any callback of the ABI takes (the
    /// call then fails on the export's arity, as it should).
    #[cold]
    #[inline(never)]
    fn enter_with_many_args(
        &mut self,
        context_id: u32,
        callback: Callback,
        export: ExportIndex,
        args: &[i64],
    ) -> Result<Option<Val>, VmError> {
        let args: Vec<Val> = args.iter().map(|a| Val::I32(*a as i32)).collect();
        self.enter(context_id, callback.name(), export, &args)
    }

    /// A callback outside the plugin's `capability_restriction_config` is
    /// never called (as if the module did not export it); logged once.
    fn callback_allowed(&mut self, context_id: u32, callback: &'static str) -> bool {
        let st = self.instance.state();
        if !st.restricted {
            return true;
        }
        let Some(plugin) = st.contexts.get(&context_id).map(|c| c.plugin().clone()) else { return true };
        if plugin.authorizations.allows_capability(callback) {
            return true;
        }
        let (current, effective) = (st.current_context, st.effective_context);
        st.current_context = context_id;
        st.effective_context = context_id;
        st.log_denial(format!("callback {callback}"), "not in capability_restriction_config.allowed_capabilities");
        st.current_context = current;
        st.effective_context = effective;
        false
    }

    fn apply_deferred(&mut self) {
        let deferred = std::mem::take(&mut self.instance.state().deferred);
        for d in deferred {
            match d {
                Deferred::Resume { context_id, stream } => {
                    if let Some(Context::Stream(s)) = self.instance.state().contexts.get_mut(&context_id) {
                        // The stream may have moved on already; resuming twice is harmless.
                        let _ = s.stream.resume(stream);
                    }
                }
                Deferred::Done { context_id } => match self.instance.state().contexts.get(&context_id) {
                    Some(Context::Stream(_)) => {
                        let _ = self.log_and_delete_stream(context_id);
                    }
                    _ => {
                        let _ = self.delete_root(context_id);
                    }
                },
            }
        }
    }

    // ------------------------------------------------------------ root contexts

    /// Creates the plugin's root context: `proxy_on_context_create(root, 0)`,
    /// `proxy_on_vm_start`, `proxy_on_configure`. `false` from either rejects
    /// the plugin (its context is dropped).
    pub fn start_plugin(&mut self, plugin: Arc<PluginInfo>) -> Result<u32, VmError> {
        if let Some(f) = &self.failure {
            return Err(VmError::Failed(f.clone()));
        }
        let st = self.instance.state();
        st.restricted |= plugin.authorizations.capabilities.is_some();
        self.restricted = st.restricted;
        let id = st.insert_context(Context::Root(RootContext {
            plugin: plugin.clone(),
            tick_period: None,
            awaiting_done: false,
            properties: Default::default(),
        }));
        let vm_config_len = self.env.vm_configuration.len() as i64;
        let plugin_config_len = plugin.configuration.len() as i64;
        let steps: [(Callback, &[i64]); 3] = [
            (Callback::ContextCreate, &[id as i64, 0]),
            (Callback::VmStart, &[id as i64, vm_config_len]),
            (Callback::Configure, &[id as i64, plugin_config_len]),
        ];
        for (callback, args) in steps {
            match self.call_if_exported(id, callback, args) {
                Ok(Some(v)) if callback != Callback::ContextCreate && v.as_i32() == 0 => {
                    self.forget_root(id);
                    return Err(VmError::Rejected { plugin: plugin.name.clone(), callback: callback.name() });
                }
                Ok(_) => {}
                Err(e) => {
                    self.forget_root(id);
                    return Err(e);
                }
            }
        }
        Ok(id)
    }

    /// Removes a root context without calling the plugin, and stops what it started.
    fn forget_root(&mut self, id: u32) {
        let st = self.instance.state();
        st.awaiting_done.remove(&id);
        if let Some(Context::Root(root)) = st.contexts.remove(&id) {
            if root.tick_period.is_some() {
                st.env.server.set_tick_period(id, None);
            }
        }
        Self::cancel_http_calls(st, |(root, _)| root == id);
    }

    /// Cancels the outgoing calls selected by `which(root, dispatcher)`.
    fn cancel_http_calls(st: &mut HostState, which: impl Fn((u32, u32)) -> bool) {
        let tokens: Vec<u32> = st.http_calls.iter().filter(|(_, v)| which(**v)).map(|(t, _)| *t).collect();
        for t in tokens {
            st.http_calls.remove(&t);
            st.env.server.cancel_http_call(t);
        }
    }

    fn delete_root(&mut self, id: u32) -> Result<(), VmError> {
        let r = self.call_if_exported(id, Callback::Delete, &[id as i64]);
        self.forget_root(id);
        r.map(|_| ())
    }

    /// Shuts a plugin down: `proxy_on_done`; when it returns true (or the
    /// module has no such callback), `proxy_on_delete` right away and `true`.
    /// When it returns false the plugin finishes later with `proxy_done`, or
    /// when its wait is over (see [`Vm::expire_awaiting_done`]); a plugin
    /// already waiting is not called again.
    pub fn shutdown_plugin(&mut self, root_context_id: u32) -> Result<bool, VmError> {
        match self.instance.state().contexts.get(&root_context_id) {
            Some(Context::Root(r)) if r.awaiting_done => return Ok(false),
            Some(Context::Root(_)) => {}
            _ => return Err(VmError::UnknownContext(root_context_id)),
        }
        match self.call_if_exported(root_context_id, Callback::Done, &[root_context_id as i64]) {
            Ok(Some(v)) if v.as_i32() == 0 => {
                let st = self.instance.state();
                if let Some(Context::Root(r)) = st.contexts.get_mut(&root_context_id) {
                    r.awaiting_done = true;
                    let deadline = std::time::Instant::now() + r.plugin.done_timeout;
                    st.awaiting_done.insert(root_context_id, deadline);
                }
                Ok(false)
            }
            Ok(_) => self.delete_root(root_context_id).map(|_| true),
            Err(e) => {
                self.forget_root(root_context_id);
                Err(e)
            }
        }
    }

    /// Whether a root context still exists (it may be awaiting `proxy_done`).
    pub fn has_context(&mut self, context_id: u32) -> bool {
        self.instance.state().contexts.contains_key(&context_id)
    }

    pub fn on_tick(&mut self, root_context_id: u32) -> Result<(), VmError> {
        self.root_event(root_context_id, Callback::Tick, &[root_context_id as i64])
    }

    pub fn on_queue_ready(&mut self, root_context_id: u32, queue_id: u32) -> Result<(), VmError> {
        self.root_event(root_context_id, Callback::QueueReady, &[root_context_id as i64, queue_id as i64])
    }

    /// Delivers the answer to `proxy_http_call` to the root context that made
    /// it. Unknown tokens (cancelled calls) are ignored.
    ///
    /// An answer larger than the plugin's `max_http_call_response_size`
    /// (servers stop reading there; this also holds for a C server that does
    /// not) is delivered as a failure: no headers, and `proxy_get_status`
    /// says why (code [`FAILURE_TOO_LARGE`](crate::http_client::FAILURE_TOO_LARGE)).
    pub fn on_http_call_response(&mut self, token: u32, mut response: HttpCallResponse) -> Result<(), VmError> {
        let st = self.instance.state();
        let Some((root_id, _)) = st.http_calls.remove(&token) else { return Ok(()) };
        let Some(plugin) = st.contexts.get(&root_id).map(|c| c.plugin().clone()) else { return Ok(()) };
        let cap = plugin.quotas.max_http_call_response_size;
        let pairs_size =
            |pairs: &[crate::abi::pairs::Pair]| pairs.iter().map(|(k, v)| k.len() as u64 + v.len() as u64).sum::<u64>();
        let size = pairs_size(&response.headers) + response.body.len() as u64 + pairs_size(&response.trailers);
        let too_large = match &response.failure {
            Some((code, _)) => *code == crate::http_client::FAILURE_TOO_LARGE,
            None => size > cap,
        };
        if too_large {
            let why = format!("the response is larger than vm_config.limits.max_http_call_response_size ({cap} bytes)");
            HostState::log_limit_for(
                &mut st.denials_logged,
                &st.env,
                &plugin.log_ref(),
                "max_http_call_response_size",
                &format!("http_call failed: {why}; delivered as a failure"),
            );
            response = HttpCallResponse::failed(crate::http_client::FAILURE_TOO_LARGE, why);
        }
        st.last_status = response.failure.clone().unwrap_or((0, String::new()));
        let args = [
            root_id as i64,
            token as i64,
            response.headers.len() as i64,
            response.body.len() as i64,
            response.trailers.len() as i64,
        ];
        st.http_call_response = Some(response);
        let r = self.call_if_exported(root_id, Callback::HttpCallResponse, &args);
        self.instance.state().http_call_response = None;
        r.map(|_| ())
    }

    /// `proxy_on_foreign_function(root, function_id, size)` with `data` in the CallData buffer.
    pub fn on_foreign_function(
        &mut self,
        root_context_id: u32,
        function_id: u32,
        data: Vec<u8>,
    ) -> Result<(), VmError> {
        let len = data.len() as i64;
        self.instance.state().call_data = Some(data);
        let r = self.root_event(
            root_context_id,
            Callback::ForeignFunction,
            &[root_context_id as i64, function_id as i64, len],
        );
        self.instance.state().call_data = None;
        r
    }

    fn root_event(&mut self, root_context_id: u32, callback: Callback, args: &[i64]) -> Result<(), VmError> {
        if !matches!(self.instance.state().contexts.get(&root_context_id), Some(Context::Root(_))) {
            return Err(VmError::UnknownContext(root_context_id));
        }
        self.call_if_exported(root_context_id, callback, args).map(|_| ())
    }

    // ------------------------------------------------------------ stream contexts

    /// Creates a stream context under `root_context_id` for one transaction.
    /// Contexts whose wait for `proxy_done` is over are deleted first.
    pub fn create_stream(&mut self, root_context_id: u32, stream: Box<dyn HttpStream>) -> Result<u32, VmError> {
        if !self.instance.state().awaiting_done.is_empty() {
            self.expire_awaiting_done(std::time::Instant::now());
        }
        let st = self.instance.state();
        let plugin = match st.contexts.get(&root_context_id) {
            Some(Context::Root(r)) => r.plugin.clone(),
            _ => return Err(VmError::UnknownContext(root_context_id)),
        };
        let id = st.insert_context(Context::Stream(StreamContext {
            root_context_id,
            plugin,
            stream,
            request_body: Vec::new(),
            response_body: Vec::new(),
            request_body_eos: false,
            response_body_eos: false,
            properties: Default::default(),
            local_response_sent: false,
            closed: false,
            awaiting_done: false,
        }));
        if let Err(e) = self.call_if_exported(id, Callback::ContextCreate, &[id as i64, root_context_id as i64]) {
            self.instance.state().contexts.remove(&id);
            return Err(e);
        }
        Ok(id)
    }

    fn stream_mut(&mut self, context_id: u32) -> Result<&mut StreamContext, VmError> {
        match self.instance.state().contexts.get_mut(&context_id) {
            Some(Context::Stream(s)) => Ok(s),
            _ => Err(VmError::UnknownContext(context_id)),
        }
    }

    fn stream_callback(&mut self, context_id: u32, callback: Callback, args: &[i64]) -> Result<Verdict, VmError> {
        let exported = self.callbacks[callback as usize].is_some();
        let s = self.stream_mut(context_id)?;
        s.local_response_sent = false;
        if !exported {
            // Nothing runs: the stream is as the last callback left it.
            let closed = s.closed;
            if let Some(f) = &self.failure {
                return Err(VmError::Failed(f.clone()));
            }
            return Ok(if closed { Verdict::Stop } else { Verdict::Continue });
        }
        let r = self.call_if_exported(context_id, callback, args)?;
        let s = self.stream_mut(context_id)?;
        if s.local_response_sent || s.closed {
            // The return value does not matter after a local response.
            return Ok(Verdict::Stop);
        }
        Ok(match r.map(|v| Action::from_raw(v.as_i32())) {
            Some(Action::Pause) => Verdict::Pause,
            _ => Verdict::Continue,
        })
    }

    /// The arguments of a headers callback (on the stack: no allocation per call).
    fn headers_args(&self, context_id: u32, count: usize, end_of_stream: bool) -> ([i64; 3], usize) {
        let n = if self.code.abi.header_callbacks_have_eos() { 3 } else { 2 };
        ([context_id as i64, count as i64, end_of_stream as i64], n)
    }

    /// How many pairs the header map `map` of stream context `context_id` holds now (pseudo-headers
    /// included), `None` if there is no such context or map.
    pub fn header_count(&mut self, context_id: u32, map: crate::abi::MapType) -> Option<usize> {
        match self.instance.state().contexts.get(&context_id) {
            Some(Context::Stream(s)) => s.stream.header_count(map).ok(),
            _ => None,
        }
    }

    /// `end_of_stream` is true only when no body follows the headers.
    pub fn on_request_headers(
        &mut self,
        context_id: u32,
        num_headers: usize,
        end_of_stream: bool,
    ) -> Result<Verdict, VmError> {
        let (args, n) = self.headers_args(context_id, num_headers, end_of_stream);
        self.stream_callback(context_id, Callback::RequestHeaders, &args[..n])
    }

    pub fn on_response_headers(
        &mut self,
        context_id: u32,
        num_headers: usize,
        end_of_stream: bool,
    ) -> Result<Verdict, VmError> {
        let (args, n) = self.headers_args(context_id, num_headers, end_of_stream);
        self.stream_callback(context_id, Callback::ResponseHeaders, &args[..n])
    }

    /// Adds a body chunk to what the plugin holds and calls it with the
    /// cumulative size. On `Continue` the server sends on [`Vm::take_body`];
    /// on `Pause` it keeps feeding chunks (or, at end of stream, waits for the
    /// plugin to resume) and nothing is sent on meanwhile.
    ///
    /// The bytes held for a plugin that paused are bounded by its
    /// `max_body_size` (see [`Vm::body_too_large`]): a chunk that would make
    /// them exceed it is not delivered, and neither is a Pause that leaves more
    /// held; the stream then ends as Envoy ends one whose buffered body passed
    /// its buffer limit, and the verdict is `Stop`.
    pub fn on_request_body(&mut self, context_id: u32, chunk: &[u8], end_of_stream: bool) -> Result<Verdict, VmError> {
        self.body_callback(context_id, StreamType::HttpRequest, chunk, end_of_stream)
    }

    pub fn on_response_body(&mut self, context_id: u32, chunk: &[u8], end_of_stream: bool) -> Result<Verdict, VmError> {
        self.body_callback(context_id, StreamType::HttpResponse, chunk, end_of_stream)
    }

    fn body_callback(
        &mut self,
        context_id: u32,
        direction: StreamType,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Verdict, VmError> {
        let s = self.stream_mut(context_id)?;
        let limit = s.plugin.max_body_size;
        let (body, eos) = match direction {
            StreamType::HttpResponse => (&mut s.response_body, &mut s.response_body_eos),
            _ => (&mut s.request_body, &mut s.request_body_eos),
        };
        // Bytes still held are what the plugin paused on: with this chunk the
        // host would hold more than it may.
        let held = body.len() as u64;
        if held > 0 && held.saturating_add(chunk.len() as u64) > limit {
            return self.body_too_large(context_id, direction, held.saturating_add(chunk.len() as u64));
        }
        body.extend_from_slice(chunk);
        *eos = end_of_stream;
        let size = body.len() as i64;
        let callback =
            if direction == StreamType::HttpResponse { Callback::ResponseBody } else { Callback::RequestBody };
        let verdict = self.stream_callback(context_id, callback, &[context_id as i64, size, end_of_stream as i64])?;
        if verdict == Verdict::Pause {
            let s = self.stream_mut(context_id)?;
            let held =
                if direction == StreamType::HttpResponse { s.response_body.len() } else { s.request_body.len() } as u64;
            if held > limit {
                return self.body_too_large(context_id, direction, held);
            }
        }
        Ok(verdict)
    }

    /// The body held for a plugin would pass its `max_body_size`: the held
    /// bytes are dropped and the stream ends as Envoy's connection manager
    /// ends it when a filter's buffered body passes the buffer limit
    /// (`requestDataTooLarge` / `responseDataTooLarge`): a request gets a
    /// local 413 and is not sent on; a response gets a local 500 while its
    /// header has not gone out, else it is closed (reset). One line naming the
    /// plugin is logged each time, as nginx logs each body over
    /// `client_max_body_size`.
    fn body_too_large(&mut self, context_id: u32, direction: StreamType, size: u64) -> Result<Verdict, VmError> {
        let s = self.stream_mut(context_id)?;
        let limit = s.plugin.max_body_size;
        let plugin = s.plugin.log_ref();
        s.request_body_eos = false;
        s.response_body_eos = false;
        let outcome = if direction == StreamType::HttpRequest {
            s.request_body = Vec::new();
            if s.stream.send_local_response(crate::host::LocalResponse::request_payload_too_large()).is_ok() {
                s.local_response_sent = true;
                "the request gets 413 and is not sent on"
            } else {
                let _ = s.stream.close(StreamType::HttpRequest);
                s.closed = true;
                "the request is closed"
            }
        } else {
            s.response_body = Vec::new();
            if s.stream.send_local_response(crate::host::LocalResponse::response_payload_too_large()).is_ok() {
                s.local_response_sent = true;
                "the response is replaced by a 500"
            } else {
                let _ = s.stream.close(StreamType::HttpResponse);
                s.closed = true;
                "the response is cut off (its header went out already)"
            }
        };
        let what = if direction == StreamType::HttpRequest { "request" } else { "response" };
        self.env.server.log(&plugin, crate::abi::LogLevel::Warn, &format!("the {what} body held for the plugin would reach {size} bytes, over its max_body_size ({limit} bytes): {outcome}"));
        Ok(Verdict::Stop)
    }

    /// Takes the body bytes the plugin let through (possibly edited).
    pub fn take_body(&mut self, context_id: u32, direction: StreamType) -> Result<Vec<u8>, VmError> {
        let s = self.stream_mut(context_id)?;
        Ok(match direction {
            StreamType::HttpResponse => std::mem::take(&mut s.response_body),
            _ => std::mem::take(&mut s.request_body),
        })
    }

    pub fn on_request_trailers(&mut self, context_id: u32, num_trailers: usize) -> Result<Verdict, VmError> {
        self.stream_callback(context_id, Callback::RequestTrailers, &[context_id as i64, num_trailers as i64])
    }

    pub fn on_response_trailers(&mut self, context_id: u32, num_trailers: usize) -> Result<Verdict, VmError> {
        self.stream_callback(context_id, Callback::ResponseTrailers, &[context_id as i64, num_trailers as i64])
    }

    /// Ends a stream context: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`,
    /// each once, then forgets it. Also for aborted transactions. If the VM
    /// failed, the context is dropped without calling the plugin.
    ///
    /// When `proxy_on_done` returns false the plugin is not finished with the
    /// stream: `on_log` and `on_delete` run when it calls `proxy_done`. The
    /// server's transaction is gone by then, so the stream is detached first
    /// (see [`HttpStream::detach`]). Returns whether the context is gone.
    pub fn finish_stream(&mut self, context_id: u32) -> Result<bool, VmError> {
        let s = self.stream_mut(context_id)?;
        if s.awaiting_done {
            return Ok(false); // finished already, waiting for proxy_done
        }
        if !self.teardown_callbacks {
            self.drop_stream(context_id);
            return Ok(true);
        }
        if self.failure.is_none() {
            match self.call_if_exported(context_id, Callback::Done, &[context_id as i64]) {
                Ok(Some(v)) if v.as_i32() == 0 && self.failure.is_none() => {
                    let s = self.stream_mut(context_id)?;
                    s.awaiting_done = true;
                    s.stream.detach();
                    let deadline = std::time::Instant::now() + s.plugin.done_timeout;
                    let st = self.instance.state();
                    st.awaiting_done.insert(context_id, deadline);
                    Self::cancel_http_calls(st, |(_, d)| d == context_id);
                    return Ok(false);
                }
                Ok(_) => {}
                Err(e) => {
                    self.drop_stream(context_id);
                    return Err(e);
                }
            }
        }
        self.log_and_delete_stream(context_id).map(|_| true)
    }

    /// `proxy_on_log` then `proxy_on_delete`, then the context is forgotten
    /// and its pending outgoing calls cancelled.
    fn log_and_delete_stream(&mut self, context_id: u32) -> Result<(), VmError> {
        let mut first_error = None;
        for callback in [Callback::Log, Callback::Delete] {
            if self.failure.is_some() {
                break;
            }
            if let Err(e) = self.call_if_exported(context_id, callback, &[context_id as i64]) {
                first_error.get_or_insert(e);
            }
        }
        self.drop_stream(context_id);
        first_error.map_or(Ok(()), Err)
    }

    fn drop_stream(&mut self, context_id: u32) {
        let st = self.instance.state();
        st.contexts.delete(&context_id);
        // Both are empty for most streams: no hashing then.
        if !st.awaiting_done.is_empty() {
            st.awaiting_done.remove(&context_id);
        }
        if !st.http_calls.is_empty() {
            Self::cancel_http_calls(st, |(_, d)| d == context_id);
        }
    }

    /// Whether a context waits for the plugin's `proxy_done`.
    pub fn awaiting_done(&mut self) -> bool {
        !self.instance.state().awaiting_done.is_empty()
    }

    /// When the first wait for `proxy_done` ends, if any context waits.
    pub fn next_done_deadline(&mut self) -> Option<std::time::Instant> {
        self.instance.state().awaiting_done.values().min().copied()
    }

    /// Ends the waits for `proxy_done` that are over at `now`: a context whose
    /// `on_done` returned false gets `proxy_on_log` (a stream) and
    /// `proxy_on_delete` as if the plugin had called `proxy_done`, and is
    /// forgotten, so that a plugin that never calls it cannot keep its
    /// contexts, nor the instance (a replaced generation waits for them), for
    /// ever. The wait is the plugin's `pause_timeout`; logged once per plugin
    /// and kind of context. Returns how many contexts were deleted.
    ///
    /// proxy-wasm-cpp-host has no such deadline (as read from its sources
    /// from memory, not checked here): a root context whose `on_done` returned
    /// false stays in `WasmBase::pending_done_` until `proxy_done`, and Envoy
    /// deletes a stream's context when the stream ends without waiting for
    /// its `proxy_done`. We wait, as for roots, but not for ever.
    pub fn expire_awaiting_done(&mut self, now: std::time::Instant) -> usize {
        let st = self.instance.state();
        let mut expired: Vec<u32> =
            st.awaiting_done.iter().filter(|(_, deadline)| **deadline <= now).map(|(id, _)| *id).collect();
        expired.sort_unstable();
        for &id in &expired {
            let st = self.instance.state();
            st.awaiting_done.remove(&id);
            let (plugin, kind) = match st.contexts.get_mut(&id) {
                Some(Context::Stream(s)) => {
                    s.awaiting_done = false;
                    (s.plugin.clone(), "stream")
                }
                Some(Context::Root(r)) => {
                    r.awaiting_done = false;
                    (r.plugin.clone(), "root")
                }
                None => continue,
            };
            let message = format!(
                "proxy_on_done of a {kind} context returned false and proxy_done did not come within {:?} (pause_timeout): the context is deleted (logged once)",
                plugin.done_timeout
            );
            let (current, effective) = (st.current_context, st.effective_context);
            st.current_context = id;
            st.log_once(&format!("done timeout {kind}"), crate::abi::LogLevel::Warn, &message);
            st.current_context = current;
            st.effective_context = effective;
            let r = if kind == "stream" { self.log_and_delete_stream(id) } else { self.delete_root(id) };
            match r {
                // A failed instance is not called; the context is dropped all the same.
                Ok(()) | Err(VmError::Failed(_)) => {}
                Err(e) => self.env.server.log(
                    &plugin.log_ref(),
                    crate::abi::LogLevel::Error,
                    &format!("deleting a context whose proxy_done did not come: {e}"),
                ),
            }
        }
        expired.len()
    }

    /// Number of live contexts (roots and streams), for diagnostics and tests.
    pub fn context_count(&mut self) -> usize {
        self.instance.state().contexts.len()
    }
}
