//! Queueing, pilots, completion and cleanup through the db module's messages: datasets are
//! submitted and buffered as the server does, then queued, handed to pilots and run. Every
//! body runs on a SQLite file, and again on a fresh database of a MariaDB/MySQL server when
//! `ICEPROD_TEST_MYSQL_URL` names one (`scripts/mariadb.sh start DIR` prints such a url);
//! without it the MariaDB variants say so on stderr and pass. Seeding and checking go
//! through the backend-neutral `Tx`, so both variants run the same SQL.

use std::time::{Duration, Instant};

mod support;

use iceprod_db::sql::{SqlValue, Tx};
use iceprod_db::{args, ops};
use iceprod_runtime::harness::Harness;
use iceprod_runtime::states::TaskEvent;
use iceprod_runtime::{
    CallError, DbReply, DbRequest, PasskeyScope, QueuedTask, Resources, TaskCall,
};
use serde_json::{json, Value};
use support::{call_db as db, change, config_task_ids, create_pilot, new_task_configs, one_task};
use support::{queue_tasks, rows, slot, submission, submit_dataset, unlimited, TestDb};

const GRID: &str = "b.local";
/// Site "b" (number 1), the prefix of the ids these tests check.
const SITE: &str = "[site]\nid = \"b\"\n";

on_both_backends!(
    a_task_waits_until_its_dependency_completes,
    a_task_waits_for_its_dependency_in_another_dataset,
    datasets_take_turns_in_priority_order,
    only_processing_and_truncated_datasets_for_this_grid_are_queued,
    tasks_larger_than_the_grid_allows_are_left_idle,
    num_bounds_each_call_and_nothing_is_queued_twice,
    a_waiting_task_is_queued_like_an_idle_one,
    a_direct_mode_passkey_acts_on_its_own_task_only,
    a_requeued_task_revokes_the_passkey_of_its_earlier_attempt,
    a_task_requeued_in_direct_mode_leaves_the_pilot_lookup,
    the_task_config_is_the_dataset_config_with_the_spec_options,
    set_grid_id_stores_the_submission_and_refuses_unknown_tasks,
    a_pilot_gets_a_row_and_a_pilot_passkey,
    pilot_mode_puts_queued_tasks_in_the_lookup_without_passkeys,
    new_task_hands_out_the_best_fit_first_and_gpu_tasks_only_to_gpu_pilots,
    a_pilot_gets_every_task_that_fits_its_resources,
    among_equal_tasks_the_longest_waiting_goes_first,
    new_task_answers_nothing_when_nothing_fits,
    a_task_that_names_an_os_goes_only_to_that_os,
    new_task_refuses_anything_but_a_pilot_passkey,
    a_task_handed_to_a_pilot_runs_and_only_that_pilot_may_finish_it,
    update_pilot_records_its_tasks_and_resources_for_its_own_passkey_only,
    a_job_and_its_dataset_complete_when_every_task_completes,
    a_job_whose_other_tasks_failed_ends_in_errors,
    a_job_is_suspended_only_when_no_task_is_active,
    a_processing_dataset_waits_for_all_its_jobs_and_a_truncated_one_does_not,
    remove_expired_deletes_only_expired_passkeys_and_sessions,
);

fn dataset_on(h: &mut Harness, config: Value, njobs: u32, gridspec: &str) -> String {
    submit_dataset(h, &config, njobs, gridspec, false)
}

fn dataset(h: &mut Harness, config: Value, njobs: u32) -> String {
    dataset_on(h, config, njobs, GRID)
}

/// `generate`, then `filter` which depends on it.
fn two_tasks() -> Value {
    json!({"version": 3, "tasks": [
        {"name": "generate", "trays": [{"modules": [{"src": "gen.sh"}]}]},
        {"name": "filter", "depends": ["generate"], "requirements": {"memory": 2},
         "trays": [{"modules": [{"src": "filter.sh"}]}]}]})
}

fn queue_with(h: &mut Harness, num: u32, largest: Resources, pilot_mode: bool) -> Vec<QueuedTask> {
    queue_tasks(h, GRID, num, largest, pilot_mode)
}

fn queue(h: &mut Harness, num: u32) -> Vec<QueuedTask> {
    queue_with(h, num, unlimited(), false)
}

fn queue_pilot(h: &mut Harness, num: u32) -> Vec<QueuedTask> {
    queue_with(h, num, unlimited(), true)
}

