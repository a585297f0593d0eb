//! `iceprod-load reload`: does a SIGHUP reload lose requests under load?
//!
//! For each case a fresh `iceprod server` is started and driven with paced echo requests
//! (request k is due at k / rate seconds) over a pool of keep-alive connections, one thread per
//! connection, with the HTTP written by hand ([`crate::http`]). Every request that does not get
//! HTTP 200 with the right echo counts as failed, and so do connection errors, timeouts and
//! requests never sent. Meanwhile, once a second, the config file is rewritten and SIGHUP sent:
//!
//! - `none`: no reloads (the control);
//! - `schedule`: adds or removes a `[schedule.jobs.bench_extra]` table, touching only `[schedule]`;
//! - `website`: switches `[website] body_limit` between 10 MiB and 11 MiB, which the website
//!   module applies in place.
//!
//! Reloads done are read from `GET /metrics` (`iceprod_config_reloads_total`) before and after.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::http::{is_timeout, Connection};
use crate::report::{fmt_opt, met, quantile_sorted, Table};
use crate::server::{self, Child, IceprodConfig};

/// Per-request timeout (connect, write and each read).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long past the planned end workers may still send before the rest counts as not sent.
const OVERRUN: Duration = Duration::from_secs(10);
/// Failure messages kept per worker, for the report.
const KEPT_FAILURES: usize = 3;

#[derive(clap::Args)]
pub struct Args {
    /// The iceprod binary (for example target/release/iceprod).
    #[arg(long)]
    iceprod: PathBuf,
    /// Requests per second, spread evenly over the connections.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=50_000))]
    rate: u64,
    /// Seconds of load per case.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..=600))]
    seconds: u64,
    /// Keep-alive connections (one thread each).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    connections: u64,
    /// Cases to run, in order (comma separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["none", "schedule", "website"])]
    cases: Vec<Case>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Case {
    /// No reloads: the control.
    None,
    /// Toggle a `[schedule.jobs.*]` table.
    Schedule,
    /// Toggle `[website] body_limit`.
    Website,
}

impl Case {
    fn describe(self) -> &'static str {
        match self {
            Case::None => "none (control, no reload)",
            Case::Schedule => "schedule: add/remove [schedule.jobs.bench_extra]",
            Case::Website => "website: body_limit 10MiB ⇄ 11MiB",
        }
    }

    /// The config for the `n`th reload (n ≥ 1) of this case.
    fn config_for(self, base: &IceprodConfig, n: u64) -> IceprodConfig {
        let mut config = base.clone();
        let odd = n % 2 == 1;
        match self {
            Case::None => {}
            Case::Schedule => config.extra_job = odd,
            Case::Website => config.body_limit = if odd { "11MiB" } else { "10MiB" }.into(),
        }
        config
    }
}

/// What one load thread saw.
#[derive(Default)]
struct Tally {
    sent: u64,
    ok: u64,
    wrong_answer: u64,
    connection_errors: u64,
    timeouts: u64,
    not_sent: u64,
    latencies_us: Vec<u32>,
    /// How far behind its schedule the thread fell at worst.
    max_lag: Duration,
    failures: Vec<String>,
}

impl Tally {
    fn failed(&self) -> u64 {
        self.wrong_answer + self.connection_errors + self.timeouts + self.not_sent
    }

    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.wrong_answer += other.wrong_answer;
        self.connection_errors += other.connection_errors;
        self.timeouts += other.timeouts;
        self.not_sent += other.not_sent;
        self.latencies_us.extend(other.latencies_us);
        self.max_lag = self.max_lag.max(other.max_lag);
        self.failures.extend(other.failures);
    }

    fn note_failure(&mut self, what: String) {
        if self.failures.len() < KEPT_FAILURES {
            self.failures.push(what);
        }
    }
}

struct CaseResult {
    case: Case,
    elapsed: Duration,
    tally: Tally,
    sighups: u64,
    reloads: Option<u64>,
    log_warnings: usize,
}

