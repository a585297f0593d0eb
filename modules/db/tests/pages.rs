//! The website's page queries (`DbRequest::Page`, SPEC §7) through the db module's messages,
//! on SQLite and on MariaDB (see `support`): each query's rows and totals, paging edges,
//! filters, unknown ids, archived datasets, hostile text, log tails; and the summary tables
//! of migration 5, which must equal a `GROUP BY` over `task` and `job` after every kind of
//! write.

mod support;

use std::io::Write as _;

use base64::Engine as _;
use iceprod_db::args;
use iceprod_db::pages::{log_tail, MAX_TAIL_LINE};
use iceprod_runtime::harness::Harness;
use iceprod_runtime::states::TaskEvent;
use iceprod_runtime::web::{
    DatasetKey, DatasetPage, PageData, PageQuery, Paging, TaskFilter, UserAuth,
};
use iceprod_runtime::{
    CallError, DatasetAction, DatasetSubmission, DbReply, DbRequest, QueuedTask, TaskAction,
    TaskCall, UserAction,
};
use serde_json::{json, Value};
use support::{call_db, change, queue_tasks, unlimited, TestDb};

on_both_backends!(
    the_summaries_equal_a_group_by_after_every_kind_of_write,
    each_page_answers_its_rows_and_totals,
    paging_edges_and_filters_select_the_right_rows,
    unknown_ids_and_numbers_are_not_found,
    hostile_text_comes_back_unchanged,
    the_task_page_shows_dependencies_stats_and_log_tails,
    an_archived_dataset_keeps_its_pages,
    graphs_record_dataset_progress_and_home_reads_the_last_hours,
);

const HOSTILE: &str = "<script>alert('x')</script> \"quoted\" & 'single' -- ; DROP TABLE task";
const LONG_AGO: &str = "2020-01-01T00:00:00.000000Z";

// ---- helpers ----

/// An admin `admin-test` with passkey `key-admin` (the module made its own first admin).
fn add_admin(d: &TestDb) {
    d.tx(|tx| {
        tx.exec(
            "INSERT INTO user (user_id, username, admin) VALUES ('u-admin', 'admin-test', 1)",
            args![],
        )?;
        tx.exec(
            "INSERT INTO passkey (passkey_id, auth_key, scope, subject, expire) \
             VALUES ('pk-admin', 'key-admin', 'user', 'u-admin', '2999-01-01T00:00:00Z')",
            args![],
        )
    });
}

fn as_admin(h: &mut Harness, action: UserAction) -> DbReply {
    call_db(
        h,
        DbRequest::AsUser {
            auth: UserAuth::Passkey("key-admin".into()),
            action,
        },
    )
    .unwrap_or_else(|e| panic!("{e:?}"))
}

/// Two tasks per job: `gen`, then `filter` depending on it.
fn config() -> Value {
    json!({"version": 3, "tasks": [
        {"name": "gen", "trays": [{"modules": [{"src": "run.sh"}]}]},
        {"name": "filter", "depends": ["gen"], "trays": [{"modules": [{"src": "run.sh"}]}]}]})
}

/// Submits a dataset of `njobs` jobs (description `description`) and buffers its jobs;
/// answers its id and number.
fn submit(h: &mut Harness, njobs: u32, description: &str) -> (String, u64) {
    let reply = as_admin(
        h,
        UserAction::SubmitDataset(Box::new(DatasetSubmission {
            config: config().to_string(),
            description: description.into(),
            njobs,
            gridspec: String::new(),
            debug: false,
            group: None,
            username: "ignored".into(),
            stat_keys: vec![],
        })),
    );
    let DbReply::Dataset {
        dataset_id,
        dataset_num,
    } = reply
    else {
        panic!("{reply:?}");
    };
    call_db(h, DbRequest::BufferJobs { max_jobs: 1000 }).unwrap();
    (dataset_id, dataset_num)
}

fn page(h: &mut Harness, q: PageQuery) -> Result<PageData, CallError> {
    match call_db(h, DbRequest::Page(q))? {
        DbReply::Page(data) => Ok(data),
        other => panic!("not a page: {other:?}"),
    }
}

/// The page `query` answers, which must be a `PageData::VARIANT`.
macro_rules! page_of {
    ($h:expr, $variant:ident, $query:expr) => {
        match page($h, $query).unwrap() {
            PageData::$variant(data) => data,
            other => panic!("not a {} page: {other:?}", stringify!($variant)),
        }
    };
}

