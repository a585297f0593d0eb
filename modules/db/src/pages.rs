//! The data behind the website's pages (SPEC §7): one read-only query per [`PageQuery`],
//! answered as [`PageData`] rows for the website to render (the db never formats HTML and
//! never escapes: text comes back as stored).
//!
//! Every list is paged in SQL (`LIMIT`/`OFFSET`), and the counts a page shows come from the
//! summary tables of migration 5 (`task_summary`, `job_summary`, kept by triggers, see
//! `schema.rs`), so `/` and `/dataset/N` cost the same with a hundred tasks or a million.
//!
//! A dataset, job or task is looked for in the live tables first and then in the archive
//! (SPEC §10, `archive.rs`), so an archived dataset keeps its pages. An archived dataset has
//! no summary rows: its task counts come from `archive_task_count` and its per-name table from
//! a scan of its archived tasks (an archived dataset is looked at rarely, and never changes).
//! The global lists without a dataset or job (`/task?status=…`) show the live tables only.
//!
//! Units: `task.walltime` and `walltime_err` are stored in hours (`ops::hours_used`);
//! [`WalltimeStats`] is in seconds, as its doc says, and [`TaskRow`] keeps the stored hours.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read};

use iceprod_runtime::web::{
    ConfigPage, DatasetKey, DatasetPage, DatasetRow, GraphPoint, HomePage, JobPage, JobRow,
    Listing, LogData, LogTail, PageData, PageQuery, Paging, TaskFilter, TaskNameSummary, TaskPage,
    TaskRef, TaskRow, WalltimeStats,
};
use iceprod_runtime::DbReply;
use serde_json::Value;

use crate::archive::{self, table_in as table, Place};
use crate::args;
use crate::error::DbError;
use crate::graphs;
use crate::sql::{Backend, Row, SqlValue, Tx};

/// Most task_stat rows the task page shows (newest first): a task retried more often than
/// this shows its latest attempts.
pub const MAX_TASK_STATS: u64 = 200;
/// Longest line a log tail keeps, in bytes; the rest of a longer line is dropped (marked
/// with `…`), so a log without newlines cannot fill the memory.
pub const MAX_TAIL_LINE: usize = 4096;
/// Most bytes a log tail decompresses; a log that expands to more is shown as an error (the
/// full log is still served at `/log`).
pub const MAX_TAIL_INFLATED: u64 = 1 << 30;
/// Most points of a dataset's progress graph; a longer history is thinned evenly.
pub const MAX_PROGRESS_POINTS: i64 = 300;

pub fn query(tx: &mut dyn Tx, q: &PageQuery) -> Result<DbReply, DbError> {
    let data = match q {
        PageQuery::Home { hours } => PageData::Home(home(tx, *hours)?),
        PageQuery::Datasets { status, paging } => {
            PageData::Datasets(datasets(tx, status.as_deref(), *paging)?)
        }
        PageQuery::Dataset(key) => PageData::Dataset(Box::new(dataset_page(tx, key)?)),
        PageQuery::Config(key) => PageData::Config(Box::new(config_page(tx, key)?)),
        PageQuery::Tasks { filter, paging } => PageData::Tasks(tasks(tx, filter, *paging)?),
        PageQuery::Task {
            task_id,
            tail_lines,
        } => PageData::Task(Box::new(task_page(tx, task_id, *tail_lines)?)),
        PageQuery::Jobs {
            dataset,
            status,
            paging,
        } => PageData::Jobs(jobs(tx, dataset, status.as_deref(), *paging)?),
        PageQuery::Job { job_id } => PageData::Job(Box::new(job_page(tx, job_id)?)),
        PageQuery::Log { task_id, name } => PageData::Log(log(tx, task_id, name)?),
    };
    Ok(DbReply::Page(data))
}

fn not_found(what: &'static str, id: impl Into<String>) -> DbError {
    DbError::NotFound {
        what,
        id: id.into(),
    }
}

/// `LIMIT ? OFFSET ?` values (the website clamps; this keeps them in SQL's range).
fn page_args(paging: Paging) -> [SqlValue; 2] {
    let clamp = |v: u64| SqlValue::Int(i64::try_from(v).unwrap_or(i64::MAX));
    [clamp(paging.limit), clamp(paging.offset)]
}

fn count(row: &Row, i: usize) -> Result<u64, DbError> {
    Ok(u64::try_from(row.int(i)?).unwrap_or(0))
}

/// Stored times are RFC 3339 in UTC with microseconds (`ops::stamp`).
fn hours_ago(hours: u32) -> String {
    let since = chrono::Utc::now()
        .checked_sub_signed(chrono::Duration::hours(i64::from(hours)))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    crate::ops::stamp(since)
}

