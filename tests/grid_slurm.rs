//! Datasets run end to end on a real Slurm (started by `scripts/slurm.sh`, found through
//! `ICEPROD_TEST_SLURM_CONF`), through the `slurm` plugin and through the `pbs` plugin on
//! Slurm's Torque wrappers. Without the variable the tests say so and pass, unless
//! `ICEPROD_REQUIRE_SLURM=1` (set by `scripts/test-all.sh`) makes them fail.

mod common;

use std::process::Command;
use std::time::Duration;

use common::grids::{queue_config, shell_dataset, states, submit, value, wait_for};
use common::{example, wait_until, Server};

const RUN: Duration = Duration::from_secs(120);

fn slurm_conf() -> Option<String> {
    match std::env::var("ICEPROD_TEST_SLURM_CONF") {
        Ok(conf) if !conf.is_empty() => Some(conf),
        _ => {
            assert!(
                std::env::var("ICEPROD_REQUIRE_SLURM").as_deref() != Ok("1"),
                "ICEPROD_REQUIRE_SLURM=1 but ICEPROD_TEST_SLURM_CONF is not set \
                 (scripts/slurm.sh start DIR prints it)"
            );
            eprintln!("skipped: no Slurm (set ICEPROD_TEST_SLURM_CONF; scripts/test-all.sh does)");
            None
        }
    }
}

fn start(conf: &str, kind: &str, queue: &str) -> Server {
    let grid = format!(
        "[queue.grids.batch]\ntype = \"{kind}\"\ntasks_on_queue = [1, 10, 10]\n\
         resources = {{ cpu = 1, memory = 2.0, disk = 10.0, time = 1.0 }}\n"
    );
    Server::start_with_env(
        |port| common::base_config(port, "", &queue_config(queue, &grid)),
        &[("SLURM_CONF", conf)],
    )
}

#[test]
fn the_example_dataset_runs_to_complete_on_slurm() {
    let Some(conf) = slurm_conf() else { return };
    let server = start(&conf, "slurm", "");
    let dataset = submit(&server, example("two-tasks.json"), 2);
    wait_for(&server, &dataset, "complete", 4, RUN);
    // Every task went through sbatch: numeric Slurm job ids were recorded.
    let ids: String = value(&server, "SELECT group_concat(grid_queue_id) FROM task");
    assert!(
        ids.split(',').all(|id| id.parse::<u64>().is_ok()),
        "grid ids {ids}"
    );
    let grid = &server.status()["grids"][0];
    assert!(grid["last_error"].is_null(), "{grid}");
}

#[test]
fn a_dataset_runs_to_complete_through_the_pbs_wrappers() {
    let Some(conf) = slurm_conf() else { return };
    let server = start(&conf, "pbs", "");
    let dataset = submit(&server, example("two-tasks.json"), 2);
    wait_for(&server, &dataset, "complete", 4, RUN);
    let grid = &server.status()["grids"][0];
    assert_eq!(grid["type"], "pbs");
    assert!(grid["last_error"].is_null(), "{grid}");
}

#[test]
fn a_cancelled_batch_job_is_reset_and_run_again() {
    let Some(conf) = slurm_conf() else { return };
    let server = start(&conf, "slurm", "");
    let mark = server.dir.path().join("first-attempt");
    let m = mark.display();
    let script = format!("if [ -e {m} ]; then exit 0; fi; touch {m}; sleep 120");
    let dataset = submit(&server, shell_dataset("cancelled", &script), 1);
    assert!(
        wait_until(RUN, || mark.exists()),
        "first attempt never ran: {:?}",
        states(&server, &dataset)
    );
    let job: String = value(&server, "SELECT grid_queue_id FROM task");
    let out = Command::new("scancel")
        .arg(&job)
        .env("SLURM_CONF", &conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_for(&server, &dataset, "complete", 1, RUN);
    let again: String = value(&server, "SELECT grid_queue_id FROM task");
    assert_ne!(again, job, "the task ran again as another Slurm job");
    let stats: String = value(
        &server,
        "SELECT group_concat(stat) FROM task_stat WHERE error = 1",
    );
    // scancel signals every process of the job: the worker reports the kill itself, as its
    // own SIGTERM or as its module's signal, whichever it sees first (had it died silently,
    // the grid's "cancelled" would be recorded).
    assert!(
        stats.contains("killed by SIGTERM")
            || stats.contains("killed by signal 15")
            || stats.to_lowercase().contains("cancel"),
        "{stats}"
    );
    assert_eq!(value::<i64>(&server, "SELECT failures FROM task"), 1);
}

#[test]
fn a_missing_grid_tool_is_an_error_shown_and_nothing_is_lost() {
    // Needs no Slurm: the tools are looked for in an empty folder.
    let dir = tempfile::tempdir().unwrap();
    let grid = format!(
        "[queue.grids.batch]\ntype = \"slurm\"\nbin_dir = \"{}\"\n",
        dir.path().display()
    );
    let server = Server::start_with(|port| common::base_config(port, "", &queue_config("", &grid)));
    let dataset = submit(&server, shell_dataset("never", "true"), 2);
    assert!(
        wait_until(RUN, || server.status()["grids"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("sbatch") && e.contains("not found"))),
        "{}",
        server.status()
    );
    // The tasks wait to be retried; no failure counted, none lost.
    let s = states(&server, &dataset);
    assert_eq!(s.values().sum::<i64>(), 2, "{s:?}");
    assert!(
        !s.contains_key("failed") && !s.contains_key("complete"),
        "{s:?}"
    );
    assert_eq!(value::<i64>(&server, "SELECT sum(failures) FROM task"), 0);
    let (ok, out, _) = server.ctl(&["status"]);
    assert!(ok && out.contains("sbatch"), "{out}");
}
