//! Test vectors from real keepalived 2.2.7 captures (`tests/data`, copied
//! from `shared/testdata`): every VRRP advert decodes to the documented
//! fields and re-encodes byte for byte; our GARP and NA builders reproduce
//! keepalived's frames; every `DecodeError` has a named negative test made by
//! mutating a captured packet.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cplb_vrrp::wire::{
    Advert, Auth, Centis, DecodeError, EmitError, GARP_FRAME_LEN, IPPROTO_VRRP, MULTICAST_V4,
    MULTICAST_V6, UNSOLICITED_NA_FRAME_LEN, Version, gratuitous_arp, unsolicited_na,
};
use support::{Captured, MIXED, V2_ADVERT, V2_UNICAST, fix_checksum, vrrp_packets};

const NODE_A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
const NODE_B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11));
const KEEPALIVED_MAC: [u8; 6] = [0x92, 0xca, 0xe7, 0xda, 0x56, 0x60];
const KEEPALIVED_LINK_LOCAL: Ipv6Addr =
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0x90ca, 0xe7ff, 0xfeda, 0x5660);
const V6_VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
/// Filler that no field of a real packet has in every byte.
const POISON: u8 = 0xa5;

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
}

fn parse(packet: &Captured) -> Advert {
    Advert::parse(&packet.payload, packet.src, packet.dst)
        .unwrap_or_else(|e| panic!("{} #{}: {e}", packet.file, packet.index))
}

fn parse_err(payload: &[u8], src: IpAddr, dst: IpAddr) -> DecodeError {
    match Advert::parse(payload, src, dst) {
        Ok(advert) => panic!("accepted {advert:?}"),
        Err(e) => e,
    }
}

/// The first v2 advert of the multicast capture: VRID 51, priority 100.
fn v2_sample() -> Captured {
    vrrp_packets(V2_ADVERT).remove(0)
}

/// The first v3 IPv4 advert of the mixed capture (VRID 53).
fn v3_v4_sample() -> Captured {
    vrrp_packets(MIXED)
        .into_iter()
        .find(|p| p.payload[0] == 0x31 && p.src.is_ipv4())
        .unwrap()
}

/// The first v3 IPv6 advert of the mixed capture (VRID 54).
fn v3_v6_sample() -> Captured {
    vrrp_packets(MIXED)
        .into_iter()
        .find(|p| p.src.is_ipv6())
        .unwrap()
}

// ===== decoding the captures =====

#[test]
fn v2_multicast_adverts_decode_to_the_documented_fields() {
    let packets = vrrp_packets(V2_ADVERT);
    assert_eq!(packets.len(), 2);
    for packet in &packets {
        assert_eq!(
            (packet.src, packet.dst, packet.ttl),
            (NODE_A, IpAddr::V4(MULTICAST_V4), 255)
        );
        let expected = Advert {
            version: Version::V2,
            vrid: 51,
            priority: 100,
            interval: Centis(100),
            auth: Auth::Pass(*b"Example\0"),
            addrs: vec![v4(100)],
        };
        assert_eq!(parse(packet), expected);
    }
}

#[test]
fn v2_unicast_adverts_decode_including_the_shutdown_advert() {
    let packets = vrrp_packets(V2_UNICAST);
    let priorities: Vec<u8> = packets.iter().map(|p| parse(p).priority).collect();
    assert_eq!(priorities, [100, 100, 100, 0], "priority 0 on shutdown");
    for packet in &packets {
        assert_eq!((packet.src, packet.dst, packet.ttl), (NODE_A, NODE_B, 255));
        let advert = parse(packet);
        assert_eq!(
            advert,
            Advert {
                version: Version::V2,
                vrid: 52,
                priority: advert.priority,
                interval: Centis(100),
                auth: Auth::pass(b"abc"),
                addrs: vec![v4(102)],
            }
        );
    }
}

