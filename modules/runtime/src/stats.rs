//! Counters the controller and modules update and `/metrics` reads: the one piece of state
//! shared across threads, all atomics or short-held locks, never used for control.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::protocol::ModuleKind;

/// The counters of one module, kept across its restarts.
#[derive(Default)]
pub struct ModuleCounters {
    /// Times the controller started this module after the first start.
    pub restarts: AtomicU64,
    /// Whether a thread of this module is serving its mailbox now.
    pub running: AtomicBool,
}

/// The counters the controller and modules keep for `/metrics`, `ctl status` and the site page.
#[derive(Default)]
pub struct RuntimeStats {
    modules: [ModuleCounters; ModuleKind::COUNT],
    /// Successful reloads of the config file.
    pub reloads: AtomicU64,
    /// `[schedule]` jobs that fired and were answered, by job name.
    schedule_runs: Mutex<BTreeMap<String, u64>>,
    /// What the queue module last saw of each grid, by grid name.
    grids: Mutex<BTreeMap<String, GridReport>>,
}

pub use iceprod_model::status::GridReport;

impl RuntimeStats {
    /// The counters of module `kind`.
    pub fn module(&self, kind: ModuleKind) -> &ModuleCounters {
        &self.modules[kind.index()]
    }

    /// Counts one run of `[schedule]` job `job` that its target answered without an error.
    pub fn count_schedule_run(&self, job: &str) {
        let mut runs = self.schedule_runs.lock().unwrap_or_else(|p| p.into_inner());
        *runs.entry(job.to_string()).or_default() += 1;
    }

    /// A copy of the answered runs of each `[schedule]` job, by job name.
    pub fn schedule_runs(&self) -> BTreeMap<String, u64> {
        self.schedule_runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces what the queue module last saw of grid `name`.
    pub fn set_grid_report(&self, name: &str, report: GridReport) {
        let mut grids = self.grids.lock().unwrap_or_else(|p| p.into_inner());
        grids.insert(name.to_string(), report);
    }

    /// Forgets grids no longer configured.
    pub fn retain_grids(&self, keep: impl Fn(&str) -> bool) {
        let mut grids = self.grids.lock().unwrap_or_else(|p| p.into_inner());
        grids.retain(|name, _| keep(name));
    }

    /// A copy of the last report of each grid, by grid name.
    pub fn grid_reports(&self) -> BTreeMap<String, GridReport> {
        self.grids.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Times the controller started module `kind` after its first start.
    pub fn restarts(&self, kind: ModuleKind) -> u64 {
        self.module(kind).restarts.load(Ordering::Relaxed)
    }
}
