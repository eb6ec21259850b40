//! The real `cplb` binary on controllers in network namespaces: what systemd
//! is told and when, what SIGTERM and SIGKILL leave behind, and
//! health-aware mastership against test apiservers.
//!
//! Who holds the VIP is read from the kernel (`ip -j addr`), the rules from
//! `iptables-save`, never from the agent's own logs.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cplb_e2e::{ChildId, Host, Lab, wait_until};
use nix::sys::signal::Signal;

#[path = "support/exposition.rs"]
mod exposition;
// Shared with agent_robust, which also drains in the background.
#[path = "support/notify.rs"]
#[allow(dead_code)]
mod notify;

use notify::NotifySocket;

const CPLB: &str = env!("CARGO_BIN_EXE_cplb");

fn vip() -> IpAddr {
    VIP.parse().unwrap()
}

#[path = "support/agent_config.rs"]
mod agent_config;
#[path = "support/scratch.rs"]
mod scratch;
use agent_config::{VIP, write_config_with};
use scratch::Scratch;

fn write_config(path: &Path, kubeconfig: &Path, cplb: &str) {
    write_config_with(path, kubeconfig, "", cplb);
}

/// Starts `cplb run` in `host`'s namespace, logging to `log`.
fn start_agent(
    lab: &Lab,
    host: &Host,
    config: &Path,
    log: &Path,
    notify: Option<&Path>,
) -> ChildId {
    let mut cmd = lab.command_in(&host.netns, CPLB);
    cmd.args(["run", "--config"]).arg(config);
    cmd.env("CPLB_LOG", "debug");
    match notify {
        Some(path) => cmd.env("NOTIFY_SOCKET", path),
        None => cmd.env_remove("NOTIFY_SOCKET"),
    };
    let file = std::fs::File::create(log).unwrap();
    cmd.stdout(Stdio::null()).stderr(file);
    lab.spawn(cmd).unwrap()
}

/// The nat REDIRECT rules in `netns`, as `iptables-save` prints them.
fn redirect_rules(lab: &Lab, netns: &str) -> Vec<String> {
    let out = lab.exec_in(netns, "iptables-save", ["-t", "nat"]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("REDIRECT"))
        .map(str::to_owned)
        .collect()
}

fn holds_vip(lab: &Lab, host: &Host) -> bool {
    lab.has_address(&host.netns, &host.ifname, vip()).unwrap()
}

fn holders(lab: &Lab, hosts: &[&Host]) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| holds_vip(lab, h))
        .map(|h| h.name.clone())
        .collect()
}

