//! What the website asks the db for the human side (SPEC §7): accounts and sessions
//! ([`AccountRequest`]) and the data behind each page ([`PageQuery`] → [`PageData`]).
//!
//! The pages are rendered by the website from these typed rows; the db never formats HTML.
//! Every list is paged by the db (`offset`, `limit`), so no page reads more rows than it shows,
//! whatever the database holds.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Whether two secrets (CSRF tokens, session keys, password hashes) are equal, in a time
/// that does not depend on where they differ. Empty secrets never match. The website and the
/// db both compare with this.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || a.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How a person proves who they are to the db.
#[derive(Clone, Debug, PartialEq)]
pub enum UserAuth {
    /// A user passkey (the CLI, scripts).
    Passkey(String),
    /// A website session. State-changing actions need the session's CSRF token as well; the
    /// db compares it inside the same transaction, so a stale or missing token changes nothing.
    /// Reads (`UserAction::Read`) need no token.
    Session {
        /// The session id the browser's cookie holds.
        session_id: String,
        /// The CSRF token the request carried; `None` for reads, which need none.
        csrf_token: Option<String>,
    },
}

/// Accounts, sessions, groups and roles. Answered with `DbReply::Account`.
#[derive(Clone, Debug, PartialEq)]
pub enum AccountRequest {
    /// Checks a password and opens a session valid for `ttl`. Unknown user and wrong password
    /// give the same `Forbidden` error. Answers [`AccountReply::Session`].
    Login {
        /// The account to log in to.
        username: String,
        /// The password to check against the stored hash.
        password: String,
        /// How long the session lasts: `[website] session_ttl`.
        ttl: Duration,
    },
    /// The user behind a live (unexpired) session. Answers [`AccountReply::Session`], or
    /// `Forbidden` for an unknown or expired session.
    Session {
        /// The session id the browser's cookie holds.
        session_id: String,
    },
    /// Ends a session; needs its CSRF token. Answers `Done`.
    Logout {
        /// The session to end.
        session_id: String,
        /// The session's CSRF token, so another site's page cannot log the user out.
        csrf_token: String,
    },
    /// Admin only: creates a user. Answers `Done`.
    CreateUser {
        /// Who asks; must be an admin.
        auth: UserAuth,
        /// The new user's login name: letters, digits, `.`, `_`, `-`, `@`, at most 64 characters.
        username: String,
        /// The new user's password, stored only as its PBKDF2 hash.
        password: String,
        /// Whether the new user is an admin (roles `admin` and `user`) or only a `user`.
        admin: bool,
    },
    /// Admin, or the user themself: sets a password. Answers `Done`.
    SetPassword {
        /// Who asks: an admin, or the user themself.
        auth: UserAuth,
        /// Whose password is set.
        username: String,
        /// The new password, stored only as its PBKDF2 hash.
        password: String,
    },
    /// Every user (no hashes). Answers [`AccountReply::Users`].
    ListUsers {
        /// Who asks; must be an admin.
        auth: UserAuth,
    },
    /// Every group. Answers [`AccountReply::Groups`]. Public while `[website] public_reads`;
    /// otherwise the website sends who asks, and only a user may read them.
    GetGroups {
        /// Who asks, checked when given; `None` only while reads are public.
        auth: Option<UserAuth>,
    },
    /// Admin only: replaces the groups (name, description, priority); groups not listed are
    /// removed. Answers `Done`.
    SetGroups {
        /// Who asks; must be an admin.
        auth: UserAuth,
        /// Every group there is to be, checked before any is written.
        groups: Vec<Group>,
    },
    /// Answers `Done` when `auth` is an admin's (a session also needs its CSRF token), else
    /// `Forbidden`: the check in front of the admin methods that act on the server itself
    /// (`start_module`, `reload_config`, …), which the controller, not the db, carries out.
    RequireAdmin {
        /// The person to check.
        auth: UserAuth,
    },
    /// The roles of a user. Answers [`AccountReply::Roles`].
    GetUserRoles {
        /// Who asks: an admin, or the user themself.
        auth: UserAuth,
        /// Whose roles are read.
        username: String,
    },
    /// Admin only: sets the roles of a user (`admin` makes an admin). Answers `Done`.
    SetUserRoles {
        /// Who asks; must be an admin.
        auth: UserAuth,
        /// Whose roles are set.
        username: String,
        /// The user's whole new list of roles, each `admin` or `user`.
        roles: Vec<String>,
    },
}

