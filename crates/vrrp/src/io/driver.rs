//! The driver: runs [`VirtualRouter`]s on real interfaces.
//!
//! One task owns every router. It waits on cancellation, received adverts,
//! netlink link/address events and the earliest router timer, feeds each to
//! the routers and carries out the [`Action`]s they return: adverts go out of
//! [`VrrpSocket`]s, VIPs are added and removed through [`VipManager`],
//! announcements go out of a [`PacketSocket`].
//!
//! Instances share one raw socket per interface, address family and mode
//! (multicast or unicast); received adverts are demultiplexed by VRID.
//!
//! While Master, every advert sent also re-adds the VIPs with a finite
//! lifetime (a lease), so if this process is killed, hangs or is frozen,
//! the kernel removes the VIPs by itself about Master_Down_Interval later,
//! when the Backups have taken over.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::netlink::{LinkEvent, LinkEvents, NetlinkError, Vip, VipLifetime, VipManager};
use super::socket::{Classifier, PacketSocket, RecvdPacket, SocketError, VrrpSocket};
use crate::fsm::{Action, Config, ConfigError, State, VirtualRouter};
use crate::wire::{
    GARP_FRAME_LEN, MULTICAST_V4, MULTICAST_V6, UNSOLICITED_NA_FRAME_LEN, gratuitous_arp,
    unsolicited_na,
};

/// The RFC 6724 label keepalived gives IPv6 VIPs by default, so that source
/// address selection does not prefer them for the node's own traffic.
pub const DEFAULT_ADDR_LABEL: u32 = 10000;

/// How long the kernel keeps a VIP that is not refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VipLease {
    /// Three advertisement intervals, rounded up to whole seconds (the
    /// kernel's unit). A Master that stops refreshing (killed, hung, frozen)
    /// loses its VIPs about when the Backups' Master_Down_Interval (3 ×
    /// interval + skew, RFC 3768 §6.1) runs out and one of them takes over,
    /// so a frozen node's kernel does not keep answering ARP for them. Two
    /// intervals of slack remain for a late refresh.
    #[default]
    Auto,
    /// A fixed lifetime, longer than the advertisement interval.
    Fixed(Duration),
    /// No lease: VIPs stay until removed (keepalived's behaviour).
    Off,
}

/// One virtual router to run and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    /// The state machine's configuration; `router.primary_ip` is the source
    /// of adverts (for IPv6 multicast, the interface's link-local address,
    /// RFC 5798 §5.1.2.1).
    pub router: Config,
    /// The interface name.
    pub interface: String,
    /// Prefix lengths for the VIPs; a VIP of `router.vips` not listed here
    /// is added as /32 or /128.
    pub vip_prefixes: Vec<Vip>,
    /// Unicast peers; empty for multicast.
    pub unicast_peers: Vec<IpAddr>,
    /// The VIP lease.
    pub lease: VipLease,
    /// RFC 6724 address label for IPv6 VIPs; `None` for none.
    pub ipv6_addr_label: Option<u32>,
}

impl InstanceConfig {
    /// Multicast, automatic lease, default IPv6 label, host prefixes.
    pub fn new(router: Config, interface: impl Into<String>) -> InstanceConfig {
        InstanceConfig {
            router,
            interface: interface.into(),
            vip_prefixes: Vec::new(),
            unicast_peers: Vec::new(),
            lease: VipLease::Auto,
            ipv6_addr_label: Some(DEFAULT_ADDR_LABEL),
        }
    }

    fn vips(&self) -> Vec<Vip> {
        self.router
            .vips
            .iter()
            .map(|addr| {
                self.vip_prefixes
                    .iter()
                    .find(|v| v.addr == *addr)
                    .copied()
                    .unwrap_or_else(|| Vip::host(*addr))
            })
            .collect()
    }
}

