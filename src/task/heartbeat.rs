//! The `stillrunning` heartbeat of one task: a thread that calls it every interval while the
//! task runs. A `false` answer stops the task (the server gave it to someone else, or a person
//! reset it); a failed call is only logged, so a server that is down for a while never kills a
//! task that is running fine.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use crate::task::rpc::TaskRpc;
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
