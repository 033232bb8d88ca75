//! The pieces the schema is built from: a [`Node`] turns one YAML node into a Rust value, and
//! [`At`] runs it as a `serde` visitor so that its complaints carry the node's position.
//!
//! Every node is read with `deserialize_any`, so a value of the wrong type reaches our code (as a
//! [`Value`]) instead of `serde`'s generic "invalid type" message, and we can say which key it was.

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde_yaml_ng::Value;

use super::error::{encode, os_reason};
use super::{CodeSource, FailurePolicy, RuntimeKind};

/// Where the node being read is: the file it comes from and its key path.
#[derive(Clone)]
pub(super) struct Cx<'c> {
    pub file: &'c Path,
    /// Relative code file names are resolved against this (absolute) folder.
    pub base_dir: &'c Path,
    /// Dotted key path with canonical names; empty at the document root.
    pub path: String,
    /// What the whole file may still make the loader build.
    pub budget: &'c Budget,
}

/// What one file may make the loader build, counting every alias (`*name`) each time it is
/// expanded: far more than any configuration holds, far less than a YAML alias bomb ("billion
/// laughs") expands to. `serde_yaml_ng` caps expansions at 100 per node of the document, which a
/// padded bomb of 250 KB still turns into gigabytes.
pub(super) struct Budget {
    nodes: Cell<usize>,
    bytes: Cell<usize>,
}

impl Budget {
    pub const NODES: usize = 200_000;
    pub const BYTES: usize = 64 << 20;

    pub fn new() -> Budget {
        Budget { nodes: Cell::new(Self::NODES), bytes: Cell::new(Self::BYTES) }
    }

    /// Takes one node of `bytes` text from the budget, or says why not.
    fn spend(&self, bytes: usize) -> Result<(), String> {
        let nodes = self.nodes.get().checked_sub(1);
        let left = self.bytes.get().checked_sub(bytes);
        match (nodes, left) {
            (Some(n), Some(b)) => {
                self.nodes.set(n);
                self.bytes.set(b);
                Ok(())
            }
            _ => Err(format!(
                "the file expands to more than {} YAML nodes or {} MiB of text once its aliases (`*name`) are \
                 expanded: refused as a YAML alias bomb",
                Self::NODES,
                Self::BYTES >> 20
            )),
        }
    }
}

impl<'c> Cx<'c> {
    /// The context of the value under `key`.
    pub fn key(&self, key: &str) -> Self {
        let path = if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) };
        Cx { path, ..self.clone() }
    }

    /// The context of the list item number `index`.
    pub fn index(&self, index: usize) -> Self {
        Cx { path: format!("{}[{index}]", self.path), ..self.clone() }
    }

    /// A seed that reads the next node with `node`.
    pub fn at<N>(self, node: N) -> At<'c, N> {
        At { cx: self, node }
    }

    /// An error about this node; `serde_yaml_ng` adds the position.
    pub fn fail<E: de::Error>(&self, message: impl fmt::Display) -> E {
        E::custom(encode(&self.path, message))
    }
}

/// How one kind of YAML node is read. Problems are plain messages; [`At`] adds key and position.
pub(super) trait Node<'de>: Sized {
    type Out;

    /// What the node must be, like "a string", for messages about a value of the wrong type.
    fn expected(&self) -> &'static str;

    /// Reads a scalar (null, boolean, number, string) or a tagged value.
    fn value(self, _cx: &Cx<'_>, value: Value) -> Result<Self::Out, String> {
        Err(wrong_type(self.expected(), &value))
    }

    /// Reads a map.
    fn map<A: MapAccess<'de>>(self, cx: &Cx<'_>, _map: A) -> Result<Self::Out, A::Error> {
        Err(cx.fail(format!("expected {}, found a map", self.expected())))
    }

    /// Reads a list.
    fn seq<A: SeqAccess<'de>>(self, cx: &Cx<'_>, _seq: A) -> Result<Self::Out, A::Error> {
        Err(cx.fail(format!("expected {}, found a list", self.expected())))
    }
}

/// A [`Node`] at a place in the document, usable as a `serde` seed.
pub(super) struct At<'c, N> {
    cx: Cx<'c>,
    node: N,
}

