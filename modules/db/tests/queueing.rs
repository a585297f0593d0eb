//! Queueing, pilots, completion and cleanup through the db module's messages, on SQLite:
//! datasets are submitted and buffered as the server does, then queued and run.

use std::path::Path;
use std::time::{Duration, Instant};

use iceprod_db::{ops, store, Db};
use iceprod_runtime::harness::Harness;
use iceprod_runtime::states::TaskEvent;
use iceprod_runtime::{
    CallError, Config, DatasetSubmission, DbReply, DbRequest, ModuleKind, PasskeyScope, QueuedTask,
    Reply, Request, Resources, TaskCall,
};
use r2d2_sqlite::rusqlite::{params, Connection};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const GRID: &str = "b.local";

fn start(dir: &Path) -> Harness {
    let config = Config::parse(
        "[db]\npath = \"iceprod.db\"\n[site]\nid = \"b\"\n",
        &dir.join("iceprod.toml"),
        &ModuleKind::ALL,
    )
    .unwrap();
    let mut h = Harness::new(config);
    h.start::<Db>().unwrap();
    h
}

fn db(h: &mut Harness, request: DbRequest) -> Result<DbReply, CallError> {
    match h.call(ModuleKind::Db, Request::Db(request), WAIT)? {
        Reply::Db(reply) => Ok(reply),
        other => panic!("not a db reply: {other:?}"),
    }
}

fn conn(dir: &Path) -> Connection {
    store::open(&dir.join("iceprod.db")).unwrap()
}

/// Submits a dataset for `gridspec` and creates all its jobs; answers its id.
fn dataset_on(h: &mut Harness, config: Value, njobs: u32, gridspec: &str) -> String {
    let reply = db(
        h,
        DbRequest::SubmitDataset(Box::new(DatasetSubmission {
            config: config.to_string(),
            description: String::new(),
            njobs,
            gridspec: gridspec.into(),
            debug: false,
            group: None,
            username: "alice".into(),
            stat_keys: vec![],
        })),
    )
    .unwrap();
    let DbReply::Dataset { dataset_id, .. } = reply else {
        panic!("{reply:?}");
    };
    db(h, DbRequest::BufferJobs { max_jobs: 1000 }).unwrap();
    dataset_id
}

fn dataset(h: &mut Harness, config: Value, njobs: u32) -> String {
    dataset_on(h, config, njobs, GRID)
}

/// One task named `main` with these requirements.
fn one_task(requirements: Value) -> Value {
    json!({"version": 3, "tasks": [
        {"name": "main", "requirements": requirements,
         "trays": [{"modules": [{"src": "run.sh"}]}]}]})
}

/// `generate`, then `filter` which depends on it.
fn two_tasks() -> Value {
    json!({"version": 3, "tasks": [
        {"name": "generate", "trays": [{"modules": [{"src": "gen.sh"}]}]},
        {"name": "filter", "depends": ["generate"], "requirements": {"memory": 2},
         "trays": [{"modules": [{"src": "filter.sh"}]}]}]})
}

fn queue_with(h: &mut Harness, num: u32, largest: Resources, pilot_mode: bool) -> Vec<QueuedTask> {
    match db(
        h,
        DbRequest::QueueTasks {
            gridspec: GRID.into(),
            num,
            largest,
            pilot_mode,
        },
    )
    .unwrap()
    {
        DbReply::Queued(tasks) => tasks,
        other => panic!("{other:?}"),
    }
}

fn queue(h: &mut Harness, num: u32) -> Vec<QueuedTask> {
    queue_with(h, num, Resources::default(), false)
}

fn queue_pilot(h: &mut Harness, num: u32) -> Vec<QueuedTask> {
    queue_with(h, num, Resources::default(), true)
}

fn change(h: &mut Harness, task: &str, event: TaskEvent) {
    db(
        h,
        DbRequest::ChangeTaskState {
            task_id: task.into(),
            event,
        },
    )
    .unwrap();
}

/// Runs a queued task to complete.
fn finish(h: &mut Harness, task: &str) {
    change(h, task, TaskEvent::Start);
    change(h, task, TaskEvent::Finish);
}

fn status_of(dir: &Path, table: &str, id: &str) -> String {
    conn(dir)
        .query_row(
            &format!("SELECT status FROM {table} WHERE {table}_id = ?1"),
            params![id],
            |r| r.get(0),
        )
        .unwrap()
}

