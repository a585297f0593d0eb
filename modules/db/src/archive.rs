//! The archive (SPEC §10): datasets that ended (`complete` or `errors`, `end_date` set) more
//! than `[db] archive_after_days` ago move out of the live tables with every row of theirs
//! (dataset, config, task_rels, jobs, tasks, task stats, task logs, and the history rows whose
//! subject is the dataset), so the live tables stay small and their queries fast. Reads by
//! dataset look in the live tables first, then in the archive (`public.rs`); the listings
//! include archived datasets. This file owns the move; it never touches the hot queries.
//!
//! Where the archive is: on SQLite a second file (`[db] archive_path`), created and migrated
//! like the primary and attached to every connection as `archive`
//! (`store::attach_archive`); on MySQL/MariaDB the `archive_*` tables of the same database
//! (a second database would need privileges a site's DBA often does not grant, and would
//! outlive a dropped database). Both have the tables of migration 2; [`table`] names them.
//!
//! **Crash safety.** In WAL mode SQLite commits a transaction over two files one file at a
//! time: a crash between the two commits keeps one file's part only. So a move is two steps,
//! each in its own transaction (its own batch), and no transaction ever writes a dataset's
//! archive copy *and* deletes its live rows:
//! 1. *copy*: the dataset's rows are written into the archive, delete-then-insert, so a repeat
//!    duplicates nothing, with its task counts by state ([`TASK_COUNT`]);
//! 2. *delete*: a later batch checks that the dataset still qualifies and that the archive
//!    copy equals the live rows, row by row and column by column; only then are the live rows
//!    deleted. A dataset that changed in between (a person reset it, a log arrived) is copied
//!    again instead; one that no longer qualifies loses its archive copy.
//!
//! No other state is kept: a dataset found in both stores is between the steps, and the next
//! batch goes on with it. Whichever file's commit a crash keeps, every dataset stays whole in
//! at least one store, and reads prefer the live tables, so none is shown twice or lost. A
//! reader sees the live tables first (its snapshot of the archive is taken later), so a
//! dataset deleted from the live tables is already in its archive snapshot. On MySQL/MariaDB
//! every transaction is atomic anyway; the same two steps run there.
//!
//! A dataset that another dataset still in the live tables depends on (`DATASET.TASK`) is
//! not moved: queueing looks for the tasks it depends on in the live tables.
//!
//! A batch does at most `max` datasets or about [`BATCH_ROWS`] rows, so the writer is never
//! held for long; the db module runs batch after batch until one finds nothing to do
//! (`lib.rs`).

use std::sync::OnceLock;

use iceprod_runtime::DbReply;

use crate::args;
use crate::error::DbError;
use crate::sql::{Backend, Tx};

/// A table whose rows of a dataset move with it.
pub struct MovedTable {
    pub name: &'static str,
    /// The primary key.
    pub key: &'static str,
    /// The column that names the dataset.
    pub dataset_column: &'static str,
    /// Every column, copied and compared.
    pub columns: &'static [&'static str],
}

/// The tables a dataset's rows live in, each with every column of migration 1 (a test
/// compares them with the schema, so a new column cannot be forgotten here).
pub const MOVED: &[MovedTable] = &[
    MovedTable {
        name: "dataset",
        key: "dataset_id",
        dataset_column: "dataset_id",
        columns: &[
            "dataset_id",
            "dataset_num",
            "name",
            "description",
            "gridspec",
            "status",
            "status_changed",
            "username",
            "groups_id",
            "priority",
            "jobs_submitted",
            "tasks_submitted",
            "jobs_buffered",
            "debug",
            "stat_keys",
            "start_date",
            "end_date",
            "status_reason",
        ],
    },
    MovedTable {
        name: "config",
        key: "dataset_id",
        dataset_column: "dataset_id",
        columns: &["dataset_id", "config_data", "difplus_data"],
    },
    MovedTable {
        name: "task_rel",
        key: "task_rel_id",
        dataset_column: "dataset_id",
        columns: &[
            "task_rel_id",
            "dataset_id",
            "task_index",
            "name",
            "depends",
            "requirements",
        ],
    },
    MovedTable {
        name: "job",
        key: "job_id",
        dataset_column: "dataset_id",
        columns: &[
            "job_id",
            "dataset_id",
            "job_index",
            "status",
            "status_changed",
        ],
    },
    MovedTable {
        name: "task",
        key: "task_id",
        dataset_column: "dataset_id",
        columns: &[
            "task_id",
            "job_id",
            "dataset_id",
            "task_rel_id",
            "task_index",
            "status",
            "prev_status",
            "status_changed",
            "failures",
            "evictions",
            "walltime",
            "walltime_err",
            "walltime_err_n",
            "requirements",
            "depends",
            "grid_queue_id",
            "submit_dir",
            "gridspec",
        ],
    },
    MovedTable {
        name: "task_stat",
        key: "task_stat_id",
        dataset_column: "dataset_id",
        columns: &[
            "task_stat_id",
            "task_id",
            "dataset_id",
            "create_date",
            "stat",
            "error",
        ],
    },
    MovedTable {
        name: "task_log",
        key: "task_log_id",
        dataset_column: "dataset_id",
        columns: &["task_log_id", "task_id", "dataset_id", "name", "data"],
    },
    MovedTable {
        name: "history",
        key: "history_id",
        dataset_column: "subject",
        columns: &[
            "history_id",
            "username",
            "action",
            "subject",
            "details",
            "timestamp",
        ],
    },
];

