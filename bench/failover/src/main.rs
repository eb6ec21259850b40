//! `failover-bench`: failover of the whole agent at 100 ms adverts against
//! keepalived (k0s's rendering, VRRPv3, `advert_int 0.1`) + HAProxy, in the
//! cplb-lab three-controller lab, same probes, one run; and a stability
//! run (no spurious failover at 100 ms with the CPUs busy).
//!
//! `run`: for every fault and repetition each stack gets a fresh lab:
//! three controllers with their test apiservers, a client. Once the lab is
//! steady a thread on the client sends an HTTPS `GET /version` through
//! VIP:6443 every 10 ms (new connection each, 50 ms connect timeout), the
//! fault hits the VIP holder, and the thread records every probe. The
//! outage is the longest run of failed probes ending after the fault
//! (`cplb_lab::bench::summarize`). Repetition `k` of `n` waits
//! `(k + 0.5) / n` of an advert interval more, so the faults spread over
//! the advert cycle alike for both stacks.
//!
//! `stability`: the lab with cplb at 100 ms, CPU-bound threads on every
//! core, HTTPS probes through the VIP every 100 ms; every second the VIP
//! holders from the kernel; at the end each agent's state-change count.
//!
//! Everything runs in namespaces named `cplb-fast-*`, removed at the end of
//! each repetition, on error and on Ctrl-C. As root; see run.sh.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, ensure};
use clap::{Parser, Subcommand};
use cplb_e2e::ChildId;
use cplb_e2e::keepalived::{K0sInstance, Keepalived, render_k0s};
use cplb_lab::bench::{Sample, median, summarize};
use cplb_lab::{
    API_PORT, AUTH_PASS, ControlPlane, Family, Options, PROXY_PORT, Prober, agent_config, clean,
};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::json;

