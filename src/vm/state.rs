//! The host-side state of one instance: its contexts and what the current
//! callback may touch. It lives inside the runtime's store so hostcalls reach it.

use std::collections::HashMap;

use crate::hash::FastMap;
use std::sync::Arc;
use std::time::Duration;

use crate::abi::{AbiVersion, StreamType};
use crate::host::{HttpCallResponse, HttpStream, PluginRef, ServerHost};
use crate::metrics::MetricStore;
use crate::plugin::PluginInfo;
use crate::shared::{QueueStore, SharedDataStore};

/// A root context: one per plugin in this instance.
pub struct RootContext {
    pub plugin: Arc<PluginInfo>,
    pub tick_period: Option<Duration>,
    /// `on_done` returned false: the plugin finishes with `proxy_done`.
    pub awaiting_done: bool,
    /// Properties the plugin set on its root context.
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
}

/// A stream context: one per HTTP transaction and plugin.
pub struct StreamContext {
    pub root_context_id: u32,
    pub plugin: Arc<PluginInfo>,
    pub stream: Box<dyn HttpStream>,
    /// Body bytes held for the plugin: the current chunk, or everything
    /// buffered since the plugin last returned Pause from a body callback.
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub request_body_eos: bool,
    pub response_body_eos: bool,
    /// Properties the plugin set that the server does not own.
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    pub local_response_sent: bool,
    pub closed: bool,
    /// `on_done` returned false: `on_log`/`on_delete` wait for `proxy_done`.
    pub awaiting_done: bool,
}

pub enum Context {
    Root(RootContext),
    Stream(StreamContext),
}

impl Context {
    pub fn properties_mut(&mut self) -> &mut HashMap<Vec<u8>, Vec<u8>> {
        match self {
            Context::Root(r) => &mut r.properties,
            Context::Stream(s) => &mut s.properties,
        }
    }

    pub fn properties(&self) -> &HashMap<Vec<u8>, Vec<u8>> {
        match self {
            Context::Root(r) => &r.properties,
            Context::Stream(s) => &s.properties,
        }
    }

    pub fn plugin(&self) -> &Arc<PluginInfo> {
        match self {
            Context::Root(r) => &r.plugin,
            Context::Stream(s) => &s.plugin,
        }
    }
}

/// Actions a callback asked for that take effect when it has returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferred {
    Resume { context_id: u32, stream: StreamType },
    /// `proxy_done` from a root context whose `on_done` returned false.
    Done { context_id: u32 },
}

/// Where in the instance's life we are; start-up restricts hostcalls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `_initialize`/`main`/`_start`, or the allocator.
    Startup,
    Running,
}

/// Process-wide services and identity shared by all contexts of an instance.
pub struct VmEnv {
    pub abi: AbiVersion,
    pub vm_id: String,
    pub vm_configuration: Vec<u8>,
    /// WASI environment: only the variables the plugin configuration lists.
    pub environment: Vec<(String, String)>,
    pub server: Arc<dyn ServerHost>,
    pub shared_data: Arc<dyn SharedDataStore>,
    pub queues: Arc<dyn QueueStore>,
    pub metrics: Arc<dyn MetricStore>,
    /// Identifies the VM in log lines written outside any plugin context.
    pub log_ref: PluginRef,
}

pub struct HostState {
    pub env: Arc<VmEnv>,
    pub contexts: FastMap<u32, Context>,
    /// The context the current callback was called for.
    pub current_context: u32,
    /// The context hostcalls act on; `proxy_set_effective_context` changes it
    /// and every entry into the VM resets it.
    pub effective_context: u32,
    pub phase: Phase,
    /// The guest export being called (e.g. `proxy_on_configure`), if any.
    pub callback: Option<&'static str>,
    pub deferred: Vec<Deferred>,
    /// The allocator export used to return data to the guest.
    pub allocator: Option<&'static str>,
    /// The response being delivered by `proxy_on_http_call_response`.
    pub http_call_response: Option<HttpCallResponse>,
    /// The argument of the foreign function being called (buffer CallData).
    pub call_data: Option<Vec<u8>>,
    /// What `proxy_get_status` reports: the last call's outcome.
    pub last_status: (u32, String),
    pub next_context_id: u32,
    pub next_http_call_token: u32,
    /// Outstanding outgoing calls: token -> (root context that gets the
    /// answer, context that dispatched it, cancelled with it).
    pub http_calls: HashMap<u32, (u32, u32)>,
    /// Set by WASI `proc_exit`: the instance cannot be used any more.
    pub exited: Option<i32>,
    /// Some plugin of this instance has a `capability_restriction_config`:
    /// hostcalls check it (others skip the lookup).
    pub restricted: bool,
    /// Denials already logged, per plugin and what was denied (logged once).
    pub denials_logged: std::collections::HashSet<(String, String)>,
}

