//! The slurm plugin (SPEC §6): a `#!/bin/sh` batch file with `#SBATCH` lines, `sbatch
//! --parsable` to submit, `squeue` then `scontrol` then `sacct` to read states, `scancel` to
//! remove. Pure like every plugin: it names commands and reads what they printed.
//!
//! A status query is up to three tools, each asked only about what the one before could not
//! answer:
//! 1. `squeue --me -h -t all -o '%i|%T|%r'`: every job of the server's user in every state,
//!    finished ones too until the controller's `MinJobAge`. `--me` rather than `-j IDS`:
//!    `squeue -j` with one id the controller no longer knows exits 1 ("Invalid job id
//!    specified"), so its failure could not be told from a real one without matching the
//!    message; `--me` never fails for that and needs no command line that grows with the
//!    number of jobs. Other users' jobs are not listed; lines of ours that were not asked
//!    about are ignored.
//! 2. `scontrol show job -o ID`, one per id squeue did not list (at most
//!    [`MAX_SCONTROL_PER_QUERY`]): catches a job that left squeue's listing between the two
//!    calls and gives its `ExitCode=E:S`. "Invalid job id specified" (exit 1) is the documented
//!    answer for a job the controller forgot: left out of the map, not an error.
//! 3. `sacct -n -P -X -o JobID,State,ExitCode -j IDS` for ids still unresolved, when accounting
//!    exists: without slurmdbd it exits 1 with "Slurm accounting storage is disabled", which
//!    means "no history here" (those ids stay out of the map), not a failure.
//!
//! States (the names `squeue %T`, `scontrol JobState` and `sacct State` share):
//! PENDING, CONFIGURING, REQUEUED, REQUEUE_FED → queued, except a PENDING job held by a user
//! or admin (reason `JobHeldUser`/`JobHeldAdmin`) and the held states REQUEUE_HOLD,
//! RESV_DEL_HOLD, SPECIAL_EXIT → error (SPEC: held counts as error); RUNNING, COMPLETING,
//! SIGNALING, STAGE_OUT, RESIZING → processing; SUSPENDED and STOPPED → processing too: the job
//! has started and keeps its allocation and its processes, and resumes by itself, so it is
//! neither waiting to start nor failed (mapping it to queued would restart the queued-time
//! clock of a task that already runs); COMPLETED → completed (exit 0, or the recorded exit
//! code); CANCELLED → error `cancelled`; FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, BOOT_FAIL,
//! DEADLINE, PREEMPTED → error with the state, reason and exit code; anything else → unknown.

use iceprod_runtime::config::{GridConfig, GridType};
use std::collections::{BTreeMap, HashMap, HashSet};

use super::{directive_word, memory_mb, shell_body, shorten, time_minutes};
use super::{BatchPlugin, CommandOutput, CommandSpec, GridJobState, GridStatus};
use super::{StatusWalk, SubmitJob, Tools};
use crate::error::QueueError;

/// The batch file's name in the submit folder.
pub const SUBMIT_FILE: &str = "job.slurm";
/// The job's stdout and stderr in the submit folder (the names the local grid uses too).
pub const STDOUT_FILE: &str = "job.out";
pub const STDERR_FILE: &str = "job.err";
/// At most this many `scontrol` calls per status query; ids beyond it go straight to `sacct`.
pub const MAX_SCONTROL_PER_QUERY: usize = 20;
/// squeue's output: id, state (long name), reason.
pub const SQUEUE_FORMAT: &str = "%i|%T|%r";

/// What Slurm prints for a job id its controller does not know (any more).
const INVALID_JOB_ID: &str = "Invalid job id specified";
/// What sacct prints when there is no slurmdbd.
const ACCOUNTING_DISABLED: &str = "accounting storage is disabled";

pub struct Slurm {
    tools: Tools,
    partition: Option<String>,
    batchopts: BTreeMap<String, String>,
}

impl Slurm {
    pub fn new(grid: &GridConfig) -> Slurm {
        Slurm {
            tools: Tools::new(grid),
            partition: grid.queue.clone(),
            batchopts: grid.batchopts.clone(),
        }
    }

