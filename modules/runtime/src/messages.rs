//! The messages of the runtime itself: what a mailbox carries ([`Envelope`]), the reply
//! handle ([`ReplyTo`]), and the controller ↔ module protocol ([`Ctl`] in, [`StatusReport`]
//! out). What modules ask each other is the model's protocol (`iceprod_model::protocol`).
//!
//! The protocol, in order:
//! 1. The controller spawns a module; the module reports [`Status::Ready`] once `init` returned.
//! 2. Modules call each other with [`Envelope::Request`]; the callee answers exactly once through
//!    the [`ReplyTo`] it was handed, which posts [`Envelope::Reply`] into the caller's mailbox.
//!    The caller's loop runs the stored callback, or drops the reply if its deadline passed.
//! 3. The controller sends [`Envelope::Ctl`]; the module answers with a [`StatusReport`] on the
//!    status channel (`ReloadChecked`, `Reloaded`, `Pong`), and always ends with
//!    [`Status::Stopped`].

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use iceprod_model::config::Config;
use iceprod_model::protocol::{CallError, ControlAsk, ModuleKind, Reply, Request};
use serde::{Deserialize, Serialize};

use crate::mailbox::Mailbox;

/// What a mailbox carries.
pub enum Envelope {
    /// From the controller.
    Ctl(Ctl),
    /// A call from another module (or a test); answer through `reply`.
    Request {
        /// What the caller asks.
        body: Request,
        /// The handle that answers this call, exactly once.
        reply: ReplyTo,
    },
    /// The answer to a call this module made, matched by id to its callback.
    Reply {
        /// The call id the callback waits under (from the caller's [`ReplyTo`]).
        id: u64,
        /// The callee's answer, or why the call failed.
        result: Result<Reply, CallError>,
    },
}

/// Where a reply goes: the caller's mailbox and the id its callback waits under. Dropping it
/// unanswered (a handler forgot, or the module panicked) answers `CallError::Failed`, so a
/// caller never waits for the full deadline on a reply that cannot come.
pub struct ReplyTo {
    mailbox: Option<Mailbox>,
    id: u64,
}

impl fmt::Debug for ReplyTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplyTo(call {})", self.id)
    }
}

/// Two handles are equal when they answer the same call (tests compare status reports).
impl PartialEq for ReplyTo {
    fn eq(&self, other: &ReplyTo) -> bool {
        self.id == other.id
    }
}

impl ReplyTo {
    pub(crate) fn new(mailbox: Mailbox, id: u64) -> ReplyTo {
        ReplyTo {
            mailbox: Some(mailbox),
            id,
        }
    }

    /// The call id, for logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Answers the call. A caller that is restarting gets it on its mailbox all the same.
    pub fn send(mut self, result: Result<Reply, CallError>) {
        if let Some(mailbox) = self.mailbox.take() {
            let _ = mailbox.send(Envelope::Reply {
                id: self.id,
                result,
            });
        }
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if let Some(mailbox) = self.mailbox.take() {
            let _ = mailbox.send(Envelope::Reply {
                id: self.id,
                result: Err(CallError::Failed(
                    "the module stopped before answering".into(),
                )),
            });
        }
    }
}

/// Controller → module.
pub enum Ctl {
    /// Reload, first phase: could the module take `config` (its view of it changed)? It
    /// answers [`Status::ReloadChecked`] with the same id and changes nothing yet.
    CheckReload {
        /// The reload's id, the same in both phases, echoed in the answer.
        id: u64,
        /// The config the controller means to apply.
        config: Arc<Config>,
    },
    /// Reload, second phase (every module accepted): apply `config` in place or ask for a
    /// restart; answered with [`Status::Reloaded`].
    Reload {
        /// The reload's id, echoed in the answer.
        id: u64,
        /// The config to apply, the one every module accepted.
        config: Arc<Config>,
    },
    /// Stop gracefully; the loop exits by `deadline` whatever is still in flight.
    Stop {
        /// When the loop ends even if the module is not drained.
        deadline: Instant,
    },
    /// Answer [`Status::Pong`] with the same id (proves the mailbox is served).
    Ping {
        /// The ping's id, echoed in the pong.
        id: u64,
    },
    /// Fault injection (`[debug] fault_injection`): panic while handling this message.
    InjectPanic,
    /// Fault injection: the next job a worker of this module takes panics (see
    /// [`crate::worker::WorkerCx::checkpoint`]).
    InjectWorkerPanic,
}

/// Faults an operator or a test can inject (`iceprod ctl inject …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Panic in the running module while it handles a message ([`Ctl::InjectPanic`]).
    Panic,
    /// Restart the module and panic in `init` the next N starts (through [`crate::Launch`]).
    PanicInit(u32),
    /// Panic in one of the module's worker threads at its next job ([`Ctl::InjectWorkerPanic`]).
    PanicWorker,
}

/// Module → controller, tagged with the module and the generation of its thread.
#[derive(Debug)]
pub struct StatusReport {
    /// The module that reports.
    pub kind: ModuleKind,
    /// Which start of the module sent it (1 for the first); the controller ignores earlier ones.
    pub generation: u64,
    /// What the module reports.
    pub status: Status,
}

/// What a module reports to the controller. Not `Clone`: an [`Status::Ask`] carries the one
/// reply handle of its call.
#[derive(Debug, PartialEq)]
pub enum Status {
    /// `init` returned; the module serves its mailbox.
    Ready,
    /// Answer to [`Ctl::CheckReload`]: the module can take the new config, or refuses it
    /// with a reason (then the reload changes nothing anywhere).
    ReloadChecked {
        /// The id of the [`Ctl::CheckReload`] it answers.
        id: u64,
        /// `Ok` when the module can take the config; else the reason a person can act on.
        result: Result<(), String>,
    },
    /// Answer to [`Ctl::Reload`]: applied in place, or the module needs a restart.
    Reloaded {
        /// The id of the [`Ctl::Reload`] it answers.
        id: u64,
        /// Whether the config was applied in place or the module needs a restart.
        action: crate::ReloadAction,
    },
    /// Answer to [`Ctl::Ping`].
    Pong {
        /// The id of the [`Ctl::Ping`] it answers.
        id: u64,
    },
    /// A module asks the controller to act ([`crate::Context::ask_controller`]); the answer
    /// comes back through `reply` as [`Reply::Control`] or an error.
    Ask {
        /// What the module asks the controller to do.
        ask: ControlAsk,
        /// Where the controller's answer goes, into the asking module's mailbox.
        reply: ReplyTo,
    },
    /// The thread ended; always the last report of a generation.
    Stopped(StopReason),
}

/// How a module thread ended, in its last report ([`Status::Stopped`]).
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// Asked to stop and did.
    Requested,
    /// A panic unwound out of the module; the message of the panic.
    Panicked(String),
    /// `init` or the loop returned an error.
    Failed(String),
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Requested => f.write_str("stopped on request"),
            StopReason::Panicked(m) => write!(f, "panicked: {m}"),
            StopReason::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}
