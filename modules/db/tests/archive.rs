//! The archive (SPEC §10) through the db module's messages: which datasets move, that they
//! move whole and only once, that reads answer as before the move, and that a move killed
//! with SIGKILL at any step finishes after a restart with nothing lost or duplicated. Every
//! body runs on SQLite (primary file + archive file) and again on a fresh database of a
//! MariaDB/MySQL server when `ICEPROD_TEST_MYSQL_URL` names one (`scripts/mariadb.sh start
//! DIR` prints such a url); without it the MariaDB variants say so on stderr and pass.
//!
//! The crash test runs this test binary again as a child process (the test
//! `child_runs_an_archive_when_the_crash_test_asks`, which does nothing unless
//! `ICEPROD_TEST_ARCHIVE_CHILD` names a config file), stopped at a fault point of the move
//! (`ICEPROD_TEST_ARCHIVE_FAULT`, see `archive::FAULT_VAR`) and then killed with SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use iceprod_db::archive::{self, MOVED};
mod support;

use iceprod_db::sql::Tx;
use iceprod_db::{args, ops, Db, DbError};
use iceprod_runtime::harness::Harness;
use iceprod_runtime::session::SessionChild;
use iceprod_runtime::{
    CallError, Config, DbReply, DbRequest, ModuleKind, PublicQuery, Reply, Request,
    ScheduledMessage,
};
use serde_json::{json, Value};
use support::{TestDb, WAIT};

/// Names the config file of the child process of the crash test.
const CHILD_VAR: &str = "ICEPROD_TEST_ARCHIVE_CHILD";
/// Long ago enough for any archive age.
const LONG_AGO: &str = "2020-01-01T00:00:00.000000Z";

on_both_backends!(
    an_old_ended_dataset_moves_with_all_its_rows_and_recent_or_unended_ones_stay,
    reads_of_an_archived_dataset_answer_as_before_the_move,
    a_second_run_moves_and_duplicates_nothing,
    a_dataset_between_the_steps_is_read_once_and_the_next_batch_finishes_it,
    a_dataset_changed_after_its_copy_is_copied_again_before_it_moves,
    a_dataset_reset_after_its_copy_keeps_its_live_rows_and_loses_the_copy,
    a_dataset_others_depend_on_stays_until_they_have_moved,
    a_batch_is_bounded_and_a_run_moves_every_batch,
    the_age_comes_from_the_config_and_zero_moves_nothing,
    the_daily_schedule_message_runs_an_archive,
    a_move_killed_at_each_step_finishes_after_a_restart_with_nothing_lost_or_duplicated,
    no_batch_writes_a_copy_and_deletes_its_live_rows_together,
);

// ---- seeding and looking ----

