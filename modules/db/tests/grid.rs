//! The queue module's db requests (SPEC §6, §9) through the db module's messages: what a grid
//! holds, grid resets, stuck tasks, recycling, pilots and their removal, pilot demand,
//! orphaned pilot tasks and oversize tasks. Datasets are submitted and buffered and tasks
//! queued as the server does; times are moved into the past with plain SQL. Every body runs
//! on SQLite, and on MariaDB when `ICEPROD_TEST_MYSQL_URL` names a server.

use std::time::Duration;

mod support;

use iceprod_db::args;
use iceprod_runtime::harness::Harness;
use iceprod_runtime::states::{TaskEvent, TaskStatus};
use iceprod_runtime::{
    CallError, DbReply, DbRequest, GridReset, GridTask, PilotInfo, QueuedTask, Resources,
    StuckLimits, TaskCall,
};
use serde_json::{json, Value};
use support::{call_db as db, change, config_task_ids, new_task_configs, one_task, queue_tasks};
use support::{rows, slot, submit_dataset, unlimited, TestDb};

const GRID: &str = "b.local";
const OTHER_GRID: &str = "b.other";
/// Site "b" (number 1).
const SITE: &str = "[site]\nid = \"b\"\n";
const HOSTILE: &str = "b.x' OR '1'='1\"; DROP TABLE task; --";

on_both_backends!(
    grid_tasks_lists_the_queued_and_processing_tasks_of_that_grid_only,
    grid_tasks_of_an_empty_or_hostile_grid_is_empty,
    reset_grid_tasks_resets_a_lost_task_and_records_the_reason,
    reset_grid_tasks_skips_a_task_requeued_or_finished_meanwhile,
    error_resets_count_failures_up_to_failed_at_max_resets,
    an_error_reset_of_a_debug_dataset_suspends_the_task,
    a_grid_reset_with_another_event_is_refused_and_changes_nothing,
    a_grid_reset_takes_a_pilot_task_out_of_the_lookup,
    stuck_tasks_are_reset_by_the_limit_of_their_state,
    recycle_retries_reset_tasks_and_returns_resumed_ones_oldest_first,
    grid_pilots_lists_the_pilots_of_that_grid_with_their_grid_ids,
    set_pilot_grid_id_refuses_an_unknown_pilot,
    removing_a_pilot_resets_its_running_tasks_and_revokes_its_passkey,
    removing_a_pilot_leaves_a_task_another_pilot_took_since,
    removing_an_unknown_pilot_changes_nothing,
    pilot_demand_counts_queued_lookup_tasks_by_shape_largest_first,
    orphaned_pilot_tasks_are_reset_and_direct_mode_tasks_left_alone,
    oversize_tasks_are_suspended_with_the_reason,
    scheduled_messages_reach_the_orphan_and_oversize_operations,
);

// ---------------------------------------------------------------------------------------
// helpers

/// Submits a dataset for `gridspec` with one task `main` asking `requirements`, and creates
/// its jobs; answers its task ids in job order.
fn dataset_on(
    h: &mut Harness,
    d: &TestDb,
    gridspec: &str,
    requirements: Value,
    njobs: u32,
    debug: bool,
) -> Vec<String> {
    let dataset_id = submit_dataset(h, &one_task(requirements), njobs, gridspec, debug);
    d.texts(
        "SELECT task.task_id FROM task JOIN job ON job.job_id = task.job_id \
         WHERE task.dataset_id = ? ORDER BY job.job_index",
        args![dataset_id.as_str()],
    )
}

fn dataset_with(
    h: &mut Harness,
    d: &TestDb,
    requirements: Value,
    njobs: u32,
    debug: bool,
) -> Vec<String> {
    dataset_on(h, d, GRID, requirements, njobs, debug)
}

fn dataset(h: &mut Harness, d: &TestDb, njobs: u32) -> Vec<String> {
    dataset_with(h, d, json!({}), njobs, false)
}

fn queue_on(h: &mut Harness, gridspec: &str, num: u32, pilot_mode: bool) -> Vec<QueuedTask> {
    queue_tasks(h, gridspec, num, unlimited(), pilot_mode)
}

/// Queues up to `num` tasks on `GRID` in direct mode; answers their ids.
fn queue(h: &mut Harness, num: u32) -> Vec<String> {
    queue_on(h, GRID, num, false)
        .into_iter()
        .map(|t| t.task_id)
        .collect()
}

