//! k0s-compatible configuration: `spec.network.controlPlaneLoadBalancing`.
//!
//! [`load`] reads a k0s `ClusterConfig`, a k0sctl `Cluster` (its
//! `spec.k0s.config`) or a document with just that subtree, plus
//! `spec.api.port` and cplb's own top-level `cplb` section. It applies k0s's
//! defaults and validation rules with k0s's error strings, then the stricter
//! checks k0s lacks, and reports every problem at once, each with its path
//! and, where the YAML gives one, its line and column. Validation runs even
//! with `enabled: false`, as in k0s.

mod raw;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;
use serde_saphyr::{Location, Spanned};

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

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the document, e.g.
    /// `spec.network.controlPlaneLoadBalancing.keepalived.vrrpInstances[0].authPass`.
    pub path: String,
    /// Line and column in the file, when known.
    pub position: Option<(u64, u64)>,
    /// What is wrong; k0s's own wording where k0s has the rule.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, column)) = self.position {
            write!(f, "{line}:{column}: ")?;
        }
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not YAML of the expected shape.
    #[error("{0}")]
    Syntax(String),
    /// One or more rules broken; all of them are listed.
    #[error("{} problem(s):\n{}", .0.len(), DisplayProblems(.0))]
    Invalid(Vec<Problem>),
}

struct DisplayProblems<'a>(&'a [Problem]);

impl fmt::Display for DisplayProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {problem}")?;
        }
        Ok(())
    }
}

/// What validation needs to know about the machine: k0s resolves an empty
/// `interface` to the default route's and a MAC address to its interface.
pub trait Host {
    /// The name of the interface that owns the default route.
    fn default_interface(&self) -> Result<String, String>;
    /// Every interface with its MAC address.
    fn interfaces(&self) -> Result<Vec<(String, [u8; 6])>, String>;
}

/// The machine we run on, read from `/proc` and `/sys`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemHost;

impl Host for SystemHost {
    fn default_interface(&self) -> Result<String, String> {
        // IPv4 first (`/proc/net/route`: Iface, Destination 00000000), then
        // IPv6 (`/proc/net/ipv6_route`: ::/0, device in the last column).
        let v4 = fs::read_to_string("/proc/net/route")
            .map_err(|e| format!("failed to list routes: {e}"))?;
        for line in v4.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [iface, "00000000", ..] = fields.as_slice() {
                return Ok((*iface).to_string());
            }
        }
        let v6 = fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
        for line in v6.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [dst, "00", .., iface] = fields.as_slice()
                && dst.chars().all(|c| c == '0')
                && *iface != "lo"
            {
                return Ok((*iface).to_string());
            }
        }
        Err("default route not found".to_string())
    }

    fn interfaces(&self) -> Result<Vec<(String, [u8; 6])>, String> {
        let entries = fs::read_dir("/sys/class/net")
            .map_err(|e| format!("failed to list network links: {e}"))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mac = fs::read_to_string(entry.path().join("address")).unwrap_or_default();
            if let Some(mac) = parse_mac(mac.trim()) {
                out.push((name, mac));
            }
        }
        Ok(out)
    }
}

/// Reads and validates a configuration file.
pub fn load(path: &Path, host: &dyn Host) -> Result<Config, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, host)
}

/// Parses and validates a configuration document.
pub fn parse(text: &str, host: &dyn Host) -> Result<Config, ConfigError> {
    let document: raw::Document =
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    let mut v = Validator {
        problems: Vec::new(),
        host,
    };
    let config = v.document(document);
    match config {
        Some(config) if v.problems.is_empty() => Ok(config),
        _ => Err(ConfigError::Invalid(v.problems)),
    }
}

const CPLB_PATH: &str = "spec.network.controlPlaneLoadBalancing";

struct Validator<'h> {
    problems: Vec<Problem>,
    host: &'h dyn Host,
}

fn position(location: &Location) -> Option<(u64, u64)> {
    (location.line() > 0).then(|| (location.line(), location.column()))
}