/// One dataset written straight to the database: config, two task_rels (`gen`, `filter`),
/// `jobs` jobs of two tasks, a stat and a log per task, and two history rows (one about
/// the dataset, one about a task).
fn seed(db: &TestDb, n: u32, status: &str, end_date: Option<&str>, jobs: u32) -> String {
    let id = format!("d{n}");
    let now = ops::now();
    db.tx(|tx| {
        tx.exec(
            "INSERT INTO dataset (dataset_id, dataset_num, description, status, status_changed, \
             jobs_submitted, tasks_submitted, jobs_buffered, start_date, end_date) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            args![
                id.as_str(),
                n,
                format!("dataset {n}, trailing space "),
                status,
                now.as_str(),
                jobs,
                jobs * 2,
                jobs,
                LONG_AGO,
                end_date
            ],
        )?;
        let config = json!({"version": 3, "description": format!("dataset {n}"),
            "steering": {"parameters": {"n": n}}, "tasks": [{"name": "gen"}, {"name": "filter"}]});
        tx.exec(
            "INSERT INTO config (dataset_id, config_data) VALUES (?, ?)",
            args![id.as_str(), config.to_string()],
        )?;
        for (i, name) in ["gen", "filter"].iter().enumerate() {
            tx.exec(
                "INSERT INTO task_rel (task_rel_id, dataset_id, task_index, name, depends) \
                 VALUES (?, ?, ?, ?, ?)",
                args![
                    format!("{id}r{i}"),
                    id.as_str(),
                    i,
                    *name,
                    if i == 0 {
                        "[]".to_string()
                    } else {
                        format!("[\"{id}r0\"]")
                    }
                ],
            )?;
        }
        for j in 0..jobs {
            let job = format!("{id}j{j}");
            tx.exec(
                "INSERT INTO job (job_id, dataset_id, job_index, status, status_changed) \
                 VALUES (?, ?, ?, ?, ?)",
                args![job.as_str(), id.as_str(), j, status, now.as_str()],
            )?;
            for t in 0..2u32 {
                let task = format!("{job}t{t}");
                let task_status = if status == "processing" && t == 1 {
                    "idle"
                } else if status == "errors" && t == 1 {
                    "failed"
                } else {
                    "complete"
                };
                tx.exec(
                    "INSERT INTO task (task_id, job_id, dataset_id, task_rel_id, task_index, \
                     status, prev_status, status_changed, walltime, walltime_err, \
                     walltime_err_n, grid_queue_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    args![
                        task.as_str(),
                        job.as_str(),
                        id.as_str(),
                        format!("{id}r{t}"),
                        t,
                        task_status,
                        "processing",
                        now.as_str(),
                        0.5 * f64::from(t + 1),
                        0.25,
                        1i64,
                        None::<String>
                    ],
                )?;
                tx.exec(
                    "INSERT INTO task_stat (task_stat_id, task_id, dataset_id, create_date, \
                     stat, error) VALUES (?, ?, ?, ?, ?, ?)",
                    args![
                        format!("{task}s"),
                        task.as_str(),
                        id.as_str(),
                        now.as_str(),
                        json!({"time_used": 1800, "host": "node1"}).to_string(),
                        task_status == "failed"
                    ],
                )?;
                tx.exec(
                    "INSERT INTO task_log (task_log_id, task_id, dataset_id, name, data) \
                     VALUES (?, ?, ?, 'stdout', ?)",
                    args![
                        format!("{task}l"),
                        task.as_str(),
                        id.as_str(),
                        "eJwrSS0uAQAEXQHB"
                    ],
                )?;
            }
        }
        for (suffix, subject) in [("h0", id.clone()), ("h1", format!("{id}j0t0"))] {
            tx.exec(
                "INSERT INTO history (history_id, username, action, subject, details, timestamp) \
                 VALUES (?, 'admin', 'reset_dataset', ?, '{}', ?)",
                args![format!("{id}{suffix}"), subject, now.as_str()],
            )?;
        }
        Ok(())
    });
    id
}

/// Rows of `dataset_id` per moved table: (live, archived).
fn rows_of(db: &TestDb, dataset_id: &str) -> Vec<(&'static str, i64, i64)> {
    db.tx(|tx| {
        let mut out = Vec::new();
        for t in MOVED {
            let live = tx
                .query_opt(
                    &format!(
                        "SELECT count(*) FROM {} WHERE {} = ?",
                        t.name, t.dataset_column
                    ),
                    args![dataset_id],
                )?
                .expect("a count")
                .int(0)?;
            let archived = tx
                .query_opt(
                    &format!(
                        "SELECT count(*) FROM {} WHERE {} = ?",
                        archive::table(tx.backend(), t.name),
                        t.dataset_column
                    ),
                    args![dataset_id],
                )?
                .expect("a count")
                .int(0)?;
            out.push((t.name, live, archived));
        }
        Ok(out)
    })
}

/// The rows per table of a dataset seeded with `jobs` jobs.
fn expected_rows(jobs: i64) -> Vec<(&'static str, i64)> {
    vec![
        ("dataset", 1),
        ("config", 1),
        ("task_rel", 2),
        ("job", jobs),
        ("task", 2 * jobs),
        ("task_stat", 2 * jobs),
        ("task_log", 2 * jobs),
        ("history", 1),
    ]
}

/// Asserts every row of the dataset is live and none archived.
fn assert_live(db: &TestDb, dataset_id: &str, jobs: i64) {
    let want: Vec<_> = expected_rows(jobs)
        .into_iter()
        .map(|(t, n)| (t, n, 0))
        .collect();
    assert_eq!(
        rows_of(db, dataset_id),
        want,
        "{dataset_id} should be live only"
    );
}

