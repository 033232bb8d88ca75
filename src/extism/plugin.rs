//! An entity made runnable on the production runtimes (`runtime::wasmtime`, `runtime::wamr`):
//! its module read and compiled once per process ([`ExtismPlugin`]), its imports linked as
//! [`HostFn::State`] entries for an [`ExtismState`] (OPA's, which read the linear memory, as
//! [`HostFn::Caller`] ones), and a [`Pool`] of instances that a worker or thread keeps and calls
//! through the protocol of [`super::call`].
//!
//! Limits are the runtimes' own, as for Proxy-Wasm plugins: `memoryPages` caps the linear memory
//! (and the kernel's arena), `otoroshi.callback_timeout` bounds each call (Wasmtime's epoch,
//! WAMR's watchdog). A trap ends only that call: its instance is dropped and the next call gets a
//! new one (wasm4s replaces a VM after a failed call); `killOptions` recycle instances too.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::call::{self, CallError, ExtismGuest};
use super::entity::document::{wasmo_request, Resolved as ResolvedEntity, Settings};
use super::entity::{KillOptions, Source, Step, WasmConfig};
use super::http::{HttpClient, OtoroshiHosts, OutgoingRequest};
use super::link::{makes_http_calls, resolve_all, LinkOptions, Resolved};
use super::opa::{self, OpaGuest, OpaImport, OpaPolicy};
use super::state::{ExtismState, PluginContext, Services};
use crate::abi::LogLevel;
use crate::hostcalls::wasi_files::Preopen;
use crate::runtime::{
    Caller, Engine, ExportDesc, HostFn, HostResult, Instance, Limits, LinkedImport, Module, Trap, Val,
};

/// The most bytes a module download (`http`, `wasmo` sources) or an `http_request` answer takes.
pub const MAX_DOWNLOAD_BYTES: u64 = 64 << 20;

/// Why an entity cannot run.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("Otoroshi WASM plugin {id:?}: cannot read its module: {why}")]
    Source { id: String, why: String },
    #[error("Otoroshi WASM plugin {id:?}: {why}")]
    Compile { id: String, why: String },
    /// An import the entity does not grant (or that this host does not offer): the load fails.
    #[error("Otoroshi WASM plugin {id:?} cannot be linked: {error}")]
    Link { id: String, error: super::link::LinkError },
    #[error("Otoroshi WASM plugin {id:?}: config.allowedHosts: {why}")]
    AllowedHosts { id: String, why: String },
    #[error("Otoroshi WASM plugin {id:?}: config.allowedPaths: {why}; expected an existing folder")]
    AllowedPaths { id: String, why: String },
    #[error("Otoroshi WASM plugin {id:?} cannot be instantiated: {why}")]
    Instantiate { id: String, why: String },
    #[error("Otoroshi WASM plugins: runtime {0} is not available in this build")]
    Runtime(crate::config::RuntimeKind),
}

/// What a plugin runs as: an Extism module, or an OPA policy (`opa: true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Extism,
    Opa,
}

/// An entity compiled and linked: shared by every worker thread of the process.
pub struct ExtismPlugin {
    /// The entity id (a chain names it).
    pub id: String,
    pub name: String,
    pub steps: Vec<Step>,
    /// `functionName` (the entity's, else its `local` target's).
    pub function_name: Option<String>,
    pub kind: Kind,
    /// The engine it runs on (`wasmtime`, `wamr`).
    pub runtime: &'static str,
    /// The step input's `config` (Otoroshi's `WasmConfig.json`).
    pub context_json: serde_json::Value,
    /// The same as JSON text, written once: every step input carries it.
    pub context_text: String,
    /// Whether a call can make an outgoing HTTP call (it must then run off the event loop): the
    /// module imports `http_request` or `proxy_http_call` and the entity grants `httpAccess` or
    /// lists `allowedHosts`.
    pub makes_http_calls: bool,
    pub instances: usize,
    pub kill_options: KillOptions,
    module: Arc<dyn Module<ExtismState>>,
    imports: Vec<LinkedImport<ExtismState>>,
    context: Arc<PluginContext>,
    services: Arc<Services>,
    limits: Limits,
}