/// Answers to [`AccountRequest`]s.
#[derive(Clone, Debug, PartialEq)]
pub enum AccountReply {
    /// The session `Login` opened, or the one `Session` found.
    Session(SessionInfo),
    /// Every user, by name, for `ListUsers`.
    Users(Vec<UserInfo>),
    /// Every group, by name, for `GetGroups`.
    Groups(Vec<Group>),
    /// The user's roles, for `GetUserRoles`.
    Roles(Vec<String>),
}

/// A live session and its user.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionInfo {
    /// The id for the browser's cookie; the db keeps only its SHA-256.
    pub session_id: String,
    /// The token every state-changing request of this session must carry.
    pub csrf_token: String,
    /// The logged-in user's name.
    pub username: String,
    /// Whether the user is an admin.
    pub admin: bool,
    /// RFC 3339, UTC.
    pub expire: String,
}

/// A user as listed (never the hash).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UserInfo {
    /// The user's login name.
    pub username: String,
    /// Whether the user is an admin (holds the `admin` role).
    pub admin: bool,
    /// The user's roles, each `admin` or `user`.
    pub roles: Vec<String>,
    /// Names of the groups the user is in (`user.groups`).
    pub groups: Vec<String>,
    /// When the user last logged in to the website (RFC 3339, UTC); `None`: never.
    pub last_login_time: Option<String>,
}

/// A group: a path like `/sim/high`, whose priority multiplies along the path (SPEC §6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// The group's path, like `/sim/high`.
    pub name: String,
    /// What the group is for; empty when not given.
    #[serde(default)]
    pub description: String,
    /// The group's factor (above 0), multiplied along the path into its datasets' priority.
    pub priority: f64,
}

/// Which dataset a page is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatasetKey {
    /// Its number (`/dataset/1234`).
    Num(u64),
    /// Its global id (`?dataset_id=`).
    Id(String),
}

/// A page of a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paging {
    /// Rows to skip from the start of the list.
    pub offset: u64,
    /// Most rows to return (the website caps it).
    pub limit: u64,
}

/// The data behind one page. Answered with `DbReply::Page`; an id that does not exist is a
/// `NotFound` error.
#[derive(Clone, Debug, PartialEq)]
pub enum PageQuery {
    /// `/`: dataset counts by status and the graph rows of the last `hours`.
    Home {
        /// How many hours back the graph rows go (the website asks for 24).
        hours: u32,
    },
    /// `/dataset`: datasets, newest first, optionally of one status.
    Datasets {
        /// Only datasets in this state (its name); `None`: all.
        status: Option<String>,
        /// Which rows of the list.
        paging: Paging,
    },
    /// `/dataset/N`.
    Dataset(DatasetKey),
    /// `/config?dataset_id=`: the dataset and its config text.
    Config(DatasetKey),
    /// `/task?…`: tasks matching every given filter, in job then task order.
    Tasks {
        /// Which tasks to list.
        filter: TaskFilter,
        /// Which rows of the list.
        paging: Paging,
    },
    /// `/task/ID`: the task, its dependencies, its stats and the last `tail_lines` lines of
    /// each log (read without holding the whole decompressed log in memory).
    Task {
        /// The task's global id.
        task_id: String,
        /// Most lines shown of the end of each log.
        tail_lines: usize,
    },
    /// `/job?…`: jobs of a dataset, optionally of one status, in job order.
    Jobs {
        /// The dataset whose jobs are listed.
        dataset: DatasetKey,
        /// Only jobs in this state (its name); `None`: all.
        status: Option<String>,
        /// Which rows of the list.
        paging: Paging,
    },
    /// `/job/ID`: the job and its tasks.
    Job {
        /// The job's global id.
        job_id: String,
    },
    /// `/log/TASK/NAME`: the log as stored (base64 of zlib bytes, SPEC §5.2.1).
    Log {
        /// The global id of the task whose log it is.
        task_id: String,
        /// The log's name as uploaded (`stdlog`, `stderr`, `stdout`).
        name: String,
    },
}

/// Filters of the task list; `None` matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only tasks of this dataset.
    pub dataset: Option<DatasetKey>,
    /// Only tasks of this job (its global id).
    pub job_id: Option<String>,
    /// Only tasks in this state (its name, `TaskStatus::name`).
    pub status: Option<String>,
    /// The task's name (its task_rel's name).
    pub name: Option<String>,
}