/// Asserts every row of the dataset is archived and none live.
fn assert_archived(db: &TestDb, dataset_id: &str, jobs: i64) {
    let want: Vec<_> = expected_rows(jobs)
        .into_iter()
        .map(|(t, n)| (t, 0, n))
        .collect();
    assert_eq!(
        rows_of(db, dataset_id),
        want,
        "{dataset_id} should be archived only"
    );
}

/// Asserts the dataset is whole in the live tables, in the archive, or in both (between the
/// steps), and nowhere partly.
fn assert_whole_somewhere(db: &TestDb, dataset_id: &str, jobs: i64) -> (bool, bool) {
    let rows = rows_of(db, dataset_id);
    let want = expected_rows(jobs);
    let live_whole = rows.iter().zip(&want).all(|(r, w)| r.1 == w.1);
    let live_none = rows.iter().all(|r| r.1 == 0);
    let archived_whole = rows.iter().zip(&want).all(|(r, w)| r.2 == w.1);
    let archived_none = rows.iter().all(|r| r.2 == 0);
    assert!(
        (live_whole || live_none) && (archived_whole || archived_none),
        "{dataset_id} is partly somewhere: {rows:?}"
    );
    assert!(
        live_whole || archived_whole,
        "{dataset_id} is lost: {rows:?}"
    );
    (live_whole, archived_whole)
}

fn call_db(h: &mut Harness, request: DbRequest) -> Result<DbReply, CallError> {
    match h.call(ModuleKind::Db, Request::Db(request), WAIT)? {
        Reply::Db(reply) => Ok(reply),
        other => panic!("not a db reply: {other:?}"),
    }
}

/// Runs an archive to its end; returns how many datasets moved.
fn archive_run(h: &mut Harness, now: Option<&str>) -> u64 {
    match call_db(
        h,
        DbRequest::Archive {
            now: now.map(Into::into),
        },
    )
    .expect("the archive run")
    {
        DbReply::Rows(n) => n,
        other => panic!("{other:?}"),
    }
}

/// Runs one batch with the default age's cutoff.
fn batch(h: &mut Harness, max: u32) -> archive::BatchOutcome {
    let cutoff = archive::cutoff(None, 30).unwrap();
    match call_db(h, DbRequest::ArchiveBatch { cutoff, max }).expect("the batch") {
        DbReply::ArchiveBatch(outcome) => outcome,
        other => panic!("{other:?}"),
    }
}

fn public(h: &mut Harness, query: PublicQuery) -> Result<Value, String> {
    match call_db(h, DbRequest::Public(query)) {
        Ok(DbReply::Value(v)) => Ok(v),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e.to_string()),
    }
}

/// Every public read: per dataset of `ids`, and the listings.
fn answers(h: &mut Harness, ids: &[&str]) -> Vec<(String, Result<Value, String>)> {
    let mut out = Vec::new();
    for id in ids {
        let d = || id.to_string();
        for query in [
            PublicQuery::Config { dataset_id: d() },
            PublicQuery::DatasetDescription { dataset_id: d() },
            PublicQuery::DatasetSteering { dataset_id: d() },
            PublicQuery::DatasetCompletion { dataset_id: d() },
            PublicQuery::TaskIds { dataset_id: d() },
            PublicQuery::TaskStats { dataset_id: d() },
            PublicQuery::TaskWalltime { dataset_id: d() },
            PublicQuery::TasksByName {
                dataset_id: d(),
                name: "filter".into(),
            },
            PublicQuery::TasksInEachState {
                dataset_id: Some(d()),
            },
        ] {
            out.push((format!("{query:?}"), public(h, query)));
        }
    }
    for query in [
        PublicQuery::DatasetsByStatus,
        PublicQuery::AllDatasetCompletion,
        PublicQuery::TasksInEachState { dataset_id: None },
    ] {
        out.push((format!("{query:?}"), public(h, query)));
    }
    out
}

fn days_ago(days: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(days))
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

// ---- the shared bodies ----