/// Task ids of a dataset in job then task order.
fn task_ids(dir: &Path, dataset_id: &str) -> Vec<String> {
    let conn = conn(dir);
    let mut stmt = conn
        .prepare(
            "SELECT task.task_id FROM task JOIN job ON job.job_id = task.job_id \
             WHERE task.dataset_id = ?1 ORDER BY job.job_index, task.task_index",
        )
        .unwrap();
    stmt.query_map(params![dataset_id], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn ids(tasks: &[QueuedTask]) -> Vec<String> {
    tasks.iter().map(|t| t.task_id.clone()).collect()
}

fn pilot(h: &mut Harness) -> (String, String) {
    match db(
        h,
        DbRequest::CreatePilot {
            gridspec: GRID.into(),
            requirements: Resources {
                cpu: 4,
                gpu: 0,
                memory: 8.0,
                disk: 20.0,
                time: 12.0,
            },
        },
    )
    .unwrap()
    {
        DbReply::Pilot { pilot_id, passkey } => (pilot_id, passkey),
        other => panic!("{other:?}"),
    }
}

fn slot(cpu: u32, gpu: u32, memory: f64) -> Resources {
    Resources {
        cpu,
        gpu,
        memory,
        disk: 100.0,
        time: 24.0,
    }
}

fn new_task_with(
    h: &mut Harness,
    passkey: &str,
    available: Resources,
    os: Option<&str>,
) -> Result<Vec<Value>, CallError> {
    db(
        h,
        DbRequest::NewTask {
            passkey: passkey.into(),
            gridspec: GRID.into(),
            available,
            os: os.map(str::to_string),
            hostname: "node1".into(),
        },
    )
    .map(|reply| match reply {
        DbReply::TaskConfigs(configs) => configs,
        other => panic!("{other:?}"),
    })
}

fn new_task(h: &mut Harness, passkey: &str, available: Resources) -> Vec<String> {
    new_task_with(h, passkey, available, None)
        .unwrap()
        .iter()
        .map(|c| c["options"]["task_id"].as_str().unwrap().to_string())
        .collect()
}

fn task_call(
    h: &mut Harness,
    passkey: &str,
    task: &str,
    call: TaskCall,
) -> Result<DbReply, CallError> {
    db(
        h,
        DbRequest::Task {
            passkey: passkey.into(),
            task_id: task.into(),
            call,
        },
    )
}

fn complete_jobs_and_datasets(h: &mut Harness) -> u64 {
    match db(h, DbRequest::CompleteJobsAndDatasets).unwrap() {
        DbReply::Rows(n) => n,
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// queue_tasks

#[test]
fn a_task_waits_until_its_dependency_completes() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let d = dataset(&mut h, two_tasks(), 1);
    let [generate, filter] = <[String; 2]>::try_from(task_ids(dir.path(), &d)).unwrap();

    assert_eq!(ids(&queue(&mut h, 10)), vec![generate.clone()]);
    // The parent is queued, then running: the child still waits.
    assert!(queue(&mut h, 10).is_empty());
    change(&mut h, &generate, TaskEvent::Start);
    assert!(queue(&mut h, 10).is_empty());
    assert_eq!(status_of(dir.path(), "task", &filter), "idle");

    change(&mut h, &generate, TaskEvent::Finish);
    assert_eq!(ids(&queue(&mut h, 10)), vec![filter.clone()]);
    assert_eq!(status_of(dir.path(), "task", &filter), "queued");
}

#[test]
fn datasets_take_turns_in_priority_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let low = dataset(&mut h, one_task(json!({})), 3);
    let high = dataset(&mut h, one_task(json!({})), 3);
    let middle = dataset(&mut h, one_task(json!({})), 3);
    let none = dataset(&mut h, one_task(json!({})), 3);
    {
        let conn = conn(dir.path());
        for (id, p) in [(&low, 2.0), (&high, 9.0), (&middle, 5.0), (&none, 0.0)] {
            conn.execute(
                "UPDATE dataset SET priority = ?1 WHERE dataset_id = ?2",
                params![p, id],
            )
            .unwrap();
        }
    }
    let picked = queue(&mut h, 6);
    let order: Vec<&str> = picked.iter().map(|t| t.dataset_id.as_str()).collect();
    // One task per dataset per round, highest priority first (9/10 − 2/10000 − log10(3)/10
    // for `high` …; `none` floors at 0).
    assert_eq!(
        order,
        [&high, &middle, &low, &none, &high, &middle].map(String::as_str)
    );
    // Within a dataset, in job order.
    let jobs: Vec<i64> = picked
        .iter()
        .map(|t| t.config["options"]["job"].as_i64().unwrap())
        .collect();
    assert_eq!(jobs, [0, 0, 0, 0, 1, 1]);
}

#[test]
fn only_processing_and_truncated_datasets_for_this_grid_are_queued() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let suspended = dataset(&mut h, one_task(json!({})), 2);
    let truncated = dataset(&mut h, one_task(json!({})), 2);
    let other_grid = dataset_on(&mut h, one_task(json!({})), 2, "b.elsewhere");
    let any_grid = dataset_on(&mut h, one_task(json!({})), 2, "");
    {
        let conn = conn(dir.path());
        for (id, status) in [(&suspended, "suspended"), (&truncated, "truncated")] {
            conn.execute(
                "UPDATE dataset SET status = ?1 WHERE dataset_id = ?2",
                params![status, id],
            )
            .unwrap();
        }
    }
    let picked = queue(&mut h, 100);
    let mut datasets: Vec<&str> = picked.iter().map(|t| t.dataset_id.as_str()).collect();
    datasets.sort();
    let mut expected = vec![
        truncated.as_str(),
        truncated.as_str(),
        any_grid.as_str(),
        any_grid.as_str(),
    ];
    expected.sort();
    assert_eq!(datasets, expected);
    assert!(!datasets.contains(&suspended.as_str()));
    assert!(!datasets.contains(&other_grid.as_str()));
}

#[test]
fn tasks_larger_than_the_grid_allows_are_left_idle() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let small = dataset(&mut h, one_task(json!({"memory": 1, "cpu": 1})), 1);
    let big = dataset(&mut h, one_task(json!({"memory": 8, "cpu": 1})), 1);
    let wide = dataset(&mut h, one_task(json!({"memory": 1, "cpu": 4})), 1);
    let limited = Resources {
        cpu: 2,
        memory: 4.0,
        ..Resources::default()
    };
    let picked = queue_with(&mut h, 10, limited, false);
    assert_eq!(ids(&picked), task_ids(dir.path(), &small));
    assert_eq!(
        picked[0].requirements,
        Resources {
            cpu: 1,
            gpu: 0,
            memory: 1.0,
            disk: 10.0,
            time: 1.0
        }
    );
    assert_eq!(
        status_of(dir.path(), "task", &task_ids(dir.path(), &big)[0]),
        "idle"
    );
    // A 0 means no limit on that resource.
    let unlimited_memory = Resources {
        cpu: 2,
        ..Resources::default()
    };
    assert_eq!(
        ids(&queue_with(&mut h, 10, unlimited_memory, false)),
        task_ids(dir.path(), &big)
    );
    assert_eq!(
        ids(&queue_with(&mut h, 10, Resources::default(), false)),
        task_ids(dir.path(), &wide)
    );
}

