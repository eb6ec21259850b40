//! `cplb`: the agent that replaces keepalived and k0s's CPLB proxy.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cplb::config::{self, ConfigError, SystemHost};

/// Control-plane load balancer for Kubernetes: a VRRP virtual IP, the :6444
/// proxy and the apiserver reconciler, configured like k0s's CPLB.
#[derive(Parser)]
#[command(name = "cplb", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a configuration (k0s ClusterConfig, k0sctl Cluster, or just
    /// spec.network.controlPlaneLoadBalancing); print every problem.
    Validate {
        /// The configuration file.
        file: PathBuf,
    },
    /// Print the effective configuration, every default filled in.
    Config {
        /// The configuration file.
        file: PathBuf,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { file } => match config::load(&file, &SystemHost) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => report(&file, &e),
        },
        Command::Config { file } => match config::load(&file, &SystemHost) {
            Ok(config) => {
                println!("{}", config.to_yaml().trim_end());
                ExitCode::SUCCESS
            }
            Err(e) => report(&file, &e),
        },
        Command::Version => {
            println!("cplb {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

fn report(file: &std::path::Path, error: &ConfigError) -> ExitCode {
    match error {
        ConfigError::Invalid(problems) => {
            // `file:line:column: path: message`, as compilers print them.
            for problem in problems {
                match problem.position {
                    Some(_) => eprintln!("{}:{problem}", file.display()),
                    None => eprintln!("{}: {problem}", file.display()),
                }
            }
        }
        other => eprintln!("{}: {other}", file.display()),
    }
    ExitCode::FAILURE
}
