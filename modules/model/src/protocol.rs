//! What modules ask each other and answer: the requests of every module and their replies,
//! the module kinds, and why a call can fail. Only typed values cross threads: no closures, no
//! JSON. How they travel (mailboxes, reply handles, the controller's messages) is the runtime's
//! business (`iceprod_runtime::messages`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::states::{TaskEvent, TaskStatus, Transition};
use crate::web::{AccountReply, AccountRequest, PageData, PageQuery, UserAuth};

/// The modules a server can run, in start order (db first; schedule last because it only sends).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleKind {
    /// The database: every read and write of the site's state goes through it.
    Db,
    /// A client site's link to its master (DESIGN §5); not in this build yet.
    Master,
    /// The grids: queues tasks and pilots, reconciles what each grid holds.
    Queue,
    /// The caching proxy for the workers' downloads (DESIGN §5); not in this build yet.
    Proxy,
    /// HTTP: the JSON-RPC methods, the pages, `/healthz` and `/metrics`.
    Website,
    /// The `[schedule]` jobs: sends each job's message to its target when it fires.
    Schedule,
}

impl ModuleKind {
    /// How many kinds of module there are (the size of per-module tables).
    pub const COUNT: usize = 6;

    /// Every module, in start order.
    pub const ALL: [ModuleKind; ModuleKind::COUNT] = [
        ModuleKind::Db,
        ModuleKind::Master,
        ModuleKind::Queue,
        ModuleKind::Proxy,
        ModuleKind::Website,
        ModuleKind::Schedule,
    ];

    /// The module's name in the config, the CLI, logs and thread names (`db`, `queue`, …).
    pub fn name(self) -> &'static str {
        match self {
            ModuleKind::Db => "db",
            ModuleKind::Master => "master",
            ModuleKind::Queue => "queue",
            ModuleKind::Proxy => "proxy",
            ModuleKind::Website => "website",
            ModuleKind::Schedule => "schedule",
        }
    }

    /// The module named `name` (as [`ModuleKind::name`] spells it); `None` for no module.
    pub fn from_name(name: &str) -> Option<ModuleKind> {
        ModuleKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Position in [`ModuleKind::ALL`], for per-module arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Requests a module can receive. Module-specific enums join here as their modules arrive.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Any module: answer [`Reply::Pong`] (liveness checks, tests, the RPC benchmark).
    Ping,
    /// Any module: the `[schedule]` job `job` fired with `message`.
    Scheduled {
        /// The job's name, the key of its `[schedule.jobs.NAME]` table.
        job: String,
        /// What the job asks its target to do.
        message: ScheduledMessage,
    },
    /// To the db module.
    Db(DbRequest),
    /// To the queue module.
    Queue(QueueRequest),
}

/// Requests to the queue module.
#[derive(Clone, Debug, PartialEq)]
pub enum QueueRequest {
    /// Runs a queue cycle for every grid now (tests, drills); answers `Done` once every
    /// grid's cycle has ended, whatever its outcome (errors are kept in the grid reports).
    RunCycle,
}

