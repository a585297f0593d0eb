//! One module under supervision: its mailbox (kept for the life of the process), its current
//! thread and where it is in its life (starting, running, stopping, waiting to restart).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use iceprod_runtime::{
    Config, Ctl, Directory, Envelope, Launch, Mailbox, ModuleEntry, ModuleKind, ModuleThread,
    RuntimeStats, StatusReport, StopReason, WorkerSender,
};

use super::policy;

/// What to do once a stopping module has stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    Stay,
    Restart,
}

pub enum State {
    /// Not running and not wanted (disabled, or stopped by a person, or never started).
    Stopped,
    Starting(ModuleThread),
    Running {
        thread: ModuleThread,
        since: Instant,
    },
    Stopping {
        thread: ModuleThread,
        deadline: Instant,
        then: Then,
    },
    /// Failed; starts again at `until`.
    Backoff {
        until: Instant,
    },
    /// Abandoned by `ctl kill`; not restarted until asked.
    Killed,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting(_) => "starting",
            State::Running { .. } => "running",
            State::Stopping { .. } => "stopping",
            State::Backoff { .. } => "restarting",
            State::Killed => "killed",
        }
    }
}

/// Shared by every supervised module: how to launch a thread.
pub struct Shared {
    pub directory: Directory,
    pub stats: Arc<RuntimeStats>,
    pub status: WorkerSender<StatusReport>,
}

pub struct Supervised {
    pub kind: ModuleKind,
    launcher: iceprod_runtime::spawn::Launcher,
    /// Whether a new config changes what the module reads (it then hears the reload).
    pub view_changed: fn(&Config, &Config) -> bool,
    mailbox: Mailbox,
    inbox: Receiver<Envelope>,
    pub generation: u64,
    pub state: State,
    pub failures: u32,
    pub last_error: Option<String>,
    /// The module's answer to the last reload of its section.
    pub last_reload: Option<String>,
    /// Fault injection: starts left that panic in `init`.
    pub panic_init_left: u32,
}

impl Supervised {
    pub fn new(entry: ModuleEntry) -> Supervised {
        let (mailbox, inbox, _) = Mailbox::new();
        Supervised {
            kind: entry.kind,
            launcher: entry.spawn,
            view_changed: entry.view_changed,
            mailbox,
            inbox,
            generation: 0,
            state: State::Stopped,
            failures: 0,
            last_error: None,
            last_reload: None,
            panic_init_left: 0,
        }
    }

    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    pub fn send(&self, ctl: Ctl) {
        // Fails only when the inbox is gone, which the controller keeps for the process's life.
        let _ = self.mailbox.send(Envelope::Ctl(ctl));
    }

    /// Whether a thread of this module exists (starting, running or stopping).
    pub fn has_thread(&self) -> bool {
        matches!(
            self.state,
            State::Starting(_) | State::Running { .. } | State::Stopping { .. }
        )
    }

    /// Starts a new generation on the same mailbox with `config`.
    pub fn start(&mut self, config: &Arc<Config>, shared: &Shared) {
        self.generation += 1;
        if self.generation > 1 {
            shared
                .stats
                .module(self.kind)
                .restarts
                .fetch_add(1, Ordering::Relaxed);
        }
        let panic_in_init = self.panic_init_left > 0;
        self.panic_init_left = self.panic_init_left.saturating_sub(1);
        let launch = Launch {
            generation: self.generation,
            config: config.clone(),
            inbox: self.inbox.clone(),
            mailbox: self.mailbox.clone(),
            directory: shared.directory.clone(),
            status: shared.status.clone(),
            stats: shared.stats.clone(),
            panic_in_init,
        };
        log::info!("{}: starting (generation {})", self.kind, self.generation);
        self.state = match (self.launcher)(launch) {
            Ok(thread) => State::Starting(thread),
            Err(e) => {
                self.last_error = Some(format!("cannot spawn a thread: {e}"));
                self.failures = policy::failures_after(self.failures, None);
                State::Backoff {
                    until: Instant::now() + policy::restart_delay(self.failures),
                }
            }
        };
    }

