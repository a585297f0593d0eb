//! Dataset, job and task states (SPEC §4), and [`transition`]: the one function every task
//! state change goes through, whoever asks (a worker, the queue, a person, a schedule job).
//! It decides the new state and failure count, or refuses the move; callers store the result
//! with `prev_status` and `status_changed` in the same transaction as its effects.
//!
//! The invariants it keeps: a `complete` task changes only by a dataset hard reset, and the
//! failure count never decreases except by a reset.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A task's state, stored in `task.status` as its [`TaskStatus::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// In the global pool (a master's, or this site's when standalone).
    Idle,
    /// Assigned to this site, not yet submitted.
    Waiting,
    /// Submitted to a grid, or in the pilot lookup.
    Queued,
    /// Running on a worker: `set_processing`, or handed to a pilot by `new_task`.
    Processing,
    /// Finished (`finish_task`); only a hard reset moves it again.
    Complete,
    /// Held by a person or by a debug dataset.
    Suspended,
    /// Out of retries.
    Failed,
    /// On its way back to the pool.
    Resume,
    /// To be retried.
    Reset,
}

impl TaskStatus {
    /// Every task state, from idle through the end states to resume and reset.
    pub const ALL: [TaskStatus; 9] = [
        TaskStatus::Idle,
        TaskStatus::Waiting,
        TaskStatus::Queued,
        TaskStatus::Processing,
        TaskStatus::Complete,
        TaskStatus::Suspended,
        TaskStatus::Failed,
        TaskStatus::Resume,
        TaskStatus::Reset,
    ];

    /// The state as stored, sent and shown: `idle`, `waiting`, ….
    pub fn name(self) -> &'static str {
        match self {
            TaskStatus::Idle => "idle",
            TaskStatus::Waiting => "waiting",
            TaskStatus::Queued => "queued",
            TaskStatus::Processing => "processing",
            TaskStatus::Complete => "complete",
            TaskStatus::Suspended => "suspended",
            TaskStatus::Failed => "failed",
            TaskStatus::Resume => "resume",
            TaskStatus::Reset => "reset",
        }
    }

    /// The state stored as `name`; `None` for any other text.
    pub fn from_name(name: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A job's state, which follows its tasks' states; stored in `job.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Some task is still active (not complete, suspended or failed); a new job's state.
    Processing,
    /// Every task is complete.
    Complete,
    /// Some tasks are suspended and none is active; the rest are complete or failed.
    Suspended,
    /// Every task is complete or failed, and at least one failed.
    Errors,
}

/// A dataset's state, set by a person or by its jobs; stored in `dataset.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetStatus {
    /// Submitted, or resumed: creates jobs and queues tasks.
    Processing,
    /// Creates no more jobs; completes when its existing jobs finish.
    Truncated,
    /// Every job is complete; `end_date` is set.
    Complete,
    /// Held by a person (no new queueing), or some jobs suspended and none processing.
    Suspended,
    /// Every job is complete or has errors, and at least one has errors; `end_date` is set.
    Errors,
}

/// What happened to a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskEvent {
    /// A client site took the task from its master's pool.
    TakeFromMaster,
    /// Submitted to a grid on this site, or put in the pilot lookup.
    Queue,
    /// Started: `set_processing`, or handed to a pilot by `new_task`.
    Start,
    /// `finish_task`.
    Finish,
    /// `task_error`: counts a failure.
    Error,
    /// Longer than the grid allows in its state (failures unchanged).
    Stuck,
    /// The grid no longer knows the job (failures unchanged).
    Lost,
    /// A reset task becomes ready to run again.
    Retry,
    /// A resumed task returns to the pool.
    ReturnToPool,
    /// A person reset the task: failures start again from 0.
    ManualReset,
    /// A person resumed a suspended or failed task.
    ManualResume,
    /// A person suspended the task.
    ManualSuspend,
    /// Dataset or job reset: failed and suspended tasks go back to the pool, failures 0.
    PoolReset,
    /// Dataset or job hard reset: every task back to the pool, complete ones too.
    HardReset,
}

