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

use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::lb::LISTEN_FD_ENV;
use crate::plan::Plan;
use crate::run::ReleaseScope;

/// The pause before the second restart in a row (the first is immediate);
/// it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A worker that ran this long resets the pause.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// The hidden subcommand of `cplb` that runs the supervisor.
pub const SUPERVISOR_COMMAND: &str = "supervisor";
/// The supervisor's own small program, installed beside `cplb`; without
/// it `cplb supervisor` does the same job with more memory.
pub const SUPERVISOR_PROGRAM: &str = "cplb-supervisor";
/// `cplb release --for-restart`: [`ReleaseScope::ForRestart`].
pub const RESTART_FLAG: &str = "for-restart";

/// sysexits.h EX_CONFIG: a worker (or release) that refused to run.
const EX_CONFIG: i32 = 78;

/// Why the supervisor failed.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The worker could not be started or waited for.
    #[error("worker: {0}")]
    Worker(#[from] std::io::Error),
    /// Signals could not be set up or read.
    #[error("signals: {0}")]
    Signals(#[from] nix::Error),
    /// The supervisor's arguments or environment are not what `cplb run
    /// --supervise` passes.
    #[error("{0}")]
    Usage(String),
    /// `cplb release` after the worker died failed (its messages above).
    #[error("release stopped with {0}")]
    Release(ExitStatus),
    /// The worker stopped with an error status.
    #[error("worker stopped with {0}")]
    Failed(ExitStatus),
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

/// What the supervisor runs its children with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supervised {
    /// The `cplb` binary.
    pub agent: PathBuf,
    /// The configuration file.
    pub config: PathBuf,
    /// The agent lock file.
    pub lock_file: PathBuf,
    /// `--log-format` and `--log-level` with their values, passed on.
    pub log_args: Vec<String>,
}

impl Supervised {
    /// `cplb <command> --config … --lock-file … <log flags>`.
    fn command(&self, command: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.agent);
        cmd.arg(command)
            .arg("--config")
            .arg(&self.config)
            .arg("--lock-file")
            .arg(&self.lock_file)
            .args(&self.log_args)
            .env_remove(LISTEN_FD_ENV);
        clear_signal_mask(&mut cmd);
        cmd
    }

    /// The supervisor's arguments (after the program or subcommand name).
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--agent".into(),
            self.agent.clone().into(),
            "--config".into(),
            self.config.clone().into(),
            "--lock-file".into(),
            self.lock_file.clone().into(),
        ];
        args.extend(self.log_args.iter().map(Into::into));
        args
    }

    /// Parses [`to_args`](Self::to_args)'s output (the small program has
    /// no argument parser of its own).
    pub fn from_args(
        args: impl IntoIterator<Item = std::ffi::OsString>,
    ) -> Result<Supervised, SuperviseError> {
        let mut args = args.into_iter();
        let (mut agent, mut config, mut lock_file) = (None, None, None);
        let mut log_args = Vec::new();
        while let Some(flag) = args.next() {
            let flag = flag.to_string_lossy().into_owned();
            let value = args
                .next()
                .ok_or_else(|| SuperviseError::Usage(format!("{flag} needs a value")))?;
            match flag.as_str() {
                "--agent" => agent = Some(PathBuf::from(value)),
                "--config" => config = Some(PathBuf::from(value)),
                "--lock-file" => lock_file = Some(PathBuf::from(value)),
                "--log-format" | "--log-level" => {
                    log_args.extend([flag, value.to_string_lossy().into_owned()]);
                }
                _ => {
                    return Err(SuperviseError::Usage(format!(
                        "unknown argument {flag}; {SUPERVISOR_PROGRAM} is started by `cplb run --supervise`"
                    )));
                }
            }
        }
        let missing = |name: &str| SuperviseError::Usage(format!("--{name} is required"));
        Ok(Supervised {
            agent: agent.ok_or_else(|| missing("agent"))?,
            config: config.ok_or_else(|| missing("config"))?,
            lock_file: lock_file.ok_or_else(|| missing("lock-file"))?,
            log_args,
        })
    }

    /// The value of `--log-level`, if given.
    pub fn log_level(&self) -> Option<&str> {
        self.flag("--log-level")
    }

    /// The value of `--log-format`, if given.
    pub fn log_format(&self) -> Option<&str> {
        self.flag("--log-format")
    }

    fn flag(&self, name: &str) -> Option<&str> {
        self.log_args
            .windows(2)
            .find(|pair| pair[0] == name)
            .map(|pair| pair[1].as_str())
    }
}

