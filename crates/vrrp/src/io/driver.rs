//! The driver: runs [`VirtualRouter`]s on real interfaces.
//!
//! One task owns every router. It waits on cancellation, received adverts,
//! netlink link/address events and the earliest router timer, feeds each to
//! the routers and carries out the [`Action`]s they return: adverts go out of
//! [`VrrpSocket`]s, VIPs are added and removed through [`VipManager`],
//! announcements go out of a [`PacketSocket`].
//!
//! Instances share one raw socket per interface, address family and mode
//! (multicast or unicast); received adverts go through that socket group's
//! [`Classifier`] (the receive path of [`super::rx`]).
//!
//! While Master, every advert sent also re-adds the VIPs with a finite
//! lifetime (a lease), so if this process is killed, hangs or is frozen,
//! the kernel removes the VIPs by itself about Master_Down_Interval later,
//! when the Backups have taken over.
//!
//! Start it with [`Driver::builder`]; [`release`] is the crash hand-off of
//! a process that died as Master.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::netlink::{LinkEvent, LinkEvents, NetlinkError, Vip, VipLifetime, VipManager};
use super::rx::{Classifier, InstanceStats, SocketStats};
use super::socket::{PacketSocket, RecvdPacket, SocketError, VrrpSocket};
use crate::fsm::{Action, PRIORITY_RESIGN, Reason, State, VirtualRouter};
use crate::wire::{
    Advert, GARP_FRAME_LEN, UNSOLICITED_NA_FRAME_LEN, gratuitous_arp, unsolicited_na,
};

pub use super::config::{DEFAULT_ADDR_LABEL, InstanceConfig, InstanceConfigError, VipLease};
use super::deadline::Deadline;
pub use super::status::{Control, DriverStatus, InstanceStatus, SocketStatus};

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
    /// An instance configuration is invalid ([`InstanceConfig::validate`]).
    #[error("VRID {vrid}: {source}")]
    Config {
        /// The instance.
        vrid: u8,
        /// What is wrong.
        #[source]
        source: InstanceConfigError,
    },
    /// A VIP is a permanent address of the node (its own address, a typo in
    /// the configuration?). Refused: acting as Backup would mean removing
    /// it, and nothing may ever remove the node's own addresses.
    #[error(
        "VRID {vrid}: virtual IP {vip} is a permanent address of this node (interface #{ifindex}); a VIP must be an address no node has"
    )]
    VipIsNodeAddress {
        /// The instance.
        vrid: u8,
        /// The VIP.
        vip: IpAddr,
        /// The interface the address is on.
        ifindex: u32,
    },
    /// Two instances with one VRID on one interface and family.
    #[error("VRID {vrid} configured twice on {interface}")]
    DuplicateVrid {
        /// The VRID.
        vrid: u8,
        /// The interface.
        interface: String,
    },
}

/// Adverts (or VIP adds) in a row that may fail before a Master gives up
/// its VIPs and goes to Fault (issue 14, finding 4). At the default 1 s
/// interval that is within the Backups' Master_Down_Interval.
const TX_FAULT_AFTER: u32 = 3;

/// How often status is published at most while only counters change. A
/// counter-only change waits for a wake-up the driver has anyway (the next
/// packet or timer, at the latest the [`HEARTBEAT`]) instead of one of its
/// own (issue 15: every wake-up counts for an idle daemon). State changes
/// are published at once.
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The driver's loop turns at least this often, so that
/// [`DriverStatus::progress`] moves even while nothing else happens.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);
/// A router timer due at most this long after the heartbeat stands in for
/// it (its wake-up moves [`DriverStatus::progress`] too): a Master sending
/// an advert a second wakes once a second, not twice.
const HEARTBEAT_SLACK: std::time::Duration = std::time::Duration::from_millis(100);
/// Gratuitous ARP / unsolicited NA frames sent at once at most, then
/// [`ANNOUNCE_RATE`] a second: the first frame of every VIP of a 255-VIP
/// takeover leaves at once, the other four rounds are spread out, so the
/// LAN sees at most `ANNOUNCE_BURST + ANNOUNCE_RATE` frames in any second.
const ANNOUNCE_BURST: f64 = 255.0;
/// Frames a second once the burst is spent (see [`ANNOUNCE_BURST`]).
const ANNOUNCE_RATE: f64 = 500.0;

/// Received packets handled per wake-up of the driver at most: enough to
/// drain the adverts of hundreds of instances in few wake-ups, few enough
/// that a due timer waits microseconds.
const RX_BATCH: usize = 32;

/// A timer wake-up this much past its deadline means the process did not
/// run for a while (a paused VM, a starved CPU): see
/// [`Runner::read_waiting_packets`].
const LATE_WAKE_UP: std::time::Duration = std::time::Duration::from_millis(20);

/// Pause after a failed receive before trying again.
const RECV_ERROR_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Checks `configs` as [`Driver::builder`]'s `run` would at start, without
/// opening a socket or changing anything: each [`InstanceConfig::validate`],
/// no VRID twice on one interface and family, every interface present, and
/// no VIP a permanent address of the node ([`check_vips_not_node_addresses`]).
pub async fn check_host(configs: &[InstanceConfig]) -> Result<(), DriverError> {
    let netlink = VipManager::new()?;
    check_vips_not_node_addresses(&netlink, configs).await?;
    let mut seen: Vec<(u32, bool, bool, u8)> = Vec::new();
    for config in configs {
        let vrid = config.router.vrid;
        config
            .validate()
            .map_err(|source| DriverError::Config { vrid, source })?;
        let interface = netlink.interface(&config.interface).await?;
        let key = (
            interface.index,
            config.router.primary_ip.is_ipv6(),
            !config.unicast_peers.is_empty(),
            vrid,
        );
        if seen.contains(&key) {
            return Err(DriverError::DuplicateVrid {
                vrid,
                interface: config.interface.clone(),
            });
        }
        seen.push(key);
    }
    Ok(())
}

