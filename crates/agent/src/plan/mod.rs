//! The plan: the configuration resolved once, against the host, into what
//! every part of the agent runs with (the VRRP instances, the proxy, the
//! reconciler, the REDIRECT rules, the health policy, the handoff grace).
//!
//! `cplb run`, `release`, `validate` and `config` all go through
//! [`check`], so `validate` refuses exactly what `run` refuses, with the
//! same message. Each refusal is a [`Problem`] with its position in the
//! file; those that depend on the host (an interface that does not exist,
//! no address yet, a VIP that is already the node's own address) say so in
//! their [`Severity`], so a file checked for another machine (`--host
//! none`) skips them, and a later version can wait for an interface instead
//! of refusing.

mod host;
mod ipvs;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use cplb_proxy::ProxyConfig;
use cplb_reconciler::ReconcilerConfig;
use cplb_vrrp::fsm::Config as RouterConfig;
use cplb_vrrp::io::driver::{InstanceConfig, InstanceConfigError, VipLease};
use cplb_vrrp::io::netlink::Vip;
use cplb_vrrp::wire::{Auth, Centis, Version};
use ipnet::IpNet;

pub use host::{HostAddress, HostFacts, HostInterface};
use ipvs::ipvs_plan;
pub use ipvs::{IpvsPlan, IpvsService, REAL_SERVER_WEIGHT, forward_method, forward_name};

use crate::config::{self, Config, ConfigError, Netfilter, Problem, Severity};
use crate::health::{HealthPolicy, HealthTracker};
use crate::netfilter::Redirect;

const CPLB_PATH: &str = "spec.network.controlPlaneLoadBalancing";
const KEEPALIVED_PATH: &str = "spec.network.controlPlaneLoadBalancing.keepalived";

/// Which machine a file is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostChoice {
    /// This machine: interfaces and addresses are looked up here (what
    /// `run` does).
    #[default]
    This,
    /// None: a file for another machine. Nothing host-dependent is
    /// resolved or checked.
    None,
}

/// Everything the agent runs, resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The VRRP instances, in configuration order.
    pub instances: Vec<InstancePlan>,
    /// The proxy, reconciler and rules; `None` with `disableLoadBalancer`
    /// and in IPVS mode.
    pub load_balancer: Option<LoadBalancerPlan>,
    /// IPVS mode (`virtualServers`): `dummyvip0`, the kernel's services
    /// and the reconciler feeding them, instead of the proxy and rules.
    pub ipvs: Option<IpvsPlan>,
    /// Health-aware mastership; `None` when off (or without a load
    /// balancer, whose health it follows).
    pub health: Option<HealthPolicy>,
    /// The priorities, also when tracking is off (for the report).
    pub policy: HealthPolicy,
    /// The priority the instances start at: the degraded one while health
    /// tracking has not seen the node serve yet.
    pub initial_priority: u8,
    /// How long a released Master keeps its proxy open.
    pub handoff_grace: Duration,
    /// Where the admin endpoint listens.
    pub admin_address: SocketAddr,
}

/// One VRRP instance.
#[derive(Debug, Clone)]
pub struct InstancePlan {
    /// What the VRRP driver runs.
    pub vrrp: InstanceConfig,
    /// The VIPs with their prefixes.
    pub vips: Vec<IpNet>,
    /// Why it runs VRRPv3, when it does.
    pub version_reason: Option<&'static str>,
}

