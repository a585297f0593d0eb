//! Calls that name their reply type.
//!
//! A module that asks another builds a [`Call`] with the request's own constructor (for
//! example [`DbRequest::grid_tasks`], which is a `Call<Vec<GridTask>>`), and its callback gets
//! `Result<Vec<GridTask>, CallError>`: the reply is narrowed once, here, where the request is
//! defined, never by the caller. A callee answering another shape is a bug; the caller then
//! gets [`CallError::Failed`] naming both, instead of matching an "unexpected reply" itself.
//!
//! The JSON-RPC methods of the website stay generic on purpose: they turn whatever the db
//! answers into JSON (`DbReply` is their one reply type).

use std::fmt;

use crate::protocol::{
    CallError, DatasetSubmission, DbReply, DbRequest, GridReset, GridTask, ModuleKind, PilotInfo,
    QueuedTask, Reply, Request, Resources, StuckLimits, UserAction,
};
use crate::states::{TaskEvent, Transition};
use crate::web::{
    AccountReply, AccountRequest, DatasetPage, Group, PageData, PageQuery, SessionInfo, UserAuth,
};

/// Takes the one reply shape of a request out of the callee's answer, or gives the answer
/// back when it has another shape.
type Narrow<R> = Box<dyn FnOnce(Reply) -> Result<R, Reply>>;

/// A request to one module and the type of its reply.
pub struct Call<R> {
    target: ModuleKind,
    request: Request,
    /// The request's name, for the protocol error (`grid_tasks`).
    what: &'static str,
    narrow: Narrow<R>,
}

impl<R: 'static> Call<R> {
    /// A call of `request` (named `what` in errors) to `target` whose reply `narrow` takes out.
    pub fn new(
        target: ModuleKind,
        request: Request,
        what: &'static str,
        narrow: impl FnOnce(Reply) -> Result<R, Reply> + 'static,
    ) -> Call<R> {
        Call {
            target,
            request,
            what,
            narrow: Box::new(narrow),
        }
    }

    /// The module that answers.
    pub fn target(&self) -> ModuleKind {
        self.target
    }

    /// The same call, for a caller that needs only to know that it succeeded.
    pub fn ignoring_reply(self) -> Call<()> {
        let narrow = self.narrow;
        Call::new(self.target, self.request, self.what, move |reply| {
            narrow(reply).map(drop)
        })
    }

    /// Splits the call for sending: the target, the request, and what turns the answer into
    /// the typed result the caller's callback gets.
    pub fn into_parts(self) -> (ModuleKind, Request, Typed<R>) {
        let typed = Typed {
            target: self.target,
            what: self.what,
            narrow: self.narrow,
        };
        (self.target, self.request, typed)
    }
}

/// Turns a call's answer into its typed result (see [`Call::into_parts`]).
pub struct Typed<R> {
    /// The module asked and the request's name, for the protocol error.
    target: ModuleKind,
    what: &'static str,
    narrow: Narrow<R>,
}

impl<R> Typed<R> {
    /// The typed result of `answer`; another reply shape is `CallError::Failed`.
    pub fn result(self, answer: Result<Reply, CallError>) -> Result<R, CallError> {
        let (target, what) = (self.target, self.what);
        // The reply itself is not shown: it may carry a passkey or a session.
        (self.narrow)(answer?).map_err(|_| {
            let message =
                format!("protocol error: {target} request {what} was answered with another reply");
            log::error!("{message}");
            CallError::Failed(message)
        })
    }
}

impl DbRequest {
    /// A person's action as the user of `auth`, for a caller that needs only to know that it
    /// was carried out (what an action answers depends on the action).
    pub fn act_as(auth: UserAuth, action: UserAction) -> Call<()> {
        let request = Request::Db(DbRequest::AsUser { auth, action });
        Call::new(ModuleKind::Db, request, "act_as", |reply| match reply {
            Reply::Db(_) => Ok(()),
            other => Err(other),
        })
    }
}

impl<R> fmt::Debug for Call<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Call({:?} to {})", self.request, self.target)
    }
}

