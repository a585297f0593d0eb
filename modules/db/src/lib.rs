//! iceprod-db: the db module. Owns the database: its schema and migrations ([`schema`]), the
//! backends ([`store`] for SQLite, [`mysql_store`] for MySQL/MariaDB), the operations
//! ([`ops`]) and the threads that run them ([`workers`]).
//!
//! Other modules reach it only through `Request::Db` messages. Its loop never runs SQL: reads
//! go to a pool of reader threads, writes to one writer that commits the writes waiting at
//! the same moment together (group commit); each answers the caller directly, a write only
//! after its commit. Durable at commit on both backends: SQLite in WAL mode with
//! `synchronous=FULL` (see `store.rs`), InnoDB with `innodb_flush_log_at_trx_commit=1` (see
//! `mysql_store.rs`).
//!
//! Ended datasets move to the archive ([`archive`]): on SQLite a second file, attached to the
//! writer's and every reader's connection at start; the module drives an archive run batch
//! after batch, each batch its own transaction.
//!
//! One server per database: `init` takes the database's exclusive lock ([`lock`]) before
//! opening it, and a database another server holds stops the start with that server's pid
//! and host. The module keeps the lock for its life and its writer until the writer ends. The
//! site id is stored in the database ([`site`]); the controller reads it before any module
//! starts.

pub mod accounts;
pub mod archive;
pub mod datasets;
pub mod error;
pub mod graphs;
pub mod grid;
pub mod lock;
pub mod mysql_store;
pub mod ops;
pub mod pages;
pub mod public;
pub mod queueing;
pub mod schema;
pub mod site;
pub mod sql;
pub mod store;
pub mod users;
pub mod workers;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use iceprod_runtime::config::{DbBackend, DbConfig};
use iceprod_runtime::{
    CallError, Config, Context, DbReply, DbRequest, Module, ModuleError, ModuleKind, ReloadAction,
    Reply, ReplyTo, Request, WorkerExit,
};

pub use error::DbError;
pub use lock::DbLock;
use mysql_store::MysqlServer;
use ops::OpRules;
use sql::Tx;
use workers::{Access, Job, Store, Work};

pub struct Db {
    reads: Option<Sender<Job>>,
    writes: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// Workers that reported their end; counted rather than polled with `is_finished`, which
    /// may still be false when the report wakes the loop.
    exited: usize,
    rules: OpRules,
    /// `[db] archive_after_days`, applied in place on reload.
    archive_after_days: u32,
    /// The database's exclusive lock, released when the module ends (the writer holds a share
    /// of it until the writer ends too).
    _lock: DbLock,
}

/// Most datasets one archive batch takes (it also stops at `archive::BATCH_ROWS` rows).
const ARCHIVE_BATCH_DATASETS: u32 = 10;
/// Most batches of one archive run; the next run goes on where it stopped.
const ARCHIVE_MAX_BATCHES: u32 = 1_000;
/// How long one archive batch may take before its run is given up (the batch itself still
/// commits or rolls back as a whole).
const ARCHIVE_BATCH_DEADLINE: Duration = Duration::from_secs(600);

/// An archive run in progress: its cutoff, its caller, and what it did so far.
struct ArchiveRun {
    cutoff: String,
    reply: ReplyTo,
    moved: u64,
    batches: u32,
}

/// The rules of the operations under `config` (tools that open the database themselves, like
/// `iceprod user`, mint ids with them).
pub fn rules_of(config: &Config) -> OpRules {
    OpRules {
        max_resets: config.queue.max_resets,
        // The controller resolves the site id before any module starts; tests may leave it
        // out, and then ids carry site number 0.
        site_number: config
            .site
            .id
            .as_deref()
            .and_then(iceprod_runtime::ids::decode)
            .unwrap_or(0),
        largest: largest_grid(config.queue.grids.values().map(|g| g.resources)),
    }
}

/// The component-wise maximum of the grids' largest slots (SPEC §9: a task asking for more
/// than every grid offers is suspended); `None` without grids.
fn largest_grid(
    grids: impl Iterator<Item = iceprod_runtime::config::GridResources>,
) -> Option<iceprod_runtime::Resources> {
    grids
        .map(iceprod_runtime::Resources::from)
        .reduce(|a, r| iceprod_runtime::Resources {
            cpu: a.cpu.max(r.cpu),
            gpu: a.gpu.max(r.gpu),
            memory: a.memory.max(r.memory),
            disk: a.disk.max(r.disk),
            time: a.time.max(r.time),
        })
}

