//! One queue cycle (SPEC §6), as a chain of callbacks on the queue's loop.
//!
//! 1. Site step, once per cycle: `RecycleTasks` (reset → waiting, resume → idle), then
//!    `BufferJobs` (`[queue] task_buffer` jobs).
//! 2. Per grid, all grids at once: read the grid's tasks (and pilots) from the db
//!    (`GridTasks`), ask the grid about their jobs (status query, step by step), and
//!    **reconcile**: a job the grid ended or failed while its task did not report resets the
//!    task as an error (failures + 1, the grid's reason recorded); a job the grid no longer
//!    knows resets it as lost once `[queue] lost_grace` passed. A status query that fails
//!    changes nothing.
//! 3. Reset stuck tasks (`ResetStuckTasks`, the grid's `max_task_*_time`) and remove their
//!    jobs from the grid.
//! 4. When the site step is done: queue `tasks_on_queue.to_submit(queued, processing)` tasks
//!    (`QueueTasks`), write each submit folder and submit it, and record the grid id
//!    (`SetGridId`). In pilot mode the tasks go to the lookup and pilots are submitted for
//!    the demand within `pilots_on_queue`. A submission that fails resets its task (lost,
//!    failures unchanged) so the next cycle retries it; its error is kept for the operator.
//! 5. The cycle ends when every grid's submissions are recorded; the next one starts an
//!    interval later (at once if one was asked for meanwhile).
//!
//! Every step is bounded (db calls by their deadline, tools by `command_timeout`); a watchdog
//! ([`abandon`]) still ends a cycle that waits far longer, so one stuck worker cannot stop
//! queueing for good. Db answers carry their cycle ([`step`]) and are dropped once it ended.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use iceprod_runtime::states::{TaskEvent, TaskStatus};
use iceprod_runtime::{
    Call, CallError, Context, DbRequest, GridReset, GridTask, QueuedTask, Reply, ReplyTo,
    Resources, StuckLimits, TimerId,
};

use crate::grids::{GridJobState, GridStatus};
use crate::runner::{Work, WorkTag};
use crate::submit::{self, PILOT_CONFIG, TASK_CONFIG};
use crate::{Backend, Queue};

/// Tasks made ready again per cycle (`RecycleTasks`).
const RECYCLE_MAX: u32 = 10_000;

/// The cycle in flight.
pub struct ActiveCycle {
    pub id: u64,
    pub started: Instant,
    pub grids_left: usize,
    pub site_ready: bool,
    /// Grids waiting for the site step before they queue.
    pub parked: Vec<usize>,
    /// `RunCycle` callers, answered when the cycle ends.
    pub waiters: Vec<ReplyTo>,
    /// Ends the cycle if it is still running then (see [`abandon`]).
    pub watchdog: TimerId,
}

/// A db call made by a step of cycle `cycle`: its callback runs only while that cycle is
/// still the active one, so the late answers of a cycle the watchdog abandoned change
/// nothing in the cycle that followed.
fn step<R, F>(cx: &mut Context<Queue>, cycle: u64, call: Call<R>, callback: F)
where
    R: 'static,
    F: FnOnce(&mut Queue, &mut Context<Queue>, Result<R, CallError>) + 'static,
{
    cx.call_typed(call, move |q: &mut Queue, cx, result| {
        if current(q) == cycle {
            callback(q, cx, result);
        } else {
            log::debug!("queue: an answer for abandoned cycle {cycle} dropped");
        }
    });
}

/// Seconds since an RFC 3339 stamp; `None` when it does not parse.
fn age(stamp: &str) -> Option<Duration> {
    let t = chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds();
    Some(Duration::from_millis(secs.max(0) as u64))
}

/// How long a cycle may run before the watchdog abandons it: every step of it is bounded (db
/// calls by their deadline, tools by `command_timeout`), so only a worker stuck in the file
/// system (a hung NFS submit folder) or lost to a bug gets here.
pub fn watchdog_limit(command_timeout: Duration) -> Duration {
    command_timeout * 20 + Duration::from_secs(60)
}

