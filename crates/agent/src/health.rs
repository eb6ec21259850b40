//! Health-aware mastership, the feature k0s (#6527, #6866) and kube-vip
//! (#1787) users ask for most: a node whose proxy cannot serve (not
//! listening, or no healthy apiserver reachable from it) must not hold the
//! VIP.
//!
//! [`HealthTracker`] is pure: it is fed `(now, healthy)` observations and says
//! when the node's VRRP priority should change. While unhealthy the node runs
//! at a degraded priority: a Master advertises it at once
//! (`cplb_vrrp::fsm::VirtualRouter::set_priority`) and the healthy Backups,
//! which outrank it, preempt. Hysteresis keeps it from flapping: a change
//! needs the new condition to hold without interruption for `fall` (to
//! unhealthy) or `rise` (back to healthy). Every node has the same base
//! priority, so a node that recovers, or joins, never takes the VIP back.

use std::time::{Duration, Instant};

use cplb_reconciler::HealthSnapshot;
use tracing::{info, warn};

/// How health maps to priority, and how long a change must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Priority while healthy: the same on every node (k0s: 200).
    pub base: u8,
    /// Priority while unhealthy: below `base`, so healthy nodes preempt.
    pub degraded: u8,
    /// How long unhealthy must last before the priority drops.
    pub fall: Duration,
    /// How long healthy must last before the priority is restored.
    pub rise: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            base: 200,
            degraded: 100,
            fall: Duration::from_secs(3),
            rise: Duration::from_secs(10),
        }
    }
}

/// Why a [`HealthPolicy`] cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `degraded` must be in 1..base and `base` at most 254 (255 is the
    /// address owner, which never yields).
    #[error(
        "degraded priority {degraded} must be at least 1 and below the base priority {base} (at most 254)"
    )]
    Priorities {
        /// The base priority.
        base: u8,
        /// The degraded priority.
        degraded: u8,
    },
}

/// The node's health as the tracker has committed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The proxy serves: base priority.
    Healthy,
    /// The proxy cannot serve: degraded priority.
    Unhealthy,
}

/// A committed change: set the VRRP priority to `priority`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityChange {
    /// The new health.
    pub health: Health,
    /// The priority to run at now.
    pub priority: u8,
    /// What the last observation said, for the one log line.
    pub reason: String,
}

/// Turns health observations into priority changes, with hysteresis.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    policy: HealthPolicy,
    health: Health,
    /// Since when every observation has contradicted `health`, and why.
    pending: Option<(Instant, String)>,
    /// Why the node has its committed health, for `/status`.
    reason: String,
}

/// Whether this node can serve through its proxy, and why: the proxy must
/// be alive and at least one apiserver healthy from here.
pub fn node_verdict(proxy_alive: bool, snapshot: &HealthSnapshot) -> (bool, String) {
    if !proxy_alive {
        return (false, "proxy not serving".to_owned());
    }
    let known = snapshot.len();
    let healthy = snapshot
        .values()
        .filter(|b| b.health == cplb_reconciler::Health::Healthy)
        .count();
    if known == 0 {
        (false, "no apiserver known yet".to_owned())
    } else if healthy == 0 {
        (
            false,
            format!("no healthy apiserver reachable from this node (0 of {known})"),
        )
    } else {
        (
            true,
            format!("{healthy} of {known} apiservers healthy from this node"),
        )
    }
}

impl HealthTracker {
    /// A tracker that starts Unhealthy (degraded priority): a node earns its
    /// base priority by serving for `rise`, so a node that just started, or
    /// restarted, does not outrank anyone before it has proven itself.
    pub fn new(policy: HealthPolicy) -> Result<HealthTracker, PolicyError> {
        if policy.degraded == 0 || policy.degraded >= policy.base || policy.base == u8::MAX {
            return Err(PolicyError::Priorities {
                base: policy.base,
                degraded: policy.degraded,
            });
        }
        Ok(HealthTracker {
            policy,
            health: Health::Unhealthy,
            pending: None,
            reason: "starting: must be healthy for the rise time first".to_owned(),
        })
    }

    /// One tick of the agent: observes `healthy` (with its `reason`), logs a
    /// committed change once, and returns it so the caller sets the VRRP
    /// priority. While healthy the reason follows the latest observation.
    pub fn step(&mut self, now: Instant, healthy: bool, reason: &str) -> Option<PriorityChange> {
        let change = self.observe(now, healthy, reason);
        match &change {
            Some(change) => {
                match change.health {
                    Health::Healthy => {
                        info!(component = "agent", priority = change.priority, reason = %change.reason, "node healthy: base priority");
                    }
                    Health::Unhealthy => {
                        warn!(component = "agent", priority = change.priority, reason = %change.reason, "node unhealthy: degraded priority, a healthy node takes the VIP");
                    }
                }
                self.reason.clone_from(&change.reason);
            }
            None if self.health == Health::Healthy && healthy && self.reason != reason => {
                self.reason = reason.to_owned();
            }
            None => {}
        }
        change
    }

