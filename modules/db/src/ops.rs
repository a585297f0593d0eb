//! The operations: each takes an open transaction and one request and returns the reply.
//! Workers call [`execute`]; they own transactions and commits, operations never commit.

use std::collections::BTreeMap;
use std::io::Read;

use iceprod_runtime::states::{transition, TaskRules, TaskStatus};
use iceprod_runtime::{DbReply, DbRequest, PasskeyScope};
use r2d2_sqlite::rusqlite::{params, Connection, OptionalExtension};

use crate::error::DbError;

/// What an operation needs from the config, snapshotted when the request arrived.
#[derive(Clone, Copy, Debug)]
pub struct OpRules {
    pub max_resets: u32,
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
    event: iceprod_runtime::states::TaskEvent,
) -> Result<DbReply, DbError> {
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
    Ok(DbReply::Changed(t))
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
