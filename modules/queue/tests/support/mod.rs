//! What the grid plugin tests share: a grid config, a job, recorded and made-up tool outputs.
//! Each test file includes it with `mod support;` and uses the part it needs.

// Every test file is its own crate and uses only some of these.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use iceprod_queue::grids::{CommandOutput, GridJobState, SubmitJob};
use iceprod_queue::QueueError;
use iceprod_runtime::config::{GridConfig, GridResources, GridType, OnQueue};
use iceprod_runtime::Resources;

/// A grid of type `kind` with the settings a plugin reads: `queue`, `batchopts`, `bin_dir`
/// (no endpoint; the rest are fixed values no plugin reads).
pub fn grid(
    kind: GridType,
    queue: Option<&str>,
    batchopts: &[(&str, &str)],
    bin_dir: Option<&str>,
) -> GridConfig {
    let on_queue = OnQueue {
        min: 0,
        max: 10,
        change: 5,
    };
    GridConfig {
        name: "cluster".into(),
        kind,
        tasks_on_queue: on_queue,
        submit_pilots: false,
        pilots_on_queue: on_queue,
        max_running: 1,
        max_task_waiting_time: Duration::from_secs(3600),
        max_task_queued_time: Duration::from_secs(3600),
        max_task_processing_time: Duration::from_secs(3600),
        resources: GridResources::default(),
        batchopts: batchopts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        queue: queue.map(str::to_string),
        endpoint: None,
        bin_dir: bin_dir.map(PathBuf::from),
    }
}

/// One job (count 1) in `dir` running `command` with `env`, asking for `resources`.
pub fn job(
    dir: impl Into<PathBuf>,
    name: &str,
    command: &[&str],
    env: &[(&str, &str)],
    resources: Resources,
) -> SubmitJob {
    SubmitJob {
        dir: dir.into(),
        name: name.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        resources,
        count: 1,
    }
}

/// What a job asks for: cpus, gpus, memory and disk (GB), time (hours).
pub fn resources(cpu: u32, gpu: u32, memory: f64, disk: f64, time: f64) -> Resources {
    Resources {
        cpu,
        gpu,
        memory,
        disk,
        time,
    }
}

/// The text of `tests/fixtures/FOLDER/NAME`.
pub fn fixture_text(folder: &str, name: &str) -> String {
    let path = fixtures(folder).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A recorded output of `program` in `tests/fixtures/FOLDER`: `NAME.stdout`, `NAME.stderr`,
/// `NAME.exit`.
pub fn recorded(folder: &str, name: &str, program: &str) -> CommandOutput {
    let dir = fixtures(folder);
    let read = |ext: &str| {
        std::fs::read_to_string(dir.join(format!("{name}.{ext}")))
            .unwrap_or_else(|e| panic!("fixture {name}.{ext}: {e}"))
    };
    CommandOutput {
        program: program.into(),
        code: Some(read("exit").trim().parse().unwrap()),
        stdout: read("stdout"),
        stderr: read("stderr"),
    }
}

fn fixtures(folder: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(folder)
}

/// What `program` printed, exiting with `code`.
pub fn output(program: &str, code: i32, stdout: &str, stderr: &str) -> CommandOutput {
    CommandOutput {
        program: program.into(),
        code: Some(code),
        stdout: stdout.into(),
        stderr: stderr.into(),
    }
}

/// Grid ids from string literals.
pub fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The error state with `reason`.
pub fn error(reason: &str) -> GridJobState {
    GridJobState::Error {
        reason: reason.into(),
    }
}

/// Whether `result` is a parse error (output that is not what the tool prints).
pub fn is_parse_error(result: Result<impl std::fmt::Debug, QueueError>) -> bool {
    matches!(result, Err(QueueError::Parse { .. }))
}
