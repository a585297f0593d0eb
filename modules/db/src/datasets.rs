//! Datasets and their jobs: submission (config, task_rels, dependencies resolved, also to
//! other datasets) and buffering (whole jobs with their tasks, dependencies turned into task
//! ids, requirements evaluated per job). Each runs inside the writer's transaction.

use iceprod_runtime::dataset::{self, Dependency, Env, Job, Requirements};
use iceprod_runtime::protocol::MAX_JOBS_PER_DATASET;
use iceprod_runtime::{DatasetSubmission, DbReply};
use serde_json::{json, Value};

use crate::args;
use crate::error::DbError;
use crate::ops::{new_global_id, next_local, now, OpRules};
use crate::sql::Tx;

pub fn submit_dataset(
    tx: &mut dyn Tx,
    rules: OpRules,
    sub: &DatasetSubmission,
) -> Result<DbReply, DbError> {
    if sub.njobs == 0 || sub.njobs > MAX_JOBS_PER_DATASET {
        return Err(DbError::Refused(format!(
            "njobs must be between 1 and {MAX_JOBS_PER_DATASET}"
        )));
    }
    let validated = dataset::parse_and_validate(&sub.config)
        .map_err(|errors| DbError::Refused(format!("invalid dataset config: {errors}")))?;
    let job = validated.job;
    let number = next_local(tx, "dataset")?;
    // Evaluated now, for a sample of its jobs, so that what would fail when its jobs are
    // created is refused while the submitter is still there.
    job.check_jobs(sub.njobs, u64::try_from(number).unwrap_or(0))
        .map_err(|errors| DbError::Refused(format!("invalid dataset config: {errors}")))?;
    let dataset_id = iceprod_runtime::ids::global_id(rules.site_number, number);
    let ntasks = job.tasks.len();

    // task_rel ids first, so that dependencies inside the dataset can name them.
    let mut rel_ids = Vec::with_capacity(ntasks);
    for _ in 0..ntasks {
        rel_ids.push(new_global_id(tx, rules, "task_rel")?);
    }
    for (index, task) in job.tasks.iter().enumerate() {
        let mut depends = Vec::new();
        for (d, dep) in task.depends.iter().enumerate() {
            let path = format!("tasks[{index}].depends[{d}]");
            depends.push(resolve_dependency(tx, &job, dep, &rel_ids, &path)?);
        }
        tx.exec(
            "INSERT INTO task_rel (task_rel_id, dataset_id, task_index, name, depends, \
             requirements) VALUES (?, ?, ?, ?, ?, ?)",
            args![
                rel_ids[index].as_str(),
                dataset_id.as_str(),
                index,
                job.task_name(index),
                Value::from(depends).to_string(),
                serde_json::to_string(&task.requirements).unwrap_or_else(|_| "{}".into())
            ],
        )?;
    }
    let name = format!("dataset {number}");
    let now = now();
    tx.exec(
        "INSERT INTO dataset (dataset_id, dataset_num, name, description, gridspec, status, \
         status_changed, username, groups_id, jobs_submitted, tasks_submitted, debug, \
         stat_keys, start_date) VALUES (?, ?, ?, ?, ?, 'processing', ?, ?, ?, ?, ?, ?, ?, ?)",
        args![
            dataset_id.as_str(),
            i64::try_from(number).unwrap_or(i64::MAX),
            name,
            sub.description.as_str(),
            sub.gridspec.as_str(),
            now.as_str(),
            sub.username.as_str(),
            sub.group.clone(),
            sub.njobs,
            u64::from(sub.njobs).saturating_mul(ntasks as u64) as i64,
            sub.debug,
            Value::from(sub.stat_keys.clone()).to_string(),
            now.as_str()
        ],
    )?;
    tx.exec(
        "INSERT INTO config (dataset_id, config_data) VALUES (?, ?)",
        args![dataset_id.as_str(), sub.config.as_str()],
    )?;
    Ok(DbReply::Dataset {
        dataset_id,
        dataset_num: u64::try_from(number).unwrap_or(u64::MAX),
    })
}

