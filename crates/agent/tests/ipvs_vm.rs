//! IPVS mode (k0s's `virtualServers`) end to end, in a qemu VM whose
//! kernel has ip_vs and dummy (this machine's has neither): the
//! three-controller lab of `cplb-lab` (three controller namespaces with a
//! test apiserver each, a client, one LAN), the real `cplb run
//! --supervise` on each controller, configured as k0s's `cplb-ipvs`
//! integration test configures k0s (unicast VRRP, `virtualServers[0]` =
//! the VIP).
//!
//! The host half ([`ipvs_mode_in_a_vm`]) boots the VM and runs this same
//! test binary inside it (the host's root is the VM's, read-only), asking
//! for the VM half ([`ipvs_lab_inside_the_vm`]), which is ignored
//! elsewhere. The kernel's IPVS state is read with `ipvsadm --save -n`
//! (k0s's own assertion) and with `cplb status --json` (the agent's view,
//! read from the kernel over netlink).
//!
//! Checked: k0s's assertions (`dummyvip0` on every controller with exactly
//! the VIP /32, the VIP on exactly one eth0, services only on the holder
//! listing the three apiservers); HTTPS through the VIP (DR) sticks to one
//! apiserver (persistence 360 s, as k0s renders it); only the holder
//! answers ARP for the VIP; `/metrics` and `cplb status` show the
//! services; a dead apiserver leaves the real servers and comes back;
//! failover moves the services on SIGTERM (the old holder keeps nothing:
//! no service, no `dummyvip0`, no guard), on SIGKILL of the worker (the
//! supervisor's release) and on link down.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cplb_lab::{API_PORT, ControlPlane, Options};
use cplb_vm::{Vm, VmOptions};

const CPLB: &str = env!("CARGO_BIN_EXE_cplb");
const VIP: &str = "192.0.2.100";
/// Short, so a failed real server goes within the test's patience (k0s's
/// default is 1m).
const DELAY_LOOP: &str = "2s";
/// How long any one expected change may take in the slow VM.
const PATIENCE: Duration = Duration::from_secs(90);

