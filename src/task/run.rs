//! Running a task's trays and modules: each tray `iterations` times, each module in order, as a
//! process in its own process group (so a stop kills everything it started), with its stdout
//! and stderr appended to the task's `stdout` and `stderr` files through two small copy
//! threads that cap what a module may write. Arguments, `src` and `env_shell` are expanded with
//! the module's parameters (module, tray, task and steering scopes, `options` with `iter`).
//! A failure is returned as one line naming the module, tray and iteration.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use iceprod_runtime::dataset::{expand, Env, Job, Module};
use serde_json::Value;

use crate::task::report::Usage;
use crate::task::stage;
use crate::task::stdlog::Stdlog;
use crate::task::stop::{kill_group, StopReason, TaskControl};

/// Variables a module sees when `env_clear` is set (besides the `ICEPROD_*` ones).
const KEPT_VARIABLES: [&str; 5] = ["PATH", "HOME", "USER", "TMPDIR", "LANG"];
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The seed of `$choice` for this task's job: the job index, as the server uses when it
/// evaluates the job's requirements, so every place of one job picks the same choice (data
/// URLs, module arguments, requirements).
pub fn job_seed(job: &Job) -> u64 {
    job.options.get("job").and_then(Value::as_u64).unwrap_or(0)
}

/// How running the modules ended, if not with all of them succeeding.
#[derive(Debug, PartialEq)]
pub enum Failure {
    /// A module failed: the one-line summary.
    Module(String),
    /// The task was stopped from outside.
    Stopped(StopReason),
}

/// What the modules of one task share.
pub struct Runner<'a> {
    pub folder: &'a Path,
    pub job: &'a Job,
    pub task_index: usize,
    pub log: &'a Stdlog,
    pub agent: &'a ureq::Agent,
    pub control: &'a TaskControl,
    /// Most bytes a module may write to each of stdout and stderr.
    pub max_output: u64,
    pub stdout: &'a File,
    pub stderr: &'a File,
}

