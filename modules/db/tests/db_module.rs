//! The db module on its own thread, through its messages, on a real SQLite file.

use std::path::Path;
use std::time::Duration;

use iceprod_db::{ops, store, Db};
use iceprod_runtime::harness::Harness;
use iceprod_runtime::states::{TaskEvent, TaskStatus};
use iceprod_runtime::{
    CallError, Config, DbReply, DbRequest, ModuleKind, PasskeyScope, Reply, Request,
};
use r2d2_sqlite::rusqlite::params;

const WAIT: Duration = Duration::from_secs(30);

fn config(dir: &Path, extra: &str) -> Config {
    Config::parse(
        &format!("[modules]\ndb = true\n[db]\npath = \"iceprod.db\"\n{extra}"),
        &dir.join("iceprod.toml"),
        &[ModuleKind::Db, ModuleKind::Website, ModuleKind::Schedule],
    )
    .expect("test config")
}

/// A dataset with one job of `tasks` tasks, written straight to the file (submission comes
/// with the dataset operations).
fn seed(dir: &Path, tasks: usize, debug: bool) {
    let conn = store::open(&dir.join("iceprod.db")).unwrap();
    let now = ops::now();
    conn.execute(
        "INSERT INTO dataset (dataset_id, dataset_num, status, status_changed, jobs_submitted, \
         tasks_submitted, debug, start_date) VALUES ('d1', 1, 'processing', ?1, 1, ?2, ?3, ?1)",
        params![now, tasks as i64, debug],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO job (job_id, dataset_id, job_index, status, status_changed) \
         VALUES ('j1', 'd1', 0, 'processing', ?1)",
        params![now],
    )
    .unwrap();
    for i in 0..tasks {
        conn.execute(
            "INSERT INTO task (task_id, job_id, dataset_id, task_rel_id, task_index, status, \
             status_changed) VALUES (?1, 'j1', 'd1', 'r1', ?2, 'idle', ?3)",
            params![format!("t{i}"), i as i64, now],
        )
        .unwrap();
    }
}

fn db(h: &mut Harness, request: DbRequest) -> Result<DbReply, CallError> {
    match h.call(ModuleKind::Db, Request::Db(request), WAIT)? {
        Reply::Db(reply) => Ok(reply),
        other => panic!("not a db reply: {other:?}"),
    }
}

fn change(h: &mut Harness, task: &str, event: TaskEvent) -> Result<DbReply, CallError> {
    db(
        h,
        DbRequest::ChangeTaskState {
            task_id: task.into(),
            event,
        },
    )
}

fn status_of(dir: &Path, task: &str) -> (String, Option<String>, u32) {
    let conn = store::open(&dir.join("iceprod.db")).unwrap();
    conn.query_row(
        "SELECT status, prev_status, failures FROM task WHERE task_id = ?1",
        params![task],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

#[test]
fn a_task_runs_to_complete_and_then_refuses_every_change() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), 1, false);
    let mut h = Harness::new(config(dir.path(), ""));
    h.start::<Db>().unwrap();
    for event in [TaskEvent::Queue, TaskEvent::Start, TaskEvent::Finish] {
        assert!(matches!(
            change(&mut h, "t0", event),
            Ok(DbReply::Changed(_))
        ));
    }
    assert_eq!(
        status_of(dir.path(), "t0"),
        ("complete".into(), Some("processing".into()), 0)
    );
    match change(&mut h, "t0", TaskEvent::Error) {
        Err(CallError::Refused(msg)) => assert!(msg.contains("complete"), "{msg}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(status_of(dir.path(), "t0").0, "complete");
}

#[test]
fn task_errors_reset_then_fail_at_max_resets_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), 1, false);
    let mut h = Harness::new(config(dir.path(), "[queue]\nmax_resets = 2\n"));
    h.start::<Db>().unwrap();
    let mut first = true;
    for (expected, failures) in [(TaskStatus::Reset, 1), (TaskStatus::Failed, 2)] {
        if !first {
            change(&mut h, "t0", TaskEvent::Retry).unwrap();
        }
        first = false;
        change(&mut h, "t0", TaskEvent::Queue).unwrap();
        match change(&mut h, "t0", TaskEvent::Error).unwrap() {
            DbReply::Changed(t) => assert_eq!((t.to, t.failures), (expected, failures)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_debug_dataset_suspends_a_failing_task() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), 1, true);
    let mut h = Harness::new(config(dir.path(), ""));
    h.start::<Db>().unwrap();
    change(&mut h, "t0", TaskEvent::Queue).unwrap();
    change(&mut h, "t0", TaskEvent::Error).unwrap();
    assert_eq!(status_of(dir.path(), "t0").0, "suspended");
}