pub fn start(q: &mut Queue, cx: &mut Context<Queue>, waiters: Vec<ReplyTo>) {
    q.cycle += 1;
    let id = q.cycle;
    let watchdog = cx.set_timer(watchdog_limit(q.settings().command_timeout));
    q.active = Some(ActiveCycle {
        id,
        started: Instant::now(),
        grids_left: q.grids.len(),
        site_ready: false,
        parked: Vec::new(),
        waiters,
        watchdog,
    });
    log::debug!("queue: cycle {id} starts");
    step(
        cx,
        current(q),
        DbRequest::recycle_tasks(RECYCLE_MAX),
        |q: &mut Queue, cx, result| {
            if let Err(e) = result {
                log::warn!("queue: making reset tasks ready failed: {e}");
            }
            let max_jobs = q.settings().task_buffer;
            step(
                cx,
                current(q),
                DbRequest::buffer_jobs(max_jobs),
                |q: &mut Queue, cx, result| {
                    match result {
                        Ok((jobs, tasks)) if jobs > 0 => {
                            log::info!("queue: buffered {jobs} jobs ({tasks} tasks)")
                        }
                        Ok(_) => {}
                        Err(e) => log::warn!("queue: buffering jobs failed: {e}"),
                    }
                    site_ready(q, cx);
                },
            );
        },
    );
    for g in 0..q.grids.len() {
        read_grid(q, cx, g);
    }
    maybe_end(q, cx);
}

fn site_ready(q: &mut Queue, cx: &mut Context<Queue>) {
    let Some(active) = q.active.as_mut() else {
        return;
    };
    active.site_ready = true;
    let parked = std::mem::take(&mut active.parked);
    for g in parked {
        queue_tasks(q, cx, g);
    }
    maybe_end(q, cx);
}

fn current(q: &Queue) -> u64 {
    q.active.as_ref().map_or(0, |a| a.id)
}

fn grid_error(q: &mut Queue, g: usize, error: impl std::fmt::Display) {
    let grid = &mut q.grids[g];
    let message = error.to_string();
    log::warn!("queue: grid {}: {message}", grid.gridspec);
    grid.errors.push(message);
}

// ---- 2. read and reconcile ----

fn read_grid(q: &mut Queue, cx: &mut Context<Queue>, g: usize) {
    let grid = &mut q.grids[g];
    grid.tasks.clear();
    grid.pilots.clear();
    grid.ids.clear();
    grid.outputs.clear();
    grid.status.clear();
    grid.outstanding = 0;
    grid.queued_step_done = false;
    grid.finished = false;
    grid.errors.clear();
    let gridspec = grid.gridspec.clone();
    let pilot_mode = grid.config.submit_pilots;
    step(
        cx,
        current(q),
        DbRequest::grid_tasks(gridspec.clone()),
        move |q: &mut Queue, cx, result| match result {
            Ok(tasks) => {
                q.grids[g].tasks = tasks;
                if pilot_mode {
                    step(
                        cx,
                        current(q),
                        DbRequest::grid_pilots(gridspec),
                        move |q: &mut Queue, cx, result| {
                            match result {
                                Ok(pilots) => q.grids[g].pilots = pilots,
                                Err(e) => grid_error(q, g, format!("reading pilots: {e}")),
                            }
                            query_status(q, cx, g);
                        },
                    );
                } else {
                    query_status(q, cx, g);
                }
            }
            Err(e) => {
                grid_error(q, g, format!("reading the grid's tasks: {e}"));
                // Without the db's view nothing can be reconciled or counted this cycle.
                finish_grid(q, cx, g);
            }
        },
    );
}

fn query_status(q: &mut Queue, cx: &mut Context<Queue>, g: usize) {
    let grid = &mut q.grids[g];
    let mut seen = HashSet::new();
    let ids: Vec<String> = grid
        .tasks
        .iter()
        .filter_map(|t| t.grid_queue_id.clone())
        .chain(grid.pilots.iter().filter_map(|p| p.grid_queue_id.clone()))
        .filter(|id| seen.insert(id.clone()))
        .collect();
    grid.ids = ids;
    match &mut grid.backend {
        Backend::Local(local) => {
            grid.status = local.status(&grid.ids);
            reconcile(q, cx, g);
        }
        Backend::Batch(_) if grid.ids.is_empty() => reconcile(q, cx, g),
        Backend::Batch(_) => next_status_step(q, cx, g),
    }
}

