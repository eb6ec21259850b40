//! The Linux side of VRRP: raw sockets for adverts, AF_PACKET for
//! gratuitous ARP and unsolicited neighbour advertisements, and rtnetlink
//! for the virtual addresses and for link and address events.
//!
//! - [`socket`]: [`socket::VrrpSocket`] sends and receives adverts exactly
//!   like keepalived (TTL / hop limit 255, TOS 0xc0, the node's own MAC, the
//!   source address given per send); [`socket::Classifier`] applies the
//!   receive checks and counts every drop by reason;
//!   [`socket::PacketSocket`] sends whole Ethernet frames.
//! - [`netlink`]: [`netlink::VipManager`] adds VIPs with their prefix (IPv6
//!   `nodad`), optionally with a kernel-enforced lifetime, removes them
//!   idempotently, cleans up leftovers and manages RFC 6724 address labels;
//!   [`netlink::LinkEvents`] reports link up/down and address changes.
//! - [`driver`]: runs any number of [`crate::fsm::VirtualRouter`]s on top of
//!   those, until cancelled, then shuts them down gracefully.
//!
//! Everything here needs a tokio runtime and, to be useful, root (or
//! CAP_NET_RAW and CAP_NET_ADMIN).
//!
//! ```no_run
//! use cplb_vrrp::fsm::Config;
//! use cplb_vrrp::io::driver::{InstanceConfig, run};
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
//!
//! let cancel = CancellationToken::new();
//! // Cancel it on SIGTERM: Masters then send a priority-0 advert and
//! // remove their VIPs before `run` returns.
//! run(vec![instance], cancel.clone()).await?;
//! # Ok(())
//! # }
//! ```

pub mod driver;
pub mod netlink;
pub mod socket;
