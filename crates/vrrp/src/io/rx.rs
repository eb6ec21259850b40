//! The receive path, pure: from one packet a socket delivered to the
//! instance it is for and the decoded advert, or one typed reason to drop it.
//!
//! [`Classifier`] holds what one socket group (interface, family, multicast
//! or unicast) needs to know: this node's addresses and, per instance, its
//! VRID and unicast peers. [`Classifier::classify`] applies, in order, the
//! IP-level checks (TTL, own address, link-local source), the codec's
//! checks ([`Advert::parse`]), the VRID demultiplexing and the instance's
//! peer check. The router's own checks ([`crate::fsm::VirtualRouter::receive`])
//! come after. [`SocketStats`] and [`InstanceStats`] count the outcomes,
//! one named field per counter.

use std::net::IpAddr;

use super::socket::{RecvdPacket, VRRP_TTL};
use crate::fsm::RejectReason;
use crate::wire::{Advert, Centis, DecodeError, Version};

/// Why a received packet was dropped before reaching a router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RxDrop {
    /// TTL / hop limit not 255: it crossed a router (RFC 3768 §7.1, RFC
    /// 5798 §7.1).
    #[error("TTL {0}, not 255")]
    BadTtl(u8),
    /// A multicast destination on a unicast group, or a unicast one on a
    /// multicast group: keepalived 2.4.3 drops both (vrrp.c:1264-1278,
    /// "Expected unicast packet but received multicast packet").
    #[error("destination {0} does not match the group's mode")]
    WrongDestination(IpAddr),
    /// Sent by this node (one of its own addresses as source).
    #[error("sent from one of this node's addresses")]
    OwnAddress,
    /// Multicast IPv6 with a source that is not link-local (RFC 5798
    /// §5.1.2.1: the source is the sender's link-local address).
    #[error("IPv6 source is not link-local")]
    NotLinkLocal,
    /// The codec rejected it.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// No instance on this socket has the advert's VRID (RFC 3768 §7.1:
    /// "MUST verify that the VRID is configured").
    #[error("VRID {0} is not configured here")]
    UnknownVrid(u8),
    /// Unicast mode, and the source is not one of the instance's peers.
    #[error("source is not a configured unicast peer")]
    NotAPeer {
        /// The instance (index given to [`Classifier::add_instance`]).
        instance: usize,
    },
}

impl RxDrop {
    /// A stable snake_case name, for counters, metric labels and logs.
    pub const fn label(&self) -> &'static str {
        match self {
            RxDrop::BadTtl(_) => "bad_ttl",
            RxDrop::WrongDestination(_) => "wrong_destination",
            RxDrop::OwnAddress => "own_address",
            RxDrop::NotLinkLocal => "not_link_local",
            RxDrop::Decode(e) => e.reason(),
            RxDrop::UnknownVrid(_) => "unknown_vrid",
            RxDrop::NotAPeer { .. } => "not_a_peer",
        }
    }

    /// The instance the drop belongs to; `None` for drops of the socket
    /// group as a whole (counted once, in [`SocketStats`]).
    pub const fn instance(&self) -> Option<usize> {
        match self {
            RxDrop::NotAPeer { instance } => Some(*instance),
            _ => None,
        }
    }
}

/// One instance as the receive path sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    index: usize,
    vrid: u8,
    primary_ip: IpAddr,
    unicast_peers: Vec<IpAddr>,
}

/// The receive checks of one socket group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classifier {
    /// This node's addresses on the interface: packets from them are ours.
    own_addrs: Vec<IpAddr>,
    /// Unicast group: peers are checked per instance and IPv6 sources need
    /// not be link-local.
    unicast: bool,
    members: Vec<Member>,
}

impl Classifier {
    /// A classifier for a multicast (`unicast` false) or unicast group.
    pub fn new(unicast: bool) -> Classifier {
        Classifier {
            own_addrs: Vec::new(),
            unicast,
            members: Vec::new(),
        }
    }