fn dataset_page(h: &mut Harness, num: u64) -> DatasetPage {
    match page(h, PageQuery::Dataset(DatasetKey::Num(num))).unwrap() {
        PageData::Dataset(p) => *p,
        other => panic!("{other:?}"),
    }
}

fn all() -> Paging {
    Paging {
        offset: 0,
        limit: 1000,
    }
}

fn task_ids(h: &mut Harness, filter: TaskFilter, paging: Paging) -> (Vec<String>, u64) {
    match page(h, PageQuery::Tasks { filter, paging }).unwrap() {
        PageData::Tasks(l) => (l.rows.into_iter().map(|r| r.task_id).collect(), l.total),
        other => panic!("{other:?}"),
    }
}

fn of_dataset(num: u64) -> TaskFilter {
    TaskFilter {
        dataset: Some(DatasetKey::Num(num)),
        ..TaskFilter::default()
    }
}

fn task_call(h: &mut Harness, task: &QueuedTask, call: TaskCall) {
    let request = DbRequest::Task {
        passkey: task.passkey.clone().expect("direct mode gives a passkey"),
        task_id: task.task_id.clone(),
        call,
    };
    call_db(h, request).unwrap_or_else(|e| panic!("{e:?}"));
}

/// Starts and finishes `task` after `seconds` of walltime.
fn finish(h: &mut Harness, task: &QueuedTask, seconds: f64) {
    task_call(h, task, TaskCall::SetProcessing);
    task_call(
        h,
        task,
        TaskCall::Finish {
            stats: json!({"time_used": seconds}),
        },
    );
}

fn fail(h: &mut Harness, task: &QueuedTask, seconds: f64) {
    task_call(h, task, TaskCall::SetProcessing);
    task_call(
        h,
        task,
        TaskCall::Error {
            info: json!({"time_used": seconds}),
        },
    );
}