fn an_old_ended_dataset_moves_with_all_its_rows_and_recent_or_unended_ones_stay(db: &TestDb) {
    let complete = seed(db, 1, "complete", Some(LONG_AGO), 3);
    let errors = seed(db, 2, "errors", Some(LONG_AGO), 2);
    let recent = seed(db, 3, "complete", Some(&days_ago(29)), 2);
    let processing = seed(db, 4, "processing", None, 2);
    // Suspended (or truncated) datasets have not ended, whatever their end_date says.
    let suspended = seed(db, 5, "suspended", Some(LONG_AGO), 1);
    let unended = seed(db, 6, "complete", None, 1);
    let mut h = db.start("");
    assert_eq!(archive_run(&mut h, None), 2);
    assert_archived(db, &complete, 3);
    assert_archived(db, &errors, 2);
    assert_live(db, &recent, 2);
    assert_live(db, &processing, 2);
    assert_live(db, &suspended, 1);
    assert_live(db, &unended, 1);
    // The history row about a task is not the dataset's: it stays.
    assert_eq!(
        db.tx(|tx| tx
            .query_opt(
                "SELECT count(*) FROM history WHERE subject = 'd1j0t0'",
                args![]
            )?
            .expect("a count")
            .int(0)),
        1
    );
    // The task counts written with the copy.
    let counts = db.tx(|tx| {
        tx.query(
            &format!(
                "SELECT status, n FROM {} WHERE dataset_id = 'd2' ORDER BY status",
                archive::table(tx.backend(), archive::TASK_COUNT)
            ),
            args![],
        )?
        .iter()
        .map(|r| Ok((r.text(0)?, r.int(1)?)))
        .collect::<Result<Vec<_>, DbError>>()
    });
    assert_eq!(
        counts,
        [("complete".to_string(), 2), ("failed".to_string(), 2)]
    );
    if db.mysql.is_none() {
        // On SQLite the rows are in the archive file, not the primary file's archive tables.
        let conn = iceprod_db::rusqlite::Connection::open(db.path().join("var/iceprod-archive.db"))
            .unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM archive_task", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 10);
        let primary = iceprod_db::rusqlite::Connection::open(db.path().join("iceprod.db")).unwrap();
        let n: i64 = primary
            .query_row("SELECT count(*) FROM archive_task", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }
}

fn reads_of_an_archived_dataset_answer_as_before_the_move(db: &TestDb) {
    let old = seed(db, 1, "errors", Some(LONG_AGO), 3);
    let other_old = seed(db, 2, "complete", Some(LONG_AGO), 1);
    let live = seed(db, 3, "processing", None, 2);
    let mut h = db.start("");
    let ids = [old.as_str(), other_old.as_str(), live.as_str(), "nosuch"];
    let before = answers(&mut h, &ids);
    // The answers are real ones: the dataset's tasks, counts and listings are there.
    assert!(before
        .iter()
        .any(|(q, a)| q.starts_with("TaskIds { dataset_id: \"d1\"")
            && a.as_ref()
                .is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 6))));
    assert!(before
        .iter()
        .any(|(q, a)| q.contains("nosuch") && a.as_ref().is_err_and(|e| e.contains("no dataset"))));
    assert_eq!(archive_run(&mut h, None), 2);
    assert_archived(db, &old, 3);
    let after = answers(&mut h, &ids);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b, a);
    }
    // A restarted module (new connections, the archive attached anew) answers the same.
    drop(h);
    let mut h = db.start("");
    assert_eq!(answers(&mut h, &ids), before);
}

fn a_second_run_moves_and_duplicates_nothing(db: &TestDb) {
    let old = seed(db, 1, "complete", Some(LONG_AGO), 2);
    let live = seed(db, 2, "processing", None, 1);
    let mut h = db.start("");
    assert_eq!(archive_run(&mut h, None), 1);
    let once = (rows_of(db, &old), rows_of(db, &live));
    assert_eq!(archive_run(&mut h, None), 0);
    assert_eq!(batch(&mut h, 10), archive::BatchOutcome::default());
    assert_eq!((rows_of(db, &old), rows_of(db, &live)), once);
    assert_archived(db, &old, 2);
}

