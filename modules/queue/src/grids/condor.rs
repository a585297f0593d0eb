//! The HTCondor plugin (SPEC §6): a vanilla-universe submit description file, `condor_submit
//! -terse` to submit, `condor_q -json` then `condor_history -json` to read states, `condor_rm`
//! to remove. Pure like every plugin: it names commands and reads what they printed.
//!
//! Grid ids are `CLUSTER.PROC`. A submission of `count` pilots is one cluster with procs
//! `0..count`.
//!
//! A status query is up to `1 + MAX_HISTORY_QUERIES` tools:
//! 1. `condor_q -json -attributes … CLUSTERS`: the jobs still in the schedd's queue. An empty
//!    queue prints nothing (or `[]`) and exits 0: no job listed, not an error.
//! 2. `condor_history -json -attributes … -limit N -constraint …` for the ids condor_q did not
//!    list, [`MAX_HISTORY_IDS`] per call and at most [`MAX_HISTORY_QUERIES`] calls: a job that
//!    left the queue (completed or removed) is found there. `-limit` lets condor_history stop
//!    reading the history file once every asked job is found. Ids beyond the bound are left out
//!    of the map this cycle (the queue treats them as not known by the grid).
//!
//! States (`JobStatus`): 1 idle → queued; 2 running → processing; 3 removed → error `removed`
//! (with the `RemoveReason` when condor gives one); 4 completed → completed with `ExitCode`,
//! or error when the job was killed by a signal; 5 held → error with the `HoldReason` (SPEC:
//! held counts as error, and the reason is kept); 6 transferring output → processing;
//! 7 suspended → queued; anything else → unknown. Output that is not the JSON condor prints,
//! or a tool that exits non-zero, is an error: never a state change.
//!
//! Quoting: `arguments` and `environment` use condor's new syntax (the whole value in double
//! quotes, `"` doubled, an item with blanks or `'` in single quotes with `'` doubled), and every
//! `$` of a value is written `$(DOLLAR)` so condor_submit's macro expansion leaves it alone.
//! A submit file cannot carry a newline, carriage return or NUL in any value; a job whose
//! command or environment has one runs through `/bin/sh`, which decodes `printf %b` escapes
//! of every word and execs the command (see [`SH_DECODE`]).

use iceprod_runtime::config::{GridConfig, GridType};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::{at_least_one, memory_mb, one_line, shorten, time_minutes};
use super::{BatchPlugin, CommandOutput, CommandSpec, GridJobState, GridStatus};
use super::{StatusWalk, SubmitJob, Tools};
use crate::error::QueueError;

/// The submit description file's name in the submit folder.
pub const SUBMIT_FILE: &str = "iceprod.submit";
/// The job's stdout, stderr and condor's job event log in the submit folder.
pub const STDOUT_FILE: &str = "job.out";
pub const STDERR_FILE: &str = "job.err";
pub const LOG_FILE: &str = "job.log";
/// The attributes a status query asks condor_q and condor_history for.
pub const STATUS_ATTRIBUTES: &str =
    "ClusterId,ProcId,JobStatus,HoldReason,ExitCode,ExitBySignal,ExitSignal,RemoveReason";
/// At most this many ids per `condor_history` call.
pub const MAX_HISTORY_IDS: usize = 50;
/// At most this many `condor_history` calls per status query.
pub const MAX_HISTORY_QUERIES: usize = 4;
/// The shell used when a value cannot be written into a submit file.
pub const SH: &str = "/bin/sh";
/// The `sh -c` script of such jobs: decodes each word (`printf %b` escapes; the `_` keeps
/// trailing newlines from the command substitution) and execs the decoded words.
pub const SH_DECODE: &str = "n=$#; while [ \"$n\" -gt 0 ]; do w=$(printf '%b_' \"$1\"); \
     set -- \"$@\" \"${w%_}\"; shift; n=$((n - 1)); done; exec \"$@\"";

pub struct Condor {
    tools: Tools,
    batchopts: BTreeMap<String, String>,
}

impl Condor {
    pub fn new(grid: &GridConfig) -> Condor {
        Condor {
            tools: Tools::new(grid),
            batchopts: grid.batchopts.clone(),
        }
    }

    fn condor_q(&self, ids: &[String]) -> CommandSpec {
        let clusters: BTreeSet<&str> = ids.iter().map(|id| cluster_of(id)).collect();
        let mut args = vec!["-json", "-attributes", STATUS_ATTRIBUTES];
        args.extend(clusters);
        CommandSpec::new(&self.tools.path("condor_q"), &args)
    }

