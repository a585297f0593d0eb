//! iceprod-runtime: what every module thread stands on.
//!
//! Owns the one event loop ([`event_loop`]), the [`Module`] trait modules implement, mailboxes
//! ([`mailbox`]), the typed messages that cross threads ([`protocol`]), the spawn function that
//! supervises a module thread ([`spawn`]), the validated configuration ([`config`]), base-62 ids
//! ([`ids`]), counters shared with the metrics page ([`stats`]), a harness that runs one real
//! module on a thread for tests ([`harness`]) and, for tests too, child processes killed with
//! everything they started ([`session`]).
//!
//! It must not know any concrete module: module crates depend on it, never the other way round.

pub mod config;
pub mod dataset;
pub mod error;
pub mod event_loop;
pub mod harness;
pub mod ids;
pub mod mailbox;
pub mod protocol;
pub mod session;
pub mod spawn;
pub mod states;
pub mod stats;
mod timer;
pub mod web;

pub use config::{Config, StateFile};
pub use error::{ConfigError, ModuleError};
pub use event_loop::{Context, Module, ReloadAction, TimerId, FIRST_MODULE_TOKEN};
pub use mailbox::{Directory, Mailbox, WorkerSender};
pub use protocol::{
    CallError, ControlAsk, Ctl, DatasetAction, DatasetSubmission, DbReply, DbRequest, Envelope,
    Fault, GridReset, GridTask, ModuleAction, ModuleKind, PasskeyScope, PilotInfo, PublicQuery,
    QueueRequest, QueuedTask, Reply, ReplyTo, Request, Resources, ScheduledMessage, Status,
    StatusReport, StopReason, StuckLimits, TaskAction, TaskCall, UserAction,
};
pub use spawn::{spawn_module, Launch, ModuleThread};
pub use stats::RuntimeStats;