/// The namespace prefix of this benchmark's labs.
const PREFIX: &str = "cplb-fast-";
/// The advert interval both stacks run at.
const ADVERT: Duration = Duration::from_millis(100);
/// Probe period (start to start).
const PERIOD: Duration = Duration::from_millis(10);
/// Connect timeout of one probe: a connect on this LAN takes well under a
/// millisecond, so a lost SYN costs this, and outages are measured in
/// steps of about 50 ms.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(50);
/// Read/write timeout once connected (a slow handshake may finish).
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Probing before the fault (plus the repetition's phase).
const BEFORE: Duration = Duration::from_secs(1);
/// A window lasts at least this long after the fault (ten times
/// Master_Down_Interval, 0.32 s) ...
const MIN_WINDOW: Duration = Duration::from_secs(3);
/// ... and until the probes have succeeded this long after the last failure ...
const SETTLE: Duration = Duration::from_secs(1);
/// ... but no longer than this.
const MAX_WINDOW: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(name = "failover-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Outage per fault, cplb against keepalived + HAProxy, at 100 ms adverts.
    Run {
        /// Repetitions per fault and stack (a fresh lab each).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Comma-separated: link-down, sigkill, sigterm, supervised-crash.
        #[arg(long, default_value = "link-down,sigkill,sigterm,supervised-crash")]
        faults: String,
        /// Where the raw samples go (a JSON file per run).
        #[arg(long, default_value = "bench/failover/results")]
        out: PathBuf,
    },
    /// cplb at 100 ms adverts with every CPU busy: spurious failovers?
    Stability {
        /// How long, in seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// CPU-bound threads (default: one per CPU).
        #[arg(long)]
        spinners: Option<usize>,
        /// Where the report goes (a JSON file per run).
        #[arg(long, default_value = "bench/failover/results")]
        out: PathBuf,
        /// `cplb`, or `keepalived` (+ HAProxy, at advert_int 0.1) for comparison.
        #[arg(long, default_value = "cplb")]
        stack: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stack {
    Keepalived,
    Cplb,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Stack::Keepalived => "keepalived+HAProxy",
            Stack::Cplb => "cplb",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// The holder's LAN link goes down.
    LinkDown,
    /// SIGKILL of the whole stack on the holder, nothing left to clean up:
    /// cplb run without a supervisor; keepalived (its VRRP child first, so
    /// the parent's death cannot make it resign) and HAProxy.
    Sigkill,
    /// SIGTERM: cplb run; keepalived, then HAProxy and the rule removed.
    Sigterm,
    /// A crash its supervisor sees: cplb's worker under `--supervise`;
    /// keepalived's VRRP child, which keepalived's parent restarts (HAProxy
    /// and the rule stay, as k0s's proxy lives in k0s).
    SupervisedCrash,
}

impl Fault {
    const ALL: [Fault; 4] = [
        Fault::LinkDown,
        Fault::Sigkill,
        Fault::Sigterm,
        Fault::SupervisedCrash,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::LinkDown => "link-down",
            Fault::Sigkill => "sigkill",
            Fault::Sigterm => "sigterm",
            Fault::SupervisedCrash => "supervised-crash",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Fault::LinkDown => "link down",
            Fault::Sigkill => "SIGKILL, no supervisor",
            Fault::Sigterm => "SIGTERM",
            Fault::SupervisedCrash => "supervised crash",
        }
    }

    fn parse(name: &str) -> anyhow::Result<Fault> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == name.trim())
            .ok_or_else(|| anyhow!("unknown fault {name:?}"))
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let stale = cplb_e2e::list_netns(PREFIX)?;
    ensure!(
        stale.is_empty(),
        "namespaces of an earlier run still exist ({}); remove them with `ip netns del`",
        stale.join(", ")
    );
    on_interrupt_clean_up()?;
    match cli.command {
        Command::Run { reps, faults, out } => {
            ensure!(reps >= 1, "--reps must be at least 1");
            let faults = faults
                .split(',')
                .filter(|f| !f.trim().is_empty())
                .map(Fault::parse)
                .collect::<anyhow::Result<Vec<_>>>()?;
            run(reps, &faults, &out)
        }
        Command::Stability {
            seconds,
            spinners,
            out,
            stack,
        } => stability(
            match stack.as_str() {
                "cplb" => Stack::Cplb,
                "keepalived" => Stack::Keepalived,
                other => return Err(anyhow!("unknown stack {other:?}: cplb or keepalived")),
            },
            Duration::from_secs(seconds),
            spinners.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
            }),
            &out,
        ),
    }
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh lab, no agent started yet; cplb's files get the fast interval.
fn lab() -> anyhow::Result<ControlPlane> {
    let plane = ControlPlane::start(Options {
        prefix: Some(PREFIX.to_owned()),
        family: Family::V4,
        start_agents: false,
        log_level: Some("info".to_owned()),
    })?;
    for c in plane.controllers() {
        let text = format!(
            "{}  vrrpVersion: 3\n  advertInterval: {}ms\n",
            agent_config(c, Family::V4),
            ADVERT.as_millis()
        );
        fs::write(&c.config, text).with_context(|| c.config.display().to_string())?;
    }
    Ok(plane)
}

/// k0s's keepalived + REDIRECT + HAProxy on one controller.
struct Legacy {
    keepalived: Keepalived,
    haproxy: ChildId,
}

/// k0s's `keepalived.conf` with `vrrp_version 3` and `advert_int 0.1`.
fn keepalived_conf() -> anyhow::Result<String> {
    let mut instance = K0sInstance::new(Family::V4.vip_cidr(), AUTH_PASS);
    instance.advert_int = 0.1;
    Ok(render_k0s(&[instance], Some(3)))
}

fn redirect(plane: &ControlPlane, netns: &str, op: &str) -> anyhow::Result<()> {
    let vip = plane.vip().to_string();
    let (port, to_port) = (API_PORT.to_string(), PROXY_PORT.to_string());
    plane.lab().exec_in(
        netns,
        "iptables",
        [
            "-t",
            "nat",
            op,
            "PREROUTING",
            "-p",
            "tcp",
            "-d",
            &vip,
            "--dport",
            &port,
            "-j",
            "REDIRECT",
            "--to-port",
            &to_port,
        ],
    )?;
    Ok(())
}

