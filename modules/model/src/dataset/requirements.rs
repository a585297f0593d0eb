//! A task's requirements evaluated for one job into numbers ([`Requirements`]), as the server
//! does when it creates the job's tasks (SPEC §3: requirement values may be expressions).
//!
//! Missing, `null` or empty values take IceProd's resource defaults. Values are evaluated in
//! the task's scope (steering and task parameters, top-level fields, the job's options).

use serde_json::Value;

use crate::dataset::config::Job;
use crate::dataset::error::DatasetError;
use crate::dataset::expr::{expand, infer_type, Env};
use crate::dataset::limits::requirement_problem;

/// What one task of one job needs of a machine.
#[derive(Clone, Debug, PartialEq)]
pub struct Requirements {
    /// Cores, from `requirements.cpu` (default 1; a fraction is cut off).
    pub cpu: u32,
    /// GPUs, from `requirements.gpu` (default 0; a fraction is cut off).
    pub gpu: u32,
    /// Memory in GB, from `requirements.memory` (default 1).
    pub memory_gb: f64,
    /// Disk in GB, from `requirements.disk` (default 10).
    pub disk_gb: f64,
    /// Run time in hours, from `requirements.time` (default 1).
    pub time_hours: f64,
    /// The OS wanted, in the worker's `OS_ARCH` form; `None` runs anywhere.
    pub os: Option<String>,
    /// A site to run at (`None`: anywhere); the db does not store it yet, so nothing enforces it.
    pub site: Option<String>,
}

impl Default for Requirements {
    /// IceProd's resource defaults (`iceprod.core.resources.Resources.defaults`).
    fn default() -> Self {
        Requirements {
            cpu: 1,
            gpu: 0,
            memory_gb: 1.0,
            disk_gb: 10.0,
            time_hours: 1.0,
            os: None,
            site: None,
        }
    }
}

impl Requirements {
    /// Evaluates the requirements of task `task_index` of `job`. `env` is the job's
    /// environment (see [`Env::new`], with the job's options set); the task's parameters are
    /// added here. Errors name the requirement (`tasks[1].requirements.memory`).
    pub fn for_task(job: &Job, task_index: usize, env: &Env) -> Result<Requirements, DatasetError> {
        let task = job.tasks.get(task_index).ok_or_else(|| {
            DatasetError::invalid(
                "tasks",
                format!(
                    "there is no task {task_index} (the config has {})",
                    job.tasks.len()
                ),
            )
        })?;
        let env = env.clone().with_scope(&task.parameters);
        let reqs = &task.requirements;
        let path = |key: &str| format!("tasks[{task_index}].requirements.{key}");
        let mut out = Requirements::default();
        if let Some(n) = number("cpu", reqs.cpu.as_ref(), &env, &path("cpu"))? {
            out.cpu = count(n, &path("cpu"))?;
        }
        if let Some(n) = number("gpu", reqs.gpu.as_ref(), &env, &path("gpu"))? {
            out.gpu = count(n, &path("gpu"))?;
        }
        if let Some(n) = number("memory", reqs.memory.as_ref(), &env, &path("memory"))? {
            out.memory_gb = n;
        }
        if let Some(n) = number("disk", reqs.disk.as_ref(), &env, &path("disk"))? {
            out.disk_gb = n;
        }
        if let Some(n) = number("time", reqs.time.as_ref(), &env, &path("time"))? {
            out.time_hours = n;
        }
        out.os = text(reqs.os.as_ref(), &env, &path("os"))?;
        out.site = text(reqs.site.as_ref(), &env, &path("site"))?;
        Ok(out)
    }
}

/// Requirement `key` as a number from 0 up to its limit ([`requirement_problem`]); `None` when
/// it is absent or empty.
fn number(
    key: &str,
    value: Option<&Value>,
    env: &Env,
    path: &str,
) -> Result<Option<f64>, DatasetError> {
    let n = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => {
            let out = expand(s, env).map_err(|error| DatasetError::Expression {
                path: path.to_string(),
                error,
            })?;
            let out = out.trim();
            if out.is_empty() {
                return Ok(None);
            }
            match infer_type(out) {
                Value::Number(n) => n.as_f64(),
                _ => {
                    return Err(DatasetError::invalid(
                        path,
                        format!("`{s}` gives `{out}`, which is not a number"),
                    ))
                }
            }
        }
        Some(other) => {
            return Err(DatasetError::invalid(
                path,
                format!("expected a number or an expression, found `{other}`"),
            ))
        }
    };
    match n {
        Some(n) => match requirement_problem(key, n) {
            None => Ok(Some(n)),
            Some(why) => Err(DatasetError::invalid(path, why)),
        },
        None => Err(DatasetError::invalid(path, "is not a finite number")),
    }
}

/// A whole count (cpus, gpus). A fraction is cut off, as IceProd's `int()` does.
fn count(n: f64, path: &str) -> Result<u32, DatasetError> {
    if n >= f64::from(u32::MAX) {
        return Err(DatasetError::invalid(path, format!("{n} is too many")));
    }
    // In range by the check above and the caller's check that n is finite and >= 0.
    Ok(n.trunc() as u32)
}

/// A text requirement (`os`, `site`); `None` when absent or empty.
fn text(value: Option<&Value>, env: &Env, path: &str) -> Result<Option<String>, DatasetError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let out = expand(s, env).map_err(|error| DatasetError::Expression {
                path: path.to_string(),
                error,
            })?;
            Ok((!out.is_empty()).then_some(out))
        }
        Some(other) => Err(DatasetError::invalid(
            path,
            format!("expected a string, found `{other}`"),
        )),
    }
}