/// Answers to [`PageQuery`], one variant per query.
#[derive(Clone, Debug, PartialEq)]
pub enum PageData {
    /// The answer to `PageQuery::Home`.
    Home(HomePage),
    /// The answer to `PageQuery::Datasets`.
    Datasets(Listing<DatasetRow>),
    /// The answer to `PageQuery::Dataset`.
    Dataset(Box<DatasetPage>),
    /// The answer to `PageQuery::Config`.
    Config(Box<ConfigPage>),
    /// The answer to `PageQuery::Tasks`.
    Tasks(Listing<TaskRow>),
    /// The answer to `PageQuery::Task`.
    Task(Box<TaskPage>),
    /// The answer to `PageQuery::Jobs`.
    Jobs(Listing<JobRow>),
    /// The answer to `PageQuery::Job`.
    Job(Box<JobPage>),
    /// The answer to `PageQuery::Log`.
    Log(LogData),
}

/// One page of a list and how many rows match in all.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Listing<T> {
    /// The rows of the page asked for, at most `limit` of them.
    pub rows: Vec<T>,
    /// How many rows match in all, for the pager.
    pub total: u64,
}

/// The data behind `/`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HomePage {
    /// Datasets by status.
    pub dataset_counts: BTreeMap<String, u64>,
    /// Graph rows (`active_tasks`, `completed_tasks`) of the last hours, oldest first.
    pub graphs: Vec<GraphPoint>,
}

/// One `graph` row (SPEC §9).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GraphPoint {
    /// Which graph: `active_tasks`, `completed_tasks` or `dataset_progress`.
    pub name: String,
    /// RFC 3339, UTC.
    pub timestamp: String,
    /// The recorded JSON: counts by state, `{"completions": N}`, or per dataset `[done, total]`.
    pub value: serde_json::Value,
}

/// A dataset as the lists and pages show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DatasetRow {
    /// The dataset's global id.
    pub dataset_id: String,
    /// Its number, the local part of its id (`/dataset/N`).
    pub dataset_num: u64,
    /// Its name: the db names every dataset `dataset N` when it is submitted.
    pub name: String,
    /// The submitter's description; `set_dataset_description` changes it.
    pub description: String,
    /// Its state's name (`processing`, `truncated`, `complete`, `suspended`, `errors`).
    pub status: String,
    /// Why the server put it in this state (a dataset whose jobs cannot be created is
    /// suspended, naming the config path that fails); empty when a person did, or for none.
    pub status_reason: String,
    /// Who submitted it: its owner.
    pub username: String,
    /// Its group's path (`/sim/high`); `None` without one.
    pub group: Option<String>,
    /// The priority `set_dataset_priority` gave it (0 until then).
    pub priority: f64,
    /// The grid it is pinned to (`SITEID.NAME`); empty: any grid.
    pub gridspec: String,
    /// Jobs asked for when it was submitted (`njobs`).
    pub jobs_submitted: u64,
    /// Tasks it will have in all: its jobs times the tasks of its config.
    pub tasks_submitted: u64,
    /// Debug mode: a task error suspends the task instead of retrying it.
    pub debug: bool,
    /// When it was submitted (RFC 3339, UTC).
    pub start_date: String,
    /// When it became `complete` or `errors` (RFC 3339, UTC); `None` until it ends.
    pub end_date: Option<String>,
}

/// The data behind `/dataset/N`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DatasetPage {
    /// The dataset the page is about.
    pub dataset: DatasetRow,
    /// Its jobs by state name.
    pub job_counts: BTreeMap<String, u64>,
    /// Its tasks by state name.
    pub task_counts: BTreeMap<String, u64>,
    /// One row per task name, in task order.
    pub task_names: Vec<TaskNameSummary>,
    /// Progress over time: (RFC 3339 time, completed tasks, total tasks), oldest first.
    pub progress: Vec<(String, u64, u64)>,
}

/// One row of the dataset page's table: the tasks of one name, across all jobs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskNameSummary {
    /// The task's index in the config's `tasks`.
    pub task_index: u32,
    /// The task's name in the config.
    pub name: String,
    /// Tasks by status.
    pub counts: BTreeMap<String, u64>,
    /// Walltime of the completed tasks, in seconds; `None` before the first completion.
    pub walltime: Option<WalltimeStats>,
    /// Good walltime over all walltime (good + the walltime of failed attempts), 0..1.
    pub efficiency: Option<f64>,
}

