//! Files that hold entities, and how they sit beside Proxy-Wasm plugins.
//!
//! An exported entity loads **unchanged**: a file given to `plugin.config`, `remap.config` or
//! `proxy_wasm_config` may be, in JSON or in the same in YAML,
//!
//! * one entity, as `GET /apis/plugins.otoroshi.io/v1/wasm-plugins/<id>` answers it (with or
//!   without the `kind` the admin API adds) — [`Layout::Entity`];
//! * a list of entities, as the list endpoint answers — [`Layout::List`];
//! * the Kubernetes form (`apiVersion`, `kind: WasmPlugin`, `metadata`, `spec`), one or a list —
//!   [`Layout::Kubernetes`];
//! * or our own YAML file with a top-level `wasm_plugins:` list of entities (exported text pasted
//!   as it is), optionally `otoroshi:` settings, and the Proxy-Wasm `plugins:` list of `src/config`
//!   in the same file — [`Layout::WasmPluginsKey`].
//!
//! [`sniff`] tells these from a Proxy-Wasm file (whose top level is `config:`, `plugins:` or a list
//! of `config:` entries), so the loader reads each file with the right parser. Entities are known
//! by their `id` in chains (`proxy_wasm <id>;`).

use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::reader::{decode_json, decode_yaml, invalid, read_map, wrong_type, Cx, Flag, Node, NonEmpty, Text};
use super::sections::EntityNode;
use super::{Entity, Source, WasmConfig};
use crate::config::ConfigError;

/// How a file holds its entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Entity,
    List,
    Kubernetes,
    KubernetesList,
    WasmPluginsKey,
}

/// Our settings for Otoroshi plugins (`otoroshi:` in our YAML).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Otoroshi's `storageRoot`: the data store's key prefix (default `otoroshi`).
    pub storage_root: String,
    /// Where `wasmo` sources come from.
    pub wasmo: Option<WasmoSettings>,
    /// `callback_timeout`: the longest one call into a plugin may run (entities have no such
    /// setting; Otoroshi waits 10 s for a route matcher or a sink). Default 10 s.
    pub callback_timeout: std::time::Duration,
    /// `runtime`: the engine the entities run on (`wasmtime` or `wamr`); when absent, the runtime
    /// of the load's first Proxy-Wasm plugin, else Wasmtime.
    pub runtime: Option<crate::config::RuntimeKind>,
    /// `jobs`: the entities run as Otoroshi jobs (step Job), with their schedule (Otoroshi keeps
    /// it in its global configuration, not in the entity).
    pub jobs: Vec<JobSettings>,
}

/// One job (`otoroshi.jobs[i]`): `job_start` once the server runs the plugins, then `job_run`
/// every `interval` (the first after `initial_delay`), `job_stop` when they stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSettings {
    /// `plugin`: the id of an entity of the load that lists the step Job.
    pub plugin: String,
    /// `interval` (required): the time between two `job_run`s.
    pub interval: std::time::Duration,
    /// `initial_delay` (default none): the time before the first `job_run`.
    pub initial_delay: std::time::Duration,
    /// `instantiation: one` (Otoroshi's `OneInstancePerOtoroshiCluster` also reads so): one
    /// NGINX worker at a time runs the job, not every worker (`per_worker`, the default, also
    /// read from `OneInstancePerOtoroshiInstance`). Traffic Server runs a job once per process
    /// either way.
    pub one_worker: bool,
    /// The key path (`otoroshi.jobs[0]`), for messages.
    pub path: String,
    /// The line of its `plugin` in the settings' file (0 when unknown), for messages.
    pub line: usize,
}

impl Settings {
    pub const DEFAULT_CALLBACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            storage_root: "otoroshi".into(),
            wasmo: None,
            callback_timeout: Self::DEFAULT_CALLBACK_TIMEOUT,
            runtime: None,
            jobs: Vec::new(),
        }
    }
}

