//! The runtime's error type: why a module could not run. (Why a config is refused is the
//! model's `ConfigError`.)

use std::fmt;
use std::io;

/// Why a module failed to start or its loop ended with an error.
#[derive(Debug)]
pub enum ModuleError {
    /// An OS call failed; `what` says what was being done (`binding 127.0.0.1:8080`).
    Io {
        /// What was being done, in a few words.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// The module's config cannot be applied.
    Config(String),
    /// Something the module depends on broke and a restart is the remedy.
    Broken(String),
}

impl ModuleError {
    /// An [`ModuleError::Io`] while doing `what` (`binding 127.0.0.1:8080`).
    pub fn io(what: impl Into<String>, source: io::Error) -> ModuleError {
        ModuleError::Io {
            what: what.into(),
            source,
        }
    }
}

impl fmt::Display for ModuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModuleError::Io { what, source } => write!(f, "{what}: {source}"),
            ModuleError::Config(msg) => write!(f, "config: {msg}"),
            ModuleError::Broken(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for ModuleError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ModuleError::Io { source, .. } => Some(source),
            ModuleError::Config(_) | ModuleError::Broken(_) => None,
        }
    }
}
