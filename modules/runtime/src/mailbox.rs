//! Mailboxes: a crossbeam channel plus the receiving loop's waker. `send` always wakes.
//!
//! The controller owns every module's channel so that a mailbox outlives restarts: a restarted
//! thread gets the same receiver and installs a fresh waker in the shared [`WakerSlot`]; what was
//! sent in between waits in the channel and is delivered after the restart.

use std::sync::{Arc, Mutex, RwLock};

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;

use crate::protocol::{Envelope, ModuleKind};

/// The waker of whichever loop currently serves a mailbox (none while it restarts), tagged with
/// that loop's generation so an old thread ending late cannot clear its replacement's waker.
#[derive(Default)]
pub struct WakerSlot {
    waker: Mutex<Option<(u64, Arc<Waker>)>>,
}

impl WakerSlot {
    /// Makes `waker`, of the loop of `generation`, the one every send wakes from now on.
    pub fn install(&self, generation: u64, waker: Arc<Waker>) {
        *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, waker));
    }

    /// Removes the waker if it still belongs to `generation`.
    pub fn clear(&self, generation: u64) {
        let mut guard = self.waker.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|(g, _)| *g == generation) {
            *guard = None;
        }
    }

    /// Wakes the loop serving the mailbox, if any; else what was sent waits for the next loop.
    pub fn wake(&self) {
        let guard = self.waker.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, w)) = guard.as_ref() {
            // A failed wake means the loop is gone; the message waits for the next one.
            let _ = w.wake();
        }
    }
}

/// The sending end of a module's mailbox. Cheap to clone.
#[derive(Clone)]
pub struct Mailbox {
    tx: Sender<Envelope>,
    slot: Arc<WakerSlot>,
}

impl Mailbox {
    /// A new mailbox and its receiving end. The receiver belongs to the controller, which hands
    /// it to each generation of the module thread.
    pub fn new() -> (Mailbox, Receiver<Envelope>, Arc<WakerSlot>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let slot = Arc::new(WakerSlot::default());
        (
            Mailbox {
                tx,
                slot: slot.clone(),
            },
            rx,
            slot,
        )
    }

    /// Queues `envelope` and wakes the receiving loop. Fails only when every receiver is gone
    /// (the server is shutting down); the envelope is dropped then.
    pub fn send(&self, envelope: Envelope) -> Result<(), MailboxClosed> {
        self.tx.send(envelope).map_err(|_| MailboxClosed)?;
        self.slot.wake();
        Ok(())
    }

    pub(crate) fn slot(&self) -> &Arc<WakerSlot> {
        &self.slot
    }

    /// Messages waiting to be handled (for `/metrics`).
    pub fn depth(&self) -> usize {
        self.tx.len()
    }
}

/// A send to a mailbox nobody can receive from any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxClosed;

/// The mailboxes of the enabled modules. Shared by all loops; the controller updates it when
/// `[modules]` changes.
#[derive(Clone, Default)]
pub struct Directory {
    boxes: Arc<RwLock<[Option<Mailbox>; ModuleKind::COUNT]>>,
}

impl Directory {
    /// The mailbox of module `kind`; `None` while the module is disabled.
    pub fn get(&self, kind: ModuleKind) -> Option<Mailbox> {
        self.boxes.read().unwrap_or_else(|p| p.into_inner())[kind.index()].clone()
    }

    /// Gives module `kind` its mailbox (enabled), or `None` (disabled: calls to it fail at once).
    pub fn set(&self, kind: ModuleKind, mailbox: Option<Mailbox>) {
        self.boxes.write().unwrap_or_else(|p| p.into_inner())[kind.index()] = mailbox;
    }
}

/// A channel from a module's own worker threads back into its loop; sending wakes the loop,
/// which hands each value to `Module::on_worker`. It belongs to one generation of the module:
/// after a restart, sends fail and the results of the old workers are dropped.
pub struct WorkerSender<T> {
    tx: Sender<T>,
    waker: Arc<Waker>,
}

impl<T> Clone for WorkerSender<T> {
    fn clone(&self) -> Self {
        WorkerSender {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<T> WorkerSender<T> {
    /// A sender into the channel `tx` whose receiving loop `waker` wakes.
    pub fn new(tx: Sender<T>, waker: Arc<Waker>) -> Self {
        WorkerSender { tx, waker }
    }

    /// Sends `value` to the loop and wakes it; gives the value back when the loop is gone.
    pub fn send(&self, value: T) -> Result<(), T> {
        self.tx.send(value).map_err(|e| e.0)?;
        let _ = self.waker.wake();
        Ok(())
    }
}
