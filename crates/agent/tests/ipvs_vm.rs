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
//!
//! Also here, each with its own VM: the rolling migration from k0s's
//! keepalived in IPVS mode to cplb ([`migration_inside_the_vm`]), an IPv6
//! VIP ([`ipv6_vips_inside_the_vm`]), and the IPVS benchmark
//! ([`ipvs_bench_inside_the_vm`], ignored: `bench/ipvs/run.sh`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cplb_lab::{API_PORT, ControlPlane, Options};
use cplb_vm::{Vm, VmOptions};
use nix::sys::signal::Signal;

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
    run_vm_half("ipvs_lab_inside_the_vm", Duration::from_secs(1500));
}

/// The host half of [`migration_inside_the_vm`].
#[test]
fn migration_from_k0s_keepalived_ipvs_in_a_vm() {
    run_vm_half("migration_inside_the_vm", Duration::from_secs(1500));
}

/// The benchmark (`bench/ipvs/run.sh`): boots the VM, runs
/// [`ipvs_bench_inside_the_vm`] with `$CPLB_BENCH_REPS` repetitions
/// (default 3) and writes its report to `$CPLB_BENCH_OUT` if set.
#[test]
#[ignore = "benchmark: bench/ipvs/run.sh"]
fn ipvs_bench_in_a_vm() {
    let reps = bench_reps();
    let out = run_vm_half_with(
        "ipvs_bench_inside_the_vm",
        Duration::from_secs(5400),
        &format!("export CPLB_BENCH_REPS={reps}\n"),
    );
    let report = out
        .split(REPORT_START)
        .nth(1)
        .and_then(|r| r.split(REPORT_END).next())
        .expect("the VM half printed a report");
    println!("{report}");
    if let Some(path) = std::env::var_os("CPLB_BENCH_OUT") {
        std::fs::write(&path, report).unwrap();
    }
}