#[test]
fn mixed_capture_decodes_every_instance() {
    let v2_51 = |priority| Advert {
        version: Version::V2,
        vrid: 51,
        priority,
        interval: Centis(100),
        // auth_pass "LongerThan8Chars", truncated by keepalived to 8 bytes.
        auth: Auth::Pass(*b"LongerTh"),
        addrs: vec![v4(100), v4(101)],
    };
    let v3_53 = |priority| Advert {
        version: Version::V3,
        vrid: 53,
        priority,
        interval: Centis(50),
        auth: Auth::None,
        addrs: vec![v4(103)],
    };
    let v3_54 = |priority| Advert {
        version: Version::V3,
        vrid: 54,
        priority,
        interval: Centis(100),
        auth: Auth::None,
        addrs: vec![IpAddr::V6(V6_VIP)],
    };
    // The order on the wire, ending with one priority 0 advert per instance.
    let expected = vec![
        v3_53(200),
        v3_53(200),
        v3_53(200),
        v3_53(200),
        v2_51(150),
        v3_54(100),
        v3_53(200),
        v3_53(200),
        v2_51(150),
        v3_54(100),
        v3_53(200),
        v3_53(200),
        v2_51(150),
        v3_54(100),
        v3_53(200),
        v2_51(0),
        v3_53(0),
        v3_54(0),
    ];
    let packets = vrrp_packets(MIXED);
    let decoded: Vec<Advert> = packets.iter().map(parse).collect();
    assert_eq!(decoded, expected);
    for packet in &packets {
        assert_eq!(packet.ttl, 255);
        match packet.src {
            IpAddr::V4(_) => {
                assert_eq!((packet.src, packet.dst), (NODE_A, IpAddr::V4(MULTICAST_V4)))
            }
            IpAddr::V6(_) => {
                assert_eq!(
                    (packet.src, packet.dst),
                    (IpAddr::V6(KEEPALIVED_LINK_LOCAL), IpAddr::V6(MULTICAST_V6))
                )
            }
        }
    }
}

// ===== re-encoding the captures =====

#[test]
fn every_captured_advert_reencodes_byte_identical() {
    let packets = support::all_vrrp_packets();
    assert_eq!(packets.len(), 2 + 4 + 18);
    for packet in &packets {
        let advert = parse(packet);
        let len = packet.payload.len();
        assert_eq!(advert.buffer_len(), len);

        // Exactly sized and poisoned: every byte must be written.
        let mut exact = vec![POISON; len];
        assert_eq!(advert.emit(packet.src, packet.dst, &mut exact), Ok(len));
        assert_eq!(exact, packet.payload, "{} #{}", packet.file, packet.index);

        // Larger: nothing past the message is touched.
        let mut roomy = vec![POISON; len + 32];
        assert_eq!(advert.emit(packet.src, packet.dst, &mut roomy), Ok(len));
        assert_eq!(roomy[..len], packet.payload[..]);
        assert!(roomy[len..].iter().all(|&b| b == POISON));
    }
}

#[test]
#[cfg_attr(fuzzing, ignore = "cfg(fuzzing) builds skip checksum verification")]
fn v3_ipv4_checksum_uses_the_pseudo_header_with_the_real_destination() {
    // keepalived 2.2.7 checksums v3 over IPv4 with the RFC 5798 §5.2.8
    // pseudo-header: the same bytes fail against another destination...
    let packet = v3_v4_sample();
    assert_eq!(
        parse_err(&packet.payload, packet.src, NODE_B),
        DecodeError::BadChecksum
    );
    assert_eq!(
        parse_err(&packet.payload, NODE_B, packet.dst),
        DecodeError::BadChecksum
    );
    // ...and a plain (v2 style) checksum over the message alone does not verify.
    assert_ne!(support::ones_complement_sum(&[&packet.payload]), 0xffff);

    // v2 has no pseudo-header: any addresses verify.
    let v2 = v2_sample();
    assert!(Advert::parse(&v2.payload, NODE_B, v4(99)).is_ok());
}

