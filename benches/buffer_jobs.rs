//! Measurement of job buffering (BENCHMARKS.md, "Database (issue 3)"): how long the real db
//! module takes to create 100,000 jobs of 3 tasks through `DbRequest::BufferJobs`.
//!
//! The db module runs under the runtime's [`Harness`] on its own threads, on SQLite, exactly
//! as in the server (its writer, its group commit, its durability pragmas). The bench submits
//! one dataset of `ICEPROD_BENCH_JOBS` jobs (default 100,000) whose config has three tasks in a
//! chain (`generate` → `filter` → `level2`, one requirement an expression evaluated per job),
//! then sends `BufferJobs { max_jobs: ICEPROD_BENCH_MAX_JOBS }` (default 10,000) until every
//! job exists, one call at a time, timing each call from send to reply (the reply comes after
//! the commit). Prints a markdown table and the total.
//!
//! With `ICEPROD_BENCH_SEED=DIR` (a folder written by `iceprod-load seed`) the database is a
//! copy of that seed, so the jobs are buffered into a database that already holds its tasks
//! (a million with the default seed); without it, into a new database.
//!
//! ```text
//! cargo bench --bench buffer_jobs
//! ICEPROD_BENCH_SEED=/tmp/seed-1m cargo bench --bench buffer_jobs
//! ```
//!
//! Without `--bench` (a `cargo test --benches` run) it buffers 1,000 jobs only, as a check.

mod support;

use std::time::{Duration, Instant};

use iceprod_runtime::harness::Harness;
use iceprod_runtime::{DatasetSubmission, DbReply, DbRequest, ModuleKind};

/// Longest a single call may take before the bench gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Most calls, whatever the sizes (every loop is bounded).
const MAX_CALLS: usize = 100_000;

fn env_number(name: &str, default: u32) -> u32 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {v:?}")),
        Err(_) => default,
    }
}

fn dataset_config() -> String {
    serde_json::json!({
        "version": 3,
        "description": "buffer_jobs bench",
        "tasks": [
            {"name": "generate", "requirements": {"cpu": 1, "memory": "$eval($(job) % 3 + 1)"},
             "trays": [{"modules": [{"src": "generate.sh", "args": "$(job)"}]}]},
            {"name": "filter", "depends": ["generate"], "requirements": {"memory": 2.0},
             "trays": [{"modules": [{"src": "filter.sh", "args": "$(job)"}]}]},
            {"name": "level2", "depends": ["filter"], "requirements": {"memory": 1.5},
             "trays": [{"modules": [{"src": "level2.sh", "args": "$(job)"}]}]}
        ]
    })
    .to_string()
}

fn call(h: &mut Harness, request: DbRequest) -> DbReply {
    support::call(h, request, CALL_TIMEOUT)
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let jobs = if benchmarking {
        env_number("ICEPROD_BENCH_JOBS", 100_000)
    } else {
        1_000
    };
    let max_jobs = env_number("ICEPROD_BENCH_MAX_JOBS", 10_000).max(1);
    let seed = std::env::var_os("ICEPROD_BENCH_SEED").map(std::path::PathBuf::from);

    let (dir, mut h) = support::start_db(seed.as_deref());

    let reply = call(
        &mut h,
        DbRequest::SubmitDataset(Box::new(DatasetSubmission {
            config: dataset_config(),
            description: "buffer_jobs bench".into(),
            njobs: jobs,
            gridspec: String::new(),
            debug: false,
            group: None,
            username: "bench".into(),
            stat_keys: vec![],
        })),
    );
    let DbReply::Dataset { dataset_id, .. } = reply else {
        panic!("submission answered {reply:?}");
    };

    let load_before = support::load_average();
    let mut per_call = Vec::new();
    let (mut total_jobs, mut total_tasks) = (0u64, 0u64);
    let started = Instant::now();
    while total_jobs < u64::from(jobs) && per_call.len() < MAX_CALLS {
        let t = Instant::now();
        let reply = call(&mut h, DbRequest::BufferJobs { max_jobs });
        let took = t.elapsed();
        let DbReply::Buffered { jobs: j, tasks } = reply else {
            panic!("BufferJobs answered {reply:?}");
        };
        if j == 0 {
            break;
        }
        total_jobs += j;
        total_tasks += tasks;
        per_call.push((j, tasks, took));
    }
    let total = started.elapsed();
    let load_after = support::load_average();

    // What is in the file now (the module's own reply is checked against it).
    let conn =
        iceprod_db::rusqlite::Connection::open(dir.path().join("var/iceprod.db")).expect("open");
    let count = |sql: &str| -> i64 {
        conn.query_row(sql, [dataset_id.as_str()], |r| r.get(0))
            .expect("count")
    };
    let job_rows = count("SELECT count(*) FROM job WHERE dataset_id = ?1");
    let task_rows = count("SELECT count(*) FROM task WHERE dataset_id = ?1");
    let all_tasks: i64 = conn
        .query_row("SELECT count(*) FROM task", [], |r| r.get(0))
        .expect("count");
    assert_eq!(job_rows as u64, total_jobs, "jobs in the file");
    assert_eq!(task_rows as u64, total_tasks, "tasks in the file");
    h.stop(ModuleKind::Db, Duration::from_secs(30));

    println!(
        "### buffer_jobs: {jobs} jobs of 3 tasks, max_jobs {max_jobs} per call, into {}\n",
        match &seed {
            Some(s) => format!("a copy of {}", s.display()),
            None => "a new database".into(),
        }
    );
    println!("| call | jobs | tasks | seconds | jobs/s |");
    println!("|---|---|---|---|---|");
    for (i, (j, t, took)) in per_call.iter().enumerate() {
        println!(
            "| {} | {j} | {t} | {:.2} | {:.0} |",
            i + 1,
            took.as_secs_f64(),
            *j as f64 / took.as_secs_f64()
        );
    }
    println!();
    println!(
        "Total: {total_jobs} jobs and {total_tasks} tasks in {:.2} s ({:.0} jobs/s, {:.0} \
         tasks/s), {} calls; the file then held {all_tasks} tasks in all. Load average {} \
         before, {} after.\n",
        total.as_secs_f64(),
        total_jobs as f64 / total.as_secs_f64(),
        total_tasks as f64 / total.as_secs_f64(),
        per_call.len(),
        load_before,
        load_after
    );
}
