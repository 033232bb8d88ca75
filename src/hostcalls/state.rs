//! The host-side state of one instance: its contexts and what the current
//! callback may touch. It lives inside the runtime's store so hostcalls reach it.

use std::collections::{BTreeMap, HashMap};

use super::contexts::Contexts;
use crate::hash::FastMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::abi::{AbiVersion, LogLevel, StreamType};
use crate::authorizations::Authorizations;
use crate::host::{HttpCallResponse, HttpStream, PluginRef, ServerHost};
use crate::metrics::MetricStore;
use crate::plugin::PluginInfo;
use crate::shared::{QueueStore, SharedDataStore};

/// Properties a plugin set on a context, by path: a B-tree made on the first
/// one set. A context holds few of them and most hold none: then making
/// the context costs nothing (a `HashMap` seeds its hasher from a
/// thread-local) and dropping it a test (an empty `BTreeMap`'s drop still
/// walks an iterator, ≈ 45 instructions per context, measured in callgrind).
#[derive(Default)]
pub struct Properties(Option<BTreeMap<Vec<u8>, Vec<u8>>>);

impl Properties {
    pub fn get(&self, path: &[u8]) -> Option<&Vec<u8>> {
        self.0.as_ref()?.get(path)
    }

    pub fn insert(&mut self, path: Vec<u8>, value: Vec<u8>) {
        self.0.get_or_insert_with(BTreeMap::new).insert(path, value);
    }
}

/// A root context: one per plugin in this instance.
pub struct RootContext {
    pub plugin: Arc<PluginInfo>,
    pub tick_period: Option<Duration>,
    /// `on_done` returned false: the plugin finishes with `proxy_done`.
    pub awaiting_done: bool,
    /// Properties the plugin set on its root context.
    pub properties: Properties,
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
    pub properties: Properties,
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
    pub fn properties_mut(&mut self) -> &mut Properties {
        match self {
            Context::Root(r) => &mut r.properties,
            Context::Stream(s) => &mut s.properties,
        }
    }

    pub fn properties(&self) -> &Properties {
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
    Resume {
        context_id: u32,
        stream: StreamType,
    },
    /// `proxy_done` from a root context whose `on_done` returned false.
    Done {
        context_id: u32,
    },
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
    /// What the VM's start-up code may do (see [`StartupPolicy`]).
    pub startup: StartupPolicy,
}

/// The rights of the code a VM runs before any plugin context exists
/// (`_initialize`, `main`, `_start`, and hostcalls made without a context):
/// that code runs on behalf of every plugin that shares the instance, so it
/// gets only what all of them allow: the capabilities in every plugin's
/// `allowed_capabilities` (a plugin without a restriction allows everything)
/// and the smallest `max_log_lines_per_second`.
pub struct StartupPolicy {
    /// Only `capabilities` is used.
    pub authorizations: Authorizations,
    pub max_log_lines_per_second: u32,
}

impl StartupPolicy {
    /// The policy for a VM shared by `plugins` (none known: no restriction
    /// and the default log rate).
    pub fn for_plugins(plugins: &[Arc<PluginInfo>]) -> StartupPolicy {
        let mut capabilities: Option<std::collections::BTreeSet<String>> = None;
        for p in plugins {
            if let Some(set) = &p.authorizations.capabilities {
                capabilities = Some(match capabilities {
                    None => set.clone(),
                    Some(c) => c.intersection(set).cloned().collect(),
                });
            }
        }
        let max_log_lines_per_second = plugins
            .iter()
            .map(|p| p.quotas.max_log_lines_per_second)
            .min()
            .unwrap_or(crate::config::Quotas::DEFAULT_MAX_LOG_LINES_PER_SECOND);
        StartupPolicy {
            authorizations: Authorizations { capabilities, ..Authorizations::unrestricted() },
            max_log_lines_per_second,
        }
    }
}

/// Log lines of one plugin (or of the start-up code) in the current second.
pub struct LogBudget {
    /// When the current second started.
    pub since: Instant,
    pub lines: u32,
    /// Lines dropped this second, reported when it is over.
    pub dropped: u64,
}

pub struct HostState {
    pub env: Arc<VmEnv>,
    pub contexts: Contexts,
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
    /// Log lines per second, per root context id (0: the start-up code).
    pub log_budgets: FastMap<u32, LogBudget>,
    /// Some budget dropped lines whose count is not reported yet.
    pub log_drops_pending: bool,
    /// Contexts whose `on_done` returned false, and until when the host
    /// waits for their `proxy_done`.
    pub awaiting_done: FastMap<u32, Instant>,
}

impl HostState {
    pub fn new(env: Arc<VmEnv>) -> HostState {
        HostState {
            contexts: Contexts::new(),
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
            restricted: env.startup.authorizations.capabilities.is_some(),
            env,
            denials_logged: Default::default(),
            log_budgets: FastMap::default(),
            log_drops_pending: false,
            awaiting_done: FastMap::default(),
        }
    }

    /// Logs a denial once per plugin and `what` (a hostcall, an upstream...).
    pub fn log_denial(&mut self, what: String, why: &str) {
        self.log_once(&what.clone(), LogLevel::Warn, &format!("denied {what}: {why} (logged once)"));
    }

