//! One agent per network namespace: `cplb run` holds an exclusive `flock`
//! on a lock file for its whole life, with its pid written into it, and
//! `cplb release` only acts when it can take that lock itself. Without it a
//! second instance that failed to start (k0s's own CPLB still running, the
//! unit plus a static Pod, an orphaned worker) would have its
//! `ExecStopPost=cplb release` resign and delete the running agent's VIP
//! and rules about once a second.
//!
//! The kernel drops a `flock` when its holder dies, however it dies, so a
//! lock file left behind by a crash never blocks anything.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The lock file in the host's network namespace.
pub const DEFAULT_LOCK_FILE: &str = "/run/cplb.lock";

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it: another agent runs in this namespace.
    #[error(
        "another cplb agent is running here ({holder}, holding {path}); stop it first (`systemctl stop cplb`, or remove the static Pod)"
    )]
    Held {
        /// The lock file.
        path: PathBuf,
        /// "pid N" as the holder wrote it, or "pid unknown".
        holder: String,
    },
    /// The lock file could not be opened or locked.
    #[error("lock file {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; dropping it (or the process dying) releases it.
#[derive(Debug)]
pub struct AgentLock {
    _file: File,
}

/// The lock file to use: `explicit` if given, else [`DEFAULT_LOCK_FILE`] in
/// the host's network namespace and `/run/cplb-netns-<inode>.lock` in any
/// other. What the lock protects (VIPs, ports, rules) is per network
/// namespace, so agents in different namespaces (containers, test labs)
/// must not exclude each other.
pub fn lock_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    let inode = |p: &str| std::fs::metadata(p).map(|m| m.ino()).ok();
    // When init's namespace cannot be read (no CAP_SYS_PTRACE, some
    // containers), we cannot tell the host's apart: name the file after
    // ours, which is right either way.
    match (inode("/proc/self/ns/net"), inode("/proc/1/ns/net")) {
        (Some(own), init) if init != Some(own) => {
            PathBuf::from(format!("/run/cplb-netns-{own}.lock"))
        }
        _ => PathBuf::from(DEFAULT_LOCK_FILE),
    }
}

impl AgentLock {
    /// Takes the lock without waiting and writes our pid into the file.
    pub fn try_acquire(path: &Path) -> Result<AgentLock, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("pid {pid}{}", process_name(pid)),
                    Err(_) => "pid unknown".to_owned(),
                };
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Ours now: record who holds it, for the message above.
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(AgentLock { _file: file })
    }
}

/// " (name)" of `pid` from /proc, or "" (best effort, for messages).
pub(crate) fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|name| format!(" ({})", name.trim()))
        .unwrap_or_default()
}

/// Who listens on TCP `port` in this network namespace, as "pid N (name)"
/// (best effort: the socket's inode from /proc/net/tcp{,6}, then the
/// process with that socket among /proc/*/fd).
pub fn port_owner(port: u16) -> Option<String> {
    const LISTEN: &str = "0A";
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port = fields.get(1)?.rsplit(':').next()?;
                let matches = u16::from_str_radix(local_port, 16).ok() == Some(port)
                    && fields.get(3) == Some(&LISTEN);
                matches
                    .then(|| fields.get(9).map(|i| (*i).to_owned()))
                    .flatten()
            })
        })?;
    let target = format!("socket:[{inode}]");
    for process in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = process
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let owns = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str())
        });
        if owns {
            return Some(format!("pid {pid}{}", process_name(pid)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_gets_it_after_drop() {
        let dir = std::env::temp_dir().join(format!("cplb-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cplb.lock");
        let first = AgentLock::try_acquire(&path).unwrap();
        let err = AgentLock::try_acquire(&path).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        let again = AgentLock::try_acquire(&path);
        assert!(again.is_ok(), "{again:?}");
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_owner_of_a_listening_port_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let owner = port_owner(port);
        assert_eq!(
            owner,
            Some(format!(
                "pid {}{}",
                std::process::id(),
                process_name(std::process::id())
            ))
        );
    }

    #[test]
    fn an_explicit_path_wins() {
        assert_eq!(
            lock_path(Some(Path::new("/tmp/x.lock"))),
            PathBuf::from("/tmp/x.lock")
        );
    }
}