pub fn run(args: &Args) -> Result<()> {
    server::check_binary(&args.iceprod, "iceprod")?;
    let mut results = Vec::new();
    for &case in &args.cases {
        eprintln!("iceprod-load: reload case {case:?}, {} s", args.seconds);
        results.push(run_case(args, case)?);
    }
    print_results(args, &results);
    Ok(())
}

fn run_case(args: &Args, case: Case) -> Result<CaseResult> {
    let dir = tempfile::Builder::new()
        .prefix("iceprod-load-reload-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let config_file = dir.path().join("iceprod.toml");
    let base = IceprodConfig::new(server::free_port()?);
    base.write(&config_file)?;
    let mut child =
        Child::spawn_iceprod(&args.iceprod, &config_file, &dir.path().join("iceprod.log"))?;
    child.wait_until_ready(
        base.port,
        Instant::now(),
        server::START_TIMEOUT,
        server::probe_echo,
        server::echo_answered,
    )?;
    let reloads_before = read_reloads(base.port);

    let total = args.rate * args.seconds;
    let start = Instant::now() + Duration::from_millis(100);
    let planned_end = start + Duration::from_secs(args.seconds);
    let (tally, sighups) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..args.connections)
            .map(|w| {
                let plan = Plan {
                    port: base.port,
                    first: w,
                    stride: args.connections,
                    total,
                    rate: args.rate,
                    start,
                    give_up: planned_end + OVERRUN,
                };
                s.spawn(move || plan.run())
            })
            .collect();
        let sighups = if case == Case::None {
            Ok(0)
        } else {
            reload_every_second(&mut child, &config_file, &base, case, start, args.seconds)
        };
        let mut tally = Tally::default();
        for worker in workers {
            match worker.join() {
                Ok(t) => tally.merge(t),
                Err(_) => tally.note_failure("a load thread panicked".into()),
            }
        }
        (tally, sighups)
    });
    let elapsed = start.elapsed();
    let sighups = sighups?;
    // The last reload was sent a second before the load ended; give it time to be counted.
    std::thread::sleep(Duration::from_millis(500));
    let reloads_after = read_reloads(base.port);
    child
        .ensure_running()
        .context("the server died during the load")?;
    let log_warnings = child.log_lines_containing("warn") + child.log_lines_containing("error");
    if let Err(e) = child.stop() {
        eprintln!("iceprod-load: {e:#}");
    }
    Ok(CaseResult {
        case,
        elapsed,
        tally,
        sighups,
        reloads: match (reloads_before, reloads_after) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        log_warnings,
    })
}

/// Rewrites the config and sends SIGHUP at 1 s, 2 s, … after `start`, while the load runs.
/// Returns how many SIGHUPs were sent.
fn reload_every_second(
    child: &mut Child,
    config_file: &Path,
    base: &IceprodConfig,
    case: Case,
    start: Instant,
    seconds: u64,
) -> Result<u64> {
    let mut sent = 0;
    for n in 1..seconds {
        let due = start + Duration::from_secs(n);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        case.config_for(base, n).write(config_file)?;
        child.signal(libc::SIGHUP)?;
        sent += 1;
    }
    Ok(sent)
}

/// One load thread's share: requests `first`, `first + stride`, … below `total`, request k due
/// at `start + k / rate`. Late requests are sent at once (the lag is reported).
struct Plan {
    port: u16,
    first: u64,
    stride: u64,
    total: u64,
    rate: u64,
    start: Instant,
    give_up: Instant,
}

