//! Queueing, pilots and completion (SPEC §4, §5.2, §6): which tasks a grid gets and in what
//! order ([`queue_tasks`]), the task config a worker is handed ([`task_config`]), pilot
//! matchmaking through the `task_lookup` table ([`new_task`]), pilot bookkeeping, the
//! periodic job and dataset completion, and the cleanup of expired passkeys and sessions.
//!
//! Every task state change here goes through `ops::apply_transition`; nothing here commits.
//! The operations stay fast on a table of a million tasks: queueing reads candidates in
//! bounded pages in index order and checks dependencies in bulk, matchmaking reads only the
//! lookup rows that fit, and completion aggregates with GROUP BY and writes only the rows
//! whose status changes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iceprod_runtime::dataset::Job;
use iceprod_runtime::states::TaskEvent;
use iceprod_runtime::{DbReply, PasskeyScope, QueuedTask, Resources};
use serde_json::{json, Map, Value};

use crate::args;
use crate::error::DbError;
use crate::ops::{apply_transition, issue_passkey_key, next_local, now, verify_passkey, OpRules};
use crate::sql::{Backend, SqlValue, Tx};

/// The weights of SPEC §6's dataset priority
/// `qf_priority·p/10 − qf_dataset·number/10000 − qf_tasks·log10(tasks)/10`. All 1.0: the
/// person's priority counts fully, older (lower-numbered) datasets and smaller ones go first.
const QF_PRIORITY: f64 = 1.0;
const QF_DATASET: f64 = 1.0;
const QF_TASKS: f64 = 1.0;

/// How long a task's passkey (direct mode) and a pilot's passkey stay valid: longer than any
/// task or pilot may live on a grid.
const TASK_PASSKEY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const PILOT_PASSKEY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Seconds between a worker's `stillrunning` calls, as IceProd 2.3 sets it.
const STILL_RUNNING_INTERVAL: u64 = 60;

/// Jobs with candidate tasks read from one dataset at a time, within these bounds.
const MIN_PAGE: usize = 16;
const MAX_PAGE: usize = 500;
/// At most about this many candidates are read per dataset, and in all, per `queue_tasks`:
/// a dataset whose candidates wait for tasks of other jobs, or are too large for the grid,
/// costs a bounded scan, and is read again from its start in the next cycle.
const SCAN_LIMIT_PER_DATASET: usize = 20_000;
const SCAN_LIMIT: usize = 100_000;

/// Ids per `IN (…)` list, well under every backend's parameter limit.
const IN_CHUNK: usize = 500;

/// Lookup rows `new_task` reads per pass: the first pass reads few, the later ones more.
const FIRST_LOOKUP_PAGE: usize = 4;
const LOOKUP_PAGE: usize = 200;

/// Room for rounding when resources are subtracted and compared.
pub(crate) const EPSILON: f64 = 1e-9;

/// The active task states of SPEC §4, as an SQL list.
const ACTIVE: &str = "'idle', 'waiting', 'queued', 'processing', 'reset', 'resume'";

/// What a task needs, read from `task.requirements` (written by `datasets::buffer_one_job`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Needs {
    pub(crate) resources: Resources,
    os: Option<String>,
}

impl Needs {
    /// Reads the stored JSON; missing values take IceProd's defaults (those of
    /// `dataset::Requirements`). A value that is not JSON is logged and read as defaults, so
    /// one hand-edited row cannot stop a grid's queueing.
    pub(crate) fn parse(task_id: &str, text: &str) -> Needs {
        let value: Value = serde_json::from_str(text).unwrap_or_else(|e| {
            log::warn!("task {task_id}: requirements are not JSON ({e}); using defaults");
            Value::Null
        });
        let defaults = iceprod_runtime::dataset::Requirements::default();
        let number = |key: &str| value.get(key).and_then(Value::as_f64);
        let count = |key: &str, default: u32| {
            number(key).map_or(default, |x| if x > 0.0 { x.ceil() as u32 } else { 0 })
        };
        Needs {
            resources: Resources {
                cpu: count("cpu", defaults.cpu),
                gpu: count("gpu", defaults.gpu),
                memory: number("memory").unwrap_or(defaults.memory_gb),
                disk: number("disk").unwrap_or(defaults.disk_gb),
                time: number("time").unwrap_or(defaults.time_hours),
            },
            os: value
                .get("os")
                .and_then(Value::as_str)
                .filter(|os| !os.is_empty())
                .map(str::to_string),
        }
    }
}

/// Whether `need` fits the grid's largest slot. A 0 in `largest` means unlimited, except
/// for gpus: a grid without gpus (the default) never gets a gpu task. The oversize check
/// (`grid::oversize_reason`) reads a 0 the same way; a test holds them together.
pub(crate) fn fits_largest(need: &Resources, largest: &Resources) -> bool {
    let within = |n: f64, l: f64| l <= 0.0 || n <= l + EPSILON;
    within(f64::from(need.cpu), f64::from(largest.cpu))
        && need.gpu <= largest.gpu
        && within(need.memory, largest.memory)
        && within(need.disk, largest.disk)
        && within(need.time, largest.time)
}

/// Whether `need` fits what a pilot has left; here a 0 means none left.
fn fits_available(need: &Resources, left: &Resources) -> bool {
    need.cpu <= left.cpu
        && need.gpu <= left.gpu
        && need.memory <= left.memory + EPSILON
        && need.disk <= left.disk + EPSILON
        && need.time <= left.time + EPSILON
}

/// `?, ?, …` for an `IN` list of `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Of `ids`, those whose task is complete. Ids of tasks that do not exist are not complete.
fn complete_tasks(tx: &mut dyn Tx, ids: &[&str]) -> Result<HashSet<String>, DbError> {
    let mut complete = HashSet::new();
    for chunk in ids.chunks(IN_CHUNK) {
        // By primary key only, the status compared here: a `status = 'complete'` in the
        // query could lead the planner to walk every complete task instead.
        let sql = format!(
            "SELECT task_id, status FROM task WHERE task_id IN ({})",
            placeholders(chunk.len())
        );
        let params: Vec<SqlValue> = chunk.iter().map(|id| SqlValue::from(*id)).collect();
        for row in tx.query(&sql, &params)? {
            if row.text(1)? == "complete" {
                complete.insert(row.text(0)?);
            }
        }
    }
    Ok(complete)
}

// ---------------------------------------------------------------------------------------
// queue_tasks

/// A task that may be queued now.
struct Candidate {
    task_id: String,
    dataset_id: String,
    needs: Needs,
}

/// The eligible tasks of one dataset, read lazily in `(job_index, task_index)` order.
struct DatasetSource {
    dataset_id: String,
    number: i64,
    priority: f64,
    /// The last job read.
    cursor: i64,
    ready: VecDeque<Candidate>,
    scanned: usize,
    exhausted: bool,
}