// ---- `/` ----

fn home(tx: &mut dyn Tx, hours: u32) -> Result<HomePage, DbError> {
    let mut dataset_counts = BTreeMap::new();
    let archived = archive::table(tx.backend(), "dataset");
    // Archived datasets count once: a dataset between the two steps of its move is live.
    for row in tx.query(
        &format!(
            "SELECT status, count(*) FROM dataset GROUP BY status UNION ALL \
             SELECT a.status, count(*) FROM {archived} a WHERE NOT EXISTS \
             (SELECT 1 FROM dataset l WHERE l.dataset_id = a.dataset_id) GROUP BY a.status"
        ),
        args![],
    )? {
        *dataset_counts.entry(row.text(0)?).or_insert(0) += count(&row, 1)?;
    }
    let rows = tx.query(
        "SELECT name, value, timestamp FROM graph WHERE name IN (?, ?) AND timestamp >= ? \
         ORDER BY timestamp, graph_id",
        args![
            graphs::ACTIVE_TASKS,
            graphs::COMPLETED_TASKS,
            hours_ago(hours)
        ],
    )?;
    let mut points = Vec::with_capacity(rows.len());
    for row in rows {
        points.push(GraphPoint {
            name: row.text(0)?,
            value: serde_json::from_str(&row.text(1)?).unwrap_or(Value::Null),
            timestamp: row.text(2)?,
        });
    }
    Ok(HomePage {
        dataset_counts,
        graphs: points,
    })
}

// ---- datasets ----

/// The columns of a [`DatasetRow`], from `dataset d LEFT JOIN groups g`.
const DATASET_COLUMNS: &str = "d.dataset_id, d.dataset_num, d.name, d.description, d.status, \
     d.username, g.name AS group_name, d.priority, d.gridspec, d.jobs_submitted, d.tasks_submitted, d.debug, \
     d.start_date, d.end_date, d.status_reason";

fn dataset_row(row: &Row) -> Result<DatasetRow, DbError> {
    Ok(DatasetRow {
        dataset_id: row.text(0)?,
        dataset_num: count(row, 1)?,
        name: row.text(2)?,
        description: row.text(3)?,
        status: row.text(4)?,
        username: row.text(5)?,
        group: row.opt_text(6)?,
        priority: row.real(7)?,
        gridspec: row.text(8)?,
        jobs_submitted: count(row, 9)?,
        tasks_submitted: count(row, 10)?,
        debug: row.bool(11)?,
        start_date: row.text(12)?,
        end_date: row.opt_text(13)?,
        status_reason: row.text(14)?,
    })
}

/// The dataset `key` names, live tables first; `NotFound` in neither.
fn find_dataset(tx: &mut dyn Tx, key: &DatasetKey) -> Result<(Place, DatasetRow), DbError> {
    let (column, value, id) = match key {
        DatasetKey::Num(n) => (
            "dataset_num",
            SqlValue::Int(i64::try_from(*n).unwrap_or(-1)),
            n.to_string(),
        ),
        DatasetKey::Id(id) => ("dataset_id", SqlValue::from(id.as_str()), id.clone()),
    };
    for place in [Place::Live, Place::Archive] {
        let sql = format!(
            "SELECT {DATASET_COLUMNS} FROM {} d LEFT JOIN `groups` g ON g.groups_id = d.groups_id \
             WHERE d.{column} = ?",
            table(tx, place, "dataset")
        );
        if let Some(row) = tx.query_opt(&sql, std::slice::from_ref(&value))? {
            return Ok((place, dataset_row(&row)?));
        }
    }
    Err(not_found("dataset", id))
}

