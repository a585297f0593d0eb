//! Which handler a URL path goes to, and the bounded set of route labels `/metrics` counts by.
//!
//! Only paths are matched here; which HTTP methods a route takes is decided where the route is
//! served (`lib.rs`). The human pages of SPEC §7 join this enum as they are written.

/// A route of the website.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /jsonrpc`: the JSON-RPC endpoint.
    JsonRpc,
    /// `GET /healthz`: liveness for load balancers and systemd.
    Healthz,
    /// `GET /metrics`: Prometheus text.
    Metrics,
    /// Anything else: 404.
    NotFound,
}

impl Route {
    /// The route of a request URL (query string ignored).
    pub fn of(url: &str) -> Route {
        let path = url.split(['?', '#']).next().unwrap_or(url);
        match path {
            "/jsonrpc" => Route::JsonRpc,
            "/healthz" => Route::Healthz,
            "/metrics" => Route::Metrics,
            _ => Route::NotFound,
        }
    }

    /// The `route` label in `/metrics`. Unknown paths share one label so a client cannot grow
    /// the number of series by inventing paths.
    pub fn label(self) -> &'static str {
        match self {
            Route::JsonRpc => "/jsonrpc",
            Route::Healthz => "/healthz",
            Route::Metrics => "/metrics",
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
    }

    #[test]
    fn unknown_paths_share_one_label() {
        assert_eq!(Route::of("/jsonrpc/extra"), Route::NotFound);
        assert_eq!(Route::of("/"), Route::NotFound);
        assert_eq!(Route::of("/anything").label(), Route::of("/else").label());
    }
}
