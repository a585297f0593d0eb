//! Measurement of the db module alone, without HTTP (BENCHMARKS.md, "Database (issue 3)"):
//! the task calls the `iceprod-load db` figures send through the website, sent here straight
//! to the real db module under the runtime's [`Harness`], on a copy of a seeded database
//! (`ICEPROD_BENCH_SEED=DIR`, a folder written by `iceprod-load seed`; required).
//!
//! For each of `stillrunning`, `finish_task` and `new_task`, the bench keeps
//! `ICEPROD_BENCH_IN_FLIGHT` requests in flight (default 64 for the task calls, 16 for
//! new_task, as the HTTP figures have connections) for `ICEPROD_BENCH_SECONDS` (default 5),
//! sending the next one as each reply arrives, and reports replies per second and the
//! latency from send to reply (a write's reply comes after its commit). So it shows what the
//! database side can do when requests arrive as fast as it answers, which the HTTP figures
//! cannot show on a 2-core machine where the load generator and the website share the CPUs.
//!
//! `finish_task` finishes each processing task of the seed at most once, in the order of
//! `processing.txt`; `stillrunning` cycles through them first (it changes nothing); new_task
//! uses the seed's pilot passkeys, one task's worth of resources per call (1 cpu, 2 GB).
//!
//! ```text
//! ICEPROD_BENCH_SEED=/tmp/seed-1m cargo bench --bench db_calls
//! ```
//!
//! Without `--bench`, or without `ICEPROD_BENCH_SEED`, it does nothing.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use iceprod_runtime::harness::Harness;
use iceprod_runtime::{DbReply, DbRequest, ModuleKind, Reply, Request, Resources, TaskCall};

const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// The grid the seed's queued tasks and pilots belong to (`iceprod-load seed`).
const GRID: &str = "b.bench";

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {v:?}")),
        Err(_) => default,
    }
}