#[test]
fn num_bounds_each_call_and_nothing_is_queued_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let d = dataset(&mut h, one_task(json!({})), 5);
    let all = task_ids(dir.path(), &d);
    assert!(queue(&mut h, 0).is_empty());
    let first = queue(&mut h, 2);
    assert_eq!(ids(&first), all[..2]);
    let rest = queue(&mut h, 100);
    assert_eq!(ids(&rest), all[2..]);
    assert!(queue(&mut h, 100).is_empty());
    let conn = conn(dir.path());
    let queued: i64 = conn
        .query_row(
            "SELECT count(*) FROM task WHERE status = 'queued' AND gridspec = ?1",
            params![GRID],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(queued, 5);
}

#[test]
fn a_waiting_task_is_queued_like_an_idle_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let d = dataset(&mut h, one_task(json!({})), 1);
    let task = task_ids(dir.path(), &d).remove(0);
    // Queued, lost by the grid, retried: reset → waiting.
    change(&mut h, &task, TaskEvent::Queue);
    change(&mut h, &task, TaskEvent::Lost);
    change(&mut h, &task, TaskEvent::Retry);
    assert_eq!(status_of(dir.path(), "task", &task), "waiting");
    assert_eq!(ids(&queue(&mut h, 1)), vec![task]);
}

#[test]
fn a_direct_mode_passkey_acts_on_its_own_task_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    dataset(&mut h, one_task(json!({})), 2);
    let picked = queue(&mut h, 2);
    let (a, b) = (&picked[0], &picked[1]);
    let key = a.passkey.clone().expect("direct mode issues a passkey");
    assert_eq!(
        db(&mut h, DbRequest::VerifyPasskey { key: key.clone() }).unwrap(),
        DbReply::PasskeyOwner {
            scope: PasskeyScope::Task,
            subject: a.task_id.clone()
        }
    );
    assert_eq!(
        task_call(&mut h, &key, &a.task_id, TaskCall::StillRunning).unwrap(),
        DbReply::StillRunning(true)
    );
    assert!(matches!(
        task_call(&mut h, &key, &b.task_id, TaskCall::StillRunning),
        Err(CallError::Forbidden(_))
    ));
    task_call(&mut h, &key, &a.task_id, TaskCall::SetProcessing).unwrap();
    assert_eq!(status_of(dir.path(), "task", &a.task_id), "processing");
    // No lookup rows in direct mode.
    let lookups: i64 = conn(dir.path())
        .query_row("SELECT count(*) FROM task_lookup", [], |r| r.get(0))
        .unwrap();
    assert_eq!(lookups, 0);
}

