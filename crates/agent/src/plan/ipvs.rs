//! IPVS mode (k0s's `virtualServers`): what the agent runs instead of the
//! proxy and the REDIRECT rules, resolved once from the configuration.
//!
//! k0s's rendering (§2.3 of the reference): for each `virtualServers[]`
//! entry, a TCP service `ipAddress:apiPort` with `lbAlgo`, `lbKind` and
//! `persistence_timeout` (always present, 360 s by default), and one real
//! server `<apiserver>:apiPort` with weight 1 per apiserver the reconciler
//! lists. Only the VIP holder has the services (k0s's routing-loop fix,
//! §2.4, per VIP here instead of only for one VRRP instance).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cplb_ipvs::{Destination, ForwardMethod, Service, ServiceKey, VirtualService};
use cplb_reconciler::ReconcilerConfig;

use crate::config::{self, Config};

/// Real servers at or above this weight take new connections (k0s: 1).
pub const REAL_SERVER_WEIGHT: u32 = 1;
/// The fastest periodic resync, whatever `delayLoop` says.
const MIN_RESYNC: Duration = Duration::from_secs(1);
/// The slowest periodic resync: a service someone deleted by hand comes
/// back within this, also with a long `delayLoop`.
const MAX_RESYNC: Duration = Duration::from_secs(30);

/// IPVS mode, resolved.
#[derive(Debug, Clone)]
pub struct IpvsPlan {
    /// One service per `virtualServers[]` entry, in configuration order.
    pub services: Vec<IpvsService>,
    /// `spec.api.port`: the services' port and the real servers'.
    pub api_port: u16,
    /// The reconciler: its healthy apiservers are the real servers.
    pub reconciler: ReconcilerConfig,
    /// Every VIP, once: what `dummyvip0` holds on every controller.
    pub vips: Vec<IpAddr>,
    /// The VRRP instances' interfaces, once each: `arp_announce=2` there.
    pub interfaces: Vec<String>,
    /// The interface the connection-sync daemon runs on (the first
    /// instance's).
    pub sync_interface: String,
    /// The sync daemon's id (the first instance's VRID), so two clusters
    /// on one LAN do not take each other's connections.
    pub sync_id: u32,
    /// How often the services are reconciled even without an event, and
    /// how long a drained real server stays before it is removed: half the
    /// shortest `delayLoop` (1 to 30 s), so a failed real server is gone
    /// within `delayLoop`.
    pub resync: Duration,
    /// How long a node that lost a VIP keeps its services (clients whose
    /// ARP cache still points at it keep their connections meanwhile).
    pub handoff_grace: Duration,
}

/// One `virtualServers[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsService {
    /// The VIP (`ipAddress`).
    pub vip: IpAddr,
    /// `lbAlgo`: the IPVS scheduler.
    pub scheduler: String,
    /// `lbKind`.
    pub forward: ForwardMethod,
    /// `persistenceTimeoutSeconds`.
    pub persistence: u32,
    /// `delayLoop`.
    pub delay_loop: Duration,
}

/// `lbKind` as k0s spells it.
pub fn forward_method(lb_kind: &str) -> ForwardMethod {
    match lb_kind {
        "NAT" => ForwardMethod::Masquerade,
        "TUN" => ForwardMethod::Tunnel,
        // DR is k0s's default; validation allows only these three.
        _ => ForwardMethod::DirectRoute,
    }
}

/// The name `cplb config` and `cplb status` print for a forwarding method.
pub fn forward_name(forward: ForwardMethod) -> &'static str {
    match forward {
        ForwardMethod::DirectRoute => "DR",
        ForwardMethod::Masquerade => "NAT",
        ForwardMethod::Tunnel => "TUN",
        ForwardMethod::Local => "local",
    }
}

/// The plan of IPVS mode for `config` (its VRRP instances resolved).
pub(super) fn ipvs_plan(
    config: &Config,
    instances: &[super::InstancePlan],
    handoff_grace: Duration,
) -> IpvsPlan {
    let services: Vec<IpvsService> = config
        .virtual_servers
        .iter()
        .map(|vs| IpvsService {
            vip: vs.ip_address,
            scheduler: vs.lb_algo.clone(),
            forward: forward_method(&vs.lb_kind),
            persistence: vs.persistence_timeout_seconds,
            delay_loop: vs.delay_loop,
        })
        .collect();
    let shortest = services
        .iter()
        .map(|s| s.delay_loop)
        .min()
        .unwrap_or(Duration::from_secs(60));
    let mut interfaces: Vec<String> = Vec::new();
    for i in instances {
        if !interfaces.contains(&i.vrrp.interface) {
            interfaces.push(i.vrrp.interface.clone());
        }
    }
    let reconciler = ReconcilerConfig {
        kubeconfig: config.cplb.kubeconfig.clone().into(),
        api_port: config.api_port,
        // A VIP is never a real server: the holder would forward to itself
        // through the service it is.
        excluded_addresses: super::vips(config),
        ..ReconcilerConfig::default()
    };
    IpvsPlan {
        services,
        api_port: config.api_port,
        reconciler,
        vips: super::vips(config).into_iter().collect(),
        sync_interface: interfaces.first().cloned().unwrap_or_default(),
        interfaces,
        sync_id: instances
            .first()
            .map_or(0, |i| u32::from(i.vrrp.router.vrid)),
        resync: (shortest / 2).clamp(MIN_RESYNC, MAX_RESYNC),
        handoff_grace,
    }
}

