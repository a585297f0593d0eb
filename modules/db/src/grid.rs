//! The queue module's side of the database (SPEC §6, §9): what a grid holds
//! ([`DbRequest::GridTasks`], [`DbRequest::GridPilots`], [`DbRequest::PilotDemand`]), the
//! resets reconciliation and the periodic jobs decide (lost and ended grid jobs, stuck
//! tasks, removed pilots, orphaned pilot tasks), recycling reset and resumed tasks, and the
//! suspension of tasks no grid can run.
//!
//! Every task state change goes through `ops::apply_transition`; nothing here commits. A task
//! that is reset leaves the pilot lookup and loses its grid id in the same step
//! ([`reset_task`]), and the reason is kept as an error `task_stat` row a person can read.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use iceprod_runtime::states::{TaskEvent, TaskStatus};
use iceprod_runtime::{
    DbReply, DbRequest, GridReset, GridTask, PasskeyScope, PilotInfo, Resources, StuckLimits,
};
use serde_json::{json, Value};

use crate::args;
use crate::error::DbError;
use crate::ops::{apply_transition, insert_task_stat, stamp, OpRules};
use crate::queueing::{task_list, Needs, EPSILON};
use crate::sql::Tx;

/// Tasks read per page when every idle or waiting task is checked for its size.
const SIZE_PAGE: usize = 1000;

// The queries that may read many rows, each with the index that serves it (see the test
// `the_large_reads_use_their_indexes`).

/// `task_by_grid`, in index order.
const GRID_TASKS: &str = "SELECT task_id, status, grid_queue_id, submit_dir, status_changed \
    FROM task WHERE gridspec = ? AND status IN ('queued', 'processing') \
    ORDER BY status, status_changed";
/// `task_by_grid`: a range of one state's `status_changed`.
const STUCK: &str =
    "SELECT task_id FROM task WHERE gridspec = ? AND status = ? AND status_changed < ?";
/// `task_by_status_changed`, in index order.
const RECYCLE: &str = "SELECT task_id FROM task WHERE status = ? ORDER BY status_changed LIMIT ?";
/// `task_lookup_fit` for the grid's rows, then each row's task by primary key.
const PILOT_DEMAND: &str = "SELECT l.req_cpu, l.req_gpu, l.req_memory, l.req_disk, \
    l.req_time, count(*) FROM task_lookup l JOIN task t ON t.task_id = l.task_id \
    WHERE l.gridspec = ? AND t.status = 'queued' \
    GROUP BY l.req_cpu, l.req_gpu, l.req_memory, l.req_disk, l.req_time \
    ORDER BY l.req_gpu DESC, l.req_cpu DESC, l.req_memory DESC, l.req_disk DESC, \
    l.req_time DESC";
/// `task_by_status_changed` for the processing tasks, `passkey_by_subject` for each.
const ORPHAN_CANDIDATES: &str = "SELECT t.task_id FROM task t WHERE t.status = 'processing' \
    AND NOT EXISTS (SELECT 1 FROM passkey p WHERE p.scope = ? AND p.subject = t.task_id)";
/// `task_by_status_changed`: one page after a `(status_changed, task_id)` cursor, sought as
/// the range `status_changed >= cursor` (an `OR` of the two cases would be read from the
/// start of the state at every page).
const SIZE_PAGE_SQL: &str = "SELECT task_id, status_changed, requirements FROM task \
    WHERE status = ? AND status_changed >= ? AND (status_changed > ? OR task_id > ?) \
    ORDER BY status_changed, task_id LIMIT ?";

