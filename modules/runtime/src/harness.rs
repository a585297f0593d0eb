//! A small stand-in for the controller that runs real modules on their own threads, for tests
//! and benchmarks: start, call, send controller messages, restart, stop. Calls made from the
//! test thread wait blocking, which only a test may do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::{Poll, Token, Waker};

use crate::config::Config;
use crate::event_loop::Module;
use crate::mailbox::{Directory, Mailbox, WorkerSender};
use crate::protocol::{
    CallError, Ctl, Envelope, ModuleKind, Reply, ReplyTo, Request, Status, StatusReport, StopReason,
};
use crate::spawn::{spawn_module, Launch, ModuleThread};
use crate::stats::RuntimeStats;

/// The test's stand-in controller: the modules it started, their mailboxes and reports.
pub struct Harness {
    config: Arc<Config>,
    directory: Directory,
    stats: Arc<RuntimeStats>,
    status_tx: WorkerSender<StatusReport>,
    status_rx: Receiver<StatusReport>,
    /// Keeps the status waker's registry alive; nobody polls it, the test reads `status_rx`.
    _poll: Poll,
    inboxes: HashMap<ModuleKind, Receiver<Envelope>>,
    threads: HashMap<ModuleKind, ModuleThread>,
    generations: HashMap<ModuleKind, u64>,
    /// Where replies to the test's own calls arrive.
    replies: (Mailbox, Receiver<Envelope>),
    next_id: u64,
}

impl Harness {
    /// A harness that starts every module with `config`; none is started yet.
    pub fn new(config: Config) -> Harness {
        let poll = Poll::new().expect("a test can create a poll");
        let waker =
            Arc::new(Waker::new(poll.registry(), Token(0)).expect("a test can create a waker"));
        let (tx, rx) = crossbeam_channel::unbounded();
        let (reply_box, reply_rx, _) = Mailbox::new();
        Harness {
            config: Arc::new(config),
            directory: Directory::default(),
            stats: Arc::new(RuntimeStats::default()),
            status_tx: WorkerSender::new(tx, waker),
            status_rx: rx,
            _poll: poll,
            inboxes: HashMap::new(),
            threads: HashMap::new(),
            generations: HashMap::new(),
            replies: (reply_box, reply_rx),
            next_id: 0,
        }
    }

    /// The counters the started modules update, as `/metrics` would read them.
    pub fn stats(&self) -> &Arc<RuntimeStats> {
        &self.stats
    }

    /// The mailboxes of the modules started so far.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Starts module `M` (again, after a stop, on the same mailbox) and waits until it is ready
    /// or has stopped. Returns the stop reason if `init` failed.
    pub fn start<M: Module>(&mut self) -> Result<(), StopReason> {
        self.launch::<M>(false)
    }

    /// Starts module `M` with a fault injected into `init`.
    pub fn start_panicking_in_init<M: Module>(&mut self) -> Result<(), StopReason> {
        self.launch::<M>(true)
    }

    fn launch<M: Module>(&mut self, panic_in_init: bool) -> Result<(), StopReason> {
        let kind = M::KIND;
        if !self.inboxes.contains_key(&kind) {
            let (mailbox, inbox, _) = Mailbox::new();
            self.directory.set(kind, Some(mailbox));
            self.inboxes.insert(kind, inbox);
        }
        let generation = self.generations.entry(kind).or_default();
        *generation += 1;
        let generation = *generation;
        let thread = spawn_module::<M>(Launch {
            generation,
            config: self.config.clone(),
            inbox: self.inboxes[&kind].clone(),
            mailbox: self.directory.get(kind).expect("registered above"),
            directory: self.directory.clone(),
            status: self.status_tx.clone(),
            stats: self.stats.clone(),
            panic_in_init,
        })
        .expect("a test can spawn a thread");
        self.threads.insert(kind, thread);
        match self.wait_status(kind, Duration::from_secs(30)) {
            Some(Status::Ready) => {
                // As the controller does: `/healthz` and `/metrics` read it.
                self.stats
                    .module(kind)
                    .running
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Some(Status::Stopped(reason)) => {
                if let Some(thread) = self.threads.remove(&kind) {
                    thread.join();
                }
                Err(reason)
            }
            other => panic!("{kind} did not start: {other:?}"),
        }
    }

    /// The next status report of `kind`'s current generation, waiting up to `timeout`.
    pub fn wait_status(&self, kind: ModuleKind, timeout: Duration) -> Option<Status> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let report = self.status_rx.recv_timeout(left).ok()?;
            if report.kind == kind && Some(&report.generation) == self.generations.get(&kind) {
                return Some(report.status);
            }
        }
    }

    /// Sends a controller message to `kind`.
    pub fn ctl(&self, kind: ModuleKind, ctl: Ctl) {
        let mailbox = self.directory.get(kind).expect("module started");
        if mailbox.send(Envelope::Ctl(ctl)).is_err() {
            panic!("{kind}'s mailbox is closed");
        }
    }

    /// Sends `request` to `kind` without waiting; [`Self::recv_reply`] gets the answer.
    pub fn send(&mut self, kind: ModuleKind, request: Request) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let mailbox = self.directory.get(kind).expect("module started");
        let reply = ReplyTo::new(self.replies.0.clone(), id);
        if mailbox
            .send(Envelope::Request {
                body: request,
                reply,
            })
            .is_err()
        {
            panic!("{kind}'s mailbox is closed");
        }
        id
    }

    /// The next reply to a call sent with [`Self::send`], as (id, result).
    pub fn recv_reply(&self, timeout: Duration) -> Option<(u64, Result<Reply, CallError>)> {
        match self.replies.1.recv_timeout(timeout).ok()? {
            Envelope::Reply { id, result } => Some((id, result)),
            _ => None,
        }
    }

    /// Calls `kind` and waits for the reply (`Timeout` after `timeout`).
    pub fn call(
        &mut self,
        kind: ModuleKind,
        request: Request,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let id = self.send(kind, request);
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or(CallError::Timeout)?;
            match self.recv_reply(left) {
                Some((got, result)) if got == id => return result,
                Some(_) => continue,
                None => return Err(CallError::Timeout),
            }
        }
    }

    /// Asks `kind` to stop and returns how its thread ended.
    pub fn stop(&mut self, kind: ModuleKind, grace: Duration) -> StopReason {
        self.ctl(
            kind,
            Ctl::Stop {
                deadline: Instant::now() + grace,
            },
        );
        self.wait_stopped(kind, grace + Duration::from_secs(30))
    }

    /// Waits for `kind`'s current thread to end (after a stop or a panic) and joins it.
    pub fn wait_stopped(&mut self, kind: ModuleKind, timeout: Duration) -> StopReason {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("{kind} did not stop"));
            match self.wait_status(kind, left) {
                Some(Status::Stopped(reason)) => {
                    self.stats
                        .module(kind)
                        .running
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    if let Some(t) = self.threads.remove(&kind) {
                        t.join();
                    }
                    return reason;
                }
                Some(_) => continue,
                None => panic!("{kind} did not stop"),
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for (kind, _) in self.threads.iter() {
            if let Some(m) = self.directory.get(*kind) {
                let _ = m.send(Envelope::Ctl(Ctl::Stop { deadline }));
            }
        }
        for (_, thread) in self.threads.drain() {
            thread.join();
        }
    }
}