/// Checks `task_summary` and `job_summary` against a `GROUP BY` over the rows. The min and
/// max only follow arriving rows (see `schema.rs`): they must bound the real range, and equal
/// it when `exact_range` (no task left a group since it last emptied).
fn assert_summaries(d: &TestDb, step: &str, exact_range: bool) {
    let key = |r: &iceprod_db::sql::Row| {
        format!(
            "{}/{}/{}",
            r.text(0).unwrap(),
            r.int(1).unwrap(),
            r.text(2).unwrap()
        )
    };
    let summary = d.rows(
        "SELECT dataset_id, task_index, status, n, walltime_sum, walltime_sq, \
         walltime_err_sum, walltime_min, walltime_max FROM task_summary WHERE n > 0 \
         ORDER BY dataset_id, task_index, status",
        args![],
    );
    let real = d.rows(
        "SELECT dataset_id, task_index, status, count(*), sum(walltime), \
         sum(walltime * walltime), sum(walltime_err), min(walltime), max(walltime) FROM task \
         GROUP BY dataset_id, task_index, status ORDER BY dataset_id, task_index, status",
        args![],
    );
    assert_eq!(
        summary.iter().map(key).collect::<Vec<_>>(),
        real.iter().map(key).collect::<Vec<_>>(),
        "{step}: summary groups"
    );
    for (s, r) in summary.iter().zip(&real) {
        let k = key(s);
        assert_eq!(s.int(3).unwrap(), r.int(3).unwrap(), "{step}: n of {k}");
        for i in 4..7 {
            let (a, b) = (s.real(i).unwrap(), r.real(i).unwrap());
            assert!(
                (a - b).abs() < 1e-9,
                "{step}: column {i} of {k}: {a} vs {b}"
            );
        }
        let (min, max) = (s.real(7).unwrap(), s.real(8).unwrap());
        let (real_min, real_max) = (r.real(7).unwrap(), r.real(8).unwrap());
        if exact_range {
            assert_eq!((min, max), (real_min, real_max), "{step}: range of {k}");
        } else {
            assert!(min <= real_min && max >= real_max, "{step}: range of {k}");
        }
    }
    let jobs = |sql: &str| -> Vec<String> {
        d.rows(sql, args![])
            .iter()
            .map(|r| {
                format!(
                    "{}/{}/{}",
                    r.text(0).unwrap(),
                    r.text(1).unwrap(),
                    r.int(2).unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        jobs(
            "SELECT dataset_id, status, n FROM job_summary WHERE n > 0 ORDER BY dataset_id, status"
        ),
        jobs(
            "SELECT dataset_id, status, count(*) FROM job GROUP BY dataset_id, status \
             ORDER BY dataset_id, status"
        ),
        "{step}: job summary"
    );
}

fn zlib_base64(text: &[u8]) -> String {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(text).unwrap();
    base64::engine::general_purpose::STANDARD.encode(z.finish().unwrap())
}

fn upload_log(h: &mut Harness, task: &QueuedTask, name: &str, data: String) {
    task_call(
        h,
        task,
        TaskCall::UploadLog {
            name: name.into(),
            data,
        },
    );
}

// ---- tests ----

fn the_summaries_equal_a_group_by_after_every_kind_of_write(d: &TestDb) {
    add_admin(d);
    let mut h = d.start_with("archive_after_days = 1\n", "");
    // Buffering (INSERTs), twice, into two datasets.
    let (a, a_num) = submit(&mut h, 6, "a");
    let (b, _) = submit(&mut h, 3, "b");
    assert_summaries(d, "buffering", true);
    // Queueing (bulk UPDATEs), starting, finishing with walltimes, errors.
    let queued = queue_tasks(&mut h, "g", 100, unlimited(), false);
    assert_eq!(queued.len(), 9, "the gen tasks of both datasets");
    assert_summaries(d, "queueing", true);
    for (i, t) in queued.iter().enumerate().take(5) {
        finish(&mut h, t, 60.0 * (i + 1) as f64);
    }
    fail(&mut h, &queued[5], 30.0);
    fail(&mut h, &queued[6], 90.0);
    assert_summaries(d, "finish and error", true);
    // A person's reset of a failed task, a suspend, a hard reset (complete tasks leave).
    let task_ids = vec![queued[5].task_id.clone()];
    as_admin(
        &mut h,
        UserAction::Tasks {
            task_ids,
            action: TaskAction::Reset,
        },
    );
    as_admin(
        &mut h,
        UserAction::Dataset {
            dataset_id: b.clone(),
            action: DatasetAction::Suspend,
        },
    );
    assert_summaries(d, "reset and suspend", true);
    as_admin(
        &mut h,
        UserAction::Dataset {
            dataset_id: a.clone(),
            action: DatasetAction::HardReset,
        },
    );
    assert_summaries(d, "hard reset", false);
    as_admin(
        &mut h,
        UserAction::Dataset {
            dataset_id: b.clone(),
            action: DatasetAction::Resume,
        },
    );
    as_admin(
        &mut h,
        UserAction::Dataset {
            dataset_id: b.clone(),
            action: DatasetAction::Truncate,
        },
    );
    // The state machine one task at a time, and a walltime change in place.
    change(&mut h, &queued[7].task_id, TaskEvent::ManualSuspend);
    d.exec(
        "UPDATE task SET walltime = walltime + 0.5 WHERE task_id = ?",
        args![queued[8].task_id.as_str()],
    );
    assert_summaries(d, "truncate, suspend, walltime", false);
    // Dataset b runs to the end and is archived: its rows leave the live tables.
    d.exec(
        "UPDATE task SET status = 'complete' WHERE dataset_id = ?",
        args![b.as_str()],
    );
    call_db(&mut h, DbRequest::CompleteJobsAndDatasets).unwrap();
    d.exec(
        "UPDATE dataset SET end_date = ? WHERE dataset_id = ?",
        args![LONG_AGO, b.as_str()],
    );
    assert_eq!(
        support::rows(&mut h, DbRequest::Archive { now: None }),
        1,
        "dataset b moves"
    );
    assert_summaries(d, "archive", false);
    assert_eq!(
        d.count(
            "SELECT count(*) FROM task_summary WHERE dataset_id = ?",
            args![b.as_str()]
        ),
        0,
        "an archived dataset leaves no summary rows"
    );
    // The dataset page's counts are the summary's.
    let p = dataset_page(&mut h, a_num);
    let live: u64 = p.task_counts.values().sum();
    assert_eq!(live, 12);
    assert_eq!(p.job_counts.values().sum::<u64>(), 6);
}

/// Dataset a: 4 jobs, gen tasks finished after 60, 120 and 180 s and one failed after 60 s.
fn seeded(d: &TestDb) -> (Harness, String, u64, Vec<QueuedTask>) {
    add_admin(d);
    let mut h = d.start("");
    let (a, num) = submit(&mut h, 4, "first");
    let queued = queue_tasks(&mut h, "g", 100, unlimited(), false);
    finish(&mut h, &queued[0], 60.0);
    finish(&mut h, &queued[1], 120.0);
    finish(&mut h, &queued[2], 180.0);
    fail(&mut h, &queued[3], 60.0);
    (h, a, num, queued)
}

fn each_page_answers_its_rows_and_totals(d: &TestDb) {
    let (mut h, a, num, queued) = seeded(d);
    let (_b, b_num) = submit(&mut h, 1, "second");
    // `/`: datasets by status (both processing).
    let home = page_of!(&mut h, Home, PageQuery::Home { hours: 24 });
    assert_eq!(home.dataset_counts.get("processing"), Some(&2));
    // `/dataset`: newest first.
    let list = page_of!(
        &mut h,
        Datasets,
        PageQuery::Datasets {
            status: None,
            paging: all(),
        }
    );
    assert_eq!(list.total, 2);
    let nums: Vec<u64> = list.rows.iter().map(|r| r.dataset_num).collect();
    assert_eq!(nums, [b_num, num]);
    assert_eq!(list.rows[1].description, "first");
    assert_eq!(list.rows[1].jobs_submitted, 4);
    // `/dataset/N`: counts and the per-name table.
    let p = dataset_page(&mut h, num);
    assert_eq!(p.dataset.dataset_id, a);
    assert_eq!(p.job_counts.get("processing"), Some(&4));
    assert_eq!(p.task_counts.get("complete"), Some(&3));
    assert_eq!(p.task_counts.values().sum::<u64>(), 8);
    let names: Vec<&str> = p.task_names.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["gen", "filter"]);
    let gen = &p.task_names[0];
    assert_eq!(gen.counts.get("complete"), Some(&3));
    assert_eq!(gen.counts.values().sum::<u64>(), 4);
    let w = gen.walltime.expect("gen has completions");
    assert!((w.mean - 120.0).abs() < 1e-6, "{w:?}");
    assert!(
        (w.min - 60.0).abs() < 1e-6 && (w.max - 180.0).abs() < 1e-6,
        "{w:?}"
    );
    // σ of 60, 120, 180 (population).
    assert!(
        (w.stddev - (2.0f64 / 3.0).sqrt() * 60.0).abs() < 1e-6,
        "{w:?}"
    );
    // 360 s good, 60 s failed.
    let e = gen.efficiency.expect("gen has walltime");
    assert!((e - 360.0 / 420.0).abs() < 1e-9, "{e}");
    let filter = &p.task_names[1];
    assert_eq!(filter.walltime, None);
    assert_eq!(filter.efficiency, None);
    // `/config`.
    let c = page_of!(&mut h, Config, PageQuery::Config(DatasetKey::Id(a.clone())));
    assert_eq!(c.dataset.dataset_num, num);
    assert!(c.config.contains("\"filter\""), "{}", c.config);
    // `/job` and `/job/ID`.
    let jobs = page_of!(
        &mut h,
        Jobs,
        PageQuery::Jobs {
            dataset: DatasetKey::Num(num),
            status: None,
            paging: all(),
        }
    );
    assert_eq!(jobs.total, 4);
    let indexes: Vec<u64> = jobs.rows.iter().map(|j| j.job_index).collect();
    assert_eq!(indexes, [0, 1, 2, 3]);
    let job_id = jobs.rows[0].job_id.clone();
    let job = page_of!(&mut h, Job, PageQuery::Job { job_id });
    assert_eq!(job.job.dataset_num, num);
    let names: Vec<&str> = job.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["gen", "filter"]);
    // `/task?dataset_id=`: job then task order, with the total.
    let (ids, total) = task_ids(&mut h, of_dataset(num), all());
    assert_eq!((ids.len(), total), (8, 8));
    assert_eq!(ids[0], queued[0].task_id, "job 0's gen first");
    // `/log`: as stored.
    upload_log(&mut h, &queued[0], "stdout", zlib_base64(b"hello\n"));
    let log = page_of!(
        &mut h,
        Log,
        PageQuery::Log {
            task_id: queued[0].task_id.clone(),
            name: "stdout".into(),
        }
    );
    assert_eq!(log.data, zlib_base64(b"hello\n"));
}

fn paging_edges_and_filters_select_the_right_rows(d: &TestDb) {
    let (mut h, a, num, queued) = seeded(d);
    let (every, _) = task_ids(&mut h, of_dataset(num), all());
    // Limit 1 at each offset walks the same order.
    for (i, id) in every.iter().enumerate() {
        let (one, total) = task_ids(
            &mut h,
            of_dataset(num),
            Paging {
                offset: i as u64,
                limit: 1,
            },
        );
        assert_eq!((one, total), (vec![id.clone()], 8));
    }
    // Past the end: no rows, the same total; a huge offset or limit is no error.
    let past = Paging {
        offset: 8,
        limit: 10,
    };
    assert_eq!(task_ids(&mut h, of_dataset(num), past), (vec![], 8));
    let huge = Paging {
        offset: u64::MAX,
        limit: u64::MAX,
    };
    assert_eq!(task_ids(&mut h, of_dataset(num), huge), (vec![], 8));
    // Filters: status, name, job, and all of them together.
    let complete = TaskFilter {
        status: Some("complete".into()),
        ..of_dataset(num)
    };
    let (ids, total) = task_ids(&mut h, complete, all());
    let expected: Vec<String> = queued[..3].iter().map(|t| t.task_id.clone()).collect();
    assert_eq!((ids, total), (expected, 3));
    let filters = TaskFilter {
        name: Some("filter".into()),
        ..of_dataset(num)
    };
    let (ids, total) = task_ids(&mut h, filters, all());
    assert_eq!((ids.len(), total), (4, 4));
    let global_status = TaskFilter {
        status: Some("failed".into()),
        ..TaskFilter::default()
    };
    let failed = task_ids(&mut h, global_status, all());
    let global_name = TaskFilter {
        name: Some("gen".into()),
        ..TaskFilter::default()
    };
    assert_eq!(task_ids(&mut h, global_name, all()).1, 4);
    let job_id = d.texts(
        "SELECT job_id FROM task WHERE task_id = ?",
        args![queued[1].task_id.as_str()],
    )[0]
    .clone();
    let by_job = TaskFilter {
        job_id: Some(job_id.clone()),
        ..TaskFilter::default()
    };
    let (ids, total) = task_ids(&mut h, by_job, all());
    assert_eq!((ids.len(), total), (2, 2));
    assert_eq!(ids[0], queued[1].task_id);
    let everything = TaskFilter {
        dataset: Some(DatasetKey::Id(a.clone())),
        job_id: Some(job_id.clone()),
        status: Some("complete".into()),
        name: Some("gen".into()),
    };
    assert_eq!(
        task_ids(&mut h, everything, all()),
        (vec![queued[1].task_id.clone()], 1)
    );
    // A job of another dataset, or an unknown job, has no tasks here.
    let (_b, b_num) = submit(&mut h, 1, "other");
    let mismatch = TaskFilter {
        job_id: Some(job_id),
        ..of_dataset(b_num)
    };
    assert_eq!(task_ids(&mut h, mismatch, all()), (vec![], 0));
    let unknown_job = TaskFilter {
        job_id: Some("no-such-job".into()),
        ..TaskFilter::default()
    };
    assert_eq!(task_ids(&mut h, unknown_job, all()), (vec![], 0));
    // The global failed list counts this dataset's failure (if the failure is final) the same
    // way it lists it.
    assert_eq!(failed.0.len() as u64, failed.1);
    // Datasets by status, and their paging.
    let datasets = |h: &mut Harness, status: Option<&str>, paging: Paging| match page(
        h,
        PageQuery::Datasets {
            status: status.map(str::to_string),
            paging,
        },
    )
    .unwrap()
    {
        PageData::Datasets(l) => (
            l.rows.iter().map(|r| r.dataset_num).collect::<Vec<_>>(),
            l.total,
        ),
        other => panic!("{other:?}"),
    };
    let one = Paging {
        offset: 1,
        limit: 1,
    };
    assert_eq!(datasets(&mut h, None, one), (vec![num], 2));
    assert_eq!(datasets(&mut h, Some("complete"), all()), (vec![], 0));
    as_admin(
        &mut h,
        UserAction::Dataset {
            dataset_id: a.clone(),
            action: DatasetAction::Suspend,
        },
    );
    assert_eq!(datasets(&mut h, Some("suspended"), all()), (vec![num], 1));
    // Jobs by status and paging.
    let jobs = page_of!(
        &mut h,
        Jobs,
        PageQuery::Jobs {
            dataset: DatasetKey::Id(a),
            status: Some("processing".into()),
            paging: Paging {
                offset: 3,
                limit: 5,
            },
        }
    );
    assert_eq!((jobs.rows.len(), jobs.total), (1, 4));
    assert_eq!(jobs.rows[0].job_index, 3);
}

fn unknown_ids_and_numbers_are_not_found(d: &TestDb) {
    let (mut h, _, num, queued) = seeded(d);
    let not_found = |h: &mut Harness, q: PageQuery| match page(h, q.clone()) {
        Err(CallError::Refused(why)) => assert!(why.starts_with("no "), "{q:?}: {why}"),
        other => panic!("{q:?}: {other:?}"),
    };
    for key in [
        DatasetKey::Num(num + 1000),
        DatasetKey::Num(u64::MAX),
        DatasetKey::Id("nope".into()),
    ] {
        not_found(&mut h, PageQuery::Dataset(key.clone()));
        not_found(&mut h, PageQuery::Config(key.clone()));
        not_found(
            &mut h,
            PageQuery::Jobs {
                dataset: key.clone(),
                status: None,
                paging: all(),
            },
        );
        not_found(
            &mut h,
            PageQuery::Tasks {
                filter: TaskFilter {
                    dataset: Some(key),
                    ..TaskFilter::default()
                },
                paging: all(),
            },
        );
    }
    not_found(
        &mut h,
        PageQuery::Task {
            task_id: "nope".into(),
            tail_lines: 40,
        },
    );
    not_found(
        &mut h,
        PageQuery::Job {
            job_id: "nope".into(),
        },
    );
    not_found(
        &mut h,
        PageQuery::Log {
            task_id: queued[0].task_id.clone(),
            name: "stdout".into(),
        },
    );
}

fn hostile_text_comes_back_unchanged(d: &TestDb) {
    add_admin(d);
    let mut h = d.start("");
    let (a, num) = submit(&mut h, 1, HOSTILE);
    d.exec(
        "UPDATE dataset SET name = ? WHERE dataset_id = ?",
        args![HOSTILE, a.as_str()],
    );
    let p = dataset_page(&mut h, num);
    assert_eq!(p.dataset.description, HOSTILE);
    assert_eq!(p.dataset.name, HOSTILE);
    let queued = queue_tasks(&mut h, "g", 1, unlimited(), false);
    upload_log(&mut h, &queued[0], HOSTILE, zlib_base64(HOSTILE.as_bytes()));
    let t = page_of!(
        &mut h,
        Task,
        PageQuery::Task {
            task_id: queued[0].task_id.clone(),
            tail_lines: 40,
        }
    );
    assert_eq!(t.logs[0].name, HOSTILE);
    assert_eq!(t.logs[0].lines, [HOSTILE]);
    // A filter value with quotes is a value, not SQL.
    let (ids, total) = task_ids(
        &mut h,
        TaskFilter {
            status: Some(HOSTILE.into()),
            ..TaskFilter::default()
        },
        all(),
    );
    assert_eq!((ids.len(), total), (0, 0));
}

fn the_task_page_shows_dependencies_stats_and_log_tails(d: &TestDb) {
    let (mut h, _, _, queued) = seeded(d);
    // The filter task of job 0 depends on its gen task (finished).
    let filter = d.texts(
        "SELECT task_id FROM task WHERE job_id = (SELECT job_id FROM task WHERE task_id = ?) \
         AND task_index = 1",
        args![queued[0].task_id.as_str()],
    )[0]
    .clone();
    let t = page_of!(
        &mut h,
        Task,
        PageQuery::Task {
            task_id: filter,
            tail_lines: 40,
        }
    );
    assert_eq!(t.task.name, "filter");
    assert_eq!(t.depends.len(), 1);
    assert_eq!(t.depends[0].task_id, queued[0].task_id);
    assert_eq!(
        (t.depends[0].name.as_str(), t.depends[0].status.as_str()),
        ("gen", "complete")
    );
    // Stats newest first: the failed task is reset and finishes after its error.
    let failed = &queued[3];
    as_admin(
        &mut h,
        UserAction::Tasks {
            task_ids: vec![failed.task_id.clone()],
            action: TaskAction::Reset,
        },
    );
    change(&mut h, &failed.task_id, TaskEvent::Retry);
    let requeued = queue_tasks(&mut h, "g", 100, unlimited(), false);
    let again = requeued
        .iter()
        .find(|t| t.task_id == failed.task_id)
        .expect("the reset task queues again");
    finish(&mut h, again, 10.0);
    // Logs: a short one, a long one, one without newlines, corrupt ones, an empty one.
    let long: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
    let logs = [
        ("a-short", zlib_base64(b"one\ntwo\nthree")),
        ("b-long", zlib_base64(long.as_bytes())),
        ("c-no-newline", zlib_base64(&vec![b'x'; 1_000_000])),
        ("d-bad-base64", "@@ not base64 @@".to_string()),
        (
            "e-bad-zlib",
            base64::engine::general_purpose::STANDARD.encode(b"\x78\x9c not zlib data"),
        ),
        ("f-empty", String::new()),
    ];
    for (name, data) in &logs {
        upload_log(&mut h, again, name, data.clone());
    }
    let t = page_of!(
        &mut h,
        Task,
        PageQuery::Task {
            task_id: failed.task_id.clone(),
            tail_lines: 40,
        }
    );
    let errors: Vec<bool> = t.stats.iter().map(|s| s.2).collect();
    assert_eq!(
        errors,
        [false, true],
        "the finish, then the error before it"
    );
    assert!(t.stats[0].0 >= t.stats[1].0);
    let names: Vec<&str> = t.logs.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, logs.iter().map(|l| l.0).collect::<Vec<_>>());
    assert_eq!(t.logs[0].lines, ["one", "two", "three"]);
    assert!(!t.logs[0].truncated);
    assert_eq!(t.logs[1].lines.len(), 40);
    assert_eq!(t.logs[1].lines[39], "line 99999");
    assert_eq!(t.logs[1].lines[0], "line 99960");
    assert!(t.logs[1].truncated);
    assert_eq!(t.logs[2].lines.len(), 1);
    assert!(
        t.logs[2].lines[0].len() <= MAX_TAIL_LINE + 3,
        "cut at the cap"
    );
    assert!(t.logs[2].lines[0].ends_with('…'));
    assert!(
        t.logs[3].error.as_deref().unwrap().contains("base64"),
        "{:?}",
        t.logs[3]
    );
    assert!(
        t.logs[4].error.as_deref().unwrap().contains("zlib"),
        "{:?}",
        t.logs[4]
    );
    assert!(t.logs[3].lines.is_empty() && t.logs[4].lines.is_empty());
    assert_eq!((t.logs[5].lines.len(), t.logs[5].error.as_ref()), (0, None));
}