    fn squeue(&self) -> CommandSpec {
        CommandSpec::new(
            &self.tools.path("squeue"),
            &["--me", "-h", "-t", "all", "-o", SQUEUE_FORMAT],
        )
    }

    fn scontrol(&self, id: &str) -> CommandSpec {
        CommandSpec::new(&self.tools.path("scontrol"), &["show", "job", "-o", id])
    }

    fn sacct(&self, ids: &[&String]) -> CommandSpec {
        let list = ids.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
        CommandSpec::new(
            &self.tools.path("sacct"),
            &["-n", "-P", "-X", "-o", "JobID,State,ExitCode", "-j", &list],
        )
    }
}

impl BatchPlugin for Slurm {
    fn kind(&self) -> GridType {
        GridType::Slurm
    }

    fn submit_file(&self, job: &SubmitJob) -> (String, String) {
        let r = &job.resources;
        let path = |name: &str| filename_pattern(&job.dir.join(name).to_string_lossy());
        let mut options: Vec<(String, String)> = vec![
            ("job-name".into(), job.name.clone()),
            ("output".into(), path(STDOUT_FILE)),
            ("error".into(), path(STDERR_FILE)),
            ("chdir".into(), job.dir.to_string_lossy().into_owned()),
            ("ntasks".into(), "1".into()),
            ("cpus-per-task".into(), r.cpu.max(1).to_string()),
            ("mem".into(), memory_mb(r.memory).to_string()),
            ("time".into(), time_minutes(r.time).to_string()),
        ];
        if r.gpu > 0 {
            options.push(("gres".into(), format!("gpu:{}", r.gpu)));
        }
        if let Some(partition) = &self.partition {
            options.push(("partition".into(), partition.clone()));
        }
        for (key, value) in &self.batchopts {
            options.push((key.trim_start_matches('-').to_string(), value.clone()));
        }
        let mut text = String::from("#!/bin/sh\n");
        for (option, value) in &options {
            text.push_str(&directive(option, value));
        }
        text.push_str(&shell_body(job));
        (SUBMIT_FILE.to_string(), text)
    }

    fn submit_command(&self, job: &SubmitJob, file: &str) -> CommandSpec {
        let mut spec = CommandSpec::new(&self.tools.path("sbatch"), &["--parsable", file]);
        spec.cwd = Some(job.dir.clone());
        spec
    }

    fn parse_submit(&self, output: &CommandOutput) -> Result<Vec<String>, QueueError> {
        if !output.success() {
            return Err(output.exit_error());
        }
        let lines: Vec<&str> = output
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let [line] = lines[..] else {
            return Err(QueueError::parse(
                &output.program,
                format!("expected one job id, got {:?}", shorten(&output.stdout)),
            ));
        };
        // `ID` or, on a multi-cluster setup, `ID;CLUSTER`: squeue and scontrol name the job
        // by ID alone.
        let id = line.split(';').next().unwrap_or("");
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(QueueError::parse(
                &output.program,
                format!("not a job id: {line:?}"),
            ));
        }
        Ok(vec![id.to_string()])
    }

    /// Walks the outputs of a status query in order: the states found so far and the next
    /// command to run (`None` when the query is complete). An error ends the query.
    fn walk_status(
        &self,
        ids: &[String],
        outputs: &[CommandOutput],
    ) -> Result<StatusWalk, QueueError> {
        let mut status = GridStatus::new();
        if ids.is_empty() {
            return Ok((status, None));
        }
        let Some(squeue) = outputs.first() else {
            return Ok((status, Some(self.squeue())));
        };
        let listed = parse_squeue(squeue)?;
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        for (id, state) in listed.iter() {
            if wanted.contains(id.as_str()) {
                status.insert(id.clone(), state.clone());
            }
        }
        let unlisted: Vec<&String> = ids.iter().filter(|id| !listed.contains_key(*id)).collect();
        let asked = &unlisted[..unlisted.len().min(MAX_SCONTROL_PER_QUERY)];
        let scontrols = &outputs[1..outputs.len().min(1 + asked.len())];
        for (id, output) in asked.iter().zip(scontrols) {
            if let Some(state) = parse_scontrol(id, output)? {
                status.insert((*id).clone(), state);
            }
        }
        if scontrols.len() < asked.len() {
            let next = self.scontrol(asked[scontrols.len()]);
            return Ok((status, Some(next)));
        }
        let unresolved: Vec<&String> = unlisted
            .iter()
            .copied()
            .filter(|id| !status.contains_key(*id))
            .collect();
        if unresolved.is_empty() {
            return Ok((status, None));
        }
        let Some(sacct) = outputs.get(1 + asked.len()) else {
            return Ok((status, Some(self.sacct(&unresolved))));
        };
        let wanted: HashSet<&str> = unresolved.iter().map(|s| s.as_str()).collect();
        for (id, state) in parse_sacct(sacct)? {
            if wanted.contains(id.as_str()) {
                status.insert(id, state);
            }
        }
        Ok((status, None))
    }

    fn remove_command(&self, ids: &[String]) -> Option<CommandSpec> {
        self.tools.on_ids("scancel", &[], ids)
    }
}

