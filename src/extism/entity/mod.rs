//! The Otoroshi WASM plugin entity, as Otoroshi's admin API exports it (MAIF/otoroshi
//! `app/models/wasm.scala` `WasmPlugin`, `app/wasm/wasm.scala` `WasmConfig`, wasm4s `WasmSource`,
//! `WasmVmKillOptions`), read from JSON or from the same in YAML.
//!
//! Every key Otoroshi writes is accepted, with Otoroshi's defaults; keys that mean nothing on
//! this host are accepted and reported as [`Warning`]s (the loader logs them); any other key is an
//! error naming the file, the line and the key. See docs/otoroshi.md, "The entity", for the table.

pub mod document;
pub mod jobs;
pub mod reader;
pub mod sections;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::authorizations::Authorizations;

/// A proxy-engine step (Otoroshi's `NgStep`), by its Otoroshi name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    MatchRoute,
    Router,
    Sink,
    PreRoute,
    ValidateAccess,
    TransformRequest,
    TransformResponse,
    HandlesRequest,
    CallBackend,
    Job,
    /// Accepted (Otoroshi exports it) but never run: Otoroshi has no WASM tunnel handler either.
    HandlesTunnel,
    /// Accepted, never run: there are no data exporters here.
    DataExporterFilter,
    /// Accepted, never run: there are no data exporters here.
    DataExporterTransform,
}

impl Step {
    pub const NAMES: &'static [&'static str] = &[
        "MatchRoute",
        "Router",
        "Sink",
        "PreRoute",
        "ValidateAccess",
        "TransformRequest",
        "TransformResponse",
        "HandlesRequest",
        "CallBackend",
        "Job",
        "HandlesTunnel",
        "DataExporterFilter",
        "DataExporterTransform",
    ];

    #[must_use]
    pub fn from_name(name: &str) -> Option<Step> {
        use Step::*;
        Some(match name {
            "MatchRoute" => MatchRoute,
            "Router" => Router,
            "Sink" => Sink,
            "PreRoute" => PreRoute,
            "ValidateAccess" => ValidateAccess,
            "TransformRequest" => TransformRequest,
            "TransformResponse" => TransformResponse,
            "HandlesRequest" => HandlesRequest,
            "CallBackend" => CallBackend,
            "Job" => Job,
            "HandlesTunnel" => HandlesTunnel,
            "DataExporterFilter" => DataExporterFilter,
            "DataExporterTransform" => DataExporterTransform,
            _ => return None,
        })
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        Step::NAMES[self as usize]
    }

    /// Whether this host runs plugins at this step.
    #[must_use]
    pub fn runs_here(self) -> bool {
        !matches!(self, Step::HandlesTunnel | Step::DataExporterFilter | Step::DataExporterTransform)
    }
}

/// Where the module comes from (`config.source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `file`: a path, relative to the entity file's folder (`file://` accepted).
    File(PathBuf),
    /// `base64`: the module itself (`base64://` accepted).
    Base64(Vec<u8>),
    /// `http`: downloaded with a `GET` (or `opts.method`) and, when `opts.sha256` is given (our
    /// extension), refused unless it has that hash.
    Http {
        url: String,
        method: String,
        headers: Vec<(String, String)>,
        timeout: Duration,
        follow_redirects: bool,
        sha256: Option<[u8; 32]>,
    },
    /// `wasmo`: `GET <wasmo url>/wasm/<path>` with the Wasmo settings of this host.
    Wasmo { path: String, timeout: Duration, follow_redirects: bool, sha256: Option<[u8; 32]> },
    /// `local`: the module (and the settings) of another entity, by id.
    Local(String),
}

impl Source {
    /// Otoroshi's kind name (`WasmSourceKind.name`).
    #[must_use]
    pub fn kind_name(&self) -> &'static str {
        match self {
            Source::File(_) => "File",
            Source::Base64(_) => "Base64",
            Source::Http { .. } => "Http",
            Source::Wasmo { .. } => "Wasmo",
            Source::Local(_) => "Local",
        }
    }
}

/// `config.killOptions` (wasm4s `WasmVmKillOptions`): when an instance is replaced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KillOptions {
    /// `immortal`: never replaced for the reasons below.
    pub immortal: bool,
    /// `max_calls` (default `i32::MAX`): replaced after this many calls.
    pub max_calls: u64,
    /// `max_memory_usage` (default 0: off): replaced once its memory passes this fraction of
    /// `memoryPages`.
    pub max_memory_usage: f64,
    /// `max_avg_call_duration` in ms (default 0: off): replaced when calls take longer on average.
    pub max_avg_call_duration: Duration,
    /// `max_unused_duration` in ms (default 5 minutes): replaced after sitting unused that long.
    pub max_unused_duration: Duration,
}

