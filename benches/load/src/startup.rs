//! `iceprod-load startup`: how fast `iceprod server` starts and how much memory it holds idle.
//!
//! Each run writes a config with a fresh port, spawns the server, and probes (connect + echo,
//! every millisecond, for at most 10 s) until the first echo is answered; that time since the
//! spawn is the start time. After ~2 s idle it reads VmRSS from /proc/PID/status, then stops the
//! server with SIGTERM and records its exit status. The state folder is kept across runs, so
//! run 1 is a first start (empty state) and the others are restarts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::report::{fmt_opt, max, median, met, Table};
use crate::server::{self, Child, IceprodConfig};

/// Goals: start to first answered request, and idle resident memory.
const GOAL_START_MS: f64 = 50.0;
const GOAL_RSS_MB: f64 = 15.0;
/// How long the server idles before its RSS is read.
const IDLE: Duration = Duration::from_secs(2);

#[derive(clap::Args)]
pub struct Args {
    /// The iceprod binary (for example target/release/iceprod).
    #[arg(long)]
    iceprod: PathBuf,
    /// How many starts.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
    runs: u32,
}

struct StartRun {
    start_ms: f64,
    rss_kb: u64,
    exit: String,
}

pub fn run(args: &Args) -> Result<()> {
    server::check_binary(&args.iceprod, "iceprod")?;
    let dir = tempfile::Builder::new()
        .prefix("iceprod-load-startup-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let config_file = dir.path().join("iceprod.toml");
    let mut runs = Vec::new();
    let mut table = Table::new(&[
        "run",
        "start → first echo (ms)",
        "idle VmRSS (MB)",
        "exit after SIGTERM",
    ]);
    for i in 1..=args.runs {
        let run = start_once(args, &config_file, dir.path(), i)?;
        eprintln!(
            "iceprod-load: start {i}: {:.1} ms, {} kB",
            run.start_ms, run.rss_kb
        );
        table.row(vec![
            i.to_string(),
            format!("{:.1}", run.start_ms),
            format!("{:.2}", run.rss_kb as f64 / 1024.0),
            run.exit.clone(),
        ]);
        runs.push(run);
    }

    let starts: Vec<f64> = runs.iter().map(|r| r.start_ms).collect();
    let rss_mb: Vec<f64> = runs.iter().map(|r| r.rss_kb as f64 / 1024.0).collect();
    let (start_median, start_max) = (median(&starts), max(&starts));
    let rss_median = median(&rss_mb);
    println!(
        "### startup: {} starts of `iceprod server --foreground`, probe every 1 ms\n",
        args.runs
    );
    table.print();
    let mut summary = Table::new(&["figure", "median", "max", "goal", "met (median)"]);
    summary.row(vec![
        "start → first answered echo (ms)".into(),
        fmt_opt(start_median, 1),
        fmt_opt(start_max, 1),
        format!("≤ {GOAL_START_MS:.0} ms"),
        met(start_median.is_some_and(|m| m <= GOAL_START_MS)),
    ]);
    summary.row(vec![
        format!("idle VmRSS after {} s (MB)", IDLE.as_secs()),
        fmt_opt(rss_median, 2),
        fmt_opt(max(&rss_mb), 2),
        format!("≤ {GOAL_RSS_MB:.0} MB"),
        met(rss_median.is_some_and(|m| m <= GOAL_RSS_MB)),
    ]);
    summary.print();
    Ok(())
}

fn start_once(
    args: &Args,
    config_file: &std::path::Path,
    dir: &std::path::Path,
    i: u32,
) -> Result<StartRun> {
    let port = server::free_port()?;
    IceprodConfig::new(port).write(config_file)?;
    let log = dir.join(format!("iceprod-{i}.log"));
    let spawned = Instant::now();
    let mut child = Child::spawn_iceprod(&args.iceprod, config_file, &log)?;
    let start = child.wait_until_ready(
        port,
        spawned,
        server::START_TIMEOUT,
        server::probe_echo,
        server::echo_answered,
    )?;
    std::thread::sleep(IDLE);
    child.ensure_running()?;
    let rss_kb = child.rss_kb()?;
    let exit = match child.stop() {
        Ok(status) if status.success() => "0".to_string(),
        Ok(status) => status.to_string(),
        Err(e) => format!("{e:#}"),
    };
    Ok(StartRun {
        start_ms: start.as_secs_f64() * 1000.0,
        rss_kb,
        exit,
    })
}
