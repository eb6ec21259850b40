//! `cplb-lab bench`: the whole agent against keepalived + HAProxy configured
//! like k0s, in the same lab, with the same probes, in one run.
//!
//! For every fault and repetition, each stack gets a fresh lab: three
//! controllers with their test apiservers and either `cplb run --supervise`
//! (the agent as deployed outside systemd) or keepalived as k0s renders it
//! plus k0s's REDIRECT rule and haproxy on :6444. Once the lab is steady, a
//! thread on the client host sends an HTTPS `GET /version` through VIP:6443
//! every 10 ms (new connection each, 100 ms connect timeout), the fault hits
//! the VIP holder, and the thread records every probe's start and result.
//! The outage is the longest run of failed probes that ends after the fault;
//! failed probes are counted from the fault to the end of the window.
//! Repetition `k` of `n` waits `(k + 0.5) / n` s more before the fault, so
//! the faults spread over the VRRP advert cycle alike for both stacks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::{ControlPlane, Error, Family, Options, Prober, clean};

/// The namespace prefix of the benchmark's labs.
pub const BENCH_PREFIX: &str = "cplb-bench-";

/// Probe period (start to start), as in `bench/failover`.
const PERIOD: Duration = Duration::from_millis(10);
/// Connect timeout of one probe, as in `bench/failover`.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
/// Read/write timeout of one probe once connected.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Probing before the fault (plus the repetition's phase, up to 1 s).
const BEFORE: Duration = Duration::from_secs(1);
/// A failover window lasts at least this long after the fault (longer than
/// Master_Down_Interval, 3.22 s, so a late switch is seen) ...
const MIN_WINDOW: Duration = Duration::from_secs(5);
/// ... and until the probes have succeeded this long after the last failure ...
const SETTLE: Duration = Duration::from_secs(1);
/// ... but no longer than this.
const MAX_WINDOW: Duration = Duration::from_secs(15);
/// Backend loss: a fixed window, failed probes counted.
const BACKEND_WINDOW: Duration = Duration::from_secs(6);

/// The two stacks under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stack {
    /// keepalived as k0s renders it, k0s's REDIRECT rule, haproxy on :6444.
    Keepalived,
    /// `cplb run --supervise`.
    Cplb,
}

impl Stack {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Stack::Keepalived => "keepalived+HAProxy",
            Stack::Cplb => "cplb",
        }
    }
}

/// A fault dealt to the VIP holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Its LAN link goes down.
    LinkDown,
    /// SIGKILL: cplb's worker under `--supervise`, or keepalived (its
    /// haproxy and REDIRECT rule stay, as k0s's proxy lives in k0s itself).
    Sigkill,
    /// SIGTERM: cplb's supervisor; keepalived stopped, then haproxy and the
    /// rule removed, as turning k0s's CPLB off does.
    Sigterm,
    /// Its apiserver stops; the VIP should not move.
    BackendLoss,
}

impl Fault {
    /// Every fault, in table order.
    pub const ALL: [Fault; 4] = [
        Fault::LinkDown,
        Fault::Sigkill,
        Fault::Sigterm,
        Fault::BackendLoss,
    ];

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::LinkDown => "link-down",
            Fault::Sigkill => "sigkill",
            Fault::Sigterm => "sigterm",
            Fault::BackendLoss => "backend-loss",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Result<Fault, Error> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == name.trim())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown fault {name:?}; one of link-down, sigkill, sigterm, backend-loss"
                ))
            })
    }

    fn describe(self) -> &'static str {
        match self {
            Fault::LinkDown => "link down",
            Fault::Sigkill => "SIGKILL",
            Fault::Sigterm => "SIGTERM",
            Fault::BackendLoss => "backend loss",
        }
    }
}

