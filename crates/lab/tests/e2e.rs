//! cplb judged the way a k0s operator would: three controllers running the
//! real `cplb` binary and a test apiserver each, a client talking to the
//! VIP. Who holds the VIP is always read from the kernel (`ip -j addr` in
//! each controller), never from logs; every wait has a deadline.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cplb_lab::{ControlPlane, Family, Options, Prober};

/// Start-up: the agents start, wait Master_Down_Interval (≈3.6 s at advert
/// 1 s), one becomes Master.
const ELECTION: Duration = Duration::from_secs(30);
/// A failover: Master_Down_Interval plus slack for a loaded machine.
const FAILOVER: Duration = Duration::from_secs(20);

fn start(family: Family) -> ControlPlane {
    ControlPlane::start(Options {
        family,
        ..Options::default()
    })
    .unwrap()
}

/// The tail of every agent's log, for failure messages.
fn logs(lab: &ControlPlane) -> String {
    let mut out = String::new();
    for (i, c) in lab.controllers().iter().enumerate() {
        let log = lab.agent_log(i);
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        out.push_str(&format!("\n----- {} ({}) -----\n{tail}\n", c.name, c.ip));
    }
    out
}

fn ok<T, E: std::fmt::Display>(lab: &ControlPlane, what: &str, result: Result<T, E>) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}{}", logs(lab)))
}

/// Exactly one controller holds the VIP; returns it.
fn one_holder(lab: &ControlPlane, timeout: Duration, pick: impl Fn(usize) -> bool) -> usize {
    ok(lab, "VIP holder", lab.wait_for_holder(timeout, pick))
}

/// Among the controllers other than `old`, exactly one holds the VIP (a
/// SIGKILLed or cut-off `old` may still have it in its kernel).
fn new_holder(lab: &ControlPlane, old: usize) -> usize {
    ok(
        lab,
        "a new VIP holder",
        cplb_e2e::wait_for("another controller to take the VIP", FAILOVER, || {
            let others: Vec<usize> = lab
                .holders()
                .ok()?
                .into_iter()
                .filter(|&i| i != old)
                .collect();
            match others.as_slice() {
                [one] => Some(*one),
                _ => None,
            }
        }),
    )
}

