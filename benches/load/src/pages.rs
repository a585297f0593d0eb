//! `iceprod-load pages`: render time and page weight of the website's pages on a seeded
//! database (BENCHMARKS.md, "Website (issue 5)").
//!
//! It copies a folder written by `iceprod-load seed` (one dataset of N tasks), adds 24 hours of
//! graph rows (one per name every 10 minutes, as the schedule job writes them), starts the real
//! server on it and times sequential `GET`s of `/` and `/dataset/1` on two keep-alive
//! connections: one anonymous (the default `public_reads`), one logged in through the login
//! form as a user added with `iceprod user add` (each page then also looks its session up).
//! `/healthz` is the baseline measured in the same run (the same HTTP path with no page behind
//! it). Time is from the request's first
//! byte written to the response's last byte read, so it includes the db queries, the render
//! and the loopback transfer.
//!
//! Page weight is the HTML of `/dataset/1` plus every `/static/` file it links (CSS, scripts),
//! as a browser with an empty cache would fetch them; there are no images.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use iceprod_db::rusqlite::{params, Connection};

use crate::http::Connection as HttpConnection;
use crate::report::{loadavg, median, met, quantile_sorted, Table};
use crate::server::{self, Child};

/// The goal for the render time (p50) of `/` and `/dataset/N`.
const RENDER_GOAL_MS: f64 = 20.0;
/// The goal for the weight of `/dataset/N` without images.
const WEIGHT_GOAL_BYTES: usize = 100 * 1024;

#[derive(clap::Args)]
pub struct Args {
    /// The iceprod binary (for example target/release/iceprod).
    #[arg(long)]
    iceprod: PathBuf,
    /// A folder written by `iceprod-load seed`; it is copied, not changed.
    #[arg(long)]
    seed: PathBuf,
    /// Timed requests per page (after `--warmup` untimed ones).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    requests: u64,
    /// Untimed requests per page first.
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// Rounds: each round times every page once more, in turn, so drift in the machine's load
    /// affects every page alike.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=10))]
    rounds: u64,
}

pub fn run(args: &Args) -> Result<()> {
    server::check_binary(&args.iceprod, "iceprod")?;
    let tmp = tempfile::Builder::new()
        .prefix("iceprod-load-pages-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let dir = tmp.path().to_path_buf();
    crate::seed::copy_databases(&args.seed, &dir)?;
    let db_file = dir.join("var/iceprod.db");
    let tasks = add_graph_rows(&db_file)?;
    let port = server::free_port()?;
    let config_file = dir.join("iceprod.toml");
    std::fs::write(&config_file, crate::seed::render_config(&dir, port, "warn"))?;
    add_user(&args.iceprod, &config_file)?;
    let started = Instant::now();
    let mut iceprod = Child::spawn_iceprod(&args.iceprod, &config_file, &dir.join("iceprod.log"))?;
    iceprod.wait_until_ready(
        port,
        started,
        Duration::from_secs(120),
        server::probe_echo,
        server::echo_answered,
    )?;
    eprintln!(
        "iceprod-load: server ready on {tasks} tasks after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut anonymous = HttpConnection::connect(port, Duration::from_secs(30))?;
    let mut member = HttpConnection::connect(port, Duration::from_secs(30))?;
    log_in(&mut member)?;

    // (label, logged in, path)
    let pages = [
        ("`/healthz`", false, "/healthz"),
        ("`/`", false, "/"),
        ("`/dataset/1`", false, "/dataset/1"),
        ("`/` logged in", true, "/"),
        ("`/dataset/1` logged in", true, "/dataset/1"),
    ];
    for (label, logged_in, path) in pages {
        let conn = if logged_in {
            &mut member
        } else {
            &mut anonymous
        };
        let r = conn.get(path)?;
        let page = String::from_utf8_lossy(&r.body);
        if r.status != 200 || (logged_in && !page.contains("id=\"user\">bench<")) {
            bail!(
                "{label} answered {}: {page}\nserver log:\n{}",
                r.status,
                iceprod.log_tail(20)
            );
        }
    }
    let load_before = loadavg();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); pages.len()];
    for _ in 0..args.rounds {
        for (i, (label, logged_in, path)) in pages.iter().enumerate() {
            let conn = if *logged_in {
                &mut member
            } else {
                &mut anonymous
            };
            for _ in 0..args.warmup {
                conn.get(path)?;
            }
            for _ in 0..args.requests {
                let t = Instant::now();
                let r = conn.get(path)?;
                times[i].push(t.elapsed().as_secs_f64() * 1000.0);
                if r.status != 200 {
                    bail!("{label} answered {} during the run", r.status);
                }
            }
        }
    }
    let load_after = loadavg();

    let mut table = Table::new(&[
        "page",
        "requests",
        "p50 (ms)",
        "p90 (ms)",
        "p99 (ms)",
        "max (ms)",
        "p50 / healthz p50",
        "goal p50 ≤ 20 ms",
    ]);
    let baseline = median(&times[0]).unwrap_or(f64::NAN);
    for (i, (label, _, _)) in pages.iter().enumerate() {
        let mut sorted = times[i].clone();
        sorted.sort_by(f64::total_cmp);
        let q = |p: f64| quantile_sorted(&sorted, p).unwrap_or(f64::NAN);
        let p50 = median(&times[i]).unwrap_or(f64::NAN);
        table.row(vec![
            label.to_string(),
            sorted.len().to_string(),
            format!("{p50:.2}"),
            format!("{:.2}", q(0.9)),
            format!("{:.2}", q(0.99)),
            format!("{:.2}", sorted.last().copied().unwrap_or(f64::NAN)),
            format!("{:.1}", p50 / baseline),
            if i == 0 {
                "(baseline)".into()
            } else {
                met(p50 <= RENDER_GOAL_MS)
            },
        ]);
    }
    println!(
        "Render time, {tasks} tasks in one dataset, load average {load_before} → {load_after}\n"
    );
    table.print();

    let weight = page_weight(&mut anonymous, "/dataset/1")?;
    let mut table = Table::new(&["part", "bytes"]);
    let mut total = 0;
    for (part, bytes) in &weight {
        total += bytes;
        table.row(vec![format!("`{part}`"), bytes.to_string()]);
    }
    table.row(vec![
        format!(
            "**total** (goal ≤ {} KB: {})",
            WEIGHT_GOAL_BYTES / 1024,
            met(total <= WEIGHT_GOAL_BYTES)
        ),
        total.to_string(),
    ]);
    println!("\nPage weight of `/dataset/1` (no images on the page)\n");
    table.print();
    iceprod.stop()?;
    Ok(())
}

