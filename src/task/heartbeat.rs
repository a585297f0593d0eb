//! The `stillrunning` heartbeat of one task: a thread that calls it every interval while the
//! task runs. A `false` answer stops the task (the server gave it to someone else, or a person
//! reset it), and so does a 403 (the attempt's passkey was revoked when the task was queued
//! again); any other failed call is only logged, so a server that is down for a while never
//! kills a task that is running fine.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use crate::task::rpc::{CallError, TaskRpc};
use crate::task::stdlog::Stdlog;
use crate::task::stop::{StopReason, TaskControl};

pub struct Heartbeat {
    /// Dropped to end the thread.
    quit: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    pub fn start(
        rpc: Arc<TaskRpc>,
        task_id: &str,
        interval: Duration,
        control: Arc<TaskControl>,
        log: Arc<Stdlog>,
    ) -> Heartbeat {
        let (quit, quitting) = mpsc::channel::<()>();
        let task_id = task_id.to_string();
        let thread = std::thread::Builder::new()
            .name("iceprod-task-heartbeat".into())
            .spawn(move || loop {
                match quitting.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                match rpc.call_once("stillrunning", json!({"task_id": task_id})) {
                    Ok(Value::Bool(false)) => {
                        log.warn("stillrunning answered false: stopping the task");
                        control.stop(StopReason::Server);
                        return;
                    }
                    Ok(_) => {}
                    // The passkey no longer works: the server reset this attempt and gave
                    // the task a new one (with a new passkey), so this attempt must end.
                    Err(CallError::Refused { code: 403, .. }) => {
                        log.warn("stillrunning: this attempt's passkey was revoked: stopping");
                        control.stop(StopReason::Server);
                        return;
                    }
                    Err(e) => log.warn(&format!("stillrunning: {e}; the task keeps running")),
                }
            })
            .ok();
        Heartbeat {
            quit: Some(quit),
            thread,
        }
    }

    /// Ends the heartbeat; waits for a call in flight, so none is made after this returns.
    pub fn stop(mut self) {
        self.quit.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
