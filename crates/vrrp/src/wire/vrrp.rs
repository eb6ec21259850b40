//! The VRRP advertisement codec, versions 2 and 3.
//!
//! VRRPv2, RFC 3768 §5.1 (IPv4 only):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    | Count IP Addrs|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   Auth Type   |   Adver Int   |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                         IP Address (1)                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                            .                                  |
//! |                            .                                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                         IP Address (n)                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                     Authentication Data (1)                   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                     Authentication Data (2)                   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! VRRPv3, RFC 5798 §5.1 (IPv4 or IPv6 addresses, 4 or 16 bytes each):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! +                                                               +
//! |                       IPvX Address(es)                        |
//! +                                                               +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Checksums: v2 covers the VRRP message only (RFC 3768 §5.3.8); v3 adds
//! the IP pseudo-header (RFC 5798 §5.2.8): for IPv4 src, dst, 0, 112,
//! length (as UDP, RFC 768); for IPv6 the RFC 2460 §8.1 one. keepalived
//! 2.2.7 does exactly this for v3 over IPv4, with the real destination
//! address (checked against `tests/data/keepalived-mixed.pcap`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pnet_packet::ip::IpNextHeaderProtocol;
use pnet_packet::util;

use super::{Advert, Auth, Centis, Version};

/// The IP protocol number of VRRP (RFC 3768 §5.2.4, RFC 5798 §5.1.1.4).
pub const IPPROTO_VRRP: u8 = 112;

/// The IPv4 multicast group adverts are sent to (RFC 3768 §5.2.2,
/// RFC 5798 §5.1.1.2).
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);

/// The IPv6 multicast group adverts are sent to (RFC 5798 §5.1.2.2).
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);

/// Version, type, VRID, priority, count, auth type/rsvd+interval, checksum.
const HEADER_LEN: usize = 8;
/// v2 Authentication Data (RFC 3768 §5.3.10), always present.
const AUTH_DATA_LEN: usize = 8;
/// The only message type, ADVERTISEMENT (RFC 3768 §5.3.2, RFC 5798 §5.2.2).
const TYPE_ADVERTISEMENT: u8 = 1;
/// Byte offset of the checksum in the header.
const CHECKSUM_OFFSET: usize = 6;
/// The 12 interval bits of the v3 rsvd+Max Adver Int word (RFC 5798 §5.2.7).
const V3_INTERVAL_MASK: u16 = 0x0fff;
/// `pnet_packet::util` skips the 16-bit word at this index when summing;
/// one past any message we handle, so nothing is skipped.
const SKIP_NO_WORD: usize = usize::MAX;
/// The largest v2 interval: the 8-bit Adver Int field in seconds.
const V2_MAX_INTERVAL: Centis = Centis::from_secs(u8::MAX);

