//! `cplb-lab soak`: the three-controller lab, every agent under
//! `cplb run --supervise`, with a random fault every interval (30 s by
//! default) for a given duration, and a client sending HTTPS `GET /version`
//! through VIP:6443 all along (issue 14, "Soak").
//!
//! Faults are drawn from a deck (each kind once, in random order, then a
//! new shuffle), so a short run still sees every kind; the target is the
//! VIP holder two times in three, else a backup. Every choice comes from one
//! seeded generator: `--seed` replays a run's sequence of faults (the lab's
//! timing, and so who holds the VIP when, is not replayed).
//!
//! The report: per fault, the longest run of failed probes that began in
//! its slot, the failed probes, who held the VIP at the slot's end and
//! whether the lab had recovered (exactly one holder, every agent running
//! with its rules, probes succeeding); at the end, the invariants (exactly
//! one holder, no VIP anywhere else, the same REDIRECT rules as at the
//! start, no namespace left after teardown) and each agent's RSS and file
//! descriptor count at the start and the end.
//!
//! Everything happens inside the lab's namespaces: the flood is sent from
//! the lab's client host onto the lab's bridge, at a bounded rate and count.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::{AUTH_PASS, ControlPlane, Error, Family, Options, Prober, clean};

/// The namespace prefix of the soak's lab (the in-suite test uses a unique
/// one).
pub const SOAK_PREFIX: &str = "cplb-soak-";

/// How long a fault with an undo (link, partition, stop, flood) lasts.
const HOLD: Duration = Duration::from_secs(5);
/// How long an apiserver stays down.
const API_DOWN: Duration = Duration::from_secs(10);
/// After SIGTERM, the agent is started again after this (a service
/// manager's restart delay).
const RESTART_AFTER: Duration = Duration::from_secs(2);
/// Probe timeouts: connect, then each read and write.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Recovery means the probes succeeded for this long.
const CLEAN_PROBING: Duration = Duration::from_secs(1);
/// The flood: packets per second and in all (bounded, inside the lab).
const FLOOD_RATE: u32 = 2000;
const FLOOD_MAX_PACKETS: u32 = 20_000;
/// The VRID k0s uses by default, which the lab's agents run.
const VRID: u8 = 51;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SoakFault {
    /// The target's LAN link goes down for [`HOLD`], then up.
    LinkDown,
    /// SIGKILL to the target's worker; its supervisor restarts it.
    Sigkill,
    /// SIGTERM to the target's agent (it hands over and cleans up), started
    /// again after [`RESTART_AFTER`].
    SigtermRestart,
    /// SIGSTOP to the target's worker for [`HOLD`], then SIGCONT.
    StopCont,
    /// The target's apiserver stops for [`API_DOWN`], then starts again.
    ApiserverDown,
    /// The target is cut off the bridge (carrier stays up) for [`HOLD`].
    Partition,
    /// An operator deletes the target's REDIRECT rules by hand.
    RuleDeleted,
    /// An operator deletes the VIP from the target by hand.
    VipDeleted,
    /// Protocol-112 packets (valid lower-priority adverts, other VRIDs, bad
    /// checksums, garbage) from the client host for [`HOLD`], at
    /// [`FLOOD_RATE`] packets per second.
    Flood,
}

impl SoakFault {
    /// Every kind, in table order.
    pub const ALL: [SoakFault; 9] = [
        SoakFault::LinkDown,
        SoakFault::Sigkill,
        SoakFault::SigtermRestart,
        SoakFault::StopCont,
        SoakFault::ApiserverDown,
        SoakFault::Partition,
        SoakFault::RuleDeleted,
        SoakFault::VipDeleted,
        SoakFault::Flood,
    ];

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            SoakFault::LinkDown => "link-down",
            SoakFault::Sigkill => "sigkill",
            SoakFault::SigtermRestart => "sigterm",
            SoakFault::StopCont => "stop-cont",
            SoakFault::ApiserverDown => "apiserver-down",
            SoakFault::Partition => "partition",
            SoakFault::RuleDeleted => "rule-deleted",
            SoakFault::VipDeleted => "vip-deleted",
            SoakFault::Flood => "flood",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Result<SoakFault, Error> {
        SoakFault::ALL
            .into_iter()
            .find(|f| f.name() == name.trim())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown fault {name:?}; one of {}",
                    SoakFault::ALL.map(SoakFault::name).join(", ")
                ))
            })
    }

    /// Parses a comma-separated list.
    pub fn parse_list(list: &str) -> Result<Vec<SoakFault>, Error> {
        list.split(',')
            .filter(|f| !f.trim().is_empty())
            .map(SoakFault::parse)
            .collect()
    }

    /// A generous bound on the outage a client may see: failover
    /// (Master_Down_Interval 3.6 s) plus the fault's own hold plus slack for
    /// a loaded machine. Faults that need no failover (a backup's fault, an
    /// apiserver the proxy routes around, a rule the agent puts back) get
    /// the same bound: the point is "bounded", not "fast".
    pub fn outage_bound(self) -> Duration {
        match self {
            SoakFault::ApiserverDown => Duration::from_secs(12),
            _ => Duration::from_secs(15),
        }
    }
}

