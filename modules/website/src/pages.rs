//! The human pages of SPEC §7: who is asking ([`serve`] looks the session up), what they may
//! do (the permission gates), and the handler of each page and form.
//!
//! Everything here runs on the website's loop and never blocks: db data comes through
//! `cx.call` and each handler continues in the call's callback, carrying the request along in
//! a [`Req`]. A page is answered exactly once, by [`finish`].
//!
//! Permissions: anonymous visitors may read pages when `[website] public_reads` is on (else
//! they are sent to `/login`); every state-changing form needs a session and its CSRF token
//! (403 otherwise, nothing changed); the db checks the session, the token and ownership again
//! in the transaction that acts (owners on their datasets, admins on all), and its refusal is
//! shown as a 403 page. A successful form POST answers 303 (Post/Redirect/Get).
//! `/static/` and `/lib/` (answered in `lib.rs`) are open whatever `public_reads` says: the
//! login page needs its stylesheet, and workers fetching files have no session.

use std::time::Instant;

use askama::Template;
use iceprod_runtime::config::QueueConfig;
use iceprod_runtime::dataset::DatasetErrors;
use iceprod_runtime::protocol::MAX_JOBS_PER_DATASET;
use iceprod_runtime::status::ControlReply;
use iceprod_runtime::web::{
    DatasetKey, Group, PageData, PageQuery, SessionInfo, TaskFilter, UserAuth,
};
use iceprod_runtime::{
    Call, CallError, Context, ControlAsk, DatasetAction, DatasetSubmission, DbRequest, Reply,
    TaskAction, UserAction,
};
use serde_json::{json, Value};

use crate::edge::{Body, HttpReply, HttpRequest, Method};
use crate::forms::{self, encode, local_path, BadParam, Form};
use crate::routes::Route;
use crate::session;
use crate::views::*;
use crate::Website;

/// The example config the submit page starts from.
pub const EXAMPLE_CONFIG: &str = include_str!("../../../examples/two-tasks.json");

/// How many log lines the task page shows (SPEC §7).
pub const TAIL_LINES: usize = 40;

/// A request on its way through the handlers.
pub(crate) struct Req {
    pub request: HttpRequest,
    pub route: Route,
    pub session: Option<SessionInfo>,
    /// Whether cookies get `Secure`.
    pub secure: bool,
    pub query: Form,
    /// The urlencoded body of a POST (empty for GET).
    pub form: Form,
    pub nav: Nav,
    /// The request sent a session cookie the db no longer knows (expired, logged out): the
    /// answer clears it, so the browser stops sending it.
    pub stale_cookie: bool,
}

impl Req {
    fn is_post(&self) -> bool {
        *self.request.method() == Method::Post
    }

    fn can_act_on(&self, owner: &str) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.admin || s.username == owner)
    }

    fn is_admin(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.admin)
    }

    /// The db credentials of this request's session, with the CSRF token it sent.
    fn auth(&self) -> Option<UserAuth> {
        self.session.as_ref().map(|s| UserAuth::Session {
            session_id: s.session_id.clone(),
            csrf_token: self.form.get("csrf_token").map(str::to_string),
        })
    }
}

/// How a db refusal reads on this page: for a read, an unknown id is 404; for an action, a
/// refusal is the person's to fix (400).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Read,
    Act,
}

/// Entry point for every page route: finds the session, then dispatches.
pub(crate) fn serve(
    web: &mut Website,
    cx: &mut Context<Website>,
    route: Route,
    mut request: HttpRequest,
) {
    let secure = cx.config().website.secure_cookies
        || request
            .header("X-Forwarded-Proto")
            .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let query = Form::query(request.url());
    let form = if *request.method() == Method::Post {
        Form::parse(&request.take_body())
    } else {
        Form::default()
    };
    let session_id = request
        .headers_named("Cookie")
        .find_map(|c| forms::cookie(c, session::COOKIE))
        .filter(|id| !id.is_empty())
        .map(str::to_string);
    let mut req = Req {
        request,
        route,
        session: None,
        secure,
        query,
        form,
        nav: Nav::default(),
        stale_cookie: false,
    };
    let Some(session_id) = session_id else {
        return dispatch(web, cx, req);
    };
    if let Some(info) = web.sessions.get(&session_id, Instant::now()) {
        req.set_session(info.clone());
        return dispatch(web, cx, req);
    }
    let asked_at = web.sessions.generation();
    cx.call_typed(DbRequest::session(session_id), move |web, cx, result| {
        match result {
            Ok(info) => {
                web.sessions.put(info.clone(), Instant::now(), asked_at);
                req.set_session(info);
            }
            // Expired or unknown: the visitor is anonymous (their cookie is stale).
            Err(CallError::Forbidden(_) | CallError::Refused(_)) => req.stale_cookie = true,
            Err(e) => return finish(web, req, call_error(&Nav::default(), Mode::Read, &e)),
        }
        dispatch(web, cx, req)
    });
}

impl Req {
    fn set_session(&mut self, info: SessionInfo) {
        self.nav = Nav {
            username: Some(info.username.clone()),
            csrf: info.csrf_token.clone(),
        };
        self.session = Some(info);
    }
}

