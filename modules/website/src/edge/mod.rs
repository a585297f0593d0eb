//! The website's HTTP edge: everything between a client's socket and the website's loop.
//!
//! - **The edge thread** (`iceprod-web-edge`, [`server`]) accepts connections and reads each
//!   request's head and body without blocking, in its own mio loop, then hands the complete
//!   request to the website's loop as a [`WebEvent::Request`]. The loop answers through
//!   [`Bridge::respond`]; the edge writes the answer, again without blocking, and serves the
//!   connection's next request. Every phase of a connection has a deadline (`[website]
//!   header_timeout`, `body_timeout`, `idle_timeout`, `write_timeout`), and at most
//!   `max_connections` are open: more are answered 503 and closed. A request is refused (400,
//!   408, 413, 431, 501) with its connection closed, never left half-read.
//! - **Stream threads** (`iceprod-web-stream-N`, [`stream`]) write replies whose body is
//!   streamed (`/log`, `/lib`): the edge lends them the socket and gets it back.
//! - Every request whose head is in counts as **in flight** until its answer is written; a
//!   stopping module waits for that. A request the loop drops unanswered (a panic) is answered
//!   500 by the edge.
//!
//! Stopping: the listener is closed at once (new connections are refused and the port can be
//! bound again), requests already in flight are answered, and a request that arrives on an
//! open keep-alive connection after that gets 503 with `Connection: close`. When the module is
//! gone the edge keeps answering that way for a few seconds, then closes every connection.
//!
//! Why not tiny_http (which this replaced): it serves each connection on a thread for the
//! connection's life with no timeouts, drains an unread body with a buffer of its announced
//! size, and cannot close its connections; bounding clients needed all of its connection
//! handling changed, so the edge owns the sockets instead.

mod chunked;
mod conn;
mod reply;
mod server;
mod stream;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use iceprod_runtime::config::WebsiteConfig;
use iceprod_runtime::{WorkerSender, WorkerSpawner};
use mio::{Poll, Waker};

pub use chunked::{ChunkError, Chunked};
pub use conn::parse_head;
pub use reply::{Body, HttpReply, Method};

use crate::error::WebsiteError;
use crate::routes::Route;

/// What the edge sends to the website's loop (the module's `Module::Event`).
pub enum WebEvent {
    /// A request and its whole body.
    Request(HttpRequest),
    /// The edge answered a request itself (a refusal: 400, 408, 413, 431, 503); for metrics.
    AnsweredByEdge { route: Route, status: u16 },
    /// An answer was written while stopping; the loop re-checks whether it is drained.
    Responded,
    /// The listener failed outside a shutdown; the message says why.
    ListenerFailed(String),
}

/// An HTTP request with its body. In flight until answered.
pub struct HttpRequest {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    peer: SocketAddr,
    body: Vec<u8>,
    answer: Answer,
}

