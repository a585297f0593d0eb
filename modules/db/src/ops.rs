//! The operations: each takes an open transaction ([`Tx`]) and one request and returns the
//! reply. Workers own transactions and commits; operations never commit. Written once for
//! every backend through [`Tx`]: `?` parameters, plain values, no dialect-specific SQL.

use std::collections::BTreeMap;
use std::io::Read;

use iceprod_runtime::states::{transition, TaskEvent, TaskRules, TaskStatus, Transition};
use iceprod_runtime::{DbReply, DbRequest, PasskeyScope, Resources, TaskCall};
use serde_json::Value;

use crate::args;
use crate::error::DbError;
use crate::queueing;
use crate::sql::Tx;

/// What an operation needs from the config, snapshotted when the request arrived.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpRules {
    pub max_resets: u32,
    /// This site's number, the prefix of the global ids minted here.
    pub site_number: u128,
    /// The component-wise largest slot over every `[queue.grids]` grid; `None` when no grid
    /// is configured. Tasks asking for more are suspended (`SuspendOversizeTasks`).
    pub largest: Option<Resources>,
}

/// Now, as stored: RFC 3339 in UTC with microseconds, so text order is time order.
pub fn now() -> String {
    stamp(chrono::Utc::now())
}

pub(crate) fn stamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

pub fn execute(tx: &mut dyn Tx, rules: OpRules, request: &DbRequest) -> Result<DbReply, DbError> {
    match request {
        DbRequest::TaskCounts { dataset_id } => task_counts(tx, dataset_id.as_deref()),
        DbRequest::ChangeTaskState { task_id, event } => {
            apply_transition(tx, rules, task_id, *event).map(DbReply::Changed)
        }
        DbRequest::IssuePasskey {
            scope,
            subject,
            ttl,
        } => issue_passkey(tx, *scope, subject, *ttl),
        DbRequest::VerifyPasskey { key } => {
            verify_passkey(tx, key).map(|(scope, subject)| DbReply::PasskeyOwner { scope, subject })
        }
        DbRequest::RevokePasskeys { scope, subject } => {
            let n = tx.exec(
                "UPDATE passkey SET revoked = 1 WHERE scope = ? AND subject = ? AND revoked = 0",
                args![scope.name(), subject],
            )?;
            Ok(DbReply::Rows(n))
        }
        DbRequest::Task {
            passkey,
            task_id,
            call,
        } => task_call(tx, rules, passkey, task_id, call),
        DbRequest::SubmitDataset(submission) => {
            crate::datasets::submit_dataset(tx, rules, submission)
        }
        DbRequest::BufferJobs { max_jobs } => crate::datasets::buffer_jobs(tx, rules, *max_jobs),
        DbRequest::AsUser { auth, action } => crate::users::as_user(tx, rules, auth, action),
        DbRequest::Account(request) => crate::accounts::execute(tx, rules, request),
        DbRequest::Page(query) => crate::pages::query(tx, query),
        DbRequest::QueueTasks {
            gridspec,
            num,
            largest,
            pilot_mode,
        } => queueing::queue_tasks(tx, rules, gridspec, *num, *largest, *pilot_mode),
        DbRequest::SetGridId {
            task_id,
            grid_queue_id,
            submit_dir,
        } => queueing::set_grid_id(tx, task_id, grid_queue_id, submit_dir),
        DbRequest::CreatePilot {
            gridspec,
            requirements,
        } => queueing::create_pilot(tx, rules, gridspec, *requirements),
        DbRequest::NewTask {
            passkey,
            gridspec,
            available,
            os,
            hostname,
        } => queueing::new_task(
            tx,
            rules,
            passkey,
            gridspec,
            *available,
            os.as_deref(),
            hostname,
        ),
        DbRequest::UpdatePilot {
            passkey,
            pilot_id,
            tasks,
            available,
            claimed,
        } => queueing::update_pilot(tx, passkey, pilot_id, tasks, *available, *claimed),
        DbRequest::CompleteJobsAndDatasets => queueing::complete_jobs_and_datasets(tx),
        DbRequest::RemoveExpired => queueing::remove_expired(tx),
        DbRequest::RecordGraphs => crate::graphs::record(tx, rules),
        DbRequest::ArchiveBatch { cutoff, max } => crate::archive::archive_batch(tx, cutoff, *max),
        // The module runs an archive as batches of `ArchiveBatch` (`lib.rs`).
        DbRequest::Archive { .. } => Err(DbError::Refused(
            "an archive run is made of batches; send it to the db module".into(),
        )),
        DbRequest::Public(query) => crate::public::query(tx, query),
        DbRequest::GridTasks { .. }
        | DbRequest::ResetGridTasks { .. }
        | DbRequest::ResetStuckTasks { .. }
        | DbRequest::RecycleTasks { .. }
        | DbRequest::GridPilots { .. }
        | DbRequest::SetPilotGridId { .. }
        | DbRequest::RemovePilot { .. }
        | DbRequest::PilotDemand { .. }
        | DbRequest::ResetOrphanedPilotTasks
        | DbRequest::SuspendOversizeTasks => crate::grid::execute(tx, rules, request),
    }
}