/// `$CPLB_BENCH_REPS`, 3 by default.
fn bench_reps() -> usize {
    std::env::var("CPLB_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
}

/// Boots the VM and runs the VM half `name` of this test binary in it.
fn run_vm_half(name: &str, timeout: Duration) -> String {
    run_vm_half_with(name, timeout, "")
}

/// [`run_vm_half`], with `env` (shell lines) before the test binary.
fn run_vm_half_with(name: &str, timeout: Duration, env: &str) -> String {
    let vm = Vm::boot_with(VmOptions {
        memory_mib: 1536,
        cpus: 2,
        run_timeout: timeout,
        ..VmOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("cplb-vm: boot took {:?}", vm.boot_time());
    let exe = std::env::current_exe().expect("test binary path");
    let out = vm
        .run(&format!(
            "export CPLB_BIN={CPLB} RUST_BACKTRACE=1\n{env}cd /tmp\n{} --exact {name} --ignored --nocapture --test-threads 1 2>&1",
            exe.display()
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", out.stdout);
    assert!(out.success(), "the VM half failed:\n{out}");
    assert!(
        out.stdout.contains("test result: ok. 1 passed"),
        "the VM half did not run:\n{out}"
    );
    out.stdout
}

/// The lab, with helpers reading the kernel of each controller.
struct IpvsLab {
    plane: ControlPlane,
    started: Instant,
}

impl IpvsLab {
    /// The lab without agents (`None`, said, outside the VM).
    fn start(family: cplb_lab::Family, log_level: &str) -> Option<IpvsLab> {
        if std::env::var_os("CPLB_IN_VM").is_none() {
            eprintln!("skipped: this half runs only inside the VM (its host half starts it)");
            return None;
        }
        let plane = ControlPlane::start(Options {
            start_agents: false,
            family,
            log_level: Some(log_level.to_owned()),
            ..Options::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Some(IpvsLab {
            plane,
            started: Instant::now(),
        })
    }

    /// Waits until every running agent is healthy at its base priority.
    fn wait_base_priority(&self) {
        self.wait("every agent healthy at its base priority", || {
            (0..3)
                .all(|i| self.plane.agent_at_base_priority(i))
                .then_some(())
        });
    }

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
        let prefix = format!("-a -t {} -r ", self.service());
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
            .any(|l| l.starts_with(&format!("-A -t {} ", self.service())))
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
        SocketAddr::new(self.plane.controllers()[i].ip, API_PORT).to_string()
    }

    /// VIP:6443 as `ipvsadm` prints it (`[2001:db8::100]:6443` for IPv6).
    fn service(&self) -> String {
        self.plane.vip_api().to_string()
    }

    fn all_apiservers(&self) -> BTreeSet<String> {
        (0..3).map(|i| self.apiserver(i)).collect()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for i in 0..3 {
            let log = if self.plane.legacy_running(i) {
                self.plane.legacy_log(i)
            } else {
                self.plane.agent_log(i)
            };
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
            || self.settled_now(expected),
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
    let Some(mut lab) = IpvsLab::start(cplb_lab::Family::V4, "info,cplb=debug") else {
        return;
    };
    for i in 0..3 {
        lab.plane.write_ipvs_config(i, DELAY_LOOP).unwrap();
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
    lab.wait_base_priority();
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
    cplb_lab::bench::kill_worker(&lab.plane, old).unwrap();
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
            cplb_lab::bench::kill_worker(&lab.plane, holder).unwrap();
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

/// k0s's `delay_loop` for the keepalived controllers of the migration (the
/// cplb ones get [`DELAY_LOOP`]).
const K0S_DELAY_LOOP: &str = "2";

/// The VM half of the rolling migration from k0s's IPVS mode: three
/// controllers on keepalived as k0s renders it in IPVS mode (`dummyvip0`,
/// `virtual_server` with `TCP_CHECK`, the MASTER-only include switched by
/// `keepalived-setstate`), then each replaced by `cplb run --supervise` with
/// the same `virtualServers`, backups first and the holder last. After
/// every step: exactly one VIP holder, the services on that node only
/// (listing the three apiservers), HTTPS answered through the VIP, and no
/// keepalived complaining about the cplb nodes' adverts.
#[test]
#[ignore = "runs inside the VM, started by migration_from_k0s_keepalived_ipvs_in_a_vm"]
fn migration_inside_the_vm() {
    let Some(mut lab) = IpvsLab::start(cplb_lab::Family::V4, "info,cplb=debug") else {
        return;
    };
    let keepalived = cplb_e2e::keepalived::binary().unwrap();
    eprintln!(
        "keepalived: {} ({})",
        keepalived.version,
        keepalived.path.display()
    );
    for i in 0..3 {
        lab.plane.start_legacy_ipvs(i, K0S_DELAY_LOOP).unwrap();
        lab.plane.write_ipvs_config(i, DELAY_LOOP).unwrap();
    }
    let all = lab.all_apiservers();
    let prober = lab.plane.client_prober(Duration::from_secs(5)).unwrap();
    lab.say("three keepalived controllers in k0s's IPVS mode");
    let holder = lab.mixed_steady(&all, &prober);
    // k0s's own check on the keepalived nodes: dummyvip0 everywhere.
    for i in 0..3 {
        assert_eq!(lab.dummy(i), Some(vec![format!("inet {VIP}/32")]));
    }
    let mut order: Vec<usize> = (0..3).filter(|&i| i != holder).collect();
    order.push(holder);
    for (step, i) in order.into_iter().enumerate() {
        lab.say(&format!(
            "step {}: ctl{} from keepalived to cplb",
            step + 1,
            i + 1
        ));
        lab.plane.stop_legacy(i, Duration::from_secs(30)).unwrap();
        assert!(
            !lab.has_service(i),
            "keepalived left its services: {:?}",
            lab.ipvsadm(i)
        );
        assert_eq!(lab.dummy(i), None, "k0s's stop deletes dummyvip0");
        lab.plane.start_agent_with(i, &["--supervise"]).unwrap();
        lab.wait("the new cplb node at its base priority", || {
            lab.plane.agent_at_base_priority(i).then_some(())
        });
        lab.wait("the new cplb node's dummyvip0", || lab.dummy(i));
        let holder = lab.mixed_steady(&all, &prober);
        eprintln!("after step {}: ctl{} holds the VIP", step + 1, holder + 1);
    }
    // All on cplb: the holder's sync daemon is master again.
    let holder = lab.settled(&all);
    let status = lab.plane.status(holder).unwrap();
    assert_eq!(status["ipvs"]["syncDaemon"], "master", "{status}");
    lab.say("done");
}

impl IpvsLab {
    /// One step of the migration is steady: one holder, the services on it
    /// only (three real servers at weight 1), HTTPS through the VIP, and
    /// that for a few seconds (each keepalived reload or cplb resync on the
    /// way), with no keepalived complaining. Returns the holder.
    fn mixed_steady(&self, all: &BTreeSet<String>, prober: &cplb_lab::Prober) -> usize {
        let holder = self.settled(all);
        let vip_api = self.plane.vip_api();
        let answer = self.wait("an HTTPS answer through the VIP", || {
            prober.get(vip_api, "/version").ok()
        });
        assert_eq!(answer.status, 200);
        // Stays so: bounded, polling the kernel (each poll takes a while in
        // the VM).
        for _ in 0..5 {
            let holders = self.plane.holders().unwrap();
            assert_eq!(holders, [holder], "one holder\n{}", self.logs());
            assert_eq!(
                self.with_service(),
                [holder],
                "the services on the holder only\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        for k in 0..3 {
            let complaints = self.plane.legacy_complaints(k);
            assert!(
                complaints.is_empty(),
                "keepalived on ctl{}: {complaints:?}",
                k + 1
            );
        }
        holder
    }
}

const REPORT_START: &str = "==== cplb ipvs bench report ====\n";
const REPORT_END: &str = "==== end of report ====\n";

/// The stacks of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BenchStack {
    /// keepalived as k0s renders it in IPVS mode, with this `delay_loop`.
    Keepalived(&'static str),
    /// `cplb run --supervise` in IPVS mode, with this `delayLoop`.
    Cplb(&'static str),
}

impl BenchStack {
    fn name(self) -> String {
        match self {
            BenchStack::Keepalived(d) => format!("keepalived (k0s IPVS, delay_loop {d})"),
            BenchStack::Cplb(d) => format!("cplb IPVS (delayLoop {d})"),
        }
    }
}

/// The VM half of the benchmark: one lab; keepalived as k0s renders it in
/// IPVS mode, then cplb in IPVS mode, then cplb in proxy mode. Measures
/// (1) the client-visible outage when the holder's link goes down and
/// when it is SIGKILLed (keepalived's parent, whose children then stop
/// gracefully, as in `cplb-lab bench`; cplb's worker under `--supervise`),
/// with `bench::probe_fault` (HTTPS GET /version through the VIP every
/// 10 ms, a new connection each); (2) the time from an apiserver dying to
/// its real server leaving the holder's IPVS service (removed, or weight 0:
/// no new connections), keepalived with `delay_loop` 60 (k0s's default,
/// capped) and 1 against cplb with the default `delayLoop`; (3) HTTPS
/// requests per second, each on a new connection, from 4 client threads
/// through the VIP: IPVS (cplb) against cplb's userspace proxy.
#[test]
#[ignore = "runs inside the VM, started by ipvs_bench_in_a_vm"]
fn ipvs_bench_inside_the_vm() {
    let reps = bench_reps();
    let Some(mut lab) = IpvsLab::start(cplb_lab::Family::V4, "info") else {
        return;
    };
    let all = lab.all_apiservers();
    let keepalived = cplb_e2e::keepalived::binary().unwrap();
    let mut report = format!(
        "keepalived {} ({}); qemu TCG, 2 vCPUs; {reps} repetitions\n\n",
        keepalived.version,
        keepalived.path.display()
    );
    let mut outages: Vec<(BenchStack, &str, Vec<Outage>)> = Vec::new();
    let mut removals: Vec<(BenchStack, Vec<Option<f64>>)> = Vec::new();

    // (stack, removal measured, outages measured): keepalived with k0s's
    // default delay_loop (60) for the removal only; cplb's default
    // delayLoop (1m) and 1s, whose outages should not differ.
    let plan = [
        (BenchStack::Keepalived("60"), true, false),
        (BenchStack::Keepalived("1"), true, true),
        (BenchStack::Cplb("1m"), true, true),
        (BenchStack::Cplb("1s"), false, true),
    ];
    let mut ipvs_rate = Vec::new();
    for (stack, removal, faults) in plan {
        lab.bench_start(stack);
        if removal {
            removals.push((stack, lab.bench_removals(stack, reps, &all)));
        }
        for fault in ["link down", "SIGKILL"].into_iter().filter(|_| faults) {
            outages.push((stack, fault, lab.bench_outages(stack, fault, reps, &all)));
        }
        if stack == BenchStack::Cplb("1m") {
            ipvs_rate = lab.bench_rate(reps);
        }
        lab.bench_stop(stack);
    }
    // cplb in proxy mode, same lab.
    for i in 0..3 {
        lab.plane.write_proxy_config(i).unwrap();
        lab.plane.start_agent_with(i, &["--supervise"]).unwrap();
    }
    lab.wait(
        "every agent healthy at its base priority (proxy mode)",
        || {
            (0..3)
                .all(|i| lab.plane.agent_at_base_priority(i))
                .then_some(())
        },
    );
    let proxy_rate = lab.bench_rate(reps);

    let median = cplb_lab::bench::median;
    report.push_str("Client-visible outage (HTTPS GET /version through the VIP every 10 ms, new connection each):\n\n| fault on the holder | stack | median outage | samples (s; * = the client's apiserver was on the holder) |\n|---|---|---|---|\n");
    for (stack, fault, samples) in &outages {
        let values: Vec<f64> = samples.iter().map(|(s, _)| s.outage).collect();
        let raw: Vec<String> = samples
            .iter()
            .map(|(s, stuck)| {
                format!(
                    "{:.2}{}{}",
                    s.outage,
                    if *stuck { "*" } else { "" },
                    if s.recovered { "" } else { " (not recovered)" }
                )
            })
            .collect();
        report.push_str(&format!(
            "| {fault} | {} | {:.2} s | {} |\n",
            stack.name(),
            median(&values),
            raw.join(", ")
        ));
    }
    report.push_str(&format!("\nApiserver killed → its real server leaves the holder's service (removed or weight 0), capped at {REMOVAL_CAP:?}:\n\n| stack | median | samples (s) |\n|---|---|---|\n"));
    for (stack, samples) in &removals {
        let shown: Vec<String> = samples
            .iter()
            .map(|s| {
                s.map_or(format!("> {}", REMOVAL_CAP.as_secs()), |v| {
                    format!("{v:.1}")
                })
            })
            .collect();
        let values: Vec<f64> = samples
            .iter()
            .map(|s| s.unwrap_or(REMOVAL_CAP.as_secs_f64() + 1.0))
            .collect();
        let m = median(&values);
        let m = if m > REMOVAL_CAP.as_secs_f64() {
            format!("> {} s", REMOVAL_CAP.as_secs())
        } else {
            format!("{m:.1} s")
        };
        report.push_str(&format!(
            "| {} | {m} | {} |\n",
            stack.name(),
            shown.join(", ")
        ));
    }
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    report.push_str(&format!(
        "\nHTTPS requests/s through the VIP, a new connection each, {RATE_THREADS} client threads, {RATE_WINDOW:?} per run:\n\n| data path | median | runs | / proxy |\n|---|---|---|---|\n| IPVS (cplb, DR) | {:.0} | {} | {:.2} |\n| cplb userspace proxy | {:.0} | {} | 1 |\n",
        median(&ipvs_rate),
        fmt(&ipvs_rate),
        median(&ipvs_rate) / median(&proxy_rate),
        median(&proxy_rate),
        fmt(&proxy_rate),
    ));
    println!("{REPORT_START}{report}{REPORT_END}");
}

/// One outage sample, and whether the client's persistence pointed at the
/// holder's own apiserver.
type Outage = (cplb_lab::bench::Sample, bool);

/// How long the removal measurement waits.
const REMOVAL_CAP: Duration = Duration::from_secs(30);
/// Client threads of the rate measurement.
const RATE_THREADS: usize = 4;
/// One rate run.
const RATE_WINDOW: Duration = Duration::from_secs(10);

impl IpvsLab {
    fn bench_start(&mut self, stack: BenchStack) {
        self.say(&format!("bench: {}", stack.name()));
        for i in 0..3 {
            match stack {
                BenchStack::Keepalived(d) => self.plane.start_legacy_ipvs(i, d).unwrap(),
                BenchStack::Cplb(d) => {
                    self.plane.write_ipvs_config(i, d).unwrap();
                    self.plane.start_agent_with(i, &["--supervise"]).unwrap();
                }
            }
        }
        if let BenchStack::Cplb(_) = stack {
            self.wait_base_priority();
        }
    }

    fn bench_stop(&mut self, stack: BenchStack) {
        for i in 0..3 {
            match stack {
                BenchStack::Keepalived(_) => {
                    self.plane.stop_legacy(i, Duration::from_secs(30)).unwrap()
                }
                BenchStack::Cplb(_) => {
                    let exit = self.plane.stop_agent(i, Duration::from_secs(60)).unwrap();
                    assert!(exit.success(), "{exit:?}");
                }
            }
        }
        self.wait("nothing left of the stack", || {
            (self.plane.holders().ok()?.is_empty() && self.with_service().is_empty()).then_some(())
        });
    }

    /// Which controller's apiserver answers the client through the VIP.
    fn client_sticks_to(&self) -> Option<usize> {
        let fingerprints = self.plane.fingerprints().ok()?;
        let prober = self.plane.client_prober(Duration::from_secs(5)).ok()?;
        let answer = prober.get(self.plane.vip_api(), "/version").ok()?;
        fingerprints
            .iter()
            .position(|f| f.as_deref() == Some(answer.fingerprint.as_str()))
    }

    fn bench_outages(
        &mut self,
        stack: BenchStack,
        fault: &str,
        reps: usize,
        all: &BTreeSet<String>,
    ) -> Vec<Outage> {
        let mut samples = Vec::new();
        for rep in 0..reps {
            let holder = self.settled(all);
            let stuck =
                self.wait("an answer through the VIP", || self.client_sticks_to()) == holder;
            let phase = Duration::from_secs_f64((rep as f64 + 0.5) / reps as f64);
            let sample = cplb_lab::bench::probe_fault(&mut self.plane, holder, phase, false, |p| {
                match (fault, stack) {
                    ("link down", _) => p.set_link(holder, false),
                    (_, BenchStack::Keepalived(_)) => p.signal_legacy(holder, Signal::SIGKILL),
                    (_, BenchStack::Cplb(_)) => cplb_lab::bench::kill_worker(p, holder),
                }
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
            eprintln!(
                "[{:>6.1}s] {} {fault} rep {}: outage {:.3} s ({} of {} probes failed, client on the holder's apiserver: {stuck})",
                self.started.elapsed().as_secs_f64(),
                stack.name(),
                rep + 1,
                sample.outage,
                sample.failed,
                sample.probes
            );
            samples.push((sample, stuck));
            // Restore: link up; keepalived restarted as k0s's supervisor
            // does; cplb's supervisor restarts its worker by itself.
            match (fault, stack) {
                ("link down", _) => self.plane.set_link(holder, true).unwrap(),
                (_, BenchStack::Keepalived(d)) => {
                    self.plane
                        .stop_legacy(holder, Duration::from_secs(30))
                        .unwrap();
                    self.plane.start_legacy_ipvs(holder, d).unwrap();
                }
                (_, BenchStack::Cplb(_)) => {
                    self.wait("the restarted worker at its base priority", || {
                        self.plane.agent_at_base_priority(holder).then_some(())
                    });
                }
            }
            self.settled(all);
        }
        samples
    }

    fn bench_removals(
        &mut self,
        stack: BenchStack,
        reps: usize,
        all: &BTreeSet<String>,
    ) -> Vec<Option<f64>> {
        let mut samples = Vec::new();
        for rep in 0..reps {
            let holder = self.settled(all);
            // A non-holder's apiserver, alternating.
            let dead = (holder + 1 + rep % 2) % 3;
            let addr = self.apiserver(dead);
            self.plane.stop_apiserver(dead).unwrap();
            let died = Instant::now();
            let mut left = None;
            while died.elapsed() < REMOVAL_CAP {
                let rs = self.real_servers(holder);
                if !rs.is_empty() && !rs.iter().any(|(a, w)| *a == addr && *w > 0) {
                    left = Some(died.elapsed().as_secs_f64());
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!(
                "[{:>6.1}s] {} apiserver ctl{} killed rep {}: left the service after {left:?}",
                self.started.elapsed().as_secs_f64(),
                stack.name(),
                dead + 1,
                rep + 1
            );
            samples.push(left);
            self.plane.start_apiserver(dead).unwrap();
            // keepalived with delay_loop 60 takes up to a minute to add it back.
            let start = Instant::now();
            cplb_e2e::wait_for(
                "the apiserver back in the service",
                Duration::from_secs(150),
                || (self.settled_now(all) == Some(holder)).then_some(()),
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
            eprintln!("back after {:.1}s", start.elapsed().as_secs_f64());
        }
        samples
    }

    /// [`IpvsLab::settled`]'s condition, once.
    fn settled_now(&self, expected: &BTreeSet<String>) -> Option<usize> {
        let holder = match self.plane.holders().ok()?.as_slice() {
            [one] => *one,
            _ => return None,
        };
        let rs = self.real_servers(holder);
        let listed: BTreeSet<String> = rs.iter().map(|(a, _)| a.clone()).collect();
        (self.with_service() == [holder] && &listed == expected && rs.iter().all(|(_, w)| *w == 1))
            .then_some(holder)
    }

    /// HTTPS requests per second through the VIP, one run per repetition.
    fn bench_rate(&self, reps: usize) -> Vec<f64> {
        let prober = self.plane.client_prober(Duration::from_secs(1)).unwrap();
        let api = self.plane.vip_api();
        self.wait("an answer through the VIP", || {
            prober.get(api, "/version").ok()
        });
        let mut rates = Vec::new();
        for rep in 0..reps {
            let threads: Vec<_> = (0..RATE_THREADS)
                .map(|_| {
                    let prober = prober.clone();
                    std::thread::spawn(move || {
                        let netns = prober.netns().to_owned();
                        cplb_e2e::in_netns(&netns, || {
                            let start = Instant::now();
                            let (mut ok, mut failed) = (0u64, 0u64);
                            while start.elapsed() < RATE_WINDOW {
                                match prober.get_from_here(api, "/version") {
                                    Ok(a) if a.status == 200 => ok += 1,
                                    _ => failed += 1,
                                }
                            }
                            (ok, failed)
                        })
                        .unwrap()
                    })
                })
                .collect();
            let (mut ok, mut failed) = (0, 0);
            for t in threads {
                let (o, f) = t.join().unwrap();
                ok += o;
                failed += f;
            }
            let rate = ok as f64 / RATE_WINDOW.as_secs_f64();
            eprintln!("rate run {}: {rate:.0}/s ({failed} failed)", rep + 1);
            rates.push(rate);
        }
        rates
    }
}

/// The host half of [`ipv6_vips_inside_the_vm`].
#[test]
fn ipv6_vips_in_a_vm() {
    run_vm_half("ipv6_vips_inside_the_vm", Duration::from_secs(1200));
}

/// IPVS mode with an IPv6 VIP (`2001:db8::100/64`, VRRPv3, unicast
/// peers): `dummyvip0` with the VIP /128 on every controller, the service
/// `[VIP]:6443` on the holder only with the three apiservers, HTTPS through
/// the VIP (DR over IPv6), and the services moving with the VIP when the
/// holder is stopped.
#[test]
#[ignore = "runs inside the VM, started by ipv6_vips_in_a_vm"]
fn ipv6_vips_inside_the_vm() {
    let Some(mut lab) = IpvsLab::start(cplb_lab::Family::V6, "info,cplb=debug") else {
        return;
    };
    let vip = lab.plane.vip();
    assert!(vip.is_ipv6());
    for i in 0..3 {
        lab.plane.write_ipvs_config(i, DELAY_LOOP).unwrap();
        lab.plane.start_agent_with(i, &["--supervise"]).unwrap();
    }
    lab.wait_base_priority();
    let all = lab.all_apiservers();
    assert!(all.iter().all(|a| a.starts_with("[2001:db8::")), "{all:?}");
    let holder = lab.settled(&all);
    for i in 0..3 {
        let dummy = lab.wait("dummyvip0 on every controller", || lab.dummy(i));
        assert_eq!(dummy, [format!("inet6 {vip}/128")], "ctl{}", i + 1);
    }
    let save = lab.ipvsadm(holder);
    assert!(
        save.contains(&format!("-A -t {} -s rr -p 360", lab.service())),
        "{save:?}"
    );
    for i in (0..3).filter(|&i| i != holder) {
        assert!(!lab.has_service(i), "ctl{}: {:?}", i + 1, lab.ipvsadm(i));
    }

    lab.say("HTTPS through the IPv6 VIP (DR)");
    let fingerprints = lab.plane.fingerprints().unwrap();
    let prober = lab.plane.client_prober(Duration::from_secs(5)).unwrap();
    let vip_api = lab.plane.vip_api();
    let answer = lab.wait("an HTTPS answer through the VIP", || {
        prober.get(vip_api, "/version").ok()
    });
    assert_eq!(answer.status, 200);
    assert!(fingerprints.contains(&Some(answer.fingerprint)));
    let status = lab.plane.status(holder).unwrap();
    assert_eq!(
        status["ipvs"]["services"][0]["address"],
        lab.service(),
        "{status}"
    );

    lab.say("SIGTERM of the holder: the IPv6 service moves with the VIP");
    let exit = lab
        .plane
        .stop_agent(holder, Duration::from_secs(60))
        .unwrap();
    assert!(exit.success(), "{exit:?}\n{}", lab.logs());
    let new_holder = lab.settled(&all);
    assert_ne!(new_holder, holder);
    assert!(!lab.has_service(holder), "{:?}", lab.ipvsadm(holder));
    assert_eq!(lab.dummy(holder), None, "dummyvip0 deleted on stop");
    // DR needs the VIP on the real server's node: the stopped node's
    // apiserver (still running here, unlike a stopped k0s controller's)
    // takes the client's connections again only once its agent is back with
    // dummyvip0, and the client's persistence (synced to the new holder) may
    // point at it.
    lab.plane
        .start_agent_with(holder, &["--supervise"])
        .unwrap();
    lab.wait("the restarted agent's dummyvip0", || lab.dummy(holder));
    let answer = lab.wait("an HTTPS answer through the VIP after failover", || {
        prober.get(vip_api, "/version").ok()
    });
    assert_eq!(answer.status, 200);
    lab.say("done");
}
