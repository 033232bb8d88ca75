//! Reading JSON or YAML with errors that name the file, the line and the key, in the manner of
//! `src/config`: every check runs while the node is deserialized, so the parser (`serde_json` or
//! `serde_yaml_ng`) stamps the error with the node's position; the message carries our key path
//! between NUL characters ([`encode`]), which [`decode_yaml`] / [`decode_json`] take back out.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::config::{ConfigError, Position};

const SEPARATOR: char = '\0';

fn encode(path: &str, message: impl fmt::Display) -> String {
    format!("{SEPARATOR}{path}{SEPARATOR}{message}")
}

fn split(text: &str) -> Option<(String, String)> {
    let (_, ours) = text.split_once(SEPARATOR)?;
    let (key, message) = ours.split_once(SEPARATOR).unwrap_or(("", ours));
    let key = if key.is_empty() { "top level".to_owned() } else { key.to_owned() };
    Some((key, message.to_owned()))
}

/// A `serde_yaml_ng` error as ours.
pub fn decode_yaml(error: &serde_yaml_ng::Error, file: &Path) -> ConfigError {
    let location = error.location();
    let mut text = error.to_string();
    if let Some(l) = &location {
        text = text.replacen(&format!(" at line {} column {}", l.line(), l.column()), "", 1);
    }
    let at = Position {
        file: file.to_path_buf(),
        line: location.as_ref().map(serde_yaml_ng::Location::line),
        column: location.as_ref().map(serde_yaml_ng::Location::column),
    };
    match split(&text) {
        Some((key, message)) => ConfigError::Invalid { at, key, message },
        None => ConfigError::Syntax { at, message: text },
    }
}

/// A `serde_json` error as ours.
pub fn decode_json(error: &serde_json::Error, file: &Path) -> ConfigError {
    let (line, column) = (error.line(), error.column());
    let mut text = error.to_string();
    text = text.replacen(&format!(" at line {line} column {column}"), "", 1);
    let at =
        Position { file: file.to_path_buf(), line: (line > 0).then_some(line), column: (column > 0).then_some(column) };
    match split(&text) {
        Some((key, message)) => ConfigError::Invalid { at, key, message },
        None => ConfigError::Syntax { at, message: format!("invalid JSON: {text}") },
    }
}

/// An error about a place found without the parser (`line` 0 when unknown).
pub fn invalid(file: &Path, line: usize, key: &str, message: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        at: Position { file: file.to_path_buf(), line: (line > 0).then_some(line), column: None },
        key: if key.is_empty() { "top level".to_owned() } else { key.to_owned() },
        message: message.to_string(),
    }
}

/// Where the node being read is.
#[derive(Clone)]
pub struct Cx {
    /// Relative `file` sources are resolved against this folder.
    pub base_dir: PathBuf,
    /// Dotted key path as written in Otoroshi's JSON (`config.authorizations.httpAccess`).
    pub path: String,
}

impl Cx {
    #[must_use]
    pub fn key(&self, key: &str) -> Cx {
        let path = if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) };
        Cx { path, base_dir: self.base_dir.clone() }
    }

    #[must_use]
    pub fn index(&self, index: usize) -> Cx {
        Cx { path: format!("{}[{index}]", self.path), base_dir: self.base_dir.clone() }
    }

    pub fn at<N>(self, node: N) -> At<N> {
        At { cx: self, node }
    }

    pub fn fail<E: de::Error>(&self, message: impl fmt::Display) -> E {
        E::custom(encode(&self.path, message))
    }
}

/// How one kind of node is read; problems are plain messages, [`At`] adds key and position.
pub trait Node<'de>: Sized {
    type Out;

    fn expected(&self) -> &'static str;

    /// Reads null, a boolean, a number or a string (as a JSON value).
    fn scalar(self, _cx: &Cx, value: Value) -> Result<Self::Out, String> {
        Err(wrong_type(self.expected(), &value))
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx, _map: A) -> Result<Self::Out, A::Error> {
        Err(cx.fail(format!("expected {}, found a map", self.expected())))
    }

    fn seq<A: SeqAccess<'de>>(self, cx: &Cx, _seq: A) -> Result<Self::Out, A::Error> {
        Err(cx.fail(format!("expected {}, found a list", self.expected())))
    }
}

/// A [`Node`] at a place in the document, as a `serde` seed.
pub struct At<N> {
    cx: Cx,
    node: N,
}