impl<'de, N: Node<'de>> DeserializeSeed<'de> for At<'_, N> {
    type Value = N::Out;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<N::Out, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, N: Node<'de>> At<'_, N> {
    fn scalar<E: de::Error>(self, value: Value) -> Result<N::Out, E> {
        let At { cx, node } = self;
        let bytes = match &value {
            Value::String(s) => s.len(),
            _ => 0,
        };
        cx.budget.spend(bytes).map_err(|message| cx.fail::<E>(message))?;
        node.value(&cx, value).map_err(|message| cx.fail(message))
    }
}

impl<'de, N: Node<'de>> Visitor<'de> for At<'_, N> {
    type Value = N::Out;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.node.expected())
    }

    fn visit_unit<E: de::Error>(self) -> Result<N::Out, E> {
        self.scalar(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<N::Out, E> {
        self.scalar(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<N::Out, E> {
        self.scalar(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<N::Out, E> {
        self.scalar(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<N::Out, E> {
        self.scalar(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<N::Out, E> {
        self.scalar(Value::Number(v.into()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<N::Out, E> {
        self.scalar(Value::String(v.to_owned()))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<N::Out, A::Error> {
        self.cx.budget.spend(0).map_err(|message| self.cx.fail::<A::Error>(message))?;
        self.node.map(&self.cx, map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<N::Out, A::Error> {
        self.cx.budget.spend(0).map_err(|message| self.cx.fail::<A::Error>(message))?;
        self.node.seq(&self.cx, seq)
    }

    /// `serde_yaml_ng` presents a tagged node (`!foo bar`) as an enum.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<N::Out, A::Error> {
        let value = self.cx.value_seed().visit_enum(data)?;
        self.scalar(value)
    }
}

impl Cx<'_> {
    /// Reads any value as a [`Value`] within this file's [`Budget`].
    pub fn value_seed(&self) -> Bounded<'_> {
        Bounded { cx: self }
    }
}

/// Reads any YAML value as `Value::deserialize` does, taking every node it builds from the file's
/// [`Budget`], so that aliases cannot make it build an unbounded tree.
pub(super) struct Bounded<'b> {
    cx: &'b Cx<'b>,
}

impl Bounded<'_> {
    fn spend<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        self.cx.budget.spend(bytes).map_err(|message| self.cx.fail(message))
    }

    fn again(&self) -> Bounded<'_> {
        Bounded { cx: self.cx }
    }
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.spend(0)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.spend(0)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.spend(0)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.spend(0)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.spend(0)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.spend(v.len())?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.spend(0)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.again())? {
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.spend(0)?;
        let mut mapping = serde_yaml_ng::Mapping::new();
        while let Some(key) = map.next_key_seed(self.again())? {
            if mapping.contains_key(&key) {
                let key = match &key {
                    Value::String(s) => format!("{s:?}"),
                    other => describe(other),
                };
                return Err(self.cx.fail(format!("duplicate entry with key {key}")));
            }
            let value = map.next_value_seed(self.again())?;
            mapping.insert(key, value);
        }
        Ok(Value::Mapping(mapping))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        self.spend(0)?;
        let (tag, contents) = data.variant::<String>()?;
        let value = contents.newtype_variant_seed(self.again())?;
        Ok(Value::Tagged(Box::new(serde_yaml_ng::value::TaggedValue {
            tag: serde_yaml_ng::value::Tag::new(tag),
            value,
        })))
    }
}

/// "expected X, found Y".
pub(super) fn wrong_type(expected: &str, found: &Value) -> String {
    format!("expected {expected}, found {}", describe(found))
}

/// A value as named in messages.
pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a map".to_owned(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// A text value (see the module docs of `config` for why numbers are refused).
/// An empty value (YAML null) reads as "".
#[derive(Clone, Copy)]
pub(super) struct Text {
    pub non_empty: bool,
}

impl Text {
    pub const ANY: Text = Text { non_empty: false };
    pub const NON_EMPTY: Text = Text { non_empty: true };
}

impl Node<'_> for Text {
    type Out = String;

    fn expected(&self) -> &'static str {
        if self.non_empty {
            "a non-empty string"
        } else {
            "a string"
        }
    }

    fn value(self, _cx: &Cx<'_>, value: Value) -> Result<String, String> {
        let text = match value {
            Value::String(s) => s,
            Value::Null => String::new(),
            number_or_bool @ (Value::Bool(_) | Value::Number(_)) => {
                return Err(format!("{}; quote it to use it as text", wrong_type(self.expected(), &number_or_bool)));
            }
            other => return Err(wrong_type(self.expected(), &other)),
        };
        if self.non_empty && text.is_empty() {
            return Err(format!("expected {}, found an empty one", self.expected()));
        }
        Ok(text)
    }
}

/// A boolean; `None` when the value is empty, so that the section picks its default.
pub(super) struct Flag;

impl Node<'_> for Flag {
    type Out = Option<bool>;

    fn expected(&self) -> &'static str {
        "a boolean (true or false)"
    }

    fn value(self, _cx: &Cx<'_>, value: Value) -> Result<Option<bool>, String> {
        match value {
            Value::Bool(b) => Ok(Some(b)),
            Value::Null => Ok(None),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }
}

/// `failure_policy`; `None` when empty, for the default.
pub(super) struct Policy;

impl Node<'_> for Policy {
    type Out = Option<FailurePolicy>;

    fn expected(&self) -> &'static str {
        "a failure policy"
    }

    fn value(self, cx: &Cx<'_>, value: Value) -> Result<Option<FailurePolicy>, String> {
        if value.is_null() {
            return Ok(None);
        }
        let name = Text::ANY.value(cx, value)?;
        FailurePolicy::from_name(&name)
            .map(Some)
            .ok_or_else(|| format!("unknown failure policy {name:?}; expected one of fail_closed, fail_open, reload"))
    }
}

/// `runtime`; `None` when empty, for the default.
pub(super) struct Runtime;

impl Node<'_> for Runtime {
    type Out = Option<RuntimeKind>;

    fn expected(&self) -> &'static str {
        "a runtime name"
    }

    fn value(self, cx: &Cx<'_>, value: Value) -> Result<Option<RuntimeKind>, String> {
        if value.is_null() {
            return Ok(None);
        }
        let name = Text::ANY.value(cx, value)?;
        let accepted = RuntimeKind::ACCEPTED_NAMES.join(", ");
        match RuntimeKind::from_name(&name) {
            Some(kind) => Ok(Some(kind)),
            None if is_unavailable_runtime(&name) => {
                Err(format!("runtime {name:?} is not available in this host; expected one of {accepted}"))
            }
            None => Err(format!("unknown runtime {name:?}; expected one of {accepted}")),
        }
    }
}

