//! Three `vrrpd` processes (k0s's settings: VRRPv2, priority 200, advert 1 s,
//! PASS auth) on a LAN of network namespaces, faults dealt to the holder the
//! way an operator or the kernel would: link down, SIGKILL, SIGSTOP, SIGTERM.
#![cfg(feature = "io")]

mod cluster;

use std::net::IpAddr;

use cluster::{Cluster, Spec, WAIT};
use cplb_e2e::wait_until;
use nix::sys::signal::Signal;

const VIP: &str = "192.0.2.100";

fn vip() -> IpAddr {
    VIP.parse().unwrap()
}

fn k0s_cluster() -> (Cluster, Spec) {
    let mut cluster = Cluster::new(3);
    let spec = Spec::k0s(&format!("{VIP}/24"));
    for i in 0..3 {
        cluster.start_ours(i, &spec);
    }
    (cluster, spec)
}

#[test]
fn exactly_one_holder_and_link_down_moves_the_vip() {
    let (cluster, _) = k0s_cluster();
    let holder = cluster.wait_one_holder(vip());
    cluster.assert_stays(vip(), holder, 2);
    cluster
        .lab
        .set_host_link(&cluster.nodes[holder].name, false)
        .unwrap();
    let next = cluster.wait_new_holder(vip(), holder);
    assert!(
        !cluster.holds(holder, vip()),
        "interface down releases the VIP"
    );
    cluster
        .lab
        .set_host_link(&cluster.nodes[holder].name, true)
        .unwrap();
    // Equal priority: the old holder comes back as Backup.
    cluster.assert_stays(vip(), next, 4);
}

#[test]
fn sigkill_of_the_holder_moves_the_vip_and_its_lease_expires() {
    let (mut cluster, _) = k0s_cluster();
    let holder = cluster.wait_one_holder(vip());
    cluster.kill(holder);
    // The kernel still carries the dead holder's VIP for a moment; another
    // node takes it, and the lease removes the stale copy by itself.
    wait_until("a new holder", WAIT, || {
        cluster.holders(vip()).iter().any(|&h| h != holder)
    })
    .unwrap();
    wait_until("the killed node's VIP to expire", WAIT, || {
        !cluster.holds(holder, vip())
    })
    .unwrap();
    let next = cluster.wait_one_holder(vip());
    assert_ne!(next, holder);
}

#[test]
fn sigstop_of_the_holder_moves_the_vip_and_sigcont_does_not_split() {
    let (cluster, _) = k0s_cluster();
    let holder = cluster.wait_one_holder(vip());
    cluster.signal(holder, Signal::SIGSTOP);
    wait_until("the frozen node's VIP to expire", WAIT, || {
        !cluster.holds(holder, vip())
    })
    .unwrap();
    let next = cluster.wait_new_holder(vip(), holder);
    let changes = |c: &Cluster| c.logs().matches("state changed").count();
    let before = changes(&cluster);
    cluster.signal(holder, Signal::SIGCONT);
    // The thawed node still believes it is Master and advertises at once;
    // one of the two Masters steps down (tie-break), and logs it.
    wait_until("a master to step down after SIGCONT", WAIT, || {
        changes(&cluster) > before
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let settled = cluster.wait_one_holder(vip());
    cluster.assert_stays(vip(), settled, 2);
    assert!([holder, next].contains(&settled));
}

#[test]
fn sigterm_hands_over_at_once_and_a_returning_node_does_not_take_it_back() {
    let (mut cluster, spec) = k0s_cluster();
    let holder = cluster.wait_one_holder(vip());
    cluster.stop(holder);
    assert!(!cluster.holds(holder, vip()), "a stopped node keeps no VIP");
    let next = cluster.wait_new_holder(vip(), holder);
    cluster.start_ours(holder, &spec);
    cluster.assert_stays(vip(), next, 5);
}

#[test]
fn a_higher_priority_node_preempts() {
    let (mut cluster, _) = k0s_cluster();
    let holder = cluster.wait_one_holder(vip());
    let other = (holder + 1) % 3;
    cluster.stop(other);
    let mut high = Spec::k0s(&format!("{VIP}/24"));
    high.priority = 250;
    cluster.start_ours(other, &high);
    wait_until("the higher priority node to take the VIP", WAIT, || {
        cluster.holders(vip()) == vec![other]
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
}