fn next_status_step(q: &mut Queue, cx: &mut Context<Queue>, g: usize) {
    let timeout = q.settings().command_timeout;
    let cycle = current(q);
    let grid = &mut q.grids[g];
    let Backend::Batch(plugin) = &grid.backend else {
        return;
    };
    match plugin.status_step(&grid.ids, &grid.outputs) {
        Some(command) => q.runner.submit(Work {
            dir: None,
            files: Vec::new(),
            command: Some(command),
            timeout,
            tag: WorkTag::Status { grid: g, cycle },
        }),
        None => match plugin.parse_status(&grid.ids, &grid.outputs) {
            Ok(status) => {
                grid.status = status;
                reconcile(q, cx, g);
            }
            Err(e) => {
                grid_error(q, g, e);
                reset_stuck(q, cx, g);
            }
        },
    }
}

/// What the grid's view means for one task the db has on the grid.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Still waiting or running (or, in pilot mode, not a job of its own).
    Alive,
    /// Queued past the grace with no submission recorded (a crash between the two).
    Unrecorded,
    /// The grid ended, failed or forgot its job.
    Reset(GridReset),
}

/// Judges task `t` by the grid's `status`; `old`: its state is older than the lost grace.
fn judge_task(t: &GridTask, status: &GridStatus, old: bool, pilot_mode: bool) -> Verdict {
    let Some(id) = &t.grid_queue_id else {
        // In pilot mode a task has no job of its own: pilots are reconciled instead.
        return if !pilot_mode && old && t.status == TaskStatus::Queued {
            Verdict::Unrecorded
        } else {
            Verdict::Alive
        };
    };
    let (event, reason) = match status.get(id) {
        Some(GridJobState::Queued | GridJobState::Processing | GridJobState::Unknown) => {
            return Verdict::Alive
        }
        Some(GridJobState::Completed { exit_code }) => {
            let code = exit_code.map_or("unknown".to_string(), |c| c.to_string());
            (
                TaskEvent::Error,
                format!("grid job {id} ended (exit code {code}) without the task reporting"),
            )
        }
        Some(GridJobState::Error { reason }) => {
            (TaskEvent::Error, format!("grid job {id}: {reason}"))
        }
        None if old => (
            TaskEvent::Lost,
            format!("grid job {id} is no longer known to the grid"),
        ),
        None => return Verdict::Alive,
    };
    Verdict::Reset(GridReset {
        task_id: t.task_id.clone(),
        grid_queue_id: id.clone(),
        event,
        reason,
    })
}

/// Compares the db's tasks (and pilots) with the grid's jobs and resets what the grid ended,
/// failed or forgot.
fn reconcile(q: &mut Queue, cx: &mut Context<Queue>, g: usize) {
    let grace = q.settings().lost_grace;
    let grid = &mut q.grids[g];
    let pilot_mode = grid.config.submit_pilots;
    let mut resets = Vec::new();
    let mut unrecorded = Vec::new();
    let (mut queued, mut processing) = (0u64, 0u64);
    for t in &grid.tasks {
        let old = age(&t.status_changed).is_some_and(|a| a > grace);
        match judge_task(t, &grid.status, old, pilot_mode) {
            Verdict::Alive if t.status == TaskStatus::Queued => queued += 1,
            Verdict::Alive => processing += 1,
            Verdict::Unrecorded => unrecorded.push(t.task_id.clone()),
            Verdict::Reset(reset) => resets.push(reset),
        }
    }
    grid.alive_queued = queued;
    grid.alive_processing = processing;
    let mut ended_pilots = Vec::new();
    for p in &grid.pilots {
        let old = age(&p.submit_time).is_some_and(|a| a > grace);
        let reason = match &p.grid_queue_id {
            None if old => Some("the pilot's submission was never recorded".to_string()),
            None => None,
            Some(id) => match grid.status.get(id) {
                Some(GridJobState::Completed { exit_code }) => {
                    Some(format!("pilot job {id} ended (exit code {exit_code:?})"))
                }
                Some(GridJobState::Error { reason }) => Some(format!("pilot job {id}: {reason}")),
                None if old => Some(format!("pilot job {id} is no longer known to the grid")),
                _ => None,
            },
        };
        if let Some(reason) = reason {
            ended_pilots.push((p.pilot_id.clone(), reason));
        }
    }
    for task_id in unrecorded {
        step(
            cx,
            current(q),
            DbRequest::change_task_state(task_id.clone(), TaskEvent::Lost),
            move |_q: &mut Queue, _cx, result| match result {
                Ok(_) => log::info!(
                    "queue: task {task_id} was queued without a recorded submission; reset"
                ),
                Err(e) => log::debug!("queue: resetting unrecorded task {task_id}: {e}"),
            },
        );
    }
    for (pilot_id, reason) in ended_pilots {
        log::info!("queue: pilot {pilot_id} ended: {reason}");
        step(
            cx,
            current(q),
            DbRequest::remove_pilot(pilot_id, reason),
            move |q: &mut Queue, _cx, result| match result {
                Ok(n) => q.grids[g].report.reset += n,
                Err(e) => log::warn!("queue: removing a pilot failed: {e}"),
            },
        );
    }
    if resets.is_empty() {
        reset_stuck(q, cx, g);
        return;
    }
    for r in &resets {
        log::info!("queue: task {} reset: {}", r.task_id, r.reason);
    }
    step(
        cx,
        current(q),
        DbRequest::reset_grid_tasks(resets),
        move |q: &mut Queue, cx, result| {
            match result {
                Ok(n) => q.grids[g].report.reset += n,
                Err(e) => grid_error(q, g, format!("resetting tasks: {e}")),
            }
            reset_stuck(q, cx, g);
        },
    );
}

