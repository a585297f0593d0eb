//! `iceprod task`: the worker side, run by the batch system on a worker node (DESIGN §4 step 4).
//! In direct mode it runs the one task whose config it is given (`--cfgfile task.cfg`, or
//! `--task-id` to fetch it with `get_task_config`); as a pilot (`--pilot`) it pulls tasks with
//! `new_task` while its resources last and runs them side by side ([`pilot`]).
//!
//! One task, start to end: `set_processing` (direct mode), inputs staged ([`stage`]), every
//! tray and module run ([`run`]) while a heartbeat thread calls `stillrunning`
//! ([`heartbeat`]), outputs staged, logs uploaded (stdlog, stderr, stdout; [`report`]), then
//! `finish_task` or `task_error` with a one-line summary. Calls are retried while the server
//! cannot answer, never when it refused ([`rpc`]). A `stillrunning` of false or a SIGTERM
//! kills the running module's process group ([`stop`]).
//!
//! Threads and blocking I/O only; nothing heavy happens before the first module starts.

mod cli;
mod heartbeat;
mod pilot;
mod report;
mod rpc;
mod run;
mod stage;
mod stdlog;
mod stop;

use std::fs::File;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iceprod_runtime::dataset::{Env, Job, Movement};
use serde_json::{json, Value};

use cli::Settings;
pub use cli::TaskArgs;
use heartbeat::Heartbeat;
use report::{Usage, LOG_NAMES, LOG_TAIL};
use rpc::TaskRpc;
use run::{Failure, Runner};
use stage::Transfer;
use stdlog::Stdlog;
use stop::{Running, StopReason, TaskControl};

/// Per-request timeout of every HTTP call.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// The heartbeat interval when neither the config nor the flags give one.
const DEFAULT_STILLRUNNING: Duration = Duration::from_secs(60);
/// How long the reports after a signal may take: the batch system kills for good soon.
const AFTER_SIGNAL: Duration = Duration::from_secs(10);

/// How one task ended, as far as the server knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `finish_task` was acknowledged.
    Finished,
    /// `task_error` was acknowledged.
    Failed,
    /// The server said the task is no longer ours; nothing more was reported.
    Stopped,
    /// The server was not told (it refused, or could not be reached in time).
    NotReported,
}

/// What every task of this process shares.
pub struct Worker {
    settings: Settings,
    agent: ureq::Agent,
    rpc: Arc<TaskRpc>,
    running: Arc<Running>,
}