/// Fails if a VIP of `configs` is a permanent address (no lease) on any
/// interface of the node: the driver refuses to start then, because a VIP
/// is removed whenever its router is not Master (issue 14, finding 1).
pub async fn check_vips_not_node_addresses(
    netlink: &VipManager,
    configs: &[InstanceConfig],
) -> Result<(), DriverError> {
    let vips: Vec<IpAddr> = configs
        .iter()
        .flat_map(|c| c.router.vips.iter().copied())
        .collect();
    if let Some(found) = netlink.permanent_addresses(&vips).await?.first() {
        let vrid = configs
            .iter()
            .find(|c| c.router.vips.contains(&found.addr))
            .map_or(0, |c| c.router.vrid);
        return Err(DriverError::VipIsNodeAddress {
            vrid,
            vip: found.addr,
            ifindex: found.ifindex,
        });
    }
    Ok(())
}

/// Where a driver publishes its status.
#[derive(Debug, Default)]
enum StatusSink {
    #[default]
    None,
    Full(watch::Sender<DriverStatus>),
    Instances(watch::Sender<Vec<InstanceStatus>>),
}

/// The entry point: `Driver::builder(configs).status(tx).control(rx).run(cancel)`.
#[derive(Debug)]
pub struct Driver {
    _private: (),
}

impl Driver {
    /// A driver for `configs`, to be started with [`DriverBuilder::run`].
    pub fn builder(configs: Vec<InstanceConfig>) -> DriverBuilder {
        DriverBuilder {
            configs,
            status: StatusSink::None,
            control: None,
            netlink_buffer: None,
        }
    }
}

/// The options of a driver; see [`Driver::builder`].
#[derive(Debug)]
pub struct DriverBuilder {
    configs: Vec<InstanceConfig>,
    status: StatusSink,
    control: Option<mpsc::Receiver<Control>>,
    netlink_buffer: Option<u32>,
}

impl DriverBuilder {
    /// Sets the receive buffer of the link and address notification
    /// socket, to provoke overruns in tests.
    #[doc(hidden)]
    pub fn netlink_buffer(mut self, bytes: u32) -> DriverBuilder {
        self.netlink_buffer = Some(bytes);
        self
    }

    /// Publishes a [`DriverStatus`] on `status` once started and whenever it
    /// changes.
    pub fn status(mut self, status: watch::Sender<DriverStatus>) -> DriverBuilder {
        self.status = StatusSink::Full(status);
        self
    }

    /// Publishes only the instances' statuses (replaces
    /// [`status`](Self::status)).
    pub fn instance_status(mut self, status: watch::Sender<Vec<InstanceStatus>>) -> DriverBuilder {
        self.status = StatusSink::Instances(status);
        self
    }

    /// Takes [`Control`]s (priority changes from a health tracker) from
    /// `control`. When it closes, the routers keep their current priorities.
    pub fn control(mut self, control: mpsc::Receiver<Control>) -> DriverBuilder {
        self.control = Some(control);
        self
    }

    /// Starts every router and runs them until `cancel` fires, then shuts
    /// them down gracefully: a Master sends one priority-0 advert, then its
    /// VIPs are removed (RFC 3768 §6.4.3). Fails only at start.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), DriverError> {
        let mut runner = Runner::start(self.configs, self.status, self.netlink_buffer).await?;
        runner.control = self.control;
        runner.run(cancel).await;
        Ok(())
    }
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
        let router =
            VirtualRouter::new(config.router.clone()).map_err(|e| DriverError::Config {
                vrid,
                source: e.into(),
            })?;
        let interface = netlink.interface(&config.interface).await?;
        // Ours are the VIPs with a lease; a permanent address equal to a
        // VIP is the node's own and says nothing about who was Master.
        let leased_only = config.lease != VipLease::Off;
        let present = netlink.addresses(interface.index).await?;
        if !config.router.vips.iter().any(|vip| {
            present
                .iter()
                .any(|a| a.addr == *vip && (a.valid_lft.is_some() || !leased_only))
        }) {
            continue;
        }
        let socket = VrrpSocket::open(
            interface.index,
            &interface.name,
            config.router.primary_ip.is_ipv6(),
        )?;
        let advert = router.advert(PRIORITY_RESIGN);
        send_advert(
            &socket,
            &advert,
            config.router.primary_ip,
            &config.destinations(),
        )
        .await;
        remove_vips(&netlink, interface.index, &config).await;
        info!(component = "vrrp", vrid, interface = %config.interface, "released: priority-0 advert sent, VIPs removed");
        released.push(vrid);
    }
    Ok(released)
}

/// Sends `advert` from `src` to each of `destinations`; returns how many
/// copies went out. Failures are logged, not returned: the caller counts.
async fn send_advert(
    socket: &VrrpSocket,
    advert: &Advert,
    src: IpAddr,
    destinations: &[IpAddr],
) -> u64 {
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
        match socket
            .send(buf.get(..len).unwrap_or_default(), src, dst)
            .await
        {
            Ok(()) => sent += 1,
            Err(e) => {
                warn!(component = "vrrp", vrid = advert.vrid, %dst, error = %e, "cannot send advert");
            }
        }
    }
    sent
}

