//! iceprod-model: the shared model every module speaks, with no threads in it.
//!
//! Owns the requests modules send each other and their replies ([`protocol`]), the validated
//! configuration ([`config`]), base-62 ids ([`ids`]), task states and their one transition
//! function ([`states`]), the website's account and page types ([`web`]) and the dataset
//! config language ([`dataset`]).
//!
//! It must not know threads, loops or mailboxes (that is `iceprod-runtime`), nor any concrete
//! module. A new module adds its requests here and its crate under `modules/`.

#![warn(missing_docs)]

pub mod calls;
pub mod config;
pub mod dataset;
pub mod error;
pub mod ids;
pub mod protocol;
pub mod states;
pub mod status;
pub mod web;

pub use calls::Call;
pub use config::Config;
pub use error::ConfigError;
pub use protocol::{
    CallError, ControlAsk, DatasetAction, DatasetSubmission, DbReply, DbRequest, GridReset,
    GridTask, ModuleAction, ModuleKind, PasskeyScope, PilotInfo, PublicQuery, QueueRequest,
    QueuedTask, Reply, Request, Resources, ScheduledMessage, StuckLimits, TaskAction, TaskCall,
    UserAction,
};
