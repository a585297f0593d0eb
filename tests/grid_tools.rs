//! Hostile grid tools through the real binary: `sbatch` and `squeue` that fail, print
//! garbage or hang. These stand-ins are fault injection, not a mock of Slurm (the real Slurm
//! runs in `grid_slurm.rs`): each is a small script in the grid's `bin_dir` whose behaviour
//! the test switches through a file. Whatever the tool does, no task changes state because
//! of it, nothing is lost, and the error shows in `iceprod ctl status`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::grids::{queue_config, shell_dataset, states, submit, value};
use common::{wait_until, Server};

const WAIT: Duration = Duration::from_secs(60);

/// Writes `bin/TOOL`: a script that acts as `bin/TOOL.mode` says.
fn tool(bin: &Path, name: &str, cases: &str) {
    let script = format!(
        "#!/bin/sh\nmode=$(cat \"$(dirname \"$0\")/{name}.mode\")\ncase \"$mode\" in\n{cases}\nesac\n"
    );
    let path = bin.join(name);
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn set_mode(bin: &Path, name: &str, mode: &str) {
    std::fs::write(bin.join(format!("{name}.mode")), mode).unwrap();
}

fn last_error(server: &Server) -> String {
    server.status()["grids"][0]["last_error"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Waits until the grid's last error contains `text`, and the `ctl status` table shows it.
fn wait_error(server: &Server, text: &str) {
    assert!(
        wait_until(WAIT, || last_error(server).contains(text)),
        "no grid error with {text:?}; grids {}",
        server.status()["grids"]
    );
    let (ok, out, _) = server.ctl(&["status"]);
    assert!(
        ok && out.contains(text),
        "ctl status does not show {text:?}:\n{out}"
    );
}

/// Lets two more cycles run, so a wrong state change would have happened.
fn two_cycles(server: &Server) {
    let cycles = |s: &Server| s.status()["grids"][0]["cycles"].as_u64().unwrap_or(0);
    let now = cycles(server);
    assert!(wait_until(WAIT, || cycles(server) >= now + 2));
}

#[test]
fn failing_or_garbled_grid_tools_change_no_task_state() {
    let bin = tempfile::tempdir().unwrap();
    let b = bin.path();
    tool(
        b,
        "sbatch",
        "fail) echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2; exit 1;;\n\
         garbage) echo '<html>503 Service Unavailable</html>';;\n\
         ok) echo 4242;;",
    );
    tool(
        b,
        "squeue",
        "running) echo '4242|RUNNING|None';;\n\
         garbage) printf '%%%%@@ \\001\\002 not a table\\n';;\n\
         hang) sleep 60;;\n\
         fail) echo 'squeue: error: slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1;;",
    );
    set_mode(b, "sbatch", "fail");
    set_mode(b, "squeue", "running");
    let grid = format!(
        "[queue.grids.batch]\ntype = \"slurm\"\nbin_dir = \"{}\"\ntasks_on_queue = [1, 1, 1]\n",
        b.display()
    );
    let server = Server::start(&queue_config("command_timeout = \"1s\"", &grid));
    let dataset = submit(&server, shell_dataset("hostile", "true"), 1);

    // A submission refused: the task goes back to be retried, no failure counted.
    wait_error(&server, "Invalid partition name");
    two_cycles(&server);
    let s = states(&server, &dataset);
    assert_eq!(s.values().sum::<i64>(), 1, "{s:?}");
    assert!(
        !s.contains_key("failed") && !s.contains_key("suspended"),
        "{s:?}"
    );
    assert_eq!(value::<i64>(&server, "SELECT failures FROM task"), 0);

    // A submission that prints no job id is an error, not a recorded garbage id.
    set_mode(b, "sbatch", "garbage");
    wait_error(&server, "sbatch");
    assert_eq!(
        value::<i64>(
            &server,
            "SELECT count(*) FROM task WHERE grid_queue_id IS NOT NULL"
        ),
        0
    );

    // Submitted for real: the task waits on the grid under its id.
    set_mode(b, "sbatch", "ok");
    assert!(wait_until(WAIT, || value::<Option<String>>(
        &server,
        "SELECT grid_queue_id FROM task"
    )
    .as_deref()
        == Some("4242")));
    let unchanged = |server: &Server| {
        let (status, id, failures): (String, String, i64) = common::db(server)
            .query_row(
                "SELECT status, grid_queue_id, failures FROM task",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (status.as_str(), id.as_str(), failures),
            ("queued", "4242", 0)
        );
    };
    two_cycles(&server);
    unchanged(&server);

    // The status tool prints garbage, hangs past the timeout, exits non-zero: each time the
    // error is shown and the task stays exactly as it was.
    for (mode, shown) in [
        ("garbage", "cannot read the output of"),
        ("hang", "did not finish within 1 s"),
        ("fail", "Unable to contact slurm controller"),
    ] {
        set_mode(b, "squeue", mode);
        wait_error(&server, shown);
        two_cycles(&server);
        unchanged(&server);
    }

    // The tool recovers: the error clears at the next clean cycle.
    set_mode(b, "squeue", "running");
    assert!(
        wait_until(WAIT, || last_error(&server).is_empty()),
        "{}",
        server.status()["grids"]
    );
    unchanged(&server);
}

/// A `tests/fixtures` file.
fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn a_held_condor_job_resets_its_task_with_the_hold_reason() {
    // HTCondor cannot run here. condor_submit replays the recorded output of a real
    // condor_submit (cluster 19); condor_q answers that job 19.0 is held, in the JSON
    // layout condor_q -json prints.
    let bin = tempfile::tempdir().unwrap();
    let b = bin.path();
    std::fs::write(b.join("submit.out"), fixture("condor/condor_submit.stdout")).unwrap();
    let held = r#"[
{
  "ClusterId": 19,
  "ProcId": 0,
  "JobStatus": 5,
  "HoldReason": "Error from slot1@worker: Job has gone over memory limit of 512 megabytes."
}
]
"#;
    std::fs::write(b.join("q.json"), held).unwrap();
    tool(
        b,
        "condor_submit",
        "*) cat \"$(dirname \"$0\")/submit.out\";;",
    );
    tool(b, "condor_q", "*) cat \"$(dirname \"$0\")/q.json\";;");
    tool(b, "condor_history", "*) echo '[]';;");
    tool(
        b,
        "condor_rm",
        "*) echo 'All jobs in cluster 19 have been marked for removal';;",
    );
    for name in ["condor_submit", "condor_q", "condor_history", "condor_rm"] {
        set_mode(b, name, "any");
    }
    let grid = format!(
        "[queue.grids.pool]\ntype = \"condor\"\nbin_dir = \"{}\"\ntasks_on_queue = [1, 1, 1]\n",
        b.display()
    );
    let server = Server::start(&queue_config("max_resets = 2", &grid));
    let dataset = submit(&server, shell_dataset("held", "true"), 1);
    common::grids::wait_for(&server, &dataset, "failed", 1, WAIT);
    // Each hold counted as an error of the task, with the grid's reason kept.
    assert_eq!(value::<i64>(&server, "SELECT failures FROM task"), 2);
    let stats: String = value(
        &server,
        "SELECT group_concat(stat) FROM task_stat WHERE error = 1",
    );
    assert!(stats.contains("gone over memory limit"), "{stats}");
    assert!(stats.contains("19.0"), "{stats}");
    assert!(
        last_error(&server).is_empty(),
        "{}",
        server.status()["grids"]
    );
}