/// How to soak.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// How long to inject faults.
    pub duration: Duration,
    /// One fault per interval.
    pub interval: Duration,
    /// The generator's seed.
    pub seed: u64,
    /// The kinds to draw from.
    pub faults: Vec<SoakFault>,
    /// Namespace prefix; `None` picks a unique test one.
    pub prefix: Option<String>,
    /// Time between the starts of two probes.
    pub probe_period: Duration,
    /// Print each fault's line to stderr as it completes.
    pub progress: bool,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            duration: Duration::from_secs(3600),
            interval: Duration::from_secs(30),
            seed: 0,
            faults: SoakFault::ALL.to_vec(),
            prefix: Some(SOAK_PREFIX.to_owned()),
            probe_period: Duration::from_millis(100),
            progress: true,
        }
    }
}

/// A seed from the clock, for runs that do not give one.
pub fn random_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32)
}

/// What one fault did.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    /// Its number, from 1.
    pub number: usize,
    /// When it was injected, since the soak started.
    pub at: Duration,
    /// Its kind.
    pub fault: SoakFault,
    /// The controller it hit.
    pub target: usize,
    /// Who held the VIP when it was injected.
    pub holder_before: Vec<usize>,
    /// The longest run of failed probes that began in its slot.
    pub outage: Duration,
    /// Failed probes in its slot.
    pub failed: usize,
    /// Probes in its slot.
    pub probes: usize,
    /// From the injection until the lab was whole again (one holder, all
    /// agents with their rules, probes succeeding), if it was within the
    /// slot.
    pub recovered_after: Option<Duration>,
    /// Who held the VIP at the end of the slot.
    pub holders_after: Vec<usize>,
    /// What else was seen (a rule put back after …, an error injecting).
    pub note: String,
}

/// An agent's resource use: the supervisor's and its worker's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Supervisor pid.
    pub pid: u32,
    /// Supervisor resident set, KiB.
    pub rss_kib: u64,
    /// Supervisor open file descriptors.
    pub fds: usize,
    /// Worker pid (0 when none was found).
    pub worker_pid: u32,
    /// Worker resident set, KiB.
    pub worker_rss_kib: u64,
    /// Worker open file descriptors.
    pub worker_fds: usize,
}

/// The soak's outcome.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// The seed (replays the fault sequence).
    pub seed: u64,
    /// Fault interval.
    pub interval: Duration,
    /// How long faults were injected.
    pub duration: Duration,
    /// Every fault.
    pub faults: Vec<FaultRecord>,
    /// Per controller, at the start.
    pub usage_start: Vec<Usage>,
    /// Per controller, at the end.
    pub usage_end: Vec<Usage>,
    /// REDIRECT rules per controller at the start.
    pub rules_start: Vec<Vec<String>>,
    /// REDIRECT rules per controller at the end.
    pub rules_end: Vec<Vec<String>>,
    /// Holders at the end (after a settling wait).
    pub final_holders: Vec<usize>,
    /// Where the VIP was found other than on the holder's eth0.
    pub stale_vips: Vec<String>,
    /// Namespaces left after the lab was torn down.
    pub stale_namespaces: Vec<String>,
    /// All probes.
    pub probes: usize,
    /// All failed probes.
    pub failed: usize,
}

impl SoakReport {
    /// The invariants that must hold whatever the faults did, with
    /// `fd_slack` the growth in open file descriptors allowed per process.
    pub fn violations(&self, fd_slack: usize) -> Vec<String> {
        let mut out = Vec::new();
        if self.final_holders.len() != 1 {
            out.push(format!(
                "{} VIP holders at the end: {:?}",
                self.final_holders.len(),
                numbered(&self.final_holders)
            ));
        }
        for vip in &self.stale_vips {
            out.push(format!("stale VIP: {vip}"));
        }
        for (i, (start, end)) in self.rules_start.iter().zip(&self.rules_end).enumerate() {
            if start != end {
                out.push(format!(
                    "ctl{}: REDIRECT rules {start:?} at the start, {end:?} at the end",
                    i + 1
                ));
            }
        }
        for ns in &self.stale_namespaces {
            out.push(format!("namespace left after teardown: {ns}"));
        }
        for (i, (start, end)) in self.usage_start.iter().zip(&self.usage_end).enumerate() {
            if end.pid == 0 || end.worker_pid == 0 {
                out.push(format!("ctl{}: no agent or no worker at the end", i + 1));
                continue;
            }
            if end.fds > start.fds + fd_slack || end.worker_fds > start.worker_fds + fd_slack {
                out.push(format!(
                    "ctl{}: file descriptors grew: supervisor {} -> {}, worker {} -> {}",
                    i + 1,
                    start.fds,
                    end.fds,
                    start.worker_fds,
                    end.worker_fds
                ));
            }
        }
        out
    }