fn a_requeued_task_revokes_the_passkey_of_its_earlier_attempt(d: &TestDb) {
    let mut h = d.start(SITE);
    dataset(&mut h, one_task(json!({})), 1);
    let first = queue(&mut h, 1).remove(0);
    let old_key = first.passkey.clone().unwrap();
    task_call(&mut h, &old_key, &first.task_id, TaskCall::SetProcessing).unwrap();
    // The grid lost the job; the task is retried as a new attempt.
    change(&mut h, &first.task_id, TaskEvent::Lost);
    change(&mut h, &first.task_id, TaskEvent::Retry);
    let second = queue(&mut h, 1).remove(0);
    assert_eq!(second.task_id, first.task_id);
    let new_key = second.passkey.clone().unwrap();
    assert_ne!(new_key, old_key);
    // The earlier attempt's worker can no longer act on the task, the new one can.
    assert!(matches!(
        task_call(&mut h, &old_key, &first.task_id, TaskCall::SetProcessing),
        Err(CallError::Forbidden(_))
    ));
    task_call(&mut h, &new_key, &second.task_id, TaskCall::SetProcessing).unwrap();
    assert_eq!(status_of(d, "task", &second.task_id), "processing");
}

fn a_task_requeued_in_direct_mode_leaves_the_pilot_lookup(d: &TestDb) {
    let mut h = d.start(SITE);
    dataset(&mut h, one_task(json!({})), 1);
    let first = queue_pilot(&mut h, 1).remove(0);
    assert_eq!(d.count("SELECT count(*) FROM task_lookup", args![]), 1);
    // A person resets the waiting pilot task; it is queued again, now in direct mode.
    change(&mut h, &first.task_id, TaskEvent::ManualReset);
    change(&mut h, &first.task_id, TaskEvent::Retry);
    let again = queue(&mut h, 1).remove(0);
    assert_eq!(again.task_id, first.task_id);
    assert_eq!(d.count("SELECT count(*) FROM task_lookup", args![]), 0);
}

/// Runs a queued task to complete.
fn finish(h: &mut Harness, task: &str) {
    change(h, task, TaskEvent::Start);
    change(h, task, TaskEvent::Finish);
}

fn status_of(d: &TestDb, table: &str, id: &str) -> String {
    d.texts(
        &format!("SELECT status FROM {table} WHERE {table}_id = ?"),
        args![id],
    )
    .remove(0)
}

/// Task ids of a dataset in job then task order.
fn task_ids(d: &TestDb, dataset_id: &str) -> Vec<String> {
    d.texts(
        "SELECT task.task_id FROM task JOIN job ON job.job_id = task.job_id \
         WHERE task.dataset_id = ? ORDER BY job.job_index, task.task_index",
        args![dataset_id],
    )
}

fn ids(tasks: &[QueuedTask]) -> Vec<String> {
    tasks.iter().map(|t| t.task_id.clone()).collect()
}

fn pilot(h: &mut Harness) -> (String, String) {
    let requirements = Resources {
        cpu: 4,
        gpu: 0,
        memory: 8.0,
        disk: 20.0,
        time: 12.0,
    };
    create_pilot(h, GRID, requirements)
}

fn new_task_with(
    h: &mut Harness,
    passkey: &str,
    available: Resources,
    os: Option<&str>,
) -> Result<Vec<Value>, CallError> {
    new_task_configs(h, passkey, GRID, available, os)
}

fn new_task(h: &mut Harness, passkey: &str, available: Resources) -> Vec<String> {
    config_task_ids(&new_task_with(h, passkey, available, None).unwrap())
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
    rows(h, DbRequest::CompleteJobsAndDatasets)
}
// ---------------------------------------------------------------------------------------
// queue_tasks

fn a_task_waits_until_its_dependency_completes(d: &TestDb) {
    let mut h = d.start(SITE);
    let ds = dataset(&mut h, two_tasks(), 1);
    let [generate, filter] = <[String; 2]>::try_from(task_ids(d, &ds)).unwrap();

    assert_eq!(ids(&queue(&mut h, 10)), vec![generate.clone()]);
    // The parent is queued, then running: the child still waits.
    assert!(queue(&mut h, 10).is_empty());
    change(&mut h, &generate, TaskEvent::Start);
    assert!(queue(&mut h, 10).is_empty());
    assert_eq!(status_of(d, "task", &filter), "idle");

    change(&mut h, &generate, TaskEvent::Finish);
    assert_eq!(ids(&queue(&mut h, 10)), vec![filter.clone()]);
    assert_eq!(status_of(d, "task", &filter), "queued");
}

