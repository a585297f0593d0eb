//! The database's exclusive lock: one iceprod server per database (issue 10). Two servers on
//! one database would both queue, reset and complete the same tasks, so the second is refused
//! at start with the first's pid and host.
//!
//! - SQLite: `flock(LOCK_EX | LOCK_NB)` on `<db path>.lock` (see [`lock_file`]), into which the
//!   holder writes `pid=N host=NAME`. The kernel drops the lock with the last descriptor, so a
//!   crashed server leaves nothing to clean up; the descriptor is close-on-exec, so the grid
//!   tools and local jobs the server starts never hold it.
//! - MySQL/MariaDB: the named lock [`lock_name`] (`GET_LOCK(…, 0)`) on one dedicated
//!   connection, kept for the lock's life; the server drops it with the connection. The
//!   holder writes `pid=N host=NAME connection=ID` into the `setting` row `lock.holder`
//!   (a named lock cannot say who holds it), and a refused server names the holder only when
//!   that row's connection is the one `IS_USED_LOCK` reports.
//!
//! Held by the db module for its life (and by its writer thread until that ends), and by the
//! controller while it starts the modules. Within one process the lock is counted, not taken
//! twice: a db module restarted while its old thread still winds down, or started while the
//! controller holds the lock, shares it instead of refusing itself. It is released when the
//! last [`DbLock`] of the process is dropped. Tools that only act on the database (`iceprod
//! user`) never take it.
//!
//! Not handled: a MySQL/MariaDB server that drops the lock's connection (a server restart)
//! releases the lock without this process noticing.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use iceprod_runtime::config::{DbBackend, DbConfig};
use mysql::prelude::Queryable;

use crate::error::DbError;
use crate::mysql_store::MysqlServer;

/// The `setting` row where a MySQL/MariaDB holder says who it is.
const HOLDER_SETTING: &str = "lock.holder";
/// MySQL refuses lock names longer than this.
const MAX_LOCK_NAME: usize = 64;
/// Longest `wait_timeout` MySQL accepts (a year): the lock's connection is idle for the
/// server's life and must not be closed for it.
const LOCK_SESSION_WAIT_TIMEOUT: u64 = 31_536_000;

/// One hold of the database's lock; the lock is released when the process's last one drops.
#[derive(Debug)]
pub struct DbLock {
    key: String,
}

/// The locks this process holds, by key, with how many [`DbLock`]s share each.
static HELD: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

struct Entry {
    key: String,
    users: usize,
    /// The lock itself ([`FileLock`] or [`NamedLock`]), released when the entry is removed.
    _held: Box<dyn Send>,
}

fn held() -> MutexGuard<'static, Vec<Entry>> {
    // The list stays consistent if a holder panicked: every change to it is one push or one
    // remove.
    HELD.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DbLock {
    /// Takes the lock on the database `config` names, or shares it if this process holds it
    /// already. Refused with [`DbError::InUse`] naming the holder when another process holds
    /// it. On MySQL/MariaDB this migrates the database first (the holder's row is part of the
    /// schema), under the lock, so only the holder migrates.
    pub fn acquire(config: &DbConfig) -> Result<DbLock, DbError> {
        let target = Target::of(config)?;
        let mut held = held();
        if let Some(entry) = held.iter_mut().find(|e| e.key == target.key) {
            entry.users += 1;
            return Ok(DbLock { key: target.key });
        }
        let lock: Box<dyn Send> = match &target.kind {
            TargetKind::File { database, lock } => Box::new(take_file(database, lock)?),
            TargetKind::Named(server) => Box::new(take_named(server)?),
        };
        held.push(Entry {
            key: target.key.clone(),
            users: 1,
            _held: lock,
        });
        Ok(DbLock { key: target.key })
    }

    /// Another hold of the same lock (for a thread that must keep it until it ends).
    pub fn share(&self) -> DbLock {
        if let Some(entry) = held().iter_mut().find(|e| e.key == self.key) {
            entry.users += 1;
        }
        DbLock {
            key: self.key.clone(),
        }
    }
}

impl Drop for DbLock {
    fn drop(&mut self) {
        let mut held = held();
        if let Some(i) = held.iter().position(|e| e.key == self.key) {
            held[i].users -= 1;
            if held[i].users == 0 {
                // Released under the list's mutex, so a new hold cannot race the release.
                held.remove(i);
            }
        }
    }
}