impl InstancePlan {
    /// 2 or 3.
    pub fn version(&self) -> u8 {
        match self.vrrp.router.version {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

/// The load-balancing half.
#[derive(Debug, Clone)]
pub struct LoadBalancerPlan {
    /// The :6444 proxy.
    pub proxy: ProxyConfig,
    /// The reconciler feeding it.
    pub reconciler: ReconcilerConfig,
    /// One REDIRECT per VIP.
    pub redirects: Vec<Redirect>,
    /// Which netfilter front end installs them.
    pub netfilter: Netfilter,
    /// Whether the nat OUTPUT rule is installed too.
    pub output_rule: bool,
}

/// The outcome of [`check`]: the configuration and the plan when they
/// could be made, and every problem (errors and warnings) in file order.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// The validated configuration (also when it cannot run).
    pub config: Option<Config>,
    /// The plan; `None` when there is an error, or no host to resolve on.
    pub plan: Option<Plan>,
    /// Everything found, errors first in the order they were found.
    pub problems: Vec<Problem>,
}

impl Checked {
    /// Whether `run` refuses this file.
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(Problem::is_error)
    }
}

/// Checks a configuration document against `host`: the file's own rules,
/// then what running it needs (see the module doc).
pub async fn check(text: &str, host: HostChoice) -> Checked {
    let parsed = match host {
        HostChoice::This => config::parse(text, &config::SystemHost),
        HostChoice::None => config::parse(text, &config::NoHost),
    };
    let config = match parsed {
        Ok(config) => config,
        Err(ConfigError::Invalid(problems)) => {
            return Checked {
                problems,
                ..Checked::default()
            };
        }
        Err(ConfigError::Syntax(problem)) => {
            return Checked {
                problems: vec![problem],
                ..Checked::default()
            };
        }
        Err(e @ ConfigError::Read { .. }) => {
            return Checked {
                problems: vec![Problem::error("", None, e.to_string())],
                ..Checked::default()
            };
        }
    };
    let facts = match host {
        HostChoice::None => None,
        HostChoice::This => match HostFacts::gather(&config).await {
            Ok(facts) => Some(facts),
            Err(e) => {
                let mut problems = config.warnings.clone();
                problems.push(
                    Problem::error("", None, format!("cannot inspect this host: {e}"))
                        .with_severity(Severity::HostNotReady),
                );
                return Checked {
                    config: Some(config),
                    plan: None,
                    problems,
                };
            }
        },
    };
    let (plan, mut problems) = resolve(&config, facts.as_ref());
    if host == HostChoice::This
        && plan.as_ref().is_some_and(|p| p.ipvs.is_some())
        && let Err(e) = cplb_ipvs::Ipvs::connect().await
    {
        problems.push(
            Problem::error(
                format!("{KEEPALIVED_PATH}.virtualServers"),
                config
                    .positions
                    .get(&format!("{KEEPALIVED_PATH}.virtualServers")),
                format!(
                    "IPVS mode needs the kernel's IP Virtual Server on this host (modprobe ip_vs), or remove virtualServers to balance through the userspace proxy: {e}"
                ),
            )
            .with_severity(Severity::HostError),
        );
    }
    let mut all = config.warnings.clone();
    all.append(&mut problems);
    let plan = plan.filter(|_| !all.iter().any(Problem::is_error));
    Checked {
        config: Some(config),
        plan,
        problems: all,
    }
}

/// Resolves `config` against `host` (`None`: no host; the plan is then
/// not made, but everything that needs no host is checked).
pub fn resolve(config: &Config, host: Option<&HostFacts>) -> (Option<Plan>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut problem = |path: String, severity: Severity, message: String| {
        let position = config.positions.get(&path);
        problems.push(Problem::error(path, position, message).with_severity(severity));
    };
    if !config.enabled {
        problem(
            format!("{CPLB_PATH}.enabled"),
            Severity::Error,
            "is false, so cplb has nothing to run (set enabled: true)".to_owned(),
        );
    }
    if !config.virtual_servers.is_empty() && config.disable_load_balancer {
        // k0s: no reconciler, so no real servers and an empty IPVS file.
        problem(
            format!("{KEEPALIVED_PATH}.virtualServers"),
            Severity::Warning,
            "ignored: disableLoadBalancer turns the load balancer off (VRRP only, no IPVS service, as k0s renders none without the reconciler)".to_owned(),
        );
    }
    if config.vrrp_instances.is_empty() {
        problem(
            format!("{KEEPALIVED_PATH}.vrrpInstances"),
            Severity::Error,
            "no VRRP instance: no virtual IP to run (k0s skips keepalived in this case too)"
                .to_owned(),
        );
    }

    // IPVS mode puts every VIP on its own dummy link: not the node's.
    let ipvs_mode = !config.virtual_servers.is_empty() && !config.disable_load_balancer;
    let settings = &config.cplb;
    let policy = HealthPolicy {
        base: settings.priority,
        degraded: settings.health.degraded_priority,
        fall: settings.health.fall,
        rise: settings.health.rise,
    };
    let tracking = settings.health.enabled && !config.disable_load_balancer;
    let mut initial_priority = settings.priority;
    if tracking {
        match HealthTracker::new(policy) {
            Ok(tracker) => initial_priority = tracker.priority(),
            Err(e) => problem("cplb.health".to_owned(), Severity::Error, e.to_string()),
        }
    }

    let mut instances = Vec::new();
    for (index, instance) in config.vrrp_instances.iter().enumerate() {
        // Indices are those of the valid instances, which are all of them
        // once the configuration has loaded.
        let path = format!("{KEEPALIVED_PATH}.vrrpInstances[{index}]");
        let vips: Vec<IpAddr> = instance.virtual_ips.iter().map(IpNet::addr).collect();
        let ipv6 = vips.first().is_some_and(IpAddr::is_ipv6);
        let (version, version_reason) = version(instance, settings.vrrp_version);
        let interface_path = format!("{path}.interface");
        let primary_ip = match host {
            None => None,
            Some(facts) => {
                let found = facts.interfaces.get(&instance.interface);
                match found {
                    None | Some(Err(_)) => {
                        let why = match found {
                            Some(Err(e)) if !e.contains("not found") => format!(": {e}"),
                            _ => String::new(),
                        };
                        problem(
                            interface_path.clone(),
                            Severity::HostNotReady,
                            format!(
                                "interface {} not found on this host{why}",
                                instance.interface
                            ),
                        );
                        None
                    }
                    Some(Ok(interface)) => {
                        let own = own_address_checks(
                            &mut problem,
                            &path,
                            instance,
                            interface,
                            facts,
                            ipvs_mode,
                        );
                        match advert_source(instance.unicast_source_ip, ipv6, interface) {
                            Ok(ip) => Some(ip),
                            // The VIP taken for the node's address is the
                            // problem already reported.
                            Err(_) if own => None,
                            Err(why) => {
                                problem(
                                    interface_path.clone(),
                                    Severity::HostNotReady,
                                    format!("interface {} {why}", instance.interface),
                                );
                                None
                            }
                        }
                    }
                }
            }
        };
        // The state machine's own invariants, checked with a stand-in
        // source where the host was not looked at.
        let source = primary_ip.unwrap_or(if ipv6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        });
        let mut router = RouterConfig::new(version, instance.virtual_router_id, source, vips);
        router.priority = initial_priority;
        router.advert_interval = centis(config.advert_interval(instance));
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
        // Everything the driver would refuse at start, checked by the
        // driver's own rules, so `validate` refuses it too.
        match vrrp.validate() {
            Ok(()) => {}
            // The interface is looked up on the host (a name that is no
            // interface is "not found" above) or, with no host, left as
            // written (a MAC, or empty) with a warning of its own.
            Err(InstanceConfigError::InterfaceName(_)) => {}
            Err(e) => problem(
                path.clone(),
                Severity::Error,
                format!("VRRP cannot run this instance: {e}"),
            ),
        }
        if primary_ip.is_some() {
            instances.push(InstancePlan {
                vrrp,
                vips: instance.virtual_ips.clone(),
                version_reason,
            });
        }
    }