// ---- 3. stuck tasks ----

fn reset_stuck(q: &mut Queue, cx: &mut Context<Queue>, g: usize) {
    let grid = &q.grids[g];
    let limits = StuckLimits {
        waiting: grid.config.max_task_waiting_time,
        queued: grid.config.max_task_queued_time,
        processing: grid.config.max_task_processing_time,
    };
    let gridspec = grid.gridspec.clone();
    step(
        cx,
        current(q),
        DbRequest::reset_stuck_tasks(gridspec, limits),
        move |q: &mut Queue, cx, result| {
            match result {
                Ok(n) => {
                    if n > 0 {
                        log::info!("queue: grid {}: {n} stuck tasks reset", q.grids[g].gridspec);
                    }
                    q.grids[g].report.reset += n;
                    // The grid stops spending on them. Ages are taken now, after the db
                    // judged: every task it reset is past its limit here too.
                    let stuck = stuck_jobs(&q.grids[g].tasks, &limits);
                    if !stuck.is_empty() {
                        remove_jobs(q, g, stuck);
                    }
                }
                Err(e) => grid_error(q, g, format!("resetting stuck tasks: {e}")),
            }
            let site_ready = q.active.as_ref().is_some_and(|a| a.site_ready);
            if site_ready {
                queue_tasks(q, cx, g);
            } else if let Some(active) = q.active.as_mut() {
                active.parked.push(g);
            }
        },
    );
}

/// The grid jobs of the tasks that are past their state's limit at this moment.
fn stuck_jobs(tasks: &[GridTask], limits: &StuckLimits) -> Vec<String> {
    tasks
        .iter()
        .filter(|t| {
            let limit = match t.status {
                TaskStatus::Queued => limits.queued,
                _ => limits.processing,
            };
            age(&t.status_changed).is_some_and(|a| a > limit)
        })
        .filter_map(|t| t.grid_queue_id.clone())
        .collect()
}

fn remove_jobs(q: &mut Queue, g: usize, ids: Vec<String>) {
    let timeout = q.settings().command_timeout;
    let grid = &mut q.grids[g];
    match &mut grid.backend {
        Backend::Local(local) => local.remove(&ids),
        Backend::Batch(plugin) => {
            if let Some(command) = plugin.remove_command(&ids) {
                q.runner.submit(Work {
                    dir: None,
                    files: Vec::new(),
                    command: Some(command),
                    timeout,
                    tag: WorkTag::Remove { grid: g },
                });
            }
        }
    }
}

// ---- 4. queue and submit ----

