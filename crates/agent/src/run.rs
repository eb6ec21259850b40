//! `cplb run`: the agent's lifecycle.
//!
//! Start order (each step needs the previous one in place): reconciler →
//! proxy → netfilter rules → VRRP. IPv6 address labels come with the VIPs
//! from the VRRP driver. READY=1 goes to systemd only once the proxy
//! listens, the rules exist and the VRRP sockets are open.
//!
//! Stop order on SIGTERM/SIGINT: reconciler → VRRP release (one priority-0
//! advert per Master instance, VIPs removed, so this node still reaches the
//! VIP once another node holds it) → proxy drain → rules removed.
//!
//! `release` is the crash handoff for a worker that died without that
//! stop: systemd's `ExecStopPost=` or the supervising parent runs it.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cplb_proxy::{BackendStats, BackendsHandle, ProxyConfig, ProxyThread};
use cplb_reconciler::{HealthSnapshot, Reconciler, ReconcilerConfig};
use cplb_vrrp::fsm::Config as RouterConfig;
use cplb_vrrp::io::driver::{self, Control, InstanceConfig, InstanceStatus, VipLease};
use cplb_vrrp::io::netlink::{Vip, VipManager};
use cplb_vrrp::wire::{Auth, Centis, Version};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::health::{Health, HealthPolicy, HealthTracker};
use crate::netfilter::{NetfilterError, Redirect, Rules};
use crate::status::{
    BackendReport, Counted, InstanceReport, NetfilterReport, NodeHealthReport, ProxyReport,
    ReconcilerReport, StatusReport,
};

/// How often the main loop refreshes the status report and looks at health.
const TICK: Duration = Duration::from_millis(500);
/// How often the REDIRECT rules are checked (and put back if gone).
const RULE_CHECK_EVERY: u32 = 20;
/// Pause between attempts to load the kubeconfig (it may appear after us).
const RECONCILER_RETRY: Duration = Duration::from_secs(5);

