//! `iceprod-load seed`: a SQLite database of N tasks for the database figures (BENCHMARKS.md,
//! "Database (issue 3)"), with the config that serves it.
//!
//! The file is created and migrated by `iceprod_db::store::open`, so the schema is the server's
//! own; the rows are then written in one transaction with prepared statements, with the
//! durability pragmas off and the secondary indexes of the big tables dropped first and
//! created again from their own stored SQL at the end (the same indexes, built by one sort
//! each instead of a million inserts).
//!
//! What it writes (site id pinned to `b`, number 1, so ids are real global ids):
//! - one processing dataset whose config has 3 independent tasks (`generate`, `filter`,
//!   `level2`) and its 3 task_rels; `ceil(N/3)` jobs of 3 tasks (the last one may be shorter);
//! - the first `N − processing − queued` tasks `complete`, each with a task_stat row (the
//!   history); then `processing` tasks, each with its own task passkey `k<i>` (scope `task`,
//!   subject the task id); then `queued` tasks on grid `GRID`, each with its `task_lookup` row:
//!   1 in 20 needs 2 GB of memory, 1 in 20 a gpu, the rest 1 cpu / 1 GB; their
//!   `insert_time` is shared by each `--queue-batch` of them, as one `queue_tasks` call
//!   shares it;
//! - `pilots` pilot rows on `GRID`, each with its pilot passkey `p<i>`;
//! - the id counters in `setting` past every id used here, so the server mints new ones.
//!
//! Besides `var/iceprod.db` (and the empty archive file) it writes `iceprod.toml` (see
//! [`render_config`]), `processing.txt` (`TASK_ID PASSKEY` per processing task, in order) and
//! `pilots.txt` (`PILOT_ID PASSKEY`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use iceprod_db::rusqlite::{params, Connection};
use iceprod_runtime::ids;

/// The grid the queued tasks and the pilots belong to.
pub const GRID: &str = "b.bench";
/// The pinned site id (number 1).
pub const SITE_ID: &str = "b";
const SITE_NUMBER: u128 = 1;
const TASKS_PER_JOB: u64 = 3;
const TASK_NAMES: [&str; 3] = ["generate", "filter", "level2"];

#[derive(clap::Args)]
pub struct Args {
    /// Folder to create (must not exist or be empty).
    #[arg(long)]
    pub dir: PathBuf,
    /// Tasks in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub tasks: u64,
    /// Of those, processing tasks with their own passkey (stillrunning / finish_task).
    #[arg(long, default_value_t = 200_000)]
    pub processing: u64,
    /// Of those, queued tasks in the pilot lookup (new_task).
    #[arg(long, default_value_t = 100_000)]
    pub queued: u64,
    /// Pilot rows with pilot passkeys.
    #[arg(long, default_value_t = 64)]
    pub pilots: u64,
    /// Queued tasks per simulated `queue_tasks` call: they share one `insert_time`, as the
    /// tasks one call queues do (matchmaking then orders them by task id).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub queue_batch: u64,
}

/// The dataset config every seeded task belongs to: three independent tasks.
fn dataset_config() -> String {
    let tasks: Vec<serde_json::Value> = TASK_NAMES
        .iter()
        .map(|name| {
            serde_json::json!({
                "name": name,
                "requirements": {"cpu": 1, "memory": 1.0},
                "trays": [{"modules": [{"src": format!("{name}.sh"), "args": "$(job)"}]}]
            })
        })
        .collect();
    serde_json::json!({"version": 3, "description": "seeded by iceprod-load", "tasks": tasks})
        .to_string()
}

/// The config of a seeded folder (written as `DIR/iceprod.toml`, so the default `[db]` files
/// are the seeded ones): state in `DIR/var`, site `b`, website on `port`, no db schedule jobs
/// (only a website ping), archiving off, logging at `level`.
pub fn render_config(dir: &Path, port: u16, level: &str) -> String {
    crate::server::IceprodConfig {
        site_id: Some(SITE_ID.to_string()),
        log_level: level.to_string(),
        archive_after_days: Some(0),
        ..crate::server::IceprodConfig::new(port)
    }
    .render(dir)
}

