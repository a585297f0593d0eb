//! The SQLite backend: opening the file (checks that name the file in every error), the
//! pragmas that make a commit durable, the migrations, and the SQLite side of the workers'
//! [`Store`] (the writer's own connection, and the readers' pool).
//!
//! Durability rule: WAL with `synchronous=FULL`, so a transaction acknowledged after `COMMIT`
//! survives a crash of the process or the machine.

use std::path::Path;
use std::time::Duration;

use r2d2_sqlite::rusqlite::{self, Connection, OpenFlags, TransactionBehavior};
use r2d2_sqlite::SqliteConnectionManager;

use crate::error::DbError;
use crate::schema::{newest_version, MIGRATIONS};
use crate::sql::{SqliteTx, Tx};
use crate::workers::{Access, Store, WorkerTx};

fn open_error(file: &Path, reason: impl Into<String>) -> DbError {
    DbError::Open {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// Prepared statements each connection keeps (rusqlite's default is 16): more than the
/// distinct statements the operations run, so the writer, which runs them all, prepares each
/// once instead of evicting and preparing again when requests of several kinds interleave.
const STATEMENT_CACHE: usize = 256;

/// Pragmas every connection gets.
pub fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Opens (creating if needed) and migrates the database at `file`.
pub fn open(file: &Path) -> Result<Connection, DbError> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| open_error(file, format!("cannot create its folder: {e}")))?;
    }
    if file.is_dir() {
        return Err(open_error(file, "it is a folder"));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn =
        Connection::open_with_flags(file, flags).map_err(|e| open_error(file, e.to_string()))?;
    configure(&conn).map_err(|e| open_error(file, e.to_string()))?;
    // Reading the schema proves the file is a database (a corrupt one fails here).
    let version: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| open_error(file, e.to_string()))?;
    let newest = newest_version();
    if version > newest {
        return Err(open_error(
            file,
            format!("its schema version {version} is newer than this build knows ({newest})"),
        ));
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > version) {
        let v = m.version;
        let tx = conn
            .transaction()
            .map_err(|e| open_error(file, e.to_string()))?;
        tx.execute_batch(m.sqlite)
            .and_then(|()| tx.pragma_update(None, "user_version", v))
            .and_then(|()| tx.commit())
            .map_err(|e| open_error(file, format!("migration {v} failed: {e}")))?;
        log::info!("db: {} migrated to schema version {v}", file.display());
    }
    // The writer's connection (and the tools'): every write to `task` or `job` fires the
    // summary triggers (schema migration 5), so each such statement needs a statement
    // journal; kept in memory it costs about 4 µs a statement instead of about 16 µs with
    // temp files (measured on 3.40). Set after the migrations: migration 5's backfill sorts
    // every task, which in memory left a million-task server 65 MB larger until its restart.
    // The readers keep the default for their large sorts.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(|e| open_error(file, e.to_string()))?;
    Ok(conn)
}

/// Attaches the archive file (SPEC §10, `archive.rs`), which `open` created and migrated, to
/// `conn` as schema `archive`, durable like the primary. In WAL mode a transaction over both
/// files commits each file atomically, not both together: the archive's moves are written
/// for that (see `archive.rs`).
pub fn attach_archive(conn: &Connection, archive: &Path) -> Result<(), DbError> {
    let name = archive
        .to_str()
        .ok_or_else(|| open_error(archive, "its name is not UTF-8"))?;
    conn.execute("ATTACH DATABASE ? AS archive", [name])
        .and_then(|_| conn.pragma_update(Some("archive"), "synchronous", "FULL"))
        .map_err(|e| open_error(archive, format!("cannot attach it: {e}")))
}