fn datasets(
    tx: &mut dyn Tx,
    status: Option<&str>,
    paging: Paging,
) -> Result<Listing<DatasetRow>, DbError> {
    let archived = archive::table(tx.backend(), "dataset");
    let (filter, mut params) = match status {
        Some(s) => (" AND d.status = ?", vec![SqlValue::from(s)]),
        None => ("", vec![]),
    };
    let not_live = "NOT EXISTS (SELECT 1 FROM dataset l WHERE l.dataset_id = d.dataset_id)";
    let both = [params.clone(), params.clone()].concat();
    let total: u64 = tx
        .query(
            &format!(
                "SELECT count(*) FROM dataset d WHERE 1 = 1{filter} UNION ALL \
                 SELECT count(*) FROM {archived} d WHERE {not_live}{filter}"
            ),
            &both,
        )?
        .iter()
        .map(|r| count(r, 0))
        .sum::<Result<u64, _>>()?;
    params = both;
    params.extend(page_args(paging));
    let rows = tx.query(
        &format!(
            "SELECT * FROM (\
             SELECT {DATASET_COLUMNS} FROM dataset d \
             LEFT JOIN `groups` g ON g.groups_id = d.groups_id WHERE 1 = 1{filter} UNION ALL \
             SELECT {DATASET_COLUMNS} FROM {archived} d \
             LEFT JOIN `groups` g ON g.groups_id = d.groups_id WHERE {not_live}{filter}) x \
             ORDER BY dataset_num DESC LIMIT ? OFFSET ?"
        ),
        &params,
    )?;
    Ok(Listing {
        rows: rows.iter().map(dataset_row).collect::<Result<_, _>>()?,
        total,
    })
}

fn config_page(tx: &mut dyn Tx, key: &DatasetKey) -> Result<ConfigPage, DbError> {
    let (place, dataset) = find_dataset(tx, key)?;
    let config = tx
        .query_opt(
            &format!(
                "SELECT config_data FROM {} WHERE dataset_id = ?",
                table(tx, place, "config")
            ),
            args![dataset.dataset_id.as_str()],
        )?
        .ok_or_else(|| not_found("config of dataset", dataset.dataset_id.clone()))?
        .text(0)?;
    Ok(ConfigPage { dataset, config })
}

// ---- `/dataset/N` ----

/// One `task_summary` row (or its equivalent over archived tasks), walltimes in hours.
struct SummaryRow {
    task_index: u32,
    status: String,
    n: u64,
    walltime_sum: f64,
    walltime_sq: f64,
    walltime_min: Option<f64>,
    walltime_max: Option<f64>,
    walltime_err_sum: f64,
}

fn summary_rows(
    tx: &mut dyn Tx,
    place: Place,
    dataset_id: &str,
) -> Result<Vec<SummaryRow>, DbError> {
    let sql = match place {
        Place::Live => "SELECT task_index, status, n, walltime_sum, walltime_sq, walltime_min, \
                        walltime_max, walltime_err_sum FROM task_summary \
                        WHERE dataset_id = ? AND n > 0"
            .to_string(),
        Place::Archive => format!(
            "SELECT task_index, status, count(*), sum(walltime), sum(walltime * walltime), \
             min(walltime), max(walltime), sum(walltime_err) FROM {} \
             WHERE dataset_id = ? GROUP BY task_index, status",
            table(tx, place, "task")
        ),
    };
    let mut out = Vec::new();
    for row in tx.query(&sql, args![dataset_id])? {
        let opt_real = |i: usize| match row.0.get(i) {
            Some(SqlValue::Null) | None => Ok(None),
            _ => row.real(i).map(Some),
        };
        out.push(SummaryRow {
            task_index: u32::try_from(row.int(0)?).unwrap_or(u32::MAX),
            status: row.text(1)?,
            n: count(&row, 2)?,
            walltime_sum: row.real(3)?,
            walltime_sq: row.real(4)?,
            walltime_min: opt_real(5)?,
            walltime_max: opt_real(6)?,
            walltime_err_sum: row.real(7)?,
        });
    }
    Ok(out)
}

/// Mean, σ (of the population), min and max in seconds of `n` walltimes (hours) given by
/// their sum and sum of squares.
fn walltime_stats(s: &SummaryRow) -> Option<WalltimeStats> {
    if s.n == 0 {
        return None;
    }
    let n = s.n as f64;
    let mean = s.walltime_sum / n;
    // The sums are kept by additions and subtractions: rounding may leave a tiny negative.
    let variance = (s.walltime_sq / n - mean * mean).max(0.0);
    Some(WalltimeStats {
        mean: mean * 3600.0,
        stddev: variance.sqrt() * 3600.0,
        min: s.walltime_min.unwrap_or(0.0) * 3600.0,
        max: s.walltime_max.unwrap_or(0.0) * 3600.0,
    })
}

