//! The batch-system plugins behind one trait, [`BatchPlugin`], one file each.
//!
//! A plugin does no I/O: it says what to write (the submit file) and which commands to run,
//! and reads their outputs. The queue module runs the commands as child processes on its
//! command workers (each with `[queue] command_timeout`) and hands back what they printed, so
//! a plugin is tested with recorded outputs of the real tools and never blocks the queue loop.
//! Unparseable output is an error for that cycle (`QueueError::Parse`), never a state change.
//!
//! The `local` grid is not here: its jobs are child processes of the server, tracked by the
//! queue module itself (`local.rs`).

pub mod condor;
pub mod cream;
pub mod pbs;
pub mod slurm;

use std::collections::HashMap;
use std::path::PathBuf;

use iceprod_runtime::config::{GridConfig, GridType};
use iceprod_runtime::Resources;

use crate::error::QueueError;

/// One submission: a task (direct mode) or a group of pilots of one resource shape.
#[derive(Clone, Debug, PartialEq)]
pub struct SubmitJob {
    /// The submit folder (absolute); the submit file is written here and the job's
    /// stdout/stderr land here.
    pub dir: PathBuf,
    /// A name for the batch system: `iceprod.TASKID` or `iceprod.pilot.PILOTID`.
    pub name: String,
    /// What the job runs: the `iceprod task …` command line, argv style (absolute program).
    pub command: Vec<String>,
    /// Environment variables the job must see (e.g. `ICEPROD_SERVER_URL`).
    pub env: Vec<(String, String)>,
    /// What one job asks of the batch system: cpus, gpus, memory and disk (GB), time (hours).
    pub resources: Resources,
    /// How many identical jobs to submit (pilots; 1 for a task). Plugins that cannot submit
    /// several at once (everything but condor) get 1.
    pub count: u32,
}

/// A command to run: absolute or PATH-relative program, its arguments, working folder.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    /// Working folder; `None` is the server's.
    pub cwd: Option<PathBuf>,
    /// Extra environment for the tool.
    pub env: Vec<(String, String)>,
}

impl CommandSpec {
    pub fn new(program: &str, args: &[&str]) -> CommandSpec {
        CommandSpec {
            program: program.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            cwd: None,
            env: Vec::new(),
        }
    }
}

/// What a command printed and how it ended.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandOutput {
    /// The command it came from (for messages).
    pub program: String,
    /// Exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The error for a tool that exited non-zero.
    pub fn exit_error(&self) -> QueueError {
        QueueError::Exit {
            program: self.program.clone(),
            code: self.code,
            stderr: shorten(&self.stderr),
        }
    }
}

/// The first line of `text`, at most 300 characters: what a message shows of a tool's stderr.
pub fn shorten(text: &str) -> String {
    let first = text.trim().lines().next().unwrap_or("");
    first.chars().take(300).collect()
}

/// Where the grid says a job is (SPEC §6 grid status mapping).
#[derive(Clone, Debug, PartialEq)]
pub enum GridJobState {
    /// Waiting in the batch queue.
    Queued,
    /// Running.
    Processing,
    /// Ended; the exit code when the grid tells it (0 = success).
    Completed { exit_code: Option<i32> },
    /// Failed or held (held counts as error); the reason as the grid words it.
    Error { reason: String },
    /// The grid knows the job but its state is not one of the above.
    Unknown,
}

/// The states of the jobs a status query asked about. A job missing from the map is one the
/// grid does not know (any more).
pub type GridStatus = HashMap<String, GridJobState>;

/// A batch system: writes submit files, and names and reads the commands to submit, query
/// and remove jobs. Methods are pure: the same inputs give the same outputs.
pub trait BatchPlugin: Send {
    /// The grid type this plugin drives.
    fn kind(&self) -> GridType;

    /// The submit file for `job`: its file name in `job.dir` and its contents.
    fn submit_file(&self, job: &SubmitJob) -> (String, String);

    /// The command that submits the submit file `file` (already written in `job.dir`).
    fn submit_command(&self, job: &SubmitJob, file: &str) -> CommandSpec;

    /// The grid ids the submit command printed (one per job; `job.count` for condor).
    fn parse_submit(&self, output: &CommandOutput) -> Result<Vec<String>, QueueError>;

    /// Walks a status query about `ids` over the outputs of the commands run so far in it (in
    /// order): the states found, and the next command to run (`None` once the query is
    /// complete). Lets a plugin ask a second tool about jobs the first did not list
    /// (`scontrol` after `squeue`, `condor_history` after `condor_q`). An error ends the query.
    fn walk_status(
        &self,
        ids: &[String],
        outputs: &[CommandOutput],
    ) -> Result<StatusWalk, QueueError>;

    /// The next command of a status query, given the outputs so far; `None` when it is
    /// complete or a step failed (`parse_status` then reports the error).
    fn status_step(&self, ids: &[String], done: &[CommandOutput]) -> Option<CommandSpec> {
        self.walk_status(ids, done).ok().and_then(|(_, next)| next)
    }

