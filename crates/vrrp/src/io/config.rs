//! What the driver runs: one [`InstanceConfig`] per virtual router, checked
//! by [`InstanceConfig::validate`] without touching the host, so a caller
//! can report every configuration the driver would refuse before starting
//! anything.

use std::net::IpAddr;
use std::time::Duration;

use super::netlink::{Vip, VipLifetime};
use crate::fsm::{Config, ConfigError};

/// The RFC 6724 label keepalived gives IPv6 VIPs by default, so that source
/// address selection does not prefer them for the node's own traffic.
pub const DEFAULT_ADDR_LABEL: u32 = 10000;

/// The longest interface name Linux accepts (IFNAMSIZ - 1).
const MAX_IFNAME_LEN: usize = 15;

/// How long the kernel keeps a VIP that is not refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VipLease {
    /// Three advertisement intervals, rounded up to whole seconds (the
    /// kernel's unit). A Master that stops refreshing (killed, hung, frozen)
    /// loses its VIPs about when the Backups' Master_Down_Interval (3 ×
    /// interval + skew, RFC 3768 §6.1) runs out and one of them takes over,
    /// so a frozen node's kernel does not keep answering ARP for them. Two
    /// intervals of slack remain for a late refresh.
    #[default]
    Auto,
    /// A fixed lifetime, longer than the advertisement interval.
    Fixed(Duration),
    /// No lease: VIPs stay until removed (keepalived's behaviour). The
    /// driver then cannot tell its VIPs from the node's own addresses after
    /// a crash: `release` and a stop remove them whatever their lifetime,
    /// and a VIP left by a crashed run makes the next start refuse (it looks
    /// like a node address) until it is removed by hand.
    Off,
}

/// One virtual router to run and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    /// The state machine's configuration; `router.primary_ip` is the source
    /// of adverts (for IPv6 multicast, the interface's link-local address,
    /// RFC 5798 §5.1.2.1; see
    /// [`VipManager::advert_source`](super::netlink::VipManager::advert_source)).
    pub router: Config,
    /// The interface name.
    pub interface: String,
    /// Prefix lengths for the VIPs; a VIP of `router.vips` not listed here
    /// is added as /32 or /128.
    pub vip_prefixes: Vec<Vip>,
    /// Unicast peers; empty for multicast.
    pub unicast_peers: Vec<IpAddr>,
    /// The VIP lease.
    pub lease: VipLease,
    /// RFC 6724 address label for IPv6 VIPs; `None` for none.
    pub ipv6_addr_label: Option<u32>,
}

/// Why an [`InstanceConfig`] cannot run, found without looking at the host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceConfigError {
    /// The state machine refuses the router configuration (VRID, priority,
    /// advert interval out of range for the version — VRRPv3 carries at
    /// most 40.95 s, VRRPv2 whole seconds up to 255 —, VIP count, mixed
    /// families, IPv6 with VRRPv2, ...).
    #[error(transparent)]
    Router(#[from] ConfigError),
    /// No interface name, or one longer than Linux allows.
    #[error("interface name {0:?} is not a valid Linux interface name")]
    InterfaceName(String),
    /// A fixed lease not longer than the advertisement interval would expire
    /// between two refreshes.
    #[error("VIP lease {lease:?} must be longer than the advertisement interval")]
    LeaseTooShort {
        /// The lease.
        lease: Duration,
    },
    /// A unicast peer of another address family than the instance.
    #[error("unicast peer {peer} is of another address family")]
    PeerFamily {
        /// The peer.
        peer: IpAddr,
    },
    /// A VIP that can never be a virtual address: unspecified, loopback,
    /// multicast or broadcast.
    #[error("{vip} cannot be a virtual IP address (unspecified, loopback, multicast or broadcast)")]
    UnusableVip {
        /// The VIP.
        vip: IpAddr,
    },
    /// The same VIP twice.
    #[error("virtual IP address {vip} is listed twice")]
    DuplicateVip {
        /// The VIP.
        vip: IpAddr,
    },
    /// A VIP equal to the advert source: removing the VIP would remove the
    /// node's own address.
    #[error("virtual IP address {vip} is this node's advert source address")]
    VipIsPrimary {
        /// The VIP.
        vip: IpAddr,
    },
    /// A VIP equal to a unicast peer: another node's own address.
    #[error("virtual IP address {vip} is a unicast peer's address")]
    VipIsPeer {
        /// The VIP.
        vip: IpAddr,
    },
    /// A prefix given for an address that is not one of the VIPs.
    #[error("prefix {vip} is given for an address that is not a virtual IP address")]
    PrefixWithoutVip {
        /// The prefix entry.
        vip: Vip,
    },
}