impl std::fmt::Debug for ExtismPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtismPlugin").field("id", &self.id).field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// Compiled modules by runtime and content: an entity loaded again (a reload, another entity with
/// the same module) is not compiled again.
type ModuleCache = Mutex<HashMap<(&'static str, [u8; 32]), Arc<dyn Module<ExtismState>>>>;

fn module_cache() -> &'static ModuleCache {
    static CACHE: OnceLock<ModuleCache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn compile_cached(engine: &dyn Engine<ExtismState>, wasm: &[u8]) -> Result<Arc<dyn Module<ExtismState>>, String> {
    let key = (engine.name(), <[u8; 32]>::from(Sha256::digest(wasm)));
    if let Some(m) = module_cache().lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(m.clone());
    }
    let module = engine.compile(wasm).map_err(|e| e.to_string())?;
    crate::runtime::release_compiler_memory();
    Ok(module_cache().lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_insert(module).clone())
}

/// The module bytes of `config.source` (a `local` source has been followed by
/// [`super::entity::document::resolve`]; `file` paths are relative to `entity_file`'s folder).
///
/// # Errors
/// When the file cannot be read, the download fails or its hash is not the pinned one.
pub fn module_bytes(
    source: &Source,
    entity_file: &Path,
    settings: &Settings,
    http: &dyn HttpClient,
) -> Result<Vec<u8>, String> {
    let download = |request: OutgoingRequest, sha256: Option<[u8; 32]>| -> Result<Vec<u8>, String> {
        let url = request.url.clone();
        let answer = http.send(&request).map_err(|e| format!("GET {url}: {e}"))?;
        if !(200..300).contains(&answer.status) {
            return Err(format!("GET {url}: status {}", answer.status));
        }
        if let Some(pin) = sha256 {
            if <[u8; 32]>::from(Sha256::digest(&answer.body)) != pin {
                return Err(format!("{url}: the download does not have the sha256 given in opts.sha256"));
            }
        }
        Ok(answer.body)
    };
    match source {
        Source::File(path) => {
            let path = if path.is_relative() {
                entity_file.parent().unwrap_or_else(|| Path::new(".")).join(path)
            } else {
                path.clone()
            };
            std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
        }
        Source::Base64(bytes) => Ok(bytes.clone()),
        Source::Http { url, method, headers, timeout, follow_redirects, sha256 } => download(
            OutgoingRequest {
                method: method.clone(),
                url: url.clone(),
                headers: headers.clone(),
                body: None,
                timeout: *timeout,
                follow_redirects: *follow_redirects,
                max_response_size: MAX_DOWNLOAD_BYTES,
            },
            *sha256,
        ),
        Source::Wasmo { path, timeout, sha256, .. } => {
            let Some(wasmo) = &settings.wasmo else {
                return Err("a wasmo source needs otoroshi.wasmo.url in the configuration".into());
            };
            download(wasmo_request(wasmo, path, *timeout, MAX_DOWNLOAD_BYTES), *sha256)
        }
        Source::Local(id) => Err(format!("the local source {id:?} was not resolved")),
    }
}

// OPA's imports read the policy's linear memory: `Caller` entries, one function per import.
fn opa_abort(c: &mut dyn Caller<ExtismState>, a: &[Val]) -> HostResult {
    OpaImport::Abort.invoke(c.memory_and_state().0, a).map(|_| None)
}

fn opa_println(c: &mut dyn Caller<ExtismState>, a: &[Val]) -> HostResult {
    let (memory, state) = c.memory_and_state();
    let line = OpaImport::Println.invoke(memory, a)?;
    state.log(LogLevel::Info, &line);
    Ok(None)
}

fn opa_builtin<const N: u8>(c: &mut dyn Caller<ExtismState>, a: &[Val]) -> HostResult {
    OpaImport::Builtin(N).invoke(c.memory_and_state().0, a).map(|_| Some(Val::I32(0)))
}

fn opa_entry(import: OpaImport) -> HostFn<ExtismState> {
    HostFn::Caller(match import {
        OpaImport::Abort => opa_abort,
        OpaImport::Println => opa_println,
        OpaImport::Builtin(0) => opa_builtin::<0>,
        OpaImport::Builtin(1) => opa_builtin::<1>,
        OpaImport::Builtin(2) => opa_builtin::<2>,
        OpaImport::Builtin(3) => opa_builtin::<3>,
        OpaImport::Builtin(_) => opa_builtin::<4>,
    })
}