pub fn execute(tx: &mut dyn Tx, rules: OpRules, request: &DbRequest) -> Result<DbReply, DbError> {
    match request {
        DbRequest::GridTasks { gridspec } => grid_tasks(tx, gridspec),
        DbRequest::ResetGridTasks { resets } => reset_grid_tasks(tx, rules, resets),
        DbRequest::ResetStuckTasks { gridspec, limits } => {
            reset_stuck_tasks(tx, rules, gridspec, limits)
        }
        DbRequest::RecycleTasks { max } => recycle_tasks(tx, rules, *max),
        DbRequest::GridPilots { gridspec } => grid_pilots(tx, gridspec),
        DbRequest::SetPilotGridId {
            pilot_id,
            grid_queue_id,
            submit_dir,
        } => crate::queueing::record_submission(tx, "pilot", pilot_id, grid_queue_id, submit_dir),
        DbRequest::RemovePilot { pilot_id, reason } => remove_pilot(tx, rules, pilot_id, reason),
        DbRequest::PilotDemand { gridspec } => pilot_demand(tx, gridspec),
        DbRequest::ResetOrphanedPilotTasks => reset_orphaned_pilot_tasks(tx, rules),
        DbRequest::SuspendOversizeTasks => suspend_oversize_tasks(tx, rules),
        other => Err(DbError::Refused(format!("not a grid request: {other:?}"))),
    }
}

/// What the stat row of a reset says: the reason and who found it.
fn reason_stat(reason: &str, source: &str) -> Value {
    json!({"error_summary": reason, "source": source})
}

/// Moves a task on `event` (a reset of some kind), takes it out of the pilot lookup (a row
/// left there would let a pilot take the task after it is queued elsewhere), forgets its
/// grid id (that grid job is not the task's any more) and records why.
fn reset_task(
    tx: &mut dyn Tx,
    rules: OpRules,
    task_id: &str,
    event: TaskEvent,
    stat: &Value,
) -> Result<(), DbError> {
    apply_transition(tx, rules, task_id, event)?;
    tx.exec(
        "UPDATE task SET grid_queue_id = NULL WHERE task_id = ?",
        args![task_id],
    )?;
    tx.exec("DELETE FROM task_lookup WHERE task_id = ?", args![task_id])?;
    insert_task_stat(tx, rules, task_id, stat, true)
}

/// The RFC 3339 stamp `ago` before now, written as `ops::now` writes times, so that text
/// comparison with `status_changed` is time comparison.
fn stamp_before(ago: std::time::Duration) -> String {
    let ago = chrono::Duration::from_std(ago).unwrap_or(chrono::Duration::MAX);
    stamp(
        Utc::now()
            .checked_sub_signed(ago)
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC),
    )
}

// ---------------------------------------------------------------------------------------
// what a grid holds

/// The queued and processing tasks of `gridspec`, read through `task_by_grid`.
fn grid_tasks(tx: &mut dyn Tx, gridspec: &str) -> Result<DbReply, DbError> {
    let rows = tx.query(GRID_TASKS, args![gridspec])?;
    let mut tasks = Vec::with_capacity(rows.len());
    for row in rows {
        let task_id = row.text(0)?;
        let status = row.text(1)?;
        let status = TaskStatus::from_name(&status)
            .ok_or_else(|| DbError::Schema(format!("task {task_id} has status {status}")))?;
        tasks.push(GridTask {
            task_id,
            status,
            grid_queue_id: row.opt_text(2)?,
            submit_dir: row.opt_text(3)?,
            status_changed: row.text(4)?,
        });
    }
    Ok(DbReply::GridTasks(tasks))
}

/// The pilots of `gridspec`, oldest first.
fn grid_pilots(tx: &mut dyn Tx, gridspec: &str) -> Result<DbReply, DbError> {
    let rows = tx.query(
        "SELECT pilot_id, grid_queue_id, submit_time, requirements, tasks FROM pilot \
         WHERE gridspec = ? ORDER BY submit_time, pilot_id",
        args![gridspec],
    )?;
    let mut pilots = Vec::with_capacity(rows.len());
    for row in rows {
        let pilot_id = row.text(0)?;
        let text = row.text(3)?;
        let requirements = serde_json::from_str(&text).unwrap_or_else(|e| {
            log::warn!("pilot {pilot_id}: requirements are not resources ({e}): {text}");
            Resources::default()
        });
        pilots.push(PilotInfo {
            grid_queue_id: row.opt_text(1)?,
            submit_time: row.text(2)?,
            requirements,
            tasks: task_list(&row.text(4)?),
            pilot_id,
        });
    }
    Ok(DbReply::Pilots(pilots))
}

