//! IPVS for cplb's IPVS mode (k0s's `virtualServers`): the kernel's IP
//! Virtual Server driven over generic netlink (family `IPVS`), no ipvsadm
//! at run time, plus the `dummyvip0` link.
//!
//! - [`message`]: the wire messages, typed, byte-compatible with ipvsadm.
//! - [`model`]: services, real servers, sync daemons, and the pure
//!   reconcile [`plan`].
//! - [`Ipvs`]: the async client (list, add/edit/del, sync daemon, reconcile).
//! - [`DummyVips`]: the dummy link holding the VIPs.
//! - [`ArpGuard`]: non-holders stay silent in ARP for the VIPs (k0s#4700).

pub mod arp;
pub mod client;
pub mod dummy;
pub mod message;
pub mod model;

pub use arp::{ARP_TABLE, ArpGuard, announce_primary_address};
pub use client::Ipvs;
pub use dummy::{DUMMY_LINK, DummyVips};
pub use message::{Info, Stats};
pub use model::{
    Change, Destination, DestinationStatus, ForwardMethod, Protocol, Service, ServiceKey,
    ServiceStatus, SyncDaemon, SyncState, VirtualService, plan,
};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("IPVS is not available in this kernel (is ip_vs loaded?): {0}")]
    NotAvailable(String),
    #[error("{what}: {detail}")]
    Request { what: String, detail: String },
    #[error("{what}: kernel said {message} (errno {errno})")]
    Kernel {
        what: String,
        errno: i32,
        message: String,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("malformed reply: {0}")]
    Malformed(String),
}