    /// The states of the jobs, from the outputs of every step of the query. Jobs the grid
    /// does not know are left out; a query that ended before its last step is an error.
    fn parse_status(
        &self,
        ids: &[String],
        outputs: &[CommandOutput],
    ) -> Result<GridStatus, QueueError> {
        match self.walk_status(ids, outputs)? {
            (status, None) => Ok(status),
            (_, Some(next)) => Err(QueueError::parse(
                &next.program,
                "the status query ended before this step ran",
            )),
        }
    }

    /// The command that removes `ids` from the grid; `None` when `ids` is empty.
    fn remove_command(&self, ids: &[String]) -> Option<CommandSpec>;
}

/// The plugin of a grid of type `grid.kind`; `None` for `local`, which the queue module
/// runs itself.
pub fn plugin_for(grid: &GridConfig) -> Option<Box<dyn BatchPlugin>> {
    match grid.kind {
        GridType::Local => None,
        GridType::Slurm => Some(Box::new(slurm::Slurm::new(grid))),
        GridType::Pbs => Some(Box::new(pbs::Pbs::new(grid))),
        GridType::Condor => Some(Box::new(condor::Condor::new(grid))),
        GridType::Cream => Some(Box::new(cream::Cream::new(grid))),
    }
}

/// Where a grid's tools are: `bin_dir/TOOL` when the grid has a `bin_dir`, else the bare name
/// (found on PATH).
#[derive(Clone, Debug, PartialEq)]
pub struct Tools {
    bin_dir: Option<PathBuf>,
}

impl Tools {
    /// The tools of `grid` (its `bin_dir`).
    pub fn new(grid: &GridConfig) -> Tools {
        Tools {
            bin_dir: grid.bin_dir.clone(),
        }
    }

    /// The program to run for the tool `name`.
    pub fn path(&self, name: &str) -> String {
        match &self.bin_dir {
            Some(dir) => dir.join(name).to_string_lossy().into_owned(),
            None => name.to_string(),
        }
    }

    /// `TOOL FLAGS… IDS…`, the shape of remove and plain status commands; `None` when `ids`
    /// is empty.
    pub fn on_ids(&self, tool: &str, flags: &[&str], ids: &[String]) -> Option<CommandSpec> {
        if ids.is_empty() {
            return None;
        }
        let mut args = flags.to_vec();
        args.extend(ids.iter().map(String::as_str));
        Some(CommandSpec::new(&self.path(tool), &args))
    }
}

/// How far a status query of several steps got: the states found so far and the next command
/// to run (`None` when the query is complete).
pub type StatusWalk = (GridStatus, Option<CommandSpec>);

/// Memory in MB for a submit file (the job's memory is in GB): rounded up, at least 1.
pub fn memory_mb(gb: f64) -> u64 {
    at_least_one((gb * 1024.0).ceil())
}

/// Minutes for a submit file's time limit (the job's time is in hours): rounded up, at least 1.
pub fn time_minutes(hours: f64) -> u64 {
    at_least_one((hours * 60.0).ceil())
}

/// A rounded-up amount as a whole number of at least 1 (also for NaN and infinities).
pub fn at_least_one(x: f64) -> u64 {
    if x.is_finite() && x >= 1.0 {
        x as u64
    } else {
        1
    }
}

/// `value` on one line, for submit files of one setting a line (condor, cream), where the
/// value is one only the operator or the server writes (names, batchopts).
pub fn one_line(value: &str) -> String {
    value.replace(['\n', '\r', '\0'], " ")
}

/// A value as one word of an `#SBATCH` or `#PBS` line (slurm, and pbs for the torque wrappers,
/// which hand `#PBS` lines to sbatch): those lines are split at blanks, grouped with `"`,
/// escaped with `\`, and end at an unescaped `#`; no shell expansion happens.
pub fn directive_word(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\\' | '#' | '\''));
    if plain {
        return value.to_string();
    }
    let mut word = String::from("\"");
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '#') {
            word.push('\\');
        }
        word.push(c);
    }
    word.push('"');
    word
}

/// Quotes `s` for a POSIX shell script (`'…'`, with `'` written `'\''`).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The body every shell batch file shares (slurm, pbs): the environment, then `exec` of the
/// command, so the batch system's signals reach `iceprod task` directly.
pub fn shell_body(job: &SubmitJob) -> String {
    let mut body = String::new();
    body.push_str(&format!("cd {}\n", shell_quote(&job.dir.to_string_lossy())));
    for (k, v) in &job.env {
        body.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    let argv: Vec<String> = job.command.iter().map(|a| shell_quote(a)).collect();
    body.push_str(&format!("exec {}\n", argv.join(" ")));
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("abc-1.2/x"), "abc-1.2/x");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's $(rm -rf /)"), r"'it'\''s $(rm -rf /)'");
    }
}
