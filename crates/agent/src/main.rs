//! `cplb`: the agent that replaces keepalived and k0s's CPLB proxy. This
//! file is the command line; each command is a few calls into the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use cplb::config::{self, Problem, SystemHost};
use cplb::logging::LogArgs;
use cplb::plan::{self, Checked, HostChoice};
use cplb::{admin, boot, lock, manifest, run, supervise};
use tracing::{error, info};

/// Control-plane load balancer for Kubernetes: a VRRP virtual IP, the :6444
/// proxy and the apiserver reconciler, configured like k0s's CPLB.
#[derive(Parser)]
#[command(name = "cplb", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which machine `validate` and `config` check the file against.
#[derive(Clone, Copy, ValueEnum)]
enum HostArg {
    /// This machine: interfaces, MAC addresses and addresses are looked up
    /// here, as `cplb run` does.
    This,
    /// No machine (a file for another controller): what depends on one is
    /// not resolved or checked, and says so as a warning.
    None,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: VRRP, the proxy, the reconciler and the REDIRECT rules.
    ///
    /// A configuration `cplb validate` refuses is refused with the same
    /// messages and exit status 78 (EX_CONFIG: systemd does not restart it),
    /// except an interface or address this host has not got yet: that is
    /// waited for (`/readyz` answers 503 meanwhile), then the agent starts.
    Run {
        /// The configuration file.
        #[arg(long, short, env = "CPLB_CONFIG")]
        config: PathBuf,
        /// Run as a supervising parent: restart the agent when it dies and
        /// hand its VIPs over at once (for use outside systemd, whose unit
        /// does the same with `ExecStopPost=cplb release`).
        #[arg(long)]
        supervise: bool,
        /// The lock file that keeps a second agent (and `cplb release`)
        /// from acting while one runs (default /run/cplb.lock; in a network
        /// namespace other than the host's, /run/cplb-netns-INODE.lock).
        #[arg(long, env = "CPLB_LOCK_FILE")]
        lock_file: Option<PathBuf>,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Crash handoff: send a priority-0 advert for every VIP still on this
    /// node, remove those VIPs and the REDIRECT rules.
    ///
    /// A no-op (exit 0) while a running agent holds the lock file.
    Release {
        /// The configuration file.
        #[arg(long, short, env = "CPLB_CONFIG")]
        config: PathBuf,
        /// The lock file that keeps a second agent (and `cplb release`)
        /// from acting while one runs (default /run/cplb.lock; in a network
        /// namespace other than the host's, /run/cplb-netns-INODE.lock).
        #[arg(long, env = "CPLB_LOCK_FILE")]
        lock_file: Option<PathBuf>,
        /// Keep the REDIRECT rules and dummyvip0 for an agent restarting at
        /// once (the supervisor's handoff).
        #[arg(long = supervise::RESTART_FLAG, hide = true)]
        for_restart: bool,
        #[command(flatten)]
        log: LogArgs,
    },
    /// The supervising parent of `cplb run --supervise` (started by it
    /// when the small `cplb-supervisor` is not installed beside `cplb`).
    #[command(name = supervise::SUPERVISOR_COMMAND, hide = true)]
    Supervisor {
        /// As `cplb-supervisor` takes them.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
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
        /// Print instead the RBAC objects (Role, ClusterRole and bindings)
        /// of the least-privilege kubeconfig's user `cplb`, for `kubectl
        /// apply -f -` (also shipped as deploy/rbac.yaml).
        #[arg(long, conflicts_with_all = ["config", "image"])]
        rbac: bool,
    },
    /// Check a configuration (k0s ClusterConfig, k0sctl Cluster, or just
    /// spec.network.controlPlaneLoadBalancing) and print every problem as
    /// `file:line:column: path: message`.
    ///
    /// It refuses exactly what `cplb run` refuses, with the same messages:
    /// the file's own mistakes, `enabled: false`, no instances, and on this
    /// host virtualServers without ip_vs, an interface that does not exist,
    /// no address to send adverts from, or a VIP that is already one of the
    /// host's addresses. Exit status 0 when it would run (warnings may be
    /// printed), 1 otherwise.
    Validate {
        /// The configuration file.
        file: PathBuf,
        /// Check against this host (default) or none (a file for another
        /// controller: interfaces and addresses are not checked).
        #[arg(long, value_enum, default_value = "this")]
        host: HostArg,
    },
    /// Print the effective configuration, every default filled in, and what
    /// will run on this host (VRRP version, advert source, rules).
    ///
    /// The output is for reading, not for feeding back to cplb. Problems go
    /// to stderr as `cplb validate` prints them; exit status as validate's.
    Config {
        /// The configuration file.
        file: PathBuf,
        /// Resolve against this host (default) or none.
        #[arg(long, value_enum, default_value = "this")]
        host: HostArg,
    },
    /// Print the version.
    Version,
}

/// sysexits.h EX_CONFIG: the unit's `RestartPreventExitStatus=78` keeps
/// systemd from restarting an agent whose configuration cannot work.
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run {
            config,
            supervise,
            lock_file,
            log,
        } => {
            log.init();
            let lock_file = lock::lock_path(lock_file.as_deref());
            block_on(async {
                let checked = boot::check_file(&config, HostChoice::This).await;
                let waits = boot::only_host_not_ready(&checked);
                if !waits {
                    print_problems(&config, &checked);
                    if checked.plan.is_none() {
                        return Ok(ExitCode::from(EX_CONFIG));
                    }
                }
                // The worker holds the lock; a supervising parent only
                // checks it is free, so that it can release after reaping
                // a worker that died.
                let lock = lock::AgentLock::try_acquire(&lock_file).map_err(run::RunError::from)?;
                let lock = (!supervise).then_some(lock);
                // An interface or address not there yet is waited for, not
                // refused (issue 14 F5).
                let plan = match checked.plan {
                    Some(plan) if !waits => plan,
                    _ => match boot::wait_for_host(&config, checked).await? {
                        boot::Waited::Ready(plan) => *plan,
                        boot::Waited::Stopped => return Ok(ExitCode::SUCCESS),
                        boot::Waited::Refused(checked) => {
                            print_problems(&config, &checked);
                            return Ok(ExitCode::from(EX_CONFIG));
                        }
                    },
                };
                if supervise {
                    let supervised = supervise::Supervised {
                        agent: std::env::current_exe()?,
                        config,
                        lock_file,
                        log_args: log.to_args(),
                    };
                    return Err(supervise::exec_supervisor(&supervised, &plan).into());
                } else {
                    run::run_with_admin(plan).await?;
                }
                drop(lock);
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Supervisor { args } => supervise::program(args),
        Command::Release {
            config,
            lock_file,
            for_restart,
            log,
        } => {
            log.init();
            let lock_file = lock::lock_path(lock_file.as_deref());
            block_on(async {
                let Some(plan) = plan_or_refuse(&config).await? else {
                    return Ok(ExitCode::FAILURE);
                };
                let scope = if for_restart {
                    run::ReleaseScope::ForRestart
                } else {
                    run::ReleaseScope::Everything
                };
                if let Some(released) =
                    run::release_unless_running(&plan, &lock_file, scope).await?
                {
                    info!(component = "agent", ?released, "release done");
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Status {
            config,
            address,
            json,
        } => status(config.as_deref(), address, json),
        Command::Manifest {
            config,
            image,
            rbac,
        } => {
            if rbac {
                return match manifest::rbac() {
                    Ok(yaml) => {
                        print!("{yaml}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("cplb manifest: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            manifest_command(config.as_deref(), image)
        }
        Command::Validate { file, host } => block_on(async {
            let checked = check_file(&file, host.into()).await;
            print_problems(&file, &checked);
            if checked.has_errors() {
                return Ok(ExitCode::FAILURE);
            }
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }),
        Command::Config { file, host } => block_on(async {
            let checked = check_file(&file, host.into()).await;
            if let Some(config) = &checked.config {
                println!("{}", config.to_yaml().trim_end());
            }
            match (&checked.plan, &checked.config) {
                (Some(plan), _) => print!("{}", plan.describe()),
                (None, Some(config)) => print!("{}", plan::describe_versions(config)),
                (None, None) => {}
            }
            print_problems(&file, &checked);
            Ok(if checked.has_errors() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }),
        Command::Version => {
            println!("cplb {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

impl From<HostArg> for HostChoice {
    fn from(host: HostArg) -> HostChoice {
        match host {
            HostArg::This => HostChoice::This,
            HostArg::None => HostChoice::None,
        }
    }
}

/// Runs `body` on a multi-threaded runtime; an error is logged and printed
/// and exits 78 when the configuration is to blame, else 1.
fn block_on(body: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime");
    match runtime.and_then(|rt| rt.block_on(body)) {
        Ok(code) => code,
        Err(e) => {
            error!(component = "agent", error = format!("{e:#}"), "failed");
            eprintln!("cplb: {e:#}");
            let config = e
                .downcast_ref::<run::RunError>()
                .is_some_and(run::RunError::is_config)
                || e.downcast_ref::<supervise::SuperviseError>()
                    .is_some_and(supervise::SuperviseError::is_config);
            ExitCode::from(if config { EX_CONFIG } else { 1 })
        }
    }
}

/// The same check `validate` does, on this host.
async fn check_file(file: &Path, host: HostChoice) -> Checked {
    boot::check_file(file, host).await
}

/// The plan for `file` on this host, or its problems printed (as `cplb
/// validate` prints them) and `None`.
async fn plan_or_refuse(file: &Path) -> anyhow::Result<Option<plan::Plan>> {
    let checked = check_file(file, HostChoice::This).await;
    print_problems(file, &checked);
    let refused = checked.has_errors();
    Ok(checked.plan.filter(|_| !refused))
}

/// `file:line:column: path: message`, as compilers print them, on stderr;
/// a hint when what failed depends on this host.
fn print_problems(file: &Path, checked: &Checked) {
    let name = file.display();
    for problem in &checked.problems {
        match problem.position {
            Some(_) => eprintln!("{name}:{problem}"),
            None => eprintln!("{name}: {problem}"),
        }
    }
    if checked.problems.iter().any(Problem::is_host_dependent) {
        eprintln!(
            "note: some problems depend on this host; `cplb validate --host none {name}` checks a file for another controller"
        );
    }
}

fn status(config: Option<&Path>, address: Option<std::net::SocketAddr>, json: bool) -> ExitCode {
    let address = match (address, config) {
        (Some(address), _) => address,
        (None, Some(file)) => match config::load(file, &SystemHost) {
            Ok(config) => config.cplb.admin_address,
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        },
        (None, None) => config::DEFAULT_ADMIN_ADDRESS
            .parse()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 9440))),
    };
    let result = block_on(async {
        let report = admin::fetch_status(address, Duration::from_secs(5))
            .await
            .with_context(|| format!("cannot read the agent's status at http://{address}/status; is `cplb run` running on this node?"))?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", admin::render_status(&report));
        }
        Ok(ExitCode::SUCCESS)
    });
    // `block_on` exits 78 only for configuration errors; none here.
    if result == ExitCode::SUCCESS {
        result
    } else {
        ExitCode::FAILURE
    }
}

fn manifest_command(config: Option<&Path>, image: Option<String>) -> ExitCode {
    let mut options = match config {
        Some(file) => match config::load(file, &SystemHost) {
            Ok(loaded) => manifest::ManifestOptions::for_config(
                &loaded,
                std::fs::canonicalize(file)
                    .unwrap_or_else(|_| file.to_path_buf())
                    .display()
                    .to_string(),
            ),
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                return ExitCode::from(EX_CONFIG);
            }
        },
        None => manifest::ManifestOptions::default(),
    };
    if let Some(image) = image {
        options.image = image;
    }
    if manifest::is_admin_kubeconfig(&options.kubeconfig_path) {
        eprintln!(
            "cplb manifest: warning: the Pod mounts {}, a cluster-admin kubeconfig; cplb needs far less: see `cplb manifest --rbac` and docs/configuration.md (kubeconfig)",
            options.kubeconfig_path
        );
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
