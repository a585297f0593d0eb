//! Why a dataset config is refused ([`DatasetError`], collected in [`DatasetErrors`]) and why an
//! expression cannot be parsed or evaluated ([`ExprError`]).
//!
//! Every dataset error names where it is: a line and column for text that is not JSON, else a
//! path like `tasks[1].depends[0]`, so the person who wrote the config can find it.

use std::fmt;

/// One thing wrong with a dataset config.
#[derive(Clone, Debug, PartialEq)]
pub enum DatasetError {
    /// The text is not JSON, or nests deeper than the JSON reader allows. 1-based position.
    Syntax {
        /// Line where the JSON reader stopped, from 1.
        line: usize,
        /// Column in that line, from 1.
        column: usize,
        /// The JSON reader's reason, without its own ` at line L column C`.
        message: String,
    },
    /// A value has the wrong JSON type, e.g. a string where a list belongs.
    Type {
        /// Path of the value, e.g. `tasks[1].depends[0]`; empty for the whole document.
        path: String,
        /// The reader's reason, e.g. `invalid type: string "a", expected a sequence`.
        message: String,
    },
    /// A value has the right type but breaks a rule of the config.
    Invalid {
        /// Path of the value, e.g. `tasks[1].depends[0]`; empty for the whole document.
        path: String,
        /// The rule it breaks, for the person who wrote the config.
        reason: String,
    },
    /// A string holds an expression that does not parse, or (when evaluating requirements)
    /// does not evaluate.
    Expression {
        /// Path of the string that holds the expression.
        path: String,
        /// Why it does not parse or evaluate.
        error: ExprError,
    },
    /// An error found while evaluating the config for one job (see
    /// [`crate::dataset::Job::check_jobs`]): values may differ from job to job.
    InJob {
        /// The job's index.
        job: u32,
        /// What went wrong, with its path.
        error: Box<DatasetError>,
    },
}

impl DatasetError {
    pub(crate) fn invalid(path: impl Into<String>, reason: impl Into<String>) -> DatasetError {
        DatasetError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Where the error is: a path, or `line L column C` for a syntax error.
    pub fn location(&self) -> String {
        match self {
            DatasetError::Syntax { line, column, .. } => format!("line {line} column {column}"),
            DatasetError::Type { path, .. }
            | DatasetError::Invalid { path, .. }
            | DatasetError::Expression { path, .. } => path.clone(),
            DatasetError::InJob { error, .. } => error.location(),
        }
    }

    /// The path of the offending value (empty for a syntax error or the whole document).
    pub fn path(&self) -> &str {
        match self {
            DatasetError::Syntax { .. } => "",
            DatasetError::Type { path, .. }
            | DatasetError::Invalid { path, .. }
            | DatasetError::Expression { path, .. } => path,
            DatasetError::InJob { error, .. } => error.path(),
        }
    }
}

impl fmt::Display for DatasetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetError::Syntax {
                line,
                column,
                message,
            } => write!(f, "line {line} column {column}: not JSON: {message}"),
            DatasetError::Type { path, message } => write!(f, "{}: {message}", or_root(path)),
            DatasetError::Invalid { path, reason } => write!(f, "{}: {reason}", or_root(path)),
            DatasetError::Expression { path, error } => {
                write!(f, "{}: bad expression: {error}", or_root(path))
            }
            DatasetError::InJob { job, error } => write!(f, "{error} (for job {job})"),
        }
    }
}

impl std::error::Error for DatasetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DatasetError::Expression { error, .. } => Some(error),
            DatasetError::InJob { error, .. } => Some(error.as_ref()),
            _ => None,
        }
    }
}

fn or_root(path: &str) -> &str {
    if path.is_empty() {
        "(top level)"
    } else {
        path
    }
}

/// Every error found in one config, in the order found. Never empty.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetErrors(pub Vec<DatasetError>);