    /// Adds an instance: adverts for `vrid` go to `index`, from
    /// `unicast_peers` only in a unicast group. Its `primary_ip` counts as
    /// our own address for as long as the instance lives. Returns false
    /// (and changes nothing) if the VRID is already taken here.
    pub fn add_instance(
        &mut self,
        index: usize,
        vrid: u8,
        primary_ip: IpAddr,
        unicast_peers: Vec<IpAddr>,
    ) -> bool {
        if self.members.iter().any(|m| m.vrid == vrid) {
            return false;
        }
        self.members.push(Member {
            index,
            vrid,
            primary_ip,
            unicast_peers,
        });
        true
    }

    /// Whether the group is in unicast mode.
    pub fn is_unicast(&self) -> bool {
        self.unicast
    }

    /// Records an address of this node (at start, or when one appears).
    pub fn add_own_addr(&mut self, addr: IpAddr) {
        if !self.own_addrs.contains(&addr) {
            self.own_addrs.push(addr);
        }
    }

    /// Forgets an address of this node that went away. The instances'
    /// advert sources stay ours whatever happens to the interface.
    pub fn remove_own_addr(&mut self, addr: IpAddr) {
        if !self.members.iter().any(|m| m.primary_ip == addr) {
            self.own_addrs.retain(|a| *a != addr);
        }
    }

    /// Whether `addr` is one of ours.
    pub fn is_own(&self, addr: IpAddr) -> bool {
        self.own_addrs.contains(&addr) || self.members.iter().any(|m| m.primary_ip == addr)
    }

    /// Whether a packet with this TTL / hop limit passes: RFC 3768 §7.1 /
    /// RFC 5798 §7.1 "MUST verify that the IP TTL / Hop Limit is 255" in a
    /// multicast group only. Unicast peers may be a routed hop apart:
    /// keepalived 2.4.3 checks the TTL "but not if unicast" (vrrp.c:1027-1029;
    /// its per-peer `min_ttl`/`max_ttl` default to 0..255, vrrp_data.c:1055).
    pub fn ttl_ok(unicast: bool, ttl: u8) -> bool {
        unicast || ttl == VRRP_TTL
    }

    /// The checks that need neither decoding nor the instances, cheap enough
    /// to run before a packet is queued: TTL in multicast mode
    /// ([`ttl_ok`](Self::ttl_ok)), a destination matching the mode
    /// (multicast group vs our unicast address, as keepalived,
    /// vrrp.c:1264-1278), own address, and for IPv6 multicast a link-local
    /// source (RFC 5798 §5.1.2.1).
    pub fn precheck(&self, packet: &RecvdPacket) -> Result<(), RxDrop> {
        if !Self::ttl_ok(self.unicast, packet.ttl) {
            return Err(RxDrop::BadTtl(packet.ttl));
        }
        if packet.dst.is_multicast() == self.unicast {
            return Err(RxDrop::WrongDestination(packet.dst));
        }
        if self.is_own(packet.src) {
            return Err(RxDrop::OwnAddress);
        }
        if !self.unicast && matches!(packet.src, IpAddr::V6(src) if !src.is_unicast_link_local()) {
            return Err(RxDrop::NotLinkLocal);
        }
        Ok(())
    }

    /// Every check up to the router: [`precheck`](Self::precheck), the
    /// codec ([`Advert::parse`]: length, version, type, checksum, VRID 0,
    /// auth type), the VRID demultiplexing and, in unicast mode, the
    /// instance's peer list. Returns the instance index and the advert.
    pub fn classify(&self, packet: &RecvdPacket) -> Result<(usize, Advert), RxDrop> {
        self.precheck(packet)?;
        let advert = Advert::parse(&packet.payload, packet.src, packet.dst)?;
        let member = self
            .members
            .iter()
            .find(|m| m.vrid == advert.vrid)
            .ok_or(RxDrop::UnknownVrid(advert.vrid))?;
        if self.unicast && !member.unicast_peers.contains(&packet.src) {
            return Err(RxDrop::NotAPeer {
                instance: member.index,
            });
        }
        Ok((member.index, advert))
    }
}