/// Answers the request (and counts it for `/metrics`).
pub(crate) fn finish(web: &mut Website, req: Req, mut reply: HttpReply) {
    if req.stale_cookie && reply.header_value("Set-Cookie").is_none() {
        reply = reply.header("Set-Cookie", session::clear_cookie(req.secure));
    }
    web.send(req.route, req.request, reply);
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// An error page: the status, its text as `<h1>`, and `message` in `<p class="error">`.
pub(crate) fn error_page(nav: &Nav, status: u16, message: &str) -> HttpReply {
    render(
        status,
        &ErrorPage {
            nav,
            status,
            reason: reason(status),
            message,
        },
    )
}

fn internal_error_page_nav(nav: &Nav) -> HttpReply {
    error_page(
        nav,
        500,
        "The server met an internal error; the details are in its log.",
    )
}

/// The pages' Content-Security-Policy: scripts and styles from this site only (inline style
/// attributes allowed, for the progress bar), no framing. Templates escape everything already;
/// this stops an injected script from running should an escape ever be missed.
const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   frame-ancestors 'none'; form-action 'self'";

fn render(status: u16, template: &impl Template) -> HttpReply {
    match template.render() {
        Ok(page) => HttpReply::html(status, page).header("Content-Security-Policy", CSP.into()),
        Err(e) => {
            log::error!("website: rendering a page failed: {e}");
            HttpReply::text(500, "internal error\n")
        }
    }
}

/// The page for a failed db call. Messages of refusals are documented as safe to show; other
/// failures show a generic text and log the details.
fn call_error(nav: &Nav, mode: Mode, e: &CallError) -> HttpReply {
    match e {
        CallError::Forbidden(m) => error_page(nav, 403, m),
        CallError::Refused(m) if mode == Mode::Read => error_page(nav, 404, m),
        CallError::Refused(m) => error_page(nav, 400, m),
        CallError::Timeout => {
            log::warn!("website: a db call timed out");
            error_page(nav, 503, "The database did not answer in time; try again.")
        }
        other => {
            log::error!("website: db call failed: {other}");
            internal_error_page_nav(nav)
        }
    }
}

fn bad_param(nav: &Nav, e: &BadParam) -> HttpReply {
    error_page(nav, 400, &e.to_string())
}

/// Asks the db and continues with `then` on its typed answer; a failed call is answered here.
fn ask<R, F>(cx: &mut Context<Website>, req: Req, mode: Mode, call: Call<R>, then: F)
where
    R: 'static,
    F: FnOnce(&mut Website, &mut Context<Website>, Req, R) + 'static,
{
    cx.call_typed(call, move |web, cx, result| match result {
        Ok(reply) => then(web, cx, req, reply),
        Err(e) => {
            let reply = call_error(&req.nav, mode, &e);
            finish(web, req, reply)
        }
    });
}

/// Asks for one page's data; `then` renders it.
fn ask_page<F>(cx: &mut Context<Website>, req: Req, query: PageQuery, then: F)
where
    F: FnOnce(&mut Website, &mut Context<Website>, &Req, PageData) -> HttpReply + 'static,
{
    ask(
        cx,
        req,
        Mode::Read,
        DbRequest::page(query),
        |web, cx, req, data| {
            let out = then(web, cx, &req, data);
            finish(web, req, out)
        },
    );
}

/// A person's action as the session's user; 303 to `back` once done.
fn act(web: &mut Website, cx: &mut Context<Website>, req: Req, action: UserAction, back: String) {
    let Some(auth) = req.auth() else {
        let reply = error_page(&req.nav, 403, "Log in first.");
        return finish(web, req, reply);
    };
    ask(
        cx,
        req,
        Mode::Act,
        DbRequest::act_as(auth, action),
        move |web, _, req, ()| finish(web, req, HttpReply::see_other(&back)),
    );
}

/// Routes a request whose visitor is known.
fn dispatch(web: &mut Website, cx: &mut Context<Website>, req: Req) {
    let post = req.is_post();
    let get = matches!(req.request.method(), Method::Get | Method::Head);
    let public = cx.config().website.public_reads;
    // Pages anyone may open whatever public_reads says.
    let open_route = matches!(req.route, Route::Login | Route::Help | Route::NotFound);
    if get && !public && req.session.is_none() && !open_route {
        let next = encode(req.request.url());
        return finish(
            web,
            req,
            HttpReply::see_other(&format!("/login?next={next}")),
        );
    }
    // Every state-changing POST (but the login itself) needs a session and its token.
    if post && req.route != Route::Login {
        if let Err(reply) = check_csrf(&req) {
            return finish(web, req, reply);
        }
    }
    let route = req.route.clone();
    match (route, get, post) {
        (Route::Home, true, _) => home(cx, req),
        (Route::Login, true, _) => login_page(web, req),
        (Route::Login, _, true) => login_post(web, cx, req),
        (Route::Logout, _, true) => logout(web, cx, req),
        (Route::Submit, true, _) => submit_page(web, cx, req),
        (Route::Submit, _, true) => submit_post(web, cx, req),
        (Route::SubmitValidate, _, true) => validate(web, req),
        (Route::Config, true, _) => config_page(web, cx, req),
        (Route::Config, _, true) => config_post(web, cx, req),
        (Route::Datasets, true, _) => datasets(web, cx, req),
        (Route::Dataset(n), true, _) => dataset(cx, req, n),
        (Route::DatasetAction(n), _, true) => dataset_action(web, cx, req, n),
        (Route::Tasks, true, _) => tasks(web, cx, req),
        (Route::TasksAction, _, true) => tasks_action(web, cx, req),
        (Route::Task(id), true, _) => task(cx, req, id),
        (Route::TaskAction(id), _, true) => task_action(web, cx, req, id),
        (Route::Jobs, true, _) => jobs(web, cx, req),
        (Route::Job(id), true, _) => job(cx, req, id),
        (Route::JobAction(id), _, true) => job_action(web, cx, req, id),
        (Route::Log { task_id, name }, true, _) => log(cx, req, task_id, name),
        (Route::Groups, true, _) => groups(cx, req),
        (Route::Groups, _, true) => groups_post(web, cx, req),
        (Route::Site, true, _) => site(web, cx, req),
        (Route::SiteReload, _, true) => site_reload(web, cx, req),
        (Route::Help, true, _) => {
            let reply = render(200, &HelpView { nav: &req.nav });
            finish(web, req, reply)
        }
        (Route::NotFound, _, _) => {
            let reply = error_page(&req.nav, 404, "There is no page at this address.");
            finish(web, req, reply)
        }
        (route, _, _) => {
            let allow = match route {
                Route::Login | Route::Submit | Route::Config | Route::Groups => "GET, HEAD, POST",
                Route::Logout
                | Route::SubmitValidate
                | Route::DatasetAction(_)
                | Route::TasksAction
                | Route::TaskAction(_)
                | Route::JobAction(_)
                | Route::SiteReload => "POST",
                _ => "GET, HEAD",
            };
            let reply = error_page(&req.nav, 405, "This page does not take that method.")
                .header("Allow", allow.to_string());
            finish(web, req, reply)
        }
    }
}

/// A POST needs a session and the session's CSRF token in `csrf_token` (or, for scripts, the
/// `X-CSRF-Token` header); otherwise 403 and nothing is done.
fn check_csrf(req: &Req) -> Result<(), HttpReply> {
    let Some(session) = &req.session else {
        return Err(error_page(
            &req.nav,
            403,
            "Log in first: this action needs a session.",
        ));
    };
    let sent = req
        .form
        .get("csrf_token")
        .or_else(|| req.request.header("X-CSRF-Token"))
        .unwrap_or_default();
    if iceprod_runtime::web::same_secret(sent.as_bytes(), session.csrf_token.as_bytes()) {
        Ok(())
    } else {
        Err(error_page(
            &req.nav,
            403,
            "The form's security token is missing or stale; reload the page and try again.",
        ))
    }
}

fn home(cx: &mut Context<Website>, req: Req) {
    ask_page(cx, req, PageQuery::Home { hours: 24 }, |_, _, req, data| {
        let PageData::Home(home) = data else {
            return internal_error_page_nav(&req.nav);
        };
        render(
            200,
            &HomeView {
                nav: &req.nav,
                counts: &home.dataset_counts,
                active: crate::svg::active_tasks(&home.graphs),
                completed: crate::svg::completions_per_hour(&home.graphs),
            },
        )
    });
}

fn login_next(form: &Form) -> &str {
    form.get("next").filter(|n| local_path(n)).unwrap_or("/")
}

/// The login form's token the browser sent in its cookie, if it is one we could have made.
fn login_cookie_token(req: &Req) -> Option<String> {
    req.request
        .headers_named("Cookie")
        .find_map(|c| forms::cookie(c, session::LOGIN_COOKIE))
        .filter(|t| session::valid_login_token(t))
        .map(str::to_string)
}

/// The login page, with `status` and `error`. Its token is the browser's login cookie, or a
/// fresh one handed out in a new cookie.
fn login_form(mut req: Req, status: u16, username: &str, error: Option<&str>) -> (Req, HttpReply) {
    let (token, fresh) = match login_cookie_token(&req) {
        Some(token) => (token, false),
        None => match session::new_login_token() {
            Ok(token) => (token, true),
            Err(e) => {
                log::error!("website: cannot read random bytes for a login token: {e}");
                let reply = internal_error_page_nav(&req.nav);
                return (req, reply);
            }
        },
    };
    // A GET has its `next` in the query; a refused POST carries it in the form.
    let next = if req.is_post() {
        login_next(&req.form)
    } else {
        login_next(&req.query)
    };
    let mut reply = render(
        status,
        &LoginPage {
            nav: &req.nav,
            next,
            username,
            error,
            token: &token,
        },
    );
    if fresh {
        reply = reply.header("Set-Cookie", session::login_cookie(&token, req.secure));
        if req.stale_cookie {
            // `finish` clears a stale session cookie only when no other cookie is set.
            reply = reply.header("Set-Cookie", session::clear_cookie(req.secure));
            req.stale_cookie = false;
        }
    }
    (req, reply)
}

fn login_page(web: &mut Website, req: Req) {
    let (req, reply) = login_form(req, 200, "", None);
    finish(web, req, reply)
}

/// Whether a login POST carries the token of its form, the same as its cookie.
fn login_token_matches(req: &Req) -> bool {
    let sent = req.form.get(session::LOGIN_FIELD).unwrap_or_default();
    login_cookie_token(req)
        .is_some_and(|token| iceprod_runtime::web::same_secret(sent.as_bytes(), token.as_bytes()))
}

/// The throttle keys of a login attempt: its username first, then its client address.
fn throttle_keys(req: &Req) -> Vec<String> {
    let user = req.form.get("username").unwrap_or_default();
    let mut keys = vec![format!("user:{user}")];
    if let Some(ip) = client_ip(&req.request) {
        keys.push(format!("ip:{ip}"));
    }
    keys
}

/// The client's address. Behind a proxy on this host (nginx, SPEC §10) every connection comes
/// from loopback, so there the last `X-Forwarded-For` entry (the one the proxy appended) names
/// the client; from anywhere else the header is the client's own claim and is ignored.
fn client_ip(request: &HttpRequest) -> Option<std::net::IpAddr> {
    let peer = request.remote_ip()?;
    if !peer.is_loopback() {
        return Some(peer);
    }
    let forwarded = request
        .headers_named("X-Forwarded-For")
        .last()
        .and_then(|h| h.rsplit(',').next())
        .and_then(|ip| ip.trim().parse().ok());
    Some(forwarded.unwrap_or(peer))
}

fn login_post(web: &mut Website, cx: &mut Context<Website>, req: Req) {
    // Checked before the throttle: no password is looked at, so it counts as no attempt.
    if !login_token_matches(&req) {
        log::info!("website: login form without its token refused");
        let username = req.form.get("username").unwrap_or_default().to_string();
        let (req, reply) = login_form(
            req,
            403,
            &username,
            Some(
                "The login form's security token is missing or does not match its cookie \
                 (are cookies enabled?). This page has a fresh form: log in again.",
            ),
        );
        return finish(web, req, reply);
    }
    let wait = web.throttle.begin(&throttle_keys(&req), Instant::now());
    if wait.is_zero() {
        return login_now(cx, req);
    }
    log::info!(
        "website: login for {:?} waits {wait:?} after failed attempts",
        req.form.get("username").unwrap_or_default()
    );
    let timer = cx.set_timer(wait);
    web.pending_logins.insert(timer, req);
}

/// Checks the password now (after any throttle wait).
pub(crate) fn login_now(cx: &mut Context<Website>, req: Req) {
    let username = req.form.get("username").unwrap_or_default().to_string();
    let password = req.form.get("password").unwrap_or_default().to_string();
    let ttl = cx.config().website.session_ttl;
    let login = DbRequest::login(username, password, ttl);
    cx.call_typed(login, move |web, _, result| {
        let keys = throttle_keys(&req);
        let reply = match result {
            Ok(info) => {
                web.throttle.succeeded(&keys);
                let cookie = session::set_cookie(&info.session_id, ttl, req.secure);
                log::info!("website: {} logged in", info.username);
                // Not cached here: a password change may have come while the login was
                // checked; the next request asks the db (see `SessionCache::put`).
                HttpReply::see_other(login_next(&req.form)).header("Set-Cookie", cookie)
            }
            // The attempt was counted as a failure when it began.
            Err(CallError::Forbidden(_)) => render(
                403,
                &LoginPage {
                    nav: &req.nav,
                    next: login_next(&req.form),
                    username: req.form.get("username").unwrap_or_default(),
                    error: Some("Wrong user name or password."),
                    // It matched the cookie: the form stays usable.
                    token: req.form.get(session::LOGIN_FIELD).unwrap_or_default(),
                },
            ),
            Err(e) => call_error(&req.nav, Mode::Act, &e),
        };
        finish(web, req, reply)
    });
}

fn logout(web: &mut Website, cx: &mut Context<Website>, req: Req) {
    // check_csrf passed, so there is a session.
    let Some(s) = req.session.clone() else {
        return finish(web, req, HttpReply::see_other("/"));
    };
    let call = DbRequest::logout(s.session_id.clone(), s.csrf_token.clone());
    ask(cx, req, Mode::Act, call, move |web, _, req, ()| {
        web.sessions.remove(&s.session_id);
        let reply =
            HttpReply::see_other("/").header("Set-Cookie", session::clear_cookie(req.secure));
        finish(web, req, reply)
    });
}

/// The site's grids as (gridspec, label), for the submit page.
fn grid_choices(cx: &Context<Website>) -> Vec<(String, String)> {
    let site = cx.config().site.id.clone().unwrap_or_default();
    cx.config()
        .queue
        .grids
        .values()
        .map(|g| {
            let spec = QueueConfig::gridspec(&site, &g.name);
            (spec, g.name.clone())
        })
        .collect()
}

fn submit_page(web: &mut Website, cx: &mut Context<Website>, req: Req) {
    if req.session.is_none() {
        return finish(web, req, HttpReply::see_other("/login?next=/submit"));
    }
    let grids = grid_choices(cx);
    let first = grids.first().map(|g| g.0.clone()).unwrap_or_default();
    let reply = render(
        200,
        &SubmitView {
            nav: &req.nav,
            config: EXAMPLE_CONFIG,
            errors: Vec::new(),
            grids,
            gridspec: &first,
            njobs: "1",
            description: "",
            debug: false,
        },
    );
    finish(web, req, reply)
}

/// The submit page again with the form as sent and why it was refused.
fn submit_refused(cx: &Context<Website>, req: &Req, status: u16, errors: Vec<String>) -> HttpReply {
    let f = &req.form;
    render(
        status,
        &SubmitView {
            nav: &req.nav,
            config: f.get("config").unwrap_or_default(),
            errors,
            grids: grid_choices(cx),
            gridspec: f.get("gridspec").unwrap_or_default(),
            njobs: f.get("njobs").unwrap_or_default(),
            description: f.get("description").unwrap_or_default(),
            debug: f.non_empty("debug").is_some(),
        },
    )
}

/// Every problem of a config, each naming its path.
/// A dataset config's mistakes, each naming its path: the same checks as the db's
/// `submit_dataset` (types and shape, then the rules of SPEC §3), so the editor's live messages
/// and a refused submission agree.
fn check_config(config: &str) -> Result<(), DatasetErrors> {
    iceprod_runtime::dataset::parse_and_validate(config).map(drop)
}

fn config_errors(config: &str) -> Vec<String> {
    match check_config(config) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn submit_post(web: &mut Website, cx: &mut Context<Website>, req: Req) {
    let f = &req.form;
    let config = f.get("config").unwrap_or_default().to_string();
    let mut errors = config_errors(&config);
    let njobs = forms::number(f, "njobs", 1, u64::from(MAX_JOBS_PER_DATASET));
    match njobs {
        Ok(0) => errors.push("parameter 'njobs' must be at least 1".into()),
        Err(ref e) => errors.push(e.to_string()),
        Ok(_) => {}
    }
    let gridspec = f.get("gridspec").unwrap_or_default().to_string();
    if !grid_choices(cx).iter().any(|g| g.0 == gridspec) {
        errors.push(format!("grid '{gridspec}' is not a grid of this site"));
    }
    if !errors.is_empty() {
        let reply = submit_refused(cx, &req, 400, errors);
        return finish(web, req, reply);
    }
    let (Some(auth), Some(s)) = (req.auth(), &req.session) else {
        return finish(web, req, HttpReply::see_other("/login?next=/submit"));
    };
    let submission = DatasetSubmission {
        config,
        description: f.get("description").unwrap_or_default().to_string(),
        njobs: njobs.map_or(1, |n| n as u32),
        gridspec,
        debug: f.non_empty("debug").is_some(),
        group: None,
        username: s.username.clone(),
        stat_keys: Vec::new(),
    };
    let call = DbRequest::submit_dataset_as(auth, Box::new(submission));
    cx.call_typed(call, move |web, cx, result| {
        let reply = match result {
            Ok((_, dataset_num)) => HttpReply::see_other(&format!("/dataset/{dataset_num}")),
            Err(CallError::Refused(m) | CallError::Forbidden(m)) => {
                submit_refused(cx, &req, 400, vec![m])
            }
            Err(e) => call_error(&req.nav, Mode::Act, &e),
        };
        finish(web, req, reply)
    });
}

/// `POST /submit/validate`: `{valid, errors: [{path, message}]}` for the live messages.
fn validate(web: &mut Website, req: Req) {
    let config = req.form.get("config").unwrap_or_default();
    let body = match check_config(config) {
        Ok(()) => json!({"valid": true, "errors": []}),
        Err(errors) => json!({
            "valid": false,
            "errors": errors.iter().map(|e| json!({
                "path": e.location(),
                "message": e.to_string(),
            })).collect::<Vec<Value>>(),
        }),
    };
    let reply = HttpReply::json(200, body.to_string().into_bytes());
    finish(web, req, reply)
}

fn required<'a>(req: &'a Req, form: &'a Form, name: &'static str) -> Result<&'a str, HttpReply> {
    form.non_empty(name).ok_or_else(|| {
        bad_param(
            &req.nav,
            &BadParam {
                name,
                reason: "is required".into(),
            },
        )
    })
}

