//! People's actions and public reads through the db module's messages, on SQLite and on
//! MariaDB (see `support`); the binary's tests cover the same methods over JSON-RPC.

mod support;

use iceprod_db::args;
use iceprod_runtime::harness::Harness;
use iceprod_runtime::web::UserAuth;
use iceprod_runtime::{
    CallError, DatasetAction, DatasetSubmission, DbReply, DbRequest, PublicQuery, TaskAction,
    UserAction,
};
use serde_json::{json, Value};
use support::{call_db as db, TestDb};

on_both_backends!(
    owners_act_on_their_datasets_and_admins_on_all,
    task_lists_act_on_every_task_or_none,
    public_reads_answer_from_the_database,
    a_config_update_keeps_the_tasks,
    resetting_a_failed_task_or_its_job_reopens_the_job_and_dataset_it_ended,
);

/// Users `admin` (an admin) and `bob`, with passkeys `key-admin` and `key-bob`.
fn add_users(d: &TestDb) {
    d.tx(|tx| {
        for (name, admin) in [("admin", true), ("bob", false)] {
            // The module created its own first admin; these are extra, under other ids.
            tx.exec(
                "INSERT INTO user (user_id, username, admin) VALUES (?, ?, ?)",
                args![format!("u-{name}"), format!("{name}-test"), admin],
            )?;
            tx.exec(
                "INSERT INTO passkey (passkey_id, auth_key, scope, subject, expire) \
                 VALUES (?, ?, 'user', ?, '2999-01-01T00:00:00Z')",
                args![
                    format!("pk-{name}"),
                    format!("key-{name}"),
                    format!("u-{name}")
                ],
            )?;
        }
        Ok(())
    });
}

fn as_user(h: &mut Harness, key: &str, action: UserAction) -> Result<DbReply, CallError> {
    db(
        h,
        DbRequest::AsUser {
            auth: UserAuth::Passkey(key.into()),
            action,
        },
    )
}

fn config() -> Value {
    json!({"version": 3, "tasks": [
        {"name": "gen", "requirements": {"memory": 2}},
        {"name": "filter", "depends": ["gen"]}]})
}

fn submit(h: &mut Harness, key: &str) -> String {
    let reply = as_user(
        h,
        key,
        UserAction::SubmitDataset(Box::new(DatasetSubmission {
            config: config().to_string(),
            description: "d".into(),
            njobs: 2,
            gridspec: String::new(),
            debug: false,
            group: None,
            username: "ignored".into(),
            stat_keys: vec![],
        })),
    );
    match reply {
        Ok(DbReply::Dataset { dataset_id, .. }) => dataset_id,
        other => panic!("{other:?}"),
    }
}

fn owners_act_on_their_datasets_and_admins_on_all(d: &TestDb) {
    let mut h = d.start("");
    add_users(d);
    let dataset = submit(&mut h, "key-bob");
    assert_eq!(
        d.texts("SELECT username FROM dataset", args![]),
        vec!["bob-test"]
    );
    let act = |h: &mut Harness, key: &str, action| {
        as_user(
            h,
            key,
            UserAction::Dataset {
                dataset_id: dataset.clone(),
                action,
            },
        )
    };
    // Not a user passkey, or nobody's: forbidden.
    assert!(matches!(
        act(&mut h, "nosuch", DatasetAction::Suspend),
        Err(CallError::Forbidden(_))
    ));
    assert!(act(&mut h, "key-bob", DatasetAction::Suspend).is_ok());
    // A reason the server gave (buffering suspends a dataset it cannot make jobs of) goes
    // when a person resumes it.
    d.exec(
        "UPDATE dataset SET status_reason = 'jobs cannot be created: …'",
        args![],
    );
    assert!(act(&mut h, "key-admin", DatasetAction::Resume).is_ok());
    assert_eq!(
        d.texts("SELECT status_reason FROM dataset", args![]),
        vec![String::new()]
    );
    assert!(matches!(
        act(&mut h, "key-bob", DatasetAction::Resume),
        Err(CallError::Refused(_))
    ));
    assert!(act(&mut h, "key-bob", DatasetAction::Truncate).is_ok());
    assert_eq!(
        d.texts("SELECT status FROM dataset", args![]),
        vec!["truncated"]
    );
    add_other(d);
    assert!(matches!(
        act(&mut h, "key-carol", DatasetAction::Suspend),
        Err(CallError::Forbidden(_))
    ));
    assert_eq!(
        d.count(
            "SELECT count(*) FROM history WHERE subject = ?",
            args![dataset.as_str()]
        ),
        // submit, suspend, resume, truncate: refused actions leave no trace.
        4
    );
}