fn set_grid_id(h: &mut Harness, task: &str, grid_queue_id: &str) {
    let reply = db(
        h,
        DbRequest::SetGridId {
            task_id: task.into(),
            grid_queue_id: grid_queue_id.into(),
            submit_dir: format!("submit/{task}"),
        },
    );
    assert_eq!(reply.unwrap(), DbReply::Done);
}

fn status(d: &TestDb, task: &str) -> String {
    d.texts("SELECT status FROM task WHERE task_id = ?", args![task])
        .remove(0)
}

fn failures(d: &TestDb, task: &str) -> i64 {
    d.count("SELECT failures FROM task WHERE task_id = ?", args![task])
}

fn grid_queue_id(d: &TestDb, task: &str) -> Option<String> {
    d.rows(
        "SELECT grid_queue_id FROM task WHERE task_id = ?",
        args![task],
    )[0]
    .opt_text(0)
    .unwrap()
}

/// The stat JSON of the task's error rows, oldest first.
fn error_stats(d: &TestDb, task: &str) -> Vec<Value> {
    d.texts(
        "SELECT stat FROM task_stat WHERE task_id = ? AND error = 1 \
         ORDER BY create_date, task_stat_id",
        args![task],
    )
    .iter()
    .map(|s| serde_json::from_str(s).unwrap())
    .collect()
}

/// Sets the task's `status_changed` to `minutes` ago, written as the server writes times.
fn changed_minutes_ago(d: &TestDb, task: &str, minutes: i64) {
    let at = (chrono::Utc::now() - chrono::Duration::minutes(minutes))
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    d.exec(
        "UPDATE task SET status_changed = ? WHERE task_id = ?",
        args![at, task],
    );
}

fn reset(task: &str, grid_queue_id: &str, event: TaskEvent, reason: &str) -> GridReset {
    GridReset {
        task_id: task.into(),
        grid_queue_id: grid_queue_id.into(),
        event,
        reason: reason.into(),
    }
}

fn grid_reset(h: &mut Harness, resets: Vec<GridReset>) -> u64 {
    rows(h, DbRequest::ResetGridTasks { resets })
}

fn grid_tasks(h: &mut Harness, gridspec: &str) -> Vec<GridTask> {
    match db(
        h,
        DbRequest::GridTasks {
            gridspec: gridspec.into(),
        },
    )
    .unwrap()
    {
        DbReply::GridTasks(tasks) => tasks,
        other => panic!("{other:?}"),
    }
}

fn pilots(h: &mut Harness, gridspec: &str) -> Vec<PilotInfo> {
    match db(
        h,
        DbRequest::GridPilots {
            gridspec: gridspec.into(),
        },
    )
    .unwrap()
    {
        DbReply::Pilots(pilots) => pilots,
        other => panic!("{other:?}"),
    }
}

fn create_pilot(h: &mut Harness) -> (String, String) {
    support::create_pilot(h, GRID, slot(4, 0, 8.0))
}

fn new_task(
    h: &mut Harness,
    passkey: &str,
    available: Resources,
) -> Result<Vec<String>, CallError> {
    new_task_configs(h, passkey, GRID, available, None).map(|c| config_task_ids(&c))
}

fn update_pilot(h: &mut Harness, passkey: &str, pilot_id: &str, tasks: Vec<String>) {
    let reply = db(
        h,
        DbRequest::UpdatePilot {
            passkey: passkey.into(),
            pilot_id: pilot_id.into(),
            tasks,
            available: slot(1, 0, 1.0),
            claimed: slot(1, 0, 1.0),
        },
    );
    assert_eq!(reply.unwrap(), DbReply::Done);
}

fn remove_pilot(h: &mut Harness, pilot_id: &str, reason: &str) -> u64 {
    rows(
        h,
        DbRequest::RemovePilot {
            pilot_id: pilot_id.into(),
            reason: reason.into(),
        },
    )
}

fn recycle(h: &mut Harness, max: u32) -> u64 {
    rows(h, DbRequest::RecycleTasks { max })
}

const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------
// GridTasks

