//! Measurement, not a test: how much a primary-file read of live work gains when the history
//! of ended datasets moves to the archive file (SPEC §10). Not registered in Cargo.toml:
//! cargo finds it as a bench target, and its one entry point is an ignored test, so a normal
//! test run lists it and skips it. Run it with
//!
//! ```text
//! cargo test --release --bench archive_latency -- --ignored --nocapture
//! ICEPROD_BENCH_LIVE_TASKS=20000 cargo test --release --bench archive_latency -- --ignored --nocapture
//! ```
//!
//! It builds one SQLite primary file (and its archive file, through the db crate's own
//! `store::open` and `store::attach_archive`, so the pragmas are the server's) holding one
//! processing dataset of N live tasks and 100 ended datasets of N/10 tasks each (10× the live
//! tasks as history, each task with a stat and a 2 KiB log), then times, on a read-only
//! connection set up like the server's readers, each query 2,000 times after 200 warm-up
//! runs, in a read transaction each as the reader workers do:
//! - `task counts of the live dataset` (the dataset page, `TaskCounts`);
//! - `stillrunning lookup` (one task by id: a worker's heartbeat);
//! - `all task counts` (the global counts: a scan that grows with the table).
//!
//! It then archives every ended dataset with the crate's own batches (timed), and times the
//! same queries again. Prints medians and 99th percentiles in microseconds, and file sizes.

use std::path::Path;
use std::time::{Duration, Instant};

use iceprod_db::archive;
use iceprod_db::rusqlite::{self, Connection, OpenFlags, TransactionBehavior};
use iceprod_db::sql::SqliteTx;
use iceprod_db::store;
use iceprod_runtime::DbReply;

const HISTORY_DATASETS: usize = 100;
const WARMUP: usize = 200;
const SAMPLES: usize = 2_000;

#[test]
#[ignore = "a measurement: run it with --ignored --nocapture (see the file's doc)"]
fn archive_latency() {
    let live_tasks: usize = std::env::var("ICEPROD_BENCH_LIVE_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().expect("a temporary folder");
    let primary = dir.path().join("iceprod.db");
    let archive_file = dir.path().join("iceprod-archive.db");
    let mut writer = store::open(&primary).expect("the primary file");
    drop(store::open(&archive_file).expect("the archive file"));
    store::attach_archive(&writer, &archive_file).expect("attached");

    let started = Instant::now();
    seed(&mut writer, live_tasks);
    println!(
        "seeded {live_tasks} live tasks and {} history tasks in {:.1} s",
        live_tasks * 10,
        started.elapsed().as_secs_f64()
    );
    writer
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA archive.wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    sizes("before archiving", &primary, &archive_file);
    let before = measure(&primary, &archive_file, live_tasks);

    let started = Instant::now();
    let cutoff = archive::cutoff(None, 30).expect("a cutoff");
    let mut batches = 0;
    let mut slowest = Duration::ZERO;
    loop {
        let t = Instant::now();
        let tx = writer
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("a write transaction");
        let reply = archive::archive_batch(&mut SqliteTx(&tx), &cutoff, 10).expect("a batch");
        tx.commit().expect("commit");
        slowest = slowest.max(t.elapsed());
        batches += 1;
        let DbReply::ArchiveBatch(outcome) = reply else {
            panic!("{reply:?}")
        };
        if !outcome.progressed() {
            break;
        }
    }
    println!(
        "archived {HISTORY_DATASETS} datasets in {batches} batches, {:.1} s, slowest batch {:.0} ms",
        started.elapsed().as_secs_f64(),
        slowest.as_secs_f64() * 1e3
    );
    writer
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA archive.wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    sizes("after archiving", &primary, &archive_file);
    let after = measure(&primary, &archive_file, live_tasks);

    println!("\n| query | before: median µs | p99 µs | after: median µs | p99 µs |");
    println!("|---|---|---|---|---|");
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            b.0, b.1, a.0, a.1
        );
    }
}

