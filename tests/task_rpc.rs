//! The task side of the JSON-RPC protocol (SPEC §5.2) through the real binary and its real
//! SQLite file: a worker's calls, their authorisation by passkey, and bad input.

mod common;

use common::Server;
use iceprod_db::rusqlite::params;
use serde_json::{json, Value};

/// Writes a dataset with one job and `tasks` (id, status), and a passkey per task
/// (`key-ID`), straight into the server's database.
fn seed(server: &Server, tasks: &[(&str, &str)]) {
    let conn = iceprod_db::store::open(&server.dir.path().join("var/iceprod.db")).unwrap();
    let now = iceprod_db::ops::now();
    conn.execute(
        "INSERT INTO dataset (dataset_id, dataset_num, status, status_changed, jobs_submitted, \
         tasks_submitted, start_date) VALUES ('d1', 1, 'processing', ?1, 1, 2, ?1)",
        params![now],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO job (job_id, dataset_id, job_index, status, status_changed) \
         VALUES ('j1', 'd1', 0, 'processing', ?1)",
        params![now],
    )
    .unwrap();
    for (i, (id, status)) in tasks.iter().enumerate() {
        conn.execute(
            "INSERT INTO task (task_id, job_id, dataset_id, task_rel_id, task_index, status, \
             status_changed, requirements) VALUES (?1, 'j1', 'd1', 'r1', ?2, ?3, ?4, \
             '{\"memory\":1.0,\"disk\":1.0,\"time\":1.0}')",
            params![id, i as i64, status, now],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO passkey (passkey_id, auth_key, scope, subject, expire) \
             VALUES (?1, ?2, 'task', ?1, '2999-01-01T00:00:00Z')",
            params![id, format!("key-{id}")],
        )
        .unwrap();
    }
}

fn query<T: iceprod_db::rusqlite::types::FromSql>(server: &Server, sql: &str) -> T {
    let conn = iceprod_db::store::open(&server.dir.path().join("var/iceprod.db")).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn call(server: &Server, method: &str, params: Value) -> (u16, Value) {
    server.rpc(method, params).expect("an answer")
}

fn ok(server: &Server, method: &str, params: Value) -> Value {
    let (status, v) = call(server, method, params);
    assert_eq!(status, 200, "{method}: {v}");
    v["result"].clone()
}

#[test]
fn a_worker_runs_its_task_to_complete() {
    let server = Server::start("");
    seed(&server, &[("t0", "queued")]);
    let me = |extra: Value| {
        let mut p = json!({"passkey": "key-t0", "task_id": "t0"});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        p
    };
    assert_eq!(ok(&server, "set_processing", me(json!({}))), Value::Null);
    assert_eq!(
        ok(&server, "stillrunning", me(json!({}))),
        Value::Bool(true)
    );
    for name in ["stdlog", "stderr", "stdout"] {
        let p = json!({"passkey": "key-t0", "task": "t0", "name": name, "data": "eJwLycgsVgCi3NSS0pzUFA"});
        assert_eq!(ok(&server, "upload_logfile", p), Value::Null);
    }
    // Uploading again replaces.
    let p = json!({"passkey": "key-t0", "task": "t0", "name": "stdout", "data": ""});
    assert_eq!(ok(&server, "upload_logfile", p), Value::Null);
    let stats = json!({"hostname": "node1", "domain": "x", "time_used": 7200, "task_stats": {}});
    assert_eq!(
        ok(&server, "finish_task", me(json!({"stats": stats}))),
        Value::Null
    );
    assert_eq!(
        ok(&server, "stillrunning", me(json!({}))),
        Value::Bool(false)
    );

    assert_eq!(
        query::<String>(&server, "SELECT status FROM task WHERE task_id='t0'"),
        "complete"
    );
    assert_eq!(
        query::<f64>(&server, "SELECT walltime FROM task WHERE task_id='t0'"),
        2.0
    );
    assert_eq!(
        query::<i64>(&server, "SELECT count(*) FROM task_log WHERE task_id='t0'"),
        3
    );
    assert_eq!(
        query::<String>(
            &server,
            "SELECT data FROM task_log WHERE task_id='t0' AND name='stdout'"
        ),
        ""
    );
    assert_eq!(
        query::<i64>(&server, "SELECT count(*) FROM task_stat WHERE error=0"),
        1
    );

    // A complete task stays complete.
    let (status, v) = call(&server, "task_error", me(json!({"error_info": {}})));
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (400, json!(-32602)),
        "{v}"
    );
    assert_eq!(
        query::<String>(&server, "SELECT status FROM task WHERE task_id='t0'"),
        "complete"
    );
}