fn grid_tasks_lists_the_queued_and_processing_tasks_of_that_grid_only(d: &TestDb) {
    let mut h = d.start(SITE);
    let tasks = dataset(&mut h, d, 4);
    let queued = queue(&mut h, 2);
    assert_eq!(queued, tasks[..2]);
    set_grid_id(&mut h, &queued[0], "17.0");
    change(&mut h, &queued[1], TaskEvent::Start);
    dataset_on(&mut h, d, OTHER_GRID, json!({}), 1, false);
    let on_other = queue_on(&mut h, OTHER_GRID, 1, false).remove(0).task_id;
    // One left idle, one on another grid.
    let held = grid_tasks(&mut h, GRID);
    assert_eq!(held.len(), 2, "{held:?}");
    let first = held.iter().find(|t| t.task_id == queued[0]).unwrap();
    assert_eq!(first.status, TaskStatus::Queued);
    assert_eq!(first.grid_queue_id.as_deref(), Some("17.0"));
    assert_eq!(
        first.submit_dir.as_deref(),
        Some(format!("submit/{}", queued[0]).as_str())
    );
    let second = held.iter().find(|t| t.task_id == queued[1]).unwrap();
    assert_eq!(second.status, TaskStatus::Processing);
    assert_eq!(second.grid_queue_id, None);
    assert_eq!(
        second.status_changed,
        d.texts(
            "SELECT status_changed FROM task WHERE task_id = ?",
            args![queued[1].as_str()]
        )[0]
    );
    let other: Vec<String> = grid_tasks(&mut h, OTHER_GRID)
        .into_iter()
        .map(|t| t.task_id)
        .collect();
    assert_eq!(other, [on_other]);
    // A completed task is no longer the grid's.
    change(&mut h, &queued[1], TaskEvent::Finish);
    assert_eq!(grid_tasks(&mut h, GRID).len(), 1);
}

fn grid_tasks_of_an_empty_or_hostile_grid_is_empty(d: &TestDb) {
    let mut h = d.start(SITE);
    assert!(grid_tasks(&mut h, GRID).is_empty());
    dataset(&mut h, d, 2);
    queue(&mut h, 2);
    assert!(grid_tasks(&mut h, HOSTILE).is_empty());
    assert!(grid_tasks(&mut h, "").is_empty());
    assert!(pilots(&mut h, HOSTILE).is_empty());
    assert_eq!(
        db(
            &mut h,
            DbRequest::PilotDemand {
                gridspec: HOSTILE.into()
            }
        )
        .unwrap(),
        DbReply::Demand(vec![])
    );
    let limits = StuckLimits {
        waiting: Duration::ZERO,
        queued: Duration::ZERO,
        processing: Duration::ZERO,
    };
    assert_eq!(
        rows(
            &mut h,
            DbRequest::ResetStuckTasks {
                gridspec: HOSTILE.into(),
                limits,
            }
        ),
        0
    );
    // The table is still there and the grid still holds its tasks.
    assert_eq!(grid_tasks(&mut h, GRID).len(), 2);
}

// ---------------------------------------------------------------------------------------
// ResetGridTasks

fn reset_grid_tasks_resets_a_lost_task_and_records_the_reason(d: &TestDb) {
    let mut h = d.start(SITE);
    dataset(&mut h, d, 2);
    let [a, b] = <[String; 2]>::try_from(queue(&mut h, 2)).unwrap();
    set_grid_id(&mut h, &a, "100.0");
    set_grid_id(&mut h, &b, "101.0");
    change(&mut h, &b, TaskEvent::Start);
    let n = grid_reset(
        &mut h,
        vec![
            reset(&a, "100.0", TaskEvent::Lost, "lost by the grid"),
            reset(&b, "101.0", TaskEvent::Lost, "exit code 137"),
        ],
    );
    assert_eq!(n, 2);
    for (task, reason) in [(&a, "lost by the grid"), (&b, "exit code 137")] {
        assert_eq!(status(d, task), "reset");
        // Lost: failures unchanged.
        assert_eq!(failures(d, task), 0);
        assert_eq!(grid_queue_id(d, task), None);
        let stats = error_stats(d, task);
        assert_eq!(stats.len(), 1, "{stats:?}");
        assert_eq!(stats[0]["error_summary"], reason);
        assert_eq!(stats[0]["source"], "grid");
    }
    let prev = d.texts(
        "SELECT prev_status FROM task WHERE task_id = ?",
        args![b.as_str()],
    );
    assert_eq!(prev, ["processing"]);
    assert!(grid_tasks(&mut h, GRID).is_empty());
}

