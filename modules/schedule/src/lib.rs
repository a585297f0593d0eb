//! iceprod-schedule: the periodic jobs of `[schedule]` (SPEC §9).
//!
//! Owns a clokwerk `Scheduler` driven from this module's loop: a timer calls `run_pending()`
//! every [`TICK`], with no thread of its own. A job that is due sends its typed
//! [`ScheduledMessage`] to its target module and counts the run when the target answers. A job
//! whose previous run is still unanswered is skipped, so a slow target is never flooded.
//! What a job does is the target's business; this module only keeps time.
//!
//! A reload that changes `[schedule]` rebuilds the jobs in place; the thread keeps running.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveTime;
use clokwerk::{Interval, Job, Scheduler};
use crossbeam_channel::{Receiver, Sender};
use iceprod_runtime::config::{ScheduleConfig, ScheduleWhen};
use iceprod_runtime::{
    CallError, Config, Context, Module, ModuleError, ModuleKind, ReloadAction, Reply, ReplyTo,
    Request, TimerId,
};

/// How often due jobs are looked for: the scheduling resolution.
pub const TICK: Duration = Duration::from_millis(250);

pub struct Schedule {
    jobs: ScheduleConfig,
    scheduler: Scheduler,
    /// clokwerk's job closures must be `Send`; they only post the job's name here.
    due_tx: Sender<String>,
    due_rx: Receiver<String>,
    /// Jobs whose last run has not been answered yet.
    running: BTreeSet<String>,
}

impl Schedule {
    fn build(&mut self, jobs: &ScheduleConfig) {
        let mut scheduler = Scheduler::new();
        for (name, job) in &jobs.jobs {
            let schedule = match job.when {
                ScheduleWhen::Every(every) => {
                    // Validation guarantees whole seconds ≥ 1; saturate rather than wrap.
                    let secs = u32::try_from(every.as_secs()).unwrap_or(u32::MAX);
                    scheduler.every(Interval::Seconds(secs))
                }
                ScheduleWhen::Daily { hour, minute } => {
                    // Validation guarantees hour < 24 and minute < 60.
                    let at = NaiveTime::from_hms_opt(hour, minute, 0).unwrap_or_default();
                    scheduler.every(Interval::Days(1)).at_time(at)
                }
            };
            let tx = self.due_tx.clone();
            let name = name.clone();
            schedule.run(move || {
                let _ = tx.send(name.clone());
            });
        }
        self.scheduler = scheduler;
        self.jobs = jobs.clone();
        log::info!("schedule: {} job(s)", self.jobs.jobs.len());
    }

    fn fire(&mut self, cx: &mut Context<Self>, name: String) {
        // The job may have been removed by a reload after it was posted.
        let Some(job) = self.jobs.jobs.get(&name) else {
            return;
        };
        if !self.running.insert(name.clone()) {
            log::warn!("schedule: {name} is still running; skipped this time");
            return;
        }
        log::debug!("schedule: {name} → {}", job.target);
        let request = Request::Scheduled {
            job: name.clone(),
            message: job.message,
        };
        cx.call(job.target, request, move |me: &mut Schedule, cx, result| {
            me.running.remove(&name);
            match result {
                Ok(_) => cx.stats().count_schedule_run(&name),
                Err(e) => log::warn!("schedule: job {name} failed: {e}"),
            }
        });
    }
}

impl Module for Schedule {
    const KIND: ModuleKind = ModuleKind::Schedule;
    type Event = ();
    /// `[schedule]` only.
    type View = ScheduleConfig;

    fn view(config: &Config) -> ScheduleConfig {
        config.schedule.clone()
    }

    fn init(cx: &mut Context<Self>) -> Result<Self, ModuleError> {
        let (due_tx, due_rx) = crossbeam_channel::unbounded();
        let mut me = Schedule {
            jobs: ScheduleConfig::default(),
            scheduler: Scheduler::new(),
            due_tx,
            due_rx,
            running: BTreeSet::new(),
        };
        let jobs = cx.config().schedule.clone();
        me.build(&jobs);
        cx.set_timer(TICK);
        Ok(me)
    }

    fn on_message(&mut self, _cx: &mut Context<Self>, request: Request, reply: ReplyTo) {
        match request {
            Request::Scheduled { .. } => reply.send(Ok(Reply::Done)),
            _ => reply.send(Err(CallError::Unsupported("schedule takes no requests"))),
        }
    }

    fn on_timer(&mut self, cx: &mut Context<Self>, _timer: TimerId) {
        self.scheduler.run_pending();
        while let Ok(name) = self.due_rx.try_recv() {
            self.fire(cx, name);
        }
        if !cx.is_stopping() {
            cx.set_timer(TICK);
        }
    }

    fn on_reload(&mut self, _cx: &mut Context<Self>, config: &Arc<Config>) -> ReloadAction {
        self.build(&config.schedule);
        ReloadAction::Applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceprod_runtime::harness::Harness;
    use iceprod_runtime::Status;
    use std::path::Path;
    use std::time::Instant;

    fn config(jobs: &str) -> Config {
        Config::parse(
            jobs,
            Path::new("/nonexistent/iceprod.toml"),
            &ModuleKind::ALL,
        )
        .expect("test config is valid")
    }

    /// Waits (bounded) until `job` has run at least `n` times.
    fn wait_runs(h: &Harness, job: &str, n: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if h.stats().schedule_runs().get(job).copied().unwrap_or(0) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    const EVERY_SECOND: &str =
        "[schedule.jobs.tick]\nevery = \"1s\"\ntarget = \"schedule\"\nmessage = \"ping\"\n";

    #[test]
    fn a_job_fires_repeatedly_and_its_target_answers() {
        let mut h = Harness::new(config(EVERY_SECOND));
        h.start::<Schedule>().unwrap();
        assert!(wait_runs(&h, "tick", 2), "tick never ran twice");
    }

    #[test]
    fn reload_rebuilds_jobs_in_place() {
        let mut h = Harness::new(config(EVERY_SECOND));
        h.start::<Schedule>().unwrap();
        let renamed = config(
            "[schedule.jobs.tock]\nevery = \"1s\"\ntarget = \"schedule\"\nmessage = \"ping\"\n",
        );
        h.ctl(
            ModuleKind::Schedule,
            iceprod_runtime::Ctl::Reload {
                id: 1,
                config: Arc::new(renamed),
            },
        );
        assert_eq!(
            h.wait_status(ModuleKind::Schedule, Duration::from_secs(10)),
            Some(Status::Reloaded {
                id: 1,
                action: ReloadAction::Applied
            })
        );
        assert!(wait_runs(&h, "tock", 1), "the new job never ran");
        let tick_before = h.stats().schedule_runs().get("tick").copied();
        assert!(wait_runs(&h, "tock", 3));
        assert_eq!(h.stats().schedule_runs().get("tick").copied(), tick_before);
    }

    #[test]
    fn a_job_to_a_missing_target_is_logged_not_fatal() {
        // Website is enabled in the config but not started here: calls fail, the module lives.
        let mut h = Harness::new(config(
            "[schedule.jobs.w]\nevery = \"1s\"\ntarget = \"website\"\nmessage = \"ping\"\n",
        ));
        h.start::<Schedule>().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(h.stats().schedule_runs().get("w"), None);
        assert_eq!(
            h.call(ModuleKind::Schedule, Request::Ping, Duration::from_secs(5)),
            Ok(Reply::Pong)
        );
    }
}
