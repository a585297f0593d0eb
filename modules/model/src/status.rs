//! What the controller tells a module that asks (`ControlAsk`): the server's status, typed,
//! as `iceprod ctl status` prints it and the website's site page and admin methods show it.
//! It travels as this struct between threads and as its JSON over the control socket.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::protocol::ModuleKind;

/// The controller's answer to a `ControlAsk`.
#[derive(Clone, Debug, PartialEq)]
pub enum ControlReply {
    /// Answer to `ControlAsk::Status`.
    Status(Box<ServerStatus>),
    /// Answer to a reload or a module action: what was done, as `iceprod ctl` prints it.
    Done(String),
}

/// The server as the controller sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The server's process id.
    pub pid: u32,
    /// The server's version.
    pub version: String,
    /// The config file the server reads (again at each reload).
    pub config: PathBuf,
    /// The site id (set once the server started).
    pub site_id: Option<String>,
    /// Seconds since the controller started.
    pub uptime_s: u64,
    /// Whether a stop signal arrived and the modules are being stopped.
    pub stopping: bool,
    /// Reloads that were applied since start.
    pub reloads: u64,
    /// The outcome of the last reload, applied or refused; `None` before the first.
    pub last_reload: Option<ReloadStatus>,
    /// Every module of this build, in start order.
    pub modules: Vec<ModuleStatus>,
    /// Every grid the queue reported on, by name.
    pub grids: Vec<GridStatus>,
}

/// The outcome of the last reload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// When it ended (RFC 3339).
    pub at: String,
    /// Whether it was applied (false: refused, nothing changed).
    pub ok: bool,
    /// What changed and each module's answer, or why it was refused.
    pub message: String,
}

/// One module as the controller supervises it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModuleStatus {
    /// Which module.
    pub name: ModuleKind,
    /// Whether `[modules]` enables it.
    pub enabled: bool,
    /// `running`, `starting`, `stopping`, `restarting` (waiting out its backoff), `stopped` or
    /// `killed`.
    pub state: String,
    /// Starts of the module in this process (1 for the first).
    pub generation: u64,
    /// Times the controller restarted it.
    pub restarts: u64,
    /// Failures in a row, which set the restart backoff.
    pub failures: u32,
    /// Why it last stopped unasked (a panic, an error), if it did.
    pub last_error: Option<String>,
    /// Its answer to the last reload it heard (`applied in place`, `restarted`).
    pub last_reload: Option<String>,
    /// Messages waiting in its mailbox.
    pub mailbox_depth: usize,
}

/// One grid as the queue last reported it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GridStatus {
    /// The grid's name, as in `[queue.grids.NAME]`.
    pub name: String,
    /// What the queue saw of it.
    #[serde(flatten)]
    pub report: GridReport,
}

/// The queue module's view of one grid after its last cycle, for `iceprod ctl status`, the
/// site page and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GridReport {
    /// `SITEID.NAME`, the grid's id in task rows.
    pub gridspec: String,
    /// `local`, `slurm`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// Tasks queued on the grid at the start of the last cycle.
    pub queued: u64,
    /// Tasks processing on the grid at the start of the last cycle.
    pub processing: u64,
    /// Tasks (or pilots) submitted since start.
    pub submitted: u64,
    /// Tasks reset because the grid lost, ended or failed them, since start.
    pub reset: u64,
    /// Cycles run since start.
    pub cycles: u64,
    /// When the last cycle ended (RFC 3339).
    pub last_cycle: Option<String>,
    /// The last grid command error (tool missing, non-zero exit, timeout, garbage output);
    /// kept until a later cycle runs without error.
    pub last_error: Option<String>,
    /// When the last error happened (RFC 3339).
    pub last_error_at: Option<String>,
}
