//! Health-aware mastership on a simulated LAN of three k0s nodes: the
//! tracker's priority changes drive real `VirtualRouter`s, as the agent
//! will. The VIP leaves a node whose proxy cannot serve and never comes back
//! to it by itself; a flapping node never moves it.

use std::time::Duration;

use cplb::health::{HealthPolicy, HealthTracker};
use cplb_vrrp::fsm::{Config, State};
use cplb_vrrp::sim::{Lan, NodeId};
use cplb_vrrp::wire::{Auth, Version};

struct Cluster {
    lan: Lan,
    trackers: Vec<HealthTracker>,
}

impl Cluster {
    /// Three nodes at base priority, healthy and settled.
    fn new() -> Cluster {
        let mut lan = Lan::new(Duration::from_millis(1));
        let mut trackers = Vec::new();
        for host in 10..13u8 {
            let mut config = Config::new(
                Version::V2,
                51,
                format!("192.0.2.{host}").parse().unwrap(),
                vec!["192.0.2.100".parse().unwrap()],
            );
            let tracker = HealthTracker::new(HealthPolicy::default()).unwrap();
            config.priority = tracker.priority();
            config.auth = Auth::pass(b"k0s");
            let node = lan.add(config).unwrap();
            lan.start(node);
            trackers.push(tracker);
        }
        let mut cluster = Cluster { lan, trackers };
        cluster.run(20, |_, _| true);
        assert!(
            cluster
                .lan
                .nodes()
                .iter()
                .all(|n| n.router.priority() == 200)
        );
        cluster
    }

    /// Runs `seconds` seconds, observing each node's health every second.
    fn run(&mut self, seconds: u32, healthy: impl Fn(NodeId, u32) -> bool) {
        for second in 0..seconds {
            self.lan.run_for(Duration::from_secs(1));
            let now = self.lan.now();
            for node in 0..self.trackers.len() {
                // The agent's own glue: one step per tick.
                if let Some(change) = self.trackers[node].step(now, healthy(node, second), "test") {
                    self.lan.set_priority(node, change.priority);
                }
            }
        }
    }

    fn master(&self) -> NodeId {
        let masters = self.lan.masters();
        assert_eq!(masters.len(), 1, "{masters:?}");
        masters[0]
    }
}

#[test]
fn an_unhealthy_master_loses_the_vip_and_does_not_take_it_back() {
    let mut cluster = Cluster::new();
    let sick = cluster.master();
    // Its proxy fails for 30 s: the VIP moves to a healthy node.
    cluster.run(30, |node, _| node != sick);
    let healthy_master = cluster.master();
    assert_ne!(healthy_master, sick);
    assert_eq!(cluster.lan.node(sick).router.priority(), 100);
    assert!(!cluster.lan.node(sick).holds_vips);
    // It recovers and is back at base priority; the VIP stays where it is.
    let recovered_at = cluster.lan.transitions().len();
    cluster.run(60, |_, _| true);
    assert_eq!(cluster.lan.node(sick).router.priority(), 200);
    assert_eq!(cluster.master(), healthy_master);
    assert!(
        cluster.lan.transitions()[recovered_at..]
            .iter()
            .all(|t| t.to != State::Master),
        "no transition to Master after recovery"
    );
}

#[test]
fn a_flapping_master_keeps_the_vip() {
    let mut cluster = Cluster::new();
    let master = cluster.master();
    let before = cluster.lan.transitions().len();
    // Fails 2 s out of every 3 for a minute: hysteresis absorbs it.
    cluster.run(60, |node, second| node != master || second % 3 == 2);
    assert_eq!(cluster.master(), master);
    assert_eq!(cluster.lan.transitions().len(), before);
}

#[test]
fn when_every_node_is_unhealthy_one_still_holds_the_vip() {
    // Equal degraded priorities: nobody preempts, the VIP stays somewhere.
    let mut cluster = Cluster::new();
    let master = cluster.master();
    cluster.run(30, |_, _| false);
    assert!(
        cluster
            .lan
            .nodes()
            .iter()
            .all(|n| n.router.priority() == 100)
    );
    assert_eq!(cluster.master(), master);
}