/// Why the agent could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `controlPlaneLoadBalancing.enabled` is false.
    #[error(
        "spec.network.controlPlaneLoadBalancing.enabled is false: nothing to run (set it to true)"
    )]
    Disabled,
    /// No VRRP instance is configured.
    #[error(
        "keepalived.vrrpInstances is empty: no virtual IP to run (k0s skips keepalived in this case)"
    )]
    NoInstances,
    /// IPVS virtual servers are configured.
    #[error(
        "keepalived.virtualServers is set, but cplb has no IPVS mode yet; remove virtualServers to use the userspace proxy on userSpaceProxyBindPort"
    )]
    VirtualServers,
    /// An interface lookup failed.
    #[error("vrrpInstances[{index}]: interface {interface}: {reason}")]
    Interface {
        /// Position in `vrrpInstances`.
        index: usize,
        /// The interface.
        interface: String,
        /// What went wrong.
        reason: String,
    },
    /// The VRRP driver did not start.
    #[error("VRRP: {0}")]
    Vrrp(#[from] driver::DriverError),
    /// Netlink could not be opened.
    #[error("netlink: {0}")]
    Netlink(#[from] cplb_vrrp::io::netlink::NetlinkError),
    /// The proxy could not listen.
    #[error("proxy: {0}")]
    Proxy(#[from] cplb_proxy::ProxyError),
    /// The REDIRECT rules could not be installed.
    #[error("netfilter: {0}")]
    Netfilter(#[from] NetfilterError),
    /// The admin endpoint could not listen.
    #[error("admin endpoint {address}: {source}")]
    Admin {
        /// The configured address.
        address: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("signals: {0}")]
    Signals(std::io::Error),
    /// A task of the agent ended unexpectedly.
    #[error("{0} stopped unexpectedly")]
    Crashed(&'static str),
    /// The health policy is inconsistent.
    #[error("health: {0}")]
    Health(#[from] crate::health::PolicyError),
    /// Teardown left something behind.
    #[error("teardown incomplete: {0}")]
    Teardown(String),
}

/// The VRRP instances of `config`, resolved against the host's interfaces:
/// the advert source is `unicastSourceIP`, else the interface's primary
/// IPv4 address, or its link-local IPv6 address for an IPv6 instance
/// (RFC 5798 §5.1.2.1).
pub async fn instance_configs(
    config: &Config,
    priority: u8,
) -> Result<Vec<InstanceConfig>, RunError> {
    let netlink = VipManager::new()?;
    let mut out = Vec::new();
    for (index, instance) in config.vrrp_instances.iter().enumerate() {
        let fail = |reason: String| RunError::Interface {
            index,
            interface: instance.interface.clone(),
            reason,
        };
        let vips: Vec<IpAddr> = instance.virtual_ips.iter().map(|n| n.addr()).collect();
        let ipv6 = vips.first().is_some_and(IpAddr::is_ipv6);
        let primary_ip = match instance.unicast_source_ip {
            Some(ip) => ip,
            None => {
                let interface = netlink
                    .interface(&instance.interface)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let addresses = netlink
                    .addresses(interface.index)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let candidate = addresses
                    .iter()
                    .filter(|a| !vips.contains(&a.addr))
                    .filter(|a| match a.addr {
                        IpAddr::V4(_) => !ipv6 && !a.secondary,
                        IpAddr::V6(v6) => ipv6 && v6.is_unicast_link_local(),
                    })
                    .map(|a| a.addr)
                    .next();
                candidate.ok_or_else(|| {
                    fail(if ipv6 {
                        "has no link-local IPv6 address to send adverts from".to_owned()
                    } else {
                        "has no IPv4 address to send adverts from".to_owned()
                    })
                })?
            }
        };
        let version = if ipv6 || config.cplb.vrrp_version == 3 {
            Version::V3
        } else {
            Version::V2
        };
        let mut router = RouterConfig::new(
            version,
            instance.virtual_router_id,
            primary_ip,
            vips.clone(),
        );
        router.priority = priority;
        router.advert_interval = Centis(u16::from(instance.advert_interval_seconds) * 100);
        // RFC 5798 removed authentication; keepalived ignores authPass in v3.
        if version == Version::V2 {
            router.auth = Auth::pass(instance.auth_pass.as_bytes());
        }
        let mut vrrp = InstanceConfig::new(router, instance.interface.clone());
        vrrp.vip_prefixes = instance
            .virtual_ips
            .iter()
            .filter_map(|n| Vip::new(n.addr(), n.prefix_len()).ok())
            .collect();
        vrrp.unicast_peers = instance.unicast_peers.clone();
        vrrp.lease = VipLease::Auto;
        vrrp.ipv6_addr_label = Some(instance.address_label);
        out.push(vrrp);
    }
    Ok(out)
}

/// The REDIRECT rules of `config`: one per VIP.
pub fn redirects(config: &Config) -> Vec<Redirect> {
    let vips: BTreeSet<IpAddr> = config
        .vrrp_instances
        .iter()
        .flat_map(|i| i.virtual_ips.iter().map(|n| n.addr()))
        .collect();
    vips.into_iter()
        .map(|vip| Redirect {
            vip,
            api_port: config.api_port,
            proxy_port: config.user_space_proxy_bind_port,
        })
        .collect()
}

/// Crash handoff (`cplb release`): priority-0 adverts for every instance
/// whose VIPs are still on this node, VIPs removed, then the REDIRECT rules
/// removed. Safe to run after a clean stop: it then finds nothing to do.
pub async fn release(config: &Config) -> Result<Vec<u8>, RunError> {
    let instances = instance_configs(config, config.cplb.priority).await?;
    let released = driver::release(instances).await?;
    if !config.disable_load_balancer {
        let rules = Rules::new(config.cplb.netfilter, config.cplb.output_rule);
        let errors = rules.remove(&redirects(config));
        if !errors.is_empty() {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(RunError::Teardown(text.join("; ")));
        }
    }
    Ok(released)
}

/// Sends a message to systemd if we run under it (`NOTIFY_SOCKET`).
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(state) {
        warn!(component = "agent", error = %e, "sd_notify failed");
    }
}

/// The load-balancing half: reconciler, proxy and rules.
struct LoadBalancer {
    proxy_task: JoinHandle<Result<(), cplb_proxy::ProxyError>>,
    proxy_cancel: CancellationToken,
    proxy_listen: SocketAddr,
    backends: BackendsHandle,
    reconciler_task: JoinHandle<()>,
    reconciler_cancel: CancellationToken,
    health: watch::Receiver<HealthSnapshot>,
    updates: Arc<AtomicU64>,
    watch_errors: Arc<AtomicU64>,
    rules: Rules,
    redirects: Vec<Redirect>,
    rules_in_place: bool,
    api_port: u16,
}

impl LoadBalancer {
    async fn start(config: &Config) -> Result<LoadBalancer, RunError> {
        // The reconciler first: it retries its kubeconfig in the background
        // (k0s writes it after starting us), feeding the proxy once it
        // knows the apiservers.
        let (health_tx, health) = watch::channel(HealthSnapshot::new());
        let updates = Arc::new(AtomicU64::new(0));
        let watch_errors = Arc::new(AtomicU64::new(0));
        let reconciler_cancel = CancellationToken::new();

        let mut proxy_config = ProxyConfig::with_local_apiserver(config.api_port);
        // After the VIP has moved, connections through it are dead anyway;
        // only local clients (OUTPUT rule) gain from a long drain.
        proxy_config.drain_timeout = Duration::from_secs(5);
        proxy_config.listen = SocketAddr::new(
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            config.user_space_proxy_bind_port,
        );
        let reconciler_config = ReconcilerConfig {
            kubeconfig: config.cplb.kubeconfig.clone().into(),
            api_port: config.api_port,
            ..ReconcilerConfig::default()
        };

        // On a thread of its own, so proxy load never delays VRRP adverts.
        let proxy_cancel = CancellationToken::new();
        let proxy = ProxyThread::spawn(proxy_config, proxy_cancel.clone()).await?;
        let proxy_listen = proxy.local_addr();
        let backends = proxy.backends_handle();
        info!(component = "proxy", listen = %proxy_listen, "proxy listening");

        let reconciler_task = tokio::spawn(run_reconciler(
            reconciler_config,
            backends.clone(),
            health_tx,
            Arc::clone(&updates),
            Arc::clone(&watch_errors),
            reconciler_cancel.clone(),
        ));
        let proxy_task = tokio::spawn(proxy.join());

        let rules = Rules::new(config.cplb.netfilter, config.cplb.output_rule);
        let redirects = redirects(config);
        if let Err(e) = rules.ensure(&redirects) {
            reconciler_cancel.cancel();
            proxy_cancel.cancel();
            let _ = reconciler_task.await;
            let _ = proxy_task.await;
            // Leave no half-installed rule set behind.
            let _ = rules.remove(&redirects);
            return Err(e.into());
        }
        info!(
            component = "netfilter",
            backend = rules.backend_name(),
            rules = redirects.len(),
            "REDIRECT rules in place"
        );
        Ok(LoadBalancer {
            proxy_task,
            proxy_cancel,
            proxy_listen,
            backends,
            reconciler_task,
            reconciler_cancel,
            health,
            updates,
            watch_errors,
            rules,
            redirects,
            rules_in_place: true,
            api_port: config.api_port,
        })
    }

    /// Whether this node can serve through its proxy, and why.
    fn health(&self) -> (bool, String) {
        if self.proxy_task.is_finished() {
            return (false, "proxy not serving".to_owned());
        }
        let snapshot = self.health.borrow();
        let known = snapshot.len();
        let healthy = snapshot
            .values()
            .filter(|b| b.health == cplb_reconciler::Health::Healthy)
            .count();
        if known == 0 {
            (false, "no apiserver known yet".to_owned())
        } else if healthy == 0 {
            (
                false,
                format!("no healthy apiserver reachable from this node (0 of {known})"),
            )
        } else {
            (
                true,
                format!("{healthy} of {known} apiservers healthy from this node"),
            )
        }
    }

    /// Puts the rules back if someone removed them.
    fn check_rules(&mut self) {
        match self.rules.all_present(&self.redirects) {
            Ok(true) => self.rules_in_place = true,
            Ok(false) => {
                warn!(
                    component = "netfilter",
                    "REDIRECT rules missing; putting them back"
                );
                self.rules_in_place = self.rules.ensure(&self.redirects).is_ok();
            }
            Err(e) => {
                warn!(component = "netfilter", error = %e, "cannot check the REDIRECT rules");
                self.rules_in_place = false;
            }
        }
    }

    fn report(&self) -> (ProxyReport, ReconcilerReport, NetfilterReport) {
        let snapshot = self.health.borrow();
        // Counters exist only for backends that have had a connection; list
        // every backend of the set and every apiserver the reconciler knows
        // too, with zero counters.
        let mut stats = self.backends.stats();
        let current = self.backends.current();
        for addr in current.iter().copied().chain(
            snapshot
                .keys()
                .map(|ip| SocketAddr::new(*ip, self.api_port)),
        ) {
            if !stats.iter().any(|s| s.addr == addr) {
                stats.push(BackendStats {
                    addr,
                    in_set: current.contains(&addr),
                    connections_total: 0,
                    connections_active: 0,
                    connect_errors_refused: 0,
                    connect_errors_timeout: 0,
                    connect_errors_unreachable: 0,
                    connect_errors_other: 0,
                    bytes_to_backend: 0,
                    bytes_from_backend: 0,
                });
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
                    connect_errors: [
                        ("refused", s.connect_errors_refused),
                        ("timeout", s.connect_errors_timeout),
                        ("unreachable", s.connect_errors_unreachable),
                        ("other", s.connect_errors_other),
                    ]
                    .into_iter()
                    .map(|(reason, count)| Counted {
                        reason: reason.to_owned(),
                        count,
                    })
                    .collect(),
                    bytes_to_backend: s.bytes_to_backend,
                    bytes_from_backend: s.bytes_from_backend,
                }
            })
            .collect();
        (
            ProxyReport {
                listen: self.proxy_listen,
                backends,
            },
            ReconcilerReport {
                updates: self.updates.load(Ordering::Relaxed),
                watch_errors: self.watch_errors.load(Ordering::Relaxed),
            },
            NetfilterReport {
                backend: self.rules.backend_name().to_owned(),
                in_place: self.rules_in_place,
                rules: self.rules.describe(&self.redirects),
            },
        )
    }

    async fn stop_reconciler(&mut self) {
        self.reconciler_cancel.cancel();
        if let Err(e) = (&mut self.reconciler_task).await {
            warn!(component = "reconciler", error = %e, "reconciler task failed");
        }
    }

    /// Drains the proxy, then removes the rules.
    async fn stop(mut self) -> Vec<String> {
        self.proxy_cancel.cancel();
        match (&mut self.proxy_task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(component = "proxy", error = %e, "proxy failed"),
            Err(e) => warn!(component = "proxy", error = %e, "proxy task failed"),
        }
        info!(component = "proxy", "proxy stopped");
        let errors: Vec<String> = self
            .rules
            .remove(&self.redirects)
            .iter()
            .map(ToString::to_string)
            .collect();
        if errors.is_empty() {
            info!(component = "netfilter", "REDIRECT rules removed");
        } else {
            for e in &errors {
                error!(component = "netfilter", error = %e, "cannot remove a REDIRECT rule");
            }
        }
        errors
    }
}

/// Runs the reconciler, retrying its start until the kubeconfig loads, and
/// feeds its backend sets to the proxy.
async fn run_reconciler(
    config: ReconcilerConfig,
    backends: BackendsHandle,
    health_tx: watch::Sender<HealthSnapshot>,
    updates: Arc<AtomicU64>,
    watch_errors: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let reconciler = loop {
        match Reconciler::new(config.clone()).await {
            Ok(r) => break r,
            Err(e) => {
                warn!(component = "reconciler", error = %e, retry_in = ?RECONCILER_RETRY,
                    "cannot start the reconciler; the proxy keeps its bootstrap backend");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(RECONCILER_RETRY) => {}
                }
            }
        }
    };
    let mut sets = reconciler.subscribe();
    let mut health = reconciler.subscribe_health();
    let forward = async {
        loop {
            tokio::select! {
                changed = sets.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let set: Vec<SocketAddr> = sets.borrow_and_update().iter().copied().collect();
                    if set.is_empty() {
                        continue;
                    }
                    updates.fetch_add(1, Ordering::Relaxed);
                    info!(component = "proxy", backends = ?set, "backend set updated");
                    backends.set(set);
                }
                changed = health.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    health_tx.send_replace(health.borrow_and_update().clone());
                    watch_errors.store(reconciler.watch_errors(), Ordering::Relaxed);
                }
            }
        }
    };
    tokio::select! {
        () = reconciler.run(cancel.clone()) => {}
        () = forward => {}
    }
    health_tx.send_replace(HealthSnapshot::new());
}