#[test]
fn unknown_tasks_and_hostile_ids_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), 1, false);
    let mut h = Harness::new(config(dir.path(), ""));
    h.start::<Db>().unwrap();
    for id in ["nosuch", "t0' OR '1'='1", "t0\0", &"x".repeat(1 << 20)] {
        match change(&mut h, id, TaskEvent::Queue) {
            Err(CallError::Refused(msg)) => assert!(msg.starts_with("no task"), "{msg:.80}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(status_of(dir.path(), "t0").0, "idle");
}

#[test]
fn counts_follow_the_changes() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), 5, false);
    let mut h = Harness::new(config(dir.path(), ""));
    h.start::<Db>().unwrap();
    change(&mut h, "t1", TaskEvent::Queue).unwrap();
    change(&mut h, "t2", TaskEvent::Queue).unwrap();
    change(&mut h, "t2", TaskEvent::Start).unwrap();
    match db(
        &mut h,
        DbRequest::TaskCounts {
            dataset_id: Some("d1".into()),
        },
    )
    .unwrap()
    {
        DbReply::Counts(c) => {
            assert_eq!(c.get("idle"), Some(&3));
            assert_eq!(c.get("queued"), Some(&1));
            assert_eq!(c.get("processing"), Some(&1));
        }
        other => panic!("{other:?}"),
    }
    match db(
        &mut h,
        DbRequest::TaskCounts {
            dataset_id: Some("other".into()),
        },
    )
    .unwrap()
    {
        DbReply::Counts(c) => assert!(c.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn passkeys_verify_until_revoked_or_expired_with_no_stale_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(config(dir.path(), ""));
    h.start::<Db>().unwrap();
    let issue = |h: &mut Harness, subject: &str, ttl| match db(
        h,
        DbRequest::IssuePasskey {
            scope: PasskeyScope::Task,
            subject: subject.into(),
            ttl,
        },
    )
    .unwrap()
    {
        DbReply::Passkey(k) => k,
        other => panic!("{other:?}"),
    };
    let key = issue(&mut h, "t0", Duration::from_secs(3600));
    let other = issue(&mut h, "t1", Duration::from_secs(3600));
    assert_ne!(key, other);
    assert_eq!(
        db(&mut h, DbRequest::VerifyPasskey { key: key.clone() }).unwrap(),
        DbReply::PasskeyOwner {
            scope: PasskeyScope::Task,
            subject: "t0".into()
        }
    );
    assert_eq!(
        db(
            &mut h,
            DbRequest::RevokePasskeys {
                scope: PasskeyScope::Task,
                subject: "t0".into()
            }
        )
        .unwrap(),
        DbReply::Rows(1)
    );
    // The very next verify already refuses it; the other key still works.
    assert!(matches!(
        db(&mut h, DbRequest::VerifyPasskey { key }),
        Err(CallError::Refused(_))
    ));
    assert!(db(&mut h, DbRequest::VerifyPasskey { key: other }).is_ok());
    let expired = issue(&mut h, "t2", Duration::ZERO);
    assert!(matches!(
        db(&mut h, DbRequest::VerifyPasskey { key: expired }),
        Err(CallError::Refused(_))
    ));
    for garbage in ["", "' OR 1=1 --", "\0"] {
        assert!(matches!(
            db(
                &mut h,
                DbRequest::VerifyPasskey {
                    key: garbage.into()
                }
            ),
            Err(CallError::Refused(_))
        ));
    }
}

#[test]
fn concurrent_writes_are_grouped_and_each_answered_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), 2000, false);
    let mut h = Harness::new(config(dir.path(), ""));
    h.start::<Db>().unwrap();
    // Sent all at once, so the writer finds many waiting and commits them together; one bad
    // request among them is refused alone.
    let mut ids = Vec::new();
    for i in 0..2000 {
        ids.push(h.send(
            ModuleKind::Db,
            Request::Db(DbRequest::ChangeTaskState {
                task_id: format!("t{i}"),
                event: TaskEvent::Queue,
            }),
        ));
    }
    let bad = h.send(
        ModuleKind::Db,
        Request::Db(DbRequest::ChangeTaskState {
            task_id: "t0".into(),
            event: TaskEvent::Finish,
        }),
    );
    let mut ok = 0;
    for _ in 0..=ids.len() {
        let (id, result) = h.recv_reply(WAIT).expect("every write is answered");
        if id == bad {
            assert!(matches!(result, Err(CallError::Refused(_))));
        } else {
            assert!(
                matches!(result, Ok(Reply::Db(DbReply::Changed(_)))),
                "{result:?}"
            );
            ok += 1;
        }
    }
    assert_eq!(ok, 2000);
    // Answered means committed: a fresh connection sees every change.
    let conn = store::open(&dir.path().join("iceprod.db")).unwrap();
    let queued: i64 = conn
        .query_row(
            "SELECT count(*) FROM task WHERE status = 'queued'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(queued, 2000);
}

#[test]
fn an_unusable_database_file_stops_the_module_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("iceprod.db"), vec![7u8; 4096]).unwrap();
    let mut h = Harness::new(config(dir.path(), ""));
    match h.start::<Db>() {
        Err(reason) => assert!(reason.to_string().contains("iceprod.db"), "{reason}"),
        Ok(()) => panic!("started on a corrupt file"),
    }
}
