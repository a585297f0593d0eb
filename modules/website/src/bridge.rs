//! The bridge between tiny_http's blocking threads and the website's non-blocking loop.
//!
//! - **Pumps** (`iceprod-web-pump-N`) block in `Server::recv`, read each request's body
//!   themselves (bounded by `body_limit`, shared through an atomic so a reload changes it in
//!   place) and hand the request with its body to the loop as a [`WebEvent::Request`]. A body
//!   over the limit is answered 413 by the pump, unread when its `Content-Length` says so.
//! - **Responders** (`iceprod-web-resp-N`) take `(request, reply)` pairs from a channel and write
//!   them, so a slow client never stalls the loop.
//! - **Stream threads** (`iceprod-web-stream-N`, [`STREAM_THREADS`]) do the same for replies
//!   whose body is streamed (`/log`, `/lib`), so a long download never delays the pages.
//! - Every request taken by a pump counts as **in flight** until its response is written (an
//!   `InFlight` ticket travels with it), which is what a stopping module waits for.
//!
//! Stopping: the listening socket is shut down (new connections are refused, and the port can be
//! bound again at once), each pump is unblocked and exits after the request it holds, and the
//! loop ends once no pump is left and nothing is in flight. Dropping the bridge does the same
//! without waiting, and leaves a short-lived thread that answers 503 to requests still queued on
//! open keep-alive connections, whose clients would otherwise wait forever.
//!
//! Nothing the loop calls here blocks: it sends on channels or flips atomics. (The one exception,
//! writing a response on the loop, happens only if every responder thread has died.)
//!
//! ## tiny_http 0.12 and unread bodies
//! When a request whose body was not read to its end is dropped, tiny_http drains the rest with
//! a buffer the size of the *announced* `Content-Length` (`vec![0; remaining]`, its
//! `EqualReader`), after the response was written. The buffer is zeroed memory, which the
//! allocator maps lazily, so up to `DRAIN_LIMIT` (1 GiB) this costs address space, not RAM:
//! the client gets a complete 413 and the drain ends when it closes. An announced length far
//! beyond that could fail the allocation and abort the process, so such a request is answered
//! through `Request::upgrade`, which hands the body reader to us, and that connection is then
//! abandoned (leaked, never dropped): one descriptor pair and one tiny_http connection thread
//! per such request, instead of a crash. That 413 has no `Content-Length` (tiny_http writes
//! none when upgrading), so its client reads until it gives up. Behind nginx,
//! `client_max_body_size` refuses these first.

//! ## tiny_http 0.12 and bursts of new connections (known, not fixed here)
//! tiny_http serves each connection on a thread of its pool for the connection's whole life.
//! Its pool counts a thread it has just woken as still idle, so a burst of new connections
//! arriving while few threads are idle (after 5 s of quiet the pool shrinks to 4) can be queued
//! with no thread to take them until an earlier keep-alive connection closes. tiny_http offers
//! no hook to time out idle connections (a read timeout on the listener would also time out its
//! accept loop, which then ends). In production nginx sits in front and keeps a steady set of
//! upstream connections; standalone, clients that close idle connections avoid it.

