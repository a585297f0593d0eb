//! The one event loop every module runs on, and the [`Module`] trait it calls back.
//!
//! Only this file calls `poll()`. A loop owns a mio `Poll` with one `Waker` (token 0), the
//! module's mailbox, a channel from the module's own workers, the ends of its supervised
//! worker threads, and a timer heap holding module timers and call deadlines. Modules register
//! their own sources with tokens from [`FIRST_MODULE_TOKEN`] up and are called back; they never
//! block and never poll.
//!
//! The loop is fair: each turn takes at most [`TURN_BUDGET`] messages from the mailbox and as
//! many from the worker channel, and while anything is left it polls with a zero timeout
//! instead of sleeping, so a flooded mailbox delays a module's own sockets by one turn at most.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::event::Event;
use mio::{Events, Poll, Registry, Token, Waker};

use crate::error::ModuleError;
use crate::mailbox::{Directory, Mailbox, WorkerSender};
use crate::protocol::{
    CallError, ControlAsk, Ctl, Envelope, ModuleKind, Reply, ReplyTo, Request, Status, StatusReport,
};
use crate::stats::RuntimeStats;
use crate::timer::{TimerHeap, TimerKind};
use crate::worker::{WorkerExit, WorkerSpawner};
use iceprod_model::calls::Call;
use iceprod_model::config::Config;

/// The loop's waker. Tokens below [`FIRST_MODULE_TOKEN`] are reserved for the runtime.
pub const WAKER_TOKEN: Token = Token(0);
/// The first token a module may register its own sources under.
pub const FIRST_MODULE_TOKEN: usize = 16;
/// Most mailbox messages (and, separately, worker values) handled in one turn of the loop
/// before it polls its sockets again.
pub const TURN_BUDGET: usize = 64;
/// Deadline of a call made with [`Context::call`].
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Call ids are unique in the process, so a reply meant for an earlier generation of a module
/// can never complete a callback of the current one.
static NEXT_CALL_ID: AtomicU64 = AtomicU64::new(1);

/// A module's own timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId(u64);

/// How a module took a new config for its section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadAction {
    /// Applied in place; the thread and its connections continue.
    Applied,
    /// The controller must restart the module with the new config.
    NeedsRestart,
}

/// A server module: a value on its own thread, called back by the loop.
pub trait Module: Sized + 'static {
    /// Which module this is.
    const KIND: ModuleKind;
    /// What the module's own worker threads send back (see [`Context::worker_sender`]).
    type Event: Send + 'static;
    /// What the module reads of the config: its own section and the named parts of others
    /// (see [`Module::view`]).
    type View: PartialEq + 'static;

    /// The module's view of `config`. The controller compares the views of the running and
    /// the reloaded config, and only a module whose view changed hears the reload; so a module
    /// must read nothing of the config that its view leaves out.
    fn view(config: &Config) -> Self::View;

    /// Builds the module on its thread and registers its sources. An error stops the thread
    /// with `Failed`; the controller restarts it with backoff.
    fn init(cx: &mut Context<Self>) -> Result<Self, ModuleError>;

    /// A request from another module; answer through `reply`, now or from a later callback.
    fn on_message(&mut self, cx: &mut Context<Self>, request: Request, reply: ReplyTo);

    /// Readiness of a source the module registered.
    fn on_event(&mut self, _cx: &mut Context<Self>, event: &Event) {
        log::warn!(
            "{}: event for unknown token {:?}",
            Self::KIND,
            event.token()
        );
    }

    /// A value from one of the module's worker threads.
    fn on_worker(&mut self, _cx: &mut Context<Self>, _event: Self::Event) {}

    /// A worker started with [`Context::workers`] ended. By default a panicked worker fails
    /// the module (the controller restarts it with fresh workers), and a worker that returned
    /// is the module's own business. Override to replace the worker in place.
    fn on_worker_exit(&mut self, cx: &mut Context<Self>, exit: WorkerExit) {
        if let Some(message) = exit.panic {
            cx.fail(ModuleError::Broken(format!(
                "worker {} panicked: {message}",
                exit.name
            )));
        }
    }

    /// A timer set with [`Context::set_timer`] is due.
    fn on_timer(&mut self, _cx: &mut Context<Self>, _timer: TimerId) {}

    /// First phase of a reload that changes this module's view: can the module take
    /// `config`? Refuse with a reason a person can act on (`cannot listen on …`); then no
    /// module anywhere applies the reload. Must change nothing.
    fn check_reload(
        &mut self,
        _cx: &mut Context<Self>,
        _config: &Arc<Config>,
    ) -> Result<(), String> {
        Ok(())
    }

    /// Second phase, once every module accepted: apply `config` in place or ask for a
    /// restart. The loop makes `config` the context's config when this returns `Applied`.
    fn on_reload(&mut self, _cx: &mut Context<Self>, _config: &Arc<Config>) -> ReloadAction {
        ReloadAction::NeedsRestart
    }

    /// The controller asked the module to stop: stop taking new work. The loop keeps running
    /// until [`Module::is_drained`] is true or the stop deadline passes.
    fn on_shutdown(&mut self, _cx: &mut Context<Self>) {}

    /// Whether in-flight work is finished, so a stopping loop may end.
    fn is_drained(&self) -> bool {
        true
    }
}

