//! The MySQL/MariaDB backend: the server named by `db.url`, its migrations (version kept in
//! the `schema_version` table), the pool of connections the reader workers and the writer
//! share, and [`MysqlTx`], the [`Tx`] every operation runs on there.
//!
//! The server is named `host:port/database` in every message, never with its user or password.
//!
//! Durability rule: InnoDB with its default `innodb_flush_log_at_trx_commit=1` writes and
//! flushes its redo log at every `COMMIT`, so a write acknowledged after its commit survives a
//! crash of the server or its machine (with the binary log on, `sync_binlog=1` is needed too).
//! Those are the server operator's settings: the module checks them at start and logs a warning
//! when they are weaker.
//!
//! A connection the server dropped (restart, `KILL`, network) fails the transaction it was in:
//! the server rolls back what was not committed, and its callers hear `Failed`. The pool pings
//! a connection before handing it out and replaces a dead one, so the next request reconnects.
//! One case stays ambiguous, as with any client/server database: a connection lost while its
//! `COMMIT` was on the wire may have committed. Its callers hear `Failed` too, and should
//! treat the outcome as unknown (read before retrying).

use std::sync::Arc;
use std::time::Duration;

use iceprod_runtime::config::DbConfig;
use mysql::prelude::Queryable;
use mysql::{
    AccessMode, Conn, Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, PooledConn,
    TxOpts, Value,
};

use crate::error::DbError;
use crate::schema::{mysql_statements, newest_version, MIGRATIONS};
use crate::sql::{Backend, Row, SqlValue, Tx};
use crate::workers::{Access, Store, WorkerTx};

/// How long to wait for the TCP connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a statement may go unanswered before its connection is given up (a server or
/// network that hangs instead of closing). Longer than InnoDB's default 50 s lock wait, so a
/// lock wait ends with the server's own error first.
const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// Prepared statements kept per connection: more than the operations use, so each is
/// prepared once per connection.
const STATEMENT_CACHE: usize = 256;

/// Every session speaks SQLite's dialect where MySQL's default differs: `||` concatenates and
/// `"x"` names a column (`PIPES_AS_CONCAT`, `ANSI_QUOTES`), and a value that does not fit its
/// column is an error, not silently truncated (`STRICT_ALL_TABLES`).
const SESSION_SQL_MODE: &str = "SET SESSION sql_mode = 'STRICT_ALL_TABLES,\
     ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION,PIPES_AS_CONCAT,ANSI_QUOTES'";

/// The server and database `db.url` names, with the connection options every connection gets.
#[derive(Clone)]
pub struct MysqlServer {
    opts: Opts,
    /// `host:port/database`, for messages.
    label: Arc<str>,
}

impl MysqlServer {
    /// The server of a `[db]` section with backend `mysql`.
    pub fn from_config(config: &DbConfig) -> Result<MysqlServer, DbError> {
        let url = config.url.as_deref().ok_or_else(|| DbError::ServerSetup {
            server: "(none)".into(),
            reason: "db.url is not set".into(),
        })?;
        MysqlServer::from_url(url)
    }

    /// Parses `mysql://USER:PASSWORD@HOST:PORT/DATABASE` (user and password percent-encoded).
    /// Errors never repeat the url, which holds the password.
    pub fn from_url(url: &str) -> Result<MysqlServer, DbError> {
        let parsed = Opts::from_url(url).map_err(|e| DbError::ServerSetup {
            server: "(db.url)".into(),
            reason: format!("db.url is not a usable mysql:// url: {e}"),
        })?;
        let label = format!(
            "{}:{}/{}",
            parsed.get_ip_or_hostname(),
            parsed.get_tcp_port(),
            parsed.get_db_name().unwrap_or("")
        );
        if parsed.get_db_name().is_none_or(str::is_empty) {
            return Err(DbError::ServerSetup {
                server: label,
                reason: "db.url names no database (mysql://USER:PASSWORD@HOST:PORT/DATABASE)"
                    .into(),
            });
        }
        let opts = OptsBuilder::from_opts(parsed)
            .tcp_connect_timeout(Some(CONNECT_TIMEOUT))
            .read_timeout(Some(IO_TIMEOUT))
            .write_timeout(Some(IO_TIMEOUT))
            .stmt_cache_size(STATEMENT_CACHE)
            // UPDATE reports the rows it matched, as SQLite does, not only those whose value
            // changed: an operation that rewrites a row with the same value still sees 1.
            .additional_capabilities(mysql::consts::CapabilityFlags::CLIENT_FOUND_ROWS)
            .init(vec![SESSION_SQL_MODE]);
        Ok(MysqlServer {
            opts: opts.into(),
            label: label.into(),
        })
    }