/// Requests to the db module. Each is one transaction; writes are answered after commit.
#[derive(Clone, Debug, PartialEq)]
pub enum DbRequest {
    /// Counts tasks by status, of one dataset (by id) or of all.
    TaskCounts {
        /// The dataset's global id; `None` counts every live dataset.
        dataset_id: Option<String>,
    },
    /// Moves a task through `states::transition`, recording `prev_status` and the time.
    ChangeTaskState {
        /// The task's global id.
        task_id: String,
        /// What happened to the task; `states::transition` decides where it moves.
        event: TaskEvent,
    },
    /// Issues a passkey bound to `scope` and `subject`, valid for `ttl`.
    IssuePasskey {
        /// What kind of holder the key is for.
        scope: PasskeyScope,
        /// Whom the key acts as: the task, pilot or user id (see [`PasskeyScope`]).
        subject: String,
        /// How long from now the key stays valid.
        ttl: Duration,
    },
    /// Answers whom a passkey belongs to, if it is known, unexpired and not revoked.
    VerifyPasskey {
        /// The passkey as its holder sent it.
        key: String,
    },
    /// Revokes every passkey of `scope` and `subject`, effective for the next verify.
    RevokePasskeys {
        /// The kind of holder whose keys go.
        scope: PasskeyScope,
        /// The task, pilot or user id whose keys go.
        subject: String,
    },
    /// A new dataset (SPEC §4 data flow step 1): config, task_rels with their dependencies
    /// resolved (to other datasets too); no jobs yet. Answers `DbReply::Dataset`.
    SubmitDataset(Box<DatasetSubmission>),
    /// Creates up to `max_jobs` whole jobs (job + its tasks, dependencies resolved to task
    /// ids, requirements evaluated per job) for processing datasets. Answers `Buffered`.
    BufferJobs {
        /// The most jobs this request creates, over every dataset.
        max_jobs: u32,
    },
    /// A person's action (SPEC §5.3), authorised by their user passkey or website session
    /// in the same transaction: owners act on their datasets, admins on all.
    AsUser {
        /// Who acts: a user passkey, or a website session with its CSRF token.
        auth: UserAuth,
        /// What the person does; on a dataset only its owner or an admin may act.
        action: UserAction,
    },
    /// Accounts, sessions, groups and roles (the website, SPEC §7).
    Account(AccountRequest),
    /// The data behind one page of the website (SPEC §7). Read-only.
    Page(PageQuery),
    /// Picks up to `num` tasks for grid `gridspec` (SPEC §6: dependencies complete,
    /// requirements within `largest`, datasets round-robin by priority), issues each a task
    /// passkey (or, with `pilot_mode`, puts it in the pilot lookup) and marks it queued.
    /// Answers `DbReply::Queued`.
    QueueTasks {
        /// The grid (`SITEID.NAME`) the tasks are queued for.
        gridspec: String,
        /// The most tasks to pick.
        num: u32,
        /// The grid's largest slot: a 0 means unlimited, but 0 gpus takes no gpu task.
        largest: Resources,
        /// The grid runs pilots: tasks go to the pilot lookup instead of getting a passkey.
        pilot_mode: bool,
    },
    /// Records that a queued task was submitted: its grid id and submit folder.
    SetGridId {
        /// The queued task's global id.
        task_id: String,
        /// The id the grid gave the job that runs the task.
        grid_queue_id: String,
        /// The folder the task's submit files were written to.
        submit_dir: String,
    },
    /// A new pilot row for `gridspec` with its requirements, and its pilot passkey.
    /// Answers `DbReply::Pilot`.
    CreatePilot {
        /// The grid (`SITEID.NAME`) the pilot is submitted to.
        gridspec: String,
        /// The slot the pilot asks its grid for.
        requirements: Resources,
    },
    /// `new_task` (SPEC §5.2): hands a pilot as many tasks of its grid from the lookup as
    /// fit `available` (gpu tasks only to pilots with gpus; best fit first; longest waiting
    /// first among equals), marks them processing and the pilot's own. Answers
    /// `DbReply::TaskConfigs` (empty when nothing fits).
    NewTask {
        /// The pilot's own passkey; it names the pilot.
        passkey: String,
        /// The grid the pilot runs on; empty means the pilot's own grid, another is refused.
        gridspec: String,
        /// What the pilot has left; `time` is the hours left, bounding each task.
        available: Resources,
        /// The worker's `OS_ARCH`; `None` (or empty) hands tasks whatever OS they ask for.
        os: Option<String>,
        /// The pilot's host, for the log.
        hostname: String,
    },
    /// `update_pilot` (SPEC §5.2).
    UpdatePilot {
        /// The pilot's own passkey; another pilot's is refused.
        passkey: String,
        /// The pilot that reports.
        pilot_id: String,
        /// The tasks it runs now; only those already handed to it are kept.
        tasks: Vec<String>,
        /// The resources it has left.
        available: Resources,
        /// The resources its running tasks hold.
        claimed: Resources,
    },
    /// Job and dataset completion by the rules of SPEC §4 (schedule job, hourly).
    CompleteJobsAndDatasets,
    /// Deletes passkeys (and sessions) past their expiry (schedule job, 6 h).
    RemoveExpired,
    /// Writes the `graph` rows of active tasks by state and of tasks completed since the
    /// last record (schedule job, 10 min).
    RecordGraphs,
    /// Moves the datasets that ended more than `[db] archive_after_days` before `now` (RFC
    /// 3339; the clock when `None`) to the archive, batch after batch, until none is left
    /// (SPEC §10; schedule job, daily). The db module drives it; answers `Rows(moved)`.
    Archive {
        /// The time the age of ended datasets is measured from (RFC 3339); `None`: the clock.
        now: Option<String>,
    },
    /// One batch of an archive run, one transaction (the db sends these to itself): finishes
    /// the moves copied earlier and copies up to `max` more datasets that ended before
    /// `cutoff`. Answers `DbReply::ArchiveBatch`.
    ArchiveBatch {
        /// The `end_date` (RFC 3339, as stored) before which a dataset moves.
        cutoff: String,
        /// The most datasets this batch starts copying.
        max: u32,
    },
    /// A read-only public query (SPEC §5.4).
    Public(PublicQuery),
    /// A worker's call about one task (SPEC §5.2), authorised in the same transaction: the
    /// passkey must be the task's own, or that of the pilot running it.
    Task {
        /// The worker's passkey: the task's own, or its pilot's.
        passkey: String,
        /// The task the call is about.
        task_id: String,
        /// Which task method the worker called, with its data.
        call: TaskCall,
    },
    /// The tasks a grid holds now: queued or processing with this `gridspec`, for the queue's
    /// reconciliation. Answers `DbReply::GridTasks`.
    GridTasks {
        /// The grid (`SITEID.NAME`).
        gridspec: String,
    },
    /// Resets tasks the grid lost, or reported ended, failed or held without the task
    /// reporting: each through `states::transition` with its event (`Lost`: failures
    /// unchanged; `Error`: counts a failure), and only while the task is still queued or
    /// processing under the grid id it was seen with, so a task re-queued or finished
    /// meanwhile is left alone. Each reason is recorded as a task_stat row with `error: true`.
    /// Answers `Rows(tasks reset)`.
    ResetGridTasks {
        /// One entry per task to reset, each with its event and reason.
        resets: Vec<GridReset>,
    },
    /// Resets (`Stuck`, failures unchanged) the tasks of `gridspec` that stayed longer than
    /// `limits` allows in waiting, queued or processing (SPEC §4). Answers `Rows`.
    ResetStuckTasks {
        /// The grid (`SITEID.NAME`) whose tasks are checked.
        gridspec: String,
        /// The grid's time limits per state.
        limits: StuckLimits,
    },
    /// Makes tasks ready again: reset → waiting (`Retry`) and resume → idle (`ReturnToPool`),
    /// at most `max` of each. Answers `Rows`.
    RecycleTasks {
        /// The most tasks moved from each of reset and resume, longest in their state first.
        max: u32,
    },
    /// The pilots of a grid. Answers `DbReply::Pilots`.
    GridPilots {
        /// The grid (`SITEID.NAME`).
        gridspec: String,
    },
    /// Records where a pilot was submitted.
    SetPilotGridId {
        /// The pilot, as `CreatePilot` answered it.
        pilot_id: String,
        /// The id the grid gave the pilot's job.
        grid_queue_id: String,
        /// The folder the pilot's submit files were written to.
        submit_dir: String,
    },
    /// A pilot ended or its grid lost it: deletes the pilot row, revokes its passkey, and
    /// resets (`Lost`) the tasks it still ran, recording `reason`. Answers `Rows(tasks reset)`.
    RemovePilot {
        /// The pilot; an unknown one changes nothing.
        pilot_id: String,
        /// Why it ended, a line a person can act on, kept in each reset task's stat row.
        reason: String,
    },
    /// Tasks waiting in the pilot lookup of `gridspec`, counted by resource shape, largest
    /// shape first. Answers `DbReply::Demand`.
    PilotDemand {
        /// The grid (`SITEID.NAME`).
        gridspec: String,
    },
    /// Resets (`Lost`) processing tasks handed to pilots that no pilot row lists any more
    /// (SPEC §9, every 30 min). Answers `Rows`.
    ResetOrphanedPilotTasks,
    /// Suspends idle and waiting tasks whose requirements exceed every grid of
    /// `[queue.grids]` (SPEC §9, every 2 min), so they do not wait forever. Answers `Rows`.
    SuspendOversizeTasks,
}

