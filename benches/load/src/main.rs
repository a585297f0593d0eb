//! `iceprod-load`: the HTTP load harness for iceprod. Runs the real `iceprod server` binary on
//! 127.0.0.1 and prints markdown tables on stdout (progress on stderr).
//!
//! - `wrk`: echo throughput with wrk, against the hello-world baseline `hello-http` measured in
//!   the same run ([`wrk`]);
//! - `startup`: time from spawn to the first answered echo, and idle RSS ([`startup`]);
//! - `reload`: paced keep-alive load while the config is rewritten and SIGHUP sent every second
//!   ([`reload`]);
//! - `seed`: a SQLite database of a million tasks for the database figures ([`seed`]);
//! - `db`: stillrunning, new_task and finish_task against a seeded database, and the server's
//!   RSS after them ([`db`]);
//! - `local-grid`, `task-overhead`, `queue-cycle`: the queue and worker figures ([`grid`]);
//! - `pages`: render time and weight of the website's pages on a seeded database ([`pages`]).
//!
//! This file owns only the command line. Every child process is stopped on every path.

mod db;
mod grid;
mod http;
mod pages;
mod reload;
mod report;
mod seed;
mod server;
mod startup;
mod wrk;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "iceprod-load",
    version,
    about = "HTTP load harness for iceprod"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Echo throughput with wrk at 16 and 64 connections, as a ratio to hello-http.
    Wrk(wrk::Args),
    /// Start to first answered echo, and idle RSS, over several starts.
    Startup(startup::Args),
    /// Failed requests under paced load while the config is reloaded with SIGHUP every second.
    Reload(reload::Args),
    /// Writes a SQLite database of N tasks (and its config) for the `db` figures.
    Seed(seed::Args),
    /// stillrunning, new_task and finish_task on a seeded database, against hello-http.
    Db(db::Args),
    /// N short tasks on the local grid: wall time against the ideal, CPU per task.
    LocalGrid(grid::LocalGridArgs),
    /// `iceprod task` for a trivial task: start to exit, and peak RSS, against /bin/true.
    TaskOverhead(grid::TaskOverheadArgs),
    /// One queue cycle with 100,000 queued tasks and 10,000 grid jobs (db + queue modules).
    QueueCycle(grid::QueueCycleArgs),
    /// Render time of `/` and `/dataset/1` on a seeded database, and the page's weight.
    Pages(pages::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Wrk(args) => wrk::run(&args),
        Command::Startup(args) => startup::run(&args),
        Command::Reload(args) => reload::run(&args),
        Command::Seed(args) => seed::run(&args),
        Command::Db(args) => db::run(&args),
        Command::LocalGrid(args) => grid::local_grid(&args),
        Command::TaskOverhead(args) => grid::task_overhead(&args),
        Command::QueueCycle(args) => grid::queue_cycle(&args),
        Command::Pages(args) => pages::run(&args),
    };
    if let Err(e) = result {
        eprintln!("iceprod-load: {e:#}");
        std::process::exit(1);
    }
}
