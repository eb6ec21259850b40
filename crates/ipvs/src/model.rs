//! The typed view the rest of cplb uses: services, real servers, sync
//! daemons, and the pure reconcile planner.

use std::net::IpAddr;

use crate::message::*;

/// Transport protocol of a virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn number(self) -> u16 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
            Protocol::Sctp => IPPROTO_SCTP,
        }
    }
    pub fn from_number(n: u16) -> Option<Self> {
        match n {
            IPPROTO_TCP => Some(Protocol::Tcp),
            IPPROTO_UDP => Some(Protocol::Udp),
            IPPROTO_SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// How the director forwards to a real server (`IP_VS_CONN_F_*`; k0s's
/// `lbKind`: DR, NAT, TUN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardMethod {
    /// NAT (`IP_VS_CONN_F_MASQ`).
    Masquerade,
    /// `IP_VS_CONN_F_LOCALNODE`.
    Local,
    /// IP-in-IP (`IP_VS_CONN_F_TUNNEL`).
    Tunnel,
    /// Direct routing (`IP_VS_CONN_F_DROUTE`), k0s's default.
    DirectRoute,
}

impl ForwardMethod {
    pub fn flag(self) -> u32 {
        match self {
            ForwardMethod::Masquerade => IP_VS_CONN_F_MASQ,
            ForwardMethod::Local => IP_VS_CONN_F_LOCALNODE,
            ForwardMethod::Tunnel => IP_VS_CONN_F_TUNNEL,
            ForwardMethod::DirectRoute => IP_VS_CONN_F_DROUTE,
        }
    }
    pub fn from_flag(f: u32) -> Option<Self> {
        match f & IP_VS_CONN_F_FWD_MASK {
            IP_VS_CONN_F_MASQ => Some(ForwardMethod::Masquerade),
            IP_VS_CONN_F_LOCALNODE => Some(ForwardMethod::Local),
            IP_VS_CONN_F_TUNNEL => Some(ForwardMethod::Tunnel),
            IP_VS_CONN_F_DROUTE => Some(ForwardMethod::DirectRoute),
            _ => None,
        }
    }
}

/// What identifies a (non-fwmark) virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub protocol: Protocol,
    pub addr: IpAddr,
    pub port: u16,
}

impl ServiceKey {
    pub fn tcp(addr: IpAddr, port: u16) -> Self {
        ServiceKey {
            protocol: Protocol::Tcp,
            addr,
            port,
        }
    }

    fn family(&self) -> u16 {
        family_of(&self.addr)
    }

    /// The identifying attributes only (enough for delete, get, and the
    /// service part of destination requests).
    pub fn attrs(&self) -> ServiceAttrs {
        ServiceAttrs {
            family: Some(self.family()),
            protocol: Some(self.protocol.number()),
            addr: Some(self.addr),
            port: Some(self.port),
            ..ServiceAttrs::default()
        }
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        };
        match self.addr {
            IpAddr::V4(a) => write!(f, "{p}/{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "{p}/[{a}]:{}", self.port),
        }
    }
}

fn family_of(a: &IpAddr) -> u16 {
    if a.is_ipv4() { AF_INET } else { AF_INET6 }
}

/// A virtual service's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub key: ServiceKey,
    /// Scheduler name: rr wrr lc wlc lblc lblcr dh sh sed nq fo ovf mh.
    pub scheduler: String,
    /// Persistence timeout in seconds (`IP_VS_SVC_F_PERSISTENT`), if any.
    pub persistence: Option<u32>,
    /// Persistence granularity: host-order u32 (an IPv4 mask, 0xffffffff
    /// per client; for IPv6 a prefix length, 128).
    pub netmask: u32,
    /// Other `IP_VS_SVC_F_*` flags (one-packet, scheduler flags).
    pub extra_flags: u32,
}

impl Service {
    /// A TCP service as k0s's keepalived renders it: scheduler, optional
    /// persistence, per-client granularity.
    pub fn tcp(addr: IpAddr, port: u16, scheduler: &str, persistence: Option<u32>) -> Self {
        Service {
            key: ServiceKey::tcp(addr, port),
            scheduler: scheduler.to_owned(),
            persistence,
            netmask: if addr.is_ipv4() { 0xffff_ffff } else { 128 },
            extra_flags: 0,
        }
    }