    /// `host:port/database`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The database's name (never empty: `from_url` refuses a url without one).
    pub fn database(&self) -> &str {
        self.opts.get_db_name().unwrap_or("")
    }

    fn error(&self, error: mysql::Error) -> DbError {
        DbError::Server {
            server: self.label.to_string(),
            error,
        }
    }

    fn setup_error(&self, reason: impl Into<String>) -> DbError {
        DbError::ServerSetup {
            server: self.label.to_string(),
            reason: reason.into(),
        }
    }

    /// One connection of its own, outside any pool.
    pub fn connect(&self) -> Result<Conn, DbError> {
        Conn::new(self.opts.clone()).map_err(|e| self.error(e))
    }

    /// Brings the database to this build's schema and returns the versions it applied.
    ///
    /// MySQL commits every DDL statement on its own, so a migration cannot be one transaction
    /// as on SQLite. Instead its row in `schema_version` is written `complete = 0` before its
    /// first statement and set to 1 after its last; a database with an incomplete migration
    /// (a crash or an error half-way) is refused rather than guessed at. A named lock keeps
    /// two servers starting at once from migrating together.
    pub fn migrate(&self) -> Result<Vec<u32>, DbError> {
        let mut conn = self.connect()?;
        // Lock names are server-wide and at most 64 characters on MySQL: the database name,
        // cut short (two databases sharing 48 leading characters only wait for each other).
        let locked: Option<Option<i64>> = conn
            .query_first("SELECT GET_LOCK(CONCAT('iceprod.', LEFT(DATABASE(), 48)), 60)")
            .map_err(|e| self.error(e))?;
        if locked.flatten() != Some(1) {
            return Err(self.setup_error(
                "another process has been migrating this database for 60 s; try again",
            ));
        }
        // The lock ends with the connection, whichever way this returns.
        let applied = self.migrate_locked(&mut conn)?;
        self.check_durability(&mut conn);
        Ok(applied)
    }

    fn migrate_locked(&self, conn: &mut Conn) -> Result<Vec<u32>, DbError> {
        let has_versions: Option<i64> = conn
            .query_first(
                "SELECT 1 FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name = 'schema_version'",
            )
            .map_err(|e| self.error(e))?;
        if has_versions.is_none() {
            self.refuse_foreign_tables(conn)?;
        }
        conn.query_drop(
            "CREATE TABLE IF NOT EXISTS schema_version (
                version  INT NOT NULL PRIMARY KEY,
                applied  VARCHAR(64) NOT NULL,
                complete TINYINT NOT NULL
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
        )
        .map_err(|e| self.error(e))?;
        let rows: Vec<(i64, i64)> = conn
            .query("SELECT version, complete FROM schema_version ORDER BY version")
            .map_err(|e| self.error(e))?;
        if let Some((v, _)) = rows.iter().find(|(_, complete)| *complete == 0) {
            return Err(self.setup_error(format!(
                "migration {v} was interrupted (MySQL cannot roll back schema changes); \
                 restore the database from a backup, or drop it and start again"
            )));
        }
        let version = rows.iter().map(|(v, _)| *v).max().unwrap_or(0);
        let newest = newest_version();
        if version > i64::from(newest) {
            return Err(self.setup_error(format!(
                "its schema version {version} is newer than this build knows ({newest})"
            )));
        }
        let mut applied = Vec::new();
        for m in MIGRATIONS.iter().filter(|m| i64::from(m.version) > version) {
            let v = m.version;
            conn.exec_drop(
                "INSERT INTO schema_version (version, applied, complete) VALUES (?, ?, 0)",
                (v, crate::ops::now()),
            )
            .map_err(|e| self.error(e))?;
            for statement in mysql_statements(m.mysql) {
                conn.query_drop(&statement).map_err(|e| {
                    let first_line = statement.lines().next().unwrap_or("");
                    self.setup_error(format!(
                        "migration {v} failed at `{first_line}`: {}",
                        crate::error::describe_mysql(&e)
                    ))
                })?;
            }
            conn.exec_drop(
                "UPDATE schema_version SET complete = 1 WHERE version = ?",
                (v,),
            )
            .map_err(|e| self.error(e))?;
            log::info!("db: {} migrated to schema version {v}", self.label);
            applied.push(v);
        }
        Ok(applied)
    }