/// The lookup rows of `gridspec` whose task is still queued, counted by shape, largest
/// first: gpu, then cpu, memory, disk, time.
fn pilot_demand(tx: &mut dyn Tx, gridspec: &str) -> Result<DbReply, DbError> {
    let rows = tx.query(PILOT_DEMAND, args![gridspec])?;
    let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
    let mut demand = Vec::with_capacity(rows.len());
    for row in rows {
        demand.push((
            Resources {
                cpu: count(row.int(0)?),
                gpu: count(row.int(1)?),
                memory: row.real(2)?,
                disk: row.real(3)?,
                time: row.real(4)?,
            },
            u64::try_from(row.int(5)?).unwrap_or(0),
        ));
    }
    Ok(DbReply::Demand(demand))
}

// ---------------------------------------------------------------------------------------
// resets

/// Resets each task the grid lost or ended, only while it is still queued or processing
/// under the grid id the grid was read with; the others are skipped.
fn reset_grid_tasks(
    tx: &mut dyn Tx,
    rules: OpRules,
    resets: &[GridReset],
) -> Result<DbReply, DbError> {
    if let Some(bad) = resets
        .iter()
        .find(|r| !matches!(r.event, TaskEvent::Lost | TaskEvent::Error))
    {
        return Err(DbError::Refused(format!(
            "task {}: a grid reset is Lost or Error, not {:?}",
            bad.task_id, bad.event
        )));
    }
    let mut reset = 0;
    for r in resets {
        let row = tx.query_opt(
            "SELECT status, grid_queue_id FROM task WHERE task_id = ?",
            args![r.task_id.as_str()],
        )?;
        let Some(row) = row else {
            log::debug!("grid reset of unknown task {} skipped", r.task_id);
            continue;
        };
        let status = row.text(0)?;
        let still_there = matches!(status.as_str(), "queued" | "processing")
            && row.opt_text(1)?.as_deref() == Some(r.grid_queue_id.as_str());
        if !still_there {
            log::debug!(
                "grid reset of task {} skipped: now {status} under another grid id",
                r.task_id
            );
            continue;
        }
        let mut stat = reason_stat(&r.reason, "grid");
        stat["grid_queue_id"] = json!(r.grid_queue_id);
        reset_task(tx, rules, &r.task_id, r.event, &stat)?;
        reset += 1;
    }
    Ok(DbReply::Rows(reset))
}

/// Resets (`Stuck`) the tasks of `gridspec` that entered waiting, queued or processing
/// longer ago than its limit.
fn reset_stuck_tasks(
    tx: &mut dyn Tx,
    rules: OpRules,
    gridspec: &str,
    limits: &StuckLimits,
) -> Result<DbReply, DbError> {
    let mut reset = 0;
    for (status, limit) in [
        ("waiting", limits.waiting),
        ("queued", limits.queued),
        ("processing", limits.processing),
    ] {
        let ids = tx.query(STUCK, args![gridspec, status, stamp_before(limit)])?;
        let reason = format!("{status} for longer than {}", human(limit));
        for row in ids {
            let task_id = row.text(0)?;
            reset_task(
                tx,
                rules,
                &task_id,
                TaskEvent::Stuck,
                &reason_stat(&reason, "site"),
            )?;
            reset += 1;
        }
    }
    Ok(DbReply::Rows(reset))
}

/// A duration as a person reads it: `2 d`, `3 h`, `90 s`.
fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 && s % 86_400 == 0 {
        format!("{} d", s / 86_400)
    } else if s >= 3600 && s % 3600 == 0 {
        format!("{} h", s / 3600)
    } else if s >= 60 && s % 60 == 0 {
        format!("{} min", s / 60)
    } else {
        format!("{} s", s)
    }
}

