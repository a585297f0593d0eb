//! The operations: each takes an open transaction and one request and returns the reply.
//! Workers call [`execute`]; they own transactions and commits, operations never commit.

use std::collections::BTreeMap;
use std::io::Read;

use iceprod_runtime::states::{transition, TaskEvent, TaskRules, TaskStatus, Transition};
use iceprod_runtime::{DbReply, DbRequest, PasskeyScope, TaskCall};
use r2d2_sqlite::rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use crate::error::DbError;

/// What an operation needs from the config, snapshotted when the request arrived.
#[derive(Clone, Copy, Debug)]
pub struct OpRules {
    pub max_resets: u32,
    /// This site's number, the prefix of the global ids minted here.
    pub site_number: u128,
}

/// Now, as stored: RFC 3339 in UTC with microseconds, so text order is time order.
pub fn now() -> String {
    stamp(chrono::Utc::now())
}

fn stamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

pub fn execute(conn: &Connection, rules: OpRules, request: &DbRequest) -> Result<DbReply, DbError> {
    match request {
        DbRequest::TaskCounts { dataset_id } => task_counts(conn, dataset_id.as_deref()),
        DbRequest::ChangeTaskState { task_id, event } => {
            change_task_state(conn, rules, task_id, *event)
        }
        DbRequest::IssuePasskey {
            scope,
            subject,
            ttl,
        } => issue_passkey(conn, *scope, subject, *ttl),
        DbRequest::VerifyPasskey { key } => verify_passkey(conn, key),
        DbRequest::RevokePasskeys { scope, subject } => {
            let n = conn.execute(
                "UPDATE passkey SET revoked = 1 WHERE scope = ?1 AND subject = ?2 AND revoked = 0",
                params![scope.name(), subject],
            )?;
            Ok(DbReply::Rows(n as u64))
        }
        DbRequest::Task {
            passkey,
            task_id,
            call,
        } => task_call(conn, rules, passkey, task_id, call),
    }
}

fn task_counts(conn: &Connection, dataset_id: Option<&str>) -> Result<DbReply, DbError> {
    let mut counts = BTreeMap::new();
    let mut stmt = match dataset_id {
        Some(_) => conn.prepare_cached(
            "SELECT status, count(*) FROM task WHERE dataset_id = ?1 GROUP BY status",
        )?,
        None => conn.prepare_cached("SELECT status, count(*) FROM task GROUP BY status")?,
    };
    let rows = match dataset_id {
        Some(id) => stmt.query(params![id])?,
        None => stmt.query([])?,
    };
    let mut rows = rows;
    while let Some(row) = rows.next()? {
        counts.insert(row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64);
    }
    Ok(DbReply::Counts(counts))
}

/// The one place a task's state is written (SPEC §4), through `states::transition`.
fn change_task_state(
    conn: &Connection,
    rules: OpRules,
    task_id: &str,
    event: TaskEvent,
) -> Result<DbReply, DbError> {
    apply_transition(conn, rules, task_id, event).map(DbReply::Changed)
}

