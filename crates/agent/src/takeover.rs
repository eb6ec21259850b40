//! Takeovers from a silent Master: the proxy skips that host's apiserver.
//!
//! When a VRRP instance becomes Master because the Master it heard fell
//! silent (no advert for Master_Down_Interval; the driver names it in
//! [`InstanceStatus::silent_master`]), that host is most likely gone: its
//! link went down, or it crashed. Its apiserver listens on the address its
//! adverts come from (the node's address, which the `kubernetes`
//! EndpointSlice lists), and stays in the backend set until the
//! reconciler's next `/readyz` check fails, up to one check interval plus
//! its timeout (1.8 s) later. At sub-second advert intervals the clients
//! arrive well before that, and each connect the proxy sends there waits
//! for a SYN-ACK that never comes (bench/failover: one in three
//! connections through the new Master stalled for a second after a link
//! down). So the agent puts the backends at that address in the proxy's
//! skip window at once (tried last, never dropped: fail-open), until the
//! reconciler reports a check of that address that started after the
//! takeover and succeeded (the host was alive after all: a VRRP-only
//! partition, a hung agent), or it leaves the backend set, or
//! [`SUSPICION_BOUND`] has passed.
//!
//! The match is by address: where adverts come from another address than
//! the apiserver's (`unicastSourceIP` on a second interface, IPv6 adverts
//! from a link-local address), nothing is skipped, and the proxy's connect
//! hedging (`cplb_proxy::ProxyConfig::connect_hedge`) bounds the stall
//! instead.
//!
//! [`InstanceStatus::silent_master`]: cplb_vrrp::io::status::InstanceStatus::silent_master

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use cplb_proxy::BackendsHandle;
use cplb_reconciler::{Health, HealthSnapshot};
use cplb_vrrp::fsm::State;
use cplb_vrrp::io::status::DriverStatus;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The longest a suspected host is skipped without a word from the
/// reconciler (which removes a dead one, or clears a live one, within
/// about two seconds); a bound in case it stops checking.
pub(crate) const SUSPICION_BOUND: Duration = Duration::from_secs(30);

/// The hosts suspected, and the takeovers already acted on.
#[derive(Debug, Default)]
pub(crate) struct Suspicions {
    /// Per instance (interface, VRID): the transition count of the latest
    /// takeover acted on.
    handled: HashMap<(String, u8), u64>,
    /// Suspected address → the reconciler's check count for it when
    /// suspected (a later successful check clears it).
    suspects: BTreeMap<IpAddr, u64>,
}

impl Suspicions {
    /// The addresses to suspect now: the silent Masters of takeovers not
    /// acted on yet.
    pub(crate) fn on_status(
        &mut self,
        status: &DriverStatus,
        health: &HealthSnapshot,
    ) -> Vec<IpAddr> {
        let mut new = Vec::new();
        for instance in &status.instances {
            let Some(ip) = instance.silent_master else {
                continue;
            };
            if instance.state != State::Master {
                continue;
            }
            let key = (instance.interface.clone(), instance.vrid);
            if self.handled.get(&key) == Some(&instance.transitions) {
                continue;
            }
            self.handled.insert(key, instance.transitions);
            let probes = health.get(&ip).map_or(0, |b| b.probes);
            self.suspects.insert(ip, probes);
            if !new.contains(&ip) {
                new.push(ip);
            }
        }
        new
    }

    /// The suspected addresses cleared by `health`: a check completed since
    /// the suspicion, and the host is healthy. Addresses the reconciler no
    /// longer checks are forgotten (they are not backends any more).
    pub(crate) fn on_health(&mut self, health: &HealthSnapshot) -> Vec<IpAddr> {
        let mut cleared = Vec::new();
        self.suspects.retain(|ip, probes| match health.get(ip) {
            None => false,
            Some(b)
                if b.probes > *probes
                    && b.consecutive_failures == 0
                    && b.health == Health::Healthy =>
            {
                cleared.push(*ip);
                false
            }
            Some(_) => true,
        });
        cleared
    }

    /// The addresses suspected now.
    #[cfg(test)]
    fn suspected(&self) -> Vec<IpAddr> {
        self.suspects.keys().copied().collect()
    }
}

