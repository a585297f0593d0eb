//! `iceprod-load wrk`: echo throughput of iceprod against the hello-world baseline.
//!
//! Starts `hello-http` and `iceprod server` side by side on free ports, writes a wrk Lua script
//! that POSTs the echo request and reports wrk's own counters, and runs
//! `wrk -t2 -cC -dD -s post.lua` against each, alternating baseline and iceprod, for several
//! rounds at each connection count. Reports per-run figures and, per connection count, the
//! medians and the ratio iceprod / baseline. Both servers share the 2 CPUs with wrk, which is why
//! only the ratio is meaningful.
//!
//! Each measured run follows a short unmeasured warm-up run at the same connection count:
//! tiny_http 0.12 (both servers) can leave some connections of a burst of new ones unserved
//! while its idle connection threads have died off (they do after 5 s), which starves part of
//! wrk's connections for the whole run (BENCHMARKS.md shows how it looks).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::http::ECHO_REQUEST;
use crate::report::{fmt_opt, median, met, Table};
use crate::server::{self, Child, IceprodConfig};

/// The goal: iceprod's echo throughput as a share of hello-http's.
const GOAL_RATIO: f64 = 0.60;
/// Extra time wrk gets past its duration before it is killed.
const WRK_GRACE: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct Args {
    /// The iceprod binary (for example target/release/iceprod).
    #[arg(long)]
    iceprod: PathBuf,
    /// How long each wrk run lasts (`10s`, `1m` or seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured wrk run right before each measured one (`0s` for none).
    #[arg(long, default_value = "2s", value_parser = parse_warmup)]
    warmup: Duration,
    /// Rounds; each runs baseline then iceprod at every connection count.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Connection counts (comma separated).
    #[arg(long, default_values_t = [16, 64], value_delimiter = ',')]
    connections: Vec<u32>,
    /// Threads of the hello-http baseline (iceprod runs 2 pump and 2 responder threads).
    #[arg(long, default_value_t = 2)]
    hello_threads: usize,
    /// wrk's path.
    #[arg(long, default_value = "wrk")]
    wrk: PathBuf,
}

/// Parses `10s`, `2m` or `10` (seconds) into whole seconds, 1 s to 1 h.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    match parse_seconds(s)? {
        0 => Err(format!("{s:?} must be at least 1 s")),
        secs => Ok(Duration::from_secs(secs)),
    }
}

/// Like [`parse_duration`], but `0s` (no warm-up) is allowed.
pub(crate) fn parse_warmup(s: &str) -> Result<Duration, String> {
    parse_seconds(s).map(Duration::from_secs)
}

/// Whole seconds from `10s`, `2m` or `10`, at most 1 h.
fn parse_seconds(s: &str) -> Result<u64, String> {
    let (digits, unit) = match s.strip_suffix('s') {
        Some(d) => (d, 1),
        None => match s.strip_suffix('m') {
            Some(d) => (d, 60),
            None => (s, 1),
        },
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s or 1m"))?;
    match n.checked_mul(unit) {
        Some(secs) if secs <= 3600 => Ok(secs),
        _ => Err(format!("{s:?} must be at most 1 h")),
    }
}

/// What wrk's `done` hook reported for one run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WrkRun {
    pub requests: u64,
    pub duration: Duration,
    pub socket_errors: u64,
    pub non_2xx: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// What a script reported as `next=` (the db phases: where the next run may start).
    pub next: Option<u64>,
}

impl WrkRun {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.duration.as_secs_f64().max(1e-9)
    }

    /// Requests answered with a 2xx, per second.
    pub fn ok_per_second(&self) -> f64 {
        (self.requests - self.non_2xx.min(self.requests)) as f64
            / self.duration.as_secs_f64().max(1e-9)
    }
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

