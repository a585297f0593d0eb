//! One server per database (issue 10): the db module takes the database's exclusive lock at
//! start, holds it while it runs, releases it when it stops and takes it again when started
//! again; a lock another process holds refuses the start with that process's pid and host.
//! "Another process" is played by the test itself: on SQLite an `flock` on the lock file
//! through a descriptor of its own, on MariaDB a named lock taken on a connection of its own.
//! Each body runs on SQLite and on MariaDB (see `support`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::Duration;

mod support;

use iceprod_db::lock::{lock_file, lock_name};
use iceprod_db::mysql::prelude::Queryable;
use iceprod_db::{mysql, Db};
use iceprod_runtime::harness::Harness;
use iceprod_runtime::ModuleKind;
use support::TestDb;

on_both_backends!(
    a_database_another_server_holds_refuses_the_db_module_naming_that_server,
    the_db_module_holds_the_lock_while_it_runs_and_takes_it_again_after_a_restart,
);

/// The lock as another process would take it; released when dropped.
enum OtherHolder {
    File(File),
    Named(mysql::Conn),
}

impl OtherHolder {
    /// Tries to take the database's lock; `None` if someone holds it. With `record`, writes
    /// it as the holder's record, as a server does.
    fn try_take(db: &TestDb, record: Option<&str>) -> Option<OtherHolder> {
        match &db.mysql {
            None => {
                let path = lock_file(&db.path().join("iceprod.db"));
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .expect("the lock file opens");
                // SAFETY: flock(2) on a descriptor `file` owns.
                let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
                if rc != 0 {
                    return None;
                }
                if let Some(record) = record {
                    std::fs::write(&path, format!("{record}\n")).expect("the lock file writes");
                }
                Some(OtherHolder::File(file))
            }
            Some(m) => {
                let mut conn = db.mysql_conn();
                let got: Option<i64> = conn
                    .exec_first("SELECT GET_LOCK(?, 0)", (lock_name(&m.name),))
                    .expect("GET_LOCK answers");
                if got != Some(1) {
                    return None;
                }
                if let Some(record) = record {
                    let id: u64 = conn.query_first("SELECT CONNECTION_ID()").unwrap().unwrap();
                    conn.exec_drop(
                        "REPLACE INTO setting (name, value) VALUES ('lock.holder', ?)",
                        (format!("{record} connection={id}"),),
                    )
                    .expect("the holder row writes");
                }
                Some(OtherHolder::Named(conn))
            }
        }
    }

    fn release(self) {
        match self {
            OtherHolder::File(file) => drop(file),
            OtherHolder::Named(mut conn) => {
                conn.query_drop("DELETE FROM setting WHERE name = 'lock.holder'")
                    .expect("the holder row goes");
                drop(conn);
            }
        }
    }
}

fn a_database_another_server_holds_refuses_the_db_module_naming_that_server(db: &TestDb) {
    // Migrated first, so the other holder has its `setting` table to write to.
    db.tx(|_| Ok(()));
    let other = OtherHolder::try_take(db, Some("pid=1234 host=h1")).expect("the lock is free");
    let mut h = Harness::new(db.config(""));
    let reason = match h.start::<Db>() {
        Err(reason) => reason.to_string(),
        Ok(()) => panic!("the db module started on a database another server holds"),
    };
    let database = match &db.mysql {
        None => "iceprod.db".to_string(),
        Some(m) => format!("/{}", m.name),
    };
    assert!(
        reason.contains(&database)
            && reason.contains("in use by another iceprod server (pid 1234 on host h1)"),
        "{reason}"
    );
    // Once the other server is gone, the module starts.
    other.release();
    h.start::<Db>()
        .expect("the db module starts on the freed database");
}

fn the_db_module_holds_the_lock_while_it_runs_and_takes_it_again_after_a_restart(db: &TestDb) {
    let mut h = db.start("");
    assert!(
        OtherHolder::try_take(db, None).is_none(),
        "another process took the lock of a running db module"
    );
    h.stop(ModuleKind::Db, Duration::from_secs(5));
    let other = OtherHolder::try_take(db, None).expect("a stopped db module released its lock");
    other.release();
    h.start::<Db>()
        .expect("the db module starts again in the same process");
    assert!(
        OtherHolder::try_take(db, None).is_none(),
        "the restarted db module does not hold the lock"
    );
}
