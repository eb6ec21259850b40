//! Running `iptables` and `nft` with a bound on how long they may take.
//!
//! A netfilter binary can hang: `iptables -w` waits for the xtables lock
//! another program holds, a wedged kernel or a broken wrapper never returns.
//! Every command therefore runs in a process group of its own, is waited for
//! at most [`COMMAND_TIMEOUT`], and is killed (with the whole group) after
//! that: the caller gets [`NetfilterError::TimedOut`] and tries again later.
//! Killing cannot leave half a rule behind: iptables and nft hand the kernel
//! a whole table or batch in one call, which either happened or did not, and
//! every rule is checked before it is added.
//!
//! These functions block the calling thread; on the async runtime use
//! [`Rules::install`](super::Rules::install) and friends, which run them on
//! the blocking pool.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::NetfilterError;

/// How long one `iptables`/`nft` run may take, lock wait (`-w`) included.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for a killed command to be reaped.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// What a command printed and how it ended.
pub(super) struct Ran {
    /// The exit code; -1 when killed by a signal.
    pub status: i32,
    /// stdout.
    pub stdout: String,
    /// stdout then stderr, trimmed (for error messages).
    pub output: String,
}

/// Runs `cmd` (with `input` on its stdin) for at most `timeout`.
pub(super) fn run_bounded(
    cmd: &mut Command,
    input: Option<String>,
    timeout: Duration,
) -> Result<Ran, NetfilterError> {
    let command = describe(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Its own group, so a timeout kills whatever it started too.
    .process_group(0);
    let mut child = cmd.spawn().map_err(|source| NetfilterError::Spawn {
        command: command.clone(),
        source,
    })?;
    let group = i32::try_from(child.id()).ok().map(Pid::from_raw);
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::Builder::new()
        .name("netfilter-cmd".to_owned())
        .spawn(move || {
            // A write error means the command exited early; its status and
            // message say why.
            let written = match (child.stdin.take(), input) {
                (Some(mut stdin), Some(text)) => stdin.write_all(text.as_bytes()),
                _ => Ok(()),
            };
            let out = child.wait_with_output();
            let _ = tx.send((written, out));
        });
    if let Err(source) = waiter {
        // The child was moved into the closure that never ran; it is
        // dropped (not reaped) with it: kill it so it does not linger.
        if let Some(group) = group {
            let _ = killpg(group, Signal::SIGKILL);
        }
        return Err(NetfilterError::Spawn { command, source });
    }
    let (written, out) = match rx.recv_timeout(timeout) {
        Ok(done) => done,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            // The child is not reaped yet (its waiter is still waiting), so
            // its pid, which is the group's id, cannot have been reused.
            if let Some(group) = group {
                let _ = killpg(group, Signal::SIGKILL);
            }
            let _ = rx.recv_timeout(KILL_GRACE);
            return Err(NetfilterError::TimedOut { command, timeout });
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            return Err(NetfilterError::Spawn {
                command,
                source: std::io::Error::other("the waiting thread ended without an answer"),
            });
        }
    };
    let out = out.map_err(|source| NetfilterError::Spawn {
        command: command.clone(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut output = stdout.clone();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    let status = out.status.code().unwrap_or(-1);
    if status == 0
        && let Err(source) = written
    {
        return Err(NetfilterError::Spawn { command, source });
    }
    Ok(Ran {
        status,
        stdout,
        output: output.trim().to_owned(),
    })
}

/// The command line, for messages.
pub(super) fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_status_are_kept() {
        let ran = run_bounded(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            None,
            COMMAND_TIMEOUT,
        )
        .unwrap();
        assert_eq!(ran.status, 3);
        assert_eq!(ran.stdout, "out\n");
        assert_eq!(ran.output, "out\nerr");
    }

    #[test]
    fn stdin_is_fed() {
        let ran = run_bounded(
            &mut Command::new("cat"),
            Some("batch".into()),
            COMMAND_TIMEOUT,
        )
        .unwrap();
        assert_eq!((ran.status, ran.stdout.as_str()), (0, "batch"));
    }

    /// A command that hangs (and started a child of its own that holds its
    /// output open) is killed, group and all, and reported.
    #[test]
    fn a_hanging_command_is_killed_with_its_children() {
        let marker = std::env::temp_dir().join(format!("cplb-hang-{}", std::process::id()));
        let script = format!("sleep 600 & echo $! > {}; wait", marker.display());
        let error = run_bounded(
            Command::new("sh").args(["-c", &script]),
            None,
            Duration::from_millis(300),
        )
        .err()
        .unwrap();
        assert!(matches!(error, NetfilterError::TimedOut { .. }), "{error}");
        let pid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let _ = std::fs::remove_file(&marker);
        // Killed: it closed the output (so the waiter saw EOF) and is
        // exiting; give it a moment to finish dying.
        let running = || {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            state
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                .is_some_and(|s| s != "Z" && s != "X")
        };
        let mut tries = 0;
        while running() && tries < 100 {
            std::thread::sleep(Duration::from_millis(50));
            tries += 1;
        }
        assert!(!running(), "the command's child {pid} still runs");
    }
}
