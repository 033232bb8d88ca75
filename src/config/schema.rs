//! The configuration schema: which keys each map has and what they become.
//!
//! Each map of the file is a [`Section`]. Adding a key means one entry in its `KEYS` (canonical
//! `snake_case` name first, then aliases), one arm in `read`, and its use in `finish`.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess};
use serde_yaml_ng::Value;

use super::error::{decode, invalid, ConfigError, Position};
use super::node::{
    absolute, describe, wrong_type, Budget, Capabilities, CodeFile, Cx, Flag, HostEnvKeys, KeyValues, Node, Payload,
    Policy, Runtime, Text, TextList,
};
use super::node::{
    ByteSize, CacheDir, Count, Count32, Fraction, HttpUrl, InlineBytes, MemorySize, RemoteUri, Sha256Hex, Timeout,
};
use super::probe::{locate, second_document, Step, Target};
use super::{
    CodeSource, ConfigOrigin, FailurePolicy, KillOptions, PluginConfig, Quotas, RemoteCode, RuntimeKind, VmConfig,
};
use crate::authorizations::{Access, Authorizations};

/// The plugins of one file, and the shape they were written in (to find them again in the text).
pub(super) struct Document {
    pub layout: Layout,
    pub plugins: Vec<PluginConfig>,
}

/// Parses one file's text. Positions that deserialization does not give (where each entry starts,
/// where a duplicate name is) are found afterwards with [`locate`].
pub(super) fn parse(text: &str, file: &Path) -> Result<Document, ConfigError> {
    check_flow_depth(text, file)?;
    // Syntax first: on malformed YAML, serde_yaml_ng deserializes the events read before the error,
    // and a complaint about the truncated document could hide the real one.
    serde_yaml_ng::from_str::<IgnoredAny>(text).map_err(|e| placed(decode(&e, file), text))?;

    let base_dir = base_dir(file);
    let budget = Budget::new();
    let cx = Cx { file, base_dir: &base_dir, path: String::new(), budget: &budget };
    let (layout, mut plugins) = cx
        .at(Root)
        .deserialize(serde_yaml_ng::Deserializer::from_str(text))
        .map_err(|e| placed(decode(&e, file), text))?;
    for (index, plugin) in plugins.iter_mut().enumerate() {
        let (line, _) = locate(text, &layout.entry_steps(index), Target::Key).unwrap_or((0, 0));
        plugin.origin.line = line;
    }
    Ok(Document { layout, plugins })
}

/// Flow collections (`[`, `{`) nested deeper than this are refused before the YAML is parsed:
/// libyaml's scanner takes time quadratic in their depth (a 100 KB file of `{a: {a: ...` took
/// seconds), and the schema could not use them anyway, since `serde_yaml_ng` stops at 128 levels.
const MAX_FLOW_DEPTH: usize = 1000;

/// Refuses text whose brackets nest deeper than [`MAX_FLOW_DEPTH`]. Brackets are counted
/// everywhere, in strings and comments too: no configuration comes close to the limit.
pub(crate) fn check_flow_depth(text: &str, file: &Path) -> Result<(), ConfigError> {
    let mut depth = 0usize;
    for (index, line) in text.lines().enumerate() {
        for (column, c) in line.chars().enumerate() {
            match c {
                '[' | '{' => depth += 1,
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => continue,
            }
            if depth > MAX_FLOW_DEPTH {
                let at = Position { file: file.to_path_buf(), line: Some(index + 1), column: Some(column + 1) };
                let message = format!(
                    "more than {MAX_FLOW_DEPTH} nested `[` and `{{` (counted in strings too); a configuration nests at most 128 levels"
                );
                return Err(ConfigError::Syntax { at, message });
            }
        }
    }
    Ok(())
}

/// Gives the errors `serde_yaml_ng` reports without a position one: a file holding more than one
/// document (where the second starts), and aliases expanding past its repetition limit (where the
/// first alias is); and keeps every position inside the text ([`within_text`]).
fn placed(mut error: ConfigError, text: &str) -> ConfigError {
    if let ConfigError::Syntax { at, message } = &mut error {
        let found = match at.line {
            Some(_) => None,
            None if message.contains("more than one document") => second_document(text).map(|p| {
                (
                    p,
                    "a second YAML document starts here (after `---`, or where a line is indented less \
                     than the first one); a configuration file holds one document",
                )
            }),
            None if message.contains("repetition limit") => first_alias(text).map(|p| {
                (
                    p,
                    "the aliases (`*name`) expand to too many nodes, as in a YAML \"billion laughs\"; \
                     the first alias is here",
                )
            }),
            None => None,
        };
        if let Some(((line, column), text)) = found {
            at.line = Some(line);
            at.column = Some(column);
            *message = text.to_owned();
        }
    }
    within_text(error, text)
}