/// Pretty-prints stored JSON for reading; text that is not JSON is shown as stored.
fn pretty(config: &str) -> String {
    serde_json::from_str::<Value>(config)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| config.to_string())
}

fn config_page(web: &mut Website, cx: &mut Context<Website>, req: Req) {
    let id = match required(&req, &req.query, "dataset_id") {
        Ok(id) => id.to_string(),
        Err(reply) => return finish(web, req, reply),
    };
    let want_edit = req.query.get("edit") == Some("1");
    ask_page(
        cx,
        req,
        PageQuery::Config(DatasetKey::Id(id)),
        move |_, _, req, data| {
            let PageData::Config(page) = data else {
                return internal_error_page_nav(&req.nav);
            };
            let can_act = req.can_act_on(&page.dataset.username);
            if want_edit && !can_act {
                return error_page(
                    &req.nav,
                    403,
                    "Only the dataset's owner or an admin may edit its config.",
                );
            }
            render(
                200,
                &ConfigView {
                    nav: &req.nav,
                    d: &page.dataset,
                    config: &pretty(&page.config),
                    edit: want_edit,
                    can_act,
                    errors: Vec::new(),
                },
            )
        },
    );
}

fn config_post(web: &mut Website, cx: &mut Context<Website>, req: Req) {
    let (id, config) = match (
        required(&req, &req.form, "dataset_id"),
        required(&req, &req.form, "config"),
    ) {
        (Ok(id), Ok(c)) => (id.to_string(), c.to_string()),
        (Err(reply), _) | (_, Err(reply)) => return finish(web, req, reply),
    };
    let errors = config_errors(&config);
    if !errors.is_empty() {
        let reply = error_page(&req.nav, 400, &errors.join("\n"));
        return finish(web, req, reply);
    }
    let back = format!("/config?dataset_id={}", encode(&id));
    act(
        web,
        cx,
        req,
        UserAction::UpdateConfig {
            dataset_id: id,
            config,
        },
        back,
    );
}

