//! The Linux side of VRRP: raw sockets for adverts, AF_PACKET for
//! gratuitous ARP and unsolicited neighbour advertisements, and rtnetlink
//! for the virtual addresses and for link and address events.
//!
//! - [`config`]: [`config::InstanceConfig`], one virtual router and where it
//!   runs, with [`config::InstanceConfig::validate`].
//! - [`socket`]: [`socket::VrrpSocket`] sends and receives adverts exactly
//!   like keepalived (TTL / hop limit 255, TOS 0xc0, the node's own MAC, the
//!   source address given per send); [`socket::PacketSocket`] sends whole
//!   Ethernet frames.
//! - [`rx`]: the receive path, pure: [`rx::Classifier`] takes a received
//!   packet to the instance it is for, or to one [`rx::RxDrop`] reason;
//!   [`rx::SocketStats`] and [`rx::InstanceStats`] count per reason.
//! - [`netlink`]: [`netlink::VipManager`] adds VIPs with their prefix (IPv6
//!   `nodad`), optionally with a kernel-enforced lifetime, removes them
//!   idempotently, cleans up leftovers, picks the advert source address and
//!   manages RFC 6724 address labels; [`netlink::LinkEvents`] reports link
//!   up/down and address changes.
//! - [`driver`]: runs any number of [`crate::fsm::VirtualRouter`]s on top of
//!   those, until cancelled, then shuts them down gracefully.
//! - [`status`]: what the driver publishes, and the [`status::Control`]s it
//!   takes.
//!
//! # The receive checks of RFC 3768 §7.1 and RFC 5798 §7.1
//!
//! Each "MUST" of §7.1, in the order a packet meets them, and where it is
//! checked. A packet failing one is dropped and counted under the label in
//! the last column (socket counters: [`rx::SocketStats`]; instance
//! counters: [`rx::InstanceStats`]).
//!
//! | §7.1 bullet (RFC 3768 / RFC 5798) | checked by | label |
//! |---|---|---|
//! | IP TTL / Hop Limit is 255 (multicast only, as keepalived vrrp.c:1027) | [`rx::Classifier::precheck`] | `bad_ttl` |
//! | (destination matches the mode: group vs our unicast address, keepalived vrrp.c:1264) | [`rx::Classifier::precheck`] | `wrong_destination` |
//! | (not our own advert, by source address) | [`rx::Classifier::precheck`] | `own_address` |
//! | IPv6: source is link-local (§5.1.2.1) | [`rx::Classifier::precheck`] | `not_link_local` |
//! | packet contains the complete VRRP packet | [`crate::wire::Advert::parse`] | `too_short`, `length_mismatch` |
//! | version is 2 / 3 (v2 IPv4 only) | [`crate::wire::Advert::parse`] | `bad_version`, `v2_over_ipv6` |
//! | type is ADVERTISEMENT (§5.3.2 / §5.2.2) | [`crate::wire::Advert::parse`] | `bad_type` |
//! | the VRRP checksum (v3: with pseudo-header, §5.2.8) | [`crate::wire::Advert::parse`] | `bad_checksum` |
//! | (VRID 0 is no VRID, §5.3.3 / §5.2.3) | [`crate::wire::Advert::parse`] | `zero_vrid` |
//! | v2: Auth Type is 0 or 1 (type 2 removed, §5.3.6) | [`crate::wire::Advert::parse`] | `unknown_auth_type` |
//! | the VRID is configured on the receiving interface | [`rx::Classifier::classify`] | `unknown_vrid` |
//! | (unicast: the source is one of the instance's peers) | [`rx::Classifier::classify`] | `not_a_peer` |
//! | (the source is not our primary address) | [`crate::fsm::VirtualRouter::receive`] | `own_advert` |
//! | (same address family and version as ours) | [`crate::fsm::VirtualRouter::receive`] | `family_mismatch`, `version_mismatch` |
//! | v2: Auth Type matches ours; with simple text, the password (§10.2) | [`crate::fsm::VirtualRouter::receive`] | `auth_type_mismatch`, `auth_failure` |
//! | v2: Adver Interval equals ours (v3 learns it instead) | [`crate::fsm::VirtualRouter::receive`] | `interval_mismatch` |
//! | the address list matches ours (the RFCs exempt priority 255; this crate does not) | [`crate::fsm::VirtualRouter::receive`] | `address_list_mismatch` |
//!
//! Parenthesised rows are checks this crate adds to the RFC's list.
//!
//! Everything here needs a tokio runtime and, to be useful, root (or
//! CAP_NET_RAW and CAP_NET_ADMIN).
//!
//! ```no_run
//! use cplb_vrrp::fsm::Config;
//! use cplb_vrrp::io::driver::{Driver, InstanceConfig};
//! use cplb_vrrp::io::netlink::Vip;
//! use cplb_vrrp::wire::Version;
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let vip = "192.0.2.100".parse()?;
//! let mut router = Config::new(Version::V2, 51, "192.0.2.10".parse()?, vec![vip]);
//! router.priority = 200;
//! let mut instance = InstanceConfig::new(router, "eth0");
//! instance.vip_prefixes = vec![Vip::new(vip, 24)?];
//! instance.validate()?;
//!
//! let cancel = CancellationToken::new();
//! // Cancel it on SIGTERM: Masters then send a priority-0 advert and
//! // remove their VIPs before `run` returns.
//! Driver::builder(vec![instance]).run(cancel.clone()).await?;
//! # Ok(())
//! # }
//! ```

pub mod config;
mod deadline;
pub mod driver;
pub mod netlink;
pub mod rx;
pub mod socket;
pub mod status;
