//! The command line of `iceprod task`: what each flag means, its default, and turning the flags
//! into the [`Settings`] the rest of the worker reads. Nothing here talks to the network.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Run one task (or, with `--pilot`, as many as fit) on a worker node.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:
  iceprod task --url https://site:8080 --passkey KEY --cfgfile task.cfg
      run the task whose config the queue wrote into this folder
  iceprod task --task-id bHJ3 --ca-cert site-ca.pem
      fetch the config of task bHJ3 (get_task_config) and run it; URL and passkey
      from $ICEPROD_SERVER_URL and $ICEPROD_PASSKEY
  iceprod task --pilot --passkey PILOTKEY --cfgfile pilot.cfg --cpu 8 --memory 16
      a pilot: pull tasks with new_task while resources are free, run them side by side,
      exit after 60 s without work
  iceprod task --cfgfile task.cfg --stillrunning-interval 5 --retry-for 120")]
pub struct TaskArgs {
    /// Server base URL; calls go to URL/jsonrpc (default: $ICEPROD_SERVER_URL).
    #[arg(long)]
    pub url: Option<String>,
    /// The task's (or pilot's) passkey (default: $ICEPROD_PASSKEY).
    #[arg(long)]
    pub passkey: Option<String>,
    /// The task config (SPEC §5.2.1), or with --pilot the pilot config.
    #[arg(long, conflicts_with = "task_id")]
    pub cfgfile: Option<PathBuf>,
    /// Fetch the task config from the server (`get_task_config`) instead of --cfgfile.
    #[arg(long)]
    pub task_id: Option<String>,
    /// PEM file of the site CA, to verify https servers and https inputs and outputs.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Pilot mode: pull tasks with `new_task` instead of running one given task.
    #[arg(long)]
    pub pilot: bool,
    /// Pilot: CPUs it may use (default: the pilot config's resources, else 1).
    #[arg(long)]
    pub cpu: Option<f64>,
    /// Pilot: GPUs it may use (default: the pilot config's, else 0).
    #[arg(long)]
    pub gpu: Option<f64>,
    /// Pilot: memory in GB (default: the pilot config's, else 1).
    #[arg(long)]
    pub memory: Option<f64>,
    /// Pilot: disk in GB (default: the pilot config's, else 1).
    #[arg(long)]
    pub disk: Option<f64>,
    /// Pilot: wall time in hours it may run (default: the pilot config's, else 1).
    #[arg(long)]
    pub time: Option<f64>,
    /// Pilot: the grid it pulls for, `SITEID.NAME` (default: the pilot config's).
    #[arg(long)]
    pub gridspec: Option<String>,
    /// Pilot: its id for `update_pilot` (default: the pilot config's `pilot_id`).
    #[arg(long)]
    pub pilot_id: Option<String>,
    /// Pilot: seconds without a running task after which it exits.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub idle_timeout: f64,
    /// Seconds between `stillrunning` heartbeats (default: the config's
    /// `options.stillrunninginterval`, else 60).
    #[arg(long, value_name = "SECONDS")]
    pub stillrunning_interval: Option<f64>,
    /// How long to keep retrying a call the server could not answer (connection refused,
    /// timeout, HTTP 5xx), backing off from 1 s to 30 s.
    #[arg(long, default_value_t = 600.0, value_name = "SECONDS")]
    pub retry_for: f64,
    /// Most output (MiB) a module may write to stdout or to stderr; beyond it the module is
    /// killed and the task fails. Only the last 6 MiB of each log is uploaded.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub max_output: u64,
}

/// What every task of this worker shares, read once from the flags and the environment.
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: String,
    pub passkey: String,
    pub ca_pem: Option<Vec<u8>>,
    pub retry_for: Duration,
    pub stillrunning_interval: Option<Duration>,
    pub max_output: u64,
}

impl TaskArgs {
    /// The shared settings; an error names the missing flag.
    pub fn settings(&self) -> Result<Settings, String> {
        let url = self
            .url
            .clone()
            .or_else(|| std::env::var("ICEPROD_SERVER_URL").ok())
            .filter(|u| !u.is_empty())
            .ok_or("no server URL: pass --url or set ICEPROD_SERVER_URL")?;
        let passkey = self
            .passkey
            .clone()
            .or_else(|| std::env::var("ICEPROD_PASSKEY").ok())
            .filter(|k| !k.is_empty())
            .ok_or("no passkey: pass --passkey or set ICEPROD_PASSKEY")?;
        let ca_pem = match &self.ca_cert {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("cannot read --ca-cert {}: {e}", path.display()))?,
            ),
            None => None,
        };
        Ok(Settings {
            url,
            passkey,
            ca_pem,
            retry_for: seconds("--retry-for", self.retry_for)?,
            stillrunning_interval: self
                .stillrunning_interval
                .map(|s| seconds("--stillrunning-interval", s))
                .transpose()?,
            max_output: self.max_output.saturating_mul(1 << 20),
        })
    }
}

/// A non-negative number of seconds as a duration.
pub fn seconds(flag: &str, value: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| format!("{flag} must be a non-negative number of seconds, not {value}"))
}