    if host.is_none() || problems.iter().any(Problem::is_error) {
        return (None, problems);
    }
    let load_balancer =
        (!config.disable_load_balancer && !ipvs_mode).then(|| load_balancer(config));
    let ipvs = (!config.disable_load_balancer && ipvs_mode)
        .then(|| ipvs_plan(config, &instances, handoff_grace(config)));
    let plan = Plan {
        instances,
        load_balancer,
        ipvs,
        health: tracking.then_some(policy),
        policy,
        initial_priority,
        handoff_grace: handoff_grace(config),
        admin_address: settings.admin_address,
    };
    (Some(plan), problems)
}

/// The VRRP version an instance runs, and why when it is 3.
fn version(instance: &config::VrrpInstance, vrrp_version: u8) -> (Version, Option<&'static str>) {
    if instance
        .virtual_ips
        .first()
        .is_some_and(|n| n.addr().is_ipv6())
    {
        (
            Version::V3,
            Some("IPv6 VIPs always run VRRPv3, whatever cplb.vrrpVersion says"),
        )
    } else if vrrp_version == 3 {
        (Version::V3, Some("cplb.vrrpVersion: 3"))
    } else {
        (Version::V2, None)
    }
}

/// The VRRP version of each instance, as `#` comments (for `cplb config`
/// when no plan could be made).
pub fn describe_versions(config: &Config) -> String {
    let mut out = String::new();
    for (i, instance) in config.vrrp_instances.iter().enumerate() {
        let (version, why) = version(instance, config.cplb.vrrp_version);
        let n = if version == Version::V3 { 3 } else { 2 };
        let why = why.map(|w| format!(" ({w})")).unwrap_or_default();
        let every = config::format_go_duration(config.advert_interval(instance));
        out.push_str(&format!(
            "# vrrpInstances[{i}]: VRRPv{n}{why}, adverts every {every}\n"
        ));
    }
    out
}

