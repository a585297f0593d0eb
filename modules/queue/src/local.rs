//! The `local` grid: jobs run as child processes of the server, at most `max_running` at
//! once, the rest waiting in submission order. A job is its submit folder's `job.sh` run by
//! `sh` in its own process group, with stdout and stderr into the folder. A waiter thread per
//! running job reports its exit as [`QueueEvent::LocalExit`]; the next waiting job starts at
//! once, not at the next cycle.
//!
//! What it knows lives in memory: after the queue module restarts, the jobs of the earlier
//! generation are unknown, so their tasks are reset once `[queue] lost_grace` passes (unless
//! they report first). Jobs already running keep running when the server stops.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use iceprod_runtime::WorkerSender;

use crate::grids::{GridJobState, GridStatus};
use crate::QueueEvent;

/// The batch file of a local job, written into its submit folder.
pub const JOB_FILE: &str = "job.sh";

struct Waiting {
    id: String,
    dir: PathBuf,
}

pub struct LocalGrid {
    grid: usize,
    max_running: usize,
    /// Ids are `PREFIX-N`: the prefix (start time in ms) keeps ids unique across restarts.
    prefix: String,
    next: u64,
    waiting: VecDeque<Waiting>,
    /// Running jobs: id → process group id.
    running: HashMap<String, i32>,
    /// Ended jobs: id → exit code (`None`: killed by a signal, or could not start).
    ended: HashMap<String, Option<i32>>,
    /// Removed jobs still running: killed hard at the next status query.
    removed: HashSet<String>,
    events: WorkerSender<QueueEvent>,
}

impl LocalGrid {
    pub fn new(grid: usize, max_running: u32, events: WorkerSender<QueueEvent>) -> LocalGrid {
        let ms = chrono::Utc::now().timestamp_millis();
        LocalGrid {
            grid,
            max_running: max_running.max(1) as usize,
            prefix: format!("L{ms}"),
            next: 0,
            waiting: VecDeque::new(),
            running: HashMap::new(),
            ended: HashMap::new(),
            removed: HashSet::new(),
            events,
        }
    }

    /// Takes the job in `dir` (its `job.sh` written already) and gives its id at once,
    /// whether it starts now or waits.
    pub fn submit(&mut self, dir: PathBuf) -> String {
        self.next += 1;
        let id = format!("{}-{}", self.prefix, self.next);
        self.waiting.push_back(Waiting {
            id: id.clone(),
            dir,
        });
        self.start_waiting();
        id
    }

    /// A job ended; starts the next waiting ones.
    pub fn exited(&mut self, id: &str, code: Option<i32>) {
        if self.running.remove(id).is_some() {
            self.removed.remove(id);
            self.ended.insert(id.to_string(), code);
        }
        self.start_waiting();
    }

    pub fn counts(&self) -> (usize, usize) {
        (self.waiting.len(), self.running.len())
    }

    fn start_waiting(&mut self) {
        while self.running.len() < self.max_running {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            match self.spawn(&job) {
                Ok(pid) => {
                    self.running.insert(job.id, pid);
                }
                Err(e) => {
                    log::warn!(
                        "local grid: job {} in {} did not start: {e}",
                        job.id,
                        job.dir.display()
                    );
                    self.ended.insert(job.id, None);
                }
            }
        }
    }

    fn spawn(&self, job: &Waiting) -> std::io::Result<i32> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(job.dir.join("job.out"))?;
        let err = std::fs::File::create(job.dir.join("job.err"))?;
        let mut child = Command::new("sh")
            .arg(JOB_FILE)
            .current_dir(&job.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()?;
        let pid = child.id() as i32;
        let (events, grid, id) = (self.events.clone(), self.grid, job.id.clone());
        std::thread::Builder::new()
            .name("iceprod-local-wait".into())
            .spawn(move || {
                let code = child.wait().ok().and_then(|s| s.code());
                // The loop may be gone (module restarting): then nobody needs to know.
                let _ = events.send(QueueEvent::LocalExit { grid, id, code });
            })?;
        Ok(pid)
    }

    /// The state of each of `ids` this grid knows. Ended jobs are forgotten once they are not
    /// asked about any more (their tasks left the grid).
    pub fn status(&mut self, ids: &[String]) -> GridStatus {
        for id in self.removed.drain() {
            if let Some(pid) = self.running.get(&id) {
                signal_group(*pid, libc::SIGKILL);
            }
        }
        let asked: HashSet<&str> = ids.iter().map(String::as_str).collect();
        self.ended.retain(|id, _| asked.contains(id.as_str()));
        let mut status = GridStatus::new();
        for job in &self.waiting {
            status.insert(job.id.clone(), GridJobState::Queued);
        }
        for id in self.running.keys() {
            status.insert(id.clone(), GridJobState::Processing);
        }
        for (id, code) in &self.ended {
            let state = match code {
                Some(c) => GridJobState::Completed {
                    exit_code: Some(*c),
                },
                None => GridJobState::Error {
                    reason: "the local job was killed by a signal or could not start".into(),
                },
            };
            status.insert(id.clone(), state);
        }
        status.retain(|id, _| asked.contains(id.as_str()));
        status
    }

    /// Removes jobs: waiting ones are dropped, running ones get SIGTERM (so `iceprod task`
    /// can report) and SIGKILL at the next status query if still running.
    pub fn remove(&mut self, ids: &[String]) {
        let ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
        self.waiting.retain(|job| !ids.contains(job.id.as_str()));
        for (id, pid) in &self.running {
            if ids.contains(id.as_str()) {
                signal_group(*pid, libc::SIGTERM);
                self.removed.insert(id.clone());
            }
        }
    }
}

fn signal_group(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a process group this grid started.
    unsafe {
        libc::kill(-pid, signal);
    }
}
