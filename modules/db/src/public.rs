//! The public, read-only queries of SPEC §5.4, answered as JSON for the website to pass on.
//! Unknown dataset ids are `NotFound`; everything else is a plain read.

use std::collections::BTreeMap;

use iceprod_runtime::{DbReply, PublicQuery};
use serde_json::{json, Map, Value};

use crate::args;
use crate::error::DbError;
use crate::sql::Tx;

pub fn query(tx: &mut dyn Tx, q: &PublicQuery) -> Result<DbReply, DbError> {
    let value = match q {
        PublicQuery::TasksInEachState { dataset_id } => {
            if let Some(id) = dataset_id {
                require_dataset(tx, id)?;
            }
            let rows = match dataset_id {
                Some(id) => tx.query(
                    "SELECT status, count(*) FROM task WHERE dataset_id = ? GROUP BY status",
                    args![id.as_str()],
                )?,
                None => tx.query("SELECT status, count(*) FROM task GROUP BY status", args![])?,
            };
            counts(&rows)?
        }
        PublicQuery::DatasetsByStatus => {
            let mut by_status: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for row in tx.query(
                "SELECT status, dataset_id FROM dataset ORDER BY dataset_num",
                args![],
            )? {
                by_status
                    .entry(row.text(0)?)
                    .or_default()
                    .push(Value::String(row.text(1)?));
            }
            json!(by_status)
        }
        PublicQuery::Config { dataset_id } => config(tx, dataset_id)?,
        PublicQuery::DatasetDescription { dataset_id } => {
            let row = require_dataset(tx, dataset_id)?;
            Value::String(row)
        }
        PublicQuery::DatasetSteering { dataset_id } => config(tx, dataset_id)?
            .get("steering")
            .cloned()
            .unwrap_or_else(|| json!({})),
        PublicQuery::DatasetCompletion { dataset_id } => {
            require_dataset(tx, dataset_id)?;
            completion(tx, Some(dataset_id))?
                .remove(dataset_id.as_str())
                .unwrap_or(Value::Null)
        }
        PublicQuery::AllDatasetCompletion => Value::Object(completion(tx, None)?),
        PublicQuery::TaskIds { dataset_id } => {
            require_dataset(tx, dataset_id)?;
            let rows = tx.query(
                "SELECT task.task_id FROM task JOIN job ON job.job_id = task.job_id \
                 WHERE task.dataset_id = ? ORDER BY job.job_index, task.task_index",
                args![dataset_id.as_str()],
            )?;
            Value::from(
                rows.iter()
                    .map(|r| r.text(0))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        }
        PublicQuery::TaskStats { dataset_id } => {
            require_dataset(tx, dataset_id)?;
            let mut stats: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for row in tx.query(
                "SELECT task_id, stat, error, create_date FROM task_stat WHERE dataset_id = ? \
                 ORDER BY create_date",
                args![dataset_id.as_str()],
            )? {
                let stat: Value = serde_json::from_str(&row.text(1)?).unwrap_or(Value::Null);
                stats.entry(row.text(0)?).or_default().push(json!({
                    "stat": stat, "error": row.bool(2)?, "create_date": row.text(3)?,
                }));
            }
            json!(stats)
        }
        PublicQuery::TaskWalltime { dataset_id } => {
            require_dataset(tx, dataset_id)?;
            let mut by_name = Map::new();
            for row in tx.query(
                "SELECT task_rel.name, sum(task.walltime), sum(task.walltime_err), \
                 sum(task.walltime_err_n), count(*) FROM task JOIN task_rel \
                 ON task_rel.task_rel_id = task.task_rel_id WHERE task.dataset_id = ? \
                 GROUP BY task_rel.name",
                args![dataset_id.as_str()],
            )? {
                by_name.insert(
                    row.text(0)?,
                    json!({"walltime": row.real(1)?, "walltime_err": row.real(2)?,
                           "walltime_err_n": row.int(3)?, "tasks": row.int(4)?}),
                );
            }
            Value::Object(by_name)
        }
        PublicQuery::TasksByName { dataset_id, name } => {
            require_dataset(tx, dataset_id)?;
            let mut tasks = Map::new();
            for row in tx.query(
                "SELECT task.task_id, task.status FROM task JOIN task_rel \
                 ON task_rel.task_rel_id = task.task_rel_id \
                 WHERE task.dataset_id = ? AND task_rel.name = ?",
                args![dataset_id.as_str(), name.as_str()],
            )? {
                tasks.insert(row.text(0)?, Value::String(row.text(1)?));
            }
            Value::Object(tasks)
        }
        PublicQuery::CpuGpuUsage => {
            let mut usage = Map::new();
            for row in tx.query(
                "SELECT dataset_id, requirements FROM task WHERE status = 'processing'",
                args![],
            )? {
                let reqs: Value = serde_json::from_str(&row.text(1)?).unwrap_or(Value::Null);
                let entry = usage
                    .entry(row.text(0)?)
                    .or_insert_with(|| json!({"cpu": 0, "gpu": 0}));
                for key in ["cpu", "gpu"] {
                    let n = reqs.get(key).and_then(Value::as_u64).unwrap_or(0);
                    let sum = entry[key].as_u64().unwrap_or(0) + n;
                    entry[key] = Value::from(sum);
                }
            }
            Value::Object(usage)
        }
        PublicQuery::Graphs { minutes } => {
            let since = chrono::Utc::now() - chrono::Duration::minutes(i64::from(*minutes));
            let since = since.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
            let rows = tx.query(
                "SELECT name, value, timestamp FROM graph WHERE timestamp >= ? \
                 ORDER BY timestamp",
                args![since],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let value: Value = serde_json::from_str(&row.text(1)?).unwrap_or(Value::Null);
                out.push(json!({"name": row.text(0)?, "value": value, "timestamp": row.text(2)?}));
            }
            Value::from(out)
        }
    };
    Ok(DbReply::Value(value))
}

/// The dataset's description, or `NotFound`.
fn require_dataset(tx: &mut dyn Tx, dataset_id: &str) -> Result<String, DbError> {
    tx.query_opt(
        "SELECT description FROM dataset WHERE dataset_id = ?",
        args![dataset_id],
    )?
    .ok_or_else(|| DbError::NotFound {
        what: "dataset",
        id: dataset_id.to_string(),
    })?
    .text(0)
}

fn config(tx: &mut dyn Tx, dataset_id: &str) -> Result<Value, DbError> {
    let text = tx
        .query_opt(
            "SELECT config_data FROM config WHERE dataset_id = ?",
            args![dataset_id],
        )?
        .ok_or_else(|| DbError::NotFound {
            what: "dataset",
            id: dataset_id.to_string(),
        })?
        .text(0)?;
    serde_json::from_str(&text)
        .map_err(|e| DbError::Schema(format!("dataset {dataset_id}: stored config: {e}")))
}

fn counts(rows: &[crate::sql::Row]) -> Result<Value, DbError> {
    let mut out = Map::new();
    for row in rows {
        out.insert(row.text(0)?, Value::from(row.int(1)?));
    }
    Ok(Value::Object(out))
}

/// `{dataset_id: {jobs_submitted, tasks_submitted, task_status: {status: n}}}`.
fn completion(tx: &mut dyn Tx, dataset_id: Option<&str>) -> Result<Map<String, Value>, DbError> {
    let datasets = match dataset_id {
        Some(id) => tx.query(
            "SELECT dataset_id, jobs_submitted, tasks_submitted, status FROM dataset \
             WHERE dataset_id = ?",
            args![id],
        )?,
        None => tx.query(
            "SELECT dataset_id, jobs_submitted, tasks_submitted, status FROM dataset",
            args![],
        )?,
    };
    let mut out = Map::new();
    for row in datasets {
        out.insert(
            row.text(0)?,
            json!({"jobs_submitted": row.int(1)?, "tasks_submitted": row.int(2)?,
                   "status": row.text(3)?, "task_status": {}}),
        );
    }
    let statuses = match dataset_id {
        Some(id) => tx.query(
            "SELECT dataset_id, status, count(*) FROM task WHERE dataset_id = ? \
             GROUP BY dataset_id, status",
            args![id],
        )?,
        None => tx.query(
            "SELECT dataset_id, status, count(*) FROM task GROUP BY dataset_id, status",
            args![],
        )?,
    };
    for row in statuses {
        if let Some(entry) = out.get_mut(&row.text(0)?) {
            entry["task_status"][row.text(1)?] = Value::from(row.int(2)?);
        }
    }
    Ok(out)
}
