//! `cplb-lab`: the three-controller demo, the whole-agent failover
//! benchmark, the soak, and cleaning up after them.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use cplb_lab::bench::{self, BENCH_PREFIX, BenchOptions, Fault};
use cplb_lab::demo::{self, DemoOptions};
use cplb_lab::footprint::{self, FootprintOptions, Subject};
use cplb_lab::soak::{self, SOAK_PREFIX, SoakFault, SoakOptions};
use cplb_lab::{DEMO_PREFIX, Family, clean};

/// A three-controller cplb lab in network namespaces (run as root).
#[derive(Parser)]
#[command(name = "cplb-lab", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the lab, show the VIP, load balancing, kubectl through the VIP
    /// and a failover, then clean up.
    Demo {
        /// Leave the lab running at the end (until Ctrl-C or `cplb-lab clean`).
        #[arg(long)]
        keep: bool,
        /// An IPv6 lab (2001:db8::/64, VRRPv3).
        #[arg(long)]
        ipv6: bool,
        /// Run k0s's keepalived, REDIRECT rule and a proxy (haproxy) on the
        /// controllers instead of cplb, for comparison.
        #[arg(long)]
        keepalived: bool,
    },
    /// Failover benchmark of the whole agent against keepalived + HAProxy
    /// configured like k0s: same lab, same probes, one run.
    Bench {
        /// Repetitions per fault and stack (a fresh lab each).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Comma-separated faults: link-down, sigkill, sigterm, backend-loss.
        #[arg(long, default_value = "link-down,sigkill,sigterm,backend-loss")]
        faults: String,
        /// Print every sample as JSON after the table.
        #[arg(long)]
        json: bool,
    },
    /// Idle footprint of the whole agent against keepalived + HAProxy: RSS,
    /// PSS and CPU over a window of the VIP holder's and a backup's
    /// processes, in the idle lab with health checks on.
    Footprint {
        /// Repetitions per stack (a fresh lab each).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// The measuring window, seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Comma-separated stacks: cplb, cplb-baseline (needs
        /// --baseline), k0s-https (HAProxy checks `/readyz` over TLS, as
        /// cplb does), k0s-tcp (TCP checks).
        #[arg(long, default_value = "cplb,k0s-https,k0s-tcp")]
        stacks: String,
        /// The `cplb` binary of the cplb-baseline stack (an older build).
        #[arg(long)]
        baseline: Option<std::path::PathBuf>,
    },
    /// The soak: the lab with `cplb run --supervise` on every controller, a
    /// random fault every interval and HTTPS probes through the VIP all
    /// along; a table per fault and the end-of-run invariants. Exits
    /// non-zero if an invariant broke or an outage exceeded its bound.
    Soak {
        /// How long to inject faults: `1h`, `30m`, `180s` or seconds.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        duration: Duration,
        /// One fault per interval (same syntax).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        interval: Duration,
        /// The random generator's seed (printed; replays the fault sequence).
        #[arg(long)]
        seed: Option<u64>,
        /// Comma-separated fault kinds to draw from.
        #[arg(
            long,
            default_value = "link-down,sigkill,sigterm,stop-cont,apiserver-down,partition,rule-deleted,vip-deleted,flood"
        )]
        faults: String,
    },
    /// Remove the demo lab (namespaces, processes, files), and the labs of
    /// test runs that were killed before they could clean up.
    Clean,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cplb-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo {
            keep,
            ipv6,
            keepalived,
        } => {
            on_interrupt_clean_up(DEMO_PREFIX)?;
            let family = if ipv6 { Family::V6 } else { Family::V4 };
            demo::run(DemoOptions {
                keep,
                family,
                keepalived,
            })
            .context("demo failed")
        }
        Command::Bench { reps, faults, json } => {
            anyhow::ensure!(reps >= 1, "--reps must be at least 1");
            let faults = faults
                .split(',')
                .filter(|f| !f.trim().is_empty())
                .map(Fault::parse)
                .collect::<Result<Vec<_>, _>>()?;
            anyhow::ensure!(!faults.is_empty(), "--faults is empty");
            let stale = cplb_e2e::list_netns(BENCH_PREFIX)?;
            anyhow::ensure!(
                stale.is_empty(),
                "network namespaces of an earlier benchmark still exist ({}); remove them with `cplb-lab clean`",
                stale.join(", ")
            );
            on_interrupt_clean_up(BENCH_PREFIX)?;
            let report = bench::run(&BenchOptions { reps, faults }).context("benchmark failed")?;
            println!("{}", report.markdown());
            if json {
                println!("{}", serde_json::to_string_pretty(&report.json())?);
            }
            Ok(())
        }
        Command::Footprint {
            reps,
            seconds,
            stacks,
            baseline,
        } => {
            anyhow::ensure!(reps >= 1, "--reps must be at least 1");
            anyhow::ensure!(seconds >= 1, "--seconds must be at least 1");
            let subjects = Subject::parse_list(&stacks)?;
            anyhow::ensure!(!subjects.is_empty(), "--stacks is empty");
            let stale = cplb_e2e::list_netns(BENCH_PREFIX)?;
            anyhow::ensure!(
                stale.is_empty(),
                "network namespaces of an earlier benchmark still exist ({}); remove them with `cplb-lab clean`",
                stale.join(", ")
            );
            on_interrupt_clean_up(BENCH_PREFIX)?;
            let report = footprint::run(&FootprintOptions {
                reps,
                window: Duration::from_secs(seconds),
                subjects,
                baseline,
            })
            .context("footprint benchmark failed")?;
            println!("{}", report.markdown());
            Ok(())
        }
        Command::Soak {
            duration,
            interval,
            seed,
            faults,
        } => {
            anyhow::ensure!(
                interval >= Duration::from_secs(15),
                "--interval must be at least 15s (the longest fault lasts 10 s)"
            );
            let faults = SoakFault::parse_list(&faults)?;
            anyhow::ensure!(!faults.is_empty(), "--faults is empty");
            let stale = cplb_e2e::list_netns(SOAK_PREFIX)?;
            anyhow::ensure!(
                stale.is_empty(),
                "network namespaces of an earlier soak still exist ({}); remove them with `cplb-lab clean`",
                stale.join(", ")
            );
            on_interrupt_clean_up(SOAK_PREFIX)?;
            let seed = seed.unwrap_or_else(soak::random_seed);
            println!("soak: seed {seed}");
            let report = soak::run(&SoakOptions {
                duration,
                interval,
                seed,
                faults,
                ..SoakOptions::default()
            })
            .context("soak failed")?;
            println!("{}", report.markdown());
            let broken = report.violations(soak::FD_SLACK).len() + report.unbounded().len();
            anyhow::ensure!(broken == 0, "{broken} invariant(s) broken (seed {seed})");
            Ok(())
        }
        Command::Clean => {
            let mut removed = clean::clean(DEMO_PREFIX, Duration::from_secs(5))?;
            removed.extend(clean::clean(BENCH_PREFIX, Duration::from_secs(5))?);
            removed.extend(clean::clean(SOAK_PREFIX, Duration::from_secs(5))?);
            removed.extend(clean::clean_stale_tests(Duration::from_secs(5))?);
            if removed.is_empty() {
                println!(
                    "no demo lab ({DEMO_PREFIX}*), no benchmark lab ({BENCH_PREFIX}*), no soak lab ({SOAK_PREFIX}*) and no stale test lab found"
                );
            } else {
                println!("removed {}", removed.join(", "));
            }
            Ok(())
        }
    }
}

/// `1h`, `30m`, `90s` or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}: use e.g. 1h, 30m, 180s"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("bad duration unit in {text:?}: s, m or h")),
    };
    Ok(Duration::from_secs(seconds))
}

/// Ctrl-C or SIGTERM: remove the lab named `prefix*` (its processes,
/// namespaces and files) and exit, from a thread of its own while the demo
/// or the benchmark is anywhere.
fn on_interrupt_clean_up(prefix: &'static str) -> anyhow::Result<()> {
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
        eprintln!("\ncplb-lab: interrupted, removing the lab");
        if let Err(e) = clean::clean(prefix, Duration::from_secs(5)) {
            eprintln!("cplb-lab: cleaning up failed: {e}; run `cplb-lab clean`");
        }
        std::process::exit(130);
    });
    Ok(())
}
