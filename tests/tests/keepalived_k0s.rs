//! The baseline every mixed-cluster test builds on: three keepalived nodes
//! configured exactly as k0s renders them, on a lab LAN. Exactly one holds
//! the VIP; on SIGTERM another takes it and the old holder keeps none. This
//! is keepalived's own behaviour, measured here so cplb's can be held to it.

use std::net::IpAddr;
use std::time::Duration;

use cplb_e2e::keepalived::{K0sInstance, Keepalived, render_k0s};
use cplb_e2e::{Lab, wait_for};
use nix::sys::signal::Signal;

const VIP: &str = "192.0.2.100";

fn holders(lab: &Lab, hosts: &[&str]) -> Vec<String> {
    let vip: IpAddr = VIP.parse().unwrap();
    hosts
        .iter()
        .filter(|h| {
            let host = lab.host(h).unwrap();
            lab.has_address(&host.netns, &host.ifname, vip).unwrap()
        })
        .map(|h| (*h).to_string())
        .collect()
}

#[test]
fn three_k0s_keepalived_nodes_hold_the_vip_once_and_hand_it_over_on_sigterm() {
    let mut lab = Lab::new().unwrap();
    let names = ["k0", "k1", "k2"];
    for (i, name) in names.iter().enumerate() {
        lab.add_host(name, Some(&format!("192.0.2.{}/24", 10 + i)), None)
            .unwrap();
    }
    let conf = render_k0s(&[K0sInstance::new(&format!("{VIP}/24"), "k0s")], None);
    let mut nodes = Vec::new();
    for name in names {
        let netns = lab.host(name).unwrap().netns.clone();
        nodes.push(Keepalived::start(&lab, &netns, &conf).unwrap());
    }

    // Master_Down_Interval is 3.2 s; allow a generous bound for start-up.
    let holder = wait_for("one VIP holder", Duration::from_secs(20), || {
        let now = holders(&lab, &names);
        (now.len() == 1).then(|| now[0].clone())
    })
    .unwrap();
    // It stays exactly one for a few advert rounds.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(holders(&lab, &names), vec![holder.clone()]);
    }

    let index = names.iter().position(|n| *n == holder).unwrap();
    lab.signal(nodes[index].child, Signal::SIGTERM).unwrap();
    let next = wait_for("a new VIP holder", Duration::from_secs(10), || {
        let now = holders(&lab, &names);
        (now.len() == 1 && now[0] != holder).then(|| now[0].clone())
    })
    .unwrap();
    assert_ne!(next, holder);
    let old = lab.host(&holder).unwrap();
    assert!(
        !lab.has_address(&old.netns, &old.ifname, VIP.parse().unwrap())
            .unwrap()
    );

    for node in &nodes {
        assert!(
            node.complaints().is_empty(),
            "{:?}\n{}",
            node.complaints(),
            node.log()
        );
    }
}
