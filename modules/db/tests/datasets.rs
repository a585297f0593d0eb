//! Dataset submission and job buffering through the db module's messages; every body runs on
//! SQLite and on MariaDB (see `support`).

mod support;

use iceprod_db::args;
use iceprod_runtime::harness::Harness;
use iceprod_runtime::{CallError, DatasetSubmission, DbReply, DbRequest};
use serde_json::{json, Value};
use support::{call_db as db, TestDb};

/// Site "b" (number 1): the prefix the id checks expect.
const SITE: &str = "[site]\nid = \"b\"\n";

on_both_backends!(
    a_submitted_dataset_has_its_task_rels_and_no_jobs_yet,
    bad_submissions_are_refused_with_the_path_and_write_nothing,
    buffering_creates_whole_jobs_with_concrete_dependencies_and_per_job_requirements,
    a_dependency_on_another_dataset_waits_for_its_job,
    the_graphs_record_active_tasks_and_completions,
    configs_that_fail_when_evaluated_for_a_job_are_refused_naming_the_path,
    a_dataset_whose_jobs_cannot_be_created_is_suspended_and_the_others_go_on,
);

fn submission(config: Value, njobs: u32) -> DbRequest {
    DbRequest::SubmitDataset(Box::new(DatasetSubmission {
        config: config.to_string(),
        description: "a test <b>dataset</b> with 'quotes'".into(),
        njobs,
        gridspec: "b.local".into(),
        debug: false,
        group: None,
        username: "alice".into(),
        stat_keys: vec![],
    }))
}

fn two_tasks() -> Value {
    json!({
        "version": 3,
        "tasks": [
            {"name": "generate", "requirements": {"memory": "$eval($(job) + 1)"},
             "trays": [{"modules": [{"src": "gen.sh"}]}]},
            {"name": "filter", "depends": ["generate"],
             "trays": [{"modules": [{"src": "filter.sh", "args": "$(job)"}]}]}
        ]
    })
}

fn buffer(h: &mut Harness, max_jobs: u32) -> DbReply {
    db(h, DbRequest::BufferJobs { max_jobs }).expect("buffering works")
}

fn a_submitted_dataset_has_its_task_rels_and_no_jobs_yet(d: &TestDb) {
    let mut h = d.start(SITE);
    let reply = db(&mut h, submission(two_tasks(), 3)).unwrap();
    let DbReply::Dataset {
        dataset_id,
        dataset_num,
    } = reply
    else {
        panic!("{reply:?}");
    };
    assert_eq!(dataset_num, 1);
    // Site "b" is number 1: the global id carries it in front of the local number.
    assert_eq!(
        iceprod_runtime::ids::decode(&dataset_id),
        Some(iceprod_runtime::ids::SITE_FACTOR + 1)
    );
    assert_eq!(d.count("SELECT count(*) FROM task_rel", args![]), 2);
    assert_eq!(d.count("SELECT count(*) FROM job", args![]), 0);
    assert_eq!(d.count("SELECT tasks_submitted FROM dataset", args![]), 6);
    let depends = d.texts("SELECT depends FROM task_rel ORDER BY task_index", args![]);
    let generate = d.texts(
        "SELECT task_rel_id FROM task_rel WHERE task_index = 0",
        args![],
    );
    assert_eq!(depends[0], "[]");
    assert_eq!(depends[1], json!([generate[0]]).to_string());
}

fn bad_submissions_are_refused_with_the_path_and_write_nothing(d: &TestDb) {
    let mut h = d.start(SITE);
    let mut not_json = submission(two_tasks(), 1);
    if let DbRequest::SubmitDataset(s) = &mut not_json {
        s.config = "{not json".into();
    }
    let cases: Vec<(DbRequest, &str)> = vec![
        (submission(two_tasks(), 0), "njobs"),
        (submission(two_tasks(), 1_000_000_000), "njobs"),
        (not_json, "line 1"),
        (
            submission(
                json!({"version": 3, "tasks": [{"name": "a", "depends": ["nope"], "trays": []}]}),
                1,
            ),
            "tasks[0].depends[0]",
        ),
        (
            submission(
                json!({"version": 3, "tasks": [
                    {"name": "a", "depends": ["b"], "trays": []},
                    {"name": "b", "depends": ["a"], "trays": []}]}),
                1,
            ),
            "cycle",
        ),
        (
            submission(
                json!({"version": 3, "tasks": [{"name": "a", "depends": ["99.x"], "trays": []}]}),
                1,
            ),
            "tasks[0].depends[0]",
        ),
    ];
    for (request, needle) in cases {
        match db(&mut h, request) {
            Err(CallError::Refused(msg)) => assert!(msg.contains(needle), "{needle}: {msg}"),
            other => panic!("{needle}: unexpected {other:?}"),
        }
    }
    assert_eq!(d.count("SELECT count(*) FROM dataset", args![]), 0);
    assert_eq!(d.count("SELECT count(*) FROM task_rel", args![]), 0);
}

