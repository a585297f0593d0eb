//! The processes under test: writing iceprod's config, starting `iceprod server` and
//! `hello-http` as children on free 127.0.0.1 ports, waiting until they answer, signalling and
//! stopping them.
//!
//! Every child is held by a [`Child`], whose drop stops it (SIGTERM, then SIGKILL), so no error
//! path leaves a server running. Waits are bounded by a deadline.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::http::{Connection, Response};

/// How long a server gets to answer its first request.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two readiness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(1);

/// The parts of iceprod's config the harness varies.
#[derive(Clone, Debug)]
pub struct IceprodConfig {
    pub port: u16,
    /// `[website] body_limit`, for example `10MiB`.
    pub body_limit: String,
    /// Adds the `[schedule.jobs.bench_extra]` table (the schedule reload case toggles it).
    pub extra_job: bool,
    /// Pins `[site] id` (a seeded database's ids carry its site number).
    pub site_id: Option<String>,
    /// `[logging] level`.
    pub log_level: String,
    /// `[db] archive_after_days`, when not the default (a seeded database turns it off).
    pub archive_after_days: Option<u32>,
}

impl IceprodConfig {
    pub fn new(port: u16) -> IceprodConfig {
        IceprodConfig {
            port,
            body_limit: "10MiB".into(),
            extra_job: false,
            site_id: None,
            log_level: "warn".into(),
            archive_after_days: None,
        }
    }

    /// The config file's text; state, pid file and control socket live in `dir/var`.
    pub fn render(&self, dir: &Path) -> String {
        let var = dir.join("var");
        let site_id = self
            .site_id
            .as_ref()
            .map(|id| format!("id = \"{id}\"\n"))
            .unwrap_or_default();
        let db = self
            .archive_after_days
            .map(|days| format!("\n[db]\narchive_after_days = {days}\n"))
            .unwrap_or_default();
        let mut text = format!(
            r#"[site]
{site_id}state_dir = "{var}"

[controller]
pid_file = "{var}/iceprod.pid"
control_socket = "{var}/iceprod.sock"

[logging]
level = "{level}"
{db}
[website]
address = "127.0.0.1"
port = {port}
body_limit = "{body_limit}"

[schedule.jobs.tick]
every = "5s"
target = "website"
message = "ping"
"#,
            var = var.display(),
            level = self.log_level,
            port = self.port,
            body_limit = self.body_limit,
        );
        if self.extra_job {
            text.push_str(
                r#"
[schedule.jobs.bench_extra]
every = "3s"
target = "website"
message = "ping"
"#,
            );
        }
        text
    }

    /// Writes the config to `file` (in `file`'s folder) atomically: a reloading server never
    /// reads a half-written file.
    pub fn write(&self, file: &Path) -> Result<()> {
        let dir = file.parent().context("the config file has no folder")?;
        std::fs::create_dir_all(dir.join("var"))
            .with_context(|| format!("cannot create {}", dir.join("var").display()))?;
        let tmp = file.with_extension("toml.tmp");
        std::fs::write(&tmp, self.render(dir))
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, file)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), file.display()))?;
        Ok(())
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("cannot bind 127.0.0.1:0 to find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Checks that `binary` is an existing file, with an error that says what to build.
pub fn check_binary(binary: &Path, what: &str) -> Result<()> {
    if !binary.is_file() {
        bail!(
            "{what} binary {} does not exist (build it with `cargo build --release -p {what}`)",
            binary.display()
        );
    }
    Ok(())
}

/// `hello-http`, looked for beside this executable (cargo builds both into the same folder).
pub fn hello_binary() -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this executable's path")?;
    let path = me.with_file_name("hello-http");
    if !path.is_file() {
        bail!(
            "{} does not exist (build it with `cargo build --release -p iceprod-load`)",
            path.display()
        );
    }
    Ok(path)
}

/// A child process that is stopped when dropped.
pub struct Child {
    name: String,
    child: std::process::Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Child {
    /// Starts `iceprod server --config CONFIG --foreground`, its stderr going to `log`.
    pub fn spawn_iceprod(binary: &Path, config: &Path, log: &Path) -> Result<Child> {
        let mut command = Command::new(binary);
        command
            .arg("server")
            .arg("--config")
            .arg(config)
            .arg("--foreground");
        Child::spawn("iceprod server", command, log)
    }

    /// Starts `hello-http PORT THREADS MAX_SECONDS`.
    pub fn spawn_hello(
        binary: &Path,
        port: u16,
        threads: usize,
        lifetime: Duration,
        log: &Path,
    ) -> Result<Child> {
        let mut command = Command::new(binary);
        command
            .arg(port.to_string())
            .arg(threads.to_string())
            .arg(lifetime.as_secs().max(1).to_string());
        Child::spawn("hello-http", command, log)
    }

    fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Child> {
        let log_file =
            File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let stdout = log_file.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Child {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// An error unless the process is still running.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.exit_status() {
            None => Ok(()),
            Some(status) => bail!(
                "{} (pid {}) exited with {status}; last lines of its log:\n{}",
                self.name,
                self.pid(),
                self.log_tail(20)
            ),
        }
    }

    /// Sends `signal` (a libc signal number) to the process.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        self.ensure_running()?;
        let pid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
        // SAFETY: kill(2) has no memory-safety preconditions. The pid is our own child, which
        // we have not reaped (checked just above), so it cannot have been reused.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("cannot signal {} (pid {pid})", self.name));
        }
        Ok(())
    }

    /// SIGTERM, then waits up to 10 s for the exit (SIGKILL after that). Returns how it ended.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exit_status() {
            return Ok(status);
        }
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status() {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let status = self.child.wait()?;
        self.exited = Some(status);
        bail!(
            "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM and was killed",
            self.name
        )
    }

    /// The last `lines` lines of the process's output.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Lines of the process's output that contain `needle` (case-insensitive).
    pub fn log_lines_containing(&self, needle: &str) -> usize {
        let needle = needle.to_ascii_lowercase();
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains(&needle))
            .count()
    }

    /// Resident memory (VmRSS from /proc/PID/status), in kB.
    pub fn rss_kb(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS line in {path}"))
    }

    /// Probes until a request on a fresh connection gets a response `ready` accepts, and
    /// returns when that was relative to `since`. Fails if the process exits or `timeout`
    /// passes first.
    pub fn wait_until_ready(
        &mut self,
        port: u16,
        since: Instant,
        timeout: Duration,
        probe: fn(&mut Connection) -> io::Result<Response>,
        ready: fn(&Response) -> bool,
    ) -> Result<Duration> {
        let deadline = since + timeout;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            self.ensure_running()?;
            match Connection::connect(port, Duration::from_millis(500))
                .and_then(|mut c| probe(&mut c))
            {
                Ok(response) if ready(&response) => return Ok(since.elapsed()),
                Ok(response) => last = format!("unexpected answer {response:?}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
        bail!(
            "{} did not answer on 127.0.0.1:{port} within {timeout:?} ({last}); last lines of \
             its log:\n{}",
            self.name,
            self.log_tail(20)
        )
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.exit_status().is_none() {
            if let Err(e) = self.stop() {
                eprintln!("iceprod-load: stopping {}: {e:#}", self.name);
            }
        }
    }
}

/// Probe for iceprod: the echo request.
pub fn probe_echo(c: &mut Connection) -> io::Result<Response> {
    c.post_echo()
}

/// Readiness of iceprod: the right echo answer.
pub fn echo_answered(r: &Response) -> bool {
    r.is_echo_reply()
}

/// Readiness of hello-http: any 200.
pub fn answered_200(r: &Response) -> bool {
    r.status == 200
}
