//! `iceprod-load db`: the database figures of BENCHMARKS.md ("Database (issue 3)") on a folder
//! written by `iceprod-load seed`.
//!
//! The seeded database is copied into a private folder first (the runs change it), then
//! `hello-http` (the baseline) and `iceprod server` on that copy are started side by side on
//! free 127.0.0.1 ports, and these phases run, in this order:
//!
//! 1. `stillrunning`: wrk (`-t2 -cC`) with a Lua script that cycles through the processing
//!    tasks and their passkeys (`processing.txt`), baseline and iceprod alternating for
//!    `--rounds` rounds, each measured run after an unmeasured warm-up. The baseline gets the
//!    same script, so both pay the same client cost.
//! 2. `new_task`: `--pilots` keep-alive connections, one thread and one pilot passkey each,
//!    each asking in a loop for one task's worth of resources (1 cpu, no gpu, 2 GB, 1 GB
//!    disk, 1 h) for `--new-task-duration`, every call timed; first against the baseline for
//!    half as long (the same client, for the ratio), then against iceprod.
//! 3. `finish_task`: wrk at `-cC` with a Lua script in which every request finishes another
//!    processing task with its own passkey (thread t of wrk's 2 takes tasks base+t, base+t+2,
//!    …; the next run starts past the last one used), baseline and iceprod alternating. A 2xx
//!    answer is a durable write (answered after its commit); the count of tasks complete in
//!    the database afterwards is checked against the 2xx answers.
//! 4. The server's VmRSS and VmHWM (from /proc), and the database file's size.
//!
//! The server runs with `RUST_LOG=iceprod_db::workers=debug`, so its writer logs how many
//! writes it committed in how many groups every few seconds; those lines are quoted at the end.
//! Every run is bounded in time; both servers are stopped on every path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use iceprod_db::rusqlite::Connection;

use crate::http::Connection as HttpConnection;
use crate::report::{fmt_opt, loadavg, median, met, quantile_sorted, Table};
use crate::server::{self, Child};
use crate::wrk::{parse_duration, parse_warmup, WrkOptions, WrkRun};

/// Goals of the issue.
const GOAL_STILLRUNNING_RATIO: f64 = 0.40;
const GOAL_NEW_TASK_PER_S: f64 = 2_000.0;
const GOAL_NEW_TASK_P99_MS: f64 = 25.0;
const GOAL_FINISH_PER_S: f64 = 10_000.0;
const GOAL_RSS_MB: f64 = 200.0;
/// Extra time wrk gets past its duration before it is killed.
/// Timeout of one new_task call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on the calls of one new_task client, whatever the duration.
const MAX_CALLS_PER_CLIENT: u64 = 5_000_000;
/// wrk's threads.
const WRK_THREADS: u32 = 2;

#[derive(clap::Args)]
pub struct Args {
    /// The iceprod binary (for example target/release/iceprod).
    #[arg(long)]
    iceprod: PathBuf,
    /// A folder written by `iceprod-load seed`; it is copied, not changed.
    #[arg(long)]
    seed: PathBuf,
    /// Phases to run (comma separated): stillrunning, new_task, finish.
    #[arg(long, value_delimiter = ',', default_values_t = ["stillrunning".to_string(), "new_task".to_string(), "finish".to_string()])]
    phases: Vec<String>,
    /// Rounds of the wrk phases; each runs baseline then iceprod.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// How long each measured stillrunning run lasts (`10s`, `1m` or seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// How long each measured finish_task run lasts.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    finish_duration: Duration,
    /// Unmeasured wrk run right before each measured one (`0s` for none).
    #[arg(long, default_value = "2s", value_parser = parse_warmup)]
    warmup: Duration,
    /// Concurrent pilots (connections) of the new_task phase.
    #[arg(long, default_value_t = 16)]
    pilots: usize,
    /// The new_task clients acknowledge every segment at once (`TCP_QUICKACK`): without it,
    /// each answer over 1 KiB waits ~40 ms for a delayed ACK (see BENCHMARKS.md); with it the
    /// figure shows the server without that stall. Both are reported when `both`.
    #[arg(long, value_enum, default_value = "both")]
    quickack: Quickack,
    /// How long the new_task phase runs against iceprod.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    new_task_duration: Duration,
    /// Threads of the hello-http baseline.
    #[arg(long, default_value_t = 2)]
    hello_threads: usize,
    /// wrk's path.
    #[arg(long, default_value = "wrk")]
    wrk: PathBuf,
    /// Keep the private folder (database copy, scripts, server log) and print its path.
    #[arg(long)]
    keep: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Quickack {
    Off,
    On,
    Both,
}

/// `TASK_ID PASSKEY` lines of a seed file.
fn read_pairs(file: &Path) -> Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next()) {
                (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
                _ => bail!("{}: bad line {l:?}", file.display()),
            }
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Baseline,
    Iceprod,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Baseline => "hello-http",
            Target::Iceprod => "iceprod",
        }
    }
}