/// The first stage's end: binds the proxy's socket (the plan is checked)
/// and replaces this process with the supervisor (the small program beside
/// this one if installed, else `cplb supervisor`), which holds it. Only
/// returns on failure.
pub fn exec_supervisor(supervised: &Supervised, plan: &Plan) -> SuperviseError {
    let small = supervised.agent.with_file_name(SUPERVISOR_PROGRAM);
    let mut command = if small.is_file() {
        std::process::Command::new(small)
    } else {
        let mut command = std::process::Command::new(&supervised.agent);
        command.arg(SUPERVISOR_COMMAND);
        command
    };
    command.args(supervised.to_args()).env_remove(LISTEN_FD_ENV);
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

/// The supervisor's `main` (`cplb-supervisor ARGS`, `cplb supervisor
/// ARGS`): logging by level only, [`supervise`], and the exit status: 78
/// when restarting cannot help, 1 on another failure.
pub fn program(args: impl IntoIterator<Item = std::ffi::OsString>) -> std::process::ExitCode {
    use crate::logging::{LogFormat, init_by_level};
    let result = Supervised::from_args(args).and_then(|supervised| {
        let format = match supervised.log_format() {
            Some("json") => LogFormat::Json,
            _ => LogFormat::Logfmt,
        };
        if let Err(e) = init_by_level(format, supervised.log_level()) {
            eprintln!("{SUPERVISOR_PROGRAM}: {e}");
        }
        supervise(&supervised)
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(component = "agent", error = %e, "supervisor failed");
            eprintln!("{SUPERVISOR_PROGRAM}: {e}");
            std::process::ExitCode::from(if e.is_config() { EX_CONFIG as u8 } else { 1 })
        }
    }
}

/// SIGTERM, SIGINT and SIGCHLD, read from a descriptor instead of handled:
/// the supervisor is one thread that sleeps in `poll` until its worker
/// exits, it is asked to stop, or a pause ends.
struct Signals {
    fd: SignalFd,
}

/// What woke the supervisor.
enum Wake {
    /// SIGTERM or SIGINT.
    Stop,
    /// A child exited (perhaps not the worker).
    Child,
    /// The timeout passed.
    Timeout,
}

impl Signals {
    fn new() -> Result<Signals, SuperviseError> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        set.add(Signal::SIGCHLD);
        // Blocked, so they queue for the descriptor. The mask would be
        // inherited: every child clears it before exec (clear_signal_mask).
        set.thread_block()?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        Ok(Signals { fd })
    }

    /// Waits up to `timeout` (forever if `None`) for a signal.
    fn wait(&mut self, timeout: Option<Duration>) -> Result<Wake, SuperviseError> {
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
        };
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(Wake::Timeout),
            Ok(_) => {}
            Err(nix::Error::EINTR) => return Ok(Wake::Child),
            Err(e) => return Err(e.into()),
        }
        let mut wake = Wake::Child;
        // Every queued signal; a stop wins over a child.
        while let Some(info) = self.fd.read_signal()? {
            if info.ssi_signo == Signal::SIGTERM as u32 || info.ssi_signo == Signal::SIGINT as u32 {
                wake = Wake::Stop;
            }
        }
        Ok(wake)
    }
}

/// Waits for `child` to exit, or for SIGTERM/SIGINT (`None`).
fn wait_worker(
    child: &mut Child,
    signals: &mut Signals,
) -> Result<Option<ExitStatus>, SuperviseError> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if let Wake::Stop = signals.wait(None)? {
            return Ok(None);
        }
    }
}