/// A task the queue found lost or ended on its grid (see `DbRequest::ResetGridTasks`).
#[derive(Clone, Debug, PartialEq)]
pub struct GridReset {
    /// The task's global id.
    pub task_id: String,
    /// The grid id the task had when the grid was read; the reset applies only if unchanged.
    pub grid_queue_id: String,
    /// `TaskEvent::Lost` or `TaskEvent::Error`.
    pub event: TaskEvent,
    /// One line a person can act on: the hold reason, the exit code, "lost by the grid".
    pub reason: String,
}

/// How long a task may stay in each state on a grid before it is reset (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StuckLimits {
    /// Longest in `waiting` (`max_task_waiting_time`).
    pub waiting: Duration,
    /// Longest in `queued` (`max_task_queued_time`).
    pub queued: Duration,
    /// Longest in `processing` (`max_task_processing_time`).
    pub processing: Duration,
}

/// A task a grid holds (see `DbRequest::GridTasks`).
#[derive(Clone, Debug, PartialEq)]
pub struct GridTask {
    /// The task's global id.
    pub task_id: String,
    /// `Queued` or `Processing`.
    pub status: TaskStatus,
    /// None until the submit was recorded (or while the task waits in the pilot lookup).
    pub grid_queue_id: Option<String>,
    /// The task's submit folder; `None` until the submit was recorded.
    pub submit_dir: Option<String>,
    /// When the task entered its status (RFC 3339).
    pub status_changed: String,
}