/// The archive-only table of task counts by state per archived dataset.
pub const TASK_COUNT: &str = "task_count";

/// About how many rows one batch copies or deletes: it stops taking datasets once past it
/// (the first dataset is always done, however large).
pub const BATCH_ROWS: u64 = 100_000;

/// Where a dataset's rows are read from: the primary tables or the archive's (SPEC §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    Live,
    Archive,
}

/// The table `name` of `place`, as the page and public queries name it.
pub(crate) fn table_in(tx: &dyn Tx, place: Place, name: &str) -> String {
    match place {
        Place::Live => name.to_string(),
        Place::Archive => table(tx.backend(), name),
    }
}

/// The archive's table for the live table `name` (or [`TASK_COUNT`]), as queries name it:
/// `archive.archive_task` on SQLite (the attached file), `archive_task` on MySQL/MariaDB.
pub fn table(backend: Backend, name: &str) -> String {
    match backend {
        Backend::Sqlite => format!("archive.archive_{name}"),
        Backend::Mysql => format!("archive_{name}"),
    }
}

/// The `end_date` before which a dataset qualifies: `days` before `now` (RFC 3339; the clock
/// when `None`), in the stored format, so text order is time order.
pub fn cutoff(now: Option<&str>, days: u32) -> Result<String, DbError> {
    let now = match now {
        None => chrono::Utc::now(),
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|e| DbError::Refused(format!("now `{text}` is not an RFC 3339 time: {e}")))?
            .with_timezone(&chrono::Utc),
    };
    let cutoff = now
        .checked_sub_signed(chrono::Duration::days(i64::from(days)))
        .ok_or_else(|| DbError::Refused(format!("{days} days before {now} is out of range")))?;
    Ok(cutoff.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
}

/// What one batch did, by dataset (the model's type, so the reply is typed end to end).
pub use iceprod_runtime::protocol::ArchiveBatchOutcome as BatchOutcome;

/// Test hook for the crash tests: the environment variable names a point of the archive run
/// (`copying` and `deleting` inside a batch's transaction, before its commit; `copied` and
/// `deleted` after a batch that did so committed, see `lib.rs`). Reaching it, the process
/// says so on standard error and stops there for good, for the test to kill it.
pub const FAULT_VAR: &str = "ICEPROD_TEST_ARCHIVE_FAULT";
/// What the process prints at a fault point, followed by the point's name.
pub const FAULT_MARK: &str = "iceprod archive fault point: ";

/// Stops here for good if [`FAULT_VAR`] names `point` (read once per process).
pub fn fault_point(point: &str) {
    static WANTED: OnceLock<Option<String>> = OnceLock::new();
    if WANTED
        .get_or_init(|| std::env::var(FAULT_VAR).ok())
        .as_deref()
        == Some(point)
    {
        eprintln!("{FAULT_MARK}{point}");
        loop {
            std::thread::park();
        }
    }
}

/// Bounds a batch: `datasets` more datasets, about `rows` more rows.
struct Budget {
    datasets: u32,
    rows: u64,
}

impl Budget {
    fn spent(&self) -> bool {
        self.datasets == 0 || self.rows == 0
    }

    fn take(&mut self, rows: u64) {
        self.datasets = self.datasets.saturating_sub(1);
        self.rows = self.rows.saturating_sub(rows);
    }
}

