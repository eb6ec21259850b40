//! The VRRP wire format: advertisements (RFC 3768 §5, RFC 5798 §5), and the
//! gratuitous ARP / unsolicited neighbour advertisement frames a new master
//! sends for its virtual addresses.
//!
//! [`Advert`] is the owned, validated form of one advertisement. It is parsed
//! from the VRRP payload of an IP packet (the bytes after the IP header) with
//! [`Advert::parse`] and written into a caller's buffer with [`Advert::emit`];
//! the two are symmetric: `emit(parse(x)) == x` for every valid `x`.

mod arp;
mod ndisc;
mod vrrp;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

pub use arp::{GARP_FRAME_LEN, gratuitous_arp};
pub use ndisc::{UNSOLICITED_NA_FRAME_LEN, unsolicited_na};
pub use vrrp::{DecodeError, EmitError, IPPROTO_VRRP, MULTICAST_V4, MULTICAST_V6};

/// The VRRP protocol version of an advertisement or a virtual router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Version {
    /// VRRPv2, RFC 3768: IPv4 only, whole-second interval, optional auth.
    V2,
    /// VRRPv3, RFC 5798: IPv4 and IPv6, centisecond interval, no auth.
    V3,
}

impl Version {
    /// The value of the 4-bit version field.
    pub const fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

/// A version field that is neither 2 nor 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unsupported VRRP version {0}: 2 or 3")]
pub struct UnknownVersion(pub u8);

impl TryFrom<u8> for Version {
    type Error = UnknownVersion;

    /// 2 is VRRPv2 (RFC 3768), 3 is VRRPv3 (RFC 5798).
    fn try_from(number: u8) -> Result<Version, UnknownVersion> {
        match number {
            2 => Ok(Version::V2),
            3 => Ok(Version::V3),
            other => Err(UnknownVersion(other)),
        }
    }
}

impl From<Version> for u8 {
    fn from(version: Version) -> u8 {
        version.number()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.number())
    }
}

/// VRRPv2 authentication (RFC 3768 §5.3.6 and §10). VRRPv3 has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Auth {
    /// Auth type 0: no authentication; the 8 auth data bytes are zero.
    None,
    /// Auth type 1: simple text password, 8 bytes, zero padded.
    Pass([u8; 8]),
}

impl Auth {
    /// Simple text auth from a configured password, the way keepalived does
    /// it: the first 8 bytes are used and a shorter password is zero padded.
    pub fn pass(password: &[u8]) -> Auth {
        let mut data = [0u8; 8];
        for (slot, byte) in data.iter_mut().zip(password) {
            *slot = *byte;
        }
        Auth::Pass(data)
    }

    /// The value of the v2 auth type field.
    pub const fn type_number(&self) -> u8 {
        match self {
            Auth::None => 0,
            Auth::Pass(_) => 1,
        }
    }
}

/// An advertisement interval in centiseconds, the unit of the VRRPv3 field
/// (RFC 5798 §5.2.7). VRRPv2 carries whole seconds (RFC 3768 §5.3.7); it is
/// held here as a multiple of 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Centis(pub u16);

impl Centis {
    /// The largest value the 12-bit v3 field holds: 40.95 s.
    pub const V3_MAX: Centis = Centis(0x0fff);

    /// Whole seconds, as VRRPv2 carries them.
    pub const fn from_secs(secs: u8) -> Centis {
        Centis(secs as u16 * 100)
    }

    /// The interval as a [`Duration`].
    pub const fn to_duration(self) -> Duration {
        Duration::from_millis(self.0 as u64 * 10)
    }
}

impl fmt::Display for Centis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}s", self.0 / 100, self.0 % 100)
    }
}

/// One VRRP advertisement, version 2 or 3, for IPv4 or IPv6.
///
/// Invariants that [`Advert::emit`] checks and [`Advert::parse`] guarantees:
/// all `addrs` share one family (IPv6 only with [`Version::V3`]); at most 255
/// of them; `auth` is [`Auth::None`] for v3; `interval` is a whole number of
/// seconds up to 255 s for v2 and at most [`Centis::V3_MAX`] for v3; `vrid` is
/// not 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Advert {
    /// Protocol version.
    pub version: Version,
    /// Virtual Router Identifier, 1..=255.
    pub vrid: u8,
    /// Sender's priority: 255 address owner, 1..=254 backup, 0 resigning.
    pub priority: u8,
    /// Advertisement interval (v3: Max Adver Int).
    pub interval: Centis,
    /// VRRPv2 authentication; always [`Auth::None`] for v3.
    pub auth: Auth,
    /// The virtual addresses, in wire order.
    pub addrs: Vec<IpAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_numbers_round_trip_and_others_are_refused() {
        for version in [Version::V2, Version::V3] {
            assert_eq!(Version::try_from(u8::from(version)), Ok(version));
        }
        for bad in [0, 1, 4, 255] {
            assert_eq!(Version::try_from(bad), Err(UnknownVersion(bad)));
        }
    }
}
