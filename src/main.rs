//! `iceprod`: the one binary. `iceprod server` runs a site (the controller on the main thread,
//! one thread per module); `iceprod ctl` talks to a running server over its control socket;
//! `iceprod user` manages the website's accounts on the database itself.

mod client;
mod control;
mod control_locate;
mod controller;
mod daemon;
mod logging;
mod site_id;
mod task;
mod users_cli;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use iceprod_runtime::status::ServerStatus;
use iceprod_runtime::{module_entry, Config, Fault, ModuleKind};

use control::{CtlRequest, CtlResponse};
use controller::{Controller, Launchers};

/// Where the config is looked for, in order, without `--config` or `$ICEPROD_CONFIG`: the
/// system's place (the systemd unit's), then a source checkout's (relative to the current
/// folder).
const CONFIG_PLACES: [&str; 2] = ["/etc/iceprod/iceprod.toml", "conf/iceprod.toml"];

#[derive(Parser)]
#[command(
    name = "iceprod",
    version,
    about = "A grid production server: datasets in, tasks run on batch systems, progress out.",
    after_help = "Examples:
  iceprod server --foreground                 run a site with /etc/iceprod/iceprod.toml,
                                              else conf/iceprod.toml
  iceprod server --config /etc/iceprod/iceprod.toml
  iceprod ctl status                          modules, restarts, last reload
  iceprod ctl reload                          re-read the config (same as kill -HUP)
  iceprod ctl restart website
  iceprod ctl inject panic schedule           needs [debug] fault_injection = true
  iceprod submit examples/two-tasks.json --njobs 10
  iceprod user add alice                      prints a generated password once
  iceprod user passwd alice --password-stdin
  iceprod user list
  iceprod task --url URL --passkey KEY --cfgfile task.cfg   run one task on a worker node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Server {
        /// Config file (default: $ICEPROD_CONFIG, else /etc/iceprod/iceprod.toml, else
        /// conf/iceprod.toml, the first that exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Stay in the foreground and log to stderr (unless [logging] file is set); for
        /// systemd and terminals. Without it the server forks into the background.
        #[arg(long)]
        foreground: bool,
    },
    /// Submit a dataset config (JSON, SPEC §3) to a running server.
    Submit {
        /// The dataset config file.
        file: PathBuf,
        /// Number of jobs.
        #[arg(long, default_value_t = 1)]
        njobs: u32,
        /// Server base URL (default: the [website] address and port of the config).
        #[arg(long)]
        url: Option<String>,
        /// Config file, for the default URL and passkey file (default as for `server`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A user passkey (default: $ICEPROD_PASSKEY, else STATE_DIR/admin.passkey).
        #[arg(long)]
        passkey: Option<String>,
        /// Description shown on the website.
        #[arg(long, default_value = "")]
        description: String,
        /// Grid to run on (`SITEID.NAME`); empty for any.
        #[arg(long, default_value = "")]
        gridspec: String,
        /// Debug dataset: a failing task is suspended instead of retried.
        #[arg(long)]
        debug: bool,
    },
    /// Run a task (or, with --pilot, many) on a worker node: the worker side of SPEC §5.2.
    Task(task::TaskArgs),
    /// Manage the website's users (works with the server running or stopped).
    User {
        /// Config file, for the database (default as for `server`).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: users_cli::UserAction,
    },
    /// Control a running server through its control socket.
    Ctl {
        /// Config file, to find the control socket (default as for `server`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The control socket, instead of reading it from the config.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the server's answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: CtlAction,
    },
}

#[derive(Subcommand)]
enum CtlAction {
    /// Show the server, its last reload and every module.
    Status,
    /// Re-read and validate the config; apply only what changed. Prints each module's
    /// answer; exits non-zero when the reload was refused (then nothing changed).
    Reload,
    /// Open the log file again, after logrotate moved it away (same as kill -USR1).
    ReopenLogs,
    /// Start a module that was stopped or killed.
    Start { module: String },
    /// Stop a module gracefully; it stays stopped until started.
    Stop { module: String },
    /// Stop a module gracefully and start it again.
    Restart { module: String },
    /// Abandon a module's thread at once (its mailbox is kept); start it again with `start`.
    Kill { module: String },
    /// Check that a module serves its mailbox (waits while it restarts).
    Ping { module: String },
    /// Inject a fault (needs [debug] fault_injection = true).
    Inject {
        /// `panic` (in the running module), `panic-init` (restart, panic in init N times) or
        /// `panic-worker` (one of the module's worker threads panics at its next job).
        fault: String,
        module: String,
        /// With panic-init: how many starts panic.
        #[arg(long, default_value_t = 1)]
        times: u32,
    },
}