/// What the client saw in one repetition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Longest run of failed probes ending after the fault, seconds.
    pub outage: f64,
    /// Failed probes from the fault to the end of the window.
    pub failed: usize,
    /// Probes from the fault to the end of the window.
    pub probes: usize,
    /// Failed probes in the second before the fault (should be 0).
    pub failed_before: usize,
    /// Whether the last probes of the window succeeded.
    pub recovered: bool,
    /// The controller that held the VIP before the fault.
    pub holder: usize,
    /// The controllers holding it at the end of the window.
    pub holders_after: Vec<usize>,
}

/// How to run the benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Repetitions per fault and stack.
    pub reps: usize,
    /// The faults, in order.
    pub faults: Vec<Fault>,
}

/// Every sample, by fault and stack.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The samples.
    pub samples: BTreeMap<(Fault, Stack), Vec<Sample>>,
    /// Repetitions asked for.
    pub reps: usize,
    /// Faults in order.
    pub faults: Vec<Fault>,
}

/// Runs the benchmark; progress goes to stderr.
pub fn run(options: &BenchOptions) -> Result<Report, Error> {
    let mut report = Report {
        reps: options.reps,
        faults: options.faults.clone(),
        ..Report::default()
    };
    let started = Instant::now();
    for &fault in &options.faults {
        for rep in 0..options.reps {
            // Alternate the order so drift over the run hits both alike.
            let stacks = if rep % 2 == 0 {
                [Stack::Keepalived, Stack::Cplb]
            } else {
                [Stack::Cplb, Stack::Keepalived]
            };
            // The fault lands at a different point of the 1 s advert cycle
            // in each repetition, the same points for both stacks: without
            // this the lab's own timing locks the phase (the last advert
            // before the fault) and with it the link-down outage.
            let phase = Duration::from_secs_f64((rep as f64 + 0.5) / options.reps as f64);
            for stack in stacks {
                let sample = one(stack, fault, phase)?;
                eprintln!(
                    "[{:6.1}s] {:12} {:18} rep {}: outage {:.3} s, {} of {} probes failed{}{}, VIP {} -> {:?}",
                    started.elapsed().as_secs_f64(),
                    fault.name(),
                    stack.name(),
                    rep + 1,
                    sample.outage,
                    sample.failed,
                    sample.probes,
                    if sample.recovered {
                        ""
                    } else {
                        ", NOT recovered"
                    },
                    if sample.failed_before > 0 {
                        format!(", {} failed before the fault", sample.failed_before)
                    } else {
                        String::new()
                    },
                    sample.holder + 1,
                    sample
                        .holders_after
                        .iter()
                        .map(|h| h + 1)
                        .collect::<Vec<_>>(),
                );
                report
                    .samples
                    .entry((fault, stack))
                    .or_default()
                    .push(sample);
            }
        }
    }
    Ok(report)
}

/// One repetition on a fresh lab, torn down before returning.
fn one(stack: Stack, fault: Fault, phase: Duration) -> Result<Sample, Error> {
    let mut lab = ControlPlane::start(Options {
        prefix: Some(BENCH_PREFIX.to_owned()),
        family: Family::V4,
        start_agents: false,
        log_level: None,
    })?;
    let result = measure(&mut lab, stack, fault, phase);
    // Every process in the lab's namespaces (supervised workers, keepalived's
    // VRRP child) goes first; then the lab and its namespaces.
    let _ = clean::stop_processes(BENCH_PREFIX, Duration::from_secs(5));
    drop(lab);
    result
}

fn measure(
    lab: &mut ControlPlane,
    stack: Stack,
    fault: Fault,
    phase: Duration,
) -> Result<Sample, Error> {
    for i in 0..3 {
        match stack {
            Stack::Cplb => lab.start_agent_with(i, &["--supervise"])?,
            Stack::Keepalived => lab.start_legacy(i)?,
        }
    }
    let holder = steady(lab, stack)?;
    let fixed = fault == Fault::BackendLoss;
    probe_fault(lab, holder, phase, fixed, |lab| {
        inject(lab, stack, fault, holder)
    })
}

