//! `/metrics`: the report encoded in the Prometheus text format, one
//! family per counter or gauge (listed in `docs/metrics.md`).

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{AdminError, StatusSource, not_ready_reason};
use crate::status::{
    BackendReport, InstanceReport, IpvsReport, RealServerReport, SocketReport, StatusReport,
};

/// The VRRP states `cplb_vrrp_state` always has a series for.
const VRRP_STATES: [&str; 4] = ["initialize", "backup", "master", "fault"];

/// Encodes `report` as the `/metrics` document (Prometheus text 0.0.4).
pub fn encode_metrics(report: &StatusReport) -> Result<String, AdminError> {
    let mut registry = Registry::default();
    let source: Arc<dyn StatusSource> = Arc::new(report.clone());
    registry.register_collector(Box::new(ReportCollector(source)));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Encodes a fresh report on every scrape.
pub(super) struct ReportCollector(pub(super) Arc<dyn StatusSource>);

impl fmt::Debug for ReportCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReportCollector")
    }
}

impl Collector for ReportCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        encode_report(&self.0.report(), &mut encoder)
    }
}

type Labels = Vec<(&'static str, String)>;

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[(Labels, V)],
) -> fmt::Result {
    family(enc, name, help, MetricType::Gauge, samples, |m, v| {
        m.encode_gauge(v)
    })
}

/// `name` without `_total`: the encoder appends it to counters.
fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[(Labels, u64)],
) -> fmt::Result {
    family(enc, name, help, MetricType::Counter, samples, |m, v| {
        m.encode_counter::<NoLabelSet, u64, u64>(v, None)
    })
}

/// One `# HELP`/`# TYPE` block with its series; nothing when there are none.
fn family<V>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: &[(Labels, V)],
    put: impl Fn(&mut MetricEncoder<'_>, &V) -> fmt::Result,
) -> fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = enc.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        let mut series = metric.encode_family(labels)?;
        put(&mut series, value)?;
    }
    Ok(())
}

fn instance_labels(i: &InstanceReport) -> Labels {
    vec![
        ("vrid", i.vrid.to_string()),
        ("interface", i.interface.clone()),
    ]
}

fn backend_labels(b: &BackendReport) -> Labels {
    vec![("backend", b.address.to_string())]
}