/// Runtimes that ATS or Envoy know but this host does not embed: they get a clearer message than
/// a typo does.
fn is_unavailable_runtime(name: &str) -> bool {
    let engine = name.rsplit('.').next().unwrap_or(name);
    name.starts_with("envoy.wasm.runtime.") || matches!(engine, "wasmedge" | "v8" | "wavm" | "null")
}

/// A `configuration`: the bytes handed to the plugin.
pub(super) struct Payload;

impl<'de> Node<'de> for Payload {
    type Out = Vec<u8>;

    fn expected(&self) -> &'static str {
        "a string, a map or a list"
    }

    fn value(self, _cx: &Cx<'_>, value: Value) -> Result<Vec<u8>, String> {
        match value {
            Value::String(s) => Ok(s.into_bytes()),
            Value::Null => Ok(Vec::new()),
            number_or_bool @ (Value::Bool(_) | Value::Number(_)) => {
                Err(format!("{}; quote it to pass it as text", wrong_type(self.expected(), &number_or_bool)))
            }
            other => Err(wrong_type(self.expected(), &other)),
        }
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx<'_>, map: A) -> Result<Vec<u8>, A::Error> {
        let value = cx.value_seed().visit_map(map)?;
        to_json(&value).map(String::into_bytes).map_err(|m| cx.fail(m))
    }

    fn seq<A: SeqAccess<'de>>(self, cx: &Cx<'_>, seq: A) -> Result<Vec<u8>, A::Error> {
        let value = cx.value_seed().visit_seq(seq)?;
        to_json(&value).map(String::into_bytes).map_err(|m| cx.fail(m))
    }
}

