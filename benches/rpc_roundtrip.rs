//! Benchmark of the internal RPC round trip between two module threads: `cx.call` → the callee's
//! loop answers → the reply lands in the caller's mailbox → the caller's loop runs the callback.
//!
//! Owns two bench-only modules run by the runtime's [`Harness`] on real threads: [`Callee`]
//! (kind `db`, which this build has no real module for) whose `Ping`s the runtime answers itself,
//! and [`Caller`] (kind `queue`) which, asked with a `Scheduled` request whose job name carries
//! a count, makes that many sequential calls from inside its own loop, each started in the
//! previous one's callback, times each with [`Instant`], answers `Done` and hands the timings
//! back through a channel this file sets up. The bench thread never takes part in a round trip.
//!
//! Reports criterion's `internal_rpc_round_trip` (time per round trip, from `iter_custom`) and,
//! in a real bench run (`--bench`), the median and p99 of 100,000 individually timed round trips.
//! It must not change the runtime: everything here goes through its public API.
//!
//! The figure is bimodal on a 2-core machine: when the two threads sit on different CPUs each
//! round trip pays two cross-CPU wake-ups; when the scheduler puts both on one CPU (for example
//! because another process keeps the other busy) it pays two context switches, several times
//! less. `ICEPROD_BENCH_PIN=cross` (callee on CPU 1, caller on CPU 0) or `same` (both on CPU 0)
//! pins the two module threads from their `init` to measure one mode; unset, nothing is pinned.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::Criterion;
use crossbeam_channel::{Receiver, Sender};
use iceprod_runtime::harness::Harness;
use iceprod_runtime::{
    CallError, Config, Context, Module, ModuleError, ModuleKind, Reply, ReplyTo, Request,
    ScheduledMessage,
};

/// Round trips timed one by one for the percentile report.
const PERCENTILE_SAMPLES: u64 = 100_000;
/// Upper bound on the round trips one request may ask for, so every run is bounded.
const MAX_ROUND_TRIPS: u64 = 50_000_000;
/// Prefix of the job name that asks [`Caller`] for a run; the count follows it.
const JOB_PREFIX: &str = "rpc-bench:";

/// One finished run: every round trip's time, in order, and the whole run's wall time measured
/// on the caller's thread from the first call to the last callback.
struct Run {
    round_trips: Vec<Duration>,
    total: Duration,
}

/// Which CPUs the module threads pin themselves to (`ICEPROD_BENCH_PIN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pinning {
    None,
    SameCpu,
    CrossCpu,
}

impl Pinning {
    fn from_env() -> Pinning {
        match std::env::var("ICEPROD_BENCH_PIN").as_deref() {
            Ok("same") => Pinning::SameCpu,
            Ok("cross") => Pinning::CrossCpu,
            Ok("") | Err(_) => Pinning::None,
            Ok(other) => panic!("ICEPROD_BENCH_PIN must be `same` or `cross`, not {other:?}"),
        }
    }