fn datasets(web: &mut Website, cx: &mut Context<Website>, req: Req) {
    let paging = match forms::paging(&req.query) {
        Ok(p) => p,
        Err(e) => {
            let reply = bad_param(&req.nav, &e);
            return finish(web, req, reply);
        }
    };
    let status = req.query.non_empty("status").map(str::to_string);
    let query = PageQuery::Datasets {
        status: status.clone(),
        paging,
    };
    ask_page(cx, req, query, move |_, _, req, data| {
        let PageData::Datasets(list) = data else {
            return internal_error_page_nav(&req.nav);
        };
        let s = status.as_deref().unwrap_or_default();
        render(
            200,
            &DatasetsView {
                nav: &req.nav,
                status: status.as_deref(),
                rows: &list.rows,
                total: list.total,
                pager: pager("/dataset", &[("status", s)], paging, list.total),
            },
        )
    });
}

fn dataset(cx: &mut Context<Website>, req: Req, num: u64) {
    let query = PageQuery::Dataset(DatasetKey::Num(num));
    ask_page(cx, req, query, |_, _, req, data| {
        let PageData::Dataset(page) = data else {
            return internal_error_page_nav(&req.nav);
        };
        let can_act = req.can_act_on(&page.dataset.username);
        render(200, &DatasetView::new(&req.nav, &page, can_act))
    });
}

