//! The public, read-only queries of SPEC §5.4, answered as JSON for the website to pass on.
//! Unknown dataset ids are `NotFound`; everything else is a plain read.
//!
//! A query by dataset looks in the live tables first and, when the dataset is not there, in
//! the archive (SPEC §10, `archive.rs`); the listings and global counts include archived
//! datasets that are not (or no longer) live. A dataset between the two steps of its move is
//! in both stores and is read from the live tables, so none is counted twice.

use std::collections::BTreeMap;

use iceprod_runtime::{DbReply, PublicQuery};
use serde_json::{json, Map, Value};

use crate::archive::{self, table_in as table, Place};
use crate::args;
use crate::error::DbError;
use crate::sql::Tx;

pub fn query(tx: &mut dyn Tx, q: &PublicQuery) -> Result<DbReply, DbError> {
    let value = match q {
        PublicQuery::TasksInEachState { dataset_id } => {
            let place = match dataset_id {
                Some(id) => Some(require_dataset(tx, id)?.0),
                None => None,
            };
            let rows = match (dataset_id, place) {
                (Some(id), Some(Place::Live)) => crate::ops::live_task_counts(tx, Some(id))?,
                (Some(id), _) => tx.query(
                    &format!(
                        "SELECT status, n FROM {} WHERE dataset_id = ?",
                        archive::table(tx.backend(), archive::TASK_COUNT)
                    ),
                    args![id.as_str()],
                )?,
                (None, _) => {
                    let mut rows = crate::ops::live_task_counts(tx, None)?;
                    // The archived datasets' counts, but for those still live.
                    rows.extend(tx.query(
                        &format!(
                            "SELECT c.status, sum(c.n) FROM {} c WHERE NOT EXISTS \
                             (SELECT 1 FROM dataset l WHERE l.dataset_id = c.dataset_id) \
                             GROUP BY c.status",
                            archive::table(tx.backend(), archive::TASK_COUNT)
                        ),
                        args![],
                    )?);
                    rows
                }
            };
            counts(&rows)?
        }
        PublicQuery::DatasetsByStatus => {
            let mut by_status: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for row in tx.query(
                &format!(
                    "SELECT status, dataset_id, dataset_num FROM dataset UNION ALL \
                     SELECT a.status, a.dataset_id, a.dataset_num FROM {} a WHERE NOT EXISTS \
                     (SELECT 1 FROM dataset l WHERE l.dataset_id = a.dataset_id) \
                     ORDER BY dataset_num",
                    archive::table(tx.backend(), "dataset")
                ),
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
            let (_, description) = require_dataset(tx, dataset_id)?;
            Value::String(description)
        }
        PublicQuery::DatasetSteering { dataset_id } => config(tx, dataset_id)?
            .get("steering")
            .cloned()
            .unwrap_or_else(|| json!({})),
        PublicQuery::DatasetCompletion { dataset_id } => {
            let (place, _) = require_dataset(tx, dataset_id)?;
            completion(tx, place, Some(dataset_id))?
                .remove(dataset_id.as_str())
                .unwrap_or(Value::Null)
        }
        PublicQuery::AllDatasetCompletion => {
            let mut all = completion(tx, Place::Live, None)?;
            all.extend(completion(tx, Place::Archive, None)?);
            Value::Object(all)
        }
        PublicQuery::TaskIds { dataset_id } => {
            let (place, _) = require_dataset(tx, dataset_id)?;
            let rows = tx.query(
                &format!(
                    "SELECT task.task_id FROM {} task JOIN {} job ON job.job_id = task.job_id \
                     WHERE task.dataset_id = ? ORDER BY job.job_index, task.task_index",
                    table(tx, place, "task"),
                    table(tx, place, "job")
                ),
                args![dataset_id.as_str()],
            )?;
            Value::from(
                rows.iter()
                    .map(|r| r.text(0))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        }
        PublicQuery::TaskStats { dataset_id } => {
            let (place, _) = require_dataset(tx, dataset_id)?;
            let mut stats: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for row in tx.query(
                &format!(
                    "SELECT task_id, stat, error, create_date FROM {} WHERE dataset_id = ? \
                     ORDER BY create_date, task_stat_id",
                    table(tx, place, "task_stat")
                ),
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
            let (place, _) = require_dataset(tx, dataset_id)?;
            let mut by_name = Map::new();
            for row in tx.query(
                &format!(
                    "SELECT task_rel.name, sum(task.walltime), sum(task.walltime_err), \
                     sum(task.walltime_err_n), count(*) FROM {} task JOIN {} task_rel \
                     ON task_rel.task_rel_id = task.task_rel_id WHERE task.dataset_id = ? \
                     GROUP BY task_rel.name",
                    table(tx, place, "task"),
                    table(tx, place, "task_rel")
                ),
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
            let (place, _) = require_dataset(tx, dataset_id)?;
            let mut tasks = Map::new();
            for row in tx.query(
                &format!(
                    "SELECT task.task_id, task.status FROM {} task JOIN {} task_rel \
                     ON task_rel.task_rel_id = task.task_rel_id \
                     WHERE task.dataset_id = ? AND task_rel.name = ?",
                    table(tx, place, "task"),
                    table(tx, place, "task_rel")
                ),
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

/// Where the dataset is, live tables first, and its description; or `NotFound`.
fn require_dataset(tx: &mut dyn Tx, dataset_id: &str) -> Result<(Place, String), DbError> {
    first_in_place(
        tx,
        "SELECT description FROM {} WHERE dataset_id = ?",
        "dataset",
        dataset_id,
    )
}

/// The first column of the first row of `sql` (whose `{}` is the table `name`) in the live
/// tables, or else in the archive; `NotFound` in neither.
fn first_in_place(
    tx: &mut dyn Tx,
    sql: &str,
    name: &str,
    dataset_id: &str,
) -> Result<(Place, String), DbError> {
    for place in [Place::Live, Place::Archive] {
        let query = sql.replace("{}", &table(tx, place, name));
        if let Some(row) = tx.query_opt(&query, args![dataset_id])? {
            return Ok((place, row.text(0)?));
        }
    }
    Err(DbError::NotFound {
        what: "dataset",
        id: dataset_id.to_string(),
    })
}

fn config(tx: &mut dyn Tx, dataset_id: &str) -> Result<Value, DbError> {
    let (_, text) = first_in_place(
        tx,
        "SELECT config_data FROM {} WHERE dataset_id = ?",
        "config",
        dataset_id,
    )?;
    serde_json::from_str(&text)
        .map_err(|e| DbError::Schema(format!("dataset {dataset_id}: stored config: {e}")))
}

/// `{status: n}` of (status, count) rows; a status in several rows (live and archived
/// counts) sums.
fn counts(rows: &[crate::sql::Row]) -> Result<Value, DbError> {
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for row in rows {
        *out.entry(row.text(0)?).or_default() += row.int(1)?;
    }
    Ok(json!(out))
}

/// `{dataset_id: {jobs_submitted, tasks_submitted, task_status: {status: n}}}`, of one
/// dataset or all, in the live tables or the archive (there, of those no longer live, with
/// the counts written at their copy).
fn completion(
    tx: &mut dyn Tx,
    place: Place,
    dataset_id: Option<&str>,
) -> Result<Map<String, Value>, DbError> {
    if place == Place::Archive {
        return archived_completion(tx, dataset_id);
    }
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
    fill_completion(datasets, statuses)
}

fn archived_completion(
    tx: &mut dyn Tx,
    dataset_id: Option<&str>,
) -> Result<Map<String, Value>, DbError> {
    let (datasets, counts) = (
        archive::table(tx.backend(), "dataset"),
        archive::table(tx.backend(), archive::TASK_COUNT),
    );
    let (datasets, statuses) = match dataset_id {
        Some(id) => (
            tx.query(
                &format!(
                    "SELECT dataset_id, jobs_submitted, tasks_submitted, status FROM {datasets} \
                     WHERE dataset_id = ?"
                ),
                args![id],
            )?,
            tx.query(
                &format!("SELECT dataset_id, status, n FROM {counts} WHERE dataset_id = ?"),
                args![id],
            )?,
        ),
        None => (
            tx.query(
                &format!(
                    "SELECT dataset_id, jobs_submitted, tasks_submitted, status FROM {datasets} a \
                     WHERE NOT EXISTS (SELECT 1 FROM dataset l WHERE l.dataset_id = a.dataset_id)"
                ),
                args![],
            )?,
            tx.query(
                &format!(
                    "SELECT dataset_id, status, n FROM {counts} c WHERE NOT EXISTS \
                     (SELECT 1 FROM dataset l WHERE l.dataset_id = c.dataset_id)"
                ),
                args![],
            )?,
        ),
    };
    fill_completion(datasets, statuses)
}

/// The completion map of `datasets` rows (id, jobs, tasks, status) and `statuses` rows (id,
/// status, count).
fn fill_completion(
    datasets: Vec<crate::sql::Row>,
    statuses: Vec<crate::sql::Row>,
) -> Result<Map<String, Value>, DbError> {
    let mut out = Map::new();
    for row in datasets {
        out.insert(
            row.text(0)?,
            json!({"jobs_submitted": row.int(1)?, "tasks_submitted": row.int(2)?,
                   "status": row.text(3)?, "task_status": {}}),
        );
    }
    for row in statuses {
        if let Some(entry) = out.get_mut(&row.text(0)?) {
            entry["task_status"][row.text(1)?] = Value::from(row.int(2)?);
        }
    }
    Ok(out)
}
