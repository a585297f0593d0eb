//! The pbs plugin (SPEC §6): a `#!/bin/sh` batch file with `#PBS` lines, `qsub` to submit,
//! `qstat` then `qstat -f` to read states, `qdel` to remove. Written for Torque and PBS Pro
//! and tested against Slurm's torque wrappers (package `slurm-wlm-torque`) as well. Pure like
//! every plugin: it names commands and reads what they printed.
//!
//! - Ids are kept exactly as `qsub` printed them: `N` (the wrappers) or `N.server` (Torque,
//!   PBS Pro). `qstat` truncates long ids to its column (`8635655.mesabim3.msi.umn.`), so jobs
//!   are matched by the sequence number before the first `.`, which one server never reuses
//!   while it remembers the job.
//! - `qsub -o job.out -e job.err FILE` runs in the submit folder: the wrappers always pass
//!   their own `-o`/`-e` to sbatch, which beat the file's `#PBS -o`, so the command line names
//!   them too; relative names because the wrappers paste paths into a shell command unquoted.
//!   The job's own working folder is set by `cd` in the body (Torque starts jobs in `$HOME`,
//!   and the wrappers set no `PBS_O_WORKDIR`).
//! - Status: `qstat` lists every job of the server; for our jobs in a finished state (`C`,
//!   `F`, `X`) `qstat -f ID` (at most [`MAX_QSTAT_F_PER_QUERY`]) adds `exit_status` when the
//!   server records it (Torque does, the wrappers do not). "Unknown Job Id" (exit 153) there
//!   is a job the server forgot: left out of the map. A job `qstat` does not list is one the
//!   server does not know.
//! - States: Q, W (waiting for its start time), T (in transit) → queued; H (held) → error
//!   (SPEC: held counts as error); R, E (exiting), B (array begun), S and U (suspended: started
//!   and resumes by itself, as with slurm) → processing; C, F, X → completed with the
//!   `exit_status` when known; anything else (M moved) → unknown.
//! - batchopts are written `#PBS -KEY VALUE` (`-KEY` alone for an empty value): the key is a
//!   qsub option letter or word without its dash, e.g. `A = "acct"` → `#PBS -A acct`,
//!   `l = "pmem=2gb"` → `#PBS -l pmem=2gb`.

use iceprod_runtime::config::{GridConfig, GridType};
use std::collections::{BTreeMap, HashMap};

use super::{directive_word, memory_mb, shell_body, shorten, time_minutes};
use super::{BatchPlugin, CommandOutput, CommandSpec, GridJobState, GridStatus};
use super::{StatusWalk, SubmitJob, Tools};
use crate::error::QueueError;

/// The batch file's name in the submit folder.
pub const SUBMIT_FILE: &str = "job.pbs";
/// The job's stdout and stderr in the submit folder (the names the local grid uses too).
pub const STDOUT_FILE: &str = "job.out";
pub const STDERR_FILE: &str = "job.err";
/// At most this many `qstat -f` calls per status query; finished jobs beyond it are
/// completed without an exit code.
pub const MAX_QSTAT_F_PER_QUERY: usize = 20;

/// PBSE_UNKJOBID (15001) as an exit code: Torque's and the wrappers' "no such job".
const UNKNOWN_JOB_EXIT: i32 = 153;
const UNKNOWN_JOB_ID: &str = "Unknown Job Id";

pub struct Pbs {
    tools: Tools,
    queue: Option<String>,
    batchopts: BTreeMap<String, String>,
}

impl Pbs {
    pub fn new(grid: &GridConfig) -> Pbs {
        Pbs {
            tools: Tools::new(grid),
            queue: grid.queue.clone(),
            batchopts: grid.batchopts.clone(),
        }
    }
}

impl BatchPlugin for Pbs {
    fn kind(&self) -> GridType {
        GridType::Pbs
    }

