//! What a running driver publishes ([`DriverStatus`]) and what it can be
//! asked to change ([`Control`]).

use std::net::IpAddr;

use super::netlink::Vip;
use super::rx::{InstanceStats, SocketStats};
use crate::fsm::State;
use crate::wire::Version;

/// What one instance is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    /// The VRID.
    pub vrid: u8,
    /// The interface.
    pub interface: String,
    /// The protocol version.
    pub version: Version,
    /// The VIPs with their prefixes.
    pub vips: Vec<Vip>,
    /// The router's state.
    pub state: State,
    /// State changes since start.
    pub transitions: u64,
    /// The priority advertised now.
    pub priority: u8,
    /// The Master's address as far as this node knows: its own primary
    /// address while Master, the source of the latest accepted advert while
    /// Backup, `None` otherwise.
    pub master: Option<IpAddr>,
    /// While Master, when this instance took over because the Master it
    /// last heard fell silent (no advert for Master_Down_Interval, RFC 5798
    /// §6.4.2, not a priority-0 resignation or a preemption): that Master's
    /// address, the source of its adverts. Its host is likely gone (link
    /// down, crashed), so what it served is suspect. `None` otherwise.
    pub silent_master: Option<IpAddr>,
    /// The instance's counters. Drops of its socket before the VRID was
    /// known are in [`SocketStatus::stats`], once per socket.
    pub stats: InstanceStats,
}

/// One socket group: the instances sharing a raw socket (interface, family,
/// multicast or unicast).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketStatus {
    /// The interface.
    pub interface: String,
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// Unicast (else multicast).
    pub unicast: bool,
    /// The VRIDs of the instances on it.
    pub vrids: Vec<u8>,
    /// Packets received and dropped before reaching an instance.
    pub stats: SocketStats,
}

/// Everything a driver publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverStatus {
    /// One entry per instance, in configuration order.
    pub instances: Vec<InstanceStatus>,
    /// One entry per socket group.
    pub sockets: Vec<SocketStatus>,
    /// Turns of the driver's loop (a router timer, a packet, a link event,
    /// and a heartbeat when nothing else came for a second): it moves as
    /// long as the driver's loop runs, at least once a second, so a
    /// supervisor (the agent's systemd watchdog) can tell a stalled driver
    /// (a send that never completes, a starved runtime) from a live one.
    pub progress: u64,
    /// Times the kernel dropped link and address notifications (the
    /// netlink receive buffer was full); each time the driver read links
    /// and addresses again.
    pub netlink_overruns: u64,
}

/// A change asked of a running driver (see
/// [`DriverBuilder::control`](super::driver::DriverBuilder::control)).
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
