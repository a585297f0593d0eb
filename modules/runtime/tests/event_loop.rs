//! The loop's contract, driven through the harness with small real modules on real threads.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iceprod_runtime::harness::Harness;
use iceprod_runtime::{
    CallError, Config, Context, ControlAsk, Ctl, Module, ModuleError, ModuleKind, ReloadAction,
    Reply, ReplyTo, Request, ScheduledMessage, Status, StopReason, TimerId,
};

const WAIT: Duration = Duration::from_secs(10);

fn config() -> Config {
    Config::defaults(Path::new("/nonexistent/iceprod.toml"))
}

fn job(name: &str) -> Request {
    Request::Scheduled {
        job: name.to_string(),
        message: ScheduledMessage::Ping,
    }
}

/// Answers `Scheduled` by the job name: `now` at once, `later` from a timer, `never` by
/// keeping the reply forever, `drop` by dropping it.
#[derive(Default)]
struct Callee {
    held: Vec<ReplyTo>,
    later: Option<(TimerId, ReplyTo)>,
}

impl Module for Callee {
    const KIND: ModuleKind = ModuleKind::Db;
    type Event = ();
    type View = ();

    fn view(_: &Config) {}

    fn init(_cx: &mut Context<Self>) -> Result<Self, ModuleError> {
        Ok(Callee::default())
    }

    fn on_message(&mut self, cx: &mut Context<Self>, request: Request, reply: ReplyTo) {
        let Request::Scheduled { job, .. } = request else {
            return reply.send(Err(CallError::Unsupported("not a job")));
        };
        match job.as_str() {
            "now" => reply.send(Ok(Reply::Done)),
            "later" => {
                let t = cx.set_timer(Duration::from_millis(50));
                self.later = Some((t, reply));
            }
            "never" => self.held.push(reply),
            "drop" => drop(reply),
            _ => reply.send(Err(CallError::Unsupported("unknown job"))),
        }
    }

    fn on_timer(&mut self, _cx: &mut Context<Self>, timer: TimerId) {
        if let Some((t, reply)) = self.later.take() {
            assert_eq!(t, timer);
            reply.send(Ok(Reply::Done));
        }
    }

    fn on_reload(&mut self, _cx: &mut Context<Self>, config: &Arc<Config>) -> ReloadAction {
        if config.website.port == 1 {
            ReloadAction::NeedsRestart
        } else {
            ReloadAction::Applied
        }
    }

    fn is_drained(&self) -> bool {
        self.later.is_none()
    }
}

/// Forwards each `Scheduled` job to the callee (with a 200 ms deadline) and answers with what
/// its callback saw, proving the callback ran on this module's thread with its state.
struct Caller {
    calls_completed: u32,
}

impl Module for Caller {
    const KIND: ModuleKind = ModuleKind::Queue;
    type Event = ();
    type View = ();

    fn view(_: &Config) {}

    fn init(_cx: &mut Context<Self>) -> Result<Self, ModuleError> {
        Ok(Caller { calls_completed: 0 })
    }

    fn on_message(&mut self, cx: &mut Context<Self>, request: Request, reply: ReplyTo) {
        let thread = std::thread::current().id();
        let target = match &request {
            Request::Scheduled { job, .. } if job == "to-master" => ModuleKind::Master,
            _ => ModuleKind::Db,
        };
        cx.call_with_timeout(
            target,
            request,
            Duration::from_millis(200),
            move |me: &mut Caller, _cx, result| {
                assert_eq!(std::thread::current().id(), thread);
                me.calls_completed += 1;
                reply.send(result);
            },
        );
    }
}

struct PanicsOnMessage;

impl Module for PanicsOnMessage {
    const KIND: ModuleKind = ModuleKind::Proxy;
    type Event = ();
    type View = ();

    fn view(_: &Config) {}

    fn init(_cx: &mut Context<Self>) -> Result<Self, ModuleError> {
        Ok(PanicsOnMessage)
    }