type Callback<M> = Box<dyn FnOnce(&mut M, &mut Context<M>, Result<Reply, CallError>)>;

struct PendingCall<M: Module> {
    callback: Callback<M>,
    deadline_key: u64,
}

/// What a module sees of its loop: registration, calls, timers, its config.
pub struct Context<M: Module> {
    kind: ModuleKind,
    generation: u64,
    registry: Registry,
    config: Arc<Config>,
    directory: Directory,
    own_mailbox: Mailbox,
    worker: WorkerSender<M::Event>,
    workers: WorkerSpawner,
    status: WorkerSender<StatusReport>,
    stats: Arc<RuntimeStats>,
    timers: TimerHeap,
    pending: HashMap<u64, PendingCall<M>>,
    /// Calls that failed before leaving this thread; completed on the next turn of the loop so
    /// a callback never runs inside the `call` that registered it.
    failed_at_once: VecDeque<(u64, CallError)>,
    stop_deadline: Option<Instant>,
    /// Set by [`Context::fail`]: the loop ends with this error after the current callback.
    failure: Option<ModuleError>,
}

impl<M: Module> Context<M> {
    /// Which module this loop runs.
    pub fn kind(&self) -> ModuleKind {
        self.kind
    }

    /// Counts the starts of this module in this process (1 for the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The config the module runs with: the start's, then each reload it applied in place.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The counters shared with the controller and `/metrics`.
    pub fn stats(&self) -> &Arc<RuntimeStats> {
        &self.stats
    }

    /// Registers the module's own sources (tokens from [`FIRST_MODULE_TOKEN`] up).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The mailboxes of the enabled modules (for queue depths; calls go through [`Self::call`]).
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// A sender for the module's worker threads; values arrive in [`Module::on_worker`].
    pub fn worker_sender(&self) -> WorkerSender<M::Event> {
        self.worker.clone()
    }

    /// Starts the module's supervised worker threads (see [`crate::worker`]).
    pub fn workers(&self) -> &WorkerSpawner {
        &self.workers
    }

    /// Ends the module with `error` once the current callback returns (it stops as
    /// `Failed`, and the controller restarts it with backoff). For faults the module cannot
    /// recover from in place, such as a listener that died.
    pub fn fail(&mut self, error: ModuleError) {
        if self.failure.is_none() {
            self.failure = Some(error);
        }
    }

    /// Whether the controller asked this module to stop.
    pub fn is_stopping(&self) -> bool {
        self.stop_deadline.is_some()
    }

    /// Calls `target` with the default deadline; `callback` runs on this thread with the reply.
    pub fn call<F>(&mut self, target: ModuleKind, request: Request, callback: F)
    where
        F: FnOnce(&mut M, &mut Context<M>, Result<Reply, CallError>) + 'static,
    {
        self.call_with_timeout(target, request, DEFAULT_CALL_TIMEOUT, callback)
    }

    /// Calls `target`; `callback` gets the reply, or `CallError::Timeout` after `timeout`
    /// (a reply that comes later is dropped), or `CallError::Disabled` at once.
    pub fn call_with_timeout<F>(
        &mut self,
        target: ModuleKind,
        request: Request,
        timeout: Duration,
        callback: F,
    ) where
        F: FnOnce(&mut M, &mut Context<M>, Result<Reply, CallError>) + 'static,
    {
        let id = self.register_call(timeout, Box::new(callback));
        let sent = match self.directory.get(target) {
            None => Err(CallError::Disabled(target)),
            Some(mailbox) => mailbox
                .send(Envelope::Request {
                    body: request,
                    reply: ReplyTo::new(self.own_mailbox.clone(), id),
                })
                .map_err(|_| CallError::Failed(format!("module {target} is shut down"))),
        };
        if let Err(e) = sent {
            self.failed_at_once.push_back((id, e));
        }
    }

    /// Makes `call`, a request that names its reply type (built by the request's own
    /// constructor, such as `DbRequest::grid_tasks`), with the default deadline; `callback`
    /// runs on this thread with the typed reply or the error.
    pub fn call_typed<R, F>(&mut self, call: Call<R>, callback: F)
    where
        R: 'static,
        F: FnOnce(&mut M, &mut Context<M>, Result<R, CallError>) + 'static,
    {
        self.call_typed_with_timeout(call, DEFAULT_CALL_TIMEOUT, callback)
    }

