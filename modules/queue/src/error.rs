//! The queue crate's one error type: what went wrong with a grid command or its output,
//! worded for the operator who reads it in `iceprod ctl status` and the site page.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum QueueError {
    /// The tool could not be started (missing from PATH, not executable).
    Spawn { program: String, message: String },
    /// The tool ran longer than `[queue] command_timeout` and was killed.
    Timeout { program: String, seconds: u64 },
    /// The tool exited non-zero (or by a signal); its stderr, shortened.
    Exit {
        program: String,
        code: Option<i32>,
        stderr: String,
    },
    /// The tool's output could not be read; nothing was changed because of it.
    Parse { program: String, message: String },
    /// Writing a submit folder or file failed.
    Io { what: String, message: String },
}

impl QueueError {
    pub fn parse(program: &str, message: impl Into<String>) -> QueueError {
        QueueError::Parse {
            program: program.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::Spawn { program, message } => write!(f, "cannot run {program}: {message}"),
            QueueError::Timeout { program, seconds } => {
                write!(
                    f,
                    "{program} did not finish within {seconds} s and was killed"
                )
            }
            QueueError::Exit {
                program,
                code,
                stderr,
            } => {
                match code {
                    Some(c) => write!(f, "{program} exited with {c}")?,
                    None => write!(f, "{program} was killed by a signal")?,
                }
                if !stderr.trim().is_empty() {
                    write!(f, ": {}", stderr.trim())?;
                }
                Ok(())
            }
            QueueError::Parse { program, message } => {
                write!(f, "cannot read the output of {program}: {message}")
            }
            QueueError::Io { what, message } => write!(f, "{what}: {message}"),
        }
    }
}

impl std::error::Error for QueueError {}