    fn submit_file(&self, job: &SubmitJob) -> (String, String) {
        let r = &job.resources;
        let path = |name: &str| job.dir.join(name).to_string_lossy().into_owned();
        let mut nodes = format!("nodes=1:ppn={}", r.cpu.max(1));
        if r.gpu > 0 {
            nodes.push_str(&format!(":gpus={}", r.gpu));
        }
        let mut options: Vec<(String, String)> = vec![
            ("N".into(), job.name.clone()),
            ("o".into(), path(STDOUT_FILE)),
            ("e".into(), path(STDERR_FILE)),
            ("l".into(), nodes),
            ("l".into(), format!("mem={}mb", memory_mb(r.memory))),
            ("l".into(), format!("walltime={}", walltime(r.time))),
        ];
        if let Some(queue) = &self.queue {
            options.push(("q".into(), queue.clone()));
        }
        for (key, value) in &self.batchopts {
            options.push((key.trim_start_matches('-').to_string(), value.clone()));
        }
        let mut text = String::from("#!/bin/sh\n");
        for (option, value) in &options {
            text.push_str(&format!("#PBS -{}", directive_word(option)));
            if !value.is_empty() {
                text.push_str(&format!(" {}", directive_word(value)));
            }
            text.push('\n');
        }
        text.push_str(&shell_body(job));
        (SUBMIT_FILE.to_string(), text)
    }

    fn submit_command(&self, job: &SubmitJob, file: &str) -> CommandSpec {
        let args = ["-o", STDOUT_FILE, "-e", STDERR_FILE, file];
        let mut spec = CommandSpec::new(&self.tools.path("qsub"), &args);
        spec.cwd = Some(job.dir.clone());
        spec
    }