fn a_dataset_between_the_steps_is_read_once_and_the_next_batch_finishes_it(db: &TestDb) {
    let old = seed(db, 1, "complete", Some(LONG_AGO), 2);
    let live = seed(db, 2, "processing", None, 1);
    let mut h = db.start("");
    let ids = [old.as_str(), live.as_str()];
    let before = answers(&mut h, &ids);
    // Step 1 only: the copy.
    let first = batch(&mut h, 10);
    assert_eq!((first.copied, first.moved, first.pending), (1, 0, 1));
    assert_eq!(
        assert_whole_somewhere(db, &old, 2),
        (true, true),
        "in both stores"
    );
    // Shown once: listings, counts and completion are as before.
    assert_eq!(answers(&mut h, &ids), before);
    // Step 2: the copy is verified unchanged and the live rows go.
    let second = batch(&mut h, 10);
    assert_eq!((second.moved, second.copied, second.pending), (1, 0, 0));
    assert_archived(db, &old, 2);
    assert_eq!(answers(&mut h, &ids), before);
}

fn a_dataset_changed_after_its_copy_is_copied_again_before_it_moves(db: &TestDb) {
    let old = seed(db, 1, "complete", Some(LONG_AGO), 1);
    let mut h = db.start("");
    assert_eq!(batch(&mut h, 10).copied, 1);
    // The description gains a trailing space (MariaDB's `_bin` collation calls that equal;
    // the comparison must not).
    db.tx(|tx| {
        tx.exec(
            "UPDATE dataset SET description = description || ' ' WHERE dataset_id = 'd1'",
            args![],
        )
    });
    let again = batch(&mut h, 10);
    assert_eq!((again.recopied, again.moved), (1, 0));
    // A log arrives late.
    db.tx(|tx| {
        tx.exec(
            "UPDATE task_log SET data = 'late' WHERE task_log_id = 'd1j0t0l'",
            args![],
        )
    });
    let again = batch(&mut h, 10);
    assert_eq!((again.recopied, again.moved), (1, 0));
    let last = batch(&mut h, 10);
    assert_eq!((last.moved, last.pending), (1, 0));
    assert_archived(db, &old, 1);
    let (data, description) = db.tx(|tx| {
        let b = tx.backend();
        let data = tx
            .query_opt(
                &format!(
                    "SELECT data FROM {} WHERE task_log_id = 'd1j0t0l'",
                    archive::table(b, "task_log")
                ),
                args![],
            )?
            .expect("the log")
            .text(0)?;
        let description = tx
            .query_opt(
                &format!(
                    "SELECT description FROM {} WHERE dataset_id = 'd1'",
                    archive::table(b, "dataset")
                ),
                args![],
            )?
            .expect("the dataset")
            .text(0)?;
        Ok((data, description))
    });
    assert_eq!(data, "late");
    assert_eq!(description, "dataset 1, trailing space  ");
}

fn a_dataset_reset_after_its_copy_keeps_its_live_rows_and_loses_the_copy(db: &TestDb) {
    let old = seed(db, 1, "complete", Some(LONG_AGO), 2);
    let mut h = db.start("");
    assert_eq!(batch(&mut h, 10).copied, 1);
    // A person resets it: processing again, no end date.
    db.tx(|tx| {
        tx.exec(
            "UPDATE dataset SET status = 'processing', end_date = NULL WHERE dataset_id = 'd1'",
            args![],
        )
    });
    let next = batch(&mut h, 10);
    assert_eq!((next.dropped, next.moved, next.pending), (1, 0, 0));
    assert_live(db, &old, 2);
    assert_eq!(archive_run(&mut h, None), 0);
    assert_live(db, &old, 2);
}

fn a_dataset_others_depend_on_stays_until_they_have_moved(db: &TestDb) {
    let base = seed(db, 1, "complete", Some(LONG_AGO), 1);
    let dependent = seed(db, 2, "processing", None, 1);
    // d2's gen depends on d1's filter (`DATASET.TASK`, resolved to its task_rel id).
    db.tx(|tx| {
        tx.exec(
            "UPDATE task_rel SET depends = '[\"d1r1\"]' WHERE task_rel_id = 'd2r0'",
            args![],
        )
    });
    let mut h = db.start("");
    assert_eq!(archive_run(&mut h, None), 0);
    assert_live(db, &base, 1);
    // Once the dependent ends long ago too, both move (the dependent first).
    db.tx(|tx| {
        tx.exec(
            "UPDATE dataset SET status = 'complete', end_date = ? WHERE dataset_id = 'd2'",
            args![LONG_AGO],
        )
    });
    assert_eq!(archive_run(&mut h, None), 2);
    assert_archived(db, &base, 1);
    assert_archived(db, &dependent, 1);
}