/// Runs `iceprod task` with `args`; the process exit code.
pub fn main(args: TaskArgs) -> anyhow::Result<ExitCode> {
    let settings = args.settings().map_err(anyhow::Error::msg)?;
    let agent = crate::client::http_agent(HTTP_TIMEOUT, settings.ca_pem.as_deref())
        .map_err(anyhow::Error::msg)?;
    let client = crate::client::RpcClient::with_agent(&settings.url, agent.clone());
    let rpc = Arc::new(TaskRpc::new(client, &settings.passkey, settings.retry_for));
    let running = Arc::new(Running::default());
    stop::watch_signals(running.clone())?;
    let worker = Arc::new(Worker {
        settings,
        agent,
        rpc,
        running,
    });
    let folder = std::env::current_dir()?;
    if args.pilot {
        return pilot::run(&args, worker, &folder);
    }
    let config = match (&args.cfgfile, &args.task_id) {
        (Some(file), _) => read_config(file)?,
        (None, Some(task_id)) => worker
            .rpc
            .call("get_task_config", json!({"task_id": task_id}))
            .map_err(|e| anyhow::anyhow!("get_task_config {task_id}: {e}"))?,
        (None, None) => anyhow::bail!("pass --cfgfile FILE or --task-id ID"),
    };
    let control = worker.running.add();
    let outcome = worker.run_task(&config, &folder, true, control);
    Ok(match outcome {
        Outcome::Finished => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// A config file as JSON.
fn read_config(file: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", file.display()))
}

/// The index of the task `config` is for: the task named by `options.task`, else the only one.
fn task_index(job: &Job) -> Result<usize, String> {
    match job.options.get("task") {
        Some(Value::String(name)) => job
            .tasks
            .iter()
            .position(|t| &t.name == name)
            .ok_or_else(|| format!("the config has no task named {name}")),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|i| i as usize)
            .filter(|i| *i < job.tasks.len())
            .ok_or_else(|| format!("the config has no task {n}")),
        _ if job.tasks.len() == 1 => Ok(0),
        _ => Err("options.task does not say which task to run".into()),
    }
}

/// The data entries of task `index` that move as `wanted` says, expanded where they are
/// written (steering, task, tray or module scope). Steering data is every task's, as in
/// IceProd.
fn data_transfers(
    job: &Job,
    index: usize,
    wanted: fn(&Movement) -> bool,
) -> Result<Vec<Transfer>, String> {
    let task = &job.tasks[index];
    let environ = |k: &str| std::env::var(k).ok();
    let steering = Env::new(job)
        .with_environ(&environ)
        .with_option("iter", 0)
        .with_seed(run::job_seed(job));
    let mut out = stage::transfers(&job.steering().data, &steering, wanted)?;
    let base = steering.with_scope(&task.parameters);
    out.extend(stage::transfers(&task.data, &base, wanted)?);
    for tray in &task.trays {
        let env = base.clone().with_scope(&tray.parameters);
        out.extend(stage::transfers(&tray.data, &env, wanted)?);
        for module in &tray.modules {
            let env = env.clone().with_scope(&module.parameters);
            out.extend(stage::transfers(&module.data, &env, wanted)?);
        }
    }
    Ok(out)
}

impl Worker {
    /// Runs the task of `config` in `folder` and reports how it ended. `direct`: the task is
    /// still `queued` and must be set processing first (a pilot's tasks come processing).
    pub fn run_task(
        &self,
        config: &Value,
        folder: &Path,
        direct: bool,
        control: Arc<TaskControl>,
    ) -> Outcome {
        let start = Instant::now();
        let task_id = match &config["options"]["task_id"] {
            Value::String(id) if !id.is_empty() => id.clone(),
            _ => {
                eprintln!("iceprod task: the config has no options.task_id; nothing to run");
                return Outcome::NotReported;
            }
        };
        let outcome = self.run_in(config, folder, direct, &task_id, start, &control);
        self.running.remove(&control);
        outcome
    }

    fn run_in(
        &self,
        config: &Value,
        folder: &Path,
        direct: bool,
        task_id: &str,
        start: Instant,
        control: &Arc<TaskControl>,
    ) -> Outcome {
        // Fresh logs: a folder used before holds an earlier try's.
        let open = |name: &str| File::create(folder.join(name));
        let _ = open("stdlog");
        let log = Arc::new(Stdlog::open(&folder.join("stdlog"), task_id));
        // Fails the task before any module ran.
        let fail = |why: String| {
            let failure = Err(Failure::Module(why));
            self.end(task_id, folder, &log, failure, Usage::default(), start)
        };
        let (stdout, stderr) = match (open("stdout"), open("stderr")) {
            (Ok(o), Ok(e)) => (o, e),
            (Err(e), _) | (_, Err(e)) => {
                let why = format!("cannot create the log files in {}: {e}", folder.display());
                return fail(why);
            }
        };
        log.info(&format!(
            "iceprod {} running task {task_id} in {}",
            env!("CARGO_PKG_VERSION"),
            folder.display()
        ));
        let job = match Job::from_value(config) {
            Ok(job) => job,
            Err(errors) => {
                let why = format!(
                    "the task config is not valid: {}",
                    errors
                        .iter()
                        .next()
                        .map(|e| e.to_string())
                        .unwrap_or_default()
                );
                return fail(why);
            }
        };
        let index = match task_index(&job) {
            Ok(i) => i,
            Err(why) => return fail(why),
        };
        if direct {
            if let Err(e) = self.rpc.call("set_processing", json!({"task_id": task_id})) {
                log.error(&format!("set_processing: {e}; not running the task"));
                return Outcome::NotReported;
            }
        }
        let interval = self
            .settings
            .stillrunning_interval
            .or_else(|| {
                job.options
                    .get("stillrunninginterval")
                    .and_then(Value::as_f64)
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .filter(|d| !d.is_zero())
            })
            .unwrap_or(DEFAULT_STILLRUNNING);
        let heartbeat = Heartbeat::start(
            self.rpc.clone(),
            task_id,
            interval,
            control.clone(),
            log.clone(),
        );
        let mut usage = Usage::default();
        let mut result = self.stage(&job, index, folder, &log, false, control);
        if result.is_ok() {
            let runner = Runner {
                folder,
                job: &job,
                task_index: index,
                log: &log,
                agent: &self.agent,
                control,
                max_output: self.settings.max_output,
                stdout: &stdout,
                stderr: &stderr,
            };
            let (used, ran) = runner.run();
            usage = used;
            result = ran;
        }
        heartbeat.stop();
        if result.is_ok() {
            result = self.stage(&job, index, folder, &log, true, control);
        }
        if let (Ok(()), Some(reason)) = (&result, control.stopped()) {
            result = Err(Failure::Stopped(reason));
        }
        self.end(task_id, folder, &log, result, usage, start)
    }

    /// Stages the task's data: downloads its inputs, or with `output` uploads its outputs.
    fn stage(
        &self,
        job: &Job,
        index: usize,
        folder: &Path,
        log: &Stdlog,
        output: bool,
        control: &TaskControl,
    ) -> Result<(), Failure> {
        let way = if output { "output" } else { "input" };
        let fail = |why: String| Failure::Module(format!("{way} {why}"));
        let wanted = if output {
            Movement::is_output
        } else {
            Movement::is_input
        };
        for t in data_transfers(job, index, wanted).map_err(fail)? {
            if let Some(reason) = control.stopped() {
                return Err(Failure::Stopped(reason));
            }
            let local = folder.join(&t.local);
            let (moved, from, to) = if output {
                let moved = stage::upload(&self.agent, &local, &t.remote, folder);
                (moved, &t.local, &t.remote)
            } else {
                let moved = stage::download(&self.agent, &t.remote, folder, &local);
                (moved, &t.remote, &t.local)
            };
            let bytes = moved.map_err(fail)?;
            log.info(&format!("{way} {from} -> {to} ({bytes} bytes)"));
        }
        Ok(())
    }

    /// Tells the server how the task ended: logs, then `finish_task` or `task_error`; after a
    /// signal `task_error` first, since the batch system may kill for good at any moment.
    fn end(
        &self,
        task_id: &str,
        folder: &Path,
        log: &Stdlog,
        result: Result<(), Failure>,
        usage: Usage,
        start: Instant,
    ) -> Outcome {
        let window = self.settings.retry_for;
        let stats = |error: Option<&str>| {
            report::stats(usage, start.elapsed(), report::disk_usage(folder), error)
        };
        let delivered = |r: Result<(), rpc::CallError>, method: &str, ok: Outcome| match r {
            Ok(()) => ok,
            Err(e) => {
                log.error(&format!("{method}: {e}"));
                Outcome::NotReported
            }
        };
        match result {
            Err(Failure::Stopped(StopReason::Server)) => {
                log.warn("the server no longer runs this task: reporting nothing more");
                Outcome::Stopped
            }
            Err(Failure::Stopped(reason)) => {
                let summary = reason.summary();
                log.error(&summary);
                let info = json!({"task_id": task_id, "error_info": stats(Some(&summary))});
                let r = self.rpc.report("task_error", info, AFTER_SIGNAL);
                let outcome = delivered(r, "task_error", Outcome::Failed);
                self.upload_logs(task_id, folder, Duration::ZERO);
                outcome
            }
            Err(Failure::Module(summary)) => {
                log.error(&summary);
                self.upload_logs(task_id, folder, window);
                let info = json!({"task_id": task_id, "error_info": stats(Some(&summary))});
                delivered(
                    self.rpc.report("task_error", info, window),
                    "task_error",
                    Outcome::Failed,
                )
            }
            Ok(()) => {
                log.info(&format!(
                    "task done in {:.3} s",
                    start.elapsed().as_secs_f64()
                ));
                self.upload_logs(task_id, folder, window);
                let params = json!({"task_id": task_id, "stats": stats(None)});
                delivered(
                    self.rpc.report("finish_task", params, window),
                    "finish_task",
                    Outcome::Finished,
                )
            }
        }
    }

    /// Uploads stdlog, stderr and stdout in that order; a log that cannot be uploaded is
    /// noted on standard error and does not change how the task is reported.
    fn upload_logs(&self, task_id: &str, folder: &Path, window: Duration) {
        for name in LOG_NAMES {
            let data = report::log_payload(&folder.join(name), LOG_TAIL);
            let params = json!({"task": task_id, "name": name, "data": data});
            if let Err(e) = self.rpc.call_within("upload_logfile", params, window) {
                eprintln!("iceprod task {task_id}: upload_logfile {name}: {e}");
            }
        }
    }
}
