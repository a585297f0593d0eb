//! The db module on its own thread, through its messages. Every shared test body runs twice:
//! on a real SQLite file, and on a fresh database of a real MariaDB/MySQL server when
//! `ICEPROD_TEST_MYSQL_URL` names one (`scripts/mariadb.sh start DIR` starts one and prints
//! the url); without it the MariaDB variants say so on stderr and pass. The database-specific
//! cases follow the shared ones.
//!
//! Seeding and checking go through the backend-neutral `Tx` (`iceprod_db::transaction`), so
//! both variants run the same SQL.

use std::path::Path;
use std::time::{Duration, Instant};

mod support;

use iceprod_db::mysql::prelude::Queryable;
use iceprod_db::{args, mysql, ops, Db};
use iceprod_runtime::harness::Harness;
use iceprod_runtime::states::{TaskEvent, TaskStatus};
use iceprod_runtime::{
    CallError, Config, DbReply, DbRequest, ModuleKind, PasskeyScope, Reply, Request, TaskCall,
};
use support::{call_db, random_hex, toml_string, with_database, MysqlDatabase, TestDb, WAIT};

on_both_backends!(
    a_task_runs_to_complete_and_then_refuses_every_change,
    task_errors_reset_then_fail_at_max_resets_from_the_config,
    a_debug_dataset_suspends_a_failing_task,
    unknown_tasks_and_hostile_ids_are_refused_and_change_nothing,
    counts_follow_the_changes,
    passkeys_verify_until_revoked_or_expired_with_no_stale_answer,
    a_task_reports_through_its_passkey_and_a_repeated_log_replaces_the_old,
    concurrent_writes_are_grouped_and_each_answered_after_commit,
);

/// A dataset with one job of `tasks` tasks, written straight to the database (submission
/// has its own tests).
fn seed(db: &TestDb, tasks: usize, debug: bool) {
    let now = ops::now();
    db.tx(|tx| {
        tx.exec(
            "INSERT INTO dataset (dataset_id, dataset_num, status, status_changed, \
             jobs_submitted, tasks_submitted, debug, start_date) \
             VALUES ('d1', 1, 'processing', ?, 1, ?, ?, ?)",
            args![now.as_str(), tasks, debug, now.as_str()],
        )?;
        tx.exec(
            "INSERT INTO job (job_id, dataset_id, job_index, status, status_changed) \
             VALUES ('j1', 'd1', 0, 'processing', ?)",
            args![now.as_str()],
        )?;
        for i in 0..tasks {
            tx.exec(
                "INSERT INTO task (task_id, job_id, dataset_id, task_rel_id, task_index, \
                 status, status_changed) VALUES (?, 'j1', 'd1', 'r1', ?, 'idle', ?)",
                args![format!("t{i}"), i, now.as_str()],
            )?;
        }
        Ok(())
    });
}

fn change(h: &mut Harness, task: &str, event: TaskEvent) -> Result<DbReply, CallError> {
    call_db(
        h,
        DbRequest::ChangeTaskState {
            task_id: task.into(),
            event,
        },
    )
}

fn change_request(task: &str, event: TaskEvent) -> Request {
    Request::Db(DbRequest::ChangeTaskState {
        task_id: task.into(),
        event,
    })
}

fn status_of(db: &TestDb, task: &str) -> (String, Option<String>, u32) {
    db.tx(|tx| {
        let row = tx
            .query_opt(
                "SELECT status, prev_status, failures FROM task WHERE task_id = ?",
                args![task],
            )?
            .expect("the task exists");
        Ok((row.text(0)?, row.opt_text(1)?, row.int(2)? as u32))
    })
}

fn count(db: &TestDb, sql: &str) -> i64 {
    db.tx(|tx| tx.query_opt(sql, args![])?.expect("a count").int(0))
}

fn started(db: &TestDb, extra: &str) -> Harness {
    let mut h = Harness::new(db.config(extra));
    h.start::<Db>().expect("the db module starts");
    h
}

