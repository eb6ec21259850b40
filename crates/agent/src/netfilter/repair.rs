//! The periodic check that puts the REDIRECT rules back when someone removed
//! them, run on the blocking pool so the agent's loop never waits for
//! `iptables` (issue 14, finding 3).

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{NetfilterError, Redirect, Rules};

/// How one check ended.
#[derive(Debug)]
pub enum RepairOutcome {
    /// Every rule was in place.
    InPlace,
    /// Some were missing and have been put back.
    Repaired,
    /// The rules could not be checked or put back; the next check tries
    /// again.
    Failed(NetfilterError),
}

impl RepairOutcome {
    /// Whether the rules are in place after the check.
    pub fn in_place(&self) -> bool {
        !matches!(self, RepairOutcome::Failed(_))
    }
}

/// At most one check at a time, started by [`start`](Repair::start) and
/// collected by [`finished`](Repair::finished) without waiting.
#[derive(Debug, Default)]
pub struct Repair {
    running: Option<oneshot::Receiver<RepairOutcome>>,
}

impl Repair {
    /// Starts a check of `redirects` unless one is still running; returns
    /// whether it started one.
    pub fn start(&mut self, rules: &Rules, redirects: &[Redirect]) -> bool {
        if self.running.is_some() {
            return false;
        }
        let (tx, rx) = oneshot::channel();
        let rules = rules.clone();
        let redirects = redirects.to_vec();
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(check_and_repair(&rules, &redirects));
        });
        self.running = Some(rx);
        true
    }

    /// The outcome of the check that ended since the last call, if one did.
    pub fn finished(&mut self) -> Option<RepairOutcome> {
        let rx = self.running.as_mut()?;
        let outcome = match rx.try_recv() {
            Ok(outcome) => outcome,
            Err(oneshot::error::TryRecvError::Empty) => return None,
            Err(oneshot::error::TryRecvError::Closed) => {
                RepairOutcome::Failed(NetfilterError::Task("the rule check panicked".to_owned()))
            }
        };
        self.running = None;
        Some(outcome)
    }

    /// Waits for a running check to end (each of its commands is bounded by
    /// [`COMMAND_TIMEOUT`](super::COMMAND_TIMEOUT)). Before the rules are
    /// removed: a check still running could put them back afterwards.
    pub async fn wait(&mut self) {
        if let Some(rx) = self.running.take() {
            let _ = rx.await;
        }
    }
}

fn check_and_repair(rules: &Rules, redirects: &[Redirect]) -> RepairOutcome {
    match rules.all_present(redirects) {
        Ok(true) => RepairOutcome::InPlace,
        Ok(false) => {
            warn!(
                component = "netfilter",
                "REDIRECT rules missing; putting them back"
            );
            match rules.ensure(redirects) {
                Ok(()) => {
                    info!(component = "netfilter", "REDIRECT rules put back");
                    RepairOutcome::Repaired
                }
                Err(e) => {
                    warn!(component = "netfilter", error = %e, "cannot put the REDIRECT rules back; trying again at the next check");
                    RepairOutcome::Failed(e)
                }
            }
        }
        Err(e) => {
            warn!(component = "netfilter", error = %e, "cannot check the REDIRECT rules; trying again at the next check");
            RepairOutcome::Failed(e)
        }
    }
}