/// What `run` needs besides the configuration.
pub struct RunOptions {
    /// Published whenever the report changes (the admin endpoint reads it).
    pub report: watch::Sender<StatusReport>,
}

/// Runs the agent until SIGTERM or SIGINT, then stops in order. `Ok` means
/// a clean stop (every rule and VIP removed).
pub async fn run(config: Config, options: RunOptions) -> Result<(), RunError> {
    use tokio::signal::unix::{SignalKind, signal};

    let started = Instant::now();
    if !config.enabled {
        return Err(RunError::Disabled);
    }
    if !config.virtual_servers.is_empty() {
        return Err(RunError::VirtualServers);
    }
    if config.vrrp_instances.is_empty() {
        return Err(RunError::NoInstances);
    }
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;

    let settings = &config.cplb;
    let tracking = settings.health.enabled && !config.disable_load_balancer;
    let policy = HealthPolicy {
        base: settings.priority,
        degraded: settings.health.degraded_priority,
        fall: settings.health.fall,
        rise: settings.health.rise,
    };
    let mut tracker = if tracking {
        Some(HealthTracker::new(policy)?)
    } else {
        None
    };
    let priority = tracker
        .as_ref()
        .map_or(settings.priority, HealthTracker::priority);
    let instances = instance_configs(&config, priority).await?;
    let versions: Vec<u8> = instances
        .iter()
        .map(|i| match i.router.version {
            Version::V2 => 2,
            Version::V3 => 3,
        })
        .collect();
    let vips: Vec<Vec<String>> = config
        .vrrp_instances
        .iter()
        .map(|i| i.virtual_ips.iter().map(ToString::to_string).collect())
        .collect();

    let mut lb = if config.disable_load_balancer {
        info!(
            component = "agent",
            "disableLoadBalancer: VRRP only, no proxy, reconciler or rules"
        );
        None
    } else {
        Some(LoadBalancer::start(&config).await?)
    };

    let (status_tx, mut status_rx) = watch::channel(Vec::<InstanceStatus>::new());
    let (control_tx, control_rx) = mpsc::channel(8);
    let vrrp_cancel = CancellationToken::new();
    let mut vrrp = tokio::spawn(driver::run_controlled(
        instances,
        vrrp_cancel.clone(),
        status_tx,
        control_rx,
    ));
    // The driver publishes once it has opened its sockets and started.
    let started_vrrp = tokio::select! {
        changed = status_rx.changed() => changed.is_ok(),
        result = &mut vrrp => {
            let error = match result {
                Ok(Err(e)) => RunError::Vrrp(e),
                _ => RunError::Crashed("VRRP driver"),
            };
            if let Some(mut lb) = lb.take() {
                lb.stop_reconciler().await;
                lb.stop().await;
            }
            return Err(error);
        }
    };
    if !started_vrrp {
        return Err(RunError::Crashed("VRRP driver"));
    }
    info!(
        component = "agent",
        instances = config.vrrp_instances.len(),
        priority,
        "started"
    );
    notify(&[sd_notify::NotifyState::Ready]);

    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut last_watchdog = Instant::now();
    let mut health_reason = if tracking {
        "starting: must be healthy for the rise time first".to_owned()
    } else {
        "health tracking off".to_owned()
    };
    let mut ticks: u32 = 0;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failure = None;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!(component = "agent", signal = "SIGTERM", "stopping"); break; }
            _ = sigint.recv() => { info!(component = "agent", signal = "SIGINT", "stopping"); break; }
            result = &mut vrrp => {
                error!(component = "agent", ?result, "VRRP driver ended unexpectedly");
                failure = Some(RunError::Crashed("VRRP driver"));
                break;
            }
            _ = ticker.tick() => {}
        }
        ticks = ticks.wrapping_add(1);
        let now = Instant::now();
        if let (Some(tracker), Some(lb)) = (tracker.as_mut(), lb.as_ref()) {
            let (healthy, reason) = lb.health();
            let change = tracker
                .observe(now, healthy, &reason)
                .or_else(|| tracker.handle_timeout(now));
            if let Some(change) = change {
                match change.health {
                    Health::Healthy => {
                        info!(component = "agent", priority = change.priority, reason = %change.reason, "node healthy: base priority")
                    }
                    Health::Unhealthy => {
                        warn!(component = "agent", priority = change.priority, reason = %change.reason, "node unhealthy: degraded priority, a healthy node takes the VIP")
                    }
                }
                health_reason = change.reason.clone();
                if control_tx
                    .send(Control::SetPriority {
                        vrid: None,
                        priority: change.priority,
                    })
                    .await
                    .is_err()
                {
                    warn!(
                        component = "agent",
                        "VRRP driver gone; priority not changed"
                    );
                }
            } else if tracker.health() == Health::Healthy && healthy {
                health_reason = reason;
            }
        }
        if let Some(lb) = lb.as_mut()
            && ticks.is_multiple_of(RULE_CHECK_EVERY)
        {
            lb.check_rules();
        }
        if let Some(interval) = watchdog
            && last_watchdog.elapsed() >= interval
        {
            notify(&[sd_notify::NotifyState::Watchdog]);
            last_watchdog = Instant::now();
        }
        let report = build_report(
            started,
            &status_rx.borrow(),
            &versions,
            &vips,
            tracker.as_ref(),
            &policy,
            &health_reason,
            lb.as_ref(),
        );
        options.report.send_replace(report);
    }

    // Stop in order.
    notify(&[sd_notify::NotifyState::Stopping]);
    options.report.send_modify(|r| {
        r.stopping = true;
        r.ready = false;
    });
    if let Some(lb) = lb.as_mut() {
        lb.stop_reconciler().await;
    }
    let was_master = status_rx
        .borrow()
        .iter()
        .any(|s| s.state == cplb_vrrp::fsm::State::Master);
    vrrp_cancel.cancel();
    if !vrrp.is_finished() {
        match vrrp.await {
            Ok(Ok(())) => info!(component = "vrrp", "VRRP stopped: VIPs released"),
            Ok(Err(e)) => warn!(component = "vrrp", error = %e, "VRRP driver error"),
            Err(e) => warn!(component = "vrrp", error = %e, "VRRP task failed"),
        }
    }
    if was_master && lb.is_some() {
        // Clients keep sending to this node until the new Master's
        // gratuitous ARP/NA reaches them (Skew_Time after our priority-0
        // advert, RFC 3768 §6.4.2). The REDIRECT rule still catches
        // VIP:apiPort here without the VIP on the interface, so keep the
        // proxy accepting until then, as k0s's proxy (which outlives
        // keepalived) does.
        let grace = handoff_grace(&config);
        info!(
            component = "agent",
            ?grace,
            "VIP released; the proxy keeps serving while another controller takes over"
        );
        tokio::select! {
            () = tokio::time::sleep(grace) => {}
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    }
    let mut leftovers = Vec::new();
    if let Some(lb) = lb {
        leftovers = lb.stop().await;
    }
    if let Some(failure) = failure {
        return Err(failure);
    }
    if !leftovers.is_empty() {
        return Err(RunError::Teardown(leftovers.join("; ")));
    }
    info!(component = "agent", "stopped cleanly");
    Ok(())
}