/// The 1-based (line, column) of the first alias (`*name`) in `text`, skipping comments and quoted
/// strings within a line (a multi-line quoted string can still fool it: it only picks the place
/// an error message points at).
fn first_alias(text: &str) -> Option<(usize, usize)> {
    for (index, line) in text.lines().enumerate() {
        let mut quote: Option<char> = None;
        let mut previous = ' ';
        for (column, c) in line.chars().enumerate() {
            match quote {
                Some(q) if c == q && previous != '\\' => quote = None,
                Some(_) => {}
                None if c == '#' && previous.is_whitespace() => break,
                None if (c == '"' || c == '\'') && (previous.is_whitespace() || "[{,:".contains(previous)) => {
                    quote = Some(c)
                }
                None if c == '*' && (previous.is_whitespace() || "[{,".contains(previous)) => {
                    return Some((index + 1, column + 1));
                }
                None => {}
            }
            previous = c;
        }
    }
    None
}

/// libyaml places the end of a file that does not end with a line break on the line after the
/// last one: such a position becomes the end of the last line, where an editor can show it.
fn within_text(mut error: ConfigError, text: &str) -> ConfigError {
    let (ConfigError::Syntax { at, .. } | ConfigError::Invalid { at, .. }) = &mut error else { return error };
    // Line breaks as YAML 1.1 counts them: CR LF, CR, LF, NEL, LS and PS.
    let mut lines = 1;
    let mut last_line_start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let end = match c {
            '\r' => match chars.next_if(|(_, c)| *c == '\n') {
                Some((j, _)) => j + 1,
                None => i + 1,
            },
            '\n' | '\u{85}' | '\u{2028}' | '\u{2029}' => i + c.len_utf8(),
            _ => continue,
        };
        lines += 1;
        last_line_start = end;
    }
    if at.line.is_some_and(|l| l > lines) {
        at.line = Some(lines);
        at.column = Some(text[last_line_start..].chars().count() + 1);
    }
    error
}

/// The absolute folder of `file`, where relative code file names point.
fn base_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => absolute(parent),
        _ => absolute(Path::new(".")),
    }
}

/// How the plugins are laid out in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// `config: {...}`
    Single,
    /// `- config: {...}` at the top level.
    List,
    /// `plugins: [- config: {...}]`
    PluginsKey,
}

impl Layout {
    /// The way to entry `index`'s `config` key.
    fn entry_steps(self, index: usize) -> Vec<Step> {
        match self {
            Layout::Single => vec![Step::Key("config")],
            Layout::List => vec![Step::Index(index), Step::Key("config")],
            Layout::PluginsKey => vec![Step::Key("plugins"), Step::Index(index), Step::Key("config")],
        }
    }

    /// The key path of entry `index`'s `config` map.
    fn entry_path(self, index: usize) -> String {
        match self {
            Layout::Single => "config".to_owned(),
            Layout::List => format!("[{index}].config"),
            Layout::PluginsKey => format!("plugins[{index}].config"),
        }
    }

    /// The error for entry `index` of this file reusing a name first used at `first`.
    pub fn duplicate_name(
        self,
        text: &str,
        file: &Path,
        index: usize,
        name: &str,
        first: &ConfigOrigin,
    ) -> ConfigError {
        let mut steps = self.entry_steps(index);
        steps.push(Step::Key("name"));
        let found = locate(text, &steps, Target::Value);
        let at = Position { file: file.to_path_buf(), line: found.map(|f| f.0), column: found.map(|f| f.1) };
        let message = format!("duplicate plugin name {name:?}; already defined at {first}");
        invalid(at, &format!("{}.name", self.entry_path(index)), message)
    }
}

/// A map with a fixed set of keys, read by [`Sec`].
pub(super) trait Section: Default {
    type Out;

    /// For each key: its canonical name, then accepted aliases.
    const KEYS: &'static [&'static [&'static str]];

    /// Reads the value of `key` (a canonical name) with `map.next_value_seed(cx.at(...))`.
    fn read<'de, A: MapAccess<'de>>(&mut self, key: &'static str, cx: Cx<'_>, map: &mut A) -> Result<(), A::Error>;

    /// Checks what must be there and builds the result. Errors point at the start of the map.
    fn finish(self, cx: &Cx<'_>) -> Result<Self::Out, String>;
}

/// Reads a [`Section`]. An empty value counts as an empty map, so required keys are reported as
/// missing rather than the value as being of the wrong type.
pub(super) struct Sec<S>(PhantomData<S>);

impl<S> Sec<S> {
    pub fn new() -> Self {
        Sec(PhantomData)
    }
}

impl<'de, S: Section> Node<'de> for Sec<S> {
    type Out = S::Out;

    fn expected(&self) -> &'static str {
        "a map"
    }

    fn value(self, cx: &Cx<'_>, value: Value) -> Result<S::Out, String> {
        match value {
            Value::Null => S::default().finish(cx),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx<'_>, mut map: A) -> Result<S::Out, A::Error> {
        let mut section = S::default();
        let mut seen: Vec<&'static str> = Vec::new();
        loop {
            let key_seed = cx.clone().at(KeyName { keys: S::KEYS, seen: &seen });
            let Some(key) = map.next_key_seed(key_seed)? else {
                break;
            };
            seen.push(key);
            section.read(key, cx.key(key), &mut map)?;
        }
        section.finish(cx).map_err(|message| cx.fail(message))
    }
}

/// A key of a [`Section`], giving its canonical name. Reports unknown and repeated keys at the key.
struct KeyName<'s> {
    keys: &'static [&'static [&'static str]],
    seen: &'s [&'static str],
}

impl KeyName<'_> {
    fn known(&self) -> String {
        self.keys.iter().map(|names| names[0]).collect::<Vec<_>>().join(", ")
    }
}