impl HostState {
    pub fn new(env: Arc<VmEnv>) -> HostState {
        HostState {
            env,
            contexts: FastMap::default(),
            current_context: 0,
            effective_context: 0,
            phase: Phase::Startup,
            callback: None,
            deferred: Vec::new(),
            allocator: None,
            http_call_response: None,
            call_data: None,
            last_status: (0, String::new()),
            next_context_id: 1,
            next_http_call_token: 1,
            http_calls: HashMap::new(),
            exited: None,
            restricted: false,
            denials_logged: Default::default(),
        }
    }

    /// Logs a denial once per plugin and `what` (a hostcall, an upstream...).
    pub fn log_denial(&mut self, what: String, why: &str) {
        let plugin = self.log_ref();
        if self.denials_logged.insert((plugin.name.clone(), what.clone())) {
            self.env.server.log(&plugin, crate::abi::LogLevel::Warn, &format!("denied {what}: {why} (logged once)"));
        }
    }

    /// Logs, once per plugin of the effective context and `limit`, that a
    /// cap (`vm_config.limits`, or a server's own) refused something.
    pub fn log_limit(&mut self, limit: &str, message: &str) {
        let plugin = self.log_ref();
        Self::log_limit_for(&mut self.denials_logged, &self.env, &plugin, limit, message);
    }

    /// As [`HostState::log_limit`], for `plugin` (outside any hostcall).
    pub fn log_limit_for(logged: &mut std::collections::HashSet<(String, String)>, env: &VmEnv, plugin: &PluginRef, limit: &str, message: &str) {
        if logged.insert((plugin.name.clone(), format!("limit {limit}"))) {
            env.server.log(plugin, crate::abi::LogLevel::Warn, &format!("{message} (logged once)"));
        }
    }

    /// A fresh context id: never 0, never one in use.
    pub fn allocate_context_id(&mut self) -> u32 {
        loop {
            let id = self.next_context_id;
            self.next_context_id = self.next_context_id.wrapping_add(1).max(1);
            if id != 0 && !self.contexts.contains_key(&id) {
                return id;
            }
        }
    }

    pub fn allocate_http_call_token(&mut self) -> u32 {
        loop {
            let t = self.next_http_call_token;
            self.next_http_call_token = self.next_http_call_token.wrapping_add(1).max(1);
            if t != 0 && !self.http_calls.contains_key(&t) {
                return t;
            }
        }
    }

    pub fn effective(&self) -> Option<&Context> {
        self.contexts.get(&self.effective_context)
    }

    pub fn effective_mut(&mut self) -> Option<&mut Context> {
        self.contexts.get_mut(&self.effective_context)
    }

    pub fn effective_stream(&mut self) -> Option<&mut StreamContext> {
        match self.contexts.get_mut(&self.effective_context) {
            Some(Context::Stream(s)) => Some(s),
            _ => None,
        }
    }

    /// The root context of the effective context (itself if it is a root).
    pub fn effective_root_id(&self) -> Option<u32> {
        match self.contexts.get(&self.effective_context)? {
            Context::Root(_) => Some(self.effective_context),
            Context::Stream(s) => Some(s.root_context_id),
        }
    }

    /// The plugin whose context is effective, for logs and properties.
    pub fn effective_plugin(&self) -> Option<Arc<PluginInfo>> {
        self.effective().map(|c| c.plugin().clone())
    }

    pub fn log_ref(&self) -> PluginRef {
        self.effective_plugin().map(|p| p.log_ref()).unwrap_or_else(|| self.env.log_ref.clone())
    }
}