fn start_legacy(plane: &ControlPlane, i: usize) -> anyhow::Result<Legacy> {
    cplb_e2e::require_tool("haproxy", "haproxy")?;
    let c = plane.controller(i)?.clone();
    redirect(plane, &c.netns, "-A")?;
    // As cplb-lab's keepalived controllers run it.
    let mut servers = String::new();
    for other in plane.controllers() {
        servers.push_str(&format!(
            "    server {} {}:{API_PORT} check inter 1s fall 1 rise 2\n",
            other.name, other.ip
        ));
    }
    let cfg = plane.dir().join(format!("{}-haproxy.cfg", c.name));
    fs::write(
        &cfg,
        format!(
            "defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 60s\n    timeout server 60s\n    retries 2\n    option redispatch\n\nfrontend apiserver\n    bind :::{PROXY_PORT} v4v6\n    default_backend apiservers\n\nbackend apiservers\n    balance roundrobin\n{servers}"
        ),
    )?;
    let log = fs::File::create(plane.dir().join(format!("{}-haproxy.log", c.name)))?;
    let mut cmd = plane.lab().command_in(&c.netns, "haproxy");
    cmd.arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(log);
    let haproxy = plane.lab().spawn(cmd)?;
    let keepalived = Keepalived::start(plane.lab(), &c.netns, &keepalived_conf()?)?;
    Ok(Legacy {
        keepalived,
        haproxy,
    })
}

/// The children of `pid` (`/proc/<pid>/task/*/children`).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let text = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

fn kill(pid: u32, signal: Signal) -> anyhow::Result<()> {
    let raw = i32::try_from(pid).map_err(|_| anyhow!("pid {pid}"))?;
    nix::sys::signal::kill(Pid::from_raw(raw), signal).with_context(|| format!("kill {pid}"))
}

/// Waits until the lab is steady and returns the VIP holder: one holder,
/// the rule everywhere, the proxy balancing over all three apiservers and
/// (cplb) every agent at its base priority.
fn steady(plane: &ControlPlane, stack: Stack) -> anyhow::Result<usize> {
    plane.wait_for_holder(Duration::from_secs(30), |_| true)?;
    cplb_e2e::wait_until(
        "the REDIRECT rule on every controller",
        Duration::from_secs(15),
        || (0..3).all(|i| plane.redirect_rules(i).is_ok_and(|r| !r.is_empty())),
    )?;
    let prober = plane.client_prober(Duration::from_secs(1))?;
    let api = plane.vip_api();
    cplb_e2e::wait_until(
        "the proxy to balance over all three apiservers",
        Duration::from_secs(30),
        || {
            let seen: std::collections::BTreeSet<String> = (0..12)
                .filter_map(|_| prober.get(api, "/version").ok())
                .map(|a| a.fingerprint)
                .collect();
            seen.len() >= 3
        },
    )?;
    if stack == Stack::Cplb {
        cplb_e2e::wait_until(
            "every agent at its base priority",
            Duration::from_secs(40),
            || (0..3).all(|i| plane.agent_at_base_priority(i)),
        )?;
    }
    // Agents reach their base priority one after the other, and the first
    // to get there takes the VIP: the holder is the one after that, and
    // must keep it for a while.
    let holder = plane.wait_for_holder(Duration::from_secs(5), |_| true)?;
    std::thread::sleep(Duration::from_secs(1));
    Ok(plane.wait_for_holder(Duration::from_secs(1), |h| h == holder)?)
}

/// One sample plus the failed probes' offsets from the fault.
struct Measured {
    sample: Sample,
    failed_at_ms: Vec<i64>,
}