/// Reset → waiting (`Retry`) and resume → idle (`ReturnToPool`), at most `max` of each, the
/// longest in their state first.
fn recycle_tasks(tx: &mut dyn Tx, rules: OpRules, max: u32) -> Result<DbReply, DbError> {
    let mut moved = 0;
    for (status, event) in [
        ("reset", TaskEvent::Retry),
        ("resume", TaskEvent::ReturnToPool),
    ] {
        let ids = tx.query(RECYCLE, args![status, max])?;
        for row in ids {
            apply_transition(tx, rules, &row.text(0)?, event)?;
            moved += 1;
        }
    }
    Ok(DbReply::Rows(moved))
}

// ---------------------------------------------------------------------------------------
// pilots

/// The tasks every pilot row lists, but those of `except`.
fn pilot_tasks(tx: &mut dyn Tx, except: Option<&str>) -> Result<HashSet<String>, DbError> {
    let mut tasks = HashSet::new();
    for row in tx.query("SELECT pilot_id, tasks FROM pilot", args![])? {
        if except == Some(row.text(0)?.as_str()) {
            continue;
        }
        tasks.extend(task_list(&row.text(1)?));
    }
    Ok(tasks)
}

/// The processing tasks among `ids`.
fn processing(tx: &mut dyn Tx, ids: &[String]) -> Result<Vec<String>, DbError> {
    let mut out = Vec::new();
    for id in ids {
        let status = tx
            .query_opt("SELECT status FROM task WHERE task_id = ?", args![id])?
            .map(|row| row.text(0))
            .transpose()?;
        if status.as_deref() == Some("processing") {
            out.push(id.clone());
        }
    }
    Ok(out)
}

/// Deletes the pilot row, revokes its passkeys, and resets (`Lost`) the tasks it still ran,
/// unless another pilot has been handed them since. An unknown pilot changes nothing.
fn remove_pilot(
    tx: &mut dyn Tx,
    rules: OpRules,
    pilot_id: &str,
    reason: &str,
) -> Result<DbReply, DbError> {
    let Some(row) = tx.query_opt(
        "SELECT tasks FROM pilot WHERE pilot_id = ?",
        args![pilot_id],
    )?
    else {
        return Ok(DbReply::Rows(0));
    };
    let tasks = task_list(&row.text(0)?);
    tx.exec("DELETE FROM pilot WHERE pilot_id = ?", args![pilot_id])?;
    tx.exec(
        "UPDATE passkey SET revoked = 1 WHERE scope = ? AND subject = ? AND revoked = 0",
        args![PasskeyScope::Pilot.name(), pilot_id],
    )?;
    let running = processing(tx, &tasks)?;
    if running.is_empty() {
        return Ok(DbReply::Rows(0));
    }
    let elsewhere = pilot_tasks(tx, Some(pilot_id))?;
    let mut stat = reason_stat(reason, "grid");
    stat["pilot_id"] = json!(pilot_id);
    let mut reset = 0;
    for task_id in running.iter().filter(|t| !elsewhere.contains(*t)) {
        reset_task(tx, rules, task_id, TaskEvent::Lost, &stat)?;
        reset += 1;
    }
    Ok(DbReply::Rows(reset))
}

/// Resets (`Lost`) the processing tasks that were handed to a pilot (they have no task
/// passkey: direct-mode tasks get one when queued) and that no pilot row lists any more.
fn reset_orphaned_pilot_tasks(tx: &mut dyn Tx, rules: OpRules) -> Result<DbReply, DbError> {
    let candidates = tx.query(ORPHAN_CANDIDATES, args![PasskeyScope::Task.name()])?;
    if candidates.is_empty() {
        return Ok(DbReply::Rows(0));
    }
    let listed = pilot_tasks(tx, None)?;
    let stat = reason_stat("no pilot runs this task any more", "site");
    let mut reset = 0;
    for row in candidates {
        let task_id = row.text(0)?;
        if listed.contains(&task_id) {
            continue;
        }
        reset_task(tx, rules, &task_id, TaskEvent::Lost, &stat)?;
        reset += 1;
    }
    Ok(DbReply::Rows(reset))
}