fn apply_transition(
    conn: &Connection,
    rules: OpRules,
    task_id: &str,
    event: TaskEvent,
) -> Result<Transition, DbError> {
    let row: Option<(String, u32, bool)> = conn
        .prepare_cached(
            "SELECT task.status, task.failures, dataset.debug FROM task \
             JOIN dataset ON dataset.dataset_id = task.dataset_id WHERE task.task_id = ?1",
        )?
        .query_row(params![task_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((status, failures, debug)) = row else {
        return Err(DbError::NotFound {
            what: "task",
            id: task_id.to_string(),
        });
    };
    let from = TaskStatus::from_name(&status)
        .ok_or_else(|| DbError::Refused(format!("task {task_id} has unknown status {status}")))?;
    let task_rules = TaskRules {
        max_resets: rules.max_resets,
        debug,
        client_site: false,
    };
    let t = transition(from, failures, event, &task_rules)
        .map_err(|e| DbError::Refused(format!("task {task_id}: {e}")))?;
    conn.prepare_cached(
        "UPDATE task SET status = ?1, prev_status = ?2, status_changed = ?3, failures = ?4 \
         WHERE task_id = ?5",
    )?
    .execute(params![
        t.to.name(),
        t.from.name(),
        now(),
        t.failures,
        task_id
    ])?;
    Ok(t)
}
/// Whether `passkey` may act on `task_id`: its own task key, or the key of the pilot that
/// runs it. Checked in the caller's transaction, so a revocation counts at once.
fn authorize_task(conn: &Connection, passkey: &str, task_id: &str) -> Result<(), DbError> {
    let owner = match verify_passkey(conn, passkey) {
        Ok(DbReply::PasskeyOwner { scope, subject }) => (scope, subject),
        _ => {
            return Err(DbError::Forbidden(
                "unknown, expired or revoked passkey".into(),
            ))
        }
    };
    let allowed = match owner {
        (PasskeyScope::Task, subject) => subject == task_id,
        (PasskeyScope::Pilot, pilot) => {
            let tasks: Option<String> = conn
                .prepare_cached("SELECT tasks FROM pilot WHERE pilot_id = ?1")?
                .query_row(params![pilot], |r| r.get(0))
                .optional()?;
            tasks.is_some_and(|t| t.split(',').any(|id| id.trim() == task_id))
        }
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
    conn: &Connection,
    rules: OpRules,
    passkey: &str,
    task_id: &str,
    call: &TaskCall,
) -> Result<DbReply, DbError> {
    authorize_task(conn, passkey, task_id)?;
    match call {
        TaskCall::SetProcessing => {
            apply_transition(conn, rules, task_id, TaskEvent::Start)?;
            Ok(DbReply::Done)
        }
        TaskCall::StillRunning => {
            let status: Option<String> = conn
                .prepare_cached("SELECT status FROM task WHERE task_id = ?1")?
                .query_row(params![task_id], |r| r.get(0))
                .optional()?;
            Ok(DbReply::StillRunning(matches!(
                status.as_deref(),
                Some("queued" | "processing")
            )))
        }
        TaskCall::Finish { stats } => {
            apply_transition(conn, rules, task_id, TaskEvent::Finish)?;
            conn.prepare_cached("UPDATE task SET walltime = walltime + ?1 WHERE task_id = ?2")?
                .execute(params![hours_used(stats), task_id])?;
            insert_task_stat(conn, rules, task_id, stats, false)?;
            Ok(DbReply::Done)
        }
        TaskCall::Error { info } => {
            apply_transition(conn, rules, task_id, TaskEvent::Error)?;
            conn.prepare_cached(
                "UPDATE task SET walltime_err = walltime_err + ?1, \
                 walltime_err_n = walltime_err_n + 1 WHERE task_id = ?2",
            )?
            .execute(params![hours_used(info), task_id])?;
            learn_resources(conn, task_id, info)?;
            insert_task_stat(conn, rules, task_id, info, true)?;
            Ok(DbReply::Done)
        }
        TaskCall::UploadLog { name, data } => {
            let id = global_id(rules, next_local(conn, "task_log")?);
            conn.prepare_cached(
                "INSERT INTO task_log (task_log_id, task_id, dataset_id, name, data) \
                 SELECT ?1, task_id, dataset_id, ?2, ?3 FROM task WHERE task_id = ?4 \
                 ON CONFLICT (task_id, name) DO UPDATE SET data = excluded.data",
            )?
            .execute(params![id, name, data, task_id])?;
            Ok(DbReply::Done)
        }
    }
}

fn global_id(rules: OpRules, local: u128) -> String {
    iceprod_runtime::ids::global_id(rules.site_number, local)
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

fn insert_task_stat(
    conn: &Connection,
    rules: OpRules,
    task_id: &str,
    stat: &Value,
    error: bool,
) -> Result<(), DbError> {
    let id = global_id(rules, next_local(conn, "task_stat")?);
    conn.prepare_cached(
        "INSERT INTO task_stat (task_stat_id, task_id, dataset_id, create_date, stat, error) \
         SELECT ?1, task_id, dataset_id, ?2, ?3, ?4 FROM task WHERE task_id = ?5",
    )?
    .execute(params![id, now(), stat.to_string(), error, task_id])?;
    Ok(())
}

/// SPEC §4: after an error that reports using more memory, disk or time than the task asked
/// for, its own requirement becomes 1.5 × what it used.
fn learn_resources(conn: &Connection, task_id: &str, info: &Value) -> Result<(), DbError> {
    let Some(used) = info.get("resources").and_then(Value::as_object) else {
        return Ok(());
    };
    let text: String = conn
        .prepare_cached("SELECT requirements FROM task WHERE task_id = ?1")?
        .query_row(params![task_id], |r| r.get(0))?;
    let mut reqs: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap_or_default();
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
        conn.prepare_cached("UPDATE task SET requirements = ?1 WHERE task_id = ?2")?
            .execute(params![Value::Object(reqs).to_string(), task_id])?;
    }
    Ok(())
}

/// The next local number of `kind` (`counter.KIND` in `setting`).
pub fn next_local(conn: &Connection, kind: &str) -> Result<u128, DbError> {
    let value: String = conn
        .prepare_cached(
            "UPDATE setting SET value = CAST(value AS INTEGER) + 1 WHERE name = ?1 RETURNING value",
        )?
        .query_row(params![format!("counter.{kind}")], |r| r.get(0))?;
    value
        .parse()
        .map_err(|_| DbError::Refused(format!("counter.{kind} holds `{value}`")))
}

fn random_hex(bytes: usize) -> Result<String, DbError> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| DbError::Refused(format!("cannot read /dev/urandom: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn issue_passkey(
    conn: &Connection,
    scope: PasskeyScope,
    subject: &str,
    ttl: std::time::Duration,
) -> Result<DbReply, DbError> {
    let id = iceprod_runtime::ids::encode(next_local(conn, "passkey")?);
    let key = random_hex(32)?;
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(36_500));
    let expire = chrono::Utc::now()
        .checked_add_signed(ttl)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    conn.prepare_cached(
        "INSERT INTO passkey (passkey_id, auth_key, scope, subject, expire) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![id, key, scope.name(), subject, stamp(expire)])?;
    Ok(DbReply::Passkey(key))
}

fn verify_passkey(conn: &Connection, key: &str) -> Result<DbReply, DbError> {
    let row: Option<(String, String)> = conn
        .prepare_cached(
            "SELECT scope, subject FROM passkey WHERE auth_key = ?1 AND revoked = 0 AND expire > ?2",
        )?
        .query_row(params![key, now()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match row.and_then(|(scope, subject)| Some((PasskeyScope::from_name(&scope)?, subject))) {
        Some((scope, subject)) => Ok(DbReply::PasskeyOwner { scope, subject }),
        None => Err(DbError::Refused(
            "unknown, expired or revoked passkey".into(),
        )),
    }
}