/// Probes the VIP from the client every [`PERIOD`], deals the fault
/// (`inject`) [`BEFORE`] + `phase` in, and returns what the client saw:
/// until the window closes (a fixed [`BACKEND_WINDOW`] if `fixed`). The
/// lab must be steady with `holder` holding the VIP.
pub fn probe_fault(
    lab: &mut ControlPlane,
    holder: usize,
    phase: Duration,
    fixed: bool,
    inject: impl FnOnce(&mut ControlPlane) -> Result<(), Error>,
) -> Result<Sample, Error> {
    let api = lab.vip_api();
    let prober = lab
        .client_prober(CONNECT_TIMEOUT)?
        .with_io_timeout(IO_TIMEOUT);
    let fault_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let abort = Arc::new(AtomicBool::new(false));
    let sampler = {
        let fault_at = fault_at.clone();
        let abort = abort.clone();
        std::thread::spawn(move || {
            let netns = prober.netns().to_owned();
            cplb_e2e::in_netns(&netns, || {
                probe_loop(&prober, api, &fault_at, &abort, fixed)
            })
        })
    };
    std::thread::sleep(BEFORE + phase);
    let at = Instant::now();
    if let Ok(mut slot) = fault_at.lock() {
        *slot = Some(at);
    }
    let injected = inject(lab);
    if injected.is_err() {
        abort.store(true, Ordering::SeqCst);
    }
    let log = sampler
        .join()
        .map_err(|_| Error::Invalid("the probe thread panicked".to_owned()))?
        .map_err(|e| Error::Invalid(format!("probe thread: {e}")))?;
    injected?;
    let holders_after = lab.holders()?;
    let mut sample = summarize(&log, at);
    sample.holder = holder;
    sample.holders_after = holders_after;
    Ok(sample)
}

/// Waits until the lab is in its steady state and returns the VIP holder:
/// exactly one holder, the REDIRECT rule on every controller, the proxy
/// balancing over all three apiservers, and (cplb) every agent at its base
/// priority, past the start-up hold-down.
pub(crate) fn steady(lab: &ControlPlane, stack: Stack) -> Result<usize, Error> {
    let holder = lab.wait_for_holder(Duration::from_secs(30), |_| true)?;
    cplb_e2e::wait_until(
        "the REDIRECT rule on every controller",
        Duration::from_secs(15),
        || (0..3).all(|i| lab.redirect_rules(i).is_ok_and(|r| !r.is_empty())),
    )?;
    let prober = lab.client_prober(Duration::from_secs(1))?;
    let api = lab.vip_api();
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
            || (0..3).all(|i| lab.agent_at_base_priority(i)),
        )?;
    }
    // The holder must not have changed meanwhile.
    lab.wait_for_holder(Duration::from_secs(5), |h| h == holder)
}

fn inject(lab: &mut ControlPlane, stack: Stack, fault: Fault, holder: usize) -> Result<(), Error> {
    match (fault, stack) {
        (Fault::LinkDown, _) => lab.set_link(holder, false),
        (Fault::Sigkill, Stack::Cplb) => kill_worker(lab, holder),
        (Fault::Sigkill, Stack::Keepalived) => lab.signal_legacy(holder, Signal::SIGKILL),
        (Fault::Sigterm, Stack::Cplb) => lab.signal_agent(holder, Signal::SIGTERM),
        (Fault::Sigterm, Stack::Keepalived) => lab.stop_legacy(holder, Duration::from_secs(10)),
        (Fault::BackendLoss, _) => lab.stop_apiserver(holder),
    }
}

/// SIGKILLs the worker of controller `i`'s supervised agent (`cplb run
/// --supervise`).
pub fn kill_worker(lab: &ControlPlane, i: usize) -> Result<(), Error> {
    let workers = lab.agent_children(i)?;
    let [worker] = workers.as_slice() else {
        return Err(Error::Invalid(format!(
            "expected one worker under the supervisor, found {workers:?}"
        )));
    };
    let pid = i32::try_from(*worker).map_err(|_| Error::Invalid(format!("pid {worker}")))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL)
        .map_err(|e| Error::Invalid(format!("kill -KILL {pid}: {e}")))
}