/// The two queries that find candidates, built once per call for the backend.
///
/// Candidates are idle or waiting tasks, less those whose `depends` list names an unfinished
/// task of their own job: that test runs in SQL (ids are quoted in the JSON list, so one id
/// cannot match inside another), so the children of queued and running tasks are skipped
/// where they lie and cost neither the scan limits nor a dependency lookup. Dependencies on
/// other jobs are checked on each page ([`complete_tasks`]), which checks every dependency
/// again exactly.
///
/// `jobs` walks a dataset's jobs in `job_by_dataset` order after a cursor and stops at
/// `LIMIT` jobs that hold a candidate: ordered by one table only, so neither SQLite nor
/// MySQL sorts, and complete jobs are passed over without touching their tasks. `tasks`
/// then reads those jobs' candidates through `task_by_job`.
struct CandidateQueries {
    jobs: String,
    /// Completed by `?, ?, …)` for the job ids.
    tasks: String,
}

impl CandidateQueries {
    fn new(backend: Backend) -> CandidateQueries {
        // The one dialect difference: string concatenation.
        let quoted_id = match backend {
            Backend::Sqlite => r#"'"' || p.task_id || '"'"#,
            Backend::Mysql => r#"CONCAT('"', p.task_id, '"')"#,
        };
        let candidate = format!(
            "t.status IN ('idle', 'waiting') AND NOT EXISTS (SELECT 1 FROM task p \
             WHERE p.job_id = t.job_id AND p.status <> 'complete' \
             AND INSTR(t.depends, {quoted_id}) > 0)"
        );
        CandidateQueries {
            jobs: format!(
                "SELECT j.job_id, j.job_index FROM job j WHERE j.dataset_id = ? \
                 AND j.job_index > ? AND j.status <> 'complete' \
                 AND EXISTS (SELECT 1 FROM task t WHERE t.job_id = j.job_id AND {candidate}) \
                 ORDER BY j.job_index LIMIT ?"
            ),
            tasks: format!(
                "SELECT t.task_id, t.job_id, t.task_index, t.requirements, t.depends \
                 FROM task t WHERE {candidate} AND t.job_id IN ("
            ),
        }
    }
}

impl DatasetSource {
    /// The next eligible task, reading more candidates while none is ready and the scan
    /// limits allow.
    fn next(
        &mut self,
        tx: &mut dyn Tx,
        queries: &CandidateQueries,
        largest: &Resources,
        page: usize,
        budget: &mut usize,
    ) -> Result<Option<Candidate>, DbError> {
        while self.ready.is_empty() && !self.exhausted {
            let limit = page
                .min(*budget)
                .min(SCAN_LIMIT_PER_DATASET.saturating_sub(self.scanned));
            if limit == 0 {
                self.exhausted = true;
                break;
            }
            let read = self.read_page(tx, queries, largest, limit)?;
            *budget = budget.saturating_sub(read);
        }
        Ok(self.ready.pop_front())
    }

    /// Reads the candidates of the next `jobs` jobs that have any; keeps those that fit
    /// `largest` and whose dependencies are all complete (checked for the whole page at
    /// once). Returns how many candidates it read.
    fn read_page(
        &mut self,
        tx: &mut dyn Tx,
        queries: &CandidateQueries,
        largest: &Resources,
        jobs: usize,
    ) -> Result<usize, DbError> {
        let job_rows = tx.query(
            &queries.jobs,
            args![self.dataset_id.as_str(), self.cursor, jobs],
        )?;
        if job_rows.len() < jobs {
            self.exhausted = true;
        }
        let mut job_index = HashMap::with_capacity(job_rows.len());
        for row in &job_rows {
            job_index.insert(row.text(0)?, row.int(1)?);
            self.cursor = row.int(1)?;
        }
        let job_ids: Vec<&str> = job_index.keys().map(String::as_str).collect();
        let mut rows = Vec::new();
        for chunk in job_ids.chunks(IN_CHUNK) {
            let sql = format!("{}{})", queries.tasks, placeholders(chunk.len()));
            let params: Vec<SqlValue> = chunk.iter().map(|id| SqlValue::from(*id)).collect();
            for row in tx.query(&sql, &params)? {
                let job = job_index.get(&row.text(1)?).copied().unwrap_or(i64::MAX);
                rows.push(((job, row.int(2)?), row));
            }
        }
        rows.sort_by_key(|(order, _)| *order);
        self.scanned += rows.len();

        let mut fitting = Vec::with_capacity(rows.len());
        for (_, row) in &rows {
            let task_id = row.text(0)?;
            let needs = Needs::parse(&task_id, &row.text(3)?);
            if !fits_largest(&needs.resources, largest) {
                continue;
            }
            let depends: Vec<String> = serde_json::from_str(&row.text(4)?).unwrap_or_else(|e| {
                log::warn!("task {task_id}: depends is not a list of ids ({e})");
                vec![String::from("(unreadable)")]
            });
            fitting.push((task_id, needs, depends));
        }
        let wanted: Vec<&str> = fitting
            .iter()
            .flat_map(|(_, _, deps)| deps.iter().map(String::as_str))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let complete = complete_tasks(tx, &wanted)?;
        for (task_id, needs, depends) in fitting {
            if depends.iter().all(|d| complete.contains(d)) {
                self.ready.push_back(Candidate {
                    task_id,
                    dataset_id: self.dataset_id.clone(),
                    needs,
                });
            }
        }
        Ok(rows.len())
    }
}

/// SPEC §6: `qf_priority·p/10 − qf_dataset·number/10000 − qf_tasks·log10(tasks)/10`, floored
/// at 0, times the group factor. (SPEC also normalises over datasets; dividing every
/// priority by the same sum changes no order, so it is left out.)
fn dataset_priority(priority: f64, number: i64, tasks: i64, group_factor: f64) -> f64 {
    let tasks = tasks.max(1) as f64;
    let p = QF_PRIORITY * priority / 10.0
        - QF_DATASET * number as f64 / 10_000.0
        - QF_TASKS * tasks.log10() / 10.0;
    if p.is_finite() && p > 0.0 {
        p * group_factor
    } else {
        0.0
    }
}

/// Group priorities by name and group names by id, to resolve a dataset's group path.
struct Groups {
    priority_by_name: HashMap<String, f64>,
    name_by_id: HashMap<String, String>,
}

impl Groups {
    fn load(tx: &mut dyn Tx) -> Result<Groups, DbError> {
        let mut groups = Groups {
            priority_by_name: HashMap::new(),
            name_by_id: HashMap::new(),
        };
        for row in tx.query("SELECT groups_id, name, priority FROM `groups`", args![])? {
            let name = row.text(1)?;
            let priority = row.real(2)?;
            groups.name_by_id.insert(row.text(0)?, name.clone());
            groups.priority_by_name.insert(
                name,
                if priority.is_finite() {
                    priority.max(0.0)
                } else {
                    1.0
                },
            );
        }
        Ok(groups)
    }