/// The folder under test: the copy of the seed, the scripts, the servers.
struct Setup {
    dir: PathBuf,
    db_file: PathBuf,
    processing: Vec<(String, String)>,
    pilots: Vec<(String, String)>,
    hello_port: u16,
    iceprod_port: u16,
}

pub fn run(args: &Args) -> Result<()> {
    server::check_binary(&args.iceprod, "iceprod")?;
    let hello = server::hello_binary()?;
    Command::new(&args.wrk)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {} (apt-get install wrk)", args.wrk.display()))?;
    if args.connections < WRK_THREADS {
        bail!("--connections must be at least {WRK_THREADS}");
    }
    let tmp = tempfile::Builder::new()
        .prefix("iceprod-load-db-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let dir = tmp.path().to_path_buf();

    // The copy: the runs change the database, the seed stays as it was.
    crate::seed::copy_databases(&args.seed, &dir)?;
    let setup = Setup {
        db_file: dir.join("var/iceprod.db"),
        processing: read_pairs(&args.seed.join("processing.txt"))?,
        pilots: read_pairs(&args.seed.join("pilots.txt"))?,
        hello_port: server::free_port()?,
        iceprod_port: server::free_port()?,
        dir: dir.clone(),
    };
    if setup.pilots.len() < args.pilots {
        bail!(
            "the seed has {} pilots; --pilots asks for {}",
            setup.pilots.len(),
            args.pilots
        );
    }
    std::fs::write(
        dir.join("processing.txt"),
        std::fs::read(args.seed.join("processing.txt"))?,
    )?;
    let config_file = dir.join("iceprod.toml");
    std::fs::write(
        &config_file,
        crate::seed::render_config(&dir, setup.iceprod_port, "warn"),
    )?;

    let before = db_counts(&setup.db_file)?;
    let lifetime = Duration::from_secs(3600);
    let mut baseline = Child::spawn_hello(
        &hello,
        setup.hello_port,
        args.hello_threads,
        lifetime,
        &dir.join("hello.log"),
    )?;
    baseline.wait_until_ready(
        setup.hello_port,
        Instant::now(),
        server::START_TIMEOUT,
        server::probe_echo,
        server::answered_200,
    )?;
    // The writer's group summaries (workers.rs) go to the server's log; nothing else changes.
    std::env::set_var("RUST_LOG", "iceprod_db::workers=debug");
    let spawned = Instant::now();
    let log_file = dir.join("iceprod.log");
    let mut iceprod = Child::spawn_iceprod(&args.iceprod, &config_file, &log_file)?;
    let ready = iceprod.wait_until_ready(
        setup.iceprod_port,
        spawned,
        server::START_TIMEOUT,
        server::probe_echo,
        server::echo_answered,
    )?;
    let rss_start = iceprod.rss_kb()?;
    println!(
        "### db: {} (seed {}), load average {} at start\n",
        chrono_free_now(),
        args.seed.display(),
        loadavg()
    );
    println!(
        "iceprod answered its first echo {:.0} ms after its start on the copy; VmRSS then {:.1} MB.\n\
         Before the runs: {}.\n",
        ready.as_secs_f64() * 1000.0,
        rss_start as f64 / 1024.0,
        before.describe()
    );

    let phases: Vec<&str> = args.phases.iter().map(String::as_str).collect();
    let mut finish_2xx = 0u64;
    let mut finish_runs = 0u64;
    let mut handed = 0u64;
    if phases.contains(&"stillrunning") {
        stillrunning_phase(args, &setup, &mut baseline, &mut iceprod)?;
    }
    if phases.contains(&"new_task") {
        handed = new_task_phase(args, &setup, &mut baseline, &mut iceprod)?;
    }
    if phases.contains(&"finish") {
        (finish_2xx, finish_runs) = finish_phase(args, &setup, &mut baseline, &mut iceprod)?;
    }

    iceprod.ensure_running()?;
    let (rss, hwm) = rss_and_hwm(iceprod.pid())?;
    let after = db_counts(&setup.db_file)?;
    let db_size = std::fs::metadata(&setup.db_file)?.len()
        + std::fs::metadata(dir.join("var/iceprod.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    let exit = iceprod.stop()?;
    baseline.stop()?;

    println!("#### Consistency and memory\n");
    let mut table = Table::new(&["check", "value", "goal", "met"]);
    let completed = after.complete - before.complete;
    table.row(vec![
        "finish_task 2xx answers (all runs, warm-ups included)".into(),
        finish_2xx.to_string(),
        "–".into(),
        "–".into(),
    ]);
    // Requests still in flight when wrk stops are committed but not counted by wrk: at most
    // one per connection per run. Fewer completions than 2xx answers would mean an answer
    // before its commit.
    let in_flight = i64::from(args.connections) * finish_runs as i64;
    table.row(vec![
        "tasks that became complete in the database".into(),
        completed.to_string(),
        format!("2xx answers + 0…{in_flight} (in flight when wrk stopped)"),
        met(completed >= finish_2xx as i64 && completed - finish_2xx as i64 <= in_flight),
    ]);
    table.row(vec![
        "tasks handed out by new_task (answers)".into(),
        handed.to_string(),
        "–".into(),
        "–".into(),
    ]);
    table.row(vec![
        "task_lookup rows gone".into(),
        (before.lookup - after.lookup).to_string(),
        "= tasks handed out".into(),
        met(before.lookup - after.lookup == handed as i64),
    ]);
    table.row(vec![
        "server VmRSS after the runs (MB)".into(),
        format!("{:.1}", rss as f64 / 1024.0),
        format!("≤ {GOAL_RSS_MB:.0} MB"),
        met((rss as f64 / 1024.0) <= GOAL_RSS_MB),
    ]);
    table.row(vec![
        "server VmHWM, peak RSS (MB)".into(),
        format!("{:.1}", hwm as f64 / 1024.0),
        "–".into(),
        "–".into(),
    ]);
    table.row(vec![
        "database file + WAL (MB)".into(),
        format!("{:.0}", db_size as f64 / 1e6),
        "–".into(),
        "–".into(),
    ]);
    table.print();
    println!("After the runs: {}.\n", after.describe());
    println!(
        "iceprod exited with {exit} after SIGTERM; load average {} at the end.\n",
        loadavg()
    );

    let log = std::fs::read_to_string(&log_file).unwrap_or_default();
    let groups: Vec<&str> = log.lines().filter(|l| l.contains("db: writer")).collect();
    println!("#### The writer's group summaries (server log)\n");
    println!("```");
    for line in &groups {
        println!("{line}");
    }
    println!("```\n");
    let other: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("db: writer") && (l.contains("WARN") || l.contains("ERROR")))
        .collect();
    println!("Other warn/error lines in the server log: {}.", other.len());
    for line in other.iter().take(10) {
        println!("    {line}");
    }
    println!();
    if args.keep {
        let kept = tmp.keep();
        eprintln!("iceprod-load: kept {}", kept.display());
    }
    Ok(())
}

/// `date -u` without a date crate.
pub(crate) fn chrono_free_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn rss_and_hwm(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Ok((
        field("VmRSS:").context("no VmRSS")?,
        field("VmHWM:").context("no VmHWM")?,
    ))
}

/// Task counts by state and lookup rows, read from the file (WAL: the server may be running).
struct Counts {
    by_status: HashMap<String, i64>,
    complete: i64,
    lookup: i64,
}

impl Counts {
    fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .by_status
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect();
        parts.sort();
        format!(
            "tasks {}; {} task_lookup rows",
            parts.join(", "),
            self.lookup
        )
    }
}

fn db_counts(file: &Path) -> Result<Counts> {
    let conn = Connection::open(file)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let mut by_status = HashMap::new();
    let mut stmt = conn.prepare("SELECT status, count(*) FROM task GROUP BY status")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (s, n) = row?;
        by_status.insert(s, n);
    }
    let lookup = conn.query_row("SELECT count(*) FROM task_lookup", [], |r| r.get(0))?;
    Ok(Counts {
        complete: by_status.get("complete").copied().unwrap_or(0),
        by_status,
        lookup,
    })
}

