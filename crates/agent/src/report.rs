//! The status report (`/status`, `/metrics`, `cplb status`), built each
//! tick from the plan and what the VRRP driver, the health tracker and the
//! load balancer say.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use cplb_proxy::BackendStats;
use cplb_reconciler::{KubeconfigStatus, ReconcilerStatus};
use cplb_vrrp::io::status::DriverStatus;

use crate::health::{Health, HealthTracker};
use crate::ipvs::IpvsBalancer;
use crate::lb::LoadBalancer;
use crate::plan::Plan;
use crate::status::{
    BackendReport, Counted, ExcludedReport, InstanceReport, KubeconfigReport, NetfilterReport,
    NodeHealthReport, ProxyReport, ReconcilerReport, SocketReport, StatusReport,
};

/// The report of a running agent.
pub(crate) fn build(
    started: Instant,
    plan: &Plan,
    status: &DriverStatus,
    tracker: Option<&HealthTracker>,
    lb: Option<&LoadBalancer>,
) -> StatusReport {
    let (instances, sockets) = vrrp(plan, status);
    let health = NodeHealthReport {
        tracking: tracker.is_some(),
        state: match tracker.map(HealthTracker::health) {
            Some(Health::Unhealthy) => "degraded".to_owned(),
            _ => "healthy".to_owned(),
        },
        reason: tracker.map_or_else(
            || "health tracking off".to_owned(),
            |t| t.reason().to_owned(),
        ),
        base_priority: plan.policy.base,
        degraded_priority: plan.policy.degraded,
    };
    let (proxy, reconciler, netfilter) = match lb.map(load_balancer) {
        Some((p, r, n)) => (Some(p), Some(r), Some(n)),
        None => (None, None, None),
    };
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: started.elapsed().as_secs_f64(),
        // Built only while running; the stop path marks the report itself.
        ready: true,
        stopping: false,
        instances,
        sockets,
        netlink_overruns: status.netlink_overruns,
        health,
        proxy,
        reconciler,
        netfilter,
        ipvs: None,
    }
}

/// The VRRP part of the report, from the driver's typed counters: each
/// drop is counted where the driver counted it, once: by the socket group
/// when no instance was found for the packet, else by the instance. Only
/// non-zero reasons are listed (a series appears with its first drop).
fn vrrp(plan: &Plan, status: &DriverStatus) -> (Vec<InstanceReport>, Vec<SocketReport>) {
    let instances = status
        .instances
        .iter()
        .enumerate()
        .map(|(i, s)| InstanceReport {
            vrid: s.vrid,
            interface: s.interface.clone(),
            version: u8::from(s.version),
            state: s.state.as_str().to_owned(),
            priority: s.priority,
            master: s.master,
            vips: plan.instances.get(i).map_or_else(
                || s.vips.iter().map(ToString::to_string).collect(),
                |p| p.vips.iter().map(ToString::to_string).collect(),
            ),
            transitions: s.transitions,
            adverts_sent: s.stats.adverts_sent,
            adverts_received: s.stats.adverts_received,
            dropped: non_zero(s.stats.drops()),
        })
        .collect();
    let sockets = status
        .sockets
        .iter()
        .map(|s| SocketReport {
            interface: s.interface.clone(),
            family: if s.ipv6 { "ipv6" } else { "ipv4" }.to_owned(),
            mode: if s.unicast { "unicast" } else { "multicast" }.to_owned(),
            vrids: s.vrids.clone(),
            packets_received: s.stats.packets_received,
            dropped: non_zero(s.stats.drops()),
        })
        .collect();
    (instances, sockets)
}