    /// All attributes, as ipvsadm sends them for `-A`/`-E`.
    pub fn attrs(&self) -> ServiceAttrs {
        let persistent = if self.persistence.is_some() {
            IP_VS_SVC_F_PERSISTENT
        } else {
            0
        };
        ServiceAttrs {
            scheduler: Some(self.scheduler.clone()),
            flags: Some(ServiceFlags {
                flags: self.extra_flags | persistent,
                mask: u32::MAX,
            }),
            timeout: Some(self.persistence.unwrap_or(0)),
            netmask: Some(self.netmask),
            ..self.key.attrs()
        }
    }

    /// The typed service of a reply; `None` for fwmark services and
    /// protocols cplb does not know (they are not cplb's).
    pub fn from_attrs(a: &ServiceAttrs) -> Result<Option<Self>, crate::Error> {
        if a.fwmark.is_some() && a.addr.is_none() {
            return Ok(None);
        }
        let missing = |what: &str| crate::Error::Malformed(format!("service without {what}"));
        let Some(protocol) = Protocol::from_number(a.protocol.ok_or_else(|| missing("protocol"))?)
        else {
            return Ok(None);
        };
        let addr = a.addr.ok_or_else(|| missing("address"))?;
        let port = a.port.ok_or_else(|| missing("port"))?;
        let flags = a.flags.map(|f| f.flags).unwrap_or(0);
        Ok(Some(Service {
            key: ServiceKey {
                protocol,
                addr,
                port,
            },
            scheduler: a.scheduler.clone().unwrap_or_default(),
            persistence: (flags & IP_VS_SVC_F_PERSISTENT != 0).then(|| a.timeout.unwrap_or(0)),
            netmask: a.netmask.unwrap_or(0),
            extra_flags: flags & !(IP_VS_SVC_F_PERSISTENT | IP_VS_SVC_F_HASHED),
        }))
    }
}

/// A real server of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub addr: IpAddr,
    pub port: u16,
    pub forward: ForwardMethod,
    pub weight: u32,
    /// Connection thresholds, 0 = none.
    pub upper_threshold: u32,
    pub lower_threshold: u32,
}

impl Destination {
    pub fn new(addr: IpAddr, port: u16, forward: ForwardMethod, weight: u32) -> Self {
        Destination {
            addr,
            port,
            forward,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }

    /// As ipvsadm sends it for `-a`/`-e` (no tunnel encapsulation options:
    /// IPIP, no port, no flags).
    pub fn attrs(&self) -> DestAttrs {
        DestAttrs {
            family: Some(family_of(&self.addr)),
            addr: Some(self.addr),
            port: Some(self.port),
            fwd_method: Some(self.forward.flag()),
            weight: Some(self.weight),
            tun_type: Some(0),
            tun_port: Some(0),
            tun_flags: Some(0),
            upper_threshold: Some(self.upper_threshold),
            lower_threshold: Some(self.lower_threshold),
            ..DestAttrs::default()
        }
    }

    /// The identifying attributes (for delete).
    pub fn key_attrs(addr: IpAddr, port: u16) -> DestAttrs {
        DestAttrs {
            family: Some(family_of(&addr)),
            addr: Some(addr),
            port: Some(port),
            ..DestAttrs::default()
        }
    }

    fn same_config(&self, other: &Destination) -> bool {
        self.forward == other.forward
            && self.weight == other.weight
            && self.upper_threshold == other.upper_threshold
            && self.lower_threshold == other.lower_threshold
    }
}

/// A real server as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationStatus {
    pub dest: Destination,
    pub active_conns: u32,
    pub inactive_conns: u32,
    pub persist_conns: u32,
    pub stats: Stats,
}