    /// Logs `message` for the calling plugin, once per plugin and `key`.
    pub fn log_once(&mut self, key: &str, level: LogLevel, message: &str) {
        let plugin = self.log_ref();
        if self.denials_logged.insert((plugin.name.clone(), key.to_string())) {
            self.env.server.log(&plugin, level, message);
        }
    }

    /// A line the plugin logs (`proxy_log`, WASI `fd_write`), within its
    /// `max_log_lines_per_second`: lines over it that second are dropped, and
    /// their number is logged when the next second starts (at the next line,
    /// or when a callback returns, see [`HostState::report_dropped_logs`]).
    /// Lines below the server's log level are not counted: the server drops them.
    pub fn plugin_log(&mut self, level: LogLevel, message: &str) {
        if !self.log_enabled(level) {
            // The server would drop it: no line, no count.
            return;
        }
        let plugin = self.log_ref();
        let server = self.env.server.clone();
        let (key, cap) = match self.contexts.get(&self.current_context) {
            Some(Context::Root(r)) => (self.current_context, r.plugin.quotas.max_log_lines_per_second),
            Some(Context::Stream(s)) => (s.root_context_id, s.plugin.quotas.max_log_lines_per_second),
            None => (0, self.env.startup.max_log_lines_per_second),
        };
        let now = Instant::now();
        let budget = self.log_budgets.entry(key).or_insert(LogBudget { since: now, lines: 0, dropped: 0 });
        if now.saturating_duration_since(budget.since) >= Duration::from_secs(1) {
            let dropped = std::mem::take(&mut budget.dropped);
            budget.since = now;
            budget.lines = 0;
            if dropped > 0 {
                server.log(&plugin, LogLevel::Warn, &dropped_message(dropped, cap));
            }
        }
        if budget.lines < cap {
            budget.lines += 1;
            server.log(&plugin, level, message);
        } else {
            budget.dropped += 1;
            self.log_drops_pending = true;
        }
    }

    /// Reports the lines dropped in seconds that are over (called when a
    /// callback returns, so a plugin that stops logging still gets its count).
    pub fn report_dropped_logs(&mut self, now: Instant) {
        if !self.log_drops_pending {
            return;
        }
        let mut pending = false;
        let mut reports = Vec::new();
        for (key, budget) in self.log_budgets.iter_mut().filter(|(_, b)| b.dropped > 0) {
            if now.saturating_duration_since(budget.since) < Duration::from_secs(1) {
                pending = true;
                continue;
            }
            reports.push((*key, std::mem::take(&mut budget.dropped)));
            budget.since = now;
            budget.lines = 0;
        }
        self.log_drops_pending = pending;
        for (key, dropped) in reports {
            let (plugin, cap) = match self.contexts.get(&key).filter(|_| key != 0) {
                Some(c) => (c.plugin().log_ref(), c.plugin().quotas.max_log_lines_per_second),
                None => (self.env.log_ref.clone(), self.env.startup.max_log_lines_per_second),
            };
            self.env.server.log(&plugin, LogLevel::Warn, &dropped_message(dropped, cap));
        }
    }

    /// Logs, once per plugin of the effective context and `limit`, that a
    /// cap (`vm_config.limits`, or a server's own) refused something.
    pub fn log_limit(&mut self, limit: &str, message: &str) {
        let plugin = self.log_ref();
        Self::log_limit_for(&mut self.denials_logged, &self.env, &plugin, limit, message);
    }

    /// As [`HostState::log_limit`], for `plugin` (outside any hostcall).
    pub fn log_limit_for(
        logged: &mut std::collections::HashSet<(String, String)>,
        env: &VmEnv,
        plugin: &PluginRef,
        limit: &str,
        message: &str,
    ) {
        if logged.insert((plugin.name.clone(), format!("limit {limit}"))) {
            env.server.log(plugin, crate::abi::LogLevel::Warn, &format!("{message} (logged once)"));
        }
    }

    /// Stores a new context under a fresh id (never 0, never one in use) and returns the id.
    pub fn insert_context(&mut self, context: Context) -> u32 {
        self.contexts.insert_new(&mut self.next_context_id, context)
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

    /// The plugin whose context is effective, for its configuration and its
    /// identity properties (`plugin_name`...).
    pub fn effective_plugin(&self) -> Option<Arc<PluginInfo>> {
        self.effective().map(|c| c.plugin().clone())
    }

    /// The plugin whose callback is running: its rights and caps apply to
    /// every hostcall, also after `proxy_set_effective_context` made a
    /// context of another plugin of the instance effective (its rights do not
    /// become the caller's). `None` in start-up code (see [`StartupPolicy`]).
    pub fn calling_plugin(&self) -> Option<Arc<PluginInfo>> {
        self.contexts.get(&self.current_context).map(|c| c.plugin().clone())
    }

    /// Who a log line is from: the calling plugin, else the VM.
    /// Whether the server keeps lines of `level` (at or above its log level).
    pub fn log_enabled(&self, level: LogLevel) -> bool {
        (level as i32) >= (self.env.server.log_level() as i32)
    }

    pub fn log_ref(&self) -> PluginRef {
        match self.contexts.get(&self.current_context) {
            Some(c) => c.plugin().log_ref(),
            None => self.env.log_ref.clone(),
        }
    }
}

fn dropped_message(dropped: u64, cap: u32) -> String {
    format!("{dropped} log lines dropped: over vm_config.limits.max_log_lines_per_second ({cap})")
}
