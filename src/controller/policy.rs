//! The restart policy, as pure functions so it can be tested without threads: a module that
//! stopped without being asked is started again after a delay that doubles from 100 ms up to
//! 30 s while it keeps failing, and starts over once it has run for a while.

use std::time::Duration;

pub const FIRST_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// A module that ran this long before failing counts as healthy again.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// The delay before the next start after `failures` consecutive failures (at least 1).
pub fn restart_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_DELAY.saturating_mul(1u32 << doublings).min(MAX_DELAY)
}

/// Consecutive failures after one more failure of a module that ran for `ran_for`
/// (`None` if it never became ready).
pub fn failures_after(previous: u32, ran_for: Option<Duration>) -> u32 {
    match ran_for {
        Some(d) if d >= STABLE_AFTER => 1,
        _ => previous.saturating_add(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_from_100ms_and_caps_at_30s() {
        let delays: Vec<u64> = (1..=12)
            .map(|n| restart_delay(n).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
        );
        assert_eq!(restart_delay(u32::MAX), MAX_DELAY);
        assert_eq!(restart_delay(0), FIRST_DELAY);
    }

    #[test]
    fn failures_start_over_after_a_stable_run() {
        assert_eq!(failures_after(0, None), 1);
        assert_eq!(failures_after(5, Some(Duration::from_secs(1))), 6);
        assert_eq!(failures_after(5, Some(STABLE_AFTER)), 1);
        assert_eq!(failures_after(u32::MAX, None), u32::MAX);
    }
}