impl HttpRequest {
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request target as sent (path and query).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A request header's value (the first, if sent more than once).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The client's address (the proxy's, behind nginx).
    pub fn remote_ip(&self) -> Option<std::net::IpAddr> {
        Some(self.peer.ip())
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The values of the headers called `name` (case-insensitive), in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Takes the body out, so it is freed before a long-running exchange completes.
    pub fn take_body(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.body)
    }
}

/// The way back to the connection a request came on. Dropped unsent, it tells the edge,
/// which answers 500 rather than leave the client waiting.
struct Answer {
    conn: u64,
    edge: EdgeHandle,
    sent: bool,
}

impl Answer {
    fn send(mut self, reply: HttpReply) {
        self.sent = true;
        self.edge.send(Cmd::Reply {
            conn: self.conn,
            reply,
        });
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if !self.sent {
            self.edge.send(Cmd::Abandoned(self.conn));
        }
    }
}

/// What the loop, the answers and the stream threads tell the edge thread.
enum Cmd {
    Reply {
        conn: u64,
        reply: HttpReply,
    },
    Abandoned(u64),
    /// A stream thread is done with a connection: its socket when the connection goes on.
    StreamDone {
        conn: u64,
        socket: Option<std::net::TcpStream>,
    },
    StopAccepting,
    /// The module is gone.
    Exit,
}

/// The edge thread's mailbox and its waker.
#[derive(Clone)]
struct EdgeHandle {
    cmds: Sender<Cmd>,
    waker: Arc<Waker>,
}

impl EdgeHandle {
    fn send(&self, cmd: Cmd) {
        // The edge being gone means its connections are closed: nothing left to tell.
        if self.cmds.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// State the edge and the loop share.
struct Shared {
    body_limit: AtomicU64,
    in_flight: AtomicUsize,
    stopping: AtomicBool,
}

impl Shared {
    fn body_limit(&self) -> u64 {
        self.body_limit.load(Ordering::Relaxed)
    }
}

/// The edge's per-connection limits, from `[website]`.
#[derive(Clone, Copy)]
struct Limits {
    max_connections: usize,
    header: Duration,
    body: Duration,
    idle: Duration,
    write: Duration,
}

/// The HTTP edge, owned by the website module.
pub(crate) struct Bridge {
    edge: EdgeHandle,
    /// A duplicate of the listening socket, kept to shut it down at once when stopping.
    listener: Option<std::net::TcpStream>,
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl Bridge {
    /// Binds the listener and starts the edge and stream threads; `events` reaches the loop.
    pub fn start(
        config: &WebsiteConfig,
        events: WorkerSender<WebEvent>,
        workers: &WorkerSpawner,
    ) -> Result<Bridge, WebsiteError> {
        let addr = SocketAddr::new(config.address, config.port);
        let bind_error = |source| WebsiteError::Bind { addr, source };
        let std_listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        set_nodelay(&std_listener).map_err(bind_error)?;
        std_listener.set_nonblocking(true).map_err(bind_error)?;
        let local_addr = std_listener.local_addr().map_err(bind_error)?;
        let handle = std_listener.try_clone().map_err(bind_error)?;
        let mut listener = mio::net::TcpListener::from_std(std_listener);
        let spawn_error = |source| WebsiteError::Spawn {
            thread: "iceprod-web-edge".into(),
            source,
        };
        let poll = Poll::new().map_err(spawn_error)?;
        let waker = Arc::new(Waker::new(poll.registry(), server::WAKER).map_err(spawn_error)?);
        poll.registry()
            .register(&mut listener, server::LISTENER, mio::Interest::READABLE)
            .map_err(spawn_error)?;
        let (cmds_tx, cmds_rx) = crossbeam_channel::unbounded();
        let edge = EdgeHandle {
            cmds: cmds_tx,
            waker,
        };
        let shared = Arc::new(Shared {
            body_limit: AtomicU64::new(config.body_limit),
            in_flight: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
        });
        let (streams_tx, streams_rx) = crossbeam_channel::unbounded();
        let bridge = Bridge {
            edge: edge.clone(),
            // std has `shutdown` only on streams; shutdown(2) itself works on any socket.
            listener: Some(std::net::TcpStream::from(std::os::fd::OwnedFd::from(
                handle,
            ))),
            shared: shared.clone(),
            local_addr,
        };
        for n in 0..config.stream_threads {
            let (jobs, edge) = (streams_rx.clone(), edge.clone());
            spawn(workers, format!("iceprod-web-stream-{n}"), move |w| {
                stream::stream_loop(jobs, edge, w)
            })?;
        }
        let limits = Limits {
            max_connections: config.max_connections,
            header: config.header_timeout,
            body: config.body_timeout,
            idle: config.idle_timeout,
            write: config.write_timeout,
        };
        let server = server::Edge {
            poll,
            listener: Some(listener),
            conns: std::collections::HashMap::new(),
            // 0 and 1 are the listener's and the waker's tokens.
            next_id: 2,
            shared,
            limits,
            events,
            cmds: cmds_rx,
            handle: edge,
            streams: streams_tx,
            accept_paused_until: None,
            exit_at: None,
        };
        // On an error here, dropping `bridge` ends the stream threads already started.
        spawn(workers, "iceprod-web-edge".into(), move |w| server.run(w))?;
        Ok(bridge)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sends `reply` to the connection `request` came on.
    pub fn respond(&self, request: HttpRequest, reply: HttpReply) {
        request.answer.send(reply);
    }

    /// Applies a new `body_limit` to the next requests.
    pub fn set_body_limit(&self, limit: u64) {
        self.shared.body_limit.store(limit, Ordering::Relaxed);
    }

    /// Requests whose head is in and whose answer is not yet written.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    /// Whether a stopping website has nothing left to finish.
    pub fn is_drained(&self) -> bool {
        self.is_stopping() && self.in_flight() == 0
    }

    /// Stops taking new connections; requests in flight are still answered. Calling it again
    /// does nothing.
    pub fn stop_accepting(&mut self) {
        if self.shared.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(listener) = self.listener.take() {
            // Shutting a listening socket down takes it out of LISTEN at once, so the port can
            // be bound again before the edge has closed its descriptor (a restart binds it
            // right away).
            if let Err(e) = listener.shutdown(std::net::Shutdown::Both) {
                log::debug!("website: shutting down the listener: {e}");
            }
        }
        self.edge.send(Cmd::StopAccepting);
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop_accepting();
        self.edge.send(Cmd::Exit);
    }
}

/// Starts a supervised worker: a panic in it fails the module, which the controller restarts.
fn spawn(
    workers: &WorkerSpawner,
    name: String,
    body: impl FnOnce(&iceprod_runtime::WorkerCx) + Send + 'static,
) -> Result<(), WebsiteError> {
    workers
        .spawn(name.clone(), body)
        .map(drop)
        .map_err(|source| WebsiteError::Spawn {
            thread: name,
            source,
        })
}

/// Turns Nagle's algorithm off for every connection: Linux copies TCP_NODELAY from the
/// listening socket to the sockets it accepts. A response's head and body may go out in two
/// writes; with Nagle on, the second waits for the client's delayed ACK (about 40 ms).
fn set_nodelay(listener: &std::net::TcpListener) -> io::Result<()> {
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