/// Compact JSON for a YAML map or list. Written by hand rather than through `serde_json::Value`
/// so that keys keep the file's order whatever `serde_json` features the build enables.
pub(super) fn to_json(value: &Value) -> Result<String, String> {
    let mut out = String::new();
    write_json(value, "", &mut out)?;
    Ok(out)
}

/// Appends `value` as JSON. `path` locates it inside the configuration, for messages.
fn write_json(value: &Value, path: &str, out: &mut String) -> Result<(), String> {
    let fail = |problem: String| {
        if path.is_empty() {
            problem
        } else {
            format!("{path}: {problem}")
        }
    };
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&json_number(n).map_err(fail)?),
        Value::String(s) => out.push_str(&json_string(s)),
        Value::Sequence(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, &format!("{path}[{i}]"), out)?;
            }
            out.push(']');
        }
        Value::Mapping(entries) => {
            let mut keys = HashSet::new();
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                let key = json_key(key).map_err(fail)?;
                if !keys.insert(key.clone()) {
                    return Err(fail(format!("key {key:?} appears twice once keys are turned into JSON strings")));
                }
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&json_string(&key));
                out.push(':');
                let child = if path.is_empty() { key } else { format!("{path}.{key}") };
                write_json(item, &child, out)?;
            }
            out.push('}');
        }
        Value::Tagged(t) => return Err(fail(format!("YAML tags like {} cannot be turned into JSON", t.tag))),
    }
    Ok(())
}

fn json_number(n: &serde_yaml_ng::Number) -> Result<String, String> {
    if let Some(i) = n.as_i64() {
        return Ok(i.to_string());
    }
    if let Some(u) = n.as_u64() {
        return Ok(u.to_string());
    }
    n.as_f64()
        .and_then(serde_json::Number::from_f64)
        .map(|f| f.to_string())
        .ok_or_else(|| format!("the number {n} cannot be represented in JSON"))
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// JSON object keys are strings: scalar YAML keys (`404: ...`) are spelled out, others refused.
fn json_key(key: &Value) -> Result<String, String> {
    match key {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => json_number(n),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("map keys must be strings, numbers or booleans, found {}", describe(other))),
    }
}

/// A list of non-empty strings (an empty value is an empty list).
pub(super) struct TextList;

impl<'de> Node<'de> for TextList {
    type Out = Vec<String>;

    fn expected(&self) -> &'static str {
        "a list of strings"
    }

    fn value(self, _cx: &Cx<'_>, value: Value) -> Result<Vec<String>, String> {
        match value {
            Value::Null => Ok(Vec::new()),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }

    fn seq<A: SeqAccess<'de>>(self, cx: &Cx<'_>, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(cx.index(items.len()).at(Text::NON_EMPTY))? {
            items.push(item);
        }
        Ok(items)
    }
}

/// An environment variable name; `taken` holds the names already read in the same map, so that a
/// repeated one is reported at its own position.
pub(super) struct EnvName<'t> {
    pub taken: &'t [(String, String)],
}

impl Node<'_> for EnvName<'_> {
    type Out = String;

    fn expected(&self) -> &'static str {
        "an environment variable name"
    }

    fn value(self, cx: &Cx<'_>, value: Value) -> Result<String, String> {
        let name = Text::NON_EMPTY.value(cx, value)?;
        check_env_name(&name)?;
        if self.taken.iter().any(|(taken, _)| *taken == name) {
            return Err(format!("variable {name:?} is given twice"));
        }
        Ok(name)
    }
}

/// WASI passes the environment as `NAME=value` strings: a name with `=` would be cut short.
fn check_env_name(name: &str) -> Result<(), String> {
    if name.contains('=') {
        return Err(format!("variable name {name:?} must not contain '='"));
    }
    Ok(())
}

/// `host_env_keys`: names looked up in this process's environment, giving the pairs found.
pub(super) struct HostEnvKeys;