#[test]
#[cfg_attr(fuzzing, ignore = "cfg(fuzzing) builds skip checksum verification")]
fn v3_ipv6_checksum_covers_the_pseudo_header() {
    let packet = v3_v6_sample();
    let other = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1));
    assert_eq!(
        parse_err(&packet.payload, other, packet.dst),
        DecodeError::BadChecksum
    );
}

// ===== GARP and unsolicited NA =====

#[test]
fn gratuitous_arp_matches_keepalived_frames() {
    let captured = support::arp_frames(MIXED);
    // 5 for 192.0.2.103, 5 each for .100 and .101.
    assert_eq!(captured.len(), 15);
    for frame in &captured {
        assert_eq!(
            frame.len(),
            GARP_FRAME_LEN,
            "keepalived does not pad to 60 bytes"
        );
        let src_mac: [u8; 6] = frame[6..12].try_into().unwrap();
        assert_eq!(src_mac, KEEPALIVED_MAC);
        let vip = Ipv4Addr::from(<[u8; 4]>::try_from(&frame[38..42]).unwrap());
        assert!([100, 101, 103].contains(&vip.octets()[3]), "{vip}");

        let mut built = [POISON; GARP_FRAME_LEN];
        assert_eq!(gratuitous_arp(src_mac, vip, &mut built), Ok(GARP_FRAME_LEN));
        assert_eq!(built[..], frame[..], "GARP for {vip}");
    }
    // What keepalived sends, spelled out: a broadcast ARP *request* with
    // sender = target = VIP and target MAC ff:ff:ff:ff:ff:ff.
    let frame = &captured[0];
    assert_eq!(frame[0..6], [0xff; 6]);
    assert_eq!(frame[20..22], [0, 1], "opcode request");
    assert_eq!(frame[32..38], [0xff; 6], "target hardware address");
    assert_eq!(frame[28..32], frame[38..42], "sender IP = target IP");
}

#[test]
fn unsolicited_na_matches_keepalived_frames() {
    let captured = support::neighbor_advert_frames(MIXED);
    assert_eq!(captured.len(), 5);
    for frame in &captured {
        assert_eq!(frame.len(), UNSOLICITED_NA_FRAME_LEN);
        let mut built = [POISON; UNSOLICITED_NA_FRAME_LEN];
        assert_eq!(
            unsolicited_na(KEEPALIVED_MAC, V6_VIP, &mut built),
            Ok(UNSOLICITED_NA_FRAME_LEN)
        );
        assert_eq!(built[..], frame[..]);
    }
    // What keepalived sends, spelled out: from the VIP itself to ff02::1,
    // hop limit 255, Override only, Target Link-Layer Address option.
    let frame = &captured[0];
    assert_eq!(frame[0..6], [0x33, 0x33, 0, 0, 0, 1]);
    assert_eq!(frame[14 + 7], 255, "hop limit");
    assert_eq!(frame[22..38], V6_VIP.octets(), "IPv6 source is the VIP");
    assert_eq!(frame[54 + 4], 0x20, "flags: override only");
    assert_eq!(
        frame[54 + 24..54 + 26],
        [2, 1],
        "target link-layer address option"
    );
}

#[test]
fn frame_builders_reject_short_buffers_without_writing() {
    let mut short = [POISON; GARP_FRAME_LEN - 1];
    assert_eq!(
        gratuitous_arp(KEEPALIVED_MAC, Ipv4Addr::new(192, 0, 2, 100), &mut short),
        Err(EmitError::BufferTooSmall {
            needed: GARP_FRAME_LEN,
            available: GARP_FRAME_LEN - 1
        })
    );
    assert!(short.iter().all(|&b| b == POISON));

    let mut short = [POISON; UNSOLICITED_NA_FRAME_LEN - 1];
    assert_eq!(
        unsolicited_na(KEEPALIVED_MAC, V6_VIP, &mut short),
        Err(EmitError::BufferTooSmall {
            needed: UNSOLICITED_NA_FRAME_LEN,
            available: UNSOLICITED_NA_FRAME_LEN - 1
        })
    );
    assert!(short.iter().all(|&b| b == POISON));
}