/// (status, tasks) of one live dataset or of every live one, statuses with tasks only. Read
/// from `task_summary` (migration 5, kept by triggers), so it costs a few rows whatever the
/// number of tasks, where a `GROUP BY` over `task` costs ~48 ms per million.
pub(crate) fn live_task_counts(
    tx: &mut dyn Tx,
    dataset_id: Option<&str>,
) -> Result<Vec<crate::sql::Row>, DbError> {
    match dataset_id {
        Some(id) => tx.query(
            "SELECT status, sum(n) FROM task_summary WHERE dataset_id = ? \
             GROUP BY status HAVING sum(n) > 0",
            args![id],
        ),
        None => tx.query(
            "SELECT status, sum(n) FROM task_summary GROUP BY status HAVING sum(n) > 0",
            args![],
        ),
    }
}

fn task_counts(tx: &mut dyn Tx, dataset_id: Option<&str>) -> Result<DbReply, DbError> {
    let rows = live_task_counts(tx, dataset_id)?;
    let mut counts = BTreeMap::new();
    for row in rows {
        counts.insert(row.text(0)?, row.int(1)? as u64);
    }
    Ok(DbReply::Counts(counts))
}

/// Walltime a worker reports with its transition, written by the same `UPDATE`.
#[derive(Clone, Copy, Debug)]
enum Spent {
    /// Hours of a finished attempt (`walltime`).
    Good(f64),
    /// Hours of a failed attempt (`walltime_err`, one more `walltime_err_n`).
    Failed(f64),
}

/// The one place a task's state is written (SPEC §4), through `states::transition`, with
/// `prev_status` and the time of the change.
pub fn apply_transition(
    tx: &mut dyn Tx,
    rules: OpRules,
    task_id: &str,
    event: TaskEvent,
) -> Result<Transition, DbError> {
    transition_spending(tx, rules, task_id, event, None)
}

/// [`apply_transition`] that also records the walltime of the attempt in the same `UPDATE`:
/// one write of the row, so the summary triggers (schema migration 5) run once, and a task
/// enters `complete` with its final walltime (the summary's min/max cannot forget a value).
fn transition_spending(
    tx: &mut dyn Tx,
    rules: OpRules,
    task_id: &str,
    event: TaskEvent,
    spent: Option<Spent>,
) -> Result<Transition, DbError> {
    let row = tx.query_opt(
        "SELECT task.status, task.failures, dataset.debug FROM task \
         JOIN dataset ON dataset.dataset_id = task.dataset_id WHERE task.task_id = ?",
        args![task_id],
    )?;
    let Some(row) = row else {
        return Err(DbError::NotFound {
            what: "task",
            id: task_id.to_string(),
        });
    };
    let status = row.text(0)?;
    let from = TaskStatus::from_name(&status)
        .ok_or_else(|| DbError::Schema(format!("task {task_id} has status {status}")))?;
    let task_rules = TaskRules {
        max_resets: rules.max_resets,
        debug: row.bool(2)?,
        client_site: false,
    };
    let failures = u32::try_from(row.int(1)?).unwrap_or(u32::MAX);
    let t = transition(from, failures, event, &task_rules)
        .map_err(|e| DbError::Refused(format!("task {task_id}: {e}")))?;
    let (set_spent, hours) = match spent {
        None => ("", 0.0),
        Some(Spent::Good(hours)) => (", walltime = walltime + ?", hours),
        Some(Spent::Failed(hours)) => (
            ", walltime_err = walltime_err + ?, walltime_err_n = walltime_err_n + 1",
            hours,
        ),
    };
    let sql = format!(
        "UPDATE task SET status = ?, prev_status = ?, status_changed = ?, failures = ?\
         {set_spent} WHERE task_id = ?"
    );
    let (to, from, changed) = (t.to.name(), t.from.name(), now());
    if spent.is_some() {
        tx.exec(&sql, args![to, from, changed, t.failures, hours, task_id])?;
    } else {
        tx.exec(&sql, args![to, from, changed, t.failures, task_id])?;
    }
    Ok(t)
}

