//! The server's configuration: one TOML file read into raw serde structs, then validated in one
//! place into [`Config`], the one value every module reads. Reload compares two `Config`s
//! section by section ([`Config::changed_sections`]).
//!
//! Errors name the file, the line and the key. Relative paths are resolved against the config
//! file's folder here, so no module ever sees a relative path.
//!
//! Every key has a built-in default, so a file names only what differs from them (an empty
//! file is a working site). The state paths (pid file, control socket, databases, submit
//! folders) default to fixed names inside `[site] state_dir` ([`StateFile`]), so moving
//! `state_dir` moves them all; a key set explicitly wins.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::ConfigError;
use crate::ids;
use crate::protocol::{ModuleKind, ScheduledMessage};

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it was read from (absolute), which reloads read again.
    pub file: PathBuf,
    /// `[site]`: the site's id and the folder of its state files.
    pub site: SiteConfig,
    /// `[controller]`: the pid file, the control socket and the stop timeout.
    pub controller: ControllerConfig,
    /// `[modules]`: which modules run.
    pub modules: ModulesConfig,
    /// `[logging]`: how much is logged, and where.
    pub logging: LoggingConfig,
    /// `[db]`: the database, its reader threads and the archive.
    pub db: DbConfig,
    /// `[queue]`: the queue cycle and the grids.
    pub queue: QueueConfig,
    /// `[website]`: the HTTP server, its threads, sessions and `/lib/`.
    pub website: WebsiteConfig,
    /// `[schedule]`: the periodic jobs.
    pub schedule: ScheduleConfig,
    /// `[debug]`: fault injection, for tests and drills.
    pub debug: DebugConfig,
}

/// `[db]`: where the data is kept and how it is read.
#[derive(Clone, Debug, PartialEq)]
pub struct DbConfig {
    /// `sqlite` (the default: an embedded file) or `mysql` (MySQL or MariaDB at `url`).
    pub backend: DbBackend,
    /// The SQLite file (backend `sqlite`).
    pub path: PathBuf,
    /// `mysql://USER:PASSWORD@HOST:PORT/DATABASE` (backend `mysql`, MySQL or MariaDB).
    pub url: Option<String>,
    /// Reader threads, each with a pooled connection; writes go through one grouped writer.
    pub readers: usize,
    /// The SQLite archive file (backend `sqlite`; SPEC §10). On MySQL/MariaDB the archive is
    /// the `archive_*` tables of the same database.
    pub archive_path: PathBuf,
    /// Datasets that ended more than this many days ago move to the archive; 0 never moves
    /// any (archived datasets stay readable).
    pub archive_after_days: u32,
}

/// `[db] backend`: which database the db module uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbBackend {
    /// `sqlite`: the embedded SQLite file at `path` (WAL, `synchronous=FULL`).
    Sqlite,
    /// `mysql`: a MySQL or MariaDB server at `url`.
    Mysql,
}

/// `[queue]`: the queue cycle (SPEC §6) and its grids.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueConfig {
    /// Failures after which a task error fails the task instead of resetting it.
    pub max_resets: u32,
    /// Time between queue cycles.
    pub interval: Duration,
    /// Jobs created per cycle across processing datasets.
    pub task_buffer: u32,
    /// Where each task's (or pilot's) submit folder is made.
    pub submit_dir: PathBuf,
    /// The base URL workers reach the server at; `None`: `http://` + the website's address.
    pub server_url: Option<String>,
    /// The `iceprod` binary workers run; `None`: this server's own executable.
    pub worker_command: Option<PathBuf>,
    /// The site CA certificate (PEM) copied into each submit folder, with which workers
    /// verify an https `server_url`; `None`: workers use the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// Longest a grid command (submit, status, remove) may run before it is killed.
    pub command_timeout: Duration,
    /// How long a task the grid no longer knows, and that has not reported, is left before
    /// it is reset (SPEC §6).
    pub lost_grace: Duration,
    /// The grids, by name; an empty `[queue.grids]` means one `local` grid.
    pub grids: BTreeMap<String, GridConfig>,
}

/// The batch systems a grid can be (SPEC §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GridType {
    /// `local`: child processes of this server, at most `max_running` at once.
    Local,
    /// `condor`: HTCondor (`condor_submit`, `condor_q`, `condor_rm`).
    Condor,
    /// `slurm`: Slurm (`sbatch`, `squeue`, `scancel`).
    Slurm,
    /// `pbs`: Torque or PBS Pro (`qsub`, `qstat`, `qdel`).
    Pbs,
    /// `cream`: a CREAM CE (`glite-ce-job-submit`); the grid needs its `endpoint`.
    Cream,
}

impl GridType {
    /// The `type` as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            GridType::Local => "local",
            GridType::Condor => "condor",
            GridType::Slurm => "slurm",
            GridType::Pbs => "pbs",
            GridType::Cream => "cream",
        }
    }
}

impl fmt::Display for GridType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `[min, max, change]` of SPEC §6: per cycle queue
/// `max(0, min(change, max − queued − processing, min − queued))`: keep about `min` waiting
/// on the grid, at most `max` queued and running together, at most `change` more a cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OnQueue {
    /// About this many are kept waiting on the grid (queued, not yet running).
    pub min: u32,
    /// At most this many queued and running together.
    pub max: u32,
    /// At most this many more submitted in one cycle.
    pub change: u32,
}

impl OnQueue {
    /// How many to submit this cycle with `queued` waiting and `processing` running.
    pub fn to_submit(&self, queued: u64, processing: u64) -> u32 {
        let room = i128::from(self.max) - i128::from(queued) - i128::from(processing);
        let below_min = i128::from(self.min) - i128::from(queued);
        let n = i128::from(self.change).min(room).min(below_min).max(0);
        n as u32
    }
}

/// One `[queue.grids.NAME]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct GridConfig {
    /// The grid's name, as in `[queue.grids.NAME]`; its gridspec is `SITEID.NAME`.
    pub name: String,
    /// `type`: the batch system that runs its jobs.
    pub kind: GridType,
    /// Tasks (direct mode) on the queue.
    pub tasks_on_queue: OnQueue,
    /// Pilot mode: tasks wait in the lookup and pilots pull them.
    pub submit_pilots: bool,
    /// Pilots on the queue (pilot mode).
    pub pilots_on_queue: OnQueue,
    /// `local`: tasks run at once; the rest wait in the grid's own queue.
    pub max_running: u32,
    /// A task of this grid `waiting` longer is reset, failures unchanged (default 2d).
    pub max_task_waiting_time: Duration,
    /// A task of this grid `queued` longer is reset, failures unchanged (default 2d).
    pub max_task_queued_time: Duration,
    /// A task of this grid `processing` longer is reset, failures unchanged (default 2d).
    pub max_task_processing_time: Duration,
    /// The largest slot the grid offers; larger tasks are not queued here.
    pub resources: GridResources,
    /// Extra submit options, written into the submit file as the batch system spells them.
    pub batchopts: BTreeMap<String, String>,
    /// The partition (slurm), queue (pbs, cream) or nothing.
    pub queue: Option<String>,
    /// The CREAM CE endpoint (`host:8443/cream-pbs-QUEUE`); cream only.
    pub endpoint: Option<String>,
    /// A folder searched before PATH for the grid's tools.
    pub bin_dir: Option<PathBuf>,
}