/// What the rules depend on besides the task itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskRules {
    /// `[queue] max_resets`: failures at which an error fails the task (default 10).
    pub max_resets: u32,
    /// The dataset is in debug mode: an error suspends the task instead of retrying it.
    pub debug: bool,
    /// This site pulls work from a master (a reset task with ≥ 3 failures goes back to it).
    pub client_site: bool,
}

impl Default for TaskRules {
    fn default() -> Self {
        TaskRules {
            max_resets: 10,
            debug: false,
            client_site: false,
        }
    }
}

/// An accepted state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The task's state before the change.
    pub from: TaskStatus,
    /// The state the task moves to.
    pub to: TaskStatus,
    /// Failures to store with it: +1 on `Error`, 0 on `ManualReset`, `PoolReset` and `HardReset`.
    pub failures: u32,
}

/// A refused state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IllegalTransition {
    /// The task's state, which has no move for `event`.
    pub from: TaskStatus,
    /// The event that was refused.
    pub event: TaskEvent,
}

impl fmt::Display for IllegalTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} task cannot take {:?}", self.from, self.event)
    }
}

impl std::error::Error for IllegalTransition {}

/// Failures on a client site from which a reset task goes back to its master's pool.
pub const CLIENT_RETURN_FAILURES: u32 = 3;

