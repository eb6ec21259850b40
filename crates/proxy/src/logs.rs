//! Rate-limited logging for events that a flood repeats per connection
//! (refused clients, clients without a backend): the first one of each
//! interval is logged with how many were suppressed before it, so a
//! connection flood does not become a log flood (stderr writes are
//! synchronous).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows one event per `interval`; counts the rest.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    interval: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub(crate) const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(LimiterState {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when this event should be logged, `n` being how many were
    /// suppressed since the last logged one; `None` when it is suppressed.
    pub(crate) fn allow(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = state
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if due {
            state.last = Some(now);
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval_with_the_suppressed_count() {
        let limiter = LogLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(limiter.allow(t0), Some(0));
        for i in 1..=99 {
            assert_eq!(limiter.allow(t0 + Duration::from_millis(i * 5)), None);
        }
        assert_eq!(limiter.allow(t0 + Duration::from_secs(1)), Some(99));
        assert_eq!(
            limiter.allow(t0 + Duration::from_millis(1500)),
            None,
            "the interval restarts at the logged event"
        );
        assert_eq!(limiter.allow(t0 + Duration::from_secs(3)), Some(1));
    }
}
