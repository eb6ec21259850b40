//! `cplb`: the agent that replaces keepalived and k0s's CPLB proxy.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use cplb::config::{self, Config, ConfigError, SystemHost};
use cplb::logging::{self, LogFormat};
use cplb::run::{self, RunOptions};
use cplb::status::StatusReport;
use cplb::{admin, manifest};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Control-plane load balancer for Kubernetes: a VRRP virtual IP, the :6444
/// proxy and the apiserver reconciler, configured like k0s's CPLB.
#[derive(Parser)]
#[command(name = "cplb", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct LogArgs {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "logfmt")]
    log_format: LogFormat,
    /// Log level or filter (`info`, `debug`, `cplb=debug,warn`); default
    /// from CPLB_LOG, else info.
    #[arg(long)]
    log_level: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: VRRP, the proxy, the reconciler and the REDIRECT rules.
    Run {
        /// The configuration file.
        #[arg(long, short, env = "CPLB_CONFIG")]
        config: PathBuf,
        /// Run as a supervising parent: restart the agent when it dies and
        /// hand its VIPs over at once (for use outside systemd, whose unit
        /// does the same with `ExecStopPost=cplb release`).
        #[arg(long)]
        supervise: bool,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Crash handoff: send a priority-0 advert for every VIP still on this
    /// node, remove those VIPs and the REDIRECT rules.
    Release {
        /// The configuration file.
        #[arg(long, short, env = "CPLB_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Show what the running agent is doing: VRRP instances, backends,
    /// rules (reads its admin endpoint's /status).
    Status {
        /// Take the admin address from this configuration file.
        #[arg(long, short, env = "CPLB_CONFIG", conflicts_with = "address")]
        config: Option<PathBuf>,
        /// The admin address (default 127.0.0.1:9440).
        #[arg(long)]
        address: Option<std::net::SocketAddr>,
        /// Print the /status JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Print a static Pod manifest for /etc/kubernetes/manifests
    /// (kubeadm-style clusters), as kube-vip users deploy it.
    Manifest {
        /// Configuration the Pod will run with; its cplb.kubeconfig and
        /// cplb.adminAddress set the mounts and probes.
        #[arg(long, short, env = "CPLB_CONFIG")]
        config: Option<PathBuf>,
        /// Container image with cplb and iptables/nft (the default is an
        /// unpullable placeholder).
        #[arg(long)]
        image: Option<String>,
    },
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
        Command::Run {
            config,
            supervise,
            log,
        } => {
            init_logging(&log);
            let Some(loaded) = load(&config) else {
                return ExitCode::from(EX_CONFIG);
            };
            let result = if supervise {
                runtime().and_then(|rt| rt.block_on(supervise_worker(&config, &log, &loaded)))
            } else {
                runtime().and_then(|rt| rt.block_on(run_agent(loaded)))
            };
            finish(result)
        }
        Command::Release { config, log } => {
            init_logging(&log);
            let Some(loaded) = load(&config) else {
                return ExitCode::FAILURE;
            };
            let result = runtime().and_then(|rt| {
                rt.block_on(async {
                    let released = run::release(&loaded).await?;
                    info!(component = "agent", ?released, "release done");
                    Ok(())
                })
            });
            finish(result)
        }
        Command::Status {
            config,
            address,
            json,
        } => {
            let address = match (address, config) {
                (Some(address), _) => address,
                (None, Some(file)) => match load(&file) {
                    Some(config) => config.cplb.admin_address,
                    None => return ExitCode::FAILURE,
                },
                (None, None) => config::DEFAULT_ADMIN_ADDRESS
                    .parse()
                    .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 9440))),
            };
            let result = runtime().and_then(|rt| {
                rt.block_on(async {
                    let report = admin::fetch_status(address, Duration::from_secs(5))
                        .await
                        .with_context(|| format!("cannot read the agent's status at http://{address}/status; is `cplb run` running on this node?"))?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&report)?);
                    } else {
                        print!("{}", admin::render_status(&report));
                    }
                    Ok(())
                })
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cplb status: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Manifest { config, image } => {
            let mut options = match &config {
                Some(file) => match load(file) {
                    Some(loaded) => manifest::ManifestOptions::for_config(
                        &loaded,
                        std::fs::canonicalize(file)
                            .unwrap_or_else(|_| file.clone())
                            .display()
                            .to_string(),
                    ),
                    None => return ExitCode::from(EX_CONFIG),
                },
                None => manifest::ManifestOptions::default(),
            };
            if let Some(image) = image {
                options.image = image;
            }
            match manifest::static_pod(&options) {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cplb manifest: {e}");
                    ExitCode::FAILURE
                }
            }
        }
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