impl<'de> Node<'de> for HostEnvKeys {
    type Out = Vec<(String, String)>;

    fn expected(&self) -> &'static str {
        "a list of environment variable names"
    }

    fn value(self, _cx: &Cx<'_>, value: Value) -> Result<Self::Out, String> {
        match value {
            Value::Null => Ok(Vec::new()),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }

    fn seq<A: SeqAccess<'de>>(self, cx: &Cx<'_>, mut seq: A) -> Result<Self::Out, A::Error> {
        let mut found = Vec::new();
        let mut index = 0;
        while let Some(pair) = seq.next_element_seed(cx.index(index).at(HostEnvKey))? {
            found.extend(pair);
            index += 1;
        }
        Ok(found)
    }
}

/// One `host_env_keys` item.
struct HostEnvKey;

impl Node<'_> for HostEnvKey {
    type Out = Option<(String, String)>;

    fn expected(&self) -> &'static str {
        "an environment variable name"
    }

    fn value(self, cx: &Cx<'_>, value: Value) -> Result<Self::Out, String> {
        let name = Text::NON_EMPTY.value(cx, value)?;
        check_env_name(&name)?;
        match std::env::var(&name) {
            Ok(v) => Ok(Some((name, v))),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("the value of environment variable {name:?} is not valid UTF-8"))
            }
        }
    }
}

/// `key_values`: a map of variable names to string values, in file order.
pub(super) struct KeyValues;

impl<'de> Node<'de> for KeyValues {
    type Out = Vec<(String, String)>;

    fn expected(&self) -> &'static str {
        "a map of environment variable names to strings"
    }

    fn value(self, _cx: &Cx<'_>, value: Value) -> Result<Self::Out, String> {
        match value {
            Value::Null => Ok(Vec::new()),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx<'_>, mut map: A) -> Result<Self::Out, A::Error> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        while let Some(name) = map.next_key_seed(cx.clone().at(EnvName { taken: &pairs }))? {
            let value = map.next_value_seed(cx.key(&name).at(Text::ANY))?;
            pairs.push((name, value));
        }
        Ok(pairs)
    }
}

/// `allowed_capabilities`: `{name: {}, ...}` (Envoy) or `[name, ...]` (ATS), giving the names
/// without duplicates.
pub(super) struct Capabilities;

impl<'de> Node<'de> for Capabilities {
    type Out = Vec<String>;

    fn expected(&self) -> &'static str {
        "a map of capability names to {} or a list of capability names"
    }

    fn value(self, _cx: &Cx<'_>, value: Value) -> Result<Vec<String>, String> {
        match value {
            Value::Null => Ok(Vec::new()),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx<'_>, mut map: A) -> Result<Vec<String>, A::Error> {
        let mut names = Vec::new();
        while let Some(name) = map.next_key_seed(cx.clone().at(Text::NON_EMPTY))? {
            map.next_value_seed(cx.key(&name).at(CapabilitySettings))?;
            push_unique(&mut names, name);
        }
        Ok(names)
    }

    fn seq<A: SeqAccess<'de>>(self, cx: &Cx<'_>, seq: A) -> Result<Vec<String>, A::Error> {
        let mut names = Vec::new();
        for name in TextList.seq(cx, seq)? {
            push_unique(&mut names, name);
        }
        Ok(names)
    }
}

fn push_unique(names: &mut Vec<String>, name: String) {
    if !names.contains(&name) {
        names.push(name);
    }
}

/// The `{}` after a capability name. Envoy reserves it for sanitization settings, which this host
/// does not have: anything in it is refused rather than ignored.
struct CapabilitySettings;

impl<'de> Node<'de> for CapabilitySettings {
    type Out = ();

    fn expected(&self) -> &'static str {
        "{}"
    }

    fn value(self, _cx: &Cx<'_>, value: Value) -> Result<(), String> {
        match value {
            Value::Null => Ok(()),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx<'_>, mut map: A) -> Result<(), A::Error> {
        match map.next_key::<de::IgnoredAny>()? {
            None => Ok(()),
            Some(_) => Err(cx.fail("capability settings are not supported; expected {}")),
        }
    }
}

