//! Which handler a URL path goes to, and the bounded set of route labels `/metrics` counts by.
//!
//! Only paths are matched here; which HTTP methods a route takes is decided where the route is
//! served (`lib.rs` for the machine endpoints, `pages.rs` for the human pages). Path segments
//! that are ids are carried in the variant; they are percent-decoded.

use crate::forms::decode;

/// A route of the website.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /jsonrpc`: the JSON-RPC endpoint.
    JsonRpc,
    /// `GET /healthz`: liveness for load balancers and systemd.
    Healthz,
    /// `GET /metrics`: Prometheus text.
    Metrics,
    /// `GET /static/NAME`: the embedded CSS and script.
    Static(String),
    /// `GET /lib/PATH`: files for workers under `[website] lib_dir`.
    Lib(String),
    Home,
    Login,
    Logout,
    Submit,
    /// `POST /submit/validate`: the live validation of the submit page (JSON answer).
    SubmitValidate,
    Config,
    Datasets,
    Dataset(u64),
    DatasetAction(u64),
    Tasks,
    /// `POST /task/action`: bulk actions on the checked tasks.
    TasksAction,
    Task(String),
    TaskAction(String),
    Jobs,
    Job(String),
    JobAction(String),
    /// `/log/TASK/NAME`.
    Log {
        task_id: String,
        name: String,
    },
    Groups,
    Site,
    /// `POST /site/reload`.
    SiteReload,
    Help,
    /// Anything else: 404.
    NotFound,
}

impl Route {
    /// The route of a request URL (query string ignored).
    pub fn of(url: &str) -> Route {
        let path = url.split(['?', '#']).next().unwrap_or(url);
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let id = |s: &str| Some(decode(s.as_bytes())).filter(|s| !s.is_empty());
        match segs.as_slice() {
            ["jsonrpc"] => Route::JsonRpc,
            ["healthz"] => Route::Healthz,
            ["metrics"] => Route::Metrics,
            [""] => Route::Home,
            ["login"] => Route::Login,
            ["logout"] => Route::Logout,
            ["submit"] => Route::Submit,
            ["submit", "validate"] => Route::SubmitValidate,
            ["config"] => Route::Config,
            ["dataset"] => Route::Datasets,
            ["dataset", n] => n.parse().map_or(Route::NotFound, Route::Dataset),
            ["dataset", n, "action"] => n.parse().map_or(Route::NotFound, Route::DatasetAction),
            ["task"] => Route::Tasks,
            ["task", "action"] => Route::TasksAction,
            ["task", t] => id(t).map_or(Route::NotFound, Route::Task),
            ["task", t, "action"] => id(t).map_or(Route::NotFound, Route::TaskAction),
            ["job"] => Route::Jobs,
            ["job", j] => id(j).map_or(Route::NotFound, Route::Job),
            ["job", j, "action"] => id(j).map_or(Route::NotFound, Route::JobAction),
            ["log", t, n] => match (id(t), id(n)) {
                (Some(task_id), Some(name)) => Route::Log { task_id, name },
                _ => Route::NotFound,
            },
            ["groups"] => Route::Groups,
            ["site"] => Route::Site,
            ["site", "reload"] => Route::SiteReload,
            ["help"] => Route::Help,
            ["static", name] => Route::Static(decode(name.as_bytes())),
            // The rest of the path is checked by `files::safe_relative` before any file is
            // touched; decoding first means `%2e%2e` is seen as `..`.
            ["lib", ..] => Route::Lib(decode(&path.as_bytes()["/lib/".len().min(path.len())..])),
            _ => Route::NotFound,
        }
    }

    /// The `route` label in `/metrics`: one per route, never an id, so a client cannot grow
    /// the number of series by inventing paths.
    pub fn label(&self) -> &'static str {
        match self {
            Route::JsonRpc => "/jsonrpc",
            Route::Healthz => "/healthz",
            Route::Metrics => "/metrics",
            Route::Static(_) => "/static",
            Route::Lib(_) => "/lib",
            Route::Home => "/",
            Route::Login => "/login",
            Route::Logout => "/logout",
            Route::Submit => "/submit",
            Route::SubmitValidate => "/submit/validate",
            Route::Config => "/config",
            Route::Datasets => "/dataset",
            Route::Dataset(_) => "/dataset/N",
            Route::DatasetAction(_) => "/dataset/N/action",
            Route::Tasks => "/task",
            Route::TasksAction => "/task/action",
            Route::Task(_) => "/task/ID",
            Route::TaskAction(_) => "/task/ID/action",
            Route::Jobs => "/job",
            Route::Job(_) => "/job/ID",
            Route::JobAction(_) => "/job/ID/action",
            Route::Log { .. } => "/log",
            Route::Groups => "/groups",
            Route::Site => "/site",
            Route::SiteReload => "/site/reload",
            Route::Help => "/help",
            Route::NotFound => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_do_not_change_the_route() {
        assert_eq!(Route::of("/jsonrpc?x=1"), Route::JsonRpc);
        assert_eq!(Route::of("/healthz"), Route::Healthz);
        assert_eq!(Route::of("/metrics#top"), Route::Metrics);
        assert_eq!(Route::of("/?x=1"), Route::Home);
        assert_eq!(Route::of("/dataset?status=processing"), Route::Datasets);
    }

    #[test]
    fn pages_carry_their_ids() {
        assert_eq!(Route::of("/dataset/12"), Route::Dataset(12));
        assert_eq!(Route::of("/dataset/12/action"), Route::DatasetAction(12));
        assert_eq!(Route::of("/task/abc"), Route::Task("abc".into()));
        assert_eq!(Route::of("/task/action"), Route::TasksAction);
        assert_eq!(
            Route::of("/task/abc/action"),
            Route::TaskAction("abc".into())
        );
        assert_eq!(Route::of("/job/j1/action"), Route::JobAction("j1".into()));
        assert_eq!(
            Route::of("/log/t1/stdout%2Etxt"),
            Route::Log {
                task_id: "t1".into(),
                name: "stdout.txt".into()
            }
        );
        assert_eq!(Route::of("/lib/a/b.sh"), Route::Lib("a/b.sh".into()));
        assert_eq!(Route::of("/lib/%2e%2e/x"), Route::Lib("../x".into()));
        assert_eq!(
            Route::of("/static/site.css"),
            Route::Static("site.css".into())
        );
    }

    #[test]
    fn malformed_ids_and_unknown_paths_are_not_found() {
        assert_eq!(Route::of("/dataset/-1"), Route::NotFound);
        assert_eq!(Route::of("/dataset/abc"), Route::NotFound);
        assert_eq!(
            Route::of("/dataset/99999999999999999999999"),
            Route::NotFound
        );
        assert_eq!(Route::of("/task/"), Route::NotFound);
        assert_eq!(Route::of("/jsonrpc/extra"), Route::NotFound);
        assert_eq!(Route::of("/anything").label(), Route::of("/else").label());
        assert_eq!(Route::of("/task/a").label(), Route::of("/task/b").label());
    }
}