#[test]
fn the_task_config_is_the_dataset_config_with_the_spec_options() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let d = dataset(&mut h, two_tasks(), 2);
    let picked = queue(&mut h, 1);
    let task = &picked[0];
    let number: i64 = conn(dir.path())
        .query_row(
            "SELECT dataset_num FROM dataset WHERE dataset_id = ?1",
            params![d],
            |r| r.get(0),
        )
        .unwrap();
    let config = &task.config;
    assert_eq!(config["dataset"], json!(number));
    assert_eq!(config["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(config["tasks"][1]["depends"], json!(["generate"]));
    let options = &config["options"];
    assert_eq!(options["task_id"], json!(task.task_id));
    assert_eq!(options["task"], json!("generate"));
    assert_eq!(options["dataset_id"], json!(d));
    assert_eq!(options["dataset"], json!(number));
    assert_eq!(options["job"], json!(0));
    assert_eq!(options["jobs_submitted"], json!(2));
    assert_eq!(options["debug"], json!(false));
    assert_eq!(
        options["resources"],
        json!({"cpu": 1, "gpu": 0, "memory": 1.0, "disk": 10.0, "time": 1.0})
    );
    assert_eq!(options["stillrunninginterval"], json!(60));
    assert_eq!(options["upload"], json!("logging"));
    assert_eq!(options["gridspec"], json!(GRID));
}

// ---------------------------------------------------------------------------------------
// set_grid_id and pilots

#[test]
fn set_grid_id_stores_the_submission_and_refuses_unknown_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    dataset(&mut h, one_task(json!({})), 1);
    let task = queue(&mut h, 1).remove(0).task_id;
    for _ in 0..2 {
        // Twice with the same values: storing them again is not "no such task".
        assert_eq!(
            db(
                &mut h,
                DbRequest::SetGridId {
                    task_id: task.clone(),
                    grid_queue_id: "1234.0".into(),
                    submit_dir: "/tmp/submit/x".into(),
                }
            )
            .unwrap(),
            DbReply::Done
        );
    }
    let stored: (String, String) = conn(dir.path())
        .query_row(
            "SELECT grid_queue_id, submit_dir FROM task WHERE task_id = ?1",
            params![task],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(stored, ("1234.0".into(), "/tmp/submit/x".into()));
    assert!(matches!(
        db(
            &mut h,
            DbRequest::SetGridId {
                task_id: "nope".into(),
                grid_queue_id: "1".into(),
                submit_dir: String::new(),
            }
        ),
        Err(CallError::Refused(_))
    ));
}

#[test]
fn a_pilot_gets_a_row_and_a_pilot_passkey() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let (pilot_id, passkey) = pilot(&mut h);
    // The first local id.
    assert_eq!(pilot_id, "b");
    assert_eq!(
        db(&mut h, DbRequest::VerifyPasskey { key: passkey }).unwrap(),
        DbReply::PasskeyOwner {
            scope: PasskeyScope::Pilot,
            subject: pilot_id.clone()
        }
    );
    let (gridspec, requirements, tasks): (String, String, String) = conn(dir.path())
        .query_row(
            "SELECT gridspec, requirements, tasks FROM pilot WHERE pilot_id = ?1",
            params![pilot_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(gridspec, GRID);
    let requirements: Value = serde_json::from_str(&requirements).unwrap();
    assert_eq!(requirements["memory"], json!(8.0));
    assert_eq!(tasks, "");
}

#[test]
fn pilot_mode_puts_queued_tasks_in_the_lookup_without_passkeys() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    dataset(
        &mut h,
        one_task(
            json!({"cpu": 2, "gpu": 1, "memory": 3.5, "disk": 4, "time": 5,
                        "os": "RHEL_7_x86_64"}),
        ),
        1,
    );
    let picked = queue_pilot(&mut h, 10);
    assert_eq!(picked.len(), 1);
    assert_eq!(picked[0].passkey, None);
    assert_eq!(status_of(dir.path(), "task", &picked[0].task_id), "queued");
    let row: (String, String, i64, i64, f64, f64, f64, Option<String>) = conn(dir.path())
        .query_row(
            "SELECT task_id, gridspec, req_cpu, req_gpu, req_memory, req_disk, req_time, \
             req_os FROM task_lookup",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            },
        )
        .unwrap();
    assert_eq!(
        row,
        (
            picked[0].task_id.clone(),
            GRID.to_string(),
            2,
            1,
            3.5,
            4.0,
            5.0,
            Some("RHEL_7_x86_64".to_string())
        )
    );
    let passkeys: i64 = conn(dir.path())
        .query_row("SELECT count(*) FROM passkey", [], |r| r.get(0))
        .unwrap();
    assert_eq!(passkeys, 0);
}