impl IpvsPlan {
    /// Every service this agent manages, held or not: the reconcile's
    /// `owned` set (a service of another tool is never touched).
    pub fn owned(&self) -> Vec<ServiceKey> {
        let mut keys: Vec<ServiceKey> = self
            .services
            .iter()
            .map(|s| ServiceKey::tcp(s.vip, self.api_port))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// What the kernel should have on a node holding `held` whose
    /// reconciler publishes `backends` (pure). A VIP not held has no
    /// service (master-only services); neither has one without any real
    /// server yet (k0s renders nothing then, and the holder's own
    /// apiserver answers on the VIP meanwhile). Real servers are those of
    /// the VIP's family.
    pub fn desired(
        &self,
        held: &BTreeSet<IpAddr>,
        backends: &BTreeSet<SocketAddr>,
    ) -> Vec<VirtualService> {
        let mut out: Vec<VirtualService> = Vec::new();
        for s in &self.services {
            if !held.contains(&s.vip) || out.iter().any(|v| v.service.key.addr == s.vip) {
                continue;
            }
            let destinations: Vec<Destination> = backends
                .iter()
                .filter(|b| b.is_ipv4() == s.vip.is_ipv4())
                .map(|b| Destination::new(b.ip(), self.api_port, s.forward, REAL_SERVER_WEIGHT))
                .collect();
            if destinations.is_empty() {
                continue;
            }
            out.push(VirtualService {
                service: Service::tcp(s.vip, self.api_port, &s.scheduler, Some(s.persistence)),
                destinations,
            });
        }
        out
    }

    /// What runs, as `cplb config` comment lines.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "#   IPVS mode (virtualServers): no proxy, no REDIRECT rule; every VIP on dummyvip0, ARP for it only from its holder"
        );
        for s in &self.services {
            let _ = writeln!(
                out,
                "#   IPVS service TCP {} on the holder only: {}, {}, persistence {}s, real servers: the healthy apiservers on :{} (weight {REAL_SERVER_WEIGHT}), a failed one removed within {}",
                SocketAddr::new(s.vip, self.api_port),
                s.scheduler,
                forward_name(s.forward),
                s.persistence,
                self.api_port,
                config::format_go_duration(s.delay_loop),
            );
        }
        let _ = writeln!(
            out,
            "#   IPVS connection sync on {} (syncid {}): master on the holder, backup on the others",
            self.sync_interface, self.sync_id
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(services: Vec<IpvsService>) -> IpvsPlan {
        IpvsPlan {
            services,
            api_port: 6443,
            reconciler: ReconcilerConfig::default(),
            vips: vec![ip("192.0.2.100"), ip("2001:db8::100")],
            interfaces: vec!["eth0".into()],
            sync_interface: "eth0".into(),
            sync_id: 51,
            resync: Duration::from_secs(30),
            handoff_grace: Duration::from_secs(1),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn service(vip: &str) -> IpvsService {
        IpvsService {
            vip: ip(vip),
            scheduler: "rr".into(),
            forward: ForwardMethod::DirectRoute,
            persistence: 360,
            delay_loop: Duration::from_secs(60),
        }
    }

    fn backends(list: &[&str]) -> BTreeSet<SocketAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn only_held_vips_with_real_servers_get_a_service() {
        let p = plan(vec![service("192.0.2.100"), service("2001:db8::100")]);
        let all = backends(&["192.0.2.11:6443", "192.0.2.12:6443", "[2001:db8::11]:6443"]);
        assert!(p.desired(&BTreeSet::new(), &all).is_empty());
        let held = BTreeSet::from([ip("192.0.2.100")]);
        let want = p.desired(&held, &all);
        assert_eq!(want.len(), 1);
        assert_eq!(
            want[0].service,
            Service::tcp(ip("192.0.2.100"), 6443, "rr", Some(360))
        );
        // The VIP's family only, at apiPort, weight 1, DR.
        assert_eq!(
            want[0].destinations,
            [
                Destination::new(ip("192.0.2.11"), 6443, ForwardMethod::DirectRoute, 1),
                Destination::new(ip("192.0.2.12"), 6443, ForwardMethod::DirectRoute, 1),
            ]
        );
        // No real server known yet: no service (the holder's own apiserver
        // answers on the VIP).
        assert!(p.desired(&held, &BTreeSet::new()).is_empty());
        assert_eq!(
            p.owned(),
            [
                ServiceKey::tcp(ip("192.0.2.100"), 6443),
                ServiceKey::tcp(ip("2001:db8::100"), 6443)
            ]
        );
    }

    #[test]
    fn lb_kind_maps_to_the_forwarding_method() {
        assert_eq!(forward_method("DR"), ForwardMethod::DirectRoute);
        assert_eq!(forward_method("NAT"), ForwardMethod::Masquerade);
        assert_eq!(forward_method("TUN"), ForwardMethod::Tunnel);
        for f in [
            ForwardMethod::DirectRoute,
            ForwardMethod::Masquerade,
            ForwardMethod::Tunnel,
        ] {
            assert_eq!(forward_method(forward_name(f)), f);
        }
    }
}
