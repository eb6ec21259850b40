//! Issue 14, findings 3 and 8, on the real `cplb` binary in network
//! namespaces: a hung `iptables` must not stall the agent (its watchdog
//! pings, its adverts, its admin endpoint), and a proxy or reconciler that
//! dies must not leave a node that looks healthy while its rules redirect
//! into a closed port.
//!
//! The hung `iptables` is a wrapper earlier on the agent's `PATH` that
//! sleeps instead of running while a flag file exists: holding the host's
//! `/run/xtables.lock` would stall every iptables user of the host.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cplb_e2e::{ChildId, Host, Lab, wait_until};
use nix::sys::signal::Signal;

#[path = "support/agent_config.rs"]
mod agent_config;
#[path = "support/notify.rs"]
mod notify;
#[path = "support/scratch.rs"]
mod scratch;
use agent_config::{VIP, write_config_with};

use notify::NotifySocket;
use scratch::Scratch;

const CPLB: &str = env!("CARGO_BIN_EXE_cplb");

fn write_config(path: &Path, kubeconfig: &Path) {
    write_config_with(path, kubeconfig, "", "");
}

/// `cplb run` in `host`'s namespace with `env` added, logging to `log`.
fn start_agent(
    lab: &Lab,
    host: &Host,
    config: &Path,
    log: &Path,
    env: &[(&str, &std::ffi::OsStr)],
) -> ChildId {
    let mut cmd = lab.command_in(&host.netns, CPLB);
    cmd.args(["run", "--config"]).arg(config);
    cmd.env("CPLB_LOG", "debug").env_remove("NOTIFY_SOCKET");
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    lab.spawn(cmd).unwrap()
}

fn holders(lab: &Lab, hosts: &[&Host]) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| {
            lab.has_address(&h.netns, &h.ifname, VIP.parse().unwrap())
                .unwrap()
        })
        .map(|h| h.name.clone())
        .collect()
}

fn redirect_rules(lab: &Lab, netns: &str) -> Vec<String> {
    let out = lab.exec_in(netns, "iptables-save", ["-t", "nat"]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("REDIRECT"))
        .map(str::to_owned)
        .collect()
}

