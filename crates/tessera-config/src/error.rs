//! The one error type of this crate. Every variant names the config file;
//! every variant about a value names its key path (`parallelism.devices[1]`),
//! the value found and what is allowed there.

use std::fmt;
use std::path::PathBuf;

/// A 1-based line and column in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

fn at(location: &Option<Location>) -> String {
    match location {
        Some(l) => format!(":{l}"),
        None => String::new(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the config file: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The text is not YAML (or holds more than one document).
    #[error("{}{}: not valid YAML: {message}", file.display(), at(location))]
    Syntax {
        file: PathBuf,
        location: Option<Location>,
        message: String,
    },

    /// The YAML does not fit the schema: an unknown or missing key, a value
    /// of the wrong type, or a value outside what the key accepts. `message`
    /// holds the bad value and what is allowed (e.g. ``unknown variant
    /// `safetensors`, expected one of `auto`, `hf`, `gguf`, `dummy` ``).
    #[error("{}{}: `{key}`: {message}", file.display(), at(location))]
    Schema {
        file: PathBuf,
        key: String,
        location: Option<Location>,
        message: String,
    },

    /// Every value fits the schema, but the combination is impossible
    /// (two workers and one device, `nccl` with cpu devices, ...).
    #[error("{}: `{key}` = {value}: {problem}; allowed: {allowed}", file.display())]
    Invalid {
        file: PathBuf,
        key: String,
        value: String,
        problem: String,
        allowed: String,
    },
}

impl ConfigError {
    /// The key path the error is about (`parallelism.devices[1]`), if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Schema { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
        }
    }

    /// The config file the error is about.
    pub fn file(&self) -> &std::path::Path {
        match self {
            ConfigError::Read { file, .. }
            | ConfigError::Syntax { file, .. }
            | ConfigError::Schema { file, .. }
            | ConfigError::Invalid { file, .. } => file,
        }
    }
}
