//! The templates (`templates/*.html`, compiled in by askama) and the view values they show.
//!
//! Every `{{ }}` is HTML-escaped by askama; the only unescaped insertions (`|safe`) are the SVG
//! graphs of [`crate::svg`] and the pager of [`pager`], both built here from escaped parts.

use std::collections::BTreeMap;

use askama::Template;
use iceprod_runtime::stats::GridReport;
use iceprod_runtime::web::{
    DatasetPage, DatasetRow, Group, JobRow, Paging, TaskNameSummary, TaskPage, TaskRow,
};

use crate::forms::encode;
use crate::svg::escape;

/// What the header of every page needs.
#[derive(Clone, Debug, Default)]
pub struct Nav {
    pub username: Option<String>,
    /// The session's CSRF token (empty when not logged in).
    pub csrf: String,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage<'a> {
    pub nav: &'a Nav,
    pub status: u16,
    pub reason: &'static str,
    pub message: &'a str,
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage<'a> {
    pub nav: &'a Nav,
    pub next: &'a str,
    pub username: &'a str,
    pub error: Option<&'a str>,
    /// The login form's token (`session::LOGIN_FIELD`), also in its cookie.
    pub token: &'a str,
}

#[derive(Template)]
#[template(path = "home.html")]
pub struct HomeView<'a> {
    pub nav: &'a Nav,
    pub counts: &'a BTreeMap<String, u64>,
    pub active: String,
    pub completed: String,
}

#[derive(Template)]
#[template(path = "submit.html")]
pub struct SubmitView<'a> {
    pub nav: &'a Nav,
    pub config: &'a str,
    pub errors: Vec<String>,
    /// (gridspec, label).
    pub grids: Vec<(String, String)>,
    pub gridspec: &'a str,
    pub njobs: &'a str,
    pub description: &'a str,
    pub debug: bool,
}

#[derive(Template)]
#[template(path = "config.html")]
pub struct ConfigView<'a> {
    pub nav: &'a Nav,
    pub d: &'a DatasetRow,
    pub config: &'a str,
    pub edit: bool,
    pub can_act: bool,
    pub errors: Vec<String>,
}

#[derive(Template)]
#[template(path = "datasets.html")]
pub struct DatasetsView<'a> {
    pub nav: &'a Nav,
    pub status: Option<&'a str>,
    pub rows: &'a [DatasetRow],
    pub total: u64,
    pub pager: String,
}

/// One row of the per-task-name table, formatted.
pub struct NameRow {
    pub name: String,
    /// waiting, queued, running, complete, error.
    pub counts: [u64; 5],
    /// mean, σ, min, max (or empty before the first completion).
    pub walltime: [String; 4],
    pub efficiency: String,
}

/// The table's columns and which task statuses each counts (SPEC §4 status names).
const NAME_COLUMNS: [&[&str]; 5] = [
    &["idle", "waiting", "reset"],
    &["queued"],
    &["processing"],
    &["complete"],
    &["failed", "suspended"],
];

impl NameRow {
    pub fn of(s: &TaskNameSummary) -> NameRow {
        let counts = NAME_COLUMNS.map(|statuses| {
            statuses
                .iter()
                .filter_map(|st| s.counts.get(*st))
                .sum::<u64>()
        });
        let walltime = match &s.walltime {
            Some(w) => [w.mean, w.stddev, w.min, w.max].map(duration),
            None => Default::default(),
        };
        NameRow {
            name: s.name.clone(),
            counts,
            walltime,
            efficiency: s
                .efficiency
                .map_or(String::new(), |e| format!("{:.0}%", e * 100.0)),
        }
    }
}

/// Seconds as `45s`, `12m 3s`, `2h 5m`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return String::new();
    }
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

#[derive(Template)]
#[template(path = "dataset.html")]
pub struct DatasetView<'a> {
    pub nav: &'a Nav,
    pub d: &'a DatasetRow,
    pub job_counts: &'a BTreeMap<String, u64>,
    pub task_counts: &'a BTreeMap<String, u64>,
    pub names: Vec<NameRow>,
    pub complete: u64,
    pub total: u64,
    pub pct: String,
    pub graph: String,
    pub can_act: bool,
}

impl<'a> DatasetView<'a> {
    pub fn new(nav: &'a Nav, page: &'a DatasetPage, can_act: bool) -> DatasetView<'a> {
        let complete = page.task_counts.get("complete").copied().unwrap_or(0);
        let total: u64 = page.task_counts.values().sum();
        let pct = if total == 0 {
            0.0
        } else {
            complete as f64 * 100.0 / total as f64
        };
        DatasetView {
            nav,
            d: &page.dataset,
            job_counts: &page.job_counts,
            task_counts: &page.task_counts,
            names: page.task_names.iter().map(NameRow::of).collect(),
            complete,
            total,
            pct: format!("{pct:.1}"),
            graph: crate::svg::dataset_progress(&page.progress),
            can_act,
        }
    }
}

#[derive(Template)]
#[template(path = "confirm.html")]
pub struct ConfirmView<'a> {
    pub nav: &'a Nav,
    pub question: &'a str,
    pub verb: &'a str,
    pub action: &'a str,
    pub back: &'a str,
    pub fields: Vec<(&'a str, &'a str)>,
}

