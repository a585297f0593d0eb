//! The controller: the main thread's loop. It owns the signals (HUP, TERM, INT), the control
//! socket, the status channel every module reports to, and the supervision of each module:
//! start in order, restart with backoff, reload per section, stop in reverse order.
//!
//! It never runs module work itself and never blocks, except while starting the modules, when
//! it waits for each to report ready so that a module that cannot start fails the whole start
//! with its reason.

mod policy;
mod reload;
mod socket;
mod supervisor;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use iceprod_runtime::status::{ControlReply, GridStatus, ModuleStatus, ReloadStatus, ServerStatus};
use iceprod_runtime::{
    CallError, Config, ControlAsk, Ctl, Directory, Fault, ModuleAction, ModuleEntry, ModuleKind,
    Reply, ReplyTo, RuntimeStats, Status, StatusReport, WorkerSender,
};
use mio::net::UnixListener;
use mio::{Events, Interest, Poll, Token, Waker};
use serde_json::json;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;

use crate::control::{CtlRequest, CtlResponse};
use reload::{PendingReload, Requester};
use socket::Connections;
use supervisor::{Shared, State, Supervised, Then};

const SIGNALS: Token = Token(0);
const STATUS: Token = Token(1);
const LISTENER: Token = Token(2);
/// Control connections get tokens from here up.
const FIRST_CONNECTION: usize = 16;

/// SIGHUPs within this window after the first one are folded into one reload.
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(250);

/// Stop signals this close to the first are the same request: `timeout(1)` and some process
/// managers signal both the process and its group, so one intent arrives twice.
const SAME_STOP_SIGNAL: Duration = Duration::from_millis(200);

/// The modules this build can run: how to start each and what each reads of the config.
pub type Launchers = Vec<ModuleEntry>;

/// What `ctl` can do to one module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Start,
    Stop,
    Restart,
    Kill,
    Ping,
    Inject(Fault),
}

/// The outcome of the last reload, kept for `ctl status`.
struct ReloadRecord {
    at: chrono::DateTime<chrono::Utc>,
    result: Result<String, String>,
}

pub struct Controller {
    poll: Poll,
    signals: Signals,
    listener: UnixListener,
    connections: Connections,
    status_rx: Receiver<StatusReport>,
    shared: Shared,
    config: Arc<Config>,
    modules: Vec<Supervised>,
    available: Vec<ModuleKind>,
    /// Whether the server runs without `--foreground` (its default log file differs).
    daemon: bool,
    reload_at: Option<Instant>,
    /// The reload waiting for its modules' answers.
    pending_reload: Option<PendingReload>,
    /// Reloads asked for while one was pending; they get the next one.
    next_reload: Vec<Requester>,
    next_reload_id: u64,
    last_reload: Option<ReloadRecord>,
    /// Modules still to stop, in order, once a TERM/INT arrived.
    shutdown: Option<Vec<ModuleKind>>,
    /// When the first stop signal arrived.
    stop_signalled: Option<Instant>,
    /// Control connections waiting for a module's `Pong`, by ping id.
    pings: HashMap<u64, Token>,
    next_ping: u64,
    started: Instant,
}