/// A VIP must not be one of the node's own addresses: cplb removes its VIPs
/// when it hands them over, and would take the node off the network. An
/// address cplb added itself has a finite lease (left by a crashed run) and
/// is no obstacle.
fn own_address_checks(
    problem: &mut impl FnMut(String, Severity, String),
    path: &str,
    instance: &config::VrrpInstance,
    interface: &HostInterface,
    facts: &HostFacts,
    ipvs_mode: bool,
) -> bool {
    let mut found = false;
    for (j, vip) in instance.virtual_ips.iter().enumerate() {
        let vip_path = format!("{path}.virtualIPs[{j}]");
        let addr = vip.addr();
        let permanent_here = interface
            .addresses
            .iter()
            .any(|a| a.addr == addr && a.permanent);
        let elsewhere = facts.addresses.iter().find(|(name, a)| {
            *a == addr
                    && *name != instance.interface
                    // IPVS mode's own link (or k0s's, which it replaces).
                    && !(ipvs_mode && name == cplb_ipvs::DUMMY_LINK)
        });
        found |= permanent_here || elsewhere.is_some();
        if permanent_here {
            problem(
                vip_path,
                Severity::HostError,
                format!(
                    "VirtualIP {addr} is already a permanent address of {} on this host: cplb would remove it when handing the VIP over; the VIP must be an address no node has",
                    instance.interface
                ),
            );
        } else if let Some((name, _)) = elsewhere {
            problem(
                vip_path,
                Severity::HostError,
                format!(
                    "VirtualIP {addr} is already an address of {name} on this host; the VIP must be an address no node has"
                ),
            );
        }
    }
    found
}

/// Where adverts come from: `unicastSourceIP`, else the address the VRRP
/// driver picks on the interface (its primary IPv4 address, or its
/// link-local IPv6 address for an IPv6 instance, RFC 5798 §5.1.2.1).
fn advert_source(
    unicast_source: Option<IpAddr>,
    ipv6: bool,
    interface: &HostInterface,
) -> Result<IpAddr, &'static str> {
    if let Some(ip) = unicast_source {
        return Ok(ip);
    }
    interface.advert_source(ipv6).ok_or(if ipv6 {
        "has no link-local IPv6 address to send adverts from"
    } else {
        "has no IPv4 address to send adverts from"
    })
}

fn load_balancer(config: &Config) -> LoadBalancerPlan {
    let mut proxy = ProxyConfig::with_local_apiserver(config.api_port);
    // After the VIP has moved, connections through it are dead anyway;
    // only local clients (OUTPUT rule) gain from a long drain.
    proxy.drain_timeout = Duration::from_secs(5);
    proxy.listen = SocketAddr::new(
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        config.user_space_proxy_bind_port,
    );
    let reconciler = ReconcilerConfig {
        kubeconfig: config.cplb.kubeconfig.clone().into(),
        api_port: config.api_port,
        // A VIP listed as an endpoint (k0s publishes it with
        // externalAddress) must never become a backend: with the OUTPUT
        // rule the proxy would connect to itself (issue 14 F6).
        excluded_addresses: vips(config),
        ..ReconcilerConfig::default()
    };
    LoadBalancerPlan {
        proxy,
        reconciler,
        redirects: redirects(config),
        netfilter: config.cplb.netfilter,
        output_rule: config.cplb.output_rule,
    }
}