/// Probes every [`PERIOD`] from the calling thread (already in the client's
/// namespace) until the window after the fault closes; bounded by
/// [`MAX_WINDOW`] after the fault and 60 s overall.
fn probe_loop(
    prober: &Prober,
    api: SocketAddr,
    fault_at: &Mutex<Option<Instant>>,
    abort: &AtomicBool,
    fixed: bool,
) -> Vec<(Instant, bool)> {
    let start = Instant::now();
    let mut log: Vec<(Instant, bool)> = Vec::with_capacity(4096);
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
            let done = if fixed {
                since >= BACKEND_WINDOW
            } else {
                since >= MAX_WINDOW
                    || (since >= MIN_WINDOW
                        && last_failure.is_none_or(|f| at.saturating_duration_since(f) >= SETTLE))
            };
            if done {
                break;
            }
        }
        std::thread::sleep(PERIOD.saturating_sub(at.elapsed()));
    }
    log
}

/// The sample from a probe log and the fault's instant.
pub fn summarize(log: &[(Instant, bool)], fault: Instant) -> Sample {
    let mut outage = Duration::ZERO;
    let mut run_start: Option<Instant> = None;
    for &(at, ok) in log {
        match (ok, run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(begun)) => {
                if at > fault {
                    outage = outage.max(at - begun);
                }
                run_start = None;
            }
            _ => {}
        }
    }
    let recovered = run_start.is_none();
    if let (Some(begun), Some(&(last, _))) = (run_start, log.last()) {
        outage = outage.max(last.saturating_duration_since(begun));
    }
    let after: Vec<bool> = log
        .iter()
        .filter(|(at, _)| *at >= fault)
        .map(|&(_, ok)| ok)
        .collect();
    let failed_before = log.iter().filter(|(at, ok)| *at < fault && !ok).count();
    Sample {
        outage: outage.as_secs_f64(),
        failed: after.iter().filter(|ok| !**ok).count(),
        probes: after.len(),
        failed_before,
        recovered,
        holder: 0,
        holders_after: Vec::new(),
    }
}

/// The median of `values` (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
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

impl Report {
    fn column(&self, fault: Fault, stack: Stack, f: impl Fn(&Sample) -> f64) -> Vec<f64> {
        self.samples
            .get(&(fault, stack))
            .map(|s| s.iter().map(f).collect())
            .unwrap_or_default()
    }