/// What the db module reads of the config: `[db]`; of the other sections, the rules its
/// operations follow (`[queue] max_resets`, the grids' largest slot, the site id) and the state
/// folder where the first admin's passkey is written.
#[derive(PartialEq)]
pub struct DbView {
    db: DbConfig,
    rules: OpRules,
    state_dir: std::path::PathBuf,
}

impl Module for Db {
    const KIND: ModuleKind = ModuleKind::Db;
    /// The workers answer callers directly; their ends come through `on_worker_exit`.
    type Event = ();
    type View = DbView;

    fn view(config: &Config) -> DbView {
        DbView {
            db: config.db.clone(),
            rules: rules_of(config),
            state_dir: config.site.state_dir.clone(),
        }
    }

    fn init(cx: &mut Context<Self>) -> Result<Self, ModuleError> {
        let config = cx.config().clone();
        let readers = config.db.readers;
        // Before anything opens the database: a second server stops here.
        let lock = DbLock::acquire(&config.db).map_err(init_error)?;
        let (workers, read_tx, write_tx) = match config.db.backend {
            DbBackend::Sqlite => {
                let file = config.db.path.clone();
                let archive_file = config.db.archive_path.clone();
                // Opening migrates; the writer keeps this connection.
                let mut writer = store::open(&file).map_err(init_error)?;
                // The archive file gets the same schema, then joins the writer's connection.
                drop(store::open(&archive_file).map_err(init_error)?);
                store::attach_archive(&writer, &archive_file).map_err(init_error)?;
                // A fresh database gets its first admin (and the passkey file) at once.
                users::bootstrap(&mut writer, rules_of(&config), &config.site.state_dir)
                    .map_err(init_error)?;
                let pool = store::reader_pool(&file, &archive_file, readers).map_err(init_error)?;
                let started = start_workers(cx, writer, pool, readers, &lock)?;
                log::info!(
                    "db: {} open, archive {} ({readers} readers)",
                    file.display(),
                    archive_file.display()
                );
                started
            }
            DbBackend::Mysql => {
                let server = MysqlServer::from_config(&config.db).map_err(init_error)?;
                server.migrate().map_err(init_error)?;
                // The readers and the writer share one pool, a connection each at most.
                let mut pool = server.pool(readers + 1).map_err(init_error)?;
                users::bootstrap(&mut pool, rules_of(&config), &config.site.state_dir)
                    .map_err(init_error)?;
                let started = start_workers(cx, pool.clone(), pool, readers, &lock)?;
                log::info!("db: {} open ({readers} readers)", server.label());
                started
            }
        };
        Ok(Db {
            reads: Some(read_tx),
            writes: Some(write_tx),
            workers,
            exited: 0,
            rules: rules_of(&config),
            archive_after_days: config.db.archive_after_days,
            _lock: lock,
        })
    }

    fn on_message(&mut self, cx: &mut Context<Self>, request: Request, reply: ReplyTo) {
        let request = match request {
            Request::Db(request) => request,
            Request::Scheduled { message, .. } => match message.db_request() {
                Some(request) => request,
                // Ping: proves the job and the db's mailbox work.
                None => return reply.send(Ok(iceprod_runtime::Reply::Done)),
            },
            _ => return reply.send(Err(CallError::Unsupported("the db takes db requests"))),
        };
        if let DbRequest::Archive { now } = request {
            return self.start_archive(cx, now.as_deref(), reply);
        }
        let queue = if request.is_write() && !served_by_readers(&request) {
            &self.writes
        } else {
            &self.reads
        };
        let Some(queue) = queue else {
            return reply.send(Err(CallError::Failed("the db is stopping".into())));
        };
        let job = Job {
            work: Work::Request(request),
            reply,
            rules: self.rules,
        };
        // The workers hold the receivers until the senders are dropped at shutdown.
        if let Err(unsent) = queue.send(job) {
            unsent
                .0
                .reply
                .send(Err(CallError::Failed("the db workers are gone".into())));
        }
    }