fn run(reps: usize, faults: &[Fault], out: &Path) -> anyhow::Result<()> {
    let keepalived = cplb_e2e::keepalived::binary()?;
    let load_before = loadavg();
    eprintln!(
        "keepalived {} ({}); load before: {load_before}",
        keepalived.version,
        keepalived.path.display()
    );
    let started = Instant::now();
    let mut results: BTreeMap<(Fault, Stack), Vec<Measured>> = BTreeMap::new();
    for &fault in faults {
        for rep in 0..reps {
            let stacks = if rep % 2 == 0 {
                [Stack::Keepalived, Stack::Cplb]
            } else {
                [Stack::Cplb, Stack::Keepalived]
            };
            let phase = ADVERT.mul_f64((rep as f64 + 0.5) / reps as f64);
            for stack in stacks {
                let m = one(stack, fault, phase).with_context(|| {
                    format!("{} {} rep {}", fault.name(), stack.name(), rep + 1)
                })?;
                let s = &m.sample;
                eprintln!(
                    "[{:6.1}s] {:16} {:18} rep {}: outage {:.3} s, {} of {} probes failed{}{}, VIP {} -> {:?} (load {})",
                    started.elapsed().as_secs_f64(),
                    fault.name(),
                    stack.name(),
                    rep + 1,
                    s.outage,
                    s.failed,
                    s.probes,
                    if s.recovered { "" } else { ", NOT recovered" },
                    if s.failed_before > 0 {
                        format!(", {} failed before the fault", s.failed_before)
                    } else {
                        String::new()
                    },
                    s.holder + 1,
                    s.holders_after.iter().map(|h| h + 1).collect::<Vec<_>>(),
                    loadavg(),
                );
                results.entry((fault, stack)).or_default().push(m);
            }
        }
    }
    let load_after = loadavg();
    let column = |fault, stack, f: &dyn Fn(&Sample) -> f64| -> Vec<f64> {
        results
            .get(&(fault, stack))
            .map(|all| all.iter().map(|m| f(&m.sample)).collect())
            .unwrap_or_default()
    };
    let mut table = format!(
        "keepalived {} ({}), VRRPv3, advert_int 0.1; cplb at advertInterval 100ms, vrrpVersion 3.\n\
         HTTPS GET /version through VIP:6443 every 10 ms (new connection, 50 ms connect timeout); \
         median of {reps}, fresh lab each. Load average before: {load_before}; after: {load_after}. \
         {:.0} s.\n\n\
         | fault on the VIP holder | keepalived+HAProxy | cplb | cplb / keepalived+HAProxy |\n|---|---|---|---|\n",
        keepalived.version,
        keepalived.path.display(),
        started.elapsed().as_secs_f64(),
    );
    for &fault in faults {
        let k = median(&column(fault, Stack::Keepalived, &|s| s.outage));
        let c = median(&column(fault, Stack::Cplb, &|s| s.outage));
        table.push_str(&format!(
            "| {} (outage) | {k:.3} s | {c:.3} s | {} |\n",
            fault.describe(),
            ratio(c, k)
        ));
        let k = median(&column(fault, Stack::Keepalived, &|s| s.failed as f64));
        let c = median(&column(fault, Stack::Cplb, &|s| s.failed as f64));
        table.push_str(&format!(
            "| {} (failed probes) | {k} | {c} | {} |\n",
            fault.describe(),
            ratio(c, k)
        ));
    }
    table.push_str("\nRaw samples: outage (s) / failed of all probes after the fault (holder → holders after).\n\n");
    let mut raw = serde_json::Map::new();
    for &fault in faults {
        for stack in [Stack::Keepalived, Stack::Cplb] {
            let all = results
                .get(&(fault, stack))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let text: Vec<String> = all
                .iter()
                .map(|m| {
                    let s = &m.sample;
                    format!(
                        "{:.3}/{}of{} ({}→{}){}",
                        s.outage,
                        s.failed,
                        s.probes,
                        s.holder + 1,
                        s.holders_after
                            .iter()
                            .map(|h| (h + 1).to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                        if s.recovered { "" } else { " NOT recovered" }
                    )
                })
                .collect();
            table.push_str(&format!(
                "- {} {}: {}\n",
                fault.name(),
                stack.name(),
                text.join(", ")
            ));
            raw.insert(
                format!("{} {}", fault.name(), stack.name()),
                json!(all
                    .iter()
                    .map(|m| json!({
                        "outageSeconds": m.sample.outage,
                        "failedProbes": m.sample.failed,
                        "probes": m.sample.probes,
                        "failedBefore": m.sample.failed_before,
                        "recovered": m.sample.recovered,
                        "holder": m.sample.holder + 1,
                        "holdersAfter": m.sample.holders_after.iter().map(|h| h + 1).collect::<Vec<_>>(),
                        "failedProbeOffsetsMs": m.failed_at_ms,
                    }))
                    .collect::<Vec<_>>()),
            );
        }
    }
    println!("{table}");
    fs::create_dir_all(out)?;
    let file = out.join(format!("run-{}.json", unix_now()));
    fs::write(
        &file,
        serde_json::to_string_pretty(&json!({
            "keepalived": keepalived.version,
            "reps": reps,
            "loadBefore": load_before,
            "loadAfter": load_after,
            "connectTimeoutMs": CONNECT_TIMEOUT.as_millis() as u64,
            "periodMs": PERIOD.as_millis() as u64,
            "samples": raw,
            "table": table,
        }))?,
    )?;
    eprintln!("raw samples: {}", file.display());
    Ok(())
}

fn ratio(cplb: f64, keepalived: f64) -> String {
    if keepalived > 0.0 {
        format!("{:.2}", cplb / keepalived)
    } else if cplb == 0.0 {
        "= (both 0)".to_owned()
    } else {
        "n/a (keepalived 0)".to_owned()
    }
}

/// One repetition on a fresh lab, torn down before returning.
fn one(stack: Stack, fault: Fault, phase: Duration) -> anyhow::Result<Measured> {
    let mut plane = lab()?;
    let result = measure(&mut plane, stack, fault, phase);
    // Every process in the lab's namespaces first, then the lab.
    let _ = clean::stop_processes(PREFIX, Duration::from_secs(5));
    drop(plane);
    result
}

fn measure(
    plane: &mut ControlPlane,
    stack: Stack,
    fault: Fault,
    phase: Duration,
) -> anyhow::Result<Measured> {
    let mut legacy: Vec<Option<Legacy>> = Vec::new();
    for i in 0..3 {
        match stack {
            Stack::Cplb if fault == Fault::SupervisedCrash => {
                plane.start_agent_with(i, &["--supervise"])?;
            }
            Stack::Cplb => plane.start_agent(i)?,
            Stack::Keepalived => legacy.push(Some(start_legacy(plane, i)?)),
        }
    }
    let holder = steady(plane, stack)?;
    let api = plane.vip_api();
    let prober = plane
        .client_prober(CONNECT_TIMEOUT)?
        .with_io_timeout(IO_TIMEOUT);
    let fault_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let abort = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (fault_at, abort) = (fault_at.clone(), abort.clone());
        std::thread::spawn(move || {
            let netns = prober.netns().to_owned();
            cplb_e2e::in_netns(&netns, || probe_loop(&prober, api, &fault_at, &abort))
        })
    };
    std::thread::sleep(BEFORE + phase);
    let at = Instant::now();
    if let Ok(mut slot) = fault_at.lock() {
        *slot = Some(at);
    }
    let injected = inject(plane, &mut legacy, stack, fault, holder);
    if injected.is_err() {
        abort.store(true, Ordering::SeqCst);
    }
    let log = sampler
        .join()
        .map_err(|_| anyhow!("the probe thread panicked"))??;
    injected?;
    let mut sample = summarize(&log, at);
    sample.holder = holder;
    sample.holders_after = plane.holders()?;
    let failed_at_ms = log
        .iter()
        .filter(|(t, ok)| !ok && *t >= at)
        .map(|(t, _)| i64::try_from(t.duration_since(at).as_millis()).unwrap_or(i64::MAX))
        .collect();
    Ok(Measured {
        sample,
        failed_at_ms,
    })
}