/// The next local number of `kind` (`counter.KIND` in `setting`).
pub fn next_local(tx: &mut dyn Tx, kind: &str) -> Result<u128, DbError> {
    let name = format!("counter.{kind}");
    let changed = tx.exec(
        // SIGNED, not INTEGER: the one spelling SQLite, MariaDB and MySQL 8 all take.
        "UPDATE setting SET value = CAST(value AS SIGNED) + 1 WHERE name = ?",
        args![name.as_str()],
    )?;
    if changed != 1 {
        return Err(DbError::Schema(format!("no setting {name}")));
    }
    let row = tx
        .query_opt(
            "SELECT value FROM setting WHERE name = ?",
            args![name.as_str()],
        )?
        .ok_or_else(|| DbError::Schema(format!("no setting {name}")))?;
    let value = row.text(0)?;
    value
        .parse()
        .map_err(|_| DbError::Schema(format!("{name} holds `{value}`")))
}

/// A new global id of `kind` (SPEC §2).
pub fn new_global_id(tx: &mut dyn Tx, rules: OpRules, kind: &str) -> Result<String, DbError> {
    Ok(iceprod_runtime::ids::global_id(
        rules.site_number,
        next_local(tx, kind)?,
    ))
}

fn random_hex(bytes: usize) -> Result<String, DbError> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| DbError::Refused(format!("cannot read /dev/urandom: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn issue_passkey(
    tx: &mut dyn Tx,
    scope: PasskeyScope,
    subject: &str,
    ttl: std::time::Duration,
) -> Result<DbReply, DbError> {
    issue_passkey_key(tx, scope, subject, ttl).map(DbReply::Passkey)
}

/// Issues a passkey and returns it.
pub fn issue_passkey_key(
    tx: &mut dyn Tx,
    scope: PasskeyScope,
    subject: &str,
    ttl: std::time::Duration,
) -> Result<String, DbError> {
    let id = iceprod_runtime::ids::encode(next_local(tx, "passkey")?);
    let key = random_hex(32)?;
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(36_500));
    let expire = chrono::Utc::now()
        .checked_add_signed(ttl)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    tx.exec(
        "INSERT INTO passkey (passkey_id, auth_key, scope, subject, expire) VALUES (?, ?, ?, ?, ?)",
        args![id, key.as_str(), scope.name(), subject, stamp(expire)],
    )?;
    Ok(key)
}

/// The owner of a passkey that is known, unexpired and not revoked.
pub fn verify_passkey(tx: &mut dyn Tx, key: &str) -> Result<(PasskeyScope, String), DbError> {
    let row = tx.query_opt(
        "SELECT scope, subject FROM passkey WHERE auth_key = ? AND revoked = 0 AND expire > ?",
        args![key, now()],
    )?;
    let owner = match row {
        Some(row) => PasskeyScope::from_name(&row.text(0)?).map(|s| (s, row.text(1))),
        None => None,
    };
    match owner {
        Some((scope, subject)) => Ok((scope, subject?)),
        None => Err(DbError::Refused(
            "unknown, expired or revoked passkey".into(),
        )),
    }
}

/// Whether `passkey` may act on `task_id`: its own task key, or the key of the pilot that
/// runs it. Checked in the caller's transaction, so a revocation counts at once.
fn authorize_task(tx: &mut dyn Tx, passkey: &str, task_id: &str) -> Result<(), DbError> {
    let Ok(owner) = verify_passkey(tx, passkey) else {
        return Err(DbError::Forbidden(
            "unknown, expired or revoked passkey".into(),
        ));
    };
    let allowed = match owner {
        (PasskeyScope::Task, subject) => subject == task_id,
        (PasskeyScope::Pilot, pilot) => tx
            .query_opt("SELECT tasks FROM pilot WHERE pilot_id = ?", args![pilot])?
            .map(|row| row.text(0))
            .transpose()?
            .is_some_and(|tasks| tasks.split(',').any(|id| id.trim() == task_id)),
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(DbError::Forbidden(format!(
            "this passkey may not act on task {task_id}"
        )))
    }
}

