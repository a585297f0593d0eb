//! iceprod-queue: the queue module (SPEC §6). Owns the queue cycle of every grid: reconcile
//! the database with what the grid reports, reset lost, ended and stuck tasks, buffer jobs,
//! queue tasks within `tasks_on_queue` (or pilots within `pilots_on_queue`), write submit
//! folders, submit, and record grid ids. The cycle itself is in [`cycle`].
//!
//! Nothing here blocks the loop: database work goes to the db module as calls, grid tools and
//! submit folders to the command workers ([`runner`]), local jobs to waiter threads
//! ([`local`]); every result comes back as a callback or a [`QueueEvent`]. A grid whose tool
//! fails, hangs or prints garbage changes no task state: the error is kept in its
//! [`GridReport`](iceprod_runtime::stats::GridReport) (`iceprod ctl status`) and the next
//! cycle tries again.

pub mod cycle;
pub mod error;
pub mod grids;
pub mod local;
pub mod runner;
pub mod submit;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use iceprod_runtime::config::{GridConfig, QueueConfig};
use iceprod_runtime::stats::GridReport;
use iceprod_runtime::{
    Config, Context, GridTask, Module, ModuleError, ModuleKind, PilotInfo, QueueRequest,
    ReloadAction, Reply, ReplyTo, Request, ScheduledMessage, TimerId,
};

pub use error::QueueError;

use grids::{BatchPlugin, CommandOutput, GridStatus};
use local::LocalGrid;
use runner::{Done, Runner};
use submit::WorkerSetup;

/// Command workers: submissions and status queries of all grids share them.
const COMMAND_THREADS: usize = 4;
/// The first cycle runs this soon after start, not a whole interval later.
const FIRST_CYCLE: Duration = Duration::from_millis(200);

/// What the module's own threads send back.
#[derive(Debug)]
pub enum QueueEvent {
    /// A command worker finished a piece of work.
    Work(Done),
    /// A local job ended.
    LocalExit {
        grid: usize,
        id: String,
        code: Option<i32>,
    },
}

/// How a grid's jobs are run.
pub(crate) enum Backend {
    /// A batch system driven by its tools.
    Batch(Box<dyn BatchPlugin>),
    /// Child processes of the server.
    Local(Box<LocalGrid>),
}

/// One grid and what the current cycle learned of it.
pub(crate) struct Grid {
    pub config: GridConfig,
    pub gridspec: String,
    pub backend: Backend,
    pub report: GridReport,
    /// The tasks the database says are on this grid (read at the cycle's start).
    pub tasks: Vec<GridTask>,
    pub pilots: Vec<PilotInfo>,
    /// The grid ids asked about, and the outputs of the status query's steps so far.
    pub ids: Vec<String>,
    pub outputs: Vec<CommandOutput>,
    pub status: GridStatus,
    /// Tasks still queued and processing once this cycle's resets are taken out.
    pub alive_queued: u64,
    pub alive_processing: u64,
    /// Submissions of this cycle not yet recorded.
    pub outstanding: usize,
    /// Whether the queue step was reached (the grid's cycle ends when it and every
    /// submission are done).
    pub queued_step_done: bool,
    /// Whether this cycle is over for the grid (its report written).
    pub finished: bool,
    pub errors: Vec<String>,
}

pub struct Queue {
    settings: QueueConfig,
    setup: WorkerSetup,
    pub(crate) grids: Vec<Grid>,
    pub(crate) runner: Runner,
    /// Counts cycles; work of an earlier cycle that comes back late is recognised by it.
    pub(crate) cycle: u64,
    pub(crate) active: Option<cycle::ActiveCycle>,
    /// A cycle was asked for while one ran: run another as soon as it ends, and answer these.
    pub(crate) again: Option<Vec<ReplyTo>>,
    timer: Option<TimerId>,
    stopping: bool,
}

