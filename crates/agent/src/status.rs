//! What the running agent reports about itself: the `/status` JSON document,
//! the source of `/metrics`, and what `cplb status` prints.
//!
//! Plain data, filled by the lifecycle (`run`) from the VRRP driver, the
//! proxy and the reconciler, and read by the admin endpoint. Serialisable
//! both ways so that `cplb status` can decode what `/status` served.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Everything `/status` serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// `cplb` version.
    pub version: String,
    /// Seconds since the agent started.
    pub uptime_seconds: f64,
    /// True once sockets, the proxy listener and the netfilter rules are in
    /// place (what READY=1 means to systemd, and `/readyz`).
    pub ready: bool,
    /// True while the agent is shutting down.
    pub stopping: bool,
    /// VRRP instances, in configuration order.
    pub instances: Vec<InstanceReport>,
    /// The node's health as the mastership policy sees it.
    pub health: NodeHealthReport,
    /// The proxy; `None` with `disableLoadBalancer: true`.
    pub proxy: Option<ProxyReport>,
    /// The reconciler; `None` with `disableLoadBalancer: true`.
    pub reconciler: Option<ReconcilerReport>,
    /// The REDIRECT rules; `None` with `disableLoadBalancer: true`.
    pub netfilter: Option<NetfilterReport>,
}

/// One VRRP instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    /// Virtual router ID.
    pub vrid: u8,
    /// Interface name.
    pub interface: String,
    /// VRRP version on the wire (2 or 3).
    pub version: u8,
    /// `initialize`, `backup`, `master` or `fault`.
    pub state: String,
    /// The priority this node advertises now.
    pub priority: u8,
    /// The current Master's address as far as this node knows (its own
    /// address while Master; `None` while unknown).
    pub master: Option<IpAddr>,
    /// The virtual IPs, with prefix length (`192.0.2.100/24`).
    pub vips: Vec<String>,
    /// State changes since start.
    pub transitions: u64,
    /// Adverts sent.
    pub adverts_sent: u64,
    /// Adverts accepted.
    pub adverts_received: u64,
    /// Received packets dropped by reason (before and after the state
    /// machine: TTL, checksum, auth, interval...).
    pub dropped: Vec<Counted>,
}

/// A counter with a label value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counted {
    /// The label value, e.g. a drop reason.
    pub reason: String,
    /// The count.
    pub count: u64,
}

/// Health-aware mastership.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeHealthReport {
    /// False when health tracking is off.
    pub tracking: bool,
    /// `healthy` or `degraded`.
    pub state: String,
    /// The latest reason given for the state.
    pub reason: String,
    /// Base priority.
    pub base_priority: u8,
    /// Priority while degraded.
    pub degraded_priority: u8,
}

/// The :6444 proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyReport {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Backends, the current set and those that left but still carry
    /// connections.
    pub backends: Vec<BackendReport>,
}

/// One backend of the proxy, with what the reconciler knows of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendReport {
    /// Address.
    pub address: SocketAddr,
    /// In the proxy's current set.
    pub in_set: bool,
    /// `healthy`, `unhealthy` or `unknown` (the reconciler's view).
    pub health: String,
    /// Duration of the latest health check, in seconds.
    pub check_seconds: Option<f64>,
    /// The latest health-check error.
    pub last_error: Option<String>,
    /// Connections accepted for this backend since start.
    pub connections_total: u64,
    /// Connections open now.
    pub connections_active: u64,
    /// Failed connects by reason (`refused`, `timeout`, `unreachable`,
    /// `other`).
    pub connect_errors: Vec<Counted>,
    /// Bytes client → backend.
    pub bytes_to_backend: u64,
    /// Bytes backend → client.
    pub bytes_from_backend: u64,
}

/// The reconciler.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcilerReport {
    /// Backend set updates published to the proxy.
    pub updates: u64,
    /// Watch errors (the watch restarts after each).
    pub watch_errors: u64,
}

/// The REDIRECT rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetfilterReport {
    /// `iptables` or `nftables`.
    pub backend: String,
    /// Every rule checked present at the latest check.
    pub in_place: bool,
    /// The rules, as `iptables-save` would print them (or nft's form).
    pub rules: Vec<String>,
}
