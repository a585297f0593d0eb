//! iceprod-website: the website module — its HTTP edge, the JSON-RPC endpoint, `/healthz`,
//! `/metrics`, and the human pages of SPEC §7.
//!
//! [`Website`] is the module value on its loop thread. It owns:
//! - the HTTP edge ([`edge`]): its own thread accepts connections, reads requests and writes
//!   answers without blocking and with a deadline for every client; the loop never touches a
//!   socket;
//! - the routes ([`routes`]) and what each answers (here, in `Website::serve`, for the
//!   machine endpoints and files; [`pages`] for the human pages, rendered from [`views`]
//!   with [`svg`] graphs; [`forms`] parses what people send, [`session`] says who they are);
//! - the session cache and the login throttle ([`session`]), and logins waiting out their
//!   throttle delay on a loop timer;
//! - open JSON-RPC exchanges: one per HTTP request whose calls are not all answered yet
//!   ([`jsonrpc`] for the envelope, [`methods`] for the table). A method may answer later from
//!   a callback of an internal call; the HTTP response goes out when its last call is answered;
//! - its counters for `/metrics` (`metrics.rs`).
//!
//! It must not link another module's crate: data comes through `cx.call` (SPEC, DESIGN §5).

pub mod admin;
pub mod edge;
pub mod error;
pub mod files;
pub mod forms;
pub mod jsonclass;
pub mod jsonrpc;
pub mod methods;
mod metrics;
mod pages;
pub mod routes;
pub mod session;
pub mod svg;
pub mod views;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use iceprod_runtime::{
    CallError, Config, Context, Module, ModuleError, ModuleKind, ReloadAction, Reply, ReplyTo,
    Request, TimerId,
};
use serde_json::Value;

pub use edge::{Body, HttpReply, HttpRequest, Method as HttpMethod, WebEvent};
pub use error::WebsiteError;
pub use methods::Pending;

use edge::Bridge;
use jsonrpc::{Exchange, Incoming, RpcError};
use methods::Handler;
use metrics::{Metrics, RuntimeView};
use routes::Route;

/// The website module.
pub struct Website {
    bridge: Bridge,
    metrics: Metrics,
    /// JSON-RPC exchanges waiting for deferred answers, by exchange id.
    exchanges: HashMap<u64, OpenExchange>,
    next_exchange: u64,
    /// Sessions looked up in the last seconds.
    sessions: session::SessionCache,
    /// Failed logins, by username and by client address.
    throttle: session::Throttle,
    /// Login attempts waiting out their throttle delay, by the timer that releases them.
    pending_logins: HashMap<TimerId, pages::Req>,
}

/// An HTTP request whose JSON-RPC calls are not all answered yet.
struct OpenExchange {
    request: HttpRequest,
    exchange: Exchange,
}

/// What the website reads of the config: `[website]`, the site id, and the names of the
/// grids (the submit page offers them).
#[derive(PartialEq)]
pub struct WebsiteView {
    website: iceprod_runtime::config::WebsiteConfig,
    site_id: Option<String>,
    grids: Vec<String>,
}

impl Module for Website {
    const KIND: ModuleKind = ModuleKind::Website;
    type Event = WebEvent;
    type View = WebsiteView;

    fn view(config: &Config) -> WebsiteView {
        WebsiteView {
            website: config.website.clone(),
            site_id: config.site.id.clone(),
            grids: config.queue.grids.keys().cloned().collect(),
        }
    }

    fn init(cx: &mut Context<Self>) -> Result<Self, ModuleError> {
        let bridge = Bridge::start(&cx.config().website, cx.worker_sender(), cx.workers())?;
        log::info!("website: listening on http://{}", bridge.local_addr());
        Ok(Website {
            bridge,
            metrics: Metrics::default(),
            exchanges: HashMap::new(),
            next_exchange: 0,
            sessions: session::SessionCache::default(),
            throttle: session::Throttle::default(),
            pending_logins: HashMap::new(),
        })
    }

    fn on_message(&mut self, _cx: &mut Context<Self>, request: Request, reply: ReplyTo) {
        match request {
            Request::Scheduled { job, message } => {
                log::debug!("website: scheduled job {job} sent {message:?}");
                reply.send(Ok(Reply::Done));
            }
            other => {
                log::debug!("website: unsupported request {other:?}");
                reply.send(Err(CallError::Unsupported(
                    "the website takes only scheduled jobs",
                )));
            }
        }
    }

    fn on_worker(&mut self, cx: &mut Context<Self>, event: WebEvent) {
        match event {
            WebEvent::Request(request) => self.serve(cx, request),
            WebEvent::AnsweredByEdge { route, status } => {
                self.metrics.count_http(route.label(), status)
            }
            // Nothing to do but wake the loop, which then re-checks `is_drained`.
            WebEvent::Responded => {}
            WebEvent::ListenerFailed(why) => {
                if !self.bridge.is_stopping() {
                    // The controller restarts the module, which binds a fresh listener.
                    cx.fail(ModuleError::Broken(format!(
                        "the HTTP listener stopped accepting connections: {why}"
                    )));
                }
            }
        }
    }

