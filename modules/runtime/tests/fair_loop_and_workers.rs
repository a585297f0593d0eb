//! The loop's fairness (a flooded mailbox does not starve a module's own sockets) and the
//! supervision of worker threads, driven through the harness with small real modules.

use std::net::UdpSocket as StdUdpSocket;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use iceprod_runtime::harness::Harness;
use iceprod_runtime::{
    Config, Context, Ctl, Module, ModuleError, ModuleKind, Reply, ReplyTo, Request,
    ScheduledMessage, StopReason, FIRST_MODULE_TOKEN, TURN_BUDGET,
};
use mio::net::UdpSocket;
use mio::{Interest, Token};

const WAIT: Duration = Duration::from_secs(10);
const FLOOD: usize = 20_000;

fn config() -> Config {
    Config::defaults(Path::new("/nonexistent/iceprod.toml"))
}

fn job() -> Request {
    Request::Scheduled {
        job: "work".into(),
        message: ScheduledMessage::Ping,
    }
}

/// Messages the flooded module has handled, and how many it had handled when its socket's
/// datagram was served (`usize::MAX` until then).
static HANDLED: AtomicUsize = AtomicUsize::new(0);
static HANDLED_AT_EVENT: AtomicUsize = AtomicUsize::new(usize::MAX);
static SOCKET_ADDR: Mutex<Option<std::net::SocketAddr>> = Mutex::new(None);

/// Takes a little time per message, and owns a UDP socket of its own.
struct Flooded {
    socket: UdpSocket,
}

impl Module for Flooded {
    const KIND: ModuleKind = ModuleKind::Proxy;
    type Event = ();
    type View = ();

    fn view(_: &Config) {}

    fn init(cx: &mut Context<Self>) -> Result<Self, ModuleError> {
        let mut socket = UdpSocket::bind("127.0.0.1:0".parse().expect("an address"))
            .map_err(|e| ModuleError::io("binding", e))?;
        cx.registry()
            .register(&mut socket, Token(FIRST_MODULE_TOKEN), Interest::READABLE)
            .map_err(|e| ModuleError::io("registering", e))?;
        *SOCKET_ADDR.lock().expect("lock") = Some(socket.local_addr().expect("bound"));
        Ok(Flooded { socket })
    }

    fn on_message(&mut self, _cx: &mut Context<Self>, _request: Request, reply: ReplyTo) {
        // About 50 µs of work, so the flood takes about a second to drain.
        let until = Instant::now() + Duration::from_micros(50);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        HANDLED.fetch_add(1, Ordering::SeqCst);
        reply.send(Ok(Reply::Done));
    }

    fn on_event(&mut self, _cx: &mut Context<Self>, _event: &mio::event::Event) {
        let mut buf = [0u8; 16];
        while self.socket.recv_from(&mut buf).is_ok() {
            let _ = HANDLED_AT_EVENT.compare_exchange(
                usize::MAX,
                HANDLED.load(Ordering::SeqCst),
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
    }
}

#[test]
fn a_socket_event_is_served_while_the_mailbox_is_flooded() {
    let mut h = Harness::new(config());
    h.start::<Flooded>().expect("starts");
    for _ in 0..FLOOD {
        h.send(ModuleKind::Proxy, job());
    }
    let addr = SOCKET_ADDR
        .lock()
        .expect("lock")
        .expect("the module's socket");
    let sent_at = HANDLED.load(Ordering::SeqCst);
    StdUdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.send_to(b"hello", addr))
        .expect("send a datagram");
    let deadline = Instant::now() + WAIT;
    while HANDLED_AT_EVENT.load(Ordering::SeqCst) == usize::MAX && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let at_event = HANDLED_AT_EVENT.load(Ordering::SeqCst);
    assert_ne!(at_event, usize::MAX, "the datagram was never served");
    // Served within a turn or two of its arrival, not after the whole flood: the loop polls
    // its sockets every TURN_BUDGET messages.
    assert!(
        at_event < FLOOD && at_event <= sent_at + 4 * TURN_BUDGET,
        "served after {at_event} of {FLOOD} messages (sent after {sent_at})"
    );
    // And every flooded message is still answered.
    let mut answered = 0;
    while answered < FLOOD && h.recv_reply(WAIT).is_some() {
        answered += 1;
    }
    assert_eq!(answered, FLOOD);
}

/// Hands each message to one supervised worker, which answers it.
struct WithWorker {
    jobs: Sender<ReplyTo>,
}

impl Module for WithWorker {
    const KIND: ModuleKind = ModuleKind::Master;
    type Event = ();
    type View = ();

    fn view(_: &Config) {}

    fn init(cx: &mut Context<Self>) -> Result<Self, ModuleError> {
        let (tx, rx) = crossbeam_channel::unbounded::<ReplyTo>();
        cx.workers()
            .spawn("iceprod-test-worker", move |worker| {
                for reply in rx {
                    worker.checkpoint();
                    reply.send(Ok(Reply::Done));
                }
            })
            .map_err(|e| ModuleError::io("spawning", e))?;
        Ok(WithWorker { jobs: tx })
    }

    fn on_message(&mut self, _cx: &mut Context<Self>, _request: Request, reply: ReplyTo) {
        // The worker lives as long as the module; a failed send drops the reply, which
        // answers the caller with a failure.
        let _ = self.jobs.send(reply);
    }
}

#[test]
fn a_panicking_worker_fails_its_module_naming_the_worker_and_its_caller_hears_it() {
    let mut h = Harness::new(config());
    h.start::<WithWorker>().expect("starts");
    assert_eq!(h.call(ModuleKind::Master, job(), WAIT), Ok(Reply::Done));
    h.ctl(ModuleKind::Master, Ctl::InjectWorkerPanic);
    // The job in the panicking worker's hands is answered with a failure at once.
    let result = h.call(ModuleKind::Master, job(), WAIT);
    assert!(
        matches!(&result, Err(iceprod_runtime::CallError::Failed(_))),
        "{result:?}"
    );
    match h.wait_stopped(ModuleKind::Master, WAIT) {
        StopReason::Failed(why) => assert!(
            why.contains("worker iceprod-test-worker panicked") && why.contains("injected fault"),
            "{why}"
        ),
        other => panic!("unexpected {other:?}"),
    }
    // A new generation gets a new worker and serves again.
    h.start::<WithWorker>().expect("restarts");
    assert_eq!(h.call(ModuleKind::Master, job(), WAIT), Ok(Reply::Done));
}