use std::io::{self, Cursor, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use iceprod_runtime::config::WebsiteConfig;
use iceprod_runtime::{WorkerCx, WorkerSender, WorkerSpawner};
use tiny_http::{Header, Response, Server};

use crate::error::WebsiteError;
use crate::routes::Route;

/// Largest announced body tiny_http is allowed to drain after a refusal (see the module doc).
const DRAIN_LIMIT: u64 = 1 << 30;

/// How long a dropped bridge keeps answering 503 to requests that were still queued.
const LATE_REQUEST_GRACE: Duration = Duration::from_secs(5);

/// What the bridge's threads send to the website's loop (the module's `Module::Event`).
pub enum WebEvent {
    /// A request and its whole body, read by a pump.
    Request(HttpRequest),
    /// A pump answered a request itself (413 body too large, 400 unreadable body); for metrics.
    AnsweredByPump { route: Route, status: u16 },
    /// A responder wrote a response; a stopping loop re-checks whether it is drained.
    Responded,
    /// A pump thread ended.
    PumpExited,
    /// tiny_http stopped accepting connections outside a shutdown; the message says why.
    ListenerFailed(String),
}

/// An HTTP request taken by a pump, with its body. In flight until answered.
pub struct HttpRequest {
    request: tiny_http::Request,
    body: Vec<u8>,
    ticket: InFlight,
}

impl HttpRequest {
    pub fn method(&self) -> &tiny_http::Method {
        self.request.method()
    }

    /// The request target as sent (path and query).
    pub fn url(&self) -> &str {
        self.request.url()
    }

    /// A request header's value (the first, if sent more than once).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.request
            .headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The client's address (the proxy's, behind nginx).
    pub fn remote_ip(&self) -> Option<std::net::IpAddr> {
        self.request.remote_addr().map(|a| a.ip())
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The values of the headers called `name` (case-insensitive), in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.request
            .headers()
            .iter()
            .filter(move |h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Takes the body out, so it is freed before a long-running exchange completes.
    pub fn take_body(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.body)
    }

    /// Writes `reply` on the calling thread; the request stops counting as in flight after.
    fn answer_here(self, reply: HttpReply) {
        let HttpRequest {
            request, ticket, ..
        } = self;
        if let Err(e) = request.respond(reply.into_response()) {
            log::debug!("website: could not write a response: {e}");
        }
        drop(ticket);
    }
}

/// A response to write: status, headers and a body (bytes, or a stream the responder opens).
#[derive(Debug)]
pub struct HttpReply {
    status: u16,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: Body,
}

/// What a reply's body is. The streamed kinds are opened by the responder thread that writes
/// the reply, so file and inflate IO never runs on the loop.
#[derive(Debug)]
pub enum Body {
    Bytes(Vec<u8>),
    /// A file under `[website] lib_dir`: `rel` was checked lexically on the loop (see
    /// [`crate::files::safe_relative`]); the responder resolves symlinks and refuses a file
    /// outside `root`, a folder, or one it cannot open, with 404.
    LibFile {
        root: PathBuf,
        rel: String,
    },
    /// A stored log (base64 of zlib bytes): inflated as it is written, never whole in memory.
    Log(String),
}

impl HttpReply {
    /// A plain-text reply.
    pub fn text(status: u16, body: &str) -> HttpReply {
        HttpReply::with_type(
            status,
            "text/plain; charset=utf-8",
            body.as_bytes().to_vec(),
        )
    }

    /// A JSON reply; an empty body (notifications only) gets no content type.
    /// 503 while the website stops or restarts: for `/jsonrpc` a JSON-RPC error (code
    /// -32000) that JSON-RPC clients can read, for any other path plain text; both with
    /// `Retry-After: 1`.
    pub fn unavailable(url: &str, why: &str) -> HttpReply {
        let reply = if Route::of(url) == Route::JsonRpc {
            let body = serde_json::json!({
                "jsonrpc": "2.0",
                "error": {"code": -32000, "message": why},
                "id": null,
            });
            HttpReply::json(503, body.to_string().into_bytes())
        } else {
            HttpReply::text(503, &format!("{why}\n"))
        };
        reply.header("Retry-After", "1".into())
    }

    pub fn json(status: u16, body: Vec<u8>) -> HttpReply {
        HttpReply {
            status,
            content_type: (!body.is_empty()).then_some("application/json"),
            headers: Vec::new(),
            body: Body::Bytes(body),
        }
    }

    /// A reply with its own content type.
    pub fn with_type(status: u16, content_type: &'static str, body: Vec<u8>) -> HttpReply {
        HttpReply::streamed(status, content_type, Body::Bytes(body))
    }

    /// A reply whose body the responder produces.
    pub fn streamed(status: u16, content_type: &'static str, body: Body) -> HttpReply {
        HttpReply {
            status,
            content_type: Some(content_type),
            headers: Vec::new(),
            body,
        }
    }

    /// An HTML page.
    pub fn html(status: u16, page: String) -> HttpReply {
        HttpReply::with_type(status, "text/html; charset=utf-8", page.into_bytes())
    }

    /// 303 See Other to a local path (Post/Redirect/Get).
    pub fn see_other(location: &str) -> HttpReply {
        HttpReply::text(303, "see other\n").header("Location", location.to_string())
    }

    /// 405 with the `Allow` header listing the methods the route takes.
    pub fn method_not_allowed(allow: &'static str) -> HttpReply {
        HttpReply::text(405, "method not allowed\n").header("Allow", allow.to_string())
    }

    /// Adds a header (`Set-Cookie`, `Cache-Control`, …).
    pub fn header(mut self, name: &'static str, value: String) -> HttpReply {
        self.headers.push((name, value));
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// The value of a header set on this reply (tests).
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body, when it is plain bytes (tests and the pump's own refusals).
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.body {
            Body::Bytes(b) => Some(b),
            _ => None,
        }
    }

    fn into_response(self) -> Response<Box<dyn Read + Send>> {
        let HttpReply {
            status,
            content_type,
            mut headers,
            body,
        } = self;
        let (reader, length): (Box<dyn Read + Send>, Option<usize>) = match body {
            Body::Bytes(bytes) => {
                let n = bytes.len();
                (Box::new(Cursor::new(bytes)), Some(n))
            }
            Body::LibFile { root, rel } => match crate::files::open_lib_file(&root, &rel) {
                Ok((file, n)) => (Box::new(file), usize::try_from(n).ok()),
                Err(why) => {
                    log::debug!("website: /lib/{rel}: {why}");
                    return HttpReply::text(404, "not found\n").into_response();
                }
            },
            Body::Log(data) => match crate::files::log_length(&data) {
                Ok(n) => (crate::files::log_reader(data), usize::try_from(n).ok()),
                Err(e) => {
                    log::warn!("website: a stored log does not decode: {e}");
                    let why = "the stored log cannot be read: it is not base64 of zlib data\n";
                    return HttpReply::text(500, why).into_response();
                }
            },
        };
        if let Some(content_type) = content_type {
            headers.insert(0, ("Content-Type", content_type.to_string()));
        }
        // A known length is always sent as Content-Length, never chunked: simpler for clients.
        let mut response = Response::new(status.into(), Vec::new(), reader, length, None)
            .with_chunked_threshold(usize::MAX);
        for (name, value) in headers {
            match Header::from_bytes(name.as_bytes(), value.as_bytes()) {
                Ok(h) => response.add_header(h),
                Err(()) => log::error!("website: invalid header {name}: {value:?}"),
            }
        }
        response
    }
}

/// State the pumps, responders and loop share.
struct Shared {
    body_limit: AtomicU64,
    in_flight: AtomicUsize,
    stopping: AtomicBool,
}

/// One request in flight; dropping it (after the response is written) counts it out.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn take(shared: &Arc<Shared>) -> InFlight {
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

type Job = (HttpRequest, HttpReply);

/// Threads that write streamed bodies (`/log`, `/lib`). A 50 MB log to a slow client holds its
/// thread for as long as the client takes; on their own threads such downloads never delay
/// the pages and JSON-RPC answers the responders write. Past this many at once, downloads
/// wait for each other, never for the rest.
pub const STREAM_THREADS: usize = 4;

/// The HTTP server and its threads, owned by the website module.
pub(crate) struct Bridge {
    server: Arc<Server>,
    /// A duplicate of the listening socket, kept only to shut it down (see [`Self::stop_accepting`]).
    listener: Option<TcpStream>,
    shared: Arc<Shared>,
    responses: Option<Sender<Job>>,
    /// Replies with a streamed body, for the stream threads.
    streams: Option<Sender<Job>>,
    pump_threads: usize,
    pumps_alive: usize,
    local_addr: SocketAddr,
}

impl Bridge {
    /// Binds the server and starts the pumps and responders; `events` reaches the loop.
    pub fn start(
        config: &WebsiteConfig,
        events: WorkerSender<WebEvent>,
        workers: &WorkerSpawner,
    ) -> Result<Bridge, WebsiteError> {
        let addr = SocketAddr::new(config.address, config.port);
        let bind_error = |source| WebsiteError::Bind { addr, source };
        let listener = TcpListener::bind(addr).map_err(bind_error)?;
        set_nodelay(&listener).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let handle = listener.try_clone().map_err(bind_error)?;
        let server = Server::from_listener(listener, None)
            .map_err(|e| bind_error(io::Error::other(e.to_string())))?;
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded();
        let (streams_tx, streams_rx) = crossbeam_channel::unbounded();
        let mut bridge = Bridge {
            server: Arc::new(server),
            // std has `shutdown` only on streams; shutdown(2) itself works on any socket.
            listener: Some(TcpStream::from(OwnedFd::from(handle))),
            shared: Arc::new(Shared {
                body_limit: AtomicU64::new(config.body_limit),
                in_flight: AtomicUsize::new(0),
                stopping: AtomicBool::new(false),
            }),
            responses: Some(jobs_tx),
            streams: Some(streams_tx),
            pump_threads: config.pump_threads,
            pumps_alive: 0,
            local_addr,
        };
        // On an error below, dropping `bridge` stops the threads already started.
        for n in 0..config.responder_threads {
            let (jobs, events) = (jobs_rx.clone(), events.clone());
            spawn(workers, format!("iceprod-web-resp-{n}"), move |w| {
                respond_loop(jobs, events, w)
            })?;
        }
        for n in 0..STREAM_THREADS {
            let (jobs, events) = (streams_rx.clone(), events.clone());
            spawn(workers, format!("iceprod-web-stream-{n}"), move |w| {
                respond_loop(jobs, events, w)
            })?;
        }
        for n in 0..config.pump_threads {
            let (server, shared, events) =
                (bridge.server.clone(), bridge.shared.clone(), events.clone());
            spawn(workers, format!("iceprod-web-pump-{n}"), move |_| {
                pump_loop(server, shared, events)
            })?;
            bridge.pumps_alive += 1;
        }
        Ok(bridge)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queues `reply` for a responder thread, or a stream thread when its body is streamed.
    pub fn respond(&self, request: HttpRequest, reply: HttpReply) {
        let queue = match reply.body {
            Body::Bytes(_) => &self.responses,
            Body::LibFile { .. } | Body::Log(_) => &self.streams,
        };
        let Some(responses) = queue else {
            return request.answer_here(reply);
        };
        if let Err(e) = responses.send((request, reply)) {
            // Every responder is gone, which only a panic in one can cause: answer here
            // rather than lose the request.
            log::error!("website: no responder thread left; writing on the loop");
            let (request, reply) = e.into_inner();
            request.answer_here(reply);
        }
    }

    /// Applies a new `body_limit` to the next requests the pumps take.
    pub fn set_body_limit(&self, limit: u64) {
        self.shared.body_limit.store(limit, Ordering::Relaxed);
    }

    /// Requests taken by a pump and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    pub fn pump_exited(&mut self) {
        self.pumps_alive = self.pumps_alive.saturating_sub(1);
    }

    /// Whether nothing is left to finish: no pump holds a request and nothing is in flight.
    pub fn is_drained(&self) -> bool {
        self.pumps_alive == 0 && self.in_flight() == 0
    }

    /// Stops taking new requests: refuses new connections and lets each pump exit after the
    /// requests already queued. Calling it again does nothing.
    pub fn stop_accepting(&mut self) {
        if self.shared.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(listener) = self.listener.take() {
            // On Linux, shutting a listening socket down wakes tiny_http's accept thread (which
            // then ends and closes its descriptor) and takes the socket out of LISTEN, so the
            // port can be bound again at once even before that thread has closed it.
            if let Err(e) = listener.shutdown(std::net::Shutdown::Both) {
                log::debug!("website: shutting down the listener: {e}");
            }
        }
        // Each unblock wakes one pump; queued requests come first, so they are still served.
        for _ in 0..self.pump_threads {
            self.server.unblock();
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop_accepting();
        // Responders finish what is queued, then see the channel closed and end.
        self.responses.take();
        self.streams.take();
        let (server, pumps) = (self.server.clone(), self.pump_threads);
        // Not supervised: it outlives the module's loop on purpose.
        let spawned = std::thread::Builder::new()
            .name("iceprod-web-closer".into())
            .spawn(move || answer_late_requests(server, pumps));
        if let Err(e) = spawned {
            log::warn!("website: {e}; requests still queued will not be answered");
        }
    }
}

/// Starts a supervised worker: a panic in it fails the module, which the controller restarts.
fn spawn(
    workers: &WorkerSpawner,
    name: String,
    body: impl FnOnce(&WorkerCx) + Send + 'static,
) -> Result<(), WebsiteError> {
    workers
        .spawn(name.clone(), body)
        .map(drop)
        .map_err(|source| WebsiteError::Spawn {
            thread: name,
            source,
        })
}

/// Tells the loop a pump ended, however it ended (a panic included).
struct PumpExitNotice(WorkerSender<WebEvent>);

impl Drop for PumpExitNotice {
    fn drop(&mut self) {
        let _ = self.0.send(WebEvent::PumpExited);
    }
}

fn pump_loop(server: Arc<Server>, shared: Arc<Shared>, events: WorkerSender<WebEvent>) {
    let _notice = PumpExitNotice(events.clone());
    loop {
        let mut request = match server.recv() {
            Ok(request) => request,
            Err(e) => {
                // Unblocking happens only after `stopping` is set, so an error while not
                // stopping means tiny_http's accept thread died.
                if !shared.stopping.load(Ordering::Acquire) {
                    let _ = events.send(WebEvent::ListenerFailed(e.to_string()));
                }
                return;
            }
        };
        let ticket = InFlight::take(&shared);
        let route = Route::of(request.url());
        let limit = shared.body_limit.load(Ordering::Relaxed);
        match read_body(&mut request, limit) {
            Ok(body) => {
                let http = HttpRequest {
                    request,
                    body,
                    ticket,
                };
                if let Err(WebEvent::Request(http)) = events.send(WebEvent::Request(http)) {
                    // The loop is gone (it stopped at its deadline): nobody else will answer.
                    let reply = HttpReply::unavailable(http.url(), "server stopping");
                    http.answer_here(reply);
                }
            }
            Err(e) => {
                log::debug!("website: refused a request to {}: {e}", request.url());
                let reply = match e {
                    WebsiteError::BodyTooLarge { .. } => {
                        HttpReply::text(413, "request body too large\n")
                    }
                    _ => HttpReply::text(400, "could not read the request body\n"),
                };
                // Counted before the client can see the answer, so a `/metrics` it asks for
                // next includes it.
                let status = reply.status;
                let _ = events.send(WebEvent::AnsweredByPump { route, status });
                answer_unread(request, reply);
                drop(ticket);
            }
        }
    }
}

/// Reads the whole body, refusing one over `limit` (unread when its announced length says so).
fn read_body(request: &mut tiny_http::Request, limit: u64) -> Result<Vec<u8>, WebsiteError> {
    let announced = request.body_length();
    if announced.is_some_and(|n| n as u64 > limit) {
        return Err(WebsiteError::BodyTooLarge { limit });
    }
    let mut body = Vec::with_capacity(announced.unwrap_or(0));
    // One byte more than the limit tells a chunked body over the limit from one at it.
    request
        .as_reader()
        .take(limit.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(WebsiteError::BodyUnreadable)?;
    if body.len() as u64 > limit {
        return Err(WebsiteError::BodyTooLarge { limit });
    }
    match announced {
        Some(n) if body.len() < n => Err(WebsiteError::BodyIncomplete {
            announced: n,
            received: body.len(),
        }),
        _ => Ok(body),
    }
}

/// Answers a request whose body may be unread, without letting tiny_http allocate a drain
/// buffer of the announced size (see the module doc).
fn answer_unread(request: tiny_http::Request, reply: HttpReply) {
    let announced = request.body_length().map_or(0, |n| n as u64);
    if announced <= DRAIN_LIMIT {
        if let Err(e) = request.respond(reply.into_response()) {
            log::debug!("website: could not write a response: {e}");
        }
        return;
    }
    log::warn!("website: abandoning a connection that announced a {announced} byte body");
    let body = reply.bytes().unwrap_or_default().to_vec();
    // `upgrade` writes the status and headers but no body, and gives us the body reader.
    let mut stream = request.upgrade("none", reply.into_response());
    let _ = stream.write_all(&body).and_then(|()| stream.flush());
    // Deliberately never dropped: dropping would make tiny_http drain the announced length.
    std::mem::forget(stream);
}

/// Turns Nagle's algorithm off for every connection: Linux copies TCP_NODELAY from the
/// listening socket to the sockets it accepts, the only way to reach tiny_http's. tiny_http
/// writes a response's head and body separately; with Nagle on, a body after the head waits
/// for the client's delayed ACK (about 40 ms) whenever the answer is over a packet's worth.
fn set_nodelay(listener: &TcpListener) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a properly sized int.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn respond_loop(jobs: Receiver<Job>, events: WorkerSender<WebEvent>, worker: &WorkerCx) {
    for (request, reply) in jobs {
        // An injected panic here drops the request unanswered, and tiny_http answers it 500.
        worker.checkpoint();
        request.answer_here(reply);
        let _ = events.send(WebEvent::Responded);
    }
}

/// After the module is gone: answers 503 to requests still queued on open connections for a
/// short while, then wakes any pump still blocked in `recv` so it can end.
fn answer_late_requests(server: Arc<Server>, pumps: usize) {
    let deadline = Instant::now() + LATE_REQUEST_GRACE;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Ok(Some(request)) = server.recv_timeout(left) {
            let reply = HttpReply::unavailable(request.url(), "server restarting");
            answer_unread(request, reply);
        }
    }
    for _ in 0..pumps {
        server.unblock();
    }
}
