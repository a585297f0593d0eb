//! `iceprod`: the one binary. `iceprod server` runs a site (the controller on the main thread,
//! one thread per module); `iceprod ctl` talks to a running server over its control socket;
//! `iceprod user` manages the website's accounts on the database itself.

mod client;
mod control;
mod controller;
mod daemon;
mod logging;
mod site_id;
mod task;
mod users_cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use iceprod_runtime::{spawn_module, Config, Fault, ModuleKind};

use control::{CtlRequest, CtlResponse};
use controller::{Controller, Launchers};

const DEFAULT_CONFIG: &str = "conf/iceprod.toml";

#[derive(Parser)]
#[command(
    name = "iceprod",
    version,
    about = "A grid production server: datasets in, tasks run on batch systems, progress out.",
    after_help = "Examples:
  iceprod server --foreground                 run a site with conf/iceprod.toml
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
        /// Config file (default: conf/iceprod.toml, or $ICEPROD_CONFIG).
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
    /// Re-read and validate the config; apply only what changed.
    Reload,
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
        /// `panic` (in the running module) or `panic-init` (restart, panic in init N times).
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
        (ModuleKind::Db, spawn_module::<iceprod_db::Db>),
        (ModuleKind::Queue, spawn_module::<iceprod_queue::Queue>),
        (
            ModuleKind::Website,
            spawn_module::<iceprod_website::Website>,
        ),
        (
            ModuleKind::Schedule,
            spawn_module::<iceprod_schedule::Schedule>,
        ),
    ]
}

fn available() -> Vec<ModuleKind> {
    launchers().into_iter().map(|(k, _)| k).collect()
}

fn config_path(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("ICEPROD_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server { config, foreground } => server(&config_path(config), foreground),
        Command::Task(args) => task::main(args),
        Command::User { config, action } => {
            users_cli::load_config(&config_path(config), &available())
                .and_then(|config| users_cli::main(config, action))
        }
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
                config: config_path(config),
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
    if !foreground && config.logging.file.is_none() {
        // A daemon has no terminal: log next to its other files.
        config.logging.file = Some(config.site.state_dir.join("iceprod.log"));
    }
    logging::configure(&config.logging).map_err(anyhow::Error::msg)?;
    logging::log_panics();
    let ready = if foreground {
        None
    } else {
        Some(daemon::daemonize(config.logging.file.as_deref())?)
    };
    let outcome = start_server(config);
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

fn start_server(mut config: Config) -> anyhow::Result<(Controller, daemon::PidFile)> {
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
    log::info!(
        "iceprod {} starting: config {}, site {}",
        env!("CARGO_PKG_VERSION"),
        config.file.display(),
        config.site.id.as_deref().unwrap_or("?")
    );
    let mut controller = Controller::new(config, launchers())?;
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
            let file = config_path(config);
            Config::load(&file, &available())
                .with_context(|| "cannot find the control socket; pass --socket")?
                .controller
                .control_socket
        }
    };
    let request = match action {
        CtlAction::Status => CtlRequest::Status {},
        CtlAction::Reload => CtlRequest::Reload {},
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
                other => anyhow::bail!("unknown fault `{other}`: use panic or panic-init"),
            },
        },
    };
    let is_status = request == CtlRequest::Status {};
    let answer = control::request(&socket, &request, Duration::from_secs(60))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else if let (true, Some(result)) = (is_status && answer.ok, &answer.result) {
        print_status(result);
    } else {
        print_answer(&answer);
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
    config: PathBuf,
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
    let server_config = || Config::load(&opts.config, &available());
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

fn print_answer(answer: &CtlResponse) {
    match (&answer.result, &answer.error) {
        (_, Some(e)) => eprintln!("error: {e}"),
        (Some(serde_json::Value::String(s)), None) => println!("{s}"),
        (Some(v), None) => println!("{v}"),
        (None, None) => println!("ok"),
    }
}

fn print_status(s: &serde_json::Value) {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    println!(
        "iceprod {} pid {} up {} s, site {}, config {}",
        text(&s["version"]),
        s["pid"],
        s["uptime_s"],
        text(&s["site_id"]),
        text(&s["config"])
    );
    match s["last_reload"].as_object() {
        Some(r) => println!(
            "reloads: {}; last at {}: {} {}",
            s["reloads"],
            text(&r["at"]),
            if r["ok"].as_bool() == Some(true) {
                "ok,"
            } else {
                "REFUSED:"
            },
            text(&r["message"])
        ),
        None => println!("reloads: 0"),
    }
    println!(
        "{:<9} {:<8} {:<11} {:>4} {:>8} {:>7}  last error / last reload",
        "module", "enabled", "state", "gen", "restarts", "mailbox"
    );
    for m in s["modules"].as_array().into_iter().flatten() {
        println!(
            "{:<9} {:<8} {:<11} {:>4} {:>8} {:>7}  {} / {}",
            text(&m["name"]),
            text(&m["enabled"]),
            text(&m["state"]),
            text(&m["generation"]),
            text(&m["restarts"]),
            text(&m["mailbox_depth"]),
            text(&m["last_error"]),
            text(&m["last_reload"])
        );
    }
    let grids = s["grids"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !grids.is_empty() {
        println!(
            "{:<12} {:<7} {:>7} {:>10} {:>9} {:>6}  last error",
            "grid", "type", "queued", "processing", "submitted", "cycles"
        );
    }
    for g in grids {
        println!(
            "{:<12} {:<7} {:>7} {:>10} {:>9} {:>6}  {}",
            text(&g["name"]),
            text(&g["type"]),
            text(&g["queued"]),
            text(&g["processing"]),
            text(&g["submitted"]),
            text(&g["cycles"]),
            match &g["last_error"] {
                serde_json::Value::Null => "-".to_string(),
                e => format!("{} (at {})", text(e), text(&g["last_error_at"])),
            }
        );
    }
}