fn queue_tasks(q: &mut Queue, cx: &mut Context<Queue>, g: usize) {
    if q.stopping() {
        finish_grid(q, cx, g);
        return;
    }
    let grid = &q.grids[g];
    let (queued, processing) = match &grid.backend {
        // The local grid knows exactly; the db snapshot may trail its starts and exits.
        Backend::Local(local) if !grid.config.submit_pilots => {
            let (w, r) = local.counts();
            (w as u64, r as u64)
        }
        _ => (grid.alive_queued, grid.alive_processing),
    };
    let num = grid.config.tasks_on_queue.to_submit(queued, processing);
    let pilot_mode = grid.config.submit_pilots;
    if num == 0 {
        if pilot_mode {
            submit_pilots(q, cx, g);
        } else {
            q.grids[g].queued_step_done = true;
            maybe_finish_grid(q, cx, g);
        }
        return;
    }
    let call = DbRequest::queue_tasks(
        grid.gridspec.clone(),
        num,
        grid.config.resources.into(),
        pilot_mode,
    );
    step(cx, current(q), call, move |q: &mut Queue, cx, result| {
        match result {
            Ok(tasks) => {
                if !tasks.is_empty() {
                    log::info!(
                        "queue: grid {}: queued {} tasks",
                        q.grids[g].gridspec,
                        tasks.len()
                    );
                }
                if pilot_mode {
                    submit_pilots(q, cx, g);
                    return;
                }
                for task in tasks {
                    submit_task(q, g, task);
                }
            }
            Err(e) => grid_error(q, g, format!("queueing tasks: {e}")),
        }
        q.grids[g].queued_step_done = true;
        maybe_finish_grid(q, cx, g);
    });
}

fn submit_task(q: &mut Queue, g: usize, task: QueuedTask) {
    let Some(passkey) = task.passkey.as_deref() else {
        log::error!(
            "queue: task {} was queued in direct mode without a passkey",
            task.task_id
        );
        return;
    };
    let cycle = current(q);
    let grid = &q.grids[g];
    let dir = submit::folder(q.submit_dir(), &grid.config.name, &task.task_id);
    let job = submit::task_job(
        q.setup(),
        dir.clone(),
        &task.task_id,
        passkey,
        task.requirements,
    );
    q.grids[g].outstanding += 1;
    send_submission(
        q,
        g,
        cycle,
        &job,
        (TASK_CONFIG, &task.config),
        task.task_id,
        false,
    );
}

/// Hands a submission to the command workers: its folder, config file and batch file, then
/// the grid's submit command (none for the local grid, which starts `job.sh` itself).
fn send_submission(
    q: &mut Queue,
    g: usize,
    cycle: u64,
    job: &crate::grids::SubmitJob,
    (config_name, config): (&str, &serde_json::Value),
    id: String,
    pilot: bool,
) {
    let plugin = match &q.grids[g].backend {
        Backend::Batch(p) => Some(p.as_ref()),
        Backend::Local(_) => None,
    };
    let (files, command) = submit::files_and_command(plugin, q.setup(), job, config_name, config);
    let timeout = q.settings().command_timeout;
    q.runner.submit(Work {
        dir: Some(job.dir.clone()),
        files,
        command,
        timeout,
        tag: WorkTag::Submit {
            grid: g,
            cycle,
            id,
            pilot,
            dir: job.dir.clone(),
        },
    });
}

fn submit_pilots(q: &mut Queue, cx: &mut Context<Queue>, g: usize) {
    let gridspec = q.grids[g].gridspec.clone();
    step(
        cx,
        current(q),
        DbRequest::pilot_demand(gridspec.clone()),
        move |q: &mut Queue, cx, result| {
            let shapes = match result {
                Ok(shapes) => shapes,
                Err(e) => {
                    grid_error(q, g, format!("reading the pilot demand: {e}"));
                    Vec::new()
                }
            };
            let grid = &q.grids[g];
            let (mut queued, mut running) = (0u64, 0u64);
            for p in &grid.pilots {
                match p.grid_queue_id.as_ref().and_then(|id| grid.status.get(id)) {
                    Some(GridJobState::Queued) => queued += 1,
                    Some(GridJobState::Processing) => running += 1,
                    // Just submitted (not yet listed) counts as queued.
                    None if p.grid_queue_id.is_none() => queued += 1,
                    _ => {}
                }
            }
            let demand: u64 = shapes.iter().map(|(_, n)| n).sum();
            // Pilots on the queue already serve part of the demand.
            let unserved = demand.saturating_sub(queued);
            let budget = u64::from(grid.config.pilots_on_queue.to_submit(queued, running));
            let longest = grid.config.resources.time;
            for (shape, n) in pilots_by_shape(&shapes, budget.min(unserved)) {
                // A pilot lives as long as the grid allows and pulls more tasks as each ends;
                // sized to its task's time alone it could never take it (its time left
                // shrinks from the start).
                let requirements = Resources {
                    time: shape.time.max(longest),
                    ..shape
                };
                for _ in 0..n {
                    q.grids[g].outstanding += 1;
                    create_pilot(q, cx, g, gridspec.clone(), requirements);
                }
            }
            q.grids[g].queued_step_done = true;
            maybe_finish_grid(q, cx, g);
        },
    );
}

