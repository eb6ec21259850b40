//! Pure backend selection: the sorted backend set, round-robin order and
//! passive-health skip windows.
//!
//! Nothing here touches sockets or reads the clock: callers pass `now` in, so
//! the tests below are deterministic and instant.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A non-empty, sorted, de-duplicated set of backend addresses.
///
/// Sorting gives a stable round-robin order whatever order the caller (the
/// reconciler) produced; k0s iterates a Go map and gets a random order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSet {
    addrs: Arc<[SocketAddr]>,
}

impl BackendSet {
    /// Builds a set from any list; returns `None` when the list is empty,
    /// because an empty set would leave every client without a backend.
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Option<Self> {
        let mut addrs: Vec<SocketAddr> = addrs.into_iter().collect();
        addrs.sort_unstable();
        addrs.dedup();
        if addrs.is_empty() {
            return None;
        }
        Some(Self {
            addrs: addrs.into(),
        })
    }

    /// The addresses in round-robin order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Number of backends (never zero).
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Always false: the set is non-empty by construction.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Whether `addr` is a member.
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.addrs.binary_search(addr).is_ok()
    }

    /// Members of `self` that are not in `other`.
    pub fn removed_in(&self, other: &BackendSet) -> Vec<SocketAddr> {
        self.addrs
            .iter()
            .filter(|a| !other.contains(a))
            .copied()
            .collect()
    }

    /// The order in which connection number `ticket` tries backends.
    ///
    /// Starts at `ticket % len` (plain per-connection round-robin) and walks
    /// the ring. Backends inside a passive-health skip window go to the end
    /// instead of being dropped, so a client is still served when every
    /// backend has failed recently (fail-open, like the k0s reconciler).
    pub fn candidates(
        &self,
        ticket: usize,
        now: Instant,
        health: &PassiveHealth,
    ) -> Vec<SocketAddr> {
        let len = self.addrs.len();
        let start = ticket % len.max(1);
        let ring = self.addrs.iter().cycle().skip(start).take(len).copied();
        let (healthy, skipped): (Vec<SocketAddr>, Vec<SocketAddr>) =
            ring.partition(|addr| !health.is_skipped(addr, now));
        let mut order = healthy;
        order.extend(skipped);
        order
    }
}

/// Passive health: a backend that failed to connect is skipped by new
/// connections until its window ends.
#[derive(Debug, Clone)]
pub struct PassiveHealth {
    window: Duration,
    skip_until: HashMap<SocketAddr, Instant>,
}

