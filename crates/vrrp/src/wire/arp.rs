//! The gratuitous ARP a new master broadcasts for each IPv4 virtual address
//! (RFC 3768 §6.4.1: "broadcast a gratuitous ARP request containing the
//! virtual router MAC address for each IP address").
//!
//! Built to match keepalived 2.2.7 byte for byte (see
//! `tests/data/keepalived-mixed.pcap`): an ARP *request* (RFC 5227 §3 "ARP
//! Announcement" style sender = target = VIP), Ethernet destination
//! broadcast, ARP target hardware address ff:ff:ff:ff:ff:ff (not zero), and
//! no padding: 42 bytes, the driver pads to the 60-byte Ethernet minimum.
//!
//! ```text
//! Ethernet: dst ff:ff:ff:ff:ff:ff | src <mac> | type 0x0806
//! ARP:      htype 1 | ptype 0x0800 | hlen 6 | plen 4 | op 1 (request)
//!           sha <mac> | spa <vip> | tha ff:ff:ff:ff:ff:ff | tpa <vip>
//! ```

use std::net::Ipv4Addr;

use pnet_packet::MutablePacket;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, MutableEthernetPacket};

use super::EmitError;

const ETHERNET_HEADER_LEN: usize = 14;
const ARP_IPV4_LEN: usize = 28;
const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// The length of a gratuitous ARP frame: Ethernet header and ARP for IPv4
/// over Ethernet, unpadded (42 bytes), as keepalived sends it.
pub const GARP_FRAME_LEN: usize = ETHERNET_HEADER_LEN + ARP_IPV4_LEN;

/// Writes the gratuitous ARP request announcing `vip` at `src_mac` into the
/// front of `buf`, a complete Ethernet frame for an `AF_PACKET` socket, and
/// returns its length, [`GARP_FRAME_LEN`].
pub fn gratuitous_arp(src_mac: [u8; 6], vip: Ipv4Addr, buf: &mut [u8]) -> Result<usize, EmitError> {
    let too_small = EmitError::BufferTooSmall {
        needed: GARP_FRAME_LEN,
        available: buf.len(),
    };
    let frame = buf.get_mut(..GARP_FRAME_LEN).ok_or(too_small)?;

    let mut ethernet = MutableEthernetPacket::new(frame).ok_or(too_small)?;
    ethernet.set_destination(BROADCAST_MAC.into());
    ethernet.set_source(src_mac.into());
    ethernet.set_ethertype(EtherTypes::Arp);

    let mut arp = MutableArpPacket::new(ethernet.payload_mut()).ok_or(too_small)?;
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(ArpOperations::Request);
    arp.set_sender_hw_addr(src_mac.into());
    arp.set_sender_proto_addr(vip);
    arp.set_target_hw_addr(BROADCAST_MAC.into());
    arp.set_target_proto_addr(vip);
    Ok(GARP_FRAME_LEN)
}