fn an_archived_dataset_keeps_its_pages(d: &TestDb) {
    let (mut h, a, num, queued) = seeded(d);
    upload_log(&mut h, &queued[0], "stdout", zlib_base64(b"kept\n"));
    let before = dataset_page(&mut h, num);
    d.exec(
        "UPDATE task SET status = 'complete' WHERE dataset_id = ? AND status <> 'complete'",
        args![a.as_str()],
    );
    call_db(&mut h, DbRequest::CompleteJobsAndDatasets).unwrap();
    d.exec(
        "UPDATE dataset SET end_date = ? WHERE dataset_id = ?",
        args![LONG_AGO, a.as_str()],
    );
    let live = dataset_page(&mut h, num);
    drop(h);
    let mut h = d.start_with("archive_after_days = 1\n", "");
    assert_eq!(support::rows(&mut h, DbRequest::Archive { now: None }), 1);
    assert_eq!(
        d.count(
            "SELECT count(*) FROM task WHERE dataset_id = ?",
            args![a.as_str()]
        ),
        0,
        "the tasks moved"
    );
    let archived = dataset_page(&mut h, num);
    assert_eq!(archived.dataset, live.dataset);
    assert_eq!(archived.task_counts, live.task_counts);
    assert_eq!(archived.job_counts, live.job_counts);
    assert_eq!(archived.task_names.len(), 2);
    for (x, y) in archived.task_names.iter().zip(&live.task_names) {
        assert_eq!((&x.name, &x.counts), (&y.name, &y.counts));
        // The archived range is exact; the live one only bounds it (see `schema.rs`).
        let (xw, yw) = (x.walltime.unwrap(), y.walltime.unwrap());
        assert!((xw.mean - yw.mean).abs() < 1e-6 && (xw.stddev - yw.stddev).abs() < 1e-6);
        assert_eq!(x.efficiency.is_some(), y.efficiency.is_some());
    }
    assert_eq!(before.task_names[0].name, "gen");
    let home = page_of!(&mut h, Home, PageQuery::Home { hours: 1 });
    assert_eq!(home.dataset_counts.get("complete"), Some(&1));
    let list = page_of!(
        &mut h,
        Datasets,
        PageQuery::Datasets {
            status: Some("complete".into()),
            paging: all(),
        }
    );
    assert_eq!((list.rows.len(), list.total), (1, 1));
    let c = page_of!(&mut h, Config, PageQuery::Config(DatasetKey::Num(num)));
    assert!(c.config.contains("gen"));
    let (ids, total) = task_ids(&mut h, of_dataset(num), all());
    assert_eq!((ids.len(), total), (8, 8));
    assert_eq!(ids[0], queued[0].task_id);
    let jobs = page_of!(
        &mut h,
        Jobs,
        PageQuery::Jobs {
            dataset: DatasetKey::Num(num),
            status: None,
            paging: all(),
        }
    );
    assert_eq!(jobs.total, 4);
    let job = page_of!(
        &mut h,
        Job,
        PageQuery::Job {
            job_id: jobs.rows[0].job_id.clone(),
        }
    );
    assert_eq!(job.tasks.len(), 2);
    let t = page_of!(
        &mut h,
        Task,
        PageQuery::Task {
            task_id: queued[0].task_id.clone(),
            tail_lines: 40,
        }
    );
    assert_eq!(t.logs[0].lines, ["kept"]);
    assert_eq!(t.stats.len(), 1);
    let log = page_of!(
        &mut h,
        Log,
        PageQuery::Log {
            task_id: queued[0].task_id.clone(),
            name: "stdout".into(),
        }
    );
    assert_eq!(log.data, zlib_base64(b"kept\n"));
}

