//! `cplb.advertInterval`: two real agents at 100 ms adverts (VRRPv3) in
//! network namespaces. The adverts on the wire carry 10 centiseconds, and
//! when the Master's link goes down the Backup takes the VIP after its
//! Master_Down_Interval of 3 × 0.1 s + Skew_Time (RFC 5798 §6.1: 0.36 s at
//! the degraded priority 100 these agents run at, 0.32 s at 200), where
//! k0s's 1 s interval needs 3.2 s or more.
//!
//! Who holds the VIP is read from the kernel (`ip -j addr`), the advert
//! interval from tcpdump's decoding of the packets, never from the agents'
//! own logs.

use std::net::IpAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cplb_e2e::{ChildId, Host, Lab, wait_until};

#[path = "support/scratch.rs"]
mod scratch;
use scratch::Scratch;

const VIP: &str = "192.0.2.100";
const CPLB: &str = env!("CARGO_BIN_EXE_cplb");

fn vip() -> IpAddr {
    VIP.parse().unwrap()
}

/// One controller's file: k0s's section plus 100 ms VRRPv3 adverts.
/// No kubeconfig exists, so health tracking keeps both nodes at the same
/// (degraded) priority and neither preempts the other.
fn write_config(path: &Path, kubeconfig: &Path) {
    let text = format!(
        "spec:
  network:
    controlPlaneLoadBalancing:
      enabled: true
      keepalived:
        vrrpInstances:
          - virtualIPs: [\"{VIP}/24\"]
            authPass: fastpw
            interface: eth0
cplb:
  kubeconfig: {}
  vrrpVersion: 3
  advertInterval: 100ms
",
        kubeconfig.display()
    );
    std::fs::write(path, text).unwrap();
}

fn start_agent(lab: &Lab, host: &Host, config: &Path, log: &Path) -> ChildId {
    let mut cmd = lab.command_in(&host.netns, CPLB);
    cmd.args(["run", "--config"]).arg(config);
    cmd.env("CPLB_LOG", "debug").env_remove("NOTIFY_SOCKET");
    let file = std::fs::File::create(log).unwrap();
    cmd.stdout(Stdio::null()).stderr(file);
    lab.spawn(cmd).unwrap()
}

fn holders(lab: &Lab, hosts: &[&Host]) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| lab.has_address(&h.netns, &h.ifname, vip()).unwrap())
        .map(|h| h.name.clone())
        .collect()
}

fn dump(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn two_agents_at_100ms_adverts_fail_over_on_link_down() {
    let mut lab = Lab::new().unwrap();
    let c1 = lab.add_host("c1", Some("192.0.2.11/24"), None).unwrap();
    let c2 = lab.add_host("c2", Some("192.0.2.12/24"), None).unwrap();
    let watch = lab.add_host("watch", Some("192.0.2.50/24"), None).unwrap();
    let scratch = Scratch::new("fast");
    let kubeconfig = scratch.path("missing.conf");
    for name in ["c1", "c2"] {
        write_config(&scratch.path(&format!("{name}.yaml")), &kubeconfig);
    }
    let (l1, l2) = (scratch.path("c1.log"), scratch.path("c2.log"));

    let _a1 = start_agent(&lab, &c1, &scratch.path("c1.yaml"), &l1);
    wait_until("c1 to take the VIP", Duration::from_secs(20), || {
        holders(&lab, &[&c1, &c2]) == ["c1"]
    })
    .unwrap_or_else(|e| panic!("{e}: {}", dump(&l1)));
    let _a2 = start_agent(&lab, &c2, &scratch.path("c2.yaml"), &l2);

    // The Master's adverts, as a third host on the LAN sees them: VRRPv3
    // with a 10 cs interval (RFC 5798 §5.2.7), from c1 only.
    let out = lab
        .exec_in(
            &watch.netns,
            "timeout",
            [
                "10",
                "tcpdump",
                "-c",
                "5",
                "-nn",
                "-v",
                "-i",
                "eth0",
                "ip proto 112",
            ],
        )
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    let adverts: Vec<&str> = seen.lines().filter(|l| l.contains("VRRPv")).collect();
    assert_eq!(adverts.len(), 5, "{seen}");
    for advert in &adverts {
        assert!(
            advert.contains("VRRPv3, Advertisement, vrid 51") && advert.contains("intvl 10cs"),
            "{seen}"
        );
    }

    // c2 is a Backup that hears c1; the VIP stays where it is.
    wait_until("c2 to run as Backup", Duration::from_secs(20), || {
        lab.exec_in(&c2.netns, CPLB, ["status", "--json"])
            .ok()
            .and_then(|out| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
            .is_some_and(|r| r["instances"][0]["state"] == "backup")
    })
    .unwrap_or_else(|e| panic!("{e}: {}", dump(&l2)));
    assert_eq!(holders(&lab, &[&c1, &c2]), ["c1"]);

    // Link down on the Master: c2 takes over after its Master_Down_Interval
    // (0.36 s). The bound leaves room for a loaded machine and is still
    // below the 3.2 s a 1 s interval would need.
    lab.set_host_link("c1", false).unwrap();
    let cut = Instant::now();
    wait_until("c2 to take the VIP", Duration::from_millis(2500), || {
        holders(&lab, &[&c2]) == ["c2"]
    })
    .unwrap_or_else(|e| panic!("{e}: {}", dump(&l2)));
    println!(
        "c2 took the VIP {:?} after the link went down",
        cut.elapsed()
    );

    // Back up, c1 hears the new Master and yields (equal priorities: the
    // RFC 5798 §6.4.3 tie goes to the higher address, c2), leaving one holder.
    lab.set_host_link("c1", true).unwrap();
    wait_until("one holder again", Duration::from_secs(10), || {
        holders(&lab, &[&c1, &c2]).len() == 1
    })
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", dump(&l1), dump(&l2)));
}