/// Copies the seeded database files of `seed` into `dir/var`, so a run may change them while
/// the seed stays as it was.
pub fn copy_databases(seed: &Path, dir: &Path) -> Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(dir.join("var"))?;
    for name in ["iceprod.db", "iceprod-archive.db"] {
        let from = seed.join("var").join(name);
        std::fs::copy(&from, dir.join("var").join(name))
            .with_context(|| format!("cannot copy {}", from.display()))?;
    }
    eprintln!(
        "iceprod-load: copied the seed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The status of task `n` (0-based, in task order).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Complete,
    Processing(u64),
    Queued(u64),
}

pub fn run(args: &Args) -> Result<()> {
    if args.processing + args.queued > args.tasks {
        bail!("--processing + --queued must not exceed --tasks");
    }
    if args.dir.exists() && std::fs::read_dir(&args.dir)?.next().is_some() {
        bail!("{} exists and is not empty", args.dir.display());
    }
    let var = args.dir.join("var");
    std::fs::create_dir_all(&var).with_context(|| format!("cannot create {}", var.display()))?;
    let started = Instant::now();
    let db_file = var.join("iceprod.db");
    let mut conn = iceprod_db::store::open(&db_file)?;
    drop(iceprod_db::store::open(&var.join("iceprod-archive.db"))?);
    let migrated = started.elapsed();

    // Bulk load: nothing to make durable until the end (the file is rebuilt on failure).
    conn.execute_batch(
        "PRAGMA synchronous = OFF; PRAGMA cache_size = -524288; PRAGMA temp_store = MEMORY;",
    )?;
    let indexes = drop_secondary_indexes(
        &conn,
        &["task", "job", "passkey", "task_stat", "task_lookup"],
    )?;

    let complete = args.tasks - args.processing - args.queued;
    let part = |n: u64| {
        if n < complete {
            Part::Complete
        } else if n < complete + args.processing {
            Part::Processing(n - complete)
        } else {
            Part::Queued(n - complete - args.processing)
        }
    };
    let jobs = args.tasks.div_ceil(TASKS_PER_JOB);
    let base = chrono_like_base();
    let mut processing_list = String::with_capacity(args.processing as usize * 24);
    let mut pilot_list = String::new();

    let tx = conn.transaction()?;
    let dataset_id = ids::global_id(SITE_NUMBER, 1);
    tx.execute(
        "INSERT INTO dataset (dataset_id, dataset_num, name, description, gridspec, status, \
         status_changed, username, jobs_submitted, tasks_submitted, jobs_buffered, start_date) \
         VALUES (?1, 1, 'dataset 1', 'seeded', '', 'processing', ?2, 'bench', ?3, ?4, ?3, ?2)",
        params![dataset_id, stamp(base, 0), jobs as i64, args.tasks as i64],
    )?;
    tx.execute(
        "INSERT INTO config (dataset_id, config_data) VALUES (?1, ?2)",
        params![dataset_id, dataset_config()],
    )?;
    let rel_ids: Vec<String> = (1..=TASKS_PER_JOB as u128)
        .map(|n| ids::global_id(SITE_NUMBER, n))
        .collect();
    for (i, rel) in rel_ids.iter().enumerate() {
        tx.execute(
            "INSERT INTO task_rel (task_rel_id, dataset_id, task_index, name, requirements) \
             VALUES (?1, ?2, ?3, ?4, '{\"cpu\":1,\"memory\":1.0}')",
            params![rel, dataset_id, i as i64, TASK_NAMES[i]],
        )?;
    }
    {
        let mut job_stmt = tx.prepare(
            "INSERT INTO job (job_id, dataset_id, job_index, status, status_changed) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut task_stmt = tx.prepare(
            "INSERT INTO task (task_id, job_id, dataset_id, task_rel_id, task_index, status, \
             prev_status, status_changed, walltime, requirements, gridspec) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        let mut stat_stmt = tx.prepare(
            "INSERT INTO task_stat (task_stat_id, task_id, dataset_id, create_date, stat) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut key_stmt = tx.prepare(
            "INSERT INTO passkey (passkey_id, auth_key, scope, subject, expire) \
             VALUES (?1, ?2, ?3, ?4, '2999-01-01T00:00:00.000000Z')",
        )?;
        let mut lookup_stmt = tx.prepare(
            "INSERT INTO task_lookup (task_id, gridspec, insert_time, req_cpu, req_gpu, \
             req_memory, req_disk, req_time) VALUES (?1, ?2, ?3, 1, ?4, ?5, 1.0, 1.0)",
        )?;
        let mut passkeys: u128 = 0;
        let mut stats: u128 = 0;
        for j in 0..jobs {
            let job_id = ids::global_id(SITE_NUMBER, u128::from(j) + 1);
            let first = j * TASKS_PER_JOB;
            let last = (first + TASKS_PER_JOB).min(args.tasks);
            let job_complete = part(last - 1) == Part::Complete;
            let changed = stamp(base, first as i64);
            job_stmt.execute(params![
                job_id,
                dataset_id,
                j as i64,
                if job_complete {
                    "complete"
                } else {
                    "processing"
                },
                changed
            ])?;
            for n in first..last {
                let t = (n - first) as usize;
                let task_id = ids::global_id(SITE_NUMBER, u128::from(n) + 1);
                let changed = stamp(base, n as i64);
                let (status, prev, walltime, gpu, memory, grid) = match part(n) {
                    Part::Complete => ("complete", Some("processing"), 1.0, 0, 1.0, None),
                    Part::Processing(_) => ("processing", Some("queued"), 0.0, 0, 1.0, Some(GRID)),
                    Part::Queued(q) => {
                        let (gpu, memory) = match q % 20 {
                            7 => (0, 2.0),
                            13 => (1, 1.0),
                            _ => (0, 1.0),
                        };
                        ("queued", Some("idle"), 0.0, gpu, memory, Some(GRID))
                    }
                };
                let requirements = format!(
                    "{{\"cpu\":1,\"gpu\":{gpu},\"memory\":{memory:.1},\"disk\":1.0,\"time\":1.0,\
                     \"os\":null}}"
                );
                task_stmt.execute(params![
                    task_id,
                    job_id,
                    dataset_id,
                    rel_ids[t],
                    t as i64,
                    status,
                    prev,
                    changed,
                    walltime,
                    requirements,
                    grid
                ])?;
                match part(n) {
                    Part::Complete => {
                        stats += 1;
                        stat_stmt.execute(params![
                            ids::global_id(SITE_NUMBER, stats),
                            task_id,
                            dataset_id,
                            changed,
                            "{\"hostname\":\"seed\",\"time_used\":3600,\"task_stats\":{}}"
                        ])?;
                    }
                    Part::Processing(i) => {
                        passkeys += 1;
                        let key = format!("k{i}");
                        key_stmt.execute(params![ids::encode(passkeys), key, "task", task_id])?;
                        let _ = writeln!(processing_list, "{task_id} {key}");
                    }
                    Part::Queued(q) => {
                        let first_of_call = n - q % args.queue_batch;
                        let inserted = stamp(base, first_of_call as i64);
                        lookup_stmt.execute(params![task_id, GRID, inserted, gpu, memory])?;
                    }
                }
            }
        }
        for p in 0..args.pilots {
            let pilot_id = ids::encode(u128::from(p) + 1);
            tx.execute(
                "INSERT INTO pilot (pilot_id, gridspec, submit_time, last_update) \
                 VALUES (?1, ?2, ?3, ?3)",
                params![pilot_id, GRID, stamp(base, 0)],
            )?;
            passkeys += 1;
            let key = format!("p{p}");
            key_stmt.execute(params![ids::encode(passkeys), key, "pilot", pilot_id])?;
            let _ = writeln!(pilot_list, "{pilot_id} {key}");
        }
        for (kind, value) in [
            ("dataset", 1u128),
            ("task_rel", TASKS_PER_JOB as u128),
            ("job", u128::from(jobs)),
            ("task", u128::from(args.tasks)),
            ("task_stat", stats),
            ("passkey", passkeys),
            ("pilot", u128::from(args.pilots)),
        ] {
            tx.execute(
                "UPDATE setting SET value = ?1 WHERE name = ?2",
                params![value.to_string(), format!("counter.{kind}")],
            )?;
        }
    }
    tx.commit()?;
    let rows_done = started.elapsed();
    for sql in &indexes {
        conn.execute_batch(sql)?;
    }
    let indexed = started.elapsed();
    // No ANALYZE: the server never runs it, so the planner here must see what it sees there.
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    drop(conn);
    let finished = started.elapsed();

    std::fs::write(args.dir.join("processing.txt"), processing_list)?;
    std::fs::write(args.dir.join("pilots.txt"), pilot_list)?;
    let config = args.dir.join("iceprod.toml");
    std::fs::File::create(&config)?.write_all(render_config(&args.dir, 8080, "warn").as_bytes())?;
    let size = std::fs::metadata(&db_file)?.len();
    eprintln!(
        "iceprod-load: seeded {} in {:.1} s",
        args.dir.display(),
        finished.as_secs_f64()
    );
    println!(
        "### seed: {} tasks into {}\n",
        args.tasks,
        db_file.display()
    );
    let mut table = crate::report::Table::new(&["step", "done after (s)"]);
    table.row(vec![
        "create + migrate (store::open)".into(),
        format!("{:.2}", migrated.as_secs_f64()),
    ]);
    table.row(vec![
        format!(
            "rows: {jobs} jobs, {} tasks ({complete} complete with a task_stat, {} processing \
             with a passkey, {} queued in task_lookup, {} per insert_time), {} pilots",
            args.tasks, args.processing, args.queued, args.queue_batch, args.pilots
        ),
        format!("{:.2}", rows_done.as_secs_f64()),
    ]);
    table.row(vec![
        format!("{} secondary indexes rebuilt", indexes.len()),
        format!("{:.2}", indexed.as_secs_f64()),
    ]);
    table.row(vec![
        "WAL checkpoint".into(),
        format!("{:.2}", finished.as_secs_f64()),
    ]);
    table.print();
    println!("Database file: {:.0} MB.\n", size as f64 / 1e6);
    Ok(())
}