/// How long a released Master keeps its proxy open: the longest advert
/// interval (a bound on Skew_Time) plus time for the new Master's
/// announcements to reach the clients.
fn handoff_grace(config: &Config) -> Duration {
    let interval = config
        .vrrp_instances
        .iter()
        .map(|i| u64::from(i.advert_interval_seconds))
        .max()
        .unwrap_or(1);
    Duration::from_secs(interval) + Duration::from_millis(500)
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    started: Instant,
    status: &[InstanceStatus],
    versions: &[u8],
    vips: &[Vec<String>],
    tracker: Option<&HealthTracker>,
    policy: &HealthPolicy,
    health_reason: &str,
    lb: Option<&LoadBalancer>,
) -> StatusReport {
    let instances = status
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut dropped: Vec<Counted> = s
                .wire_drops
                .iter()
                .chain(s.rejects.iter())
                .map(|(reason, count)| Counted {
                    reason: (*reason).to_owned(),
                    count: *count,
                })
                .collect();
            dropped.sort_by(|a, b| a.reason.cmp(&b.reason));
            InstanceReport {
                vrid: s.vrid,
                interface: s.interface.clone(),
                version: versions.get(i).copied().unwrap_or(2),
                state: s.state.as_str().to_owned(),
                priority: s.priority,
                master: s.master,
                vips: vips.get(i).cloned().unwrap_or_default(),
                transitions: s.transitions,
                adverts_sent: s.adverts_sent,
                adverts_received: s.adverts_received,
                dropped,
            }
        })
        .collect();
    let health = NodeHealthReport {
        tracking: tracker.is_some(),
        state: match tracker.map(HealthTracker::health) {
            Some(Health::Unhealthy) => "degraded".to_owned(),
            _ => "healthy".to_owned(),
        },
        reason: health_reason.to_owned(),
        base_priority: policy.base,
        degraded_priority: policy.degraded,
    };
    let (proxy, reconciler, netfilter) = match lb.map(LoadBalancer::report) {
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
        health,
        proxy,
        reconciler,
        netfilter,
    }
}
