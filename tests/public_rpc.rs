//! The public reads of SPEC §5.4 through the real binary, open by default and behind a user
//! passkey with `[website] public_reads = false`.

mod common;

use common::{admin_key, base_config, db, example, Server};
use iceprod_db::rusqlite::params;
use serde_json::{json, Value};

/// Submits the two-task example with 2 jobs and adds its tasks as buffering would, some of
/// them finished: returns the dataset id.
fn seed(server: &Server) -> String {
    let config = example("two-tasks.json");
    let key = admin_key(server);
    let (_, v) = server
        .rpc(
            "submit_dataset",
            json!({"passkey": key, "config": config, "njobs": 2, "description": "two <tasks>"}),
        )
        .unwrap();
    let dataset = v["result"].as_str().expect("dataset id").to_string();
    let conn = db(server);
    let rels: Vec<String> = conn
        .prepare("SELECT task_rel_id FROM task_rel ORDER BY task_index")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for job in 0..2 {
        conn.execute(
            "INSERT INTO job (job_id, dataset_id, job_index, status, status_changed) VALUES (?1, ?2, ?3, 'processing', 'x')",
            params![format!("j{job}"), dataset, job],
        )
        .unwrap();
        for (t, rel) in rels.iter().enumerate() {
            let status = if job == 0 { "complete" } else { "processing" };
            conn.execute(
                "INSERT INTO task (task_id, job_id, dataset_id, task_rel_id, task_index, status, \
                 status_changed, walltime, requirements) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'x', 1.5, \
                 '{\"cpu\":2,\"gpu\":1}')",
                params![
                    format!("t{job}{t}"),
                    format!("j{job}"),
                    dataset,
                    rel,
                    t as i64,
                    status
                ],
            )
            .unwrap();
        }
    }
    conn.execute(
        "INSERT INTO task_stat (task_stat_id, task_id, dataset_id, create_date, stat, error) \
         VALUES ('s1', 't00', ?1, '2026-01-01', '{\"hostname\":\"n1\"}', 0)",
        params![dataset],
    )
    .unwrap();
    dataset
}

fn ok(server: &Server, method: &str, params: Value) -> Value {
    let (status, v) = server.rpc(method, params).unwrap();
    assert_eq!(status, 200, "{method}: {v}");
    v["result"].clone()
}

#[test]
fn every_public_read_answers_from_the_database() {
    let server = Server::start("");
    let d = seed(&server);
    let by = |extra: Value| {
        let mut p = json!({"dataset_id": d});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        p
    };
    assert_eq!(
        ok(
            &server,
            "public_get_number_of_tasks_in_each_state",
            json!({})
        ),
        json!({"complete": 2, "processing": 2})
    );
    assert_eq!(
        ok(
            &server,
            "public_get_number_of_tasks_in_each_state",
            by(json!({}))
        ),
        json!({"complete": 2, "processing": 2})
    );
    assert_eq!(
        ok(&server, "public_get_datasets_by_status", json!({})),
        json!({"processing": [d]})
    );
    assert_eq!(
        ok(&server, "public_get_config", by(json!({})))["tasks"][1]["name"],
        "filter"
    );
    assert_eq!(
        ok(&server, "public_get_dataset_description", by(json!({}))),
        "two <tasks>"
    );
    assert_eq!(
        ok(&server, "public_get_dataset_steering", by(json!({})))["parameters"]["events"],
        1000
    );
    let completion = ok(&server, "public_get_dataset_completion", by(json!({})));
    assert_eq!(completion["jobs_submitted"], 2);
    assert_eq!(
        completion["task_status"],
        json!({"complete": 2, "processing": 2})
    );
    assert_eq!(
        ok(&server, "public_get_all_dataset_completion", json!({}))[&d],
        completion
    );
    assert_eq!(
        ok(&server, "public_get_task_ids", by(json!({}))),
        json!(["t00", "t01", "t10", "t11"])
    );
    assert_eq!(
        ok(&server, "public_get_task_stats", by(json!({})))["t00"][0]["stat"]["hostname"],
        "n1"
    );
    assert_eq!(
        ok(&server, "public_get_task_walltime", by(json!({})))["generate"]["walltime"],
        3.0
    );
    assert_eq!(
        ok(
            &server,
            "public_get_tasks_by_name",
            by(json!({"name": "filter"}))
        ),
        json!({"t01": "complete", "t11": "processing"})
    );
    assert_eq!(
        ok(&server, "public_get_cpu_gpu_usage", json!({}))[&d],
        json!({"cpu": 4, "gpu": 2})
    );
    assert_eq!(
        ok(&server, "public_get_graphs", json!({"start": 60})),
        json!([])
    );
}

#[test]
fn public_reads_refuse_unknown_ids_and_bad_params() {
    let server = Server::start("");
    seed(&server);
    for (method, params, needle) in [
        (
            "public_get_config",
            json!({"dataset_id": "nosuch"}),
            "no dataset",
        ),
        ("public_get_config", json!({}), "dataset_id"),
        (
            "public_get_task_ids",
            json!({"dataset_id": 5}),
            "dataset_id",
        ),
        (
            "public_get_tasks_by_name",
            json!({"dataset_id": "x"}),
            "name",
        ),
        ("public_get_graphs", json!({"start": -5}), "start"),
        ("public_get_graphs", json!({"start": "yesterday"}), "start"),
    ] {
        let (status, v) = server.rpc(method, params).unwrap();
        assert_eq!(
            (status, v["error"]["code"].clone()),
            (400, json!(-32602)),
            "{method}: {v}"
        );
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{method}: {v}"
        );
    }
}

#[test]
fn with_public_reads_off_a_user_passkey_is_needed() {
    let server = Server::start_with(|port| base_config(port, "public_reads = false", ""));
    let d = seed(&server);
    let (_, v) = server
        .rpc("public_get_task_ids", json!({"dataset_id": d}))
        .unwrap();
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let (_, v) = server
        .rpc(
            "public_get_task_ids",
            json!({"dataset_id": d, "passkey": "wrong"}),
        )
        .unwrap();
    assert_eq!(v["error"]["code"], 403, "{v}");
    let key = admin_key(&server);
    assert_eq!(
        ok(
            &server,
            "public_get_task_ids",
            json!({"dataset_id": d, "passkey": key})
        ),
        json!(["t00", "t01", "t10", "t11"])
    );
    // The groups are a read like the others (issue 11 item 8).
    let (_, v) = server.rpc("get_groups", json!({})).unwrap();
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let (_, v) = server
        .rpc("get_groups", json!({"passkey": "wrong"}))
        .unwrap();
    assert_eq!(v["error"]["code"], 403, "{v}");
    assert!(ok(&server, "get_groups", json!({"passkey": key})).is_array());
    // echo and the site id stay open: they are connection checks.
    assert!(server.echo_ok());
}

#[test]
fn the_graphs_job_records_active_and_completed_tasks() {
    let server = Server::start(
        "[schedule.jobs.graphs]\nevery = \"1s\"\ntarget = \"db\"\nmessage = \"graphs\"\n",
    );
    seed(&server);
    let mut graphs = Value::Null;
    assert!(
        common::wait_until(common::WAIT, || {
            graphs = ok(&server, "public_get_graphs", json!({"start": 10}));
            graphs.as_array().is_some_and(|g| {
                g.iter()
                    .any(|r| r["name"] == "active_tasks" && r["value"]["processing"] == 2)
            })
        }),
        "{graphs}"
    );
    let completed: Vec<&Value> = graphs
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == "completed_tasks")
        .collect();
    assert!(!completed.is_empty(), "{graphs}");
}