    /// SPEC §6: group priorities multiply along the path (`/sim/high` is `/sim` times
    /// `/sim/high`). The dataset's group may be a path or a group id; a group that is not
    /// in the table counts 1.
    fn factor(&self, group: Option<&str>) -> f64 {
        let Some(group) = group.filter(|g| !g.is_empty()) else {
            return 1.0;
        };
        let path = self.name_by_id.get(group).map_or(group, String::as_str);
        let mut prefix = String::new();
        let mut factor = 1.0;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            prefix.push('/');
            prefix.push_str(part);
            let found = self
                .priority_by_name
                .get(&prefix)
                .or_else(|| self.priority_by_name.get(&prefix[1..]));
            factor *= found.copied().unwrap_or(1.0);
        }
        factor
    }
}

/// The datasets that may queue on `gridspec` (processing or truncated, for any grid or this
/// one), highest priority first, ties by dataset number.
fn datasets_by_priority(tx: &mut dyn Tx, gridspec: &str) -> Result<Vec<DatasetSource>, DbError> {
    let rows = tx.query(
        "SELECT dataset_id, dataset_num, priority, tasks_submitted, groups_id FROM dataset \
         WHERE status IN ('processing', 'truncated') AND (gridspec = '' OR gridspec = ?)",
        args![gridspec],
    )?;
    let groups = if rows.is_empty() {
        None
    } else {
        Some(Groups::load(tx)?)
    };
    let mut sources = Vec::with_capacity(rows.len());
    for row in rows {
        let number = row.int(1)?;
        let factor = groups
            .as_ref()
            .map_or(1.0, |g| g.factor(row.opt_text(4).ok().flatten().as_deref()));
        sources.push(DatasetSource {
            dataset_id: row.text(0)?,
            number,
            priority: dataset_priority(row.real(2)?, number, row.int(3)?, factor),
            cursor: -1,
            ready: VecDeque::new(),
            scanned: 0,
            exhausted: false,
        });
    }
    sources.sort_by(|a, b| {
        b.priority
            .total_cmp(&a.priority)
            .then(a.number.cmp(&b.number))
    });
    Ok(sources)
}