/// `cplb status --json` in `netns` (through the admin endpoint).
fn status(lab: &Lab, netns: &str) -> serde_json::Value {
    let out = lab.exec_in(netns, CPLB, ["status", "--json"]).unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// A directory of `iptables*` wrappers that run the real binary, or, while
/// `flag` exists, record their pid in `hung` and sleep (as long as a
/// held lock or a wedged binary would).
fn hanging_iptables(scratch: &Scratch, flag: &Path, hung: &Path) -> PathBuf {
    let dir = scratch.path("bin");
    std::fs::create_dir_all(&dir).unwrap();
    for name in [
        "iptables",
        "iptables-legacy",
        "iptables-nft",
        "ip6tables",
        "ip6tables-legacy",
        "ip6tables-nft",
    ] {
        let real = Path::new("/usr/sbin").join(name);
        if !real.exists() {
            continue;
        }
        let script = format!(
            "#!/bin/sh\nif [ -e {flag} ]; then echo $$ >> {hung}; exec sleep 600; fi\nexec {real} \"$@\"\n",
            flag = flag.display(),
            hung = hung.display(),
            real = real.display(),
        );
        let path = dir.join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// Whether process `pid` still runs (a zombie does not).
fn runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                .map(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// Finding 3: with every `iptables` call hanging, the agent's loop goes on:
/// the watchdog keeps being pinged, the admin endpoint answers, adverts
/// keep the Backup from taking over; the hung command is killed after its
/// timeout and reported, and the rules check recovers once iptables works.
#[test]
fn a_hung_iptables_stalls_neither_the_watchdog_nor_the_adverts() {
    let mut lab = Lab::new().unwrap();
    let c1 = lab.add_host("c1", Some("192.0.2.11/24"), None).unwrap();
    let c2 = lab.add_host("c2", Some("192.0.2.12/24"), None).unwrap();
    let scratch = Scratch::new("hung-iptables");
    for name in ["c1", "c2"] {
        write_config(
            &scratch.path(&format!("{name}.yaml")),
            &scratch.path("missing.conf"),
        );
    }
    let (flag, hung) = (scratch.path("hang"), scratch.path("hung-pids"));
    let bin = hanging_iptables(&scratch, &flag, &hung);
    let path = std::env::join_paths(
        std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let (l1, l2) = (scratch.path("c1.log"), scratch.path("c2.log"));
    let n1 = NotifySocket::bind(scratch.path("n1.sock"));
    let n2 = NotifySocket::bind(scratch.path("n2.sock"));
    // WatchdogSec=2s: a ping is due every second.
    let a1 = start_agent(
        &lab,
        &c1,
        &scratch.path("c1.yaml"),
        &l1,
        &[
            ("PATH", path.as_os_str()),
            ("NOTIFY_SOCKET", n1.path.as_os_str()),
            ("WATCHDOG_USEC", "2000000".as_ref()),
        ],
    );
    assert!(
        n1.wait_for("READY=1", Duration::from_secs(30)),
        "{}",
        log_text(&l1)
    );
    wait_until("c1 to take the VIP", Duration::from_secs(20), || {
        holders(&lab, &[&c1, &c2]) == ["c1"]
    })
    .unwrap_or_else(|e| panic!("{e}: {}", log_text(&l1)));
    let a2 = start_agent(
        &lab,
        &c2,
        &scratch.path("c2.yaml"),
        &l2,
        &[("NOTIFY_SOCKET", n2.path.as_os_str())],
    );
    assert!(n2.wait_for("READY=1", Duration::from_secs(30)));
    assert!(n1.wait_for("WATCHDOG=1", Duration::from_secs(10)));

    // From now on every iptables call of c1 hangs; the next rule check
    // (every 10 s) runs into it.
    std::fs::write(&flag, "").unwrap();
    wait_until("c1's rule check to hang", Duration::from_secs(30), || {
        hung.exists()
    })
    .unwrap_or_else(|e| panic!("{e}: {}", log_text(&l1)));
    n1.drain();
    for n in 1..=3 {
        assert!(
            n1.wait_for("WATCHDOG=1", Duration::from_secs(10)),
            "watchdog ping {n} after iptables hung never came: {}",
            log_text(&l1)
        );
        // c1 still advertises: the Backup has not taken over.
        assert_eq!(holders(&lab, &[&c1, &c2]), ["c1"], "{}", log_text(&l2));
    }
    let _drain = n1.drain_in_background();
    // The hung command is killed after its timeout, and the status says
    // the rules could not be checked.
    wait_until(
        "the status to report the rules not confirmed",
        Duration::from_secs(30),
        || status(&lab, &c1.netns)["netfilter"]["inPlace"] == false,
    )
    .unwrap_or_else(|e| panic!("{e}: {}", log_text(&l1)));
    let pids: Vec<i32> = std::fs::read_to_string(&hung)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    wait_until(
        "the hung commands to be killed",
        Duration::from_secs(30),
        || pids.iter().all(|&pid| !runs(pid)),
    )
    .unwrap_or_else(|e| panic!("{e}: {pids:?} {}", log_text(&l1)));
    assert!(
        log_text(&l1).contains("did not finish within"),
        "{}",
        log_text(&l1)
    );
    assert_eq!(holders(&lab, &[&c1, &c2]), ["c1"]);
    let report = status(&lab, &c1.netns);
    assert_eq!(report["instances"][0]["state"], "master", "{report}");

    // iptables works again: the next check confirms the rules.
    std::fs::remove_file(&flag).unwrap();
    wait_until(
        "the rules to be confirmed again",
        Duration::from_secs(40),
        || status(&lab, &c1.netns)["netfilter"]["inPlace"] == true,
    )
    .unwrap_or_else(|e| panic!("{e}: {}", log_text(&l1)));
    assert_eq!(redirect_rules(&lab, &c1.netns).len(), 2);

    for agent in [a1, a2] {
        lab.signal(agent, Signal::SIGTERM).unwrap();
        let out = lab.wait_child(agent, Duration::from_secs(60)).unwrap();
        assert!(out.status.success(), "{:?}: {}", out.status, log_text(&l1));
    }
    assert!(redirect_rules(&lab, &c1.netns).is_empty());
    assert!(holders(&lab, &[&c1, &c2]).is_empty());
}

/// Finding 8: the proxy (then the reconciler) of a node stops by itself
/// (a test hook of debug builds stops it): the agent hands the VIP over,
/// removes its rules and exits non-zero, for systemd or its supervisor to
/// start it again; it does not stay up looking healthy.
#[test]
fn a_dead_proxy_or_reconciler_hands_the_vip_over_and_exits_non_zero() {
    let mut lab = Lab::new().unwrap();
    let c1 = lab.add_host("c1", Some("192.0.2.11/24"), None).unwrap();
    let c2 = lab.add_host("c2", Some("192.0.2.12/24"), None).unwrap();
    let scratch = Scratch::new("dead-part");
    for name in ["c1", "c2"] {
        write_config(
            &scratch.path(&format!("{name}.yaml")),
            &scratch.path("missing.conf"),
        );
    }
    let fault = scratch.path("fault");
    let (l1, l2) = (scratch.path("c1.log"), scratch.path("c2.log"));
    let n1 = NotifySocket::bind(scratch.path("n1.sock"));
    let n2 = NotifySocket::bind(scratch.path("n2.sock"));
    let env1 = [
        ("CPLB_TEST_FAULT_FILE", fault.as_os_str()),
        ("NOTIFY_SOCKET", n1.path.as_os_str()),
    ];
    let a1 = start_agent(&lab, &c1, &scratch.path("c1.yaml"), &l1, &env1);
    assert!(
        n1.wait_for("READY=1", Duration::from_secs(30)),
        "{}",
        log_text(&l1)
    );
    wait_until("c1 to take the VIP", Duration::from_secs(20), || {
        holders(&lab, &[&c1, &c2]) == ["c1"]
    })
    .unwrap();
    let a2 = start_agent(
        &lab,
        &c2,
        &scratch.path("c2.yaml"),
        &l2,
        &[("NOTIFY_SOCKET", n2.path.as_os_str())],
    );
    assert!(n2.wait_for("READY=1", Duration::from_secs(30)));

    // The Master's proxy dies.
    std::fs::write(&fault, "proxy").unwrap();
    let out = lab
        .wait_child(a1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("c1 kept running with a dead proxy: {e}: {}", log_text(&l1)));
    assert!(!out.status.success(), "{}", log_text(&l1));
    assert!(
        log_text(&l1).contains("proxy stopped unexpectedly"),
        "{}",
        log_text(&l1)
    );
    wait_until("c2 alone to hold the VIP", Duration::from_secs(20), || {
        holders(&lab, &[&c1, &c2]) == ["c2"]
    })
    .unwrap_or_else(|e| panic!("{e}: {}", log_text(&l2)));
    assert!(redirect_rules(&lab, &c1.netns).is_empty());

    // Started again (as systemd would), it rejoins as Backup; now its
    // reconciler dies.
    let a1 = start_agent(&lab, &c1, &scratch.path("c1.yaml"), &l1, &env1);
    assert!(
        n1.wait_for("READY=1", Duration::from_secs(30)),
        "{}",
        log_text(&l1)
    );
    std::fs::write(&fault, "reconciler").unwrap();
    let out = lab
        .wait_child(a1, Duration::from_secs(30))
        .unwrap_or_else(|e| {
            panic!(
                "c1 kept running with a dead reconciler: {e}: {}",
                log_text(&l1)
            )
        });
    assert!(!out.status.success(), "{}", log_text(&l1));
    assert!(
        log_text(&l1).contains("reconciler stopped unexpectedly"),
        "{}",
        log_text(&l1)
    );
    assert!(redirect_rules(&lab, &c1.netns).is_empty());
    assert_eq!(holders(&lab, &[&c1, &c2]), ["c2"]);

    lab.signal(a2, Signal::SIGTERM).unwrap();
    let out = lab.wait_child(a2, Duration::from_secs(30)).unwrap();
    assert!(out.status.success(), "{}", log_text(&l2));
}