    /// The faults whose outage exceeded their kind's bound or after which
    /// the lab did not recover within the slot.
    pub fn unbounded(&self) -> Vec<&FaultRecord> {
        self.faults
            .iter()
            .filter(|f| f.outage > f.fault.outage_bound() || f.recovered_after.is_none())
            .collect()
    }

    /// The report as markdown: one row per fault, then the summary.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "cplb soak: seed {}, a fault every {} s for {} s; HTTPS GET /version through VIP:6443 every probe period.\n",
            self.seed,
            self.interval.as_secs(),
            self.duration.as_secs()
        );
        out.push_str("| # | t (s) | fault | target | holder before | outage (s) | failed / probes | recovered after (s) | holders after | note |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for f in &self.faults {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | ctl{}{} | {} | {:.1} | {} / {} | {} | {} | {} |",
                f.number,
                f.at.as_secs_f64(),
                f.fault.name(),
                f.target + 1,
                if f.holder_before.contains(&f.target) {
                    " (holder)"
                } else {
                    ""
                },
                numbered(&f.holder_before),
                f.outage.as_secs_f64(),
                f.failed,
                f.probes,
                f.recovered_after
                    .map_or("**no**".to_owned(), |d| format!("{:.1}", d.as_secs_f64())),
                numbered(&f.holders_after),
                f.note
            );
        }
        // Per kind: count, worst outage.
        let mut kinds: BTreeMap<SoakFault, (usize, Duration, usize)> = BTreeMap::new();
        for f in &self.faults {
            let e = kinds.entry(f.fault).or_default();
            e.0 += 1;
            e.1 = e.1.max(f.outage);
            e.2 += usize::from(f.recovered_after.is_none());
        }
        out.push_str("\n| fault | times | worst outage (s) | bound (s) | not recovered in its slot |\n|---|---|---|---|---|\n");
        for (kind, (n, worst, unrecovered)) in &kinds {
            let _ = writeln!(
                out,
                "| {} | {n} | {:.1} | {} | {unrecovered} |",
                kind.name(),
                worst.as_secs_f64(),
                kind.outage_bound().as_secs()
            );
        }
        let _ = writeln!(
            out,
            "\nProbes: {} failed of {}.\nHolders at the end: {}.\nStale VIPs: {}.\nStale namespaces after teardown: {}.",
            self.failed,
            self.probes,
            numbered(&self.final_holders),
            if self.stale_vips.is_empty() {
                "none".to_owned()
            } else {
                self.stale_vips.join(", ")
            },
            if self.stale_namespaces.is_empty() {
                "none".to_owned()
            } else {
                self.stale_namespaces.join(", ")
            },
        );
        out.push_str("\n| agent | REDIRECT rules start → end | supervisor RSS KiB start → end | supervisor fds | worker RSS KiB start → end | worker fds |\n|---|---|---|---|---|---|\n");
        for i in 0..self.usage_start.len().max(self.usage_end.len()) {
            let s = self.usage_start.get(i).cloned().unwrap_or_default();
            let e = self.usage_end.get(i).cloned().unwrap_or_default();
            let rs = self.rules_start.get(i).map_or(0, Vec::len);
            let re = self.rules_end.get(i).map_or(0, Vec::len);
            let _ = writeln!(
                out,
                "| ctl{} | {rs} → {re} | {} → {} | {} → {} | {} → {} | {} → {} |",
                i + 1,
                s.rss_kib,
                e.rss_kib,
                s.fds,
                e.fds,
                s.worker_rss_kib,
                e.worker_rss_kib,
                s.worker_fds,
                e.worker_fds
            );
        }
        let violations = self.violations(FD_SLACK);
        let unbounded = self.unbounded();
        if violations.is_empty() && unbounded.is_empty() {
            out.push_str("\nAll invariants held; every outage within its bound.\n");
        } else {
            for v in violations {
                let _ = writeln!(out, "\nVIOLATION: {v}");
            }
            for f in unbounded {
                let _ = writeln!(
                    out,
                    "\nUNBOUNDED: fault {} ({} on ctl{}): outage {:.1} s (bound {} s), {}",
                    f.number,
                    f.fault.name(),
                    f.target + 1,
                    f.outage.as_secs_f64(),
                    f.fault.outage_bound().as_secs(),
                    if f.recovered_after.is_some() {
                        "recovered"
                    } else {
                        "not recovered within its slot"
                    }
                );
            }
        }
        out
    }
}

