//! `cplb-lab footprint`: what the idle agent costs, against keepalived +
//! HAProxy as k0s runs them, in the same lab and the same run.
//!
//! For every repetition and stack, a fresh three-controller lab (test
//! apiservers, health checks on, defaults): `cplb run --supervise` on every
//! controller, or keepalived as k0s renders it plus k0s's REDIRECT rule and
//! HAProxy on :6444 (TCP checks as the lab runs it, or HTTPS `GET /readyz`
//! checks with the client certificate, what cplb's reconciler does). Once
//! the lab is steady (one VIP holder, rules, the proxy balancing over all
//! three, cplb at its base priority), the processes of the VIP holder and of
//! one backup are measured over the same window: CPU as the delta of
//! `utime + stime` (`/proc/<pid>/stat`, 10 ms ticks), then RSS and PSS from
//! `/proc/<pid>/smaps_rollup` at the window's end.

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use crate::bench::{BENCH_PREFIX, Stack, median, steady};
use crate::{ControlPlane, Error, Family, LegacyChecks, Options, children, clean};

/// Linux's `USER_HZ`: `/proc/<pid>/stat` counts CPU time in 1/100 s.
const USER_HZ: u64 = 100;

/// A stack under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    /// `cplb run --supervise`, defaults.
    Cplb,
    /// The same from [`FootprintOptions::baseline`] (an older build).
    CplbBaseline,
    /// keepalived + HAProxy with TCP checks (the lab's legacy stack).
    K0sTcp,
    /// keepalived + HAProxy with HTTPS `/readyz` checks.
    K0sHttps,
}

impl Subject {
    /// Every subject, in table order.
    pub const ALL: [Subject; 4] = [
        Subject::Cplb,
        Subject::CplbBaseline,
        Subject::K0sHttps,
        Subject::K0sTcp,
    ];

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Subject::Cplb => "cplb",
            Subject::CplbBaseline => "cplb-baseline",
            Subject::K0sTcp => "k0s-tcp",
            Subject::K0sHttps => "k0s-https",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Subject::Cplb => "cplb run --supervise",
            Subject::CplbBaseline => "cplb run --supervise (baseline build)",
            Subject::K0sTcp => "keepalived + HAProxy (TCP checks)",
            Subject::K0sHttps => "keepalived + HAProxy (HTTPS /readyz checks)",
        }
    }

    /// Parses a comma-separated list of names.
    pub fn parse_list(text: &str) -> Result<Vec<Subject>, Error> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|name| {
                Subject::ALL
                    .into_iter()
                    .find(|s| s.name() == name)
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "unknown stack {name:?}; one of cplb, cplb-baseline, k0s-https, k0s-tcp"
                        ))
                    })
            })
            .collect()
    }
}

/// The VIP holder or a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Holds the VIP.
    Holder,
    /// Does not.
    Backup,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Holder => "VIP holder",
            Role::Backup => "backup",
        }
    }
}

/// What one process (with its descendants) used in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU time (user + system) over the window, milliseconds.
    pub cpu_ms: f64,
    /// Resident set at the end, KiB (summed over the processes).
    pub rss_kib: u64,
    /// Proportional set at the end, KiB.
    pub pss_kib: u64,
    /// Anonymous (private: heap, stacks) memory at the end, KiB; the rest
    /// of the RSS is file pages (the binary, libraries) that processes
    /// mapping the same files share.
    pub anon_kib: u64,
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, other: Usage) -> Usage {
        Usage {
            cpu_ms: self.cpu_ms + other.cpu_ms,
            rss_kib: self.rss_kib + other.rss_kib,
            pss_kib: self.pss_kib + other.pss_kib,
            anon_kib: self.anon_kib + other.anon_kib,
        }
    }
}

/// The measured parts of one node: (part name, usage); the stack's total
/// is their sum.
pub type Parts = Vec<(&'static str, Usage)>;

/// How to run it.
#[derive(Debug, Clone)]
pub struct FootprintOptions {
    /// Repetitions per stack (a fresh lab each).
    pub reps: usize,
    /// The measuring window.
    pub window: Duration,
    /// The stacks, in order.
    pub subjects: Vec<Subject>,
    /// The `cplb` binary of [`Subject::CplbBaseline`].
    pub baseline: Option<std::path::PathBuf>,
}

/// Every sample: by (subject, role), one [`Parts`] per repetition.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The samples.
    pub samples: BTreeMap<(Subject, Role), Vec<Parts>>,
    /// The window.
    pub window: Duration,
    /// The stacks, in order.
    pub subjects: Vec<Subject>,
    /// Repetitions.
    pub reps: usize,
}