    /// A database without `schema_version` must be empty: migration 1 would otherwise fail
    /// half-way on a table someone else owns. Checked before creating anything there.
    fn refuse_foreign_tables(&self, conn: &mut Conn) -> Result<(), DbError> {
        let tables: Vec<String> = conn
            .query(
                "SELECT table_name FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name <> 'schema_version' \
                 ORDER BY table_name LIMIT 5",
            )
            .map_err(|e| self.error(e))?;
        if tables.is_empty() {
            Ok(())
        } else {
            Err(self.setup_error(format!(
                "the database has tables ({}) but no iceprod schema version; \
                 give iceprod a database of its own",
                tables.join(", ")
            )))
        }
    }

    /// Logs a warning when the server's settings do not make a commit durable (see the module
    /// doc). Only a warning: they are the operator's to choose.
    fn check_durability(&self, conn: &mut Conn) {
        let settings: Result<Option<(i64, i64, i64)>, _> =
            conn.query_first("SELECT @@innodb_flush_log_at_trx_commit, @@log_bin, @@sync_binlog");
        match settings {
            Ok(Some((flush, log_bin, sync_binlog))) => {
                if flush != 1 {
                    log::warn!(
                        "db: {}: innodb_flush_log_at_trx_commit = {flush}; acknowledged writes \
                         may be lost in a crash (1 makes every commit durable)",
                        self.label
                    );
                }
                if log_bin != 0 && sync_binlog != 1 {
                    log::warn!(
                        "db: {}: the binary log is on with sync_binlog = {sync_binlog}; it may \
                         lose acknowledged writes in a crash (1 makes every commit durable)",
                        self.label
                    );
                }
            }
            Ok(None) => {}
            Err(e) => log::warn!(
                "db: {}: cannot read the durability settings: {}",
                self.label,
                crate::error::describe_mysql(&e)
            ),
        }
    }

    /// A pool of up to `size` connections; one is opened now, so a server that cannot be
    /// reached or refuses the login fails here, at start.
    pub fn pool(&self, size: usize) -> Result<MysqlStore, DbError> {
        let constraints = PoolConstraints::new(1, size.max(1))
            .ok_or_else(|| self.setup_error(format!("no pool of {size} connections")))?;
        let pool_opts = PoolOpts::default()
            .with_constraints(constraints)
            // No reset when a connection goes back: a reset drops the statement cache and
            // costs a round trip, and the sessions set nothing but `init`. Every transaction
            // ends in a commit or a rollback first; one whose end failed is reset (see
            // `MysqlStore::transaction`), which rolls back or drops the connection.
            .with_reset_connection(false)
            // Ping before handing a connection out: one the server dropped is replaced.
            .with_check_health(true);
        let opts = OptsBuilder::from_opts(self.opts.clone()).pool_opts(pool_opts);
        let pool = Pool::new(opts).map_err(|e| self.error(e))?;
        Ok(MysqlStore {
            pool,
            server: self.label.clone(),
        })
    }
}

/// The connections the workers share: each transaction takes one from the pool.
#[derive(Clone)]
pub struct MysqlStore {
    pool: Pool,
    server: Arc<str>,
}

impl MysqlStore {
    fn error(&self, error: mysql::Error) -> DbError {
        DbError::Server {
            server: self.server.to_string(),
            error,
        }
    }
}