/// Declares, for each db request a module calls, a constructor that says its reply type and
/// takes that reply out of the db's answer.
macro_rules! db_calls {
    ($(
        $(#[$doc:meta])*
        $name:ident($($arg:ident: $ty:ty),*) -> $reply:ty = $request:expr;
            $($pattern:pat => $out:expr),+;
    )*) => {
        impl DbRequest {
            $(
                $(#[$doc])*
                pub fn $name($($arg: $ty),*) -> Call<$reply> {
                    let what = stringify!($name);
                    Call::new(ModuleKind::Db, Request::Db($request), what, |reply| match reply {
                        $(Reply::Db($pattern) => Ok($out),)+
                        other => Err(other),
                    })
                }
            )*
        }
    };
}

db_calls! {
    /// Moves a task's state on `event`; the transition made.
    change_task_state(task_id: String, event: TaskEvent) -> Transition =
        DbRequest::ChangeTaskState { task_id, event };
        DbReply::Changed(t) => t;
    /// Creates up to `max_jobs` whole jobs for processing datasets; (jobs, tasks) created.
    buffer_jobs(max_jobs: u32) -> (u64, u64) = DbRequest::BufferJobs { max_jobs };
        DbReply::Buffered { jobs, tasks } => (jobs, tasks);
    /// Makes reset tasks ready to queue again; how many.
    recycle_tasks(max: u32) -> u64 = DbRequest::RecycleTasks { max };
        DbReply::Rows(n) => n;
    /// The tasks the grid holds, as the db sees them.
    grid_tasks(gridspec: String) -> Vec<GridTask> = DbRequest::GridTasks { gridspec };
        DbReply::GridTasks(tasks) => tasks;
    /// The pilots of the grid.
    grid_pilots(gridspec: String) -> Vec<PilotInfo> = DbRequest::GridPilots { gridspec };
        DbReply::Pilots(pilots) => pilots;
    /// Resets the tasks the grid ended, failed or forgot; how many.
    reset_grid_tasks(resets: Vec<GridReset>) -> u64 = DbRequest::ResetGridTasks { resets };
        DbReply::Rows(n) => n;
    /// Resets the grid's tasks past their time limits; how many.
    reset_stuck_tasks(gridspec: String, limits: StuckLimits) -> u64 =
        DbRequest::ResetStuckTasks { gridspec, limits };
        DbReply::Rows(n) => n;
    /// Picks up to `num` tasks for the grid and marks them queued.
    queue_tasks(gridspec: String, num: u32, largest: Resources, pilot_mode: bool)
        -> Vec<QueuedTask> = DbRequest::QueueTasks { gridspec, num, largest, pilot_mode };
        DbReply::Queued(tasks) => tasks;
    /// Records the grid's id of a submitted task.
    set_grid_id(task_id: String, grid_queue_id: String, submit_dir: String) -> () =
        DbRequest::SetGridId { task_id, grid_queue_id, submit_dir };
        DbReply::Done => (), DbReply::Rows(_) => ();
    /// The lookup's tasks of the grid by resource shape: (shape, how many), largest first.
    pilot_demand(gridspec: String) -> Vec<(Resources, u64)> = DbRequest::PilotDemand { gridspec };
        DbReply::Demand(shapes) => shapes;
    /// A new pilot for the grid: (pilot id, its passkey).
    create_pilot(gridspec: String, requirements: Resources) -> (String, String) =
        DbRequest::CreatePilot { gridspec, requirements };
        DbReply::Pilot { pilot_id, passkey } => (pilot_id, passkey);
    /// Records the grid's id of a submitted pilot.
    set_pilot_grid_id(pilot_id: String, grid_queue_id: String, submit_dir: String) -> () =
        DbRequest::SetPilotGridId { pilot_id, grid_queue_id, submit_dir };
        DbReply::Done => (), DbReply::Rows(_) => ();
    /// Removes a pilot that ended; how many of its tasks were reset.
    remove_pilot(pilot_id: String, reason: String) -> u64 =
        DbRequest::RemovePilot { pilot_id, reason };
        DbReply::Rows(n) => n;
    /// One copy-or-delete step of an archive run.
    archive_batch(cutoff: String, max: u32) -> crate::protocol::ArchiveBatchOutcome =
        DbRequest::ArchiveBatch { cutoff, max };
        DbReply::ArchiveBatch(outcome) => outcome;
    /// A page's data for the website.
    page(query: PageQuery) -> PageData = DbRequest::Page(query);
        DbReply::Page(data) => data;
    /// A dataset's page.
    dataset_page(query: PageQuery) -> Box<DatasetPage> = DbRequest::Page(query);
        DbReply::Page(PageData::Dataset(page)) => page;
    /// The live session of a session id.
    session(session_id: String) -> SessionInfo =
        DbRequest::Account(AccountRequest::Session { session_id });
        DbReply::Account(AccountReply::Session(info)) => info;
    /// Every group with its priority.
    groups(auth: Option<UserAuth>) -> Vec<Group> =
        DbRequest::Account(AccountRequest::GetGroups { auth });
        DbReply::Account(AccountReply::Groups(groups)) => groups;
    /// Checks a password and opens a session valid for `ttl`.
    login(username: String, password: String, ttl: std::time::Duration) -> SessionInfo =
        DbRequest::Account(AccountRequest::Login { username, password, ttl });
        DbReply::Account(AccountReply::Session(info)) => info;
    /// Ends a session; needs its CSRF token.
    logout(session_id: String, csrf_token: String) -> () =
        DbRequest::Account(AccountRequest::Logout { session_id, csrf_token });
        DbReply::Done => ();
    /// Replaces every group at once.
    set_groups(auth: UserAuth, groups: Vec<Group>) -> () =
        DbRequest::Account(AccountRequest::SetGroups { auth, groups });
        DbReply::Done => ();
    /// Submits a dataset as the user of `auth`: (its global id, its number).
    submit_dataset_as(auth: UserAuth, submission: Box<DatasetSubmission>) -> (String, u64) =
        DbRequest::AsUser { auth, action: UserAction::SubmitDataset(submission) };
        DbReply::Dataset { dataset_id, dataset_num } => (dataset_id, dataset_num);
    /// Succeeds only when `auth` is an admin's.
    require_admin(auth: UserAuth) -> () =
        DbRequest::Account(AccountRequest::RequireAdmin { auth });
        DbReply::Done => ();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_gets_its_one_reply_shape_typed() {
        let call = DbRequest::grid_tasks("s.local".into());
        assert_eq!(call.target(), ModuleKind::Db);
        let (_, request, typed) = call.into_parts();
        assert_eq!(
            request,
            Request::Db(DbRequest::GridTasks {
                gridspec: "s.local".into()
            })
        );
        assert_eq!(
            typed.result(Ok(Reply::Db(DbReply::GridTasks(Vec::new())))),
            Ok(Vec::new())
        );
    }

    #[test]
    fn another_reply_shape_is_a_protocol_error_naming_the_request() {
        let (_, _, typed) = DbRequest::recycle_tasks(5).into_parts();
        match typed.result(Ok(Reply::Db(DbReply::Done))) {
            Err(CallError::Failed(why)) => {
                assert!(
                    why.contains("protocol error") && why.contains("db request recycle_tasks"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        // The callee's own errors pass through untouched.
        let (_, _, typed) = DbRequest::recycle_tasks(5).into_parts();
        assert_eq!(
            typed.result(Err(CallError::Timeout)),
            Err(CallError::Timeout)
        );
    }

    #[test]
    fn ignoring_the_reply_still_checks_its_shape() {
        let call = DbRequest::remove_pilot("p".into(), "gone".into()).ignoring_reply();
        let (_, _, typed) = call.into_parts();
        assert_eq!(typed.result(Ok(Reply::Db(DbReply::Rows(2)))), Ok(()));
        let (_, _, typed) = DbRequest::remove_pilot("p".into(), "gone".into())
            .ignoring_reply()
            .into_parts();
        assert!(typed.result(Ok(Reply::Pong)).is_err());
    }
}