// ---------------------------------------------------------------------------------------
// oversize tasks

/// Why `need` fits no grid whose largest slot is `largest`, or `None` when it fits. A 0 in
/// `largest` means what it means to queueing (`queueing::fits_largest`): no limit on that
/// resource, except gpus, where 0 is none. (Config validation refuses a 0 for cpu, memory,
/// disk and time, so only the protocol can carry one.)
pub(crate) fn oversize_reason(need: &Resources, largest: &Resources) -> Option<String> {
    let plural = |n: u32, one: &str| {
        if n == 1 {
            one.to_string()
        } else {
            format!("{one}s")
        }
    };
    let mut over = Vec::new();
    if largest.cpu > 0 && need.cpu > largest.cpu {
        over.push((
            format!("{} {}", need.cpu, plural(need.cpu, "cpu")),
            format!("{}", largest.cpu),
        ));
    }
    if need.gpu > largest.gpu {
        over.push((
            format!("{} {}", need.gpu, plural(need.gpu, "gpu")),
            format!("{}", largest.gpu),
        ));
    }
    for (what, unit, n, l) in [
        ("memory", "GB", need.memory, largest.memory),
        ("disk", "GB", need.disk, largest.disk),
        ("time", "hours", need.time, largest.time),
    ] {
        if l > 0.0 && n > l + EPSILON {
            over.push((format!("{n} {unit} {what}"), format!("{l} {unit}")));
        }
    }
    if over.is_empty() {
        return None;
    }
    Some(
        over.into_iter()
            .map(|(asks, offers)| format!("asks for {asks}; the largest grid offers {offers}"))
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// Suspends (`ManualSuspend`, the one suspend event) the idle and waiting tasks that ask for
/// more than the largest grid offers in any resource, recording why. Reads the tasks a page
/// at a time in `task_by_status_changed` order; each distinct requirements text is judged
/// once.
fn suspend_oversize_tasks(tx: &mut dyn Tx, rules: OpRules) -> Result<DbReply, DbError> {
    let Some(largest) = rules.largest else {
        return Ok(DbReply::Rows(0));
    };
    let mut verdicts: HashMap<String, Option<String>> = HashMap::new();
    let mut suspended = 0;
    for status in ["idle", "waiting"] {
        let (mut after_changed, mut after_id) = (String::new(), String::new());
        loop {
            let rows = tx.query(
                SIZE_PAGE_SQL,
                args![
                    status,
                    after_changed.as_str(),
                    after_changed.as_str(),
                    after_id.as_str(),
                    SIZE_PAGE
                ],
            )?;
            let full = rows.len() == SIZE_PAGE;
            for row in rows {
                let task_id = row.text(0)?;
                after_changed = row.text(1)?;
                let text = row.text(2)?;
                let verdict = verdicts
                    .entry(text)
                    .or_insert_with_key(|text| {
                        oversize_reason(&Needs::parse(&task_id, text).resources, &largest)
                    })
                    .clone();
                if let Some(reason) = verdict {
                    apply_transition(tx, rules, &task_id, TaskEvent::ManualSuspend)?;
                    insert_task_stat(tx, rules, &task_id, &reason_stat(&reason, "site"), true)?;
                    suspended += 1;
                }
                after_id = task_id;
            }
            if !full {
                break;
            }
        }
    }
    Ok(DbReply::Rows(suspended))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(cpu: u32, gpu: u32, memory: f64, disk: f64, time: f64) -> Resources {
        Resources {
            cpu,
            gpu,
            memory,
            disk,
            time,
        }
    }

    #[test]
    fn an_oversize_reason_names_each_resource_over_the_largest_grid() {
        let largest = slot(8, 0, 16.0, 100.0, 24.0);
        assert_eq!(
            oversize_reason(&slot(8, 0, 16.0, 100.0, 24.0), &largest),
            None
        );
        assert_eq!(
            oversize_reason(&slot(1, 0, 64.0, 1.0, 1.0), &largest).as_deref(),
            Some("asks for 64 GB memory; the largest grid offers 16 GB")
        );
        assert_eq!(
            oversize_reason(&slot(16, 1, 1.0, 1.0, 48.0), &largest).as_deref(),
            Some(
                "asks for 16 cpus; the largest grid offers 8; asks for 1 gpu; the largest \
                 grid offers 0; asks for 48 hours time; the largest grid offers 24 hours"
            )
        );
        // Rounding noise is not oversize.
        assert_eq!(
            oversize_reason(&slot(1, 0, 16.0 + 1e-12, 1.0, 1.0), &largest),
            None
        );
    }

    #[test]
    fn requirements_read_like_queueing_with_defaults_and_rounded_up_counts() {
        let r = Needs::parse("t", r#"{"cpu": 1.5, "memory": 3.5, "gpu": -1}"#).resources;
        assert_eq!((r.cpu, r.gpu, r.memory), (2, 0, 3.5));
        let defaults = iceprod_runtime::dataset::Requirements::default();
        let d = Needs::parse("t", "not json").resources;
        assert_eq!(d.cpu, defaults.cpu);
        assert_eq!(d.disk, defaults.disk_gb);
        assert_eq!(d.time, defaults.time_hours);
    }

    #[test]
    fn a_cutoff_sorts_as_text_like_the_stored_times() {
        let cutoff = stamp_before(std::time::Duration::from_secs(3600));
        let stored = crate::ops::now();
        assert!(cutoff < stored, "{cutoff} {stored}");
        assert_eq!(cutoff.len(), stored.len());
        // A limit too large for the calendar still gives a comparable stamp.
        let far = stamp_before(std::time::Duration::from_secs(u64::MAX));
        assert!(far < cutoff, "{far}");
    }

    /// SQLite's plan for each large read names its index and sorts no more than ties of the
    /// index order; GridTasks answers 100,000 queued tasks among 200,000 quickly.
    #[test]
    fn the_large_reads_use_their_indexes() {
        use crate::sql::SqliteTx;
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open(&dir.path().join("grid.db")).unwrap();
        conn.execute_batch("BEGIN").unwrap();
        {
            let mut insert = conn
                .prepare(
                    "INSERT INTO task (task_id, job_id, dataset_id, task_rel_id, task_index, \
                     status, status_changed, gridspec) VALUES (?1, 'j', 'd', 'r', 0, ?2, ?3, ?4)",
                )
                .unwrap();
            for i in 0..200_000u32 {
                let (status, grid) = match i % 4 {
                    0 | 1 => ("queued", "s.grid"),
                    2 => ("complete", "s.grid"),
                    _ => ("queued", "s.other"),
                };
                let changed = format!("2026-01-01T00:00:{:02}.{:06}Z", i % 60, i);
                insert
                    .execute(crate::rusqlite::params![
                        format!("t{i:06}"),
                        status,
                        changed,
                        grid
                    ])
                    .unwrap();
            }
        }
        conn.execute_batch("COMMIT; ANALYZE").unwrap();
        let plan = |sql: &str| -> String {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let n = stmt.parameter_count();
            let params: Vec<String> = (0..n).map(|_| "x".to_string()).collect();
            let rows = stmt
                .query_map(crate::rusqlite::params_from_iter(params), |r| {
                    r.get::<_, String>(3)
                })
                .unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join(" | ")
        };
        for (sql, index) in [
            (GRID_TASKS, "task_by_grid"),
            (STUCK, "task_by_grid"),
            (RECYCLE, "task_by_status_changed"),
            (ORPHAN_CANDIDATES, "passkey_by_subject"),
            (SIZE_PAGE_SQL, "task_by_status_changed"),
            (PILOT_DEMAND, "task_lookup_fit"),
        ] {
            let plan = plan(sql);
            assert!(plan.contains(index), "{sql}: {plan}");
            // At most the ties of the index order are sorted (the paging cursor's task id).
            if sql != PILOT_DEMAND {
                assert!(!plan.contains("B-TREE FOR ORDER BY"), "{sql}: {plan}");
            }
        }
        assert!(plan(STUCK).contains("status_changed<?"), "{}", plan(STUCK));
        let page = plan(SIZE_PAGE_SQL);
        assert!(page.contains("status_changed>?"), "{page}");

        let started = std::time::Instant::now();
        let reply = grid_tasks(&mut SqliteTx(&conn), "s.grid").unwrap();
        let elapsed = started.elapsed();
        let DbReply::GridTasks(tasks) = reply else {
            panic!("{reply:?}");
        };
        assert_eq!(tasks.len(), 100_000);
        assert!(tasks.iter().all(|t| t.status == TaskStatus::Queued));
        // Generous for a debug build on a busy machine; a full scan with a sort is not the
        // concern here (the plan is), only that nothing is badly wrong.
        assert!(elapsed < std::time::Duration::from_secs(5), "{elapsed:?}");
    }

    /// Pages of `SIZE_PAGE` tasks with many equal `status_changed`: every task is judged
    /// exactly once, across page borders inside a run of ties.
    #[test]
    fn oversize_suspension_pages_through_every_idle_and_waiting_task() {
        use crate::sql::SqliteTx;
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open(&dir.path().join("pages.db")).unwrap();
        conn.execute(
            "INSERT INTO dataset (dataset_id, dataset_num, status, status_changed, \
             jobs_submitted, tasks_submitted, start_date) \
             VALUES ('d', 1, 'processing', 'x', 1, 1, 'x')",
            [],
        )
        .unwrap();
        let total = 2 * SIZE_PAGE + 500;
        let mut oversize = 0;
        for i in 0..total {
            let big = i % 7 == 0;
            oversize += usize::from(big);
            let requirements = if big {
                r#"{"memory": 64}"#
            } else {
                r#"{"memory": 2}"#
            };
            conn.execute(
                "INSERT INTO task (task_id, job_id, dataset_id, task_rel_id, task_index, \
                 status, status_changed, requirements) VALUES (?1, 'j', 'd', 'r', 0, ?2, ?3, ?4)",
                crate::rusqlite::params![
                    format!("t{i:05}"),
                    if i % 3 == 0 { "waiting" } else { "idle" },
                    // Runs of 400 equal times, so pages end inside a run.
                    format!("2026-01-01T00:00:{:02}.000000Z", i / 400),
                    requirements
                ],
            )
            .unwrap();
        }
        let rules = OpRules {
            max_resets: 10,
            site_number: 0,
            largest: Some(Resources {
                cpu: 8,
                gpu: 0,
                memory: 16.0,
                disk: 100.0,
                time: 24.0,
            }),
        };
        let mut tx = SqliteTx(&conn);
        let reply = suspend_oversize_tasks(&mut tx, rules).unwrap();
        assert_eq!(reply, DbReply::Rows(oversize as u64));
        let suspended: i64 = conn
            .query_row(
                "SELECT count(*) FROM task WHERE status = 'suspended'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(suspended as usize, oversize);
        let stats: i64 = conn
            .query_row("SELECT count(*) FROM task_stat WHERE error = 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(stats as usize, oversize);
        // Without grids nothing is judged too large.
        let none = OpRules {
            largest: None,
            ..rules
        };
        conn.execute("UPDATE task SET status = 'idle'", []).unwrap();
        assert_eq!(
            suspend_oversize_tasks(&mut tx, none).unwrap(),
            DbReply::Rows(0)
        );
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human(std::time::Duration::from_secs(2 * 86_400)), "2 d");
        assert_eq!(human(std::time::Duration::from_secs(7200)), "2 h");
        assert_eq!(human(std::time::Duration::from_secs(90)), "90 s");
        assert_eq!(human(std::time::Duration::from_secs(120)), "2 min");
    }
}
