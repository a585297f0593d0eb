//! Supervised worker threads: the one way a module starts a thread of its own (db readers and
//! writer, queue command workers, the website's pumps and responders).
//!
//! A worker runs under `catch_unwind` and, however it ends, its end reaches the module's loop
//! as a [`WorkerExit`] through [`crate::Module::on_worker_exit`]. By default a worker that
//! panics fails the module, so the controller restarts it with fresh workers; a module may
//! instead start a replacement itself. A worker must not outlive what it reports to: when the
//! module's loop is gone its report is dropped.
//!
//! Fault injection (`iceprod ctl inject panic-worker MODULE`) arms a panic that the next
//! worker to pass [`WorkerCx::checkpoint`] takes, so tests can show the module recovering.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::mailbox::WorkerSender;
use crate::spawn::panic_message;

/// How a worker thread ended, as its module hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerExit {
    /// The thread's name (`iceprod-db-reader-1`).
    pub name: String,
    /// The panic's message if it panicked; `None` if its body returned.
    pub panic: Option<String>,
}

/// What a worker's body gets: its name and the fault-injection checkpoint.
pub struct WorkerCx {
    name: String,
    faults: Arc<AtomicU32>,
}

impl WorkerCx {
    /// Called by a worker before each job it takes: panics when fault injection armed a
    /// worker panic for this module. Costs one atomic load otherwise.
    pub fn checkpoint(&self) {
        if self.faults.load(Ordering::Relaxed) == 0 {
            return;
        }
        let took = self
            .faults
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if took {
            panic!("injected fault: panic in worker {}", self.name);
        }
    }
}

/// Starts supervised workers for one module generation. Cheap to clone; hand it to the code
/// that starts threads (for example the website's HTTP bridge).
#[derive(Clone)]
pub struct WorkerSpawner {
    exits: WorkerSender<WorkerExit>,
    faults: Arc<AtomicU32>,
}

impl WorkerSpawner {
    pub(crate) fn new(exits: WorkerSender<WorkerExit>) -> WorkerSpawner {
        WorkerSpawner {
            exits,
            faults: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Arms one injected panic for the next worker that passes its checkpoint.
    pub(crate) fn inject_panic(&self) {
        self.faults.fetch_add(1, Ordering::AcqRel);
    }

    /// Starts `body` on a thread named `name`; its end, panic or return, is reported to the
    /// module's loop.
    pub fn spawn<F>(&self, name: impl Into<String>, body: F) -> io::Result<JoinHandle<()>>
    where
        F: FnOnce(&WorkerCx) + Send + 'static,
    {
        let name = name.into();
        let cx = WorkerCx {
            name: name.clone(),
            faults: self.faults.clone(),
        };
        let exits = self.exits.clone();
        std::thread::Builder::new().name(name).spawn(move || {
            let outcome = catch_unwind(AssertUnwindSafe(|| body(&cx)));
            // The process's panic hook has logged the panic where it happened.
            let panic = outcome.err().map(|p| panic_message(p.as_ref()));
            // The loop may be gone (the module stopped): then nobody needs the report.
            let _ = exits.send(WorkerExit {
                name: cx.name.clone(),
                panic,
            });
        })
    }
}