/// Why an advertisement was rejected by [`Advert::parse`].
///
/// Each variant is one receive check of RFC 3768 §7.1 / RFC 5798 §7.1 (or
/// a field-level rule of §5 that those checks rely on). The IP-level checks
/// (TTL/hop limit 255, and for v3 over IPv6 a link-local source) belong to
/// the caller, which has the IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The source and destination addresses are of different families, so
    /// this is no packet any IP stack delivered.
    #[error("source and destination address families differ")]
    FamilyMismatch,
    /// Shorter than the 8-byte fixed header (RFC 3768 §7.1, RFC 5798 §7.1:
    /// "MUST verify that the received packet contains the complete VRRP
    /// packet").
    #[error("advert of {len} bytes is shorter than the 8-byte header")]
    TooShort {
        /// Bytes received.
        len: usize,
    },
    /// The version field is neither 2 nor 3 (RFC 3768 §7.1, RFC 5798 §7.1:
    /// "MUST verify that the VRRP version ... is 2 / 3").
    #[error("unsupported VRRP version {0}")]
    BadVersion(u8),
    /// A version 2 advert over IPv6: VRRPv2 is IPv4 only (RFC 3768 §1).
    #[error("VRRPv2 advert over IPv6")]
    V2OverIpv6,
    /// The type field is not 1, ADVERTISEMENT (RFC 3768 §5.3.2, RFC 5798
    /// §5.2.2: "A packet with unknown type MUST be discarded").
    #[error("unknown VRRP message type {0}")]
    BadType(u8),
    /// The length the Count IP Addrs field implies is not the length
    /// received: truncated, or with trailing bytes (RFC 3768 §7.1, RFC 5798
    /// §7.1: "MUST verify that the received packet contains the complete
    /// VRRP packet (including fixed fields, and IPvX address(es))").
    #[error("advert is {actual} bytes but its address count implies {expected}")]
    LengthMismatch {
        /// Length implied by the header.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// The checksum does not verify (RFC 3768 §7.1, RFC 5798 §7.1: "MUST
    /// verify the VRRP checksum"; for v3 with the pseudo-header of §5.2.8).
    #[error("bad VRRP checksum")]
    BadChecksum,
    /// VRID 0: the VRID is 1..=255 (RFC 3768 §5.3.3, RFC 5798 §5.2.3), so
    /// no virtual router can be configured for it (§7.1: "MUST verify that
    /// the VRID is configured").
    #[error("VRID 0")]
    ZeroVrid,
    /// A v2 Auth Type other than 0 (none) or 1 (simple text); type 2 (IP AH)
    /// was removed by RFC 3768 §5.3.6, and §7.1 says to discard a packet
    /// whose Auth Type does not match the configured one.
    #[error("unknown VRRPv2 auth type {0}")]
    UnknownAuthType(u8),
}

impl DecodeError {
    /// A stable snake_case name for the reason, for metrics labels and logs.
    pub const fn reason(&self) -> &'static str {
        match self {
            DecodeError::FamilyMismatch => "family_mismatch",
            DecodeError::TooShort { .. } => "too_short",
            DecodeError::BadVersion(_) => "bad_version",
            DecodeError::V2OverIpv6 => "v2_over_ipv6",
            DecodeError::BadType(_) => "bad_type",
            DecodeError::LengthMismatch { .. } => "length_mismatch",
            DecodeError::BadChecksum => "bad_checksum",
            DecodeError::ZeroVrid => "zero_vrid",
            DecodeError::UnknownAuthType(_) => "unknown_auth_type",
        }
    }
}

/// Why a frame or advertisement could not be written.
///
/// Apart from [`EmitError::BufferTooSmall`] these are broken [`Advert`]
/// invariants: a bug in the caller, never a property of received data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The output buffer is shorter than the message.
    #[error("buffer of {available} bytes is too small, {needed} needed")]
    BufferTooSmall {
        /// Bytes the message takes.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// The source and destination addresses are of different families.
    #[error("source and destination address families differ")]
    FamilyMismatch,
    /// A version 2 advert with IPv6 source/destination (RFC 3768 is IPv4 only).
    #[error("VRRPv2 advert over IPv6")]
    V2OverIpv6,
    /// A virtual address of another family than the packet's source and
    /// destination (RFC 5798 §5.2.5: IPv4 and IPv6 are separate routers).
    #[error("virtual address #{index} is not of the packet's address family")]
    AddrFamilyMismatch {
        /// Position of the first offending address in [`Advert::addrs`].
        index: usize,
    },
    /// More addresses than the 8-bit count field holds.
    #[error("{count} virtual addresses, the count field holds at most 255")]
    TooManyAddrs {
        /// Number of addresses.
        count: usize,
    },
    /// A v2 interval that is not a whole number of seconds in 0..=255
    /// (RFC 3768 §5.3.7).
    #[error("VRRPv2 interval {0} is not whole seconds up to 255 s")]
    BadV2Interval(Centis),
    /// A v3 interval above the 12-bit maximum of 40.95 s (RFC 5798 §5.2.7).
    #[error("VRRPv3 interval {0} exceeds 40.95 s")]
    V3IntervalTooLong(Centis),
    /// Authentication on a v3 advert, which has none (RFC 5798 §9).
    #[error("VRRPv3 adverts carry no authentication")]
    V3WithAuth,
    /// VRID 0 (RFC 3768 §5.3.3, RFC 5798 §5.2.3: 1..=255).
    #[error("VRID 0")]
    ZeroVrid,
}