impl Default for KillOptions {
    fn default() -> Self {
        KillOptions {
            immortal: false,
            max_calls: i32::MAX as u64,
            max_memory_usage: 0.0,
            max_avg_call_duration: Duration::ZERO,
            max_unused_duration: Duration::from_secs(300),
        }
    }
}

/// `config` (Otoroshi's `WasmConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct WasmConfig {
    pub source: Source,
    /// `memoryPages` (default 100 when the key is absent): the cap on the plugin's memory, and on
    /// the Extism kernel's, in 64 KiB pages.
    pub memory_pages: u32,
    /// `functionName`: the export to call instead of the step's default (empty = none).
    pub function_name: Option<String>,
    /// `config`: read by Extism's `config_get`.
    pub config: Vec<(String, String)>,
    /// `allowedHosts`: hosts `http_request` (globs) and `proxy_http_call` (wildcard regexes) may call.
    pub allowed_hosts: Vec<String>,
    /// `allowedPaths`: host path to guest path (WASI preopens).
    pub allowed_paths: Vec<(String, String)>,
    pub wasi: bool,
    pub opa: bool,
    /// `httpWasm`: only a flag in Otoroshi today; accepted and ignored.
    pub http_wasm: bool,
    /// `instances` (default 1): instances per NGINX worker / Traffic Server thread.
    pub instances: u32,
    pub kill_options: KillOptions,
    pub authorizations: Authorizations,
    /// `isJS`: a JavaScript plugin (Otoroshi's functions from `env/Otoroshi`).
    pub is_js: bool,
}

/// A setting accepted but without effect here, for the loader to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub key: String,
    pub message: String,
}

/// One WASM plugin entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    /// `id`: how routes (and our chains) refer to it, and the name of its own map and store.
    pub id: String,
    pub name: String,
    pub description: String,
    pub steps: Vec<Step>,
    pub config: WasmConfig,
    pub tags: Vec<String>,
    pub metadata: Vec<(String, String)>,
    /// The file and line (1-based; 0 when unknown) the entity starts at.
    pub file: PathBuf,
    pub line: usize,
    /// The key path of the entity in its file (`""`, `[2]`, `wasm_plugins[0]`, `spec`).
    pub path: String,
    pub warnings: Vec<Warning>,
}

impl WasmConfig {
    /// The function a step calls: `functionName` when set, else the step's own.
    #[must_use]
    pub fn function_for<'a>(&'a self, default: &'a str) -> &'a str {
        self.function_name.as_deref().unwrap_or(default)
    }

    /// Otoroshi's `WasmConfig.json` for this entity as a route would carry it (the `config` of a
    /// step's context): the source is a reference to the entity (`{"kind": "Local", "path": id}`),
    /// so that an inline module is not copied into every request.
    #[must_use]
    pub fn context_json(&self, entity_id: &str) -> Value {
        let rights = |r: super::authorizations::DataRights| json!({"read": r.read, "write": r.write});
        let a = &self.authorizations;
        let k = &self.kill_options;
        json!({
            "source": {"kind": "Local", "path": entity_id, "opts": {}},
            "memoryPages": self.memory_pages,
            "functionName": self.function_name,
            "config": self.config.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
            "allowedHosts": self.allowed_hosts,
            "allowedPaths": self.allowed_paths.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
            "wasi": self.wasi,
            "opa": self.opa,
            "httpWasm": self.http_wasm,
            "authorizations": {
                "httpAccess": a.http_access,
                "proxyHttpCallTimeout": a.proxy_http_call_timeout_ms,
                "globalDataStoreAccess": rights(a.global_data_store_access),
                "pluginDataStoreAccess": rights(a.plugin_data_store_access),
                "globalMapAccess": rights(a.global_map_access),
                "pluginMapAccess": rights(a.plugin_map_access),
                "proxyStateAccess": a.proxy_state_access,
                "configurationAccess": a.configuration_access,
            },
            "instances": self.instances,
            "killOptions": {
                "immortal": k.immortal,
                "max_calls": k.max_calls,
                "max_memory_usage": k.max_memory_usage,
                "max_avg_call_duration": k.max_avg_call_duration.as_millis() as u64,
                "max_unused_duration": k.max_unused_duration.as_millis() as u64,
            },
            "isJS": self.is_js,
        })
    }
}