fn inject(
    plane: &mut ControlPlane,
    legacy: &mut [Option<Legacy>],
    stack: Stack,
    fault: Fault,
    holder: usize,
) -> anyhow::Result<()> {
    if fault == Fault::LinkDown {
        return Ok(plane.set_link(holder, false)?);
    }
    match stack {
        Stack::Cplb => match fault {
            Fault::Sigkill => plane.signal_agent(holder, Signal::SIGKILL)?,
            Fault::Sigterm => plane.signal_agent(holder, Signal::SIGTERM)?,
            Fault::SupervisedCrash => {
                let workers = plane.agent_children(holder)?;
                let [worker] = workers.as_slice() else {
                    return Err(anyhow!("expected one worker, found {workers:?}"));
                };
                kill(*worker, Signal::SIGKILL)?;
            }
            Fault::LinkDown => {}
        },
        Stack::Keepalived => {
            let node = legacy
                .get_mut(holder)
                .and_then(Option::take)
                .ok_or_else(|| anyhow!("controller {holder} runs no keepalived"))?;
            let lab = plane.lab();
            let parent = lab.child_pid(node.keepalived.child)?;
            let vrrp_children = children(parent);
            ensure!(
                !vrrp_children.is_empty(),
                "keepalived {parent} has no VRRP child"
            );
            match fault {
                Fault::Sigkill => {
                    // The child first: killed after its parent it would get
                    // PR_SET_PDEATHSIG's SIGTERM and resign cleanly.
                    for pid in &vrrp_children {
                        kill(*pid, Signal::SIGKILL)?;
                    }
                    kill(parent, Signal::SIGKILL)?;
                    lab.signal(node.haproxy, Signal::SIGKILL)?;
                }
                Fault::Sigterm => {
                    lab.signal(node.keepalived.child, Signal::SIGTERM)?;
                    lab.wait_child(node.keepalived.child, Duration::from_secs(10))?;
                    lab.kill(node.haproxy)?;
                    let netns = plane.controller(holder)?.netns.clone();
                    redirect(plane, &netns, "-D")?;
                }
                Fault::SupervisedCrash => {
                    for pid in &vrrp_children {
                        kill(*pid, Signal::SIGKILL)?;
                    }
                }
                Fault::LinkDown => {}
            }
            // Keep the handles (files, processes) until the lab goes.
            legacy[holder] = Some(node);
        }
    }
    Ok(())
}

