//! Helpers for the tests that run datasets on grids through the real binary: a config with
//! the queue module on and fast cycles, dataset submission with the admin passkey, and
//! waits on task states read from the server's database.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::{admin_key, db, wait_until, Server};

/// `[modules]`, `[queue]` and schedule jobs for a grid test: a cycle every second, job and
/// dataset completion every second, then `grids` (the `[queue.grids.*]` tables) and `queue`
/// (more `[queue]` keys).
pub fn queue_config(queue: &str, grids: &str) -> String {
    let timeout = if queue.contains("command_timeout") {
        ""
    } else {
        "command_timeout = \"20s\"\n"
    };
    format!(
        "[modules]\nqueue = true\n\n[queue]\ninterval = \"1s\"\n{timeout}{queue}\n\n\
         {grids}\n\n\
         [schedule.jobs.complete]\nevery = \"1s\"\ntarget = \"db\"\nmessage = \"complete_datasets\"\n"
    )
}

/// Submits `config` with `njobs` jobs as the admin; the dataset id.
pub fn submit(server: &Server, config: Value, njobs: u64) -> String {
    let (status, v) = server
        .rpc(
            "submit_dataset",
            json!({"passkey": admin_key(server), "config": config, "njobs": njobs,
                   "description": "grid test"}),
        )
        .expect("an answer");
    assert_eq!(status, 200, "submit_dataset: {v}");
    v["result"].as_str().expect("a dataset id").to_string()
}

/// Task counts by status of one dataset.
pub fn states(server: &Server, dataset_id: &str) -> BTreeMap<String, i64> {
    let conn = db(server);
    let mut stmt = conn
        .prepare("SELECT status, count(*) FROM task WHERE dataset_id = ?1 GROUP BY status")
        .unwrap();
    let rows = stmt
        .query_map([dataset_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .unwrap();
    rows.map(|r| r.unwrap()).collect()
}

/// One value of the server's database.
pub fn value<T: iceprod_db::rusqlite::types::FromSql>(server: &Server, sql: &str) -> T {
    db(server).query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Waits until `n` tasks of the dataset are in `status`; panics with the states and the log.
pub fn wait_for(server: &Server, dataset_id: &str, status: &str, n: i64, timeout: Duration) {
    let reached = wait_until(timeout, || {
        states(server, dataset_id).get(status).copied() == Some(n)
    });
    assert!(
        reached,
        "waited {timeout:?} for {n} {status} tasks; states {:?}\ngrids {}\n--- log tail:\n{}",
        states(server, dataset_id),
        server.status()["grids"],
        tail(&server.log(), 60)
    );
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A one-task dataset whose module runs `script` with `sh -c`.
pub fn shell_dataset(name: &str, script: &str) -> Value {
    json!({
        "version": 3,
        "description": name,
        "tasks": [{
            "name": name,
            "requirements": {"cpu": 1, "memory": 0.5, "disk": 0.5, "time": 0.1},
            "trays": [{"name": "t", "modules": [{"name": "m", "src": "/bin/sh", "args": ["-c", script]}]}]
        }]
    })
}
