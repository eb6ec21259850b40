//! Pure per-backend health state, driven by `(now, probe result)`.
//!
//! No clock reads and no I/O here: the checker task passes the time and the
//! outcome of each probe, and gets back the transition (if any) to log and
//! publish.

use std::time::Instant;

/// What the reconciler believes about one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not probed yet (a newly learnt address).
    Unknown,
    /// The last `rise` probes succeeded.
    Healthy,
    /// The last `fall` probes failed (or the first probe failed).
    Unhealthy,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

/// How many consecutive results flip the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive successes to become healthy (k0s: 1).
    pub rise: u32,
    /// Consecutive failures to become unhealthy (k0s: 1).
    pub fall: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { rise: 1, fall: 1 }
    }
}

/// A state change produced by [`HealthState::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: Health,
    /// The state after.
    pub to: Health,
}

/// The health of one backend.
#[derive(Debug, Clone)]
pub struct HealthState {
    thresholds: Thresholds,
    health: Health,
    consecutive_successes: u32,
    consecutive_failures: u32,
    probes: u64,
    last_change: Option<Instant>,
    last_error: Option<String>,
}

impl HealthState {
    /// A new, unprobed backend.
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds: Thresholds {
                rise: thresholds.rise.max(1),
                fall: thresholds.fall.max(1),
            },
            health: Health::Unknown,
            consecutive_successes: 0,
            consecutive_failures: 0,
            probes: 0,
            last_change: None,
            last_error: None,
        }
    }

    /// Records one probe result; returns the transition it caused, if any.
    /// The first result of an unknown backend always decides its state, so
    /// that a new address is routed to only after it answered once.
    pub fn observe(&mut self, now: Instant, result: Result<(), String>) -> Option<Transition> {
        self.probes = self.probes.saturating_add(1);
        let to = match result {
            Ok(()) => {
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                self.consecutive_failures = 0;
                let risen = self.consecutive_successes >= self.thresholds.rise;
                (self.health != Health::Healthy && (risen || self.health == Health::Unknown))
                    .then_some(Health::Healthy)
            }
            Err(error) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.consecutive_successes = 0;
                self.last_error = Some(error);
                let fallen = self.consecutive_failures >= self.thresholds.fall;
                (self.health != Health::Unhealthy && (fallen || self.health == Health::Unknown))
                    .then_some(Health::Unhealthy)
            }
        };
        let to = to?;
        let transition = Transition {
            from: self.health,
            to,
        };
        self.health = to;
        self.last_change = Some(now);
        Some(transition)
    }

    /// The current state.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Probes observed so far.
    pub fn probes(&self) -> u64 {
        self.probes
    }

    /// Consecutive failures up to now.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// When the state last changed.
    pub fn last_change(&self) -> Option<Instant> {
        self.last_change
    }

    /// The most recent probe error.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const OK: Result<(), String> = Ok(());
    fn fail() -> Result<(), String> {
        Err("connection refused".into())
    }

    #[test]
    fn first_success_makes_a_new_backend_healthy() {
        let t0 = Instant::now();
        let mut s = HealthState::new(Thresholds::default());
        assert_eq!(s.health(), Health::Unknown);
        assert_eq!(
            s.observe(t0, OK),
            Some(Transition {
                from: Health::Unknown,
                to: Health::Healthy
            })
        );
        assert_eq!(s.observe(t0 + Duration::from_secs(1), OK), None);
        assert_eq!(s.last_change(), Some(t0));
    }

    #[test]
    fn one_failure_removes_and_one_success_restores() {
        let t0 = Instant::now();
        let mut s = HealthState::new(Thresholds::default());
        s.observe(t0, OK);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            s.observe(t1, fail()),
            Some(Transition {
                from: Health::Healthy,
                to: Health::Unhealthy
            })
        );
        assert_eq!(s.last_error(), Some("connection refused"));
        assert_eq!(s.observe(t1 + Duration::from_secs(1), fail()), None);
        assert_eq!(s.consecutive_failures(), 2);
        assert_eq!(
            s.observe(t1 + Duration::from_secs(2), OK),
            Some(Transition {
                from: Health::Unhealthy,
                to: Health::Healthy
            })
        );
        assert_eq!(s.probes(), 4);
        assert_eq!(s.last_change(), Some(t1 + Duration::from_secs(2)));
    }

    #[test]
    fn first_failure_marks_a_new_backend_unhealthy() {
        let t0 = Instant::now();
        let mut s = HealthState::new(Thresholds { rise: 3, fall: 3 });
        assert_eq!(
            s.observe(t0, fail()),
            Some(Transition {
                from: Health::Unknown,
                to: Health::Unhealthy
            })
        );
    }

    #[test]
    fn thresholds_delay_flapping() {
        let t0 = Instant::now();
        let mut s = HealthState::new(Thresholds { rise: 2, fall: 3 });
        s.observe(t0, OK); // unknown -> healthy on the first answer
        assert_eq!(s.observe(t0, fail()), None);
        assert_eq!(s.observe(t0, fail()), None);
        assert_eq!(s.observe(t0, OK), None); // resets the failure streak
        assert_eq!(s.observe(t0, fail()), None);
        assert_eq!(s.observe(t0, fail()), None);
        assert!(s.observe(t0, fail()).is_some());
        assert_eq!(s.health(), Health::Unhealthy);
        assert_eq!(s.observe(t0, OK), None);
        assert!(s.observe(t0, OK).is_some());
        assert_eq!(s.health(), Health::Healthy);
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let t0 = Instant::now();
        let mut s = HealthState::new(Thresholds { rise: 0, fall: 0 });
        s.observe(t0, OK);
        assert!(s.observe(t0, fail()).is_some());
        assert!(s.observe(t0, OK).is_some());
    }
}
