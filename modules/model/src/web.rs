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
        session_id: String,
        csrf_token: Option<String>,
    },
}

/// Accounts, sessions, groups and roles. Answered with `DbReply::Account`.
#[derive(Clone, Debug, PartialEq)]
pub enum AccountRequest {
    /// Checks a password and opens a session valid for `ttl`. Unknown user and wrong password
    /// give the same `Forbidden` error. Answers [`AccountReply::Session`].
    Login {
        username: String,
        password: String,
        ttl: Duration,
    },
    /// The user behind a live (unexpired) session. Answers [`AccountReply::Session`], or
    /// `Forbidden` for an unknown or expired session.
    Session { session_id: String },
    /// Ends a session; needs its CSRF token. Answers `Done`.
    Logout {
        session_id: String,
        csrf_token: String,
    },
    /// Admin only: creates a user. Answers `Done`.
    CreateUser {
        auth: UserAuth,
        username: String,
        password: String,
        admin: bool,
    },
    /// Admin, or the user themself: sets a password. Answers `Done`.
    SetPassword {
        auth: UserAuth,
        username: String,
        password: String,
    },
    /// Every user (no hashes). Answers [`AccountReply::Users`].
    ListUsers { auth: UserAuth },
    /// Every group. Answers [`AccountReply::Groups`]. Public.
    GetGroups,
    /// Admin only: replaces the groups (name, description, priority); groups not listed are
    /// removed. Answers `Done`.
    SetGroups { auth: UserAuth, groups: Vec<Group> },
    /// Answers `Done` when `auth` is an admin's (a session also needs its CSRF token), else
    /// `Forbidden`: the check in front of the admin methods that act on the server itself
    /// (`start_module`, `reload_config`, …), which the controller, not the db, carries out.
    RequireAdmin { auth: UserAuth },
    /// The roles of a user. Answers [`AccountReply::Roles`].
    GetUserRoles { auth: UserAuth, username: String },
    /// Admin only: sets the roles of a user (`admin` makes an admin). Answers `Done`.
    SetUserRoles {
        auth: UserAuth,
        username: String,
        roles: Vec<String>,
    },
}

/// Answers to [`AccountRequest`]s.
#[derive(Clone, Debug, PartialEq)]
pub enum AccountReply {
    Session(SessionInfo),
    Users(Vec<UserInfo>),
    Groups(Vec<Group>),
    Roles(Vec<String>),
}

/// A live session and its user.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionInfo {
    pub session_id: String,
    pub csrf_token: String,
    pub username: String,
    pub admin: bool,
    /// RFC 3339, UTC.
    pub expire: String,
}

/// A user as listed (never the hash).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UserInfo {
    pub username: String,
    pub admin: bool,
    pub roles: Vec<String>,
    pub groups: Vec<String>,
    pub last_login_time: Option<String>,
}

/// A group: a path like `/sim/high`, whose priority multiplies along the path (SPEC §6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    #[serde(default)]
    pub description: String,
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
    pub offset: u64,
    pub limit: u64,
}

/// The data behind one page. Answered with `DbReply::Page`; an id that does not exist is a
/// `NotFound` error.
#[derive(Clone, Debug, PartialEq)]
pub enum PageQuery {
    /// `/`: dataset counts by status and the graph rows of the last `hours`.
    Home { hours: u32 },
    /// `/dataset`: datasets, newest first, optionally of one status.
    Datasets {
        status: Option<String>,
        paging: Paging,
    },
    /// `/dataset/N`.
    Dataset(DatasetKey),
    /// `/config?dataset_id=`: the dataset and its config text.
    Config(DatasetKey),
    /// `/task?…`: tasks matching every given filter, in job then task order.
    Tasks { filter: TaskFilter, paging: Paging },
    /// `/task/ID`: the task, its dependencies, its stats and the last `tail_lines` lines of
    /// each log (read without holding the whole decompressed log in memory).
    Task { task_id: String, tail_lines: usize },
    /// `/job?…`: jobs of a dataset, optionally of one status, in job order.
    Jobs {
        dataset: DatasetKey,
        status: Option<String>,
        paging: Paging,
    },
    /// `/job/ID`: the job and its tasks.
    Job { job_id: String },
    /// `/log/TASK/NAME`: the log as stored (base64 of zlib bytes, SPEC §5.2.1).
    Log { task_id: String, name: String },
}