    fn condor_history(&self, ids: &[&String]) -> CommandSpec {
        let limit = ids.len().to_string();
        let constraint = history_constraint(ids);
        CommandSpec::new(
            &self.tools.path("condor_history"),
            &[
                "-json",
                "-attributes",
                STATUS_ATTRIBUTES,
                "-limit",
                &limit,
                "-constraint",
                &constraint,
            ],
        )
    }
}

impl BatchPlugin for Condor {
    fn kind(&self) -> GridType {
        GridType::Condor
    }

    fn submit_file(&self, job: &SubmitJob) -> (String, String) {
        let r = &job.resources;
        let dir = job.dir.to_string_lossy();
        let path = |name: &str| job.dir.join(name).to_string_lossy().into_owned();
        let mut lines: Vec<(String, String)> = vec![("universe".into(), "vanilla".into())];
        let program = job.command.first().map(String::as_str).unwrap_or("");
        let args = job.command.get(1..).unwrap_or(&[]);
        let representable = job
            .command
            .iter()
            .chain(job.env.iter().map(|(_, v)| v))
            .all(|s| !has_unwritable(s));
        if representable {
            lines.push(("executable".into(), macro_escape(program)));
            if !args.is_empty() {
                lines.push(("arguments".into(), quote_arguments(args)));
            }
            if !job.env.is_empty() {
                lines.push(("environment".into(), quote_environment(&job.env)));
            }
        } else {
            // `sh -c SCRIPT iceprod env NAME=VALUE… PROGRAM ARGS…`, every word escaped.
            let mut words: Vec<String> = vec!["-c".into(), SH_DECODE.into(), "iceprod".into()];
            let mut decoded: Vec<String> = Vec::new();
            if !job.env.is_empty() {
                decoded.push("/usr/bin/env".into());
                decoded.extend(job.env.iter().map(|(k, v)| format!("{k}={v}")));
            }
            decoded.extend(job.command.iter().cloned());
            words.extend(decoded.iter().map(|w| printf_escape(w)));
            lines.push(("executable".into(), SH.into()));
            lines.push(("arguments".into(), quote_arguments(&words)));
        }
        lines.extend([
            ("transfer_executable".into(), "false".into()),
            ("initialdir".into(), macro_escape(&dir)),
            ("output".into(), macro_escape(&path(STDOUT_FILE))),
            ("error".into(), macro_escape(&path(STDERR_FILE))),
            ("log".into(), macro_escape(&path(LOG_FILE))),
            ("batch_name".into(), macro_escape(&one_line(&job.name))),
            // A shared filesystem is used when the execute node has one (same
            // FileSystemDomain); otherwise condor moves the outputs back at exit.
            ("should_transfer_files".into(), "IF_NEEDED".into()),
            ("when_to_transfer_output".into(), "ON_EXIT".into()),
            ("request_cpus".into(), r.cpu.max(1).to_string()),
        ]);
        if r.gpu > 0 {
            lines.push(("request_gpus".into(), r.gpu.to_string()));
        }
        lines.extend([
            ("request_memory".into(), memory_mb(r.memory).to_string()),
            ("request_disk".into(), disk_kb(r.disk).to_string()),
            ("+MaxWallTimeMins".into(), time_minutes(r.time).to_string()),
        ]);
        for (key, value) in &self.batchopts {
            // Written as the operator spelled them (condor syntax, macros allowed), one line.
            lines.push((one_line(key).trim().to_string(), one_line(value)));
        }
        let mut text = format!("# iceprod {}\n", one_line(&job.name));
        for (key, value) in &lines {
            text.push_str(&format!("{key} = {value}\n"));
        }
        text.push_str(&format!("queue {}\n", job.count.max(1)));
        (SUBMIT_FILE.to_string(), text)
    }

    fn submit_command(&self, job: &SubmitJob, file: &str) -> CommandSpec {
        let mut spec = CommandSpec::new(&self.tools.path("condor_submit"), &["-terse", file]);
        spec.cwd = Some(job.dir.clone());
        spec
    }

