//! A LAN of VRRP nodes in network namespaces, each either our `vrrpd`
//! example (a real separate process, so SIGKILL and SIGSTOP are real) or a
//! keepalived configured as k0s renders it. Who holds a VIP is read from the
//! kernel of each host, never from a daemon's logs.

#![allow(dead_code)]

use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use cplb_e2e::keepalived::{K0sInstance, Keepalived, render_k0s};
use cplb_e2e::{ChildId, Lab, wait_for};
use nix::sys::signal::Signal;

/// k0s: advert 1 s, priority 200 → Master_Down_Interval 3.22 s. Failover
/// waits get several times that, for a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(20);

/// The `vrrpd` example binary, built by `cargo test` beside the tests.
pub fn vrrpd_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let debug = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = debug.join("examples").join("vrrpd");
    assert!(
        path.is_file(),
        "{} missing: build it with `cargo build -p cplb-vrrp --example vrrpd`",
        path.display()
    );
    path
}

/// How one node's VRRP instance is set up.
#[derive(Debug, Clone)]
pub struct Spec {
    pub vrid: u8,
    pub version: u8,
    pub priority: u8,
    pub vips: Vec<String>,
    pub auth_pass: Option<String>,
    pub unicast: bool,
    pub ipv6: bool,
    pub advert_interval: f64,
}

impl Spec {
    /// k0s's rendering: VRRPv2, priority 200, advert 1 s, PASS auth.
    pub fn k0s(vip: &str) -> Spec {
        Spec {
            vrid: 51,
            version: 2,
            priority: 200,
            vips: vec![vip.to_string()],
            auth_pass: Some("k0s".to_string()),
            unicast: false,
            ipv6: false,
            advert_interval: 1.0,
        }
    }
}

pub enum Daemon {
    Ours { child: ChildId, dir: PathBuf },
    Keepalived(Keepalived),
    Stopped,
}

pub struct Node {
    pub name: String,
    pub netns: String,
    pub ipv4: IpAddr,
    pub ipv6: IpAddr,
    pub daemon: Daemon,
}

pub struct Cluster {
    pub lab: Lab,
    pub nodes: Vec<Node>,
    /// Config and log directories of every vrrpd started, removed on drop.
    dirs: Vec<PathBuf>,
}