fn reset_grid_tasks_skips_a_task_requeued_or_finished_meanwhile(d: &TestDb) {
    let mut h = d.start(SITE);
    dataset(&mut h, d, 3);
    let [requeued, finished, kept] = <[String; 3]>::try_from(queue(&mut h, 3)).unwrap();
    set_grid_id(&mut h, &requeued, "1.0");
    set_grid_id(&mut h, &finished, "2.0");
    set_grid_id(&mut h, &kept, "3.0");
    // The first was lost and queued again under a new grid id; the second completed.
    change(&mut h, &requeued, TaskEvent::Lost);
    recycle(&mut h, 10);
    assert_eq!(queue(&mut h, 1), std::slice::from_ref(&requeued));
    set_grid_id(&mut h, &requeued, "9.0");
    change(&mut h, &finished, TaskEvent::Start);
    change(&mut h, &finished, TaskEvent::Finish);
    let n = grid_reset(
        &mut h,
        vec![
            reset(&requeued, "1.0", TaskEvent::Error, "held: old job"),
            reset(&finished, "2.0", TaskEvent::Lost, "gone"),
            reset("no-such-task", "3.0", TaskEvent::Lost, "gone"),
            reset("", "", TaskEvent::Lost, "gone"),
            reset(&kept, "3.0", TaskEvent::Lost, "gone"),
        ],
    );
    assert_eq!(n, 1);
    assert_eq!(status(d, &requeued), "queued");
    assert_eq!(failures(d, &requeued), 0);
    assert_eq!(grid_queue_id(d, &requeued).as_deref(), Some("9.0"));
    assert_eq!(status(d, &finished), "complete");
    assert_eq!(status(d, &kept), "reset");
    assert!(error_stats(d, &requeued).is_empty());
    assert!(error_stats(d, &finished).is_empty());
    assert_eq!(grid_reset(&mut h, vec![]), 0);
    // Resetting the same grid id again finds the task reset already.
    assert_eq!(
        grid_reset(&mut h, vec![reset(&kept, "3.0", TaskEvent::Lost, "gone")]),
        0
    );
    assert_eq!(error_stats(d, &kept).len(), 1);
}

fn error_resets_count_failures_up_to_failed_at_max_resets(d: &TestDb) {
    let mut h = d.start(&format!("{SITE}[queue]\nmax_resets = 3\n"));
    let task = dataset(&mut h, d, 1).remove(0);
    for attempt in 1..=3 {
        assert_eq!(
            queue(&mut h, 1),
            std::slice::from_ref(&task),
            "attempt {attempt}"
        );
        let grid_id = format!("{attempt}.0");
        set_grid_id(&mut h, &task, &grid_id);
        let reason = format!("held: exit code {attempt}");
        assert_eq!(
            grid_reset(
                &mut h,
                vec![reset(&task, &grid_id, TaskEvent::Error, &reason)]
            ),
            1
        );
        assert_eq!(failures(d, &task), attempt);
        if attempt < 3 {
            assert_eq!(status(d, &task), "reset");
            assert_eq!(recycle(&mut h, 10), 1);
        }
    }
    assert_eq!(status(d, &task), "failed");
    let summaries: Vec<Value> = error_stats(d, &task)
        .into_iter()
        .map(|s| s["error_summary"].clone())
        .collect();
    assert_eq!(
        summaries,
        [
            "held: exit code 1",
            "held: exit code 2",
            "held: exit code 3"
        ]
    );
    // A failed task is not recycled.
    assert_eq!(recycle(&mut h, 10), 0);
}

fn an_error_reset_of_a_debug_dataset_suspends_the_task(d: &TestDb) {
    let mut h = d.start(SITE);
    let task = dataset_with(&mut h, d, json!({}), 1, true).remove(0);
    queue(&mut h, 1);
    set_grid_id(&mut h, &task, "5.0");
    let n = grid_reset(&mut h, vec![reset(&task, "5.0", TaskEvent::Error, "held")]);
    assert_eq!(n, 1);
    assert_eq!(status(d, &task), "suspended");
    assert_eq!(failures(d, &task), 1);
}

fn a_grid_reset_with_another_event_is_refused_and_changes_nothing(d: &TestDb) {
    let mut h = d.start(SITE);
    dataset(&mut h, d, 2);
    let [a, b] = <[String; 2]>::try_from(queue(&mut h, 2)).unwrap();
    set_grid_id(&mut h, &a, "1.0");
    set_grid_id(&mut h, &b, "2.0");
    let refused = db(
        &mut h,
        DbRequest::ResetGridTasks {
            resets: vec![
                reset(&a, "1.0", TaskEvent::Lost, "gone"),
                reset(&b, "2.0", TaskEvent::Finish, "done?"),
            ],
        },
    );
    assert!(matches!(refused, Err(CallError::Refused(_))), "{refused:?}");
    assert_eq!(status(d, &a), "queued");
    assert_eq!(status(d, &b), "queued");
}

