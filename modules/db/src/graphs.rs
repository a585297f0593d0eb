//! The graph rows behind the website's 24-hour graphs (SPEC §7, §9): every 10 minutes the
//! schedule asks for one record of active tasks by state and one of the tasks completed since
//! the previous record.

use iceprod_runtime::DbReply;
use serde_json::{json, Map, Value};

use crate::args;
use crate::error::DbError;
use crate::ops::{new_global_id, now, OpRules};
use crate::sql::Tx;

pub const ACTIVE_TASKS: &str = "active_tasks";
pub const COMPLETED_TASKS: &str = "completed_tasks";

/// Writes both graph rows; answers `Rows(2)`.
pub fn record(tx: &mut dyn Tx, rules: OpRules) -> Result<DbReply, DbError> {
    let now = now();
    let mut active = Map::new();
    for row in tx.query(
        "SELECT status, count(*) FROM task WHERE status IN \
         ('idle', 'waiting', 'queued', 'processing', 'reset', 'resume') GROUP BY status",
        args![],
    )? {
        active.insert(row.text(0)?, Value::from(row.int(1)?));
    }
    // Completions since the previous record (or ever, for the first one).
    let since = tx
        .query_opt(
            "SELECT max(timestamp) FROM graph WHERE name = ?",
            args![COMPLETED_TASKS],
        )?
        .map(|row| row.opt_text(0))
        .transpose()?
        .flatten()
        .unwrap_or_default();
    let completed = tx
        .query_opt(
            "SELECT count(*) FROM task WHERE status = 'complete' AND status_changed > ?",
            args![since],
        )?
        .map(|row| row.int(0))
        .transpose()?
        .unwrap_or(0);
    for (name, value) in [
        (ACTIVE_TASKS, Value::Object(active)),
        (COMPLETED_TASKS, json!({ "completions": completed })),
    ] {
        let id = new_global_id(tx, rules, "graph")?;
        tx.exec(
            "INSERT INTO graph (graph_id, name, value, timestamp) VALUES (?, ?, ?, ?)",
            args![id, name, value.to_string(), now.as_str()],
        )?;
    }
    Ok(DbReply::Rows(2))
}