impl Queue {
    fn build_grids(
        config: &Config,
        site_id: &str,
        events: &iceprod_runtime::WorkerSender<QueueEvent>,
    ) -> Vec<Grid> {
        config
            .queue
            .grids
            .values()
            .enumerate()
            .map(|(index, g)| {
                let backend = match grids::plugin_for(g) {
                    Some(plugin) => Backend::Batch(plugin),
                    None => Backend::Local(Box::new(LocalGrid::new(
                        index,
                        g.max_running,
                        events.clone(),
                    ))),
                };
                let gridspec = QueueConfig::gridspec(site_id, &g.name);
                Grid {
                    report: GridReport {
                        gridspec: gridspec.clone(),
                        kind: g.kind.name().to_string(),
                        ..GridReport::default()
                    },
                    config: g.clone(),
                    gridspec,
                    backend,
                    tasks: Vec::new(),
                    pilots: Vec::new(),
                    ids: Vec::new(),
                    outputs: Vec::new(),
                    status: GridStatus::new(),
                    alive_queued: 0,
                    alive_processing: 0,
                    outstanding: 0,
                    queued_step_done: false,
                    finished: false,
                    errors: Vec::new(),
                }
            })
            .collect()
    }

    fn worker_setup(config: &Config) -> Result<WorkerSetup, ModuleError> {
        let server_url = worker_server_url(config);
        let worker_command = match &config.queue.worker_command {
            Some(c) => c.clone(),
            None => std::env::current_exe()
                .map_err(|e| ModuleError::io("finding this server's executable for workers", e))?,
        };
        let ca_pem = match &config.queue.ca_cert {
            None => None,
            Some(file) => Some(std::fs::read(file).map_err(|e| {
                ModuleError::io(format!("reading [queue] ca_cert {}", file.display()), e)
            })?),
        };
        Ok(WorkerSetup {
            server_url,
            worker_command,
            ca_pem,
        })
    }

    pub(crate) fn settings(&self) -> &QueueConfig {
        &self.settings
    }

    pub(crate) fn setup(&self) -> &WorkerSetup {
        &self.setup
    }

    pub(crate) fn submit_dir(&self) -> &Path {
        &self.settings.submit_dir
    }

    pub(crate) fn schedule_next(&mut self, cx: &mut Context<Queue>) {
        if let Some(t) = self.timer.take() {
            cx.cancel_timer(t);
        }
        if !self.stopping {
            self.timer = Some(cx.set_timer(self.settings.interval));
        }
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping
    }

    fn ask_cycle(&mut self, cx: &mut Context<Queue>, reply: Option<ReplyTo>) {
        if self.stopping {
            if let Some(r) = reply {
                r.send(Err(iceprod_runtime::CallError::Refused(
                    "the queue is stopping".into(),
                )));
            }
            return;
        }
        if self.active.is_some() {
            let again = self.again.get_or_insert_with(Vec::new);
            again.extend(reply);
        } else {
            cycle::start(self, cx, reply.into_iter().collect());
        }
    }
}

/// What the queue module reads of the config: `[queue]`, the site id (gridspecs), and the URL
/// its workers reach the server at, which follows `[website]` while `[queue] server_url` is
/// unset.
#[derive(PartialEq)]
pub struct QueueView {
    queue: iceprod_runtime::config::QueueConfig,
    site_id: Option<String>,
    server_url: String,
}

/// The base URL workers reach the server at: `[queue] server_url`, or the website's own
/// address.
fn worker_server_url(config: &Config) -> String {
    config.queue.server_url.clone().unwrap_or_else(|| {
        let w = &config.website;
        let host = if w.address.is_unspecified() {
            "127.0.0.1".to_string()
        } else if w.address.is_ipv6() {
            format!("[{}]", w.address)
        } else {
            w.address.to_string()
        };
        format!("http://{host}:{}", w.port)
    })
}

impl Module for Queue {
    const KIND: ModuleKind = ModuleKind::Queue;
    type Event = QueueEvent;
    type View = QueueView;

    fn view(config: &Config) -> QueueView {
        QueueView {
            queue: config.queue.clone(),
            site_id: config.site.id.clone(),
            server_url: worker_server_url(config),
        }
    }