#[derive(Template)]
#[template(path = "tasks.html")]
pub struct TasksView<'a> {
    pub nav: &'a Nav,
    pub f_dataset: &'a str,
    pub f_job: &'a str,
    pub f_name: &'a str,
    pub f_status: &'a str,
    /// Each task, and whether the viewer may act on it (its dataset's owner, or an admin).
    pub rows: Vec<(&'a TaskRow, bool)>,
    pub total: u64,
    pub pager: String,
    /// Whether the viewer may act on any of the rows (the bulk form is shown).
    pub can_act: bool,
    /// Where a bulk action returns to (this list).
    pub back: &'a str,
}

#[derive(Template)]
#[template(path = "task.html")]
pub struct TaskView<'a> {
    pub nav: &'a Nav,
    pub t: &'a TaskRow,
    pub page: &'a TaskPage,
    pub can_act: bool,
}

#[derive(Template)]
#[template(path = "jobs.html")]
pub struct JobsView<'a> {
    pub nav: &'a Nav,
    pub dataset: &'a str,
    pub status: Option<&'a str>,
    pub rows: &'a [JobRow],
    pub total: u64,
    pub pager: String,
}

#[derive(Template)]
#[template(path = "job.html")]
pub struct JobView<'a> {
    pub nav: &'a Nav,
    pub j: &'a JobRow,
    pub tasks: &'a [TaskRow],
    pub can_act: bool,
}

#[derive(Template)]
#[template(path = "groups.html")]
pub struct GroupsView<'a> {
    pub nav: &'a Nav,
    pub groups: &'a [Group],
    pub admin: bool,
}

#[derive(Template)]
#[template(path = "site.html")]
pub struct SiteView<'a> {
    pub nav: &'a Nav,
    pub site_id: &'a str,
    pub modules: Vec<ModuleRow>,
    pub grids: BTreeMap<String, GridReport>,
    pub reloads: u64,
    pub last_reload: Option<LastReload>,
    pub admin: bool,
}

/// A module on the site page, from the controller's status.
pub struct ModuleRow {
    pub name: String,
    pub state: String,
    pub restarts: u64,
    pub depth: String,
    pub last_error: String,
    /// How the module took the last reload (applied in place, restarted, refused: …).
    pub last_reload: String,
}

/// The last config reload: when, and its summary or why it was refused.
pub struct LastReload {
    pub at: String,
    pub ok: bool,
    pub message: String,
}

#[derive(Template)]
#[template(path = "help.html")]
pub struct HelpView<'a> {
    pub nav: &'a Nav,
}

/// Previous/next links for a list at `path` with its filters `query` (already encoded pairs).
pub fn pager(path: &str, query: &[(&str, &str)], paging: Paging, total: u64) -> String {
    let link = |id: &str, text: &str, offset: u64| {
        let mut url = format!("{path}?");
        for (k, v) in query.iter().filter(|(_, v)| !v.is_empty()) {
            url.push_str(&format!("{}={}&", encode(k), encode(v)));
        }
        url.push_str(&format!("offset={offset}&limit={}", paging.limit));
        format!("<a id=\"{id}\" href=\"{}\">{text}</a> ", escape(&url))
    };
    let mut out = String::from("<p class=\"pager\">");
    if paging.offset > 0 {
        out.push_str(&link(
            "prev-page",
            "previous",
            paging.offset.saturating_sub(paging.limit),
        ));
    }
    let end = paging.offset.saturating_add(paging.limit);
    out.push_str(&format!(
        "{}–{} of {total} ",
        (paging.offset + 1).min(total),
        end.min(total)
    ));
    if end < total {
        out.push_str(&link("next-page", "next", end));
    }
    out.push_str("</p>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pager_links_keep_filters_escaped_and_stop_at_the_ends() {
        let p = |offset, total| {
            pager(
                "/task",
                &[("dataset_id", "a&b"), ("status", "")],
                Paging { offset, limit: 10 },
                total,
            )
        };
        let first = p(0, 25);
        assert!(!first.contains("prev-page"));
        assert!(first.contains("href=\"/task?dataset_id=a%26b&amp;offset=10&amp;limit=10\""));
        let last = p(20, 25);
        assert!(last.contains("prev-page") && !last.contains("next-page"));
        assert!(p(0, 0).contains("0–0 of 0"));
    }

    #[test]
    fn hostile_text_is_escaped_in_pages() {
        let nav = Nav {
            username: Some("<b>x</b>".into()),
            csrf: "\"><script>".into(),
        };
        let page = ErrorPage {
            nav: &nav,
            status: 404,
            reason: "Not Found",
            message: "<script>alert('x')</script>",
        }
        .render()
        .unwrap();
        assert!(!page.contains("<script>") && !page.contains("<b>x"));
        assert!(page.contains("&#60;script&#62;"));
        assert!(page.contains("<h1>404 Not Found</h1>"));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(42.4), "42s");
        assert_eq!(duration(725.0), "12m 5s");
        assert_eq!(duration(7500.0), "2h 5m");
        assert_eq!(duration(f64::NAN), "");
    }
}

#[cfg(test)]
mod site_view_tests {
    use super::*;

    #[test]
    fn the_last_reload_is_shown_with_its_outcome() {
        let nav = Nav::default();
        let view = SiteView {
            nav: &nav,
            site_id: "s",
            modules: Vec::new(),
            grids: BTreeMap::new(),
            reloads: 1,
            last_reload: Some(LastReload {
                at: "t".into(),
                ok: false,
                message: "bad <key>".into(),
            }),
            admin: true,
        };
        let page = view.render().unwrap();
        assert!(
            page.contains("<p id=\"last-reload\" class=\"error\">Last reload at t: refused: bad &#60;key&#62;</p>"),
            "{page}"
        );
    }
}