// ===== one negative test per DecodeError variant =====

#[test]
fn rejects_family_mismatch() {
    let packet = v2_sample();
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    assert_eq!(
        parse_err(&packet.payload, packet.src, v6),
        DecodeError::FamilyMismatch
    );
    assert_eq!(
        parse_err(&packet.payload, v6, packet.dst),
        DecodeError::FamilyMismatch
    );
}

#[test]
fn rejects_too_short() {
    let packet = v2_sample();
    for len in 0..8 {
        assert_eq!(
            parse_err(&packet.payload[..len], packet.src, packet.dst),
            DecodeError::TooShort { len }
        );
    }
}

#[test]
fn rejects_bad_version() {
    let packet = v2_sample();
    for version in [0u8, 1, 4, 15] {
        let mut payload = packet.payload.clone();
        payload[0] = (version << 4) | 1;
        fix_checksum(&mut payload, packet.src, packet.dst);
        assert_eq!(
            parse_err(&payload, packet.src, packet.dst),
            DecodeError::BadVersion(version)
        );
    }
}

#[test]
fn rejects_v2_over_ipv6() {
    let packet = v3_v6_sample();
    let mut payload = packet.payload.clone();
    payload[0] = 0x21;
    assert_eq!(
        parse_err(&payload, packet.src, packet.dst),
        DecodeError::V2OverIpv6
    );
}

#[test]
fn rejects_bad_type() {
    for packet in [v2_sample(), v3_v4_sample(), v3_v6_sample()] {
        for message_type in [0u8, 2, 15] {
            let mut payload = packet.payload.clone();
            payload[0] = (payload[0] & 0xf0) | message_type;
            fix_checksum(&mut payload, packet.src, packet.dst);
            assert_eq!(
                parse_err(&payload, packet.src, packet.dst),
                DecodeError::BadType(message_type)
            );
        }
    }
}

#[test]
fn rejects_length_mismatch() {
    for packet in [v2_sample(), v3_v4_sample(), v3_v6_sample()] {
        let len = packet.payload.len();
        // Truncated by one byte, and by a whole address.
        for cut in [1, 4] {
            let truncated = &packet.payload[..len - cut];
            assert_eq!(
                parse_err(truncated, packet.src, packet.dst),
                DecodeError::LengthMismatch {
                    expected: len,
                    actual: len - cut
                }
            );
        }
        // A trailing byte.
        let mut trailing = packet.payload.clone();
        trailing.push(0);
        assert_eq!(
            parse_err(&trailing, packet.src, packet.dst),
            DecodeError::LengthMismatch {
                expected: len,
                actual: len + 1
            }
        );
        // A count that disagrees with the bytes present.
        let mut counted = packet.payload.clone();
        counted[3] += 1;
        fix_checksum(&mut counted, packet.src, packet.dst);
        let addr_len = if packet.src.is_ipv4() { 4 } else { 16 };
        assert_eq!(
            parse_err(&counted, packet.src, packet.dst),
            DecodeError::LengthMismatch {
                expected: len + addr_len,
                actual: len
            }
        );
    }
}

#[test]
#[cfg_attr(fuzzing, ignore = "cfg(fuzzing) builds skip checksum verification")]
fn rejects_bad_checksum() {
    for packet in [v2_sample(), v3_v4_sample(), v3_v6_sample()] {
        let mut payload = packet.payload.clone();
        payload[2] ^= 0x01; // priority changed in flight
        assert_eq!(
            parse_err(&payload, packet.src, packet.dst),
            DecodeError::BadChecksum
        );
        let mut payload = packet.payload.clone();
        payload[7] ^= 0x80;
        assert_eq!(
            parse_err(&payload, packet.src, packet.dst),
            DecodeError::BadChecksum
        );
    }
}

