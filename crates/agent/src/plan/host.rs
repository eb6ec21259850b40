//! What the plan needs to know about the machine it runs on: the
//! interfaces the instances name, their addresses, and every other address
//! of the node, read once through netlink (in the network namespace we
//! run in).

use std::collections::BTreeMap;
use std::net::IpAddr;

use cplb_vrrp::io::netlink::{NetlinkError, VipManager, pick_advert_source};
use ipnet::IpNet;

use crate::config::Config;

/// One interface an instance names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInterface {
    /// Its index.
    pub index: u32,
    /// Its addresses.
    pub addresses: Vec<HostAddress>,
    /// Where IPv4 adverts go out from, as the VRRP driver picks it
    /// ([`pick_advert_source`]: the primary address), never a VIP.
    pub ipv4_advert_source: Option<IpAddr>,
    /// Where IPv6 adverts go out from (its link-local address).
    pub ipv6_advert_source: Option<IpAddr>,
}

impl HostInterface {
    /// The advert source of the family.
    pub fn advert_source(&self, ipv6: bool) -> Option<IpAddr> {
        if ipv6 {
            self.ipv6_advert_source
        } else {
            self.ipv4_advert_source
        }
    }
}

/// One address of an interface, as far as the plan cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostAddress {
    /// The address.
    pub addr: IpAddr,
    /// A secondary IPv4 address (not the interface's primary).
    pub secondary: bool,
    /// No lifetime: configured by the operator, not a lease cplb added.
    pub permanent: bool,
}

/// The host as the plan sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// The interfaces the configuration names: found, or why not.
    pub interfaces: BTreeMap<String, Result<HostInterface, String>>,
    /// Every address of the node, with its interface's name.
    pub addresses: Vec<(String, IpAddr)>,
}

impl HostFacts {
    /// Reads the interfaces `config` names and every address of the node.
    pub async fn gather(config: &Config) -> Result<HostFacts, NetlinkError> {
        let netlink = VipManager::new()?;
        let mut facts = HostFacts::default();
        // No VIP of any instance is ever an advert source.
        let vips: Vec<IpAddr> = config
            .vrrp_instances
            .iter()
            .flat_map(|i| i.virtual_ips.iter().map(IpNet::addr))
            .collect();
        for instance in &config.vrrp_instances {
            if instance.interface.is_empty() || facts.interfaces.contains_key(&instance.interface) {
                continue;
            }
            let found = match netlink.interface(&instance.interface).await {
                Ok(interface) => match netlink.addresses(interface.index).await {
                    Ok(addresses) => Ok(HostInterface {
                        index: interface.index,
                        addresses: addresses
                            .iter()
                            .map(|a| HostAddress {
                                addr: a.addr,
                                secondary: a.secondary,
                                permanent: a.valid_lft.is_none(),
                            })
                            .collect(),
                        ipv4_advert_source: pick_advert_source(&addresses, false, &vips),
                        ipv6_advert_source: pick_advert_source(&addresses, true, &vips),
                    }),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            facts.interfaces.insert(instance.interface.clone(), found);
        }
        // glibc's getifaddrs asks netlink too, in our network namespace.
        if let Ok(all) = nix::ifaddrs::getifaddrs() {
            for entry in all {
                let ip = entry.address.as_ref().and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                });
                if let Some(ip) = ip {
                    facts.addresses.push((entry.interface_name, ip));
                }
            }
        }
        Ok(facts)
    }
}