/// Drops of one socket group before any instance was found, one field per
/// reason (keepalived's and holo's per-reason statistics). The instance
/// counters never include them, so sums over instances and over sockets
/// add up without double counting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// Packets the socket delivered, accepted or not.
    pub packets_received: u64,
    /// Received packets dropped because the receive queue was full.
    pub queue_full: u64,
    /// [`RxDrop::BadTtl`].
    pub bad_ttl: u64,
    /// [`RxDrop::WrongDestination`].
    pub wrong_destination: u64,
    /// [`RxDrop::OwnAddress`].
    pub own_address: u64,
    /// [`RxDrop::NotLinkLocal`].
    pub not_link_local: u64,
    /// [`RxDrop::UnknownVrid`].
    pub unknown_vrid: u64,
    /// [`DecodeError::FamilyMismatch`].
    pub family_mismatch: u64,
    /// [`DecodeError::TooShort`].
    pub too_short: u64,
    /// [`DecodeError::BadVersion`].
    pub bad_version: u64,
    /// [`DecodeError::V2OverIpv6`].
    pub v2_over_ipv6: u64,
    /// [`DecodeError::BadType`].
    pub bad_type: u64,
    /// [`DecodeError::LengthMismatch`].
    pub length_mismatch: u64,
    /// [`DecodeError::BadChecksum`].
    pub bad_checksum: u64,
    /// [`DecodeError::ZeroVrid`].
    pub zero_vrid: u64,
    /// [`DecodeError::UnknownAuthType`].
    pub unknown_auth_type: u64,
}

/// One value of each socket-level drop reason, for [`SocketStats::drops`].
const SOCKET_DROPS: [RxDrop; 14] = [
    RxDrop::BadTtl(0),
    RxDrop::WrongDestination(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
    RxDrop::OwnAddress,
    RxDrop::NotLinkLocal,
    RxDrop::UnknownVrid(0),
    RxDrop::Decode(DecodeError::FamilyMismatch),
    RxDrop::Decode(DecodeError::TooShort { len: 0 }),
    RxDrop::Decode(DecodeError::BadVersion(0)),
    RxDrop::Decode(DecodeError::V2OverIpv6),
    RxDrop::Decode(DecodeError::BadType(0)),
    RxDrop::Decode(DecodeError::LengthMismatch {
        expected: 0,
        actual: 0,
    }),
    RxDrop::Decode(DecodeError::BadChecksum),
    RxDrop::Decode(DecodeError::ZeroVrid),
    RxDrop::Decode(DecodeError::UnknownAuthType(0)),
];

impl SocketStats {
    /// The label of the queue-full drop (not an [`RxDrop`]: the packet was
    /// never classified).
    pub const QUEUE_FULL: &'static str = "queue_full";

    /// Counts a socket-level drop; an instance's drop
    /// ([`RxDrop::instance`]) is not counted here.
    pub fn count(&mut self, drop: &RxDrop) {
        if let Some(slot) = self.slot(drop) {
            *slot += 1;
        }
    }

    /// The count of one reason (0 for an instance-level reason).
    pub fn get(&self, drop: &RxDrop) -> u64 {
        let mut copy = *self;
        copy.slot(drop).map_or(0, |slot| *slot)
    }

    fn slot(&mut self, drop: &RxDrop) -> Option<&mut u64> {
        Some(match drop {
            RxDrop::BadTtl(_) => &mut self.bad_ttl,
            RxDrop::WrongDestination(_) => &mut self.wrong_destination,
            RxDrop::OwnAddress => &mut self.own_address,
            RxDrop::NotLinkLocal => &mut self.not_link_local,
            RxDrop::UnknownVrid(_) => &mut self.unknown_vrid,
            RxDrop::NotAPeer { .. } => return None,
            RxDrop::Decode(e) => match e {
                DecodeError::FamilyMismatch => &mut self.family_mismatch,
                DecodeError::TooShort { .. } => &mut self.too_short,
                DecodeError::BadVersion(_) => &mut self.bad_version,
                DecodeError::V2OverIpv6 => &mut self.v2_over_ipv6,
                DecodeError::BadType(_) => &mut self.bad_type,
                DecodeError::LengthMismatch { .. } => &mut self.length_mismatch,
                DecodeError::BadChecksum => &mut self.bad_checksum,
                DecodeError::ZeroVrid => &mut self.zero_vrid,
                DecodeError::UnknownAuthType(_) => &mut self.unknown_auth_type,
            },
        })
    }

    /// Every drop reason with its count (zeros included), labelled with
    /// [`RxDrop::label`] and [`SocketStats::QUEUE_FULL`].
    pub fn drops(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        std::iter::once((Self::QUEUE_FULL, self.queue_full))
            .chain(SOCKET_DROPS.iter().map(|d| (d.label(), self.get(d))))
    }

    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops().map(|(_, n)| n).sum()
    }
}