    /// As [`Self::call_typed`], with the deadline `timeout`.
    pub fn call_typed_with_timeout<R, F>(&mut self, call: Call<R>, timeout: Duration, callback: F)
    where
        R: 'static,
        F: FnOnce(&mut M, &mut Context<M>, Result<R, CallError>) + 'static,
    {
        let (target, request, typed) = call.into_parts();
        self.call_with_timeout(target, request, timeout, move |module, cx, answer| {
            callback(module, cx, typed.result(answer))
        });
    }

    /// Asks the controller to act (status, reload, start/stop/restart a module); `callback`
    /// runs on this thread with [`Reply::Control`], an error, or `CallError::Timeout`.
    pub fn ask_controller<F>(&mut self, ask: ControlAsk, callback: F)
    where
        F: FnOnce(&mut M, &mut Context<M>, Result<Reply, CallError>) + 'static,
    {
        // A reload may stop and restart modules, each within the stop timeout.
        let timeout = self.config.controller.stop_timeout * 2 + DEFAULT_CALL_TIMEOUT;
        let id = self.register_call(timeout, Box::new(callback));
        let reply = ReplyTo::new(self.own_mailbox.clone(), id);
        self.report(Status::Ask { ask, reply });
    }

    fn register_call(&mut self, timeout: Duration, callback: Callback<M>) -> u64 {
        let id = NEXT_CALL_ID.fetch_add(1, Ordering::Relaxed);
        let deadline_key = self
            .timers
            .insert(Instant::now() + timeout, TimerKind::CallDeadline(id));
        self.pending.insert(
            id,
            PendingCall {
                callback,
                deadline_key,
            },
        );
        id
    }

    /// Calls back [`Module::on_timer`] after `after`.
    pub fn set_timer(&mut self, after: Duration) -> TimerId {
        // The heap key doubles as the timer id: the heap hands it back when the timer fires.
        let key = self
            .timers
            .insert(Instant::now() + after, TimerKind::Module(0));
        self.timers.relabel(key, TimerKind::Module(key));
        TimerId(key)
    }

    /// Cancels a timer; cancelling one that fired already does nothing.
    pub fn cancel_timer(&mut self, timer: TimerId) {
        self.timers.cancel(timer.0);
    }

    fn report(&self, status: Status) {
        let _ = self.status.send(StatusReport {
            kind: self.kind,
            generation: self.generation,
            status,
        });
    }

    fn complete_call(&mut self, module: &mut M, id: u64, result: Result<Reply, CallError>) {
        match self.pending.remove(&id) {
            Some(call) => {
                self.timers.cancel(call.deadline_key);
                (call.callback)(module, self, result);
            }
            None => log::debug!("{}: dropped a late or unknown reply {id}", self.kind),
        }
    }
}

/// Everything a loop needs from the controller (see [`crate::spawn::Launch`]).
pub(crate) struct LoopSetup {
    pub kind: ModuleKind,
    pub generation: u64,
    pub config: Arc<Config>,
    pub inbox: Receiver<Envelope>,
    pub mailbox: Mailbox,
    pub directory: Directory,
    pub status: WorkerSender<StatusReport>,
    pub stats: Arc<RuntimeStats>,
    pub abandoned: Arc<std::sync::atomic::AtomicBool>,
    pub panic_in_init: bool,
}

/// Why dispatching stopped the loop early.
enum Flow {
    Continue,
    Abandoned,
}