/// Resources of a grid's largest slot: memory and disk in GB, time in hours.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GridResources {
    /// Cores of the largest slot (default 8, at least 1).
    pub cpu: u32,
    /// GPUs of the largest slot (default 0: no gpu task is queued on the grid).
    pub gpu: u32,
    /// Memory of the largest slot, in GB (default 16).
    pub memory: f64,
    /// Disk of the largest slot, in GB (default 100).
    pub disk: f64,
    /// Longest run the grid allows, in hours (default 24).
    pub time: f64,
}

impl Default for GridResources {
    fn default() -> Self {
        GridResources {
            cpu: 8,
            gpu: 0,
            memory: 16.0,
            disk: 100.0,
            time: 24.0,
        }
    }
}

impl From<GridResources> for crate::Resources {
    fn from(r: GridResources) -> Self {
        crate::Resources {
            cpu: r.cpu,
            gpu: r.gpu,
            memory: r.memory,
            disk: r.disk,
            time: r.time,
        }
    }
}

impl QueueConfig {
    /// `SITEID.NAME` of a grid.
    pub fn gridspec(site_id: &str, grid: &str) -> String {
        format!("{site_id}.{grid}")
    }
}

/// `[site]`: who this site is and where it keeps its files.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteConfig {
    /// A pinned site id (base 62); otherwise the database's, generated at the first
    /// start. The controller fills it in before any module starts.
    pub id: Option<String>,
    /// Where the server keeps its files (databases, pid file, socket).
    pub state_dir: PathBuf,
}

/// A file or folder the server keeps inside `[site] state_dir` unless its own key places it
/// elsewhere. The names here are the defaults `conf/iceprod.toml` documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateFile {
    /// `[controller] pid_file`.
    PidFile,
    /// `[controller] control_socket`.
    ControlSocket,
    /// `[db] path`, the SQLite database.
    Database,
    /// `[db] archive_path`, the SQLite archive.
    Archive,
    /// `[queue] submit_dir`, the tasks' submit folders.
    SubmitDir,
    /// The log of a server started without `--foreground` while `[logging] file` is empty.
    DaemonLog,
}

impl StateFile {
    /// Every state file, for checks that go through them all.
    pub const ALL: [StateFile; 6] = [
        StateFile::PidFile,
        StateFile::ControlSocket,
        StateFile::Database,
        StateFile::Archive,
        StateFile::SubmitDir,
        StateFile::DaemonLog,
    ];

    /// Its name inside `state_dir`.
    pub fn name(self) -> &'static str {
        match self {
            StateFile::PidFile => "iceprod.pid",
            StateFile::ControlSocket => "iceprod.sock",
            StateFile::Database => "iceprod.db",
            StateFile::Archive => "iceprod-archive.db",
            StateFile::SubmitDir => "submit",
            StateFile::DaemonLog => "iceprod.log",
        }
    }

    /// The key that places it elsewhere.
    pub fn key(self) -> &'static str {
        match self {
            StateFile::PidFile => "controller.pid_file",
            StateFile::ControlSocket => "controller.control_socket",
            StateFile::Database => "db.path",
            StateFile::Archive => "db.archive_path",
            StateFile::SubmitDir => "queue.submit_dir",
            StateFile::DaemonLog => "logging.file",
        }
    }
}

/// `[controller]`: the server process's pid file, control socket and stop timeout.
#[derive(Clone, Debug, PartialEq)]
pub struct ControllerConfig {
    /// Pid file: a server will not start while a live process holds it.
    pub pid_file: PathBuf,
    /// The Unix socket `iceprod ctl` talks to.
    pub control_socket: PathBuf,
    /// How long each module gets to finish in-flight work when the server stops.
    pub stop_timeout: Duration,
}

/// Which modules run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModulesConfig {
    enabled: [bool; ModuleKind::COUNT],
}

impl ModulesConfig {
    /// Whether `[modules]` turns `kind` on (by default all but master and proxy).
    pub fn enabled(&self, kind: ModuleKind) -> bool {
        self.enabled[kind.index()]
    }
}

/// `[logging] level`: the least severe messages logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Progress messages, warnings and errors (the default).
    Info,
    /// Details for finding a fault, and all of the above.
    Debug,
    /// Everything, step by step.
    Trace,
}

impl LogLevel {
    /// The `log` crate's filter for this level.
    pub fn to_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// `[logging]`: how much is logged, and where.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggingConfig {
    /// The least severe messages logged (default `info`); `RUST_LOG` refines it.
    pub level: LogLevel,
    /// Log file; `None` logs to standard error.
    pub file: Option<PathBuf>,
}

/// `[website]`: the HTTP server (JSON-RPC, pages, `/healthz`, `/metrics`).
#[derive(Clone, Debug, PartialEq)]
pub struct WebsiteConfig {
    /// The address the HTTP server listens on (default 127.0.0.1).
    pub address: IpAddr,
    /// The port it listens on (default 8080).
    pub port: u16,
    /// Largest request body accepted; larger ones get HTTP 413 before parsing.
    pub body_limit: u64,
    /// Threads that write streamed replies (`/log`, `/lib`), so a long download never delays
    /// the rest.
    pub stream_threads: usize,
    /// Most client connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Longest wait for a request head, from its first byte.
    pub header_timeout: Duration,
    /// Longest wait for a request body, from the end of its head.
    pub body_timeout: Duration,
    /// How long an idle keep-alive connection (or a new one that sends nothing) stays open.
    pub idle_timeout: Duration,
    /// Longest wait for a client to take more of a response.
    pub write_timeout: Duration,
    /// Whether the `public_*` reads work without a user passkey (SPEC §5.4), and the pages
    /// can be read without logging in.
    pub public_reads: bool,
    /// How long a website session lasts after login.
    pub session_ttl: Duration,
    /// Whether the session cookie is marked `Secure` (served over TLS, e.g. behind nginx).
    pub secure_cookies: bool,
    /// The folder served at `/lib/PATH` (files for workers); `None`: `/lib/` is off.
    pub lib_dir: Option<PathBuf>,
}

/// Longest `[website] session_ttl`.
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(90 * 86_400);

/// `[schedule]`: the periodic jobs.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ScheduleConfig {
    /// The jobs by name (`[schedule.jobs.NAME]`); a file without any gets the default jobs.
    pub jobs: BTreeMap<String, ScheduleJob>,
}