impl Node<'_> for KeyName<'_> {
    type Out = &'static str;

    fn expected(&self) -> &'static str {
        "a key name"
    }

    fn value(self, _cx: &Cx<'_>, value: Value) -> Result<&'static str, String> {
        let written = match value {
            Value::String(s) => s,
            // Keys YAML read as numbers or booleans (`1:`, `true:`) are named as written.
            Value::Number(n) => return Err(format!("unknown key {n}; expected one of {}", self.known())),
            Value::Bool(b) => return Err(format!("unknown key {b}; expected one of {}", self.known())),
            other => return Err(format!("unknown key {}; expected one of {}", describe(&other), self.known())),
        };
        let Some(names) = self.keys.iter().find(|names| names.contains(&written.as_str())) else {
            return Err(format!("unknown key {written:?}; expected one of {}", self.known()));
        };
        let canonical = names[0];
        if self.seen.contains(&canonical) {
            return Err(if written == canonical {
                format!("key {written:?} is given twice")
            } else {
                format!("key {written:?} is given twice (it is another name for {canonical:?})")
            });
        }
        Ok(canonical)
    }
}

fn required<T>(value: Option<T>, key: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("missing required key {key:?}"))
}

/// The document root: a map with `config` or `plugins`, or a list of entries.
struct Root;

impl<'de> Node<'de> for Root {
    type Out = (Layout, Vec<PluginConfig>);

    fn expected(&self) -> &'static str {
        "a \"config\" map, a \"plugins\" list or a list of \"- config:\" entries"
    }

    fn value(self, _cx: &Cx<'_>, value: Value) -> Result<Self::Out, String> {
        match value {
            Value::Null => Err(format!("no plugin configured (the document is empty); expected {}", self.expected())),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }

    fn map<A: MapAccess<'de>>(self, cx: &Cx<'_>, map: A) -> Result<Self::Out, A::Error> {
        Sec::<RootMap>::new().map(cx, map)
    }

    fn seq<A: SeqAccess<'de>>(self, cx: &Cx<'_>, seq: A) -> Result<Self::Out, A::Error> {
        Ok((Layout::List, PluginList.seq(cx, seq)?))
    }
}

/// The top-level map.
#[derive(Default)]
struct RootMap {
    config: Option<PluginConfig>,
    plugins: Option<Vec<PluginConfig>>,
    /// Whether the file has `wasm_plugins:` or `otoroshi:` (Otoroshi entities and settings,
    /// read by `extism::entity::document`): such a file may configure no Proxy-Wasm plugin.
    otoroshi: bool,
}

impl Section for RootMap {
    type Out = (Layout, Vec<PluginConfig>);

    const KEYS: &'static [&'static [&'static str]] = &[&["config"], &["plugins"], &["wasm_plugins"], &["otoroshi"]];

    fn read<'de, A: MapAccess<'de>>(&mut self, key: &'static str, cx: Cx<'_>, map: &mut A) -> Result<(), A::Error> {
        match key {
            "config" => {
                self.config = Some(map.next_value_seed(cx.at(Sec::<PluginSection>::new()))?);
            }
            "plugins" => self.plugins = Some(map.next_value_seed(cx.at(PluginList))?),
            // Read by the entity parser (`crate::extism::entity::document::parse`), which
            // skips `config` and `plugins` in turn.
            "wasm_plugins" | "otoroshi" => {
                map.next_value::<IgnoredAny>()?;
                self.otoroshi = true;
            }
            _ => unreachable!("key {key} is not in KEYS"),
        }
        Ok(())
    }

    fn finish(self, _cx: &Cx<'_>) -> Result<Self::Out, String> {
        match (self.config, self.plugins) {
            (Some(config), None) => Ok((Layout::Single, vec![config])),
            (None, Some(plugins)) => Ok((Layout::PluginsKey, plugins)),
            (Some(_), Some(_)) => Err("use either \"config\" or \"plugins\", not both".to_owned()),
            (None, None) if self.otoroshi => Ok((Layout::PluginsKey, Vec::new())),
            (None, None) => Err("no plugin configured; expected a \"config\" map or a \"plugins\" list".to_owned()),
        }
    }
}

/// A non-empty list of `- config:` entries.
struct PluginList;

impl<'de> Node<'de> for PluginList {
    type Out = Vec<PluginConfig>;

    fn expected(&self) -> &'static str {
        "a list of \"- config:\" entries"
    }