    fn on_worker_exit(&mut self, cx: &mut Context<Self>, exit: WorkerExit) {
        self.exited += 1;
        if cx.is_stopping() && exit.panic.is_none() {
            return;
        }
        // A worker is gone: the module fails, and the controller restarts it with a fresh
        // set (its mailbox keeps what waits). The dead worker's request was answered with an
        // error when its reply handle dropped; the others' requests finish and answer.
        cx.fail(ModuleError::Broken(match exit.panic {
            Some(message) => format!("{} panicked: {message}", exit.name),
            None => format!("{} ended unexpectedly", exit.name),
        }));
    }

    fn on_reload(&mut self, cx: &mut Context<Self>, config: &Arc<Config>) -> ReloadAction {
        // The files and thread count need new threads; the rules and the archive age apply to
        // the next request.
        let mut same_files = config.db.clone();
        same_files.archive_after_days = cx.config().db.archive_after_days;
        if same_files != cx.config().db {
            return ReloadAction::NeedsRestart;
        }
        self.rules = rules_of(config);
        self.archive_after_days = config.db.archive_after_days;
        ReloadAction::Applied
    }

    fn on_shutdown(&mut self, _cx: &mut Context<Self>) {
        // Workers finish what is queued, then see the channel closed and exit.
        self.reads = None;
        self.writes = None;
    }

    fn is_drained(&self) -> bool {
        self.exited == self.workers.len()
    }
}

impl Db {
    /// Starts an archive run (SPEC §10), answered with `Rows(moved)` when it ends. With
    /// `archive_after_days = 0` nothing moves.
    fn start_archive(&mut self, cx: &mut Context<Self>, now: Option<&str>, reply: ReplyTo) {
        if self.archive_after_days == 0 {
            return reply.send(Ok(Reply::Db(DbReply::Rows(0))));
        }
        match archive::cutoff(now, self.archive_after_days) {
            Ok(cutoff) => next_archive_batch(
                cx,
                ArchiveRun {
                    cutoff,
                    reply,
                    moved: 0,
                    batches: 0,
                },
            ),
            Err(e) => reply.send(Err(workers::to_call_error(e))),
        }
    }
}

/// Sends the run's next batch to this module's own writer (through its mailbox, so the batch
/// is a transaction of its own, committed before its answer), and continues in the callback.
fn next_archive_batch(cx: &mut Context<Db>, mut run: ArchiveRun) {
    run.batches += 1;
    let call = DbRequest::archive_batch(run.cutoff.clone(), ARCHIVE_BATCH_DATASETS);
    cx.call_typed_with_timeout(call, ARCHIVE_BATCH_DEADLINE, move |_db, cx, result| {
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                log::error!("db: archive batch {} failed: {e}", run.batches);
                return run.reply.send(Err(e));
            }
        };
        // Test hooks: the batch has committed (see `archive::FAULT_VAR`).
        if outcome.copied > 0 {
            archive::fault_point("copied");
        }
        if outcome.moved > 0 {
            archive::fault_point("deleted");
        }
        run.moved += outcome.moved;
        if outcome.progressed() && run.batches < ARCHIVE_MAX_BATCHES {
            return next_archive_batch(cx, run);
        }
        if outcome.pending > 0 {
            log::warn!(
                "db: archive run left {} datasets copied but not yet moved; the next run goes \
                     on with them",
                outcome.pending
            );
        }
        if run.moved > 0 {
            log::info!("db: archived {} datasets", run.moved);
        }
        run.reply.send(Ok(Reply::Db(DbReply::Rows(run.moved))));
    });
}

/// Writes that start on a reader anyway: the account requests that hash a password. The
/// reader reads and hashes and hands the writes on to the writer (`workers::reader_loop`),
/// which so never waits for a hash. (Which requests only read is `DbRequest::is_write`.)
fn served_by_readers(request: &DbRequest) -> bool {
    matches!(request, DbRequest::Account(request) if accounts::needs_hashing(request))
}

/// A database that cannot be opened stops the module: a server that cannot be reached may come
/// back, so the module is restarted (`Broken`); anything else (a bad url, a corrupt file, a
/// schema this build does not know) needs a person (`Config`).
fn init_error(e: DbError) -> ModuleError {
    if e.is_connectivity() {
        ModuleError::Broken(e.to_string())
    } else {
        ModuleError::Config(e.to_string())
    }
}

type Started = (Vec<JoinHandle<()>>, Sender<Job>, Sender<Job>);