/// A pilot row (see `DbRequest::GridPilots`).
#[derive(Clone, Debug, PartialEq)]
pub struct PilotInfo {
    /// The pilot's local id.
    pub pilot_id: String,
    /// The id the grid gave the pilot's job; `None` until the submit was recorded.
    pub grid_queue_id: Option<String>,
    /// RFC 3339.
    pub submit_time: String,
    /// The slot the pilot asked its grid for.
    pub requirements: Resources,
    /// The tasks it runs now (by `new_task` and `update_pilot`).
    pub tasks: Vec<String>,
}

/// Resources of a slot, a pilot or a task: memory and disk in GB, time in hours.
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Resources {
    /// Cpu cores.
    pub cpu: u32,
    /// Gpus.
    pub gpu: u32,
    /// Memory, GB.
    pub memory: f64,
    /// Disk, GB.
    pub disk: f64,
    /// Wall time, hours.
    pub time: f64,
}

/// A task picked by `QueueTasks`.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedTask {
    /// The task's global id.
    pub task_id: String,
    /// The global id of the task's dataset.
    pub dataset_id: String,
    /// What the task needs, for its grid job's request.
    pub requirements: Resources,
    /// The task's passkey (direct mode), for its submit file.
    pub passkey: Option<String>,
    /// The task config to write as `task.cfg` (SPEC §5.2.1).
    pub config: serde_json::Value,
}

