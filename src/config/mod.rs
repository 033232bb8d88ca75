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
//!   failure_policy: fail_closed     # our extension (alias failurePolicy): fail_closed (default),
//!                                   # fail_open or reload; not together with fail_open
//!   pause_timeout: 60s              # our extension (alias pauseTimeout): how long a request may
//!                                   # wait for this plugin to continue it, and the host for its
//!                                   # proxy_done after on_done returned false; default 60s
//!   max_body_size: 16MiB            # our extension (alias maxBodySize): the most body bytes the
//!                                   # host holds for this plugin (paused on, or held whole for a
//!                                   # chain that reads it), default 16MiB (then 413 / 500 / cut)
//!   authorizations:                 # our extension; every key optional
//!     allowed_hosts: []             # alias allowedHosts: http_call upstreams ("*" = any), default none
//!     plugin_map_access: { read: true, write: true }   # alias pluginMapAccess: own shared data
//!                                   # and queues, default both true; in a given map a missing
//!                                   # right is false
//!     global_map_access: { read: false, write: false } # alias globalMapAccess: other VMs' shared
//!                                   # data as "<vm_id>::<key>" and their queues, default both
//!                                   # false (queues: dequeue reads, enqueue writes, resolve and
//!                                   # register need either right)
//!     properties: { read: ["*"], write: ["*"] }         # dotted path prefixes, default ["*"] each
//!   capability_restriction_config:  # optional (alias capabilityRestrictionConfig)
//!     allowed_capabilities:         # alias allowedCapabilities
//!       proxy_log: {}               # Envoy style map; a plain list of names works too
//!   vm_config:                      # required (alias vmConfig)
//!     runtime: "ats.wasm.runtime.wasmtime"  # optional, default wasmtime
//!     vm_id: "vm1"                  # optional (alias vmId), default ""
//!     configuration: ""             # optional VM configuration, default empty
//!     allow_precompiled: true       # optional (alias allowPrecompiled), default false; the
//!                                   # compiled-module cache (see `module_cache` for its rules)
//!     environment_variables:        # optional (alias environmentVariables)
//!       host_env_keys: ["HOME"]     # alias hostEnvKeys
//!       key_values: { A: "b" }      # alias keyValues
//!     kill_options:                 # our extension (alias killOptions), Otoroshi's names; all off
//!       max_calls: 100000           # alias maxCalls: a positive whole number
//!       max_memory_usage: 0.8       # alias maxMemoryUsage: a fraction in (0, 1]
//!       max_unused_duration: 300s   # alias maxUnusedDuration: "300s", "1.5s", "500ms"
//!     limits:                       # our extension; each key optional
//!       max_memory: 64MiB           # alias maxMemory: the instance's linear memory at most;
//!                                   # bytes as a number, or "<n>KiB", "<n>MiB", "<n>GiB";
//!                                   # 64KiB to 4GiB, whole 64 KiB pages (rounded down)
//!       callback_timeout: 100ms     # alias callbackTimeout: one callback (or start-up
//!                                   # function) runs at most this long: "100ms", "1.5s"
//!       # Host-side caps, each on by default (see `Quotas` and docs/robustness.md):
//!       max_pending_http_calls: 1024          # alias maxPendingHttpCalls
//!       max_http_call_response_size: 16MiB    # alias maxHttpCallResponseSize
//!       max_queue_length: 10000               # alias maxQueueLength: items waiting in one
//!                                             # shared queue the VM registered
//!       max_shared_data_size: 16MiB           # alias maxSharedDataSize: bytes of shared data
//!                                             # (keys, values) its plugins wrote and items
//!                                             # queued for it, per vm_id
//!       max_metrics: 256                      # alias maxMetrics: metrics per vm_id
//!       max_log_lines_per_second: 1000        # alias maxLogLinesPerSecond: proxy_log and fd_write
//!                                             # lines of one plugin; more are dropped and counted
//!       min_tick_period: 1ms                  # alias minTickPeriod: shorter periods are raised
//!     code:                         # required: exactly one of `local` and `remote`
//!       local:                      # exactly one of filename, inline_bytes, inline_string
//!         filename: "myrust.wasm"   # relative to the YAML file's folder
//! ```
//!
//! # Code sources
//!
//! Besides `local.filename`, the module can be written in the file or downloaded (the names are
//! those of Envoy's `DataSource` and `RemoteDataSource`):
//!
//! ```yaml
//! code:
//!   local:
//!     inline_bytes: "AGFzbQEAAAA..."  # (alias inlineBytes) the module as base64 (standard alphabet;
//!                                     # whitespace ignored, padding optional): our choice, since
//!                                     # YAML has no bytes type
//!     # inline_string: "..."          # (alias inlineString) the string's UTF-8 bytes, as in Envoy
//! ```
//! ```yaml
//! code:
//!   remote:
//!     http_uri:                       # (alias httpUri) Envoy's HttpUri, without `cluster`
//!       uri: "http://host:8080/f.wasm"  # required; http:// only (see below)
//!       timeout: 10s                  # optional, default 10s; "<n>s" or "<n>ms", up to a day
//!     uri: "http://host/f.wasm"       # shorthand for http_uri.uri (not both)
//!     sha256: "<64 hex digits>"       # required
//!     cache_dir: "/var/cache/proxy-wasm-host"  # (alias cacheDir) our extension, optional
//! ```
//!
//! Remote code is fetched by the loader ([`crate::loader`], [`crate::remote_code`]), not while the
//! configuration is read. It is downloaded once and kept in `<cache_dir>/<sha256 hex>.wasm`; later
//! loads read that file and do not contact the server. Every load hashes the bytes it is about to
//! use: a cache file that does not match is ignored with a warning and downloaded again, and a
//! download that does not match refuses the plugin (the error names the YAML file, the plugin, the
//! key `vm_config.code.remote.sha256`, the expected and the actual hash). Without `cache_dir`, the
//! cache is [`RemoteCode::DEFAULT_CACHE_DIR`] (`/var/cache/proxy-wasm-host`), or `proxy-wasm-host`
//! in the system temporary folder when that one cannot be written; a relative `cache_dir` is
//! relative to the YAML file's folder. A cache folder that cannot be written is a warning, not an
//! error: the verified download is used and fetched again next time.
//!
//! Only `http://` URLs are accepted: downloads use this host's own small HTTP/1.1 client
//! ([`crate::http_client`]), which has no TLS, and the sha256 pin already guarantees the code
//! whatever the transport. `https://` is refused with a message saying so. Redirects are not
//! followed (a status other than 200 refuses the plugin). Envoy's `http_uri.cluster` is not accepted:
//! the host connects to the URL's host and port itself.
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
//!   contents are not looked at here (`inline_bytes` is only decoded from base64).
//! * `allowed_capabilities` that is absent or empty means no restriction, as in proxy-wasm-cpp-host
//!   (Envoy, ATS); see [`PluginConfig::allowed_capabilities`].
//! * YAML anchors and aliases (`&name`, `*name`) work, within bounds that stop an alias bomb
//!   ("billion laughs"): one file may expand to at most 200 000 nodes and 64 MiB of text with every
//!   alias expanded where it is used. Brackets (`[`, `{`) nested more than 1000 deep are refused
//!   before parsing (the schema reads at most 128 levels anyway). One file holds one YAML document.
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
    pub const ACCEPTED_NAMES: &'static [&'static str] =
        &["ats.wasm.runtime.wasmtime", "ats.wasm.runtime.wamr", "wasmtime", "wamr"];

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

