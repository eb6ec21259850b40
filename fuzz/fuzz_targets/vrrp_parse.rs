//! The advert decoder on arbitrary bytes: never panics, and whatever decodes
//! re-emits to the same bytes (`cplb_vrrp::fuzzing::parse_roundtrip`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cplb_vrrp::fuzzing::parse_roundtrip(data));
