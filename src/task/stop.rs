//! Stopping a running task from another thread: the heartbeat (the server said the task is no
//! longer running) and the signal thread (the batch system sends SIGTERM or SIGINT) both end
//! up in [`TaskControl::stop`], which records why and kills the running module's whole process
//! group. The runner reads the reason after the module ends. This file must not call the
//! server.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

/// Why a task was stopped before it ended on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `stillrunning` answered false: someone else owns the task now; report nothing more.
    Server,
    /// The worker got this signal (SIGTERM, SIGINT).
    Signal(i32),
}

impl StopReason {
    fn code(self) -> i32 {
        match self {
            StopReason::Server => -1,
            StopReason::Signal(s) => s,
        }
    }

    fn from_code(code: i32) -> Option<StopReason> {
        match code {
            0 => None,
            -1 => Some(StopReason::Server),
            s => Some(StopReason::Signal(s)),
        }
    }

    /// The one-line error summary for a signal (`killed by SIGTERM`).
    pub fn summary(self) -> String {
        match self {
            StopReason::Server => "stopped: the server no longer runs this task".into(),
            StopReason::Signal(libc::SIGTERM) => "killed by SIGTERM".into(),
            StopReason::Signal(libc::SIGINT) => "killed by SIGINT".into(),
            StopReason::Signal(s) => format!("killed by signal {s}"),
        }
    }
}

/// The stop flag of one task and the process group of its running module.
#[derive(Default)]
pub struct TaskControl {
    /// 0 while no module runs.
    pgid: AtomicI32,
    /// 0 while not stopped; else [`StopReason::code`]. The first reason wins.
    reason: AtomicI32,
}

impl TaskControl {
    /// Stops the task: records `reason` (unless one is already recorded) and kills the running
    /// module's process group.
    pub fn stop(&self, reason: StopReason) {
        let _ = self
            .reason
            .compare_exchange(0, reason.code(), Ordering::SeqCst, Ordering::SeqCst);
        kill_group(self.pgid.load(Ordering::SeqCst));
    }

    pub fn stopped(&self) -> Option<StopReason> {
        StopReason::from_code(self.reason.load(Ordering::SeqCst))
    }

    /// Records the module now running (its pid is its process group). If a stop came in while
    /// it was starting, it is killed at once: either this or [`TaskControl::stop`] sees the
    /// other's write.
    pub fn running(&self, pgid: i32) {
        self.pgid.store(pgid, Ordering::SeqCst);
        if self.stopped().is_some() {
            kill_group(pgid);
        }
    }

    /// The module has been reaped; nothing to kill any more.
    pub fn ended(&self) {
        self.pgid.store(0, Ordering::SeqCst);
    }
}

/// SIGKILL to every process of group `pgid` (nothing for 0; a group already gone is fine).
pub fn kill_group(pgid: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Every task this worker runs now, so a signal can stop them all.
#[derive(Default)]
pub struct Running {
    tasks: Mutex<Vec<Arc<TaskControl>>>,
    /// 0 until a signal came (no signal is numbered 0); else that signal.
    signalled: AtomicI32,
}

impl Running {
    /// A new task's control; it is stopped at once if a signal already came.
    pub fn add(&self) -> Arc<TaskControl> {
        let control = Arc::new(TaskControl::default());
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(control.clone());
        }
        if let Some(reason) = self.signal() {
            control.stop(reason);
        }
        control
    }

    pub fn remove(&self, control: &Arc<TaskControl>) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.retain(|c| !Arc::ptr_eq(c, control));
        }
    }

    /// The signal that stopped this worker, if one did.
    pub fn signal(&self) -> Option<StopReason> {
        match self.signalled.load(Ordering::SeqCst) {
            0 => None,
            s => Some(StopReason::Signal(s)),
        }
    }

    fn stop_all(&self, signal: i32) {
        self.signalled.store(signal, Ordering::SeqCst);
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.stop(StopReason::Signal(signal));
            }
        }
    }
}

/// Starts the thread that turns SIGTERM and SIGINT into stopping every running task.
pub fn watch_signals(running: Arc<Running>) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    std::thread::Builder::new()
        .name("iceprod-task-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                running.stop_all(signal);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_stop_reason_wins() {
        let c = TaskControl::default();
        assert_eq!(c.stopped(), None);
        c.stop(StopReason::Signal(libc::SIGTERM));
        c.stop(StopReason::Server);
        assert_eq!(c.stopped(), Some(StopReason::Signal(libc::SIGTERM)));
        assert_eq!(c.stopped().unwrap().summary(), "killed by SIGTERM");
    }

    #[test]
    fn a_task_added_after_a_signal_is_stopped_at_once() {
        let running = Running::default();
        let first = running.add();
        running.stop_all(libc::SIGINT);
        assert_eq!(first.stopped(), Some(StopReason::Signal(libc::SIGINT)));
        assert_eq!(
            running.add().stopped(),
            Some(StopReason::Signal(libc::SIGINT))
        );
    }
}
