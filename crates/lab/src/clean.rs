//! Removing a lab that its process could not tear down: after a SIGKILL, or
//! the demo's `--keep`. Also what the demo runs on Ctrl-C.

use std::process::Command;
use std::time::Duration;

use cplb_e2e::{LabError, list_netns, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The pids of the processes inside network namespace `netns`.
fn pids_in(netns: &str) -> Vec<Pid> {
    Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .map(Pid::from_raw)
                .collect()
        })
        .unwrap_or_default()
}

/// Stops every process inside the namespaces named `prefix*` (SIGTERM, so
/// agents remove their VIP and rules; SIGKILL after `grace`), deletes the
/// namespaces and the lab's directory. Returns the namespaces removed.
pub fn clean(prefix: &str, grace: Duration) -> Result<Vec<String>, LabError> {
    let namespaces = list_netns(prefix)?;
    for netns in &namespaces {
        for pid in pids_in(netns) {
            let _ = kill(pid, Signal::SIGTERM);
        }
    }
    for netns in &namespaces {
        if wait_until(&format!("processes in {netns} to exit"), grace, || {
            pids_in(netns).is_empty()
        })
        .is_err()
        {
            for pid in pids_in(netns) {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
    }
    let mut removed = Vec::new();
    for netns in namespaces {
        let status = Command::new("ip").args(["netns", "del", &netns]).status();
        if status.is_ok_and(|s| s.success()) {
            removed.push(netns);
        }
    }
    // The lab's directory and keepalived's (`<netns>-keepalived`).
    let tmp = std::env::temp_dir();
    let _ = std::fs::remove_dir_all(tmp.join(prefix.trim_end_matches('-')));
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(removed)
}