    fn parse_submit(&self, output: &CommandOutput) -> Result<Vec<String>, QueueError> {
        if !output.success() {
            return Err(exit_error(output));
        }
        let lines: Vec<&str> = output
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let [id] = lines[..] else {
            return Err(QueueError::parse(
                &output.program,
                format!("expected one job id, got {:?}", shorten(&output.stdout)),
            ));
        };
        let number = sequence(id);
        let server_ok = match id.split_once('.') {
            Some((_, server)) => !server.is_empty() && !server.contains(char::is_whitespace),
            None => true,
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || !server_ok {
            return Err(QueueError::parse(
                &output.program,
                format!("not a job id: {id:?}"),
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
        let Some(qstat) = outputs.first() else {
            return Ok((
                status,
                Some(CommandSpec::new(&self.tools.path("qstat"), &[])),
            ));
        };
        let listed = parse_qstat(qstat)?;
        let mut finished: Vec<&String> = Vec::new();
        for id in ids {
            let Some(&letter) = listed.get(sequence(id)) else {
                continue;
            };
            let state = job_state(letter, None);
            if let GridJobState::Completed { .. } = state {
                finished.push(id);
            }
            status.insert(id.clone(), state);
        }
        let asked = &finished[..finished.len().min(MAX_QSTAT_F_PER_QUERY)];
        let details = &outputs[1..outputs.len().min(1 + asked.len())];
        for (id, output) in asked.iter().zip(details) {
            match parse_qstat_full(id, output)? {
                Some(state) => status.insert((*id).clone(), state),
                None => status.remove(*id),
            };
        }
        if details.len() < asked.len() {
            let id = asked[details.len()].as_str();
            return Ok((
                status,
                Some(CommandSpec::new(&self.tools.path("qstat"), &["-f", id])),
            ));
        }
        Ok((status, None))
    }

    fn remove_command(&self, ids: &[String]) -> Option<CommandSpec> {
        self.tools.on_ids("qdel", &[], ids)
    }
}

/// The server's sequence number of a job id: `123` of `123.server.example.org`.
fn sequence(id: &str) -> &str {
    id.split('.').next().unwrap_or("")
}

/// `HH:MM:SS` for `-l walltime=` (the job's time is in hours): whole minutes rounded up, at
/// least one minute.
pub fn walltime(hours: f64) -> String {
    let minutes = time_minutes(hours);
    format!("{:02}:{:02}:00", minutes / 60, minutes % 60)
}

/// The error for a tool that exited non-zero. The wrappers' qsub prints its error on stdout:
/// the message shows the first line that says `error:`, else the first line of stderr or
/// stdout.
fn exit_error(output: &CommandOutput) -> QueueError {
    let text = format!("{}\n{}", output.stderr, output.stdout);
    let line = text
        .lines()
        .map(|l| l.trim().trim_matches('\''))
        .find(|l| l.contains("error:"))
        .map(str::to_string)
        .unwrap_or_else(|| shorten(&text));
    QueueError::Exit {
        program: output.program.clone(),
        code: output.code,
        stderr: shorten(&line),
    }
}

/// `qstat`'s table: the state letter of every job listed, by sequence number. Columns are
/// read from the dashed line under the header (ids and names may be cut or contain blanks).
fn parse_qstat(output: &CommandOutput) -> Result<HashMap<String, char>, QueueError> {
    if !output.success() {
        return Err(exit_error(output));
    }
    let bad = |message: String| QueueError::parse(&output.program, message);
    let mut jobs = HashMap::new();
    let mut columns: Option<Vec<(usize, usize)>> = None;
    for line in output.stdout.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let Some(spans) = &columns else {
            if line.trim_start().starts_with('-') {
                let spans = dash_spans(line);
                if spans.len() < 6 || spans[4].1 - spans[4].0 != 1 {
                    return Err(bad(format!("not a qstat header: {line:?}")));
                }
                columns = Some(spans);
            } else if !line.to_ascii_lowercase().starts_with("job id") {
                return Err(bad(format!("expected the qstat header, got {line:?}")));
            }
            continue;
        };
        let cell = |(start, end): (usize, usize)| line.get(start..end.min(line.len()));
        let id = cell(spans[0]).map(str::trim).unwrap_or("");
        let state = cell(spans[4]).unwrap_or("");
        let letter = state.chars().next().filter(|c| c.is_ascii_uppercase());
        let (Some(letter), false) = (letter, id.is_empty()) else {
            return Err(bad(format!("expected a job line, got {line:?}")));
        };
        jobs.insert(sequence(id).to_string(), letter);
    }
    if !jobs.is_empty() && columns.is_none() {
        return Err(bad("no qstat header".to_string()));
    }
    Ok(jobs)
}

/// The byte spans of the runs of `-` in qstat's dashed header line.
fn dash_spans(line: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, b) in line.bytes().enumerate() {
        match (b == b'-' || b == b'+', start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, line.len()));
    }
    spans
}

/// `qstat -f ID`: the job's state with its exit status, or `None` when the server does not
/// know the job (any more).
fn parse_qstat_full(id: &str, output: &CommandOutput) -> Result<Option<GridJobState>, QueueError> {
    if !output.success() {
        let unknown = output.code == Some(UNKNOWN_JOB_EXIT)
            || output.stderr.contains(UNKNOWN_JOB_ID)
            || output.stdout.contains(UNKNOWN_JOB_ID);
        if unknown {
            return Ok(None);
        }
        return Err(exit_error(output));
    }
    let bad = |what: &str| {
        QueueError::parse(
            &output.program,
            format!("{what} in {:?}", shorten(&output.stdout)),
        )
    };
    let mut lines = output.stdout.lines();
    let header = lines.next().unwrap_or("");
    let Some(job) = header.strip_prefix("Job Id:") else {
        return Err(bad("no Job Id"));
    };
    if sequence(job.trim()) != sequence(id) {
        return Err(bad(&format!("not job {id}")));
    }
    let mut letter = None;
    let mut exit = None;
    for line in lines {
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        match key.trim() {
            "job_state" => letter = value.trim().chars().next(),
            "exit_status" | "Exit_status" => {
                exit = Some(
                    value
                        .trim()
                        .parse::<i32>()
                        .map_err(|_| bad("a bad exit_status"))?,
                )
            }
            _ => {}
        }
    }
    let letter = letter
        .filter(|c| c.is_ascii_uppercase())
        .ok_or_else(|| bad("no job_state"))?;
    Ok(Some(job_state(letter, exit)))
}

/// One job's state from its qstat letter and, when known, its exit status (see the module
/// doc for the mapping and why).
fn job_state(letter: char, exit: Option<i32>) -> GridJobState {
    match letter {
        'Q' | 'W' | 'T' => GridJobState::Queued,
        'H' => GridJobState::Error {
            reason: "held".to_string(),
        },
        'R' | 'E' | 'B' | 'S' | 'U' => GridJobState::Processing,
        'C' | 'F' | 'X' => GridJobState::Completed { exit_code: exit },
        _ => GridJobState::Unknown,
    }
}