/// SPEC §6: pilots are submitted per resource shape of the waiting tasks, largest shape
/// first (the order the db gives), up to `budget` in all and at most one per waiting task of
/// that shape. A pilot asks for its shape (and the grid's longest time); when its task ends
/// it pulls more that fit.
pub fn pilots_by_shape(shapes: &[(Resources, u64)], budget: u64) -> Vec<(Resources, u64)> {
    let mut left = budget;
    let mut out = Vec::new();
    for (shape, waiting) in shapes {
        let n = (*waiting).min(left);
        if n > 0 {
            out.push((*shape, n));
            left -= n;
        }
    }
    out
}

fn create_pilot(
    q: &mut Queue,
    cx: &mut Context<Queue>,
    g: usize,
    gridspec: String,
    resources: Resources,
) {
    step(
        cx,
        current(q),
        DbRequest::create_pilot(gridspec.clone(), resources),
        move |q: &mut Queue, cx, result| match result {
            Ok((pilot_id, passkey)) => {
                let cycle = current(q);
                let grid = &q.grids[g];
                let dir = submit::folder(
                    q.submit_dir(),
                    &grid.config.name,
                    &format!("pilot-{pilot_id}"),
                );
                let job = submit::pilot_job(q.setup(), dir.clone(), &pilot_id, &passkey, resources);
                let config = submit::pilot_config(&pilot_id, &gridspec, &resources);
                send_submission(q, g, cycle, &job, (PILOT_CONFIG, &config), pilot_id, true);
            }
            Err(e) => {
                grid_error(q, g, format!("creating a pilot: {e}"));
                submission_recorded(q, cx, g);
            }
        },
    );
}

/// A command worker finished: a status step, a submission or a removal.
pub fn work_done(q: &mut Queue, cx: &mut Context<Queue>, done: crate::runner::Done) {
    match done.tag {
        WorkTag::Status { grid: g, cycle } => {
            if cycle != current(q) || g >= q.grids.len() {
                return;
            }
            match done.result {
                Ok(Some(output)) => {
                    q.grids[g].outputs.push(output);
                    next_status_step(q, cx, g);
                }
                Ok(None) => next_status_step(q, cx, g),
                Err(e) => {
                    grid_error(q, g, e);
                    // The grid could not be read: no task is judged by it this cycle.
                    reset_stuck(q, cx, g);
                }
            }
        }
        WorkTag::Remove { grid: g } => match done.result {
            Ok(Some(out)) if !out.success() => grid_error(q, g, out.exit_error()),
            Err(e) => grid_error(q, g, e),
            _ => {}
        },
        WorkTag::Submit {
            grid: g,
            cycle,
            id,
            pilot,
            dir,
        } => submitted(q, cx, (g, cycle), id, pilot, dir, done.result),
    }
}