/// `code.local.filename`: resolved against the YAML file's folder and checked here, where the
/// error can still point at the value.
pub(super) struct CodeFile;

impl Node<'_> for CodeFile {
    type Out = CodeSource;

    fn expected(&self) -> &'static str {
        "a file name"
    }

    fn value(self, cx: &Cx<'_>, value: Value) -> Result<CodeSource, String> {
        let name = Text::NON_EMPTY.value(cx, value)?;
        let path = absolute(&cx.base_dir.join(name));
        check_readable_file(&path)?;
        Ok(CodeSource::LocalFile(path))
    }
}

fn check_readable_file(path: &Path) -> Result<(), String> {
    let shown = path.display();
    match std::fs::File::open(path).and_then(|f| f.metadata()) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(format!("\"{shown}\" is not a regular file")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("file \"{shown}\" not found")),
        Err(e) => Err(format!("cannot read file \"{shown}\": {}", os_reason(&e))),
    }
}

/// `path` made absolute without touching the file system (symlinks are kept as written).
pub(super) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `code.local.inline_bytes`: the module as base64 text (standard alphabet, padding optional).
/// Whitespace is ignored, so a long value can be folded over several lines.
pub(super) struct InlineBytes;

impl Node<'_> for InlineBytes {
    type Out = Vec<u8>;

    fn expected(&self) -> &'static str {
        "the module as base64 text"
    }

    fn value(self, cx: &Cx<'_>, value: Value) -> Result<Vec<u8>, String> {
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        use base64::Engine as _;
        const BASE64: GeneralPurpose = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        let text = Text::NON_EMPTY.value(cx, value)?;
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = BASE64
            .decode(compact.as_bytes())
            .map_err(|e| format!("expected {}, but it is not valid base64: {e}", self.expected()))?;
        if bytes.is_empty() {
            return Err(format!("expected {}, found an empty one", self.expected()));
        }
        Ok(bytes)
    }
}

/// A parsed `code.remote` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RemoteUri {
    pub uri: String,
    pub upstream: String,
    pub authority: String,
    pub path: String,
}

/// `code.remote.http_uri.uri` (or `code.remote.uri`): an `http://host[:port]/path` URL.
pub(super) struct HttpUrl;

/// Why `https://` is refused, in the words operators read.
const HTTPS_REFUSED: &str = "only http:// is supported: this host downloads remote code with its own \
     small HTTP/1.1 client, which has no TLS; the sha256 pin guarantees the code whatever the \
     transport, so use an http:// URL or a local file";

impl Node<'_> for HttpUrl {
    type Out = RemoteUri;

    fn expected(&self) -> &'static str {
        "an http:// URL"
    }

    fn value(self, cx: &Cx<'_>, value: Value) -> Result<RemoteUri, String> {
        let uri = Text::NON_EMPTY.value(cx, value)?;
        parse_http_url(&uri).map_err(|why| format!("{uri:?}: {why}"))
    }
}

/// Splits `http://authority/path?query` into what the HTTP client needs.
fn parse_http_url(uri: &str) -> Result<RemoteUri, String> {
    let scheme_end = uri.find("://").ok_or_else(|| "expected an http:// URL".to_owned())?;
    let scheme = uri[..scheme_end].to_ascii_lowercase();
    match scheme.as_str() {
        "http" => {}
        "https" => return Err(HTTPS_REFUSED.to_owned()),
        _ => return Err(format!("unsupported scheme {scheme:?}; expected an http:// URL")),
    }
    let rest = &uri[scheme_end + 3..];
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = path.split('#').next().unwrap_or_default();
    if authority.contains('@') {
        return Err("user information (user@host) is not supported".to_owned());
    }
    if authority.is_empty() {
        return Err("missing host".to_owned());
    }
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("spaces and control characters must be percent-encoded".to_owned());
    }
    let (host, port) = crate::http_client::parse_upstream(authority)
        .filter(|(host, _)| !host.is_empty())
        .ok_or_else(|| format!("invalid host or port {authority:?}"))?;
    let upstream = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let path = match path {
        "" => "/".to_owned(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_owned(),
    };
    Ok(RemoteUri { uri: uri.to_owned(), upstream, authority: authority.to_owned(), path })
}