fn a_task_runs_to_complete_and_then_refuses_every_change(db: &TestDb) {
    seed(db, 1, false);
    let mut h = started(db, "");
    for event in [TaskEvent::Queue, TaskEvent::Start, TaskEvent::Finish] {
        assert!(matches!(
            change(&mut h, "t0", event),
            Ok(DbReply::Changed(_))
        ));
    }
    assert_eq!(
        status_of(db, "t0"),
        ("complete".into(), Some("processing".into()), 0)
    );
    match change(&mut h, "t0", TaskEvent::Error) {
        Err(CallError::Refused(msg)) => assert!(msg.contains("complete"), "{msg}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(status_of(db, "t0").0, "complete");
}

fn task_errors_reset_then_fail_at_max_resets_from_the_config(db: &TestDb) {
    seed(db, 1, false);
    let mut h = started(db, "[queue]\nmax_resets = 2\n");
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

fn a_debug_dataset_suspends_a_failing_task(db: &TestDb) {
    seed(db, 1, true);
    let mut h = started(db, "");
    change(&mut h, "t0", TaskEvent::Queue).unwrap();
    change(&mut h, "t0", TaskEvent::Error).unwrap();
    assert_eq!(status_of(db, "t0").0, "suspended");
}

fn unknown_tasks_and_hostile_ids_are_refused_and_change_nothing(db: &TestDb) {
    seed(db, 1, false);
    let mut h = started(db, "");
    for id in [
        "nosuch",
        "t0' OR '1'='1",
        "t0\0",
        "T0",
        &"x".repeat(1 << 20),
    ] {
        match change(&mut h, id, TaskEvent::Queue) {
            Err(CallError::Refused(msg)) => assert!(msg.starts_with("no task"), "{msg:.80}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(status_of(db, "t0").0, "idle");
}

fn counts_follow_the_changes(db: &TestDb) {
    seed(db, 5, false);
    let mut h = started(db, "");
    change(&mut h, "t1", TaskEvent::Queue).unwrap();
    change(&mut h, "t2", TaskEvent::Queue).unwrap();
    change(&mut h, "t2", TaskEvent::Start).unwrap();
    match db_counts(&mut h, Some("d1")) {
        DbReply::Counts(c) => {
            assert_eq!(c.get("idle"), Some(&3));
            assert_eq!(c.get("queued"), Some(&1));
            assert_eq!(c.get("processing"), Some(&1));
        }
        other => panic!("{other:?}"),
    }
    match db_counts(&mut h, Some("other")) {
        DbReply::Counts(c) => assert!(c.is_empty()),
        other => panic!("{other:?}"),
    }
}

fn db_counts(h: &mut Harness, dataset: Option<&str>) -> DbReply {
    call_db(
        h,
        DbRequest::TaskCounts {
            dataset_id: dataset.map(Into::into),
        },
    )
    .expect("counts")
}

fn issue(h: &mut Harness, subject: &str, ttl: Duration) -> String {
    match call_db(
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
    }
}

fn passkeys_verify_until_revoked_or_expired_with_no_stale_answer(db: &TestDb) {
    let mut h = started(db, "");
    let key = issue(&mut h, "t0", Duration::from_secs(3600));
    let other = issue(&mut h, "t1", Duration::from_secs(3600));
    assert_ne!(key, other);
    assert_eq!(
        call_db(&mut h, DbRequest::VerifyPasskey { key: key.clone() }).unwrap(),
        DbReply::PasskeyOwner {
            scope: PasskeyScope::Task,
            subject: "t0".into()
        }
    );
    // Keys compare byte for byte: the same key in capitals is someone else's (MariaDB's
    // default collations would match it).
    assert!(matches!(
        call_db(
            &mut h,
            DbRequest::VerifyPasskey {
                key: key.to_uppercase()
            }
        ),
        Err(CallError::Refused(_))
    ));
    assert_eq!(
        call_db(
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
        call_db(&mut h, DbRequest::VerifyPasskey { key }),
        Err(CallError::Refused(_))
    ));
    assert!(call_db(&mut h, DbRequest::VerifyPasskey { key: other }).is_ok());
    let expired = issue(&mut h, "t2", Duration::ZERO);
    assert!(matches!(
        call_db(&mut h, DbRequest::VerifyPasskey { key: expired }),
        Err(CallError::Refused(_))
    ));
    for garbage in ["", "' OR 1=1 --", "\0"] {
        assert!(matches!(
            call_db(
                &mut h,
                DbRequest::VerifyPasskey {
                    key: garbage.into()
                }
            ),
            Err(CallError::Refused(_))
        ));
    }
}

fn task_call(h: &mut Harness, passkey: &str, call: TaskCall) -> Result<DbReply, CallError> {
    call_db(
        h,
        DbRequest::Task {
            passkey: passkey.into(),
            task_id: "t0".into(),
            call,
        },
    )
}

fn a_task_reports_through_its_passkey_and_a_repeated_log_replaces_the_old(db: &TestDb) {
    seed(db, 1, false);
    let mut h = started(db, "");
    change(&mut h, "t0", TaskEvent::Queue).unwrap();
    let key = issue(&mut h, "t0", Duration::from_secs(3600));
    task_call(&mut h, &key, TaskCall::SetProcessing).unwrap();
    assert_eq!(
        task_call(&mut h, &key, TaskCall::StillRunning).unwrap(),
        DbReply::StillRunning(true)
    );
    // The same log twice: the second replaces the first even though nothing changes (an
    // UPDATE counts the rows it matched on both backends, so no duplicate insert follows).
    for _ in 0..2 {
        task_call(
            &mut h,
            &key,
            TaskCall::UploadLog {
                name: "stdout".into(),
                data: "eJzLSM3JyQcABiwCFQ==".into(),
            },
        )
        .unwrap();
    }
    let big = "A".repeat(1 << 20);
    task_call(
        &mut h,
        &key,
        TaskCall::UploadLog {
            name: "stderr".into(),
            data: big.clone(),
        },
    )
    .unwrap();
    task_call(
        &mut h,
        &key,
        TaskCall::Finish {
            stats: serde_json::json!({"time_used": 7200}),
        },
    )
    .unwrap();
    let (logs, stderr_len, walltime, stats) = db.tx(|tx| {
        let logs = tx
            .query_opt(
                "SELECT count(*) FROM task_log WHERE task_id = 't0'",
                args![],
            )?
            .expect("a count")
            .int(0)?;
        let stderr = tx
            .query_opt(
                "SELECT data FROM task_log WHERE task_id = 't0' AND name = 'stderr'",
                args![],
            )?
            .expect("the stderr log")
            .text(0)?;
        let walltime = tx
            .query_opt("SELECT walltime FROM task WHERE task_id = 't0'", args![])?
            .expect("the task")
            .real(0)?;
        let stats = tx
            .query_opt(
                "SELECT count(*) FROM task_stat WHERE task_id = 't0' AND error = 0",
                args![],
            )?
            .expect("a count")
            .int(0)?;
        Ok((logs, stderr.len(), walltime, stats))
    });
    assert_eq!((logs, stderr_len, stats), (2, big.len(), 1));
    assert!((walltime - 2.0).abs() < 1e-9, "{walltime}");
    assert_eq!(status_of(db, "t0").0, "complete");
    assert!(matches!(
        task_call(&mut h, "not-a-key", TaskCall::StillRunning),
        Err(CallError::Forbidden(_))
    ));
}

fn concurrent_writes_are_grouped_and_each_answered_after_commit(db: &TestDb) {
    seed(db, 2000, false);
    let mut h = started(db, "");
    // Sent all at once, so the writer finds many waiting and commits them together; one bad
    // request among them is refused alone.
    let mut ids = Vec::new();
    for i in 0..2000 {
        ids.push(h.send(
            ModuleKind::Db,
            change_request(&format!("t{i}"), TaskEvent::Queue),
        ));
    }
    let bad = h.send(ModuleKind::Db, change_request("t0", TaskEvent::Finish));
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
    assert_eq!(
        count(db, "SELECT count(*) FROM task WHERE status = 'queued'"),
        2000
    );
}

// ---- SQLite only ----

#[test]
fn an_unusable_database_file_stops_the_module_with_its_name() {
    let db = TestDb::sqlite();
    std::fs::write(db.path().join("iceprod.db"), vec![7u8; 4096]).unwrap();
    let mut h = Harness::new(db.config(""));
    match h.start::<Db>() {
        Err(reason) => assert!(reason.to_string().contains("iceprod.db"), "{reason}"),
        Ok(()) => panic!("started on a corrupt file"),
    }
}

// ---- MySQL/MariaDB only ----

#[test]
fn an_unreachable_server_stops_the_module_with_its_name_but_not_the_password() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let db = TestDb::sqlite();
    let url = format!("mysql://iceprod:pw-s3cret@127.0.0.1:{port}/iceprod");
    let config = Config::parse(
        &format!("[modules]\ndb = true\n[db]\nbackend = \"mysql\"\nurl = \"{url}\"\n"),
        &db.path().join("iceprod.toml"),
        &iceprod_runtime::ModuleKind::ALL,
    )
    .expect("test config");
    let mut h = Harness::new(config);
    match h.start::<Db>() {
        Err(reason) => {
            let reason = reason.to_string();
            assert!(
                reason.contains(&format!("127.0.0.1:{port}/iceprod")),
                "{reason}"
            );
            assert!(!reason.contains("s3cret"), "{reason}");
        }
        Ok(()) => panic!("started without a server"),
    }
}

#[test]
fn a_refused_login_stops_the_module_with_the_server_name_but_not_the_password() {
    let Some(db) = TestDb::mariadb("a_refused_login_stops_the_module") else {
        return;
    };
    let m = db.mysql.as_ref().expect("a MariaDB test");
    // The same server and user with a wrong password.
    let (scheme_user, rest) = m.url.split_once('@').expect("user@host in the url");
    let (scheme_user, _) = scheme_user
        .rsplit_once(':')
        .expect("user:password in the url");
    let wrong = format!("{scheme_user}:wrong-s3cret@{rest}");
    let config = Config::parse(
        &format!(
            "[modules]\ndb = true\n[db]\nbackend = \"mysql\"\nurl = {}\n",
            toml_string(&wrong)
        ),
        &db.path().join("iceprod.toml"),
        &iceprod_runtime::ModuleKind::ALL,
    )
    .expect("test config");
    let mut h = Harness::new(config);
    match h.start::<Db>() {
        Err(reason) => {
            let reason = reason.to_string();
            assert!(
                reason.contains(&m.name) && reason.contains("denied"),
                "{reason}"
            );
            assert!(!reason.contains("s3cret"), "{reason}");
        }
        Ok(()) => panic!("started with a wrong password"),
    }
}

fn schema_version_rows(db: &TestDb) -> Vec<(u32, i64)> {
    db.mysql_conn()
        .query("SELECT version, complete FROM schema_version ORDER BY version")
        .expect("schema_version is readable")
}

#[test]
fn a_fresh_mariadb_database_gets_the_whole_schema_and_a_second_start_applies_nothing() {
    let Some(db) = TestDb::mariadb("a_fresh_mariadb_database_gets_the_whole_schema") else {
        return;
    };
    let m = db.mysql.as_ref().expect("a MariaDB test");
    let server = iceprod_db::mysql_store::MysqlServer::from_url(&m.url).unwrap();
    assert_eq!(
        server.migrate().unwrap(),
        (1..=iceprod_db::schema::newest_version()).collect::<Vec<_>>()
    );
    let newest = iceprod_db::schema::newest_version();
    assert_eq!(schema_version_rows(&db).last(), Some(&(newest, 1)));
    let tables: Vec<(String, String, String)> = db
        .mysql_conn()
        .query(
            "SELECT table_name, engine, table_collation FROM information_schema.tables \
             WHERE table_schema = DATABASE()",
        )
        .unwrap();
    assert!(tables.len() > 20, "{tables:?}");
    for (name, engine, collation) in &tables {
        assert_eq!(
            (engine.as_str(), collation.as_str()),
            ("InnoDB", "utf8mb4_bin"),
            "{name}"
        );
    }
    let settings = count(&db, "SELECT count(*) FROM setting");
    // A second start, through the module, applies nothing and seeds nothing twice.
    assert_eq!(server.migrate().unwrap(), Vec::<u32>::new());
    let mut h = started(&db, "");
    assert!(matches!(db_counts(&mut h, None), DbReply::Counts(_)));
    drop(h);
    assert_eq!(count(&db, "SELECT count(*) FROM setting"), settings);
    assert_eq!(schema_version_rows(&db).len(), newest as usize);
}

#[test]
fn the_mariadb_schema_has_the_sqlite_columns_and_indexes() {
    let Some(db) = TestDb::mariadb("the_mariadb_schema_has_the_sqlite_columns") else {
        return;
    };
    let sqlite = TestDb::sqlite();
    let sqlite_columns = sqlite.tx(|tx| {
        let mut out = Vec::new();
        for table in tx.query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            args![],
        )? {
            let table = table.text(0)?;
            for column in tx.query(&format!("PRAGMA table_info(`{table}`)"), args![])? {
                out.push(format!("{table}.{}", column.text(1)?));
            }
        }
        out.sort();
        Ok(out)
    });
    let sqlite_indexes = sqlite.tx(|tx| {
        let mut out: Vec<String> = tx
            .query(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
                args![],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect::<Result<_, _>>()?;
        out.sort();
        Ok(out)
    });
    let mysql_columns = db.tx(|tx| {
        let mut out: Vec<String> = tx
            .query(
                "SELECT CONCAT(table_name, '.', column_name) FROM information_schema.columns \
                 WHERE table_schema = DATABASE() AND table_name <> 'schema_version'",
                args![],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect::<Result<_, _>>()?;
        out.sort();
        Ok(out)
    });
    let mysql_indexes = db.tx(|tx| {
        let mut out: Vec<String> = tx
            .query(
                "SELECT DISTINCT index_name FROM information_schema.statistics \
                 WHERE table_schema = DATABASE() AND index_name <> 'PRIMARY' \
                 AND index_name NOT IN (SELECT column_name FROM information_schema.columns \
                 WHERE table_schema = DATABASE())",
                args![],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect::<Result<_, _>>()?;
        out.sort();
        Ok(out)
    });
    assert_eq!(mysql_columns, sqlite_columns);
    // Named indexes only: the UNIQUE column constraints are named after their column on
    // MySQL and `sqlite_autoindex_…` on SQLite.
    assert_eq!(mysql_indexes, sqlite_indexes);
}

#[test]
fn a_newer_mariadb_schema_is_refused_with_the_server_name() {
    let Some(db) = TestDb::mariadb("a_newer_mariadb_schema_is_refused") else {
        return;
    };
    seed(&db, 1, false);
    db.mysql_conn()
        .query_drop("INSERT INTO schema_version (version, applied, complete) VALUES (999, 'x', 1)")
        .unwrap();
    let mut h = Harness::new(db.config(""));
    let name = &db.mysql.as_ref().expect("a MariaDB test").name;
    match h.start::<Db>() {
        Err(reason) => {
            let reason = reason.to_string();
            assert!(
                reason.contains("newer") && reason.contains(name.as_str()),
                "{reason}"
            );
        }
        Ok(()) => panic!("started on a newer schema"),
    }
}

#[test]
fn an_interrupted_or_foreign_mariadb_schema_is_refused() {
    let Some(db) = TestDb::mariadb("an_interrupted_or_foreign_mariadb_schema_is_refused") else {
        return;
    };
    seed(&db, 1, false);
    db.mysql_conn()
        .query_drop("UPDATE schema_version SET complete = 0")
        .unwrap();
    let mut h = Harness::new(db.config(""));
    match h.start::<Db>() {
        Err(reason) => assert!(reason.to_string().contains("interrupted"), "{reason}"),
        Ok(()) => panic!("started on a half-migrated schema"),
    }
    // Someone else's tables and no schema_version: refused before any DDL.
    let other = TestDb::mariadb("an_interrupted_or_foreign_mariadb_schema_is_refused")
        .expect("the variable was set a moment ago");
    other
        .mysql_conn()
        .query_drop("CREATE TABLE wiki_page (id INT PRIMARY KEY)")
        .unwrap();
    let mut h = Harness::new(other.config(""));
    match h.start::<Db>() {
        Err(reason) => assert!(reason.to_string().contains("wiki_page"), "{reason}"),
        Ok(()) => panic!("started on someone else's database"),
    }
    let tables: Vec<String> = other
        .mysql_conn()
        .query("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY 1")
        .unwrap();
    assert_eq!(tables, ["wiki_page"]);
}

/// Waits (bounded) until a transaction on this test's database (other tests share the server)
/// waits for a row lock, and returns its connection id and how many rows it has changed.
///
/// `innodb_trx` is a cache that InnoDB refreshes only when it was last read more than 0.1 s
/// ago, so it is read at most every 0.2 s: polled faster it would never change.
fn lock_waiter(observer: &mut mysql::Conn) -> (u64, u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let waiting: Option<(u64, u64)> = observer
            .query_first(
                "SELECT trx.trx_mysql_thread_id, trx.trx_rows_modified \
                 FROM information_schema.innodb_trx trx \
                 JOIN information_schema.processlist p ON p.id = trx.trx_mysql_thread_id \
                 WHERE trx.trx_state = 'LOCK WAIT' AND p.db = DATABASE()",
            )
            .expect("innodb_trx is readable (PROCESS privilege)");
        if let Some(found) = waiting {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no write ever waited for the lock"
        );
    }
}

/// Holds row `task_id` locked in a transaction of its own until `ROLLBACK`.
fn lock_task(db: &TestDb, task_id: &str) -> mysql::Conn {
    let mut conn = db.mysql_conn();
    conn.query_drop("START TRANSACTION").unwrap();
    conn.exec_drop(
        "SELECT task_id FROM task WHERE task_id = ? FOR UPDATE",
        (task_id,),
    )
    .unwrap();
    conn
}

#[test]
fn the_server_dropping_the_writer_mid_group_fails_the_whole_group_and_the_next_write_reconnects() {
    let Some(db) = TestDb::mariadb("the_server_dropping_the_writer_mid_group") else {
        return;
    };
    seed(&db, 5, false);
    let mut h = started(&db, "");
    let mut observer = db.mysql_conn();
    // The writer's first group (t0) waits for our lock on t0; meanwhile t1, t2 and t3 queue
    // up behind it, so they form the next group together.
    let mut hold_t0 = lock_task(&db, "t0");
    let mut hold_t3 = lock_task(&db, "t3");
    let first = h.send(ModuleKind::Db, change_request("t0", TaskEvent::Queue));
    lock_waiter(&mut observer);
    let group: Vec<u64> = ["t1", "t2", "t3"]
        .iter()
        .map(|t| h.send(ModuleKind::Db, change_request(t, TaskEvent::Queue)))
        .collect();
    // A read answered after them proves the db loop has handed them to the writer.
    assert!(matches!(db_counts(&mut h, None), DbReply::Counts(_)));
    hold_t0.query_drop("ROLLBACK").unwrap();
    let (id, result) = h.recv_reply(WAIT).expect("the first group commits");
    assert_eq!(id, first);
    assert!(
        matches!(result, Ok(Reply::Db(DbReply::Changed(_)))),
        "{result:?}"
    );
    // The second group has changed t1 and t2 and waits for t3: drop its connection now.
    let (writer, changed) = lock_waiter(&mut observer);
    // Each change also writes two `task_summary` rows by trigger (its old and new status;
    // the seeded tasks differ in task index, so no two share a row).
    assert_eq!(
        changed, 6,
        "t1 and t2 (and their summary rows) were changed in the group's transaction"
    );
    observer
        .query_drop(format!("KILL CONNECTION {writer}"))
        .unwrap();
    for _ in &group {
        let (id, result) = h
            .recv_reply(WAIT)
            .expect("every write of the group is answered");
        assert!(group.contains(&id));
        assert!(matches!(result, Err(CallError::Failed(_))), "{result:?}");
    }
    hold_t3.query_drop("ROLLBACK").unwrap();
    // Nothing of the group stayed; what committed before it did.
    for (task, status) in [
        ("t0", "queued"),
        ("t1", "idle"),
        ("t2", "idle"),
        ("t3", "idle"),
    ] {
        assert_eq!(status_of(&db, task).0, status, "{task}");
    }
    // The next requests get a new connection and succeed.
    for task in ["t1", "t2", "t3"] {
        assert!(matches!(
            change(&mut h, task, TaskEvent::Queue),
            Ok(DbReply::Changed(_))
        ));
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM task WHERE status = 'queued'"),
        4
    );
}

#[test]
fn connections_the_server_dropped_between_requests_are_replaced_on_the_next_request() {
    let Some(db) = TestDb::mariadb("connections_the_server_dropped_between_requests") else {
        return;
    };
    seed(&db, 2, false);
    let mut h = Harness::new(db.config_with("readers = 3\n", ""));
    h.start::<Db>().expect("the db module starts");
    // Use every pooled connection once, then drop them all from the server's side.
    change(&mut h, "t0", TaskEvent::Queue).unwrap();
    for _ in 0..6 {
        db_counts(&mut h, Some("d1"));
    }
    let mut observer = db.mysql_conn();
    let name = db.mysql.as_ref().expect("a MariaDB test").name.clone();
    let ids: Vec<u64> = observer
        .exec(
            "SELECT id FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
            (name.as_str(),),
        )
        .unwrap();
    assert!(!ids.is_empty());
    for id in ids {
        observer
            .query_drop(format!("KILL CONNECTION {id}"))
            .unwrap();
    }
    // Reads and writes still work: the pool notices the dead connections and reconnects.
    for _ in 0..6 {
        match db_counts(&mut h, Some("d1")) {
            DbReply::Counts(c) => assert_eq!(c.get("queued"), Some(&1)),
            other => panic!("{other:?}"),
        }
    }
    change(&mut h, "t1", TaskEvent::Queue).unwrap();
    assert_eq!(status_of(&db, "t1").0, "queued");
}

/// Runs `scripts/mariadb.sh ACTION DIR` and returns what it printed.
fn mariadb_script(action: &str, dir: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mariadb.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args([action, dir])
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "mariadb.sh {action} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Opt-in, because it stops a whole server: `ICEPROD_TEST_MARIADB_RESTART_DIR` names a folder
/// for `scripts/mariadb.sh` that no other test uses at the same time.
#[test]
fn a_restarted_server_fails_requests_while_down_and_serves_them_when_back() {
    const VAR: &str = "ICEPROD_TEST_MARIADB_RESTART_DIR";
    let Ok(dir) = std::env::var(VAR) else {
        eprintln!("{VAR} is not set: the server restart test did not run");
        return;
    };
    let url = mariadb_script("start", &dir);
    let name = format!("iceprod_t_{}", random_hex(6));
    mysql::Conn::new(url.as_str())
        .and_then(|mut c| c.query_drop(format!("CREATE DATABASE `{name}` COLLATE utf8mb4_bin")))
        .expect("the restart server takes a new database");
    let db = TestDb {
        dir: tempfile::tempdir().expect("a temporary folder"),
        mysql: Some(MysqlDatabase {
            url: with_database(&url, &name),
            name,
            server_url: url.clone(),
        }),
    };
    seed(&db, 3, false);
    let mut h = started(&db, "");
    change(&mut h, "t0", TaskEvent::Queue).unwrap();
    mariadb_script("stop", &dir);
    assert!(matches!(
        change(&mut h, "t1", TaskEvent::Queue),
        Err(CallError::Failed(_))
    ));
    assert!(matches!(
        call_db(&mut h, DbRequest::TaskCounts { dataset_id: None }),
        Err(CallError::Failed(_))
    ));
    // The same url again (the script reuses its port and password): the module, still
    // running, reconnects on the next requests.
    assert_eq!(mariadb_script("start", &dir), url);
    change(&mut h, "t1", TaskEvent::Queue).unwrap();
    match db_counts(&mut h, Some("d1")) {
        DbReply::Counts(c) => assert_eq!(c.get("queued"), Some(&2)),
        other => panic!("{other:?}"),
    }
}