/// One `[schedule.jobs.NAME]` table: a message sent to a module at set times.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleJob {
    /// `every` or `at`: when the message is sent.
    pub when: ScheduleWhen,
    /// `target`: the module that gets the message; it must be enabled.
    pub target: ModuleKind,
    /// `message`: what the module is asked to do (`complete_datasets`, `ping`, …).
    pub message: ScheduledMessage,
}

/// When a schedule job runs: its `every` or its `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleWhen {
    /// Every so many whole seconds.
    Every(Duration),
    /// Daily at this local time (hours, minutes).
    Daily {
        /// The hour, 0 to 23.
        hour: u32,
        /// The minute of that hour, 0 to 59.
        minute: u32,
    },
}

/// `[debug]`: switches for tests and drills, off by default.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct DebugConfig {
    /// Allows `iceprod ctl inject …`; off in production.
    pub fault_injection: bool,
}

/// A config section; reload acts per section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// `[site]`: a change restarts every module.
    Site,
    /// `[controller]`: restarts nothing; the pid file and socket move at the next start.
    Controller,
    /// `[modules]`: a change starts or stops modules.
    Modules,
    /// `[logging]`: a change is applied by the controller.
    Logging,
    /// `[db]`: read by the db module, which applies a change in place or restarts.
    Db,
    /// `[queue]`: read by the queue module, and in part by the db and the website.
    Queue,
    /// `[website]`: read by the website module, and for the workers' URL by the queue.
    Website,
    /// `[schedule]`: read by the schedule module, which rebuilds its jobs in place.
    Schedule,
    /// `[debug]`: read by the controller; a change applies at once, restarting nothing.
    Debug,
}

impl Section {
    /// The section's table name, as written in the file.
    pub fn name(self) -> &'static str {
        match self {
            Section::Site => "site",
            Section::Controller => "controller",
            Section::Modules => "modules",
            Section::Logging => "logging",
            Section::Db => "db",
            Section::Queue => "queue",
            Section::Website => "website",
            Section::Schedule => "schedule",
            Section::Debug => "debug",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Config {
    /// Reads and validates `file`. `available` lists the modules this build has; enabling
    /// another is an error.
    pub fn load(file: &Path, available: &[ModuleKind]) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            line: None,
            key: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::parse(&text, file, available)
    }

    /// Validates `text` as if read from `file` (relative paths resolve against its folder).
    pub fn parse(text: &str, file: &Path, available: &[ModuleKind]) -> Result<Config, ConfigError> {
        let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of_offset(text, s.start));
            ConfigError {
                file: file.clone(),
                line,
                key: line.and_then(|l| key_at_line(text, l)),
                message: e.message().trim().to_string(),
            }
        })?;
        Validator {
            text,
            file: &file,
            available,
        }
        .validate(raw)
    }

    /// The sections whose values differ between `self` and `new`.
    pub fn changed_sections(&self, new: &Config) -> Vec<Section> {
        let mut changed = Vec::new();
        let mut check = |differs: bool, section| {
            if differs {
                changed.push(section)
            }
        };
        check(self.site != new.site, Section::Site);
        check(self.controller != new.controller, Section::Controller);
        check(self.modules != new.modules, Section::Modules);
        check(self.logging != new.logging, Section::Logging);
        check(self.db != new.db, Section::Db);
        check(self.queue != new.queue, Section::Queue);
        check(self.website != new.website, Section::Website);
        check(self.schedule != new.schedule, Section::Schedule);
        check(self.debug != new.debug, Section::Debug);
        changed
    }

    /// Where `what` is with this config: its key's value, or its default inside `state_dir`.
    pub fn state_path(&self, what: StateFile) -> PathBuf {
        match what {
            StateFile::PidFile => self.controller.pid_file.clone(),
            StateFile::ControlSocket => self.controller.control_socket.clone(),
            StateFile::Database => self.db.path.clone(),
            StateFile::Archive => self.db.archive_path.clone(),
            StateFile::SubmitDir => self.queue.submit_dir.clone(),
            StateFile::DaemonLog => match &self.logging.file {
                Some(file) => file.clone(),
                None => self.site.state_dir.join(what.name()),
            },
        }
    }

    /// A config with every default, as if read from an empty file at `file`.
    pub fn defaults(file: &Path) -> Config {
        // An empty document always validates: every key has a default and the default
        // modules are named here as built.
        Config::parse(
            "",
            file,
            &[
                ModuleKind::Db,
                ModuleKind::Queue,
                ModuleKind::Website,
                ModuleKind::Schedule,
            ],
        )
        .expect("the empty config is valid")
    }
}

// ---- raw form: exactly what the file may say ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    site: RawSite,
    controller: RawController,
    modules: RawModules,
    logging: RawLogging,
    db: RawDb,
    queue: RawQueue,
    website: RawWebsite,
    schedule: RawSchedule,
    debug: RawDebug,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSite {
    id: Option<String>,
    state_dir: String,
}