    fn value(self, _cx: &Cx<'_>, value: Value) -> Result<Self::Out, String> {
        match value {
            Value::Null => Err(format!("no plugin configured; expected {}", self.expected())),
            other => Err(wrong_type(self.expected(), &other)),
        }
    }

    fn seq<A: SeqAccess<'de>>(self, cx: &Cx<'_>, mut seq: A) -> Result<Self::Out, A::Error> {
        let mut plugins = Vec::new();
        while let Some(plugin) = seq.next_element_seed(cx.index(plugins.len()).at(Sec::<Entry>::new()))? {
            plugins.push(plugin);
        }
        if plugins.is_empty() {
            return Err(cx.fail(format!("no plugin configured; expected {}", self.expected())));
        }
        Ok(plugins)
    }
}

/// One list item: `config: {...}`.
#[derive(Default)]
struct Entry {
    config: Option<PluginConfig>,
}

impl Section for Entry {
    type Out = PluginConfig;

    const KEYS: &'static [&'static [&'static str]] = &[&["config"]];

    fn read<'de, A: MapAccess<'de>>(&mut self, key: &'static str, cx: Cx<'_>, map: &mut A) -> Result<(), A::Error> {
        match key {
            "config" => {
                self.config = Some(map.next_value_seed(cx.at(Sec::<PluginSection>::new()))?);
            }
            _ => unreachable!("key {key} is not in KEYS"),
        }
        Ok(())
    }

    fn finish(self, _cx: &Cx<'_>) -> Result<PluginConfig, String> {
        required(self.config, "config")
    }
}

/// `config`: one plugin.
#[derive(Default)]
struct PluginSection {
    name: Option<String>,
    root_id: Option<String>,
    configuration: Option<Vec<u8>>,
    fail_open: Option<bool>,
    failure_policy: Option<FailurePolicy>,
    pause_timeout: Option<std::time::Duration>,
    max_body_size: Option<u64>,
    allowed_capabilities: Option<Vec<String>>,
    authorizations: Option<Authorizations>,
    vm: Option<VmConfig>,
}

impl Section for PluginSection {
    type Out = PluginConfig;

    const KEYS: &'static [&'static [&'static str]] = &[
        &["name"],
        &["root_id", "rootId"],
        &["configuration"],
        &["fail_open", "failOpen"],
        &["failure_policy", "failurePolicy"],
        &["pause_timeout", "pauseTimeout"],
        &["max_body_size", "maxBodySize"],
        &["capability_restriction_config", "capabilityRestrictionConfig"],
        &["authorizations"],
        &["vm_config", "vmConfig"],
    ];

    fn read<'de, A: MapAccess<'de>>(&mut self, key: &'static str, cx: Cx<'_>, map: &mut A) -> Result<(), A::Error> {
        match key {
            "name" => self.name = Some(map.next_value_seed(cx.at(Text::NON_EMPTY))?),
            "root_id" => self.root_id = Some(map.next_value_seed(cx.at(Text::ANY))?),
            "configuration" => self.configuration = Some(map.next_value_seed(cx.at(Payload))?),
            "fail_open" => self.fail_open = map.next_value_seed(cx.at(Flag))?,
            "failure_policy" => self.failure_policy = map.next_value_seed(cx.at(Policy))?,
            "pause_timeout" => self.pause_timeout = map.next_value_seed(cx.at(Timeout))?,
            "max_body_size" => self.max_body_size = map.next_value_seed(cx.at(ByteSize))?,
            "authorizations" => {
                self.authorizations = Some(map.next_value_seed(cx.at(Sec::<AuthorizationsSection>::new()))?);
            }
            "capability_restriction_config" => {
                self.allowed_capabilities = map.next_value_seed(cx.at(Sec::<CapabilitySection>::new()))?;
            }
            "vm_config" => self.vm = Some(map.next_value_seed(cx.at(Sec::<VmSection>::new()))?),
            _ => unreachable!("key {key} is not in KEYS"),
        }
        Ok(())
    }

    fn finish(self, cx: &Cx<'_>) -> Result<PluginConfig, String> {
        let failure_policy = match (self.fail_open, self.failure_policy) {
            (Some(_), Some(_)) => {
                return Err("both fail_open and failure_policy are given; expected only one of them \
                     (failure_policy: fail_closed, fail_open or reload)"
                    .to_owned())
            }
            (_, Some(policy)) => policy,
            (Some(true), None) => FailurePolicy::FailOpen,
            _ => FailurePolicy::FailClosed,
        };
        let mut authorizations = self.authorizations.unwrap_or_default();
        authorizations.capabilities = self.allowed_capabilities.clone().map(|names| names.into_iter().collect());
        Ok(PluginConfig {
            name: required(self.name, "name")?,
            vm: required(self.vm, "vm_config")?,
            root_id: self.root_id.unwrap_or_default(),
            configuration: self.configuration.unwrap_or_default(),
            failure_policy,
            pause_timeout: self.pause_timeout.unwrap_or(PluginConfig::DEFAULT_PAUSE_TIMEOUT),
            max_body_size: self.max_body_size.unwrap_or(PluginConfig::DEFAULT_MAX_BODY_SIZE),
            authorizations,
            allowed_capabilities: self.allowed_capabilities,
            // The line is filled in by `parse`, which can find it in the text.
            origin: ConfigOrigin { file: cx.file.to_path_buf(), line: 0 },
        })
    }
}

/// `authorizations` (our extension): what the plugin may touch.
#[derive(Default)]
struct AuthorizationsSection {
    allowed_hosts: Option<Vec<String>>,
    plugin_map_access: Option<Access>,
    global_map_access: Option<Access>,
    properties: Option<(Option<Vec<String>>, Option<Vec<String>>)>,
}

impl Section for AuthorizationsSection {
    type Out = Authorizations;

