//! `cplb run` at boot: wait for the host instead of refusing it.
//!
//! A configuration that names an interface that does not exist yet, or one
//! without the address adverts go out from (DHCP, bonding or a network
//! restart not finished), is not wrong: the plan marks those problems
//! [`Severity::HostNotReady`]. Exiting 78 for them would leave the unit
//! failed for good (`RestartPreventExitStatus=78`, issue 14 F5). So `run`
//! waits: the admin endpoint answers `/readyz` 503 and `/healthz` 200, the
//! reason is logged once (and again only when it changes), and the host is
//! checked again on every link or address change and at least every
//! [`RECHECK`]. Only problems that no wait can fix refuse to run.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cplb_vrrp::io::netlink::LinkEvents;
use futures_util::StreamExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin;
use crate::config::{Problem, Severity};
use crate::error::RunError;
use crate::plan::{self, Checked, HostChoice, Plan};
use crate::status::StatusReport;

/// The longest time between two checks of the host, in case a change
/// came without a netlink event (or the event socket could not be opened).
pub const RECHECK: Duration = Duration::from_secs(1);

/// After a link or address event, how long more events are gathered before
/// the host is checked again (an interface coming up sends several).
const SETTLE: Duration = Duration::from_millis(50);

/// `file` checked against this host, as `cplb validate` checks it.
pub async fn check_file(file: &Path, host: HostChoice) -> Checked {
    match std::fs::read_to_string(file) {
        Ok(text) => plan::check(&text, host).await,
        Err(e) => Checked {
            problems: vec![Problem::error(
                "",
                None,
                format!("cannot read the file: {e}"),
            )],
            ..Checked::default()
        },
    }
}

/// Whether `checked` is refused only for what the host has not got yet
/// (every error is [`Severity::HostNotReady`]): worth waiting for.
pub fn only_host_not_ready(checked: &Checked) -> bool {
    checked.config.is_some() && only_not_ready(&checked.problems)
}

/// Whether there are errors and each is [`Severity::HostNotReady`].
fn only_not_ready(problems: &[Problem]) -> bool {
    let mut errors = problems.iter().filter(|p| p.is_error()).peekable();
    errors.peek().is_some() && errors.all(|p| p.severity == Severity::HostNotReady)
}

/// How a wait ended.
#[derive(Debug)]
pub enum Waited {
    /// The host is ready: the plan to run.
    Ready(Box<Plan>),
    /// The file, or the host, has a problem no wait can fix (the file was
    /// edited, a VIP became a node address): refuse with these.
    Refused(Box<Checked>),
    /// SIGTERM or SIGINT came first: nothing was started, nothing to undo.
    Stopped,
}

/// Waits until `file` can run on this host (see the module docs). `first`
/// is the check already made, for which [`only_host_not_ready`] holds.
/// Serves the admin endpoint at the configured address meanwhile, not
/// ready; it is closed again before this returns.
pub async fn wait_for_host(file: &Path, first: Checked) -> Result<Waited, RunError> {
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    // Subscribed before each check, so no change falls in between.
    let mut events = match LinkEvents::subscribe() {
        Ok(events) => Some(events),
        Err(e) => {
            warn!(component = "agent", error = %e, ?RECHECK, "no netlink events; checking the host periodically only");
            None
        }
    };
    let admin = serve_not_ready(&first).await?;
    let mut logged: Vec<String> = Vec::new();
    let mut checked = first;
    let outcome = loop {
        if !only_host_not_ready(&checked) {
            break match checked.plan.take().filter(|_| !checked.has_errors()) {
                Some(plan) => Waited::Ready(Box::new(plan)),
                None => Waited::Refused(Box::new(checked)),
            };
        }
        let reasons: Vec<String> = checked
            .problems
            .iter()
            .filter(|p| p.is_error())
            .map(|p| p.message.clone())
            .collect();
        if reasons != logged {
            warn!(
                component = "agent",
                reason = reasons.join("; "),
                "waiting for the host: not ready until this is resolved"
            );
            notify_waiting(&reasons);
            logged = reasons;
        }
        let stop = tokio::select! {
            _ = term.recv() => true,
            _ = int.recv() => true,
            () = next_change(&mut events) => false,
        };
        if stop {
            info!(component = "agent", "stopping while waiting for the host");
            break Waited::Stopped;
        }
        // Keep systemd from failing the start (TimeoutStartSec) or the
        // watchdog while we wait on purpose.
        notify_extend();
        checked = check_file(file, HostChoice::This).await;
    };
    if let Some((cancel, server)) = admin {
        cancel.cancel();
        // The agent binds the same address next: wait until it is free.
        let _ = server.await;
    }
    if matches!(outcome, Waited::Ready(_)) {
        info!(component = "agent", "the host is ready; starting");
    }
    Ok(outcome)
}

