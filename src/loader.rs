//! From configuration to running plugins: compiles each plugin's code once per
//! process, and builds the VMs of one server thread or worker, with plugins
//! that share a `vm_id` and code sharing one instance, as in Envoy.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex};

use crate::config::{CodeSource, PluginConfig, RuntimeKind};
use crate::host::ServerHost;
use crate::hostcalls::code::{LoadError, WasmCode};
use crate::hostcalls::state::HostState;
use crate::plugin::PluginInfo;
use crate::remote_code::{self, FetchError};
use crate::runtime::wamr::WamrEngine;
use crate::runtime::wasmtime::WasmtimeEngine;
use crate::runtime::Engine;
use crate::vm::{Vm, VmError, VmOptions};

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{origin}: plugin {plugin:?}: cannot read {path}: {message}")]
    Read { origin: String, plugin: String, path: String, message: String },
    /// Remote code (`vm_config.code.remote`) could not be downloaded, or its
    /// SHA-256 is not the configured one: the plugin is refused.
    #[error("{origin}: plugin {plugin:?}: {key}: {source}; plugin refused")]
    Remote { origin: String, plugin: String, key: &'static str, source: FetchError },
    #[error("{origin}: plugin {plugin:?}: {source}")]
    Load { origin: String, plugin: String, source: LoadError },
    #[error("{origin}: plugin {plugin:?}: runtime {runtime} is not available in this build")]
    Runtime { origin: String, plugin: String, runtime: RuntimeKind },
    #[error("{origin}: plugin {plugin:?}: {source}")]
    Start { origin: String, plugin: String, source: VmError },
}

/// The engine for a runtime named in a config.
pub fn engine(runtime: RuntimeKind) -> Option<Arc<dyn Engine<HostState>>> {
    match runtime {
        RuntimeKind::Wasmtime => WasmtimeEngine::shared().ok().map(|e| e as Arc<dyn Engine<HostState>>),
        RuntimeKind::Wamr => WamrEngine::shared().ok().map(|e| e as Arc<dyn Engine<HostState>>),
    }
}

/// Process-wide compiled code, keyed by runtime and content: a module used by
/// several plugins, or loaded again on reload, is compiled once.
fn code_cache() -> &'static Mutex<HashMap<(RuntimeKind, u64, usize), Arc<WasmCode>>> {
    static CACHE: LazyLock<Mutex<HashMap<(RuntimeKind, u64, usize), Arc<WasmCode>>>> = LazyLock::new(Default::default);
    &CACHE
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// A plugin whose code is compiled and validated, ready to be instantiated.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub config: PluginConfig,
    pub info: Arc<PluginInfo>,
    pub code: Arc<WasmCode>,
    code_hash: u64,
    /// What the compiled-module cache did for this load (`allow_precompiled`
    /// plugins whose code was not already compiled in this process).
    pub compiled_cache: Option<crate::module_cache::Outcome>,
    /// How long reading, compiling (or taking from a cache) and checking the code took.
    pub load_time: std::time::Duration,
}

/// Compiles (or finds compiled) the code of every plugin. The first error stops the load.
/// Warnings (see [`load_with_warnings`]) go to standard error.
pub fn load(configs: &[PluginConfig]) -> Result<Vec<LoadedPlugin>, PluginError> {
    load_with_warnings(configs, &mut |config, message| {
        eprintln!("[proxy_wasm] warning: {}: plugin {:?}: {message}", config.origin, config.name);
    })
}

/// Like [`load`], giving problems that do not stop the load (a corrupt cache
/// file of remote code, a cache folder that cannot be written) to `warn`, with
/// the plugin they are about, for the server's own log.
pub fn load_with_warnings(
    configs: &[PluginConfig],
    warn: &mut dyn FnMut(&PluginConfig, &str),
) -> Result<Vec<LoadedPlugin>, PluginError> {
    let loaded = configs.iter().map(|config| load_one(config, &mut |message: &str| warn(config, message))).collect();
    crate::runtime::release_compiler_memory();
    loaded
}