    const KEYS: &'static [&'static [&'static str]] = &[
        &["allowed_hosts", "allowedHosts"],
        &["plugin_map_access", "pluginMapAccess"],
        &["global_map_access", "globalMapAccess"],
        &["properties"],
    ];

    fn read<'de, A: MapAccess<'de>>(&mut self, key: &'static str, cx: Cx<'_>, map: &mut A) -> Result<(), A::Error> {
        match key {
            "allowed_hosts" => self.allowed_hosts = Some(map.next_value_seed(cx.at(TextList))?),
            "plugin_map_access" => {
                self.plugin_map_access = Some(map.next_value_seed(cx.at(Sec::<AccessSection>::new()))?);
            }
            "global_map_access" => {
                self.global_map_access = Some(map.next_value_seed(cx.at(Sec::<AccessSection>::new()))?);
            }
            "properties" => {
                self.properties = Some(map.next_value_seed(cx.at(Sec::<PropertiesSection>::new()))?);
            }
            _ => unreachable!("key {key} is not in KEYS"),
        }
        Ok(())
    }

    fn finish(self, _cx: &Cx<'_>) -> Result<Authorizations, String> {
        let mut a = Authorizations::default();
        if let Some(hosts) = self.allowed_hosts {
            a.allowed_hosts = hosts;
        }
        if let Some(access) = self.plugin_map_access {
            a.plugin_map_access = access;
        }
        if let Some(access) = self.global_map_access {
            a.global_map_access = access;
        }
        if let Some((read, write)) = self.properties {
            if let Some(read) = read {
                a.property_read = read;
            }
            if let Some(write) = write {
                a.property_write = write;
            }
        }
        Ok(a)
    }
}

/// `{ read: bool, write: bool }`; a right not written is not granted.
#[derive(Default)]
struct AccessSection {
    read: Option<bool>,
    write: Option<bool>,
}

impl Section for AccessSection {
    type Out = Access;

    const KEYS: &'static [&'static [&'static str]] = &[&["read"], &["write"]];

    fn read<'de, A: MapAccess<'de>>(&mut self, key: &'static str, cx: Cx<'_>, map: &mut A) -> Result<(), A::Error> {
        match key {
            "read" => self.read = map.next_value_seed(cx.at(Flag))?,
            "write" => self.write = map.next_value_seed(cx.at(Flag))?,
            _ => unreachable!("key {key} is not in KEYS"),
        }
        Ok(())
    }

    fn finish(self, _cx: &Cx<'_>) -> Result<Access, String> {
        Ok(Access { read: self.read.unwrap_or(false), write: self.write.unwrap_or(false) })
    }
}

/// `properties: { read: [paths], write: [paths] }`; a list not written keeps
/// its default (every property).
#[derive(Default)]
struct PropertiesSection {
    read: Option<Vec<String>>,
    write: Option<Vec<String>>,
}

impl Section for PropertiesSection {
    type Out = (Option<Vec<String>>, Option<Vec<String>>);

    const KEYS: &'static [&'static [&'static str]] = &[&["read"], &["write"]];

    fn read<'de, A: MapAccess<'de>>(&mut self, key: &'static str, cx: Cx<'_>, map: &mut A) -> Result<(), A::Error> {
        match key {
            "read" => self.read = Some(map.next_value_seed(cx.at(TextList))?),
            "write" => self.write = Some(map.next_value_seed(cx.at(TextList))?),
            _ => unreachable!("key {key} is not in KEYS"),
        }
        Ok(())
    }

    fn finish(self, _cx: &Cx<'_>) -> Result<Self::Out, String> {
        Ok((self.read, self.write))
    }
}

/// `capability_restriction_config`; `None` (no restriction) when nothing is listed.
#[derive(Default)]
struct CapabilitySection {
    allowed: Vec<String>,
}

impl Section for CapabilitySection {
    type Out = Option<Vec<String>>;