/// Runs the benchmark; progress on stderr.
pub fn run(options: &FootprintOptions) -> Result<Report, Error> {
    let mut report = Report {
        window: options.window,
        subjects: options.subjects.clone(),
        reps: options.reps,
        ..Report::default()
    };
    let started = Instant::now();
    for rep in 0..options.reps {
        // Rotate the order so drift over the run hits every stack alike.
        let mut order = options.subjects.clone();
        let shift = rep % order.len().max(1);
        order.rotate_left(shift);
        for subject in order {
            let nodes = one(subject, options)?;
            for (role, parts) in nodes {
                let total = parts.iter().fold(Usage::default(), |sum, (_, u)| sum + *u);
                eprintln!(
                    "[{:6.1}s] rep {} {:10} {:10}: CPU {:6.0} ms, RSS {:5.1} MiB, PSS {:5.1} MiB ({})",
                    started.elapsed().as_secs_f64(),
                    rep + 1,
                    subject.name(),
                    role.name(),
                    total.cpu_ms,
                    mib(total.rss_kib),
                    mib(total.pss_kib),
                    parts
                        .iter()
                        .map(|(name, u)| format!(
                            "{name} {:.0} ms {:.1}/{:.1} MiB",
                            u.cpu_ms,
                            mib(u.rss_kib),
                            mib(u.pss_kib)
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                report
                    .samples
                    .entry((subject, role))
                    .or_default()
                    .push(parts);
            }
        }
    }
    Ok(report)
}

/// One repetition of one stack on a fresh lab, torn down before returning.
fn one(subject: Subject, options: &FootprintOptions) -> Result<Vec<(Role, Parts)>, Error> {
    let mut lab = ControlPlane::start(Options {
        prefix: Some(BENCH_PREFIX.to_owned()),
        family: Family::V4,
        start_agents: false,
        // `cplb run`'s own default level, as deployed.
        log_level: None,
    })?;
    if subject == Subject::CplbBaseline {
        let path = options.baseline.clone().ok_or_else(|| {
            Error::Invalid("stack cplb-baseline needs a baseline binary".to_owned())
        })?;
        lab.set_cplb_binary(path);
    }
    let result = measure(&mut lab, subject, options.window);
    let _ = clean::stop_processes(BENCH_PREFIX, Duration::from_secs(5));
    drop(lab);
    result
}

fn measure(
    lab: &mut ControlPlane,
    subject: Subject,
    window: Duration,
) -> Result<Vec<(Role, Parts)>, Error> {
    for i in 0..3 {
        match subject {
            Subject::Cplb | Subject::CplbBaseline => lab.start_agent_with(i, &["--supervise"])?,
            Subject::K0sTcp => lab.start_legacy_with(i, LegacyChecks::Tcp)?,
            Subject::K0sHttps => lab.start_legacy_with(i, LegacyChecks::Https)?,
        }
    }
    let stack = match subject {
        Subject::Cplb | Subject::CplbBaseline => Stack::Cplb,
        Subject::K0sTcp | Subject::K0sHttps => Stack::Keepalived,
    };
    let holder = steady(lab, stack)?;
    // Past start-up work (first lists, first checks, GARP repeats).
    std::thread::sleep(Duration::from_secs(5));
    let backup = (holder + 1) % 3;
    let nodes = [(Role::Holder, holder), (Role::Backup, backup)];
    // (role, part, pids) for every measured process group.
    let mut groups: Vec<(Role, &'static str, Vec<u32>)> = Vec::new();
    for (role, i) in nodes {
        match subject {
            Subject::Cplb | Subject::CplbBaseline => {
                let supervisor = lab.agent_pid(i)?;
                let workers = children(supervisor)?;
                if workers.len() != 1 {
                    return Err(Error::Invalid(format!(
                        "expected one worker under the supervisor, found {workers:?}"
                    )));
                }
                groups.push((role, "cplb worker", workers));
                groups.push((role, "cplb supervisor", vec![supervisor]));
            }
            Subject::K0sTcp | Subject::K0sHttps => {
                let (keepalived, haproxy) = lab.legacy_pids(i)?;
                let mut tree = vec![keepalived];
                tree.extend(children(keepalived)?);
                let mut proxy = vec![haproxy];
                proxy.extend(children(haproxy)?);
                groups.push((role, "keepalived", tree));
                groups.push((role, "HAProxy", proxy));
            }
        }
    }
    let before: Vec<u64> = groups
        .iter()
        .map(|(_, _, pids)| cpu_ticks(pids))
        .collect::<Result<_, _>>()?;
    std::thread::sleep(window);
    let mut out: Vec<(Role, Parts)> = nodes.iter().map(|(role, _)| (*role, Vec::new())).collect();
    for ((role, part, pids), before) in groups.iter().zip(before) {
        let after = cpu_ticks(pids)?;
        let (rss_kib, pss_kib, anon_kib) = memory(pids)?;
        let usage = Usage {
            cpu_ms: after.saturating_sub(before) as f64 * 1000.0 / USER_HZ as f64,
            rss_kib,
            pss_kib,
            anon_kib,
        };
        if let Some((_, parts)) = out.iter_mut().find(|(r, _)| r == role) {
            parts.push((part, usage));
        }
    }
    // The holder must still be the holder: the window was idle.
    lab.wait_for_holder(Duration::from_secs(5), |h| h == holder)?;
    Ok(out)
}

/// `utime + stime` of every pid, in ticks.
fn cpu_ticks(pids: &[u32]) -> Result<u64, Error> {
    let mut sum = 0;
    for pid in pids {
        let path = format!("/proc/{pid}/stat");
        let text = read(&path)?;
        // Fields after the command (which may hold spaces) end with ')'.
        let rest = text
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| Error::Invalid(format!("{path}: no command field")))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        for index in [11, 12] {
            sum += fields
                .get(index)
                .and_then(|f| f.parse::<u64>().ok())
                .ok_or_else(|| Error::Invalid(format!("{path}: no field {}", index + 3)))?;
        }
    }
    Ok(sum)
}

/// Summed `Rss:`, `Pss:` and `Anonymous:` of every pid, KiB.
fn memory(pids: &[u32]) -> Result<(u64, u64, u64), Error> {
    let (mut rss, mut pss, mut anon) = (0, 0, 0);
    for pid in pids {
        let path = format!("/proc/{pid}/smaps_rollup");
        let text = read(&path)?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| Error::Invalid(format!("{path}: no {name}")))
        };
        rss += field("Rss:")?;
        pss += field("Pss:")?;
        anon += field("Anonymous:")?;
    }
    Ok((rss, pss, anon))
}

fn read(path: &str) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::File {
        path: path.into(),
        source,
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Report {
    /// Per repetition, the usage of `part` (or of the whole stack for `None`).
    fn column(&self, subject: Subject, role: Role, part: Option<&str>) -> Vec<Usage> {
        self.samples
            .get(&(subject, role))
            .map(|reps| {
                reps.iter()
                    .map(|parts| {
                        parts
                            .iter()
                            .filter(|(name, _)| part.is_none_or(|p| p == *name))
                            .fold(Usage::default(), |sum, (_, u)| sum + *u)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Medians of CPU ms, RSS, PSS and anonymous MiB.
    fn medians(&self, subject: Subject, role: Role, part: Option<&str>) -> [f64; 4] {
        let column = self.column(subject, role, part);
        [
            median(&column.iter().map(|u| u.cpu_ms).collect::<Vec<_>>()),
            median(&column.iter().map(|u| mib(u.rss_kib)).collect::<Vec<_>>()),
            median(&column.iter().map(|u| mib(u.pss_kib)).collect::<Vec<_>>()),
            median(&column.iter().map(|u| mib(u.anon_kib)).collect::<Vec<_>>()),
        ]
    }

    fn parts(&self, subject: Subject) -> Vec<&'static str> {
        self.samples
            .iter()
            .filter(|((s, _), _)| *s == subject)
            .flat_map(|(_, reps)| reps.iter().flatten().map(|(name, _)| *name))
            .fold(Vec::new(), |mut names, name| {
                if !names.contains(&name) {
                    names.push(name);
                }
                names
            })
    }

    /// The tables: medians per process and per stack, the ratios, then the
    /// raw samples.
    pub fn markdown(&self) -> String {
        let window = self.window.as_secs_f64();
        let mut out = format!(
            "Idle three-controller lab, health checks on; CPU = utime + stime over {window:.0} s, \
             RSS/PSS at the end; median of {} repetitions, fresh lab each.\n\n\
             | node | stack / process | CPU (ms per {window:.0} s) | CPU (%) | RSS (MiB) | PSS (MiB) | anonymous (MiB) |\n|---|---|---|---|---|---|---|\n",
            self.reps
        );
        for role in [Role::Holder, Role::Backup] {
            for &subject in &self.subjects {
                let parts = self.parts(subject);
                for part in &parts {
                    let [cpu, rss, pss, anon] = self.medians(subject, role, Some(part));
                    out.push_str(&format!(
                        "| {} | {part} | {cpu:.0} | {:.3} | {rss:.1} | {pss:.1} | {anon:.1} |\n",
                        role.name(),
                        cpu / 10.0 / window
                    ));
                }
                let [cpu, rss, pss, anon] = self.medians(subject, role, None);
                out.push_str(&format!(
                    "| {} | **{}** | **{cpu:.0}** | **{:.3}** | **{rss:.1}** | **{pss:.1}** | **{anon:.1}** |\n",
                    role.name(),
                    subject.describe(),
                    cpu / 10.0 / window
                ));
            }
        }
        let cplbs = [Subject::Cplb, Subject::CplbBaseline];
        if self.subjects.iter().any(|s| cplbs.contains(s)) {
            out.push_str(
                "\n| node | stack | rival | CPU stack / rival | RSS stack / rival | PSS stack / rival | anonymous stack / rival |\n|---|---|---|---|---|---|---|\n",
            );
            for role in [Role::Holder, Role::Backup] {
                for &ours in self.subjects.iter().filter(|s| cplbs.contains(s)) {
                    let ours_m = self.medians(ours, role, None);
                    for &rival in self.subjects.iter().filter(|s| !cplbs.contains(s)) {
                        let theirs = self.medians(rival, role, None);
                        let r: Vec<String> = ours_m
                            .iter()
                            .zip(theirs)
                            .map(|(o, t)| format!("{:.2}", o / t))
                            .collect();
                        out.push_str(&format!(
                            "| {} | {} | {} | {} |\n",
                            role.name(),
                            ours.name(),
                            rival.describe(),
                            r.join(" | ")
                        ));
                    }
                }
            }
        }
        out.push_str(
            "\nRaw samples per repetition (CPU ms / RSS KiB / PSS KiB / anonymous KiB):\n\n",
        );
        for ((subject, role), reps) in &self.samples {
            for (name, _) in reps.first().into_iter().flatten() {
                let text: Vec<String> = reps
                    .iter()
                    .filter_map(|parts| parts.iter().find(|(n, _)| n == name))
                    .map(|(_, u)| {
                        format!("{:.0}/{}/{}/{}", u.cpu_ms, u.rss_kib, u.pss_kib, u.anon_kib)
                    })
                    .collect();
                out.push_str(&format!(
                    "- {} {} {name}: {}\n",
                    subject.name(),
                    role.name(),
                    text.join(", ")
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_and_memory_of_this_process() {
        let me = std::process::id();
        // Burn a little CPU so the count is not zero.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        assert!(x != 1);
        assert!(cpu_ticks(&[me]).unwrap() > 0);
        let (rss, pss, anon) = memory(&[me]).unwrap();
        assert!(rss > 0 && pss > 0 && pss <= rss, "{rss} {pss}");
        assert!(anon > 0 && anon <= rss, "{anon} {rss}");
    }

    #[test]
    fn subjects_parse() {
        assert_eq!(
            Subject::parse_list("cplb, k0s-https").unwrap(),
            vec![Subject::Cplb, Subject::K0sHttps]
        );
        assert!(Subject::parse_list("nginx").is_err());
    }
}