/// The supervisor: runs `cplb run` until SIGTERM/SIGINT or a clean stop.
pub fn supervise(supervised: &Supervised) -> Result<(), SuperviseError> {
    let mut signals = Signals::new()?;
    let mut held = crate::lb::listener_from_env().map_err(SuperviseError::Usage)?;
    let mut backoff = Duration::ZERO;
    // The last handoff left the rules for the worker now starting.
    let mut rules_kept = false;
    loop {
        let mut command = supervised.command("run");
        die_with_parent(&mut command);
        if let Some(listener) = &held {
            pass_listener(&mut command, listener);
        }
        let started = Instant::now();
        let mut child = command.spawn()?;
        info!(component = "agent", pid = child.id(), "worker started");
        let Some(status) = wait_worker(&mut child, &mut signals)? else {
            info!(component = "agent", "stopping the worker");
            // Only the worker's copy serves from now on: once it stops
            // accepting, new clients are refused instead of waiting in a
            // backlog that nobody will read.
            drop(held.take());
            return stop_worker(supervised, child, &mut signals);
        };
        if started.elapsed() > STABLE_RUN {
            backoff = Duration::ZERO;
        }
        if status.success() {
            info!(component = "agent", "worker stopped cleanly");
            return Ok(());
        }
        if status.code() == Some(EX_CONFIG) {
            // Another agent runs here, a port is taken, or the
            // configuration cannot work: a restart would not help. Rules
            // kept by the handoff before it are removed (the release is
            // skipped if another agent holds the lock).
            if rules_kept {
                let _ = release(supervised, ReleaseScope::Everything);
            }
            return Err(SuperviseError::Refused);
        }
        // Restarting at once: keep the rules (clients wait in the held
        // backlog for the next worker) and dummyvip0. With a pause nothing
        // would serve them meanwhile: remove them.
        let scope = if backoff.is_zero() {
            ReleaseScope::ForRestart
        } else {
            ReleaseScope::Everything
        };
        warn!(component = "agent", %status, ?scope, restart_in = ?backoff, "worker died; handing the VIPs over");
        if let Err(e) = release(supervised, scope) {
            warn!(component = "agent", error = %e, "release incomplete");
        }
        rules_kept = scope == ReleaseScope::ForRestart;
        if !backoff.is_zero() {
            // The rules went with the handoff: nothing to clean up.
            let until = Instant::now() + backoff;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                if let Wake::Stop = signals.wait(Some(left))? {
                    return Ok(());
                }
            }
        }
        backoff = (backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
    }
}

/// Passes SIGTERM on to the worker and waits for it.
fn stop_worker(
    supervised: &Supervised,
    mut child: Child,
    signals: &mut Signals,
) -> Result<(), SuperviseError> {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    // Further SIGTERMs change nothing: the worker is stopping.
    let status = loop {
        if let Some(status) = wait_worker(&mut child, signals)? {
            break status;
        }
    };
    if status.signal() == Some(Signal::SIGTERM as i32) {
        // Killed by the signal itself: it arrived before the worker had
        // installed its handlers (it had just been restarted), so it did
        // not clean up after itself.
        warn!(component = "agent", %status, "worker stopped before it could handle the signal; releasing");
        return release(supervised, ReleaseScope::Everything);
    }
    if !status.success() {
        return Err(SuperviseError::Failed(status));
    }
    Ok(())
}

/// Runs `cplb release` for `scope` and waits for it. It does nothing while
/// another agent holds the lock: the worker is reaped, so the lock is free
/// unless another agent took it meanwhile (then that one owns the VIPs).
fn release(supervised: &Supervised, scope: ReleaseScope) -> Result<(), SuperviseError> {
    let mut command = supervised.command("release");
    if scope == ReleaseScope::ForRestart {
        command.arg(format!("--{RESTART_FLAG}"));
    }
    let status = command.status()?;
    if status.success() {
        Ok(())
    } else {
        Err(SuperviseError::Release(status))
    }
}

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

/// The program `command` starts gets the signals the supervisor blocks (to
/// read them from a descriptor) as any program does: a blocked signal mask
/// survives fork and exec, and a worker or `cplb release` with SIGTERM or
/// SIGCHLD blocked would not stop, or not see its own children exit.
#[allow(unsafe_code)] // pre_exec: the only way to set the child's mask alone.
fn clear_signal_mask(command: &mut std::process::Command) {
    // SAFETY: the hook runs in the forked child before exec and only calls
    // sigprocmask, which is async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(|| {
            SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let supervised = Supervised {
            agent: "/usr/bin/cplb".into(),
            config: "/etc/cplb/config.yaml".into(),
            lock_file: "/run/cplb.lock".into(),
            log_args: vec![
                "--log-format".into(),
                "json".into(),
                "--log-level".into(),
                "debug".into(),
            ],
        };
        let parsed = Supervised::from_args(supervised.to_args()).unwrap();
        assert_eq!(parsed, supervised);
        assert_eq!(parsed.log_level(), Some("debug"));
        assert_eq!(parsed.log_format(), Some("json"));
    }

    #[test]
    fn wrong_arguments_are_refused_with_a_reason() {
        let args = |list: &[&str]| {
            list.iter()
                .map(Into::into)
                .collect::<Vec<std::ffi::OsString>>()
        };
        let err =
            Supervised::from_args(args(&["--config", "c.yaml", "--lock-file", "l"])).unwrap_err();
        assert_eq!(err.to_string(), "--agent is required");
        let err = Supervised::from_args(args(&["--agent"])).unwrap_err();
        assert_eq!(err.to_string(), "--agent needs a value");
        let err = Supervised::from_args(args(&["--bogus", "1"])).unwrap_err();
        assert!(
            err.to_string().starts_with("unknown argument --bogus"),
            "{err}"
        );
    }
}
