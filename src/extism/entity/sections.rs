//! The maps of an entity and how each becomes Rust: one [`Node`] per map, its keys (Otoroshi's
//! name first, then the aliases accepted), Otoroshi's defaults.

use std::path::Path;
use std::time::Duration;

use serde::de::{MapAccess, SeqAccess};
use serde_json::Value;

use super::reader::{read_map, wrong_type, Any, Cx, Flag, Float, Int, Node, NonEmpty, Text, TextList, TextMap};
use super::{Entity, KillOptions, Source, Step, Warning, WasmConfig};
use crate::extism::authorizations::{Authorizations, DataRights};

/// The `kind` the admin API adds to an exported entity.
pub const ENTITY_KIND: &str = "plugins.otoroshi.io/WasmPlugin";

const ENTITY_KEYS: &[&[&str]] =
    &[&["id"], &["name"], &["description"], &["config"], &["steps"], &["tags"], &["metadata"], &["_loc"], &["kind"]];

/// One entity map.
pub struct EntityNode {
    /// Where the entity is (`""`, `[1]`, `wasm_plugins[0]`...), for [`Entity::path`].
    pub path: String,
    pub file: std::path::PathBuf,
    pub line: usize,
}

impl<'de> Node<'de> for EntityNode {
    type Out = Entity;

    fn expected(&self) -> &'static str {
        "an Otoroshi WASM plugin entity (a map with id, name, config...)"
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx, mut map: A) -> Result<Entity, A::Error> {
        let mut id = None;
        let mut name = None;
        let mut description = String::new();
        let mut config = None;
        let mut steps = Vec::new();
        let mut tags = Vec::new();
        let mut metadata = Vec::new();
        let mut warnings = Vec::new();
        read_map(cx, &mut map, ENTITY_KEYS, |key, vcx, map| {
            match key {
                "id" => id = Some(map.next_value_seed(vcx.at(NonEmpty))?),
                "name" => name = Some(map.next_value_seed(vcx.at(Text))?),
                "description" => description = map.next_value_seed(vcx.at(Text))?,
                "config" => config = Some(map.next_value_seed(vcx.at(ConfigNode))?),
                "steps" => {
                    steps = map.next_value_seed(vcx.clone().at(Steps))?;
                    for (i, step) in steps.iter().enumerate() {
                        if !step.runs_here() {
                            warnings.push(Warning {
                                key: vcx.index(i).path,
                                message: format!(
                                    "step {} never runs on this host (Otoroshi has no WASM plugin for it either)",
                                    step.name()
                                ),
                            });
                        }
                    }
                }
                "tags" => tags = map.next_value_seed(vcx.at(TextList))?,
                "metadata" => metadata = map.next_value_seed(vcx.at(TextMap))?,
                "_loc" => {
                    // Otoroshi's tenant and teams: no meaning here.
                    map.next_value_seed(vcx.at(Any))?;
                }
                _ => {
                    let kind = map.next_value_seed(vcx.clone().at(Text))?;
                    if kind != ENTITY_KIND && kind != "WasmPlugin" {
                        return Err(vcx.fail(format!(
                            "expected {ENTITY_KIND:?}, found {kind:?}: this file holds another kind of Otoroshi entity"
                        )));
                    }
                }
            }
            Ok(())
        })?;
        let id = id.ok_or_else(|| cx.fail("the entity has no id"))?;
        let (config, config_warnings) =
            config.ok_or_else(|| cx.key("config").fail("the entity has no config (and so no source)"))?;
        warnings.extend(config_warnings);
        Ok(Entity {
            name: name.unwrap_or_else(|| id.clone()),
            id,
            description,
            steps,
            config,
            tags,
            metadata,
            file: self.file,
            line: self.line,
            path: self.path,
            warnings,
        })
    }
}

struct Steps;

impl<'de> Node<'de> for Steps {
    type Out = Vec<Step>;