/// `code.remote.sha256`: 64 hexadecimal digits (either case).
pub(super) struct Sha256Hex;

impl Node<'_> for Sha256Hex {
    type Out = [u8; 32];

    fn expected(&self) -> &'static str {
        "a SHA-256 as 64 hexadecimal digits"
    }

    fn value(self, cx: &Cx<'_>, value: Value) -> Result<[u8; 32], String> {
        let text = Text::NON_EMPTY.value(cx, value)?;
        let digits = text.as_bytes();
        if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("expected {}, found {text:?}", self.expected()));
        }
        let mut hash = [0u8; 32];
        for (byte, pair) in hash.iter_mut().zip(digits.chunks(2)) {
            let pair = std::str::from_utf8(pair).unwrap_or_default();
            *byte = u8::from_str_radix(pair, 16).map_err(|e| e.to_string())?;
        }
        Ok(hash)
    }
}

/// `code.remote.http_uri.timeout`: Envoy's duration text, like `10s` or `1.5s`; `ms` is accepted
/// too. `None` when empty, for the default.
pub(super) struct Timeout;

impl Node<'_> for Timeout {
    type Out = Option<std::time::Duration>;

    fn expected(&self) -> &'static str {
        "a duration like \"10s\", \"1.5s\" or \"500ms\""
    }

    fn value(self, cx: &Cx<'_>, value: Value) -> Result<Self::Out, String> {
        if value.is_null() {
            return Ok(None);
        }
        if let Value::Number(n) = &value {
            return Err(format!("expected {}, found the number {n}; write the unit, like \"{n}s\"", self.expected()));
        }
        let text = Text::ANY.value(cx, value)?;
        let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
            (n, 1e-3)
        } else if let Some(n) = text.strip_suffix('s') {
            (n, 1.0)
        } else {
            return Err(format!("expected {}, found {text:?}", self.expected()));
        };
        let seconds = number
            .parse::<f64>()
            .ok()
            .filter(|_| number.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
            .map(|n| n * scale)
            .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
            .ok_or_else(|| format!("expected {} (more than 0, at most a day), found {text:?}", self.expected()))?;
        Ok(Some(std::time::Duration::from_secs_f64(seconds)))
    }
}

/// `code.remote.cache_dir`: a folder, relative to the YAML file's folder. It need not exist yet.
pub(super) struct CacheDir;

impl Node<'_> for CacheDir {
    type Out = PathBuf;

    fn expected(&self) -> &'static str {
        "a folder name"
    }

    fn value(self, cx: &Cx<'_>, value: Value) -> Result<PathBuf, String> {
        let name = Text::NON_EMPTY.value(cx, value)?;
        Ok(absolute(&cx.base_dir.join(name)))
    }
}

/// A positive whole number (`kill_options.max_calls`); `None` when empty.
pub(super) struct Count;

impl Node<'_> for Count {
    type Out = Option<u64>;

    fn expected(&self) -> &'static str {
        "a whole number greater than 0"
    }

    fn value(self, _cx: &Cx<'_>, value: Value) -> Result<Option<u64>, String> {
        match value {
            Value::Null => Ok(None),
            Value::Number(n) => match n.as_u64() {
                Some(v) if v > 0 => Ok(Some(v)),
                _ => Err(format!("expected {}, found {n}", self.expected())),
            },
            other => Err(wrong_type(self.expected(), &other)),
        }
    }
}

/// A size in bytes for a host-side cap (`max_body_size`, `limits.max_shared_data_size`, ...):
/// a number of bytes, or text with a unit (`"16MiB"`, `"512KiB"`, `"1GiB"`, `"100B"`), from 1 byte
/// to 1 TiB. `None` when empty, for the default.
pub(super) struct ByteSize;

impl ByteSize {
    const MAX: u64 = 1 << 40;
}