impl Controller {
    /// Sets up signals and the control socket. Signals are caught from here on, so a HUP during
    /// start-up cannot kill the process.
    pub fn new(config: Config, launchers: Launchers, daemon: bool) -> anyhow::Result<Controller> {
        use anyhow::Context as _;
        let poll = Poll::new().context("creating the controller's event loop")?;
        let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT, SIGUSR1])
            .context("installing signal handlers")?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), STATUS)?);
        let (status_tx, status_rx) = crossbeam_channel::unbounded();
        let mut listener = socket::bind(&config.controller.control_socket)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let shared = Shared {
            directory: Directory::default(),
            stats: Arc::new(RuntimeStats::default()),
            status: WorkerSender::new(status_tx, waker),
        };
        let available = launchers.iter().map(|e| e.kind).collect();
        let modules = launchers.into_iter().map(Supervised::new).collect();
        Ok(Controller {
            poll,
            signals,
            listener,
            connections: Connections::new(FIRST_CONNECTION),
            status_rx,
            shared,
            config: Arc::new(config),
            modules,
            available,
            daemon,
            reload_at: None,
            pending_reload: None,
            next_reload: Vec::new(),
            next_reload_id: 0,
            last_reload: None,
            shutdown: None,
            stop_signalled: None,
            pings: HashMap::new(),
            next_ping: 1,
            started: Instant::now(),
        })
    }

    /// Starts every enabled module in order, waiting for each to be ready.
    pub fn start_modules(&mut self) -> anyhow::Result<()> {
        for kind in ModuleKind::ALL {
            if !self.config.modules.enabled(kind) {
                continue;
            }
            let config = self.config.clone();
            let Some(m) = self.modules.iter_mut().find(|m| m.kind == kind) else {
                continue;
            };
            self.shared.directory.set(kind, Some(m.mailbox().clone()));
            m.start(&config, &self.shared);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let report = self.status_rx.recv_timeout(left).map_err(|_| {
                    anyhow::anyhow!("module {kind} did not become ready within 60 s")
                })?;
                let done = report.kind == kind && matches!(report.status, Status::Ready);
                let failed = match (&report.status, report.kind == kind) {
                    (Status::Stopped(reason), true) => Some(reason.to_string()),
                    _ => None,
                };
                self.on_status(report);
                if let Some(reason) = failed {
                    anyhow::bail!("module {kind} could not start: {reason}");
                }
                if done {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Runs until every module stopped after TERM/INT. Returns the exit status.
    pub fn run(&mut self) -> anyhow::Result<()> {
        let mut events = Events::with_capacity(64);
        loop {
            while let Ok(report) = self.status_rx.try_recv() {
                self.on_status(report);
            }
            let next = self.tick();
            if self.shutdown.as_ref().is_some_and(|rest| rest.is_empty()) {
                log::info!("all modules stopped; exiting");
                return Ok(());
            }
            let timeout = next.map(|at| at.saturating_duration_since(Instant::now()));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signals(),
                    STATUS => {} // drained at the top of the loop
                    LISTENER => self.accept(),
                    token => self.on_connection(token, event),
                }
            }
        }
    }

    /// Timers of the controller: debounced reload, module restarts and stop deadlines, the
    /// shutdown sequence. Returns the next time it needs to run.
    fn tick(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        if let Some(when) = self.reload_at {
            if when <= now {
                self.reload_at = None;
                self.request_reload(Requester::Signal);
            } else {
                at(Some(when));
            }
        }
        self.reload_tick(now);
        at(self.reload_deadline());
        let config = self.config.clone();
        for m in &mut self.modules {
            at(m.tick(now, &config, &self.shared));
        }
        self.advance_shutdown();
        next
    }

    fn on_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for signal in pending {
            match signal {
                SIGHUP if self.shutdown.is_none() => {
                    if self.reload_at.is_none() {
                        log::info!("SIGHUP: reloading the config");
                        self.reload_at = Some(Instant::now() + RELOAD_DEBOUNCE);
                    }
                }
                SIGHUP => log::info!("SIGHUP ignored while stopping"),
                SIGUSR1 => match crate::logging::reopen() {
                    Ok(()) => log::info!("SIGUSR1: log file reopened"),
                    Err(e) => log::error!("SIGUSR1: {e}"),
                },
                _ if self
                    .stop_signalled
                    .is_some_and(|first| first.elapsed() < SAME_STOP_SIGNAL) =>
                {
                    log::debug!("stop signal repeated at once: the same request");
                }
                _ if self.shutdown.is_some() => {
                    log::warn!("second stop signal: exiting at once");
                    socket::remove(&self.config.controller.control_socket);
                    let _ = std::fs::remove_file(&self.config.controller.pid_file);
                    std::process::exit(1);
                }
                _ => {
                    log::info!("stop signal: stopping modules");
                    self.stop_signalled = Some(Instant::now());
                    self.begin_shutdown();
                }
            }
        }
    }

    fn begin_shutdown(&mut self) {
        let order: Vec<ModuleKind> = ModuleKind::ALL.iter().rev().copied().collect();
        self.shutdown = Some(order);
        self.reload_at = None;
        // A reload still being checked ends unapplied.
        self.advance_reload();
        self.advance_shutdown();
    }

    /// Stops the modules one at a time in reverse start order.
    fn advance_shutdown(&mut self) {
        loop {
            let Some(&kind) = self.shutdown.as_ref().and_then(|rest| rest.first()) else {
                return;
            };
            let deadline = Instant::now() + self.config.controller.stop_timeout;
            let config = self.config.clone();
            let shared = &self.shared;
            let waiting = match self.modules.iter_mut().find(|m| m.kind == kind) {
                Some(m) => {
                    match m.state {
                        State::Starting(_) | State::Running { .. } => {
                            m.stop(deadline, Then::Stay, &config, shared)
                        }
                        State::Backoff { .. } => m.state = State::Stopped,
                        _ => {}
                    }
                    m.has_thread()
                }
                None => false,
            };
            if waiting {
                return;
            }
            if let Some(rest) = self.shutdown.as_mut() {
                rest.remove(0);
            }
        }
    }

    fn on_status(&mut self, report: StatusReport) {
        // An ask is answered whatever thread generation sent it: its reply goes to the
        // mailbox, which outlives the thread.
        let status = match report.status {
            Status::Ask { ask, reply } => return self.answer_ask(report.kind, ask, reply),
            other => other,
        };
        let shutting_down = self.shutdown.is_some();
        let config = self.config.clone();
        let Some(m) = self.modules.iter_mut().find(|m| m.kind == report.kind) else {
            return;
        };
        if report.generation != m.generation {
            log::debug!("{}: ignored a report of an earlier thread", report.kind);
            return;
        }
        match status {
            Status::Ready => m.on_ready(&self.shared),
            Status::Stopped(reason) => {
                m.on_stopped(reason, shutting_down, &config, &self.shared);
                self.on_reload_module_stopped(report.kind);
            }
            Status::ReloadChecked { id, result } => self.on_reload_checked(report.kind, id, result),
            Status::Reloaded { id, action } => self.on_reloaded(report.kind, id, action),
            // Answered above, before the generation check.
            Status::Ask { .. } => {}
            Status::Pong { id } => {
                if let Some(token) = self.pings.remove(&id) {
                    let answer = CtlResponse::ok(
                        json!({"module": report.kind, "generation": report.generation}),
                    );
                    self.connections
                        .respond(self.poll.registry(), token, &answer);
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = self.connections.add(self.poll.registry(), stream) {
                        log::warn!("control socket: cannot register a connection: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("control socket: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn on_connection(&mut self, token: Token, event: &mio::event::Event) {
        let requests = self
            .connections
            .on_event(self.poll.registry(), token, event);
        for request in requests {
            let answer = match request {
                Ok(request) => self.handle(token, request),
                Err(message) => Some(CtlResponse::error(message)),
            };
            if let Some(answer) = answer {
                self.connections
                    .respond(self.poll.registry(), token, &answer);
            }
        }
    }

    /// Answers a control request; `None` when the answer comes later (ping).
    fn handle(&mut self, token: Token, request: CtlRequest) -> Option<CtlResponse> {
        let (module, action) = match request {
            CtlRequest::Status {} => return Some(CtlResponse::status(&self.status())),
            CtlRequest::Reload {} => {
                // Answered once every module that hears the change answered.
                self.request_reload(Requester::Socket(token));
                return None;
            }
            CtlRequest::ReopenLogs {} => {
                return Some(match crate::logging::reopen() {
                    Ok(()) => CtlResponse::ok(json!("log file reopened")),
                    Err(e) => CtlResponse::error(e),
                })
            }
            CtlRequest::Start { module } => (module, Action::Start),
            CtlRequest::Stop { module } => (module, Action::Stop),
            CtlRequest::Restart { module } => (module, Action::Restart),
            CtlRequest::Kill { module } => (module, Action::Kill),
            CtlRequest::Ping { module } => (module, Action::Ping),
            CtlRequest::Inject { module, fault } => (module, Action::Inject(fault)),
        };
        match self.act(Some(token), &module, action) {
            Ok(answer) => answer.map(|msg| CtlResponse::ok(json!(msg))),
            Err(e) => Some(CtlResponse::error(e)),
        }
    }

    /// Answers a module's [`ControlAsk`] (the website's site page and admin methods) with
    /// what `iceprod ctl` would print.
    fn answer_ask(&mut self, from: ModuleKind, ask: ControlAsk, reply: ReplyTo) {
        log::info!("{from} asks the controller: {ask:?}");
        let answer = match ask {
            ControlAsk::Status => Ok(ControlReply::Status(Box::new(self.status()))),
            ControlAsk::Reload => return self.request_reload(Requester::Ask(reply)),
            ControlAsk::Module { module, action } => {
                let action = match action {
                    ModuleAction::Start => Action::Start,
                    ModuleAction::Stop => Action::Stop,
                    ModuleAction::Restart => Action::Restart,
                };
                // Start, stop and restart always answer at once (only ping answers later).
                self.act(None, module.name(), action)
                    .map(|msg| ControlReply::Done(msg.unwrap_or_default()))
            }
        };
        reply.send(answer.map(Reply::Control).map_err(CallError::Refused));
    }

    /// Carries out a control action on one module. `Ok(None)`: the answer comes later.
    fn act(
        &mut self,
        token: Option<Token>,
        name: &str,
        action: Action,
    ) -> Result<Option<String>, String> {
        let kind =
            ModuleKind::from_name(name).ok_or_else(|| format!("no module named `{name}`"))?;
        if matches!(action, Action::Inject(_)) && !self.config.debug.fault_injection {
            return Err("fault injection is off: set [debug] fault_injection = true".into());
        }
        if self.shutdown.is_some() && action != Action::Ping {
            return Err("the server is stopping".into());
        }
        if !self.config.modules.enabled(kind) {
            return Err(format!("module {name} is disabled in [modules]"));
        }
        let deadline = Instant::now() + self.config.controller.stop_timeout;
        let config = self.config.clone();
        let shared = &self.shared;
        let m = self
            .modules
            .iter_mut()
            .find(|m| m.kind == kind)
            .ok_or_else(|| format!("module {name} is not part of this build"))?;
        Ok(Some(match action {
            Action::Start => {
                if m.has_thread() || matches!(m.state, State::Backoff { .. }) {
                    return Err(format!("module {name} is already {}", m.state.name()));
                }
                m.failures = 0;
                m.start(&config, shared);
                format!("{name} starting")
            }
            Action::Stop => {
                m.stop(deadline, Then::Stay, &config, shared);
                if matches!(m.state, State::Killed | State::Backoff { .. }) {
                    m.state = State::Stopped;
                }
                format!("{name} stopping")
            }
            Action::Restart => {
                m.stop(deadline, Then::Restart, &config, shared);
                format!("{name} restarting")
            }
            Action::Kill => {
                m.kill(shared);
                format!("{name} killed; its mailbox is kept")
            }
            Action::Ping => {
                let Some(token) = token else {
                    return Err("ping is for the control socket".into());
                };
                let id = self.next_ping;
                self.next_ping += 1;
                m.send(Ctl::Ping { id });
                self.pings.insert(id, token);
                return Ok(None);
            }
            Action::Inject(Fault::Panic) => {
                log::warn!("fault injection: panic in {name}");
                m.send(Ctl::InjectPanic);
                format!("{name}: panic injected")
            }
            Action::Inject(Fault::PanicWorker) => {
                log::warn!("fault injection: panic in a worker of {name}");
                m.send(Ctl::InjectWorkerPanic);
                format!("{name}: the next job of one of its workers panics")
            }
            Action::Inject(Fault::PanicInit(times)) => {
                log::warn!("fault injection: {name} panics in init {times} time(s)");
                m.panic_init_left = times;
                m.stop(deadline, Then::Restart, &config, shared);
                format!("{name}: restarting; init panics {times} time(s)")
            }
        }))
    }

    fn status(&self) -> ServerStatus {
        let modules = self
            .modules
            .iter()
            .map(|m| ModuleStatus {
                name: m.kind,
                enabled: self.config.modules.enabled(m.kind),
                state: m.state.name().to_string(),
                generation: m.generation,
                restarts: self.shared.stats.restarts(m.kind),
                failures: m.failures,
                last_error: m.last_error.clone(),
                last_reload: m.last_reload.clone(),
                mailbox_depth: m.mailbox().depth(),
            })
            .collect();
        ServerStatus {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            config: self.config.file.clone(),
            site_id: self.config.site.id.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            stopping: self.shutdown.is_some(),
            reloads: self.shared.stats.reloads.load(Ordering::Relaxed),
            last_reload: self.last_reload.as_ref().map(|r| ReloadStatus {
                at: r.at.to_rfc3339(),
                ok: r.result.is_ok(),
                message: match &r.result {
                    Ok(m) | Err(m) => m.clone(),
                },
            }),
            modules,
            grids: self
                .shared
                .stats
                .grid_reports()
                .into_iter()
                .map(|(name, report)| GridStatus { name, report })
                .collect(),
        }
    }

    /// Removes the control socket; called once the loop has ended.
    pub fn close(&mut self) {
        socket::remove(&self.config.controller.control_socket);
    }
}