/// Every configured VIP, once.
fn vips(config: &Config) -> BTreeSet<IpAddr> {
    config
        .vrrp_instances
        .iter()
        .flat_map(|i| i.virtual_ips.iter().map(IpNet::addr))
        .collect()
}

/// The REDIRECT rules of `config`: one per VIP.
fn redirects(config: &Config) -> Vec<Redirect> {
    vips(config)
        .into_iter()
        .map(|vip| Redirect {
            vip,
            api_port: config.api_port,
            proxy_port: config.user_space_proxy_bind_port,
        })
        .collect()
}

/// How long a released Master keeps its proxy open: the longest advert
/// interval (a bound on Skew_Time) plus time for the new Master's
/// announcements to reach the clients. Never less than at k0s's 1 s:
/// clients can keep the old node's MAC for a while after the new Master's
/// gratuitous ARP (Linux ignores one for an entry updated less than
/// `locktime`, 1 s, ago, in some cases), and at 100 ms adverts a 0.6 s
/// grace let 3 of 5 SIGTERM runs of bench/failover lose a probe to the
/// old node's closed proxy, where 1.5 s lost none.
fn handoff_grace(config: &Config) -> Duration {
    let interval = config
        .vrrp_instances
        .iter()
        .map(|i| config.advert_interval(i))
        .max()
        .unwrap_or(Duration::from_secs(1));
    interval.max(Duration::from_secs(1)) + Duration::from_millis(500)
}

/// An advert interval in the wire's centiseconds (validation keeps it
/// within 1..=4095 cs for VRRPv3 and whole seconds for VRRPv2; anything
/// else is left to the state machine's own check to refuse).
fn centis(interval: Duration) -> Centis {
    Centis(u16::try_from(interval.as_millis() / 10).unwrap_or(u16::MAX))
}

