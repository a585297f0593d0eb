//! A config evaluated before it is accepted ([`Job::check_jobs`]): every requirement and every
//! parameter of every scope, for a sample of the jobs the dataset will have (the first, the
//! last and one picked at random), in the environment the server and the worker will use. A
//! requirement that cannot be evaluated would otherwise be found only when the job is created,
//! by then the submitter is gone and the queue has to deal with it.
//!
//! The whole check runs in one time budget ([`CHECK_TIME`]) on top of the evaluator's own
//! limits, so a hostile config costs the server a bounded amount of work.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::dataset::config::{Job, Parameters};
use crate::dataset::error::{DatasetError, DatasetErrors, ExprError};
use crate::dataset::expr::{expand_value, may_hold_calls, Env, EnvironLookup};
use crate::dataset::requirements::Requirements;

/// Longest the evaluation of one config's sample may take in all. It runs inside the db
/// writer's transaction (it needs the dataset number), so it is kept short: a real config
/// takes milliseconds.
pub const CHECK_TIME: Duration = Duration::from_secs(2);
/// Most errors reported for one config: enough to fix several at once, few enough to read.
const MAX_ERRORS: usize = 20;
/// What `$environ(x)` reads while checking parameters: the worker's environment is not known
/// at submission, and a number works both as text and in `$eval`.
const ENVIRON_PLACEHOLDER: &str = "1";

/// The job indexes checked for a dataset of `njobs` jobs: the first, the last, and one in
/// between picked at random (each once; none for 0 jobs).
pub fn sample_jobs(njobs: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(3);
    if njobs == 0 {
        return out;
    }
    out.push(0);
    if njobs > 2 {
        let random = RandomState::new().hash_one(Instant::now());
        out.push(1 + (random % u64::from(njobs - 2)) as u32);
    }
    if njobs > 1 {
        out.push(njobs - 1);
    }
    out
}

impl Job {
    /// Evaluates every requirement and parameter of this config for job 0, job `njobs - 1`
    /// and a random job in between, as dataset `dataset_num`. Every error names its config
    /// path (`tasks[0].requirements.memory`) and the job it was evaluated for.
    pub fn check_jobs(&self, njobs: u32, dataset_num: u64) -> Result<(), DatasetErrors> {
        self.check_job_indexes(&sample_jobs(njobs), njobs, dataset_num)
    }

    /// [`Job::check_jobs`] for the given job indexes.
    pub fn check_job_indexes(
        &self,
        indexes: &[u32],
        njobs: u32,
        dataset_num: u64,
    ) -> Result<(), DatasetErrors> {
        let mut check = Check {
            job: self,
            deadline: Instant::now() + CHECK_TIME,
            errors: Vec::new(),
            out_of_time: false,
        };
        for &index in indexes {
            check.one_job(index, njobs, dataset_num);
        }
        if check.errors.is_empty() {
            Ok(())
        } else {
            Err(DatasetErrors(check.errors))
        }
    }
}

/// The job being checked, and how to build its environments.
struct Sample {
    index: u32,
    njobs: u32,
    dataset_num: u64,
    deadline: Instant,
}

impl Sample {
    /// The options buffering sets when it evaluates requirements (`buffer_one_job` in the db).
    fn server<'a>(&self, env: Env<'a>) -> Env<'a> {
        env.with_option("job", self.index)
            .with_option("dataset", self.dataset_num)
            .with_option("jobs_submitted", self.njobs)
            .with_option("task_id", "")
            .with_seed(u64::from(self.index))
            .with_deadline(self.deadline)
    }

    /// Those and the options a worker's task config adds, with placeholders where the value
    /// is only known later.
    fn worker<'a>(&self, env: Env<'a>, environ: &'a EnvironLookup<'a>, task: &str) -> Env<'a> {
        self.server(env)
            .with_environ(environ)
            .with_option("task", task)
            .with_option("dataset_id", "")
            .with_option("debug", false)
            .with_option("gridspec", "")
            .with_option("upload", "logging")
            .with_option("stillrunninginterval", 60)
            .with_option("iter", 0)
            .with_option(
                "resources",
                json!({"cpu": 1, "gpu": 0, "memory": 1.0, "disk": 10.0, "time": 1.0}),
            )
    }
}

