//! The one way a module thread starts: named, run under `catch_unwind`, and always reporting
//! how it ended with [`Status::Stopped`].

use std::any::Any;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

use crate::config::Config;
use crate::event_loop::{run_loop, LoopSetup, Module};
use crate::mailbox::{Directory, Mailbox, WorkerSender};
use crate::protocol::{Envelope, ModuleKind, Status, StatusReport, StopReason};
use crate::stats::RuntimeStats;

/// What the controller hands a module thread. The inbox and mailbox are the module's for the
/// life of the process; everything else is per generation.
pub struct Launch {
    /// Which start of the module this is (1 for the first); tags its status reports.
    pub generation: u64,
    /// The config the module starts with.
    pub config: Arc<Config>,
    /// The receiving end of the module's mailbox, the same for every generation.
    pub inbox: Receiver<Envelope>,
    /// The module's own mailbox, which its calls name as the place for their replies.
    pub mailbox: Mailbox,
    /// The mailboxes of the enabled modules, for the module's calls.
    pub directory: Directory,
    /// The controller's status channel, for the module's [`StatusReport`]s.
    pub status: WorkerSender<StatusReport>,
    /// The counters shared with the controller and `/metrics`.
    pub stats: Arc<RuntimeStats>,
    /// Fault injection: panic in `init` this time.
    pub panic_in_init: bool,
}

/// A running module thread.
pub struct ModuleThread {
    /// Which module runs on it.
    pub kind: ModuleKind,
    /// Which start of the module it is (1 for the first).
    pub generation: u64,
    join: Option<JoinHandle<()>>,
    abandoned: Arc<AtomicBool>,
}

impl ModuleThread {
    /// Gives up on the thread: it stops taking messages at its next wake and its reports are
    /// ignored; the mailbox stays for a replacement.
    pub fn abandon(mut self) {
        self.abandoned.store(true, Ordering::Release);
        self.join.take();
    }

    /// Whether the thread has ended (true for a thread that was abandoned).
    pub fn is_finished(&self) -> bool {
        self.join.as_ref().is_none_or(|j| j.is_finished())
    }

    /// Waits for the thread to end (after it reported `Stopped`).
    pub fn join(mut self) {
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// The signature of `spawn_module::<M>`, so the controller can keep one per module kind.
pub type Launcher = fn(Launch) -> io::Result<ModuleThread>;

/// What the controller knows of a module type without naming it: how to start it, and
/// whether a new config changes what it reads ([`Module::view`]).
#[derive(Clone, Copy)]
pub struct ModuleEntry {
    /// Which module.
    pub kind: ModuleKind,
    /// Starts a thread of it.
    pub spawn: Launcher,
    /// Whether the module's view differs between the running config and a new one, so that
    /// it must hear the reload.
    pub view_changed: fn(&Config, &Config) -> bool,
}

/// The [`ModuleEntry`] of module `M`.
pub fn module_entry<M: Module>() -> ModuleEntry {
    ModuleEntry {
        kind: M::KIND,
        spawn: spawn_module::<M>,
        view_changed: |old, new| M::view(old) != M::view(new),
    }
}

/// Starts module `M` on a thread named `iceprod-NAME`.
pub fn spawn_module<M: Module>(launch: Launch) -> io::Result<ModuleThread> {
    let kind = M::KIND;
    let generation = launch.generation;
    let abandoned = Arc::new(AtomicBool::new(false));
    let setup = LoopSetup {
        kind,
        generation,
        config: launch.config,
        inbox: launch.inbox,
        mailbox: launch.mailbox,
        directory: launch.directory,
        status: launch.status.clone(),
        stats: launch.stats.clone(),
        abandoned: abandoned.clone(),
        panic_in_init: launch.panic_in_init,
    };
    let status = launch.status;
    let join = std::thread::Builder::new()
        .name(format!("iceprod-{kind}"))
        .spawn(move || {
            let mailbox = setup.mailbox.clone();
            let outcome = catch_unwind(AssertUnwindSafe(|| run_loop::<M>(setup)));
            // Sends from now on queue in the channel for the next generation.
            mailbox.slot().clear(generation);
            let reason = match outcome {
                Ok(Ok(())) => StopReason::Requested,
                Ok(Err(e)) => StopReason::Failed(e.to_string()),
                Err(payload) => StopReason::Panicked(panic_message(payload.as_ref())),
            };
            match &reason {
                StopReason::Requested => log::info!("{kind}: stopped"),
                other => log::error!("{kind}: {other}"),
            }
            let _ = status.send(StatusReport {
                kind,
                generation,
                status: Status::Stopped(reason),
            });
        })?;
    Ok(ModuleThread {
        kind,
        generation,
        join: Some(join),
        abandoned,
    })
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}