/// The file descriptor growth per process the report tolerates.
pub const FD_SLACK: usize = 8;

fn numbered(indices: &[usize]) -> String {
    if indices.is_empty() {
        return "none".to_owned();
    }
    indices
        .iter()
        .map(|i| format!("ctl{}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// Draws faults: each kind once per deck, shuffled.
struct Deck {
    rng: fastrand::Rng,
    kinds: Vec<SoakFault>,
    left: Vec<SoakFault>,
}

impl Deck {
    fn draw(&mut self) -> SoakFault {
        if self.left.is_empty() {
            self.left = self.kinds.clone();
            self.rng.shuffle(&mut self.left);
        }
        // Non-empty: refilled above from a non-empty list (checked in run).
        self.left.pop().unwrap_or(SoakFault::Sigkill)
    }
}

/// The probe log shared with the probing thread.
type ProbeLog = Arc<Mutex<Vec<(Instant, bool)>>>;

/// Runs the soak; progress (one line per fault) goes to stderr.
pub fn run(options: &SoakOptions) -> Result<SoakReport, Error> {
    if options.faults.is_empty() {
        return Err(Error::Invalid("no fault kinds to draw from".to_owned()));
    }
    let mut plane = ControlPlane::start(Options {
        prefix: options.prefix.clone(),
        family: Family::V4,
        start_agents: false,
        log_level: Some("info".to_owned()),
    })?;
    let prefix = plane.lab().prefix().to_owned();
    let result = soak(&mut plane, options);
    // Every process in the lab's namespaces first (supervised workers),
    // then the lab; then nothing of it may be left.
    let _ = clean::stop_processes(&prefix, Duration::from_secs(5));
    drop(plane);
    let mut report = result?;
    report.stale_namespaces = cplb_e2e::list_netns(&prefix)?;
    Ok(report)
}

fn soak(plane: &mut ControlPlane, options: &SoakOptions) -> Result<SoakReport, Error> {
    for i in 0..3 {
        plane.start_agent_with(i, &["--supervise"])?;
    }
    steady(plane, Duration::from_secs(60))?;
    let mut report = SoakReport {
        seed: options.seed,
        interval: options.interval,
        duration: options.duration,
        usage_start: (0..3).map(|i| usage(plane, i)).collect(),
        rules_start: rules(plane),
        ..SoakReport::default()
    };
    if options.progress {
        eprintln!(
            "soak: seed {} (replay with --seed {}), {} faults of {} s each",
            options.seed,
            options.seed,
            options.duration.as_secs() / options.interval.as_secs().max(1),
            options.interval.as_secs()
        );
    }

    let log: ProbeLog = Arc::new(Mutex::new(Vec::with_capacity(4096)));
    let stop = Arc::new(AtomicBool::new(false));
    let prober = plane
        .client_prober(CONNECT_TIMEOUT)?
        .with_io_timeout(IO_TIMEOUT);
    // Bounded even if nobody sets `stop`: the soak plus a generous margin.
    let probe_deadline = options.duration + Duration::from_secs(600);
    let sampler = {
        let (log, stop, api, period) = (
            log.clone(),
            stop.clone(),
            plane.vip_api(),
            options.probe_period,
        );
        std::thread::spawn(move || {
            let netns = prober.netns().to_owned();
            cplb_e2e::in_netns(&netns, || {
                probe_loop(&prober, api, period, &log, &stop, probe_deadline)
            })
        })
    };

    let outcome = inject_all(plane, options, &log, &mut report);
    // Let the lab settle after the last fault, then judge it.
    let settled = steady(plane, Duration::from_secs(60));
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    outcome?;
    if let Err(e) = settled {
        eprintln!("soak: the lab did not settle at the end: {e}");
    }
    report.final_holders = plane.holders()?;
    report.stale_vips = stale_vips(plane, &report.final_holders)?;
    report.rules_end = rules(plane);
    report.usage_end = (0..3).map(|i| usage(plane, i)).collect();
    let log = lock(&log);
    report.probes = log.len();
    report.failed = log.iter().filter(|(_, ok)| !ok).count();
    Ok(report)
}

fn inject_all(
    plane: &mut ControlPlane,
    options: &SoakOptions,
    log: &ProbeLog,
    report: &mut SoakReport,
) -> Result<(), Error> {
    let mut deck = Deck {
        rng: fastrand::Rng::with_seed(options.seed),
        kinds: options.faults.clone(),
        left: Vec::new(),
    };
    let start = Instant::now();
    let slots = (options.duration.as_millis() / options.interval.as_millis().max(1)).max(1);
    for slot in 0..slots {
        let slot_start = start + options.interval * u32::try_from(slot).unwrap_or(u32::MAX);
        let slot_end = slot_start + options.interval;
        let fault = deck.draw();
        // Spread the faults over the 1 s advert cycle.
        let phase = Duration::from_millis(deck.rng.u64(0..1000));
        let to_holder = deck.rng.u8(0..3) < 2;
        let backup_pick = deck.rng.usize(0..2);
        sleep_until(slot_start + phase);
        let holder_before = plane.holders()?;
        let target = match holder_before.as_slice() {
            [h] if to_holder => *h,
            [h] => (0..3).filter(|i| i != h).nth(backup_pick).unwrap_or(0),
            _ => backup_pick,
        };
        let at = Instant::now();
        let mut note = match inject(plane, fault, target) {
            Ok(note) => note,
            Err(e) => format!("injecting failed: {e}"),
        };
        let recovered = wait_recovered(plane, fault, target, at, slot_end, log, &mut note);
        // The slot's probes are all in once it is (nearly) over.
        sleep_until(
            slot_end
                .checked_sub(Duration::from_millis(300))
                .unwrap_or(slot_end),
        );
        let holders_after = plane.holders()?;
        let (outage, failed, probes) = slot_outage(&lock(log), at, slot_end);
        let record = FaultRecord {
            number: slot as usize + 1,
            at: at - start,
            fault,
            target,
            holder_before,
            outage,
            failed,
            probes,
            recovered_after: recovered.map(|t| t - at),
            holders_after,
            note,
        };
        if options.progress {
            eprintln!(
                "soak: [{:6.0}s] #{} {} on ctl{}: outage {:.1} s, {} of {} probes failed, {}{}",
                record.at.as_secs_f64(),
                record.number,
                fault.name(),
                target + 1,
                outage.as_secs_f64(),
                failed,
                probes,
                record
                    .recovered_after
                    .map_or("NOT recovered".to_owned(), |d| format!(
                        "recovered after {:.1} s",
                        d.as_secs_f64()
                    )),
                if record.note.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", record.note)
                }
            );
        }
        report.faults.push(record);
        sleep_until(slot_end);
    }
    Ok(())
}

/// Deals `fault` to controller `target`, undoing it after its hold.
/// Returns a note for the report.
fn inject(plane: &mut ControlPlane, fault: SoakFault, target: usize) -> Result<String, Error> {
    match fault {
        SoakFault::LinkDown => {
            plane.set_link(target, false)?;
            std::thread::sleep(HOLD);
            plane.set_link(target, true)?;
        }
        SoakFault::Sigkill => {
            let worker = worker(plane, target)?;
            kill(worker, Signal::SIGKILL)?;
        }
        SoakFault::SigtermRestart => {
            let status = plane.stop_agent(target, Duration::from_secs(20))?;
            std::thread::sleep(RESTART_AFTER);
            plane.start_agent_with(target, &["--supervise"])?;
            if !status.success() {
                return Ok(format!("the agent exited with {status} on SIGTERM"));
            }
        }
        SoakFault::StopCont => {
            let worker = worker(plane, target)?;
            kill(worker, Signal::SIGSTOP)?;
            std::thread::sleep(HOLD);
            kill(worker, Signal::SIGCONT)?;
        }
        SoakFault::ApiserverDown => {
            plane.stop_apiserver(target)?;
            std::thread::sleep(API_DOWN);
            plane.start_apiserver(target)?;
        }
        SoakFault::Partition => {
            plane.set_partitioned(target, true)?;
            std::thread::sleep(HOLD);
            plane.set_partitioned(target, false)?;
        }
        SoakFault::RuleDeleted => {
            let rules = plane.redirect_rules(target)?;
            let c = plane.controller(target)?.clone();
            for rule in &rules {
                // `-A CHAIN spec…` from iptables-save → `-D CHAIN spec…`.
                let mut args: Vec<&str> = vec!["-t", "nat"];
                args.extend(
                    rule.split_whitespace()
                        .map(|w| if w == "-A" { "-D" } else { w }),
                );
                plane.lab().exec_in(&c.netns, "iptables", &args)?;
            }
            return Ok(format!("{} rule(s) deleted", rules.len()));
        }
        SoakFault::VipDeleted => {
            let c = plane.controller(target)?.clone();
            let vip = plane.family().vip_cidr();
            if plane.holders()?.contains(&target) {
                plane
                    .lab()
                    .ip(&c.netns, ["addr", "del", vip, "dev", cplb_e2e::HOST_IFNAME])?;
            } else {
                return Ok("not on the target: nothing deleted".to_owned());
            }
        }
        SoakFault::Flood => {
            let sent = flood(plane)?;
            return Ok(format!("{sent} packets"));
        }
    }
    Ok(String::new())
}

/// Waits (until `slot_end`) for the lab to be whole after `fault`: one
/// holder, every agent with its worker and rules, the fault's own damage
/// repaired, probes succeeding for [`CLEAN_PROBING`]. Returns when.
fn wait_recovered(
    plane: &ControlPlane,
    fault: SoakFault,
    target: usize,
    at: Instant,
    slot_end: Instant,
    log: &ProbeLog,
    note: &mut String,
) -> Option<Instant> {
    let deadline = slot_end.checked_sub(Duration::from_millis(500))?;
    let mut rules_back: Option<Instant> = None;
    loop {
        let now = Instant::now();
        // Read once per round, so the note and the verdict agree.
        let with_rules: Vec<bool> = (0..3)
            .map(|i| {
                plane
                    .redirect_rules(i)
                    .is_ok_and(|r| r.iter().any(|l| l.contains("PREROUTING")))
            })
            .collect();
        if fault == SoakFault::RuleDeleted
            && rules_back.is_none()
            && with_rules.get(target).copied().unwrap_or(false)
        {
            rules_back = Some(now);
            append(
                note,
                &format!("rules back after {:.1} s", (now - at).as_secs_f64()),
            );
        }
        let whole = plane.holders().is_ok_and(|h| h.len() == 1)
            && (0..3).all(|i| {
                plane.agent_running(i) && !plane.agent_children(i).is_ok_and(|w| w.is_empty())
            })
            && with_rules.iter().all(|ok| *ok)
            && probes_clean_since(
                &lock(log),
                now.checked_sub(CLEAN_PROBING).unwrap_or(at).max(at),
            );
        if whole {
            return Some(now);
        }
        if now >= deadline {
            if fault == SoakFault::RuleDeleted && rules_back.is_none() {
                append(note, "rules NOT put back within the slot");
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn append(note: &mut String, text: &str) {
    if !note.is_empty() {
        note.push_str("; ");
    }
    note.push_str(text);
}

/// Whether at least one probe started at or after `since` and none of
/// them failed.
fn probes_clean_since(log: &[(Instant, bool)], since: Instant) -> bool {
    let recent: Vec<bool> = log
        .iter()
        .rev()
        .take_while(|(t, _)| *t >= since)
        .map(|&(_, ok)| ok)
        .collect();
    recent.len() >= 2 && recent.iter().all(|ok| *ok)
}

/// The longest run of failed probes that began in `[from, to)`, the failed
/// probes and all probes in it.
pub fn slot_outage(
    log: &[(Instant, bool)],
    from: Instant,
    to: Instant,
) -> (Duration, usize, usize) {
    let mut longest = Duration::ZERO;
    let mut run_start: Option<Instant> = None;
    for &(t, ok) in log {
        match (ok, run_start) {
            (false, None) => run_start = Some(t),
            (true, Some(begun)) => {
                if begun >= from && begun < to {
                    longest = longest.max(t - begun);
                }
                run_start = None;
            }
            _ => {}
        }
    }
    if let (Some(begun), Some(&(last, _))) = (run_start, log.last())
        && begun >= from
        && begun < to
    {
        longest = longest.max(last.saturating_duration_since(begun));
    }
    let in_slot = log.iter().filter(|(t, _)| *t >= from && *t < to);
    let (mut failed, mut all) = (0, 0);
    for (_, ok) in in_slot {
        all += 1;
        failed += usize::from(!ok);
    }
    (longest, failed, all)
}

/// Waits until the lab is whole: one holder, rules on every controller,
/// every agent at its base priority.
fn steady(plane: &ControlPlane, timeout: Duration) -> Result<usize, Error> {
    plane.wait_for_holder(timeout, |_| true)?;
    cplb_e2e::wait_until("the REDIRECT rule on every controller", timeout, || {
        (0..3).all(|i| plane.redirect_rules(i).is_ok_and(|r| !r.is_empty()))
    })?;
    cplb_e2e::wait_until("every agent at its base priority", timeout, || {
        (0..3).all(|i| plane.agent_at_base_priority(i))
    })?;
    plane.wait_for_holder(timeout, |_| true)
}

fn rules(plane: &ControlPlane) -> Vec<Vec<String>> {
    (0..3)
        .map(|i| plane.redirect_rules(i).unwrap_or_default())
        .collect()
}

/// Where the VIP is, other than on the single holder's LAN interface: on
/// any interface of any lab host.
fn stale_vips(plane: &ControlPlane, holders: &[usize]) -> Result<Vec<String>, Error> {
    let vip = plane.vip();
    let mut found = Vec::new();
    let mut hosts: Vec<(String, String)> = plane
        .controllers()
        .iter()
        .map(|c| (c.name.clone(), c.netns.clone()))
        .collect();
    hosts.push(("client".to_owned(), plane.client_netns().to_owned()));
    for (i, (name, netns)) in hosts.iter().enumerate() {
        let json = plane.lab().ip(netns, ["-j", "addr", "show"])?;
        let links: Vec<serde_json::Value> = serde_json::from_str(&json)
            .map_err(|e| Error::Invalid(format!("ip -j addr in {netns}: {e}")))?;
        for link in links {
            let ifname = link["ifname"].as_str().unwrap_or("?").to_owned();
            let has = link["addr_info"].as_array().is_some_and(|addrs| {
                addrs.iter().any(|a| {
                    a["local"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) == Some(vip)
                })
            });
            let expected = ifname == cplb_e2e::HOST_IFNAME && holders == [i];
            if has && !expected {
                found.push(format!("{vip} on {name}/{ifname}"));
            }
        }
    }
    Ok(found)
}

/// The supervised worker of controller `i`'s agent.
fn worker(plane: &ControlPlane, i: usize) -> Result<u32, Error> {
    let workers = plane.agent_children(i)?;
    match workers.as_slice() {
        [one] => Ok(*one),
        other => Err(Error::Invalid(format!(
            "expected one worker under ctl{}'s supervisor, found {other:?}",
            i + 1
        ))),
    }
}

fn kill(pid: u32, signal: Signal) -> Result<(), Error> {
    let raw = i32::try_from(pid).map_err(|_| Error::Invalid(format!("pid {pid}")))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal)
        .map_err(|e| Error::Invalid(format!("kill -{signal} {pid}: {e}")))
}

/// RSS and open fds of controller `i`'s supervisor and worker; zeros for
/// what cannot be read.
fn usage(plane: &ControlPlane, i: usize) -> Usage {
    let pid = plane.agent_pid(i).unwrap_or(0);
    let worker_pid = worker(plane, i).unwrap_or(0);
    let (rss_kib, fds) = proc_usage(pid);
    let (worker_rss_kib, worker_fds) = proc_usage(worker_pid);
    Usage {
        pid,
        rss_kib,
        fds,
        worker_pid,
        worker_rss_kib,
        worker_fds,
    }
}

fn proc_usage(pid: u32) -> (u64, usize) {
    if pid == 0 {
        return (0, 0);
    }
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss, fds)
}

/// Probes every `period` from the calling thread (already in the client's
/// namespace) until `stop`, or `deadline` after it began.
fn probe_loop(
    prober: &Prober,
    api: SocketAddr,
    period: Duration,
    log: &ProbeLog,
    stop: &AtomicBool,
    deadline: Duration,
) {
    let start = Instant::now();
    while !stop.load(Ordering::SeqCst) && start.elapsed() < deadline {
        let at = Instant::now();
        let ok = prober
            .get_from_here(api, "/version")
            .is_ok_and(|a| a.status == 200);
        lock(log).push((at, ok));
        std::thread::sleep(period.saturating_sub(at.elapsed()));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

/// Sends protocol-112 packets from the client host to the VRRP group for
/// [`HOLD`], at most [`FLOOD_RATE`] per second and [`FLOOD_MAX_PACKETS`]
/// in all: a quarter each valid lower-priority adverts for the lab's VRID
/// (with its password), adverts for other VRIDs, adverts with a bad
/// checksum, and random bytes. Returns the packets sent.
fn flood(plane: &ControlPlane) -> Result<u32, Error> {
    let IpAddr::V4(source) = cidr_ip(Family::V4.client_cidr()) else {
        return Err(Error::Invalid("the flood is IPv4 only".to_owned()));
    };
    let IpAddr::V4(vip) = plane.vip() else {
        return Err(Error::Invalid("the flood is IPv4 only".to_owned()));
    };
    let netns = plane.client_netns().to_owned();
    let io = |e: std::io::Error| Error::Invalid(format!("flood socket: {e}"));
    cplb_e2e::in_netns(&netns, || -> Result<u32, Error> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(112))).map_err(io)?;
        // RFC 3768 §7.1: adverts go out with TTL 255; so do ours, or the
        // receivers would drop them before any work.
        socket.set_multicast_ttl_v4(255).map_err(io)?;
        socket.set_multicast_if_v4(&source).map_err(io)?;
        let group = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 18), 0));
        let mut rng = fastrand::Rng::with_seed(u64::from(u32::from(source)));
        let start = Instant::now();
        let per_tick = FLOOD_RATE / 100;
        let mut sent = 0u32;
        while start.elapsed() < HOLD && sent < FLOOD_MAX_PACKETS {
            let tick = Instant::now();
            for _ in 0..per_tick {
                let packet = match sent % 4 {
                    0 => advert(VRID, rng.u8(1..100), vip, true),
                    1 => {
                        let other = rng.u8(1..=254);
                        advert(other + u8::from(other >= VRID), 100, vip, true)
                    }
                    2 => advert(VRID, rng.u8(1..100), vip, false),
                    _ => (0..rng.usize(1..64)).map(|_| rng.u8(..)).collect(),
                };
                // A full send buffer drops the packet: the rate is an upper bound.
                let _ = socket.send_to(&packet, &group.into());
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(10).saturating_sub(tick.elapsed()));
        }
        Ok(sent)
    })?
}