/// Otoroshi's Wasmo settings (`WasmoSettings`), with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmoSettings {
    /// `url`: `http://host:port` of the Wasmo server.
    pub url: String,
    pub client_id: String,
    pub client_secret: String,
    /// `plugins_filter`: sent as the `kind` header (default `*`).
    pub plugins_filter: String,
    /// `legacy_auth`: an `Otoroshi-User` JWT (HS512 signed with the client id) instead of Basic.
    pub legacy_auth: bool,
}

/// The entities of one file.
#[derive(Debug, Clone)]
pub struct Document {
    pub layout: Layout,
    pub entities: Vec<Entity>,
    /// The file's `otoroshi:` settings, when it has some.
    pub settings: Option<Settings>,
}

fn is_json(text: &str) -> bool {
    matches!(text.trim_start_matches('\u{feff}').trim_start().chars().next(), Some('{' | '['))
}

/// The file's text as a plain value, to look at its shape.
fn shape(text: &str, file: &Path) -> Result<Value, ConfigError> {
    if is_json(text) {
        serde_json::from_str(text.trim_start_matches('\u{feff}')).map_err(|e| decode_json(&e, file))
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| decode_yaml(&e, file))
    }
}

fn layout_of(value: &Value) -> Option<Layout> {
    let is_entity = |v: &Value| {
        v.get("id").is_some() || v.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("WasmPlugin"))
    };
    let is_k8s = |v: &Value| v.get("apiVersion").is_some() && v.get("spec").is_some();
    match value {
        Value::Object(map) if map.contains_key("wasm_plugins") || map.contains_key("otoroshi") => {
            Some(Layout::WasmPluginsKey)
        }
        v @ Value::Object(_) if is_k8s(v) => Some(Layout::Kubernetes),
        v @ Value::Object(_) if is_entity(v) => Some(Layout::Entity),
        Value::Array(items) => match items.first() {
            Some(first) if is_k8s(first) => Some(Layout::KubernetesList),
            Some(first) if is_entity(first) => Some(Layout::List),
            _ => None,
        },
        _ => None,
    }
}

/// Whether `text` holds Otoroshi entities, and how; `None` for anything else (a Proxy-Wasm
/// file, or text that does not parse: the Proxy-Wasm loader then reports it).
#[must_use]
pub fn sniff(text: &str) -> Option<Layout> {
    // Only the top-level keys (or the first item's) matter: read them with `IgnoredAny` for every
    // value, so nothing is built and an alias bomb is walked under the parser's own repetition
    // limit instead of being expanded into memory (tests/fuzz/config.rs, the "billion laughs").
    let top: Top = if is_json(text) {
        serde_json::from_str(text.trim_start_matches('\u{feff}')).ok()?
    } else {
        serde_yaml_ng::from_str(text).ok()?
    };
    let is_entity = |m: &Keys| m.id || m.wasm_kind;
    let is_k8s = |m: &Keys| m.api_version && m.spec;
    match top {
        Top::Map(m) if m.plugins_key => Some(Layout::WasmPluginsKey),
        Top::Map(m) if is_k8s(&m) => Some(Layout::Kubernetes),
        Top::Map(m) if is_entity(&m) => Some(Layout::Entity),
        Top::List(Some(first)) if is_k8s(&first) => Some(Layout::KubernetesList),
        Top::List(Some(first)) if is_entity(&first) => Some(Layout::List),
        _ => None,
    }
}

/// The top-level keys sniffing looks at (see [`layout_of`] for the same rules on a full value).
#[derive(Default)]
struct Keys {
    plugins_key: bool,
    api_version: bool,
    spec: bool,
    id: bool,
    wasm_kind: bool,
}

enum Top {
    Map(Keys),
    List(Option<Keys>),
    Other,
}

