//! Property tests of the advert codec: round trips for every valid advert,
//! no panics on any input, and single-bit corruption never slipping through
//! as a different message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cplb_vrrp::wire::{Advert, Auth, Centis, Version};
use proptest::collection::vec;
use proptest::prelude::*;

/// A valid advert with IP header addresses that fit it.
#[derive(Debug, Clone)]
struct Case {
    advert: Advert,
    src: IpAddr,
    dst: IpAddr,
}

fn v4_addr() -> impl Strategy<Value = IpAddr> {
    any::<Ipv4Addr>().prop_map(IpAddr::V4)
}

fn v6_addr() -> impl Strategy<Value = IpAddr> {
    any::<Ipv6Addr>().prop_map(IpAddr::V6)
}

fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![Just(Auth::None), any::<[u8; 8]>().prop_map(Auth::Pass)]
}

/// VRRPv2: IPv4, whole seconds up to 255 s, with or without PASS auth.
fn v2_case(addrs: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Case> {
    (
        1..=255u8,
        any::<u8>(),
        any::<u8>(),
        auth(),
        vec(v4_addr(), addrs),
        v4_addr(),
        v4_addr(),
    )
        .prop_map(|(vrid, priority, secs, auth, addrs, src, dst)| Case {
            advert: Advert {
                version: Version::V2,
                vrid,
                priority,
                interval: Centis::from_secs(secs),
                auth,
                addrs,
            },
            src,
            dst,
        })
}

/// VRRPv3 over IPv4 or IPv6: 12-bit centisecond interval, no auth.
fn v3_case(addrs: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Case> {
    let v4 = (vec(v4_addr(), addrs.clone()), v4_addr(), v4_addr()).boxed();
    let v6 = (vec(v6_addr(), addrs), v6_addr(), v6_addr()).boxed();
    (
        1..=255u8,
        any::<u8>(),
        0..=Centis::V3_MAX.0,
        prop_oneof![v4, v6],
    )
        .prop_map(|(vrid, priority, centis, (addrs, src, dst))| Case {
            advert: Advert {
                version: Version::V3,
                vrid,
                priority,
                interval: Centis(centis),
                auth: Auth::None,
                addrs,
            },
            src,
            dst,
        })
}

fn valid_case() -> impl Strategy<Value = Case> {
    prop_oneof![v2_case(0..=20), v3_case(0..=20)]
}

fn emit(case: &Case) -> Vec<u8> {
    let mut buf = vec![0xa5; case.advert.buffer_len()];
    let len = case
        .advert
        .emit(case.src, case.dst, &mut buf)
        .expect("valid advert emits");
    assert_eq!(len, buf.len());
    buf
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![v4_addr(), v6_addr()]
}

proptest! {
    #[test]
    fn valid_adverts_round_trip(case in valid_case()) {
        let bytes = emit(&case);
        let parsed = Advert::parse(&bytes, case.src, case.dst);
        prop_assert_eq!(parsed.as_ref(), Ok(&case.advert));
        let reemitted = emit(&Case { advert: parsed.unwrap(), ..case });
        prop_assert_eq!(reemitted, bytes);
    }

    #[test]
    fn parse_never_panics(
        payload in vec(any::<u8>(), 0..600),
        src in any_ip(),
        dst in any_ip(),
    ) {
        // Whatever the outcome, a success must re-emit to the same bytes
        // (the generator rarely gets a valid checksum, but when it does...).
        if let Ok(advert) = Advert::parse(&payload, src, dst) {
            let mut buf = vec![0; advert.buffer_len()];
            prop_assert!(advert.emit(src, dst, &mut buf).is_ok());
        }
    }

    #[test]
    fn parse_never_panics_on_plausible_headers(
        version_type in prop::sample::select(vec![0x21u8, 0x31, 0x20, 0x41]),
        rest in vec(any::<u8>(), 0..80),
        src in any_ip(),
        dst in any_ip(),
    ) {
        let mut payload = vec![version_type];
        payload.extend(rest);
        let _ = Advert::parse(&payload, src, dst);
    }

    #[test]
    fn single_bit_flips_are_rejected_or_reemit_exactly(case in valid_case(), bit in any::<prop::sample::Index>()) {
        let mut flipped = emit(&case);
        let bit = bit.index(flipped.len() * 8);
        flipped[bit / 8] ^= 1 << (bit % 8);
        if let Ok(advert) = Advert::parse(&flipped, case.src, case.dst) {
            // Only bits the RFCs say to ignore could get here; the message
            // must still be exactly what it decodes to.
            let mut buf = vec![0; advert.buffer_len()];
            prop_assert_eq!(advert.emit(case.src, case.dst, &mut buf), Ok(flipped.len()));
            prop_assert_eq!(buf, flipped);
        }
    }
}

proptest! {
    // Big messages are slower to generate; a few cases suffice.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn many_addrs_round_trip(case in prop_oneof![v2_case(200..=255), v3_case(200..=255)]) {
        let bytes = emit(&case);
        prop_assert_eq!(Advert::parse(&bytes, case.src, case.dst), Ok(case.advert));
    }
}