impl DestinationStatus {
    pub fn from_attrs(a: &DestAttrs) -> Result<Self, crate::Error> {
        let missing = |what: &str| crate::Error::Malformed(format!("destination without {what}"));
        let fwd = a.fwd_method.ok_or_else(|| missing("forwarding method"))?;
        Ok(DestinationStatus {
            dest: Destination {
                addr: a.addr.ok_or_else(|| missing("address"))?,
                port: a.port.ok_or_else(|| missing("port"))?,
                forward: ForwardMethod::from_flag(fwd).ok_or_else(|| {
                    crate::Error::Malformed(format!("forwarding method {fwd:#x}"))
                })?,
                weight: a.weight.unwrap_or(0),
                upper_threshold: a.upper_threshold.unwrap_or(0),
                lower_threshold: a.lower_threshold.unwrap_or(0),
            },
            active_conns: a.active_conns.unwrap_or(0),
            inactive_conns: a.inactive_conns.unwrap_or(0),
            persist_conns: a.persist_conns.unwrap_or(0),
            stats: a.stats.unwrap_or_default(),
        })
    }
}

/// A virtual service as the kernel reports it, with its real servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    pub service: Service,
    pub stats: Stats,
    pub destinations: Vec<DestinationStatus>,
}

/// A service with the real servers it should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualService {
    pub service: Service,
    pub destinations: Vec<Destination>,
}

/// Sync daemon role (`IP_VS_STATE_MASTER` / `IP_VS_STATE_BACKUP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    Master,
    Backup,
}

impl SyncState {
    pub fn value(self) -> u32 {
        match self {
            SyncState::Master => IP_VS_STATE_MASTER,
            SyncState::Backup => IP_VS_STATE_BACKUP,
        }
    }
}

/// A connection-synchronisation daemon (`ipvsadm --start-daemon`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncDaemon {
    pub state: SyncState,
    /// Interface the sync multicast goes out of / comes in on.
    pub interface: String,
    /// Only sync messages of this id are accepted (0..=255).
    pub sync_id: u32,
}

impl SyncDaemon {
    pub fn attrs(&self) -> DaemonAttrs {
        DaemonAttrs {
            state: Some(self.state.value()),
            mcast_ifname: Some(self.interface.clone()),
            sync_id: Some(self.sync_id),
        }
    }
}

/// One change [`plan`] decided and the client applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    AddService(Service),
    /// Scheduler, persistence or flags changed: edited in place, its
    /// connections untouched.
    EditService(Service),
    /// A service in the owned set that is no longer desired.
    DelService(ServiceKey),
    AddDest(ServiceKey, Destination),
    EditDest(ServiceKey, Destination),
    /// Weight set to 0: no new connections, existing ones finish. The next
    /// reconcile removes it.
    DrainDest(ServiceKey, Destination),
    DelDest(ServiceKey, IpAddr, u16),
}