/// One batch, one transaction: step 2 for the datasets found in both stores, then step 1 for
/// datasets that qualify and are not in the archive yet, within the budget. Answers
/// `DbReply::ArchiveBatch` with the [`BatchOutcome`].
pub fn archive_batch(tx: &mut dyn Tx, cutoff: &str, max: u32) -> Result<DbReply, DbError> {
    let mut outcome = BatchOutcome::default();
    let mut budget = Budget {
        datasets: max.max(1),
        rows: BATCH_ROWS,
    };
    // Step 2 of the moves copied by earlier transactions (never by this one: the list is read
    // before any copy below).
    for id in in_both_stores(tx)? {
        if budget.spent() {
            break;
        }
        if !qualifies(tx, &id, cutoff)? {
            budget.take(drop_copy(tx, &id)?);
            outcome.dropped += 1;
        } else if copy_is_identical(tx, &id)? {
            budget.take(delete_live(tx, &id)?);
            outcome.moved += 1;
            fault_point("deleting");
        } else {
            budget.take(copy(tx, &id)?);
            outcome.recopied += 1;
        }
    }
    // Step 1 of new moves, the longest ended first.
    if !budget.spent() {
        let sql = format!(
            "SELECT l.dataset_id FROM dataset l WHERE l.status IN ('complete', 'errors') \
             AND l.end_date IS NOT NULL AND l.end_date < ? AND NOT EXISTS \
             (SELECT 1 FROM {} a WHERE a.dataset_id = l.dataset_id) \
             ORDER BY l.end_date, l.dataset_id",
            table(tx.backend(), "dataset")
        );
        for row in tx.query(&sql, args![cutoff])? {
            if budget.spent() {
                break;
            }
            let id = row.text(0)?;
            if depended_on(tx, &id)? {
                continue;
            }
            budget.take(copy(tx, &id)?);
            outcome.copied += 1;
            fault_point("copying");
        }
    }
    outcome.pending = in_both_stores(tx)?.len() as u64;
    Ok(DbReply::ArchiveBatch(outcome))
}

/// Datasets with rows in the live tables and a copy in the archive: between the two steps.
fn in_both_stores(tx: &mut dyn Tx) -> Result<Vec<String>, DbError> {
    let sql = format!(
        "SELECT l.dataset_id FROM dataset l JOIN {} a ON a.dataset_id = l.dataset_id \
         ORDER BY l.dataset_id",
        table(tx.backend(), "dataset")
    );
    tx.query(&sql, args![])?
        .iter()
        .map(|row| row.text(0))
        .collect()
}

/// Whether the live dataset ended before `cutoff` and nothing live depends on it.
fn qualifies(tx: &mut dyn Tx, dataset_id: &str, cutoff: &str) -> Result<bool, DbError> {
    let ended = tx
        .query_opt(
            "SELECT 1 FROM dataset WHERE dataset_id = ? AND status IN ('complete', 'errors') \
             AND end_date IS NOT NULL AND end_date < ?",
            args![dataset_id, cutoff],
        )?
        .is_some();
    Ok(ended && !depended_on(tx, dataset_id)?)
}