fn a_batch_is_bounded_and_a_run_moves_every_batch(db: &TestDb) {
    let ids: Vec<String> = (1..=25)
        .map(|n| seed(db, n, "complete", Some(LONG_AGO), 1))
        .collect();
    let mut h = db.start("");
    let first = batch(&mut h, 10);
    assert_eq!((first.copied, first.pending), (10, 10));
    // The second batch finishes those 10 and that is its whole budget.
    let second = batch(&mut h, 10);
    assert_eq!((second.moved, second.copied, second.pending), (10, 0, 0));
    assert_eq!(archive_run(&mut h, None), 15);
    for id in &ids {
        assert_archived(db, id, 1);
    }
}

fn the_age_comes_from_the_config_and_zero_moves_nothing(db: &TestDb) {
    let a_week = seed(db, 1, "complete", Some(&days_ago(7)), 1);
    let mut h = db.start_with("archive_after_days = 0\n", "");
    assert_eq!(archive_run(&mut h, None), 0);
    assert_eq!(archive_run(&mut h, Some("2999-01-01T00:00:00Z")), 0);
    assert_live(db, &a_week, 1);
    drop(h);
    let mut h = db.start_with("archive_after_days = 8\n", "");
    assert_eq!(archive_run(&mut h, None), 0);
    assert_live(db, &a_week, 1);
    // `now` stands in for the clock: 2 days later it is old enough.
    let later = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    assert_eq!(archive_run(&mut h, Some(&later)), 1);
    assert_archived(db, &a_week, 1);
    assert!(matches!(
        call_db(
            &mut h,
            DbRequest::Archive {
                now: Some("yesterday".into())
            }
        ),
        Err(CallError::Refused(msg)) if msg.contains("yesterday")
    ));
}

fn the_daily_schedule_message_runs_an_archive(db: &TestDb) {
    let old = seed(db, 1, "complete", Some(LONG_AGO), 1);
    let mut h = db.start("");
    let reply = h
        .call(
            ModuleKind::Db,
            Request::Scheduled {
                job: "archive".into(),
                message: ScheduledMessage::Archive,
            },
            WAIT,
        )
        .expect("the scheduled archive");
    assert_eq!(reply, Reply::Db(DbReply::Rows(1)));
    assert_archived(db, &old, 1);
}

// ---- crash safety: kill -9 at each step ----

/// Every row of a dataset, live and archived, table by table in key order.
type Snapshot = (
    Vec<Vec<iceprod_db::sql::Row>>,
    Vec<Vec<iceprod_db::sql::Row>>,
);

fn snapshot(db: &TestDb, dataset_id: &str) -> Snapshot {
    db.tx(|tx| {
        let (mut live, mut archived) = (Vec::new(), Vec::new());
        for t in MOVED {
            let columns = t.columns.join(", ");
            for (place, out) in [
                (t.name.to_string(), &mut live),
                (archive::table(tx.backend(), t.name), &mut archived),
            ] {
                out.push(tx.query(
                    &format!(
                        "SELECT {columns} FROM {place} WHERE {} = ? ORDER BY {}",
                        t.dataset_column, t.key
                    ),
                    args![dataset_id],
                )?);
            }
        }
        Ok((live, archived))
    })
}

