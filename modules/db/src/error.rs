//! The db crate's errors: what went wrong, with the file or the id it concerns.

use std::fmt;
use std::path::PathBuf;

use r2d2_sqlite::rusqlite;

#[derive(Debug)]
pub enum DbError {
    /// The database file cannot be opened, created or migrated.
    Open { file: PathBuf, reason: String },
    /// A query failed.
    Sql(rusqlite::Error),
    /// No connection could be had from the pool.
    Pool(String),
    /// The id names no row.
    NotFound { what: &'static str, id: String },
    /// The request contradicts the state it meets (an illegal transition, a revoked key).
    Refused(String),
    /// The caller's passkey does not allow the request.
    Forbidden(String),
    /// A stored value is not what the schema promises (a bug or a hand-edited database).
    Schema(String),
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Open { file, reason } => {
                write!(f, "cannot open database {}: {reason}", file.display())
            }
            DbError::Sql(e) => write!(f, "database error: {e}"),
            DbError::Pool(e) => write!(f, "no database connection: {e}"),
            DbError::NotFound { what, id } => write!(f, "no {what} {id}"),
            DbError::Refused(why) | DbError::Forbidden(why) => f.write_str(why),
            DbError::Schema(what) => write!(f, "unexpected stored value: {what}"),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DbError::Sql(e) => Some(e),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sql(e)
    }
}