/// Whether a task_rel of another live dataset names one of this dataset's task_rels in its
/// `depends` (ids are quoted in the JSON list, so one id cannot match inside another).
fn depended_on(tx: &mut dyn Tx, dataset_id: &str) -> Result<bool, DbError> {
    let rels = tx.query(
        "SELECT task_rel_id FROM task_rel WHERE dataset_id = ?",
        args![dataset_id],
    )?;
    for rel in rels {
        let quoted = format!("\"{}\"", rel.text(0)?);
        let dependent = tx.query_opt(
            "SELECT 1 FROM task_rel WHERE dataset_id <> ? AND INSTR(depends, ?) > 0 LIMIT 1",
            args![dataset_id, quoted],
        )?;
        if dependent.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Step 1: the dataset's live rows replace its archive copy, with its task counts. Returns
/// the rows copied.
fn copy(tx: &mut dyn Tx, dataset_id: &str) -> Result<u64, DbError> {
    drop_copy(tx, dataset_id)?;
    let backend = tx.backend();
    let mut rows = 0;
    for t in MOVED {
        let columns = t.columns.join(", ");
        rows += tx.exec(
            &format!(
                "INSERT INTO {} ({columns}) SELECT {columns} FROM {} WHERE {} = ?",
                table(backend, t.name),
                t.name,
                t.dataset_column
            ),
            args![dataset_id],
        )?;
    }
    tx.exec(
        &format!(
            "INSERT INTO {} (dataset_id, status, n) SELECT dataset_id, status, count(*) \
             FROM task WHERE dataset_id = ? GROUP BY dataset_id, status",
            table(backend, TASK_COUNT)
        ),
        args![dataset_id],
    )?;
    Ok(rows)
}

/// Deletes the dataset's archive copy; returns the rows deleted.
fn drop_copy(tx: &mut dyn Tx, dataset_id: &str) -> Result<u64, DbError> {
    let backend = tx.backend();
    let mut rows = 0;
    for t in MOVED {
        rows += tx.exec(
            &format!(
                "DELETE FROM {} WHERE {} = ?",
                table(backend, t.name),
                t.dataset_column
            ),
            args![dataset_id],
        )?;
    }
    tx.exec(
        &format!(
            "DELETE FROM {} WHERE dataset_id = ?",
            table(backend, TASK_COUNT)
        ),
        args![dataset_id],
    )?;
    Ok(rows)
}

/// Step 2: deletes the dataset's live rows; returns how many.
fn delete_live(tx: &mut dyn Tx, dataset_id: &str) -> Result<u64, DbError> {
    let mut rows = 0;
    for t in MOVED {
        rows += tx.exec(
            &format!("DELETE FROM {} WHERE {} = ?", t.name, t.dataset_column),
            args![dataset_id],
        )?;
    }
    Ok(rows)
}

/// Whether the archive copy holds exactly the dataset's live rows: as many in each table, and
/// each live row has an archive row with its key and the same value in every column.
fn copy_is_identical(tx: &mut dyn Tx, dataset_id: &str) -> Result<bool, DbError> {
    let backend = tx.backend();
    for t in MOVED {
        let archived = table(backend, t.name);
        let count = |tx: &mut dyn Tx, sql: &str| -> Result<i64, DbError> {
            tx.query_opt(sql, args![dataset_id])?
                .map_or(Ok(0), |row| row.int(0))
        };
        let live = count(
            tx,
            &format!(
                "SELECT count(*) FROM {} WHERE {} = ?",
                t.name, t.dataset_column
            ),
        )?;
        let copies = count(
            tx,
            &format!(
                "SELECT count(*) FROM {archived} WHERE {} = ?",
                t.dataset_column
            ),
        )?;
        if live != copies {
            return Ok(false);
        }
        let same = t
            .columns
            .iter()
            .map(|c| same_value(backend, &format!("l.{c}"), &format!("a.{c}")))
            .collect::<Vec<_>>()
            .join(" AND ");
        let matching = count(
            tx,
            &format!(
                "SELECT count(*) FROM {} l JOIN {archived} a ON a.{key} = l.{key} \
                 WHERE l.{} = ? AND {same}",
                t.name,
                t.dataset_column,
                key = t.key
            ),
        )?;
        if matching != live {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `a` and `b` hold the same value, NULLs equal: `IS` on SQLite; `<=>` on MySQL/MariaDB,
/// over the bytes, since `utf8mb4_bin` ignores trailing spaces when it compares.
fn same_value(backend: Backend, a: &str, b: &str) -> String {
    match backend {
        Backend::Sqlite => format!("{a} IS {b}"),
        Backend::Mysql => format!("CAST({a} AS BINARY) <=> CAST({b} AS BINARY)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_is_days_before_now_in_the_stored_format() {
        assert_eq!(
            cutoff(Some("2026-03-31T12:00:00Z"), 30).unwrap(),
            "2026-03-01T12:00:00.000000Z"
        );
        assert_eq!(
            cutoff(Some("2026-03-31T14:00:00+02:00"), 0).unwrap(),
            "2026-03-31T12:00:00.000000Z"
        );
        assert!(cutoff(Some("yesterday"), 30)
            .unwrap_err()
            .to_string()
            .contains("yesterday"));
        assert!(cutoff(None, 30).unwrap() < crate::ops::now());
    }

    #[test]
    fn a_batch_progresses_only_when_a_dataset_moved_on() {
        let o = BatchOutcome {
            moved: 1,
            copied: 2,
            recopied: 3,
            dropped: 4,
            pending: 5,
        };
        assert!(o.progressed());
        let idle = BatchOutcome {
            recopied: 3,
            pending: 1,
            ..BatchOutcome::default()
        };
        assert!(!idle.progressed());
    }

    #[test]
    fn archive_tables_are_named_per_backend() {
        assert_eq!(table(Backend::Sqlite, "task"), "archive.archive_task");
        assert_eq!(table(Backend::Mysql, "task"), "archive_task");
    }
}