    fn expected(&self) -> &'static str {
        "a list of step names"
    }

    fn scalar(self, _cx: &Cx, value: Value) -> Result<Vec<Step>, String> {
        match value {
            Value::Null => Ok(Vec::new()),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }

    fn seq<A: SeqAccess<'de>>(self, cx: &Cx, mut seq: A) -> Result<Vec<Step>, A::Error> {
        let mut steps = Vec::new();
        while let Some(step) = seq.next_element_seed(cx.index(steps.len()).at(StepName))? {
            if !steps.contains(&step) {
                steps.push(step);
            }
        }
        Ok(steps)
    }
}

struct StepName;

impl Node<'_> for StepName {
    type Out = Step;
    fn expected(&self) -> &'static str {
        "a step name"
    }
    fn scalar(self, _cx: &Cx, value: Value) -> Result<Step, String> {
        let Value::String(name) = value else { return Err(wrong_type(self.expected(), &value)) };
        Step::from_name(&name)
            .ok_or_else(|| format!("unknown step {name:?}; expected one of {}", Step::NAMES.join(", ")))
    }
}

const CONFIG_KEYS: &[&[&str]] = &[
    &["source"],
    &["memoryPages", "memory_pages"],
    &["functionName", "function_name"],
    &["config"],
    &["allowedHosts", "allowed_hosts"],
    &["allowedPaths", "allowed_paths"],
    &["wasi"],
    &["opa"],
    &["httpWasm", "http_wasm"],
    &["authorizations", "accesses"],
    &["instances"],
    &["killOptions", "kill_options"],
    &["isJS", "is_js"],
    &["compiler_source"],
    &["raw_source"],
    &["lifetime"],
    &["preserve"],
];

/// `config`.
pub struct ConfigNode;

impl<'de> Node<'de> for ConfigNode {
    type Out = (WasmConfig, Vec<Warning>);

    fn expected(&self) -> &'static str {
        "a map (the plugin's WASM configuration)"
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx, mut map: A) -> Result<Self::Out, A::Error> {
        let mut source = None;
        let mut compiler_source = None;
        let mut raw_source = None;
        let mut allowed_paths_key = None;
        let mut c = WasmConfig {
            source: Source::Local(String::new()),
            memory_pages: 100,
            function_name: None,
            config: Vec::new(),
            allowed_hosts: Vec::new(),
            allowed_paths: Vec::new(),
            wasi: false,
            opa: false,
            http_wasm: false,
            instances: 1,
            kill_options: KillOptions::default(),
            authorizations: Authorizations::default(),
            is_js: false,
        };
        let mut warnings = Vec::new();
        read_map(cx, &mut map, CONFIG_KEYS, |key, vcx, map| {
            match key {
                "source" => source = Some(map.next_value_seed(vcx.clone().at(SourceNode))?),
                "memoryPages" => {
                    let n = map.next_value_seed(vcx.at(Int {
                        min: 1,
                        max: 65536,
                        expected: "a number of 64 KiB pages from 1 to 65536",
                    }))?;
                    c.memory_pages = n.map_or(100, |n| n as u32);
                }
                "functionName" => c.function_name = Some(map.next_value_seed(vcx.at(Text))?).filter(|f| !f.is_empty()),
                "config" => c.config = map.next_value_seed(vcx.at(TextMap))?,
                "allowedHosts" => c.allowed_hosts = map.next_value_seed(vcx.at(TextList))?,
                "allowedPaths" => {
                    c.allowed_paths = map.next_value_seed(vcx.clone().at(TextMap))?;
                    allowed_paths_key = Some(vcx.path);
                }
                "wasi" => c.wasi = map.next_value_seed(vcx.at(Flag))?.unwrap_or(false),
                "opa" => c.opa = map.next_value_seed(vcx.at(Flag))?.unwrap_or(false),
                "httpWasm" => {
                    c.http_wasm = map.next_value_seed(vcx.clone().at(Flag))?.unwrap_or(false);
                    if c.http_wasm {
                        warnings.push(Warning {
                            key: vcx.path,
                            message: "httpWasm is only a flag in Otoroshi; it has no effect here".into(),
                        });
                    }
                }
                "authorizations" => c.authorizations = map.next_value_seed(vcx.at(AuthorizationsNode))?,
                "instances" => {
                    c.instances = map
                        .next_value_seed(vcx.at(Int {
                            min: 1,
                            max: 1024,
                            expected: "a number of instances from 1 to 1024",
                        }))?
                        .map_or(1, |n| n as u32)
                }
                "killOptions" => c.kill_options = map.next_value_seed(vcx.at(KillOptionsNode))?,
                "isJS" => c.is_js = map.next_value_seed(vcx.at(Flag))?.unwrap_or(false),
                "compiler_source" => compiler_source = Some((map.next_value_seed(vcx.clone().at(NonEmpty))?, vcx)),
                "raw_source" => raw_source = Some((map.next_value_seed(vcx.clone().at(NonEmpty))?, vcx)),
                // Otoroshi reads neither any more (every VM lives "forever").
                _ => {
                    map.next_value_seed(vcx.at(Any))?;
                }
            }
            Ok(())
        })?;
        if let Some(key) = allowed_paths_key.filter(|_| !c.allowed_paths.is_empty() && !c.wasi) {
            warnings.push(Warning {
                key,
                message: "the folders are offered through WASI, which needs wasi: true: allowedPaths has no effect"
                    .into(),
            });
        }
        c.source = match (source, compiler_source, raw_source) {
            (Some(s), _, _) => s,
            (None, Some((path, vcx)), _) => {
                wasmo(&vcx, path, &Value::Object(Default::default())).map_err(|m| vcx.fail(m))?
            }
            (None, None, Some((raw, vcx))) => legacy_raw_source(&vcx, &raw).map_err(|m| vcx.fail(m))?,
            (None, None, None) => {
                return Err(cx.key("source").fail("the plugin has no source (config.source is required)"))
            }
        };
        Ok((c, warnings))
    }
}