#[test]
fn new_task_hands_out_the_best_fit_first_and_gpu_tasks_only_to_gpu_pilots() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let small = dataset(&mut h, one_task(json!({"memory": 1})), 1);
    let big = dataset(&mut h, one_task(json!({"memory": 6})), 1);
    let medium = dataset(&mut h, one_task(json!({"memory": 3})), 1);
    let gpu = dataset(&mut h, one_task(json!({"memory": 2, "gpu": 1})), 1);
    assert_eq!(queue_pilot(&mut h, 10).len(), 4);
    let [small, big, medium, gpu] =
        [small, big, medium, gpu].map(|d| task_ids(dir.path(), &d).remove(0));

    let (_, key) = pilot(&mut h);
    // 7.5 GB and 3 cpus: the 6 GB task first, then the 1 GB one (the 3 GB one no longer
    // fits); the gpu task never, without a gpu, though it would fit.
    assert_eq!(new_task(&mut h, &key, slot(3, 0, 7.5)), vec![big, small]);
    // A pilot with a gpu gets the gpu task before the larger cpu-only one.
    let (_, gpu_key) = pilot(&mut h);
    assert_eq!(new_task(&mut h, &gpu_key, slot(1, 1, 4.0)), vec![gpu]);
    assert_eq!(new_task(&mut h, &key, slot(3, 0, 7.5)), vec![medium]);
}

#[test]
fn among_equal_tasks_the_longest_waiting_goes_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let d = dataset(&mut h, one_task(json!({})), 3);
    let tasks = task_ids(dir.path(), &d);
    queue_pilot(&mut h, 3);
    // The last job's task has waited longest.
    conn(dir.path())
        .execute(
            "UPDATE task_lookup SET insert_time = '2000-01-01T00:00:00.000000Z' \
             WHERE task_id = ?1",
            params![tasks[2]],
        )
        .unwrap();
    let (_, key) = pilot(&mut h);
    assert_eq!(
        new_task(&mut h, &key, slot(1, 0, 4.0)),
        vec![tasks[2].clone()]
    );
    assert_eq!(
        new_task(&mut h, &key, slot(1, 0, 4.0)),
        vec![tasks[0].clone()]
    );
}

#[test]
fn new_task_answers_nothing_when_nothing_fits() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    dataset(&mut h, one_task(json!({"memory": 2, "time": 5})), 1);
    queue_pilot(&mut h, 1);
    let (_, key) = pilot(&mut h);
    assert!(new_task(&mut h, &key, slot(4, 0, 1.0)).is_empty());
    assert!(new_task(
        &mut h,
        &key,
        Resources {
            time: 2.0,
            ..slot(4, 0, 8.0)
        }
    )
    .is_empty());
    assert!(new_task(&mut h, &key, Resources::default()).is_empty());
    // Still there for a pilot it fits.
    assert_eq!(new_task(&mut h, &key, slot(1, 0, 2.0)).len(), 1);
    assert!(new_task(&mut h, &key, slot(1, 0, 2.0)).is_empty());
}

#[test]
fn a_task_that_names_an_os_goes_only_to_that_os() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    dataset(&mut h, one_task(json!({"os": "RHEL_7_x86_64"})), 2);
    queue_pilot(&mut h, 2);
    let (_, key) = pilot(&mut h);
    assert!(
        new_task_with(&mut h, &key, slot(1, 0, 4.0), Some("RHEL_8_x86_64"))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        new_task_with(&mut h, &key, slot(1, 0, 4.0), Some("RHEL_7_x86_64"))
            .unwrap()
            .len(),
        1
    );
    // A worker that does not say is not held to it.
    assert_eq!(
        new_task_with(&mut h, &key, slot(1, 0, 4.0), None)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn new_task_refuses_anything_but_a_pilot_passkey() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    dataset(&mut h, one_task(json!({})), 2);
    let direct = queue(&mut h, 1).remove(0);
    queue_pilot(&mut h, 1);
    let task_key = direct.passkey.unwrap();
    for key in [task_key.as_str(), "no such key"] {
        assert!(matches!(
            new_task_with(&mut h, key, slot(1, 0, 4.0), None),
            Err(CallError::Forbidden(_))
        ));
    }
    // Nothing was taken from the lookup.
    let lookups: i64 = conn(dir.path())
        .query_row("SELECT count(*) FROM task_lookup", [], |r| r.get(0))
        .unwrap();
    assert_eq!(lookups, 1);
}

