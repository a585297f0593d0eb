//! The db crate's errors: what went wrong, with the file, the server or the id it concerns.
//! A MySQL/MariaDB server is named `host:port/database`, never with its user or password.

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
    /// The MySQL/MariaDB server failed a statement or cannot be reached.
    Server { server: String, error: mysql::Error },
    /// The MySQL/MariaDB database cannot be used: a bad url, a schema this build does not
    /// know, a failed or interrupted migration.
    ServerSetup { server: String, reason: String },
    /// Another iceprod server holds the database's lock (`lock.rs`); `holder` says who
    /// (`pid 1234 on host h1`) and `key` is the `[db]` key that names the database.
    InUse {
        database: String,
        holder: String,
        key: &'static str,
    },
    /// The database's lock cannot be taken or recorded for another reason.
    Lock { database: String, reason: String },
    /// `[site] id` pins an id other than the one the database belongs to (`site.rs`).
    OtherSite {
        database: String,
        pinned: String,
        stored: String,
        key: &'static str,
    },
}

impl DbError {
    /// Whether retrying later may succeed without anyone changing anything: the server was
    /// unreachable or dropped the connection.
    pub fn is_connectivity(&self) -> bool {
        matches!(self, DbError::Server { error, .. } if error.is_connectivity_error())
    }
}

/// A mysql error as a person reads it: the server's own code and message, or the I/O or
/// driver failure, without the crate's `MySqlError { … }` wrapping.
pub fn describe_mysql(error: &mysql::Error) -> String {
    match error {
        mysql::Error::MySqlError(e) => format!("error {} ({}): {}", e.code, e.state, e.message),
        mysql::Error::IoError(e) => e.to_string(),
        mysql::Error::DriverError(e) => e.to_string(),
        mysql::Error::UrlError(e) => e.to_string(),
        other => other.to_string(),
    }
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
            DbError::Server { server, error } => {
                write!(f, "database server {server}: {}", describe_mysql(error))
            }
            DbError::ServerSetup { server, reason } => {
                write!(f, "cannot use database server {server}: {reason}")
            }
            DbError::InUse {
                database,
                holder,
                key,
            } => write!(
                f,
                "database {database} is in use by another iceprod server ({holder}); stop it \
                 or point [db] {key} elsewhere"
            ),
            DbError::Lock { database, reason } => {
                write!(f, "cannot lock database {database}: {reason}")
            }
            DbError::OtherSite {
                database,
                pinned,
                stored,
                key,
            } => write!(
                f,
                "database {database} belongs to site {stored}, but [site] id pins {pinned}; \
                 a database belongs to one site: set [site] id = \"{stored}\" (or remove it), \
                 or point [db] {key} at another database"
            ),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DbError::Sql(e) => Some(e),
            DbError::Server { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sql(e)
    }
}
