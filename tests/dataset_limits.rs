//! Dataset configs that cannot be run, through the real binary: refused at submission with
//! their config path when an expression fails for a job or a number is over its limit
//! (docs/datasets.md), and, for one that got into the database anyway, suspended with its
//! reason by the queue cycle while every other dataset's jobs are still created.

mod common;

use common::grids::{queue_config, submit, value};
use common::{admin_key, db, wait_until, Server, WAIT};
use iceprod_db::rusqlite::params;
use serde_json::{json, Value};

fn one_task(requirements: Value, parameters: Value) -> Value {
    json!({"version": 3, "tasks": [{"name": "gen", "requirements": requirements,
        "parameters": parameters, "trays": [{"modules": [{"src": "/bin/true"}]}]}]})
}

#[test]
fn configs_that_fail_for_some_job_or_ask_too_much_are_refused_with_their_path() {
    let server = Server::start("");
    let key = admin_key(&server);
    for (config, njobs, needle) in [
        (
            one_task(json!({"memory": "$(nosuch)"}), json!({})),
            1,
            "tasks[0].requirements.memory: bad expression",
        ),
        (
            one_task(json!({"cpu": "$(a)"}), json!({"a": "$(b)", "b": "$(a)"})),
            1,
            "tasks[0].requirements.cpu",
        ),
        (
            one_task(json!({"time": "$eval(9**9**9)"}), json!({})),
            1,
            "tasks[0].requirements.time",
        ),
        (
            one_task(json!({"disk": "$eval(1/(9-$(job)))"}), json!({})),
            10,
            "(for job 9)",
        ),
        (
            one_task(json!({"memory": 1e308}), json!({})),
            1,
            "tasks[0].requirements.memory: 1e308 is more than the limit of 16384 GB",
        ),
        (
            json!({"version": 3, "tasks": [{"name": "gen",
                "trays": [{"iterations": 1_000_000_000i64, "modules": [{"src": "/bin/true"}]}]}]}),
            1,
            "tasks[0].trays[0].iterations",
        ),
    ] {
        let (status, v) = server
            .rpc(
                "submit_dataset",
                json!({"passkey": key, "config": config, "njobs": njobs, "description": "d"}),
            )
            .unwrap();
        assert_eq!(status, 400, "{needle}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
    assert_eq!(value::<i64>(&server, "SELECT count(*) FROM dataset"), 0);
}

#[test]
fn a_dataset_whose_jobs_cannot_be_created_is_suspended_and_the_others_get_their_jobs() {
    // The queue is off while the datasets go in, so none is buffered before one is broken.
    let mut server = Server::start("");
    let good = one_task(json!({"memory": "$eval($(job) + 1)"}), json!({}));
    let ids: Vec<String> = (0..3).map(|_| submit(&server, good.clone(), 2)).collect();
    // The middle one's stored config goes bad, as one accepted by an older server could be.
    let broken = one_task(json!({"memory": "$eval(1/0)"}), json!({}));
    db(&server)
        .execute(
            "UPDATE config SET config_data = ?1 WHERE dataset_id = ?2",
            params![broken.to_string(), ids[1]],
        )
        .unwrap();
    // Restarted with the queue on (and no grid: only buffering matters here).
    server.signal(libc::SIGTERM);
    assert!(wait_until(WAIT, || server.exited().is_some()));
    let port = server.port;
    server.write_config(&common::base_config(port, "", &queue_config("", "")));
    server.relaunch();
    server.wait_up();
    let jobs = |id: &str| {
        value::<i64>(
            &server,
            &format!("SELECT count(*) FROM job WHERE dataset_id = '{id}'"),
        )
    };
    assert!(
        wait_until(WAIT, || jobs(&ids[0]) == 2 && jobs(&ids[2]) == 2),
        "jobs {} {} {}\n{}",
        jobs(&ids[0]),
        jobs(&ids[1]),
        jobs(&ids[2]),
        server.log()
    );
    assert_eq!(jobs(&ids[1]), 0);
    let status: String = value(
        &server,
        &format!("SELECT status FROM dataset WHERE dataset_id = '{}'", ids[1]),
    );
    assert_eq!(status, "suspended");
    // The reason is shown where the dataset's status is.
    let (code, page) = server.get("/dataset/2").expect("the dataset page");
    assert_eq!(code, 200);
    assert!(
        page.contains("jobs cannot be created: job 0: tasks[0].requirements.memory"),
        "{page}"
    );
    assert!(!server.log().contains("buffering jobs failed"));
}
