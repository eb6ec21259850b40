//! `cplb-lab demo`: the lab, narrated. Everything it states is read back
//! from the kernel or seen by the client, never taken from the agents' logs.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{ADMIN_ADDRESS, ControlPlane, DEMO_PREFIX, Error, Family, Options, Prober};

/// What the demo does.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Leave the lab running at the end.
    pub keep: bool,
    /// IPv6 (VRRPv3) instead of IPv4.
    pub family: Family,
    /// Run k0s's keepalived + REDIRECT + a proxy (haproxy) on the
    /// controllers instead of cplb, for comparison.
    pub keepalived: bool,
}

/// Prints timestamped lines and a progress line.
struct Narrator {
    start: Instant,
    tty: bool,
}

impl Narrator {
    fn say(&self, text: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (h, m, s) = ((now / 3600) % 24, (now / 60) % 60, now % 60);
        let since = self.start.elapsed().as_secs_f64();
        let mut lines = text.lines();
        println!(
            "[{h:02}:{m:02}:{s:02} UTC +{since:5.1}s] {}",
            lines.next().unwrap_or_default()
        );
        for line in lines {
            println!("                          {line}");
        }
    }

    fn progress(&self, what: &str, waited: Duration) {
        if self.tty {
            eprint!("\r  … {what} ({:.1} s)   ", waited.as_secs_f64());
            let _ = std::io::stderr().flush();
        }
    }

