//! The queue and worker figures (BENCHMARKS.md, "Queue and worker (issue 4)"):
//!
//! - `local-grid`: N one-second tasks through the real server's queue on the `local` grid at a
//!   given concurrency; wall time from `submit_dataset` to the last task complete, against
//!   the ideal `N × seconds / concurrency`, and CPU per task of the server and of its children
//!   (the workers), from `/proc/PID/stat` ([`local_grid`]);
//! - `task-overhead`: `iceprod task` for a trivial task (`/bin/true`), end to end (the
//!   process exits once `finish_task` was acknowledged), and its peak RSS from `wait4`,
//!   against fork/exec of `/bin/true` in the same run ([`task_overhead`]);
//! - `queue-cycle`: one queue cycle of the real db and queue modules (under the runtime's
//!   `Harness`, in this process) with 100,000 queued tasks on a slurm grid, 10,000 of them
//!   with grid jobs that a stand-in `squeue` lists ([`queue_cycle`]).
//!
//! Every server and child is stopped on every path (the `Child` of `server.rs` for servers;
//! the workers run to their end).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use iceprod_db::rusqlite::{self, params};
use serde_json::{json, Value};

use crate::db::{chrono_free_now, rss_and_hwm};
use crate::http::Connection;
use crate::report::{fmt_opt, median, met, quantile_sorted, Table};
use crate::server::{self, Child, IceprodConfig};

/// Goals of the issue.
const GOAL_WALL_RATIO: f64 = 1.15;
const GOAL_TASK_MS: f64 = 30.0;
const GOAL_TASK_RSS_MB: f64 = 10.0;
const GOAL_CYCLE_S: f64 = 1.0;
/// The grid every figure uses; its gridspec is `SITE.bench`.
const GRID: &str = "bench";

// ---- shared pieces ----

/// The 1-, 5- and 15-minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// A private folder for a run: `--dir` when given (created), else a temporary one.
fn run_dir(dir: &Option<PathBuf>, prefix: &str) -> Result<(Option<tempfile::TempDir>, PathBuf)> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            Ok((None, d.clone()))
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .context("cannot create a temporary folder")?;
            let path = tmp.path().to_path_buf();
            Ok((Some(tmp), path))
        }
    }
}

