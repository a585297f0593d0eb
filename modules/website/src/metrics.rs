//! `/metrics`: the website's own counters and the Prometheus text (format 0.0.4) that shows
//! them together with the runtime's shared counters.
//!
//! The counters live on the website's loop thread and are plain integers; the runtime's counters
//! are read from [`RuntimeStats`] when the page is rendered. Label values come from bounded sets
//! (routes, method names from the table, module kinds, configured job names), and are escaped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

use iceprod_runtime::stats::GridReport;
use iceprod_runtime::{ModuleKind, RuntimeStats};

/// The `Content-Type` of the page.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// The website's counters.
#[derive(Default)]
pub struct Metrics {
    http: BTreeMap<(&'static str, u16), u64>,
    rpc: BTreeMap<(&'static str, i64), u64>,
}

/// What the page shows from outside the website.
pub struct RuntimeView<'a> {
    pub stats: &'a RuntimeStats,
    /// Mailbox depth of each enabled module, by [`ModuleKind::index`].
    pub depths: [Option<usize>; ModuleKind::COUNT],
    pub in_flight: usize,
}

impl Metrics {
    pub fn count_http(&mut self, route: &'static str, status: u16) {
        *self.http.entry((route, status)).or_default() += 1;
    }

    /// `method` must be a bounded label (a table name or `unknown`); `code` is 0 for success.
    pub fn count_rpc(&mut self, method: &'static str, code: i64) {
        *self.rpc.entry((method, code)).or_default() += 1;
    }

    pub fn render(&self, view: &RuntimeView<'_>) -> String {
        let mut page = Page::default();
        page.family(
            "iceprod_http_requests_total",
            "counter",
            "HTTP requests answered, by route and status code.",
        );
        for ((route, status), n) in &self.http {
            page.sample(
                "iceprod_http_requests_total",
                &[("route", route), ("status", &status.to_string())],
                *n,
            );
        }
        page.family(
            "iceprod_jsonrpc_requests_total",
            "counter",
            "JSON-RPC calls answered, by method and error code (0 for success).",
        );
        for ((method, code), n) in &self.rpc {
            page.sample(
                "iceprod_jsonrpc_requests_total",
                &[("method", method), ("code", &code.to_string())],
                *n,
            );
        }
        page.family(
            "iceprod_module_restarts_total",
            "counter",
            "Times the controller restarted each module.",
        );
        for kind in ModuleKind::ALL {
            let n = view.stats.restarts(kind);
            page.sample(
                "iceprod_module_restarts_total",
                &[("module", kind.name())],
                n,
            );
        }
        page.family(
            "iceprod_module_up",
            "gauge",
            "Whether a thread of the module serves its mailbox (1) or not (0); enabled modules only, \
             so `iceprod_module_up == 0` always means a module that should run does not.",
        );
        for kind in ModuleKind::ALL {
            if view.depths[kind.index()].is_none() {
                continue;
            }
            let up = view.stats.module(kind).running.load(Ordering::Relaxed);
            page.sample(
                "iceprod_module_up",
                &[("module", kind.name())],
                u64::from(up),
            );
        }
        page.family(
            "iceprod_mailbox_depth",
            "gauge",
            "Messages waiting in the mailbox of each enabled module.",
        );
        for kind in ModuleKind::ALL {
            if let Some(depth) = view.depths[kind.index()] {
                page.sample(
                    "iceprod_mailbox_depth",
                    &[("module", kind.name())],
                    depth as u64,
                );
            }
        }
        page.family(
            "iceprod_config_reloads_total",
            "counter",
            "Successful reloads of the config file.",
        );
        let reloads = view.stats.reloads.load(Ordering::Relaxed);
        page.sample("iceprod_config_reloads_total", &[], reloads);
        page.family(
            "iceprod_schedule_runs_total",
            "counter",
            "[schedule] jobs that fired and were answered, by job.",
        );
        for (job, n) in view.stats.schedule_runs() {
            page.sample("iceprod_schedule_runs_total", &[("job", &job)], n);
        }
        let grids = view.stats.grid_reports();
        for (name, help, value) in [
            (
                "iceprod_grid_tasks_queued",
                "Tasks queued on each grid at its last queue cycle.",
                (|g: &GridReport| g.queued) as fn(&GridReport) -> u64,
            ),
            (
                "iceprod_grid_tasks_processing",
                "Tasks processing on each grid at its last queue cycle.",
                |g| g.processing,
            ),
            (
                "iceprod_grid_submitted_total",
                "Submissions (tasks or pilots) to each grid since start.",
                |g| g.submitted,
            ),
            (
                "iceprod_grid_reset_total",
                "Tasks reset because their grid lost, ended or failed them, since start.",
                |g| g.reset,
            ),
            (
                "iceprod_grid_error",
                "1 while the grid's last queue cycle had a grid command error.",
                |g| u64::from(g.last_error.is_some()),
            ),
        ] {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            page.family(name, kind, help);
            for (grid, report) in &grids {
                page.sample(name, &[("grid", grid)], value(report));
            }
        }
        page.family(
            "iceprod_website_in_flight",
            "gauge",
            "HTTP requests the website has taken and not yet answered.",
        );
        page.sample("iceprod_website_in_flight", &[], view.in_flight as u64);
        page.text
    }
}

#[derive(Default)]
struct Page {
    text: String,
}

impl Page {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing into a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// Label values escape backslash, double quote and line feed (text format 0.0.4).
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text escapes backslash and line feed.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(stats: &RuntimeStats) -> RuntimeView<'_> {
        let mut depths = [None; ModuleKind::COUNT];
        depths[ModuleKind::Website.index()] = Some(3);
        RuntimeView {
            stats,
            depths,
            in_flight: 2,
        }
    }