impl Default for RawSite {
    fn default() -> Self {
        RawSite {
            id: None,
            state_dir: "var".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawController {
    pid_file: Option<String>,
    control_socket: Option<String>,
    stop_timeout: HumanDuration,
}

impl Default for RawController {
    fn default() -> Self {
        RawController {
            pid_file: None,
            control_socket: None,
            stop_timeout: HumanDuration(Duration::from_secs(10)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawModules {
    db: bool,
    master: bool,
    queue: bool,
    proxy: bool,
    website: bool,
    schedule: bool,
}

impl Default for RawModules {
    fn default() -> Self {
        RawModules {
            db: true,
            master: false,
            // SPEC §1: a fresh machine runs one local grid.
            queue: true,
            proxy: false,
            website: true,
            schedule: true,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLogging {
    level: LogLevel,
    file: String,
}

impl Default for RawLogging {
    fn default() -> Self {
        RawLogging {
            level: LogLevel::Info,
            file: String::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDb {
    backend: DbBackend,
    path: Option<String>,
    url: String,
    readers: usize,
    archive_path: Option<String>,
    archive_after_days: u32,
}

impl Default for RawDb {
    fn default() -> Self {
        RawDb {
            backend: DbBackend::Sqlite,
            path: None,
            url: String::new(),
            readers: 2,
            archive_path: None,
            archive_after_days: 30,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawQueue {
    max_resets: u32,
    interval: HumanDuration,
    task_buffer: u32,
    submit_dir: Option<String>,
    server_url: String,
    worker_command: String,
    ca_cert: String,
    command_timeout: HumanDuration,
    lost_grace: HumanDuration,
    grids: BTreeMap<String, RawGrid>,
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            max_resets: 10,
            interval: HumanDuration(Duration::from_secs(60)),
            task_buffer: 100,
            submit_dir: None,
            server_url: String::new(),
            worker_command: String::new(),
            ca_cert: String::new(),
            command_timeout: HumanDuration(Duration::from_secs(60)),
            lost_grace: HumanDuration(Duration::from_secs(300)),
            grids: BTreeMap::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawGrid {
    #[serde(rename = "type")]
    kind: Option<GridType>,
    tasks_on_queue: [u32; 3],
    submit_pilots: bool,
    pilots_on_queue: [u32; 3],
    max_running: u32,
    max_task_waiting_time: HumanDuration,
    max_task_queued_time: HumanDuration,
    max_task_processing_time: HumanDuration,
    resources: GridResources,
    batchopts: BTreeMap<String, String>,
    queue: String,
    endpoint: String,
    bin_dir: String,
}

impl Default for RawGrid {
    fn default() -> Self {
        RawGrid {
            kind: None,
            tasks_on_queue: [50, 200, 50],
            submit_pilots: false,
            pilots_on_queue: [1, 10, 5],
            max_running: 2,
            max_task_waiting_time: HumanDuration(Duration::from_secs(2 * 86_400)),
            max_task_queued_time: HumanDuration(Duration::from_secs(2 * 86_400)),
            max_task_processing_time: HumanDuration(Duration::from_secs(2 * 86_400)),
            resources: GridResources::default(),
            batchopts: BTreeMap::new(),
            queue: String::new(),
            endpoint: String::new(),
            bin_dir: String::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWebsite {
    address: IpAddr,
    port: u16,
    body_limit: ByteSize,
    stream_threads: usize,
    max_connections: usize,
    header_timeout: HumanDuration,
    body_timeout: HumanDuration,
    idle_timeout: HumanDuration,
    write_timeout: HumanDuration,
    /// Gone (the edge reads requests on its own loop): named so the error can say so.
    pump_threads: Option<toml::Value>,
    responder_threads: Option<toml::Value>,
    public_reads: bool,
    session_ttl: HumanDuration,
    secure_cookies: bool,
    lib_dir: String,
}

impl Default for RawWebsite {
    fn default() -> Self {
        RawWebsite {
            address: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
            body_limit: ByteSize(10 << 20),
            stream_threads: 4,
            max_connections: 1000,
            header_timeout: HumanDuration(Duration::from_secs(10)),
            body_timeout: HumanDuration(Duration::from_secs(60)),
            // Longer than nginx's upstream keepalive_timeout (60 s), so nginx closes an idle
            // upstream connection before we do and never reuses one we just closed.
            idle_timeout: HumanDuration(Duration::from_secs(75)),
            write_timeout: HumanDuration(Duration::from_secs(60)),
            pump_threads: None,
            responder_threads: None,
            public_reads: true,
            session_ttl: HumanDuration(Duration::from_secs(86_400)),
            secure_cookies: false,
            lib_dir: String::new(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSchedule {
    /// `None` (no `[schedule.jobs.*]` table at all): the [`default_jobs`].
    jobs: Option<BTreeMap<String, RawScheduleJob>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheduleJob {
    every: Option<HumanDuration>,
    at: Option<String>,
    target: String,
    message: ScheduledMessage,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDebug {
    fault_injection: bool,
}

/// A duration written `250ms`, `10s`, `5m`, `1h` or `1d`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// A size in bytes: an integer, or a string like `512KiB`, `10MiB`, `1GiB`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ByteSize(u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Int(u64),
            Text(String),
        }
        match Either::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a size like 10MiB or a byte count"))?
        {
            Either::Int(n) => Ok(ByteSize(n)),
            Either::Text(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `250ms`, `10s`, `5m`, `1h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 250ms, 10s, 5m, 1h or 1d"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("`{s}` has no unit: use ms, s, m, h or d")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// Parses `512`, `512B`, `64KiB`, `10MiB`, `1GiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 10MiB"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("`{s}` has an unknown unit: use B, KiB, MiB or GiB")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("`{s}` is too large"))
}

// ---- validation: raw → Config ----

/// The largest `[db] archive_after_days`.
const MAX_ARCHIVE_AFTER_DAYS: u32 = 36_500;

struct Validator<'a> {
    text: &'a str,
    file: &'a Path,
    available: &'a [ModuleKind],
}

impl Validator<'_> {
    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        // A missing key is reported at the header of the table it belongs in.
        let mut line = line_of_key(self.text, key);
        let mut path = key;
        while line.is_none() {
            let Some((parent, _)) = path.rsplit_once('.') else {
                break;
            };
            path = parent;
            line = line_of_key(self.text, path);
        }
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            key: Some(key.to_string()),
            message: message.into(),
        }
    }

    fn path(&self, key: &str, value: &str) -> Result<PathBuf, ConfigError> {
        if value.is_empty() {
            return Err(self.error(key, "must not be empty"));
        }
        if value.contains('\0') {
            return Err(self.error(key, "must not contain NUL"));
        }
        let base = self.file.parent().unwrap_or(Path::new("/"));
        Ok(base.join(value))
    }

    /// A state path: the key's value when the file sets it (resolved as any path), else its
    /// default name inside `state_dir`.
    fn state_path(
        &self,
        what: StateFile,
        value: Option<&str>,
        state_dir: &Path,
    ) -> Result<PathBuf, ConfigError> {
        match value {
            Some(value) => self.path(what.key(), value),
            None => Ok(state_dir.join(what.name())),
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        if let Some(id) = &raw.site.id {
            if ids::decode(id).is_none() {
                return Err(self.error(
                    "site.id",
                    format!("`{id}` is not a base-62 id (letters and digits)"),
                ));
            }
        }
        let site = SiteConfig {
            id: raw.site.id,
            state_dir: self.path("site.state_dir", &raw.site.state_dir)?,
        };
        if raw.controller.stop_timeout.0.is_zero() {
            return Err(self.error("controller.stop_timeout", "must be more than 0"));
        }
        let state_dir = &site.state_dir;
        let controller = ControllerConfig {
            pid_file: self.state_path(
                StateFile::PidFile,
                raw.controller.pid_file.as_deref(),
                state_dir,
            )?,
            control_socket: self.state_path(
                StateFile::ControlSocket,
                raw.controller.control_socket.as_deref(),
                state_dir,
            )?,
            stop_timeout: raw.controller.stop_timeout.0,
        };
        let m = &raw.modules;
        let modules = ModulesConfig {
            enabled: [m.db, m.master, m.queue, m.proxy, m.website, m.schedule],
        };
        for kind in ModuleKind::ALL {
            if modules.enabled(kind) && !self.available.contains(&kind) {
                return Err(self.error(
                    &format!("modules.{kind}"),
                    format!("the {kind} module is not part of this build yet"),
                ));
            }
        }
        let logging = LoggingConfig {
            level: raw.logging.level,
            file: match raw.logging.file.as_str() {
                "" => None,
                f => Some(self.path("logging.file", f)?),
            },
        };
        if !(1..=64).contains(&raw.db.readers) {
            return Err(self.error("db.readers", "must be between 1 and 64"));
        }
        let url = match (raw.db.backend, raw.db.url.as_str()) {
            (DbBackend::Mysql, "") => {
                return Err(self.error("db.url", "backend \"mysql\" needs a url"))
            }
            (DbBackend::Mysql, url) if !url.starts_with("mysql://") => {
                return Err(self.error("db.url", "must start with mysql://"))
            }
            (_, "") => None,
            (_, url) => Some(url.to_string()),
        };
        let path = self.state_path(StateFile::Database, raw.db.path.as_deref(), state_dir)?;
        let archive_path = self.state_path(
            StateFile::Archive,
            raw.db.archive_path.as_deref(),
            state_dir,
        )?;
        if archive_path == path {
            return Err(self.error("db.archive_path", "must be another file than db.path"));
        }
        // A century: beyond it the cutoff date would leave what the clock can represent.
        if raw.db.archive_after_days > MAX_ARCHIVE_AFTER_DAYS {
            return Err(self.error(
                "db.archive_after_days",
                format!("must be at most {MAX_ARCHIVE_AFTER_DAYS} (0 disables the archive)"),
            ));
        }
        let db = DbConfig {
            backend: raw.db.backend,
            path,
            url,
            readers: raw.db.readers,
            archive_path,
            archive_after_days: raw.db.archive_after_days,
        };
        let queue = self.queue(raw.queue, state_dir)?;
        let w = raw.website;
        if w.body_limit.0 == 0 {
            return Err(self.error("website.body_limit", "must be more than 0"));
        }
        for (key, gone) in [
            ("website.pump_threads", &w.pump_threads),
            ("website.responder_threads", &w.responder_threads),
        ] {
            if gone.is_some() {
                return Err(self.error(
                    key,
                    "is no longer used (requests are read and answered on the website's own \
                     event loop; see stream_threads and max_connections): remove it",
                ));
            }
        }
        if !(1..=64).contains(&w.stream_threads) {
            return Err(self.error("website.stream_threads", "must be between 1 and 64"));
        }
        if !(1..=100_000).contains(&w.max_connections) {
            return Err(self.error("website.max_connections", "must be between 1 and 100000"));
        }
        for (key, d) in [
            ("website.header_timeout", w.header_timeout.0),
            ("website.body_timeout", w.body_timeout.0),
            ("website.idle_timeout", w.idle_timeout.0),
            ("website.write_timeout", w.write_timeout.0),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                return Err(self.error(key, "must be between 100ms and 1h"));
            }
        }
        let ttl = w.session_ttl.0;
        if ttl < Duration::from_secs(60) || ttl > MAX_SESSION_TTL {
            return Err(self.error("website.session_ttl", "must be between 1m and 90d"));
        }
        let lib_dir = match w.lib_dir.as_str() {
            "" => None,
            dir => Some(self.path("website.lib_dir", dir)?),
        };
        let website = WebsiteConfig {
            address: w.address,
            port: w.port,
            body_limit: w.body_limit.0,
            stream_threads: w.stream_threads,
            max_connections: w.max_connections,
            header_timeout: w.header_timeout.0,
            body_timeout: w.body_timeout.0,
            idle_timeout: w.idle_timeout.0,
            write_timeout: w.write_timeout.0,
            public_reads: w.public_reads,
            session_ttl: ttl,
            secure_cookies: w.secure_cookies,
            lib_dir,
        };
        let schedule = match raw.schedule.jobs {
            Some(jobs) => self.schedule(jobs, &modules)?,
            None => default_jobs(&modules),
        };
        Ok(Config {
            file: self.file.to_path_buf(),
            site,
            controller,
            modules,
            logging,
            db,
            queue,
            website,
            schedule,
            debug: DebugConfig {
                fault_injection: raw.debug.fault_injection,
            },
        })
    }
}

impl Validator<'_> {
    fn schedule(
        &self,
        jobs: BTreeMap<String, RawScheduleJob>,
        modules: &ModulesConfig,
    ) -> Result<ScheduleConfig, ConfigError> {
        let mut schedule = ScheduleConfig::default();
        for (name, job) in jobs {
            let key = |field: &str| format!("schedule.jobs.{name}.{field}");
            let when = match (job.every, job.at) {
                (Some(every), None) => {
                    let d = every.0;
                    if d < Duration::from_secs(1) || d.subsec_millis() != 0 {
                        return Err(self.error(&key("every"), "must be whole seconds, at least 1s"));
                    }
                    ScheduleWhen::Every(d)
                }
                (None, Some(at)) => {
                    let (hour, minute) = parse_clock(&at)
                        .ok_or_else(|| self.error(&key("at"), format!("`{at}` is not HH:MM")))?;
                    ScheduleWhen::Daily { hour, minute }
                }
                _ => {
                    return Err(self.error(
                        &format!("schedule.jobs.{name}"),
                        "give exactly one of `every` (an interval) or `at` (HH:MM daily)",
                    ))
                }
            };
            let target = ModuleKind::from_name(&job.target).ok_or_else(|| {
                self.error(&key("target"), format!("`{}` is not a module", job.target))
            })?;
            if !modules.enabled(target) {
                return Err(self.error(
                    &key("target"),
                    format!("module {target} is not enabled in [modules]"),
                ));
            }
            if !job.message.accepted_by(target) {
                return Err(self.error(
                    &key("message"),
                    format!("module {target} does not handle {:?}", job.message),
                ));
            }
            schedule.jobs.insert(
                name,
                ScheduleJob {
                    when,
                    target,
                    message: job.message,
                },
            );
        }
        Ok(schedule)
    }

    fn queue(&self, raw: RawQueue, state_dir: &Path) -> Result<QueueConfig, ConfigError> {
        if raw.max_resets == 0 {
            return Err(self.error("queue.max_resets", "must be at least 1"));
        }
        if raw.interval.0 < Duration::from_millis(100) {
            return Err(self.error("queue.interval", "must be at least 100ms"));
        }
        if raw.task_buffer == 0 {
            return Err(self.error("queue.task_buffer", "must be at least 1"));
        }
        if raw.command_timeout.0 < Duration::from_millis(100) {
            return Err(self.error("queue.command_timeout", "must be at least 100ms"));
        }
        let server_url = match raw.server_url.trim_end_matches('/') {
            "" => None,
            url if url.starts_with("http://") || url.starts_with("https://") => {
                Some(url.to_string())
            }
            _ => return Err(self.error("queue.server_url", "must start with http:// or https://")),
        };
        let worker_command = match raw.worker_command.as_str() {
            "" => None,
            c => Some(self.path("queue.worker_command", c)?),
        };
        let ca_cert = match raw.ca_cert.as_str() {
            "" => None,
            c => Some(self.path("queue.ca_cert", c)?),
        };
        let mut grids = BTreeMap::new();
        let raw_grids = if raw.grids.is_empty() {
            // The fresh-machine default of SPEC §1: one grid of local processes.
            BTreeMap::from([(
                "local".to_string(),
                RawGrid {
                    kind: Some(GridType::Local),
                    ..RawGrid::default()
                },
            )])
        } else {
            raw.grids
        };
        for (name, g) in raw_grids {
            let key = |field: &str| format!("queue.grids.{name}.{field}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(self.error(
                    &format!("queue.grids.{name}"),
                    "a grid name may hold only letters, digits, '_' and '-'",
                ));
            }
            let kind = g.kind.ok_or_else(|| {
                self.error(
                    &key("type"),
                    "missing: one of local, condor, slurm, pbs, cream",
                )
            })?;
            let on_queue = |field: &str, [min, max, change]: [u32; 3]| {
                if min > max {
                    Err(self.error(&key(field), "[min, max, change] needs min <= max"))
                } else {
                    Ok(OnQueue { min, max, change })
                }
            };
            let tasks_on_queue = on_queue("tasks_on_queue", g.tasks_on_queue)?;
            let pilots_on_queue = on_queue("pilots_on_queue", g.pilots_on_queue)?;
            if g.max_running == 0 {
                return Err(self.error(&key("max_running"), "must be at least 1"));
            }
            let r = g.resources;
            for (field, x) in [("memory", r.memory), ("disk", r.disk), ("time", r.time)] {
                if !(x.is_finite() && x > 0.0) {
                    return Err(self.error(
                        &key(&format!("resources.{field}")),
                        "must be a number above 0 (a 0 would be read as \"no limit\"; give the \
                         real size of the grid's largest slot, or leave it out for the default)",
                    ));
                }
            }
            if r.cpu == 0 {
                return Err(self.error(
                    &key("resources.cpu"),
                    "must be at least 1 (a 0 would be read as \"no limit\"; give the real \
                     number of cores of the grid's largest slot, or leave it out for the \
                     default)",
                ));
            }
            let text = |s: String| (!s.is_empty()).then_some(s);
            let endpoint = text(g.endpoint);
            if kind == GridType::Cream && endpoint.is_none() {
                return Err(self.error(
                    &key("endpoint"),
                    "a cream grid needs its CE endpoint (host:8443/cream-pbs-QUEUE)",
                ));
            }
            for (k, v) in &g.batchopts {
                if k.contains(['\n', '\r']) || v.contains(['\n', '\r']) {
                    return Err(self.error(
                        &key(&format!("batchopts.{k}")),
                        "must be one line: it is written into the submit file",
                    ));
                }
            }
            let bin_dir = match g.bin_dir.as_str() {
                "" => None,
                d => Some(self.path(&key("bin_dir"), d)?),
            };
            grids.insert(
                name.clone(),
                GridConfig {
                    name,
                    kind,
                    tasks_on_queue,
                    submit_pilots: g.submit_pilots,
                    pilots_on_queue,
                    max_running: g.max_running,
                    max_task_waiting_time: g.max_task_waiting_time.0,
                    max_task_queued_time: g.max_task_queued_time.0,
                    max_task_processing_time: g.max_task_processing_time.0,
                    resources: r,
                    batchopts: g.batchopts,
                    queue: text(g.queue),
                    endpoint,
                    bin_dir,
                },
            );
        }
        Ok(QueueConfig {
            max_resets: raw.max_resets,
            interval: raw.interval.0,
            task_buffer: raw.task_buffer,
            submit_dir: self.state_path(
                StateFile::SubmitDir,
                raw.submit_dir.as_deref(),
                state_dir,
            )?,
            server_url,
            worker_command,
            ca_cert,
            command_timeout: raw.command_timeout.0,
            lost_grace: raw.lost_grace.0,
            grids,
        })
    }
}

/// The jobs of a file without any `[schedule.jobs.*]` table (`conf/iceprod.toml` lists them):
/// the site's periodic db work, and a website ping proving the schedule runs. Jobs whose
/// module is off are left out.
fn default_jobs(modules: &ModulesConfig) -> ScheduleConfig {
    let minutes = |m: u64| ScheduleWhen::Every(Duration::from_secs(60 * m));
    let jobs = [
        (
            "heartbeat",
            minutes(1),
            ModuleKind::Website,
            ScheduledMessage::Ping,
        ),
        (
            "completion",
            minutes(60),
            ModuleKind::Db,
            ScheduledMessage::CompleteDatasets,
        ),
        (
            "expired",
            minutes(360),
            ModuleKind::Db,
            ScheduledMessage::RemoveExpired,
        ),
        (
            "graphs",
            minutes(10),
            ModuleKind::Db,
            ScheduledMessage::Graphs,
        ),
        (
            "archive",
            ScheduleWhen::Daily {
                hour: 3,
                minute: 30,
            },
            ModuleKind::Db,
            ScheduledMessage::Archive,
        ),
        (
            "pilot_orphans",
            minutes(30),
            ModuleKind::Db,
            ScheduledMessage::ResetOrphanedPilotTasks,
        ),
        (
            "oversize",
            minutes(2),
            ModuleKind::Db,
            ScheduledMessage::SuspendOversize,
        ),
    ];
    ScheduleConfig {
        jobs: jobs
            .into_iter()
            .filter(|&(_, _, target, _)| modules.enabled(target))
            .map(|(name, when, target, message)| {
                (
                    name.to_string(),
                    ScheduleJob {
                        when,
                        target,
                        message,
                    },
                )
            })
            .collect(),
    }
}

fn parse_clock(s: &str) -> Option<(u32, u32)> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted key defined on `line` (1-based): the nearest table header above it plus the key
/// left of `=`. Good for the plain `key = value` files operators write.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if let Some(header) = l.strip_prefix('[').and_then(|h| h.split(']').next()) {
            table = header.trim_matches(['[', ' ']).to_string();
            if i + 1 == line {
                return Some(table);
            }
        } else if i + 1 == line {
            let key = l.split('=').next()?.trim().trim_matches('"');
            if key.is_empty() {
                return None;
            }
            return Some(if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            });
        }
    }
    None
}

/// The line where dotted `key` is written: `key = …` under its table, or its table header.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    (1..=lines.len()).find(|&n| key_at_line(text, n).as_deref() == Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The modules of this build.
    const ALL: [ModuleKind; 4] = [
        ModuleKind::Db,
        ModuleKind::Queue,
        ModuleKind::Website,
        ModuleKind::Schedule,
    ];

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/iceprod/iceprod.toml"), &ALL)
    }

    #[test]
    fn website_lib_dir_is_relative_to_the_config_file() {
        let c = parse("[website]\nlib_dir = \"lib\"\nsession_ttl = \"2h\"\n").unwrap();
        assert_eq!(
            c.website.lib_dir.as_deref(),
            Some(Path::new("/etc/iceprod/lib"))
        );
        assert_eq!(c.website.session_ttl, Duration::from_secs(7200));
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.website.port, 8080);
        assert_eq!(c.website.address.to_string(), "127.0.0.1");
        assert_eq!(c.website.body_limit, 10 << 20);
        assert_eq!(c.website.session_ttl, Duration::from_secs(86_400));
        assert!(!c.website.secure_cookies);
        assert_eq!(c.website.lib_dir, None);
        assert_eq!(c.site.state_dir, Path::new("/etc/iceprod/var"));
        assert!(c.modules.enabled(ModuleKind::Website));
        assert!(c.modules.enabled(ModuleKind::Db));
        assert_eq!(c.db.path, Path::new("/etc/iceprod/var/iceprod.db"));
        assert_eq!(
            c.db.archive_path,
            Path::new("/etc/iceprod/var/iceprod-archive.db")
        );
        assert_eq!(c.db.archive_after_days, 30);
        assert_eq!(c.queue.max_resets, 10);
        assert!(!c.debug.fault_injection);
    }

    #[test]
    fn state_dir_moves_every_default_state_path() {
        let c = parse("[site]\nstate_dir = \"/var/lib/iceprod\"\n").unwrap();
        for what in StateFile::ALL {
            assert_eq!(
                c.state_path(what),
                Path::new("/var/lib/iceprod").join(what.name()),
                "{what:?}"
            );
        }
        assert_eq!(c.db.path, Path::new("/var/lib/iceprod/iceprod.db"));
        assert_eq!(c.queue.submit_dir, Path::new("/var/lib/iceprod/submit"));
        // A relative state_dir resolves against the config's folder and takes them along.
        let c = parse("[site]\nstate_dir = \"state\"\n").unwrap();
        for what in StateFile::ALL {
            assert_eq!(
                c.state_path(what),
                Path::new("/etc/iceprod/state").join(what.name()),
                "{what:?}"
            );
        }
    }

    #[test]
    fn explicit_state_paths_win_and_the_unset_ones_follow_state_dir() {
        let c = parse(
            "[site]\nstate_dir = \"/var/lib/iceprod\"\n\
             [controller]\npid_file = \"/run/iceprod/iceprod.pid\"\n\
             [logging]\nfile = \"log/iceprod.log\"\n\
             [db]\narchive_path = \"old/archive.db\"\n\
             [queue]\nsubmit_dir = \"/scratch/iceprod\"\n",
        )
        .unwrap();
        assert_eq!(c.controller.pid_file, Path::new("/run/iceprod/iceprod.pid"));
        assert_eq!(c.queue.submit_dir, Path::new("/scratch/iceprod"));
        // An explicit relative path still resolves against the config file's folder.
        assert_eq!(c.db.archive_path, Path::new("/etc/iceprod/old/archive.db"));
        assert_eq!(
            c.state_path(StateFile::DaemonLog),
            Path::new("/etc/iceprod/log/iceprod.log")
        );
        assert_eq!(
            c.controller.control_socket,
            Path::new("/var/lib/iceprod/iceprod.sock")
        );
        assert_eq!(c.db.path, Path::new("/var/lib/iceprod/iceprod.db"));
    }

    #[test]
    fn a_one_line_file_changes_only_what_it_names() {
        let c = parse("site.state_dir = \"/var/lib/iceprod\"\n").unwrap();
        assert_eq!(c.site.state_dir, Path::new("/var/lib/iceprod"));
        assert_eq!(
            c.controller.pid_file,
            Path::new("/var/lib/iceprod/iceprod.pid")
        );
        let defaults = parse("").unwrap();
        assert_eq!(c.website, defaults.website);
        assert_eq!(c.modules, defaults.modules);
        assert_eq!(c.schedule, defaults.schedule);
        let c = parse("website.port = 9000\n").unwrap();
        assert_eq!(c.changed_sections(&defaults), vec![Section::Website]);
        assert_eq!(c.website.port, 9000);
    }

    #[test]
    fn a_file_without_schedule_jobs_gets_the_default_jobs_of_its_modules() {
        let c = parse("").unwrap();
        let names: Vec<&str> = c.schedule.jobs.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "archive",
                "completion",
                "expired",
                "graphs",
                "heartbeat",
                "oversize",
                "pilot_orphans"
            ]
        );
        assert_eq!(
            c.schedule.jobs["completion"],
            ScheduleJob {
                when: ScheduleWhen::Every(Duration::from_secs(3600)),
                target: ModuleKind::Db,
                message: ScheduledMessage::CompleteDatasets,
            }
        );
        let without_website = parse("[modules]\nwebsite = false\n").unwrap();
        assert!(!without_website.schedule.jobs.contains_key("heartbeat"));
        assert_eq!(without_website.schedule.jobs.len(), 6);
        // Any job table replaces them all; an empty `jobs` asks for none.
        let own = parse(
            "[schedule.jobs.tick]\nevery = \"1s\"\ntarget = \"website\"\nmessage = \"ping\"\n",
        )
        .unwrap();
        assert_eq!(own.schedule.jobs.len(), 1);
        assert!(parse("[schedule]\njobs = {}\n")
            .unwrap()
            .schedule
            .jobs
            .is_empty());
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = parse("[website]\nport = 9000\nprot = 1\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key.as_deref(), Some("website.prot"));
        assert!(e.message.contains("prot"), "{e}");
    }

    #[test]
    fn wrong_type_is_named_with_its_line() {
        let e = parse("[website]\n\nport = \"eighty\"\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key.as_deref(), Some("website.port"));
    }

    #[test]
    fn broken_toml_reports_the_line() {
        let e = parse("[website\nport = 1\n").unwrap_err();
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn invalid_values_are_refused_with_the_key() {
        for (text, key) in [
            (
                "[controller]\nstop_timeout = \"0s\"\n",
                "controller.stop_timeout",
            ),
            (
                "[controller]\nstop_timeout = \"ten\"\n",
                "controller.stop_timeout",
            ),
            ("[website]\npump_threads = 2\n", "website.pump_threads"),
            ("[website]\nstream_threads = 0\n", "website.stream_threads"),
            (
                "[website]\nmax_connections = 0\n",
                "website.max_connections",
            ),
            (
                "[website]\nidle_timeout = \"1ms\"\n",
                "website.idle_timeout",
            ),
            (
                "[website]\nheader_timeout = \"2h\"\n",
                "website.header_timeout",
            ),
            ("[website]\nbody_limit = \"1TB\"\n", "website.body_limit"),
            ("[website]\naddress = \"localhost:80\"\n", "website.address"),
            ("[website]\nsession_ttl = \"10s\"\n", "website.session_ttl"),
            ("[website]\nsession_ttl = \"400d\"\n", "website.session_ttl"),
            ("[website]\nlib_dir = \"a\\u0000b\"\n", "website.lib_dir"),
            ("[site]\nid = \"not-base62!\"\n", "site.id"),
            ("[modules]\nmaster = true\n", "modules.master"),
            ("[db]\nreaders = 0\n", "db.readers"),
            ("[db]\nbackend = \"mysql\"\n", "db.url"),
            ("[db]\nbackend = \"mysql\"\nurl = \"http://x\"\n", "db.url"),
            ("[db]\nbackend = \"oracle\"\n", "db.backend"),
            ("[db]\narchive_path = \"\"\n", "db.archive_path"),
            (
                "[db]\npath = \"x.db\"\narchive_path = \"x.db\"\n",
                "db.archive_path",
            ),
            ("[db]\narchive_after_days = -1\n", "db.archive_after_days"),
            (
                "[db]\narchive_after_days = 36501\n",
                "db.archive_after_days",
            ),
            (
                "[db]\narchive_after_days = \"30d\"\n",
                "db.archive_after_days",
            ),
            ("[queue]\nmax_resets = 0\n", "queue.max_resets"),
            ("[logging]\nlevel = \"loud\"\n", "logging.level"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
            assert!(e.line.is_some(), "{text}: {e}");
        }
    }

    #[test]
    fn the_archive_keys_resolve_like_path_and_zero_disables() {
        let c = parse("[db]\narchive_path = \"old/archive.db\"\narchive_after_days = 0\n").unwrap();
        assert_eq!(c.db.archive_path, Path::new("/etc/iceprod/old/archive.db"));
        assert_eq!(c.db.archive_after_days, 0);
        let c = parse("[db]\narchive_path = \"/srv/a.db\"\narchive_after_days = 365\n").unwrap();
        assert_eq!(c.db.archive_path, Path::new("/srv/a.db"));
        assert_eq!(c.db.archive_after_days, 365);
        let job = parse(
            "[schedule.jobs.archive]\nat = \"04:00\"\ntarget = \"db\"\nmessage = \"archive\"\n",
        )
        .unwrap();
        assert_eq!(
            job.schedule.jobs["archive"].message,
            ScheduledMessage::Archive
        );
        let e = parse(
            "[schedule.jobs.a]\nat = \"04:00\"\ntarget = \"website\"\nmessage = \"archive\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("schedule.jobs.a.message"));
    }

    #[test]
    fn schedule_jobs_are_validated() {
        let ok = parse(
            "[schedule.jobs.tick]\nevery = \"2s\"\ntarget = \"website\"\nmessage = \"ping\"\n\
             [schedule.jobs.nightly]\nat = \"03:30\"\ntarget = \"schedule\"\nmessage = \"ping\"\n",
        )
        .unwrap();
        assert_eq!(
            ok.schedule.jobs["tick"].when,
            ScheduleWhen::Every(Duration::from_secs(2))
        );
        assert_eq!(
            ok.schedule.jobs["nightly"].when,
            ScheduleWhen::Daily {
                hour: 3,
                minute: 30
            }
        );
        for (text, key) in [
            (
                "[schedule.jobs.a]\nevery = \"500ms\"\ntarget = \"website\"\nmessage = \"ping\"\n",
                "schedule.jobs.a.every",
            ),
            (
                "[schedule.jobs.a]\nat = \"25:00\"\ntarget = \"website\"\nmessage = \"ping\"\n",
                "schedule.jobs.a.at",
            ),
            (
                "[schedule.jobs.a]\ntarget = \"website\"\nmessage = \"ping\"\n",
                "schedule.jobs.a",
            ),
            (
                "[schedule.jobs.a]\nevery = \"1s\"\ntarget = \"master\"\nmessage = \"ping\"\n",
                "schedule.jobs.a.target",
            ),
            (
                "[schedule.jobs.a]\nevery = \"1s\"\ntarget = \"nowhere\"\nmessage = \"ping\"\n",
                "schedule.jobs.a.target",
            ),
            (
                "[schedule.jobs.a]\nevery = \"1s\"\ntarget = \"website\"\nmessage = \"rm -rf\"\n",
                "schedule.jobs.a.message",
            ),
            (
                "[schedule.jobs.a]\nevery = \"1h\"\ntarget = \"website\"\nmessage = \"complete_datasets\"\n",
                "schedule.jobs.a.message",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
        }
    }

    #[test]
    fn only_changed_sections_are_reported() {
        let a = parse("[website]\nport = 9000\n").unwrap();
        let b = parse("[website]\nport = 9000\n[schedule.jobs.t]\nevery = \"1s\"\ntarget = \"website\"\nmessage = \"ping\"\n").unwrap();
        assert_eq!(a.changed_sections(&b), vec![Section::Schedule]);
        let c = parse("[website]\nport = 9001\n").unwrap();
        assert_eq!(a.changed_sections(&c), vec![Section::Website]);
        assert!(a.changed_sections(&a.clone()).is_empty());
    }

    #[test]
    fn on_queue_keeps_min_waiting_within_max_and_change() {
        let q = OnQueue {
            min: 50,
            max: 200,
            change: 20,
        };
        assert_eq!(q.to_submit(0, 0), 20);
        assert_eq!(q.to_submit(45, 10), 5);
        assert_eq!(q.to_submit(50, 0), 0);
        assert_eq!(q.to_submit(0, 195), 5);
        assert_eq!(q.to_submit(80, 300), 0);
    }

    #[test]
    fn grids_default_to_one_local_grid_and_are_validated() {
        let c = parse("").unwrap();
        let local = &c.queue.grids["local"];
        assert_eq!(local.kind, GridType::Local);
        assert_eq!(QueueConfig::gridspec("abc", &local.name), "abc.local");
        let c = parse("[queue.grids.big]\ntype = \"slurm\"\nqueue = \"long\"\n").unwrap();
        assert!(!c.queue.grids.contains_key("local"));
        assert_eq!(c.queue.grids["big"].queue.as_deref(), Some("long"));
        for (text, key) in [
            ("[queue.grids.a]\nmax_running = 2\n", "queue.grids.a.type"),
            ("[queue.grids.a]\ntype = \"lsf\"\n", "queue.grids.a.type"),
            (
                "[queue.grids.a]\ntype = \"cream\"\n",
                "queue.grids.a.endpoint",
            ),
            (
                "[queue.grids.a]\ntype = \"local\"\ntasks_on_queue = [5, 1, 1]\n",
                "queue.grids.a.tasks_on_queue",
            ),
            (
                "[queue.grids.a]\ntype = \"local\"\nresources = { memory = -1.0 }\n",
                "queue.grids.a.resources.memory",
            ),
            (
                "[queue.grids.a]\ntype = \"local\"\nresources = { disk = 0.0 }\n",
                "queue.grids.a.resources.disk",
            ),
            (
                "[queue.grids.a]\ntype = \"local\"\nresources = { cpu = 0 }\n",
                "queue.grids.a.resources.cpu",
            ),
            (
                "[queue.grids.a]\ntype = \"slurm\"\nbatchopts = { x = \"1\\n#SBATCH --uid=0\" }\n",
                "queue.grids.a.batchopts.x",
            ),
            ("[queue]\nserver_url = \"ftp://x\"\n", "queue.server_url"),
            ("[queue]\ninterval = \"10ms\"\n", "queue.interval"),
            (
                "[queue.grids.\"a b\"]\ntype = \"local\"\n",
                "queue.grids.a b",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
        }
    }

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("7"), Ok(7));
        assert!(parse_size("18446744073709551615GiB").is_err());
    }
}