    /// Pins the calling thread as this mode wants for `kind`.
    fn apply(self, kind: ModuleKind) -> Result<(), ModuleError> {
        let cpu = match (self, kind) {
            (Pinning::None, _) => return Ok(()),
            (Pinning::CrossCpu, ModuleKind::Db) => 1,
            _ => 0,
        };
        // SAFETY: cpu_set_t is plain data for which all zeroes is the empty set; CPU_SET writes
        // inside it (cpu < CPU_SETSIZE), and sched_setaffinity only reads it (pid 0 = this thread).
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if rc != 0 {
            return Err(ModuleError::io(
                format!("pinning the {kind} bench thread to CPU {cpu}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

/// Where [`Caller`] sends finished runs. Set by `main` before the caller starts; a module's
/// `init` takes no arguments, so a static is the one way in.
static RUNS: Mutex<Option<Sender<Run>>> = Mutex::new(None);

/// The called module. It needs no code of its own: the runtime answers `Ping` with `Pong` on
/// this module's thread before `on_message` is reached.
struct Callee;

impl Module for Callee {
    const KIND: ModuleKind = ModuleKind::Db;
    type Event = ();
    type View = ();

    fn view(_: &Config) {}

    fn init(_cx: &mut Context<Self>) -> Result<Self, ModuleError> {
        Pinning::from_env().apply(Self::KIND)?;
        Ok(Callee)
    }

    fn on_message(&mut self, _cx: &mut Context<Self>, _request: Request, reply: ReplyTo) {
        reply.send(Err(CallError::Unsupported(
            "the bench callee answers only Ping",
        )));
    }
}

/// A run in progress.
struct Active {
    remaining: u64,
    round_trips: Vec<Duration>,
    run_started: Instant,
    call_started: Instant,
    reply: ReplyTo,
}

/// The calling module: runs the timed round trips from its own loop.
struct Caller {
    runs: Sender<Run>,
    active: Option<Active>,
}

impl Module for Caller {
    const KIND: ModuleKind = ModuleKind::Queue;
    type Event = ();
    type View = ();

    fn view(_: &Config) {}

    fn init(_cx: &mut Context<Self>) -> Result<Self, ModuleError> {
        Pinning::from_env().apply(Self::KIND)?;
        let runs = RUNS
            .lock()
            .map_err(|_| ModuleError::Config("the bench's run channel lock is poisoned".into()))?
            .clone()
            .ok_or_else(|| {
                ModuleError::Config("the bench did not set up its run channel".into())
            })?;
        Ok(Caller { runs, active: None })
    }

    fn on_message(&mut self, cx: &mut Context<Self>, request: Request, reply: ReplyTo) {
        let count = match &request {
            Request::Scheduled { job, .. } => job
                .strip_prefix(JOB_PREFIX)
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|n| (1..=MAX_ROUND_TRIPS).contains(n)),
            // Any other request (the protocol grows with the modules) is not for this bench.
            _ => None,
        };
        let Some(count) = count else {
            reply.send(Err(CallError::Unsupported("expected job rpc-bench:COUNT")));
            return;
        };
        if self.active.is_some() {
            reply.send(Err(CallError::Failed(
                "a run is already in progress".into(),
            )));
            return;
        }
        let now = Instant::now();
        self.active = Some(Active {
            remaining: count,
            // Allocated before the first call so no round trip pays for growing it.
            round_trips: Vec::with_capacity(count as usize),
            run_started: now,
            call_started: now,
            reply,
        });
        self.call_next(cx);
    }
}

impl Caller {
    /// Starts the next round trip; its callback starts the one after.
    fn call_next(&mut self, cx: &mut Context<Self>) {
        if let Some(active) = self.active.as_mut() {
            active.call_started = Instant::now();
            cx.call(ModuleKind::Db, Request::Ping, Caller::on_pong);
        }
    }

    fn on_pong(&mut self, cx: &mut Context<Self>, result: Result<Reply, CallError>) {
        let now = Instant::now();
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if let Err(e) = result {
            if let Some(active) = self.active.take() {
                active
                    .reply
                    .send(Err(CallError::Failed(format!("a round trip failed: {e}"))));
            }
            return;
        }
        active.round_trips.push(now - active.call_started);
        active.remaining -= 1;
        if active.remaining > 0 {
            self.call_next(cx);
            return;
        }
        if let Some(active) = self.active.take() {
            let run = Run {
                total: now - active.run_started,
                round_trips: active.round_trips,
            };
            // Sent before the reply, so the bench finds the timings once it sees `Done`.
            let sent = self.runs.send(run);
            active.reply.send(match sent {
                Ok(()) => Ok(Reply::Done),
                Err(_) => Err(CallError::Failed("the bench stopped listening".into())),
            });
        }
    }
}

/// Starts both modules and keeps the receiving end of their run channel.
struct Bench {
    harness: Harness,
    runs: Receiver<Run>,
}

impl Bench {
    fn start() -> Bench {
        let (tx, runs) = crossbeam_channel::unbounded();
        *RUNS
            .lock()
            .expect("nothing panics while holding the run channel lock") = Some(tx);
        let config = Config::defaults(&std::env::temp_dir().join("iceprod-rpc-bench.toml"));
        let mut harness = Harness::new(config);
        harness.start::<Callee>().expect("the bench callee starts");
        harness.start::<Caller>().expect("the bench caller starts");
        Bench { harness, runs }
    }

    /// Asks the caller for `count` round trips and waits for them (bounded by a deadline that
    /// grows with the count: 30 s plus 1 ms per round trip).
    fn run(&mut self, count: u64) -> Run {
        let timeout = Duration::from_secs(30) + Duration::from_millis(count);
        let request = Request::Scheduled {
            job: format!("{JOB_PREFIX}{count}"),
            message: ScheduledMessage::Ping,
        };
        match self.harness.call(ModuleKind::Queue, request, timeout) {
            Ok(Reply::Done) => {}
            other => panic!("the bench caller did not finish {count} round trips: {other:?}"),
        }
        self.runs
            .recv_timeout(Duration::from_secs(5))
            .expect("the caller sends its timings before it answers Done")
    }
}

fn internal_rpc_round_trip(c: &mut Criterion, bench: &mut Bench) {
    c.bench_function("internal_rpc_round_trip", |b| {
        b.iter_custom(|iters| bench.run(iters.max(1)).total)
    });
}

/// Times [`PERCENTILE_SAMPLES`] round trips one by one and prints median and p99.
fn print_percentiles(bench: &mut Bench) {
    // Warm both threads up first (page faults, the reply vector, CPU frequency).
    bench.run(10_000);
    let mut samples = bench.run(PERCENTILE_SAMPLES).round_trips;
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "internal_rpc_round_trip (pinning: {:?}): {} sequential round trips: median {:.2} µs, \
         p99 {:.2} µs, mean {:.2} µs, min {:.2} µs, max {:.2} µs",
        Pinning::from_env(),
        samples.len(),
        micros(at(0.5)),
        micros(at(0.99)),
        micros(samples.iter().sum::<Duration>() / samples.len() as u32),
        micros(samples[0]),
        micros(samples[samples.len() - 1]),
    );
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benchmarking = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--list");
    let mut bench = Bench::start();
    let mut c = Criterion::default().configure_from_args();
    internal_rpc_round_trip(&mut c, &mut bench);
    if benchmarking {
        print_percentiles(&mut bench);
    }
    c.final_summary();
}
