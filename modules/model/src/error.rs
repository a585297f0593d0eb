//! Why a config file is refused.

use std::fmt;
use std::path::PathBuf;

/// Why a config file is refused. Names the file, and the key and line where one is known.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The config file that was read, as the server was given it (made absolute when parsed).
    pub file: PathBuf,
    /// 1-based line of the fault (for a key not written, its table's header); `None`: unknown.
    pub line: Option<usize>,
    /// The dotted key at fault (`queue.grids.local.max_running`); `None` when none is known.
    pub key: Option<String>,
    /// What is wrong, for the person who edits the file (`must be at least 1`).
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ", key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}