/// What happens when a plugin fails (traps, hits a limit, cannot start):
/// `failure_policy` (our extension), or Traffic Server's `fail_open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FailurePolicy {
    /// The transaction gets 503 and the rest of its chain is skipped; the
    /// plugin stays failed (every transaction it filters gets 503) until the
    /// configuration is reloaded (`fail_open: false`, or nothing said).
    #[default]
    FailClosed,
    /// The plugin is skipped: for that transaction and, while it stays
    /// failed, for the following ones (`fail_open: true`).
    FailOpen,
    /// As `FailClosed` for the transaction that failed; the next one gets a
    /// fresh instance, after a back-off that doubles with each failure in a
    /// row (see `loader::RELOAD_BACKOFF_*`); transactions during the back-off get 503.
    Reload,
}

impl FailurePolicy {
    /// `fail_closed`, `fail_open` or `reload`.
    pub fn from_name(name: &str) -> Option<FailurePolicy> {
        match name {
            "fail_closed" | "FAIL_CLOSED" => Some(FailurePolicy::FailClosed),
            "fail_open" | "FAIL_OPEN" => Some(FailurePolicy::FailOpen),
            "reload" | "fail_reload" | "FAIL_RELOAD" => Some(FailurePolicy::Reload),
            _ => None,
        }
    }
}