/// Walltime of a task name's completed tasks, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct WalltimeStats {
    /// The average walltime, in seconds.
    pub mean: f64,
    /// The standard deviation (of the population), in seconds.
    pub stddev: f64,
    /// The shortest walltime, in seconds.
    pub min: f64,
    /// The longest walltime, in seconds.
    pub max: f64,
}

/// The data behind `/config?dataset_id=`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConfigPage {
    /// The dataset the config belongs to.
    pub dataset: DatasetRow,
    /// The dataset config as stored (JSON text).
    pub config: String,
}

/// A task as the lists and pages show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskRow {
    /// The task's global id.
    pub task_id: String,
    /// Its job's global id.
    pub job_id: String,
    /// Its dataset's global id.
    pub dataset_id: String,
    /// Its dataset's number (`/dataset/N`).
    pub dataset_num: u64,
    /// Its job's index in the dataset, from 0.
    pub job_index: u64,
    /// Its index in the config's `tasks`, from 0.
    pub task_index: u32,
    /// Its name in the config (its task_rel's name).
    pub name: String,
    /// Its state's name (`TaskStatus::name`).
    pub status: String,
    /// Its state before the last change; `None` before the first change.
    pub prev_status: Option<String>,
    /// When its state last changed (RFC 3339, UTC).
    pub status_changed: String,
    /// Failures counted so far; a manual, pool or hard reset sets it back to 0.
    pub failures: u64,
    /// The stored `evictions` count; nothing in this server raises it yet.
    pub evictions: u64,
    /// Hours its completed runs took (`finish_task`'s `time_used`, converted to hours).
    pub walltime: f64,
    /// Hours its failed attempts took in all (each `task_error`'s `time_used`, in hours).
    pub walltime_err: f64,
    /// JSON text.
    pub requirements: String,
    /// The grid it was last queued on (`SITEID.NAME`); `None` before it was queued.
    pub gridspec: Option<String>,
    /// The grid's id of its job; `None` until a submit is recorded.
    pub grid_queue_id: Option<String>,
    /// The dataset's owner: who, besides admins, may act on the task.
    pub owner: String,
}

/// The data behind `/task/ID`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskPage {
    /// The task the page is about.
    pub task: TaskRow,
    /// The tasks this one depends on.
    pub depends: Vec<TaskRef>,
    /// Its task_stat rows, newest first: (create date, stat JSON text, error).
    pub stats: Vec<(String, String, bool)>,
    /// The tail of each log, by name.
    pub logs: Vec<LogTail>,
}

/// A task another one depends on, as the task page lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskRef {
    /// The dependency's global id.
    pub task_id: String,
    /// Its name in its config; empty when it is found in neither the live tables nor the archive.
    pub name: String,
    /// Its state's name, or `unknown` when it is found nowhere.
    pub status: String,
}

/// The end of one log of a task, for the task page.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogTail {
    /// The log's name as uploaded (`stdlog`, `stderr`, `stdout`).
    pub name: String,
    /// The last lines, decoded (invalid UTF-8 replaced).
    pub lines: Vec<String>,
    /// Whether the log has more lines than shown.
    pub truncated: bool,
    /// An error decoding the stored data, shown instead of the lines.
    pub error: Option<String>,
}

/// A job as the lists and pages show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobRow {
    /// The job's global id.
    pub job_id: String,
    /// Its dataset's global id.
    pub dataset_id: String,
    /// Its dataset's number (`/dataset/N`).
    pub dataset_num: u64,
    /// Its index in the dataset, from 0.
    pub job_index: u64,
    /// Its state's name (`processing`, `complete`, `suspended`, `errors`).
    pub status: String,
    /// When its state last changed (RFC 3339, UTC).
    pub status_changed: String,
    /// The dataset's owner: who, besides admins, may act on the job.
    pub owner: String,
}

/// The data behind `/job/ID`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobPage {
    /// The job the page is about.
    pub job: JobRow,
    /// Its tasks, in task order.
    pub tasks: Vec<TaskRow>,
}

/// A log as stored: base64 of zlib bytes, or `""`.
#[derive(Clone, Debug, PartialEq)]
pub struct LogData {
    /// The global id of the task the log belongs to.
    pub task_id: String,
    /// The log's name as uploaded (`stdlog`, `stderr`, `stdout`).
    pub name: String,
    /// The stored text, which the website decodes as it sends `/log`.
    pub data: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_when_equal_and_not_empty() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b""));
    }
}