impl Node<'_> for ByteSize {
    type Out = Option<u64>;

    fn expected(&self) -> &'static str {
        "a size like \"16MiB\", \"512KiB\", \"1GiB\" or a number of bytes, from 1 byte to 1TiB"
    }

    fn value(self, _cx: &Cx<'_>, value: Value) -> Result<Option<u64>, String> {
        let bytes = match &value {
            Value::Null => return Ok(None),
            Value::Number(n) => n.as_u64(),
            Value::String(text) => {
                let t = text.trim();
                let (number, unit) =
                    [("KiB", 1u64 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40), ("B", 1)]
                        .into_iter()
                        .find_map(|(suffix, unit)| t.strip_suffix(suffix).map(|n| (n.trim_end(), unit)))
                        .unwrap_or((t, 1));
                number
                    .parse::<u64>()
                    .ok()
                    .filter(|_| !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|n| n.checked_mul(unit))
            }
            other => return Err(wrong_type(self.expected(), other)),
        };
        match bytes {
            Some(b) if (1..=Self::MAX).contains(&b) => Ok(Some(b)),
            _ => Err(format!("expected {}, found {}", self.expected(), describe(&value))),
        }
    }
}

/// A whole number from 1 to `u32::MAX` (counts of host-side caps); `None` when empty.
pub(super) struct Count32;

impl Node<'_> for Count32 {
    type Out = Option<u32>;

    fn expected(&self) -> &'static str {
        "a whole number from 1 to 4294967295"
    }

    fn value(self, _cx: &Cx<'_>, value: Value) -> Result<Option<u32>, String> {
        match value {
            Value::Null => Ok(None),
            Value::Number(n) => match n.as_u64().and_then(|v| u32::try_from(v).ok()) {
                Some(v) if v > 0 => Ok(Some(v)),
                _ => Err(format!("expected {}, found {n}", self.expected())),
            },
            other => Err(wrong_type(self.expected(), &other)),
        }
    }
}

/// A fraction in (0, 1] (`kill_options.max_memory_usage`); `None` when empty.
pub(super) struct Fraction;

impl Node<'_> for Fraction {
    type Out = Option<f64>;

    fn expected(&self) -> &'static str {
        "a fraction greater than 0 and at most 1, like 0.8"
    }

    fn value(self, _cx: &Cx<'_>, value: Value) -> Result<Option<f64>, String> {
        match value {
            Value::Null => Ok(None),
            Value::Number(n) => match n.as_f64() {
                Some(v) if v > 0.0 && v <= 1.0 => Ok(Some(v)),
                _ => Err(format!("expected {}, found {n}", self.expected())),
            },
            other => Err(wrong_type(self.expected(), &other)),
        }
    }
}

/// `limits.max_memory`: bytes as a whole number, or a number with a binary unit
/// (`KiB`, `MiB`, `GiB`); from 64 KiB (one page) to 4 GiB. `None` when empty.
pub(super) struct MemorySize;

impl MemorySize {
    const MIN: u64 = 64 * 1024;
    const MAX: u64 = 4 * 1024 * 1024 * 1024;
}

impl Node<'_> for MemorySize {
    type Out = Option<u64>;

    fn expected(&self) -> &'static str {
        "a memory size like \"64MiB\", \"512KiB\", \"1GiB\" or a number of bytes, from 64KiB to 4GiB"
    }

    fn value(self, _cx: &Cx<'_>, value: Value) -> Result<Option<u64>, String> {
        let bytes = match &value {
            Value::Null => return Ok(None),
            Value::Number(n) => n.as_u64(),
            Value::String(text) => {
                let t = text.trim();
                let (number, unit) = [("KiB", 1u64 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("B", 1)]
                    .into_iter()
                    .find_map(|(suffix, unit)| t.strip_suffix(suffix).map(|n| (n.trim_end(), unit)))
                    .unwrap_or((t, 1));
                number
                    .parse::<u64>()
                    .ok()
                    .filter(|_| !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|n| n.checked_mul(unit))
            }
            other => return Err(wrong_type(self.expected(), other)),
        };
        match bytes {
            Some(b) if (Self::MIN..=Self::MAX).contains(&b) => Ok(Some(b)),
            _ => Err(format!("expected {}, found {}", self.expected(), describe(&value))),
        }
    }
}