    fn parse_submit(&self, output: &CommandOutput) -> Result<Vec<String>, QueueError> {
        if !output.success() {
            return Err(output.exit_error());
        }
        let ids = parse_submit_text(&output.stdout)
            .map_err(|message| QueueError::parse(&output.program, message))?;
        if ids.is_empty() {
            return Err(QueueError::parse(
                &output.program,
                format!("no job ids in {:?}", shorten(&output.stdout)),
            ));
        }
        Ok(ids)
    }

    /// Walks the outputs of a status query in order: the states found so far and the next
    /// command to run (`None` when the query is complete). An error ends the query.
    fn walk_status(
        &self,
        ids: &[String],
        outputs: &[CommandOutput],
    ) -> Result<StatusWalk, QueueError> {
        let mut status = GridStatus::new();
        let wanted: Vec<&String> = ids.iter().filter(|id| is_job_id(id)).collect();
        if wanted.is_empty() {
            return Ok((status, None));
        }
        let Some(queue) = outputs.first() else {
            return Ok((status, Some(self.condor_q(ids))));
        };
        let wanted_set: HashSet<&str> = wanted.iter().map(|s| s.as_str()).collect();
        for (id, state) in parse_ads(queue)? {
            if wanted_set.contains(id.as_str()) {
                status.insert(id, state);
            }
        }
        let unlisted: Vec<&String> = wanted
            .iter()
            .copied()
            .filter(|id| !status.contains_key(*id))
            .collect();
        let chunks: Vec<&[&String]> = unlisted
            .chunks(MAX_HISTORY_IDS)
            .take(MAX_HISTORY_QUERIES)
            .collect();
        for (n, chunk) in chunks.iter().enumerate() {
            let Some(history) = outputs.get(1 + n) else {
                return Ok((status, Some(self.condor_history(chunk))));
            };
            let asked: HashSet<&str> = chunk.iter().map(|s| s.as_str()).collect();
            for (id, state) in parse_ads(history)? {
                // A job already seen in the queue keeps its queue state: condor_q is newer.
                if asked.contains(id.as_str()) {
                    status.insert(id, state);
                }
            }
        }
        Ok((status, None))
    }

    fn remove_command(&self, ids: &[String]) -> Option<CommandSpec> {
        self.tools.on_ids("condor_rm", &[], ids)
    }
}

/// `CLUSTER.PROC` with both parts decimal.
fn is_job_id(id: &str) -> bool {
    let Some((cluster, proc)) = id.split_once('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(cluster) && digits(proc)
}

fn cluster_of(id: &str) -> &str {
    id.split_once('.').map(|(c, _)| c).unwrap_or(id)
}

/// `(ClusterId == C && ProcId == P) || …` for condor_history.
fn history_constraint(ids: &[&String]) -> String {
    ids.iter()
        .filter_map(|id| id.split_once('.'))
        .map(|(c, p)| format!("(ClusterId == {c} && ProcId == {p})"))
        .collect::<Vec<_>>()
        .join(" || ")
}

/// The ids condor_submit printed: `-terse` lines `C.P - C.Q`, or the normal
/// `N job(s) submitted to cluster C.` lines (procs `0..N`).
pub fn parse_submit_text(text: &str) -> Result<Vec<String>, String> {
    let mut ids = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some((first, last)) = line.split_once(" - ") {
            let (c1, p1) = split_id(first.trim()).ok_or_else(|| bad_line(line))?;
            let (c2, p2) = split_id(last.trim()).ok_or_else(|| bad_line(line))?;
            if c1 != c2 || p2 < p1 {
                return Err(bad_line(line));
            }
            ids.extend((p1..=p2).map(|p| format!("{c1}.{p}")));
        } else if let Some(at) = line.find(" job(s) submitted to cluster ") {
            let count: u64 = line[..at].trim().parse().map_err(|_| bad_line(line))?;
            let rest = &line[at + " job(s) submitted to cluster ".len()..];
            let cluster = rest.trim_end_matches('.');
            if cluster.is_empty() || !cluster.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad_line(line));
            }
            ids.extend((0..count).map(|p| format!("{cluster}.{p}")));
        } else if line.starts_with("Submitting job(s)") || line.starts_with("Logging submit") {
            // The progress lines of the normal output.
        } else {
            return Err(bad_line(line));
        }
    }
    Ok(ids)
}

fn bad_line(line: &str) -> String {
    format!("unexpected line {:?}", shorten(line))
}

fn split_id(id: &str) -> Option<(u64, u64)> {
    let (c, p) = id.split_once('.')?;
    Some((c.parse().ok()?, p.parse().ok()?))
}

