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
    Db,
    Master,
    Queue,
    Proxy,
    Website,
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
        job: String,
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
    TaskCounts { dataset_id: Option<String> },
    /// Moves a task through `states::transition`, recording `prev_status` and the time.
    ChangeTaskState { task_id: String, event: TaskEvent },
    /// Issues a passkey bound to `scope` and `subject`, valid for `ttl`.
    IssuePasskey {
        scope: PasskeyScope,
        subject: String,
        ttl: Duration,
    },
    /// Answers whom a passkey belongs to, if it is known, unexpired and not revoked.
    VerifyPasskey { key: String },
    /// Revokes every passkey of `scope` and `subject`, effective for the next verify.
    RevokePasskeys {
        scope: PasskeyScope,
        subject: String,
    },
    /// A new dataset (SPEC §4 data flow step 1): config, task_rels with their dependencies
    /// resolved (to other datasets too); no jobs yet. Answers `DbReply::Dataset`.
    SubmitDataset(Box<DatasetSubmission>),
    /// Creates up to `max_jobs` whole jobs (job + its tasks, dependencies resolved to task
    /// ids, requirements evaluated per job) for processing datasets. Answers `Buffered`.
    BufferJobs { max_jobs: u32 },
    /// A person's action (SPEC §5.3), authorised by their user passkey or website session
    /// in the same transaction: owners act on their datasets, admins on all.
    AsUser { auth: UserAuth, action: UserAction },
    /// Accounts, sessions, groups and roles (the website, SPEC §7).
    Account(AccountRequest),
    /// The data behind one page of the website (SPEC §7). Read-only.
    Page(PageQuery),
    /// Picks up to `num` tasks for grid `gridspec` (SPEC §6: dependencies complete,
    /// requirements within `largest`, datasets round-robin by priority), issues each a task
    /// passkey (or, with `pilot_mode`, puts it in the pilot lookup) and marks it queued.
    /// Answers `DbReply::Queued`.
    QueueTasks {
        gridspec: String,
        num: u32,
        largest: Resources,
        pilot_mode: bool,
    },
    /// Records that a queued task was submitted: its grid id and submit folder.
    SetGridId {
        task_id: String,
        grid_queue_id: String,
        submit_dir: String,
    },
    /// A new pilot row for `gridspec` with its requirements, and its pilot passkey.
    /// Answers `DbReply::Pilot`.
    CreatePilot {
        gridspec: String,
        requirements: Resources,
    },
    /// `new_task` (SPEC §5.2): hands a pilot as many tasks of its grid from the lookup as
    /// fit `available` (gpu tasks only to pilots with gpus; best fit first; longest waiting
    /// first among equals), marks them processing and the pilot's own. Answers
    /// `DbReply::TaskConfigs` (empty when nothing fits).
    NewTask {
        passkey: String,
        gridspec: String,
        available: Resources,
        os: Option<String>,
        hostname: String,
    },
    /// `update_pilot` (SPEC §5.2).
    UpdatePilot {
        passkey: String,
        pilot_id: String,
        tasks: Vec<String>,
        available: Resources,
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
    Archive { now: Option<String> },
    /// One batch of an archive run, one transaction (the db sends these to itself): finishes
    /// the moves copied earlier and copies up to `max` more datasets that ended before
    /// `cutoff`. Answers `DbReply::Value` with the counts of `archive::BatchOutcome`.
    ArchiveBatch { cutoff: String, max: u32 },
    /// A read-only public query (SPEC §5.4).
    Public(PublicQuery),
    /// A worker's call about one task (SPEC §5.2), authorised in the same transaction: the
    /// passkey must be the task's own, or that of the pilot running it.
    Task {
        passkey: String,
        task_id: String,
        call: TaskCall,
    },
    /// The tasks a grid holds now: queued or processing with this `gridspec`, for the queue's
    /// reconciliation. Answers `DbReply::GridTasks`.
    GridTasks { gridspec: String },
    /// Resets tasks the grid lost, or reported ended, failed or held without the task
    /// reporting: each through `states::transition` with its event (`Lost`: failures
    /// unchanged; `Error`: counts a failure), and only while the task is still queued or
    /// processing under the grid id it was seen with, so a task re-queued or finished
    /// meanwhile is left alone. Each reason is recorded as a task_stat row with `error: true`.
    /// Answers `Rows(tasks reset)`.
    ResetGridTasks { resets: Vec<GridReset> },
    /// Resets (`Stuck`, failures unchanged) the tasks of `gridspec` that stayed longer than
    /// `limits` allows in waiting, queued or processing (SPEC §4). Answers `Rows`.
    ResetStuckTasks {
        gridspec: String,
        limits: StuckLimits,
    },
    /// Makes tasks ready again: reset → waiting (`Retry`) and resume → idle (`ReturnToPool`),
    /// at most `max` of each. Answers `Rows`.
    RecycleTasks { max: u32 },
    /// The pilots of a grid. Answers `DbReply::Pilots`.
    GridPilots { gridspec: String },
    /// Records where a pilot was submitted.
    SetPilotGridId {
        pilot_id: String,
        grid_queue_id: String,
        submit_dir: String,
    },
    /// A pilot ended or its grid lost it: deletes the pilot row, revokes its passkey, and
    /// resets (`Lost`) the tasks it still ran, recording `reason`. Answers `Rows(tasks reset)`.
    RemovePilot { pilot_id: String, reason: String },
    /// Tasks waiting in the pilot lookup of `gridspec`, counted by resource shape, largest
    /// shape first. Answers `DbReply::Demand`.
    PilotDemand { gridspec: String },
    /// Resets (`Lost`) processing tasks handed to pilots that no pilot row lists any more
    /// (SPEC §9, every 30 min). Answers `Rows`.
    ResetOrphanedPilotTasks,
    /// Suspends tasks that are not yet queued whose requirements exceed every grid of
    /// `[queue.grids]` (SPEC §9, every 2 min), so they do not wait forever. Answers `Rows`.
    SuspendOversizeTasks,
}