fn dataset_page(tx: &mut dyn Tx, key: &DatasetKey) -> Result<DatasetPage, DbError> {
    let (place, dataset) = find_dataset(tx, key)?;
    let id = dataset.dataset_id.clone();
    let mut job_counts = BTreeMap::new();
    let job_sql = match place {
        Place::Live => "SELECT status, n FROM job_summary WHERE dataset_id = ? AND n > 0".into(),
        Place::Archive => format!(
            "SELECT status, count(*) FROM {} WHERE dataset_id = ? GROUP BY status",
            table(tx, place, "job")
        ),
    };
    for row in tx.query(&job_sql, args![id.as_str()])? {
        job_counts.insert(row.text(0)?, count(&row, 1)?);
    }

    let mut names: Vec<TaskNameSummary> = Vec::new();
    for row in tx.query(
        &format!(
            "SELECT task_index, name FROM {} WHERE dataset_id = ? ORDER BY task_index",
            table(tx, place, "task_rel")
        ),
        args![id.as_str()],
    )? {
        names.push(TaskNameSummary {
            task_index: u32::try_from(row.int(0)?).unwrap_or(u32::MAX),
            name: row.text(1)?,
            counts: BTreeMap::new(),
            walltime: None,
            efficiency: None,
        });
    }
    let mut task_counts = BTreeMap::new();
    // Per task name: Σ walltime and Σ walltime_err over every status, for the efficiency.
    let mut spent: BTreeMap<u32, (f64, f64)> = BTreeMap::new();
    for s in summary_rows(tx, place, &id)? {
        *task_counts.entry(s.status.clone()).or_insert(0) += s.n;
        let sums = spent.entry(s.task_index).or_insert((0.0, 0.0));
        sums.0 += s.walltime_sum;
        sums.1 += s.walltime_err_sum;
        if let Some(summary) = names.iter_mut().find(|t| t.task_index == s.task_index) {
            if s.status == "complete" {
                summary.walltime = walltime_stats(&s);
            }
            summary.counts.insert(s.status, s.n);
        }
    }
    for summary in &mut names {
        if let Some((good, failed)) = spent.get(&summary.task_index) {
            let all = good + failed;
            if all > 0.0 {
                summary.efficiency = Some((good / all).clamp(0.0, 1.0));
            }
        }
    }
    if place == Place::Archive {
        // The counts written with the archive copy are the dataset's own record of them.
        let counted = tx.query(
            &format!(
                "SELECT status, n FROM {} WHERE dataset_id = ?",
                table(tx, place, archive::TASK_COUNT)
            ),
            args![id.as_str()],
        )?;
        if !counted.is_empty() {
            task_counts.clear();
            for row in counted {
                task_counts.insert(row.text(0)?, count(&row, 1)?);
            }
        }
    }
    let progress = progress(tx, &dataset)?;
    Ok(DatasetPage {
        dataset,
        job_counts,
        task_counts,
        task_names: names,
        progress,
    })
}

/// The dataset's points of the `dataset_progress` graph since it started, oldest first, at
/// most [`MAX_PROGRESS_POINTS`] (a longer history keeps every k-th point and the last).
fn progress(tx: &mut dyn Tx, dataset: &DatasetRow) -> Result<Vec<(String, u64, u64)>, DbError> {
    let since = dataset.start_date.as_str();
    let rows = tx
        .query_opt(
            "SELECT count(*) FROM graph WHERE name = ? AND timestamp >= ?",
            args![graphs::DATASET_PROGRESS, since],
        )?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0);
    if rows == 0 {
        return Ok(Vec::new());
    }
    let stride = (rows + MAX_PROGRESS_POINTS - 1) / MAX_PROGRESS_POINTS;
    let selected = tx.query(
        "SELECT timestamp, value FROM (SELECT timestamp, value, \
         ROW_NUMBER() OVER (ORDER BY timestamp, graph_id) AS rn FROM graph \
         WHERE name = ? AND timestamp >= ?) p WHERE (rn - 1) % ? = 0 OR rn = ? \
         ORDER BY timestamp",
        args![graphs::DATASET_PROGRESS, since, stride, rows],
    )?;
    let mut out = Vec::with_capacity(selected.len());
    for row in selected {
        if let Some((done, total)) = progress_of(&row.text(1)?, &dataset.dataset_id) {
            out.push((row.text(0)?, done, total));
        }
    }
    Ok(out)
}

/// The `[completed, total]` of `dataset_id` in a `dataset_progress` value, found by its key
/// rather than by parsing the whole object (it holds every running dataset).
fn progress_of(value: &str, dataset_id: &str) -> Option<(u64, u64)> {
    let key = serde_json::to_string(dataset_id).ok()?;
    let mut from = 0;
    // The key is a whole JSON string followed by `:`; ids are plain, but look past a match
    // inside another string all the same.
    while let Some(at) = value[from..].find(&key) {
        let start = from + at + key.len();
        let rest = value[start..].trim_start();
        if let Some(rest) = rest.strip_prefix(':') {
            let end = rest.find(']')?;
            let pair: (u64, u64) = serde_json::from_str(rest[..=end].trim()).ok()?;
            return Some(pair);
        }
        from = start;
    }
    None
}

