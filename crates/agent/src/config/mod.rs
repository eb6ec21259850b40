//! k0s-compatible configuration: `spec.network.controlPlaneLoadBalancing`.
//!
//! [`load`] reads a k0s `ClusterConfig`, a k0sctl `Cluster` (its
//! `spec.k0s.config`) or a document with just that subtree, plus
//! `spec.api.port` and cplb's own top-level `cplb` section. It applies k0s's
//! defaults and validation rules with k0s's error strings, then the stricter
//! checks k0s lacks, and reports every problem at once, each with its path
//! and, where the YAML gives one, its line and column. Validation runs even
//! with `enabled: false`, as in k0s.

mod duration;
mod host;
mod problem;
mod raw;
mod syntax;
#[cfg(test)]
mod tests;
mod validate;

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

pub use duration::{format_go_duration, parse_go_duration};
use duration::{serialize_go_duration, serialize_optional_go_duration};
pub use host::{Host, NoHost, SystemHost, parse_mac};
pub use problem::{ConfigError, Positions, Problem, Severity};
use problem::{collapse, position};
use validate::Validator;

const CPLB_PATH: &str = "spec.network.controlPlaneLoadBalancing";

/// The API port when `spec.api.port` is not set (k0s's default).
pub const DEFAULT_API_PORT: u16 = 6443;
/// The proxy port when `userSpaceProxyBindPort` is 0 or unset.
pub const DEFAULT_PROXY_PORT: u16 = 6444;
/// The first automatic virtual router ID: instance `i` gets `51 + i`.
pub const FIRST_AUTO_VRID: i64 = 51;
/// The IPv6 address label when `addressLabel` is 0 or unset.
pub const DEFAULT_ADDRESS_LABEL: u32 = 10000;
/// k0s's admin kubeconfig, which points at the local apiserver.
pub const DEFAULT_KUBECONFIG: &str = "/var/lib/k0s/pki/admin.conf";
/// Where the admin endpoint (metrics, status) listens by default.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9440";
/// Every VRRP node of k0s has this priority (rendered into keepalived.conf).
pub const K0S_PRIORITY: u8 = 200;
/// Priority of a node whose proxy cannot serve (health-aware mastership).
pub const DEFAULT_DEGRADED_PRIORITY: u8 = 100;
/// The longest `cplb.health.fall`/`rise`: beyond a day, a typo.
const MAX_HOLD_NANOS: i128 = 24 * 3_600_000_000_000;
/// The shortest `cplb.advertInterval`: one centisecond, VRRPv3's unit
/// (RFC 5798 §5.2.7) and the shortest keepalived 2.4.3 accepts
/// (`advert_int 0.01`).
pub const MIN_ADVERT_INTERVAL: Duration = Duration::from_millis(10);
/// The longest `cplb.advertInterval`: VRRPv3's 12-bit field, 4095 cs.
pub const MAX_ADVERT_INTERVAL: Duration = Duration::from_millis(40_950);

/// The validated configuration, every default filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// `controlPlaneLoadBalancing.enabled`.
    pub enabled: bool,
    /// `spec.api.port`: the port behind the VIP that the REDIRECT matches.
    pub api_port: u16,
    /// `keepalived.vrrpInstances`.
    pub vrrp_instances: Vec<VrrpInstance>,
    /// `keepalived.virtualServers` (IPVS mode; cplb refuses to run with any).
    pub virtual_servers: Vec<VirtualServer>,
    /// `keepalived.userSpaceProxyBindPort`.
    pub user_space_proxy_bind_port: u16,
    /// `keepalived.disableLoadBalancer`: VRRP only.
    pub disable_load_balancer: bool,
    /// cplb's own section.
    pub cplb: Settings,
    /// Where each value (and each section) was written, for messages about
    /// it made after parsing (the plan's).
    #[serde(skip)]
    pub positions: Positions,
    /// What is suspicious but not wrong (a misplaced known key).
    #[serde(skip)]
    pub warnings: Vec<Problem>,
}