/// Decides the state a task in `from` with `failures` moves to on `event`.
pub fn transition(
    from: TaskStatus,
    failures: u32,
    event: TaskEvent,
    rules: &TaskRules,
) -> Result<Transition, IllegalTransition> {
    use TaskEvent as E;
    use TaskStatus as S;
    let to = |to: TaskStatus, failures: u32| Ok(Transition { from, to, failures });
    match (event, from) {
        (E::HardReset, _) => to(S::Idle, 0),
        // Nothing else moves a complete task.
        (_, S::Complete) => Err(IllegalTransition { from, event }),
        (E::TakeFromMaster, S::Idle) => to(S::Waiting, failures),
        (E::Queue, S::Idle | S::Waiting) => to(S::Queued, failures),
        (E::Start, S::Queued) => to(S::Processing, failures),
        (E::Finish, S::Processing) => to(S::Complete, failures),
        (E::Error, S::Queued | S::Processing) => {
            let failures = failures.saturating_add(1);
            if rules.debug {
                to(S::Suspended, failures)
            } else if failures >= rules.max_resets {
                to(S::Failed, failures)
            } else {
                to(S::Reset, failures)
            }
        }
        (E::Stuck, S::Waiting | S::Queued | S::Processing) => to(S::Reset, failures),
        (E::Lost, S::Queued | S::Processing) => to(S::Reset, failures),
        (E::Retry, S::Reset) => {
            if rules.client_site && failures >= CLIENT_RETURN_FAILURES {
                to(S::Idle, failures)
            } else {
                to(S::Waiting, failures)
            }
        }
        (E::ReturnToPool, S::Resume) => to(S::Idle, failures),
        (E::ManualReset, _) => to(S::Reset, 0),
        (E::ManualResume, S::Suspended | S::Failed) => to(S::Resume, failures),
        (E::ManualSuspend, s) if s != S::Suspended => to(S::Suspended, failures),
        (E::PoolReset, S::Failed | S::Suspended) => to(S::Idle, 0),
        _ => Err(IllegalTransition { from, event }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskEvent as E;
    use TaskStatus as S;

    const EVENTS: [TaskEvent; 14] = [
        E::TakeFromMaster,
        E::Queue,
        E::Start,
        E::Finish,
        E::Error,
        E::Stuck,
        E::Lost,
        E::Retry,
        E::ReturnToPool,
        E::ManualReset,
        E::ManualResume,
        E::ManualSuspend,
        E::PoolReset,
        E::HardReset,
    ];

    fn rules() -> TaskRules {
        TaskRules::default()
    }

    #[test]
    fn a_task_runs_from_idle_to_complete() {
        let mut s = S::Idle;
        for (event, expected) in [
            (E::Queue, S::Queued),
            (E::Start, S::Processing),
            (E::Finish, S::Complete),
        ] {
            s = transition(s, 0, event, &rules()).unwrap().to;
            assert_eq!(s, expected);
        }
    }

    #[test]
    fn task_error_after_max_resets_fails_task() {
        let t = transition(S::Processing, 8, E::Error, &rules()).unwrap();
        assert_eq!((t.to, t.failures), (S::Reset, 9));
        let t = transition(S::Processing, 9, E::Error, &rules()).unwrap();
        assert_eq!((t.to, t.failures), (S::Failed, 10));
    }

    #[test]
    fn task_error_in_a_debug_dataset_suspends() {
        let debug = TaskRules {
            debug: true,
            ..rules()
        };
        let t = transition(S::Queued, 0, E::Error, &debug).unwrap();
        assert_eq!((t.to, t.failures), (S::Suspended, 1));
    }

    #[test]
    fn stuck_and_lost_tasks_reset_without_counting_a_failure() {
        for from in [S::Waiting, S::Queued, S::Processing] {
            assert_eq!(
                transition(from, 4, E::Stuck, &rules()).unwrap(),
                Transition {
                    from,
                    to: S::Reset,
                    failures: 4
                }
            );
        }
        assert!(transition(S::Waiting, 4, E::Lost, &rules()).is_err());
    }

    #[test]
    fn a_reset_task_returns_to_the_master_after_three_failures_on_a_client() {
        let client = TaskRules {
            client_site: true,
            ..rules()
        };
        assert_eq!(
            transition(S::Reset, 2, E::Retry, &client).unwrap().to,
            S::Waiting
        );
        assert_eq!(
            transition(S::Reset, 3, E::Retry, &client).unwrap().to,
            S::Idle
        );
        assert_eq!(
            transition(S::Reset, 3, E::Retry, &rules()).unwrap().to,
            S::Waiting
        );
    }

    #[test]
    fn only_a_hard_reset_moves_a_complete_task() {
        for event in EVENTS {
            let result = transition(S::Complete, 2, event, &rules());
            if event == E::HardReset {
                assert_eq!(result.unwrap().to, S::Idle);
            } else {
                assert!(result.is_err(), "{event:?} moved a complete task");
            }
        }
    }

    #[test]
    fn manual_actions() {
        assert_eq!(
            transition(S::Failed, 10, E::ManualReset, &rules())
                .unwrap()
                .failures,
            0
        );
        assert_eq!(
            transition(S::Failed, 10, E::ManualResume, &rules())
                .unwrap()
                .to,
            S::Resume
        );
        assert_eq!(
            transition(S::Resume, 10, E::ReturnToPool, &rules())
                .unwrap()
                .to,
            S::Idle
        );
        assert!(transition(S::Suspended, 0, E::ManualSuspend, &rules()).is_err());
        assert_eq!(
            transition(S::Suspended, 5, E::PoolReset, &rules()).unwrap(),
            Transition {
                from: S::Suspended,
                to: S::Idle,
                failures: 0
            }
        );
        assert!(transition(S::Processing, 5, E::PoolReset, &rules()).is_err());
    }

    /// A small deterministic generator, so the property test needs no extra crate and
    /// replays the same sequences every run.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn no_sequence_moves_a_complete_task_and_failures_fall_only_by_a_reset() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for seq in 0..20_000 {
            let r = TaskRules {
                max_resets: (seq % 12) as u32 + 1,
                debug: seq % 7 == 0,
                client_site: seq % 3 == 0,
            };
            let (mut status, mut failures) = (S::Idle, 0u32);
            for _ in 0..60 {
                let event = EVENTS[(rng.next() % EVENTS.len() as u64) as usize];
                match transition(status, failures, event, &r) {
                    Ok(t) => {
                        assert_eq!(t.from, status);
                        if status == S::Complete {
                            assert_eq!(event, E::HardReset, "{event:?} moved a complete task");
                        }
                        if t.failures < failures {
                            assert!(
                                matches!(event, E::ManualReset | E::PoolReset | E::HardReset),
                                "{event:?} lowered failures {failures} -> {}",
                                t.failures
                            );
                        }
                        if t.to == S::Failed {
                            assert!(t.failures >= r.max_resets);
                        }
                        (status, failures) = (t.to, t.failures);
                    }
                    Err(e) => assert_eq!((e.from, e.event), (status, event)),
                }
            }
        }
    }
}