// ---- tasks and jobs ----

/// The columns of a [`TaskRow`], from `task t JOIN job j JOIN task_rel r JOIN dataset d`.
const TASK_COLUMNS: &str = "t.task_id, t.job_id, t.dataset_id, d.dataset_num, j.job_index, \
     t.task_index, r.name, t.status, t.prev_status, t.status_changed, t.failures, t.evictions, \
     t.walltime, t.walltime_err, t.requirements, t.gridspec, t.grid_queue_id, d.username";

fn task_from(tx: &dyn Tx, place: Place) -> String {
    format!(
        "{} t JOIN {} j ON j.job_id = t.job_id JOIN {} r ON r.task_rel_id = t.task_rel_id \
         JOIN {} d ON d.dataset_id = t.dataset_id",
        table(tx, place, "task"),
        table(tx, place, "job"),
        table(tx, place, "task_rel"),
        table(tx, place, "dataset"),
    )
}

/// As [`task_from`], for the task list: the jobs are walked first, in the list's order (by
/// `job_by_dataset`), and each job's tasks by `task_by_job`, so a page stops after its rows
/// instead of sorting every task that matches. Left to choose, SQLite starts from the tasks'
/// status index and sorts: 0.3 s for the first page of a dataset's 700,000 complete tasks,
/// 0.6 s for the first page of all tasks, against about 1 ms. The worst case is a status that
/// few tasks have, which walks the dataset's tasks (0.2 s per million). `CROSS JOIN` (SQLite)
/// and `STRAIGHT_JOIN` (MySQL) fix the order.
fn task_list_from(tx: &dyn Tx, place: Place) -> String {
    let join = match tx.backend() {
        Backend::Sqlite => "CROSS JOIN",
        Backend::Mysql => "STRAIGHT_JOIN",
    };
    format!(
        "{} j {join} {} t ON t.job_id = j.job_id JOIN {} r ON r.task_rel_id = t.task_rel_id \
         JOIN {} d ON d.dataset_id = t.dataset_id",
        table(tx, place, "job"),
        table(tx, place, "task"),
        table(tx, place, "task_rel"),
        table(tx, place, "dataset"),
    )
}

fn task_row(row: &Row) -> Result<TaskRow, DbError> {
    Ok(TaskRow {
        task_id: row.text(0)?,
        job_id: row.text(1)?,
        dataset_id: row.text(2)?,
        dataset_num: count(row, 3)?,
        job_index: count(row, 4)?,
        task_index: u32::try_from(row.int(5)?).unwrap_or(u32::MAX),
        name: row.text(6)?,
        status: row.text(7)?,
        prev_status: row.opt_text(8)?,
        status_changed: row.text(9)?,
        failures: count(row, 10)?,
        evictions: count(row, 11)?,
        walltime: row.real(12)?,
        walltime_err: row.real(13)?,
        requirements: row.text(14)?,
        gridspec: row.opt_text(15)?,
        grid_queue_id: row.opt_text(16)?,
        owner: row.text(17)?,
    })
}

/// Where the job is (live first) and its dataset; `None` in neither.
fn find_job(tx: &mut dyn Tx, job_id: &str) -> Result<Option<(Place, String)>, DbError> {
    for place in [Place::Live, Place::Archive] {
        let sql = format!(
            "SELECT dataset_id FROM {} WHERE job_id = ?",
            table(tx, place, "job")
        );
        if let Some(row) = tx.query_opt(&sql, args![job_id])? {
            return Ok(Some((place, row.text(0)?)));
        }
    }
    Ok(None)
}