/// Follows the VRRP driver's status and the reconciler's health, telling
/// the proxy which hosts to skip, until `cancel`.
pub(crate) async fn follow(
    mut status: watch::Receiver<DriverStatus>,
    mut health: watch::Receiver<HealthSnapshot>,
    backends: BackendsHandle,
    cancel: CancellationToken,
) {
    let mut suspicions = Suspicions::default();
    let mut health_open = true;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
                let new = {
                    let status = status.borrow_and_update();
                    suspicions.on_status(&status, &health.borrow())
                };
                for ip in new {
                    let skipped = backends.suspect(ip, SUSPICION_BOUND, "took over from this host's silent VRRP Master");
                    info!(component = "agent", master = %ip, ?skipped,
                        "took over from a silent Master: its apiserver is skipped until a check succeeds");
                }
            }
            changed = health.changed(), if health_open => {
                if changed.is_err() {
                    health_open = false;
                    continue;
                }
                let cleared = suspicions.on_health(&health.borrow_and_update());
                for ip in cleared {
                    backends.clear_suspect(ip, "the reconciler's check succeeded after the takeover");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cplb_reconciler::BackendStatus;
    use cplb_vrrp::io::status::InstanceStatus;
    use cplb_vrrp::wire::Version;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn instance(state: State, transitions: u64, silent: Option<&str>) -> InstanceStatus {
        InstanceStatus {
            vrid: 51,
            interface: "eth0".to_owned(),
            version: Version::V3,
            vips: Vec::new(),
            state,
            transitions,
            priority: 200,
            master: None,
            silent_master: silent.map(ip),
            stats: Default::default(),
        }
    }

    fn status(instances: Vec<InstanceStatus>) -> DriverStatus {
        DriverStatus {
            instances,
            ..DriverStatus::default()
        }
    }

    fn checked(
        addr: &str,
        health: Health,
        probes: u64,
        consecutive_failures: u32,
    ) -> HealthSnapshot {
        let mut snapshot = HealthSnapshot::new();
        snapshot.insert(
            ip(addr),
            BackendStatus {
                health,
                probes,
                consecutive_failures,
                last_change: None,
                last_error: None,
                last_latency: None,
            },
        );
        snapshot
    }

    #[test]
    fn a_takeover_from_a_silent_master_suspects_it_once() {
        let mut s = Suspicions::default();
        let health = checked("192.0.2.12", Health::Healthy, 40, 0);
        assert!(
            s.on_status(&status(vec![instance(State::Backup, 1, None)]), &health)
                .is_empty()
        );
        let master = status(vec![instance(State::Master, 2, Some("192.0.2.12"))]);
        assert_eq!(s.on_status(&master, &health), vec![ip("192.0.2.12")]);
        // The same takeover published again (counters moved): acted on once.
        assert!(s.on_status(&master, &health).is_empty());
        // A later takeover from the same host (after it came back) counts.
        let again = status(vec![instance(State::Master, 4, Some("192.0.2.12"))]);
        assert_eq!(s.on_status(&again, &health), vec![ip("192.0.2.12")]);
    }

    #[test]
    fn other_takeovers_suspect_nobody() {
        let mut s = Suspicions::default();
        let health = HealthSnapshot::new();
        // Resigned, preempted, startup: the driver names no silent Master.
        assert!(
            s.on_status(&status(vec![instance(State::Master, 2, None)]), &health)
                .is_empty()
        );
        assert!(s.suspected().is_empty());
    }

    #[test]
    fn only_a_check_after_the_takeover_that_succeeded_clears_it() {
        let mut s = Suspicions::default();
        let before = checked("192.0.2.12", Health::Healthy, 40, 0);
        let master = status(vec![instance(State::Master, 2, Some("192.0.2.12"))]);
        s.on_status(&master, &before);
        // The snapshot of before the takeover again: not fresh.
        assert!(s.on_health(&before).is_empty());
        // A fresh failed check: still suspected (the reconciler drops it).
        assert!(
            s.on_health(&checked("192.0.2.12", Health::Unhealthy, 41, 1))
                .is_empty()
        );
        assert_eq!(s.suspected(), vec![ip("192.0.2.12")]);
        // A fresh successful one: cleared.
        assert_eq!(
            s.on_health(&checked("192.0.2.12", Health::Healthy, 42, 0)),
            vec![ip("192.0.2.12")]
        );
        assert!(s.suspected().is_empty());
    }

    #[test]
    fn an_address_no_longer_checked_is_forgotten_without_clearing() {
        let mut s = Suspicions::default();
        let master = status(vec![instance(State::Master, 2, Some("192.0.2.12"))]);
        s.on_status(&master, &HealthSnapshot::new());
        assert!(
            s.on_health(&checked("192.0.2.11", Health::Healthy, 9, 0))
                .is_empty()
        );
        assert!(s.suspected().is_empty());
    }
}
