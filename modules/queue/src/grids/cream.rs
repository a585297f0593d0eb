//! The CREAM CE plugin (SPEC §6): a JDL file, `glite-ce-job-submit -a -r ENDPOINT` to submit,
//! `glite-ce-job-status -L 0` to read states, `glite-ce-job-cancel -N` to remove. Pure like
//! every plugin: it names commands and reads what they printed.
//!
//! The grid id of a job is the URL glite-ce-job-submit prints
//! (`https://HOST:8443/CREAM123456789`). `-a` delegates the user's proxy automatically; the
//! endpoint (`HOST:8443/cream-LRMS-QUEUE`) is the grid's `endpoint`.
//!
//! glite-ce-job-status prints one block per job:
//! ```text
//! ******  JobID=[https://ce.example:8443/CREAM123456789]
//!         Status        = [DONE-FAILED]
//!         ExitCode      = [1]
//!         FailureReason = [reason]
//! ```
//! States: REGISTERED, PENDING, IDLE → queued; RUNNING, REALLY-RUNNING → processing; DONE-OK →
//! completed (with `ExitCode` when shown); DONE-FAILED, ABORTED → error with the
//! `FailureReason` (or `Description`); CANCELLED → error `cancelled`; HELD → error (held counts
//! as error) with its reason; anything else (UNKNOWN, PURGED) → unknown. A job the CE does not
//! know is reported on stderr; it is left out of the map. Output that is not made of such
//! blocks is an error for the cycle, never a state change.
//!
//! The JDL is a ClassAd: strings are `"…"` with `\` escapes. CREAM's job wrapper splits
//! `Arguments` as a POSIX shell would, so every argument is shell-quoted first.

use iceprod_runtime::config::{GridConfig, GridType};
use std::collections::{BTreeMap, HashSet};

use super::{memory_mb, one_line, shell_quote, shorten, time_minutes, BatchPlugin, CommandOutput};
use super::{CommandSpec, GridJobState, GridStatus};
use super::{StatusWalk, SubmitJob, Tools};
use crate::error::QueueError;

/// The JDL file's name in the submit folder.
pub const SUBMIT_FILE: &str = "iceprod.jdl";
/// The job's stdout and stderr (in the output sandbox, kept on the CE).
pub const STDOUT_FILE: &str = "job.out";
pub const STDERR_FILE: &str = "job.err";

pub struct Cream {
    tools: Tools,
    endpoint: Option<String>,
    batchopts: BTreeMap<String, String>,
}

impl Cream {
    pub fn new(grid: &GridConfig) -> Cream {
        Cream {
            tools: Tools::new(grid),
            endpoint: grid.endpoint.clone(),
            batchopts: grid.batchopts.clone(),
        }
    }
}

impl BatchPlugin for Cream {
    fn kind(&self) -> GridType {
        GridType::Cream
    }

    fn submit_file(&self, job: &SubmitJob) -> (String, String) {
        let r = &job.resources;
        let program = job.command.first().map(String::as_str).unwrap_or("");
        let args: Vec<String> = job
            .command
            .get(1..)
            .unwrap_or(&[])
            .iter()
            .map(|a| shell_quote(a))
            .collect();
        let mut attrs: Vec<(String, String)> = vec![
            ("Type".into(), classad_string("Job")),
            ("JobType".into(), classad_string("Normal")),
            ("Executable".into(), classad_string(program)),
            ("Arguments".into(), classad_string(&args.join(" "))),
            ("StdOutput".into(), classad_string(STDOUT_FILE)),
            ("StdError".into(), classad_string(STDERR_FILE)),
            (
                "OutputSandbox".into(),
                classad_list([STDOUT_FILE, STDERR_FILE].iter().copied()),
            ),
            // Keeps the output sandbox on the CE, for glite-ce-job-output.
            (
                "OutputSandboxBaseDestURI".into(),
                classad_string("gsiftp://localhost"),
            ),
        ];
        if !job.env.is_empty() {
            let pairs: Vec<String> = job.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            attrs.push((
                "Environment".into(),
                classad_list(pairs.iter().map(String::as_str)),
            ));
        }
        let cpus = r.cpu.max(1);
        attrs.push(("CpuNumber".into(), cpus.to_string()));
        attrs.push(("SMPGranularity".into(), cpus.to_string()));
        if r.gpu > 0 {
            attrs.push(("GPUNumber".into(), r.gpu.to_string()));
        }
        // Forwarded by BLAH to the CE's batch system.
        let ce_requirements = format!(
            "other.GlueHostMainMemoryRAMSize >= {} && other.GlueCEPolicyMaxWallClockTime >= {}",
            memory_mb(r.memory),
            time_minutes(r.time)
        );
        attrs.push(("CERequirements".into(), classad_string(&ce_requirements)));
        for (key, value) in &self.batchopts {
            // Written as the operator spelled them (JDL expressions), one line each.
            attrs.push((one_line(key).trim().to_string(), one_line(value)));
        }
        let mut text = String::from("[\n");
        for (key, value) in &attrs {
            text.push_str(&format!("  {key} = {value};\n"));
        }
        text.push_str("]\n");
        (SUBMIT_FILE.to_string(), text)
    }

    fn submit_command(&self, job: &SubmitJob, file: &str) -> CommandSpec {
        let endpoint = self.endpoint.clone().unwrap_or_default();
        let mut spec = CommandSpec::new(
            &self.tools.path("glite-ce-job-submit"),
            &["-a", "-r", &endpoint, file],
        );
        spec.cwd = Some(job.dir.clone());
        spec
    }