/// One instance's counters: adverts in and out, and every advert dropped
/// after it was found to be for this instance, one field per reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceStats {
    /// Adverts the router accepted.
    pub adverts_received: u64,
    /// Of those, priority 0 (a Master resigning).
    pub priority_zero_received: u64,
    /// Adverts sent (one per destination in unicast mode).
    pub adverts_sent: u64,
    /// Of those, priority 0.
    pub priority_zero_sent: u64,
    /// Adverts that could not be sent to a destination.
    pub send_errors: u64,
    /// VIP adds or refreshes the kernel refused.
    pub vip_errors: u64,
    /// Transitions to Master.
    pub became_master: u64,
    /// Transitions to Fault because adverts could not be sent or VIPs added.
    pub tx_faults: u64,
    /// Lower-priority adverts not answered, because one was answered less
    /// than an advertisement interval ago.
    pub answers_suppressed: u64,
    /// [`RxDrop::NotAPeer`].
    pub not_a_peer: u64,
    /// [`RejectReason::Version`].
    pub version_mismatch: u64,
    /// [`RejectReason::Vrid`].
    pub vrid_mismatch: u64,
    /// [`RejectReason::AuthType`].
    pub auth_type_mismatch: u64,
    /// [`RejectReason::AuthPassword`].
    pub auth_failure: u64,
    /// [`RejectReason::Interval`].
    pub interval_mismatch: u64,
    /// [`RejectReason::Addresses`].
    pub address_list_mismatch: u64,
    /// [`RejectReason::OwnAdvert`].
    pub own_advert: u64,
    /// [`RejectReason::Family`].
    pub family_mismatch: u64,
}

/// One value of each reject reason, for [`InstanceStats::drops`].
const REJECTS: [RejectReason; 8] = [
    RejectReason::Version { got: Version::V2 },
    RejectReason::Vrid(0),
    RejectReason::AuthType { got: 0, want: 0 },
    RejectReason::AuthPassword,
    RejectReason::Interval {
        got: Centis(0),
        want: Centis(0),
    },
    RejectReason::Addresses,
    RejectReason::OwnAdvert,
    RejectReason::Family,
];

impl InstanceStats {
    /// Counts an advert the router rejected.
    pub fn count_reject(&mut self, reject: &RejectReason) {
        *self.reject_slot(reject) += 1;
    }

    /// The count of one reject reason.
    pub fn rejects_of(&self, reject: &RejectReason) -> u64 {
        let mut copy = *self;
        *copy.reject_slot(reject)
    }

    fn reject_slot(&mut self, reject: &RejectReason) -> &mut u64 {
        match reject {
            RejectReason::Version { .. } => &mut self.version_mismatch,
            RejectReason::Vrid(_) => &mut self.vrid_mismatch,
            RejectReason::AuthType { .. } => &mut self.auth_type_mismatch,
            RejectReason::AuthPassword => &mut self.auth_failure,
            RejectReason::Interval { .. } => &mut self.interval_mismatch,
            RejectReason::Addresses => &mut self.address_list_mismatch,
            RejectReason::OwnAdvert => &mut self.own_advert,
            RejectReason::Family => &mut self.family_mismatch,
        }
    }