/// The module bytes of `config`, and how to name them in messages.
fn read_code(
    config: &PluginConfig,
    origin: &str,
    warn: &mut dyn FnMut(&str),
) -> Result<(Vec<u8>, String), PluginError> {
    let plugin = || config.name.clone();
    match &config.vm.code {
        CodeSource::LocalFile(path) => {
            let bytes = std::fs::read(path).map_err(|e| PluginError::Read {
                origin: origin.to_string(),
                plugin: plugin(),
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            Ok((bytes, path.display().to_string()))
        }
        CodeSource::Inline(bytes) => Ok((bytes.clone(), format!("{origin} (inline code)"))),
        CodeSource::Remote(remote) => {
            let (bytes, _) = remote_code::fetch(remote, &mut |message| warn(&message)).map_err(|source| {
                PluginError::Remote { origin: origin.to_string(), plugin: plugin(), key: remote_key(&source), source }
            })?;
            Ok((bytes, remote.uri.clone()))
        }
    }
}

/// The key a remote code error is about, relative to the plugin's `config` entry.
fn remote_key(error: &FetchError) -> &'static str {
    match error {
        FetchError::Mismatch { .. } => "vm_config.code.remote.sha256",
        FetchError::Download { .. } => "vm_config.code.remote",
    }
}

fn load_one(config: &PluginConfig, warn: &mut dyn FnMut(&str)) -> Result<LoadedPlugin, PluginError> {
    let started = std::time::Instant::now();
    let origin = config.origin.to_string();
    let plugin = config.name.clone();
    let (bytes, code_origin) = read_code(config, &origin, warn)?;
    let runtime = config.vm.runtime;
    let engine = engine(runtime).ok_or_else(|| PluginError::Runtime {
        origin: origin.clone(),
        plugin: plugin.clone(),
        runtime,
    })?;
    let hash = content_hash(&bytes);
    let key = (runtime, hash, bytes.len());
    let cached = code_cache().lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
    let mut cache_outcome = None;
    let code = match cached {
        Some(code) => code,
        None => {
            let load_error = |source| PluginError::Load { origin: origin.clone(), plugin: plugin.clone(), source };
            let code = if config.vm.allow_precompiled {
                let (module, outcome) =
                    crate::module_cache::load_or_compile(engine.as_ref(), &bytes, warn).map_err(|e| {
                        load_error(LoadError::Compile { origin: code_origin.clone(), message: e.to_string() })
                    })?;
                cache_outcome = Some(outcome);
                WasmCode::from_module(engine.as_ref(), module, &code_origin).map_err(load_error)?
            } else {
                WasmCode::load(engine.as_ref(), &bytes, &code_origin).map_err(load_error)?
            };
            let code = Arc::new(code);
            // Another thread may have compiled the same code meanwhile: keep the first.
            code_cache().lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_insert(code).clone()
        }
    };
    let info = Arc::new(
        PluginInfo::new(&config.name, &config.root_id, &config.vm.vm_id, config.configuration.clone())
            .with_authorizations(config.authorizations.clone())
            .with_quotas(config.vm.quotas)
            .with_max_body_size(config.max_body_size)
            .with_done_timeout(config.pause_timeout),
    );
    Ok(LoadedPlugin {
        config: config.clone(),
        info,
        code,
        code_hash: hash,
        compiled_cache: cache_outcome,
        load_time: started.elapsed(),
    })
}

/// What makes two plugins share an instance: same runtime, `vm_id`, code, VM configuration and limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VmKey {
    pub runtime: RuntimeKind,
    pub vm_id: String,
    pub code_hash: u64,
    pub vm_configuration: Vec<u8>,
    /// `vm_config.limits`: plugins with different limits do not share an instance.
    pub limits: crate::runtime::Limits,
}

impl LoadedPlugin {
    pub fn vm_key(&self) -> VmKey {
        VmKey {
            runtime: self.config.vm.runtime,
            vm_id: self.config.vm.vm_id.clone(),
            code_hash: self.code_hash,
            vm_configuration: self.config.vm.configuration.clone(),
            limits: self.config.vm.limits,
        }
    }
}

/// The root context of one plugin, in one of the VMs of a [`PluginVms`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginRoot {
    /// Index into the plugin list given to [`PluginVms::start`].
    pub plugin: usize,
    /// Index into [`PluginVms::vms`].
    pub vm: usize,
    pub root_context_id: u32,
}

/// The VMs of one server thread or worker: every plugin started, in order.
pub struct PluginVms {
    pub vms: Vec<Vm>,
    pub roots: Vec<PluginRoot>,
    /// Per VM: the most linear memory it may have (for `kill_options.max_memory_usage`).
    max_memory: Vec<u64>,
}

impl PluginVms {
    /// Instantiates the plugins. `server` makes the `ServerHost` of each new VM.
    pub fn start(
        plugins: &[LoadedPlugin],
        mut server: impl FnMut(&VmKey) -> Arc<dyn ServerHost>,
    ) -> Result<PluginVms, PluginError> {
        let mut vms: Vec<Vm> = Vec::new();
        let mut keys: Vec<VmKey> = Vec::new();
        let mut roots = Vec::new();
        let mut max_memory = Vec::new();
        for (i, p) in plugins.iter().enumerate() {
            let key = p.vm_key();
            let vm_index = match keys.iter().position(|k| *k == key) {
                Some(v) => v,
                None => {
                    let mut options = VmOptions::new(&p.config.vm.vm_id);
                    options.vm_configuration = p.config.vm.configuration.clone();
                    options.environment = p.config.vm.environment.clone();
                    options.limits = p.config.vm.limits;
                    // Every plugin that will share this instance: its start-up
                    // code runs for all of them (see `VmOptions::plugins`).
                    options.plugins = plugins.iter().filter(|q| q.vm_key() == key).map(|q| q.info.clone()).collect();
                    max_memory.push(options.limits.max_memory_bytes.unwrap_or(MAX_WASM32_MEMORY));
                    let vm = Vm::new(p.code.clone(), options, server(&key)).map_err(|source| PluginError::Start {
                        origin: p.config.origin.to_string(),
                        plugin: p.config.name.clone(),
                        source,
                    })?;
                    vms.push(vm);
                    keys.push(key);
                    vms.len() - 1
                }
            };
            let root_context_id = vms[vm_index].start_plugin(p.info.clone()).map_err(|source| PluginError::Start {
                origin: p.config.origin.to_string(),
                plugin: p.config.name.clone(),
                source,
            })?;
            roots.push(PluginRoot { plugin: i, vm: vm_index, root_context_id });
        }
        Ok(PluginVms { vms, roots, max_memory })
    }