/// Starts the writer on `writer` and `readers` reader threads, each on a clone of `reader`.
/// The writer keeps a share of `lock` until it ends: after a panic of the module it may still
/// commit what was queued, and no other server may start on the database meanwhile.
fn start_workers<W, R>(
    cx: &mut Context<Db>,
    writer: W,
    reader: R,
    readers: usize,
    lock: &DbLock,
) -> Result<Started, ModuleError>
where
    W: Store + Send + 'static,
    R: Store + Clone + Send + 'static,
{
    let (read_tx, read_rx) = crossbeam_channel::unbounded::<Job>();
    let (write_tx, write_rx) = crossbeam_channel::unbounded::<Job>();
    let mut workers = Vec::new();
    let spawn_error = |e| ModuleError::io("starting a db worker", e);
    // Supervised: a worker's end, panic included, reaches `on_worker_exit`.
    let spawner = cx.workers();
    let writer_lock = lock.share();
    workers.push(
        spawner
            .spawn("iceprod-db-writer", move |w| {
                workers::writer_loop(writer, write_rx, w, writer_lock)
            })
            .map_err(spawn_error)?,
    );
    for n in 0..readers {
        let (store, jobs) = (reader.clone(), read_rx.clone());
        // Each reader holds a sender of the writer's queue, so the writer ends only after the
        // last reader did, with every write a reader handed on.
        let writes = write_tx.clone();
        workers.push(
            spawner
                .spawn(format!("iceprod-db-read-{n}"), move |w| {
                    workers::reader_loop(store, jobs, writes, w)
                })
                .map_err(spawn_error)?,
        );
    }
    Ok((workers, read_tx, write_tx))
}

/// Opens the configured database (migrating it; on SQLite with the archive file attached),
/// runs `body` in one transaction and commits it if `body` succeeds: for tools and tests that
/// act on the database without the module.
pub fn transaction<R>(
    config: &DbConfig,
    body: impl FnOnce(&mut dyn Tx) -> Result<R, DbError>,
) -> Result<R, DbError> {
    transaction_for(config, Access::Write, body)
}

/// As [`transaction`], with `access` saying whether `body` writes: a read waits for no
/// writer (SQLite in WAL mode), so a tool that only reads never stalls behind the server.
pub(crate) fn transaction_for<R>(
    config: &DbConfig,
    access: Access,
    body: impl FnOnce(&mut dyn Tx) -> Result<R, DbError>,
) -> Result<R, DbError> {
    match config.backend {
        DbBackend::Sqlite => {
            let mut conn = store::open(&config.path)?;
            drop(store::open(&config.archive_path)?);
            store::attach_archive(&conn, &config.archive_path)?;
            // `Store::` and not the method syntax: rusqlite has its own `transaction`.
            Store::transaction(&mut conn, access, |tx| body(tx.tx()))
        }
        DbBackend::Mysql => {
            let server = MysqlServer::from_config(config)?;
            server.migrate()?;
            server.pool(1)?.transaction(access, |tx| body(tx.tx()))
        }
    }
}

/// The SQLite bindings this crate uses, for tests and tools that inspect the file.
pub use r2d2_sqlite::rusqlite;

/// The MySQL/MariaDB client this crate uses, for tests and tools that talk to the server.
pub use mysql;

#[cfg(test)]
mod tests {
    use super::*;
    use iceprod_runtime::web::{DatasetKey, PageQuery};

    #[test]
    fn pages_go_to_the_readers_and_writes_to_the_writer() {
        for query in [
            PageQuery::Home { hours: 24 },
            PageQuery::Dataset(DatasetKey::Num(1)),
        ] {
            assert!(!DbRequest::Page(query).is_write());
        }
        assert!(DbRequest::RecordGraphs.is_write());
        assert!(!DbRequest::TaskCounts { dataset_id: None }.is_write());
        // A session lookup on every page is a read; logging out is a write.
        let session = iceprod_runtime::web::AccountRequest::Session {
            session_id: "s".into(),
        };
        assert!(!DbRequest::Account(session).is_write());
        let logout = iceprod_runtime::web::AccountRequest::Logout {
            session_id: "s".into(),
            csrf_token: "t".into(),
        };
        assert!(DbRequest::Account(logout).is_write());
        // Logins read and hash on a reader; the writer gets only the short write after.
        let login = DbRequest::Account(iceprod_runtime::web::AccountRequest::Login {
            username: "a".into(),
            password: "b".into(),
            ttl: std::time::Duration::from_secs(1),
        });
        assert!(served_by_readers(&login));
        assert!(!served_by_readers(&DbRequest::RecordGraphs));
    }
}
