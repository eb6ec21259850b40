//! The rules: k0s's, with k0s's wording, then cplb's stricter ones. Every
//! problem found is kept, with its position.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};

use super::*;

pub(super) struct Validator<'h> {
    pub(super) problems: Vec<Problem>,
    pub(super) positions: Positions,
    pub(super) host: &'h dyn Host,
    /// The document, for hints that need its text (a misspelt key).
    pub(super) text: &'h str,
}

impl Validator<'_> {
    fn problem(
        &mut self,
        path: impl Into<String>,
        at: Option<&Location>,
        message: impl Into<String>,
    ) {
        let path = path.into();
        let position = at.and_then(position).or_else(|| self.positions.get(&path));
        self.problems.push(Problem::error(path, position, message));
    }

    fn warning(&mut self, path: impl Into<String>, at: &Location, message: impl Into<String>) {
        self.problems
            .push(Problem::error(path, position(at), message).with_severity(Severity::Warning));
    }

    /// Remembers where `path` was written.
    fn mark(&mut self, path: impl Into<String>, at: &Location) {
        self.positions.insert(path.into(), at);
    }

    /// ` (line 12)`, where `path` (or its closest parent) was written.
    fn line_of(&self, path: &str) -> String {
        self.positions
            .get(path)
            .map(|(line, _)| format!(" (line {line})"))
            .unwrap_or_default()
    }

    pub(super) fn document(&mut self, document: raw::Document) -> Option<Config> {
        let settings = document.cplb;
        // A k0sctl Cluster carries the ClusterConfig in spec.k0s.config.
        let is_k0sctl = document.kind.as_deref() == Some("Cluster")
            || document
                .api_version
                .as_deref()
                .is_some_and(|v| v.starts_with("k0sctl.k0sproject.io/"));
        if let Some(network) = &document.network {
            self.warning(
                "network",
                &network.referenced,
                "ignored: `network` belongs under `spec` (spec.network.controlPlaneLoadBalancing)",
            );
        }
        let spec = if is_k0sctl {
            document
                .spec
                .and_then(|s| s.value.k0s)
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
        self.mark("spec", &spec.referenced);
        let spec = spec.value;
        for (key, misplaced) in [
            ("cplb", &spec.cplb),
            (
                "controlPlaneLoadBalancing",
                &spec.control_plane_load_balancing,
            ),
        ] {
            if let Some(at) = misplaced {
                let place = if key == "cplb" {
                    "at the top level of the document, beside `spec`"
                } else {
                    "under `spec.network`"
                };
                self.warning(
                    format!("spec.{key}"),
                    &at.referenced,
                    format!("ignored: `{key}` belongs {place}"),
                );
            }
        }
        let api_port = match spec.api.and_then(|a| a.port) {
            None => DEFAULT_API_PORT,
            Some(port) => {
                self.mark("spec.api.port", &port.referenced);
                // k0s's wording (api.go); unlike the CPLB ports, 0 is invalid.
                match u16::try_from(port.value) {
                    Ok(p) if p > 0 => p,
                    _ => {
                        self.problem(
                            "spec.api.port",
                            Some(&port.referenced),
                            format!(
                                "port: Invalid value: {}: must be between 1 and 65535, inclusive",
                                port.value
                            ),
                        );
                        DEFAULT_API_PORT
                    }
                }
            }
        };
        let network = spec.network.map(|n| {
            self.mark("spec.network", &n.referenced);
            n.value
        });
        if let Some(network) = &network {
            for (key, misplaced, place) in [
                (
                    "cplb",
                    &network.cplb,
                    "at the top level of the document, beside `spec`",
                ),
                (
                    "keepalived",
                    &network.keepalived,
                    "under `spec.network.controlPlaneLoadBalancing`",
                ),
            ] {
                if let Some(at) = misplaced {
                    self.warning(
                        format!("spec.network.{key}"),
                        &at.referenced,
                        format!("ignored: `{key}` belongs {place}"),
                    );
                }
            }
        }
        let Some(cplb) = network.and_then(|n| n.control_plane_load_balancing) else {
            let hint = self.misspelt("controlPlaneLoadBalancing");
            self.problem(CPLB_PATH, None, format!("not found{hint}"));
            return None;
        };
        self.mark(CPLB_PATH, &cplb.referenced);
        let settings = self.settings(settings);
        self.cplb(cplb.value, api_port, settings)
    }

    /// `; did you mean …` when the document has `key` in another case
    /// (keys are case-sensitive).
    fn misspelt(&self, key: &str) -> String {
        for (number, line) in self.text.lines().enumerate() {
            let Some((written, _)) = line.trim_start().split_once(':') else {
                continue;
            };
            if written != key && written.eq_ignore_ascii_case(key) {
                return format!(
                    "; line {} has `{written}`: keys are case-sensitive, write `{key}`",
                    number + 1
                );
            }
        }
        String::new()
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
        if let Some(enabled) = &cplb.enabled {
            self.mark(format!("{CPLB_PATH}.enabled"), &enabled.referenced);
        }
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
        let base = format!("{CPLB_PATH}.keepalived");
        let keepalived = cplb.keepalived.map(|k| {
            self.mark(base.clone(), &k.referenced);
            k.value
        });
        let proxy_path = format!("{base}.userSpaceProxyBindPort");
        let proxy_port = match keepalived
            .as_ref()
            .and_then(|k| k.user_space_proxy_bind_port.as_ref())
        {
            None => DEFAULT_PROXY_PORT,
            Some(port) => {
                self.mark(proxy_path.clone(), &port.referenced);
                self.port(
                    &proxy_path,
                    port,
                    DEFAULT_PROXY_PORT,
                    "UserSpaceProxyPort must be in the range of 1-65535",
                )
            }
        };
        self.ports(&proxy_path, proxy_port, api_port, &settings);
        let (raw_instances, raw_servers, disable_load_balancer) = match keepalived {
            Some(k) => {
                for (key, template) in [
                    ("configTemplateVRRP", &k.config_template_vrrp),
                    ("configTemplateVS", &k.config_template_vs),
                ] {
                    if let Some(template) = template
                        && !template.value.is_empty()
                    {
                        self.problem(
                            format!("{base}.{key}"),
                            Some(&template.referenced),
                            "keepalived config templates do not apply to cplb, which runs no keepalived; remove them",
                        );
                    }
                }
                if let Some(list) = &k.vrrp_instances {
                    self.mark(format!("{base}.vrrpInstances"), &list.referenced);
                }
                if let Some(list) = &k.virtual_servers {
                    self.mark(format!("{base}.virtualServers"), &list.referenced);
                }
                if let Some(flag) = &k.disable_load_balancer {
                    self.mark(format!("{base}.disableLoadBalancer"), &flag.referenced);
                }
                (
                    k.vrrp_instances.map(|l| l.value).unwrap_or_default(),
                    k.virtual_servers.map(|l| l.value).unwrap_or_default(),
                    k.disable_load_balancer.is_some_and(|d| d.value),
                )
            }
            None => (Vec::new(), Vec::new(), false),
        };
        // Indices stay those of the file, even past an invalid instance.
        let checked: Vec<Option<VrrpInstance>> = raw_instances
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                let path = format!("{base}.vrrpInstances[{i}]");
                self.mark(path.clone(), &raw.referenced);
                self.vrrp_instance(&path, i, raw.value, settings.vrrp_version)
            })
            .collect();
        self.advert_interval_fits(&base, &checked, &settings);
        self.unique_vrids(&base, &checked);
        self.unique_vips(&base, &checked);
        let vrrp_instances: Vec<VrrpInstance> = checked.into_iter().flatten().collect();
        let vips: Vec<IpAddr> = vrrp_instances
            .iter()
            .flat_map(|i| i.virtual_ips.iter().map(IpNet::addr))
            .collect();
        let virtual_servers = raw_servers
            .into_iter()
            .enumerate()
            .filter_map(|(i, raw)| {
                let path = format!("{base}.virtualServers[{i}]");
                self.mark(path.clone(), &raw.referenced);
                self.virtual_server(&path, raw.value, &vips)
            })
            .collect();
        Some(Config {
            enabled: cplb.enabled.is_some_and(|e| e.value),
            api_port,
            vrrp_instances,
            virtual_servers,
            user_space_proxy_bind_port: proxy_port,
            disable_load_balancer,
            cplb: settings,
            positions: Positions::default(),
            warnings: Vec::new(),
        })
    }

    /// The proxy, the apiserver and the admin endpoint each need a port of
    /// their own: the proxy listens on every address, the apiserver too.
    fn ports(&mut self, proxy_path: &str, proxy_port: u16, api_port: u16, settings: &Settings) {
        let written = |v: &Self, path: &str| v.positions.0.contains_key(path);
        if proxy_port == api_port {
            if written(self, proxy_path) {
                let api = if written(self, "spec.api.port") {
                    format!(" (spec.api.port{})", self.line_of("spec.api.port"))
                } else {
                    " (the default of spec.api.port)".to_owned()
                };
                self.problem(
                    proxy_path,
                    None,
                    format!("UserSpaceProxyPort must differ from the API port {api_port}{api}"),
                );
            } else {
                self.problem(
                    "spec.api.port",
                    None,
                    format!("UserSpaceProxyPort must differ from the API port {api_port} (userSpaceProxyBindPort is {DEFAULT_PROXY_PORT} when not set)"),
                );
            }
        }
        let admin = settings.admin_address;
        for (port, path, what) in [
            (proxy_port, proxy_path, "userSpaceProxyBindPort"),
            (api_port, "spec.api.port", "The API port"),
        ] {
            if admin.port() == port {
                let (path, default) = if written(self, "cplb.adminAddress") {
                    ("cplb.adminAddress", "")
                } else {
                    (path, ", the default")
                };
                self.problem(
                    path,
                    None,
                    format!("{what} {port} is also the port of cplb.adminAddress ({admin}{default}); give one of them another port"),
                );
                break;
            }
        }
    }

    fn vrrp_instance(
        &mut self,
        path: &str,
        index: usize,
        raw: raw::VrrpInstance,
        vrrp_version: u8,
    ) -> Option<VrrpInstance> {
        let before = self.problems.len();
        let at = |s: &Option<Spanned<String>>| s.as_ref().map(|s| s.referenced);
        for (key, location) in [
            ("interface", at(&raw.interface)),
            ("authPass", at(&raw.auth_pass)),
            ("unicastSourceIP", at(&raw.unicast_source_ip)),
            (
                "advertIntervalSeconds",
                raw.advert_interval_seconds.as_ref().map(|s| s.referenced),
            ),
            (
                "virtualRouterID",
                raw.virtual_router_id.as_ref().map(|s| s.referenced),
            ),
        ] {
            if let Some(location) = location {
                self.mark(format!("{path}.{key}"), &location);
            }
        }

        // virtualIPs: required, CIDRs; cplb: one family, usable addresses.
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
            let vip_path = format!("{path}.virtualIPs[{j}]");
            self.mark(vip_path.clone(), &vip.referenced);
            match vip.value.parse::<IpNet>() {
                Ok(net) => {
                    if let Some(why) = unusable_vip(&net) {
                        self.problem(
                            vip_path,
                            Some(&vip.referenced),
                            format!("VirtualIPs must be usable addresses: {} {why}", vip.value),
                        );
                    }
                    virtual_ips.push(net);
                }
                Err(_) => self.problem(
                    vip_path,
                    Some(&vip.referenced),
                    format!("VirtualIPs must be a CIDR. Got: {}", vip.value),
                ),
            }
        }
        if virtual_ips.len() > usize::from(u8::MAX) {
            self.problem(
                format!("{path}.virtualIPs"),
                None,
                format!(
                    "VirtualIPs: at most 255 per instance (an advert counts them in one octet). Got: {}",
                    virtual_ips.len()
                ),
            );
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
        let interface_path = format!("{path}.interface");
        let interface = match raw
            .interface
            .as_ref()
            .map(|s| s.value.trim())
            .filter(|s| !s.is_empty())
        {
            None if !self.host.inspected() => {
                self.unresolved(&interface_path, "empty: the interface of the default route");
                String::new()
            }
            None => self.host.default_interface().unwrap_or_else(|e| {
                self.problem(
                    interface_path.clone(),
                    None,
                    format!("failed to get default NIC: {e}"),
                );
                String::new()
            }),
            Some(value) => match parse_mac(value) {
                None => {
                    if let Some(why) = bad_interface_name(value) {
                        self.problem(interface_path.clone(), None, why);
                    }
                    value.to_string()
                }
                Some(_) if !self.host.inspected() => {
                    self.unresolved(
                        &interface_path,
                        &format!("{value}: the interface with this MAC address"),
                    );
                    value.to_string()
                }
                Some(mac) => self.interface_with_mac(
                    &interface_path,
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
        // what the version's interval field cannot carry: one octet of
        // seconds in VRRPv2 (RFC 3768 §5.3.7), 12 bits of centiseconds in
        // VRRPv3 (RFC 5798 §5.2.7), which every IPv6 instance runs.
        let v3 = family_v6 == Some(true) || vrrp_version == 3;
        let advert_interval_seconds = match &raw.advert_interval_seconds {
            None => 1,
            Some(s) if s.value == 0 => 1,
            Some(s) => {
                let range = u8::try_from(s.value).ok().filter(|&v| v >= 1);
                match range {
                    Some(seconds) if v3 && u16::from(seconds) * 100 > 4095 => {
                        let why = if family_v6 == Some(true) {
                            "IPv6 VirtualIPs always run VRRPv3"
                        } else {
                            "cplb.vrrpVersion is 3"
                        };
                        self.problem(
                            format!("{path}.advertIntervalSeconds"),
                            Some(&s.referenced),
                            format!("AdvertIntervalSeconds must be in the range of 1-40 for VRRPv3, which carries at most 40.95 s ({why}). Got: {seconds}"),
                        );
                        1
                    }
                    Some(seconds) => seconds,
                    None => {
                        self.problem(
                            format!("{path}.advertIntervalSeconds"),
                            Some(&s.referenced),
                            "AdvertIntervalSeconds must be in the range of 1-255",
                        );
                        1
                    }
                }
            }
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
                self.mark(peer_path.clone(), &peer.referenced);
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
                    Ok(ip) if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || ip == IpAddr::from([255, 255, 255, 255]) => self.problem(
                        peer_path,
                        Some(&peer.referenced),
                        format!(
                            "UnicastPeers must be the other controllers' unicast addresses. Got: {}",
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

        // Warnings (an interface left unresolved without a host) keep it.
        let clean = !self.problems.iter().skip(before).any(Problem::is_error);
        clean.then(|| VrrpInstance {
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

    /// `--host none`: what would be looked up on the host is not.
    fn unresolved(&mut self, path: &str, what: &str) {
        let position = self.positions.get(path);
        self.problems.push(
            Problem::error(
                path,
                position,
                format!("{what}; not resolved or checked (no host)"),
            )
            .with_severity(Severity::Warning),
        );
    }

    fn auto_vrid(&mut self, path: &str, index: usize) -> u8 {
        let vrid = FIRST_AUTO_VRID + index as i64;
        u8::try_from(vrid).unwrap_or_else(|_| {
            self.problem(
                format!("{path}.virtualRouterID"),
                None,
                "automatic virtualRouterIDs exceeded, specify them explicitly (instance i gets 51 + i, and a VRID is at most 255)",
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

    /// `cplb.advertInterval` needs every instance to run VRRPv3: VRRPv2
    /// carries whole seconds (RFC 3768 §5.3.7). It replaces each
    /// instance's `advertIntervalSeconds`, which is then only a warning.
    fn advert_interval_fits(
        &mut self,
        base: &str,
        instances: &[Option<VrrpInstance>],
        settings: &Settings,
    ) {
        let Some(interval) = settings.advert_interval else {
            return;
        };
        let shown = format_go_duration(interval);
        let v2 = instances.iter().enumerate().find(|(_, instance)| {
            instance.as_ref().is_some_and(|i| {
                settings.vrrp_version == 2
                    && i.virtual_ips.first().is_some_and(|n| n.addr().is_ipv4())
            })
        });
        if let Some((index, _)) = v2 {
            self.problem(
                "cplb.advertInterval",
                None,
                format!(
                    "advertInterval ({shown}) needs VRRPv3, whose adverts carry centiseconds (RFC 5798 §5.2.7), but vrrpInstances[{index}] runs VRRPv2 (IPv4 with cplb.vrrpVersion 2), whose adverts carry whole seconds (RFC 3768 §5.3.7). Set cplb.vrrpVersion: 3 on every controller (a cluster that still has keepalived controllers speaking VRRPv2, as k0s renders IPv4 instances, cannot use it), or use advertIntervalSeconds"
                ),
            );
        }
        for (i, instance) in instances.iter().enumerate() {
            let path = format!("{base}.vrrpInstances[{i}].advertIntervalSeconds");
            // Only where it is written (`get` falls back to a parent).
            if instance.is_some()
                && self.positions.0.contains_key(&path)
                && let Some(position) = self.positions.get(&path)
            {
                self.problems.push(
                    Problem::error(
                        path,
                        Some(position),
                        format!("ignored: cplb.advertInterval ({shown}) sets the advert interval of every instance"),
                    )
                    .with_severity(Severity::Warning),
                );
            }
        }
    }

    /// cplb: one VRID per interface and family (VRRP demultiplexes by VRID).
    /// Indices are the file's, also after an invalid instance.
    fn unique_vrids(&mut self, base: &str, instances: &[Option<VrrpInstance>]) {
        let mut seen: BTreeMap<(String, bool, u8), usize> = BTreeMap::new();
        for (i, instance) in instances.iter().enumerate() {
            let Some(instance) = instance else { continue };
            let v6 = instance
                .virtual_ips
                .first()
                .is_some_and(|n| n.addr().is_ipv6());
            let key = (instance.interface.clone(), v6, instance.virtual_router_id);
            if let Some(first) = seen.get(&key).copied() {
                let first_path = format!("{base}.vrrpInstances[{first}]");
                let line = self.line_of(&format!("{first_path}.virtualRouterID"));
                self.problem(
                    format!("{base}.vrrpInstances[{i}].virtualRouterID"),
                    None,
                    format!(
                        "VirtualRouterID {} is already used by vrrpInstances[{first}]{line} on interface {}",
                        instance.virtual_router_id, instance.interface
                    ),
                );
            } else {
                seen.insert(key, i);
            }
        }
    }

    /// cplb: a VIP belongs to one instance (each instance adds and removes
    /// its own), is no controller's own address (unicastSourceIP, a peer),
    /// and is listed once.
    fn unique_vips(&mut self, base: &str, instances: &[Option<VrrpInstance>]) {
        let mut seen: BTreeMap<IpAddr, String> = BTreeMap::new();
        let mut nodes: BTreeMap<IpAddr, String> = BTreeMap::new();
        for (i, instance) in instances.iter().enumerate() {
            let Some(instance) = instance else { continue };
            let path = format!("{base}.vrrpInstances[{i}]");
            if let Some(source) = instance.unicast_source_ip {
                nodes
                    .entry(source)
                    .or_insert_with(|| format!("{path}.unicastSourceIP"));
            }
            for (j, peer) in instance.unicast_peers.iter().enumerate() {
                nodes
                    .entry(*peer)
                    .or_insert_with(|| format!("{path}.unicastPeers[{j}]"));
            }
        }
        for (i, instance) in instances.iter().enumerate() {
            let Some(instance) = instance else { continue };
            for (j, vip) in instance.virtual_ips.iter().enumerate() {
                let path = format!("{base}.vrrpInstances[{i}].virtualIPs[{j}]");
                let short = |p: &str| p.strip_prefix(&format!("{base}.")).unwrap_or(p).to_owned();
                if let Some(first) = seen.get(&vip.addr()) {
                    let line = self.line_of(first);
                    self.problem(
                        path.clone(),
                        None,
                        format!(
                            "VirtualIP {} is listed twice: also {}{line}",
                            vip.addr(),
                            short(first)
                        ),
                    );
                } else {
                    seen.insert(vip.addr(), path.clone());
                }
                if let Some(node) = nodes.get(&vip.addr()) {
                    let line = self.line_of(node);
                    self.problem(
                        path.clone(),
                        None,
                        format!(
                            "VirtualIP {} is a controller's own address ({}{line}); the VIP must be an address no node has",
                            vip.addr(),
                            short(node)
                        ),
                    );
                }
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
            Some(ip_address) if !self.problems.iter().skip(before).any(Problem::is_error) => {
                Some(VirtualServer {
                    ip_address,
                    delay_loop,
                    lb_algo,
                    lb_kind,
                    persistence_timeout_seconds,
                })
            }
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

    fn settings(&mut self, raw: Option<Spanned<raw::Settings>>) -> Settings {
        let mut settings = Settings {
            vrrp_version: 2,
            priority: K0S_PRIORITY,
            advert_interval: None,
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
        self.mark("cplb", &raw.referenced);
        let raw = raw.value;
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
        if let Some(text) = raw.advert_interval {
            self.mark("cplb.advertInterval", &text.referenced);
            settings.advert_interval = self.advert_interval(&text);
        }
        if let Some(a) = raw.admin_address {
            self.mark("cplb.adminAddress", &a.referenced);
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
                    Some(nanos) if (0..=MAX_HOLD_NANOS).contains(&nanos) => {
                        *slot = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
                    }
                    _ => self.problem(
                        format!("cplb.health.{name}"),
                        Some(&text.referenced),
                        format!(
                            "{name} must be a duration from 0s to 24h like 3s. Got: {}",
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

impl Validator<'_> {
    /// `cplb.advertInterval`: a Go duration in whole centiseconds from
    /// 10ms to 40.95s (RFC 5798 §5.2.7: 12 bits of centiseconds). Like
    /// keepalived, which rounds a finer `advert_int` to the nearest
    /// centisecond, but refused with that value rather than changed.
    fn advert_interval(&mut self, text: &Spanned<String>) -> Option<Duration> {
        let centi: i128 = 10_000_000;
        let range = i128::try_from(MIN_ADVERT_INTERVAL.as_nanos()).unwrap_or(centi)
            ..=i128::try_from(MAX_ADVERT_INTERVAL.as_nanos()).unwrap_or(4095 * centi);
        let message = match parse_go_duration(&text.value) {
            None => format!(
                "advertInterval must be a duration like 100ms or 1s. Got: {}",
                text.value
            ),
            Some(nanos) if !range.contains(&nanos) => format!(
                "advertInterval must be from 10ms to 40.95s: VRRPv3 carries 12 bits of centiseconds (RFC 5798 §5.2.7), and 10ms is also the shortest keepalived accepts. Got: {}",
                text.value
            ),
            Some(nanos) if nanos % centi != 0 => {
                // Half a centisecond rounds up, as keepalived rounds.
                let nearest = ((nanos + centi / 2) / centi).clamp(1, 4095);
                let nearest = Duration::from_millis(u64::try_from(nearest * 10).unwrap_or(10));
                format!(
                    "advertInterval must be a whole number of centiseconds, the unit VRRPv3 adverts carry (RFC 5798 §5.2.7): the nearest valid value is {}. Got: {}",
                    format_go_duration(nearest),
                    text.value
                )
            }
            Some(nanos) => {
                return Some(Duration::from_nanos(
                    u64::try_from(nanos).unwrap_or(u64::MAX),
                ));
            }
        };
        self.problem("cplb.advertInterval", Some(&text.referenced), message);
        None
    }
}

/// Why `net` cannot be a VIP, if it cannot: a VIP is a unicast address a
/// node adds to its interface and clients reach through the network.
fn unusable_vip(net: &IpNet) -> Option<&'static str> {
    let addr = net.addr();
    if net.prefix_len() == 0 {
        // The Master would add an on-link route to everything.
        return Some("has prefix length 0 (write the subnet's prefix, such as /24, or /32)");
    }
    if addr.is_unspecified() {
        return Some("is the unspecified address");
    }
    if addr.is_loopback() {
        return Some("is a loopback address");
    }
    if addr.is_multicast() {
        return Some("is a multicast address");
    }
    match addr {
        IpAddr::V4(v4) if v4.is_broadcast() => Some("is the broadcast address"),
        IpAddr::V4(v4) if v4.is_link_local() => {
            Some("is an IPv4 link-local address (169.254.0.0/16), which is not routed")
        }
        _ => None,
    }
}

/// Why `name` cannot be a Linux interface name, if it cannot
/// (`dev_valid_name`: 1-15 bytes, no `/`, no whitespace, not `.` or `..`).
fn bad_interface_name(name: &str) -> Option<String> {
    if name.len() > 15
        || name.contains(['/', ':'])
        || name.chars().any(char::is_whitespace)
        || name == "."
        || name == ".."
    {
        Some(format!(
            "{name:?} cannot be an interface name (at most 15 characters, no '/', ':' or spaces); write a name such as eth0, a MAC address, or nothing for the default route's interface"
        ))
    } else {
        None
    }
}