/// Removes the VIPs of `config` and their IPv6 address labels from
/// interface `ifindex`, logging failures. With a lease, only leased
/// addresses are removed: a permanent one is the node's own.
async fn remove_vips(netlink: &VipManager, ifindex: u32, config: &InstanceConfig) {
    let vrid = config.router.vrid;
    for vip in config.vips() {
        let removed = if config.lease == VipLease::Off {
            netlink.remove_vip(ifindex, vip.addr).await
        } else {
            netlink.remove_leased_vip(ifindex, vip.addr).await
        };
        match removed {
            Ok(_) => {}
            Err(e @ NetlinkError::PermanentAddress { .. }) => {
                warn!(component = "vrrp", vrid, %vip, error = %e, "VIP is a permanent address now; left in place");
                continue;
            }
            Err(e) => warn!(component = "vrrp", vrid, %vip, error = %e, "cannot remove VIP"),
        }
        if let (IpAddr::V6(addr), Some(label)) = (vip.addr, config.ipv6_addr_label)
            && let Err(e) = netlink.remove_addr_label(addr, 128, label).await
        {
            warn!(component = "vrrp", vrid, %vip, error = %e, "cannot remove address label");
        }
    }
}

/// Adverts from one socket share one classifier.
struct Group {
    ifindex: u32,
    ifname: String,
    ipv6: bool,
    socket: Arc<VrrpSocket>,
    rx: Classifier,
    stats: SocketStats,
    early: Arc<EarlyDrops>,
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
    stats: InstanceStats,
    transitions: u64,
    /// The Master as far as we know: ourselves while Master, the source of
    /// the latest accepted advert while Backup.
    master: Option<IpAddr>,
    /// See [`InstanceStatus::silent_master`].
    silent_master: Option<IpAddr>,
    /// Adverts in a row that went to no destination.
    send_failures: u32,
    /// VIP adds in a row that failed.
    vip_failures: u32,
    /// Since a transmit fault, until an advert goes out again: VIPs are
    /// neither added nor announced.
    probing: bool,
}

impl Instance {
    fn status(&self) -> InstanceStatus {
        InstanceStatus {
            vrid: self.config.router.vrid,
            interface: self.config.interface.clone(),
            version: self.config.router.version,
            vips: self.vips.clone(),
            state: self.router.state(),
            transitions: self.transitions,
            priority: self.router.priority(),
            master: self.master,
            silent_master: self.silent_master,
            stats: InstanceStats {
                answers_suppressed: self.router.answers_suppressed(),
                ..self.stats
            },
        }
    }
}

struct Runner {
    netlink: VipManager,
    events: LinkEvents,
    events_open: bool,
    groups: Vec<Group>,
    instances: Vec<Instance>,
    packets: mpsc::Receiver<(usize, RecvdPacket)>,
    packets_tx: mpsc::Sender<(usize, RecvdPacket)>,
    receivers: JoinSet<()>,
    status: StatusSink,
    control: Option<mpsc::Receiver<Control>>,
    /// The timer of the loop: the earliest deadline.
    deadline: Deadline,
    /// Arming `deadline` failed: a tokio timer stands in.
    deadline_failed: bool,
    /// Instances whose adverts went out this wake-up and whose leases are
    /// to be renewed ([`Runner::flush_renewals`]).
    pending_renewals: Vec<usize>,
    /// Turns of the loop ([`DriverStatus::progress`]).
    progress: u64,
    /// Link and address notifications lost to a full receive buffer.
    netlink_overruns: u64,
    /// When links and addresses are read again after an overrun.
    resync_at: Option<Instant>,
    /// Announcement frames still to send, one entry per VIP: round-robin,
    /// so every VIP gets its first frame before any gets its second.
    announcements: VecDeque<PendingAnnounce>,
    /// Frames that may go out now (a token bucket, see [`ANNOUNCE_RATE`]).
    announce_tokens: f64,
    /// When the bucket was last filled.
    announce_filled: Instant,
    /// Each router's earliest timer as last read ([`Runner::rearm`]).
    deadlines: Vec<Option<Instant>>,
    /// When every router's timer was last read again.
    last_full_rearm: Instant,
    /// The same deadlines, earliest first, with stale entries (a deadline
    /// since moved) skipped when they come up: the next timer without
    /// asking every router at every wake-up (issue 15: with 255 instances
    /// that scan was a fifth of a Backup's CPU).
    timer_heap: BinaryHeap<Reverse<(Instant, usize)>>,
}

/// VIP adds of one lease length: the lifetime, the `(ifindex, VIP)`s, and
/// the instance each VIP belongs to.
type RenewalBatch = (VipLifetime, Vec<(u32, Vip)>, Vec<usize>);

/// Frames still owed for one VIP of one instance.
#[derive(Debug, Clone, Copy)]
struct PendingAnnounce {
    instance: usize,
    vip: Vip,
    left: u32,
}

/// After a netlink overrun, how long to wait before reading links and
/// addresses again: overruns come in storms, and one read after the storm
/// (or at least this often during it) is enough.
const RESYNC_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// Drops counted by a receiver task, before the packet is queued.
#[derive(Debug, Default)]
struct EarlyDrops {
    packets: AtomicU64,
    bad_ttl: AtomicU64,
    queue_full: AtomicU64,
}