/// Drops the secondary indexes of `tables` that can be dropped (not those behind a UNIQUE or
/// PRIMARY KEY column), returning their SQL to create them again.
fn drop_secondary_indexes(conn: &Connection, tables: &[&str]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 \
         AND sql IS NOT NULL",
    )?;
    for table in tables {
        let rows: Vec<(String, String)> = stmt
            .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (name, sql) in rows {
            conn.execute_batch(&format!("DROP INDEX \"{name}\""))?;
            out.push(sql);
        }
    }
    Ok(out)
}

/// The seed's time base: a fixed day, so every timestamp is in the past.
fn chrono_like_base() -> &'static str {
    "2026-01-01T00:00:00"
}

/// `base` plus `micros` microseconds, in the stored format (microseconds wrap into seconds,
/// minutes and hours within the day; a million tasks span under 17 minutes).
fn stamp(base: &str, micros: i64) -> String {
    let secs = micros / 1_000_000;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let mut out = String::with_capacity(27);
    let _ = write!(
        out,
        "{}T{:02}:{:02}:{:02}.{:06}Z",
        &base[..10],
        h,
        m,
        s,
        micros % 1_000_000
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_in_the_stored_format_and_in_order() {
        assert_eq!(stamp(chrono_like_base(), 0), "2026-01-01T00:00:00.000000Z");
        assert_eq!(
            stamp(chrono_like_base(), 3_723_000_001),
            "2026-01-01T01:02:03.000001Z"
        );
        assert!(stamp(chrono_like_base(), 999_999) < stamp(chrono_like_base(), 1_000_000));
    }
}