impl EmitError {
    /// A stable snake_case name for the reason, for metrics labels and logs.
    pub const fn reason(&self) -> &'static str {
        match self {
            EmitError::BufferTooSmall { .. } => "buffer_too_small",
            EmitError::FamilyMismatch => "family_mismatch",
            EmitError::V2OverIpv6 => "v2_over_ipv6",
            EmitError::AddrFamilyMismatch { .. } => "addr_family_mismatch",
            EmitError::TooManyAddrs { .. } => "too_many_addrs",
            EmitError::BadV2Interval(_) => "bad_v2_interval",
            EmitError::V3IntervalTooLong(_) => "v3_interval_too_long",
            EmitError::V3WithAuth => "v3_with_auth",
            EmitError::ZeroVrid => "zero_vrid",
        }
    }
}

/// The address family of one packet, from its IP header addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl Family {
    fn of(src: IpAddr, dst: IpAddr) -> Option<Family> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Some(Family::V4(s, d)),
            (IpAddr::V6(s), IpAddr::V6(d)) => Some(Family::V6(s, d)),
            _ => None,
        }
    }

    const fn addr_len(self) -> usize {
        match self {
            Family::V4(..) => 4,
            Family::V6(..) => 16,
        }
    }
}

/// The checksum the message should carry: the checksum field itself is
/// skipped, so this works on a message whose field is not yet written.
fn checksum_to_send(version: Version, family: Family, message: &[u8]) -> u16 {
    checksum_with_skip(version, family, message, CHECKSUM_OFFSET / 2)
}

/// The one's complement sum over the message including its checksum field,
/// complemented: 0 when the message verifies (RFC 1071 §1).
fn checksum_residue(version: Version, family: Family, message: &[u8]) -> u16 {
    checksum_with_skip(version, family, message, SKIP_NO_WORD)
}

fn checksum_with_skip(version: Version, family: Family, message: &[u8], skipword: usize) -> u16 {
    let proto = IpNextHeaderProtocol(IPPROTO_VRRP);
    match (version, family) {
        // RFC 3768 §5.3.8: over the VRRP message only.
        (Version::V2, _) => util::checksum(message, skipword),
        // RFC 5798 §5.2.8: with the IPv4 (RFC 768 style) or IPv6 (RFC 2460
        // §8.1) pseudo-header.
        (Version::V3, Family::V4(src, dst)) => {
            util::ipv4_checksum(message, skipword, &[], &src, &dst, proto)
        }
        (Version::V3, Family::V6(src, dst)) => {
            util::ipv6_checksum(message, skipword, &[], &src, &dst, proto)
        }
    }
}

/// Takes `N` bytes off the front of `rest`.
fn take<'a, const N: usize>(rest: &mut &'a [u8]) -> Option<&'a [u8; N]> {
    let (head, tail) = rest.split_first_chunk::<N>()?;
    *rest = tail;
    Some(head)
}

/// Writes `bytes` at the front of `rest` and advances past them.
fn put(rest: &mut &mut [u8], bytes: &[u8]) -> Result<(), EmitError> {
    let available = rest.len();
    let (head, tail) = std::mem::take(rest)
        .split_at_mut_checked(bytes.len())
        .ok_or(EmitError::BufferTooSmall {
            needed: bytes.len(),
            available,
        })?;
    head.copy_from_slice(bytes);
    *rest = tail;
    Ok(())
}