/// Probes every [`PERIOD`] from this thread (in the client's namespace)
/// until the window after the fault closes; at most 60 s.
fn probe_loop(
    prober: &Prober,
    api: SocketAddr,
    fault_at: &Mutex<Option<Instant>>,
    abort: &AtomicBool,
) -> Vec<(Instant, bool)> {
    let start = Instant::now();
    let mut log = Vec::with_capacity(4096);
    let mut last_failure: Option<Instant> = None;
    while start.elapsed() < Duration::from_secs(60) && !abort.load(Ordering::SeqCst) {
        let at = Instant::now();
        let ok = prober
            .get_from_here(api, "/version")
            .is_ok_and(|a| a.status == 200);
        log.push((at, ok));
        if !ok {
            last_failure = Some(at);
        }
        let fault = fault_at.lock().ok().and_then(|slot| *slot);
        if let Some(fault) = fault {
            let since = at.saturating_duration_since(fault);
            if since >= MAX_WINDOW
                || (since >= MIN_WINDOW
                    && last_failure.is_none_or(|f| at.saturating_duration_since(f) >= SETTLE))
            {
                break;
            }
        }
        std::thread::sleep(PERIOD.saturating_sub(at.elapsed()));
    }
    log
}

/// Each node's state-change count and state: from `cplb status --json`,
/// or from keepalived's log (`Entering … STATE` lines).
fn transitions(plane: &ControlPlane, legacy: &[Legacy]) -> Vec<(u64, String)> {
    if !legacy.is_empty() {
        return legacy
            .iter()
            .map(|l| {
                let log = l.keepalived.log();
                let entering: Vec<&str> = log
                    .lines()
                    .filter(|line| line.contains("Entering") && line.contains("STATE"))
                    .collect();
                let state = entering.last().map_or("unknown", |l| {
                    if l.contains("MASTER") {
                        "master"
                    } else {
                        "backup"
                    }
                });
                (entering.len() as u64, state.to_owned())
            })
            .collect();
    }
    (0..3)
        .map(|i| {
            plane
                .status(i)
                .map_or((u64::MAX, "unknown".to_owned()), |s| {
                    let instance = &s["instances"][0];
                    (
                        instance["transitions"].as_u64().unwrap_or(u64::MAX),
                        instance["state"].as_str().unwrap_or("unknown").to_owned(),
                    )
                })
        })
        .collect()
}

fn stability(stack: Stack, duration: Duration, spinners: usize, out: &Path) -> anyhow::Result<()> {
    let load_before = loadavg();
    eprintln!(
        "{}: load before: {load_before}; {spinners} CPU-bound threads for {duration:?}",
        stack.name()
    );
    let mut plane = lab()?;
    let result = stability_in(&mut plane, stack, duration, spinners, &load_before, out);
    let _ = clean::stop_processes(PREFIX, Duration::from_secs(5));
    drop(plane);
    result
}

