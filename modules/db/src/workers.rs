//! The threads that run SQL, so the db module's loop never does: reader threads, and one
//! writer that groups the writes waiting at the same moment into one transaction (group
//! commit). Every answer goes straight to the caller's mailbox; a write is answered only after
//! its transaction committed.
//!
//! Within a group each write runs in its own savepoint, so one failing request is rolled back
//! alone and the others still commit. If the group's transaction itself fails (the connection
//! broke, the server rolled the transaction back, the commit failed), nothing of it was
//! committed and every caller in it gets `CallError::Failed`.
//!
//! The writer keeps a share of the database's lock (`lock.rs`) until it ends, so the database
//! stays locked while writes queued before a module panic still commit.
//!
//! Account requests that hash a password start on a reader, which reads and hashes, and go
//! on to the writer for their short writes (see `accounts.rs`), so a login never holds the
//! writer for the time of a hash.
//!
//! The loops are written once for every backend against [`Store`] (where transactions come
//! from) and [`WorkerTx`] (an open transaction with savepoints); `store.rs` implements them for
//! SQLite and `mysql_store.rs` for MySQL/MariaDB.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use iceprod_runtime::{CallError, DbReply, DbRequest, Reply, ReplyTo, WorkerCx};

use crate::accounts::{self, Prepared};
use crate::error::DbError;
use crate::lock::DbLock;
use crate::ops::{execute, OpRules};
use crate::sql::Tx;

/// Most writes committed in one transaction.
pub const MAX_GROUP: usize = 512;

/// One request on its way to a worker.
pub struct Job {
    pub work: Work,
    pub reply: ReplyTo,
    pub rules: OpRules,
}

/// What a job does.
pub enum Work {
    /// A request as it came.
    Request(DbRequest),
    /// The writes of an account request whose reads and hashing a reader did.
    Prepared(Prepared),
}

impl Work {
    fn execute(&self, tx: &mut dyn Tx, rules: OpRules) -> Result<DbReply, DbError> {
        match self {
            Work::Request(request) => execute(tx, rules, request),
            Work::Prepared(prepared) => accounts::finish(tx, rules, prepared),
        }
    }
}

/// What a transaction may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Queries only (MySQL: a `READ ONLY` transaction; SQLite: a deferred one on a query-only
    /// connection).
    Read,
    /// The writer's group.
    Write,
}

/// An open transaction as a worker sees it: operations run in it through [`Tx`]; the writer
/// wraps each operation in the savepoint `op`.
pub trait WorkerTx {
    fn tx(&mut self) -> &mut dyn Tx;
    fn savepoint(&mut self) -> Result<(), DbError>;
    fn release(&mut self) -> Result<(), DbError>;
    /// Undoes everything since `savepoint` and ends the savepoint.
    fn rollback_to(&mut self) -> Result<(), DbError>;
}

/// Where a worker's transactions come from (one backend's connection or pool).
pub trait Store {
    /// Runs `body` in a new transaction and commits it if `body` returns `Ok`; otherwise, or
    /// if the commit fails, nothing of it stays. A connection that may still hold an open
    /// transaction is never reused.
    fn transaction<R>(
        &mut self,
        access: Access,
        body: impl FnOnce(&mut dyn WorkerTx) -> Result<R, DbError>,
    ) -> Result<R, DbError>;
}

/// How an operation's failure reaches the caller: refusals say why; database failures say
/// only that (the details go to the log).
pub fn to_call_error(e: DbError) -> CallError {
    match e {
        DbError::NotFound { .. } | DbError::Refused(_) => CallError::Refused(e.to_string()),
        DbError::Forbidden(why) => CallError::Forbidden(why),
        other => {
            log::error!("db: {other}");
            CallError::Failed("database error; see the server log".into())
        }
    }
}

/// Serves reads; hands the writes of a hashing account request on to `writes`.
pub fn reader_loop<S: Store>(
    mut store: S,
    jobs: Receiver<Job>,
    writes: Sender<Job>,
    worker: &WorkerCx,
) {
    for job in jobs {
        worker.checkpoint();
        if let Work::Request(DbRequest::Account(request)) = &job.work {
            if accounts::needs_hashing(request) {
                let prepared = store
                    .transaction(Access::Read, |tx| accounts::prepare(tx.tx(), request))
                    .and_then(accounts::Unhashed::hash);
                match prepared {
                    Ok(prepared) => forward(&writes, job.reply, job.rules, prepared),
                    Err(e) => job.reply.send(Err(to_call_error(e))),
                }
                continue;
            }
        }
        let result = store.transaction(Access::Read, |tx| job.work.execute(tx.tx(), job.rules));
        job.reply.send(result.map(Reply::Db).map_err(to_call_error));
    }
}

