//! `cplb run --supervise`: a parent that runs the agent as a child
//! process; when the child dies without being asked to, it hands the VIPs
//! over at once (`cplb release`, [`crate::run::release`]) and starts it
//! again: at once the first time, then after a growing pause. SIGTERM/SIGINT
//! are passed on and the parent exits with the child's status. (Under
//! systemd the unit does the same with `ExecStopPost=cplb release` and
//! `Restart=always`.)
//!
//! The parent also holds the proxy's listening socket and hands it to each
//! worker ([`crate::lb::LISTEN_FD_ENV`]), and keeps the REDIRECT rules (and
//! in IPVS mode dummyvip0) across an immediate restart
//! ([`ReleaseScope::ForRestart`]): clients that reach this node while the
//! worker is dead (a stale ARP entry, a local client through the OUTPUT
//! rule) wait in the backlog and are served by the next worker instead of
//! being refused (HAProxy outliving keepalived gives k0s the same).
//!
//! The parent is small (issue 15, footprint): `cplb run --supervise` checks
//! the configuration and the host, binds the held socket, then replaces
//! itself ([`exec_supervisor`]) with `cplb supervisor`, which only starts,
//! waits for and signals workers on a single thread. The work of a handoff
//! runs in a `cplb release` child. Memory a process has touched stays
//! resident: the planning, netlink and Kubernetes code the first stage ran
//! would otherwise stay mapped in the parent for its whole life.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::lb::LISTEN_FD_ENV;
use crate::logging::LogArgs;
use crate::plan::Plan;
use crate::run::ReleaseScope;

/// The pause before the second restart in a row (the first is immediate);
/// it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A worker that ran this long resets the pause.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// The hidden subcommand the supervisor runs as.
pub const SUPERVISOR_COMMAND: &str = "supervisor";

/// Why the supervisor failed.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The worker could not be started or waited for.
    #[error("worker: {0}")]
    Worker(#[from] std::io::Error),
    /// The supervisor could not take over the socket its first stage held.
    #[error("the proxy's listening socket: {0}")]
    Inherit(String),
    /// `cplb release` after the worker died failed (its messages above).
    #[error("release stopped with {0}")]
    Release(std::process::ExitStatus),
    /// The worker stopped with an error status.
    #[error("worker stopped with {0}")]
    Failed(std::process::ExitStatus),
    /// The worker refused to run (exit 78: its configuration, or another
    /// agent or program holds what it needs); restarting cannot help.
    #[error("the worker refused to run (exit status 78); see its messages above")]
    Refused,
}

impl SuperviseError {
    /// Whether the parent should exit 78 too.
    pub fn is_config(&self) -> bool {
        match self {
            SuperviseError::Refused => true,
            SuperviseError::Release(status) => status.code() == Some(EX_CONFIG),
            _ => false,
        }
    }
}

/// sysexits.h EX_CONFIG: a worker (or release) that refused to run.
const EX_CONFIG: i32 = 78;

/// What the supervisor runs its children with.
#[derive(Debug, Clone)]
pub struct Supervised {
    /// The configuration file.
    pub config: PathBuf,
    /// The agent lock file.
    pub lock_file: PathBuf,
    /// The logging flags, passed on.
    pub log: LogArgs,
}

impl Supervised {
    /// `cplb <command> --config … --lock-file … <log flags>` of this binary.
    fn command(&self, exe: &Path, command: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(exe);
        cmd.arg(command)
            .arg("--config")
            .arg(&self.config)
            .arg("--lock-file")
            .arg(&self.lock_file)
            .args(self.log.to_args());
        cmd
    }
}

/// The first stage's end: binds the proxy's socket (the plan is checked)
/// and replaces this process with `cplb supervisor`, which holds it. Only
/// returns on failure.
pub fn exec_supervisor(supervised: &Supervised, plan: &Plan) -> SuperviseError {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return e.into(),
    };
    let mut command = supervised.command(&exe, SUPERVISOR_COMMAND);
    command.env_remove(LISTEN_FD_ENV);
    // Bound here, where the plan is: the supervisor does not read the
    // configuration. Kept across exec (and only that exec).
    let held = hold_listener(plan);
    if let Some(listener) = &held {
        pass_listener(&mut command, listener);
    }
    // Replaces this process (same PID for systemd and for whoever started
    // it); returns only if exec failed.
    command.exec().into()
}

