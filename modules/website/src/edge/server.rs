//! The edge thread (`iceprod-web-edge`): one mio loop that accepts connections, reads each
//! request's head and body without blocking, hands complete requests to the website's loop,
//! and writes the answers that come back. Every connection has a deadline for the phase it is
//! in, so a silent, slow or stalled client costs one descriptor and some memory for a bounded
//! time, never a thread; the number of connections is capped.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use iceprod_runtime::{WorkerCx, WorkerSender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::conn::{parse_head, Conn, Framing, Incoming, Phase, ReadOutcome};
use super::reply::{HttpReply, Method};
use super::stream::StreamJob;
use super::{Answer, Cmd, EdgeHandle, HttpRequest, Limits, Shared, WebEvent};
use crate::routes::Route;

pub const LISTENER: Token = Token(0);
pub const WAKER: Token = Token(1);
/// How often deadlines are checked.
const TICK: Duration = Duration::from_millis(200);
/// How long a lingering close reads at most, and how much it throws away.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;
/// How long accepting pauses when the process is out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How long connections are still answered (503) after the module is gone.
const EXIT_GRACE: Duration = Duration::from_secs(5);

pub struct Edge {
    pub poll: Poll,
    pub listener: Option<TcpListener>,
    pub conns: HashMap<u64, Conn>,
    pub next_id: u64,
    pub shared: Arc<Shared>,
    pub limits: Limits,
    pub events: WorkerSender<WebEvent>,
    pub cmds: Receiver<Cmd>,
    pub handle: EdgeHandle,
    pub streams: Sender<StreamJob>,
    /// Accepting resumes at this time (after running out of descriptors).
    pub accept_paused_until: Option<Instant>,
    /// Set once the module is gone: the edge ends at this time, or sooner once idle.
    pub exit_at: Option<Instant>,
}