/// The modules this build has, and how to start each.
fn launchers() -> Launchers {
    vec![
        module_entry::<iceprod_db::Db>(),
        module_entry::<iceprod_queue::Queue>(),
        module_entry::<iceprod_website::Website>(),
        module_entry::<iceprod_schedule::Schedule>(),
    ]
}

fn available() -> Vec<ModuleKind> {
    launchers().into_iter().map(|e| e.kind).collect()
}

/// The config file: `--config`, else `$ICEPROD_CONFIG`, else the first of [`CONFIG_PLACES`]
/// that exists.
fn config_path(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    find_config(
        given,
        std::env::var_os("ICEPROD_CONFIG"),
        &CONFIG_PLACES,
        Path::exists,
    )
}

/// [`config_path`] without the process's environment and files; when nothing is found, the
/// error names every place tried.
fn find_config(
    given: Option<PathBuf>,
    env: Option<OsString>,
    places: &[&str],
    exists: impl Fn(&Path) -> bool,
) -> anyhow::Result<PathBuf> {
    if let Some(file) = given {
        return Ok(file);
    }
    // A variable that is set names the file, found or not: Config::load then says why it
    // cannot be read, rather than another file being used quietly.
    if let Some(file) = env.filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(file));
    }
    if let Some(found) = places.iter().map(Path::new).find(|p| exists(p)) {
        return Ok(found.to_path_buf());
    }
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|_| "?".into());
    let tried: Vec<String> = places
        .iter()
        .map(|p| {
            if Path::new(p).is_relative() {
                format!("{p} (in {cwd})")
            } else {
                p.to_string()
            }
        })
        .collect();
    anyhow::bail!(
        "no config file found; tried $ICEPROD_CONFIG (not set), {}; pass --config FILE \
         (an empty file is a valid config: every key has a default)",
        tried.join(", ")
    )
}

