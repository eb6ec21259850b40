//! The lab harness against the real kernel: needs root, iproute2 and
//! iputils-ping.

use std::net::IpAddr;
use std::time::Duration;

use cplb_e2e::{Lab, list_netns, wait_until};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn three_hosts_ping_across_the_lan_and_vanish_on_drop() {
    let prefix;
    {
        let mut lab = Lab::new().unwrap();
        prefix = lab.prefix().to_owned();
        lab.add_host("a", Some("192.0.2.1/24"), Some("2001:db8::1/64"))
            .unwrap();
        lab.add_host("b", Some("192.0.2.2/24"), Some("2001:db8::2/64"))
            .unwrap();
        lab.add_host("c", Some("192.0.2.3/24"), Some("2001:db8::3/64"))
            .unwrap();
        assert_eq!(list_netns(&prefix).unwrap().len(), 4, "bridge + 3 hosts");

        let a = lab.host("a").unwrap().netns.clone();
        // The first ping may race the bridge learning its ports: bounded retry.
        for dst in ["192.0.2.2", "192.0.2.3", "2001:db8::2", "2001:db8::3"] {
            wait_until(&format!("ping {dst}"), Duration::from_secs(10), || {
                lab.ping(&a, ip(dst)).unwrap()
            })
            .unwrap();
        }

        let link = lab.link(&a, "eth0").unwrap();
        assert!(link.lower_up && link.ifindex > 0 && link.mac != [0; 6]);
        let ll = lab.link_local(&a, "eth0", Duration::from_secs(10)).unwrap();
        assert!(ll.is_unicast_link_local());

        let addrs = lab.addresses(&a, "eth0").unwrap();
        assert!(
            addrs
                .iter()
                .any(|x| x.ip == ip("192.0.2.1") && x.prefix_len == 24)
        );
        assert!(addrs.iter().any(|x| x.ip == ip("2001:db8::1") && x.nodad));

        // A partitioned host is unreachable, and reachable again once healed.
        lab.partition("c").unwrap();
        assert!(!lab.ping(&a, ip("192.0.2.3")).unwrap());
        lab.heal("c").unwrap();
        wait_until("c reachable after heal", Duration::from_secs(10), || {
            lab.ping(&a, ip("192.0.2.3")).unwrap()
        })
        .unwrap();

        // A partition keeps the host's carrier; a cut cable does not.
        let c = lab.host("c").unwrap().netns.clone();
        lab.partition("c").unwrap();
        let link = lab.ip(&c, ["-j", "link", "show", "dev", "eth0"]).unwrap();
        assert!(link.contains("LOWER_UP"), "{link}");
        lab.heal("c").unwrap();
        lab.cut_cable("c").unwrap();
        let link = lab.ip(&c, ["-j", "link", "show", "dev", "eth0"]).unwrap();
        assert!(link.contains("NO-CARRIER"), "{link}");
        assert!(!lab.ping(&a, ip("192.0.2.3")).unwrap());
        lab.plug_cable("c").unwrap();
        wait_until(
            "c reachable after plugging",
            Duration::from_secs(10),
            || lab.ping(&a, ip("192.0.2.3")).unwrap(),
        )
        .unwrap();

        // Interface down on the host side too.
        lab.set_host_link("b", false).unwrap();
        assert!(!lab.ping(&a, ip("192.0.2.2")).unwrap());
    }
    assert_eq!(
        list_netns(&prefix).unwrap(),
        Vec::<String>::new(),
        "drop deletes every namespace"
    );
}

#[test]
fn drop_kills_spawned_children_and_cleans_up_on_panic() {
    let prefix = std::sync::Mutex::new(String::new());
    let pid = std::sync::Mutex::new(0u32);
    let result = std::panic::catch_unwind(|| {
        let mut lab = Lab::new().unwrap();
        *prefix.lock().unwrap() = lab.prefix().to_owned();
        let h = lab.add_host("x", Some("192.0.2.10/24"), None).unwrap();
        let mut cmd = lab.command_in(&h.netns, "sleep");
        cmd.arg("600");
        let child = lab.spawn(cmd).unwrap();
        *pid.lock().unwrap() = lab.child_pid(child).unwrap();
        panic!("test failure inside a lab");
    });
    assert!(result.is_err());
    let prefix = prefix.into_inner().unwrap();
    let pid = pid.into_inner().unwrap();
    assert!(!prefix.is_empty());
    assert_eq!(list_netns(&prefix).unwrap(), Vec::<String>::new());
    // The child was killed and reaped, so its /proc entry is gone.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn exec_in_runs_inside_the_namespace_and_in_netns_enters_it() {
    let mut lab = Lab::new().unwrap();
    let h = lab.add_host("e", Some("192.0.2.20/24"), None).unwrap();
    let out = lab
        .exec_in(&h.netns, "ip", ["-4", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("192.0.2.20/24"));

    // A UDP socket bound inside the namespace can take the host's address,
    // which does not exist in the test's own namespace.
    let bound = cplb_e2e::in_netns(&h.netns, || {
        std::net::UdpSocket::bind("192.0.2.20:0").is_ok()
    })
    .unwrap();
    assert!(bound);
    assert!(std::net::UdpSocket::bind("192.0.2.20:0").is_err());
}

#[test]
fn cleanup_stale_removes_only_namespaces_of_dead_processes() {
    // A pid above any kernel's pid_max: that process cannot exist.
    let stale = format!("{}4000000000-0-br", cplb_e2e::NETNS_PREFIX);
    std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    let lab = Lab::new().unwrap();

    let deleted = cplb_e2e::cleanup_stale().unwrap();
    assert!(deleted.contains(&stale), "{deleted:?}");
    assert!(list_netns(&stale).unwrap().is_empty());
    assert_eq!(
        list_netns(lab.prefix()).unwrap().len(),
        1,
        "a live lab is left alone"
    );
}

/// `cplb run` in a namespace takes `/run/cplb-netns-<inode>.lock`, which
/// outlives the namespace: the lab removes it with the namespace, so test
/// runs leave nothing in `/run`.
#[test]
fn drop_removes_the_agent_lock_file_of_each_namespace() {
    let lock;
    {
        let mut lab = Lab::new().unwrap();
        lab.add_host("a", Some("192.0.2.1/24"), None).unwrap();
        let a = lab.host("a").unwrap().netns.clone();
        lock = cplb_e2e::agent_lock_file(&a).unwrap();
        // What the agent's lock.rs creates there.
        std::fs::write(&lock, b"").unwrap();
    }
    assert!(!lock.exists(), "{} left behind", lock.display());
}