/// Why the driver could not start (once running, errors are logged and the
/// routers carry on).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// Netlink setup or interface lookup failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A socket could not be opened.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// A router configuration is invalid.
    #[error("VRID {vrid}: {source}")]
    Config {
        /// The instance.
        vrid: u8,
        /// What is wrong.
        #[source]
        source: ConfigError,
    },
    /// Two instances with one VRID on one interface and family.
    #[error("VRID {vrid} configured twice on {interface}")]
    DuplicateVrid {
        /// The VRID.
        vrid: u8,
        /// The interface.
        interface: String,
    },
    /// A fixed lease not longer than the advertisement interval would expire
    /// between two refreshes.
    #[error("VRID {vrid}: VIP lease {lease:?} must be longer than the advertisement interval")]
    LeaseTooShort {
        /// The instance.
        vrid: u8,
        /// The lease.
        lease: Duration,
    },
    /// A unicast peer of another address family than the instance.
    #[error("VRID {vrid}: unicast peer {peer} is of another address family")]
    PeerFamily {
        /// The instance.
        vrid: u8,
        /// The peer.
        peer: IpAddr,
    },
}

/// Pause after a failed receive before trying again.
const RECV_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Adverts from one socket share one classifier.
struct Group {
    ifindex: u32,
    ifname: String,
    ipv6: bool,
    unicast: bool,
    socket: Arc<VrrpSocket>,
    classifier: Classifier,
    announce: Option<PacketSocket>,
    mac: Option<[u8; 6]>,
    receiver: Option<AbortHandle>,
}

struct Instance {
    config: InstanceConfig,
    router: VirtualRouter,
    group: usize,
    ifindex: u32,
    vips: Vec<Vip>,
    rejects: BTreeMap<&'static str, u64>,
    adverts_received: u64,
    adverts_sent: u64,
    transitions: u64,
    /// The Master as far as we know: ourselves while Master, the source of
    /// the latest accepted advert while Backup.
    master: Option<IpAddr>,
}

impl Instance {
    fn lifetime(&self) -> VipLifetime {
        match self.config.lease {
            VipLease::Off => VipLifetime::Forever,
            VipLease::Fixed(valid) => VipLifetime::lease(valid),
            VipLease::Auto => {
                let three = 3 * self.config.router.advert_interval.to_duration();
                let secs = three.as_secs() + u64::from(three.subsec_nanos() > 0);
                VipLifetime::lease(Duration::from_secs(secs.max(1)))
            }
        }
    }
}

/// What one instance is doing, published by [`run_with_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    /// The VRID.
    pub vrid: u8,
    /// The interface.
    pub interface: String,
    /// The router's state.
    pub state: State,
    /// Received packets dropped before reaching any router, by reason
    /// (TTL, own address, decode errors...), on this instance's socket.
    pub wire_drops: BTreeMap<&'static str, u64>,
    /// Adverts for this VRID the router rejected, by reason.
    pub rejects: BTreeMap<&'static str, u64>,
    /// Adverts for this VRID the router accepted.
    pub adverts_received: u64,
    /// Adverts sent (one per destination in unicast mode).
    pub adverts_sent: u64,
    /// State changes since start.
    pub transitions: u64,
    /// The priority advertised now.
    pub priority: u8,
    /// The Master's address as far as this node knows: its own primary
    /// address while Master, the source of the latest accepted advert while
    /// Backup, `None` otherwise.
    pub master: Option<IpAddr>,
}

/// A change asked of a running driver (see [`run_controlled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Advertise `priority` from now on: the instance with `vrid`, or every
    /// instance when `vrid` is `None` (RFC 5798 §6.4 leaves priority changes
    /// to the implementation; a Master advertises the new value at once).
    SetPriority {
        /// The instance, or all.
        vrid: Option<u8>,
        /// The new priority, 1..=254.
        priority: u8,
    },
}

/// Runs `configs` until `cancel` fires, then shuts every router down
/// gracefully: a Master sends one priority-0 advert, then its VIPs are
/// removed (RFC 3768 §6.4.3).
pub async fn run(
    configs: Vec<InstanceConfig>,
    cancel: CancellationToken,
) -> Result<(), DriverError> {
    let mut driver = Driver::start(configs, None).await?;
    driver.run(cancel).await;
    Ok(())
}