#[test]
fn a_task_error_resets_the_task_and_learns_its_resources() {
    let server = Server::start("");
    seed(&server, &[("t0", "processing")]);
    let info = json!({"hostname": "n", "time_used": 60, "error_summary": "exit 3",
                      "resources": {"memory": 3.0, "disk": 0.5, "time": 0.1}});
    let p = json!({"passkey": "key-t0", "task_id": "t0", "error_info": info});
    assert_eq!(ok(&server, "task_error", p), Value::Null);
    assert_eq!(
        query::<String>(&server, "SELECT status FROM task WHERE task_id='t0'"),
        "reset"
    );
    assert_eq!(
        query::<i64>(&server, "SELECT failures FROM task WHERE task_id='t0'"),
        1
    );
    let reqs: Value = serde_json::from_str(&query::<String>(
        &server,
        "SELECT requirements FROM task WHERE task_id='t0'",
    ))
    .unwrap();
    assert_eq!(reqs["memory"], 4.5);
    assert_eq!(reqs["disk"], 1.0);
    assert_eq!(
        query::<i64>(&server, "SELECT count(*) FROM task_stat WHERE error=1"),
        1
    );
}

#[test]
fn a_passkey_acts_only_on_its_own_task_and_a_revocation_counts_at_once() {
    let server = Server::start("");
    seed(&server, &[("t0", "queued"), ("t1", "queued")]);
    for (key, task) in [("key-t0", "t1"), ("nosuch", "t0"), ("", "t0")] {
        let (status, v) = call(
            &server,
            "set_processing",
            json!({"passkey": key, "task_id": task}),
        );
        let code = v["error"]["code"].as_i64();
        assert!(
            (status, code) == (400, Some(403)) || (status, code) == (400, Some(-32602)),
            "{key} on {task}: {status} {v}"
        );
    }
    let (_, v) = call(
        &server,
        "set_processing",
        json!({"passkey": "key-t0", "task_id": "t1"}),
    );
    assert_eq!(v["error"]["code"], 403, "{v}");
    assert_eq!(
        query::<String>(&server, "SELECT status FROM task WHERE task_id='t1'"),
        "queued"
    );

    let conn = iceprod_db::store::open(&server.dir.path().join("var/iceprod.db")).unwrap();
    conn.execute("UPDATE passkey SET revoked = 1 WHERE subject = 't0'", [])
        .unwrap();
    let (_, v) = call(
        &server,
        "stillrunning",
        json!({"passkey": "key-t0", "task_id": "t0"}),
    );
    assert_eq!(v["error"]["code"], 403, "{v}");

    // A pilot's passkey acts on the tasks the pilot runs, and only those.
    conn.execute(
        "INSERT INTO pilot (pilot_id, submit_time, tasks, last_update) VALUES ('p1', '', 't1', '')",
        [],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO passkey (passkey_id, auth_key, scope, subject, expire) \
         VALUES ('pk', 'key-p1', 'pilot', 'p1', '2999-01-01T00:00:00Z')",
        [],
    )
    .unwrap();
    assert_eq!(
        ok(
            &server,
            "set_processing",
            json!({"passkey": "key-p1", "task_id": "t1"})
        ),
        Value::Null
    );
    let (_, v) = call(
        &server,
        "stillrunning",
        json!({"passkey": "key-p1", "task_id": "t0"}),
    );
    assert_eq!(v["error"]["code"], 403, "{v}");
}