impl Cluster {
    /// `n` hosts on one LAN: 192.0.2.10+i/24 and 2001:db8::10+i/64.
    pub fn new(n: usize) -> Cluster {
        let mut lab = Lab::new().unwrap();
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = format!("n{i}");
            let ipv4 = format!("192.0.2.{}", 10 + i);
            let ipv6 = format!("2001:db8::{}", 10 + i);
            let host = lab
                .add_host(
                    &name,
                    Some(&format!("{ipv4}/24")),
                    Some(&format!("{ipv6}/64")),
                )
                .unwrap();
            nodes.push(Node {
                name,
                netns: host.netns,
                ipv4: ipv4.parse().unwrap(),
                ipv6: ipv6.parse().unwrap(),
                daemon: Daemon::Stopped,
            });
        }
        Cluster {
            lab,
            nodes,
            dirs: Vec::new(),
        }
    }

    fn peers(&self, i: usize, spec: &Spec) -> Vec<IpAddr> {
        (0..self.nodes.len())
            .filter(|&j| j != i)
            .map(|j| {
                if spec.ipv6 {
                    self.nodes[j].ipv6
                } else {
                    self.nodes[j].ipv4
                }
            })
            .collect()
    }

    /// Starts our `vrrpd` on node `i`.
    pub fn start_ours(&mut self, i: usize, spec: &Spec) {
        let node = &self.nodes[i];
        let dir = std::env::temp_dir().join(format!("{}-vrrpd-{}", node.netns, self.dirs.len()));
        fs::create_dir_all(&dir).unwrap();
        self.dirs.push(dir.clone());
        let mut yaml = format!(
            "instances:\n  - interface: eth0\n    vrid: {}\n    version: {}\n    priority: {}\n    advertInterval: {}\n    vips: [{}]\n",
            spec.vrid,
            spec.version,
            spec.priority,
            spec.advert_interval,
            spec.vips.join(", ")
        );
        if let Some(pass) = &spec.auth_pass {
            yaml.push_str(&format!("    authPass: {pass}\n"));
        }
        if spec.unicast {
            let source = if spec.ipv6 { node.ipv6 } else { node.ipv4 };
            let peers: Vec<String> = self
                .peers(i, spec)
                .iter()
                .map(ToString::to_string)
                .collect();
            yaml.push_str(&format!(
                "    primaryIp: \"{source}\"\n    unicastPeers: [{}]\n",
                peers.join(", ")
            ));
        }
        fs::write(dir.join("vrrpd.yaml"), yaml).unwrap();
        let log = fs::File::create(dir.join("vrrpd.log")).unwrap();
        let mut cmd = self.lab.command_in(&node.netns, vrrpd_binary());
        cmd.arg(dir.join("vrrpd.yaml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = self.lab.spawn(cmd).unwrap();
        self.nodes[i].daemon = Daemon::Ours { child, dir };
    }

    /// Starts keepalived, configured as k0s renders it, on node `i`.
    pub fn start_keepalived(&mut self, i: usize, spec: &Spec) {
        let mut instance =
            K0sInstance::new(&spec.vips[0], spec.auth_pass.as_deref().unwrap_or("k0s"));
        instance.vips = spec.vips.clone();
        instance.vrid = spec.vrid;
        instance.advert_int = spec.advert_interval;
        if spec.unicast {
            let node = &self.nodes[i];
            let source = if spec.ipv6 { node.ipv6 } else { node.ipv4 };
            instance.unicast = Some((source, self.peers(i, spec)));
        }
        let version = (spec.version == 3).then_some(3);
        let conf = render_k0s(&[instance], version);
        let keepalived = Keepalived::start(&self.lab, &self.nodes[i].netns, &conf).unwrap();
        self.nodes[i].daemon = Daemon::Keepalived(keepalived);
    }

    pub fn child(&self, i: usize) -> ChildId {
        match &self.nodes[i].daemon {
            Daemon::Ours { child, .. } => *child,
            Daemon::Keepalived(k) => k.child,
            Daemon::Stopped => panic!("node {i} runs nothing"),
        }
    }

    pub fn signal(&self, i: usize, signal: Signal) {
        self.lab.signal(self.child(i), signal).unwrap();
    }

    /// SIGTERM, then waits for the daemon to exit.
    pub fn stop(&mut self, i: usize) {
        self.signal(i, Signal::SIGTERM);
        self.lab
            .wait_child(self.child(i), Duration::from_secs(10))
            .unwrap();
        self.nodes[i].daemon = Daemon::Stopped;
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self, i: usize) {
        self.lab.kill(self.child(i)).unwrap();
        self.nodes[i].daemon = Daemon::Stopped;
    }

    pub fn log(&self, i: usize) -> String {
        match &self.nodes[i].daemon {
            Daemon::Ours { dir, .. } => {
                fs::read_to_string(dir.join("vrrpd.log")).unwrap_or_default()
            }
            Daemon::Keepalived(k) => k.log(),
            Daemon::Stopped => String::new(),
        }
    }

    pub fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| format!("--- {} ---\n{}\n", self.nodes[i].name, self.log(i)))
            .collect()
    }

    /// keepalived's complaints about its peers' adverts, on every node.
    pub fn keepalived_complaints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.daemon {
                Daemon::Keepalived(k) => Some(k.complaints()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    pub fn holds(&self, i: usize, vip: IpAddr) -> bool {
        self.lab
            .has_address(&self.nodes[i].netns, "eth0", vip)
            .unwrap()
    }

    /// The nodes whose kernel holds `vip` now.
    pub fn holders(&self, vip: IpAddr) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.holds(i, vip))
            .collect()
    }

    /// Waits until exactly one node holds `vip` and returns it.
    pub fn wait_one_holder(&self, vip: IpAddr) -> usize {
        wait_for(&format!("exactly one holder of {vip}"), WAIT, || {
            let holders = self.holders(vip);
            (holders.len() == 1).then(|| holders[0])
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// Waits until exactly one node other than `old` holds `vip`.
    pub fn wait_new_holder(&self, vip: IpAddr, old: usize) -> usize {
        wait_for(
            &format!("a holder of {vip} other than n{old}"),
            WAIT,
            || {
                let holders = self.holders(vip);
                (holders.len() == 1 && holders[0] != old).then(|| holders[0])
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// Checks for `rounds` advert intervals that `holder` alone keeps `vip`.
    pub fn assert_stays(&self, vip: IpAddr, holder: usize, rounds: u32) {
        for _ in 0..rounds * 4 {
            std::thread::sleep(Duration::from_millis(250));
            assert_eq!(self.holders(vip), vec![holder], "{}", self.logs());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = fs::remove_dir_all(dir);
        }
    }
}
