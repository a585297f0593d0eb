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
//! Still to come here (issue 3): dataset submission and job buffering, queueing and pilot
//! matchmaking queries, and the archive file.

pub mod datasets;
pub mod error;
pub mod graphs;
pub mod mysql_store;
pub mod ops;
pub mod public;
pub mod queueing;
pub mod schema;
pub mod sql;
pub mod store;
pub mod users;
pub mod workers;

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use iceprod_runtime::config::{DbBackend, DbConfig};
use iceprod_runtime::{
    CallError, Config, Context, Module, ModuleError, ModuleKind, ReloadAction, ReplyTo, Request,
};

pub use error::DbError;
use mysql_store::MysqlServer;
use ops::OpRules;
use sql::Tx;
use workers::{Access, Job, Store, WorkerExited};

pub struct Db {
    reads: Option<Sender<Job>>,
    writes: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// Workers that reported their end; counted rather than polled with `is_finished`, which
    /// may still be false when the report wakes the loop.
    exited: usize,
    rules: OpRules,
}

fn rules_of(config: &Config) -> OpRules {
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
    }
}

impl Module for Db {
    const KIND: ModuleKind = ModuleKind::Db;
    type Event = WorkerExited;

    fn init(cx: &mut Context<Self>) -> Result<Self, ModuleError> {
        let config = cx.config().clone();
        let readers = config.db.readers;
        let (workers, read_tx, write_tx) = match config.db.backend {
            DbBackend::Sqlite => {
                let file = config.db.path.clone();
                // Opening migrates; the writer keeps this connection.
                let mut writer = store::open(&file).map_err(init_error)?;
                // A fresh database gets its first admin (and the passkey file) at once.
                users::bootstrap(&mut writer, rules_of(&config), &config.site.state_dir)
                    .map_err(init_error)?;
                let pool = store::reader_pool(&file, readers).map_err(init_error)?;
                let started = start_workers(cx, writer, pool, readers)?;
                log::info!("db: {} open ({readers} readers)", file.display());
                started
            }
            DbBackend::Mysql => {
                let server = MysqlServer::from_config(&config.db).map_err(init_error)?;
                server.migrate().map_err(init_error)?;
                // The readers and the writer share one pool, a connection each at most.
                let mut pool = server.pool(readers + 1).map_err(init_error)?;
                users::bootstrap(&mut pool, rules_of(&config), &config.site.state_dir)
                    .map_err(init_error)?;
                let started = start_workers(cx, pool.clone(), pool, readers)?;
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
        })
    }

    fn on_message(&mut self, _cx: &mut Context<Self>, request: Request, reply: ReplyTo) {
        let request = match request {
            Request::Db(request) => request,
            Request::Scheduled { message, .. } => match message.db_request() {
                Some(request) => request,
                // Ping: proves the job and the db's mailbox work.
                None => return reply.send(Ok(iceprod_runtime::Reply::Done)),
            },
            _ => return reply.send(Err(CallError::Unsupported("the db takes db requests"))),
        };
        let queue = if request.is_write() {
            &self.writes
        } else {
            &self.reads
        };
        let Some(queue) = queue else {
            return reply.send(Err(CallError::Failed("the db is stopping".into())));
        };
        let job = Job {
            request,
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

    fn on_worker(&mut self, cx: &mut Context<Self>, event: WorkerExited) {
        self.exited += 1;
        if !cx.is_stopping() {
            cx.fail(ModuleError::Broken(format!(
                "{} ended unexpectedly",
                event.name
            )));
        }
    }

    fn on_reload(&mut self, cx: &mut Context<Self>, config: &Arc<Config>) -> ReloadAction {
        // The file and thread count need new threads; the rules apply to the next request.
        if config.db != cx.config().db {
            return ReloadAction::NeedsRestart;
        }
        self.rules = rules_of(config);
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
fn start_workers<W, R>(
    cx: &mut Context<Db>,
    writer: W,
    reader: R,
    readers: usize,
) -> Result<Started, ModuleError>
where
    W: Store + Send + 'static,
    R: Store + Clone + Send + 'static,
{
    let (read_tx, read_rx) = crossbeam_channel::unbounded::<Job>();
    let (write_tx, write_rx) = crossbeam_channel::unbounded::<Job>();
    let mut workers = Vec::new();
    let spawn_error = |e| ModuleError::io("starting a db worker", e);
    let exited = cx.worker_sender();
    workers.push(
        std::thread::Builder::new()
            .name("iceprod-db-writer".into())
            .spawn(move || workers::writer_loop(writer, write_rx, exited))
            .map_err(spawn_error)?,
    );
    for n in 0..readers {
        let (store, jobs, exited) = (reader.clone(), read_rx.clone(), cx.worker_sender());
        workers.push(
            std::thread::Builder::new()
                .name(format!("iceprod-db-read-{n}"))
                .spawn(move || workers::reader_loop(store, jobs, exited))
                .map_err(spawn_error)?,
        );
    }
    Ok((workers, read_tx, write_tx))
}

/// Opens the configured database (migrating it), runs `body` in one transaction and commits
/// it if `body` succeeds: for tools and tests that act on the database without the module.
pub fn transaction<R>(
    config: &DbConfig,
    body: impl FnOnce(&mut dyn Tx) -> Result<R, DbError>,
) -> Result<R, DbError> {
    match config.backend {
        DbBackend::Sqlite => {
            let mut conn = store::open(&config.path)?;
            // `Store::` and not the method syntax: rusqlite has its own `transaction`.
            Store::transaction(&mut conn, Access::Write, |tx| body(tx.tx()))
        }
        DbBackend::Mysql => {
            let server = MysqlServer::from_config(config)?;
            server.migrate()?;
            server
                .pool(1)?
                .transaction(Access::Write, |tx| body(tx.tx()))
        }
    }
}

/// The SQLite bindings this crate uses, for tests and tools that inspect the file.
pub use r2d2_sqlite::rusqlite;

/// The MySQL/MariaDB client this crate uses, for tests and tools that talk to the server.
pub use mysql;
