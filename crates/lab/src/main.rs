//! `cplb-lab`: the three-controller demo, the whole-agent failover
//! benchmark, and cleaning up after them.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use cplb_lab::bench::{self, BENCH_PREFIX, BenchOptions, Fault};
use cplb_lab::demo::{self, DemoOptions};
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
        Command::Clean => {
            let mut removed = clean::clean(DEMO_PREFIX, Duration::from_secs(5))?;
            removed.extend(clean::clean(BENCH_PREFIX, Duration::from_secs(5))?);
            removed.extend(clean::clean_stale_tests(Duration::from_secs(5))?);
            if removed.is_empty() {
                println!(
                    "no demo lab ({DEMO_PREFIX}*), no benchmark lab ({BENCH_PREFIX}*) and no stale test lab found"
                );
            } else {
                println!("removed {}", removed.join(", "));
            }
            Ok(())
        }
    }
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
