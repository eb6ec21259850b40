//! VRRP in Rust: VRRPv2 ([RFC 3768]) and VRRPv3 ([RFC 5798]) without keepalived.
//!
//! The crate is split the way a sans-IO protocol stack is:
//!
//! - [`wire`]: the advertisement codec ([`wire::Advert::parse`] /
//!   [`wire::Advert::emit`]) and the gratuitous ARP / unsolicited neighbour
//!   advertisement frames a new master sends. Byte-compatible with keepalived.
//! - [`fsm`]: one virtual router's state machine, [`fsm::VirtualRouter`]. It
//!   is pure: no sockets, no clock, no threads. Every input carries `now`,
//!   every output is an [`fsm::Action`] for the caller to carry out, and
//!   [`fsm::VirtualRouter::poll_timeout`] says when to call back. Tests drive
//!   it with made-up instants and are deterministic and instant.
//!
//! [RFC 3768]: https://www.rfc-editor.org/rfc/rfc3768
//! [RFC 5798]: https://www.rfc-editor.org/rfc/rfc5798
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod fsm;
#[cfg(feature = "io")]
pub mod io;
pub mod wire;

#[cfg(feature = "sim")]
pub mod sim;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