/// Forwards what `group`'s socket receives to the driver, tagged with the
/// group's index. In a multicast group, packets with a TTL other than 255
/// (RFC 3768 §7.1; unicast peers may be routed, as keepalived) are
/// dropped here, and so is what does not fit the queue: a flood costs the
/// driver's task nothing for those.
fn spawn_receiver(
    receivers: &mut JoinSet<()>,
    index: usize,
    group: &Group,
    tx: mpsc::Sender<(usize, RecvdPacket)>,
) -> AbortHandle {
    let socket = Arc::clone(&group.socket);
    let early = Arc::clone(&group.early);
    let unicast = group.rx.is_unicast();
    receivers.spawn(async move {
        // Ends when the driver drops the receiving side, or aborts the task
        // (shutdown, interface re-created).
        loop {
            match socket.recv().await {
                Ok(packet) => {
                    early.packets.fetch_add(1, Ordering::Relaxed);
                    if !Classifier::ttl_ok(unicast, packet.ttl) {
                        early.bad_ttl.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    match tx.try_send((index, packet)) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            early.queue_full.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                    // No yield here: the socket is drained until it would
                    // block, so the driver wakes once for a burst, not once
                    // per packet (issue 15). A socket that always has data
                    // still yields: tokio's cooperative budget makes
                    // `recv` return Pending after 128 packets.
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

impl Runner {
    async fn start(
        configs: Vec<InstanceConfig>,
        status: StatusSink,
        netlink_buffer: Option<u32>,
    ) -> Result<Runner, DriverError> {
        let netlink = VipManager::new()?;
        check_vips_not_node_addresses(&netlink, &configs).await?;
        // Subscribe before reading any state, so no change falls in between.
        // Our own VIP adds and lease renewals are not read back (issue 15:
        // a Master of 100 VIPs would be woken 100 times a second for them).
        let events = LinkEvents::subscribe_ignoring_adds_of(&netlink, netlink_buffer)?;
        let mut groups: Vec<Group> = Vec::new();
        let mut instances = Vec::new();
        let mut oper_up = HashMap::new();
        for config in configs {
            let vrid = config.router.vrid;
            config
                .validate()
                .map_err(|source| DriverError::Config { vrid, source })?;
            let router =
                VirtualRouter::new(config.router.clone()).map_err(|e| DriverError::Config {
                    vrid,
                    source: e.into(),
                })?;
            let ipv6 = config.router.primary_ip.is_ipv6();
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
                g.ifindex == interface.index && g.ipv6 == ipv6 && g.rx.is_unicast() == unicast
            }) {
                Some(g) => g,
                None => {
                    let socket = VrrpSocket::open(interface.index, &interface.name, ipv6)?;
                    let mut rx = Classifier::new(unicast);
                    for own in netlink.addresses(interface.index).await? {
                        rx.add_own_addr(own.addr);
                    }
                    let announce = match interface.mac {
                        Some(_) => Some(PacketSocket::open(interface.index, 0)?),
                        None => None,
                    };
                    groups.push(Group {
                        ifindex: interface.index,
                        ifname: interface.name.clone(),
                        ipv6,
                        socket: Arc::new(socket),
                        rx,
                        stats: SocketStats::default(),
                        early: Arc::default(),
                        announce,
                        mac: interface.mac,
                        receiver: None,
                    });
                    groups.len() - 1
                }
            };
            let added = groups.get_mut(group).is_some_and(|g| {
                g.rx.add_instance(
                    instances.len(),
                    vrid,
                    config.router.primary_ip,
                    config.unicast_peers.clone(),
                )
            });
            if !added {
                return Err(DriverError::DuplicateVrid {
                    vrid,
                    interface: config.interface,
                });
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
                stats: InstanceStats::default(),
                transitions: 0,
                send_failures: 0,
                vip_failures: 0,
                probing: false,
                master: None,
                silent_master: None,
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

        let mut driver = Runner {
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
            progress: 0,
            pending_renewals: Vec::new(),
            deadline: Deadline::new()?,
            deadline_failed: false,
            netlink_overruns: 0,
            resync_at: None,
            announcements: VecDeque::new(),
            announce_tokens: ANNOUNCE_BURST,
            announce_filled: now(),
            deadlines: Vec::new(),
            last_full_rearm: now(),
            timer_heap: BinaryHeap::new(),
        };
        driver.deadlines = vec![None; driver.instances.len()];
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
        driver.flush_renewals().await;
        driver.publish();
        Ok(driver)
    }

    fn status(&self) -> DriverStatus {
        let instances: Vec<InstanceStatus> = self.instances.iter().map(Instance::status).collect();
        let mut sockets = Vec::new();
        for (index, group) in self.groups.iter().enumerate() {
            let members: Vec<usize> = (0..self.instances.len())
                .filter(|&i| self.instances.get(i).is_some_and(|x| x.group == index))
                .collect();
            sockets.push(SocketStatus {
                interface: group.ifname.clone(),
                ipv6: group.ipv6,
                unicast: group.rx.is_unicast(),
                vrids: members
                    .iter()
                    .filter_map(|&i| self.instances.get(i))
                    .map(|i| i.config.router.vrid)
                    .collect(),
                stats: SocketStats {
                    packets_received: group.early.packets.load(Ordering::Relaxed),
                    bad_ttl: group.stats.bad_ttl + group.early.bad_ttl.load(Ordering::Relaxed),
                    queue_full: group.early.queue_full.load(Ordering::Relaxed),
                    ..group.stats
                },
            });
        }
        DriverStatus {
            instances,
            sockets,
            progress: self.progress,
            netlink_overruns: self.netlink_overruns,
        }
    }

    fn publish(&self) {
        fn send<T: PartialEq>(tx: &watch::Sender<T>, current: T) {
            tx.send_if_modified(|published| {
                let changed = *published != current;
                if changed {
                    *published = current;
                }
                changed
            });
        }
        match &self.status {
            StatusSink::None => {}
            StatusSink::Full(tx) => send(tx, self.status()),
            StatusSink::Instances(tx) => send(tx, self.status().instances),
        }
    }

    /// After a late wake-up, handles the packets that arrived while the
    /// process did not run (a bounded batch, so a flood still cannot hold
    /// the timers back), before the timers that expired meanwhile: a
    /// Backup's Master_Down timer is then judged on the adverts the Master
    /// did send (RFC 5798 §6.4.2: an advert from the Master resets it)
    /// instead of taking over for an instant. The yield lets the receiver
    /// tasks, woken by the same wake-up, queue what their sockets hold.
    async fn read_waiting_packets(&mut self) {
        tokio::task::yield_now().await;
        for _ in 0..RX_BATCH {
            let Ok((group, packet)) = self.packets.try_recv() else {
                break;
            };
            self.on_packet(group, packet).await;
        }
    }

    async fn run(&mut self, cancel: CancellationToken) {
        let mut last_publish = now();
        let mut last_wake = now();
        loop {
            let router = self.next_router_timeout();
            let heartbeat = last_wake + HEARTBEAT;
            let heartbeat = router
                .is_none_or(|at| at > heartbeat + HEARTBEAT_SLACK)
                .then_some(heartbeat);
            let deadline = router
                .into_iter()
                .chain(heartbeat)
                .chain(self.resync_at)
                .chain(self.next_announce_at())
                .min();
            if let Err(e) = self.deadline.arm(deadline) {
                // Never seen; the tokio timer below stands in.
                warn!(component = "vrrp", error = %e, "cannot arm the driver's timerfd");
                self.deadline_failed = true;
            }
            let fallback = self.deadline_failed;
            let timer = &self.deadline;
            let sleep = async {
                match deadline {
                    Some(at) if fallback => {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                    }
                    Some(_) => {
                        if let Err(e) = timer.expired().await {
                            warn!(component = "vrrp", error = %e, "cannot read the driver's timerfd");
                            tokio::time::sleep(RECV_ERROR_BACKOFF).await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            // Timers, control and link events before packets: a flood of
            // protocol-112 packets must not starve adverts and takeovers
            // (issue 14, finding 7). At most RX_BATCH packets per wake-up,
            // so the timers are looked at again after each batch.
            let mut packet_only = false;
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                () = sleep => {
                    self.deadline.fired();
                    let woke = now();
                    if deadline.is_some_and(|at| woke > at + LATE_WAKE_UP) {
                        self.read_waiting_packets().await;
                    }
                    if self.resync_at.is_some_and(|at| at <= now()) {
                        self.resync_at = None;
                        self.resync().await;
                    }
                    self.on_timeout().await;
                }
                control = recv_control(&mut self.control) => match control {
                    Some(control) => self.on_control(control).await,
                    None => self.control = None,
                },
                event = self.events.next(), if self.events_open => match event {
                    Some(LinkEvent::Overrun) => {
                        self.netlink_overruns += 1;
                        self.resync_at.get_or_insert_with(|| now() + RESYNC_DELAY);
                    }
                    Some(event) => self.on_link_event(event).await,
                    None => {
                        // The netlink socket failed: routers keep running,
                        // but link and address changes go unnoticed.
                        warn!(component = "vrrp", "netlink event stream ended; link changes are no longer seen");
                        self.events_open = false;
                    }
                },
                Some((group, packet)) = self.packets.recv() => {
                    // A bounded batch per wake-up: what is already queued,
                    // up to RX_BATCH, then timers and events are looked at
                    // again.
                    let mut changed = self.on_packet(group, packet).await;
                    for _ in 1..RX_BATCH {
                        let Ok((group, packet)) = self.packets.try_recv() else {
                            break;
                        };
                        changed |= self.on_packet(group, packet).await;
                    }
                    packet_only = !changed;
                }
            }
            // Every turn of the loop is progress; the heartbeat only fills a
            // second without any (a Backup hearing one advert a second
            // wakes once a second, not twice: issue 15).
            self.progress += 1;
            last_wake = now();
            self.flush_renewals().await;
            self.send_announcements().await;
            // Status at most every PUBLISH_EVERY while only counters move
            // (what is held back goes out with a later wake-up); state
            // changes at once.
            let t = now();
            if !packet_only || t >= last_publish + PUBLISH_EVERY {
                self.publish();
                last_publish = t;
            }
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
        // Once a heartbeat, every router is asked again: a timer change
        // that missed `rearm` is late by a heartbeat at most.
        if t >= self.last_full_rearm + HEARTBEAT {
            self.last_full_rearm = t;
            for index in 0..self.instances.len() {
                self.rearm(index);
            }
        }
        let mut due = Vec::new();
        while let Some(&Reverse((at, index))) = self.timer_heap.peek() {
            if at > t {
                break;
            }
            self.timer_heap.pop();
            if let Some(slot) = self.deadlines.get_mut(index)
                && *slot == Some(at)
            {
                // Consumed: `rearm` pushes whatever comes next.
                *slot = None;
                due.push(index);
            }
        }
        // In configuration order, as before the heap.
        due.sort_unstable();
        due.dedup();
        for index in due {
            let Some(instance) = self.instances.get_mut(index) else {
                continue;
            };
            // Still due: an earlier router's actions did not move it.
            if instance.router.poll_timeout().is_some_and(|at| at <= t) {
                let actions = instance.router.handle_timeout(t);
                self.apply(index, actions).await;
            }
            self.rearm(index);
        }
    }

    /// Reads router `index`'s earliest timer again into the heap; called
    /// after everything that may move it ([`apply`](Self::apply) runs after
    /// every router call that returns actions).
    fn rearm(&mut self, index: usize) {
        let Some(instance) = self.instances.get(index) else {
            return;
        };
        let at = instance.router.poll_timeout();
        let Some(slot) = self.deadlines.get_mut(index) else {
            return;
        };
        if *slot != at {
            *slot = at;
            if let Some(at) = at {
                self.timer_heap.push(Reverse((at, index)));
            }
        }
    }

    /// The earliest router timer, dropping stale heap entries on the way.
    fn next_router_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, index))) = self.timer_heap.peek() {
            if self.deadlines.get(index) == Some(&Some(at)) {
                return Some(at);
            }
            self.timer_heap.pop();
        }
        None
    }

    /// Handles one received packet; returns whether anything but counters
    /// may have changed (the router accepted it).
    async fn on_packet(&mut self, group_index: usize, packet: RecvdPacket) -> bool {
        let Some(group) = self.groups.get_mut(group_index) else {
            return false;
        };
        let (index, advert) = match group.rx.classify(&packet) {
            Ok(accepted) => accepted,
            Err(drop) => {
                match drop.instance().and_then(|i| self.instances.get_mut(i)) {
                    Some(instance) => instance.stats.not_a_peer += 1,
                    None => group.stats.count(&drop),
                }
                debug!(component = "vrrp", ifindex = group.ifindex, src = %packet.src, reason = drop.label(), "advert dropped");
                return false;
            }
        };
        let Some(instance) = self.instances.get_mut(index) else {
            return false;
        };
        match instance.router.receive(now(), packet.src, &advert) {
            Ok(actions) => {
                instance.stats.adverts_received += 1;
                if advert.priority == PRIORITY_RESIGN {
                    instance.stats.priority_zero_received += 1;
                }
                if instance.router.state() == State::Backup && advert.priority > 0 {
                    instance.master = Some(packet.src);
                }
                self.apply(index, actions).await;
                true
            }
            Err(reason) => {
                instance.stats.count_reject(&reason);
                debug!(component = "vrrp", vrid = advert.vrid, src = %packet.src, reason = reason.reason(), "advert rejected");
                // A rejected advert should move no timer; cheap to be sure.
                self.rearm(index);
                false
            }
        }
    }

    async fn on_link_event(&mut self, event: LinkEvent) {
        // The echo of our own VIP adds and lease renewals: nothing to do.
        if let LinkEvent::AddressAdded(index, addr) = event
            && self
                .instances
                .iter()
                .any(|i| i.ifindex == index && i.vips.iter().any(|v| v.addr == addr))
        {
            return;
        }
        // Keep each socket's idea of "our own addresses" current, so a
        // packet from an address added later is still recognised as ours.
        match event {
            LinkEvent::AddressAdded(index, addr) => {
                for group in self
                    .groups
                    .iter_mut()
                    .filter(|g| g.ifindex == index && g.ipv6 == addr.is_ipv6())
                {
                    group.rx.add_own_addr(addr);
                }
            }
            LinkEvent::AddressRemoved(index, addr) => {
                for group in self.groups.iter_mut().filter(|g| g.ifindex == index) {
                    group.rx.remove_own_addr(addr);
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
                    if instance.probing {
                        continue;
                    }
                    warn!(component = "vrrp", vrid = instance.config.router.vrid, %addr,
                        "VIP removed from the interface while Master; putting it back");
                    if self.add_vips(index).await {
                        continue;
                    }
                    self.tx_fault(index)
                }
                _ => continue,
            };
            self.apply(index, actions).await;
        }
    }

    /// Notifications were lost (issue 14 F11): a missed link down or up,
    /// a VIP removed by hand, an interface re-created would go unseen.
    /// Reads the links and addresses of our interfaces again and feeds
    /// what differs from what we believe as the events we missed.
    async fn resync(&mut self) {
        warn!(
            component = "vrrp",
            overruns = self.netlink_overruns,
            "link and address notifications lost (netlink receive buffer full); reading links and addresses again"
        );
        let mut missed = Vec::new();
        // Each interface by name: gone, re-created under a new index, or
        // up or down now.
        let mut names: Vec<(String, u32)> = self
            .groups
            .iter()
            .map(|g| (g.ifname.clone(), g.ifindex))
            .collect();
        names.dedup();
        for (name, old) in names {
            match self.netlink.interface(&name).await {
                Ok(interface) => {
                    if interface.index != old {
                        missed.push(LinkEvent::LinkDeleted(old));
                    }
                    missed.push(if interface.oper_up {
                        LinkEvent::LinkUp(interface.index)
                    } else {
                        LinkEvent::LinkDown(interface.index)
                    });
                }
                Err(NetlinkError::NoSuchInterface(_)) => missed.push(LinkEvent::LinkDeleted(old)),
                Err(e) => {
                    warn!(component = "vrrp", interface = %name, error = %e, "cannot read the interface again");
                }
            }
        }
        for event in missed {
            self.on_link_event(event).await;
        }
        // Our own addresses (for the receive path), and VIPs a Master
        // should have and has not.
        let mut ifindexes: Vec<u32> = self.groups.iter().map(|g| g.ifindex).collect();
        ifindexes.dedup();
        for ifindex in ifindexes {
            let present = match self.netlink.addresses(ifindex).await {
                Ok(present) => present,
                Err(e) => {
                    warn!(component = "vrrp", ifindex, error = %e, "cannot read the addresses again");
                    continue;
                }
            };
            for address in &present {
                self.on_link_event(LinkEvent::AddressAdded(ifindex, address.addr))
                    .await;
            }
            let gone: Vec<IpAddr> = self
                .instances
                .iter()
                .filter(|i| i.ifindex == ifindex && i.router.state() == State::Master)
                .flat_map(|i| i.vips.iter().map(|v| v.addr))
                .filter(|vip| !present.iter().any(|a| a.addr == *vip))
                .collect();
            for vip in gone {
                self.on_link_event(LinkEvent::AddressRemoved(ifindex, vip))
                    .await;
            }
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
            let opened = VrrpSocket::open(ifindex, &interface.name, group.ipv6);
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
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            let Some(instance) = self.instances.get(index) else {
                return;
            };
            let vrid = instance.config.router.vrid;
            let probing = instance.probing;
            let mut fault = false;
            match action {
                Action::StateChanged { from, to, reason } => {
                    info!(component = "vrrp", vrid, interface = %instance.config.interface, %from, %to, %reason, "state changed");
                    if let Some(instance) = self.instances.get_mut(index) {
                        instance.transitions += 1;
                        if to == State::Master {
                            instance.stats.became_master += 1;
                        }
                        // `master` still names the Master last heard.
                        instance.silent_master = match (to, reason) {
                            (State::Master, Reason::MasterDown) => instance
                                .master
                                .filter(|m| *m != instance.config.router.primary_ip),
                            _ => None,
                        };
                        instance.master = match to {
                            State::Master => Some(instance.config.router.primary_ip),
                            _ => None,
                        };
                    }
                }
                // After a transmit fault the VIPs wait until an advert has
                // gone out: a Master nobody hears must not hold them.
                Action::AddVips if probing => {
                    debug!(
                        component = "vrrp",
                        vrid, "VIPs wait until an advert goes out"
                    );
                }
                Action::AddVips => fault = !self.add_vips(index).await,
                Action::RemoveVips => {
                    // Nothing more announced for VIPs we give up; what is
                    // sent next (a priority-0 advert) follows what went out.
                    self.announcements.retain(|a| a.instance != index);
                    self.remove_vips(index).await;
                }
                Action::Send(advert) => fault = self.on_sent(index, &advert).await,
                Action::Announce { .. } if probing => {}
                // Sent (paced) once this wake-up's work is done, so that a
                // takeover of many instances announces every VIP once
                // before any twice.
                Action::Announce { repeat } => self.queue_announce(index, repeat),
            }
            if fault {
                let actions = self.tx_fault(index);
                if !actions.is_empty() {
                    queue.clear();
                    queue.extend(actions);
                }
            }
        }
        self.rearm(index);
    }

    /// Gives up mastership after repeated transmit failures; returns the
    /// router's actions (VIPs removed) for [`apply`](Self::apply).
    fn tx_fault(&mut self, index: usize) -> Vec<Action> {
        let Some(instance) = self.instances.get_mut(index) else {
            return Vec::new();
        };
        let retry = instance.router.master_down_interval();
        let actions = instance.router.tx_fault(now(), retry);
        if !actions.is_empty() {
            instance.stats.tx_faults += 1;
            instance.probing = true;
            warn!(
                component = "vrrp",
                vrid = instance.config.router.vrid,
                send_failures = instance.send_failures,
                vip_failures = instance.vip_failures,
                ?retry,
                "adverts cannot be sent or VIPs cannot be added: giving up mastership"
            );
        }
        actions
    }

    /// Sends `advert` and, if it went out while Master, renews the VIP
    /// lease: only a Master that is heard may keep its VIPs (issue 14,
    /// finding 4). Returns true when the instance must go to Fault:
    /// [`TX_FAULT_AFTER`] adverts or VIP adds in a row failed.
    async fn on_sent(&mut self, index: usize, advert: &Advert) -> bool {
        let sent = self.send(index, advert).await;
        if advert.priority == PRIORITY_RESIGN {
            // Shutdown or release: nothing to renew, nothing to give up.
            return false;
        }
        let Some(instance) = self.instances.get_mut(index) else {
            return false;
        };
        let master = instance.router.state() == State::Master;
        if sent == 0 {
            instance.send_failures = instance.send_failures.saturating_add(1);
            return master && instance.send_failures >= TX_FAULT_AFTER;
        }
        instance.send_failures = 0;
        let renew = if instance.probing {
            instance.probing = false;
            info!(
                component = "vrrp",
                vrid = advert.vrid,
                "adverts go out again"
            );
            master
        } else {
            master && instance.config.lease != VipLease::Off
        };
        // Renewed together with the other adverts of this wake-up, in one netlink
        // batch ([`flush_renewals`](Self::flush_renewals)).
        if renew {
            self.pending_renewals.push(index);
        }
        false
    }

    /// Sends `advert` to the instance's destinations and counts it;
    /// returns how many copies went out.
    async fn send(&mut self, index: usize, advert: &Advert) -> u64 {
        let Some(instance) = self.instances.get(index) else {
            return 0;
        };
        let Some(group) = self.groups.get(instance.group) else {
            return 0;
        };
        let destinations = instance.config.destinations();
        let sent = send_advert(
            &group.socket,
            advert,
            instance.config.router.primary_ip,
            &destinations,
        )
        .await;
        if let Some(instance) = self.instances.get_mut(index) {
            let stats = &mut instance.stats;
            stats.adverts_sent += sent;
            stats.send_errors += destinations.len() as u64 - sent;
            if advert.priority == PRIORITY_RESIGN {
                stats.priority_zero_sent += sent;
            }
        }
        sent
    }

    /// Adds (or refreshes) the instance's VIPs and labels; returns false
    /// once [`TX_FAULT_AFTER`] adds in a row have failed.
    async fn add_vips(&mut self, index: usize) -> bool {
        self.add_vips_of(&[index])
            .await
            .first()
            .is_some_and(|ok| *ok)
    }

    /// Renews the leases of the instances that sent an advert during this
    /// wake-up and are still Master (a RemoveVips since wins), all in one
    /// netlink batch: the instances of one node become Master together
    /// and send their adverts together, so 255 renewals cost one system
    /// call instead of 255 round trips (issue 15). An instance whose adds
    /// failed [`TX_FAULT_AFTER`] times in a row gives up mastership here.
    async fn flush_renewals(&mut self) {
        let mut pending = std::mem::take(&mut self.pending_renewals);
        pending.sort_unstable();
        pending.dedup();
        pending.retain(|&i| {
            self.instances
                .get(i)
                .is_some_and(|x| x.router.state() == State::Master && !x.probing)
        });
        if pending.is_empty() {
            return;
        }
        let results = self.add_vips_of(&pending).await;
        for (index, ok) in pending.into_iter().zip(results) {
            if !ok {
                let actions = self.tx_fault(index);
                self.apply(index, actions).await;
            }
        }
    }

    /// Adds (or refreshes) the VIPs and labels of each of `indexes`, in one
    /// netlink batch per lease length; for each, false once
    /// [`TX_FAULT_AFTER`] adds in a row have failed.
    async fn add_vips_of(&mut self, indexes: &[usize]) -> Vec<bool> {
        let mut batches: Vec<RenewalBatch> = Vec::new();
        for &index in indexes {
            let Some(instance) = self.instances.get(index) else {
                continue;
            };
            let lifetime = instance.config.lifetime();
            let at = match batches.iter().position(|b| b.0 == lifetime) {
                Some(at) => at,
                None => {
                    batches.push((lifetime, Vec::new(), Vec::new()));
                    batches.len() - 1
                }
            };
            if let Some((_, vips, owners)) = batches.get_mut(at) {
                for vip in &instance.vips {
                    vips.push((instance.ifindex, *vip));
                    owners.push(index);
                }
            }
        }
        let mut failed: HashMap<usize, u64> = HashMap::new();
        for (lifetime, vips, owners) in &batches {
            let results = self.netlink.add_vips(vips, *lifetime).await;
            for (((_, vip), owner), added) in vips.iter().zip(owners).zip(results) {
                let Some(instance) = self.instances.get(*owner) else {
                    continue;
                };
                let vrid = instance.config.router.vrid;
                if let Err(e) = added {
                    warn!(component = "vrrp", vrid, %vip, error = %e, "cannot add VIP");
                    *failed.entry(*owner).or_default() += 1;
                }
                if let (IpAddr::V6(addr), Some(label)) = (vip.addr, instance.config.ipv6_addr_label)
                    && let Err(e) = self.netlink.add_addr_label(addr, 128, label).await
                {
                    warn!(component = "vrrp", vrid, %vip, error = %e, "cannot add address label");
                }
            }
        }
        indexes
            .iter()
            .map(|index| {
                let Some(instance) = self.instances.get_mut(*index) else {
                    return false;
                };
                let failed = failed.get(index).copied().unwrap_or(0);
                instance.stats.vip_errors += failed;
                if failed == 0 {
                    instance.vip_failures = 0;
                    return true;
                }
                instance.vip_failures = instance.vip_failures.saturating_add(1);
                instance.vip_failures < TX_FAULT_AFTER
            })
            .collect()
    }

    async fn remove_vips(&self, index: usize) {
        if let Some(instance) = self.instances.get(index) {
            remove_vips(&self.netlink, instance.ifindex, &instance.config).await;
        }
    }

    /// Queues `repeat` frames for every VIP of the instance (a VIP with
    /// frames still queued gets the larger count, not twice as many).
    fn queue_announce(&mut self, index: usize, repeat: u32) {
        let Some(instance) = self.instances.get(index) else {
            return;
        };
        for vip in &instance.vips {
            match self
                .announcements
                .iter_mut()
                .find(|a| a.instance == index && a.vip == *vip)
            {
                Some(queued) => queued.left = queued.left.max(repeat),
                None => self.announcements.push_back(PendingAnnounce {
                    instance: index,
                    vip: *vip,
                    left: repeat,
                }),
            }
        }
    }

    /// When the next queued frame may go out, if any is queued.
    fn next_announce_at(&self) -> Option<Instant> {
        if self.announcements.is_empty() {
            return None;
        }
        let missing = (1.0 - self.announce_tokens).max(0.0);
        Some(self.announce_filled + std::time::Duration::from_secs_f64(missing / ANNOUNCE_RATE))
    }

    /// Sends the queued frames the bucket allows now.
    async fn send_announcements(&mut self) {
        if self.announcements.is_empty() {
            return;
        }
        let t = now();
        let elapsed = t
            .saturating_duration_since(self.announce_filled)
            .as_secs_f64();
        self.announce_tokens = (self.announce_tokens + elapsed * ANNOUNCE_RATE).min(ANNOUNCE_BURST);
        self.announce_filled = t;
        while self.announce_tokens >= 1.0 {
            let Some(mut pending) = self.announcements.pop_front() else {
                break;
            };
            self.announce_tokens -= 1.0;
            if self.send_announcement(pending.instance, pending.vip).await && pending.left > 1 {
                pending.left -= 1;
                self.announcements.push_back(pending);
            }
        }
    }

    /// Sends one gratuitous ARP (IPv4) or unsolicited NA (IPv6) for `vip`;
    /// false when it cannot be sent (nothing more is tried for it).
    async fn send_announcement(&self, index: usize, vip: Vip) -> bool {
        let Some(instance) = self.instances.get(index) else {
            return false;
        };
        let Some(group) = self.groups.get(instance.group) else {
            return false;
        };
        let vrid = instance.config.router.vrid;
        let (Some(socket), Some(mac)) = (&group.announce, group.mac) else {
            debug!(
                component = "vrrp",
                vrid, "no Ethernet address: nothing to announce"
            );
            return false;
        };
        let mut frame = [0u8; if GARP_FRAME_LEN > UNSOLICITED_NA_FRAME_LEN {
            GARP_FRAME_LEN
        } else {
            UNSOLICITED_NA_FRAME_LEN
        }];
        let built = match vip.addr {
            IpAddr::V4(addr) => gratuitous_arp(mac, addr, &mut frame),
            IpAddr::V6(addr) => unsolicited_na(mac, addr, &mut frame),
        };
        let len = match built {
            Ok(len) => len,
            Err(e) => {
                warn!(component = "vrrp", vrid, error = %e, "cannot build announcement");
                return false;
            }
        };
        if let Err(e) = socket.send(frame.get(..len).unwrap_or_default()).await {
            warn!(component = "vrrp", vrid, %vip, error = %e, "cannot send announcement");
            return false;
        }
        true
    }
}
