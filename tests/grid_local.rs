//! Datasets run end to end on the `local` grid through the real binary: the queue module
//! buffers, queues and submits; `iceprod task` runs each task as a child process of the
//! server and reports over JSON-RPC; the db records every state.

mod common;

use std::time::Duration;

use common::grids::{queue_config, shell_dataset, states, submit, value, wait_for};
use common::{example, wait_until, Server};
use iceprod_runtime::session::session_members;
use serde_json::json;

const RUN: Duration = Duration::from_secs(90);

fn local_grid(name: &str, extra: &str) -> String {
    format!("[queue.grids.{name}]\ntype = \"local\"\nmax_running = 2\n{extra}\n")
}

#[test]
fn the_example_dataset_runs_to_complete_on_the_local_grid() {
    let server = Server::start(&queue_config("", &local_grid("local", "")));
    let dataset = submit(&server, example("two-tasks.json"), 3);
    wait_for(&server, &dataset, "complete", 6, RUN);
    // The schedule's completion job closes the jobs and the dataset.
    assert!(
        wait_until(RUN, || value::<String>(
            &server,
            &format!("SELECT status FROM dataset WHERE dataset_id = '{dataset}'")
        ) == "complete"),
        "{:?}",
        states(&server, &dataset)
    );
    assert_eq!(
        value::<i64>(
            &server,
            "SELECT count(*) FROM job WHERE status = 'complete'"
        ),
        3
    );
    // Each task reported: a stats row and its three logs.
    assert_eq!(
        value::<i64>(&server, "SELECT count(*) FROM task_stat WHERE error = 0"),
        6
    );
    assert_eq!(value::<i64>(&server, "SELECT count(*) FROM task_log"), 18);
    // The generate module wrote into its task folder; the filter saw its own dataset.
    let grid = &server.status()["grids"][0];
    assert_eq!(grid["submitted"], 6, "{grid}");
    assert!(grid["last_error"].is_null(), "{grid}");
}

#[test]
fn a_failing_module_is_retried_then_failed_at_max_resets() {
    let server = Server::start(&queue_config("max_resets = 3", &local_grid("local", "")));
    let dataset = submit(
        &server,
        shell_dataset("fails", "echo no good >&2; exit 3"),
        1,
    );
    wait_for(&server, &dataset, "failed", 1, RUN);
    assert_eq!(value::<i64>(&server, "SELECT failures FROM task"), 3);
    // Three attempts, each reported by the worker with its one-line reason.
    assert_eq!(
        value::<i64>(&server, "SELECT count(*) FROM task_stat WHERE error = 1"),
        3
    );
    let stat: String = value(&server, "SELECT stat FROM task_stat LIMIT 1");
    assert!(stat.contains("exited with 3"), "{stat}");
}

#[test]
fn a_dependency_runs_only_after_its_parent_completed() {
    let server = Server::start(&queue_config("", &local_grid("local", "")));
    let marks = server.dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let m = marks.display();
    // The parent takes a while; the child fails unless the parent's mark is there.
    let config = json!({
        "version": 3,
        "tasks": [
            {"name": "parent", "requirements": {"memory": 0.5, "disk": 0.5},
             "trays": [{"modules": [{"src": "/bin/sh",
                 "args": ["-c", format!("sleep 2; touch {m}/parent.$(job)")]}]}]},
            {"name": "child", "depends": ["parent"], "requirements": {"memory": 0.5, "disk": 0.5},
             "trays": [{"modules": [{"src": "/bin/sh",
                 "args": ["-c", format!("test -f {m}/parent.$(job) && touch {m}/child.$(job)")]}]}]}
        ]
    });
    let dataset = submit(&server, config, 2);
    wait_for(&server, &dataset, "complete", 4, RUN);
    // No child ever failed: it never ran before its parent had completed.
    assert_eq!(value::<i64>(&server, "SELECT sum(failures) FROM task"), 0);
    for job in 0..2 {
        assert!(marks.join(format!("child.{job}")).exists());
    }
}

#[test]
fn pilot_mode_runs_several_tasks_in_one_pilot() {
    let grid = local_grid(
        "pilots",
        "submit_pilots = true\npilots_on_queue = [1, 1, 1]\n\
         resources = { cpu = 4, memory = 4.0, disk = 10.0, time = 1.0 }\n",
    );
    let server = Server::start(&queue_config("", &grid));
    let dataset = submit(&server, shell_dataset("short", "sleep 1; echo done"), 6);
    wait_for(&server, &dataset, "complete", 6, RUN);
    let submit_dir = server.dir.path().join("var/submit/pilots");
    let folders: Vec<String> = std::fs::read_dir(&submit_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        folders.iter().all(|f| f.starts_with("pilot-")),
        "direct submissions in pilot mode: {folders:?}"
    );
    // At most one pilot on the queue at a time: six tasks cannot each have had their own.
    assert!(folders.len() < 6, "{folders:?}");
    // Every task ran under a pilot's passkey, not one of its own.
    assert_eq!(
        value::<i64>(&server, "SELECT count(*) FROM passkey WHERE scope = 'task'"),
        0
    );
}

