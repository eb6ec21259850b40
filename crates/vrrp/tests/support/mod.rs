//! Test helpers: a minimal pcap reader for the keepalived captures in
//! `tests/data`, and an independent RFC 1071 checksum to re-sign mutated
//! packets.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

pub const MIXED: &str = "keepalived-mixed.pcap";
pub const V2_ADVERT: &str = "keepalived-v2-advert.pcap";
pub const V2_UNICAST: &str = "keepalived-v2-unicast.pcap";
pub const ALL_CAPTURES: [&str; 3] = [V2_ADVERT, V2_UNICAST, MIXED];

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_ARP: u16 = 0x0806;
const IPPROTO_VRRP: u8 = 112;
const IPPROTO_ICMPV6: u8 = 58;
const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;

/// The Ethernet frames of a classic little-endian, microsecond pcap file.
pub fn frames(file: &str) -> Vec<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (global, mut rest) = bytes.split_at(24);
    assert_eq!(
        global[..4],
        [0xd4, 0xc3, 0xb2, 0xa1],
        "little-endian microsecond pcap magic"
    );
    assert_eq!(
        u32::from_le_bytes(global[20..24].try_into().unwrap()),
        1,
        "LINKTYPE_ETHERNET"
    );
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let (record, tail) = rest.split_at(16);
        let captured = u32::from_le_bytes(record[8..12].try_into().unwrap()) as usize;
        let original = u32::from_le_bytes(record[12..16].try_into().unwrap()) as usize;
        assert_eq!(captured, original, "capture was not truncated");
        let (frame, tail) = tail.split_at(captured);
        frames.push(frame.to_vec());
        rest = tail;
    }
    frames
}

fn ethertype(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[12], frame[13]])
}

/// One captured VRRP advert: the IP addresses and the VRRP payload.
#[derive(Debug, Clone)]
pub struct Captured {
    /// Which file and which VRRP packet in it (0-based), for messages.
    pub file: &'static str,
    pub index: usize,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub payload: Vec<u8>,
}

/// Every VRRP packet of a capture, in order.
pub fn vrrp_packets(file: &'static str) -> Vec<Captured> {
    let mut out = Vec::new();
    for frame in frames(file) {
        let ip = &frame[14..];
        let (src, dst, ttl, payload) = match ethertype(&frame) {
            ETHERTYPE_IPV4 => {
                // IHL from the header: options are possible.
                let header_len = usize::from(ip[0] & 0x0f) * 4;
                let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
                if ip[9] != IPPROTO_VRRP {
                    continue;
                }
                let src = Ipv4Addr::from(<[u8; 4]>::try_from(&ip[12..16]).unwrap());
                let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&ip[16..20]).unwrap());
                (
                    IpAddr::V4(src),
                    IpAddr::V4(dst),
                    ip[8],
                    &ip[header_len..total_len],
                )
            }
            ETHERTYPE_IPV6 => {
                let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
                if ip[6] != IPPROTO_VRRP {
                    continue;
                }
                let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
                let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
                (
                    IpAddr::V6(src),
                    IpAddr::V6(dst),
                    ip[7],
                    &ip[40..40 + payload_len],
                )
            }
            _ => continue,
        };
        out.push(Captured {
            file,
            index: out.len(),
            src,
            dst,
            ttl,
            payload: payload.to_vec(),
        });
    }
    out
}

/// Every VRRP packet of every capture.
pub fn all_vrrp_packets() -> Vec<Captured> {
    ALL_CAPTURES
        .iter()
        .flat_map(|file| vrrp_packets(file))
        .collect()
}

/// The ARP frames of a capture.
pub fn arp_frames(file: &str) -> Vec<Vec<u8>> {
    frames(file)
        .into_iter()
        .filter(|f| ethertype(f) == ETHERTYPE_ARP)
        .collect()
}

/// The ICMPv6 neighbour advertisement frames of a capture.
pub fn neighbor_advert_frames(file: &str) -> Vec<Vec<u8>> {
    frames(file)
        .into_iter()
        .filter(|f| {
            ethertype(f) == ETHERTYPE_IPV6
                && f[14 + 6] == IPPROTO_ICMPV6
                && f[14 + 40] == ICMPV6_NEIGHBOR_ADVERT
        })
        .collect()
}

/// RFC 1071 one's complement sum, folded, not yet complemented.
pub fn ones_complement_sum(chunks: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = chunks.concat();
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Rewrites the checksum of a VRRP message after a test mutated it: plain
/// for v2 (RFC 3768 §5.3.8), with the pseudo-header for v3 (RFC 5798 §5.2.8).
pub fn fix_checksum(payload: &mut [u8], src: IpAddr, dst: IpAddr) {
    payload[6] = 0;
    payload[7] = 0;
    let len = payload.len() as u32;
    let pseudo: Vec<u8> = match (payload[0] >> 4, src, dst) {
        (2, _, _) => Vec::new(),
        (_, IpAddr::V4(s), IpAddr::V4(d)) => [
            &s.octets()[..],
            &d.octets(),
            &[0, IPPROTO_VRRP],
            &(len as u16).to_be_bytes(),
        ]
        .concat(),
        (_, IpAddr::V6(s), IpAddr::V6(d)) => [
            &s.octets()[..],
            &d.octets(),
            &len.to_be_bytes(),
            &[0, 0, 0, IPPROTO_VRRP],
        ]
        .concat(),
        _ => panic!("mixed families"),
    };
    let checksum = !ones_complement_sum(&[&pseudo, payload]);
    payload[6..8].copy_from_slice(&checksum.to_be_bytes());
}
