//! iceprod-runtime: what every module thread stands on.
//!
//! Owns the one event loop ([`event_loop`]), the [`Module`] trait modules implement, mailboxes
//! ([`mailbox`]), the runtime's own messages (envelopes, reply handles, the controller ↔ module
//! protocol: [`messages`]), the spawn function that supervises a module thread ([`spawn`]),
//! supervised worker threads ([`worker`]), counters shared with the metrics page ([`stats`]), a
//! harness that runs one real module on a thread for tests (`harness`) and, for tests too,
//! child processes killed with everything they started (`session`), both behind the
//! `test-support` feature.
//!
//! It must not know any concrete module: module crates depend on it, never the other way round.
//! The shared model (requests and replies, config, ids, states, the dataset language) is
//! `iceprod-model`; it is re-exported here under its own module names, so a module crate can
//! name everything it needs through this one crate.

#![warn(missing_docs)]

pub mod error;
pub mod event_loop;
#[cfg(feature = "test-support")]
pub mod harness;
pub mod mailbox;
pub mod messages;
#[cfg(feature = "test-support")]
pub mod session;
pub mod spawn;
pub mod stats;
mod timer;
pub mod worker;

pub use iceprod_model::config::StateFile;
pub use iceprod_model::{calls, config, dataset, ids, states, status, web};

/// The model's requests and replies, and the runtime's messages that carry them.
pub mod protocol {
    pub use crate::messages::*;
    pub use iceprod_model::protocol::*;
}

pub use error::ModuleError;
pub use event_loop::{Context, Module, ReloadAction, TimerId, FIRST_MODULE_TOKEN, TURN_BUDGET};
pub use iceprod_model::{
    Call, CallError, Config, ConfigError, ControlAsk, DatasetAction, DatasetSubmission, DbReply,
    DbRequest, GridReset, GridTask, ModuleAction, ModuleKind, PasskeyScope, PilotInfo, PublicQuery,
    QueueRequest, QueuedTask, Reply, Request, Resources, ScheduledMessage, StuckLimits, TaskAction,
    TaskCall, UserAction,
};
pub use mailbox::{Directory, Mailbox, WorkerSender};
pub use messages::{Ctl, Envelope, Fault, ReplyTo, Status, StatusReport, StopReason};
pub use spawn::{module_entry, spawn_module, Launch, ModuleEntry, ModuleThread};
pub use stats::RuntimeStats;
pub use worker::{WorkerCx, WorkerExit, WorkerSpawner};