impl Runner<'_> {
    /// Runs every tray and module; the resources they used, whatever the outcome.
    pub fn run(&self) -> (Usage, Result<(), Failure>) {
        let mut usage = Usage::default();
        let task = &self.job.tasks[self.task_index];
        let environ = |k: &str| std::env::var(k).ok();
        let task_env = Env::for_task(self.job, self.task_index)
            .with_environ(&environ)
            .with_seed(job_seed(self.job));
        for (t, tray) in task.trays.iter().enumerate() {
            for iter in 0..tray.iterations.max(1) {
                // Checked on every iteration too, so a tray of many iterations (or of no
                // modules) still stops at once.
                if let Some(reason) = self.control.stopped() {
                    return (usage, Err(Failure::Stopped(reason)));
                }
                for (m, module) in tray.modules.iter().enumerate() {
                    if let Some(reason) = self.control.stopped() {
                        return (usage, Err(Failure::Stopped(reason)));
                    }
                    let label = ModuleLabel {
                        name: if module.name.is_empty() {
                            format!("#{m}")
                        } else {
                            module.name.clone()
                        },
                        tray: t,
                        iter,
                    };
                    let env = task_env
                        .clone()
                        .with_scope(&tray.parameters)
                        .with_scope(&module.parameters)
                        .with_option("iter", iter);
                    self.log.info(&format!("running {label}"));
                    let result = self.run_module(module, &env, &label, &mut usage);
                    if let Err(failure) = result {
                        return (usage, Err(failure));
                    }
                }
            }
        }
        (usage, Ok(()))
    }

    fn run_module(
        &self,
        module: &Module,
        env: &Env,
        label: &ModuleLabel,
        usage: &mut Usage,
    ) -> Result<(), Failure> {
        let fail = |why: String| Failure::Module(format!("{label}: {why}"));
        let argv = self.command_line(module, env).map_err(fail)?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(self.folder)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        self.set_environment(&mut cmd, module);
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {}", argv[0], stage::describe(&e))))?;
        let pid = child.id() as i32;
        self.control.running(pid);
        let pumps = [
            child
                .stdout
                .take()
                .map(|r| pump(r, self.stdout, self.max_output, pid, "stdout")),
            child
                .stderr
                .take()
                .map(|r| pump(r, self.stderr, self.max_output, pid, "stderr")),
        ];
        let waited = wait_for(pid);
        self.control.ended();
        // Whatever the module left running in its group goes with it.
        kill_group(pid);
        let mut overflowed = None;
        for handle in pumps.into_iter().flatten() {
            if let Ok(Some(stream)) = handle.join() {
                overflowed = Some(stream);
            }
        }
        let (status, module_usage) = waited.map_err(|e| fail(format!("cannot wait: {e}")))?;
        usage.add(module_usage);
        if let Some(reason) = self.control.stopped() {
            return Err(Failure::Stopped(reason));
        }
        if let Some(stream) = overflowed {
            return Err(Failure::Module(format!(
                "{label} wrote more than {} MiB to {stream}",
                self.max_output >> 20
            )));
        }
        match status {
            Exit::Code(0) => {
                self.log.info(&format!("{label} done"));
                Ok(())
            }
            Exit::Code(code) => Err(Failure::Module(format!("{label} exited with {code}"))),
            Exit::Signal(s) => Err(Failure::Module(format!("{label} was killed by signal {s}"))),
        }
    }

    /// The program and its arguments: `env_shell` words, an interpreter for `.py` and `.sh`,
    /// the script, the expanded arguments.
    fn command_line(&self, module: &Module, env: &Env) -> Result<Vec<String>, String> {
        let src = expand(&module.src, env).map_err(|e| format!("bad src: {e}"))?;
        if src.is_empty() {
            return Err(if module.running_class.is_empty() {
                "no src given".into()
            } else {
                format!(
                    "running_class {} needs IceTray; this worker runs only src",
                    module.running_class
                )
            });
        }
        let program = self.script(&src)?;
        let mut argv = Vec::new();
        let shell = expand(&module.env_shell, env).map_err(|e| format!("bad env_shell: {e}"))?;
        if !shell.trim().is_empty() {
            let mut words = shlex::split(&shell)
                .ok_or("env_shell has unbalanced quotes")?
                .into_iter();
            if let Some(first) = words.next() {
                // A wrapper shipped with the task (or given as a URL) is prepared like `src`.
                let shipped = stage::is_url(&first) || self.folder.join(&first).is_file();
                argv.push(if shipped {
                    self.script(&first)?.display().to_string()
                } else {
                    first
                });
            }
            argv.extend(words);
        }
        let program_text = program.display().to_string();
        match program.extension().and_then(|e| e.to_str()) {
            Some("py") => argv.push("python3".into()),
            Some("sh") => argv.push("sh".into()),
            _ => {}
        }
        argv.push(program_text);
        argv.extend(arguments(&module.args, env)?);
        Ok(argv)
    }

    /// The file to run for `src`: downloaded first if it is a URL, looked up in the task
    /// folder, then (a bare name) in PATH; made executable if it is not.
    fn script(&self, src: &str) -> Result<PathBuf, String> {
        let path = if stage::is_url(src) {
            let dest = self.folder.join(stage::file_name(src));
            if !dest.is_file() {
                stage::download(self.agent, src, self.folder, &dest)
                    .map_err(|e| format!("cannot download src {e}"))?;
            }
            dest
        } else {
            let local = self.folder.join(src);
            if local.exists() || src.contains('/') {
                local
            } else {
                search_path(src).unwrap_or(local)
            }
        };
        let meta = std::fs::metadata(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("script {src} not found"),
            _ => format!("script {src}: {}", stage::describe(&e)),
        })?;
        if meta.is_file() && meta.permissions().mode() & 0o111 == 0 {
            // Best effort: a script we may not change can still run through its interpreter.
            let mode = meta.permissions().mode() | 0o755;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
        }
        Ok(path)
    }

    fn set_environment(&self, cmd: &mut Command, module: &Module) {
        if module.env_clear {
            cmd.env_clear();
            for name in KEPT_VARIABLES {
                if let Some(v) = std::env::var_os(name) {
                    cmd.env(name, v);
                }
            }
            if std::env::var_os("PATH").is_none() {
                cmd.env("PATH", DEFAULT_PATH);
            }
            for (k, v) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("ICEPROD_") {
                    cmd.env(k, v);
                }
            }
        }
        // A module acts on the data, never as the task towards the server.
        cmd.env_remove("ICEPROD_PASSKEY");
        let options = &self.job.options;
        let text = |key: &str| match options.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        cmd.env("ICEPROD_TASK_ID", text("task_id"))
            .env("ICEPROD_TASK", text("task"))
            .env("ICEPROD_JOB", text("job"))
            .env("ICEPROD_DATASET", text("dataset"));
    }
}