/// A dependency as stored in `task_rel.depends`: the task_rel it names.
fn resolve_dependency(
    tx: &mut dyn Tx,
    job: &Job,
    dep: &Dependency,
    rel_ids: &[String],
    path: &str,
) -> Result<Value, DbError> {
    match job.resolve_dependency(dep) {
        Ok(dataset::ResolvedDependency::Local(i)) => rel_ids
            .get(i)
            .map(|id| json!(id))
            .ok_or_else(|| DbError::Refused(format!("{path}: no task {i}"))),
        Ok(dataset::ResolvedDependency::CrossDataset { dataset, task }) => {
            // The other dataset by id or number, its task by name or else by index; numbers
            // are compared as numbers so no dialect-specific cast is needed.
            let dataset_id = match dataset.parse::<i64>() {
                Ok(num) => tx.query_opt(
                    "SELECT dataset_id FROM dataset WHERE dataset_num = ?",
                    args![num],
                )?,
                Err(_) => tx.query_opt(
                    "SELECT dataset_id FROM dataset WHERE dataset_id = ?",
                    args![dataset.as_str()],
                )?,
            }
            .map(|row| row.text(0))
            .transpose()?;
            let missing =
                || DbError::Refused(format!("{path}: no task {task} in dataset {dataset}"));
            let dataset_id = dataset_id.ok_or_else(missing)?;
            let mut rel = tx.query_opt(
                "SELECT task_rel_id FROM task_rel WHERE dataset_id = ? AND name = ?",
                args![dataset_id.as_str(), task.as_str()],
            )?;
            if rel.is_none() {
                if let Ok(index) = task.parse::<i64>() {
                    rel = tx.query_opt(
                        "SELECT task_rel_id FROM task_rel WHERE dataset_id = ? AND task_index = ?",
                        args![dataset_id.as_str(), index],
                    )?;
                }
            }
            Ok(json!(rel.ok_or_else(missing)?.text(0)?))
        }
        Err(why) => Err(DbError::Refused(format!("{path}: {why}"))),
    }
}

/// Creates up to `max_jobs` jobs across processing datasets, oldest dataset first. A dataset
/// whose jobs cannot be made (its stored config does not read, or an expression fails for
/// this job) is suspended with the reason in `status_reason`, and the others go on: one
/// dataset never stops the queue for the rest.
pub fn buffer_jobs(tx: &mut dyn Tx, rules: OpRules, max_jobs: u32) -> Result<DbReply, DbError> {
    let datasets = tx.query(
        "SELECT dataset_id, dataset_num, jobs_submitted, jobs_buffered FROM dataset \
         WHERE status = 'processing' AND jobs_buffered < jobs_submitted \
         ORDER BY dataset_num",
        args![],
    )?;
    let (mut jobs, mut tasks) = (0u64, 0u64);
    for row in datasets {
        if jobs >= u64::from(max_jobs) {
            break;
        }
        let dataset_id = row.text(0)?;
        let (num, submitted, buffered) = (row.int(1)?, row.int(2)?, row.int(3)?);
        let config = tx.query_opt(
            "SELECT config_data FROM config WHERE dataset_id = ?",
            args![dataset_id.as_str()],
        )?;
        let Some(config) = config else {
            suspend_broken(tx, &dataset_id, num, "the dataset has no stored config")?;
            continue;
        };
        let job = match Job::from_json(&config.text(0)?) {
            Ok(job) => job,
            Err(e) => {
                suspend_broken(tx, &dataset_id, num, &format!("the stored config: {e}"))?;
                continue;
            }
        };
        let rels = tx.query(
            "SELECT task_rel_id, depends FROM task_rel WHERE dataset_id = ? ORDER BY task_index",
            args![dataset_id.as_str()],
        )?;
        let mut index = buffered;
        while index < submitted && jobs < u64::from(max_jobs) {
            let made = buffer_one_job(tx, rules, &dataset_id, num, submitted, &job, &rels, index)?;
            match made {
                Made::Job { tasks: created } => {
                    jobs += 1;
                    tasks += created;
                    index += 1;
                }
                // A dependency on another dataset's job that does not exist yet: try later.
                Made::Waiting => break,
                Made::Broken(why) => {
                    suspend_broken(tx, &dataset_id, num, &why)?;
                    break;
                }
            }
        }
        tx.exec(
            "UPDATE dataset SET jobs_buffered = ? WHERE dataset_id = ?",
            args![index, dataset_id.as_str()],
        )?;
    }
    Ok(DbReply::Buffered { jobs, tasks })
}