    /// Every drop of this instance with its count (zeros included): the
    /// peer check ([`RxDrop::label`]) and the router's rejects
    /// ([`RejectReason::reason`]).
    pub fn drops(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let peer = RxDrop::NotAPeer { instance: 0 };
        std::iter::once((peer.label(), self.not_a_peer))
            .chain(REJECTS.iter().map(|r| (r.reason(), self.rejects_of(r))))
    }

    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops().map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Auth;
    use std::collections::BTreeSet;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn advert(vrid: u8) -> Advert {
        Advert {
            version: Version::V3,
            vrid,
            priority: 100,
            interval: Centis(100),
            auth: Auth::None,
            addrs: vec![ip("192.0.2.100")],
        }
    }

    fn packet(src: &str, dst: &str, ttl: u8, advert: &Advert) -> RecvdPacket {
        let (src, dst) = (ip(src), ip(dst));
        let mut buf = vec![0; advert.buffer_len()];
        let n = advert.emit(src, dst, &mut buf).unwrap();
        buf.truncate(n);
        RecvdPacket {
            src,
            dst,
            ttl,
            tos: None,
            payload: buf,
        }
    }

    #[test]
    fn each_check_gives_its_reason_in_rfc_order() {
        let mut c = Classifier::new(false);
        assert!(c.add_instance(4, 7, ip("192.0.2.1"), vec![]));
        assert!(!c.add_instance(5, 7, ip("192.0.2.1"), vec![]), "VRID taken");
        c.add_own_addr(ip("192.0.2.50"));

        let good = packet("192.0.2.2", "224.0.0.18", 255, &advert(7));
        assert_eq!(c.classify(&good), Ok((4, advert(7))));
        // TTL first, even from our own address.
        let own_hop = packet("192.0.2.1", "224.0.0.18", 254, &advert(7));
        assert_eq!(c.classify(&own_hop), Err(RxDrop::BadTtl(254)));
        for own in ["192.0.2.1", "192.0.2.50"] {
            let p = packet(own, "224.0.0.18", 255, &advert(7));
            assert_eq!(c.classify(&p), Err(RxDrop::OwnAddress), "{own}");
        }
        let mut corrupt = good.clone();
        corrupt.payload[6] ^= 0xff;
        assert_eq!(
            c.classify(&corrupt),
            Err(RxDrop::Decode(DecodeError::BadChecksum))
        );
        let other = packet("192.0.2.2", "224.0.0.18", 255, &advert(8));
        assert_eq!(c.classify(&other), Err(RxDrop::UnknownVrid(8)));

        // An address that went away is no longer ours; a primary stays.
        c.remove_own_addr(ip("192.0.2.50"));
        c.remove_own_addr(ip("192.0.2.1"));
        assert!(
            c.classify(&packet("192.0.2.50", "224.0.0.18", 255, &advert(7)))
                .is_ok()
        );
        assert!(c.is_own(ip("192.0.2.1")));
    }

    #[test]
    fn unicast_peers_are_checked_per_instance_once() {
        let mut c = Classifier::new(true);
        c.add_instance(0, 1, ip("192.0.2.1"), vec![ip("192.0.2.2")]);
        c.add_instance(1, 2, ip("192.0.2.1"), vec![ip("192.0.2.3")]);
        let to = |src: &str, vrid| packet(src, "192.0.2.1", 255, &advert(vrid));
        assert_eq!(c.classify(&to("192.0.2.2", 1)).map(|r| r.0), Ok(0));
        assert_eq!(c.classify(&to("192.0.2.3", 2)).map(|r| r.0), Ok(1));
        // A peer of the other instance is not a peer of this one.
        assert_eq!(
            c.classify(&to("192.0.2.3", 1)),
            Err(RxDrop::NotAPeer { instance: 0 })
        );
        // Unicast IPv6 sources need not be link-local.
        let v6 = Advert {
            addrs: vec![ip("2001:db8::100")],
            ..advert(3)
        };
        c.add_instance(2, 3, ip("2001:db8::1"), vec![ip("2001:db8::2")]);
        assert!(
            c.classify(&packet("2001:db8::2", "2001:db8::1", 255, &v6))
                .is_ok()
        );
    }

