//! The slurm and pbs plugins against a real Slurm: the one `scripts/slurm.sh` starts and
//! `scripts/test-all.sh` names in `ICEPROD_TEST_SLURM_CONF`. Each test writes the plugin's
//! submit file, runs the plugin's own commands (sbatch/squeue/scontrol/sacct/scancel, and the
//! torque wrappers qsub/qstat/qdel) with `std::process::Command`, and polls until the state it
//! expects. Without the variable the tests skip with a note, unless `ICEPROD_REQUIRE_SLURM=1`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use iceprod_queue::grids::pbs::Pbs;
use iceprod_queue::grids::slurm::Slurm;
use iceprod_queue::grids::{BatchPlugin, CommandOutput, CommandSpec, GridJobState, SubmitJob};
use iceprod_runtime::config::{GridConfig, GridType};

/// The test Slurm's slurm.conf, or `None` (after a note) when the tests should skip.
fn slurm_conf() -> Option<PathBuf> {
    match std::env::var_os("ICEPROD_TEST_SLURM_CONF") {
        Some(conf) if !conf.is_empty() => Some(PathBuf::from(conf)),
        _ => {
            if std::env::var("ICEPROD_REQUIRE_SLURM").as_deref() == Ok("1") {
                panic!(
                    "ICEPROD_REQUIRE_SLURM=1 but ICEPROD_TEST_SLURM_CONF is not set: start one \
                     with scripts/slurm.sh start DIR"
                );
            }
            eprintln!(
                "note: skipping the real-Slurm test: ICEPROD_TEST_SLURM_CONF is not set \
                 (scripts/slurm.sh start DIR prints it)"
            );
            None
        }
    }
}

fn grid(kind: GridType) -> GridConfig {
    support::grid(kind, None, &[], None)
}

/// A one-CPU job in a fresh folder under `root` running `sh -c SCRIPT`.
fn job(root: &Path, folder: &str, script: &str) -> SubmitJob {
    let dir = root.join(folder);
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!(
        "iceprod.{}",
        folder.replace(|c: char| !c.is_alphanumeric(), "")
    );
    let command = ["/bin/sh", "-c", script];
    let env = [("ICEPROD_GREETING", "hello 'there' $HOME")];
    support::job(
        dir,
        &name,
        &command,
        &env,
        support::resources(1, 0, 0.1, 1.0, 0.5),
    )
}