fn dataset_action(web: &mut Website, cx: &mut Context<Website>, req: Req, num: u64) {
    let action = match req.form.get("action").unwrap_or_default() {
        "suspend" => DatasetAction::Suspend,
        "resume" => DatasetAction::Resume,
        "truncate" => DatasetAction::Truncate,
        "reset" => DatasetAction::Reset,
        "hard_reset" => DatasetAction::HardReset,
        other => {
            let reply = error_page(&req.nav, 400, &format!("unknown dataset action '{other}'"));
            return finish(web, req, reply);
        }
    };
    if action == DatasetAction::HardReset && req.form.get("confirm") != Some("yes") {
        let target = format!("/dataset/{num}/action");
        let back = format!("/dataset/{num}");
        let reply = render(
            200,
            &ConfirmView {
                nav: &req.nav,
                question: "A hard reset sends every task of this dataset back to be run again, \
                           complete ones too. Go on?",
                verb: "hard reset",
                action: &target,
                back: &back,
                fields: req
                    .form
                    .pairs()
                    .iter()
                    .filter(|(n, _)| n != "confirm")
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect(),
            },
        );
        return finish(web, req, reply);
    }
    // The dataset's id and owner first: an unknown number is 404, and someone else's dataset
    // is refused here already (the db refuses it again in the transaction).
    let query = DbRequest::dataset_page(PageQuery::Dataset(DatasetKey::Num(num)));
    ask(cx, req, Mode::Read, query, move |web, cx, req, page| {
        if !req.can_act_on(&page.dataset.username) {
            let reply = error_page(
                &req.nav,
                403,
                "Only the dataset's owner or an admin may act on it.",
            );
            return finish(web, req, reply);
        }
        let dataset_id = page.dataset.dataset_id.clone();
        act(
            web,
            cx,
            req,
            UserAction::Dataset { dataset_id, action },
            format!("/dataset/{num}"),
        );
    });
}