fn stability_in(
    plane: &mut ControlPlane,
    stack: Stack,
    duration: Duration,
    spinners: usize,
    load_before: &str,
    out: &Path,
) -> anyhow::Result<()> {
    let mut legacy = Vec::new();
    for i in 0..3 {
        match stack {
            Stack::Cplb => plane.start_agent(i)?,
            Stack::Keepalived => legacy.push(start_legacy(plane, i)?),
        }
    }
    let holder = steady(plane, stack)?;
    let before = transitions(plane, &legacy);
    eprintln!("steady: holder ctl{}, transitions {before:?}", holder + 1);

    // The load: CPU-bound threads at the agents' own (default) priority.
    let stop = Arc::new(AtomicBool::new(false));
    let spinning: Vec<_> = (0..spinners)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x: u64 = 1;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                }
                x
            })
        })
        .collect();
    // Probes every 100 ms through the VIP.
    let prober = plane
        .client_prober(Duration::from_millis(100))?
        .with_io_timeout(IO_TIMEOUT);
    let api = plane.vip_api();
    let probing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let netns = prober.netns().to_owned();
            cplb_e2e::in_netns(&netns, || {
                let (mut ok, mut failed) = (0u64, Vec::new());
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    if prober
                        .get_from_here(api, "/version")
                        .is_ok_and(|a| a.status == 200)
                    {
                        ok += 1;
                    } else {
                        failed.push(start.elapsed().as_secs_f64());
                    }
                    std::thread::sleep(Duration::from_millis(100).saturating_sub(at.elapsed()));
                }
                (ok, failed)
            })
        })
    };
    let started = Instant::now();
    let mut holder_changes: Vec<(f64, Vec<usize>)> = Vec::new();
    let mut last = vec![holder];
    let mut loads = Vec::new();
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(1));
        let now = plane.holders()?;
        if now != last {
            eprintln!(
                "[{:6.1}s] holders {:?} -> {:?}",
                started.elapsed().as_secs_f64(),
                last,
                now
            );
            holder_changes.push((started.elapsed().as_secs_f64(), now.clone()));
            last = now;
        }
        if started.elapsed().as_secs() % 60 == 0 {
            let load = loadavg();
            eprintln!("[{:6.1}s] load {load}", started.elapsed().as_secs_f64());
            loads.push(load);
        }
    }
    let load_during = loadavg();
    stop.store(true, Ordering::Relaxed);
    for s in spinning {
        let _ = s.join();
    }
    let (probes_ok, probes_failed) = probing
        .join()
        .map_err(|_| anyhow!("the probe thread panicked"))??;
    let after = transitions(plane, &legacy);
    let load_after = loadavg();
    let changes: Vec<u64> = before
        .iter()
        .zip(&after)
        .map(|((b, _), (a, _))| a.saturating_sub(*b))
        .collect();
    let report = json!({
        "stack": stack.name(),
        "seconds": duration.as_secs(),
        "spinners": spinners,
        "loadBefore": load_before,
        "loadDuring": load_during,
        "loadsEveryMinute": loads,
        "loadAfter": load_after,
        "holderBefore": holder + 1,
        "holderChanges": holder_changes.iter().map(|(t, h)| json!({"atSeconds": t, "holders": h.iter().map(|h| h + 1).collect::<Vec<_>>()})).collect::<Vec<_>>(),
        "transitionsDuring": changes,
        "statesAfter": after.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>(),
        "probesOk": probes_ok,
        "probesFailedAtSeconds": probes_failed,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    fs::create_dir_all(out)?;
    let file = out.join(format!("stability-{}.json", unix_now()));
    fs::write(&file, serde_json::to_string_pretty(&report)?)?;
    if changes.iter().any(|&c| c > 0) || !holder_changes.is_empty() {
        for i in 0..3 {
            let log = out.join(format!("stability-{}-ctl{}.log", unix_now(), i + 1));
            let text = match legacy.get(i) {
                Some(l) => l.keepalived.log(),
                None => plane.agent_log(i),
            };
            fs::write(&log, text)?;
        }
        eprintln!(
            "spurious state changes: agent logs saved next to {}",
            file.display()
        );
    }
    eprintln!("report: {}", file.display());
    Ok(())
}

/// Ctrl-C or SIGTERM: remove the labs (processes, namespaces, files).
fn on_interrupt_clean_up() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("signal runtime")?;
    let (mut int, mut term) = {
        let _enter = runtime.enter();
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).context("SIGINT handler")?,
            signal(SignalKind::terminate()).context("SIGTERM handler")?,
        )
    };
    std::thread::spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("\nfailover-bench: interrupted, removing the lab");
        let _ = clean::clean(PREFIX, Duration::from_secs(5));
        std::process::exit(130);
    });
    Ok(())
}