/// One processing dataset of `live` tasks (10 per job, a quarter of them running) and
/// `HISTORY_DATASETS` complete datasets, ended in 2020, of `live / 10` tasks each with a stat
/// and a log.
fn seed(conn: &mut Connection, live: usize) {
    let tx = conn.transaction().expect("a transaction");
    let log = "eJwrSS0uAQAEXQHB".repeat(128);
    let stat = r#"{"time_used": 1800, "hostname": "node017.example.org", "resources": {"cpu": 1, "memory": 1.4, "disk": 2.0, "time": 0.5}}"#;
    let mut dataset_rows = vec![("live".to_string(), 0usize, "processing", None, live)];
    for d in 0..HISTORY_DATASETS {
        dataset_rows.push((
            format!("h{d}"),
            d + 1,
            "complete",
            Some("2020-01-01T00:00:00.000000Z"),
            live / 10,
        ));
    }
    {
        let mut dataset = tx
            .prepare(
                "INSERT INTO dataset (dataset_id, dataset_num, status, status_changed, \
                 jobs_submitted, tasks_submitted, start_date, end_date) \
                 VALUES (?1, ?2, ?3, '2020', ?4, ?5, '2020', ?6)",
            )
            .unwrap();
        let mut config = tx
            .prepare("INSERT INTO config (dataset_id, config_data) VALUES (?1, '{}')")
            .unwrap();
        let mut rel = tx
            .prepare(
                "INSERT INTO task_rel (task_rel_id, dataset_id, task_index, name) \
                 VALUES (?1 || 'r', ?1, 0, 'main')",
            )
            .unwrap();
        let mut job = tx
            .prepare(
                "INSERT INTO job (job_id, dataset_id, job_index, status, status_changed) \
                 VALUES (?1, ?2, ?3, ?4, '2020')",
            )
            .unwrap();
        let mut task = tx
            .prepare(
                "INSERT INTO task (task_id, job_id, dataset_id, task_rel_id, task_index, status, \
                 status_changed, walltime) VALUES (?1, ?2, ?3, ?3 || 'r', ?4, ?5, '2020', 0.5)",
            )
            .unwrap();
        let mut task_stat = tx
            .prepare(
                "INSERT INTO task_stat (task_stat_id, task_id, dataset_id, create_date, stat) \
                 VALUES (?1 || 's', ?1, ?2, '2020', ?3)",
            )
            .unwrap();
        let mut task_log = tx
            .prepare(
                "INSERT INTO task_log (task_log_id, task_id, dataset_id, name, data) \
                 VALUES (?1 || 'l', ?1, ?2, 'stdout', ?3)",
            )
            .unwrap();
        for (id, num, status, end, tasks) in &dataset_rows {
            dataset
                .execute(rusqlite::params![
                    id,
                    *num as i64,
                    status,
                    (tasks / 10) as i64,
                    *tasks as i64,
                    end
                ])
                .unwrap();
            config.execute([id]).unwrap();
            rel.execute([id]).unwrap();
            for j in 0..tasks.div_ceil(10) {
                let job_id = format!("{id}j{j}");
                job.execute(rusqlite::params![job_id, id, j as i64, status])
                    .unwrap();
                for t in 0..10.min(tasks - j * 10) {
                    let task_id = format!("{job_id}t{t}");
                    let task_status = match (*status, t) {
                        ("complete", _) => "complete",
                        (_, 0..=2) => "processing",
                        (_, 3..=4) => "queued",
                        _ => "idle",
                    };
                    task.execute(rusqlite::params![
                        task_id,
                        job_id,
                        id,
                        t as i64,
                        task_status
                    ])
                    .unwrap();
                    if *status == "complete" {
                        task_stat
                            .execute(rusqlite::params![task_id, id, stat])
                            .unwrap();
                        task_log
                            .execute(rusqlite::params![task_id, id, log])
                            .unwrap();
                    }
                }
            }
        }
    }
    tx.commit().expect("seeded");
}

fn sizes(when: &str, primary: &Path, archive_file: &Path) {
    let mib = |p: &Path| std::fs::metadata(p).map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64);
    println!(
        "{when}: primary file {:.1} MiB, archive file {:.1} MiB",
        mib(primary),
        mib(archive_file)
    );
}

/// (median, p99) in microseconds per query, on a reader connection like the server's.
fn measure(primary: &Path, archive_file: &Path, live: usize) -> Vec<(&'static str, (f64, f64))> {
    let mut conn = Connection::open_with_flags(
        primary,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("a reader connection");
    store::configure(&conn).expect("pragmas");
    store::attach_archive(&conn, archive_file).expect("attached");
    conn.pragma_update(None, "query_only", true).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random_task = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = (seed % live as u64) as usize;
        format!("livej{}t{}", n / 10, n % 10)
    };
    let queries: [(&'static str, &str); 3] = [
        (
            "task counts of the live dataset",
            "SELECT status, count(*) FROM task WHERE dataset_id = 'live' GROUP BY status",
        ),
        (
            "stillrunning lookup",
            "SELECT status FROM task WHERE task_id = ?1",
        ),
        (
            "all task counts",
            "SELECT status, count(*) FROM task GROUP BY status",
        ),
    ];
    let mut out = Vec::new();
    for (name, sql) in queries {
        let mut times = Vec::with_capacity(SAMPLES);
        for i in 0..WARMUP + SAMPLES {
            let id = random_task();
            let t = Instant::now();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Deferred)
                .unwrap();
            {
                let mut stmt = tx.prepare_cached(sql).unwrap();
                let mut rows = if sql.contains("?1") {
                    stmt.query([id.as_str()]).unwrap()
                } else {
                    stmt.query([]).unwrap()
                };
                let mut n = 0;
                while rows.next().unwrap().is_some() {
                    n += 1;
                }
                assert!(n > 0, "{name} found nothing");
            }
            tx.commit().unwrap();
            if i >= WARMUP {
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        times.sort_by(f64::total_cmp);
        out.push((name, (times[SAMPLES / 2], times[SAMPLES * 99 / 100])));
    }
    out
}