/// The holder set stays exactly `[holder]` for `period` (sampled).
fn stays_sole_holder(lab: &ControlPlane, holder: usize, period: Duration) {
    let start = Instant::now();
    while start.elapsed() < period {
        let now = ok(lab, "holders", lab.holders());
        assert_eq!(
            now,
            vec![holder],
            "the VIP holder changed after {:?}{}",
            start.elapsed(),
            logs(lab)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A request through the VIP succeeds (HTTP 200) within `timeout`.
fn vip_serves(lab: &ControlPlane, prober: &Prober, timeout: Duration) {
    let api = lab.vip_api();
    ok(
        lab,
        "a request through the VIP",
        cplb_e2e::wait_for("a request through the VIP to succeed", timeout, || {
            prober.get(api, "/version").ok().filter(|a| a.status == 200)
        }),
    );
}

/// Distinct server certificates among 15 requests through the VIP.
fn certificates_in_15(lab: &ControlPlane, prober: &Prober) -> BTreeSet<String> {
    (0..15)
        .filter_map(|_| prober.get(lab.vip_api(), "/version").ok())
        .filter(|a| a.status == 200)
        .map(|a| a.fingerprint)
        .collect()
}

/// Waits until the proxy balances over all three apiservers (it learns
/// them from the EndpointSlice): a batch of 15 requests sees three
/// certificates.
fn balanced(lab: &ControlPlane, prober: &Prober) -> BTreeSet<String> {
    ok(
        lab,
        "load balancing",
        cplb_e2e::wait_for("3 certificates in 15 requests", ELECTION, || {
            let seen = certificates_in_15(lab, prober);
            (seen.len() >= 3).then_some(seen)
        }),
    )
}

/// Waits until controller `i` has its REDIRECT rule(s) and returns them.
fn rules(lab: &ControlPlane, i: usize) -> Vec<String> {
    ok(
        lab,
        "REDIRECT rules",
        cplb_e2e::wait_for("the REDIRECT rule", ELECTION, || {
            lab.redirect_rules(i).ok().filter(|r| !r.is_empty())
        }),
    )
}

fn prerouting(rules: &[String]) -> usize {
    rules.iter().filter(|r| r.contains("PREROUTING")).count()
}

fn prober(lab: &ControlPlane) -> Prober {
    ok(
        lab,
        "client prober",
        lab.client_prober(Duration::from_secs(2)),
    )
}

fn basics(family: Family) {
    let lab = start(family);
    let holder = one_holder(&lab, ELECTION, |_| true);
    stays_sole_holder(&lab, holder, Duration::from_secs(3));
    for i in 0..3 {
        let r = rules(&lab, i);
        assert_eq!(prerouting(&r), 1, "controller {i}: {r:?}{}", logs(&lab));
        assert!(
            r.iter()
                .all(|l| l.contains("--dport 6443") && l.contains("6444")),
            "controller {i}: {r:?}"
        );
        let links = ok(&lab, "links", lab.links(i));
        assert!(
            !links.iter().any(|l| l == "dummyvip0"),
            "controller {i} has {links:?}"
        );
    }
    // The agents' own view (`cplb status`) agrees with the kernel's.
    for i in 0..3 {
        let state = ok(
            &lab,
            "cplb status",
            cplb_e2e::wait_for("cplb status", FAILOVER, || {
                let s = lab.status(i).ok()?;
                (s["ready"] == true).then(|| s["instances"][0]["state"].clone())
            }),
        );
        let want = if i == holder { "master" } else { "backup" };
        assert_eq!(state, want, "controller {i}{}", logs(&lab));
    }
    let p = prober(&lab);
    let seen = balanced(&lab, &p);
    assert_eq!(seen.len(), 3);
    // The three certificates are the three apiservers' own.
    let direct: BTreeSet<String> = ok(&lab, "fingerprints", lab.fingerprints())
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(seen, direct);

    let out = ok(
        &lab,
        "kubectl",
        cplb_e2e::wait_for("kubectl through the VIP", FAILOVER, || {
            lab.kubectl(&["get", "endpointslices", "-n", "default", "-o", "name"])
                .ok()
                .filter(|o| o.status.success())
        }),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l == "endpointslice.discovery.k8s.io/kubernetes"),
        "{text}"
    );
}

#[test]
fn one_holder_rules_everywhere_load_balancing_and_kubectl_ipv4() {
    basics(Family::V4);
}

#[test]
fn one_holder_rules_everywhere_load_balancing_and_kubectl_ipv6_vrrpv3() {
    basics(Family::V6);
}

#[test]
fn failover_when_the_holders_link_goes_down() {
    let lab = start(Family::V4);
    let p = prober(&lab);
    let holder = one_holder(&lab, ELECTION, |_| true);
    vip_serves(&lab, &p, ELECTION);
    ok(&lab, "link down", lab.set_link(holder, false));
    let next = new_holder(&lab, holder);
    assert_ne!(next, holder);
    vip_serves(&lab, &p, FAILOVER);
}

#[test]
fn failover_when_the_holders_agent_is_sigkilled() {
    let mut lab = start(Family::V4);
    let p = prober(&lab);
    let holder = one_holder(&lab, ELECTION, |_| true);
    vip_serves(&lab, &p, ELECTION);
    {
        let r = lab.kill_agent(holder);
        ok(&lab, "SIGKILL", r)
    };
    let next = new_holder(&lab, holder);
    assert_ne!(next, holder);
    vip_serves(&lab, &p, FAILOVER);
}

#[test]
fn failover_when_the_holders_agent_is_sigtermed_leaves_nothing_behind() {
    let mut lab = start(Family::V4);
    let p = prober(&lab);
    let holder = one_holder(&lab, ELECTION, |_| true);
    rules(&lab, holder);
    vip_serves(&lab, &p, ELECTION);
    let status = {
        let r = lab.stop_agent(holder, Duration::from_secs(15));
        ok(&lab, "SIGTERM", r)
    };
    assert!(status.success(), "exit status {status}{}", logs(&lab));
    let next = one_holder(&lab, FAILOVER, |i| i != holder);
    assert_ne!(next, holder);
    vip_serves(&lab, &p, FAILOVER);
    let left = ok(&lab, "rules", lab.redirect_rules(holder));
    assert!(left.is_empty(), "rules left on the old holder: {left:?}");
    assert!(!ok(&lab, "holders", lab.holders()).contains(&holder));
}

#[test]
fn backend_loss_on_the_holder_is_routed_around_without_moving_the_vip() {
    let mut lab = start(Family::V4);
    let p = prober(&lab);
    let holder = one_holder(&lab, ELECTION, |_| true);
    balanced(&lab, &p);
    {
        let r = lab.stop_apiserver(holder);
        ok(&lab, "stop apiserver", r)
    };
    // The bound the test asserts: 2 s after the apiserver died, no request
    // through the VIP fails.
    std::thread::sleep(Duration::from_secs(2));
    let mut seen = BTreeSet::new();
    for k in 0..15 {
        let answer = p.get(lab.vip_api(), "/version");
        match answer {
            Ok(a) if a.status == 200 => {
                seen.insert(a.fingerprint);
            }
            other => panic!(
                "request {k} through the VIP failed: {other:?}{}",
                logs(&lab)
            ),
        }
    }
    assert_eq!(seen.len(), 2, "the two live apiservers serve");
    assert_eq!(ok(&lab, "holders", lab.holders()), vec![holder]);
}

#[test]
fn an_agent_restarted_after_sigkill_rejoins_as_backup_with_no_stale_state() {
    let mut lab = start(Family::V4);
    let p = prober(&lab);
    let holder = one_holder(&lab, ELECTION, |_| true);
    rules(&lab, holder);
    {
        let r = lab.kill_agent(holder);
        ok(&lab, "SIGKILL", r)
    };
    let next = new_holder(&lab, holder);
    vip_serves(&lab, &p, FAILOVER);

    {
        let r = lab.start_agent(holder);
        ok(&lab, "restart", r)
    };
    // The restarted agent drops the VIP the killed one left behind.
    let now = one_holder(&lab, FAILOVER, |_| true);
    assert_eq!(now, next, "the restarted agent took the VIP{}", logs(&lab));
    let r = rules(&lab, holder);
    // Give it time to (wrongly) add a second rule or take the VIP.
    stays_sole_holder(&lab, next, Duration::from_secs(5));
    let r2 = ok(&lab, "rules", lab.redirect_rules(holder));
    assert_eq!(prerouting(&r), 1, "{r:?}");
    assert_eq!(r, r2, "rules changed");
    vip_serves(&lab, &p, FAILOVER);
}

#[test]
fn a_cut_cable_then_healed_leaves_exactly_one_holder() {
    let lab = start(Family::V4);
    let p = prober(&lab);
    let holder = one_holder(&lab, ELECTION, |_| true);
    ok(
        &lab,
        "cut",
        lab.lab().cut_cable(&lab.controllers()[holder].name),
    );
    new_holder(&lab, holder);
    vip_serves(&lab, &p, FAILOVER);
    ok(
        &lab,
        "plug",
        lab.lab().plug_cable(&lab.controllers()[holder].name),
    );
    let after = one_holder(&lab, FAILOVER, |_| true);
    stays_sole_holder(&lab, after, Duration::from_secs(4));
    vip_serves(&lab, &p, FAILOVER);
}

#[test]
fn a_partition_then_heal_leaves_exactly_one_holder() {
    let lab = start(Family::V4);
    let p = prober(&lab);
    let holder = one_holder(&lab, ELECTION, |_| true);
    // Off the bridge, carrier up: the holder keeps the VIP, the others
    // elect another: two holders until the partition heals.
    ok(&lab, "partition", lab.set_partitioned(holder, true));
    new_holder(&lab, holder);
    vip_serves(&lab, &p, FAILOVER);
    ok(&lab, "heal", lab.set_partitioned(holder, false));
    let after = one_holder(&lab, FAILOVER, |_| true);
    stays_sole_holder(&lab, after, Duration::from_secs(4));
    vip_serves(&lab, &p, FAILOVER);
}

#[test]
fn rolling_upgrade_from_k0s_keepalived_one_controller_at_a_time() {
    let mut lab = ControlPlane::start(Options {
        start_agents: false,
        ..Options::default()
    })
    .unwrap();
    let p = prober(&lab);
    for i in 0..3 {
        {
            let r = lab.start_legacy(i);
            ok(&lab, "keepalived controller", r)
        };
    }
    let holder = one_holder(&lab, ELECTION, |_| true);
    vip_serves(&lab, &p, ELECTION);
    stays_sole_holder(&lab, holder, Duration::from_secs(2));
    // Upgrade the backups first and the holder last, as the migration
    // guide says; then once more in index order is covered by the others.
    let mut order: Vec<usize> = (0..3).filter(|&i| i != holder).collect();
    order.push(holder);
    for i in order {
        // keepalived must not object to the cplb nodes' adverts.
        for k in 0..3 {
            let complaints = lab.legacy_complaints(k);
            assert!(
                complaints.is_empty(),
                "keepalived on controller {k}: {complaints:?}"
            );
        }
        {
            let r = lab.stop_legacy(i, Duration::from_secs(10));
            ok(&lab, "stop keepalived", r)
        };
        {
            let r = lab.start_agent(i);
            ok(&lab, "start cplb", r)
        };
        let r = rules(&lab, i);
        assert_eq!(prerouting(&r), 1, "controller {i}: {r:?}");
        let now = one_holder(&lab, FAILOVER, |_| true);
        stays_sole_holder(&lab, now, Duration::from_secs(3));
        vip_serves(&lab, &p, FAILOVER);
    }
    let seen = balanced(&lab, &p);
    assert_eq!(seen.len(), 3);
}

// The lab itself, with k0s's keepalived + REDIRECT + a proxy on every
// controller instead of cplb: the baseline cplb is held to.
#[test]
fn the_k0s_keepalived_baseline_balances_and_serves_kubectl_ipv4() {
    keepalived_baseline(Family::V4);
}

#[test]
fn the_k0s_keepalived_baseline_balances_and_serves_kubectl_ipv6() {
    keepalived_baseline(Family::V6);
}

fn keepalived_baseline(family: Family) {
    let mut lab = ControlPlane::start(Options {
        start_agents: false,
        family,
        ..Options::default()
    })
    .unwrap();
    let p = prober(&lab);
    for i in 0..3 {
        let r = lab.start_legacy(i);
        ok(&lab, "keepalived controller", r);
    }
    let holder = one_holder(&lab, ELECTION, |_| true);
    stays_sole_holder(&lab, holder, Duration::from_secs(2));
    assert_eq!(balanced(&lab, &p).len(), 3);
    let out = ok(
        &lab,
        "kubectl",
        cplb_e2e::wait_for("kubectl through the VIP", FAILOVER, || {
            lab.kubectl(&["get", "endpointslices", "-n", "default", "-o", "name"])
                .ok()
                .filter(|o| o.status.success())
        }),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("endpointslice.discovery.k8s.io/kubernetes")
    );
}

#[test]
fn a_lab_refuses_a_prefix_in_use_and_clean_removes_it_with_its_processes() {
    // Shaped like the harness's unique prefixes, so `cleanup_stale` knows it.
    let prefix = format!("cplbt-{}-fixed-", std::process::id());
    let options = Options {
        prefix: Some(prefix.clone()),
        start_agents: false,
        ..Options::default()
    };
    let mut lab = ControlPlane::start(options.clone()).unwrap();
    let r = lab.start_legacy(0);
    ok(&lab, "keepalived controller", r);
    let err = ControlPlane::start(options).unwrap_err();
    assert!(
        matches!(err, cplb_lab::Error::AlreadyRunning(_))
            && err.to_string().contains("cplb-lab clean"),
        "{err}"
    );
    // A keepalived of the host's own (a decoy: `sleep` under that name)
    // must survive the clean-up, which stops only what runs inside the
    // lab's namespaces (issue 14, item 15).
    let decoy_bin = lab.dir().with_extension("decoy-keepalived");
    std::fs::create_dir_all(&decoy_bin).unwrap();
    std::fs::copy("/bin/sleep", decoy_bin.join("keepalived")).unwrap();
    let mut decoy = std::process::Command::new(decoy_bin.join("keepalived"))
        .arg("600")
        .spawn()
        .unwrap();
    let removed = cplb_lab::clean::clean(&prefix, Duration::from_secs(5)).unwrap();
    let stale = cplb_lab::clean::clean_stale_tests(Duration::from_secs(5));
    let survived = matches!(decoy.try_wait(), Ok(None));
    let _ = decoy.kill();
    let _ = decoy.wait();
    let _ = std::fs::remove_dir_all(&decoy_bin);
    assert!(survived, "cplb-lab clean killed the host's keepalived");
    stale.unwrap();
    assert_eq!(
        removed.len(),
        5,
        "bridge, three controllers, client: {removed:?}"
    );
    assert!(cplb_e2e::list_netns(&prefix).unwrap().is_empty());
    assert!(!lab.dir().exists());
}

#[test]
fn a_supervised_agent_whose_worker_is_sigkilled_hands_over_and_rejoins() {
    let mut lab = ControlPlane::start(Options {
        start_agents: false,
        ..Options::default()
    })
    .unwrap();
    let p = prober(&lab);
    for i in 0..3 {
        let r = lab.start_agent_with(i, &["--supervise"]);
        ok(&lab, "cplb run --supervise", r);
    }
    let holder = one_holder(&lab, ELECTION, |_| true);
    vip_serves(&lab, &p, ELECTION);
    let workers = ok(&lab, "worker pid", lab.agent_children(holder));
    let [worker] = workers.as_slice() else {
        panic!("expected one worker under the supervisor: {workers:?}");
    };
    let worker = nix::unistd::Pid::from_raw(i32::try_from(*worker).unwrap());
    nix::sys::signal::kill(worker, nix::sys::signal::Signal::SIGKILL).unwrap();
    // The supervisor's release removes the VIP from the old holder: exactly
    // one holder, another one.
    let next = one_holder(&lab, FAILOVER, |i| i != holder);
    vip_serves(&lab, &p, FAILOVER);
    // The restarted worker rejoins as Backup, with one rule.
    ok(
        &lab,
        "a new worker",
        cplb_e2e::wait_for("the supervisor to restart the worker", FAILOVER, || {
            lab.agent_children(holder)
                .ok()
                .filter(|w| w.len() == 1 && w[0] != worker.as_raw().unsigned_abs())
        }),
    );
    let r = rules(&lab, holder);
    stays_sole_holder(&lab, next, Duration::from_secs(5));
    assert_eq!(prerouting(&r), 1, "{r:?}");
    assert_eq!(
        prerouting(&ok(&lab, "rules", lab.redirect_rules(holder))),
        1
    );
}

/// What controller `i`'s proxy reports: connections to every backend,
/// and connections and failed connects (every reason) of the backend at
/// `ip`, from `/status` (refreshed every half second).
fn backend_counts(lab: &ControlPlane, i: usize, ip: std::net::IpAddr) -> (u64, u64, u64) {
    let status = ok(lab, "status", lab.status(i));
    let backends = status["proxy"]["backends"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let total = backends
        .iter()
        .filter_map(|b| b["connectionsTotal"].as_u64())
        .sum();
    let (to_ip, errors) = backends
        .iter()
        .find(|b| {
            b["address"]
                .as_str()
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                .is_some_and(|a| a.ip() == ip)
        })
        .map_or((0, 0), |b| {
            let errors = b["connectErrors"].as_array().map_or(0, |all| {
                all.iter().filter_map(|c| c["count"].as_u64()).sum()
            });
            (b["connectionsTotal"].as_u64().unwrap_or(0), errors)
        });
    (total, to_ip, errors)
}

/// Issue 15 at 100 ms adverts: when the holder's link goes down, the new
/// Master takes over within a few hundred milliseconds, while the dead
/// node's apiserver is still in every proxy's backend set (the reconciler
/// drops it only once a `/readyz` check fails, 0.8-1.8 s after the cut).
/// The new Master's proxy must send none of the clients that arrive
/// meanwhile there: it knows that Master fell silent, and skips its
/// address. Counted by the new Master's proxy (a connect to the dead node
/// fails, or is overtaken by another backend, and is counted either way).
#[test]
fn after_a_link_down_takeover_the_new_master_sends_nobody_to_the_silent_masters_apiserver() {
    let mut lab = ControlPlane::start(Options {
        start_agents: false,
        ..Options::default()
    })
    .unwrap();
    for c in lab.controllers().to_vec() {
        let text = format!(
            "{}  vrrpVersion: 3\n  advertInterval: 100ms\n",
            cplb_lab::agent_config(&c, Family::V4)
        );
        std::fs::write(&c.config, text).unwrap();
    }
    for i in 0..3 {
        let started = lab.start_agent(i);
        ok(&lab, "agent start", started);
    }
    let p = prober(&lab);
    one_holder(&lab, ELECTION, |_| true);
    balanced(&lab, &p);
    // Every agent healthy at its base priority (no preemption to come) and
    // its proxy balancing over the three apiservers.
    ok(
        &lab,
        "agents settled",
        cplb_e2e::wait_for(
            "every agent at base priority with 3 backends",
            ELECTION,
            || {
                (0..3)
                    .all(|i| {
                        lab.agent_at_base_priority(i)
                            && lab.status(i).is_ok_and(|s| {
                                s["proxy"]["backends"].as_array().is_some_and(|b| {
                                    b.iter()
                                        .filter(|b| b["inSet"] == true && b["health"] == "healthy")
                                        .count()
                                        == 3
                                })
                            })
                    })
                    .then_some(())
            },
        ),
    );
    // The holder once every priority is final (a node that reached its
    // base priority later may have preempted the first one).
    let holder = one_holder(&lab, ELECTION, |_| true);
    stays_sole_holder(&lab, holder, Duration::from_secs(1));
    let dead = lab.controllers()[holder].ip;
    ok(&lab, "link down", lab.set_link(holder, false));
    let next = new_holder(&lab, holder);
    let before = backend_counts(&lab, next, dead);
    // Clients right after the takeover, several at a time so that every
    // round-robin turn of the new Master's proxy is taken.
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let p = p.clone();
            let api = lab.vip_api();
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| {
                        p.get(api, "/version")
                            .map(|a| a.status)
                            .map_err(|e| e.to_string())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let answers: Vec<Result<u16, String>> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    // Once the status shows every served request, it shows every connect
    // tried for them too (the proxy counts a failed or overtaken attempt
    // before the connection it lost to).
    let served = answers.iter().filter(|a| a.is_ok()).count() as u64;
    let after = ok(
        &lab,
        "status with the requests",
        cplb_e2e::wait_for(
            "the new Master's status to count the requests",
            FAILOVER,
            || {
                let now = backend_counts(&lab, next, dead);
                (now.0 >= before.0 + served).then_some(now)
            },
        ),
    );
    assert_eq!(
        (after.1, after.2),
        (before.1, before.2),
        "the new Master's proxy tried the silent Master's apiserver {dead} \
         (connections, failed connects) before {before:?}, after {after:?}; answers {answers:?}{}",
        logs(&lab)
    );
    assert!(
        answers.iter().all(|a| *a == Ok(200)),
        "{answers:?}{}",
        logs(&lab)
    );
}