/// [`run`], publishing every instance's [`InstanceStatus`] on `status`
/// whenever it changes.
pub async fn run_with_status(
    configs: Vec<InstanceConfig>,
    cancel: CancellationToken,
    status: watch::Sender<Vec<InstanceStatus>>,
) -> Result<(), DriverError> {
    let mut driver = Driver::start(configs, Some(status)).await?;
    driver.run(cancel).await;
    Ok(())
}

/// [`run_with_status`], also taking [`Control`]s (priority changes from a
/// health tracker) from `control`. When `control` closes, the routers keep
/// their current priorities.
pub async fn run_controlled(
    configs: Vec<InstanceConfig>,
    cancel: CancellationToken,
    status: watch::Sender<Vec<InstanceStatus>>,
    control: mpsc::Receiver<Control>,
) -> Result<(), DriverError> {
    let mut driver = Driver::start(configs, Some(status)).await?;
    driver.control = Some(control);
    driver.run(cancel).await;
    Ok(())
}

/// Crash handoff: for every instance whose VIPs are still on its interface
/// (a lease not yet expired, or no lease: this node was Master when its
/// process died), sends one priority-0 advert so the Backups take over after
/// Skew_Time instead of Master_Down_Interval (RFC 3768 §6.4.2, RFC 5798
/// §6.4.2), then removes the VIPs and their address labels. Instances
/// without VIPs present send nothing: a priority-0 advert from a node that
/// is not Master would make the Backups take over from the real Master.
/// Returns the VRIDs released.
pub async fn release(configs: Vec<InstanceConfig>) -> Result<Vec<u8>, DriverError> {
    let netlink = VipManager::new()?;
    let mut released = Vec::new();
    for config in configs {
        let vrid = config.router.vrid;
        let router = VirtualRouter::new(config.router.clone())
            .map_err(|source| DriverError::Config { vrid, source })?;
        let interface = netlink.interface(&config.interface).await?;
        let present: Vec<IpAddr> = netlink
            .addresses(interface.index)
            .await?
            .into_iter()
            .map(|a| a.addr)
            .collect();
        let vips = config.vips();
        if !vips.iter().any(|v| present.contains(&v.addr)) {
            continue;
        }
        let socket = if config.router.primary_ip.is_ipv6() {
            VrrpSocket::open_v6(interface.index, &interface.name)?
        } else {
            VrrpSocket::open_v4(interface.index, &interface.name)?
        };
        let advert = router.advert(0);
        let src = config.router.primary_ip;
        let multicast = [if src.is_ipv6() {
            IpAddr::V6(MULTICAST_V6)
        } else {
            IpAddr::V4(MULTICAST_V4)
        }];
        let destinations: &[IpAddr] = if config.unicast_peers.is_empty() {
            &multicast
        } else {
            &config.unicast_peers
        };
        let mut buf = vec![0; advert.buffer_len()];
        for &dst in destinations {
            match advert.emit(src, dst, &mut buf) {
                Ok(len) => {
                    if let Err(e) = socket
                        .send(buf.get(..len).unwrap_or_default(), src, dst)
                        .await
                    {
                        warn!(component = "vrrp", vrid, %dst, error = %e, "cannot send priority-0 advert");
                    }
                }
                Err(e) => warn!(component = "vrrp", vrid, error = %e, "cannot encode advert"),
            }
        }
        for vip in &vips {
            if let Err(e) = netlink.remove_vip(interface.index, vip.addr).await {
                warn!(component = "vrrp", vrid, %vip, error = %e, "cannot remove VIP");
            }
            if let (IpAddr::V6(addr), Some(label)) = (vip.addr, config.ipv6_addr_label)
                && let Err(e) = netlink.remove_addr_label(addr, 128, label).await
            {
                warn!(component = "vrrp", vrid, %vip, error = %e, "cannot remove address label");
            }
        }
        info!(component = "vrrp", vrid, interface = %config.interface, "released: priority-0 advert sent, VIPs removed");
        released.push(vrid);
    }
    Ok(released)
}