fn a_task_waits_for_its_dependency_in_another_dataset(d: &TestDb) {
    let mut h = d.start(SITE);
    let reply = db(&mut h, submission(&two_tasks(), 1, GRID, false)).unwrap();
    let DbReply::Dataset {
        dataset_id: upstream,
        dataset_num,
        ..
    } = reply
    else {
        panic!("{reply:?}");
    };
    let downstream = dataset(
        &mut h,
        json!({"version": 3, "tasks": [
            {"name": "merge", "depends": [format!("{dataset_num}.filter")],
             "trays": [{"modules": [{"src": "merge.sh"}]}]}]}),
        1,
    );
    let [generate, filter] = <[String; 2]>::try_from(task_ids(d, &upstream)).unwrap();
    let merge = task_ids(d, &downstream).remove(0);

    assert_eq!(ids(&queue(&mut h, 10)), vec![generate.clone()]);
    finish(&mut h, &generate);
    assert_eq!(ids(&queue(&mut h, 10)), vec![filter.clone()]);
    change(&mut h, &filter, TaskEvent::Start);
    assert!(queue(&mut h, 10).is_empty());
    assert_eq!(status_of(d, "task", &merge), "idle");
    change(&mut h, &filter, TaskEvent::Finish);
    assert_eq!(ids(&queue(&mut h, 10)), vec![merge]);
}

fn datasets_take_turns_in_priority_order(d: &TestDb) {
    let mut h = d.start(SITE);
    let low = dataset(&mut h, one_task(json!({})), 3);
    let high = dataset(&mut h, one_task(json!({})), 3);
    let none = dataset(&mut h, one_task(json!({})), 3);
    let middle = dataset(&mut h, one_task(json!({})), 3);
    let also_none = dataset(&mut h, one_task(json!({})), 3);
    for (id, p) in [(&low, 2.0), (&high, 9.0), (&middle, 5.0)] {
        d.exec(
            "UPDATE dataset SET priority = ? WHERE dataset_id = ?",
            args![p, id.as_str()],
        );
    }
    let picked = queue(&mut h, 7);
    let order: Vec<&str> = picked.iter().map(|t| t.dataset_id.as_str()).collect();
    // One task per dataset per round, highest priority first (9/10 − 2/10000 − log10(3)/10
    // for `high` …); the two of priority 0 floor at 0 and go by dataset number.
    assert_eq!(
        order,
        [&high, &middle, &low, &none, &also_none, &high, &middle].map(String::as_str)
    );
    // Within a dataset, in job order.
    let jobs: Vec<i64> = picked
        .iter()
        .map(|t| t.config["options"]["job"].as_i64().unwrap())
        .collect();
    assert_eq!(jobs, [0, 0, 0, 0, 0, 1, 1]);
}