    /// Why the node has its committed health.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The committed health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// The priority to run at now.
    pub fn priority(&self) -> u8 {
        match self.health {
            Health::Healthy => self.policy.base,
            Health::Unhealthy => self.policy.degraded,
        }
    }

    fn hold(&self) -> Duration {
        match self.health {
            Health::Healthy => self.policy.fall,
            Health::Unhealthy => self.policy.rise,
        }
    }

    /// One observation: `healthy` is whether the proxy can serve now,
    /// `reason` says why (e.g. "no healthy backend"). Returns the change when
    /// the opposite of the committed health has now held long enough.
    pub fn observe(&mut self, now: Instant, healthy: bool, reason: &str) -> Option<PriorityChange> {
        let agrees = (self.health == Health::Healthy) == healthy;
        if agrees {
            // Any agreeing observation interrupts a pending change.
            self.pending = None;
            return None;
        }
        match &mut self.pending {
            Some((_, why)) => *why = reason.to_string(),
            None => self.pending = Some((now, reason.to_string())),
        }
        self.handle_timeout(now)
    }

    /// When a pending change commits if nothing contradicts it meanwhile.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.as_ref().map(|(since, _)| *since + self.hold())
    }

    /// Commits a pending change whose hold time has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<PriorityChange> {
        let due = self.poll_timeout().is_some_and(|at| at <= now);
        if !due {
            return None;
        }
        let (_, reason) = self.pending.take()?;
        self.health = match self.health {
            Health::Healthy => Health::Unhealthy,
            Health::Unhealthy => Health::Healthy,
        };
        Some(PriorityChange {
            health: self.health,
            priority: self.priority(),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HealthPolicy {
        HealthPolicy::default()
    }

    /// A tracker that has become healthy at `t0`.
    fn healthy(t0: Instant) -> HealthTracker {
        let mut tracker = HealthTracker::new(policy()).unwrap();
        assert!(
            tracker
                .observe(t0 - policy().rise, true, "serving")
                .is_none()
        );
        let change = tracker.observe(t0, true, "serving").unwrap();
        assert_eq!((change.health, change.priority), (Health::Healthy, 200));
        tracker
    }

    #[test]
    fn a_new_node_starts_degraded_and_earns_its_base_priority_after_rise() {
        let t0 = Instant::now();
        let mut tracker = HealthTracker::new(policy()).unwrap();
        assert_eq!(
            (tracker.health(), tracker.priority()),
            (Health::Unhealthy, 100)
        );
        assert_eq!(tracker.observe(t0, true, "serving"), None);
        assert_eq!(tracker.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(
            tracker.observe(t0 + Duration::from_secs(9), true, "serving"),
            None
        );
        let change = tracker
            .handle_timeout(t0 + Duration::from_secs(10))
            .unwrap();
        assert_eq!(change.priority, 200);
        assert_eq!(tracker.poll_timeout(), None);
    }

    #[test]
    fn sustained_failure_drops_the_priority_after_exactly_fall() {
        let t0 = Instant::now();
        let mut tracker = healthy(t0);
        let s = Duration::from_secs;
        assert_eq!(
            tracker.observe(t0 + s(1), false, "proxy not listening"),
            None
        );
        assert_eq!(
            tracker.observe(t0 + s(3), false, "no healthy backend"),
            None
        );
        let change = tracker
            .observe(t0 + s(4), false, "no healthy backend")
            .unwrap();
        assert_eq!(
            change,
            PriorityChange {
                health: Health::Unhealthy,
                priority: 100,
                reason: "no healthy backend".into()
            }
        );
    }

    #[test]
    fn flapping_health_never_changes_the_priority() {
        let t0 = Instant::now();
        let mut tracker = healthy(t0);
        // Failing for 2 s out of every 3, for a minute: each success
        // interrupts the 3 s fall window.
        for second in 1..=60u64 {
            let ok = second % 3 == 0;
            let change = tracker.observe(t0 + Duration::from_secs(second), ok, "flapping");
            assert_eq!(change, None, "second {second}");
        }
        assert_eq!(tracker.priority(), 200);
    }

    #[test]
    fn recovery_needs_rise_without_interruption() {
        let t0 = Instant::now();
        let mut tracker = healthy(t0);
        let s = Duration::from_secs;
        tracker.observe(t0, false, "down");
        assert!(tracker.handle_timeout(t0 + s(3)).is_some());
        tracker.observe(t0 + s(4), true, "up");
        tracker.observe(t0 + s(8), false, "down again"); // interrupts
        tracker.observe(t0 + s(9), true, "up");
        assert_eq!(tracker.handle_timeout(t0 + s(18)), None);
        assert_eq!(
            tracker.handle_timeout(t0 + s(19)).map(|c| c.priority),
            Some(200)
        );
    }

    #[test]
    fn policies_that_cannot_work_are_refused() {
        for (base, degraded) in [(200, 200), (200, 0), (100, 150), (255, 100)] {
            let policy = HealthPolicy {
                base,
                degraded,
                ..HealthPolicy::default()
            };
            assert_eq!(
                HealthTracker::new(policy).unwrap_err(),
                PolicyError::Priorities { base, degraded }
            );
        }
    }
}