/// A VRRPv2 advertisement (RFC 3768 §5.1) for one VIP with k0s's PASS
/// authentication, with a correct checksum or a wrong one.
pub fn advert(vrid: u8, priority: u8, vip: Ipv4Addr, good_checksum: bool) -> Vec<u8> {
    let mut p = vec![0x21, vrid, priority, 1, 1, 1, 0, 0];
    p.extend_from_slice(&vip.octets());
    let mut auth = [0u8; 8];
    let pass = AUTH_PASS.as_bytes();
    auth[..pass.len().min(8)].copy_from_slice(&pass[..pass.len().min(8)]);
    p.extend_from_slice(&auth);
    let sum = checksum(&p);
    let sum = if good_checksum { sum } else { sum ^ 0x5a5a };
    p[6..8].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn cidr_ip(cidr: &str) -> IpAddr {
    cidr.split('/')
        .next()
        .and_then(|ip| ip.parse().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deck_deals_every_kind_once_before_repeating_and_a_seed_replays() {
        let deal = |seed| {
            let mut deck = Deck {
                rng: fastrand::Rng::with_seed(seed),
                kinds: SoakFault::ALL.to_vec(),
                left: Vec::new(),
            };
            (0..18).map(|_| deck.draw()).collect::<Vec<_>>()
        };
        let a = deal(7);
        assert_eq!(a, deal(7));
        assert_ne!(a, deal(8));
        for half in a.chunks(9) {
            let mut kinds = half.to_vec();
            kinds.sort();
            assert_eq!(kinds, SoakFault::ALL.to_vec());
        }
    }

    #[test]
    fn a_slots_outage_is_its_longest_failed_run() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let log = [
            (at(0), false), // before the slot
            (at(100), true),
            (at(200), false),
            (at(300), false),
            (at(600), true),
            (at(700), false),
            (at(800), true),
        ];
        let (outage, failed, probes) = slot_outage(&log, at(150), at(1000));
        assert_eq!(outage, Duration::from_millis(400));
        assert_eq!((failed, probes), (3, 5));
        // A run still open at the end counts up to the last probe.
        let (outage, ..) = slot_outage(
            &[(at(0), true), (at(100), false), (at(900), false)],
            at(50),
            at(1000),
        );
        assert_eq!(outage, Duration::from_millis(800));
    }

    #[test]
    fn adverts_carry_a_valid_checksum_unless_asked_not_to() {
        let vip = Ipv4Addr::new(192, 0, 2, 100);
        let good = advert(51, 10, vip, true);
        assert_eq!(good.len(), 20);
        assert_eq!(checksum(&good), 0, "a correct checksum sums to zero");
        assert_ne!(checksum(&advert(51, 10, vip, false)), 0);
        assert_eq!(&good[12..15], b"lab");
    }

    #[test]
    fn fault_names_round_trip() {
        for f in SoakFault::ALL {
            assert_eq!(SoakFault::parse(f.name()).unwrap(), f);
        }
        assert!(SoakFault::parse("reboot").is_err());
        assert_eq!(
            SoakFault::parse_list("flood, sigkill,").unwrap(),
            vec![SoakFault::Flood, SoakFault::Sigkill]
        );
    }
}