fn graphs_record_dataset_progress_and_home_reads_the_last_hours(d: &TestDb) {
    let (mut h, a, num, _) = seeded(d);
    // An old graph row is outside the last hour; the records are inside, oldest first.
    d.exec(
        "INSERT INTO graph (graph_id, name, value, timestamp) \
         VALUES ('old', 'active_tasks', '{}', ?)",
        args![LONG_AGO],
    );
    assert_eq!(support::rows(&mut h, DbRequest::RecordGraphs), 3);
    let queued = queue_tasks(&mut h, "g", 1, unlimited(), false);
    finish(&mut h, &queued[0], 5.0);
    assert_eq!(support::rows(&mut h, DbRequest::RecordGraphs), 3);
    let home = page_of!(&mut h, Home, PageQuery::Home { hours: 1 });
    let names: Vec<&str> = home.graphs.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names
        .iter()
        .all(|n| *n == "active_tasks" || *n == "completed_tasks"));
    assert!(home
        .graphs
        .windows(2)
        .all(|w| w[0].timestamp <= w[1].timestamp));
    let all_time = page_of!(&mut h, Home, PageQuery::Home { hours: u32::MAX });
    assert_eq!(all_time.graphs.len(), 5);
    assert_eq!(all_time.graphs[0].timestamp, LONG_AGO);
    // The dataset's progress: 3 of 8 complete, then 4 of 8.
    let p = dataset_page(&mut h, num);
    let points: Vec<(u64, u64)> = p.progress.iter().map(|(_, c, t)| (*c, *t)).collect();
    assert_eq!(points, [(3, 8), (4, 8)]);
    let stored = d.texts(
        "SELECT value FROM graph WHERE name = 'dataset_progress' ORDER BY timestamp",
        args![],
    );
    let value: Value = serde_json::from_str(&stored[1]).unwrap();
    assert_eq!(value, json!({ a: [4, 8] }));
}