/// `raw_source` of old exports: a URL-like string (`http://`, `file://`, `base64://`,
/// `entity://`, `local://`), else base64.
fn legacy_raw_source(cx: &Cx, raw: &str) -> Result<Source, String> {
    let empty = Value::Object(Default::default());
    if raw.starts_with("http://") || raw.starts_with("https://") {
        http(cx, raw.to_owned(), &empty)
    } else if let Some(path) = raw.strip_prefix("file://") {
        file(cx, path)
    } else if let Some(id) = raw.strip_prefix("entity://").or_else(|| raw.strip_prefix("local://")) {
        Ok(Source::Local(id.to_owned()))
    } else {
        base64(raw)
    }
}

const SOURCE_KEYS: &[&[&str]] = &[&["kind"], &["path"], &["opts"]];

struct SourceNode;

impl<'de> Node<'de> for SourceNode {
    type Out = Source;

    fn expected(&self) -> &'static str {
        "a source map (kind, path, opts)"
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx, mut map: A) -> Result<Source, A::Error> {
        let (mut kind, mut path, mut opts) = (None, None, Value::Object(Default::default()));
        read_map(cx, &mut map, SOURCE_KEYS, |key, vcx, map| {
            match key {
                "kind" => kind = Some(map.next_value_seed(vcx.at(SourceKind))?),
                "path" => path = Some(map.next_value_seed(vcx.at(Text))?),
                _ => opts = map.next_value_seed(vcx.at(Any))?,
            }
            Ok(())
        })?;
        let kind = kind.ok_or_else(|| cx.key("kind").fail("the source has no kind"))?;
        let path = path.unwrap_or_default();
        if path.trim().is_empty() {
            return Err(cx.key("path").fail(format!("a {kind} source needs a path")));
        }
        let opts_cx = cx.key("opts");
        if !opts.is_object() && !opts.is_null() {
            return Err(opts_cx.fail(wrong_type("a map", &opts)));
        }
        let built = match kind {
            "file" => no_opts(&opts_cx, &opts).and_then(|()| file(cx, &path)),
            "base64" => no_opts(&opts_cx, &opts).and_then(|()| base64(&path)),
            "local" => no_opts(&opts_cx, &opts).map(|()| Source::Local(path.clone())),
            "http" => http(&opts_cx, path.clone(), &opts),
            _ => wasmo(&opts_cx, path.clone(), &opts),
        };
        built.map_err(|m| match m.strip_prefix('\u{1}').and_then(|m| m.split_once('\u{1}')) {
            Some((key, message)) => opts_cx.key(key).fail(message),
            None => cx.key("path").fail(m),
        })
    }
}

