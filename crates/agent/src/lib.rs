//! The `cplb` agent: the k0s-compatible configuration, and (as they land) the
//! lifecycle that ties VRRP, the proxy and the reconciler together.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod boot;
pub mod config;
pub mod error;
pub mod health;
mod ipvs;
mod lb;
pub mod lock;
pub mod logging;
pub mod manifest;
pub mod netfilter;
pub mod plan;
mod report;
pub mod run;
pub mod status;
pub mod supervise;
mod takeover;
mod watchdog;