impl ExtismPlugin {
    /// Compiles and links an entity's module (`wasm`, as [`module_bytes`] gave it).
    ///
    /// # Errors
    /// When the module does not compile, or imports what the entity does not grant.
    pub fn new(
        engine: &dyn Engine<ExtismState>,
        entity: &ResolvedEntity<'_>,
        wasm: &[u8],
        settings: &Settings,
        services: Arc<Services>,
    ) -> Result<ExtismPlugin, PluginError> {
        let config: &WasmConfig = entity.config();
        let id = entity.entity.id.clone();
        let compile_error = |why: String| PluginError::Compile { id: id.clone(), why };
        let rewritten;
        let wasm = if config.opa {
            rewritten = super::opa_memory::define_imported_memory(wasm, config.memory_pages)
                .map_err(|e| compile_error(format!("OPA policy: {e}")))?;
            &rewritten[..]
        } else {
            wasm
        };
        let module = compile_cached(engine, wasm).map_err(compile_error)?;
        let options = LinkOptions {
            authorizations: config.authorizations,
            is_js: config.is_js,
            opa: config.opa,
            wasi: config.wasi,
        };
        let resolved =
            resolve_all(module.imports(), &options).map_err(|error| PluginError::Link { id: id.clone(), error })?;
        let mut imports = Vec::new();
        for (import, r) in module.imports().iter().zip(&resolved) {
            let Some(ty) = import.ty.clone() else { continue };
            let func = match r {
                Resolved::Host(entry) => entry.host_fn(),
                Resolved::Opa(o) => opa_entry(*o),
                Resolved::Wasi => {
                    crate::hostcalls::wasi::resolve_for::<ExtismState>(&import.name, &ty).map_err(|expected| {
                        compile_error(format!(
                            "WASI {}.{} has type {expected}, imported as {ty}",
                            import.module, import.name
                        ))
                    })?
                }
                Resolved::OpaMemory => continue,
            };
            imports.push(LinkedImport { module: import.module.clone(), name: import.name.clone(), ty, func });
        }
        let base = entity.entity.file.parent().unwrap_or(Path::new("."));
        let preopens = if config.wasi {
            config
                .allowed_paths
                .iter()
                .map(|(host, guest)| Preopen::new(host, guest, base))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|why| PluginError::AllowedPaths { id: id.clone(), why })?
        } else {
            Vec::new()
        };
        let otoroshi_hosts = OtoroshiHosts::new(&config.allowed_hosts)
            .map_err(|why| PluginError::AllowedHosts { id: id.clone(), why })?;
        let context = Arc::new(PluginContext {
            id: id.clone(),
            name: entity.entity.name.clone(),
            config: config.config.iter().cloned().collect(),
            allowed_hosts: config.allowed_hosts.clone(),
            otoroshi_hosts,
            authorizations: config.authorizations,
            storage_root: settings.storage_root.clone(),
            http_request_timeout: settings.callback_timeout,
            max_response_size: MAX_DOWNLOAD_BYTES,
            max_var_bytes: super::vars::DEFAULT_MAX_VAR_BYTES,
            memory_pages: config.memory_pages,
            preopens,
        });
        Ok(ExtismPlugin {
            name: entity.entity.name.clone(),
            steps: entity.entity.steps.clone(),
            function_name: entity.function_name.map(str::to_owned),
            kind: if config.opa { Kind::Opa } else { Kind::Extism },
            runtime: engine.name(),
            context_json: config.context_json(&id),
            context_text: config.context_json(&id).to_string(),
            // `http_request` with no allowedHosts refuses every call without making one, and
            // `proxy_http_call` is only linked with httpAccess: such a plugin never blocks.
            makes_http_calls: makes_http_calls(&resolved)
                && (config.authorizations.http_access || !config.allowed_hosts.is_empty()),
            instances: config.instances.max(1) as usize,
            kill_options: config.kill_options,
            module,
            imports,
            context,
            services,
            limits: Limits {
                max_memory_bytes: Some(u64::from(config.memory_pages) * 65536),
                callback_timeout: Some(settings.callback_timeout),
            },
            id,
        })
    }

    /// The module's exports.
    #[must_use]
    pub fn exports(&self) -> &[ExportDesc] {
        self.module.exports()
    }

    /// Whether the module exports `name` as a function Extism can call.
    #[must_use]
    pub fn exports_function(&self, name: &str) -> bool {
        call::check_export(self.exports(), name).is_ok()
    }

    /// A new instance, initialized (Extism's initializer, or OPA's data and heap).
    ///
    /// # Errors
    /// When the runtime refuses it (memory larger than `memoryPages`) or the initializer traps.
    pub fn instantiate(self: &Arc<Self>) -> Result<ExtismInstance, PluginError> {
        let fail = |why: String| PluginError::Instantiate { id: self.id.clone(), why };
        let state = ExtismState::new(self.context.clone(), self.services.clone());
        let inner = self.module.instantiate(state, &self.imports, &self.limits).map_err(|e| fail(e.to_string()))?;
        let now = Instant::now();
        let mut instance =
            ExtismInstance { plugin: self.clone(), inner, opa: None, calls: 0, busy: Duration::ZERO, last_used: now };
        match self.kind {
            Kind::Extism => call::initialize(&mut instance, self.module.exports()).map_err(|t| fail(t.message))?,
            Kind::Opa => instance.opa = Some(opa::initialize(&mut instance).map_err(|e| fail(e.to_string()))?),
        }
        Ok(instance)
    }
}