pub fn run(args: &Args) -> Result<()> {
    server::check_binary(&args.iceprod, "iceprod")?;
    let hello = server::hello_binary()?;
    check_wrk(&args.wrk)?;
    if args.connections.iter().any(|&c| c < 2) {
        bail!("--connections must be at least 2 (wrk runs 2 threads)");
    }
    let dir = tempfile::Builder::new()
        .prefix("iceprod-load-wrk-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let script = dir.path().join("post.lua");
    std::fs::write(&script, lua_script()).context("cannot write the wrk script")?;

    let runs_planned = args.rounds as u64 * args.connections.len() as u64 * 2;
    let lifetime = (args.warmup + args.duration + Duration::from_secs(5)) * runs_planned as u32
        + Duration::from_secs(120);
    let hello_port = server::free_port()?;
    let mut baseline = Child::spawn_hello(
        &hello,
        hello_port,
        args.hello_threads,
        lifetime,
        &dir.path().join("hello.log"),
    )?;
    baseline.wait_until_ready(
        hello_port,
        Instant::now(),
        server::START_TIMEOUT,
        server::probe_echo,
        server::answered_200,
    )?;

    let iceprod_port = server::free_port()?;
    let config_file = dir.path().join("iceprod.toml");
    IceprodConfig::new(iceprod_port).write(&config_file)?;
    let mut iceprod =
        Child::spawn_iceprod(&args.iceprod, &config_file, &dir.path().join("iceprod.log"))?;
    iceprod.wait_until_ready(
        iceprod_port,
        Instant::now(),
        server::START_TIMEOUT,
        server::probe_echo,
        server::echo_answered,
    )?;

    let mut per_run = Table::new(&[
        "round",
        "connections",
        "server",
        "requests/s",
        "non-2xx",
        "socket errors",
        "p50 latency (ms)",
        "p99 latency (ms)",
    ]);
    let mut results: Vec<(u32, Target, WrkRun)> = Vec::new();
    for round in 1..=args.rounds {
        for &connections in &args.connections {
            for target in [Target::Baseline, Target::Iceprod] {
                let (port, child) = match target {
                    Target::Baseline => (hello_port, &mut baseline),
                    Target::Iceprod => (iceprod_port, &mut iceprod),
                };
                child.ensure_running()?;
                eprintln!(
                    "iceprod-load: round {round}, {connections} connections, {}",
                    target.name()
                );
                if !args.warmup.is_zero() {
                    run_wrk(args, &script, dir.path(), port, connections, args.warmup)?;
                }
                let run = run_wrk(args, &script, dir.path(), port, connections, args.duration)?;
                per_run.row(vec![
                    round.to_string(),
                    connections.to_string(),
                    target.name().into(),
                    format!("{:.0}", run.requests_per_second()),
                    run.non_2xx.to_string(),
                    run.socket_errors.to_string(),
                    format!("{:.2}", run.p50_us as f64 / 1000.0),
                    format!("{:.2}", run.p99_us as f64 / 1000.0),
                ]);
                results.push((connections, target, run));
            }
        }
    }
    iceprod.ensure_running()?;
    let iceprod_exit = iceprod.stop()?;
    baseline.stop()?;

    println!(
        "### wrk: echo throughput, {} s per run after a {} s warm-up, {} rounds, baseline and \
         iceprod alternating\n",
        args.duration.as_secs(),
        args.warmup.as_secs(),
        args.rounds
    );
    per_run.print();
    summary(args, &results).print();
    println!("iceprod exited with {iceprod_exit} after SIGTERM.\n");
    Ok(())
}

fn summary(args: &Args, results: &[(u32, Target, WrkRun)]) -> Table {
    let mut table = Table::new(&[
        "connections",
        "hello-http req/s (median)",
        "iceprod req/s (median)",
        "iceprod / hello-http",
        "goal ≥ 0.60",
        "iceprod non-2xx (total)",
        "iceprod socket errors (total)",
        "hello-http non-2xx + socket errors (total)",
    ]);
    for &connections in &args.connections {
        let of = |target: Target| -> Vec<WrkRun> {
            results
                .iter()
                .filter(|(c, t, _)| *c == connections && *t == target)
                .map(|(_, _, r)| *r)
                .collect()
        };
        let rps = |runs: &[WrkRun]| {
            median(
                &runs
                    .iter()
                    .map(|r| r.requests_per_second())
                    .collect::<Vec<_>>(),
            )
        };
        let base_runs = of(Target::Baseline);
        let ice_runs = of(Target::Iceprod);
        let (base, ice) = (rps(&base_runs), rps(&ice_runs));
        let ratio = match (base, ice) {
            (Some(b), Some(i)) if b > 0.0 => Some(i / b),
            _ => None,
        };
        let ice_errors: u64 = ice_runs.iter().map(|r| r.non_2xx + r.socket_errors).sum();
        table.row(vec![
            connections.to_string(),
            fmt_opt(base, 0),
            fmt_opt(ice, 0),
            fmt_opt(ratio, 2),
            met(ratio.is_some_and(|r| r >= GOAL_RATIO) && ice_errors == 0),
            ice_runs.iter().map(|r| r.non_2xx).sum::<u64>().to_string(),
            ice_runs
                .iter()
                .map(|r| r.socket_errors)
                .sum::<u64>()
                .to_string(),
            base_runs
                .iter()
                .map(|r| r.non_2xx + r.socket_errors)
                .sum::<u64>()
                .to_string(),
        ]);
    }
    table
}

/// Fails with an install hint unless `wrk` can be started. (`wrk --version` prints its banner
/// and exits 1, so only whether it starts is checked.)
fn check_wrk(wrk: &Path) -> Result<()> {
    Command::new(wrk)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|_| ())
        .with_context(|| format!("cannot run {} (apt-get install wrk)", wrk.display()))
}