#[test]
fn rejects_zero_vrid() {
    for packet in [v2_sample(), v3_v4_sample(), v3_v6_sample()] {
        let mut payload = packet.payload.clone();
        payload[1] = 0;
        fix_checksum(&mut payload, packet.src, packet.dst);
        assert_eq!(
            parse_err(&payload, packet.src, packet.dst),
            DecodeError::ZeroVrid
        );
    }
}

#[test]
fn rejects_unknown_auth_type() {
    let packet = v2_sample();
    // 2 was IP Authentication Header in RFC 2338, removed by RFC 3768.
    for auth_type in [2u8, 3, 255] {
        let mut payload = packet.payload.clone();
        payload[4] = auth_type;
        fix_checksum(&mut payload, packet.src, packet.dst);
        assert_eq!(
            parse_err(&payload, packet.src, packet.dst),
            DecodeError::UnknownAuthType(auth_type)
        );
    }
}

#[test]
fn decode_error_reasons_are_distinct_snake_case() {
    let all = [
        DecodeError::FamilyMismatch,
        DecodeError::TooShort { len: 0 },
        DecodeError::BadVersion(0),
        DecodeError::V2OverIpv6,
        DecodeError::BadType(0),
        DecodeError::LengthMismatch {
            expected: 0,
            actual: 0,
        },
        DecodeError::BadChecksum,
        DecodeError::ZeroVrid,
        DecodeError::UnknownAuthType(0),
    ];
    let mut reasons: Vec<&str> = all.iter().map(DecodeError::reason).collect();
    assert!(reasons.iter().all(|r| {
        r.chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
    }));
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), all.len());
}

// ===== fields the RFCs say to ignore on receive =====

#[test]
fn v3_reserved_bits_are_ignored_on_receive_and_zero_on_emit() {
    let packet = v3_v4_sample();
    let mut payload = packet.payload.clone();
    payload[4] |= 0xf0; // RFC 5798 §5.2.7 rsvd
    fix_checksum(&mut payload, packet.src, packet.dst);
    let advert = Advert::parse(&payload, packet.src, packet.dst).unwrap();
    assert_eq!(advert, parse(&packet));
    assert_eq!(advert.interval, Centis(50));
    let mut emitted = vec![POISON; advert.buffer_len()];
    advert.emit(packet.src, packet.dst, &mut emitted).unwrap();
    assert_eq!(emitted, packet.payload, "rsvd written as zero");
}

#[test]
fn v2_auth_data_is_ignored_without_auth() {
    let packet = v2_sample();
    let mut payload = packet.payload.clone();
    payload[4] = 0; // Auth Type none, "Example" left in the data
    fix_checksum(&mut payload, packet.src, packet.dst);
    let advert = Advert::parse(&payload, packet.src, packet.dst).unwrap();
    assert_eq!(advert.auth, Auth::None);
    let mut emitted = vec![POISON; advert.buffer_len()];
    advert.emit(packet.src, packet.dst, &mut emitted).unwrap();
    assert_eq!(
        emitted[12..],
        [0; 8],
        "RFC 3768 §5.3.10: zero on transmission"
    );
}

// ===== emit invariants =====

fn valid_v2() -> Advert {
    parse(&v2_sample())
}

fn emit_err(advert: &Advert, src: IpAddr, dst: IpAddr) -> EmitError {
    let mut buf = [POISON; 64];
    let err = advert.emit(src, dst, &mut buf).unwrap_err();
    assert!(buf.iter().all(|&b| b == POISON), "{err}: buffer written");
    err
}