impl Plan {
    /// What will run, as YAML comments for `cplb config`.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::from("# What runs on this host:\n");
        for (i, instance) in self.instances.iter().enumerate() {
            let router = &instance.vrrp.router;
            let why = instance
                .version_reason
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            let mode = if instance.vrrp.unicast_peers.is_empty() {
                "multicast".to_owned()
            } else {
                format!(
                    "unicast to {}",
                    instance
                        .vrrp
                        .unicast_peers
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let _ = writeln!(
                out,
                "#   vrrpInstances[{i}]: VRRPv{}{why}, VRID {} on {}, adverts every {} from {}, {mode}",
                instance.version(),
                router.vrid,
                instance.vrrp.interface,
                config::format_go_duration(Duration::from_millis(
                    u64::from(router.advert_interval.0) * 10
                )),
                router.primary_ip,
            );
        }
        match (&self.load_balancer, &self.ipvs) {
            (None, Some(ipvs)) => out.push_str(&ipvs.describe()),
            (None, None) => {
                out.push_str("#   load balancer: off (disableLoadBalancer), VIPs only\n")
            }
            (Some(lb), _) => {
                let _ = writeln!(
                    out,
                    "#   proxy on {}, {} REDIRECT rule(s) via {:?}{}",
                    lb.proxy.listen,
                    lb.redirects.len(),
                    lb.netfilter,
                    if lb.output_rule {
                        " (PREROUTING and OUTPUT)"
                    } else {
                        " (PREROUTING)"
                    }
                );
            }
        }
        match &self.health {
            Some(p) => {
                let _ = writeln!(
                    out,
                    "#   health-aware priority: starts at {}, {} once healthy for {}",
                    p.degraded,
                    p.base,
                    config::format_go_duration(p.rise)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "#   priority {} (health tracking off)",
                    self.policy.base
                );
            }
        }
        let _ = writeln!(out, "#   admin endpoint on {}", self.admin_address);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    struct Eth0;

    impl config::Host for Eth0 {
        fn default_interface(&self) -> Result<String, String> {
            Ok("eth0".to_owned())
        }
        fn interfaces(&self) -> Result<Vec<(String, [u8; 6])>, String> {
            Ok(vec![])
        }
    }

    fn config(vip: &str) -> Config {
        let doc = format!(
            "spec:\n  network:\n    controlPlaneLoadBalancing:\n      enabled: true\n      keepalived:\n        vrrpInstances:\n        - virtualIPs: [\"{vip}\"]\n          authPass: x\n          interface: eth0\n"
        );
        config::parse(&doc, &Eth0).unwrap()
    }

    fn address(addr: &str, lease: Option<Duration>) -> HostAddress {
        HostAddress {
            addr: addr.parse().unwrap(),
            secondary: false,
            permanent: lease.is_none(),
        }
    }

    fn host(addresses: Vec<HostAddress>) -> HostFacts {
        HostFacts {
            interfaces: BTreeMap::from([(
                "eth0".to_owned(),
                Ok(HostInterface {
                    index: 2,
                    addresses: addresses.clone(),
                    // What the driver's pick_advert_source finds there:
                    // the permanent address.
                    ipv4_advert_source: addresses
                        .iter()
                        .find(|a| a.permanent && a.addr.is_ipv4())
                        .map(|a| a.addr),
                    ipv6_advert_source: None,
                }),
            )]),
            addresses: addresses
                .iter()
                .map(|a| ("eth0".to_owned(), a.addr))
                .collect(),
        }
    }

    fn severities(problems: &[Problem]) -> Vec<Severity> {
        problems.iter().map(|p| p.severity).collect()
    }

    #[test]
    fn a_plan_holds_every_part_resolved_once() {
        let (plan, problems) = resolve(
            &config("192.0.2.100/24"),
            Some(&host(vec![address("192.0.2.11", None)])),
        );
        assert!(problems.is_empty(), "{problems:?}");
        let plan = plan.unwrap();
        assert_eq!(
            plan.instances[0].vrrp.router.primary_ip.to_string(),
            "192.0.2.11"
        );
        assert_eq!(plan.instances[0].version(), 2);
        // Health tracking starts degraded.
        assert_eq!(plan.initial_priority, 100);
        assert_eq!(plan.instances[0].vrrp.router.priority, 100);
        let lb = plan.load_balancer.unwrap();
        assert_eq!(lb.redirects.len(), 1);
        assert_eq!(lb.proxy.listen.port(), 6444);
        // The VIP never becomes a backend (issue 14 F6).
        assert_eq!(
            lb.reconciler.excluded_addresses,
            BTreeSet::from(["192.0.2.100".parse::<IpAddr>().unwrap()])
        );
        assert_eq!(plan.handoff_grace, Duration::from_millis(1500));
    }

    #[test]
    fn virtual_servers_select_ipvs_mode_instead_of_the_proxy() {
        let with_vs = |extra: &str| {
            let doc = format!(
                "spec:\n  network:\n    controlPlaneLoadBalancing:\n      enabled: true\n      keepalived:\n        vrrpInstances:\n        - virtualIPs: [\"192.0.2.100/24\"]\n          authPass: x\n          interface: eth0\n        virtualServers:\n        - ipAddress: 192.0.2.100\n          lbKind: NAT\n          delayLoop: 10s\n{extra}"
            );
            config::parse(&doc, &Eth0).unwrap()
        };
        // dummyvip0 (a crashed run's, or k0s's) holding the VIP is no
        // obstacle in IPVS mode: the agent replaces it.
        let mut facts = host(vec![address("192.0.2.11", None)]);
        facts.addresses.push((
            cplb_ipvs::DUMMY_LINK.to_owned(),
            "192.0.2.100".parse().unwrap(),
        ));
        let (plan, problems) = resolve(&with_vs(""), Some(&facts));
        assert!(problems.is_empty(), "{problems:?}");
        let plan = plan.unwrap();
        assert!(plan.load_balancer.is_none(), "no proxy, no REDIRECT");
        let ipvs = plan.ipvs.as_ref().unwrap();
        assert_eq!(
            ipvs.services[0].forward,
            cplb_ipvs::ForwardMethod::Masquerade
        );
        assert_eq!(ipvs.services[0].persistence, 360);
        assert_eq!(ipvs.resync, Duration::from_secs(5));
        assert_eq!((ipvs.sync_interface.as_str(), ipvs.sync_id), ("eth0", 51));
        let described = plan.describe();
        assert!(
            described.contains(
                "IPVS service TCP 192.0.2.100:6443 on the holder only: rr, NAT, persistence 360s"
            ),
            "{described}"
        );
        assert!(!described.contains("proxy on"), "{described}");
        // With disableLoadBalancer: VRRP only, and a warning.
        let (plan, problems) = resolve(
            &with_vs("        disableLoadBalancer: true\n"),
            Some(&host(vec![address("192.0.2.11", None)])),
        );
        assert_eq!(severities(&problems), [Severity::Warning]);
        let plan = plan.unwrap();
        assert!(plan.ipvs.is_none() && plan.load_balancer.is_none());
    }

    #[test]
    fn a_sub_second_advert_interval_reaches_the_router_and_the_handoff_grace() {
        let doc = "spec:\n  network:\n    controlPlaneLoadBalancing:\n      enabled: true\n      keepalived:\n        vrrpInstances:\n        - virtualIPs: [\"192.0.2.100/24\"]\n          authPass: x\n          interface: eth0\ncplb:\n  vrrpVersion: 3\n  advertInterval: 100ms\n";
        let config = config::parse(doc, &Eth0).unwrap();
        let (plan, problems) = resolve(&config, Some(&host(vec![address("192.0.2.11", None)])));
        assert!(problems.is_empty(), "{problems:?}");
        let plan = plan.unwrap();
        let router = &plan.instances[0].vrrp.router;
        assert_eq!(router.advert_interval, Centis(10));
        assert_eq!(plan.instances[0].version(), 3);
        // The VIP lease follows the interval (3 intervals, whole seconds).
        assert_eq!(
            plan.instances[0].vrrp.lifetime(),
            cplb_vrrp::io::netlink::VipLifetime::lease(Duration::from_secs(1))
        );
        // A released Master serves as long as at 1 s adverts: clients'
        // ARP entries, not the interval, bound the grace then.
        assert_eq!(plan.handoff_grace, Duration::from_millis(1500));
        assert!(
            plan.describe().contains("adverts every 100ms"),
            "{}",
            plan.describe()
        );
    }

    #[test]
    fn host_problems_are_told_apart_from_the_files() {
        // The VIP is the node's own, permanent address: wrong on this host
        // (and the driver's pick never takes a VIP as the advert source).
        let mut own = host(vec![address("192.0.2.11", None)]);
        if let Some(Ok(eth0)) = own.interfaces.get_mut("eth0") {
            eth0.ipv4_advert_source = None;
        }
        let (_, problems) = resolve(&config("192.0.2.11/24"), Some(&own));
        assert_eq!(severities(&problems), [Severity::HostError]);
        // A leased copy of the VIP is ours (a crashed run's): no obstacle.
        let (plan, problems) = resolve(
            &config("192.0.2.100/24"),
            Some(&host(vec![
                address("192.0.2.11", None),
                address("192.0.2.100", Some(Duration::from_secs(3))),
            ])),
        );
        assert!(plan.is_some() && problems.is_empty(), "{problems:?}");
        // No address yet, or no interface: not ready here.
        let (_, problems) = resolve(&config("192.0.2.100/24"), Some(&host(vec![])));
        assert_eq!(severities(&problems), [Severity::HostNotReady]);
        let (_, problems) = resolve(&config("192.0.2.100/24"), Some(&HostFacts::default()));
        assert_eq!(severities(&problems), [Severity::HostNotReady]);
        // Without a host nothing host-dependent is checked, and no plan made.
        let (plan, problems) = resolve(&config("192.0.2.11/24"), None);
        assert!(plan.is_none() && problems.is_empty(), "{problems:?}");
    }
}