    /// The markdown tables: medians and ratios, then the raw samples.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Outage seen by a client sending HTTPS GET /version through VIP:6443 every 10 ms \
             (new connection each, 100 ms connect timeout); median of {} repetitions, fresh lab each.\n\n\
             | fault on the VIP holder | keepalived+HAProxy | cplb | cplb / keepalived+HAProxy |\n|---|---|---|---|\n",
            self.reps
        );
        // Which keepalived ran: k0s's 2.4.3 where scripts/setup built it.
        if let Ok(k) = cplb_e2e::keepalived::binary() {
            out = format!("keepalived: {} ({}).\n\n{out}", k.version, k.path.display());
        }
        for &fault in &self.faults {
            let k = median(&self.column(fault, Stack::Keepalived, |s| s.outage));
            let c = median(&self.column(fault, Stack::Cplb, |s| s.outage));
            out.push_str(&format!(
                "| {} (outage) | {k:.3} s | {c:.3} s | {} |\n",
                fault.describe(),
                ratio(c, k)
            ));
            let k = median(&self.column(fault, Stack::Keepalived, |s| s.failed as f64));
            let c = median(&self.column(fault, Stack::Cplb, |s| s.failed as f64));
            out.push_str(&format!(
                "| {} (failed probes) | {k} | {c} | {} |\n",
                fault.describe(),
                ratio(c, k)
            ));
        }
        out.push_str("\nRaw samples: outage in seconds / failed probes of all probes after the fault; holder → holders at the end (controller numbers).\n\n");
        for &fault in &self.faults {
            for stack in [Stack::Keepalived, Stack::Cplb] {
                let samples = self
                    .samples
                    .get(&(fault, stack))
                    .cloned()
                    .unwrap_or_default();
                let text: Vec<String> = samples
                    .iter()
                    .map(|s| {
                        format!(
                            "{:.3}/{}of{} ({}→{}){}{}",
                            s.outage,
                            s.failed,
                            s.probes,
                            s.holder + 1,
                            s.holders_after
                                .iter()
                                .map(|h| (h + 1).to_string())
                                .collect::<Vec<_>>()
                                .join(","),
                            if s.recovered { "" } else { " NOT recovered" },
                            if s.failed_before > 0 {
                                format!(" {} failed before", s.failed_before)
                            } else {
                                String::new()
                            }
                        )
                    })
                    .collect();
                out.push_str(&format!(
                    "- {} {}: {}\n",
                    fault.name(),
                    stack.name(),
                    text.join(", ")
                ));
            }
        }
        out
    }

    /// Every sample as JSON.
    pub fn json(&self) -> serde_json::Value {
        let mut faults = serde_json::Map::new();
        for &fault in &self.faults {
            let mut stacks = serde_json::Map::new();
            for stack in [Stack::Keepalived, Stack::Cplb] {
                let samples: Vec<serde_json::Value> = self
                    .samples
                    .get(&(fault, stack))
                    .map(|all| {
                        all.iter()
                            .map(|s| {
                                serde_json::json!({
                                    "outageSeconds": s.outage,
                                    "failedProbes": s.failed,
                                    "probes": s.probes,
                                    "failedBefore": s.failed_before,
                                    "recovered": s.recovered,
                                    "holder": s.holder + 1,
                                    "holdersAfter": s.holders_after.iter().map(|h| h + 1).collect::<Vec<_>>(),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                stacks.insert(
                    stack.name().to_owned(),
                    serde_json::json!({
                        "medianOutageSeconds": median(&self.column(fault, stack, |s| s.outage)),
                        "medianFailedProbes": median(&self.column(fault, stack, |s| s.failed as f64)),
                        "samples": samples,
                    }),
                );
            }
            faults.insert(fault.name().to_owned(), serde_json::Value::Object(stacks));
        }
        serde_json::json!({ "reps": self.reps, "faults": faults })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outage_is_the_longest_failed_run_ending_after_the_fault() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let log = vec![
            (at(0), false),
            (at(100), true), // a blip before the fault: not counted as outage
            (at(200), true),
            (at(300), false),
            (at(400), false),
            (at(700), true),
            (at(800), false),
            (at(900), true),
        ];
        let s = summarize(&log, at(250));
        assert!((s.outage - 0.4).abs() < 1e-9, "{}", s.outage);
        assert_eq!(s.failed, 3);
        assert_eq!(s.probes, 5); // 300, 400, 700, 800, 900
        assert_eq!(s.failed_before, 1);
        assert!(s.recovered);
    }

    #[test]
    fn an_outage_still_open_at_the_end_is_not_recovered() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let s = summarize(&[(at(0), true), (at(100), false), (at(600), false)], at(50));
        assert!(!s.recovered);
        assert!((s.outage - 0.5).abs() < 1e-9);
    }

    #[test]
    fn medians_and_fault_names() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        for f in Fault::ALL {
            assert_eq!(Fault::parse(f.name()).unwrap(), f);
        }
        assert!(Fault::parse("reboot").is_err());
        assert_eq!(ratio(0.0, 0.0), "= (both 0)");
        assert_eq!(ratio(1.0, 2.0), "0.50");
    }
}