/// The read-only public queries of SPEC §5.4, answered as JSON (`DbReply::Value`).
#[derive(Clone, Debug, PartialEq)]
pub enum PublicQuery {
    /// Task counts by state, of one dataset or all.
    TasksInEachState {
        /// The dataset's global id; `None` counts every dataset.
        dataset_id: Option<String>,
    },
    /// Dataset ids by status: `{status: [ids]}`.
    DatasetsByStatus,
    /// A dataset's config.
    Config {
        /// The dataset's global id.
        dataset_id: String,
    },
    /// A dataset's description, as text.
    DatasetDescription {
        /// The dataset's global id.
        dataset_id: String,
    },
    /// The config's `steering`.
    DatasetSteering {
        /// The dataset's global id.
        dataset_id: String,
    },
    /// `{jobs_submitted, tasks_submitted, task_status: {status: n}}` of one dataset.
    DatasetCompletion {
        /// The dataset's global id.
        dataset_id: String,
    },
    /// The same for every dataset, by id.
    AllDatasetCompletion,
    /// Task ids of a dataset, in job and task order.
    TaskIds {
        /// The dataset's global id.
        dataset_id: String,
    },
    /// Task stats of a dataset (the `stat` of each task_stat row, by task).
    TaskStats {
        /// The dataset's global id.
        dataset_id: String,
    },
    /// Walltime sums of a dataset, by task name.
    TaskWalltime {
        /// The dataset's global id.
        dataset_id: String,
    },
    /// Task ids and states of a dataset's tasks named `name`.
    TasksByName {
        /// The dataset's global id.
        dataset_id: String,
        /// The task's name in the dataset config.
        name: String,
    },
    /// Cpu and gpu counts of processing tasks by dataset.
    CpuGpuUsage,
    /// Graph rows newer than `minutes` ago.
    Graphs {
        /// How far back to read, in minutes (the method's `start`).
        minutes: u32,
    },
}

/// What a person can do (SPEC §5.3). Ids are global ids; lists act on every entry or none.
#[derive(Clone, Debug, PartialEq)]
pub enum UserAction {
    /// `submit_dataset`; the owner is the passkey's user (the submission's `username` is
    /// ignored). Answers `DbReply::Dataset`.
    SubmitDataset(Box<DatasetSubmission>),
    /// `reset_task` / `resume_task` / `suspend_task` on tasks of datasets the user may act on.
    Tasks {
        /// The tasks' global ids.
        task_ids: Vec<String>,
        /// What happens to each; a task it cannot apply to refuses the whole list.
        action: TaskAction,
    },
    /// `reset_jobs` / `hard_reset_jobs` / `suspend_jobs`: every task of each job.
    Jobs {
        /// The jobs' global ids.
        job_ids: Vec<String>,
        /// What happens to their tasks; the tasks it does not apply to are left alone.
        action: TaskAction,
    },
    /// `reset_dataset`, `hard_reset_dataset`, `suspend_dataset`, `resume_dataset`,
    /// `truncate_dataset`.
    Dataset {
        /// The dataset's global id.
        dataset_id: String,
        /// What happens to the dataset and its tasks.
        action: DatasetAction,
    },
    /// `set_dataset_description`.
    SetDescription {
        /// The dataset's global id.
        dataset_id: String,
        /// The new description, replacing the old.
        description: String,
    },
    /// `set_dataset_priority`.
    SetPriority {
        /// The dataset's global id.
        dataset_id: String,
        /// The new priority, a number ≥ 0; higher queues first.
        priority: f64,
    },
    /// `update_dataset_config`: a new config for the jobs still to be created; its tasks
    /// must keep their names, order and dependencies.
    UpdateConfig {
        /// The dataset's global id.
        dataset_id: String,
        /// The new dataset config as JSON text.
        config: String,
    },
    /// A public query on a site that requires login for reads (`public_reads = false`).
    Read(PublicQuery),
}

/// A manual action on tasks (through the task state machine).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskAction {
    /// Back to be retried, failures 0.
    Reset,
    /// Every task back to the pool, complete ones too.
    HardReset,
    /// Suspended or failed tasks back to the pool.
    Resume,
    /// Stops the task in any state but complete; it waits until resumed.
    Suspend,
}