/// What [`buffer_one_job`] did.
enum Made {
    /// The job was created with this many tasks.
    Job { tasks: u64 },
    /// A dependency on another dataset cannot be resolved yet; nothing was created.
    Waiting,
    /// The job cannot be created from this config (the reason, naming the config path);
    /// nothing was created.
    Broken(String),
}

/// Suspends a dataset whose jobs cannot be made, keeping why for the people who look at it.
fn suspend_broken(tx: &mut dyn Tx, dataset_id: &str, num: i64, why: &str) -> Result<(), DbError> {
    log::warn!("dataset {num} suspended: its jobs cannot be created: {why}");
    tx.exec(
        "UPDATE dataset SET status = 'suspended', status_changed = ?, status_reason = ? \
         WHERE dataset_id = ?",
        args![now(), format!("jobs cannot be created: {why}"), dataset_id],
    )?;
    Ok(())
}

/// A task's dependency while its job is being created.
enum Dep {
    /// The task at this index in the same job (its id is not minted yet).
    SameJob(usize),
    /// A task of another dataset's job with the same index.
    Other(String),
}

/// Creates job `index` of a dataset with its tasks, unless a dependency on another dataset
/// cannot be resolved yet or a requirement cannot be evaluated for this job.
#[allow(clippy::too_many_arguments)]
fn buffer_one_job(
    tx: &mut dyn Tx,
    rules: OpRules,
    dataset_id: &str,
    dataset_num: i64,
    jobs_submitted: i64,
    job: &Job,
    rels: &[crate::sql::Row],
    index: i64,
) -> Result<Made, DbError> {
    let rel_ids: Vec<String> = rels.iter().map(|r| r.text(0)).collect::<Result<_, _>>()?;
    // Dependencies on other datasets first: if one is not there yet, nothing is created
    // (and no ids are spent).
    let mut depends: Vec<Vec<Dep>> = Vec::with_capacity(rels.len());
    for rel in rels {
        let names: Vec<String> = serde_json::from_str(&rel.text(1)?).unwrap_or_default();
        let mut deps = Vec::with_capacity(names.len());
        for rel_id in names {
            if let Some(pos) = rel_ids.iter().position(|r| *r == rel_id) {
                deps.push(Dep::SameJob(pos));
                continue;
            }
            let other = tx.query_opt(
                "SELECT task.task_id FROM task JOIN job ON job.job_id = task.job_id \
                 WHERE task.task_rel_id = ? AND job.job_index = ?",
                args![rel_id.as_str(), index],
            )?;
            match other {
                Some(row) => deps.push(Dep::Other(row.text(0)?)),
                None => return Ok(Made::Waiting),
            }
        }
        depends.push(deps);
    }
    let mut task_ids = Vec::with_capacity(rels.len());
    for _ in rels {
        task_ids.push(new_global_id(tx, rules, "task")?);
    }
    let depends: Vec<Vec<String>> = depends
        .into_iter()
        .map(|deps| {
            deps.into_iter()
                .map(|d| match d {
                    Dep::SameJob(pos) => task_ids[pos].clone(),
                    Dep::Other(task_id) => task_id,
                })
                .collect()
        })
        .collect();
    // Every task's requirements first, so a config that fails for this job creates nothing.
    let mut requirements = Vec::with_capacity(task_ids.len());
    for (t, task_id) in task_ids.iter().enumerate() {
        let env = Env::for_task(job, t)
            .with_option("job", index)
            .with_option("dataset", dataset_num)
            .with_option("jobs_submitted", jobs_submitted)
            .with_option("task_id", task_id.as_str())
            .with_seed(index as u64);
        match Requirements::for_task(job, t, &env) {
            Ok(reqs) => requirements.push(json!({
                "cpu": reqs.cpu, "gpu": reqs.gpu, "memory": reqs.memory_gb,
                "disk": reqs.disk_gb, "time": reqs.time_hours, "os": reqs.os,
            })),
            Err(e) => return Ok(Made::Broken(format!("job {index}: {e}"))),
        }
    }
    let job_id = new_global_id(tx, rules, "job")?;
    let now = now();
    tx.exec(
        "INSERT INTO job (job_id, dataset_id, job_index, status, status_changed) \
         VALUES (?, ?, ?, 'processing', ?)",
        args![job_id.as_str(), dataset_id, index, now.as_str()],
    )?;
    for (t, (task_id, reqs)) in task_ids.iter().zip(requirements).enumerate() {
        tx.exec(
            "INSERT INTO task (task_id, job_id, dataset_id, task_rel_id, task_index, status, \
             status_changed, requirements, depends) VALUES (?, ?, ?, ?, ?, 'idle', ?, ?, ?)",
            args![
                task_id.as_str(),
                job_id.as_str(),
                dataset_id,
                rel_ids[t].as_str(),
                t,
                now.as_str(),
                reqs.to_string(),
                Value::from(depends[t].clone()).to_string()
            ],
        )?;
    }
    Ok(Made::Job {
        tasks: task_ids.len() as u64,
    })
}

