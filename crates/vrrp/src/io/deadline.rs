//! The driver's one timer: a `timerfd(2)` armed with the earliest deadline
//! of every router, the heartbeat and the pacing of announcements.
//!
//! Not a tokio timer (issue 15): tokio's timer wheel keeps a deadline more
//! than 64 ms away in a coarse slot and wakes the thread once when that
//! slot expires and again at the deadline, and registering a timer after
//! one fired writes the runtime's eventfd and polls it once more. An idle
//! Backup hearing one advert a second woke four or five times a second for
//! that; with a timerfd it wakes once per advert, like keepalived.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

use super::socket::SocketError;

/// A one-shot timer on `CLOCK_MONOTONIC` (the clock of [`Instant`]).
#[derive(Debug)]
pub(crate) struct Deadline {
    fd: AsyncFd<Timer>,
    armed: Option<Instant>,
}

impl Deadline {
    /// A disarmed timer, registered with the current tokio runtime.
    pub(crate) fn new() -> Result<Deadline, SocketError> {
        let setup = |e: std::io::Error| SocketError::Setup {
            what: "create the driver's timerfd".to_owned(),
            source: e,
        };
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(|e| setup(e.into()))?;
        Ok(Deadline {
            fd: register(timer).map_err(setup)?,
            armed: None,
        })
    }

    /// Arms the timer for `at` (`None`: disarmed); a system call only when
    /// the deadline changed.
    pub(crate) fn arm(&mut self, at: Option<Instant>) -> std::io::Result<()> {
        if at == self.armed {
            return Ok(());
        }
        let timer = &self.fd.get_ref().0;
        match at {
            Some(at) => {
                // Relative, from a `now` read just before: microseconds of
                // error at most. A zero value would disarm it.
                let after = at
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_nanos(1));
                timer.set(
                    Expiration::OneShot(TimeSpec::from_duration(after)),
                    TimerSetTimeFlags::empty(),
                )?;
            }
            None => timer.unset()?,
        }
        self.armed = at;
        Ok(())
    }

    /// Forgets what was armed, so that the next [`arm`](Self::arm) sets the
    /// timer whatever the deadline: called once it fired (a one-shot timer
    /// that fired is disarmed; were the same deadline asked for again, it
    /// must fire again at once, not never).
    pub(crate) fn fired(&mut self) {
        self.armed = None;
    }

    /// Completes once the armed deadline has passed (never while
    /// disarmed). Re-arming resets a pending expiry (the kernel clears the
    /// count), so a stale readiness is read as `EAGAIN` and waited out.
    pub(crate) async fn expired(&self) -> std::io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|fd| fd.get_ref().0.wait().map_err(std::io::Error::from)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// What tokio's `AsyncFd` takes: a `TimerFd` with `AsRawFd`.
#[derive(Debug)]
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Registers `timer` with the current tokio runtime's reactor.
#[allow(unsafe_code)]
fn register(timer: TimerFd) -> std::io::Result<AsyncFd<Timer>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(std::io::Error::other("not inside a tokio runtime"));
    }
    // SAFETY: `TimerFd` owns its file descriptor (an `OwnedFd`): it stays
    // open and the same for as long as the `TimerFd` lives, which is as long
    // as the `AsyncFd` that takes ownership of it here.
    unsafe { AsyncFd::register(Timer(timer)) }.map_err(|e| e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Bounded: a timer that never fires fails the test instead of hanging.
    async fn fires(deadline: &Deadline) {
        tokio::time::timeout(Duration::from_secs(10), deadline.expired())
            .await
            .expect("the timerfd did not fire")
            .unwrap();
    }

    #[test]
    fn fires_for_a_deadline_again_once_told_it_fired() {
        runtime().block_on(async {
            let mut deadline = Deadline::new().unwrap();
            let at = Instant::now() + Duration::from_millis(5);
            deadline.arm(Some(at)).unwrap();
            fires(&deadline).await;
            // The same (now past) deadline again: without `fired` the arm
            // would be skipped and the one-shot timer never fire again.
            deadline.fired();
            deadline.arm(Some(at)).unwrap();
            fires(&deadline).await;
        });
    }

    #[test]
    fn a_moved_deadline_replaces_the_pending_one() {
        runtime().block_on(async {
            let mut deadline = Deadline::new().unwrap();
            // Far away, then moved close: it fires for the close one.
            deadline
                .arm(Some(Instant::now() + Duration::from_secs(3600)))
                .unwrap();
            deadline
                .arm(Some(Instant::now() + Duration::from_millis(5)))
                .unwrap();
            fires(&deadline).await;
            // Disarmed: nothing fires.
            deadline.fired();
            deadline.arm(None).unwrap();
            let waited = tokio::time::timeout(Duration::from_millis(50), deadline.expired()).await;
            assert!(waited.is_err(), "a disarmed timer fired");
        });
    }
}