fn task_filter(q: &Form) -> TaskFilter {
    let s = |n| q.non_empty(n).map(str::to_string);
    TaskFilter {
        dataset: s("dataset_id").map(DatasetKey::Id),
        job_id: s("job_id"),
        status: s("status"),
        name: s("name"),
    }
}

fn tasks(web: &mut Website, cx: &mut Context<Website>, req: Req) {
    let paging = match forms::paging(&req.query) {
        Ok(p) => p,
        Err(e) => {
            let reply = bad_param(&req.nav, &e);
            return finish(web, req, reply);
        }
    };
    let filter = task_filter(&req.query);
    ask_page(
        cx,
        req,
        PageQuery::Tasks { filter, paging },
        move |_, _, req, data| {
            let PageData::Tasks(list) = data else {
                return internal_error_page_nav(&req.nav);
            };
            let q = &req.query;
            let g = |n| q.get(n).unwrap_or_default();
            let filters = [
                ("dataset_id", g("dataset_id")),
                ("job_id", g("job_id")),
                ("name", g("name")),
                ("status", g("status")),
            ];
            render(
                200,
                &TasksView {
                    nav: &req.nav,
                    f_dataset: g("dataset_id"),
                    f_job: g("job_id"),
                    f_name: g("name"),
                    f_status: g("status"),
                    rows: list
                        .rows
                        .iter()
                        .map(|t| (t, req.can_act_on(&t.owner)))
                        .collect(),
                    total: list.total,
                    pager: pager("/task", &filters, paging, list.total),
                    can_act: list.rows.iter().any(|t| req.can_act_on(&t.owner)),
                    back: req.request.url(),
                },
            )
        },
    );
}

/// The `action` field of a task or job form, if it is one of `allowed`.
fn task_action_of(req: &Req, allowed: &[&str]) -> Result<TaskAction, HttpReply> {
    let name = req.form.get("action").unwrap_or_default();
    let action = match name {
        "reset" => Some(TaskAction::Reset),
        "hard_reset" => Some(TaskAction::HardReset),
        "suspend" => Some(TaskAction::Suspend),
        "resume" => Some(TaskAction::Resume),
        _ => None,
    };
    action
        .filter(|_| allowed.contains(&name))
        .ok_or_else(|| error_page(&req.nav, 400, &format!("unknown action '{name}'")))
}