/// The Lua script: POST the echo request; on completion print wrk's counters on one line.
fn lua_script() -> String {
    format!(
        r#"wrk.method = "POST"
wrk.body = '{ECHO_REQUEST}'
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "ICEPROD_LOAD requests=%d duration_us=%d connect=%d read=%d write=%d timeout=%d status=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"#
    )
}

/// Runs wrk once for `duration` against 127.0.0.1:`port` and reads its counters.
fn run_wrk(
    args: &Args,
    script: &Path,
    dir: &Path,
    port: u16,
    connections: u32,
    duration: Duration,
) -> Result<WrkRun> {
    let opts = WrkOptions {
        wrk: &args.wrk,
        threads: 2,
        connections,
        duration,
        script_args: &[],
    };
    run_once(&opts, script, dir, port)
}

/// One wrk run's settings (`script_args` follow `--` on wrk's command line).
pub(crate) struct WrkOptions<'a> {
    pub wrk: &'a Path,
    pub threads: u32,
    pub connections: u32,
    pub duration: Duration,
    pub script_args: &'a [String],
}

/// Runs wrk once against `/jsonrpc` on `port` with `script` (whose `done` hook prints the
/// `ICEPROD_LOAD` counters line), bounded by the duration plus a grace period.
pub(crate) fn run_once(opts: &WrkOptions, script: &Path, dir: &Path, port: u16) -> Result<WrkRun> {
    let out_path = dir.join("wrk.out");
    let out = std::fs::File::create(&out_path).context("cannot create the wrk output file")?;
    let mut child = Command::new(opts.wrk)
        .arg(format!("-t{}", opts.threads))
        .arg(format!("-c{}", opts.connections))
        .arg(format!("-d{}s", opts.duration.as_secs()))
        .arg("--timeout")
        .arg("5s")
        .arg("-s")
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}/jsonrpc"))
        .arg("--")
        .args(opts.script_args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", opts.wrk.display()))?;
    let deadline = Instant::now() + opts.duration + WRK_GRACE;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("wrk did not finish within {:?}", opts.duration + WRK_GRACE);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&out_path).context("cannot read wrk's output")?;
    if !status.success() {
        bail!("wrk exited with {status}:\n{output}");
    }
    parse_wrk_line(&output).with_context(|| format!("wrk's output has no counters:\n{output}"))
}

pub(crate) fn parse_wrk_line(output: &str) -> Option<WrkRun> {
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix("ICEPROD_LOAD "))?;
    let field = |name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some(WrkRun {
        requests: field("requests")?,
        duration: Duration::from_micros(field("duration_us")?),
        socket_errors: field("connect")? + field("read")? + field("write")? + field("timeout")?,
        non_2xx: field("status")?,
        p50_us: field("p50_us")?,
        p99_us: field("p99_us")?,
        next: field("next"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counters_line_of_the_lua_hook() {
        let out = "Running 1s test\nICEPROD_LOAD requests=100 duration_us=2000000 connect=1 \
                   read=2 write=0 timeout=3 status=4 p50_us=150 p99_us=900\n";
        let run = parse_wrk_line(out).expect("the line parses");
        assert_eq!(run.requests, 100);
        assert_eq!(run.socket_errors, 6);
        assert_eq!(run.non_2xx, 4);
        assert!((run.requests_per_second() - 50.0).abs() < 1e-9);
    }

    #[test]
    fn durations_take_seconds_and_minutes() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_warmup("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("ten").is_err());
    }
}