/// Writes the harness's base config (`server.rs`) with `extra` tables appended.
fn write_config(dir: &Path, port: u16, extra: &str) -> Result<PathBuf> {
    let file = dir.join("iceprod.toml");
    std::fs::create_dir_all(dir.join("var"))?;
    let mut text = IceprodConfig::new(port).render(dir);
    text.push('\n');
    text.push_str(extra);
    let tmp = dir.join("iceprod.toml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &file)?;
    Ok(file)
}

/// Starts the server on `config` and waits for its first echo and its admin passkey.
fn start_server(binary: &Path, dir: &Path, config: &Path, port: u16) -> Result<(Child, String)> {
    let mut child = Child::spawn_iceprod(binary, config, &dir.join("server.log"))?;
    child.wait_until_ready(
        port,
        Instant::now(),
        server::START_TIMEOUT,
        server::probe_echo,
        server::echo_answered,
    )?;
    let key_file = dir.join("var/admin.passkey");
    let deadline = Instant::now() + server::START_TIMEOUT;
    loop {
        if let Ok(key) = std::fs::read_to_string(&key_file) {
            if !key.trim().is_empty() {
                return Ok((child, key.trim().to_string()));
            }
        }
        child.ensure_running()?;
        if Instant::now() > deadline {
            bail!("no admin passkey in {}", key_file.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One JSON-RPC call on a fresh connection; the `result`, or an error with the answer.
fn rpc(port: u16, method: &str, params: Value) -> Result<Value> {
    let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1}).to_string();
    let mut c = Connection::connect(port, Duration::from_secs(30))?;
    let r = c.post_jsonrpc(&body)?;
    let v: Value = serde_json::from_slice(&r.body)
        .with_context(|| format!("{method}: HTTP {} with a body that is not JSON", r.status))?;
    if r.status != 200 || v.get("error").is_some_and(|e| !e.is_null()) {
        bail!("{method}: HTTP {}: {v}", r.status);
    }
    Ok(v["result"].clone())
}

/// Submits a one-task dataset of `njobs` jobs whose module is `src args`; its id.
fn submit(port: u16, key: &str, src: &str, args: &[&str], njobs: u64) -> Result<String> {
    let config = json!({
        "version": 3,
        "description": "iceprod-load grid figures",
        "tasks": [{
            "name": "t",
            "requirements": {"cpu": 1, "memory": 0.5, "disk": 0.5, "time": 0.1},
            "trays": [{"name": "t", "modules": [{"name": "m", "src": src, "args": args}]}]
        }]
    });
    let id = rpc(
        port,
        "submit_dataset",
        json!({"passkey": key, "config": config, "njobs": njobs,
               "description": "iceprod-load"}),
    )?;
    id.as_str()
        .map(str::to_string)
        .with_context(|| format!("submit_dataset answered {id}"))
}

/// The server's database, for reads while it runs (WAL).
fn open_db(dir: &Path) -> Result<rusqlite::Connection> {
    let file = dir.join("var/iceprod.db");
    let conn = rusqlite::Connection::open(&file)
        .with_context(|| format!("cannot open {}", file.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

/// Task counts by status of one dataset.
fn states(conn: &rusqlite::Connection, dataset: &str) -> Result<BTreeMap<String, i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT status, count(*) FROM task WHERE dataset_id = ?1 GROUP BY status",
    )?;
    let rows = stmt.query_map([dataset], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// CPU seconds of a process from `/proc/PID/stat`: (utime + stime, cutime + cstime), the
/// second being its waited-for children (and theirs).
fn cpu_seconds(pid: u32) -> Result<(f64, f64)> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("bad /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14 → index 11.
    let num = |i: usize| -> Result<f64> {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("field {} of {path}", i + 3))
    };
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(((num(11)? + num(12)?) / tck, (num(13)? + num(14)?) / tck))
}

/// VmHWM (peak RSS) of a process, in kB, from db's reading of `/proc/PID/status`.
fn vm_hwm_kb(pid: u32) -> Option<u64> {
    rss_and_hwm(pid).ok().map(|(_, hwm)| hwm)
}

fn write_script(path: &Path, body: &str) -> Result<()> {
    std::fs::write(path, format!("#!/bin/sh\n{body}"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

// ---- 1. local grid ----

#[derive(clap::Args)]
pub struct LocalGridArgs {
    /// The iceprod binary (for example target/release/iceprod); the workers run it too.
    #[arg(long)]
    iceprod: PathBuf,
    /// Tasks (one job of one task each).
    #[arg(long, default_value_t = 1000)]
    tasks: u64,
    /// What each task does: `sleep SECONDS` (through `/bin/sh -c`).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// `max_running` of the local grid.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// `tasks_on_queue` as MIN,MAX,CHANGE (default: 10, 50 and 10 × concurrency).
    #[arg(long)]
    tasks_on_queue: Option<String>,
    /// `[queue] interval`.
    #[arg(long, default_value = "1s")]
    interval: String,
    /// `[queue] task_buffer` (jobs buffered per cycle).
    #[arg(long, default_value_t = 100)]
    task_buffer: u64,
    /// Keep the run's files here (created) instead of a temporary folder.
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn local_grid(args: &LocalGridArgs) -> Result<()> {
    server::check_binary(&args.iceprod, "iceprod")?;
    let c = u64::from(args.concurrency.max(1));
    let toq = args
        .tasks_on_queue
        .clone()
        .unwrap_or_else(|| format!("{},{},{}", 10 * c, 50 * c, 10 * c));
    let (_tmp, dir) = run_dir(&args.dir, "iceprod-load-local-")?;
    let port = server::free_port()?;
    let extra = format!(
        "[modules]\nqueue = true\n\n[queue]\ninterval = \"{interval}\"\ntask_buffer = {buffer}\n\n\
         [queue.grids.{GRID}]\ntype = \"local\"\nmax_running = {c}\ntasks_on_queue = [{toq}]\n",
        interval = args.interval,
        buffer = args.task_buffer,
    );
    let config = write_config(&dir, port, &extra)?;
    let (mut child, key) = start_server(&args.iceprod, &dir, &config, port)?;
    let pid = child.pid();
    let conn = open_db(&dir)?;
    let load_before = loadavg();
    let at = chrono_free_now();
    let (cpu0, children0) = cpu_seconds(pid)?;
    let started = Instant::now();
    let script = format!("sleep {}", args.seconds);
    let dataset = submit(port, &key, "/bin/sh", &["-c", &script], args.tasks)?;
    let ideal = args.tasks as f64 * args.seconds / c as f64;
    let deadline = started + Duration::from_secs_f64(ideal * 3.0 + 120.0);
    let mut last_note = Instant::now();
    let mut load_mid = String::new();
    let wall = loop {
        let s = states(&conn, &dataset)?;
        let complete = s.get("complete").copied().unwrap_or(0);
        if complete as u64 == args.tasks {
            break started.elapsed();
        }
        if s.keys().any(|k| k == "failed" || k == "suspended") {
            bail!("a task failed: {s:?}\n{}", child.log_tail(20));
        }
        child.ensure_running()?;
        if Instant::now() > deadline {
            bail!("not done after {:?}: {s:?}", started.elapsed());
        }
        if last_note.elapsed() > Duration::from_secs(30) {
            last_note = Instant::now();
            if load_mid.is_empty() && started.elapsed().as_secs_f64() > ideal / 2.0 {
                load_mid = loadavg();
            }
            eprintln!(
                "iceprod-load: {:.0} s: {s:?} (load {})",
                started.elapsed().as_secs_f64(),
                loadavg()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (cpu1, children1) = cpu_seconds(pid)?;
    let load_after = loadavg();
    let hwm = vm_hwm_kb(pid);
    let failures: i64 = conn.query_row(
        "SELECT coalesce(sum(failures), 0) FROM task WHERE dataset_id = ?1",
        [&dataset],
        |r| r.get(0),
    )?;
    let lines_warn = child.log_lines_containing("warn") + child.log_lines_containing("error");
    let exit = child.stop()?;
    let n = args.tasks as f64;
    let wall_s = wall.as_secs_f64();
    let ratio = wall_s / ideal;
    println!(
        "### local-grid: {} tasks of `sleep {}` at concurrency {c} ({at})\n",
        args.tasks, args.seconds
    );
    println!(
        "Config: `[queue] interval = \"{}\"`, `task_buffer = {}`, `[queue.grids.{GRID}] type = \
         \"local\"`, `max_running = {c}`, `tasks_on_queue = [{toq}]`. Load average (1/5/15 min) \
         before: {load_before}; midway: {}; after: {load_after}.\n",
        args.interval,
        args.task_buffer,
        if load_mid.is_empty() {
            "–"
        } else {
            &load_mid
        }
    );
    let mut t = Table::new(&["figure", "value"]);
    t.row(vec![
        "wall: submit_dataset → last task complete (s)".into(),
        format!("{wall_s:.1}"),
    ]);
    t.row(vec![
        format!("ideal: {} × {} s / {c} (s)", args.tasks, args.seconds),
        format!("{ideal:.1}"),
    ]);
    t.row(vec![
        format!("wall / ideal (goal ≤ {GOAL_WALL_RATIO})"),
        format!("**{ratio:.3}** ({})", met(ratio <= GOAL_WALL_RATIO)),
    ]);
    t.row(vec![
        format!(
            "overhead per task per slot: (wall − ideal) / ({} / {c}) (ms)",
            args.tasks
        ),
        format!("{:.1}", (wall_s - ideal) * 1000.0 / (n / c as f64)),
    ]);
    t.row(vec![
        "server CPU (utime+stime) during the run (s)".into(),
        format!("{:.2}", cpu1 - cpu0),
    ]);
    t.row(vec![
        "server CPU per task (ms)".into(),
        format!("{:.2}", (cpu1 - cpu0) * 1000.0 / n),
    ]);
    t.row(vec![
        "children CPU (cutime+cstime: job.sh → iceprod task → sh/sleep) per task (ms)".into(),
        format!("{:.2}", (children1 - children0) * 1000.0 / n),
    ]);
    t.row(vec![
        "server VmHWM at the end (MB)".into(),
        fmt_opt(hwm.map(|k| k as f64 / 1024.0), 1),
    ]);
    t.row(vec!["task failures (sum)".into(), failures.to_string()]);
    t.row(vec![
        "server log lines with warn/error".into(),
        lines_warn.to_string(),
    ]);
    t.row(vec!["server exit after SIGTERM".into(), exit.to_string()]);
    t.print();
    Ok(())
}

// ---- 2. iceprod task overhead ----

#[derive(clap::Args)]
pub struct TaskOverheadArgs {
    /// The iceprod binary; the server and the workers.
    #[arg(long)]
    iceprod: PathBuf,
    /// Tasks, i.e. `iceprod task` runs (and as many `/bin/true` baseline runs).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=5000))]
    runs: u64,
    /// Keep the run's files here (created) instead of a temporary folder.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// One timed child: wall time from spawn to reaped, and `ru_maxrss` from `wait4`.
struct Timed {
    ms: f64,
    maxrss_kb: i64,
    status: ExitStatus,
}

/// Spawns `command` and reaps it with `wait4`, timing spawn → reaped.
fn run_timed(command: &mut Command) -> Result<Timed> {
    let started = Instant::now();
    let child = command.spawn().context("cannot spawn")?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own unreaped child, with valid pointers to locals. `child` is not
    // waited for by std afterwards (dropping a std Child does not wait).
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if rc != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    drop(child);
    Ok(Timed {
        ms,
        maxrss_kb: usage.ru_maxrss,
        status: ExitStatus::from_raw(status),
    })
}

/// `'…'` (with `'\''`) or a plain word, as `shell_quote` in the queue module writes them.
fn shell_unquote(word: &str) -> String {
    let mut out = String::new();
    let mut chars = word.chars();
    let mut quoted = false;
    while let Some(ch) = chars.next() {
        match ch {
            '\'' => quoted = !quoted,
            '\\' if !quoted => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            _ => out.push(ch),
        }
    }
    out
}

/// Splits a line of shell words written by `shell_quote` (no other quoting).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\'' => {
                quoted = !quoted;
                cur.push(ch);
                any = true;
            }
            '\\' if !quoted => {
                cur.push(ch);
                cur.extend(chars.next());
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(shell_unquote(&cur));
                    cur.clear();
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(shell_unquote(&cur));
    }
    words
}

/// Environment variables, in order.
type Env = Vec<(String, String)>;

/// What a batch system would run from a submit folder's batch file: its `export`s and the
/// argv of its `exec` line.
fn batch_job(file: &Path) -> Result<(Env, Vec<String>)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut env = Vec::new();
    let mut argv = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("export ") {
            if let Some((k, v)) = rest.split_once('=') {
                env.push((k.to_string(), shell_unquote(v)));
            }
        } else if let Some(rest) = line.strip_prefix("exec ") {
            argv = shell_words(rest);
        }
    }
    if argv.is_empty() {
        bail!("no exec line in {}", file.display());
    }
    Ok((env, argv))
}

fn stats_row(table: &mut Table, what: &str, mut values: Vec<f64>, digits: usize) {
    values.sort_by(f64::total_cmp);
    let q = |p: f64| fmt_opt(quantile_sorted(&values, p), digits);
    table.row(vec![
        what.into(),
        values.len().to_string(),
        fmt_opt(median(&values), digits),
        q(0.9),
        fmt_opt(values.first().copied(), digits),
        fmt_opt(values.last().copied(), digits),
    ]);
}

pub fn task_overhead(args: &TaskOverheadArgs) -> Result<()> {
    server::check_binary(&args.iceprod, "iceprod")?;
    let (_tmp, dir) = run_dir(&args.dir, "iceprod-load-task-")?;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    // A stand-in slurm that accepts every job and runs none: the harness runs each job itself.
    write_script(&bin.join("sbatch"), "echo $$\n")?;
    write_script(&bin.join("squeue"), "exit 0\n")?;
    write_script(
        &bin.join("scontrol"),
        "echo 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n",
    )?;
    write_script(
        &bin.join("sacct"),
        "echo 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n",
    )?;
    write_script(&bin.join("scancel"), "exit 0\n")?;
    let port = server::free_port()?;
    let n = args.runs;
    let queue = |on: bool| {
        format!(
            "[modules]\nqueue = {on}\n\n[queue]\ninterval = \"1s\"\ntask_buffer = {n}\n\
             lost_grace = \"1h\"\n\n[queue.grids.{GRID}]\ntype = \"slurm\"\nbin_dir = \"{}\"\n\
             tasks_on_queue = [{n}, {n}, {n}]\n",
            bin.display()
        )
    };
    let config = write_config(&dir, port, &queue(true))?;
    let (mut child, key) = start_server(&args.iceprod, &dir, &config, port)?;
    let conn = open_db(&dir)?;
    let dataset = submit(port, &key, "/bin/true", &[], n)?;
    // The queue buffers, queues (a task passkey each) and submits every task to the stand-in.
    let deadline = Instant::now() + Duration::from_secs(60 + n / 10);
    let jobs: Vec<(String, String)> = loop {
        let rows: Vec<(String, String)> = conn
            .prepare_cached(
                "SELECT task_id, submit_dir FROM task WHERE dataset_id = ?1 AND status = 'queued' \
                 AND grid_queue_id IS NOT NULL AND submit_dir IS NOT NULL ORDER BY task_id",
            )?
            .query_map([&dataset], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if rows.len() as u64 == n {
            break rows;
        }
        child.ensure_running()?;
        if Instant::now() > deadline {
            bail!(
                "{} of {n} tasks submitted: {:?}\n{}",
                rows.len(),
                states(&conn, &dataset)?,
                child.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The queue module off for the measurement: no cycles on the CPUs meanwhile.
    write_config(&dir, port, &queue(false))?;
    child.signal(libc::SIGHUP)?;
    std::thread::sleep(Duration::from_secs(3));
    child.ensure_running()?;
    let load_before = loadavg();
    let at = chrono_free_now();
    let mut task_ms = Vec::new();
    let mut task_rss = Vec::new();
    let mut base_ms = Vec::new();
    let mut base_rss = Vec::new();
    let mut failed = Vec::new();
    let (cpu0, _) = cpu_seconds(child.pid())?;
    for (i, (task_id, submit_dir)) in jobs.iter().enumerate() {
        let folder = PathBuf::from(submit_dir);
        let (env, argv) = batch_job(&folder.join("job.slurm"))?;
        let out = |name: &str| File::create(folder.join(name));
        let mut worker = Command::new(&argv[0]);
        worker
            .args(&argv[1..])
            .envs(env)
            .current_dir(&folder)
            .stdin(Stdio::null())
            .stdout(out("job.out")?)
            .stderr(out("job.err")?);
        let mut baseline = Command::new("/bin/true");
        baseline
            .current_dir(&folder)
            .stdin(Stdio::null())
            .stdout(out("true.out")?)
            .stderr(out("true.err")?);
        // Alternate the order, so neither always runs right after the other.
        let (w, b) = if i % 2 == 0 {
            let w = run_timed(&mut worker)?;
            (w, run_timed(&mut baseline)?)
        } else {
            let b = run_timed(&mut baseline)?;
            (run_timed(&mut worker)?, b)
        };
        if !w.status.success() {
            failed.push(format!("{task_id}: {}", w.status));
        }
        task_ms.push(w.ms);
        task_rss.push(w.maxrss_kb as f64 / 1024.0);
        base_ms.push(b.ms);
        base_rss.push(b.maxrss_kb as f64 / 1024.0);
    }
    let (cpu1, _) = cpu_seconds(child.pid())?;
    let load_after = loadavg();
    let s = states(&conn, &dataset)?;
    let complete = s.get("complete").copied().unwrap_or(0);
    let exit = child.stop()?;
    let med = median(&task_ms).unwrap_or(f64::NAN);
    let med_base = median(&base_ms).unwrap_or(f64::NAN);
    let rss = median(&task_rss).unwrap_or(f64::NAN);
    println!("### task-overhead: {n} runs of `iceprod task` for a `/bin/true` task ({at})\n");
    println!(
        "Each task was queued and submitted by the server's own queue (stand-in `sbatch` that \
         accepts and runs nothing), then the queue module was turned off (reload) and each job \
         run here as a batch system would: the `exec` line of its `job.slurm`, with its \
         `export`s, in its submit folder. Load average (1/5/15 min) before: {load_before}; \
         after: {load_after}. Tasks complete afterwards: {complete} of {n} ({s:?}); worker \
         exits not 0: {}. Server CPU during the runs: {:.2} ms per task. Server exit: \
         {exit}.\n",
        failed.len(),
        (cpu1 - cpu0) * 1000.0 / n as f64
    );
    let mut t = Table::new(&["what", "runs", "median", "p90", "min", "max"]);
    stats_row(&mut t, "`iceprod task`: spawn → exit (ms)", task_ms, 2);
    stats_row(&mut t, "`/bin/true`: spawn → exit (ms)", base_ms, 2);
    stats_row(&mut t, "`iceprod task`: ru_maxrss (MB)", task_rss, 2);
    stats_row(&mut t, "`/bin/true`: ru_maxrss (MB)", base_rss, 2);
    t.print();
    let mut g = Table::new(&["goal", "median", "met"]);
    g.row(vec![
        format!("process start → finish_task acknowledged ≤ {GOAL_TASK_MS} ms"),
        format!("{med:.2} ms ({med_base:.2} ms of it is what `/bin/true` costs)"),
        met(med <= GOAL_TASK_MS),
    ]);
    g.row(vec![
        format!("peak RSS ≤ {GOAL_TASK_RSS_MB} MB"),
        format!("{rss:.2} MB"),
        met(rss <= GOAL_TASK_RSS_MB),
    ]);
    g.print();
    if let Some(f) = failed.first() {
        bail!("{} worker runs failed, the first {f}", failed.len());
    }
    Ok(())
}

// ---- 3. one queue cycle ----

#[derive(clap::Args)]
pub struct QueueCycleArgs {
    /// Queued tasks on the grid.
    #[arg(long, default_value_t = 100_000)]
    tasks: u64,
    /// Of those, tasks with a grid job that `squeue` lists.
    #[arg(long, default_value_t = 10_000)]
    jobs: u64,
    /// Of the listed jobs, this many as COMPLETED (ended without their task reporting):
    /// each cycle resets their tasks (one ResetGridTasks write); the harness puts them back
    /// (queued, same grid id) between cycles, untimed.
    #[arg(long, default_value_t = 0)]
    ended: u64,
    /// Timed cycles (after the first, untimed one the module runs at its start).
    #[arg(long, default_value_t = 7)]
    cycles: u32,
    /// Keep the run's files here (created) instead of a temporary folder.
    #[arg(long)]
    dir: Option<PathBuf>,
}

const SITE: &str = "b";
const SITE_NUMBER: u128 = 1;

/// One processing dataset of `tasks` one-task jobs, every task queued on `b.bench` and
/// changed just now (so no stuck or lost reset applies); the first `jobs` with grid ids
/// `1000001…`. Written as `seed.rs` writes rows, into a database made by `store::open`.
fn seed_cycle_db(file: &Path, gridspec: &str, tasks: u64, jobs: u64) -> Result<()> {
    use iceprod_runtime::ids::global_id;
    let mut conn = iceprod_db::store::open(file)?;
    drop(iceprod_db::store::open(
        &file.with_file_name("iceprod-archive.db"),
    )?);
    conn.execute_batch("PRAGMA synchronous = OFF;")?;
    let now: String = conn.query_row(
        "SELECT strftime('%Y-%m-%dT%H:%M:%S', 'now') || '.000000Z'",
        [],
        |r| r.get(0),
    )?;
    let dataset = global_id(SITE_NUMBER, 1);
    let rel = global_id(SITE_NUMBER, 1);
    let tx = conn.transaction()?;
    let config = json!({"version": 3, "tasks": [{"name": "t", "requirements": {"cpu": 1},
        "trays": [{"modules": [{"src": "/bin/true"}]}]}]});
    tx.execute(
        "INSERT INTO dataset (dataset_id, dataset_num, name, description, gridspec, status, \
         status_changed, username, jobs_submitted, tasks_submitted, jobs_buffered, start_date) \
         VALUES (?1, 1, 'dataset 1', 'seeded', '', 'processing', ?2, 'bench', ?3, ?3, ?3, ?2)",
        params![dataset, now, tasks as i64],
    )?;
    tx.execute(
        "INSERT INTO config (dataset_id, config_data) VALUES (?1, ?2)",
        params![dataset, config.to_string()],
    )?;
    tx.execute(
        "INSERT INTO task_rel (task_rel_id, dataset_id, task_index, name, requirements) \
         VALUES (?1, ?2, 0, 't', '{\"cpu\":1}')",
        params![rel, dataset],
    )?;
    {
        let mut job = tx.prepare(
            "INSERT INTO job (job_id, dataset_id, job_index, status, status_changed) \
             VALUES (?1, ?2, ?3, 'processing', ?4)",
        )?;
        let mut task = tx.prepare(
            "INSERT INTO task (task_id, job_id, dataset_id, task_rel_id, task_index, status, \
             prev_status, status_changed, requirements, grid_queue_id, submit_dir, gridspec) \
             VALUES (?1, ?2, ?3, ?4, 0, 'queued', 'idle', ?5, ?6, ?7, ?8, ?9)",
        )?;
        for i in 0..tasks {
            let id = global_id(SITE_NUMBER, u128::from(i) + 1);
            job.execute(params![id, dataset, i as i64, now])?;
            let (grid_id, submit_dir) = if i < jobs {
                (
                    Some((1_000_001 + i).to_string()),
                    Some(format!("/nonexistent/submit/{GRID}/{id}")),
                )
            } else {
                (None, None)
            };
            task.execute(params![
                id,
                id,
                dataset,
                rel,
                now,
                "{\"cpu\":1,\"gpu\":0,\"memory\":1.0,\"disk\":1.0,\"time\":1.0,\"os\":null}",
                grid_id,
                submit_dir,
                gridspec
            ])?;
        }
        for (kind, value) in [
            ("dataset", 1u128),
            ("task_rel", 1),
            ("job", u128::from(tasks)),
            ("task", u128::from(tasks)),
        ] {
            tx.execute(
                "UPDATE setting SET value = ?1 WHERE name = ?2",
                params![value.to_string(), format!("counter.{kind}")],
            )?;
        }
    }
    tx.commit()?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(())
}

/// Puts the tasks of the first `ended` grid jobs back as seeded: queued, on the grid, with
/// their grid id, changed now, no failures.
fn restore_ended(conn: &rusqlite::Connection, gridspec: &str, ended: u64) -> Result<()> {
    use iceprod_runtime::ids::global_id;
    conn.execute_batch("BEGIN IMMEDIATE")?;
    {
        let mut stmt = conn.prepare_cached(
            "UPDATE task SET status = 'queued', prev_status = 'idle', failures = 0, \
             status_changed = strftime('%Y-%m-%dT%H:%M:%S', 'now') || '.000000Z', \
             grid_queue_id = ?1, gridspec = ?2 WHERE task_id = ?3",
        )?;
        for i in 0..ended {
            let id = global_id(SITE_NUMBER, u128::from(i) + 1);
            stmt.execute(params![(1_000_001 + i).to_string(), gridspec, id])?;
        }
    }
    conn.execute_batch("COMMIT")?;
    Ok(())
}

pub fn queue_cycle(args: &QueueCycleArgs) -> Result<()> {
    use iceprod_runtime::harness::Harness;
    use iceprod_runtime::{Config, DbReply, DbRequest, ModuleKind, QueueRequest, Reply, Request};
    if args.jobs > args.tasks || args.ended > args.jobs {
        bail!("--jobs must not exceed --tasks, nor --ended --jobs");
    }
    let (_tmp, dir) = run_dir(&args.dir, "iceprod-load-cycle-")?;
    let var = dir.join("var");
    std::fs::create_dir_all(&var)?;
    let db_file = var.join("iceprod.db");
    if db_file.exists() {
        bail!("{} exists; give an empty --dir", db_file.display());
    }
    let gridspec = format!("{SITE}.{GRID}");
    let seeded = Instant::now();
    seed_cycle_db(&db_file, &gridspec, args.tasks, args.jobs)?;
    let seed_s = seeded.elapsed().as_secs_f64();
    // What `squeue --me -h -t all -o '%i|%T|%r'` prints for the grid's jobs: every job listed,
    // the first `--ended` completed, a third of the others running, the rest pending.
    let mut listing = String::new();
    for i in 0..args.jobs {
        let id = 1_000_001 + i;
        if i < args.ended {
            let _ = writeln!(listing, "{id}|COMPLETED|None");
        } else if i % 3 == 0 {
            let _ = writeln!(listing, "{id}|RUNNING|None");
        } else {
            let _ = writeln!(listing, "{id}|PENDING|Priority");
        }
    }
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let listing_file = dir.join("squeue.out");
    std::fs::write(&listing_file, &listing)?;
    write_script(
        &bin.join("squeue"),
        &format!("exec cat '{}'\n", listing_file.display()),
    )?;
    for tool in ["sbatch", "scontrol", "sacct", "scancel"] {
        // Never reached here (nothing to submit, every job listed); fails loudly if it is.
        write_script(
            &bin.join(tool),
            "echo 'not expected in this bench' >&2\nexit 2\n",
        )?;
    }
    let text = format!(
        "[site]\nid = \"{SITE}\"\nstate_dir = \"var\"\n\n[db]\npath = \"var/iceprod.db\"\n\
         archive_path = \"var/iceprod-archive.db\"\narchive_after_days = 0\n\n\
         [queue]\ninterval = \"1h\"\nsubmit_dir = \"var/submit\"\n\n\
         [queue.grids.{GRID}]\ntype = \"slurm\"\nbin_dir = \"{}\"\ntasks_on_queue = [1, 100, 50]\n",
        bin.display()
    );
    let config = Config::parse(&text, &dir.join("iceprod.toml"), &ModuleKind::ALL)
        .map_err(|e| anyhow::anyhow!("the bench config: {e}"))?;
    let mut h = Harness::new(config);
    h.start::<iceprod_db::Db>()
        .map_err(|e| anyhow::anyhow!("the db module did not start: {e:?}"))?;
    h.start::<iceprod_queue::Queue>()
        .map_err(|e| anyhow::anyhow!("the queue module did not start: {e:?}"))?;
    let report = |h: &Harness| h.stats().grid_reports().get(GRID).cloned();
    // The module runs a first cycle 200 ms after its start; wait for it to end.
    let first = Instant::now();
    while report(&h).is_none_or(|r| r.cycles == 0) {
        if first.elapsed() > Duration::from_secs(120) {
            bail!("the first cycle did not end within 120 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let first_s = first.elapsed().as_secs_f64();
    let side = open_db(&dir)?;
    let restore = || -> Result<()> {
        if args.ended == 0 {
            return Ok(());
        }
        restore_ended(&side, &gridspec, args.ended)?;
        let queued: i64 = side.query_row(
            "SELECT count(*) FROM task WHERE status = 'queued' AND gridspec = ?1",
            [&gridspec],
            |r| r.get(0),
        )?;
        if queued as u64 != args.tasks {
            bail!("after restoring, {queued} tasks are queued");
        }
        Ok(())
    };
    restore()?;
    let mut resets = report(&h).map_or(0, |r| r.reset);
    let timeout = Duration::from_secs(300);
    let load_before = loadavg();
    let at = chrono_free_now();
    let mut cycle_s = Vec::new();
    let mut read_s = Vec::new();
    let mut tool_s = Vec::new();
    for i in 0..args.cycles {
        let t = Instant::now();
        h.call(
            ModuleKind::Queue,
            Request::Queue(QueueRequest::RunCycle),
            timeout,
        )
        .map_err(|e| anyhow::anyhow!("RunCycle: {e:?}"))?;
        let s = t.elapsed().as_secs_f64();
        let r = report(&h).context("no grid report")?;
        if r.queued != args.tasks || r.reset != resets + args.ended || r.last_error.is_some() {
            bail!("cycle {i} did not see what was seeded: {r:?}");
        }
        resets = r.reset;
        restore()?;
        eprintln!("iceprod-load: cycle {}: {:.3} s", i + 1, s);
        cycle_s.push(s);
        // The parts, alone: the db read of the grid's tasks, and the status tool.
        let t = Instant::now();
        match h.call(
            ModuleKind::Db,
            Request::Db(DbRequest::GridTasks {
                gridspec: gridspec.clone(),
            }),
            timeout,
        ) {
            Ok(Reply::Db(DbReply::GridTasks(tasks))) if tasks.len() as u64 == args.tasks => {}
            other => bail!("GridTasks answered {other:?}"),
        }
        read_s.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let out = Command::new(bin.join("squeue"))
            .args(["--me", "-h", "-t", "all", "-o", "%i|%T|%r"])
            .output()?;
        if out.stdout.len() != listing.len() {
            bail!("squeue printed {} bytes", out.stdout.len());
        }
        tool_s.push(t.elapsed().as_secs_f64());
    }
    let load_after = loadavg();
    let rss = vm_hwm_kb(std::process::id());
    h.stop(ModuleKind::Queue, Duration::from_secs(10));
    h.stop(ModuleKind::Db, Duration::from_secs(10));
    println!(
        "### queue-cycle: {} queued tasks on one slurm grid, {} with grid jobs listed by \
         `squeue` ({at})\n",
        args.tasks, args.jobs
    );
    println!(
        "The db and queue modules under the runtime's `Harness` in one process (seeded in \
         {seed_s:.1} s; the module's own first cycle ended {first_s:.2} s after its start, \
         untimed). Each timed cycle is one `Request::Queue(QueueRequest::RunCycle)` call, \
         answered when the cycle ends: RecycleTasks, BufferJobs (nothing to buffer), \
         GridTasks ({} rows), the stand-in `squeue` (`cat` of {} lines, {} bytes), parse and \
         reconcile ({} jobs, {} of them reset as ended), ResetStuckTasks (none), queue step (0 to submit: \
         the grid holds more than `tasks_on_queue` max). Then, untimed by the cycle, GridTasks \
         alone and the `squeue` stand-in alone. Load average (1/5/15 min) before: \
         {load_before}; after: {load_after}. Process VmHWM: {} MB.\n",
        args.tasks,
        args.jobs,
        listing.len(),
        args.jobs,
        args.ended,
        fmt_opt(rss.map(|k| k as f64 / 1024.0), 1),
    );
    let ms = |v: &[f64]| v.iter().map(|s| s * 1000.0).collect::<Vec<_>>();
    let mut t = Table::new(&[
        "what",
        "runs",
        "median (ms)",
        "p90 (ms)",
        "min (ms)",
        "max (ms)",
    ]);
    stats_row(&mut t, "full cycle (RunCycle → answer)", ms(&cycle_s), 1);
    stats_row(&mut t, "GridTasks alone (db read)", ms(&read_s), 1);
    stats_row(
        &mut t,
        "`squeue` stand-in alone (spawn + output)",
        ms(&tool_s),
        1,
    );
    t.print();
    let med = median(&cycle_s).unwrap_or(f64::NAN);
    println!(
        "Goal: one cycle ≤ {GOAL_CYCLE_S} s: median {med:.3} s, **{}**.\n",
        met(med <= GOAL_CYCLE_S)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceprod_queue::grids::shell_quote;

    /// Quotes with the queue module's own `shell_quote` (what a `job.slurm` holds), so the
    /// test fails if the two drift apart.
    #[test]
    fn shell_words_undo_shell_quote() {
        let words = [
            "/x/iceprod",
            "task",
            "--cfgfile",
            "task.cfg",
            "/a b/iceprod",
            "it's",
            "",
            "$(rm -rf /)",
            r"back\slash",
        ];
        let line: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
        assert_eq!(shell_words(&line.join(" ")), words);
        for w in words {
            assert_eq!(shell_unquote(&shell_quote(w)), w);
        }
    }
}