/// The engine for Extism plugins on `runtime` (the engines Proxy-Wasm plugins use).
#[must_use]
pub fn engine(runtime: crate::config::RuntimeKind) -> Option<Arc<dyn Engine<ExtismState>>> {
    use crate::config::RuntimeKind;
    match runtime {
        RuntimeKind::Wasmtime => {
            crate::runtime::wasmtime::WasmtimeEngine::shared().ok().map(|e| e as Arc<dyn Engine<ExtismState>>)
        }
        RuntimeKind::Wamr => crate::runtime::wamr::WamrEngine::shared().ok().map(|e| e as Arc<dyn Engine<ExtismState>>),
    }
}

/// Compiles and links every entity of a load (`files::Loaded::entities`), in order: each
/// module is read from its source (a `local` source is its target's) and linked with what the
/// entity grants.
///
/// # Errors
/// The first entity that cannot run, named by its id.
pub fn load_entities(
    entities: &[super::entity::Entity],
    settings: &Settings,
    engine: &dyn Engine<ExtismState>,
    services: &Arc<Services>,
) -> Result<Vec<Arc<ExtismPlugin>>, PluginError> {
    let resolved = super::entity::document::resolve(entities)
        .map_err(|e| PluginError::Source { id: String::new(), why: e.to_string() })?;
    resolved
        .iter()
        .map(|r| {
            let wasm =
                module_bytes(&r.target.config.source, &r.target.file, settings, &super::http::BlockingHttpClient)
                    .map_err(|why| PluginError::Source { id: r.entity.id.clone(), why })?;
            ExtismPlugin::new(engine, r, &wasm, settings, services.clone()).map(Arc::new)
        })
        .collect()
}

/// One instance of a plugin.
pub struct ExtismInstance {
    plugin: Arc<ExtismPlugin>,
    inner: Box<dyn Instance<ExtismState>>,
    opa: Option<OpaPolicy>,
    calls: u64,
    busy: Duration,
    last_used: Instant,
}

impl ExtismGuest for ExtismInstance {
    fn state(&mut self) -> &mut ExtismState {
        self.inner.state()
    }

    fn call_export(&mut self, name: &str) -> Result<Option<Val>, Trap> {
        self.inner.call(name, &[])
    }
}

impl OpaGuest for ExtismInstance {
    fn call(&mut self, export: &str, args: &[Val]) -> Result<Option<Val>, Trap> {
        self.inner.call(export, args)
    }

    fn memory(&mut self) -> &mut [u8] {
        self.inner.memory()
    }
}

impl ExtismInstance {
    /// Calls `function` with `input` (the call protocol of [`super::call`]).
    ///
    /// # Errors
    /// As [`call::call`].
    pub fn call(&mut self, function: &str, input: &[u8]) -> Result<Vec<u8>, CallError> {
        call::check_export(self.plugin.exports(), function)?;
        let started = Instant::now();
        let r = call::call(self, function, input);
        self.account(started);
        r
    }

