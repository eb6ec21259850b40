//! Coarse connect deadlines without a timer per connection.
//!
//! A tokio timer per connect costs a timer-wheel lock and, whenever no other
//! timer is pending (typical: loopback connects finish in microseconds), a
//! wake-up of the I/O driver (an eventfd write plus an extra `epoll_wait`).
//! Instead, one ticker task runs while connects are in flight and wakes
//! them every `granularity`; each checks its own deadline. Deadlines are
//! thus honoured to within one tick (a tenth of the timeout).

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::now;

#[derive(Debug)]
pub(crate) struct ConnectClock {
    in_flight: AtomicUsize,
    tick: Notify,
    start: Notify,
    granularity: Duration,
}

/// Decrements the in-flight count when a connect ends (or is dropped).
struct InFlight<'a>(&'a ConnectClock);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectClock {
    /// A clock for deadlines no shorter than `shortest` (ticks every tenth
    /// of it, within 5-250 ms).
    pub(crate) fn new(shortest: Duration) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            tick: Notify::new(),
            start: Notify::new(),
            granularity: (shortest / 10)
                .clamp(Duration::from_millis(5), Duration::from_millis(250)),
        }
    }

    /// Runs `fut`, failing with `TimedOut` at the first tick after `limit`.
    /// Needs [`ConnectClock::run`] to be polled somewhere.
    pub(crate) async fn timeout<T>(
        &self,
        limit: Duration,
        fut: impl Future<Output = io::Result<T>>,
    ) -> io::Result<T> {
        let deadline = now() + limit;
        if self.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            self.start.notify_one();
        }
        let _in_flight = InFlight(self);
        let mut fut = pin!(fut);
        // Bounded: each pass either finishes or waits for a tick, and the
        // ticks stop it once the deadline has passed.
        loop {
            let tick = self.tick.notified();
            tokio::select! {
                biased;
                result = &mut fut => return result,
                () = tick => {
                    if now() >= deadline {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
            }
        }
    }

    /// The ticker: sleeps while no connect is in flight. Never returns; the
    /// caller drops it at shutdown.
    pub(crate) async fn run(&self) {
        loop {
            if self.in_flight.load(Ordering::Relaxed) == 0 {
                // notify_one keeps a permit, so a connect starting between
                // the load and this await is not missed.
                self.start.notified().await;
                continue;
            }
            tokio::time::sleep(self.granularity).await;
            self.tick.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pending_connect_times_out_after_limit() {
        let clock = ConnectClock::new(Duration::from_millis(100));
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            r = clock.timeout(Duration::from_millis(100), std::future::pending::<io::Result<()>>()) => r,
            () = clock.run() => unreachable!(),
            () = tokio::time::sleep(Duration::from_secs(20)) => panic!("no timeout"),
        };
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(clock.in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn ready_connect_passes_through() {
        let clock = ConnectClock::new(Duration::from_secs(3));
        let result = clock.timeout(Duration::from_secs(3), async { Ok(7) }).await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(clock.in_flight.load(Ordering::Relaxed), 0);
    }
}