/// A task the queue found lost or ended on its grid (see `DbRequest::ResetGridTasks`).
#[derive(Clone, Debug, PartialEq)]
pub struct GridReset {
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
    pub waiting: Duration,
    pub queued: Duration,
    pub processing: Duration,
}

/// A task a grid holds (see `DbRequest::GridTasks`).
#[derive(Clone, Debug, PartialEq)]
pub struct GridTask {
    pub task_id: String,
    /// `Queued` or `Processing`.
    pub status: TaskStatus,
    /// None until the submit was recorded (or while the task waits in the pilot lookup).
    pub grid_queue_id: Option<String>,
    pub submit_dir: Option<String>,
    /// When the task entered its status (RFC 3339).
    pub status_changed: String,
}

/// A pilot row (see `DbRequest::GridPilots`).
#[derive(Clone, Debug, PartialEq)]
pub struct PilotInfo {
    pub pilot_id: String,
    pub grid_queue_id: Option<String>,
    /// RFC 3339.
    pub submit_time: String,
    pub requirements: Resources,
    /// The tasks it runs now (by `new_task` and `update_pilot`).
    pub tasks: Vec<String>,
}

/// Resources of a slot, a pilot or a task: memory and disk in GB, time in hours.
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Resources {
    pub cpu: u32,
    pub gpu: u32,
    pub memory: f64,
    pub disk: f64,
    pub time: f64,
}

/// A task picked by `QueueTasks`.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedTask {
    pub task_id: String,
    pub dataset_id: String,
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
        dataset_id: Option<String>,
    },
    /// Dataset ids by status: `{status: [ids]}`.
    DatasetsByStatus,
    /// A dataset's config.
    Config {
        dataset_id: String,
    },
    DatasetDescription {
        dataset_id: String,
    },
    /// The config's `steering`.
    DatasetSteering {
        dataset_id: String,
    },
    /// `{jobs_submitted, tasks_submitted, task_status: {status: n}}` of one dataset.
    DatasetCompletion {
        dataset_id: String,
    },
    /// The same for every dataset, by id.
    AllDatasetCompletion,
    /// Task ids of a dataset, in job and task order.
    TaskIds {
        dataset_id: String,
    },
    /// Task stats of a dataset (the `stat` of each task_stat row, by task).
    TaskStats {
        dataset_id: String,
    },
    /// Walltime sums of a dataset, by task name.
    TaskWalltime {
        dataset_id: String,
    },
    /// Task ids and states of a dataset's tasks named `name`.
    TasksByName {
        dataset_id: String,
        name: String,
    },
    /// Cpu and gpu counts of processing tasks by dataset.
    CpuGpuUsage,
    /// Graph rows newer than `minutes` ago.
    Graphs {
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
        task_ids: Vec<String>,
        action: TaskAction,
    },
    /// `reset_jobs` / `hard_reset_jobs` / `suspend_jobs`: every task of each job.
    Jobs {
        job_ids: Vec<String>,
        action: TaskAction,
    },
    /// `reset_dataset`, `hard_reset_dataset`, `suspend_dataset`, `resume_dataset`,
    /// `truncate_dataset`.
    Dataset {
        dataset_id: String,
        action: DatasetAction,
    },
    /// `set_dataset_description`.
    SetDescription {
        dataset_id: String,
        description: String,
    },
    /// `set_dataset_priority`.
    SetPriority { dataset_id: String, priority: f64 },
    /// `update_dataset_config`: a new config for the jobs still to be created; its tasks
    /// must keep their names, order and dependencies.
    UpdateConfig { dataset_id: String, config: String },
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
    /// The dataset config as JSON text (SPEC §3).
    pub config: String,
    pub description: String,
    pub njobs: u32,
    pub gridspec: String,
    pub debug: bool,
    /// A group path like `/sim/high`, if any.
    pub group: Option<String>,
    pub username: String,
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
    Finish { stats: serde_json::Value },
    /// `task_error` with its `error_info`: the error path of SPEC §4, resource learning.
    Error { info: serde_json::Value },
    /// `upload_logfile`: insert or replace log `name` (base64 of zlib bytes, as received).
    UploadLog { name: String, data: String },
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
                        | AccountRequest::GetGroups
                        | AccountRequest::GetUserRoles { .. }
                )
        )
    }
}

/// What a passkey is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PasskeyScope {
    Task,
    Pilot,
    User,
    Site,
}

impl PasskeyScope {
    pub fn name(self) -> &'static str {
        match self {
            PasskeyScope::Task => "task",
            PasskeyScope::Pilot => "pilot",
            PasskeyScope::User => "user",
            PasskeyScope::Site => "site",
        }
    }

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
        scope: PasskeyScope,
        subject: String,
    },
    /// How many rows the request changed.
    Rows(u64),
    /// A dataset that was created: its global id and its number.
    Dataset {
        dataset_id: String,
        dataset_num: u64,
    },
    /// Jobs and tasks created by `BufferJobs`.
    Buffered { jobs: u64, tasks: u64 },
    /// Tasks picked and marked queued.
    Queued(Vec<QueuedTask>),
    /// A new pilot and its passkey.
    Pilot { pilot_id: String, passkey: String },
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
        module: ModuleKind,
        action: ModuleAction,
    },
}

/// What [`ControlAsk::Module`] does to its module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleAction {
    Start,
    Stop,
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
