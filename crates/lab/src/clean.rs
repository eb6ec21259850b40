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
    let removed = remove(list_netns(prefix)?, grace);
    // The lab's directory and keepalived's (`<netns>-keepalived`).
    remove_dirs(prefix);
    Ok(removed)
}

/// Removes the labs of test processes that no longer exist (killed before
/// their Drop guards ran), with the agents still running inside them.
pub fn clean_stale_tests(grace: Duration) -> Result<Vec<String>, LabError> {
    let stale: Vec<String> = list_netns(cplb_e2e::NETNS_PREFIX)?
        .into_iter()
        .filter(|name| {
            name.strip_prefix(cplb_e2e::NETNS_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    // `cplbt-<pid>-<n>-…` → the lab's prefix `cplbt-<pid>-<n>-`.
    let prefixes: std::collections::BTreeSet<String> = stale
        .iter()
        .filter_map(|name| {
            let mut parts = name.strip_prefix(cplb_e2e::NETNS_PREFIX)?.splitn(3, '-');
            Some(format!(
                "{}{}-{}-",
                cplb_e2e::NETNS_PREFIX,
                parts.next()?,
                parts.next()?
            ))
        })
        .collect();
    let removed = remove(stale, grace);
    for prefix in prefixes {
        remove_dirs(&prefix);
    }
    Ok(removed)
}

/// Stops every process inside the namespaces named `prefix*` (SIGTERM,
/// SIGKILL after `grace`) and leaves the namespaces to their owner: the
/// benchmark's teardown, which must not leave orphans (a supervised worker,
/// keepalived's VRRP child) running in a deleted namespace.
pub fn stop_processes(prefix: &str, grace: Duration) -> Result<(), LabError> {
    stop(&list_netns(prefix)?, grace);
    Ok(())
}

fn remove(namespaces: Vec<String>, grace: Duration) -> Vec<String> {
    stop(&namespaces, grace);
    let mut removed = Vec::new();
    for netns in namespaces {
        if cplb_e2e::delete_netns(&netns).is_ok() {
            removed.push(netns);
        }
    }
    removed
}

fn stop(namespaces: &[String], grace: Duration) {
    for netns in namespaces {
        for pid in pids_in(netns) {
            let _ = kill(pid, Signal::SIGTERM);
        }
    }
    for netns in namespaces {
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
}

/// Removes the temporary directories named after `prefix`.
fn remove_dirs(prefix: &str) {
    let tmp = std::env::temp_dir();
    let _ = std::fs::remove_dir_all(tmp.join(prefix.trim_end_matches('-')));
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}