impl InstanceConfig {
    /// Multicast, automatic lease, default IPv6 label, host prefixes.
    pub fn new(router: Config, interface: impl Into<String>) -> InstanceConfig {
        InstanceConfig {
            router,
            interface: interface.into(),
            vip_prefixes: Vec::new(),
            unicast_peers: Vec::new(),
            lease: VipLease::Auto,
            ipv6_addr_label: Some(DEFAULT_ADDR_LABEL),
        }
    }

    /// Everything the driver would refuse at start that can be seen without
    /// the host (the interface's existence and addresses are checked by
    /// [`check_host`](super::driver::check_host)).
    pub fn validate(&self) -> Result<(), InstanceConfigError> {
        self.router.validate()?;
        if self.interface.is_empty()
            || self.interface.len() > MAX_IFNAME_LEN
            || self
                .interface
                .contains(|c: char| c == '/' || c == '\0' || c.is_whitespace())
        {
            return Err(InstanceConfigError::InterfaceName(self.interface.clone()));
        }
        if let VipLease::Fixed(lease) = self.lease
            && lease <= self.router.advert_interval.to_duration()
        {
            return Err(InstanceConfigError::LeaseTooShort { lease });
        }
        let ipv6 = self.router.primary_ip.is_ipv6();
        if let Some(&peer) = self.unicast_peers.iter().find(|p| p.is_ipv6() != ipv6) {
            return Err(InstanceConfigError::PeerFamily { peer });
        }
        for (n, &vip) in self.router.vips.iter().enumerate() {
            if !usable_vip(vip) {
                return Err(InstanceConfigError::UnusableVip { vip });
            }
            if self.router.vips.iter().skip(n + 1).any(|&v| v == vip) {
                return Err(InstanceConfigError::DuplicateVip { vip });
            }
            if vip == self.router.primary_ip {
                return Err(InstanceConfigError::VipIsPrimary { vip });
            }
            if self.unicast_peers.contains(&vip) {
                return Err(InstanceConfigError::VipIsPeer { vip });
            }
        }
        if let Some(&vip) = self
            .vip_prefixes
            .iter()
            .find(|p| !self.router.vips.contains(&p.addr))
        {
            return Err(InstanceConfigError::PrefixWithoutVip { vip });
        }
        Ok(())
    }

    /// The VIPs with their prefixes.
    pub fn vips(&self) -> Vec<Vip> {
        self.router
            .vips
            .iter()
            .map(|addr| {
                self.vip_prefixes
                    .iter()
                    .find(|v| v.addr == *addr)
                    .copied()
                    .unwrap_or_else(|| Vip::host(*addr))
            })
            .collect()
    }

    /// The adverts' destinations: the unicast peers, or the multicast group
    /// of the family (RFC 3768 §5.2.2, RFC 5798 §5.1.1.2 / §5.1.2.2).
    pub fn destinations(&self) -> Vec<IpAddr> {
        use crate::wire::{MULTICAST_V4, MULTICAST_V6};
        if !self.unicast_peers.is_empty() {
            return self.unicast_peers.clone();
        }
        vec![if self.router.primary_ip.is_ipv6() {
            IpAddr::V6(MULTICAST_V6)
        } else {
            IpAddr::V4(MULTICAST_V4)
        }]
    }

    /// The lifetime VIPs are added with.
    pub fn lifetime(&self) -> VipLifetime {
        match self.lease {
            VipLease::Off => VipLifetime::Forever,
            VipLease::Fixed(valid) => VipLifetime::lease(valid),
            VipLease::Auto => {
                let three = 3 * self.router.advert_interval.to_duration();
                let secs = three.as_secs() + u64::from(three.subsec_nanos() > 0);
                VipLifetime::lease(Duration::from_secs(secs.max(1)))
            }
        }
    }
}

