//! Plugin configuration: the YAML files operators write to set up Proxy-Wasm plugins.
//!
//! # Accepted files
//!
//! The schema is the one of Apache Traffic Server's own wasm plugin (`plugins/experimental/wasm`),
//! so a file written for it loads unchanged:
//!
//! ```yaml
//! config:
//!   name: "myrust"                  # required, non-empty, unique across one load
//!   root_id: ""                     # optional (alias rootId), default ""
//!   configuration: |                # optional plugin configuration, default empty
//!     {"any": "text"}
//!   fail_open: false                # optional (alias failOpen), default false
//!   capability_restriction_config:  # optional (alias capabilityRestrictionConfig)
//!     allowed_capabilities:         # alias allowedCapabilities
//!       proxy_log: {}               # Envoy style map; a plain list of names works too
//!   vm_config:                      # required (alias vmConfig)
//!     runtime: "ats.wasm.runtime.wasmtime"  # optional, default wasmtime
//!     vm_id: "vm1"                  # optional (alias vmId), default ""
//!     configuration: ""             # optional VM configuration, default empty
//!     allow_precompiled: true       # optional (alias allowPrecompiled), default false
//!     environment_variables:        # optional (alias environmentVariables)
//!       host_env_keys: ["HOME"]     # alias hostEnvKeys
//!       key_values: { A: "b" }      # alias keyValues
//!     code:                         # required
//!       local:
//!         filename: "myrust.wasm"   # relative to the YAML file's folder
//! ```
//!
//! One file may also hold several plugins, in either of two shapes, both accepted:
//!
//! ```yaml
//! - config: { name: a, ... }        # a top-level list of `config:` entries
//! - config: { name: b, ... }
//! ```
//! ```yaml
//! plugins:                          # or the same list under a top-level `plugins:` key
//!   - config: { name: a, ... }
//! ```
//!
//! A file that configures no plugin at all (empty, or an empty list) is an error: a proxy that
//! silently runs without its filters is worse than one that refuses to start.
//!
//! # Value rules
//!
//! * Keys are `snake_case`; the `camelCase` aliases ATS and Envoy use are accepted as well. Unknown keys,
//!   and a key given twice (also under its alias), are errors.
//! * Text values (names, ids, file names, environment values, capability names) must be YAML
//!   strings. `vm_id: 1` or `PORT: 8080` is an error asking to quote the value, because YAML has
//!   already turned it into a number and its spelling (`010`, `1.10`) would be lost. An empty value
//!   (`root_id:`) reads as the empty string.
//! * `configuration` (plugin or VM) is passed to the plugin as bytes: a string as it is, a map or a
//!   list as compact JSON text (keys kept in file order, number and boolean keys turned into strings),
//!   nothing or an empty value as no bytes. A bare number or boolean is an error (quote it), so that
//!   what the plugin receives is always spelled out in the file.
//! * Booleans are YAML `true`/`false`, not strings.
//! * The code file must exist and be a readable regular file when the configuration is loaded; its
//!   contents are not looked at here.
//! * `allowed_capabilities` that is absent or empty means no restriction, as in proxy-wasm-cpp-host
//!   (Envoy, ATS); see [`PluginConfig::allowed_capabilities`].
//!
//! # Errors
//!
//! Every [`ConfigError`] names the file, the line and column when known, the key as a dotted path
//! with canonical `snake_case` names (`config.vm_config.runtime`, `plugins[1].config.name`, or
//! `top level`), and what was expected, for example
//! `/etc/ats/a.yaml:7:14: config.vm_config.runtime: unknown runtime "wasmedg"; expected one of ...`.

mod error;
mod node;
mod probe;
mod schema;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

pub use error::{ConfigError, Position};

/// The WebAssembly engine a plugin's VM runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RuntimeKind {
    /// Wasmtime (Cranelift). The default when `runtime` is not given.
    #[default]
    Wasmtime,
    /// The WebAssembly Micro Runtime interpreter.
    Wamr,
}