impl Store for MysqlStore {
    fn transaction<R>(
        &mut self,
        access: Access,
        body: impl FnOnce(&mut dyn WorkerTx) -> Result<R, DbError>,
    ) -> Result<R, DbError> {
        let mut conn: PooledConn = self.pool.get_conn().map_err(|e| self.error(e))?;
        let access_mode = match access {
            Access::Read => AccessMode::ReadOnly,
            Access::Write => AccessMode::ReadWrite,
        };
        let opts = TxOpts::default().set_access_mode(Some(access_mode));
        // A failed `START TRANSACTION` opened nothing; if the connection broke, the pool's
        // ping finds it before anyone reuses it.
        let tx = conn.start_transaction(opts).map_err(|e| self.error(e))?;
        let mut tx = MysqlTx::new(tx, self.server.clone());
        // `ended`: the transaction is known to be over (committed or rolled back).
        let (result, ended) = match body(&mut tx) {
            Ok(result) => match tx.commit() {
                Ok(()) => (Ok(result), true),
                Err(e) => (Err(e), false),
            },
            // The caller hears the body's error, not the rollback's.
            Err(e) => {
                let ended = tx.rollback().is_ok();
                (Err(e), ended)
            }
        };
        if !ended {
            // The transaction may still be open on a live connection: reset it on its way
            // back to the pool (the server then rolls it back), or the pool drops it when the
            // reset fails. Reused as it is, the next `START TRANSACTION` would commit
            // whatever it holds.
            conn.reset_connection(true);
        }
        result
    }
}

/// A MySQL transaction an operation runs in.
pub struct MysqlTx<'c> {
    tx: mysql::Transaction<'c>,
    server: Arc<str>,
}

impl<'c> MysqlTx<'c> {
    pub fn new(tx: mysql::Transaction<'c>, server: Arc<str>) -> MysqlTx<'c> {
        MysqlTx { tx, server }
    }

    fn error(&self, error: mysql::Error) -> DbError {
        DbError::Server {
            server: self.server.to_string(),
            error,
        }
    }

    /// Commits. After a failure (a broken connection) whether the commit happened is
    /// unknown to the client.
    pub fn commit(self) -> Result<(), DbError> {
        let server = self.server;
        self.tx.commit().map_err(|error| DbError::Server {
            server: server.to_string(),
            error,
        })
    }

    pub fn rollback(self) -> Result<(), DbError> {
        let server = self.server;
        self.tx.rollback().map_err(|error| DbError::Server {
            server: server.to_string(),
            error,
        })
    }
}

fn to_params(args: &[SqlValue]) -> Params {
    if args.is_empty() {
        return Params::Empty;
    }
    Params::Positional(args.iter().map(to_value).collect())
}

/// Text goes as UTF-8 bytes, integers as 64-bit, reals as doubles.
pub fn to_value(value: &SqlValue) -> Value {
    match value {
        SqlValue::Null => Value::NULL,
        SqlValue::Int(n) => Value::Int(*n),
        SqlValue::Real(x) => Value::Double(*x),
        SqlValue::Text(s) => Value::Bytes(s.as_bytes().to_vec()),
    }
}

/// A column value as one of the four storage classes: bytes (text, blobs, decimals) as text,
/// unsigned integers as integers when they fit, dates and times (the schema stores none; an
/// expression may return one) as their usual text.
pub fn from_value(value: Value, column: usize) -> Result<SqlValue, DbError> {
    Ok(match value {
        Value::NULL => SqlValue::Null,
        Value::Bytes(bytes) => SqlValue::Text(
            String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
        Value::Int(n) => SqlValue::Int(n),
        Value::UInt(n) => SqlValue::Int(i64::try_from(n).map_err(|_| {
            DbError::Schema(format!(
                "column {column} holds {n}, beyond a 64-bit integer"
            ))
        })?),
        Value::Float(x) => SqlValue::Real(f64::from(x)),
        Value::Double(x) => SqlValue::Real(x),
        Value::Date(y, mo, d, h, mi, s, us) => SqlValue::Text(format!(
            "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}"
        )),
        Value::Time(negative, days, h, mi, s, us) => SqlValue::Text(format!(
            "{}{:02}:{mi:02}:{s:02}.{us:06}",
            if negative { "-" } else { "" },
            u64::from(days) * 24 + u64::from(h)
        )),
    })
}

impl Tx for MysqlTx<'_> {
    fn backend(&self) -> Backend {
        Backend::Mysql
    }

    fn exec(&mut self, sql: &str, args: &[SqlValue]) -> Result<u64, DbError> {
        match self.tx.exec_drop(sql, to_params(args)) {
            Ok(()) => Ok(self.tx.affected_rows()),
            Err(e) => Err(self.error(e)),
        }
    }

    fn query(&mut self, sql: &str, args: &[SqlValue]) -> Result<Vec<Row>, DbError> {
        let rows: Vec<mysql::Row> = match self.tx.exec(sql, to_params(args)) {
            Ok(rows) => rows,
            Err(e) => return Err(self.error(e)),
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let values = row
                .unwrap_raw()
                .into_iter()
                .enumerate()
                .map(|(i, v)| from_value(v.unwrap_or(Value::NULL), i))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(Row(values));
        }
        Ok(out)
    }
}

impl WorkerTx for MysqlTx<'_> {
    fn tx(&mut self) -> &mut dyn Tx {
        self
    }