/// SQLite commits a transaction over the primary and the archive file one file at a time, so
/// a crash may keep either file's part of a batch. That is safe as long as no batch deletes a
/// dataset's live rows while it writes that dataset's archive copy (or drops a copy while it
/// changes the live rows): checked here batch by batch over a run with every kind of step.
fn no_batch_writes_a_copy_and_deletes_its_live_rows_together(db: &TestDb) {
    let ids: Vec<String> = (1..=13)
        .map(|n| seed(db, n, "complete", Some(LONG_AGO), 1))
        .collect();
    let mut h = db.start("");
    let mut before: Vec<Snapshot> = ids.iter().map(|id| snapshot(db, id)).collect();
    for n in 0.. {
        assert!(n < 20, "the run does not end");
        if n == 1 {
            // Between the steps: d1 changes (copied again), d2 is reset (copy dropped).
            db.tx(|tx| {
                tx.exec(
                    "UPDATE task SET walltime = 9 WHERE dataset_id = 'd1'",
                    args![],
                )?;
                tx.exec(
                    "UPDATE dataset SET status = 'processing', end_date = NULL \
                     WHERE dataset_id = 'd2'",
                    args![],
                )
            });
            before = ids.iter().map(|id| snapshot(db, id)).collect();
        }
        let outcome = batch(&mut h, 10);
        let after: Vec<Snapshot> = ids.iter().map(|id| snapshot(db, id)).collect();
        for (id, (b, a)) in ids.iter().zip(before.iter().zip(&after)) {
            let present = |rows: &Vec<Vec<iceprod_db::sql::Row>>| !rows[0].is_empty();
            if present(&b.0) && !present(&a.0) {
                assert!(
                    present(&b.1) && b.1 == a.1,
                    "batch {n} deleted {id}'s live rows and wrote its copy"
                );
            }
            if present(&b.1) && !present(&a.1) {
                assert!(
                    present(&b.0) && b.0 == a.0,
                    "batch {n} dropped {id}'s copy and changed its live rows"
                );
            }
            if b.1 != a.1 {
                assert_eq!(b.0, a.0, "batch {n} wrote {id}'s copy and its live rows");
            }
        }
        before = after;
        if !outcome.progressed() {
            break;
        }
    }
    for id in &ids {
        if id == "d2" {
            assert_live(db, id, 1);
        } else {
            assert_archived(db, id, 1);
        }
    }
}

/// The fault points of a move (`archive::FAULT_VAR`): inside the copy's and the delete's
/// transactions before they commit, and right after each committed.
const FAULT_POINTS: [&str; 4] = ["copying", "copied", "deleting", "deleted"];

fn a_move_killed_at_each_step_finishes_after_a_restart_with_nothing_lost_or_duplicated(
    db: &TestDb,
) {
    // 12 old datasets: more than one batch, so a kill leaves some moved, some copied, some
    // untouched. Plus a live one that must never move.
    let old: Vec<String> = (1..=12)
        .map(|n| seed(db, n, "complete", Some(LONG_AGO), 1))
        .collect();
    let live = seed(db, 13, "processing", None, 1);
    let mut ids: Vec<&str> = old.iter().map(String::as_str).collect();
    ids.push(&live);
    let config = db.path().join("child.toml");
    std::fs::write(&config, db.config_text("", "")).unwrap();
    let reference = {
        let mut h = db.start("");
        answers(&mut h, &ids)
    };
    // Where each kill leaves the 12, as (live only, in both, archived only): a batch takes 10.
    // A kill inside a transaction leaves what the last commit left.
    let expected = [
        ("copying", (12, 0, 0)),
        ("copied", (2, 10, 0)),
        ("deleting", (2, 10, 0)),
        ("deleted", (2, 0, 10)),
    ];
    assert_eq!(expected.map(|(p, _)| p), FAULT_POINTS);
    for (point, state) in expected {
        run_child_until_killed(&config, point);
        let mut found = (0, 0, 0);
        for id in &old {
            match assert_whole_somewhere(db, id, 1) {
                (true, false) => found.0 += 1,
                (true, true) => found.1 += 1,
                _ => found.2 += 1,
            }
        }
        assert_eq!(found, state, "after a kill at {point}");
        assert_live(db, &live, 1);
        let mut h = db.start("");
        assert_eq!(answers(&mut h, &ids), reference, "after a kill at {point}");
    }
    // A restart without faults finishes every move.
    let out = run_child(&config, None);
    assert!(out.contains("archive run moved"), "{out}");
    for id in &old {
        assert_archived(db, id, 1);
    }
    assert_live(db, &live, 1);
    let mut h = db.start("");
    assert_eq!(answers(&mut h, &ids), reference);
    assert_eq!(archive_run(&mut h, None), 0);
}