    fn parse_submit(&self, output: &CommandOutput) -> Result<Vec<String>, QueueError> {
        if !output.success() {
            return Err(output.exit_error());
        }
        let urls: Vec<&str> = output
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("https://"))
            .collect();
        match urls[..] {
            [url] if is_job_url(url) => Ok(vec![url.to_string()]),
            _ => Err(QueueError::parse(
                &output.program,
                format!("expected one job URL, got {:?}", shorten(&output.stdout)),
            )),
        }
    }

    /// Walks the outputs of the status query, one `glite-ce-job-status` call: the states found
    /// and the call when it has not run yet. An error ends the query.
    fn walk_status(
        &self,
        ids: &[String],
        outputs: &[CommandOutput],
    ) -> Result<StatusWalk, QueueError> {
        let mut status = GridStatus::new();
        if ids.is_empty() {
            return Ok((status, None));
        }
        let Some(output) = outputs.first() else {
            let query = self.tools.on_ids("glite-ce-job-status", &["-L", "0"], ids);
            return Ok((status, query));
        };
        if !output.success() && !only_unknown_jobs(output) {
            return Err(output.exit_error());
        }
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        for (id, state) in parse_blocks(output)? {
            if wanted.contains(id.as_str()) {
                status.insert(id, state);
            }
        }
        Ok((status, None))
    }

    fn remove_command(&self, ids: &[String]) -> Option<CommandSpec> {
        self.tools.on_ids("glite-ce-job-cancel", &["-N"], ids)
    }
}

/// `https://HOST[:PORT]/CREAMdigits`.
fn is_job_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("https://") else {
        return false;
    };
    let Some((host, path)) = rest.split_once('/') else {
        return false;
    };
    let digits = path.strip_prefix("CREAM").unwrap_or("");
    !host.is_empty() && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A failed status call whose every error line is about a job the CE does not know: the jobs
/// it does know are still in stdout.
fn only_unknown_jobs(output: &CommandOutput) -> bool {
    let errors: Vec<&str> = output
        .stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    !errors.is_empty()
        && errors.iter().all(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("cream") && (l.contains("not found") || l.contains("unknown"))
        })
}

/// The `JobID=[…]` blocks of glite-ce-job-status: `(job URL, state)`.
fn parse_blocks(output: &CommandOutput) -> Result<Vec<(String, GridJobState)>, QueueError> {
    let bad = |line: &str| {
        QueueError::parse(
            &output.program,
            format!("unexpected line {:?}", shorten(line)),
        )
    };
    let mut blocks: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in output.stdout.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("******") {
            let (key, value) = bracketed(rest).ok_or_else(|| bad(line))?;
            if key != "JobID" || !value.starts_with("https://") {
                return Err(bad(line));
            }
            blocks.push((value, Vec::new()));
            continue;
        }
        let (key, value) = bracketed(trimmed).ok_or_else(|| bad(line))?;
        let Some((_, fields)) = blocks.last_mut() else {
            return Err(bad(line));
        };
        fields.push((key, value));
    }
    let mut jobs = Vec::with_capacity(blocks.len());
    for (id, fields) in blocks {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let Some(state) = get("Status") else {
            return Err(QueueError::parse(
                &output.program,
                format!("no Status for {id}"),
            ));
        };
        let exit_code = match get("ExitCode") {
            Some(code) if !code.is_empty() && code != "W" && code != "N/A" => {
                Some(code.parse::<i32>().map_err(|_| {
                    QueueError::parse(&output.program, format!("bad ExitCode {code:?} for {id}"))
                })?)
            }
            _ => None,
        };
        let reason = get("FailureReason")
            .filter(|r| !r.is_empty())
            .or(get("Description").filter(|r| !r.is_empty()));
        jobs.push((id, job_state(state, exit_code, reason)));
    }
    Ok(jobs)
}

/// `KEY = [VALUE]` (or `KEY=[VALUE]`).
fn bracketed(text: &str) -> Option<(String, String)> {
    let (key, value) = text.split_once('=')?;
    let key = key.trim();
    let value = value.trim().strip_prefix('[')?.strip_suffix(']')?;
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    Some((key.to_string(), value.trim().to_string()))
}

fn job_state(state: &str, exit_code: Option<i32>, reason: Option<&str>) -> GridJobState {
    let error = |fallback: &str| GridJobState::Error {
        reason: match reason {
            Some(r) => format!("{fallback}: {r}"),
            None => fallback.to_string(),
        },
    };
    match state {
        "REGISTERED" | "PENDING" | "IDLE" => GridJobState::Queued,
        "RUNNING" | "REALLY-RUNNING" => GridJobState::Processing,
        "DONE-OK" => GridJobState::Completed { exit_code },
        "DONE-FAILED" => match reason {
            Some(r) => GridJobState::Error {
                reason: r.to_string(),
            },
            None => match exit_code {
                Some(code) => GridJobState::Error {
                    reason: format!("done-failed with exit code {code}"),
                },
                None => GridJobState::Error {
                    reason: "done-failed".to_string(),
                },
            },
        },
        "ABORTED" => match reason {
            Some(r) => GridJobState::Error {
                reason: r.to_string(),
            },
            None => GridJobState::Error {
                reason: "aborted".to_string(),
            },
        },
        "CANCELLED" => GridJobState::Error {
            reason: "cancelled".to_string(),
        },
        "HELD" => error("held"),
        _ => GridJobState::Unknown,
    }
}

/// A ClassAd string literal: `"…"` with `\`, `"` and control characters escaped.
pub fn classad_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `{"A", "B"}`.
fn classad_list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.map(classad_string).collect();
    format!("{{{}}}", items.join(", "))
}