impl PassiveHealth {
    /// A tracker whose skip window after a failure is `window`
    /// (`Duration::ZERO` disables skipping).
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            skip_until: HashMap::new(),
        }
    }

    /// Records a failed connect at `now`. Returns true when the backend was
    /// not already being skipped (a state change worth logging).
    pub fn record_failure(&mut self, addr: SocketAddr, now: Instant) -> bool {
        self.skip(addr, now, self.window)
    }

    /// Skips `addr` from `now` for `window` (or longer, if an earlier
    /// failure or suspicion already reaches further). Returns true when the
    /// backend was not already being skipped.
    pub fn skip(&mut self, addr: SocketAddr, now: Instant, window: Duration) -> bool {
        let was_skipped = self.is_skipped(&addr, now);
        if let Some(until) = now.checked_add(window) {
            let entry = self.skip_until.entry(addr).or_insert(until);
            *entry = (*entry).max(until);
        }
        !was_skipped && !window.is_zero()
    }

    /// Records a successful connect. Returns true when the backend was in a
    /// skip window before (it recovered).
    pub fn record_success(&mut self, addr: &SocketAddr) -> bool {
        self.skip_until.remove(addr).is_some()
    }

    /// Whether new connections should avoid `addr` at `now`.
    pub fn is_skipped(&self, addr: &SocketAddr, now: Instant) -> bool {
        self.skip_until.get(addr).is_some_and(|until| now < *until)
    }

    /// Forgets backends that are no longer in `set` and windows that ended.
    pub fn retain(&mut self, set: &BackendSet, now: Instant) {
        self.skip_until
            .retain(|addr, until| set.contains(addr) && now < *until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn three() -> BackendSet {
        BackendSet::new([
            addr("10.0.0.3:6443"),
            addr("10.0.0.1:6443"),
            addr("10.0.0.2:6443"),
            addr("10.0.0.1:6443"),
        ])
        .unwrap()
    }

    #[test]
    fn empty_list_is_rejected() {
        assert_eq!(BackendSet::new([]), None);
    }

    #[test]
    fn set_is_sorted_and_deduplicated() {
        let set = three();
        assert_eq!(
            set.addrs(),
            &[
                addr("10.0.0.1:6443"),
                addr("10.0.0.2:6443"),
                addr("10.0.0.3:6443")
            ]
        );
    }

    #[test]
    fn round_robin_is_even() {
        let set = three();
        let health = PassiveHealth::new(Duration::from_secs(5));
        let now = Instant::now();
        let mut counts = HashMap::new();
        for ticket in 0..300 {
            *counts
                .entry(set.candidates(ticket, now, &health)[0])
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&c| c == 100), "{counts:?}");
    }

    #[test]
    fn candidates_walk_the_ring_from_the_ticket() {
        let set = three();
        let health = PassiveHealth::new(Duration::from_secs(5));
        let order = set.candidates(4, Instant::now(), &health);
        assert_eq!(
            order,
            vec![
                addr("10.0.0.2:6443"),
                addr("10.0.0.3:6443"),
                addr("10.0.0.1:6443")
            ]
        );
    }

    #[test]
    fn failed_backend_is_skipped_until_window_ends() {
        let set = three();
        let t0 = Instant::now();
        let mut health = PassiveHealth::new(Duration::from_secs(5));
        let bad = addr("10.0.0.1:6443");
        assert!(health.record_failure(bad, t0));
        // A second failure inside the window is not a new state change.
        assert!(!health.record_failure(bad, t0 + Duration::from_secs(1)));

        let during = t0 + Duration::from_secs(2);
        for ticket in 0..30 {
            let order = set.candidates(ticket, during, &health);
            assert_ne!(order[0], bad);
            assert_eq!(order.last(), Some(&bad), "still tried last (fail-open)");
            assert_eq!(order.len(), 3);
        }

        // The window restarted at the second failure (t0+1s), so it ends at t0+6s.
        assert!(health.is_skipped(&bad, t0 + Duration::from_millis(5_999)));
        assert!(!health.is_skipped(&bad, t0 + Duration::from_secs(6)));
        assert_eq!(
            set.candidates(0, t0 + Duration::from_secs(6), &health)[0],
            bad
        );
    }

    #[test]
    fn all_backends_skipped_still_gives_every_backend() {
        let set = three();
        let t0 = Instant::now();
        let mut health = PassiveHealth::new(Duration::from_secs(5));
        for a in set.addrs() {
            health.record_failure(*a, t0);
        }
        let order = set.candidates(1, t0, &health);
        assert_eq!(
            order,
            set.candidates(1, t0, &PassiveHealth::new(Duration::ZERO))
        );
    }

    #[test]
    fn a_skip_never_shortens_a_longer_one() {
        let t0 = Instant::now();
        let mut health = PassiveHealth::new(Duration::from_secs(5));
        let a = addr("192.0.2.1:6443");
        assert!(health.skip(a, t0, Duration::from_secs(30)));
        // A connect failure's 5 s window inside the 30 s suspicion.
        assert!(!health.record_failure(a, t0 + Duration::from_secs(1)));
        assert!(health.is_skipped(&a, t0 + Duration::from_secs(29)));
        assert!(!health.is_skipped(&a, t0 + Duration::from_secs(30)));
    }

    #[test]
    fn success_clears_the_window() {
        let t0 = Instant::now();
        let mut health = PassiveHealth::new(Duration::from_secs(5));
        let a = addr("[2001:db8::1]:6443");
        health.record_failure(a, t0);
        assert!(health.record_success(&a));
        assert!(!health.is_skipped(&a, t0));
        assert!(!health.record_success(&a));
    }

    #[test]
    fn zero_window_disables_skipping() {
        let t0 = Instant::now();
        let mut health = PassiveHealth::new(Duration::ZERO);
        let a = addr("192.0.2.1:6443");
        assert!(!health.record_failure(a, t0));
        assert!(!health.is_skipped(&a, t0));
    }

    #[test]
    fn removed_in_and_retain() {
        let old = three();
        let new = BackendSet::new([addr("10.0.0.2:6443"), addr("10.0.0.9:6443")]).unwrap();
        assert_eq!(
            old.removed_in(&new),
            vec![addr("10.0.0.1:6443"), addr("10.0.0.3:6443")]
        );
        let t0 = Instant::now();
        let mut health = PassiveHealth::new(Duration::from_secs(5));
        health.record_failure(addr("10.0.0.1:6443"), t0);
        health.record_failure(addr("10.0.0.2:6443"), t0);
        health.retain(&new, t0);
        assert!(!health.is_skipped(&addr("10.0.0.1:6443"), t0));
        assert!(health.is_skipped(&addr("10.0.0.2:6443"), t0));
    }
}