#[test]
fn a_task_handed_to_a_pilot_runs_and_only_that_pilot_may_finish_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    dataset(&mut h, one_task(json!({})), 1);
    queue_pilot(&mut h, 1);
    let (pilot_id, key) = pilot(&mut h);
    let (_, other_key) = pilot(&mut h);
    let configs = new_task_with(&mut h, &key, slot(1, 0, 4.0), None).unwrap();
    assert_eq!(configs.len(), 1);
    let task = configs[0]["options"]["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(configs[0]["options"]["gridspec"], json!(GRID));
    assert_eq!(status_of(dir.path(), "task", &task), "processing");
    let (tasks, lookups): (String, i64) = conn(dir.path())
        .query_row(
            "SELECT tasks, (SELECT count(*) FROM task_lookup) FROM pilot WHERE pilot_id = ?1",
            params![pilot_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((tasks, lookups), (task.clone(), 0));

    let finish = TaskCall::Finish {
        stats: json!({"hostname": "node1", "time_used": 60}),
    };
    assert!(matches!(
        task_call(&mut h, &other_key, &task, finish.clone()),
        Err(CallError::Forbidden(_))
    ));
    assert_eq!(
        task_call(&mut h, &key, &task, finish).unwrap(),
        DbReply::Done
    );
    assert_eq!(status_of(dir.path(), "task", &task), "complete");
}

#[test]
fn update_pilot_records_its_tasks_and_resources_for_its_own_passkey_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    dataset(&mut h, one_task(json!({})), 2);
    queue_pilot(&mut h, 2);
    let (pilot_id, key) = pilot(&mut h);
    let (_, other_key) = pilot(&mut h);
    let handed = new_task(&mut h, &key, slot(2, 0, 4.0));
    assert_eq!(handed.len(), 2);
    let available = slot(1, 0, 3.0);
    let claimed = slot(1, 0, 1.0);
    let update = |passkey: &str, tasks: Vec<String>| DbRequest::UpdatePilot {
        passkey: passkey.into(),
        pilot_id: pilot_id.clone(),
        tasks,
        available,
        claimed,
    };
    // One task finished; a task never handed to it is not taken on.
    assert_eq!(
        db(
            &mut h,
            update(&key, vec![handed[1].clone(), "someone-elses".into()])
        )
        .unwrap(),
        DbReply::Done
    );
    let (tasks, avail, claim): (String, String, String) = conn(dir.path())
        .query_row(
            "SELECT tasks, resources_avail, resources_claim FROM pilot WHERE pilot_id = ?1",
            params![pilot_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(tasks, handed[1]);
    assert_eq!(
        serde_json::from_str::<Resources>(&avail).unwrap(),
        available
    );
    assert_eq!(serde_json::from_str::<Resources>(&claim).unwrap(), claimed);

    assert!(matches!(
        db(&mut h, update(&other_key, vec![])),
        Err(CallError::Forbidden(_))
    ));
    assert!(matches!(
        db(&mut h, update("no such key", vec![])),
        Err(CallError::Forbidden(_))
    ));
}

// ---------------------------------------------------------------------------------------
// completion

/// Sets task statuses straight in the file (the completion rules read them, whichever way
/// they came).
fn set_statuses(dir: &Path, tasks: &[String], statuses: &[&str]) {
    let conn = conn(dir);
    for (task, status) in tasks.iter().zip(statuses) {
        conn.execute(
            "UPDATE task SET status = ?1 WHERE task_id = ?2",
            params![status, task],
        )
        .unwrap();
    }
}

fn job_of(dir: &Path, task: &str) -> String {
    conn(dir)
        .query_row(
            "SELECT job_id FROM task WHERE task_id = ?1",
            params![task],
            |r| r.get(0),
        )
        .unwrap()
}

fn end_date(dir: &Path, dataset_id: &str) -> Option<String> {
    conn(dir)
        .query_row(
            "SELECT end_date FROM dataset WHERE dataset_id = ?1",
            params![dataset_id],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn a_job_and_its_dataset_complete_when_every_task_completes() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let d = dataset(&mut h, two_tasks(), 1);
    let tasks = task_ids(dir.path(), &d);
    let job = job_of(dir.path(), &tasks[0]);
    queue(&mut h, 1);
    finish(&mut h, &tasks[0]);
    assert_eq!(complete_jobs_and_datasets(&mut h), 0);
    assert_eq!(status_of(dir.path(), "job", &job), "processing");

    queue(&mut h, 1);
    finish(&mut h, &tasks[1]);
    assert_eq!(complete_jobs_and_datasets(&mut h), 2);
    assert_eq!(status_of(dir.path(), "job", &job), "complete");
    assert_eq!(status_of(dir.path(), "dataset", &d), "complete");
    assert!(end_date(dir.path(), &d).is_some());
    // Nothing left to change.
    assert_eq!(complete_jobs_and_datasets(&mut h), 0);
}

#[test]
fn a_job_whose_other_tasks_failed_ends_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let d = dataset(&mut h, two_tasks(), 2);
    let tasks = task_ids(dir.path(), &d);
    set_statuses(
        dir.path(),
        &tasks,
        &["complete", "failed", "complete", "complete"],
    );
    assert_eq!(complete_jobs_and_datasets(&mut h), 3);
    assert_eq!(
        status_of(dir.path(), "job", &job_of(dir.path(), &tasks[0])),
        "errors"
    );
    assert_eq!(
        status_of(dir.path(), "job", &job_of(dir.path(), &tasks[2])),
        "complete"
    );
    assert_eq!(status_of(dir.path(), "dataset", &d), "errors");
    assert!(end_date(dir.path(), &d).is_some());
}

#[test]
fn a_job_is_suspended_only_when_no_task_is_active() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let d = dataset(&mut h, two_tasks(), 3);
    let tasks = task_ids(dir.path(), &d);
    set_statuses(
        dir.path(),
        &tasks,
        &[
            "suspended",
            "failed", // job 0: suspended
            "suspended",
            "queued", // job 1: still processing
            "complete",
            "suspended", // job 2: suspended
        ],
    );
    assert_eq!(complete_jobs_and_datasets(&mut h), 2);
    let job = |i: usize| status_of(dir.path(), "job", &job_of(dir.path(), &tasks[i]));
    assert_eq!(
        [job(0), job(2), job(4)],
        ["suspended", "processing", "suspended"]
    );
    // A job still processing keeps the dataset processing.
    assert_eq!(status_of(dir.path(), "dataset", &d), "processing");

    set_statuses(dir.path(), &tasks[3..4], &["failed"]);
    assert_eq!(complete_jobs_and_datasets(&mut h), 2);
    assert_eq!(job(2), "suspended");
    assert_eq!(status_of(dir.path(), "dataset", &d), "suspended");
    assert_eq!(end_date(dir.path(), &d), None);

    // Resumed tasks make a job processing again.
    set_statuses(dir.path(), &tasks[0..1], &["idle"]);
    assert_eq!(complete_jobs_and_datasets(&mut h), 1);
    assert_eq!(job(0), "processing");
}

#[test]
fn a_processing_dataset_waits_for_all_its_jobs_and_a_truncated_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let reply = db(
        &mut h,
        DbRequest::SubmitDataset(Box::new(DatasetSubmission {
            config: one_task(json!({})).to_string(),
            description: String::new(),
            njobs: 3,
            gridspec: GRID.into(),
            debug: false,
            group: None,
            username: "alice".into(),
            stat_keys: vec![],
        })),
    )
    .unwrap();
    let DbReply::Dataset { dataset_id: d, .. } = reply else {
        panic!("{reply:?}");
    };
    // One job of three exists, and completes.
    db(&mut h, DbRequest::BufferJobs { max_jobs: 1 }).unwrap();
    let task = queue(&mut h, 1).remove(0).task_id;
    finish(&mut h, &task);
    assert_eq!(complete_jobs_and_datasets(&mut h), 1);
    assert_eq!(
        status_of(dir.path(), "job", &job_of(dir.path(), &task)),
        "complete"
    );
    assert_eq!(status_of(dir.path(), "dataset", &d), "processing");

    conn(dir.path())
        .execute(
            "UPDATE dataset SET status = 'truncated' WHERE dataset_id = ?1",
            params![d],
        )
        .unwrap();
    assert_eq!(complete_jobs_and_datasets(&mut h), 1);
    assert_eq!(status_of(dir.path(), "dataset", &d), "complete");
}

// ---------------------------------------------------------------------------------------
// remove_expired

#[test]
fn remove_expired_deletes_only_expired_passkeys_and_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let live = match db(
        &mut h,
        DbRequest::IssuePasskey {
            scope: PasskeyScope::User,
            subject: "u".into(),
            ttl: Duration::from_secs(3600),
        },
    )
    .unwrap()
    {
        DbReply::Passkey(key) => key,
        other => panic!("{other:?}"),
    };
    {
        let conn = conn(dir.path());
        let past = "2000-01-01T00:00:00.000000Z";
        conn.execute(
            "INSERT INTO passkey (passkey_id, auth_key, scope, subject, expire) \
             VALUES ('old', 'old-key', 'task', 't', ?1)",
            params![past],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO session (session_id, user_id, csrf_token, expire) VALUES \
             ('s-old', 'u', 'c', ?1), ('s-new', 'u', 'c', '2999-01-01T00:00:00.000000Z')",
            params![past],
        )
        .unwrap();
    }
    assert_eq!(
        db(&mut h, DbRequest::RemoveExpired).unwrap(),
        DbReply::Rows(2)
    );
    assert_eq!(
        db(&mut h, DbRequest::RemoveExpired).unwrap(),
        DbReply::Rows(0)
    );
    assert!(db(&mut h, DbRequest::VerifyPasskey { key: live }).is_ok());
    let sessions: Vec<String> = {
        let conn = conn(dir.path());
        let mut stmt = conn.prepare("SELECT session_id FROM session").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(sessions, ["s-new"]);
}

// ---------------------------------------------------------------------------------------
// scale

/// Writes `jobs` jobs of a two-task dataset straight to the file: the first `complete` jobs
/// done, the next `queued` with their first task queued (the second waits for it), the rest
/// idle.
fn seed_large_dataset(conn: &Connection, num: i64, jobs: i64, complete: i64, queued: i64) {
    let now = ops::now();
    let id = format!("big{num}");
    conn.execute(
        "INSERT INTO dataset (dataset_id, dataset_num, status, status_changed, jobs_submitted, \
         tasks_submitted, jobs_buffered, start_date, gridspec) \
         VALUES (?1, ?2, 'processing', ?3, ?4, ?5, ?4, ?3, '')",
        params![id, num, now, jobs, 2 * jobs],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO config (dataset_id, config_data) VALUES (?1, ?2)",
        params![id, two_tasks().to_string()],
    )
    .unwrap();
    let mut job = conn
        .prepare("INSERT INTO job (job_id, dataset_id, job_index, status, status_changed) VALUES (?1, ?2, ?3, ?4, ?5)")
        .unwrap();
    let mut task = conn
        .prepare(
            "INSERT INTO task (task_id, job_id, dataset_id, task_rel_id, task_index, status, \
             status_changed, requirements, depends) VALUES (?1, ?2, ?3, 'r', ?4, ?5, ?6, ?7, ?8)",
        )
        .unwrap();
    let reqs = json!({"cpu": 1, "gpu": 0, "memory": 1.0, "disk": 10.0, "time": 1.0}).to_string();
    for j in 0..jobs {
        let (job_status, first, second) = if j < complete {
            ("complete", "complete", "complete")
        } else if j < complete + queued {
            ("processing", "queued", "idle")
        } else {
            ("processing", "idle", "idle")
        };
        let job_id = format!("{id}j{j}");
        let (t0, t1) = (format!("{id}t{j}a"), format!("{id}t{j}b"));
        job.execute(params![job_id, id, j, job_status, now])
            .unwrap();
        task.execute(params![t0, job_id, id, 0, first, now, reqs, "[]"])
            .unwrap();
        task.execute(params![
            t1,
            job_id,
            id,
            1,
            second,
            now,
            reqs,
            json!([t0]).to_string()
        ])
        .unwrap();
    }
}

/// A million tasks, 100,000 of them queued: queueing 1000 and a completion pass take well
/// under the cycle they run in. Slow to set up in a debug build: run with
/// `cargo test --release -p iceprod-db --test queueing -- --ignored`.
#[test]
#[ignore]
fn queueing_and_completion_stay_fast_with_a_million_tasks() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut conn = conn(dir.path());
        let tx = conn.transaction().unwrap();
        // 1,000,000 tasks: 600,000 complete, 100,000 queued, the rest idle; most idle ones
        // wait for a queued parent, in front of the eligible ones.
        seed_large_dataset(&tx, 1, 400_000, 250_000, 80_000);
        seed_large_dataset(&tx, 2, 100_000, 50_000, 20_000);
        tx.commit().unwrap();
    }
    let mut h = start(dir.path());
    for pilot_mode in [false, true] {
        let begin = Instant::now();
        let picked = queue_with(&mut h, 1000, Resources::default(), pilot_mode);
        let took = begin.elapsed();
        eprintln!("queue_tasks(1000, pilot {pilot_mode}): {took:?}");
        assert_eq!(picked.len(), 1000);
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    let (_, key) = pilot(&mut h);
    let begin = Instant::now();
    let handed = new_task(&mut h, &key, slot(16, 0, 64.0));
    eprintln!("new_task: {:?}", begin.elapsed());
    assert_eq!(handed.len(), 16);

    let begin = Instant::now();
    complete_jobs_and_datasets(&mut h);
    let took = begin.elapsed();
    eprintln!("complete_jobs_and_datasets: {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
}