impl Advert {
    /// Decodes and validates one advertisement.
    ///
    /// `payload` is the VRRP message, the bytes after the IP header, exactly
    /// (trailing bytes are a [`DecodeError::LengthMismatch`]). `src` and
    /// `dst` are the IP header's addresses: they give the family and, for
    /// v3, the checksum pseudo-header.
    ///
    /// Symmetric with [`Advert::emit`]: re-emitting a parsed advert gives the
    /// same bytes, except for what the RFCs say to ignore on receive (the v3
    /// rsvd bits, RFC 5798 §5.2.7; v2 Authentication Data with Auth Type 0,
    /// RFC 3768 §5.3.10) and a checksum sent as 0xffff where 0x0000 is
    /// computed (equal in one's complement). Built with `cfg(fuzzing)` the
    /// checksum is not verified, so the fuzzer gets past it.
    ///
    /// Not checked here, as they need the IP header or the configuration:
    /// TTL/hop limit 255, a link-local IPv6 source, the VRID and addresses
    /// matching the local configuration, the auth type/password matching.
    pub fn parse(payload: &[u8], src: IpAddr, dst: IpAddr) -> Result<Advert, DecodeError> {
        let family = Family::of(src, dst).ok_or(DecodeError::FamilyMismatch)?;
        let mut rest = payload;
        let header =
            take::<HEADER_LEN>(&mut rest).ok_or(DecodeError::TooShort { len: payload.len() })?;
        let [
            ver_type,
            vrid,
            priority,
            count,
            word_hi,
            word_lo,
            _checksum_hi,
            _checksum_lo,
        ] = *header;

        // RFC 3768 §7.1 / RFC 5798 §7.1: version check first.
        let version = match ver_type >> 4 {
            2 => Version::V2,
            3 => Version::V3,
            other => return Err(DecodeError::BadVersion(other)),
        };
        if version == Version::V2 && matches!(family, Family::V6(..)) {
            return Err(DecodeError::V2OverIpv6);
        }
        let message_type = ver_type & 0x0f;
        if message_type != TYPE_ADVERTISEMENT {
            return Err(DecodeError::BadType(message_type));
        }

        // The complete packet: header, addresses and (v2) auth data.
        let addr_len = family.addr_len();
        let auth_len = match version {
            Version::V2 => AUTH_DATA_LEN,
            Version::V3 => 0,
        };
        let expected = HEADER_LEN + usize::from(count) * addr_len + auth_len;
        if payload.len() != expected {
            return Err(DecodeError::LengthMismatch {
                expected,
                actual: payload.len(),
            });
        }

        // RFC 1071 §1: the sum over the message including the checksum field
        // verifies when its complement is 0.
        if !cfg!(fuzzing) && checksum_residue(version, family, payload) != 0 {
            return Err(DecodeError::BadChecksum);
        }

        if vrid == 0 {
            return Err(DecodeError::ZeroVrid);
        }

        let (auth_type, interval) = match version {
            // RFC 3768 §5.3.7: Adver Int in whole seconds.
            Version::V2 => (word_hi, Centis::from_secs(word_lo)),
            // RFC 5798 §5.2.7: rsvd "MUST be ignored on receipt".
            Version::V3 => (
                0,
                Centis(u16::from_be_bytes([word_hi, word_lo]) & V3_INTERVAL_MASK),
            ),
        };

        let mut addrs = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let addr = match family {
                Family::V4(..) => take::<4>(&mut rest).map(|b| IpAddr::from(*b)),
                Family::V6(..) => take::<16>(&mut rest).map(|b| IpAddr::from(*b)),
            };
            // Unreachable after the length check; kept as an error, not a panic.
            addrs.push(addr.ok_or(DecodeError::LengthMismatch {
                expected,
                actual: payload.len(),
            })?);
        }

        let auth = match version {
            Version::V3 => Auth::None,
            Version::V2 => {
                let data = take::<AUTH_DATA_LEN>(&mut rest).ok_or(DecodeError::LengthMismatch {
                    expected,
                    actual: payload.len(),
                })?;
                match auth_type {
                    // RFC 3768 §5.3.10: auth data is ignored without auth.
                    0 => Auth::None,
                    1 => Auth::Pass(*data),
                    other => return Err(DecodeError::UnknownAuthType(other)),
                }
            }
        };

