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
//! Two routers configured as k0s renders keepalived (VRRPv2, priority 200,
//! advert 1 s, PASS auth), one advert carried over the wire between them:
//!
//! ```
//! use std::net::IpAddr;
//! use std::time::{Duration, Instant};
//! use cplb_vrrp::fsm::{Action, Config, State, VirtualRouter};
//! use cplb_vrrp::wire::{Advert, Auth, MULTICAST_V4, Version};
//!
//! let vip: IpAddr = "192.0.2.100".parse()?;
//! let k0s = |me: IpAddr| {
//!     let mut config = Config::new(Version::V2, 51, me, vec![vip]);
//!     config.priority = 200;
//!     config.auth = Auth::pass(b"secret");
//!     config
//! };
//! let (a_ip, b_ip): (IpAddr, IpAddr) = ("192.0.2.10".parse()?, "192.0.2.11".parse()?);
//! let mut a = VirtualRouter::new(k0s(a_ip))?;
//! let mut b = VirtualRouter::new(k0s(b_ip))?;
//!
//! let t0 = Instant::now();
//! a.start(t0);
//! b.start(t0 + Duration::from_millis(100)); // b booted a little later
//!
//! // a hears nothing for Master_Down_Interval and becomes Master.
//! let now = a.poll_timeout().expect("a Backup always has a deadline");
//! for action in a.handle_timeout(now) {
//!     if let Action::Send(advert) = action {
//!         // The driver would send this to 224.0.0.18 with TTL 255.
//!         let mut packet = [0u8; 64];
//!         let len = advert.emit(a_ip, MULTICAST_V4.into(), &mut packet)?;
//!         let heard = Advert::parse(&packet[..len], a_ip, MULTICAST_V4.into())?;
//!         b.receive(now, a_ip, &heard)?;
//!     }
//! }
//! assert_eq!(a.state(), State::Master);
//! assert_eq!(b.state(), State::Backup);
//! // b heard the Master: its own takeover moved to a full interval from now.
//! assert_eq!(b.poll_timeout(), Some(now + b.master_down_interval()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
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
