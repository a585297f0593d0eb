//! The graph rows behind the website's graphs (SPEC §7, §9): every 10 minutes the schedule
//! asks for one record of active tasks by state, one of the tasks completed since the
//! previous record, and one of each running dataset's progress (`dataset_progress`:
//! `{dataset_id: [completed, total], …}`, read by the dataset page). All three read the
//! summary tables of migration 5, not the tasks.

use iceprod_runtime::DbReply;
use serde_json::{json, Map, Value};

use crate::args;
use crate::error::DbError;
use crate::ops::{new_global_id, now, OpRules};
use crate::sql::Tx;

pub const ACTIVE_TASKS: &str = "active_tasks";
pub const COMPLETED_TASKS: &str = "completed_tasks";
pub const DATASET_PROGRESS: &str = "dataset_progress";

/// Writes the three graph rows; answers `Rows(3)`.
pub fn record(tx: &mut dyn Tx, rules: OpRules) -> Result<DbReply, DbError> {
    let now = now();
    let mut active = Map::new();
    for row in tx.query(
        "SELECT status, sum(n) FROM task_summary WHERE status IN \
         ('idle', 'waiting', 'queued', 'processing', 'reset', 'resume') GROUP BY status \
         HAVING sum(n) > 0",
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
    // Datasets that have not ended (a suspended or truncated one keeps its line). The total
    // is what the dataset will have, not only the tasks buffered so far.
    let mut progress = Map::new();
    for row in tx.query(
        "SELECT d.dataset_id, d.tasks_submitted, \
         coalesce(sum(CASE WHEN s.status = 'complete' THEN s.n ELSE 0 END), 0), \
         coalesce(sum(s.n), 0) FROM dataset d \
         LEFT JOIN task_summary s ON s.dataset_id = d.dataset_id \
         WHERE d.status IN ('processing', 'suspended', 'truncated') \
         GROUP BY d.dataset_id, d.tasks_submitted",
        args![],
    )? {
        let total = row.int(1)?.max(row.int(3)?);
        progress.insert(row.text(0)?, json!([row.int(2)?, total]));
    }
    for (name, value) in [
        (ACTIVE_TASKS, Value::Object(active)),
        (COMPLETED_TASKS, json!({ "completions": completed })),
        (DATASET_PROGRESS, Value::Object(progress)),
    ] {
        let id = new_global_id(tx, rules, "graph")?;
        tx.exec(
            "INSERT INTO graph (graph_id, name, value, timestamp) VALUES (?, ?, ?, ?)",
            args![id, name, value.to_string(), now.as_str()],
        )?;
    }
    Ok(DbReply::Rows(3))
}
