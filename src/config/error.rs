//! Configuration errors, and how our messages travel through `serde_yaml_ng`.
//!
//! `serde_yaml_ng` gives a position only to errors, and only to the ones raised while a node is
//! being deserialized: it then stamps the error with that node's line and column. So every check
//! that needs a position runs inside our `Deserialize` code and reports with `de::Error::custom`.
//! The custom message carries our key path and text between NUL characters ([`encode`]), which
//! [`decode`] takes back out of the finished error. YAML cannot contain NUL, so neither a key nor a
//! value quoted in a message can be mistaken for the separator.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Where something is in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// The file as it was given to the loader.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
}

impl Position {
    fn new(file: &Path, location: Option<&serde_yaml_ng::Location>) -> Self {
        Position {
            file: file.to_path_buf(),
            line: location.map(serde_yaml_ng::Location::line),
            column: location.map(serde_yaml_ng::Location::column),
        }
    }
}

impl fmt::Display for Position {
    /// `file`, `file:line` or `file:line:column`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

/// Why a configuration could not be loaded. The `Display` text is meant for operators:
/// `<file>:<line>:<column>: <key path>: <what is wrong / what was expected>`.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("{}: cannot read: {}", .file.display(), os_reason(.source))]
    Read {
        /// The file as it was given.
        file: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The text is not valid YAML (or holds several YAML documents).
    #[error("{at}: invalid YAML: {message}")]
    Syntax {
        /// Where the parser stopped.
        at: Position,
        /// The parser's complaint.
        message: String,
    },
    /// The YAML is well formed but does not describe valid plugins.
    #[error("{at}: {key}: {message}")]
    Invalid {
        /// Where the offending key or value is.
        at: Position,
        /// Dotted key path with canonical names, like `config.vm_config.runtime`.
        key: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

impl ConfigError {
    /// Where the error is, when it is about a place in a file.
    #[must_use]
    pub fn position(&self) -> Option<&Position> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { at, .. } | ConfigError::Invalid { at, .. } => Some(at),
        }
    }
}

/// The text of an OS error without Rust's ` (os error N)` suffix, which says nothing to operators.
pub(super) fn os_reason(error: &io::Error) -> String {
    let text = error.to_string();
    match (error.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(cut)) => text[..cut].to_owned(),
        _ => text,
    }
}

const SEPARATOR: char = '\0';

/// The `de::Error::custom` message for a problem at `path` (see the module comment).
pub(super) fn encode(path: &str, message: impl fmt::Display) -> String {
    format!("{SEPARATOR}{path}{SEPARATOR}{message}")
}

/// Turns a `serde_yaml_ng` error into ours: one raised through [`encode`] becomes
/// [`ConfigError::Invalid`], anything else (the parser's own) [`ConfigError::Syntax`].
pub(super) fn decode(error: &serde_yaml_ng::Error, file: &Path) -> ConfigError {
    let location = error.location();
    let mut text = error.to_string();
    // serde_yaml_ng appends "at line L column C"; we print the position in front instead.
    if let Some(l) = &location {
        text = text.replacen(&format!(" at line {} column {}", l.line(), l.column()), "", 1);
    }
    let at = Position::new(file, location.as_ref());
    // Before the first separator is serde_yaml_ng's own path, spelled as in the file: drop it.
    match text.split_once(SEPARATOR) {
        Some((_, ours)) => {
            let (key, message) = ours.split_once(SEPARATOR).unwrap_or(("", ours));
            ConfigError::Invalid { at, key: display_key(key), message: message.to_owned() }
        }
        None => ConfigError::Syntax { at, message: text },
    }
}

/// A problem found outside deserialization, at a position found some other way.
pub(super) fn invalid(at: Position, key: &str, message: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid { at, key: display_key(key), message: message.to_string() }
}

/// The key path as printed: the document root has no key, so it gets a name.
fn display_key(path: &str) -> String {
    if path.is_empty() {
        "top level".to_owned()
    } else {
        path.to_owned()
    }
}