struct Check<'j> {
    job: &'j Job,
    deadline: Instant,
    errors: Vec<DatasetError>,
    out_of_time: bool,
}

impl Check<'_> {
    /// True while more may be checked: time is left and the error list is not full.
    fn going(&mut self, path: &str) -> bool {
        if self.out_of_time || self.errors.len() >= MAX_ERRORS {
            return false;
        }
        if Instant::now() >= self.deadline {
            self.out_of_time = true;
            self.errors.push(DatasetError::Expression {
                path: path.to_string(),
                error: ExprError::TooSlow,
            });
            return false;
        }
        true
    }

    /// Records `error` unless the same path already failed (for another job).
    fn push(&mut self, index: u32, error: DatasetError) {
        if matches!(
            &error,
            DatasetError::Expression {
                error: ExprError::TooSlow,
                ..
            }
        ) {
            self.out_of_time = true;
        }
        if self.errors.iter().any(|e| e.path() == error.path()) {
            return;
        }
        self.errors.push(DatasetError::InJob {
            job: index,
            error: Box::new(error),
        });
    }

    fn one_job(&mut self, index: u32, njobs: u32, dataset_num: u64) {
        let job = self.job;
        let at = Sample {
            index,
            njobs,
            dataset_num,
            deadline: self.deadline,
        };
        for t in 0..job.tasks.len() {
            let path = format!("tasks[{t}].requirements");
            if !self.going(&path) {
                return;
            }
            if let Err(e) = Requirements::for_task(job, t, &at.server(Env::for_task(job, t))) {
                self.push(index, e);
            }
        }
        let environ = |_: &str| Some(ENVIRON_PLACEHOLDER.to_string());
        let steering = at.worker(Env::new(job), &environ, "");
        self.parameters(index, &job.steering().parameters, "steering", &steering);
        for (t, task) in job.tasks.iter().enumerate() {
            let name = job.task_name(t);
            let task_env = at
                .worker(Env::new(job), &environ, &name)
                .with_scope(&task.parameters);
            let task_path = format!("tasks[{t}]");
            self.parameters(index, &task.parameters, &task_path, &task_env);
            for (k, tray) in task.trays.iter().enumerate() {
                let tray_env = task_env.clone().with_scope(&tray.parameters);
                let tray_path = format!("{task_path}.trays[{k}]");
                self.parameters(index, &tray.parameters, &tray_path, &tray_env);
                for (m, module) in tray.modules.iter().enumerate() {
                    let module_env = tray_env.clone().with_scope(&module.parameters);
                    let module_path = format!("{tray_path}.modules[{m}]");
                    self.parameters(index, &module.parameters, &module_path, &module_env);
                }
            }
        }
    }

    /// Evaluates each parameter of one scope in that scope's environment.
    fn parameters(&mut self, index: u32, parameters: &Parameters, scope: &str, env: &Env) {
        for (name, value) in parameters {
            let path = format!("{scope}.parameters.{name}");
            if !self.going(&path) {
                return;
            }
            if !holds_expression(value) {
                continue;
            }
            if let Err(error) = expand_value(value, env) {
                let (path, error) = match error {
                    ExprError::InValue { path: inner, error } if !inner.is_empty() => {
                        (format!("{path}.{inner}"), *error)
                    }
                    ExprError::InValue { error, .. } => (path, *error),
                    other => (path, other),
                };
                self.push(index, DatasetError::Expression { path, error });
            }
        }
    }
}

/// True if a string in `value` (a key too) could hold an expression or an escape.
fn holds_expression(value: &Value) -> bool {
    match value {
        Value::String(s) => may_hold_calls(s),
        Value::Array(items) => items.iter().any(holds_expression),
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| may_hold_calls(k) || holds_expression(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_the_first_the_last_and_one_in_between() {
        assert!(sample_jobs(0).is_empty());
        assert_eq!(sample_jobs(1), [0]);
        assert_eq!(sample_jobs(2), [0, 1]);
        for _ in 0..100 {
            let s = sample_jobs(10);
            assert_eq!((s.len(), s[0], s[2]), (3, 0, 9));
            assert!((1..9).contains(&s[1]), "{s:?}");
        }
    }
}