/// A third user, `carol`, who owns nothing.
fn add_other(d: &TestDb) {
    d.exec(
        "INSERT INTO user (user_id, username) VALUES ('u-carol', 'carol')",
        args![],
    );
    d.exec(
        "INSERT INTO passkey (passkey_id, auth_key, scope, subject, expire) \
         VALUES ('pk-carol', 'key-carol', 'user', 'u-carol', '2999-01-01T00:00:00Z')",
        args![],
    );
}

fn task_lists_act_on_every_task_or_none(d: &TestDb) {
    let mut h = d.start("");
    add_users(d);
    submit(&mut h, "key-bob");
    db(&mut h, DbRequest::BufferJobs { max_jobs: 10 }).unwrap();
    let ids = d.texts("SELECT task_id FROM task ORDER BY task_id", args![]);
    d.exec(
        "UPDATE task SET status = 'complete' WHERE task_id = ?",
        args![ids[0].as_str()],
    );
    let suspend = |h: &mut Harness, task_ids: Vec<String>| {
        as_user(
            h,
            "key-bob",
            UserAction::Tasks {
                task_ids,
                action: TaskAction::Suspend,
            },
        )
    };
    // The complete task refuses, so the other is not suspended either.
    assert!(suspend(&mut h, vec![ids[1].clone(), ids[0].clone()]).is_err());
    assert_eq!(
        d.count(
            "SELECT count(*) FROM task WHERE status = 'suspended'",
            args![]
        ),
        0
    );
    assert_eq!(
        suspend(&mut h, vec![ids[1].clone()]).unwrap(),
        DbReply::Rows(1)
    );
    let resume = as_user(
        &mut h,
        "key-bob",
        UserAction::Tasks {
            task_ids: vec![ids[1].clone()],
            action: TaskAction::Resume,
        },
    );
    assert_eq!(resume.unwrap(), DbReply::Rows(1));
    assert_eq!(
        d.texts(
            "SELECT status FROM task WHERE task_id = ?",
            args![ids[1].as_str()]
        ),
        vec!["idle"]
    );
}

fn public_reads_answer_from_the_database(d: &TestDb) {
    let mut h = d.start("");
    add_users(d);
    let dataset = submit(&mut h, "key-bob");
    db(&mut h, DbRequest::BufferJobs { max_jobs: 10 }).unwrap();
    let read = |h: &mut Harness, query| match db(h, DbRequest::Public(query)) {
        Ok(DbReply::Value(v)) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        read(
            &mut h,
            PublicQuery::TasksInEachState {
                dataset_id: Some(dataset.clone())
            }
        ),
        json!({"idle": 4})
    );
    assert_eq!(
        read(&mut h, PublicQuery::DatasetsByStatus),
        json!({"processing": [dataset]})
    );
    assert_eq!(
        read(
            &mut h,
            PublicQuery::TaskIds {
                dataset_id: dataset.clone()
            }
        )
        .as_array()
        .map(Vec::len),
        Some(4)
    );
    let by_name = read(
        &mut h,
        PublicQuery::TasksByName {
            dataset_id: dataset.clone(),
            name: "filter".into(),
        },
    );
    assert_eq!(by_name.as_object().map(|m| m.len()), Some(2));
    assert!(matches!(
        db(
            &mut h,
            DbRequest::Public(PublicQuery::Config {
                dataset_id: "nosuch".into()
            })
        ),
        Err(CallError::Refused(_))
    ));
    // The same reads for a user on a site without public reads.
    assert_eq!(
        as_user(
            &mut h,
            "key-bob",
            UserAction::Read(PublicQuery::DatasetSteering {
                dataset_id: dataset
            })
        )
        .unwrap(),
        DbReply::Value(json!({}))
    );
}