/// `#SBATCH --OPTION=VALUE`, or `#SBATCH --OPTION` for an empty value.
fn directive(option: &str, value: &str) -> String {
    if value.is_empty() {
        format!("#SBATCH --{}\n", directive_word(option))
    } else {
        format!(
            "#SBATCH --{}={}\n",
            directive_word(option),
            directive_word(value)
        )
    }
}

/// A path for `--output`/`--error`, where `%` starts a replacement (`%j` = job id): `%%` is a
/// literal `%`.
fn filename_pattern(path: &str) -> String {
    path.replace('%', "%%")
}

/// `squeue -o '%i|%T|%r'` lines: every job listed, by id.
fn parse_squeue(output: &CommandOutput) -> Result<HashMap<String, GridJobState>, QueueError> {
    if !output.success() {
        return Err(output.exit_error());
    }
    let mut jobs = HashMap::new();
    for line in output.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.trim().split('|').collect();
        let [id, state, reason] = fields[..] else {
            return Err(QueueError::parse(
                &output.program,
                format!("expected ID|STATE|REASON, got {line:?}"),
            ));
        };
        if id.is_empty() || !is_state_name(state) {
            return Err(QueueError::parse(
                &output.program,
                format!("expected ID|STATE|REASON, got {line:?}"),
            ));
        }
        jobs.insert(id.to_string(), job_state(state, reason, None));
    }
    Ok(jobs)
}

/// `scontrol show job -o ID`: the job's state, or `None` when the controller does not know the
/// job (any more).
fn parse_scontrol(id: &str, output: &CommandOutput) -> Result<Option<GridJobState>, QueueError> {
    if !output.success() {
        if output.code == Some(1) && output.stderr.contains(INVALID_JOB_ID) {
            return Ok(None);
        }
        return Err(output.exit_error());
    }
    let text = output.stdout.trim();
    let bad =
        |what: &str| QueueError::parse(&output.program, format!("{what} in {:?}", shorten(text)));
    if field(text, "JobId") != Some(id) {
        return Err(bad(&format!("no JobId={id}")));
    }
    let state = field(text, "JobState").ok_or_else(|| bad("no JobState"))?;
    if !is_state_name(state) {
        return Err(bad("no JobState"));
    }
    let reason = field(text, "Reason").unwrap_or("None");
    let exit = match field(text, "ExitCode") {
        Some(code) => Some(parse_exit_code(code).ok_or_else(|| bad("a bad ExitCode"))?),
        None => None,
    };
    Ok(Some(job_state(state, reason, exit)))
}