fn tasks_action(web: &mut Website, cx: &mut Context<Website>, req: Req) {
    let action = match task_action_of(&req, &["reset", "suspend", "resume"]) {
        Ok(a) => a,
        Err(reply) => return finish(web, req, reply),
    };
    let task_ids: Vec<String> = req
        .form
        .all("task_id")
        .into_iter()
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if task_ids.is_empty() {
        let reply = error_page(&req.nav, 400, "No task was checked.");
        return finish(web, req, reply);
    }
    let back = req
        .form
        .get("back")
        .filter(|b| local_path(b))
        .unwrap_or("/task")
        .to_string();
    act(web, cx, req, UserAction::Tasks { task_ids, action }, back);
}

fn task(cx: &mut Context<Website>, req: Req, task_id: String) {
    let query = PageQuery::Task {
        task_id,
        tail_lines: TAIL_LINES,
    };
    ask_page(cx, req, query, |_, _, req, data| {
        let PageData::Task(page) = data else {
            return internal_error_page_nav(&req.nav);
        };
        render(
            200,
            &TaskView {
                nav: &req.nav,
                t: &page.task,
                page: &page,
                can_act: req.can_act_on(&page.task.owner),
            },
        )
    });
}

fn task_action(web: &mut Website, cx: &mut Context<Website>, req: Req, task_id: String) {
    let action = match task_action_of(&req, &["reset", "suspend", "resume"]) {
        Ok(a) => a,
        Err(reply) => return finish(web, req, reply),
    };
    let back = format!("/task/{}", encode(&task_id));
    act(
        web,
        cx,
        req,
        UserAction::Tasks {
            task_ids: vec![task_id],
            action,
        },
        back,
    );
}

fn jobs(web: &mut Website, cx: &mut Context<Website>, req: Req) {
    let paging = forms::paging(&req.query);
    let id = required(&req, &req.query, "dataset_id").map(str::to_string);
    let (paging, id) = match (paging, id) {
        (Ok(p), Ok(id)) => (p, id),
        (Err(e), _) => {
            let reply = bad_param(&req.nav, &e);
            return finish(web, req, reply);
        }
        (_, Err(reply)) => return finish(web, req, reply),
    };
    let status = req.query.non_empty("status").map(str::to_string);
    let query = PageQuery::Jobs {
        dataset: DatasetKey::Id(id.clone()),
        status: status.clone(),
        paging,
    };
    ask_page(cx, req, query, move |_, _, req, data| {
        let PageData::Jobs(list) = data else {
            return internal_error_page_nav(&req.nav);
        };
        let s = status.as_deref().unwrap_or_default();
        render(
            200,
            &JobsView {
                nav: &req.nav,
                dataset: &id,
                status: status.as_deref(),
                rows: &list.rows,
                total: list.total,
                pager: pager(
                    "/job",
                    &[("dataset_id", &id), ("status", s)],
                    paging,
                    list.total,
                ),
            },
        )
    });
}

fn job(cx: &mut Context<Website>, req: Req, job_id: String) {
    ask_page(cx, req, PageQuery::Job { job_id }, |_, _, req, data| {
        let PageData::Job(page) = data else {
            return internal_error_page_nav(&req.nav);
        };
        render(
            200,
            &JobView {
                nav: &req.nav,
                j: &page.job,
                tasks: &page.tasks,
                can_act: req.can_act_on(&page.job.owner),
            },
        )
    });
}

fn job_action(web: &mut Website, cx: &mut Context<Website>, req: Req, job_id: String) {
    let action = match task_action_of(&req, &["reset", "hard_reset", "suspend"]) {
        Ok(a) => a,
        Err(reply) => return finish(web, req, reply),
    };
    let back = format!("/job/{}", encode(&job_id));
    act(
        web,
        cx,
        req,
        UserAction::Jobs {
            job_ids: vec![job_id],
            action,
        },
        back,
    );
}

/// `/log/TASK/NAME`: the whole log as plain text, inflated by the responder as it writes.
fn log(cx: &mut Context<Website>, req: Req, task_id: String, name: String) {
    ask_page(
        cx,
        req,
        PageQuery::Log { task_id, name },
        |_, _, req, data| {
            let PageData::Log(log) = data else {
                return internal_error_page_nav(&req.nav);
            };
            HttpReply::streamed(200, "text/plain; charset=utf-8", Body::Log(log.data))
                .header("X-Content-Type-Options", "nosniff".into())
        },
    );
}

fn groups(cx: &mut Context<Website>, req: Req) {
    let call = DbRequest::groups(req.auth());
    ask(
        cx,
        req,
        Mode::Read,
        call,
        |web, _, req, groups: Vec<Group>| {
            let reply = render(
                200,
                &GroupsView {
                    nav: &req.nav,
                    groups: &groups,
                    admin: req.is_admin(),
                },
            );
            finish(web, req, reply)
        },
    );
}