// ---------------------------------------------------------------------------------------
// wrk phases

/// The Lua script: `method` for task `counter` of the thread, in the ids of `tasks_file`.
/// `stillrunning` cycles through the tasks; `finish_task` takes each task once, from the base
/// given as the script's first argument, and reports in `next` where the next run may start.
fn lua_script(tasks_file: &Path, method: &str) -> String {
    let (params, index) = match method {
        "finish_task" => (
            r#","stats":{"hostname":"bench","domain":"","time_used":60,"task_stats":{}}"#,
            "if i >= n then i = n - 1 end",
            // Past the end: the last task again, refused (non-2xx), so an exhausted budget shows.
        ),
        _ => ("", "i = i % n"),
    };
    format!(
        r#"-- generated by iceprod-load db
nthreads = 0
threads = {{}}

function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
  table.insert(threads, thread)
end

function init(args)
  ids = {{}}
  keys = {{}}
  n = 0
  for line in io.lines("{file}") do
    local id, key = line:match("^(%S+) (%S+)")
    if id then
      n = n + 1
      ids[n] = id
      keys[n] = key
    end
  end
  step = tonumber(args[2]) or 2
  counter = (tonumber(args[1]) or 0) + tid
  headers = {{}}
  headers["Content-Type"] = "application/json"
end

function request()
  local i = counter
  counter = counter + step
  {index}
  local body = '{{"jsonrpc":"2.0","method":"{method}","params":{{"passkey":"' .. keys[i + 1] ..
    '","task_id":"' .. ids[i + 1] .. '"{params}}},"id":1}}'
  return wrk.format("POST", "/jsonrpc", headers, body)
end

done = function(summary, latency, requests)
  local next = 0
  for _, t in ipairs(threads) do
    local c = t:get("counter")
    if c > next then next = c end
  end
  local e = summary.errors
  io.write(string.format(
    "ICEPROD_LOAD requests=%d duration_us=%d connect=%d read=%d write=%d timeout=%d status=%d p50_us=%d p99_us=%d next=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), next))
end
"#,
        file = tasks_file.display(),
    )
}

fn run_wrk(
    args: &Args,
    script: &Path,
    dir: &Path,
    port: u16,
    duration: Duration,
    base: u64,
) -> Result<WrkRun> {
    let script_args = [base.to_string(), WRK_THREADS.to_string()];
    let opts = WrkOptions {
        wrk: &args.wrk,
        threads: WRK_THREADS,
        connections: args.connections,
        duration,
        script_args: &script_args,
    };
    crate::wrk::run_once(&opts, script, dir, port)
}

fn per_run_table() -> Table {
    Table::new(&[
        "round",
        "server",
        "load avg (1 min)",
        "2xx requests/s",
        "non-2xx",
        "socket errors",
        "p50 latency (ms)",
        "p99 latency (ms)",
    ])
}

fn per_run_row(table: &mut Table, round: u32, target: Target, load: &str, run: &WrkRun) {
    table.row(vec![
        round.to_string(),
        target.name().into(),
        load.to_string(),
        format!("{:.0}", run.ok_per_second()),
        run.non_2xx.to_string(),
        run.socket_errors.to_string(),
        format!("{:.2}", run.p50_us as f64 / 1000.0),
        format!("{:.2}", run.p99_us as f64 / 1000.0),
    ]);
}

fn medians(results: &[(Target, WrkRun)]) -> (Option<f64>, Option<f64>) {
    let of = |target: Target| -> Option<f64> {
        median(
            &results
                .iter()
                .filter(|(t, _)| *t == target)
                .map(|(_, r)| r.ok_per_second())
                .collect::<Vec<_>>(),
        )
    };
    (of(Target::Baseline), of(Target::Iceprod))
}

fn stillrunning_phase(
    args: &Args,
    setup: &Setup,
    baseline: &mut Child,
    iceprod: &mut Child,
) -> Result<()> {
    let script = setup.dir.join("stillrunning.lua");
    std::fs::write(
        &script,
        lua_script(&setup.dir.join("processing.txt"), "stillrunning"),
    )?;
    // One answer checked by hand: the script's first request must say true.
    let (task, key) = &setup.processing[0];
    let mut c = HttpConnection::connect(setup.iceprod_port, CALL_TIMEOUT)?;
    let r = c.post_jsonrpc(&format!(
        r#"{{"jsonrpc":"2.0","method":"stillrunning","params":{{"passkey":"{key}","task_id":"{task}"}},"id":1}}"#
    ))?;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    if r.status != 200 || v["result"] != true {
        bail!(
            "stillrunning for {task} answered {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    drop(c);

    let mut table = per_run_table();
    let mut results = Vec::new();
    for round in 1..=args.rounds {
        for target in [Target::Baseline, Target::Iceprod] {
            let (port, child) = match target {
                Target::Baseline => (setup.hello_port, &mut *baseline),
                Target::Iceprod => (setup.iceprod_port, &mut *iceprod),
            };
            child.ensure_running()?;
            eprintln!(
                "iceprod-load: stillrunning round {round}, {}",
                target.name()
            );
            if !args.warmup.is_zero() {
                run_wrk(args, &script, &setup.dir, port, args.warmup, 0)?;
            }
            let load = loadavg();
            let run = run_wrk(args, &script, &setup.dir, port, args.duration, 0)?;
            per_run_row(&mut table, round, target, &load, &run);
            results.push((target, run));
        }
    }
    println!(
        "#### stillrunning, {} connections, {} s runs after {} s warm-ups, {} rounds\n",
        args.connections,
        args.duration.as_secs(),
        args.warmup.as_secs(),
        args.rounds
    );
    table.print();
    let (base, ice) = medians(&results);
    let ratio = match (base, ice) {
        (Some(b), Some(i)) if b > 0.0 => Some(i / b),
        _ => None,
    };
    let errors: u64 = results
        .iter()
        .filter(|(t, _)| *t == Target::Iceprod)
        .map(|(_, r)| r.non_2xx + r.socket_errors)
        .sum();
    let mut summary = Table::new(&[
        "hello-http req/s (median)",
        "iceprod stillrunning req/s (median)",
        "iceprod / hello-http",
        "goal ≥ 0.40",
        "iceprod non-2xx + socket errors",
    ]);
    summary.row(vec![
        fmt_opt(base, 0),
        fmt_opt(ice, 0),
        fmt_opt(ratio, 2),
        met(ratio.is_some_and(|r| r >= GOAL_STILLRUNNING_RATIO) && errors == 0),
        errors.to_string(),
    ]);
    summary.print();
    Ok(())
}

fn finish_phase(
    args: &Args,
    setup: &Setup,
    baseline: &mut Child,
    iceprod: &mut Child,
) -> Result<(u64, u64)> {
    let script = setup.dir.join("finish.lua");
    std::fs::write(
        &script,
        lua_script(&setup.dir.join("processing.txt"), "finish_task"),
    )?;
    let available = setup.processing.len() as u64;
    let mut base = 0u64;
    let mut ok_total = 0u64;
    let mut iceprod_runs = 0u64;
    let mut table = per_run_table();
    let mut results = Vec::new();
    for round in 1..=args.rounds {
        for target in [Target::Baseline, Target::Iceprod] {
            let (port, child) = match target {
                Target::Baseline => (setup.hello_port, &mut *baseline),
                Target::Iceprod => (setup.iceprod_port, &mut *iceprod),
            };
            child.ensure_running()?;
            eprintln!(
                "iceprod-load: finish_task round {round}, {} (tasks from {base} of {available})",
                target.name()
            );
            // The baseline's runs take no tasks: it finishes nothing.
            let start = if target == Target::Iceprod { base } else { 0 };
            let mut next = start;
            if !args.warmup.is_zero() {
                let w = run_wrk(args, &script, &setup.dir, port, args.warmup, next)?;
                if target == Target::Iceprod {
                    ok_total += w.requests - w.non_2xx.min(w.requests);
                    next = w.next.unwrap_or(next);
                    iceprod_runs += 1;
                }
            }
            let load = loadavg();
            let run = run_wrk(args, &script, &setup.dir, port, args.finish_duration, next)?;
            if target == Target::Iceprod {
                ok_total += run.requests - run.non_2xx.min(run.requests);
                base = run.next.unwrap_or(base);
                iceprod_runs += 1;
            }
            per_run_row(&mut table, round, target, &load, &run);
            results.push((target, run));
        }
    }
    println!(
        "#### finish_task, {} connections, {} s runs after {} s warm-ups, {} rounds (each \
         request finishes another processing task; 2xx = committed)\n",
        args.connections,
        args.finish_duration.as_secs(),
        args.warmup.as_secs(),
        args.rounds
    );
    table.print();
    if base >= available {
        println!(
            "**The runs used up the {available} processing tasks**: requests past the end \
             finished an already complete task and were refused (non-2xx).\n"
        );
    }
    let (base_rps, ice) = medians(&results);
    let errors: u64 = results
        .iter()
        .filter(|(t, _)| *t == Target::Iceprod)
        .map(|(_, r)| r.non_2xx + r.socket_errors)
        .sum();
    let mut summary = Table::new(&[
        "hello-http req/s (median)",
        "iceprod finish_task commits/s (median)",
        "iceprod / hello-http",
        "goal ≥ 10,000/s",
        "iceprod non-2xx + socket errors",
    ]);
    summary.row(vec![
        fmt_opt(base_rps, 0),
        fmt_opt(ice, 0),
        fmt_opt(
            match (base_rps, ice) {
                (Some(b), Some(i)) if b > 0.0 => Some(i / b),
                _ => None,
            },
            2,
        ),
        met(ice.is_some_and(|i| i >= GOAL_FINISH_PER_S) && errors == 0),
        errors.to_string(),
    ]);
    summary.print();
    Ok((ok_total, iceprod_runs))
}

// ---------------------------------------------------------------------------------------
// new_task

#[derive(Default)]
struct ClientResult {
    calls: u64,
    tasks: u64,
    empty: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    first_error: Option<String>,
}

/// One pilot's loop: new_task for one task's worth of resources until `deadline`.
fn pilot_client(
    port: u16,
    key: &str,
    deadline: Instant,
    baseline: bool,
    quickack: bool,
) -> ClientResult {
    let mut out = ClientResult::default();
    let body = format!(
        r#"{{"jsonrpc":"2.0","method":"new_task","params":{{"passkey":"{key}","gridspec":"{grid}","hostname":"bench-{key}","domain":"","ifaces":[],"os":"","cpu":1,"gpu":0,"memory":2.0,"disk":1.0,"time":1.0}},"id":1}}"#,
        grid = crate::seed::GRID
    );
    let connect = || {
        HttpConnection::connect(port, CALL_TIMEOUT).map(|mut c| {
            c.set_quickack(quickack);
            c
        })
    };
    let mut conn = match connect() {
        Ok(c) => c,
        Err(e) => {
            out.errors += 1;
            out.first_error = Some(format!("connect: {e}"));
            return out;
        }
    };
    while Instant::now() < deadline && out.calls < MAX_CALLS_PER_CLIENT {
        let started = Instant::now();
        let response = conn.post_jsonrpc(&body);
        let took = started.elapsed();
        out.calls += 1;
        out.latencies_us.push(took.as_micros() as u64);
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(format!("{e}"));
                match connect() {
                    Ok(c) => conn = c,
                    Err(_) => return out,
                }
                continue;
            }
        };
        let v: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
        match &v["result"] {
            _ if response.status != 200 => {
                out.errors += 1;
                out.first_error.get_or_insert(format!(
                    "{} {}",
                    response.status,
                    String::from_utf8_lossy(&response.body)
                ));
            }
            serde_json::Value::Array(configs) => {
                let ok = configs.iter().all(|c| c["options"]["task_id"].is_string());
                if ok {
                    out.tasks += configs.len() as u64;
                } else {
                    out.errors += 1;
                    out.first_error
                        .get_or_insert("a config without options.task_id".into());
                }
            }
            serde_json::Value::Null => out.empty += 1,
            serde_json::Value::String(_) if baseline => {}
            other => {
                out.errors += 1;
                out.first_error.get_or_insert(format!("result {other}"));
            }
        }
        if response.close {
            match connect() {
                Ok(c) => conn = c,
                Err(_) => return out,
            }
        }
    }
    out
}

struct NewTaskRun {
    wall: Duration,
    least_calls: u64,
    calls: u64,
    tasks: u64,
    empty: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    first_error: Option<String>,
}

fn new_task_run(
    setup: &Setup,
    pilots: usize,
    port: u16,
    duration: Duration,
    baseline: bool,
    quickack: bool,
) -> NewTaskRun {
    let keys: Arc<Vec<String>> = Arc::new(
        setup.pilots[..pilots]
            .iter()
            .map(|(_, key)| key.clone())
            .collect(),
    );
    let started = Instant::now();
    let deadline = started + duration;
    let handles: Vec<_> = (0..pilots)
        .map(|i| {
            let keys = keys.clone();
            std::thread::spawn(move || pilot_client(port, &keys[i], deadline, baseline, quickack))
        })
        .collect();
    let mut run = NewTaskRun {
        wall: Duration::ZERO,
        least_calls: u64::MAX,
        calls: 0,
        tasks: 0,
        empty: 0,
        errors: 0,
        latencies_us: Vec::new(),
        first_error: None,
    };
    for h in handles {
        match h.join() {
            Ok(r) => {
                run.least_calls = run.least_calls.min(r.calls);
                run.calls += r.calls;
                run.tasks += r.tasks;
                run.empty += r.empty;
                run.errors += r.errors;
                run.latencies_us.extend(r.latencies_us);
                if run.first_error.is_none() {
                    run.first_error = r.first_error;
                }
            }
            Err(_) => run.errors += 1,
        }
    }
    run.wall = started.elapsed();
    run.latencies_us.sort_unstable();
    run
}

fn new_task_phase(
    args: &Args,
    setup: &Setup,
    baseline: &mut Child,
    iceprod: &mut Child,
) -> Result<u64> {
    let mut table = Table::new(&[
        "client acks",
        "server",
        "load avg (1 min)",
        "seconds",
        "calls",
        "calls/s",
        "tasks handed out",
        "tasks/s",
        "empty answers",
        "errors",
        "calls of the least served pilot",
        "p50 latency (ms)",
        "p99 latency (ms)",
        "max latency (ms)",
    ]);
    let mut summary = Table::new(&[
        "client acks",
        "tasks/s",
        "goal ≥ 2,000/s",
        "p50 (ms)",
        "p99 (ms)",
        "goal p99 ≤ 25 ms",
        "iceprod calls/s / hello-http calls/s",
        "errors",
    ]);
    // The warm-up grows tiny_http's connection pool first (see the wrk subcommand): stillrunning
    // at --connections, which changes nothing.
    let warm_script = setup.dir.join("warm.lua");
    std::fs::write(
        &warm_script,
        lua_script(&setup.dir.join("processing.txt"), "stillrunning"),
    )?;
    let modes: &[bool] = match args.quickack {
        Quickack::Off => &[false],
        Quickack::On => &[true],
        Quickack::Both => &[false, true],
    };
    let mut handed = 0;
    for &quickack in modes {
        let acks = if quickack {
            "at once (TCP_QUICKACK)"
        } else {
            "delayed (default)"
        };
        let mut base_calls = None;
        for target in [Target::Baseline, Target::Iceprod] {
            let (port, child, duration) = match target {
                Target::Baseline => (
                    setup.hello_port,
                    &mut *baseline,
                    (args.new_task_duration / 2).max(Duration::from_secs(1)),
                ),
                Target::Iceprod => (setup.iceprod_port, &mut *iceprod, args.new_task_duration),
            };
            child.ensure_running()?;
            eprintln!(
                "iceprod-load: new_task, {} pilots, {}, acks {acks}",
                args.pilots,
                target.name()
            );
            if !args.warmup.is_zero() {
                run_wrk(args, &warm_script, &setup.dir, port, args.warmup, 0)?;
            }
            let load = loadavg();
            let run = new_task_run(
                setup,
                args.pilots,
                port,
                duration,
                target == Target::Baseline,
                quickack,
            );
            let secs = run.wall.as_secs_f64();
            let q = |p: f64| quantile_sorted(&run.latencies_us, p).map(|us| us as f64 / 1000.0);
            table.row(vec![
                acks.into(),
                target.name().into(),
                load,
                format!("{secs:.1}"),
                run.calls.to_string(),
                format!("{:.0}", run.calls as f64 / secs),
                run.tasks.to_string(),
                format!("{:.0}", run.tasks as f64 / secs),
                run.empty.to_string(),
                run.errors.to_string(),
                run.least_calls.to_string(),
                fmt_opt(q(0.5), 2),
                fmt_opt(q(0.99), 2),
                fmt_opt(q(1.0), 2),
            ]);
            if let Some(e) = &run.first_error {
                eprintln!(
                    "iceprod-load: new_task on {}: first error: {e}",
                    target.name()
                );
            }
            match target {
                Target::Baseline => base_calls = Some(run.calls as f64 / secs),
                Target::Iceprod => {
                    handed += run.tasks;
                    let per_s = run.tasks as f64 / secs;
                    let p99 = q(0.99);
                    summary.row(vec![
                        acks.into(),
                        format!("{per_s:.0}"),
                        met(per_s >= GOAL_NEW_TASK_PER_S && run.errors == 0),
                        fmt_opt(q(0.5), 2),
                        fmt_opt(p99, 2),
                        met(p99.is_some_and(|p| p <= GOAL_NEW_TASK_P99_MS)),
                        fmt_opt(base_calls.map(|b| run.calls as f64 / secs / b), 2),
                        run.errors.to_string(),
                    ]);
                }
            }
        }
    }
    println!(
        "#### new_task, {} pilots on keep-alive connections, each asking for 1 cpu / 2 GB per call \
         ({} s against iceprod, half that against the baseline, each after a {} s wrk warm-up)\n",
        args.pilots,
        args.new_task_duration.as_secs(),
        args.warmup.as_secs()
    );
    table.print();
    summary.print();
    Ok(handed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counters_line_with_next() {
        let out = "ICEPROD_LOAD requests=100 duration_us=2000000 connect=0 read=0 write=0 \
                   timeout=0 status=4 p50_us=150 p99_us=900 next=130\n";
        let run = crate::wrk::parse_wrk_line(out).expect("parses");
        assert_eq!(run.next, Some(130));
        assert!((run.ok_per_second() - 48.0).abs() < 1e-9);
    }

    #[test]
    fn the_finish_script_takes_each_task_once_and_stillrunning_cycles() {
        let finish = lua_script(Path::new("/x/p.txt"), "finish_task");
        assert!(finish.contains(r#""method":"finish_task""#));
        assert!(finish.contains("if i >= n then i = n - 1 end"));
        assert!(finish.contains("/x/p.txt"));
        let still = lua_script(Path::new("/x/p.txt"), "stillrunning");
        assert!(still.contains("i = i % n"));
        assert!(!still.contains("stats"));
    }
}