fn tasks(
    tx: &mut dyn Tx,
    filter: &TaskFilter,
    paging: Paging,
) -> Result<Listing<TaskRow>, DbError> {
    let empty = Listing {
        rows: Vec::new(),
        total: 0,
    };
    let mut place = Place::Live;
    let mut dataset_id = None;
    if let Some(key) = &filter.dataset {
        let (p, row) = find_dataset(tx, key)?;
        place = p;
        dataset_id = Some(row.dataset_id);
    }
    if let Some(job_id) = &filter.job_id {
        match find_job(tx, job_id)? {
            Some((p, d)) if dataset_id.as_ref().is_none_or(|id| *id == d) => {
                // A dataset between the two steps of its move is read live, its job too.
                if dataset_id.is_none() {
                    place = p;
                }
            }
            // A job that does not exist, or is not of the dataset asked for, has no tasks.
            _ => return Ok(empty),
        }
    }
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    if let Some(id) = &dataset_id {
        // On the job's column: the rows then come in job order from its index.
        conditions.push("j.dataset_id = ?");
        params.push(SqlValue::from(id.as_str()));
    }
    if let Some(job_id) = &filter.job_id {
        // On the job's column too: the list below walks jobs first.
        conditions.push("j.job_id = ?");
        params.push(SqlValue::from(job_id.as_str()));
    }
    if let Some(status) = &filter.status {
        conditions.push("t.status = ?");
        params.push(SqlValue::from(status.as_str()));
    }
    if let Some(name) = &filter.name {
        conditions.push("r.name = ?");
        params.push(SqlValue::from(name.as_str()));
    }
    let filter_sql = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let total = if place == Place::Live && filter.job_id.is_none() {
        // Counted from the summary, not by a scan of up to a million rows.
        let mut conditions = vec!["s.n > 0"];
        let mut count_params = Vec::new();
        if let Some(id) = &dataset_id {
            conditions.push("s.dataset_id = ?");
            count_params.push(SqlValue::from(id.as_str()));
        }
        if let Some(status) = &filter.status {
            conditions.push("s.status = ?");
            count_params.push(SqlValue::from(status.as_str()));
        }
        let from = match &filter.name {
            Some(name) => {
                conditions.push("r.name = ?");
                count_params.push(SqlValue::from(name.as_str()));
                "task_summary s JOIN task_rel r ON r.dataset_id = s.dataset_id \
                 AND r.task_index = s.task_index"
            }
            None => "task_summary s",
        };
        tx.query_opt(
            &format!(
                "SELECT coalesce(sum(s.n), 0) FROM {from} WHERE {}",
                conditions.join(" AND ")
            ),
            &count_params,
        )?
        .map(|r| count(&r, 0))
        .transpose()?
        .unwrap_or(0)
    } else {
        tx.query_opt(
            &format!("SELECT count(*) FROM {}{filter_sql}", task_from(tx, place)),
            &params,
        )?
        .map(|r| count(&r, 0))
        .transpose()?
        .unwrap_or(0)
    };
    params.extend(page_args(paging));
    let rows = tx.query(
        &format!(
            "SELECT {TASK_COLUMNS} FROM {}{filter_sql} \
             ORDER BY j.dataset_id, j.job_index, t.task_index LIMIT ? OFFSET ?",
            task_list_from(tx, place)
        ),
        &params,
    )?;
    Ok(Listing {
        rows: rows.iter().map(task_row).collect::<Result<_, _>>()?,
        total,
    })
}

fn jobs(
    tx: &mut dyn Tx,
    key: &DatasetKey,
    status: Option<&str>,
    paging: Paging,
) -> Result<Listing<JobRow>, DbError> {
    let (place, dataset) = find_dataset(tx, key)?;
    let id = dataset.dataset_id.as_str();
    let mut params = vec![SqlValue::from(id)];
    let filter = match status {
        Some(s) => {
            params.push(SqlValue::from(s));
            " AND status = ?"
        }
        None => "",
    };
    let total = match place {
        Place::Live => tx.query_opt(
            &format!("SELECT coalesce(sum(n), 0) FROM job_summary WHERE dataset_id = ?{filter}"),
            &params,
        )?,
        Place::Archive => tx.query_opt(
            &format!(
                "SELECT count(*) FROM {} WHERE dataset_id = ?{filter}",
                table(tx, place, "job")
            ),
            &params,
        )?,
    }
    .map(|r| count(&r, 0))
    .transpose()?
    .unwrap_or(0);
    params.extend(page_args(paging));
    let rows = tx.query(
        &format!(
            "SELECT job_id, job_index, status, status_changed FROM {} \
             WHERE dataset_id = ?{filter} ORDER BY job_index LIMIT ? OFFSET ?",
            table(tx, place, "job")
        ),
        &params,
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(JobRow {
            job_id: row.text(0)?,
            dataset_id: dataset.dataset_id.clone(),
            dataset_num: dataset.dataset_num,
            job_index: count(&row, 1)?,
            status: row.text(2)?,
            status_changed: row.text(3)?,
            owner: dataset.username.clone(),
        });
    }
    Ok(Listing { rows: out, total })
}

