//! The host state of one Extism instance: its kernel and variables, what the plugin was given
//! (config map, allowed hosts, authorizations), and the server's services. A runtime adapter
//! keeps it in its store (the `T` of `Linker<T>`) and hands it to the host functions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::authorizations::Authorizations;
use super::http::{HttpClient, OtoroshiHosts};
use super::kernel::Kernel;
use super::otoroshi::datastore::DataStore;
use super::otoroshi::maps::Maps;
use super::vars::VarStore;
use crate::abi::LogLevel;

/// What the server provides to every Extism plugin of the process (or NGINX worker).
pub trait ExtismHost: Send + Sync {
    /// Writes a plugin's log line (Extism's `log_*`, Otoroshi's `proxy_log`, `proxy_log_event`).
    fn log(&self, plugin: &str, level: LogLevel, message: &str);
    /// The least level the server writes, or `None` when plugin logs are off (answers
    /// `get_log_level`; lines below it are not even read from the kernel).
    fn log_threshold(&self) -> Option<LogLevel> {
        Some(LogLevel::Info)
    }
}

/// The server's services shared by all plugins of a process or worker.
pub struct Services {
    pub host: Arc<dyn ExtismHost>,
    /// Outgoing calls; `None` makes `http_request` and `proxy_http_call` fail (a server that
    /// runs the plugin on its event loop gives none).
    pub http: Option<Arc<dyn HttpClient>>,
    pub datastore: Arc<dyn DataStore>,
    pub maps: Arc<Maps>,
}

/// What one plugin (an entity) was given; shared by all its instances.
pub struct PluginContext {
    /// The entity id: names the plugin's own map and data store (`wasm:<id>:`).
    pub id: String,
    /// For log lines.
    pub name: String,
    /// `config.config`: read by `config_get`.
    pub config: BTreeMap<String, String>,
    /// `config.allowedHosts` as Extism matches them for `http_request` (globs).
    pub allowed_hosts: Vec<String>,
    /// `config.allowedHosts` as Otoroshi matches them for `proxy_http_call` (wildcard regexes).
    pub otoroshi_hosts: OtoroshiHosts,
    pub authorizations: Authorizations,
    /// Otoroshi's `storageRoot` (key prefix of the data store), `otoroshi` by default.
    pub storage_root: String,
    /// How long `http_request` waits (Extism bounds it by the call's remaining time).
    pub http_request_timeout: Duration,
    /// The most bytes of an answer `http_request` and `proxy_http_call` take.
    pub max_response_size: u64,
    /// The variable store's cap (Extism's `memory.max_var_bytes`).
    pub max_var_bytes: usize,
    /// The kernel's cap, in 64 KiB pages (`memoryPages`).
    pub memory_pages: u32,
    /// `allowedPaths`: the host folders offered through WASI (`wasi: true`).
    pub preopens: Vec<crate::hostcalls::wasi_files::Preopen>,
}

/// The state of one instance.
pub struct ExtismState {
    pub kernel: Kernel,
    pub vars: VarStore,
    pub plugin: Arc<PluginContext>,
    pub services: Arc<Services>,
    /// Status of the last `http_request` (0 before any, or after one that got no answer).
    pub http_status: u16,
    /// Headers of the last `http_request` answer (`http_headers`).
    pub http_headers: BTreeMap<String, String>,
    /// The folders of `allowedPaths` and the files the instance opened under them.
    pub files: Option<crate::hostcalls::wasi_files::Files>,
}

/// WASI preview 1 for entities with `wasi: true` (the host's WASI functions): stdout and stderr
/// are the plugin's log, the environment is empty, `proc_exit` is logged and ends the call, the
/// folders of `allowedPaths` are preopened.
impl crate::hostcalls::wasi::WasiState for ExtismState {
    fn wasi_log(&mut self, level: LogLevel, line: &str) {
        if self.logs(level) {
            self.log(level, line);
        }
    }

    fn wasi_environment(&self) -> &[(String, String)] {
        &[]
    }

    fn wasi_exit(&mut self, code: i32) {
        self.log(LogLevel::Error, &format!("the plugin called proc_exit({code})"));
    }

    fn wasi_files(&mut self) -> Option<&mut crate::hostcalls::wasi_files::Files> {
        self.files.as_mut()
    }
}

impl ExtismState {
    #[must_use]
    pub fn new(plugin: Arc<PluginContext>, services: Arc<Services>) -> ExtismState {
        let files =
            (!plugin.preopens.is_empty()).then(|| crate::hostcalls::wasi_files::Files::new(plugin.preopens.clone()));
        ExtismState {
            kernel: Kernel::new(plugin.memory_pages),
            vars: VarStore::new(plugin.max_var_bytes),
            plugin,
            services,
            http_status: 0,
            http_headers: BTreeMap::new(),
            files,
        }
    }

    /// Logs for this plugin.
    pub fn log(&self, level: LogLevel, message: &str) {
        self.services.host.log(&self.plugin.name, level, message);
    }

    /// Whether a line at `level` would be written.
    #[must_use]
    pub fn logs(&self, level: LogLevel) -> bool {
        self.services.host.log_threshold().is_some_and(|t| level as u32 >= t as u32)
    }
}