/// Asserts `condition` holds at every check for `period` (for things that
/// must not happen, such as a VIP moving back).
fn assert_stays(what: &str, period: Duration, mut condition: impl FnMut() -> bool) {
    let end = Instant::now() + period;
    while Instant::now() < end {
        assert!(condition(), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn expected_rules() -> Vec<String> {
    vec![
        format!("-A PREROUTING -d {VIP}/32 -p tcp -m tcp --dport 6443 -j REDIRECT --to-ports 6444"),
        format!("-A OUTPUT -d {VIP}/32 -p tcp -m tcp --dport 6443 -j REDIRECT --to-ports 6444"),
    ]
}

fn dump_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// One controller alone on a LAN, its configuration written, a notify
/// socket bound: the setup of the single-node tests.
struct Solo {
    lab: Lab,
    c1: Host,
    scratch: Scratch,
    config: PathBuf,
    log: PathBuf,
    notify: NotifySocket,
}

impl Solo {
    fn new(name: &str, keepalived: &str, cplb: &str) -> Solo {
        let mut lab = Lab::new().unwrap();
        let c1 = lab.add_host("c1", Some("192.0.2.11/24"), None).unwrap();
        let scratch = Scratch::new(name);
        let config = scratch.path("c1.yaml");
        // No kubeconfig (k0s writes it after starting us): the proxy runs
        // on its bootstrap backend meanwhile.
        write_config_with(&config, &scratch.path("missing.conf"), keepalived, cplb);
        let notify = NotifySocket::bind(scratch.path("notify.sock"));
        let log = scratch.path("c1.log");
        Solo {
            lab,
            c1,
            scratch,
            config,
            log,
            notify,
        }
    }

    /// Starts the agent and waits for READY=1.
    fn start_ready(&self) -> ChildId {
        let agent = start_agent(
            &self.lab,
            &self.c1,
            &self.config,
            &self.log,
            Some(&self.notify.path),
        );
        assert!(
            self.notify.wait_for("READY=1", Duration::from_secs(30)),
            "no READY=1: {}",
            dump_log(&self.log)
        );
        agent
    }

    /// SIGTERM, and a clean exit.
    fn stop(&self, agent: ChildId) {
        self.lab.signal(agent, Signal::SIGTERM).unwrap();
        let out = self.lab.wait_child(agent, Duration::from_secs(30)).unwrap();
        assert!(
            out.status.success(),
            "exit {:?}: {}",
            out.status,
            dump_log(&self.log)
        );
    }

    fn wait_for_vip(&self) {
        wait_until("c1 to take the VIP", Duration::from_secs(20), || {
            holds_vip(&self.lab, &self.c1)
        })
        .unwrap_or_else(|e| panic!("{e}: {}", dump_log(&self.log)));
    }

    fn proxy_listening(&self) -> bool {
        let out = self
            .lab
            .exec_in(&self.c1.netns, "ss", ["-Htln", "sport = :6444"])
            .unwrap();
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    }

    /// `cplb run` that must refuse to start: its exit code and stderr.
    fn refused(&self, config: &Path) -> (Option<i32>, String) {
        let out = self
            .lab
            .command_in(&self.c1.netns, CPLB)
            .args(["run", "--config"])
            .arg(config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[test]
fn ready_only_once_rules_exist_and_sigterm_leaves_nothing_behind() {
    let solo = Solo::new("ready", "", "");
    let (lab, c1) = (&solo.lab, &solo.c1);
    let agent = solo.start_ready();
    // READY=1 promises the rules and the listener are in place.
    assert_eq!(redirect_rules(lab, &c1.netns), expected_rules());
    assert!(solo.proxy_listening(), "proxy not listening at READY");

    // Alone on the LAN, it becomes Master after Master_Down_Interval.
    solo.wait_for_vip();

    // What `cplb status` and the admin endpoint say about it.
    wait_until("status to show Master", Duration::from_secs(10), || {
        let out = lab.exec_in(&c1.netns, CPLB, ["status", "--json"]).unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["instances"][0]["state"] == "master"
            && report["netfilter"]["inPlace"] == true
            && report["ready"] == true
    })
    .unwrap();
    // No kubeconfig: the reconciler says so, with the cause, and retries.
    let out = lab.exec_in(&c1.netns, CPLB, ["status", "--json"]).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kubeconfig = &report["reconciler"]["kubeconfig"];
    assert_eq!(kubeconfig["state"], "failed", "{report}");
    assert!(
        kubeconfig["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing.conf")),
        "{report}"
    );
    let text = lab.exec_in(&c1.netns, CPLB, ["status"]).unwrap();
    let text = String::from_utf8_lossy(&text.stdout).to_lowercase();
    assert!(text.contains("master") && text.contains(VIP), "{text}");
    let metrics = lab
        .exec_in(&c1.netns, "curl", ["-fsS", "http://127.0.0.1:9440/metrics"])
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("cplb_vrrp_state{vrid=\"51\",interface=\"eth0\",state=\"master\"} 1"),
        "{metrics}"
    );
    // What the real agent serves: each series once, each family as
    // docs/metrics.md says.
    let (served, duplicates) = exposition::parse(&metrics);
    assert!(duplicates.is_empty(), "{duplicates:?}\n{metrics}");
    let reference = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/metrics.md"),
    )
    .unwrap();
    let documented = exposition::documented(&reference);
    for (name, family) in &served {
        assert_eq!(documented.get(name), Some(family), "{name}");
    }

    solo.stop(agent);
    assert!(solo.notify.wait_for("STOPPING=1", Duration::from_secs(1)));
    assert!(!holds_vip(lab, c1), "VIP left after SIGTERM");
    assert_eq!(redirect_rules(lab, &c1.netns), Vec::<String>::new());
}

#[test]
fn sigkill_then_restart_rejoins_as_backup_with_one_rule_and_no_stale_vip() {
    let mut lab = Lab::new().unwrap();
    let c1 = lab.add_host("c1", Some("192.0.2.11/24"), None).unwrap();
    let c2 = lab.add_host("c2", Some("192.0.2.12/24"), None).unwrap();
    let scratch = Scratch::new("restart");
    let kubeconfig = scratch.path("missing.conf");
    for name in ["c1", "c2"] {
        write_config(&scratch.path(&format!("{name}.yaml")), &kubeconfig, "");
    }
    let n1 = NotifySocket::bind(scratch.path("n1.sock"));
    let n2 = NotifySocket::bind(scratch.path("n2.sock"));
    let (l1, l2) = (scratch.path("c1.log"), scratch.path("c2.log"));

    let a1 = start_agent(&lab, &c1, &scratch.path("c1.yaml"), &l1, Some(&n1.path));
    wait_until("c1 to take the VIP", Duration::from_secs(20), || {
        holds_vip(&lab, &c1)
    })
    .unwrap();
    let _a2 = start_agent(&lab, &c2, &scratch.path("c2.yaml"), &l2, Some(&n2.path));
    assert!(n2.wait_for("READY=1", Duration::from_secs(30)));

    // SIGKILL: nothing runs on c1 to clean up. Its VIP lease runs out and
    // c2 takes over.
    lab.signal(a1, Signal::SIGKILL).unwrap();
    let _ = lab.wait_child(a1, Duration::from_secs(10)).unwrap();
    wait_until("c2 alone to hold the VIP", Duration::from_secs(20), || {
        holders(&lab, &[&c1, &c2]) == ["c2"]
    })
    .unwrap_or_else(|e| panic!("{e}: {}", dump_log(&l2)));
    // The killed agent's rules are still there: that is what a restart
    // must not duplicate.
    assert_eq!(redirect_rules(&lab, &c1.netns), expected_rules());

    let _a1 = start_agent(&lab, &c1, &scratch.path("c1.yaml"), &l1, Some(&n1.path));
    assert!(n1.wait_for("READY=1", Duration::from_secs(30)));
    assert_eq!(redirect_rules(&lab, &c1.netns), expected_rules());
    // It rejoins as Backup: c2 keeps the VIP (equal priorities, no
    // preemption) for well past c1's Master_Down_Interval.
    assert_stays("c2 keeps the VIP", Duration::from_secs(6), || {
        holders(&lab, &[&c1, &c2]) == ["c2"]
    });
}

/// Test apiservers, one per controller, sharing one store that lists them
/// all (as the apiservers' lease reconciler does).
struct ApiServers {
    _servers: Vec<cplb_testapi::ApiServer>,
    _runtime: tokio::runtime::Runtime,
}

fn start_apiservers(lab: &Lab, hosts: &[&Host], scratch: &Scratch) -> ApiServers {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cluster = cplb_testapi::Cluster::new().unwrap();
    let _guard = runtime.enter();
    let mut servers = Vec::new();
    let mut ips = Vec::new();
    for host in hosts {
        let ip = host.ipv4.unwrap();
        let addr = SocketAddr::new(ip, 6443);
        let netns = Path::new("/run/netns").join(&host.netns);
        servers.push(
            cluster
                .start_in_netns(&netns, addr, cplb_testapi::ServerOptions::default())
                .unwrap(),
        );
        cluster
            .write_kubeconfig(&scratch.path(&format!("{}.conf", host.name)), addr)
            .unwrap();
        ips.push(ip);
    }
    cluster.store().set_kubernetes_backends(&ips, 6443);
    let _ = lab;
    ApiServers {
        _servers: servers,
        _runtime: runtime,
    }
}

#[test]
fn health_aware_mastership_moves_the_vip_off_a_node_that_cannot_serve_and_never_back() {
    let mut lab = Lab::new().unwrap();
    let c1 = lab.add_host("c1", Some("192.0.2.11/24"), None).unwrap();
    let c2 = lab.add_host("c2", Some("192.0.2.12/24"), None).unwrap();
    let scratch = Scratch::new("health");
    let _apis = start_apiservers(&lab, &[&c1, &c2], &scratch);
    let health = "  health:\n    rise: 1s\n    fall: 1s\n";
    for name in ["c1", "c2"] {
        write_config(
            &scratch.path(&format!("{name}.yaml")),
            &scratch.path(&format!("{name}.conf")),
            health,
        );
    }
    let (l1, l2) = (scratch.path("c1.log"), scratch.path("c2.log"));
    let _a1 = start_agent(&lab, &c1, &scratch.path("c1.yaml"), &l1, None);
    wait_until("c1 to take the VIP", Duration::from_secs(20), || {
        holds_vip(&lab, &c1)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", dump_log(&l1)));
    let _a2 = start_agent(&lab, &c2, &scratch.path("c2.yaml"), &l2, None);
    for log in [&l1, &l2] {
        wait_until("both to become healthy", Duration::from_secs(30), || {
            dump_log(log).contains("node healthy")
        })
        .unwrap_or_else(|e| panic!("{e}: {}", dump_log(log)));
    }
    assert_eq!(holders(&lab, &[&c1, &c2]), ["c1"]);
    // The status page lists both apiservers, healthy and in the proxy's set.
    wait_until(
        "c1's status to list both backends",
        Duration::from_secs(10),
        || {
            let out = lab.exec_in(&c1.netns, CPLB, ["status", "--json"]).unwrap();
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let backends = report["proxy"]["backends"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let good = |addr: &str| {
                backends
                    .iter()
                    .any(|b| b["address"] == addr && b["inSet"] == true && b["health"] == "healthy")
            };
            good("192.0.2.11:6443") && good("192.0.2.12:6443")
        },
    )
    .unwrap();

    // c1 can no longer reach any apiserver: its checks fail, it drops to
    // the degraded priority and healthy c2 preempts.
    let block = [
        "-I", "OUTPUT", "-p", "tcp", "--dport", "6443", "-j", "REJECT",
    ];
    lab.exec_in(&c1.netns, "iptables", block).unwrap();
    wait_until(
        "c2 to take the VIP from unhealthy c1",
        Duration::from_secs(30),
        || holders(&lab, &[&c1, &c2]) == ["c2"],
    )
    .unwrap_or_else(|e| panic!("{e}: {}\n---\n{}", dump_log(&l1), dump_log(&l2)));

    // c1 recovers and earns its base priority back, equal to c2's: the VIP
    // stays where it is.
    let unblock = [
        "-D", "OUTPUT", "-p", "tcp", "--dport", "6443", "-j", "REJECT",
    ];
    lab.exec_in(&c1.netns, "iptables", unblock).unwrap();
    let healthy_again = || dump_log(&l1).matches("node healthy").count() >= 2;
    wait_until(
        "c1 to be healthy again",
        Duration::from_secs(30),
        healthy_again,
    )
    .unwrap_or_else(|e| panic!("{e}: {}", dump_log(&l1)));
    assert_stays("the VIP stays on c2", Duration::from_secs(5), || {
        holders(&lab, &[&c1, &c2]) == ["c2"]
    });
}

#[test]
fn supervisor_hands_the_vip_over_at_once_when_the_worker_is_killed() {
    let mut lab = Lab::new().unwrap();
    let c1 = lab.add_host("c1", Some("192.0.2.11/24"), None).unwrap();
    let c2 = lab.add_host("c2", Some("192.0.2.12/24"), None).unwrap();
    let scratch = Scratch::new("supervise");
    let kubeconfig = scratch.path("missing.conf");
    for name in ["c1", "c2"] {
        write_config(&scratch.path(&format!("{name}.yaml")), &kubeconfig, "");
    }
    let (l1, l2) = (scratch.path("c1.log"), scratch.path("c2.log"));

    let mut cmd = lab.command_in(&c1.netns, CPLB);
    cmd.args(["run", "--supervise", "--config"])
        .arg(scratch.path("c1.yaml"))
        .env("CPLB_LOG", "debug")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&l1).unwrap());
    let supervisor = lab.spawn(cmd).unwrap();
    wait_until("c1 to take the VIP", Duration::from_secs(20), || {
        holds_vip(&lab, &c1)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", dump_log(&l1)));
    let n2 = NotifySocket::bind(scratch.path("n2.sock"));
    let _a2 = start_agent(&lab, &c2, &scratch.path("c2.yaml"), &l2, Some(&n2.path));
    assert!(n2.wait_for("READY=1", Duration::from_secs(30)));

    // SIGKILL the worker, not the supervisor.
    let parent = lab.child_pid(supervisor).unwrap().to_string();
    let out = std::process::Command::new("pgrep")
        .args(["-P", &parent])
        .output()
        .unwrap();
    let worker: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("worker pid of {parent}: {e}"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGKILL).unwrap();

    wait_until("c2 alone to hold the VIP", Duration::from_secs(20), || {
        holders(&lab, &[&c1, &c2]) == ["c2"]
    })
    .unwrap_or_else(|e| panic!("{e}: {}\n---\n{}", dump_log(&l1), dump_log(&l2)));
    // c2 took over because c1 resigned (a priority-0 advert from the
    // supervisor's release), not because c1 fell silent for
    // Master_Down_Interval.
    let l2_text = dump_log(&l2);
    assert!(
        l2_text.contains("master resigned (priority 0)"),
        "c2 did not see a resignation: {l2_text}"
    );
    // The supervisor restarted the worker, which rejoins as Backup.
    wait_until("the worker to restart", Duration::from_secs(20), || {
        dump_log(&l1).matches("worker started").count() >= 2
    })
    .unwrap();
    lab.signal(supervisor, Signal::SIGTERM).unwrap();
    let out = lab.wait_child(supervisor, Duration::from_secs(30)).unwrap();
    assert!(out.status.success(), "{}", dump_log(&l1));
    assert_eq!(redirect_rules(&lab, &c1.netns), Vec::<String>::new());
    assert!(!holds_vip(&lab, &c1));
}

#[test]
fn disable_load_balancer_runs_vrrp_only() {
    let solo = Solo::new("vrrponly", "        disableLoadBalancer: true\n", "");
    let agent = solo.start_ready();
    solo.wait_for_vip();
    assert_eq!(
        redirect_rules(&solo.lab, &solo.c1.netns),
        Vec::<String>::new()
    );
    assert!(!solo.proxy_listening());
    solo.stop(agent);
    assert!(!holds_vip(&solo.lab, &solo.c1));
}

/// No VRRP instance at all: k0s skips keepalived; cplb says why it cannot
/// run (EX_CONFIG, which the unit's RestartPreventExitStatus does not
/// restart) instead of waiting forever, and touches nothing. (IPVS mode on
/// a kernel without ip_vs is `ipvs_host.rs`.)
#[test]
fn no_vrrp_instance_is_refused_with_a_clear_error() {
    let solo = Solo::new("noinst", "", "");
    let empty = solo.scratch.path("empty.yaml");
    std::fs::write(
        &empty,
        "spec:\n  network:\n    controlPlaneLoadBalancing:\n      enabled: true\n      type: Keepalived\n      keepalived:\n        vrrpInstances: []\n",
    )
    .unwrap();
    let (code, stderr) = solo.refused(&empty);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("vrrpInstances"), "{stderr}");
    assert_eq!(
        redirect_rules(&solo.lab, &solo.c1.netns),
        Vec::<String>::new()
    );
    assert!(!holds_vip(&solo.lab, &solo.c1));
}

#[test]
fn nftables_backend_installs_its_table_and_deletes_it_on_stop() {
    let solo = Solo::new("nft", "", "  netfilter: nftables\n");
    let (lab, c1) = (&solo.lab, &solo.c1);
    let agent = solo.start_ready();
    let table = lab
        .exec_in(&c1.netns, "nft", ["list", "table", "ip", "cplb"])
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&format!("ip daddr {VIP} tcp dport 6443 redirect to :6444")),
        "{table}"
    );
    assert_eq!(redirect_rules(lab, &c1.netns), Vec::<String>::new());
    solo.stop(agent);
    let tables = lab.exec_in(&c1.netns, "nft", ["list", "tables"]).unwrap();
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("cplb"),
        "table left after stop"
    );
}

/// `curl`'s status code for `path` on the admin endpoint in `netns`
/// (`000` when nothing answers).
fn admin_status(lab: &Lab, netns: &str, path: &str) -> String {
    let url = format!("http://127.0.0.1:9440{path}");
    let out = lab
        .exec_in(
            netns,
            "curl",
            [
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "2",
                &url,
            ],
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn boot_waits_for_a_missing_interface_and_address_then_becomes_master() {
    // Issue 14 F5: at boot the interface may not exist yet, then exist
    // without its address (DHCP, bonding, a network restart). That used to
    // exit 78, which the unit's RestartPreventExitStatus=78 made final.
    let mut lab = Lab::new().unwrap();
    let c1 = lab.add_host("c1", None, None).unwrap();
    let scratch = Scratch::new("bootwait");
    let config = scratch.path("c1.yaml");
    write_config(&config, &scratch.path("missing.conf"), "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("interface: eth0", "interface: lan0")).unwrap();
    let notify = NotifySocket::bind(scratch.path("notify.sock"));
    let log = scratch.path("c1.log");
    let agent = start_agent(&lab, &c1, &config, &log, Some(&notify.path));

    // Waiting, not refused: alive, not ready, healthy, the reason logged.
    wait_until("the wait to be logged", Duration::from_secs(20), || {
        dump_log(&log).contains("interface lan0 not found")
    })
    .unwrap_or_else(|e| panic!("{e}: {}", dump_log(&log)));
    wait_until("/readyz to answer 503", Duration::from_secs(10), || {
        admin_status(&lab, &c1.netns, "/readyz") == "503"
    })
    .unwrap_or_else(|e| panic!("{e}: {}", dump_log(&log)));
    assert_eq!(admin_status(&lab, &c1.netns, "/healthz"), "200");

    // The interface appears, without an address yet: still waiting, with
    // the new reason.
    let ip = |args: &[&str]| lab.ip(&c1.netns, args.iter().copied()).unwrap();
    ip(&[
        "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p",
    ]);
    ip(&["link", "set", "lan0p", "up"]);
    ip(&["link", "set", "lan0", "up"]);
    wait_until(
        "the new reason to be logged",
        Duration::from_secs(20),
        || dump_log(&log).contains("interface lan0 has no IPv4 address"),
    )
    .unwrap_or_else(|e| panic!("{e}: {}", dump_log(&log)));
    assert_eq!(admin_status(&lab, &c1.netns, "/readyz"), "503");

    // The address comes: the agent starts and, alone, becomes Master.
    ip(&["addr", "add", "192.0.2.11/24", "dev", "lan0"]);
    assert!(
        notify.wait_for("READY=1", Duration::from_secs(30)),
        "no READY=1: {}",
        dump_log(&log)
    );
    wait_until(
        "c1 to take the VIP on lan0",
        Duration::from_secs(20),
        || lab.has_address(&c1.netns, "lan0", vip()).unwrap(),
    )
    .unwrap_or_else(|e| panic!("{e}: {}", dump_log(&log)));
    wait_until("/readyz to answer 200", Duration::from_secs(10), || {
        admin_status(&lab, &c1.netns, "/readyz") == "200"
    })
    .unwrap();
    // Each reason was logged once, not at every re-check.
    let text = dump_log(&log);
    assert_eq!(
        text.matches("interface lan0 not found").count(),
        1,
        "{text}"
    );

    lab.signal(agent, Signal::SIGTERM).unwrap();
    let out = lab.wait_child(agent, Duration::from_secs(30)).unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        dump_log(&log)
    );
    assert!(!lab.has_address(&c1.netns, "lan0", vip()).unwrap());
}
