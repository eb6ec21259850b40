//! When to ping systemd's watchdog (`WATCHDOG=1`): only while the VRRP
//! driver makes progress, not merely while the agent's loop spins
//! (issue 14, finding 3).
//!
//! The driver's [`progress`](cplb_vrrp::io::driver::DriverStatus::progress)
//! counter moves with each turn of its loop (adverts, packets, timers, and
//! a heartbeat when nothing else came for a second). A ping is due once half of
//! `WatchdogSec` has passed since the last one *and* the counter has moved
//! since then; a driver that is stuck (a send that never completes, a
//! starved runtime) therefore stops the pings, and systemd restarts the
//! agent, whose `ExecStopPost=cplb release` hands the VIPs over.

use std::time::{Duration, Instant};

use tracing::{info, warn};

/// Pure decision logic, driven by (time, progress counter).
#[derive(Debug)]
pub(crate) struct Watchdog {
    /// Half of `WatchdogSec`.
    interval: Duration,
    last_ping: Instant,
    /// The progress counter at the last ping.
    seen: u64,
    /// Whether a withheld ping has been logged (logged once per stall).
    stalled: bool,
}

impl Watchdog {
    /// A watchdog pinged every `interval` while `progress` moves; `now` and
    /// `progress` are the starting point (READY=1 counts as a ping).
    pub(crate) fn new(interval: Duration, now: Instant, progress: u64) -> Watchdog {
        Watchdog {
            interval,
            last_ping: now,
            seen: progress,
            stalled: false,
        }
    }

    /// Whether to send `WATCHDOG=1` now.
    pub(crate) fn due(&mut self, now: Instant, progress: u64) -> bool {
        if now.saturating_duration_since(self.last_ping) < self.interval {
            return false;
        }
        if progress == self.seen {
            // The driver's heartbeat may just be late for this tick: say
            // so only once the stall is clearly longer.
            let since = now.saturating_duration_since(self.last_ping);
            if !self.stalled && since >= self.interval + self.interval / 2 {
                warn!(
                    component = "agent",
                    ?since,
                    "the VRRP driver has made no progress; withholding the watchdog ping"
                );
                self.stalled = true;
            }
            return false;
        }
        if self.stalled {
            info!(
                component = "agent",
                "the VRRP driver makes progress again; watchdog pings resume"
            );
            self.stalled = false;
        }
        self.last_ping = now;
        self.seen = progress;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_every_interval_while_the_driver_progresses() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut dog = Watchdog::new(5 * s, t0, 0);
        // Not before the interval, however much progress.
        assert!(!dog.due(t0 + 4 * s, 4));
        assert!(dog.due(t0 + 5 * s, 5));
        assert!(!dog.due(t0 + 6 * s, 6));
        assert!(dog.due(t0 + 10 * s, 10));
    }

    #[test]
    fn a_stalled_driver_gets_no_ping_until_it_moves_again() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut dog = Watchdog::new(5 * s, t0, 7);
        // The loop keeps ticking, the driver does not: no ping, ever.
        for tick in 1..=40 {
            assert!(!dog.due(t0 + tick * s / 2, 7), "pinged at tick {tick}");
        }
        // It moves: the ping comes at once.
        assert!(dog.due(t0 + 21 * s, 8));
        assert!(!dog.due(t0 + 22 * s, 9));
        assert!(dog.due(t0 + 26 * s, 10));
    }
}
