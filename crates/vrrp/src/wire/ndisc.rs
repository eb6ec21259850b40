//! The unsolicited neighbour advertisement a new master multicasts for each
//! IPv6 virtual address (RFC 5798 §6.4.1 (330): "for each IPv6 address
//! associated with the Virtual Router, send an unsolicited ND Neighbor
//! Advertisement"; RFC 4861 §7.2.6).
//!
//! Built to match keepalived 2.2.7 byte for byte (see
//! `tests/data/keepalived-mixed.pcap`): the IPv6 source is the virtual
//! address itself, the destination all-nodes ff02::1 at 33:33:00:00:00:01,
//! hop limit 255 (RFC 4861 §7.1.2), traffic class and flow label 0; flags
//! Override only (not Router, not Solicited: RFC 4861 §7.2.6), and a Target
//! Link-Layer Address option with the node's MAC (RFC 4861 §4.6.1).
//!
//! ```text
//! Ethernet: dst 33:33:00:00:00:01 | src <mac> | type 0x86dd
//! IPv6:     ver 6, tc 0, flow 0 | payload len 32 | next 58 | hop limit 255
//!           src <vip> | dst ff02::1
//! ICMPv6:   type 136 | code 0 | checksum | R=0 S=0 O=1, reserved 0
//!           target <vip> | option type 2, len 1 (8 bytes), <mac>
//! ```

use std::net::Ipv6Addr;

use pnet_packet::ethernet::{EtherTypes, MutableEthernetPacket};
use pnet_packet::icmpv6::ndp::{
    Icmpv6Codes, MutableNeighborAdvertPacket, NdpOption, NdpOptionTypes, NeighborAdvertFlags,
};
use pnet_packet::icmpv6::{self, Icmpv6Packet, Icmpv6Types};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv6::MutableIpv6Packet;
use pnet_packet::{MutablePacket, Packet};

use super::EmitError;

const ETHERNET_HEADER_LEN: usize = 14;
const IPV6_HEADER_LEN: usize = 40;
/// Type, code, checksum, flags+reserved, target address.
const NA_HEADER_LEN: usize = 24;
/// Type, length (in units of 8 bytes: 1), MAC.
const TARGET_LL_OPTION_LEN: usize = 8;
const NA_LEN: usize = NA_HEADER_LEN + TARGET_LL_OPTION_LEN;
/// RFC 4861 §7.1.2: a receiver discards ND messages with another hop limit.
const ND_HOP_LIMIT: u8 = 255;
/// The link-local all-nodes group (RFC 4291 §2.7.1).
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// ff02::1 mapped to Ethernet (RFC 2464 §7): 33:33 + the low 32 bits.
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// The length of an unsolicited NA frame: Ethernet, IPv6 and the 32-byte
/// ICMPv6 message with one Target Link-Layer Address option (86 bytes).
pub const UNSOLICITED_NA_FRAME_LEN: usize = ETHERNET_HEADER_LEN + IPV6_HEADER_LEN + NA_LEN;

/// Writes the unsolicited neighbour advertisement announcing `vip` at
/// `src_mac`, sent from `vip` to ff02::1, into the front of `buf` as a
/// complete Ethernet frame for an `AF_PACKET` socket, and returns its
/// length, [`UNSOLICITED_NA_FRAME_LEN`].
pub fn unsolicited_na(src_mac: [u8; 6], vip: Ipv6Addr, buf: &mut [u8]) -> Result<usize, EmitError> {
    let too_small = EmitError::BufferTooSmall {
        needed: UNSOLICITED_NA_FRAME_LEN,
        available: buf.len(),
    };
    let frame = buf.get_mut(..UNSOLICITED_NA_FRAME_LEN).ok_or(too_small)?;

    let mut ethernet = MutableEthernetPacket::new(frame).ok_or(too_small)?;
    ethernet.set_destination(ALL_NODES_MAC.into());
    ethernet.set_source(src_mac.into());
    ethernet.set_ethertype(EtherTypes::Ipv6);

    let mut ipv6 = MutableIpv6Packet::new(ethernet.payload_mut()).ok_or(too_small)?;
    ipv6.set_version(6);
    ipv6.set_traffic_class(0);
    ipv6.set_flow_label(0);
    ipv6.set_payload_length(NA_LEN as u16);
    ipv6.set_next_header(IpNextHeaderProtocols::Icmpv6);
    ipv6.set_hop_limit(ND_HOP_LIMIT);
    ipv6.set_source(vip);
    ipv6.set_destination(ALL_NODES);

    let mut na = MutableNeighborAdvertPacket::new(ipv6.payload_mut()).ok_or(too_small)?;
    na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
    na.set_icmpv6_code(Icmpv6Codes::NoCode);
    na.set_checksum(0);
    // RFC 4861 §7.2.6: unsolicited, so S=0; O=1 to replace cached entries.
    na.set_flags(NeighborAdvertFlags::Override);
    na.set_reserved(0);
    na.set_target_addr(vip);
    na.set_options(&[NdpOption {
        option_type: NdpOptionTypes::TargetLLAddr,
        length: 1,
        data: src_mac.to_vec(),
    }]);

    // RFC 4443 §2.3: over the ICMPv6 message and the IPv6 pseudo-header.
    let message = Icmpv6Packet::new(na.packet()).ok_or(too_small)?;
    let checksum = icmpv6::checksum(&message, &vip, &ALL_NODES);
    na.set_checksum(checksum);
    Ok(UNSOLICITED_NA_FRAME_LEN)
}