fn job_page(tx: &mut dyn Tx, job_id: &str) -> Result<JobPage, DbError> {
    let Some((place, _)) = find_job(tx, job_id)? else {
        return Err(not_found("job", job_id));
    };
    let job = tx
        .query_opt(
            &format!(
                "SELECT j.job_id, j.dataset_id, d.dataset_num, j.job_index, j.status, \
                 j.status_changed, d.username FROM {} j JOIN {} d ON d.dataset_id = j.dataset_id \
                 WHERE j.job_id = ?",
                table(tx, place, "job"),
                table(tx, place, "dataset")
            ),
            args![job_id],
        )?
        .ok_or_else(|| not_found("job", job_id))?;
    let job = JobRow {
        job_id: job.text(0)?,
        dataset_id: job.text(1)?,
        dataset_num: count(&job, 2)?,
        job_index: count(&job, 3)?,
        status: job.text(4)?,
        status_changed: job.text(5)?,
        owner: job.text(6)?,
    };
    let rows = tx.query(
        &format!(
            "SELECT {TASK_COLUMNS} FROM {} WHERE t.job_id = ? ORDER BY t.task_index",
            task_from(tx, place)
        ),
        args![job_id],
    )?;
    Ok(JobPage {
        job,
        tasks: rows.iter().map(task_row).collect::<Result<_, _>>()?,
    })
}

// ---- `/task/ID` and `/log` ----

/// Where the task is (live first) and its row; `None` in neither.
fn find_task(tx: &mut dyn Tx, task_id: &str) -> Result<Option<(Place, Row)>, DbError> {
    for place in [Place::Live, Place::Archive] {
        let sql = format!(
            "SELECT {TASK_COLUMNS}, t.depends FROM {} WHERE t.task_id = ?",
            task_from(tx, place)
        );
        if let Some(row) = tx.query_opt(&sql, args![task_id])? {
            return Ok(Some((place, row)));
        }
    }
    Ok(None)
}

fn task_page(tx: &mut dyn Tx, task_id: &str, tail_lines: usize) -> Result<TaskPage, DbError> {
    let Some((place, row)) = find_task(tx, task_id)? else {
        return Err(not_found("task", task_id));
    };
    let task = task_row(&row)?;
    let depends_text = row.text(18)?;
    // An unreadable list shows no dependencies rather than failing the page.
    let depends_ids: Vec<String> = serde_json::from_str(&depends_text).unwrap_or_else(|e| {
        log::warn!("task {task_id}: depends is not a list of ids ({e})");
        Vec::new()
    });
    let mut depends = Vec::with_capacity(depends_ids.len());
    for id in depends_ids {
        // A dependency may be in another dataset, live or archived.
        let found = find_task(tx, &id)?;
        depends.push(match found {
            Some((_, dep)) => TaskRef {
                task_id: id,
                name: dep.text(6)?,
                status: dep.text(7)?,
            },
            None => TaskRef {
                task_id: id,
                name: String::new(),
                status: "unknown".into(),
            },
        });
    }
    let mut stats = Vec::new();
    for row in tx.query(
        &format!(
            "SELECT create_date, stat, error FROM {} WHERE task_id = ? \
             ORDER BY create_date DESC, task_stat_id DESC LIMIT ?",
            table(tx, place, "task_stat")
        ),
        args![task_id, MAX_TASK_STATS as i64],
    )? {
        stats.push((row.text(0)?, row.text(1)?, row.bool(2)?));
    }
    let mut logs = Vec::new();
    for row in tx.query(
        &format!(
            "SELECT name, data FROM {} WHERE task_id = ? ORDER BY name",
            table(tx, place, "task_log")
        ),
        args![task_id],
    )? {
        let name = row.text(0)?;
        let data = row.text(1)?;
        logs.push(log_tail(name, data.as_bytes(), tail_lines));
    }
    Ok(TaskPage {
        task,
        depends,
        stats,
        logs,
    })
}

fn log(tx: &mut dyn Tx, task_id: &str, name: &str) -> Result<LogData, DbError> {
    for place in [Place::Live, Place::Archive] {
        let sql = format!(
            "SELECT data FROM {} WHERE task_id = ? AND name = ?",
            table(tx, place, "task_log")
        );
        if let Some(row) = tx.query_opt(&sql, args![task_id, name])? {
            return Ok(LogData {
                task_id: task_id.to_string(),
                name: name.to_string(),
                data: row.text(0)?,
            });
        }
    }
    Err(not_found("log", format!("{name} of task {task_id}")))
}

/// Base64 text with ASCII whitespace left out (stored logs may be wrapped in lines).
struct SkipWhitespace<'a>(&'a [u8]);