/// Filters of the task list; `None` matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskFilter {
    pub dataset: Option<DatasetKey>,
    pub job_id: Option<String>,
    pub status: Option<String>,
    /// The task's name (its task_rel's name).
    pub name: Option<String>,
}

/// Answers to [`PageQuery`], one variant per query.
#[derive(Clone, Debug, PartialEq)]
pub enum PageData {
    Home(HomePage),
    Datasets(Listing<DatasetRow>),
    Dataset(Box<DatasetPage>),
    Config(Box<ConfigPage>),
    Tasks(Listing<TaskRow>),
    Task(Box<TaskPage>),
    Jobs(Listing<JobRow>),
    Job(Box<JobPage>),
    Log(LogData),
}

/// One page of a list and how many rows match in all.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Listing<T> {
    pub rows: Vec<T>,
    pub total: u64,
}

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
    pub name: String,
    /// RFC 3339, UTC.
    pub timestamp: String,
    pub value: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DatasetRow {
    pub dataset_id: String,
    pub dataset_num: u64,
    pub name: String,
    pub description: String,
    pub status: String,
    pub username: String,
    pub group: Option<String>,
    pub priority: f64,
    pub gridspec: String,
    pub jobs_submitted: u64,
    pub tasks_submitted: u64,
    pub debug: bool,
    pub start_date: String,
    pub end_date: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DatasetPage {
    pub dataset: DatasetRow,
    pub job_counts: BTreeMap<String, u64>,
    pub task_counts: BTreeMap<String, u64>,
    /// One row per task name, in task order.
    pub task_names: Vec<TaskNameSummary>,
    /// Progress over time: (RFC 3339 time, completed tasks, total tasks), oldest first.
    pub progress: Vec<(String, u64, u64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskNameSummary {
    pub task_index: u32,
    pub name: String,
    /// Tasks by status.
    pub counts: BTreeMap<String, u64>,
    /// Walltime of the completed tasks, in seconds; `None` before the first completion.
    pub walltime: Option<WalltimeStats>,
    /// Good walltime over all walltime (good + the walltime of failed attempts), 0..1.
    pub efficiency: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct WalltimeStats {
    pub mean: f64,
    pub stddev: f64,
    pub min: f64,
    pub max: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConfigPage {
    pub dataset: DatasetRow,
    /// The dataset config as stored (JSON text).
    pub config: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskRow {
    pub task_id: String,
    pub job_id: String,
    pub dataset_id: String,
    pub dataset_num: u64,
    pub job_index: u64,
    pub task_index: u32,
    pub name: String,
    pub status: String,
    pub prev_status: Option<String>,
    pub status_changed: String,
    pub failures: u64,
    pub evictions: u64,
    pub walltime: f64,
    pub walltime_err: f64,
    /// JSON text.
    pub requirements: String,
    pub gridspec: Option<String>,
    pub grid_queue_id: Option<String>,
    /// The dataset's owner: who, besides admins, may act on the task.
    pub owner: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskPage {
    pub task: TaskRow,
    /// The tasks this one depends on.
    pub depends: Vec<TaskRef>,
    /// Its task_stat rows, newest first: (create date, stat JSON text, error).
    pub stats: Vec<(String, String, bool)>,
    /// The tail of each log, by name.
    pub logs: Vec<LogTail>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskRef {
    pub task_id: String,
    pub name: String,
    pub status: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogTail {
    pub name: String,
    /// The last lines, decoded (invalid UTF-8 replaced).
    pub lines: Vec<String>,
    /// Whether the log has more lines than shown.
    pub truncated: bool,
    /// An error decoding the stored data, shown instead of the lines.
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobRow {
    pub job_id: String,
    pub dataset_id: String,
    pub dataset_num: u64,
    pub job_index: u64,
    pub status: String,
    pub status_changed: String,
    /// The dataset's owner: who, besides admins, may act on the job.
    pub owner: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobPage {
    pub job: JobRow,
    pub tasks: Vec<TaskRow>,
}

/// A log as stored: base64 of zlib bytes, or `""`.
#[derive(Clone, Debug, PartialEq)]
pub struct LogData {
    pub task_id: String,
    pub name: String,
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