/// The groups of the form: rows of `name`, `description`, `priority`; empty names dropped.
fn groups_of(form: &Form) -> Result<Vec<Group>, String> {
    let (names, descs, prios) = (
        form.all("name"),
        form.all("description"),
        form.all("priority"),
    );
    let mut groups = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        let text = prios.get(i).copied().unwrap_or_default().trim();
        let priority = match text.parse::<f64>() {
            Ok(p) if p.is_finite() && p >= 0.0 => p,
            _ => {
                return Err(format!(
                    "group '{name}': priority '{text}' must be a number ≥ 0"
                ))
            }
        };
        groups.push(Group {
            name: name.to_string(),
            description: descs.get(i).copied().unwrap_or_default().to_string(),
            priority,
        });
    }
    Ok(groups)
}

fn groups_post(web: &mut Website, cx: &mut Context<Website>, req: Req) {
    if !req.is_admin() {
        let reply = error_page(&req.nav, 403, "Only admins may change the groups.");
        return finish(web, req, reply);
    }
    let groups = match groups_of(&req.form) {
        Ok(g) => g,
        Err(why) => {
            let reply = error_page(&req.nav, 400, &why);
            return finish(web, req, reply);
        }
    };
    let Some(auth) = req.auth() else {
        return finish(web, req, HttpReply::see_other("/login"));
    };
    ask(
        cx,
        req,
        Mode::Act,
        DbRequest::set_groups(auth, groups),
        |web, _, req, ()| finish(web, req, HttpReply::see_other("/groups")),
    );
}

/// `GET /site`: the modules as the controller sees them (state, restarts, last error, last
/// reload), the grids from the queue's reports, and, for admins, the reload button.
fn site(_web: &mut Website, cx: &mut Context<Website>, req: Req) {
    cx.ask_controller(ControlAsk::Status, move |web, cx, result| {
        let status = match result {
            Ok(Reply::Control(ControlReply::Status(status))) => status,
            Ok(other) => {
                log::error!("website: the controller answered status with {other:?}");
                let reply = internal_error_page_nav(&req.nav);
                return finish(web, req, reply);
            }
            Err(e) => {
                log::warn!("website: no status from the controller: {e}");
                let reply = error_page(&req.nav, 503, "The controller did not answer; try again.");
                return finish(web, req, reply);
            }
        };
        let modules = status
            .modules
            .iter()
            .map(|m| ModuleRow {
                name: m.name.to_string(),
                state: if m.enabled {
                    m.state.clone()
                } else {
                    "disabled".into()
                },
                restarts: m.restarts,
                depth: m.mailbox_depth.to_string(),
                last_error: m.last_error.clone().unwrap_or_default(),
                last_reload: m.last_reload.clone().unwrap_or_default(),
            })
            .collect();
        let last_reload = status.last_reload.as_ref().map(|r| LastReload {
            at: r.at.clone(),
            ok: r.ok,
            message: r.message.clone(),
        });
        let site_id = cx.config().site.id.clone().unwrap_or_default();
        let reply = render(
            200,
            &SiteView {
                nav: &req.nav,
                site_id: &site_id,
                modules,
                grids: cx.stats().grid_reports(),
                reloads: status.reloads,
                last_reload,
                admin: req.is_admin(),
            },
        );
        finish(web, req, reply)
    });
}

/// `POST /site/reload` (admins): the controller reads the config file again, as on SIGHUP,
/// and records the outcome, which the site page then shows; a refusal (a broken file) keeps
/// the running config and shows why.
fn site_reload(web: &mut Website, cx: &mut Context<Website>, req: Req) {
    if !req.is_admin() {
        let reply = error_page(&req.nav, 403, "Only admins may reload the config.");
        return finish(web, req, reply);
    }
    cx.ask_controller(ControlAsk::Reload, move |web, _, result| {
        match &result {
            Ok(_) => log::info!("website: config reloaded from the site page"),
            Err(e) => log::warn!("website: config reload from the site page: {e}"),
        }
        // Refused or not, the outcome is in the controller's status, shown at the top.
        finish(web, req, HttpReply::see_other("/site#config-section"))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_valid() {
        assert_eq!(config_errors(EXAMPLE_CONFIG), Vec::<String>::new());
    }

    #[test]
    fn broken_configs_name_the_path() {
        let errors = config_errors(r#"{"version": 3, "tasks": [{"name": "a", "trays": 5}]}"#);
        assert!(
            errors.iter().any(|e| e.starts_with("tasks[0].trays")),
            "{errors:?}"
        );
        assert!(config_errors("{").iter().any(|e| e.contains("line 1")));
        // A rule, not a type: the same as the submission would refuse.
        let mut example: serde_json::Value = serde_json::from_str(EXAMPLE_CONFIG).unwrap();
        example["tasks"][0]["trays"][0]["modules"][0]["args"] = json!(5);
        let errors = config_errors(&example.to_string());
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("tasks[0].trays[0].modules[0].args")),
            "{errors:?}"
        );
    }

    #[test]
    fn group_rows_drop_empty_names_and_refuse_bad_priorities() {
        let f = Form::parse(b"name=%2Fa&description=A&priority=1.5&name=&description=&priority=");
        let g = groups_of(&f).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!((g[0].name.as_str(), g[0].priority), ("/a", 1.5));
        let bad = Form::parse(b"name=%2Fa&description=&priority=lots");
        assert!(groups_of(&bad).unwrap_err().contains("/a"));
        let neg = Form::parse(b"name=%2Fa&description=&priority=-1");
        assert!(groups_of(&neg).is_err());
    }
}
