//! From configuration to running plugins: compiles each plugin's code once per
//! process, and builds the VMs of one server thread or worker, with plugins
//! that share a `vm_id` and code sharing one instance, as in Envoy.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex};

use crate::config::{CodeSource, PluginConfig, RuntimeKind};
use crate::host::ServerHost;
use crate::plugin::{LoadError, PluginInfo, WasmCode};
use crate::runtime::wasmtime::WasmtimeEngine;
use crate::runtime::Engine;
use crate::vm::{Vm, VmError, VmOptions};

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{origin}: plugin {plugin:?}: cannot read {path}: {message}")]
    Read { origin: String, plugin: String, path: String, message: String },
    #[error("{origin}: plugin {plugin:?}: {source}")]
    Load { origin: String, plugin: String, source: LoadError },
    #[error("{origin}: plugin {plugin:?}: runtime {runtime} is not available in this build")]
    Runtime { origin: String, plugin: String, runtime: RuntimeKind },
    #[error("{origin}: plugin {plugin:?}: {source}")]
    Start { origin: String, plugin: String, source: VmError },
}

/// The engine for a runtime named in a config.
pub fn engine(runtime: RuntimeKind) -> Option<Arc<dyn Engine>> {
    match runtime {
        RuntimeKind::Wasmtime => WasmtimeEngine::shared().ok().map(|e| e as Arc<dyn Engine>),
        RuntimeKind::Wamr => None,
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
}

/// Compiles (or finds compiled) the code of every plugin. The first error stops the load.
pub fn load(configs: &[PluginConfig]) -> Result<Vec<LoadedPlugin>, PluginError> {
    configs.iter().map(load_one).collect()
}

fn load_one(config: &PluginConfig) -> Result<LoadedPlugin, PluginError> {
    let origin = config.origin.to_string();
    let plugin = config.name.clone();
    let CodeSource::LocalFile(path) = &config.vm.code;
    let bytes = std::fs::read(path).map_err(|e| PluginError::Read { origin: origin.clone(), plugin: plugin.clone(), path: path.display().to_string(), message: e.to_string() })?;
    let runtime = config.vm.runtime;
    let engine = engine(runtime).ok_or_else(|| PluginError::Runtime { origin: origin.clone(), plugin: plugin.clone(), runtime })?;
    let hash = content_hash(&bytes);
    let key = (runtime, hash, bytes.len());
    let cached = code_cache().lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
    let code = match cached {
        Some(code) => code,
        None => {
            let code = Arc::new(
                WasmCode::load(engine.as_ref(), &bytes, &path.display().to_string()).map_err(|source| PluginError::Load { origin: origin.clone(), plugin: plugin.clone(), source })?,
            );
            code_cache().lock().unwrap_or_else(|p| p.into_inner()).insert(key, code.clone());
            code
        }
    };
    let info = Arc::new(PluginInfo::new(&config.name, &config.root_id, &config.vm.vm_id, config.configuration.clone()));
    Ok(LoadedPlugin { config: config.clone(), info, code, code_hash: hash })
}

/// What makes two plugins share an instance: same runtime, `vm_id`, code and VM configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VmKey {
    pub runtime: RuntimeKind,
    pub vm_id: String,
    pub code_hash: u64,
    pub vm_configuration: Vec<u8>,
}

impl LoadedPlugin {
    pub fn vm_key(&self) -> VmKey {
        VmKey { runtime: self.config.vm.runtime, vm_id: self.config.vm.vm_id.clone(), code_hash: self.code_hash, vm_configuration: self.config.vm.configuration.clone() }
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
}

impl PluginVms {
    /// Instantiates the plugins. `server` makes the `ServerHost` of each new VM.
    pub fn start(plugins: &[LoadedPlugin], mut server: impl FnMut(&VmKey) -> Arc<dyn ServerHost>) -> Result<PluginVms, PluginError> {
        let mut vms: Vec<Vm> = Vec::new();
        let mut keys: Vec<VmKey> = Vec::new();
        let mut roots = Vec::new();
        for (i, p) in plugins.iter().enumerate() {
            let key = p.vm_key();
            let vm_index = match keys.iter().position(|k| *k == key) {
                Some(v) => v,
                None => {
                    let mut options = VmOptions::new(&p.config.vm.vm_id);
                    options.vm_configuration = p.config.vm.configuration.clone();
                    options.environment = p.config.vm.environment.clone();
                    let vm = Vm::new(p.code.clone(), options, server(&key)).map_err(|source| PluginError::Start { origin: p.config.origin.to_string(), plugin: p.config.name.clone(), source })?;
                    vms.push(vm);
                    keys.push(key);
                    vms.len() - 1
                }
            };
            let root_context_id = vms[vm_index]
                .start_plugin(p.info.clone())
                .map_err(|source| PluginError::Start { origin: p.config.origin.to_string(), plugin: p.config.name.clone(), source })?;
            roots.push(PluginRoot { plugin: i, vm: vm_index, root_context_id });
        }
        Ok(PluginVms { vms, roots })
    }

    /// Shuts every plugin down (`proxy_on_done`, then `proxy_on_delete` unless
    /// the plugin defers with `proxy_done`). Returns, per plugin index, whether
    /// it finished now, or the error of a plugin whose callbacks failed.
    pub fn shutdown(&mut self) -> Vec<(usize, Result<bool, VmError>)> {
        let roots = self.roots.clone();
        roots.iter().map(|r| (r.plugin, self.vms[r.vm].shutdown_plugin(r.root_context_id))).collect()
    }
}