#[test]
fn emit_rejects_broken_invariants() {
    let group = IpAddr::V4(MULTICAST_V4);
    let v6_src = IpAddr::V6(KEEPALIVED_LINK_LOCAL);
    let v6_dst = IpAddr::V6(MULTICAST_V6);

    let mut buf = [POISON; 19];
    assert_eq!(
        valid_v2().emit(NODE_A, group, &mut buf),
        Err(EmitError::BufferTooSmall {
            needed: 20,
            available: 19
        })
    );
    assert_eq!(
        emit_err(&valid_v2(), NODE_A, v6_dst),
        EmitError::FamilyMismatch
    );
    assert_eq!(emit_err(&valid_v2(), v6_src, v6_dst), EmitError::V2OverIpv6);
    assert_eq!(
        emit_err(
            &Advert {
                vrid: 0,
                ..valid_v2()
            },
            NODE_A,
            group
        ),
        EmitError::ZeroVrid
    );
    for interval in [Centis(150), Centis(1), Centis(25600)] {
        assert_eq!(
            emit_err(
                &Advert {
                    interval,
                    ..valid_v2()
                },
                NODE_A,
                group
            ),
            EmitError::BadV2Interval(interval)
        );
    }
    let v2_with_v6_addr = Advert {
        addrs: vec![v4(1), IpAddr::V6(V6_VIP)],
        ..valid_v2()
    };
    assert_eq!(
        emit_err(&v2_with_v6_addr, NODE_A, group),
        EmitError::AddrFamilyMismatch { index: 1 }
    );
    let crowded = Advert {
        addrs: vec![v4(1); 256],
        ..valid_v2()
    };
    let mut big = vec![POISON; crowded.buffer_len()];
    assert_eq!(
        crowded.emit(NODE_A, group, &mut big),
        Err(EmitError::TooManyAddrs { count: 256 })
    );

    let v3 = parse(&v3_v6_sample());
    assert_eq!(
        emit_err(
            &Advert {
                auth: Auth::pass(b"x"),
                ..v3.clone()
            },
            v6_src,
            v6_dst
        ),
        EmitError::V3WithAuth
    );
    assert_eq!(
        emit_err(
            &Advert {
                interval: Centis(4096),
                ..v3.clone()
            },
            v6_src,
            v6_dst
        ),
        EmitError::V3IntervalTooLong(Centis(4096))
    );
    assert_eq!(
        emit_err(&v3, NODE_A, group),
        EmitError::AddrFamilyMismatch { index: 0 }
    );
}

#[test]
fn emit_accepts_the_limits() {
    let group = IpAddr::V4(MULTICAST_V4);
    let slowest_v2 = Advert {
        interval: Centis::from_secs(255),
        addrs: vec![v4(1); 255],
        ..valid_v2()
    };
    let mut buf = vec![POISON; slowest_v2.buffer_len()];
    assert_eq!(
        slowest_v2.emit(NODE_A, group, &mut buf),
        Ok(8 + 255 * 4 + 8)
    );
    assert_eq!(Advert::parse(&buf, NODE_A, group), Ok(slowest_v2));

    let slowest_v3 = Advert {
        interval: Centis::V3_MAX,
        ..parse(&v3_v4_sample())
    };
    let mut buf = vec![POISON; slowest_v3.buffer_len()];
    slowest_v3.emit(NODE_A, group, &mut buf).unwrap();
    assert_eq!(buf[4..6], [0x0f, 0xff]);
    assert_eq!(Advert::parse(&buf, NODE_A, group), Ok(slowest_v3));
}

#[test]
fn constants_match_the_rfcs() {
    assert_eq!(IPPROTO_VRRP, 112);
    assert_eq!(MULTICAST_V4, Ipv4Addr::new(224, 0, 0, 18));
    assert_eq!(MULTICAST_V6, "ff02::12".parse::<Ipv6Addr>().unwrap());
    assert_eq!(GARP_FRAME_LEN, 42);
    assert_eq!(UNSOLICITED_NA_FRAME_LEN, 86);
}