/// `sacct -n -P -o JobID,State,ExitCode` lines; nothing when there is no accounting.
fn parse_sacct(output: &CommandOutput) -> Result<Vec<(String, GridJobState)>, QueueError> {
    if !output.success() {
        if output.stderr.contains(ACCOUNTING_DISABLED) {
            return Ok(Vec::new());
        }
        return Err(output.exit_error());
    }
    let mut jobs = Vec::new();
    for line in output.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.trim().split('|').collect();
        let bad = || {
            QueueError::parse(
                &output.program,
                format!("expected JobID|State|ExitCode, got {line:?}"),
            )
        };
        let [id, state, exit] = fields[..] else {
            return Err(bad());
        };
        // `CANCELLED by 1000`: the state is the first word.
        let state = state.split(' ').next().unwrap_or("");
        let exit = parse_exit_code(exit).ok_or_else(bad)?;
        if id.is_empty() || !is_state_name(state) {
            return Err(bad());
        }
        // A requeued job has several records; the last is its current one.
        jobs.push((id.to_string(), job_state(state, "None", Some(exit))));
    }
    Ok(jobs)
}

/// The value of `KEY=` in a `scontrol -o` line (up to the next blank).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("{key}=");
    let mut from = 0;
    while let Some(at) = line[from..].find(&pattern) {
        let start = from + at;
        if start == 0 || line.as_bytes()[start - 1] == b' ' {
            let value = &line[start + pattern.len()..];
            return Some(value.split(' ').next().unwrap_or(""));
        }
        from = start + pattern.len();
    }
    None
}

/// Slurm's `E:S` exit code: the exit status and the signal that ended the job.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ExitCode {
    status: i32,
    signal: i32,
}

fn parse_exit_code(text: &str) -> Option<ExitCode> {
    let (status, signal) = text.split_once(':')?;
    Some(ExitCode {
        status: status.parse().ok()?,
        signal: signal.parse().ok()?,
    })
}

fn is_state_name(state: &str) -> bool {
    !state.is_empty() && state.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
}

/// One job's state from Slurm's state name, its reason and, when known, its exit code (see the
/// module doc for the mapping and why).
fn job_state(state: &str, reason: &str, exit: Option<ExitCode>) -> GridJobState {
    let held = matches!(reason, "JobHeldUser" | "JobHeldAdmin");
    match state {
        "PENDING" if held => GridJobState::Error {
            reason: format!("held ({reason})"),
        },
        "REQUEUE_HOLD" | "RESV_DEL_HOLD" | "SPECIAL_EXIT" => GridJobState::Error {
            reason: describe("held", state, reason, None),
        },
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_FED" => GridJobState::Queued,
        "RUNNING" | "COMPLETING" | "SIGNALING" | "STAGE_OUT" | "RESIZING" | "SUSPENDED"
        | "STOPPED" => GridJobState::Processing,
        "COMPLETED" => GridJobState::Completed {
            exit_code: Some(exit.map_or(0, |e| e.status)),
        },
        "CANCELLED" => GridJobState::Error {
            reason: "cancelled".to_string(),
        },
        "FAILED" | "TIMEOUT" | "NODE_FAIL" | "OUT_OF_MEMORY" | "BOOT_FAIL" | "DEADLINE"
        | "PREEMPTED" => GridJobState::Error {
            reason: describe(state, "", reason, exit),
        },
        _ => GridJobState::Unknown,
    }
}

/// `FAILED (NonZeroExitCode, exit 3)`, `TIMEOUT (TimeLimit, signal 15)`, `held (REQUEUE_HOLD)`.
fn describe(head: &str, state: &str, reason: &str, exit: Option<ExitCode>) -> String {
    let mut details: Vec<String> = Vec::new();
    if !state.is_empty() {
        details.push(state.to_string());
    }
    if !reason.is_empty() && reason != "None" {
        details.push(reason.to_string());
    }
    match exit {
        Some(e) if e.signal != 0 => details.push(format!("signal {}", e.signal)),
        Some(e) if e.status != 0 => details.push(format!("exit {}", e.status)),
        _ => {}
    }
    if details.is_empty() {
        head.to_string()
    } else {
        format!("{head} ({})", details.join(", "))
    }
}