    // Savepoints go as plain text statements: not every server version prepares them.
    fn savepoint(&mut self) -> Result<(), DbError> {
        self.tx
            .query_drop("SAVEPOINT op")
            .map_err(|e| self.error(e))
    }

    fn release(&mut self) -> Result<(), DbError> {
        self.tx
            .query_drop("RELEASE SAVEPOINT op")
            .map_err(|e| self.error(e))
    }

    fn rollback_to(&mut self) -> Result<(), DbError> {
        self.tx
            .query_drop("ROLLBACK TO SAVEPOINT op")
            .and_then(|()| self.tx.query_drop("RELEASE SAVEPOINT op"))
            .map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_map_to_the_four_storage_classes_and_back() {
        let values = [
            SqlValue::Null,
            SqlValue::Int(-7),
            SqlValue::Int(i64::MAX),
            SqlValue::Real(2.5),
            SqlValue::Text("héllo\0'x".into()),
            SqlValue::Text(String::new()),
        ];
        for v in values {
            assert_eq!(from_value(to_value(&v), 0).unwrap(), v);
        }
        assert_eq!(from_value(Value::UInt(5), 0).unwrap(), SqlValue::Int(5));
        assert!(from_value(Value::UInt(u64::MAX), 3)
            .unwrap_err()
            .to_string()
            .contains("column 3"));
        assert_eq!(
            from_value(Value::Float(0.5), 0).unwrap(),
            SqlValue::Real(0.5)
        );
        assert_eq!(
            from_value(Value::Date(2026, 1, 2, 3, 4, 5, 6), 0).unwrap(),
            SqlValue::Text("2026-01-02 03:04:05.000006".into())
        );
        assert_eq!(
            from_value(Value::Bytes(vec![0xff, b'a']), 0).unwrap(),
            SqlValue::Text("\u{fffd}a".into())
        );
    }

    #[test]
    fn the_server_is_named_without_user_or_password() {
        let server = MysqlServer::from_url("mysql://ice:s3cret%40x@db.example:3307/prod").unwrap();
        assert_eq!(server.label(), "db.example:3307/prod");
        let default_port = MysqlServer::from_url("mysql://ice:pw@db.example/prod").unwrap();
        assert_eq!(default_port.label(), "db.example:3306/prod");
    }

    #[test]
    fn a_url_without_a_database_or_unparsable_is_refused_without_repeating_it() {
        let e = MysqlServer::from_url("mysql://ice:s3cret@db.example:3307/")
            .err()
            .expect("no database")
            .to_string();
        assert!(
            e.contains("names no database") && !e.contains("s3cret"),
            "{e}"
        );
        let e = MysqlServer::from_url("mysql://ice:s3cret@db.example:notaport/x")
            .err()
            .expect("bad port")
            .to_string();
        assert!(e.contains("db.url") && !e.contains("s3cret"), "{e}");
    }
}