fn run(spec: &CommandSpec, conf: &Path) -> CommandOutput {
    let mut command = Command::new(&spec.program);
    command.args(&spec.args).env("SLURM_CONF", conf);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    command.envs(spec.env.iter().map(|(k, v)| (k, v)));
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {spec:?}: {e}"));
    CommandOutput {
        program: spec.program.clone(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Writes the submit file, submits it and returns the grid id.
fn submit(plugin: &dyn BatchPlugin, job: &SubmitJob, conf: &Path) -> String {
    let (name, text) = plugin.submit_file(job);
    std::fs::write(job.dir.join(&name), text).unwrap();
    let out = run(&plugin.submit_command(job, &name), conf);
    let ids = plugin
        .parse_submit(&out)
        .unwrap_or_else(|e| panic!("submit failed: {e}; {out:?}"));
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids.into_iter().next().unwrap()
}

/// One whole status query about `id`, step by step as the queue module runs it.
fn state_of(plugin: &dyn BatchPlugin, id: &str, conf: &Path) -> Option<GridJobState> {
    let ids = vec![id.to_string()];
    let mut done = Vec::new();
    while let Some(step) = plugin.status_step(&ids, &done) {
        done.push(run(&step, conf));
        assert!(done.len() < 50, "the status query does not end: {done:?}");
    }
    let status = plugin
        .parse_status(&ids, &done)
        .unwrap_or_else(|e| panic!("status of {id} failed: {e}; {done:?}"));
    status.get(id).cloned()
}

/// Polls until `wanted` accepts the job's state (at most 60 s); returns that state.
fn wait_for(
    plugin: &dyn BatchPlugin,
    id: &str,
    conf: &Path,
    wanted: impl Fn(&GridJobState) -> bool,
) -> GridJobState {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        last = state_of(plugin, id, conf);
        if let Some(state) = &last {
            if wanted(state) {
                return state.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("job {id} did not reach the wanted state within 60 s; last {last:?}");
}

fn finished(state: &GridJobState) -> bool {
    matches!(
        state,
        GridJobState::Completed { .. } | GridJobState::Error { .. }
    )
}

fn scratch() -> tempfile::TempDir {
    // A space, a quote, `$` and `%` in the path: the submit files must survive them.
    tempfile::Builder::new()
        .prefix("iceprod slurm 'x' $y %z ")
        .tempdir()
        .unwrap()
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn slurm_job_runs_to_completed_with_its_output_in_the_submit_folder() {
    let Some(conf) = slurm_conf() else { return };
    let root = scratch();
    let slurm = Slurm::new(&grid(GridType::Slurm));
    let j = job(root.path(), "ok one", "echo \"$ICEPROD_GREETING\"; pwd");
    let id = submit(&slurm, &j, &conf);
    let state = wait_for(&slurm, &id, &conf, finished);
    assert_eq!(state, GridJobState::Completed { exit_code: Some(0) });
    let out = read(j.dir.join("job.out"));
    assert_eq!(
        out,
        format!("hello 'there' $HOME\n{}\n", j.dir.display()),
        "the job ran in its folder with its environment"
    );
}

#[test]
fn slurm_job_exiting_3_is_an_error_with_its_exit_code() {
    let Some(conf) = slurm_conf() else { return };
    let root = scratch();
    let slurm = Slurm::new(&grid(GridType::Slurm));
    let j = job(root.path(), "exit3", "echo failing >&2; exit 3");
    let id = submit(&slurm, &j, &conf);
    let state = wait_for(&slurm, &id, &conf, finished);
    // squeue lists it as FAILED (NonZeroExitCode); the exit code comes from scontrol only
    // when squeue no longer lists the job.
    match &state {
        GridJobState::Error { reason } => assert!(reason.starts_with("FAILED"), "{reason}"),
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(read(j.dir.join("job.err")), "failing\n");
}

#[test]
fn slurm_running_job_removed_with_scancel_is_cancelled() {
    let Some(conf) = slurm_conf() else { return };
    let root = scratch();
    let slurm = Slurm::new(&grid(GridType::Slurm));
    let j = job(root.path(), "sleeper", "sleep 300");
    let id = submit(&slurm, &j, &conf);
    wait_for(&slurm, &id, &conf, |s| *s == GridJobState::Processing);
    let out = run(
        &slurm.remove_command(std::slice::from_ref(&id)).unwrap(),
        &conf,
    );
    assert!(out.success(), "{out:?}");
    let state = wait_for(&slurm, &id, &conf, finished);
    assert_eq!(
        state,
        GridJobState::Error {
            reason: "cancelled".into()
        }
    );
}

#[test]
fn slurm_job_the_controller_never_knew_is_left_out() {
    let Some(conf) = slurm_conf() else { return };
    let slurm = Slurm::new(&grid(GridType::Slurm));
    // squeue does not list it, scontrol says "Invalid job id specified", sacct has no
    // slurmdbd: the query succeeds and the job is absent.
    assert_eq!(state_of(&slurm, "999999", &conf), None);
}

#[test]
fn pbs_job_through_the_torque_wrappers_runs_to_completed() {
    let Some(conf) = slurm_conf() else { return };
    let root = scratch();
    let pbs = Pbs::new(&grid(GridType::Pbs));
    let j = job(root.path(), "pbs ok", "echo \"$ICEPROD_GREETING\"; pwd");
    let id = submit(&pbs, &j, &conf);
    assert!(id.bytes().all(|b| b.is_ascii_digit()), "{id}");
    let state = wait_for(&pbs, &id, &conf, finished);
    // The wrappers' qstat -f has no exit_status.
    assert_eq!(state, GridJobState::Completed { exit_code: None });
    let out = read(j.dir.join("job.out"));
    assert_eq!(out, format!("hello 'there' $HOME\n{}\n", j.dir.display()));
}

#[test]
fn pbs_job_exiting_3_completes_through_the_wrappers() {
    let Some(conf) = slurm_conf() else { return };
    let root = scratch();
    let pbs = Pbs::new(&grid(GridType::Pbs));
    let j = job(root.path(), "pbs3", "echo failing >&2; exit 3");
    let id = submit(&pbs, &j, &conf);
    // The wrappers show every finished job as C, with no exit status.
    let state = wait_for(&pbs, &id, &conf, finished);
    assert_eq!(state, GridJobState::Completed { exit_code: None });
    assert_eq!(read(j.dir.join("job.err")), "failing\n");
}

#[test]
fn pbs_running_job_removed_with_qdel_leaves_the_running_state() {
    let Some(conf) = slurm_conf() else { return };
    let root = scratch();
    let pbs = Pbs::new(&grid(GridType::Pbs));
    let j = job(root.path(), "pbs sleeper", "sleep 300");
    let id = submit(&pbs, &j, &conf);
    wait_for(&pbs, &id, &conf, |s| *s == GridJobState::Processing);
    let out = run(
        &pbs.remove_command(std::slice::from_ref(&id)).unwrap(),
        &conf,
    );
    assert!(out.success(), "{out:?}");
    // The wrappers show a cancelled job as C.
    let state = wait_for(&pbs, &id, &conf, finished);
    assert_eq!(state, GridJobState::Completed { exit_code: None });
}