fn a_grid_reset_takes_a_pilot_task_out_of_the_lookup(d: &TestDb) {
    let mut h = d.start(SITE);
    dataset(&mut h, d, 1);
    let task = queue_on(&mut h, GRID, 1, true).remove(0).task_id;
    set_grid_id(&mut h, &task, "7.0");
    assert_eq!(d.count("SELECT count(*) FROM task_lookup", args![]), 1);
    assert_eq!(
        grid_reset(&mut h, vec![reset(&task, "7.0", TaskEvent::Lost, "gone")]),
        1
    );
    assert_eq!(d.count("SELECT count(*) FROM task_lookup", args![]), 0);
    // No pilot can take it now.
    let (_, key) = create_pilot(&mut h);
    assert!(new_task(&mut h, &key, slot(4, 0, 8.0)).unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// ResetStuckTasks and RecycleTasks

fn stuck_tasks_are_reset_by_the_limit_of_their_state(d: &TestDb) {
    let mut h = d.start(SITE);
    let tasks = dataset(&mut h, d, 4);
    let queued = queue(&mut h, 3);
    let [waiting, queued_one, processing] = <[String; 3]>::try_from(queued).unwrap();
    // A waiting task of this grid: lost once, then retried.
    change(&mut h, &waiting, TaskEvent::Lost);
    recycle(&mut h, 10);
    assert_eq!(status(d, &waiting), "waiting");
    change(&mut h, &processing, TaskEvent::Start);
    let other = dataset_on(&mut h, d, OTHER_GRID, json!({}), 1, false);
    let on_other = queue_on(&mut h, OTHER_GRID, 1, false).remove(0).task_id;
    assert_eq!(on_other, other[0]);
    assert_eq!(status(d, &tasks[3]), "idle");
    for task in [&waiting, &queued_one, &processing, &on_other] {
        changed_minutes_ago(d, task, 150);
    }
    let stuck = |h: &mut Harness, waiting: u64, queued: u64, processing: u64| {
        rows(
            h,
            DbRequest::ResetStuckTasks {
                gridspec: GRID.into(),
                limits: StuckLimits {
                    waiting: HOUR * waiting as u32,
                    queued: HOUR * queued as u32,
                    processing: HOUR * processing as u32,
                },
            },
        )
    };
    // 150 minutes: over 2 h, under 3 h.
    assert_eq!(stuck(&mut h, 3, 3, 3), 0);
    assert_eq!(stuck(&mut h, 2, 3, 3), 1);
    assert_eq!(status(d, &waiting), "reset");
    assert_eq!(status(d, &queued_one), "queued");
    assert_eq!(stuck(&mut h, 3, 2, 2), 2);
    for task in [&waiting, &queued_one, &processing] {
        assert_eq!(status(d, task), "reset");
        assert_eq!(failures(d, task), 0);
        let stats = error_stats(d, task);
        assert_eq!(stats.len(), 1, "{stats:?}");
        assert!(
            stats[0]["error_summary"]
                .as_str()
                .unwrap()
                .contains("for longer than"),
            "{stats:?}"
        );
    }
    assert_eq!(
        error_stats(d, &processing)[0]["error_summary"],
        "processing for longer than 2 h"
    );
    // The other grid's task is not this grid's to reset.
    assert_eq!(status(d, &on_other), "queued");
    // Just reset: nothing stuck now, even at the smallest limits.
    assert_eq!(stuck(&mut h, 1, 1, 1), 0);
}

fn recycle_retries_reset_tasks_and_returns_resumed_ones_oldest_first(d: &TestDb) {
    let mut h = d.start(SITE);
    let tasks = dataset(&mut h, d, 6);
    let queued = queue(&mut h, 3);
    for (i, task) in queued.iter().enumerate() {
        change(&mut h, task, TaskEvent::Lost);
        // The first is the newest reset, the last the oldest.
        changed_minutes_ago(d, task, 10 * (i as i64 + 1));
    }
    let resumed = &tasks[3..];
    for (i, task) in resumed.iter().enumerate() {
        change(&mut h, task, TaskEvent::ManualSuspend);
        change(&mut h, task, TaskEvent::ManualResume);
        changed_minutes_ago(d, task, 10 * (i as i64 + 1));
    }
    assert_eq!(recycle(&mut h, 2), 4);
    let statuses: Vec<String> = tasks.iter().map(|t| status(d, t)).collect();
    assert_eq!(
        statuses,
        ["reset", "waiting", "waiting", "resume", "idle", "idle"]
    );
    assert_eq!(recycle(&mut h, 0), 0);
    assert_eq!(recycle(&mut h, 2), 2);
    assert_eq!(status(d, &tasks[0]), "waiting");
    assert_eq!(status(d, &tasks[3]), "idle");
    assert_eq!(recycle(&mut h, 2), 0);
    // Waiting and idle tasks are queued again.
    assert_eq!(queue(&mut h, 10).len(), 6);
}

// ---------------------------------------------------------------------------------------
// pilots

fn grid_pilots_lists_the_pilots_of_that_grid_with_their_grid_ids(d: &TestDb) {
    let mut h = d.start(SITE);
    assert!(pilots(&mut h, GRID).is_empty());
    let (first, _) = create_pilot(&mut h);
    let (second, key) = create_pilot(&mut h);
    let reply = db(
        &mut h,
        DbRequest::SetPilotGridId {
            pilot_id: first.clone(),
            grid_queue_id: "88.0".into(),
            submit_dir: "submit/p1".into(),
        },
    );
    assert_eq!(reply.unwrap(), DbReply::Done);
    dataset(&mut h, d, 1);
    let task = queue_on(&mut h, GRID, 1, true).remove(0).task_id;
    assert_eq!(
        new_task(&mut h, &key, slot(4, 0, 8.0)).unwrap(),
        std::slice::from_ref(&task)
    );

    let listed = pilots(&mut h, GRID);
    assert_eq!(listed.len(), 2);
    let p1 = listed.iter().find(|p| p.pilot_id == first).unwrap();
    assert_eq!(p1.grid_queue_id.as_deref(), Some("88.0"));
    assert_eq!(p1.requirements, slot(4, 0, 8.0));
    assert!(p1.tasks.is_empty());
    assert!(!p1.submit_time.is_empty());
    let p2 = listed.iter().find(|p| p.pilot_id == second).unwrap();
    assert_eq!(p2.grid_queue_id, None);
    assert_eq!(p2.tasks, [task]);
    assert_eq!(
        d.texts(
            "SELECT submit_dir FROM pilot WHERE pilot_id = ?",
            args![first.as_str()]
        ),
        ["submit/p1"]
    );
    assert!(pilots(&mut h, OTHER_GRID).is_empty());
}

fn set_pilot_grid_id_refuses_an_unknown_pilot(d: &TestDb) {
    let mut h = d.start(SITE);
    let reply = db(
        &mut h,
        DbRequest::SetPilotGridId {
            pilot_id: "nope'".into(),
            grid_queue_id: "1".into(),
            submit_dir: String::new(),
        },
    );
    assert!(matches!(reply, Err(CallError::Refused(_))), "{reply:?}");
    assert_eq!(d.count("SELECT count(*) FROM pilot", args![]), 0);
}

fn removing_a_pilot_resets_its_running_tasks_and_revokes_its_passkey(d: &TestDb) {
    let mut h = d.start(SITE);
    dataset(&mut h, d, 3);
    queue_on(&mut h, GRID, 3, true);
    let (pilot_id, key) = create_pilot(&mut h);
    let handed = new_task(&mut h, &key, slot(2, 0, 8.0)).unwrap();
    assert_eq!(handed.len(), 2);
    // One of them finished before the pilot went.
    let done = db(
        &mut h,
        DbRequest::Task {
            passkey: key.clone(),
            task_id: handed[0].clone(),
            call: TaskCall::Finish { stats: json!({}) },
        },
    );
    assert_eq!(done.unwrap(), DbReply::Done);

    assert_eq!(
        remove_pilot(&mut h, &pilot_id, "pilot held: out of memory"),
        1
    );
    assert_eq!(status(d, &handed[0]), "complete");
    assert_eq!(status(d, &handed[1]), "reset");
    assert_eq!(failures(d, &handed[1]), 0);
    let stats = error_stats(d, &handed[1]);
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert_eq!(stats[0]["error_summary"], "pilot held: out of memory");
    assert_eq!(stats[0]["source"], "grid");
    assert!(pilots(&mut h, GRID).is_empty());
    // Its passkey is revoked: it gets no more work, and may not act on its old tasks.
    let refused = new_task(&mut h, &key, slot(2, 0, 8.0));
    assert!(
        matches!(refused, Err(CallError::Forbidden(_))),
        "{refused:?}"
    );
    assert_eq!(
        d.count(
            "SELECT count(*) FROM passkey WHERE scope = 'pilot' AND subject = ? AND revoked = 0",
            args![pilot_id.as_str()]
        ),
        0
    );
    // The third task still waits in the lookup for another pilot.
    let (_, other) = create_pilot(&mut h);
    assert_eq!(new_task(&mut h, &other, slot(4, 0, 8.0)).unwrap().len(), 1);
}

fn removing_a_pilot_leaves_a_task_another_pilot_took_since(d: &TestDb) {
    let mut h = d.start(SITE);
    dataset(&mut h, d, 1);
    queue_on(&mut h, GRID, 1, true);
    let (first, first_key) = create_pilot(&mut h);
    let task = new_task(&mut h, &first_key, slot(1, 0, 4.0))
        .unwrap()
        .remove(0);
    // The task was lost and retried; a second pilot runs it now, the first still lists it.
    change(&mut h, &task, TaskEvent::Lost);
    recycle(&mut h, 10);
    queue_on(&mut h, GRID, 1, true);
    let (_, second_key) = create_pilot(&mut h);
    assert_eq!(
        new_task(&mut h, &second_key, slot(1, 0, 4.0)).unwrap(),
        std::slice::from_ref(&task)
    );
    assert_eq!(remove_pilot(&mut h, &first, "pilot ended"), 0);
    assert_eq!(status(d, &task), "processing");
    assert!(error_stats(d, &task).is_empty());
}

fn removing_an_unknown_pilot_changes_nothing(d: &TestDb) {
    let mut h = d.start(SITE);
    let (pilot_id, key) = create_pilot(&mut h);
    assert_eq!(remove_pilot(&mut h, "no-such-pilot", "gone"), 0);
    assert_eq!(remove_pilot(&mut h, "", "gone"), 0);
    assert_eq!(remove_pilot(&mut h, &pilot_id, "gone"), 0);
    // Twice is the same as once.
    assert_eq!(remove_pilot(&mut h, &pilot_id, "gone"), 0);
    assert!(matches!(
        new_task(&mut h, &key, slot(1, 0, 1.0)),
        Err(CallError::Forbidden(_))
    ));
}

fn pilot_demand_counts_queued_lookup_tasks_by_shape_largest_first(d: &TestDb) {
    let mut h = d.start(SITE);
    dataset_with(&mut h, d, json!({"cpu": 1, "memory": 2}), 3, false);
    dataset_with(&mut h, d, json!({"cpu": 4, "memory": 1}), 2, false);
    dataset_with(&mut h, d, json!({"gpu": 1, "memory": 1}), 1, false);
    let stale = dataset_with(&mut h, d, json!({"cpu": 2, "memory": 3}), 1, false).remove(0);
    let queued = queue_on(&mut h, GRID, 10, true);
    assert_eq!(queued.len(), 7);
    // A task reset by hand leaves its lookup row behind; it is not demand.
    change(&mut h, &stale, TaskEvent::ManualReset);
    let demand = match db(
        &mut h,
        DbRequest::PilotDemand {
            gridspec: GRID.into(),
        },
    )
    .unwrap()
    {
        DbReply::Demand(demand) => demand,
        other => panic!("{other:?}"),
    };
    let shape = |cpu, gpu, memory| Resources {
        cpu,
        gpu,
        memory,
        ..queued[0].requirements
    };
    assert_eq!(
        demand,
        [
            (shape(1, 1, 1.0), 1),
            (shape(4, 0, 1.0), 2),
            (shape(1, 0, 2.0), 3),
        ]
    );
    assert_eq!(
        db(
            &mut h,
            DbRequest::PilotDemand {
                gridspec: OTHER_GRID.into()
            }
        )
        .unwrap(),
        DbReply::Demand(vec![])
    );
}

fn orphaned_pilot_tasks_are_reset_and_direct_mode_tasks_left_alone(d: &TestDb) {
    let mut h = d.start(SITE);
    dataset(&mut h, d, 4);
    let direct = queue(&mut h, 1).remove(0);
    change(&mut h, &direct, TaskEvent::Start);
    queue_on(&mut h, GRID, 3, true);
    let (pilot_id, key) = create_pilot(&mut h);
    let handed = new_task(&mut h, &key, slot(2, 0, 8.0)).unwrap();
    assert_eq!(handed.len(), 2);
    assert_eq!(rows(&mut h, DbRequest::ResetOrphanedPilotTasks), 0);
    // The pilot no longer lists the second task (it lost it without saying so).
    update_pilot(&mut h, &key, &pilot_id, vec![handed[0].clone()]);
    assert_eq!(rows(&mut h, DbRequest::ResetOrphanedPilotTasks), 1);
    assert_eq!(status(d, &handed[0]), "processing");
    assert_eq!(status(d, &handed[1]), "reset");
    assert_eq!(failures(d, &handed[1]), 0);
    assert_eq!(error_stats(d, &handed[1]).len(), 1);
    // The direct-mode task is in no pilot's list and is not a pilot's.
    assert_eq!(status(d, &direct), "processing");
    // A removed pilot's tasks are reset by the removal, not twice.
    d.exec(
        "DELETE FROM pilot WHERE pilot_id = ?",
        args![pilot_id.as_str()],
    );
    assert_eq!(rows(&mut h, DbRequest::ResetOrphanedPilotTasks), 1);
    assert_eq!(status(d, &handed[0]), "reset");
    assert_eq!(rows(&mut h, DbRequest::ResetOrphanedPilotTasks), 0);
    assert_eq!(status(d, &direct), "processing");
}

fn oversize_tasks_are_suspended_with_the_reason(d: &TestDb) {
    let grids =
        "[queue.grids.small]\ntype = \"local\"\nresources = { cpu = 4, memory = 8.0, gpu = 1 }\n\
                 [queue.grids.big]\ntype = \"local\"\nresources = { cpu = 8, memory = 16.0 }\n";
    let mut h = d.start(&format!("{SITE}{grids}"));
    let fits = dataset_with(
        &mut h,
        d,
        json!({"cpu": 8, "gpu": 1, "memory": 16}),
        2,
        false,
    );
    let memory = dataset_with(&mut h, d, json!({"memory": 64}), 2, false);
    let cpu = dataset_with(&mut h, d, json!({"cpu": 12}), 1, false).remove(0);
    // A queued oversize task is the grid's affair, not this job's.
    let queued = queue_on(&mut h, GRID, 1, false).remove(0).task_id;
    assert_eq!(queued, fits[0]);
    d.exec(
        "UPDATE task SET requirements = ? WHERE task_id = ?",
        args![json!({"memory": 64}).to_string(), queued.as_str()],
    );
    // One of the large ones waits (assigned to this site), the other is idle.
    change(&mut h, &memory[0], TaskEvent::TakeFromMaster);

    assert_eq!(rows(&mut h, DbRequest::SuspendOversizeTasks), 3);
    for task in &memory {
        assert_eq!(status(d, task), "suspended");
        let stats = error_stats(d, task);
        assert_eq!(stats.len(), 1, "{stats:?}");
        assert_eq!(
            stats[0]["error_summary"],
            "asks for 64 GB memory; the largest grid offers 16 GB"
        );
    }
    assert_eq!(
        error_stats(d, &cpu)[0]["error_summary"],
        "asks for 12 cpus; the largest grid offers 8"
    );
    assert_eq!(status(d, &fits[1]), "idle");
    assert_eq!(status(d, &queued), "queued");
    assert_eq!(rows(&mut h, DbRequest::SuspendOversizeTasks), 0);
}

fn scheduled_messages_reach_the_orphan_and_oversize_operations(d: &TestDb) {
    use iceprod_runtime::{ModuleKind, Reply, Request, ScheduledMessage};
    let mut h = d.start(SITE);
    let big = dataset_with(&mut h, d, json!({"memory": 1000}), 1, false).remove(0);
    for message in [
        ScheduledMessage::ResetOrphanedPilotTasks,
        ScheduledMessage::SuspendOversize,
    ] {
        let reply = h
            .call(
                ModuleKind::Db,
                Request::Scheduled {
                    message,
                    job: String::new(),
                },
                support::WAIT,
            )
            .unwrap();
        assert!(matches!(reply, Reply::Db(DbReply::Rows(_))), "{reply:?}");
    }
    assert_eq!(status(d, &big), "suspended");
}
