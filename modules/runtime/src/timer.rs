//! The loop's timer heap: module timers and call deadlines, cancelled lazily.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

/// What fires when a timer is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimerKind {
    /// A module's own timer (`Context::set_timer`), by its id.
    Module(u64),
    /// The deadline of an outstanding call, by call id.
    CallDeadline(u64),
}

#[derive(Default)]
pub(crate) struct TimerHeap {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    live: HashMap<u64, TimerKind>,
    next_key: u64,
}

impl TimerHeap {
    /// Schedules `kind` at `at`; the key cancels it.
    pub fn insert(&mut self, at: Instant, kind: TimerKind) -> u64 {
        self.next_key += 1;
        let key = self.next_key;
        self.heap.push(Reverse((at, key)));
        self.live.insert(key, kind);
        key
    }

    /// Changes what a live timer fires as.
    pub fn relabel(&mut self, key: u64, kind: TimerKind) {
        if let Some(k) = self.live.get_mut(&key) {
            *k = kind;
        }
    }

    pub fn cancel(&mut self, key: u64) {
        self.live.remove(&key);
    }

    /// The earliest live deadline, dropping cancelled entries on the way.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, key))) = self.heap.peek().copied() {
            if self.live.contains_key(&key) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns one timer due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<TimerKind> {
        while let Some(Reverse((at, key))) = self.heap.peek().copied() {
            if at > now {
                return None;
            }
            self.heap.pop();
            if let Some(kind) = self.live.remove(&key) {
                return Some(kind);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timers_fire_in_deadline_order_and_cancelled_ones_never() {
        let mut heap = TimerHeap::default();
        let now = Instant::now();
        heap.insert(now + Duration::from_millis(20), TimerKind::Module(2));
        let cancelled = heap.insert(now + Duration::from_millis(5), TimerKind::Module(9));
        heap.insert(now + Duration::from_millis(10), TimerKind::CallDeadline(1));
        heap.cancel(cancelled);
        assert_eq!(heap.next_deadline(), Some(now + Duration::from_millis(10)));
        let later = now + Duration::from_millis(30);
        assert_eq!(heap.pop_due(later), Some(TimerKind::CallDeadline(1)));
        assert_eq!(heap.pop_due(later), Some(TimerKind::Module(2)));
        assert_eq!(heap.pop_due(later), None);
        assert_eq!(heap.next_deadline(), None);
    }

    #[test]
    fn timers_not_yet_due_stay() {
        let mut heap = TimerHeap::default();
        let now = Instant::now();
        heap.insert(now + Duration::from_secs(1), TimerKind::Module(1));
        assert_eq!(heap.pop_due(now), None);
        assert!(heap.next_deadline().is_some());
    }
}