/// Where a plugin's WebAssembly module comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CodeSource {
    /// A file on disk (`code.local.filename`), made absolute against the YAML file's folder and
    /// checked to be a readable regular file at load time.
    LocalFile(PathBuf),
    /// The module itself, written in the file: `code.local.inline_bytes` (base64, decoded here) or
    /// `code.local.inline_string` (the string's UTF-8 bytes).
    Inline(Vec<u8>),
    /// A module downloaded over HTTP and pinned by its SHA-256 (`code.remote`); see
    /// [`RemoteCode`]. Fetched by the loader, not here.
    Remote(RemoteCode),
}

/// `code.remote`: where to download a module, the hash it must have, and where to cache it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteCode {
    /// The `http://` URL, as written (`http_uri.uri` or `uri`).
    pub uri: String,
    /// `host:port` taken from [`Self::uri`] (port 80 when not written).
    pub upstream: String,
    /// The `Host` header value: the URL's authority as written.
    pub authority: String,
    /// Path and query taken from [`Self::uri`], `/` when empty.
    pub path: String,
    /// The whole download must finish within this time (`http_uri.timeout`, default
    /// [`RemoteCode::DEFAULT_TIMEOUT`]).
    pub timeout: std::time::Duration,
    /// The expected SHA-256 of the module (`sha256`, required).
    pub sha256: [u8; 32],
    /// `cache_dir` (our extension), or `None` for the default: [`RemoteCode::DEFAULT_CACHE_DIR`],
    /// or `proxy-wasm-host` in the system temporary folder when that one is not writable.
    pub cache_dir: Option<PathBuf>,
}

impl RemoteCode {
    /// The download time limit when `timeout` is not given.
    pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
    /// The cache folder when `cache_dir` is not given.
    pub const DEFAULT_CACHE_DIR: &'static str = "/var/cache/proxy-wasm-host";

    /// [`Self::sha256`] in lowercase hex, as written in files and used as the cache file name.
    #[must_use]
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
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
    /// When an instance is replaced by a fresh one (`kill_options`).
    pub kill_options: KillOptions,
    /// Memory and time limits of each instance (`limits`, our extension; see [`VmConfig::limits`]).
    ///
    /// - `max_memory` (default: none, i.e. the module's own maximum, 4 GiB at most): the most
    ///   linear memory an instance may have. A module whose initial memory is larger cannot start;
    ///   `memory.grow` past it fails as the guest sees it (returns -1), so the guest's allocator
    ///   reports out-of-memory (the Rust SDK then traps, which the failure policy handles).
    ///   Wasmtime enforces it with store limits, WAMR by capping the memory's maximum pages.
    /// - `callback_timeout` (default: none): how long one call into the plugin (a callback,
    ///   `_initialize`/`main`, the allocator with the hostcalls it makes) may run. A call past it
    ///   is stopped within about 5 ms more and ends as a trap ("time limit exceeded"), which marks
    ///   the instance failed: its failure policy applies. Wasmtime stops it by epoch interruption,
    ///   WAMR with `wasm_runtime_terminate` from a watchdog thread.
    pub limits: crate::runtime::Limits,
    /// Host-side caps of each plugin of this VM (the other keys of `limits`; see [`Quotas`]).
    pub quotas: Quotas,
}

