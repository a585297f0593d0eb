//! iceprod-db: the db module. Owns the database: its schema and migrations ([`schema`],
//! [`store`]), the operations ([`ops`]) and the threads that run them ([`workers`]).
//!
//! Other modules reach it only through `Request::Db` messages. Its loop never runs SQL: reads
//! go to a pool of reader threads, writes to one writer that commits the writes waiting at
//! the same moment together (group commit); each answers the caller directly, a write only
//! after its commit. SQLite in WAL mode with `synchronous=FULL` (see `store.rs`).
//!
//! Still to come here (issue 3): dataset submission and job buffering, queueing and pilot
//! matchmaking queries, the archive file, and the MySQL backend.

pub mod datasets;
pub mod error;
pub mod ops;
pub mod schema;
pub mod sql;
pub mod store;
pub mod workers;

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use iceprod_runtime::{
    CallError, Config, Context, Module, ModuleError, ModuleKind, ReloadAction, ReplyTo, Request,
};
use r2d2_sqlite::SqliteConnectionManager;

pub use error::DbError;
use ops::OpRules;
use workers::{Job, WorkerExited};

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
        if config.db.backend != iceprod_runtime::config::DbBackend::Sqlite {
            return Err(ModuleError::Config(
                "db.backend: only \"sqlite\" is available in this build".into(),
            ));
        }
        let file = config.db.path.clone();
        // Opening migrates; the writer keeps this connection.
        let writer_conn = store::open(&file).map_err(|e| ModuleError::Config(e.to_string()))?;
        let manager = SqliteConnectionManager::file(&file).with_init(|c| store::configure(c));
        let pool = r2d2::Pool::builder()
            .max_size(config.db.readers as u32)
            .build(manager)
            .map_err(|e| {
                ModuleError::Config(format!("cannot open database {}: {e}", file.display()))
            })?;
        let (read_tx, read_rx) = crossbeam_channel::unbounded::<Job>();
        let (write_tx, write_rx) = crossbeam_channel::unbounded::<Job>();
        let mut workers = Vec::new();
        let spawn_error = |e| ModuleError::io("starting a db worker", e);
        let exited = cx.worker_sender();
        workers.push(
            std::thread::Builder::new()
                .name("iceprod-db-writer".into())
                .spawn(move || workers::writer_loop(writer_conn, write_rx, exited))
                .map_err(spawn_error)?,
        );
        for n in 0..config.db.readers {
            let (pool, jobs, exited) = (pool.clone(), read_rx.clone(), cx.worker_sender());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("iceprod-db-read-{n}"))
                    .spawn(move || workers::reader_loop(pool, jobs, exited))
                    .map_err(spawn_error)?,
            );
        }
        log::info!(
            "db: {} open ({} readers)",
            file.display(),
            config.db.readers
        );
        Ok(Db {
            reads: Some(read_tx),
            writes: Some(write_tx),
            workers,
            exited: 0,
            rules: rules_of(&config),
        })
    }

    fn on_message(&mut self, _cx: &mut Context<Self>, request: Request, reply: ReplyTo) {
        let Request::Db(request) = request else {
            return reply.send(Err(CallError::Unsupported("the db takes db requests")));
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

/// The SQLite bindings this crate uses, for tests and tools that inspect the file.
pub use r2d2_sqlite::rusqlite;