/// A manual action on a whole dataset (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetAction {
    /// Failed and suspended tasks → idle, failures 0.
    Reset,
    /// Every task → idle, failures 0, complete ones too.
    HardReset,
    /// No new queueing; running tasks finish.
    Suspend,
    /// Suspended → processing.
    Resume,
    /// No more jobs; completes when the existing jobs finish.
    Truncate,
}

/// Everything `submit_dataset` stores. The db validates `config` again itself.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetSubmission {
    /// The dataset config as JSON text.
    pub config: String,
    /// What the dataset is, for people.
    pub description: String,
    /// How many jobs to make, 1 to [`MAX_JOBS_PER_DATASET`].
    pub njobs: u32,
    /// The only grid (`SITEID.NAME`) its tasks queue on; empty for any grid.
    pub gridspec: String,
    /// Debug mode: a task's error suspends it instead of retrying it.
    pub debug: bool,
    /// A group path like `/sim/high`, if any.
    pub group: Option<String>,
    /// The owner's username; through `UserAction::SubmitDataset` the db puts the acting user's.
    pub username: String,
    /// The submitter's `stat_keys` (names of task stats), stored with the dataset as given.
    pub stat_keys: Vec<String>,
}

/// The most jobs one dataset may ask for.
pub const MAX_JOBS_PER_DATASET: u32 = 10_000_000;

/// What a worker asks about its task.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskCall {
    /// `set_processing`: queued → processing.
    SetProcessing,
    /// `stillrunning`: whether the task is queued or processing (false if unknown).
    StillRunning,
    /// `finish_task` with its `stats`: → complete, walltime and a task_stat row.
    Finish {
        /// The worker's stats (`time_used` in seconds adds to the walltime), stored as sent.
        stats: serde_json::Value,
    },
    /// `task_error` with its `error_info`: the error path of SPEC §4, resource learning.
    Error {
        /// What went wrong (`error_summary`, `time_used`, `resources` used), stored as sent.
        info: serde_json::Value,
    },
    /// `upload_logfile`: insert or replace log `name` (base64 of zlib bytes, as received).
    UploadLog {
        /// The log's name: `stdlog`, `stdout`, `stderr` or another.
        name: String,
        /// The log as base64 of zlib bytes, or empty.
        data: String,
    },
    /// `get_task_config`: the task's config as `task.cfg` holds it (SPEC §5.2.1), for a
    /// worker started with `--task-id`. Answers `DbReply::Value`.
    Config,
}

impl DbRequest {
    /// Whether the request changes the database (and so goes through the grouped writer).
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            DbRequest::TaskCounts { .. }
                | DbRequest::VerifyPasskey { .. }
                | DbRequest::Public(_)
                | DbRequest::Task {
                    call: TaskCall::StillRunning | TaskCall::Config,
                    ..
                }
                | DbRequest::GridTasks { .. }
                | DbRequest::GridPilots { .. }
                | DbRequest::PilotDemand { .. }
                | DbRequest::Page(_)
                | DbRequest::Account(
                    AccountRequest::Session { .. }
                        | AccountRequest::RequireAdmin { .. }
                        | AccountRequest::ListUsers { .. }
                        | AccountRequest::GetGroups { .. }
                        | AccountRequest::GetUserRoles { .. }
                )
        )
    }
}

/// What a passkey is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PasskeyScope {
    /// A task's key (direct mode), for its worker; the subject is the task id.
    Task,
    /// A pilot's key, for it and the tasks it is handed; the subject is the pilot id.
    Pilot,
    /// A person's key for the JSON-RPC methods; the subject is the user id.
    User,
    /// A client site's key for calls to its master; no code issues one yet.
    Site,
}