    const KEYS: &'static [&'static [&'static str]] = &[&["allowed_capabilities", "allowedCapabilities"]];

    fn read<'de, A: MapAccess<'de>>(&mut self, key: &'static str, cx: Cx<'_>, map: &mut A) -> Result<(), A::Error> {
        match key {
            "allowed_capabilities" => self.allowed = map.next_value_seed(cx.at(Capabilities))?,
            _ => unreachable!("key {key} is not in KEYS"),
        }
        Ok(())
    }

    fn finish(self, _cx: &Cx<'_>) -> Result<Self::Out, String> {
        Ok(Some(self.allowed).filter(|names| !names.is_empty()))
    }
}

/// `vm_config`.
#[derive(Default)]
struct VmSection {
    runtime: Option<RuntimeKind>,
    vm_id: Option<String>,
    configuration: Option<Vec<u8>>,
    allow_precompiled: Option<bool>,
    environment: Option<Vec<(String, String)>>,
    code: Option<CodeSource>,
    kill_options: Option<KillOptions>,
    limits: Option<(crate::runtime::Limits, Quotas)>,
}

impl Section for VmSection {
    type Out = VmConfig;

    const KEYS: &'static [&'static [&'static str]] = &[
        &["runtime"],
        &["vm_id", "vmId"],
        &["configuration"],
        &["allow_precompiled", "allowPrecompiled"],
        &["environment_variables", "environmentVariables"],
        &["code"],
        &["kill_options", "killOptions"],
        &["limits"],
    ];

    fn read<'de, A: MapAccess<'de>>(&mut self, key: &'static str, cx: Cx<'_>, map: &mut A) -> Result<(), A::Error> {
        match key {
            "runtime" => self.runtime = map.next_value_seed(cx.at(Runtime))?,
            "vm_id" => self.vm_id = Some(map.next_value_seed(cx.at(Text::ANY))?),
            "configuration" => self.configuration = Some(map.next_value_seed(cx.at(Payload))?),
            "allow_precompiled" => self.allow_precompiled = map.next_value_seed(cx.at(Flag))?,
            "environment_variables" => {
                self.environment = Some(map.next_value_seed(cx.at(Sec::<EnvironmentSection>::new()))?);
            }
            "code" => self.code = Some(map.next_value_seed(cx.at(Sec::<CodeSection>::new()))?),
            "kill_options" => {
                self.kill_options = Some(map.next_value_seed(cx.at(Sec::<KillOptionsSection>::new()))?);
            }
            "limits" => self.limits = Some(map.next_value_seed(cx.at(Sec::<LimitsSection>::new()))?),
            _ => unreachable!("key {key} is not in KEYS"),
        }
        Ok(())
    }

    fn finish(self, _cx: &Cx<'_>) -> Result<VmConfig, String> {
        Ok(VmConfig {
            code: required(self.code, "code")?,
            // Documented default: Wasmtime.
            runtime: self.runtime.unwrap_or_default(),
            vm_id: self.vm_id.unwrap_or_default(),
            configuration: self.configuration.unwrap_or_default(),
            allow_precompiled: self.allow_precompiled.unwrap_or(false),
            environment: self.environment.unwrap_or_default(),
            kill_options: self.kill_options.unwrap_or_default(),
            limits: self.limits.map(|l| l.0).unwrap_or_default(),
            quotas: self.limits.map(|l| l.1).unwrap_or_default(),
        })
    }
}

/// `vm_config.limits` (our extension): memory and time limits of each instance, and the
/// host-side caps ([`Quotas`]).
#[derive(Default)]
struct LimitsSection(crate::runtime::Limits, Quotas);

impl Section for LimitsSection {
    type Out = (crate::runtime::Limits, Quotas);

    const KEYS: &'static [&'static [&'static str]] = &[
        &["max_memory", "maxMemory"],
        &["callback_timeout", "callbackTimeout"],
        &["max_pending_http_calls", "maxPendingHttpCalls"],
        &["max_http_call_response_size", "maxHttpCallResponseSize"],
        &["max_queue_length", "maxQueueLength"],
        &["max_shared_data_size", "maxSharedDataSize"],
        &["max_metrics", "maxMetrics"],
        &["max_log_lines_per_second", "maxLogLinesPerSecond"],
        &["min_tick_period", "minTickPeriod"],
    ];

    fn read<'de, A: MapAccess<'de>>(&mut self, key: &'static str, cx: Cx<'_>, map: &mut A) -> Result<(), A::Error> {
        let q = &mut self.1;
        match key {
            "max_memory" => self.0.max_memory_bytes = map.next_value_seed(cx.at(MemorySize))?,
            "callback_timeout" => self.0.callback_timeout = map.next_value_seed(cx.at(Timeout))?,
            "max_pending_http_calls" => {
                q.max_pending_http_calls =
                    map.next_value_seed(cx.at(Count32))?.unwrap_or(Quotas::DEFAULT_MAX_PENDING_HTTP_CALLS);
            }
            "max_http_call_response_size" => {
                q.max_http_call_response_size =
                    map.next_value_seed(cx.at(ByteSize))?.unwrap_or(Quotas::DEFAULT_MAX_HTTP_CALL_RESPONSE_SIZE);
            }
            "max_queue_length" => {
                q.max_queue_length = map.next_value_seed(cx.at(Count32))?.unwrap_or(Quotas::DEFAULT_MAX_QUEUE_LENGTH);
            }
            "max_shared_data_size" => {
                q.max_shared_data_size =
                    map.next_value_seed(cx.at(ByteSize))?.unwrap_or(Quotas::DEFAULT_MAX_SHARED_DATA_SIZE);
            }
            "max_metrics" => {
                q.max_metrics = map.next_value_seed(cx.at(Count32))?.unwrap_or(Quotas::DEFAULT_MAX_METRICS);
            }
            "max_log_lines_per_second" => {
                q.max_log_lines_per_second =
                    map.next_value_seed(cx.at(Count32))?.unwrap_or(Quotas::DEFAULT_MAX_LOG_LINES_PER_SECOND);
            }
            "min_tick_period" => {
                q.min_tick_period = map.next_value_seed(cx.at(Timeout))?.unwrap_or(Quotas::DEFAULT_MIN_TICK_PERIOD);
            }
            _ => unreachable!("key {key} is not in KEYS"),
        }
        Ok(())
    }

