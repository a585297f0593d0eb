//! The threads that run SQL, so the db module's loop never does: reader threads with pooled
//! connections, and one writer that groups the writes waiting at the same moment into one
//! transaction (group commit). Every answer goes straight to the caller's mailbox; a write is
//! answered only after its transaction committed.
//!
//! Within a group each write runs in its own savepoint, so one failing request is rolled back
//! alone and the others still commit.

use crossbeam_channel::Receiver;
use iceprod_runtime::{CallError, DbRequest, Reply, ReplyTo, WorkerSender};
use r2d2_sqlite::rusqlite::{Connection, TransactionBehavior};
use r2d2_sqlite::SqliteConnectionManager;

use crate::error::DbError;
use crate::ops::{execute, OpRules};
use crate::sql::SqliteTx;

/// Most writes committed in one transaction.
pub const MAX_GROUP: usize = 512;

/// One request on its way to a worker.
pub struct Job {
    pub request: DbRequest,
    pub reply: ReplyTo,
    pub rules: OpRules,
}

/// Sent to the db loop when a worker thread ends.
#[derive(Debug)]
pub struct WorkerExited {
    pub name: String,
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

pub fn reader_loop(
    pool: r2d2::Pool<SqliteConnectionManager>,
    jobs: Receiver<Job>,
    exited: WorkerSender<WorkerExited>,
) {
    for job in jobs {
        let result = pool
            .get()
            .map_err(|e| DbError::Pool(e.to_string()))
            .and_then(|conn| execute(&mut SqliteTx(&conn), job.rules, &job.request));
        job.reply.send(result.map(Reply::Db).map_err(to_call_error));
    }
    let _ = exited.send(WorkerExited {
        name: thread_name(),
    });
}

pub fn writer_loop(mut conn: Connection, jobs: Receiver<Job>, exited: WorkerSender<WorkerExited>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        match write_group(&mut conn, &group) {
            Ok(results) => {
                for (job, result) in group.into_iter().zip(results) {
                    job.reply.send(result.map(Reply::Db).map_err(to_call_error));
                }
            }
            Err(e) => {
                // Nothing of the group was committed: every caller hears it.
                let message = e.to_string();
                log::error!("db: a group of {} writes failed: {message}", group.len());
                for job in group {
                    job.reply.send(Err(CallError::Failed(
                        "database error; see the server log".into(),
                    )));
                }
            }
        }
    }
    let _ = exited.send(WorkerExited {
        name: thread_name(),
    });
}

type OpResult = Result<iceprod_runtime::DbReply, DbError>;

fn write_group(conn: &mut Connection, group: &[Job]) -> Result<Vec<OpResult>, DbError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(group.len());
    for job in group {
        tx.execute_batch("SAVEPOINT op")?;
        let result = execute(&mut SqliteTx(&tx), job.rules, &job.request);
        if result.is_ok() {
            tx.execute_batch("RELEASE op")?;
        } else {
            tx.execute_batch("ROLLBACK TO op; RELEASE op")?;
        }
        results.push(result);
    }
    tx.commit()?;
    Ok(results)
}

fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("db worker")
        .to_string()
}