struct Driver {
    netlink: VipManager,
    events: LinkEvents,
    events_open: bool,
    groups: Vec<Group>,
    instances: Vec<Instance>,
    packets: mpsc::Receiver<(usize, RecvdPacket)>,
    packets_tx: mpsc::Sender<(usize, RecvdPacket)>,
    receivers: JoinSet<()>,
    status: Option<watch::Sender<Vec<InstanceStatus>>>,
    control: Option<mpsc::Receiver<Control>>,
}

/// Forwards what `group`'s socket receives to the driver, tagged with the
/// group's index.
fn spawn_receiver(
    receivers: &mut JoinSet<()>,
    index: usize,
    group: &Group,
    tx: mpsc::Sender<(usize, RecvdPacket)>,
) -> AbortHandle {
    let socket = Arc::clone(&group.socket);
    receivers.spawn(async move {
        // Ends when the driver drops the receiving side, or aborts the task
        // (shutdown, interface re-created).
        loop {
            match socket.recv().await {
                Ok(packet) => {
                    if tx.send((index, packet)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // Usually transient (ENOBUFS, ENOMEM): keep the socket,
                    // but do not spin on a persistent error.
                    warn!(component = "vrrp", ifindex = socket.ifindex(), error = %e, "receive failed");
                    tokio::time::sleep(RECV_ERROR_BACKOFF).await;
                }
            }
        }
    })
}

/// The next control message, or never when there is no channel.
async fn recv_control(control: &mut Option<mpsc::Receiver<Control>>) -> Option<Control> {
    match control {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Driver {
    async fn start(
        configs: Vec<InstanceConfig>,
        status: Option<watch::Sender<Vec<InstanceStatus>>>,
    ) -> Result<Driver, DriverError> {
        let netlink = VipManager::new()?;
        // Subscribe before reading any state, so no change falls in between.
        let events = LinkEvents::subscribe()?;
        let mut groups: Vec<Group> = Vec::new();
        let mut instances = Vec::new();
        let mut oper_up = HashMap::new();
        for config in configs {
            let vrid = config.router.vrid;
            let router = VirtualRouter::new(config.router.clone())
                .map_err(|source| DriverError::Config { vrid, source })?;
            if let VipLease::Fixed(lease) = config.lease
                && lease <= config.router.advert_interval.to_duration()
            {
                return Err(DriverError::LeaseTooShort { vrid, lease });
            }
            let ipv6 = config.router.primary_ip.is_ipv6();
            if let Some(&peer) = config.unicast_peers.iter().find(|p| p.is_ipv6() != ipv6) {
                return Err(DriverError::PeerFamily { vrid, peer });
            }
            if let IpAddr::V6(primary) = config.router.primary_ip
                && config.unicast_peers.is_empty()
                && !primary.is_unicast_link_local()
            {
                // RFC 5798 §5.1.2.1: the source of an IPv6 advert is the
                // interface's link-local address; receivers drop others.
                warn!(component = "vrrp", vrid, %primary, "IPv6 multicast advert source is not link-local; peers will drop our adverts");
            }
            let interface = netlink.interface(&config.interface).await?;
            oper_up.insert(interface.index, interface.oper_up);
            let unicast = !config.unicast_peers.is_empty();
            let group = match groups.iter().position(|g| {
                g.ifindex == interface.index && g.ipv6 == ipv6 && g.unicast == unicast
            }) {
                Some(g) => g,
                None => {
                    let socket = if ipv6 {
                        VrrpSocket::open_v6(interface.index, &interface.name)?
                    } else {
                        VrrpSocket::open_v4(interface.index, &interface.name)?
                    };
                    let own = netlink
                        .addresses(interface.index)
                        .await?
                        .into_iter()
                        .map(|a| a.addr)
                        .collect();
                    let announce = match interface.mac {
                        Some(_) => Some(PacketSocket::open(interface.index, 0)?),
                        None => None,
                    };
                    groups.push(Group {
                        ifindex: interface.index,
                        ifname: interface.name.clone(),
                        ipv6,
                        unicast,
                        socket: Arc::new(socket),
                        classifier: Classifier::new(own, unicast.then(Vec::new)),
                        announce,
                        mac: interface.mac,
                        receiver: None,
                    });
                    groups.len() - 1
                }
            };
            if instances
                .iter()
                .any(|i: &Instance| i.group == group && i.config.router.vrid == vrid)
            {
                return Err(DriverError::DuplicateVrid {
                    vrid,
                    interface: config.interface,
                });
            }
            if let Some(g) = groups.get_mut(group) {
                g.classifier.own_addrs.push(config.router.primary_ip);
                if let Some(peers) = g.classifier.unicast_peers.as_mut() {
                    // The socket accepts every instance's peers; each
                    // instance then checks its own list.
                    peers.extend(config.unicast_peers.iter().copied());
                }
            }
            let vips = config.vips();
            // A VIP still on the interface was left by a crashed run; we
            // start as Backup and must not answer for it.
            let removed = netlink.remove_stale(interface.index, &vips).await?;
            if !removed.is_empty() {
                warn!(component = "vrrp", vrid, interface = %config.interface, ?removed,
                    "removed VIPs left on the interface by a previous run");
            }
            instances.push(Instance {
                config,
                router,
                group,
                ifindex: interface.index,
                vips,
                rejects: BTreeMap::new(),
                adverts_received: 0,
                adverts_sent: 0,
                transitions: 0,
                master: None,
            });
        }

        let (packets_tx, packets) = mpsc::channel(256);
        let mut receivers = JoinSet::new();
        for (index, group) in groups.iter_mut().enumerate() {
            group.receiver = Some(spawn_receiver(
                &mut receivers,
                index,
                group,
                packets_tx.clone(),
            ));
        }

        let mut driver = Driver {
            netlink,
            events,
            events_open: true,
            groups,
            instances,
            packets,
            packets_tx,
            receivers,
            status,
            control: None,
        };
        let t = now();
        for index in 0..driver.instances.len() {
            let Some(instance) = driver.instances.get_mut(index) else {
                continue;
            };
            let mut actions = instance.router.start(t);
            if oper_up.get(&instance.ifindex) == Some(&false) {
                actions.extend(instance.router.link_down(t));
            }
            driver.apply(index, actions).await;
        }
        driver.publish();
        Ok(driver)
    }

    fn publish(&self) {
        let Some(status) = &self.status else { return };
        let current: Vec<InstanceStatus> = self
            .instances
            .iter()
            .map(|i| InstanceStatus {
                vrid: i.config.router.vrid,
                interface: i.config.interface.clone(),
                state: i.router.state(),
                wire_drops: self
                    .groups
                    .get(i.group)
                    .map(|g| g.classifier.drops().clone())
                    .unwrap_or_default(),
                rejects: i.rejects.clone(),
                adverts_received: i.adverts_received,
                adverts_sent: i.adverts_sent,
                transitions: i.transitions,
                priority: i.router.priority(),
                master: i.master,
            })
            .collect();
        status.send_if_modified(|published| {
            let changed = *published != current;
            if changed {
                *published = current;
            }
            changed
        });
    }

    async fn run(&mut self, cancel: CancellationToken) {
        loop {
            let deadline = self
                .instances
                .iter()
                .filter_map(|i| i.router.poll_timeout())
                .min();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                control = recv_control(&mut self.control) => match control {
                    Some(control) => self.on_control(control).await,
                    None => self.control = None,
                },
                Some((group, packet)) = self.packets.recv() => self.on_packet(group, packet).await,
                event = self.events.next(), if self.events_open => match event {
                    Some(event) => self.on_link_event(event).await,
                    None => {
                        // The netlink socket failed: routers keep running,
                        // but link and address changes go unnoticed.
                        warn!(component = "vrrp", "netlink event stream ended; link changes are no longer seen");
                        self.events_open = false;
                    }
                },
                () = sleep => self.on_timeout().await,
            }
            self.publish();
        }
        self.shutdown().await;
        self.publish();
    }

    async fn shutdown(&mut self) {
        let t = now();
        for index in 0..self.instances.len() {
            let Some(instance) = self.instances.get_mut(index) else {
                continue;
            };
            let actions = instance.router.shutdown(t);
            self.apply(index, actions).await;
            // Whatever the state, leave no VIP and no label behind.
            self.remove_vips(index).await;
        }
        self.receivers.abort_all();
    }

    async fn on_control(&mut self, control: Control) {
        let Control::SetPriority { vrid, priority } = control;
        let t = now();
        for index in 0..self.instances.len() {
            let Some(instance) = self.instances.get_mut(index) else {
                continue;
            };
            if vrid.is_some_and(|v| v != instance.config.router.vrid)
                || instance.router.priority() == priority
            {
                continue;
            }
            let from = instance.router.priority();
            let actions = instance.router.set_priority(t, priority);
            info!(
                component = "vrrp",
                vrid = instance.config.router.vrid,
                from,
                to = instance.router.priority(),
                "priority changed"
            );
            self.apply(index, actions).await;
        }
    }

    async fn on_timeout(&mut self) {
        let t = now();
        for index in 0..self.instances.len() {
            let Some(instance) = self.instances.get_mut(index) else {
                continue;
            };
            if instance.router.poll_timeout().is_some_and(|at| at <= t) {
                let actions = instance.router.handle_timeout(t);
                self.apply(index, actions).await;
            }
        }
    }

    async fn on_packet(&mut self, group_index: usize, packet: RecvdPacket) {
        let Some(group) = self.groups.get_mut(group_index) else {
            return;
        };
        let advert = match group.classifier.classify(&packet) {
            Ok(advert) => advert,
            Err(reason) => {
                debug!(component = "vrrp", ifindex = group.ifindex, src = %packet.src, reason = reason.reason(), "advert dropped");
                return;
            }
        };
        let Some(index) = self
            .instances
            .iter()
            .position(|i| i.group == group_index && i.config.router.vrid == advert.vrid)
        else {
            // RFC 3768 §7.1: "MUST verify that the VRID is configured".
            group.classifier.count("unknown_vrid");
            debug!(component = "vrrp", vrid = advert.vrid, src = %packet.src, "advert for a VRID not configured here");
            return;
        };
        let Some(instance) = self.instances.get_mut(index) else {
            return;
        };
        if !instance.config.unicast_peers.is_empty()
            && !instance.config.unicast_peers.contains(&packet.src)
        {
            *instance.rejects.entry("not_a_peer").or_insert(0) += 1;
            return;
        }
        match instance.router.receive(now(), packet.src, &advert) {
            Ok(actions) => {
                instance.adverts_received += 1;
                if instance.router.state() == State::Backup && advert.priority > 0 {
                    instance.master = Some(packet.src);
                }
                self.apply(index, actions).await;
            }
            Err(reason) => {
                *instance.rejects.entry(reason.reason()).or_insert(0) += 1;
                debug!(component = "vrrp", vrid = advert.vrid, src = %packet.src, reason = reason.reason(), "advert rejected");
            }
        }
    }

    async fn on_link_event(&mut self, event: LinkEvent) {
        // Keep each socket's idea of "our own addresses" current, so a
        // packet from an address added later is still recognised as ours.
        match event {
            LinkEvent::AddressAdded(index, addr) => {
                for group in self
                    .groups
                    .iter_mut()
                    .filter(|g| g.ifindex == index && g.ipv6 == addr.is_ipv6())
                {
                    if !group.classifier.own_addrs.contains(&addr) {
                        group.classifier.own_addrs.push(addr);
                    }
                }
            }
            LinkEvent::AddressRemoved(index, addr) => {
                let primaries: Vec<IpAddr> = self
                    .instances
                    .iter()
                    .map(|i| i.config.router.primary_ip)
                    .collect();
                for group in self.groups.iter_mut().filter(|g| g.ifindex == index) {
                    // Our configured advert sources always stay ours.
                    group
                        .classifier
                        .own_addrs
                        .retain(|a| *a != addr || primaries.contains(a));
                }
            }
            _ => {}
        }
        if let LinkEvent::LinkUp(index) | LinkEvent::LinkDown(index) = event
            && !self.groups.iter().any(|g| g.ifindex == index)
        {
            self.rebind(index).await;
        }
        let t = now();
        for index in 0..self.instances.len() {
            let Some(instance) = self.instances.get_mut(index) else {
                continue;
            };
            let actions = match event {
                LinkEvent::LinkDown(i) | LinkEvent::LinkDeleted(i) if i == instance.ifindex => {
                    instance.router.link_down(t)
                }
                LinkEvent::LinkUp(i) if i == instance.ifindex => instance.router.link_up(t),
                LinkEvent::AddressRemoved(i, addr)
                    if i == instance.ifindex
                        && instance.router.state() == State::Master
                        && instance.vips.iter().any(|v| v.addr == addr) =>
                {
                    warn!(component = "vrrp", vrid = instance.config.router.vrid, %addr,
                        "VIP removed from the interface while Master; putting it back");
                    self.add_vips(index).await;
                    continue;
                }
                _ => continue,
            };
            self.apply(index, actions).await;
        }
    }

    /// A link we do not know appeared. If it has the name of one of our
    /// interfaces, that interface was deleted and created again (a network
    /// restart): move the sockets and instances over to the new index.
    async fn rebind(&mut self, ifindex: u32) {
        let Ok(interface) = self.netlink.interface_by_index(ifindex).await else {
            return;
        };
        for group_index in 0..self.groups.len() {
            let Some(group) = self.groups.get_mut(group_index) else {
                continue;
            };
            if group.ifname != interface.name || group.ifindex == ifindex {
                continue;
            }
            let opened = if group.ipv6 {
                VrrpSocket::open_v6(ifindex, &interface.name)
            } else {
                VrrpSocket::open_v4(ifindex, &interface.name)
            };
            let announce = interface
                .mac
                .map(|_| PacketSocket::open(ifindex, 0))
                .transpose();
            let (socket, announce) = match (opened, announce) {
                (Ok(socket), Ok(announce)) => (socket, announce),
                (Err(e), _) | (_, Err(e)) => {
                    warn!(component = "vrrp", interface = %interface.name, error = %e,
                        "interface re-created, but its sockets cannot be opened");
                    continue;
                }
            };
            info!(component = "vrrp", interface = %interface.name, old = group.ifindex, new = ifindex,
                "interface re-created; sockets moved to the new index");
            if let Some(old) = group.receiver.take() {
                old.abort();
            }
            let old_index = group.ifindex;
            group.ifindex = ifindex;
            group.socket = Arc::new(socket);
            group.announce = announce;
            group.mac = interface.mac;
            group.receiver = Some(spawn_receiver(
                &mut self.receivers,
                group_index,
                group,
                self.packets_tx.clone(),
            ));
            for instance in &mut self.instances {
                if instance.group == group_index && instance.ifindex == old_index {
                    instance.ifindex = ifindex;
                }
            }
        }
    }

    async fn apply(&mut self, index: usize, actions: Vec<Action>) {
        for action in actions {
            let Some(instance) = self.instances.get(index) else {
                return;
            };
            let vrid = instance.config.router.vrid;
            match action {
                Action::StateChanged { from, to, reason } => {
                    info!(component = "vrrp", vrid, interface = %instance.config.interface, %from, %to, %reason, "state changed");
                    if let Some(instance) = self.instances.get_mut(index) {
                        instance.transitions += 1;
                        instance.master = match to {
                            State::Master => Some(instance.config.router.primary_ip),
                            _ => None,
                        };
                    }
                }
                Action::AddVips => self.add_vips(index).await,
                Action::RemoveVips => self.remove_vips(index).await,
                Action::Send(advert) => {
                    let sent = self.send(index, &advert).await;
                    if let Some(instance) = self.instances.get_mut(index) {
                        instance.adverts_sent += sent;
                    }
                    // Each advert a Master sends renews the VIP lease.
                    let renew = self.instances.get(index).is_some_and(|i| {
                        i.router.state() == State::Master && i.config.lease != VipLease::Off
                    });
                    if renew {
                        self.add_vips(index).await;
                    }
                }
                Action::Announce { repeat } => self.announce(index, repeat).await,
            }
        }
    }

    /// Sends `advert` to the instance's destinations; returns how many
    /// copies went out.
    async fn send(&self, index: usize, advert: &crate::wire::Advert) -> u64 {
        let Some(instance) = self.instances.get(index) else {
            return 0;
        };
        let Some(group) = self.groups.get(instance.group) else {
            return 0;
        };
        let src = instance.config.router.primary_ip;
        let multicast = [if group.ipv6 {
            IpAddr::V6(MULTICAST_V6)
        } else {
            IpAddr::V4(MULTICAST_V4)
        }];
        let destinations: &[IpAddr] = if instance.config.unicast_peers.is_empty() {
            &multicast
        } else {
            &instance.config.unicast_peers
        };
        let mut buf = vec![0; advert.buffer_len()];
        let mut sent = 0;
        for &dst in destinations {
            let len = match advert.emit(src, dst, &mut buf) {
                Ok(len) => len,
                Err(e) => {
                    warn!(component = "vrrp", vrid = advert.vrid, error = %e, "cannot encode advert");
                    return sent;
                }
            };
            match group
                .socket
                .send(buf.get(..len).unwrap_or_default(), src, dst)
                .await
            {
                Ok(()) => sent += 1,
                Err(e) => {
                    warn!(component = "vrrp", vrid = advert.vrid, error = %e, "cannot send advert");
                }
            }
        }
        sent
    }

    async fn add_vips(&self, index: usize) {
        let Some(instance) = self.instances.get(index) else {
            return;
        };
        let lifetime = instance.lifetime();
        for vip in &instance.vips {
            if let Err(e) = self.netlink.add_vip(instance.ifindex, *vip, lifetime).await {
                warn!(component = "vrrp", vrid = instance.config.router.vrid, %vip, error = %e, "cannot add VIP");
            }
            if let (IpAddr::V6(addr), Some(label)) = (vip.addr, instance.config.ipv6_addr_label)
                && let Err(e) = self.netlink.add_addr_label(addr, 128, label).await
            {
                warn!(component = "vrrp", vrid = instance.config.router.vrid, %vip, error = %e, "cannot add address label");
            }
        }
    }

    async fn remove_vips(&self, index: usize) {
        let Some(instance) = self.instances.get(index) else {
            return;
        };
        for vip in &instance.vips {
            if let Err(e) = self.netlink.remove_vip(instance.ifindex, vip.addr).await {
                warn!(component = "vrrp", vrid = instance.config.router.vrid, %vip, error = %e, "cannot remove VIP");
            }
            if let (IpAddr::V6(addr), Some(label)) = (vip.addr, instance.config.ipv6_addr_label)
                && let Err(e) = self.netlink.remove_addr_label(addr, 128, label).await
            {
                warn!(component = "vrrp", vrid = instance.config.router.vrid, %vip, error = %e, "cannot remove address label");
            }
        }
    }

    async fn announce(&self, index: usize, repeat: u32) {
        let Some(instance) = self.instances.get(index) else {
            return;
        };
        let Some(group) = self.groups.get(instance.group) else {
            return;
        };
        let (Some(socket), Some(mac)) = (&group.announce, group.mac) else {
            debug!(
                component = "vrrp",
                vrid = instance.config.router.vrid,
                "no Ethernet address: nothing to announce"
            );
            return;
        };
        let mut frame = [0u8; if GARP_FRAME_LEN > UNSOLICITED_NA_FRAME_LEN {
            GARP_FRAME_LEN
        } else {
            UNSOLICITED_NA_FRAME_LEN
        }];
        for vip in &instance.vips {
            let built = match vip.addr {
                IpAddr::V4(addr) => gratuitous_arp(mac, addr, &mut frame),
                IpAddr::V6(addr) => unsolicited_na(mac, addr, &mut frame),
            };
            let len = match built {
                Ok(len) => len,
                Err(e) => {
                    warn!(component = "vrrp", vrid = instance.config.router.vrid, error = %e, "cannot build announcement");
                    continue;
                }
            };
            for _ in 0..repeat {
                if let Err(e) = socket.send(frame.get(..len).unwrap_or_default()).await {
                    warn!(component = "vrrp", vrid = instance.config.router.vrid, %vip, error = %e, "cannot send announcement");
                    break;
                }
            }
        }
    }
}