        Ok(Advert {
            version,
            vrid,
            priority,
            interval,
            auth,
            addrs,
        })
    }

    /// The length of the encoded advertisement, what [`Advert::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        let addrs: usize = self
            .addrs
            .iter()
            .map(|addr| match addr {
                IpAddr::V4(_) => 4,
                IpAddr::V6(_) => 16,
            })
            .sum();
        let auth = match self.version {
            Version::V2 => AUTH_DATA_LEN,
            Version::V3 => 0,
        };
        HEADER_LEN + addrs + auth
    }

    /// Encodes the advertisement into the front of `buf` and returns the
    /// number of bytes written, [`Advert::buffer_len`].
    ///
    /// `src` and `dst` are the addresses the IP header will carry (for v3
    /// they are in the checksum). Every byte of `buf[..len]` is written,
    /// the v3 rsvd bits and unused v2 auth data as zero.
    pub fn emit(&self, src: IpAddr, dst: IpAddr, buf: &mut [u8]) -> Result<usize, EmitError> {
        let family = self.check_invariants(src, dst)?;
        let len = self.buffer_len();
        let available = buf.len();
        let message = buf.get_mut(..len).ok_or(EmitError::BufferTooSmall {
            needed: len,
            available,
        })?;

        let count = u8::try_from(self.addrs.len()).map_err(|_| EmitError::TooManyAddrs {
            count: self.addrs.len(),
        })?;
        let word: [u8; 2] = match self.version {
            Version::V2 => {
                // Whole seconds up to 255 s, checked by check_invariants.
                let secs = u8::try_from(self.interval.0 / 100)
                    .map_err(|_| EmitError::BadV2Interval(self.interval))?;
                [self.auth.type_number(), secs]
            }
            Version::V3 => (self.interval.0 & V3_INTERVAL_MASK).to_be_bytes(),
        };
        let ver_type = (self.version.number() << 4) | TYPE_ADVERTISEMENT;
        let [word_hi, word_lo] = word;

        let mut rest: &mut [u8] = message;
        // Checksum zero for now; written once the rest is in place.
        put(
            &mut rest,
            &[
                ver_type,
                self.vrid,
                self.priority,
                count,
                word_hi,
                word_lo,
                0,
                0,
            ],
        )?;
        for addr in &self.addrs {
            match addr {
                IpAddr::V4(v4) => put(&mut rest, &v4.octets())?,
                IpAddr::V6(v6) => put(&mut rest, &v6.octets())?,
            }
        }
        match (self.version, self.auth) {
            (Version::V2, Auth::Pass(data)) => put(&mut rest, &data)?,
            // RFC 3768 §5.3.10: zero on transmission without auth.
            (Version::V2, Auth::None) => put(&mut rest, &[0; AUTH_DATA_LEN])?,
            (Version::V3, _) => {}
        }

        let message = buf.get_mut(..len).ok_or(EmitError::BufferTooSmall {
            needed: len,
            available,
        })?;
        let checksum = checksum_to_send(self.version, family, message);
        message
            .get_mut(CHECKSUM_OFFSET..CHECKSUM_OFFSET + 2)
            .ok_or(EmitError::BufferTooSmall {
                needed: len,
                available,
            })?
            .copy_from_slice(&checksum.to_be_bytes());
        Ok(len)
    }

    /// Checks every invariant listed on [`Advert`] against `src`/`dst`.
    fn check_invariants(&self, src: IpAddr, dst: IpAddr) -> Result<Family, EmitError> {
        let family = Family::of(src, dst).ok_or(EmitError::FamilyMismatch)?;
        if self.vrid == 0 {
            return Err(EmitError::ZeroVrid);
        }
        if self.addrs.len() > usize::from(u8::MAX) {
            return Err(EmitError::TooManyAddrs {
                count: self.addrs.len(),
            });
        }
        match self.version {
            Version::V2 => {
                if matches!(family, Family::V6(..)) {
                    return Err(EmitError::V2OverIpv6);
                }
                if !self.interval.0.is_multiple_of(100) || self.interval > V2_MAX_INTERVAL {
                    return Err(EmitError::BadV2Interval(self.interval));
                }
            }
            Version::V3 => {
                if self.interval > Centis::V3_MAX {
                    return Err(EmitError::V3IntervalTooLong(self.interval));
                }
                if self.auth != Auth::None {
                    return Err(EmitError::V3WithAuth);
                }
            }
        }
        let wrong_family = self.addrs.iter().position(|addr| match family {
            Family::V4(..) => !addr.is_ipv4(),
            Family::V6(..) => !addr.is_ipv6(),
        });
        if let Some(index) = wrong_family {
            return Err(EmitError::AddrFamilyMismatch { index });
        }
        Ok(family)
    }
}