    fn on_timer(&mut self, cx: &mut Context<Self>, timer: TimerId) {
        if let Some(req) = self.pending_logins.remove(&timer) {
            pages::login_now(cx, req);
        }
    }

    fn check_reload(&mut self, cx: &mut Context<Self>, config: &Arc<Config>) -> Result<(), String> {
        let (old, new) = (&cx.config().website, &config.website);
        if (old.address, old.port) == (new.address, new.port) {
            return Ok(());
        }
        // A restart onto an address that cannot be bound would leave the site without its
        // website; refuse instead, while the old listener still serves. On the same port a
        // new address would collide with this module's own listener (which the restart
        // closes first), so there only the address itself is tried, on any free port.
        let port = if old.port == new.port { 0 } else { new.port };
        let addr = std::net::SocketAddr::new(new.address, port);
        std::net::TcpListener::bind(addr).map(drop).map_err(|e| {
            let shown = std::net::SocketAddr::new(new.address, new.port);
            format!("cannot listen on {shown}: {e}")
        })
    }

    fn on_reload(&mut self, cx: &mut Context<Self>, config: &Arc<Config>) -> ReloadAction {
        let (old, new) = (&cx.config().website, &config.website);
        let needs_restart = old.address != new.address
            || old.port != new.port
            || old.stream_threads != new.stream_threads
            || old.max_connections != new.max_connections
            || old.header_timeout != new.header_timeout
            || old.body_timeout != new.body_timeout
            || old.idle_timeout != new.idle_timeout
            || old.write_timeout != new.write_timeout;
        if needs_restart {
            return ReloadAction::NeedsRestart;
        }
        if old.body_limit != new.body_limit {
            log::info!(
                "website: body limit {} -> {} bytes",
                old.body_limit,
                new.body_limit
            );
            self.bridge.set_body_limit(new.body_limit);
        }
        ReloadAction::Applied
    }

    fn on_shutdown(&mut self, _cx: &mut Context<Self>) {
        log::info!(
            "website: stopping; {} request(s) in flight",
            self.bridge.in_flight()
        );
        self.bridge.stop_accepting();
    }

    fn is_drained(&self) -> bool {
        self.exchanges.is_empty() && self.pending_logins.is_empty() && self.bridge.is_drained()
    }
}

impl Website {
    /// Answers a deferred JSON-RPC call (see [`methods::Handler::Deferred`]). The HTTP
    /// response is sent once every call of its request is answered.
    pub fn answer(&mut self, pending: Pending, result: Result<Value, RpcError>) {
        match self.exchanges.get_mut(&pending.exchange) {
            Some(open) => open.exchange.answer(pending.slot, result),
            None => {
                log::debug!(
                    "website: answer for exchange {} came too late",
                    pending.exchange
                );
                return;
            }
        }
        self.finish_if_complete(pending.exchange);
    }

    /// Routes one request and answers it (or starts its JSON-RPC exchange, or hands it to
    /// the pages).
    fn serve(&mut self, cx: &mut Context<Self>, request: HttpRequest) {
        let route = Route::of(request.url());
        let readable = matches!(request.method(), HttpMethod::Get | HttpMethod::Head);
        let reply = match &route {
            Route::JsonRpc if *request.method() == HttpMethod::Post => {
                return self.start_exchange(cx, request)
            }
            Route::JsonRpc => HttpReply::method_not_allowed("POST"),
            Route::Healthz if readable => health(cx),
            Route::Metrics if readable => HttpReply::with_type(
                200,
                metrics::CONTENT_TYPE,
                self.render_metrics(cx).into_bytes(),
            ),
            Route::Healthz | Route::Metrics | Route::Static(_) | Route::Lib(_) if !readable => {
                HttpReply::method_not_allowed("GET, HEAD")
            }
            Route::Static(name) => static_file(name, request.header("If-None-Match")),
            Route::Lib(path) => lib_file(cx.config().website.lib_dir.as_deref(), path),
            _ => return pages::serve(self, cx, route, request),
        };
        self.send(route, request, reply);
    }

    fn send(&mut self, route: Route, request: HttpRequest, reply: HttpReply) {
        self.metrics.count_http(route.label(), reply.status());
        self.bridge.respond(request, reply);
    }

