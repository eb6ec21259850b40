//! Choosing and publishing the backend set.
//!
//! [`decide`] is pure. [`Publisher`] wraps a `tokio::sync::watch` channel:
//! the Rust form of k0s's size-1 coalescing channel. Sending never blocks,
//! holds no lock across an await, and receivers always see the latest set.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use tokio::sync::watch;

use crate::health::Health;

/// The set of backends the proxy should balance over (sorted, deduplicated).
pub type Backends = BTreeSet<SocketAddr>;

/// What to do with the proxy's backends after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Publish exactly the healthy backends.
    Healthy(Backends),
    /// None is healthy but some are known: publish all known (fail-open, as k0s).
    FailOpen(Backends),
    /// No backend is healthy yet and some are still unprobed: wait for them.
    Pending,
    /// No backend is known: keep what the proxy has.
    NoneKnown,
}

/// Decides the published set from the known backends and their health.
pub fn decide(known: &BTreeMap<IpAddr, Health>, port: u16) -> Decision {
    if known.is_empty() {
        return Decision::NoneKnown;
    }
    let healthy: Backends = known
        .iter()
        .filter(|(_, health)| **health == Health::Healthy)
        .map(|(ip, _)| SocketAddr::new(*ip, port))
        .collect();
    if !healthy.is_empty() {
        return Decision::Healthy(healthy);
    }
    if known.values().any(|health| *health == Health::Unknown) {
        return Decision::Pending;
    }
    Decision::FailOpen(known.keys().map(|ip| SocketAddr::new(*ip, port)).collect())
}

/// The sending side of the backend channel.
#[derive(Debug)]
pub struct Publisher {
    tx: watch::Sender<Backends>,
}

impl Publisher {
    /// A publisher whose receivers start with an empty set.
    pub fn new() -> Self {
        Self {
            tx: watch::Sender::new(Backends::new()),
        }
    }

    /// A new receiver; [`watch::Receiver::changed`] fires on every published change.
    pub fn subscribe(&self) -> watch::Receiver<Backends> {
        self.tx.subscribe()
    }

    /// Replaces the set if it differs; returns whether it changed. Never blocks.
    pub fn publish(&self, backends: Backends) -> bool {
        self.tx.send_if_modified(|current| {
            if *current == backends {
                false
            } else {
                *current = backends;
                true
            }
        })
    }
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(list: &[&str]) -> Backends {
        list.iter().map(|s| SocketAddr::new(ip(s), 6443)).collect()
    }

    #[test]
    fn healthy_only() {
        let known = BTreeMap::from([
            (ip("192.0.2.1"), Health::Healthy),
            (ip("192.0.2.2"), Health::Unhealthy),
            (ip("2001:db8::1"), Health::Healthy),
            (ip("192.0.2.3"), Health::Unknown),
        ]);
        assert_eq!(
            decide(&known, 6443),
            Decision::Healthy(set(&["192.0.2.1", "2001:db8::1"]))
        );
    }

    #[test]
    fn all_unhealthy_fails_open() {
        let known = BTreeMap::from([
            (ip("192.0.2.1"), Health::Unhealthy),
            (ip("192.0.2.2"), Health::Unhealthy),
        ]);
        assert_eq!(
            decide(&known, 6443),
            Decision::FailOpen(set(&["192.0.2.1", "192.0.2.2"]))
        );
    }

    #[test]
    fn unprobed_backends_are_waited_for() {
        let known = BTreeMap::from([
            (ip("192.0.2.1"), Health::Unhealthy),
            (ip("192.0.2.2"), Health::Unknown),
        ]);
        assert_eq!(decide(&known, 6443), Decision::Pending);
    }

    #[test]
    fn nothing_known_keeps_the_proxy_as_is() {
        assert_eq!(decide(&BTreeMap::new(), 6443), Decision::NoneKnown);
    }

    #[test]
    fn publisher_coalesces_and_skips_no_ops() {
        let publisher = Publisher::new();
        let mut rx = publisher.subscribe();
        assert!(publisher.publish(set(&["192.0.2.1"])));
        assert!(publisher.publish(set(&["192.0.2.1", "192.0.2.2"])));
        assert!(!publisher.publish(set(&["192.0.2.1", "192.0.2.2"])));
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), set(&["192.0.2.1", "192.0.2.2"]));
        assert!(!rx.has_changed().unwrap());
    }
}