/// `module gen (tray 0, iteration 1)`.
pub struct ModuleLabel {
    pub name: String,
    pub tray: usize,
    pub iter: i64,
}

impl std::fmt::Display for ModuleLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "module {} (tray {}, iteration {})",
            self.name, self.tray, self.iter
        )
    }
}

/// A module's `args` as words: a string is split like a shell does, a list gives one word per
/// element, an object gives `--key=value`; every string is expanded first.
pub fn arguments(args: &Value, env: &Env) -> Result<Vec<String>, String> {
    let word = |v: &Value| -> Result<String, String> {
        match v {
            Value::String(s) => expand(s, env).map_err(|e| format!("bad args: {e}")),
            Value::Null => Ok(String::new()),
            other => Ok(other.to_string()),
        }
    };
    match args {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => {
            let text = word(&Value::String(s.clone()))?;
            shlex::split(&text).ok_or_else(|| format!("bad args: unbalanced quotes in {text}"))
        }
        Value::Array(items) => items.iter().map(word).collect(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                Ok(format!(
                    "--{}={}",
                    expand(k, env).map_err(|e| e.to_string())?,
                    word(v)?
                ))
            })
            .collect(),
        other => Ok(vec![other.to_string()]),
    }
}

fn search_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

enum Exit {
    Code(i32),
    Signal(i32),
}

/// Waits for `pid` with wait4, which also gives what it (and the children it waited for) used.
fn wait_for(pid: i32) -> std::io::Result<(Exit, Usage)> {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child; status and ru outlive the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let usage = Usage {
        cpu_seconds: secs(ru.ru_utime) + secs(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss,
    };
    let exit = if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(libc::WEXITSTATUS(status))
    };
    Ok((exit, usage))
}

/// Copies a module's output into `to` until the pipe closes, keeping at most `limit` bytes;
/// past it, kills the module's group and answers `Some(stream)`.
fn pump(
    mut from: impl Read + Send + 'static,
    to: &File,
    limit: u64,
    pgid: i32,
    stream: &'static str,
) -> std::thread::JoinHandle<Option<&'static str>> {
    let mut to = to.try_clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let mut written = 0u64;
        let mut overflowed = false;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let room = limit.saturating_sub(written).min(n as u64) as usize;
            if let Ok(f) = to.as_mut() {
                let _ = f.write_all(&buf[..room]);
            }
            written += room as u64;
            if room < n && !overflowed {
                overflowed = true;
                kill_group(pgid);
            }
        }
        overflowed.then_some(stream)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job() -> Job {
        Job::from_value(&json!({
            "version": 3,
            "options": {"job": 4, "task_id": "t1"},
            "steering": {"parameters": {"x": "sx", "events": 10}},
            "tasks": [{"name": "a", "parameters": {"p": "tp"}, "trays": []}]
        }))
        .unwrap()
    }

    #[test]
    fn string_args_split_like_a_shell_after_expansion() {
        let job = job();
        let env = Env::for_task(&job, 0).with_option("iter", 2);
        let args = json!("--n $(events) --name 'a b' $steering(x) $(iter) $(p)");
        assert_eq!(
            arguments(&args, &env).unwrap(),
            ["--n", "10", "--name", "a b", "sx", "2", "tp"]
        );
    }

    #[test]
    fn list_and_object_args_give_one_word_per_value() {
        let job = job();
        let env = Env::for_task(&job, 0);
        assert_eq!(
            arguments(&json!(["$(job)", 3, "a b"]), &env).unwrap(),
            ["4", "3", "a b"]
        );
        assert_eq!(
            arguments(&json!({"events": "$(events)", "seed": 7}), &env).unwrap(),
            ["--events=10", "--seed=7"]
        );
        assert_eq!(arguments(&Value::Null, &env).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn the_label_names_module_tray_and_iteration() {
        let label = ModuleLabel {
            name: "gen".into(),
            tray: 0,
            iter: 1,
        };
        assert_eq!(label.to_string(), "module gen (tray 0, iteration 1)");
    }
}