/// Runs module `M` until it is stopped, abandoned, or fails. Panics unwind out of here and are
/// caught by [`crate::spawn::spawn_module`].
pub(crate) fn run_loop<M: Module>(setup: LoopSetup) -> Result<(), ModuleError> {
    let mut poll = Poll::new().map_err(|e| ModuleError::io("creating the event loop", e))?;
    let waker = Arc::new(
        Waker::new(poll.registry(), WAKER_TOKEN)
            .map_err(|e| ModuleError::io("creating the loop waker", e))?,
    );
    let registry = poll
        .registry()
        .try_clone()
        .map_err(|e| ModuleError::io("cloning the poll registry", e))?;
    let (worker_tx, worker_rx) = crossbeam_channel::unbounded();
    let (exit_tx, exit_rx) = crossbeam_channel::unbounded();
    let mut cx: Context<M> = Context {
        kind: setup.kind,
        generation: setup.generation,
        registry,
        config: setup.config,
        directory: setup.directory,
        own_mailbox: setup.mailbox.clone(),
        worker: WorkerSender::new(worker_tx, waker.clone()),
        workers: WorkerSpawner::new(WorkerSender::new(exit_tx, waker.clone())),
        status: setup.status,
        stats: setup.stats,
        timers: TimerHeap::default(),
        pending: HashMap::new(),
        failed_at_once: VecDeque::new(),
        stop_deadline: None,
        failure: None,
    };
    // From here on, every send to this module's mailbox wakes this loop.
    setup.mailbox.slot().install(setup.generation, waker);
    if setup.panic_in_init {
        panic!("injected fault: panic in {} init", setup.kind);
    }
    let mut module = M::init(&mut cx)?;
    cx.report(Status::Ready);

    let mut events = Events::with_capacity(256);
    loop {
        if let Flow::Abandoned = drain_mailbox(&mut module, &mut cx, &setup.inbox, &setup.abandoned)
        {
            return Ok(());
        }
        for event in worker_rx.try_iter().take(TURN_BUDGET) {
            module.on_worker(&mut cx, event);
        }
        while let Ok(exit) = exit_rx.try_recv() {
            module.on_worker_exit(&mut cx, exit);
        }
        while let Some((id, error)) = cx.failed_at_once.pop_front() {
            cx.complete_call(&mut module, id, Err(error));
        }
        fire_due_timers(&mut module, &mut cx);
        if let Some(error) = cx.failure.take() {
            return Err(error);
        }
        if let Some(deadline) = cx.stop_deadline {
            if module.is_drained() || Instant::now() >= deadline {
                return Ok(());
            }
        }
        // Work still queued (over the turn's budget, or queued by the callbacks above) must
        // not wait for the next event, but the module's sockets get their turn first.
        let busy = !setup.inbox.is_empty()
            || !cx.failed_at_once.is_empty()
            || !worker_rx.is_empty()
            || !exit_rx.is_empty();
        let wake_at = match (cx.timers.next_deadline(), cx.stop_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = if busy {
            Some(Duration::ZERO)
        } else {
            wake_at.map(|at| at.saturating_duration_since(Instant::now()))
        };
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ModuleError::io("polling the event loop", e)),
        }
        for event in events.iter() {
            if event.token() != WAKER_TOKEN {
                module.on_event(&mut cx, event);
            }
        }
    }
}

fn drain_mailbox<M: Module>(
    module: &mut M,
    cx: &mut Context<M>,
    inbox: &Receiver<Envelope>,
    abandoned: &std::sync::atomic::AtomicBool,
) -> Flow {
    for _ in 0..TURN_BUDGET {
        // Checked before every receive: an abandoned thread must not take messages meant for
        // its replacement, which shares this receiver.
        if abandoned.load(Ordering::Acquire) {
            return Flow::Abandoned;
        }
        let Ok(envelope) = inbox.try_recv() else {
            return Flow::Continue;
        };
        match envelope {
            Envelope::Request { body, reply } => match body {
                Request::Ping => reply.send(Ok(Reply::Pong)),
                other => module.on_message(cx, other, reply),
            },
            Envelope::Reply { id, result } => cx.complete_call(module, id, result),
            Envelope::Ctl(ctl) => handle_ctl(module, cx, ctl),
        }
    }
    Flow::Continue
}

fn handle_ctl<M: Module>(module: &mut M, cx: &mut Context<M>, ctl: Ctl) {
    match ctl {
        Ctl::CheckReload { id, config } => {
            let result = module.check_reload(cx, &config);
            cx.report(Status::ReloadChecked { id, result });
        }
        Ctl::Reload { id, config } => {
            let action = module.on_reload(cx, &config);
            if action == crate::ReloadAction::Applied {
                cx.config = config;
            }
            cx.report(Status::Reloaded { id, action });
        }
        Ctl::Stop { deadline } => {
            if cx.stop_deadline.is_none() {
                cx.stop_deadline = Some(deadline);
                module.on_shutdown(cx);
            }
        }
        Ctl::Ping { id } => cx.report(Status::Pong { id }),
        Ctl::InjectPanic => panic!(
            "injected fault: panic in {} while handling a message",
            cx.kind
        ),
        Ctl::InjectWorkerPanic => cx.workers.inject_panic(),
    }
}

fn fire_due_timers<M: Module>(module: &mut M, cx: &mut Context<M>) {
    let now = Instant::now();
    while let Some(kind) = cx.timers.pop_due(now) {
        match kind {
            TimerKind::Module(key) => module.on_timer(cx, TimerId(key)),
            TimerKind::CallDeadline(id) => {
                if let Some(call) = cx.pending.remove(&id) {
                    (call.callback)(module, cx, Err(CallError::Timeout));
                }
            }
        }
    }
}