fn a_config_update_keeps_the_tasks(d: &TestDb) {
    let mut h = d.start("");
    add_users(d);
    let dataset = submit(&mut h, "key-bob");
    let update = |h: &mut Harness, config: Value| {
        as_user(
            h,
            "key-bob",
            UserAction::UpdateConfig {
                dataset_id: dataset.clone(),
                config: config.to_string(),
            },
        )
    };
    let mut bigger = config();
    bigger["tasks"][0]["requirements"]["memory"] = json!(8);
    assert_eq!(update(&mut h, bigger).unwrap(), DbReply::Done);
    assert!(d.texts(
        "SELECT requirements FROM task_rel WHERE task_index = 0",
        args![]
    )[0]
    .contains('8'));
    let mut fewer = config();
    fewer["tasks"] = json!([{"name": "gen"}]);
    match update(&mut h, fewer) {
        Err(CallError::Refused(msg)) => assert!(msg.contains("tasks"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

fn resetting_a_failed_task_or_its_job_reopens_the_job_and_dataset_it_ended(d: &TestDb) {
    let mut h = d.start("");
    add_users(d);
    let dataset = submit(&mut h, "key-bob");
    db(&mut h, DbRequest::BufferJobs { max_jobs: 10 }).unwrap();
    // Every task failed: the completion job ends both jobs and the dataset as errors.
    d.exec("UPDATE task SET status = 'failed', failures = 10", args![]);
    db(&mut h, DbRequest::CompleteJobsAndDatasets).unwrap();
    let statuses = |d: &TestDb| {
        (
            d.texts("SELECT DISTINCT status FROM job", args![]),
            d.texts("SELECT status FROM dataset", args![]),
        )
    };
    assert_eq!(statuses(d), (vec!["errors".into()], vec!["errors".into()]));
    let jobs = d.texts("SELECT job_id FROM job ORDER BY job_index", args![]);
    let task = d.texts(
        "SELECT task_id FROM task WHERE job_id = ? ORDER BY task_index",
        args![jobs[0].as_str()],
    )[0]
    .clone();

    // Suspending changes neither.
    let act = |h: &mut Harness, action| {
        as_user(
            h,
            "key-bob",
            UserAction::Tasks {
                task_ids: vec![task.clone()],
                action,
            },
        )
        .unwrap()
    };
    act(&mut h, TaskAction::Suspend);
    assert_eq!(statuses(d), (vec!["errors".into()], vec!["errors".into()]));
    // A reset does: the task can be queued again, and the dataset is open until it ends anew.
    act(&mut h, TaskAction::Reset);
    assert_eq!(
        d.texts(
            "SELECT status FROM job WHERE job_id = ?",
            args![jobs[0].as_str()]
        ),
        vec!["processing"]
    );
    assert_eq!(
        d.texts(
            "SELECT status FROM job WHERE job_id = ?",
            args![jobs[1].as_str()]
        ),
        vec!["errors"]
    );
    assert_eq!(
        d.texts("SELECT status FROM dataset", args![]),
        vec!["processing"]
    );
    assert_eq!(
        d.count(
            "SELECT count(*) FROM dataset WHERE end_date IS NULL",
            args![]
        ),
        1
    );

    // The same through a job reset, for the other job; a suspended dataset stays suspended.
    d.exec(
        "UPDATE dataset SET status = 'suspended' WHERE dataset_id = ?",
        args![dataset.as_str()],
    );
    as_user(
        &mut h,
        "key-bob",
        UserAction::Jobs {
            job_ids: vec![jobs[1].clone()],
            action: TaskAction::Reset,
        },
    )
    .unwrap();
    assert_eq!(
        d.texts("SELECT DISTINCT status FROM job", args![]),
        vec!["processing"]
    );
    assert_eq!(
        d.texts("SELECT status FROM dataset", args![]),
        vec!["suspended"]
    );
}