/// `kind`, case-insensitive as Otoroshi's `WasmSourceKind.apply` (`wasmmanager` = `wasmo`).
struct SourceKind;

impl Node<'_> for SourceKind {
    type Out = &'static str;
    fn expected(&self) -> &'static str {
        "a source kind (file, base64, http, wasmo, local)"
    }
    fn scalar(self, _cx: &Cx, value: Value) -> Result<&'static str, String> {
        let Value::String(kind) = &value else { return Err(wrong_type(self.expected(), &value)) };
        match kind.to_lowercase().as_str() {
            "file" => Ok("file"),
            "base64" => Ok("base64"),
            "http" => Ok("http"),
            "wasmo" | "wasmmanager" => Ok("wasmo"),
            "local" => Ok("local"),
            "classpath" => Err("a ClassPath source is a resource of Otoroshi's own jar; use a file source here".into()),
            _ => Err(format!("unknown source kind {kind:?}; expected one of File, Base64, Http, Wasmo, Local")),
        }
    }
}

/// A message about `opts.<key>`, which [`SourceNode`] reports under that key: the helpers below
/// only see the option values, not their positions, so they mark their messages this way and
/// `SourceNode` turns the mark into the key path (it never reaches an operator).
fn opts_error(key: &str, message: impl std::fmt::Display) -> String {
    format!("\u{1}{key}\u{1}{message}")
}

fn no_opts(_cx: &Cx, opts: &Value) -> Result<(), String> {
    match opts.as_object().and_then(|o| o.keys().next()) {
        Some(key) => Err(opts_error(key, "unknown option for this source kind; expected none")),
        None => Ok(()),
    }
}

fn file(cx: &Cx, path: &str) -> Result<Source, String> {
    let path = path.strip_prefix("file://").unwrap_or(path);
    let full = std::path::absolute(cx.base_dir.join(path)).unwrap_or_else(|_| Path::new(path).to_path_buf());
    match std::fs::metadata(&full) {
        Ok(m) if m.is_file() => Ok(Source::File(full)),
        Ok(_) => Err(format!("\"{}\" is not a regular file", full.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("file \"{}\" not found", full.display())),
        Err(e) => Err(format!("cannot read file \"{}\": {e}", full.display())),
    }
}

fn base64(text: &str) -> Result<Source, String> {
    let text = text.strip_prefix("base64://").unwrap_or(text);
    let bytes = crate::extism::body::decode_base64(text).map_err(|e| format!("the module is {e}"))?;
    if bytes.is_empty() {
        return Err("the base64 module is empty".into());
    }
    Ok(Source::Base64(bytes))
}

fn opt_u64(opts: &Value, key: &str, default: u64) -> Result<u64, String> {
    match opts.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|n| *n > 0)
            .ok_or_else(|| opts_error(key, wrong_type("a positive number of milliseconds", v))),
    }
}

fn opt_bool(opts: &Value, key: &str, default: bool) -> Result<bool, String> {
    match opts.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_bool().ok_or_else(|| opts_error(key, wrong_type("a boolean", v))),
    }
}