#[test]
fn two_grids_share_one_dataset() {
    let grids = format!(
        "{}{}",
        local_grid("east", "tasks_on_queue = [1, 3, 3]"),
        local_grid("west", "tasks_on_queue = [1, 3, 3]")
    );
    let server = Server::start(&queue_config("", &grids));
    let dataset = submit(&server, shell_dataset("shared", "sleep 1"), 8);
    wait_for(&server, &dataset, "complete", 8, RUN);
    let site: String = server.status()["site_id"].as_str().unwrap().to_string();
    let used: String = value(
        &server,
        "SELECT group_concat(DISTINCT gridspec) FROM (SELECT gridspec FROM task ORDER BY gridspec)",
    );
    assert_eq!(used, format!("{site}.east,{site}.west"));
}

#[test]
fn a_job_that_dies_without_reporting_is_reset_and_run_again() {
    let server = Server::start(&queue_config("", &local_grid("local", "")));
    let mark = server.dir.path().join("first-attempt");
    let m = mark.display();
    // First attempt: note the worker's pid and wait to be killed; second attempt: succeed.
    let script = format!(
        "if [ -e {m} ]; then exit 0; fi; echo $$ $PPID > {m}.tmp; mv {m}.tmp {m}; sleep 60"
    );
    let dataset = submit(&server, shell_dataset("killed", &script), 1);
    assert!(
        wait_until(RUN, || mark.exists()),
        "the first attempt never started"
    );
    let pids = std::fs::read_to_string(&mark).unwrap();
    for pid in pids.split_whitespace() {
        let pid: i32 = pid.parse().unwrap();
        // SAFETY: kill(2) on the module and its worker, processes this test's server started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    wait_for(&server, &dataset, "complete", 1, RUN);
    // The grid's report of the killed job counted as an error of the task.
    assert_eq!(value::<i64>(&server, "SELECT failures FROM task"), 1);
    let stat: String = value(&server, "SELECT stat FROM task_stat WHERE error = 1");
    assert!(
        stat.contains("without the task reporting") || stat.contains("signal"),
        "{stat}"
    );
}

#[test]
fn a_grid_that_forgets_its_jobs_gets_their_tasks_reset() {
    // A restarted queue module forgets the local grid's jobs, as a batch system that lost
    // its state would: the tasks are reset once the grace passes, and run again.
    let server = Server::start(&queue_config(
        "lost_grace = \"2s\"",
        &local_grid("local", ""),
    ));
    let mark = server.dir.path().join("started");
    let m = mark.display();
    let script = format!("if [ -e {m} ]; then exit 0; fi; touch {m}; sleep 20");
    let dataset = submit(&server, shell_dataset("forgotten", &script), 1);
    assert!(wait_until(RUN, || mark.exists()));
    let (ok, _, err) = server.ctl(&["restart", "queue"]);
    assert!(ok, "{err}");
    wait_for(&server, &dataset, "complete", 1, RUN);
    // Lost, not failed: the failure count is untouched.
    assert_eq!(value::<i64>(&server, "SELECT failures FROM task"), 0);
    let stat: String = value(&server, "SELECT stat FROM task_stat WHERE error = 1");
    assert!(stat.contains("no longer known"), "{stat}");
}

#[test]
fn tasks_keep_running_while_the_server_is_unreachable_and_report_when_it_returns() {
    let server = Server::start(&queue_config("", &local_grid("local", "")));
    let mark = server.dir.path().join("running");
    let script = format!("touch {}; sleep 3; echo finished", mark.display());
    let dataset = submit(&server, shell_dataset("outage", &script), 1);
    assert!(wait_until(RUN, || mark.exists()));
    // No HTTP server at all for longer than the task still needs.
    let (ok, _, err) = server.ctl(&["stop", "website"]);
    assert!(ok, "{err}");
    assert!(
        server.get("/healthz").is_none(),
        "the website still answers"
    );
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(states(&server, &dataset).get("processing"), Some(&1));
    let (ok, _, err) = server.ctl(&["start", "website"]);
    assert!(ok, "{err}");
    wait_for(&server, &dataset, "complete", 1, RUN);
    // Reported once, after the outage: one stats row, no error, no retry of the task.
    assert_eq!(value::<i64>(&server, "SELECT count(*) FROM task_stat"), 1);
    assert_eq!(value::<i64>(&server, "SELECT failures FROM task"), 0);
}

#[test]
fn a_reload_applies_queue_settings_in_place_and_restarts_the_queue_for_new_grids() {
    let text = |port: u16, queue: &str, grids: &str| {
        common::base_config(port, "", &queue_config(queue, grids))
    };
    let one = local_grid("local", "");
    let server = Server::start_with(|port| text(port, "", &one));
    let port = server.port;
    // Another buffer size: applied in place, the queue keeps its thread and its local jobs.
    server.write_config(&text(port, "task_buffer = 7", &one));
    let (ok, out, err) = server.ctl(&["reload"]);
    assert!(ok, "{out}{err}");
    assert!(wait_until(RUN, || server.module("queue")["last_reload"]
        == "applied in place"));
    assert_eq!(server.module("queue")["generation"], 1);
    // A second grid: the queue restarts with both.
    let two = format!("{one}{}", local_grid("more", ""));
    server.write_config(&text(port, "task_buffer = 7", &two));
    let (ok, out, err) = server.ctl(&["reload"]);
    assert!(ok, "{out}{err}");
    assert!(wait_until(RUN, || {
        let q = server.module("queue");
        q["generation"] == 2 && q["state"] == "running"
    }));
    assert!(wait_until(RUN, || server.status()["grids"]
        .as_array()
        .is_some_and(|g| g.len() == 2)));
}

#[test]
fn steering_and_task_data_are_staged_in_and_out() {
    let server = Server::start(&queue_config("", &local_grid("local", "")));
    let store = server.dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    std::fs::write(store.join("input.txt"), "twelve bytes").unwrap();
    let s = store.display();
    // The data-staging example, with file:// URLs in place of the site's /lib/ files.
    let mut config = example("data-staging.json");
    config["steering"]["parameters"]["base"] = json!(format!("file://{s}"));
    config["tasks"][0]["data"][0]["remote"] =
        json!(format!("file://{s}/out_$sprintf(\"%06d\",$(job)).txt"));
    let dataset = submit(&server, config, 2);
    wait_for(&server, &dataset, "complete", 2, RUN);
    for job in 0..2 {
        let out = std::fs::read_to_string(store.join(format!("out_{job:06}.txt"))).unwrap();
        assert_eq!(out.trim(), "12 input.txt");
    }
}

#[test]
fn the_parameterised_example_runs_each_iteration_with_its_job_values() {
    let server = Server::start(&queue_config("", &local_grid("local", "")));
    let dataset = submit(&server, example("parameterised.json"), 3);
    wait_for(&server, &dataset, "complete", 3, RUN);
    let submit_dir = server.dir.path().join("var/submit/local");
    let mut outputs = Vec::new();
    for entry in walk(&submit_dir) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("run_") {
            outputs.push((name, std::fs::read_to_string(&entry).unwrap()));
        }
    }
    outputs.sort();
    assert_eq!(outputs.len(), 3, "{outputs:?}");
    for (job, (name, text)) in outputs.iter().enumerate() {
        assert_eq!(name, &format!("run_{job:04}.txt"));
        let seed = job * 7 + 1;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for (iter, line) in lines.iter().enumerate() {
            assert!(
                line.starts_with(&format!("seed={seed} energy="))
                    && line.ends_with(&format!("iter={iter}")),
                "{line}"
            );
        }
    }
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn a_stuck_task_is_reset_and_its_local_job_killed() {
    let grid = local_grid("local", "max_task_processing_time = \"2s\"");
    let server = Server::start(&queue_config("", &grid));
    let mark = server.dir.path().join("first-attempt");
    let m = mark.display();
    // First attempt: note the module's pid and hang; the next attempt succeeds at once.
    let script =
        format!("if [ -e {m} ]; then exit 0; fi; echo $$ > {m}.tmp; mv {m}.tmp {m}; sleep 120");
    let dataset = submit(&server, shell_dataset("stuck", &script), 1);
    assert!(wait_until(RUN, || mark.exists()));
    let pid: i32 = std::fs::read_to_string(&mark)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_for(&server, &dataset, "complete", 1, RUN);
    // Stuck costs no failure, and the hung first attempt was killed, not left running.
    assert_eq!(value::<i64>(&server, "SELECT failures FROM task"), 0);
    assert!(
        wait_until(RUN, || !alive(pid)),
        "the stuck attempt's module {pid} still runs"
    );
    let stat: String = value(&server, "SELECT stat FROM task_stat WHERE error = 1");
    assert!(stat.contains("processing for longer than"), "{stat}");
}

/// Whether `pid` runs (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|rest| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

#[test]
fn a_task_ignoring_sigterm_is_gone_once_the_test_server_is_dropped() {
    let server = Server::start(&queue_config("", &local_grid("local", "")));
    let scratch = tempfile::tempdir().unwrap();
    let mark = scratch.path().join("module-pid");
    let m = mark.display();
    // The module outlives a polite stop: it ignores SIGTERM and sleeps for ten minutes.
    let script = format!("trap '' TERM; echo $$ > {m}.tmp; mv {m}.tmp {m}; exec sleep 600");
    let dataset = submit(&server, shell_dataset("stubborn", &script), 1);
    assert!(
        wait_until(RUN, || mark.exists()),
        "{:?}",
        states(&server, &dataset)
    );
    let module: i32 = std::fs::read_to_string(&mark)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let session = server.session();
    // The local grid gave the job a process group of its own; the session is the server's.
    assert!(session_members(session).contains(&module));
    drop(server);
    assert!(
        !alive(module),
        "the module {module} outlived the test's server"
    );
    assert_eq!(session_members(session), Vec::<i32>::new());
}