/// Host-side resource caps (`vm_config.limits`, our extension, beside `max_memory` and
/// `callback_timeout`). Unlike those, every cap here is on by default: a plugin must not be able
/// to exhaust the proxy, whatever it does. Each cap, when hit, answers the status the SDKs expect
/// in that situation and is logged once per plugin; `docs/robustness.md` lists them.
///
/// Counted per plugin in each NGINX worker or Traffic Server thread unless said otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// `max_pending_http_calls` (alias `maxPendingHttpCalls`): `proxy_http_call`s of one plugin
    /// waiting for their answer; a call past it is refused (`proxy_http_call` answers
    /// INTERNAL_FAILURE, which the SDKs report as an error without trapping).
    pub max_pending_http_calls: u32,
    /// `max_http_call_response_size` (alias `maxHttpCallResponseSize`): the most bytes of an
    /// `http_call` answer (headers and body) the host reads; a larger answer fails the call.
    pub max_http_call_response_size: u64,
    /// `max_queue_length` (alias `maxQueueLength`): items waiting in one shared queue the VM
    /// registered (the registrant's value is kept with the queue, whoever enqueues); an enqueue
    /// past it answers NOT_FOUND (the only refusal the Rust SDK accepts) and is logged once.
    pub max_queue_length: u32,
    /// `max_shared_data_size` (alias `maxSharedDataSize`): bytes the VM's `vm_id` may hold in
    /// shared state: keys and values its plugins wrote (in its own data or another VM's) plus
    /// the items waiting in the queues it registered (in NGINX's zone: for all workers
    /// together, counted in the zone). A `set_shared_data` that would pass it answers
    /// CAS_MISMATCH, an enqueue NOT_FOUND; both logged once. A queue keeps its registrant's cap.
    pub max_shared_data_size: u64,
    /// `max_metrics` (alias `maxMetrics`): distinct metrics the plugins of the VM's `vm_id` may
    /// define (a name another VM defined first does not count); past it `proxy_define_metric`
    /// answers INTERNAL_FAILURE (the SDKs accept no refusal there: the plugin traps) and is
    /// logged once.
    pub max_metrics: u32,
    /// `max_log_lines_per_second` (alias `maxLogLinesPerSecond`): log lines a plugin may write
    /// per second; further lines that second are dropped and counted in one later line.
    pub max_log_lines_per_second: u32,
    /// `min_tick_period` (alias `minTickPeriod`): the shortest tick period a plugin gets; a
    /// shorter one asked for is raised to it.
    pub min_tick_period: std::time::Duration,
}

impl Quotas {
    pub const DEFAULT_MAX_PENDING_HTTP_CALLS: u32 = 1024;
    pub const DEFAULT_MAX_HTTP_CALL_RESPONSE_SIZE: u64 = 16 << 20;
    pub const DEFAULT_MAX_QUEUE_LENGTH: u32 = 10_000;
    pub const DEFAULT_MAX_SHARED_DATA_SIZE: u64 = 16 << 20;
    pub const DEFAULT_MAX_METRICS: u32 = 256;
    pub const DEFAULT_MAX_LOG_LINES_PER_SECOND: u32 = 1000;
    pub const DEFAULT_MIN_TICK_PERIOD: std::time::Duration = std::time::Duration::from_millis(1);
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas {
            max_pending_http_calls: Quotas::DEFAULT_MAX_PENDING_HTTP_CALLS,
            max_http_call_response_size: Quotas::DEFAULT_MAX_HTTP_CALL_RESPONSE_SIZE,
            max_queue_length: Quotas::DEFAULT_MAX_QUEUE_LENGTH,
            max_shared_data_size: Quotas::DEFAULT_MAX_SHARED_DATA_SIZE,
            max_metrics: Quotas::DEFAULT_MAX_METRICS,
            max_log_lines_per_second: Quotas::DEFAULT_MAX_LOG_LINES_PER_SECOND,
            min_tick_period: Quotas::DEFAULT_MIN_TICK_PERIOD,
        }
    }
}

/// Otoroshi-style recycling (`vm_config.kill_options`, our extension): an
/// instance is replaced by a fresh one (`proxy_on_vm_start` and
/// `proxy_on_configure` run again) after `max_calls` callbacks, once its
/// linear memory passes `max_memory_usage` of its maximum, or after it sat
/// unused for `max_unused_duration`. All off by default.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct KillOptions {
    pub max_calls: Option<u64>,
    /// A fraction in (0, 1] of the instance's maximum memory (its memory
    /// limit, else 4 GiB).
    pub max_memory_usage: Option<f64>,
    pub max_unused_duration: Option<std::time::Duration>,
}

impl Eq for KillOptions {}