fn opt_sha256(opts: &Value) -> Result<Option<[u8; 32]>, String> {
    let Some(v) = opts.get("sha256").filter(|v| !v.is_null()) else { return Ok(None) };
    let text = v.as_str().unwrap_or_default();
    let digits = text.as_bytes();
    if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(opts_error("sha256", wrong_type("a SHA-256 as 64 hexadecimal digits", v)));
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(digits.chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("00"), 16).unwrap_or(0);
    }
    Ok(Some(hash))
}

fn check_keys(opts: &Value, known: &[&str]) -> Result<(), String> {
    if let Some(key) = opts.as_object().and_then(|o| o.keys().find(|k| !known.contains(&k.as_str()))) {
        return Err(opts_error(key, format!("unknown option; expected one of {}", known.join(", "))));
    }
    Ok(())
}

const HTTP_OPTS: &[&str] = &["method", "headers", "timeout", "followRedirect", "proxy", "tls", "sha256"];

fn http(_cx: &Cx, url: String, opts: &Value) -> Result<Source, String> {
    check_keys(opts, HTTP_OPTS)?;
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(format!("{url:?}: only http:// can be downloaded here (this host's HTTP client has no TLS); serve the module over http:// with opts.sha256 set, or use a file source"));
    }
    if !lower.starts_with("http://") {
        return Err(format!("{url:?} is not an http:// URL"));
    }
    crate::extism::http::Url::parse(&url).map_err(|e| e.to_string())?;
    let headers = match opts.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), s.to_owned()))
                    .ok_or_else(|| opts_error(&format!("headers.{k}"), wrong_type("a string", v)))
            })
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(opts_error("headers", wrong_type("a map of strings", v))),
    };
    let method = match opts.get("method") {
        None | Some(Value::Null) => "GET".to_owned(),
        Some(Value::String(m)) if !m.is_empty() => m.to_ascii_uppercase(),
        Some(v) => return Err(opts_error("method", wrong_type("an HTTP method", v))),
    };
    Ok(Source::Http {
        url,
        method,
        headers,
        timeout: Duration::from_millis(opt_u64(opts, "timeout", 10_000)?),
        follow_redirects: opt_bool(opts, "followRedirect", true)?,
        sha256: opt_sha256(opts)?,
    })
}

const WASMO_OPTS: &[&str] = &["follow_redirect", "timeout", "sha256"];

fn wasmo(_cx: &Cx, path: String, opts: &Value) -> Result<Source, String> {
    check_keys(opts, WASMO_OPTS)?;
    Ok(Source::Wasmo {
        path,
        timeout: Duration::from_millis(opt_u64(opts, "timeout", 5_000)?),
        follow_redirects: opt_bool(opts, "follow_redirect", true)?,
        sha256: opt_sha256(opts)?,
    })
}

const AUTHORIZATION_KEYS: &[&[&str]] = &[
    &["httpAccess", "http_access"],
    &["proxyHttpCallTimeout", "proxy_http_call_timeout"],
    &["globalDataStoreAccess", "global_data_store_access"],
    &["pluginDataStoreAccess", "plugin_data_store_access"],
    &["globalMapAccess", "global_map_access"],
    &["pluginMapAccess", "plugin_map_access"],
    &["proxyStateAccess", "proxy_state_access"],
    &["configurationAccess", "configuration_access"],
];

struct AuthorizationsNode;

impl<'de> Node<'de> for AuthorizationsNode {
    type Out = Authorizations;