/// SPEC §6: picks up to `num` eligible tasks (idle or waiting, dependencies complete,
/// requirements within `largest`, dataset processing or truncated and for this grid or any),
/// round-robin over the datasets by priority, one task per dataset per round, each dataset's
/// in job then task order. Each picked task is marked queued for `gridspec` and gets a task
/// passkey (direct mode) or a `task_lookup` row (pilot mode).
pub fn queue_tasks(
    tx: &mut dyn Tx,
    rules: OpRules,
    gridspec: &str,
    num: u32,
    largest: Resources,
    pilot_mode: bool,
) -> Result<DbReply, DbError> {
    let num = num as usize;
    if num == 0 {
        return Ok(DbReply::Queued(Vec::new()));
    }
    let mut sources = datasets_by_priority(tx, gridspec)?;
    // Jobs for about twice a dataset's share of `num` per read: enough for its rounds when
    // candidates are eligible, without reading far past what one call can use.
    let page = (2 * num.div_ceil(sources.len().max(1))).clamp(MIN_PAGE, MAX_PAGE);
    let mut budget = SCAN_LIMIT;
    let queries = CandidateQueries::new(tx.backend());
    let mut picked = Vec::new();
    'rounds: loop {
        let mut progressed = false;
        for source in sources.iter_mut() {
            if picked.len() >= num {
                break 'rounds;
            }
            if let Some(candidate) = source.next(tx, &queries, &largest, page, &mut budget)? {
                picked.push(candidate);
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }

    forget_earlier_attempts(tx, &picked)?;
    let mut configs = ConfigCache::default();
    let mut queued = Vec::with_capacity(picked.len());
    let now = now();
    for candidate in picked {
        let task_id = candidate.task_id.as_str();
        apply_transition(tx, rules, task_id, TaskEvent::Queue)?;
        // A new submission: the grid id and folder of an earlier attempt no longer apply.
        tx.exec(
            "UPDATE task SET gridspec = ?, grid_queue_id = NULL, submit_dir = NULL \
             WHERE task_id = ?",
            args![gridspec, task_id],
        )?;
        let passkey = if pilot_mode {
            insert_lookup(tx, task_id, gridspec, &candidate.needs, &now)?;
            None
        } else {
            Some(issue_passkey_key(
                tx,
                PasskeyScope::Task,
                task_id,
                TASK_PASSKEY_TTL,
            )?)
        };
        let config = configs.task_config(tx, task_id, gridspec)?;
        queued.push(QueuedTask {
            task_id: candidate.task_id,
            dataset_id: candidate.dataset_id,
            requirements: candidate.needs.resources,
            passkey,
            config,
        });
    }
    Ok(DbReply::Queued(queued))
}

/// Before the picked tasks are queued: the passkeys of earlier attempts stop working (a grid
/// job of an attempt that was reset — lost, stuck, failed — must not act on this one), and
/// lookup rows left by earlier pilot-mode attempts go (a person's reset does not remove them;
/// one must not let a pilot take a direct-mode attempt too, nor stand beside the new row).
/// One statement of each per `IN_CHUNK` tasks, not per task.
fn forget_earlier_attempts(tx: &mut dyn Tx, picked: &[Candidate]) -> Result<(), DbError> {
    for chunk in picked.chunks(IN_CHUNK) {
        let list = placeholders(chunk.len());
        let ids: Vec<SqlValue> = chunk
            .iter()
            .map(|c| SqlValue::from(c.task_id.as_str()))
            .collect();
        tx.exec(
            &format!(
                "UPDATE passkey SET revoked = 1 WHERE scope = 'task' AND subject IN ({list}) \
                 AND revoked = 0"
            ),
            &ids,
        )?;
        tx.exec(
            &format!("DELETE FROM task_lookup WHERE task_id IN ({list})"),
            &ids,
        )?;
    }
    Ok(())
}

/// Puts a queued task in the pilot lookup (`forget_earlier_attempts` removed any row left
/// from an earlier attempt).
fn insert_lookup(
    tx: &mut dyn Tx,
    task_id: &str,
    gridspec: &str,
    needs: &Needs,
    now: &str,
) -> Result<(), DbError> {
    let r = &needs.resources;
    tx.exec(
        "INSERT INTO task_lookup (task_id, gridspec, insert_time, req_cpu, req_gpu, \
         req_memory, req_disk, req_time, req_os) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        args![
            task_id,
            gridspec,
            now,
            r.cpu,
            r.gpu,
            r.memory,
            r.disk,
            r.time,
            needs.os.as_deref()
        ],
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// task configs

/// Dataset configs read once per operation: a call that hands out many tasks of the same
/// dataset parses its config once.
#[derive(Default)]
struct ConfigCache {
    by_dataset: HashMap<String, Arc<(Job, Value)>>,
}

/// Parsed configs kept across operations (and threads), by dataset: parsing a config costs
/// more than the rest of a one-task `new_task`. An entry serves only a config whose stored
/// text is the same as when it was parsed, so a hit gives exactly what parsing gives, and a
/// config changed by `update_dataset_config` is parsed again. Bounded: at most
/// `PARSED_CONFIGS` datasets (all dropped when full), configs up to `PARSED_CONFIG_BYTES`.
type ParsedConfigs = HashMap<String, (String, Arc<(Job, Value)>)>;
static PARSED: Mutex<Option<ParsedConfigs>> = Mutex::new(None);
const PARSED_CONFIGS: usize = 32;
const PARSED_CONFIG_BYTES: usize = 256 << 10;

/// `text` parsed, from [`PARSED`] when it was parsed before.
fn parsed_config(dataset_id: &str, text: String) -> Result<Arc<(Job, Value)>, DbError> {
    let lock = || {
        PARSED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    if let Some((known, parsed)) = lock().as_ref().and_then(|m| m.get(dataset_id)) {
        if *known == text {
            return Ok(parsed.clone());
        }
    }
    let job = Job::from_json(&text)
        .map_err(|e| DbError::Schema(format!("dataset {dataset_id}: stored config: {e}")))?;
    let value = job.to_value();
    let parsed = Arc::new((job, value));
    if text.len() <= PARSED_CONFIG_BYTES {
        let mut map = lock();
        let map = map.get_or_insert_with(HashMap::new);
        if map.len() >= PARSED_CONFIGS && !map.contains_key(dataset_id) {
            map.clear();
        }
        map.insert(dataset_id.to_string(), (text, parsed.clone()));
    }
    Ok(parsed)
}

impl ConfigCache {
    fn config(&mut self, tx: &mut dyn Tx, dataset_id: &str) -> Result<&(Job, Value), DbError> {
        if !self.by_dataset.contains_key(dataset_id) {
            let text = tx
                .query_opt(
                    "SELECT config_data FROM config WHERE dataset_id = ?",
                    args![dataset_id],
                )?
                .ok_or_else(|| DbError::Schema(format!("dataset {dataset_id} has no config")))?
                .text(0)?;
            let parsed = parsed_config(dataset_id, text)?;
            self.by_dataset.insert(dataset_id.to_string(), parsed);
        }
        self.by_dataset
            .get(dataset_id)
            .map(|parsed| &**parsed)
            .ok_or_else(|| DbError::Schema(format!("dataset {dataset_id}: config not cached")))
    }

    fn task_config(
        &mut self,
        tx: &mut dyn Tx,
        task_id: &str,
        gridspec: &str,
    ) -> Result<Value, DbError> {
        let row = tx
            .query_opt(
                "SELECT task.task_index, task.requirements, task.dataset_id, job.job_index, \
                 dataset.dataset_num, dataset.jobs_submitted, dataset.debug FROM task \
                 JOIN job ON job.job_id = task.job_id \
                 JOIN dataset ON dataset.dataset_id = task.dataset_id WHERE task.task_id = ?",
                args![task_id],
            )?
            .ok_or_else(|| DbError::NotFound {
                what: "task",
                id: task_id.to_string(),
            })?;
        let task_index = usize::try_from(row.int(0)?).unwrap_or(usize::MAX);
        let needs = Needs::parse(task_id, &row.text(1)?).resources;
        let dataset_id = row.text(2)?;
        let dataset_num = row.int(4)?;
        let (job, value) = self.config(tx, &dataset_id)?;
        let mut config = value.clone();
        let Value::Object(top) = &mut config else {
            return Err(DbError::Schema(format!(
                "dataset {dataset_id}: stored config is not an object"
            )));
        };
        let mut options = match top.remove("options") {
            Some(Value::Object(options)) => options,
            _ => Map::new(),
        };
        for (key, value) in [
            ("task_id", json!(task_id)),
            ("task", json!(job.task_name(task_index))),
            ("dataset_id", json!(dataset_id)),
            ("dataset", json!(dataset_num)),
            ("job", json!(row.int(3)?)),
            ("jobs_submitted", json!(row.int(5)?)),
            ("debug", json!(row.bool(6)?)),
            (
                "resources",
                json!({
                    "cpu": needs.cpu, "gpu": needs.gpu, "memory": needs.memory,
                    "disk": needs.disk, "time": needs.time,
                }),
            ),
            ("stillrunninginterval", json!(STILL_RUNNING_INTERVAL)),
            ("upload", json!("logging")),
            ("gridspec", json!(gridspec)),
        ] {
            options.insert(key.to_string(), value);
        }
        top.insert("options".into(), Value::Object(options));
        top.insert("dataset".into(), json!(dataset_num));
        Ok(config)
    }
}

/// The task config a worker is handed (SPEC §5.2.1): the whole dataset config with top-level
/// `dataset` = the dataset number and `options` filled for this task on `gridspec`.
pub fn task_config(tx: &mut dyn Tx, task_id: &str, gridspec: &str) -> Result<Value, DbError> {
    ConfigCache::default().task_config(tx, task_id, gridspec)
}

// ---------------------------------------------------------------------------------------
// grid ids and pilots

/// Records where a queued task was submitted.
pub fn set_grid_id(
    tx: &mut dyn Tx,
    task_id: &str,
    grid_queue_id: &str,
    submit_dir: &str,
) -> Result<DbReply, DbError> {
    record_submission(tx, "task", task_id, grid_queue_id, submit_dir)
}

/// Records where a task or pilot (`what`: the table, keyed by `{what}_id`) was submitted;
/// `NotFound` for an unknown one.
pub(crate) fn record_submission(
    tx: &mut dyn Tx,
    what: &'static str,
    id: &str,
    grid_queue_id: &str,
    submit_dir: &str,
) -> Result<DbReply, DbError> {
    // Checked first: MySQL counts only rows whose values change, so an update that stores
    // the same values again would look like a missing row.
    if tx
        .query_opt(
            &format!("SELECT {what}_id FROM {what} WHERE {what}_id = ?"),
            args![id],
        )?
        .is_none()
    {
        return Err(DbError::NotFound {
            what,
            id: id.to_string(),
        });
    }
    tx.exec(
        &format!("UPDATE {what} SET grid_queue_id = ?, submit_dir = ? WHERE {what}_id = ?"),
        args![grid_queue_id, submit_dir, id],
    )?;
    Ok(DbReply::Done)
}

fn resources_json(r: &Resources) -> String {
    serde_json::to_string(r).unwrap_or_else(|_| "{}".into())
}

/// A new pilot for `gridspec` asking `requirements`, with its pilot passkey.
pub fn create_pilot(
    tx: &mut dyn Tx,
    _rules: OpRules,
    gridspec: &str,
    requirements: Resources,
) -> Result<DbReply, DbError> {
    // Pilots get local ids (SPEC §2).
    let pilot_id = iceprod_runtime::ids::encode(next_local(tx, "pilot")?);
    let now = now();
    tx.exec(
        "INSERT INTO pilot (pilot_id, gridspec, submit_time, requirements, last_update) \
         VALUES (?, ?, ?, ?, ?)",
        args![
            pilot_id.as_str(),
            gridspec,
            now.as_str(),
            resources_json(&requirements),
            now.as_str()
        ],
    )?;
    let passkey = issue_passkey_key(tx, PasskeyScope::Pilot, &pilot_id, PILOT_PASSKEY_TTL)?;
    Ok(DbReply::Pilot { pilot_id, passkey })
}

/// The pilot a passkey belongs to; `Forbidden` for anything but a valid pilot passkey.
fn pilot_of(tx: &mut dyn Tx, passkey: &str) -> Result<String, DbError> {
    match verify_passkey(tx, passkey) {
        Ok((PasskeyScope::Pilot, pilot_id)) => Ok(pilot_id),
        Ok(_) => Err(DbError::Forbidden("this is not a pilot's passkey".into())),
        Err(_) => Err(DbError::Forbidden(
            "unknown, expired or revoked passkey".into(),
        )),
    }
}

/// A pilot's grid and the tasks it runs; `Forbidden` when the pilot row is gone.
fn pilot_row(tx: &mut dyn Tx, pilot_id: &str) -> Result<(String, Vec<String>), DbError> {
    let (gridspec, tasks) = pilot_record(tx, pilot_id)?;
    Ok((gridspec, task_list(&tasks)))
}

/// A pilot's grid and its `tasks` column as stored; `Forbidden` when the pilot row is gone.
fn pilot_record(tx: &mut dyn Tx, pilot_id: &str) -> Result<(String, String), DbError> {
    let row = tx
        .query_opt(
            "SELECT gridspec, tasks FROM pilot WHERE pilot_id = ?",
            args![pilot_id],
        )?
        .ok_or_else(|| DbError::Forbidden(format!("pilot {pilot_id} no longer exists")))?;
    Ok((row.text(0)?, row.text(1)?))
}

/// The task ids of a stored `tasks` column: comma separated, blanks ignored.
pub(crate) fn task_list(stored: &str) -> Vec<String> {
    stored
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// The `tasks` column with `more` appended: `task_list(stored)` and then `more`, joined by
/// commas. A column already in that form (as this function and `update_pilot` write it) is
/// extended as it is, without splitting it: a pilot that never reports keeps a long list.
fn append_tasks(stored: &str, more: &[String]) -> String {
    // What `str::trim` would remove: ASCII whitespace checked byte by byte, anything else
    // (never in ids) by the slower char test.
    let blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r');
    let clean = !stored.starts_with(',')
        && !stored.ends_with(',')
        && !stored.contains(",,")
        && !stored.as_bytes().iter().any(blank)
        && (stored.is_ascii() || !stored.contains(char::is_whitespace));
    if clean {
        let more = more.join(",");
        match (stored.is_empty(), more.is_empty()) {
            (true, _) => more,
            (false, true) => stored.to_string(),
            (false, false) => format!("{stored},{more}"),
        }
    } else {
        let mut tasks = task_list(stored);
        tasks.extend(more.iter().cloned());
        tasks.join(",")
    }
}

/// Lookup rows of `gridspec` that fit `left`, best fit first: gpu tasks first (so a gpu is
/// not spent on nothing), then the largest by memory, then by cpu; among equals the longest
/// waiting (then by task id). At most `limit` rows.
///
/// Read in the order of the `task_lookup_fit` index, one (gpu, memory) pair at a time, largest
/// first, each found with one index seek; within a pair, only the rows whose cpu fits (a range
/// of the index). So nothing is read that is too large in gpu, memory or cpu, nothing is sorted
/// but rows that tie on every indexed column, and the reading stops at `limit`: a call costs
/// what it hands out, not what the grid has queued, even when nothing fits any more. After
/// `MEMORY_SEEKS` memory values of one gpu count (many distinct values, as learned
/// requirements make), the rest of that gpu count is read as one index range instead, in the
/// same order, so the seeks stay bounded.
fn fitting_lookups(
    tx: &mut dyn Tx,
    gridspec: &str,
    left: &Resources,
    os: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, Resources)>, DbError> {
    const NEXT_GPU: &str = "SELECT req_gpu FROM task_lookup WHERE gridspec = ? AND req_gpu <= ? \
        ORDER BY req_gpu DESC LIMIT 1";
    const FIRST_MEMORY: &str = "SELECT req_memory FROM task_lookup WHERE gridspec = ? \
        AND req_gpu = ? AND req_memory <= ? ORDER BY req_memory DESC LIMIT 1";
    const NEXT_MEMORY: &str = "SELECT req_memory FROM task_lookup WHERE gridspec = ? \
        AND req_gpu = ? AND req_memory < ? ORDER BY req_memory DESC LIMIT 1";
    const SELECT: &str = "SELECT task_id, req_cpu, req_gpu, req_memory, req_disk, req_time \
        FROM task_lookup WHERE gridspec = ? AND req_gpu = ? AND req_memory = ? \
        AND req_cpu <= ? AND req_disk <= ? AND req_time <= ?";
    const ORDER: &str = "ORDER BY req_cpu DESC, insert_time, task_id";
    const REST: &str = "SELECT task_id, req_cpu, req_gpu, req_memory, req_disk, req_time \
        FROM task_lookup WHERE gridspec = ? AND req_gpu = ? AND req_memory < ? \
        AND req_cpu <= ? AND req_disk <= ? AND req_time <= ?";
    const REST_ORDER: &str = "ORDER BY req_memory DESC, req_cpu DESC, insert_time, task_id";
    const MEMORY_SEEKS: usize = 8;
    // The limit is written into the statement, not bound: SQLite plans with a bound LIMIT's
    // value and so prepares such a statement again at every run. `limit` is one of the few
    // page sizes, so each text is prepared once and cached.
    let with_os = |select: &str, order: &str| match os {
        // A task that names an OS runs only where the worker reports that OS.
        Some(_) => format!(
            "{select} AND (req_os IS NULL OR req_os = '' OR req_os = ?) {order} LIMIT {limit}"
        ),
        None => format!("{select} {order} LIMIT {limit}"),
    };
    let (sql, rest_sql) = (with_os(SELECT, ORDER), with_os(REST, REST_ORDER));
    let read = |tx: &mut dyn Tx, sql: &str, gpu: i64, m: f64, out: &mut Vec<_>| {
        let mut params = vec![
            SqlValue::from(gridspec),
            SqlValue::from(gpu),
            SqlValue::from(m),
            SqlValue::from(left.cpu),
            SqlValue::from(left.disk + EPSILON),
            SqlValue::from(left.time + EPSILON),
        ];
        if let Some(os) = os {
            params.push(os.into());
        }
        let wanted = limit - out.len();
        for row in tx.query(sql, &params)?.into_iter().take(wanted) {
            let count = |i| {
                row.int(i)
                    .map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX))
            };
            out.push((
                row.text(0)?,
                Resources {
                    cpu: count(1)?,
                    gpu: count(2)?,
                    memory: row.real(3)?,
                    disk: row.real(4)?,
                    time: row.real(5)?,
                },
            ));
        }
        Ok::<_, DbError>(())
    };
    let mut out = Vec::new();
    let mut gpu_bound = i64::from(left.gpu);
    'gpus: while out.len() < limit {
        let Some(next) = tx.query_opt(NEXT_GPU, args![gridspec, gpu_bound])? else {
            break;
        };
        let gpu = next.int(0)?;
        let mut memory = tx.query_opt(FIRST_MEMORY, args![gridspec, gpu, left.memory + EPSILON])?;
        let mut seeks = 0;
        while let Some(row) = memory {
            let m = row.real(0)?;
            read(tx, &sql, gpu, m, &mut out)?;
            if out.len() >= limit {
                break 'gpus;
            }
            seeks += 1;
            if seeks == MEMORY_SEEKS {
                read(tx, &rest_sql, gpu, m, &mut out)?;
                if out.len() >= limit {
                    break 'gpus;
                }
                break;
            }
            memory = tx.query_opt(NEXT_MEMORY, args![gridspec, gpu, m])?;
        }
        match gpu.checked_sub(1) {
            Some(lower) => gpu_bound = lower,
            None => break,
        }
    }
    Ok(out)
}

/// `new_task` (SPEC §5.2): hands the pilot as many queued tasks of its grid as fit the
/// resources it has available, best fit first, marks them processing and the pilot's own,
/// and answers their configs (none when nothing fits). `time` is the pilot's time left, so
/// it bounds each task but is not used up by running tasks side by side; cpu, gpu, memory
/// and disk are.
pub fn new_task(
    tx: &mut dyn Tx,
    rules: OpRules,
    passkey: &str,
    gridspec: &str,
    available: Resources,
    os: Option<&str>,
    hostname: &str,
) -> Result<DbReply, DbError> {
    let pilot_id = pilot_of(tx, passkey)?;
    let (pilot_grid, pilot_tasks) = pilot_record(tx, &pilot_id)?;
    let gridspec = if gridspec.is_empty() {
        pilot_grid.as_str()
    } else if pilot_grid.is_empty() || pilot_grid == gridspec {
        gridspec
    } else {
        return Err(DbError::Forbidden(format!(
            "pilot {pilot_id} runs on {pilot_grid}, not {gridspec}"
        )));
    };
    let os = os.filter(|os| !os.is_empty());

    let mut left = available;
    let mut handed = Vec::new();
    // Pages grow: most pilots take one task or a few, so the first page is small; a page
    // that was used up is read again from the top with what is left.
    let mut page = FIRST_LOOKUP_PAGE;
    loop {
        let rows = fitting_lookups(tx, gridspec, &left, os, page)?;
        // A short page held every row that fitted; once resources shrink, none of the
        // rest can fit either.
        let saw_all = rows.len() < page;
        page = (page * 4).min(LOOKUP_PAGE);
        let mut progressed = false;
        // Resources only shrink, so a row that does not fit now never will in this call:
        // one pass over the best-fit order takes the largest fitting task at each step.
        for (task_id, need) in rows {
            if !fits_available(&need, &left) {
                continue;
            }
            progressed = true;
            tx.exec(
                "DELETE FROM task_lookup WHERE task_id = ?",
                args![task_id.as_str()],
            )?;
            match apply_transition(tx, rules, &task_id, TaskEvent::Start) {
                Ok(_) => {}
                // A row left behind by a task that was reset or removed meanwhile: dropped.
                Err(e @ (DbError::Refused(_) | DbError::NotFound { .. })) => {
                    log::warn!("new_task: dropping stale lookup row: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            }
            left.cpu -= need.cpu;
            left.gpu -= need.gpu;
            left.memory -= need.memory;
            left.disk -= need.disk;
            handed.push(task_id);
        }
        if saw_all || !progressed {
            break;
        }
    }
    if handed.is_empty() {
        return Ok(DbReply::TaskConfigs(Vec::new()));
    }
    log::debug!(
        "new_task: pilot {pilot_id} on {hostname} takes {}",
        handed.join(",")
    );
    tx.exec(
        "UPDATE pilot SET tasks = ?, last_update = ? WHERE pilot_id = ?",
        args![
            append_tasks(&pilot_tasks, &handed),
            now(),
            pilot_id.as_str()
        ],
    )?;
    let mut configs = ConfigCache::default();
    let mut out = Vec::with_capacity(handed.len());
    for task_id in &handed {
        out.push(configs.task_config(tx, task_id, gridspec)?);
    }
    Ok(DbReply::TaskConfigs(out))
}

/// `update_pilot` (SPEC §5.2): the pilot's own passkey records the tasks it runs now and
/// its resources. Only tasks already the pilot's (handed to it by `new_task`) are kept, so a
/// pilot cannot claim, and then act on, tasks it was never given.
pub fn update_pilot(
    tx: &mut dyn Tx,
    passkey: &str,
    pilot_id: &str,
    tasks: &[String],
    available: Resources,
    claimed: Resources,
) -> Result<DbReply, DbError> {
    if pilot_of(tx, passkey)? != pilot_id {
        return Err(DbError::Forbidden(format!(
            "this passkey may not update pilot {pilot_id}"
        )));
    }
    let (_, own) = pilot_row(tx, pilot_id)?;
    let own: HashSet<&str> = own.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    let kept: Vec<&str> = tasks
        .iter()
        .map(|t| t.trim())
        .filter(|t| own.contains(t) && seen.insert(*t))
        .collect();
    tx.exec(
        "UPDATE pilot SET tasks = ?, resources_avail = ?, resources_claim = ?, last_update = ? \
         WHERE pilot_id = ?",
        args![
            kept.join(","),
            resources_json(&available),
            resources_json(&claimed),
            now(),
            pilot_id
        ],
    )?;
    Ok(DbReply::Done)
}

// ---------------------------------------------------------------------------------------
// completion

/// The jobs of one dataset whose status differs from what SPEC §4 makes of their tasks, with
/// that status. Complete jobs are skipped: their tasks are complete and stay so (a hard
/// reset sets its jobs back to processing itself). The other job states are named rather
/// than `<> 'complete'`, so the jobs come from the covering `job_by_status` index.
fn job_changes_sql() -> String {
    format!(
        "SELECT x.job_id, x.new_status FROM (\
         SELECT j.job_id, j.status, CASE \
         WHEN sum(CASE WHEN t.status = 'complete' THEN 1 ELSE 0 END) = count(*) \
         THEN 'complete' \
         WHEN sum(CASE WHEN t.status IN ('complete', 'failed') THEN 1 ELSE 0 END) = count(*) \
         THEN 'errors' \
         WHEN sum(CASE WHEN t.status = 'suspended' THEN 1 ELSE 0 END) > 0 \
         AND sum(CASE WHEN t.status IN ({ACTIVE}) THEN 1 ELSE 0 END) = 0 THEN 'suspended' \
         ELSE 'processing' END AS new_status \
         FROM job j CROSS JOIN task t ON t.job_id = j.job_id \
         WHERE j.status IN ('processing', 'suspended', 'errors') AND j.dataset_id = ? \
         GROUP BY j.job_id, j.status) x \
         WHERE x.new_status <> x.status"
    )
}

/// Sets `status` on the jobs in `ids`, a chunk at a time.
fn set_job_status(tx: &mut dyn Tx, ids: &[String], status: &str, now: &str) -> Result<(), DbError> {
    for chunk in ids.chunks(IN_CHUNK) {
        let sql = format!(
            "UPDATE job SET status = ?, status_changed = ? WHERE job_id IN ({})",
            placeholders(chunk.len())
        );
        let mut params = vec![SqlValue::from(status), SqlValue::from(now)];
        params.extend(chunk.iter().map(SqlValue::from));
        tx.exec(&sql, &params)?;
    }
    Ok(())
}

/// SPEC §4's rule over a dataset's jobs, once they all exist: `None` leaves it as it is.
fn dataset_outcome(counts: &HashMap<String, i64>) -> Option<&'static str> {
    let n = |s: &str| counts.get(s).copied().unwrap_or(0);
    let total: i64 = counts.values().sum();
    if n("complete") == total {
        Some("complete")
    } else if n("complete") + n("errors") == total {
        Some("errors")
    } else if n("suspended") > 0 && n("processing") == 0 {
        Some("suspended")
    } else {
        None
    }
}

/// SPEC §4 completion: jobs by their tasks (complete / errors / suspended / processing),
/// then processing and truncated datasets by their jobs once all their jobs exist (a
/// truncated dataset counts the jobs it has). Only rows whose status changes are written.
/// Answers the number of jobs and datasets changed.
pub fn complete_jobs_and_datasets(tx: &mut dyn Tx) -> Result<DbReply, DbError> {
    let now = now();
    let mut changed = 0u64;
    // Jobs of datasets that can still move: a suspended dataset's tasks may still finish.
    let datasets = tx.query(
        "SELECT dataset_id, status, jobs_submitted, jobs_buffered FROM dataset \
         WHERE status IN ('processing', 'truncated', 'suspended')",
        args![],
    )?;
    let job_sql = job_changes_sql();
    for row in &datasets {
        let dataset_id = row.text(0)?;
        let mut by_status: HashMap<String, Vec<String>> = HashMap::new();
        for change in tx.query(&job_sql, args![dataset_id.as_str()])? {
            by_status
                .entry(change.text(1)?)
                .or_default()
                .push(change.text(0)?);
        }
        for (status, ids) in &by_status {
            set_job_status(tx, ids, status, &now)?;
            changed += ids.len() as u64;
        }
    }
    for row in &datasets {
        let (dataset_id, status) = (row.text(0)?, row.text(1)?);
        let all_jobs_exist = match status.as_str() {
            "processing" => row.int(3)? >= row.int(2)?,
            "truncated" => true,
            _ => false,
        };
        if !all_jobs_exist {
            continue;
        }
        let mut counts = HashMap::new();
        for c in tx.query(
            // The states named so that the covering `job_by_status` index answers.
            "SELECT status, count(*) FROM job WHERE status IN \
             ('processing', 'complete', 'suspended', 'errors') AND dataset_id = ? \
             GROUP BY status",
            args![dataset_id.as_str()],
        )? {
            counts.insert(c.text(0)?, c.int(1)?);
        }
        let Some(outcome) = dataset_outcome(&counts) else {
            continue;
        };
        if outcome == status {
            continue;
        }
        let ended = matches!(outcome, "complete" | "errors");
        tx.exec(
            "UPDATE dataset SET status = ?, status_changed = ?, \
             end_date = CASE WHEN ? THEN ? ELSE end_date END WHERE dataset_id = ?",
            args![
                outcome,
                now.as_str(),
                ended,
                now.as_str(),
                dataset_id.as_str()
            ],
        )?;
        changed += 1;
    }
    Ok(DbReply::Rows(changed))
}

/// Deletes passkeys and sessions past their expiry; answers how many rows went.
pub fn remove_expired(tx: &mut dyn Tx) -> Result<DbReply, DbError> {
    let now = now();
    let passkeys = tx.exec("DELETE FROM passkey WHERE expire < ?", args![now.as_str()])?;
    let sessions = tx.exec("DELETE FROM session WHERE expire < ?", args![now.as_str()])?;
    Ok(DbReply::Rows(passkeys + sessions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_follows_the_spec_formula_and_is_floored_at_zero() {
        // 5/10 − 2/10000 − log10(100)/10 = 0.5 − 0.0002 − 0.2
        let p = dataset_priority(5.0, 2, 100, 1.0);
        assert!((p - 0.2998).abs() < 1e-12, "{p}");
        assert_eq!(dataset_priority(0.0, 1, 10, 1.0), 0.0);
        assert!((dataset_priority(5.0, 2, 100, 0.5) - 0.1499).abs() < 1e-12);
        // No tasks counts as one (log10 of 0 is not a number).
        assert!((dataset_priority(10.0, 0, 0, 1.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn group_factors_multiply_along_the_path() {
        let groups = Groups {
            priority_by_name: [("/sim".to_string(), 0.5), ("/sim/high".to_string(), 3.0)]
                .into_iter()
                .collect(),
            name_by_id: [("g1".to_string(), "/sim/high".to_string())]
                .into_iter()
                .collect(),
        };
        assert_eq!(groups.factor(Some("/sim/high")), 1.5);
        assert_eq!(groups.factor(Some("g1")), 1.5);
        assert_eq!(groups.factor(Some("/sim/low")), 0.5);
        assert_eq!(groups.factor(Some("/other")), 1.0);
        assert_eq!(groups.factor(None), 1.0);
    }

    #[test]
    fn queueing_and_the_oversize_check_agree_on_what_fits_zeros_included() {
        let sizes = [0.0, 1.0, 4.0];
        let shape = |c: f64, g: f64, m: f64, d: f64, t: f64| Resources {
            cpu: c as u32,
            gpu: g as u32,
            memory: m,
            disk: d,
            time: t,
        };
        let mut shapes = Vec::new();
        for c in sizes {
            for g in sizes {
                for m in sizes {
                    for d in [0.0, 4.0] {
                        for t in [0.0, 4.0] {
                            shapes.push(shape(c, g, m, d, t));
                        }
                    }
                }
            }
        }
        for need in &shapes {
            for largest in &shapes {
                let reason = crate::grid::oversize_reason(need, largest);
                assert_eq!(
                    fits_largest(need, largest),
                    reason.is_none(),
                    "{need:?} in {largest:?}: {reason:?}"
                );
            }
        }
    }

    #[test]
    fn a_zero_in_largest_means_unlimited_but_no_gpu_and_a_zero_available_means_none() {
        let need = Resources {
            cpu: 2,
            gpu: 1,
            memory: 4.0,
            disk: 1.0,
            time: 1.0,
        };
        // A grid without gpus never gets a gpu task; with one, the zeros are unlimited.
        assert!(!fits_largest(&need, &Resources::default()));
        assert!(fits_largest(
            &need,
            &Resources {
                gpu: 1,
                ..Resources::default()
            }
        ));
        assert!(fits_largest(
            &Resources { gpu: 0, ..need },
            &Resources::default()
        ));
        assert!(!fits_largest(
            &need,
            &Resources {
                memory: 2.0,
                ..Resources::default()
            }
        ));
        assert!(!fits_available(&need, &Resources::default()));
        assert!(fits_available(
            &need,
            &Resources {
                cpu: 2,
                gpu: 1,
                memory: 4.0,
                disk: 1.0,
                time: 1.0
            }
        ));
    }

    #[test]
    fn needs_read_the_stored_requirements_with_defaults() {
        let n = Needs::parse("t", r#"{"cpu": 2, "memory": 3.5, "os": "RHEL_7_x86_64"}"#);
        assert_eq!(n.resources.cpu, 2);
        assert_eq!(n.resources.gpu, 0);
        assert_eq!(n.resources.memory, 3.5);
        assert_eq!(n.resources.disk, 10.0);
        assert_eq!(n.os.as_deref(), Some("RHEL_7_x86_64"));
        assert_eq!(Needs::parse("t", "not json").resources.cpu, 1);
    }

    /// `fitting_lookups` against the one sorted query it replaces, on rows with ties, many
    /// memory values (more than `MEMORY_SEEKS`), several gpu counts, grids and OSes.
    #[test]
    fn fitting_lookups_reads_the_order_of_the_sorted_query() {
        use crate::sql::SqliteTx;
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open(&dir.path().join("lookup.db")).unwrap();
        let mut x: u64 = 0x1ce_9e0d;
        let mut rnd = |n: u64| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % n
        };
        let oses = [None, Some(""), Some("el7"), Some("el9")];
        for i in 0..800 {
            let grid = if rnd(8) == 0 { "other" } else { "g" };
            conn.execute(
                "INSERT INTO task_lookup (task_id, gridspec, insert_time, req_cpu, req_gpu, \
                 req_memory, req_disk, req_time, req_os) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, \
                 1.0, ?8)",
                crate::rusqlite::params![
                    format!("{:03}-{i}", rnd(1000)),
                    grid,
                    format!("2026-01-01T00:00:0{}", rnd(4)),
                    rnd(4) as i64,
                    rnd(3) as i64,
                    0.5 + 0.5 * rnd(14) as f64,
                    rnd(3) as f64,
                    oses[rnd(4) as usize],
                ],
            )
            .unwrap();
        }
        let mut tx = SqliteTx(&conn);
        let sorted = |tx: &mut SqliteTx, left: &Resources, os: Option<&str>, limit: usize| {
            let mut sql = String::from(
                "SELECT task_id FROM task_lookup WHERE gridspec = ? AND req_gpu <= ? \
                 AND req_cpu <= ? AND req_memory <= ? AND req_disk <= ? AND req_time <= ?",
            );
            let mut params = vec![
                SqlValue::from("g"),
                SqlValue::from(left.gpu),
                SqlValue::from(left.cpu),
                SqlValue::from(left.memory + EPSILON),
                SqlValue::from(left.disk + EPSILON),
                SqlValue::from(left.time + EPSILON),
            ];
            if let Some(os) = os {
                sql.push_str(" AND (req_os IS NULL OR req_os = '' OR req_os = ?)");
                params.push(os.into());
            }
            sql.push_str(
                " ORDER BY req_gpu DESC, req_memory DESC, req_cpu DESC, insert_time, task_id \
                 LIMIT ?",
            );
            params.push(limit.into());
            tx.query(&sql, &params)
                .unwrap()
                .iter()
                .map(|r| r.text(0).unwrap())
                .collect::<Vec<_>>()
        };
        let mut compared = 0;
        for cpu in 0..4 {
            for gpu in 0..3 {
                for memory in [0.0, 0.5, 1.0, 2.5, 4.0, 7.5] {
                    for disk in [0.0, 1.0, 2.0] {
                        for os in [None, Some("el7")] {
                            for limit in [4, 16, 64, 200] {
                                let left = Resources {
                                    cpu,
                                    gpu,
                                    memory,
                                    disk,
                                    time: 1.0,
                                };
                                let got: Vec<String> =
                                    fitting_lookups(&mut tx, "g", &left, os, limit)
                                        .unwrap()
                                        .into_iter()
                                        .map(|(id, _)| id)
                                        .collect();
                                let want = sorted(&mut tx, &left, os, limit);
                                assert_eq!(got, want, "{left:?} {os:?} {limit}");
                                compared += usize::from(!want.is_empty());
                            }
                        }
                    }
                }
            }
        }
        assert!(compared > 500, "{compared}");
    }

    #[test]
    fn a_kept_parsed_config_serves_only_the_same_text() {
        let config =
            |name: &str| json!({"version": 3, "tasks": [{"name": name, "trays": []}]}).to_string();
        let id = "parsed-config-test";
        let first = parsed_config(id, config("first")).unwrap();
        assert_eq!(first.0.task_name(0), "first");
        let again = parsed_config(id, config("first")).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let changed = parsed_config(id, config("second")).unwrap();
        assert_eq!(changed.0.task_name(0), "second");
        assert!(parsed_config(id, "{not json".into()).is_err());
        assert_eq!(
            parsed_config(id, config("second")).unwrap().0.task_name(0),
            "second"
        );
    }

    #[test]
    fn appended_tasks_read_back_as_the_list_and_the_new_ids() {
        let more = vec!["x".to_string(), "y".to_string()];
        for stored in [
            "",
            "a",
            "a,b",
            " a, ,b ",
            ",a",
            "a,",
            "a,,b",
            "a, b",
            "\ta",
            "a,\u{a0}b",
            "é,b",
        ] {
            let mut expected = task_list(stored);
            expected.extend(more.iter().cloned());
            assert_eq!(
                append_tasks(stored, &more),
                expected.join(","),
                "{stored:?}"
            );
            assert_eq!(
                append_tasks(stored, &[]),
                task_list(stored).join(","),
                "{stored:?}"
            );
        }
    }

    #[test]
    fn datasets_end_by_the_rule_over_their_jobs() {
        let counts = |pairs: &[(&str, i64)]| -> HashMap<String, i64> {
            pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect()
        };
        assert_eq!(
            dataset_outcome(&counts(&[("complete", 3)])),
            Some("complete")
        );
        assert_eq!(dataset_outcome(&counts(&[])), Some("complete"));
        assert_eq!(
            dataset_outcome(&counts(&[("complete", 3), ("errors", 1)])),
            Some("errors")
        );
        assert_eq!(
            dataset_outcome(&counts(&[("errors", 1), ("suspended", 1)])),
            Some("suspended")
        );
        assert_eq!(
            dataset_outcome(&counts(&[("processing", 1), ("suspended", 1)])),
            None
        );
    }
}
