//! The `cplb` agent: the k0s-compatible configuration, and (as they land) the
//! lifecycle that ties VRRP, the proxy and the reconciler together.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod config;
pub mod health;
pub mod logging;
pub mod manifest;
pub mod netfilter;
pub mod run;
pub mod status;