fn main() -> ExitCode {
    // Like any shell tool, end quietly when the reader of our output goes away
    // (`iceprod ctl status | head -1`, `iceprod --help | head`) instead of panicking in
    // println!. The server and the worker ignore SIGPIPE again below: their sockets report
    // EPIPE as an error to handle.
    // SAFETY: setting a signal's disposition, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if matches!(cli.command, Command::Server { .. } | Command::Task(_)) {
        // SAFETY: as above; still no thread.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    }
    let result = match cli.command {
        Command::Server { config, foreground } => {
            config_path(config).and_then(|file| server(&file, foreground))
        }
        Command::Task(args) => task::main(args),
        Command::User { config, action } => config_path(config)
            .and_then(|file| users_cli::load_config(&file, &available()))
            .and_then(|config| users_cli::main(config, action)),
        Command::Ctl {
            config,
            socket,
            json,
            action,
        } => ctl(config, socket, json, action),
        Command::Submit {
            file,
            njobs,
            url,
            config,
            passkey,
            description,
            gridspec,
            debug,
        } => submit(
            &file,
            SubmitOptions {
                njobs,
                url,
                config,
                passkey,
                description,
                gridspec,
                debug,
            },
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("iceprod: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn server(config_file: &Path, foreground: bool) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(config_file, &available())?;
    if !foreground {
        logging::default_for_daemon(&mut config);
    }
    logging::configure(&config.logging).map_err(anyhow::Error::msg)?;
    logging::log_panics();
    let ready = if foreground {
        None
    } else {
        Some(daemon::daemonize(config.logging.file.as_deref())?)
    };
    let outcome = start_server(config, !foreground);
    let (mut controller, _pid) = match outcome {
        Ok(started) => {
            if let Some(ready) = ready {
                ready.report(&Ok(()));
            }
            started
        }
        Err(e) => {
            log::error!("cannot start: {e:#}");
            if let Some(ready) = ready {
                ready.report(&Err(format!("{e:#}")));
            }
            return Err(e);
        }
    };
    let result = controller.run();
    controller.close();
    result.map(|()| ExitCode::SUCCESS)
}

fn start_server(mut config: Config, daemon: bool) -> anyhow::Result<(Controller, daemon::PidFile)> {
    let pid = daemon::PidFile::create(&config.controller.pid_file)?;
    // The db module takes the database's lock; taking it here first (the db module then
    // shares it) means a server refused for a database in use has not touched that database:
    // reading the site id opens it, and a newer build would migrate it under the running one.
    let db_lock = if config.modules.enabled(ModuleKind::Db) {
        Some(iceprod_db::DbLock::acquire(&config.db)?)
    } else {
        None
    };
    site_id::resolve(&mut config)?;
    daemon::raise_fd_limit(config.website.max_connections);
    log::info!(
        "iceprod {} starting: config {}, site {}",
        env!("CARGO_PKG_VERSION"),
        config.file.display(),
        config.site.id.as_deref().unwrap_or("?")
    );
    let mut controller = Controller::new(config, launchers(), daemon)?;
    if let Err(e) = controller.start_modules() {
        controller.close();
        return Err(e);
    }
    // The db module holds the lock from here on.
    drop(db_lock);
    log::info!("all modules started");
    Ok((controller, pid))
}

fn ctl(
    config: Option<PathBuf>,
    socket: Option<PathBuf>,
    json: bool,
    action: CtlAction,
) -> anyhow::Result<ExitCode> {
    let socket = match socket {
        Some(s) => s,
        None => {
            let file = config_path(config)
                .with_context(|| "cannot find the control socket; pass --socket")?;
            let found = control_locate::control_socket(&file, &available());
            if let Some(how) = found.how {
                eprintln!(
                    "iceprod ctl: {how}: {} (pass --socket to choose)",
                    found.socket.display()
                );
            }
            found.socket
        }
    };
    let request = match action {
        CtlAction::Status => CtlRequest::Status {},
        CtlAction::Reload => CtlRequest::Reload {},
        CtlAction::ReopenLogs => CtlRequest::ReopenLogs {},
        CtlAction::Start { module } => CtlRequest::Start { module },
        CtlAction::Stop { module } => CtlRequest::Stop { module },
        CtlAction::Restart { module } => CtlRequest::Restart { module },
        CtlAction::Kill { module } => CtlRequest::Kill { module },
        CtlAction::Ping { module } => CtlRequest::Ping { module },
        CtlAction::Inject {
            fault,
            module,
            times,
        } => CtlRequest::Inject {
            module,
            fault: match fault.as_str() {
                "panic" => Fault::Panic,
                "panic-init" => Fault::PanicInit(times),
                "panic-worker" => Fault::PanicWorker,
                other => {
                    anyhow::bail!("unknown fault `{other}`: use panic, panic-init or panic-worker")
                }
            },
        },
    };
    let is_status = request == CtlRequest::Status {};
    let is_reload = request == CtlRequest::Reload {};
    // A server that closes the socket while we write must give an error, not kill us
    // silently with SIGPIPE (the default again once the answer is in, for our output).
    // SAFETY: signal(2) on a single-threaded process.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let answer = control::request(&socket, &request, Duration::from_secs(60));
    // SAFETY: as above.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let answer = answer?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else if let (true, Some(result)) = (is_status && answer.ok, &answer.result) {
        let status: ServerStatus = serde_json::from_value(result.clone())
            .context("the server's status is not what this version of ctl reads")?;
        print_status(&status);
    } else {
        print_answer(&answer, is_reload);
    }
    Ok(if answer.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

struct SubmitOptions {
    njobs: u32,
    url: Option<String>,
    /// `--config`; looked up only when the URL or passkey must be read from a config.
    config: Option<PathBuf>,
    passkey: Option<String>,
    description: String,
    gridspec: String,
    debug: bool,
}

fn submit(file: &Path, opts: SubmitOptions) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    // Checked here first, so mistakes are listed with their paths before anything is sent.
    if let Err(errors) = iceprod_runtime::dataset::parse_and_validate(&text) {
        eprintln!("{} is not a valid dataset config:", file.display());
        for e in errors.iter() {
            eprintln!("  {e}");
        }
        return Ok(ExitCode::from(2));
    }
    let server_config = || -> anyhow::Result<Config> {
        Ok(Config::load(
            &config_path(opts.config.clone())?,
            &available(),
        )?)
    };
    let url = match opts.url {
        Some(url) => url,
        None => {
            let c = server_config().context("cannot find the server's address; pass --url")?;
            format!("http://{}:{}", c.website.address, c.website.port)
        }
    };
    let passkey = match opts
        .passkey
        .or_else(|| std::env::var("ICEPROD_PASSKEY").ok())
    {
        Some(key) => key,
        None => {
            let c = server_config().context("no passkey; pass --passkey")?;
            let path = c.site.state_dir.join(iceprod_db::users::ADMIN_PASSKEY_FILE);
            std::fs::read_to_string(&path)
                .with_context(|| {
                    format!("no passkey; pass --passkey or create {}", path.display())
                })?
                .trim()
                .to_string()
        }
    };
    let rpc = client::RpcClient::new(&url, Duration::from_secs(60));
    let config: serde_json::Value = serde_json::from_str(&text)?;
    let dataset_id = rpc.call(
        "submit_dataset",
        serde_json::json!({
            "passkey": passkey,
            "config": config,
            "njobs": opts.njobs,
            "description": opts.description,
            "gridspec": opts.gridspec,
            "debug": opts.debug,
        }),
    )?;
    println!("{}", dataset_id.as_str().unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

/// Prints the server's answer. A reload's answer is one `; `-separated line (as `ctl status`
/// shows it); with `per_line` each part gets its own line.
fn print_answer(answer: &CtlResponse, per_line: bool) {
    let lines = |s: &str| {
        if per_line {
            s.replace("; ", "\n  ")
        } else {
            s.to_string()
        }
    };
    match (&answer.result, &answer.error) {
        (_, Some(e)) => eprintln!("error: {}", lines(e)),
        (Some(serde_json::Value::String(s)), None) => println!("{}", lines(s)),
        (Some(v), None) => println!("{v}"),
        (None, None) => println!("ok"),
    }
}

fn print_status(s: &ServerStatus) {
    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!(
        "iceprod {} pid {} up {} s, site {}, config {}",
        s.version,
        s.pid,
        s.uptime_s,
        text(&s.site_id),
        s.config.display()
    );
    match &s.last_reload {
        Some(r) => println!(
            "reloads: {}; last at {}: {} {}",
            s.reloads,
            r.at,
            if r.ok { "ok," } else { "REFUSED:" },
            r.message
        ),
        None => println!("reloads: 0"),
    }
    println!(
        "{:<9} {:<8} {:<11} {:>4} {:>8} {:>7}  last error / last reload",
        "module", "enabled", "state", "gen", "restarts", "mailbox"
    );
    for m in &s.modules {
        println!(
            "{:<9} {:<8} {:<11} {:>4} {:>8} {:>7}  {} / {}",
            m.name.name(),
            m.enabled,
            m.state,
            m.generation,
            m.restarts,
            m.mailbox_depth,
            text(&m.last_error),
            text(&m.last_reload)
        );
    }
    if !s.grids.is_empty() {
        println!(
            "{:<12} {:<7} {:>7} {:>10} {:>9} {:>6}  last error",
            "grid", "type", "queued", "processing", "submitted", "cycles"
        );
    }
    for g in &s.grids {
        let r = &g.report;
        println!(
            "{:<12} {:<7} {:>7} {:>10} {:>9} {:>6}  {}",
            g.name,
            r.kind,
            r.queued,
            r.processing,
            r.submitted,
            r.cycles,
            match &r.last_error {
                None => "-".to_string(),
                Some(e) => format!("{e} (at {})", text(&r.last_error_at)),
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLACES: [&str; 2] = CONFIG_PLACES;

    #[test]
    fn config_lookup_takes_the_option_then_the_variable_then_the_first_place_found() {
        let only = |found: &'static str| move |p: &Path| p == Path::new(found);
        let given = Some(PathBuf::from("mine.toml"));
        let env = Some(OsString::from("/srv/env.toml"));
        let pick = |given: Option<PathBuf>, env: Option<OsString>, found| {
            find_config(given, env, &PLACES, only(found)).expect("a config")
        };
        assert_eq!(
            pick(given.clone(), env.clone(), PLACES[0]),
            Path::new("mine.toml")
        );
        assert_eq!(
            pick(None, env.clone(), PLACES[0]),
            Path::new("/srv/env.toml")
        );
        assert_eq!(
            pick(None, Some(OsString::new()), PLACES[1]),
            Path::new("conf/iceprod.toml")
        );
        assert_eq!(pick(None, None, PLACES[0]), Path::new(PLACES[0]));
        assert_eq!(
            find_config(None, None, &PLACES, |_| true).expect("a config"),
            Path::new(PLACES[0]),
            "the system's place comes before a checkout's"
        );
    }

    #[test]
    fn config_lookup_without_any_file_names_every_place_tried() {
        let e = find_config(None, None, &PLACES, |_| false)
            .expect_err("nothing to find")
            .to_string();
        for place in ["$ICEPROD_CONFIG", PLACES[0], PLACES[1], "--config"] {
            assert!(e.contains(place), "{place} missing from: {e}");
        }
    }
}