    /// Issue 14 item 12 / F15: keepalived 2.4.3 checks TTL only in multicast
    /// mode (vrrp.c:1027-1029) and drops a destination that does not match
    /// the mode in both directions (vrrp.c:1264-1278).
    #[test]
    fn unicast_accepts_any_ttl_and_each_mode_drops_the_other_destination() {
        let mut uni = Classifier::new(true);
        uni.add_instance(0, 1, ip("192.0.2.1"), vec![ip("198.51.100.2")]);
        uni.add_instance(1, 3, ip("2001:db8::1"), vec![ip("2001:db8:1::2")]);
        // A peer a routed hop (or several) away.
        for ttl in [254, 64, 1] {
            assert_eq!(
                uni.classify(&packet("198.51.100.2", "192.0.2.1", ttl, &advert(1)))
                    .map(|r| r.0),
                Ok(0),
                "ttl {ttl}"
            );
        }
        let v6 = Advert {
            addrs: vec![ip("2001:db8::100")],
            ..advert(3)
        };
        assert_eq!(
            uni.classify(&packet("2001:db8:1::2", "2001:db8::1", 63, &v6))
                .map(|r| r.0),
            Ok(1)
        );
        // A multicast advert from a listed peer reaching a unicast group.
        assert_eq!(
            uni.classify(&packet("198.51.100.2", "224.0.0.18", 255, &advert(1))),
            Err(RxDrop::WrongDestination(ip("224.0.0.18")))
        );
        assert_eq!(
            uni.classify(&packet("2001:db8:1::2", "ff02::12", 255, &v6)),
            Err(RxDrop::WrongDestination(ip("ff02::12")))
        );

        // Multicast: TTL still 255 only, and a unicast destination dropped.
        let mut multi = Classifier::new(false);
        multi.add_instance(0, 1, ip("192.0.2.1"), vec![]);
        assert_eq!(
            multi.classify(&packet("192.0.2.2", "224.0.0.18", 254, &advert(1))),
            Err(RxDrop::BadTtl(254))
        );
        assert_eq!(
            multi.classify(&packet("192.0.2.2", "192.0.2.1", 255, &advert(1))),
            Err(RxDrop::WrongDestination(ip("192.0.2.1")))
        );
        let mut stats = SocketStats::default();
        stats.count(&RxDrop::WrongDestination(ip("224.0.0.18")));
        assert_eq!(stats.wrong_destination, 1);
    }

    #[test]
    fn multicast_ipv6_needs_a_link_local_source() {
        let v6 = Advert {
            addrs: vec![ip("2001:db8::100")],
            ..advert(9)
        };
        let mut c = Classifier::new(false);
        c.add_instance(0, 9, ip("fe80::1"), vec![]);
        assert!(c.classify(&packet("fe80::2", "ff02::12", 255, &v6)).is_ok());
        assert_eq!(
            c.classify(&packet("2001:db8::2", "ff02::12", 255, &v6)),
            Err(RxDrop::NotLinkLocal)
        );
    }

    #[test]
    fn counters_have_one_field_and_one_label_per_reason() {
        let mut s = SocketStats::default();
        for (n, d) in SOCKET_DROPS.iter().enumerate() {
            for _ in 0..=n {
                s.count(d);
            }
        }
        s.count(&RxDrop::NotAPeer { instance: 0 });
        let labels: BTreeSet<&str> = s.drops().map(|(l, _)| l).collect();
        assert_eq!(labels.len(), SOCKET_DROPS.len() + 1, "labels are distinct");
        // Each reason landed in its own field: counts 1..=14 all present.
        let counts: BTreeSet<u64> = s.drops().map(|(_, n)| n).collect();
        assert_eq!(counts, (0..=14).collect());
        assert_eq!(s.total_drops(), (1..=14).sum::<u64>());

        let mut i = InstanceStats::default();
        for (n, r) in REJECTS.iter().enumerate() {
            for _ in 0..=n {
                i.count_reject(r);
            }
        }
        let labels: BTreeSet<&str> = i.drops().map(|(l, _)| l).collect();
        assert_eq!(labels.len(), REJECTS.len() + 1);
        let counts: BTreeSet<u64> = i.drops().map(|(_, n)| n).collect();
        assert_eq!(counts, (0..=8).collect());
    }
}