fn only_processing_and_truncated_datasets_for_this_grid_are_queued(d: &TestDb) {
    let mut h = d.start(SITE);
    let suspended = dataset(&mut h, one_task(json!({})), 2);
    let truncated = dataset(&mut h, one_task(json!({})), 2);
    let other_grid = dataset_on(&mut h, one_task(json!({})), 2, "b.elsewhere");
    let any_grid = dataset_on(&mut h, one_task(json!({})), 2, "");
    for (id, status) in [(&suspended, "suspended"), (&truncated, "truncated")] {
        d.exec(
            "UPDATE dataset SET status = ? WHERE dataset_id = ?",
            args![status, id.as_str()],
        );
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

fn tasks_larger_than_the_grid_allows_are_left_idle(d: &TestDb) {
    let mut h = d.start(SITE);
    let small = dataset(&mut h, one_task(json!({"memory": 1, "cpu": 1})), 1);
    let big = dataset(&mut h, one_task(json!({"memory": 8, "cpu": 1})), 1);
    let wide = dataset(&mut h, one_task(json!({"memory": 1, "cpu": 4})), 1);
    let limited = Resources {
        cpu: 2,
        memory: 4.0,
        ..Resources::default()
    };
    let picked = queue_with(&mut h, 10, limited, false);
    assert_eq!(ids(&picked), task_ids(d, &small));
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
    assert_eq!(status_of(d, "task", &task_ids(d, &big)[0]), "idle");
    // A 0 means no limit on that resource.
    let unlimited_memory = Resources {
        cpu: 2,
        ..Resources::default()
    };
    assert_eq!(
        ids(&queue_with(&mut h, 10, unlimited_memory, false)),
        task_ids(d, &big)
    );
    assert_eq!(
        ids(&queue_with(&mut h, 10, Resources::default(), false)),
        task_ids(d, &wide)
    );
    // But a grid without gpus never gets a gpu task, however large it is otherwise.
    let gpu = dataset(&mut h, one_task(json!({"gpu": 1})), 1);
    assert!(queue_with(&mut h, 10, Resources::default(), false).is_empty());
    assert_eq!(status_of(d, "task", &task_ids(d, &gpu)[0]), "idle");
    assert_eq!(
        ids(&queue_with(&mut h, 10, unlimited(), false)),
        task_ids(d, &gpu)
    );
}

fn num_bounds_each_call_and_nothing_is_queued_twice(d: &TestDb) {
    let mut h = d.start(SITE);
    let ds = dataset(&mut h, one_task(json!({})), 5);
    let all = task_ids(d, &ds);
    assert!(queue(&mut h, 0).is_empty());
    let first = queue(&mut h, 2);
    assert_eq!(ids(&first), all[..2]);
    let rest = queue(&mut h, 100);
    assert_eq!(ids(&rest), all[2..]);
    assert!(queue(&mut h, 100).is_empty());
    assert_eq!(
        d.count(
            "SELECT count(*) FROM task WHERE status = 'queued' AND gridspec = ?",
            args![GRID]
        ),
        5
    );
}

fn a_waiting_task_is_queued_like_an_idle_one(d: &TestDb) {
    let mut h = d.start(SITE);
    let ds = dataset(&mut h, one_task(json!({})), 1);
    let task = task_ids(d, &ds).remove(0);
    // Queued, lost by the grid, retried: reset → waiting.
    change(&mut h, &task, TaskEvent::Queue);
    change(&mut h, &task, TaskEvent::Lost);
    change(&mut h, &task, TaskEvent::Retry);
    assert_eq!(status_of(d, "task", &task), "waiting");
    assert_eq!(ids(&queue(&mut h, 1)), vec![task]);
}

fn a_direct_mode_passkey_acts_on_its_own_task_only(d: &TestDb) {
    let mut h = d.start(SITE);
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
    assert_eq!(status_of(d, "task", &a.task_id), "processing");
    // No lookup rows in direct mode.
    assert_eq!(d.count("SELECT count(*) FROM task_lookup", args![]), 0);
}

fn the_task_config_is_the_dataset_config_with_the_spec_options(d: &TestDb) {
    let mut h = d.start(SITE);
    let ds = dataset(&mut h, two_tasks(), 2);
    let picked = queue(&mut h, 1);
    let task = &picked[0];
    let number = d.count(
        "SELECT dataset_num FROM dataset WHERE dataset_id = ?",
        args![ds.as_str()],
    );
    let config = &task.config;
    assert_eq!(config["dataset"], json!(number));
    assert_eq!(config["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(config["tasks"][1]["depends"], json!(["generate"]));
    let options = &config["options"];
    assert_eq!(options["task_id"], json!(task.task_id));
    assert_eq!(options["task"], json!("generate"));
    assert_eq!(options["dataset_id"], json!(ds));
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

fn set_grid_id_stores_the_submission_and_refuses_unknown_tasks(d: &TestDb) {
    let mut h = d.start(SITE);
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
    let row = d.rows(
        "SELECT grid_queue_id, submit_dir FROM task WHERE task_id = ?",
        args![task.as_str()],
    );
    assert_eq!(row[0].text(0).unwrap(), "1234.0");
    assert_eq!(row[0].text(1).unwrap(), "/tmp/submit/x");
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

fn a_pilot_gets_a_row_and_a_pilot_passkey(d: &TestDb) {
    let mut h = d.start(SITE);
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
    let row = d.rows(
        "SELECT gridspec, requirements, tasks FROM pilot WHERE pilot_id = ?",
        args![pilot_id.as_str()],
    );
    assert_eq!(row[0].text(0).unwrap(), GRID);
    let requirements: Resources = serde_json::from_str(&row[0].text(1).unwrap()).unwrap();
    assert_eq!(requirements.memory, 8.0);
    assert_eq!(row[0].text(2).unwrap(), "");
}

fn pilot_mode_puts_queued_tasks_in_the_lookup_without_passkeys(d: &TestDb) {
    let mut h = d.start(SITE);
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
    assert_eq!(status_of(d, "task", &picked[0].task_id), "queued");
    let rows = d.rows(
        "SELECT task_id, gridspec, req_cpu, req_gpu, req_memory, req_disk, req_time, req_os \
         FROM task_lookup",
        args![],
    );
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.text(0).unwrap(), picked[0].task_id);
    assert_eq!(r.text(1).unwrap(), GRID);
    assert_eq!((r.int(2).unwrap(), r.int(3).unwrap()), (2, 1));
    assert_eq!(
        [r.real(4).unwrap(), r.real(5).unwrap(), r.real(6).unwrap()],
        [3.5, 4.0, 5.0]
    );
    assert_eq!(r.opt_text(7).unwrap().as_deref(), Some("RHEL_7_x86_64"));
    // No task passkey (the submission's user may hold a user passkey).
    assert_eq!(
        d.count(
            "SELECT count(*) FROM passkey WHERE scope <> 'user'",
            args![]
        ),
        0
    );
}

fn new_task_hands_out_the_best_fit_first_and_gpu_tasks_only_to_gpu_pilots(d: &TestDb) {
    let mut h = d.start(SITE);
    let small = dataset(&mut h, one_task(json!({"memory": 1})), 1);
    let big = dataset(&mut h, one_task(json!({"memory": 6})), 1);
    let medium = dataset(&mut h, one_task(json!({"memory": 3})), 1);
    let gpu = dataset(&mut h, one_task(json!({"memory": 2, "gpu": 1})), 1);
    assert_eq!(queue_pilot(&mut h, 10).len(), 4);
    let [small, big, medium, gpu] = [small, big, medium, gpu].map(|ds| task_ids(d, &ds).remove(0));

    let (_, key) = pilot(&mut h);
    // 7.5 GB and 3 cpus: the 6 GB task first, then the 1 GB one (the 3 GB one no longer
    // fits); the gpu task never, without a gpu, though it would fit.
    assert_eq!(new_task(&mut h, &key, slot(3, 0, 7.5)), vec![big, small]);
    // A pilot with a gpu gets the gpu task before the larger cpu-only one.
    let (_, gpu_key) = pilot(&mut h);
    assert_eq!(new_task(&mut h, &gpu_key, slot(1, 1, 4.0)), vec![gpu]);
    assert_eq!(new_task(&mut h, &key, slot(3, 0, 7.5)), vec![medium]);
}

fn a_pilot_gets_every_task_that_fits_its_resources(d: &TestDb) {
    let mut h = d.start(SITE);
    dataset(&mut h, one_task(json!({"memory": 1, "disk": 1})), 250);
    assert_eq!(queue_pilot(&mut h, 250).len(), 250);
    let (pilot_id, key) = pilot(&mut h);
    // More than one page of lookup rows; memory runs out first.
    let roomy = Resources {
        cpu: 1000,
        gpu: 0,
        memory: 220.5,
        disk: 1000.0,
        time: 24.0,
    };
    let handed = new_task(&mut h, &key, roomy);
    assert_eq!(handed.len(), 220);
    let tasks = d.texts(
        "SELECT tasks FROM pilot WHERE pilot_id = ?",
        args![pilot_id.as_str()],
    );
    assert_eq!(tasks[0].split(',').count(), 220);
    assert_eq!(d.count("SELECT count(*) FROM task_lookup", args![]), 30);
    assert_eq!(
        d.count(
            "SELECT count(*) FROM task WHERE status = 'processing'",
            args![]
        ),
        220
    );
}

fn among_equal_tasks_the_longest_waiting_goes_first(d: &TestDb) {
    let mut h = d.start(SITE);
    let ds = dataset(&mut h, one_task(json!({})), 3);
    let tasks = task_ids(d, &ds);
    queue_pilot(&mut h, 3);
    // The last job's task has waited longest.
    d.exec(
        "UPDATE task_lookup SET insert_time = '2000-01-01T00:00:00.000000Z' WHERE task_id = ?",
        args![tasks[2].as_str()],
    );
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

fn new_task_answers_nothing_when_nothing_fits(d: &TestDb) {
    let mut h = d.start(SITE);
    dataset(&mut h, one_task(json!({"memory": 2, "time": 5})), 1);
    queue_pilot(&mut h, 1);
    let (_, key) = pilot(&mut h);
    assert!(new_task(&mut h, &key, slot(4, 0, 1.0)).is_empty());
    let short = Resources {
        time: 2.0,
        ..slot(4, 0, 8.0)
    };
    assert!(new_task(&mut h, &key, short).is_empty());
    assert!(new_task(&mut h, &key, Resources::default()).is_empty());
    // Still there for a pilot it fits.
    assert_eq!(new_task(&mut h, &key, slot(1, 0, 2.0)).len(), 1);
    assert!(new_task(&mut h, &key, slot(1, 0, 2.0)).is_empty());
}

fn a_task_that_names_an_os_goes_only_to_that_os(d: &TestDb) {
    let mut h = d.start(SITE);
    dataset(&mut h, one_task(json!({"os": "RHEL_7_x86_64"})), 2);
    queue_pilot(&mut h, 2);
    let (_, key) = pilot(&mut h);
    let on = |h: &mut Harness, os| new_task_with(h, &key, slot(1, 0, 4.0), os).unwrap();
    assert!(on(&mut h, Some("RHEL_8_x86_64")).is_empty());
    assert_eq!(on(&mut h, Some("RHEL_7_x86_64")).len(), 1);
    // A worker that does not say is not held to it.
    assert_eq!(on(&mut h, None).len(), 1);
}

fn new_task_refuses_anything_but_a_pilot_passkey(d: &TestDb) {
    let mut h = d.start(SITE);
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
    assert_eq!(d.count("SELECT count(*) FROM task_lookup", args![]), 1);
}

fn a_task_handed_to_a_pilot_runs_and_only_that_pilot_may_finish_it(d: &TestDb) {
    let mut h = d.start(SITE);
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
    assert_eq!(status_of(d, "task", &task), "processing");
    assert_eq!(
        d.texts(
            "SELECT tasks FROM pilot WHERE pilot_id = ?",
            args![pilot_id.as_str()]
        ),
        vec![task.clone()]
    );
    assert_eq!(d.count("SELECT count(*) FROM task_lookup", args![]), 0);

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
    assert_eq!(status_of(d, "task", &task), "complete");
}

fn update_pilot_records_its_tasks_and_resources_for_its_own_passkey_only(d: &TestDb) {
    let mut h = d.start(SITE);
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
    let row = d.rows(
        "SELECT tasks, resources_avail, resources_claim FROM pilot WHERE pilot_id = ?",
        args![pilot_id.as_str()],
    );
    assert_eq!(row[0].text(0).unwrap(), handed[1]);
    let stored = |i| serde_json::from_str::<Resources>(&row[0].text(i).unwrap()).unwrap();
    assert_eq!(stored(1), available);
    assert_eq!(stored(2), claimed);

    for wrong in [other_key.as_str(), "no such key"] {
        assert!(matches!(
            db(&mut h, update(wrong, vec![])),
            Err(CallError::Forbidden(_))
        ));
    }
}

// ---------------------------------------------------------------------------------------
// completion

/// Sets task statuses straight in the database (the completion rules read them, whichever
/// way they came).
fn set_statuses(d: &TestDb, tasks: &[String], statuses: &[&str]) {
    for (task, status) in tasks.iter().zip(statuses) {
        d.exec(
            "UPDATE task SET status = ? WHERE task_id = ?",
            args![*status, task.as_str()],
        );
    }
}

fn job_status(d: &TestDb, task: &str) -> String {
    d.texts(
        "SELECT job.status FROM job JOIN task ON task.job_id = job.job_id \
         WHERE task.task_id = ?",
        args![task],
    )
    .remove(0)
}

fn end_date(d: &TestDb, dataset_id: &str) -> Option<String> {
    d.rows(
        "SELECT end_date FROM dataset WHERE dataset_id = ?",
        args![dataset_id],
    )[0]
    .opt_text(0)
    .unwrap()
}

fn a_job_and_its_dataset_complete_when_every_task_completes(d: &TestDb) {
    let mut h = d.start(SITE);
    let ds = dataset(&mut h, two_tasks(), 1);
    let tasks = task_ids(d, &ds);
    queue(&mut h, 1);
    finish(&mut h, &tasks[0]);
    assert_eq!(complete_jobs_and_datasets(&mut h), 0);
    assert_eq!(job_status(d, &tasks[0]), "processing");

    queue(&mut h, 1);
    finish(&mut h, &tasks[1]);
    assert_eq!(complete_jobs_and_datasets(&mut h), 2);
    assert_eq!(job_status(d, &tasks[0]), "complete");
    assert_eq!(status_of(d, "dataset", &ds), "complete");
    assert!(end_date(d, &ds).is_some());
    // Nothing left to change.
    assert_eq!(complete_jobs_and_datasets(&mut h), 0);
}

fn a_job_whose_other_tasks_failed_ends_in_errors(d: &TestDb) {
    let mut h = d.start(SITE);
    let ds = dataset(&mut h, two_tasks(), 2);
    let tasks = task_ids(d, &ds);
    set_statuses(d, &tasks, &["complete", "failed", "complete", "complete"]);
    assert_eq!(complete_jobs_and_datasets(&mut h), 3);
    assert_eq!(job_status(d, &tasks[0]), "errors");
    assert_eq!(job_status(d, &tasks[2]), "complete");
    assert_eq!(status_of(d, "dataset", &ds), "errors");
    assert!(end_date(d, &ds).is_some());
}

fn a_job_is_suspended_only_when_no_task_is_active(d: &TestDb) {
    let mut h = d.start(SITE);
    let ds = dataset(&mut h, two_tasks(), 3);
    let tasks = task_ids(d, &ds);
    set_statuses(
        d,
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
    let job = |i: usize| job_status(d, &tasks[i]);
    assert_eq!(
        [job(0), job(2), job(4)],
        ["suspended", "processing", "suspended"]
    );
    // A job still processing keeps the dataset processing.
    assert_eq!(status_of(d, "dataset", &ds), "processing");

    set_statuses(d, &tasks[3..4], &["failed"]);
    assert_eq!(complete_jobs_and_datasets(&mut h), 2);
    assert_eq!(job(2), "suspended");
    assert_eq!(status_of(d, "dataset", &ds), "suspended");
    assert_eq!(end_date(d, &ds), None);

    // A task back in the pool makes its job processing again.
    set_statuses(d, &tasks[0..1], &["idle"]);
    assert_eq!(complete_jobs_and_datasets(&mut h), 1);
    assert_eq!(job(0), "processing");
}

fn a_processing_dataset_waits_for_all_its_jobs_and_a_truncated_one_does_not(d: &TestDb) {
    let mut h = d.start(SITE);
    let reply = db(&mut h, submission(&one_task(json!({})), 3, GRID, false)).unwrap();
    let DbReply::Dataset { dataset_id: ds, .. } = reply else {
        panic!("{reply:?}");
    };
    // One job of three exists, and completes.
    db(&mut h, DbRequest::BufferJobs { max_jobs: 1 }).unwrap();
    let task = queue(&mut h, 1).remove(0).task_id;
    finish(&mut h, &task);
    assert_eq!(complete_jobs_and_datasets(&mut h), 1);
    assert_eq!(job_status(d, &task), "complete");
    assert_eq!(status_of(d, "dataset", &ds), "processing");

    d.exec(
        "UPDATE dataset SET status = 'truncated' WHERE dataset_id = ?",
        args![ds.as_str()],
    );
    assert_eq!(complete_jobs_and_datasets(&mut h), 1);
    assert_eq!(status_of(d, "dataset", &ds), "complete");
    assert!(end_date(d, &ds).is_some());
}

// ---------------------------------------------------------------------------------------
// remove_expired

fn remove_expired_deletes_only_expired_passkeys_and_sessions(d: &TestDb) {
    let mut h = d.start(SITE);
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
    let past = "2000-01-01T00:00:00.000000Z";
    d.exec(
        "INSERT INTO passkey (passkey_id, auth_key, scope, subject, expire) \
         VALUES ('old', 'old-key', 'task', 't', ?)",
        args![past],
    );
    d.exec(
        "INSERT INTO session (session_id, user_id, csrf_token, expire) VALUES \
         ('s-old', 'u', 'c', ?), ('s-new', 'u', 'c', '2999-01-01T00:00:00.000000Z')",
        args![past],
    );
    assert_eq!(
        db(&mut h, DbRequest::RemoveExpired).unwrap(),
        DbReply::Rows(2)
    );
    assert_eq!(
        db(&mut h, DbRequest::RemoveExpired).unwrap(),
        DbReply::Rows(0)
    );
    assert!(db(&mut h, DbRequest::VerifyPasskey { key: live }).is_ok());
    assert_eq!(
        d.texts("SELECT session_id FROM session", args![]),
        ["s-new"]
    );
}

// ---------------------------------------------------------------------------------------
// scale

/// Inserts `rows` into `table` (`columns` each), many rows per statement.
fn insert_many(tx: &mut dyn Tx, table: &str, columns: &str, rows: Vec<Vec<SqlValue>>) {
    let width = columns.split(',').count();
    let row = format!("({})", vec!["?"; width].join(", "));
    for chunk in rows.chunks(400) {
        let sql = format!(
            "INSERT INTO {table} ({columns}) VALUES {}",
            vec![row.as_str(); chunk.len()].join(", ")
        );
        let params: Vec<SqlValue> = chunk.iter().flatten().cloned().collect();
        tx.exec(&sql, &params).unwrap();
    }
}

/// A two-task dataset of `jobs` jobs written straight to the database: the first
/// `complete` jobs done, the next `queued` with their first task queued (and in the pilot
/// lookup) and the second waiting for it, the rest idle.
fn seed_large_dataset(tx: &mut dyn Tx, num: i64, jobs: i64, complete: i64, queued: i64) {
    let now = ops::now();
    let id = format!("big{num}");
    tx.exec(
        "INSERT INTO dataset (dataset_id, dataset_num, status, status_changed, jobs_submitted, \
         tasks_submitted, jobs_buffered, start_date, gridspec) \
         VALUES (?, ?, 'processing', ?, ?, ?, ?, ?, '')",
        args![
            id.as_str(),
            num,
            now.as_str(),
            jobs,
            2 * jobs,
            jobs,
            now.as_str()
        ],
    )
    .unwrap();
    tx.exec(
        "INSERT INTO config (dataset_id, config_data) VALUES (?, ?)",
        args![id.as_str(), two_tasks().to_string()],
    )
    .unwrap();
    let reqs = json!({"cpu": 1, "gpu": 0, "memory": 1.0, "disk": 10.0, "time": 1.0}).to_string();
    let (mut job_rows, mut task_rows, mut lookup_rows) = (Vec::new(), Vec::new(), Vec::new());
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
        let v = |s: &str| SqlValue::from(s);
        job_rows.push(vec![v(&job_id), v(&id), j.into(), v(job_status), v(&now)]);
        let depends = json!([t0]).to_string();
        for (t, index, status, depends) in [(&t0, 0i64, first, "[]"), (&t1, 1, second, &depends)] {
            task_rows.push(vec![
                v(t),
                v(&job_id),
                v(&id),
                v("r"),
                index.into(),
                v(status),
                v(&now),
                v(&reqs),
                v(depends),
            ]);
        }
        if first == "queued" {
            lookup_rows.push(vec![
                v(&t0),
                v(GRID),
                v(&now),
                1i64.into(),
                0i64.into(),
                1.0.into(),
                10.0.into(),
                1.0.into(),
            ]);
        }
    }
    insert_many(
        tx,
        "job",
        "job_id, dataset_id, job_index, status, status_changed",
        job_rows,
    );
    insert_many(
        tx,
        "task",
        "task_id, job_id, dataset_id, task_rel_id, task_index, status, status_changed, \
         requirements, depends",
        task_rows,
    );
    insert_many(
        tx,
        "task_lookup",
        "task_id, gridspec, insert_time, req_cpu, req_gpu, req_memory, req_disk, req_time",
        lookup_rows,
    );
}

/// A million tasks, 100,000 of them queued (and in the pilot lookup), most idle ones waiting
/// for a queued parent in front of the eligible ones: queueing 1000, handing a pilot its
/// tasks and a completion pass each take well under the cycle they run in. Slow to set up:
/// `cargo test --release -p iceprod-db --test queueing -- --ignored` (on MariaDB too with
/// `ICEPROD_TEST_MYSQL_URL`).
fn queueing_and_completion_stay_fast_with_a_million_tasks(d: &TestDb) {
    d.tx(|tx| {
        seed_large_dataset(tx, 1, 400_000, 250_000, 80_000);
        seed_large_dataset(tx, 2, 100_000, 50_000, 20_000);
        Ok(())
    });
    let mut h = d.start(SITE);
    for pilot_mode in [false, true] {
        let begin = Instant::now();
        let picked = queue_with(&mut h, 1000, Resources::default(), pilot_mode);
        let took = begin.elapsed();
        eprintln!("queue_tasks(1000, pilot mode {pilot_mode}): {took:?}");
        assert_eq!(picked.len(), 1000);
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    let (_, key) = pilot(&mut h);
    let begin = Instant::now();
    // 100 GB of disk for tasks of 10 GB each.
    let handed = new_task(&mut h, &key, slot(16, 0, 64.0));
    let took = begin.elapsed();
    eprintln!("new_task over 101,000 lookup rows: {took:?}");
    assert_eq!(handed.len(), 10);
    assert!(took < Duration::from_secs(2), "{took:?}");

    let begin = Instant::now();
    complete_jobs_and_datasets(&mut h);
    let took = begin.elapsed();
    eprintln!("complete_jobs_and_datasets: {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
}

mod queueing_and_completion_stay_fast_with_a_million_tasks {
    #[test]
    #[ignore = "slow to set up; run with --release -- --ignored"]
    fn sqlite() {
        super::queueing_and_completion_stay_fast_with_a_million_tasks(&super::TestDb::sqlite());
    }

    #[test]
    #[ignore = "slow to set up; run with --release -- --ignored"]
    fn mariadb() {
        let name = "queueing_and_completion_stay_fast_with_a_million_tasks";
        if let Some(db) = super::TestDb::mariadb(name) {
            super::queueing_and_completion_stay_fast_with_a_million_tasks(&db);
        }
    }
}