// ---- log tails without a database ----

#[test]
fn a_log_tail_keeps_the_last_lines_and_says_whether_there_were_more() {
    let data = zlib_base64(b"a\nb\nc\n");
    let t = log_tail("x".into(), data.as_bytes(), 2);
    assert_eq!(
        (t.lines.clone(), t.truncated, t.error),
        (vec!["b".into(), "c".into()], true, None)
    );
    let t = log_tail("x".into(), data.as_bytes(), 3);
    assert_eq!((t.lines.len(), t.truncated), (3, false));
    let t = log_tail("x".into(), data.as_bytes(), 0);
    assert_eq!((t.lines.len(), t.truncated), (0, true));
    // Blank lines count; invalid UTF-8 is replaced; wrapped base64 decodes.
    let data = zlib_base64(b"\n\n\xffz\n");
    let wrapped: String = data
        .as_bytes()
        .chunks(4)
        .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
        .collect();
    let t = log_tail("x".into(), wrapped.as_bytes(), 10);
    assert_eq!(t.lines, ["", "", "\u{FFFD}z"]);
    assert_eq!(t.error, None);
}

#[test]
fn a_truncated_zlib_stream_is_an_error_not_a_page_failure() {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    let text: String = (0..10_000).map(|i| format!("{i}\n")).collect();
    z.write_all(text.as_bytes()).unwrap();
    let bytes = z.finish().unwrap();
    let cut = base64::engine::general_purpose::STANDARD.encode(&bytes[..bytes.len() / 2]);
    let t = log_tail("x".into(), cut.as_bytes(), 5);
    assert!(t.error.is_some(), "{t:?}");
}
