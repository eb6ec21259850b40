//! `cplb-lab`: the three-controller demo, and cleaning up after it.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
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
            on_interrupt_clean_up()?;
            let family = if ipv6 { Family::V6 } else { Family::V4 };
            demo::run(DemoOptions {
                keep,
                family,
                keepalived,
            })
            .context("demo failed")
        }
        Command::Clean => {
            let mut removed = clean::clean(DEMO_PREFIX, Duration::from_secs(5))?;
            removed.extend(clean::clean_stale_tests(Duration::from_secs(5))?);
            if removed.is_empty() {
                println!("no demo lab ({DEMO_PREFIX}*) and no stale test lab found");
            } else {
                println!("removed {}", removed.join(", "));
            }
            Ok(())
        }
    }
}

/// Ctrl-C or SIGTERM: remove the lab (its processes, namespaces and files)
/// and exit, from a thread of its own while the demo is anywhere.
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
        eprintln!("\ncplb-lab: interrupted, removing the lab");
        if let Err(e) = clean::clean(DEMO_PREFIX, Duration::from_secs(5)) {
            eprintln!("cplb-lab: cleaning up failed: {e}; run `cplb-lab clean`");
        }
        std::process::exit(130);
    });
    Ok(())
}