/// A submission came back. `cycle` is the one that made it: a submission that completes
/// after its cycle was abandoned still gets its grid id recorded, but counts in no cycle.
fn submitted(
    q: &mut Queue,
    cx: &mut Context<Queue>,
    (g, cycle): (usize, u64),
    id: String,
    pilot: bool,
    dir: std::path::PathBuf,
    result: Result<Option<crate::grids::CommandOutput>, crate::QueueError>,
) {
    let grid = &mut q.grids[g];
    let grid_id = match (&mut grid.backend, result) {
        (Backend::Local(local), Ok(None)) => Ok(local.submit(dir.clone())),
        (Backend::Batch(plugin), Ok(Some(out))) => {
            if out.success() {
                plugin.parse_submit(&out).and_then(|ids| {
                    ids.into_iter().next().ok_or_else(|| {
                        crate::QueueError::parse(&out.program, "no job id in the output")
                    })
                })
            } else {
                Err(out.exit_error())
            }
        }
        (_, Ok(_)) => Err(crate::QueueError::Io {
            what: "submitting".into(),
            message: "the submission ran no command".into(),
        }),
        (_, Err(e)) => Err(e),
    };
    let dir_text = dir.to_string_lossy().into_owned();
    match grid_id {
        Ok(grid_queue_id) => {
            q.grids[g].report.submitted += 1;
            let call = if pilot {
                DbRequest::set_pilot_grid_id(id.clone(), grid_queue_id, dir_text)
            } else {
                DbRequest::set_grid_id(id.clone(), grid_queue_id, dir_text)
            };
            step(cx, cycle, call, move |q: &mut Queue, cx, result| {
                if let Err(e) = result {
                    log::warn!("queue: recording the grid id of {id} failed: {e}");
                }
                submission_recorded(q, cx, g);
            });
        }
        Err(e) => {
            grid_error(q, g, format!("submitting {id}: {e}"));
            // Back to be retried at the next cycle; a site problem costs no failure.
            // Only whether it worked matters here.
            let call = if pilot {
                DbRequest::remove_pilot(id, format!("submission failed: {e}")).ignoring_reply()
            } else {
                DbRequest::change_task_state(id, TaskEvent::Lost).ignoring_reply()
            };
            step(cx, cycle, call, move |q: &mut Queue, cx, result| {
                if let Err(e) = result {
                    log::warn!("queue: resetting after a failed submission: {e}");
                }
                submission_recorded(q, cx, g);
            });
        }
    }
}

fn submission_recorded(q: &mut Queue, cx: &mut Context<Queue>, g: usize) {
    let grid = &mut q.grids[g];
    grid.outstanding = grid.outstanding.saturating_sub(1);
    maybe_finish_grid(q, cx, g);
}

// ---- 5. the end ----

fn maybe_finish_grid(q: &mut Queue, cx: &mut Context<Queue>, g: usize) {
    let grid = &q.grids[g];
    if grid.queued_step_done && grid.outstanding == 0 {
        // Only once per cycle: mark the step consumed.
        q.grids[g].queued_step_done = false;
        finish_grid(q, cx, g);
    }
}

fn finish_grid(q: &mut Queue, cx: &mut Context<Queue>, g: usize) {
    let grid = &mut q.grids[g];
    if grid.finished {
        return;
    }
    grid.finished = true;
    let now = chrono::Utc::now().to_rfc3339();
    let report = &mut grid.report;
    report.queued = grid
        .tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Queued)
        .count() as u64;
    report.processing = grid.tasks.len() as u64 - report.queued;
    report.cycles += 1;
    report.last_cycle = Some(now.clone());
    if grid.errors.is_empty() {
        report.last_error = None;
        report.last_error_at = None;
    } else {
        report.last_error = Some(grid.errors.join("; "));
        report.last_error_at = Some(now);
    }
    cx.stats()
        .set_grid_report(&grid.config.name, report.clone());
    if let Some(active) = q.active.as_mut() {
        active.grids_left = active.grids_left.saturating_sub(1);
    }
    maybe_end(q, cx);
}

/// The watchdog fired: the cycle still waits for something that does not come. Every grid
/// not done yet ends with the error in its report, and the next cycle starts afresh; answers
/// for this cycle that come later are dropped (see [`step`]), while a submission that still
/// completes gets its grid id recorded all the same.
pub fn abandon(q: &mut Queue, cx: &mut Context<Queue>) {
    let Some(active) = q.active.as_mut() else {
        return;
    };
    let message = format!(
        "queue cycle {} abandoned after {} s: a grid command or a submit folder write did \
         not return",
        active.id,
        active.started.elapsed().as_secs()
    );
    active.site_ready = true;
    active.parked.clear();
    log::error!("queue: {message}");
    for g in 0..q.grids.len() {
        if !q.grids[g].finished {
            grid_error(q, g, &message);
            finish_grid(q, cx, g);
        }
    }
    maybe_end(q, cx);
}