/// Replaces a dataset's config for the jobs still to be buffered. Its tasks must keep their
/// names, order and dependencies (the stored task_rels and created tasks depend on them);
/// requirements may change and apply to jobs created from now on.
pub fn update_config(tx: &mut dyn Tx, dataset_id: &str, config: &str) -> Result<(), DbError> {
    let validated = dataset::parse_and_validate(config)
        .map_err(|errors| DbError::Refused(format!("invalid dataset config: {errors}")))?;
    let job = validated.job;
    let old_text = tx
        .query_opt(
            "SELECT config_data FROM config WHERE dataset_id = ?",
            args![dataset_id],
        )?
        .ok_or_else(|| DbError::NotFound {
            what: "dataset",
            id: dataset_id.to_string(),
        })?
        .text(0)?;
    let old = Job::from_json(&old_text)
        .map_err(|e| DbError::Schema(format!("dataset {dataset_id}: stored config: {e}")))?;
    let counts = tx
        .query_opt(
            "SELECT dataset_num, jobs_submitted FROM dataset WHERE dataset_id = ?",
            args![dataset_id],
        )?
        .ok_or_else(|| DbError::NotFound {
            what: "dataset",
            id: dataset_id.to_string(),
        })?;
    let (number, njobs) = (counts.int(0)?, counts.int(1)?);
    job.check_jobs(
        u32::try_from(njobs).unwrap_or(u32::MAX),
        u64::try_from(number).unwrap_or(0),
    )
    .map_err(|errors| DbError::Refused(format!("invalid dataset config: {errors}")))?;
    if old.tasks.len() != job.tasks.len() {
        return Err(DbError::Refused(format!(
            "tasks: the dataset has {} tasks; a new config must keep them",
            old.tasks.len()
        )));
    }
    for (i, (before, after)) in old.tasks.iter().zip(&job.tasks).enumerate() {
        if old.task_name(i) != job.task_name(i) {
            return Err(DbError::Refused(format!(
                "tasks[{i}].name: must stay `{}`",
                old.task_name(i)
            )));
        }
        let deps = |j: &Job, t: &dataset::Task| {
            t.depends
                .iter()
                .map(|d| j.resolve_dependency(d))
                .collect::<Vec<_>>()
        };
        if deps(&old, before) != deps(&job, after) {
            return Err(DbError::Refused(format!(
                "tasks[{i}].depends: dependencies cannot change"
            )));
        }
        tx.exec(
            "UPDATE task_rel SET requirements = ? WHERE dataset_id = ? AND task_index = ?",
            args![
                serde_json::to_string(&after.requirements).unwrap_or_else(|_| "{}".into()),
                dataset_id,
                i
            ],
        )?;
    }
    tx.exec(
        "UPDATE config SET config_data = ? WHERE dataset_id = ?",
        args![config, dataset_id],
    )?;
    Ok(())
}