impl Read for SkipWhitespace<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            let Some((&b, rest)) = self.0.split_first() else {
                break;
            };
            self.0 = rest;
            if !b.is_ascii_whitespace() {
                buf[n] = b;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The last `tail_lines` lines of a stored log (base64 of zlib bytes, SPEC §5.2.1), decoded
/// as a stream: the decompressed log is never held whole, only the lines kept, each cut at
/// [`MAX_TAIL_LINE`] bytes. Data that does not decode gives an `error`, not a failed page.
pub fn log_tail(name: String, data: &[u8], tail_lines: usize) -> LogTail {
    let mut tail = LogTail {
        name,
        lines: Vec::new(),
        truncated: false,
        error: None,
    };
    if data.iter().all(u8::is_ascii_whitespace) {
        return tail;
    }
    let base64 = base64::read::DecoderReader::new(
        SkipWhitespace(data),
        &base64::engine::general_purpose::STANDARD,
    );
    let inflated = flate2::read::ZlibDecoder::new(base64).take(MAX_TAIL_INFLATED + 1);
    let mut reader = BufReader::with_capacity(64 * 1024, inflated);
    let mut kept: VecDeque<Vec<u8>> = VecDeque::with_capacity(tail_lines.min(1024));
    let mut seen: u64 = 0;
    let mut read: u64 = 0;
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut in_line = false;
    let mut finish_line = |line: &mut Vec<u8>, cut: &mut bool, kept: &mut VecDeque<Vec<u8>>| {
        seen += 1;
        if *cut {
            line.extend_from_slice("…".as_bytes());
        }
        *cut = false;
        if tail_lines == 0 {
            line.clear();
            return;
        }
        if kept.len() == tail_lines {
            let mut reused = kept.pop_front().unwrap_or_default();
            reused.clear();
            kept.push_back(std::mem::replace(line, reused));
        } else {
            kept.push_back(std::mem::take(line));
        }
    };
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tail.error = Some(decode_error(&e));
                return tail;
            }
        };
        if chunk.is_empty() {
            break;
        }
        let len = chunk.len();
        read += len as u64;
        if read > MAX_TAIL_INFLATED {
            tail.error = Some(format!(
                "the log decompresses to more than {} MiB; open the full log",
                MAX_TAIL_INFLATED >> 20
            ));
            return tail;
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            in_line = true;
            let (part, newline) = match rest.iter().position(|&b| b == b'\n') {
                Some(at) => (&rest[..at], true),
                None => (rest, false),
            };
            let room = MAX_TAIL_LINE.saturating_sub(line.len());
            if part.len() > room {
                line.extend_from_slice(&part[..room]);
                cut = true;
            } else {
                line.extend_from_slice(part);
            }
            if newline {
                finish_line(&mut line, &mut cut, &mut kept);
                in_line = false;
                rest = &rest[part.len() + 1..];
            } else {
                rest = &[];
            }
        }
        reader.consume(len);
    }
    if in_line {
        finish_line(&mut line, &mut cut, &mut kept);
    }
    tail.truncated = seen > kept.len() as u64;
    tail.lines = kept
        .into_iter()
        .map(|l| {
            let mut text = String::from_utf8_lossy(&l).into_owned();
            // A cut may split a character; drop the replacement it leaves before the mark.
            if let Some(stripped) = text.strip_suffix("\u{FFFD}…") {
                text = format!("{stripped}…");
            }
            text
        })
        .collect();
    tail
}

/// What is wrong with stored log data, for the task page.
fn decode_error(e: &std::io::Error) -> String {
    let base64 = e
        .get_ref()
        .is_some_and(|inner| inner.is::<base64::DecodeError>());
    if base64 {
        format!("the stored log is not valid base64: {e}")
    } else {
        format!("the stored log is not valid zlib data: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_of_a_dataset_is_found_by_its_key() {
        let value = r#"{"a1":[3,10],"b2":[0,5],"x":"\"b2\":[9,9]"}"#;
        assert_eq!(progress_of(value, "a1"), Some((3, 10)));
        assert_eq!(progress_of(value, "b2"), Some((0, 5)));
        assert_eq!(progress_of(value, "c3"), None);
    }

    #[test]
    fn walltime_stats_are_seconds_from_hour_sums() {
        let s = SummaryRow {
            task_index: 0,
            status: "complete".into(),
            n: 2,
            walltime_sum: 3.0,
            walltime_sq: 5.0,
            walltime_min: Some(1.0),
            walltime_max: Some(2.0),
            walltime_err_sum: 0.0,
        };
        let w = walltime_stats(&s).unwrap();
        assert_eq!((w.mean, w.min, w.max), (5400.0, 3600.0, 7200.0));
        assert!((w.stddev - 1800.0).abs() < 1e-9, "{}", w.stddev);
    }
}