#[test]
fn bad_params_name_the_parameter_and_change_nothing() {
    let server = Server::start("");
    seed(&server, &[("t0", "queued")]);
    for (method, params, needle) in [
        ("set_processing", json!({"task_id": "t0"}), "passkey"),
        ("set_processing", json!({"passkey": "key-t0"}), "task_id"),
        (
            "set_processing",
            json!({"passkey": 7, "task_id": "t0"}),
            "passkey",
        ),
        (
            "finish_task",
            json!({"passkey": "key-t0", "task_id": "t0", "stats": [1]}),
            "stats",
        ),
        (
            "upload_logfile",
            json!({"passkey": "key-t0", "task": "t0", "name": "x"}),
            "data",
        ),
        (
            "upload_logfile",
            json!({"passkey": "key-t0", "task_id": "t0", "name": "x", "data": ""}),
            "task",
        ),
        (
            "task_error",
            json!({"passkey": "key-t0", "task_id": "t0\u{0}' OR 1=1", "error_info": {}}),
            "task",
        ),
    ] {
        let (status, v) = call(&server, method, params);
        assert_eq!(status, 400, "{method}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(needle), "{method}: {v}");
    }
    assert_eq!(
        query::<String>(&server, "SELECT status FROM task WHERE task_id='t0'"),
        "queued"
    );
    // A 1 MB log is stored as received.
    let big = "A".repeat(1 << 20);
    let p = json!({"passkey": "key-t0", "task": "t0", "name": "stdout", "data": big});
    assert_eq!(ok(&server, "upload_logfile", p), Value::Null);
    assert_eq!(
        query::<i64>(
            &server,
            "SELECT length(data) FROM task_log WHERE name='stdout'"
        ),
        1 << 20
    );
}

#[test]
fn a_pilot_pulls_a_task_runs_it_and_reports() {
    let server = Server::start("");
    common::seed_pilot_tasks(&server, 1, false);
    let pull = |key: &str, memory: f64| {
        call(
            &server,
            "new_task",
            json!({"passkey": key, "gridspec": "g1", "hostname": "node7", "domain": "x",
                   "ifaces": [], "os": null, "cpu": 2, "gpu": 0, "memory": memory,
                   "disk": 10, "time": 2}),
        )
    };
    // Too small a slot: nothing fits, and the answer is null, not an empty list.
    let (status, v) = pull("key-p1", 0.5);
    assert_eq!((status, v["result"].clone()), (200, Value::Null), "{v}");
    let (status, v) = pull("key-p1", 4.0);
    assert_eq!(status, 200, "{v}");
    let tasks = v["result"].as_array().expect("a list of task configs");
    assert_eq!(tasks.len(), 1);
    let options = &tasks[0]["options"];
    assert_eq!(options["task_id"], "t0");
    assert_eq!(options["task"], "generate");
    assert_eq!(options["job"], 0);
    assert!(tasks[0]["dataset"].is_u64(), "{}", tasks[0]);
    assert_eq!(tasks[0]["tasks"][0]["name"], "generate");
    assert_eq!(
        query::<String>(&server, "SELECT status FROM task WHERE task_id='t0'"),
        "processing"
    );
    // Nothing left; a task's passkey cannot pull tasks.
    assert_eq!(pull("key-p1", 4.0).1["result"], Value::Null);
    conn_add_task_key(&server);
    let (_, v) = pull("key-t9", 4.0);
    assert_eq!(v["error"]["code"], 403, "{v}");

    // The pilot reports and finishes the task it was handed, with its own passkey.
    let report = json!({"passkey": "key-p1", "pilot_id": "p1", "tasks": "t0",
                        "resources_available": {"cpu": 1, "memory": 3.0},
                        "resources_claimed": {"cpu": 1, "memory": 1.0}});
    assert_eq!(ok(&server, "update_pilot", report.clone()), Value::Null);
    let mut wrong = report.clone();
    wrong["passkey"] = json!("key-t9");
    assert_eq!(call(&server, "update_pilot", wrong).1["error"]["code"], 403);
    let mut bad = report;
    bad["resources_available"] = json!({"memory": -1});
    let (status, v) = call(&server, "update_pilot", bad);
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (400, json!(-32602)),
        "{v}"
    );
    let finish = json!({"passkey": "key-p1", "task_id": "t0",
                        "stats": {"hostname": "node7", "time_used": 60}});
    assert_eq!(ok(&server, "finish_task", finish), Value::Null);
    assert_eq!(
        query::<String>(&server, "SELECT status FROM task WHERE task_id='t0'"),
        "complete"
    );
}

/// A task passkey (`key-t9`, for a task that does not exist) to try where a pilot's is due.
fn conn_add_task_key(server: &Server) {
    common::db(server)
        .execute(
            "INSERT INTO passkey (passkey_id, auth_key, scope, subject, expire) \
             VALUES ('pk9', 'key-t9', 'task', 't9', '2999-01-01T00:00:00Z')",
            [],
        )
        .unwrap();
}