/// Serves `/readyz` 503 at the configured admin address while waiting.
/// `None` when there is no configuration, or the address cannot be bound
/// (then `run` reports that once it starts).
async fn serve_not_ready(
    checked: &Checked,
) -> Result<
    Option<(
        CancellationToken,
        tokio::task::JoinHandle<Result<(), admin::AdminError>>,
    )>,
    RunError,
> {
    let Some(config) = &checked.config else {
        return Ok(None);
    };
    let address = config.cplb.admin_address;
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(source) => {
            warn!(component = "agent", %address, error = %source, "admin endpoint not served while waiting for the host");
            return Ok(None);
        }
    };
    let report = StatusReport {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ready: false,
        ..StatusReport::default()
    };
    let cancel = CancellationToken::new();
    let server = tokio::spawn(admin::serve(listener, Arc::new(report), cancel.clone()));
    Ok(Some((cancel, server)))
}

/// Returns after the next link or address change (and [`SETTLE`] more), or
/// after [`RECHECK`], whichever comes first.
async fn next_change(events: &mut Option<LinkEvents>) {
    let Some(stream) = events.as_mut() else {
        tokio::time::sleep(RECHECK).await;
        return;
    };
    match tokio::time::timeout(RECHECK, stream.next()).await {
        Ok(Some(_)) => {
            // Gather the rest of the burst (bounded by SETTLE).
            let _ = tokio::time::timeout(SETTLE, async { while stream.next().await.is_some() {} })
                .await;
        }
        Ok(None) => {
            warn!(
                component = "agent",
                "netlink events ended; checking the host periodically only"
            );
            *events = None;
        }
        Err(_) => {}
    }
}

fn notify_waiting(reasons: &[String]) {
    let status = format!("STATUS=waiting for the host: {}", reasons.join("; "));
    notify(&[sd_notify::NotifyState::Custom(&status)]);
}

fn notify_extend() {
    let usec = u32::try_from((RECHECK * 10).as_micros()).unwrap_or(u32::MAX);
    notify(&[
        sd_notify::NotifyState::ExtendTimeoutUsec(usec),
        sd_notify::NotifyState::Watchdog,
    ]);
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(state) {
        warn!(component = "agent", error = %e, "sd_notify failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(severities: &[Severity]) -> Vec<Problem> {
        severities
            .iter()
            .map(|s| Problem::error("p", None, "m").with_severity(*s))
            .collect()
    }

    #[test]
    fn only_a_host_that_is_not_ready_yet_is_waited_for() {
        use Severity::*;
        assert!(only_not_ready(&problems(&[HostNotReady])));
        assert!(only_not_ready(&problems(&[HostNotReady, Warning])));
        // Something no wait fixes is refused at once.
        assert!(!only_not_ready(&problems(&[HostNotReady, Error])));
        assert!(!only_not_ready(&problems(&[HostNotReady, HostError])));
        // Nothing wrong: nothing to wait for.
        assert!(!only_not_ready(&problems(&[Warning])));
        assert!(!only_not_ready(&problems(&[])));
    }
}