/// One configured plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// The plugin's name, unique across one load.
    pub name: String,
    /// `root_id`, empty when not given.
    pub root_id: String,
    /// The plugin configuration bytes, handed to `proxy_on_configure`.
    pub configuration: Vec<u8>,
    /// From `failure_policy`, or Traffic Server's `fail_open`.
    pub failure_policy: FailurePolicy,
    /// `pause_timeout` (our extension; default [`PluginConfig::DEFAULT_PAUSE_TIMEOUT`]): how long
    /// a request or response may stay paused by this plugin (a Pause from `on_request_headers` or
    /// `on_response_headers`, or at the end of a body) without `proxy_continue_stream` or a local
    /// response. Past it the server ends the stream as Envoy's stream idle timeout does: a 504
    /// if no response was sent yet, else the connection is closed. A plugin that never continues
    /// then cannot hold a request (and its connection) for ever, even after the client left.
    /// It also bounds how long the host waits for the plugin's `proxy_done` after its
    /// `proxy_on_done` returned false (see `Vm::expire_awaiting_done`).
    pub pause_timeout: std::time::Duration,
    /// `max_body_size` (our extension, alias `maxBodySize`; default
    /// [`PluginConfig::DEFAULT_MAX_BODY_SIZE`]): the most bytes of a request or response body the
    /// host holds for this plugin (a body callback that pauses, or a body read whole for it).
    /// Past it a request is answered 413 and a response is cut (or answered 500 while its header
    /// is not sent), with a log line naming the plugin; see `Vm::on_request_body` and
    /// docs/robustness.md ("Bodies").
    pub max_body_size: u64,
    /// What the plugin may touch (`authorizations`, and
    /// `capability_restriction_config` as its `capabilities`).
    pub authorizations: crate::authorizations::Authorizations,
    /// The hostcalls the plugin may use, or `None` for no restriction. An absent or empty
    /// `allowed_capabilities` is `None`: proxy-wasm-cpp-host treats an empty set as "allow all" and
    /// files written for it rely on that. Names are kept as written (not checked), without duplicates.
    pub allowed_capabilities: Option<Vec<String>>,
    /// The VM settings.
    pub vm: VmConfig,
    /// Where the entry was written.
    pub origin: ConfigOrigin,
}

impl PluginConfig {
    /// `pause_timeout` when not given (nginx's default `proxy_read_timeout`).
    pub const DEFAULT_PAUSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
    /// `max_body_size` when not given.
    pub const DEFAULT_MAX_BODY_SIZE: u64 = 16 << 20;
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

/// Everything one load configures: Proxy-Wasm plugins, and Otoroshi WASM plugin entities (see
/// [`crate::extism::entity::document`] for the files that hold them and docs/otoroshi.md).
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The Proxy-Wasm plugins, in file order.
    pub plugins: Vec<PluginConfig>,
    /// The Otoroshi entities, in file order; ids unique and distinct from plugin names, `local`
    /// sources resolvable (checked by [`crate::extism::entity::document::resolve`]).
    pub entities: Vec<crate::extism::entity::Entity>,
    /// The `otoroshi:` settings, when a file gives them (at most one file may).
    pub otoroshi: Option<crate::extism::entity::document::Settings>,
    /// The file that gave `otoroshi`.
    otoroshi_file: Option<PathBuf>,
}

/// Loads the plugins configured in one YAML file.
///
/// # Errors
/// When the file cannot be read or does not describe valid plugins (see [`ConfigError`]), and
/// when it holds Otoroshi entities (see [`load_files`]).
pub fn load_file(path: &Path) -> Result<Vec<PluginConfig>, ConfigError> {
    load_files(&[path.to_path_buf()])
}

/// Loads the plugins configured in `text`. `file` is used in messages and as the place relative
/// code file names are resolved against (its folder); it need not exist.
///
/// # Errors
/// When the text does not describe valid plugins (see [`ConfigError`]), and when it holds
/// Otoroshi entities (see [`load_files`]).
pub fn load_str(text: &str, file: &Path) -> Result<Vec<PluginConfig>, ConfigError> {
    let mut loaded = Loaded::default();
    append_file(&mut loaded, text, file)?;
    finish(&loaded)?;
    proxy_wasm_only(loaded)
}

/// Loads several files, in order, into one list. A plugin name used twice, in one file or across
/// files, is an error.
///
/// The servers do not run Otoroshi entities yet (their steps are not links of the filter chain),
/// so a file holding one is refused with an error naming the entity, rather than read and then
/// silently not run: a proxy that runs without a configured filter is worse than one that refuses
/// to start. [`load_all`] reads them.
///
/// # Errors
/// The first problem met, in file order (see [`ConfigError`]).
pub fn load_files(paths: &[PathBuf]) -> Result<Vec<PluginConfig>, ConfigError> {
    proxy_wasm_only(load_all(paths)?)
}

/// Loads several files, in order: Proxy-Wasm plugins and Otoroshi entities, each file read with
/// the parser its shape calls for ([`crate::extism::entity::document::sniff`]). Plugin names and
/// entity ids share one namespace (chains name both), unique across the load.
///
/// # Errors
/// The first problem met, in file order (see [`ConfigError`]).
pub fn load_all(paths: &[PathBuf]) -> Result<Loaded, ConfigError> {
    let mut loaded = Loaded::default();
    for path in paths {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read { file: path.clone(), source })?;
        append_file(&mut loaded, &text, path)?;
    }
    finish(&loaded)?;
    Ok(loaded)
}