/// The readers' pool: every connection gets the durability pragmas, the archive file
/// attached, and is query-only, so a request wrongly routed to a reader fails on SQLite as it
/// does on MySQL's read-only transactions instead of writing outside the writer's group.
pub fn reader_pool(
    file: &Path,
    archive: &Path,
    readers: usize,
) -> Result<r2d2::Pool<SqliteConnectionManager>, DbError> {
    let archive_name = archive
        .to_str()
        .ok_or_else(|| open_error(archive, "its name is not UTF-8"))?
        .to_string();
    let manager = SqliteConnectionManager::file(file).with_init(move |c| {
        configure(c)?;
        c.execute("ATTACH DATABASE ? AS archive", [archive_name.as_str()])?;
        c.pragma_update(None, "query_only", true)
    });
    r2d2::Pool::builder()
        .max_size(u32::try_from(readers).unwrap_or(u32::MAX))
        .build(manager)
        .map_err(|e| open_error(file, e.to_string()))
}

impl WorkerTx for SqliteTx<'_> {
    fn tx(&mut self) -> &mut dyn Tx {
        self
    }

    // Cached statements: every write in a group runs these two, so they are parsed once.
    fn savepoint(&mut self) -> Result<(), DbError> {
        self.0.prepare_cached("SAVEPOINT op")?.execute([])?;
        Ok(())
    }

    fn release(&mut self) -> Result<(), DbError> {
        self.0.prepare_cached("RELEASE op")?.execute([])?;
        Ok(())
    }

    fn rollback_to(&mut self) -> Result<(), DbError> {
        Ok(self.0.execute_batch("ROLLBACK TO op; RELEASE op")?)
    }
}

/// Runs `body` in a transaction on `conn`: a write takes the write lock at `BEGIN`
/// (`IMMEDIATE`), so it cannot fail half-way for lack of it; a read is deferred and sees one
/// snapshot. Dropping an uncommitted rusqlite transaction rolls it back.
fn run_transaction<R>(
    conn: &mut Connection,
    access: Access,
    body: impl FnOnce(&mut dyn WorkerTx) -> Result<R, DbError>,
) -> Result<R, DbError> {
    let behavior = match access {
        Access::Write => TransactionBehavior::Immediate,
        Access::Read => TransactionBehavior::Deferred,
    };
    let tx = conn.transaction_with_behavior(behavior)?;
    let result = body(&mut SqliteTx(&tx))?;
    tx.commit()?;
    Ok(result)
}

/// The writer's store: the connection `open` migrated, kept for the writer's life.
impl Store for Connection {
    fn transaction<R>(
        &mut self,
        access: Access,
        body: impl FnOnce(&mut dyn WorkerTx) -> Result<R, DbError>,
    ) -> Result<R, DbError> {
        run_transaction(self, access, body)
    }
}

/// A reader's store: a pooled connection per transaction.
impl Store for r2d2::Pool<SqliteConnectionManager> {
    fn transaction<R>(
        &mut self,
        access: Access,
        body: impl FnOnce(&mut dyn WorkerTx) -> Result<R, DbError>,
    ) -> Result<R, DbError> {
        let mut conn = self.get().map_err(|e| DbError::Pool(e.to_string()))?;
        run_transaction(&mut conn, access, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_gets_the_whole_schema() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("sub/iceprod.db")).unwrap();
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(n >= 20, "{n} tables");
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(conn);
        // Opening again applies nothing twice.
        open(&dir.path().join("sub/iceprod.db")).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("iceprod.db");
        std::fs::write(&file, vec![0x42u8; 8192]).unwrap();
        let e = open(&file).unwrap_err().to_string();
        assert!(
            e.contains("iceprod.db") && e.contains("not a database"),
            "{e}"
        );
    }

    #[test]
    fn a_folder_or_an_impossible_path_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("folder"), "{e}");
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let e = open(&blocker.join("iceprod.db")).unwrap_err().to_string();
        assert!(e.contains("cannot create its folder"), "{e}");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("iceprod.db");
        {
            let conn = open(&file).unwrap();
            conn.pragma_update(None, "user_version", 999).unwrap();
        }
        let e = open(&file).unwrap_err().to_string();
        assert!(e.contains("newer"), "{e}");
    }
}