impl Validator<'_> {
    fn problem(
        &mut self,
        path: impl Into<String>,
        at: Option<&Location>,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            path: path.into(),
            position: at.and_then(position),
            message: message.into(),
        });
    }

    fn document(&mut self, document: raw::Document) -> Option<Config> {
        let settings = document.cplb;
        // A k0sctl Cluster carries the ClusterConfig in spec.k0s.config.
        let is_k0sctl = document.kind.as_deref() == Some("Cluster")
            || document
                .api_version
                .as_deref()
                .is_some_and(|v| v.starts_with("k0sctl.k0sproject.io/"));
        let spec = if is_k0sctl {
            document
                .spec
                .and_then(|s| s.k0s)
                .and_then(|k| k.config)
                .and_then(|c| c.spec)
        } else {
            document.spec
        };
        let Some(spec) = spec else {
            let what = if is_k0sctl {
                "spec.k0s.config.spec"
            } else {
                "spec"
            };
            self.problem(what, None, "not found: expected a k0s ClusterConfig, a k0sctl Cluster or spec.network.controlPlaneLoadBalancing");
            return None;
        };
        let api_port = match spec.api.and_then(|a| a.port) {
            None => DEFAULT_API_PORT,
            Some(port) => self.port(
                "spec.api.port",
                &port,
                DEFAULT_API_PORT,
                "api port must be in the range of 1-65535",
            ),
        };
        let Some(cplb) = spec.network.and_then(|n| n.control_plane_load_balancing) else {
            self.problem(CPLB_PATH, None, "not found");
            return None;
        };
        let settings = self.settings(settings);
        self.cplb(cplb, api_port, settings)
    }

    fn port(&mut self, path: &str, raw: &Spanned<i64>, zero_default: u16, message: &str) -> u16 {
        match raw.value {
            0 => zero_default,
            p => u16::try_from(p).unwrap_or_else(|_| {
                self.problem(path, Some(&raw.referenced), message);
                zero_default
            }),
        }
    }

    fn cplb(&mut self, cplb: raw::Cplb, api_port: u16, settings: Settings) -> Option<Config> {
        if let Some(kind) = &cplb.kind
            && !kind.value.is_empty()
            && kind.value != "Keepalived"
        {
            self.problem(
                format!("{CPLB_PATH}.type"),
                Some(&kind.referenced),
                format!(
                    "unsupported CPLB type: {}. Only allowed value: Keepalived",
                    kind.value
                ),
            );
        }
        let keepalived = cplb.keepalived;
        let base = format!("{CPLB_PATH}.keepalived");
        let proxy_port = match keepalived
            .as_ref()
            .and_then(|k| k.user_space_proxy_bind_port.as_ref())
        {
            None => DEFAULT_PROXY_PORT,
            Some(port) => self.port(
                &format!("{base}.userSpaceProxyBindPort"),
                port,
                DEFAULT_PROXY_PORT,
                "UserSpaceProxyPort must be in the range of 1-65535",
            ),
        };
        if proxy_port == api_port {
            let at = keepalived
                .as_ref()
                .and_then(|k| k.user_space_proxy_bind_port.as_ref())
                .map(|p| p.referenced);
            self.problem(
                format!("{base}.userSpaceProxyBindPort"),
                at.as_ref(),
                format!("UserSpaceProxyPort must differ from the API port {api_port}"),
            );
        }
        let (raw_instances, raw_servers, disable_load_balancer) = match keepalived {
            Some(k) => {
                for template in [&k.config_template_vrrp, &k.config_template_vs]
                    .into_iter()
                    .flatten()
                {
                    if !template.value.is_empty() {
                        self.problem(
                            format!("{base}.configTemplate*"),
                            Some(&template.referenced),
                            "keepalived config templates do not apply to cplb, which runs no keepalived; remove them",
                        );
                    }
                }
                (
                    k.vrrp_instances.unwrap_or_default(),
                    k.virtual_servers.unwrap_or_default(),
                    k.disable_load_balancer.unwrap_or(false),
                )
            }
            None => (Vec::new(), Vec::new(), false),
        };
        let vrrp_instances: Vec<VrrpInstance> = raw_instances
            .into_iter()
            .enumerate()
            .filter_map(|(i, raw)| {
                self.vrrp_instance(&format!("{base}.vrrpInstances[{i}]"), i, raw)
            })
            .collect();
        self.unique_vrids(&base, &vrrp_instances);
        let vips: Vec<IpAddr> = vrrp_instances
            .iter()
            .flat_map(|i| i.virtual_ips.iter().map(IpNet::addr))
            .collect();
        let virtual_servers = raw_servers
            .into_iter()
            .enumerate()
            .filter_map(|(i, raw)| {
                self.virtual_server(&format!("{base}.virtualServers[{i}]"), raw, &vips)
            })
            .collect();
        Some(Config {
            enabled: cplb.enabled.unwrap_or(false),
            api_port,
            vrrp_instances,
            virtual_servers,
            user_space_proxy_bind_port: proxy_port,
            disable_load_balancer,
            cplb: settings,
        })
    }

    fn vrrp_instance(
        &mut self,
        path: &str,
        index: usize,
        raw: raw::VrrpInstance,
    ) -> Option<VrrpInstance> {
        let before = self.problems.len();
        let at = |s: &Option<Spanned<String>>| s.as_ref().map(|s| s.referenced);

        // virtualIPs: required, CIDRs; cplb: one family.
        let mut virtual_ips = Vec::new();
        let raw_vips = raw.virtual_ips.unwrap_or_default();
        if raw_vips.is_empty() {
            self.problem(
                format!("{path}.virtualIPs"),
                None,
                "VirtualIPs must be defined",
            );
        }
        for (j, vip) in raw_vips.iter().enumerate() {
            match vip.value.parse::<IpNet>() {
                Ok(net) => virtual_ips.push(net),
                Err(_) => self.problem(
                    format!("{path}.virtualIPs[{j}]"),
                    Some(&vip.referenced),
                    format!("VirtualIPs must be a CIDR. Got: {}", vip.value),
                ),
            }
        }
        let family_v6 = virtual_ips.first().map(|n| n.addr().is_ipv6());
        if let Some(v6) = family_v6 {
            for (j, (net, vip)) in virtual_ips.iter().zip(&raw_vips).enumerate() {
                if net.addr().is_ipv6() != v6 {
                    self.problem(
                        format!("{path}.virtualIPs[{j}]"),
                        Some(&vip.referenced),
                        format!("VirtualIPs of one instance must all be IPv4 or all be IPv6 (VRRP runs one family per instance). Got: {}", vip.value),
                    );
                }
            }
        }

        // interface: default route's NIC, or the NIC with this MAC.
        let interface = match raw
            .interface
            .as_ref()
            .map(|s| s.value.trim())
            .filter(|s| !s.is_empty())
        {
            None => self.host.default_interface().unwrap_or_else(|e| {
                self.problem(
                    format!("{path}.interface"),
                    None,
                    format!("failed to get default NIC: {e}"),
                );
                String::new()
            }),
            Some(value) => match parse_mac(value) {
                None => value.to_string(),
                Some(mac) => self.interface_with_mac(
                    &format!("{path}.interface"),
                    at(&raw.interface).as_ref(),
                    value,
                    mac,
                ),
            },
        };

        // virtualRouterID: 0 means 51 + index.
        let vrid = match &raw.virtual_router_id {
            None => self.auto_vrid(path, index),
            Some(id) if id.value == 0 => self.auto_vrid(path, index),
            Some(id) => u8::try_from(id.value)
                .ok()
                .filter(|&v| v >= 1)
                .unwrap_or_else(|| {
                    self.problem(
                        format!("{path}.virtualRouterID"),
                        Some(&id.referenced),
                        "VirtualRouterID must be in the range of 1-255",
                    );
                    0
                }),
        };

        // advertIntervalSeconds: 0 means 1; cplb also refuses negatives and
        // what VRRPv2's one-octet field cannot carry.
        let advert_interval_seconds = match &raw.advert_interval_seconds {
            None => 1,
            Some(s) if s.value == 0 => 1,
            Some(s) => u8::try_from(s.value)
                .ok()
                .filter(|&v| v >= 1)
                .unwrap_or_else(|| {
                    self.problem(
                        format!("{path}.advertIntervalSeconds"),
                        Some(&s.referenced),
                        "AdvertIntervalSeconds must be in the range of 1-255",
                    );
                    1
                }),
        };

        // authPass: required, at most 8 bytes.
        let auth_pass = raw
            .auth_pass
            .as_ref()
            .map(|s| s.value.clone())
            .unwrap_or_default();
        if auth_pass.is_empty() {
            self.problem(
                format!("{path}.authPass"),
                at(&raw.auth_pass).as_ref(),
                "AuthPass must be defined",
            );
        } else if auth_pass.len() > 8 {
            self.problem(
                format!("{path}.authPass"),
                at(&raw.auth_pass).as_ref(),
                "AuthPass must be 8 characters or less",
            );
        }

        // unicastPeers / unicastSourceIP.
        let raw_peers = raw.unicast_peers.unwrap_or_default();
        let mut unicast_peers = Vec::new();
        let mut unicast_source_ip = None;
        if !raw_peers.is_empty() {
            let source_text = raw
                .unicast_source_ip
                .as_ref()
                .map(|s| s.value.as_str())
                .unwrap_or_default();
            match source_text.parse::<IpAddr>() {
                Ok(ip) => unicast_source_ip = Some(ip),
                Err(_) => self.problem(
                    format!("{path}.unicastSourceIP"),
                    at(&raw.unicast_source_ip).as_ref(),
                    format!("UnicastPeers require a valid UnicastSourceIP. Got: {source_text}"),
                ),
            }
            for (j, peer) in raw_peers.iter().enumerate() {
                let peer_path = format!("{path}.unicastPeers[{j}]");
                match peer.value.parse::<IpAddr>() {
                    Err(_) => self.problem(
                        peer_path,
                        Some(&peer.referenced),
                        format!(
                            "UnicastPeers require valid IP addresses. Got: {}",
                            peer.value
                        ),
                    ),
                    Ok(ip) if Some(ip) == unicast_source_ip => self.problem(
                        peer_path,
                        Some(&peer.referenced),
                        format!(
                            "UnicastPeers must not contain the UnicastSourceIP. Got: {}",
                            peer.value
                        ),
                    ),
                    Ok(ip) => unicast_peers.push((ip, peer.referenced)),
                }
            }
            // cplb: adverts go to peers of the VIPs' family, from a source of it.
            if let Some(v6) = family_v6 {
                let family = if v6 { "IPv6" } else { "IPv4" };
                if let Some(source) = unicast_source_ip.filter(|s| s.is_ipv6() != v6) {
                    self.problem(
                        format!("{path}.unicastSourceIP"),
                        at(&raw.unicast_source_ip).as_ref(),
                        format!(
                            "UnicastSourceIP must be {family}, like the VirtualIPs. Got: {source}"
                        ),
                    );
                }
                for (j, (peer, location)) in unicast_peers.iter().enumerate() {
                    if peer.is_ipv6() != v6 {
                        self.problem(
                            format!("{path}.unicastPeers[{j}]"),
                            Some(location),
                            format!(
                                "UnicastPeers must be {family}, like the VirtualIPs. Got: {peer}"
                            ),
                        );
                    }
                }
            }
        }

        // addressLabel: 0 means 10000; 0xffffffff is reserved.
        let address_label = match &raw.address_label {
            None => DEFAULT_ADDRESS_LABEL,
            Some(l) if l.value == 0 => DEFAULT_ADDRESS_LABEL,
            Some(l) if l.value == i64::from(u32::MAX) => {
                self.problem(
                    format!("{path}.addressLabel"),
                    Some(&l.referenced),
                    "AddressLabel 0xffffffff is reserved",
                );
                DEFAULT_ADDRESS_LABEL
            }
            Some(l) => u32::try_from(l.value).unwrap_or_else(|_| {
                self.problem(
                    format!("{path}.addressLabel"),
                    Some(&l.referenced),
                    "AddressLabel must be in the range of 1-4294967294",
                );
                DEFAULT_ADDRESS_LABEL
            }),
        };

        (self.problems.len() == before).then(|| VrrpInstance {
            virtual_ips,
            interface,
            virtual_router_id: vrid,
            advert_interval_seconds,
            auth_pass,
            unicast_peers: unicast_peers.into_iter().map(|(ip, _)| ip).collect(),
            unicast_source_ip,
            address_label,
        })
    }

    fn auto_vrid(&mut self, path: &str, index: usize) -> u8 {
        let vrid = FIRST_AUTO_VRID + index as i64;
        u8::try_from(vrid).unwrap_or_else(|_| {
            self.problem(
                format!("{path}.virtualRouterID"),
                None,
                "automatic virtualRouterIDs exceeded, specify them explicitly",
            );
            0
        })
    }

    /// k0s compares the MAC as a literal string; cplb compares the bytes, so
    /// `AA-BB-…` finds the interface `aa:bb:…` names.
    fn interface_with_mac(
        &mut self,
        path: &str,
        at: Option<&Location>,
        text: &str,
        mac: [u8; 6],
    ) -> String {
        let found = self.host.interfaces().and_then(|links| {
            links
                .into_iter()
                .find(|(_, m)| *m == mac)
                .map(|(name, _)| name)
                .ok_or_else(|| format!("interface with MAC address {text} not found"))
        });
        found.unwrap_or_else(|e| {
            self.problem(
                path,
                at,
                format!("failed to get NIC for MAC address {text}: {e}"),
            );
            String::new()
        })
    }

    /// cplb: one VRID per interface and family (VRRP demultiplexes by VRID).
    fn unique_vrids(&mut self, base: &str, instances: &[VrrpInstance]) {
        let mut seen: BTreeMap<(String, bool, u8), usize> = BTreeMap::new();
        for (i, instance) in instances.iter().enumerate() {
            let v6 = instance
                .virtual_ips
                .first()
                .is_some_and(|n| n.addr().is_ipv6());
            let key = (instance.interface.clone(), v6, instance.virtual_router_id);
            if let Some(first) = seen.insert(key, i) {
                self.problem(
                    format!("{base}.vrrpInstances[{i}].virtualRouterID"),
                    None,
                    format!(
                        "VirtualRouterID {} is already used by vrrpInstances[{first}] on interface {}",
                        instance.virtual_router_id, instance.interface
                    ),
                );
            }
        }
    }

    fn virtual_server(
        &mut self,
        path: &str,
        raw: raw::VirtualServer,
        vips: &[IpAddr],
    ) -> Option<VirtualServer> {
        let before = self.problems.len();
        let ip_text = raw
            .ip_address
            .as_ref()
            .map(|s| s.value.as_str())
            .unwrap_or_default();
        let ip_at = raw.ip_address.as_ref().map(|s| s.referenced);
        if ip_text.is_empty() {
            self.problem(
                format!("{path}.ipAddress"),
                ip_at.as_ref(),
                "IPAddress must be defined",
            );
        }
        let ip_address = ip_text.parse::<IpAddr>().ok();
        match ip_address {
            None => self.problem(
                format!("{path}.ipAddress"),
                ip_at.as_ref(),
                format!("invalid IP address: {ip_text}"),
            ),
            Some(ip) if !vips.contains(&ip) => self.problem(
                format!("{path}.ipAddress"),
                ip_at.as_ref(),
                format!("IPAddress {ip} is not one of the VirtualIPs of the vrrpInstances"),
            ),
            Some(_) => {}
        }
        let delay_loop = match &raw.delay_loop {
            None => Duration::from_secs(60),
            Some(text) => match parse_go_duration(&text.value) {
                // k0s: zero means 1m; truncated to microseconds; must be > 0.
                Some(0) => Duration::from_secs(60),
                Some(nanos) if nanos / 1000 > 0 => Duration::from_micros((nanos / 1000) as u64),
                Some(_) => {
                    self.problem(
                        format!("{path}.delayLoop"),
                        Some(&text.referenced),
                        "DelayLoop must be positive",
                    );
                    Duration::ZERO
                }
                None => {
                    self.problem(
                        format!("{path}.delayLoop"),
                        Some(&text.referenced),
                        format!("invalid duration {:?}", text.value),
                    );
                    Duration::ZERO
                }
            },
        };
        let lb_algo = self.one_of(
            path,
            "lbAlgo",
            raw.lb_algo.as_ref(),
            "rr",
            &["rr", "wrr", "lc", "wlc", "lblc", "dh", "sh", "sed", "nq"],
            "LBAlgo",
        );
        let lb_kind = self.one_of(
            path,
            "lbKind",
            raw.lb_kind.as_ref(),
            "DR",
            &["NAT", "DR", "TUN"],
            "LBKind",
        );
        let persistence_timeout_seconds = match &raw.persistence_timeout_seconds {
            None => 360,
            Some(p) if p.value == 0 => 360,
            Some(p) => u32::try_from(p.value)
                .ok()
                .filter(|&v| v <= 2_678_400)
                .unwrap_or_else(|| {
                    self.problem(
                        format!("{path}.persistenceTimeoutSeconds"),
                        Some(&p.referenced),
                        "PersistenceTimeout must be in the range of 1-2678400",
                    );
                    0
                }),
        };
        match ip_address {
            Some(ip_address) if self.problems.len() == before => Some(VirtualServer {
                ip_address,
                delay_loop,
                lb_algo,
                lb_kind,
                persistence_timeout_seconds,
            }),
            _ => None,
        }
    }

    fn one_of(
        &mut self,
        path: &str,
        field: &str,
        raw: Option<&Spanned<String>>,
        default: &str,
        allowed: &[&str],
        name: &str,
    ) -> String {
        match raw.map(|s| (s.value.as_str(), s.referenced)) {
            None | Some(("", _)) => default.to_string(),
            Some((value, _)) if allowed.contains(&value) => value.to_string(),
            Some((value, at)) => {
                // k0s's message, trailing space included.
                self.problem(
                    format!("{path}.{field}"),
                    Some(&at),
                    format!("invalid {name}: {value} "),
                );
                default.to_string()
            }
        }
    }

    fn settings(&mut self, raw: Option<raw::Settings>) -> Settings {
        let mut settings = Settings {
            vrrp_version: 2,
            priority: K0S_PRIORITY,
            admin_address: SocketAddr::from(([127, 0, 0, 1], 9440)),
            netfilter: Netfilter::Iptables,
            kubeconfig: DEFAULT_KUBECONFIG.to_string(),
            output_rule: true,
            health: HealthSettings {
                enabled: true,
                degraded_priority: DEFAULT_DEGRADED_PRIORITY,
                fall: Duration::from_secs(3),
                rise: Duration::from_secs(10),
            },
        };
        let Some(raw) = raw else {
            return settings;
        };
        if let Some(v) = raw.vrrp_version {
            match v.value {
                2 | 3 => settings.vrrp_version = v.value as u8,
                _ => self.problem(
                    "cplb.vrrpVersion",
                    Some(&v.referenced),
                    "vrrpVersion must be 2 or 3",
                ),
            }
        }
        if let Some(p) = raw.priority {
            match u8::try_from(p.value) {
                Ok(priority @ 1..=254) => settings.priority = priority,
                _ => self.problem(
                    "cplb.priority",
                    Some(&p.referenced),
                    "priority must be in the range of 1-254",
                ),
            }
        }
        if let Some(a) = raw.admin_address {
            match a.value.parse() {
                Ok(address) => settings.admin_address = address,
                Err(_) => self.problem(
                    "cplb.adminAddress",
                    Some(&a.referenced),
                    format!("adminAddress must be an address:port. Got: {}", a.value),
                ),
            }
        }
        if let Some(n) = raw.netfilter {
            match n.value.as_str() {
                "iptables" => settings.netfilter = Netfilter::Iptables,
                "nftables" => settings.netfilter = Netfilter::Nftables,
                other => self.problem(
                    "cplb.netfilter",
                    Some(&n.referenced),
                    format!("netfilter must be iptables or nftables. Got: {other}"),
                ),
            }
        }
        if let Some(k) = raw.kubeconfig {
            settings.kubeconfig = k.value;
        }
        if let Some(o) = raw.output_rule {
            settings.output_rule = o.value;
        }
        if let Some(health) = raw.health {
            if let Some(e) = health.enabled {
                settings.health.enabled = e.value;
            }
            if let Some(d) = &health.degraded_priority {
                match u8::try_from(d.value) {
                    Ok(priority @ 1..=254) => settings.health.degraded_priority = priority,
                    _ => self.problem(
                        "cplb.health.degradedPriority",
                        Some(&d.referenced),
                        "degradedPriority must be in the range of 1-254",
                    ),
                }
            }
            if let Some(d) = &health.degraded_priority
                && settings.health.degraded_priority >= settings.priority
            {
                self.problem(
                    "cplb.health.degradedPriority",
                    Some(&d.referenced),
                    format!(
                        "degradedPriority ({}) must be below priority ({}), or healthy nodes never take the VIP from a degraded one",
                        settings.health.degraded_priority, settings.priority
                    ),
                );
            }
            for (name, field, slot) in [
                ("fall", health.fall, &mut settings.health.fall),
                ("rise", health.rise, &mut settings.health.rise),
            ] {
                let Some(text) = field else { continue };
                match parse_go_duration(&text.value) {
                    Some(nanos) if nanos >= 0 => {
                        *slot = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
                    }
                    _ => self.problem(
                        format!("cplb.health.{name}"),
                        Some(&text.referenced),
                        format!(
                            "{name} must be a non-negative duration like 3s. Got: {}",
                            text.value
                        ),
                    ),
                }
            }
        }
        if settings.health.degraded_priority >= settings.priority {
            // A low base priority and no explicit degraded one (else it was
            // reported above): keep a gap below the base.
            settings.health.degraded_priority = (settings.priority / 2).max(1);
            if settings.priority == 1 {
                settings.health.enabled = false;
            }
        }
        settings
    }
}