fn buffering_creates_whole_jobs_with_concrete_dependencies_and_per_job_requirements(d: &TestDb) {
    let mut h = d.start(SITE);
    db(&mut h, submission(two_tasks(), 3)).unwrap();
    assert_eq!(buffer(&mut h, 2), DbReply::Buffered { jobs: 2, tasks: 4 });
    assert_eq!(buffer(&mut h, 10), DbReply::Buffered { jobs: 1, tasks: 2 });
    assert_eq!(buffer(&mut h, 10), DbReply::Buffered { jobs: 0, tasks: 0 });
    assert_eq!(
        d.count("SELECT count(*) FROM task WHERE status = 'idle'", args![]),
        6
    );
    let rows = d.rows(
        "SELECT job.job_index, task.task_id, task.depends, task.requirements \
         FROM task JOIN job ON job.job_id = task.job_id ORDER BY job.job_index, task.task_index",
        args![],
    );
    for pair in rows.chunks(2) {
        let job = pair[0].int(0).unwrap();
        let generate_id = pair[0].text(1).unwrap();
        assert_eq!(pair[0].text(2).unwrap(), "[]");
        // The filter task of job N depends on the generate task of job N.
        assert_eq!(
            serde_json::from_str::<Vec<String>>(&pair[1].text(2).unwrap()).unwrap(),
            vec![generate_id]
        );
        let reqs: Value = serde_json::from_str(&pair[0].text(3).unwrap()).unwrap();
        assert_eq!(reqs["memory"].as_f64(), Some((job + 1) as f64), "{reqs}");
    }
}

fn a_dependency_on_another_dataset_waits_for_its_job(d: &TestDb) {
    let mut h = d.start(SITE);
    let DbReply::Dataset { dataset_num, .. } = db(&mut h, submission(two_tasks(), 2)).unwrap()
    else {
        panic!("not a dataset")
    };
    let downstream = json!({"version": 3, "tasks": [
        {"name": "merge", "depends": [format!("{dataset_num}.filter")], "trays": []}]});
    db(&mut h, submission(downstream, 2)).unwrap();
    // While the upstream dataset is suspended it creates no jobs, so the downstream one,
    // whose job N needs upstream job N, must wait.
    d.exec(
        "UPDATE dataset SET status = 'suspended' WHERE dataset_num = 1",
        args![],
    );
    assert_eq!(buffer(&mut h, 10), DbReply::Buffered { jobs: 0, tasks: 0 });
    d.exec(
        "UPDATE dataset SET status = 'processing' WHERE dataset_num = 1",
        args![],
    );
    assert_eq!(buffer(&mut h, 10), DbReply::Buffered { jobs: 4, tasks: 6 });
    // Each merge task depends on the filter task of the same job index upstream.
    let by_name = |name: &str| {
        d.rows(
            "SELECT task.task_id, task.depends FROM task JOIN task_rel \
             ON task_rel.task_rel_id = task.task_rel_id JOIN job ON job.job_id = task.job_id \
             WHERE task_rel.name = ? ORDER BY job.job_index",
            args![name],
        )
    };
    let merges = by_name("merge");
    let filters = by_name("filter");
    assert_eq!(merges.len(), 2);
    for (merge, filter) in merges.iter().zip(&filters) {
        assert_eq!(
            merge.text(1).unwrap(),
            json!([filter.text(0).unwrap()]).to_string()
        );
    }
}

fn the_graphs_record_active_tasks_and_completions(d: &TestDb) {
    let mut h = d.start(SITE);
    db(&mut h, submission(two_tasks(), 2)).unwrap();
    buffer(&mut h, 10);
    d.exec(
        "UPDATE task SET status = 'complete', status_changed = ? WHERE task_index = 0",
        args![iceprod_db::ops::now()],
    );
    assert_eq!(
        db(&mut h, DbRequest::RecordGraphs).unwrap(),
        DbReply::Rows(3)
    );
    let value = |name: &str| -> Value {
        let rows = d.texts(
            "SELECT value FROM graph WHERE name = ? ORDER BY timestamp",
            args![name],
        );
        serde_json::from_str(rows.last().expect("a graph row")).unwrap()
    };
    assert_eq!(value("active_tasks"), json!({"idle": 2}));
    assert_eq!(value("completed_tasks"), json!({"completions": 2}));
    // The next record counts only completions since this one.
    assert_eq!(
        db(&mut h, DbRequest::RecordGraphs).unwrap(),
        DbReply::Rows(3)
    );
    assert_eq!(value("completed_tasks"), json!({"completions": 0}));
}

