//! Command workers: a few threads that write submit folders and run grid tools as child
//! processes, so the queue's loop never waits on a file system or a batch system. Each piece
//! of [`Work`] comes back as one [`Done`] through the module's worker channel.
//!
//! A tool runs in its own process group with stdin closed and its output captured (bounded);
//! past its timeout the whole group is killed, so a tool that forked helpers cannot keep the
//! worker waiting on a pipe.

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use iceprod_runtime::{WorkerSender, WorkerSpawner};

use crate::error::QueueError;
use crate::grids::{CommandOutput, CommandSpec};
use crate::QueueEvent;

/// The most of a tool's stdout (and stderr) kept; the rest is read and dropped. Big enough
/// for `condor_q -json` of tens of thousands of jobs.
const MAX_CAPTURE: usize = 64 << 20;

/// A file to write before the command runs.
#[derive(Clone, Debug)]
pub struct FileToWrite {
    pub path: PathBuf,
    pub contents: Vec<u8>,
    /// Unix mode, e.g. 0o600 for a file holding a passkey.
    pub mode: u32,
}

/// What a worker does: make `dir` (private), write `files`, then run `command` if any.
#[derive(Debug)]
pub struct Work {
    pub dir: Option<PathBuf>,
    pub files: Vec<FileToWrite>,
    pub command: Option<CommandSpec>,
    pub timeout: Duration,
    /// Handed back unchanged with the result, so the loop knows what finished.
    pub tag: WorkTag,
}

/// What a piece of work was for.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkTag {
    /// Step `step` of a status query of grid `grid` in cycle `cycle`.
    Status { grid: usize, cycle: u64 },
    /// The submission of task `task_id` (or pilot, when `pilot` is set) into `dir`.
    Submit {
        grid: usize,
        cycle: u64,
        id: String,
        pilot: bool,
        dir: PathBuf,
    },
    /// A remove command; its outcome is only logged.
    Remove { grid: usize },
}

/// The outcome of one [`Work`].
#[derive(Debug)]
pub struct Done {
    pub tag: WorkTag,
    /// The command's output (`None` when there was no command), or why it could not run.
    pub result: Result<Option<CommandOutput>, QueueError>,
}

/// The pool. Dropping it closes the queue of work; the threads end after their current item.
pub struct Runner {
    tx: Option<Sender<Work>>,
    threads: Vec<JoinHandle<()>>,
}

impl Runner {
    /// Starts `threads` supervised command workers: a panic in one reaches the module as a
    /// worker exit (by default the module fails and the controller restarts it, rather than
    /// the cycle waiting for its watchdog).
    pub fn start(
        threads: usize,
        events: WorkerSender<QueueEvent>,
        workers: &WorkerSpawner,
    ) -> std::io::Result<Runner> {
        let (tx, rx) = crossbeam_channel::unbounded::<Work>();
        let threads = (0..threads)
            .map(|i| {
                let rx: Receiver<Work> = rx.clone();
                let events = events.clone();
                workers.spawn(format!("iceprod-queue-cmd-{i}"), move |worker| {
                    for work in rx {
                        worker.checkpoint();
                        let tag = work.tag.clone();
                        let result = perform(work);
                        if events.send(QueueEvent::Work(Done { tag, result })).is_err() {
                            // The module's loop is gone (stopping or restarting).
                            return;
                        }
                    }
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Runner {
            tx: Some(tx),
            threads,
        })
    }

    pub fn submit(&self, work: Work) {
        if let Some(tx) = &self.tx {
            // The receivers live as long as the threads, which end only after `tx` drops.
            let _ = tx.send(work);
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.tx.take();
        // Not joined: a worker may be waiting out a tool's timeout, and the module's stop
        // must not wait for it. The threads end on their own.
        self.threads.clear();
    }
}

fn perform(work: Work) -> Result<Option<CommandOutput>, QueueError> {
    if let Some(dir) = &work.dir {
        make_private_dir(dir)?;
    }
    for file in &work.files {
        write_file(file)?;
    }
    match &work.command {
        None => Ok(None),
        Some(spec) => run(spec, work.timeout).map(Some),
    }
}

fn io_error(what: String, e: std::io::Error) -> QueueError {
    QueueError::Io {
        what,
        message: e.to_string(),
    }
}

fn make_private_dir(dir: &PathBuf) -> Result<(), QueueError> {
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| io_error(format!("cannot make submit folder {}", dir.display()), e))
}

fn write_file(file: &FileToWrite) -> Result<(), QueueError> {
    let what = || format!("cannot write {}", file.path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(file.mode)
        .open(&file.path)
        .map_err(|e| io_error(what(), e))?;
    std::io::Write::write_all(&mut f, &file.contents).map_err(|e| io_error(what(), e))?;
    // The mode of `open` applies only to a new file.
    std::fs::set_permissions(&file.path, std::fs::Permissions::from_mode(file.mode))
        .map_err(|e| io_error(what(), e))
}

/// Runs `spec` to its end or its timeout; the output whatever the exit code.
pub fn run(spec: &CommandSpec, timeout: Duration) -> Result<CommandOutput, QueueError> {
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    let mut child = command.spawn().map_err(|e| QueueError::Spawn {
        program: spec.program.clone(),
        message: match e.kind() {
            std::io::ErrorKind::NotFound => "not found (is it installed and on PATH?)".into(),
            std::io::ErrorKind::PermissionDenied => "permission denied".into(),
            _ => e.to_string(),
        },
    })?;
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().map(capture);
    let stderr = child.stderr.take().map(capture);
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() >= timeout => {
                kill_group(pid);
                let _ = child.wait();
                break Err(QueueError::Timeout {
                    program: spec.program.clone(),
                    seconds: timeout.as_secs(),
                });
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => {
                kill_group(pid);
                break Err(io_error(format!("waiting for {}", spec.program), e));
            }
        }
    };
    // A helper the tool left behind could hold the pipes open: it goes with the group.
    if status.is_ok() {
        kill_group(pid);
    }
    let collect = |h: Option<JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    };
    let (stdout, stderr) = (collect(stdout), collect(stderr));
    let status = status?;
    Ok(CommandOutput {
        program: spec.program.clone(),
        code: status.code(),
        stdout,
        stderr,
    })
}

fn kill_group(pid: libc::pid_t) {
    // SAFETY: kill(2) on the process group this worker created for the tool.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

fn capture(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 64 << 10];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => return kept,
                Ok(n) => {
                    let room = MAX_CAPTURE.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> CommandSpec {
        CommandSpec::new("sh", &["-c", script])
    }

    #[test]
    fn a_command_gives_its_output_and_exit_code() {
        let out = run(
            &sh("echo out; echo err >&2; exit 3"),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (Some(3), "out\n", "err\n")
        );
    }

    #[test]
    fn a_missing_tool_is_a_spawn_error_naming_it() {
        let e = run(
            &CommandSpec::new("iceprod-no-such-tool", &[]),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(e.to_string().contains("iceprod-no-such-tool"), "{e}");
        assert!(matches!(e, QueueError::Spawn { .. }));
    }

    #[test]
    fn a_hanging_tool_and_its_children_are_killed_at_the_timeout() {
        let started = Instant::now();
        // The background sleep holds stdout open: only killing the group ends the read.
        let e = run(&sh("sleep 30 & sleep 30"), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, QueueError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn huge_output_is_bounded() {
        let out = run(&sh("head -c 80000000 /dev/zero"), Duration::from_secs(30)).unwrap();
        assert_eq!(out.stdout.len(), MAX_CAPTURE);
        assert_eq!(out.code, Some(0));
    }
}