impl RuntimeKind {
    /// The spellings accepted for `vm_config.runtime`, in the order error messages list them.
    pub const ACCEPTED_NAMES: &'static [&'static str] = &[
        "ats.wasm.runtime.wasmtime",
        "ats.wasm.runtime.wamr",
        "wasmtime",
        "wamr",
    ];

    /// Parses one of [`Self::ACCEPTED_NAMES`].
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ats.wasm.runtime.wasmtime" | "wasmtime" => Some(Self::Wasmtime),
            "ats.wasm.runtime.wamr" | "wamr" => Some(Self::Wamr),
            _ => None,
        }
    }

    /// The short name: `wasmtime` or `wamr`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wasmtime => "wasmtime",
            Self::Wamr => "wamr",
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to traffic when a plugin cannot run (failed to load, trapped, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FailurePolicy {
    /// Refuse the request (`fail_open: false`, or no `fail_open`).
    #[default]
    FailClosed,
    /// Let the request through as if the plugin were not there (`fail_open: true`).
    FailOpen,
}

/// Where a plugin's WebAssembly module comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CodeSource {
    /// A file on disk (`code.local.filename`), made absolute against the YAML file's folder and
    /// checked to be a readable regular file at load time.
    LocalFile(PathBuf),
}

/// The VM part of a plugin (`vm_config`): what is shared by plugins with the same VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// The engine; [`RuntimeKind::Wasmtime`] when `runtime` is not given.
    pub runtime: RuntimeKind,
    /// `vm_id`, empty when not given.
    pub vm_id: String,
    /// The VM configuration bytes, handed to `proxy_on_vm_start`.
    pub configuration: Vec<u8>,
    /// Whether precompiled (native) code may be loaded. Defaults to false, as in Envoy, because
    /// precompiled artifacts are trusted native code (ATS's plugin defaults to true).
    pub allow_precompiled: bool,
    /// The WASI environment: `host_env_keys` found in this process's environment (in the order
    /// listed; missing ones are skipped), then `key_values` in file order. A key given in both keeps
    /// its first place and takes the `key_values` value.
    pub environment: Vec<(String, String)>,
    /// The module to run.
    pub code: CodeSource,
}

/// One configured plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// The plugin's name, unique across one load.
    pub name: String,
    /// `root_id`, empty when not given.
    pub root_id: String,
    /// The plugin configuration bytes, handed to `proxy_on_configure`.
    pub configuration: Vec<u8>,
    /// From `fail_open`.
    pub failure_policy: FailurePolicy,
    /// The hostcalls the plugin may use, or `None` for no restriction. An absent or empty
    /// `allowed_capabilities` is `None`: proxy-wasm-cpp-host treats an empty set as "allow all" and
    /// files written for it rely on that. Names are kept as written (not checked), without duplicates.
    pub allowed_capabilities: Option<Vec<String>>,
    /// The VM settings.
    pub vm: VmConfig,
    /// Where the entry was written.
    pub origin: ConfigOrigin,
}

/// Where a plugin's entry starts: the line of its `config:` key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigOrigin {
    /// The file as it was given to the loader.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Loads the plugins configured in one YAML file.
///
/// # Errors
/// When the file cannot be read or does not describe valid plugins (see [`ConfigError`]).
pub fn load_file(path: &Path) -> Result<Vec<PluginConfig>, ConfigError> {
    load_files(&[path.to_path_buf()])
}

/// Loads the plugins configured in `text`. `file` is used in messages and as the place relative
/// code file names are resolved against (its folder); it need not exist.
///
/// # Errors
/// When the text does not describe valid plugins (see [`ConfigError`]).
pub fn load_str(text: &str, file: &Path) -> Result<Vec<PluginConfig>, ConfigError> {
    let mut plugins = Vec::new();
    append_plugins(&mut plugins, text, file)?;
    Ok(plugins)
}

/// Loads several files, in order, into one list. A plugin name used twice, in one file or across
/// files, is an error.
///
/// # Errors
/// The first problem met, in file order (see [`ConfigError`]).
pub fn load_files(paths: &[PathBuf]) -> Result<Vec<PluginConfig>, ConfigError> {
    let mut plugins = Vec::new();
    for path in paths {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.clone(),
            source,
        })?;
        append_plugins(&mut plugins, &text, path)?;
    }
    Ok(plugins)
}

/// Parses one file and appends its plugins to `plugins`, refusing names already taken.
fn append_plugins(
    plugins: &mut Vec<PluginConfig>,
    text: &str,
    file: &Path,
) -> Result<(), ConfigError> {
    let document = schema::parse(text, file)?;
    for (index, plugin) in document.plugins.into_iter().enumerate() {
        if let Some(first) = plugins.iter().find(|p| p.name == plugin.name) {
            return Err(document.layout.duplicate_name(
                text,
                file,
                index,
                &plugin.name,
                &first.origin,
            ));
        }
        plugins.push(plugin);
    }
    Ok(())
}