fn with(mut labels: Labels, key: &'static str, value: impl Into<String>) -> Labels {
    labels.push((key, value.into()));
    labels
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

fn encode_report(r: &StatusReport, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
    let none = Labels::new;
    gauge(
        enc,
        "cplb_build_info",
        "Always 1; the version is a label.",
        &[(vec![("version", r.version.clone())], 1i64)],
    )?;
    gauge(
        enc,
        "cplb_ready",
        "1 when the agent is ready and not stopping (as /readyz).",
        &[(none(), flag(not_ready_reason(r).is_none()))],
    )?;
    gauge(
        enc,
        "cplb_uptime_seconds",
        "Seconds since the agent started.",
        &[(none(), r.uptime_seconds)],
    )?;
    counter(
        enc,
        "cplb_vrrp_netlink_overruns",
        "Link and address notifications lost to a full netlink buffer (each followed by a re-read of links and addresses).",
        &[(none(), r.netlink_overruns)],
    )?;

    // VRRP.
    let states: Vec<(Labels, i64)> = r
        .instances
        .iter()
        .flat_map(|i| {
            // An unexpected state string still gets its series, so the
            // current state always has a 1.
            let extra = (!VRRP_STATES.contains(&i.state.as_str())).then_some(i.state.as_str());
            VRRP_STATES
                .into_iter()
                .chain(extra)
                .map(move |s| (with(instance_labels(i), "state", s), flag(i.state == s)))
        })
        .collect();
    gauge(
        enc,
        "cplb_vrrp_state",
        "1 for the VRRP instance's current state, 0 for the others.",
        &states,
    )?;
    let per_instance = |f: fn(&InstanceReport) -> u64| -> Vec<(Labels, u64)> {
        r.instances
            .iter()
            .map(|i| (instance_labels(i), f(i)))
            .collect()
    };
    gauge(
        enc,
        "cplb_vrrp_priority",
        "The priority the instance advertises now.",
        &per_instance(|i| u64::from(i.priority)),
    )?;
    counter(
        enc,
        "cplb_vrrp_transitions",
        "VRRP state changes.",
        &per_instance(|i| i.transitions),
    )?;
    counter(
        enc,
        "cplb_vrrp_adverts_sent",
        "VRRP adverts sent.",
        &per_instance(|i| i.adverts_sent),
    )?;
    counter(
        enc,
        "cplb_vrrp_adverts_received",
        "VRRP adverts accepted.",
        &per_instance(|i| i.adverts_received),
    )?;
    let dropped: Vec<(Labels, u64)> = r
        .instances
        .iter()
        .flat_map(|i| {
            i.dropped.iter().map(|d| {
                (
                    with(instance_labels(i), "reason", d.reason.clone()),
                    d.count,
                )
            })
        })
        .collect();
    counter(
        enc,
        "cplb_vrrp_packets_dropped",
        "VRRP adverts for the instance dropped, by reason.",
        &dropped,
    )?;
    let socket_labels = |s: &SocketReport| -> Labels {
        vec![
            ("interface", s.interface.clone()),
            ("family", s.family.clone()),
            ("mode", s.mode.clone()),
        ]
    };
    let received: Vec<(Labels, u64)> = r
        .sockets
        .iter()
        .map(|s| (socket_labels(s), s.packets_received))
        .collect();
    counter(
        enc,
        "cplb_vrrp_socket_packets_received",
        "VRRP packets the socket received, accepted or not.",
        &received,
    )?;
    let socket_dropped: Vec<(Labels, u64)> = r
        .sockets
        .iter()
        .flat_map(|s| {
            s.dropped
                .iter()
                .map(move |d| (with(socket_labels(s), "reason", d.reason.clone()), d.count))
        })
        .collect();
    counter(
        enc,
        "cplb_vrrp_socket_packets_dropped",
        "VRRP packets dropped before any instance was found for them, by reason.",
        &socket_dropped,
    )?;

    // Node health.
    let h = &r.health;
    let degraded = h.tracking && h.state != "healthy";
    gauge(
        enc,
        "cplb_node_healthy",
        "1 unless health tracking reports the node degraded.",
        &[(none(), flag(!degraded))],
    )?;
    let effective = if degraded {
        h.degraded_priority
    } else {
        h.base_priority
    };
    gauge(
        enc,
        "cplb_node_effective_priority",
        "The priority the health policy asks for (base, or degraded).",
        &[(none(), i64::from(effective))],
    )?;

    // Proxy backends.
    let backends: &[BackendReport] = r.proxy.as_ref().map_or(&[], |p| &p.backends);
    let per_backend = |f: fn(&BackendReport) -> u64| -> Vec<(Labels, u64)> {
        backends.iter().map(|b| (backend_labels(b), f(b))).collect()
    };
    gauge(
        enc,
        "cplb_backend_up",
        "1 when the backend's last health check passed.",
        &per_backend(|b| u64::from(b.health == "healthy")),
    )?;
    gauge(
        enc,
        "cplb_backend_in_set",
        "1 when the backend is in the proxy's current set.",
        &per_backend(|b| u64::from(b.in_set)),
    )?;
    let check: Vec<(Labels, f64)> = backends
        .iter()
        .filter_map(|b| b.check_seconds.map(|s| (backend_labels(b), s)))
        .collect();
    gauge(
        enc,
        "cplb_backend_health_check_duration_seconds",
        "Duration of the backend's latest health check.",
        &check,
    )?;
    counter(
        enc,
        "cplb_proxy_connections",
        "Connections proxied to the backend.",
        &per_backend(|b| b.connections_total),
    )?;
    gauge(
        enc,
        "cplb_proxy_connections_active",
        "Connections open to the backend now.",
        &per_backend(|b| b.connections_active),
    )?;
    let errors: Vec<(Labels, u64)> = backends
        .iter()
        .flat_map(|b| {
            b.connect_errors
                .iter()
                .map(|e| (with(backend_labels(b), "reason", e.reason.clone()), e.count))
        })
        .collect();
    counter(
        enc,
        "cplb_proxy_connect_errors",
        "Failed connects to the backend, by reason.",
        &errors,
    )?;
    let bytes: Vec<(Labels, u64)> = backends
        .iter()
        .flat_map(|b| {
            [
                (
                    with(backend_labels(b), "direction", "to_backend"),
                    b.bytes_to_backend,
                ),
                (
                    with(backend_labels(b), "direction", "from_backend"),
                    b.bytes_from_backend,
                ),
            ]
        })
        .collect();
    counter(
        enc,
        "cplb_proxy_bytes",
        "Bytes proxied, by direction.",
        &bytes,
    )?;

    if let Some(p) = &r.proxy {
        counter(
            enc,
            "cplb_proxy_refused_source_limit",
            "Client connections refused because their source had too many open.",
            &[(none(), p.refused_source_limit)],
        )?;
        counter(
            enc,
            "cplb_proxy_no_backend",
            "Client connections closed because no backend could be connected.",
            &[(none(), p.no_backend)],
        )?;
        counter(
            enc,
            "cplb_proxy_local_connect_errors",
            "Connects that failed for lack of local resources (not a backend's fault).",
            &[(none(), p.local_connect_errors)],
        )?;
    }
    if let Some(rec) = &r.reconciler {
        counter(
            enc,
            "cplb_reconciler_updates",
            "Backend set updates published to the proxy.",
            &[(none(), rec.updates)],
        )?;
        counter(
            enc,
            "cplb_reconciler_watch_errors",
            "Endpoint watch errors (the watch restarts after each).",
            &[(none(), rec.watch_errors)],
        )?;
        gauge(
            enc,
            "cplb_reconciler_kubeconfig_loaded",
            "1 once the kubeconfig has loaded; 0 while it is missing or broken (retried).",
            &[(none(), flag(rec.kubeconfig.state == "loaded"))],
        )?;
        let excluded: Vec<(Labels, i64)> = rec
            .excluded
            .iter()
            .map(|e| {
                (
                    vec![
                        ("address", e.address.to_string()),
                        ("reason", e.reason.clone()),
                    ],
                    1,
                )
            })
            .collect();
        gauge(
            enc,
            "cplb_reconciler_excluded_address",
            "1 for each endpoint address never used as a backend, with the reason.",
            &excluded,
        )?;
        counter(
            enc,
            "cplb_reconciler_exclusions",
            "Endpoint addresses excluded from the backends since start.",
            &[(none(), rec.excluded_total)],
        )?;
    }
    if let Some(nf) = &r.netfilter {
        gauge(
            enc,
            "cplb_netfilter_rules_in_place",
            "1 when every REDIRECT rule was present at the latest check.",
            &[(none(), flag(nf.in_place))],
        )?;
    }
    if let Some(ipvs) = &r.ipvs {
        encode_ipvs(ipvs, enc)?;
    }
    Ok(())
}

/// IPVS mode: the kernel's services and real servers on this node.
fn encode_ipvs(ipvs: &IpvsReport, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
    let none = Labels::new;
    gauge(
        enc,
        "cplb_ipvs_services",
        "IPVS services of this agent in the kernel (only the VIP holder has any).",
        &[(none(), ipvs.services.len() as i64)],
    )?;
    gauge(
        enc,
        "cplb_ipvs_sync_master",
        "1 while the IPVS connection sync daemon runs as master (this node holds a VIP), 0 as backup.",
        &[(none(), flag(ipvs.sync_daemon == "master"))],
    )?;
    let per_real_server = |f: fn(&RealServerReport) -> u64| -> Vec<(Labels, u64)> {
        ipvs.services
            .iter()
            .flat_map(|s| {
                s.real_servers.iter().map(move |d| {
                    (
                        vec![
                            ("service", s.address.clone()),
                            ("real_server", d.address.to_string()),
                        ],
                        f(d),
                    )
                })
            })
            .collect()
    };
    gauge(
        enc,
        "cplb_ipvs_real_server_weight",
        "The real server's IPVS weight (0: drained, no new connections).",
        &per_real_server(|d| u64::from(d.weight)),
    )?;
    gauge(
        enc,
        "cplb_ipvs_real_server_active_connections",
        "Connections to the real server the kernel counts as active.",
        &per_real_server(|d| u64::from(d.active_connections)),
    )?;
    gauge(
        enc,
        "cplb_ipvs_real_server_inactive_connections",
        "Connections to the real server the kernel counts as inactive.",
        &per_real_server(|d| u64::from(d.inactive_connections)),
    )?;
    counter(
        enc,
        "cplb_ipvs_reconciles",
        "IPVS reconciles (the kernel read and the difference applied).",
        &[(none(), ipvs.reconciles)],
    )?;
    counter(
        enc,
        "cplb_ipvs_changes",
        "Changes applied to the kernel's IPVS services and real servers.",
        &[(none(), ipvs.changes)],
    )?;
    counter(
        enc,
        "cplb_ipvs_reconcile_errors",
        "IPVS reconciles, ARP guard or sync daemon changes that failed (retried).",
        &[(none(), ipvs.reconcile_errors)],
    )
}