impl<'de> serde::Deserialize<'de> for Keys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(TopVisitor)? {
            Top::Map(keys) => Ok(keys),
            _ => Ok(Keys::default()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopVisitor)
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML or JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
        let mut keys = Keys::default();
        while let Some(key) = map.next_key::<KeyName>()? {
            match key.0.as_deref() {
                Some("wasm_plugins" | "otoroshi") => keys.plugins_key = true,
                Some("apiVersion") => keys.api_version = true,
                Some("spec") => keys.spec = true,
                Some("id") => keys.id = true,
                Some("kind") => {
                    keys.wasm_kind = map.next_value::<KeyName>()?.0.is_some_and(|k| k.ends_with("WasmPlugin"));
                    continue;
                }
                _ => {}
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(Top::Map(keys))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top, A::Error> {
        let first = seq.next_element::<Keys>()?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Top::List(first))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Top, E> {
        Ok(Top::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Top, E> {
        Ok(Top::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Top, E> {
        Ok(Top::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Top, E> {
        Ok(Top::Other)
    }
    fn visit_str<E>(self, _: &str) -> Result<Top, E> {
        Ok(Top::Other)
    }
    fn visit_unit<E>(self) -> Result<Top, E> {
        Ok(Top::Other)
    }
    fn visit_none<E>(self) -> Result<Top, E> {
        Ok(Top::Other)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Top, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Top, A::Error> {
        let _ = data.variant::<IgnoredAny>()?;
        Ok(Top::Other)
    }
}

/// A key (or `kind`'s value) when it is a string; anything else is walked and dropped.
struct KeyName(Option<String>);

impl<'de> serde::Deserialize<'de> for KeyName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyName;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyName, E> {
                // Only short names can match; a long key (or a repeated long alias) is not kept.
                Ok(KeyName((v.len() <= 64).then(|| v.to_owned())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<KeyName, E> {
                Ok(KeyName(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<KeyName, E> {
                Ok(KeyName(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<KeyName, E> {
                Ok(KeyName(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<KeyName, E> {
                Ok(KeyName(None))
            }
            fn visit_unit<E>(self) -> Result<KeyName, E> {
                Ok(KeyName(None))
            }
            fn visit_none<E>(self) -> Result<KeyName, E> {
                Ok(KeyName(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<KeyName, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(KeyName(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<KeyName, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(KeyName(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads a file's entities. `foreign` lists top-level keys another loader owns in the
/// [`Layout::WasmPluginsKey`] layout (`src/config` passes `["plugins"]`); they are skipped.
pub fn parse(text: &str, file: &Path, foreign: &[&str]) -> Result<Document, ConfigError> {
    let value = shape(text, file)?;
    let layout = layout_of(&value).ok_or_else(|| invalid(file, 1, "", "expected an Otoroshi WASM plugin entity (a map with an id), a list of them, or a top-level wasm_plugins: list"))?;
    let base_dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
        _ => std::path::absolute(".").unwrap_or_default(),
    };
    let cx = Cx { base_dir, path: String::new() };
    let root = Root { layout, file: file.to_path_buf(), foreign: foreign.iter().map(|s| (*s).to_owned()).collect() };
    let text = text.trim_start_matches('\u{feff}');
    let (mut entities, settings) = if is_json(text) {
        let mut de = serde_json::Deserializer::from_str(text);
        let out = cx.at(root).deserialize(&mut de).map_err(|e| decode_json(&e, file))?;
        de.end().map_err(|e| decode_json(&e, file))?;
        out
    } else {
        cx.at(root).deserialize(serde_yaml_ng::Deserializer::from_str(text)).map_err(|e| decode_yaml(&e, file))?
    };
    for (i, entity) in entities.iter_mut().enumerate() {
        entity.line = locate(text, &entry_steps(layout, i)).unwrap_or(0);
    }
    if layout != Layout::WasmPluginsKey && entities.is_empty() {
        return Err(invalid(file, 1, "", "the file holds no entity"));
    }
    Ok(Document { layout, entities, settings })
}

/// The way from the document root to entity `index`.
fn entry_steps(layout: Layout, index: usize) -> Vec<Step> {
    match layout {
        Layout::Entity => vec![],
        Layout::List => vec![Step::Index(index)],
        Layout::Kubernetes => vec![Step::Key("spec")],
        Layout::KubernetesList => vec![Step::Index(index), Step::Key("spec")],
        Layout::WasmPluginsKey => vec![Step::Key("wasm_plugins"), Step::Index(index)],
    }
}

struct Root {
    layout: Layout,
    file: PathBuf,
    foreign: Vec<String>,
}

type Out = (Vec<Entity>, Option<Settings>);

impl Root {
    fn entity(&self, path: &str) -> EntityNode {
        EntityNode { path: path.to_owned(), file: self.file.clone(), line: 0 }
    }
}

impl<'de> Node<'de> for Root {
    type Out = Out;

    fn expected(&self) -> &'static str {
        "a map or a list"
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx, mut map: A) -> Result<Out, A::Error> {
        match self.layout {
            Layout::Entity => Ok((vec![self.entity("").map(cx, map)?], None)),
            Layout::Kubernetes => Ok((vec![Kubernetes { root: &self, path: String::new() }.map(cx, map)?], None)),
            _ => {
                let mut entities = Vec::new();
                let mut settings = None;
                let foreign = &self.foreign;
                loop {
                    let key: Option<String> = map.next_key()?;
                    let Some(key) = key else { break };
                    match key.as_str() {
                        "wasm_plugins" => {
                            entities = map.next_value_seed(
                                cx.key("wasm_plugins").at(Entities { root: &self, path: "wasm_plugins".into() }),
                            )?
                        }
                        "otoroshi" => settings = Some(map.next_value_seed(cx.key("otoroshi").at(SettingsNode))?),
                        k if foreign.iter().any(|f| f == k) => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        other => {
                            let mut known = vec!["wasm_plugins", "otoroshi"];
                            known.extend(foreign.iter().map(String::as_str));
                            return Err(cx.key(other).fail(format!(
                                "unknown top-level key {other:?}; expected one of {}",
                                known.join(", ")
                            )));
                        }
                    }
                }
                Ok((entities, settings))
            }
        }
    }

    fn seq<A: SeqAccess<'de>>(self, cx: &Cx, seq: A) -> Result<Out, A::Error> {
        Ok((Entities { root: &self, path: String::new() }.seq(cx, seq)?, None))
    }
}

/// A list of entities (or of Kubernetes objects holding one).
struct Entities<'r> {
    root: &'r Root,
    path: String,
}

impl<'de> Node<'de> for Entities<'_> {
    type Out = Vec<Entity>;

    fn expected(&self) -> &'static str {
        "a list of entities"
    }

    fn scalar(self, _cx: &Cx, value: Value) -> Result<Vec<Entity>, String> {
        match value {
            Value::Null => Ok(Vec::new()),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }

    fn seq<A: SeqAccess<'de>>(self, cx: &Cx, mut seq: A) -> Result<Vec<Entity>, A::Error> {
        let mut out: Vec<Entity> = Vec::new();
        loop {
            let i = out.len();
            let path = format!("{}[{i}]", self.path);
            let item = if self.root.layout == Layout::KubernetesList {
                seq.next_element_seed(cx.index(i).at(Kubernetes { root: self.root, path }))?
            } else {
                seq.next_element_seed(cx.index(i).at(self.root.entity(&path)))?
            };
            let Some(entity) = item else { break };
            out.push(entity);
        }
        Ok(out)
    }
}

/// `{apiVersion, kind: WasmPlugin, metadata, spec: <entity>}`.
struct Kubernetes<'r> {
    root: &'r Root,
    path: String,
}

impl<'de> Node<'de> for Kubernetes<'_> {
    type Out = Entity;

    fn expected(&self) -> &'static str {
        "a Kubernetes WasmPlugin object (apiVersion, kind, metadata, spec)"
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx, mut map: A) -> Result<Entity, A::Error> {
        let mut entity = None;
        let spec_path = if self.path.is_empty() { "spec".to_owned() } else { format!("{}.spec", self.path) };
        read_map(cx, &mut map, &[&["apiVersion"], &["kind"], &["metadata"], &["spec"]], |key, vcx, map| {
            match key {
                "kind" => {
                    let kind = map.next_value_seed(vcx.clone().at(Text))?;
                    if kind != "WasmPlugin" {
                        return Err(vcx.fail(format!("expected \"WasmPlugin\", found {kind:?}")));
                    }
                }
                "spec" => entity = Some(map.next_value_seed(vcx.at(self.root.entity(&spec_path)))?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(())
        })?;
        entity.ok_or_else(|| cx.key("spec").fail("the object has no spec"))
    }
}

const SETTINGS_KEYS: &[&[&str]] =
    &[&["storage_root", "storageRoot"], &["wasmo"], &["callback_timeout", "callbackTimeout"], &["runtime"], &["jobs"]];

struct SettingsNode;

impl<'de> Node<'de> for SettingsNode {
    type Out = Settings;

    fn expected(&self) -> &'static str {
        "a map of settings (storage_root, wasmo, callback_timeout, runtime, jobs)"
    }

    fn scalar(self, _cx: &Cx, value: Value) -> Result<Settings, String> {
        match value {
            Value::Null => Ok(Settings::default()),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx, mut map: A) -> Result<Settings, A::Error> {
        let mut s = Settings::default();
        read_map(cx, &mut map, SETTINGS_KEYS, |key, vcx, map| {
            match key {
                "storage_root" => s.storage_root = map.next_value_seed(vcx.at(NonEmpty))?,
                "callback_timeout" => s.callback_timeout = map.next_value_seed(vcx.at(DurationNode))?,
                "runtime" => {
                    let name = map.next_value_seed(vcx.clone().at(Text))?;
                    let Some(kind) = crate::config::RuntimeKind::from_name(&name) else {
                        let names = crate::config::RuntimeKind::ACCEPTED_NAMES.join(", ");
                        return Err(vcx.fail(format!("expected one of {names}, found {name:?}")));
                    };
                    s.runtime = Some(kind);
                }
                "jobs" => s.jobs = map.next_value_seed(vcx.at(JobsNode))?,
                _ => s.wasmo = Some(map.next_value_seed(vcx.at(WasmoNode))?),
            }
            Ok(())
        })?;
        Ok(s)
    }
}

/// `otoroshi.jobs`: a list of `{plugin, interval, initial_delay}`.
struct JobsNode;

impl<'de> Node<'de> for JobsNode {
    type Out = Vec<JobSettings>;

    fn expected(&self) -> &'static str {
        "a list of jobs ({plugin, interval, initial_delay})"
    }

    fn scalar(self, _cx: &Cx, value: Value) -> Result<Vec<JobSettings>, String> {
        match value {
            Value::Null => Ok(Vec::new()),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }

    fn seq<A: SeqAccess<'de>>(self, cx: &Cx, mut seq: A) -> Result<Vec<JobSettings>, A::Error> {
        let mut jobs: Vec<JobSettings> = Vec::new();
        while let Some(job) = seq.next_element_seed(cx.index(jobs.len()).at(JobNode))? {
            jobs.push(job);
        }
        Ok(jobs)
    }
}

const JOB_KEYS: &[&[&str]] = &[&["plugin"], &["interval"], &["initial_delay", "initialDelay"], &["instantiation"]];

struct JobNode;

impl<'de> Node<'de> for JobNode {
    type Out = JobSettings;

    fn expected(&self) -> &'static str {
        "a job: a map of plugin, interval, initial_delay, instantiation"
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx, mut map: A) -> Result<JobSettings, A::Error> {
        let (mut plugin, mut interval, mut initial_delay) = (None, None, std::time::Duration::ZERO);
        let mut one_worker = false;
        read_map(cx, &mut map, JOB_KEYS, |key, vcx, map| {
            match key {
                "plugin" => plugin = Some(map.next_value_seed(vcx.at(NonEmpty))?),
                "interval" => interval = Some(map.next_value_seed(vcx.at(DurationNode))?),
                "instantiation" => {
                    let text: String = map.next_value_seed(vcx.clone().at(NonEmpty))?;
                    one_worker = match text.as_str() {
                        "one" | "OneInstancePerOtoroshiCluster" => true,
                        "per_worker" | "OneInstancePerOtoroshiInstance" => false,
                        other => {
                            return Err(vcx.fail(format!(
                                "unknown instantiation {other:?}; expected \"per_worker\" (every NGINX worker runs the job) or \"one\" (one worker at a time)"
                            )))
                        }
                    };
                }
                _ => initial_delay = map.next_value_seed(vcx.at(DurationNode))?,
            }
            Ok(())
        })?;
        let plugin = plugin.ok_or_else(|| cx.fail("the job has no plugin (the id of an entity listing Job)"))?;
        let interval = interval.ok_or_else(|| cx.fail("the job has no interval (e.g. \"10s\")"))?;
        Ok(JobSettings { plugin, interval, initial_delay, one_worker, path: cx.path.clone(), line: 0 })
    }
}

/// A duration: `"100ms"`, `"1.5s"`, or a number of milliseconds; more than 0, at most a day.
struct DurationNode;

impl Node<'_> for DurationNode {
    type Out = std::time::Duration;

    fn expected(&self) -> &'static str {
        "a duration like \"100ms\" or \"1.5s\" (or a number of milliseconds), more than 0 and at most a day"
    }

    fn scalar(self, _cx: &Cx, value: Value) -> Result<std::time::Duration, String> {
        let ms = match &value {
            Value::Number(n) => n.as_f64(),
            Value::String(t) => {
                let t = t.trim();
                let (number, scale) = match t.strip_suffix("ms") {
                    Some(n) => (n, 1.0),
                    None => (t.strip_suffix('s').unwrap_or("x"), 1000.0),
                };
                number
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|_| number.trim().bytes().all(|b| b.is_ascii_digit() || b == b'.'))
                    .map(|n| n * scale)
            }
            _ => None,
        };
        match ms {
            Some(ms) if ms > 0.0 && ms <= 86_400_000.0 => Ok(std::time::Duration::from_secs_f64(ms / 1000.0)),
            _ => Err(wrong_type(self.expected(), &value)),
        }
    }
}

const WASMO_KEYS: &[&[&str]] = &[
    &["url"],
    &["client_id", "clientId"],
    &["client_secret", "clientSecret"],
    &["plugins_filter", "pluginsFilter"],
    &["legacy_auth", "legacyAuth"],
];

struct WasmoNode;

impl<'de> Node<'de> for WasmoNode {
    type Out = WasmoSettings;

    fn expected(&self) -> &'static str {
        "a map of Wasmo settings (url, client_id, client_secret, plugins_filter, legacy_auth)"
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx, mut map: A) -> Result<WasmoSettings, A::Error> {
        let mut url = None;
        let mut w = WasmoSettings {
            url: String::new(),
            client_id: "admin-api-apikey-id".into(),
            client_secret: "admin-api-apikey-secret".into(),
            plugins_filter: "*".into(),
            legacy_auth: false,
        };
        read_map(cx, &mut map, WASMO_KEYS, |key, vcx, map| {
            match key {
                "url" => {
                    let u = map.next_value_seed(vcx.clone().at(NonEmpty))?;
                    if !u.to_ascii_lowercase().starts_with("http://") || crate::extism::http::Url::parse(&u).is_err() {
                        return Err(vcx.fail(format!(
                            "expected an http:// URL (this host's HTTP client has no TLS), found {u:?}"
                        )));
                    }
                    url = Some(u.trim_end_matches('/').to_owned());
                }
                "client_id" => w.client_id = map.next_value_seed(vcx.at(Text))?,
                "client_secret" => w.client_secret = map.next_value_seed(vcx.at(Text))?,
                "plugins_filter" => w.plugins_filter = map.next_value_seed(vcx.at(NonEmpty))?,
                _ => w.legacy_auth = map.next_value_seed(vcx.at(Flag))?.unwrap_or(false),
            }
            Ok(())
        })?;
        w.url = url.ok_or_else(|| cx.key("url").fail("the Wasmo settings have no url"))?;
        Ok(w)
    }
}

/// One step from the root towards a node, for [`locate`].
#[derive(Debug, Clone, Copy)]
enum Step {
    Key(&'static str),
    Index(usize),
}

const FOUND: &str = "\0found";

/// The 1-based line where the node at `steps` starts: for YAML the parser reports where it was
/// made to fail on purpose; for JSON (whose parser reports positions only roughly) the text is
/// scanned.
fn locate(text: &str, steps: &[Step]) -> Option<usize> {
    if is_json(text) {
        let offset = json_offset(text.as_bytes(), steps)?;
        return Some(text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1);
    }
    let e = Probe { steps }.deserialize(serde_yaml_ng::Deserializer::from_str(text)).err()?;
    if e.to_string().contains(FOUND) {
        e.location().map(|l| l.line())
    } else {
        None
    }
}

/// The byte offset of the value at `steps` in valid JSON text.
fn json_offset(text: &[u8], steps: &[Step]) -> Option<usize> {
    let skip_ws = |mut i: usize| {
        while text.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    // The end of the value starting at `i`.
    fn value_end(text: &[u8], mut i: usize) -> Option<usize> {
        match *text.get(i)? {
            b'"' => {
                i += 1;
                loop {
                    match *text.get(i)? {
                        b'\\' => i += 2,
                        b'"' => return Some(i + 1),
                        _ => i += 1,
                    }
                }
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *text.get(i)? {
                        b'"' => {
                            i = value_end(text, i)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(i + 1);
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            _ => {
                while text.get(i).is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace()) {
                    i += 1;
                }
                Some(i)
            }
        }
    }
    let mut at = skip_ws(0);
    for step in steps {
        match (step, *text.get(at)?) {
            (Step::Index(n), b'[') => {
                at = skip_ws(at + 1);
                for _ in 0..*n {
                    at = skip_ws(value_end(text, at)?);
                    if text.get(at) != Some(&b',') {
                        return None;
                    }
                    at = skip_ws(at + 1);
                }
            }
            (Step::Key(want), b'{') => {
                at = skip_ws(at + 1);
                loop {
                    let key_end = value_end(text, at)?;
                    let key = serde_json::from_slice::<String>(&text[at..key_end]).ok()?;
                    at = skip_ws(key_end);
                    if text.get(at) != Some(&b':') {
                        return None;
                    }
                    at = skip_ws(at + 1);
                    if key == *want {
                        break;
                    }
                    at = skip_ws(value_end(text, at)?);
                    if text.get(at) != Some(&b',') {
                        return None;
                    }
                    at = skip_ws(at + 1);
                }
            }
            _ => return None,
        }
    }
    Some(at)
}

struct Probe<'s> {
    steps: &'s [Step],
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("anything")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        match self.steps.split_first() {
            None => Err(de::Error::custom(FOUND)),
            Some((Step::Key(want), rest)) => {
                while let Some(key) = map.next_key::<String>()? {
                    if key == *want {
                        return map.next_value_seed(Probe { steps: rest });
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(())
            }
            Some((Step::Index(_), _)) => {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(())
            }
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        match self.steps.split_first() {
            None => Err(de::Error::custom(FOUND)),
            Some((Step::Index(want), rest)) => {
                for _ in 0..*want {
                    if seq.next_element::<IgnoredAny>()?.is_none() {
                        return Ok(());
                    }
                }
                seq.next_element_seed(Probe { steps: rest }).map(|_| ())
            }
            Some(_) => {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(())
            }
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
}

/// An entity ready to load: its own id and steps, and the settings and module source it runs
/// with once `local` references are followed.
#[derive(Debug, Clone)]
pub struct Resolved<'e> {
    pub entity: &'e Entity,
    /// The entity whose module and settings are used (itself unless its source is `local`).
    pub target: &'e Entity,
    /// `functionName` of the entity, else of the target (Otoroshi's
    /// `config.functionName.orElse(localConfig.functionName)`).
    pub function_name: Option<&'e str>,
}

impl Resolved<'_> {
    /// The settings the plugin runs with (Otoroshi runs a `local` reference with the referenced
    /// entity's whole configuration).
    #[must_use]
    pub fn config(&self) -> &WasmConfig {
        &self.target.config
    }
}

/// Checks ids are unique across one load and follows `local` sources (at most 16 hops, no cycles).
pub fn resolve(entities: &[Entity]) -> Result<Vec<Resolved<'_>>, ConfigError> {
    for (i, e) in entities.iter().enumerate() {
        if let Some(first) = entities[..i].iter().find(|f| f.id == e.id) {
            return Err(invalid(
                &e.file,
                e.line,
                &key(e, "id"),
                format!("duplicate entity id {:?}; already defined at {}:{}", e.id, first.file.display(), first.line),
            ));
        }
    }
    entities
        .iter()
        .map(|e| {
            let mut target = e;
            let mut seen = vec![e.id.as_str()];
            while let Source::Local(id) = &target.config.source {
                let next = entities.iter().find(|t| t.id == *id).ok_or_else(|| {
                    invalid(
                        &target.file,
                        target.line,
                        &key(target, "config.source.path"),
                        format!("no entity with id {id:?} in this configuration"),
                    )
                })?;
                if seen.contains(&next.id.as_str()) || seen.len() > 16 {
                    return Err(invalid(
                        &e.file,
                        e.line,
                        &key(e, "config.source.path"),
                        format!("local sources form a cycle: {} -> {}", seen.join(" -> "), next.id),
                    ));
                }
                seen.push(&next.id);
                target = next;
            }
            Ok(Resolved {
                entity: e,
                target,
                function_name: e.config.function_name.as_deref().or(target.config.function_name.as_deref()),
            })
        })
        .collect()
}

fn key(e: &Entity, k: &str) -> String {
    if e.path.is_empty() {
        k.to_owned()
    } else {
        format!("{}.{k}", e.path)
    }
}

/// The request that fetches a `wasmo` source: `GET <url>/wasm/<path>` with Otoroshi's headers.
pub fn wasmo_request(
    settings: &WasmoSettings,
    path: &str,
    timeout: std::time::Duration,
    max_size: u64,
) -> crate::extism::http::OutgoingRequest {
    use crate::extism::body::encode_base64;
    let auth = if settings.legacy_auth {
        ("Otoroshi-User".to_owned(), legacy_jwt(&settings.client_id))
    } else {
        (
            "Authorization".to_owned(),
            format!("Basic {}", encode_base64(format!("{}:{}", settings.client_id, settings.client_secret).as_bytes())),
        )
    };
    crate::extism::http::OutgoingRequest {
        method: "GET".into(),
        url: format!("{}/wasm/{path}", settings.url),
        headers: vec![
            ("Accept".into(), "application/json".into()),
            auth,
            ("kind".into(), settings.plugins_filter.clone()),
        ],
        body: None,
        timeout,
        follow_redirects: true,
        max_response_size: max_size,
    }
}

/// wasm4s `ApikeyHelper.generateJwt`: `{"typ":"JWT","alg":"HS512"}.{"iss":"otoroshi"}` signed
/// with HMAC-SHA512 keyed by the client id, base64url without padding.
fn legacy_jwt(secret: &str) -> String {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let signing_input = format!("{}.{}", b64(br#"{"typ":"JWT","alg":"HS512"}"#), b64(br#"{"iss":"otoroshi"}"#));
    format!("{signing_input}.{}", b64(&hmac_sha512(secret.as_bytes(), signing_input.as_bytes())))
}

/// HMAC (RFC 2104) over SHA-512, whose block is 128 bytes.
fn hmac_sha512(key: &[u8], data: &[u8]) -> [u8; 64] {
    use sha2::{Digest, Sha512};
    let mut k = if key.len() > 128 { Sha512::digest(key).to_vec() } else { key.to_vec() };
    k.resize(128, 0);
    let pad = |byte: u8| k.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha512::new().chain_update(pad(0x36)).chain_update(data).finalize();
    Sha512::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

#[cfg(test)]
mod tests;