    fn finish(self, _cx: &Cx<'_>) -> Result<(crate::runtime::Limits, Quotas), String> {
        Ok((self.0, self.1))
    }
}

/// `vm_config.kill_options` (our extension, Otoroshi's names): when an instance is recycled.
#[derive(Default)]
struct KillOptionsSection(KillOptions);

impl Section for KillOptionsSection {
    type Out = KillOptions;

    const KEYS: &'static [&'static [&'static str]] = &[
        &["max_calls", "maxCalls"],
        &["max_memory_usage", "maxMemoryUsage"],
        &["max_unused_duration", "maxUnusedDuration"],
    ];

    fn read<'de, A: MapAccess<'de>>(&mut self, key: &'static str, cx: Cx<'_>, map: &mut A) -> Result<(), A::Error> {
        match key {
            "max_calls" => self.0.max_calls = map.next_value_seed(cx.at(Count))?,
            "max_memory_usage" => self.0.max_memory_usage = map.next_value_seed(cx.at(Fraction))?,
            "max_unused_duration" => self.0.max_unused_duration = map.next_value_seed(cx.at(Timeout))?,
            _ => unreachable!("key {key} is not in KEYS"),
        }
        Ok(())
    }

    fn finish(self, _cx: &Cx<'_>) -> Result<KillOptions, String> {
        Ok(self.0)
    }
}

/// `environment_variables`.
#[derive(Default)]
struct EnvironmentSection {
    host: Vec<(String, String)>,
    fixed: Vec<(String, String)>,
}

impl Section for EnvironmentSection {
    type Out = Vec<(String, String)>;

    const KEYS: &'static [&'static [&'static str]] = &[&["host_env_keys", "hostEnvKeys"], &["key_values", "keyValues"]];

    fn read<'de, A: MapAccess<'de>>(&mut self, key: &'static str, cx: Cx<'_>, map: &mut A) -> Result<(), A::Error> {
        match key {
            "host_env_keys" => self.host = map.next_value_seed(cx.at(HostEnvKeys))?,
            "key_values" => self.fixed = map.next_value_seed(cx.at(KeyValues))?,
            _ => unreachable!("key {key} is not in KEYS"),
        }
        Ok(())
    }

    /// Host values first, then fixed ones; a fixed value replaces a host one in place, as in ATS
    /// where `key_values` is applied last.
    fn finish(self, _cx: &Cx<'_>) -> Result<Self::Out, String> {
        let mut environment: Vec<(String, String)> = Vec::new();
        for (name, value) in self.host.into_iter().chain(self.fixed) {
            match environment.iter_mut().find(|(taken, _)| *taken == name) {
                Some(slot) => slot.1 = value,
                None => environment.push((name, value)),
            }
        }
        Ok(environment)
    }
}

/// `code`: exactly one source, `local` or `remote`.
#[derive(Default)]
struct CodeSection {
    local: Option<CodeSource>,
    remote: Option<CodeSource>,
}

impl Section for CodeSection {
    type Out = CodeSource;

    const KEYS: &'static [&'static [&'static str]] = &[&["local"], &["remote"]];

    fn read<'de, A: MapAccess<'de>>(&mut self, key: &'static str, cx: Cx<'_>, map: &mut A) -> Result<(), A::Error> {
        match key {
            "local" => self.local = Some(map.next_value_seed(cx.at(Sec::<LocalSection>::new()))?),
            "remote" => {
                self.remote = Some(map.next_value_seed(cx.at(Sec::<RemoteSection>::new()))?);
            }
            _ => unreachable!("key {key} is not in KEYS"),
        }
        Ok(())
    }

    fn finish(self, _cx: &Cx<'_>) -> Result<CodeSource, String> {
        match (self.local, self.remote) {
            (Some(source), None) | (None, Some(source)) => Ok(source),
            (Some(_), Some(_)) => Err("use either \"local\" or \"remote\", not both".to_owned()),
            (None, None) => Err("missing code source; expected \"local\" or \"remote\"".to_owned()),
        }
    }
}

/// `code.local`: exactly one of `filename`, `inline_bytes` (base64) and `inline_string`, the
/// names of Envoy's `DataSource`.
#[derive(Default)]
struct LocalSection {
    sources: Vec<CodeSource>,
}

impl Section for LocalSection {
    type Out = CodeSource;