/// A MAC address in the notations Go's `net.ParseMAC` accepts for 48 bits:
/// `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` or `aabb.ccdd.eeff`, any case.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let hex: String =
        if text.len() == 17 && (text.split(':').count() == 6 || text.split('-').count() == 6) {
            text.split([':', '-'])
                .map(|part| (part.len() == 2).then_some(part))
                .collect::<Option<String>>()?
        } else if text.len() == 14 && text.split('.').count() == 3 {
            text.split('.')
                .map(|part| (part.len() == 4).then_some(part))
                .collect::<Option<String>>()?
        } else {
            return None;
        };
    let mut mac = [0u8; 6];
    for (i, byte) in mac.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(mac)
}

/// A Go `time.ParseDuration` string in nanoseconds: an optional sign, then
/// decimal numbers with units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`
/// (`1m`, `1.5s`, `1h2m`, `-3s`, `0`). `None` if it is not one.
pub fn parse_go_duration(text: &str) -> Option<i128> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut value = whole.checked_mul(scale)?;
        let mut place = scale;
        for digit in fraction.chars() {
            place /= 10;
            value += i128::from(digit.to_digit(10)? as u8) * place;
        }
        total = total.checked_add(value)?;
        rest = after;
    }
    Some(if negative { -total } else { total })
}

fn serialize_go_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    let micros = d.as_micros();
    let text = if micros.is_multiple_of(60_000_000) {
        format!("{}m", micros / 60_000_000)
    } else if micros.is_multiple_of(1_000_000) {
        format!("{}s", micros / 1_000_000)
    } else {
        format!("{micros}us")
    };
    s.serialize_str(&text)
}

impl Config {
    /// The effective configuration as YAML, every default filled in.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self)
            .unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }
}