fn maybe_end(q: &mut Queue, cx: &mut Context<Queue>) {
    let done = q
        .active
        .as_ref()
        .is_some_and(|a| a.site_ready && a.grids_left == 0);
    if !done {
        return;
    }
    let Some(active) = q.active.take() else {
        return;
    };
    cx.cancel_timer(active.watchdog);
    log::debug!(
        "queue: cycle {} ended in {:?}",
        active.id,
        active.started.elapsed()
    );
    for w in active.waiters {
        w.send(Ok(Reply::Done));
    }
    match q.again.take() {
        Some(waiters) if !q.stopping() => start(q, cx, waiters),
        Some(waiters) => {
            for w in waiters {
                w.send(Err(CallError::Refused("the queue is stopping".into())));
            }
        }
        None => q.schedule_next(cx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(cpu: u32, gpu: u32) -> Resources {
        Resources {
            cpu,
            gpu,
            memory: 1.0,
            disk: 1.0,
            time: 1.0,
        }
    }

    fn task(status: TaskStatus, grid_queue_id: Option<&str>) -> GridTask {
        GridTask {
            task_id: "t".into(),
            status,
            grid_queue_id: grid_queue_id.map(str::to_string),
            submit_dir: None,
            status_changed: String::new(),
        }
    }

    #[test]
    fn a_task_is_judged_by_its_job_and_only_forgotten_jobs_wait_for_the_grace() {
        let status = GridStatus::from([
            ("q".to_string(), GridJobState::Queued),
            (
                "done".to_string(),
                GridJobState::Completed { exit_code: Some(0) },
            ),
            (
                "held".to_string(),
                GridJobState::Error {
                    reason: "held: over memory".into(),
                },
            ),
        ]);
        let judge = |t: &GridTask, old| judge_task(t, &status, old, false);
        let event = |v: Verdict| match v {
            Verdict::Reset(r) => Some((r.event, r.reason)),
            _ => None,
        };
        assert_eq!(
            judge(&task(TaskStatus::Processing, Some("q")), true),
            Verdict::Alive
        );
        let (e, why) = event(judge(&task(TaskStatus::Processing, Some("done")), false)).unwrap();
        assert_eq!(e, TaskEvent::Error);
        assert!(why.contains("without the task reporting"), "{why}");
        let (e, why) = event(judge(&task(TaskStatus::Queued, Some("held")), false)).unwrap();
        assert_eq!(e, TaskEvent::Error);
        assert!(why.contains("over memory"), "{why}");
        // Forgotten: lost, but only after the grace.
        assert_eq!(
            judge(&task(TaskStatus::Queued, Some("gone")), false),
            Verdict::Alive
        );
        let (e, _) = event(judge(&task(TaskStatus::Queued, Some("gone")), true)).unwrap();
        assert_eq!(e, TaskEvent::Lost);
        // No recorded submission: retried after the grace, never in pilot mode.
        assert_eq!(
            judge(&task(TaskStatus::Queued, None), true),
            Verdict::Unrecorded
        );
        assert_eq!(
            judge(&task(TaskStatus::Queued, None), false),
            Verdict::Alive
        );
        assert_eq!(
            judge_task(&task(TaskStatus::Queued, None), &status, true, true),
            Verdict::Alive
        );
    }

    #[test]
    fn pilots_go_to_the_largest_shapes_first_within_the_budget() {
        let shapes = [(shape(1, 1), 2), (shape(4, 0), 1), (shape(1, 0), 5)];
        assert_eq!(
            pilots_by_shape(&shapes, 4),
            vec![(shape(1, 1), 2), (shape(4, 0), 1), (shape(1, 0), 1)]
        );
        assert_eq!(pilots_by_shape(&shapes, 0), vec![]);
        assert_eq!(
            pilots_by_shape(&shapes, 100),
            vec![(shape(1, 1), 2), (shape(4, 0), 1), (shape(1, 0), 5)]
        );
        assert_eq!(pilots_by_shape(&[], 5), vec![]);
    }
}