/// The lock file of the SQLite database `db`: `<db>.lock` beside it.
pub fn lock_file(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The MySQL/MariaDB named lock of `database`: `iceprod:DATABASE`, or, for a name too long for
/// a lock name, its first characters and a hash of the whole, so two databases never share it.
pub fn lock_name(database: &str) -> String {
    let plain = format!("iceprod:{database}");
    if plain.chars().count() <= MAX_LOCK_NAME {
        return plain;
    }
    let hash = format!("{:016x}", fnv1a(database.as_bytes()));
    let keep = MAX_LOCK_NAME - "iceprod:".len() - 1 - hash.len();
    let head: String = database.chars().take(keep).collect();
    format!("iceprod:{head}:{hash}")
}

/// 64-bit FNV-1a: stable across builds and platforms, unlike std's hasher, so every server
/// computes the same lock name.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Which lock a `[db]` section names, and the key this process knows it by.
struct Target {
    key: String,
    kind: TargetKind,
}

enum TargetKind {
    File { database: PathBuf, lock: PathBuf },
    Named(MysqlServer),
}

impl Target {
    fn of(config: &DbConfig) -> Result<Target, DbError> {
        match config.backend {
            DbBackend::Sqlite => {
                let database = config.path.clone();
                let lock = lock_file(&database);
                let lock_error = |reason: String| DbError::Lock {
                    database: database.display().to_string(),
                    reason,
                };
                // The folder is made here as `store::open` would, to name the file by its
                // real path: two spellings of one file are one lock.
                let dir = lock.parent().unwrap_or(Path::new("."));
                std::fs::create_dir_all(dir)
                    .map_err(|e| lock_error(format!("cannot create {}: {e}", dir.display())))?;
                let real_dir = std::fs::canonicalize(dir)
                    .map_err(|e| lock_error(format!("cannot resolve {}: {e}", dir.display())))?;
                let file_name = lock.file_name().unwrap_or_default();
                Ok(Target {
                    key: format!("file:{}", real_dir.join(file_name).display()),
                    kind: TargetKind::File { database, lock },
                })
            }
            DbBackend::Mysql => {
                let server = MysqlServer::from_config(config)?;
                Ok(Target {
                    key: format!("mysql:{}:{}", server.label(), lock_name(server.database())),
                    kind: TargetKind::Named(server),
                })
            }
        }
    }
}

/// Who holds a lock, as the holder writes it (`pid=N host=NAME [connection=ID]`).
#[derive(Debug, PartialEq)]
struct Holder {
    pid: u32,
    host: String,
    /// On MySQL/MariaDB: the holder's connection, which holds the named lock.
    connection: Option<u64>,
}

impl Holder {
    fn this_process(connection: Option<u64>) -> Holder {
        Holder {
            pid: std::process::id(),
            host: hostname(),
            connection,
        }
    }

    fn record(&self) -> String {
        let mut text = format!("pid={} host={}", self.pid, self.host);
        if let Some(id) = self.connection {
            text.push_str(&format!(" connection={id}"));
        }
        text
    }

    fn parse(text: &str) -> Option<Holder> {
        let (mut pid, mut host, mut connection) = (None, None, None);
        for word in text.split_whitespace() {
            match word.split_once('=') {
                Some(("pid", v)) => pid = v.parse().ok(),
                Some(("host", v)) => host = Some(v.to_string()),
                Some(("connection", v)) => connection = v.parse().ok(),
                _ => {}
            }
        }
        Some(Holder {
            pid: pid?,
            host: host?,
            connection,
        })
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} on host {}", self.pid, self.host)
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for the length passed, one byte short of its size, so the
    // name stays NUL-terminated even if the system truncates it without one.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The SQLite lock: the open lock file, whose descriptor holds the `flock`; dropping it
/// releases the lock.
struct FileLock {
    file: File,
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Still held here: empty the file so it names nobody; closing it then unlocks.
        let _ = self.file.set_len(0);
    }
}

fn take_file(database: &Path, lock: &Path) -> Result<FileLock, DbError> {
    let lock_error = |reason: String| DbError::Lock {
        database: database.display().to_string(),
        reason,
    };
    // Not truncated on open: until the lock is ours, the file names the holder.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock)
        .map_err(|e| lock_error(format!("cannot open {}: {e}", lock.display())))?;
    // SAFETY: flock(2) on a descriptor `file` owns and keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(DbError::InUse {
                database: database.display().to_string(),
                holder: file_holder(lock),
                key: "path",
            });
        }
        return Err(lock_error(format!("cannot lock {}: {e}", lock.display())));
    }
    let record = format!("{}\n", Holder::this_process(None).record());
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(record.as_bytes()))
        .map_err(|e| lock_error(format!("cannot write {}: {e}", lock.display())))?;
    Ok(FileLock { file })
}

