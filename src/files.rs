//! The files the servers read: each file read with the parser its shape calls for (a Proxy-Wasm
//! YAML file, [`crate::config`]; an Otoroshi entity file, [`crate::extism::entity::document`]),
//! gathered into one load ([`Loaded`]) with the rules that span files (names unique across plugins
//! and entities, `local` sources resolvable).
//!
//! This sits above both parsers so that the Proxy-Wasm configuration does not depend on the
//! Otoroshi layer (which itself uses the configuration's errors and types).

use std::fs;
use std::path::{Path, PathBuf};

use crate::config::{append_plugins, check_flow_depth, ConfigError, PluginConfig, Position};

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
    /// Plugins and entities in the order the files give them (the files in the order given; in
    /// a file, by line), for the chains that run all of a load (Traffic Server).
    pub order: Vec<Member>,
}

/// A member of a [`Loaded`]: its index among the plugins or among the entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    Plugin(usize),
    Entity(usize),
}

impl Loaded {
    /// Chain indexes of every plugin and entity, in file order (`plugins.len() + i` is entity
    /// `i`, as in `PluginSet::with_entities`).
    #[must_use]
    pub fn chain_order(&self) -> Vec<usize> {
        self.order
            .iter()
            .map(|m| match *m {
                Member::Plugin(i) => i,
                Member::Entity(i) => self.plugins.len() + i,
            })
            .collect()
    }
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
    let (plugins_before, entities_before) = (loaded.plugins.len(), loaded.entities.len());
    append_file_members(loaded, text, file)?;
    // This file's members by line (a plugin first when an entity has no line).
    let mut members: Vec<(usize, Member)> = (plugins_before..loaded.plugins.len())
        .map(|i| (loaded.plugins[i].origin.line, Member::Plugin(i)))
        .chain((entities_before..loaded.entities.len()).map(|i| (loaded.entities[i].line, Member::Entity(i))))
        .collect();
    members.sort_by_key(|(line, _)| *line);
    loaded.order.extend(members.into_iter().map(|(_, m)| m));
    Ok(())
}

fn append_file_members(loaded: &mut Loaded, text: &str, file: &Path) -> Result<(), ConfigError> {
    use crate::extism::entity::document::{self, Layout};
    // Before anything parses the text (sniffing does): deep brackets cost libyaml quadratic time.
    check_flow_depth(text, file)?;
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