/// What to change so the kernel's services in `owned` become `desired`
/// (pure: the client reads `actual` and applies the result in order).
///
/// - Services not in `owned` nor `desired` are left alone (another
///   tool's, e.g. kube-proxy's).
/// - A service is never deleted and re-added to change it: edited in place.
/// - An undesired real server gets weight 0 first; one already at weight 0
///   is removed. So removal takes two reconciles, and a server being
///   drained keeps its established connections until then.
pub fn plan(
    desired: &[VirtualService],
    owned: &[ServiceKey],
    actual: &[ServiceStatus],
) -> Vec<Change> {
    let mut changes = Vec::new();
    for want in desired {
        let key = want.service.key;
        match actual.iter().find(|s| s.service.key == key) {
            None => {
                changes.push(Change::AddService(want.service.clone()));
                for d in &want.destinations {
                    changes.push(Change::AddDest(key, d.clone()));
                }
            }
            Some(have) => {
                if have.service != want.service {
                    changes.push(Change::EditService(want.service.clone()));
                }
                for d in &want.destinations {
                    match have
                        .destinations
                        .iter()
                        .find(|h| h.dest.addr == d.addr && h.dest.port == d.port)
                    {
                        None => changes.push(Change::AddDest(key, d.clone())),
                        Some(h) if !h.dest.same_config(d) => {
                            changes.push(Change::EditDest(key, d.clone()))
                        }
                        Some(_) => {}
                    }
                }
                for h in &have.destinations {
                    if want
                        .destinations
                        .iter()
                        .any(|d| d.addr == h.dest.addr && d.port == h.dest.port)
                    {
                        continue;
                    }
                    if h.dest.weight != 0 {
                        changes.push(Change::DrainDest(
                            key,
                            Destination {
                                weight: 0,
                                ..h.dest.clone()
                            },
                        ));
                    } else {
                        changes.push(Change::DelDest(key, h.dest.addr, h.dest.port));
                    }
                }
            }
        }
    }
    for have in actual {
        let key = have.service.key;
        if owned.contains(&key) && !desired.iter().any(|d| d.service.key == key) {
            changes.push(Change::DelService(key));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn vip() -> ServiceKey {
        ServiceKey::tcp(ip("192.0.2.100"), 6443)
    }

    fn rs(last: u8, weight: u32) -> Destination {
        Destination::new(
            ip(&format!("198.51.100.{last}")),
            6443,
            ForwardMethod::DirectRoute,
            weight,
        )
    }

    fn service() -> Service {
        Service::tcp(vip().addr, 6443, "rr", Some(360))
    }

    fn status(service: Service, dests: &[Destination]) -> ServiceStatus {
        ServiceStatus {
            service,
            stats: Stats::default(),
            destinations: dests
                .iter()
                .map(|d| DestinationStatus {
                    dest: d.clone(),
                    active_conns: 3,
                    inactive_conns: 0,
                    persist_conns: 0,
                    stats: Stats::default(),
                })
                .collect(),
        }
    }

    #[test]
    fn plan_adds_a_missing_service_then_its_servers() {
        let want = [VirtualService {
            service: service(),
            destinations: vec![rs(1, 1), rs(2, 1)],
        }];
        assert_eq!(
            plan(&want, &[vip()], &[]),
            [
                Change::AddService(service()),
                Change::AddDest(vip(), rs(1, 1)),
                Change::AddDest(vip(), rs(2, 1)),
            ]
        );
    }

    #[test]
    fn plan_is_empty_when_the_kernel_matches() {
        let want = [VirtualService {
            service: service(),
            destinations: vec![rs(1, 1), rs(2, 1)],
        }];
        let have = [status(service(), &[rs(2, 1), rs(1, 1)])];
        assert!(plan(&want, &[vip()], &have).is_empty());
    }

    #[test]
    fn plan_drains_before_removing_and_edits_in_place() {
        let mut wlc = service();
        wlc.scheduler = "wlc".into();
        let want = [VirtualService {
            service: wlc.clone(),
            destinations: vec![rs(1, 2)],
        }];
        let have = [status(service(), &[rs(1, 1), rs(2, 1), rs(3, 0)])];
        assert_eq!(
            plan(&want, &[vip()], &have),
            [
                Change::EditService(wlc),
                Change::EditDest(vip(), rs(1, 2)),
                Change::DrainDest(vip(), rs(2, 0)),
                Change::DelDest(vip(), rs(3, 0).addr, 6443),
            ]
        );
    }

    #[test]
    fn plan_removes_only_owned_services() {
        let other = ServiceKey::tcp(ip("192.0.2.200"), 80);
        let mut foreign = service();
        foreign.key = other;
        let have = [status(service(), &[rs(1, 1)]), status(foreign, &[rs(9, 1)])];
        assert_eq!(plan(&[], &[vip()], &have), [Change::DelService(vip())]);
        assert!(plan(&[], &[], &have).is_empty());
    }

    #[test]
    fn service_attrs_round_trip_through_the_typed_view() {
        for s in [service(), Service::tcp(ip("2001:db8::1"), 443, "sh", None)] {
            assert_eq!(
                Service::from_attrs(&s.attrs()).expect("valid"),
                Some(s.clone())
            );
        }
        // The kernel adds IP_VS_SVC_F_HASHED; it is not configuration.
        let mut a = service().attrs();
        if let Some(f) = a.flags.as_mut() {
            f.flags |= IP_VS_SVC_F_HASHED;
        }
        assert_eq!(Service::from_attrs(&a).expect("valid"), Some(service()));
        // fwmark services are not ours; a service without a port is malformed.
        let fwmark = ServiceAttrs {
            family: Some(AF_INET),
            fwmark: Some(1),
            ..ServiceAttrs::default()
        };
        assert_eq!(Service::from_attrs(&fwmark).expect("valid"), None);
        let mut no_port = service().attrs();
        no_port.port = None;
        assert!(Service::from_attrs(&no_port).is_err());
    }
}