/// Whether `vip` can be a virtual address at all.
fn usable_vip(vip: IpAddr) -> bool {
    !vip.is_unspecified()
        && !vip.is_loopback()
        && !vip.is_multicast()
        && vip != IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Centis, Version};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn instance(version: Version, primary: &str, vips: &[&str]) -> InstanceConfig {
        let vips = vips.iter().map(|v| ip(v)).collect();
        InstanceConfig::new(Config::new(version, 51, ip(primary), vips), "eth0")
    }

    #[test]
    fn every_refusal_has_its_own_error() {
        let good = instance(Version::V2, "192.0.2.1", &["192.0.2.100"]);
        assert_eq!(good.validate(), Ok(()));

        let mut long_v3 = instance(Version::V3, "fe80::1", &["2001:db8::100"]);
        long_v3.router.advert_interval = Centis(4100);
        assert!(matches!(
            long_v3.validate(),
            Err(InstanceConfigError::Router(ConfigError::Interval { .. }))
        ));
        long_v3.router.advert_interval = Centis::V3_MAX;
        assert_eq!(long_v3.validate(), Ok(()));

        let mixed = instance(Version::V3, "192.0.2.1", &["192.0.2.100", "2001:db8::1"]);
        assert_eq!(
            mixed.validate(),
            Err(InstanceConfigError::Router(ConfigError::MixedFamilies))
        );

        let many: Vec<String> = (0..256)
            .map(|n| format!("10.0.{}.{}", n / 250, n % 250 + 1))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            instance(Version::V2, "192.0.2.1", &many).validate(),
            Err(InstanceConfigError::Router(ConfigError::TooManyVips(256)))
        );

        let mut name = good.clone();
        name.interface = "a-very-long-interface-name".to_owned();
        assert!(matches!(
            name.validate(),
            Err(InstanceConfigError::InterfaceName(_))
        ));
        name.interface = String::new();
        assert!(matches!(
            name.validate(),
            Err(InstanceConfigError::InterfaceName(_))
        ));

        let mut lease = good.clone();
        lease.lease = VipLease::Fixed(Duration::from_secs(1));
        assert!(matches!(
            lease.validate(),
            Err(InstanceConfigError::LeaseTooShort { .. })
        ));

        let mut peer = good.clone();
        peer.unicast_peers = vec![ip("2001:db8::2")];
        assert!(matches!(
            peer.validate(),
            Err(InstanceConfigError::PeerFamily { .. })
        ));

        for bad in ["0.0.0.0", "127.0.0.1", "224.0.0.18", "255.255.255.255"] {
            assert_eq!(
                instance(Version::V2, "192.0.2.1", &[bad]).validate(),
                Err(InstanceConfigError::UnusableVip { vip: ip(bad) }),
                "{bad}"
            );
        }
        assert_eq!(
            instance(Version::V2, "192.0.2.1", &["192.0.2.100", "192.0.2.100"]).validate(),
            Err(InstanceConfigError::DuplicateVip {
                vip: ip("192.0.2.100")
            })
        );
        assert_eq!(
            instance(Version::V2, "192.0.2.1", &["192.0.2.1"]).validate(),
            Err(InstanceConfigError::VipIsPrimary {
                vip: ip("192.0.2.1")
            })
        );
        let mut vip_peer = good.clone();
        vip_peer.unicast_peers = vec![ip("192.0.2.100")];
        assert_eq!(
            vip_peer.validate(),
            Err(InstanceConfigError::VipIsPeer {
                vip: ip("192.0.2.100")
            })
        );
        let mut prefix = good.clone();
        prefix.vip_prefixes = vec![Vip::new(ip("192.0.2.99"), 24).unwrap()];
        assert!(matches!(
            prefix.validate(),
            Err(InstanceConfigError::PrefixWithoutVip { .. })
        ));
    }

    #[test]
    fn the_auto_lease_is_three_intervals_rounded_up() {
        let mut v3 = instance(Version::V3, "192.0.2.1", &["192.0.2.100"]);
        v3.router.advert_interval = Centis(35);
        assert_eq!(v3.lifetime(), VipLifetime::lease(Duration::from_secs(2)));
        v3.router.advert_interval = Centis(1);
        assert_eq!(v3.lifetime(), VipLifetime::lease(Duration::from_secs(1)));
    }
}