    /// Shuts every plugin down (`proxy_on_done`, then `proxy_on_delete` unless
    /// the plugin defers with `proxy_done`). Returns, per plugin index, whether
    /// it finished now, or the error of a plugin whose callbacks failed. A
    /// plugin already shut down (or waiting for its `proxy_done`) is not called
    /// again.
    pub fn shutdown(&mut self) -> Vec<(usize, Result<bool, VmError>)> {
        let roots = self.roots.clone();
        roots
            .iter()
            .map(|r| {
                let vm = &mut self.vms[r.vm];
                if !vm.has_context(r.root_context_id) {
                    return (r.plugin, Ok(true));
                }
                (r.plugin, vm.shutdown_plugin(r.root_context_id))
            })
            .collect()
    }

    /// Whether some context of these VMs waits for the plugin's `proxy_done`
    /// (its `on_done` returned false): the server keeps the VMs until it comes
    /// or [`PluginVms::expire_awaiting_done`] ends the wait.
    pub fn awaiting_done(&mut self) -> bool {
        self.vms.iter_mut().any(|vm| vm.awaiting_done())
    }

    /// Deletes the contexts whose wait for `proxy_done` is over (see
    /// [`Vm::expire_awaiting_done`]); how many.
    pub fn expire_awaiting_done(&mut self, now: std::time::Instant) -> usize {
        self.vms.iter_mut().map(|vm| vm.expire_awaiting_done(now)).sum()
    }

    /// The most linear memory VM `vm` may have: its `vm_config.limits.max_memory`, else 4 GiB
    /// (the base of `kill_options.max_memory_usage`).
    pub fn max_memory(&self, vm: usize) -> u64 {
        self.max_memory.get(vm).copied().unwrap_or(MAX_WASM32_MEMORY)
    }
}

/// A wasm32 linear memory holds at most 4 GiB.
const MAX_WASM32_MEMORY: u64 = 4 << 30;

/// The first reload after a failure is immediate; each further one in a row
/// waits twice as long as the last, from this ...
pub const RELOAD_BACKOFF_INITIAL: std::time::Duration = std::time::Duration::from_millis(100);
/// ... up to this.
pub const RELOAD_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(30);
/// Reloads further apart than this start a new series (the plugin ran fine in between).
pub const RELOAD_SERIES_RESET: std::time::Duration = std::time::Duration::from_secs(60);

/// Back-off for the `reload` failure policy, so that a plugin that fails on
/// every transaction does not make the server rebuild it in a tight loop.
#[derive(Debug, Clone, Default)]
pub struct ReloadBackoff {
    reloads: u32,
    last: Option<std::time::Instant>,
}

impl ReloadBackoff {
    /// The wait before the next reload, counted from the last one.
    pub fn delay(&self) -> std::time::Duration {
        match self.reloads {
            0 => std::time::Duration::ZERO,
            n => RELOAD_BACKOFF_INITIAL.saturating_mul(1u32 << (n - 1).min(16)).min(RELOAD_BACKOFF_MAX),
        }
    }

    /// Whether a reload may happen at `now`; if so, it is counted.
    pub fn try_reload(&mut self, now: std::time::Instant) -> bool {
        if let Some(last) = self.last {
            let since = now.saturating_duration_since(last);
            if since > RELOAD_SERIES_RESET {
                self.reloads = 0;
            } else if since < self.delay() {
                return false;
            }
        }
        self.reloads += 1;
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn reloads_back_off_exponentially_up_to_a_cap_and_reset_after_a_quiet_minute() {
        let mut b = ReloadBackoff::default();
        let t0 = Instant::now();
        assert!(b.try_reload(t0), "the first reload is immediate");
        assert!(!b.try_reload(t0 + Duration::from_millis(50)));
        assert!(b.try_reload(t0 + Duration::from_millis(100)));
        assert!(!b.try_reload(t0 + Duration::from_millis(250)));
        assert!(b.try_reload(t0 + Duration::from_millis(300)));
        for _ in 0..20 {
            b.reloads += 1;
        }
        assert_eq!(b.delay(), RELOAD_BACKOFF_MAX);
        let later = t0 + Duration::from_millis(300) + RELOAD_SERIES_RESET + Duration::from_secs(1);
        assert!(b.try_reload(later));
        assert_eq!(b.delay(), Duration::ZERO.max(b.delay()));
        assert_eq!(b.reloads, 1);
    }
}