    fn on_message(&mut self, _cx: &mut Context<Self>, _request: Request, _reply: ReplyTo) {
        panic!("boom in on_message");
    }
}

#[test]
fn call_reply_runs_the_callback_on_the_callers_thread() {
    let mut h = Harness::new(config());
    h.start::<Callee>().unwrap();
    h.start::<Caller>().unwrap();
    assert_eq!(h.call(ModuleKind::Queue, job("now"), WAIT), Ok(Reply::Done));
    assert_eq!(
        h.call(ModuleKind::Queue, job("later"), WAIT),
        Ok(Reply::Done)
    );
    assert_eq!(
        h.call(ModuleKind::Queue, Request::Ping, WAIT),
        Ok(Reply::Pong)
    );
}

#[test]
fn call_to_a_disabled_module_fails_at_once() {
    let mut h = Harness::new(config());
    h.start::<Caller>().unwrap();
    assert_eq!(
        h.call(ModuleKind::Queue, job("to-master"), WAIT),
        Err(CallError::Disabled(ModuleKind::Master))
    );
}

#[test]
fn call_without_reply_times_out_and_the_late_reply_is_dropped() {
    let mut h = Harness::new(config());
    h.start::<Callee>().unwrap();
    h.start::<Caller>().unwrap();
    // "never": the callee keeps the reply, so the caller's 200 ms deadline passes.
    assert_eq!(
        h.call(ModuleKind::Queue, job("never"), WAIT),
        Err(CallError::Timeout)
    );
    // The callee stops; the reply it held is dropped unanswered and arrives late as a
    // failure: the caller must drop it (no second completion), and keep serving.
    assert_eq!(h.stop(ModuleKind::Db, WAIT), StopReason::Requested);
    h.start::<Callee>().unwrap();
    assert_eq!(h.call(ModuleKind::Queue, job("now"), WAIT), Ok(Reply::Done));
    assert!(h.recv_reply(Duration::from_millis(100)).is_none());
}