/// sysexits.h EX_CONFIG: the unit's `RestartPreventExitStatus=78` keeps
/// systemd from restarting an agent whose configuration cannot work.
const EX_CONFIG: u8 = 78;

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(component = "agent", error = format!("{e:#}"), "failed");
            eprintln!("cplb: {e:#}");
            let config_error = matches!(
                e.downcast_ref::<run::RunError>(),
                Some(
                    run::RunError::Disabled
                        | run::RunError::NoInstances
                        | run::RunError::VirtualServers
                        | run::RunError::Interface { .. }
                )
            );
            if config_error {
                ExitCode::from(EX_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

fn load(file: &Path) -> Option<Config> {
    match config::load(file, &SystemHost) {
        Ok(config) => Some(config),
        Err(e) => {
            report(file, &e);
            None
        }
    }
}

fn init_logging(args: &LogArgs) {
    if let Err(e) = logging::init(args.log_format, args.log_level.as_deref()) {
        eprintln!("cplb: {e}; logging at info");
        let _ = logging::init(args.log_format, Some("info"));
    }
}

async fn run_agent(config: Config) -> anyhow::Result<()> {
    let address = config.cplb.admin_address;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on the admin address {address}"))?;
    let (report, report_rx) = watch::channel(StatusReport::default());
    let cancel = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(admin::serve(
        listener,
        std::sync::Arc::new(report_rx),
        cancel.clone(),
    ));
    info!(component = "agent", %address, "admin endpoint: /metrics /healthz /readyz /status");
    let result = run::run(config, RunOptions { report }).await;
    cancel.cancel();
    let _ = server.await;
    result?;
    Ok(())
}

/// The supervising parent: runs `cplb run` as a child; when the child dies
/// without being asked to, hands its VIPs over at once (`release`) and
/// starts it again with a growing pause. SIGTERM/SIGINT are passed on and
/// the parent exits with the child's status.
async fn supervise_worker(file: &Path, log: &LogArgs, config: &Config) -> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use std::os::unix::process::ExitStatusExt;
    use tokio::signal::unix::{SignalKind, signal};

    let exe = std::env::current_exe().context("cannot find our own executable")?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut command = tokio::process::Command::new(&exe);
        command.arg("run").arg("--config").arg(file);
        if log.log_format == LogFormat::Json {
            command.args(["--log-format", "json"]);
        }
        if let Some(level) = &log.log_level {
            command.args(["--log-level", level]);
        }
        let started = std::time::Instant::now();
        let mut child = command.spawn().context("cannot start the agent")?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        info!(component = "agent", pid, "worker started");
        let forward = |signal: Signal| {
            if let Some(pid) = pid {
                let _ = kill(Pid::from_raw(pid), signal);
            }
        };
        let stop = tokio::select! {
            _ = sigterm.recv() => Some(Signal::SIGTERM),
            _ = sigint.recv() => Some(Signal::SIGTERM),
            status = child.wait() => {
                let status = status.context("cannot wait for the agent")?;
                if status.success() {
                    info!(component = "agent", "worker stopped cleanly");
                    return Ok(());
                }
                warn!(component = "agent", %status, "worker died; handing the VIPs over");
                if let Err(e) = run::release(config).await {
                    warn!(component = "agent", error = %e, "release incomplete");
                }
                None
            }
        };
        if let Some(signal) = stop {
            info!(component = "agent", "stopping the worker");
            forward(signal);
            let status = child.wait().await.context("cannot wait for the agent")?;
            if status.signal() == Some(signal as i32) {
                // Killed by the signal itself: it arrived before the worker
                // had installed its handlers (it had just been restarted),
                // so it did not clean up after itself.
                warn!(component = "agent", %status, "worker stopped before it could handle the signal; releasing");
                run::release(config).await?;
                return Ok(());
            }
            anyhow::ensure!(status.success(), "worker stopped with {status}");
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tokio::select! {
            _ = sigterm.recv() => return Ok(()),
            _ = sigint.recv() => return Ok(()),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

fn report(file: &Path, error: &ConfigError) -> ExitCode {
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