impl DatasetErrors {
    /// The errors, in the order found.
    pub fn iter(&self) -> std::slice::Iter<'_, DatasetError> {
        self.0.iter()
    }

    /// How many errors there are (at least one).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false for errors returned by validation, which never returns none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for DatasetErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "the dataset config is refused: {one}"),
            all => {
                write!(f, "the dataset config is refused ({} errors):", all.len())?;
                for e in all {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for DatasetErrors {}

impl From<DatasetError> for DatasetErrors {
    fn from(e: DatasetError) -> Self {
        DatasetErrors(vec![e])
    }
}

/// Why an expression cannot be parsed or evaluated.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprError {
    /// A `$name(` or an index `[` is never closed. `opened` is what opened it (`$eval(`),
    /// `offset` the byte where it starts.
    Unterminated {
        /// The text that opened it: `$eval(`, `$(` or `[`.
        opened: String,
        /// Byte offset in the string where it opened.
        offset: usize,
    },
    /// `$name(…)` with a name that is not one of the functions.
    UnknownFunction {
        /// The name as written after `$`.
        name: String,
    },
    /// `$(name)` found in no parameters, top-level field or option.
    UnknownName {
        /// The name inside `$(…)`.
        name: String,
    },
    /// `$steering(x)`, `$system(x)`, `$environ(x)`, `$options(x)` or `$metadata(x)` has no `x`.
    NotFound {
        /// The function, by its name after `$` (`options` for `$args` too).
        function: &'static str,
        /// The `x` that was not found.
        key: String,
    },
    /// A function got an argument it cannot use (`$sum(abc)`, a bad `$sprintf` format, …).
    BadArgument {
        /// The function, by its name after `$`.
        function: &'static str,
        /// What is wrong with the argument.
        message: String,
    },
    /// `$eval(…)` is not arithmetic.
    Arithmetic {
        /// What is wrong with the arithmetic (an unexpected token, a bad number, …).
        message: String,
    },
    /// `$eval(…)` divides by zero.
    DivisionByZero,
    /// A result is too large to represent (`$eval(10**10**10)`).
    Overflow,
    /// Expressions nest (or refer to each other) more than [`crate::dataset::MAX_DEPTH`] deep.
    TooDeep,
    /// Expansion would take too much work or produce too much text (a guard against configs
    /// whose parameters refer to each other many times over).
    TooLarge {
        /// The limit hit, worded to follow `expansion` (`produces more than 16 MiB of text`).
        what: &'static str,
    },
    /// Evaluation ran past its time limit ([`crate::dataset::expr::MAX_TIME`], or the deadline
    /// of a whole config's check).
    TooSlow,
    /// Where in a JSON value the error happened (from [`crate::dataset::expand_value`]).
    InValue {
        /// Path inside the value (`a.b[0]`); empty for the value itself.
        path: String,
        /// What went wrong there.
        error: Box<ExprError>,
    },
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExprError::Unterminated { opened, offset } => {
                write!(f, "`{opened}` at byte {offset} is never closed")
            }
            ExprError::UnknownFunction { name } => write!(
                f,
                "unknown function `${name}(…)`; the functions are steering, system, environ, \
                 args, options, metadata, eval, choice, sprintf, sum, min, max and len"
            ),
            ExprError::UnknownName { name } => write!(
                f,
                "`$({name})` names no parameter, top-level field or option"
            ),
            ExprError::NotFound { function, key } => write!(f, "`${function}({key})`: no `{key}`"),
            ExprError::BadArgument { function, message } => write!(f, "`${function}`: {message}"),
            ExprError::Arithmetic { message } => write!(f, "`$eval`: {message}"),
            ExprError::DivisionByZero => f.write_str("`$eval`: division by zero"),
            ExprError::Overflow => f.write_str("a number is too large (integers have 128 bits)"),
            ExprError::TooDeep => write!(
                f,
                "expressions nest more than {} deep (do two parameters refer to each other?)",
                crate::dataset::MAX_DEPTH
            ),
            ExprError::TooLarge { what } => write!(f, "expansion {what}"),
            ExprError::TooSlow => write!(
                f,
                "evaluation takes too long (more than {} s; do parameters refer to each other \
                 many times?)",
                crate::dataset::expr::MAX_TIME.as_secs()
            ),
            ExprError::InValue { path, error } => {
                if path.is_empty() {
                    write!(f, "{error}")
                } else {
                    write!(f, "{path}: {error}")
                }
            }
        }
    }
}

impl std::error::Error for ExprError {}