    /// Evaluates the OPA policy with `input`; the result JSON.
    ///
    /// # Errors
    /// When the evaluation traps, or the plugin is not an OPA policy.
    pub fn evaluate(&mut self, input: &[u8]) -> Result<String, opa::OpaError> {
        let Some(policy) = self.opa else {
            return Err(opa::OpaError::Trap(Trap::new(format!("{} is not an OPA policy", self.plugin.id))));
        };
        let started = Instant::now();
        let r = opa::evaluate(self, policy, input);
        self.account(started);
        r
    }

    fn account(&mut self, started: Instant) {
        // One clock read for both (a call is a few microseconds; the clock is a tenth of that).
        let now = Instant::now();
        self.calls += 1;
        self.busy += now.saturating_duration_since(started);
        self.last_used = now;
    }

    /// Why `killOptions` retire this instance now, if they do.
    fn worn_out(&mut self) -> Option<&'static str> {
        let k = self.plugin.kill_options;
        if k.immortal {
            return None;
        }
        if self.calls >= k.max_calls {
            return Some("max_calls");
        }
        if k.max_memory_usage > 0.0 {
            let cap = f64::from(self.plugin.context.memory_pages) * 65536.0;
            if self.inner.memory_size() as f64 / cap > k.max_memory_usage {
                return Some("max_memory_usage");
            }
        }
        if !k.max_avg_call_duration.is_zero()
            && self.calls > 0
            && self.busy / u32::try_from(self.calls).unwrap_or(u32::MAX) > k.max_avg_call_duration
        {
            return Some("max_avg_call_duration");
        }
        None
    }

    fn unused_too_long(&self) -> bool {
        let k = self.plugin.kill_options;
        !k.immortal && self.last_used.elapsed() > k.max_unused_duration
    }
}

/// The instances of one plugin that a worker (or thread) keeps: at most `instances` idle ones.
/// A call takes one (or makes one), and gives it back unless it trapped or `killOptions` retire it.
pub struct Pool {
    plugin: Arc<ExtismPlugin>,
    idle: Vec<ExtismInstance>,
    /// Instances made so far (for tests and logs: a recycled one counts again).
    pub created: u64,
}

impl Pool {
    #[must_use]
    pub fn new(plugin: Arc<ExtismPlugin>) -> Pool {
        Pool { plugin, idle: Vec::new(), created: 0 }
    }

    #[must_use]
    pub fn plugin(&self) -> &Arc<ExtismPlugin> {
        &self.plugin
    }

    /// An idle instance, or a new one.
    ///
    /// # Errors
    /// When a new instance cannot be made.
    pub fn take(&mut self) -> Result<ExtismInstance, PluginError> {
        while let Some(instance) = self.idle.pop() {
            if !instance.unused_too_long() {
                return Ok(instance);
            }
        }
        self.created += 1;
        self.plugin.instantiate()
    }

    /// Gives an instance back after a call; `trapped`: it is dropped (its memory may be anywhere).
    pub fn give_back(&mut self, mut instance: ExtismInstance, trapped: bool) {
        if trapped {
            return;
        }
        if let Some(why) = instance.worn_out() {
            self.plugin.services.host.log(
                &self.plugin.name,
                LogLevel::Debug,
                &format!("instance retired by killOptions.{why} after {} calls", instance.calls),
            );
            return;
        }
        if self.idle.len() < self.plugin.instances {
            self.idle.push(instance);
        }
    }

    /// Calls `function` with `input` on an instance of the pool.
    ///
    /// # Errors
    /// As [`call::call`]; an instance that cannot be made is a trap of the call.
    pub fn call(&mut self, function: &str, input: &[u8]) -> Result<Vec<u8>, CallError> {
        let mut instance = self.take().map_err(|e| CallError::Trap { trap: Trap::new(e.to_string()), error: None })?;
        let r = instance.call(function, input);
        let trapped = matches!(&r, Err(e) if e.trap().is_some());
        self.give_back(instance, trapped);
        r
    }

    /// Evaluates the OPA policy on an instance of the pool.
    ///
    /// # Errors
    /// As [`ExtismInstance::evaluate`].
    pub fn evaluate(&mut self, input: &[u8]) -> Result<String, opa::OpaError> {
        let mut instance = self.take().map_err(|e| opa::OpaError::Trap(Trap::new(e.to_string())))?;
        let r = instance.evaluate(input);
        let trapped = r.is_err();
        self.give_back(instance, trapped);
        r
    }
}

#[cfg(test)]
mod tests;