impl PasskeyScope {
    /// The scope as the `passkey` table stores it (`task`, `pilot`, …).
    pub fn name(self) -> &'static str {
        match self {
            PasskeyScope::Task => "task",
            PasskeyScope::Pilot => "pilot",
            PasskeyScope::User => "user",
            PasskeyScope::Site => "site",
        }
    }

    /// The scope stored as `name`; `None` for no scope.
    pub fn from_name(name: &str) -> Option<PasskeyScope> {
        [
            PasskeyScope::Task,
            PasskeyScope::Pilot,
            PasskeyScope::User,
            PasskeyScope::Site,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// Answers of the db module.
#[derive(Clone, Debug, PartialEq)]
pub enum DbReply {
    /// Task counts by status name.
    Counts(BTreeMap<String, u64>),
    /// The state change that was committed.
    Changed(Transition),
    /// A new passkey.
    Passkey(String),
    /// The owner of a valid passkey.
    PasskeyOwner {
        /// What kind of holder the key is for.
        scope: PasskeyScope,
        /// The task, pilot or user id the key acts as.
        subject: String,
    },
    /// How many rows the request changed.
    Rows(u64),
    /// A dataset that was created: its global id and its number.
    Dataset {
        /// The dataset's global id.
        dataset_id: String,
        /// The dataset's number on this site, the `dataset` of its task configs.
        dataset_num: u64,
    },
    /// Jobs and tasks created by `BufferJobs`.
    Buffered {
        /// Jobs created.
        jobs: u64,
        /// Tasks created in those jobs.
        tasks: u64,
    },
    /// Tasks picked and marked queued.
    Queued(Vec<QueuedTask>),
    /// A new pilot and its passkey.
    Pilot {
        /// The new pilot's local id.
        pilot_id: String,
        /// The pilot's passkey, for its submit file.
        passkey: String,
    },
    /// Full task configs for a pilot (SPEC §5.2.1).
    TaskConfigs(Vec<serde_json::Value>),
    /// A JSON answer (public queries).
    Value(serde_json::Value),
    /// Answer to `TaskCall::StillRunning`.
    StillRunning(bool),
    /// The tasks a grid holds.
    GridTasks(Vec<GridTask>),
    /// The pilots of a grid.
    Pilots(Vec<PilotInfo>),
    /// Lookup tasks by resource shape: (shape, how many), largest first.
    Demand(Vec<(Resources, u64)>),
    /// Answer to `DbRequest::Account`.
    Account(AccountReply),
    /// Answer to `DbRequest::Page`.
    Page(PageData),
    /// Answer to `DbRequest::ArchiveBatch`.
    ArchiveBatch(ArchiveBatchOutcome),
    /// Done, nothing to return.
    Done,
}

/// What one archive batch did (`DbRequest::ArchiveBatch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchiveBatchOutcome {
    /// Moves finished: live rows deleted after their archive copy was verified.
    pub moved: u64,
    /// Moves started: copied into the archive, to be finished by a later batch.
    pub copied: u64,
    /// Copied again: the live rows changed after their copy.
    pub recopied: u64,
    /// Copies dropped: the dataset no longer qualifies (a person reset it, say).
    pub dropped: u64,
    /// Datasets in both stores after the batch (copied, not yet deleted).
    pub pending: u64,
}

impl ArchiveBatchOutcome {
    /// Whether the batch brought any dataset a step further. A run stops at the first batch
    /// that did not (nothing left, or only copies that keep changing under it).
    pub fn progressed(&self) -> bool {
        self.moved + self.copied + self.dropped > 0
    }
}

/// Replies to [`Request`]s.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// Answer to [`Request::Ping`].
    Pong,
    /// The request was carried out and has nothing to return.
    Done,
    /// From the db module.
    Db(DbReply),
    /// From the controller, to a [`ControlAsk`]: what `iceprod ctl` prints, typed.
    Control(crate::status::ControlReply),
}

/// What a module may ask of the controller: the subset of `iceprod ctl` the website's site
/// page and the admin JSON-RPC methods offer (no kill and no fault injection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlAsk {
    /// The `ctl status` document.
    Status,
    /// Read the config file again; answers the reload's summary.
    Reload,
    /// Start, stop or restart one module.
    Module {
        /// The module acted on; it must be enabled in `[modules]`.
        module: ModuleKind,
        /// What is done to it.
        action: ModuleAction,
    },
}