impl Edge {
    /// Runs until the module is gone and every connection is done (or the grace passed).
    pub fn run(mut self, worker: &WorkerCx) {
        let mut events = Events::with_capacity(256);
        let mut next_tick = Instant::now() + TICK;
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("website: edge poll failed: {e}");
                    return;
                }
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(id) => self.on_ready(id as u64, event.is_writable()),
                }
            }
            while let Ok(cmd) = self.cmds.try_recv() {
                self.on_cmd(cmd, worker);
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                self.expire(now);
                if self.accept_paused_until.is_some_and(|t| now >= t) {
                    self.accept_paused_until = None;
                    self.accept();
                }
            }
            // Connections of a website that is gone are answered 503 for a while (a client on
            // an old keep-alive connection learns to reconnect), then closed, all of them.
            if self.exit_at.is_some_and(|at| now >= at)
                || (self.exit_at.is_some() && self.conns.is_empty())
            {
                return;
            }
        }
    }

    fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            if self.accept_paused_until.is_some() {
                return;
            }
            match listener.accept() {
                Ok((socket, peer)) => {
                    if self.conns.len() >= self.limits.max_connections {
                        refuse_at_capacity(socket);
                        let status = 503;
                        let _ = self.events.send(WebEvent::AnsweredByEdge {
                            route: Route::NotFound,
                            status,
                        });
                        continue;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    let mut conn = Conn::new(socket, peer, Instant::now() + self.limits.idle);
                    let registered = conn.socket.as_mut().map(|s| {
                        self.poll
                            .registry()
                            .register(s, Token(id as usize), Interest::READABLE)
                    });
                    if let Some(Err(e)) = registered {
                        log::warn!("website: cannot watch a new connection: {e}");
                        continue;
                    }
                    self.conns.insert(id, conn);
                    // Data may have arrived with the connection (edge-triggered: no event).
                    self.drive(id);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The bridge shut the listener down (a stop): not a failure.
                Err(_) if self.stopping() => {
                    self.stop_accepting();
                    return;
                }
                Err(e) if is_transient_accept_error(&e) => {
                    log::warn!("website: accepting a connection: {e}; pausing accepts briefly");
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    return;
                }
                Err(e) => {
                    log::error!("website: the listener failed: {e}");
                    let _ = self.events.send(WebEvent::ListenerFailed(e.to_string()));
                    self.listener = None;
                    return;
                }
            }
        }
    }

    fn on_ready(&mut self, id: u64, writable: bool) {
        if writable && self.conns.get(&id).is_some_and(Conn::has_output) {
            self.flush(id);
        }
        if self.conns.get(&id).is_some_and(|c| !c.has_output()) {
            self.drive(id);
        }
    }

    /// Reads and advances the connection's request as far as the bytes allow.
    fn drive(&mut self, id: u64) {
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            match &mut conn.phase {
                Phase::Head => {
                    if !conn.inbuf.is_empty() {
                        match parse_head(&conn.inbuf, self.shared.body_limit()) {
                            Ok(Some((head, used, framing))) => {
                                conn.inbuf.drain(..used);
                                self.start_body(id, head, framing);
                                continue;
                            }
                            Ok(None) => {}
                            Err(refusal) => {
                                log::debug!(
                                    "website: refused a request from {}: {}",
                                    conn.peer,
                                    refusal.why
                                );
                                let route =
                                    refusal.url.as_deref().map_or(Route::NotFound, Route::of);
                                self.refuse(id, route, refusal.status, &refusal.why);
                                return;
                            }
                        }
                    }
                }
                Phase::Body(incoming) => {
                    let used = match &mut incoming.framing {
                        Framing::Length(left) => {
                            let n = conn
                                .inbuf
                                .len()
                                .min(usize::try_from(*left).unwrap_or(usize::MAX));
                            incoming.body.extend_from_slice(&conn.inbuf[..n]);
                            *left -= n as u64;
                            n
                        }
                        Framing::Chunked(decoder) => {
                            match decoder.feed(&conn.inbuf, &mut incoming.body) {
                                Ok(n) => n,
                                Err(e) => {
                                    let status = if e == super::chunked::ChunkError::TooLarge {
                                        413
                                    } else {
                                        400
                                    };
                                    let route = Route::of(&incoming.head.url);
                                    let why = e.to_string();
                                    self.refuse(id, route, status, &why);
                                    return;
                                }
                            }
                        }
                    };
                    conn.inbuf.drain(..used);
                    let complete = match &incoming.framing {
                        Framing::Length(left) => *left == 0,
                        Framing::Chunked(d) => d.is_done(),
                    };
                    if complete {
                        self.dispatch(id);
                        continue;
                    }
                }
                Phase::Lingering => {
                    conn.discarded += conn.inbuf.len();
                    conn.inbuf.clear();
                    if conn.discarded > LINGER_BYTES {
                        self.close(id);
                        return;
                    }
                }
                Phase::Waiting { .. } | Phase::Writing { .. } | Phase::Streaming => return,
            }
            // The phase needs more bytes.
            let conn = self.conns.get_mut(&id).expect("present above");
            let was_empty = conn.inbuf.is_empty() && matches!(conn.phase, Phase::Head);
            match conn.read_some() {
                ReadOutcome::Data => {
                    if was_empty && !conn.inbuf.is_empty() {
                        // A head started: it has the header timeout from now.
                        conn.deadline = Instant::now() + self.limits.header;
                    }
                }
                ReadOutcome::WouldBlock => return,
                ReadOutcome::Closed => {
                    self.close(id);
                    return;
                }
            }
        }
    }

    /// A head is in: during a stop it is refused; otherwise its body is read.
    fn start_body(&mut self, id: u64, head: super::conn::Head, framing: Framing) {
        let stopping = self.stopping();
        let conn = self.conns.get_mut(&id).expect("driven connection");
        if stopping {
            // The module is stopping or gone: the client retries on a new connection, which
            // the next website (after a restart) serves.
            let reply = HttpReply::unavailable(&head.url, "server restarting");
            self.answer_now(id, reply, true, head.method == Method::Head, None);
            return;
        }
        if head.expect_continue && !matches!(framing, Framing::Length(0)) {
            conn.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        conn.deadline = Instant::now() + self.limits.body;
        conn.in_flight = true;
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.phase = Phase::Body(Box::new(Incoming {
            head,
            body: Vec::new(),
            framing,
        }));
        if conn.has_output() {
            self.flush(id);
        }
    }

    /// Hands the complete request to the website's loop.
    fn dispatch(&mut self, id: u64) {
        let conn = self.conns.get_mut(&id).expect("driven connection");
        let Phase::Body(incoming) = std::mem::replace(&mut conn.phase, Phase::Streaming) else {
            return;
        };
        let Incoming { head, body, .. } = *incoming;
        conn.phase = Phase::Waiting {
            keep_alive: head.keep_alive,
            head_only: head.method == Method::Head,
        };
        // No deadline while the loop works on it: the loop always answers (or drops it,
        // which answers 500).
        conn.deadline = far_future();
        let request = HttpRequest {
            method: head.method,
            url: head.url,
            headers: head.headers,
            peer: conn.peer,
            body,
            answer: Answer {
                conn: id,
                edge: self.handle.clone(),
                sent: false,
            },
        };
        if let Err(WebEvent::Request(request)) = self.events.send(WebEvent::Request(request)) {
            // The loop is gone: answer here.
            let reply = HttpReply::unavailable(request.url(), "server stopping");
            request.answer.send(reply);
        }
    }

    fn on_cmd(&mut self, cmd: Cmd, worker: &WorkerCx) {
        match cmd {
            Cmd::Reply { conn, reply } => {
                // An injected worker panic takes the edge here (the website then restarts).
                worker.checkpoint();
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                let Phase::Waiting {
                    keep_alive,
                    head_only,
                } = c.phase
                else {
                    return;
                };
                let close = !keep_alive || self.stopping();
                if reply.body.is_streamed() {
                    self.stream(conn, reply, close, head_only);
                } else {
                    self.answer_now(conn, reply, close, head_only, None);
                }
            }
            Cmd::Abandoned(conn) => {
                if let Some(Phase::Waiting { head_only, .. }) =
                    self.conns.get(&conn).map(|c| &c.phase)
                {
                    let head_only = *head_only;
                    log::warn!("website: a request was dropped unanswered; answering 500");
                    let reply =
                        HttpReply::text(500, "internal error: the request was not answered\n");
                    self.answer_now(conn, reply, true, head_only, None);
                }
            }
            Cmd::StreamDone { conn, socket } => self.stream_done(conn, socket),
            Cmd::StopAccepting => self.stop_accepting(),
            Cmd::Exit => {
                self.stop_accepting();
                self.exit_at = Some(Instant::now() + EXIT_GRACE);
            }
        }
    }

    fn stop_accepting(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
            // Dropped here: new connections are refused and the port is free at once.
        }
    }

    /// Writes `reply` on connection `id` (status line to body); `close` ends the connection
    /// after it. `refusal_route` counts an edge refusal in the metrics.
    fn answer_now(
        &mut self,
        id: u64,
        reply: HttpReply,
        close: bool,
        head_only: bool,
        refusal_route: Option<Route>,
    ) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Some(route) = refusal_route {
            let status = reply.status;
            let _ = self.events.send(WebEvent::AnsweredByEdge { route, status });
        }
        reply.write_bytes_reply(&mut conn.out, close, head_only);
        conn.phase = Phase::Writing { close };
        conn.deadline = Instant::now() + self.limits.write;
        self.flush(id);
    }

    /// Refuses the request being read: the refusal, then a lingering close.
    fn refuse(&mut self, id: u64, route: Route, status: u16, why: &str) {
        let reply = HttpReply::text(status, &format!("{why}\n"));
        self.answer_now(id, reply, true, false, Some(route));
    }

    fn flush(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match conn.flush() {
            Ok(true) => {
                conn.deadline = conn.deadline.max(Instant::now());
                self.written(id);
            }
            Ok(false) => {
                // Progress resets the write deadline; a client that reads nothing times out.
                if let Phase::Writing { .. } = conn.phase {
                    conn.deadline = Instant::now() + self.limits.write;
                }
                let interest = Interest::READABLE | Interest::WRITABLE;
                if let Some(s) = conn.socket.as_mut() {
                    let _ = self
                        .poll
                        .registry()
                        .reregister(s, Token(id as usize), interest);
                }
            }
            Err(e) => {
                log::debug!("website: writing to {}: {e}", conn.peer);
                self.close(id);
            }
        }
    }

    /// Everything queued for `id` is written.
    fn written(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Writing { close } = conn.phase else {
            // A 100 Continue went out; the body is still being read.
            return;
        };
        self.count_out(id);
        let conn = self.conns.get_mut(&id).expect("present above");
        if close {
            // Our side is done; read what the client still sends until it closes.
            if let Some(s) = conn.socket.as_ref() {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            conn.phase = Phase::Lingering;
            conn.deadline = Instant::now() + LINGER;
        } else {
            conn.phase = Phase::Head;
            conn.deadline = Instant::now() + self.limits.idle;
            if let Some(s) = conn.socket.as_mut() {
                let _ = self
                    .poll
                    .registry()
                    .reregister(s, Token(id as usize), Interest::READABLE);
            }
        }
        // A pipelined request may be waiting in `inbuf`, or bytes in the socket.
        self.drive(id);
    }

    /// The request on `id` is answered (or its connection is gone): no longer in flight.
    fn count_out(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if std::mem::take(&mut conn.in_flight) {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            if self.stopping() {
                let _ = self.events.send(WebEvent::Responded);
            }
        }
    }

    /// Hands the socket to a stream thread, which writes the streamed body.
    fn stream(&mut self, id: u64, reply: HttpReply, close: bool, head_only: bool) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(mut socket) = conn.socket.take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut socket);
        conn.phase = Phase::Streaming;
        conn.deadline = far_future();
        let job = StreamJob {
            conn: id,
            socket: socket.into(),
            reply,
            close,
            head_only,
            write_timeout: self.limits.write,
        };
        if let Err(e) = self.streams.send(job) {
            log::error!("website: no stream thread left; closing the connection");
            drop(e.into_inner());
            self.close(id);
        }
    }

    fn stream_done(&mut self, id: u64, socket: Option<std::net::TcpStream>) {
        let stopping = self.stopping();
        let Some(socket) = socket else {
            self.close(id);
            return;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if socket.set_nonblocking(true).is_err() {
            self.close(id);
            return;
        }
        let mut socket = TcpStream::from_std(socket);
        if self
            .poll
            .registry()
            .register(&mut socket, Token(id as usize), Interest::READABLE)
            .is_err()
        {
            self.close(id);
            return;
        }
        conn.socket = Some(socket);
        conn.phase = Phase::Writing { close: stopping };
        self.written(id);
    }

    fn close(&mut self, id: u64) {
        self.count_out(id);
        if let Some(mut conn) = self.conns.remove(&id) {
            if let Some(s) = conn.socket.as_mut() {
                let _ = self.poll.registry().deregister(s);
            }
        }
    }

    /// Times out connections past their deadline: a head or body that did not arrive in time
    /// gets 408; an idle keep-alive connection, a stalled write or a linger just closes.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            let Some(conn) = self.conns.get(&id) else {
                continue;
            };
            match &conn.phase {
                Phase::Head if !conn.inbuf.is_empty() => {
                    self.refuse(
                        id,
                        Route::NotFound,
                        408,
                        "request head not received in time",
                    );
                }
                Phase::Body(incoming) => {
                    let route = Route::of(&incoming.head.url);
                    self.refuse(id, route, 408, "request body not received in time");
                }
                _ => self.close(id),
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 86_400)
}

/// Out of descriptors or memory: the listener is fine, accepting must wait.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EPROTO
        )
    )
}

/// Answers a connection over `[website] max_connections` with 503 and closes it.
fn refuse_at_capacity(socket: TcpStream) {
    let body = "too many connections; retry shortly\n";
    let text = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = io::Write::write(&mut &socket, text.as_bytes());
}