    fn clear(&self) {
        if self.tty {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }

    /// Polls `probe` every 100 ms with a progress line, at most `timeout`.
    fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> Option<T>,
    ) -> Result<T, Error> {
        let start = Instant::now();
        loop {
            if let Some(value) = probe() {
                self.clear();
                return Ok(value);
            }
            if start.elapsed() >= timeout {
                self.clear();
                return Err(Error::Lab(cplb_e2e::LabError::Timeout {
                    what: what.to_owned(),
                    waited: start.elapsed(),
                }));
            }
            self.progress(what, start.elapsed());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn short(fingerprint: &str) -> String {
    format!("{}…", fingerprint.get(..23).unwrap_or(fingerprint))
}

/// Names the apiserver behind a fingerprint.
fn who(names: &BTreeMap<String, String>, fingerprint: &str) -> String {
    names
        .get(fingerprint)
        .cloned()
        .unwrap_or_else(|| "an unknown apiserver".to_owned())
}

/// One probe of the failover loop.
struct Sample {
    at: Instant,
    served_by: Option<String>,
    error: Option<String>,
}

/// Runs the demo; on success the lab is gone, or still running with `keep`
/// (then this returns once `cplb-lab clean` removed it).
pub fn run(options: DemoOptions) -> Result<(), Error> {
    let n = Narrator {
        start: Instant::now(),
        tty: std::io::stderr().is_terminal(),
    };
    let family = options.family;
    let (net, version) = match family {
        Family::V4 => ("192.0.2.0/24", "VRRPv2"),
        Family::V6 => ("2001:db8::/64", "VRRPv3"),
    };
    n.say(&format!(
        "Building the lab: three controllers and a client in network namespaces ({DEMO_PREFIX}*) on one LAN, {net}."
    ));
    let mut lab = ControlPlane::start(Options {
        prefix: Some(DEMO_PREFIX.to_owned()),
        family,
        start_agents: !options.keepalived,
        log_level: None,
    })?;
    let agent = if options.keepalived {
        for i in 0..3 {
            lab.start_legacy(i)?;
        }
        "keepalived"
    } else {
        "cplb"
    };
    let vip = lab.vip();
    let mut hosts = String::new();
    for c in lab.controllers() {
        hosts.push_str(&format!(
            "{}: {} — a test kube-apiserver on :6443 and {}\n",
            c.name,
            c.ip,
            if options.keepalived {
                "keepalived as k0s renders it, k0s's REDIRECT rule and haproxy on :6444".to_owned()
            } else {
                format!("`cplb run --config {}`", c.config.display())
            }
        ));
    }
    n.say(&format!(
        "{hosts}client: {} — a kubeconfig for https://{}\nVIP: {vip} ({version}){}",
        lab.family().client_cidr(),
        lab.vip_api(),
        if options.keepalived {
            String::new()
        } else {
            format!(", agent binary {}", lab.cplb_binary().display())
        }
    ));

    let holder = n.wait(
        "waiting for a controller to take the VIP",
        Duration::from_secs(30),
        || match lab.holders().ok()?.as_slice() {
            [one] => Some(*one),
            _ => None,
        },
    )?;
    let controller_names: Vec<String> = lab.controllers().iter().map(|c| c.name.clone()).collect();
    let name = |i: usize| controller_names.get(i).cloned().unwrap_or_default();
    n.say(&format!(
        "{} holds the VIP {vip}: it is on its eth0 and on no other controller (`ip addr` in each namespace).",
        name(holder)
    ));
    n.wait(
        "waiting for the REDIRECT rule on every controller",
        Duration::from_secs(15),
        || {
            (0..3)
                .all(|i| lab.redirect_rules(i).is_ok_and(|r| !r.is_empty()))
                .then_some(())
        },
    )?;
    let rules = lab.redirect_rules(holder)?.join("\n");
    n.say(&format!(
        "Every controller redirects VIP:6443 to its proxy on :6444 (iptables-save -t nat):\n{rules}"
    ));

    let mut names = BTreeMap::new();
    for (i, fp) in lab.fingerprints()?.into_iter().enumerate() {
        if let Some(fp) = fp {
            n.say(&format!(
                "{}'s apiserver certificate: SHA-256 {}",
                name(i),
                short(&fp)
            ));
            names.insert(fp, name(i));
        }
    }
    let prober = lab.client_prober(Duration::from_secs(2))?;
    let api = lab.vip_api();
    // The agents learn the apiservers from the `kubernetes` EndpointSlice;
    // until then the proxy has only its bootstrap backend.
    n.wait(
        "waiting for the proxy to balance over all three apiservers",
        Duration::from_secs(30),
        || {
            let seen: std::collections::BTreeSet<String> = (0..9)
                .filter_map(|_| prober.get(api, "/version").ok())
                .map(|a| a.fingerprint)
                .collect();
            (seen.len() >= 3).then_some(())
        },
    )?;
    let mut lines = String::new();
    for k in 1..=6 {
        match prober.get(api, "/version") {
            Ok(a) => lines.push_str(&format!(
                "request {k}: HTTP {} from {} (certificate {})\n",
                a.status,
                who(&names, &a.fingerprint),
                short(&a.fingerprint)
            )),
            Err(e) => lines.push_str(&format!("request {k}: failed: {e}\n")),
        }
    }
    n.say(&format!(
        "Six HTTPS requests from the client to https://{api}/version, each on a new connection: the server certificate changes, so the connections rotate across the three apiservers (k0s's troubleshooting check):\n{}",
        lines.trim_end()
    ));
    kubectl(&n, &lab, "kubectl through the VIP")?;

    if !options.keepalived {
        // A new agent runs at its degraded priority until it has been
        // healthy for a while; fail over from the steady state.
        n.wait(
            "waiting for every agent to report itself healthy at its base priority (cplb status)",
            Duration::from_secs(40),
            || (0..3).all(|i| lab.agent_at_base_priority(i)).then_some(()),
        )?;
        n.say("Every agent reports itself healthy, at priority 200 (`cplb status`).");
    }

    // Failover: the client keeps probing while the holder's agent stops.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let prober: Prober = lab.client_prober(Duration::from_millis(500))?;
        let names = names.clone();
        std::thread::spawn(move || sample(&prober, api, &names, &stop))
    };
    std::thread::sleep(Duration::from_millis(500));
    let stopped_at = Instant::now();
    n.say(&format!(
        "Stopping the VIP holder's agent: SIGTERM to {agent} on {} (the client probes the VIP every 100 ms meanwhile).",
        name(holder)
    ));
    if options.keepalived {
        lab.stop_legacy(holder, Duration::from_secs(15))?;
    } else {
        lab.signal_agent(holder, nix::sys::signal::Signal::SIGTERM)?;
    }
    let next = n.wait(
        "waiting for another controller to take the VIP",
        Duration::from_secs(20),
        || match lab.holders().ok()?.as_slice() {
            [one] if *one != holder => Some(*one),
            _ => None,
        },
    )?;
    let moved_after = stopped_at.elapsed();
    let status = if options.keepalived {
        "stopped, its REDIRECT rule deleted and haproxy stopped (as turning k0s's CPLB off does)"
            .to_owned()
    } else {
        let status = lab.wait_agent(holder, Duration::from_secs(30))?;
        format!(
            "exited with {status}, {:.1} s after the SIGTERM",
            stopped_at.elapsed().as_secs_f64()
        )
    };
    // Let the client see the service again for a while before judging.
    let _ = n.wait(
        "waiting for the client's requests to succeed again",
        Duration::from_secs(15),
        || prober.get(api, "/version").ok().filter(|a| a.status == 200),
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.join().unwrap_or_default();
    n.say(&format!(
        "The VIP moved to {} ({:.1} s after the SIGTERM); {}'s {agent} {status}.",
        name(next),
        moved_after.as_secs_f64(),
        name(holder)
    ));
    n.say(&outage(&samples, stopped_at));
    let old_has_vip = lab.holders()?.contains(&holder);
    let old_rules = lab.redirect_rules(holder)?;
    n.say(&format!(
        "{} now has {} and {}.",
        name(holder),
        if old_has_vip {
            "the VIP still (unexpected)"
        } else {
            "no VIP"
        },
        if old_rules.is_empty() {
            "no REDIRECT rule left".to_owned()
        } else {
            format!("{} REDIRECT rule(s) left (unexpected)", old_rules.len())
        }
    ));
    kubectl(&n, &lab, "The cluster works again through the VIP")?;

    n.say(&format!(
        "Starting {}'s {agent} again: it rejoins as Backup and leaves the VIP where it is.",
        name(holder)
    ));
    if options.keepalived {
        lab.start_legacy(holder)?;
    } else {
        lab.start_agent(holder)?;
    }
    n.wait(
        "waiting for the restarted agent's REDIRECT rule",
        Duration::from_secs(15),
        || {
            lab.redirect_rules(holder)
                .is_ok_and(|r| !r.is_empty())
                .then_some(())
        },
    )?;
    std::thread::sleep(Duration::from_secs(4));
    let holders: Vec<String> = lab.holders()?.into_iter().map(name).collect();
    n.say(&format!(
        "VIP holder(s) now: {} (from the kernel).",
        holders.join(", ")
    ));

    if options.keep {
        let first = &lab.controllers()[0];
        n.say(&format!(
            "The lab keeps running (this process serves the three apiservers). Explore it from another shell:\n\
             ip netns list | grep {DEMO_PREFIX}\n\
             ip netns exec {ns} {cplb} status --address {ADMIN_ADDRESS}\n\
             ip -n {ns} addr show eth0\n\
             ip netns exec {ns} {save} -t nat\n\
             ip netns exec {client} kubectl --kubeconfig {kc} get endpointslices -n default\n\
             less {log}\n\
             Stop it with Ctrl-C here, or `cplb-lab clean` from another shell.",
            ns = first.netns,
            cplb = lab.cplb_binary().display(),
            client = lab.client_netns(),
            save = lab.family().iptables_save(),
            kc = lab.client_kubeconfig().display(),
            log = first.log.display(),
        ));
        // Until `cplb-lab clean` removes the namespaces (Ctrl-C is handled
        // by the caller's signal handler).
        while !cplb_e2e::list_netns(DEMO_PREFIX)?.is_empty() {
            std::thread::sleep(Duration::from_secs(1));
        }
        n.say("The lab was removed; exiting.");
        // Its namespaces and processes are gone already: nothing for Drop
        // to do but complain.
        std::mem::forget(lab);
        return Ok(());
    }
    n.say("Cleaning up: agents stopped, namespaces deleted.");
    drop(lab);
    n.say("Done.");
    Ok(())
}

fn kubectl(n: &Narrator, lab: &ControlPlane, title: &str) -> Result<(), Error> {
    let out = lab.kubectl(&["get", "endpointslices", "-n", "default"])?;
    let text = if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        format!("failed: {}", String::from_utf8_lossy(&out.stderr))
    };
    n.say(&format!(
        "{title}: kubectl --kubeconfig {} get endpointslices -n default\n{}",
        lab.client_kubeconfig().display(),
        text.trim_end()
    ));
    Ok(())
}

/// Probes every 100 ms until `stop` (at most 2 minutes).
fn sample(
    prober: &Prober,
    api: SocketAddr,
    names: &BTreeMap<String, String>,
    stop: &AtomicBool,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let start = Instant::now();
    while !stop.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(120) {
        let at = Instant::now();
        let (served_by, error) = match prober.get(api, "/version") {
            Ok(a) if a.status == 200 => (Some(who(names, &a.fingerprint)), None),
            Ok(a) => (None, Some(format!("HTTP {}", a.status))),
            Err(e) => (None, Some(e.to_string())),
        };
        samples.push(Sample {
            at,
            served_by,
            error,
        });
        std::thread::sleep(Duration::from_millis(100).saturating_sub(at.elapsed()));
    }
    samples
}

/// What the client saw around `t0`, in words.
fn outage(samples: &[Sample], t0: Instant) -> String {
    let secs = |at: Instant| {
        if at >= t0 {
            format!("+{:.2} s", (at - t0).as_secs_f64())
        } else {
            format!("-{:.2} s", (t0 - at).as_secs_f64())
        }
    };
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.served_by.is_none()).collect();
    let total = samples.len();
    match (failed.first(), failed.last()) {
        (Some(first), Some(last)) => {
            let recovered = samples
                .iter()
                .find(|s| s.at > last.at && s.served_by.is_some());
            let window = recovered.map_or_else(
                || "and had not recovered".to_owned(),
                |r| {
                    format!(
                        "outage ≈ {:.2} s, first success again at {} from {}",
                        (r.at - first.at).as_secs_f64(),
                        secs(r.at),
                        r.served_by.as_deref().unwrap_or_default()
                    )
                },
            );
            format!(
                "The client saw {} of {total} probes fail, from {} to {} relative to the SIGTERM ({window}); the first failure: {}.",
                failed.len(),
                secs(first.at),
                secs(last.at),
                first.error.as_deref().unwrap_or_default()
            )
        }
        _ => format!(
            "The client saw no failed request: {total} probes through the VIP, all answered."
        ),
    }
}