impl<'de, N: Node<'de>> DeserializeSeed<'de> for At<N> {
    type Value = N::Out;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<N::Out, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, N: Node<'de>> At<N> {
    fn scalar<E: de::Error>(self, value: Value) -> Result<N::Out, E> {
        let At { cx, node } = self;
        node.scalar(&cx, value).map_err(|m| cx.fail(m))
    }
}

impl<'de, N: Node<'de>> Visitor<'de> for At<N> {
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
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<N::Out, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<N::Out, E> {
        self.scalar(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<N::Out, E> {
        self.scalar(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<N::Out, E> {
        self.scalar(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<N::Out, E> {
        match serde_json::Number::from_f64(v) {
            Some(n) => self.scalar(Value::Number(n)),
            None => Err(self.cx.fail(format!("expected {}, found the number {v}", self.node.expected()))),
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<N::Out, E> {
        self.scalar(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<N::Out, E> {
        self.scalar(Value::String(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<N::Out, A::Error> {
        self.node.map(&self.cx, map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<N::Out, A::Error> {
        self.node.seq(&self.cx, seq)
    }
    fn visit_enum<A: EnumAccess<'de>>(self, _data: A) -> Result<N::Out, A::Error> {
        Err(self.cx.fail("YAML tags are not supported here"))
    }
}

/// "expected X, found Y".
#[must_use]
pub fn wrong_type(expected: &str, found: &Value) -> String {
    format!("expected {expected}, found {}", describe(found))
}

#[must_use]
pub fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a map".to_owned(),
    }
}

/// A map key, checked against the keys a section accepts (canonical name first, then aliases),
/// so that an unknown or repeated key is reported at the key itself, under its own path.
struct Key<'k> {
    cx: &'k Cx,
    keys: &'static [&'static [&'static str]],
    seen: &'k mut Vec<&'static str>,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = &'static str;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<&'static str, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = &'static str;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<&'static str, E> {
        let Some(names) = self.keys.iter().find(|names| names.contains(&name)) else {
            let known: Vec<&str> = self.keys.iter().map(|n| n[0]).collect();
            return Err(self.cx.key(name).fail(format!("unknown key; expected one of {}", known.join(", "))));
        };
        if self.seen.contains(&names[0]) {
            let also = if names.len() > 1 { " (counting its aliases)" } else { "" };
            return Err(self.cx.key(names[0]).fail(format!("key is given twice{also}")));
        }
        self.seen.push(names[0]);
        Ok(names[0])
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<&'static str, E> {
        Err(self.cx.fail(format!("keys must be strings, found the boolean {v}")))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<&'static str, E> {
        Err(self.cx.fail(format!("keys must be strings, found the number {v}")))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<&'static str, E> {
        Err(self.cx.fail(format!("keys must be strings, found the number {v}")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<&'static str, E> {
        Err(self.cx.fail("keys must be strings, found null"))
    }
}

/// Reads every entry of a map whose keys are in `keys`, calling `read` with the canonical key
/// and the value's context. Returns the canonical keys seen.
pub fn read_map<'de, A: MapAccess<'de>>(
    cx: &Cx,
    map: &mut A,
    keys: &'static [&'static [&'static str]],
    mut read: impl FnMut(&'static str, Cx, &mut A) -> Result<(), A::Error>,
) -> Result<Vec<&'static str>, A::Error> {
    let mut seen = Vec::new();
    loop {
        let key = map.next_key_seed(Key { cx, keys, seen: &mut seen })?;
        let Some(key) = key else { break };
        read(key, cx.key(key), map)?;
    }
    Ok(seen)
}

/// Text; null reads as "" (exports write `""` or leave a key out, both mean nothing).
pub struct Text;

impl Node<'_> for Text {
    type Out = String;
    fn expected(&self) -> &'static str {
        "a string"
    }
    fn scalar(self, _cx: &Cx, value: Value) -> Result<String, String> {
        match value {
            Value::String(s) => Ok(s),
            Value::Null => Ok(String::new()),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }
}

/// Text that must not be empty.
pub struct NonEmpty;

impl Node<'_> for NonEmpty {
    type Out = String;
    fn expected(&self) -> &'static str {
        "a non-empty string"
    }
    fn scalar(self, cx: &Cx, value: Value) -> Result<String, String> {
        let s = Text.scalar(cx, value)?;
        if s.trim().is_empty() {
            return Err("expected a non-empty string, found an empty one".to_owned());
        }
        Ok(s)
    }
}

/// A boolean; null reads as `None` (the default).
pub struct Flag;

impl Node<'_> for Flag {
    type Out = Option<bool>;
    fn expected(&self) -> &'static str {
        "a boolean (true or false)"
    }
    fn scalar(self, _cx: &Cx, value: Value) -> Result<Option<bool>, String> {
        match value {
            Value::Bool(b) => Ok(Some(b)),
            Value::Null => Ok(None),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }
}

/// A whole number in `min..=max`; null reads as `None`.
pub struct Int {
    pub min: i64,
    pub max: i64,
    pub expected: &'static str,
}

impl Node<'_> for Int {
    type Out = Option<i64>;
    fn expected(&self) -> &'static str {
        self.expected
    }
    fn scalar(self, _cx: &Cx, value: Value) -> Result<Option<i64>, String> {
        match &value {
            Value::Null => Ok(None),
            Value::Number(_) => match crate::extism::body::whole(&value) {
                Some(n) if (self.min..=self.max).contains(&n) => Ok(Some(n)),
                _ => Err(wrong_type(self.expected, &value)),
            },
            other => Err(wrong_type(self.expected, other)),
        }
    }
}

/// A number (`max_memory_usage`); null reads as `None`.
pub struct Float {
    pub expected: &'static str,
    pub min: f64,
    pub max: f64,
}

impl Node<'_> for Float {
    type Out = Option<f64>;
    fn expected(&self) -> &'static str {
        self.expected
    }
    fn scalar(self, _cx: &Cx, value: Value) -> Result<Option<f64>, String> {
        match value.as_f64() {
            _ if value.is_null() => Ok(None),
            Some(f) if f >= self.min && f <= self.max => Ok(Some(f)),
            _ => Err(wrong_type(self.expected, &value)),
        }
    }
}

/// A list of strings; null reads as empty.
pub struct TextList;

impl<'de> Node<'de> for TextList {
    type Out = Vec<String>;
    fn expected(&self) -> &'static str {
        "a list of strings"
    }
    fn scalar(self, _cx: &Cx, value: Value) -> Result<Vec<String>, String> {
        match value {
            Value::Null => Ok(Vec::new()),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }
    fn seq<A: SeqAccess<'de>>(self, cx: &Cx, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(cx.index(items.len()).at(StrictText))? {
            items.push(item);
        }
        Ok(items)
    }
}

/// Text that must be a string (not null): list items and map values.
struct StrictText;

impl Node<'_> for StrictText {
    type Out = String;
    fn expected(&self) -> &'static str {
        "a string"
    }
    fn scalar(self, _cx: &Cx, value: Value) -> Result<String, String> {
        match value {
            Value::String(s) => Ok(s),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }
}

/// A map of strings to strings, in file order; null reads as empty.
pub struct TextMap;

impl<'de> Node<'de> for TextMap {
    type Out = Vec<(String, String)>;
    fn expected(&self) -> &'static str {
        "a map of strings to strings"
    }
    fn scalar(self, _cx: &Cx, value: Value) -> Result<Self::Out, String> {
        match value {
            Value::Null => Ok(Vec::new()),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }
    fn map<A: MapAccess<'de>>(self, cx: &Cx, mut map: A) -> Result<Self::Out, A::Error> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        while let Some(key) = map.next_key_seed(cx.clone().at(StrictText))? {
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(cx.key(&key).fail("key is given twice"));
            }
            let value = map.next_value_seed(cx.key(&key).at(StrictText))?;
            pairs.push((key, value));
        }
        Ok(pairs)
    }
}

/// Any JSON value (maps with string keys).
pub struct Any;

impl<'de> Node<'de> for Any {
    type Out = Value;
    fn expected(&self) -> &'static str {
        "a JSON value"
    }
    fn scalar(self, _cx: &Cx, value: Value) -> Result<Value, String> {
        Ok(value)
    }
    fn map<A: MapAccess<'de>>(self, cx: &Cx, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key_seed(cx.clone().at(StrictText))? {
            let value = map.next_value_seed(cx.key(&key).at(Any))?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
    fn seq<A: SeqAccess<'de>>(self, cx: &Cx, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(cx.index(out.len()).at(Any))? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
}