fn child_command(config: &Path, fault: Option<&str>) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args([
            "--exact",
            "child_runs_an_archive_when_the_crash_test_asks",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, config)
        .env_remove(archive::FAULT_VAR)
        .stdin(Stdio::null());
    if let Some(point) = fault {
        command.env(archive::FAULT_VAR, point);
    }
    command
}

/// Runs the child to its end; returns its standard output.
fn run_child(config: &Path, fault: Option<&str>) -> String {
    let out = child_command(config, fault)
        .output()
        .expect("the child runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs the child until it reports reaching `point`, then kills it with SIGKILL. The child
/// must reach the point: each kill leaves work for the next point.
fn run_child_until_killed(config: &Path, point: &str) {
    // In a session of its own, so a failing test leaves nothing running.
    let mut child = SessionChild::spawn(
        child_command(config, Some(point))
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .expect("the child starts");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with(archive::FAULT_MARK) {
                let _ = tx.send(line.clone());
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    let deadline = Instant::now() + WAIT;
    let reached = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    // SIGKILL, whether or not it got there.
    child.kill().expect("the child can be killed");
    let status = child.wait().expect("the child is reaped");
    let seen = reader.join().expect("the reader ends");
    match reached {
        Ok(line) => assert_eq!(line, format!("{}{point}", archive::FAULT_MARK)),
        Err(_) => panic!("the child never reached {point} ({status}):\n{seen}"),
    }
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL");
}

/// The child process of the crash test: runs one archive run on the config named by
/// `ICEPROD_TEST_ARCHIVE_CHILD` (does nothing when it is not set).
#[test]
fn child_runs_an_archive_when_the_crash_test_asks() {
    let Ok(config) = std::env::var(CHILD_VAR) else {
        return;
    };
    let config = Config::load(Path::new(&config), &ModuleKind::ALL).expect("the child's config");
    let mut h = Harness::new(config);
    h.start::<Db>().expect("the db module starts in the child");
    let moved = archive_run(&mut h, None);
    println!("archive run moved {moved}");
}

// ---- SQLite only ----

#[test]
fn a_corrupt_or_unwritable_archive_file_refuses_the_start_with_its_name() {
    let db = TestDb::sqlite();
    let archive_dir = db.path().join("var");
    std::fs::create_dir_all(&archive_dir).unwrap();
    let file = archive_dir.join("iceprod-archive.db");
    // Corrupt.
    std::fs::write(&file, vec![0x42u8; 8192]).unwrap();
    let mut h = Harness::new(db.config(""));
    match h.start::<Db>() {
        Err(reason) => {
            let reason = reason.to_string();
            assert!(
                reason.contains("iceprod-archive.db") && reason.contains("not a database"),
                "{reason}"
            );
        }
        Ok(()) => panic!("started on a corrupt archive"),
    }
    // A folder where the file should be.
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let mut h = Harness::new(db.config(""));
    match h.start::<Db>() {
        Err(reason) => assert!(
            reason.to_string().contains("iceprod-archive.db"),
            "{reason}"
        ),
        Ok(()) => panic!("started on a folder"),
    }
    // Its folder cannot be made (a file is in the way). (Permission bits would not stop
    // root, who runs these tests.)
    let db = TestDb::sqlite();
    std::fs::write(db.path().join("var"), b"in the way").unwrap();
    let mut h = Harness::new(db.config(""));
    match h.start::<Db>() {
        Err(reason) => {
            let reason = reason.to_string();
            assert!(
                reason.contains("iceprod-archive.db") && reason.contains("cannot create"),
                "{reason}"
            );
        }
        Ok(()) => panic!("started without a place for the archive"),
    }
}

#[test]
fn the_archive_tables_have_every_column_of_the_live_tables() {
    let db = TestDb::sqlite();
    db.tx(|tx| {
        let columns = |tx: &mut dyn Tx, table: &str| -> Result<Vec<String>, DbError> {
            tx.query(&format!("PRAGMA table_info({table})"), args![])?
                .iter()
                .map(|r| r.text(1))
                .collect()
        };
        for t in MOVED {
            let live = columns(tx, t.name)?;
            assert_eq!(live, t.columns, "archive::MOVED for {}", t.name);
            let archived = columns(tx, &format!("archive_{}", t.name))?;
            assert_eq!(archived, live, "archive_{}", t.name);
        }
        Ok(())
    });
}
