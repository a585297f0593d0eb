//! The worker's own log for one task: timestamped lines appended to the task folder's `stdlog`
//! (uploaded with the module logs) and echoed to the worker's standard error, prefixed with the
//! task id so a pilot's interleaved lines can be told apart. Writing never fails the task.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

pub struct Stdlog {
    task_id: String,
    file: Mutex<Option<File>>,
}

impl Stdlog {
    /// Appends to `path`; if it cannot be opened, lines still go to standard error.
    pub fn open(path: &Path, task_id: &str) -> Stdlog {
        let file = OpenOptions::new().create(true).append(true).open(path);
        let log = Stdlog {
            task_id: task_id.to_string(),
            file: Mutex::new(file.as_ref().ok().and_then(|f| f.try_clone().ok())),
        };
        if let Err(e) = file {
            log.line("WARN", &format!("cannot open {}: {e}", path.display()));
        }
        log
    }

    pub fn info(&self, message: &str) {
        self.line("INFO", message);
    }

    pub fn warn(&self, message: &str) {
        self.line("WARN", message);
    }

    pub fn error(&self, message: &str) {
        self.line("ERROR", message);
    }

    fn line(&self, level: &str, message: &str) {
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let text = format!("{now} {level} {message}\n");
        if let Ok(mut file) = self.file.lock() {
            if let Some(f) = file.as_mut() {
                let _ = f.write_all(text.as_bytes());
            }
        }
        eprint!("iceprod task {}: {text}", self.task_id);
    }
}