/// What [`ControlAsk::Module`] does to its module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleAction {
    /// Start a stopped module; refused while it runs or waits to restart.
    Start,
    /// Stop it within `[controller] stop_timeout`; it stays stopped until started.
    Stop,
    /// Stop it within `[controller] stop_timeout`, then start it again.
    Restart,
}

/// The typed message a `[schedule]` job sends; its config spelling is the snake_case name.
/// The periodic jobs of SPEC §9 join here with the modules that carry them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduledMessage {
    /// Any module: a no-op that proves the job fires and the target answers.
    Ping,
    /// db: job and dataset completion (SPEC §9, hourly).
    CompleteDatasets,
    /// db: remove expired passkeys and sessions (SPEC §9, every 6 h).
    RemoveExpired,
    /// db: record the graphs of active and completed tasks (SPEC §9, every 10 min).
    Graphs,
    /// db: move datasets that ended long ago to the archive (SPEC §9, §10, daily).
    Archive,
    /// db: reset tasks not running in any active pilot (SPEC §9, every 30 min).
    ResetOrphanedPilotTasks,
    /// db: suspend tasks requesting more than the site's largest grid (SPEC §9, every 2 min).
    SuspendOversize,
    /// queue: run a queue cycle for every grid now, besides the `[queue] interval` timer.
    QueueCycle,
}

impl ScheduledMessage {
    /// Whether `target` knows how to carry out this message.
    pub fn accepted_by(self, target: ModuleKind) -> bool {
        match self {
            ScheduledMessage::Ping => true,
            ScheduledMessage::CompleteDatasets
            | ScheduledMessage::RemoveExpired
            | ScheduledMessage::Graphs
            | ScheduledMessage::Archive
            | ScheduledMessage::ResetOrphanedPilotTasks
            | ScheduledMessage::SuspendOversize => target == ModuleKind::Db,
            ScheduledMessage::QueueCycle => target == ModuleKind::Queue,
        }
    }

    /// The db request a scheduled message to the db stands for.
    pub fn db_request(self) -> Option<DbRequest> {
        match self {
            ScheduledMessage::Ping | ScheduledMessage::QueueCycle => None,
            ScheduledMessage::CompleteDatasets => Some(DbRequest::CompleteJobsAndDatasets),
            ScheduledMessage::RemoveExpired => Some(DbRequest::RemoveExpired),
            ScheduledMessage::Graphs => Some(DbRequest::RecordGraphs),
            ScheduledMessage::Archive => Some(DbRequest::Archive { now: None }),
            ScheduledMessage::ResetOrphanedPilotTasks => Some(DbRequest::ResetOrphanedPilotTasks),
            ScheduledMessage::SuspendOversize => Some(DbRequest::SuspendOversizeTasks),
        }
    }
}

/// Why a call completed without a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// No reply within the call's deadline; a late reply is dropped.
    Timeout,
    /// The target module is disabled in the config.
    Disabled(ModuleKind),
    /// The target does not handle this request.
    Unsupported(&'static str),
    /// The target failed to carry the request out; the message is safe to show.
    Failed(String),
    /// The target refused: the request names something unknown or meets a state that forbids
    /// it (an illegal transition, an expired passkey). The message is safe to show.
    Refused(String),
    /// The caller's credentials do not allow this request. The message is safe to show.
    Forbidden(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Timeout => f.write_str("no reply before the deadline"),
            CallError::Disabled(k) => write!(f, "module {k} is disabled"),
            CallError::Unsupported(what) => write!(f, "request not supported: {what}"),
            CallError::Failed(msg) | CallError::Refused(msg) | CallError::Forbidden(msg) => {
                f.write_str(msg)
            }
        }
    }
}

impl std::error::Error for CallError {}