    fn expected(&self) -> &'static str {
        "a map of authorizations"
    }

    fn scalar(self, _cx: &Cx, value: Value) -> Result<Authorizations, String> {
        match value {
            Value::Null => Ok(Authorizations::default()),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx, mut map: A) -> Result<Authorizations, A::Error> {
        let mut a = Authorizations::default();
        read_map(cx, &mut map, AUTHORIZATION_KEYS, |key, vcx, map| {
            let flag = |map: &mut A, vcx: Cx| map.next_value_seed(vcx.at(Flag)).map(|f| f.unwrap_or(false));
            match key {
                "httpAccess" => a.http_access = flag(map, vcx)?,
                "proxyHttpCallTimeout" => {
                    a.proxy_http_call_timeout_ms = map
                        .next_value_seed(vcx.at(Int {
                            min: 1,
                            max: i64::from(i32::MAX),
                            expected: "a number of milliseconds greater than 0",
                        }))?
                        .map_or(Authorizations::DEFAULT_PROXY_HTTP_CALL_TIMEOUT_MS, |n| n as u64);
                }
                "globalDataStoreAccess" => a.global_data_store_access = map.next_value_seed(vcx.at(RightsNode))?,
                "pluginDataStoreAccess" => a.plugin_data_store_access = map.next_value_seed(vcx.at(RightsNode))?,
                "globalMapAccess" => a.global_map_access = map.next_value_seed(vcx.at(RightsNode))?,
                "pluginMapAccess" => a.plugin_map_access = map.next_value_seed(vcx.at(RightsNode))?,
                "proxyStateAccess" => a.proxy_state_access = flag(map, vcx)?,
                _ => a.configuration_access = flag(map, vcx)?,
            }
            Ok(())
        })?;
        Ok(a)
    }
}

struct RightsNode;

impl<'de> Node<'de> for RightsNode {
    type Out = DataRights;

    fn expected(&self) -> &'static str {
        "a map {read, write}"
    }

    fn scalar(self, _cx: &Cx, value: Value) -> Result<DataRights, String> {
        match value {
            Value::Null => Ok(DataRights::default()),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx, mut map: A) -> Result<DataRights, A::Error> {
        let mut r = DataRights::default();
        read_map(cx, &mut map, &[&["read"], &["write"]], |key, vcx, map| {
            let v = map.next_value_seed(vcx.at(Flag))?.unwrap_or(false);
            if key == "read" {
                r.read = v;
            } else {
                r.write = v;
            }
            Ok(())
        })?;
        Ok(r)
    }
}

const KILL_KEYS: &[&[&str]] = &[
    &["immortal"],
    &["max_calls", "maxCalls"],
    &["max_memory_usage", "maxMemoryUsage"],
    &["max_avg_call_duration", "maxAvgCallDuration"],
    &["max_unused_duration", "maxUnusedDuration"],
];

struct KillOptionsNode;

impl<'de> Node<'de> for KillOptionsNode {
    type Out = KillOptions;

    fn expected(&self) -> &'static str {
        "a map of kill options"
    }

    fn scalar(self, _cx: &Cx, value: Value) -> Result<KillOptions, String> {
        match value {
            Value::Null => Ok(KillOptions::default()),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx, mut map: A) -> Result<KillOptions, A::Error> {
        let mut k = KillOptions::default();
        let ms = |n: Option<i64>, default: Duration| n.map_or(default, |n| Duration::from_millis(n as u64));
        read_map(cx, &mut map, KILL_KEYS, |key, vcx, map| {
            let millis = Int { min: 0, max: i64::MAX, expected: "a number of milliseconds (0 = off)" };
            match key {
                "immortal" => k.immortal = map.next_value_seed(vcx.at(Flag))?.unwrap_or(false),
                "max_calls" => {
                    k.max_calls = map
                        .next_value_seed(vcx.at(Int {
                            min: 1,
                            max: i64::MAX,
                            expected: "a number of calls greater than 0",
                        }))?
                        .map_or(i32::MAX as u64, |n| n as u64)
                }
                "max_memory_usage" => {
                    k.max_memory_usage = map
                        .next_value_seed(vcx.at(Float {
                            min: 0.0,
                            max: 1.0,
                            expected: "a fraction from 0 (off) to 1",
                        }))?
                        .unwrap_or(0.0)
                }
                "max_avg_call_duration" => {
                    k.max_avg_call_duration = ms(map.next_value_seed(vcx.at(millis))?, Duration::ZERO)
                }
                _ => k.max_unused_duration = ms(map.next_value_seed(vcx.at(millis))?, Duration::from_secs(300)),
            }
            Ok(())
        })?;
        Ok(k)
    }
}