    /// Parses a JSON-RPC body and dispatches its calls; the exchange is registered first so
    /// that any answer, immediate or deferred, finds it.
    fn start_exchange(&mut self, cx: &mut Context<Self>, mut request: HttpRequest) {
        let body = request.take_body();
        let (exchange, calls) = Exchange::parse(&body, |name| methods::find(name).is_some());
        drop(body);
        let caller = methods::Caller::of(&request);
        let id = self.next_exchange;
        self.next_exchange += 1;
        self.exchanges
            .insert(id, OpenExchange { request, exchange });
        for Incoming { slot, call } in calls {
            let pending = Pending { exchange: id, slot };
            match methods::find(&call.method).map(|m| (m.name, &m.handler)) {
                Some((_, Handler::Immediate(run))) => {
                    let result = run(&call.params, cx.config());
                    self.answer(pending, result);
                }
                Some((name, Handler::Db(build))) => match build(&call.params, cx.config()) {
                    Ok(request) => methods::ask_db(name, cx, Request::Db(request), pending),
                    Err(e) => self.answer(pending, Err(e)),
                },
                Some((name, Handler::Person(build))) => {
                    match build(&call.params, cx.config(), &caller) {
                        Ok(request) => methods::ask_db(name, cx, Request::Db(request), pending),
                        Err(e) => self.answer(pending, Err(e)),
                    }
                }
                Some((_, Handler::Deferred(run))) => run(self, cx, call.params, pending),
                Some((name, Handler::Admin(admin))) => {
                    match (admin.ask)(&call.params)
                        .and_then(|ask| caller.auth(&call.params).map(|auth| (ask, auth)))
                    {
                        Ok((ask, auth)) => admin::run(name, cx, auth, admin, ask, pending),
                        Err(e) => self.answer(pending, Err(e)),
                    }
                }
                // Unreachable: parse yields only calls to names `find` knows.
                None => self.answer(pending, Err(jsonrpc::method_not_found(&call.method))),
            }
        }
        self.finish_if_complete(id);
    }

    fn finish_if_complete(&mut self, id: u64) {
        if !self
            .exchanges
            .get(&id)
            .is_some_and(|o| o.exchange.is_complete())
        {
            return;
        }
        let Some(OpenExchange { request, exchange }) = self.exchanges.remove(&id) else {
            return;
        };
        for (method, code) in exchange.outcomes() {
            self.metrics.count_rpc(methods::label(method), code);
        }
        let answer = exchange.into_answer();
        self.send(
            Route::JsonRpc,
            request,
            HttpReply::json(answer.status, answer.body),
        );
    }

    fn render_metrics(&self, cx: &Context<Self>) -> String {
        let mut depths = [None; ModuleKind::COUNT];
        for kind in ModuleKind::ALL {
            depths[kind.index()] = cx.directory().get(kind).map(|m| m.depth());
        }
        self.metrics.render(&RuntimeView {
            stats: cx.stats(),
            depths,
            in_flight: self.bridge.in_flight(),
        })
    }
}

/// `GET /healthz`: 200 `ok` while every enabled module serves its mailbox; 503 naming the
/// modules that do not (stopped, failed, restarting), so a load balancer or an alert sees a
/// broken site, not just a live website thread.
fn health(cx: &Context<Website>) -> HttpReply {
    let down: Vec<&str> = ModuleKind::ALL
        .into_iter()
        .filter(|&kind| {
            cx.directory().get(kind).is_some()
                && !cx.stats().module(kind).running.load(Ordering::Relaxed)
        })
        .map(ModuleKind::name)
        .collect();
    if down.is_empty() {
        HttpReply::text(200, "ok\n")
    } else {
        HttpReply::text(503, &format!("down: {}\n", down.join(", ")))
    }
}

impl Drop for Website {
    /// Exchanges and logins still waiting (the stop deadline passed) get a 503 rather than a
    /// silent 500.
    fn drop(&mut self) {
        for (_, open) in self.exchanges.drain() {
            let answer = HttpReply::unavailable(open.request.url(), "server stopping");
            self.bridge.respond(open.request, answer);
        }
        for (_, req) in self.pending_logins.drain() {
            let answer = HttpReply::unavailable(req.request.url(), "server stopping");
            self.bridge.respond(req.request, answer);
        }
    }
}

/// `/static/NAME`: an embedded file with cache headers; 304 when the client has it already.
fn static_file(name: &str, if_none_match: Option<&str>) -> HttpReply {
    let Some(asset) = files::asset(name) else {
        return HttpReply::text(404, "not found\n");
    };
    let etag = files::etag(asset.bytes);
    let cache = format!("public, max-age={}", files::STATIC_MAX_AGE);
    let reply = if if_none_match.is_some_and(|v| files::etag_matches(v, &etag)) {
        HttpReply::with_type(304, asset.content_type, Vec::new())
    } else {
        HttpReply::with_type(200, asset.content_type, asset.bytes.to_vec())
    };
    reply.header("Cache-Control", cache).header("ETag", etag)
}

/// `/lib/PATH`: a file under `[website] lib_dir`, opened and streamed by the responder.
fn lib_file(lib_dir: Option<&std::path::Path>, path: &str) -> HttpReply {
    let Some(root) = lib_dir else {
        return HttpReply::text(404, "not found: [website] lib_dir is not set\n");
    };
    match files::safe_relative(path) {
        Ok(rel) => HttpReply::streamed(
            200,
            "application/octet-stream",
            Body::LibFile {
                root: root.to_path_buf(),
                rel: rel.to_string(),
            },
        ),
        Err(files::PathRefusal::Unsafe) => HttpReply::text(400, "refused path\n"),
    }
}