fn non_zero(drops: impl Iterator<Item = (&'static str, u64)>) -> Vec<Counted> {
    drops
        .filter(|(_, count)| *count > 0)
        .map(|(reason, count)| Counted {
            reason: reason.to_owned(),
            count,
        })
        .collect()
}

fn load_balancer(lb: &LoadBalancer) -> (ProxyReport, ReconcilerReport, NetfilterReport) {
    let snapshot = lb.health.borrow();
    // Counters exist only for backends that have had a connection; list
    // every backend of the set and every apiserver the reconciler knows
    // too, with zero counters.
    let mut stats = lb.backends.stats();
    let current = lb.backends.current();
    for addr in current
        .iter()
        .copied()
        .chain(snapshot.keys().map(|ip| SocketAddr::new(*ip, lb.api_port)))
    {
        if !stats.iter().any(|s| s.addr == addr) {
            stats.push(BackendStats::zero(addr, current.contains(&addr)));
        }
    }
    stats.sort_by_key(|s| s.addr);
    let backends = stats
        .into_iter()
        .map(|s| {
            let status = snapshot.get(&s.addr.ip());
            BackendReport {
                address: s.addr,
                in_set: s.in_set,
                health: status.map_or_else(|| "unknown".to_owned(), |b| b.health.to_string()),
                check_seconds: status.and_then(|b| b.last_latency).map(|d| d.as_secs_f64()),
                last_error: status.and_then(|b| b.last_error.clone()),
                connections_total: s.connections_total,
                connections_active: s.connections_active,
                connect_errors: s
                    .connect_errors()
                    .map(|(reason, count)| Counted {
                        reason: reason.as_str().to_owned(),
                        count,
                    })
                    .collect(),
                bytes_to_backend: s.bytes_to_backend,
                bytes_from_backend: s.bytes_from_backend,
            }
        })
        .collect();
    (
        {
            let totals = lb.backends.proxy_stats();
            ProxyReport {
                listen: lb.proxy_listen,
                backends,
                refused_source_limit: totals.refused_source_limit,
                no_backend: totals.no_backend,
                local_connect_errors: totals.local_connect_errors,
            }
        },
        reconciler_report(
            &lb.reconciler_status.borrow(),
            lb.updates.load(Ordering::Relaxed),
        ),
        NetfilterReport {
            backend: lb.rules.backend_name().to_owned(),
            in_place: lb.rules_in_place,
            rules: lb.rules.describe(&lb.redirects),
        },
    )
}

/// IPVS mode's part: the kernel's services (read by the IPVS controller)
/// and the reconciler feeding them.
pub(crate) fn add_ipvs(report: &mut StatusReport, ipvs: &IpvsBalancer) {
    report.ipvs = Some(ipvs.report.borrow().clone());
    report.reconciler = Some(reconciler_report(
        &ipvs.reconciler_status.borrow(),
        ipvs.updates.load(Ordering::Relaxed),
    ));
}

fn reconciler_report(status: &ReconcilerStatus, updates: u64) -> ReconcilerReport {
    ReconcilerReport {
        updates,
        watch_errors: status.watch_errors,
        kubeconfig: match &status.kubeconfig {
            KubeconfigStatus::Pending => KubeconfigReport {
                state: "pending".to_owned(),
                ..KubeconfigReport::default()
            },
            KubeconfigStatus::Loaded => KubeconfigReport {
                state: "loaded".to_owned(),
                ..KubeconfigReport::default()
            },
            KubeconfigStatus::Failed { error, attempts } => KubeconfigReport {
                state: "failed".to_owned(),
                error: Some(error.clone()),
                failed_attempts: *attempts,
            },
        },
        excluded: status
            .excluded
            .iter()
            .map(|(address, reason)| ExcludedReport {
                address: *address,
                reason: reason.as_str().to_owned(),
            })
            .collect(),
        excluded_total: status.excluded_total,
    }
}

#[cfg(test)]
mod tests {

    use cplb_vrrp::fsm::{RejectReason, State};
    use cplb_vrrp::io::rx::{InstanceStats, RxDrop, SocketStats};
    use cplb_vrrp::io::status::{InstanceStatus, SocketStatus};
    use cplb_vrrp::wire::{DecodeError, Version};

    use super::*;

    fn instance(vrid: u8, stats: InstanceStats) -> InstanceStatus {
        InstanceStatus {
            vrid,
            interface: "eth0".to_owned(),
            version: Version::V2,
            vips: Vec::new(),
            state: State::Backup,
            transitions: 0,
            priority: 100,
            master: None,
            silent_master: None,
            stats,
        }
    }

    fn plan() -> Plan {
        Plan {
            instances: Vec::new(),
            load_balancer: None,
            ipvs: None,
            health: None,
            policy: crate::health::HealthPolicy::default(),
            initial_priority: 100,
            handoff_grace: std::time::Duration::from_secs(1),
            admin_address: "127.0.0.1:9440".parse().unwrap(),
        }
    }

    /// Two instances on one socket group: the socket's drops are counted
    /// once (not once per instance), the instances' drops by each alone,
    /// and the /metrics series add up to every drop the driver counted.
    #[test]
    fn each_drop_is_reported_once_where_the_driver_counted_it() {
        let mut socket = SocketStats::default();
        for drop in [
            RxDrop::BadTtl(64),
            RxDrop::BadTtl(1),
            RxDrop::UnknownVrid(9),
            RxDrop::Decode(DecodeError::BadChecksum),
            // An instance's reason: never counted by the socket.
            RxDrop::NotAPeer { instance: 0 },
        ] {
            socket.count(&drop);
        }
        socket.packets_received = 14;
        let mut first = InstanceStats {
            adverts_received: 5,
            not_a_peer: 1,
            ..InstanceStats::default()
        };
        first.count_reject(&RejectReason::AuthPassword);
        let mut second = InstanceStats {
            adverts_received: 2,
            ..InstanceStats::default()
        };
        second.count_reject(&RejectReason::Addresses);
        let status = DriverStatus {
            instances: vec![instance(51, first), instance(52, second)],
            sockets: vec![SocketStatus {
                interface: "eth0".to_owned(),
                ipv6: false,
                unicast: false,
                vrids: vec![51, 52],
                stats: socket,
            }],
            ..DriverStatus::default()
        };
        let (instances, sockets) = vrrp(&plan(), &status);
        let reasons = |c: &[Counted]| -> Vec<(String, u64)> {
            c.iter().map(|c| (c.reason.clone(), c.count)).collect()
        };
        assert_eq!(
            reasons(&sockets[0].dropped),
            [
                ("bad_ttl".to_owned(), 2),
                ("unknown_vrid".to_owned(), 1),
                ("bad_checksum".to_owned(), 1)
            ]
        );
        assert_eq!(
            reasons(&instances[0].dropped),
            [("not_a_peer".to_owned(), 1), ("auth_failure".to_owned(), 1)]
        );
        assert_eq!(
            reasons(&instances[1].dropped),
            [("address_list_mismatch".to_owned(), 1)]
        );

        // What /metrics serves adds up: accepted adverts plus every drop
        // series equals what the socket received, each series once.
        let report = StatusReport {
            instances,
            sockets,
            ..StatusReport::default()
        };
        let metrics = crate::admin::encode_metrics(&report).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        let mut sum = |prefix: &str| -> u64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(prefix))
                .map(|l| {
                    let (series, value) = l.rsplit_once(' ').unwrap();
                    assert!(seen.insert(series.to_owned()), "{series} twice");
                    value.parse::<u64>().unwrap()
                })
                .sum()
        };
        let dropped = sum("cplb_vrrp_packets_dropped_total{")
            + sum("cplb_vrrp_socket_packets_dropped_total{");
        let accepted = sum("cplb_vrrp_adverts_received_total{");
        assert_eq!(dropped, 7, "{metrics}");
        assert_eq!(dropped + accepted, 14, "{metrics}");
        assert_eq!(sum("cplb_vrrp_socket_packets_received_total{"), 14);
    }
}