/// The holder named in a lock file another process holds. It writes its name right after
/// taking the lock, so an empty file is read again a few times before giving up.
fn file_holder(lock: &Path) -> String {
    for _ in 0..10 {
        let mut text = String::new();
        let read = File::open(lock).and_then(|mut f| f.read_to_string(&mut text));
        if let Some(holder) = read.ok().and_then(|_| Holder::parse(&text)) {
            return holder.to_string();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    format!(
        "which has not written its pid and host into {}",
        lock.display()
    )
}

/// The MySQL/MariaDB lock: the connection that holds the named lock; dropping it releases
/// the lock.
struct NamedLock {
    conn: mysql::Conn,
    name: String,
    record: String,
}

impl Drop for NamedLock {
    fn drop(&mut self) {
        // Closing the connection releases the lock anyway; this also clears the holder's row.
        let _ = self.conn.exec_drop(
            "DELETE FROM setting WHERE name = ? AND value = ?",
            (HOLDER_SETTING, self.record.as_str()),
        );
        let _ = self
            .conn
            .exec_drop("DO RELEASE_LOCK(?)", (self.name.as_str(),));
    }
}

fn take_named(server: &MysqlServer) -> Result<NamedLock, DbError> {
    let name = lock_name(server.database());
    let lock_error = |reason: String| DbError::Lock {
        database: server.label().to_string(),
        reason,
    };
    let server_error = |e: mysql::Error| DbError::Server {
        server: server.label().to_string(),
        error: e,
    };
    let mut conn = server.connect()?;
    conn.query_drop(format!(
        "SET SESSION wait_timeout = {LOCK_SESSION_WAIT_TIMEOUT}"
    ))
    .map_err(server_error)?;
    let got: Option<Option<i64>> = conn
        .exec_first("SELECT GET_LOCK(?, 0)", (name.as_str(),))
        .map_err(server_error)?;
    match got.flatten() {
        Some(1) => {}
        Some(0) => {
            return Err(DbError::InUse {
                database: server.label().to_string(),
                holder: named_holder(&mut conn, &name),
                key: "url",
            })
        }
        _ => return Err(lock_error(format!("GET_LOCK('{name}') failed"))),
    }
    // From here the lock is ours (and dropped with `conn` on any error below).
    server.migrate()?;
    let connection: Option<u64> = conn
        .query_first("SELECT CONNECTION_ID()")
        .map_err(server_error)?;
    let record = Holder::this_process(connection).record();
    conn.exec_drop(
        "REPLACE INTO setting (name, value) VALUES (?, ?)",
        (HOLDER_SETTING, record.as_str()),
    )
    .map_err(server_error)?;
    Ok(NamedLock { conn, name, record })
}

/// The holder of the named lock `name`, as a refused server can tell it.
fn named_holder(conn: &mut mysql::Conn, name: &str) -> String {
    let owner: Option<u64> = conn
        .exec_first::<Option<u64>, _, _>("SELECT IS_USED_LOCK(?)", (name,))
        .ok()
        .flatten()
        .flatten();
    // The table is missing only while the holder's first migration runs.
    let record: Option<String> = conn
        .exec_first(
            "SELECT value FROM setting WHERE name = ?",
            (HOLDER_SETTING,),
        )
        .ok()
        .flatten();
    let holder = record.as_deref().and_then(Holder::parse);
    match (holder, owner) {
        (Some(h), Some(id)) if h.connection == Some(id) => h.to_string(),
        (_, Some(id)) => format!("connection {id}, which has not recorded its pid and host yet"),
        (_, None) => "which has just released it; try again".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_record_reads_back_and_names_pid_and_host() {
        let holder = Holder {
            pid: 1234,
            host: "h1".into(),
            connection: Some(56),
        };
        assert_eq!(holder.record(), "pid=1234 host=h1 connection=56");
        assert_eq!(Holder::parse(&holder.record()), Some(holder));
        assert_eq!(
            Holder::parse("pid=7 host=h2\n").unwrap().to_string(),
            "pid 7 on host h2"
        );
        assert_eq!(Holder::parse(""), None);
        assert_eq!(Holder::parse("pid=x host=h"), None);
    }

    #[test]
    fn lock_names_fit_mysql_and_long_databases_keep_apart() {
        assert_eq!(lock_name("iceprod"), "iceprod:iceprod");
        let a = format!("{}a", "x".repeat(70));
        let b = format!("{}b", "x".repeat(70));
        assert_eq!(lock_name(&a).chars().count(), MAX_LOCK_NAME);
        assert_ne!(lock_name(&a), lock_name(&b));
    }

    #[test]
    fn a_second_process_lock_is_refused_with_the_holder_and_one_process_shares_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let config = DbConfig {
            backend: DbBackend::Sqlite,
            path: dir.path().join("iceprod.db"),
            url: None,
            readers: 1,
            archive_path: dir.path().join("archive.db"),
            archive_after_days: 0,
        };
        let first = DbLock::acquire(&config).unwrap();
        let record = std::fs::read_to_string(lock_file(&config.path)).unwrap();
        assert_eq!(
            Holder::parse(&record).unwrap(),
            Holder::this_process(None),
            "{record}"
        );
        // The same process shares its lock, through another spelling of the path too.
        let again = DbLock::acquire(&DbConfig {
            path: dir.path().join(".").join("iceprod.db"),
            ..config.clone()
        })
        .unwrap();
        drop(first);
        // Another open file description is what another process would have: refused.
        let e = take_file(&config.path, &lock_file(&config.path))
            .err()
            .unwrap()
            .to_string();
        let me = Holder::this_process(None).to_string();
        assert!(
            e.contains("is in use by another iceprod server") && e.contains(&me),
            "{e}"
        );
        drop(again);
        // Released with the last hold, and the file no longer names anyone.
        assert_eq!(
            std::fs::read_to_string(lock_file(&config.path)).unwrap(),
            ""
        );
        drop(take_file(&config.path, &lock_file(&config.path)).unwrap());
    }
}