/// A one-task config whose task has `requirements` and `parameters`.
fn with_requirements(requirements: Value, parameters: Value) -> Value {
    json!({"version": 3, "tasks": [{"name": "a", "requirements": requirements,
        "parameters": parameters, "trays": [{"modules": [{"src": "a.sh"}]}]}]})
}

fn configs_that_fail_when_evaluated_for_a_job_are_refused_naming_the_path(d: &TestDb) {
    let mut h = d.start(SITE);
    let cases: Vec<(Value, u32, &str)> = vec![
        (
            with_requirements(json!({"memory": "$(nosuch)"}), json!({})),
            1,
            "tasks[0].requirements.memory: bad expression: `$(nosuch)`",
        ),
        (
            with_requirements(json!({"cpu": "$(x)"}), json!({"x": "$(y)", "y": "$(x)"})),
            1,
            "tasks[0].requirements.cpu",
        ),
        (
            with_requirements(json!({"disk": "$eval(9**9**9)"}), json!({})),
            1,
            "tasks[0].requirements.disk: bad expression: a number is too large",
        ),
        (
            with_requirements(json!({"time": "$eval(1/0)"}), json!({})),
            1,
            "tasks[0].requirements.time: bad expression: `$eval`: division by zero",
        ),
        // Fine for job 0, fails for the last job, which is always in the sample.
        (
            with_requirements(json!({"memory": "$eval(1/(4-$(job)))"}), json!({})),
            5,
            "(for job 4)",
        ),
        // A parameter is evaluated even when no requirement uses it.
        (
            with_requirements(json!({}), json!({"seed": "$eval(1/0)"})),
            1,
            "tasks[0].parameters.seed",
        ),
        (
            with_requirements(json!({"memory": 1e308}), json!({})),
            1,
            "tasks[0].requirements.memory: 1e308 is more than the limit",
        ),
        (
            with_requirements(json!({"memory": "$eval(10**300)"}), json!({})),
            1,
            "tasks[0].requirements.memory",
        ),
        (
            json!({"version": 3, "tasks": [{"name": "a",
                "trays": [{"iterations": 1_000_000_000i64, "modules": [{"src": "a.sh"}]}]}]}),
            1,
            "tasks[0].trays[0].iterations: 1000000000 is more than the limit",
        ),
    ];
    for (config, njobs, needle) in cases {
        match db(&mut h, submission(config, njobs)) {
            Err(CallError::Refused(msg)) => assert!(msg.contains(needle), "{needle}: {msg}"),
            other => panic!("{needle}: unexpected {other:?}"),
        }
    }
    assert_eq!(d.count("SELECT count(*) FROM dataset", args![]), 0);
}

fn a_dataset_whose_jobs_cannot_be_created_is_suspended_and_the_others_go_on(d: &TestDb) {
    let mut h = d.start(SITE);
    for _ in 0..3 {
        db(&mut h, submission(two_tasks(), 2)).unwrap();
    }
    // Dataset 2's stored config goes bad after it was accepted (an older server let it in,
    // or the check's sample missed the failing job): its second task's requirement fails.
    let mut bad = two_tasks();
    bad["tasks"][1]["requirements"] = json!({"memory": "$(nosuch)"});
    d.exec(
        "UPDATE config SET config_data = ? WHERE dataset_id = \
         (SELECT dataset_id FROM dataset WHERE dataset_num = 2)",
        args![bad.to_string()],
    );
    assert_eq!(buffer(&mut h, 10), DbReply::Buffered { jobs: 4, tasks: 8 });
    let per_dataset: Vec<(i64, i64)> = d
        .rows(
            "SELECT d.dataset_num, count(j.job_id) FROM dataset d \
             LEFT JOIN job j ON j.dataset_id = d.dataset_id GROUP BY d.dataset_num \
             ORDER BY d.dataset_num",
            args![],
        )
        .iter()
        .map(|r| (r.int(0).unwrap(), r.int(1).unwrap()))
        .collect();
    assert_eq!(per_dataset, [(1, 2), (2, 0), (3, 2)]);
    // Nothing half-made: no task of the bad dataset either.
    assert_eq!(
        d.count(
            "SELECT count(*) FROM task t JOIN dataset d ON d.dataset_id = t.dataset_id \
             WHERE d.dataset_num = 2",
            args![]
        ),
        0
    );
    let state = d.rows(
        "SELECT status, status_reason FROM dataset WHERE dataset_num = 2",
        args![],
    );
    let (status, reason) = (state[0].text(0).unwrap(), state[0].text(1).unwrap());
    assert_eq!(status, "suspended");
    assert!(
        reason.starts_with("jobs cannot be created: job 0: ")
            && reason.contains("tasks[1].requirements.memory"),
        "{reason}"
    );
    // The next cycle does not stumble on it again.
    assert_eq!(buffer(&mut h, 10), DbReply::Buffered { jobs: 0, tasks: 0 });
}