#[test]
fn a_dropped_reply_answers_failed_instead_of_waiting_for_the_deadline() {
    let mut h = Harness::new(config());
    h.start::<Callee>().unwrap();
    match h.call(ModuleKind::Db, job("drop"), WAIT) {
        Err(CallError::Failed(msg)) => assert!(msg.contains("stopped before answering")),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn panic_in_on_message_is_reported_and_the_caller_hears_a_failure() {
    let mut h = Harness::new(config());
    h.start::<PanicsOnMessage>().unwrap();
    let result = h.call(ModuleKind::Proxy, job("now"), WAIT);
    assert!(matches!(result, Err(CallError::Failed(_))), "{result:?}");
    match h.wait_stopped(ModuleKind::Proxy, WAIT) {
        StopReason::Panicked(msg) => assert!(msg.contains("boom in on_message")),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn injected_panic_in_init_and_in_a_handler_are_reported() {
    let mut h = Harness::new(config());
    match h.start_panicking_in_init::<Callee>() {
        Err(StopReason::Panicked(msg)) => assert!(msg.contains("init")),
        other => panic!("unexpected {other:?}"),
    }
    h.start::<Callee>().unwrap();
    h.ctl(ModuleKind::Db, Ctl::InjectPanic);
    assert!(matches!(
        h.wait_stopped(ModuleKind::Db, WAIT),
        StopReason::Panicked(_)
    ));
}

#[test]
fn a_message_sent_during_a_restart_is_delivered_after_it() {
    let mut h = Harness::new(config());
    h.start::<Callee>().unwrap();
    assert_eq!(h.stop(ModuleKind::Db, WAIT), StopReason::Requested);
    // Nobody serves the mailbox now; the message waits in it.
    let id = h.send(ModuleKind::Db, job("now"));
    assert!(h.recv_reply(Duration::from_millis(50)).is_none());
    h.start::<Callee>().unwrap();
    assert_eq!(h.recv_reply(WAIT), Some((id, Ok(Reply::Done))));
}

#[test]
fn stop_waits_for_in_flight_work_to_drain() {
    let mut h = Harness::new(config());
    h.start::<Callee>().unwrap();
    let id = h.send(ModuleKind::Db, job("later"));
    // Give the callee the request before it hears the stop.
    assert_eq!(h.call(ModuleKind::Db, Request::Ping, WAIT), Ok(Reply::Pong));
    h.ctl(
        ModuleKind::Db,
        Ctl::Stop {
            deadline: Instant::now() + WAIT,
        },
    );
    // The in-flight request is answered before the thread ends.
    assert_eq!(h.recv_reply(WAIT), Some((id, Ok(Reply::Done))));
    assert_eq!(h.wait_stopped(ModuleKind::Db, WAIT), StopReason::Requested);
}

#[test]
fn reload_answers_applied_or_needs_restart() {
    let mut h = Harness::new(config());
    h.start::<Callee>().unwrap();
    let mut new = config();
    new.website.port = 9999;
    h.ctl(
        ModuleKind::Db,
        Ctl::Reload {
            id: 1,
            config: Arc::new(new.clone()),
        },
    );
    assert_eq!(
        h.wait_status(ModuleKind::Db, WAIT),
        Some(Status::Reloaded {
            id: 1,
            action: ReloadAction::Applied
        })
    );
    new.website.port = 1;
    h.ctl(
        ModuleKind::Db,
        Ctl::Reload {
            id: 1,
            config: Arc::new(new),
        },
    );
    assert_eq!(
        h.wait_status(ModuleKind::Db, WAIT),
        Some(Status::Reloaded {
            id: 1,
            action: ReloadAction::NeedsRestart
        })
    );
    h.ctl(ModuleKind::Db, Ctl::Ping { id: 7 });
    assert_eq!(
        h.wait_status(ModuleKind::Db, WAIT),
        Some(Status::Pong { id: 7 })
    );
}

/// Asks the controller for a reload on every message and answers with what came back.
struct AsksController;

impl Module for AsksController {
    const KIND: ModuleKind = ModuleKind::Website;
    type Event = ();
    type View = ();

    fn view(_: &Config) {}

    fn init(_cx: &mut Context<Self>) -> Result<Self, ModuleError> {
        Ok(AsksController)
    }

    fn on_message(&mut self, cx: &mut Context<Self>, _request: Request, reply: ReplyTo) {
        let thread = std::thread::current().id();
        cx.ask_controller(
            ControlAsk::Reload,
            move |_me: &mut AsksController, _cx, result| {
                assert_eq!(std::thread::current().id(), thread);
                reply.send(result);
            },
        );
    }
}

#[test]
fn an_ask_reaches_the_controller_and_its_answer_runs_the_callback() {
    let mut h = Harness::new(config());
    h.start::<AsksController>().unwrap();
    let id = h.send(ModuleKind::Website, job("ask"));
    // The harness plays the controller: the ask arrives on the status channel.
    let Some(Status::Ask { ask, reply }) = h.wait_status(ModuleKind::Website, WAIT) else {
        panic!("no ask reached the controller");
    };
    assert_eq!(ask, ControlAsk::Reload);
    reply.send(Ok(Reply::Control(
        iceprod_runtime::status::ControlReply::Done("no changes".into()),
    )));
    let (got, result) = h.recv_reply(WAIT).expect("the module answered");
    assert_eq!(got, id);
    assert_eq!(
        result,
        Ok(Reply::Control(iceprod_runtime::status::ControlReply::Done(
            "no changes".into()
        )))
    );
}

#[test]
fn a_dropped_ask_answers_failed_instead_of_waiting_for_the_deadline() {
    let mut h = Harness::new(config());
    h.start::<AsksController>().unwrap();
    h.send(ModuleKind::Website, job("ask"));
    let Some(Status::Ask { reply, .. }) = h.wait_status(ModuleKind::Website, WAIT) else {
        panic!("no ask reached the controller");
    };
    let started = Instant::now();
    drop(reply);
    let (_, result) = h.recv_reply(WAIT).expect("the module answered");
    assert!(matches!(result, Err(CallError::Failed(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