/// The host half: boots the VM and runs the VM half in it.
#[test]
fn ipvs_mode_in_a_vm() {
    let vm = Vm::boot_with(VmOptions {
        memory_mib: 1536,
        cpus: 2,
        run_timeout: Duration::from_secs(1500),
        ..VmOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("cplb-vm: boot took {:?}", vm.boot_time());
    let exe = std::env::current_exe().expect("test binary path");
    let out = vm
        .run(&format!(
            "export CPLB_BIN={CPLB} RUST_BACKTRACE=1\ncd /tmp\n{} --exact ipvs_lab_inside_the_vm --ignored --nocapture --test-threads 1 2>&1",
            exe.display()
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", out.stdout);
    assert!(out.success(), "the VM half failed:\n{out}");
    assert!(
        out.stdout.contains("test result: ok. 1 passed"),
        "the VM half did not run:\n{out}"
    );
}

/// The configuration of controller `c`: k0s's `cplb-ipvs` setup.
fn ipvs_config(plane: &ControlPlane, i: usize) -> String {
    let c = &plane.controllers()[i];
    let peers: Vec<String> = plane
        .controllers()
        .iter()
        .filter(|o| o.ip != c.ip)
        .map(|o| o.ip.to_string())
        .collect();
    format!(
        "spec:\n  api:\n    port: {API_PORT}\n  network:\n    controlPlaneLoadBalancing:\n      enabled: true\n      type: Keepalived\n      keepalived:\n        vrrpInstances:\n          - virtualIPs: [\"{VIP}/24\"]\n            authPass: lab\n            interface: eth0\n            unicastSourceIP: {ip}\n            unicastPeers: [{peers}]\n        virtualServers:\n          - ipAddress: {VIP}\n            delayLoop: {DELAY_LOOP}\n\
         cplb:\n  kubeconfig: {kubeconfig}\n  adminAddress: {admin}\n",
        ip = c.ip,
        peers = peers.join(", "),
        kubeconfig = c.kubeconfig.display(),
        admin = cplb_lab::ADMIN_ADDRESS,
    )
}

/// The lab, with helpers reading the kernel of each controller.
struct IpvsLab {
    plane: ControlPlane,
    started: Instant,
}

impl IpvsLab {
    fn sh(&self, i: usize, script: &str) -> std::process::Output {
        // Failing commands are answers here (no dummyvip0, no table).
        let c = &self.plane.controllers()[i];
        let mut cmd = self.plane.lab().command_in(&c.netns, "sh");
        cmd.args(["-c", script]).stdin(std::process::Stdio::null());
        cmd.output()
            .unwrap_or_else(|e| panic!("sh in {}: {e}", c.netns))
    }

    fn stdout(&self, i: usize, script: &str) -> String {
        String::from_utf8_lossy(&self.sh(i, script).stdout).into_owned()
    }

    /// `ipvsadm --save -n` lines on controller `i` (k0s's check).
    fn ipvsadm(&self, i: usize) -> Vec<String> {
        self.stdout(i, "ipvsadm --save -n")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The real servers `ipvsadm --save -n` lists for VIP:6443 on `i`,
    /// with their weights.
    fn real_servers(&self, i: usize) -> Vec<(String, u32)> {
        let prefix = format!("-a -t {VIP}:{API_PORT} -r ");
        self.ipvsadm(i)
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|rest| {
                let mut words = rest.split_whitespace();
                let rs = words.next().unwrap_or_default().to_owned();
                let weight = rest
                    .split(" -w ")
                    .nth(1)
                    .and_then(|w| w.split_whitespace().next())
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(u32::MAX);
                (rs, weight)
            })
            .collect()
    }

    fn has_service(&self, i: usize) -> bool {
        self.ipvsadm(i)
            .iter()
            .any(|l| l.starts_with(&format!("-A -t {VIP}:{API_PORT}")))
    }

    /// The controllers with the service, in order.
    fn with_service(&self) -> Vec<usize> {
        (0..3).filter(|&i| self.has_service(i)).collect()
    }

    /// `inet ...` lines of `dummyvip0` on `i` (`None`: no such link).
    fn dummy(&self, i: usize) -> Option<Vec<String>> {
        let out = self.sh(i, "ip -o addr show dev dummyvip0");
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| {
                    let words: Vec<&str> = l.split_whitespace().collect();
                    let at = words.iter().position(|w| *w == "inet" || *w == "inet6")?;
                    Some(format!("{} {}", words[at], words.get(at + 1)?))
                })
                .filter(|l| !l.starts_with("inet6 fe80"))
                .collect()
        })
    }

    fn guard_present(&self, i: usize) -> bool {
        self.sh(i, "nft list table arp cplb_ipvs").status.success()
    }

    fn apiserver(&self, i: usize) -> String {
        format!("{}:{API_PORT}", self.plane.controllers()[i].ip)
    }

    fn all_apiservers(&self) -> BTreeSet<String> {
        (0..3).map(|i| self.apiserver(i)).collect()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..3 {
            let log = self.plane.agent_log(i);
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            out.push_str(&format!("--- ctl{} (last 40 lines) ---\n{tail}\n", i + 1));
        }
        out
    }

    /// Waits for `what`; on timeout fails with the agents' logs.
    fn wait<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        let value = cplb_e2e::wait_for(what, PATIENCE, &mut probe)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        eprintln!(
            "[{:>6.1}s] {what} (after {:.1}s)",
            self.started.elapsed().as_secs_f64(),
            start.elapsed().as_secs_f64()
        );
        value
    }

    /// Exactly one VIP holder, the only controller with the service, which
    /// lists `expected` as real servers at weight 1.
    fn settled(&self, expected: &BTreeSet<String>) -> usize {
        self.wait(
            "one holder with the service and the expected real servers",
            || {
                let holder = match self.plane.holders().ok()?.as_slice() {
                    [one] => *one,
                    _ => return None,
                };
                let rs = self.real_servers(holder);
                let listed: BTreeSet<String> = rs.iter().map(|(a, _)| a.clone()).collect();
                (self.with_service() == [holder]
                    && &listed == expected
                    && rs.iter().all(|(_, w)| *w == 1))
                .then_some(holder)
            },
        )
    }

    /// Runs `script` on the client; its stdout.
    fn client(&self, script: &str) -> String {
        let out = self
            .plane
            .lab()
            .exec_in(self.plane.client_netns(), "sh", ["-c", script])
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The client's established connections to VIP:6443, by local address.
    fn established(&self) -> Vec<String> {
        self.client(&format!("ss -Htn state established dst {VIP}:{API_PORT}"))
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
            .collect()
    }

    fn say(&self, what: &str) {
        eprintln!("[{:>6.1}s] == {what}", self.started.elapsed().as_secs_f64());
    }
}

/// The VM half: the lab in IPVS mode.
#[test]
#[ignore = "runs inside the VM, started by ipvs_mode_in_a_vm"]
fn ipvs_lab_inside_the_vm() {
    if std::env::var_os("CPLB_IN_VM").is_none() {
        eprintln!("skipped: this half runs only inside the VM (ipvs_mode_in_a_vm)");
        return;
    }
    let plane = ControlPlane::start(Options {
        start_agents: false,
        log_level: Some("info,cplb=debug".to_owned()),
        ..Options::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut lab = IpvsLab {
        plane,
        started: Instant::now(),
    };
    for i in 0..3 {
        let text = ipvs_config(&lab.plane, i);
        std::fs::write(&lab.plane.controllers()[i].config, text).unwrap();
    }
    // Validate agrees before anything runs.
    let validate = lab
        .plane
        .cplb(
            0,
            &[
                "validate",
                &lab.plane.controllers()[0].config.display().to_string(),
            ],
        )
        .unwrap();
    assert!(validate.status.success(), "{validate:?}");
    for i in 0..3 {
        lab.plane.start_agent_with(i, &["--supervise"]).unwrap();
    }

    lab.say("k0s's cplb-ipvs assertions");
    let all = lab.all_apiservers();
    // Health-aware mastership: each node starts degraded and earns its
    // base priority; the VIP may move once meanwhile.
    lab.wait("every agent healthy at its base priority", || {
        (0..3)
            .all(|i| lab.plane.agent_at_base_priority(i))
            .then_some(())
    });
    let holder = lab.settled(&all);
    for i in 0..3 {
        let dummy = lab.wait("dummyvip0 on every controller", || lab.dummy(i));
        assert_eq!(dummy, [format!("inet {VIP}/32")], "ctl{}", i + 1);
    }
    for i in 0..3 {
        // ipvsadm on the inactive nodes lists nothing of ours.
        let save = lab.ipvsadm(i);
        if i == holder {
            for rs in &all {
                let line = format!("-a -t {VIP}:{API_PORT} -r {rs} -g -w 1");
                assert!(save.contains(&line), "{line} in {save:?}");
            }
            assert!(
                save.contains(&format!("-A -t {VIP}:{API_PORT} -s rr -p 360")),
                "{save:?}"
            );
        } else {
            assert!(
                !save.iter().any(|l| l.contains(VIP)),
                "ctl{}: {save:?}",
                i + 1
            );
        }
        assert!(lab.guard_present(i), "ARP guard table on ctl{}", i + 1);
    }
    // No proxy and no REDIRECT rule in IPVS mode.
    for i in 0..3 {
        assert!(lab.plane.redirect_rules(i).unwrap().is_empty());
        let listening = lab.stdout(i, "ss -Hltn 'sport = :6444'");
        assert!(listening.trim().is_empty(), "{listening}");
    }

    lab.say("HTTPS through the VIP (DR): persistence keeps a client on one apiserver");
    let fingerprints = lab.plane.fingerprints().unwrap();
    let prober = lab.plane.client_prober(Duration::from_secs(5)).unwrap();
    let vip_api: SocketAddr = lab.plane.vip_api();
    let mut seen = BTreeSet::new();
    for _ in 0..5 {
        let answer = lab.wait("an HTTPS answer through the VIP", || {
            prober.get(vip_api, "/version").ok()
        });
        assert_eq!(answer.status, 200);
        assert!(
            fingerprints.contains(&Some(answer.fingerprint.clone())),
            "{answer:?} is one of the apiservers"
        );
        seen.insert(answer.fingerprint);
    }
    assert_eq!(seen.len(), 1, "persistence 360: one apiserver, {seen:?}");

    lab.say("ARP: only the holder answers for the VIP");
    let client = lab.plane.client_netns().to_owned();
    let mac = |i: usize| {
        lab.stdout(
            i,
            "ip link show eth0 | sed -n 's/.*ether \\([^ ]*\\).*/\\1/p'",
        )
        .trim()
        .to_owned()
    };
    let arp = lab
        .plane
        .lab()
        .exec_in(
            &client,
            "sh",
            [
                "-c",
                &format!(
                    "tcpdump -l -n -e -i eth0 'arp[6:2] = 2' >/tmp/arp.$$ 2>/tmp/arp.$$.err &
                     pid=$!
                     for i in $(seq 100); do grep -q listening /tmp/arp.$$.err && break; sleep 0.1; done
                     for i in 1 2 3; do
                       ip neigh flush dev eth0
                       ping -c1 -W2 {VIP} >/dev/null 2>&1 || true
                     done
                     sleep 0.5; kill $pid; wait
                     sed -n 's/.*Reply {VIP} is-at \\([0-9a-f:]*\\).*/\\1/p' /tmp/arp.$$"
                ),
            ],
        )
        .unwrap();
    let answers: Vec<String> = String::from_utf8_lossy(&arp.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(answers.len() >= 3, "{arp:?}");
    let macs: BTreeSet<&str> = answers.iter().map(String::as_str).collect();
    let holder_mac = mac(holder);
    // Checked at the end, so one run shows every other finding too.
    let arp_finding = (macs != BTreeSet::from([holder_mac.as_str()])).then(|| {
        let mut why = format!("ARP answers {answers:?}, holder ctl{} is {holder_mac}\n", holder + 1);
        for i in 0..3 {
            why.push_str(&format!(
                "ctl{}: mac {}\n{}\n",
                i + 1,
                mac(i),
                lab.stdout(i, "ip -br link; ip -br addr; nft list table arp cplb_ipvs 2>&1; sysctl net.ipv4.conf.eth0.arp_announce net.ipv4.conf.eth0.arp_ignore")
            ));
        }
        why
    });

    lab.say("status and metrics show the kernel's services");
    let status = lab.plane.status(holder).unwrap();
    let ipvs = &status["ipvs"];
    assert_eq!(ipvs["syncDaemon"], "master", "{status}");
    assert_eq!(ipvs["services"][0]["address"], format!("{VIP}:{API_PORT}"));
    assert_eq!(
        ipvs["services"][0]["realServers"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    let other = (holder + 1) % 3;
    let backup = lab.plane.status(other).unwrap();
    assert_eq!(backup["ipvs"]["syncDaemon"], "backup", "{backup}");
    assert_eq!(backup["ipvs"]["services"], serde_json::json!([]));
    assert!(status["proxy"].is_null() && status["netfilter"].is_null());
    let text = lab.plane.cplb(holder, &["status"]).unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("IPVS: VIPs held 192.0.2.100"), "{text}");
    assert!(
        text.contains(&format!("TCP {VIP}:{API_PORT} rr persistence 360s")),
        "{text}"
    );
    let metrics = lab.stdout(
        holder,
        "wget -qO- http://127.0.0.1:9440/metrics || curl -s http://127.0.0.1:9440/metrics",
    );
    assert!(metrics.contains("cplb_ipvs_services 1"), "{metrics}");
    assert!(metrics.contains("cplb_ipvs_sync_master 1"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "cplb_ipvs_real_server_weight{{service=\"{VIP}:{API_PORT}\",real_server=\"{}\"}} 1",
            lab.apiserver(holder)
        )),
        "{metrics}"
    );
    // Idempotent: once settled, resyncs change nothing.
    let changes = |s: &serde_json::Value| s["ipvs"]["changes"].as_u64().unwrap_or(0);
    let before = changes(&lab.plane.status(holder).unwrap());
    lab.wait("three more resyncs", || {
        let s = lab.plane.status(holder).ok()?;
        (s["ipvs"]["reconciles"].as_u64()? >= status["ipvs"]["reconciles"].as_u64()? + 3)
            .then_some(())
    });
    assert_eq!(changes(&lab.plane.status(holder).unwrap()), before);

    lab.say("a dead apiserver leaves the real servers, and comes back");
    let dead = (holder + 1) % 3;
    lab.plane.stop_apiserver(dead).unwrap();
    let died = Instant::now();
    let mut drained_seen = false;
    lab.wait("the dead apiserver gone from the real servers", || {
        let rs = lab.real_servers(holder);
        drained_seen |= rs.iter().any(|(a, w)| *a == lab.apiserver(dead) && *w == 0);
        (!rs.is_empty() && !rs.iter().any(|(a, _)| *a == lab.apiserver(dead))).then_some(())
    });
    eprintln!(
        "dead apiserver removed {:.1}s after it died (weight 0 seen first: {drained_seen})",
        died.elapsed().as_secs_f64()
    );
    lab.plane.start_apiserver(dead).unwrap();
    assert_eq!(lab.settled(&all), holder, "the VIP stayed");

    lab.say("SIGTERM of the holder: the services move with the VIP");
    let old = holder;
    let exit = lab.plane.stop_agent(old, Duration::from_secs(60)).unwrap();
    assert!(exit.success(), "{exit:?}\n{}", lab.logs());
    let holder = lab.settled(&all);
    assert_ne!(holder, old);
    assert!(!lab.has_service(old), "{:?}", lab.ipvsadm(old));
    assert_eq!(lab.dummy(old), None, "dummyvip0 deleted on stop");
    assert!(!lab.guard_present(old), "guard removed on stop");
    lab.plane.start_agent_with(old, &["--supervise"]).unwrap();
    lab.wait("the restarted agent's dummyvip0", || lab.dummy(old));
    assert_eq!(
        lab.settled(&all),
        holder,
        "a restarted agent does not take over"
    );

    lab.say("SIGKILL of the holder's worker: the supervisor releases, the services move");
    let old = holder;
    let workers = lab.plane.agent_children(old).unwrap();
    assert_eq!(workers.len(), 1, "{workers:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(workers[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let holder = lab.wait("another holder after the SIGKILL", || {
        match lab.plane.holders().ok()?.as_slice() {
            [one] if *one != old && lab.has_service(*one) => Some(*one),
            _ => None,
        }
    });
    lab.wait("no service left on the killed node", || {
        (!lab.has_service(old)).then_some(())
    });
    assert_eq!(lab.settled(&all), holder);
    lab.wait("the restarted worker's dummyvip0", || lab.dummy(old));

    lab.say("link down on the holder: the services move");
    let old = holder;
    lab.plane.set_link(old, false).unwrap();
    let holder = lab.wait("another holder with the service after link down", || {
        let holders = lab.plane.holders().ok()?;
        lab.with_service()
            .into_iter()
            .find(|&i| i != old && holders.contains(&i))
    });
    lab.wait("no service left on the node whose link is down", || {
        (!lab.has_service(old)).then_some(())
    });
    lab.plane.set_link(old, true).unwrap();
    // Back on the LAN: one holder with the services again (which one is
    // VRRP's business: two Masters meeting keep the higher address).
    let after = lab.settled(&all);
    eprintln!(
        "link back: ctl{} holds the VIP (ctl{} took over during the outage)",
        after + 1,
        holder + 1
    );

    lab.say("a watch through the VIP survives SIGTERM of the holder (connection sync)");
    let holder = lab.settled(&all);
    watch_survives_failover(&mut lab, holder, &all, Failure::Term);
    lab.say("a watch through the VIP survives SIGKILL of the holder's worker");
    let holder = lab.settled(&all);
    watch_survives_failover(&mut lab, holder, &all, Failure::Kill);
    lab.say("a watch through the VIP survives link down of the holder");
    let holder = lab.settled(&all);
    watch_survives_failover(&mut lab, holder, &all, Failure::LinkDown);

    assert_eq!(arp_finding, None, "only the holder answers ARP");
    lab.say("done");
}

/// The star: one HTTPS watch (`kubectl get --raw ...?watch=true`,
/// a single request that never reconnects) through the VIP keeps streaming
/// events on the same connection after the holder is stopped, because the
/// new holder learnt the connection from the old one's sync daemon. The
/// client must not be balanced to the stopped node's own apiserver (its
/// `dummyvip0` goes with the agent), so the VIP is moved first if needed.
/// How the holder goes in [`watch_survives_failover`].
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// SIGTERM to the agent (its supervisor passes it on).
    Term,
    /// SIGKILL to the worker: the supervisor releases and restarts it.
    Kill,
    /// The holder's LAN link goes down.
    LinkDown,
}

fn watch_survives_failover(
    lab: &mut IpvsLab,
    mut holder: usize,
    all: &BTreeSet<String>,
    failure: Failure,
) {
    let vip_api = lab.plane.vip_api();
    let prober = lab.plane.client_prober(Duration::from_secs(5)).unwrap();
    let mut target = None;
    for _ in 0..3 {
        let fingerprints = lab.plane.fingerprints().unwrap();
        let answer = lab.wait("an HTTPS answer through the VIP", || {
            prober.get(vip_api, "/version").ok()
        });
        let x = fingerprints
            .iter()
            .position(|f| f.as_deref() == Some(answer.fingerprint.as_str()))
            .expect("the answer came from one of the apiservers");
        if x != holder {
            target = Some(x);
            break;
        }
        // The client sticks to the holder's own apiserver: move the VIP.
        let exit = lab
            .plane
            .stop_agent(holder, Duration::from_secs(60))
            .unwrap();
        assert!(exit.success(), "{exit:?}");
        lab.plane
            .start_agent_with(holder, &["--supervise"])
            .unwrap();
        holder = lab.settled(all);
    }
    let target = target.expect("a client balanced to another node than the holder");
    eprintln!(
        "client sticks to ctl{}, holder ctl{}",
        target + 1,
        holder + 1
    );
    let client = lab.plane.client_netns().to_owned();
    let out = lab.plane.dir().join("watch.out");
    let mut cmd = lab.plane.lab().command_in(&client, "kubectl");
    cmd.arg("--kubeconfig")
        .arg(lab.plane.client_kubeconfig())
        .args([
            "get",
            "--raw",
            "/api/v1/namespaces/default/endpoints?watch=true&fieldSelector=metadata.name%3Dkubernetes",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(lab.plane.dir().join("watch.err")).unwrap());
    let watch = lab.plane.lab().spawn(cmd).unwrap();
    let read = || std::fs::read_to_string(&out).unwrap_or_default();
    let err_file = lab.plane.dir().join("watch.err");
    let err = || std::fs::read_to_string(&err_file).unwrap_or_default();
    let ips: Vec<std::net::IpAddr> = lab.plane.controllers().iter().map(|c| c.ip).collect();
    let events = |text: &str| text.matches("\"type\":\"").count();
    // An event before the failover proves the stream is up.
    let store = lab.plane.cluster().store().clone();
    store.set_kubernetes_endpoints(&ips[..2], API_PORT);
    let before = lab.wait("the watch's first event", || {
        let n = events(&read());
        (n >= 1).then_some(n)
    });
    // Every backup learnt the connection from the holder's sync daemon.
    let backups: Vec<usize> = (0..3).filter(|&i| i != holder).collect();
    for &b in &backups {
        lab.wait("the watch's connection synced to a backup", || {
            lab.stdout(b, "ipvsadm -Lnc")
                .lines()
                .any(|l| l.contains("ESTABLISHED") && l.contains("192.0.2.50:"))
                .then_some(())
        });
    }
    let connection = lab.established();
    assert_eq!(connection.len(), 1, "{connection:?}");
    match failure {
        Failure::Term => {
            let exit = lab
                .plane
                .stop_agent(holder, Duration::from_secs(60))
                .unwrap();
            assert!(exit.success(), "{exit:?}");
        }
        Failure::Kill => {
            let workers = lab.plane.agent_children(holder).unwrap();
            assert_eq!(workers.len(), 1, "{workers:?}");
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(workers[0] as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        }
        Failure::LinkDown => lab.plane.set_link(holder, false).unwrap(),
    }
    // (A node whose link is down still counts as a holder while the VIP
    // is on its interface.)
    let new_holder = lab.wait("a new holder with the service", || {
        let holders = lab.plane.holders().ok()?;
        (0..3).find(|&i| i != holder && holders.contains(&i) && lab.has_service(i))
    });
    // The client's packets now go to the new holder (its gratuitous ARP):
    // a connection it did not know would be reset there (sloppy_tcp=0, the
    // VIP is local on its dummyvip0), while the apiserver's answers go
    // straight to the client (DR) whatever happens.
    let new_mac = lab
        .stdout(
            new_holder,
            "ip link show eth0 | sed -n 's/.*ether \\([^ ]*\\).*/\\1/p'",
        )
        .trim()
        .to_owned();
    lab.wait(
        "the client's ARP entry for the VIP on the new holder",
        || {
            lab.client(&format!("ip neigh show {VIP}"))
                .contains(&new_mac)
                .then_some(())
        },
    );
    // Two events after the failover: the client's ACK of the first goes
    // through the new holder, which would reset an unknown connection.
    for (round, list) in [(1, &ips[..1]), (2, &ips[..])] {
        store.set_kubernetes_endpoints(list, API_PORT);
        lab.wait(
            "an event after the failover, on the same connection",
            || {
                let text = read();
                assert!(
                    err().is_empty(),
                    "the watch failed after the failover: {}\n{text}",
                    err()
                );
                (events(&text) >= before + round).then_some(())
            },
        );
    }
    assert_eq!(lab.established(), connection, "the same connection");
    let local = &connection[0];
    let entries = lab.stdout(new_holder, "ipvsadm -Lnc");
    assert!(
        entries
            .lines()
            .any(|l| l.contains("ESTABLISHED") && l.contains(local.as_str())),
        "the new holder forwards {local}: {entries}"
    );
    eprintln!(
        "watch kept its connection: holder ctl{} {failure:?}, ctl{} took over, {} events",
        holder + 1,
        new_holder + 1,
        events(&read())
    );
    let _ = lab.plane.lab().kill(watch);
    match failure {
        Failure::Term => lab
            .plane
            .start_agent_with(holder, &["--supervise"])
            .unwrap(),
        // The supervisor restarts its worker.
        Failure::Kill => {
            lab.wait("the restarted worker's dummyvip0", || lab.dummy(holder));
        }
        Failure::LinkDown => {
            lab.plane.set_link(holder, true).unwrap();
            lab.settled(all);
        }
    }
}