fn pairs(file: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

struct Outcome {
    replies: u64,
    failed: u64,
    handed: u64,
    seconds: f64,
    latencies_us: Vec<u64>,
    first_error: Option<String>,
}

/// Keeps `in_flight` requests made by `next` in flight for `duration` (or until `next` has
/// none left), then waits for the last replies.
fn drive(
    h: &mut Harness,
    in_flight: usize,
    duration: Duration,
    mut next: impl FnMut(u64) -> Option<DbRequest>,
) -> Outcome {
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let mut out = Outcome {
        replies: 0,
        failed: 0,
        handed: 0,
        seconds: 0.0,
        latencies_us: Vec::new(),
        first_error: None,
    };
    let started = Instant::now();
    let mut n = 0u64;
    let mut exhausted = false;
    let mut send = |h: &mut Harness, sent_at: &mut HashMap<u64, Instant>, exhausted: &mut bool| {
        match next(n) {
            Some(request) => {
                n += 1;
                let id = h.send(ModuleKind::Db, Request::Db(request));
                sent_at.insert(id, Instant::now());
            }
            None => *exhausted = true,
        }
    };
    for _ in 0..in_flight {
        send(h, &mut sent_at, &mut exhausted);
    }
    while !sent_at.is_empty() {
        let Some((id, result)) = h.recv_reply(REPLY_TIMEOUT) else {
            panic!("no reply within {REPLY_TIMEOUT:?}");
        };
        let Some(at) = sent_at.remove(&id) else {
            continue;
        };
        out.latencies_us.push(at.elapsed().as_micros() as u64);
        out.replies += 1;
        match result {
            Ok(Reply::Db(DbReply::TaskConfigs(configs))) => out.handed += configs.len() as u64,
            Ok(_) => {}
            Err(e) => {
                out.failed += 1;
                out.first_error.get_or_insert(format!("{e:?}"));
            }
        }
        if started.elapsed() < duration && !exhausted {
            send(h, &mut sent_at, &mut exhausted);
        }
    }
    out.seconds = started.elapsed().as_secs_f64();
    out.latencies_us.sort_unstable();
    out
}

fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[rank] as f64 / 1000.0
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let Some(seed) = std::env::var_os("ICEPROD_BENCH_SEED").map(std::path::PathBuf::from) else {
        if benchmarking {
            eprintln!(
                "db_calls: set ICEPROD_BENCH_SEED to a folder written by `iceprod-load seed`"
            );
        }
        return;
    };
    if !benchmarking {
        return;
    }
    let seconds = Duration::from_secs(env_number("ICEPROD_BENCH_SECONDS", 5).clamp(1, 600));
    let in_flight_calls = env_number("ICEPROD_BENCH_IN_FLIGHT", 64).clamp(1, 4096) as usize;
    let in_flight_pilots = env_number("ICEPROD_BENCH_PILOTS", 16).clamp(1, 4096) as usize;

    let processing = pairs(&seed.join("processing.txt"));
    let pilots = pairs(&seed.join("pilots.txt"));
    assert!(
        pilots.len() >= in_flight_pilots,
        "the seed has {} pilots",
        pilots.len()
    );
    let (_dir, mut h) = support::start_db(Some(&seed));

    println!(
        "### db_calls: the db module alone on a copy of {}, {} s per call kind\n",
        seed.display(),
        seconds.as_secs()
    );
    println!(
        "| call | in flight | load avg (1 min) | replies | replies/s | tasks handed out/s | \
         failed | p50 (ms) | p99 (ms) | max (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let report = |name: &str, in_flight: usize, load: String, o: &Outcome| {
        println!(
            "| {name} | {in_flight} | {load} | {} | {:.0} | {} | {} | {:.2} | {:.2} | {:.2} |",
            o.replies,
            o.replies as f64 / o.seconds,
            if name == "new_task" {
                format!("{:.0}", o.handed as f64 / o.seconds)
            } else {
                "–".into()
            },
            o.failed,
            quantile_ms(&o.latencies_us, 0.5),
            quantile_ms(&o.latencies_us, 0.99),
            quantile_ms(&o.latencies_us, 1.0),
        );
        if let Some(e) = &o.first_error {
            eprintln!("db_calls: {name}: first failure: {e}");
        }
    };

    let load = support::load_average();
    let o = drive(&mut h, in_flight_calls, seconds, |n| {
        let (task_id, passkey) = &processing[(n as usize) % processing.len()];
        Some(DbRequest::Task {
            passkey: passkey.clone(),
            task_id: task_id.clone(),
            call: TaskCall::StillRunning,
        })
    });
    report("stillrunning", in_flight_calls, load, &o);

    let load = support::load_average();
    let stats = serde_json::json!({"hostname": "bench", "domain": "", "time_used": 60,
                                   "task_stats": {}});
    let o = drive(&mut h, in_flight_calls, seconds, |n| {
        let (task_id, passkey) = processing.get(n as usize)?;
        Some(DbRequest::Task {
            passkey: passkey.clone(),
            task_id: task_id.clone(),
            call: TaskCall::Finish {
                stats: stats.clone(),
            },
        })
    });
    report("finish_task", in_flight_calls, load, &o);

    let load = support::load_average();
    let mut next_pilot = 0usize;
    let o = drive(&mut h, in_flight_pilots, seconds, |_| {
        let (_, passkey) = &pilots[next_pilot % in_flight_pilots];
        next_pilot += 1;
        Some(DbRequest::NewTask {
            passkey: passkey.clone(),
            gridspec: GRID.into(),
            available: Resources {
                cpu: 1,
                gpu: 0,
                memory: 2.0,
                disk: 1.0,
                time: 1.0,
            },
            os: None,
            hostname: "bench".into(),
        })
    });
    report("new_task", in_flight_pilots, load, &o);
    println!();
    let reason = h.stop(ModuleKind::Db, Duration::from_secs(30));
    eprintln!("db_calls: the db module stopped: {reason:?}");
}