    #[test]
    fn each_grid_reports_its_counts_and_whether_it_has_an_error() {
        let stats = RuntimeStats::default();
        stats.set_grid_report(
            "cluster",
            GridReport {
                queued: 7,
                processing: 3,
                submitted: 12,
                reset: 1,
                last_error: Some("sbatch exited with 1".into()),
                ..GridReport::default()
            },
        );
        stats.set_grid_report("local", GridReport::default());
        let page = Metrics::default().render(&view(&stats));
        for line in [
            "# TYPE iceprod_grid_tasks_queued gauge",
            "iceprod_grid_tasks_queued{grid=\"cluster\"} 7",
            "iceprod_grid_tasks_processing{grid=\"cluster\"} 3",
            "# TYPE iceprod_grid_submitted_total counter",
            "iceprod_grid_submitted_total{grid=\"cluster\"} 12",
            "iceprod_grid_reset_total{grid=\"cluster\"} 1",
            "iceprod_grid_error{grid=\"cluster\"} 1",
            "iceprod_grid_error{grid=\"local\"} 0",
        ] {
            assert!(page.lines().any(|l| l == line), "{line} missing:\n{page}");
        }
    }

    #[test]
    fn counters_and_runtime_values_appear_with_help_and_type() {
        let stats = RuntimeStats::default();
        stats
            .module(ModuleKind::Db)
            .restarts
            .store(4, Ordering::Relaxed);
        stats
            .module(ModuleKind::Website)
            .running
            .store(true, Ordering::Relaxed);
        stats.reloads.store(2, Ordering::Relaxed);
        stats.count_schedule_run("tick");
        let mut m = Metrics::default();
        m.count_http("/jsonrpc", 200);
        m.count_http("/jsonrpc", 200);
        m.count_http("other", 404);
        m.count_rpc("echo", 0);
        m.count_rpc("unknown", -32601);
        let page = m.render(&view(&stats));
        for line in [
            "# TYPE iceprod_http_requests_total counter",
            "iceprod_http_requests_total{route=\"/jsonrpc\",status=\"200\"} 2",
            "iceprod_http_requests_total{route=\"other\",status=\"404\"} 1",
            "iceprod_jsonrpc_requests_total{method=\"echo\",code=\"0\"} 1",
            "iceprod_jsonrpc_requests_total{method=\"unknown\",code=\"-32601\"} 1",
            "iceprod_module_restarts_total{module=\"db\"} 4",
            "iceprod_module_restarts_total{module=\"schedule\"} 0",
            "iceprod_module_up{module=\"website\"} 1",
            "iceprod_mailbox_depth{module=\"website\"} 3",
            "iceprod_config_reloads_total 2",
            "iceprod_schedule_runs_total{job=\"tick\"} 1",
            "# TYPE iceprod_website_in_flight gauge",
            "iceprod_website_in_flight 2",
        ] {
            assert!(
                page.lines().any(|l| l == line),
                "missing {line:?} in\n{page}"
            );
        }
        // Only enabled modules have an up gauge, so `== 0` never fires for one that is off.
        assert!(
            !page.contains("iceprod_module_up{module=\"queue\"}"),
            "{page}"
        );
        assert!(
            !page.contains("iceprod_mailbox_depth{module=\"db\"}"),
            "{page}"
        );
    }

    #[test]
    fn every_sample_belongs_to_a_declared_family() {
        let stats = RuntimeStats::default();
        let page = Metrics::default().render(&view(&stats));
        let declared: Vec<&str> = page
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(declared.contains(&name), "{line}");
        }
        assert_eq!(
            page.lines().filter(|l| l.starts_with("# HELP")).count(),
            declared.len()
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let stats = RuntimeStats::default();
        stats.count_schedule_run("a\"b\\c\nd");
        let page = Metrics::default().render(&view(&stats));
        assert!(
            page.contains(r#"iceprod_schedule_runs_total{job="a\"b\\c\nd"} 1"#),
            "{page}"
        );
    }
}