/// The job ads of `condor_q -json` / `condor_history -json`: `(CLUSTER.PROC, state)`.
fn parse_ads(output: &CommandOutput) -> Result<Vec<(String, GridJobState)>, QueueError> {
    if !output.success() {
        return Err(output.exit_error());
    }
    let bad = |message: String| QueueError::parse(&output.program, message);
    let text = output.stdout.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| bad(format!("not JSON ({e}): {:?}", shorten(text))))?;
    let Value::Array(ads) = value else {
        return Err(bad(format!(
            "expected a JSON list of ads, got {:?}",
            shorten(text)
        )));
    };
    let mut jobs = Vec::with_capacity(ads.len());
    for ad in &ads {
        let int = |name: &str| ad.get(name).and_then(Value::as_i64);
        let (Some(cluster), Some(proc), Some(job_status)) =
            (int("ClusterId"), int("ProcId"), int("JobStatus"))
        else {
            return Err(bad(format!(
                "an ad without integer ClusterId, ProcId and JobStatus: {}",
                shorten(&ad.to_string())
            )));
        };
        jobs.push((format!("{cluster}.{proc}"), job_state(job_status, ad)));
    }
    Ok(jobs)
}

/// The grid state of a job ad with `JobStatus` `code`.
fn job_state(code: i64, ad: &Value) -> GridJobState {
    let text = |name: &str| ad.get(name).and_then(Value::as_str).map(str::to_string);
    match code {
        1 | 7 => GridJobState::Queued,
        2 | 6 => GridJobState::Processing,
        3 => GridJobState::Error {
            reason: match text("RemoveReason") {
                Some(why) if !why.is_empty() => format!("removed: {why}"),
                _ => "removed".to_string(),
            },
        },
        4 => {
            if ad.get("ExitBySignal").and_then(Value::as_bool) == Some(true) {
                let signal = ad.get("ExitSignal").and_then(Value::as_i64);
                GridJobState::Error {
                    reason: match signal {
                        Some(s) => format!("killed by signal {s}"),
                        None => "killed by a signal".to_string(),
                    },
                }
            } else {
                let exit_code = ad
                    .get("ExitCode")
                    .and_then(Value::as_i64)
                    .and_then(|c| i32::try_from(c).ok());
                GridJobState::Completed { exit_code }
            }
        }
        5 => GridJobState::Error {
            reason: match text("HoldReason") {
                Some(why) if !why.is_empty() => why,
                _ => "held".to_string(),
            },
        },
        _ => GridJobState::Unknown,
    }
}

/// A character no submit file value can hold.
fn has_unwritable(s: &str) -> bool {
    s.contains(['\n', '\r', '\0'])
}

/// `value` with every `$` written `$(DOLLAR)`, which condor_submit expands to a literal `$`.
pub fn macro_escape(value: &str) -> String {
    value.replace('$', "$(DOLLAR)")
}

/// One word of condor's new-syntax list: `"` doubled; single quotes (with `'` doubled) around a
/// word that is empty or has blanks or `'`; `$` escaped from macro expansion.
fn quote_word(word: &str) -> String {
    let needs_quotes = word.is_empty() || word.contains([' ', '\t', '\'']);
    let body = macro_escape(&word.replace('"', "\"\""));
    if needs_quotes {
        format!("'{}'", body.replace('\'', "''"))
    } else {
        body
    }
}

/// `"A 'B C' …"`: the `arguments` value for argv `args`.
pub fn quote_arguments(args: &[String]) -> String {
    let words: Vec<String> = args.iter().map(|a| quote_word(a)).collect();
    format!("\"{}\"", words.join(" "))
}

/// `"NAME=VALUE NAME='V W' …"`: the `environment` value.
pub fn quote_environment(env: &[(String, String)]) -> String {
    let pairs: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{}={}", macro_escape(k), quote_word(v)))
        .collect();
    format!("\"{}\"", pairs.join(" "))
}

/// `word` for `printf %b`: `\` doubled, newline `\n`, carriage return `\r`, NUL dropped (no
/// argv can hold one).
fn printf_escape(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\0' => {}
            c => out.push(c),
        }
    }
    out
}

/// Disk in KB for `request_disk` (the job's disk is in GB): rounded up, at least 1.
pub fn disk_kb(gb: f64) -> u64 {
    at_least_one((gb * 1024.0 * 1024.0).ceil())
}
