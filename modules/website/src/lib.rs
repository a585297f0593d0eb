//! iceprod-website: the website module — HTTP on tiny_http, the JSON-RPC endpoint, `/healthz`
//! and `/metrics` (the human pages of SPEC §7 come later).
//!
//! [`Website`] is the module value on its loop thread. It owns:
//! - the bridge to tiny_http ([`bridge`]): pump threads read requests and bodies, responder
//!   threads write responses; the loop itself never blocks on a socket;
//! - the routes ([`routes`]) and what each answers (here, in `Website::serve`);
//! - open JSON-RPC exchanges: one per HTTP request whose calls are not all answered yet
//!   ([`jsonrpc`] for the envelope, [`methods`] for the table). A method may answer later from
//!   a callback of an internal call; the HTTP response goes out when its last call is answered;
//! - its counters for `/metrics` (`metrics.rs`).
//!
//! It must not link another module's crate: data comes through `cx.call` (SPEC, DESIGN §5).

pub mod bridge;
pub mod error;
pub mod jsonclass;
pub mod jsonrpc;
pub mod methods;
mod metrics;
pub mod routes;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use iceprod_runtime::{
    CallError, Config, Context, Module, ModuleError, ModuleKind, ReloadAction, Reply, ReplyTo,
    Request,
};
use serde_json::Value;
use tiny_http::Method as HttpMethod;

pub use bridge::{HttpReply, HttpRequest, WebEvent};
pub use error::WebsiteError;
pub use methods::Pending;

use bridge::Bridge;
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
}

/// An HTTP request whose JSON-RPC calls are not all answered yet.
struct OpenExchange {
    request: HttpRequest,
    exchange: Exchange,
}

impl Module for Website {
    const KIND: ModuleKind = ModuleKind::Website;
    type Event = WebEvent;

    fn init(cx: &mut Context<Self>) -> Result<Self, ModuleError> {
        let bridge = Bridge::start(&cx.config().website, cx.worker_sender())?;
        log::info!("website: listening on http://{}", bridge.local_addr());
        Ok(Website {
            bridge,
            metrics: Metrics::default(),
            exchanges: HashMap::new(),
            next_exchange: 0,
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
            WebEvent::AnsweredByPump { route, status } => {
                self.metrics.count_http(route.label(), status)
            }
            // Nothing to do but wake the loop, which then re-checks `is_drained`.
            WebEvent::Responded => {}
            WebEvent::PumpExited => self.bridge.pump_exited(),
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

    fn on_reload(&mut self, cx: &mut Context<Self>, config: &Arc<Config>) -> ReloadAction {
        let (old, new) = (&cx.config().website, &config.website);
        let needs_restart = old.address != new.address
            || old.port != new.port
            || old.pump_threads != new.pump_threads
            || old.responder_threads != new.responder_threads;
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
        self.exchanges.is_empty() && self.bridge.is_drained()
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

    /// Routes one request and answers it (or starts its JSON-RPC exchange).
    fn serve(&mut self, cx: &mut Context<Self>, request: HttpRequest) {
        let route = Route::of(request.url());
        let readable = matches!(request.method(), HttpMethod::Get | HttpMethod::Head);
        let reply = match route {
            Route::JsonRpc if *request.method() == HttpMethod::Post => {
                return self.start_exchange(cx, request)
            }
            Route::JsonRpc => HttpReply::method_not_allowed("POST"),
            Route::Healthz if readable => HttpReply::text(200, "ok\n"),
            Route::Metrics if readable => HttpReply::with_type(
                200,
                metrics::CONTENT_TYPE,
                self.render_metrics(cx).into_bytes(),
            ),
            Route::Healthz | Route::Metrics => HttpReply::method_not_allowed("GET, HEAD"),
            Route::NotFound => HttpReply::text(404, "not found\n"),
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
        let mut depths = [None; 6];
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

impl Drop for Website {
    /// Exchanges still waiting (the stop deadline passed) get a 503 rather than a silent 500.
    fn drop(&mut self) {
        for (_, open) in self.exchanges.drain() {
            let answer = HttpReply::text(503, "server stopping\n");
            self.bridge.respond(open.request, answer);
        }
    }
}