    const KEYS: &'static [&'static [&'static str]] =
        &[&["filename"], &["inline_bytes", "inlineBytes"], &["inline_string", "inlineString"]];

    fn read<'de, A: MapAccess<'de>>(&mut self, key: &'static str, cx: Cx<'_>, map: &mut A) -> Result<(), A::Error> {
        let source = match key {
            "filename" => map.next_value_seed(cx.at(CodeFile))?,
            "inline_bytes" => CodeSource::Inline(map.next_value_seed(cx.at(InlineBytes))?),
            "inline_string" => CodeSource::Inline(map.next_value_seed(cx.at(Text::NON_EMPTY))?.into_bytes()),
            _ => unreachable!("key {key} is not in KEYS"),
        };
        self.sources.push(source);
        Ok(())
    }

    fn finish(self, _cx: &Cx<'_>) -> Result<CodeSource, String> {
        let mut sources = self.sources.into_iter();
        match (sources.next(), sources.next()) {
            (Some(source), None) => Ok(source),
            (Some(_), Some(_)) => {
                Err("give only one of \"filename\", \"inline_bytes\" and \"inline_string\"".to_owned())
            }
            (None, _) => {
                Err("missing code; expected one of \"filename\", \"inline_bytes\" and \"inline_string\"".to_owned())
            }
        }
    }
}

/// `code.remote`: Envoy's `RemoteDataSource` (`http_uri` and `sha256`), with a plain `uri` as a
/// shorthand for `http_uri: { uri: ... }` and our `cache_dir`.
#[derive(Default)]
struct RemoteSection {
    http_uri: Option<(RemoteUri, Option<std::time::Duration>)>,
    uri: Option<RemoteUri>,
    sha256: Option<[u8; 32]>,
    cache_dir: Option<PathBuf>,
}

impl Section for RemoteSection {
    type Out = CodeSource;

    const KEYS: &'static [&'static [&'static str]] =
        &[&["http_uri", "httpUri"], &["uri"], &["sha256"], &["cache_dir", "cacheDir"]];

    fn read<'de, A: MapAccess<'de>>(&mut self, key: &'static str, cx: Cx<'_>, map: &mut A) -> Result<(), A::Error> {
        match key {
            "http_uri" => {
                self.http_uri = Some(map.next_value_seed(cx.at(Sec::<HttpUriSection>::new()))?);
            }
            "uri" => self.uri = Some(map.next_value_seed(cx.at(HttpUrl))?),
            "sha256" => self.sha256 = Some(map.next_value_seed(cx.at(Sha256Hex))?),
            "cache_dir" => self.cache_dir = Some(map.next_value_seed(cx.at(CacheDir))?),
            _ => unreachable!("key {key} is not in KEYS"),
        }
        Ok(())
    }

    fn finish(self, _cx: &Cx<'_>) -> Result<CodeSource, String> {
        let (uri, timeout) = match (self.http_uri, self.uri) {
            (Some(http_uri), None) => http_uri,
            (None, Some(uri)) => (uri, None),
            (Some(_), Some(_)) => return Err("use either \"http_uri\" or \"uri\", not both".to_owned()),
            (None, None) => return Err("missing required key \"http_uri\" (or its shorthand \"uri\")".to_owned()),
        };
        let sha256 = self
            .sha256
            .ok_or_else(|| "missing required key \"sha256\": remote code must be pinned by its SHA-256".to_owned())?;
        Ok(CodeSource::Remote(RemoteCode {
            uri: uri.uri,
            upstream: uri.upstream,
            authority: uri.authority,
            path: uri.path,
            timeout: timeout.unwrap_or(RemoteCode::DEFAULT_TIMEOUT),
            sha256,
            cache_dir: self.cache_dir,
        }))
    }
}

/// `code.remote.http_uri`: Envoy's `HttpUri`, without `cluster` (the host connects to the URL's
/// host and port itself).
#[derive(Default)]
struct HttpUriSection {
    uri: Option<RemoteUri>,
    timeout: Option<std::time::Duration>,
}

impl Section for HttpUriSection {
    type Out = (RemoteUri, Option<std::time::Duration>);

    const KEYS: &'static [&'static [&'static str]] = &[&["uri"], &["timeout"]];

    fn read<'de, A: MapAccess<'de>>(&mut self, key: &'static str, cx: Cx<'_>, map: &mut A) -> Result<(), A::Error> {
        match key {
            "uri" => self.uri = Some(map.next_value_seed(cx.at(HttpUrl))?),
            "timeout" => self.timeout = map.next_value_seed(cx.at(Timeout))?,
            _ => unreachable!("key {key} is not in KEYS"),
        }
        Ok(())
    }

    fn finish(self, _cx: &Cx<'_>) -> Result<Self::Out, String> {
        Ok((required(self.uri, "uri")?, self.timeout))
    }
}