/// The user the logged-in pages are read as, and its password.
const USER: (&str, &str) = ("bench", "bench password");

/// Adds [`USER`] with `iceprod user add`, which opens the database directly.
fn add_user(iceprod: &Path, config: &Path) -> Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(iceprod)
        .args(["user", "add", USER.0, "--password-stdin", "--config"])
        .arg(config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("cannot run iceprod user add")?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{}", USER.1)?;
    }
    if !child.wait()?.success() {
        bail!("iceprod user add {} failed", USER.0);
    }
    Ok(())
}

/// Logs in through the login form, loaded first for its token and cookie; the connection then
/// carries the session cookie.
fn log_in(conn: &mut HttpConnection) -> Result<()> {
    let form = conn.get("/login")?;
    let page = String::from_utf8_lossy(&form.body);
    let field = "name=\"login_token\" value=\"";
    let token = page
        .find(field)
        .and_then(|at| page[at + field.len()..].split('"').next())
        .context("the login page has no login_token field")?
        .to_string();
    conn.set_cookie(form.set_cookie.context("the login page set no cookie")?);
    let r = conn.post_form(
        "/login",
        &format!(
            "username={}&password={}&login_token={token}",
            USER.0,
            USER.1.replace(' ', "+")
        ),
    )?;
    let Some(cookie) = r.set_cookie.filter(|_| r.status == 303) else {
        bail!(
            "logging in answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    };
    conn.set_cookie(cookie);
    Ok(())
}

/// Writes 24 hours of graph rows, one per name every 10 minutes ending now, and returns how
/// many tasks the database holds. The values are in the shapes the schedule job writes.
fn add_graph_rows(db_file: &Path) -> Result<u64> {
    let conn = Connection::open(db_file)?;
    let tasks: i64 = conn.query_row("SELECT count(*) FROM task", [], |r| r.get(0))?;
    let tasks = tasks as u64;
    let dataset_id: String =
        conn.query_row("SELECT dataset_id FROM dataset LIMIT 1", [], |r| r.get(0))?;
    let now = chrono::Utc::now();
    let steps = 24 * 6;
    let tx = conn.unchecked_transaction()?;
    {
        let mut insert =
            tx.prepare("INSERT INTO graph (graph_id, name, value, timestamp) VALUES (?, ?, ?, ?)")?;
        for i in 0..steps {
            let at = now - chrono::Duration::minutes(10 * (steps - i));
            let stamp = at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
            let done = tasks * (i as u64 + 1) / steps as u64;
            let rows = [
                (
                    "active_tasks",
                    serde_json::json!({"queued": 100_000 - i * 100, "processing": 2000 + i * 10,
                                       "waiting": 50_000, "idle": 10}),
                ),
                (
                    "completed_tasks",
                    serde_json::json!({"completions": 600 + i}),
                ),
                (
                    "dataset_progress",
                    serde_json::json!({ dataset_id.as_str(): [done, tasks] }),
                ),
            ];
            for (name, value) in rows {
                // Not a base-62 id: it can never collide with the ids the server mints.
                let id = format!("bench-{name}-{i}");
                insert.execute(params![id, name, value.to_string(), stamp])?;
            }
        }
    }
    tx.commit()?;
    Ok(tasks)
}

/// The HTML of `path` and every `/static/` file it links, with their sizes in bytes.
fn page_weight(conn: &mut HttpConnection, path: &str) -> Result<Vec<(String, usize)>> {
    let page = conn.get(path)?;
    let html = String::from_utf8_lossy(&page.body).into_owned();
    let mut parts = vec![(path.to_string(), page.body.len())];
    for asset in static_links(&html) {
        let r = conn.get(&asset)?;
        if r.status != 200 {
            bail!("GET {asset} (linked from {path}) answered {}", r.status);
        }
        parts.push((asset, r.body.len()));
    }
    Ok(parts)
}

/// The distinct `/static/…` paths in `href="…"` and `src="…"` attributes, in order.
fn static_links(html: &str) -> Vec<String> {
    let mut links = Vec::new();
    for attr in ["href=\"", "src=\""] {
        for (at, _) in html.match_indices(attr) {
            let rest = &html[at + attr.len()..];
            let Some(end) = rest.find('"') else { continue };
            let link = &rest[..end];
            if link.starts_with("/static/") && !links.iter().any(|l| l == link) {
                links.push(link.to_string());
            }
        }
    }
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_links_are_found_once_each_and_others_ignored() {
        let html = r#"<link rel="stylesheet" href="/static/site.css"><a href="/dataset">x</a>
            <script src="/static/site.js"></script><link href="/static/site.css">"#;
        assert_eq!(
            static_links(html),
            vec![
                "/static/site.css".to_string(),
                "/static/site.js".to_string()
            ]
        );
    }
}
