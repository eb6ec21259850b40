//! What the running agent reports about itself: the `/status` JSON document,
//! the source of `/metrics`, and what `cplb status` prints.
//!
//! Plain data, filled by the lifecycle (`run`) from the VRRP driver, the
//! proxy and the reconciler, and read by the admin endpoint. Serialisable
//! both ways so that `cplb status` can decode what `/status` served.

pub mod render;

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
    /// The VRRP sockets, one per group of instances sharing one (interface,
    /// family, multicast or unicast).
    #[serde(default)]
    pub sockets: Vec<SocketReport>,
    /// Times the kernel dropped link and address notifications for the VRRP
    /// driver (its netlink buffer was full); each time it read links and
    /// addresses again.
    #[serde(default)]
    pub netlink_overruns: u64,
    /// The node's health as the mastership policy sees it.
    pub health: NodeHealthReport,
    /// The proxy; `None` with `disableLoadBalancer: true`.
    pub proxy: Option<ProxyReport>,
    /// The reconciler; `None` with `disableLoadBalancer: true`.
    pub reconciler: Option<ReconcilerReport>,
    /// The REDIRECT rules; `None` with `disableLoadBalancer: true`.
    pub netfilter: Option<NetfilterReport>,
    /// IPVS mode (`virtualServers`): the kernel's services on this node;
    /// `None` in proxy mode.
    #[serde(default)]
    pub ipvs: Option<IpvsReport>,
}

/// IPVS mode, as read from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpvsReport {
    /// The dummy link holding every VIP (`dummyvip0`).
    pub dummy_link: String,
    /// The VIPs this node holds (its services are for these).
    pub held_vips: Vec<IpAddr>,
    /// VIPs this node gave up whose services it keeps for the handoff grace.
    #[serde(default)]
    pub releasing_vips: Vec<IpAddr>,
    /// The connection-sync daemon's role: `master`, `backup` or `none`.
    pub sync_daemon: String,
    /// This agent's services in the kernel (only the configured ones).
    pub services: Vec<IpvsServiceReport>,
    /// Reconciles run (each reads the kernel and applies the difference).
    pub reconciles: u64,
    /// Changes applied to the kernel (services and real servers added,
    /// edited, drained, removed).
    pub changes: u64,
    /// Reconciles that failed (retried).
    pub reconcile_errors: u64,
    /// The latest failure, if the latest reconcile failed.
    pub last_error: Option<String>,
}

/// One IPVS virtual service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpvsServiceReport {
    /// `VIP:port` (TCP).
    pub address: String,
    /// The scheduler (`rr`...).
    pub scheduler: String,
    /// Persistence timeout in seconds, if any.
    pub persistence_seconds: Option<u32>,
    /// The real servers.
    pub real_servers: Vec<RealServerReport>,
}

/// One real server of an IPVS service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RealServerReport {
    /// `address:port`.
    pub address: SocketAddr,
    /// Its weight (0: drained, no new connections).
    pub weight: u32,
    /// `DR`, `NAT`, `TUN` or `local`.
    pub forward: String,
    /// Connections the kernel counts as active.
    pub active_connections: u32,
    /// Connections the kernel counts as inactive.
    pub inactive_connections: u32,
    /// The reconciler's view: `healthy`, `unhealthy` or `unknown`.
    pub health: String,
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
    /// Adverts for this instance dropped, by reason (the unicast peer
    /// check and the state machine's: auth, interval, address list...).
    /// Drops before the instance was known are its socket's.
    pub dropped: Vec<Counted>,
}

/// One VRRP socket group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SocketReport {
    /// Interface name.
    pub interface: String,
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// `multicast` or `unicast`.
    pub mode: String,
    /// The VRIDs of the instances on it.
    pub vrids: Vec<u8>,
    /// Packets the socket delivered, accepted or not.
    pub packets_received: u64,
    /// Packets dropped before any instance was found for them (TTL,
    /// checksum, unknown VRID, own address, queue full...), by reason.
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
    /// Client connections refused because their source had too many open.
    #[serde(default)]
    pub refused_source_limit: u64,
    /// Client connections closed because no backend could be connected.
    #[serde(default)]
    pub no_backend: u64,
    /// Connects that failed for lack of local resources (file descriptors,
    /// ports, memory): this node's fault, not a backend's.
    #[serde(default)]
    pub local_connect_errors: u64,
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
    /// Whether the kubeconfig has loaded, or why not.
    #[serde(default)]
    pub kubeconfig: KubeconfigReport,
    /// Endpoint addresses the reconciler refuses as backends now (the
    /// VIPs, loopback, link-local...), sorted by address.
    #[serde(default)]
    pub excluded: Vec<ExcludedReport>,
    /// Exclusions since start (each address once per appearance).
    #[serde(default)]
    pub excluded_total: u64,
}

/// Where the reconciler's kubeconfig stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigReport {
    /// `pending` (not tried yet), `loaded` or `failed` (retried).
    pub state: String,
    /// Why the latest attempt failed, with its cause.
    pub error: Option<String>,
    /// Failed attempts so far.
    pub failed_attempts: u64,
}

/// An endpoint address never used as a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExcludedReport {
    /// The address the endpoints listed.
    pub address: IpAddr,
    /// Why: `configured` (a VIP), `loopback`, `unspecified`, `multicast`,
    /// `link_local` or `broadcast`.
    pub reason: String,
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
