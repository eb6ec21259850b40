//! Mixed clusters: our `vrrpd` beside keepalived 2.2 configured exactly as
//! k0s renders it, as during a rolling upgrade from k0s's keepalived. After
//! each step exactly one node holds the VIP, failover works in both
//! directions, and keepalived logs no complaint about our packets.
#![cfg(feature = "io")]

mod cluster;

use std::net::IpAddr;

use cluster::{Cluster, Spec};

/// Ours or keepalived, per node.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Ours,
    Keepalived,
}

fn start(cluster: &mut Cluster, i: usize, kind: Kind, spec: &Spec) {
    match kind {
        Kind::Ours => cluster.start_ours(i, spec),
        Kind::Keepalived => cluster.start_keepalived(i, spec),
    }
}

fn assert_no_complaints(cluster: &Cluster) {
    let complaints = cluster.keepalived_complaints();
    assert!(
        complaints.is_empty(),
        "keepalived complained: {complaints:#?}\n{}",
        cluster.logs()
    );
}

/// Exactly one holder; SIGTERM it and another takes over.
fn mixed_three(kinds: [Kind; 3], spec: &Spec, vip: IpAddr) {
    let mut cluster = Cluster::new(3);
    for (i, kind) in kinds.into_iter().enumerate() {
        start(&mut cluster, i, kind, spec);
    }
    let holder = cluster.wait_one_holder(vip);
    cluster.assert_stays(vip, holder, 2);
    cluster.stop(holder);
    let next = cluster.wait_new_holder(vip, holder);
    cluster.assert_stays(vip, next, 2);
    assert_no_complaints(&cluster);
}

/// Two nodes, one of each: the VIP moves ours → keepalived and back.
fn back_and_forth(spec: &Spec, vip: IpAddr) {
    let kinds = [Kind::Ours, Kind::Keepalived];
    let mut cluster = Cluster::new(2);
    for (i, kind) in kinds.into_iter().enumerate() {
        start(&mut cluster, i, kind, spec);
    }
    let first = cluster.wait_one_holder(vip);
    for _ in 0..2 {
        let holder = cluster.wait_one_holder(vip);
        cluster.stop(holder);
        let next = cluster.wait_new_holder(vip, holder);
        start(&mut cluster, holder, kinds[holder], spec);
        // The returning node does not take the VIP back (equal priority).
        cluster.assert_stays(vip, next, 3);
    }
    assert_eq!(
        cluster.wait_one_holder(vip),
        first,
        "two handovers bring the VIP home"
    );
    assert_no_complaints(&cluster);
}

fn v4() -> IpAddr {
    "192.0.2.100".parse().unwrap()
}

#[test]
fn one_of_ours_with_two_keepalived_multicast() {
    mixed_three(
        [Kind::Ours, Kind::Keepalived, Kind::Keepalived],
        &Spec::k0s("192.0.2.100/24"),
        v4(),
    );
}

#[test]
fn two_of_ours_with_one_keepalived_multicast() {
    mixed_three(
        [Kind::Keepalived, Kind::Ours, Kind::Ours],
        &Spec::k0s("192.0.2.100/24"),
        v4(),
    );
}

#[test]
fn back_and_forth_with_keepalived_multicast() {
    back_and_forth(&Spec::k0s("192.0.2.100/24"), v4());
}

#[test]
fn back_and_forth_with_keepalived_unicast() {
    let mut spec = Spec::k0s("192.0.2.100/24");
    spec.unicast = true;
    back_and_forth(&spec, v4());
}

#[test]
fn mixed_unicast_three_nodes() {
    let mut spec = Spec::k0s("192.0.2.100/24");
    spec.unicast = true;
    mixed_three([Kind::Ours, Kind::Keepalived, Kind::Ours], &spec, v4());
}

#[test]
fn vrrpv3_ipv4_with_keepalived() {
    let mut spec = Spec::k0s("192.0.2.100/24");
    spec.version = 3;
    spec.auth_pass = None;
    back_and_forth(&spec, v4());
}

#[test]
fn vrrpv3_ipv6_with_keepalived() {
    let mut spec = Spec::k0s("2001:db8::100/64");
    spec.version = 3;
    spec.auth_pass = None;
    spec.ipv6 = true;
    back_and_forth(&spec, "2001:db8::100".parse().unwrap());
}

/// The control for every "no complaints" check above: with a wrong password
/// on our side, keepalived does complain (and drops our adverts).
#[test]
fn keepalived_complains_about_a_wrong_password() {
    let mut cluster = Cluster::new(2);
    let spec = Spec::k0s("192.0.2.100/24");
    cluster.start_keepalived(0, &spec);
    let mut wrong = spec.clone();
    wrong.auth_pass = Some("wrong".to_string());
    cluster.start_ours(1, &wrong);
    cplb_e2e::wait_until("keepalived to complain", cluster::WAIT, || {
        !cluster.keepalived_complaints().is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
}

/// Sub-second adverts (issue 15): VRRPv3 at 10 centiseconds on both sides,
/// keepalived with `advert_int 0.1` (2.4.3, k0s's version, where
/// `scripts/setup` built it). keepalived checks the interval of every advert
/// against its own and logs a mismatch, so "no complaints" also says our
/// adverts carry 10 cs.
#[test]
fn vrrpv3_at_10_centiseconds_with_keepalived() {
    let mut spec = Spec::k0s("192.0.2.100/24");
    spec.version = 3;
    spec.auth_pass = None;
    spec.advert_interval = 0.1;
    back_and_forth(&spec, v4());
    mixed_three([Kind::Ours, Kind::Keepalived, Kind::Ours], &spec, v4());
}

/// The control for the test above: adverts at 20 cs against keepalived's
/// `advert_int 0.1` make keepalived log the mismatch.
#[test]
fn keepalived_complains_about_another_advert_interval() {
    let mut cluster = Cluster::new(2);
    let mut spec = Spec::k0s("192.0.2.100/24");
    spec.version = 3;
    spec.auth_pass = None;
    spec.advert_interval = 0.1;
    cluster.start_keepalived(0, &spec);
    // A higher priority, so ours is the Master and keepalived hears it.
    let mut slower = spec.clone();
    slower.advert_interval = 0.2;
    slower.priority = 250;
    cluster.start_ours(1, &slower);
    cplb_e2e::wait_until("keepalived to complain", cluster::WAIT, || {
        cluster
            .keepalived_complaints()
            .iter()
            .any(|line| line.contains("interval mismatch"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
}
