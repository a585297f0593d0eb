//! Dataset submission and job buffering through the db module's messages, on SQLite.

use std::path::Path;
use std::time::Duration;

use iceprod_db::{store, Db};
use iceprod_runtime::harness::Harness;
use iceprod_runtime::{
    CallError, Config, DatasetSubmission, DbReply, DbRequest, ModuleKind, Reply, Request,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

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

/// The first column of every row, as text.
fn texts(dir: &Path, sql: &str) -> Vec<String> {
    let conn = store::open(&dir.join("iceprod.db")).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn count(dir: &Path, sql: &str) -> i64 {
    let conn = store::open(&dir.join("iceprod.db")).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn a_submitted_dataset_has_its_task_rels_and_no_jobs_yet() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
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
    assert_eq!(count(dir.path(), "SELECT count(*) FROM task_rel"), 2);
    assert_eq!(count(dir.path(), "SELECT count(*) FROM job"), 0);
    assert_eq!(count(dir.path(), "SELECT tasks_submitted FROM dataset"), 6);
    let depends = texts(
        dir.path(),
        "SELECT depends FROM task_rel ORDER BY task_index",
    );
    let generate = texts(
        dir.path(),
        "SELECT task_rel_id FROM task_rel WHERE task_index = 0",
    );
    assert_eq!(depends[0], "[]");
    assert_eq!(depends[1], json!([generate[0]]).to_string());
}

#[test]
fn bad_submissions_are_refused_with_the_path_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let cases: Vec<(DbRequest, &str)> = vec![
        (submission(two_tasks(), 0), "njobs"),
        (submission(two_tasks(), 1_000_000_000), "njobs"),
        (
            DbRequest::SubmitDataset(Box::new(DatasetSubmission {
                config: "{not json".into(),
                ..match submission(two_tasks(), 1) {
                    DbRequest::SubmitDataset(s) => *s,
                    _ => unreachable!(),
                }
            })),
            "line 1",
        ),
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
    assert_eq!(count(dir.path(), "SELECT count(*) FROM dataset"), 0);
    assert_eq!(count(dir.path(), "SELECT count(*) FROM task_rel"), 0);
}

#[test]
fn buffering_creates_whole_jobs_with_concrete_dependencies_and_per_job_requirements() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    db(&mut h, submission(two_tasks(), 3)).unwrap();
    assert_eq!(
        db(&mut h, DbRequest::BufferJobs { max_jobs: 2 }).unwrap(),
        DbReply::Buffered { jobs: 2, tasks: 4 }
    );
    assert_eq!(
        db(&mut h, DbRequest::BufferJobs { max_jobs: 10 }).unwrap(),
        DbReply::Buffered { jobs: 1, tasks: 2 }
    );
    assert_eq!(
        db(&mut h, DbRequest::BufferJobs { max_jobs: 10 }).unwrap(),
        DbReply::Buffered { jobs: 0, tasks: 0 }
    );
    assert_eq!(
        count(
            dir.path(),
            "SELECT count(*) FROM task WHERE status = 'idle'"
        ),
        6
    );
    let conn = store::open(&dir.path().join("iceprod.db")).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT job.job_index, task.task_index, task.task_id, task.depends, task.requirements \
             FROM task JOIN job ON job.job_id = task.job_id ORDER BY job.job_index, task.task_index",
        )
        .unwrap();
    let rows: Vec<(i64, i64, String, String, String)> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for pair in rows.chunks(2) {
        let (job, _, generate_id, generate_deps, reqs) = &pair[0];
        let (_, _, _, filter_deps, _) = &pair[1];
        assert_eq!(generate_deps, "[]");
        // The filter task of job N depends on the generate task of job N.
        assert_eq!(
            serde_json::from_str::<Vec<String>>(filter_deps).unwrap(),
            vec![generate_id.clone()]
        );
        let reqs: Value = serde_json::from_str(reqs).unwrap();
        assert_eq!(reqs["memory"].as_f64(), Some((job + 1) as f64), "{reqs}");
    }
}

#[test]
fn a_dependency_on_another_dataset_waits_for_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = start(dir.path());
    let DbReply::Dataset { dataset_num, .. } = db(&mut h, submission(two_tasks(), 2)).unwrap()
    else {
        panic!()
    };
    let downstream = json!({"version": 3, "tasks": [
        {"name": "merge", "depends": [format!("{dataset_num}.filter")], "trays": []}]});
    db(&mut h, submission(downstream, 2)).unwrap();
    // While the upstream dataset is suspended it creates no jobs, so the downstream one,
    // whose job N needs upstream job N, must wait.
    let conn = store::open(&dir.path().join("iceprod.db")).unwrap();
    conn.execute(
        "UPDATE dataset SET status = 'suspended' WHERE dataset_num = 1",
        [],
    )
    .unwrap();
    assert_eq!(
        db(&mut h, DbRequest::BufferJobs { max_jobs: 10 }).unwrap(),
        DbReply::Buffered { jobs: 0, tasks: 0 }
    );
    conn.execute(
        "UPDATE dataset SET status = 'processing' WHERE dataset_num = 1",
        [],
    )
    .unwrap();
    assert_eq!(
        db(&mut h, DbRequest::BufferJobs { max_jobs: 10 }).unwrap(),
        DbReply::Buffered { jobs: 4, tasks: 6 }
    );
    // Each merge task depends on the filter task of the same job index upstream.
    let merge_deps = texts(
        dir.path(),
        "SELECT task.depends FROM task JOIN task_rel ON task_rel.task_rel_id = task.task_rel_id \
         JOIN job ON job.job_id = task.job_id WHERE task_rel.name = 'merge' ORDER BY job.job_index",
    );
    let filters = texts(
        dir.path(),
        "SELECT task.task_id FROM task JOIN task_rel ON task_rel.task_rel_id = task.task_rel_id \
         JOIN job ON job.job_id = task.job_id WHERE task_rel.name = 'filter' ORDER BY job.job_index",
    );
    assert_eq!(merge_deps.len(), 2);
    for (deps, filter) in merge_deps.iter().zip(&filters) {
        assert_eq!(*deps, json!([filter]).to_string());
    }
}