    /// Asks the module to stop by `deadline`, then stay stopped or restart.
    pub fn stop(&mut self, deadline: Instant, then: Then, config: &Arc<Config>, shared: &Shared) {
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Starting(thread) | State::Running { thread, .. } => {
                self.send(Ctl::Stop { deadline });
                self.state = State::Stopping {
                    thread,
                    deadline,
                    then,
                };
            }
            State::Stopping {
                thread,
                deadline,
                then: old,
            } => {
                // A stop during a restart cancels the restart; a restart request keeps it.
                let then = if then == Then::Stay { Then::Stay } else { old };
                self.state = State::Stopping {
                    thread,
                    deadline,
                    then,
                };
            }
            State::Stopped | State::Backoff { .. } | State::Killed => {
                if then == Then::Restart {
                    self.start(config, shared);
                }
            }
        }
    }

    /// The module became ready.
    pub fn on_ready(&mut self, shared: &Shared) {
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Starting(thread) => {
                shared
                    .stats
                    .module(self.kind)
                    .running
                    .store(true, Ordering::Relaxed);
                log::info!("{}: ready", self.kind);
                self.state = State::Running {
                    thread,
                    since: Instant::now(),
                };
            }
            // Ready after a stop was requested: the stop is already queued behind it.
            other => self.state = other,
        }
    }

    /// The thread ended. `shutting_down` suppresses the restart of a failed module.
    pub fn on_stopped(
        &mut self,
        reason: StopReason,
        shutting_down: bool,
        config: &Arc<Config>,
        shared: &Shared,
    ) {
        shared
            .stats
            .module(self.kind)
            .running
            .store(false, Ordering::Relaxed);
        match std::mem::replace(&mut self.state, State::Stopped) {
            State::Stopping { thread, then, .. } => {
                thread.join();
                if reason != StopReason::Requested {
                    self.last_error = Some(reason.to_string());
                }
                if then == Then::Restart && !shutting_down {
                    self.start(config, shared);
                }
            }
            State::Starting(thread) => self.failed(thread, None, reason, shutting_down),
            State::Running { thread, since } => {
                self.failed(thread, Some(since.elapsed()), reason, shutting_down)
            }
            other => self.state = other,
        }
    }

    fn failed(
        &mut self,
        thread: ModuleThread,
        ran_for: Option<Duration>,
        reason: StopReason,
        shutting_down: bool,
    ) {
        thread.join();
        self.failures = policy::failures_after(self.failures, ran_for);
        let delay = policy::restart_delay(self.failures);
        log::warn!(
            "{}: {reason}; restart {} in {delay:?}",
            self.kind,
            self.failures
        );
        self.last_error = Some(reason.to_string());
        if !shutting_down {
            self.state = State::Backoff {
                until: Instant::now() + delay,
            };
        }
    }

    /// Abandons the thread (`ctl kill`): it stops taking messages at its next wake.
    pub fn kill(&mut self, shared: &Shared) {
        match std::mem::replace(&mut self.state, State::Killed) {
            State::Starting(thread)
            | State::Running { thread, .. }
            | State::Stopping { thread, .. } => {
                thread.abandon();
                // Wake it so it notices; it leaves the message for the next generation.
                self.send(Ctl::Ping { id: 0 });
            }
            _ => {}
        }
        shared
            .stats
            .module(self.kind)
            .running
            .store(false, Ordering::Relaxed);
    }

    /// Enforces stop deadlines and due restarts; returns when it next needs a look.
    pub fn tick(&mut self, now: Instant, config: &Arc<Config>, shared: &Shared) -> Option<Instant> {
        // A module that misses its stop deadline by this much is abandoned.
        const STOP_GRACE: Duration = Duration::from_secs(2);
        match &self.state {
            State::Backoff { until } if *until <= now => {
                self.start(config, shared);
                None
            }
            State::Backoff { until } => Some(*until),
            State::Stopping { deadline, then, .. } if *deadline + STOP_GRACE <= now => {
                let then = *then;
                log::error!("{}: did not stop in time; abandoning its thread", self.kind);
                self.last_error = Some("did not stop before its deadline".into());
                self.kill(shared);
                self.state = State::Stopped;
                if then == Then::Restart {
                    self.start(config, shared);
                }
                None
            }
            State::Stopping { deadline, .. } => Some(*deadline + STOP_GRACE),
            _ => None,
        }
    }
}