fn task_call(
    tx: &mut dyn Tx,
    rules: OpRules,
    passkey: &str,
    task_id: &str,
    call: &TaskCall,
) -> Result<DbReply, DbError> {
    authorize_task(tx, passkey, task_id)?;
    match call {
        TaskCall::SetProcessing => {
            apply_transition(tx, rules, task_id, TaskEvent::Start)?;
            Ok(DbReply::Done)
        }
        TaskCall::StillRunning => {
            let status = tx
                .query_opt("SELECT status FROM task WHERE task_id = ?", args![task_id])?
                .map(|row| row.text(0))
                .transpose()?;
            Ok(DbReply::StillRunning(matches!(
                status.as_deref(),
                Some("queued" | "processing")
            )))
        }
        TaskCall::Finish { stats } => {
            let spent = Some(Spent::Good(hours_used(stats)));
            transition_spending(tx, rules, task_id, TaskEvent::Finish, spent)?;
            insert_task_stat(tx, rules, task_id, stats, false)?;
            Ok(DbReply::Done)
        }
        TaskCall::Error { info } => {
            let spent = Some(Spent::Failed(hours_used(info)));
            transition_spending(tx, rules, task_id, TaskEvent::Error, spent)?;
            learn_resources(tx, task_id, info)?;
            insert_task_stat(tx, rules, task_id, info, true)?;
            Ok(DbReply::Done)
        }
        TaskCall::UploadLog { name, data } => {
            upload_log(tx, rules, task_id, name, data)?;
            Ok(DbReply::Done)
        }
        TaskCall::Config => {
            let gridspec = tx
                .query_opt(
                    "SELECT gridspec FROM task WHERE task_id = ?",
                    args![task_id],
                )?
                .map(|row| row.opt_text(0))
                .transpose()?
                .flatten()
                .unwrap_or_default();
            queueing::task_config(tx, task_id, &gridspec).map(DbReply::Value)
        }
    }
}

fn upload_log(
    tx: &mut dyn Tx,
    rules: OpRules,
    task_id: &str,
    name: &str,
    data: &str,
) -> Result<(), DbError> {
    let replaced = tx.exec(
        "UPDATE task_log SET data = ? WHERE task_id = ? AND name = ?",
        args![data, task_id, name],
    )?;
    if replaced == 0 {
        let id = new_global_id(tx, rules, "task_log")?;
        tx.exec(
            "INSERT INTO task_log (task_log_id, task_id, dataset_id, name, data) \
             SELECT ?, task_id, dataset_id, ?, ? FROM task WHERE task_id = ?",
            args![id, name, data, task_id],
        )?;
    }
    Ok(())
}

/// `time_used` of a worker's stats (seconds) as hours; non-numbers and negatives count 0.
fn hours_used(stats: &Value) -> f64 {
    let seconds = stats
        .get("time_used")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    if seconds.is_finite() && seconds > 0.0 {
        seconds / 3600.0
    } else {
        0.0
    }
}

pub(crate) fn insert_task_stat(
    tx: &mut dyn Tx,
    rules: OpRules,
    task_id: &str,
    stat: &Value,
    error: bool,
) -> Result<(), DbError> {
    let id = new_global_id(tx, rules, "task_stat")?;
    tx.exec(
        "INSERT INTO task_stat (task_stat_id, task_id, dataset_id, create_date, stat, error) \
         SELECT ?, task_id, dataset_id, ?, ?, ? FROM task WHERE task_id = ?",
        args![id, now(), stat.to_string(), error, task_id],
    )?;
    Ok(())
}

/// SPEC §4: after an error that reports using more memory, disk or time than the task asked
/// for, its own requirement becomes 1.5 × what it used.
fn learn_resources(tx: &mut dyn Tx, task_id: &str, info: &Value) -> Result<(), DbError> {
    let Some(used) = info.get("resources").and_then(Value::as_object) else {
        return Ok(());
    };
    let Some(row) = tx.query_opt(
        "SELECT requirements FROM task WHERE task_id = ?",
        args![task_id],
    )?
    else {
        return Ok(());
    };
    let mut reqs: serde_json::Map<String, Value> =
        serde_json::from_str(&row.text(0)?).unwrap_or_default();
    let mut changed = false;
    for key in ["memory", "disk", "time"] {
        let Some(observed) = used.get(key).and_then(Value::as_f64) else {
            continue;
        };
        let asked = reqs.get(key).and_then(Value::as_f64).unwrap_or(0.0);
        if observed.is_finite() && observed > asked {
            reqs.insert(key.into(), Value::from(observed * 1.5));
            changed = true;
        }
    }
    if changed {
        tx.exec(
            "UPDATE task SET requirements = ? WHERE task_id = ?",
            args![Value::Object(reqs).to_string(), task_id],
        )?;
    }
    Ok(())
}