impl Plan {
    fn run(self) -> Tally {
        let mut tally = Tally::default();
        let mut connection: Option<Connection> = None;
        let mut k = self.first;
        while k < self.total {
            let now = Instant::now();
            if now >= self.give_up {
                tally.not_sent += (self.total - k).div_ceil(self.stride);
                tally.note_failure(format!("{} requests not sent in time", tally.not_sent));
                break;
            }
            let due = self.start + Duration::from_secs_f64(k as f64 / self.rate as f64);
            if due > now {
                std::thread::sleep(due - now);
            } else {
                tally.max_lag = tally.max_lag.max(now - due);
            }
            tally.sent += 1;
            let sent_at = Instant::now();
            let result = match connection.as_mut() {
                Some(c) => c.post_echo(),
                None => Connection::connect(self.port, REQUEST_TIMEOUT).and_then(|c| {
                    let c = connection.insert(c);
                    c.post_echo()
                }),
            };
            match result {
                Ok(response) => {
                    let micros = sent_at.elapsed().as_micros();
                    tally
                        .latencies_us
                        .push(u32::try_from(micros).unwrap_or(u32::MAX));
                    if response.is_echo_reply() {
                        tally.ok += 1;
                    } else {
                        tally.wrong_answer += 1;
                        tally.note_failure(format!(
                            "HTTP {}: {}",
                            response.status,
                            String::from_utf8_lossy(&response.body[..response.body.len().min(200)])
                        ));
                    }
                    if response.close {
                        connection = None;
                    }
                }
                Err(e) => {
                    if is_timeout(&e) {
                        tally.timeouts += 1;
                    } else {
                        tally.connection_errors += 1;
                    }
                    tally.note_failure(format!("request {k}: {e}"));
                    connection = None;
                }
            }
            k += self.stride;
        }
        tally
    }
}

/// `iceprod_config_reloads_total` from `GET /metrics`, if the server reports it.
fn read_reloads(port: u16) -> Option<u64> {
    let response = Connection::connect(port, REQUEST_TIMEOUT)
        .and_then(|mut c| c.get("/metrics"))
        .ok()?;
    if response.status != 200 {
        return None;
    }
    String::from_utf8_lossy(&response.body)
        .lines()
        .find_map(|l| l.strip_prefix("iceprod_config_reloads_total"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

fn print_results(args: &Args, results: &[CaseResult]) {
    println!(
        "### reload: paced echo load at {} req/s over {} keep-alive connections, {} s per \
         case, config rewritten + SIGHUP every second\n",
        args.rate, args.connections, args.seconds
    );
    let mut table = Table::new(&[
        "case",
        "requests sent",
        "achieved req/s",
        "ok",
        "failed",
        "wrong answer",
        "connection errors",
        "timeouts",
        "not sent",
        "p50 / p99 / max latency (ms)",
        "max lag (ms)",
        "SIGHUPs sent",
        "reloads done (metrics)",
        "server log warn/error lines",
        "goal: 0 failed",
    ]);
    for r in results {
        let t = &r.tally;
        let mut lat = t.latencies_us.clone();
        lat.sort_unstable();
        let ms = |q: f64| fmt_opt(quantile_sorted(&lat, q).map(|us| us as f64 / 1000.0), 2);
        table.row(vec![
            r.case.describe().into(),
            t.sent.to_string(),
            format!("{:.0}", t.sent as f64 / r.elapsed.as_secs_f64().max(1e-9)),
            t.ok.to_string(),
            t.failed().to_string(),
            t.wrong_answer.to_string(),
            t.connection_errors.to_string(),
            t.timeouts.to_string(),
            t.not_sent.to_string(),
            format!("{} / {} / {}", ms(0.5), ms(0.99), ms(1.0)),
            format!("{:.1}", t.max_lag.as_secs_f64() * 1000.0),
            r.sighups.to_string(),
            r.reloads.map_or("n/a".into(), |n| n.to_string()),
            r.log_warnings.to_string(),
            met(t.failed() == 0),
        ]);
    }
    table.print();
    for r in results.iter().filter(|r| !r.tally.failures.is_empty()) {
        println!("First failures in case {:?}:", r.case);
        for f in &r.tally.failures {
            println!("- {f}");
        }
        println!();
    }
}
