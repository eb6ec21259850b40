//! The Linux side of VRRP: raw sockets for adverts, AF_PACKET for
//! gratuitous ARP and unsolicited neighbour advertisements, and rtnetlink
//! for the virtual addresses and for link and address events.
//!
//! Everything here needs a tokio runtime and, to be useful, root (or
//! CAP_NET_RAW and CAP_NET_ADMIN).

pub mod driver;
pub mod netlink;
pub mod socket;
