//! The driver end to end: real routers in network namespaces on one LAN,
//! real adverts, real VIPs. Who holds a VIP is read from the kernel with
//! `ip -j addr`, never from the driver. Needs root and iproute2.
#![cfg(feature = "io")]

use std::net::IpAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use cplb_e2e::{Lab, in_netns, wait_until};
use cplb_vrrp::fsm::Config;
use cplb_vrrp::io::driver::{DEFAULT_ADDR_LABEL, InstanceConfig, run};
use cplb_vrrp::io::netlink::Vip;
use cplb_vrrp::wire::Version;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

/// A driver running on its own thread inside a host's namespace.
struct Router {
    /// Graceful stop: priority-0 advert, VIPs removed.
    stop: CancellationToken,
    /// Abrupt stop: the driver is dropped mid-flight, like a SIGKILL.
    kill: CancellationToken,
    thread: Option<JoinHandle<String>>,
}

impl Router {
    fn spawn(netns: &str, configs: Vec<InstanceConfig>) -> Router {
        let (stop, kill) = (CancellationToken::new(), CancellationToken::new());
        let (stop2, kill2, netns) = (stop.clone(), kill.clone(), netns.to_owned());
        let thread = std::thread::spawn(move || {
            in_netns(&netns, move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    tokio::select! {
                        result = run(configs, stop2) => match result {
                            Ok(()) => "stopped".to_owned(),
                            Err(e) => format!("failed: {e}"),
                        },
                        () = kill2.cancelled() => "killed".to_owned(),
                    }
                })
            })
            .unwrap()
        });
        Router {
            stop,
            kill,
            thread: Some(thread),
        }
    }

    fn join(&mut self) -> String {
        self.thread
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default()
    }

    fn stop(&mut self) -> String {
        self.stop.cancel();
        self.join()
    }

    fn kill(&mut self) -> String {
        self.kill.cancel();
        self.join()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        // A failing test must not leave a thread spinning in a namespace that
        // is about to be deleted.
        self.kill.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn v2_instance(vrid: u8, priority: u8, primary: &str, vip: &str, prefix: u8) -> InstanceConfig {
    let mut router = Config::new(Version::V2, vrid, ip(primary), vec![ip(vip)]);
    router.priority = priority;
    let mut config = InstanceConfig::new(router, "eth0");
    config.vip_prefixes = vec![Vip::new(ip(vip), prefix).unwrap()];
    config
}

struct Pair {
    lab: Lab,
    a: String,
    b: String,
}

impl Pair {
    fn new() -> Pair {
        let mut lab = Lab::new().unwrap();
        let a = lab
            .add_host("a", Some("192.0.2.1/24"), Some("2001:db8::1/64"))
            .unwrap()
            .netns;
        let b = lab
            .add_host("b", Some("192.0.2.2/24"), Some("2001:db8::2/64"))
            .unwrap()
            .netns;
        Pair { lab, a, b }
    }

    fn holds(&self, netns: &str, vip: IpAddr) -> bool {
        self.lab.has_address(netns, "eth0", vip).unwrap()
    }

    /// Waits until exactly `netns` of the two holds `vip`.
    fn wait_holder(&self, netns: &str, vip: IpAddr) {
        let other = if netns == self.a { &self.b } else { &self.a };
        wait_until(&format!("{vip} held by {netns} alone"), WAIT, || {
            self.holds(netns, vip) && !self.holds(other, vip)
        })
        .unwrap();
    }
}

#[test]
fn higher_priority_becomes_master_and_hands_over_gracefully() {
    let t = Pair::new();
    let vip = ip("192.0.2.100");
    // Left on B by a crashed run: B must remove it before acting as Backup.
    t.lab
        .ip(&t.b, ["addr", "add", "192.0.2.100/24", "dev", "eth0"])
        .unwrap();

    let mut a = Router::spawn(
        &t.a,
        vec![v2_instance(51, 200, "192.0.2.1", "192.0.2.100", 24)],
    );
    let mut b = Router::spawn(
        &t.b,
        vec![v2_instance(51, 100, "192.0.2.2", "192.0.2.100", 24)],
    );
    t.wait_holder(&t.a, vip);

    // Added with its prefix, as keepalived does (secondary), with a lease.
    let addrs = t.lab.addresses(&t.a, "eth0").unwrap();
    let held = addrs.iter().find(|x| x.ip == vip).unwrap();
    assert_eq!(held.prefix_len, 24);
    assert!(held.secondary);
    assert!(
        held.valid_lft.is_some_and(|s| s <= 4),
        "lease of about Master_Down_Interval: {held:?}"
    );

    // Someone removes the VIP from the Master: it is put back.
    t.lab
        .ip(&t.a, ["addr", "del", "192.0.2.100/24", "dev", "eth0"])
        .unwrap();
    t.wait_holder(&t.a, vip);

    // Graceful stop: priority 0 makes B take over at once, A keeps nothing.
    assert_eq!(a.stop(), "stopped");
    t.wait_holder(&t.b, vip);
    assert_eq!(b.stop(), "stopped");
    assert!(!t.holds(&t.b, vip), "a stopped Master removes its VIPs");
}

#[test]
fn a_killed_masters_vip_expires_by_itself_and_the_backup_takes_over() {
    let t = Pair::new();
    let vip = ip("192.0.2.101");
    let mut a = Router::spawn(
        &t.a,
        vec![v2_instance(52, 200, "192.0.2.1", "192.0.2.101", 32)],
    );
    let _b = Router::spawn(
        &t.b,
        vec![v2_instance(52, 100, "192.0.2.2", "192.0.2.101", 32)],
    );
    t.wait_holder(&t.a, vip);

    // No shutdown runs: nothing removes the VIP but the kernel's lease.
    assert_eq!(a.kill(), "killed");
    t.wait_holder(&t.b, vip);
}

#[test]
fn link_down_releases_the_vip_and_link_up_preempts_back() {
    let t = Pair::new();
    let vip = ip("192.0.2.102");
    let _a = Router::spawn(
        &t.a,
        vec![v2_instance(53, 200, "192.0.2.1", "192.0.2.102", 24)],
    );
    let _b = Router::spawn(
        &t.b,
        vec![v2_instance(53, 100, "192.0.2.2", "192.0.2.102", 24)],
    );
    t.wait_holder(&t.a, vip);

    // A loses carrier: it goes to Fault and drops the VIP; B stops hearing
    // it and takes over.
    t.lab.cut_cable("a").unwrap();
    t.wait_holder(&t.b, vip);

    // Carrier back: A starts over as Backup and preempts B (priority 200).
    t.lab.plug_cable("a").unwrap();
    t.wait_holder(&t.a, vip);
}

#[test]
fn ipv6_vrrpv3_vips_are_nodad_and_labelled() {
    let t = Pair::new();
    let vip = ip("2001:db8::100");
    let a_ll = t.lab.link_local(&t.a, "eth0", WAIT).unwrap();
    let b_ll = t.lab.link_local(&t.b, "eth0", WAIT).unwrap();
    let instance = |priority: u8, primary: IpAddr| {
        let mut router = Config::new(Version::V3, 61, primary, vec![vip]);
        router.priority = priority;
        let mut config = InstanceConfig::new(router, "eth0");
        config.vip_prefixes = vec![Vip::new(vip, 64).unwrap()];
        config
    };
    let mut a = Router::spawn(&t.a, vec![instance(200, IpAddr::V6(a_ll))]);
    let mut b = Router::spawn(&t.b, vec![instance(100, IpAddr::V6(b_ll))]);
    t.wait_holder(&t.a, vip);

    let addrs = t.lab.addresses(&t.a, "eth0").unwrap();
    let held = addrs.iter().find(|x| x.ip == vip).unwrap();
    assert!(
        held.nodad && !held.tentative && held.prefix_len == 64,
        "{held:?}"
    );
    let labelled = |netns: &str| {
        t.lab
            .addr_labels(netns)
            .unwrap()
            .iter()
            .any(|l| l.prefix == vip && l.prefix_len == 128 && l.label == DEFAULT_ADDR_LABEL)
    };
    assert!(labelled(&t.a));

    assert_eq!(a.stop(), "stopped");
    t.wait_holder(&t.b, vip);
    assert!(!labelled(&t.a), "the label goes with the VIP");
    assert!(labelled(&t.b));
    assert_eq!(b.stop(), "stopped");
    assert!(!labelled(&t.b));
}