/// `cplb supervisor`: supervises `cplb run` until SIGTERM/SIGINT or a
/// clean stop.
pub async fn supervise(supervised: &Supervised) -> Result<(), SuperviseError> {
    let exe = std::env::current_exe()?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut backoff = Duration::ZERO;
    let mut held = crate::lb::listener_from_env().map_err(SuperviseError::Inherit)?;
    // The last handoff left the rules for the worker now starting.
    let mut rules_kept = false;
    loop {
        let mut command = supervised.command(&exe, "run");
        command.env_remove(LISTEN_FD_ENV);
        die_with_parent(&mut command);
        if let Some(listener) = &held {
            pass_listener(&mut command, listener);
        }
        let started = Instant::now();
        let mut child = tokio::process::Command::from(command).spawn()?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        info!(component = "agent", pid, "worker started");
        let stop = tokio::select! {
            _ = sigterm.recv() => Some(Signal::SIGTERM),
            _ = sigint.recv() => Some(Signal::SIGTERM),
            status = child.wait() => {
                let status = status?;
                if started.elapsed() > STABLE_RUN {
                    backoff = Duration::ZERO;
                }
                if status.success() {
                    info!(component = "agent", "worker stopped cleanly");
                    return Ok(());
                }
                if status.code() == Some(EX_CONFIG) {
                    // Another agent runs here, a port is taken, or the
                    // configuration cannot work: a restart would not help.
                    // Rules kept by the handoff before it are removed (the
                    // release is skipped if another agent holds the lock).
                    if rules_kept {
                        let _ = release(supervised, &exe, ReleaseScope::Everything).await;
                    }
                    return Err(SuperviseError::Refused);
                }
                // Restarting at once: keep the rules (clients wait in the
                // held backlog for the next worker) and dummyvip0. With a
                // pause nothing would serve them meanwhile: remove them.
                let scope = if backoff.is_zero() {
                    ReleaseScope::ForRestart
                } else {
                    ReleaseScope::Everything
                };
                warn!(component = "agent", %status, ?scope, restart_in = ?backoff, "worker died; handing the VIPs over");
                // The worker is reaped, so its lock is free unless another
                // agent took it meanwhile (then that one owns the VIPs).
                if let Err(e) = release(supervised, &exe, scope).await {
                    warn!(component = "agent", error = %e, "release incomplete");
                }
                rules_kept = scope == ReleaseScope::ForRestart;
                None
            }
        };
        if let Some(signal) = stop {
            info!(component = "agent", "stopping the worker");
            // Only the worker's copy serves from now on: once it stops
            // accepting, new clients are refused instead of waiting in a
            // backlog that nobody will read.
            drop(held.take());
            if let Some(pid) = pid {
                let _ = kill(Pid::from_raw(pid), signal);
            }
            let status = child.wait().await?;
            if status.signal() == Some(signal as i32) {
                // Killed by the signal itself: it arrived before the worker
                // had installed its handlers (it had just been restarted),
                // so it did not clean up after itself.
                warn!(component = "agent", %status, "worker stopped before it could handle the signal; releasing");
                return release(supervised, &exe, ReleaseScope::Everything).await;
            }
            if !status.success() {
                return Err(SuperviseError::Failed(status));
            }
            return Ok(());
        }
        if !backoff.is_zero() {
            // The rules went with the handoff: nothing to clean up.
            tokio::select! {
                _ = sigterm.recv() => return Ok(()),
                _ = sigint.recv() => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
        }
        backoff = (backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
    }
}

/// Runs `cplb release` for `scope` and waits for it. It does nothing
/// while another agent holds the lock (the worker is reaped, so the lock
/// is free unless another agent took it meanwhile: then that one owns the
/// VIPs).
async fn release(
    supervised: &Supervised,
    exe: &Path,
    scope: ReleaseScope,
) -> Result<(), SuperviseError> {
    let mut command = supervised.command(exe, "release");
    command.env_remove(LISTEN_FD_ENV);
    if scope == ReleaseScope::ForRestart {
        command.arg(format!("--{RESTART_FLAG}"));
    }
    let status = tokio::process::Command::from(command).status().await?;
    if status.success() {
        Ok(())
    } else {
        Err(SuperviseError::Release(status))
    }
}

/// `cplb release --for-restart`: [`ReleaseScope::ForRestart`].
pub const RESTART_FLAG: &str = "for-restart";

/// The proxy's listening socket, bound by the parent, or `None` (no proxy
/// in this mode, or the bind failed: the worker then binds and reports why
/// itself, with the owner of the port).
fn hold_listener(plan: &Plan) -> Option<std::net::TcpListener> {
    let lb = plan.load_balancer.as_ref()?;
    match cplb_proxy::listen(&lb.proxy) {
        Ok(listener) => Some(listener),
        Err(e) => {
            warn!(component = "agent", error = %e, "cannot hold the proxy's socket; the worker binds its own");
            None
        }
    }
}

/// Hands `listener` to the program `command` starts: its descriptor stays
/// open across that exec only and its number goes in [`LISTEN_FD_ENV`].
#[allow(unsafe_code)] // pre_exec: the only way to change a flag in the child alone.
fn pass_listener(command: &mut std::process::Command, listener: &std::net::TcpListener) {
    use std::os::fd::AsRawFd;
    let fd = listener.as_raw_fd();
    command.env(LISTEN_FD_ENV, fd.to_string());
    // SAFETY: the hook runs in the forked child before exec (for
    // `CommandExt::exec`, in this process just before it) and only calls
    // fcntl, which is async-signal-safe. A forking parent's descriptor
    // keeps its close-on-exec flag, so no other program it starts
    // inherits it.
    unsafe {
        command.pre_exec(move || {
            if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The worker gets SIGTERM when the parent dies, however it dies (SIGKILL
/// included): an orphaned worker would otherwise keep running unsupervised
/// while a new supervisor starts another one.
#[allow(unsafe_code)] // pre_exec: the only way to run prctl in the child.
fn die_with_parent(command: &mut std::process::Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the hook runs in the forked child before exec and only makes
    // async-signal-safe calls (prctl, getppid, _exit); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Some(Signal::SIGTERM))?;
            // The parent may have died between fork and prctl.
            if nix::unistd::getppid() != parent {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
}
