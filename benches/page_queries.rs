//! Measurement of the db side of the website's two busiest pages (BENCHMARKS.md, issue 5):
//! the `PageQuery::Home` behind `/` and the `PageQuery::Dataset` behind `/dataset/N`, sent to
//! the real db module under the runtime's [`Harness`] (its reader threads, as in the server),
//! on a copy of a seeded database: `ICEPROD_BENCH_SEED=DIR`, a folder written by
//! `iceprod-load seed` (required; its default is one processing dataset of 1,000,000 tasks),
//! the same seed `benches/db_calls.rs` uses.
//!
//! Before measuring, the bench sends `RecordGraphs` 144 times (a day of the schedule's
//! 10-minute records), so `/` reads a day of graph rows and the dataset page a day of
//! progress points. Then criterion times each query (`home_page_query`,
//! `dataset_page_query`, from send to reply), and in a real bench run (`--bench`) each query
//! is also timed `ICEPROD_BENCH_CALLS` times one by one (default 200) for the median and p99,
//! printed with the load average, and so is the first page of the dataset's task list.
//!
//! ```text
//! cargo run --release -p iceprod-load -- seed --dir /tmp/seed-1m
//! ICEPROD_BENCH_SEED=/tmp/seed-1m cargo bench --bench page_queries
//! ```
//!
//! Without `--bench`, or without `ICEPROD_BENCH_SEED`, it does nothing.

use std::time::{Duration, Instant};

mod support;

use criterion::Criterion;
use iceprod_runtime::harness::Harness;
use iceprod_runtime::web::{DatasetKey, PageData, PageQuery, Paging, TaskFilter};
use iceprod_runtime::{DbReply, DbRequest, ModuleKind};

const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// A day of the schedule's graph records (one every 10 minutes).
const GRAPH_RECORDS: u32 = 144;

fn call(h: &mut Harness, request: DbRequest) -> DbReply {
    support::call(h, request, REPLY_TIMEOUT)
}

fn page(h: &mut Harness, query: &PageQuery) -> PageData {
    match call(h, DbRequest::Page(query.clone())) {
        DbReply::Page(data) => data,
        other => panic!("not a page: {other:?}"),
    }
}

/// Times `calls` queries one by one; prints the median, p99 and max.
fn percentiles(h: &mut Harness, name: &str, query: &PageQuery, calls: usize) {
    let load = support::load_average();
    let mut samples: Vec<Duration> = (0..calls)
        .map(|_| {
            let started = Instant::now();
            page(h, query);
            started.elapsed()
        })
        .collect();
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| {name} | {calls} | {load} | {:.2} | {:.2} | {:.2} |",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(samples[samples.len() - 1])
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benchmarking = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--list");
    let Some(seed) = std::env::var_os("ICEPROD_BENCH_SEED").map(std::path::PathBuf::from) else {
        if benchmarking {
            eprintln!(
                "page_queries: set ICEPROD_BENCH_SEED to a folder written by `iceprod-load seed`"
            );
        }
        return;
    };
    if !benchmarking {
        return;
    }
    let calls: usize = std::env::var("ICEPROD_BENCH_CALLS")
        .ok()
        .map(|v| v.parse().expect("ICEPROD_BENCH_CALLS is a whole number"))
        .unwrap_or(200)
        .clamp(1, 100_000);

    // Opening migrates: a seed written before migration 5 gets its summaries filled here.
    let started = Instant::now();
    let (_dir, mut h) = support::start_db(Some(&seed));
    eprintln!(
        "page_queries: the db module started in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for _ in 0..GRAPH_RECORDS {
        call(&mut h, DbRequest::RecordGraphs);
    }

    let home = PageQuery::Home { hours: 24 };
    let dataset = PageQuery::Dataset(DatasetKey::Num(1));
    let PageData::Dataset(p) = page(&mut h, &dataset) else {
        panic!("dataset 1 is not a dataset page");
    };
    let tasks: u64 = p.task_counts.values().sum();
    eprintln!(
        "page_queries: dataset 1 has {tasks} tasks ({:?}), {} task names, {} progress points",
        p.task_counts,
        p.task_names.len(),
        p.progress.len()
    );

    let mut c = Criterion::default().configure_from_args();
    c.bench_function("home_page_query", |b| b.iter(|| page(&mut h, &home)));
    c.bench_function("dataset_page_query", |b| b.iter(|| page(&mut h, &dataset)));
    c.final_summary();

    println!(
        "\n### page_queries: the db module alone on a copy of {} ({tasks} tasks in dataset 1, \
         {GRAPH_RECORDS} graph records)\n",
        seed.display()
    );
    println!("| query | calls | load avg (1 min) | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---|---|---|---|---|");
    percentiles(&mut h, "Home { hours: 24 }", &home, calls);
    percentiles(&mut h, "Dataset(Num(1))", &dataset, calls);
    // Not a goal of the issue, for comparison: the first page of the dataset's task list.
    let tasks_page = PageQuery::Tasks {
        filter: TaskFilter {
            dataset: Some(DatasetKey::Num(1)),
            ..TaskFilter::default()
        },
        paging: Paging {
            offset: 0,
            limit: 50,
        },
    };
    percentiles(&mut h, "Tasks (dataset 1, first 50)", &tasks_page, calls);
    println!();
    let reason = h.stop(ModuleKind::Db, Duration::from_secs(30));
    eprintln!("page_queries: the db module stopped: {reason:?}");
}