/// One VRRP instance, as keepalived's `vrrp_instance k0s-vip-<i>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VrrpInstance {
    /// The VIPs with their prefixes, as added to the interface.
    #[serde(rename = "virtualIPs")]
    pub virtual_ips: Vec<IpNet>,
    /// The interface name, resolved from the default route or a MAC.
    pub interface: String,
    /// VRRP router ID.
    #[serde(rename = "virtualRouterID")]
    pub virtual_router_id: u8,
    /// Advertisement interval in seconds.
    pub advert_interval_seconds: u8,
    /// VRRPv2 simple-text password (1 to 8 bytes).
    pub auth_pass: String,
    /// Unicast peers; empty means multicast.
    pub unicast_peers: Vec<IpAddr>,
    /// Source of unicast adverts; set exactly when there are peers.
    #[serde(rename = "unicastSourceIP")]
    pub unicast_source_ip: Option<IpAddr>,
    /// RFC 6724 label for IPv6 VIPs.
    pub address_label: u32,
}

/// A keepalived virtual server (IPVS mode), validated as k0s does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServer {
    /// The virtual server's address.
    pub ip_address: IpAddr,
    /// Health-check period, in Go duration notation when printed.
    #[serde(serialize_with = "serialize_go_duration")]
    pub delay_loop: Duration,
    /// IPVS scheduler.
    pub lb_algo: String,
    /// IPVS forwarding method.
    pub lb_kind: String,
    /// Seconds a client sticks to one real server.
    pub persistence_timeout_seconds: u32,
}

/// Which netfilter front end installs the REDIRECT rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Netfilter {
    /// The `iptables`/`ip6tables` binaries, as k0s does (the default).
    Iptables,
    /// An nftables table of our own.
    Nftables,
}

/// cplb's own settings: the `cplb` top-level section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// VRRP version for IPv4 instances: 2 (keepalived's and k0s's) or 3.
    /// IPv6 instances always use 3.
    pub vrrp_version: u8,
    /// Base priority of every node (k0s: 200 everywhere).
    pub priority: u8,
    /// `cplb.advertInterval`: the advert interval of every instance, in
    /// whole centiseconds from 10 ms to 40.95 s (VRRPv3 only); `None`
    /// leaves each instance at its `advertIntervalSeconds`.
    #[serde(serialize_with = "serialize_optional_go_duration")]
    pub advert_interval: Option<Duration>,
    /// Admin endpoint: `/metrics`, `/healthz`, `/readyz`, `/status`.
    pub admin_address: SocketAddr,
    /// Netfilter front end.
    pub netfilter: Netfilter,
    /// Kubeconfig of the local apiserver, for the reconciler.
    pub kubeconfig: String,
    /// Also redirect connections that processes on this node make to
    /// `VIP:apiPort` (nat OUTPUT), so they are balanced too; k0s leaves them
    /// on whichever apiserver the VIP's holder runs.
    pub output_rule: bool,
    /// Health-aware mastership.
    pub health: HealthSettings,
}

/// `cplb.health`: a node whose proxy cannot reach a healthy apiserver
/// advertises `degradedPriority` instead of `priority`, so a healthy node
/// takes the VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthSettings {
    /// On by default.
    pub enabled: bool,
    /// Priority while unhealthy, below `cplb.priority`.
    pub degraded_priority: u8,
    /// How long unhealthy must last before the priority drops.
    #[serde(serialize_with = "serialize_go_duration")]
    pub fall: Duration,
    /// How long healthy must last before the priority is restored.
    #[serde(serialize_with = "serialize_go_duration")]
    pub rise: Duration,
}

/// Reads and validates a configuration file.
pub fn load(path: &Path, host: &dyn Host) -> Result<Config, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, host)
}

/// Parses and validates a configuration document. Warnings come back in
/// [`Config::warnings`], or with the errors.
pub fn parse(text: &str, host: &dyn Host) -> Result<Config, ConfigError> {
    let document: raw::Document =
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax(syntax::problem(text, &e)))?;
    let mut v = Validator {
        problems: Vec::new(),
        positions: Positions::default(),
        host,
        text,
    };
    let config = v.document(document);
    let problems = collapse(v.problems);
    match config {
        Some(mut config) if !problems.iter().any(Problem::is_error) => {
            config.positions = v.positions;
            config.warnings = problems;
            Ok(config)
        }
        _ => Err(ConfigError::Invalid(problems)),
    }
}

impl Config {
    /// The advert interval `instance` runs with: `cplb.advertInterval`
    /// when set, else its `advertIntervalSeconds`.
    pub fn advert_interval(&self, instance: &VrrpInstance) -> Duration {
        self.cplb
            .advert_interval
            .unwrap_or_else(|| Duration::from_secs(u64::from(instance.advert_interval_seconds)))
    }

    /// The effective configuration as YAML, every default filled in.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self)
            .unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }
}