fn forward(writes: &Sender<Job>, reply: ReplyTo, rules: OpRules, prepared: Prepared) {
    let job = Job {
        work: Work::Prepared(prepared),
        reply,
        rules,
    };
    if let Err(unsent) = writes.send(job) {
        unsent
            .0
            .reply
            .send(Err(CallError::Failed("the db writer is gone".into())));
    }
}

/// How often the writer logs its group sizes (at debug level, target `iceprod_db::workers`:
/// `RUST_LOG=iceprod_db::workers=debug`), when it wrote anything.
const GROUP_REPORT_EVERY: Duration = Duration::from_secs(5);

/// The writer's group sizes since its last report: what the group commit achieves.
struct GroupStats {
    since: Instant,
    groups: u64,
    writes: u64,
    largest: usize,
    singles: u64,
    /// Time inside `write_group` (the transactions, commits included).
    busy: Duration,
}

impl GroupStats {
    fn new() -> GroupStats {
        GroupStats {
            since: Instant::now(),
            groups: 0,
            writes: 0,
            largest: 0,
            singles: 0,
            busy: Duration::ZERO,
        }
    }

    fn add(&mut self, size: usize, took: Duration) {
        self.groups += 1;
        self.writes += size as u64;
        self.largest = self.largest.max(size);
        self.singles += u64::from(size == 1);
        self.busy += took;
    }

    /// Logs and restarts the counts once `GROUP_REPORT_EVERY` has passed (or `now`).
    fn report(&mut self, now: bool) {
        let elapsed = self.since.elapsed();
        if self.groups == 0 || (!now && elapsed < GROUP_REPORT_EVERY) {
            return;
        }
        if !log::log_enabled!(log::Level::Debug) {
            *self = GroupStats::new();
            return;
        }
        log::debug!(
            "db: writer: {} writes in {} groups over {:.1} s (mean {:.1}, largest {}, {} of one \
             write; {:.0} % of the time in transactions, {:.0} µs per write)",
            self.writes,
            self.groups,
            elapsed.as_secs_f64(),
            self.writes as f64 / self.groups as f64,
            self.largest,
            self.singles,
            100.0 * self.busy.as_secs_f64() / elapsed.as_secs_f64().max(1e-9),
            1e6 * self.busy.as_secs_f64() / self.writes as f64,
        );
        *self = GroupStats::new();
    }
}

/// Commits the writes of `jobs` in groups until the channel closes. `lock` is the writer's
/// share of the database's lock (`lock.rs`): kept while writes may still come, released with
/// the connection before the module hears the writer ended (by return or panic), so a stopped
/// module leaves the database free.
pub fn writer_loop<S: Store>(mut store: S, jobs: Receiver<Job>, worker: &WorkerCx, lock: DbLock) {
    let mut stats = GroupStats::new();
    while let Ok(first) = jobs.recv() {
        worker.checkpoint();
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let written = write_group(&mut store, &group);
        stats.add(group.len(), started.elapsed());
        stats.report(false);
        match written {
            Ok(results) => {
                for (job, result) in group.into_iter().zip(results) {
                    job.reply.send(result.map(Reply::Db).map_err(to_call_error));
                }
            }
            Err(e) => {
                // Nothing of the group was committed: every caller hears it.
                log::error!("db: a group of {} writes failed: {e}", group.len());
                for job in group {
                    job.reply.send(Err(CallError::Failed(
                        "database error; see the server log".into(),
                    )));
                }
            }
        }
    }
    stats.report(true);
    drop(store);
    drop(lock);
}

type OpResult = Result<DbReply, DbError>;

/// Runs the group in one transaction, each operation in its own savepoint. A failing
/// savepoint statement fails the whole group: it means the transaction is gone (connection
/// lost, or the server rolled it back, as InnoDB does on a deadlock), and running on would
/// apply the remaining operations outside it.
fn write_group<S: Store>(store: &mut S, group: &[Job]) -> Result<Vec<OpResult>, DbError> {
    store.transaction(Access::Write, |tx| {
        let mut results = Vec::with_capacity(group.len());
        for job in group {
            tx.savepoint()?;
            let result = job.work.execute(tx.tx(), job.rules);
            if result.is_ok() {
                tx.release()?;
            } else {
                tx.rollback_to()?;
            }
            results.push(result);
        }
        Ok(results)
    })
}