    fn init(cx: &mut Context<Self>) -> Result<Self, ModuleError> {
        let config = cx.config().clone();
        let site_id = config.site.id.clone().unwrap_or_else(|| "a".into());
        let setup = Queue::worker_setup(&config)?;
        std::fs::create_dir_all(&config.queue.submit_dir).map_err(|e| {
            ModuleError::io(
                format!(
                    "making the submit folder {}",
                    config.queue.submit_dir.display()
                ),
                e,
            )
        })?;
        let events = cx.worker_sender();
        let grids = Queue::build_grids(&config, &site_id, &events);
        cx.stats()
            .retain_grids(|name| config.queue.grids.contains_key(name));
        for g in &grids {
            cx.stats().set_grid_report(&g.config.name, g.report.clone());
            log::info!(
                "queue: grid {} ({}), {} mode, tasks_on_queue {:?}",
                g.gridspec,
                g.config.kind,
                if g.config.submit_pilots {
                    "pilot"
                } else {
                    "direct"
                },
                g.config.tasks_on_queue
            );
        }
        let runner = Runner::start(COMMAND_THREADS, events, cx.workers())
            .map_err(|e| ModuleError::io("starting the queue's command workers", e))?;
        let timer = Some(cx.set_timer(FIRST_CYCLE));
        Ok(Queue {
            settings: config.queue.clone(),
            setup,
            grids,
            runner,
            cycle: 0,
            active: None,
            again: None,
            timer,
            stopping: false,
        })
    }

    fn on_message(&mut self, cx: &mut Context<Self>, request: Request, reply: ReplyTo) {
        match request {
            Request::Queue(QueueRequest::RunCycle) => self.ask_cycle(cx, Some(reply)),
            Request::Scheduled {
                message: ScheduledMessage::QueueCycle,
                ..
            } => {
                reply.send(Ok(Reply::Done));
                self.ask_cycle(cx, None);
            }
            Request::Scheduled { .. } => reply.send(Ok(Reply::Done)),
            _ => reply.send(Err(iceprod_runtime::CallError::Unsupported(
                "the queue module takes queue requests only",
            ))),
        }
    }

    fn on_worker(&mut self, cx: &mut Context<Self>, event: QueueEvent) {
        match event {
            QueueEvent::Work(done) => cycle::work_done(self, cx, done),
            QueueEvent::LocalExit { grid, id, code } => {
                if let Some(Backend::Local(local)) =
                    self.grids.get_mut(grid).map(|g| &mut g.backend)
                {
                    log::debug!("queue: local job {id} ended with {code:?}");
                    local.exited(&id, code);
                }
            }
        }
    }

    fn on_timer(&mut self, cx: &mut Context<Self>, timer: TimerId) {
        if self.timer == Some(timer) {
            self.timer = None;
            self.ask_cycle(cx, None);
        } else if self.active.as_ref().is_some_and(|a| a.watchdog == timer) {
            cycle::abandon(self, cx);
        }
    }

    fn check_reload(
        &mut self,
        _cx: &mut Context<Self>,
        config: &Arc<Config>,
    ) -> Result<(), String> {
        // What a restart would need, so a reload the queue cannot start with is refused
        // instead of leaving it failing to start.
        Queue::worker_setup(config).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&config.queue.submit_dir).map_err(|e| {
            format!(
                "cannot create [queue] submit_dir {}: {e}",
                config.queue.submit_dir.display()
            )
        })
    }

    fn on_reload(&mut self, cx: &mut Context<Self>, config: &Arc<Config>) -> ReloadAction {
        let new = &config.queue;
        if new.grids != self.settings.grids {
            // Another set of grids, or grids of another shape: their plugins and the local
            // grid's jobs are rebuilt by a restart.
            return ReloadAction::NeedsRestart;
        }
        match Queue::worker_setup(config) {
            Ok(setup) => self.setup = setup,
            Err(_) => return ReloadAction::NeedsRestart,
        }
        let interval_changed = new.interval != self.settings.interval;
        self.settings = new.clone();
        if interval_changed && self.active.is_none() {
            self.schedule_next(cx);
        }
        ReloadAction::Applied
    }

    fn on_shutdown(&mut self, cx: &mut Context<Self>) {
        self.stopping = true;
        if let Some(t) = self.timer.take() {
            cx.cancel_timer(t);
        }
        if let Some(waiters) = self.again.take() {
            for w in waiters {
                w.send(Err(iceprod_runtime::CallError::Refused(
                    "the queue is stopping".into(),
                )));
            }
        }
    }

    fn is_drained(&self) -> bool {
        // A cycle in flight finishes its submissions so each grid id gets recorded.
        self.active.is_none()
    }
}