fn proxy_wasm_only(loaded: Loaded) -> Result<Vec<PluginConfig>, ConfigError> {
    match loaded.entities.first() {
        None => Ok(loaded.plugins),
        Some(entity) => Err(ConfigError::Invalid {
            at: Position { file: entity.file.clone(), line: (entity.line > 0).then_some(entity.line), column: None },
            key: if entity.path.is_empty() { "id".to_owned() } else { format!("{}.id", entity.path) },
            message: format!(
                "Otoroshi WASM plugin entity {:?} is valid, but this build does not run Extism \
                 plugins on the servers yet (docs/otoroshi.md); only Proxy-Wasm plugins can be \
                 configured here",
                entity.id
            ),
        }),
    }
}

/// Reads one file into `loaded`: an Otoroshi file (entities, `wasm_plugins:`/`otoroshi:`, with
/// the Proxy-Wasm `plugins:` or `config:` of the same file) or a Proxy-Wasm file.
fn append_file(loaded: &mut Loaded, text: &str, file: &Path) -> Result<(), ConfigError> {
    use crate::extism::entity::document::{self, Layout};
    // Before anything parses the text (sniffing does): deep brackets cost libyaml quadratic time.
    schema::check_flow_depth(text, file)?;
    let layout = document::sniff(text);
    let plugins_before = loaded.plugins.len();
    if layout.is_none() || layout == Some(Layout::WasmPluginsKey) {
        append_plugins(&mut loaded.plugins, text, file)?;
    }
    if layout.is_none() {
        return Ok(());
    }
    let doc = document::parse(text, file, &["config", "plugins"])?;
    if doc.entities.is_empty() && loaded.plugins.len() == plugins_before {
        // As for a Proxy-Wasm file: a file that configures nothing is a mistake.
        return Err(ConfigError::Invalid {
            at: Position { file: file.to_path_buf(), line: None, column: None },
            key: "top level".to_owned(),
            message: "no plugin configured; expected a non-empty \"wasm_plugins\" or \"plugins\" list".to_owned(),
        });
    }
    if let Some(settings) = doc.settings {
        if let Some(first) = &loaded.otoroshi_file {
            return Err(ConfigError::Invalid {
                at: Position { file: file.to_path_buf(), line: None, column: None },
                key: "otoroshi".to_owned(),
                message: format!(
                    "Otoroshi settings given twice; already given in {}; expected them in one file",
                    first.display()
                ),
            });
        }
        let mut settings = settings;
        crate::extism::entity::jobs::locate(&mut settings.jobs, text);
        loaded.otoroshi = Some(settings);
        loaded.otoroshi_file = Some(file.to_path_buf());
    }
    loaded.entities.extend(doc.entities);
    Ok(())
}

/// Checks what spans files: entity ids against each other and their `local` sources, and
/// against plugin names.
fn finish(loaded: &Loaded) -> Result<(), ConfigError> {
    crate::extism::entity::document::resolve(&loaded.entities)?;
    if let (Some(settings), Some(file)) = (&loaded.otoroshi, &loaded.otoroshi_file) {
        crate::extism::entity::jobs::check(&settings.jobs, &loaded.entities, file)?;
    }
    for entity in &loaded.entities {
        if let Some(plugin) = loaded.plugins.iter().find(|p| p.name == entity.id) {
            return Err(ConfigError::Invalid {
                at: Position {
                    file: entity.file.clone(),
                    line: (entity.line > 0).then_some(entity.line),
                    column: None,
                },
                key: if entity.path.is_empty() { "id".to_owned() } else { format!("{}.id", entity.path) },
                message: format!(
                    "entity id {:?} is also the name of the Proxy-Wasm plugin at {}; expected a name \
                     unique across plugins and entities (chains name both)",
                    entity.id, plugin.origin
                ),
            });
        }
    }
    Ok(())
}

/// Parses one file and appends its plugins to `plugins`, refusing names already taken.
fn append_plugins(plugins: &mut Vec<PluginConfig>, text: &str, file: &Path) -> Result<(), ConfigError> {
    let document = schema::parse(text, file)?;
    for (index, plugin) in document.plugins.into_iter().enumerate() {
        if let Some(first) = plugins.iter().find(|p| p.name == plugin.name) {
            return Err(document.layout.duplicate_name(text, file, index, &plugin.name, &first.origin));
        }
        plugins.push(plugin);
    }
    Ok(())
}
